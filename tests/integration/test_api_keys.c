/* test_api_keys.c - end to end: creating, listing, using and revoking API
 * keys through two aigw instances; scopes, plans, per-key rate limits,
 * expiry, last_used_at batching, audit rows, and no key in any log */
#include <ctype.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

#define QUESTION "{\"question\":\"How do I clean anti-reflective lenses?\"}"
#define MAX_KEYS 32

static int port1, port2;
static struct tl_aigw gw1, gw2;
static PGconn *owner;
static char keys_seen[MAX_KEYS][128]; /* every key created: none may show up in a log */
static int n_keys_seen;

/* ---- helpers ---- */

/* Remember a created key for the log checks. */
static void
remember(const char *key)
{
    size_t n = strnlen(key, sizeof(keys_seen[0]) - 1);

    if (n_keys_seen == MAX_KEYS)
        return;
    memcpy(keys_seen[n_keys_seen], key, n);
    keys_seen[n_keys_seen++][n] = '\0';
}

/* A fresh tenant of tier; returns a malloc'd admin token for it. */
static char *
new_tenant(const char *tier, char id[37], char code[65])
{
    tl_create_tenant(owner, tier, "active", id, code);
    return tl_token(code, "admin", 3600);
}

static long
create_key(int port, const char *token, const char *json, char key[128], char id[37])
{
    long status = tl_api_key_create(port, token, json, key, 128, id);

    if (status == 201)
        remember(key);
    return status;
}

/* Use key on path (POST /api/ai/query when path is NULL, else GET path). */
static long
use_key(int port, const char *key, const char *path, struct tl_resp *r)
{
    if (path == NULL)
        tl_key_request(port, "POST", "/api/ai/query", key, false, QUESTION, r);
    else
        tl_key_request(port, "GET", path, key, false, NULL, r);
    return r->status;
}

static void
expect_use(const char *name, int port, const char *key, const char *path, long status, const char *code)
{
    struct tl_resp r;

    use_key(port, key, path, &r);
    tl_expect(name, &r, status, code);
    tl_resp_free(&r);
}

/* Poll a use of key until it answers want (or timeout_ms pass); last status. */
static long
wait_use(int port, const char *key, long want, int timeout_ms)
{
    long status = 0;

    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        struct tl_resp r;

        status = use_key(port, key, "/api/ai/limits", &r);
        tl_resp_free(&r);
        if (status == want)
            break;
        usleep(100 * 1000);
    }
    return status;
}

static long
sql1(const char *sql, const char *a, const char *b)
{
    const char *p[2] = {a, b};

    return tl_sql_long(owner, sql, b ? 2 : a ? 1 : 0, p);
}

static void
sha_hex(const char *key, char out[65])
{
    unsigned char md[32];

    SHA256((const unsigned char *)key, strlen(key), md);
    for (int i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static long
audit_count(const char *tenant, const char *action)
{
    return sql1("SELECT count(*) FROM audit_logs WHERE tenant_id = $1::uuid AND action = $2", tenant, action);
}

/* ---- tests ---- */

static void
test_create_and_use(void)
{
    char tid[37], code[65], key[128], id[37], prefix[32], hex[65], buf[256];
    char *admin = new_tenant("enterprise", tid, code);
    struct tl_resp r;

    tl_post(port1, "/api/v1/api-keys", admin, "{\"name\":\"reporting job\"}", &r);
    tl_expect("create", &r, 201, NULL);
    tl_json_str(&r, "key", key, sizeof(key));
    tl_json_str(&r, "id", id, sizeof(id));
    tl_json_str(&r, "prefix", prefix, sizeof(prefix));
    remember(key);
    CHECK(strncmp(key, "aigw_", 5) == 0 && strlen(key) == 48, "key format: %s", key);
    CHECK(strlen(prefix) == 13 && strncmp(key, prefix, 13) == 0, "prefix %s is the key's start", prefix);
    CHECK(strstr(r.body, "\"scopes\":[\"query\"]") != NULL, "default scope query: %s", r.body);
    CHECK(strstr(r.body, "\"requests_per_minute\":null") && strstr(r.body, "\"expires_at\":null") &&
              tl_json_str(&r, "status", buf, sizeof(buf)) && strcmp(buf, "active") == 0 &&
              tl_json_str(&r, "created_at", buf, sizeof(buf)) != NULL,
          "created key fields: %s", r.body);
    tl_resp_free(&r);

    /* stored: the hash only */
    sha_hex(key, hex);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE id = $1::uuid AND secret_sha256 = decode($2, 'hex')", id, hex) ==
              1,
          "row keyed by the key's SHA-256");
    CHECK(sql1("SELECT count(*) FROM api_keys k WHERE k.id = $1::uuid AND strpos(k::text, $2) > 0", id, key + 5) == 0,
          "no column holds the key");
    CHECK(sql1("SELECT count(*) FROM audit_logs WHERE action = 'api_key.create' AND target = $1 AND actor = 'user-1'"
               " AND actor_role = 'admin' AND details->>'prefix' = $2 AND details->>'name' = 'reporting job'",
               id, prefix) == 1,
          "create audit row");
    CHECK(sql1("SELECT count(*) FROM audit_logs WHERE target = $1 AND strpos(details::text, $2) > 0", id, key + 5) ==
              0,
          "audit details hold no key");

    /* works with X-API-Key and with Bearer, on every query-scope route */
    expect_use("query with X-API-Key", port1, key, NULL, 200, NULL);
    tl_key_request(port2, "POST", "/api/ai/query", key, true, QUESTION, &r);
    tl_expect("query with Bearer", &r, 200, NULL);
    tl_resp_free(&r);
    use_key(port1, key, "/api/ai/limits", &r);
    tl_expect("limits", &r, 200, NULL);
    CHECK(tl_json_str(&r, "tenant", buf, sizeof(buf)) && strcmp(buf, code) == 0, "limits of the key's tenant");
    tl_resp_free(&r);
    expect_use("usage", port1, key, "/api/ai/usage", 200, NULL);
    tl_key_request(port1, "POST", "/api/ai/recommendation", key, false, "{\"product_type\":\"progressive lens\"}", &r);
    tl_expect("recommendation", &r, 200, NULL);
    tl_resp_free(&r);

    CHECK(tl_wait_sql(owner, 1, 10000,
                      "SELECT LEAST(count(*), 1) FROM ai_usage_logs WHERE api_key_id = $1::uuid AND user_id IS NULL"
                      " AND status_code = 200",
                      1, (const char *const[]){id}) == 1,
          "usage rows carry api_key_id");
    CHECK(tl_wait_sql(owner, 1, 10000, "SELECT count(*) FROM api_keys WHERE id = $1::uuid AND last_used_at IS NOT NULL",
                      1, (const char *const[]){id}) == 1,
          "last_used_at set by the batched flush");
    free(admin);
}

static void
test_creator_user(void)
{
    const char *secret = tl_env("AIGW_JWT_SECRET");
    char claims[512], key[128], id[37];
    char *tok;

    snprintf(claims, sizeof(claims),
             "{\"sub\":\"a2222222-0000-4000-8000-000000000001\",\"tenant_id\":\"clinic_002\",\"role\":\"admin\","
             "\"exp\":%ld}",
             (long)time(NULL) + 600);
    tok = tl_sign("HS256", "dev", secret, strlen(secret), claims);
    CHECK(create_key(port1, tok, "{\"name\":\"by a known user\"}", key, id) == 201, "create as a known user");
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE id = $1::uuid AND user_id = $2::uuid", id,
               "a2222222-0000-4000-8000-000000000001") == 1,
          "user_id records the creating user");
    free(tok);
}

