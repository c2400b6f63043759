-- Credentials in an embedding endpoint's base_url (https://user:password@host/v1) were stored with
-- the collection, readable by ragpipe_reader through collection_stats: they are removed. The key
-- belongs in api_key_env or an Airflow connection (collections.yml now refuses such a base_url).
UPDATE ragpipe.collections
SET settings = jsonb_set(settings, '{embedder,base_url}',
                         to_jsonb(regexp_replace(settings #>> '{embedder,base_url}', '://[^/?#]*@', '://')))
WHERE settings #>> '{embedder,base_url}' ~ '://[^/?#]*@';
