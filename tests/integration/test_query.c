/* test_query.c - POST /api/ai/query end to end: cache, quota race, single-flight,
 * rate limit, feature gating, PII, bad input, upstream failures, idempotency,
 * a stalled Redis */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "aigw/query.h"
#include "aigw/util.h"
#include "testlib.h"

static PGconn *owner;
static const char *mock;
static int port;

static const char CONFIG[] =
    "{\"upstream\":{\"timeout_ms\":1500,\"queue_timeout_ms\":1000,\"health_interval_ms\":60000,\"fail_threshold\":100,"
    "\"routes\":null,\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":64,\"max_connections\":64}]},"
    "\"usage\":{\"spool_dir\":\"${AIGW_TEST_SPOOL}\",\"flush_ms\":20},\"redis\":{\"timeout_ms\":1000}}";

static void
tenant(const char *tier, const char *overrides, char id[37], char code[65])
{
    const char *p[2] = {NULL, overrides};
    PGresult *r;

    tl_create_tenant(owner, tier, "active", id, code);
    p[0] = id;
    r = tl_sql(owner, true, "UPDATE tenants SET overrides = $2::jsonb WHERE id = $1", 2, p);
    PQclear(r);
}

static int
ask(const char *token, const char *body, struct tl_resp *r)
{
    return tl_post(port, "/api/ai/query", token, body, r);
}

static long
billed_rows(const char *tid, long want)
{
    const char *p[1] = {tid};

    return tl_wait_sql(owner, want, 3000, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p);
}

static long
rows(const char *tid, long want)
{
    const char *p[1] = {tid};

    return tl_wait_sql(owner, want, 3000, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p);
}

/* Whether the tenant has a single-flight lock (not a published result). */
/* tl_sf_locks once they are gone, or after 2 s: a leader releases its lock in
 * the after hook, once its response has gone out. */
static long long
sf_locks_settled(const char *id)
{
    long long n = tl_sf_locks(id);

    for (int i = 0; i < 200 && n != 0; i++) {
        usleep(10000);
        n = tl_sf_locks(id);
    }
    return n;
}

/* The tenant's cached answers (keys aigw:{id}:c:*) that pass check, a Lua
 * expression over k (the key) and v (its value). Waits up to 2 s for want:
 * the after hook stores the answer once the response has gone out. */
static long long
cache_entries(const char *id, const char *check, long long want)
{
    char script[512];
    long long n = -1;

    snprintf(script, sizeof(script),
             "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do"
             " local v = redis.call('GET', k) if %s then n = n + 1 end end return n",
             check);
    for (int i = 0; i < 200 && (n = tl_redis_int("EVAL %s 0 aigw:{%s}:c:*", script, id)) != want; i++)
        usleep(10000);
    return n;
}

static void
test_basic_and_cache(void)
{
    char id[37], code[65], id2[37], code2[65], buf[256];
    char *tok, *tok2, *admin;
    struct tl_resp r;
    long long calls;

    tenant("pro", "{}", id, code);
    tenant("pro", "{}", id2, code2);
    tok = tl_token(code, "optician", 600);
    tok2 = tl_token(code2, "optician", 600);
    admin = tl_token(code, "admin", 600);
    calls = tl_mock_stat(mock, "chat_requests");
    ask(tok, "{\"question\":\"  How do I   clean anti-reflective lenses? \"}", &r);
    tl_expect("first question", &r, 200, NULL);
    CHECK(tl_json_str(&r, "answer", buf, sizeof(buf)) && strstr(buf, "Mock answer") != NULL, "answer from the model");
    CHECK(tl_json_str(&r, "cached", buf, sizeof(buf)) && strcmp(buf, "false") == 0, "not cached");
    CHECK(tl_json_str(&r, "query_type", buf, sizeof(buf)) && strcmp(buf, "knowledge") == 0, "classified knowledge");
    CHECK(tl_json_int(&r, "queries_remaining", -9) == 499, "queries_remaining 499");
    CHECK(tl_json_int(&r, "usage.completion_tokens", 0) > 0, "usage reported");
    CHECK(tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0, "X-Cache MISS");
    CHECK(tl_resp_header(&r, "RateLimit-Policy", buf, sizeof(buf)) &&
              strcmp(buf, "\"minute\";q=30;w=60, \"month\";q=500") == 0,
          "RateLimit-Policy: %s", buf);
    CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) && strncmp(buf, "\"minute\";r=29;t=", 16) == 0,
          "RateLimit: %s", buf);
    tl_resp_free(&r);
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 1, "one upstream call");
    {
        /* what went upstream: the plan's max_tokens, a system prompt naming
         * the tenant (never the model), the question as asked (trimmed) */
        const char *pt[1] = {"pro"};
        long plan_max = tl_sql_long(owner, "SELECT max_tokens FROM plans WHERE tier = $1", 1, pt);
        char sys[512], want[256];
        struct tl_resp st;

        tl_http_url(mock, "GET", "/__mock/stats", NULL, &st);
        CHECK(plan_max == 500 && tl_json_int(&st, "last_request.max_tokens", -1) == plan_max,
              "upstream max_tokens is the pro plan's %ld: %s", plan_max, st.body);
        snprintf(want, sizeof(want), "You are the AI assistant of Test %s (tenant %s), an optical clinic. "
                                     "Query type: knowledge.", code, code);
        CHECK(tl_json_str(&st, "last_request.messages.0.role", buf, sizeof(buf)) && strcmp(buf, "system") == 0 &&
                  tl_json_str(&st, "last_request.messages.0.content", sys, sizeof(sys)) &&
                  strncmp(sys, want, strlen(want)) == 0,
              "messages[0]: the system prompt naming the tenant: %s", st.body);
        CHECK(tl_json_str(&st, "last_request.messages.1.role", buf, sizeof(buf)) && strcmp(buf, "user") == 0 &&
                  tl_json_str(&st, "last_request.messages.1.content", sys, sizeof(sys)) &&
                  strcmp(sys, "How do I   clean anti-reflective lenses?") == 0,
              "messages[1]: the question: %s", st.body);
        CHECK(!tl_json_str(&st, "last_request.messages.2.role", buf, sizeof(buf)), "two messages, no more");
        tl_resp_free(&st);
    }
    /* the leader's after hook: the answer cached for the tenant's TTL (3600 s
     * by default) in the entry format, its result published for waiters and
     * its single-flight lock released, all in one script call */
    CHECK(cache_entries(id, "true", 1) == 1, "one cache entry");
    CHECK(cache_entries(id, "string.sub(v, 1, 3) == 'v3\\n' and string.find(v, 'Mock answer', 1, true)", 1) == 1,
          "the entry holds the answer in the v3 format");
    CHECK(cache_entries(id, "redis.call('TTL', k) > 3590 and redis.call('TTL', k) <= 3600", 1) == 1,
          "the entry expires after the tenant's cache TTL");
    CHECK(sf_locks_settled(id) == 0, "the leader released its single-flight lock");
    CHECK(tl_redis_int("EVAL %s 0 aigw:{%s}:sf:*",
                       "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do"
                       " local t = redis.call('PTTL', k)"
                       " if string.sub(k, -2) == ':r' and t > 0 and t <= 10000 then n = n + 1 end end return n",
                       id) == 1,
          "the leader's result published for 10 s");

    /* same question, different spacing/case: a hit, not billed, quota unchanged */
    ask(tok, "{\"question\":\"how do i clean ANTI-REFLECTIVE lenses?\"}", &r);
    tl_expect("repeat", &r, 200, NULL);
    CHECK(tl_json_str(&r, "cached", buf, sizeof(buf)) && strcmp(buf, "true") == 0, "cached true");
    CHECK(tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "HIT") == 0, "X-Cache HIT");
    CHECK(tl_json_int(&r, "queries_remaining", -9) == 499, "hit does not consume quota");
    tl_resp_free(&r);
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 1, "hit: no upstream call");
    CHECK(billed_rows(id, 1) == 1, "one billed row");
    CHECK(rows(id, 2) == 2, "two usage rows (hit logged, not billed)");
    /* an entry written before finish_reason was kept (v2) is still a hit */
    CHECK(tl_redis_int("EVAL %s 0 aigw:{%s}:c:*",
                       "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do"
                       " local m, c, rest = string.match(redis.call('GET', k), '^v3\\n([^\\n]*)\\n(%d+ %d+) [^\\n]*\\n(.*)$')"
                       " if m then redis.call('SET', k, 'v2\\n' .. m .. '\\n' .. c .. '\\n' .. rest, 'KEEPTTL') n = n + 1 end"
                       " end return n",
                       id) == 1,
          "the entry rewritten in the v2 format");
    ask(tok, "{\"question\":\"How do I clean anti-reflective lenses?\"}", &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "HIT") == 0 &&
              tl_json_str(&r, "answer", buf, sizeof(buf)) && strncmp(buf, "Mock answer", 11) == 0,
          "a v2 entry: HIT with its answer");
    tl_resp_free(&r);
    CHECK(rows(id, 3) == 3, "three usage rows");

    /* another tenant: its own cache */
    ask(tok2, "{\"question\":\"How do I clean anti-reflective lenses?\"}", &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
          "other tenant misses");
    tl_resp_free(&r);

    /* no-cache skips the lookup */
    {
        char auth[4096];
        const char *h[] = {auth, "Content-Type: application/json", "Cache-Control: no-cache", NULL};
        const char *body = "{\"question\":\"How do I clean anti-reflective lenses?\"}";

        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
        tl_http(port, "POST", "/api/ai/query", h, body, strlen(body), &r);
        CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
              "Cache-Control: no-cache -> MISS");
        tl_resp_free(&r);
        /* directive names are case-insensitive (RFC 9111 5.2), and one
         * directive among others counts; a quoted value naming it does not.
         * Each request after the previous one's after hook released its
         * lock: one sent while it is held coalesces with it instead. */
        CHECK(sf_locks_settled(id) == 0, "the no-cache leader released its lock");
        h[2] = "Cache-Control: max-age=0, No-Cache";
        tl_http(port, "POST", "/api/ai/query", h, body, strlen(body), &r);
        CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
              "Cache-Control: max-age=0, No-Cache -> MISS (%ld %s)", r.status, buf);
        tl_resp_free(&r);
        CHECK(sf_locks_settled(id) == 0, "the second no-cache leader released its lock");
        h[2] = "Cache-Control: private=\"no-cache\"";
        tl_http(port, "POST", "/api/ai/query", h, body, strlen(body), &r);
        CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "HIT") == 0,
              "Cache-Control: private=\"no-cache\" -> HIT");
        tl_resp_free(&r);
    }
    /* invalidate -> miss */
    tl_post(port, "/api/ai/cache/invalidate", admin, "{}", &r);
    CHECK(r.status == 200, "invalidate");
    tl_resp_free(&r);
    ask(tok, "{\"question\":\"How do I clean anti-reflective lenses?\"}", &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
          "after invalidate: MISS");
    tl_resp_free(&r);
    free(tok);
    free(tok2);
    free(admin);
}

