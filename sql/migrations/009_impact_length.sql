-- BM25 impacts (008_postings.sql) need the collection's mean chunk length, and keyword_search reads
-- each word's postings best impact first, so every posting of a collection must use the same one.
-- 008 used the statistics of the moment, and a collection's first load (no statistics yet) used
-- each chunk's own length, which leaves no length normalisation at all: at 1M chunks a common
-- word's best 10,000 postings were then an arbitrary 10,000 of its tf = 1 postings (keyword recall@10
-- 0.68 against exact BM25). Now text_stats.impact_length is the mean length the stored impacts use:
-- set from the first batch a collection loads, and every impact is recomputed when the refreshed
-- mean drifts from it by more than 20%.
ALTER TABLE ragpipe.text_stats ADD COLUMN impact_length double precision;

-- BM25's term-frequency part, k1 = 1.2, b = 0.75: a posting's impact, and what the exact scoring sums.
CREATE FUNCTION ragpipe.bm25_tf(tf double precision, len double precision, avg_len double precision)
RETURNS double precision LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $fn$ SELECT tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len / coalesce(nullif(avg_len, 0), 1))) $fn$;

CREATE OR REPLACE FUNCTION ragpipe.add_postings(collection int, document_ids bigint[]) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp AS $fn$
DECLARE
    mean double precision;
BEGIN
    SELECT s.impact_length INTO mean FROM ragpipe.text_stats s WHERE s.collection_id = collection;
    IF mean IS NULL THEN  -- the collection's first load: this batch's mean length, kept from now on
        SELECT avg(length(c.tsv)) INTO mean FROM ragpipe.chunks c
        WHERE c.collection_id = collection AND (document_ids IS NULL OR c.document_id = ANY (document_ids));
        IF mean IS NULL THEN
            RETURN;
        END IF;
        INSERT INTO ragpipe.text_stats AS s (collection_id, chunks, avg_length, impact_length)
        VALUES (collection, 0, mean, mean)
        ON CONFLICT (collection_id) DO UPDATE SET impact_length = coalesce(s.impact_length, excluded.impact_length)
        RETURNING s.impact_length INTO mean;  -- a parallel first batch that won keeps its mean
    END IF;
    INSERT INTO ragpipe.postings (collection_id, lexeme, chunk_id, tf, len, impact)
    SELECT c.collection_id, t.lexeme, c.id, cardinality(t.positions), length(c.tsv),
           ragpipe.bm25_tf(cardinality(t.positions), length(c.tsv), mean)
    FROM ragpipe.chunks c
    CROSS JOIN LATERAL unnest(c.tsv) t
    WHERE c.collection_id = collection
      AND (document_ids IS NULL OR c.document_id = ANY (document_ids));
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.add_postings(int, bigint[]) FROM PUBLIC;

-- Recompute a collection's impacts with its current mean length if that drifted more than
-- max_drift from the one they use (called after each refresh_text_stats). True if recomputed.
CREATE FUNCTION ragpipe.refresh_impacts(collection int, max_drift double precision DEFAULT 0.2)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    stats ragpipe.text_stats;
BEGIN
    SELECT * INTO stats FROM ragpipe.text_stats s WHERE s.collection_id = collection;
    IF NOT FOUND OR stats.avg_length <= 0
       OR abs(stats.avg_length / coalesce(nullif(stats.impact_length, 0), 1e-9) - 1) <= max_drift THEN
        RETURN false;
    END IF;
    UPDATE ragpipe.postings p SET impact = ragpipe.bm25_tf(p.tf, p.len, stats.avg_length)
    WHERE p.collection_id = collection;
    UPDATE ragpipe.text_stats s SET impact_length = stats.avg_length WHERE s.collection_id = collection;
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.refresh_impacts(int, double precision) FROM PUBLIC;

DO $$
DECLARE
    r name;
BEGIN  -- loader roles granted before this migration (ragpipe.grant_loader grants it from now on)
    FOR r IN SELECT DISTINCT grantee FROM information_schema.routine_privileges
             WHERE routine_schema = 'ragpipe' AND routine_name = 'refresh_text_stats'
               AND grantee NOT IN (current_user, 'PUBLIC') LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.refresh_impacts(int, double precision) TO %I', r);
    END LOOP;
END
$$;

-- Existing collections: impacts recomputed with their current mean length.
SELECT ragpipe.refresh_impacts(collection_id, 0) FROM ragpipe.text_stats;
