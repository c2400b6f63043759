-- `storage: halfvec` halves the table too (issue 43.5): such a collection's chunks keep their vector in
-- `embedding_half` (2 bytes a dimension) and `embedding` is NULL; every other collection's stay in
-- `embedding` (float32). One column or the other, never both. Readers take ragpipe.vector_of(embedding,
-- embedding_half); the HNSW index of a halfvec collection is on embedding_half itself.
-- Existing halfvec collections move their vectors over here; their HNSW index is dropped and their
-- next run builds it on the new column (semantic search scans exactly until then).
ALTER TABLE ragpipe.chunks ALTER COLUMN embedding DROP NOT NULL;
ALTER TABLE ragpipe.chunks ADD COLUMN embedding_half halfvec;

CREATE FUNCTION ragpipe.vector_of(embedding vector, embedding_half halfvec) RETURNS vector
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT coalesce(embedding, embedding_half::vector) $fn$;

DO $$
DECLARE
    k int;
BEGIN
    FOR k IN SELECT id FROM ragpipe.collections WHERE settings ->> 'storage' = 'halfvec' ORDER BY id LOOP
        EXECUTE format('DROP INDEX IF EXISTS ragpipe.%I', 'chunks_hnsw_c' || k);  -- ragpipe.hnsw_index_name
        UPDATE ragpipe.chunks SET embedding_half = embedding::halfvec, embedding = NULL WHERE collection_id = k;
    END LOOP;
END
$$;

ALTER TABLE ragpipe.chunks ADD CONSTRAINT chunks_one_vector CHECK (num_nonnulls(embedding, embedding_half) = 1);
