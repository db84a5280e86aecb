/* quota.c - monthly quota counters: Redis is a cache of the billed usage rows */
#include "aigw/quota.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/http.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/query.h"
#include "aigw/stages.h"
#include "aigw/pg.h"
#include "aigw/redis.h"
#include "aigw/reservations.h"
#include "aigw/usage.h"
#include "aigw/util.h"

/* KEYS[1] counter; ARGV[1] rebuilt value, ARGV[2] ttl seconds.
 * Sets the counter only if it is still missing, then returns it. */
static struct aigw_redis_script seed_script = {
    .source = "if redis.call('EXISTS', KEYS[1]) == 0 then "
              "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end "
              "return tonumber(redis.call('GET', KEYS[1]))",
};

static const char COUNT_SQL[] =
    "SELECT count(*) FROM ai_usage_logs WHERE billed AND tenant_id = aigw_current_tenant()"
    " AND created_at >= to_timestamp($1) AND created_at < to_timestamp($2)";

/* KEYS[1] counter; ARGV[1] limit (-1 unlimited), ARGV[2] deadline (see
 * AIGW_REDIS_PAST_LUA). -> {-2, 0} counter missing (rebuild first), {0, used}
 * exhausted, {1, used} reserved, 'expired' (did nothing) */
static struct aigw_redis_script reserve_script = {
    .source = AIGW_REDIS_PAST_LUA AIGW_QUOTA_RESERVE_LUA AIGW_MARK_LUA
    "if past(ARGV[2]) then return 'expired' end\n"
    "local st, v = quota_reserve(KEYS[1], tonumber(ARGV[1]))\n"
    "if st == 1 then mark(ARGV[3], 'q', KEYS[1]) end\n"
    "return {st, v}\n",
};

/* KEYS[1] the request's mark; ARGV[1] its usage id (the lock's owner),
 * ARGV[2] '1' to give back the reservation, ARGV[3] '1' to release the lock
 * -> what was undone: 1 the reservation, 2 the lock, 3 both */
static struct aigw_redis_script abandon_script = {
    .source = "local v = redis.call('HMGET', KEYS[1], 'q', 'l')\n"
              "redis.call('DEL', KEYS[1])\n"
              "local n = 0\n"
              "if ARGV[2] == '1' and v[1] then\n"
              "  if tonumber(redis.call('GET', v[1]) or '0') > 0 then redis.call('DECR', v[1]) end\n"
              "  n = n + 1\n"
              "end\n"
              "if ARGV[3] == '1' and v[2] and redis.call('GET', v[2]) == ARGV[1] then\n"
              "  redis.call('DEL', v[2])\n"
              "  n = n + 2\n"
              "end\n"
              "return n\n",
    .by_source = true, /* it runs while replies are late: no NOSCRIPT round */
};

/* KEYS[1] counter, KEYS[2] the reservation's refund record; ARGV[1] the
 * record's ttl ms: decrement, never below zero, once per reservation -> the
 * count after it, or -1 when this reservation was refunded already (a
 * refund whose reply was lost is sent again by the outbox, or asked for
 * again from the journal at the next start) */
static struct aigw_redis_script refund_script = {
    .source = "if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) then return -1 end\n"
              "local v = tonumber(redis.call('GET', KEYS[1]) or '0')\n"
              "if v > 0 then return redis.call('DECR', KEYS[1]) end\n"
              "return 0\n",
};

void
aigw_quota_init(void)
{
    aigw_redis_script_init(&seed_script);
    aigw_redis_script_init(&reserve_script);
    aigw_redis_script_init(&refund_script);
    aigw_redis_script_init(&abandon_script);
}

void
aigw_quota_mark_key(const char *tenant_id, const char *usage_id, char *out, size_t cap)
{
    aigw_concat(out, cap, "aigw:{", tenant_id, "}:rv:", usage_id, NULL);
}

/* The abandon script's confirming reply (the outbox's callback). */
static void
abandoned(redisReply *r, void *ud)
{
    (void)ud;
    if (r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer > 0)
        aigw_log(LOG_INFO, "quota: took back what a request gave up on (%lld)", r->integer);
    freeReplyObject(r);
}

