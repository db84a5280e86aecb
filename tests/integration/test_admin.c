/* test_admin.c - platform administration end to end, with two aigw instances:
 * who is a platform admin, onboarding, upgrade / downgrade / suspension
 * taking effect on the next request on both instances, keyset listing,
 * validation of every field (400 naming it, nothing written), 409, 404 */
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static PGconn *owner;
static int pa, pb;          /* instance A and B */
static char *ops;           /* platform operator token */

static const char KNOWLEDGE[] = "{\"question\":\"How do I clean anti-reflective lenses, case %d?\"}";
static const char SALES[] = "{\"question\":\"What were our sales of progressive lenses last month?\",\"query_type\":\"sales\"}";

static const char *const UA_HDR[] = {"User-Agent: aigw-admin-test/1.0", NULL};

static void
platform(int port, const char *method, const char *path, const char *json, struct tl_resp *r)
{
    tl_send(port, method, path, ops, json, UA_HDR, r);
}

static long
counts_sum(void)
{
    return tl_count_rows(owner, "tenants") * 1000003L + tl_count_rows(owner, "audit_logs");
}

static long
audit_rows(const char *tid, const char *action)
{
    const char *p[2] = {tid, action};

    return tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND ($2::text IS NULL OR action = $2)",
                       2, p);
}

static long
ask(int port, const char *token, const char *body, char *code, size_t cap)
{
    struct tl_resp r;
    long status;

    tl_post(port, "/api/ai/query", token, body, &r);
    status = r.status;
    if (code != NULL && !tl_json_str(&r, "error.code", code, cap))
        code[0] = '\0';
    tl_resp_free(&r);
    return status;
}

/* The next request on the instance that made the change must already see it. */
static void
now_on(int port, const char *what, const char *token, const char *body, long status, const char *code)
{
    char got[64] = "";
    long st = ask(port, token, body, got, sizeof(got));

    CHECK(st == status && (code == NULL || strcmp(got, code) == 0), "%s: next request %ld %s, want %ld %s", what, st,
          got, status, code ? code : "");
}

/* The other instance hears the NOTIFY asynchronously: bounded wait (10 s). */
static void
soon_on(int port, const char *what, const char *token, const char *body, long status, const char *code)
{
    char got[64] = "";
    long st = 0;

    for (int i = 0; i < 200; i++) {
        st = ask(port, token, body, got, sizeof(got));
        if (st == status && (code == NULL || strcmp(got, code) == 0))
            break;
        usleep(50 * 1000);
    }
    CHECK(st == status && (code == NULL || strcmp(got, code) == 0), "%s: other instance %ld %s, want %ld %s", what, st,
          got, status, code ? code : "");
}

static void
test_plans(void)
{
    struct tl_resp r;
    json_t *root, *plans;

    platform(pa, "GET", "/api/v1/plans", NULL, &r);
    tl_expect_field("plans", &r, 200, NULL, NULL);
    root = json_loads(r.body, 0, NULL);
    plans = json_object_get(root, "plans");
    CHECK(json_array_size(plans) == 3, "three plans: %s", r.body);
    CHECK(strcmp(json_string_value(json_object_get(json_array_get(plans, 0), "tier")), "standard") == 0 &&
              json_integer_value(json_object_get(json_array_get(plans, 2), "monthly_query_limit")) == -1,
          "plans by rank, enterprise unlimited");
    json_decref(root);
    tl_resp_free(&r);
}

