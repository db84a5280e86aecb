/* admit.c - per-tenant sliding-window rate limit, cache generation and cache
 * lookup in ONE Redis round trip (a Lua script: increment-check-answer is
 * atomic, so concurrent requests and instances can never overshoot). */
#include <stdio.h>
#include <string.h>

#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/query.h"
#include "aigw/quota.h"
#include "aigw/util.h"
#include "aigw/redis.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"

/* Sliding window log: a sorted set of admitted request ids scored by
 * admission time (Redis TIME, so every instance shares one clock). Exact:
 * never more than `limit` admissions in any 60 s window, so there is no
 * boundary double burst as with fixed windows.
 * KEYS[1] window zset, KEYS[2] generation, KEYS[3] monthly quota counter
 * ARGV[1] limit, ARGV[2] window ms, ARGV[3] member, ARGV[4] cache key prefix,
 * ARGV[5] cache hash ('' = skip lookup)
 * -> {allowed, remaining, reset_s, generation, cached or false, quota used or -1}
 * The cache key is built here because it embeds the generation; it shares
 * the tenant's hash tag, so it lives on the same cluster slot. */
static struct aigw_redis_script admit_script = {
    .source =
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local limit, window = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
        "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)\n"
        "local count = redis.call('ZCARD', KEYS[1])\n"
        "local allowed = 0\n"
        "if count < limit then\n"
        "  redis.call('ZADD', KEYS[1], now, ARGV[3])\n"
        "  redis.call('PEXPIRE', KEYS[1], window)\n"
        "  count = count + 1\n"
        "  allowed = 1\n"
        "end\n"
        "local reset = 0\n"
        "local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')\n"
        "if oldest[2] then reset = math.ceil((tonumber(oldest[2]) + window - now) / 1000) end\n"
        "local gen = redis.call('GET', KEYS[2]) or '0'\n"
        "local cached = false\n"
        "if allowed == 1 and ARGV[5] ~= '' then\n"
        "  cached = redis.call('GET', ARGV[4] .. gen .. ':' .. ARGV[5])\n"
        "end\n"
        "local used = tonumber(redis.call('GET', KEYS[3]) or '-1')\n"
        "return {allowed, limit - count, reset, gen, cached, used}\n",
};

void
aigw_admit_init(void)
{
    aigw_redis_script_init(&admit_script);
}

static void
add_ratelimit_headers(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    struct aigw_query *q = req->q;

    if (t->monthly_limit >= 0)
        aigw_req_add_header(req, "RateLimit-Policy",
                            aigw_pool_printf(req->pool, "\"minute\";q=%ld;w=60, \"month\";q=%ld", q->rl_limit,
                                             t->monthly_limit));
    else
        aigw_req_add_header(req, "RateLimit-Policy", aigw_pool_printf(req->pool, "\"minute\";q=%ld;w=60", q->rl_limit));
    aigw_req_add_header(req, "RateLimit",
                        aigw_pool_printf(req->pool, "\"minute\";r=%ld;t=%ld", q->rl_remaining, q->rl_reset_s));
}

enum aigw_rc
aigw_stage_admit(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    struct aigw_query *q = req->q;
    char rl_key[96], gen_key[96], q_key[96], prefix[96], limit[24];
    const char *keys[3] = {rl_key, gen_key, q_key};
    const char *args[5] = {limit, "60000", req->usage_id, prefix, q->no_cache ? "" : q->cache_hex};
    redisContext *rc;
    redisReply *r;

    snprintf(rl_key, sizeof(rl_key), "aigw:{%s}:rl", t->id);
    snprintf(gen_key, sizeof(gen_key), "aigw:{%s}:gen", t->id);
    snprintf(prefix, sizeof(prefix), "aigw:{%s}:c:", t->id);
    snprintf(limit, sizeof(limit), "%d", t->requests_per_minute);
    aigw_quota_key(t->id, aigw_wall_s(), q_key, sizeof(q_key));
    rc = aigw_redis_acquire(req->srv->redis);
    if (rc == NULL)
        goto unavailable;
    r = aigw_redis_eval(rc, &admit_script, 3, keys, 5, args);
    aigw_redis_release(req->srv->redis, rc);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 6 || r->element[0]->type != REDIS_REPLY_INTEGER) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            aigw_log(LOG_ERR, "redis: admit script: %s", r->str);
        freeReplyObject(r);
        goto unavailable;
    }
    q->admitted = r->element[0]->integer == 1;
    q->rl_limit = t->requests_per_minute;
    q->rl_remaining = (long)r->element[1]->integer;
    q->rl_reset_s = (long)r->element[2]->integer;
    if (r->element[3]->type == REDIS_REPLY_STRING)
        snprintf(q->gen, sizeof(q->gen), "%s", r->element[3]->str);
    if (r->element[4]->type == REDIS_REPLY_STRING)
        q->cached = aigw_pool_strndup(req->pool, r->element[4]->str, r->element[4]->len);
    q->quota_used = r->element[5]->type == REDIS_REPLY_INTEGER ? (long)r->element[5]->integer : -1;
    freeReplyObject(r);
    add_ratelimit_headers(req);
    if (!q->admitted) {
        long retry = q->rl_reset_s > 0 ? q->rl_reset_s : 1;

        aigw_req_add_header(req, "Retry-After", aigw_pool_printf(req->pool, "%ld", retry));
        aigw_metrics_rate_limited(req->srv->metrics, t->tier);
        return aigw_req_fail_extra(req, 429, "rate_limited",
                                   json_pack("{s:i, s:I}", "limit", t->requests_per_minute, "retry_after",
                                             (json_int_t)retry),
                                   "rate limit of %d requests per minute reached", t->requests_per_minute);
    }
    return AIGW_OK;
unavailable:
    aigw_req_add_header(req, "Retry-After", "1");
    return aigw_req_fail(req, 503, "service_unavailable", "admission control is unavailable, retry shortly");
}