/* The query route and the OpenAI route share the tenant's cache and its
 * single-flight keys, but not their answers: the OpenAI route's identity is
 * the canonical JSON of what it forwards, and a question can spell exactly
 * that JSON (all lower case, no white space). Its answer is another
 * request's (a system prompt naming the tenant, the question as the user
 * turn), so neither route may hit the other's entry. */
static void
test_routes_apart(void)
{
    char id[37], code[65], buf[256];
    char *tok;
    struct tl_resp r;
    long long calls;

    tenant("enterprise", "{}", id, code);
    tok = tl_token(code, "optician", 600);
    calls = tl_mock_stat(mock, "chat_requests");
    for (int first_chat = 1; first_chat >= 0; first_chat--) {
        const char *word = first_chat ? "chat-first" : "query-first";
        char *chat_body = tl_sprintf("{\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", word);
        /* what the OpenAI route forwards (plan max_tokens 1000, the default model), keys sorted */
        char *canon = tl_sprintf("{\"max_tokens\":1000,\"messages\":[{\"content\":\"%s\",\"role\":\"user\"}],"
                                 "\"model\":\"default\",\"temperature\":0}",
                                 word);
        json_t *qb = json_pack("{s:s, s:s}", "question", canon, "query_type", "knowledge");
        char *query_body = json_dumps(qb, JSON_COMPACT);

        for (int i = 0; i < 2; i++) {
            bool chat = (i == 0) == (first_chat == 1);

            if (chat)
                tl_post(port, "/v1/chat/completions", tok, chat_body, &r);
            else
                ask(tok, query_body, &r);
            CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
                  "%s, then %s: %s misses (%ld %s, %s)", first_chat ? "chat" : "query", first_chat ? "query" : "chat",
                  chat ? "chat" : "query", r.status, buf, r.body);
            tl_resp_free(&r);
            if (i == 0)
                CHECK(cache_entries(id, "true", 3 - 2 * first_chat) == 3 - 2 * first_chat, "the first answer cached");
        }
        json_decref(qb);
        free(query_body);
        free(canon);
        free(chat_body);
    }
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 4, "four upstream calls for four different requests");
    free(tok);
}

static void
test_bad_input(void)
{
    static const struct {
        const char *name, *body, *field;
    } cases[] = {
        {"question missing", "{}", "question"},
        {"question null", "{\"question\":null}", "question"},
        {"question empty", "{\"question\":\"\"}", "question"},
        {"question blank", "{\"question\":\"   \\n\\t \"}", "question"},
        /* white space other than space, tab, CR and LF: was sent to the model and billed */
        {"question form feed and vertical tab", "{\"question\":\" \\f\\u000b \"}", "question"},
        {"question Unicode spaces", "{\"question\":\"\\u00a0 \\u3000\\u2003\"}", "question"},
        /* nothing visible: went to the model and was billed */
        {"question a zero-width space", "{\"question\":\"\\u200b\"}", "question"},
        {"question a BOM", "{\"question\":\"\\ufeff\"}", "question"},
        {"question invisible characters", "{\"question\":\"\\u2060\\u200d\\u00ad\\u200e\\ufe0f\\udb40\\udc41\"}", "question"},
        {"question invisible characters and white space", "{\"question\":\" \\u200b\\n\\u3000\\ufeff \\u2060\\t\"}",
         "question"},
        {"question control characters", "{\"question\":\"\\u0001 \\u007f\\u0085\\u200b\"}", "question"},
        {"question not a string", "{\"question\":42}", "question"},
        {"question an array", "{\"question\":[\"a\"]}", "question"},
        {"unknown query_type", "{\"question\":\"hi\",\"query_type\":\"astrology\"}", "query_type"},
        {"query_type not a string", "{\"question\":\"hi\",\"query_type\":1}", "query_type"},
        {"stream not a boolean", "{\"question\":\"hi\",\"stream\":\"yes\"}", "stream"},
    };
    char id[37], code[65], msg[256], *tok, *big, *redis0;
    long long calls = tl_mock_stat(mock, "chat_requests"), quota0;
    struct tl_resp r;

    tenant("pro", "{}", id, code);
    tok = tl_token(code, "optician", 600);
    redis0 = tl_tenant_redis(id);
    quota0 = tl_quota_used(id);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ask(tok, cases[i].body, &r);
        tl_expect(cases[i].name, &r, 400, "invalid_request");
        CHECK(tl_json_str(&r, "error.message", msg, sizeof(msg)) && strstr(msg, cases[i].field) != NULL,
              "%s: message names %s", cases[i].name, cases[i].field);
        tl_resp_free(&r);
    }
    /* 4000 characters (multi-byte) pass, 4001 do not */
    big = malloc(4001 * 2 + 64);
    {
        size_t o = (size_t)snprintf(big, 64, "{\"question\":\"");

        for (int i = 0; i < 4001; i++) {
            memcpy(big + o, "\xc3\xa9", 2); /* é */
            o += 2;
        }
        memcpy(big + o, "\"}", 3);
        ask(tok, big, &r);
        tl_expect("4001 characters", &r, 400, "invalid_request");
        tl_resp_free(&r);
    }
    free(big);
    {
        const char body[] = "{\"question\":\"caf\xff\"}";
        char auth[4096];
        const char *h[] = {auth, "Content-Type: application/json", NULL};

        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
        tl_http(port, "POST", "/api/ai/query", h, body, sizeof(body) - 1, &r);
        CHECK(r.status == 400, "invalid UTF-8 -> 400 (%ld)", r.status);
        tl_resp_free(&r);
    }
    CHECK(tl_mock_stat(mock, "chat_requests") == calls, "bad input: no upstream call");
    CHECK(tl_usage_flushed(port), "bad input: the usage rows are written");
    CHECK(billed_rows(id, 0) == 0, "bad input: nothing billed");
    CHECK(tl_quota_used(id) == quota0, "bad input: no quota used (%lld, was %lld)", tl_quota_used(id), quota0);
    CHECK(tl_tenant_redis_kept(id, redis0, msg, sizeof(msg)),
          "bad input: nothing counted or stored in Redis (rate limit window, cache, single-flight): %s", msg);
    free(redis0);
    free(tok);
}

/* The 4000 characters are counted after trimming, and the Unicode spaces
 * (U+00A0, U+3000, ...), form feed and vertical tab are trimmed like ASCII
 * ones: a question that counts as blank when made only of them. Trimmed of
 * ASCII space, tab, CR and LF only, 4000 characters pasted with a
 * non-breaking space at an end were refused as 4001, and such spaces went
 * to the model. */
static void
test_question_trimmed(void)
{
    char id[37], code[65], answer[256] = "", *tok, *big;
    struct tl_resp r;
    size_t o;

    tenant("pro", "{}", id, code);
    tok = tl_token(code, "optician", 600);
    big = malloc(4000 * 2 + 128);
    o = (size_t)snprintf(big, 64, "{\"question\":\"\\u00a0\\f\xe3\x80\x80");
    for (int i = 0; i < 4000; i++) {
        memcpy(big + o, "\xc3\xa9", 2); /* é */
        o += 2;
    }
    memcpy(big + o, "\xc2\xa0\\u000b \\u2003\"}", 18); /* with its NUL */
    ask(tok, big, &r);
    tl_expect("4000 characters between Unicode spaces", &r, 200, NULL);
    /* the mock answers with the start of the question it was sent */
    CHECK(tl_json_str(&r, "answer", answer, sizeof(answer)) && strncmp(answer, "Mock answer to [\xc3\xa9", 18) == 0,
          "the model gets the question trimmed: %.40s", answer);
    tl_resp_free(&r);
    free(big);
    /* invisible characters around a visible one: a question like any other */
    ask(tok, "{\"question\":\"\\ufeff\\u200bIs myopia hereditary?\\u2060\"}", &r);
    tl_expect("invisible characters around a question", &r, 200, NULL);
    tl_resp_free(&r);
    free(tok);
}

