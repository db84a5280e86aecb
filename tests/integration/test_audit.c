/* test_audit.c - the audit trail: a row for every admin write with actor, IP,
 * user agent, request id and diff; atomic with the change (a failed audit
 * insert undoes the change, a failed change leaves no row); GET
 * /api/v1/audit-logs shows a tenant admin only its own rows, keyset-paged */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static PGconn *owner;
static int port;
static char *ops;

static long
rows_of(const char *tid, const char *request_id)
{
    const char *p[2] = {tid, request_id};

    return tl_sql_long(owner,
                       "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND ($2::text IS NULL OR request_id = $2)",
                       2, p);
}

static long long
generation(const char *tid)
{
    return tl_redis_int("GET aigw:{%s}:gen", tid);
}

/* POST with a chosen request id and user agent */
static void
send_as(const char *method, const char *path, const char *token, const char *body, const char *rid,
        struct tl_resp *r)
{
    char hdr[128];
    const char *extra[3] = {hdr, "User-Agent: audit-test/2.0", NULL};

    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s", rid);
    tl_send(port, method, path, token, body, extra, r);
}

static void
test_cache_invalidate(const char *a, const char *acode)
{
    char *admin = tl_token(acode, "admin", 600), *manager = tl_token(acode, "manager", 600);
    char *optician = tl_token(acode, "optician", 600), rid[64];
    const char *p[2] = {a, rid};
    struct tl_resp r;
    long long gen;
    PGresult *q;

    snprintf(rid, sizeof(rid), "aud-inv-%08x", (unsigned)rand());
    send_as("POST", "/api/ai/cache/invalidate", admin, NULL, rid, &r);
    tl_expect_field("admin invalidates", &r, 200, NULL, NULL);
    gen = tl_json_int(&r, "generation", -1);
    CHECK(gen >= 1 && generation(a) == gen, "generation bumped to %lld", gen);
    tl_resp_free(&r);
    q = tl_sql(owner, true,
               "SELECT action, target, actor, actor_role, ip, user_agent, status FROM audit_logs"
               " WHERE tenant_id = $1 AND request_id = $2", 2, p);
    CHECK(PQntuples(q) == 1, "one audit row for the invalidation");
    if (PQntuples(q) == 1) {
        CHECK(strcmp(PQgetvalue(q, 0, 0), "cache.invalidate") == 0 && strcmp(PQgetvalue(q, 0, 1), "cache") == 0,
              "action and target");
        CHECK(strcmp(PQgetvalue(q, 0, 2), "user-1") == 0 && strcmp(PQgetvalue(q, 0, 3), "admin") == 0,
              "actor and role");
        CHECK(strcmp(PQgetvalue(q, 0, 4), "127.0.0.1") == 0 && strcmp(PQgetvalue(q, 0, 5), "audit-test/2.0") == 0,
              "ip and user agent");
        CHECK(strcmp(PQgetvalue(q, 0, 6), "success") == 0, "status");
    }
    PQclear(q);

    snprintf(rid, sizeof(rid), "aud-mgr-%08x", (unsigned)rand());
    send_as("POST", "/api/ai/cache/invalidate", manager, NULL, rid, &r);
    tl_expect_field("manager invalidates", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND request_id = $2"
                             " AND actor_role = 'manager'", 2, p) == 1,
          "manager's invalidation audited");

    snprintf(rid, sizeof(rid), "aud-opt-%08x", (unsigned)rand());
    gen = generation(a);
    send_as("POST", "/api/ai/cache/invalidate", optician, NULL, rid, &r);
    tl_expect_field("optician may not invalidate", &r, 403, "forbidden", NULL);
    tl_resp_free(&r);
    CHECK(rows_of(a, rid) == 0 && generation(a) == gen, "refused: no audit row, no invalidation");
    free(admin);
    free(manager);
    free(optician);
}

/* A User-Agent that is not UTF-8 (Latin-1 here) or too long must not fail
 * the audited change: it is stored with '?' for each invalid byte, cut to
 * at most 255 bytes between characters (PostgreSQL refused the whole insert, and
 * the change was rolled back with a 500). */
