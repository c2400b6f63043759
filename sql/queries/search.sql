-- Statements used by pipelines/search.py: thin calls into the SQL API (sql/api/).

-- name: semantic
SELECT *
FROM ragpipe.semantic_search(%(collection)s, %(embedding)s, %(k)s, %(filter)s);

-- name: keyword
SELECT *
FROM ragpipe.keyword_search(%(collection)s, %(text)s, %(k)s, %(filter)s, language => %(language)s);

-- name: hybrid
SELECT *
FROM ragpipe.hybrid_search(%(collection)s, %(text)s, %(embedding)s, %(k)s, %(filter)s,
                           semantic_weight => %(semantic_weight)s, keyword_weight => %(keyword_weight)s,
                           rrf_k => %(rrf_k)s, fusion => %(fusion)s, alpha => %(alpha)s,
                           language => %(language)s);

-- The halves of hybrid search for a client that runs them at once on two connections (the search
-- service): each ranking as a search_hit[] literal, fused by ragpipe.fuse_rankings as hybrid_search fuses.
-- name: hybrid_semantic
SELECT array_agg(s)::text
FROM ragpipe.semantic_search(%(collection)s, %(embedding)s, ragpipe.hybrid_candidates(%(k)s), %(filter)s) s;

-- name: hybrid_keyword
SELECT array_agg(s)::text
FROM ragpipe.keyword_search(%(collection)s, %(text)s, ragpipe.hybrid_candidates(%(k)s), %(filter)s,
                            language => %(language)s) s;

-- name: hybrid_fuse
SELECT *
FROM ragpipe.fuse_rankings(%(collection)s, %(semantic)s::ragpipe.search_hit[], %(keyword)s::ragpipe.search_hit[],
                           %(k)s, semantic_weight => %(semantic_weight)s, keyword_weight => %(keyword_weight)s,
                           rrf_k => %(rrf_k)s, fusion => %(fusion)s, alpha => %(alpha)s);

-- name: tenant
SELECT *
FROM ragpipe.tenant_search(%(collection)s, %(embedding)s, %(k)s, %(filter)s);

-- name: similar_chunks
SELECT *
FROM ragpipe.similar_chunks(%(chunk_id)s, %(k)s, %(filter)s);

-- name: similar_documents
SELECT *
FROM ragpipe.similar_documents(%(collection)s, %(source_id)s, %(k)s, %(filter)s);

-- name: chunk_context
SELECT * FROM ragpipe.chunk_context(%(collection)s, %(chunk_id)s::bigint, %(neighbours)s::int);

-- name: document_text
SELECT * FROM ragpipe.document_text(%(collection)s, %(source_id)s);

-- name: rag_context
SELECT context, citations
FROM ragpipe.rag_context(%(collection)s, %(text)s, %(embedding)s, %(k)s, %(max_tokens)s, %(filter)s,
                         %(neighbours)s);

-- name: context_of
SELECT context, citations
FROM ragpipe.context_of(%(collection)s, %(chunk_ids)s::bigint[], %(max_tokens)s, %(neighbours)s);

-- name: exact
-- Brute-force cosine ranking, the ground truth for recall: ordering by the uncast distance, which no
-- index serves (the HNSW indexes are on embedding::vector(dim)). Switching index scans off is not
-- enough: PostgreSQL 18 still picks the disabled HNSW scan for a LIMIT over a partitioned table.
SELECT r.id, d.source_id, d.uri, d.title, r.text, d.metadata, r.score
FROM (SELECT ch.id, ch.document_id, ch.text, 1 - (ragpipe.vector_of(ch.embedding, ch.embedding_half) <=> %(embedding)s) AS score
      FROM ragpipe.chunks ch
      WHERE ch.collection_id = (ragpipe.get_collection(%(collection)s)).id
        AND (%(filter)s::jsonb IS NULL OR ch.metadata @> %(filter)s::jsonb)
      ORDER BY ragpipe.vector_of(ch.embedding, ch.embedding_half) <=> %(embedding)s
      LIMIT %(k)s) r
JOIN ragpipe.documents d ON d.id = r.document_id
ORDER BY r.score DESC, r.id;

-- name: grant_reader
SELECT ragpipe.grant_reader(%s);

-- name: grant_tenant
SELECT ragpipe.grant_tenant(%s, %s);
