-- BM25 postings in blocks (issue 43): per collection and word, lists of postings best impact first,
-- cut into blocks of up to 128 held in arrays (chunk ids, tf and len as int2): about 13 bytes a
-- posting against about 180 as one row a posting with two B-tree entries. ragpipe.postings stays,
-- as the delta: what loads write, read through its index like before; a compaction
-- (ragpipe.compact_postings, at a run's finalize) turns it into a new segment of blocks, and
-- merges every segment into one when there are many or when deleted chunks pile up. A deleted
-- chunk's postings in blocks are masked (ragpipe.dead_chunks) until its segment is merged. Existing
-- collections keep their postings as their delta until their next run compacts them.
CREATE TABLE ragpipe.posting_blocks (
    collection_id int      NOT NULL,
    lexeme        text     NOT NULL,
    segment       int      NOT NULL,
    block         int      NOT NULL,   -- 0 holds the list's best impacts
    min_impact    real     NOT NULL,   -- its last impact: no later posting of the list has more
    last          boolean  NOT NULL,   -- the list's last block
    chunk_ids     bigint[] NOT NULL,
    tfs           int2[]   NOT NULL,
    lens          int2[]   NOT NULL,
    PRIMARY KEY (collection_id, lexeme, segment, block)
) PARTITION BY LIST (collection_id);

-- A compaction's segments: how many postings each holds (a segment is replaced whole).
CREATE TABLE ragpipe.posting_segments (
    collection_id int    NOT NULL REFERENCES ragpipe.collections (id) ON DELETE CASCADE,
    segment       int    NOT NULL,
    postings      bigint NOT NULL,
    PRIMARY KEY (collection_id, segment)
);

-- Chunks deleted since their postings went into blocks: searches skip their postings.
CREATE TABLE ragpipe.dead_chunks (
    collection_id int    NOT NULL REFERENCES ragpipe.collections (id) ON DELETE CASCADE,
    chunk_id      bigint NOT NULL,
    PRIMARY KEY (collection_id, chunk_id)
);

CREATE FUNCTION ragpipe.blocks_partition(collection int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT 'posting_blocks_c' || collection $fn$;

DO $$
DECLARE
    k int;
BEGIN
    FOR k IN SELECT id FROM ragpipe.collections ORDER BY id LOOP
        EXECUTE format('CREATE TABLE ragpipe.%I PARTITION OF ragpipe.posting_blocks FOR VALUES IN (%s)',
                       ragpipe.blocks_partition(k), k);
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
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.postings_partition(OLD.id));
    EXECUTE format('DROP TABLE IF EXISTS ragpipe.%I', ragpipe.blocks_partition(OLD.id));
    RETURN OLD;
END
$fn$;
