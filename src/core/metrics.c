/* metrics.c - fixed arrays of atomic counters and the Prometheus text renderer */
#include "aigw/metrics.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/health.h"
#include "aigw/http.h"
#include "aigw/pg.h"
#include "aigw/query.h"
#include "aigw/redis.h"
#include "aigw/server.h"
#include "aigw/upstream.h"
#include "aigw/usage.h"
#include "aigw/util.h"

#ifndef AIGW_VERSION
#define AIGW_VERSION "unknown"
#endif

/* Route labels: the paths of the route table, then "other" (a route missing
 * here) and "unmatched" (404/405 before any route). Bounded cardinality. */
static const char *const route_names[] = {
    "/api/ai/query",
    "/api/ai/recommendation",
    "/v1/chat/completions",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/api/ai/limits",
    "/api/ai/usage",
    "/api/ai/cache/invalidate",
    "/metrics",
    "/api/v1/api-keys",
    "/api/v1/api-keys/{}",
    "/api/v1/audit-logs",
    "/api/v1/tenants",
    "/api/v1/tenants/{}",
    "/api/v1/tenants/{}/upgrade",
    "/api/v1/tenants/{}/usage",
    "/api/v1/plans",
    "other",
    "unmatched",
};
#define N_ROUTES (sizeof(route_names) / sizeof(route_names[0]))
#define ROUTE_OTHER (N_ROUTES - 2)
#define ROUTE_UNMATCHED (N_ROUTES - 1)

static const char *const class_names[] = {"2xx", "3xx", "4xx", "5xx"};
#define N_CLASSES (sizeof(class_names) / sizeof(class_names[0]))

static const char *const tier_names[] = {"standard", "pro", "enterprise", "other"};
#define N_TIERS (sizeof(tier_names) / sizeof(tier_names[0]))

/* Bucket upper bounds in microseconds and as the "le" label. */
static const uint64_t bucket_us[] = {1000,   2500,   5000,    10000,   25000,   50000,    100000,
                                     250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000};
