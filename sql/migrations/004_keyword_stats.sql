-- BM25 keyword ranking needs corpus statistics: how many chunks contain each word (term_stats)
-- and the collection's chunk count and mean chunk length (text_stats). They are refreshed at the
-- end of a run once the collection changed by 10% since the last refresh;
-- slightly stale statistics shift scores a little, they never hide a chunk.
CREATE TABLE ragpipe.term_stats (
    collection_id int NOT NULL REFERENCES ragpipe.collections ON DELETE CASCADE,
    lexeme        text NOT NULL,
    chunks        int NOT NULL,  -- chunks whose tsvector contains the lexeme
    PRIMARY KEY (collection_id, lexeme)
);

CREATE TABLE ragpipe.text_stats (
    collection_id int PRIMARY KEY REFERENCES ragpipe.collections ON DELETE CASCADE,
    chunks        bigint NOT NULL,
    avg_length    double precision NOT NULL,  -- mean number of distinct lexemes per chunk
    run_id        bigint,                     -- the last ingest run these statistics include
    refreshed_at  timestamptz NOT NULL DEFAULT now()
);

-- Refresh a collection's statistics when they are missing or the runs since the last refresh
-- (up to and including `run`) wrote or deleted at least min_change of its chunks. True if refreshed.
CREATE FUNCTION ragpipe.refresh_text_stats(collection int, run bigint DEFAULT NULL,
                                           min_change double precision DEFAULT 0.1)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    current ragpipe.text_stats;
    changed bigint;
BEGIN
    SELECT * INTO current FROM ragpipe.text_stats s WHERE s.collection_id = collection;
    IF FOUND THEN
        SELECT coalesce(sum(r.chunks_embedded + r.chunks_reused + r.deleted), 0) INTO changed
        FROM ragpipe.ingest_runs r
        WHERE r.collection_id = collection AND r.id > coalesce(current.run_id, 0)
          AND r.id <= coalesce(run, r.id);
        IF changed < min_change * current.chunks THEN
            RETURN false;
        END IF;
    END IF;
    DELETE FROM ragpipe.term_stats WHERE collection_id = collection;
    INSERT INTO ragpipe.term_stats (collection_id, lexeme, chunks)
    SELECT collection, s.word, s.ndoc
    FROM ts_stat(format('SELECT tsv FROM ragpipe.chunks WHERE collection_id = %s', collection)) s;
    INSERT INTO ragpipe.text_stats (collection_id, chunks, avg_length, run_id)
    SELECT collection, count(*), coalesce(avg(length(c.tsv)), 0), run
    FROM ragpipe.chunks c WHERE c.collection_id = collection
    ON CONFLICT (collection_id) DO UPDATE
        SET chunks = excluded.chunks, avg_length = excluded.avg_length,
            run_id = coalesce(excluded.run_id, ragpipe.text_stats.run_id), refreshed_at = now();
    RETURN true;
END
$fn$;

SELECT ragpipe.refresh_text_stats(id, (SELECT max(r.id) FROM ragpipe.ingest_runs r WHERE r.collection_id = c.id))
FROM ragpipe.collections c;