/* The id of a tenant by its code. */
static void
tenant_id(const char *code, char id[37])
{
    const char *p[1] = {code};
    PGresult *r = tl_sql(owner, true, "SELECT id FROM tenants WHERE code = $1", 1, p);

    snprintf(id, 37, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
}

static void
test_gating(void)
{
    char buf[64], what[256], id3[37], id2[37], *tok, *redis3, *redis2;
    struct tl_resp r;
    long long calls = tl_mock_stat(mock, "chat_requests");

    /* refused before admission: a gated request is not counted in the rate
     * limit window, nor does it look up the cache or lead a flight */
    tenant_id("clinic_003", id3);
    tenant_id("clinic_002", id2);
    redis3 = tl_tenant_redis(id3);
    redis2 = tl_tenant_redis(id2);
    tok = tl_token("clinic_003", "optician", 600);
    ask(tok, "{\"question\":\"What were our sales last month?\"}", &r);
    tl_expect("standard plan, sales question", &r, 403, "feature_not_in_plan");
    CHECK(tl_json_str(&r, "error.required_tier", buf, sizeof(buf)) && strcmp(buf, "pro") == 0, "required_tier pro");
    CHECK(tl_json_str(&r, "error.feature", buf, sizeof(buf)) && strcmp(buf, "sales") == 0, "feature sales");
    tl_resp_free(&r);
    ask(tok, "{\"question\":\"x\",\"query_type\":\"patient_analytics\"}", &r);
    tl_expect("standard plan, patient analytics", &r, 403, "feature_not_in_plan");
    CHECK(tl_json_str(&r, "error.required_tier", buf, sizeof(buf)) && strcmp(buf, "enterprise") == 0,
          "required_tier enterprise");
    CHECK(tl_json_str(&r, "error.feature", buf, sizeof(buf)) && strcmp(buf, "patient_analytics") == 0,
          "feature patient_analytics");
    tl_resp_free(&r);
    free(tok);
    tok = tl_token("clinic_002", "optician", 600);
    ask(tok, "{\"question\":\"List the phone numbers of patients with myopia\",\"query_type\":\"patient_analytics\"}", &r);
    tl_expect("PII request", &r, 403, "pii_not_allowed");
    tl_resp_free(&r);
    /* no-break spaces between the words (went to the model before) */
    ask(tok, "{\"question\":\"each patient's date\\u00a0of\\u00a0birth\",\"query_type\":\"patient_analytics\"}", &r);
    tl_expect("PII request with no-break spaces", &r, 403, "pii_not_allowed");
    tl_resp_free(&r);
    /* no query_type, an invisible character inside "patients": classified
     * as knowledge before, so the guard never ran and the model was asked */
    ask(tok, "{\"question\":\"List the pa\\u200btients' names\"}", &r);
    tl_expect("PII request, classified, zero-width space in 'patients'", &r, 403, "pii_not_allowed");
    tl_resp_free(&r);
    ask(tok, "{\"question\":\"customer-trends: their e-mail addresses\"}", &r);
    tl_expect("PII request, classified, 'customer-trends'", &r, 403, "pii_not_allowed");
    tl_resp_free(&r);
    free(tok);
    /* each refusal has its usage row: the type it was refused for, 403 and
     * its code, neither billed nor successful */
    CHECK(tl_usage_flushed(port), "gated: the usage rows are written");
    CHECK(tl_usage_rows(owner, id2,
                        "error_code = 'pii_not_allowed' AND status_code = 403 AND query_type = 'patient_analytics'"
                        " AND NOT billed AND NOT success AND question_sha256 IS NOT NULL",
                        4) == 4,
          "gated (PII): four usage rows, 403 pii_not_allowed, patient_analytics, not billed");
    CHECK(tl_usage_rows(owner, id3,
                        "error_code = 'feature_not_in_plan' AND status_code = 403 AND NOT billed AND NOT success"
                        " AND query_type IN ('sales', 'patient_analytics')",
                        2) == 2,
          "gated (plan): two usage rows, 403 feature_not_in_plan with the question's type, not billed");
    CHECK(tl_mock_stat(mock, "chat_requests") == calls, "gated: no upstream call");
    CHECK(id3[0] && tl_tenant_redis_kept(id3, redis3, what, sizeof(what)),
          "gated (plan): nothing counted or stored in Redis: %s", what);
    CHECK(id2[0] && tl_tenant_redis_kept(id2, redis2, what, sizeof(what)),
          "gated (PII): nothing counted or stored in Redis: %s", what);
    free(redis3);
    free(redis2);
}

/* The error's required_tier as JSON: its string in buf, "null", or
 * "missing" when the member is absent (or the body is no JSON). */
static void
required_tier_json(const struct tl_resp *r, char *buf, size_t cap)
{
    json_t *root = json_loads(r->body != NULL ? r->body : "", 0, NULL);
    json_t *v = json_object_get(json_object_get(root, "error"), "required_tier");

    snprintf(buf, cap, "%s", json_is_string(v) ? json_string_value(v) : json_is_null(v) ? "null" : "missing");
    json_decref(root);
}

/* required_tier is the lowest-ranked plan with the feature. Of plans of
 * equal rank it is the first by name: it was whichever row PostgreSQL met
 * first (here the older "pro" over a new "gating_tie" of the same rank).
 * With no plan that has the feature it is null: it was "", no plan's name. */
static void
test_required_tier(void)
{
    static const char ask_sales[] = "{\"question\":\"What were our sales last month?\"}";
    static const char ask_stock[] = "{\"question\":\"x\",\"query_type\":\"inventory\"}";
    char id[37], code[65], buf[64], *tok;
    const char *saved[8][2];
    struct tl_resp r;
    PGresult *with;
    int n;

    PQclear(tl_sql(owner, true,
                   "INSERT INTO plans (tier, display_name, monthly_query_limit, requests_per_minute, max_tokens, "
                   "features, rank) VALUES ('gating_tie', 'Tie', 100, 10, 300, '{knowledge,sales}', "
                   "(SELECT rank FROM plans WHERE tier = 'pro'))",
                   0, NULL));
    tenant("standard", "{}", id, code);
    tok = tl_token(code, "optician", 600);
    ask(tok, ask_sales, &r);
    tl_expect("equal ranks: standard plan, sales question", &r, 403, "feature_not_in_plan");
    required_tier_json(&r, buf, sizeof(buf));
    CHECK(strcmp(buf, "gating_tie") == 0, "equal ranks: the first plan by name is required (%s)", buf);
    tl_resp_free(&r);
    free(tok);
    PQclear(tl_sql(owner, true, "DELETE FROM plans WHERE tier = 'gating_tie'", 0, NULL));

    /* no plan has inventory for a moment (each plan's list is put back) */
    with = tl_sql(owner, true, "SELECT tier, features::text FROM plans WHERE 'inventory' = ANY(features)", 0, NULL);
    n = PQntuples(with) < 8 ? PQntuples(with) : 8;
    for (int i = 0; i < n; i++) {
        saved[i][0] = PQgetvalue(with, i, 0);
        saved[i][1] = PQgetvalue(with, i, 1);
    }
    PQclear(tl_sql(owner, true, "UPDATE plans SET features = array_remove(features, 'inventory')", 0, NULL));
    tenant("standard", "{}", id, code);
    tok = tl_token(code, "optician", 600);
    ask(tok, ask_stock, &r);
    tl_expect("no plan has the feature", &r, 403, "feature_not_in_plan");
    required_tier_json(&r, buf, sizeof(buf));
    CHECK(strcmp(buf, "null") == 0, "no plan has the feature: required_tier is null (%s)", buf);
    CHECK(tl_json_str(&r, "error.feature", buf, sizeof(buf)) && strcmp(buf, "inventory") == 0,
          "no plan has the feature: feature inventory");
    tl_resp_free(&r);
    free(tok);
    for (int i = 0; i < n; i++)
        PQclear(tl_sql(owner, true, "UPDATE plans SET features = $2::text[] WHERE tier = $1", 2, saved[i]));
    PQclear(with);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM plans WHERE 'inventory' = ANY(features)", 0, NULL) == n && n > 0,
          "the plans have inventory again (%d)", n);

    /* the plans as they were: the lowest rank with the feature */
    tenant("standard", "{}", id, code);
    tok = tl_token(code, "optician", 600);
    ask(tok, ask_stock, &r);
    required_tier_json(&r, buf, sizeof(buf));
    CHECK(r.status == 403 && strcmp(buf, "pro") == 0, "inventory back: required_tier pro (%ld %s)", r.status, buf);
    tl_resp_free(&r);
    free(tok);
}

