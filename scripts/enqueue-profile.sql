-- Where outbox.enqueue's time goes, server side (docs/PERFORMANCE.md, writer-overhead).
-- Run by scripts/enqueue-profile in a throwaway database that `outbox-relay migrate` prepared;
-- it drops and recreates indexes, so never run it against a database you keep.
--
-- Each variant runs :transactions transactions of its own (COMMIT after each, synchronous_commit
-- off), so per-transaction costs (plpgsql re-initialises its expressions in every transaction) are
-- counted; variants take turns over :rounds rounds and the median round is reported. No client,
-- no network: these are the server's µs per transaction, which the client-side
-- `outbox-bench writer-overhead` figures add a round trip's share to.

\set ON_ERROR_STOP on
SET client_min_messages = warning;
SET synchronous_commit = off;

-- The steps of outbox.enqueue (schema/006, 008) one at a time, each a plpgsql function like it.
CREATE FUNCTION pg_temp.step(step int, destination text, operation text, key text, payload jsonb, headers jsonb)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE new_id bigint; valid boolean;
BEGIN
    -- Nested, not `step >= 2 AND ...`: plpgsql sets up a whole expression before it evaluates it,
    -- in every transaction, and that setup is most of what validation costs.
    IF step >= 2 THEN
        -- schema/008: the operation's own check (this profile enqueues only qdrant.upsert).
        IF destination = 'qdrant' AND operation = 'upsert' THEN
            valid := outbox._event_is_valid('qdrant', 'upsert', payload);
        END IF;
        IF NOT coalesce(valid AND key <> '' AND jsonb_typeof(headers) = 'object', false) THEN
            RAISE EXCEPTION 'profile payload is not valid';
        END IF;
    END IF;
    IF step >= 3 THEN
        PERFORM pg_advisory_xact_lock(1869575285, hashtext(destination || ':' || key) & 1023);
    END IF;
    INSERT INTO outbox.events (destination, operation, key, payload, headers)
    VALUES (destination, operation, key, payload, headers) RETURNING id INTO new_id;
    IF step >= 4 THEN
        PERFORM pg_notify('outbox_profile', destination);
    END IF;
    RETURN new_id;
END $$;

CREATE TABLE pg_temp.timings (seq int GENERATED ALWAYS AS IDENTITY, variant text, round int, us numeric);

CREATE PROCEDURE pg_temp.run(variant text, n int, round int) LANGUAGE plpgsql AS $$
DECLARE
    started timestamptz;
    -- The payload outbox-bench's writer-overhead sends: a qdrant.upsert of a row, by text.
    p jsonb := '{"collection": "c", "id": "7d2ee7e0-2a4c-4c1e-9d55-1f1f3b9d2a11", "text": "text",
                 "source": {"table": "extractions", "id": "7d2ee7e0-2a4c-4c1e-9d55-1f1f3b9d2a11"}}';
BEGIN
    started := clock_timestamp();
    FOR i IN 1..n LOOP
        CASE variant
        WHEN 'nothing (COMMIT only)' THEN NULL;
        WHEN 'a domain row (extractions)' THEN
            INSERT INTO public.extractions (source_id, content) VALUES ('doc', 'text');
        WHEN 'an outbox.events row, plain INSERT', 'an outbox.events row without schema/004''s two indexes' THEN
            INSERT INTO outbox.events (destination, operation, key, payload, headers) VALUES ('qdrant', 'upsert', 'k' || i, p, '{}');
        WHEN '  + in a plpgsql function' THEN PERFORM pg_temp.step(1, 'qdrant', 'upsert', 'k' || i, p, '{}');
        WHEN '  + validation (fast path)' THEN PERFORM pg_temp.step(2, 'qdrant', 'upsert', 'k' || i, p, '{}');
        WHEN '  + per-key advisory lock' THEN PERFORM pg_temp.step(3, 'qdrant', 'upsert', 'k' || i, p, '{}');
        WHEN '  + NOTIFY' THEN PERFORM pg_temp.step(4, 'qdrant', 'upsert', 'k' || i, p, '{}');
        WHEN 'outbox.enqueue' THEN PERFORM outbox.enqueue('qdrant', 'upsert', 'k' || i, p, '{}');
        END CASE;
        COMMIT;
    END LOOP;
    INSERT INTO pg_temp.timings (variant, round, us) VALUES (variant, round, extract(epoch FROM clock_timestamp() - started) * 1e6 / n);
    COMMIT;
    -- Every round starts from empty tables, so later rounds pay neither for a growing backlog
    -- nor for the dead rows of earlier ones.
    TRUNCATE outbox.events, public.extractions;
    COMMIT;
END $$;

-- schema/004's two indexes, dropped for one variant in each round and created again after it.
SELECT string_agg(format('DROP INDEX outbox.%I', indexname), '; ') AS drop_004,
       string_agg(indexdef, '; ') AS create_004
FROM pg_indexes WHERE schemaname = 'outbox' AND indexname IN ('events_source_idx', 'events_point_idx') \gset

\echo 'outbox.enqueue, server side: µs per transaction (median of' :rounds 'rounds of' :transactions 'transactions)'
-- One statement per row: \gexec sends each on its own, and a CALL that commits must not share one.
SELECT command
FROM generate_series(1, :rounds) r,
     unnest(ARRAY['nothing (COMMIT only)', 'a domain row (extractions)', 'an outbox.events row, plain INSERT',
                  '  + in a plpgsql function', '  + validation (fast path)', '  + per-key advisory lock', '  + NOTIFY',
                  'outbox.enqueue', 'an outbox.events row without schema/004''s two indexes']) WITH ORDINALITY AS u(v, o),
     unnest(CASE WHEN v LIKE '%without%'
                 THEN ARRAY[:'drop_004', format('CALL pg_temp.run(%L, %s, %s)', v, :transactions, r), :'create_004']
                 ELSE ARRAY[format('CALL pg_temp.run(%L, %s, %s)', v, :transactions, r)] END) WITH ORDINALITY AS c(command, step)
ORDER BY r, o, step \gexec

SELECT variant AS "variant",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY us)::numeric, 1) AS "µs / transaction",
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY us)
              - (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY us) FROM pg_temp.timings WHERE variant LIKE 'nothing%'))::numeric, 1)
           AS "µs added to COMMIT only"
FROM pg_temp.timings
GROUP BY variant
ORDER BY min(seq);  -- the order they first ran in
