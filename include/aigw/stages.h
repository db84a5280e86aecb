/* stages.h - the pipeline stages (DESIGN §2); each is an aigw_stage_fn.
 * A stage returns AIGW_OK to continue, AIGW_DONE after setting a response
 * (usually an error through aigw_req_fail), AIGW_AGAIN when it suspended. */
#ifndef AIGW_STAGES_H
#define AIGW_STAGES_H

#include "aigw/http.h"
#include "aigw/jsonw.h"

/* Verify the caller's credential and fill req->claims: a bearer JWT, or an
 * API key (X-API-Key, or Bearer with the key prefix) which also sets
 * req->api_key. 401 unauthenticated (bad, unknown, revoked or expired); 403
 * forbidden when the route takes no API keys or the key lacks its scope;
 * 503 when the key store cannot be asked. */
enum aigw_rc aigw_stage_authenticate(struct aigw_req *req);

/* Load the caller's tenant (cache, else PostgreSQL under RLS) into
 * req->tenant. 403 forbidden (unknown), 403 tenant_inactive, 503; for an API
 * key, 403 feature_not_in_plan when the plan lacks api_access. */
enum aigw_rc aigw_stage_tenant(struct aigw_req *req);
/* AIGW_OK when req->tenant's plan has api_access, else a 403
 * feature_not_in_plan (with required_tier) is set and AIGW_DONE returned. */
enum aigw_rc aigw_require_api_access(struct aigw_req *req);

/* Parse the uploaded body as a JSON object (duplicate keys rejected, depth
 * limited) into req->json; an empty body becomes {}. 400 invalid_json. */
enum aigw_rc aigw_stage_json_body(struct aigw_req *req);

/* --- administration --- */

/* Platform operators only: the token was verified by a key configured with
 * "platform": true AND carries role platform_admin. 403 forbidden otherwise
 * (a clinic key never qualifies, whatever role it claims). */
enum aigw_rc aigw_stage_platform_admin(struct aigw_req *req);
/* Tenant admins only (role admin); runs after aigw_stage_tenant. 403 forbidden. */
enum aigw_rc aigw_stage_tenant_admin(struct aigw_req *req);

/* --- the query path (/api/ai/query, /api/ai/recommendation) --- */

/* A fresh req->q (pool-owned) answered by aigw_api_query by default. */
struct aigw_query *aigw_query_new(struct aigw_req *req);

/* Parse {"question", "query_type", "stream"} into req->q; classify when no
 * type is given. 400 invalid_request naming the field. */
enum aigw_rc aigw_stage_validate_query(struct aigw_req *req);
/* Parse {"product_type", "prescription"} into a knowledge question. */
enum aigw_rc aigw_stage_validate_recommendation(struct aigw_req *req);
/* Plan feature for the query type (403 feature_not_in_plan + required_tier),
 * PII guard for patient analytics (403 pii_not_allowed). */
enum aigw_rc aigw_stage_authorize(struct aigw_req *req);
/* Rate limit (the tenant's, and an API key's own when it has one) +
 * revocation marker of the key + generation + cache GET + quota read in one
 * Redis round trip; RateLimit headers of the tighter limit; 429
 * rate_limited + Retry-After; 401 when the key was just revoked. */
enum aigw_rc aigw_stage_admit(struct aigw_req *req);
/* For a route that is rate-limited and nothing else (GET /api/ai/usage):
 * a bare req->q for aigw_stage_admit, which runs next, so the request
 * counts in the tenant's per-minute window (and an API key's) with the
 * query routes, with their RateLimit headers and 429; no cache lookup,
 * no quota. Cannot fail. */
enum aigw_rc aigw_stage_rate_only(struct aigw_req *req);
void aigw_admit_init(void);
/* Idempotency-Key: replay / 409 / 422. */
enum aigw_rc aigw_stage_idempotency(struct aigw_req *req);
void aigw_idempotency_init(void);
/* Store the outcome for replay (called before the response is queued). */
void aigw_idempotency_finish(struct aigw_req *req);
/* Serve a cache hit found by admission (not billed). */
enum aigw_rc aigw_stage_cache(struct aigw_req *req);
/* --- the OpenAI-compatible path (/v1/chat/completions) --- */

