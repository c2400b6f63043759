-- Runs once when the pgvector container's data directory is created: a database for the vectors.
CREATE ROLE ragpipe LOGIN PASSWORD 'ragpipe';
CREATE DATABASE ragpipe OWNER ragpipe;
\connect ragpipe
CREATE EXTENSION IF NOT EXISTS vector;