static void
test_platform_identity(void)
{
    static const char *const ROUTES[][3] = {
        {"GET", "/api/v1/tenants", NULL},
        {"POST", "/api/v1/tenants", "{\"code\":\"sneaky_tenant\",\"name\":\"Sneaky\",\"tier\":\"enterprise\"}"},
        {"GET", "/api/v1/tenants/clinic_002", NULL},
        {"GET", "/api/v1/tenants/22222222-2222-4222-8222-222222222222", NULL},
        {"PUT", "/api/v1/tenants/clinic_002", "{\"name\":\"Taken Over\"}"},
        {"POST", "/api/v1/tenants/clinic_002/upgrade", "{\"tier\":\"standard\"}"},
        {"GET", "/api/v1/tenants/clinic_002/usage", NULL},
        {"GET", "/api/v1/plans", NULL},
    };
    const char *secret = tl_env("AIGW_JWT_SECRET"), *psecret = tl_env("AIGW_PLATFORM_JWT_SECRET");
    long now = (long)time(NULL), before = counts_sum();
    char claims[256], *clinic_admin = tl_token("clinic_001", "admin", 600);
    char *clinic_pa = tl_token("clinic_001", "platform_admin", 600);
    char *platform_admin_role = tl_platform_token("admin", 600);
    char *forged, *wrong_kid, *with_tenant;
    struct tl_resp r;

    /* a clinic secret cannot stand in for the platform key, nor the other way round */
    snprintf(claims, sizeof(claims), "{\"sub\":\"x\",\"role\":\"platform_admin\",\"exp\":%ld}", now + 600);
    forged = tl_sign("HS256", "platform", secret, strlen(secret), claims);
    wrong_kid = tl_sign("HS256", "dev", psecret, strlen(psecret), claims);
    snprintf(claims, sizeof(claims),
             "{\"sub\":\"x\",\"role\":\"platform_admin\",\"tenant_id\":\"clinic_001\",\"exp\":%ld}", now + 600);
    with_tenant = tl_sign("HS256", "platform", psecret, strlen(psecret), claims);
    for (size_t i = 0; i < sizeof(ROUTES) / sizeof(ROUTES[0]); i++) {
        const struct {
            int port;
            const char *token, *what;
            long status;
            const char *code;
        } callers[] = {
            {pa, clinic_admin, "clinic admin", 403, "forbidden"},
            {pb, clinic_pa, "clinic key claiming platform_admin", 403, "forbidden"},
            {pa, platform_admin_role, "platform key without role platform_admin", 403, "forbidden"},
            {pa, NULL, "no token", 401, "unauthenticated"},
            {pa, forged, "clinic secret signing as the platform key", 401, "unauthenticated"},
            {pb, wrong_kid, "platform secret under a clinic kid", 401, "unauthenticated"},
        };

        for (size_t k = 0; k < sizeof(callers) / sizeof(callers[0]); k++) {
            char what[160];

            snprintf(what, sizeof(what), "%s %s: %s", ROUTES[i][0], ROUTES[i][1], callers[k].what);
            tl_send(callers[k].port, ROUTES[i][0], ROUTES[i][1], callers[k].token, ROUTES[i][2], NULL, &r);
            tl_expect_field(what, &r, callers[k].status, callers[k].code, NULL);
            CHECK(strstr(r.body, "clinic_002") == NULL && strstr(r.body, "Optical") == NULL &&
                      strstr(r.body, "22222222-") == NULL,
                  "%s: learns nothing: %s", what, r.body);
            tl_resp_free(&r);
        }
    }
    CHECK(counts_sum() == before, "refused platform calls wrote nothing");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM tenants WHERE code = 'clinic_002' AND name = 'Optical Express'"
                             " AND tier = 'enterprise'", 0, NULL) == 1,
          "clinic_002 untouched");

    /* platform tokens never act for a tenant */
    tl_get(pa, "/api/ai/limits", ops, &r);
    tl_expect_field("platform token on a tenant route", &r, 403, "forbidden", NULL);
    tl_resp_free(&r);
    tl_get(pa, "/api/ai/limits", with_tenant, &r);
    tl_expect_field("platform token claiming a tenant", &r, 403, "forbidden", NULL);
    tl_resp_free(&r);
    tl_get(pa, "/api/v1/audit-logs", with_tenant, &r);
    tl_expect_field("platform token on the tenant audit trail", &r, 403, "forbidden", NULL);
    tl_resp_free(&r);

    /* aigw-token mints platform tokens from the config (README) */
    {
        FILE *p = popen(AIGW_TOKEN_BIN_PATH " -c " AIGW_SOURCE_DIR "/config/aigw.json -k platform -u ops-cli", "r");
        char tok[4096] = "";

        CHECK(p != NULL && fgets(tok, sizeof(tok), p) != NULL, "aigw-token -k platform prints a token");
        if (p != NULL)
            pclose(p);
        tok[strcspn(tok, "\n")] = '\0';
        tl_get(pb, "/api/v1/plans", tok, &r);
        tl_expect_field("aigw-token platform token", &r, 200, NULL, NULL);
        tl_resp_free(&r);
    }
    free(clinic_admin);
    free(clinic_pa);
    free(platform_admin_role);
    free(forged);
    free(wrong_kid);
    free(with_tenant);
}

/* Onboard through A, use through B; change the plan through one instance and
 * check the very next request there, and the other instance within a bound. */
