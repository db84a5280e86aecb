-- 012_notify_truncate.sql - TRUNCATE tells every aigw instance too.
--
-- The NOTIFY triggers of 004 and 006 are row triggers, and TRUNCATE fires
-- none: keys removed with TRUNCATE api_keys (dropping every key after a
-- leak, say) kept authenticating on every instance until their cache entry
-- expired (api_keys.cache_ttl_s), and tenants removed with TRUNCATE tenants
-- CASCADE stayed served until tenants.cache_ttl_s. A statement trigger sends
-- '*', which empties the whole cache of every listener. (TRUNCATE plans
-- needs CASCADE, which truncates tenants and so fires the tenants trigger.)

CREATE FUNCTION aigw_notify_truncate() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    PERFORM pg_catalog.pg_notify(TG_ARGV[0], '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_truncate AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION aigw_notify_truncate('aigw_api_key_changed');
CREATE TRIGGER tenants_notify_truncate AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION aigw_notify_truncate('aigw_tenant_changed');
