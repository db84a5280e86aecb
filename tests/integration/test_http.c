/* test_http.c - HTTP bad input, routing, request ids, ops routes, cache invalidation */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

#define CLINIC1 "11111111-1111-4111-8111-111111111111"

static int port;
static char *admin_tok;

static long long
generation(void)
{
    long long g = tl_redis_int("GET aigw:{" CLINIC1 "}:gen");

    return g < 0 ? 0 : g;
}

static void
expect_error(const char *name, const struct tl_resp *r, long status, const char *code)
{
    char rid[80];

    tl_expect(name, r, status, code);
    CHECK(tl_json_str(r, "error.request_id", rid, sizeof(rid)) != NULL, "%s: request_id in the error", name);
}

static void
post_raw(const char *name, const char *ctype, const char *body, size_t len, long status, const char *code)
{
    char auth[4096], ct[128];
    const char *h[4] = {auth, ct, NULL, NULL};
    struct tl_resp r;
    long long before = generation();

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", admin_tok);
    if (ctype != NULL)
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
    else
        h[1] = NULL;
    tl_http(port, "POST", "/api/ai/cache/invalidate", h, body, len, &r);
    expect_error(name, &r, status, code);
    CHECK(generation() == before, "%s: cache generation unchanged", name);
    tl_resp_free(&r);
}

