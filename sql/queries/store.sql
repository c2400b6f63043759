-- Statements used by pipelines/store.py. Parameters are bound (%s / %(name)s), never formatted in.

-- name: upsert_collection
-- A new collection is version 1 of its family, active at once.
INSERT INTO ragpipe.collections (name, family, model, dimension, chunk_tokens, chunk_overlap, settings, promoted_at)
VALUES (%(name)s, %(name)s, %(model)s, %(dimension)s, %(chunk_tokens)s, %(chunk_overlap)s, %(settings)s, now())
ON CONFLICT (name) DO NOTHING;

-- name: create_version
-- The family's next version, to be built beside the active one (sql/migrations/007_versions.sql).
INSERT INTO ragpipe.collections (name, family, version, state, model, dimension, chunk_tokens, chunk_overlap, settings)
SELECT ragpipe.version_name(%(family)s, v), %(family)s, v, 'building', %(model)s, %(dimension)s, %(chunk_tokens)s,
       %(chunk_overlap)s, %(settings)s
FROM (SELECT max(version) + 1 AS v FROM ragpipe.collections WHERE family = %(family)s) n
RETURNING name;

-- name: versions
SELECT k.id, k.name, k.model, k.dimension, k.chunk_tokens, k.chunk_overlap, k.settings, k.family, k.version,
       k.state, k.evaluation, k.created_at, k.promoted_at,
       (SELECT count(*) FROM ragpipe.documents d WHERE d.collection_id = k.id) AS documents,
       (SELECT count(*) FROM ragpipe.chunks c WHERE c.collection_id = k.id) AS chunks
FROM ragpipe.collections k WHERE k.family = %s ORDER BY k.version;

-- name: set_version_state
UPDATE ragpipe.collections SET state = %(state)s, evaluation = coalesce(%(evaluation)s, evaluation)
WHERE id = %(id)s AND state <> 'active';

-- name: set_evaluation
UPDATE ragpipe.collections SET evaluation = %(evaluation)s WHERE id = %(id)s;

-- name: promote_version
SELECT ragpipe.promote_version(%s, %s);

-- name: rollback_version
SELECT ragpipe.rollback_version(%s);

