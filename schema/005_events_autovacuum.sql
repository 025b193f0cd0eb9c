-- 005: outbox.events is a queue: rows are inserted, then deleted within seconds. Left to the
-- default thresholds (20 % of the table), dead index entries pile up at the front of the id
-- order and every claim walks them. Vacuum it early and without throttling.
ALTER TABLE outbox.events SET (
    autovacuum_vacuum_scale_factor = 0.0,
    autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);