static void
test_listing(void)
{
    char tid[37], code[65], key[3][128], id[3][37], hex[65], next[64], path[160];
    char *admin = new_tenant("enterprise", tid, code), *other = tl_token("clinic_002", "admin", 600);
    struct tl_resp r;
    int seen[3] = {0, 0, 0};

    for (int i = 0; i < 3; i++) {
        char body[64];

        snprintf(body, sizeof(body), "{\"name\":\"key %d\"}", i);
        CHECK(create_key(port1, admin, body, key[i], id[i]) == 201, "create %d", i);
        usleep(20 * 1000);
    }
    tl_get(port1, "/api/v1/api-keys", admin, &r);
    tl_expect("list", &r, 200, NULL);
    for (int i = 0; i < 3; i++) {
        sha_hex(key[i], hex);
        CHECK(strstr(r.body, id[i]) != NULL, "list shows key %d", i);
        CHECK(strstr(r.body, key[i] + 5) == NULL, "list hides secret %d", i);
        CHECK(strstr(r.body, hex) == NULL, "list hides the hash of key %d", i);
    }
    CHECK(strstr(r.body, "secret") == NULL && strstr(r.body, "\"key\"") == NULL, "no secret field: %s", r.body);
    CHECK(strstr(r.body, id[2]) < strstr(r.body, id[0]), "newest first");
    tl_resp_free(&r);

    /* keyset pages of 2 */
    tl_get(port1, "/api/v1/api-keys?limit=2", admin, &r);
    tl_expect("page 1", &r, 200, NULL);
    for (int i = 0; i < 3; i++)
        seen[i] += strstr(r.body, id[i]) != NULL;
    CHECK(tl_json_str(&r, "next_before", next, sizeof(next)) != NULL, "page 1 has a next cursor");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/api-keys?limit=2&before=%s", next);
    tl_get(port1, path, admin, &r);
    tl_expect("page 2", &r, 200, NULL);
    for (int i = 0; i < 3; i++)
        seen[i] += strstr(r.body, id[i]) != NULL;
    CHECK(strstr(r.body, "\"next_before\":null") != NULL, "last page: %s", r.body);
    tl_resp_free(&r);
    CHECK(seen[0] == 1 && seen[1] == 1 && seen[2] == 1, "every key on exactly one page");

    tl_get(port1, "/api/v1/api-keys?limit=0", admin, &r);
    tl_expect("limit 0", &r, 400, "invalid_request");
    tl_resp_free(&r);
    tl_get(port1, "/api/v1/api-keys?before=xyz", admin, &r);
    tl_expect("bad cursor", &r, 400, "invalid_request");
    tl_resp_free(&r);
    /* a cursor that names no key of this tenant is no position in the list:
     * an empty last page would tell the client it had seen every key */
    tl_get(port1, "/api/v1/api-keys?before=0b9f8f52-5d44-4c1a-9d0e-3c6f2b7a9e11", admin, &r);
    tl_expect_field("unknown cursor", &r, 400, "invalid_request", "before");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/api-keys?before=%s", id[1]);
    tl_get(port1, path, other, &r);
    tl_expect_field("another tenant's key as cursor (same answer as unknown)", &r, 400, "invalid_request", "before");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/api-keys?before=%s", id[0]);
    tl_get(port1, path, admin, &r);
    tl_expect("the oldest key as cursor: an empty last page", &r, 200, NULL);
    CHECK(strstr(r.body, "\"api_keys\":[]") != NULL && strstr(r.body, "\"next_before\":null") != NULL,
          "nothing before the oldest key: %s", r.body);
    tl_resp_free(&r);
    tl_get(port1, "/api/v1/api-keys", other, &r);
    tl_expect("other tenant's list", &r, 200, NULL);
    CHECK(strstr(r.body, id[0]) == NULL, "another tenant never sees these keys");
    tl_resp_free(&r);
    free(admin);
    free(other);
}

/* The key's times read as the audit trail and the tenants print theirs: the
 * second they fall in. Cast to bigint, the epoch was rounded, so a key made
 * at 10:00:00.7 was listed as created at 10:00:01, a second after its
 * audit row said it was created, and a revocation could be dated after
 * the 204 that answered it. */
static void
test_listed_times(void)
{
    char tid[37], code[65], key[128], id[37], got[64], want[64];
    char *admin = new_tenant("enterprise", tid, code);
    static const char *const fields[] = {"created_at", "expires_at", "revoked_at"};
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"fractions\"}", key, id) == 201, "create");
    PQclear(tl_sql(owner, true,
                   "UPDATE api_keys SET created_at = date_trunc('second', now()) - interval '1 hour 0.3 s',"
                   " expires_at = date_trunc('second', now()) + interval '1 day 0.6 s',"
                   " revoked_at = date_trunc('second', now()) - interval '0.4 s' WHERE id = $1::uuid",
                   1, (const char *const[]){id}));
    tl_get(port1, "/api/v1/api-keys", admin, &r);
    tl_expect("list", &r, 200, NULL);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        char *sql = tl_sprintf("SELECT to_char(%s AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                               " FROM api_keys WHERE id = $1::uuid",
                               fields[i]);
        PGresult *res = tl_sql(owner, true, sql, 1, (const char *const[]){id});
        char *path = tl_sprintf("api_keys.0.%s", fields[i]);

        snprintf(want, sizeof(want), "%s", PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "?");
        if (tl_json_str(&r, path, got, sizeof(got)) == NULL)
            snprintf(got, sizeof(got), "nothing");
        CHECK(strcmp(got, want) == 0, "%s: %s (listed %s)", fields[i], want, got);
        PQclear(res);
        free(path);
        free(sql);
    }
    tl_resp_free(&r);
    free(admin);
}

static void
test_admin_routes_refuse_keys(void)
{
    char tid[37], code[65], key[128], id[37], path[128];
    char *admin = new_tenant("enterprise", tid, code), *optician = tl_token(code, "optician", 600);
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"k\",\"scopes\":[\"query\",\"chat\"]}", key, id) == 201, "create");
    tl_key_request(port1, "POST", "/api/v1/api-keys", key, false, "{\"name\":\"from a key\"}", &r);
    tl_expect("a key creating a key", &r, 403, "forbidden");
    tl_resp_free(&r);
    tl_key_request(port1, "POST", "/api/v1/api-keys", key, true, "{\"name\":\"from a key\"}", &r);
    tl_expect("a Bearer key creating a key", &r, 403, "forbidden");
    tl_resp_free(&r);
    expect_use("a key listing keys", port1, key, "/api/v1/api-keys", 403, "forbidden");
    snprintf(path, sizeof(path), "/api/v1/api-keys/%s", id);
    tl_key_request(port1, "DELETE", path, key, false, NULL, &r);
    tl_expect("a key revoking a key", &r, 403, "forbidden");
    tl_resp_free(&r);
    tl_key_request(port1, "POST", "/api/ai/cache/invalidate", key, false, "{}", &r);
    tl_expect("a key on a JWT-only route", &r, 403, "forbidden");
    tl_resp_free(&r);

    tl_post(port1, "/api/v1/api-keys", optician, "{\"name\":\"x\"}", &r);
    tl_expect("optician creating", &r, 403, "forbidden");
    tl_resp_free(&r);
    tl_get(port1, "/api/v1/api-keys", optician, &r);
    tl_expect("optician listing", &r, 403, "forbidden");
    tl_resp_free(&r);
    tl_delete(port1, path, optician, &r);
    tl_expect("optician revoking", &r, 403, "forbidden");
    tl_resp_free(&r);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE tenant_id = $1::uuid", tid, NULL) == 1, "nothing created");
    expect_use("the key still works", port1, key, NULL, 200, NULL);
    free(admin);
    free(optician);
}

