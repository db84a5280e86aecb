/* test_billing.c - GET /api/v1/tenants/{id}/usage: after a mixed run of
 * misses, hits, upstream failures and rejections the billing numbers equal
 * the usage rows and the quota counter; month boundaries; the monthly
 * query is index-only over ai_usage_logs_billing_idx; GET /api/ai/usage, its
 * periods and its rate limit */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

static PGconn *owner;
static int port;
static char *ops;

static const char CONFIG[] =
    "{\"upstream\":{\"timeout_ms\":3000,\"health_interval_ms\":60000,\"fail_threshold\":100},"
    " \"usage\":{\"flush_ms\":20}}";

static void
query(const char *token, const char *body, long status, const char *code, const char *cache)
{
    struct tl_resp r;
    char buf[16];

    tl_post(port, "/api/ai/query", token, body, &r);
    tl_expect_field(body, &r, status, code, NULL);
    if (cache != NULL)
        CHECK(tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, cache) == 0, "%s: X-Cache %s", body,
              cache);
    tl_resp_free(&r);
}

static long
sql_count(const char *tid, const char *filter)
{
    char sql[512];
    const char *p[1] = {tid};

    snprintf(sql, sizeof(sql),
             "SELECT COALESCE(%s, 0) FROM ai_usage_logs WHERE tenant_id = $1"
             " AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
             filter);
    return tl_sql_long(owner, sql, 1, p);
}

static json_t *
by_type(json_t *body, const char *type)
{
    size_t i;
    json_t *row;

    json_array_foreach(json_object_get(body, "by_query_type"), i, row)
        if (strcmp(json_string_value(json_object_get(row, "query_type")), type) == 0)
            return row;
    return NULL;
}

static long long
num(json_t *o, const char *key)
{
    return json_is_integer(json_object_get(o, key)) ? json_integer_value(json_object_get(o, key)) : -1;
}

static const char UPDATED_SQL[] = "SELECT (extract(epoch FROM updated_at) * 1000000)::bigint FROM tenants WHERE id = $1";