void
aigw_quota_abandon(struct aigw_req *req, bool lock_only)
{
    struct aigw_query *q = req->q;
    char key[160];
    const char *keys[1] = {key}, *args[3];

    aigw_quota_mark_key(req->tenant->id, req->usage_id, key, sizeof(key));
    args[0] = req->usage_id;
    args[1] = q->quota_reserved || lock_only ? "0" : "1";
    args[2] = q->sf_role == AIGW_SF_LEADER ? "0" : "1";
    /* sent again while Redis does not confirm it, as long as the mark can
     * live: a second run finds no mark and undoes nothing twice */
    aigw_redis_outbox_eval(req->srv->outbox, &abandon_script, 1, keys, 3, args,
                           aigw_now_ms() + AIGW_MARK_TTL_MS, "taking back what a request gave up on",
                           abandoned, NULL);
}

void
aigw_quota_key(const char *tenant_id, int64_t now, char *out, size_t cap)
{
    char month[8];

    aigw_month_key(now, month);
    aigw_concat(out, cap, "aigw:{", tenant_id, "}:q:", month, NULL);
}

/* How long a rebuild waits for this instance's spooled rows to reach
 * PostgreSQL (a batch commit, when PostgreSQL keeps up). */
#define REBUILD_SYNC_MS 1000

/* The billed rows of the month for a counter to be seeded with: the rows
 * this instance still has in its spool (or in memory) are written first, or
 * the count would miss them and the tenant get them back for the month. */
static int
count_for_seed(struct aigw_server *srv, const struct aigw_tenant *t, int64_t now, long *count)
{
    if (aigw_usage_sync(srv->usage, REBUILD_SYNC_MS) != 0) {
        aigw_log(LOG_WARNING, "quota: counter of tenant %s not rebuilt: usage rows still on their way to PostgreSQL",
                 t->id);
        return -1;
    }
    return aigw_quota_count_billed(srv, t, now, count);
}

static int64_t
month_start(int64_t now)
{
    /* the month before the next month's start, walking back ~40 days */
    return aigw_next_month_start(aigw_next_month_start(now) - 40 * 86400);
}

int
aigw_quota_count_billed(struct aigw_server *srv, const struct aigw_tenant *t, int64_t now, long *count)
{
    char from[24], to[24];
    const char *params[2] = {from, to};
    PGconn *conn = aigw_pg_acquire(srv->pg, 2000);
    PGresult *r;

    if (conn == NULL)
        return -1;
    snprintf(from, sizeof(from), "%lld", (long long)month_start(now));
    snprintf(to, sizeof(to), "%lld", (long long)aigw_next_month_start(now));
    r = aigw_pg_exec_tenant(conn, t->id, COUNT_SQL, 2, params);
    aigw_pg_release(srv->pg, conn);
    if (r == NULL)
        return -1;
    *count = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

int
aigw_quota_used(struct aigw_server *srv, const struct aigw_tenant *t, int64_t now, long *used)
{
    char key[128], val[24], ttl[24];
    const char *argv[2] = {"GET", key};
    size_t lens[2];
    redisContext *rc = aigw_redis_acquire(srv->redis);
    redisReply *r = NULL;
    long count;
    int ret = -1;

    aigw_quota_key(t->id, now, key, sizeof(key));
    if (rc == NULL)
        return aigw_quota_count_billed(srv, t, now, used);
    lens[0] = 3;
    lens[1] = strlen(key);
    r = aigw_redis_cmd(rc, 2, argv, lens);
    if (r != NULL && r->type == REDIS_REPLY_STRING && aigw_parse_long(r->str, 0, __LONG_MAX__, used)) {
        ret = 0;
        goto out;
    }
    if (r == NULL || r->type != REDIS_REPLY_NIL) {
        ret = aigw_quota_count_billed(srv, t, now, used);
        goto out;
    }
    /* missing: rebuild from the billed rows, keep the key a few days past the month */
    freeReplyObject(r);
    r = NULL;
    if (count_for_seed(srv, t, now, &count) != 0) {
        ret = aigw_quota_count_billed(srv, t, now, used); /* shown, not stored */
        goto out;
    }
    snprintf(val, sizeof(val), "%ld", count);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(aigw_next_month_start(now) - now + 7 * 86400));
    {
        const char *keys[1] = {key}, *args[2] = {val, ttl};

        r = aigw_redis_eval(rc, &seed_script, 1, keys, 2, args);
    }
    if (r != NULL && r->type == REDIS_REPLY_INTEGER) {
        *used = (long)r->integer;
        ret = 0;
    } else {
        *used = count;
        ret = 0;
    }
out:
    freeReplyObject(r);
    aigw_redis_release(srv->redis, rc);
    return ret;
}

