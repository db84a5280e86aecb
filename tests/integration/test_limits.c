/* test_limits.c - GET /api/ai/limits per demo tenant, quota rebuild, NOTIFY-driven plan changes (also
 * with aigw behind PgBouncer and its listener on database.listen_url) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

static int port;

static void
get_limits(const char *tenant, struct tl_resp *r)
{
    char *tok = tl_token(tenant, "optician", 600);

    tl_get(port, "/api/ai/limits", tok, r);
    free(tok);
}

static void
check_plan(const char *tenant, const char *tier, long limit, long rpm, long max_tokens, const char *on,
           const char *off)
{
    struct tl_resp r;
    char buf[64], path[64], resets[32];

    get_limits(tenant, &r);
    CHECK(r.status == 200, "%s: status %ld %s", tenant, r.status, r.body);
    CHECK(tl_json_str(&r, "tenant", buf, sizeof(buf)) && strcmp(buf, tenant) == 0, "%s: tenant code", tenant);
    CHECK(tl_json_str(&r, "tier", buf, sizeof(buf)) && strcmp(buf, tier) == 0, "%s: tier %s", tenant, buf);
    CHECK(tl_json_int(&r, "monthly_limit", -99) == limit, "%s: monthly_limit", tenant);
    CHECK(tl_json_int(&r, "requests_per_minute", -99) == rpm, "%s: requests_per_minute", tenant);
    CHECK(tl_json_int(&r, "max_tokens", -99) == max_tokens, "%s: max_tokens", tenant);
    if (limit < 0)
        CHECK(tl_json_int(&r, "remaining", -99) == -1, "%s: unlimited remaining is -1", tenant);
    else
        CHECK(tl_json_int(&r, "remaining", -99) == limit - tl_json_int(&r, "used", 0), "%s: remaining", tenant);
    snprintf(path, sizeof(path), "features.%s", on);
    CHECK(tl_json_str(&r, path, buf, sizeof(buf)) && strcmp(buf, "true") == 0, "%s: %s enabled", tenant, on);
    if (off != NULL) {
        snprintf(path, sizeof(path), "features.%s", off);
        CHECK(tl_json_str(&r, path, buf, sizeof(buf)) && strcmp(buf, "false") == 0, "%s: %s disabled", tenant, off);
    }
    aigw_rfc3339(aigw_next_month_start(aigw_wall_s()), resets);
    CHECK(tl_json_str(&r, "period_resets_at", buf, sizeof(buf)) && strcmp(buf, resets) == 0,
          "%s: period_resets_at %s", tenant, buf);
    tl_resp_free(&r);
}

/* Poll until the tenant's tier reads want (NOTIFY is asynchronous). */
static bool
wait_for(const char *tenant, const char *field, const char *want_str, long want_int)
{
    for (int i = 0; i < 40; i++) {
        struct tl_resp r;
        char buf[64];
        bool ok;

        get_limits(tenant, &r);
        ok = want_str ? tl_json_str(&r, field, buf, sizeof(buf)) && strcmp(buf, want_str) == 0
                      : tl_json_int(&r, field, -99) == want_int;
        tl_resp_free(&r);
        if (ok)
            return true;
        usleep(50 * 1000);
    }
    return false;
}

/* aigw behind PgBouncer in transaction mode: requests and their usage rows
 * go through the pooler, and with database.listen_url pointing at
 * PostgreSQL itself the listener keeps a session of its own, so a plan
 * change still shows on the next requests (the tenant cache TTL is an hour).
 * Without listen_url its LISTEN would run in a pooled session and the
 * change would wait for the TTL. */