/* Plan needs api_access (403 feature_not_in_plan); the OpenAI request body
 * checked field by field (400 naming the field), the model against the
 * tenant's allow-list (404 model_not_found), max_tokens clamped to the plan;
 * fills req->q with the body to forward and its cache identity (cacheable
 * only without stream, and with temperature 0 unless openai.cache_sampled). */
enum aigw_rc aigw_stage_validate_chat(struct aigw_req *req);
/* The model id as this request's tenant may use it: configured, its plan
 * among the model's tiers, and the plan having the feature of the query
 * type the model is routed to (a model routed to patient_analytics is not
 * for a plan without that feature, whatever its tiers); NULL otherwise. */
const struct aigw_model_cfg *aigw_chat_model(const struct aigw_req *req, const char *id);
/* A chat answer or chunk (JSON text) without what tells one tenant about
 * another's prompts: llama-server's "timings" (cache_n: how much of the
 * prompt its slot already held, from whichever tenant filled it) and
 * usage.prompt_tokens_details (cached_tokens). Slots and their prompt
 * caches are shared by every tenant of a backend. When something was
 * removed and model is not NULL, "model" becomes model (the id the client
 * asked for, not llama-server's file name). Returns a new malloc'd text
 * (*out_len set), or NULL when json holds neither (send it as is) or is no
 * JSON object. */
char *aigw_chat_strip_cache_info(const char *json, size_t len, const char *model, size_t *out_len);

/* A fresh upstream answer as a cache entry: its key, its value (in the
 * entry format aigw_stage_cache reads) and the tenant's TTL. */
struct aigw_cache_entry {
    const char *key;           /* in the request's pool */
    struct aigw_jsonw value;   /* the caller frees it (aigw_jsonw_free) */
    char ttl_s[24];
};

/* Fill *e when this answer is to be cached (a 200 from the model, billed,
 * the tenant caches, the client did not say no-store); else false and *e
 * untouched. */
bool aigw_cache_entry(struct aigw_req *req, struct aigw_cache_entry *e);
/* SET the entry with its TTL (one round trip on a pooled connection). */
void aigw_cache_store(struct aigw_req *req, struct aigw_cache_entry *e);
/* Coalesce identical in-flight questions (this and other instances). */
enum aigw_rc aigw_stage_singleflight(struct aigw_req *req);
/* Reserve one monthly query: 429 quota_exhausted. */
enum aigw_rc aigw_stage_quota(struct aigw_req *req);
/* Hand the question to the upstream engine and suspend; on resume turn the
 * outcome into the answer or 502/503/504. */
enum aigw_rc aigw_stage_upstream(struct aigw_req *req);

/* Streaming (shared by the query and the OpenAI routes): create req->sse,
 * submit a streaming call whose events on_event turns into client bytes,
 * and set the finalizer. The caller then waits with aigw_sse_wait. */
struct aigw_upstream_call;
struct aigw_upstream_event;
void aigw_stream_start(struct aigw_req *req, const char *body, size_t len,
                       bool (*on_event)(struct aigw_upstream_call *, const struct aigw_upstream_event *, void *),
                       void (*finalize)(struct aigw_req *, bool));
/* At a stream's end (in its finalizer): cancel the call if the client left
 * first, and fill req->q from what was delivered (tokens, model, billed when
 * any text went out). Returns true for a complete answer (q->answer set);
 * false after setting the error (499 client_closed; 503 shutting_down when
 * the connection ended because aigw stopped, the drain's grace over; or
 * the upstream's). */
bool aigw_stream_outcome(struct aigw_req *req, bool client_gone, long *chunks);

/* Nesting depth of JSON text (brackets outside strings); pure, for tests. */
int aigw_json_depth(const char *buf, size_t len);

#endif
