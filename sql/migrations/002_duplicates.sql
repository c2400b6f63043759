-- Duplicate documents (the same content under another name) are recorded, not indexed twice;
-- failures are recorded once per run and document, so a retried batch does not count them again.
ALTER TABLE ragpipe.documents ADD COLUMN body_hash text;
CREATE INDEX documents_body_hash_idx ON ragpipe.documents (collection_id, body_hash);
ALTER TABLE ragpipe.ingest_runs ADD COLUMN duplicates int NOT NULL DEFAULT 0;
-- Documents the run will delete at the end (gone from a complete listing): not originals of duplicates.
ALTER TABLE ragpipe.ingest_runs ADD COLUMN leaving text[] NOT NULL DEFAULT '{}';

DELETE FROM ragpipe.ingest_failures a USING ragpipe.ingest_failures b
WHERE a.run_id = b.run_id AND a.source_id = b.source_id AND a.id > b.id;
CREATE UNIQUE INDEX ingest_failures_run_source_idx ON ragpipe.ingest_failures (run_id, source_id);
DROP INDEX ragpipe.ingest_failures_run_idx;
