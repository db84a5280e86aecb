/* listener.c - tenant and API key cache invalidation through PostgreSQL LISTEN/NOTIFY */
#include "aigw/listener.h"

#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/util.h"

#define KEY_CHANNEL "aigw_api_key_changed"

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

static void
drain(struct aigw_listener *l, PGconn *conn)
{
    PGnotify *n;

    while ((n = PQnotifies(conn)) != NULL) {
        if (strcmp(n->relname, KEY_CHANNEL) == 0)
            aigw_apikey_cache_invalidate(l->keys, n->extra);
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
        r = PQexec(conn, "LISTEN aigw_tenant_changed; LISTEN " KEY_CHANNEL);
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
aigw_listener_start(const char *db_url, struct aigw_tenant_cache *cache, struct aigw_apikey_cache *keys)
{
    struct aigw_listener *l = aigw_xcalloc(1, sizeof(*l));

    l->url = aigw_xstrdup(db_url);
    l->cache = cache;
    l->keys = keys;
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