static void
test_lifecycle(void)
{
    char code[65], id[40], body[512], buf[256], rid[128], *tok;
    const char *p[1] = {id};
    const char *hdrs[3] = {UA_HDR[0], rid, NULL};
    struct tl_resp r;
    long used_before, audits;
    PGresult *q;

    snprintf(code, sizeof(code), "onb_%08x", (unsigned)rand());
    snprintf(body, sizeof(body), "{\"code\":\"%s\",\"name\":\"Onboarded Optics\",\"tier\":\"standard\"}", code);
    snprintf(rid, sizeof(rid), "X-Request-Id: adm-create-%s", code);
    tl_send(pa, "POST", "/api/v1/tenants", ops, body, hdrs, &r);
    tl_expect_field("onboard", &r, 201, NULL, NULL);
    CHECK(tl_json_str(&r, "id", id, sizeof(id)) && strlen(id) == 36, "new tenant id: %s", r.body);
    CHECK(tl_json_str(&r, "tier", buf, sizeof(buf)) && strcmp(buf, "standard") == 0, "tier standard");
    CHECK(tl_json_str(&r, "status", buf, sizeof(buf)) && strcmp(buf, "active") == 0, "status active");
    CHECK(tl_json_int(&r, "limits.monthly_query_limit", -9) == 100 && tl_json_int(&r, "limits.used", -9) == 0,
          "standard limit in force, nothing used");
    CHECK(tl_resp_header(&r, "Location", buf, sizeof(buf)) && strstr(buf, id) != NULL, "Location names the tenant");
    tl_resp_free(&r);
    q = tl_sql(owner, true,
               "SELECT actor, actor_role, ip, user_agent, request_id, target, details->>'code', details->>'tier'"
               " FROM audit_logs WHERE tenant_id = $1 AND action = 'tenant.create'", 1, p);
    CHECK(PQntuples(q) == 1, "one tenant.create audit row");
    if (PQntuples(q) == 1) {
        CHECK(strcmp(PQgetvalue(q, 0, 0), "platform:ops-1") == 0, "actor: %s", PQgetvalue(q, 0, 0));
        CHECK(strcmp(PQgetvalue(q, 0, 1), "platform_admin") == 0, "actor role");
        CHECK(strcmp(PQgetvalue(q, 0, 2), "127.0.0.1") == 0, "client ip");
        CHECK(strcmp(PQgetvalue(q, 0, 3), "aigw-admin-test/1.0") == 0, "user agent");
        CHECK(strcmp(PQgetvalue(q, 0, 4), rid + strlen("X-Request-Id: ")) == 0, "request id");
        CHECK(strcmp(PQgetvalue(q, 0, 5), id) == 0, "target = tenant id");
        CHECK(strcmp(PQgetvalue(q, 0, 6), code) == 0 && strcmp(PQgetvalue(q, 0, 7), "standard") == 0,
              "details: the created values");
    }
    PQclear(q);

    /* a new tenant's first request works on either instance */
    tok = tl_token(code, "optician", 600);
    snprintf(body, sizeof(body), KNOWLEDGE, 1);
    now_on(pb, "onboarded, first request on B", tok, body, 200, NULL);
    snprintf(body, sizeof(body), KNOWLEDGE, 2);
    now_on(pa, "onboarded, first request on A", tok, body, 200, NULL);
    now_on(pa, "standard plan: sales on A", tok, SALES, 403, "feature_not_in_plan");
    now_on(pb, "standard plan: sales on B", tok, SALES, 403, "feature_not_in_plan");
    tl_get(pb, "/api/ai/limits", tok, &r);
    used_before = tl_json_int(&r, "used", -1);
    CHECK(used_before == 2, "two billed queries so far: %s", r.body);
    tl_resp_free(&r);

    /* upgrade through A: A sees it on the next request, B right after the NOTIFY */
    snprintf(buf, sizeof(buf), "/api/v1/tenants/%s/upgrade", id);
    platform(pa, "POST", buf, "{\"tier\":\"pro\"}", &r);
    tl_expect_field("upgrade", &r, 200, NULL, NULL);
    CHECK(tl_json_int(&r, "limits.monthly_query_limit", -9) == 500, "pro limit in force: %s", r.body);
    CHECK(tl_json_int(&r, "limits.used", -9) == used_before, "quota used carries over the upgrade");
    CHECK(tl_json_int(&r, "limits.remaining", -9) == 500 - used_before, "remaining under the new limit");
    tl_resp_free(&r);
    now_on(pa, "upgraded, sales on A", tok, SALES, 200, NULL);
    soon_on(pb, "upgraded, sales on B", tok, SALES, 200, NULL);
    tl_get(pb, "/api/ai/limits", tok, &r);
    CHECK(tl_json_int(&r, "monthly_limit", -1) == 500 && tl_json_int(&r, "used", -1) >= used_before,
          "B: new limit, count kept: %s", r.body);
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND action = 'tenant.upgrade'"
                             " AND details = '{\"tier\": {\"from\": \"standard\", \"to\": \"pro\"}}'::jsonb", 1, p) == 1,
          "upgrade audited with its diff");

    /* downgrade through B */
    platform(pb, "POST", buf, "{\"tier\":\"standard\"}", &r);
    tl_expect_field("downgrade", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    now_on(pb, "downgraded, sales on B", tok, SALES, 403, "feature_not_in_plan");
    soon_on(pa, "downgraded, sales on A", tok, SALES, 403, "feature_not_in_plan");
    CHECK(audit_rows(id, "tenant.downgrade") == 1, "downgrade audited");

    /* suspend through B */
    snprintf(buf, sizeof(buf), "/api/v1/tenants/%s", id);
    snprintf(body, sizeof(body), KNOWLEDGE, 3);
    platform(pb, "PUT", buf, "{\"status\":\"suspended\"}", &r);
    tl_expect_field("suspend", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    now_on(pb, "suspended, on B", tok, body, 403, "tenant_inactive");
    soon_on(pa, "suspended, on A", tok, body, 403, "tenant_inactive");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND action = 'tenant.suspend'"
                             " AND details = '{\"status\": {\"from\": \"active\", \"to\": \"suspended\"}}'::jsonb", 1, p) == 1,
          "suspension audited with its diff");

    /* a change to the same values writes nothing */
    audits = audit_rows(id, NULL);
    platform(pa, "PUT", buf, "{\"status\":\"suspended\"}", &r);
    tl_expect_field("no-op update", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    CHECK(audit_rows(id, NULL) == audits, "no-op update leaves no audit row");

    /* reactivate and rename through A */
    platform(pa, "PUT", buf, "{\"status\":\"active\",\"name\":\"Renamed Optics\",\"overrides\":{\"max_tokens\":200}}", &r);
    tl_expect_field("reactivate", &r, 200, NULL, NULL);
    CHECK(tl_json_int(&r, "limits.max_tokens", -1) == 200, "override in force: %s", r.body);
    tl_resp_free(&r);
    snprintf(body, sizeof(body), KNOWLEDGE, 4);
    now_on(pa, "reactivated, on A", tok, body, 200, NULL);
    snprintf(body, sizeof(body), KNOWLEDGE, 5);
    soon_on(pb, "reactivated, on B", tok, body, 200, NULL);
    CHECK(audit_rows(id, "tenant.update") == 1, "update audited");
    CHECK(audit_rows(id, NULL) == 5, "create, upgrade, downgrade, suspend, update: five audit rows");

    /* read by id and by code */
    platform(pb, "GET", buf, NULL, &r);
    tl_expect_field("get by id", &r, 200, NULL, NULL);
    CHECK(tl_json_str(&r, "name", body, sizeof(body)) && strcmp(body, "Renamed Optics") == 0, "renamed");
    CHECK(tl_json_int(&r, "limits.used", -1) >= 3, "quota used shown: %s", r.body);
    tl_resp_free(&r);
    snprintf(buf, sizeof(buf), "/api/v1/tenants/%s", code);
    platform(pb, "GET", buf, NULL, &r);
    CHECK(r.status == 200 && tl_json_str(&r, "id", body, sizeof(body)) && strcmp(body, id) == 0, "get by code");
    tl_resp_free(&r);
    free(tok);
}

