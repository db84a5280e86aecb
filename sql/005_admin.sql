-- 005_admin.sql - platform administration (tenants, plans, billing usage) and
-- the indexes behind the admin reads.
--
-- Privilege model
-- ---------------
-- The daemon logs in as aigw_app: it owns nothing, cannot bypass RLS, and in
-- a tenant's transaction sees and writes only that tenant's rows. Platform
-- routes need more: list every tenant, insert a new one, change a tenant's
-- plan and status. Those rights live in a separate role, aigw_platform:
--
--   * NOLOGIN, NOBYPASSRLS: nobody connects as it, and RLS stays enabled and
--     forced on every table for it too. It sees other tenants' rows only
--     through one explicit permissive policy on `tenants` (platform_admin
--     below); it gets no policy and no privilege on users, api_keys or
--     ai_usage_logs at all.
--   * aigw_app is a member but NOINHERIT, so membership grants nothing by
--     itself: the privileges apply only after an explicit
--     `SET LOCAL ROLE aigw_platform`, which lasts until the end of that one
--     transaction (safe on pooled connections and behind PgBouncer in
--     transaction mode). aigw issues it only in platform-admin transactions,
--     after the token was verified by a platform key (src/api/admin.c).
--   * Column-level grants: it may set name, tier, status, ai_enabled,
--     overrides and cache_ttl_s, never ai_queries_used (the usage writer's)
--     nor the id or code of an existing tenant; it cannot delete anything.
--   * Audit rows it writes still pass the per-tenant policy of audit_logs:
--     the transaction sets app.current_tenant to the tenant it changes.
--
-- Reads of one tenant (GET /api/v1/tenants/{id}, its billing usage) need no
-- extra right: they run as aigw_app scoped to that tenant, like any request.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'aigw_platform') THEN
        CREATE ROLE aigw_platform NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
            NOINHERIT;
    END IF;
END
$$;
ALTER ROLE aigw_platform NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
-- Membership must not turn into inherited privileges.
ALTER ROLE aigw_app NOINHERIT;
GRANT aigw_platform TO aigw_app;

GRANT USAGE ON SCHEMA public TO aigw_platform;
GRANT SELECT ON plans TO aigw_platform;
GRANT SELECT ON tenants TO aigw_platform;
GRANT INSERT (id, code, name, tier, status, ai_enabled, overrides, cache_ttl_s) ON tenants TO aigw_platform;
GRANT UPDATE (name, tier, status, ai_enabled, overrides, cache_ttl_s, updated_at) ON tenants TO aigw_platform;
GRANT INSERT ON audit_logs TO aigw_platform;
GRANT EXECUTE ON FUNCTION aigw_current_tenant() TO aigw_platform;
GRANT EXECUTE ON FUNCTION aigw_tenant_id(text) TO aigw_platform;

CREATE POLICY platform_admin ON tenants TO aigw_platform USING (true) WITH CHECK (true);

-- Billing usage: one tenant, one month, aggregated over every row. The
-- covering index answers it with an index-only scan (the table is
-- append-only, so autovacuum keeps the visibility map set) instead of one
-- heap fetch per row; it includes response_ms so GET /api/ai/usage is
-- index-only too. It has the same key as ai_usage_logs_tenant_time_idx,
-- which it replaces (one index less to maintain per inserted row).
-- On a large production table build it beforehand with CREATE INDEX
-- CONCURRENTLY (this runner wraps each file in a transaction).
CREATE INDEX IF NOT EXISTS ai_usage_logs_billing_idx ON ai_usage_logs (tenant_id, created_at)
    INCLUDE (query_type, billed, from_cache, success, status_code, prompt_tokens, completion_tokens, response_ms);
DROP INDEX IF EXISTS ai_usage_logs_tenant_time_idx;