static void
test_behind_pgbouncer(PGconn *owner)
{
    char dir[] = "/tmp/aigw-pgbouncer-XXXXXX", tid[37], tcode[65], *cfg, *envs[2], *url;
    const char *env[2], *p[1] = {tid};
    struct tl_aigw gw;
    struct tl_resp r;
    int saved = port, bport;
    PGresult *q;

    if (mkdtemp(dir) == NULL) {
        CHECK(false, "mkdtemp");
        return;
    }
    bport = tl_pgbouncer_start(dir, 4);
    if (bport == 0)
        goto out;
    url = tl_sprintf("postgresql://aigw_app@127.0.0.1:%d/aigw", bport);
    envs[0] = tl_sprintf("AIGW_DATABASE_URL=%s", url);
    envs[1] = NULL;
    env[0] = envs[0];
    env[1] = NULL;
    cfg = tl_sprintf("{\"tenants\":{\"cache_ttl_s\":3600},\"database\":{\"listen_url\":\"%s\"}}",
                     tl_env("AIGW_DATABASE_URL"));
    {
        char *patched = tl_config_patch(cfg);

        free(cfg);
        cfg = patched;
    }
    tl_create_tenant(owner, "standard", "active", tid, tcode);
    if (tl_aigw_start_env(&gw, cfg, env) == 0) {
        /* logged once PostgreSQL and Redis answer, which can be after /healthz does */
        CHECK(tl_aigw_log_wait(&gw, "statement_timeout is 0 and lock_timeout 0", 10000),
              "behind pgbouncer (options dropped): start-up warns that statements run without timeouts");
        port = gw.port;
        check_plan(tcode, "standard", 100, 10, 300, "knowledge", "sales");
        q = tl_sql(owner, true, "UPDATE tenants SET tier = 'pro' WHERE id = $1", 1, p);
        PQclear(q);
        CHECK(wait_for(tcode, "tier", "pro", 0), "behind pgbouncer: the tier change arrives by NOTIFY");
        get_limits(tcode, &r);
        CHECK(r.status == 200, "behind pgbouncer: requests answered (%ld)", r.status);
        tl_resp_free(&r);
        CHECK(tl_aigw_stop(&gw) == 0, "behind pgbouncer: clean exit");
    } else {
        CHECK(false, "aigw starts with database.url through pgbouncer");
    }
    port = saved;
    q = tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p);
    PQclear(q);
    free(cfg);
    free(envs[0]);
    free(url);
out:
    tl_pgbouncer_stop(dir);
    CHECK(tl_rm_rf(dir), "%s removed", dir);
}

/* A limit lowered below what the window already holds (an override at
 * runtime): the window still has 8 admissions, 5 from 50 s ago and 3 from
 * 10 s ago, against a new limit of 3. The next request is refused with
 * nothing left (r=0, never negative), and told to come back when the
 * window really holds fewer than 3, i.e. once the 10 s old bucket leaves
 * (~51 s), not when the oldest one does (~11 s: refused again then). */
static void
test_limit_lowered(PGconn *owner)
{
    char tid[37], tcode[65], buf[128], *tok;
    const char *p[1] = {tid};
    long long now, t;
    struct tl_resp r;

    tl_create_tenant(owner, "standard", "active", tid, tcode);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 3}' WHERE id = $1", 1, p));
    CHECK(wait_for(tcode, "requests_per_minute", NULL, 3), "lowered limit: override applied");
    now = (long long)time(NULL);
    tl_redis_int("HSET aigw:{%s}:rlb n 8 lo %lld %lld 5 %lld 3", tid, now - 50, now - 50, now - 10);
    tl_redis_int("PEXPIRE aigw:{%s}:rlb 70000", tid);
    tok = tl_token(tcode, "optician", 600);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"How do I clean my lenses?\"}", &r);
    tl_expect("lowered limit: refused", &r, 429, "rate_limited");
    CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) && strncmp(buf, "\"minute\";r=0;t=", 15) == 0,
          "lowered limit: nothing left, not a negative count: %s", buf);
    t = strtoll(buf + 15, NULL, 10);
    CHECK(t >= 48 && t <= 53, "lowered limit: t until the window holds fewer than 3 (~51 s): %lld", t);
    CHECK(tl_resp_header(&r, "Retry-After", buf, sizeof(buf)) && strtoll(buf, NULL, 10) == t,
          "lowered limit: Retry-After = t: %s", buf);
    CHECK(tl_resp_header(&r, "x-should-retry", buf, sizeof(buf)) == NULL,
          "rate_limited is for retrying after Retry-After: no x-should-retry");
    CHECK(tl_json_int(&r, "error.retry_after", -1) == t && tl_json_int(&r, "error.limit", -1) == 3,
          "lowered limit: retry_after and limit in the body: %s", r.body);
    tl_resp_free(&r);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", tid) == 8, "lowered limit: the refusal is not counted");
    free(tok);
    PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
}