static void
test_mixed_run(void)
{
    static const char *const COUNTERS[][2] = {
        {"requests", "count(*)"},
        {"billed_queries", "count(*) FILTER (WHERE billed)"},
        {"cache_hits", "count(*) FILTER (WHERE from_cache)"},
        {"failures", "count(*) FILTER (WHERE status_code >= 500)"},
        {"rejections", "count(*) FILTER (WHERE status_code BETWEEN 400 AND 499)"},
        {"successful", "count(*) FILTER (WHERE success)"},
        {"prompt_tokens", "sum(prompt_tokens) FILTER (WHERE billed)"},
        {"completion_tokens", "sum(completion_tokens) FILTER (WHERE billed)"},
    };
    const char *mock = tl_env("AIGW_MOCK_URL");
    char id[37], code[65], path[128], month[8], key[128];
    const char *p[1] = {id};
    char *tok;
    struct tl_resp r;
    json_t *body, *quota;
    long long sum = 0;
    long updated;
    size_t i;
    json_t *row;
    PGresult *q;

    tl_create_tenant(owner, "pro", "active", id, code);
    q = tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"monthly_query_limit\": 5}' WHERE id = $1", 1, p);
    PQclear(q);
    tok = tl_token(code, "optician", 600);
    tl_mock_reset(mock);
    updated = tl_sql_long(owner, UPDATED_SQL, 1, p);

    query(tok, "{\"question\":\"Billing miss one: lens coatings?\"}", 200, NULL, "MISS");
    query(tok, "{\"question\":\"Billing miss two: frame sizes?\"}", 200, NULL, "MISS");
    query(tok, "{\"question\":\"Billing miss three: contact lens care?\"}", 200, NULL, "MISS");
    query(tok, "{\"question\":\"Billing miss one: lens coatings?\"}", 200, NULL, "HIT");
    query(tok, "{\"question\":\"Billing miss two: frame sizes?\"}", 200, NULL, "HIT");
    tl_mock_config(mock, "{\"mode\":\"error500\",\"fail_next\":2}");
    query(tok, "{\"question\":\"Billing failure one?\"}", 502, "upstream_error", NULL);
    query(tok, "{\"question\":\"Billing failure two?\"}", 502, "upstream_error", NULL);
    query(tok, "{\"question\":\"Our sales this week?\",\"query_type\":\"sales\"}", 200, NULL, NULL);
    query(tok, "{\"question\":\"Patient trends?\",\"query_type\":\"patient_analytics\"}", 403, "feature_not_in_plan",
          NULL);
    query(tok, "{\"query_type\":\"knowledge\"}", 400, "invalid_request", NULL);
    query(tok, "{\"question\":\"Billing miss four: polarized lenses?\"}", 200, NULL, "MISS");
    query(tok, "{\"question\":\"Billing over quota: tinted lenses?\"}", 429, "quota_exhausted", NULL);
    CHECK(tl_wait_sql(owner, 12, 5000, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p) == 12,
          "twelve usage rows written");
    CHECK(tl_wait_sql(owner, 5, 5000, "SELECT ai_queries_used FROM tenants WHERE id = $1", 1, p) == 5,
          "the usage writer counted five billed queries");
    /* the tenant's updated_at (GET /api/v1/tenants/{id}) is its settings' last change: the usage writer
     * moved it with every billed flush */
    CHECK(tl_sql_long(owner, UPDATED_SQL, 1, p) == updated, "the usage writer leaves updated_at alone");

    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage", code);
    tl_get(port, path, ops, &r);
    tl_expect_field("billing usage", &r, 200, NULL, NULL);
    body = json_loads(r.body, 0, NULL);
    /* what the run did, by construction */
    CHECK(num(body, "requests") == 12 && num(body, "billed_queries") == 5 && num(body, "cache_hits") == 2 &&
              num(body, "failures") == 2 && num(body, "rejections") == 3 && num(body, "successful") == 7,
          "totals of the mixed run: %s", r.body);
    /* and each number equals the rows */
    for (size_t k = 0; k < sizeof(COUNTERS) / sizeof(COUNTERS[0]); k++)
        CHECK(num(body, COUNTERS[k][0]) == sql_count(id, COUNTERS[k][1]), "%s equals the rows (%lld)",
              COUNTERS[k][0], num(body, COUNTERS[k][0]));
    CHECK(num(body, "completion_tokens") > 0, "tokens of billed queries counted");
    aigw_month_key(aigw_wall_s(), month);
    snprintf(key, sizeof(key), "aigw:{%s}:q:%s", id, month);
    quota = json_object_get(body, "quota");
    CHECK(num(quota, "counter") == 5 && tl_redis_int("GET %s", key) == 5, "billed = the Redis quota counter");
    CHECK(num(quota, "ai_queries_used") == 5 && num(quota, "monthly_limit") == 5, "billed = tenants.ai_queries_used");
    CHECK(num(by_type(body, "knowledge"), "requests") == 9 && num(by_type(body, "knowledge"), "billed_queries") == 4 &&
              num(by_type(body, "knowledge"), "failures") == 2 && num(by_type(body, "knowledge"), "cache_hits") == 2,
          "knowledge row");
    CHECK(num(by_type(body, "sales"), "billed_queries") == 1, "sales row");
    CHECK(num(by_type(body, "patient_analytics"), "rejections") == 1, "patient analytics row");
    CHECK(num(by_type(body, "other"), "rejections") == 1, "a request without a question has no type");
    json_array_foreach(json_object_get(body, "by_query_type"), i, row)
        sum += num(row, "requests");
    CHECK(sum == 12, "the types add up to the total");
    CHECK(strlen(json_string_value(json_object_get(body, "period"))) == 7, "period named");
    json_decref(body);
    tl_resp_free(&r);

    /* by uuid too */
    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage", id);
    tl_get(port, path, ops, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "billed_queries", -1) == 5, "usage by tenant uuid");
    tl_resp_free(&r);
    free(tok);
    PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
}

