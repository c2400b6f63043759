-- The SQL search API (schema ragpipe). Re-applied by `ragpipe db migrate` whenever this file changes.
-- Every search function takes a collection name and returns ragpipe.search_hit rows best first:
--   (chunk_id, source_id = the document's stable source id, uri, title, text, metadata, score).
-- `filter` matches document metadata by containment (jsonb @>) in every function.
-- Functions are SECURITY DEFINER with a pinned search_path, so a role that may only EXECUTE them
-- (see ragpipe.grant_reader) can search without reading the tables. Values are bound, never
-- spliced; the only formatted parts of dynamic SQL are integers from ragpipe.collections.

-- CREATE OR REPLACE cannot change a function's result or arguments: the functions whose result is
-- not yet ragpipe.search_hit (before 006_search_hit.sql), build_hnsw_index(int, int), and every
-- keyword_search and hybrid_search without the trailing `language` argument are dropped here and
-- created below; their EXECUTE grants are given back, to the new signatures, at the end of this file.
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
       -- what a query is embedded with beside the model (prompts; an API model's endpoint options)
       -- and parsed in (its language, for keyword search and highlighting)
       jsonb_strip_nulls(jsonb_build_object('prompts', k.settings->'prompts', 'embedder', k.settings->'embedder',
                                            'dimensions', k.settings->'dimensions',
                                            'language', k.settings->'language',
                                            'languages', k.settings->'languages'))
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
                   index_name, ragpipe.chunk_partition(coll.id), ragpipe.indexed('embedding', coll.dimension,
                   coll.settings), (ragpipe.index_kind(coll.settings)).opclass, m,
                   coalesce((coll.settings #>> '{index,ef_construction}')::int, 64));
    built := true;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.build_hnsw_index(int) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ragpipe.get_collection(collection text)
RETURNS ragpipe.collections
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    coll ragpipe.collections;
BEGIN
    SELECT * INTO coll FROM ragpipe.collections c WHERE c.name = get_collection.collection;
    IF NOT FOUND THEN  -- `family@vN` names version N even while it is the active one (a pinned read)
        SELECT * INTO coll FROM ragpipe.collections c
        WHERE ragpipe.version_name(c.family, c.version) = get_collection.collection;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpipe: unknown collection "%"', collection
            USING ERRCODE = 'undefined_object', HINT = 'SELECT collection FROM ragpipe.collection_stats';
    END IF;
    RETURN coll;
END
$fn$;

-- Argument checks shared by the search functions: a NULL or out-of-range k, a NULL embedding or a
-- NaN weight is an error that says what to pass, never "the whole collection" or NaN scores.
CREATE OR REPLACE FUNCTION ragpipe.checked(name text, value double precision,
    low double precision DEFAULT '-Infinity', high double precision DEFAULT 'Infinity') RETURNS double precision
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF value IS NULL OR value IN ('NaN', 'Infinity', '-Infinity') OR value < low OR value > high THEN
        RAISE EXCEPTION 'ragpipe: % must be %, got %', name,
            CASE WHEN low = '-Infinity' AND high = 'Infinity' THEN 'a finite number'
                 ELSE format('between %s and %s', low, high) END,
            coalesce(value::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.checked_k(k int, max_k int DEFAULT 10000) RETURNS int
LANGUAGE sql IMMUTABLE AS $fn$ SELECT ragpipe.checked('k', k, 1, max_k)::int $fn$;

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
              FROM (SELECT ch.id, ch.document_id, ch.text, ch.embedding
                    FROM ragpipe.chunks ch
                    WHERE ch.collection_id = %2$s AND ($2::jsonb IS NULL OR ch.metadata @> $2::jsonb)
                    ORDER BY %3$s %5$s %4$s
                    LIMIT $4) c
              ORDER BY score DESC, c.id
              LIMIT $3) r
        JOIN ragpipe.documents d ON d.id = r.document_id
        ORDER BY r.score DESC, r.id $q$, coll.dimension, coll.id, ragpipe.indexed('ch.embedding', coll.dimension,
        coll.settings), ragpipe.indexed('$1', coll.dimension, coll.settings), (ragpipe.index_kind(coll.settings)).distance)
    USING query_embedding, filter, k, candidates;
END
$fn$;

DROP FUNCTION IF EXISTS ragpipe.any_word_query(text);  -- replaced by words_query, itself gone

-- The text search configurations a collection's chunks are made in: its `language` (default
-- english) and the other `languages` its documents may name.
CREATE OR REPLACE FUNCTION ragpipe.collection_languages(settings jsonb) RETURNS regconfig[]
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
SELECT array_agg(DISTINCT l::regconfig)
FROM (SELECT coalesce(settings ->> 'language', 'english') AS l
      UNION ALL SELECT jsonb_array_elements_text(coalesce(settings -> 'languages', '[]'))) x
$fn$;

-- The text search configuration named `language` (a search function's argument), or a clear error.
CREATE OR REPLACE FUNCTION ragpipe.query_language(language text) RETURNS regconfig
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    found regconfig;
BEGIN
    SELECT c.oid::regconfig INTO found FROM pg_ts_config c WHERE c.cfgname = lower(language);
    IF found IS NULL THEN
        RAISE EXCEPTION 'ragpipe: language % is not a text search configuration of this database',
            quote_literal(left(language, 40)) || CASE WHEN length(language) > 40 THEN '…' ELSE '' END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give one of SELECT cfgname FROM pg_ts_config (english, german, simple, ...), or NULL for the collection''s languages.';
    END IF;
    RETURN found;
END
$fn$;

-- A query's words as every one of those languages stems them (English alone: to_tsvector('english')),
-- so documents in different languages are found and ranked together by one BM25; with `language`,
-- as that language alone stems them.
DROP FUNCTION IF EXISTS ragpipe.query_lexemes(jsonb, text);
CREATE OR REPLACE FUNCTION ragpipe.query_lexemes(settings jsonb, query_text text, language text DEFAULT NULL)
RETURNS SETOF text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
SELECT DISTINCT w.lexeme
FROM unnest(CASE WHEN language IS NULL THEN ragpipe.collection_languages(settings)
                 ELSE ARRAY[ragpipe.query_language(language)] END) l
CROSS JOIN LATERAL unnest(to_tsvector(l, query_text)) w
$fn$;

-- keyword_search: exact BM25 (ragpipe.bm25_tf: k1 = 1.2, b = 0.75, idf from ragpipe.term_stats) top k;
-- any query word may match. It reads impact postings (008_postings.sql; the word index carries tf and
-- len, so a posting read gives its chunk that word's exact part, idf * bm25_tf(tf, len, mean length))
-- in rounds, and stops as soon as no chunk it has not scored can reach the k-th best score (the
-- threshold algorithm's safe stop; docs/keyword-search.md):
--   * a round reads each word's best `depth` postings (index.keyword_candidates, default 4000; 4x
--     more each round). A chunk not read in a word's list has at most idf * slack * the impact at
--     that list's cut (slack covers impacts computed with an older mean length: bm25_tf grows at
--     most in proportion to the mean), and nothing of a word read to its end;
--   * theta, the k-th best score known so far, is a lower bound of the k-th best score. The open
--     chunks whose known parts plus those bounds can still pass it are scored exactly from the
--     chunk index, best bound first, `probes` at a time (index.keyword_rescore, default 200),
--     raising theta: one batch a round, or all of them once no chunk read in no list can pass
--     theta and they are at most 4 batches. Then it returns the best k; else it reads deeper.
-- So the ranking is exact BM25 for any collection size, with or without a filter, ties aside; the
-- two settings only size the work of a round. With a `filter`, only postings of chunks whose
-- metadata matches it are read. `language` (a text search configuration, e.g. 'german') parses the
-- query in that language alone; NULL (the default) in every language the collection holds.
-- A bound on a search function's own work that its caller cannot lift: statement_timeout is a
-- default a reader may SET to 0, so keyword search checks its time at each round and stops past
-- `limit_s` (30 s; a collection's settings index.max_search_s may lower it), as a cancel would.
CREATE OR REPLACE FUNCTION ragpipe.check_search_time(limit_s double precision) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    IF extract(epoch FROM clock_timestamp() - statement_timestamp()) > limit_s THEN
        RAISE EXCEPTION 'ragpipe: keyword search stopped after % s, its bound whatever statement_timeout says; '
                        'use fewer or rarer words, or a filter', limit_s USING ERRCODE = 'query_canceled';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.keyword_search(
    collection text, query_text text, k int DEFAULT 10, filter jsonb DEFAULT NULL, language text DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
    depth bigint := coalesce((coll.settings #>> '{index,keyword_candidates}')::bigint, 4000);
    probes int := coalesce((coll.settings #>> '{index,keyword_rescore}')::int, 200);
    n double precision;
    avg_len double precision;
    slack double precision;
    words text[];
    idfs double precision[];
    unseen double precision;
    open_words int;
    theta double precision := 0;
    pool_ids bigint[];
    pool_known double precision[];
    pool_open boolean[];
    pool_ub double precision[];
    probed_ids bigint[] := '{}';
    probed_scores double precision[] := '{}';
    batch bigint[];
    left_over bigint;
    rounds_probed int := 0;
    max_s double precision := coalesce((coll.settings #>> '{index,max_search_s}')::double precision, 30);
BEGIN
    IF coll.settings ->> 'keyword' = 'false' THEN
        RAISE EXCEPTION 'ragpipe: collection "%" has no keyword index (keyword: false in collections.yml): search it '
                        'with mode semantic, or set keyword: true and run it', collection
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    k := ragpipe.checked_k(k);
    SELECT s.chunks, s.avg_length,
           -- bm25_tf(tf, len, a) <= bm25_tf(tf, len, b) * max(1, a / b); 1e-6 covers real's rounding
           greatest(1, coalesce(nullif(s.avg_length, 0), 1) / coalesce(nullif(s.impact_length, 0),
                                                                    nullif(s.avg_length, 0), 1)) * (1 + 1e-6)
    INTO n, avg_len, slack FROM ragpipe.text_stats s WHERE s.collection_id = coll.id;
    slack := coalesce(slack, 1 + 1e-6);
    depth := greatest(depth, k, 1);
    probes := greatest(probes, 1);
    -- Bounded work per query, as search engines bound it: the first 16 kB of the text, and of its
    -- distinct words the 32 rarest that occur in the collection (then the ones that occur nowhere).
    SELECT array_agg(x.lexeme ORDER BY x.c, x.lexeme),
           array_agg(ln(1 + (greatest(coalesce(n, 0), x.c) - x.c + 0.5) / (x.c + 0.5)) ORDER BY x.c, x.lexeme)
    INTO words, idfs
    FROM (SELECT w.lexeme, coalesce(t.chunks, 0)::bigint AS c
          FROM ragpipe.query_lexemes(coll.settings, left(coalesce(query_text, ''), 16384), language) w(lexeme)
          LEFT JOIN ragpipe.term_stats t ON t.collection_id = coll.id AND t.lexeme = w.lexeme
          ORDER BY coalesce(t.chunks, 0) = 0, coalesce(t.chunks, 0), w.lexeme
          LIMIT 32) x;
    IF words IS NULL THEN
        RETURN;
    END IF;
    LOOP
        PERFORM ragpipe.check_search_time(max_s);
        -- Each word's best `depth` postings.
        WITH q AS MATERIALIZED (
            SELECT x.i, x.w, x.idf FROM unnest(words, idfs) WITH ORDINALITY AS x(w, idf, i)),
        read AS MATERIALIZED (
            SELECT q.i, p.chunk_id, p.impact, q.idf * ragpipe.bm25_tf(p.tf, p.len, avg_len) AS part
            FROM q CROSS JOIN LATERAL (
                SELECT po.chunk_id, po.impact, po.tf, po.len FROM ragpipe.postings po
                WHERE po.collection_id = coll.id AND po.lexeme = q.w
                  AND (filter IS NULL OR EXISTS (
                      SELECT FROM ragpipe.chunks ch
                      WHERE ch.collection_id = coll.id AND ch.id = po.chunk_id AND ch.metadata @> filter))
                ORDER BY po.impact DESC
                LIMIT depth) p),
        cut AS MATERIALIZED (  -- the most a chunk not read in a word's list may still have of it
            SELECT q.i, CASE WHEN count(r.chunk_id) >= depth THEN q.idf * slack * min(r.impact) ELSE 0 END AS bound
            FROM q LEFT JOIN read r ON r.i = q.i
            GROUP BY q.i, q.idf),
        total AS (
            SELECT sum(c.bound) AS unseen, count(*) FILTER (WHERE c.bound > 0) AS open_words FROM cut c),
        per AS MATERIALIZED (
            SELECT r.chunk_id, sum(r.part) AS known, sum(c.bound) AS seen_bound,
                   count(*) FILTER (WHERE c.bound > 0) AS seen_open
            FROM read r JOIN cut c ON c.i = r.i
            GROUP BY r.chunk_id),
        th AS (
            SELECT greatest(theta, CASE WHEN count(*) < k THEN 0 ELSE min(b.known) END) AS theta
            FROM (SELECT p.known FROM per p ORDER BY p.known DESC LIMIT k) b),
        pool AS (  -- the chunks that can still pass theta, best bound first
            SELECT p.chunk_id, p.known, p.seen_open < t.open_words AS open,
                   p.known + greatest(t.unseen - p.seen_bound, 0) AS ub
            FROM per p, total t, th
            WHERE p.known + greatest(t.unseen - p.seen_bound, 0) >= th.theta)
        SELECT t.unseen, t.open_words, th.theta,
               (SELECT array_agg(pool.chunk_id ORDER BY pool.ub DESC, pool.chunk_id) FROM pool),
               (SELECT array_agg(pool.known ORDER BY pool.ub DESC, pool.chunk_id) FROM pool),
               (SELECT array_agg(pool.open ORDER BY pool.ub DESC, pool.chunk_id) FROM pool),
               (SELECT array_agg(pool.ub ORDER BY pool.ub DESC, pool.chunk_id) FROM pool)
        INTO unseen, open_words, theta, pool_ids, pool_known, pool_open, pool_ub
        FROM total t, th;
        -- Score exactly the open chunks of best bound, `probes` at a time, raising theta: one batch
        -- a round, or all that can still pass theta once no unread chunk can (unseen <= theta) and
        -- they are few (at most 4 batches).
        LOOP
            PERFORM ragpipe.check_search_time(max_s);
            SELECT array_agg(x.id), max(x.left_over) INTO batch, left_over FROM (
                SELECT p.id, count(*) OVER () AS left_over
                FROM unnest(pool_ids, pool_open, pool_ub) WITH ORDINALITY AS p(id, open, ub, o)
                LEFT JOIN unnest(probed_ids) AS e(id) ON e.id = p.id
                WHERE p.open AND p.ub >= theta AND e.id IS NULL
                ORDER BY p.o) x;
            EXIT WHEN batch IS NULL OR (rounds_probed > 0 AND (unseen > theta OR left_over > 4 * probes));
            batch := batch[1:probes];
            rounds_probed := rounds_probed + 1;
            SELECT probed_ids || array_agg(s.id), probed_scores || array_agg(s.score)
            INTO probed_ids, probed_scores
            -- One descent of the chunk index per chunk (LATERAL): as a join, the planner misjudges
            -- the lists' lengths and reads every query word's whole list instead (3x slower at 100k).
            FROM (SELECT b.id, e.score
                  FROM unnest(batch) AS b(id) CROSS JOIN LATERAL (
                      SELECT sum(x.idf * ragpipe.bm25_tf(po.tf, po.len, avg_len)) AS score
                      FROM ragpipe.postings po JOIN unnest(words, idfs) AS x(w, idf) ON x.w = po.lexeme
                      WHERE po.collection_id = coll.id AND po.chunk_id = b.id AND po.lexeme = ANY (words)) e) s;
            SELECT greatest(theta, CASE WHEN count(*) < k THEN 0 ELSE min(v.score) END) INTO theta
            FROM (SELECT coalesce(e.score, p.known) AS score
                  FROM unnest(pool_ids, pool_known) AS p(id, known)
                  LEFT JOIN unnest(probed_ids, probed_scores) AS e(id, score) ON e.id = p.id
                  ORDER BY 1 DESC LIMIT k) v;
        END LOOP;
        rounds_probed := 0;
        EXIT WHEN batch IS NULL AND unseen <= theta;
        depth := depth * 4;
    END LOOP;
    RETURN QUERY
    WITH scored AS (
        SELECT p.id, coalesce(e.score, p.known) AS score
        FROM unnest(pool_ids, pool_known, pool_open) AS p(id, known, open)
        LEFT JOIN unnest(probed_ids, probed_scores) AS e(id, score) ON e.id = p.id
        WHERE NOT p.open OR e.id IS NOT NULL
        UNION
        SELECT e.id, e.score FROM unnest(probed_ids, probed_scores) AS e(id, score)),
    best AS (SELECT s.id, s.score FROM scored s ORDER BY s.score DESC, s.id LIMIT k)
    SELECT ch.id, d.source_id, d.uri, d.title, ch.text, d.metadata, s.score
    FROM best s JOIN ragpipe.chunks ch ON ch.id = s.id AND ch.collection_id = coll.id
    JOIN ragpipe.documents d ON d.id = ch.document_id
    ORDER BY s.score DESC, s.id;
END
$fn$;

DROP FUNCTION IF EXISTS ragpipe.words_query(text[]);  -- the tsvector path of keyword_search used it

-- hybrid_search: fuses the semantic and keyword rankings of the top `candidates` of each (default
-- max(4k, 50)). Two fusions (fusion => 'rrf' or 'convex'):
--   rrf:    score = semantic_weight / (rrf_k + semantic rank) + keyword_weight / (rrf_k + keyword rank)
--   convex: score = alpha * semantic' + (1 - alpha) * keyword', where x' is the score min-max
--           normalised over that ranking's candidates (1 when they all tie; 0 when not a candidate)
-- A NULL argument takes the collection's default (collections.yml `search:`, stored in
-- settings -> 'search'), else rrf with weights 1 and rrf_k 60, alpha 0.5 (hybrid_defaults).
-- `language` is keyword_search's: the query's language, NULL for every language the collection holds.
CREATE OR REPLACE FUNCTION ragpipe.hybrid_defaults(coll ragpipe.collections) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $fn$
    SELECT jsonb_build_object('fusion', 'rrf', 'rrf_k', 60, 'semantic_weight', 1.0, 'keyword_weight', 1.0,
                              'alpha', 0.5) || coalesce(coll.settings -> 'search', '{}')
$fn$;

-- How many candidates hybrid search takes from each ranking: `candidates`, else max(4k, 50).
CREATE OR REPLACE FUNCTION ragpipe.hybrid_candidates(k int, candidates int DEFAULT NULL) RETURNS int
LANGUAGE sql IMMUTABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp AS $fn$
    SELECT ragpipe.checked('candidates', coalesce(candidates, greatest(4 * ragpipe.checked_k(k, 2500), 50)), 1, 10000)::int
$fn$;

-- fuse_rankings: hybrid_search's fusion (above) of a semantic and a keyword ranking, each best first
-- as semantic_search and keyword_search return them. A client that runs the two searches at once on
-- two connections (the search service does) fuses them here, exactly as hybrid_search does.
CREATE OR REPLACE FUNCTION ragpipe.fuse_rankings(
    collection text, semantic ragpipe.search_hit[], keyword ragpipe.search_hit[], k int DEFAULT 10,
    semantic_weight double precision DEFAULT NULL, keyword_weight double precision DEFAULT NULL,
    rrf_k int DEFAULT NULL, fusion text DEFAULT NULL, alpha double precision DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    d jsonb := ragpipe.hybrid_defaults(ragpipe.get_collection(collection));
BEGIN
    k := ragpipe.checked_k(k, 2500);
    fusion := coalesce(fusion, d ->> 'fusion');
    IF fusion NOT IN ('rrf', 'convex') THEN
        RAISE EXCEPTION 'ragpipe: fusion must be ''rrf'' or ''convex'', got %', coalesce(fusion, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    semantic_weight := ragpipe.checked('semantic_weight', coalesce(semantic_weight, (d ->> 'semantic_weight')::float8));
    keyword_weight := ragpipe.checked('keyword_weight', coalesce(keyword_weight, (d ->> 'keyword_weight')::float8));
    rrf_k := ragpipe.checked('rrf_k', coalesce(rrf_k, (d ->> 'rrf_k')::int), 0);
    alpha := ragpipe.checked('alpha', coalesce(alpha, (d ->> 'alpha')::float8), 0, 1);
    RETURN QUERY
    WITH sem AS (
        SELECT s.*, row_number() OVER (ORDER BY s.score DESC, s.chunk_id) AS r,
               min(s.score) OVER () AS lo, max(s.score) OVER () AS hi
        FROM unnest(semantic) s),
    kw AS (
        SELECT s.*, row_number() OVER (ORDER BY s.score DESC, s.chunk_id) AS r,
               min(s.score) OVER () AS lo, max(s.score) OVER () AS hi
        FROM unnest(keyword) s),
    fused AS (
        SELECT coalesce(sem.chunk_id, kw.chunk_id) AS chunk_id, coalesce(sem.source_id, kw.source_id) AS source_id,
               coalesce(sem.uri, kw.uri) AS uri, coalesce(sem.title, kw.title) AS title,
               coalesce(sem.text, kw.text) AS text, coalesce(sem.metadata, kw.metadata) AS metadata,
               CASE WHEN fusion = 'rrf' THEN
                   coalesce(semantic_weight / (rrf_k + sem.r), 0) + coalesce(keyword_weight / (rrf_k + kw.r), 0)
               ELSE alpha * CASE WHEN sem.chunk_id IS NULL THEN 0
                                 ELSE coalesce((sem.score - sem.lo) / nullif(sem.hi - sem.lo, 0), 1) END
                    + (1 - alpha) * CASE WHEN kw.chunk_id IS NULL THEN 0
                                        ELSE coalesce((kw.score - kw.lo) / nullif(kw.hi - kw.lo, 0), 1) END
               END AS score
        FROM sem FULL JOIN kw ON kw.chunk_id = sem.chunk_id)
    SELECT f.chunk_id, f.source_id, f.uri, f.title, f.text, f.metadata, f.score::float8
    FROM fused f
    ORDER BY f.score DESC, f.chunk_id
    LIMIT k;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.hybrid_search(
    collection text, query_text text, query_embedding vector, k int DEFAULT 10, filter jsonb DEFAULT NULL,
    semantic_weight double precision DEFAULT NULL, keyword_weight double precision DEFAULT NULL,
    rrf_k int DEFAULT NULL, candidates int DEFAULT NULL, fusion text DEFAULT NULL,
    alpha double precision DEFAULT NULL, language text DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    n int := ragpipe.hybrid_candidates(k, candidates);
BEGIN
    RETURN QUERY
    SELECT f.* FROM ragpipe.fuse_rankings(
        collection,
        CASE WHEN query_embedding IS NOT NULL THEN ARRAY(SELECT s FROM ragpipe.semantic_search(collection, query_embedding, n, filter) s) END,
        CASE WHEN query_text IS NOT NULL THEN ARRAY(SELECT s FROM ragpipe.keyword_search(collection, query_text, n, filter, language) s) END,
        k, semantic_weight, keyword_weight, rrf_k, fusion, alpha) f;
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
    CROSS JOIN LATERAL ragpipe.semantic_search(k.name, src.embedding, similar_chunks.k + 1, filter) s
    WHERE src.id = similar_chunks.chunk_id AND s.chunk_id <> src.id
    ORDER BY s.score DESC, s.chunk_id
    LIMIT ragpipe.checked_k(similar_chunks.k)
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
    EXECUTE format('SELECT l2_normalize(avg(c.embedding::vector(%s))) FROM ragpipe.chunks c '
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

-- rag_context: the context for a RAG prompt. Takes the best k chunks (hybrid when both query text
-- and embedding are given and the collection has a keyword index), merges chunks of one document that overlap (or nearly touch) into one
-- passage in document order, keeps passages in rank order (a passage ranks as its best chunk)
-- while they fit in max_tokens, and numbers one citation per document. Returns the context text
-- and the citations [{n, source_id, uri, title}].
CREATE OR REPLACE FUNCTION ragpipe.rag_context(
    collection text, query_text text, query_embedding vector, k int DEFAULT 8, max_tokens int DEFAULT 1500,
    filter jsonb DEFAULT NULL)
RETURNS TABLE (context text, citations jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
    p record;
    used int := 0;
    out_text text := '';
    cites jsonb := '[]';
    cite_no int;
BEGIN
    k := ragpipe.checked_k(k);
    FOR p IN
        WITH hits AS (
            SELECT h.source_id, h.uri, h.title, ch.document_id AS doc, ch.char_start, ch.char_end,
                   ch.token_count, ch.text, row_number() OVER () AS rank
            FROM ragpipe.hybrid_search(collection, CASE WHEN coll.settings ->> 'keyword' = 'false' THEN NULL
                                                        ELSE query_text END,  -- keyword: false: semantic
                                       query_embedding, k, filter) h
            CROSS JOIN LATERAL (SELECT * FROM ragpipe.chunks c  -- one index probe per hit
                                WHERE c.id = h.chunk_id AND c.collection_id = coll.id) ch),
        ordered AS (
            SELECT *, max(char_end) OVER (PARTITION BY doc ORDER BY char_start, char_end
                                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
            FROM hits),
        islands AS (
            SELECT *, sum(CASE WHEN prev_end IS NULL OR char_start > prev_end + 2 THEN 1 ELSE 0 END)
                          OVER (PARTITION BY doc ORDER BY char_start, char_end) AS island
            FROM ordered)
        SELECT min(source_id) AS source_id, min(uri) AS uri, min(title) AS title, min(rank) AS rank,
               sum(token_count) AS tokens,
               string_agg(CASE
                   WHEN prev_end IS NULL OR char_start > prev_end THEN
                       CASE WHEN prev_end IS NULL OR char_start > prev_end + 2 THEN '' ELSE ' ' END || text
                   WHEN char_end > prev_end THEN substr(text, prev_end - char_start + 1)
                   ELSE '' END, '' ORDER BY char_start, char_end) AS passage
        FROM islands
        GROUP BY doc, island
        ORDER BY min(rank)
    LOOP
        IF used > 0 AND used + p.tokens > max_tokens THEN
            CONTINUE;
        END IF;
        used := used + p.tokens;
        SELECT (c ->> 'n')::int INTO cite_no FROM jsonb_array_elements(cites) c
        WHERE c ->> 'source_id' = p.source_id;
        IF cite_no IS NULL THEN
            cite_no := jsonb_array_length(cites) + 1;
            cites := cites || jsonb_build_array(jsonb_build_object(
                'n', cite_no, 'source_id', p.source_id, 'uri', p.uri, 'title', p.title));
        END IF;
        out_text := out_text || CASE WHEN out_text = '' THEN '' ELSE E'\n\n' END
                    || '[' || cite_no || '] ' || coalesce(p.title, p.source_id) || E'\n' || p.passage;
        cite_no := NULL;
    END LOOP;
    RETURN QUERY SELECT out_text, cites;
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
