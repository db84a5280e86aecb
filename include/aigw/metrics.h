/* metrics.h - lock-free Prometheus counters and histograms, rendered at GET /metrics */
#ifndef AIGW_METRICS_H
#define AIGW_METRICS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

struct aigw_metrics;
struct aigw_req;
struct aigw_server;

/* Allocate a zeroed metrics set. Never fails (aborts on OOM). Owner: caller
 * (aigw_metrics_destroy). Every recording function below is thread-safe,
 * lock-free (relaxed atomic adds) and NULL-safe on m. */
struct aigw_metrics *aigw_metrics_create(void);
void aigw_metrics_destroy(struct aigw_metrics *m);

/* One finished request (call once, from the completion callback): counts
 * aigw_requests_total{route,code} and aigw_request_duration_seconds{route}
 * from req->route, req->status and req->start_us; for a cacheable query
 * handed to the upstream engine a cache miss, and when its call reached a
 * model (upstream_ms >= 0) aigw_upstream_duration_seconds.
 * Requests that never got a response (aborted) are not counted. */
void aigw_metrics_request_done(struct aigw_metrics *m, const struct aigw_req *req);

/* A query answered by the cache stage. */
void aigw_metrics_cache_hit(struct aigw_metrics *m);
/* A single-flight waiter answered from its leader's result. */
void aigw_metrics_coalesced(struct aigw_metrics *m);
/* A 429 rate_limited / quota_exhausted for a tenant of tier (any string;
 * mapped to standard/pro/enterprise/other). */
void aigw_metrics_rate_limited(struct aigw_metrics *m, const char *tier);
void aigw_metrics_quota_exhausted(struct aigw_metrics *m, const char *tier);

/* An API key lookup refused because half the database pool was already
 * busy with key lookups (aigw_api_key_lookups_refused_total). */
void aigw_metrics_api_key_lookup_refused(struct aigw_metrics *m);

/* A SIGHUP reload, applied or refused (aigw_config_reloads_total{result},
 * aigw_config_last_reload_successful). */
void aigw_metrics_reload(struct aigw_metrics *m, bool applied);

/* n connections closed at their request deadline (http.request_timeout_s:
 * no whole request arrived in time); aigw_http_request_timeouts_total. */
void aigw_metrics_request_timeouts(struct aigw_metrics *m, unsigned n);

/* A failed PostgreSQL connect / acquire / statement, a failed Redis connect /
 * acquire / command. Process-wide counters: the pools and the usage writer
 * hold no server pointer, so these take none. */
void aigw_metrics_count_pg_error(void);
void aigw_metrics_count_redis_error(void);

/* Write the Prometheus text exposition (format 0.0.4) of m plus the gauges
 * read from srv (upstream, health, usage; NULL members are skipped) to out.
 * Returns 0, or -1 on a write error. */
int aigw_metrics_render(const struct aigw_metrics *m, const struct aigw_server *srv, FILE *out);

#endif
