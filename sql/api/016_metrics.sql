-- What `GET /metrics` reports of the pipeline, one row a collection (its active version), read at
-- scrape time so one scrape shows every collection whoever ran it. SECURITY DEFINER: a reader sees
-- these counts, never the rows behind them. Counts come from documents.chunk_count (no chunk scan).

-- Documents a run listed as new or changed and has not yet indexed (nor recorded as failed or as
-- a duplicate): its work still to do while it runs, what a `limit` or a failed batch left after it
-- ended. `ragpipe status` and `ragpipe_backlog_documents` both read this.
CREATE OR REPLACE FUNCTION ragpipe.run_backlog(r ragpipe.ingest_runs) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN r.status = 'dry_run' THEN 0
            ELSE greatest(r.listed - r.unchanged - r.new - r.changed - r.failed - r.duplicates, 0) END
$fn$;

-- The function's result changes between releases: whoever may execute it keeps that right.
CREATE TEMP TABLE metrics_grants ON COMMIT DROP AS
SELECT DISTINCT a.grantee::regrole::text AS grantee
FROM pg_proc p, aclexplode(p.proacl) a
WHERE p.oid = to_regprocedure('ragpipe.pipeline_metrics()') AND a.privilege_type = 'EXECUTE'
  AND a.grantee <> p.proowner AND a.grantee <> 0;
DROP FUNCTION IF EXISTS ragpipe.pipeline_metrics();

-- backlog_since: when the last run listed its backlog (the changes waiting are at least that old).
CREATE FUNCTION ragpipe.pipeline_metrics()
RETURNS TABLE (collection text, version int, documents bigint, chunks bigint, last_success_at timestamptz,
               last_run_status text, last_run_seconds double precision, failures jsonb, backlog int,
               backlog_since timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ragpipe AS $fn$
SELECT k.name, k.version,
       coalesce(d.documents, 0), coalesce(d.chunks, 0),
       (SELECT r.finished_at FROM ragpipe.ingest_runs r
        WHERE r.collection_id = k.id AND r.status = 'succeeded' ORDER BY r.id DESC LIMIT 1),
       (last.run).status, (last.run).seconds,
       coalesce((SELECT jsonb_object_agg(f.stage, f.n) FROM
                 (SELECT stage, count(*) AS n FROM ragpipe.ingest_failures
                  WHERE run_id = (last.run).id GROUP BY stage) f), '{}'),
       coalesce(ragpipe.run_backlog(last.run), 0),
       CASE WHEN ragpipe.run_backlog(last.run) > 0 THEN (last.run).started_at END
FROM ragpipe.collections k
LEFT JOIN LATERAL (SELECT count(*) AS documents, sum(chunk_count) AS chunks FROM ragpipe.documents
                   WHERE collection_id = k.id) d ON true
LEFT JOIN LATERAL (SELECT r AS run FROM ragpipe.ingest_runs r
                   WHERE r.collection_id = k.id AND r.status <> 'dry_run'
                   ORDER BY r.id DESC LIMIT 1) last ON true
WHERE k.state = 'active'
$fn$;
REVOKE ALL ON FUNCTION ragpipe.pipeline_metrics() FROM PUBLIC;

-- Rows of the embedding cache by model (shared by every collection of the model; bounded by
-- RAGPIPE_CACHE_MAX_ROWS), for `ragpipe_embedding_cache_rows`.
CREATE OR REPLACE FUNCTION ragpipe.cache_metrics() RETURNS TABLE (model text, cache_rows bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ragpipe AS $fn$
SELECT e.model, count(*) FROM ragpipe.embedding_cache e GROUP BY e.model
$fn$;
REVOKE ALL ON FUNCTION ragpipe.cache_metrics() FROM PUBLIC;

-- API tokens the runs of each collection spent, by the model of the version they built (reported by
-- the endpoint, and estimated where it reported none), for `ragpipe_api_tokens_total{kind="documents"}`.
CREATE OR REPLACE FUNCTION ragpipe.token_metrics()
RETURNS TABLE (collection text, model text, reported bigint, estimated bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ragpipe AS $fn$
SELECT k.family, k.model, sum(r.api_tokens)::bigint, sum(r.api_tokens_estimated)::bigint
FROM ragpipe.ingest_runs r JOIN ragpipe.collections k ON k.id = r.collection_id
WHERE r.api_tokens > 0 OR r.api_tokens_estimated > 0
GROUP BY k.family, k.model
$fn$;
REVOKE ALL ON FUNCTION ragpipe.token_metrics() FROM PUBLIC;

-- Tokens the runs spent at the chat model that wrote their chunks' context (enrich.context), by that
-- model, for `ragpipe_api_tokens_total{kind="context"}`.
CREATE OR REPLACE FUNCTION ragpipe.context_token_metrics()
RETURNS TABLE (collection text, model text, reported bigint, estimated bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, ragpipe AS $fn$
SELECT k.family, coalesce(k.settings #>> '{enrich,context,model}', ''), sum(r.context_tokens)::bigint,
       sum(r.context_tokens_estimated)::bigint
FROM ragpipe.ingest_runs r JOIN ragpipe.collections k ON k.id = r.collection_id
WHERE r.context_tokens > 0 OR r.context_tokens_estimated > 0
GROUP BY 1, 2
$fn$;
REVOKE ALL ON FUNCTION ragpipe.context_token_metrics() FROM PUBLIC;

DO $$
DECLARE
    g text;
BEGIN
    FOR g IN SELECT grantee FROM metrics_grants LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.pipeline_metrics(), ragpipe.cache_metrics(), '
                       'ragpipe.token_metrics() TO %I', g);
    END LOOP;
END
$$;