static void
test_rejected_credentials(void)
{
    char tid[37], code[65], key[128], id[37], www[256], unknown[64];
    char *admin = new_tenant("enterprise", tid, code);
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"k\"}", key, id) == 201, "create");
    memcpy(unknown, key, 49);
    unknown[10] = unknown[10] == 'A' ? 'B' : 'A'; /* well formed, but no such key */
    expect_use("unknown key", port1, unknown, NULL, 401, "unauthenticated");
    use_key(port1, unknown, "/api/ai/limits", &r);
    CHECK(tl_resp_header(&r, "WWW-Authenticate", www, sizeof(www)) && strstr(www, "invalid_token"),
          "WWW-Authenticate names invalid_token");
    tl_resp_free(&r);
    expect_use("malformed key", port1, "aigw_short", NULL, 401, "unauthenticated");
    expect_use("garbage X-API-Key", port1, "not a key at all", NULL, 401, "unauthenticated");
    tl_key_request(port1, "GET", "/api/ai/limits", "aigw_!!!!", true, NULL, &r);
    tl_expect("malformed Bearer key", &r, 401, "unauthenticated");
    tl_resp_free(&r);
    {
        char h1[200], h2[200];
        const char *hdrs[] = {h1, h2, NULL};

        snprintf(h1, sizeof(h1), "X-API-Key: %s", key);
        snprintf(h2, sizeof(h2), "Authorization: Bearer %s", admin);
        tl_http(port1, "GET", "/api/ai/limits", hdrs, NULL, 0, &r);
        tl_expect("two credentials", &r, 401, "unauthenticated");
        tl_resp_free(&r);
    }
    expect_use("the real key", port1, key, "/api/ai/limits", 200, NULL);
    free(admin);
}

static void
test_scopes(void)
{
    char tid[37], code[65], chat[128], both[128], id[37];
    char *admin = new_tenant("enterprise", tid, code);
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"chat only\",\"scopes\":[\"chat\"]}", chat, id) == 201, "chat key");
    CHECK(create_key(port1, admin, "{\"name\":\"both\",\"scopes\":[\"query\",\"chat\"]}", both, id) == 201,
          "query+chat key");
    use_key(port1, chat, NULL, &r);
    tl_expect("chat key on /api/ai/query", &r, 403, "forbidden");
    CHECK(strstr(r.body, "\"required_scope\":\"query\"") != NULL, "names the missing scope: %s", r.body);
    tl_resp_free(&r);
    expect_use("chat key on /api/ai/limits", port1, chat, "/api/ai/limits", 403, "forbidden");
    expect_use("query+chat key on /api/ai/query", port1, both, NULL, 200, NULL);
    free(admin);
}

static void
test_key_rate_limit(void)
{
    char tid[37], code[65], key[128], id[37], free_key[128], hdr[256];
    char *admin = new_tenant("enterprise", tid, code);
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"slow\",\"requests_per_minute\":3}", key, id) == 201, "rpm key");
    CHECK(create_key(port1, admin, "{\"name\":\"free\"}", free_key, id) == 201, "unlimited key");
    /* /api/ai/limits tells each caller the per-minute limit its next
     * request meets (RateLimit-Policy below): the key's own when tighter */
    use_key(port1, key, "/api/ai/limits", &r);
    CHECK(r.status == 200 && tl_json_int(&r, "requests_per_minute", 0) == 3,
          "limits for a 3 rpm key: requests_per_minute 3: %s", r.body);
    tl_resp_free(&r);
    use_key(port1, free_key, "/api/ai/limits", &r);
    CHECK(r.status == 200 && tl_json_int(&r, "requests_per_minute", 0) == 100,
          "limits for a key without its own limit: the tenant's 100: %s", r.body);
    tl_resp_free(&r);
    tl_get(port1, "/api/ai/limits", admin, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "requests_per_minute", 0) == 100, "limits for a JWT: the tenant's 100: %s",
          r.body);
    tl_resp_free(&r);
    for (int i = 0; i < 3; i++) {
        use_key(i % 2 ? port2 : port1, key, NULL, &r);
        tl_expect("within the key's limit", &r, 200, NULL);
        CHECK(tl_resp_header(&r, "RateLimit-Policy", hdr, sizeof(hdr)) && strstr(hdr, "\"minute\";q=3;w=60"),
              "policy shows the key's tighter limit: %s", hdr);
        tl_resp_free(&r);
    }
    use_key(port2, key, NULL, &r);
    tl_expect("4th request of a 3 rpm key", &r, 429, "rate_limited");
    CHECK(tl_json_int(&r, "error.limit", 0) == 3 && strstr(r.body, "\"policy\":\"api_key\""), "429 body: %s", r.body);
    CHECK(tl_resp_header(&r, "Retry-After", hdr, sizeof(hdr)) != NULL, "Retry-After");
    CHECK(tl_resp_header(&r, "RateLimit", hdr, sizeof(hdr)) && strstr(hdr, "r=0"), "nothing left: %s", hdr);
    tl_resp_free(&r);

    /* the tenant (100 rpm) is far from its limit: other callers go on */
    use_key(port1, free_key, NULL, &r);
    tl_expect("another key of the tenant", &r, 200, NULL);
    CHECK(tl_resp_header(&r, "RateLimit-Policy", hdr, sizeof(hdr)) && strstr(hdr, "\"minute\";q=100;w=60"),
          "tenant policy for a key without its own limit: %s", hdr);
    tl_resp_free(&r);
    tl_post(port1, "/api/ai/query", admin, QUESTION, &r);
    tl_expect("a JWT of the tenant", &r, 200, NULL);
    tl_resp_free(&r);
    free(admin);
}

/* How many lines of gw's log hold both a and b. */
static int
log_lines(const struct tl_aigw *gw, const char *a, const char *b)
{
    char *log = tl_aigw_log(gw), *line = log, *nl;
    int n = 0;

    for (; line != NULL && *line != '\0'; line = nl != NULL ? nl + 1 : NULL) {
        nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        n += strstr(line, a) != NULL && strstr(line, b) != NULL;
    }
    free(log);
    return n;
}

