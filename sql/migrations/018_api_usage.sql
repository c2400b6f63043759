-- What a run spent at an API embedder: the tokens its endpoint reported in each answer's `usage`,
-- and those estimated (text length / 3) where an endpoint reported none.
ALTER TABLE ragpipe.ingest_runs ADD COLUMN api_tokens bigint NOT NULL DEFAULT 0,
                                ADD COLUMN api_tokens_estimated bigint NOT NULL DEFAULT 0;
