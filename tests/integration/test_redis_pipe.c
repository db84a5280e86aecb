/* test_redis_pipe.c - the pipelined async Redis connection (redis.h) against
 * the real Redis of the test stack: many threads' calls each get their own
 * reply, exactly once; NOSCRIPT recovery; a stalled Redis fails calls at the
 * timeout and the pipe recovers; each call fails at its own deadline and a
 * deadline-taking script does nothing once it is past; a silent server is
 * given up on; an unreachable Redis fails at once, and so does a connection
 * whose AUTH or SELECT Redis refused, with no call run on it; cancel
 * finishes what was handed over (answered, or failed at the
 * timeout) and refuses the rest; the direct-path slot; the outbox's losses
 * against an unreachable Redis logged with a count, not a line each; the
 * pool looks at a connection before use only when it sat idle. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "aigw/redis.h"
#include "aigw/util.h"
#include "testlib.h"

#define THREADS 8
#define PER_THREAD 250

/* Returns {ARGV[1], INCR KEYS[1]}, or {ARGV[1], -1} without counting once
 * Redis's clock is past ARGV[2] (a deadline from aigw_redis_pipe_deadline):
 * the shape the admission script relies on. */
static struct aigw_redis_script deadline_script = {
    .source = "local t = redis.call('TIME')\n"
              "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
              "if now > tonumber(ARGV[2]) then return {ARGV[1], -1} end\n"
              "return {ARGV[1], redis.call('INCR', KEYS[1])}\n",
};

/* Returns {ARGV[1], INCR KEYS[1]}: the tag proves the reply is the caller's,
 * the counter that every call ran exactly once. */
static struct aigw_redis_script echo_script = {
    .source = "return {ARGV[1], redis.call('INCR', KEYS[1])}\n",
};

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int answered, nulls, wrong;
    char tag[32];
};

static void
waiter_init(struct waiter *w, const char *tag)
{
    memset(w, 0, sizeof(*w));
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    snprintf(w->tag, sizeof(w->tag), "%s", tag);
}

static void
waiter_fini(struct waiter *w)
{
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

static void
on_reply(redisReply *r, void *ud)
{
    struct waiter *w = ud;

    pthread_mutex_lock(&w->lock);
    if (r == NULL)
        w->nulls++;
    else if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING
             || strcmp(r->element[0]->str, w->tag) != 0)
        w->wrong++;
    w->answered++;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    freeReplyObject(r);
}

/* Wait until w has n answers (or timeout_ms); returns the count. */
static int
wait_answers(struct waiter *w, int n, int timeout_ms)
{
    struct timespec dl;
    int got;

    aigw_deadline_ms(&dl, timeout_ms);
    pthread_mutex_lock(&w->lock);
    while (w->answered < n)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &dl) != 0)
            break;
    got = w->answered;
    pthread_mutex_unlock(&w->lock);
    return got;
}

static void
call(struct aigw_redis_pipe *p, const char *key, struct waiter *w)
{
    const char *keys[1] = {key};
    const char *args[1] = {w->tag};

    aigw_redis_pipe_eval(p, &echo_script, 1, keys, 1, args, on_reply, w);
}

/* A command on a fresh pool connection of the test's own. */
static redisReply *
sync_cmd(struct aigw_redis_pool *pool, int argc, const char **argv)
{
    size_t lens[8];
    redisContext *c = aigw_redis_acquire(pool);
    redisReply *r;

    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    if (c == NULL)
        return NULL;
    r = aigw_redis_cmd(c, argc, argv, lens);
    aigw_redis_release(pool, c);
    return r;
}

/* CLIENT PAUSE <ms> ALL: every client stalls, the pipe's too. */
static void
pause_redis(struct aigw_redis_pool *pool, const char *ms)
{
    const char *argv[4] = {"CLIENT", "PAUSE", ms, "ALL"};

    freeReplyObject(sync_cmd(pool, 4, argv));
}

struct worker {
    struct aigw_redis_pipe *pipe;
    struct waiter w;
    int id;
};

