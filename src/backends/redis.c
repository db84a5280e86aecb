/* redis.c - checkout pool of sync hiredis contexts (every command has a
 * timeout), Lua scripts, and the pipe: one pipelined async connection */
#include "aigw/redis.h"

#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/util.h"

#define EVAL_MAX_ARGS 32

struct aigw_redis_pool {
    char *host;            /* NULL for unix sockets */
    char *path;            /* unix socket path */
    char *user, *pass;     /* AUTH [user] pass on every connection; NULL: none */
    int port, db, size, timeout_ms;
    pthread_mutex_t lock;  /* guards idle, idle_ms, n_idle, n_out */
    pthread_cond_t freed;
    redisContext **idle;
    int64_t *idle_ms;      /* when each idle connection was released (aigw_now_ms) */
    int n_idle, n_out;
    /* Redis stopped answering: a command or a connect on a pooled
     * connection timed out. Until a reply comes back, one caller at a time
     * (the probe) waits for Redis; every other one is refused at once.
     * Without this, each HTTP worker waited timeout_ms per Redis call in
     * turn, and with a few dozen requests ending at once (their leaders'
     * publish, their refunds) a worker was blocked for many seconds: every
     * connection it served, /healthz and the watchdog's check included.
     * A probe goes at most every STALL_PROBE_MS, so a worker that makes one
     * call after another is not blocked by each of them in turn either. */
    _Atomic bool stalled;  /* set with lock held (with probe_at_ms); cleared by any answer */
    int64_t probe_at_ms;   /* guarded by lock: no probe before this (aigw_now_ms) */
    bool probing;          /* guarded by lock: a probe holds a connection (or is connecting) */
    redisContext *probe;   /* guarded by lock: the probe's connection once it has one */
    _Atomic uint64_t refused;  /* calls refused at once while stalled */
    _Atomic int64_t last_error_log_ms;
};

/* s[0..n) with %XX escapes decoded, or NULL when one is malformed or
 * decodes to NUL. */
static char *
percent_decoded(const char *s, size_t n)
{
    char *out = aigw_xmalloc(n + 1), *o = out;

    for (size_t i = 0; i < n; i++) {
        int hi, lo;

        if (s[i] != '%') {
            *o++ = s[i];
            continue;
        }
        if (i + 2 >= n) { /* fewer than two characters follow */
            free(out);
            return NULL;
        }
        hi = aigw_hexval(s[i + 1]);
        lo = aigw_hexval(s[i + 2]);
        if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
            free(out);
            return NULL;
        }
        *o++ = (char)(hi << 4 | lo);
        i += 2;
    }
    *o = '\0';
    return out;
}

/* redis://[user]:password@host... or redis://user@host... (the password
 * from redis.password_file): the part before the last '@' of the
 * authority. The error never quotes the URL (it holds the password). */
static int
parse_userinfo(struct aigw_redis_pool *p, const char *info, size_t n, char *err, size_t errlen)
{
    const char *colon = memchr(info, ':', n);

    if (colon == NULL) { /* user@: the password comes from redis.password_file */
        p->user = n > 0 ? percent_decoded(info, n) : NULL;
        if (p->user == NULL) {
            snprintf(err, errlen, "redis url: bad user (empty, or a %% escape that is not %%XX)");
            return -1;
        }
        return 0;
    }
    p->user = colon > info ? percent_decoded(info, (size_t)(colon - info)) : NULL;
    p->pass = percent_decoded(colon + 1, n - (size_t)(colon + 1 - info));
    if ((colon > info && p->user == NULL) || p->pass == NULL || p->pass[0] == '\0') {
        snprintf(err, errlen, "redis url: bad credentials (an empty password, or a %% escape that is not %%XX)");
        return -1;
    }
    return 0;
}

static int
parse_url(struct aigw_redis_pool *p, const char *url, char *err, size_t errlen)
{
    const char *rest;
    long v;

    if (strncmp(url, "unix://", 7) == 0) {
        char *q;

        p->path = aigw_xstrdup(url + 7);
        q = strstr(p->path, "?db=");
        if (q != NULL) {
            if (!aigw_parse_long(q + 4, 0, 1000, &v)) {
                snprintf(err, errlen, "redis url: bad db number");
                return -1;
            }
            p->db = (int)v;
            *q = '\0';
        }
        if (p->path[0] != '/') {
            snprintf(err, errlen, "redis url: unix socket path must be absolute");
            return -1;
        }
        return 0;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "redis url: must start with redis:// or unix://");
        return -1;
    }
    rest = url + 8;
    {
        size_t auth = strcspn(rest, "/"); /* the authority: [userinfo@]host[:port] */
        const char *at = NULL;

        for (const char *q = rest; q < rest + auth; q++)
            if (*q == '@')
                at = q;
        if (at != NULL) {
            if (parse_userinfo(p, rest, (size_t)(at - rest), err, errlen) != 0)
                return -1;
            rest = at + 1;
        }
    }
    const char *host = rest, *after, *colon, *slash;
    size_t hlen;
    char portbuf[16] = "6379";

    if (rest[0] == '[') { /* an IPv6 address: redis://[::1]:6379/0 */
        const char *close = strchr(rest, ']');

        if (close == NULL || (close[1] != '\0' && close[1] != ':' && close[1] != '/')) {
            snprintf(err, errlen, "redis url: bad [IPv6 address]");
            return -1;
        }
        host = rest + 1;
        hlen = (size_t)(close - host);
        after = close + 1;
    } else {
        hlen = strcspn(rest, ":/");
        after = rest + hlen;
    }
    slash = strchr(after, '/');
    colon = after[0] == ':' ? after : NULL;
    if (colon != NULL && memchr(colon + 1, ':', slash ? (size_t)(slash - colon - 1) : strlen(colon + 1)) != NULL) {
        snprintf(err, errlen, "redis url: write an IPv6 address in brackets (redis://[::1]:6379)");
        return -1;
    }
    if (hlen == 0) {
        snprintf(err, errlen, "redis url: host is missing");
        return -1;
    }
    p->host = aigw_xstrndup(host, hlen);
    if (colon != NULL) {
        size_t plen = slash ? (size_t)(slash - colon - 1) : strlen(colon + 1);

        if (plen == 0 || plen >= sizeof(portbuf)) {
            snprintf(err, errlen, "redis url: bad port");
            return -1;
        }
        memcpy(portbuf, colon + 1, plen);
        portbuf[plen] = '\0';
    }
    if (!aigw_parse_long(portbuf, 1, 65535, &v)) {
        snprintf(err, errlen, "redis url: bad port");
        return -1;
    }
    p->port = (int)v;
    if (slash != NULL && slash[1] != '\0') {
        if (!aigw_parse_long(slash + 1, 0, 1000, &v)) {
            snprintf(err, errlen, "redis url: bad db number");
            return -1;
        }
        p->db = (int)v;
    }
    return 0;
}

