-- 001: the outbox schema (contract: DESIGN §3).
--
-- Writers call outbox.enqueue(...) inside their own transaction; outbox-relay drains
-- outbox.events and moves failures to outbox.dead_letters. Applied by `outbox-relay migrate`.

CREATE SCHEMA IF NOT EXISTS outbox;

-- Pending events. Delivered events are deleted, so the table holds only the backlog.
CREATE TABLE outbox.events (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination  text        NOT NULL CHECK (destination IN ('qdrant', 'redis')),
    operation    text        NOT NULL,
    key          text        NOT NULL CHECK (key <> ''),
    payload      jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    -- Retries push this forward (backoff); the relay claims only events whose time has come.
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);

-- Per-key order: the relay reads the head of each (destination, key) queue in id order.
CREATE INDEX events_destination_key_id_idx ON outbox.events (destination, key, id);
-- Backlog scans and "oldest pending" metrics.
CREATE INDEX events_destination_available_idx ON outbox.events (destination, available_at, id);

-- Events that failed permanently or ran out of retries. `id` is the original event id, so a
-- requeued event keeps its identity (and its Redis dedupe key).
CREATE TABLE outbox.dead_letters (
    id               bigint      PRIMARY KEY,
    destination      text        NOT NULL,
    operation        text        NOT NULL,
    key              text        NOT NULL,
    payload          jsonb       NOT NULL,
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL,
    attempts         integer     NOT NULL,
    error            text        NOT NULL,
    dead_lettered_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_destination_key_idx ON outbox.dead_letters (destination, key, id);

-- Validation of one payload against the contract's table (DESIGN §3). Raises with SQLSTATE
-- 22023 (invalid_parameter_value) and a message that names the operation and the field.
CREATE FUNCTION outbox._fail(operation text, problem text, hint text DEFAULT NULL)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RAISE EXCEPTION 'outbox.enqueue: % %', operation, problem
        USING ERRCODE = '22023', HINT = coalesce(hint, 'see the event payload table in docs/WRITERS.md');
END $$;

CREATE FUNCTION outbox._require(payload jsonb, operation text, field text, expected text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    actual text := jsonb_typeof(payload -> field);
BEGIN
    IF actual IS NULL THEN
        PERFORM outbox._fail(operation, format('payload is missing required field "%s"', field));
    END IF;
    PERFORM outbox._check_type(payload, operation, field, expected);
END $$;

-- Field present with the wrong JSON type: say what was expected and what came.
CREATE FUNCTION outbox._check_type(payload jsonb, operation text, field text, expected text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    actual text := jsonb_typeof(payload -> field);
BEGIN
    IF actual IS NOT NULL AND actual <> expected THEN
        PERFORM outbox._fail(operation, format('payload field "%s" must be %s %s, got %s',
            field, CASE WHEN expected IN ('array', 'object') THEN 'an' ELSE 'a' END, expected, actual));
    END IF;
    IF expected = 'string' AND actual = 'string' AND payload ->> field = '' THEN
        PERFORM outbox._fail(operation, format('payload field "%s" must not be empty', field));
    END IF;
END $$;

-- A Qdrant point id: an unsigned integer or a UUID string.
CREATE FUNCTION outbox._is_point_id(id jsonb) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(id)
        WHEN 'number' THEN (id #>> '{}') ~ '^[0-9]+$' AND (id #>> '{}')::numeric <= 18446744073709551615
        WHEN 'string' THEN (id #>> '{}') ~* '^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$'
        ELSE false
    END
$$;

CREATE FUNCTION outbox._check_ids(payload jsonb, operation text) RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    bad jsonb;
BEGIN
    PERFORM outbox._require(payload, operation, 'ids', 'array');
    IF jsonb_array_length(payload -> 'ids') = 0 THEN
        PERFORM outbox._fail(operation, 'payload field "ids" must not be empty');
    END IF;
    SELECT e INTO bad FROM jsonb_array_elements(payload -> 'ids') e WHERE NOT outbox._is_point_id(e) LIMIT 1;
    IF FOUND THEN
        PERFORM outbox._fail(operation, format('payload field "ids" holds %s, which is not an unsigned integer or a UUID', bad));
    END IF;
END $$;

CREATE FUNCTION outbox.validate_event(destination text, operation text, payload jsonb)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    op text := destination || '.' || operation;
    bad jsonb;
BEGIN
    IF destination IS NULL OR destination NOT IN ('qdrant', 'redis') THEN
        RAISE EXCEPTION 'outbox.enqueue: unknown destination "%"', destination
            USING ERRCODE = '22023', HINT = 'destination must be qdrant or redis';
    END IF;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        PERFORM outbox._fail(op, format('payload must be a JSON object, got %s', coalesce(jsonb_typeof(payload), 'NULL')));
    END IF;

    CASE op
    WHEN 'qdrant.upsert' THEN
        PERFORM outbox._require(payload, op, 'collection', 'string');
        IF NOT payload ? 'id' THEN
            PERFORM outbox._fail(op, 'payload is missing required field "id"');
        END IF;
        IF NOT outbox._is_point_id(payload -> 'id') THEN
            PERFORM outbox._fail(op, format('payload field "id" is %s, which is not an unsigned integer or a UUID', payload -> 'id'));
        END IF;
        PERFORM outbox._check_type(payload, op, 'vector', 'array');
        PERFORM outbox._check_type(payload, op, 'text', 'string');
        IF jsonb_typeof(payload -> 'vector') IS NULL AND jsonb_typeof(payload -> 'text') IS NULL THEN
            PERFORM outbox._fail(op, 'payload needs "vector" or "text" (text is embedded by the relay)');
        END IF;
        IF payload ? 'vector' THEN
            IF jsonb_array_length(payload -> 'vector') = 0 THEN
                PERFORM outbox._fail(op, 'payload field "vector" must not be empty');
            END IF;
            SELECT e INTO bad FROM jsonb_array_elements(payload -> 'vector') e WHERE jsonb_typeof(e) <> 'number' LIMIT 1;
            IF FOUND THEN
                PERFORM outbox._fail(op, format('payload field "vector" must hold numbers only, found %s', bad));
            END IF;
        END IF;
        PERFORM outbox._check_type(payload, op, 'payload', 'object');
        PERFORM outbox._check_type(payload, op, 'source', 'object');
        IF payload ? 'source' THEN
            IF jsonb_typeof(payload #> '{source,table}') IS DISTINCT FROM 'string'
               OR coalesce(jsonb_typeof(payload #> '{source,id}'), 'missing') NOT IN ('string', 'number')
               OR payload #>> '{source,table}' = '' THEN
                PERFORM outbox._fail(op, 'payload field "source" must be {"table": "<mapped table>", "id": "<row id>"}');
            END IF;
        END IF;
    WHEN 'qdrant.delete' THEN
        PERFORM outbox._require(payload, op, 'collection', 'string');
        PERFORM outbox._check_ids(payload, op);
    WHEN 'qdrant.set_payload' THEN
        PERFORM outbox._require(payload, op, 'collection', 'string');
        PERFORM outbox._check_ids(payload, op);
        PERFORM outbox._require(payload, op, 'payload', 'object');
    WHEN 'redis.xadd' THEN
        PERFORM outbox._require(payload, op, 'stream', 'string');
        PERFORM outbox._require(payload, op, 'fields', 'object');
        IF payload -> 'fields' = '{}'::jsonb THEN
            PERFORM outbox._fail(op, 'payload field "fields" must not be empty');
        END IF;
        IF payload -> 'fields' ? 'outbox_id' THEN
            PERFORM outbox._fail(op, 'payload field "fields" must not contain "outbox_id" (the relay adds it)');
        END IF;
        SELECT to_jsonb(k) INTO bad FROM jsonb_each(payload -> 'fields') AS f(k, v) WHERE jsonb_typeof(v) <> 'string' LIMIT 1;
        IF FOUND THEN
            PERFORM outbox._fail(op, format('payload field "fields" must map names to strings; %s is not a string', bad));
        END IF;
        PERFORM outbox._check_type(payload, op, 'maxlen', 'number');
        IF payload ? 'maxlen' AND NOT (payload ->> 'maxlen') ~ '^[1-9][0-9]{0,17}$' THEN
            PERFORM outbox._fail(op, 'payload field "maxlen" must be a positive integer');
        END IF;
    WHEN 'redis.publish' THEN
        PERFORM outbox._require(payload, op, 'channel', 'string');
        PERFORM outbox._require(payload, op, 'message', 'string');
    WHEN 'redis.del' THEN
        PERFORM outbox._require(payload, op, 'keys', 'array');
        IF jsonb_array_length(payload -> 'keys') = 0 THEN
            PERFORM outbox._fail(op, 'payload field "keys" must not be empty');
        END IF;
        SELECT e INTO bad FROM jsonb_array_elements(payload -> 'keys') e WHERE jsonb_typeof(e) <> 'string' LIMIT 1;
        IF FOUND THEN
            PERFORM outbox._fail(op, format('payload field "keys" must hold strings only, found %s', bad));
        END IF;
    WHEN 'redis.set' THEN
        PERFORM outbox._require(payload, op, 'key', 'string');
        PERFORM outbox._require(payload, op, 'value', 'string');
        PERFORM outbox._check_type(payload, op, 'ttl_seconds', 'number');
        IF payload ? 'ttl_seconds' AND NOT (payload ->> 'ttl_seconds') ~ '^[1-9][0-9]{0,9}$' THEN
            PERFORM outbox._fail(op, 'payload field "ttl_seconds" must be a positive integer');
        END IF;
    ELSE
        RAISE EXCEPTION 'outbox.enqueue: unknown operation "%" for destination %', operation, destination
            USING ERRCODE = '22023',
                  HINT = CASE destination
                      WHEN 'qdrant' THEN 'qdrant operations: upsert, delete, set_payload'
                      ELSE 'redis operations: xadd, publish, del, set' END;
    END CASE;
END $$;

-- The one call a writer makes, inside its own transaction (contract).
--
-- Ordering: events of one (destination, key) must get ids in commit order, or the relay could
-- deliver a later event before an earlier one commits. A transaction-scoped advisory lock per
-- key serialises such writers; keys are hashed onto 1,024 lock slots so that one transaction
-- enqueueing 100,000 distinct keys (a backfill) holds at most 1,024 locks and stays well inside
-- Postgres' shared lock table. Unrelated keys that share a slot only serialise concurrent writers.
--
-- Wake-up: NOTIFY with the destination as payload. Postgres folds identical notifications within a
-- transaction into one, so a transaction wakes the relay at most once per destination.
CREATE FUNCTION outbox.enqueue(
    destination text,
    operation text,
    key text,
    payload jsonb,
    headers jsonb DEFAULT '{}'::jsonb
) RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM outbox.validate_event(destination, operation, payload);
    IF key IS NULL OR key = '' THEN
        RAISE EXCEPTION 'outbox.enqueue: key must be a non-empty string'
            USING ERRCODE = '22023', HINT = 'the key orders events: usually the domain row id';
    END IF;
    IF headers IS NULL OR jsonb_typeof(headers) <> 'object' THEN
        RAISE EXCEPTION 'outbox.enqueue: headers must be a JSON object, got %', coalesce(jsonb_typeof(headers), 'NULL')
            USING ERRCODE = '22023';
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