static void *
worker_run(void *arg)
{
    struct worker *wk = arg;

    for (int i = 0; i < PER_THREAD; i++)
        call(wk->pipe, "test:pipe:count", &wk->w);
    return NULL;
}

static void
test_many_threads(struct aigw_redis_pool *pool, struct aigw_redis_pipe *pipe)
{
    struct worker wk[THREADS];
    pthread_t th[THREADS];
    const char *del[2] = {"DEL", "test:pipe:count"}, *get[2] = {"GET", "test:pipe:count"};
    redisReply *r;
    int answered = 0, nulls = 0, wrong = 0;

    freeReplyObject(sync_cmd(pool, 2, del));
    for (int i = 0; i < THREADS; i++) {
        char tag[16];

        wk[i].pipe = pipe;
        wk[i].id = i;
        snprintf(tag, sizeof(tag), "thread-%d", i);
        waiter_init(&wk[i].w, tag);
        pthread_create(&th[i], NULL, worker_run, &wk[i]);
    }
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        answered += wait_answers(&wk[i].w, PER_THREAD, 10000);
        nulls += wk[i].w.nulls;
        wrong += wk[i].w.wrong;
        waiter_fini(&wk[i].w);
    }
    CHECK(answered == THREADS * PER_THREAD, "every call answered: %d of %d", answered, THREADS * PER_THREAD);
    CHECK(nulls == 0, "no call failed: %d", nulls);
    CHECK(wrong == 0, "each reply went to its own caller: %d misrouted", wrong);
    r = sync_cmd(pool, 2, get);
    CHECK(r != NULL && r->type == REDIS_REPLY_STRING && strtol(r->str, NULL, 10) == THREADS * PER_THREAD,
          "every call ran exactly once: counter %s", r && r->type == REDIS_REPLY_STRING ? r->str : "?");
    freeReplyObject(r);
}

static void
test_noscript(struct aigw_redis_pool *pool, struct aigw_redis_pipe *pipe)
{
    const char *flush[2] = {"SCRIPT", "FLUSH"}, *exists[3] = {"SCRIPT", "EXISTS", echo_script.sha1};
    struct waiter w;
    redisReply *r;

    waiter_init(&w, "after-flush");
    freeReplyObject(sync_cmd(pool, 2, flush));
    r = sync_cmd(pool, 3, exists);
    CHECK(r != NULL && r->type == REDIS_REPLY_ARRAY && r->element[0]->integer == 0, "the script is gone");
    freeReplyObject(r);
    call(pipe, "test:pipe:count", &w);
    CHECK(wait_answers(&w, 1, 5000) == 1, "answered after SCRIPT FLUSH");
    CHECK(w.nulls == 0 && w.wrong == 0, "the call succeeded (NOSCRIPT -> SCRIPT LOAD -> again): %d null, %d wrong",
          w.nulls, w.wrong);
    r = sync_cmd(pool, 3, exists);
    CHECK(r != NULL && r->type == REDIS_REPLY_ARRAY && r->element[0]->integer == 1, "the script is loaded again");
    freeReplyObject(r);
    waiter_fini(&w);
}

/* CLIENT PAUSE stalls every client, the pipe's too: its call must fail at
 * the pipe's timeout, and the pipe must work again once Redis does. */
static void
test_stall(struct aigw_redis_pool *pool, struct aigw_redis_pipe *pipe)
{
    struct waiter w;

    waiter_init(&w, "stalled");
    pause_redis(pool, "2500");
    call(pipe, "test:pipe:count", &w);
    CHECK(wait_answers(&w, 1, 5000) == 1, "a stalled call is answered (by the timeout)");
    CHECK(w.nulls == 1, "... with NULL: Redis did not answer in time");
    usleep(2600 * 1000); /* the pause is over */
    snprintf(w.tag, sizeof(w.tag), "recovered");
    call(pipe, "test:pipe:count", &w);
    CHECK(wait_answers(&w, 2, 5000) == 2, "the next call is answered");
    CHECK(w.nulls == 1 && w.wrong == 0, "... with its reply: the pipe reconnected (%d null, %d wrong)", w.nulls,
          w.wrong);
    waiter_fini(&w);
}