void
aigw_redis_pool_set_password(struct aigw_redis_pool *p, const char *password)
{
    aigw_free_secret(p->pass);
    p->pass = password != NULL ? aigw_xstrdup(password) : NULL;
}

bool
aigw_redis_url_check(const char *url, char *err, size_t errlen)
{
    struct aigw_redis_pool p;
    int rc;

    memset(&p, 0, sizeof(p));
    rc = parse_url(&p, url, err, errlen);
    free(p.host);
    free(p.path);
    free(p.user);
    aigw_free_secret(p.pass);
    return rc == 0;
}

struct aigw_redis_pool *
aigw_redis_pool_create(const char *url, int size, int timeout_ms, char *err, size_t errlen)
{
    struct aigw_redis_pool *p = aigw_xcalloc(1, sizeof(*p));

    if (parse_url(p, url, err, errlen) != 0) {
        free(p->host);
        free(p->path);
        free(p->user);
        aigw_free_secret(p->pass);
        free(p);
        return NULL;
    }
    p->size = size;
    p->timeout_ms = timeout_ms;
    p->idle = aigw_xcalloc((size_t)size, sizeof(redisContext *));
    p->idle_ms = aigw_xcalloc((size_t)size, sizeof(int64_t));
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->freed, NULL);
    return p;
}

void
aigw_redis_pool_destroy(struct aigw_redis_pool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < p->n_idle; i++)
        redisFree(p->idle[i]);
    pthread_cond_destroy(&p->freed);
    pthread_mutex_destroy(&p->lock);
    free(p->idle);
    free(p->idle_ms);
    free(p->host);
    free(p->path);
    free(p->user);
    aigw_free_secret(p->pass);
    free(p);
}

void
aigw_redis_log_error(struct aigw_redis_pool *p, const char *what, const char *detail)
{
    int64_t now = aigw_now_ms(), last = atomic_load(&p->last_error_log_ms);

    aigw_metrics_count_redis_error();
    /* an outage would otherwise log once per request */
    if (now - last < 1000 || !atomic_compare_exchange_strong(&p->last_error_log_ms, &last, now))
        return;
    aigw_log(LOG_ERR, "redis: %s: %s", what, detail);
}

/* While the pool is stalled, how often a caller may wait for Redis. */
#define STALL_PROBE_MS 1000

/* The pool is stalled from now (lock held). */
static void
stall(struct aigw_redis_pool *p)
{
    atomic_store(&p->stalled, true);
    p->probe_at_ms = aigw_now_ms() + STALL_PROBE_MS;
}

/* Redis answered a call (on the pipe): the pool is no longer stalled. */
static void
pool_answered(struct aigw_redis_pool *p)
{
    if (atomic_load_explicit(&p->stalled, memory_order_relaxed))
        atomic_store(&p->stalled, false);
}

/* Whether c failed because Redis did not answer within the timeout (a
 * read or write that would block past SO_RCVTIMEO/SO_SNDTIMEO, or a
 * connect that timed out), not because it refused or closed: hiredis 0.14
 * reports every I/O failure as REDIS_ERR_IO with the text of errno. */
static bool
timed_out(const redisContext *c)
{
    char b1[128], b2[128];

    return c->err == REDIS_ERR_IO && (strcmp(c->errstr, strerror_r(EAGAIN, b1, sizeof(b1))) == 0 ||
                                      strcmp(c->errstr, strerror_r(ETIMEDOUT, b2, sizeof(b2))) == 0);
}

/* A new connection whose connect, AUTH, SELECT and later commands each
 * wait up to timeout_ms. */
static redisContext *
connect_one(struct aigw_redis_pool *p, int timeout_ms)
{
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = p->path ? redisConnectUnixWithTimeout(p->path, tv)
                              : redisConnectWithTimeout(p->host, p->port, tv);

    if (c == NULL || c->err) {
        aigw_redis_log_error(p, "connect failed", c ? c->errstr : "out of memory");
        if (c != NULL && timed_out(c)) {
            pthread_mutex_lock(&p->lock);
            stall(p);
            pthread_mutex_unlock(&p->lock);
        }
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    if (p->pass != NULL) {
        redisReply *r = p->user != NULL ? redisCommand(c, "AUTH %s %s", p->user, p->pass)
                                        : redisCommand(c, "AUTH %s", p->pass);

        if (r == NULL || r->type == REDIS_REPLY_ERROR) { /* Redis's error names no secret */
            aigw_redis_log_error(p, "AUTH failed", r ? r->str : c->errstr);
            freeReplyObject(r);
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }
    if (p->db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", p->db);

        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            aigw_redis_log_error(p, "SELECT failed", r ? r->str : c->errstr);
            freeReplyObject(r);
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }
    return c;
}

/* A connection idle for this long is looked at (idle_alive) before use.
 * One in steady use is not: the look is a poll(2) per acquire, a syscall
 * on the cache-hit path (the admission's direct call), and a restart of
 * Redis takes longer than this anyway, so a connection it closed has sat
 * idle at least as long; one that breaks while in use fails its command
 * and is dropped at release. */
#define IDLE_CHECK_MS 100

/* An idle connection has nothing to read: readable means the peer closed it
 * (or sent what nobody asked for). */
static bool
idle_alive(const redisContext *c)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};

    return poll(&pfd, 1, 0) == 0;
}

/* aigw_redis_acquire, waiting up to timeout_ms for a free slot and for a
 * new connection (which then keeps timeout_ms for its commands). While
 * the pool is stalled, only the probe gets a connection. */
static redisContext *
acquire_within(struct aigw_redis_pool *p, int timeout_ms)
{
    struct timespec deadline;
    redisContext *c = NULL;
    int64_t idle_since = 0;
    int reserved = 0;
    bool probe = false;

    aigw_deadline_ms(&deadline, timeout_ms);
    pthread_mutex_lock(&p->lock);
    if (p->stalled && (p->probing || aigw_now_ms() < p->probe_at_ms)) {
        pthread_mutex_unlock(&p->lock);
        atomic_fetch_add_explicit(&p->refused, 1, memory_order_relaxed);
        aigw_redis_log_error(p, "not asked", "Redis did not answer in time; one call a second waits for it until it does");
        return NULL;
    }
    if (p->stalled) /* this caller is the probe */
        probe = p->probing = true;
    while (p->n_idle == 0 && p->n_out >= p->size)
        if (pthread_cond_timedwait(&p->freed, &p->lock, &deadline) == ETIMEDOUT)
            break;
    if (p->n_idle > 0) {
        c = p->idle[--p->n_idle];
        idle_since = p->idle_ms[p->n_idle];
        p->n_out++;
    } else if (p->n_out < p->size) {
        p->n_out++;
        reserved = 1;
    }
    pthread_mutex_unlock(&p->lock);
    if (c == NULL && !reserved) {
        aigw_redis_log_error(p, "pool exhausted", "all connections busy");
        goto probe_done;
    }
    if (c != NULL && aigw_now_ms() - idle_since >= IDLE_CHECK_MS && !idle_alive(c)) {
        /* Redis closed it while it sat idle (a restart, a timeout): a
         * command sent on it would fail with the request's 503 */
        redisFree(c);
        c = NULL;
    }
    if (c == NULL) {
        c = connect_one(p, timeout_ms);
        if (c == NULL) {
            pthread_mutex_lock(&p->lock);
            p->n_out--;
            pthread_cond_signal(&p->freed);
            pthread_mutex_unlock(&p->lock);
        }
    }
probe_done:
    if (probe) {
        pthread_mutex_lock(&p->lock);
        if (c != NULL)
            p->probe = c; /* its release decides */
        else
            p->probing = false; /* the next caller probes */
        pthread_mutex_unlock(&p->lock);
    }
    return c;
}

