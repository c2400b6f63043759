-- Chunks are partitioned by collection: ragpipe.chunks is LIST-partitioned on collection_id with one
-- partition per collection, ragpipe.chunks_c<id>. Building a collection's HNSW index, refreshing its
-- planner statistics and dropping it then touch that collection's rows only, however large the other
-- collections are (before, every index build scanned the whole shared table).
-- A trigger on ragpipe.collections creates the partition with the collection and drops it with the
-- collection, so the loader role still needs no DDL. Partitions carry no grants of their own:
-- every role reads and writes through ragpipe.chunks, whose row-level security policies apply.
-- Upgrading copies the existing chunks into the partitions and rebuilds the HNSW indexes that
-- existed (minutes for millions of chunks, once). ragpipe.build_hnsw_index, which builds them here
-- and after every first load, is defined at the end of this file.

CREATE FUNCTION ragpipe.chunk_partition(collection int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT 'chunks_c' || collection $fn$;

-- Keep what must survive the swap: the HNSW indexes, the grants, the views that read chunks
-- (ragpipe.collection_stats, and any of your own: re-pointed in place, so their grants stay).
CREATE TEMP TABLE hnsw_before ON COMMIT DROP AS
SELECT k.id, k.dimension FROM ragpipe.collections k
WHERE to_regclass('ragpipe.chunks_hnsw_c' || k.id) IS NOT NULL;
CREATE TEMP TABLE grants_before ON COMMIT DROP AS
SELECT a.grantee, a.privilege_type FROM pg_class t, aclexplode(t.relacl) a
WHERE t.oid = 'ragpipe.chunks'::regclass AND a.grantee <> t.relowner;

CREATE TEMP TABLE views_before ON COMMIT DROP AS
SELECT DISTINCT r.ev_class::regclass AS view, rtrim(pg_get_viewdef(r.ev_class), ';') AS definition
FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = 'ragpipe.chunks'::regclass
  AND r.ev_class <> 'ragpipe.chunks'::regclass;

ALTER TABLE ragpipe.chunks RENAME TO chunks_unpartitioned;
DO $$
DECLARE
    idx regclass;
BEGIN
    FOR idx IN SELECT indexrelid::regclass FROM pg_index WHERE indrelid = 'ragpipe.chunks_unpartitioned'::regclass LOOP
        EXECUTE format('ALTER INDEX %s RENAME TO %I', idx, 'old_' || (SELECT relname FROM pg_class WHERE oid = idx));
    END LOOP;
END
$$;

-- Same columns, defaults (the id sequence) and generated columns as before; keys, indexes and
-- policies are added below.
CREATE TABLE ragpipe.chunks (LIKE ragpipe.chunks_unpartitioned INCLUDING DEFAULTS INCLUDING GENERATED)
    PARTITION BY LIST (collection_id);
ALTER TABLE ragpipe.chunks ADD FOREIGN KEY (collection_id) REFERENCES ragpipe.collections ON DELETE CASCADE,
                           ADD FOREIGN KEY (document_id) REFERENCES ragpipe.documents ON DELETE CASCADE;
ALTER SEQUENCE ragpipe.chunks_id_seq OWNED BY ragpipe.chunks.id;

DO $$
DECLARE
    k int;
BEGIN
    FOR k IN SELECT id FROM ragpipe.collections ORDER BY id LOOP
        EXECUTE format('CREATE TABLE ragpipe.%I PARTITION OF ragpipe.chunks FOR VALUES IN (%s)',
                       ragpipe.chunk_partition(k), k);
    END LOOP;
END
$$;

-- Rows first, indexes after (one sorted build each instead of row-by-row inserts).
INSERT INTO ragpipe.chunks (id, collection_id, document_id, ordinal, text, token_count, char_start, char_end,
                            heading_path, content_hash, metadata, embedding)
SELECT id, collection_id, document_id, ordinal, text, token_count, char_start, char_end,
       heading_path, content_hash, metadata, embedding
FROM ragpipe.chunks_unpartitioned;
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT * FROM views_before LOOP
        EXECUTE format('CREATE OR REPLACE VIEW %s AS %s', v.view, v.definition);
    END LOOP;
END
$$;
DROP TABLE ragpipe.chunks_unpartitioned;

-- Primary and unique keys must include the partition key; id and document_id lead, so a lookup by
-- either alone stays an index probe per partition.
ALTER TABLE ragpipe.chunks ADD PRIMARY KEY (id, collection_id);
ALTER TABLE ragpipe.chunks ADD UNIQUE (document_id, ordinal, collection_id);
CREATE INDEX chunks_content_hash_idx ON ragpipe.chunks (content_hash);
CREATE INDEX chunks_tsv_idx ON ragpipe.chunks USING gin (tsv);
CREATE INDEX chunks_metadata_idx ON ragpipe.chunks USING gin (metadata jsonb_path_ops);
CREATE INDEX chunks_tenant_idx ON ragpipe.chunks (tenant) WHERE tenant IS NOT NULL;

-- Row-level security as in 003_tenants.sql.
ALTER TABLE ragpipe.chunks ENABLE ROW LEVEL SECURITY;
CREATE POLICY not_a_tenant ON ragpipe.chunks
    USING (NOT pg_has_role(current_user, 'ragpipe_tenant_reader', 'MEMBER'))
    WITH CHECK (NOT pg_has_role(current_user, 'ragpipe_tenant_reader', 'MEMBER'));
CREATE POLICY own_tenant ON ragpipe.chunks FOR SELECT TO ragpipe_tenant_reader
    USING (tenant IN (SELECT t.tenant FROM ragpipe.tenant_roles t));

DO $$
DECLARE
    g record;
BEGIN
    FOR g IN SELECT grantee, privilege_type FROM grants_before LOOP
        EXECUTE format('GRANT %s ON ragpipe.chunks TO %s', g.privilege_type,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(g.grantee::regrole::text) END);
    END LOOP;
END
$$;

-- A collection's partition is created with it and dropped with it. Created as a table of its own,
-- then attached: attaching locks ragpipe.chunks against other DDL only, so searches and loads of the
-- other collections go on (CREATE TABLE ... PARTITION OF would lock them all out until commit).
-- Dropping a partition does lock ragpipe.chunks for a moment: PostgreSQL has no lighter way
-- inside a transaction.
CREATE FUNCTION ragpipe.create_chunk_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE TABLE ragpipe.%I (LIKE ragpipe.chunks INCLUDING ALL)', ragpipe.chunk_partition(NEW.id));
    EXECUTE format('ALTER TABLE ragpipe.chunks ATTACH PARTITION ragpipe.%I FOR VALUES IN (%s)',
                   ragpipe.chunk_partition(NEW.id), NEW.id);
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.create_chunk_partition() FROM PUBLIC;
CREATE TRIGGER create_chunk_partition AFTER INSERT ON ragpipe.collections
    FOR EACH ROW EXECUTE FUNCTION ragpipe.create_chunk_partition();

CREATE FUNCTION ragpipe.drop_chunk_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.chunk_partition(OLD.id));
    RETURN OLD;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.drop_chunk_partition() FROM PUBLIC;