/* One call's outcome: answered when, NULL or not, and the count it got. */
struct outcome {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool answered, null;
    long long count;
    int64_t at_ms;
};

static void
outcome_init(struct outcome *o)
{
    memset(o, 0, sizeof(*o));
    pthread_mutex_init(&o->lock, NULL);
    pthread_cond_init(&o->cond, NULL);
}

static void
on_outcome(redisReply *r, void *ud)
{
    struct outcome *o = ud;

    pthread_mutex_lock(&o->lock);
    o->answered = true;
    o->at_ms = aigw_now_ms();
    o->null = r == NULL;
    o->count = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2
                       && r->element[1]->type == REDIS_REPLY_INTEGER
                   ? r->element[1]->integer
                   : -2;
    pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->lock);
    freeReplyObject(r);
}

static bool
outcome_wait(struct outcome *o, int timeout_ms)
{
    struct timespec dl;
    bool got;

    aigw_deadline_ms(&dl, timeout_ms);
    pthread_mutex_lock(&o->lock);
    while (!o->answered)
        if (pthread_cond_timedwait(&o->cond, &o->lock, &dl) != 0)
            break;
    got = o->answered;
    pthread_mutex_unlock(&o->lock);
    pthread_cond_destroy(&o->cond);
    pthread_mutex_destroy(&o->lock);
    return got;
}

/* A call of deadline_script with the pipe's deadline (or the one given). */
static void
deadline_call(struct aigw_redis_pipe *p, const char *tag, int64_t deadline, struct outcome *o)
{
    const char *keys[1] = {"test:pipe:deadline"};
    char dl[24];
    const char *args[2] = {tag, dl};

    snprintf(dl, sizeof(dl), "%lld", (long long)(deadline >= 0 ? deadline : aigw_redis_pipe_deadline(p)));
    aigw_redis_pipe_eval(p, &deadline_script, 1, keys, 2, args, on_outcome, o);
}

/* The pipe knows Redis's clock (here the same host's: so its estimate is
 * the wall clock), and a stalled Redis fails each call at its OWN
 * deadline: a call behind one that timed out keeps its connection and gets
 * its reply when Redis resumes. Both were sent before Redis resumed and
 * both deadlines are past by then, so the script counts neither: nothing
 * happens for a caller that was told its call failed.
 * For that Redis must resume after the first call's timeout and the second
 * call's script deadline (3/4 of the timeout after it was sent), and before
 * the second call's timeout: a window of 1/4 of the timeout. With the main
 * pool's 1000 ms that left ~50 ms for a late wake-up of this thread or
 * the pipe's, so the stall runs on a pool of its own with a timeout of
 * STALL_TIMEOUT_MS: the second call goes out 1/4 of it after the first,
 * Redis resumes 1/8 of it past the first call's timeout, every margin is
 * 1/8 of it (500 ms). */
#define STALL_TIMEOUT_MS 4000

