-- A collection's runs by id: its last run and its last successful one (ragpipe status, the
-- pipeline metrics of every collection at each scrape, collection_stats) are found through this
-- index instead of a scan of every run of every collection.
CREATE INDEX IF NOT EXISTS ingest_runs_collection_idx ON ragpipe.ingest_runs (collection_id, id);
