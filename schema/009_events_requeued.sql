-- 009: mark events an operator moved back from the dead letters.
--
-- The relay deduplicates Redis xadd/publish by a high-water mark per ordering key: the highest
-- event id of the key it has applied. Events of one key are applied in id order, so an event at
-- or below the mark is a redelivery. A requeued dead letter is the exception: it keeps its id
-- (so a consumer can still match it by outbox_id) but comes back after later events of its key
-- were applied. The relay checks such an event against a dedupe key of its own instead.
--
-- Nullable and without a default: rows written by outbox.enqueue carry nothing extra.
ALTER TABLE outbox.events ADD COLUMN requeued_at timestamptz;
COMMENT ON COLUMN outbox.events.requeued_at IS
    'when an operator requeued this event from outbox.dead_letters (outbox-relay dead-letters requeue)';
