/* authenticate.c - verify the caller's bearer JWT or API key and attach the
 * identity. Key material is never logged: only key ids and static reasons. */
#include <string.h>

#include "aigw/apikey.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/redis.h"
#include "aigw/snapshot.h"
#include "aigw/stages.h"
#include "aigw/util.h"

static enum aigw_rc
authenticate_jwt(struct aigw_req *req, const char *tok)
{
    const char *why = NULL;
    unsigned char hash[32];
    size_t len = strlen(tok);
    int64_t now;

    if (len > AIGW_JWT_MAX_LEN)
        return aigw_req_fail(req, 401, "unauthenticated", "invalid token: malformed token");
    aigw_sha256(tok, len, hash);
    now = aigw_wall_s();
    /* keys come from the request's snapshot: a reload swaps them whole */
    if (req->srv->tokens != NULL &&
        aigw_jwt_cache_get(req->srv->tokens, hash, now, req->snap->generation, &req->claims)) {
        req->authenticated = true;
        return AIGW_OK;
    }
    if (aigw_jwt_verify(&req->snap->cfg, tok, len, now, &req->claims, &why) != 0) {
        aigw_log_fields(LOG_NOTICE, "authentication failed", "REQUEST_ID", req->request_id, "REASON", why,
                        NULL);
        return aigw_req_fail(req, 401, "unauthenticated", "invalid token: %s", why);
    }
    if (req->srv->tokens != NULL)
        aigw_jwt_cache_put(req->srv->tokens, hash, now, req->snap->generation, &req->claims);
    req->authenticated = true;
    return AIGW_OK;
}

static enum aigw_rc
key_refused(struct aigw_req *req, const char *key_id, const char *why)
{
    aigw_log_fields(LOG_NOTICE, "authentication failed", "REQUEST_ID", req->request_id, "REASON", why,
                    "API_KEY_ID", key_id, NULL);
    return aigw_req_fail(req, 401, "unauthenticated", "%s", why);
}

static bool
route_runs(const struct aigw_route *route, aigw_stage_fn stage)
{
    for (size_t i = 0; i < AIGW_MAX_STAGES && route->stages[i] != NULL; i++)
        if (route->stages[i] == stage)
            return true;
    return false;
}

/* The revocation marker, for routes whose admission script does not read
 * it already: 0 not revoked, 1 revoked, -1 Redis unavailable. */
static int
revoked_in_redis(struct aigw_req *req, const struct aigw_api_key *k)
{
    char key[160];
    long long n;

    aigw_apikey_revoked_key(k->tenant_id, k->id, key, sizeof(key));
    n = aigw_redis_key_int(req->srv->redis, "EXISTS", key);
    return n < 0 ? -1 : n > 0;
}

/* Route policy for a valid key: the route must take keys and the key must
 * carry the route's scope. */
static enum aigw_rc
check_scope(struct aigw_req *req, const struct aigw_api_key *k)
{
    const char *scope = req->route->scope;

    if (scope == NULL)
        return aigw_req_fail(req, 403, "forbidden", "API keys cannot be used on this route; use a JWT");
    if (!(k->scopes & aigw_scope_bit(scope)))
        return aigw_req_fail_extra(req, 403, "forbidden", json_pack("{s:s}", "required_scope", scope),
                                   "the API key lacks the %s scope", scope);
    return AIGW_OK;
}

static enum aigw_rc
authenticate_key(struct aigw_req *req, const char *key)
{
    size_t len = strlen(key);
    struct aigw_api_key *k;
    unsigned char sha[32];
    int rc;

    if (!aigw_apikey_well_formed(key, len))
        return key_refused(req, NULL, "malformed API key");
    aigw_sha256(key, len, sha);
    k = aigw_pool_alloc(req->pool, sizeof(*k));
    rc = aigw_apikey_get(req->srv->api_keys, req->srv->pg, sha, k);
    if (rc == 2) {
        /* not asked: the key may well be real, so no 401; the refusal is
         * the server's load, not this caller's rate (no 429) */
        aigw_metrics_api_key_lookup_refused(req->srv->metrics);
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "too many API key lookups in progress, retry shortly");
    }
    if (rc < 0) {
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "key data is unavailable, retry shortly");
    }
    if (rc > 0)
        return key_refused(req, NULL, "unknown API key");
    if (k->revoked)
        return key_refused(req, k->id, "API key revoked");
    if (k->expires_at != 0 && k->expires_at <= aigw_wall_s())
        return key_refused(req, k->id, "API key expired");
    if (check_scope(req, k) != AIGW_OK)
        return AIGW_DONE;
    if (!route_runs(req->route, aigw_stage_admit)) {
        rc = revoked_in_redis(req, k);
        if (rc < 0) {
            aigw_req_add_header(req, "Retry-After", "1");
            return aigw_req_fail(req, 503, "service_unavailable", "key data is unavailable, retry shortly");
        }
        if (rc > 0)
            return key_refused(req, k->id, "API key revoked");
    }
    memcpy(req->claims.tenant, k->tenant_id, sizeof(k->tenant_id));
    snprintf(req->claims.sub, sizeof(req->claims.sub), "api_key:%s", k->id);
    req->api_key = k;
    req->authenticated = true;
    return AIGW_OK;
}

enum aigw_rc
aigw_stage_authenticate(struct aigw_req *req)
{
    const char *hdr = aigw_req_header(req, "Authorization");
    const char *xkey = aigw_req_header(req, "X-API-Key");
    const char *tok;

    /* one credential header, sent once: libmicrohttpd reads the first of
     * several, a proxy in front or a log may read another */
    if ((xkey != NULL || hdr != NULL) &&
        aigw_req_header_count(req, "Authorization", "X-API-Key") > 1)
        return aigw_req_fail(req, 401, "unauthenticated", "send one credential: X-API-Key or Authorization, once");
    if (xkey != NULL)
        return authenticate_key(req, xkey);
    if (hdr == NULL || *hdr == '\0')
        return aigw_req_fail(req, 401, "unauthenticated", "missing credentials");
    if (!aigw_has_prefix_ci(hdr, "Bearer "))
        return aigw_req_fail(req, 401, "unauthenticated", "use the Bearer authorization scheme");
    tok = hdr + 7;
    while (*tok == ' ')
        tok++;
    if (aigw_apikey_has_prefix(tok))
        return authenticate_key(req, tok);
    return authenticate_jwt(req, tok);
}