static void
test_deadlines(struct aigw_redis_pool *pool, struct aigw_redis_pipe *pipe)
{
    const char *del[2] = {"DEL", "test:pipe:deadline"}, *get[2] = {"GET", "test:pipe:deadline"};
    const int t = STALL_TIMEOUT_MS, gap = t / 4, resume = t + t / 8;
    struct aigw_redis_pool *slow;
    struct aigw_redis_pipe *sp;
    struct outcome a, b;
    struct timespec ts;
    int64_t dl = -1, t0, wall;
    char pause_ms[16], err[128];
    redisReply *r;

    for (int i = 0; i < 300 && (dl = aigw_redis_pipe_deadline(pipe)) < 0; i++)
        usleep(10 * 1000);
    clock_gettime(CLOCK_REALTIME, &ts);
    wall = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    CHECK(dl >= 0, "the pipe sampled Redis's clock");
    CHECK(dl - wall >= 700 && dl - wall <= 800,
          "deadline = Redis's clock + 3/4 of the 1000 ms timeout (%lld ms ahead of the wall clock)",
          (long long)(dl - wall));
    CHECK(aigw_redis_pipe_deadline(NULL) == -1, "no pipe: no deadline");
    slow = aigw_redis_pool_create(tl_env("AIGW_REDIS_URL"), 2, t, err, sizeof(err));
    if (slow == NULL) {
        CHECK(false, "redis pool with a %d ms timeout: %s", t, err);
        return;
    }
    sp = aigw_redis_pipe_start(slow);
    for (int i = 0; i < 300 && aigw_redis_pipe_deadline(sp) < 0; i++)
        usleep(10 * 1000);
    CHECK(aigw_redis_pipe_deadline(sp) >= 0, "the second pipe sampled Redis's clock");
    freeReplyObject(sync_cmd(pool, 2, del));
    outcome_init(&a);
    outcome_init(&b);
    snprintf(pause_ms, sizeof(pause_ms), "%d", resume);
    pause_redis(pool, pause_ms);
    t0 = aigw_now_ms();
    deadline_call(sp, "a", -1, &a);
    usleep((useconds_t)gap * 1000);
    deadline_call(sp, "b", -1, &b);
    CHECK(aigw_now_ms() - t0 < gap + t / 8, "the second call went out in time (%lld ms after the first)",
          (long long)(aigw_now_ms() - t0));
    CHECK(outcome_wait(&a, 2 * t) && a.null, "the first call failed (NULL)");
    CHECK(a.at_ms - t0 >= t - 100, "... at its deadline, not before (%lld ms)", (long long)(a.at_ms - t0));
    CHECK(outcome_wait(&b, 2 * t) && !b.null, "the call behind it was not failed with it: it got its reply");
    CHECK(b.count == -1, "... the script's 'too late' (started after its deadline: %lld)", b.count);
    CHECK(b.at_ms - t0 >= resume - 100, "... once Redis resumed (%lld ms)", (long long)(b.at_ms - t0));
    r = sync_cmd(pool, 2, get);
    CHECK(r != NULL && r->type == REDIS_REPLY_NIL, "neither late call counted: %s",
          r != NULL && r->type == REDIS_REPLY_STRING ? r->str : "(nil)");
    freeReplyObject(r);
    aigw_redis_pipe_destroy(sp);
    aigw_redis_pool_destroy(slow);
}

/* A "Redis" that accepts connections and never answers (a black hole: a
 * host gone without a reset). */
struct blackhole {
    int fd, port;
    atomic_int accepted;
    atomic_bool stop;
    pthread_t th;
};

static void *
blackhole_run(void *arg)
{
    struct blackhole *bh = arg;
    int conns[64], n = 0;

    while (!atomic_load(&bh->stop)) {
        struct pollfd pfd[65];
        int np = 0;

        pfd[np++] = (struct pollfd){.fd = bh->fd, .events = POLLIN};
        for (int i = 0; i < n; i++)
            pfd[np++] = (struct pollfd){.fd = conns[i], .events = POLLIN};
        if (poll(pfd, (nfds_t)np, 50) <= 0)
            continue;
        if ((pfd[0].revents & POLLIN) && n < 64) {
            int c = accept(bh->fd, NULL, NULL);

            if (c >= 0) {
                conns[n++] = c;
                atomic_fetch_add(&bh->accepted, 1);
            }
        }
        for (int i = 1; i < np; i++) {
            char buf[4096];

            if (pfd[i].revents & POLLIN)
                (void)!read(pfd[i].fd, buf, sizeof(buf)); /* swallowed, never answered */
        }
    }
    for (int i = 0; i < n; i++)
        close(conns[i]);
    return NULL;
}

/* With calls coming all the time, the pipe must not sit on a connection
 * that never answers (every call would fail until TCP gave up, minutes):
 * calls wait while the oldest one is overdue, so every call on the
 * connection fails within one timeout and the pipe connects again. */
