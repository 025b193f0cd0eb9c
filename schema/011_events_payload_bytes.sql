-- 011: each event's payload size, so that a claim can be capped by bytes (relay.batch_bytes) as
-- well as by events, without reading the payloads it will not take.
--
-- The size is taken when the row is written: pg_column_size of the new jsonb value, before TOAST
-- compresses it, so it is the size the relay will hold once decoded, not the (possibly 100 times
-- smaller) size on disk. A generated column, so every way a row arrives (outbox.enqueue, a direct
-- INSERT, a dead letter requeued) has one. pg_column_size is only STABLE in the catalog (it reads
-- a TOAST pointer's size for a stored value); for the value being inserted it is a pure function of
-- the value, hence the IMMUTABLE wrapper a generated column requires.
--
-- Adding a stored generated column rewrites outbox.events: writers wait for as long as that takes
-- on the backlog (about a second per 100,000 small events here).
CREATE FUNCTION outbox.payload_bytes(payload jsonb) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN pg_column_size(payload);

ALTER TABLE outbox.events
    ADD COLUMN payload_bytes integer NOT NULL GENERATED ALWAYS AS (outbox.payload_bytes(payload)) STORED;
