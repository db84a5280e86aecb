/* test_auth.c - end to end: JWT acceptance and rejection through aigw, tenant status */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static int port;
static long now;

static void
expect_401(const char *name, const char *token)
{
    struct tl_resp r;
    char code[64], www[256];

    tl_get(port, "/api/ai/limits", token, &r);
    CHECK(r.status == 401, "%s: status %ld", name, r.status);
    CHECK(tl_json_str(&r, "error.code", code, sizeof(code)) && strcmp(code, "unauthenticated") == 0,
          "%s: error code", name);
    CHECK(tl_resp_header(&r, "WWW-Authenticate", www, sizeof(www)) != NULL && strstr(www, "Bearer") != NULL,
          "%s: WWW-Authenticate header", name);
    tl_resp_free(&r);
}

static void
expect_status(const char *name, const char *token, long status, const char *want_code)
{
    struct tl_resp r;
    char code[64] = "";

    tl_get(port, "/api/ai/limits", token, &r);
    CHECK(r.status == status, "%s: status %ld, want %ld (%s)", name, r.status, status, r.body);
    if (want_code != NULL)
        CHECK(tl_json_str(&r, "error.code", code, sizeof(code)) && strcmp(code, want_code) == 0,
              "%s: error code %s, want %s", name, code, want_code);
    tl_resp_free(&r);
}

static char *
claims(const char *tenant, long exp, const char *extra)
{
    static char buf[1024];

    if (exp != 0)
        snprintf(buf, sizeof(buf), "{\"sub\":\"u1\",\"tenant_id\":\"%s\",\"role\":\"admin\",\"exp\":%ld%s}", tenant,
                 exp, extra ? extra : "");
    else
        snprintf(buf, sizeof(buf), "{\"sub\":\"u1\",\"tenant_id\":\"%s\",\"role\":\"admin\"%s}", tenant,
                 extra ? extra : "");
    return buf;
}

static void
expect_401_post(const char *name, const char *path, const char *token, const char *body)
{
    struct tl_resp r;
    char code[64] = "", www[256] = "";

    tl_post(port, path, token, body, &r);
    CHECK(r.status == 401, "%s, %s: status %ld (%s)", name, path, r.status, r.body);
    CHECK(tl_json_str(&r, "error.code", code, sizeof(code)) && strcmp(code, "unauthenticated") == 0,
          "%s, %s: error code %s", name, path, code);
    CHECK(tl_resp_header(&r, "WWW-Authenticate", www, sizeof(www)) != NULL &&
              strstr(www, "error=\"invalid_token\"") != NULL,
          "%s, %s: WWW-Authenticate %s", name, path, www);
    tl_resp_free(&r);
}

/* A clinic token whose user is named like one of aigw's own actors
 * ("api_key:<id>" for an API key's requests, "platform:<sub>" for the
 * operator's staff) was served: its usage and audit rows named that actor,
 * and it shared the API key's Idempotency-Key records. Now 401 on every
 * route, and nothing is written for it. */
static void
test_reserved_users(PGconn *owner, const char *secret)
{
    static const char *const who[] = {
        "\"sub\":\"api_key:0190a1b2-0000-7000-8000-000000000001\"",
        "\"user_id\":\"api_key:0190a1b2-0000-7000-8000-000000000001\"",
        "\"sub\":\"platform:ops-1\"",
    };
    const char *p[1];
    char tid[37], tcode[65];
    char *tok;
    struct tl_resp r;

    tl_create_tenant(owner, "pro", "active", tid, tcode);
    p[0] = tid;
    for (size_t i = 0; i < sizeof(who) / sizeof(who[0]); i++) {
        char *c = tl_sprintf("{%s,\"tenant_id\":\"%s\",\"role\":\"admin\",\"exp\":%ld}", who[i], tcode, now + 600);

        tok = tl_sign("HS256", "dev", secret, strlen(secret), c);
        expect_401("a user named like an aigw actor", tok);
        expect_401_post(who[i], "/api/ai/query", tok, "{\"question\":\"Who am I: an API key?\"}");
        expect_401_post(who[i], "/v1/chat/completions", tok,
                        "{\"model\":\"aigw-default\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
        expect_401_post(who[i], "/api/ai/cache/invalidate", tok, "{}");
        free(tok);
        free(c);
    }
    CHECK(tl_usage_flushed(port), "usage rows flushed");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p) == 0,
          "no usage row for a user named like an aigw actor");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1", 1, p) == 0,
          "no audit row for a user named like an aigw actor");
    /* the same requests by a user of the clinic's own: the rows above would
     * have been seen */
    tok = tl_token(tcode, "admin", 600);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"Who am I: an API key?\"}", &r);
    CHECK(r.status == 200, "an ordinary user's query: %ld (%s)", r.status, r.body);
    tl_resp_free(&r);
    tl_post(port, "/api/ai/cache/invalidate", tok, "{}", &r);
    CHECK(r.status == 200, "an ordinary user's invalidation: %ld (%s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(tl_usage_rows(owner, tid, "route = '/api/ai/query'", 1) == 1, "an ordinary user's usage row");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1", 1, p) == 1,
          "an ordinary user's audit row");
    free(tok);
}

