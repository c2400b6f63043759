-- Keyword search (BM25) of the SQL search API: the query's words in a collection's languages, and
-- ragpipe.keyword_search, exact top-k over the impact postings (docs/keyword-search.md). Applied
-- before 010_search.sql, whose first lines drop the older signatures it replaces.

DROP FUNCTION IF EXISTS ragpipe.any_word_query(text);  -- replaced by words_query, itself gone

-- The text search configurations a collection's chunks are made in: its `language` (default
-- english) and the other `languages` its documents may name.
CREATE OR REPLACE FUNCTION ragpipe.collection_languages(settings jsonb) RETURNS regconfig[]
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
SELECT array_agg(DISTINCT l::regconfig)
FROM (SELECT coalesce(settings ->> 'language', 'english') AS l
      UNION ALL SELECT jsonb_array_elements_text(coalesce(settings -> 'languages', '[]'))) x
$fn$;

-- The text search configuration named `language` (a search function's argument), or a clear error.
CREATE OR REPLACE FUNCTION ragpipe.query_language(language text) RETURNS regconfig
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    found regconfig;
BEGIN
    SELECT c.oid::regconfig INTO found FROM pg_ts_config c WHERE c.cfgname = lower(language);
    IF found IS NULL THEN
        RAISE EXCEPTION 'ragpipe: language % is not a text search configuration of this database',
            quote_literal(left(language, 40)) || CASE WHEN length(language) > 40 THEN '…' ELSE '' END
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Give one of SELECT cfgname FROM pg_ts_config (english, german, simple, ...), or NULL for the collection''s languages.';
    END IF;
    RETURN found;
END
$fn$;

-- A query's words as every one of those languages stems them (English alone: to_tsvector('english')),
-- so documents in different languages are found and ranked together by one BM25; with `language`,
-- as that language alone stems them.
DROP FUNCTION IF EXISTS ragpipe.query_lexemes(jsonb, text);
CREATE OR REPLACE FUNCTION ragpipe.query_lexemes(settings jsonb, query_text text, language text DEFAULT NULL)
RETURNS SETOF text
LANGUAGE sql STABLE PARALLEL SAFE AS $fn$
SELECT DISTINCT w.lexeme
FROM unnest(CASE WHEN language IS NULL THEN ragpipe.collection_languages(settings)
                 ELSE ARRAY[ragpipe.query_language(language)] END) l
CROSS JOIN LATERAL unnest(to_tsvector(l, query_text)) w
$fn$;

-- keyword_search: exact BM25 (ragpipe.bm25_tf: k1 = 1.2, b = 0.75, idf from ragpipe.term_stats) top k;
-- any query word may match. It reads impact postings (008_postings.sql; the word index carries tf and
-- len, so a posting read gives its chunk that word's exact part, idf * bm25_tf(tf, len, mean length))
-- in rounds, and stops as soon as no chunk it has not scored can reach the k-th best score (the
-- threshold algorithm's safe stop; docs/keyword-search.md):
--   * a round reads each word's best `depth` postings (index.keyword_candidates, default 4000; 4x
--     more each round). A chunk not read in a word's list has at most idf * slack * the impact at
--     that list's cut (slack covers impacts computed with an older mean length: bm25_tf grows at
--     most in proportion to the mean), and nothing of a word read to its end;
--   * theta, the k-th best score known so far, is a lower bound of the k-th best score. The open
--     chunks whose known parts plus those bounds can still pass it are scored exactly from the
--     chunk index, best bound first, `probes` at a time (index.keyword_rescore, default 200),
--     raising theta: one batch a round, or all of them once no chunk read in no list can pass
--     theta and they are at most 4 batches. Then it returns the best k; else it reads deeper.
-- So the ranking is exact BM25 for any collection size, with or without a filter, ties aside; the
-- two settings only size the work of a round. With a `filter`, only postings of chunks whose
-- metadata matches it are read. `language` (a text search configuration, e.g. 'german') parses the
-- query in that language alone; NULL (the default) in every language the collection holds.
-- A bound on a search function's own work that its caller cannot lift: statement_timeout is a
-- default a reader may SET to 0, so keyword search checks its time at each round and stops past
-- `limit_s` (30 s; a collection's settings index.max_search_s may lower it), as a cancel would.
CREATE OR REPLACE FUNCTION ragpipe.check_search_time(limit_s double precision) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = ragpipe, public, pg_temp
AS $fn$
BEGIN
    IF extract(epoch FROM clock_timestamp() - statement_timestamp()) > limit_s THEN
        RAISE EXCEPTION 'ragpipe: keyword search stopped after % s, its bound whatever statement_timeout says; '
                        'use fewer or rarer words, or a filter', limit_s USING ERRCODE = 'query_canceled';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.keyword_search(
    collection text, query_text text, k int DEFAULT 10, filter jsonb DEFAULT NULL, language text DEFAULT NULL)
RETURNS SETOF ragpipe.search_hit
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    coll ragpipe.collections := ragpipe.get_collection(collection);
    depth bigint := coalesce((coll.settings #>> '{index,keyword_candidates}')::bigint, 4000);
    probes int := coalesce((coll.settings #>> '{index,keyword_rescore}')::int, 200);
    n double precision;
    avg_len double precision;
    slack double precision;
    words text[];
    idfs double precision[];
    unseen double precision;
    open_words int;
    theta double precision := 0;
    pool_ids bigint[];
    pool_known double precision[];
    pool_open boolean[];
    pool_ub double precision[];
    probed_ids bigint[] := '{}';
    probed_scores double precision[] := '{}';
    batch bigint[];
    left_over bigint;
    rounds_probed int := 0;
    max_s double precision := coalesce((coll.settings #>> '{index,max_search_s}')::double precision, 30);
    upto bigint := (SELECT coalesce(max(g.upto), 0) FROM ragpipe.posting_segments g WHERE g.collection_id = coll.id);
    has_blocks boolean := upto > 0;  -- a segment's upto is its largest chunk id
    delta_words bigint[];
    delta_ids bigint[];
    delta_parts double precision[];
    has_dead boolean := EXISTS (SELECT FROM ragpipe.dead_chunks d WHERE d.collection_id = coll.id);
BEGIN
    IF coll.settings ->> 'keyword' = 'false' THEN
        RAISE EXCEPTION 'ragpipe: collection "%" has no keyword index (keyword: false in collections.yml): search it '
                        'with mode semantic, or set keyword: true and run it', collection
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    k := ragpipe.checked_k(k);
    SELECT s.chunks, s.avg_length,
           -- bm25_tf(tf, len, a) <= bm25_tf(tf, len, b) * max(1, a / b); 1e-6 covers real's rounding
           greatest(1, coalesce(nullif(s.avg_length, 0), 1) / coalesce(nullif(s.impact_length, 0),
                                                                    nullif(s.avg_length, 0), 1)) * (1 + 1e-6)
    INTO n, avg_len, slack FROM ragpipe.text_stats s WHERE s.collection_id = coll.id;
    slack := coalesce(slack, 1 + 1e-6);
    depth := greatest(depth, k, 1);
    probes := greatest(probes, 1);
    -- Bounded work per query, as search engines bound it: the first 16 kB of the text, and of its
    -- distinct words the 32 rarest that occur in the collection (then the ones that occur nowhere).
    SELECT array_agg(x.lexeme ORDER BY x.c, x.lexeme),
           array_agg(ln(1 + (greatest(coalesce(n, 0), x.c) - x.c + 0.5) / (x.c + 0.5)) ORDER BY x.c, x.lexeme)
    INTO words, idfs
    FROM (SELECT w.lexeme, coalesce(t.chunks, 0)::bigint AS c
          FROM ragpipe.query_lexemes(coll.settings, left(coalesce(query_text, ''), 16384), language) w(lexeme)
          LEFT JOIN ragpipe.term_stats t ON t.collection_id = coll.id AND t.lexeme = w.lexeme
          ORDER BY coalesce(t.chunks, 0) = 0, coalesce(t.chunks, 0), w.lexeme
          LIMIT 32) x;
    IF words IS NULL THEN
        RETURN;
    END IF;
    -- The delta (chunks loaded since the last compaction) is read in full, once: its chunks' exact
    -- scores, from their tsvectors.
    -- Most searches find no delta: the newest chunk id (one step of the primary key, backwards) says so.
    -- Else it is planned each time (EXECUTE), for its `upto`: a plan cached while the delta held every
    -- chunk would keep reading the whole table once a compaction emptied it.
    IF (SELECT max(ch.id) FROM ragpipe.chunks ch WHERE ch.collection_id = coll.id) > upto THEN
        EXECUTE $q$
            SELECT array_agg(d.i), array_agg(d.id), array_agg(d.part)
            FROM (SELECT x.i, ch.id, x.idf * ragpipe.bm25_tf(cardinality(t.positions), length(ch.tsv), $6) AS part
                  FROM ragpipe.chunks ch CROSS JOIN LATERAL unnest(ch.tsv) t
                  JOIN unnest($3::text[], $4::float8[]) WITH ORDINALITY AS x(w, idf, i) ON x.w = t.lexeme
                  WHERE ch.collection_id = $1 AND ch.id > $2 AND ($5::jsonb IS NULL OR ch.metadata @> $5)) d $q$
        INTO delta_words, delta_ids, delta_parts USING coll.id, upto, words, idfs, filter, avg_len;
    END IF;
    LOOP
        PERFORM ragpipe.check_search_time(max_s);
        -- Each word's first ceil(depth / 128) blocks of every segment (a deleted chunk's postings in
        -- blocks are skipped), and the delta's scores (whole: nothing of such a chunk is left unread).
        WITH q AS MATERIALIZED (
            SELECT x.i, x.w, x.idf FROM unnest(words, idfs) WITH ORDINALITY AS x(w, idf, i)),
        blocks AS MATERIALIZED (
            SELECT q.i, b.block, b.last, b.min_impact, b.base, b.ids, b.wide_ids, b.tfs, b.lens
            FROM q JOIN ragpipe.posting_blocks b
                ON b.collection_id = coll.id AND b.lexeme = q.w AND b.block < (depth + 127) / 128
            WHERE has_blocks),
        posted AS (
            SELECT b.i, b.base + u.off AS chunk_id, u.tf, u.len
            FROM blocks b CROSS JOIN LATERAL unnest(b.ids, b.tfs, b.lens) AS u(off, tf, len)
            WHERE b.ids IS NOT NULL
            UNION ALL
            SELECT b.i, u.chunk_id, u.tf, u.len
            FROM blocks b CROSS JOIN LATERAL unnest(b.wide_ids, b.tfs, b.lens) AS u(chunk_id, tf, len)
            WHERE b.wide_ids IS NOT NULL),
        read AS MATERIALIZED (
            SELECT d.i, d.chunk_id, d.part, true AS whole
            FROM unnest(delta_words, delta_ids, delta_parts) AS d(i, chunk_id, part)
            UNION ALL
            SELECT u.i, u.chunk_id, q.idf * ragpipe.bm25_tf(u.tf, u.len, avg_len), false
            FROM posted u JOIN q ON q.i = u.i
            WHERE (NOT has_dead OR NOT EXISTS (
                      SELECT FROM ragpipe.dead_chunks dc WHERE dc.collection_id = coll.id AND dc.chunk_id = u.chunk_id))
              AND (filter IS NULL OR EXISTS (
                      SELECT FROM ragpipe.chunks ch
                      WHERE ch.collection_id = coll.id AND ch.id = u.chunk_id AND ch.metadata @> filter))),
        cut AS MATERIALIZED (  -- the most a chunk not read in a word's lists may still have of it
            SELECT q.i, q.idf * slack * coalesce((SELECT max(b.min_impact) FROM blocks b
                                                  WHERE b.i = q.i AND NOT b.last AND b.block = (depth + 127) / 128 - 1),
                                                 0) AS bound
            FROM q),
        total AS (
            SELECT sum(c.bound) AS unseen, count(*) FILTER (WHERE c.bound > 0) AS open_words FROM cut c),
        per AS MATERIALIZED (
            SELECT r.chunk_id, sum(r.part) AS known, sum(c.bound) AS seen_bound,
                   count(*) FILTER (WHERE c.bound > 0) AS seen_open, bool_or(r.whole) AS whole
            FROM read r JOIN cut c ON c.i = r.i
            GROUP BY r.chunk_id),
        th AS (
            SELECT greatest(theta, CASE WHEN count(*) < k THEN 0 ELSE min(b.known) END) AS theta
            FROM (SELECT p.known FROM per p ORDER BY p.known DESC LIMIT k) b),
        pool AS MATERIALIZED (  -- the chunks that can still pass theta, best bound first
            SELECT p.chunk_id, p.known, NOT p.whole AND p.seen_open < t.open_words AS open,
                   p.known + CASE WHEN p.whole THEN 0 ELSE greatest(t.unseen - p.seen_bound, 0) END AS ub
            FROM per p, total t, th
            WHERE p.known + CASE WHEN p.whole THEN 0 ELSE greatest(t.unseen - p.seen_bound, 0) END >= th.theta
            ORDER BY 4 DESC, 1),
        arrays AS (  -- one pass over the pool, in its order
            SELECT array_agg(pool.chunk_id) AS ids, array_agg(pool.known) AS known, array_agg(pool.open) AS open,
                   array_agg(pool.ub) AS ub
            FROM pool)
        SELECT t.unseen, t.open_words, th.theta, a.ids, a.known, a.open, a.ub
        INTO unseen, open_words, theta, pool_ids, pool_known, pool_open, pool_ub
        FROM total t, th, arrays a;
        -- Score exactly the open chunks of best bound, `probes` at a time, raising theta: one batch
        -- a round, or all that can still pass theta once no unread chunk can (unseen <= theta) and
        -- they are few (at most 4 batches).
        LOOP
            PERFORM ragpipe.check_search_time(max_s);
            SELECT array_agg(x.id), max(x.left_over) INTO batch, left_over FROM (
                SELECT p.id, count(*) OVER () AS left_over
                FROM unnest(pool_ids, pool_open, pool_ub) WITH ORDINALITY AS p(id, open, ub, o)
                LEFT JOIN unnest(probed_ids) AS e(id) ON e.id = p.id
                WHERE p.open AND p.ub >= theta AND e.id IS NULL
                ORDER BY p.o) x;
            EXIT WHEN batch IS NULL OR (rounds_probed > 0 AND (unseen > theta OR left_over > 4 * probes));
            batch := batch[1:probes];
            rounds_probed := rounds_probed + 1;
            SELECT probed_ids || array_agg(s.id), probed_scores || array_agg(s.score)
            INTO probed_ids, probed_scores
            -- A chunk's exact score from its own words (its tsvector, the postings' source: the same tf
            -- and len), one descent of the chunk index per chunk (LATERAL).
            FROM (SELECT b.id, e.score
                  FROM unnest(batch) AS b(id) CROSS JOIN LATERAL (
                      SELECT sum(x.idf * ragpipe.bm25_tf(cardinality(t.positions), length(ch.tsv), avg_len)) AS score
                      FROM ragpipe.chunks ch CROSS JOIN LATERAL unnest(ch.tsv) t
                      JOIN unnest(words, idfs) AS x(w, idf) ON x.w = t.lexeme
                      WHERE ch.collection_id = coll.id AND ch.id = b.id) e) s;
            SELECT greatest(theta, CASE WHEN count(*) < k THEN 0 ELSE min(v.score) END) INTO theta
            FROM (SELECT coalesce(e.score, p.known) AS score
                  FROM unnest(pool_ids, pool_known) AS p(id, known)
                  LEFT JOIN unnest(probed_ids, probed_scores) AS e(id, score) ON e.id = p.id
                  ORDER BY 1 DESC LIMIT k) v;
        END LOOP;
        rounds_probed := 0;
        EXIT WHEN batch IS NULL AND unseen <= theta;
        depth := depth * 4;
    END LOOP;
    RETURN QUERY
    WITH scored AS (
        SELECT p.id, coalesce(e.score, p.known) AS score
        FROM unnest(pool_ids, pool_known, pool_open) AS p(id, known, open)
        LEFT JOIN unnest(probed_ids, probed_scores) AS e(id, score) ON e.id = p.id
        WHERE NOT p.open OR e.id IS NOT NULL
        UNION
        SELECT e.id, e.score FROM unnest(probed_ids, probed_scores) AS e(id, score)),
    best AS (SELECT s.id, s.score FROM scored s ORDER BY s.score DESC, s.id LIMIT k)
    SELECT ch.id, d.source_id, d.uri, d.title, ch.text, d.metadata, s.score
    FROM best s JOIN ragpipe.chunks ch ON ch.id = s.id AND ch.collection_id = coll.id
    JOIN ragpipe.documents d ON d.id = ch.document_id
    ORDER BY s.score DESC, s.id;
END
$fn$;

DROP FUNCTION IF EXISTS ragpipe.words_query(text[]);  -- the tsvector path of keyword_search used it

-- keyword_postings: every live posting of every collection, one row a posting (the delta's, made from
-- its chunks' tsvectors, with segment NULL; those in blocks with their segment), for audits
-- (ragpipe verify) and tests.
DROP VIEW IF EXISTS ragpipe.keyword_postings;
CREATE VIEW ragpipe.keyword_postings AS
SELECT c.collection_id, t.lexeme, c.id AS chunk_id, cardinality(t.positions) AS tf, length(c.tsv) AS len,
       NULL::int AS segment
FROM ragpipe.chunks c CROSS JOIN LATERAL unnest(c.tsv) t
WHERE c.id > (SELECT coalesce(max(g.upto), 0) FROM ragpipe.posting_segments g WHERE g.collection_id = c.collection_id)
  AND coalesce((SELECT k.settings ->> 'keyword' FROM ragpipe.collections k WHERE k.id = c.collection_id), '') <> 'false'
UNION ALL
SELECT b.collection_id, b.lexeme, coalesce(u.wide, b.base + u.off), u.tf, u.len, b.segment
FROM ragpipe.posting_blocks b CROSS JOIN LATERAL unnest(b.ids, b.wide_ids, b.tfs, b.lens) AS u(off, wide, tf, len)
WHERE NOT EXISTS (SELECT FROM ragpipe.dead_chunks d
                  WHERE d.collection_id = b.collection_id AND d.chunk_id = coalesce(u.wide, b.base + u.off));

-- compact_postings: the delta (the collection's chunks loaded since its last compaction: ids above
-- every segment's `upto`) becomes a new segment of blocks (ragpipe.write_blocks,
-- sql/migrations/015_blocks_from_chunks.sql), in one transaction: a search sees the postings before
-- or after, and a crash leaves the old ones. Segments merge log-structured: at 8 segments, every
-- segment but the largest (when it holds at least as many postings as the rest) is merged into the
-- new one, read from their blocks. `full_merge` (and deleted chunks past 10% of the collection)
-- makes one segment again from every chunk's tsvector, which drops deleted chunks' postings for good
-- and repairs any block. Blocks hold each word's postings best impact first (bm25_tf with
-- text_stats.impact_length), 128 a block. It holds a SHARE lock on the collection's chunks (loads
-- wait; searches do not), so no chunk can commit below the new `upto` afterwards. Returns what it did.
CREATE OR REPLACE FUNCTION ragpipe.compact_postings(collection int, full_merge boolean DEFAULT false)
RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    mean double precision;
    chunks bigint;
    segments int;
    next_segment int;
    dead bigint;
    upto_old bigint;
    upto_new bigint;
    merged int[];
    written bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7266102, collection);  -- one compaction of a collection at a time
    EXECUTE format('LOCK TABLE ragpipe.%I IN SHARE MODE', ragpipe.chunk_partition(collection));
    SELECT count(*), coalesce(max(g.segment), 0) + 1, coalesce(max(g.upto), 0)
    INTO segments, next_segment, upto_old
    FROM ragpipe.posting_segments g WHERE g.collection_id = collection;
    SELECT max(c.id), count(*) INTO upto_new, chunks FROM ragpipe.chunks c WHERE c.collection_id = collection;
    IF upto_new IS NULL THEN  -- no chunks: no postings
        DELETE FROM ragpipe.posting_blocks b WHERE b.collection_id = collection;
        DELETE FROM ragpipe.posting_segments g WHERE g.collection_id = collection;
        DELETE FROM ragpipe.dead_chunks d WHERE d.collection_id = collection;
        RETURN 'nothing to compact';
    END IF;
    SELECT s.impact_length INTO mean FROM ragpipe.text_stats s WHERE s.collection_id = collection;
    IF mean IS NULL THEN  -- the collection's first compaction: its mean length, kept from now on
        SELECT avg(length(c.tsv)) INTO mean FROM ragpipe.chunks c WHERE c.collection_id = collection;
        INSERT INTO ragpipe.text_stats AS s (collection_id, chunks, avg_length, impact_length)
        VALUES (collection, 0, mean, mean)
        ON CONFLICT (collection_id) DO UPDATE SET impact_length = coalesce(s.impact_length, excluded.impact_length)
        RETURNING s.impact_length INTO mean;
    END IF;
    SELECT count(*) INTO dead FROM ragpipe.dead_chunks d WHERE d.collection_id = collection;
    full_merge := full_merge OR (segments > 0 AND dead > 0.1 * greatest(chunks, 1));
    IF full_merge THEN
        upto_old := 0;
        SELECT array_agg(g.segment) INTO merged FROM ragpipe.posting_segments g WHERE g.collection_id = collection;
    ELSIF upto_new <= upto_old THEN
        RETURN 'nothing to compact';
    ELSIF segments + 1 >= 8 THEN  -- every segment but a largest that outweighs the others
        SELECT array_agg(g.segment) INTO merged FROM ragpipe.posting_segments g
        WHERE g.collection_id = collection AND g.segment IS DISTINCT FROM (
            SELECT l.segment FROM ragpipe.posting_segments l WHERE l.collection_id = collection
              AND 2 * l.postings >= (SELECT sum(a.postings) FROM ragpipe.posting_segments a
                                     WHERE a.collection_id = collection)
            ORDER BY l.postings DESC LIMIT 1);
    END IF;
    merged := coalesce(merged, '{}');
    CREATE TEMP TABLE compacting ON COMMIT DROP AS
    SELECT t.lexeme, c.id AS chunk_id, cardinality(t.positions) AS tf, length(c.tsv) AS len
    FROM ragpipe.chunks c CROSS JOIN LATERAL unnest(c.tsv) t
    WHERE c.collection_id = collection AND c.id > upto_old;
    IF NOT full_merge AND cardinality(merged) > 0 THEN
        INSERT INTO compacting
        SELECT b.lexeme, coalesce(u.wide, b.base + u.off), u.tf, u.len
        FROM ragpipe.posting_blocks b CROSS JOIN LATERAL unnest(b.ids, b.wide_ids, b.tfs, b.lens) u(off, wide, tf, len)
        WHERE b.collection_id = collection AND b.segment = ANY (merged)
          AND NOT EXISTS (SELECT FROM ragpipe.dead_chunks d
                          WHERE d.collection_id = collection AND d.chunk_id = coalesce(u.wide, b.base + u.off));
    END IF;
    written := ragpipe.write_blocks(collection, next_segment, mean);
    DELETE FROM ragpipe.posting_blocks b WHERE b.collection_id = collection AND b.segment = ANY (merged);
    DELETE FROM ragpipe.posting_segments g WHERE g.collection_id = collection AND g.segment = ANY (merged);
    IF full_merge THEN
        DELETE FROM ragpipe.dead_chunks d WHERE d.collection_id = collection;
    END IF;
    INSERT INTO ragpipe.posting_segments (collection_id, segment, postings, upto)
    SELECT collection, next_segment, count(*), upto_new FROM compacting;
    DROP TABLE compacting;
    RETURN format('%s: segment %s, %s blocks', CASE WHEN full_merge THEN 'rebuilt'
                  WHEN cardinality(merged) > 0 THEN format('merged %s segments', cardinality(merged))
                  ELSE 'compacted' END, next_segment, written);
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.compact_postings(int, boolean) FROM PUBLIC;

-- refresh_impacts: the blocks' order (their impacts) follows the collection's
-- mean length once it drifted more than max_drift from the one they use. True if recomputed.
CREATE OR REPLACE FUNCTION ragpipe.refresh_impacts(collection int, max_drift double precision DEFAULT 0.2)
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
    UPDATE ragpipe.text_stats s SET impact_length = stats.avg_length WHERE s.collection_id = collection;
    IF EXISTS (SELECT FROM ragpipe.posting_segments g WHERE g.collection_id = collection) THEN
        PERFORM ragpipe.compact_postings(collection, true);  -- the blocks, ordered by the new impacts
    END IF;
    RETURN true;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.refresh_impacts(int, double precision) FROM PUBLIC;
