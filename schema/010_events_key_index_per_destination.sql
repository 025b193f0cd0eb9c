-- 010: the per-key index of outbox.events, one per destination, without the destination column.
--
-- The claim tests each candidate row for being its key's head by looking backwards through this
-- index, and reads the heads' followers forwards through it (OutboxStore.claim). perf of the
-- Postgres sessions during drain-redis: that subplan was 39 % of their time, most of it comparing
-- index entries (destination, key, id) — two text columns per entry, the second one at no fixed
-- offset. A partial index per destination holds (key, id) only.
--
-- The claim's queries name the destination as a parameter; they are planned with its value (the
-- driver sends them unnamed), which is what lets the planner pick the matching partial index.
-- A relay from before this migration compares with the row's destination instead and cannot use
-- these indexes: upgrade relays before (or with) applying it, as docs/DESIGN.md says for
-- upgrades. Building the indexes holds off writers for as long as it takes on the backlog.
CREATE INDEX events_redis_key_id_idx ON outbox.events (key, id) WHERE destination = 'redis';
CREATE INDEX events_qdrant_key_id_idx ON outbox.events (key, id) WHERE destination = 'qdrant';
DROP INDEX outbox.events_destination_key_id_idx;