static void
test_quota_race(void)
{
    char id[37], code[65], *tok, *bodies[50];
    struct tl_resp r[50];
    int ok = 0, exhausted = 0;
    const char *p[1];

    tenant("pro", "{\"monthly_query_limit\":5,\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    for (int i = 0; i < 50; i++)
        bodies[i] = tl_sprintf("{\"question\":\"distinct question number %d\"}", i);
    tl_post_parallel(port, "/api/ai/query", tok, NULL, (const char *const *)bodies, 50, r);
    for (int i = 0; i < 50; i++) {
        char c[64] = "";

        ok += r[i].status == 200;
        exhausted += r[i].status == 429 && tl_json_str(&r[i], "error.code", c, sizeof(c)) && strcmp(c, "quota_exhausted") == 0;
        if (r[i].status == 429)
            tl_expect_quota_exhausted("quota race", &r[i]);
        tl_resp_free(&r[i]);
        free(bodies[i]);
    }
    CHECK(ok == 5, "quota race: exactly 5 answered (got %d)", ok);
    CHECK(exhausted == 45, "quota race: 45 quota_exhausted (got %d)", exhausted);
    CHECK(billed_rows(id, 5) == 5, "exactly 5 billed rows");
    p[0] = id;
    CHECK(tl_wait_sql(owner, 5, 3000, "SELECT ai_queries_used FROM tenants WHERE id = $1", 1, p) == 5,
          "ai_queries_used = 5");
    CHECK(rows(id, 50) == 50, "a usage row for every request");
    {
        struct tl_resp u;
        char other_id[37], other_code[65], *other;

        tl_get(port, "/api/ai/usage?period=month", tok, &u);
        CHECK(u.status == 200 && tl_json_int(&u, "total", -1) == 50 && tl_json_int(&u, "billed", -1) == 5 &&
                  tl_json_int(&u, "successful", -1) == 5,
              "usage stats: 50 requests, 5 billed, 5 successful: %s", u.body);
        tl_resp_free(&u);
        tl_get(port, "/api/ai/usage?period=year", tok, &u);
        tl_expect("bad period", &u, 400, "invalid_request");
        tl_resp_free(&u);
        tenant("pro", "{}", other_id, other_code);
        other = tl_token(other_code, "optician", 600);
        tl_get(port, "/api/ai/usage?period=day", other, &u);
        CHECK(u.status == 200 && tl_json_int(&u, "total", -1) == 0, "another tenant sees none of it: %s", u.body);
        tl_resp_free(&u);
        free(other);
    }
    {
        /* exhausted, and the same question five times at once: the admission
         * script makes one of them leader and refuses its reservation; the
         * others get its published 429 and no lock is left behind */
        const char *same[5];

        for (int i = 0; i < 5; i++)
            same[i] = "{\"question\":\"one question, quota gone\"}";
        tl_post_parallel(port, "/api/ai/query", tok, NULL, same, 5, r);
        exhausted = 0;
        for (int i = 0; i < 5; i++) {
            char c[64] = "";

            exhausted += r[i].status == 429 && tl_json_str(&r[i], "error.code", c, sizeof(c)) &&
                         strcmp(c, "quota_exhausted") == 0;
            /* the leader's and the waiters', who got its published 429 */
            tl_expect_quota_exhausted("identical questions over the quota", &r[i]);
            tl_resp_free(&r[i]);
        }
        CHECK(exhausted == 5, "identical questions over the quota: all 5 quota_exhausted (got %d)", exhausted);
        CHECK(sf_locks_settled(id) == 0, "no single-flight lock left behind");
        CHECK(tl_quota_used(id) == 5, "the counter still says 5 (%lld)", (long long)tl_quota_used(id));
        CHECK(rows(id, 55) == 55, "a usage row for each refusal");
    }
    {
        /* an Idempotency-Key's 429 quota_exhausted is not stored: nothing
         * ran, and a stored one was replayed for 24 h, also after the
         * tenant got queries again (an upgrade, the month's turn); the
         * retry is refused afresh while the quota is gone, and runs once
         * the quota is raised */
        const char *h[] = {"Idempotency-Key: over-quota-1", NULL};
        const char *b[1] = {"{\"question\":\"an idempotent question, quota gone\"}"};
        char buf[16];
        int i;

        tl_post_parallel(port, "/api/ai/query", tok, h, b, 1, r);
        tl_expect_quota_exhausted("idempotent, over the quota", &r[0]);
        tl_resp_free(&r[0]);
        tl_post_parallel(port, "/api/ai/query", tok, h, b, 1, r);
        CHECK(tl_resp_header(&r[0], "Idempotent-Replayed", buf, sizeof(buf)) == NULL,
              "the 429 is not replayed: the retry is refused afresh (%ld %s)", r[0].status, r[0].body);
        tl_expect_quota_exhausted("idempotent, over the quota, retried", &r[0]);
        tl_resp_free(&r[0]);
        PQclear(tl_sql(owner, true,
                       "UPDATE tenants SET overrides = overrides || '{\"monthly_query_limit\": 6}' WHERE id = $1", 1,
                       p));
        r[0].status = 0;
        for (i = 0; i < 40; i++) { /* the change reaches aigw through NOTIFY */
            tl_post_parallel(port, "/api/ai/query", tok, h, b, 1, r);
            if (r[0].status != 429)
                break;
            tl_resp_free(&r[0]);
            usleep(50 * 1000);
        }
        CHECK(r[0].status == 200 && tl_resp_header(&r[0], "Idempotent-Replayed", buf, sizeof(buf)) == NULL,
              "the quota raised, the retry with the same key runs (%ld %s)", r[0].status, r[0].body);
        tl_resp_free(&r[0]);
        tl_post_parallel(port, "/api/ai/query", tok, h, b, 1, r);
        CHECK(r[0].status == 200 && tl_resp_header(&r[0], "Idempotent-Replayed", buf, sizeof(buf)) != NULL,
              "and its answer is what the key replays from then on (%ld)", r[0].status);
        tl_resp_free(&r[0]);
        CHECK(tl_quota_used(id) == 6, "the counter says 6 (%lld)", (long long)tl_quota_used(id));
    }
    free(tok);
}

static void
test_rebuild(void)
{
    char id[37], code[65], key[128], month[8], *tok;
    struct tl_resp r;

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    for (int i = 0; i < 3; i++) {
        char *b = tl_sprintf("{\"question\":\"rebuild question %d\"}", i);

        ask(tok, b, &r);
        CHECK(r.status == 200, "rebuild warm-up %d", i);
        tl_resp_free(&r);
        free(b);
    }
    CHECK(billed_rows(id, 3) == 3, "3 billed rows before the rebuild");
    aigw_month_key(aigw_wall_s(), month);
    snprintf(key, sizeof(key), "aigw:{%s}:q:%s", id, month);
    CHECK(tl_redis_int("DEL %s", key) == 1, "quota key deleted");
    ask(tok, "{\"question\":\"rebuild question final\"}", &r);
    CHECK(r.status == 200 && tl_json_int(&r, "queries_remaining", -9) == 500 - 4,
          "after losing the counter: remaining = limit - billed rows - this one (%s)", r.body);
    tl_resp_free(&r);
    free(tok);
}

static void
test_single_flight(int port2)
{
    char id[37], code[65], *tok, *bodies[20], first[256] = "";
    struct tl_resp r[20];
    long long calls;
    int same = 0;

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    tl_mock_config(mock, "{\"token_latency_ms\":25}");
    for (int round = 0; round < 2; round++) {
        calls = tl_mock_stat(mock, "chat_requests");
        for (int i = 0; i < 20; i++)
            bodies[i] = tl_sprintf("{\"question\":\"single flight round %d\"}", round);
        if (round == 0) {
            tl_post_parallel(port, "/api/ai/query", tok, NULL, (const char *const *)bodies, 20, r);
        } else {
            /* split across two aigw processes sharing Redis */
            tl_post_parallel_two(port, port2, "/api/ai/query", tok, (const char *const *)bodies, 20, r);
        }
        same = 0;
        for (int i = 0; i < 20; i++) {
            char a[256] = "";

            tl_json_str(&r[i], "answer", a, sizeof(a));
            if (i == 0)
                snprintf(first, sizeof(first), "%s", a);
            same += r[i].status == 200 && a[0] != '\0' && strcmp(a, first) == 0;
            tl_resp_free(&r[i]);
            free(bodies[i]);
        }
        CHECK(tl_mock_stat(mock, "chat_requests") == calls + 1, "round %d: exactly one upstream call (%lld)", round,
              tl_mock_stat(mock, "chat_requests") - calls);
        CHECK(same == 20, "round %d: all 20 got the same answer (%d)", round, same);
    }
    CHECK(billed_rows(id, 2) == 2, "one billed row per round");
    tl_mock_config(mock, "{\"token_latency_ms\":0}");
    free(tok);
}

/* A failed leader publishes its error for its own waiters. The next flight
 * of the same question (within the error's 10 s) gets a new leader, whose
 * waiters must get its answer, not the earlier flight's error. */
static void
test_single_flight_after_error(void)
{
    char id[37], code[65], *tok, *bodies[2];
    struct tl_resp r[2];
    long long calls;
    int ok = 0;

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    tl_mock_config(mock, "{\"mode\":\"error500\",\"fail_next\":1}");
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"a flight after a failed one\"}", &r[0]);
    tl_expect("the first flight fails", &r[0], 502, "upstream_error");
    tl_resp_free(&r[0]);
    tl_mock_config(mock, "{\"first_token_ms\":600}");
    calls = tl_mock_stat(mock, "chat_requests");
    for (int i = 0; i < 2; i++)
        bodies[i] = tl_sprintf("{\"question\":\"a flight after a failed one\"}");
    tl_post_parallel(port, "/api/ai/query", tok, NULL, (const char *const *)bodies, 2, r);
    for (int i = 0; i < 2; i++) {
        ok += r[i].status == 200;
        if (r[i].status != 200)
            fprintf(stderr, "second flight: %ld %s\n", r[i].status, r[i].body);
        tl_resp_free(&r[i]);
        free(bodies[i]);
    }
    CHECK(ok == 2, "the second flight: leader and waiter both 200 (%d)", ok);
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 1, "one upstream call for it (%lld)",
          tl_mock_stat(mock, "chat_requests") - calls);
    tl_mock_reset(mock);
    free(tok);
}

/* A tenant of its own (its token returned, NULL when the instance did not
 * start) and another aigw on the config patch, which spools to
 * ${AIGW_TEST_SPOOL}-<spool>. */