/* Seed a missing counter from the billed rows (SET only if still missing). */
static int
rebuild(struct aigw_server *srv, redisContext *rc, const struct aigw_tenant *t, const char *key, int64_t now)
{
    char val[24], ttl[24];
    const char *keys[1] = {key}, *args[2] = {val, ttl};
    long count;
    redisReply *r;

    if (count_for_seed(srv, t, now, &count) != 0)
        return -1;
    snprintf(val, sizeof(val), "%ld", count);
    snprintf(ttl, sizeof(ttl), "%lld", (long long)(aigw_next_month_start(now) - now + 7 * 86400));
    r = aigw_redis_eval(rc, &seed_script, 1, keys, 2, args);
    count = r != NULL && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
    freeReplyObject(r);
    return (int)count;
}

int
aigw_quota_reserve(struct aigw_server *srv, const struct aigw_tenant *t, int64_t now, const char *mark, long *used)
{
    char key[128], limit[24], deadline[24];
    const char *keys[1] = {key}, *args[3] = {limit, deadline, mark != NULL ? mark : ""};
    redisContext *rc = aigw_redis_acquire(srv->redis);
    int ret = -1;

    if (rc == NULL)
        return -1;
    aigw_quota_key(t->id, now, key, sizeof(key));
    snprintf(limit, sizeof(limit), "%ld", t->monthly_limit);
    for (int attempt = 0; attempt < 2; attempt++) {
        redisReply *r;

        aigw_redis_deadline_arg(srv->pipe, deadline);
        r = aigw_redis_eval(rc, &reserve_script, 1, keys, 3, args); /* 'expired': not an array, -1 */
        long long st;

        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2) {
            freeReplyObject(r);
            break;
        }
        st = r->element[0]->integer;
        *used = (long)r->element[1]->integer;
        freeReplyObject(r);
        if (st == -2) {
            if (attempt == 0 && rebuild(srv, rc, t, key, now) == 0)
                continue;
            break;
        }
        ret = st == 1 ? 0 : 1;
        break;
    }
    aigw_redis_release(srv->redis, rc);
    return ret;
}

/* A request's refund is recorded (see refund_script) for this long, and sent
 * again through the outbox for at most REFUND_RETRY_MS: while the record
 * lives, a second run does nothing. Short, as a failing model makes one
 * record per failed call. */
#define REFUND_RECORD_MS 600000
#define REFUND_RETRY_MS 300000

struct refund_args {
    char key[128], done[160], ttl[24];
    const char *keys[2], *args[1];
};

/* The refund script's keys and arguments; record_ms 0: as long as the
 * month's counter can live (aigw_quota_used), at least a week. */
static void
refund_args(struct refund_args *ra, const char *usage_id, const char *tenant_id, int64_t at_s, int64_t record_ms)
{
    int64_t left = aigw_next_month_start(at_s) - aigw_wall_s();

    aigw_quota_key(tenant_id, at_s, ra->key, sizeof(ra->key));
    aigw_concat(ra->done, sizeof(ra->done), "aigw:{", tenant_id, "}:rf:", usage_id, NULL);
    if (record_ms == 0)
        record_ms = ((left > 0 ? left : 0) + 7 * 86400) * 1000;
    aigw_fmt_int(ra->ttl, record_ms);
    ra->keys[0] = ra->key;
    ra->keys[1] = ra->done;
    ra->args[0] = ra->ttl;
}

int
aigw_quota_refund(struct aigw_server *srv, const char *usage_id, const char *tenant_id, int64_t at_s)
{
    struct refund_args ra;
    redisContext *rc = aigw_redis_acquire(srv->redis);
    redisReply *r;
    int ret = 0;

    if (rc == NULL) {
        aigw_log(LOG_WARNING, "quota: refund for tenant %s not made: Redis unavailable", tenant_id);
        return -1;
    }
    refund_args(&ra, usage_id, tenant_id, at_s, 0);
    r = aigw_redis_eval(rc, &refund_script, 2, ra.keys, 1, ra.args);
    if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
        aigw_log(LOG_WARNING, "quota: refund for tenant %s failed", tenant_id);
        ret = -1;
    } else if (r->integer < 0) {
        aigw_log(LOG_INFO, "quota: reservation %s was refunded already", usage_id);
    }
    freeReplyObject(r);
    aigw_redis_release(srv->redis, rc);
    return ret;
}

