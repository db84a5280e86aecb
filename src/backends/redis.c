/* redis.c - checkout pool of sync hiredis contexts; every command has a timeout */
#include "aigw/redis.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/util.h"

struct aigw_redis_pool {
    char *host;            /* NULL for unix sockets */
    char *path;            /* unix socket path */
    int port, db, size, timeout_ms;
    pthread_mutex_t lock;  /* guards idle, n_idle, n_out */
    pthread_cond_t freed;
    redisContext **idle;
    int n_idle, n_out;
    _Atomic int64_t last_error_log_ms;
};

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
    if (strchr(rest, '@') != NULL) {
        snprintf(err, errlen, "redis url: credentials in the URL are not supported");
        return -1;
    }
    const char *colon = strrchr(rest, ':'), *slash = strchr(rest, '/');
    size_t hlen = colon ? (size_t)(colon - rest) : slash ? (size_t)(slash - rest) : strlen(rest);
    char portbuf[16] = "6379";

    if (hlen == 0) {
        snprintf(err, errlen, "redis url: host is missing");
        return -1;
    }
    p->host = aigw_xstrndup(rest, hlen);
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

struct aigw_redis_pool *
aigw_redis_pool_create(const char *url, int size, int timeout_ms, char *err, size_t errlen)
{
    struct aigw_redis_pool *p = aigw_xcalloc(1, sizeof(*p));

    if (parse_url(p, url, err, errlen) != 0) {
        free(p->host);
        free(p->path);
        free(p);
        return NULL;
    }
    p->size = size;
    p->timeout_ms = timeout_ms;
    p->idle = aigw_xcalloc((size_t)size, sizeof(redisContext *));
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
    free(p->host);
    free(p->path);
    free(p);
}

static void
log_error(struct aigw_redis_pool *p, const char *what, const char *detail)
{
    int64_t now = aigw_now_ms(), last = atomic_load(&p->last_error_log_ms);

    aigw_metrics_count_redis_error();
    /* an outage would otherwise log once per request */
    if (now - last < 1000 || !atomic_compare_exchange_strong(&p->last_error_log_ms, &last, now))
        return;
    aigw_log(LOG_ERR, "redis: %s: %s", what, detail);
}

static redisContext *
connect_one(struct aigw_redis_pool *p)
{
    struct timeval tv = {p->timeout_ms / 1000, (p->timeout_ms % 1000) * 1000};
    redisContext *c = p->path ? redisConnectUnixWithTimeout(p->path, tv)
                              : redisConnectWithTimeout(p->host, p->port, tv);

    if (c == NULL || c->err) {
        log_error(p, "connect failed", c ? c->errstr : "out of memory");
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    if (p->db != 0) {
        redisReply *r = redisCommand(c, "SELECT %d", p->db);

        if (r == NULL || r->type == REDIS_REPLY_ERROR) {
            log_error(p, "SELECT failed", r ? r->str : c->errstr);
            freeReplyObject(r);
            redisFree(c);
            return NULL;
        }
        freeReplyObject(r);
    }
    return c;
}

redisContext *
aigw_redis_acquire(struct aigw_redis_pool *p)
{
    struct timespec deadline;
    redisContext *c = NULL;
    int reserved = 0;

    aigw_deadline_ms(&deadline, p->timeout_ms);
    pthread_mutex_lock(&p->lock);
    while (p->n_idle == 0 && p->n_out >= p->size)
        if (pthread_cond_timedwait(&p->freed, &p->lock, &deadline) == ETIMEDOUT)
            break;
    if (p->n_idle > 0) {
        c = p->idle[--p->n_idle];
        p->n_out++;
    } else if (p->n_out < p->size) {
        p->n_out++;
        reserved = 1;
    }
    pthread_mutex_unlock(&p->lock);
    if (c == NULL && !reserved) {
        log_error(p, "pool exhausted", "all connections busy");
        return NULL;
    }
    if (c == NULL) {
        c = connect_one(p);
        if (c == NULL) {
            pthread_mutex_lock(&p->lock);
            p->n_out--;
            pthread_cond_signal(&p->freed);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return c;
}

void
aigw_redis_release(struct aigw_redis_pool *p, redisContext *c)
{
    if (c == NULL)
        return;
    if (c->err) {
        /* a timed-out context may still receive a late reply: never reuse it */
        log_error(p, "connection dropped", c->errstr);
        redisFree(c);
        c = NULL;
    }
    pthread_mutex_lock(&p->lock);
    p->n_out--;
    if (c != NULL)
        p->idle[p->n_idle++] = c;
    pthread_cond_signal(&p->freed);
    pthread_mutex_unlock(&p->lock);
}

redisReply *
aigw_redis_cmd(redisContext *c, int argc, const char **argv, const size_t *argvlen)
{
    return redisCommandArgv(c, argc, argv, argvlen);
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

redisReply *
aigw_redis_eval(redisContext *c, const struct aigw_redis_script *s, int nkeys, const char **keys,
                int nargs, const char **args)
{
    const char *argv[32];
    size_t lens[32];
    char nk[16];
    redisReply *r;
    int argc = 0;

    if (3 + nkeys + nargs > 32)
        return NULL;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[argc++] = "EVALSHA";
    argv[argc++] = s->sha1;
    argv[argc++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[argc++] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[argc++] = args[i];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    r = redisCommandArgv(c, argc, argv, lens);
    if (r != NULL && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        freeReplyObject(r);
        argv[0] = "EVAL";
        argv[1] = s->source;
        lens[0] = 4;
        lens[1] = strlen(s->source);
        r = redisCommandArgv(c, argc, argv, lens);
    }
    return r;
}

bool
aigw_redis_ping(struct aigw_redis_pool *pool)
{
    redisContext *c = aigw_redis_acquire(pool);
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    redisReply *r;
    bool ok;

    if (c == NULL)
        return false;
    r = aigw_redis_cmd(c, 1, argv, lens);
    ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    freeReplyObject(r);
    aigw_redis_release(pool, c);
    return ok;
}
