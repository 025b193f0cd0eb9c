-- 002: the reference domain table (DESIGN §3).
--
-- The relay's default table mapping points here: `source.table = "extractions"`, id column `id`,
-- text column `content`, embedding column `embedding_id`. Teams with their own table map its
-- name and columns in config (`tables:` in config/outbox.yaml); this table then stays unused.

CREATE TABLE IF NOT EXISTS public.extractions (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    source_id    text        NOT NULL,
    content      text        NOT NULL,
    -- The Qdrant point id, set by the relay in the transaction that acknowledges the upsert.
    embedding_id uuid        NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- The reconciler scans rows whose side effect has not landed; keep that scan off the heap.
CREATE INDEX IF NOT EXISTS extractions_unembedded_idx
    ON public.extractions (created_at, id) WHERE embedding_id IS NULL;
