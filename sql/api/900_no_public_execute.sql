-- Applied last: PostgreSQL lets PUBLIC execute every new function, and the search functions are
-- SECURITY DEFINER, so any role with USAGE on the schema (a tenant role, say) could read every
-- collection through them. Only the roles granted above may execute them.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ragpipe FROM PUBLIC;
