-- Exact top-k BM25 (ragpipe.keyword_search, sql/api/010_search.sql) reads each query word's postings
-- best impact first and needs each posting's exact BM25 part, tf and len, without a visit to the
-- heap or a second probe: the word index now carries them (12 bytes a posting more).
CREATE INDEX postings_word_scores_idx ON ragpipe.postings (collection_id, lexeme, impact DESC) INCLUDE (chunk_id, tf, len);
DROP INDEX ragpipe.postings_word_idx;