bool
aigw_redis_pool_stalled(const struct aigw_redis_pool *p)
{
    return p != NULL && atomic_load(&p->stalled);
}

uint64_t
aigw_redis_pool_refused(const struct aigw_redis_pool *p)
{
    return p != NULL ? atomic_load_explicit(&p->refused, memory_order_relaxed) : 0;
}

redisContext *
aigw_redis_acquire(struct aigw_redis_pool *p)
{
    return acquire_within(p, p->timeout_ms);
}

void
aigw_redis_release(struct aigw_redis_pool *p, redisContext *c)
{
    bool stalled = false, answered;
    int64_t now;

    if (c == NULL)
        return;
    /* every caller runs a command between acquire and release: a context
     * without an error got its reply, so Redis answers */
    answered = c->err == 0;
    if (!answered) {
        stalled = timed_out(c);
        /* a timed-out context may still receive a late reply: never reuse it */
        aigw_redis_log_error(p, "connection dropped", c->errstr);
    }
    now = aigw_now_ms();
    pthread_mutex_lock(&p->lock);
    if (c == p->probe) {
        p->probe = NULL;
        p->probing = false;
    }
    if (answered)
        pool_answered(p);
    else if (stalled)
        stall(p);
    p->n_out--;
    if (answered) {
        p->idle_ms[p->n_idle] = now;
        p->idle[p->n_idle++] = c;
    }
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->lock);
    if (!answered)
        redisFree(c);
}

/* The RESP array of bulk strings for argv, written by hand: hiredis's
 * formatter (redisFormatCommandArgv, and redisCommandArgv through sds) costs
 * ~11k instructions for an admission call, this ~1k. Into buf when it fits
 * in cap, else into a malloc'd buffer; *out says which. Returns the length. */
static size_t
resp_format(int argc, const char **argv, const size_t *lens, char *buf, size_t cap, char **out)
{
    size_t need = 1 + 20 + 2, pos = 0;
    char *o;

    for (int i = 0; i < argc; i++)
        need += 1 + 20 + 2 + lens[i] + 2;
    o = buf != NULL && need <= cap ? buf : aigw_xmalloc(need);
    o[pos++] = '*';
    pos += aigw_fmt_int(o + pos, argc);
    o[pos++] = '\r';
    o[pos++] = '\n';
    for (int i = 0; i < argc; i++) {
        o[pos++] = '$';
        pos += aigw_fmt_int(o + pos, (long long)lens[i]);
        o[pos++] = '\r';
        o[pos++] = '\n';
        memcpy(o + pos, argv[i], lens[i]);
        pos += lens[i];
        o[pos++] = '\r';
        o[pos++] = '\n';
    }
    *out = o;
    return pos;
}

/* The same, always in a buffer of its own (the pipe keeps commands queued). */
static int
resp_format_alloc(int argc, const char **argv, const size_t *lens, char **out)
{
    size_t len = resp_format(argc, argv, lens, NULL, 0, out);

    return len > INT_MAX ? -1 : (int)len;
}

redisReply *
aigw_redis_cmd(redisContext *c, int argc, const char **argv, const size_t *argvlen)
{
    char stack[1024], *cmd;
    size_t len = resp_format(argc, argv, argvlen, stack, sizeof(stack), &cmd);
    void *reply = NULL;
    int rc = redisAppendFormattedCommand(c, cmd, len);

    if (cmd != stack)
        free(cmd);
    if (rc != REDIS_OK || redisGetReply(c, &reply) != REDIS_OK)
        return NULL;
    return reply;
}

long long
aigw_redis_key_int(struct aigw_redis_pool *pool, const char *cmd, const char *key)
{
    const char *argv[2] = {cmd, key};
    size_t lens[2] = {strlen(cmd), strlen(key)};
    redisContext *rc = aigw_redis_acquire(pool);
    redisReply *r;
    long long v = -1;

    if (rc == NULL)
        return -1;
    r = aigw_redis_cmd(rc, 2, argv, lens);
    aigw_redis_release(pool, rc);
    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    freeReplyObject(r);
    return v;
}

void
aigw_redis_script_init(struct aigw_redis_script *s)
{
    unsigned char md[20];
    unsigned int n = 0;

    EVP_Digest(s->source, strlen(s->source), md, &n, EVP_sha1(), NULL);
    aigw_hex(md, 20, s->sha1);
}

/* argv/lens of "EVALSHA sha nkeys keys... args..."; nk holds the count's
 * text. Returns argc, or -1 when there are too many arguments. */
