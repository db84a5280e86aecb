/* cache.c - answers cached per tenant under "aigw:{t}:c:<generation>:<sha256>" */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/log.h"
#include "aigw/query.h"
#include "aigw/redis.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"

static void
decref(void *p)
{
    json_decref(p);
}

enum aigw_rc
aigw_stage_cache(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    json_t *root;

    if (q->cached == NULL)
        return AIGW_OK;
    root = json_loads(q->cached, 0, NULL);
    if (root == NULL || !json_is_string(json_object_get(root, "answer"))) {
        json_decref(root);
        aigw_log(LOG_WARNING, "cache: unreadable entry for tenant %s ignored", req->tenant->id);
        return AIGW_OK;
    }
    aigw_pool_cleanup(req->pool, decref, root);
    q->from_cache = true;
    return aigw_query_from_json(req, root);
}

void
aigw_cache_store(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    json_t *entry = json_pack("{s:s, s:s, s:{s:I, s:I}}", "answer", q->answer, "model", q->model ? q->model : "",
                              "usage", "prompt_tokens", (json_int_t)q->prompt_tokens, "completion_tokens",
                              (json_int_t)q->completion_tokens);
    char *text = entry ? json_dumps(entry, JSON_COMPACT) : NULL;
    redisContext *rc;
    redisReply *r;

    json_decref(entry);
    if (text == NULL || req->tenant->cache_ttl_s <= 0) {
        free(text);
        return;
    }
    rc = aigw_redis_acquire(req->srv->redis);
    if (rc != NULL) {
        r = redisCommand(rc, "SET aigw:{%s}:c:%s:%s %s EX %d", req->tenant->id, q->gen, q->cache_hex, text,
                         req->tenant->cache_ttl_s);
        if (r == NULL || r->type == REDIS_REPLY_ERROR)
            aigw_log(LOG_WARNING, "cache: store failed for request %s", req->request_id);
        freeReplyObject(r);
        aigw_redis_release(req->srv->redis, rc);
    }
    free(text);
}
