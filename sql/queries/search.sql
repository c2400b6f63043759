-- Statements used by pipelines/search.py: thin calls into the SQL API (sql/api/).

-- name: semantic_search
SELECT chunk_id, document_id, uri, title, text, metadata, score
FROM ragpipe.semantic_search(%(collection)s, %(embedding)s, %(k)s, %(filter)s);