/* A platform write in a thread of its own (it waits on a row lock). */
struct blocked_write {
    pthread_t th;
    const char *method, *path, *body;
    struct tl_resp r;
};

static void *
blocked_write_run(void *arg)
{
    struct blocked_write *w = arg;

    platform(pa, w->method, w->path, w->body, &w->r);
    return NULL;
}

/* Wait until a backend waits for a lock (the write queued behind ours). */
static bool
lock_waiter(PGconn *watch)
{
    for (int i = 0; i < 200; i++) {
        if (tl_sql_long(watch, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'", 0, NULL) > 0)
            return true;
        usleep(25 * 1000);
    }
    return false;
}

/* Two plan changes (or a PUT and a plan change) on one tenant at once: the
 * second waits for the first's row lock and then applies on top of it. Its
 * locking read joined the plan: re-checked against the committed new tier,
 * the join with the old plan's row failed, and the write answered 404
 * "no such tenant" for a tenant that exists. */
static void
test_concurrent_changes(void)
{
    static const struct {
        const char *method, *suffix, *body, *tier, *action, *diff;
    } CASES[] = {
        {"POST", "/upgrade", "{\"tier\":\"enterprise\"}", "enterprise", "tenant.upgrade",
         "{\"tier\": {\"from\": \"pro\", \"to\": \"enterprise\"}}"},
        {"PUT", "", "{\"name\":\"Renamed Meanwhile\"}", "pro", "tenant.update",
         NULL /* the name's, below */},
        {"POST", "/upgrade", "{\"tier\":\"standard\"}", "standard", "tenant.downgrade",
         "{\"tier\": {\"from\": \"pro\", \"to\": \"standard\"}}"},
    };
    PGconn *watch = tl_pg_owner();

    for (size_t i = 0; i < sizeof(CASES) / sizeof(CASES[0]); i++) {
        char id[37], code[65], path[160], buf[64], what[128];
        const char *p[1] = {id};
        struct blocked_write w = {.method = CASES[i].method, .path = path, .body = CASES[i].body};
        long audits;

        tl_create_tenant(owner, "standard", "active", id, code);
        audits = audit_rows(id, NULL);
        snprintf(path, sizeof(path), "/api/v1/tenants/%s%s", id, CASES[i].suffix);
        snprintf(what, sizeof(what), "%s %s behind a plan change", CASES[i].method, CASES[i].body);
        /* another writer holds the row: standard -> pro, not committed yet */
        PQclear(tl_sql(owner, true, "BEGIN", 0, NULL));
        PQclear(tl_sql(owner, true, "UPDATE tenants SET tier = 'pro' WHERE id = $1", 1, p));
        pthread_create(&w.th, NULL, blocked_write_run, &w);
        CHECK(lock_waiter(watch), "%s: waits for the row lock", what);
        PQclear(tl_sql(owner, true, "COMMIT", 0, NULL));
        pthread_join(w.th, NULL);
        tl_expect_field(what, &w.r, 200, NULL, NULL);
        CHECK(tl_json_str(&w.r, "tier", buf, sizeof(buf)) && strcmp(buf, CASES[i].tier) == 0, "%s: tier %s: %s",
              what, CASES[i].tier, w.r.body);
        tl_resp_free(&w.r);
        CHECK(audit_rows(id, NULL) == audits + 1 && audit_rows(id, CASES[i].action) == 1, "%s: one %s audit row",
              what, CASES[i].action);
        {
            char *diff = CASES[i].diff != NULL ? tl_sprintf("%s", CASES[i].diff)
                                               : tl_sprintf("{\"name\": {\"from\": \"Test %s\", \"to\": \"Renamed Meanwhile\"}}", code);
            const char *q[2] = {id, diff};

            CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND details = $2::jsonb", 2,
                              q) == 1,
                  "%s: the audit row's diff starts from the committed row: %s", what, diff);
            free(diff);
        }
        PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
    }
    PQfinish(watch);
}

