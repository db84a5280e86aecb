/* test_rls.c - row-level security as the daemon's role: isolation, no bypass;
 * aigw refuses a role that bypasses RLS at start, when PostgreSQL comes up
 * after it, and when the role changes under it */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

static const char *const TABLES[] = {"tenants", "users", "api_keys", "ai_usage_logs", "audit_logs"};
#define N_TABLES (sizeof(TABLES) / sizeof(TABLES[0]))

static void
seed(PGconn *owner, const char *tid)
{
    const char *p[1] = {tid};
    PGresult *r;

    r = tl_sql(owner, true, "INSERT INTO users (tenant_id, email, role) VALUES ($1::uuid, 'u@' || $1::text, 'admin')", 1, p);
    PQclear(r);
    r = tl_sql(owner, true,
               "INSERT INTO api_keys (tenant_id, name, prefix, secret_sha256) "
               "VALUES ($1::uuid, 'k', 'aigw_x', sha256(convert_to($1::text, 'UTF8')))", 1, p);
    PQclear(r);
    r = tl_sql(owner, true,
               "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success) "
               "VALUES (gen_random_uuid(), $1, 'rls-test', '/api/ai/query', 200, true)", 1, p);
    PQclear(r);
    r = tl_sql(owner, true, "INSERT INTO audit_logs (tenant_id, actor, action) VALUES ($1, 'test', 'seed')", 1, p);
    PQclear(r);
}

/* BEGIN, and the transaction-local tenant setting when tenant is not NULL. */
static void
begin_as(PGconn *app, const char *tenant)
{
    const char *p[1] = {tenant};

    PQclear(tl_sql(app, true, "BEGIN", 0, NULL));
    if (tenant != NULL)
        PQclear(tl_sql(app, true, "SELECT set_config('app.current_tenant', $1, true)", 1, p));
}

static long
count_in(PGconn *app, const char *tenant_setting, const char *table, const char *other_id)
{
    char sql[256];
    const char *p[2] = {tenant_setting, other_id};
    long n;
    PGresult *r;

    begin_as(app, tenant_setting);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE %s = $1", table,
             strcmp(table, "tenants") == 0 ? "id" : "tenant_id");
    n = tl_sql_long(app, sql, 1, &p[1]);
    r = tl_sql(app, true, "COMMIT", 0, NULL);
    PQclear(r);
    return n;
}

static void
expect_error(PGconn *c, const char *what, const char *sql, int n, const char *const *params, const char *needle)
{
    PGresult *r = tl_sql(c, false, sql, n, params);
    const char *msg = PQresultErrorMessage(r);

    CHECK(PQresultStatus(r) == PGRES_FATAL_ERROR && strstr(msg, needle) != NULL, "%s: %s", what, msg);
    PQclear(r);
    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        r = tl_sql(c, false, "ROLLBACK", 0, NULL);
        PQclear(r);
    }
}

static void
owner_do(PGconn *owner, const char *stmt)
{
    char *sql = tl_sprintf("DO $$BEGIN EXECUTE format('%s', current_database()); END$$", stmt);

    PQclear(tl_sql(owner, true, sql, 0, NULL));
    free(sql);
}

/* The definer functions (sql/010): a temporary type named like one they
 * use must not take its place. With TEMPORARY granted for the test (aigw
 * revokes it from PUBLIC), aigw_app puts a domain `uuid` in pg_temp whose
 * CHECK escalates the role whenever it runs as anyone else. Without
 * pg_temp last in the functions' search_path, both the resolver's cast and
 * the usage-row trigger's variable ran it as the owner. */
