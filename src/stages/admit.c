/* admit.c - per-tenant sliding-window rate limit, cache generation and cache
 * lookup in ONE Redis round trip (a Lua script: increment-check-answer is
 * atomic, so concurrent requests and instances can never overshoot). The
 * script goes out on the pipe (redis.h) and the request is suspended until
 * it answers, so the HTTP worker serves other connections meanwhile. */
#include <stdio.h>
#include <string.h>

#include "aigw/apikey.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/query.h"
#include "aigw/quota.h"
#include "aigw/util.h"
#include "aigw/redis.h"
#include "aigw/singleflight.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/usage.h"

/* Sliding window of one-second buckets: a hash per window with one field per
 * second that admitted something ("<unix second>" -> count), plus "n" (the
 * sum of the live buckets) and "lo" (the oldest live bucket). Time is Redis
 * TIME, so every instance shares one clock. A bucket stays live while it is
 * within the last window/1000 + 1 seconds, so an admission counts for
 * between 60 and 61 s: never more than `limit` admissions in ANY 60 s
 * window (no boundary double burst as with fixed windows), at O(61) memory
 * and O(1) work per request whatever the limit. (The sorted-set log this
 * replaces held one member per admission: 600k members and ~40 us of Redis
 * CPU per request for a tenant doing 10k req/s.) Expiring walks at most
 * window/1000 + 1 buckets, once per second per window. An admission reads
 * n, lo and the current bucket in one HMGET and writes all three in one
 * HSET; the key's TTL is set when a second's bucket is created (window + 1 s
 * from then is when that bucket stops counting), so a cache hit makes five
 * Redis calls (TIME, MGET, HMGET, HSET, GET) where it made eight.
 * A request authenticated by an API key with its own limit is admitted only
 * when both the tenant's window and the key's window have room, and counts
 * in both.
 * KEYS[1] tenant window, KEYS[2] generation, KEYS[3] monthly quota
 * counter; API keys only: KEYS[4] key window, KEYS[5] key revocation
 * marker. ARGV[1] tenant limit, ARGV[2] window ms (a multiple of 1000),
 * ARGV[3] request id (the single-flight lock's owner), ARGV[4] cache key
 * prefix, ARGV[5] cache hash ('' = skip lookup), ARGV[6] key limit (0 =
 * none).
 * Leading a miss in the same round trip (ARGV[7] '' = no): when admitted
 * and the cache has no answer, 's' takes the single-flight lock (or the
 * result a leader just published) and, as leader, reserves one query of
 * the monthly quota; 'q' (nothing to coalesce) only reserves. A leader
 * whose reservation is refused keeps the lock and publishes its 429 like any
 * failed leader, so its waiters get the same answer. ARGV[8] single-flight key prefix,
 * ARGV[9] lock ttl ms, ARGV[10] '1' to take a published result, ARGV[11]
 * cache hash (also under no-cache), ARGV[12] monthly limit (-1 none).
 * ARGV[14] the request's mark (see AIGW_MARK_LUA), noting the lock taken
 * and the query reserved.
 * ARGV[13] deadline ('' = none): Redis-clock ms after which the script
 * does nothing and returns 'expired'. aigw gives up on its reply at
 * redis.timeout_ms (503), but Redis may still run it later (it was stuck
 * behind a slow command, or paused): without the deadline that late run
 * would count the request in the window, reserve a query of quota that is
 * never used or refunded, and take a single-flight lock nobody leads. The
 * deadline leaves a quarter of the timeout for the reply to come back (see
 * aigw_redis_pipe_deadline), and the pipe never writes a call to a
 * connection that has stopped answering.
 * -> {allowed, remaining, reset_s, generation, cached or false, quota used
 *     or -1, limit, key policy (1 when the numbers are the key's), revoked,
 *     single-flight (-1 not tried, 0 someone else leads, 1 lock taken,
 *     2 published result), that result or false, quota (-1 not tried,
 *     -2 counter missing, 0 exhausted, 1 reserved), quota used after}
 * The single-flight and quota stages then use these answers instead of
 * asking Redis again: a miss costs one round trip before the upstream call
 * instead of three.
 * The numbers describe the tighter policy: the one that refused, else the
 * one with less left. Remaining is never below 0, and reset is when the
 * window has room again: when its oldest bucket leaves, or, after a limit
 * was lowered below what the window holds, when enough buckets have left
 * (walked only then: before, a client told to retry when the oldest bucket
 * left was refused again, and read a negative count). The cache key is built here because it embeds the
 * generation; it shares the tenant's hash tag, so it lives on the same
 * cluster slot.
 * Numbers: Redis's Lua 5.1 turns a string into a number with strtod
 * (tonumber even twice) and a number argument of redis.call into text with
 * %.17g; on the cache-hit path that was an eighth of what Redis executes
 * for the script. So the script converts with `+ 0`, uses TIME's seconds
 * string as the bucket's field name, formats counts with %d and writes the
 * window's `lo` only when it moved (bench S5 counts Redis's instructions). */