struct listing {
    char last[80];
    long seen;
    bool ascending;
};

static void
each_tenant(struct json_t *t, void *ctx)
{
    struct listing *l = ctx;
    const char *c = json_string_value(json_object_get(t, "code"));

    l->ascending &= c != NULL && strcmp(c, l->last) > 0;
    snprintf(l->last, sizeof(l->last), "%s", c ? c : "");
    l->seen++;
}

static void
test_listing(void)
{
    char id[37], code[65];
    long total = tl_count_rows(owner, "tenants");
    struct listing l = {"", 0, true};
    struct tl_resp r;

    for (int i = 0; i < 3; i++)
        tl_create_tenant(owner, "standard", "active", id, code);
    total += 3;
    CHECK(tl_walk_pages(pa, ops, "/api/v1/tenants?limit=2", 2, "tenants", "next_after", "after", each_tenant, &l) > 1,
          "several pages");
    CHECK(l.ascending, "keyset pages in strictly ascending code order, no repeats");
    CHECK(l.seen == total, "the pages hold every tenant exactly once: %ld of %ld", l.seen, total);
    platform(pa, "GET", "/api/v1/tenants", NULL, &r);
    CHECK(r.status == 200 && strstr(r.body, "\"clinic_001\"") != NULL, "default page lists tenants");
    tl_resp_free(&r);
}

struct bad {
    const char *body, *field;
};

static void
expect_rejected(int port, const char *method, const char *path, const struct bad *cases, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        struct tl_resp r;
        long before = counts_sum();
        char what[256];

        snprintf(what, sizeof(what), "%s %s %s", method, path, cases[i].body);
        platform(port, method, path, cases[i].body, &r);
        tl_expect_field(what, &r, 400, "invalid_request", cases[i].field);
        tl_resp_free(&r);
        CHECK(counts_sum() == before, "%s: nothing written", what);
    }
}

