-- Statements used by pipelines/search.py: thin calls into the SQL API (sql/api/).

-- name: semantic
SELECT chunk_id, document_id, uri, title, text, metadata, score
FROM ragpipe.semantic_search(%(collection)s, %(embedding)s, %(k)s, %(filter)s);

-- name: keyword
SELECT chunk_id, document_id, uri, title, text, metadata, score
FROM ragpipe.keyword_search(%(collection)s, %(text)s, %(k)s, %(filter)s);

-- name: hybrid
SELECT chunk_id, document_id, uri, title, text, metadata, score
FROM ragpipe.hybrid_search(%(collection)s, %(text)s, %(embedding)s, %(k)s, %(filter)s,
                           %(semantic_weight)s, %(keyword_weight)s);

-- name: similar_chunks
SELECT chunk_id, document_id, uri, title, text, metadata, score
FROM ragpipe.similar_chunks(%(chunk_id)s, %(k)s, %(filter)s);

-- name: similar_documents
SELECT chunk_id, document_id, uri, title, text, metadata, score
FROM ragpipe.similar_documents(%(collection)s, %(document_id)s, %(k)s, %(filter)s);

-- name: rag_context
SELECT context, citations
FROM ragpipe.rag_context(%(collection)s, %(text)s, %(embedding)s, %(k)s, %(max_tokens)s, %(filter)s);

-- name: exact_off
SELECT set_config('enable_indexscan', 'off', true);

-- name: grant_reader
SELECT ragpipe.grant_reader(%s);

-- name: grant_tenant
SELECT ragpipe.grant_tenant(%s, %s);