static int
eval_argv(const struct aigw_redis_script *s, int nkeys, const char **keys, int nargs, const char **args,
          const char *argv[EVAL_MAX_ARGS], size_t lens[EVAL_MAX_ARGS], char nk[16])
{
    int argc = 0;

    if (3 + nkeys + nargs > EVAL_MAX_ARGS)
        return -1;
    aigw_fmt_int(nk, nkeys);
    argv[argc++] = s->by_source ? "EVAL" : "EVALSHA";
    argv[argc++] = s->by_source ? s->source : s->sha1;
    argv[argc++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[argc++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[argc++] = args[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return argc;
}

static bool
is_noscript(const redisReply *r)
{
    return r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
}

redisReply *
aigw_redis_eval(redisContext *c, const struct aigw_redis_script *s, int nkeys, const char **keys,
                int nargs, const char **args)
{
    const char *argv[EVAL_MAX_ARGS];
    size_t lens[EVAL_MAX_ARGS];
    char nk[16];
    redisReply *r;
    int argc = eval_argv(s, nkeys, keys, nargs, args, argv, lens, nk);

    if (argc < 0)
        return NULL;
    r = aigw_redis_cmd(c, argc, argv, lens);
    if (is_noscript(r)) {
        freeReplyObject(r);
        argv[0] = "EVAL";
        argv[1] = s->source;
        lens[0] = 4;
        lens[1] = strlen(s->source);
        r = aigw_redis_cmd(c, argc, argv, lens);
    }
    return r;
}

/* A write, not a PING: a Redis that answers but refuses writes (a replica
 * after a failover, READONLY; OOM; MISCONF) fails every admission script,
 * yet answered PING with PONG, so /readyz said ready while every AI
 * request got 503. The key expires on its own; SET is a command aigw
 * needs anyway (the answer cache). */
bool
aigw_redis_ping(struct aigw_redis_pool *pool, int max_ms)
{
    int t = max_ms > 0 && max_ms < pool->timeout_ms ? max_ms : pool->timeout_ms;
    redisContext *c = acquire_within(pool, t);
    const char *argv[5] = {"SET", "aigw:ready", "1", "PX", "10000"};
    size_t lens[5] = {3, 10, 1, 2, 5};
    struct timeval tv = {t / 1000, (t % 1000) * 1000};
    redisReply *r;
    bool ok;

    if (c == NULL)
        return false;
    if (t != pool->timeout_ms)
        redisSetTimeout(c, tv);
    r = aigw_redis_cmd(c, 5, argv, lens);
    if (t != pool->timeout_ms && c->err == 0) { /* back to the pool's timeout (a timed-out one is dropped) */
        tv = (struct timeval){pool->timeout_ms / 1000, (pool->timeout_ms % 1000) * 1000};
        redisSetTimeout(c, tv);
    }
    ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "OK") == 0;
    if (r != NULL && r->type == REDIS_REPLY_ERROR)
        aigw_redis_log_error(pool, "write refused", r->str);
    freeReplyObject(r);
    aigw_redis_release(pool, c);
    return ok;
}

/* ---- the pipe ---- */

/* Redis's clock is sampled (TIME) when the pipe connects and then every
 * CLOCK_SYNC_MS; a sample whose round trip took longer than CLOCK_MAX_RTT_MS
 * is too vague to use. */
#define CLOCK_SYNC_MS 10000
#define CLOCK_RETRY_MS 1000
#define CLOCK_MAX_RTT_MS 50
#define CLOCK_UNKNOWN INT64_MIN

struct pipe_op {
    struct pipe_op *next;
    char *cmd;                  /* RESP-encoded (resp_format_alloc) */
    int len;
    const struct aigw_redis_script *script; /* NOSCRIPT: load it and send cmd again */
    bool retried;
    bool failed;                /* its deadline passed: done(NULL) ran, a late reply is dropped */
    bool is_time;               /* the pipe's clock sample */
    bool is_setup;              /* the connection's AUTH or SELECT */
    int64_t deadline_ms, sent_ms;
    aigw_redis_done_fn done;    /* NULL: the pipe's own command (AUTH, SELECT, SCRIPT LOAD, TIME) */
    void *ud;
};

struct op_list {
    struct pipe_op *head, *tail;
};

struct aigw_redis_pipe {
    struct aigw_redis_pool *pool; /* endpoint, timeout, error log */
    pthread_t thread;
    bool started;
    int epfd, wake_fd;
    pthread_mutex_t lock;       /* guards inbox, signaled, closed */
    struct op_list inbox;       /* handed over, not yet taken by the thread */
    bool signaled;              /* wake_fd written since the thread last took the inbox */
    bool closed;                /* cancelled: calls fail at once */
    atomic_bool stopping;       /* cancel: finish what is queued and sent, then end */
    atomic_int in_flight;       /* callers' calls not answered yet + a direct call (0 or 1) */
    _Atomic int64_t clock_offset_ms; /* Redis's TIME minus aigw_now_ms(); CLOCK_UNKNOWN */
    /* the thread's (the canceller's once the thread is joined) */
    redisContext *ctx;
    struct op_list sent;        /* in the order their replies come back */
    struct op_list held;        /* taken, waiting while the connection is stalled */
    struct pipe_op *live;       /* first op in sent that has not failed (NULL: none) */
    struct pipe_op *setup;      /* the connection's last AUTH or SELECT, until it is answered: the
                                 * callers' calls wait in held till then (NULL: none pending) */
    bool want_out;              /* registered for EPOLLOUT: output left to write */
    int64_t next_sync_ms;       /* when to sample Redis's clock again */
};

static void
ops_push(struct op_list *l, struct pipe_op *op)
{
    op->next = NULL;
    if (l->tail != NULL)
        l->tail->next = op;
    else
        l->head = op;
    l->tail = op;
}

static struct pipe_op *
ops_pop(struct op_list *l)
{
    struct pipe_op *op = l->head;

    if (op != NULL) {
        l->head = op->next;
        if (l->head == NULL)
            l->tail = NULL;
    }
    return op;
}

/* Append all of src to dst; src is left empty. */
static void
ops_concat(struct op_list *dst, struct op_list *src)
{
    if (src->head == NULL)
        return;
    if (dst->tail != NULL)
        dst->tail->next = src->head;
    else
        dst->head = src->head;
    dst->tail = src->tail;
    src->head = src->tail = NULL;
}

static struct pipe_op *
op_new(char *cmd, int len, aigw_redis_done_fn done, void *ud, int timeout_ms)
{
    struct pipe_op *op = aigw_xcalloc(1, sizeof(*op));

    op->cmd = cmd;
    op->len = len;
    op->done = done;
    op->ud = ud;
    op->deadline_ms = aigw_now_ms() + timeout_ms;
    return op;
}

/* Hand the reply (or NULL) to the caller, once: a failed op's caller has
 * had its NULL already, so its late reply is dropped. */
static void
op_answer(struct aigw_redis_pipe *p, struct pipe_op *op, redisReply *r)
{
    if (op->done != NULL && !op->failed) {
        atomic_fetch_sub(&p->in_flight, 1);
        op->done(r, op->ud);
        return;
    }
    /* the pipe's own SCRIPT LOAD or TIME refused (a refused AUTH or SELECT
     * dropped the connection before: pipe_read) */
    if (op->done == NULL && r != NULL && r->type == REDIS_REPLY_ERROR)
        aigw_redis_log_error(p->pool, "the pipe's own command failed", r->str);
    freeReplyObject(r);
}

/* Answer (or fail) the op and free it. */
static void
op_finish(struct aigw_redis_pipe *p, struct pipe_op *op, redisReply *r)
{
    op_answer(p, op, r);
    free(op->cmd);
    free(op);
}

/* Its deadline passed: the caller gets NULL now; the op stays where it is
 * (in sent its reply may still come and must be matched). */
static void
op_fail(struct aigw_redis_pipe *p, struct pipe_op *op)
{
    op_answer(p, op, NULL);
    op->failed = true;
}

static void
ops_fail(struct aigw_redis_pipe *p, struct op_list *l)
{
    struct pipe_op *op;

    while ((op = ops_pop(l)) != NULL)
        op_finish(p, op, NULL);
}

/* The connection is unusable (I/O error, protocol error, every call on it
 * past its deadline, its AUTH or SELECT refused): drop it and fail what was
 * sent on it, and the calls held for its AUTH or SELECT to be answered (as
 * on a Redis that cannot be reached: connecting again for them at once
 * would only spin). The next call connects again. */
static void
pipe_drop(struct aigw_redis_pipe *p, const char *what, const char *detail)
{
    bool setting_up = p->setup != NULL;

    aigw_redis_log_error(p->pool, what, detail);
    epoll_ctl(p->epfd, EPOLL_CTL_DEL, p->ctx->fd, NULL);
    redisFree(p->ctx);
    p->ctx = NULL;
    p->want_out = false;
    p->live = NULL;
    p->setup = NULL;
    ops_fail(p, &p->sent);
    if (setting_up)
        ops_fail(p, &p->held);
}

static void
pipe_append(struct aigw_redis_pipe *p, struct pipe_op *op)
{
    redisAppendFormattedCommand(p->ctx, op->cmd, (size_t)op->len);
    op->sent_ms = aigw_now_ms();
    ops_push(&p->sent, op);
    if (p->live == NULL)
        p->live = op;
}

/* The pipe's own commands: a clock sample, a new connection's AUTH or
 * SELECT, a SCRIPT LOAD. */
enum own_kind { OWN_TIME, OWN_SETUP, OWN_LOAD };

/* A command of the pipe's own: its reply is dropped (a TIME reply is read
 * as a clock sample first; a refused setup drops the connection). */
static void
pipe_append_own(struct aigw_redis_pipe *p, int argc, const char **argv, const size_t *lens, enum own_kind kind)
{
    char *cmd = NULL;
    int len = resp_format_alloc(argc, argv, lens, &cmd);

    if (len > 0) {
        struct pipe_op *op = op_new(cmd, len, NULL, NULL, p->pool->timeout_ms);

        op->is_time = kind == OWN_TIME;
        op->is_setup = kind == OWN_SETUP;
        pipe_append(p, op);
    }
}

/* Write what the connection has buffered; wait for EPOLLOUT if not all. */
static void
pipe_flush(struct aigw_redis_pipe *p)
{
    int done = 0;

    if (p->ctx == NULL)
        return;
    if (redisBufferWrite(p->ctx, &done) != REDIS_OK) {
        pipe_drop(p, "connection dropped", p->ctx->errstr);
        return;
    }
    if (p->want_out != !done) {
        struct epoll_event ev = {.events = EPOLLIN | (done ? 0 : EPOLLOUT), .data.u32 = 1};

        p->want_out = !done;
        epoll_ctl(p->epfd, EPOLL_CTL_MOD, p->ctx->fd, &ev);
    }
}

/* Ask for Redis's clock (the reply is read by clock_sample). */
static void
pipe_sync_clock(struct aigw_redis_pipe *p)
{
    const char *argv[1] = {"TIME"};
    size_t lens[1] = {4};

    p->next_sync_ms = aigw_now_ms() + CLOCK_SYNC_MS;
    pipe_append_own(p, 1, argv, lens, OWN_TIME);
}

static bool
pipe_connect(struct aigw_redis_pipe *p)
{
    struct aigw_redis_pool *pool = p->pool;
    redisContext *c = pool->path ? redisConnectUnixNonBlock(pool->path) : redisConnectNonBlock(pool->host, pool->port);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = 1};

    if (c == NULL || c->err || epoll_ctl(p->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
        aigw_redis_log_error(pool, "connect failed", c != NULL && c->err ? c->errstr : "out of resources");
        redisFree(c);
        return false;
    }
    redisEnableKeepAlive(c);
    p->ctx = c;
    p->want_out = true; /* the connect completes when the socket is writable */
    if (pool->pass != NULL) {
        const char *argv[3] = {"AUTH", pool->user != NULL ? pool->user : pool->pass, pool->pass};
        size_t lens[3] = {4, strlen(argv[1]), strlen(pool->pass)};

        pipe_append_own(p, pool->user != NULL ? 3 : 2, argv, lens, OWN_SETUP);
    }
    if (pool->db != 0) {
        char db[16];
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, 0};

        lens[1] = (size_t)snprintf(db, sizeof(db), "%d", pool->db);
        pipe_append_own(p, 2, argv, lens, OWN_SETUP);
    }
    /* Redis runs what follows a refused AUTH or SELECT all the same (as
     * whoever the connection is without it, on database 0): no caller's
     * call goes out before they are accepted */
    p->setup = p->sent.tail;
    pipe_sync_clock(p);
    return true;
}

/* Stalled: the oldest call sent is past its deadline with no reply yet.
 * Nothing more goes out on the connection then (calls wait in held) until
 * it answers, or until every call on it is past its deadline and it is
 * dropped: a call is written only to a connection that answers, so a call
 * that failed at its deadline was either never sent or sent to a Redis
 * that was stalled already. */
static bool
pipe_stalled(const struct aigw_redis_pipe *p)
{
    return p->sent.head != NULL && p->sent.head->failed;
}

/* Send the held calls, in one write where it fits, unless the connection
 * is stalled or its AUTH or SELECT is not answered yet. */
static void
pipe_send(struct aigw_redis_pipe *p)
{
    struct pipe_op *op;

    if (p->held.head == NULL || pipe_stalled(p))
        return;
    if (p->ctx == NULL && !pipe_connect(p)) {
        ops_fail(p, &p->held);
        return;
    }
    if (p->setup != NULL) { /* they go once it is answered (pipe_read) */
        pipe_flush(p);
        return;
    }
    while ((op = ops_pop(&p->held)) != NULL)
        pipe_append(p, op);
    pipe_flush(p);
}

/* A NOSCRIPT answer (Redis restarted, SCRIPT FLUSH): load the script and
 * send the call again, once. */
static bool
pipe_retry_noscript(struct aigw_redis_pipe *p, struct pipe_op *op, redisReply *r)
{
    const char *argv[3] = {"SCRIPT", "LOAD", NULL};
    size_t lens[3] = {6, 4, 0};

    if (op->script == NULL || op->retried || op->failed || !is_noscript(r))
        return false;
    freeReplyObject(r);
    op->retried = true;
    argv[2] = op->script->source;
    lens[2] = strlen(op->script->source);
    pipe_append_own(p, 3, argv, lens, OWN_LOAD);
    pipe_append(p, op);
    pipe_flush(p);
    return true;
}

/* A TIME reply: offset of Redis's clock from ours, taken at the middle of
 * the round trip, so it is off by at most half the round trip. */
static void
clock_sample(struct aigw_redis_pipe *p, const struct pipe_op *op, const redisReply *r)
{
    int64_t now = aigw_now_ms(), rtt = now - op->sent_ms;
    long long s, us;

    if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING
        || r->element[1]->type != REDIS_REPLY_STRING || rtt > CLOCK_MAX_RTT_MS) {
        if (atomic_load(&p->clock_offset_ms) == CLOCK_UNKNOWN)
            p->next_sync_ms = now + CLOCK_RETRY_MS;
        return;
    }
    s = strtoll(r->element[0]->str, NULL, 10);
    us = strtoll(r->element[1]->str, NULL, 10);
    atomic_store(&p->clock_offset_ms, s * 1000 + us / 1000 - (op->sent_ms + now) / 2);
}

