/* router.c - the route table: method + path -> stage chain. const after start. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/http.h"
#include "aigw/stages.h"
#include "aigw/util.h"

#define CLINIC_GET(handler) {aigw_stage_authenticate, aigw_stage_tenant, handler, NULL}
/* a read that costs PostgreSQL work: counted in the per-minute admission */
#define CLINIC_GET_ADMITTED(handler) \
    {aigw_stage_authenticate, aigw_stage_tenant, aigw_stage_rate_only, aigw_stage_admit, handler, NULL}
#define CLINIC_POST(handler) \
    {aigw_stage_authenticate, aigw_stage_tenant, aigw_stage_json_body, handler, NULL}

#define TENANT_ADMIN_GET(handler) \
    {aigw_stage_authenticate, aigw_stage_tenant, aigw_stage_tenant_admin, handler, NULL}
#define PLATFORM_GET(handler) {aigw_stage_authenticate, aigw_stage_platform_admin, handler, NULL}
#define PLATFORM_WRITE(handler) \
    {aigw_stage_authenticate, aigw_stage_platform_admin, aigw_stage_json_body, handler, NULL}

#define QUERY_ROUTE(validate)                                                                        \
    {aigw_stage_authenticate, aigw_stage_tenant, aigw_stage_json_body, validate, aigw_stage_authorize,  \
     aigw_stage_admit,        aigw_stage_idempotency, aigw_stage_cache, aigw_stage_singleflight,         \
     aigw_stage_quota,        aigw_stage_upstream, aigw_api_query, NULL}

#define CHAT_ROUTE                                                                                   \
    {aigw_stage_authenticate, aigw_stage_tenant, aigw_stage_json_body, aigw_stage_validate_chat,     \
     aigw_stage_admit,        aigw_stage_cache,  aigw_stage_singleflight, aigw_stage_quota,           \
     aigw_stage_upstream,     aigw_api_chat,     NULL}

/* .scope is the API key scope a route takes; none = JWT only
 * (administration: API keys can never manage keys or tenants). */
static const struct aigw_route routes[] = {
    {.method = "POST", .path = "/api/ai/query", .stages = QUERY_ROUTE(aigw_stage_validate_query),
     .finish = aigw_query_finish, .after = aigw_query_after, .ai = true, .scope = "query"},
    {.method = "POST", .path = "/api/ai/recommendation", .stages = QUERY_ROUTE(aigw_stage_validate_recommendation),
     .finish = aigw_query_finish, .after = aigw_query_after, .ai = true, .scope = "query"},
    {.method = "POST", .path = "/v1/chat/completions", .stages = CHAT_ROUTE, .finish = aigw_query_finish, .after = aigw_query_after, .ai = true,
     .openai = true, .scope = "chat"},
    {.method = "GET", .path = "/v1/models", .stages = {aigw_stage_authenticate, aigw_stage_tenant, aigw_require_api_access,
                                                       aigw_api_models, NULL},
     .openai = true, .scope = "chat"},
    {.method = "GET", .path = "/healthz", .stages = {aigw_api_healthz, NULL}, .ops = true},
    {.method = "GET", .path = "/readyz", .stages = {aigw_api_readyz, NULL}, .ops = true},
    {.method = "GET", .path = "/metrics", .stages = {aigw_api_metrics, NULL}, .ops = true},
    {.method = "GET", .path = "/api/ai/limits", .stages = CLINIC_GET(aigw_api_limits), .scope = "query"},
    {.method = "GET", .path = "/api/ai/usage", .stages = CLINIC_GET_ADMITTED(aigw_api_usage), .scope = "query"},
    {.method = "POST", .path = "/api/ai/cache/invalidate", .stages = CLINIC_POST(aigw_api_cache_invalidate)},
    {.method = "POST", .path = "/api/v1/api-keys", .stages = CLINIC_POST(aigw_api_keys_create)},
    {.method = "GET", .path = "/api/v1/api-keys", .stages = CLINIC_GET(aigw_api_keys_list)},
    {.method = "DELETE", .path = "/api/v1/api-keys/{}", .stages = CLINIC_GET(aigw_api_keys_revoke)},
    /* administration: JWT only */
    {.method = "GET", .path = "/api/v1/audit-logs", .stages = TENANT_ADMIN_GET(aigw_api_audit_logs)},
    {.method = "POST", .path = "/api/v1/tenants", .stages = PLATFORM_WRITE(aigw_api_tenant_create)},
    {.method = "GET", .path = "/api/v1/tenants", .stages = PLATFORM_GET(aigw_api_tenant_list)},
    {.method = "GET", .path = "/api/v1/tenants/{}", .stages = PLATFORM_GET(aigw_api_tenant_get)},
    {.method = "PUT", .path = "/api/v1/tenants/{}", .stages = PLATFORM_WRITE(aigw_api_tenant_update)},
    {.method = "POST", .path = "/api/v1/tenants/{}/upgrade", .stages = PLATFORM_WRITE(aigw_api_tenant_upgrade)},
    {.method = "GET", .path = "/api/v1/tenants/{}/usage", .stages = PLATFORM_GET(aigw_api_tenant_usage)},
    {.method = "GET", .path = "/api/v1/plans", .stages = PLATFORM_GET(aigw_api_plans)},
};

