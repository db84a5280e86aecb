/* test_quota_refusal.c - the 429 quota_exhausted of the quota stage, in
 * process: its resets_at is the month after the one the request counted in,
 * i.e. after the request's own start (req->start_wall_us), at every month
 * turn; Retry-After says the seconds until then and x-should-retry: false
 * keeps the OpenAI SDKs from retrying it, on /api/ai and /v1 routes alike.
 * The admission script's "exhausted" answer (quota_pre 0) is given, so no
 * Redis is needed. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aigw/http.h"
#include "aigw/pool.h"
#include "aigw/query.h"
#include "aigw/server.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "testlib.h"

static const char *
header(const struct aigw_req *req, const char *name)
{
    const char *v = NULL;

    for (size_t i = 0; i < req->n_resp_headers; i++)
        if (strcasecmp(req->resp_headers[i].name, name) == 0) {
            CHECK(v == NULL, "%s sent once", name);
            v = req->resp_headers[i].value;
        }
    return v;
}

/* The quota stage's refusal of a request that started at start_wall_us,
 * on /api/ai/query and on /v1/chat/completions. */
static void
refuse_on(const struct aigw_route *route, const char *name, int64_t start_wall_us, const char *want_resets,
          long want_retry)
{
    struct aigw_server srv;
    struct aigw_tenant t;
    struct aigw_query q;
    struct aigw_req req;
    json_t *body;
    const char *resets;

    memset(&srv, 0, sizeof(srv));
    memset(&t, 0, sizeof(t));
    memset(&q, 0, sizeof(q));
    memset(&req, 0, sizeof(req));
    snprintf(t.id, sizeof(t.id), "11111111-1111-4111-8111-111111111111");
    snprintf(t.tier, sizeof(t.tier), "basic");
    t.monthly_limit = 5;
    q.quota_pre = 0; /* the admission script found the month's quota spent */
    q.quota_used = 5;
    req.srv = &srv;
    req.pool = aigw_pool_create();
    req.route = route;
    req.url = route->path;
    req.tenant = &t;
    req.q = &q;
    req.start_wall_us = start_wall_us;
    snprintf(req.request_id, sizeof(req.request_id), "test-quota-refusal");

    CHECK(aigw_stage_quota(&req) == AIGW_DONE && req.status == 429, "%s: 429 (%d)", name, req.status);
    body = json_loadb(req.resp_body ? req.resp_body : "", req.resp_len, 0, NULL);
    resets = json_string_value(json_object_get(json_object_get(body, "error"), "resets_at"));
    CHECK(req.error_code != NULL && strcmp(req.error_code, "quota_exhausted") == 0, "%s: quota_exhausted", name);
    CHECK(resets != NULL && strcmp(resets, want_resets) == 0, "%s: resets_at %s, want %s", name,
          resets ? resets : "(none)", want_resets);
    {
        const char *retry = header(&req, "Retry-After"), *should = header(&req, "x-should-retry");
        char want[24];

        snprintf(want, sizeof(want), "%ld", want_retry);
        CHECK(retry != NULL && strcmp(retry, want) == 0, "%s %s: Retry-After %s, want %s", route->path, name,
              retry ? retry : "(none)", want);
        CHECK(should != NULL && strcmp(should, "false") == 0, "%s %s: x-should-retry %s, want false", route->path,
              name, should ? should : "(none)");
    }
    json_decref(body);
    aigw_pool_destroy(req.pool);
}

static void
refuse(const char *name, int64_t start_wall_us, const char *want_resets, long want_retry)
{
    static const struct aigw_route query = {.method = "POST", .path = "/api/ai/query", .ai = true};
    static const struct aigw_route chat = {.method = "POST", .path = "/v1/chat/completions", .ai = true,
                                           .openai = true};

    refuse_on(&query, name, start_wall_us, want_resets, want_retry);
    refuse_on(&chat, name, start_wall_us, want_resets, want_retry);
}

int
main(void)
{
    /* the last microsecond of a month: its next month, not the one after */
    refuse("December -> January", 1704067199999999LL, "2024-01-01T00:00:00Z", 1); /* 2023-12-31T23:59:59.999999Z */
    refuse("leap February -> March", 1709251199999999LL, "2024-03-01T00:00:00Z", 1); /* 2024-02-29T23:59:59.999999Z */
    refuse("February -> March", 1677628799999999LL, "2023-03-01T00:00:00Z", 1); /* 2023-02-28T23:59:59.999999Z */
    refuse("January -> February", 1706745599999999LL, "2024-02-01T00:00:00Z", 1); /* 2024-01-31T23:59:59.999999Z */
    /* a leap February's 28th is not its last day */
    refuse("leap February 28th", 1709164799000000LL, "2024-03-01T00:00:00Z", 86401); /* 2024-02-28T23:59:59Z */
    /* the first microsecond of a month counts in it */
    refuse("first instant of March", 1709251200000000LL, "2024-04-01T00:00:00Z", 31 * 86400); /* 2024-03-01T00:00Z */
    refuse("first instant of a year", 1704067200000000LL, "2024-02-01T00:00:00Z", 31 * 86400); /* 2024-01-01T00:00Z */
    return tl_done();
}