static struct aigw_redis_script admit_script = {
    .source =
        AIGW_SF_ACQUIRE_LUA AIGW_QUOTA_RESERVE_LUA AIGW_MARK_LUA
        "local t = redis.call('TIME')\n"
        "local secs = t[1]\n"
        "local sec = secs + 0\n"
        "local now = sec * 1000 + math.floor(t[2] / 1000)\n"
        "local deadline = ARGV[13]\n"
        "if deadline and deadline ~= '' and now > deadline + 0 then return 'expired' end\n"
        "local limit, window = ARGV[1] + 0, ARGV[2] + 0\n"
        "local klimit = (ARGV[6] or 0) + 0\n"
        "local gq = redis.call('MGET', KEYS[2], KEYS[3])\n"
        "local gen = gq[1] or '0'\n"
        "local used = (gq[2] or -1) + 0\n"
        "if KEYS[5] and redis.call('EXISTS', KEYS[5]) == 1 then\n"
        "  return {0, 0, 0, gen, false, used, limit, 0, 1, -1, false, -1, used}\n"
        "end\n"
        "local span = math.floor(window / 1000)\n"
        "local lo, cur, lo_kept = {}, {}, {}\n"
        "local function count(key)\n"
        "  local v = redis.call('HMGET', key, 'n', 'lo', secs)\n"
        "  local n, l = (v[1] or 0) + 0, (v[2] or 0) + 0\n"
        "  local first = sec - span\n"
        "  cur[key] = (v[3] or 0) + 0\n"
        "  if n <= 0 or first - l > span then\n"
        "    if v[1] then redis.call('DEL', key) end\n"
        "    lo[key], cur[key] = sec, 0\n"
        "    return 0\n"
        "  end\n"
        "  if l < first then\n"
        "    while l < first do\n"
        "      local c = redis.call('HGET', key, l)\n"
        "      if c then n = n - tonumber(c) redis.call('HDEL', key, l) end\n"
        "      l = l + 1\n"
        "    end\n"
        "    while n > 0 and l < sec and redis.call('HEXISTS', key, l) == 0 do l = l + 1 end\n"
        "    if n > 0 then redis.call('HSET', key, 'n', n, 'lo', l) else redis.call('DEL', key) l, cur[key] = sec, 0 end\n"
        "  end\n"
        "  lo[key] = l\n"
        "  lo_kept[key] = v[2] and l == v[2] + 0\n"
        "  return n\n"
        "end\n"
        "local function admit(key, n)\n"
        "  local c = cur[key]\n"
        "  local bucket, total = string.format('%d', c + 1), string.format('%d', n + 1)\n"
        "  if lo_kept[key] then redis.call('HSET', key, secs, bucket, 'n', total)\n"
        "  else redis.call('HSET', key, secs, bucket, 'n', total, 'lo', string.format('%d', lo[key])) end\n"
        "  if c == 0 then redis.call('PEXPIRE', key, window + 1000) end\n"
        "end\n"
        "local function reset(key, n, lim)\n"
        "  if n <= 0 then return 0 end\n"
        "  local l, drop, gone = lo[key], n - lim + 1, 0\n"
        "  if drop > 1 then\n"
        "    while l < sec do\n"
        "      gone = gone + (redis.call('HGET', key, l) or 0)\n"
        "      if gone >= drop then break end\n"
        "      l = l + 1\n"
        "    end\n"
        "  end\n"
        "  return math.ceil(((l + span + 1) * 1000 - now) / 1000)\n"
        "end\n"
        "local n = count(KEYS[1])\n"
        "local kn = 0\n"
        "if klimit > 0 then kn = count(KEYS[4]) end\n"
        "local allowed = 0\n"
        "if n < limit and (klimit == 0 or kn < klimit) then\n"
        "  admit(KEYS[1], n)\n"
        "  n = n + 1\n"
        "  if klimit > 0 then admit(KEYS[4], kn) kn = kn + 1 end\n"
        "  allowed = 1\n"
        "end\n"
        "local bykey = false\n"
        "if klimit > 0 then\n"
        "  if allowed == 1 then bykey = klimit - kn <= limit - n\n"
        "  elseif kn >= klimit and n >= limit then bykey = reset(KEYS[4], kn, klimit) >= reset(KEYS[1], n, limit)\n"
        "  else bykey = kn >= klimit end\n"
        "end\n"
        "local cached = false\n"
        "if allowed == 1 and ARGV[5] ~= '' then\n"
        "  cached = redis.call('GET', ARGV[4] .. gen .. ':' .. ARGV[5])\n"
        "end\n"
        "local sf, sfres, qst, qused = -1, false, -1, used\n"
        "local mode = ARGV[7] or ''\n"
        "if allowed == 1 and not cached and mode ~= '' then\n"
        "  local lock\n"
        "  if mode == 's' then\n"
        "    lock = ARGV[8] .. gen .. ':' .. ARGV[11]\n"
        "    sf, sfres = sf_acquire(lock, lock .. ':r', ARGV[3], ARGV[9], ARGV[10] == '1')\n"
        "  end\n"
        "  if mode == 'q' or sf == 1 then qst, qused = quota_reserve(KEYS[3], tonumber(ARGV[12]), gq[2]) end\n"
        "  if sf == 1 and qst == 1 then mark(ARGV[14], 'l', lock, 'q', KEYS[3])\n"
        "  elseif sf == 1 then mark(ARGV[14], 'l', lock)\n"
        "  elseif qst == 1 then mark(ARGV[14], 'q', KEYS[3]) end\n"
        "end\n"
        "if bykey then return {allowed, math.max(klimit - kn, 0), reset(KEYS[4], kn, klimit), gen, cached, used, klimit, 1, 0, sf, sfres, qst, qused} end\n"
        "return {allowed, math.max(limit - n, 0), reset(KEYS[1], n, limit), gen, cached, used, limit, 0, 0, sf, sfres, qst, qused}\n",
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

/* The script's keys and arguments of one request (buffers live here). */
struct admit_args {
    char rl_key[96], gen_key[96], q_key[96], prefix[96], limit[24], key_rl[160], key_revoked[160], key_limit[24];
    char sf_prefix[96], sf_ttl[24], q_limit[24], deadline[24], mark[160];
    const char *keys[5];
    const char *args[14];
    int nkeys, nargs;
};

/* Lead a miss from the admission script? Only on routes whose chain goes
 * on to the single-flight and quota stages, and not with an
 * Idempotency-Key: its record must be checked before anything is reserved. */
static char
lead_mode(struct aigw_req *req)
{
    bool sf = false, quota = false;

    for (const aigw_stage_fn *st = req->route->stages; *st != NULL; st++) {
        sf = sf || *st == aigw_stage_singleflight;
        quota = quota || *st == aigw_stage_quota;
    }
    if (!quota || aigw_req_header(req, "Idempotency-Key") != NULL)
        return '\0';
    return sf && !req->q->no_store ? 's' : 'q';
}

static void
build_args(struct aigw_req *req, struct admit_args *a)
{
    const struct aigw_tenant *t = req->tenant;
    const struct aigw_api_key *k = req->api_key;
    struct aigw_query *q = req->q;

    aigw_concat(a->rl_key, sizeof(a->rl_key), "aigw:{", t->id, "}:rlb", NULL);
    aigw_concat(a->gen_key, sizeof(a->gen_key), "aigw:{", t->id, "}:gen", NULL);
    aigw_concat(a->prefix, sizeof(a->prefix), "aigw:{", t->id, "}:c:", NULL);
    aigw_fmt_int(a->limit, t->requests_per_minute);
    aigw_quota_key(t->id, req->start_wall_us / 1000000, a->q_key, sizeof(a->q_key));
    a->keys[0] = a->rl_key;
    a->keys[1] = a->gen_key;
    a->keys[2] = a->q_key;
    a->nkeys = 3;
    a->args[0] = a->limit;
    a->args[1] = "60000";
    a->args[2] = req->usage_id;
    a->args[3] = a->prefix;
    a->args[4] = q->no_cache ? "" : q->cache_hex;
    a->args[5] = "0";
    if (k != NULL) { /* the key's record names the same tenant (hash slot) */
        aigw_apikey_window_key(t->id, k->id, a->key_rl, sizeof(a->key_rl));
        aigw_apikey_revoked_key(t->id, k->id, a->key_revoked, sizeof(a->key_revoked));
        aigw_fmt_int(a->key_limit, k->requests_per_minute);
        a->keys[3] = a->key_rl;
        a->keys[4] = a->key_revoked;
        a->args[5] = a->key_limit;
        a->nkeys = 5;
    }
    for (int i = 6; i < 12; i++)
        a->args[i] = ""; /* ARGV[7] '' = not leading a miss */
    aigw_redis_deadline_arg(req->srv->pipe, a->deadline);
    a->args[12] = a->deadline;
    a->args[13] = "";
    a->nargs = 14;
    switch (lead_mode(req)) {
    case 's':
        a->args[6] = "s";
        break;
    case 'q':
        a->args[6] = "q";
        break;
    default:
        return;
    }
    aigw_concat(a->sf_prefix, sizeof(a->sf_prefix), "aigw:{", t->id, "}:sf:", NULL);
    aigw_fmt_int(a->sf_ttl, aigw_singleflight_lock_ms(req));
    aigw_fmt_int(a->q_limit, t->monthly_limit);
    a->args[7] = a->sf_prefix;
    a->args[8] = a->sf_ttl;
    a->args[9] = q->no_cache ? "0" : "1";
    a->args[10] = q->cache_hex;
    a->args[11] = a->q_limit;
    aigw_quota_mark_key(t->id, req->usage_id, a->mark, sizeof(a->mark));
    a->args[13] = a->mark;
}

static bool
reply_ok(const redisReply *r)
{
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 13)
        return false;
    for (size_t i = 0; i < 13; i++)
        if (i != 3 && i != 4 && i != 10 && r->element[i]->type != REDIS_REPLY_INTEGER)
            return false;
    return true;
}

