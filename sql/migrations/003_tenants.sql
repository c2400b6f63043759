-- Optional multi-tenant collections with row-level security. A document's tenant is its metadata
-- key "tenant" (e.g. a `tenant` column of a table source). Roles granted a tenant with
-- `ragpipe db grant-tenant ROLE TENANT` read chunks and documents of their tenants only, enforced by
-- PostgreSQL policies; every other role is unaffected (table owners and superusers bypass RLS, the
-- loader and the SECURITY DEFINER search functions see all rows as before).
ALTER TABLE ragpipe.documents ADD COLUMN tenant text GENERATED ALWAYS AS (metadata ->> 'tenant') STORED;
ALTER TABLE ragpipe.chunks ADD COLUMN tenant text GENERATED ALWAYS AS (metadata ->> 'tenant') STORED;
CREATE INDEX chunks_tenant_idx ON ragpipe.chunks (collection_id, tenant) WHERE tenant IS NOT NULL;

CREATE TABLE ragpipe.tenant_roles (
    role_name name NOT NULL,
    tenant    text NOT NULL,
    PRIMARY KEY (role_name, tenant)
);

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ragpipe_tenant_reader') THEN
        CREATE ROLE ragpipe_tenant_reader NOLOGIN;
    END IF;
END
$$;

ALTER TABLE ragpipe.tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_grants ON ragpipe.tenant_roles FOR SELECT USING (role_name = current_user);

ALTER TABLE ragpipe.documents ENABLE ROW LEVEL SECURITY;
ALTER TABLE ragpipe.chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY not_a_tenant ON ragpipe.documents
    USING (NOT pg_has_role(current_user, 'ragpipe_tenant_reader', 'MEMBER'))
    WITH CHECK (NOT pg_has_role(current_user, 'ragpipe_tenant_reader', 'MEMBER'));
CREATE POLICY not_a_tenant ON ragpipe.chunks
    USING (NOT pg_has_role(current_user, 'ragpipe_tenant_reader', 'MEMBER'))
    WITH CHECK (NOT pg_has_role(current_user, 'ragpipe_tenant_reader', 'MEMBER'));
CREATE POLICY own_tenant ON ragpipe.documents FOR SELECT TO ragpipe_tenant_reader
    USING (tenant IN (SELECT t.tenant FROM ragpipe.tenant_roles t));
CREATE POLICY own_tenant ON ragpipe.chunks FOR SELECT TO ragpipe_tenant_reader
    USING (tenant IN (SELECT t.tenant FROM ragpipe.tenant_roles t));

GRANT USAGE ON SCHEMA ragpipe TO ragpipe_tenant_reader;
GRANT SELECT ON ragpipe.collections, ragpipe.documents, ragpipe.chunks, ragpipe.tenant_roles TO ragpipe_tenant_reader;