static void
pipe_read(struct aigw_redis_pipe *p)
{
    if (redisBufferRead(p->ctx) != REDIS_OK) {
        pipe_drop(p, "connection dropped", p->ctx->errstr);
        return;
    }
    while (p->ctx != NULL) {
        void *reply = NULL;
        struct pipe_op *op;

        if (redisGetReplyFromReader(p->ctx, &reply) != REDIS_OK) {
            pipe_drop(p, "protocol error", p->ctx->errstr);
            return;
        }
        if (reply == NULL)
            return;
        pool_answered(p->pool); /* Redis answers: the pool's calls need not wait for a probe */
        op = ops_pop(&p->sent);
        if (op == NULL) {
            freeReplyObject(reply);
            pipe_drop(p, "protocol error", "a reply nobody asked for");
            return;
        }
        if (op == p->live)
            p->live = op->next;
        if (op == p->setup && ((redisReply *)reply)->type != REDIS_REPLY_ERROR)
            p->setup = NULL; /* set up: the held calls go out (pipe_send) */
        if (op->is_setup && ((redisReply *)reply)->type == REDIS_REPLY_ERROR) {
            /* the pipe's own AUTH or SELECT refused (a wrong password): an
             * unauthenticated connection, or one on the wrong database,
             * must not carry the callers' scripts */
            char why[160];

            snprintf(why, sizeof(why), "%s", ((redisReply *)reply)->str);
            freeReplyObject(reply);
            free(op->cmd);
            free(op);
            pipe_drop(p, "the connection's setup was refused", why);
            return;
        }
        if (op->is_time)
            clock_sample(p, op, reply);
        if (!pipe_retry_noscript(p, op, reply))
            op_finish(p, op, reply);
    }
}