static enum aigw_rc
refuse(struct aigw_req *req, bool by_key)
{
    struct aigw_query *q = req->q;
    long retry = q->rl_reset_s > 0 ? q->rl_reset_s : 1;

    aigw_req_add_header(req, "Retry-After", aigw_pool_printf(req->pool, "%ld", retry));
    aigw_metrics_rate_limited(req->srv->metrics, req->tenant->tier);
    return aigw_req_fail_extra(req, 429, "rate_limited",
                               json_pack("{s:I, s:I, s:s}", "limit", (json_int_t)q->rl_limit, "retry_after",
                                         (json_int_t)retry, "policy", by_key ? "api_key" : "tenant"),
                               "%s of %ld requests per minute reached",
                               by_key ? "the API key's rate limit" : "rate limit", q->rl_limit);
}

/* The pipe's thread: the script answered (or Redis is unavailable). */
static void
on_admit_reply(redisReply *r, void *ud)
{
    struct aigw_req *req = ud;

    req->q->admit_reply = r;
    atomic_store(&req->q->admit_done, 1);
    aigw_req_resume(req);
}

/* Pool cleanup: a reply that came back after the request was abandoned. */
static void
drop_admit_reply(void *arg)
{
    struct aigw_query *q = arg;

    freeReplyObject(q->admit_reply);
    q->admit_reply = NULL;
}