/* Rows one second either side of month starts fall into the right month. */
static void
test_month_boundaries(void)
{
    char id[37], code[65], path[160], prev[8], cur[8], next[8];
    const char *p[1] = {id};
    struct tl_resp r;
    PGresult *q;
    int64_t now = aigw_wall_s();
    int64_t start = aigw_next_month_start(aigw_next_month_start(now) - 40 * 86400);
    char mk[8];

    tl_create_tenant(owner, "pro", "active", id, code);
    q = tl_sql(owner, true,
               "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success, billed, created_at)"
               " SELECT gen_random_uuid(), $1, 'b', '/api/ai/query', 200, true, true, t FROM (VALUES"
               " (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 second'),"
               " (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),"
               " (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 month' - interval '1 second'),"
               " (date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '1 month')) v(t)",
               1, p);
    PQclear(q);
    aigw_month_key(start - 86400, mk);
    snprintf(prev, sizeof(prev), "%.4s-%.2s", mk, mk + 4);
    aigw_month_key(now, mk);
    snprintf(cur, sizeof(cur), "%.4s-%.2s", mk, mk + 4);
    aigw_month_key(aigw_next_month_start(now), mk);
    snprintf(next, sizeof(next), "%.4s-%.2s", mk, mk + 4);

    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage?period=%s", code, prev);
    tl_get(port, path, ops, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "billed_queries", -1) == 1, "previous month: 1 row: %s", r.body);
    CHECK(strstr(r.body, "\"quota\"") == NULL, "no live quota for a past month");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage?period=%s", code, cur);
    tl_get(port, path, ops, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "billed_queries", -1) == 2, "this month: first and last second: %s",
          r.body);
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage?period=%s", code, next);
    tl_get(port, path, ops, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "billed_queries", -1) == 1, "next month: 1 row");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage?period=2001-01", code);
    tl_get(port, path, ops, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "requests", -1) == 0 && strstr(r.body, "\"by_query_type\":[]") != NULL,
          "an empty month is all zeros: %s", r.body);
    tl_resp_free(&r);
    PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
}

/* GET /api/ai/usage (the clinic's view): rows one second either side of the
 * UTC day, ISO week (Monday) and month starts fall on the right side; the
 * average is printed as rounded; tokens are those of billed queries, as on
 * the billing route. */
