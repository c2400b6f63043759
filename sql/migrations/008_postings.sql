-- BM25 impact postings: one row per (word, chunk) with the word's count in the chunk (tf), the
-- chunk's length in distinct words (len) and BM25's term-frequency part as its impact,
-- tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len)), k1 = 1.2, b = 0.75, computed with the
-- collection's mean length when the chunk was loaded. ragpipe.keyword_search reads the postings of
-- each query word best impact first and stops early, then scores its best candidates exactly from
-- tf and len (docs/keyword-search.md: 4 ms instead of 38 ms at 100k chunks). Partitioned by
-- collection like ragpipe.chunks: created, loaded, and dropped with the collection's partition.
CREATE TABLE ragpipe.postings (
    collection_id int    NOT NULL,
    lexeme        text   NOT NULL,
    chunk_id      bigint NOT NULL,
    tf            int    NOT NULL,
    len           int    NOT NULL,
    impact        real   NOT NULL
) PARTITION BY LIST (collection_id);
CREATE INDEX postings_word_idx ON ragpipe.postings (collection_id, lexeme, impact DESC) INCLUDE (chunk_id);
CREATE INDEX postings_chunk_idx ON ragpipe.postings (collection_id, chunk_id, lexeme) INCLUDE (tf, len);

CREATE FUNCTION ragpipe.postings_partition(collection int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT 'postings_c' || collection $fn$;

-- The postings of chunks just loaded (or of a whole collection, with chunk ids NULL).
CREATE FUNCTION ragpipe.add_postings(collection int, document_ids bigint[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp AS $fn$
    INSERT INTO ragpipe.postings (collection_id, lexeme, chunk_id, tf, len, impact)
    SELECT c.collection_id, t.lexeme, c.id, cardinality(t.positions), length(c.tsv),
           cardinality(t.positions) * 2.2
           / (cardinality(t.positions)
              + 1.2 * (0.25 + 0.75 * length(c.tsv) / coalesce(nullif(s.avg_length, 0), length(c.tsv)::float8)))
    FROM ragpipe.chunks c
    CROSS JOIN LATERAL unnest(c.tsv) t
    LEFT JOIN ragpipe.text_stats s ON s.collection_id = c.collection_id
    WHERE c.collection_id = add_postings.collection
      AND (add_postings.document_ids IS NULL OR c.document_id = ANY (add_postings.document_ids))
$fn$;
REVOKE ALL ON FUNCTION ragpipe.add_postings(int, bigint[]) FROM PUBLIC;

DO $$
DECLARE
    k int;
BEGIN
    FOR k IN SELECT id FROM ragpipe.collections ORDER BY id LOOP
        EXECUTE format('CREATE TABLE ragpipe.%I PARTITION OF ragpipe.postings FOR VALUES IN (%s)',
                       ragpipe.postings_partition(k), k);
        PERFORM ragpipe.add_postings(k, NULL);
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION ragpipe.create_chunk_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE TABLE ragpipe.%I (LIKE ragpipe.chunks INCLUDING ALL)', ragpipe.chunk_partition(NEW.id));
    EXECUTE format('ALTER TABLE ragpipe.chunks ATTACH PARTITION ragpipe.%I FOR VALUES IN (%s)',
                   ragpipe.chunk_partition(NEW.id), NEW.id);
    EXECUTE format('CREATE TABLE ragpipe.%I (LIKE ragpipe.postings INCLUDING ALL)', ragpipe.postings_partition(NEW.id));
    EXECUTE format('ALTER TABLE ragpipe.postings ATTACH PARTITION ragpipe.%I FOR VALUES IN (%s)',
                   ragpipe.postings_partition(NEW.id), NEW.id);
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.drop_chunk_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.chunk_partition(OLD.id));
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.postings_partition(OLD.id));
    RETURN OLD;
END
$fn$;

DO $$
DECLARE
    r name;
BEGIN  -- loader roles granted before this migration (ragpipe.grant_loader grants it from now on)
    FOR r IN SELECT grantee FROM information_schema.role_table_grants
             WHERE table_schema = 'ragpipe' AND table_name = 'documents' AND privilege_type = 'INSERT'
               AND grantee NOT IN (SELECT tableowner FROM pg_tables WHERE schemaname = 'ragpipe' AND tablename = 'documents')
    LOOP
        EXECUTE format('GRANT SELECT, DELETE ON ragpipe.postings TO %I', r);
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.add_postings(int, bigint[]) TO %I', r);
    END LOOP;
END
$$;
