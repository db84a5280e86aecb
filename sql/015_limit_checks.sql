-- 015_limit_checks.sql - the database refuses a per-minute limit or a
-- monthly quota that cannot work, as the API does.
--
-- The API checks every limit it writes, but plans, tenant overrides and API
-- keys are also edited in SQL. plans.requests_per_minute (> 0),
-- plans.monthly_query_limit (>= -1, -1 = unlimited), plans.max_tokens (> 0)
-- and api_keys.requests_per_minute (> 0 or NULL) have had CHECKs since 002.
-- tenants.overrides, a JSON object, had none: an UPDATE could set
-- {"requests_per_minute": 0}, and every request of the tenant was refused
-- 429 with "Retry-After: 1", for ever (each retry refused again); a negative
-- monthly_query_limit other than -1 lifted the quota; a string made the
-- tenant's ::int read fail, a 503 on every request.
--
-- Each key of overrides, when present, must now be a JSON integer (not a
-- string, a fraction or null: aigw reads it as an integer) with the API's
-- lower bound (src/api/tenants.c), up to the integer column's maximum:
--   monthly_query_limit  -1..2147483647
--   requests_per_minute   1..2147483647
--   max_tokens            1..2147483647
-- The upper bounds are the ones of the plans columns, not the API's
-- tighter ones (1000000 for the last two): a larger value works, and one
-- set in SQL on purpose (bench/run.sh gives its tenant 100000000 requests
-- per minute, out of the load's reach) is not for this migration to refuse.
-- Other keys are left alone (aigw reads only these three; the API refuses
-- others, but one written in SQL breaks nothing). api_keys needs nothing:
-- its requests_per_minute is NULL or > 0 since 002, as the API's 1..100000.
--
-- Existing rows: the constraints are added VALID, that is checked against
-- every row now. NOT VALID + VALIDATE would buy nothing here: the runner
-- wraps the file in one transaction, so the ACCESS EXCLUSIVE lock of the
-- ADD is held until COMMIT either way, and tenants holds one row per
-- tenant (the scan is quick). NOT VALID alone would leave in place
-- exactly the rows this is about. So a row that breaks a constraint makes
-- the migration fail, with nothing applied: the block below names those
-- rows first (fix them, e.g. UPDATE tenants SET overrides = overrides -
-- 'requests_per_minute' WHERE code = '...', and run migrate.sh again). A
-- migration owner that is not superuser sees no rows through the forced RLS
-- and gets PostgreSQL's own "violated by some row" error instead: the
-- constraint check itself reads every row.
--
-- Idempotent: each constraint is dropped if present, then added.

SET LOCAL lock_timeout = '10s';
SET LOCAL client_min_messages = warning; -- no NOTICE for each DROP ... IF EXISTS of a first run

DO $$
DECLARE
    bad text;
BEGIN
    SELECT string_agg(format('tenant %s: overrides %s', t.code, t.overrides), '; ' ORDER BY t.code) INTO bad
    FROM public.tenants t
    WHERE EXISTS (
        SELECT 1 FROM (VALUES ('monthly_query_limit', -1), ('requests_per_minute', 1), ('max_tokens', 1)) AS k(key, lo)
        WHERE t.overrides ? k.key
          AND CASE WHEN jsonb_typeof(t.overrides -> k.key) <> 'number' THEN true
                   WHEN (t.overrides ->> k.key) !~ '^-?[0-9]{1,10}$' THEN true
                   ELSE (t.overrides ->> k.key)::bigint NOT BETWEEN k.lo AND 2147483647 END);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'tenants with overrides that cannot work: %', bad
            USING HINT = 'monthly_query_limit must be an integer in -1..2147483647, requests_per_minute and max_tokens '
                         'in 1..2147483647; fix or remove those keys, then run the migration again';
    END IF;
END
$$;

ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_overrides_monthly_query_limit_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_overrides_monthly_query_limit_check CHECK (
    CASE WHEN NOT overrides ? 'monthly_query_limit' THEN true
         WHEN jsonb_typeof(overrides -> 'monthly_query_limit') <> 'number' THEN false
         WHEN (overrides ->> 'monthly_query_limit') !~ '^-?[0-9]{1,10}$' THEN false
         ELSE (overrides ->> 'monthly_query_limit')::bigint BETWEEN -1 AND 2147483647 END);

ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_overrides_requests_per_minute_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_overrides_requests_per_minute_check CHECK (
    CASE WHEN NOT overrides ? 'requests_per_minute' THEN true
         WHEN jsonb_typeof(overrides -> 'requests_per_minute') <> 'number' THEN false
         WHEN (overrides ->> 'requests_per_minute') !~ '^-?[0-9]{1,10}$' THEN false
         ELSE (overrides ->> 'requests_per_minute')::bigint BETWEEN 1 AND 2147483647 END);

ALTER TABLE tenants DROP CONSTRAINT IF EXISTS tenants_overrides_max_tokens_check;
ALTER TABLE tenants ADD CONSTRAINT tenants_overrides_max_tokens_check CHECK (
    CASE WHEN NOT overrides ? 'max_tokens' THEN true
         WHEN jsonb_typeof(overrides -> 'max_tokens') <> 'number' THEN false
         WHEN (overrides ->> 'max_tokens') !~ '^-?[0-9]{1,10}$' THEN false
         ELSE (overrides ->> 'max_tokens')::bigint BETWEEN 1 AND 2147483647 END);
