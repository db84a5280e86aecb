/* singleflight.c - the single-flight stage and its waiter poller thread */
#include "aigw/singleflight.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/api.h"
#include "aigw/apikey.h"
#include "aigw/http.h"
#include "aigw/snapshot.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/query.h"
#include "aigw/quota.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

enum { SF_WAITING, SF_RESULT, SF_RETRY, SF_TIMEOUT };

struct aigw_sf {
    struct aigw_redis_pool *redis;
    int poll_ms;
    pthread_t thread;
    pthread_mutex_t lock;      /* guards waiters, n, cap, stop */
    pthread_cond_t wake;
    struct aigw_req **waiters;
    size_t n, cap;
    bool stop;
    bool joined;               /* the poller thread has exited (aigw_sf_cancel; main thread only) */
};

/* KEYS[1] lock, KEYS[2] result; ARGV[1] owner, ARGV[2] lock ttl ms, ARGV[3]
 * '1' to take a just-published result ('0' for Cache-Control: no-cache),
 * ARGV[4] deadline (see AIGW_REDIS_PAST_LUA: a late run would take a lock
 * nobody leads), ARGV[5] the request's mark (see AIGW_MARK_LUA)
 * -> {2, result} a result is already there, {1} lock taken,
 * {0} someone else leads, 'expired' (did nothing) */
static struct aigw_redis_script acquire_script = {
    .source = AIGW_REDIS_PAST_LUA AIGW_SF_ACQUIRE_LUA AIGW_MARK_LUA
    "if past(ARGV[4]) then return 'expired' end\n"
    "local st, r = sf_acquire(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3] == '1')\n"
    "if st == 2 then return {2, r} end\n"
    "if st == 1 then mark(ARGV[5], 'l', KEYS[1]) end\n"
    "return {st}\n",
};

/* KEYS[1] lock, KEYS[2] result; ARGV[1] owner, ARGV[2] result ('' = none:
 * only release the lock), ARGV[3] result ttl ms. With the answer to cache
 * too, KEYS[3] its cache key, ARGV[4] the entry, ARGV[5] its TTL in s: the
 * cache store rides on the same round trip (it used to be a second one).
 * The result goes only to this request's own flight: a leader that answers
 * after its lock expired (a stream whose client read its end late, say)
 * has no waiters left (they saw the lock go and moved on), and a newer
 * flight may lead, whose waiters took this one's outcome for their own. */
static struct aigw_redis_script publish_script = {
    .source = "local mine = redis.call('GET', KEYS[1]) == ARGV[1]\n"
              "if mine and ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end\n"
              "if KEYS[3] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) end\n"
              "if mine then redis.call('DEL', KEYS[1]) end\n"
              "return 1\n",
};

/* The same, sent again by the outbox after Redis did not confirm it: only
 * while the lock is still this request's. Gone, it was either released by
 * the first run (whose reply was lost) or expired, and another flight may
 * lead now: the result and the entry of this one would land on that
 * flight's (its waiters would take them, an error too, for its own
 * outcome) -> 1 published, 0 the lock is not this request's. */
static struct aigw_redis_script republish_script = {
    .source = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
              "if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end\n"
              "if KEYS[3] then redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[5]) end\n"
              "redis.call('DEL', KEYS[1])\n"
              "return 1\n",
};

static void
resolve(struct aigw_req *req, int state, char *result)
{
    req->q->sf_result = result;
    atomic_store(&req->q->sf_state, state);
    aigw_req_resume(req);
}

/* One poll round: pipeline EXISTS lock + GET result for every waiter. The
 * lock is read first: the leader's publish script stores the result and drops
 * the lock in one step, so a lock seen gone means the result (if the flight
 * had one) is already there for the GET that follows. In the other order a
 * publish landing between the two read "no result, no lock" and sent the
 * waiter off to start a flight of its own. */