/* Fail every call whose deadline has passed: sent ones and held ones (never
 * sent, so they did nothing), each list in the order of its deadlines. Once
 * every call on the connection has failed, nothing will answer on it in
 * time: drop it. */
static void
pipe_expire(struct aigw_redis_pipe *p)
{
    int64_t now = aigw_now_ms();
    bool expired = false;

    while (p->live != NULL && p->live->deadline_ms <= now) {
        op_fail(p, p->live);
        p->live = p->live->next;
        expired = true;
    }
    while (p->held.head != NULL && p->held.head->deadline_ms <= now) {
        op_finish(p, ops_pop(&p->held), NULL);
        expired = true;
    }
    if (expired)
        aigw_redis_log_error(p->pool, "timed out", "no reply within redis.timeout_ms");
    if (p->ctx != NULL && p->sent.head != NULL && p->live == NULL)
        pipe_drop(p, "connection dropped", "no call on it answered in time; connecting again");
}

/* epoll_wait's timeout: until the next deadline of a call, or the next
 * clock sample (retried sooner while Redis's clock is not known). */
static int
pipe_wait_ms(const struct aigw_redis_pipe *p)
{
    int64_t now = aigw_now_ms(), next = p->next_sync_ms, left;

    if (p->live != NULL && p->live->deadline_ms < next)
        next = p->live->deadline_ms;
    if (p->held.head != NULL && p->held.head->deadline_ms < next)
        next = p->held.head->deadline_ms;
    left = next - now;
    return left <= 0 ? 0 : left > 1000 ? 1000 : (int)left;
}

/* Sample Redis's clock when it is due, connecting for it if need be. */
static void
pipe_clock_due(struct aigw_redis_pipe *p)
{
    if (aigw_now_ms() < p->next_sync_ms || atomic_load(&p->stopping) || pipe_stalled(p))
        return; /* (a stalled connection is not kept open by a sample) */
    if (p->ctx != NULL) {
        pipe_sync_clock(p);
    } else if (!pipe_connect(p)) { /* (connecting asks for the clock) */
        p->next_sync_ms = aigw_now_ms() + CLOCK_RETRY_MS;
        return;
    }
    pipe_flush(p);
}

