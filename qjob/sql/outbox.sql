-- qjob's transactional outbox (qjob::outbox, feature `postgres`).
--
-- `Outbox::migrate` applies this with the table's name in place of
-- `qjob_outbox`; `Outbox::schema` returns it so. Applying it again changes
-- nothing, and takes no lock on an existing table. Run as is, it creates
-- the default table.
--
-- One row is one job, written by `Outbox::enqueue` inside the caller's
-- transaction. A relay publishes committed rows in `seq` order, with
-- publisher confirms, and deletes each row once its confirm came.

CREATE TABLE IF NOT EXISTS "qjob_outbox" (
    -- The order the relay publishes in.
    seq        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The job's id: the message id, the same on a republish.
    job_id     text        NOT NULL,
    -- The job type's name, and the queue its message goes to (the work
    -- queue, or a partitioned job's partition queue).
    job        text        NOT NULL,
    queue      text        NOT NULL,
    -- `classic` or `quorum`: the type of the delay queue a delayed job
    -- waits in.
    queue_type text        NOT NULL DEFAULT 'classic',
    -- When a delayed job is due (`enqueue_in`, `enqueue_at`); NULL: at once.
    run_at     timestamptz,
    -- The message's headers (a JSON object of strings, numbers and
    -- booleans) and its body (the JSON payload).
    headers    jsonb       NOT NULL DEFAULT '{}',
    body       bytea       NOT NULL,
    -- The job's priority (0 to 255; `EnqueueOptions::priority`), NULL
    -- for none. (A table made before it was added gets it below.)
    priority   smallint,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- A row the broker refused: how often, until when it waits, and why.
    attempts   integer     NOT NULL DEFAULT 0,
    retry_at   timestamptz,
    last_error text
);

-- The columns added since the first version, on a table made before
-- them; checked first, so that a table that has them is not locked.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_attribute
        WHERE attrelid = '"qjob_outbox"'::regclass AND attname = 'priority'
            AND NOT attisdropped
    ) THEN
        ALTER TABLE "qjob_outbox" ADD COLUMN priority smallint;
    END IF;
END
$$;

-- Wakes the relays when a transaction that wrote rows commits, if a relay
-- waits for rows (a notification is delivered at commit, and never for a
-- rollback). A waiting relay holds the advisory lock below, exclusively,
-- on its listening connection. When none holds it, the relays are busy:
-- each claims again before it waits, and takes the lock first, which waits
-- for this transaction (it keeps the lock shared until it ends). So busy
-- relays find the row without a notification, and the commits of
-- concurrent transactions stay cheap: PostgreSQL serializes the commits
-- of transactions that notify.
CREATE OR REPLACE FUNCTION "qjob_outbox_notify"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(hashtext('qjob-outbox-watch:qjob_outbox') & 2147483647) THEN
        PERFORM pg_notify('qjob_outbox', '');
    END IF;
    RETURN NULL;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'qjob_outbox_notify' AND tgrelid = '"qjob_outbox"'::regclass
    ) THEN
        CREATE TRIGGER "qjob_outbox_notify"
            AFTER INSERT ON "qjob_outbox"
            FOR EACH STATEMENT EXECUTE FUNCTION "qjob_outbox_notify"();
    END IF;
END
$$;