static char *
extra_setup(char id[37], char code[65], struct tl_aigw *g, const char *patch)
{
    char *tok, *cfg;
    int rc;

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    cfg = tl_config_patch(patch);
    rc = tl_aigw_start(g, cfg);
    free(cfg);
    CHECK(rc == 0, "another aigw starts");
    if (rc == 0)
        return tok;
    free(tok);
    return NULL;
}

/* After extra_setup's instance stopped: its spool goes, and the token. */
static void
extra_teardown(char *tok, const char *spool)
{
    char *rm = tl_sprintf("rm -rf '%s-%s'", tl_env("AIGW_TEST_SPOOL"), spool);

    CHECK(system(rm) == 0, "spool removed");
    free(rm);
    free(tok);
}

/* An instance whose drain gives up after 300 ms. */
#define DRAINED_PATCH \
    "{\"shutdown\":{\"drain_timeout_ms\":300},\"usage\":{\"spool_dir\":\"${AIGW_TEST_SPOOL}-drained\"}}"

/* Wait (up to 2 s) until one more call than base is at the mock; how many more are. */
static long long
wait_at_mock(long long base)
{
    long long n = 0;

    for (int i = 0; i < 100 && (n = tl_mock_stat(mock, "in_flight") - base) < 1; i++)
        usleep(20 * 1000);
    return n;
}

/* A leader cut short by its instance's drain publishes no failure: a waiter
 * on another instance takes the flight over and is answered (it used to
 * get the draining instance's 503). */
static void
test_leader_drained(void)
{
    char id[37], code[65], *tok;
    const char *body[1] = {"{\"question\":\"asked while its leader's instance drains\"}"};
    struct tl_resp lr[1], wr[1];
    struct tl_parallel *leader, *waiter;
    struct tl_aigw gw3;
    long long base = tl_mock_stat(mock, "in_flight"), in_flight = 0, locks = 0;

    tok = extra_setup(id, code, &gw3, DRAINED_PATCH);
    if (tok == NULL)
        return;
    tl_mock_config(mock, "{\"first_token_ms\":4000}");
    leader = tl_post_parallel_bg(gw3.port, "/api/ai/query", tok, body, 1, lr);
    in_flight = wait_at_mock(base);
    CHECK(in_flight == 1, "the leader's call is at the model (%lld)", in_flight);
    tl_mock_config(mock, "{\"first_token_ms\":0}"); /* for the flight taken over */
    waiter = tl_post_parallel_bg(port, "/api/ai/query", tok, body, 1, wr);
    usleep(300 * 1000);
    locks = tl_sf_locks(id);
    CHECK(locks == 1 && tl_mock_stat(mock, "in_flight") - base == 1, "the other instance's request waits (%lld)",
          locks);
    CHECK(tl_aigw_stop(&gw3) == 0, "the leader's instance drains and exits 0");
    tl_parallel_join(leader);
    tl_parallel_join(waiter);
    CHECK(lr[0].status == 503, "the leader, cut short by the drain: 503 (%ld)", lr[0].status);
    CHECK(wr[0].status == 200, "the waiter on the other instance takes over: 200 (%ld %s)", wr[0].status, wr[0].body);
    tl_resp_free(&lr[0]);
    tl_resp_free(&wr[0]);
    tl_mock_reset(mock);
    extra_teardown(tok, "drained");
}

/* An idempotent request, on a thread of its own. */
struct idem_ask {
    const char *token;
    int port;
    struct tl_resp r;
    pthread_t th;
};

static void *
idem_ask_run(void *arg)
{
    struct idem_ask *a = arg;
    const char *h[] = {"Idempotency-Key: drained-1", NULL};
    const char *body[1] = {"{\"question\":\"asked while its waiter's instance drains\"}"};

    tl_post_parallel(a->port, "/api/ai/query", a->token, h, body, 1, &a->r);
    return NULL;
}

/* An idempotent waiter cut short by its instance's drain (504: it stopped
 * waiting) leaves no outcome behind: its client's retry on another
 * instance gets the flight's answer (before: the 504 was replayed for 24 h). */
static void
test_waiter_drained_idempotent(void)
{
    char id[37], code[65], *tok, buf[16];
    const char *body[1] = {"{\"question\":\"asked while its waiter's instance drains\"}"};
    struct tl_resp lr[1];
    struct tl_parallel *leader;
    struct idem_ask w = {0};
    struct tl_aigw gw3;
    long long base = tl_mock_stat(mock, "in_flight"), in_flight = 0;

    tok = extra_setup(id, code, &gw3, DRAINED_PATCH);
    if (tok == NULL)
        return;
    tl_mock_config(mock, "{\"first_token_ms\":1200}");
    leader = tl_post_parallel_bg(port, "/api/ai/query", tok, body, 1, lr);
    in_flight = wait_at_mock(base);
    CHECK(in_flight == 1, "the leader's call is at the model (%lld)", in_flight);
    w = (struct idem_ask){.token = tok, .port = gw3.port};
    pthread_create(&w.th, NULL, idem_ask_run, &w);
    usleep(300 * 1000);
    CHECK(tl_aigw_stop(&gw3) == 0, "the waiter's instance drains and exits 0");
    pthread_join(w.th, NULL);
    CHECK(w.r.status >= 500, "the waiter, cut short by the drain (%ld %s)", w.r.status, w.r.body);
    tl_resp_free(&w.r);
    w.port = port;
    idem_ask_run(&w); /* the retry, on the other instance */
    tl_parallel_join(leader);
    CHECK(w.r.status == 200 && tl_resp_header(&w.r, "Idempotent-Replayed", buf, sizeof(buf)) == NULL,
          "its retry on another instance is answered, not replayed (%ld %s)", w.r.status, w.r.body);
    CHECK(lr[0].status == 200, "the leader: 200 (%ld)", lr[0].status);
    tl_resp_free(&w.r);
    tl_resp_free(&lr[0]);
    tl_mock_reset(mock);
    extra_teardown(tok, "drained");
}

static void
test_rate_limit(void)
{
    char id[37], code[65], *tok, buf[128];
    struct tl_resp r;
    time_t now;

    tenant("pro", "{\"requests_per_minute\":5}", id, code);
    tok = tl_token(code, "optician", 600);
    /* start the burst just before a minute boundary: a fixed window would reset there */
    now = time(NULL);
    if (now % 60 < 56)
        sleep((unsigned)(57 - now % 60));
    for (int i = 0; i < 5; i++) {
        ask(tok, "{\"question\":\"rate limited question\"}", &r);
        CHECK(r.status == 200, "request %d within the limit (%ld)", i + 1, r.status);
        tl_resp_free(&r);
    }
    {
        /* the seconds' buckets add up to n: each admission counted once in its bucket */
        long long sum = 0;

        for (time_t s = now - 1; s <= time(NULL) + 1; s++) {
            long long c = tl_redis_int("HGET aigw:{%s}:rlb %lld", id, (long long)s);

            sum += c > 0 ? c : 0;
        }
        CHECK(sum == 5 && tl_redis_int("HGET aigw:{%s}:rlb n", id) == 5, "buckets sum to n = 5 (%lld)", sum);
    }
    ask(tok, "{\"question\":\"rate limited question\"}", &r);
    tl_expect("6th request", &r, 429, "rate_limited");
    CHECK(tl_resp_header(&r, "Retry-After", buf, sizeof(buf)) && strtol(buf, NULL, 10) >= 1 &&
              strtol(buf, NULL, 10) <= 61,
          "Retry-After %s", buf);
    CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) && strncmp(buf, "\"minute\";r=0;t=", 15) == 0,
          "RateLimit r=0: %s", buf);
    tl_resp_free(&r);
    sleep(4); /* now past the minute boundary */
    ask(tok, "{\"question\":\"rate limited question\"}", &r);
    tl_expect("after the minute boundary: still limited (sliding window)", &r, 429, "rate_limited");
    tl_resp_free(&r);
    free(tok);
}

/* The window's one-second buckets, seeded by hand: buckets older than 60 s
 * stop counting (and are deleted), "lo" moves to the oldest live bucket, and
 * the reset time is that bucket's second + 61. The test's clock is the
 * machine's, Redis TIME too; margins of 2+ s absorb a second boundary. */
