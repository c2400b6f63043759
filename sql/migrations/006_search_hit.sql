-- One result type for every search function (sql/api/010_search.sql). Its `source_id` is the
-- document's stable source id (relative path, row id, URL); until this migration the search
-- functions called that column `document_id`, which in ragpipe.chunks is the bigint key of
-- ragpipe.documents. Consumers' SQL that selects `document_id` from a search function must select
-- `source_id` instead (README, "Upgrading"). The API file drops and recreates the functions whose
-- result changes, keeping their EXECUTE grants.
CREATE TYPE ragpipe.search_hit AS (
    chunk_id bigint,
    source_id text,
    uri text,
    title text,
    text text,
    metadata jsonb,
    score double precision
);
