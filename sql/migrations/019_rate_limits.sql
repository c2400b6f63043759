-- Shared rate limits of API endpoints (embeddings, rerank, chat): one row per endpoint and key, the
-- theoretical arrival time of the next request and of the next token (epoch seconds, GCRA), shared by
-- every process that calls the endpoint (CLI runs, DAG tasks on any worker, the service, watch).
CREATE TABLE ragpipe.rate_limits (
    bucket      text PRIMARY KEY,   -- endpoint URL and a hash of the key (never the key)
    request_tat double precision NOT NULL DEFAULT 0,
    token_tat   double precision NOT NULL DEFAULT 0
);