static void
test_validation(void)
{
    char long_name[256], long_code[80], path[160], id[37], code[65], body[1200];
    const char *p[1] = {id};
    struct tl_resp r;
    long before;

    memset(long_code, 'a', 65);
    long_code[65] = '\0';
    memset(long_name, 'n', 201);
    long_name[201] = '\0';
    {
        char b_code[200], b_name[512];
        const struct bad create[] = {
            {"{\"name\":\"N\",\"tier\":\"standard\"}", "code"},
            {"{\"code\":\"ab\",\"name\":\"N\",\"tier\":\"standard\"}", "code"},
            {"{\"code\":\"Bad-Code\",\"name\":\"N\",\"tier\":\"standard\"}", "code"},
            {"{\"code\":123,\"name\":\"N\",\"tier\":\"standard\"}", "code"},
            {b_code, "code"},
            {"{\"code\":\"val_ok_1\",\"tier\":\"standard\"}", "name"},
            {"{\"code\":\"val_ok_1\",\"name\":\"\",\"tier\":\"standard\"}", "name"},
            {"{\"code\":\"val_ok_1\",\"name\":\"   \",\"tier\":\"standard\"}", "name"},
            /* blank in any script: no-break, em and ideographic spaces */
            {"{\"code\":\"val_ok_1\",\"name\":\"\\u00a0\\u2003\\u3000\",\"tier\":\"standard\"}", "name"},
            {"{\"code\":\"val_ok_1\",\"name\":5,\"tier\":\"standard\"}", "name"},
            {"{\"code\":\"val_ok_1\",\"name\":\"a\\u0001b\",\"tier\":\"standard\"}", "name"},
            /* C1 controls too: U+0085 (NEL), U+009B (the 8-bit CSI of terminals) */
            {"{\"code\":\"val_ok_1\",\"name\":\"a\\u0085b\",\"tier\":\"standard\"}", "name"},
            {"{\"code\":\"val_ok_1\",\"name\":\"x\xc2\x9b" "31mred\",\"tier\":\"standard\"}", "name"},
            {b_name, "name"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\"}", "tier"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"platinum\"}", "tier"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":7}", "tier"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"Pro!\"}", "tier"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"status\":\"paused\"}", "status"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"status\":true}", "status"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"ai_enabled\":\"yes\"}", "ai_enabled"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"overrides\":[]}", "overrides"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"overrides\":{\"foo\":1}}", "overrides"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"overrides\":{\"max_tokens\":0}}",
             "overrides.max_tokens"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"overrides\":{\"monthly_query_limit\":\"5\"}}",
             "overrides.monthly_query_limit"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"cache_ttl_s\":-1}", "cache_ttl_s"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"cache_ttl_s\":\"60\"}", "cache_ttl_s"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"cache_ttl_s\":2592001}", "cache_ttl_s"},
            /* a field aigw does not know was ignored: the tenant was created without what it meant */
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"overides\":{\"max_tokens\":5}}", "overides"},
            {"{\"code\":\"val_ok_1\",\"name\":\"N\",\"tier\":\"pro\",\"ai_queries_used\":0}", "ai_queries_used"},
        };

        snprintf(b_code, sizeof(b_code), "{\"code\":\"%s\",\"name\":\"N\",\"tier\":\"standard\"}", long_code);
        snprintf(b_name, sizeof(b_name), "{\"code\":\"val_ok_1\",\"name\":\"%s\",\"tier\":\"standard\"}", long_name);
        expect_rejected(pa, "POST", "/api/v1/tenants", create, sizeof(create) / sizeof(create[0]));
    }

    /* duplicate code: 409, nothing written */
    before = counts_sum();
    platform(pb, "POST", "/api/v1/tenants", "{\"code\":\"clinic_001\",\"name\":\"Dup\",\"tier\":\"standard\"}", &r);
    tl_expect_field("duplicate code", &r, 409, "conflict", "code");
    tl_resp_free(&r);
    CHECK(counts_sum() == before, "duplicate: nothing written");
    platform(pb, "POST", "/api/v1/tenants", "{\"code\":", &r);
    tl_expect_field("broken JSON", &r, 400, "invalid_json", NULL);
    tl_resp_free(&r);
    CHECK(counts_sum() == before, "broken JSON: nothing written");

    /* 200 characters are fine, in any script */
    snprintf(code, sizeof(code), "val_%08x", (unsigned)rand());
    {
        size_t off = (size_t)snprintf(body, sizeof(body), "{\"code\":\"%s\",\"tier\":\"pro\",\"name\":\"", code);

        for (int i = 0; i < 200; i++)
            off += (size_t)snprintf(body + off, sizeof(body) - off, "\xc3\xa9");
        snprintf(body + off, sizeof(body) - off, "\"}");
    }
    platform(pa, "POST", "/api/v1/tenants", body, &r);
    tl_expect_field("200-character name", &r, 201, NULL, NULL);
    tl_json_str(&r, "id", id, sizeof(id));
    tl_resp_free(&r);

    /* updates */
    snprintf(path, sizeof(path), "/api/v1/tenants/%s", id);
    {
        const struct bad update[] = {
            {"{}", "body"},
            {"{\"name\":\"\"}", "name"},
            {"{\"name\":\"a\\u009fb\"}", "name"},
            {"{\"status\":\"deleted\"}", "status"},
            {"{\"ai_enabled\":1}", "ai_enabled"},
            {"{\"overrides\":{\"x\":1}}", "overrides"},
            {"{\"overrides\":{\"requests_per_minute\":0}}", "overrides.requests_per_minute"},
            {"{\"cache_ttl_s\":-5}", "cache_ttl_s"},
            {"{\"tier\":\"enterprise\"}", "tier"},
            {"{\"code\":\"other_code\"}", "code"},
            /* ignored before: 200 and the tenant as it was, the typo unnoticed */
            {"{\"name\":\"Typo Optics\",\"overides\":{\"monthly_query_limit\":750}}", "overides"},
            {"{\"status\":\"active\",\"ai_queries_used\":0}", "ai_queries_used"},
            {"{\"cache_ttl_s\":60,\"plan\":\"enterprise\"}", "plan"},
            {"{\"cache_ttl_s\":60,\"\\u00e9t\\u0001t\":1}", "body"}, /* a name not echoed */
        };
        long updated = tl_sql_long(owner, "SELECT extract(epoch FROM updated_at)::bigint * 1000000"
                                          " + extract(microseconds FROM updated_at)::bigint FROM tenants WHERE id = $1", 1, p);

        expect_rejected(pb, "PUT", path, update, sizeof(update) / sizeof(update[0]));
        CHECK(tl_sql_long(owner, "SELECT extract(epoch FROM updated_at)::bigint * 1000000"
                                 " + extract(microseconds FROM updated_at)::bigint FROM tenants WHERE id = $1", 1, p) == updated,
              "rejected updates left the row alone");
    }
    snprintf(path, sizeof(path), "/api/v1/tenants/%s/upgrade", id);
    {
        const struct bad upgrade[] = {
            {"{}", "tier"},
            {"{\"tier\":\"gold\"}", "tier"},
            {"{\"tier\":5}", "tier"},
            /* the upgrade route changes the plan only: the rest was dropped silently */
            {"{\"tier\":\"enterprise\",\"overrides\":{\"max_tokens\":5}}", "overrides"},
            {"{\"tier\":\"enterprise\",\"status\":\"active\"}", "status"},
        };

        expect_rejected(pa, "POST", path, upgrade, sizeof(upgrade) / sizeof(upgrade[0]));
        CHECK(tl_sql_long(owner, "SELECT count(*) FROM tenants WHERE id = $1 AND tier = 'pro'", 1, p) == 1,
              "tier unchanged");
    }

    /* unknown tenants: 404 on every route, nothing written */
    before = counts_sum();
    {
        static const char *const UNKNOWN[][3] = {
            {"GET", "/api/v1/tenants/0b9f8f52-5d44-4c1a-9d0e-3c6f2b7a9e11", NULL},
            {"GET", "/api/v1/tenants/zzz_no_such_tenant", NULL},
            {"GET", "/api/v1/tenants/NOT-A-TENANT", NULL},
            {"PUT", "/api/v1/tenants/0b9f8f52-5d44-4c1a-9d0e-3c6f2b7a9e11", "{\"name\":\"Ghost\"}"},
            {"PUT", "/api/v1/tenants/zzz_no_such_tenant", "{\"status\":\"active\"}"},
            {"POST", "/api/v1/tenants/0b9f8f52-5d44-4c1a-9d0e-3c6f2b7a9e11/upgrade", "{\"tier\":\"pro\"}"},
            {"POST", "/api/v1/tenants/zzz_no_such_tenant/upgrade", "{\"tier\":\"gold\"}"},
            {"GET", "/api/v1/tenants/0b9f8f52-5d44-4c1a-9d0e-3c6f2b7a9e11/usage", NULL},
            {"GET", "/api/v1/tenants/..%2F..%2Fetc/usage", NULL},
        };

        for (size_t i = 0; i < sizeof(UNKNOWN) / sizeof(UNKNOWN[0]); i++) {
            platform(pa, UNKNOWN[i][0], UNKNOWN[i][1], UNKNOWN[i][2], &r);
            tl_expect_field(UNKNOWN[i][1], &r, 404, "not_found", NULL);
            tl_resp_free(&r);
        }
    }
    CHECK(counts_sum() == before, "unknown tenants: nothing written");

    /* query parameters */
    {
        static const char *const BAD_ARGS[][2] = {
            {"/api/v1/tenants?limit=0", "limit"},
            {"/api/v1/tenants?limit=101", "limit"},
            {"/api/v1/tenants?limit=ten", "limit"},
            {"/api/v1/tenants?after=Bad!", "after"},
            {"/api/v1/tenants/clinic_001/usage?period=2026-13", "period"},
            {"/api/v1/tenants/clinic_001/usage?period=202605", "period"},
            {"/api/v1/tenants/clinic_001/usage?period=26-05", "period"},
            {"/api/v1/tenants/clinic_001/usage?period=2026-5x", "period"},
            {"/api/v1/tenants/clinic_001/usage?period=2026-+1", "period"}, /* strtol took these as January */
            {"/api/v1/tenants/clinic_001/usage?period=2026-%201", "period"},
            {"/api/v1/tenants/clinic_001/usage?period=+026-01", "period"},
            {"/api/v1/tenants/clinic_001/usage?period=", "period"},
            {"/api/v1/tenants/clinic_001/usage?period", "period"}, /* was the current month */
            {"/api/v1/tenants/clinic_001/usage?period=2026-01&period=2026-02", "period"}, /* the first was taken */
        };

        for (size_t i = 0; i < sizeof(BAD_ARGS) / sizeof(BAD_ARGS[0]); i++) {
            platform(pb, "GET", BAD_ARGS[i][0], NULL, &r);
            tl_expect_field(BAD_ARGS[i][0], &r, 400, "invalid_request", BAD_ARGS[i][1]);
            tl_resp_free(&r);
        }
    }
}