static void
test_rate_buckets(void)
{
    char id[37], code[65], *tok, buf[128];
    struct tl_resp r;
    long long now, t;

    tenant("pro", "{\"requests_per_minute\":3}", id, code);
    tok = tl_token(code, "optician", 600);
    now = (long long)time(NULL);

    /* everything stale: the whole window restarts */
    tl_redis_int("HSET aigw:{%s}:rlb n 3 lo %lld %lld 3", id, now - 63, now - 63);
    ask(tok, "{\"question\":\"bucket question one\"}", &r);
    CHECK(r.status == 200, "stale window: admitted (%ld)", r.status);
    tl_resp_free(&r);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == 1, "stale window: n restarts at 1");
    CHECK(tl_redis_int("HEXISTS aigw:{%s}:rlb %lld", id, now - 63) == 0, "stale bucket deleted");
    t = tl_redis_int("PTTL aigw:{%s}:rlb", id);
    CHECK(t > 50000 && t <= 61000, "a new bucket sets the window's TTL (window + 1 s): %lld ms", t);
    t = tl_redis_int("HLEN aigw:{%s}:rlb", id);
    CHECK(t == 3, "n, lo and one bucket: %lld fields", t);

    /* partly stale: the old bucket goes, lo moves to the live one */
    tl_redis_int("DEL aigw:{%s}:rlb", id);
    tl_redis_int("HSET aigw:{%s}:rlb n 3 lo %lld %lld 2 %lld 1", id, now - 63, now - 63, now - 20);
    ask(tok, "{\"question\":\"bucket question two\"}", &r);
    CHECK(r.status == 200, "partly stale: admitted (%ld)", r.status);
    CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) && strncmp(buf, "\"minute\";r=1;t=", 15) == 0,
          "partly stale: one left: %s", buf);
    t = strtoll(buf + 15, NULL, 10);
    CHECK(t >= 39 && t <= 43, "reset follows the oldest live bucket (~41 s): %lld", t);
    tl_resp_free(&r);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == 2, "partly stale: n = 1 live + 1 new");
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb lo", id) == now - 20, "lo = the oldest live bucket");
    CHECK(tl_redis_int("HEXISTS aigw:{%s}:rlb %lld", id, now - 63) == 0, "stale bucket deleted");
    t = tl_redis_int("PTTL aigw:{%s}:rlb", id);
    CHECK(t > 50000 && t <= 61000, "a window seeded without a TTL gets one from its new bucket: %lld ms", t);

    /* live, lo unchanged: the script leaves lo alone and adds the new bucket */
    tl_redis_int("DEL aigw:{%s}:rlb", id);
    tl_redis_int("HSET aigw:{%s}:rlb n 1 lo %lld %lld 1", id, now - 30, now - 30);
    ask(tok, "{\"question\":\"bucket question four\"}", &r);
    CHECK(r.status == 200, "live window: admitted (%ld)", r.status);
    tl_resp_free(&r);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == 2, "live window: n = 1 + 1");
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb lo", id) == now - 30, "live window: lo kept");
    t = tl_redis_int("HLEN aigw:{%s}:rlb", id);
    CHECK(t == 4, "n, lo and two buckets: %lld fields", t);

    /* a window hash without lo (not one the script writes): it starts over */
    tl_redis_int("DEL aigw:{%s}:rlb", id);
    tl_redis_int("HSET aigw:{%s}:rlb n 2", id);
    ask(tok, "{\"question\":\"bucket question five\"}", &r);
    CHECK(r.status == 200, "window without lo: admitted (%ld)", r.status);
    tl_resp_free(&r);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == 1, "window without lo: n restarts at 1");
    t = tl_redis_int("HGET aigw:{%s}:rlb lo", id);
    CHECK(t >= now - 2 && t <= now + 5, "window without lo: lo = the current second (%lld, now %lld)", t, now);

    /* full and live: refused until the oldest bucket leaves (~3 s), nothing counted */
    tl_redis_int("DEL aigw:{%s}:rlb", id);
    tl_redis_int("HSET aigw:{%s}:rlb n 3 lo %lld %lld 2 %lld 1", id, now - 58, now - 58, now - 30);
    ask(tok, "{\"question\":\"bucket question three\"}", &r);
    tl_expect("full window", &r, 429, "rate_limited");
    CHECK(tl_resp_header(&r, "Retry-After", buf, sizeof(buf)) && strtol(buf, NULL, 10) >= 1 &&
              strtol(buf, NULL, 10) <= 5,
          "Retry-After until the oldest bucket leaves (~3 s): %s", buf);
    tl_resp_free(&r);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == 3, "refused: not counted");
    free(tok);
}

static void
test_upstream_failures(void)
{
    static const struct {
        const char *mode;
        long status;
        const char *code;
    } cases[] = {
        {"error500", 502, "upstream_error"},
        {"loading", 502, "upstream_error"},
        {"garbage", 502, "upstream_error"},
        {"hang", 504, "upstream_timeout"},
    };
    char id[37], code[65], *tok;
    struct tl_resp r;
    const char *p[1];

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    p[0] = id;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char cfg[128], *b = tl_sprintf("{\"question\":\"failure case %zu\"}", i);

        snprintf(cfg, sizeof(cfg), "{\"mode\":\"%s\",\"fail_next\":1}", cases[i].mode);
        tl_mock_config(mock, cfg);
        ask(tok, b, &r);
        tl_expect(cases[i].mode, &r, cases[i].status, cases[i].code);
        tl_resp_free(&r);
        free(b);
    }
    tl_mock_reset(mock);
    CHECK(tl_wait_sql(owner, 4, 3000,
                      "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND NOT success AND status_code >= 502", 1,
                      p) == 4,
          "a usage row with success=false per failure");
    /* only once the rows are in: before, "none billed" held at once */
    CHECK(tl_usage_flushed(port), "failures: the usage rows are written");
    CHECK(billed_rows(id, 0) == 0, "failures are not billed");
    ask(tok, "{\"question\":\"after failures\"}", &r);
    CHECK(r.status == 200 && tl_json_int(&r, "queries_remaining", -9) == 499,
          "quota refunded: remaining 499 after 4 failures and 1 success (%s)", r.body);
    tl_resp_free(&r);
    free(tok);
}

static int64_t
wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A usage row is stamped with the request's start, the instant its quota
 * was reserved for, not its end: a question asked at 23:59:59 on the last
 * of the month and answered after midnight is billed in the month it was
 * counted in (and refunded there, when it fails). */
static void
test_row_time(void)
{
    char id[37], code[65], *tok;
    struct tl_resp r;
    const char *p[1];
    int64_t sent, answered;
    long stamped;

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    p[0] = id;
    tl_mock_config(mock, "{\"first_token_ms\":900}");
    sent = wall_ms();
    ask(tok, "{\"question\":\"a slow answer, stamped when asked\"}", &r);
    answered = wall_ms();
    tl_expect("slow answer", &r, 200, NULL);
    tl_resp_free(&r);
    tl_mock_reset(mock);
    CHECK(billed_rows(id, 1) == 1, "the slow answer is billed");
    stamped = tl_sql_long(owner, "SELECT (extract(epoch FROM created_at) * 1000)::bigint FROM ai_usage_logs"
                                 " WHERE tenant_id = $1", 1, p);
    CHECK(stamped >= sent - 50 && stamped <= sent + 500 && stamped <= answered - 800,
          "created_at is when it was asked: %ld ms after sending, %ld ms before the answer", (long)(stamped - sent),
          (long)(answered - stamped));
    free(tok);
}

static void
test_idempotency(void)
{
    char id[37], code[65], *tok, a1[256], a2[256];
    struct tl_resp r, r2;
    long long calls;
    const char *h1[] = {"Idempotency-Key: \"order-7\"", NULL};
    const char *bodies[2] = {"{\"question\":\"idempotent question\"}", "{\"question\":\"idempotent question\"}"};
    struct tl_resp pr[2];

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    calls = tl_mock_stat(mock, "chat_requests");
    tl_post_parallel(port, "/api/ai/query", tok, h1, bodies, 1, &r);
    tl_post_parallel(port, "/api/ai/query", tok, (const char *const[]){"Idempotency-Key: order-7", NULL}, bodies, 1, &r2);
    CHECK(r.status == 200 && r2.status == 200, "first and replay 200");
    CHECK(tl_json_str(&r, "answer", a1, sizeof(a1)) && tl_json_str(&r2, "answer", a2, sizeof(a2)) && strcmp(a1, a2) == 0,
          "replay returns the same answer");
    CHECK(strcmp(r.body, r2.body) == 0, "replay returns the same body");
    CHECK(tl_resp_header(&r2, "X-Cache", a2, sizeof(a2)) && strcmp(a2, "MISS") == 0,
          "the replay of a miss says X-Cache: MISS, as the first answer did");
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 1, "one upstream call");
    tl_resp_free(&r);
    tl_resp_free(&r2);
    {
        const char *other[1] = {"{\"question\":\"a different question\"}"};

        tl_post_parallel(port, "/api/ai/query", tok, h1, other, 1, &r);
        tl_expect("same key, different body", &r, 422, "idempotency_key_reused");
        tl_resp_free(&r);
    }
    /* concurrent: the second sees the first in progress */
    tl_mock_config(mock, "{\"token_latency_ms\":40}");
    {
        const char *h2[] = {"Idempotency-Key: concurrent-1", NULL};
        const char *b2[2] = {"{\"question\":\"slow idempotent\"}", "{\"question\":\"slow idempotent\"}"};
        int ok = 0, conflict = 0;

        tl_post_parallel(port, "/api/ai/query", tok, h2, b2, 2, pr);
        for (int i = 0; i < 2; i++) {
            char c[64] = "";

            ok += pr[i].status == 200;
            conflict += pr[i].status == 409 && tl_json_str(&pr[i], "error.code", c, sizeof(c)) &&
                        strcmp(c, "idempotency_in_progress") == 0;
            if (pr[i].status == 409)
                CHECK(tl_resp_header(&pr[i], "Retry-After", c, sizeof(c)) != NULL && strcmp(c, "1") == 0,
                      "concurrent: the 409 has Retry-After: 1");
        }
        CHECK(ok == 1 && conflict == 1, "concurrent: one 200, one 409 (%d, %d): %ld %s / %ld %s", ok, conflict,
              pr[0].status, pr[0].body, pr[1].status, pr[1].body);
        tl_resp_free(&pr[0]);
        tl_resp_free(&pr[1]);
    }
    tl_mock_config(mock, "{\"token_latency_ms\":0}");
    /* another tenant with the same key is not replayed */
    {
        char id2[37], code2[65], *tok2;

        tenant("pro", "{}", id2, code2);
        tok2 = tl_token(code2, "optician", 600);
        calls = tl_mock_stat(mock, "chat_requests");
        tl_post_parallel(port, "/api/ai/query", tok2, h1, bodies, 1, &r);
        CHECK(r.status == 200 && tl_mock_stat(mock, "chat_requests") == calls + 1, "other tenant: own record");
        tl_resp_free(&r);
        free(tok2);
    }
    /* another caller of the same tenant with the same key is not replayed
     * either: another sub, and callers the token names no user for (no sub
     * or user_id, or a number there, which is no string claim) */
    {
        const char *secret = tl_env("AIGW_JWT_SECRET");
        static const char *const who[] = {"\"sub\":\"user-2\",", "\"user_id\":41,", "\"user_id\":42,", ""};
        long now = (long)time(NULL);

        for (size_t i = 0; i < sizeof(who) / sizeof(who[0]); i++) {
            char *claims = tl_sprintf("{%s\"tenant_id\":\"%s\",\"role\":\"optician\",\"iat\":%ld,\"exp\":%ld}", who[i],
                                      code, now, now + 600);
            char *tok2 = tl_sign("HS256", "dev", secret, strlen(secret), claims);

            tl_post_parallel(port, "/api/ai/query", tok2, h1, bodies, 1, &r);
            CHECK(r.status == 200 && !tl_resp_header(&r, "Idempotent-Replayed", a1, sizeof(a1)),
                  "caller {%s}: own record, not another caller's replayed (%ld %s)", who[i], r.status, r.body);
            tl_resp_free(&r);
            /* and its own retry is replayed */
            tl_post_parallel(port, "/api/ai/query", tok2, h1, bodies, 1, &r);
            CHECK(r.status == 200 && tl_resp_header(&r, "Idempotent-Replayed", a1, sizeof(a1)),
                  "caller {%s}: its retry replayed (%ld)", who[i], r.status);
            /* X-Cache on every answer of a query route (API.md), a replay's
             * as its first answer had it: as the body's "cached" says */
            {
                char xc[16] = "", cached[16] = "";

                tl_resp_header(&r, "X-Cache", xc, sizeof(xc));
                tl_json_str(&r, "cached", cached, sizeof(cached));
                CHECK(strcmp(xc, strcmp(cached, "true") == 0 ? "HIT" : "MISS") == 0 && cached[0] != '\0',
                      "caller {%s}: the replay has X-Cache '%s' for \"cached\": %s", who[i], xc, cached);
            }
            tl_resp_free(&r);
            free(tok2);
            free(claims);
        }
    }
    free(tok);
}