static void
test_blackhole(void)
{
    struct blackhole bh = {0};
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    struct aigw_redis_pool *pool;
    struct aigw_redis_pipe *pipe;
    struct waiter w;
    char err[128], url[64];
    int calls = 0;

    bh.fd = socket(AF_INET, SOCK_STREAM, 0);
    if (bh.fd < 0 || bind(bh.fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(bh.fd, 16) != 0
        || getsockname(bh.fd, (struct sockaddr *)&sa, &sl) != 0) {
        CHECK(0, "black hole listens");
        return;
    }
    bh.port = ntohs(sa.sin_port);
    pthread_create(&bh.th, NULL, blackhole_run, &bh);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", bh.port);
    pool = aigw_redis_pool_create(url, 2, 300, err, sizeof(err));
    pipe = aigw_redis_pipe_start(pool);
    waiter_init(&w, "void");
    for (int64_t end = aigw_now_ms() + 2000; aigw_now_ms() < end; calls++) {
        call(pipe, "test:pipe:count", &w);
        usleep(50 * 1000);
    }
    CHECK(wait_answers(&w, calls, 3000) == calls && w.nulls == calls, "every call to the black hole failed: %d/%d",
          w.nulls, calls);
    CHECK(atomic_load(&bh.accepted) >= 3, "the pipe gave up on the silent connection and connected again (%d times)",
          atomic_load(&bh.accepted));
    CHECK(aigw_redis_pipe_deadline(pipe) == -1, "no clock from a Redis that never answered");
    aigw_redis_pipe_destroy(pipe);
    aigw_redis_pool_destroy(pool);
    waiter_fini(&w);
    atomic_store(&bh.stop, true);
    pthread_join(bh.th, NULL);
    close(bh.fd);
}

static void
test_unreachable(void)
{
    char err[128], url[64];
    struct aigw_redis_pool *pool;
    struct aigw_redis_pipe *pipe;
    struct waiter w;

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", tl_free_port());
    pool = aigw_redis_pool_create(url, 2, 300, err, sizeof(err));
    pipe = aigw_redis_pipe_start(pool);
    waiter_init(&w, "nobody");
    call(pipe, "test:pipe:count", &w);
    call(pipe, "test:pipe:count", &w);
    CHECK(wait_answers(&w, 2, 5000) == 2, "calls to an unreachable Redis are answered");
    CHECK(w.nulls == 2, "... with NULL (%d)", w.nulls);
    aigw_redis_pipe_destroy(pipe);
    aigw_redis_pool_destroy(pool);
    waiter_fini(&w);
}

/* A pipe whose own AUTH or SELECT Redis refuses: the test Redis has no
 * password (AUTH is refused, and a connection without it may run anything,
 * as the default user) and 16 databases (SELECT 999 is refused, and the
 * connection stays on database 0, the one checked here). The script is
 * loaded, so a call that went out behind the refused command would run at
 * once. Every call fails (NULL), before its timeout, and none ran. */
static void
test_setup_refused(struct aigw_redis_pool *pool)
{
    static const char *const WHAT[2] = {"a refused AUTH", "a refused SELECT"};
    const char *load[3] = {"SCRIPT", "LOAD", echo_script.source}, *del[2] = {"DEL", "test:pipe:setup"},
               *exists[2] = {"EXISTS", "test:pipe:setup"};

    freeReplyObject(sync_cmd(pool, 3, load));
    freeReplyObject(sync_cmd(pool, 2, del));
    for (int i = 0; i < 2; i++) {
        char err[128], *url = tl_sprintf("%s%s", tl_env("AIGW_REDIS_URL"), i == 0 ? "" : "/999");
        struct aigw_redis_pool *bad = aigw_redis_pool_create(url, 2, 2000, err, sizeof(err));
        struct aigw_redis_pipe *pipe;
        struct waiter w;
        redisReply *r;
        int64_t t0;

        CHECK(bad != NULL, "%s: pool: %s", WHAT[i], bad == NULL ? err : "ok");
        free(url);
        if (bad == NULL)
            continue;
        if (i == 0)
            aigw_redis_pool_set_password(bad, "not-the-password");
        pipe = aigw_redis_pipe_start(bad);
        waiter_init(&w, "setup-refused");
        t0 = aigw_now_ms();
        for (int k = 0; k < 5; k++) {
            const char *keys[1] = {"test:pipe:setup"}, *args[1] = {w.tag};

            aigw_redis_pipe_eval(pipe, &echo_script, 1, keys, 1, args, on_reply, &w);
        }
        CHECK(wait_answers(&w, 5, 5000) == 5 && w.nulls == 5, "%s: every call failed (%d answered, %d null)", WHAT[i],
              w.answered, w.nulls);
        CHECK(aigw_now_ms() - t0 < 1500, "%s: at once, not at the timeout (%lld ms)", WHAT[i],
              (long long)(aigw_now_ms() - t0));
        r = sync_cmd(pool, 2, exists);
        CHECK(r != NULL && r->type == REDIS_REPLY_INTEGER && r->integer == 0, "%s: no call ran", WHAT[i]);
        freeReplyObject(r);
        freeReplyObject(sync_cmd(pool, 2, del));
        aigw_redis_pipe_destroy(pipe);
        aigw_redis_pool_destroy(bad);
        waiter_fini(&w);
    }
}

static void
test_cancel(struct aigw_redis_pool *pool, struct aigw_redis_pipe *pipe)
{
    struct waiter w;
    int64_t t0;

    waiter_init(&w, "cancelled");
    pause_redis(pool, "3000");
    for (int i = 0; i < 5; i++)
        call(pipe, "test:pipe:count", &w);
    t0 = aigw_now_ms();
    aigw_redis_pipe_cancel(pipe);
    CHECK(w.answered == 5 && w.nulls == 5,
          "cancel with Redis stalled: every pending call failed (at the timeout) before it returns: %d/%d",
          w.answered, w.nulls);
    CHECK(aigw_now_ms() - t0 < 2500, "cancel waits for the timeout, not for Redis (%lld ms)",
          (long long)(aigw_now_ms() - t0));
    call(pipe, "test:pipe:count", &w);
    CHECK(w.answered == 6 && w.nulls == 6, "a call after cancel fails at once");
    aigw_redis_pipe_cancel(pipe); /* idempotent */
    usleep(3100 * 1000);
    waiter_fini(&w);
}

/* A healthy Redis: what was handed over before cancel still gets its real
 * reply (a request admitted during shutdown is answered, not refused), and
 * cancel returns only once it has. */
static void
test_cancel_finishes(struct aigw_redis_pool *pool)
{
    struct aigw_redis_pipe *pipe = aigw_redis_pipe_start(pool);
    struct waiter w;

    waiter_init(&w, "last-words");
    for (int i = 0; i < 50; i++)
        call(pipe, "test:pipe:count", &w);
    aigw_redis_pipe_cancel(pipe);
    CHECK(w.answered == 50 && w.nulls == 0 && w.wrong == 0,
          "cancel finished the 50 calls handed over: %d answered, %d null, %d wrong", w.answered, w.nulls, w.wrong);
    aigw_redis_pipe_destroy(pipe);
    waiter_fini(&w);
}

/* A direct call that reports whether it got its own reply. */
static bool
direct(struct aigw_redis_pipe *p, const char *tag, bool *taken)
{
    const char *keys[1] = {"test:pipe:count"}, *args[1] = {tag};
    redisReply *r = NULL;
    bool ok;

    *taken = aigw_redis_pipe_try_direct(p, &echo_script, 1, keys, 1, args, &r);
    ok = r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 2 && strcmp(r->element[0]->str, tag) == 0;
    freeReplyObject(r);
    return ok;
}

struct direct_bg {
    struct aigw_redis_pipe *pipe;
    bool taken, ok;
};

static void *
direct_run(void *arg)
{
    struct direct_bg *d = arg;

    d->ok = direct(d->pipe, "direct-bg", &d->taken);
    return NULL;
}

static void
test_direct_slot(struct aigw_redis_pool *pool, struct aigw_redis_pipe *pipe)
{
    struct direct_bg bg = {.pipe = pipe};
    struct waiter w;
    pthread_t th;
    bool taken, ok;

    ok = direct(pipe, "direct-1", &taken);
    CHECK(taken && ok, "idle pipe: the direct path is free and answers on the caller's thread");
    /* one caller at a time: two at once while Redis is paused, so whichever
     * gets the slot holds it for the pause and the other is turned away */
    pause_redis(pool, "600");
    pthread_create(&th, NULL, direct_run, &bg);
    ok = direct(pipe, "direct-2", &taken);
    pthread_join(th, NULL);
    CHECK(taken != bg.taken, "one caller at a time on the direct path (main %d, other thread %d)", taken, bg.taken);
    CHECK(taken ? ok : bg.ok, "the one on the direct path got its reply after the pause");
    /* nor while a call is in flight on the pipe */
    waiter_init(&w, "on-the-pipe");
    pause_redis(pool, "600");
    call(pipe, "test:pipe:count", &w); /* counted in flight before it returns */
    ok = direct(pipe, "direct-3", &taken);
    CHECK(!taken, "not while a call is in flight on the pipe");
    CHECK(wait_answers(&w, 1, 5000) == 1 && w.nulls == 0, "the pipe call was answered after the pause");
    ok = direct(pipe, "direct-4", &taken);
    CHECK(taken && ok, "free again once nothing is in flight");
    CHECK(!aigw_redis_pipe_try_direct(NULL, &echo_script, 0, NULL, 0, NULL, NULL), "no pipe: never direct");
    waiter_fini(&w);
}

/* Whether a connection waits on the listening socket fd within ms. */
static bool
connection_waits(int fd, int ms)
{
    struct pollfd pfd = {.fd = fd, .events = POLLIN};

    return poll(&pfd, 1, ms) == 1;
}

/* The pool's look at an idle connection (a poll(2), replaced when the peer
 * closed it or sent something) is for connections that sat idle: one drawn
 * again right after its release is used as it is, so a pool in steady use
 * (the admission's direct call of every cache hit) costs no syscall more.
 * A fake server that speaks first on the connection stands for Redis
 * closing it. */
static void
test_idle_check(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), s1 = -1, s2 = -1;
    char err[128], url[64];
    struct aigw_redis_pool *pool;
    redisContext *c;

    CHECK(lfd >= 0 && bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == 0 && listen(lfd, 8) == 0 &&
              getsockname(lfd, (struct sockaddr *)&sa, &len) == 0,
          "idle check: a fake server listens");
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ntohs(sa.sin_port));
    pool = aigw_redis_pool_create(url, 2, 500, err, sizeof(err));
    c = aigw_redis_acquire(pool);
    CHECK(c != NULL && connection_waits(lfd, 1000), "idle check: the pool connects");
    s1 = accept(lfd, NULL, NULL);
    aigw_redis_release(pool, c);
    CHECK(write(s1, "+unasked\r\n", 10) == 10, "idle check: the server speaks");
    usleep(10 * 1000);
    c = aigw_redis_acquire(pool); /* 10 ms after its release */
    CHECK(c != NULL, "idle check: drawn again");
    CHECK(!connection_waits(lfd, 50), "idle check: a connection drawn right after its release is not looked at");
    aigw_redis_release(pool, c);
    while (connection_waits(lfd, 0) && s2 < 0)
        s2 = accept(lfd, NULL, NULL);
    usleep(200 * 1000);
    c = aigw_redis_acquire(pool); /* idle 200 ms: looked at, readable, replaced */
    CHECK(c != NULL && connection_waits(lfd, 1000), "idle check: one that sat idle is looked at and replaced");
    aigw_redis_release(pool, c);
    aigw_redis_pool_destroy(pool);
    if (s2 >= 0)
        close(s2);
    close(s1);
    close(lfd);
}

