-- 009_rls_once_per_statement.sql - the tenant policies read the tenant
-- setting once per statement instead of once per row.
--
-- The policies of 003 compare each row with aigw_current_tenant(), a STABLE
-- SQL function that PostgreSQL inlines into the expression
-- NULLIF(current_setting('app.current_tenant', true), '')::uuid and then
-- evaluates for every row the policy looks at: a settings lookup by name, a
-- string comparison and a text-to-uuid conversion each time. On the usage
-- writer's statement (500 cache-hit rows of one tenant per INSERT) the WITH
-- CHECK alone was ~4.7k of its ~77k backend instructions per row.
--
-- Written as a scalar subquery, (SELECT aigw_current_tenant()), the value
-- becomes an InitPlan: computed once when the statement first needs it and
-- then compared as a parameter, row after row. The policies mean the same:
-- same name, same roles (PUBLIC, as created in 003), same USING and WITH
-- CHECK for every command, RLS still enabled and forced (untouched here). The
-- only difference would show in a statement that changes app.current_tenant
-- while it runs and expects its own later rows to be judged by the new value;
-- aigw sets the tenant in a statement of its own before the one it scopes,
-- and the tenant-delete trigger of 008 sets it for statements of its own
-- (each with its own InitPlan). A subquery returning NULL (no tenant set, or
-- '') matches no row, as before.
--
-- The platform role's policy on tenants (005) is not tenant-scoped and stays.
--
-- Idempotent: ALTER POLICY only replaces the expressions.

ALTER POLICY tenant_isolation ON tenants
    USING (id = (SELECT aigw_current_tenant())) WITH CHECK (id = (SELECT aigw_current_tenant()));
ALTER POLICY tenant_isolation ON users
    USING (tenant_id = (SELECT aigw_current_tenant())) WITH CHECK (tenant_id = (SELECT aigw_current_tenant()));
ALTER POLICY tenant_isolation ON api_keys
    USING (tenant_id = (SELECT aigw_current_tenant())) WITH CHECK (tenant_id = (SELECT aigw_current_tenant()));
ALTER POLICY tenant_isolation ON ai_usage_logs
    USING (tenant_id = (SELECT aigw_current_tenant())) WITH CHECK (tenant_id = (SELECT aigw_current_tenant()));
ALTER POLICY tenant_isolation ON audit_logs
    USING (tenant_id = (SELECT aigw_current_tenant())) WITH CHECK (tenant_id = (SELECT aigw_current_tenant()));
