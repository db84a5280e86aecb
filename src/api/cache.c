/* cache.c - POST /api/ai/cache/invalidate: one INCR of the tenant's cache generation */
#include <string.h>

#include "aigw/api.h"
#include "aigw/log.h"
#include "aigw/redis.h"
#include "aigw/tenant.h"

enum aigw_rc
aigw_api_cache_invalidate(struct aigw_req *req)
{
    const char *role = req->claims.role;
    char key[96];
    const char *argv[2] = {"INCR", key};
    size_t lens[2];
    redisContext *rc;
    redisReply *r;
    long long gen;

    if (strcmp(role, "admin") != 0 && strcmp(role, "manager") != 0)
        return aigw_req_fail(req, 403, "forbidden", "only a tenant admin or manager may invalidate the cache");
    snprintf(key, sizeof(key), "aigw:{%s}:gen", req->tenant->id);
    lens[0] = 4;
    lens[1] = strlen(key);
    rc = aigw_redis_acquire(req->srv->redis);
    if (rc == NULL)
        goto unavailable;
    r = aigw_redis_cmd(rc, 2, argv, lens);
    aigw_redis_release(req->srv->redis, rc);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        freeReplyObject(r);
        goto unavailable;
    }
    gen = r->integer;
    freeReplyObject(r);
    aigw_log_fields(LOG_NOTICE, "cache invalidated", "REQUEST_ID", req->request_id, "TENANT_ID",
                    req->tenant->id, NULL);
    return aigw_req_json(req, 200, json_pack("{s:b, s:I}", "invalidated", 1, "generation", (json_int_t)gen));
unavailable:
    aigw_req_add_header(req, "Retry-After", "1");
    return aigw_req_fail(req, 503, "service_unavailable", "the cache store is unavailable, retry shortly");
}