/* A request's refund that Redis confirmed late (the outbox's callback):
 * its reservation is settled in the journal; given up, it stays open there
 * and the next start makes it. */
struct late_refund {
    struct aigw_server *srv;
    struct aigw_resv_file *file;
    char id[37];
};

static void
refunded_late(redisReply *r, void *ud)
{
    struct late_refund *lr = ud;

    if (r != NULL)
        aigw_resv_settle(lr->srv->resv, lr->file, lr->id);
    freeReplyObject(r);
    free(lr);
}

bool
aigw_quota_refund_request(struct aigw_req *req, struct aigw_resv_file *file)
{
    struct refund_args ra;
    struct late_refund *lr = aigw_xcalloc(1, sizeof(*lr));
    redisReply *r;

    lr->srv = req->srv;
    lr->file = file;
    snprintf(lr->id, sizeof(lr->id), "%s", req->usage_id);
    refund_args(&ra, req->usage_id, req->tenant->id, req->start_wall_us / 1000000, REFUND_RECORD_MS);
    /* the journal refused its R line when it was reserved: journaled now,
     * or a refund Redis misses would live only in the outbox (memory) and a
     * stop before Redis is back would lose it. Only on that path. */
    if (file == NULL)
        lr->file = aigw_resv_add(req->srv->resv, req->usage_id, req->tenant->id, req->start_wall_us / 1000000);
    r = aigw_redis_outbox_eval_now(req->srv->outbox, &refund_script, NULL, 2, ra.keys, 1, ra.args,
                                   aigw_now_ms() + REFUND_RETRY_MS, "a refund", refunded_late, lr);
    if (r == NULL) {
        aigw_log(LOG_WARNING, "quota: refund for tenant %s not confirmed yet; retrying", req->tenant->id);
        return false;
    }
    if (r->type == REDIS_REPLY_INTEGER && r->integer < 0)
        aigw_log(LOG_INFO, "quota: reservation %s was refunded already", req->usage_id);
    freeReplyObject(r);
    if (file == NULL) /* journaled just now: the caller has no file to settle it in */
        aigw_resv_settle(req->srv->resv, lr->file, req->usage_id);
    free(lr);
    return true;
}

void
aigw_quota_exhausted_headers(struct aigw_req *req, int64_t resets_s)
{
    if (resets_s > 0) {
        int64_t left = resets_s - req->start_wall_us / 1000000;

        aigw_req_add_header(req, "Retry-After", aigw_pool_printf(req->pool, "%lld", (long long)(left > 1 ? left : 1)));
    }
    aigw_req_add_header(req, "x-should-retry", "false");
}

enum aigw_rc
aigw_stage_quota(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    struct aigw_query *q = req->q;
    int64_t at = req->start_wall_us / 1000000; /* the month the request counts in */
    long used = q->quota_used;
    int rc;
    char resets[32];

    /* the admission script's answer (1 reserved, 0 exhausted, once); anything
     * else (not tried, counter missing: rebuilt from the rows) is asked here */
    if (q->quota_pre == 1 || q->quota_pre == 0) {
        rc = q->quota_pre == 1 ? 0 : 1;
    } else {
        char mark[160];

        aigw_quota_mark_key(t->id, req->usage_id, mark, sizeof(mark));
        rc = aigw_quota_reserve(req->srv, t, at, mark, &used);
    }
    q->quota_pre = -1;

    if (rc < 0) {
        q->redis_lost = true; /* the script may have run: its mark says */
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "quota store is unavailable, retry shortly");
    }
    if (rc > 0) {
        /* the end of the month it was counted in: a fresh clock read could
         * be in the next month already and name the month after that */
        aigw_rfc3339(aigw_next_month_start(at), resets);
        aigw_quota_exhausted_headers(req, aigw_next_month_start(at));
        aigw_metrics_quota_exhausted(req->srv->metrics, t->tier);
        return aigw_req_fail_extra(req, 429, "quota_exhausted",
                                   json_pack("{s:I, s:I, s:s}", "limit", (json_int_t)t->monthly_limit, "used",
                                             (json_int_t)used, "resets_at", resets),
                                   "the monthly query limit of %ld is reached", t->monthly_limit);
    }
    q->quota_reserved = true;
    q->resv = aigw_resv_add(req->srv->resv, req->usage_id, t->id, at);
    q->queries_remaining = t->monthly_limit < 0 ? -1 : t->monthly_limit - used;
    return AIGW_OK;
}
