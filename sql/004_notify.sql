-- 004_notify.sql - tell every aigw instance when a tenant or plan changes, so
-- tenant caches are invalidated at once instead of after their TTL.
-- Payload: the tenant id, or '*' when a plan changed (affects many tenants).

CREATE FUNCTION aigw_notify_tenant_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('aigw_tenant_changed', COALESCE(NEW.id, OLD.id)::text);
    ELSE
        PERFORM pg_notify('aigw_tenant_changed', '*');
    END IF;
    RETURN NULL;
END
$$;

-- The usage writer's updates of ai_queries_used must not flush caches.
CREATE TRIGGER tenants_notify AFTER INSERT OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION aigw_notify_tenant_change();
CREATE TRIGGER tenants_notify_update
    AFTER UPDATE OF id, code, name, tier, status, ai_enabled, overrides, cache_ttl_s ON tenants
    FOR EACH ROW EXECUTE FUNCTION aigw_notify_tenant_change();
CREATE TRIGGER plans_notify AFTER INSERT OR UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION aigw_notify_tenant_change();
