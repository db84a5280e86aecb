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
        while (!wait_or_stop(l, PQsocket(conn), 1000)) {
            if (PQconsumeInput(conn) != 1 || PQstatus(conn) != CONNECTION_OK) {
                aigw_log(LOG_WARNING, "listener: connection lost, reconnecting");
                break;
            }
            drain(l, conn);
        }
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
