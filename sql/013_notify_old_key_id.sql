-- 013_notify_old_key_id.sql - an UPDATE that changes an API key's id also
-- names the old id.
--
-- The trigger of 006 sent COALESCE(NEW.id, OLD.id): on UPDATE that is the
-- new id, but every instance caches the record under the id it loaded, the
-- old one. `UPDATE api_keys SET id = ..., revoked_at = now()` (or a new
-- secret, scopes, expiry in the same statement) therefore invalidated
-- nothing, and the key kept authenticating with its old record until
-- api_keys.cache_ttl_s. Now the old id is sent as well when it changed.
--
-- Idempotent: CREATE OR REPLACE keeps the function's owner, privileges and
-- the triggers that use it.

CREATE OR REPLACE FUNCTION aigw_notify_api_key_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
        PERFORM pg_catalog.pg_notify('aigw_api_key_changed', OLD.id::text);
    END IF;
    PERFORM pg_catalog.pg_notify('aigw_api_key_changed', COALESCE(NEW.id, OLD.id)::text);
    RETURN NULL;
END
$$;