static void
test_clinic_usage(void)
{
    static const char *const PERIODS[] = {"day", "week", "month"};
    char id[37], code[65], path[160], since[32], want[32], tstr[24];
    const char *p[2] = {id, tstr};
    struct tl_resp r, b;
    char *tok;
    int64_t now = aigw_wall_s(), day = now - now % 86400;
    int64_t starts[3] = {day, day - ((day / 86400 + 3) % 7) * 86400,
                         aigw_next_month_start(aigw_next_month_start(now) - 40 * 86400)};

    /* the period after each: a row stamped there is not of this one (the
     * billing route's month ends there too); the clinic route counted rows
     * of the next day, week or month, which an aigw whose clock is ahead of
     * the database's writes */
    int64_t ends[3] = {day + 86400, starts[1] + 7 * 86400, aigw_next_month_start(now)};
    int64_t at[9];
    int n_at = 0;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    for (int k = 0; k < 3; k++) {
        at[n_at++] = starts[k] - 1;
        at[n_at++] = starts[k];
        at[n_at++] = ends[k];
    }
    for (int i = 0; i < n_at; i++) {
        snprintf(tstr, sizeof(tstr), "%lld", (long long)at[i]);
        PQclear(tl_sql(owner, true,
                       "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, query_type, status_code,"
                       " success, billed, created_at)"
                       " VALUES (gen_random_uuid(), $1, 'edge', '/api/ai/query', 'sales', 200, true, true,"
                       " to_timestamp($2::bigint))",
                       2, p));
    }
    for (int k = 0; k < 3; k++) {
        long expect = 0;

        for (int i = 0; i < n_at; i++)
            expect += at[i] >= starts[k] && at[i] < ends[k];
        snprintf(path, sizeof(path), "/api/ai/usage?period=%s", PERIODS[k]);
        tl_get(port, path, tok, &r);
        aigw_rfc3339(starts[k], want);
        CHECK(r.status == 200 && tl_json_int(&r, "total", -1) == expect, "usage %s: %ld rows: %s", PERIODS[k], expect,
              r.body);
        CHECK(tl_json_str(&r, "since", since, sizeof(since)) && strcmp(since, want) == 0, "usage %s: since %s", PERIODS[k],
              want);
        tl_resp_free(&r);
    }
    PQclear(tl_sql(owner, true, "DELETE FROM ai_usage_logs WHERE tenant_id = $1", 1, p));
    {
        static const char *const BAD[] = {"/api/ai/usage?period=year", "/api/ai/usage?period=",
                                          "/api/ai/usage?period=day&period=month", /* the first was taken */
                                          "/api/ai/usage?period"};                 /* was the default, month */

        for (size_t i = 0; i < sizeof(BAD) / sizeof(BAD[0]); i++) {
            tl_get(port, BAD[i], tok, &r);
            tl_expect_field(BAD[i], &r, 400, "invalid_request", "period");
            tl_resp_free(&r);
        }
    }

    /* two billed misses and a cache hit, which carries the stored answer's tokens */
    PQclear(tl_sql(owner, true,
                   "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, query_type, status_code, success,"
                   " billed, from_cache, prompt_tokens, completion_tokens, response_ms)"
                   " VALUES (gen_random_uuid(), $1, 'm1', '/api/ai/query', 'knowledge', 200, true, true, false, 10, 20, 200),"
                   " (gen_random_uuid(), $1, 'm2', '/api/ai/query', 'knowledge', 200, true, true, false, 10, 20, 240),"
                   " (gen_random_uuid(), $1, 'h1', '/api/ai/query', 'knowledge', 200, true, false, true, 10, 20, 200)",
                   1, p));
    tl_get(port, "/api/ai/usage?period=day", tok, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "total", -1) == 3 && tl_json_int(&r, "cached", -1) == 1 &&
              tl_json_int(&r, "billed", -1) == 2 && tl_json_int(&r, "p95_response_ms", -1) == 236,
          "usage of the run: %s", r.body);
    CHECK(strstr(r.body, "\"avg_response_ms\":213.3,") != NULL, "the average as rounded, 213.3: %s", r.body);
    snprintf(path, sizeof(path), "/api/v1/tenants/%s/usage", code);
    tl_get(port, path, ops, &b);
    CHECK(tl_json_int(&r, "prompt_tokens", -1) == 20 && tl_json_int(&r, "completion_tokens", -1) == 40 &&
              tl_json_int(&r, "prompt_tokens", -1) == tl_json_int(&b, "prompt_tokens", -2) &&
              tl_json_int(&r, "completion_tokens", -1) == tl_json_int(&b, "completion_tokens", -2),
          "tokens of billed queries, as billed: %s / %s", r.body, b.body);
    tl_resp_free(&b);
    tl_resp_free(&r);
    free(tok);
    PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
}

/* GET /api/ai/usage runs one PostgreSQL aggregate per call: it counts in
 * the tenant's per-minute window (and an API key's own), as the query
 * routes do, with their RateLimit headers on every answer and their 429
 * rate_limited; it reserves no quota and writes no usage row, and a
 * refused call changes nothing in Redis. GET /api/ai/limits (one Redis
 * read, the route a client reads to learn where it stands) is not counted. */