/* SQL that must be refused with a CHECK violation (SQLSTATE 23514). */
static bool
refused(PGconn *owner, const char *sql, int n, const char *const *params)
{
    PGresult *r = tl_sql(owner, false, sql, n, params);
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    bool yes = PQresultStatus(r) == PGRES_FATAL_ERROR && state != NULL && strcmp(state, "23514") == 0;

    PQclear(r);
    return yes;
}

/* Drop (want NULL) or put back a CHECK constraint of table by name; the
 * definition to put back is returned by the drop (malloc'd, NULL if absent). */
static char *
constraint(PGconn *owner, const char *table, const char *name, const char *def)
{
    const char *p[1] = {name};
    PGresult *r;
    char *sql, *out = NULL;

    if (def != NULL) {
        sql = tl_sprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", table, name, def);
        PQclear(tl_sql(owner, true, sql, 0, NULL));
        free(sql);
        return NULL;
    }
    r = tl_sql(owner, true, "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = $1", 1, p);
    if (PQntuples(r) == 1)
        out = tl_sprintf("%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    sql = tl_sprintf("ALTER TABLE %s DROP CONSTRAINT IF EXISTS %s", table, name);
    PQclear(tl_sql(owner, true, sql, 0, NULL));
    free(sql);
    return out;
}

static int
count_in_log(const struct tl_aigw *gw, const char *needle)
{
    char *log = tl_aigw_log(gw);
    int n = 0;

    for (const char *p = log; p != NULL && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    free(log);
    return n;
}

/* A per-minute limit or monthly quota that cannot work, written in SQL
 * (the API refuses it): tenants.overrides had no constraint, and
 * {"requests_per_minute": 0} refused every request of the tenant 429 with
 * "Retry-After: 1" for ever. The database refuses it now (sql/015); plans
 * and API keys refused theirs already; values that work are still taken.
 * One written before the constraints (dropped here to write it) is
 * ignored by aigw, the plan's value applies, logged once per value; a plan
 * whose own value cannot work fails its tenants' requests 503 rather than
 * 429 for ever. */
static void
test_impossible_limits(PGconn *owner, const struct tl_aigw *gw)
{
    static const char *const bad[] = {
        "{\"requests_per_minute\": 0}",     "{\"requests_per_minute\": -5}",  "{\"requests_per_minute\": \"60\"}",
        "{\"requests_per_minute\": 1.5}",   "{\"requests_per_minute\": null}", "{\"requests_per_minute\": 2147483648}",
        "{\"requests_per_minute\": [60]}",  "{\"monthly_query_limit\": -2}",  "{\"monthly_query_limit\": \"all\"}",
        "{\"max_tokens\": 0}",              "{\"max_tokens\": -1}",
    };
    static const char *const good[] = {
        "{\"requests_per_minute\": 1}",  "{\"requests_per_minute\": 100000000}", "{\"monthly_query_limit\": -1}",
        "{\"monthly_query_limit\": 0}",  "{\"monthly_query_limit\": 2147483647}", "{\"max_tokens\": 1}",
        "{\"note\": \"kept\"}",         "{}",
    };
    char tid[37], tcode[65], *tok, *def_rpm, *def_mql, *def_plan;
    const char *p[2] = {tid, NULL};
    struct tl_resp r;

    tl_create_tenant(owner, "standard", "active", tid, tcode);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        p[1] = bad[i];
        CHECK(refused(owner, "UPDATE tenants SET overrides = $2::jsonb WHERE id = $1", 2, p),
              "impossible limits: overrides %s refused by the database", bad[i]);
    }
    CHECK(refused(owner, "INSERT INTO tenants (code, name, tier, overrides) VALUES ('limits_bad_1', 'x', 'standard', $1)",
                  1, &bad[0]),
          "impossible limits: a new tenant with %s refused", bad[0]);
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        PGresult *q;

        p[1] = good[i];
        q = tl_sql(owner, false, "UPDATE tenants SET overrides = $2::jsonb WHERE id = $1", 2, p);
        CHECK(PQresultStatus(q) == PGRES_COMMAND_OK, "impossible limits: overrides %s still taken: %s", good[i],
              PQresultErrorMessage(q));
        PQclear(q);
    }
    CHECK(refused(owner, "UPDATE plans SET requests_per_minute = 0 WHERE tier = 'standard'", 0, NULL),
          "impossible limits: a plan's requests_per_minute 0 refused");
    CHECK(refused(owner, "UPDATE plans SET monthly_query_limit = -2 WHERE tier = 'standard'", 0, NULL),
          "impossible limits: a plan's monthly_query_limit -2 refused");
    CHECK(refused(owner,
                  "INSERT INTO api_keys (tenant_id, name, prefix, secret_sha256, requests_per_minute)"
                  " VALUES ($1, 'k', 'aigw_x', sha256(gen_random_uuid()::text::bytea), 0)",
                  1, p),
          "impossible limits: an API key's requests_per_minute 0 refused");

    /* written while the constraints were not there: ignored, logged once */
    def_rpm = constraint(owner, "tenants", "tenants_overrides_requests_per_minute_check", NULL);
    def_mql = constraint(owner, "tenants", "tenants_overrides_monthly_query_limit_check", NULL);
    PQclear(tl_sql(owner, true,
                   "UPDATE tenants SET overrides = '{\"requests_per_minute\": 0, \"monthly_query_limit\": -5}'"
                   " WHERE id = $1",
                   1, p));
    CHECK(wait_for(tcode, "requests_per_minute", NULL, 10), "impossible limits: the standard plan's 10 per minute apply");
    CHECK(wait_for(tcode, "monthly_limit", NULL, 100), "impossible limits: the standard plan's 100 a month apply");
    tok = tl_token(tcode, "optician", 600);
    for (int i = 0; i < 3; i++) { /* each rename drops the cached tenant (NOTIFY): 3 more loads */
        char *q = tl_sprintf("How often should I replace lens case %d?", i), *body = tl_sprintf("{\"question\":\"%s\"}", q);
        const char *pn[2] = {tid, q};

        tl_post(port, "/api/ai/query", tok, body, &r);
        CHECK(r.status == 200, "impossible limits: query %d answered, not refused for ever (%ld %s)", i, r.status, r.body);
        tl_resp_free(&r);
        PQclear(tl_sql(owner, true, "UPDATE tenants SET name = $2 WHERE id = $1", 2, pn));
        CHECK(wait_for(tcode, "requests_per_minute", NULL, 10), "impossible limits: reloaded %d", i);
        free(q);
        free(body);
    }
    CHECK(count_in_log(gw, "overrides.requests_per_minute") == 1 && count_in_log(gw, "overrides.monthly_query_limit") == 1,
          "impossible limits: each value logged once over 4 loads (%d, %d)",
          count_in_log(gw, "overrides.requests_per_minute"), count_in_log(gw, "overrides.monthly_query_limit"));
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{}' WHERE id = $1", 1, p));
    if (def_rpm != NULL)
        constraint(owner, "tenants", "tenants_overrides_requests_per_minute_check", def_rpm);
    if (def_mql != NULL)
        constraint(owner, "tenants", "tenants_overrides_monthly_query_limit_check", def_mql);

    /* an API key's negative limit (past its CHECK): refused every request
     * 429 for ever; now only the tenant's limit applies, like no key limit */
    {
        char eid[37], ecode[65], key[128], kid[37], *admin, *def_key;
        const char *pk[1] = {kid};

        tl_create_tenant(owner, "enterprise", "active", eid, ecode);
        admin = tl_token(ecode, "admin", 600);
        CHECK(tl_api_key_create(port, admin, "{\"name\":\"impossible limit\"}", key, sizeof(key), kid) == 201,
              "impossible limits: an API key");
        def_key = constraint(owner, "api_keys", "api_keys_requests_per_minute_check", NULL);
        PQclear(tl_sql(owner, true, "UPDATE api_keys SET requests_per_minute = -1 WHERE id = $1", 1, pk));
        for (int i = 0; i < 2; i++) {
            tl_key_request(port, "POST", "/api/ai/query", key, false,
                           "{\"question\":\"Does a negative key limit refuse everything?\"}", &r);
            CHECK(r.status == 200, "impossible limits: the key's request %d answered (%ld %s)", i, r.status, r.body);
            tl_resp_free(&r);
        }
        /* logged on each load of the key: once, or twice when the UPDATE's
         * invalidation reached the listener after the first request loaded it */
        CHECK(count_in_log(gw, "requests_per_minute -1 cannot work") >= 1, "impossible limits: the key's value is logged");
        PQclear(tl_sql(owner, true, "UPDATE api_keys SET requests_per_minute = NULL WHERE id = $1", 1, pk));
        if (def_key != NULL)
            constraint(owner, "api_keys", "api_keys_requests_per_minute_check", def_key);
        free(def_key);
        free(admin);
    }

    /* a plan of its own whose requests_per_minute cannot work: 503, not 429 for ever */
    PQclear(tl_sql(owner, true,
                   "INSERT INTO plans (tier, display_name, monthly_query_limit, requests_per_minute, max_tokens, features,"
                   " rank) VALUES ('limits_broken', 'Broken', 100, 5, 300, '{knowledge}', 5)",
                   0, NULL));
    PQclear(tl_sql(owner, true, "UPDATE tenants SET tier = 'limits_broken' WHERE id = $1", 1, p));
    CHECK(wait_for(tcode, "requests_per_minute", NULL, 5), "impossible limits: on the plan of its own");
    def_plan = constraint(owner, "plans", "plans_requests_per_minute_check", NULL);
    PQclear(tl_sql(owner, true, "UPDATE plans SET requests_per_minute = 0 WHERE tier = 'limits_broken'", 0, NULL));
    for (int i = 0; i < 40; i++) { /* the plan's NOTIFY drops the cached tenant */
        get_limits(tcode, &r);
        if (r.status != 200)
            break;
        tl_resp_free(&r);
        usleep(50 * 1000);
    }
    tl_resp_free(&r);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"Is the broken plan refused?\"}", &r);
    tl_expect("impossible limits: a plan's 0 per minute", &r, 503, "service_unavailable");
    tl_resp_free(&r);
    CHECK(count_in_log(gw, "limits_broken") >= 1, "impossible limits: the plan's value is logged");
    PQclear(tl_sql(owner, true, "UPDATE plans SET requests_per_minute = 5 WHERE tier = 'limits_broken'", 0, NULL));
    if (def_plan != NULL)
        constraint(owner, "plans", "plans_requests_per_minute_check", def_plan);
    /* the tenant stays (its usage rows may still be on their way), on a plan that stays */
    PQclear(tl_sql(owner, true, "UPDATE tenants SET tier = 'standard' WHERE id = $1", 1, p));
    PQclear(tl_sql(owner, true, "DELETE FROM plans WHERE tier = 'limits_broken'", 0, NULL));
    free(def_rpm);
    free(def_mql);
    free(def_plan);
    free(tok);
}

