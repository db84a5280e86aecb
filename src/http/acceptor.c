/* acceptor.c - the listening socket, its accept thread, the connection
 * limit and the request deadline (see acceptor.h) */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "aigw/acceptor.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/util.h"

/* The listening socket is aigw's own, served by one thread that accepts and
 * hands each connection to libmicrohttpd (MHD_add_connection), rather than
 * every worker accepting on a shared socket. Two reasons:
 *  - libmicrohttpd 0.9.75's MHD_quiesce_daemon races a worker that is taking
 *    the same listening socket out of its epoll set on its own, and aborts
 *    the process ("Failed to remove listen FD from epoll set") when the
 *    worker wins: a SIGTERM could kill aigw before its drain. Closing a
 *    socket of our own has no such race.
 *  - workers accepting for themselves share connections unevenly (the first
 *    to wake empties the backlog: in bench S4 one of two workers held nearly
 *    all 1,000 streams); added connections are spread over the workers.
 * At http.max_connections open connections the thread stops accepting, so
 * further clients wait in the kernel backlog, as with libmicrohttpd's own
 * accept. It counts for itself (a connection is open from its hand-over to
 * libmicrohttpd's close notification) and gives libmicrohttpd a limit it can
 * never reach: 0.9.75 deadlocks when a worker finds an added connection over
 * its limit ("Failed to start serving new connection"; its own count lags
 * behind the hand-overs, so it cannot be the gate). */
struct aigw_acceptor {
    int fd;                        /* -1 once closed (drain) */
    pthread_t thread;
    pthread_mutex_t lock;          /* guards open, stop, the waiting list and every watch on it */
    pthread_cond_t wake;           /* a connection closed, or stop was set (CLOCK_MONOTONIC) */
    unsigned open, limit;          /* handed over and not closed; http.max_connections */
    bool stop;
    bool running;                  /* thread started, not joined */
    /* connections waiting for a request, oldest deadline first (every
     * deadline is "now + request_timeout_s" when set, so appending keeps
     * the order) */
    struct conn_watch *head, *tail;
    int request_timeout_s;         /* http.request_timeout_s */
    int64_t last_sweep_ms;         /* accept thread only */
    uint16_t port;                 /* bound */
    struct MHD_Daemon *mhd;        /* where accepted connections go */
    struct aigw_metrics *metrics;
};

/* The request deadline. libmicrohttpd 0.9.75 has only an idle timeout,
 * which every byte received restarts: a client that sends its request one
 * byte every few seconds holds one of http.max_connections for as long as
 * it likes (hours: the header buffer alone takes 10 KiB), and a few
 * thousand such sockets from one host keep every other client out. So
 * each connection carries a watch (its libmicrohttpd socket context)
 * that sits on the acceptor's list while the connection waits for a
 * request: from its hand-over, and again from the end of each response.
 * When a request has arrived whole (line, headers and body) it leaves the
 * list: the time it then takes (a model call, a stream) is the upstream
 * timeouts' business. The accept thread sweeps the list once a second and
 * shuts down the socket of every watch past its deadline; libmicrohttpd
 * reads the end of the stream and closes the connection as if the client
 * had left. The socket is only ever shut down under the lock, and the
 * close notification takes the watch off under the same lock before
 * libmicrohttpd closes the descriptor, so a descriptor number already
 * reused by a newer connection is never touched. */
struct conn_watch {
    struct conn_watch *prev, *next;
    int fd;
    int64_t deadline_ms;
    bool listed;
};


/* Caller holds a->lock. */
static void
watch_unlist(struct aigw_acceptor *a, struct conn_watch *w)
{
    if (!w->listed)
        return;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        a->head = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    else
        a->tail = w->prev;
    w->prev = w->next = NULL;
    w->listed = false;
}

/* Caller holds a->lock: the connection waits for a request from now. */
static void
watch_list(struct aigw_acceptor *a, struct conn_watch *w)
{
    watch_unlist(a, w);
    w->deadline_ms = aigw_now_ms() + (int64_t)a->request_timeout_s * 1000;
    w->prev = a->tail;
    if (a->tail != NULL)
        a->tail->next = w;
    else
        a->head = w;
    a->tail = w;
    w->listed = true;
}