static void
test_clinic_usage_rate_limit(void)
{
    static const char POLICY[] = "\"minute\";q=3;w=60, \"month\";q=100";
    char id[37], code[65], key[128], key_id[37], buf[160], what[256];
    const char *p[1] = {id};
    struct tl_resp r;
    char *tok, *redis0;

    tl_create_tenant(owner, "enterprise", "active", id, code);
    PQclear(tl_sql(owner, true,
                   "UPDATE tenants SET overrides = '{\"requests_per_minute\": 3, \"monthly_query_limit\": 100}'"
                   " WHERE id = $1",
                   1, p));
    tok = tl_token(code, "admin", 600);
    /* an API key's own limit: its window counts the reads too, and so
     * does the tenant's */
    CHECK(tl_api_key_create(port, tok, "{\"name\":\"usage reader\",\"scopes\":[\"query\"],\"requests_per_minute\":1}",
                            key, sizeof(key), key_id) == 201,
          "a 1 rpm key");
    tl_key_request(port, "GET", "/api/ai/usage", key, false, NULL, &r);
    CHECK(r.status == 200, "the key's first read: 200 (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    tl_key_request(port, "GET", "/api/ai/usage?period=week", key, false, NULL, &r);
    tl_expect("the key's second read", &r, 429, "rate_limited");
    CHECK(tl_json_str(&r, "error.policy", buf, sizeof(buf)) && strcmp(buf, "api_key") == 0, "policy api_key (%s)",
          r.body);
    tl_resp_free(&r);
    /* the tenant's window: the key's read, then two with the token */
    for (int i = 0; i < 2; i++) {
        char want[64];

        tl_get(port, i == 1 ? "/api/ai/usage?period=day" : "/api/ai/usage", tok, &r);
        CHECK(r.status == 200, "usage read %d within the limit: 200 (%ld %s)", i + 2, r.status, r.body);
        CHECK(tl_resp_header(&r, "RateLimit-Policy", buf, sizeof(buf)) && strcmp(buf, POLICY) == 0,
              "usage read %d: RateLimit-Policy (%s)", i + 2, buf);
        snprintf(want, sizeof(want), "\"minute\";r=%d;t=", 1 - i);
        CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) && strncmp(buf, want, strlen(want)) == 0,
              "usage read %d: RateLimit %s... (%s)", i + 2, want, buf);
        tl_resp_free(&r);
    }
    CHECK(tl_redis_int("HGET aigw:{%s}:rlb n", id) == 3, "three reads counted in the tenant's window (%lld)",
          tl_redis_int("HGET aigw:{%s}:rlb n", id));
    CHECK(tl_quota_used(id) == -1, "no quota counted or reserved by the reads (%lld)", tl_quota_used(id));
    /* (limits seeds the month's quota counter from the billed rows: 0) */
    tl_get(port, "/api/ai/limits", tok, &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) == NULL,
          "limits: answered and not counted (%ld)", r.status);
    tl_resp_free(&r);
    redis0 = tl_tenant_redis(id);
    tl_get(port, "/api/ai/usage", tok, &r);
    tl_expect("4th usage read in a minute", &r, 429, "rate_limited");
    CHECK(tl_json_int(&r, "error.limit", -1) == 3 && tl_json_int(&r, "error.retry_after", -1) >= 1 &&
              tl_json_str(&r, "error.policy", buf, sizeof(buf)) && strcmp(buf, "tenant") == 0,
          "429: limit 3, retry_after, policy tenant (%s)", r.body);
    CHECK(tl_resp_header(&r, "Retry-After", buf, sizeof(buf)) && strtol(buf, NULL, 10) >= 1 &&
              strtol(buf, NULL, 10) <= 61,
          "429: Retry-After (%s)", buf);
    CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) && strncmp(buf, "\"minute\";r=0;t=", 15) == 0,
          "429: RateLimit r=0 (%s)", buf);
    CHECK(tl_resp_header(&r, "RateLimit-Policy", buf, sizeof(buf)) && strcmp(buf, POLICY) == 0,
          "429: RateLimit-Policy (%s)", buf);
    CHECK(tl_resp_header(&r, "x-should-retry", buf, sizeof(buf)) == NULL, "429 rate_limited: no x-should-retry");
    tl_resp_free(&r);
    CHECK(tl_tenant_redis_kept(id, redis0, what, sizeof(what)), "the refused read changed nothing in Redis: %s", what);
    free(redis0);
    CHECK(tl_usage_flushed(port), "usage rows flushed");
    CHECK(tl_usage_rows(owner, id, "true", 0) == 0, "no usage row for the reads");
    /* the same window as the query routes: full, a query is refused too */
    query(tok, "{\"question\":\"after three usage reads\"}", 429, "rate_limited", NULL);
    free(tok);
}

