/* test_metrics.c - GET /metrics: content type, counters that move, histograms, promtool lint */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testlib.h"

static const char CONFIG[] =
    "{\"upstream\":{\"timeout_ms\":1500,\"health_interval_ms\":200,\"fail_threshold\":100,\"routes\":null,"
    "\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":8,\"max_connections\":8}]}}";

static const char *const METRICS[] = {
    "aigw_requests_total",        "aigw_request_duration_seconds", "aigw_upstream_duration_seconds",
    "aigw_cache_hits_total",      "aigw_cache_misses_total",       "aigw_coalesced_total",
    "aigw_rate_limited_total",    "aigw_quota_exhausted_total",    "aigw_upstream_in_flight",
    "aigw_upstream_queued",       "aigw_upstream_backend_up",      "aigw_usage_backlog_rows",
    "aigw_usage_spool_bytes",     "aigw_redis_outbox_pending",     "aigw_postgres_errors_total",
    "aigw_redis_errors_total",
    "aigw_build_info",            "aigw_start_time_seconds",       "aigw_requests_in_flight",
    "aigw_draining",              "aigw_config_reloads_total",     "aigw_config_last_reload_successful",
    "aigw_http_request_timeouts_total", "aigw_api_key_lookups_refused_total",
    "aigw_redis_stalled",         "aigw_redis_calls_refused_total",
    "aigw_postgres_stalled",      "aigw_postgres_calls_refused_total",
};

static int port;

/* GET /metrics into r; CHECKs status and content type. */
static void
scrape(struct tl_resp *r)
{
    char ct[128] = "";

    tl_get(port, "/metrics", NULL, r);
    CHECK(r->status == 200, "/metrics: status %ld", r->status);
    CHECK(tl_resp_header(r, "Content-Type", ct, sizeof(ct)) &&
              strcmp(ct, "text/plain; version=0.0.4; charset=utf-8") == 0,
          "/metrics: content type '%s'", ct);
}

/* Scrape until series reaches at least want (the completion callback that
 * counts a request may run just after the client got its answer). */
static double
wait_sample(const char *series, double want)
{
    double v = -1;

    for (int i = 0; i < 100; i++) {
        struct tl_resp r;

        scrape(&r);
        v = tl_metric_in(r.body, series);
        tl_resp_free(&r);
        if (v >= want)
            break;
        usleep(20000);
    }
    return v;
}

static double
now_sample(const char *series)
{
    struct tl_resp r;
    double v;

    scrape(&r);
    v = tl_metric_in(r.body, series);
    tl_resp_free(&r);
    return v;
}

static void
test_format(void)
{
    struct tl_resp r;
    char line[160];

    scrape(&r);
    for (size_t i = 0; i < sizeof(METRICS) / sizeof(METRICS[0]); i++) {
        snprintf(line, sizeof(line), "# HELP %s ", METRICS[i]);
        CHECK(strstr(r.body, line) != NULL, "HELP line of %s", METRICS[i]);
        snprintf(line, sizeof(line), "# TYPE %s ", METRICS[i]);
        CHECK(strstr(r.body, line) != NULL, "TYPE line of %s", METRICS[i]);
    }
    CHECK(strstr(r.body, "aigw_build_info{version=\"") != NULL, "build_info has a version label");
    CHECK(tl_metric_in(r.body, "aigw_start_time_seconds") > 1.6e9, "start time is a plausible epoch");
    CHECK(tl_metric_in(r.body, "aigw_upstream_backend_up{backend=\"mock1\"}") >= 0, "backend_up for mock1");
    CHECK(tl_metric_in(r.body, "aigw_rate_limited_total{tier=\"other\"}") == 0, "rate_limited by tier, zero");
    CHECK(strstr(r.body, "clinic_") == NULL, "no tenant labels");
    tl_resp_free(&r);
}

