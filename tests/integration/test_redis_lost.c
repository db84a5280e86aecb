/* test_redis_lost.c - a script that ran in time but whose reply was held
 * up: aigw gives up on it (503), and what it did (a query of the month
 * reserved, a single-flight lock taken) is taken back from the request's
 * mark. A TCP relay between aigw and Redis holds Redis's replies back for
 * 2.5 s from the moment aigw sends a chosen command (redis.timeout_ms is
 * 1 s here), so the command runs at once and its reply comes too late; or
 * it passes the command on and then cuts every connection and refuses new
 * ones for a while, so the reply is lost and so are aigw's first attempts
 * to take back what the command did. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

#define PAIRS 64

static PGconn *owner;

struct relay {
    int lfd, port, redis_port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t lock;      /* guards trigger, skip */
    char trigger[96];          /* hold replies once aigw sends a command holding this ("" = off) */
    int skip;                  /* matches to let pass before the one that holds */
    int cut_ms;                /* > 0: the match cuts the connections for this long instead of holding */
    bool drop;                 /* with cut_ms: the matching command never reaches Redis either */
    atomic_llong hold_until_ms;
    atomic_llong cut_until_ms;
    atomic_int held;           /* times a hold began */
    int client[PAIRS], server[PAIRS];
};

static bool
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);

        if (w <= 0)
            return false;
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static void
pair_close(struct relay *rl, int i)
{
    close(rl->client[i]);
    close(rl->server[i]);
    rl->client[i] = rl->server[i] = -1;
}

static void
relay_accept(struct relay *rl)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)rl->redis_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int c = accept(rl->lfd, NULL, NULL), s, i;

    if (c < 0)
        return;
    if (aigw_now_ms() < atomic_load(&rl->cut_until_ms)) { /* Redis unreachable */
        close(c);
        return;
    }
    for (i = 0; i < PAIRS && rl->client[i] >= 0; i++)
        ;
    s = socket(AF_INET, SOCK_STREAM, 0);
    if (i == PAIRS || s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(c);
        if (s >= 0)
            close(s);
        return;
    }
    rl->client[i] = c;
    rl->server[i] = s;
}

/* aigw -> Redis: always at once; the trigger starts a hold of the way back. */
static void
from_client(struct relay *rl, int i)
{
    char buf[65536];
    ssize_t n = read(rl->client[i], buf, sizeof(buf));
    int cut = 0;
    bool drop = false;

    if (n <= 0) {
        pair_close(rl, i);
        return;
    }
    pthread_mutex_lock(&rl->lock);
    if (rl->trigger[0] != '\0' && memmem(buf, (size_t)n, rl->trigger, strlen(rl->trigger)) != NULL) {
        if (rl->skip > 0) {
            rl->skip--;
        } else {
            rl->trigger[0] = '\0';
            cut = rl->cut_ms;
            drop = cut > 0 && rl->drop;
            if (cut == 0)
                atomic_store(&rl->hold_until_ms, aigw_now_ms() + 2500);
            atomic_fetch_add(&rl->held, 1);
        }
    }
    pthread_mutex_unlock(&rl->lock);
    if (!drop && !write_all(rl->server[i], buf, (size_t)n))
        pair_close(rl, i);
    if (cut > 0) { /* the command reached Redis; its reply and the connections are lost */
        atomic_store(&rl->cut_until_ms, aigw_now_ms() + cut);
        usleep(50 * 1000); /* Redis reads it before it sees the connection go */
        /* closed, not shut down: Linux still takes data on a socket after
         * shutdown(SHUT_RD), and a command aigw sent meanwhile (the
         * take-back, on a connection it had not seen go yet) was read and
         * passed on to Redis, which is not out of reach then */
        for (int k = 0; k < PAIRS; k++)
            if (rl->client[k] >= 0)
                pair_close(rl, k);
    }
}

static void
from_server(struct relay *rl, int i)
{
    char buf[65536];
    ssize_t n = read(rl->server[i], buf, sizeof(buf));

    if (n <= 0 || !write_all(rl->client[i], buf, (size_t)n))
        pair_close(rl, i);
}

