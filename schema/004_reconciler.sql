-- 004: indexes the reconciler's lookups need.
--
-- "Is there a live (or dead) upsert for this row?" and "does a live event target this point?"
-- are asked for pages of row ids / point ids; without these they would scan the backlog.
CREATE INDEX events_source_idx ON outbox.events ((payload #>> '{source,table}'), (payload #>> '{source,id}'))
    WHERE destination = 'qdrant';
CREATE INDEX events_point_idx ON outbox.events ((payload ->> 'id')) WHERE destination = 'qdrant';
CREATE INDEX dead_letters_source_idx ON outbox.dead_letters ((payload #>> '{source,table}'), (payload #>> '{source,id}'))
    WHERE destination = 'qdrant';