static void
test_odd_user_agent(const char *a, const char *acode)
{
    char *admin = tl_token(acode, "admin", 600), rid[64], hdr[128], ua[400];
    const char *extra[3] = {hdr, NULL, NULL};
    const char *p[2] = {a, rid};
    struct tl_resp r;
    long long gen = generation(a);
    PGresult *q;

    snprintf(rid, sizeof(rid), "aud-l1-%08x", (unsigned)rand());
    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s", rid);
    extra[1] = "User-Agent: M\xfcller-App/1.0 \xc3(\xe9)";
    tl_send(port, "POST", "/api/ai/cache/invalidate", admin, NULL, extra, &r);
    tl_expect_field("a Latin-1 user agent", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    CHECK(generation(a) == gen + 1, "the invalidation happened");
    q = tl_sql(owner, true, "SELECT user_agent FROM audit_logs WHERE tenant_id = $1 AND request_id = $2", 2, p);
    CHECK(PQntuples(q) == 1 && strcmp(PQgetvalue(q, 0, 0), "M?ller-App/1.0 ?(?)") == 0,
          "stored with the invalid bytes replaced: '%s'", PQntuples(q) == 1 ? PQgetvalue(q, 0, 0) : "(no row)");
    PQclear(q);

    snprintf(rid, sizeof(rid), "aud-long-%08x", (unsigned)rand());
    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s", rid);
    {
        int n = snprintf(ua, sizeof(ua), "User-Agent: ");

        while (n + 3 < (int)sizeof(ua))
            n += snprintf(ua + n, sizeof(ua) - (size_t)n, "\xc3\xa9"); /* é: 255 bytes would split one */
    }
    extra[1] = ua;
    tl_send(port, "POST", "/api/ai/cache/invalidate", admin, NULL, extra, &r);
    tl_expect_field("a long user agent", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    q = tl_sql(owner, true,
               "SELECT octet_length(user_agent), left(user_agent, 3) FROM audit_logs"
               " WHERE tenant_id = $1 AND request_id = $2", 2, p);
    CHECK(PQntuples(q) == 1 && strcmp(PQgetvalue(q, 0, 0), "254") == 0 &&
              strcmp(PQgetvalue(q, 0, 1), "\xc3\xa9\xc3\xa9\xc3\xa9") == 0,
          "cut to 254 bytes, not through the 128th character: %s", PQntuples(q) == 1 ? PQgetvalue(q, 0, 0) : "(no row)");
    PQclear(q);
    CHECK(generation(a) == gen + 2, "both invalidations happened");
    free(admin);
}

struct trail {
    const char *tid;
    long seen, last, first;
    bool ordered, own;
};

static void
each_row(struct json_t *row, void *ctx)
{
    struct trail *t = ctx;
    long id = (long)json_integer_value(json_object_get(row, "id"));
    char idtext[32];
    const char *p[2] = {t->tid, idtext};

    snprintf(idtext, sizeof(idtext), "%ld", id);
    t->ordered &= t->last == 0 || id < t->last;
    t->own &= tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND id = $2::bigint", 2, p) == 1;
    if (t->first == 0)
        t->first = id;
    t->last = id;
    t->seen++;
}

/* Walk every page; returns the rows seen, checks order and tenant. */
static long
walk_pages(const char *token, const char *tid, int limit, long *first_id)
{
    struct trail t = {tid, 0, 0, 0, true, true};
    char base[64];

    snprintf(base, sizeof(base), "/api/v1/audit-logs?limit=%d", limit);
    CHECK(tl_walk_pages(port, token, base, limit, "audit_logs", "next_before", "before", each_row, &t) > 0,
          "pages read");
    CHECK(t.ordered, "newest first, strictly descending ids, no repeats");
    CHECK(t.own, "every row shown belongs to the caller's tenant");
    *first_id = t.first;
    return t.seen;
}

static void
test_listing(const char *a, const char *acode, const char *b, const char *bcode)
{
    char *admin_a = tl_token(acode, "admin", 600), *admin_b = tl_token(bcode, "admin", 600);
    const char *pa[1] = {a}, *pb[1] = {b};
    struct tl_resp r;
    long first, total_a;
    PGresult *q;

    q = tl_sql(owner, true,
               "INSERT INTO audit_logs (tenant_id, actor, action, request_id)"
               " SELECT $1, 'seed', 'seed.action', 'seed-a-' || g FROM generate_series(1, 7) g", 1, pa);
    PQclear(q);
    q = tl_sql(owner, true,
               "INSERT INTO audit_logs (tenant_id, actor, action, request_id)"
               " SELECT $1, 'seed', 'seed.action', 'seed-b-' || g FROM generate_series(1, 4) g", 1, pb);
    PQclear(q);
    total_a = tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1", 1, pa);
    CHECK(walk_pages(admin_a, a, 3, &first) == total_a, "A's pages hold all %ld of A's rows", total_a);
    CHECK(walk_pages(admin_b, b, 100, &first) == tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1",
                                                             1, pb),
          "B sees exactly its own rows");
    tl_get(port, "/api/v1/audit-logs", admin_a, &r);
    tl_expect_field("default page", &r, 200, NULL, NULL);
    CHECK(strstr(r.body, "seed-b-") == NULL && strstr(r.body, "seed-a-7") != NULL, "A's page: own rows only");
    tl_resp_free(&r);

    /* a cursor pointing past B's rows still shows only A's */
    {
        char path[96];

        snprintf(path, sizeof(path), "/api/v1/audit-logs?before=%ld", first + 1000000);
        tl_get(port, path, admin_b, &r);
        CHECK(r.status == 200 && strstr(r.body, "seed-a-") == NULL, "B never sees A's rows");
        tl_resp_free(&r);
    }
    {
        static const char *const BAD[][2] = {
            {"/api/v1/audit-logs?limit=0", "limit"},
            {"/api/v1/audit-logs?limit=1000", "limit"},
            {"/api/v1/audit-logs?before=abc", "before"},
            {"/api/v1/audit-logs?before=0", "before"},
            {"/api/v1/audit-logs?before=-5", "before"},
        };

        for (size_t i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
            tl_get(port, BAD[i][0], admin_a, &r);
            tl_expect_field(BAD[i][0], &r, 400, "invalid_request", BAD[i][1]);
            tl_resp_free(&r);
        }
    }
    {
        static const char *const ROLES[] = {"manager", "optician", "receptionist", "platform_admin"};

        for (size_t i = 0; i < sizeof(ROLES) / sizeof(ROLES[0]); i++) {
            char *tok = tl_token(acode, ROLES[i], 600);

            tl_get(port, "/api/v1/audit-logs", tok, &r);
            tl_expect_field(ROLES[i], &r, 403, "forbidden", NULL);
            CHECK(strstr(r.body, "seed-") == NULL, "%s: nothing shown", ROLES[i]);
            tl_resp_free(&r);
            free(tok);
        }
    }
    free(admin_a);
    free(admin_b);
}

/* A platform operator's change shows in the tenant's own trail. */
static void
test_platform_change_visible(const char *a, const char *acode)
{
    char *admin = tl_token(acode, "admin", 600), path[96], rid[64];
    struct tl_resp r;
    json_t *root, *row;

    snprintf(path, sizeof(path), "/api/v1/tenants/%s", a);
    snprintf(rid, sizeof(rid), "aud-ops-%08x", (unsigned)rand());
    send_as("PUT", path, ops, "{\"name\":\"Audited Name\",\"cache_ttl_s\":600}", rid, &r);
    tl_expect_field("platform rename", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    tl_get(port, "/api/v1/audit-logs?limit=1", admin, &r);
    root = json_loads(r.body, 0, NULL);
    row = json_array_get(json_object_get(root, "audit_logs"), 0);
    CHECK(row != NULL && strcmp(json_string_value(json_object_get(row, "action")), "tenant.update") == 0 &&
              strcmp(json_string_value(json_object_get(row, "actor")), "platform:ops-1") == 0 &&
              strcmp(json_string_value(json_object_get(row, "actor_role")), "platform_admin") == 0 &&
              strcmp(json_string_value(json_object_get(row, "request_id")), rid) == 0 &&
              strcmp(json_string_value(json_object_get(row, "user_agent")), "audit-test/2.0") == 0,
          "the tenant admin sees the operator's change first: %s", r.body);
    CHECK(json_integer_value(json_object_get(json_object_get(json_object_get(row, "details"), "cache_ttl_s"), "to")) ==
                  600 &&
              strcmp(json_string_value(json_object_get(json_object_get(json_object_get(row, "details"), "name"), "to")),
                     "Audited Name") == 0,
          "with the diff");
    json_decref(root);
    tl_resp_free(&r);
    free(admin);
}

/* Force the audit insert (or the change itself) to fail inside the
 * transaction: the change must vanish with it, and no row may remain. */
static void
test_atomicity(const char *a, const char *acode)
{
    char *admin = tl_token(acode, "admin", 600), path[128], rid[64], code[65], body[256];
    const char *p[1] = {a}, *pc[1] = {code};
    struct tl_resp r;
    long long gen = generation(a);
    long before;
    PGresult *q;

    q = tl_sql(owner, true,
               "CREATE FUNCTION aigw_test_fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
               " IF TG_TABLE_NAME = 'audit_logs' AND NEW.request_id LIKE 'fail-audit-%' THEN"
               "   RAISE EXCEPTION 'forced audit failure'; END IF;"
               " IF TG_TABLE_NAME = 'tenants' AND NEW.name LIKE 'fail-change%' THEN"
               "   RAISE EXCEPTION 'forced change failure'; END IF;"
               " RETURN NEW; END $$", 0, NULL);
    PQclear(q);
    q = tl_sql(owner, true, "CREATE TRIGGER aigw_test_fail BEFORE INSERT ON audit_logs FOR EACH ROW"
                            " EXECUTE FUNCTION aigw_test_fail()", 0, NULL);
    PQclear(q);
    q = tl_sql(owner, true, "CREATE TRIGGER aigw_test_fail BEFORE UPDATE ON tenants FOR EACH ROW"
                            " EXECUTE FUNCTION aigw_test_fail()", 0, NULL);
    PQclear(q);
    before = rows_of(a, NULL);

    send_as("POST", "/api/ai/cache/invalidate", admin, NULL, "fail-audit-inv", &r);
    tl_expect_field("invalidate, audit insert fails", &r, 500, "internal", NULL);
    tl_resp_free(&r);
    CHECK(generation(a) == gen, "no audit row, no invalidation");

    snprintf(path, sizeof(path), "/api/v1/tenants/%s", a);
    send_as("PUT", path, ops, "{\"name\":\"Never Stored\",\"status\":\"suspended\"}", "fail-audit-put", &r);
    tl_expect_field("update, audit insert fails", &r, 500, "internal", NULL);
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM tenants WHERE id = $1 AND name = 'Audited Name'"
                             " AND status = 'active'", 1, p) == 1,
          "the update was rolled back with its audit row");
    {
        char *tok = tl_token(acode, "optician", 600);

        tl_get(port, "/api/ai/limits", tok, &r);
        tl_expect_field("tenant still active on the gateway", &r, 200, NULL, NULL);
        tl_resp_free(&r);
        free(tok);
    }

    snprintf(path, sizeof(path), "/api/v1/tenants/%s/upgrade", a);
    send_as("POST", path, ops, "{\"tier\":\"enterprise\"}", "fail-audit-upg", &r);
    tl_expect_field("upgrade, audit insert fails", &r, 500, "internal", NULL);
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM tenants WHERE id = $1 AND tier = 'pro'", 1, p) == 1,
          "the upgrade was rolled back with its audit row");

    snprintf(code, sizeof(code), "aud_%08x", (unsigned)rand());
    snprintf(body, sizeof(body), "{\"code\":\"%s\",\"name\":\"Never Onboarded\",\"tier\":\"pro\"}", code);
    send_as("POST", "/api/v1/tenants", ops, body, "fail-audit-new", &r);
    tl_expect_field("create, audit insert fails", &r, 500, "internal", NULL);
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM tenants WHERE code = $1", 1, pc) == 0,
          "the new tenant was rolled back with its audit row");

    snprintf(path, sizeof(path), "/api/v1/tenants/%s", a);
    snprintf(rid, sizeof(rid), "aud-chg-%08x", (unsigned)rand());
    send_as("PUT", path, ops, "{\"name\":\"fail-change now\"}", rid, &r);
    tl_expect_field("update, the change itself fails", &r, 500, "internal", NULL);
    tl_resp_free(&r);
    CHECK(rows_of(a, NULL) == before, "no failed write left an audit row");

    q = tl_sql(owner, true, "DROP FUNCTION aigw_test_fail() CASCADE", 0, NULL);
    PQclear(q);

    /* and with nothing in the way, the same writes always leave one */
    send_as("PUT", path, ops, "{\"name\":\"Stored Now\"}", "ok-audit-put", &r);
    tl_expect_field("update succeeds", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    send_as("POST", "/api/ai/cache/invalidate", admin, NULL, "ok-audit-inv", &r);
    tl_expect_field("invalidate succeeds", &r, 200, NULL, NULL);
    tl_resp_free(&r);
    CHECK(rows_of(a, "ok-audit-put") == 1 && rows_of(a, "ok-audit-inv") == 1 && rows_of(a, NULL) == before + 2,
          "each successful write has exactly one audit row");
    free(admin);
}