CREATE TRIGGER drop_chunk_partition BEFORE DELETE ON ragpipe.collections
    FOR EACH ROW EXECUTE FUNCTION ragpipe.drop_chunk_partition();

-- Planner statistics of one collection: its chunk partition (the columns the planner uses; the text
-- and vectors only cost time to sample) and the documents table. SECURITY DEFINER, like the index
-- build, so the loader role needs no privilege on the partitions.
CREATE FUNCTION ragpipe.analyze_collection(collection int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('ANALYZE ragpipe.documents, ragpipe.%I (collection_id, document_id, metadata, tsv, tenant)',
                   ragpipe.chunk_partition(collection));
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.analyze_collection(int) FROM PUBLIC;
DO $$
DECLARE
    build regprocedure := to_regprocedure('ragpipe.build_hnsw_index(int, int)');
    r name;
BEGIN  -- loader roles granted before this migration (ragpipe.grant_loader grants it from now on)
    IF build IS NULL THEN
        RETURN;
    END IF;
    FOR r IN SELECT rolname FROM pg_roles
             WHERE NOT rolsuper AND has_function_privilege(oid, build, 'EXECUTE')
               AND oid <> (SELECT proowner FROM pg_proc WHERE oid = build)
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.analyze_collection(int) TO %I', r);
    END LOOP;
END
$$;

-- build_hnsw_index: the HNSW index (cosine) of the collection's chunk partition, on its embeddings
-- cast to its dimension, built once after the first load. SECURITY DEFINER so the loader role needs
-- no DDL.
CREATE OR REPLACE FUNCTION ragpipe.build_hnsw_index(collection_id int, maintenance_work_mem_mb int)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    coll ragpipe.collections;
    index_name text := 'chunks_hnsw_c' || collection_id;
BEGIN
    SELECT * INTO STRICT coll FROM ragpipe.collections c WHERE c.id = build_hnsw_index.collection_id;
    IF to_regclass('ragpipe.' || index_name) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM set_config('maintenance_work_mem', maintenance_work_mem_mb || 'MB', true);
    EXECUTE format('CREATE INDEX %I ON ragpipe.%I USING hnsw ((embedding::vector(%s)) vector_cosine_ops) '
                   'WITH (m = %s, ef_construction = %s)',
                   index_name, ragpipe.chunk_partition(coll.id), coll.dimension,
                   coalesce((coll.settings -> 'index' ->> 'm')::int, 16),
                   coalesce((coll.settings -> 'index' ->> 'ef_construction')::int, 64));
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.build_hnsw_index(int, int) FROM PUBLIC;

-- Rebuild the HNSW indexes that existed, now on each collection's partition, with
-- maintenance_work_mem sized as pipelines/store.py sizes it (m = 16), at most 2 GB.
DO $$
DECLARE
    h record;
    n bigint;
BEGIN  -- one at a time: an index cannot be built while a query of this session reads its table
    FOR h IN SELECT * FROM hnsw_before LOOP
        SELECT count(*) INTO n FROM ragpipe.chunks c WHERE c.collection_id = h.id;
        PERFORM ragpipe.build_hnsw_index(h.id, greatest(64, least(2048, 16 + n * (4 * h.dimension + 392) * 1.25 / 2^20))::int);
    END LOOP;
END
$$;
