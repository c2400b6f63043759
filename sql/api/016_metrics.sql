-- What `GET /metrics` reports of the pipeline, one row a collection (its active version), read at
-- scrape time so one scrape shows every collection whoever ran it. SECURITY DEFINER: a reader sees
-- these counts, never the rows behind them. Counts come from documents.chunk_count (no chunk scan).
CREATE OR REPLACE FUNCTION ragpipe.pipeline_metrics()
RETURNS TABLE (collection text, version int, documents bigint, chunks bigint, last_success_at timestamptz,
               last_run_status text, last_run_seconds double precision, failures jsonb)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ragpipe AS $fn$
SELECT k.name, k.version,
       coalesce(d.documents, 0), coalesce(d.chunks, 0),
       (SELECT max(r.finished_at) FROM ragpipe.ingest_runs r
        WHERE r.collection_id = k.id AND r.status = 'succeeded'),
       last.status, last.seconds,
       coalesce((SELECT jsonb_object_agg(f.stage, f.n) FROM
                 (SELECT stage, count(*) AS n FROM ragpipe.ingest_failures
                  WHERE run_id = last.id GROUP BY stage) f), '{}')
FROM ragpipe.collections k
LEFT JOIN LATERAL (SELECT count(*) AS documents, sum(chunk_count) AS chunks FROM ragpipe.documents
                   WHERE collection_id = k.id) d ON true
LEFT JOIN LATERAL (SELECT r.id, r.status, r.seconds FROM ragpipe.ingest_runs r
                   WHERE r.collection_id = k.id AND r.status <> 'dry_run'
                   ORDER BY r.id DESC LIMIT 1) last ON true
WHERE k.state = 'active'
$fn$;
REVOKE ALL ON FUNCTION ragpipe.pipeline_metrics() FROM PUBLIC;