/* A leader that died (its lock left behind, no result): the waiter retries
 * once the lock expires and answers by itself. */
static void
test_leader_death(void)
{
    char id[37], code[65], hex[65], *tok, *key;
    const char *question = "what happens when the leader dies?";
    struct tl_resp r;
    int64_t t0;

    tenant("pro", "{\"requests_per_minute\":1000}", id, code);
    tok = tl_token(code, "optician", 600);
    aigw_query_cache_hex(false, id, 0, question, "default", 500, hex);
    key = tl_sprintf("aigw:{%s}:sf:0:%s", id, hex);
    tl_redis_int("SET %s ghost-leader PX 700", key);
    CHECK(tl_redis_int("EXISTS %s", key) == 1, "ghost lock planted");
    t0 = aigw_now_ms();
    ask(tok, "{\"question\":\"What happens when the leader dies?\"}", &r);
    CHECK(r.status == 200, "the waiter answers after the dead leader's lock expired: %ld %s", r.status, r.body);
    CHECK(aigw_now_ms() - t0 >= 500, "it waited for the lock (%lld ms)", (long long)(aigw_now_ms() - t0));
    tl_resp_free(&r);
    CHECK(billed_rows(id, 1) == 1, "the retrying waiter led and was billed once");
    free(key);
    free(tok);
}

/* A question asked after a delay, on a thread of its own. */
struct late_ask {
    const char *token;
    int delay_ms, n;
    struct tl_resp r;
    pthread_t th;
};

static void *
late_ask_run(void *arg)
{
    struct late_ask *a = arg;
    char body[96];

    usleep((useconds_t)a->delay_ms * 1000);
    snprintf(body, sizeof(body), "{\"question\":\"asked while redis is stalled, number %d\"}", a->n);
    ask(a->token, body, &a->r);
    return NULL;
}

/* Redis stalls (CLIENT PAUSE) for longer than redis.timeout_ms while three
 * misses are admitted. Whatever gave up on Redis answered 503, and Redis,
 * which runs those scripts once it resumes, must not count them in the
 * window, reserve quota for them or leave their single-flight locks behind
 * (each admission script carries a deadline; the pipe writes nothing to a
 * connection that stopped answering): the counters move by exactly the
 * requests that were answered. redis.timeout_ms is 1000 here. The first
 * admission (Redis idle: the direct path) gives up at 1000 ms. The second
 * goes on the pipe at ~100 ms and the pipe gives up on it at ~1100; the
 * third follows it at ~600 ms and keeps the connection open past 1300 ms,
 * when Redis resumes and runs both: the second's script is past its
 * deadline (~850) and does nothing, the third's (~1350) is not and it is
 * answered. On a loaded machine the order can shift (a request that starts
 * late is simply answered); the counters must agree either way. */
static void
test_redis_stall(void)
{
    char id[37], code[65], *tok;
    struct late_ask a[3];
    struct tl_resp r;
    long long used0, n0, locks = -1;
    int ok = 0, unavailable = 0;
    const char *p[1] = {id};

    tenant("pro", "{\"requests_per_minute\":1000,\"monthly_query_limit\":100}", id, code);
    tok = tl_token(code, "optician", 600);
    ask(tok, "{\"question\":\"before the stall\"}", &r);
    CHECK(r.status == 200, "before the stall: answered (%ld)", r.status);
    tl_resp_free(&r);
    used0 = tl_quota_used(id);
    n0 = tl_redis_int("HGET aigw:{%s}:rlb n", id);
    CHECK(used0 == 1 && n0 == 1, "one query used, one in the window (%lld, %lld)", used0, n0);
    tl_redis_int("CLIENT PAUSE 1300 ALL");
    for (int i = 0; i < 3; i++) {
        a[i] = (struct late_ask){.token = tok, .delay_ms = (int[]){0, 100, 600}[i], .n = i};
        pthread_create(&a[i].th, NULL, late_ask_run, &a[i]);
    }
    for (int i = 0; i < 3; i++) {
        char c[64] = "";

        pthread_join(a[i].th, NULL);
        ok += a[i].r.status == 200;
        unavailable += a[i].r.status == 503 && tl_json_str(&a[i].r, "error.code", c, sizeof(c))
                       && strcmp(c, "service_unavailable") == 0;
        tl_resp_free(&a[i].r);
    }
    CHECK(ok + unavailable == 3 && unavailable >= 1, "stalled Redis: %d gave up (503), %d answered", unavailable, ok);
    usleep(300 * 1000); /* the pause is over and Redis has run whatever it was sent */
    CHECK(tl_quota_used(id) == used0 + ok, "quota: only the answered ones used a query (%lld, want %lld)",
          tl_quota_used(id), used0 + ok);
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == n0 + ok, "window: only the answered ones counted (%lld, want %lld)",
          tl_redis_int("HGET aigw:{%s}:rlb n", id), n0 + ok);
    for (int64_t end = aigw_now_ms() + 3000; aigw_now_ms() < end && (locks = tl_sf_locks(id)) != 0;)
        usleep(50 * 1000); /* an answered leader releases its lock just after its answer */
    CHECK(locks == 0, "no single-flight lock left behind (%lld)", locks);
    CHECK(rows(id, 4) == 4, "a usage row for each of the four requests");
    CHECK(tl_wait_sql(owner, 1 + ok, 3000, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p)
              == 1 + ok,
          "billed: the answered ones only");
    ask(tok, "{\"question\":\"after the stall\"}", &r);
    CHECK(r.status == 200, "after the stall: answered again (%ld)", r.status);
    tl_resp_free(&r);
    free(tok);
}

/* The busy client of test_redis_busy: once the request's idempotency
 * record appears (a keyspace notification), stop Redis from running any
 * client's command for 2.5 s (CLIENT PAUSE ... ALL), longer than
 * redis.timeout_ms (1 s here), so the request's next script on a pool
 * connection (single-flight or quota) gives up and answers 503, and Redis
 * runs that script only afterwards. A pause, unlike a long script of its
 * own, holds back no reply of a command that already ran: the scripts are
 * either run in time and answered, or run late, which is the case under
 * test. (With a busy script, a reservation that ran just before it had its
 * reply held up behind it, the residual case the README names, and the
 * exact count failed about one run in six.) */
struct busy {
    char pattern[128];
    atomic_bool subscribed;
    bool fired;
    pthread_t th;
};

static redisContext *
redis_connect(void)
{
    char host[64] = "127.0.0.1";
    int rport = 6379;

    sscanf(tl_env("AIGW_REDIS_URL"), "redis://%63[^:]:%d", host, &rport);
    return redisConnect(host, rport);
}

static void *
busy_run(void *arg)
{
    struct busy *b = arg;
    redisContext *sub = redis_connect(), *c = redis_connect();
    struct timeval tv = {10, 0};
    redisReply *r;

    if (sub == NULL || sub->err || c == NULL || c->err)
        goto out;
    redisSetTimeout(sub, tv);
    r = redisCommand(sub, "PSUBSCRIBE %s", b->pattern);
    atomic_store(&b->subscribed, r != NULL);
    freeReplyObject(r);
    if (redisGetReply(sub, (void **)&r) != REDIS_OK)
        goto out;
    freeReplyObject(r);
    b->fired = true;
    freeReplyObject(redisCommand(c, "CLIENT PAUSE 2500 ALL"));
    usleep(2600 * 1000); /* the pause is over when the thread ends */
out:
    redisFree(sub);
    redisFree(c);
    return NULL;
}

