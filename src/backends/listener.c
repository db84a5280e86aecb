/* listener.c - tenant and API key cache invalidation through PostgreSQL LISTEN/NOTIFY */
#include "aigw/listener.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/redis.h"
#include "aigw/util.h"

#define KEY_CHANNEL "aigw_api_key_changed"
/* "<tenant id>:<key id>" of a key revoked or deleted (sql/016) */
#define REVOKED_CHANNEL "aigw_api_key_revoked"

/* A connection that goes quiet is asked for an empty query after
 * HEARTBEAT_IDLE_MS and given HEARTBEAT_WAIT_MS to answer. A LISTEN session
 * only reads: a peer that vanished without a reset (a network partition, a
 * failover, a server frozen) leaves it waiting for ever, with no error, while
 * every change is missed and the caches serve what they hold until their
 * TTL. No answer: it is taken as lost, and the reconnect empties the caches. */
#define HEARTBEAT_IDLE_MS 5000
#define HEARTBEAT_WAIT_MS 5000

struct aigw_listener {
    char *url;
    struct aigw_tenant_cache *cache;
    struct aigw_apikey_cache *keys;
    struct aigw_redis_pool *redis;
    struct aigw_pg_pool *pool;
    pthread_t thread;
    int wake_fd;           /* eventfd: written by stop */
    atomic_bool stop;
    atomic_bool connected;
};

static bool
wait_or_stop(struct aigw_listener *l, int fd, int timeout_ms)
{
    struct pollfd pfd[2] = {{l->wake_fd, POLLIN, 0}, {fd, POLLIN, 0}};

    poll(pfd, fd >= 0 ? 2 : 1, timeout_ms);
    return atomic_load(&l->stop);
}

/* Whether the key is still active for its tenant (RLS on the tenant named
 * in the notification): 1 yes, 0 no (revoked, deleted, moved, or never
 * there), -1 PostgreSQL could not be asked (logged). */
static int
key_active(struct aigw_listener *l, const char *tenant_id, const char *key_id)
{
    static const char SQL[] = "SELECT count(*) FROM api_keys WHERE id = $1::uuid AND revoked_at IS NULL";
    PGconn *conn = aigw_pg_acquire(l->pool, 2000);
    PGresult *r = conn != NULL ? aigw_pg_exec_tenant(conn, tenant_id, SQL, 1, &key_id) : NULL;
    int rc = r == NULL || PQntuples(r) != 1 ? -1 : strcmp(PQgetvalue(r, 0, 0), "0") != 0;

    PQclear(r);
    aigw_pg_release(l->pool, conn);
    return rc;
}

/* The revocation marker of a key revoked or deleted in SQL (payload
 * "<tenant id>:<key id>"), as DELETE /api/v1/api-keys/{id} sets it: an
 * instance whose listener missed the NOTIFY still refuses the key it has
 * cached, on its next request. Any database session may NOTIFY any
 * channel, so the key is looked up first (the NOTIFY comes after the
 * COMMIT): a forged notice must not shut out an active key for a day.
 * false when PostgreSQL or Redis could not be asked (logged). */
static bool
mark_revoked(struct aigw_listener *l, const char *payload)
{
    char tenant[37], key[160], ttl[16];
    const char *argv[5] = {"SET", key, "1", "EX", ttl};
    const char *key_id;
    size_t lens[5];
    redisContext *rc;
    redisReply *r;
    int active;
    bool ok;

    if (strlen(payload) != 73 || payload[36] != ':' || !aigw_is_uuid(payload, 36) ||
        !aigw_is_uuid(payload + 37, 36)) {
        aigw_log(LOG_WARNING, "listener: ignoring %s payload that is not <tenant id>:<key id>", REVOKED_CHANNEL);
        return true;
    }
    key_id = payload + 37;
    memcpy(tenant, payload, 36);
    tenant[36] = '\0';
    active = key_active(l, tenant, key_id);
    if (active != 0) {
        if (active > 0)
            aigw_log(LOG_WARNING, "listener: ignoring %s for key %s, which is active", REVOKED_CHANNEL, key_id);
        return active > 0;
    }
    aigw_apikey_revoked_key(tenant, key_id, key, sizeof(key));
    snprintf(ttl, sizeof(ttl), "%d", AIGW_APIKEY_REVOKED_TTL_S);
    for (int i = 0; i < 5; i++)
        lens[i] = strlen(argv[i]);
    rc = aigw_redis_acquire(l->redis);
    if (rc == NULL)
        return false;
    r = aigw_redis_cmd(rc, 5, argv, lens);
    aigw_redis_release(l->redis, rc);
    ok = r != NULL && r->type != REDIS_REPLY_ERROR;
    if (!ok)
        aigw_redis_log_error(l->redis, "revocation marker", r != NULL ? r->str : "no reply");
    freeReplyObject(r);
    return ok;
}

