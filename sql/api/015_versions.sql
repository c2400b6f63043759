-- Collection versions (sql/migrations/007_versions.sql): the active version has the family's name,
-- the others `family@vN`. Promotion and rollback rename rows in one transaction, so a search
-- (one statement, one snapshot) reads either the old version or the new one, never a mix, and
-- never nothing. Not SECURITY DEFINER: the caller needs UPDATE on ragpipe.collections (loaders).

CREATE OR REPLACE FUNCTION ragpipe.version_name(family text, version int) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$ SELECT family || '@v' || version $fn$;

-- Make `version` of `family` the active one; the version it replaces becomes 'previous' (kept for
-- rollback until pruned). Returns the version that was active before.
CREATE OR REPLACE FUNCTION ragpipe.promote_version(family text, version int) RETURNS int
LANGUAGE plpgsql SET search_path = ragpipe, public, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    target ragpipe.collections;
    current ragpipe.collections;
BEGIN
    PERFORM 1 FROM ragpipe.collections c WHERE c.family = promote_version.family ORDER BY c.id FOR UPDATE;
    SELECT * INTO target FROM ragpipe.collections c
    WHERE c.family = promote_version.family AND c.version = promote_version.version;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpipe: collection "%" has no version %', family, version
            USING ERRCODE = 'undefined_object', HINT = 'ragpipe versions ' || family;
    END IF;
    IF target.state = 'building' THEN
        RAISE EXCEPTION 'ragpipe: version % of "%" is still being built', version, family
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'run the ingest again to finish it';
    END IF;
    SELECT * INTO current FROM ragpipe.collections c WHERE c.family = promote_version.family AND c.state = 'active';
    IF current.id = target.id THEN
        RETURN current.version;
    END IF;
    UPDATE ragpipe.collections c SET name = ragpipe.version_name(c.family, c.version), state = 'previous'
    WHERE c.id = current.id;
    UPDATE ragpipe.collections c SET name = c.family, state = 'active', promoted_at = clock_timestamp()
    WHERE c.id = target.id;
    RETURN current.version;
END
$fn$;

-- Go back to the version that was active before the current one; the current one becomes
-- 'rejected', so later runs keep it in step but do not promote it again on their own.
CREATE OR REPLACE FUNCTION ragpipe.rollback_version(family text) RETURNS int
LANGUAGE plpgsql SET search_path = ragpipe, public, pg_temp AS $fn$
#variable_conflict use_column
DECLARE
    current ragpipe.collections;
    before ragpipe.collections;
BEGIN
    PERFORM 1 FROM ragpipe.collections c WHERE c.family = rollback_version.family ORDER BY c.id FOR UPDATE;
    SELECT * INTO current FROM ragpipe.collections c WHERE c.family = rollback_version.family AND c.state = 'active';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpipe: unknown collection "%"', family USING ERRCODE = 'undefined_object';
    END IF;
    SELECT * INTO before FROM ragpipe.collections c
    WHERE c.family = rollback_version.family AND c.state = 'previous'
    ORDER BY c.promoted_at DESC NULLS LAST, c.version DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpipe: collection "%" has no previous version to roll back to', family
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'ragpipe versions ' || family;
    END IF;
    PERFORM ragpipe.promote_version(family, before.version);
    UPDATE ragpipe.collections c SET state = 'rejected' WHERE c.id = current.id;
    RETURN before.version;
END
$fn$;

DO $$
DECLARE
    r name;
BEGIN  -- roles that may write collections may switch their versions
    FOR r IN SELECT grantee FROM information_schema.role_table_grants
             WHERE table_schema = 'ragpipe' AND table_name = 'collections' AND privilege_type = 'UPDATE'
               AND grantee NOT IN (SELECT tableowner FROM pg_tables WHERE schemaname = 'ragpipe' AND tablename = 'collections')
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION ragpipe.promote_version(text, int), '
                       'ragpipe.rollback_version(text), ragpipe.version_name(text, int) TO %I', r);
    END LOOP;
END
$$;
