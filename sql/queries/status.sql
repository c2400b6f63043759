-- Statements used by pipelines/status.py.

-- name: collections
SELECT k.id, k.name AS collection, k.model, k.dimension,
       (SELECT count(*) FROM ragpipe.documents d WHERE d.collection_id = k.id) AS documents,
       (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) AS chunks
FROM ragpipe.collections k
WHERE %(name)s::text IS NULL OR k.name = %(name)s
ORDER BY k.name;

-- name: last_run
SELECT id, status, trigger, listed, new, changed, unchanged, deleted, failed, duplicates, chunks_embedded,
       chunks_reused, seconds, started_at, finished_at, error
FROM ragpipe.ingest_runs WHERE collection_id = %s AND status <> 'dry_run'
ORDER BY id DESC LIMIT 1;

-- name: failures
SELECT source_id, uri, stage, error, failed_at FROM ragpipe.ingest_failures
WHERE run_id = %s ORDER BY id;
