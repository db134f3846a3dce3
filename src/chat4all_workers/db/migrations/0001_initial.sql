-- The tables of SPEC section 4.

CREATE TABLE IF NOT EXISTS messages (
    id              uuid PRIMARY KEY,
    conversation_id bigint NOT NULL,
    sender_id       bigint,
    payload         jsonb NOT NULL DEFAULT '{}'::jsonb,
    channels        jsonb NOT NULL DEFAULT '[]'::jsonb,
    status          text NOT NULL DEFAULT 'ACCEPTED',
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS messages_conversation_idx ON messages (conversation_id, created_at);

CREATE TABLE IF NOT EXISTS message_status_history (
    id         bigserial PRIMARY KEY,
    message_id uuid NOT NULL,
    status     text NOT NULL,
    channel    text NOT NULL DEFAULT '',
    details    jsonb NOT NULL DEFAULT '{}'::jsonb,
    "timestamp" timestamptz NOT NULL DEFAULT now(),
    -- Redelivery of the same update must not add a second row.
    CONSTRAINT message_status_history_once UNIQUE (message_id, channel, status)
);

CREATE TABLE IF NOT EXISTS outbox_events (
    id              uuid PRIMARY KEY,
    seq             bigserial NOT NULL,
    aggregate_type  text NOT NULL,
    aggregate_id    text NOT NULL,
    event_type      text NOT NULL,
    topic           text,
    payload         jsonb NOT NULL,
    published       boolean NOT NULL DEFAULT false,
    published_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text
);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_events_seq_idx ON outbox_events (seq);
CREATE INDEX IF NOT EXISTS outbox_events_unpublished_idx
    ON outbox_events (seq) WHERE NOT published;
CREATE INDEX IF NOT EXISTS outbox_events_unpublished_aggregate_idx
    ON outbox_events (aggregate_type, aggregate_id, seq) WHERE NOT published;

-- Wake pollers at commit time instead of waiting for their next poll.
CREATE OR REPLACE FUNCTION outbox_events_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('outbox_events', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events;
CREATE TRIGGER outbox_events_notify
    AFTER INSERT ON outbox_events
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_events_notify();

CREATE TABLE IF NOT EXISTS files (
    id              uuid PRIMARY KEY,
    conversation_id bigint,
    uploader_id     bigint,
    filename        text NOT NULL,
    file_size       bigint,
    mime_type       text,
    checksum_sha256 text,
    storage_key     text,
    status          text NOT NULL DEFAULT 'PENDING'
                    CHECK (status IN ('PENDING', 'UPLOADING', 'MERGING', 'COMPLETED', 'FAILED')),
    chunk_size      integer,
    total_chunks    integer,
    uploaded_chunks integer NOT NULL DEFAULT 0,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz
);
CREATE INDEX IF NOT EXISTS files_status_updated_idx ON files (status, updated_at);

CREATE TABLE IF NOT EXISTS file_chunks (
    id              uuid PRIMARY KEY,
    file_id         uuid NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    chunk_number    integer NOT NULL CHECK (chunk_number >= 1),
    chunk_size      integer NOT NULL,
    storage_key     text NOT NULL,
    checksum_sha256 text,
    uploaded_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT file_chunks_once UNIQUE (file_id, chunk_number)
);