int
main(void)
{
    struct tl_aigw gw;
    char *cfg = tl_config_patch("{\"http\":{\"max_body_bytes\":4096,\"max_header_bytes\":8192}}");
    struct tl_resp r;
    char buf[256];

    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    port = gw.port;
    admin_tok = tl_token("clinic_001", "admin", 600);

    /* ops routes */
    tl_get(port, "/healthz", NULL, &r);
    CHECK(r.status == 200 && tl_json_str(&r, "status", buf, sizeof(buf)) && strcmp(buf, "ok") == 0, "healthz");
    tl_resp_free(&r);
    tl_http(port, "HEAD", "/healthz", NULL, NULL, 0, &r);
    CHECK(r.status == 200, "HEAD /healthz: %ld", r.status);
    tl_resp_free(&r);
    {
        bool ready = false;

        for (int i = 0; i < 60 && !ready; i++) {
            tl_get(port, "/readyz", NULL, &r);
            ready = r.status == 200;
            if (!ready)
                usleep(100 * 1000);
            else
                CHECK(tl_json_str(&r, "checks.postgresql", buf, sizeof(buf)) && strcmp(buf, "ok") == 0,
                      "readyz names postgresql ok");
            tl_resp_free(&r);
        }
        CHECK(ready, "readyz turns 200 with PostgreSQL, Redis and a mock upstream up");
    }

    /* routing */
    tl_get(port, "/nope", NULL, &r);
    expect_error("unknown route", &r, 404, "not_found");
    CHECK(tl_resp_header(&r, "X-Request-Id", buf, sizeof(buf)) && strlen(buf) == 32, "generated X-Request-Id");
    tl_resp_free(&r);
    tl_http(port, "DELETE", "/api/ai/limits", NULL, NULL, 0, &r);
    expect_error("wrong method", &r, 405, "method_not_allowed");
    CHECK(tl_resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "GET") == 0, "Allow: GET (got %s)", buf);
    tl_resp_free(&r);
    tl_get(port, "/api/ai/cache/invalidate", NULL, &r);
    expect_error("GET on a POST route", &r, 405, "method_not_allowed");
    CHECK(tl_resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "POST") == 0, "Allow: POST");
    tl_resp_free(&r);
    {
        const char *h[] = {"X-Request-Id: trace-abc_123.4", NULL};

        tl_http(port, "GET", "/healthz", h, NULL, 0, &r);
        CHECK(tl_resp_header(&r, "X-Request-Id", buf, sizeof(buf)) && strcmp(buf, "trace-abc_123.4") == 0,
              "valid X-Request-Id is echoed");
        tl_resp_free(&r);
        h[0] = "X-Request-Id: bad id <script>";
        tl_http(port, "GET", "/healthz", h, NULL, 0, &r);
        CHECK(tl_resp_header(&r, "X-Request-Id", buf, sizeof(buf)) && strlen(buf) == 32 && !strchr(buf, '<'),
              "unsafe X-Request-Id is replaced");
        tl_resp_free(&r);
    }
    {
        static char hdr[20000];
        const char *h[] = {hdr, NULL};

        memcpy(hdr, "X-Big: ", 7);
        memset(hdr + 7, 'a', sizeof(hdr) - 8);
        hdr[sizeof(hdr) - 1] = '\0';
        tl_http(port, "GET", "/healthz", h, NULL, 0, &r);
        CHECK(r.status == 431, "oversized header -> 431 (got %ld)", r.status);
        tl_resp_free(&r);
    }

    /* bad bodies: nothing changes */
    {
        static char big[8192];
        const char *chunked_h[4];
        char auth[4096];

        memset(big, ' ', sizeof(big) - 1);
        big[0] = '{';
        big[sizeof(big) - 2] = '}';
        post_raw("oversized body", "application/json", big, sizeof(big) - 1, 413, "body_too_large");
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", admin_tok);
        chunked_h[0] = auth;
        chunked_h[1] = "Content-Type: application/json";
        chunked_h[2] = "Transfer-Encoding: chunked";
        chunked_h[3] = NULL;
        tl_http(port, "POST", "/api/ai/cache/invalidate", chunked_h, big, sizeof(big) - 1, &r);
        expect_error("oversized chunked body", &r, 413, "body_too_large");
        tl_resp_free(&r);
        post_raw("wrong content type", "text/plain", "{}", 2, 415, "unsupported_media_type");
        post_raw("missing content type", NULL, "{}", 2, 415, "unsupported_media_type");
        post_raw("form content type", "application/x-www-form-urlencoded", "a=1", 3, 415, "unsupported_media_type");
        post_raw("broken JSON", "application/json", "{\"a\":", 5, 400, "invalid_json");
        post_raw("duplicate keys", "application/json", "{\"a\":1,\"a\":2}", 13, 400, "invalid_json");
        post_raw("not an object", "application/json", "[1,2]", 5, 400, "invalid_json");
        post_raw("trailing garbage", "application/json", "{} {}", 5, 400, "invalid_json");
        post_raw("invalid UTF-8", "application/json", "{\"a\":\"\xff\xfe\"}", 10, 400, "invalid_json");
        {
            char nested[256];
            int n = 0;

            n += snprintf(nested + n, sizeof(nested) - (size_t)n, "{\"a\":");
            for (int i = 0; i < 40; i++)
                nested[n++] = '[';
            for (int i = 0; i < 40; i++)
                nested[n++] = ']';
            nested[n++] = '}';
            nested[n] = '\0';
            post_raw("too deep", "application/json", nested, (size_t)n, 400, "invalid_json");
        }
    }

    /* cache invalidation: role-checked, bumps the generation by one */
    {
        char *tok = tl_token("clinic_001", "optician", 600);
        long long before = generation();

        tl_post(port, "/api/ai/cache/invalidate", tok, "{}", &r);
        expect_error("optician may not invalidate", &r, 403, "forbidden");
        CHECK(generation() == before, "generation unchanged after 403");
        tl_resp_free(&r);
        free(tok);
        tl_post(port, "/api/ai/cache/invalidate", admin_tok, "{}", &r);
        CHECK(r.status == 200 && tl_json_int(&r, "generation", -1) == before + 1, "admin invalidates: %s", r.body);
        CHECK(tl_json_str(&r, "invalidated", buf, sizeof(buf)) && strcmp(buf, "true") == 0, "invalidated true");
        CHECK(generation() == before + 1, "Redis generation bumped once");
        tl_resp_free(&r);
        tok = tl_token("clinic_001", "manager", 600);
        tl_post(port, "/api/ai/cache/invalidate", tok, NULL, &r);
        CHECK(r.status == 200 && tl_json_int(&r, "generation", -1) == before + 2, "manager, empty body: %s", r.body);
        tl_resp_free(&r);
        free(tok);
    }

    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    free(admin_tok);
    free(cfg);
    return tl_done();
}