static void
poll_round(struct aigw_sf *sf, struct aigw_req **batch, size_t n)
{
    redisContext *rc = aigw_redis_acquire(sf->redis);
    int64_t now = aigw_now_ms();
    size_t i;

    for (i = 0; rc != NULL && i < n; i++) {
        redisAppendCommand(rc, "EXISTS %s", batch[i]->q->sf_lock_key);
        redisAppendCommand(rc, "GET %s", batch[i]->q->sf_result_key);
    }
    for (i = 0; i < n; i++) {
        redisReply *res = NULL, *lock = NULL;
        struct aigw_req *req = batch[i];

        if (rc != NULL && (redisGetReply(rc, (void **)&lock) != REDIS_OK || redisGetReply(rc, (void **)&res) != REDIS_OK)) {
            freeReplyObject(lock);
            freeReplyObject(res);
            res = lock = NULL;
        }
        if (res != NULL && res->type == REDIS_REPLY_STRING)
            resolve(req, SF_RESULT, aigw_xstrndup(res->str, res->len));
        else if (lock != NULL && lock->type == REDIS_REPLY_INTEGER && lock->integer == 0)
            resolve(req, SF_RETRY, NULL);
        else if (now >= req->q->sf_deadline_ms)
            resolve(req, SF_TIMEOUT, NULL);
        else
            batch[i] = NULL; /* still waiting */
        freeReplyObject(res);
        freeReplyObject(lock);
    }
    aigw_redis_release(sf->redis, rc);
}

static void *
run(void *arg)
{
    struct aigw_sf *sf = arg;
    struct aigw_req **batch = NULL;
    size_t cap = 0;

    pthread_mutex_lock(&sf->lock);
    while (!sf->stop) {
        struct timespec ts;
        size_t n = sf->n, keep = 0;

        if (n == 0) {
            pthread_cond_wait(&sf->wake, &sf->lock);
            continue;
        }
        if (n > cap)
            batch = aigw_xrealloc(batch, (cap = n) * sizeof(*batch));
        memcpy(batch, sf->waiters, n * sizeof(*batch));
        pthread_mutex_unlock(&sf->lock);
        poll_round(sf, batch, n);
        pthread_mutex_lock(&sf->lock);
        /* drop resolved waiters (batch[i] != NULL) keeping order and new arrivals */
        for (size_t i = 0; i < sf->n; i++) {
            bool resolved = i < n && batch[i] != NULL;

            if (!resolved)
                sf->waiters[keep++] = sf->waiters[i];
        }
        sf->n = keep;
        aigw_deadline_ms(&ts, sf->poll_ms);
        if (!sf->stop)
            pthread_cond_timedwait(&sf->wake, &sf->lock, &ts);
    }
    for (size_t i = 0; i < sf->n; i++)
        resolve(sf->waiters[i], SF_TIMEOUT, NULL);
    sf->n = 0;
    pthread_mutex_unlock(&sf->lock);
    free(batch);
    return NULL;
}

struct aigw_sf *
aigw_sf_start(struct aigw_redis_pool *redis, int poll_ms)
{
    struct aigw_sf *sf = aigw_xcalloc(1, sizeof(*sf));

    aigw_redis_script_init(&acquire_script);
    aigw_redis_script_init(&publish_script);
    aigw_redis_script_init(&republish_script);
    sf->redis = redis;
    sf->poll_ms = poll_ms;
    pthread_mutex_init(&sf->lock, NULL);
    pthread_cond_init(&sf->wake, NULL);
    if (pthread_create(&sf->thread, NULL, run, sf) != 0)
        abort();
    return sf;
}

void
aigw_sf_stop(struct aigw_sf *sf)
{
    if (sf == NULL)
        return;
    aigw_sf_cancel(sf);
    pthread_cond_destroy(&sf->wake);
    pthread_mutex_destroy(&sf->lock);
    free(sf->waiters);
    free(sf);
}

void
aigw_sf_cancel(struct aigw_sf *sf)
{
    if (sf == NULL)
        return;
    pthread_mutex_lock(&sf->lock);
    sf->stop = true;
    pthread_cond_signal(&sf->wake);
    pthread_mutex_unlock(&sf->lock);
    /* the poller resumes every waiter as it exits: wait for it, so that the
     * drain never stops the HTTP daemon with a waiter still suspended
     * (libmicrohttpd 0.9.75 aborts the process then) */
    if (!sf->joined) {
        pthread_join(sf->thread, NULL);
        sf->joined = true;
    }
}

