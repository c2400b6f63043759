-- Hybrid search and RAG context of the SQL search API: the fusion of a semantic and a keyword ranking
-- (ragpipe.fuse_rankings, ragpipe.hybrid_search) and the context of a RAG prompt (ragpipe.rag_context).
-- Applied before 010_search.sql, whose first lines drop the older signatures it replaces.

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

-- context_of: the context for a RAG prompt from chunks already ranked (`chunk_ids`, best first: a
-- first stage re-ranked by a model, or any ranking of the client's own). Each chunk comes with up to
-- `neighbours` chunks before and after it in its document (its passage in context: "small to big");
-- chunks of one document that overlap (or nearly touch) merge into one passage in document order;
-- passages stay in rank order (a passage ranks as its best chunk) while they fit in max_tokens; one
-- citation per document. Ids of other collections are ignored. Returns the context text and the
-- citations [{n, source_id, uri, title}].
CREATE OR REPLACE FUNCTION ragpipe.context_of(
    collection text, chunk_ids bigint[], max_tokens int DEFAULT 1500, neighbours int DEFAULT 0)
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
    IF neighbours IS NULL OR neighbours < 0 OR neighbours > 20 THEN
        RAISE EXCEPTION 'ragpipe: neighbours must be between 0 and 20 (chunks before and after each hit), got %',
            coalesce(neighbours::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(chunk_ids) > 10000 THEN
        RAISE EXCEPTION 'ragpipe: context_of takes at most 10000 chunk ids, got %', cardinality(chunk_ids)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR p IN
        WITH found AS (
            SELECT d.source_id, d.uri, d.title, ch.document_id AS doc, ch.ordinal, min(u.rank) AS rank
            FROM unnest(chunk_ids) WITH ORDINALITY u(id, rank)
            JOIN ragpipe.chunks ch ON ch.id = u.id AND ch.collection_id = coll.id  -- one index probe per hit
            JOIN ragpipe.documents d ON d.id = ch.document_id
            GROUP BY d.source_id, d.uri, d.title, ch.document_id, ch.ordinal),
        hits AS (  -- each hit and its neighbours (one range of the (document_id, ordinal) index), once each
            SELECT DISTINCT ON (n.id) f.source_id, f.uri, f.title, f.doc, n.char_start, n.char_end, n.token_count,
                   n.text, f.rank
            FROM found f JOIN ragpipe.chunks n
                ON n.document_id = f.doc AND n.collection_id = coll.id
               AND n.ordinal BETWEEN f.ordinal - neighbours AND f.ordinal + neighbours
            ORDER BY n.id, f.rank),
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

-- rag_context: the context for a RAG prompt (context_of) of the best k chunks by hybrid search (semantic
-- alone when only the embedding is given or the collection has no keyword index). A reranker is a model
-- call: the service and the Python API re-rank, then call context_of (docs/rerank.md).
DROP FUNCTION IF EXISTS ragpipe.rag_context(text, text, vector, int, int, jsonb);
CREATE OR REPLACE FUNCTION ragpipe.rag_context(
    collection text, query_text text, query_embedding vector, k int DEFAULT 8, max_tokens int DEFAULT 1500,
    filter jsonb DEFAULT NULL, neighbours int DEFAULT 0)
RETURNS TABLE (context text, citations jsonb)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
BEGIN
    k := ragpipe.checked_k(k);
    RETURN QUERY
    SELECT c.context, c.citations
    FROM ragpipe.context_of(collection, ARRAY(
        SELECT h.chunk_id
        FROM ragpipe.hybrid_search(collection, CASE WHEN coll.settings ->> 'keyword' = 'false' THEN NULL
                                                    ELSE query_text END,  -- keyword: false: semantic
                                   query_embedding, k, filter) WITH ORDINALITY h
        ORDER BY h.ordinality), max_tokens, neighbours) c;
END
$fn$;