static atomic_int outbox_done, outbox_nulls;

static void
on_outbox_done(redisReply *r, void *ud)
{
    (void)ud;
    atomic_fetch_add(&outbox_done, 1);
    if (r == NULL)
        atomic_fetch_add(&outbox_nulls, 1);
    freeReplyObject(r);
}

/* The outbox against an unreachable Redis, given more than it holds: each
 * write ends once (given up at its deadline, or dropped for want of room),
 * and the losses are logged with their count, a few lines in all: during a
 * long outage every request that ended leaves a take-back there, and a line
 * each flooded the log. */
static void
test_outbox_losses(void)
{
    enum { N = 10050 }; /* the outbox holds 10,000 */
    char err[128], url[64], path[] = "/tmp/aigw-outbox-log-XXXXXX", line[512];
    const char *keys[1] = {"test:outbox"}, *args[1] = {"x"};
    struct aigw_redis_pool *pool;
    struct aigw_redis_pipe *pipe;
    struct aigw_redis_outbox *o;
    int fd = mkstemp(path), saved = dup(STDERR_FILENO), lines = 0;
    long long counted = 0;
    size_t left;
    int64_t until;
    FILE *f;

    CHECK(fd >= 0 && saved >= 0, "outbox: a file for the log");
    if (fd < 0 || saved < 0)
        return;
    fflush(stderr);
    dup2(fd, STDERR_FILENO);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", tl_free_port());
    pool = aigw_redis_pool_create(url, 2, 300, err, sizeof(err));
    pipe = aigw_redis_pipe_start(pool);
    o = aigw_redis_outbox_create(pipe);
    until = aigw_now_ms() + 500;
    for (int i = 0; i < N; i++)
        aigw_redis_outbox_eval(o, &echo_script, 1, keys, 1, args, until, "a test write", on_outbox_done, NULL);
    for (int i = 0; i < 100 && aigw_redis_outbox_pending(o) > 0; i++) {
        aigw_redis_outbox_retry(o);
        usleep(50 * 1000);
    }
    left = aigw_redis_outbox_pending(o);
    aigw_redis_pipe_cancel(pipe);
    aigw_redis_outbox_destroy(o);
    aigw_redis_pipe_destroy(pipe);
    aigw_redis_pool_destroy(pool);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    CHECK(left == 0, "outbox: every write given up after its deadline (%zu left)", left);
    CHECK(atomic_load(&outbox_done) == N && atomic_load(&outbox_nulls) == N,
          "outbox: each write ended once, unconfirmed (%d, %d NULL; want %d)", atomic_load(&outbox_done),
          atomic_load(&outbox_nulls), N);
    f = fdopen(fd, "r");
    rewind(f);
    while (fgets(line, sizeof(line), f) != NULL) {
        const char *p = strstr(line, "redis: ");
        long long n = 1;

        if (strstr(line, "a test write") == NULL || p == NULL)
            continue;
        lines++;
        if (sscanf(p, "redis: %lld writes", &n) != 1)
            n = 1;
        counted += n;
    }
    fclose(f);
    unlink(path);
    CHECK(lines >= 1 && lines <= 8, "outbox: the losses take a few log lines, not one each (%d lines)", lines);
    CHECK(counted == N, "outbox: and the log counts every one (%lld, want %d)", counted, N);
}

int
main(void)
{
    char err[128];
    struct aigw_redis_pool *pool = aigw_redis_pool_create(tl_env("AIGW_REDIS_URL"), 4, 1000, err, sizeof(err));
    struct aigw_redis_pipe *pipe;

    if (pool == NULL) {
        fprintf(stderr, "redis pool: %s\n", err);
        return 1;
    }
    aigw_redis_script_init(&echo_script);
    aigw_redis_script_init(&deadline_script);
    pipe = aigw_redis_pipe_start(pool);
    test_direct_slot(pool, pipe);
    test_many_threads(pool, pipe);
    test_noscript(pool, pipe);
    test_stall(pool, pipe);
    test_deadlines(pool, pipe);
    test_unreachable();
    test_outbox_losses();
    test_idle_check();
    test_setup_refused(pool);
    test_blackhole();
    test_cancel_finishes(pool);
    test_cancel(pool, pipe);
    aigw_redis_pipe_destroy(pipe);
    aigw_redis_pool_destroy(pool);
    return tl_done();
}
