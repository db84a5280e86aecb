-- 010_definer_search_path.sql - the definer functions look in pg_temp last,
-- and the application role can no longer create temporary objects.
--
-- A SECURITY DEFINER function runs with its owner's rights (the migration
-- owner, a superuser on a default install). 003, 006 and 008 gave theirs
-- `SET search_path = pg_catalog, public`, but a path that does not name
-- pg_temp has it searched FIRST for tables and types. Any role allowed
-- TEMPORARY on the database (PUBLIC is, by default) could create a temporary
-- domain named `uuid` whose CHECK calls its own function; the `::uuid` cast
-- in aigw_tenant_id, or the `uuid` variable of the usage-row trigger, then
-- resolved to that domain and ran the function as the owner (ALTER ROLE
-- aigw_app SUPERUSER BYPASSRLS, say). Naming pg_temp last closes that:
-- pg_catalog and public win for every name, and pg_temp is never searched
-- for functions or operators anyway.
--
-- Second line: aigw uses no temporary tables, so the database's TEMPORARY
-- privilege goes from PUBLIC (roles that need it can be granted it by name).
--
-- aigw_current_tenant() is no definer function (it runs as its caller and
-- is inlined into the policies, which a SET clause would prevent); it is
-- written schema-qualified so that its meaning no longer depends on the
-- caller's search_path either.
--
-- Idempotent: ALTER FUNCTION ... SET, CREATE OR REPLACE and REVOKE can run
-- again.

ALTER FUNCTION aigw_tenant_id(text) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION aigw_api_key_lookup(bytea) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION aigw_usage_tenant_exists() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION aigw_tenant_usage_rows() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION aigw_tenants_truncated() SET search_path = pg_catalog, public, pg_temp;

CREATE OR REPLACE FUNCTION aigw_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(pg_catalog.current_setting('app.current_tenant', true), '')::pg_catalog.uuid $$;

DO $$
BEGIN
    EXECUTE pg_catalog.format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', pg_catalog.current_database());
END
$$;
