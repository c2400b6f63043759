-- A text search configuration per chunk: the collection's language (collections.yml `language`,
-- default english) or its document's own (metadata `language`, one of the collection's `languages`).
-- Each chunk's tsvector is made in that language; existing chunks stay english, as they were made.
ALTER TABLE ragpipe.chunks ADD COLUMN language regconfig NOT NULL DEFAULT 'english';

DO $mig$
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        ALTER TABLE ragpipe.chunks ALTER COLUMN tsv SET EXPRESSION AS (to_tsvector(language, text));
    ELSE  -- PostgreSQL 16 and older cannot change a generated column's expression: make it again
        ALTER TABLE ragpipe.chunks DROP COLUMN tsv;
        ALTER TABLE ragpipe.chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector(language, text)) STORED;
        CREATE INDEX chunks_tsv_idx ON ragpipe.chunks USING gin (tsv);
    END IF;
END
$mig$;
