/* cache.c - answers cached per tenant under "aigw:{t}:c:<generation>:<sha256>" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/jsonw.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/query.h"
#include "aigw/redis.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

/* Entry format (parsed without a JSON parser on the hit path):
 * "v3\n<model>\n<prompt_tokens> <completion_tokens> <finish_reason or ->\n<answer as a JSON string>";
 * "v2" entries (no finish_reason) are still read until they expire. */
enum aigw_rc
aigw_stage_cache(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    char *model, *counts, *answer, *end;
    bool v3;

    if (q->cached == NULL)
        return AIGW_OK;
    v3 = strncmp(q->cached, "v3\n", 3) == 0;
    if (!v3 && strncmp(q->cached, "v2\n", 3) != 0)
        goto unreadable;
    model = q->cached + 3;
    counts = strchr(model, '\n');
    if (counts == NULL)
        goto unreadable;
    *counts++ = '\0';
    answer = strchr(counts, '\n');
    if (answer == NULL)
        goto unreadable;
    *answer++ = '\0';
    q->prompt_tokens = strtol(counts, &end, 10);
    q->completion_tokens = strtol(end, &end, 10);
    if (v3) {
        if (*end != ' ' || end[1] == '\0')
            goto unreadable;
        q->finish_reason = strcmp(end + 1, "-") == 0 ? NULL : end + 1; /* points into q->cached */
        end += strlen(end);
    }
    if (*end != '\0' || answer[0] != '"' || strlen(answer) < 2 || answer[strlen(answer) - 1] != '"')
        goto unreadable;
    q->model = model;
    q->answer_json = answer;
    q->from_cache = true;
    aigw_metrics_cache_hit(req->srv->metrics);
    return req->q->respond(req);
unreadable:
    q->cached = NULL;
    aigw_log(LOG_WARNING, "cache: unreadable entry for tenant %s ignored", req->tenant->id);
    return AIGW_OK;
}

/* A finish_reason the entry can hold on its counts line: 1..32 of [a-z_]. */
static bool
token_word(const char *s)
{
    size_t n = s != NULL ? strspn(s, "abcdefghijklmnopqrstuvwxyz_") : 0;

    return n > 0 && n <= 32 && s[n] == '\0';
}

bool
aigw_cache_entry(struct aigw_req *req, struct aigw_cache_entry *e)
{
    struct aigw_query *q = req->q;
    char head[160];

    /* an empty answer (a thinking model that spent max_tokens on thinking,
     * say) is no answer to hand out again for cache_ttl_s */
    if (req->status != 200 || !q->billed || req->tenant->cache_ttl_s <= 0 || q->answer == NULL ||
        q->answer[0] == '\0' || q->no_store)
        return false;
    if (aigw_query_fresh_only(q))
        return false;
    if (q->model != NULL && strchr(q->model, '\n') != NULL)
        return false;
    e->key = aigw_pool_printf(req->pool, "aigw:{%s}:c:%s:%s", req->tenant->id, q->gen, q->cache_hex);
    aigw_fmt_int(e->ttl_s, req->tenant->cache_ttl_s);
    aigw_jsonw_init(&e->value, strlen(q->answer) + 160);
    snprintf(head, sizeof(head), "v3\n%s\n%ld %ld %s\n", q->model ? q->model : "", q->prompt_tokens,
             q->completion_tokens, token_word(q->finish_reason) ? q->finish_reason : "-");
    aigw_jsonw_append(&e->value, head, strlen(head));
    aigw_jsonw_str(&e->value, q->answer);
    return true;
}

void
aigw_cache_store(struct aigw_req *req, struct aigw_cache_entry *e)
{
    const char *argv[5] = {"SET", e->key, e->value.buf, "EX", e->ttl_s};
    size_t lens[5] = {3, strlen(e->key), e->value.len, 2, strlen(e->ttl_s)};
    redisContext *rc = aigw_redis_acquire(req->srv->redis);
    redisReply *r;

    if (rc == NULL)
        return;
    r = aigw_redis_cmd(rc, 5, argv, lens);
    if (r == NULL || r->type == REDIS_REPLY_ERROR)
        aigw_log(LOG_WARNING, "cache: store failed for request %s", req->request_id);
    freeReplyObject(r);
    aigw_redis_release(req->srv->redis, rc);
}