static void
test_revocation(void)
{
    char tid[37], code[65], key[128], id[37], other_key[128], other_id[37], path[128], marker[160];
    char *admin = new_tenant("enterprise", tid, code), *other_admin = tl_token("clinic_002", "admin", 600);
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"to revoke\"}", key, id) == 201, "create");
    CHECK(create_key(port1, other_admin, "{\"name\":\"other tenant\"}", other_key, other_id) == 201, "create other");
    /* cached on both instances */
    expect_use("before revoke, instance 2 query", port2, key, NULL, 200, NULL);
    expect_use("before revoke, instance 2 limits", port2, key, "/api/ai/limits", 200, NULL);
    expect_use("before revoke, instance 1", port1, key, NULL, 200, NULL);

    /* the marker alone refuses a cached key: what covers the moment before
     * an instance gets the NOTIFY (admission script and the other routes) */
    snprintf(marker, sizeof(marker), "aigw:{%s}:kr:%s", tid, id);
    tl_redis_int("SET %s 1 EX 60", marker);
    CHECK(tl_redis_int("EXISTS %s", marker) == 1, "a marker set by hand");
    expect_use("marker only, query", port2, key, NULL, 401, "unauthenticated");
    expect_use("marker only, limits", port2, key, "/api/ai/limits", 401, "unauthenticated");
    tl_redis_int("DEL %s", marker);
    expect_use("marker removed, key not revoked", port2, key, NULL, 200, NULL);

    snprintf(path, sizeof(path), "/api/v1/api-keys/%s", id);
    tl_delete(port1, path, admin, &r);
    tl_expect("revoke through instance 1", &r, 204, NULL);
    {
        /* no content, so no type: a client that parses JSON when the type
         * says so (fetch + res.json()) failed on the empty 204 */
        char ct[128];

        CHECK(tl_resp_header(&r, "Content-Type", ct, sizeof(ct)) == NULL && r.body_len == 0,
              "the 204 has no body and no Content-Type (%s)", tl_resp_header(&r, "Content-Type", ct, sizeof(ct)) ? ct : "none");
    }
    tl_resp_free(&r);
    /* the very next request, on the other instance */
    expect_use("next query on instance 2", port2, key, NULL, 401, "unauthenticated");
    expect_use("next limits on instance 2", port2, key, "/api/ai/limits", 401, "unauthenticated");
    expect_use("next query on instance 1", port1, key, NULL, 401, "unauthenticated");
    CHECK(tl_redis_int("EXISTS %s", marker) == 1, "revocation marker in Redis");
    CHECK(audit_count(tid, "api_key.revoke") == 1, "revoke audit row");
    CHECK(sql1("SELECT count(*) FROM audit_logs WHERE action = 'api_key.revoke' AND target = $1 AND actor = 'user-1'",
               id, NULL) == 1,
          "revoke audit row names the key and the actor");

    /* without the marker the database still says revoked (NOTIFY emptied the caches) */
    tl_redis_int("DEL %s", marker);
    usleep(300 * 1000);
    expect_use("revoked, marker gone, instance 2", port2, key, NULL, 401, "unauthenticated");
    expect_use("revoked, marker gone, instance 1", port1, key, "/api/ai/limits", 401, "unauthenticated");

    tl_delete(port2, path, admin, &r);
    tl_expect("revoke again", &r, 204, NULL);
    tl_resp_free(&r);
    CHECK(audit_count(tid, "api_key.revoke") == 1, "a repeated revoke writes no second audit row");
    CHECK(log_lines(&gw1, "api key revoked", id) == 1 && log_lines(&gw2, "api key revoked", id) == 0,
          "only the revoke that revoked logs 'api key revoked' (instance 1: %d, instance 2: %d)",
          log_lines(&gw1, "api key revoked", id), log_lines(&gw2, "api key revoked", id));
    tl_get(port1, "/api/v1/api-keys", admin, &r);
    CHECK(strstr(r.body, "\"status\":\"revoked\"") != NULL, "listing shows the key revoked: %s", r.body);
    tl_resp_free(&r);

    tl_delete(port1, "/api/v1/api-keys/99999999-9999-4999-8999-999999999999", admin, &r);
    tl_expect("unknown id", &r, 404, "not_found");
    tl_resp_free(&r);
    tl_delete(port1, "/api/v1/api-keys/not-a-uuid", admin, &r);
    tl_expect("malformed id", &r, 404, "not_found");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/api-keys/%s", other_id);
    tl_delete(port1, path, admin, &r);
    tl_expect("another tenant's key", &r, 404, "not_found");
    tl_resp_free(&r);
    expect_use("the other tenant's key still works", port2, other_key, "/api/ai/limits", 200, NULL);
    CHECK(audit_count(tid, "api_key.revoke") == 1, "404s write no audit row");
    free(admin);
    free(other_admin);
}

/* A UUID is case-insensitive: revoking by the id in upper case must set the
 * same marker, audit the same target and empty the same cache entry as the
 * id in lower case (it set a marker under the upper-case id, which no
 * admission ever looks up, so the key kept working on every instance that
 * had not had the NOTIFY yet). */
static void
test_revocation_upper_case_id(void)
{
    char tid[37], code[65], key[128], id[37], upper[37], path[128], marker[160];
    char *admin = new_tenant("enterprise", tid, code);
    struct tl_resp r;

    CHECK(create_key(port1, admin, "{\"name\":\"revoked in capitals\"}", key, id) == 201, "create");
    expect_use("before revoke, instance 2", port2, key, NULL, 200, NULL);
    for (size_t i = 0; i < sizeof(upper); i++)
        upper[i] = (char)toupper((unsigned char)id[i]);
    CHECK(strcmp(upper, id) != 0, "the id has letters: %s", id);
    snprintf(path, sizeof(path), "/api/v1/api-keys/%s", upper);
    tl_delete(port1, path, admin, &r);
    tl_expect("revoke by the upper-case id", &r, 204, NULL);
    tl_resp_free(&r);
    snprintf(marker, sizeof(marker), "aigw:{%s}:kr:%s", tid, id);
    CHECK(tl_redis_int("EXISTS %s", marker) == 1, "the marker is under the id as the database prints it");
    snprintf(marker, sizeof(marker), "aigw:{%s}:kr:%s", tid, upper);
    CHECK(tl_redis_int("EXISTS %s", marker) == 0, "no marker under the upper-case spelling");
    expect_use("next query on instance 2", port2, key, NULL, 401, "unauthenticated");
    expect_use("next query on instance 1", port1, key, "/api/ai/limits", 401, "unauthenticated");
    CHECK(sql1("SELECT count(*) FROM audit_logs WHERE action = 'api_key.revoke' AND target = $1 AND tenant_id = $2",
               id, tid) == 1,
          "the audit row names the key as the database does");
    free(admin);
}

/* A key revoked or deleted in SQL while an instance whose listener is down
 * (here: its listen_url names no database) has it cached. It used to be
 * served from that cache for api_keys.cache_ttl_s (60 s here, up to an
 * hour): the NOTIFY never reached it, and only the revoke route set the
 * Redis marker. Now the instances that hear the NOTIFY set the marker
 * (sql/016), which the deaf one reads on its next request. Changes that
 * leave the key usable set none, nor does a forged notification. */
