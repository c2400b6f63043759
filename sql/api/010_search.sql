-- The SQL search API (schema ragpipe). Re-applied by `ragpipe db migrate` whenever this file changes.
-- Every search function takes a collection name and returns ragpipe.search_hit rows best first:
--   (chunk_id, source_id = the document's stable source id, uri, title, text, metadata, score).
-- `filter` matches document metadata by containment (jsonb @>) in every function.
-- Functions are SECURITY DEFINER with a pinned search_path, so a role that may only EXECUTE them
-- (see ragpipe.grant_reader) can search without reading the tables. Values are bound, never
-- spliced; the only formatted parts of dynamic SQL are integers from ragpipe.collections.

-- CREATE OR REPLACE cannot change a function's result or arguments: the functions whose result is
-- not yet ragpipe.search_hit (before 006_search_hit.sql), build_hnsw_index(int, int), and every
-- keyword_search and hybrid_search without the trailing `language` argument are dropped here (the
-- new ones are made by 005_keyword_search.sql and 007_hybrid_search.sql, applied before this file,
-- and the rest below); their EXECUTE grants are given back, to the new signatures, at the end of this file.
CREATE TEMP TABLE replaced_functions ON COMMIT DROP AS
SELECT p.oid, CASE p.proname
           WHEN 'build_hnsw_index' THEN 'ragpipe.build_hnsw_index(integer)'
           WHEN 'keyword_search' THEN 'ragpipe.keyword_search(text, text, integer, jsonb, text)'
           WHEN 'hybrid_search' THEN 'ragpipe.hybrid_search(text, text, vector, integer, jsonb, double precision, '
                                     'double precision, integer, integer, text, double precision, text)'
           ELSE p.oid::regprocedure::text END AS function
FROM pg_proc p
WHERE p.pronamespace = 'ragpipe'::regnamespace
  AND (pg_get_function_result(p.oid) LIKE 'TABLE(chunk_id bigint, document_id text,%'
       OR p.oid = to_regprocedure('ragpipe.build_hnsw_index(int, int)')
       OR (p.proname = 'keyword_search' AND p.pronargs <> 5)
       OR (p.proname = 'hybrid_search' AND p.pronargs <> 12));
CREATE TEMP TABLE replaced_grants ON COMMIT DROP AS
SELECT DISTINCT r.function, a.grantee::regrole::text AS grantee
FROM replaced_functions r JOIN pg_proc p ON p.oid = r.oid CROSS JOIN LATERAL aclexplode(p.proacl) a
WHERE a.grantee <> p.proowner AND a.grantee <> 0;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT oid FROM replaced_functions LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;

CREATE OR REPLACE VIEW ragpipe.collection_stats AS
SELECT k.name AS collection, k.model, k.dimension,
       (SELECT count(*) FROM ragpipe.documents d WHERE d.collection_id = k.id) AS documents,
       (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) AS chunks,
       k.updated_at,
       last_run.status AS last_run_status,
       last_run.at AS last_run_at,
       k.version,
       -- what a query is embedded with beside the model (prompts; an API model's endpoint options),
       -- parsed in (its language, for keyword search and highlighting) and re-ranked by
       jsonb_strip_nulls(jsonb_build_object('prompts', k.settings->'prompts', 'embedder', k.settings->'embedder',
                                            'dimensions', k.settings->'dimensions',
                                            'language', k.settings->'language',
                                            'languages', k.settings->'languages',
                                            'keyword', k.settings->'keyword', 'rerank', k.settings->'rerank'))
           AS query_settings
FROM ragpipe.collections k
LEFT JOIN LATERAL (SELECT r.status, coalesce(r.finished_at, r.started_at) AS at FROM ragpipe.ingest_runs r
                   WHERE r.collection_id = k.id AND r.status <> 'dry_run'
                   ORDER BY r.id DESC LIMIT 1) last_run ON true
WHERE k.state = 'active';  -- the version searches read (`ragpipe versions NAME` lists the others)

-- The HNSW index of a collection: its name, the memory its build needs, and the build itself.
CREATE OR REPLACE FUNCTION ragpipe.hnsw_index_name(collection_id int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT 'chunks_hnsw_c' || collection_id $fn$;

-- MB of maintenance_work_mem for the HNSW graph of `rows` vectors to fit in memory. Per element:
-- the vector (4 bytes a dimension), 2*m layer-0 neighbours plus upper layers (~10 bytes each), and
-- bookkeeping; 25 % headroom. Without that memory pgvector builds on disk, much more slowly.
CREATE OR REPLACE FUNCTION ragpipe.hnsw_build_memory_mb(rows bigint, dimension int, m int) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$ SELECT (rows * (4 * dimension + 8 + 2 * m * 10 + 64) * 1.25 / 2^20)::int + 16 $fn$;

-- The column a collection's chunks hold their vectors in: embedding_half (halfvec) for `storage:
-- halfvec`, else embedding (float32); readers that need the vector take ragpipe.vector_of(both).
CREATE OR REPLACE FUNCTION ragpipe.vector_column(settings jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN settings ->> 'storage' = 'halfvec' THEN 'embedding_half' ELSE 'embedding' END
$fn$;

-- What a collection's HNSW index holds of `col` (a vector column or argument), by its settings:
-- float32 (vector), halfvec (`storage: halfvec`) or one bit a dimension (`index.quantization: binary`).
-- The index, the ORDER BY of semantic_search and the query's side all use this one expression.
CREATE OR REPLACE FUNCTION ragpipe.indexed(col text, dimension int, settings jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN settings #>> '{index,quantization}' = 'binary'
            THEN format('binary_quantize(%s::vector(%s))::bit(%2$s)', col, dimension)
            WHEN settings ->> 'storage' = 'halfvec' THEN format('%s::halfvec(%s)', col, dimension)
            ELSE format('%s::vector(%s)', col, dimension) END
$fn$;

-- The operator class and distance operator of that expression, and its bytes a dimension.
CREATE OR REPLACE FUNCTION ragpipe.index_kind(settings jsonb, OUT opclass text, OUT distance text,
    OUT bytes_per_dimension numeric)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN settings #>> '{index,quantization}' = 'binary' THEN 'bit_hamming_ops'
            WHEN settings ->> 'storage' = 'halfvec' THEN 'halfvec_cosine_ops' ELSE 'vector_cosine_ops' END,
       CASE WHEN settings #>> '{index,quantization}' = 'binary' THEN '<~>' ELSE '<=>' END,
       CASE WHEN settings #>> '{index,quantization}' = 'binary' THEN 0.125
            WHEN settings ->> 'storage' = 'halfvec' THEN 2 ELSE 4 END
$fn$;

-- build_hnsw_index: the HNSW index (cosine) of the collection's chunk partition, on its embeddings
-- cast to its dimension, built once after the first load, with maintenance_work_mem sized by
-- hnsw_build_memory_mb and capped by the collection's index.maintenance_work_mem_cap_mb (default
-- 2048). Returns whether it was built now, and the MB the graph needs and was given.
-- SECURITY DEFINER so the loader role needs no DDL.
CREATE OR REPLACE FUNCTION ragpipe.build_hnsw_index(collection_id int,
    OUT built boolean, OUT needed_mb int, OUT memory_mb int)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    coll ragpipe.collections;
    index_name text := ragpipe.hnsw_index_name(collection_id);
    m int;
    rows bigint;
BEGIN
    SELECT * INTO STRICT coll FROM ragpipe.collections c WHERE c.id = build_hnsw_index.collection_id;
    built := false;
    IF to_regclass('ragpipe.' || index_name) IS NOT NULL THEN
        RETURN;
    END IF;
    m := coalesce((coll.settings #>> '{index,m}')::int, 16);
    EXECUTE format('SELECT count(*) FROM ragpipe.%I', ragpipe.chunk_partition(coll.id)) INTO rows;
    needed_mb := ragpipe.hnsw_build_memory_mb(  -- the width in float32s of what the index holds
        rows, ceil(coll.dimension * (ragpipe.index_kind(coll.settings)).bytes_per_dimension / 4)::int, m);
    memory_mb := greatest(64, least(needed_mb,
                                    coalesce((coll.settings #>> '{index,maintenance_work_mem_cap_mb}')::int, 2048)));
    PERFORM set_config('maintenance_work_mem', memory_mb || 'MB', true);
    EXECUTE format('CREATE INDEX %I ON ragpipe.%I USING hnsw ((%s) %s) WITH (m = %s, ef_construction = %s)',
                   index_name, ragpipe.chunk_partition(coll.id), ragpipe.indexed(ragpipe.vector_column(coll.settings),
                   coll.dimension, coll.settings), (ragpipe.index_kind(coll.settings)).opclass, m,
                   coalesce((coll.settings #>> '{index,ef_construction}')::int, 64));
    built := true;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.build_hnsw_index(int) FROM PUBLIC;

-- semantic_search: nearest chunks by cosine similarity, served by the collection's HNSW index.
-- Iterative index scans keep returning k rows when the filter is selective. Scores are the exact
-- float32 cosine; a binary index's best `index.rerank` × k candidates (Hamming) are re-ranked by it.
CREATE OR REPLACE FUNCTION ragpipe.semantic_search(
    collection text, query_embedding vector, k int DEFAULT 10, filter jsonb DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = ragpipe, public, pg_temp
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 40
AS $fn$
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
    candidates int;
BEGIN
    k := ragpipe.checked_k(k);
    IF query_embedding IS NULL THEN
        RAISE EXCEPTION 'ragpipe: query_embedding is NULL; embed the query with the collection''s model '
                        '(ragpipe embed "text")' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF vector_dims(query_embedding) <> coll.dimension THEN
        RAISE EXCEPTION 'ragpipe: query embedding has % dimensions, collection "%" has %',
            vector_dims(query_embedding), coll.name, coll.dimension USING ERRCODE = 'data_exception';
    END IF;
    candidates := k * CASE WHEN coll.settings #>> '{index,quantization}' = 'binary'
                           THEN coalesce((coll.settings #>> '{index,rerank}')::int, 40) ELSE 1 END;
    PERFORM set_config('hnsw.ef_search',
        least(greatest(candidates, coalesce((coll.settings -> 'index' ->> 'ef_search')::int, 40)), 1000)::text, true);
    RETURN QUERY EXECUTE format($q$
        SELECT r.id, d.source_id, d.uri, d.title, r.text, d.metadata, r.score
        FROM (SELECT c.id, c.document_id, c.text, 1 - (c.embedding::vector(%1$s) <=> $1::vector(%1$s)) AS score
              FROM (SELECT ch.id, ch.document_id, ch.text, ragpipe.vector_of(ch.embedding, ch.embedding_half) AS embedding
                    FROM ragpipe.chunks ch
                    WHERE ch.collection_id = %2$s AND ($2::jsonb IS NULL OR ch.metadata @> $2::jsonb)
                    ORDER BY %3$s %5$s %4$s
                    LIMIT $4) c
              ORDER BY score DESC, c.id
              LIMIT $3) r
        JOIN ragpipe.documents d ON d.id = r.document_id
        ORDER BY r.score DESC, r.id $q$, coll.dimension, coll.id, ragpipe.indexed('ch.' || ragpipe.vector_column(coll.settings),
        coll.dimension, coll.settings), ragpipe.indexed('$1', coll.dimension, coll.settings), (ragpipe.index_kind(coll.settings)).distance)
    USING query_embedding, filter, k, candidates;
END
$fn$;

-- similar_chunks: "more like this" for a chunk (the chunk itself excluded).
CREATE OR REPLACE FUNCTION ragpipe.similar_chunks(chunk_id bigint, k int DEFAULT 10, filter jsonb DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
    SELECT s.*
    FROM ragpipe.chunks src
    JOIN ragpipe.collections k ON k.id = src.collection_id
    CROSS JOIN LATERAL ragpipe.semantic_search(k.name, ragpipe.vector_of(src.embedding, src.embedding_half),
                                               similar_chunks.k + 1, filter) s
    WHERE src.id = similar_chunks.chunk_id AND s.chunk_id <> src.id
    ORDER BY s.score DESC, s.chunk_id
    LIMIT ragpipe.checked_k(similar_chunks.k)
$fn$;

-- chunk_context: a chunk (a hit's chunk_id) of a collection with up to `neighbours` chunks before and after it in its
-- document, in document order (`hit` marks the chunk asked for): a search hit's passage in context,
-- for the search page and agents. No row when the collection has no such chunk.
CREATE OR REPLACE FUNCTION ragpipe.chunk_context(collection text, chunk bigint, neighbours int DEFAULT 2)
RETURNS TABLE (source_id text, uri text, title text, chunk_id bigint, ordinal int, text text, hit boolean)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
BEGIN
    IF neighbours IS NULL OR neighbours < 0 OR neighbours > 20 THEN
        RAISE EXCEPTION 'ragpipe: neighbours must be between 0 and 20 (chunks before and after the chunk), got %',
            coalesce(neighbours::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT d.source_id, d.uri, d.title, n.id, n.ordinal, n.text, n.id = c.id
    FROM ragpipe.chunks c
    JOIN ragpipe.documents d ON d.id = c.document_id
    JOIN ragpipe.chunks n ON n.document_id = c.document_id AND n.collection_id = coll.id
                         AND n.ordinal BETWEEN c.ordinal - neighbours AND c.ordinal + neighbours
    WHERE c.id = chunk AND c.collection_id = coll.id
    ORDER BY n.ordinal;
END
$fn$;

-- document_text: a document of a collection as the collection holds it, its chunks joined in
-- document order with the text they share once (agents fetch it by a hit's source_id). No row when
-- the collection has no such document.
CREATE OR REPLACE FUNCTION ragpipe.document_text(collection text, document text)
RETURNS TABLE (source_id text, uri text, title text, chunks int, text text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
    WITH c AS (
        SELECT d.source_id, d.uri, d.title, ch.text, ch.char_start, ch.char_end,
               max(ch.char_end) OVER (ORDER BY ch.char_start, ch.char_end
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
        FROM ragpipe.documents d
        JOIN ragpipe.chunks ch ON ch.document_id = d.id AND ch.collection_id = d.collection_id
        WHERE d.collection_id = (ragpipe.get_collection(document_text.collection)).id
          AND d.source_id = document_text.document)
    SELECT min(c.source_id), min(c.uri), min(c.title), count(*)::int,
           string_agg(CASE WHEN c.prev_end IS NULL THEN c.text
                           WHEN c.char_start > c.prev_end + 2 THEN E'\n\n' || c.text
                           WHEN c.char_start > c.prev_end THEN ' ' || c.text
                           WHEN c.char_end > c.prev_end THEN substr(c.text, c.prev_end - c.char_start + 1)
                           ELSE '' END, '' ORDER BY c.char_start, c.char_end)
    FROM c HAVING count(*) > 0
$fn$;

-- similar_documents: documents closest to a document (mean of its chunk embeddings); one row per
-- document with its best chunk; a document's score is its best chunk's score.
CREATE OR REPLACE FUNCTION ragpipe.similar_documents(
    collection text, source_id text, k int DEFAULT 10, filter jsonb DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
    centroid vector;
BEGIN
    k := ragpipe.checked_k(k, 1000);
    EXECUTE format('SELECT l2_normalize(avg(ragpipe.vector_of(c.embedding, c.embedding_half)::vector(%s))) FROM ragpipe.chunks c '
                   'JOIN ragpipe.documents d ON d.id = c.document_id '
                   'WHERE d.collection_id = $1 AND d.source_id = $2', coll.dimension)
        INTO centroid USING coll.id, source_id;
    IF centroid IS NULL THEN
        RAISE EXCEPTION 'ragpipe: no document "%" in collection "%"', source_id, coll.name
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    SELECT DISTINCT ON (s.score, s.source_id) s.*
    FROM (SELECT DISTINCT ON (h.source_id) h.*
          FROM ragpipe.semantic_search(coll.name, centroid, greatest(10 * k, 100), filter) h
          WHERE h.source_id <> similar_documents.source_id
          ORDER BY h.source_id, h.score DESC) s
    ORDER BY s.score DESC, s.source_id
    LIMIT k;
END
$fn$;

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT * FROM replaced_grants WHERE to_regprocedure(function) IS NOT NULL LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', g.function, g.grantee);
    END LOOP;
END
$$;