static const char *const bucket_le[] = {"0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                                        "0.25",  "0.5",    "1",     "2.5",  "5",     "10",   "30"};
#define N_BUCKETS (sizeof(bucket_us) / sizeof(bucket_us[0]))

struct hist {
    _Atomic uint64_t bucket[N_BUCKETS + 1]; /* per bucket (not cumulative); last is +Inf */
    _Atomic uint64_t sum_us;
};

struct aigw_metrics {
    _Atomic uint64_t requests[N_ROUTES][N_CLASSES];
    struct hist request_dur[N_ROUTES];
    struct hist upstream_dur;
    _Atomic uint64_t cache_hits, cache_misses, coalesced;
    _Atomic uint64_t rate_limited[N_TIERS], quota_exhausted[N_TIERS];
    _Atomic uint64_t reloads[2];          /* [0] failed, [1] applied */
    _Atomic uint64_t request_timeouts;    /* connections closed at their request deadline */
    _Atomic uint64_t key_lookups_refused; /* API key misses over the lookup bound */
    atomic_bool last_reload_ok;
};

static _Atomic uint64_t pg_errors, redis_errors;

static void
inc(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static uint64_t
get(const _Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

struct aigw_metrics *
aigw_metrics_create(void)
{
    struct aigw_metrics *m = aigw_xcalloc(1, sizeof(struct aigw_metrics));

    atomic_init(&m->last_reload_ok, true);
    return m;
}

void
aigw_metrics_destroy(struct aigw_metrics *m)
{
    free(m);
}

static size_t
route_index(const struct aigw_route *route)
{
    if (route == NULL)
        return ROUTE_UNMATCHED;
    for (size_t i = 0; i < ROUTE_OTHER; i++)
        if (strcmp(route->path, route_names[i]) == 0)
            return i;
    return ROUTE_OTHER;
}

static size_t
tier_index(const char *tier)
{
    for (size_t i = 0; tier != NULL && i < N_TIERS - 1; i++)
        if (strcmp(tier, tier_names[i]) == 0)
            return i;
    return N_TIERS - 1;
}

static void
observe(struct hist *h, int64_t us)
{
    size_t i = 0;
    uint64_t v = us > 0 ? (uint64_t)us : 0;

    while (i < N_BUCKETS && v > bucket_us[i])
        i++;
    inc(&h->bucket[i]);
    atomic_fetch_add_explicit(&h->sum_us, v, memory_order_relaxed);
}

void
aigw_metrics_request_done(struct aigw_metrics *m, const struct aigw_req *req)
{
    size_t route, cls;

    if (m == NULL || !req->responded || req->status < 200)
        return;
    route = route_index(req->route);
    cls = req->status >= 500 ? 3 : (size_t)(req->status / 100 - 2);
    inc(&m->requests[route][cls]);
    observe(&m->request_dur[route], aigw_now_us() - req->start_us);
    if (req->q != NULL && req->q->upstream_ms >= 0)
        observe(&m->upstream_dur, (int64_t)req->q->upstream_ms * 1000);
    if (req->q != NULL && req->q->call != NULL && !req->q->no_cache)
        inc(&m->cache_misses); /* handed to the upstream engine, model reached or not */
}

void
aigw_metrics_cache_hit(struct aigw_metrics *m)
{
    if (m != NULL)
        inc(&m->cache_hits);
}

void
aigw_metrics_coalesced(struct aigw_metrics *m)
{
    if (m != NULL)
        inc(&m->coalesced);
}

void
aigw_metrics_rate_limited(struct aigw_metrics *m, const char *tier)
{
    if (m != NULL)
        inc(&m->rate_limited[tier_index(tier)]);
}

void
aigw_metrics_quota_exhausted(struct aigw_metrics *m, const char *tier)
{
    if (m != NULL)
        inc(&m->quota_exhausted[tier_index(tier)]);
}

void
aigw_metrics_api_key_lookup_refused(struct aigw_metrics *m)
{
    if (m != NULL)
        inc(&m->key_lookups_refused);
}

void
aigw_metrics_reload(struct aigw_metrics *m, bool applied)
{
    if (m == NULL)
        return;
    inc(&m->reloads[applied ? 1 : 0]);
    atomic_store(&m->last_reload_ok, applied);
}

void
aigw_metrics_request_timeouts(struct aigw_metrics *m, unsigned n)
{
    if (m != NULL)
        atomic_fetch_add_explicit(&m->request_timeouts, n, memory_order_relaxed);
}

void
aigw_metrics_count_pg_error(void)
{
    inc(&pg_errors);
}

void
aigw_metrics_count_redis_error(void)
{
    inc(&redis_errors);
}

/* ---- rendering ---- */

static void
meta(FILE *out, const char *name, const char *type, const char *help)
{
    fprintf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \, " and newline escaped. */
static void
label_value(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            fprintf(out, "\\%c", *s);
        else if (*s == '\n')
            fputs("\\n", out);
        else
            fputc(*s, out);
    }
}

/* One histogram series; label is "" or `route="/x",` (with the comma). */
static void
hist_series(FILE *out, const char *name, const char *label, const struct hist *h)
{
    uint64_t cum = 0;

    for (size_t i = 0; i <= N_BUCKETS; i++) {
        cum += get(&h->bucket[i]);
        fprintf(out, "%s_bucket{%sle=\"%s\"} %llu\n", name, label, i < N_BUCKETS ? bucket_le[i] : "+Inf",
                (unsigned long long)cum);
    }
    /* strip the trailing comma for _sum/_count */
    if (*label)
        fprintf(out, "%s_sum{%.*s} %.6f\n%s_count{%.*s} %llu\n", name, (int)strlen(label) - 1, label,
                (double)get(&h->sum_us) / 1e6, name, (int)strlen(label) - 1, label, (unsigned long long)cum);
    else
        fprintf(out, "%s_sum %.6f\n%s_count %llu\n", name, (double)get(&h->sum_us) / 1e6, name,
                (unsigned long long)cum);
}

static void
counter(FILE *out, const char *name, const char *help, uint64_t v)
{
    meta(out, name, "counter", help);
    fprintf(out, "%s %llu\n", name, (unsigned long long)v);
}

static void
gauge(FILE *out, const char *name, const char *help, uint64_t v)
{
    meta(out, name, "gauge", help);
    fprintf(out, "%s %llu\n", name, (unsigned long long)v);
}

static void
tier_counter(FILE *out, const char *name, const char *help, const _Atomic uint64_t *v)
{
    meta(out, name, "counter", help);
    for (size_t i = 0; i < N_TIERS; i++)
        fprintf(out, "%s{tier=\"%s\"} %llu\n", name, tier_names[i], (unsigned long long)get(&v[i]));
}

static void
render_requests(FILE *out, const struct aigw_metrics *m)
{
    char label[96];

    meta(out, "aigw_requests_total", "counter", "HTTP requests answered, by route and status class.");
    for (size_t r = 0; r < N_ROUTES; r++)
        for (size_t c = 0; c < N_CLASSES; c++)
            fprintf(out, "aigw_requests_total{route=\"%s\",code=\"%s\"} %llu\n", route_names[r], class_names[c],
                    (unsigned long long)get(&m->requests[r][c]));
    meta(out, "aigw_request_duration_seconds", "histogram", "Time from request arrival to completion, by route.");
    for (size_t r = 0; r < N_ROUTES; r++) {
        snprintf(label, sizeof(label), "route=\"%s\",", route_names[r]);
        hist_series(out, "aigw_request_duration_seconds", label, &m->request_dur[r]);
    }
    meta(out, "aigw_upstream_duration_seconds", "histogram",
         "Time of upstream model calls from submit to outcome, queueing included.");
    hist_series(out, "aigw_upstream_duration_seconds", "", &m->upstream_dur);
}

/* The backends of the live configuration, as the health prober has them. */
static void
render_backends(FILE *out, const struct aigw_server *srv)
{
    struct aigw_health_backend list[AIGW_MAX_BACKENDS];
    size_t n = srv->health != NULL ? aigw_health_list(srv->health, list, AIGW_MAX_BACKENDS) : 0;

    meta(out, "aigw_upstream_backend_up", "gauge", "Whether the backend answered its last /health probe (1) or not (0).");
    for (size_t i = 0; i < n; i++) {
        fputs("aigw_upstream_backend_up{backend=\"", out);
        label_value(out, list[i].name);
        fprintf(out, "\"} %d\n", list[i].up ? 1 : 0);
    }
}

/* Process lifecycle: in-flight requests, drain, configuration reloads. */
static void
render_lifecycle(FILE *out, const struct aigw_metrics *m, const struct aigw_server *srv)
{
    gauge(out, "aigw_requests_in_flight", "Requests received and not yet completed.", atomic_load(&srv->in_flight));
    gauge(out, "aigw_draining", "1 while the process drains after SIGTERM, else 0.", atomic_load(&srv->stopping));
    meta(out, "aigw_http_request_timeouts_total", "counter",
         "Connections closed because no whole request arrived within http.request_timeout_s.");
    fprintf(out, "aigw_http_request_timeouts_total %llu\n", (unsigned long long)get(&m->request_timeouts));
    meta(out, "aigw_config_reloads_total", "counter", "SIGHUP configuration reloads, by result.");
    fprintf(out, "aigw_config_reloads_total{result=\"success\"} %llu\n", (unsigned long long)get(&m->reloads[1]));
    fprintf(out, "aigw_config_reloads_total{result=\"failure\"} %llu\n", (unsigned long long)get(&m->reloads[0]));
    gauge(out, "aigw_config_last_reload_successful", "Whether the last reload was applied (1) or refused (0).",
          atomic_load(&m->last_reload_ok));
}

static void
render_gauges(FILE *out, const struct aigw_server *srv)
{
    meta(out, "aigw_upstream_in_flight", "gauge", "Upstream calls in flight.");
    fprintf(out, "aigw_upstream_in_flight %zu\n", srv->upstream ? aigw_upstream_in_flight(srv->upstream) : 0);
    meta(out, "aigw_upstream_queued", "gauge", "Upstream calls queued for a free backend slot.");
    fprintf(out, "aigw_upstream_queued %zu\n", srv->upstream ? aigw_upstream_queued(srv->upstream) : 0);
    render_backends(out, srv);
    gauge(out, "aigw_usage_backlog_rows", "Usage rows recorded but not yet committed to PostgreSQL.",
          aigw_usage_backlog(srv->usage));
    gauge(out, "aigw_usage_spool_bytes", "Bytes of usage spool on disk.", aigw_usage_spool_bytes(srv->usage));
    gauge(out, "aigw_redis_outbox_pending", "Redis writes sent again until Redis confirms them, not confirmed yet.",
          aigw_redis_outbox_pending(srv->outbox));
    gauge(out, "aigw_redis_stalled",
          "1 while Redis has stopped answering in time (a call timed out, none answered since), else 0.",
          aigw_redis_pool_stalled(srv->redis) ? 1 : 0);
    counter(out, "aigw_redis_calls_refused_total",
            "Redis calls given up at once, without waiting, because Redis had stopped answering in time.",
            aigw_redis_pool_refused(srv->redis));
}

int
aigw_metrics_render(const struct aigw_metrics *m, const struct aigw_server *srv, FILE *out)
{
    static const struct aigw_metrics zero = {.last_reload_ok = true};

    if (m == NULL)
        m = &zero;
    render_requests(out, m);
    counter(out, "aigw_cache_hits_total", "Queries answered from the answer cache.", get(&m->cache_hits));
    counter(out, "aigw_cache_misses_total", "Cacheable queries that went to the upstream.", get(&m->cache_misses));
    counter(out, "aigw_coalesced_total", "Queries answered from an identical in-flight query's result.",
            get(&m->coalesced));
    tier_counter(out, "aigw_rate_limited_total", "Queries refused by the per-minute rate limit, by tier.",
                 m->rate_limited);
    tier_counter(out, "aigw_quota_exhausted_total", "Queries refused by the monthly quota, by tier.",
                 m->quota_exhausted);
    counter(out, "aigw_api_key_lookups_refused_total",
            "API key requests refused with 503 because half the database pool was busy with key lookups.",
            get(&m->key_lookups_refused));
    render_gauges(out, srv);
    render_lifecycle(out, m, srv);
    counter(out, "aigw_postgres_errors_total", "Failed PostgreSQL connects, pool acquires and statements.",
            get(&pg_errors));
    gauge(out, "aigw_postgres_stalled",
          "1 while PostgreSQL has stopped answering in time (a statement or connect timed out, none answered since).",
          aigw_pg_stalled() ? 1 : 0);
    counter(out, "aigw_postgres_calls_refused_total",
            "Database connections refused at once, without waiting, because PostgreSQL had stopped answering in time.",
            aigw_pg_refused());
    counter(out, "aigw_redis_errors_total", "Failed Redis connects and pool acquires, timed-out calls, dropped connections.",
            get(&redis_errors));
    meta(out, "aigw_build_info", "gauge", "Build information; the value is always 1.");
    fputs("aigw_build_info{version=\"", out);
    label_value(out, AIGW_VERSION);
    fputs("\"} 1\n", out);
    gauge(out, "aigw_start_time_seconds", "Process start time, seconds since the Unix epoch.",
          (uint64_t)srv->started_wall_s);
    return ferror(out) ? -1 : 0;
}
