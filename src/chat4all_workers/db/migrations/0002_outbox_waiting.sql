-- The outbox poller skips every event queued behind an earlier event of the same aggregate that is
-- waiting for a retry. Only failed rows carry next_attempt_at, so this index stays tiny and the
-- "is anything earlier waiting?" probe is one index lookup per candidate.
CREATE INDEX IF NOT EXISTS outbox_events_waiting_idx
    ON outbox_events (aggregate_type, aggregate_id, seq)
    WHERE NOT published AND next_attempt_at IS NOT NULL;
