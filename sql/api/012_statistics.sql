-- Planner statistics after a load (called by finalize, once the runs since the last refresh changed
-- 10% of the collection). The collection's chunk partition is analyzed every time; the documents
-- table, shared by every collection, only once 10% of it changed since its last ANALYZE (or never
-- had one): sampling a large table for a small collection's run took longer than the run's loads.
CREATE OR REPLACE FUNCTION ragpipe.analyze_collection(collection int) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
               WHERE s.relid = 'ragpipe.documents'::regclass
                 AND (c.reltuples < 0 OR s.n_mod_since_analyze >= 0.1 * c.reltuples)) THEN
        ANALYZE ragpipe.documents;
    END IF;
    EXECUTE format('ANALYZE ragpipe.%I (collection_id, document_id, metadata, tsv, tenant)',
                   ragpipe.chunk_partition(collection));
END
$fn$;