-- name: cache_vectors_of_collection
-- Before a version is dropped: its vectors go to the embedding cache, unless another collection
-- of the same model still holds the same text.
INSERT INTO ragpipe.embedding_cache AS e (model, content_hash, embedding, family, source_id)
SELECT DISTINCT ON (c.content_hash) k.model, c.content_hash, c.embedding, k.family, d.source_id
FROM ragpipe.chunks c JOIN ragpipe.collections k ON k.id = c.collection_id JOIN ragpipe.documents d ON d.id = c.document_id
WHERE c.collection_id = %(id)s AND c.embedding IS NOT NULL  -- full vectors only (not a halfvec collection's)
  AND NOT EXISTS (SELECT FROM ragpipe.chunks o JOIN ragpipe.collections ok ON ok.id = o.collection_id
                  WHERE o.content_hash = c.content_hash AND ok.model = k.model AND o.collection_id <> c.collection_id)
ON CONFLICT (model, content_hash) DO UPDATE
    SET used_at = now(), family = excluded.family, source_id = excluded.source_id;

-- name: drop_version
DELETE FROM ragpipe.collections WHERE id = %s AND state <> 'active';

-- name: prune_cache
-- The embedding cache's retention: entries unused for max_age, then the least recently used
-- beyond max_rows.
WITH old AS (DELETE FROM ragpipe.embedding_cache WHERE used_at < now() - %(max_age_days)s * interval '1 day'
             RETURNING 1),
     excess AS (DELETE FROM ragpipe.embedding_cache e
                WHERE (e.model, e.content_hash) IN (SELECT model, content_hash FROM ragpipe.embedding_cache
                                                    ORDER BY used_at DESC OFFSET %(max_rows)s)
                RETURNING 1)
SELECT (SELECT count(*) FROM old) + (SELECT count(*) FROM excess);

-- name: count_cache
SELECT count(*) FROM ragpipe.embedding_cache;

-- name: forgotten_ids
-- The source ids `ragpipe forget` tombstoned in a collection: no run indexes them again.
SELECT source_id FROM ragpipe.forgotten WHERE family = %s;

-- name: lock_collection_creation
-- Creating a collection creates and attaches its chunks partition; two creations at once would
-- deadlock on the partition DDL's locks, so they take turns (held until the transaction ends).
SELECT pg_advisory_xact_lock(hashtextextended('ragpipe:create-collection', 0));

-- name: get_collection
-- By its name, or by `family@vN` (names version N, active or not).
SELECT id, name, model, dimension, chunk_tokens, chunk_overlap, settings, family, version, state
FROM ragpipe.collections WHERE %s IN (name, ragpipe.version_name(family, version));

-- name: update_collection_settings
UPDATE ragpipe.collections
SET chunk_tokens = %(chunk_tokens)s, chunk_overlap = %(chunk_overlap)s, settings = %(settings)s, updated_at = now()
WHERE id = %(id)s;

-- name: lock_collection
SELECT pg_advisory_lock(hashtextextended('ragpipe:' || %s, 0));

-- name: lock_collection_shared
SELECT pg_advisory_lock_shared(hashtextextended('ragpipe:' || %s, 0));

-- name: unlock_collection
SELECT pg_advisory_unlock(hashtextextended('ragpipe:' || %s, 0));

-- name: unlock_collection_shared
SELECT pg_advisory_unlock_shared(hashtextextended('ragpipe:' || %s, 0));

-- name: abandon_runs
-- Runs left 'running' by a process that died. Called while holding the collection's exclusive
-- lock: no CLI run of it is alive then (CLI runs hold the lock throughout), and Airflow allows one
-- active DAG run per collection, so an older Airflow run still marked running is dead too.
UPDATE ragpipe.ingest_runs
SET status = 'failed', error = 'abandoned: the process running it stopped before finishing',
    finished_at = clock_timestamp()
WHERE collection_id = %s AND status = 'running' AND trigger = ANY(%s);

-- name: start_run
INSERT INTO ragpipe.ingest_runs (collection_id, trigger) VALUES (%s, %s) RETURNING id;

-- name: set_plan_counts
UPDATE ragpipe.ingest_runs
SET listing_complete = %(complete)s, listed = %(listed)s, unchanged = %(unchanged)s, leaving = %(leaving)s
WHERE id = %(run_id)s;

-- name: add_run_counts
UPDATE ragpipe.ingest_runs
SET new = new + %(new)s, changed = changed + %(changed)s, unchanged = unchanged + %(unchanged)s,
    failed = failed + %(failed)s, deleted = deleted + %(deleted)s, duplicates = duplicates + %(duplicates)s,
    chunks_embedded = chunks_embedded + %(chunks_embedded)s, chunks_reused = chunks_reused + %(chunks_reused)s,
    api_tokens = api_tokens + %(api_tokens)s, api_tokens_estimated = api_tokens_estimated + %(api_tokens_estimated)s,
    context_tokens = context_tokens + %(context_tokens)s,
    context_tokens_estimated = context_tokens_estimated + %(context_tokens_estimated)s
WHERE id = %(run_id)s;

-- name: run_failed_everything
SELECT failed > 0 AND new = 0 AND changed = 0 AND unchanged = 0 AND duplicates = 0
FROM ragpipe.ingest_runs WHERE id = %s;

-- name: finish_run
UPDATE ragpipe.ingest_runs
SET status = %(status)s, error = %(error)s, seconds = extract(epoch FROM clock_timestamp() - started_at),
    finished_at = clock_timestamp()
WHERE id = %(run_id)s
RETURNING id, status, listing_complete, listed, new, changed, unchanged, deleted, failed, duplicates,
          chunks_embedded, chunks_reused, api_tokens, api_tokens_estimated, context_tokens, context_tokens_estimated,
          seconds;

-- name: document_fingerprints
SELECT source_id, fingerprint FROM ragpipe.documents WHERE collection_id = %s;

-- name: document_hashes
SELECT source_id, content_hash, run_id, fingerprint FROM ragpipe.documents
WHERE collection_id = %s AND source_id = ANY(%s);

-- name: touch_documents
UPDATE ragpipe.documents d SET fingerprint = t.fingerprint, run_id = %s
FROM unnest(%s::text[], %s::text[]) AS t(source_id, fingerprint)
WHERE d.collection_id = %s AND d.source_id = t.source_id;

-- name: cached_embeddings
-- Vectors of these chunk texts embedded by the same model at the same width (a truncated vector
-- never serves a full-size version): in any collection or version, or kept in the embedding cache
-- after they left (then marked used, for its retention).
WITH stored AS (  -- a halfvec collection's vectors are 2-byte: only another of its kind reuses them
    SELECT DISTINCT ON (c.content_hash) c.content_hash, ragpipe.vector_of(c.embedding, c.embedding_half) AS embedding
    FROM ragpipe.chunks c JOIN ragpipe.collections k ON k.id = c.collection_id
    WHERE k.model = %(model)s AND k.dimension = %(dimension)s AND c.content_hash = ANY(%(hashes)s)
      AND vector_dims(ragpipe.vector_of(c.embedding, c.embedding_half)) = %(dimension)s
      AND (c.embedding_half IS NULL OR %(half)s)),
cached AS (
    UPDATE ragpipe.embedding_cache e SET used_at = now()
    WHERE e.model = %(model)s AND vector_dims(e.embedding) = %(dimension)s AND e.content_hash = ANY(%(hashes)s)
      AND e.content_hash NOT IN (SELECT content_hash FROM stored)
    RETURNING e.content_hash, e.embedding)
SELECT * FROM stored UNION ALL SELECT * FROM cached;

-- name: delete_chunks_of
-- The chunks of documents being replaced or deleted; their vectors go to the embedding cache.
WITH gone AS (
    DELETE FROM ragpipe.chunks c USING ragpipe.documents d
    WHERE c.collection_id = %(collection_id)s AND c.document_id = d.id
      AND d.collection_id = %(collection_id)s AND d.source_id = ANY(%(source_ids)s)
    RETURNING c.id, c.content_hash, ragpipe.vector_of(c.embedding, c.embedding_half) AS embedding, c.embedding_half,
              d.source_id),
masked AS (  -- postings already in blocks are skipped by searches until a compaction drops them
    INSERT INTO ragpipe.dead_chunks (collection_id, chunk_id)
    SELECT %(collection_id)s, g.id FROM gone g
    WHERE g.id <= (SELECT coalesce(max(s.upto), 0) FROM ragpipe.posting_segments s
                   WHERE s.collection_id = %(collection_id)s)
    ON CONFLICT DO NOTHING)
INSERT INTO ragpipe.embedding_cache AS e (model, content_hash, embedding, family, source_id)
SELECT DISTINCT ON (content_hash) %(model)s, content_hash, embedding,
       (SELECT k.family FROM ragpipe.collections k WHERE k.id = %(collection_id)s), source_id FROM gone
WHERE embedding_half IS NULL  -- the cache keeps full vectors only: a float32 collection must never reuse 2-byte ones
ON CONFLICT (model, content_hash) DO UPDATE
    SET used_at = now(), family = excluded.family, source_id = excluded.source_id;

-- name: upsert_documents
INSERT INTO ragpipe.documents AS d
    (collection_id, run_id, source_id, uri, title, content_hash, fingerprint, metadata, chunk_count, body_hash)
SELECT %s, %s, * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::jsonb[], %s::int[],
                             %s::text[])