static void
test_revoked_in_sql_listener_down(void)
{
    char tid[37], code[65], key[128], id[37], marker[160];
    char *admin = new_tenant("enterprise", tid, code), *url, *patch, *cfg, *at;
    const char *stmts[2] = {"UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid",
                            "DELETE FROM api_keys WHERE id = $1::uuid"};
    struct tl_aigw gw3;

    url = tl_sprintf("%s", tl_env("AIGW_DATABASE_URL"));
    at = strstr(url, "/aigw?");
    CHECK(at != NULL, "the database URL names the database aigw: %s", url);
    if (at == NULL) {
        free(url);
        free(admin);
        return;
    }
    *at = '\0';
    patch = tl_sprintf("{\"api_keys\":{\"last_used_flush_ms\":200},\"log\":{\"level\":\"debug\"},"
                       "\"database\":{\"listen_url\":\"%s/aigw_no_such_db?%s\"}}",
                       url, at + strlen("/aigw?"));
    cfg = tl_config_patch(patch);
    if (tl_aigw_start(&gw3, cfg) != 0) {
        CHECK(false, "instance 3 starts");
        goto out;
    }
    CHECK(tl_aigw_log_wait(&gw3, "aigw_no_such_db", 10000), "instance 3's listener cannot connect");
    for (int i = 0; i < 2; i++) {
        CHECK(create_key(port1, admin, "{\"name\":\"revoked in SQL\"}", key, id) == 201, "create");
        expect_use("cached on the deaf instance, query", gw3.port, key, NULL, 200, NULL);
        expect_use("cached on the deaf instance, limits", gw3.port, key, "/api/ai/limits", 200, NULL);
        snprintf(marker, sizeof(marker), "aigw:{%s}:kr:%s", tid, id);
        PQclear(tl_sql(owner, true, stmts[i], 1, (const char *const[]){id}));
        CHECK(wait_use(gw3.port, key, 401, 3000) == 401, "%s: the deaf instance refuses the key within 3 s", stmts[i]);
        expect_use("the deaf instance, query", gw3.port, key, NULL, 401, "unauthenticated");
        CHECK(tl_redis_int("EXISTS %s", marker) == 1, "%s: the marker is set", stmts[i]);
        CHECK(tl_redis_int("TTL %s", marker) > 86000, "%s: the marker lives a day, as the route's", stmts[i]);
    }
    /* changes that leave the key usable set no marker */
    CHECK(create_key(port1, admin, "{\"name\":\"changed in SQL\"}", key, id) == 201, "create");
    expect_use("cached on the deaf instance", gw3.port, key, "/api/ai/limits", 200, NULL);
    PQclear(tl_sql(owner, true,
                   "UPDATE api_keys SET requests_per_minute = 50, scopes = '{query,chat}', expires_at = now() + "
                   "interval '1 day' WHERE id = $1::uuid",
                   1, (const char *const[]){id}));
    PQclear(tl_sql(owner, true, "UPDATE api_keys SET last_used_at = now() WHERE id = $1::uuid", 1,
                   (const char *const[]){id}));
    usleep(300 * 1000);
    snprintf(marker, sizeof(marker), "aigw:{%s}:kr:%s", tid, id);
    CHECK(tl_redis_int("EXISTS %s", marker) == 0, "no marker for a key still usable");
    expect_use("still usable, instance 1", port1, key, NULL, 200, NULL);
    expect_use("still usable, the deaf instance", gw3.port, key, NULL, 200, NULL);
    /* any database session may NOTIFY any channel: a forged notice for an
     * active key must not shut it out for a day */
    PQclear(tl_sql(owner, true, "SELECT pg_notify('aigw_api_key_revoked', $1 || ':' || $2)", 2,
                   (const char *const[]){tid, id}));
    CHECK(tl_aigw_log_wait(&gw1, "which is active", 3000), "instance 1 ignores the forged notice");
    CHECK(tl_redis_int("EXISTS %s", marker) == 0, "no marker from a forged notice");
    expect_use("still usable after a forged notice, instance 1", port1, key, NULL, 200, NULL);
    expect_use("still usable after a forged notice, the deaf instance", gw3.port, key, "/api/ai/limits", 200, NULL);
    CHECK(tl_aigw_stop(&gw3) == 0, "instance 3 exits 0");
out:
    free(cfg);
    free(patch);
    free(url);
    free(admin);
}

static void
test_expiry(void)
{
    char tid[37], code[65], key[128], id[37], body[160], when[32];
    char *admin = new_tenant("enterprise", tid, code);
    time_t soon = time(NULL) + 3;
    struct tm tm;

    gmtime_r(&soon, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(body, sizeof(body), "{\"name\":\"short-lived\",\"expires_at\":\"%s\"}", when);
    CHECK(create_key(port1, admin, body, key, id) == 201, "create a key expiring in 3 s");
    expect_use("before expiry", port2, key, "/api/ai/limits", 200, NULL);
    CHECK(wait_use(port2, key, 401, 10000) == 401, "expired key (cached) refused");
    expect_use("expired key on instance 1", port1, key, NULL, 401, "unauthenticated");

    CHECK(create_key(port1, admin, "{\"name\":\"expired by the DBA\"}", key, id) == 201, "create");
    expect_use("before the update", port2, key, NULL, 200, NULL);
    PQclear(tl_sql(owner, true, "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1::uuid",
                   1, (const char *const[]){id}));
    CHECK(wait_use(port2, key, 401, 5000) == 401, "expiry set in the database is seen (NOTIFY)");

    /* the instances cache the record under the key's old id: an UPDATE that
     * gives the key a new id (and revokes it) must name the old one too */
    CHECK(create_key(port1, admin, "{\"name\":\"new id by the DBA\"}", key, id) == 201, "create");
    expect_use("before the new id", port2, key, NULL, 200, NULL);
    PQclear(tl_sql(owner, true, "UPDATE api_keys SET id = gen_random_uuid(), revoked_at = now() WHERE id = $1::uuid", 1,
                   (const char *const[]){id}));
    CHECK(wait_use(port2, key, 401, 5000) == 401, "a key revoked together with a new id is refused soon (NOTIFY)");
    free(admin);
}

/* An expires_at with a fraction of a second (set in SQL: "expire it now")
 * ends the key at that instant. Rounded to the nearest second, one at
 * N.55 counted as N+1, and the key kept working until then. Each round
 * sets it just behind the clock, early in the second's last third, and
 * uses the key at once (a new key: its record is read now). */
static void
test_expiry_fraction(void)
{
    char tid[37], code[65], key[128], id[37];
    char *admin = new_tenant("enterprise", tid, code);
    int accepted = 0, tried = 0;

    for (int round = 0; round < 3; round++) {
        struct timespec ts;
        struct tl_resp r;

        CHECK(create_key(port1, admin, "{\"name\":\"expired a moment ago\"}", key, id) == 201, "create");
        do {
            usleep(5 * 1000);
            clock_gettime(CLOCK_REALTIME, &ts);
        } while (ts.tv_nsec < 650000000L || ts.tv_nsec > 750000000L);
        PQclear(tl_sql(owner, true,
                       "UPDATE api_keys SET expires_at = date_trunc('second', now()) + interval '0.55 s'"
                       " WHERE id = $1::uuid",
                       1, (const char *const[]){id}));
        use_key(port1, key, "/api/ai/limits", &r);
        tried++;
        accepted += r.status == 200;
        tl_resp_free(&r);
    }
    CHECK(tried == 3 && accepted == 0, "a key past its expires_at is refused (%d of %d uses accepted)", accepted, tried);
    free(admin);
}

static void
test_plan(void)
{
    char tid[37], code[65], key[128], id[37], tier[64], path[128];
    char *std_admin = new_tenant("standard", tid, code), *admin;
    struct tl_resp r;

    tl_post(port1, "/api/v1/api-keys", std_admin, "{\"name\":\"not allowed\"}", &r);
    tl_expect("create on a standard plan", &r, 403, "feature_not_in_plan");
    CHECK(tl_json_str(&r, "error.required_tier", tier, sizeof(tier)) && strcmp(tier, "enterprise") == 0,
          "required_tier enterprise");
    tl_resp_free(&r);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE tenant_id = $1::uuid", tid, NULL) == 0, "no key row");
    CHECK(audit_count(tid, "api_key.create") == 0, "no audit row");
    free(std_admin);

    admin = new_tenant("enterprise", tid, code);
    CHECK(create_key(port1, admin, "{\"name\":\"downgraded\"}", key, id) == 201, "create on enterprise");
    expect_use("enterprise key", port2, key, NULL, 200, NULL);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET tier = 'standard' WHERE id = $1::uuid", 1,
                   (const char *const[]){tid}));
    CHECK(wait_use(port2, key, 403, 5000) == 403, "key of a tenant downgraded to standard refused");
    use_key(port2, key, NULL, &r);
    tl_expect("key use on a standard plan", &r, 403, "feature_not_in_plan");
    CHECK(tl_json_str(&r, "error.required_tier", tier, sizeof(tier)) && strcmp(tier, "enterprise") == 0,
          "required_tier on use");
    tl_resp_free(&r);
    /* the admin can still see and revoke what is left */
    tl_get(port1, "/api/v1/api-keys", admin, &r);
    tl_expect("list on a standard plan", &r, 200, NULL);
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/api-keys/%s", id);
    tl_delete(port1, path, admin, &r);
    tl_expect("revoke on a standard plan", &r, 204, NULL);
    tl_resp_free(&r);
    free(admin);
}

