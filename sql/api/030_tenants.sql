-- Search for tenant roles: SECURITY INVOKER, so the row-level security policies of 003_tenants.sql
-- decide which chunks the caller sees. Exact (brute-force) cosine ranking over the caller's rows:
-- a tenant's share of a collection is small enough, and a shared HNSW graph filtered down to one
-- tenant would return fewer than k rows.
CREATE OR REPLACE FUNCTION ragpipe.tenant_search(
    collection text, query_embedding vector, k int DEFAULT 10, filter jsonb DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = ragpipe, public, pg_temp
AS $fn$
    SELECT c.id, d.source_id, d.uri, d.title, c.text, c.metadata,
           1 - (ragpipe.vector_of(c.embedding, c.embedding_half) <=> query_embedding)
    FROM ragpipe.chunks c
    JOIN ragpipe.documents d ON d.id = c.document_id
    WHERE c.collection_id = (SELECT coll.id FROM ragpipe.collections coll  -- the name, or a pinned `family@vN`
                             WHERE collection IN (coll.name, ragpipe.version_name(coll.family, coll.version)))
      AND c.tenant IS NOT NULL AND (filter IS NULL OR c.metadata @> filter)
    ORDER BY ragpipe.vector_of(c.embedding, c.embedding_half) <=> query_embedding
    LIMIT ragpipe.checked_k(k);
$fn$;
GRANT EXECUTE ON FUNCTION ragpipe.tenant_search(text, vector, int, jsonb), ragpipe.vector_of(vector, halfvec)
    TO ragpipe_tenant_reader;
GRANT EXECUTE ON FUNCTION ragpipe.version_name(text, int), ragpipe.checked_k(int, int), ragpipe.checked(text, double precision, double precision, double precision)
    TO ragpipe_tenant_reader;

-- `ragpipe db grant-tenant ROLE TENANT`: ROLE (created NOLOGIN if missing) reads TENANT's rows only.
CREATE OR REPLACE FUNCTION ragpipe.grant_tenant(role_name text, tenant text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM ragpipe.ensure_role(role_name);
    IF NOT pg_has_role(role_name, 'ragpipe_tenant_reader', 'MEMBER') THEN  -- an admin may have granted it
        EXECUTE format('GRANT ragpipe_tenant_reader TO %I', role_name);
    END IF;
    PERFORM ragpipe.limit_statement_time(role_name);
    INSERT INTO ragpipe.tenant_roles VALUES (role_name, tenant) ON CONFLICT DO NOTHING;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.grant_tenant(text, text) FROM PUBLIC;