/* With many tenants and months in the table, one tenant's month is read from
 * the covering index alone (the daemon's role, under RLS). */
static void
test_plan(void)
{
    char ids[10][37], code[65];
    const char *p[1];
    PGconn *app = tl_pg_app();
    PGresult *q;
    char *plan = NULL;

    for (int t = 0; t < 10; t++) {
        tl_create_tenant(owner, "pro", "active", ids[t], code);
        p[0] = ids[t];
        q = tl_sql(owner, true,
                   "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, query_type, status_code, success,"
                   " billed, from_cache, prompt_tokens, completion_tokens, created_at)"
                   " SELECT gen_random_uuid(), $1, 'plan', '/api/ai/query', 'knowledge', 200, true, g % 3 = 0,"
                   " g % 3 = 1, 10, 20, now() - (g % 180) * interval '1 day' FROM generate_series(1, 6000) g",
                   1, p);
        PQclear(q);
    }
    q = tl_sql(owner, true, "VACUUM (ANALYZE) ai_usage_logs", 0, NULL);
    PQclear(q);
    p[0] = ids[3];
    PQclear(tl_sql(app, true, "BEGIN", 0, NULL));
    PQclear(tl_sql(app, true, "SELECT set_config('app.current_tenant', $1, true)", 1, p));
    q = tl_sql(app, true,
               "EXPLAIN SELECT COALESCE(query_type, 'other'), count(*), count(*) FILTER (WHERE billed),"
               " count(*) FILTER (WHERE from_cache), count(*) FILTER (WHERE status_code >= 500),"
               " COALESCE(sum(prompt_tokens) FILTER (WHERE billed), 0) FROM ai_usage_logs"
               " WHERE tenant_id = aigw_current_tenant() AND created_at >= date_trunc('month', now())"
               " AND created_at < date_trunc('month', now()) + interval '1 month'"
               " GROUP BY ROLLUP (COALESCE(query_type, 'other'))",
               0, NULL);
    for (int i = 0; i < PQntuples(q); i++) {
        char *more = tl_sprintf("%s%s\n", plan ? plan : "", PQgetvalue(q, i, 0));

        free(plan);
        plan = more;
    }
    PQclear(q);
    PQclear(tl_sql(app, true, "COMMIT", 0, NULL));
    CHECK(plan != NULL && strstr(plan, "Index Only Scan using ai_usage_logs_billing_idx") != NULL,
          "monthly usage is an index-only scan:\n%s", plan ? plan : "");
    free(plan);
    for (int t = 0; t < 10; t++) {
        p[0] = ids[t];
        PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
    }
    PQfinish(app);
}

int
main(void)
{
    struct tl_aigw gw;
    char *cfg = tl_config_patch(CONFIG);

    owner = tl_pg_owner();
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    port = gw.port;
    ops = tl_platform_token("platform_admin", 600);

    test_mixed_run();
    test_month_boundaries();
    test_clinic_usage();
    test_clinic_usage_rate_limit();
    test_plan();

    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    free(ops);
    free(cfg);
    PQfinish(owner);
    return tl_done();
}