static void
bad(const char *admin, const char *body, const char *field)
{
    struct tl_resp r;
    char msg[512] = "";

    tl_post(port1, "/api/v1/api-keys", admin, body, &r);
    tl_expect(body, &r, 400, "invalid_request");
    CHECK(tl_json_str(&r, "error.message", msg, sizeof(msg)) && strncmp(msg, field, strlen(field)) == 0 &&
              msg[strlen(field)] == ':',
          "%s: message names %s: %s", body, field, msg);
    tl_resp_free(&r);
}

static void
test_bad_input(void)
{
    char tid[37], code[65], long_name[300];
    char *admin = new_tenant("enterprise", tid, code), *body;
    struct tl_resp r;

    bad(admin, "{}", "name");
    bad(admin, "{\"name\":null}", "name");
    bad(admin, "{\"name\":\"\"}", "name");
    bad(admin, "{\"name\":\"   \"}", "name");
    bad(admin, "{\"name\":\"\\u00a0\\u3000 \"}", "name");
    bad(admin, "{\"name\":42}", "name");
    bad(admin, "{\"name\":\"tab\\there\"}", "name");
    bad(admin, "{\"name\":\"nel\\u0085here\"}", "name");
    bad(admin, "{\"name\":\"csi\xc2\x9b" "31mred\"}", "name"); /* raw UTF-8 of U+009B */
    memset(long_name, 'n', 201);
    long_name[201] = '\0';
    body = tl_sprintf("{\"name\":\"%s\"}", long_name);
    bad(admin, body, "name");
    free(body);
    bad(admin, "{\"name\":\"k\",\"scopes\":\"query\"}", "scopes");
    bad(admin, "{\"name\":\"k\",\"scopes\":[]}", "scopes");
    bad(admin, "{\"name\":\"k\",\"scopes\":[\"admin\"]}", "scopes");
    bad(admin, "{\"name\":\"k\",\"scopes\":[1]}", "scopes");
    bad(admin, "{\"name\":\"k\",\"scopes\":[\"query\",\"query\"]}", "scopes");
    bad(admin, "{\"name\":\"k\",\"requests_per_minute\":0}", "requests_per_minute");
    bad(admin, "{\"name\":\"k\",\"requests_per_minute\":-5}", "requests_per_minute");
    bad(admin, "{\"name\":\"k\",\"requests_per_minute\":\"10\"}", "requests_per_minute");
    bad(admin, "{\"name\":\"k\",\"requests_per_minute\":1.5}", "requests_per_minute");
    bad(admin, "{\"name\":\"k\",\"requests_per_minute\":100001}", "requests_per_minute");
    bad(admin, "{\"name\":\"k\",\"expires_at\":12345}", "expires_at");
    bad(admin, "{\"name\":\"k\",\"expires_at\":\"tomorrow\"}", "expires_at");
    bad(admin, "{\"name\":\"k\",\"expires_at\":\"2031-13-01T00:00:00Z\"}", "expires_at");
    bad(admin, "{\"name\":\"k\",\"expires_at\":\"2031-01-01\"}", "expires_at");
    bad(admin, "{\"name\":\"k\",\"expires_at\":\"2020-01-01T00:00:00Z\"}", "expires_at");
    /* year 10000 in UTC (was stored and then shown as 0000-01-01T00:59:59Z) */
    bad(admin, "{\"name\":\"k\",\"expires_at\":\"9999-12-31T23:59:59-01:00\"}", "expires_at");
    tl_post(port1, "/api/v1/api-keys", admin, "{\"name\":", &r);
    tl_expect("invalid JSON", &r, 400, "invalid_json");
    tl_resp_free(&r);
    tl_post(port1, "/api/v1/api-keys", admin, "{\"name\":\"nul\\u0000here\"}", &r);
    tl_expect("NUL in a string (the body parser refuses it)", &r, 400, "invalid_json");
    tl_resp_free(&r);
    tl_post(port1, "/api/v1/api-keys", admin, "[\"name\"]", &r);
    tl_expect("not an object", &r, 400, "invalid_json");
    tl_resp_free(&r);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE tenant_id = $1::uuid", tid, NULL) == 0, "bad input: no key row");
    CHECK(audit_count(tid, "api_key.create") == 0, "bad input: no audit row");

    /* the same fields, valid, create exactly one key */
    tl_post(port1, "/api/v1/api-keys", admin,
            "{\"name\":\"Émile's key\",\"scopes\":[\"chat\",\"query\"],\"requests_per_minute\":100000,"
            "\"expires_at\":\"2031-01-01T00:00:00+01:00\",\"unknown\":true}",
            &r);
    tl_expect("valid create", &r, 201, NULL);
    CHECK(strstr(r.body, "\"expires_at\":\"2030-12-31T23:00:00Z\"") && strstr(r.body, "\"requests_per_minute\":100000") &&
              strstr(r.body, "\"scopes\":[\"query\",\"chat\"]"),
          "stored values echoed: %s", r.body);
    {
        char key[128];

        if (tl_json_str(&r, "key", key, sizeof(key)) && n_keys_seen < MAX_KEYS)
            remember(key);
    }
    tl_resp_free(&r);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE tenant_id = $1::uuid", tid, NULL) == 1, "one key row");
    CHECK(audit_count(tid, "api_key.create") == 1, "one audit row");
    free(admin);
}