/* The platform role: explicit, narrow, RLS still forced (sql/005_admin.sql). */
static void
expect_sql_error(PGconn *app, bool platform_role, const char *sql, const char *needle)
{
    PGresult *q;

    PQclear(tl_sql(app, true, "BEGIN", 0, NULL));
    if (platform_role)
        PQclear(tl_sql(app, true, "SET LOCAL ROLE aigw_platform", 0, NULL));
    q = tl_sql(app, false, sql, 0, NULL);
    CHECK(PQresultStatus(q) == PGRES_FATAL_ERROR && strstr(PQresultErrorMessage(q), needle) != NULL, "%s: %s", sql,
          PQresultErrorMessage(q));
    PQclear(q);
    PQclear(tl_sql(app, false, "ROLLBACK", 0, NULL));
}

static void
test_privileges(void)
{
    PGconn *app = tl_pg_app();

    CHECK(tl_sql_long(owner, "SELECT count(*) FROM pg_roles WHERE rolname = 'aigw_platform' AND NOT rolcanlogin"
                             " AND NOT rolsuper AND NOT rolbypassrls", 0, NULL) == 1,
          "aigw_platform: no login, no superuser, no BYPASSRLS");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM pg_roles WHERE rolname = 'aigw_app' AND NOT rolinherit", 0, NULL) == 1,
          "aigw_app does not inherit the platform role's rights");
    /* without the explicit switch: one tenant at most, and no plan changes */
    CHECK(tl_sql_long(app, "SELECT count(*) FROM tenants", 0, NULL) == 0, "aigw_app alone sees no tenant");
    expect_sql_error(app, false, "UPDATE tenants SET tier = 'enterprise' WHERE code = 'clinic_003'", "permission denied");
    expect_sql_error(app, false, "INSERT INTO tenants (code, name, tier) VALUES ('rogue', 'Rogue', 'pro')",
                     "permission denied");
    /* with it: every tenant, but only the granted columns and tables */
    PQclear(tl_sql(app, true, "BEGIN", 0, NULL));
    PQclear(tl_sql(app, true, "SET LOCAL ROLE aigw_platform", 0, NULL));
    CHECK(tl_sql_long(app, "SELECT count(*) FROM tenants", 0, NULL) == tl_count_rows(owner, "tenants"),
          "the platform role lists every tenant");
    PQclear(tl_sql(app, true, "COMMIT", 0, NULL));
    CHECK(tl_sql_long(app, "SELECT count(*) FROM tenants", 0, NULL) == 0, "the switch ends with the transaction");
    expect_sql_error(app, true, "DELETE FROM tenants WHERE code = 'clinic_004'", "permission denied");
    expect_sql_error(app, true, "UPDATE tenants SET ai_queries_used = 0", "permission denied");
    expect_sql_error(app, true, "UPDATE tenants SET code = 'renamed' WHERE code = 'clinic_004'", "permission denied");
    expect_sql_error(app, true, "SELECT count(*) FROM ai_usage_logs", "permission denied");
    expect_sql_error(app, true, "SELECT count(*) FROM users", "permission denied");
    expect_sql_error(app, true, "SELECT count(*) FROM api_keys", "permission denied");
    expect_sql_error(app, true, "SELECT count(*) FROM audit_logs", "permission denied");
    expect_sql_error(app, true, "ALTER TABLE tenants NO FORCE ROW LEVEL SECURITY", "owner");
    expect_sql_error(app, true, "INSERT INTO audit_logs (tenant_id, actor, action)"
                                " VALUES ('11111111-1111-4111-8111-111111111111', 'x', 'x')",
                     "row-level security");
    PQfinish(app);
}

int
main(void)
{
    struct tl_aigw a, b;
    char *cfg = tl_config_patch("{\"tenants\":{\"cache_ttl_s\":3600}}");
    PGresult *q;

    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    owner = tl_pg_owner();
    tl_mock_reset(tl_env("AIGW_MOCK_URL"));
    tl_mock_reset(tl_env("AIGW_MOCK2_URL"));
    if (tl_aigw_start(&a, cfg) != 0 || tl_aigw_start(&b, cfg) != 0)
        return 1;
    pa = a.port;
    pb = b.port;
    ops = tl_platform_token("platform_admin", 600);

    test_privileges();
    test_plans();
    test_platform_identity();
    test_lifecycle();
    test_concurrent_changes();
    test_listing();
    test_validation();

    q = tl_sql(owner, true, "DELETE FROM tenants WHERE code ~ '^(onb|val|t)_[0-9a-f]{8}'", 0, NULL);
    PQclear(q);
    CHECK(tl_aigw_stop(&a) == 0, "A: clean exit");
    CHECK(tl_aigw_stop(&b) == 0, "B: clean exit");
    free(ops);
    free(cfg);
    PQfinish(owner);
    return tl_done();
}
