-- 008_usage_tenant_check.sql - ai_usage_logs.tenant_id checked once per
-- statement instead of once per row.
--
-- The foreign key ai_usage_logs.tenant_id -> tenants(id) ON DELETE CASCADE
-- ran its check trigger for every inserted row: an SPI query
-- `SELECT 1 FROM tenants WHERE id = $1 FOR KEY SHARE`, executor start-up
-- included. Measured on the usage writer's own statement (500 cache-hit rows
-- of one tenant per statement): ~34,000 of its ~109,000 instructions per row
-- in PostgreSQL, about 4 us of CPU per row, the largest single item after the
-- heap and index inserts. Every request writes one row, so it was paid on the
-- hottest write path.
--
-- The same guarantees, with triggers instead of the constraint:
--
--   * No usage row for a tenant that does not exist. A statement-level
--     trigger on INSERT and UPDATE of ai_usage_logs takes, for each distinct
--     tenant_id among the statement's new rows (the writer's statement has
--     one), the same lock the foreign key took: the tenant row FOR KEY SHARE,
--     held to the end of the transaction. A missing tenant raises
--     foreign_key_violation (23503), as the constraint did, so the usage
--     writer handles it as before (retries the batch row by row and moves
--     the rows of a tenant that is gone to rejected.jsonl). It holds for
--     every role and path that writes the table, not only the writer.
--   * Deleting a tenant deletes its usage rows: a row trigger AFTER DELETE
--     on tenants. Changing a tenant's id while usage rows refer to it is
--     refused (the constraint's NO ACTION), and TRUNCATE tenants (only
--     possible with CASCADE) truncates ai_usage_logs too.
--   * No race with a concurrent DELETE. The DELETE needs the tenant row
--     FOR UPDATE, which conflicts with FOR KEY SHARE: it waits until a
--     transaction that inserted rows for the tenant has committed, and its
--     trigger's DELETE then runs with a new snapshot that sees those rows.
--     An insert that comes after the DELETE took the row waits for it; once
--     the DELETE has committed the lock finds no row and the insert fails.
--     The cascade trigger needs that fresh snapshot, i.e. READ COMMITTED
--     (the default): under REPEATABLE READ or SERIALIZABLE it would miss rows
--     committed after the transaction's snapshot, so deleting a tenant (or
--     changing its id) there raises an error instead.
--
-- ai_usage_logs has RLS forced, for its owner too, so the tenant-side
-- function sees the tenant's rows as that tenant: it sets
-- app.current_tenant for the duration of the call and puts the caller's value
-- back (not with a SET clause on the function: for a placeholder setting
-- that needs a superuser at CREATE time). All are SECURITY DEFINER with a fixed
-- search_path, like the lookups in 003 and 006: they work whatever the
-- privileges of the role that inserts or deletes, as the foreign key's own
-- triggers did. Trigger functions cannot be called directly.
--
-- Idempotent: CREATE OR REPLACE, DROP TRIGGER IF EXISTS, and the foreign key
-- is looked up in the catalog (whatever its name) and dropped if present.
-- The constraint held until now, so existing rows all have their tenant; the
-- triggers are created before the constraint goes, in this one transaction.

SET LOCAL client_min_messages = warning; -- DROP TRIGGER IF EXISTS notices on a first run

CREATE OR REPLACE FUNCTION aigw_usage_tenant_exists() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    tid uuid;
BEGIN
    FOR tid IN SELECT DISTINCT n.tenant_id FROM new_rows n LOOP
        PERFORM 1 FROM public.tenants t WHERE t.id = tid FOR KEY SHARE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'insert or update on table "ai_usage_logs": tenant % does not exist', tid
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION aigw_usage_tenant_exists() FROM PUBLIC;

-- A trigger with transition tables may have only one event.
DROP TRIGGER IF EXISTS ai_usage_logs_tenant_exists_ins ON ai_usage_logs;
CREATE TRIGGER ai_usage_logs_tenant_exists_ins AFTER INSERT ON ai_usage_logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION aigw_usage_tenant_exists();
DROP TRIGGER IF EXISTS ai_usage_logs_tenant_exists_upd ON ai_usage_logs;
CREATE TRIGGER ai_usage_logs_tenant_exists_upd AFTER UPDATE ON ai_usage_logs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION aigw_usage_tenant_exists();

CREATE OR REPLACE FUNCTION aigw_tenant_usage_rows() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
DECLARE
    caller_tenant text := current_setting('app.current_tenant', true);
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'a tenant can only be deleted or get a new id in a READ COMMITTED transaction'
            USING ERRCODE = 'feature_not_supported',
                  DETAIL = 'Its usage rows are deleted (or looked for) with a fresh snapshot, so that rows '
                           'committed by a concurrent insert are not missed.';
    END IF;
    PERFORM set_config('app.current_tenant', OLD.id::text, true); -- RLS is forced, for the owner too
    IF TG_OP = 'DELETE' THEN
        DELETE FROM public.ai_usage_logs WHERE tenant_id = OLD.id;
    ELSIF EXISTS (SELECT 1 FROM public.ai_usage_logs WHERE tenant_id = OLD.id) THEN
        RAISE EXCEPTION 'update on table "tenants": usage rows in "ai_usage_logs" still refer to tenant %', OLD.id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    PERFORM set_config('app.current_tenant', COALESCE(caller_tenant, ''), true);
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION aigw_tenant_usage_rows() FROM PUBLIC;

DROP TRIGGER IF EXISTS tenants_usage_delete ON tenants;
CREATE TRIGGER tenants_usage_delete AFTER DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION aigw_tenant_usage_rows();
DROP TRIGGER IF EXISTS tenants_usage_new_id ON tenants;
CREATE TRIGGER tenants_usage_new_id AFTER UPDATE OF id ON tenants
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION aigw_tenant_usage_rows();

CREATE OR REPLACE FUNCTION aigw_tenants_truncated() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, public
    AS $$
BEGIN
    TRUNCATE public.ai_usage_logs;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION aigw_tenants_truncated() FROM PUBLIC;

DROP TRIGGER IF EXISTS tenants_usage_truncate ON tenants;
CREATE TRIGGER tenants_usage_truncate AFTER TRUNCATE ON tenants
    FOR EACH STATEMENT EXECUTE FUNCTION aigw_tenants_truncated();

DO $$
DECLARE
    c record;
BEGIN
    FOR c IN SELECT conname FROM pg_catalog.pg_constraint
             WHERE conrelid = 'public.ai_usage_logs'::regclass AND contype = 'f'
               AND confrelid = 'public.tenants'::regclass LOOP
        EXECUTE format('ALTER TABLE public.ai_usage_logs DROP CONSTRAINT %I', c.conname);
    END LOOP;
END
$$;