/* An instance that flushes last_used_at only at shutdown: uses cost no
 * database write while it runs. */
static void
test_last_used_batched(const char *cfg_slow)
{
    char tid[37], code[65], key[128], id[37];
    char *admin = new_tenant("enterprise", tid, code), *log;
    struct tl_aigw gw3;

    CHECK(create_key(port1, admin, "{\"name\":\"batched\"}", key, id) == 201, "create");
    if (tl_aigw_start(&gw3, cfg_slow) != 0) {
        CHECK(false, "third instance starts");
        free(admin);
        return;
    }
    for (int i = 0; i < 5; i++)
        expect_use("use on the slow-flush instance", gw3.port, key, i % 2 ? "/api/ai/limits" : NULL, 200, NULL);
    usleep(800 * 1000);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE id = $1::uuid AND last_used_at IS NULL", id, NULL) == 1,
          "no write per request (the flush interval has not passed)");
    log = tl_aigw_log(&gw3);
    for (int i = 0; i < n_keys_seen; i++)
        CHECK(log != NULL && strstr(log, keys_seen[i] + 5) == NULL, "instance 3 log holds no key (%d)", i);
    free(log);
    CHECK(tl_aigw_stop(&gw3) == 0, "instance 3 exits 0");
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE id = $1::uuid"
               " AND last_used_at > now() - interval '5 minutes'",
               id, NULL) == 1,
          "last_used_at written by the shutdown flush");
    free(admin);
}

/* A shutdown while PostgreSQL is down cannot write the pending uses: they
 * are kept in the spool directory and written by the next start (they were
 * lost: the final flush failed, logged "retrying later", and the process
 * exited). */
static void
test_last_used_outage(const char *cfg_slow, const char *cfg)
{
    char tid[37], code[65], key[128], id[37], env_spool[200];
    char *admin = new_tenant("enterprise", tid, code);
    const char *env[2] = {env_spool, NULL};
    const char *p[1] = {id};
    struct tl_aigw gw3, gw4;

    snprintf(env_spool, sizeof(env_spool), "AIGW_SPOOL_DIR=/tmp/aigw-last-used-%d", (int)getpid());
    CHECK(create_key(port1, admin, "{\"name\":\"outage\"}", key, id) == 201, "create");
    if (tl_aigw_start_env(&gw3, cfg_slow, env) != 0) {
        CHECK(false, "third instance starts");
        free(admin);
        return;
    }
    expect_use("use before the outage", gw3.port, key, "/api/ai/limits", 200, NULL);
    tl_stack("pg-stop");
    CHECK(tl_aigw_stop(&gw3) == 0, "instance 3 exits 0 while PostgreSQL is down");
    tl_stack("pg-start");
    tl_pg_reconnect(&owner);
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE id = $1::uuid AND last_used_at IS NULL", id, NULL) == 1,
          "not written: PostgreSQL was down at the shutdown");
    if (tl_aigw_start_env(&gw4, cfg, env) != 0) {
        CHECK(false, "fourth instance starts on the same spool directory");
        free(admin);
        return;
    }
    CHECK(tl_wait_sql(owner, 1, 10000,
                      "SELECT count(*) FROM api_keys WHERE id = $1::uuid AND last_used_at > now() - interval '5 minutes'",
                      1, p) == 1,
          "the use noted before the shutdown is written by the next start");
    CHECK(tl_aigw_stop(&gw4) == 0, "instance 4 exits 0");
    tl_rm_rf(env_spool + strlen("AIGW_SPOOL_DIR="));
    free(admin);
}

/* TRUNCATE fires no row trigger: the keys it removed must still leave every
 * instance's cache at once (a statement trigger notifies '*'), not after
 * api_keys.cache_ttl_s. It runs last: it removes every key. */
static void
test_truncate(void)
{
    char tid[37], code[65], key[128], id[37];
    char *admin = new_tenant("enterprise", tid, code);
    PGresult *q;

    CHECK(create_key(port1, admin, "{\"name\":\"truncated\"}", key, id) == 201, "create");
    expect_use("cached on instance 2", port2, key, "/api/ai/limits", 200, NULL);
    expect_use("cached on instance 1", port1, key, "/api/ai/limits", 200, NULL);
    q = tl_sql(owner, true, "TRUNCATE api_keys", 0, NULL);
    PQclear(q);
    CHECK(wait_use(port2, key, 401, 5000) == 401, "instance 2 refuses a truncated key soon");
    CHECK(wait_use(port1, key, 401, 5000) == 401, "instance 1 refuses a truncated key soon");
    free(admin);
}

/* ---- a flood of unknown keys ---- */

#define FLOOD_CLIENTS 32

struct flood {
    int port;
    atomic_bool stop;
    pthread_mutex_t lock;
    long refused;       /* 503 by the bound on key lookups */
    long unavailable;   /* 503: the lookup ran and PostgreSQL did not answer in time */
    long other;         /* anything else */
    char other_what[256];
};

/* A well-formed key that belongs to nobody. */
static void
random_key(char out[64], unsigned *seed)
{
    static const char b64u[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    memcpy(out, "aigw_", 5);
    for (int i = 0; i < 43; i++)
        out[5 + i] = b64u[rand_r(seed) % 64];
    out[48] = '\0';
}

static void *
flood_main(void *arg)
{
    struct flood *f = arg;
    unsigned seed = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)&seed;

    while (!atomic_load(&f->stop)) {
        char key[64], msg[256] = "", retry[16] = "";
        struct tl_resp r;
        long *slot;

        random_key(key, &seed);
        if (tl_key_request(f->port, "GET", "/api/ai/limits", key, false, NULL, &r) != 0)
            r.status = 0;
        tl_json_str(&r, "error.message", msg, sizeof(msg));
        tl_resp_header(&r, "Retry-After", retry, sizeof(retry));
        pthread_mutex_lock(&f->lock);
        if (r.status == 503 && strcmp(retry, "1") == 0 && strstr(r.body, "\"service_unavailable\"") &&
            strcmp(msg, "too many API key lookups in progress, retry shortly") == 0)
            slot = &f->refused;
        else if (r.status == 503 && strcmp(retry, "1") == 0 && strcmp(msg, "key data is unavailable, retry shortly") == 0)
            slot = &f->unavailable;
        else {
            slot = &f->other;
            snprintf(f->other_what, sizeof(f->other_what), "%ld %s", r.status, r.body ? r.body : "");
        }
        (*slot)++;
        pthread_mutex_unlock(&f->lock);
        tl_resp_free(&r);
    }
    return NULL;
}

/* Key lookups running in PostgreSQL right now (aigw's sessions). */
static long
lookups_running(PGconn *c)
{
    return tl_sql_long(c,
                       "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND state = 'active'"
                       " AND query LIKE '%aigw_api_key_lookup%'",
                       0, NULL);
}