void
aigw_sf_wait(struct aigw_sf *sf, struct aigw_req *req)
{
    pthread_mutex_lock(&sf->lock);
    if (sf->stop) {
        pthread_mutex_unlock(&sf->lock);
        resolve(req, SF_TIMEOUT, NULL);
        return;
    }
    if (sf->n == sf->cap)
        sf->waiters = aigw_xrealloc(sf->waiters, (sf->cap = sf->cap ? sf->cap * 2 : 64) * sizeof(*sf->waiters));
    sf->waiters[sf->n++] = req;
    pthread_cond_signal(&sf->wake);
    pthread_mutex_unlock(&sf->lock);
}

void
aigw_sf_publish(struct aigw_req *req, const char *result_json, const struct aigw_cache_entry *entry)
{
    struct aigw_query *q = req->q;
    const char *keys[3] = {q->sf_lock_key, q->sf_result_key, entry != NULL ? entry->key : NULL};
    const char *args[5] = {req->usage_id, result_json != NULL ? result_json : "", "10000",
                           entry != NULL ? entry->value.buf : NULL, entry != NULL ? entry->ttl_s : NULL};
    /* without Redis's answer the waiters (on every instance) would wait out
     * the lock, minutes for a stream: sent again until Redis takes it, but
     * only while the lock is still this request's (republish_script): once
     * it is gone the first run did it or the waiters moved on, and a newer
     * flight may lead that the old result must not overwrite */
    redisReply *r = aigw_redis_outbox_eval_now(req->srv->outbox, &publish_script, &republish_script,
                                               entry != NULL ? 3 : 2, keys, entry != NULL ? 5 : 3, args,
                                               aigw_now_ms() + aigw_singleflight_lock_ms(req),
                                               "publishing a single-flight result", NULL, NULL);

    if (r == NULL)
        aigw_log(LOG_WARNING, "single-flight: publish failed for request %s; retrying", req->request_id);
    freeReplyObject(r);
}

static void
free_result(void *p)
{
    free(p);
}

static void
free_indirect(void *pp)
{
    free(*(char **)pp);
}

static void
decref(void *p)
{
    json_decref(p);
}

/* A waiter got the leader's outcome: answer from it (not billed). */
static enum aigw_rc
from_result(struct aigw_req *req, const char *text)
{
    struct aigw_query *q = req->q;
    json_t *root = json_loads(text, 0, NULL), *err;
    enum aigw_rc rc;

    if (root == NULL)
        return aigw_req_fail(req, 502, "upstream_error", "the coalesced answer was unreadable");
    aigw_pool_cleanup(req->pool, decref, root);
    err = json_object_get(root, "error");
    if (json_is_object(err)) {
        json_t *extra = json_object_get(err, "extra");
        int status = (int)json_integer_value(json_object_get(err, "status"));
        const char *retry = json_string_value(json_object_get(err, "retry_after"));
        const char *code = json_string_value(json_object_get(err, "code"));

        if (code != NULL && strcmp(code, "quota_exhausted") == 0) { /* not to be retried until it resets */
            const char *at = json_string_value(json_object_get(extra, "resets_at"));
            int64_t resets;

            aigw_quota_exhausted_headers(req, at != NULL && aigw_parse_rfc3339(at, &resets) ? resets : 0);
        } else if (retry != NULL) /* the leader's 503 asked its client to retry: so are we */
            aigw_req_add_header(req, "Retry-After", aigw_pool_strdup(req->pool, retry));

        return aigw_req_fail_extra(req, status >= 400 ? status : 502,
                                   aigw_pool_strdup(req->pool, code ? code : "upstream_error"),
                                   json_is_object(extra) ? json_incref(extra) : NULL, "%s",
                                   json_string_value(json_object_get(err, "message"))
                                       ? json_string_value(json_object_get(err, "message"))
                                       : "the upstream call failed");
    }
    rc = aigw_query_from_json(req, root);
    q->from_cache = true;
    aigw_metrics_coalesced(req->srv->metrics);
    return rc;
}

/* A stream's call runs up to stream_timeout_ms (the default 600 s against
 * timeout_ms's 60 s), and a lock sized by timeout_ms expired under a live
 * streaming leader, so a later request led a second generation and the
 * waiters gave up with 504. */
int
aigw_singleflight_lock_ms(const struct aigw_req *req)
{
    const struct aigw_config *cfg = &req->snap->cfg; /* upstream.* reloads: the lock outlasts the call */

    return aigw_config_call_ms(cfg, req->q->stream) + cfg->queue_timeout_ms + 5000;
}