static void *
pipe_run(void *arg)
{
    struct aigw_redis_pipe *p = arg;
    struct epoll_event ev[4];

    for (;;) {
        struct op_list in;
        int n;

        pthread_mutex_lock(&p->lock);
        in = p->inbox;
        p->inbox.head = p->inbox.tail = NULL;
        p->signaled = false;
        pthread_mutex_unlock(&p->lock);
        ops_concat(&p->held, &in);
        pipe_expire(p);
        pipe_send(p);
        pipe_clock_due(p);
        /* stopping: new calls are refused (closed), so once every call
         * handed over is answered or has failed there is nothing left to
         * wait for (late replies to failed calls are not waited for) */
        if (atomic_load(&p->stopping) && p->live == NULL && p->held.head == NULL)
            break;
        n = epoll_wait(p->epfd, ev, 4, pipe_wait_ms(p));
        for (int i = 0; i < n; i++) {
            if (ev[i].data.u32 == 0) {
                aigw_eventfd_drain(p->wake_fd);
                continue;
            }
            if (p->ctx != NULL && (ev[i].events & EPOLLOUT))
                pipe_flush(p);
            if (p->ctx != NULL && (ev[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
                pipe_read(p);
        }
    }
    return NULL;
}

struct aigw_redis_pipe *
aigw_redis_pipe_start(struct aigw_redis_pool *pool)
{
    struct aigw_redis_pipe *p = aigw_xcalloc(1, sizeof(*p));
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 0};

    p->pool = pool;
    atomic_init(&p->clock_offset_ms, CLOCK_UNKNOWN);
    pthread_mutex_init(&p->lock, NULL);
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (p->epfd < 0 || p->wake_fd < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->wake_fd, &ev) != 0
        || pthread_create(&p->thread, NULL, pipe_run, p) != 0) {
        char eb[128];

        aigw_log(LOG_ERR, "redis: cannot start the pipe thread: %s", strerror_r(errno, eb, sizeof(eb)));
        p->closed = true; /* calls fail at once; the pool still serves everything else */
        return p;
    }
    p->started = true;
    return p;
}

/* Queue a formatted command (cmd: malloc'd, taken over; NULL = could not be
 * formatted) and wake the thread if it is not awake already. */
static void
pipe_submit(struct aigw_redis_pipe *p, char *cmd, int len, const struct aigw_redis_script *s,
            aigw_redis_done_fn done, void *ud)
{
    struct pipe_op *op;
    bool wake;

    if (p == NULL || len <= 0) {
        free(cmd);
        done(NULL, ud);
        return;
    }
    op = op_new(cmd, len, done, ud, p->pool->timeout_ms);
    op->script = s;
    atomic_fetch_add(&p->in_flight, 1);
    pthread_mutex_lock(&p->lock);
    if (p->closed) {
        pthread_mutex_unlock(&p->lock);
        op_finish(p, op, NULL);
        return;
    }
    ops_push(&p->inbox, op);
    wake = !p->signaled;
    p->signaled = true;
    pthread_mutex_unlock(&p->lock);
    if (wake)
        aigw_eventfd_signal(p->wake_fd);
}

void
aigw_redis_pipe_eval(struct aigw_redis_pipe *p, const struct aigw_redis_script *s, int nkeys, const char **keys,
                     int nargs, const char **args, aigw_redis_done_fn done, void *ud)
{
    const char *argv[EVAL_MAX_ARGS];
    size_t lens[EVAL_MAX_ARGS];
    char nk[16], *cmd = NULL;
    int argc, len = -1;

    if (p != NULL && (argc = eval_argv(s, nkeys, keys, nargs, args, argv, lens, nk)) > 0)
        len = resp_format_alloc(argc, argv, lens, &cmd);
    pipe_submit(p, cmd, len, s, done, ud);
}

bool
aigw_redis_pipe_try_direct(struct aigw_redis_pipe *p, const struct aigw_redis_script *s, int nkeys,
                           const char **keys, int nargs, const char **args, redisReply **reply)
{
    int idle = 0;
    redisContext *c;

    /* only while nothing else is in flight: with a second caller on the
     * direct path every worker could end up blocked on Redis again and the
     * pipe would never batch anything (measured: S1 back to the blocking
     * numbers) */
    if (p == NULL || !atomic_compare_exchange_strong(&p->in_flight, &idle, 1))
        return false;
    /* Redis stalled: the pool would refuse the call, and a Redis that is
     * only slow for a moment still answers on the pipe, which also waits
     * for a frozen one without blocking this thread */
    if (aigw_redis_pool_stalled(p->pool)) {
        atomic_fetch_sub(&p->in_flight, 1);
        return false;
    }
    *reply = NULL;
    if ((c = aigw_redis_acquire(p->pool)) != NULL) {
        *reply = aigw_redis_eval(c, s, nkeys, keys, nargs, args);
        aigw_redis_release(p->pool, c);
    }
    atomic_fetch_sub(&p->in_flight, 1);
    return true;
}

int64_t
aigw_redis_pipe_deadline(struct aigw_redis_pipe *p)
{
    int64_t off = p != NULL ? atomic_load(&p->clock_offset_ms) : CLOCK_UNKNOWN;
    int t;

    if (off == CLOCK_UNKNOWN)
        return -1;
    t = p->pool->timeout_ms;
    return aigw_now_ms() + off + t - t / 4;
}

void
aigw_redis_deadline_arg(struct aigw_redis_pipe *p, char out[24])
{
    int64_t d = aigw_redis_pipe_deadline(p);

    if (d >= 0)
        aigw_fmt_int(out, d);
    else
        out[0] = '\0';
}

void
aigw_redis_pipe_cancel(struct aigw_redis_pipe *p)
{
    struct op_list in;

    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->closed = true;
    pthread_mutex_unlock(&p->lock);
    if (p->started) { /* the thread sends what is queued and waits for the replies */
        atomic_store(&p->stopping, true);
        aigw_eventfd_signal(p->wake_fd);
        pthread_join(p->thread, NULL);
        p->started = false;
    }
    pthread_mutex_lock(&p->lock);
    in = p->inbox;
    p->inbox.head = p->inbox.tail = NULL;
    pthread_mutex_unlock(&p->lock);
    ops_fail(p, &p->sent); /* sent, then held, then the inbox: in the order they came */
    ops_fail(p, &p->held);
    ops_fail(p, &in);
    if (p->ctx != NULL) {
        redisFree(p->ctx);
        p->ctx = NULL;
    }
}

void
aigw_redis_pipe_destroy(struct aigw_redis_pipe *p)
{
    if (p == NULL)
        return;
    aigw_redis_pipe_cancel(p);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    if (p->epfd >= 0)
        close(p->epfd);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* ---- the outbox ---- */

/* At most this many scripts, and this many bytes of their arguments, wait. */
#define OUTBOX_MAX 10000
#define OUTBOX_MAX_BYTES (32u << 20)

struct outbox_entry {
    struct outbox_entry *next;
    struct aigw_redis_outbox *box;
    const struct aigw_redis_script *script;
    int64_t until_ms;
    const char *what;
    aigw_redis_outbox_fn done;
    void *ud;
    int nkeys, nargs;
    size_t bytes;
    const char *argv[EVAL_MAX_ARGS]; /* keys then args, into text */
    char text[];
};

/* Losses (given up, dropped) are logged at most once per this: during a
 * long outage every request that ended while Redis was out of reach leaves
 * a take-back here, and a line per request flooded the log. */
#define OUTBOX_LOG_MS 1000

struct aigw_redis_outbox {
    struct aigw_redis_pipe *pipe;
    pthread_mutex_t lock;        /* guards head, n, bytes and the loss report */
    struct outbox_entry *head;   /* waiting for the next retry */
    size_t n, bytes;             /* waiting + in flight */
    size_t lost;                 /* losses not logged yet */
    const char *lost_what, *lost_why; /* the last of them (static strings) */
    int64_t next_log_ms;         /* when the next loss may be logged */
};

/* Log the losses counted since the last report: with force, or when the
 * time has come. The caller holds nothing. */
static void
outbox_report(struct aigw_redis_outbox *o, bool force)
{
    int64_t now = aigw_now_ms();
    const char *what = "", *why = "";
    size_t n = 0;

    pthread_mutex_lock(&o->lock);
    if (o->lost > 0 && (force || now >= o->next_log_ms)) {
        n = o->lost;
        what = o->lost_what;
        why = o->lost_why;
        o->lost = 0;
        o->next_log_ms = now + OUTBOX_LOG_MS;
    }
    pthread_mutex_unlock(&o->lock);
    if (n == 1)
        aigw_log(LOG_ERR, "redis: %s %s", what, why);
    else if (n > 1)
        aigw_log(LOG_ERR, "redis: %zu writes Redis did not take were lost (the last: %s %s)", n, what, why);
}

/* A write leaves the outbox unconfirmed: counted, logged (see OUTBOX_LOG_MS). */
static void
outbox_lost(struct aigw_redis_outbox *o, const char *what, const char *why)
{
    pthread_mutex_lock(&o->lock);
    o->lost++;
    o->lost_what = what;
    o->lost_why = why;
    pthread_mutex_unlock(&o->lock);
    outbox_report(o, false);
}

/* e leaves the outbox: done(reply or NULL), then it is freed. */
static void
outbox_end(struct outbox_entry *e, redisReply *r)
{
    struct aigw_redis_outbox *o = e->box;

    pthread_mutex_lock(&o->lock);
    o->n--;
    o->bytes -= e->bytes;
    pthread_mutex_unlock(&o->lock);
    if (e->done != NULL)
        e->done(r, e->ud);
    else
        freeReplyObject(r);
    free(e);
}

static void
outbox_give_up(struct outbox_entry *e, const char *why)
{
    if (why != NULL)
        outbox_lost(e->box, e->what, why);
    outbox_end(e, NULL);
}

static void outbox_send(struct outbox_entry *e);

/* The pipe's thread (or the canceller's): the script's reply. */
static void
outbox_answered(redisReply *r, void *ud)
{
    struct outbox_entry *e = ud;
    struct aigw_redis_outbox *o = e->box;

    if (r != NULL && r->type != REDIS_REPLY_ERROR) {
        outbox_end(e, r);
        return;
    }
    freeReplyObject(r);
    if (aigw_now_ms() >= e->until_ms) {
        outbox_give_up(e, "given up (Redis did not confirm it in time)");
        return;
    }
    pthread_mutex_lock(&o->lock); /* again at the next retry */
    e->next = o->head;
    o->head = e;
    pthread_mutex_unlock(&o->lock);
}

static void
outbox_send(struct outbox_entry *e)
{
    aigw_redis_pipe_eval(e->box->pipe, e->script, e->nkeys, e->argv, e->nargs, e->argv + e->nkeys,
                         outbox_answered, e);
}

struct aigw_redis_outbox *
aigw_redis_outbox_create(struct aigw_redis_pipe *pipe)
{
    struct aigw_redis_outbox *o = aigw_xcalloc(1, sizeof(*o));

    o->pipe = pipe;
    pthread_mutex_init(&o->lock, NULL);
    return o;
}

void
aigw_redis_outbox_eval(struct aigw_redis_outbox *o, const struct aigw_redis_script *s, int nkeys,
                       const char **keys, int nargs, const char **args, int64_t until_ms, const char *what,
                       aigw_redis_outbox_fn done, void *ud)
{
    struct outbox_entry *e;
    size_t bytes = 0, off = 0;
    bool room;

    if (o == NULL || nkeys < 0 || nargs < 0 || nkeys + nargs > EVAL_MAX_ARGS) {
        if (done != NULL)
            done(NULL, ud);
        return;
    }
    for (int i = 0; i < nkeys + nargs; i++)
        bytes += strlen(i < nkeys ? keys[i] : args[i - nkeys]) + 1;
    pthread_mutex_lock(&o->lock);
    room = o->n < OUTBOX_MAX && o->bytes + bytes <= OUTBOX_MAX_BYTES;
    if (room) {
        o->n++;
        o->bytes += bytes;
    }
    pthread_mutex_unlock(&o->lock);
    if (!room) {
        outbox_lost(o, what, "dropped (the outbox is full)");
        if (done != NULL)
            done(NULL, ud);
        return;
    }
    e = aigw_xcalloc(1, sizeof(*e) + bytes);
    e->box = o;
    e->script = s;
    e->until_ms = until_ms;
    e->what = what;
    e->done = done;
    e->ud = ud;
    e->nkeys = nkeys;
    e->nargs = nargs;
    e->bytes = bytes;
    for (int i = 0; i < nkeys + nargs; i++) {
        const char *v = i < nkeys ? keys[i] : args[i - nkeys];
        size_t len = strlen(v) + 1;

        memcpy(e->text + off, v, len);
        e->argv[i] = e->text + off;
        off += len;
    }
    outbox_send(e);
}

redisReply *
aigw_redis_outbox_eval_now(struct aigw_redis_outbox *o, const struct aigw_redis_script *s,
                           const struct aigw_redis_script *again, int nkeys, const char **keys, int nargs,
                           const char **args, int64_t until_ms, const char *what, aigw_redis_outbox_fn done,
                           void *ud)
{
    struct aigw_redis_pool *pool = o != NULL && o->pipe != NULL ? o->pipe->pool : NULL;
    redisContext *rc = pool != NULL ? aigw_redis_acquire(pool) : NULL;
    redisReply *r = NULL;

    if (rc != NULL) {
        r = aigw_redis_eval(rc, s, nkeys, keys, nargs, args);
        aigw_redis_release(pool, rc);
    }
    if (r != NULL && r->type != REDIS_REPLY_ERROR)
        return r;
    freeReplyObject(r);
    aigw_redis_outbox_eval(o, again != NULL ? again : s, nkeys, keys, nargs, args, until_ms, what, done, ud);
    return NULL;
}

size_t
aigw_redis_outbox_retry(struct aigw_redis_outbox *o)
{
    struct outbox_entry *e, *next;
    size_t n = 0;

    if (o == NULL)
        return 0;
    pthread_mutex_lock(&o->lock);
    e = o->head;
    o->head = NULL;
    pthread_mutex_unlock(&o->lock);
    for (; e != NULL; e = next, n++) {
        next = e->next;
        if (aigw_now_ms() >= e->until_ms)
            outbox_give_up(e, "given up (Redis was not reachable in time)");
        else
            outbox_send(e); /* a failure puts it back */
    }
    outbox_report(o, false); /* what the last second lost */
    return n;
}

size_t
aigw_redis_outbox_pending(struct aigw_redis_outbox *o)
{
    size_t n = 0;

    if (o == NULL)
        return 0;
    pthread_mutex_lock(&o->lock);
    n = o->n;
    pthread_mutex_unlock(&o->lock);
    return n;
}

void
aigw_redis_outbox_destroy(struct aigw_redis_outbox *o)
{
    struct outbox_entry *e, *next;

    if (o == NULL)
        return;
    pthread_mutex_lock(&o->lock);
    e = o->head;
    o->head = NULL;
    if (o->n > 0)
        aigw_log(LOG_ERR, "redis: %zu scripts Redis did not confirm given up at exit", o->n);
    pthread_mutex_unlock(&o->lock);
    for (; e != NULL; e = next) {
        next = e->next;
        outbox_give_up(e, NULL);
    }
    outbox_report(o, true);
    pthread_mutex_destroy(&o->lock);
    free(o);
}