/* Anyone can send well-formed random keys, and each used to cost a
 * PostgreSQL lookup on the request pool: with key lookups slow (here the
 * api_keys table is locked, so each waits out lock_timeout, 2 s), a flood
 * took all 8 connections and a JWT request of a tenant not cached yet
 * waited the pool's 2 s and got 503. Now at most pool_size / 2 = 4 lookups
 * run at once and the rest are refused at once with 503 + Retry-After: 1;
 * the tenant load finds a free connection. It runs after test_truncate: the
 * key created here is the only one, so nothing else moves last_used_at. */
static void
test_unknown_key_flood(const char *cfg_flood)
{
    char tid[37], code[65], key[128], id[37], jtid[37], jcode[65];
    char *admin = new_tenant("enterprise", tid, code);
    char *jwt;
    pthread_t th[FLOOD_CLIENTS];
    struct flood f = {.lock = PTHREAD_MUTEX_INITIALIZER};
    struct tl_aigw gw3;
    PGconn *locker = tl_pg_owner(), *watch = tl_pg_owner();
    long usage_before, most = 0, refused_metric;
    int64_t jwt_ms;
    struct tl_resp r;
    PGresult *q;

    CHECK(create_key(port1, admin, "{\"name\":\"flood survivor\"}", key, id) == 201, "create");
    tl_create_tenant(owner, "standard", "active", jtid, jcode);
    jwt = tl_token(jcode, "admin", 3600);
    if (tl_aigw_start(&gw3, cfg_flood) != 0) {
        CHECK(false, "flood instance starts");
        goto out;
    }
    f.port = gw3.port;
    usage_before = tl_count_rows(owner, "ai_usage_logs");
    q = tl_sql(locker, true, "BEGIN", 0, NULL);
    PQclear(q);
    q = tl_sql(locker, true, "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE", 0, NULL);
    PQclear(q);
    for (int i = 0; i < FLOOD_CLIENTS; i++)
        pthread_create(&th[i], NULL, flood_main, &f);
    for (int i = 0; i < 10; i++) {
        long n = lookups_running(watch);

        most = n > most ? n : most;
        usleep(50 * 1000);
    }
    {
        struct timespec a, b;

        clock_gettime(CLOCK_MONOTONIC, &a);
        tl_get(gw3.port, "/api/ai/limits", jwt, &r);
        clock_gettime(CLOCK_MONOTONIC, &b);
        jwt_ms = (int64_t)(b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000;
    }
    /* 200 within the pool's acquire time; a worker thread that is busy with
     * one of the 4 admitted lookups may hold the connection that long */
    tl_expect("a JWT of an uncached tenant during the flood", &r, 200, NULL);
    CHECK(jwt_ms < 2500, "answered in %" PRId64 " ms", jwt_ms);
    tl_resp_free(&r);
    for (int i = 0; i < 20; i++) {
        long n = lookups_running(watch);

        most = n > most ? n : most;
        usleep(50 * 1000);
    }
    atomic_store(&f.stop, true);
    for (int i = 0; i < FLOOD_CLIENTS; i++)
        pthread_join(th[i], NULL);
    q = tl_sql(locker, true, "ROLLBACK", 0, NULL);
    PQclear(q);

    printf("flood: %ld refused, %ld timed out in PostgreSQL, at most %ld lookups at once, the JWT in %" PRId64 " ms\n",
           f.refused, f.unavailable, most, jwt_ms);
    CHECK(most >= 1 && most <= 4, "at most pool_size / 2 key lookups in PostgreSQL at once (%ld)", most);
    CHECK(f.refused > 0, "the excess got 503 service_unavailable, Retry-After: 1 (%ld refused, %ld timed out)",
          f.refused, f.unavailable);
    CHECK(f.other == 0, "nothing else: %ld, last %s", f.other, f.other_what);
    refused_metric = (long)tl_metric(gw3.port, "aigw_api_key_lookups_refused_total");
    CHECK(refused_metric == f.refused, "aigw_api_key_lookups_refused_total %ld = %ld refusals", refused_metric,
          f.refused);
    CHECK(tl_aigw_log_wait(&gw3, "API key lookups refused", 1000), "refusals logged");

    /* refused requests wrote nothing */
    CHECK(tl_usage_flushed(gw3.port), "usage backlog flushed");
    CHECK(tl_count_rows(owner, "ai_usage_logs") == usage_before, "no usage rows");
    usleep(500 * 1000); /* two last_used_at flushes */
    CHECK(sql1("SELECT count(*) FROM api_keys WHERE last_used_at IS NOT NULL", NULL, NULL) == 0,
          "no last_used_at written");

    /* the flood is over: a real key nobody cached authenticates */
    expect_use("a real uncached key after the flood", gw3.port, key, "/api/ai/limits", 200, NULL);
    CHECK(tl_aigw_stop(&gw3) == 0, "flood instance exits 0");
out:
    PQfinish(locker);
    PQfinish(watch);
    free(jwt);
    free(admin);
}

static void
check_log(const struct tl_aigw *gw, const char *name)
{
    char *log = tl_aigw_log(gw);

    CHECK(log != NULL && strlen(log) > 0, "%s: log captured", name);
    CHECK(log != NULL && strstr(log, "API_KEY_ID") != NULL, "%s: log names key ids", name);
    for (int i = 0; i < n_keys_seen; i++)
        CHECK(log != NULL && strstr(log, keys_seen[i] + 5) == NULL, "%s: key %d never logged", name, i);
    free(log);
}

int
main(void)
{
    char *cfg = tl_config_patch("{\"api_keys\":{\"last_used_flush_ms\":200},\"log\":{\"level\":\"debug\"}}");
    char *cfg_slow = tl_config_patch("{\"api_keys\":{\"last_used_flush_ms\":600000},\"log\":{\"level\":\"debug\"}}");
    /* 32 worker threads, so that the pool, not the threads, is what a flood exhausts */
    char *cfg_flood = tl_config_patch("{\"api_keys\":{\"last_used_flush_ms\":200},\"http\":{\"threads\":32},"
                                      "\"database\":{\"pool_size\":8},\"log\":{\"level\":\"debug\"}}");

    owner = tl_pg_owner();
    if (tl_aigw_start(&gw1, cfg) != 0 || tl_aigw_start(&gw2, cfg) != 0)
        return 1;
    port1 = gw1.port;
    port2 = gw2.port;

    test_create_and_use();
    test_creator_user();
    test_listing();
    test_listed_times();
    test_admin_routes_refuse_keys();
    test_rejected_credentials();
    test_scopes();
    test_key_rate_limit();
    test_revocation();
    test_revocation_upper_case_id();
    test_revoked_in_sql_listener_down();
    test_expiry();
    test_expiry_fraction();
    test_plan();
    test_bad_input();
    test_last_used_batched(cfg_slow);
    test_last_used_outage(cfg_slow, cfg);
    test_truncate();
    test_unknown_key_flood(cfg_flood);

    check_log(&gw1, "instance 1");
    check_log(&gw2, "instance 2");
    CHECK(tl_aigw_stop(&gw1) == 0, "instance 1 exits 0");
    CHECK(tl_aigw_stop(&gw2) == 0, "instance 2 exits 0");
    free(cfg);
    free(cfg_slow);
    free(cfg_flood);
    PQfinish(owner);
    return tl_done();
}