static struct conn_watch *
watch_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

    return ci != NULL ? ci->socket_context : NULL;
}

static void
watch_set(struct aigw_acceptor *a, struct MHD_Connection *conn, bool waiting)
{
    struct conn_watch *w = watch_of(conn);

    if (a == NULL || w == NULL)
        return;
    pthread_mutex_lock(&a->lock);
    if (waiting)
        watch_list(a, w);
    else
        watch_unlist(a, w);
    pthread_mutex_unlock(&a->lock);
}

void
aigw_acceptor_request_arrived(struct aigw_acceptor *a, struct MHD_Connection *conn)
{
    watch_set(a, conn, false);
}

void
aigw_acceptor_request_done(struct aigw_acceptor *a, struct MHD_Connection *conn)
{
    watch_set(a, conn, true);
}

/* MHD_OPTION_NOTIFY_CONNECTION: a handed-over connection starts (its
 * watch goes on the list) or closes (before libmicrohttpd closes its
 * descriptor). */
void
aigw_acceptor_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                     enum MHD_ConnectionNotificationCode toe)
{
    struct aigw_acceptor *a = cls;
    struct conn_watch *w = *socket_context;

    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

        if (ci == NULL)
            return;
        w = aigw_xcalloc(1, sizeof(*w));
        w->fd = ci->connect_fd;
        *socket_context = w;
        pthread_mutex_lock(&a->lock);
        watch_list(a, w);
        pthread_mutex_unlock(&a->lock);
        return;
    }
    if (toe != MHD_CONNECTION_NOTIFY_CLOSED)
        return;
    pthread_mutex_lock(&a->lock);
    if (w != NULL)
        watch_unlist(a, w);
    if (a->open > 0)
        a->open--;
    pthread_cond_signal(&a->wake);
    pthread_mutex_unlock(&a->lock);
    free(w);
    *socket_context = NULL;
}

/* How often the accept thread sweeps the deadlines. */
#define SWEEP_MS 1000

/* Caller holds a->lock (and is the accept thread). When a sweep is due,
 * shut down the sockets of the connections past their deadline; returns
 * how many. */
static unsigned
sweep_locked(struct aigw_acceptor *a, int64_t now)
{
    unsigned n = 0;

    if (now - a->last_sweep_ms < SWEEP_MS)
        return 0;
    while (a->head != NULL && a->head->deadline_ms <= now) {
        struct conn_watch *w = a->head;

        watch_unlist(a, w);
        shutdown(w->fd, SHUT_RDWR);
        n++;
    }
    a->last_sweep_ms = now;
    return n;
}

static void
sweep_done(struct aigw_acceptor *a, unsigned n)
{
    if (n == 0)
        return;
    aigw_metrics_request_timeouts(a->metrics, n);
    aigw_log(LOG_NOTICE, "http: closed %u connection%s that sent no whole request within %d s", n, n == 1 ? "" : "s",
             a->request_timeout_s);
}

/* Sweep when due (accept thread: last_sweep_ms is its own, so the lock
 * is only taken when a sweep is due). */
static void
sweep(struct aigw_acceptor *a)
{
    int64_t now = aigw_now_ms();
    unsigned n;

    if (now - a->last_sweep_ms < SWEEP_MS)
        return;
    pthread_mutex_lock(&a->lock);
    n = sweep_locked(a, now);
    pthread_mutex_unlock(&a->lock);
    sweep_done(a, n);
}

/* Wait for room under the limit and take it; false once stopping. The
 * deadlines are swept meanwhile: a full house of connections that never
 * finish a request is exactly what they are for. */
