-- 003: state the relay needs beyond the events themselves.

-- One random id per database. The relay namespaces its Redis dedupe keys with it, so two
-- databases (staging and prod, or a restored copy) that reuse event ids never suppress each
-- other's stream entries.
CREATE TABLE outbox.instance (
    id        uuid    NOT NULL DEFAULT gen_random_uuid(),
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO outbox.instance DEFAULT VALUES;
