-- 011_api_key_user_tenant.sql - an API key's user belongs to the key's own
-- tenant.
--
-- api_keys.user_id referenced users(id) alone. A foreign key is checked
-- without row-level security, so a tenant-scoped session could store
-- another tenant's user id on its key (aigw's own INSERT takes the id
-- through an RLS-filtered subselect and never did), the constraint error
-- told whether a given user id existed in any tenant, and deleting a user
-- wrote (SET NULL) into the keys of whatever tenant had named it.
--
-- The reference is now (tenant_id, user_id) -> users (tenant_id, id): a key
-- can only name a user of its own tenant. Deleting the user still clears
-- only user_id (the column list of SET NULL, PostgreSQL 15). Keys that
-- named a user of another tenant lose that link first.

-- The tables force row-level security, which binds their owner too: a
-- migration owner that is not superuser (a managed PostgreSQL's admin role)
-- would see no rows, fix none and have the new key validated against none.
-- The policies are lifted for this transaction only. A short lock timeout:
-- these statements lock both tables, and waiting behind a long transaction
-- would hold up every API-key lookup queued behind them.
SET LOCAL lock_timeout = '10s';
ALTER TABLE users NO FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys NO FORCE ROW LEVEL SECURITY;

UPDATE api_keys k SET user_id = NULL
WHERE k.user_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = k.user_id AND u.tenant_id = k.tenant_id);

ALTER TABLE users ADD CONSTRAINT users_tenant_id_id_key UNIQUE (tenant_id, id);
ALTER TABLE api_keys DROP CONSTRAINT IF EXISTS api_keys_user_id_fkey;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_user_same_tenant_fkey
    FOREIGN KEY (tenant_id, user_id) REFERENCES users (tenant_id, id) ON DELETE SET NULL (user_id);

ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
