-- 016_notify_key_revoked.sql - a key revoked or deleted in SQL gets the
-- Redis revocation marker too.
--
-- DELETE /api/v1/api-keys/{id} sets the marker aigw:{tenant}:kr:<id>, which
-- every request made with a key reads (inside the admission script, or one
-- EXISTS), so an instance refuses the key even while its cache still holds
-- the record. A key revoked or deleted directly in SQL got no marker: an
-- instance whose listener was not connected at that moment (PostgreSQL
-- refused its reconnect, a network cut that the heartbeat had not noticed
-- yet) kept accepting the key from its cache for up to
-- api_keys.cache_ttl_s (an hour at most).
--
-- The trigger now also sends the key's tenant and id on a second channel,
-- aigw_api_key_revoked ("<tenant id>:<key id>"), when the identity the
-- caches hold stops authenticating: the row is deleted, revoked_at is set
-- where it was NULL, or its id or tenant changes (the old identity is
-- named). Every aigw that hears it looks the key up (any session may
-- NOTIFY any channel: a forged notice must not shut out an active key) and,
-- when it is revoked or gone, sets the marker, so one instance with a live
-- listener is enough for all of them. The payload of
-- aigw_api_key_changed is unchanged: an older aigw ignores the new channel.
--
-- Idempotent: CREATE OR REPLACE keeps the function's owner, privileges and
-- the triggers that use it (006: AFTER DELETE, and AFTER UPDATE OF the
-- columns that matter, revoked_at, id and tenant_id among them).

CREATE OR REPLACE FUNCTION aigw_notify_api_key_change() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, public, pg_temp
    AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.id IS DISTINCT FROM NEW.id THEN
        PERFORM pg_catalog.pg_notify('aigw_api_key_changed', OLD.id::text);
    END IF;
    PERFORM pg_catalog.pg_notify('aigw_api_key_changed', COALESCE(NEW.id, OLD.id)::text);
    IF TG_OP = 'DELETE'
       OR (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
       OR OLD.id IS DISTINCT FROM NEW.id
       OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id THEN
        PERFORM pg_catalog.pg_notify('aigw_api_key_revoked', OLD.tenant_id::text || ':' || OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;