/* Redis busy with another client's script right after an idempotent
 * request's first script: the request answers 503, and the scripts it gave
 * up on (single-flight lock, quota reservation, idempotency record: on pool
 * connections, with no deadline) ran later anyway, leaving a query of the
 * month reserved, a lock nobody led, or a pending record that answered the
 * retry 409. With a deadline they do nothing: the retry with the same key
 * is served and counted once. (Which script the busy spell hits depends on
 * timing; a lock can also stay because the leader's own release could not
 * reach Redis in time, so the lock is not checked here: it expires.) */
static void
test_redis_busy(void)
{
    char id[37], code[65], *tok, buf[64];
    const char *h[] = {"Idempotency-Key: busy-1", NULL};
    const char *body[1] = {"{\"question\":\"asked while another client keeps redis busy\"}"};
    struct tl_resp r;
    struct busy b;
    long long used0;
    int answered = 0;
    bool replayed;

    tenant("pro", "{\"requests_per_minute\":1000,\"monthly_query_limit\":100}", id, code);
    tok = tl_token(code, "optician", 600);
    ask(tok, "{\"question\":\"before redis gets busy\"}", &r);
    CHECK(r.status == 200, "before: answered (%ld)", r.status);
    tl_resp_free(&r);
    used0 = tl_quota_used(id);
    memset(&b, 0, sizeof(b));
    snprintf(b.pattern, sizeof(b.pattern), "__keyspace@*__:aigw:{%s}:idem:*", id);
    tl_redis_int("CONFIG SET notify-keyspace-events K$");
    pthread_create(&b.th, NULL, busy_run, &b);
    for (int i = 0; i < 500 && !atomic_load(&b.subscribed); i++)
        usleep(10 * 1000);
    CHECK(atomic_load(&b.subscribed), "the busy client is subscribed");
    tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    answered += r.status == 200;
    CHECK(r.status == 200 || (r.status == 503 && tl_json_str(&r, "error.code", buf, sizeof(buf)) &&
                              strcmp(buf, "service_unavailable") == 0),
          "while Redis is busy: 200 or 503 service_unavailable (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    pthread_join(b.th, NULL);
    tl_redis_int("CONFIG SET notify-keyspace-events %s", "");
    CHECK(b.fired, "Redis was paused right after the idempotency record");
    usleep(300 * 1000); /* Redis has run whatever it was sent */
    CHECK(tl_quota_used(id) == used0 + answered, "quota: only an answered request used a query (%lld, want %lld)",
          tl_quota_used(id), used0 + answered);
    tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    /* The request's last word on its pending record (the removal after a
     * 503, or the stored outcome after a 200) may have gone out during the
     * pause and been given up on: the outbox sends it again every second
     * until Redis takes it, so a retry meanwhile gets 409 for a moment, not
     * until the pending record's TTL (timeout + queue timeout + 30 s). */
    for (int i = 0; i < 40 && r.status == 409; i++) {
        tl_resp_free(&r);
        usleep(100 * 1000);
        tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    }
    replayed = tl_resp_header(&r, "Idempotent-Replayed", buf, sizeof(buf)) != NULL;
    CHECK(r.status == 200, "the retry with the same key is served (%ld %s)", r.status, r.body);
    CHECK(!replayed || answered == 1, "only an answered request is replayed");
    tl_resp_free(&r);
    CHECK(tl_quota_used(id) == used0 + answered + !replayed, "and a query counted per run (%lld, want %lld)",
          tl_quota_used(id), used0 + answered + !replayed);
    free(tok);
}

/* A waiter answered with its leader's 503 gets the leader's Retry-After
 * too (it was left out: a client told "unavailable" with no hint to retry).
 * The only slot is held by a slow call, so the leader waits in the queue
 * until queue_timeout_ms and fails with 503 while the waiter waits on it. */
static void
test_waiter_retry_after(void)
{
    char id[37], code[65], *tok;
    const char *slow[1] = {"{\"question\":\"holding the only slot\"}"};
    const char *same[2] = {"{\"question\":\"asked twice while the slot is taken\"}",
                           "{\"question\":\"asked twice while the slot is taken\"}"};
    struct tl_resp hold[1], rs[2];
    struct tl_parallel *bg;
    struct tl_aigw g;
    long long base = tl_mock_stat(mock, "in_flight"), in_flight = 0;

    tok = extra_setup(id, code, &g,
                      "{\"upstream\":{\"queue_timeout_ms\":800,\"health_interval_ms\":60000,\"routes\":null,"
                      "\"backends\":[{\"name\":\"one\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":1,\"max_connections\":1}]},"
                      "\"usage\":{\"spool_dir\":\"${AIGW_TEST_SPOOL}-oneslot\"}}");
    if (tok == NULL)
        return;
    tl_mock_config(mock, "{\"first_token_ms\":3000}");
    bg = tl_post_parallel_bg(g.port, "/api/ai/query", tok, slow, 1, hold);
    in_flight = wait_at_mock(base);
    CHECK(in_flight == 1, "the slot is taken (%lld)", in_flight);
    tl_post_parallel(g.port, "/api/ai/query", tok, NULL, same, 2, rs);
    for (int i = 0; i < 2; i++) {
        tl_expect("leader or waiter while the slot is taken", &rs[i], 503, "upstream_unavailable");
        CHECK(tl_resp_header(&rs[i], "Retry-After", (char[16]){0}, 16) != NULL, "request %d: Retry-After on its 503",
              i + 1);
        tl_resp_free(&rs[i]);
    }
    tl_parallel_join(bg);
    tl_resp_free(&hold[0]);
    tl_mock_reset(mock);
    CHECK(tl_aigw_stop(&g) == 0, "one-slot aigw exits cleanly");
    extra_teardown(tok, "oneslot");
}

static void
test_all_backends_down(void)
{
    struct tl_aigw gw;
    char *cfg, *tok;
    struct tl_resp r;
    int p1 = tl_free_port(), p2 = tl_free_port();
    char patch[512];

    snprintf(patch, sizeof(patch),
             "{\"upstream\":{\"routes\":null,\"backends\":[{\"name\":\"dead1\",\"url\":\"http://127.0.0.1:%d\"},"
             "{\"name\":\"dead2\",\"url\":\"http://127.0.0.1:%d\"}]},"
             "\"usage\":{\"spool_dir\":\"${AIGW_TEST_SPOOL}-dead\"}}",
             p1, p2);
    cfg = tl_config_patch(patch);
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(0, "second aigw starts");
        free(cfg);
        return;
    }
    tok = tl_token("clinic_002", "optician", 600);
    tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"is anybody there?\"}", &r);
    tl_expect("all backends down", &r, 503, "upstream_unavailable");
    CHECK(tl_resp_header(&r, "Retry-After", (char[16]){0}, 16) != NULL, "Retry-After on 503");
    tl_resp_free(&r);
    /* nothing reached a model: the retry the 503 asks for runs (before:
     * the 503 was stored and replayed for 24 h, without its Retry-After) */
    {
        const char *h[] = {"Idempotency-Key: down-1", NULL};
        const char *body[1] = {"{\"question\":\"is anybody there?\"}"};

        for (int i = 0; i < 2; i++) {
            tl_post_parallel(gw.port, "/api/ai/query", tok, h, body, 1, &r);
            tl_expect("all backends down, with an Idempotency-Key", &r, 503, "upstream_unavailable");
            CHECK(tl_resp_header(&r, "Idempotent-Replayed", (char[16]){0}, 16) == NULL &&
                      tl_resp_header(&r, "Retry-After", (char[16]){0}, 16) != NULL,
                  "try %d: run, not replayed, Retry-After", i + 1);
            tl_resp_free(&r);
        }
    }
    CHECK(tl_aigw_stop(&gw) == 0, "second aigw exits cleanly");
    free(tok);
    free(cfg);
}

int
main(void)
{
    struct tl_aigw gw, gw2;
    char *cfg, spool[256];

    owner = tl_pg_owner();
    mock = tl_env("AIGW_MOCK_URL");
    tl_mock_reset(mock);
    snprintf(spool, sizeof(spool), "/tmp/aigw-test-spool-%d", (int)getpid());
    setenv("AIGW_TEST_SPOOL", spool, 1);
    cfg = tl_config_patch(CONFIG);
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    port = gw.port;
    {
        char *spool2 = tl_sprintf("%s-2", spool);

        setenv("AIGW_TEST_SPOOL", spool2, 1);
        free(spool2);
    }
    if (tl_aigw_start(&gw2, cfg) != 0)
        return 1;
    setenv("AIGW_TEST_SPOOL", spool, 1);

    test_basic_and_cache();
    test_routes_apart();
    test_bad_input();
    test_question_trimmed();
    test_gating();
    test_required_tier();
    test_quota_race();
    test_rebuild();
    test_single_flight(gw2.port);
    test_rate_buckets();
    test_upstream_failures();
    test_single_flight_after_error();
    test_row_time();
    test_idempotency();
    test_leader_death();
    test_leader_drained();
    test_waiter_drained_idempotent();
    test_redis_stall();
    test_redis_busy();
    test_all_backends_down();
    test_waiter_retry_after();
    test_rate_limit();

    CHECK(tl_aigw_stop(&gw2) == 0, "aigw 2 exits 0");
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0");
    tl_mock_reset(mock);
    {
        char *rm = tl_sprintf("rm -rf '%s' '%s-2' '%s-dead'", spool, spool, spool);

        CHECK(system(rm) == 0, "spool dirs removed");
        free(rm);
    }
    free(cfg);
    PQfinish(owner);
    return tl_done();
}