static void
test_requests(void)
{
    static const char LIM2[] = "aigw_requests_total{route=\"/api/ai/limits\",code=\"2xx\"}";
    static const char NF4[] = "aigw_requests_total{route=\"unmatched\",code=\"4xx\"}";
    static const char LIMCNT[] = "aigw_request_duration_seconds_count{route=\"/api/ai/limits\"}";
    static const char LIMINF[] = "aigw_request_duration_seconds_bucket{route=\"/api/ai/limits\",le=\"+Inf\"}";
    char *tok = tl_token("clinic_001", "admin", 600);
    double lim = now_sample(LIM2), nf = now_sample(NF4), cnt = now_sample(LIMCNT);
    struct tl_resp r;

    CHECK(lim >= 0 && nf >= 0 && cnt >= 0, "series present before: %g %g %g", lim, nf, cnt);
    tl_get(port, "/api/ai/limits", tok, &r);
    CHECK(r.status == 200, "limits: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    tl_get(port, "/no/such/route", NULL, &r);
    CHECK(r.status == 404, "404: %ld", r.status);
    tl_resp_free(&r);
    CHECK(wait_sample(LIM2, lim + 1) == lim + 1, "limits 2xx counted once");
    CHECK(wait_sample(NF4, nf + 1) == nf + 1, "404 counted as unmatched 4xx");
    CHECK(wait_sample(LIMCNT, cnt + 1) == cnt + 1, "limits duration observed");
    scrape(&r);
    CHECK(tl_metric_in(r.body, LIMINF) == tl_metric_in(r.body, LIMCNT), "+Inf bucket equals _count");
    tl_resp_free(&r);
    CHECK(wait_sample("aigw_requests_total{route=\"/metrics\",code=\"2xx\"}", 1) >= 1, "/metrics counts itself");
    free(tok);
}

static void
test_query(void)
{
    PGconn *owner = tl_pg_owner();
    char id[37], code[65], body[160];
    char *tok;
    double hits = now_sample("aigw_cache_hits_total"), misses = now_sample("aigw_cache_misses_total");
    double up = now_sample("aigw_upstream_duration_seconds_count");
    struct tl_resp r;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    snprintf(body, sizeof(body), "{\"question\":\"How do I clean lenses, metrics run %d?\"}", (int)getpid());
    tl_post(port, "/api/ai/query", tok, body, &r);
    CHECK(r.status == 200, "first query: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    CHECK(wait_sample("aigw_cache_misses_total", misses + 1) == misses + 1, "a miss");
    CHECK(wait_sample("aigw_upstream_duration_seconds_count", up + 1) == up + 1, "upstream duration observed");
    /* the answer is stored after the response leaves: until then a repeat
     * is answered from the flight's published result (aigw_coalesced_total) */
    {
        char pattern[64];
        long long n = 0;

        snprintf(pattern, sizeof(pattern), "aigw:{%s}:c:*", id);
        for (int i = 0; i < 100 && n < 1; i++) {
            n = tl_redis_int("EVAL %s 0 %s", "return #redis.call('KEYS', ARGV[1])", pattern);
            if (n < 1)
                usleep(20 * 1000);
        }
        CHECK(n == 1, "the answer is in the cache (%lld keys)", n);
    }
    tl_post(port, "/api/ai/query", tok, body, &r);
    CHECK(r.status == 200, "second query: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    CHECK(wait_sample("aigw_cache_hits_total", hits + 1) == hits + 1, "a hit");
    CHECK(now_sample("aigw_cache_misses_total") == misses + 1, "no second miss");
    CHECK(wait_sample("aigw_requests_total{route=\"/api/ai/query\",code=\"2xx\"}", 2) >= 2, "query 2xx counted");
    free(tok);
    PQfinish(owner);
}

/* A stream its client leaves: the model was called (and stopped), so the
 * call is in aigw_upstream_duration_seconds and its usage row has its
 * upstream milliseconds, like any other call that reached a model. */
static void
test_stream_gone(void)
{
    PGconn *owner = tl_pg_owner();
    const char *mock = tl_env("AIGW_MOCK_URL");
    double up = now_sample("aigw_upstream_duration_seconds_count");
    char id[37], code[65], *tok;
    int fd;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    tl_mock_config(mock, "{\"mode\":\"ok\",\"tokens\":400,\"token_latency_ms\":25}");
    fd = tl_stream_open(port, tok, "Tell me everything about progressive lenses", 0);
    CHECK(fd >= 0 && tl_read_until(fd, "tok5", 5000), "the stream started");
    if (fd >= 0)
        close(fd);
    CHECK(tl_usage_rows(owner, id, "status_code = 499 AND upstream_ms >= 100", 1) == 1,
          "the row of the stream its client left has its upstream time");
    CHECK(wait_sample("aigw_upstream_duration_seconds_count", up + 1) == up + 1,
          "the abandoned stream's call is in the upstream histogram");
    tl_mock_reset(mock);
    free(tok);
    PQfinish(owner);
}

/* No backend up: the 503 called no model, so it is no upstream call in
 * the histogram (an outage used to add ~0 s observations, pulling the
 * latency quantiles down while every call failed) and its usage row has
 * no upstream time; it is still a cache miss (the cache was asked). */
static void
test_no_backend(void)
{
    static const char BE[] = "aigw_upstream_backend_up{backend=\"mock1\"}";
    static const char Q5[] = "aigw_requests_total{route=\"/api/ai/query\",code=\"5xx\"}";
    PGconn *owner = tl_pg_owner();
    const char *mock = tl_env("AIGW_MOCK_URL");
    char id[37], code[65], body[160], *tok;
    double up, misses, q5;
    struct tl_resp r;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    tl_mock_config(mock, "{\"mode\":\"loading\"}");
    for (int i = 0; i < 100 && now_sample(BE) != 0; i++)
        usleep(50 * 1000);
    CHECK(now_sample(BE) == 0, "mock1 is down by its probes");
    up = now_sample("aigw_upstream_duration_seconds_count");
    misses = now_sample("aigw_cache_misses_total");
    q5 = now_sample(Q5);
    snprintf(body, sizeof(body), "{\"question\":\"Is anyone there, metrics run %d?\"}", (int)getpid());
    tl_post(port, "/api/ai/query", tok, body, &r);
    CHECK(r.status == 503, "no backend: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    CHECK(wait_sample(Q5, q5 + 1) == q5 + 1, "the 503 counted");
    CHECK(now_sample("aigw_upstream_duration_seconds_count") == up, "no upstream call observed");
    CHECK(now_sample("aigw_cache_misses_total") == misses + 1, "a cache miss all the same");
    CHECK(tl_usage_rows(owner, id, "status_code = 503 AND upstream_ms IS NULL", 1) == 1,
          "the usage row has no upstream time");
    tl_mock_reset(mock);
    for (int i = 0; i < 100 && now_sample(BE) != 1; i++)
        usleep(50 * 1000);
    free(tok);
    PQfinish(owner);
}

/* A new tenant of tier with overrides (JSON), and a token for it. */
static char *
tenant_with(PGconn *owner, const char *tier, const char *overrides, char id[37])
{
    char code[65];
    const char *p[2] = {overrides, id};

    tl_create_tenant(owner, tier, "active", id, code);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = $1::jsonb WHERE id = $2", 2, p));
    return tl_token(code, "optician", 600);
}

/* aigw_rate_limited_total and aigw_quota_exhausted_total move by one for
 * their refusal, under the tenant's tier and no other. */
static void
test_refusals(void)
{
    static const char RL_STD[] = "aigw_rate_limited_total{tier=\"standard\"}";
    static const char RL_ENT[] = "aigw_rate_limited_total{tier=\"enterprise\"}";
    static const char QE_ENT[] = "aigw_quota_exhausted_total{tier=\"enterprise\"}";
    static const char QE_STD[] = "aigw_quota_exhausted_total{tier=\"standard\"}";
    PGconn *owner = tl_pg_owner();
    double rl_std = now_sample(RL_STD), rl_ent = now_sample(RL_ENT), qe_ent = now_sample(QE_ENT),
           qe_std = now_sample(QE_STD);
    char id[37], body[160], *tok;
    struct tl_resp r;

    tok = tenant_with(owner, "standard", "{\"requests_per_minute\": 1}", id);
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof(body), "{\"question\":\"rate limited, metrics run %d, %d?\"}", (int)getpid(), i);
        tl_post(port, "/api/ai/query", tok, body, &r);
        tl_expect(i == 0 ? "rate: first" : "rate: second", &r, i == 0 ? 200 : 429, i == 0 ? NULL : "rate_limited");
        tl_resp_free(&r);
    }
    CHECK(wait_sample(RL_STD, rl_std + 1) == rl_std + 1, "rate_limited{tier=standard} +1");
    CHECK(now_sample(RL_ENT) == rl_ent && now_sample(QE_STD) == qe_std, "no other refusal counted");
    free(tok);

    tok = tenant_with(owner, "enterprise", "{\"monthly_query_limit\": 1}", id);
    for (int i = 0; i < 2; i++) {
        snprintf(body, sizeof(body), "{\"question\":\"over quota, metrics run %d, %d?\"}", (int)getpid(), i);
        tl_post(port, "/api/ai/query", tok, body, &r);
        tl_expect(i == 0 ? "quota: first" : "quota: second", &r, i == 0 ? 200 : 429, i == 0 ? NULL : "quota_exhausted");
        tl_resp_free(&r);
    }
    CHECK(wait_sample(QE_ENT, qe_ent + 1) == qe_ent + 1, "quota_exhausted{tier=enterprise} +1");
    CHECK(now_sample(RL_ENT) == rl_ent, "not counted as rate limited");
    free(tok);
    PQfinish(owner);
}

/* Three identical questions at once while the model takes a second: one
 * leads, the others wait for its result (aigw_coalesced_total) or, if one
 * came after the answer was stored, hit the cache. */
static void
test_coalesced(void)
{
    PGconn *owner = tl_pg_owner();
    const char *mock = tl_env("AIGW_MOCK_URL");
    double co = now_sample("aigw_coalesced_total"), hits = now_sample("aigw_cache_hits_total");
    char id[37], body[160], *tok;
    const char *bodies[3] = {body, body, body};
    struct tl_resp r[3];
    int ok = 0;

    tok = tenant_with(owner, "pro", "{}", id);
    snprintf(body, sizeof(body), "{\"question\":\"asked three times at once, metrics run %d?\"}", (int)getpid());
    tl_mock_config(mock, "{\"first_token_ms\":1000}");
    tl_post_parallel(port, "/api/ai/query", tok, NULL, bodies, 3, r);
    tl_mock_reset(mock);
    for (int i = 0; i < 3; i++) {
        ok += r[i].status == 200;
        tl_resp_free(&r[i]);
    }
    CHECK(ok == 3, "all three answered (%d)", ok);
    CHECK(wait_sample("aigw_coalesced_total", co + 1) >= co + 1, "at least one waiter coalesced");
    CHECK(now_sample("aigw_coalesced_total") - co + now_sample("aigw_cache_hits_total") - hits == 2,
          "the two others: coalesced %g, hits %g", now_sample("aigw_coalesced_total") - co,
          now_sample("aigw_cache_hits_total") - hits);
    free(tok);
    PQfinish(owner);
}

/* The counters live as long as the process: a SIGHUP reload leaves them
 * where they were (a reset would read as a counter reset to Prometheus and
 * lose the increments since the last scrape). */
static void
test_reload_keeps_counters(struct tl_aigw *gw)
{
    static const char M2[] = "aigw_requests_total{route=\"/metrics\",code=\"2xx\"}";
    double ok = now_sample("aigw_config_reloads_total{result=\"success\"}"), m2 = now_sample(M2);
    double hits = now_sample("aigw_cache_hits_total"), co = now_sample("aigw_coalesced_total");

    CHECK(m2 >= 1 && hits >= 1 && co >= 1, "counters moved before the reload: %g %g %g", m2, hits, co);
    tl_aigw_signal(gw, SIGHUP);
    CHECK(wait_sample("aigw_config_reloads_total{result=\"success\"}", ok + 1) == ok + 1, "the reload counted");
    CHECK(now_sample(M2) > m2, "requests_total kept and still counting");
    CHECK(now_sample("aigw_cache_hits_total") == hits && now_sample("aigw_coalesced_total") == co,
          "cache hits and coalesced kept");
    CHECK(now_sample("aigw_config_last_reload_successful") == 1, "last reload successful");
}

/* PostgreSQL and Redis unreachable (connection refused): every failed
 * connect counts, in aigw_postgres_errors_total and aigw_redis_errors_total,
 * already while aigw waits for them at start-up (/metrics answers then). */
static void
test_dependency_errors(void)
{
    const char *const env[] = {"AIGW_DATABASE_URL=postgresql://aigw@127.0.0.1:1/aigw",
                               "AIGW_REDIS_URL=redis://127.0.0.1:1/0", NULL};
    char *cfg = tl_config_patch("{\"startup\":{\"dependency_timeout_ms\":60000}}");
    struct tl_aigw gw;
    double pg = -1, rd = -1;

    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "aigw with unreachable dependencies did not start listening");
        free(cfg);
        return;
    }
    for (int i = 0; i < 100 && (pg < 2 || rd < 2); i++) {
        pg = tl_metric(gw.port, "aigw_postgres_errors_total");
        rd = tl_metric(gw.port, "aigw_redis_errors_total");
        usleep(50 * 1000);
    }
    CHECK(pg >= 2 && rd >= 2, "failed connects counted and counting: postgres %g, redis %g", pg, rd);
    tl_aigw_signal(&gw, SIGTERM);
    CHECK(tl_aigw_wait(&gw, 10000) >= 0, "it stops on SIGTERM while waiting");
    tl_aigw_stop(&gw);
    free(cfg);
}