/* How long a waiter waits: its leader may stream whether or not the waiter
 * does, so as long as the longer lock (a leader that dies sooner is seen
 * when its lock goes). */
static int
wait_ms(const struct aigw_req *req)
{
    const struct aigw_config *cfg = &req->snap->cfg;

    return aigw_config_call_ms(cfg, true) + cfg->queue_timeout_ms + 5000;
}

/* The lock or the published result, asked of Redis: {2, result}, {1} or {0}
 * as the acquire script answers; -1 = Redis unavailable or a bad reply. */
static long long
acquire(struct aigw_req *req, char **result)
{
    struct aigw_query *q = req->q;
    const char *keys[2] = {q->sf_lock_key, q->sf_result_key}, *args[5];
    char deadline[24], mark[160];
    redisContext *rc;
    redisReply *r;
    long long st;

    args[0] = req->usage_id;
    args[1] = aigw_pool_printf(req->pool, "%d", aigw_singleflight_lock_ms(req));
    args[2] = q->no_cache ? "0" : "1";
    args[3] = deadline;
    args[4] = mark;
    aigw_quota_mark_key(req->tenant->id, req->usage_id, mark, sizeof(mark));
    rc = aigw_redis_acquire(req->srv->redis);
    if (rc == NULL)
        return -1;
    aigw_redis_deadline_arg(req->srv->pipe, deadline);
    r = aigw_redis_eval(rc, &acquire_script, 2, keys, 5, args); /* 'expired': not an array, -1 */
    aigw_redis_release(req->srv->redis, rc);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        freeReplyObject(r);
        return -1;
    }
    st = r->element[0]->integer;
    if (st == 2 && r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING) {
        *result = aigw_xstrndup(r->element[1]->str, r->element[1]->len);
        aigw_pool_cleanup(req->pool, free_result, *result);
    } else if (st == 2) {
        st = -1;
    }
    freeReplyObject(r);
    return st;
}

enum aigw_rc
aigw_stage_singleflight(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    char *result = NULL;
    long long st;

    if (q->no_store) /* sampled answers differ per request: nothing to share */
        return AIGW_OK;
    if (q->sf_role == AIGW_SF_WAITER) {
        int state = atomic_load(&q->sf_state);

        if (state == SF_RESULT)
            return from_result(req, q->sf_result);
        if (state == SF_TIMEOUT)
            return aigw_req_fail(req, 504, "upstream_timeout", "timed out waiting for an identical request");
        q->sf_role = AIGW_SF_NONE; /* SF_RETRY: the leader vanished, try to lead */
    }
    if (q->sf_lock_key == NULL) {
        q->sf_lock_key = aigw_pool_printf(req->pool, "aigw:{%s}:sf:%s:%s", req->tenant->id, q->gen, q->cache_hex);
        q->sf_result_key = aigw_pool_printf(req->pool, "%s:r", q->sf_lock_key);
    }
    if (q->sf_pre >= 0) { /* the admission script already asked (once: a retry asks again) */
        st = q->sf_pre;
        result = q->sf_pre_result;
        q->sf_pre = -1;
    } else {
        st = acquire(req, &result);
    }
    if (st < 0) {
        /* a lock may have been taken after all (its mark says): this
         * request will not lead, so let it go now, not at the request's
         * end, which may be a long stream later than the mark lives */
        q->redis_lost = true;
        aigw_quota_abandon(req, true);
        return AIGW_OK; /* no coalescing without Redis; the quota stage decides */
    }
    if (st == 2)
        return from_result(req, result);
    if (st == 1) {
        q->sf_role = AIGW_SF_LEADER;
        return AIGW_OK;
    }
    q->sf_role = AIGW_SF_WAITER;
    q->sf_deadline_ms = aigw_now_ms() + wait_ms(req);
    if (!q->sf_registered) {
        aigw_pool_cleanup(req->pool, free_indirect, &q->sf_result);
        q->sf_registered = true;
    }
    atomic_store(&q->sf_state, SF_WAITING);
    aigw_req_suspend(req);
    aigw_sf_wait(req->srv->sf, req);
    return AIGW_AGAIN;
}