/* API keys: the key row (or its revocation) and the audit row commit
 * together. A failed audit insert is a statement error on a reachable
 * database: 500 internal like every other admin write, not 503 "retry
 * shortly" (a retry fails the same way), and nothing of the change stays:
 * no key row, no revocation, no revocation marker in Redis. */
static void
test_api_key_atomicity(void)
{
    char tid[37], tcode[65], key[128], kid[37], path[128], rid[64], hdr[16];
    const char *p[1] = {tid}, *pk[1] = {kid};
    char *admin;
    struct tl_resp r;
    PGresult *q;

    tl_create_tenant(owner, "enterprise", "active", tid, tcode);
    admin = tl_token(tcode, "admin", 600);
    CHECK(tl_api_key_create(port, admin, "{\"name\":\"audited key\"}", key, sizeof(key), kid) == 201, "key created");
    q = tl_sql(owner, true,
               "CREATE FUNCTION aigw_test_fail_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
               " IF NEW.request_id LIKE 'fail-key-%' THEN RAISE EXCEPTION 'forced audit failure'; END IF;"
               " RETURN NEW; END $$", 0, NULL);
    PQclear(q);
    q = tl_sql(owner, true, "CREATE TRIGGER aigw_test_fail_key BEFORE INSERT ON audit_logs FOR EACH ROW"
                            " EXECUTE FUNCTION aigw_test_fail_key()", 0, NULL);
    PQclear(q);

    send_as("POST", "/api/v1/api-keys", admin, "{\"name\":\"never stored\"}", "fail-key-create", &r);
    tl_expect_field("api key create, audit insert fails", &r, 500, "internal", NULL);
    CHECK(tl_resp_header(&r, "Retry-After", hdr, sizeof(hdr)) == NULL, "no Retry-After on a 500");
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM api_keys WHERE tenant_id = $1", 1, p) == 1,
          "the key row was rolled back with its audit row");

    snprintf(path, sizeof(path), "/api/v1/api-keys/%s", kid);
    send_as("DELETE", path, admin, NULL, "fail-key-revoke", &r);
    tl_expect_field("api key revoke, audit insert fails", &r, 500, "internal", NULL);
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM api_keys WHERE id = $1 AND revoked_at IS NULL", 1, pk) == 1,
          "the revocation was rolled back with its audit row");
    CHECK(tl_redis_int("EXISTS aigw:{%s}:kr:%s", tid, kid) == 0, "no revocation marker");
    tl_key_request(port, "GET", "/api/ai/limits", key, false, NULL, &r);
    tl_expect_field("the key still works", &r, 200, NULL, NULL);
    tl_resp_free(&r);

    q = tl_sql(owner, true, "DROP FUNCTION aigw_test_fail_key() CASCADE", 0, NULL);
    PQclear(q);
    snprintf(rid, sizeof(rid), "ok-key-%08x", (unsigned)rand());
    send_as("DELETE", path, admin, NULL, rid, &r);
    tl_expect_field("api key revoke succeeds", &r, 204, NULL, NULL);
    tl_resp_free(&r);
    CHECK(rows_of(tid, rid) == 1, "the revocation has its audit row");
    q = tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p);
    PQclear(q);
    free(admin);
}

int
main(void)
{
    struct tl_aigw gw;
    char a[37], acode[65], b[37], bcode[65];
    const char *pab[2] = {a, b};
    PGresult *q;

    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    owner = tl_pg_owner();
    if (tl_aigw_start(&gw, NULL) != 0)
        return 1;
    port = gw.port;
    ops = tl_platform_token("platform_admin", 600);
    tl_create_tenant(owner, "pro", "active", a, acode);
    tl_create_tenant(owner, "pro", "active", b, bcode);

    test_cache_invalidate(a, acode);
    test_odd_user_agent(a, acode);
    test_listing(a, acode, b, bcode);
    test_platform_change_visible(a, acode);
    test_atomicity(a, acode);
    test_api_key_atomicity();

    q = tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1 OR id = $2", 2, pab);
    PQclear(q);
    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    free(ops);
    PQfinish(owner);
    return tl_done();
}