/* The script's answer (NULL: Redis unavailable) into the request. */
static enum aigw_rc
admit_answer(struct aigw_req *req, redisReply *r)
{
    struct aigw_query *q = req->q;
    bool by_key;

    if (r != NULL && r->type == REDIS_REPLY_STRING && strcmp(r->str, "expired") == 0) {
        /* it started after its deadline (and did nothing), yet its reply
         * came in time: Redis stalled for more than 3/4 of the timeout (or
         * its clock jumped since the pipe last sampled it) */
        aigw_redis_log_error(req->srv->redis, "admit script", "started after its deadline (Redis stalled)");
        freeReplyObject(r);
        goto unavailable;
    }
    if (!reply_ok(r)) {
        if (r != NULL && r->type == REDIS_REPLY_ERROR)
            aigw_log(LOG_ERR, "redis: admit script: %s", r->str);
        freeReplyObject(r);
        goto unavailable;
    }
    if (r->element[8]->integer == 1) { /* revoked a moment ago: NOTIFY may not be here yet */
        freeReplyObject(r);
        req->authenticated = false; /* no usage row, no last_used_at */
        return aigw_req_fail(req, 401, "unauthenticated", "API key revoked");
    }
    q->admitted = r->element[0]->integer == 1;
    q->rl_remaining = (long)r->element[1]->integer;
    q->rl_reset_s = (long)r->element[2]->integer;
    if (r->element[3]->type == REDIS_REPLY_STRING)
        snprintf(q->gen, sizeof(q->gen), "%s", r->element[3]->str);
    if (r->element[4]->type == REDIS_REPLY_STRING)
        q->cached = aigw_pool_strndup(req->pool, r->element[4]->str, r->element[4]->len);
    q->quota_used = r->element[5]->type == REDIS_REPLY_INTEGER ? (long)r->element[5]->integer : -1;
    q->rl_limit = (long)r->element[6]->integer;
    by_key = r->element[7]->integer == 1;
    q->sf_pre = (int)r->element[9]->integer;
    if (q->sf_pre == 2 && r->element[10]->type == REDIS_REPLY_STRING)
        q->sf_pre_result = aigw_pool_strndup(req->pool, r->element[10]->str, r->element[10]->len);
    else if (q->sf_pre == 2)
        q->sf_pre = -1;
    q->quota_pre = (int)r->element[11]->integer;
    if (q->quota_pre >= 0) /* reserved (the count after) or exhausted: the quota stage, which the
                            * route runs next (lead_mode), takes it from here */
        q->quota_used = (long)r->element[12]->integer;
    freeReplyObject(r);
    add_ratelimit_headers(req);
    if (!q->admitted)
        return refuse(req, by_key);
    return AIGW_OK;
unavailable:
    q->redis_lost = true; /* the script may have run all the same: its mark says */
    aigw_req_add_header(req, "Retry-After", "1");
    return aigw_req_fail(req, 503, "service_unavailable", "admission control is unavailable, retry shortly");
}

