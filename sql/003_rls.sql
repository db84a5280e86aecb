-- 003_rls.sql - row-level security, enabled AND forced, on every tenant-owned table.
-- The tenant comes from a transaction-local setting:
--   SELECT set_config('app.current_tenant', $1, true)
-- After COMMIT it reads '' (not NULL), hence NULLIF; with nothing set no row matches.

CREATE FUNCTION aigw_current_tenant() RETURNS uuid
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT NULLIF(current_setting('app.current_tenant', true), '')::uuid $$;

ALTER TABLE tenants       ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants       FORCE ROW LEVEL SECURITY;
ALTER TABLE users         ENABLE ROW LEVEL SECURITY;
ALTER TABLE users         FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys      ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys      FORCE ROW LEVEL SECURITY;
ALTER TABLE ai_usage_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE ai_usage_logs FORCE ROW LEVEL SECURITY;
ALTER TABLE audit_logs    ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_logs    FORCE ROW LEVEL SECURITY;

CREATE POLICY tenant_isolation ON tenants
    USING (id = aigw_current_tenant()) WITH CHECK (id = aigw_current_tenant());
CREATE POLICY tenant_isolation ON users
    USING (tenant_id = aigw_current_tenant()) WITH CHECK (tenant_id = aigw_current_tenant());
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = aigw_current_tenant()) WITH CHECK (tenant_id = aigw_current_tenant());
CREATE POLICY tenant_isolation ON ai_usage_logs
    USING (tenant_id = aigw_current_tenant()) WITH CHECK (tenant_id = aigw_current_tenant());
CREATE POLICY tenant_isolation ON audit_logs
    USING (tenant_id = aigw_current_tenant()) WITH CHECK (tenant_id = aigw_current_tenant());

-- Resolving the JWT's tenant_id claim (uuid or code) to an id must happen
-- before the tenant is known, so it is the one narrow definer function: it
-- reveals an id for an exact code/uuid and nothing else.
CREATE FUNCTION aigw_tenant_id(ref text) RETURNS uuid
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        SELECT t.id FROM public.tenants t
        WHERE t.code = ref
           OR t.id = CASE WHEN ref ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                          THEN ref::uuid END
        LIMIT 1
    $$;
REVOKE ALL ON FUNCTION aigw_tenant_id(text) FROM PUBLIC;

-- Least privilege for the daemon.
GRANT USAGE ON SCHEMA public TO aigw_app;
GRANT SELECT ON plans TO aigw_app;
GRANT SELECT ON tenants TO aigw_app;
GRANT UPDATE (ai_queries_used, ai_queries_month, updated_at) ON tenants TO aigw_app;
GRANT SELECT ON users TO aigw_app;
GRANT SELECT, INSERT ON api_keys TO aigw_app;
GRANT UPDATE (revoked_at, last_used_at) ON api_keys TO aigw_app;
GRANT SELECT, INSERT ON ai_usage_logs TO aigw_app;
GRANT SELECT, INSERT ON audit_logs TO aigw_app;
GRANT EXECUTE ON FUNCTION aigw_current_tenant() TO aigw_app;
GRANT EXECUTE ON FUNCTION aigw_tenant_id(text) TO aigw_app;
