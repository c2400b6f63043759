-- Postings in blocks, cheaper to load and to keep (issue 43):
--   * the delta is no longer a table of rows: it is the chunks loaded since the collection's last
--     compaction (chunk ids above ragpipe.posting_segments.upto; ids only grow), read in full from
--     their tsvectors by keyword_search, so a load writes nothing for keyword search at all. A
--     compaction (a run's finalize) turns them into a segment of blocks;
--   * a block holds its chunk ids as 4-byte offsets from its smallest (`base`): 8 bytes a posting
--     with tf and len, against 12. A block whose ids span 2^31 or more keeps them whole (`wide_ids`);
--   * the GIN index on the chunks' tsvectors goes: nothing has read it since keyword search reads
--     postings (008_postings.sql), and every load paid for it.
-- Existing collections' blocks are made again from their chunks here; searches wait for this
-- migration (about 10 s per 100,000 chunks, docs/keyword-search.md).
DROP INDEX IF EXISTS ragpipe.chunks_tsv_idx;

DROP VIEW IF EXISTS ragpipe.keyword_postings;  -- the SQL API makes it again, over the blocks and the chunks

DROP FUNCTION IF EXISTS ragpipe.add_postings(int, bigint[]);
DROP TABLE ragpipe.postings;
DROP FUNCTION ragpipe.postings_partition(int);

TRUNCATE ragpipe.posting_blocks, ragpipe.posting_segments, ragpipe.dead_chunks;
ALTER TABLE ragpipe.posting_blocks DROP COLUMN chunk_ids;
ALTER TABLE ragpipe.posting_blocks ADD COLUMN base bigint NOT NULL;
ALTER TABLE ragpipe.posting_blocks ADD COLUMN ids int4[];        -- chunk id - base, for each posting
ALTER TABLE ragpipe.posting_blocks ADD COLUMN wide_ids bigint[]; -- the chunk ids, when they do not fit in ids
ALTER TABLE ragpipe.posting_blocks ADD CONSTRAINT posting_blocks_ids CHECK ((ids IS NULL) <> (wide_ids IS NULL));
ALTER TABLE ragpipe.posting_segments ADD COLUMN upto bigint NOT NULL DEFAULT 0;  -- its chunks' largest id
COMMENT ON COLUMN ragpipe.posting_segments.upto IS
    'The largest chunk id this segment was compacted up to: chunks above every segment''s are the delta';

-- The blocks of one new segment from the postings in pg_temp.compacting (lexeme, chunk_id, tf, len):
-- per word, best impact (bm25_tf with `mean`) first, 128 a block, ids as offsets from the word's
-- smallest (whole when the word's ids span 2^31 or more). Returns the blocks written.
CREATE FUNCTION ragpipe.write_blocks(collection int, segment int, mean double precision) RETURNS bigint
LANGUAGE plpgsql SET search_path = ragpipe, public, pg_temp AS $fn$
DECLARE
    written bigint;
BEGIN
    INSERT INTO ragpipe.posting_blocks
        (collection_id, lexeme, segment, block, min_impact, last, base, ids, wide_ids, tfs, lens)
    SELECT collection, r.lexeme, segment, (r.rn - 1) / 128, min(r.impact), bool_or(r.rn = r.cnt), min(r.base),
           array_agg((r.chunk_id - r.base)::int4) FILTER (WHERE r.span < 2147483648),
           array_agg(r.chunk_id) FILTER (WHERE r.span >= 2147483648),
           array_agg(r.tf::int2), array_agg(r.len::int2)
    FROM (SELECT c.lexeme COLLATE "C" AS lexeme, c.chunk_id, c.tf, c.len, ragpipe.bm25_tf(c.tf, c.len, mean)::real AS impact,
                 row_number() OVER w AS rn, count(*) OVER l AS cnt,
                 min(c.chunk_id) OVER l AS base, max(c.chunk_id) OVER l - min(c.chunk_id) OVER l AS span
          FROM pg_temp.compacting c
          WINDOW l AS (PARTITION BY c.lexeme COLLATE "C"),
                 w AS (PARTITION BY c.lexeme COLLATE "C" ORDER BY ragpipe.bm25_tf(c.tf, c.len, mean) DESC, c.chunk_id)) r
    GROUP BY r.lexeme, (r.rn - 1) / 128  -- each array in the same (impact) order: one aggregate pass
    ORDER BY r.lexeme, (r.rn - 1) / 128;  -- a word's blocks side by side on disk: a search reads few pages
    GET DIAGNOSTICS written = ROW_COUNT;
    RETURN written;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.write_blocks(int, int, double precision) FROM PUBLIC;

CREATE OR REPLACE FUNCTION ragpipe.create_chunk_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE TABLE ragpipe.%I (LIKE ragpipe.chunks INCLUDING ALL)', ragpipe.chunk_partition(NEW.id));
    EXECUTE format('ALTER TABLE ragpipe.chunks ATTACH PARTITION ragpipe.%I FOR VALUES IN (%s)',
                   ragpipe.chunk_partition(NEW.id), NEW.id);
    EXECUTE format('CREATE TABLE ragpipe.%I (LIKE ragpipe.posting_blocks INCLUDING ALL)',
                   ragpipe.blocks_partition(NEW.id));
    EXECUTE format('ALTER TABLE ragpipe.posting_blocks ATTACH PARTITION ragpipe.%I FOR VALUES IN (%s)',
                   ragpipe.blocks_partition(NEW.id), NEW.id);
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.drop_chunk_partition() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.chunk_partition(OLD.id));
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.blocks_partition(OLD.id));
    RETURN OLD;
END
$fn$;

-- Every collection with a keyword index: one segment of blocks from all its chunks.
DO $$
DECLARE
    k int;
    mean double precision;
    top bigint;
BEGIN
    FOR k IN SELECT id FROM ragpipe.collections WHERE coalesce(settings ->> 'keyword', 'true') <> 'false' ORDER BY id LOOP
        SELECT s.impact_length INTO mean FROM ragpipe.text_stats s WHERE s.collection_id = k;
        SELECT max(c.id) INTO top FROM ragpipe.chunks c WHERE c.collection_id = k;
        CONTINUE WHEN mean IS NULL OR top IS NULL;
        CREATE TEMP TABLE compacting ON COMMIT DROP AS
        SELECT t.lexeme, c.id AS chunk_id, cardinality(t.positions) AS tf, length(c.tsv) AS len
        FROM ragpipe.chunks c CROSS JOIN LATERAL unnest(c.tsv) t WHERE c.collection_id = k;
        PERFORM ragpipe.write_blocks(k, 1, mean);
        INSERT INTO ragpipe.posting_segments (collection_id, segment, postings, upto)
        SELECT k, 1, count(*), top FROM compacting;
        DROP TABLE compacting;
    END LOOP;
END
$$;