/* Redis idle: one blocking round trip here is the quickest. Else the
 * script goes on the pipe and the request is suspended until it answers, so
 * this worker serves other connections meanwhile and Redis gets the scripts
 * of many requests in one read. */
static enum aigw_rc
admit_send(struct aigw_req *req)
{
    struct aigw_redis_pipe *pipe = req->srv->pipe;
    struct admit_args a;
    redisReply *r;

    build_args(req, &a);
    req->q->admit_sent = true;
    if (aigw_redis_pipe_try_direct(pipe, &admit_script, a.nkeys, a.keys, a.nargs, a.args, &r))
        return admit_answer(req, r);
    aigw_pool_cleanup(req->pool, drop_admit_reply, req->q);
    aigw_req_suspend(req);
    aigw_redis_pipe_eval(pipe, &admit_script, a.nkeys, a.keys, a.nargs, a.args, on_admit_reply, req);
    return AIGW_AGAIN;
}

enum aigw_rc
aigw_stage_admit(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    redisReply *r;

    if (!q->admit_sent) {
        /* the usage spool refuses writes and its memory is full: an answer
         * now could not be billed; refused before any quota or model (a
         * route that bills nothing, such as a usage read, goes on) */
        if (!aigw_usage_accepting(req->srv->usage) && req->route->ai) {
            aigw_req_add_header(req, "Retry-After", "1");
            return aigw_req_fail(req, 503, "service_unavailable", "usage recording is unavailable, retry shortly");
        }
        return admit_send(req);
    }
    if (!atomic_load(&q->admit_done))
        return aigw_req_fail(req, 500, "internal", "resumed before admission answered");
    r = q->admit_reply;
    q->admit_reply = NULL;
    return admit_answer(req, r);
}

enum aigw_rc
aigw_stage_rate_only(struct aigw_req *req)
{
    struct aigw_query *q = aigw_query_new(req);

    /* no question: no cache lookup, nothing to coalesce or store; and
     * the chain has no quota stage, so admission reserves none */
    q->no_cache = q->no_store = true;
    q->respond = NULL;
    return AIGW_OK;
}
