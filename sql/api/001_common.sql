-- What every search function shares (applied first: the SQL functions of the files after it check
-- their calls when they are made): a collection by name, and the checks of k, weights and embeddings.

CREATE OR REPLACE FUNCTION ragpipe.get_collection(collection text)
RETURNS ragpipe.collections
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = ragpipe, public, pg_temp
AS $fn$
DECLARE
    coll ragpipe.collections;
BEGIN
    SELECT * INTO coll FROM ragpipe.collections c WHERE c.name = get_collection.collection;
    IF NOT FOUND THEN  -- `family@vN` names version N even while it is the active one (a pinned read)
        SELECT * INTO coll FROM ragpipe.collections c
        WHERE ragpipe.version_name(c.family, c.version) = get_collection.collection;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'ragpipe: unknown collection "%"', collection
            USING ERRCODE = 'undefined_object', HINT = 'SELECT collection FROM ragpipe.collection_stats';
    END IF;
    RETURN coll;
END
$fn$;

-- Argument checks shared by the search functions: a NULL or out-of-range k, a NULL embedding or a
-- NaN weight is an error that says what to pass, never "the whole collection" or NaN scores.
CREATE OR REPLACE FUNCTION ragpipe.checked(name text, value double precision,
    low double precision DEFAULT '-Infinity', high double precision DEFAULT 'Infinity') RETURNS double precision
LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
    IF value IS NULL OR value IN ('NaN', 'Infinity', '-Infinity') OR value < low OR value > high THEN
        RAISE EXCEPTION 'ragpipe: % must be %, got %', name,
            CASE WHEN low = '-Infinity' AND high = 'Infinity' THEN 'a finite number'
                 ELSE format('between %s and %s', low, high) END,
            coalesce(value::text, 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN value;
END
$fn$;

CREATE OR REPLACE FUNCTION ragpipe.checked_k(k int, max_k int DEFAULT 10000) RETURNS int
LANGUAGE sql IMMUTABLE AS $fn$ SELECT ragpipe.checked('k', k, 1, max_k)::int $fn$;