static void
drain(struct aigw_listener *l, PGconn *conn)
{
    PGnotify *n;
    /* after a failure, not the rest of this batch (each would wait again) */
    bool deps_ok = l->redis != NULL && l->pool != NULL;

    while ((n = PQnotifies(conn)) != NULL) {
        if (strcmp(n->relname, KEY_CHANNEL) == 0)
            aigw_apikey_cache_invalidate(l->keys, n->extra);
        else if (strcmp(n->relname, REVOKED_CHANNEL) == 0)
            deps_ok = deps_ok && mark_revoked(l, n->extra);
        else
            aigw_tenant_cache_invalidate(l->cache, n->extra);
        PQfreemem(n);
    }
}

/* Whether the heartbeat's answer is all in: its results read (notifications
 * that came with it stay queued for drain). */
static bool
heartbeat_answered(PGconn *conn)
{
    PGresult *r;

    while (!PQisBusy(conn)) {
        r = PQgetResult(conn);
        if (r == NULL)
            return true;
        PQclear(r);
    }
    return false;
}

/* Relay notifications until the connection is lost or stop is asked. */
static void
listen_on(struct aigw_listener *l, PGconn *conn)
{
    int64_t heard_ms = aigw_now_ms(), asked_ms = 0;

    while (!wait_or_stop(l, PQsocket(conn), 1000)) {
        int64_t now;

        if (PQconsumeInput(conn) != 1 || PQstatus(conn) != CONNECTION_OK) {
            aigw_log(LOG_WARNING, "listener: connection lost, reconnecting");
            return;
        }
        now = aigw_now_ms();
        if (asked_ms != 0 && heartbeat_answered(conn)) {
            asked_ms = 0;
            heard_ms = now;
        }
        drain(l, conn);
        if (asked_ms != 0 && now - asked_ms >= HEARTBEAT_WAIT_MS) {
            aigw_log(LOG_WARNING, "listener: PostgreSQL did not answer for %d ms, reconnecting", HEARTBEAT_WAIT_MS);
            return;
        }
        if (asked_ms == 0 && now - heard_ms >= HEARTBEAT_IDLE_MS) {
            if (PQsendQuery(conn, "") != 1) {
                aigw_log(LOG_WARNING, "listener: connection lost, reconnecting");
                return;
            }
            asked_ms = now;
        }
    }
}

static void *
run(void *arg)
{
    struct aigw_listener *l = arg;
    int backoff_ms = 100;

    while (!atomic_load(&l->stop)) {
        PGconn *conn = aigw_pg_connect(l->url);
        PGresult *r;

        if (conn == NULL) {
            if (wait_or_stop(l, -1, backoff_ms))
                break;
            backoff_ms = backoff_ms * 2 > 5000 ? 5000 : backoff_ms * 2;
            continue;
        }
        r = PQexec(conn, "LISTEN aigw_tenant_changed; LISTEN " KEY_CHANNEL "; LISTEN " REVOKED_CHANNEL);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            aigw_log(LOG_ERR, "listener: LISTEN failed");
            PQclear(r);
            PQfinish(conn);
            if (wait_or_stop(l, -1, backoff_ms))
                break;
            continue;
        }
        PQclear(r);
        /* anything may have changed while we were not listening */
        aigw_tenant_cache_invalidate(l->cache, "*");
        aigw_apikey_cache_invalidate(l->keys, "*");
        atomic_store(&l->connected, true);
        backoff_ms = 100;
        aigw_log(LOG_INFO, "listener: listening for tenant and API key changes");
        listen_on(l, conn);
        atomic_store(&l->connected, false);
        PQfinish(conn);
    }
    return NULL;
}

struct aigw_listener *
aigw_listener_start(const char *db_url, struct aigw_tenant_cache *cache, struct aigw_apikey_cache *keys,
                    struct aigw_redis_pool *redis, struct aigw_pg_pool *pool)
{
    struct aigw_listener *l = aigw_xcalloc(1, sizeof(*l));

    l->url = aigw_xstrdup(db_url);
    l->cache = cache;
    l->keys = keys;
    l->redis = redis;
    l->pool = pool;
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->wake_fd < 0 || pthread_create(&l->thread, NULL, run, l) != 0)
        abort();
    return l;
}

void
aigw_listener_stop(struct aigw_listener *l)
{
    if (l == NULL)
        return;
    atomic_store(&l->stop, true);
    aigw_eventfd_signal(l->wake_fd);
    pthread_join(l->thread, NULL);
    close(l->wake_fd);
    free(l->url);
    free(l);
}

bool
aigw_listener_connected(const struct aigw_listener *l)
{
    return atomic_load(&l->connected);
}