static void
test_definer_shadowing(PGconn *owner, const char *tid, const char *code)
{
    PGconn *app = tl_pg_app(), *app2;
    const char *pc[1] = {code}, *pt[1] = {tid};
    PGresult *r;

    expect_error(app, "a temporary table", "CREATE TEMP TABLE t (x int)", 0, NULL, "permission denied");
    PQfinish(app);

    owner_do(owner, "GRANT TEMPORARY ON DATABASE %I TO aigw_app");
    app2 = tl_pg_app();
    PQclear(tl_sql(app2, true,
                   "CREATE FUNCTION pg_temp.evil(v text) RETURNS boolean LANGUAGE plpgsql AS $f$ BEGIN "
                   "IF current_user <> session_user THEN EXECUTE 'ALTER ROLE aigw_app BYPASSRLS'; END IF; "
                   "RETURN true; END $f$",
                   0, NULL));
    PQclear(tl_sql(app2, true, "CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (pg_temp.evil(VALUE::text))", 0,
                   NULL));
    /* by code and by uuid: only the uuid form runs the function's ::uuid cast */
    r = tl_sql(app2, false, "SELECT aigw_tenant_id($1)::text", 1, pc);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), tid) == 0,
          "the resolver (by code) still answers with a pg_temp.uuid in place: %s", PQresultErrorMessage(r));
    PQclear(r);
    r = tl_sql(app2, false, "SELECT aigw_tenant_id($1)::text", 1, pt);
    CHECK(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), tid) == 0,
          "the resolver (by uuid) still answers with a pg_temp.uuid in place: %s", PQresultErrorMessage(r));
    PQclear(r);
    CHECK(tl_sql_long(owner, "SELECT (rolsuper OR rolbypassrls)::int FROM pg_roles WHERE rolname = 'aigw_app'", 0,
                      NULL) == 0,
          "aigw_app gained nothing through the resolver");
    begin_as(app2, tid);
    r = tl_sql(app2, false,
               "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success) "
               "VALUES (gen_random_uuid(), $1, 'shadow', '/x', 200, true)",
               1, pt);
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK, "a usage row goes in through the trigger: %s",
          PQresultErrorMessage(r));
    PQclear(r);
    PQclear(tl_sql(app2, false, "COMMIT", 0, NULL));
    PQfinish(app2);
    CHECK(tl_sql_long(owner, "SELECT (rolsuper OR rolbypassrls)::int FROM pg_roles WHERE rolname = 'aigw_app'", 0,
                      NULL) == 0,
          "aigw_app gained no superuser or BYPASSRLS through a definer function");
    /* whatever happened, leave the role as it was for the rest of the suite */
    PQclear(tl_sql(owner, true, "ALTER ROLE aigw_app NOSUPERUSER NOBYPASSRLS", 0, NULL));
    owner_do(owner, "REVOKE TEMPORARY ON DATABASE %I FROM aigw_app");
    PQclear(tl_sql(owner, true, "DELETE FROM ai_usage_logs WHERE request_id = 'shadow'", 0, NULL));
}

/* The migrations take CREATE on schema public from PUBLIC (sql/014): a
 * database made before PostgreSQL 15 (or pg_upgrade'd from one) keeps that
 * grant, and aigw_app could create tables it owns and functions that a
 * superuser's session would pick over the built-ins. Played on a scratch
 * database with the old grant, migrated like the stack's. */
static void
test_public_schema_create(PGconn *owner)
{
    const char *owner_url = tl_env("AIGW_DATABASE_OWNER_URL"), *app_url = tl_env("AIGW_DATABASE_URL");
    char *ourl = tl_sprintf("%s%cdbname=aigw_rls_pub", owner_url, strchr(owner_url, '?') != NULL ? '&' : '?');
    char *aurl = tl_sprintf("%s%cdbname=aigw_rls_pub", app_url, strchr(app_url, '?') != NULL ? '&' : '?');
    char *cmd = tl_sprintf("'%s/scripts/migrate.sh' '%s' >/dev/null", AIGW_SOURCE_DIR, ourl);
    PGconn *c;

    PQclear(tl_sql(owner, true, "DROP DATABASE IF EXISTS aigw_rls_pub", 0, NULL));
    PQclear(tl_sql(owner, true, "CREATE DATABASE aigw_rls_pub", 0, NULL));
    c = PQconnectdb(ourl);
    CHECK(PQstatus(c) == CONNECTION_OK, "owner connects to the scratch database: %s", PQerrorMessage(c));
    PQclear(tl_sql(c, true, "GRANT CREATE ON SCHEMA public TO PUBLIC", 0, NULL));
    PQfinish(c);
    CHECK(system(cmd) == 0, "the migrations apply to a database whose public schema PUBLIC may create in");
    c = PQconnectdb(aurl);
    CHECK(PQstatus(c) == CONNECTION_OK, "aigw_app connects to the scratch database: %s", PQerrorMessage(c));
    expect_error(c, "aigw_app creates a table in public", "CREATE TABLE public.mine (x int)", 0, NULL,
                 "permission denied");
    expect_error(c, "aigw_app creates a function in public",
                 "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS 'SELECT ''x'''", 0, NULL,
                 "permission denied");
    PQfinish(c);
    PQclear(tl_sql(owner, false, "DROP DATABASE aigw_rls_pub", 0, NULL));
    free(cmd);
    free(aurl);
    free(ourl);
}

