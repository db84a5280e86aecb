-- 001_roles.sql - the login role the daemon uses: owns nothing, no superuser, no BYPASSRLS.
-- Roles are cluster-wide, so create them only when missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'aigw_app') THEN
        CREATE ROLE aigw_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
    END IF;
END
$$;
-- Never trust an existing role blindly: make sure it cannot bypass RLS.
ALTER ROLE aigw_app NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION;
