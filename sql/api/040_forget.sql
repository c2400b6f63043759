-- forget: erase documents of a collection (by source ids, or by a metadata filter) from every
-- version of it: their documents, chunks (text and vectors), keyword postings (the versions' blocks
-- are rebuilt without them, and the word statistics refreshed), the embedding-cache entries of their
-- chunks that no other chunk holds, and their failure records. A tombstone (source id and hashes,
-- never text) keeps later runs from indexing them again; an audit row records the erasure, without
-- content. One transaction, holding the collection's lock (a run of it finishes first). For the
-- owner role: `ragpipe forget` calls it, then VACUUMs the tables so no dead row keeps the text.
CREATE OR REPLACE FUNCTION ragpipe.forget(collection text, source_ids text[] DEFAULT NULL, filter jsonb DEFAULT NULL,
                                          requested_by text DEFAULT NULL)
RETURNS ragpipe.erasures LANGUAGE plpgsql SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    fam text := split_part(collection, '@v', 1);
    versions int[];
    audit ragpipe.erasures;
    cached text[];
    k int;
BEGIN
    IF (source_ids IS NULL) = (filter IS NULL) THEN
        RAISE EXCEPTION 'ragpipe: forget takes source ids or a metadata filter (one of the two)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF filter IS NOT NULL AND (jsonb_typeof(filter) <> 'object' OR filter = '{}') THEN
        RAISE EXCEPTION 'ragpipe: forget''s filter must be a non-empty JSON object (an empty one matches every document)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('ragpipe:' || fam, 0));  -- the collection's lock
    SELECT array_agg(c.id ORDER BY c.id) INTO versions FROM ragpipe.collections c WHERE c.family = fam;
    IF versions IS NULL THEN
        RAISE EXCEPTION 'ragpipe: no collection named %', fam USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO ragpipe.erasures (family, action, requested_by, filter, source_ids, versions)
    VALUES (fam, 'forget', requested_by, filter, coalesce(cardinality(source_ids), 0), cardinality(versions))
    RETURNING * INTO audit;

    CREATE TEMP TABLE forgetting ON COMMIT DROP AS
    SELECT d.id, d.collection_id, d.source_id, d.body_hash AS content_hash FROM ragpipe.documents d
    WHERE d.collection_id = ANY (versions)
      AND (d.source_id = ANY (source_ids) OR d.metadata @> filter);
    CREATE TEMP TABLE forgetting_chunks ON COMMIT DROP AS
    SELECT c.id, c.collection_id, c.document_id, c.content_hash FROM ragpipe.chunks c
    WHERE c.collection_id = ANY (versions) AND c.document_id IN (SELECT f.id FROM forgetting f);

    INSERT INTO ragpipe.forgotten AS t (family, source_id, content_hash, chunk_hashes, erasure_id)
    SELECT fam, s.source_id, (SELECT f.content_hash FROM forgetting f WHERE f.source_id = s.source_id LIMIT 1),
           coalesce((SELECT array_agg(DISTINCT c.content_hash) FROM forgetting_chunks c
                     JOIN forgetting f ON f.id = c.document_id WHERE f.source_id = s.source_id), '{}'), audit.id
    FROM (SELECT f.source_id FROM forgetting f UNION SELECT unnest(source_ids)) s
    ON CONFLICT (family, source_id) DO UPDATE
        SET content_hash = coalesce(excluded.content_hash, t.content_hash),
            chunk_hashes = ARRAY(SELECT DISTINCT unnest(t.chunk_hashes || excluded.chunk_hashes)),
            erasure_id = excluded.erasure_id, forgotten_at = now();

    WITH gone AS (  -- cached vectors of their texts, now and earlier, unless a chunk that stays holds the text
        DELETE FROM ragpipe.embedding_cache e
        WHERE (e.content_hash IN (SELECT c.content_hash FROM forgetting_chunks c)
               OR (e.family = fam AND e.source_id IN (SELECT f.source_id FROM forgetting f UNION SELECT unnest(source_ids))))
          AND NOT EXISTS (SELECT FROM ragpipe.chunks o WHERE o.content_hash = e.content_hash
                          AND o.id NOT IN (SELECT c.id FROM forgetting_chunks c))
        RETURNING e.source_id, e.content_hash)
    SELECT count(*), array_agg(g.content_hash) INTO audit.cache_entries, cached FROM gone g;
    UPDATE ragpipe.forgotten t SET chunk_hashes = ARRAY(SELECT DISTINCT unnest(t.chunk_hashes || cached))
    WHERE t.family = fam AND t.erasure_id = audit.id AND cached IS NOT NULL;
    WITH gone AS (  -- contexts a chat model wrote of their chunks (enrich.context)
        DELETE FROM ragpipe.chunk_contexts x
        WHERE x.family = fam AND x.source_id IN (SELECT f.source_id FROM forgetting f UNION SELECT unnest(source_ids))
        RETURNING 1)
    SELECT audit.cache_entries + count(*) INTO audit.cache_entries FROM gone;
    WITH gone AS (
        DELETE FROM ragpipe.ingest_failures r
        WHERE r.collection_id = ANY (versions)
          AND r.source_id IN (SELECT f.source_id FROM forgetting f UNION SELECT unnest(source_ids))
        RETURNING 1)
    SELECT count(*) INTO audit.failure_records FROM gone;
    DELETE FROM ragpipe.chunks c USING forgetting_chunks g WHERE c.collection_id = g.collection_id AND c.id = g.id;
    DELETE FROM ragpipe.documents d USING forgetting f WHERE d.id = f.id;
    SELECT count(*) INTO audit.documents FROM forgetting;
    SELECT count(*) INTO audit.chunks FROM forgetting_chunks;
    FOR k IN SELECT DISTINCT g.collection_id FROM forgetting_chunks g LOOP
        IF EXISTS (SELECT FROM ragpipe.posting_segments s WHERE s.collection_id = k) THEN
            PERFORM ragpipe.compact_postings(k, true);  -- blocks rebuilt from the chunks that stay
        END IF;
        PERFORM ragpipe.refresh_text_stats(k, NULL, 0);  -- the words' statistics without them
    END LOOP;
    UPDATE ragpipe.erasures e SET documents = audit.documents, chunks = audit.chunks,
                                  cache_entries = audit.cache_entries, failure_records = audit.failure_records
    WHERE e.id = audit.id;
    DROP TABLE forgetting_chunks;
    DROP TABLE forgetting;
    RETURN audit;
END
$fn$;

-- unforget: remove the tombstones of these source ids (all of the collection's with NULL), so the
-- next run indexes them again if the source still holds them; audited. Returns how many were removed.
CREATE OR REPLACE FUNCTION ragpipe.unforget(collection text, source_ids text[] DEFAULT NULL,
                                            requested_by text DEFAULT NULL)
RETURNS int LANGUAGE plpgsql SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    fam text := split_part(collection, '@v', 1);
    removed int;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('ragpipe:' || fam, 0));
    WITH gone AS (DELETE FROM ragpipe.forgotten t
                  WHERE t.family = fam AND (source_ids IS NULL OR t.source_id = ANY (source_ids)) RETURNING 1)
    SELECT count(*) INTO removed FROM gone;
    INSERT INTO ragpipe.erasures (family, action, requested_by, source_ids, documents)
    VALUES (fam, 'undo', requested_by, coalesce(cardinality(source_ids), removed), 0);
    RETURN removed;
END
$fn$;
REVOKE ALL ON FUNCTION ragpipe.forget(text, text[], jsonb, text), ragpipe.unforget(text, text[], text) FROM PUBLIC;