int
main(void)
{
    PGconn *owner = tl_pg_owner();
    struct tl_aigw gw;
    char *cfg = tl_config_patch("{\"tenants\":{\"cache_ttl_s\":3600}}");
    char tid[37], tcode[65], key[128], month[8];
    const char *p[1];
    PGresult *q;
    struct tl_resp r;

    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    port = gw.port;

    check_plan("clinic_001", "pro", 500, 30, 500, "sales", "patient_analytics");
    check_plan("clinic_002", "enterprise", -1, 100, 1000, "patient_analytics", NULL);
    check_plan("clinic_003", "standard", 100, 10, 300, "knowledge", "sales");

    /* used = billed rows of this month, rebuilt when the Redis counter is missing */
    tl_create_tenant(owner, "standard", "active", tid, tcode);
    p[0] = tid;
    q = tl_sql(owner, true,
               "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success, billed, created_at) "
               "SELECT gen_random_uuid(), $1, 'seed', '/api/ai/query', 200, true, b, t FROM (VALUES "
               "(true, now()), (true, now()), (true, now()), (false, now()), "
               "(true, date_trunc('month', now()) - interval '1 day')) v(b, t)",
               1, p);
    PQclear(q);
    aigw_month_key(aigw_wall_s(), month);
    snprintf(key, sizeof(key), "aigw:{%s}:q:%s", tid, month);
    tl_redis_int("DEL %s", key);
    get_limits(tcode, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "used", -1) == 3, "rebuilt used = 3 billed rows this month: %s", r.body);
    CHECK(tl_json_int(&r, "remaining", -1) == 97, "remaining 97");
    tl_resp_free(&r);
    CHECK(tl_redis_int("GET %s", key) == 3, "the Redis counter was rebuilt to 3");
    CHECK(tl_redis_int("TTL %s", key) > 0, "the counter expires after the month");
    tl_redis_int("SET %s 7", key);
    get_limits(tcode, &r);
    CHECK(tl_json_int(&r, "used", -1) == 7, "the live Redis counter is what counts");
    tl_resp_free(&r);

    /* plan changes show on the next request, via NOTIFY (cache TTL is an hour) */
    check_plan(tcode, "standard", 100, 10, 300, "knowledge", "sales");
    q = tl_sql(owner, true, "UPDATE tenants SET tier = 'pro' WHERE id = $1", 1, p);
    PQclear(q);
    CHECK(wait_for(tcode, "tier", "pro", 0), "tier change standard -> pro visible without restart");
    check_plan(tcode, "pro", 500, 30, 500, "sales", "api_access");
    q = tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"monthly_query_limit\": 250}' WHERE id = $1", 1, p);
    PQclear(q);
    CHECK(wait_for(tcode, "monthly_limit", NULL, 250), "per-tenant override applied");
    q = tl_sql(owner, true, "UPDATE plans SET requests_per_minute = 31 WHERE tier = 'pro'", 0, NULL);
    PQclear(q);
    CHECK(wait_for(tcode, "requests_per_minute", NULL, 31), "plan change visible");
    /* clinic_001 (pro, cached since the start) must show the change too:
     * else reading 30 there below would not tell that the restore arrived */
    CHECK(wait_for("clinic_001", "requests_per_minute", NULL, 31), "plan change visible to every tenant of the plan");
    q = tl_sql(owner, true, "UPDATE plans SET requests_per_minute = 30 WHERE tier = 'pro'", 0, NULL);
    PQclear(q);
    CHECK(wait_for("clinic_001", "requests_per_minute", NULL, 30), "plan restored");
    q = tl_sql(owner, true, "UPDATE tenants SET status = 'suspended' WHERE id = $1", 1, p);
    PQclear(q);
    {
        bool blocked = false;

        for (int i = 0; i < 40 && !blocked; i++) {
            get_limits(tcode, &r);
            blocked = r.status == 403;
            tl_resp_free(&r);
            if (!blocked)
                usleep(50 * 1000);
        }
        CHECK(blocked, "suspension blocks the next requests");
    }

    q = tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p);
    PQclear(q);
    test_limit_lowered(owner);
    test_impossible_limits(owner, &gw);
    {
        char *log = tl_aigw_log(&gw);

        CHECK(log != NULL && strstr(log, "ready: serving") != NULL && strstr(log, "statement_timeout is") == NULL,
              "connected directly: the connection's timeouts hold, no warning");
        free(log);
    }
    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    test_behind_pgbouncer(owner);
    free(cfg);
    PQfinish(owner);
    return tl_done();
}