ON CONFLICT (collection_id, source_id) DO UPDATE
SET uri = excluded.uri, title = excluded.title, content_hash = excluded.content_hash, body_hash = excluded.body_hash,
    fingerprint = excluded.fingerprint, metadata = excluded.metadata, chunk_count = excluded.chunk_count,
    run_id = excluded.run_id, updated_at = now()
RETURNING d.source_id, d.id;

-- name: copy_chunks
COPY ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, char_start, char_end,
                     heading_path, content_hash, metadata, embedding, embedding_half, language, context)
FROM STDIN (FORMAT BINARY);

-- name: run_wrote
SELECT new + changed + deleted > 0 FROM ragpipe.ingest_runs WHERE id = %s;

-- name: row_security_active
SELECT row_security_active('ragpipe.chunks');

-- name: create_chunk_stage
CREATE TEMP TABLE IF NOT EXISTS ragpipe_chunk_stage (
    collection_id int, document_id bigint, ordinal int, text text, token_count int, char_start int,
    char_end int, heading_path text[], content_hash text, metadata jsonb, embedding vector, embedding_half halfvec,
    language regconfig, context text
) ON COMMIT DELETE ROWS;

-- name: copy_chunk_stage
COPY ragpipe_chunk_stage FROM STDIN (FORMAT BINARY);

