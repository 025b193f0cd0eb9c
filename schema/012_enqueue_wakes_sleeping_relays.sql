-- 012: a writer notifies only when a relay is asleep (docs/DESIGN.md, "Wake-up").
--
-- A transaction that has queued a notification takes a database-wide lock from pre-commit until
-- its commit record is flushed (Postgres serialises the notification queue), so concurrent
-- enqueuing transactions committed one at a time and lost group commit: with synchronous_commit
-- on, 8 pgbench clients made 3,122 enqueue transactions/s against 7,751 for a bare outbox.events
-- row (issue 20). A relay needs a notification only when it is about to sleep.
--
-- The handshake, per destination, on advisory lock (1869575286, 1 for qdrant | 2 for redis):
-- - a relay about to sleep takes it exclusively, at session level ("armed"), then claims once more
--   before it waits; it lets it go when it finds work again;
-- - each enqueue tries to take it shared for its transaction. Refused (a relay holds it, or is
--   waiting for it): the transaction notifies, as before 012. Granted: no relay is asleep, and the
--   shared lock, held until commit, keeps any relay from arming before this transaction has
--   committed, so the claim a relay makes after arming sees this event. No wake-up is lost.
-- Shared locks never wait for each other, and a refused try does not wait: writers never block here.
--
-- A relay from before 012 never arms, so writers no longer wake it: it finds new events by its
-- fallback poll (relay.poll_interval) until it is upgraded. Upgrade relays right after migrating.
-- Validation, the per-key lock and the insert are 008's.
CREATE OR REPLACE FUNCTION outbox.enqueue(
    destination text,
    operation text,
    key text,
    payload jsonb,
    headers jsonb DEFAULT '{}'::jsonb
) RETURNS bigint
LANGUAGE plpgsql
AS $$
DECLARE
    new_id bigint;
    valid boolean;  -- NULL (no fast check for this operation) means "ask validate_event"
BEGIN
    -- The most frequent operations first: each condition passed is one more expression set up.
    IF destination = 'qdrant' AND operation = 'upsert' THEN
        valid := outbox._event_is_valid('qdrant', 'upsert', payload);
    ELSIF destination = 'redis' AND operation = 'xadd' THEN
        valid := outbox._event_is_valid('redis', 'xadd', payload);
    ELSIF destination = 'redis' AND operation = 'set' THEN
        valid := outbox._event_is_valid('redis', 'set', payload);
    ELSIF destination = 'redis' AND operation = 'publish' THEN
        valid := outbox._event_is_valid('redis', 'publish', payload);
    ELSIF destination = 'redis' AND operation = 'del' THEN
        valid := outbox._event_is_valid('redis', 'del', payload);
    ELSIF destination = 'qdrant' AND operation = 'delete' THEN
        valid := outbox._event_is_valid('qdrant', 'delete', payload);
    ELSIF destination = 'qdrant' AND operation = 'set_payload' THEN
        valid := outbox._event_is_valid('qdrant', 'set_payload', payload);
    END IF;

    IF NOT coalesce(valid AND key <> '' AND jsonb_typeof(headers) = 'object', false) THEN
        -- The detailed checks: they raise a clear error naming the field (SQLSTATE 22023).
        PERFORM outbox.validate_event(destination, operation, payload);
        IF key IS NULL OR key = '' THEN
            RAISE EXCEPTION 'outbox.enqueue: key must be a non-empty string'
                USING ERRCODE = '22023', HINT = 'the key orders events: usually the domain row id';
        END IF;
        IF headers IS NULL OR jsonb_typeof(headers) <> 'object' THEN
            RAISE EXCEPTION 'outbox.enqueue: headers must be a JSON object, got %', coalesce(jsonb_typeof(headers), 'NULL')
                USING ERRCODE = '22023';
        END IF;
    END IF;

    PERFORM pg_advisory_xact_lock(1869575285, hashtext(destination || ':' || key) & 1023);

    INSERT INTO outbox.events (destination, operation, key, payload, headers)
    VALUES (destination, operation, key, payload, headers)
    RETURNING id INTO new_id;

    IF NOT pg_try_advisory_xact_lock_shared(1869575286, CASE destination WHEN 'qdrant' THEN 1 ELSE 2 END) THEN
        PERFORM pg_notify('outbox_events', destination);
    END IF;
    RETURN new_id;
END $$;

COMMENT ON FUNCTION outbox.enqueue(text, text, text, jsonb, jsonb) IS
    'Enqueue one outbox event in the caller''s transaction. See docs/WRITERS.md.';