static bool
acceptor_room(struct aigw_acceptor *a)
{
    unsigned swept = 0;
    bool go;

    pthread_mutex_lock(&a->lock);
    while (!a->stop && a->open >= a->limit) {
        struct timespec until;

        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += 1;
        pthread_cond_timedwait(&a->wake, &a->lock, &until);
        swept += sweep_locked(a, aigw_now_ms());
    }
    go = !a->stop;
    if (go)
        a->open++;
    pthread_mutex_unlock(&a->lock);
    sweep_done(a, swept);
    return go;
}

/* Give back a place taken by acceptor_room that no connection used. */
static void
acceptor_unused(struct aigw_acceptor *a)
{
    pthread_mutex_lock(&a->lock);
    a->open--;
    pthread_cond_signal(&a->wake);
    pthread_mutex_unlock(&a->lock);
}

static void *
accept_loop(void *arg)
{
    struct aigw_acceptor *a = arg;
    int64_t last_log_ms = 0;

    while (acceptor_room(a)) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        struct pollfd pfd = {.fd = a->fd, .events = POLLIN};
        int fd = -1;

        /* wakes at least once a second for the sweep; the listening
         * socket is non-blocking, so a connection gone between the poll
         * and the accept is an EAGAIN, not a wait */
        if (poll(&pfd, 1, SWEEP_MS) > 0)
            fd = accept4(a->fd, (struct sockaddr *)&ss, &len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        else
            errno = EAGAIN;
        sweep(a);
        if (fd < 0) {
            int err = errno;

            acceptor_unused(a);
            if (err == EINVAL || err == EBADF || err == ENOTSOCK)
                break; /* the drain shut the socket down */
            /* one connection's fault: Linux hands a new connection's pending
             * network error (ENETDOWN, EHOSTUNREACH, ...) to accept, and a
             * firewall refuses with EPERM (accept(2): retry as for EAGAIN);
             * stopping here left aigw taking no connection till a restart */
            if (err == EINTR || err == ECONNABORTED || err == EAGAIN || err == EPROTO || err == EPERM
                || err == ENETDOWN || err == ENOPROTOOPT || err == EHOSTDOWN || err == ENONET
                || err == EHOSTUNREACH || err == EOPNOTSUPP || err == ENETUNREACH)
                continue;
            if (aigw_now_ms() - last_log_ms > 5000) {
                char eb[128];

                aigw_log(LOG_ERR, "http: accept: %s; new connections wait", strerror_r(err, eb, sizeof(eb)));
                last_log_ms = aigw_now_ms();
            }
            usleep(10 * 1000); /* out of descriptors or memory (or anything else): let connections close */
            continue;
        }
        /* refused (per-IP limit): libmicrohttpd closed fd, and will not
         * notify its close */
        if (MHD_add_connection(a->mhd, fd, (struct sockaddr *)&ss, len) != MHD_YES)
            acceptor_unused(a);
    }
    return NULL;
}

/* The listening socket: SO_REUSEADDR, IPV6_V6ONLY for an IPv6 address. */
static int
listen_socket(const struct sockaddr *sa, socklen_t len, uint16_t *port)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), on = 1, err;
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);

    if (fd < 0)
        return -1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        (sa->sa_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on)) != 0) ||
        bind(fd, sa, len) != 0 || listen(fd, 4096) != 0 || getsockname(fd, (struct sockaddr *)&bound, &blen) != 0)
        goto fail;
    *port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                              : ((struct sockaddr_in *)&bound)->sin_port);
    return fd;
fail:
    err = errno; /* for the caller's message: close may change errno */
    close(fd);
    errno = err;
    return -1;
}

/* Descriptors aigw keeps for itself besides its clients: the PostgreSQL
 * pool and its two sessions of their own, the Redis pool and pipe, every
 * backend's calls (one socket per connection) and health probe (of the
 * start-up table), each worker's
 * epoll and wake-up descriptors, and a margin for the rest (spool and
 * journal files, DNS, the watchdog's check, the log). */
static unsigned
fd_reserve(const struct aigw_config *cfg, unsigned threads)
{
    unsigned n = 256 + 4 * threads + (unsigned)cfg->db_pool_size + (unsigned)cfg->redis_pool_size;

    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct aigw_backend_cfg *be = &cfg->backends[b];

        n += (unsigned)(be->slots < be->max_connections ? be->slots : be->max_connections) + 1;
    }
    return n;
}

