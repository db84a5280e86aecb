-- 006_api_keys.sql - API key authentication: the lookup that runs before the
-- tenant is known, and cache invalidation on every aigw instance.

-- Authentication hashes the presented key and asks for the one row with that
-- SHA-256. Under RLS no row is visible before the tenant is known, so this is
-- a narrow definer function like aigw_tenant_id(): given the exact hash of a
-- key (256 random bits: unguessable) it returns what authentication needs
-- and nothing else (no name, no prefix, no hash). The unique index on
-- secret_sha256 makes the lookup an index probe, not a comparison loop.
CREATE FUNCTION aigw_api_key_lookup(sha bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, scopes text[], requests_per_minute integer,
                   expires_at timestamptz, revoked boolean)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
        SELECT k.id, k.tenant_id, k.scopes, k.requests_per_minute, k.expires_at, k.revoked_at IS NOT NULL
        FROM public.api_keys k
        WHERE k.secret_sha256 = sha
    $$;
REVOKE ALL ON FUNCTION aigw_api_key_lookup(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION aigw_api_key_lookup(bytea) TO aigw_app;

-- Every instance caches key records; a change that matters to
-- authentication tells them all (payload: the key id). last_used_at, which
-- aigw itself updates in batches, does not flush anything.
CREATE FUNCTION aigw_notify_api_key_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('aigw_api_key_changed', COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_notify_delete AFTER DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION aigw_notify_api_key_change();
CREATE TRIGGER api_keys_notify_update
    AFTER UPDATE OF id, tenant_id, secret_sha256, scopes, requests_per_minute, expires_at, revoked_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION aigw_notify_api_key_change();

-- Listing is keyset-paginated newest first within a tenant.
CREATE INDEX api_keys_tenant_created_idx ON api_keys (tenant_id, created_at DESC, id DESC);