-- name: insert_chunk_stage
INSERT INTO ragpipe.chunks (collection_id, document_id, ordinal, text, token_count, char_start, char_end,
                           heading_path, content_hash, metadata, embedding, embedding_half, language, context)
SELECT * FROM ragpipe_chunk_stage;

-- name: language_oids
-- The text search configurations of these names that the database has (regconfig's oid: COPY sends it).
SELECT cfgname, oid::int8 FROM pg_ts_config WHERE cfgname = ANY(%s);

-- name: record_failure
INSERT INTO ragpipe.ingest_failures (run_id, collection_id, source_id, uri, stage, error)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (run_id, source_id) DO NOTHING
RETURNING id;

-- name: lock_bodies
-- One lock per (collection, body hash), taken in a fixed order so that two loads never deadlock;
-- the (int, int) keys do not overlap the bigint keys of the collection and migration locks.
SELECT count(pg_advisory_xact_lock(%s, hashtext(b)))
FROM (SELECT DISTINCT b FROM unnest(%s::text[]) AS b ORDER BY b) AS bodies;

-- name: duplicates_of
-- (source_id, the first other document with the same content) for the documents that copy one
SELECT DISTINCT ON (x.source_id) x.source_id, d.source_id
FROM unnest(%(source_ids)s::text[], %(body_hashes)s::text[]) AS x (source_id, body_hash)
JOIN ragpipe.documents d ON d.collection_id = %(collection_id)s AND d.body_hash = x.body_hash
                         AND d.source_id <> x.source_id
  -- not a document this run deletes, or replaces and has not yet rewritten (its stored text is going away)
WHERE NOT EXISTS (SELECT FROM ragpipe.ingest_runs r WHERE r.id = %(run_id)s AND d.source_id = ANY (r.leaving)
                  AND d.run_id IS DISTINCT FROM r.id)
ORDER BY x.source_id, d.source_id;

-- name: delete_documents
DELETE FROM ragpipe.documents WHERE collection_id = %s AND source_id = ANY(%s);

-- name: count_chunks
SELECT count(*) FROM ragpipe.chunks WHERE collection_id = %s;

-- name: build_hnsw_index
SELECT * FROM ragpipe.build_hnsw_index(%s);

-- name: collection_partitions
SELECT ragpipe.chunk_partition(%(id)s), ragpipe.blocks_partition(%(id)s);

-- name: analyze_collection
SELECT ragpipe.analyze_collection(%s);

-- name: refresh_text_stats
SELECT ragpipe.refresh_text_stats(%(collection)s, %(run)s, %(min_change)s);

-- name: set_index_settings
UPDATE ragpipe.collections
SET settings = settings || jsonb_build_object('index', coalesce(settings -> 'index', '{}') || %s::jsonb)
WHERE id = %s;

-- name: refresh_impacts
SELECT ragpipe.refresh_impacts(%(collection)s);

-- name: compact_postings
SELECT ragpipe.compact_postings(%s, %s);

-- name: cached_contexts
SELECT key, context FROM ragpipe.chunk_contexts WHERE key = ANY(%s);

-- name: cache_context
INSERT INTO ragpipe.chunk_contexts (key, family, source_id, context) VALUES (%s, %s, %s, %s)
ON CONFLICT (key) DO NOTHING;
