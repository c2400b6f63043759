-- Erasure (`ragpipe forget`): what is kept of a forgotten document is a tombstone, never its text,
-- so that no later run, watch event or version build indexes it again; and an audit row per erasure.
CREATE TABLE ragpipe.forgotten (
    family        text NOT NULL,              -- the collection (every version of it)
    source_id     text NOT NULL,
    content_hash  text,                       -- the document's body hash (bytes and title), when it was
                                              -- indexed: finds copies under another source id
    chunk_hashes  text[] NOT NULL DEFAULT '{}',  -- its chunks' (their embedding-cache keys), for verify
    erasure_id    bigint NOT NULL,
    forgotten_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (family, source_id)
);

-- The document a cached vector last came from, so that forgetting the document also drops the vectors
-- of its earlier texts (entries cached before this migration have none: verify cannot tell them apart).
ALTER TABLE ragpipe.embedding_cache ADD COLUMN family text, ADD COLUMN source_id text;
CREATE INDEX embedding_cache_origin_idx ON ragpipe.embedding_cache (family, source_id);

CREATE TABLE ragpipe.erasures (
    id            bigserial PRIMARY KEY,
    family        text NOT NULL,
    action        text NOT NULL CHECK (action IN ('forget', 'undo')),
    by_role       text NOT NULL DEFAULT current_user,
    requested_by  text,                       -- who asked, as the caller says (the CLI: the OS user)
    filter        jsonb,                      -- the metadata filter, when it was one
    source_ids    int NOT NULL DEFAULT 0,     -- how many source ids were named (never which: they are in
                                              -- the tombstones until an undo removes them)
    documents     int NOT NULL DEFAULT 0,     -- document rows removed, over every version
    chunks        int NOT NULL DEFAULT 0,
    versions      int NOT NULL DEFAULT 0,
    cache_entries int NOT NULL DEFAULT 0,
    failure_records int NOT NULL DEFAULT 0,
    at            timestamptz NOT NULL DEFAULT now()
);

DO $$
DECLARE
    r name;
BEGIN  -- loader roles granted before this migration (ragpipe.grant_loader grants it from now on): a run
       -- reads the tombstones to skip what was forgotten
    FOR r IN SELECT DISTINCT grantee FROM information_schema.table_privileges
             WHERE table_schema = 'ragpipe' AND table_name = 'documents' AND privilege_type = 'INSERT'
               AND grantee NOT IN (current_user, 'PUBLIC') LOOP
        EXECUTE format('GRANT SELECT ON ragpipe.forgotten TO %I', r);
    END LOOP;
END
$$;
