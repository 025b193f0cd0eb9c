-- 007: claims scan one destination's events in id order, through their own index.
--
-- The relay's claim reads the heads of the keys of one destination in id order, from a cursor.
-- With no index on (destination, id) it walked the primary key and filtered out the other
-- destination's rows: with 1,000,000 redis events pending, one claim for qdrant (which had
-- none) ran 8.6 s, and its snapshot kept every event the redis lanes deleted meanwhile from
-- being pruned (docs/PERFORMANCE.md, "drain rate of a deep backlog").
--
-- (destination, available_at, id) served only the relay's fallback poll and the backlog figures;
-- both now ask "is one available?" / count through this index. Replacing it keeps outbox.events
-- at five indexes, so writers pay nothing for the change.
CREATE INDEX events_destination_id_idx ON outbox.events (destination, id);
DROP INDEX outbox.events_destination_available_idx;