/* http.max_connections, or fewer when the open-file limit leaves no room
 * for that many clients beside fd_reserve: above it, a crowd of idle clients
 * took every descriptor, and the health probes, PostgreSQL, Redis and the
 * upstream calls could open none (every backend down, 503 for the clients
 * already in). At least a quarter of the limit stays for clients. */
static unsigned
client_limit(const struct aigw_config *cfg, unsigned threads)
{
    struct rlimit rl;
    unsigned want = (unsigned)cfg->max_connections, reserve = fd_reserve(cfg, threads), room;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= (rlim_t)want + reserve)
        return want;
    room = rl.rlim_cur > (rlim_t)reserve + rl.rlim_cur / 4 ? (unsigned)(rl.rlim_cur - reserve)
                                                            : (unsigned)(rl.rlim_cur / 4);
    if (room < 1)
        room = 1;
    aigw_log(LOG_WARNING,
             "http: the open-file limit (%llu) leaves room for %u clients beside the %u descriptors aigw keeps for "
             "PostgreSQL, Redis and the backends, not http.max_connections %u: at most %u connections at once, "
             "the rest wait in the backlog (raise LimitNOFILE= or ulimit -n)",
             (unsigned long long)rl.rlim_cur, room, reserve, want, room);
    return room;
}

struct aigw_acceptor *
aigw_acceptor_open(const struct aigw_config *cfg, unsigned threads)
{
    struct sockaddr_storage ss;
    socklen_t sslen;
    struct aigw_acceptor *a;
    pthread_condattr_t ca;

    if (aigw_sockaddr_parse(cfg->listen_addr, cfg->port, &ss, &sslen) != 0) {
        aigw_log(LOG_ERR, "http: bad listen address %s", cfg->listen_addr);
        return NULL;
    }
    a = aigw_xcalloc(1, sizeof(*a));
    a->fd = listen_socket((struct sockaddr *)&ss, sslen, &a->port);
    if (a->fd < 0) {
        char eb[128];

        aigw_log(LOG_ERR, "http: cannot listen on %s:%d: %s", cfg->listen_addr, cfg->port,
                 strerror_r(errno, eb, sizeof(eb)));
        free(a);
        return NULL;
    }
    pthread_mutex_init(&a->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&a->wake, &ca);
    pthread_condattr_destroy(&ca);
    a->limit = client_limit(cfg, threads);
    a->request_timeout_s = cfg->request_timeout_s;
    return a;
}

uint16_t
aigw_acceptor_port(const struct aigw_acceptor *a)
{
    return a->port;
}

void
aigw_acceptor_start(struct aigw_acceptor *a, struct MHD_Daemon *mhd, struct aigw_metrics *metrics)
{
    a->mhd = mhd;
    a->metrics = metrics;
    if (pthread_create(&a->thread, NULL, accept_loop, a) != 0)
        abort();
    a->running = true;
}

/* shutdown() wakes the accept thread's poll (the accept then fails with
 * EINVAL), then the socket is closed: new clients are refused instead of
 * parked in the backlog. */
void
aigw_acceptor_quiesce(struct aigw_acceptor *a)
{
    if (a == NULL || a->fd < 0)
        return;
    pthread_mutex_lock(&a->lock);
    a->stop = true;
    pthread_cond_broadcast(&a->wake);
    pthread_mutex_unlock(&a->lock);
    shutdown(a->fd, SHUT_RDWR);
    if (a->running)
        pthread_join(a->thread, NULL);
    a->running = false;
    close(a->fd);
    a->fd = -1;
}

void
aigw_acceptor_free(struct aigw_acceptor *a)
{
    if (a == NULL)
        return;
    aigw_acceptor_quiesce(a);
    pthread_mutex_destroy(&a->lock);
    pthread_cond_destroy(&a->wake);
    free(a);
}
