/* api.h - route handlers: the last stage of each route */
#ifndef AIGW_API_H
#define AIGW_API_H

#include "aigw/http.h"

/* GET /healthz: 200 while the process runs. */
enum aigw_rc aigw_api_healthz(struct aigw_req *req);
/* GET /readyz: 200 when PostgreSQL, Redis and >= 1 upstream answer, else 503
 * naming what failed. */
enum aigw_rc aigw_api_readyz(struct aigw_req *req);
/* GET /metrics: Prometheus text format 0.0.4 (no auth). */
enum aigw_rc aigw_api_metrics(struct aigw_req *req);

/* --- platform administration (stage aigw_stage_platform_admin before each) ---
 * {id} is a tenant's uuid or code; one that names no tenant answers 404. */

/* POST /api/v1/tenants {"code","name","tier", "status"?, "ai_enabled"?,
 * "overrides"?, "cache_ttl_s"?} -> 201 tenant; 409 conflict on a taken code. */
enum aigw_rc aigw_api_tenant_create(struct aigw_req *req);
/* GET /api/v1/tenants?limit=&after=: every tenant by code, keyset-paged. */
enum aigw_rc aigw_api_tenant_list(struct aigw_req *req);
/* GET /api/v1/tenants/{id}: the tenant, its limits in force and quota used. */
enum aigw_rc aigw_api_tenant_get(struct aigw_req *req);
/* PUT /api/v1/tenants/{id} {name, status, ai_enabled, overrides, cache_ttl_s}
 * (any subset; the plan changes only through upgrade). */
enum aigw_rc aigw_api_tenant_update(struct aigw_req *req);
/* POST /api/v1/tenants/{id}/upgrade {"tier"}: change the plan, up or down;
 * the month's quota count carries over. */
enum aigw_rc aigw_api_tenant_upgrade(struct aigw_req *req);
/* GET /api/v1/tenants/{id}/usage?period=YYYY-MM: billing usage of a month. */
enum aigw_rc aigw_api_tenant_usage(struct aigw_req *req);
/* GET /api/v1/plans: every plan, by rank. */
enum aigw_rc aigw_api_plans(struct aigw_req *req);

/* --- tenant administration (after aigw_stage_tenant_admin) --- */

/* GET /api/v1/audit-logs?limit=&before=: the tenant's audit trail, newest
 * first, keyset-paged (RLS-scoped). */
enum aigw_rc aigw_api_audit_logs(struct aigw_req *req);

/* GET /api/ai/limits: the caller's plan, quota used and remaining. */
enum aigw_rc aigw_api_limits(struct aigw_req *req);
/* GET /api/ai/usage?period=day|week|month: the caller's tenant's usage
 * totals and per query type (RLS-scoped). */
enum aigw_rc aigw_api_usage(struct aigw_req *req);
/* POST /api/ai/cache/invalidate: bump the tenant's cache generation
 * (tenant admin or manager), audited (cache.invalidate). */
enum aigw_rc aigw_api_cache_invalidate(struct aigw_req *req);

/* POST /api/v1/api-keys (tenant admin, plan with api_access): validate
 * {name, scopes, requests_per_minute, expires_at} (400 invalid_request
 * naming the field, nothing written), store the key's SHA-256 and an audit
 * row in one transaction, answer 201 with the key, shown this once. */
enum aigw_rc aigw_api_keys_create(struct aigw_req *req);
/* GET /api/v1/api-keys?limit=&before= (tenant admin): the tenant's keys,
 * newest first, keyset-paginated; never a secret or its hash. */
enum aigw_rc aigw_api_keys_list(struct aigw_req *req);
/* DELETE /api/v1/api-keys/{id} (tenant admin): revoke (audit row in the
 * same transaction, Redis marker before the commit) → 204, idempotent; 404
 * for an unknown id or another tenant's. */
enum aigw_rc aigw_api_keys_revoke(struct aigw_req *req);

/* POST /api/ai/query and /api/ai/recommendation: answer from req->q. */
enum aigw_rc aigw_api_query(struct aigw_req *req);
/* Take the outcome from a cached / coalesced answer object
 * {"answer","model","usage":{...}} and answer with it. */
enum aigw_rc aigw_query_from_json(struct aigw_req *req, json_t *root);
/* Finish hook of the query routes, run just before the response is queued:
 * publish to single-flight waiters, store in the cache, refund the quota on
 * failure, store the idempotency record. */
void aigw_query_finish(struct aigw_req *req);
/* After hook of the query routes: publish to single-flight waiters and
 * store the answer in the cache once the response is out. */
void aigw_query_after(struct aigw_req *req);

/* POST /v1/chat/completions: the upstream's answer (fresh), or one rebuilt
 * in the chat.completion shape from req->q (cache hit, coalesced). */
enum aigw_rc aigw_api_chat(struct aigw_req *req);
/* GET /v1/models: the models the caller's plan may use (OpenAI list shape). */
enum aigw_rc aigw_api_models(struct aigw_req *req);

/* The event that closes a query stream, from the settled request:
 * data: {"done": true, <every field of the JSON answer but its text>} or
 * data: {"error": {...}}. Pool-owned. */
char *aigw_query_sse_closing(struct aigw_req *req);
/* A complete 200 answer (cache hit, coalesced, replayed) to a request that
 * asked for a stream: rewrite the JSON body as the same events a live
 * stream sends (one delta with the whole text, then the closing event). */
void aigw_query_sse_replay(struct aigw_req *req);

#endif