/* aigw refuses a database role that bypasses RLS (the owner, given as
 * database.url by mistake): nothing would isolate the tenants. */
static void
test_refuses_owner_role(void)
{
    struct tl_aigw gw;
    char *url = tl_sprintf("AIGW_DATABASE_URL=%s", tl_env("AIGW_DATABASE_OWNER_URL"));
    const char *env[2] = {url, NULL};
    char *cfg = tl_config_patch("{}"), *log;

    tl_aigw_start_env(&gw, cfg, env); /* may have exited before /healthz was polled */
    CHECK(tl_aigw_wait(&gw, 30000) == 1, "exit 1 with the owner as database.url (%d)", gw.status);
    log = tl_aigw_log(&gw);
    CHECK(log != NULL && strstr(log, "bypasses row-level security") != NULL, "the reason is logged");
    CHECK(log != NULL && strstr(log, "ready: serving") == NULL, "never reported ready");
    free(log);
    tl_aigw_stop(&gw);
    free(cfg);
    free(url);
}


/* aigw's environment with database.url = the application URL as role
 * (malloc'd "AIGW_DATABASE_URL=..."). */
static char *
url_env_as(const char *role)
{
    static const char APP[] = "user=aigw_app";
    const char *url = tl_env("AIGW_DATABASE_URL"), *u = strstr(url, APP);

    CHECK(u != NULL, "the application URL names user=aigw_app: %s", url);
    if (u == NULL)
        return tl_sprintf("AIGW_DATABASE_URL=%s", url);
    return tl_sprintf("AIGW_DATABASE_URL=%.*suser=%s%s", (int)(u - url), url, role, u + strlen(APP));
}

/* The log says why aigw went (role named), and whether it had been ready. */
static void
check_refusal_logged(struct tl_aigw *gw, const char *what, const char *role, bool was_ready)
{
    char *log = tl_aigw_log(gw), *why = tl_sprintf("role %s bypasses row-level security", role);

    CHECK(log != NULL && strstr(log, why) != NULL, "%s: the reason is logged (%s)", what, why);
    CHECK(log != NULL && strstr(log, "shutting down (refused the database role)") != NULL,
          "%s: the exit names the refused role", what);
    CHECK(log != NULL && (strstr(log, "ready: serving") != NULL) == was_ready, "%s: %s", what,
          was_ready ? "it had been ready" : "never reported ready");
    free(why);
    free(log);
}

/* PostgreSQL is down when aigw starts, and comes up with database.url
 * naming a role that bypasses RLS (here the owner): the start-up wait
 * finds it at its next look and aigw exits 1 instead of reporting ready;
 * with startup.dependency_timeout_ms 0 aigw is ready at once, and exits 1
 * as soon as a connection (a /readyz) meets the role. */
