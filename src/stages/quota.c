/* quota.c - monthly quota counters: Redis is a cache of the billed usage rows */
#include "aigw/quota.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/redis.h"
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

void
aigw_quota_init(void)
{
    aigw_redis_script_init(&seed_script);
}

void
aigw_quota_key(const char *tenant_id, int64_t now, char *out, size_t cap)
{
    char month[8];

    aigw_month_key(now, month);
    snprintf(out, cap, "aigw:{%s}:q:%s", tenant_id, month);
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
aigw_quota_used(struct aigw_server *srv, const struct aigw_tenant *t, long *used)
{
    int64_t now = aigw_wall_s();
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
    if (aigw_quota_count_billed(srv, t, now, &count) != 0)
        goto out;
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
