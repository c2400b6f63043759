-- The SQL search API. Re-applied by `ragpipe db migrate` whenever this file changes.

-- Public view of collections for consumers.
CREATE OR REPLACE VIEW ragpipe.collection_stats AS
SELECT k.name AS collection, k.model, k.dimension,
       (SELECT count(*) FROM ragpipe.documents d WHERE d.collection_id = k.id) AS documents,
       (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) AS chunks,
       k.updated_at
FROM ragpipe.collections k;

-- semantic_search: chunks nearest to a query embedding (cosine), best first, served by the
-- collection's HNSW index. `filter` matches document metadata by containment (jsonb @>);
-- iterative index scans keep returning k rows even when the filter is selective.
CREATE OR REPLACE FUNCTION ragpipe.semantic_search(
    collection text, query_embedding vector, k int DEFAULT 10, filter jsonb DEFAULT NULL)
RETURNS TABLE (chunk_id bigint, document_id text, uri text, title text, text text, metadata jsonb,
               score double precision)
LANGUAGE plpgsql STABLE
SET hnsw.iterative_scan = 'relaxed_order'
SET hnsw.ef_search = 40
AS $fn$
DECLARE
    coll ragpipe.collections;
BEGIN
    SELECT * INTO coll FROM ragpipe.collections c WHERE c.name = semantic_search.collection;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpipe: unknown collection "%"', semantic_search.collection
            USING ERRCODE = 'undefined_object', HINT = 'SELECT collection FROM ragpipe.collection_stats';
    END IF;
    IF vector_dims(query_embedding) <> coll.dimension THEN
        RAISE EXCEPTION 'ragpipe: query embedding has % dimensions, collection "%" has %',
            vector_dims(query_embedding), coll.name, coll.dimension USING ERRCODE = 'data_exception';
    END IF;
    PERFORM set_config('hnsw.ef_search',
        greatest(k, coalesce((coll.settings -> 'index' ->> 'ef_search')::int, 40))::text, true);
    RETURN QUERY EXECUTE format($q$
        SELECT r.id, d.source_id, d.uri, d.title, r.text, d.metadata, r.score
        FROM (SELECT ch.id, ch.document_id, ch.text,
                     1 - (ch.embedding::vector(%1$s) <=> $1::vector(%1$s)) AS score
              FROM ragpipe.chunks ch
              WHERE ch.collection_id = %2$s AND ($2::jsonb IS NULL OR ch.metadata @> $2::jsonb)
              ORDER BY ch.embedding::vector(%1$s) <=> $1::vector(%1$s)
              LIMIT $3) r
        JOIN ragpipe.documents d ON d.id = r.document_id
        ORDER BY r.score DESC, r.id $q$, coll.dimension, coll.id)
    USING query_embedding, filter, k;
END
$fn$;
