-- The read-only role: may execute the search functions and read the public view, nothing else.
-- `ragpipe db grant-reader ROLE` grants the same to another role (ragpipe.grant_reader).

CREATE OR REPLACE FUNCTION ragpipe.ensure_role(role_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
    END IF;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.ensure_role(text) FROM PUBLIC;

-- Readers get a default statement_timeout so that no query can pin a backend for minutes. It is
-- set once: `ALTER ROLE r SET statement_timeout = ...` by the owner is kept by later migrations.
CREATE OR REPLACE FUNCTION ragpipe.limit_statement_time(role_name text, max_time text DEFAULT '30s')
RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole
                   WHERE r.rolname = role_name AND s.setdatabase = 0
                     AND EXISTS (SELECT 1 FROM unnest(s.setconfig) c WHERE c LIKE 'statement\_timeout=%')) THEN
        EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', role_name, max_time);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'cannot set a default statement_timeout for role %: run ALTER ROLE % SET statement_timeout = %L '
                 'as a role allowed to alter it', role_name, role_name, max_time;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.limit_statement_time(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ragpipe.grant_reader(role_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM ragpipe.grant_search(role_name);
    PERFORM ragpipe.limit_statement_time(role_name);
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.grant_reader(text) FROM PUBLIC;

-- What readers and loaders share: the search functions and the public view.
CREATE OR REPLACE FUNCTION ragpipe.grant_search(role_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM ragpipe.ensure_role(role_name);
    EXECUTE format('GRANT USAGE ON SCHEMA ragpipe TO %I', role_name);
    EXECUTE format('GRANT SELECT ON ragpipe.collection_stats TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION
        ragpipe.semantic_search(text, vector, int, jsonb),
        ragpipe.keyword_search(text, text, int, jsonb, text),
        ragpipe.hybrid_search(text, text, vector, int, jsonb, double precision, double precision, int, int, text,
                              double precision, text),
        ragpipe.hybrid_candidates(int, int),
        ragpipe.fuse_rankings(text, ragpipe.search_hit[], ragpipe.search_hit[], int, double precision,
                              double precision, int, text, double precision),
        ragpipe.similar_chunks(bigint, int, jsonb), ragpipe.chunk_context(text, bigint, int),
        ragpipe.document_text(text, text),
        ragpipe.similar_documents(text, text, int, jsonb),
        ragpipe.rag_context(text, text, vector, int, int, jsonb, int), ragpipe.context_of(text, bigint[], int, int),
        ragpipe.get_collection(text), ragpipe.pipeline_metrics(), ragpipe.cache_metrics(), ragpipe.token_metrics(),
        ragpipe.context_token_metrics(), ragpipe.take_rate(text, double precision, double precision, int, boolean) TO %I', role_name);
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.grant_search(text) FROM PUBLIC;

-- The loader role: what the CLI and the DAGs need to write collections, and no DDL. Index builds
-- and ANALYZE go through SECURITY DEFINER functions (ragpipe.build_hnsw_index, analyze_collection).
CREATE OR REPLACE FUNCTION ragpipe.grant_loader(role_name text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM ragpipe.grant_search(role_name);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ragpipe.collections, ragpipe.documents, '
                   'ragpipe.chunks, ragpipe.ingest_runs, ragpipe.ingest_failures, ragpipe.embedding_cache TO %I',
                   role_name);
    EXECUTE format('GRANT SELECT, DELETE ON ragpipe.posting_blocks, ragpipe.posting_segments TO %I', role_name);
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON ragpipe.dead_chunks, ragpipe.chunk_contexts TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.compact_postings(int, boolean), '
                   'ragpipe.vector_of(vector, halfvec) TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.promote_version(text, int), ragpipe.rollback_version(text), '
                   'ragpipe.version_name(text, int) TO %I', role_name);
    EXECUTE format('GRANT SELECT ON ragpipe.schema_migrations, ragpipe.forgotten TO %I', role_name);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA ragpipe TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.build_hnsw_index(int), '
                   'ragpipe.analyze_collection(int) TO %I', role_name);
    EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.refresh_text_stats(int, bigint, double precision), '
                   'ragpipe.refresh_impacts(int, double precision), ragpipe.run_backlog(ragpipe.ingest_runs) TO %I',
                   role_name);
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.grant_loader(text) FROM PUBLIC;

SELECT ragpipe.grant_reader('ragpipe_reader');
SELECT ragpipe.grant_loader('ragpipe_loader');
DO $$
DECLARE
    r name;
BEGIN  -- loader roles granted by an older release: what postings in blocks need of them
    FOR r IN SELECT DISTINCT grantee FROM information_schema.table_privileges
             WHERE table_schema = 'ragpipe' AND table_name = 'chunks' AND privilege_type = 'INSERT'
               AND grantee NOT IN (current_user, 'PUBLIC', 'ragpipe_loader') LOOP
        EXECUTE format('GRANT SELECT, DELETE ON ragpipe.posting_blocks, ragpipe.posting_segments TO %I', r);
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON ragpipe.dead_chunks TO %I', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.compact_postings(int, boolean), '
                       'ragpipe.vector_of(vector, halfvec) TO %I', r);
    END LOOP;
END
$$;

DO $$
DECLARE
    r name;
BEGIN  -- roles granted before hybrid search had halves (ragpipe.grant_search grants them from now on),
    FOR r IN SELECT DISTINCT grantee FROM information_schema.routine_privileges
             WHERE routine_schema = 'ragpipe' AND routine_name = 'hybrid_search'
               AND grantee NOT IN (current_user, 'PUBLIC') LOOP
        -- and before rag_context took neighbours (its older signature was dropped with its grants) and
        -- context_of existed
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.rag_context(text, text, vector, int, int, jsonb, int), '
                       'ragpipe.context_of(text, bigint[], int, int), ragpipe.chunk_context(text, bigint, int), '
                       'ragpipe.document_text(text, text), ragpipe.token_metrics(), ragpipe.context_token_metrics(), '
                       'ragpipe.take_rate(text, double precision, double precision, int, boolean) TO %I', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.hybrid_candidates(int, int), ragpipe.fuse_rankings(text, '
                       'ragpipe.search_hit[], ragpipe.search_hit[], int, double precision, double precision, int, '
                       'text, double precision) TO %I', r);
    END LOOP;
END
$$;
