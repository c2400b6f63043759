-- Statements of `ragpipe forget` (pipelines/forget.py).

-- name: forget
SELECT * FROM ragpipe.forget(%(collection)s, %(source_ids)s::text[], %(filter)s::jsonb, %(requested_by)s);

-- name: unforget
SELECT ragpipe.unforget(%s, %s::text[], %s);

-- name: matching
-- What forget would erase: each matching source id and how many versions hold it.
SELECT d.source_id, count(*)::int AS versions
FROM ragpipe.documents d JOIN ragpipe.collections k ON k.id = d.collection_id
WHERE k.family = %(family)s AND (d.source_id = ANY (%(source_ids)s::text[]) OR d.metadata @> %(filter)s::jsonb)
GROUP BY d.source_id ORDER BY d.source_id;

-- name: tombstones
SELECT t.source_id, t.forgotten_at, t.erasure_id FROM ragpipe.forgotten t WHERE t.family = %s ORDER BY t.source_id;

-- name: tables_to_vacuum
-- Where a forgotten document's rows were: the versions' chunk and block partitions and the shared tables.
SELECT format('ragpipe.%%I', p) FROM ragpipe.collections k
CROSS JOIN LATERAL (VALUES (ragpipe.chunk_partition(k.id)), (ragpipe.blocks_partition(k.id))) v(p)
WHERE k.family = %s AND to_regclass(format('ragpipe.%%I', p)) IS NOT NULL
UNION ALL
SELECT unnest(ARRAY['ragpipe.documents', 'ragpipe.embedding_cache', 'ragpipe.ingest_failures', 'ragpipe.term_stats']);
