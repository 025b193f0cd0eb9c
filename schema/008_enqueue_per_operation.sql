-- 008: outbox.enqueue costs a writer less, again (docs/PERFORMANCE.md, writer-overhead).
--
-- perf of a backend running outbox.enqueue in a loop (one transaction each) showed two costs
-- that are set up again for every row rather than once per session:
--
-- 1. outbox.events' two CHECK constraints (destination is qdrant|redis, key is not empty) cost
--    ~6 µs per inserted row: for every INSERT statement Postgres reads each constraint's
--    expression back from its stored text and plans it again (ExecConstraints → stringToNode).
--    outbox.enqueue, the contract's write path, checks both before it inserts (and the payload's
--    shape, which the table never checked), so the table's copies go.
-- 2. plpgsql sets up every expression it evaluates again in each transaction, and 006's fast
--    path was one expression: a CASE over all seven operations, each branch's jsonpath and
--    functions set up (and permission-checked) whichever operation came. Each operation's check
--    is now a statement of its own: called with constant destination and operation,
--    outbox._event_is_valid folds at plan time to that operation's branch (one definition, the
--    one OutboxWriterTests compares with the detailed checks), and only the statement that runs
--    is set up. ~4 µs.
--
-- Behaviour and errors are unchanged: what the fast path does not accept goes through
-- outbox.validate_event exactly as before. The lock, the insert and the NOTIFY are 006's.

ALTER TABLE outbox.events
    DROP CONSTRAINT IF EXISTS events_destination_check,
    DROP CONSTRAINT IF EXISTS events_key_check;

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

    PERFORM pg_notify('outbox_events', destination);
    RETURN new_id;
END $$;

COMMENT ON FUNCTION outbox.enqueue(text, text, text, jsonb, jsonb) IS
    'Enqueue one outbox event in the caller''s transaction. See docs/WRITERS.md.';