static void
test_refuses_role_after_outage(void)
{
    char *url = tl_sprintf("AIGW_DATABASE_URL=%s", tl_env("AIGW_DATABASE_OWNER_URL"));
    const char *env[2] = {url, NULL};
    char *cfg_wait = tl_config_patch("{\"startup\":{\"dependency_timeout_ms\":60000}}");
    char *cfg_now = tl_config_patch("{\"startup\":{\"dependency_timeout_ms\":0}}");
    struct tl_aigw waiting, ready;
    bool w_up = false, r_up = false;
    struct tl_resp r;
    int64_t t0;
    int st;

    if (!tl_stack("pg-stop"))
        goto out;
    w_up = tl_aigw_start_env(&waiting, cfg_wait, env) == 0;
    r_up = tl_aigw_start_env(&ready, cfg_now, env) == 0;
    CHECK(w_up && r_up, "outage: both started with PostgreSQL down (%d %d)", w_up, r_up);
    if (w_up)
        CHECK(tl_aigw_log_wait(&waiting, "startup: waiting for PostgreSQL", 10000), "outage: waits for PostgreSQL");
    if (r_up)
        CHECK(tl_aigw_log_wait(&ready, "ready: serving", 10000), "outage: with no wait, ready at once");
    usleep(1500 * 1000); /* a look or two at the absent PostgreSQL */
    CHECK(!w_up || tl_aigw_wait(&waiting, 0) == -1, "outage: still waiting while PostgreSQL is down");
    CHECK(!r_up || tl_aigw_wait(&ready, 0) == -1, "outage: still serving while PostgreSQL is down");
    if (!tl_stack("pg-start"))
        goto out;
    t0 = aigw_now_ms();
    if (w_up) {
        st = tl_aigw_wait(&waiting, 3000);
        CHECK(st == 1, "outage: the waiting aigw exits 1 within 3 s of PostgreSQL's start (%d after %lld ms)", st,
              (long long)(aigw_now_ms() - t0));
        check_refusal_logged(&waiting, "outage", "postgres", false);
    }
    if (r_up) {
        t0 = aigw_now_ms();
        tl_get(ready.port, "/readyz", NULL, &r);
        CHECK(r.status != 200, "outage: not ready on a connection as the owner (%ld)", r.status);
        tl_resp_free(&r);
        st = tl_aigw_wait(&ready, 3000);
        CHECK(st == 1, "outage: the ready aigw exits 1 within 3 s of meeting the role (%d after %lld ms)", st,
              (long long)(aigw_now_ms() - t0));
        check_refusal_logged(&ready, "outage, no wait", "postgres", true);
    }
out:
    if (w_up)
        tl_aigw_stop(&waiting);
    if (r_up)
        tl_aigw_stop(&ready);
    tl_stack("pg-start"); /* whatever happened (a no-op when it runs) */
    free(cfg_now);
    free(cfg_wait);
    free(url);
}

static void
late_role_sql(PGconn *owner, const char *sql)
{
    PQclear(tl_sql(owner, true, sql, 0, NULL));
}

/* The sessions of aigw_rls_late closed (as a restart of PostgreSQL would):
 * how many there were. */
static long
late_role_kick(PGconn *owner)
{
    return tl_sql_long(owner,
                       "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'aigw_rls_late'",
                       0, NULL);
}

/* A role that may do what aigw_app may (a member, inheriting), whose
 * attributes change under a running aigw: while aigw waits for it (it may
 * not log in yet) it becomes LOGIN and BYPASSRLS; while aigw serves as it,
 * it becomes BYPASSRLS and its connections come back. Either way aigw
 * exits 1 within a few seconds, no request needed, with the reason logged. */
static void
test_refuses_role_changed_later(PGconn *owner, const char *tenant_code)
{
    char *env_url = url_env_as("aigw_rls_late"), *cfg = tl_config_patch("{}"), *tok = tl_token(tenant_code, "admin", 600);
    const char *env[2] = {env_url, NULL};
    struct tl_aigw gw;
    struct tl_resp r;
    int64_t t0;
    int st;

    late_role_kick(owner);
    late_role_sql(owner, "DROP ROLE IF EXISTS aigw_rls_late");
    late_role_sql(owner, "CREATE ROLE aigw_rls_late NOLOGIN NOSUPERUSER NOBYPASSRLS INHERIT IN ROLE aigw_app");

    /* 1) waiting for a role that may not log in yet */
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "late role: aigw did not start");
        goto out;
    }
    CHECK(tl_aigw_log_wait(&gw, "startup: waiting for PostgreSQL", 10000), "late role: waits (NOLOGIN)");
    late_role_sql(owner, "ALTER ROLE aigw_rls_late LOGIN BYPASSRLS");
    t0 = aigw_now_ms();
    st = tl_aigw_wait(&gw, 3000);
    CHECK(st == 1, "late role: exits 1 within 3 s once the role it waits for logs in bypassing RLS (%d after %lld ms)",
          st, (long long)(aigw_now_ms() - t0));
    check_refusal_logged(&gw, "late role", "aigw_rls_late", false);
    tl_aigw_stop(&gw);

    /* 2) serving, then the role is given BYPASSRLS and the sessions return */
    late_role_sql(owner, "ALTER ROLE aigw_rls_late NOBYPASSRLS");
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "late role: aigw did not start as a plain role");
        goto out;
    }
    CHECK(tl_aigw_log_wait(&gw, "ready: serving", 10000), "changed role: ready as a role under RLS");
    tl_get(gw.port, "/api/ai/limits", tok, &r);
    CHECK(r.status == 200, "changed role: serving (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    late_role_sql(owner, "ALTER ROLE aigw_rls_late BYPASSRLS");
    CHECK(late_role_kick(owner) >= 1, "changed role: its sessions closed");
    t0 = aigw_now_ms();
    st = tl_aigw_wait(&gw, 3000);
    CHECK(st == 1, "changed role: exits 1 within 3 s of its connections coming back bypassing RLS (%d after %lld ms)",
          st, (long long)(aigw_now_ms() - t0));
    check_refusal_logged(&gw, "changed role", "aigw_rls_late", true);
    tl_aigw_stop(&gw);
out:
    late_role_kick(owner);
    late_role_sql(owner, "DROP ROLE IF EXISTS aigw_rls_late");
    free(tok);
    free(cfg);
    free(env_url);
}

