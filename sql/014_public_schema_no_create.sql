-- 014_public_schema_no_create.sql - only the database owner creates objects
-- in schema public.
--
-- PostgreSQL 15 no longer grants CREATE on schema public to PUBLIC in a new
-- cluster, but a database made by an older version and carried over by
-- pg_upgrade (pg_upgradecluster from Debian 11's PostgreSQL 13, say), or
-- created from a template that still has the old grant, keeps it. aigw_app
-- could then create tables (and own them) and functions in public. A
-- function there whose argument types fit a call better than the built-in
-- one (public.lower(varchar), say) is chosen over pg_catalog's by every
-- session with public in its search_path, the migrations and an
-- administrator's psql as superuser among them, and runs with that
-- session's rights (CVE-2018-1058). aigw creates nothing at run time.
--
-- Idempotent: revoking a privilege that is not granted does nothing.

REVOKE CREATE ON SCHEMA public FROM PUBLIC;
