-- 013: writers never wait for each other and never deadlock; relays claim only what no running
-- writer can still come before (docs/DESIGN.md, "Per-key order").
--
-- Until now each enqueue took an exclusive transaction lock on one of 1,024 slots per key, so that
-- a second writer of the key waited for the first to commit and ids followed commit order. Writers
-- of unrelated keys sharing a slot waited too, and transactions that enqueued keys in different
-- orders deadlocked: 10-key transactions over 1,000 keys, 4 pgbench clients, lost 0.25–0.35 % of
-- their transactions to 40P01 (issue 20).
--
-- Now the slot lock is taken SHARED, which no writer ever waits for: (1869575287, slot) with slot
-- hashtext(key) & 1023 for qdrant and 1024 + that for redis. It is taken before the event's id,
-- and held until commit, so a relay that reads the id sequence and then sees, in pg_locks, which
-- transactions hold which slots knows which ids may still commit: an id of a slot is settled once
-- every transaction that held that slot when the id had been handed out has ended. Relays claim
-- only settled ids (`ClaimHorizon`), so a key's events are still delivered in id order with no
-- smaller id committing later. The id is taken when enqueue is called: for two transactions that
-- enqueue the same key at once, with nothing of the application ordering them, that is the order
-- of their enqueue calls, not of their commits.
--
-- Relays from before 013 do not know about this and could deliver an event before a smaller id of
-- its key commits: stop them before migrating, and start the new ones after. (A relay of this
-- release does not start before its migrations are applied, so a relay session connected now is
-- an older one: the migration refuses to run beside it.)
DO $$
DECLARE
    relays text;
BEGIN
    SELECT string_agg(coalesce(host(client_addr), 'local socket') || ' pid ' || pid, ', ')
    INTO relays
    FROM pg_stat_activity
    WHERE datname = current_database() AND application_name IN ('outbox-relay', 'outbox-relay-listener') AND pid <> pg_backend_pid();
    IF relays IS NOT NULL THEN
        RAISE EXCEPTION 'schema/013 changes how writers order events, and a relay from before it could deliver a key''s events out of order: stop every outbox-relay on this database first (connected: %), run migrate again, then start the new relays', relays
            USING ERRCODE = '55000';
    END IF;
END $$;

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

    PERFORM pg_advisory_xact_lock_shared(1869575287, (hashtext(key) & 1023) + CASE destination WHEN 'redis' THEN 1024 ELSE 0 END);

    INSERT INTO outbox.events (destination, operation, key, payload, headers)
    VALUES (destination, operation, key, payload, headers)
    RETURNING id INTO new_id;

    -- schema/012: wake a relay only when one sleeps.
    IF NOT pg_try_advisory_xact_lock_shared(1869575286, CASE destination WHEN 'qdrant' THEN 1 ELSE 2 END) THEN
        PERFORM pg_notify('outbox_events', destination);
    END IF;
    RETURN new_id;
END $$;

COMMENT ON FUNCTION outbox.enqueue(text, text, text, jsonb, jsonb) IS
    'Enqueue one outbox event in the caller''s transaction. See docs/WRITERS.md.';