static void
test_promtool(void)
{
    char path[] = "/tmp/aigw-metrics-XXXXXX";
    struct tl_resp r;
    char *cmd;
    int fd, st;

    if (access("/usr/bin/promtool", X_OK) != 0 && system("command -v promtool >/dev/null 2>&1") != 0) {
        printf("note: promtool not installed (Debian package prometheus): lint skipped\n");
        return;
    }
    scrape(&r);
    fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    if (fd < 0) {
        tl_resp_free(&r);
        return;
    }
    CHECK(write(fd, r.body, r.body_len) == (ssize_t)r.body_len, "write exposition");
    close(fd);
    cmd = tl_sprintf("promtool check metrics < %s", path);
    st = system(cmd);
    CHECK(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "promtool check metrics: status %d", st);
    free(cmd);
    unlink(path);
    tl_resp_free(&r);
}

int
main(void)
{
    struct tl_aigw gw;
    char *cfg = tl_config_patch(CONFIG);

    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        return tl_done();
    }
    port = gw.port;
    test_format();
    test_requests();
    test_query();
    test_stream_gone();
    test_no_backend();
    test_refusals();
    test_coalesced();
    test_reload_keeps_counters(&gw);
    test_promtool();
    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    test_dependency_errors();
    free(cfg);
    return tl_done();
}
