-- Statements used by pipelines/status.py.

-- name: collections
-- Active versions (what searches read), each with the versions of it being built.
SELECT k.id, k.name AS collection, k.model, k.dimension, k.version,
       (SELECT count(*) FROM ragpipe.documents d WHERE d.collection_id = k.id) AS documents,
       (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) AS chunks,
       coalesce((SELECT jsonb_agg(jsonb_build_object(
                    'version', b.version, 'model', b.model, 'chunk_tokens', b.chunk_tokens,
                    'chunk_overlap', b.chunk_overlap,
                    'documents', (SELECT count(*) FROM ragpipe.documents d WHERE d.collection_id = b.id),
                    'of', (SELECT r.listed FROM ragpipe.ingest_runs r WHERE r.collection_id = b.id
                           AND r.status <> 'dry_run' ORDER BY r.id DESC LIMIT 1)) ORDER BY b.version)
                 FROM ragpipe.collections b WHERE b.family = k.family AND b.state = 'building'), '[]') AS building,
       -- API tokens every run of every version spent (reported by the endpoint, and estimated)
       (SELECT jsonb_build_object('reported', coalesce(sum(r.api_tokens), 0),
                                  'estimated', coalesce(sum(r.api_tokens_estimated), 0))
        FROM ragpipe.ingest_runs r JOIN ragpipe.collections v ON v.id = r.collection_id
        WHERE v.family = k.family) AS api_tokens
FROM ragpipe.collections k
WHERE k.state = 'active' AND (%(name)s::text IS NULL OR k.name = %(name)s)
ORDER BY k.name;

-- name: last_run
-- backlog: listed as new or changed, not yet indexed (ragpipe.run_backlog); waiting_s: how long
-- since that listing (what `ragpipe_freshness_lag_seconds` reports).
SELECT id, status, trigger, listed, new, changed, unchanged, deleted, failed, duplicates, chunks_embedded,
       chunks_reused, api_tokens, api_tokens_estimated, seconds, started_at, finished_at, error, ragpipe.run_backlog(r) AS backlog,
       CASE WHEN ragpipe.run_backlog(r) > 0 THEN extract(epoch FROM now() - started_at)::float8 END AS waiting_s
FROM ragpipe.ingest_runs r WHERE collection_id = %s AND status <> 'dry_run'
ORDER BY id DESC LIMIT 1;

-- name: failures
SELECT source_id, uri, stage, error, failed_at FROM ragpipe.ingest_failures
WHERE run_id = %s ORDER BY id;