int
main(void)
{
    PGconn *owner = tl_pg_owner(), *app = tl_pg_app();
    char a[37], acode[65], b[37], bcode[65];
    const char *pa[1], *pb[1], *pab[2];
    PGresult *r;

    tl_create_tenant(owner, "pro", "active", a, acode);
    tl_create_tenant(owner, "pro", "active", b, bcode);
    seed(owner, a);
    seed(owner, b);
    pa[0] = a;
    pb[0] = b;
    pab[0] = a;
    pab[1] = b;

    /* the role itself */
    CHECK(tl_sql_long(app, "SELECT (rolsuper OR rolbypassrls)::int FROM pg_roles WHERE rolname = current_user", 0,
                      NULL) == 0,
          "aigw_app is neither superuser nor BYPASSRLS");
    CHECK(tl_sql_long(app,
                      "SELECT count(*) FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner "
                      "WHERE o.rolname = current_user",
                      0, NULL) == 0,
          "aigw_app owns no relation");
    CHECK(tl_sql_long(owner,
                      "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "WHERE n.nspname = 'public' AND c.relkind IN ('r','p') "
                      "AND (c.relname = 'tenants' OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid "
                      "AND a.attname = 'tenant_id' AND NOT a.attisdropped)) "
                      "AND NOT (c.relrowsecurity AND c.relforcerowsecurity)",
                      0, NULL) == 0,
          "every tenant-owned table has RLS enabled and forced");

    /* one tenant_isolation policy per table, for every role and command,
     * USING = WITH CHECK, the tenant read once per statement (sql/009) */
    CHECK(tl_sql_long(owner,
                      "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND policyname = 'tenant_isolation' "
                      "AND roles = '{public}' AND cmd = 'ALL' AND qual = with_check "
                      "AND qual = '(' || CASE tablename WHEN 'tenants' THEN 'id' ELSE 'tenant_id' END "
                      "|| ' = ( SELECT aigw_current_tenant() AS aigw_current_tenant))'",
                      0, NULL) == (long)N_TABLES,
          "tenant_isolation policies: same expression for USING and WITH CHECK, tenant as an InitPlan");

    /* isolation: tenant A sees its own rows and none of B's */
    for (size_t i = 0; i < N_TABLES; i++) {
        CHECK(count_in(app, a, TABLES[i], a) >= 1, "%s: tenant A sees its own rows", TABLES[i]);
        CHECK(count_in(app, a, TABLES[i], b) == 0, "%s: tenant A sees none of B's rows", TABLES[i]);
        CHECK(count_in(app, NULL, TABLES[i], a) == 0, "%s: no tenant set -> nothing visible", TABLES[i]);
        CHECK(count_in(app, "", TABLES[i], a) == 0, "%s: empty tenant -> nothing visible", TABLES[i]);
    }
    /* after COMMIT the transaction-local setting is gone */
    CHECK(tl_sql_long(app, "SELECT count(*) FROM users", 0, NULL) == 0, "after COMMIT nothing is visible");

    /* writes for B under A are refused */
    begin_as(app, pa[0]);
    expect_error(app, "insert usage row for B under A",
                 "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success) "
                 "VALUES (gen_random_uuid(), $1, 'x', '/x', 200, true)",
                 1, pb, "row-level security");
    /* the writer's shape: many rows in one INSERT ... SELECT, the policy's
     * tenant read once per statement (sql/009); one row of B among A's is
     * enough to refuse the whole statement */
    begin_as(app, pa[0]);
    expect_error(app, "multi-row usage insert with one row of B under A",
                 "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success) "
                 "SELECT gen_random_uuid(), t, 'x', '/x', 200, true "
                 "FROM unnest(ARRAY[$1::uuid, $1::uuid, $2::uuid, $1::uuid]) AS t",
                 2, pab, "row-level security");
    expect_error(app, "multi-row usage insert with no tenant set",
                 "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success) "
                 "SELECT gen_random_uuid(), t, 'x', '/x', 200, true FROM unnest(ARRAY[$1::uuid, $1::uuid]) AS t",
                 1, pa, "row-level security");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE request_id = 'x'", 0, NULL) == 0,
          "no usage row written by the refused inserts");
    begin_as(app, pa[0]);
    expect_error(app, "insert audit row for B under A",
                 "INSERT INTO audit_logs (tenant_id, actor, action) VALUES ($1, 'x', 'x')", 1, pb, "row-level security");
    begin_as(app, pa[0]);
    r = tl_sql(app, true, "UPDATE tenants SET ai_queries_used = 999 WHERE id = $1", 1, pb);
    CHECK(strcmp(PQcmdTuples(r), "0") == 0, "update of B's tenant row under A touches 0 rows");
    PQclear(r);
    r = tl_sql(app, true, "COMMIT", 0, NULL);
    PQclear(r);
    CHECK(tl_sql_long(owner, "SELECT ai_queries_used FROM tenants WHERE id = $1", 1, pb) == 0,
          "B's counter unchanged");
    expect_error(app, "insert with no tenant set",
                 "INSERT INTO audit_logs (tenant_id, actor, action) VALUES ($1, 'x', 'x')", 1, pa,
                 "row-level security");

    /* an API key names a user of its own tenant only (sql/011): a foreign
     * key is checked without RLS, so B's user id under A went in before */
    {
        char *buser = NULL;

        r = tl_sql(owner, true, "SELECT id::text FROM users WHERE tenant_id = $1", 1, pb);
        if (PQntuples(r) == 1)
            buser = strdup(PQgetvalue(r, 0, 0));
        PQclear(r);
        CHECK(buser != NULL, "B has a user");
        if (buser != NULL) {
            const char *pk[2] = {a, buser};

            begin_as(app, pa[0]);
            expect_error(app, "an API key of A naming B's user",
                         "INSERT INTO api_keys (tenant_id, user_id, name, prefix, secret_sha256) "
                         "VALUES ($1, $2, 'k', 'aigw_y', sha256('cross-tenant'::bytea))",
                         2, pk, "api_keys_user_same_tenant_fkey");
            CHECK(tl_sql_long(owner, "SELECT count(*) FROM api_keys WHERE user_id = $1::uuid AND tenant_id = $2", 2,
                              (const char *const[]){buser, a}) == 0,
                  "no key of A names B's user");
            free(buser);
        }
    }

    /* the role cannot switch RLS off or around */
    expect_error(app, "disable RLS", "ALTER TABLE ai_usage_logs DISABLE ROW LEVEL SECURITY", 0, NULL, "owner");
    expect_error(app, "no force", "ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY", 0, NULL, "owner");
    expect_error(app, "drop policy", "DROP POLICY tenant_isolation ON users", 0, NULL, "owner");
    r = tl_sql(app, true, "BEGIN", 0, NULL);
    PQclear(r);
    r = tl_sql(app, true, "SET LOCAL row_security = off", 0, NULL);
    PQclear(r);
    expect_error(app, "row_security off", "SELECT count(*) FROM users", 0, NULL, "row-level security");
    expect_error(app, "set role owner", "SET ROLE postgres", 0, NULL, "permission denied");
    expect_error(app, "grant bypass", "ALTER ROLE aigw_app BYPASSRLS", 0, NULL, "superuser");
    expect_error(app, "delete usage rows", "DELETE FROM ai_usage_logs", 0, NULL, "permission denied");

    /* the resolver reveals only an id for an exact code */
    {
        const char *pc[1] = {acode};

        r = tl_sql(app, true, "SELECT aigw_tenant_id($1)::text", 1, pc);
        CHECK(PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), a) == 0, "aigw_tenant_id(code) -> id");
        PQclear(r);
    }

    test_definer_shadowing(owner, a, acode);
    test_public_schema_create(owner);
    test_refuses_owner_role();
    test_refuses_role_changed_later(owner, acode);
    test_refuses_role_after_outage();
    tl_pg_reconnect(&owner);
    tl_pg_reconnect(&app);

    r = tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1 OR id = $2", 2, pab);
    PQclear(r);
    PQfinish(app);
    PQfinish(owner);
    return tl_done();
}