static void *
relay_run(void *arg)
{
    struct relay *rl = arg;

    while (!atomic_load(&rl->stop)) {
        struct pollfd p[1 + 2 * PAIRS];
        int idx[1 + 2 * PAIRS], n = 0;
        bool holding = aigw_now_ms() < atomic_load(&rl->hold_until_ms);

        p[n] = (struct pollfd){.fd = rl->lfd, .events = POLLIN};
        idx[n++] = -1;
        for (int i = 0; i < PAIRS; i++) {
            if (rl->client[i] < 0)
                continue;
            p[n] = (struct pollfd){.fd = rl->client[i], .events = POLLIN};
            idx[n++] = i;
            if (!holding) { /* while holding, Redis's bytes wait in the socket */
                p[n] = (struct pollfd){.fd = rl->server[i], .events = POLLIN};
                idx[n++] = PAIRS + i;
            }
        }
        if (poll(p, (nfds_t)n, 20) <= 0)
            continue;
        for (int k = 0; k < n; k++) {
            if (!(p[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            if (idx[k] < 0)
                relay_accept(rl);
            else if (idx[k] < PAIRS && rl->client[idx[k]] >= 0)
                from_client(rl, idx[k]);
            else if (idx[k] >= PAIRS && rl->server[idx[k] - PAIRS] >= 0)
                from_server(rl, idx[k] - PAIRS);
        }
    }
    for (int i = 0; i < PAIRS; i++)
        if (rl->client[i] >= 0)
            pair_close(rl, i);
    return NULL;
}

static void
relay_start(struct relay *rl)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    const char *url = tl_env("AIGW_REDIS_URL"), *colon = strrchr(url, ':');

    memset(rl, 0, sizeof(*rl));
    pthread_mutex_init(&rl->lock, NULL);
    for (int i = 0; i < PAIRS; i++)
        rl->client[i] = rl->server[i] = -1;
    rl->redis_port = colon != NULL ? (int)strtol(colon + 1, NULL, 10) : 6379;
    rl->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (rl->lfd < 0 || bind(rl->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(rl->lfd, 64) != 0 ||
        getsockname(rl->lfd, (struct sockaddr *)&a, &len) != 0)
        abort();
    rl->port = ntohs(a.sin_port);
    if (pthread_create(&rl->thread, NULL, relay_run, rl) != 0)
        abort();
}

static void
relay_stop(struct relay *rl)
{
    atomic_store(&rl->stop, true);
    pthread_join(rl->thread, NULL);
    close(rl->lfd);
    pthread_mutex_destroy(&rl->lock);
}

static void
relay_arm(struct relay *rl, const char *trigger, int skip, int cut_ms, bool drop)
{
    pthread_mutex_lock(&rl->lock);
    snprintf(rl->trigger, sizeof(rl->trigger), "%s", trigger);
    rl->skip = skip;
    rl->cut_ms = cut_ms;
    rl->drop = drop;
    pthread_mutex_unlock(&rl->lock);
}

/* Back to passing everything on, for the next case. */
static void
relay_disarm(struct relay *rl)
{
    relay_arm(rl, "", 0, 0, false);
    atomic_store(&rl->held, 0);
}

/* How often the trigger has fired, once it has (or after a second). */
static int
relay_fired(struct relay *rl)
{
    for (int i = 0; i < 50 && atomic_load(&rl->held) == 0; i++)
        usleep(20 * 1000);
    return atomic_load(&rl->held);
}

/* Keys matching pattern in Redis. */
static long long
count_keys(const char *pattern)
{
    return tl_redis_int("EVAL %s 0 %s", "return #redis.call('KEYS', ARGV[1])", pattern);
}

/* One request whose reply of choice is held (or lost with Redis cut off for
 * cut_ms): 503 (or 200 when a loaded machine let a held one through
 * first); then the quota counter moves by exactly the answered requests
 * and no lock is left. */
static void
lost_reply(struct relay *rl, int port, const char *what, const char *trigger, int skip, int cut_ms,
           const char *const *headers)
{
    char id[37], code[65], *tok, *body, *q;
    const char *bodies[1];
    struct tl_resp r;
    long long used0, used = -1, lk = -1;
    int answered;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"before the reply is held\"}", &r);
    CHECK(r.status == 200, "%s: answered before (%ld)", what, r.status);
    tl_resp_free(&r);
    used0 = tl_quota_used(id);
    CHECK(used0 == 1, "%s: one query used (%lld)", what, used0);
    q = tl_sprintf("aigw:{%s}%s", id, trigger);
    relay_arm(rl, q, skip, cut_ms, false);
    body = tl_sprintf("{\"question\":\"%s, its reply held\"}", what);
    bodies[0] = body;
    tl_post_parallel(port, "/api/ai/query", tok, headers, bodies, 1, &r);
    answered = r.status == 200;
    CHECK(r.status == 503 || r.status == 200, "%s: 503 (or answered) (%ld %s)", what, r.status, r.body);
    tl_resp_free(&r);
    CHECK(atomic_load(&rl->held) > 0, "%s: a reply was held", what);
    if (cut_ms > 0) {
        int64_t until = atomic_load(&rl->cut_until_ms);

        CHECK(r.status == 503 || answered == 0, "%s: a lost reply is never answered", what);
        used = tl_quota_used(id);
        lk = tl_sf_locks(id);
        CHECK(aigw_now_ms() < until && used == used0 + 1 && lk == 1,
              "%s: while Redis is cut off, the reservation and the lock stand (%lld, %lld)", what, used, lk);
        CHECK(tl_metric(port, "aigw_redis_outbox_pending") == 1, "%s: the take-back waits in the outbox (%g)", what,
              tl_metric(port, "aigw_redis_outbox_pending"));
    }
    /* the hold ends after 2.5 s (the abandon runs before); a cut after
     * cut_ms, and aigw tries the abandon again every second */
    for (int i = 0; i < 300 + cut_ms / 20; i++) {
        used = tl_quota_used(id);
        lk = tl_sf_locks(id);
        if (used == used0 + answered && lk == 0 && aigw_now_ms() >= atomic_load(&rl->hold_until_ms) &&
            aigw_now_ms() >= atomic_load(&rl->cut_until_ms))
            break;
        usleep(20 * 1000);
    }
    CHECK(used == used0 + answered, "%s: quota moved by the answered requests only (%lld, want %lld)", what, used,
          used0 + answered);
    CHECK(lk == 0, "%s: no single-flight lock left (%lld)", what, lk);
    relay_disarm(rl);
    free(body);
    free(q);
    free(tok);
}

/* An idempotent request is answered, and then its outcome never reaches
 * Redis (the command is dropped and Redis is out of reach for 2 s): the
 * record stays pending, so a retry is refused (409, or 503 while Redis is
 * out of reach), until the outbox's next send stores the outcome; then the
 * retry is a replay, and the query counted once. */
static void
lost_outcome(struct relay *rl, int port)
{
    char id[37], code[65], *tok, *q, buf[16];
    const char *h[] = {"Idempotency-Key: outcome-1", NULL};
    const char *body[1] = {"{\"question\":\"its outcome is lost on the way to Redis\"}"};
    struct tl_resp r;
    long long used0;
    int refused = 0;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"before the outcome is lost\"}", &r);
    CHECK(r.status == 200, "outcome lost: answered before (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    used0 = tl_quota_used(id);
    q = tl_sprintf("aigw:{%s}:idem:", id);
    relay_arm(rl, q, 1, 2000, true); /* the first command naming the record begins it, the second stores the outcome */
    tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    CHECK(r.status == 200, "outcome lost: the request is answered (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(relay_fired(rl) == 1, "outcome lost: its store was dropped");
    tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    CHECK(r.status == 409 || r.status == 503, "outcome lost: a retry at once is refused (%ld)", r.status);
    for (int i = 0; i < 40 && (r.status == 409 || r.status == 503); i++) { /* under the plan's 60 a minute */
        refused++;
        tl_resp_free(&r);
        usleep(200 * 1000);
        tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    }
    CHECK(r.status == 200 && tl_resp_header(&r, "Idempotent-Replayed", buf, sizeof(buf)) != NULL,
          "outcome lost: once Redis is back the retry is a replay (%ld, after %d refusals)", r.status, refused);
    tl_resp_free(&r);
    CHECK(tl_quota_used(id) == used0 + 1, "outcome lost: one query counted (%lld, want %lld)", tl_quota_used(id),
          used0 + 1);
    CHECK(tl_metric_wait(port, "aigw_redis_outbox_pending", 0, 2000) == 0, "outcome lost: the outbox is empty again");
    relay_disarm(rl);
    free(q);
    free(tok);
}

/* The reply of the script that writes an idempotent request's pending
 * record is held up: the request answers 503 (Retry-After: 1), and the
 * record it wrote is taken back once Redis answers, so the retry the 503
 * asks for runs (before: the record stood for its whole pending window, a
 * minute and more, and every retry got 409). */
static void
lost_begin(struct relay *rl, int port)
{
    char id[37], code[65], *tok, *q, buf[16];
    const char *h[] = {"Idempotency-Key: begin-1", NULL};
    const char *body[1] = {"{\"question\":\"its pending record's reply is held\"}"};
    struct tl_resp r;
    int refused = 0;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    q = tl_sprintf("aigw:{%s}:idem:", id);
    relay_arm(rl, q, 0, 0, false);
    tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    tl_expect("lost begin: the record's reply held", &r, 503, "service_unavailable");
    CHECK(relay_fired(rl) == 1, "lost begin: the reply was held");
    relay_disarm(rl);
    for (int i = 0; i < 20 && (r.status == 409 || r.status == 503); i++) { /* under the plan's 30 a minute */
        if (r.status == 409)
            refused++;
        tl_resp_free(&r);
        usleep(300 * 1000);
        tl_post_parallel(port, "/api/ai/query", tok, h, body, 1, &r);
    }
    CHECK(r.status == 200 && tl_resp_header(&r, "Idempotent-Replayed", buf, sizeof(buf)) == NULL,
          "lost begin: once Redis answers, the retry runs (%ld %s, after %d 409s)", r.status, r.body, refused);
    tl_resp_free(&r);
    CHECK(tl_metric_wait(port, "aigw_redis_outbox_pending", 0, 2000) == 0, "lost begin: the outbox is empty again");
    free(q);
    free(tok);
}

/* A leader's publish (its result for the waiters, its cache entry, the
 * lock's release) is dropped on its way to Redis, which then stays out of
 * reach for 2 s: the outbox sends it again, so the lock goes and the entry
 * is stored once Redis answers (before: the lock stayed for its lifetime,
 * minutes for a stream, and every waiter on every instance waited it out). */
static void
lost_publish(struct relay *rl, int port)
{
    char id[37], code[65], *tok, *q, *pat, buf[16];
    struct tl_resp r;
    long long lk = -1, entries = -1;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    q = tl_sprintf("aigw:{%s}:sf:", id); /* the admission names it (as a prefix), then the publish */
    pat = tl_sprintf("aigw:{%s}:c:*", id);
    relay_arm(rl, q, 1, 2000, true);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"its publish is lost on the way to Redis\"}", &r);
    CHECK(r.status == 200, "publish lost: the leader is answered (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(relay_fired(rl) == 1, "publish lost: it was dropped");
    for (int i = 0; i < 250; i++) { /* 2 s out of reach, then the next retry within a second */
        lk = tl_sf_locks(id);
        entries = count_keys(pat);
        if (lk == 0 && entries == 1)
            break;
        usleep(20 * 1000);
    }
    CHECK(lk == 0, "publish lost: the lock goes once Redis answers (%lld)", lk);
    CHECK(entries == 1, "publish lost: and the answer is cached (%lld)", entries);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"its publish is lost on the way to Redis\"}", &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) != NULL && strcmp(buf, "HIT") == 0,
          "publish lost: the question again is a cache hit (%ld)", r.status);
    tl_resp_free(&r);
    relay_disarm(rl);
    free(pat);
    free(q);
    free(tok);
}

/* As lost_publish, but while Redis is out of reach the leader's lock goes
 * (its first run was the one whose reply was lost, or it expired) and
 * another flight leads, with a result already there: the outbox's send of
 * the old publish must leave that flight alone (before: it overwrote the
 * newer result, which that flight's waiters took as their own answer, an
 * error just as well, and stored the old answer in the cache). */
static void
lost_publish_newer_flight(struct relay *rl, int port)
{
    char id[37], code[65], *tok, *q, *pat;
    struct tl_resp r;
    long long taken, kept = -1, entries = -1;

    CHECK(tl_metric_wait(port, "aigw_redis_outbox_pending", 0, 5000) == 0, "newer flight: the outbox is empty before");
    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    q = tl_sprintf("aigw:{%s}:sf:", id);
    pat = tl_sprintf("aigw:{%s}:sf:*", id);
    relay_arm(rl, q, 1, 2000, true);
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"its publish is lost, then another flight leads\"}", &r);
    CHECK(r.status == 200, "newer flight: the leader is answered (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(relay_fired(rl) == 1, "newer flight: the publish was dropped");
    /* (the relay cuts the connections 50 ms after the drop: only then does
     * the publish fail and go to the outbox) */
    CHECK(tl_metric_wait(port, "aigw_redis_outbox_pending", 1, 1500) == 1,
          "newer flight: the publish waits in the outbox");
    /* Redis is out of reach for aigw for 2 s: another instance's flight
     * takes the lock over and has published an error already */
    taken = tl_redis_int("EVAL %s 0 %s",
                         "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do"
                         " if string.sub(k, -2) ~= ':r' then redis.call('SET', k, 'another-leader', 'PX', 60000)"
                         " redis.call('SET', k .. ':r', '{\"error\":{\"status\":502}}', 'PX', 60000)"
                         " n = n + 1 end end return n",
                         pat);
    CHECK(taken == 1, "newer flight: one lock taken over (%lld)", taken);
    CHECK(tl_metric_wait(port, "aigw_redis_outbox_pending", 0, 6000) == 0,
          "newer flight: the outbox is done with the old publish");
    kept = tl_redis_int("EVAL %s 0 %s",
                        "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do"
                        " if string.sub(k, -2) ~= ':r' and redis.call('GET', k) == 'another-leader'"
                        " and redis.call('GET', k .. ':r') == '{\"error\":{\"status\":502}}' then n = n + 1 end"
                        " end return n",
                        pat);
    CHECK(kept == 1, "newer flight: its lock and its result are left alone (%lld)", kept);
    free(pat);
    pat = tl_sprintf("aigw:{%s}:c:*", id);
    entries = count_keys(pat);
    CHECK(entries == 0, "newer flight: the old answer is not stored over it (%lld)", entries);
    tl_redis_int("EVAL %s 0 aigw:{%s}:sf:*",
                 "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0", id);
    relay_disarm(rl);
    free(pat);
    free(q);
    free(tok);
}

int
main(void)
{
    struct relay rl;
    struct tl_aigw gw;
    char *url, *cfg;
    const char *env[2];
    const char *idem[] = {"Idempotency-Key: held-1", NULL};

    owner = tl_pg_owner();
    relay_start(&rl);
    url = tl_sprintf("AIGW_REDIS_URL=redis://127.0.0.1:%d", rl.port);
    env[0] = url;
    env[1] = NULL;
    cfg = tl_config_patch("{\"redis\":{\"timeout_ms\":1000},\"upstream\":{\"health_interval_ms\":60000}}");
    if (tl_aigw_start_env(&gw, cfg, env) != 0)
        return 1;
    /* the admission script leads the miss: it takes the lock and reserves
     * in one step (the first command naming the tenant's quota key) */
    lost_reply(&rl, gw.port, "admission", ":q:", 0, 0, NULL);
    /* with an Idempotency-Key the reservation is a script of its own on a
     * pool connection, after the admission (the second command naming the
     * quota key) */
    lost_reply(&rl, gw.port, "quota reservation", ":q:", 1, 0, idem);
    /* the admission's reply lost and Redis unreachable for 3 s after it:
     * the abandon fails at first and is sent again until Redis takes it */
    lost_reply(&rl, gw.port, "admission, Redis cut off", ":q:", 0, 3000, NULL);
    lost_outcome(&rl, gw.port);
    lost_begin(&rl, gw.port);
    lost_publish(&rl, gw.port);
    lost_publish_newer_flight(&rl, gw.port);
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
    relay_stop(&rl);
    PQfinish(owner);
    free(cfg);
    free(url);
    return tl_done();
}
