-- Many senders (issue 21): the Meta apps and the sending accounts kept in the database, beside
-- the environment's single account per channel (the `default` one, which stays the
-- environment's: the table cannot hold it). Tokens and app secrets are sealed by the workers
-- (AES-256-GCM, accounts/sealing.py), never stored in clear. Every change notifies
-- `chat4all_accounts` from its own transaction (delivered on commit), so each process's
-- directory reloads within moments; a change that changes nothing notifies no one.

CREATE TABLE IF NOT EXISTS meta_apps (
    app_id              text PRIMARY KEY,
    secret_sealed       bytea NOT NULL,
    verify_token_sealed bytea NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT meta_apps_id_format CHECK (app_id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    -- default-whatsapp / default-instagram are the environment's apps.
    CONSTRAINT meta_apps_not_default CHECK (app_id NOT LIKE 'default-%')
);

CREATE TABLE IF NOT EXISTS accounts (
    channel         text NOT NULL,
    key             text NOT NULL,
    provider_id     text NOT NULL,  -- WhatsApp phone number id / Instagram account id
    app_id          text NOT NULL,  -- a meta_apps row, or the environment's default-<channel>
    token_sealed    bytea NOT NULL,
    -- NULL: the channel section's value (whatsapp.max_rate_per_s, ...); 0: off.
    max_rate_per_s  double precision,
    pair_burst      integer,
    pair_interval_s double precision,
    enabled         boolean NOT NULL DEFAULT true,
    version         bigint NOT NULL DEFAULT 1,  -- bumped by every change of the row
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, key),
    -- One number is one account.
    CONSTRAINT accounts_provider_id_once UNIQUE (channel, provider_id),
    CONSTRAINT accounts_channel CHECK (channel IN ('whatsapp', 'instagram')),
    CONSTRAINT accounts_key_format CHECK (key ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    CONSTRAINT accounts_not_default CHECK (key <> 'default'),
    CONSTRAINT accounts_provider_id_format CHECK (provider_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    CONSTRAINT accounts_app_id_format CHECK (app_id ~ '^[a-z0-9][a-z0-9_.-]{0,63}$'),
    -- Finite (NaN and Infinity compare above 1e9) and not negative.
    CONSTRAINT accounts_rate CHECK (max_rate_per_s BETWEEN 0 AND 1e9),
    CONSTRAINT accounts_pair_burst CHECK (pair_burst >= 0),
    CONSTRAINT accounts_pair_interval CHECK (pair_interval_s BETWEEN 0 AND 1e9)
);

-- A change bumps `version` and `updated_at`, whoever writes it (the CLI, or SQL by hand), so a
-- holder of an older version knows to rebuild what it made from it (a client with the token).
CREATE OR REPLACE FUNCTION accounts_touch() RETURNS trigger AS $$
BEGIN
    IF ROW(NEW.*) IS DISTINCT FROM ROW(OLD.*) THEN
        NEW.updated_at := now();
        IF TG_TABLE_NAME = 'accounts' THEN
            NEW.version := OLD.version + 1;
        END IF;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS accounts_touch ON accounts;
CREATE TRIGGER accounts_touch
    BEFORE UPDATE ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_touch();
DROP TRIGGER IF EXISTS meta_apps_touch ON meta_apps;
CREATE TRIGGER meta_apps_touch
    BEFORE UPDATE ON meta_apps FOR EACH ROW EXECUTE FUNCTION accounts_touch();

-- The payload names the row (`whatsapp/acme`, `app/<id>`); listeners reload everything anyway.
CREATE OR REPLACE FUNCTION accounts_notify() RETURNS trigger AS $$
DECLARE
    changed record;
BEGIN
    IF TG_OP = 'UPDATE' AND ROW(NEW.*) IS NOT DISTINCT FROM ROW(OLD.*) THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_TABLE_NAME = 'accounts' THEN
        PERFORM pg_notify('chat4all_accounts', changed.channel || '/' || changed.key);
    ELSE
        PERFORM pg_notify('chat4all_accounts', 'app/' || changed.app_id);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS accounts_notify ON accounts;
CREATE TRIGGER accounts_notify
    AFTER INSERT OR UPDATE OR DELETE ON accounts FOR EACH ROW EXECUTE FUNCTION accounts_notify();
DROP TRIGGER IF EXISTS meta_apps_notify ON meta_apps;
CREATE TRIGGER meta_apps_notify
    AFTER INSERT OR UPDATE OR DELETE ON meta_apps FOR EACH ROW EXECUTE FUNCTION accounts_notify();
