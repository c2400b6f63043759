-- Written chunk context (collections.yml `enrich: {context: ...}`): a chat model's sentence or two
-- situating each chunk in its document, stored beside the chunk's text (which stays the document's
-- own, as search results and RAG context show it) and part of the chunk's keyword text.
-- Changing the tsvector's expression rewrites ragpipe.chunks once (PostgreSQL recomputes it).
ALTER TABLE ragpipe.chunks ADD COLUMN context text;

DO $mig$
BEGIN
    IF current_setting('server_version_num')::int >= 170000 THEN
        ALTER TABLE ragpipe.chunks ALTER COLUMN tsv SET EXPRESSION AS
            (to_tsvector(language, CASE WHEN context IS NULL THEN text ELSE context || E'\n' || text END));
    ELSE  -- PostgreSQL 16 and older cannot change a generated column's expression: make it again
        ALTER TABLE ragpipe.chunks DROP COLUMN tsv;
        ALTER TABLE ragpipe.chunks ADD COLUMN tsv tsvector GENERATED ALWAYS AS
            (to_tsvector(language, CASE WHEN context IS NULL THEN text ELSE context || E'\n' || text END)) STORED;
    END IF;
END
$mig$;

-- Written contexts by what they were written from (document body, chunk, model, prompt, budgets:
-- a hash), so an unchanged chunk never asks the model again; the document they came from, so that
-- `ragpipe forget` removes them too.
CREATE TABLE ragpipe.chunk_contexts (
    key         text PRIMARY KEY,
    family      text NOT NULL,
    source_id   text NOT NULL,
    context     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chunk_contexts_origin_idx ON ragpipe.chunk_contexts (family, source_id);

-- What a run spent at the chat model that wrote the contexts (reported, and estimated where the
-- endpoint reported no usage), apart from the embedder's tokens.
ALTER TABLE ragpipe.ingest_runs ADD COLUMN context_tokens bigint NOT NULL DEFAULT 0,
                                ADD COLUMN context_tokens_estimated bigint NOT NULL DEFAULT 0;

DO $$
DECLARE
    r name;
BEGIN  -- loader roles granted before this migration (ragpipe.grant_loader grants it from now on)
    FOR r IN SELECT DISTINCT grantee FROM information_schema.table_privileges
             WHERE table_schema = 'ragpipe' AND table_name = 'documents' AND privilege_type = 'INSERT'
               AND grantee NOT IN (current_user, 'PUBLIC') LOOP
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON ragpipe.chunk_contexts TO %I', r);
    END LOOP;
END
$$;
