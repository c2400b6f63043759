-- Core tables: collections, documents, chunks, ingest runs and failures.
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS ragpipe;

CREATE TABLE ragpipe.collections (
    id            serial PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    model         text NOT NULL,
    dimension     int  NOT NULL CHECK (dimension > 0),
    chunk_tokens  int  NOT NULL,
    chunk_overlap int  NOT NULL,
    settings      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ragpipe.documents (
    id            bigserial PRIMARY KEY,
    collection_id int  NOT NULL REFERENCES ragpipe.collections ON DELETE CASCADE,
    source_id     text NOT NULL,
    uri           text NOT NULL,
    title         text,
    content_hash  text NOT NULL,
    fingerprint   text,
    metadata      jsonb NOT NULL DEFAULT '{}',
    chunk_count   int  NOT NULL DEFAULT 0,
    run_id        bigint,  -- the ingest run that last wrote this row (lets a retried batch skip its own work)
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (collection_id, source_id)
);
CREATE INDEX documents_metadata_idx ON ragpipe.documents USING gin (metadata jsonb_path_ops);

-- Chunks carry their collection and a copy of the document metadata so that filtered
-- vector searches stay on one table (and on its HNSW index with iterative scans).
CREATE TABLE ragpipe.chunks (
    id            bigserial PRIMARY KEY,
    collection_id int  NOT NULL REFERENCES ragpipe.collections ON DELETE CASCADE,
    document_id   bigint NOT NULL REFERENCES ragpipe.documents ON DELETE CASCADE,
    ordinal       int  NOT NULL,
    text          text NOT NULL,
    token_count   int  NOT NULL,
    char_start    int  NOT NULL,
    char_end      int  NOT NULL,
    heading_path  text[] NOT NULL DEFAULT '{}',
    content_hash  text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    embedding     vector NOT NULL,
    tsv           tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
    UNIQUE (document_id, ordinal)
);
CREATE INDEX chunks_content_hash_idx ON ragpipe.chunks (content_hash);
CREATE INDEX chunks_collection_idx ON ragpipe.chunks (collection_id);
CREATE INDEX chunks_tsv_idx ON ragpipe.chunks USING gin (tsv);
CREATE INDEX chunks_metadata_idx ON ragpipe.chunks USING gin (metadata jsonb_path_ops);

CREATE TABLE ragpipe.ingest_runs (
    id              bigserial PRIMARY KEY,
    collection_id   int NOT NULL REFERENCES ragpipe.collections ON DELETE CASCADE,
    trigger         text NOT NULL DEFAULT 'cli',
    status          text NOT NULL DEFAULT 'running'
                    CHECK (status IN ('running', 'succeeded', 'failed', 'dry_run')),
    listing_complete boolean,
    listed          int NOT NULL DEFAULT 0,
    new             int NOT NULL DEFAULT 0,
    changed         int NOT NULL DEFAULT 0,
    unchanged       int NOT NULL DEFAULT 0,
    deleted         int NOT NULL DEFAULT 0,
    failed          int NOT NULL DEFAULT 0,
    chunks_embedded int NOT NULL DEFAULT 0,
    chunks_reused   int NOT NULL DEFAULT 0,
    seconds         double precision,
    error           text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE TABLE ragpipe.ingest_failures (
    id            bigserial PRIMARY KEY,
    run_id        bigint REFERENCES ragpipe.ingest_runs ON DELETE CASCADE,
    collection_id int NOT NULL REFERENCES ragpipe.collections ON DELETE CASCADE,
    source_id     text NOT NULL,
    uri           text,
    stage         text NOT NULL,
    error         text NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ingest_failures_run_idx ON ragpipe.ingest_failures (run_id);
