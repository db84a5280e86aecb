/* sse.c - the byte pipe behind a streaming response (see sse.h) */
#include "aigw/sse.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/util.h"

struct aigw_sse {
    pthread_mutex_t lock;      /* guards everything below */
    atomic_int refs;
    struct MHD_Connection *conn; /* NULL once the request is gone */
    char *buf;
    size_t off, len, cap;      /* unread bytes are buf[off..len) */
    size_t high_water;
    long chunks;
    bool closed;               /* the producer is done */
    bool waiting;              /* conn is suspended until there is news */
    bool full;                 /* the producer was told to pause */
    bool started;              /* something was ever written */
};

struct aigw_sse *
aigw_sse_create(struct MHD_Connection *conn, size_t high_water)
{
    struct aigw_sse *s = aigw_xcalloc(1, sizeof(*s));

    pthread_mutex_init(&s->lock, NULL);
    atomic_init(&s->refs, 2);
    s->conn = conn;
    s->high_water = high_water > 0 ? high_water : 65536;
    return s;
}

static void
unref(struct aigw_sse *s)
{
    if (atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s->buf);
    free(s);
}

/* Under the lock: resume the consumer if it waits. */
static void
wake_locked(struct aigw_sse *s)
{
    if (s->waiting && s->conn != NULL) {
        s->waiting = false;
        MHD_resume_connection(s->conn);
    }
}

/* Under the lock: append, compacting or growing the buffer. */
static void
append_locked(struct aigw_sse *s, const char *p, size_t n)
{
    if (s->off > 0 && s->off == s->len)
        s->off = s->len = 0;
    if (s->len + n > s->cap && s->off > 0) {
        memmove(s->buf, s->buf + s->off, s->len - s->off);
        s->len -= s->off;
        s->off = 0;
    }
    if (s->len + n > s->cap) {
        size_t cap = s->cap > 0 ? s->cap : 4096;

        while (cap < s->len + n)
            cap *= 2;
        s->buf = aigw_xrealloc(s->buf, cap);
        s->cap = cap;
    }
    memcpy(s->buf + s->len, p, n);
    s->len += n;
    s->started = true;
}

bool
aigw_sse_write(struct aigw_sse *s, const char *p, size_t n, bool content)
{
    bool full = false;

    pthread_mutex_lock(&s->lock);
    if (s->conn != NULL && n > 0) {
        append_locked(s, p, n);
        if (content)
            s->chunks++;
        if (s->len - s->off >= s->high_water)
            s->full = full = true;
        wake_locked(s);
    }
    pthread_mutex_unlock(&s->lock);
    return full;
}

void
aigw_sse_close(struct aigw_sse *s)
{
    pthread_mutex_lock(&s->lock);
    s->closed = true;
    wake_locked(s);
    pthread_mutex_unlock(&s->lock);
    unref(s);
}

bool
aigw_sse_wait(struct aigw_sse *s)
{
    bool ready;

    pthread_mutex_lock(&s->lock);
    ready = s->len > s->off || s->closed;
    if (!ready && s->conn != NULL) {
        s->waiting = true;
        MHD_suspend_connection(s->conn);
    }
    pthread_mutex_unlock(&s->lock);
    return ready;
}

ssize_t
aigw_sse_read(struct aigw_sse *s, char *buf, size_t max, bool *drained)
{
    size_t n;

    *drained = false;
    pthread_mutex_lock(&s->lock);
    n = s->len - s->off;
    if (n == 0) {
        pthread_mutex_unlock(&s->lock);
        return s->closed ? -1 : 0;
    }
    if (n > max)
        n = max;
    memcpy(buf, s->buf + s->off, n);
    s->off += n;
    if (s->full && s->len - s->off <= s->high_water / 2) {
        s->full = false;
        *drained = true;
    }
    pthread_mutex_unlock(&s->lock);
    return (ssize_t)n;
}

void
aigw_sse_append(struct aigw_sse *s, const char *p, size_t n)
{
    pthread_mutex_lock(&s->lock);
    append_locked(s, p, n);
    pthread_mutex_unlock(&s->lock);
}

void
aigw_sse_state(struct aigw_sse *s, bool *started, bool *closed, long *chunks)
{
    pthread_mutex_lock(&s->lock);
    if (started != NULL)
        *started = s->started;
    if (closed != NULL)
        *closed = s->closed;
    if (chunks != NULL)
        *chunks = s->chunks;
    pthread_mutex_unlock(&s->lock);
}

void
aigw_sse_detach(struct aigw_sse *s)
{
    pthread_mutex_lock(&s->lock);
    s->conn = NULL;
    s->waiting = false;
    pthread_mutex_unlock(&s->lock);
    unref(s);
}
