-- Collection versions behind a stable name. A collection (a `family`) has numbered versions, each a
-- row of ragpipe.collections with its own documents, chunk partition, HNSW index and keyword
-- statistics. Exactly one version is active, and it carries the family's plain name, so every
-- search function and every consumer's SQL that names the collection reads the active version.
-- The others are named `family@vN` (ragpipe.version_name): a version being built, one built but not
-- promoted, and previous ones kept for rollback. Promotion renames two rows in one transaction
-- (ragpipe.promote_version, sql/api/040_versions.sql).
ALTER TABLE ragpipe.collections
    ADD COLUMN family      text,
    ADD COLUMN version     int  NOT NULL DEFAULT 1,
    ADD COLUMN state       text NOT NULL DEFAULT 'active'
        CHECK (state IN ('building', 'ready', 'active', 'previous', 'rejected')),
    ADD COLUMN evaluation  jsonb,
    ADD COLUMN promoted_at timestamptz;
UPDATE ragpipe.collections SET family = name, promoted_at = created_at;
ALTER TABLE ragpipe.collections ALTER COLUMN family SET NOT NULL,
    ADD UNIQUE (family, version);
CREATE UNIQUE INDEX collections_one_active ON ragpipe.collections (family) WHERE state = 'active';

-- The embedding cache: vectors of chunk texts that left every collection (a replaced or deleted
-- document, a pruned version), kept by (model, hash of the embedded text) so that a later run
-- embedding the same text takes the vector instead of computing it. Vectors still in
-- ragpipe.chunks are found there; this table holds only what would otherwise be lost.
-- `ragpipe cache prune` and every run's finalize bound it (RAGPIPE_CACHE_MAX_ROWS / _MAX_AGE_DAYS).
CREATE TABLE ragpipe.embedding_cache (
    model        text   NOT NULL,
    content_hash text   NOT NULL,
    embedding    vector NOT NULL,
    used_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, content_hash)
);
CREATE INDEX embedding_cache_used_idx ON ragpipe.embedding_cache (used_at);
DO $$
DECLARE
    r name;
BEGIN  -- loader roles granted before this migration (ragpipe.grant_loader grants it from now on)
    FOR r IN SELECT grantee FROM information_schema.role_table_grants
             WHERE table_schema = 'ragpipe' AND table_name = 'documents' AND privilege_type = 'INSERT'
               AND grantee NOT IN (SELECT tableowner FROM pg_tables WHERE schemaname = 'ragpipe' AND tablename = 'documents')
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ragpipe.embedding_cache TO %I', r);
    END LOOP;
END
$$;