/* Match path against pattern segment by segment; "{}" captures one segment. */
static int
path_match(struct aigw_pool *pool, const char *pattern, const char *path, const char **params)
{
    int np = 0;

    while (*pattern && *path) {
        if (pattern[0] == '{' && pattern[1] == '}') {
            size_t n = strcspn(path, "/");

            if (n == 0 || np == AIGW_MAX_PARAMS)
                return 0;
            if (params != NULL) {
                char *seg = aigw_pool_strndup(pool, path, n);

                /* UUIDs are case-insensitive; lower case is the form
                 * PostgreSQL prints, and the one every Redis key, cache
                 * entry and audit row is built from */
                if (aigw_is_uuid(seg, n))
                    for (char *c = seg; *c != '\0'; c++)
                        *c = (char)tolower((unsigned char)*c);
                params[np] = seg;
            }
            np++;
            path += n;
            pattern += 2;
        } else if (*pattern++ != *path++) {
            return 0;
        }
    }
    return *pattern == '\0' && *path == '\0';
}

const struct aigw_route *
aigw_router_match(struct aigw_pool *pool, const char *method, const char *path, const char **params,
                  int *status, char *allow, size_t allow_cap)
{
    size_t off = 0;
    bool path_known = false;

    if (strcmp(method, "HEAD") == 0)
        method = "GET"; /* MHD sends no body for HEAD */

    allow[0] = '\0';
    for (size_t i = 0; i < sizeof(routes) / sizeof(routes[0]); i++) {
        if (!path_match(pool, routes[i].path, path, NULL))
            continue;
        if (strcmp(routes[i].method, method) == 0) {
            path_match(pool, routes[i].path, path, params);
            return &routes[i];
        }
        path_known = true;
        /* a GET route serves HEAD too (above): RFC 9110 wants every
         * method the resource supports in a 405's Allow */
        if (off < allow_cap)
            off += (size_t)snprintf(allow + off, allow_cap - off, "%s%s%s", off ? ", " : "", routes[i].method,
                                    strcmp(routes[i].method, "GET") == 0 ? ", HEAD" : "");
    }
    *status = path_known ? 405 : 404;
    return NULL;
}

bool
aigw_router_openai_path(const char *path)
{
    /* the SDKs send every call to <baseURL>/<resource>: a method or a
     * resource aigw lacks there must still raise their typed errors */
    return strncmp(path, "/v1/", 4) == 0 || strcmp(path, "/v1") == 0;
}