int
main(void)
{
    const char *secret = tl_env("AIGW_JWT_SECRET");
    char *rs_pub, *rs_priv, *es_pub, *es_priv, *cfg, *tok, path_rs[300], path_es[300], patch[2048];
    char big[6144];
    struct tl_aigw gw;
    PGconn *owner = tl_pg_owner();
    char tid[37], tcode[65];

    now = (long)time(NULL);
    tl_keypair("RS256", &rs_pub, &rs_priv);
    tl_keypair("ES256", &es_pub, &es_priv);
    snprintf(path_rs, sizeof(path_rs), "/tmp/aigw-test-rs-%d.pem", (int)getpid());
    snprintf(path_es, sizeof(path_es), "/tmp/aigw-test-es-%d.pem", (int)getpid());
    tl_write_file(path_rs, rs_pub);
    tl_write_file(path_es, es_pub);
    snprintf(patch, sizeof(patch),
             "{\"jwt\":{\"keys\":[{\"kid\":\"dev\",\"alg\":\"HS256\",\"secret\":\"${AIGW_JWT_SECRET}\"},"
             "{\"kid\":\"rs\",\"alg\":\"RS256\",\"public_key_file\":\"%s\"},"
             "{\"kid\":\"es\",\"alg\":\"ES256\",\"public_key_file\":\"%s\"}]}}",
             path_rs, path_es);
    cfg = tl_config_patch(patch);
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    port = gw.port;

    /* accepted */
    tok = tl_sign("HS256", "dev", secret, strlen(secret), claims("clinic_001", now + 600, NULL));
    expect_status("HS256", tok, 200, NULL);
    free(tok);
    tok = tl_sign("RS256", "rs", rs_priv, strlen(rs_priv), claims("clinic_001", now + 600, NULL));
    expect_status("RS256", tok, 200, NULL);
    free(tok);
    tok = tl_sign("ES256", "es", es_priv, strlen(es_priv), claims("22222222-2222-4222-8222-222222222222", now + 600, NULL));
    expect_status("ES256 with a tenant uuid", tok, 200, NULL);
    free(tok);

    /* rejected with 401 */
    expect_401("no credentials", NULL);
    tok = tl_sign("none", "dev", NULL, 0, claims("clinic_001", now + 600, NULL));
    expect_401("alg none", tok);
    free(tok);
    tok = tl_sign("HS256", "rs", rs_pub, strlen(rs_pub), claims("clinic_001", now + 600, NULL));
    expect_401("alg confusion: HS256 signed with the RS256 public key", tok);
    free(tok);
    tok = tl_sign("HS256", "dev", "wrong-secret-wrong-secret-wrong-secret", 38, claims("clinic_001", now + 600, NULL));
    expect_401("bad signature", tok);
    free(tok);
    tok = tl_sign("HS256", "dev", secret, strlen(secret), claims("clinic_001", now - 3600, NULL));
    expect_401("expired", tok);
    free(tok);
    tok = tl_sign("HS256", "dev", secret, strlen(secret), claims("clinic_001", now + 600, ",\"nbf\":9999999999"));
    expect_401("nbf in the future", tok);
    free(tok);
    tok = tl_sign("HS256", "dev", secret, strlen(secret), claims("clinic_001", 0, NULL));
    expect_401("missing exp", tok);
    free(tok);
    {
        char c[256];

        snprintf(c, sizeof(c), "{\"sub\":\"u1\",\"role\":\"admin\",\"exp\":%ld}", now + 600);
        tok = tl_sign("HS256", "dev", secret, strlen(secret), c);
        expect_401("missing tenant_id", tok);
        free(tok);
    }
    tok = tl_sign("HS256", "unknown-kid", secret, strlen(secret), claims("clinic_001", now + 600, NULL));
    expect_401("unknown kid", tok);
    free(tok);
    expect_401("non-base64 segments", "eyJhbGciOiJIUzI1NiJ9.%%%.***");
    expect_401("non-JSON header", "bm90IGpzb24.eyJzdWIiOiJ4In0.c2ln");
    expect_401("two-segment token", "eyJhbGciOiJIUzI1NiIsImtpZCI6ImRldiJ9.eyJzdWIiOiJ4In0");
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    expect_401("6 kB garbage", big);
    {
        struct tl_resp r;
        const char *h[] = {"Authorization: Basic dXNlcjpwYXNz", NULL};

        tl_http(port, "GET", "/api/ai/limits", h, NULL, 0, &r);
        CHECK(r.status == 401, "Basic auth scheme: %ld", r.status);
        tl_resp_free(&r);
    }
    /* a credential header sent twice is refused, whichever copy is valid:
     * libmicrohttpd reads the first, a proxy in front may read the last */
    {
        char *good = tl_token("clinic_001", "admin", 600), *bad = tl_token("clinic_002", "admin", 600);
        char *h1 = tl_sprintf("Authorization: Bearer %s", good), *h2 = tl_sprintf("Authorization: Bearer %s", bad);
        char *h3 = tl_sprintf("authorization: Bearer %s", good);
        const char *twice[] = {h1, "Authorization: Bearer garbage", NULL};
        const char *two_tenants[] = {h1, h2, NULL};
        const char *case_differs[] = {h1, h3, NULL};
        const char *const *cases[] = {twice, two_tenants, case_differs};

        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            struct tl_resp r;
            char code[64] = "", www[256];

            tl_http(port, "GET", "/api/ai/limits", cases[i], NULL, 0, &r);
            CHECK(r.status == 401, "two Authorization headers (case %zu): status %ld (%s)", i, r.status, r.body);
            CHECK(tl_json_str(&r, "error.code", code, sizeof(code)) && strcmp(code, "unauthenticated") == 0,
                  "two Authorization headers (case %zu): error code %s", i, code);
            CHECK(tl_resp_header(&r, "WWW-Authenticate", www, sizeof(www)) != NULL,
                  "two Authorization headers (case %zu): WWW-Authenticate", i);
            tl_resp_free(&r);
        }
        free(h1);
        free(h2);
        free(h3);
        free(good);
        free(bad);
    }

    test_reserved_users(owner, secret);

    /* tenant status */
    tok = tl_token("clinic_004", "admin", 600);
    expect_status("suspended tenant", tok, 403, "tenant_inactive");
    free(tok);
    tok = tl_token("no_such_clinic", "admin", 600);
    expect_status("unknown tenant", tok, 403, "forbidden");
    free(tok);
    tok = tl_token("99999999-9999-4999-8999-999999999999", "admin", 600);
    expect_status("unknown tenant uuid", tok, 403, "forbidden");
    free(tok);
    tl_create_tenant(owner, "pro", "cancelled", tid, tcode);
    tok = tl_token(tcode, "admin", 600);
    expect_status("cancelled tenant", tok, 403, "tenant_inactive");
    free(tok);
    {
        const char *p[1] = {tid};
        PGresult *r = tl_sql(owner, true, "UPDATE tenants SET status = 'active', ai_enabled = false WHERE id = $1", 1, p);

        PQclear(r);
        tok = tl_token(tcode, "admin", 600);
        expect_status("AI-disabled tenant", tok, 403, "tenant_inactive");
        r = tl_sql(owner, true, "UPDATE tenants SET ai_enabled = true WHERE id = $1", 1, p);
        PQclear(r);
        usleep(300 * 1000); /* NOTIFY reaches the listener */
        expect_status("re-enabled tenant", tok, 200, NULL);
        free(tok);
    }

    /* the log never contains a token */
    {
        char *log = tl_aigw_log(&gw);

        tok = tl_token("clinic_001", "admin", 600);
        CHECK(log != NULL && strstr(log, "eyJ") == NULL, "log contains no token material");
        free(log);
        free(tok);
    }

    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 on SIGTERM");
    unlink(path_rs);
    unlink(path_es);
    free(cfg);
    free(rs_pub);
    free(rs_priv);
    free(es_pub);
    free(es_priv);
    PQfinish(owner);
    return tl_done();
}
