-- Statements of `ragpipe verify` (pipelines/verify.py): what disagrees inside one collection row.

-- name: indexed_documents
SELECT source_id, fingerprint FROM ragpipe.documents WHERE collection_id = %s;

-- name: recorded_failures
-- Documents the collection's last run recorded as failed or as duplicates (not a finding).
SELECT DISTINCT f.source_id FROM ragpipe.ingest_failures f
WHERE f.run_id = (SELECT max(r.id) FROM ragpipe.ingest_runs r WHERE r.collection_id = %s AND r.status <> 'dry_run');

-- name: missing_chunks
-- Documents whose chunks are not all there (chunk_count says how many were loaded).
SELECT d.source_id FROM ragpipe.documents d
WHERE d.collection_id = %(collection)s
  AND d.chunk_count <> (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = %(collection)s
                        AND c.document_id = d.id)
ORDER BY 1;

-- name: wrong_dimension
SELECT DISTINCT d.source_id FROM ragpipe.chunks c JOIN ragpipe.documents d ON d.id = c.document_id
WHERE c.collection_id = %(collection)s AND vector_dims(ragpipe.vector_of(c.embedding, c.embedding_half)) <> %(dimension)s
ORDER BY 1;

-- name: wrong_postings
-- Chunks whose BM25 postings are not exactly their tsvector's words (tf, length), and postings of
-- chunks that no longer exist.
WITH expected AS (
    SELECT c.id AS chunk_id, t.lexeme, cardinality(t.positions) AS tf, length(c.tsv) AS len
    FROM ragpipe.chunks c CROSS JOIN LATERAL unnest(c.tsv) t WHERE c.collection_id = %(collection)s),
actual AS (  -- the delta's, and those in blocks of chunks not deleted since
    SELECT p.chunk_id, p.lexeme, p.tf, p.len FROM ragpipe.keyword_postings p WHERE p.collection_id = %(collection)s),
differ AS ((TABLE expected EXCEPT ALL TABLE actual) UNION ALL (TABLE actual EXCEPT ALL TABLE expected))
SELECT DISTINCT chunk_id FROM differ ORDER BY 1;

-- name: statistics
SELECT s.chunks, (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = %(collection)s)
FROM (SELECT %(collection)s::int AS id) k LEFT JOIN ragpipe.text_stats s ON s.collection_id = k.id;

-- name: index_state
-- The collection's HNSW index: (exists, valid); (false, false) when there is none.
SELECT count(i.indexrelid) > 0, coalesce(bool_and(i.indisvalid AND i.indisready), false)
FROM pg_class x JOIN pg_index i ON i.indexrelid = x.oid
WHERE x.relname = ragpipe.hnsw_index_name(%s) AND x.relnamespace = 'ragpipe'::regnamespace;

-- name: drop_invalid_index
SELECT format('DROP INDEX ragpipe.%I', ragpipe.hnsw_index_name(%s));

-- name: requeue_documents
-- The next run reads these documents again (their fingerprint and hash no longer match).
UPDATE ragpipe.documents SET fingerprint = NULL, content_hash = ''
WHERE collection_id = %s AND source_id = ANY(%s);

-- name: drop_chunks
-- The chunks of documents to be read again (their postings in blocks masked) (not kept in the embedding cache: they are
-- what is wrong).
WITH gone AS (
    DELETE FROM ragpipe.chunks c USING ragpipe.documents d
    WHERE c.collection_id = %(collection)s AND c.document_id = d.id AND d.collection_id = %(collection)s
      AND d.source_id = ANY(%(source_ids)s)
    RETURNING c.id)
INSERT INTO ragpipe.dead_chunks (collection_id, chunk_id)
SELECT %(collection)s, g.id FROM gone g
WHERE g.id <= (SELECT coalesce(max(s.upto), 0) FROM ragpipe.posting_segments s WHERE s.collection_id = %(collection)s)
ON CONFLICT DO NOTHING

-- name: forgotten_traces
-- What is left of documents `ragpipe forget` erased from the collection (any version): document rows
-- (by source id, or a copy of the same content under another id), failure records, cached vectors of
-- their chunks' texts that no chunk holds. (kind, source id or cache key)
SELECT 'document', d.source_id FROM ragpipe.documents d JOIN ragpipe.collections k ON k.id = d.collection_id
JOIN ragpipe.forgotten t ON t.family = k.family AND (t.source_id = d.source_id OR t.content_hash = d.body_hash)
WHERE k.family = %(family)s
UNION
SELECT 'failure', f.source_id FROM ragpipe.ingest_failures f JOIN ragpipe.collections k ON k.id = f.collection_id
JOIN ragpipe.forgotten t ON t.family = k.family AND t.source_id = f.source_id
WHERE k.family = %(family)s
UNION
SELECT 'cache', e.content_hash FROM ragpipe.embedding_cache e
WHERE e.content_hash IN (SELECT unnest(t.chunk_hashes) FROM ragpipe.forgotten t WHERE t.family = %(family)s)
  AND NOT EXISTS (SELECT FROM ragpipe.chunks o WHERE o.content_hash = e.content_hash)
ORDER BY 1, 2;

-- name: drop_forgotten_cache
DELETE FROM ragpipe.embedding_cache e WHERE e.content_hash = ANY (%s::text[])
  AND NOT EXISTS (SELECT FROM ragpipe.chunks o WHERE o.content_hash = e.content_hash);
