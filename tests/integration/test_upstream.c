/* test_upstream.c - the upstream engine driven directly against the mock
 * llama-server: answers, slots and queue, error mapping, timeouts, retry on
 * connect failure, passive and active health, stop with calls in flight */
#include <arpa/inet.h>
#include <curl/curl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "aigw/health.h"
#include "aigw/log.h"
#include "aigw/snapshot.h"
#include "aigw/upstream.h"
#include "aigw/util.h"
#include "testlib.h"

#define BODY "{\"model\":\"test-model\",\"messages\":[{\"role\":\"user\",\"content\":\"hello there\"}],\"max_tokens\":4}"

static const char *mock1, *mock2;

/* One submitted call, as seen by its done() callback. */
struct pending {
    struct aigw_upstream_call *call;
    int ndone;             /* times done() ran: must end at exactly 1 */
    int64_t submit_ms, done_ms;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER; /* guards every pending's ndone/done_ms */
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;

static void
on_done(struct aigw_upstream_call *call, void *ud)
{
    struct pending *p = ud;

    (void)call;
    pthread_mutex_lock(&mu);
    p->ndone++;
    p->done_ms = aigw_now_ms();
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void
sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

    nanosleep(&ts, NULL);
}

static void
submit(struct aigw_upstream *up, struct pending *p)
{
    memset(p, 0, sizeof(*p));
    p->submit_ms = aigw_now_ms();
    p->call = aigw_upstream_submit(up, 0, BODY, strlen(BODY), on_done, p);
}

/* Wait until all n calls are done; false on timeout. */
static bool
wait_all(struct pending *p, int n, int timeout_ms)
{
    int64_t end = aigw_now_ms() + timeout_ms;
    bool all = false;

    pthread_mutex_lock(&mu);
    while (!all && aigw_now_ms() < end) {
        struct timespec ts;

        all = true;
        for (int i = 0; i < n; i++)
            all = all && p[i].ndone > 0;
        if (all)
            break;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&cv, &mu, &ts);
    }
    pthread_mutex_unlock(&mu);
    return all;
}

static const struct aigw_upstream_result *
res(const struct pending *p)
{
    return aigw_upstream_result(p->call);
}

static void
free_all(struct pending *p, int n)
{
    for (int i = 0; i < n; i++) {
        aigw_upstream_call_free(p[i].call);
        p[i].call = NULL;
    }
}

static void
check_error(const char *name, const struct pending *p, int status, const char *code)
{
    const struct aigw_upstream_result *r = res(p);

    CHECK(r->status == status, "%s: status %d, want %d (%s)", name, r->status, status,
          r->error_detail ? r->error_detail : "-");
    CHECK(r->error_code != NULL && strcmp(r->error_code, code) == 0, "%s: code %s, want %s", name,
          r->error_code ? r->error_code : "(null)", code);
    CHECK(r->content == NULL, "%s: no content on error", name);
    CHECK(status != 503 || r->retry_after_s > 0, "%s: retry_after_s %d with 503", name, r->retry_after_s);
    CHECK(p->ndone == 1, "%s: done ran %d times", name, p->ndone);
}

/* A config with sane timeouts and no backends; the test adds them. */
static void
cfg_init(struct aigw_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->connect_timeout_ms = 1000;
    cfg->timeout_ms = 5000;
    cfg->queue_size = 16;
    cfg->queue_timeout_ms = 5000;
    cfg->fail_threshold = 100;
    cfg->down_ms = 1000;
    cfg->health_interval_ms = 100;
}

/* Add a backend and put it in the group of query type 0. */
static void
add_backend(struct aigw_config *cfg, const char *name, const char *url, int slots)
{
    struct aigw_backend_cfg *b = &cfg->backends[cfg->n_backends];

    snprintf(b->name, sizeof(b->name), "%s", name);
    b->url = aigw_xstrdup(url);
    b->slots = slots;
    b->max_connections = slots;
    cfg->route_backends[0][cfg->n_route_backends[0]++] = (int)cfg->n_backends;
    cfg->n_backends++;
}

static char *
dead_url(void)
{
    char url[64];

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", tl_free_port());
    return aigw_xstrdup(url);
}

static void
reset_mocks(void)
{
    tl_mock_reset(mock1);
    tl_mock_reset(mock2);
}

/* ---- cases ---- */

static void
test_success(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    const struct aigw_upstream_result *r;
    char url[300];

    cfg_init(&cfg);
    snprintf(url, sizeof(url), "%s/", mock1); /* a trailing slash must not double up */
    add_backend(&cfg, "mock1", url, 4);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p);
    CHECK(wait_all(&p, 1, 5000), "success: done within 5 s");
    r = res(&p);
    CHECK(r->status == 200, "success: status %d (%s)", r->status, r->error_detail ? r->error_detail : "-");
    CHECK(r->error_code == NULL, "success: no error code");
    CHECK(r->content && strncmp(r->content, "Mock answer to [hello there]", 28) == 0, "success: content %s",
          r->content ? r->content : "(null)");
    CHECK(r->model && strcmp(r->model, "test-model") == 0, "success: model %s", r->model ? r->model : "(null)");
    CHECK(r->finish_reason && strcmp(r->finish_reason, "length") == 0, "success: finish_reason %s",
          r->finish_reason ? r->finish_reason : "(null)");
    CHECK(r->prompt_tokens == 2 && r->completion_tokens == 4, "success: usage %ld/%ld", r->prompt_tokens,
          r->completion_tokens);
    CHECK(r->backend && strcmp(r->backend, "mock1") == 0, "success: backend %s", r->backend ? r->backend : "-");
    CHECK(r->upstream_ms >= 0 && r->upstream_ms < 5000, "success: upstream_ms %lld", (long long)r->upstream_ms);
    CHECK(tl_mock_stat(mock1, "chat_ok") == 1, "success: the mock answered once");
    CHECK(p.ndone == 1, "success: done ran once");
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* CPU time of every thread but the caller's, in ms: the engine's. */
static double
others_cpu_ms(void)
{
    struct timespec proc, self;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &proc);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &self);
    return (double)(proc.tv_sec - self.tv_sec) * 1e3 + (double)(proc.tv_nsec - self.tv_nsec) / 1e6;
}

/* What the engine uses (others_cpu_ms) while the caller sleeps ms. */
static double
engine_cpu_during(long ms)
{
    double before = others_cpu_ms();

    sleep_ms(ms);
    return others_cpu_ms() - before;
}

/* Between calls the engine sleeps. curl_multi_add_handle reports a timer of
 * 0 and then forgets it reported one (libcurl 7.88 clears its last-call
 * mark), so a transfer whose answer is already there when curl first runs it
 * ends without a callback of -1; the loop used to trust that stale deadline
 * and spin on epoll_wait(0) until the next call, for ever if none came. A
 * mock that answers at once makes that likely: bursts of back-to-back calls,
 * each followed by an idle window in which the engine must use (almost) no
 * CPU. */
static void
test_idle_cpu(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    double worst = 0;
    int ok = 0, bursts = 0;

    tl_mock_config(mock1, "{\"first_token_ms\":0,\"token_latency_ms\":0}");
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 4);
    up = aigw_upstream_start(&cfg, NULL);
    for (; bursts < 25 && worst < 100; bursts++) {
        double idle;

        for (int i = 0; i < 20; i++) {
            submit(up, &p);
            if (wait_all(&p, 1, 5000) && res(&p)->status == 200)
                ok++;
            free_all(&p, 1);
        }
        idle = engine_cpu_during(150);
        if (idle > worst)
            worst = idle;
    }
    CHECK(ok == bursts * 20, "idle cpu: %d of %d calls answered", ok, bursts * 20);
    CHECK(worst < 100, "idle cpu: the engine used %.0f ms of CPU in 150 ms with nothing to do (burst %d)", worst,
          bursts);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    tl_mock_reset(mock1);
}

/* A backend that closes kept-alive connections while they idle: it serves
 * one connection at a time, answers every request on it with a chat
 * completion (keep-alive), and closes it when the test says so. */
struct closer {
    int lfd, port;
    pthread_t thread;
    pthread_mutex_t lock;  /* guards conn, accepted */
    int conn;              /* the open connection, -1 none */
    int accepted;
    atomic_bool stop;
    atomic_bool close_each;  /* answer with Connection: close and close */
    const char *sse;         /* set: answer every request with this event stream, then close */
    int linger_ms;           /* with sse: keep the response open this long after it before closing */
    const char *after;       /* with linger_ms: sent every 100 ms meanwhile (NULL: silence) */
    atomic_int mute;         /* > 0: leave that many more requests unanswered (until the client leaves) */
};

static const char CLOSER_ANSWER[] =
    "{\"id\":\"c\",\"object\":\"chat.completion\",\"model\":\"test-model\",\"choices\":[{\"index\":0,"
    "\"message\":{\"role\":\"assistant\",\"content\":\"kept\"},\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}";

/* Read one request (headers, then Content-Length bytes); false at EOF. */
static bool
closer_read_request(int fd)
{
    char buf[8192];
    size_t have = 0;
    char *end;
    long body;

    for (;;) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);

        if (n <= 0)
            return false;
        have += (size_t)n;
        buf[have] = '\0';
        if ((end = strstr(buf, "\r\n\r\n")) != NULL)
            break;
        if (have == sizeof(buf) - 1)
            return false;
    }
    body = strstr(buf, "Content-Length: ") ? strtol(strstr(buf, "Content-Length: ") + 16, NULL, 10) : 0;
    for (size_t got = have - (size_t)(end + 4 - buf); got < (size_t)body;) {
        ssize_t n = read(fd, buf, sizeof(buf));

        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

static void *
closer_run(void *arg)
{
    struct closer *c = arg;
    char head[256], head_close[256];

    snprintf(head, sizeof(head),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
             strlen(CLOSER_ANSWER));
    snprintf(head_close, sizeof(head_close),
             "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %zu\r\n\r\n",
             strlen(CLOSER_ANSWER));
    while (!atomic_load(&c->stop)) {
        struct pollfd pfd = {.fd = c->lfd, .events = POLLIN};
        int fd;

        if (poll(&pfd, 1, 50) != 1 || (fd = accept(c->lfd, NULL, NULL)) < 0)
            continue;
        pthread_mutex_lock(&c->lock);
        c->conn = fd;
        c->accepted++;
        pthread_mutex_unlock(&c->lock);
        while (closer_read_request(fd)) {
            const char *h = atomic_load(&c->close_each) ? head_close : head;

            if (atomic_load(&c->mute) > 0) { /* no answer: wait for the client to give up */
                atomic_fetch_sub(&c->mute, 1);
                for (int waited = 0; waited < 5000 && !atomic_load(&c->stop); waited += 50) {
                    struct pollfd gone = {.fd = fd, .events = POLLIN};

                    if (poll(&gone, 1, 50) > 0)
                        break;
                }
                break;
            }
            if (c->sse != NULL) {
                static const char sse_head[] =
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n";

                if (write(fd, sse_head, strlen(sse_head)) >= 0 && write(fd, c->sse, strlen(c->sse)) >= 0) {
                    for (int waited = 0; waited < c->linger_ms && !atomic_load(&c->stop); waited += 100) {
                        struct pollfd gone = {.fd = fd, .events = POLLIN};

                        if (poll(&gone, 1, 100) > 0) /* aigw closed it */
                            break;
                        if (c->after != NULL && send(fd, c->after, strlen(c->after), MSG_NOSIGNAL) < 0)
                            break;
                    }
                    shutdown(fd, SHUT_WR);
                }
                break;
            }

            if (write(fd, h, strlen(h)) < 0 || write(fd, CLOSER_ANSWER, strlen(CLOSER_ANSWER)) < 0
                || atomic_load(&c->close_each))
                break;
        }
        pthread_mutex_lock(&c->lock);
        c->conn = -1;
        pthread_mutex_unlock(&c->lock);
        close(fd);
    }
    return NULL;
}

/* sse: NULL for chat completions on kept-alive connections, else the
 * event stream every request gets. */
static void
closer_start(struct closer *c, const char *sse)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);

    memset(c, 0, sizeof(*c));
    c->conn = -1;
    c->sse = sse;
    pthread_mutex_init(&c->lock, NULL);
    c->lfd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->lfd < 0 || bind(c->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(c->lfd, 16) != 0
        || getsockname(c->lfd, (struct sockaddr *)&a, &len) != 0)
        abort();
    c->port = ntohs(a.sin_port);
    if (pthread_create(&c->thread, NULL, closer_run, c) != 0)
        abort();
}

/* Close the kept-alive connection from the backend's side (FIN). */
static void
closer_drop(struct closer *c)
{
    pthread_mutex_lock(&c->lock);
    if (c->conn >= 0)
        shutdown(c->conn, SHUT_RDWR);
    pthread_mutex_unlock(&c->lock);
}

static void
closer_stop(struct closer *c)
{
    atomic_store(&c->stop, true);
    closer_drop(c);
    pthread_join(c->thread, NULL);
    close(c->lfd);
    pthread_mutex_destroy(&c->lock);
}

/* A backend given by host name: curl resolves it on its resolver thread,
 * whose socketpair the engine watches and drops again (it is not a
 * connection, so it is not kept idle in the set). Calls on new connections
 * (the closer closes each) keep working, each answered at once. */
static void
test_hostname_backend(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    struct closer srv;
    char url[64];
    int ok = 0;

    closer_start(&srv, NULL);
    atomic_store(&srv.close_each, true);
    snprintf(url, sizeof(url), "http://localhost:%d", srv.port);
    cfg_init(&cfg);
    add_backend(&cfg, "by-name", url, 1);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 5; i++) {
        int64_t t0 = aigw_now_ms();

        submit(up, &p);
        ok += wait_all(&p, 1, 5000) && res(&p)->status == 200 && aigw_now_ms() - t0 < 1000;
        free_all(&p, 1);
    }
    CHECK(ok == 5, "by host name: 5 of 5 calls answered within a second (%d)", ok);
    pthread_mutex_lock(&srv.lock);
    ok = srv.accepted;
    pthread_mutex_unlock(&srv.lock);
    CHECK(ok == 5, "each on a new connection (%d)", ok);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    closer_stop(&srv);
}

/* A connection whose transfer is over stays in the engine's epoll set (the
 * next call on it then needs no epoll_ctl). When the backend closes it while
 * it idles, the engine must take it out rather than spin on it, and the next
 * call must go out on a new connection, whatever descriptor number that
 * gets. */
static void
test_backend_closes_idle(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    struct closer srv;
    char url[64];
    double worst = 0;
    int ok = 0, rounds = 12;

    closer_start(&srv, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", srv.port);
    cfg_init(&cfg);
    add_backend(&cfg, "closer", url, 1);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < rounds; i++) {
        double idle;

        submit(up, &p);
        if (wait_all(&p, 1, 3000) && res(&p)->status == 200 && res(&p)->content != NULL
            && strcmp(res(&p)->content, "kept") == 0)
            ok++;
        free_all(&p, 1);
        if (i % 2 == 1)
            continue; /* every other call reuses the kept-alive connection */
        closer_drop(&srv);
        idle = engine_cpu_during(100);
        if (idle > worst)
            worst = idle;
    }
    /* curl closes each connection itself (Connection: close): the next
     * socket, very likely under the same number, must be watched afresh */
    atomic_store(&srv.close_each, true);
    for (int i = 0; i < 6; i++) {
        submit(up, &p);
        if (wait_all(&p, 1, 3000) && res(&p)->status == 200)
            ok++;
        free_all(&p, 1);
    }
    CHECK(ok == rounds + 6, "closed idle: %d of %d calls answered", ok, rounds + 6);
    CHECK(worst < 50, "closed idle: the engine used %.0f ms of CPU in 100 ms beside a closed connection", worst);
    pthread_mutex_lock(&srv.lock);
    /* the first call, one after each close, and the first Connection: close
     * answer still came on the last kept-alive connection */
    CHECK(srv.accepted == 1 + rounds / 2 + 5, "closed idle: %d connections for %d calls, want one more per close",
          srv.accepted, rounds + 6);
    pthread_mutex_unlock(&srv.lock);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    closer_stop(&srv);
}

/* More calls than slots: the backend never sees more than its slots. */
static void
test_slots(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[10];
    long long base;
    size_t max_gauge = 0, seen_queued = 0;
    int ok = 0;

    reset_mocks();
    base = tl_mock_stat(mock1, "in_flight"); /* hung requests of other tests linger in the mock */
    tl_mock_config(mock1, "{\"token_latency_ms\":20}");
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 10; i++)
        submit(up, &p[i]);
    while (!wait_all(p, 10, 5)) {
        size_t f = aigw_upstream_in_flight(up), q = aigw_upstream_queued(up);

        max_gauge = f > max_gauge ? f : max_gauge;
        seen_queued = q > seen_queued ? q : seen_queued;
        if (aigw_now_ms() - p[0].submit_ms > 10000)
            break;
    }
    for (int i = 0; i < 10; i++)
        ok += p[i].ndone == 1 && res(&p[i])->status == 200;
    CHECK(ok == 10, "slots: %d of 10 calls succeeded", ok);
    CHECK(tl_mock_stat(mock1, "max_in_flight") - base <= 2, "slots: mock max_in_flight %lld (base %lld) <= 2",
          tl_mock_stat(mock1, "max_in_flight"), base);
    CHECK(tl_mock_stat(mock1, "max_in_flight") - base == 2, "slots: both slots were used");
    CHECK(max_gauge <= 2, "slots: in_flight gauge %zu <= 2", max_gauge);
    CHECK(seen_queued > 0, "slots: queued gauge went up (%zu)", seen_queued);
    CHECK(aigw_upstream_in_flight(up) == 0 && aigw_upstream_queued(up) == 0, "slots: gauges back to 0");
    free_all(p, 10);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* Calls submitted from several threads at once: every one is picked up
 * (the engine's eventfd wake-up is shared by a burst of submits) and
 * completes exactly once. */
#define MT_THREADS 4
#define MT_CALLS 50

struct mt_arg {
    struct aigw_upstream *up;
    struct pending *p;
};

static void *
mt_submitter(void *arg)
{
    struct mt_arg *a = arg;

    for (int i = 0; i < MT_CALLS; i++)
        submit(a->up, &a->p[i]);
    return NULL;
}

static void
test_many_submitters(void)
{
    static struct pending p[MT_THREADS * MT_CALLS];
    struct aigw_config cfg;
    struct aigw_upstream *up;
    pthread_t th[MT_THREADS];
    struct mt_arg args[MT_THREADS];
    int ok = 0, once = 0;

    reset_mocks();
    cfg_init(&cfg);
    cfg.queue_size = MT_THREADS * MT_CALLS;
    add_backend(&cfg, "mock1", mock1, 16);
    up = aigw_upstream_start(&cfg, NULL);
    for (int t = 0; t < MT_THREADS; t++) {
        args[t].up = up;
        args[t].p = &p[t * MT_CALLS];
        if (pthread_create(&th[t], NULL, mt_submitter, &args[t]) != 0)
            abort();
    }
    for (int t = 0; t < MT_THREADS; t++)
        pthread_join(th[t], NULL);
    CHECK(wait_all(p, MT_THREADS * MT_CALLS, 20000), "many submitters: all done within 20 s");
    pthread_mutex_lock(&mu);
    for (int i = 0; i < MT_THREADS * MT_CALLS; i++) {
        once += p[i].ndone == 1;
        ok += p[i].ndone == 1 && res(&p[i])->status == 200;
    }
    pthread_mutex_unlock(&mu);
    CHECK(once == MT_THREADS * MT_CALLS, "many submitters: done ran once for %d of %d", once, MT_THREADS * MT_CALLS);
    CHECK(ok == MT_THREADS * MT_CALLS, "many submitters: %d of %d succeeded", ok, MT_THREADS * MT_CALLS);
    CHECK(aigw_upstream_in_flight(up) == 0 && aigw_upstream_queued(up) == 0, "many submitters: gauges back to 0");
    free_all(p, MT_THREADS * MT_CALLS);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* Stream consumer of test_sse_data_lines: the result carries what it needs. */
static bool
ignore_event(struct aigw_upstream_call *call, const struct aigw_upstream_event *ev, void *ud)
{
    (void)call;
    (void)ev;
    (void)ud;
    return false;
}

/* Submit one streaming call of a minimal chat body, its result to p. */
static void
submit_stream(struct aigw_upstream *up, struct pending *p)
{
    static const char body[] = "{\"model\":\"m\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}";
    struct aigw_upstream_opts o;

    memset(p, 0, sizeof(*p));
    memset(&o, 0, sizeof(o));
    o.body = body;
    o.len = strlen(body);
    o.on_event = ignore_event;
    o.done = on_done;
    o.ud = p;
    p->call = aigw_upstream_submit_opts(up, &o);
}

/* An event whose JSON comes in several data: lines is read as the lines
 * joined with newlines (SSE), and a comment line is no event at all. */
static void
test_sse_data_lines(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    struct closer srv;
    char url[64];

    closer_start(&srv, ": keep-alive comment\n\n"
              "data: {\"choices\":[{\"delta\":{\"content\":\"one \"}}],\"model\":\"m\"}\n\n"
              "data: {\"choices\":[{\"delta\":\n"
              "data: {\"content\":\"two\"}}],\n"
              "data: \"model\":\"m\"}\n\n"
              "data: [DONE]\n\n");
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", srv.port);
    cfg_init(&cfg);
    add_backend(&cfg, "sse", url, 1);
    up = aigw_upstream_start(&cfg, NULL);
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000), "data lines: the stream ends");
    CHECK(res(&p)->status == 200 && res(&p)->content != NULL && strcmp(res(&p)->content, "one two") == 0,
          "data lines: the three-line event's delta is read (%d, %s)", res(&p)->status,
          res(&p)->content != NULL ? res(&p)->content : "(null)");
    CHECK(res(&p)->chunks == 2, "data lines: two content events, the comment is none (%ld)", res(&p)->chunks);
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    closer_stop(&srv);
}

/* A backend that keeps a stream's response open after data: [DONE], in
 * silence or with keep-alive comments: the answer is complete, so the call
 * ends as a success within about a second, and the backend is not blamed
 * (it waited for the close, then failed at stream_idle_ms or
 * stream_timeout_ms with 504 upstream_timeout, counting against the
 * backend). */
static void
test_open_after_done(void)
{
    static const char *const after[2] = {NULL, ": ping\n\n"};

    for (int i = 0; i < 2; i++) {
        struct aigw_config cfg;
        struct aigw_upstream *up;
        struct pending p;
        struct closer srv;
        char url[64];
        int64_t t0;

        closer_start(&srv, "data: {\"choices\":[{\"delta\":{\"content\":\"whole\"}}],\"model\":\"m\"}\n\n"
                           "data: [DONE]\n\n");
        srv.linger_ms = 4000;
        srv.after = after[i];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d", srv.port);
        cfg_init(&cfg);
        add_backend(&cfg, "lingers", url, 1);
        cfg.fail_threshold = 1;
        up = aigw_upstream_start(&cfg, NULL);
        t0 = aigw_now_ms();
        submit_stream(up, &p);
        CHECK(wait_all(&p, 1, 8000), "open after [DONE] (%s): the call ends", after[i] ? "pings" : "silent");
        CHECK(res(&p)->status == 200 && res(&p)->content != NULL && strcmp(res(&p)->content, "whole") == 0,
              "open after [DONE] (%s): a success with the whole answer (%d)", after[i] ? "pings" : "silent",
              res(&p)->status);
        CHECK(aigw_now_ms() - t0 < 2500, "open after [DONE] (%s): ended in %lld ms, not when the backend closed",
              after[i] ? "pings" : "silent", (long long)(aigw_now_ms() - t0));
        free_all(&p, 1);
        /* with fail_threshold 1 a blamed backend would now be down: the next call must reach it */
        submit_stream(up, &p);
        CHECK(wait_all(&p, 1, 8000) && res(&p)->status == 200, "open after [DONE] (%s): the backend is not blamed (%d)",
              after[i] ? "pings" : "silent", res(&p)->status);
        free_all(&p, 1);
        aigw_upstream_stop(up);
        aigw_config_free(&cfg);
        closer_stop(&srv);
    }
}

static int run_seq(struct aigw_upstream *up, int n, int status);

/* One streaming call against srv's canned event stream (closed after it),
 * with fail_threshold 1; then whether the backend was blamed: a second
 * call to it gets 503 when it is down. Returns the first call's status. */
static int
stream_once_then_blamed(const char *sse, bool *blamed, long *chunks)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    struct closer srv;
    char url[64];
    int status;

    closer_start(&srv, sse);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", srv.port);
    cfg_init(&cfg);
    add_backend(&cfg, "canned", url, 1);
    cfg.fail_threshold = 1;
    cfg.down_ms = 10000;
    up = aigw_upstream_start(&cfg, NULL);
    submit_stream(up, &p);
    status = wait_all(&p, 1, 5000) ? res(&p)->status : -1;
    if (chunks != NULL)
        *chunks = res(&p)->chunks;
    free_all(&p, 1);
    submit_stream(up, &p);
    *blamed = wait_all(&p, 1, 5000) && res(&p)->status == 503;
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    closer_stop(&srv);
    return status;
}

/* What real llama-server builds send that the mock's default does not:
 * - streams without data: [DONE] (before September 2024): complete when
 *   the response ends cleanly after a finish_reason, broken without one;
 * - a request refused mid-stream (an error event with code 400, the prompt
 *   over the context size) or a 500 error event: the call fails, the
 *   backend is not blamed; an error event with no code still is;
 * - a NUL in the model's text (\u0000): an answer, read as U+FFFD;
 * - thinking (reasoning_content) and tool-call deltas count as output. */
static void
test_llama_variants(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    bool blamed;
    long chunks = 0;
    int st;

    reset_mocks();
    cfg_init(&cfg);
    cfg.fail_threshold = 1;
    cfg.down_ms = 10000;
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);

    tl_mock_config(mock1, "{\"no_done\":true,\"tokens\":3}");
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 200 && res(&p)->content != NULL &&
              strstr(res(&p)->content, " tok3") != NULL && !res(&p)->saw_done,
          "no [DONE]: the stream is complete at its clean end after finish_reason (%d)", res(&p)->status);
    free_all(&p, 1);

    tl_mock_config(mock1, "{\"no_done\":false,\"mode\":\"exceed_context\",\"fail_next\":2}");
    /* a prompt over the context: the client's to mend, 400 context_length_exceeded (and not the backend's fault) */
    CHECK(run_seq(up, 1, 400) == 1, "refused (400 exceed_context_size_error): non-stream 400");
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 400 && res(&p)->error_code != NULL &&
              strcmp(res(&p)->error_code, "context_length_exceeded") == 0,
          "refused mid-stream (400): the stream fails with 400 context_length_exceeded (%d)", res(&p)->status);
    free_all(&p, 1);
    tl_mock_config(mock1, "{\"mode\":\"error_midstream_data\",\"fail_next\":1}");
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 502, "error event with code 500: fails (%d)", res(&p)->status);
    free_all(&p, 1);
    tl_mock_config(mock1, "{\"mode\":\"error_midstream\",\"fail_next\":1}");
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 502, "error: line with code 500: fails (%d)", res(&p)->status);
    free_all(&p, 1);

    tl_mock_config(mock1, "{\"nul_text\":true,\"tokens\":3}");
    CHECK(run_seq(up, 1, 200) == 1, "the backend was blamed for none of them: it is still up");
    submit(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 200 && res(&p)->content != NULL &&
              strstr(res(&p)->content, " tok3\xEF\xBF\xBDx") != NULL,
          "a NUL in an answer: 200, read as U+FFFD (%d, %s)", res(&p)->status,
          res(&p)->content ? res(&p)->content : "(null)");
    free_all(&p, 1);
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 200 && res(&p)->content != NULL &&
              strstr(res(&p)->content, " tok3\xEF\xBF\xBDx") != NULL,
          "a NUL in a stream: 200, read as U+FFFD (%d)", res(&p)->status);
    free_all(&p, 1);

    tl_mock_config(mock1, "{\"nul_text\":false,\"tokens\":5,\"reasoning_tokens\":2}");
    submit_stream(up, &p);
    CHECK(wait_all(&p, 1, 5000) && res(&p)->status == 200 && res(&p)->chunks == 5 && res(&p)->content != NULL &&
              strcmp(res(&p)->content, " tok3 tok4 tok5") == 0,
          "thinking: 5 output events, the content is the answer's alone (%ld, %s)", res(&p)->chunks,
          res(&p)->content ? res(&p)->content : "(null)");
    free_all(&p, 1);
    CHECK(tl_mock_stat(mock1, "chat_requests") == 9, "every call reached the backend (%lld)",
          tl_mock_stat(mock1, "chat_requests"));
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    reset_mocks();

    st = stream_once_then_blamed("data: {\"choices\":[{\"delta\":{\"content\":\"cut\"}}],\"model\":\"m\"}\n\n",
                                 &blamed, NULL);
    CHECK(st == 502 && blamed, "no [DONE] and no finish_reason: a stream cut short, the backend blamed (%d)", st);
    st = stream_once_then_blamed("data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"model\":\"m\"}\n\n"
                                 "data: {\"error\":{\"message\":\"no code\"}}\n\n",
                                 &blamed, NULL);
    CHECK(st == 502 && blamed, "an error event without a code blames the backend (%d)", st);
    st = stream_once_then_blamed(
        "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\","
        "\"function\":{\"name\":\"rx\",\"arguments\":\"{}\"}}]}}],\"model\":\"m\"}\n\n"
        "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}],\"model\":\"m\"}\n\n"
        "data: [DONE]\n\n",
        &blamed, &chunks);
    CHECK(st == 200 && !blamed && chunks == 1, "a tool-call delta is an output event (%d, %ld)", st, chunks);
}

/* A flood of calls submitted at once: the engine takes them in slices,
 * relaying between slices, and never sleeps while calls wait in its inbox;
 * every call is started once and completes exactly once. */
#define FLOOD_CALLS 1000

static void
test_flood(void)
{
    static struct pending p[FLOOD_CALLS];
    struct aigw_config cfg;
    struct aigw_upstream *up;
    long long before;
    int ok = 0, once = 0;

    reset_mocks();
    before = tl_mock_stat(mock1, "chat_requests");
    cfg_init(&cfg);
    cfg.queue_size = FLOOD_CALLS;
    add_backend(&cfg, "mock1", mock1, 64);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < FLOOD_CALLS; i++)
        submit(up, &p[i]);
    CHECK(wait_all(p, FLOOD_CALLS, 60000), "flood: all %d done within 60 s", FLOOD_CALLS);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < FLOOD_CALLS; i++) {
        once += p[i].ndone == 1;
        ok += p[i].ndone == 1 && res(&p[i])->status == 200;
    }
    pthread_mutex_unlock(&mu);
    CHECK(once == FLOOD_CALLS && ok == FLOOD_CALLS, "flood: done once for %d, 200 for %d of %d", once, ok,
          FLOOD_CALLS);
    CHECK(tl_mock_stat(mock1, "chat_requests") - before == FLOOD_CALLS, "flood: the backend got each call once (%lld)",
          tl_mock_stat(mock1, "chat_requests") - before);
    CHECK(aigw_upstream_in_flight(up) == 0 && aigw_upstream_queued(up) == 0, "flood: gauges back to 0");
    free_all(p, FLOOD_CALLS);

    /* a silent backend (the first token 1.5 s away): no socket wakes the
     * engine, yet the whole flood is taken in at once, 64 calls at the
     * model and the rest in the queue (an engine that slept between slices
     * would need half a second per slice) */
    tl_mock_config(mock1, "{\"first_token_ms\":1500,\"slots\":100}");
    for (int i = 0; i < FLOOD_CALLS; i++)
        submit(up, &p[i]);
    {
        int64_t end = aigw_now_ms() + 5000;

        while (aigw_upstream_in_flight(up) + aigw_upstream_queued(up) < FLOOD_CALLS && aigw_now_ms() < end)
            sleep_ms(10);
    }
    CHECK(aigw_upstream_in_flight(up) == 64 && aigw_upstream_queued(up) == FLOOD_CALLS - 64,
          "flood, silent backend: all taken in within 5 s (%zu at the model, %zu queued)", aigw_upstream_in_flight(up),
          aigw_upstream_queued(up));
    aigw_upstream_stop(up); /* fails what is left: 503 shutting down */
    CHECK(wait_all(p, FLOOD_CALLS, 10000), "flood, silent backend: every call done at stop");
    free_all(p, FLOOD_CALLS);
    aigw_config_free(&cfg);
    {
        int64_t end = aigw_now_ms() + 10000; /* the mock's abandoned calls end at their first token */

        while (tl_mock_stat(mock1, "in_flight") > 0 && aigw_now_ms() < end)
            sleep_ms(50);
    }
    reset_mocks();
}

/* Two backends in one group share the load. */
static void
test_spread(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[8];
    int ok = 0;

    reset_mocks();
    tl_mock_config(mock1, "{\"token_latency_ms\":10}");
    tl_mock_config(mock2, "{\"token_latency_ms\":10}");
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 2);
    add_backend(&cfg, "mock2", mock2, 2);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 8; i++)
        submit(up, &p[i]);
    CHECK(wait_all(p, 8, 10000), "spread: all done");
    for (int i = 0; i < 8; i++)
        ok += res(&p[i])->status == 200;
    CHECK(ok == 8, "spread: %d of 8 succeeded", ok);
    CHECK(tl_mock_stat(mock1, "chat_ok") >= 2 && tl_mock_stat(mock2, "chat_ok") >= 2,
          "spread: mock1 %lld, mock2 %lld answers", tl_mock_stat(mock1, "chat_ok"), tl_mock_stat(mock2, "chat_ok"));
    free_all(p, 8);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

static void
test_queue_full(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[3];

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":400}");
    cfg_init(&cfg);
    cfg.queue_size = 1;
    add_backend(&cfg, "mock1", mock1, 1);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 3; i++)
        submit(up, &p[i]);
    CHECK(wait_all(&p[2], 1, 3000), "queue full: the third call fails at once");
    check_error("queue full", &p[2], 503, "upstream_unavailable");
    CHECK(res(&p[2])->retry_after_s == 1, "queue full: retry_after_s %d", res(&p[2])->retry_after_s);
    CHECK(wait_all(p, 2, 5000), "queue full: the others finish");
    CHECK(res(&p[0])->status == 200 && res(&p[1])->status == 200, "queue full: running + queued succeed (%d, %d)",
          res(&p[0])->status, res(&p[1])->status);
    CHECK(p[1].done_ms - p[1].submit_ms >= 700, "queue full: the queued call waited for the slot (%lld ms)",
          (long long)(p[1].done_ms - p[1].submit_ms));
    free_all(p, 3);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

static void
test_queue_timeout(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[2];
    int64_t waited;

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":800}");
    cfg_init(&cfg);
    cfg.queue_timeout_ms = 200;
    add_backend(&cfg, "mock1", mock1, 1);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p[0]);
    submit(up, &p[1]);
    CHECK(wait_all(&p[1], 1, 2000), "queue timeout: second call done");
    waited = p[1].done_ms - p[1].submit_ms;
    check_error("queue timeout", &p[1], 503, "upstream_unavailable");
    CHECK(waited >= 180 && waited < 5000, "queue timeout: failed after %lld ms (want ~200; generous bound for loaded CI)", (long long)waited);
    CHECK(wait_all(p, 1, 5000) && res(&p[0])->status == 200, "queue timeout: the running call succeeds");
    CHECK(tl_mock_stat(mock1, "chat_requests") == 1, "queue timeout: the timed-out call never reached the mock");
    free_all(p, 2);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* Two query types share one slot: a freed slot goes to the oldest waiting
 * call over both groups, not to the first group. */
static void
test_fair_groups(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[3];
    const int types[3] = {0, 1, 0};

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":150}");
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 1);
    cfg.route_backends[1][0] = 0;
    cfg.n_route_backends[1] = 1;
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 3; i++) {
        memset(&p[i], 0, sizeof(p[i]));
        p[i].call = aigw_upstream_submit(up, types[i], BODY, strlen(BODY), on_done, &p[i]);
    }
    CHECK(wait_all(p, 3, 5000), "fair: all done");
    CHECK(res(&p[0])->status == 200 && res(&p[1])->status == 200 && res(&p[2])->status == 200, "fair: all succeed");
    CHECK(p[0].done_ms <= p[1].done_ms && p[1].done_ms <= p[2].done_ms, "fair: served in submit order (%lld %lld %lld)",
          (long long)p[0].done_ms, (long long)p[1].done_ms, (long long)p[2].done_ms);
    free_all(p, 3);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* One call against mock1 in the given failure mode. */
static void
expect_mode(const char *mode, int status, const char *code)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    char json[128];

    reset_mocks();
    snprintf(json, sizeof(json), "{\"mode\":\"%s\",\"fail_next\":1}", mode);
    tl_mock_config(mock1, json);
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p);
    CHECK(wait_all(&p, 1, 5000), "%s: done", mode);
    check_error(mode, &p, status, code);
    CHECK(res(&p)->backend && strcmp(res(&p)->backend, "mock1") == 0, "%s: backend named", mode);
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

static void
test_hang_timeout(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    int64_t took;

    reset_mocks();
    tl_mock_config(mock2, "{\"mode\":\"hang\",\"fail_next\":1}");
    cfg_init(&cfg);
    cfg.timeout_ms = 300;
    add_backend(&cfg, "mock2", mock2, 2);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p);
    CHECK(wait_all(&p, 1, 3000), "hang: done");
    took = p.done_ms - p.submit_ms;
    check_error("hang", &p, 504, "upstream_timeout");
    CHECK(took >= 280 && took <= 10000, "hang: 504 after %lld ms (want ~300; generous bound for loaded CI)", (long long)took);
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* A refused connection is retried once on another backend of the group. */
static void
test_retry(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[4];
    char *dead = dead_url();
    int ok = 0;

    reset_mocks();
    cfg_init(&cfg);
    add_backend(&cfg, "dead", dead, 2); /* listed first: the first call tries it first */
    add_backend(&cfg, "good", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 4; i++) {
        submit(up, &p[i]);
        CHECK(wait_all(&p[i], 1, 5000), "retry: call %d done", i);
    }
    for (int i = 0; i < 4; i++)
        ok += res(&p[i])->status == 200 && strcmp(res(&p[i])->backend, "good") == 0;
    CHECK(ok == 4, "retry: %d of 4 calls succeeded through the good backend", ok);
    CHECK(tl_mock_stat(mock1, "chat_requests") == 4, "retry: the good backend saw each call once");
    free_all(p, 4);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);

    /* only dead backends: 503 after trying each once */
    cfg_init(&cfg);
    add_backend(&cfg, "dead", dead, 2);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p[0]);
    CHECK(wait_all(p, 1, 3000), "dead only: done");
    check_error("dead only", &p[0], 503, "upstream_unavailable");
    free_all(p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    free(dead);
}

/* llama-server answers 503 "Loading model" before the request reaches a
 * slot (its HTTP side is up while a restarted or swapped model loads, and
 * the prober sees it only at its next probe): nothing ran, so the call goes
 * once to another backend of the group, as after a refused connection.
 * With no other backend it stays a 502, after one attempt. */
static void
test_retry_loading(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[4];
    int ok = 0;

    reset_mocks();
    tl_mock_config(mock1, "{\"mode\":\"loading\"}");
    cfg_init(&cfg);
    add_backend(&cfg, "loading", mock1, 2);
    add_backend(&cfg, "good", mock2, 2);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 4; i++) {
        if (i % 2 == 0)
            submit(up, &p[i]);
        else
            submit_stream(up, &p[i]);
        CHECK(wait_all(&p[i], 1, 5000), "loading retry: call %d done", i);
    }
    for (int i = 0; i < 4; i++)
        ok += res(&p[i])->status == 200 && strcmp(res(&p[i])->backend, "good") == 0;
    CHECK(ok == 4, "loading retry: %d of 4 calls (plain and streamed) succeeded through the good backend", ok);
    CHECK(tl_mock_stat(mock1, "chat_requests") >= 1, "loading retry: the loading backend was tried (%lld)",
          tl_mock_stat(mock1, "chat_requests"));
    CHECK(tl_mock_stat(mock2, "chat_requests") == 4, "loading retry: the good backend saw each call once (%lld)",
          tl_mock_stat(mock2, "chat_requests"));
    free_all(p, 4);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);

    reset_mocks();
    tl_mock_config(mock1, "{\"mode\":\"loading\"}");
    cfg_init(&cfg);
    add_backend(&cfg, "loading", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p[0]);
    CHECK(wait_all(p, 1, 5000), "loading only: done");
    check_error("loading only", &p[0], 502, "upstream_error");
    CHECK(tl_mock_stat(mock1, "chat_requests") == 1, "loading only: one attempt (%lld)",
          tl_mock_stat(mock1, "chat_requests"));
    free_all(p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    tl_mock_reset(mock1);
}

/* Run n calls one after another; returns how many got status. */
static int
run_seq(struct aigw_upstream *up, int n, int status)
{
    struct pending p;
    int hits = 0;

    for (int i = 0; i < n; i++) {
        submit(up, &p);
        if (wait_all(&p, 1, 5000))
            hits += res(&p)->status == status;
        free_all(&p, 1);
    }
    return hits;
}

/* fail_threshold failures mark a backend down for down_ms; it then gets no
 * calls; afterwards it is back on probation. */
static void
test_passive_single(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;
    int64_t t0;

    reset_mocks();
    tl_mock_config(mock1, "{\"mode\":\"loading\"}");
    cfg_init(&cfg);
    cfg.fail_threshold = 3;
    cfg.down_ms = 1000;
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    CHECK(run_seq(up, 3, 502) == 3, "passive: three 502s");
    t0 = aigw_now_ms();
    tl_mock_config(mock1, "{\"mode\":\"ok\"}");
    submit(up, &p);
    CHECK(wait_all(&p, 1, 3000), "passive: down backend fails fast");
    check_error("passive down", &p, 503, "upstream_unavailable");
    free_all(&p, 1);
    CHECK(tl_mock_stat(mock1, "chat_requests") == 3, "passive: no request reached the down backend (%lld)",
          tl_mock_stat(mock1, "chat_requests"));
    sleep_ms(1100 - (long)(aigw_now_ms() - t0));
    /* back on probation: the first failure marks it down again */
    tl_mock_config(mock1, "{\"mode\":\"loading\",\"fail_next\":1}");
    CHECK(run_seq(up, 1, 502) == 1, "passive: back after down_ms, fails once");
    t0 = aigw_now_ms();
    CHECK(run_seq(up, 1, 503) == 1, "passive: one failure on probation marks it down again");
    CHECK(tl_mock_stat(mock1, "chat_requests") == 4, "passive: the backend got only the probation call");
    sleep_ms(1100 - (long)(aigw_now_ms() - t0));
    CHECK(run_seq(up, 1, 200) == 1, "passive: back again and healthy");
    /* a success clears the count: one failure is no longer enough */
    tl_mock_config(mock1, "{\"mode\":\"loading\",\"fail_next\":1}");
    CHECK(run_seq(up, 1, 502) == 1 && run_seq(up, 1, 200) == 1, "passive: success cleared the count");
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* A 500 is the request's failure, not the backend's (llama-server answers
 * 500 for a request it cannot serve): with fail_threshold 1, five of them
 * leave the backend up, and the next call reaches it. */
static void
test_passive_ignores_500(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;

    reset_mocks();
    tl_mock_config(mock1, "{\"mode\":\"error500\",\"fail_next\":5}");
    cfg_init(&cfg);
    cfg.fail_threshold = 1;
    cfg.down_ms = 5000;
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    CHECK(run_seq(up, 5, 502) == 5, "500s: five 502 upstream_error");
    CHECK(run_seq(up, 1, 200) == 1, "500s: the backend is still up, the next call succeeds");
    CHECK(tl_mock_stat(mock1, "chat_requests") == 6, "500s: all six calls reached the backend (%lld)",
          tl_mock_stat(mock1, "chat_requests"));
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* Two backends, one failing: once it is down every call goes to the other.
 * Its 503s ("Loading model") are retried on the other meanwhile, so no call
 * fails. */
static void
test_passive_pair(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    int ok;

    reset_mocks();
    tl_mock_config(mock1, "{\"mode\":\"loading\"}");
    cfg_init(&cfg);
    cfg.fail_threshold = 2;
    cfg.down_ms = 5000;
    add_backend(&cfg, "bad", mock1, 2);
    add_backend(&cfg, "good", mock2, 2);
    up = aigw_upstream_start(&cfg, NULL);
    ok = run_seq(up, 10, 200);
    CHECK(tl_mock_stat(mock1, "chat_requests") == 2, "pair: the failing backend got %lld calls, want 2",
          tl_mock_stat(mock1, "chat_requests"));
    CHECK(ok == 10, "pair: %d of 10 succeeded, want 10", ok);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* A base URL given with /v1, as OpenAI clients take one: the prober asks
 * <url>/health, which llama-server serves as /v1/health too, so the backend
 * looks up, while every call goes to /v1/v1/chat/completions and gets a
 * 404. Nothing ran: the call goes to another backend of the group, and the
 * 404s count against the backend, which goes down. */
static void
test_v1_base_url(void)
{
    struct aigw_config cfg;
    struct aigw_health *h;
    struct aigw_upstream *up;
    struct pending p;
    char url[300];
    size_t n = strlen(mock1);
    int64_t end;
    int ok;

    while (n > 0 && mock1[n - 1] == '/')
        n--;
    snprintf(url, sizeof(url), "%.*s/v1", (int)n, mock1);
    reset_mocks();
    cfg_init(&cfg);
    cfg.fail_threshold = 2;
    cfg.down_ms = 5000;
    add_backend(&cfg, "v1", url, 2);
    add_backend(&cfg, "good", mock2, 2);
    h = aigw_health_start(&cfg);
    up = aigw_upstream_start(&cfg, h);
    for (end = aigw_now_ms() + 3000; !(aigw_health_up(h, 0) && aigw_health_up(h, 1)) && aigw_now_ms() < end;)
        sleep_ms(20);
    CHECK(aigw_health_up(h, 0), "/v1 base URL: the prober sees the backend up (/v1/health)");
    ok = run_seq(up, 10, 200);
    CHECK(ok == 10, "/v1 base URL: %d of 10 calls succeeded, want 10", ok);
    CHECK(tl_mock_stat(mock2, "chat_requests") == 10, "/v1 base URL: the good backend took all 10 (%lld)",
          tl_mock_stat(mock2, "chat_requests"));
    aigw_upstream_stop(up);
    aigw_health_stop(h);
    aigw_config_free(&cfg);

    /* alone in its group: two 404s (502 each) take it down */
    cfg_init(&cfg);
    cfg.fail_threshold = 2;
    cfg.down_ms = 5000;
    add_backend(&cfg, "v1", url, 2);
    up = aigw_upstream_start(&cfg, NULL);
    CHECK(run_seq(up, 2, 502) == 2, "/v1 base URL alone: two 502s");
    submit(up, &p);
    CHECK(wait_all(&p, 1, 3000), "/v1 base URL alone: done");
    check_error("/v1 base URL alone, after two 404s", &p, 503, "upstream_unavailable");
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* With the active prober: a backend it reports down gets no calls. */
static void
test_active_health(void)
{
    struct aigw_config cfg;
    struct aigw_health *h;
    struct aigw_upstream *up;
    struct pending p;
    int64_t end;

    reset_mocks();
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 2);
    h = aigw_health_start(&cfg);
    up = aigw_upstream_start(&cfg, h);
    for (end = aigw_now_ms() + 3000; !aigw_health_up(h, 0) && aigw_now_ms() < end;)
        sleep_ms(20);
    CHECK(run_seq(up, 1, 200) == 1, "active: up backend answers");
    tl_mock_config(mock1, "{\"mode\":\"loading\"}"); /* /health answers 503 too */
    for (end = aigw_now_ms() + 3000; aigw_health_up(h, 0) && aigw_now_ms() < end;)
        sleep_ms(20);
    CHECK(!aigw_health_up(h, 0), "active: prober saw the backend down");
    submit(up, &p);
    CHECK(wait_all(&p, 1, 3000), "active: fails fast");
    check_error("active down", &p, 503, "upstream_unavailable");
    CHECK(res(&p)->retry_after_s == 2, "active: retry_after_s %d", res(&p)->retry_after_s);
    CHECK(tl_mock_stat(mock1, "chat_requests") == 1, "active: no call reached the down backend");
    free_all(&p, 1);
    tl_mock_config(mock1, "{\"mode\":\"ok\"}");
    aigw_upstream_stop(up);
    aigw_health_stop(h);
    aigw_config_free(&cfg);
}

/* A probe that gets no answer at all (a llama-server busy with a long
 * prompt) takes an up backend down only on the second in a row; an answer
 * other than 200 does at once (test_active_health). */
static void
test_health_misses(void)
{
    struct aigw_config cfg;
    struct aigw_health *h;
    struct closer srv;
    char url[64];
    int64_t end;
    bool went_down = false;

    closer_start(&srv, NULL);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", srv.port);
    cfg_init(&cfg);
    cfg.health_interval_ms = 100;
    add_backend(&cfg, "probed", url, 1);
    h = aigw_health_start(&cfg);
    for (end = aigw_now_ms() + 3000; !aigw_health_up(h, 0) && aigw_now_ms() < end;)
        sleep_ms(20);
    CHECK(aigw_health_up(h, 0), "misses: the backend is up");
    atomic_store(&srv.mute, 1);
    /* until the muted probe came, then its 1 s timeout and the next probe */
    for (end = aigw_now_ms() + 5000; atomic_load(&srv.mute) > 0 && aigw_now_ms() < end;) {
        went_down |= !aigw_health_up(h, 0);
        sleep_ms(10);
    }
    for (end = aigw_now_ms() + 1500; aigw_now_ms() < end;) {
        went_down |= !aigw_health_up(h, 0);
        sleep_ms(10);
    }
    CHECK(atomic_load(&srv.mute) == 0 && !went_down, "misses: one probe without an answer leaves it up");
    atomic_store(&srv.mute, 1000);
    for (end = aigw_now_ms() + 6000; aigw_health_up(h, 0) && aigw_now_ms() < end;)
        sleep_ms(20);
    CHECK(!aigw_health_up(h, 0), "misses: probes that keep getting no answer take it down");
    atomic_store(&srv.mute, 0);
    for (end = aigw_now_ms() + 5000; !aigw_health_up(h, 0) && aigw_now_ms() < end;)
        sleep_ms(20);
    CHECK(aigw_health_up(h, 0), "misses: back up once it answers");
    aigw_health_stop(h);
    aigw_config_free(&cfg);
    closer_stop(&srv);
}

/* A query type without backends fails at once. */
static void
test_no_route(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p;

    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    memset(&p, 0, sizeof(p));
    p.call = aigw_upstream_submit(up, 1, BODY, strlen(BODY), on_done, &p);
    CHECK(wait_all(&p, 1, 1000), "no route: done");
    check_error("no route", &p, 503, "upstream_unavailable");
    free_all(&p, 1);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

static pthread_mutex_t free_mu = PTHREAD_MUTEX_INITIALIZER; /* guards freed_ok, freed_n */
static int freed_ok, freed_n;

/* done() that frees its call right away, as a fire-and-forget caller would. */
static void
on_done_free(struct aigw_upstream_call *call, void *ud)
{
    int status = aigw_upstream_result(call)->status;

    (void)ud;
    aigw_upstream_call_free(call);
    pthread_mutex_lock(&free_mu);
    freed_n++;
    freed_ok += status == 200;
    pthread_mutex_unlock(&free_mu);
}

static void
test_free_in_done(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    int64_t end;
    int n = 0;

    reset_mocks();
    cfg_init(&cfg);
    add_backend(&cfg, "mock1", mock1, 2);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 6; i++)
        aigw_upstream_submit(up, 0, BODY, strlen(BODY), on_done_free, NULL);
    for (end = aigw_now_ms() + 5000; n < 6 && aigw_now_ms() < end; sleep_ms(10)) {
        pthread_mutex_lock(&free_mu);
        n = freed_n;
        pthread_mutex_unlock(&free_mu);
    }
    CHECK(n == 6 && freed_ok == 6, "free in done: %d done, %d ok", n, freed_ok);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
}

/* Stop with calls in flight (hung backend) and queued: each completes once with 503. */
static void
test_stop(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[4];
    int64_t end;

    reset_mocks();
    tl_mock_config(mock2, "{\"mode\":\"hang\",\"fail_next\":2}");
    cfg_init(&cfg);
    cfg.timeout_ms = 30000;
    add_backend(&cfg, "mock2", mock2, 2);
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < 4; i++)
        submit(up, &p[i]);
    for (end = aigw_now_ms() + 3000; tl_mock_stat(mock2, "chat_requests") < 2 && aigw_now_ms() < end;)
        sleep_ms(10);
    CHECK(aigw_upstream_in_flight(up) == 2 && aigw_upstream_queued(up) == 2, "stop: 2 in flight (%zu), 2 queued (%zu)",
          aigw_upstream_in_flight(up), aigw_upstream_queued(up));
    aigw_upstream_stop(up);
    for (int i = 0; i < 4; i++)
        check_error("stop", &p[i], 503, "upstream_unavailable");
    CHECK(strcmp(res(&p[0])->error_detail, "shutting down") == 0, "stop: detail %s", res(&p[0])->error_detail);
    free_all(p, 4);
    aigw_config_free(&cfg);
}

/* ---- reconfigure (SIGHUP reload of backends and routes) ---- */

static void
wait_gauges(struct aigw_upstream *up, size_t in_flight, size_t queued)
{
    for (int64_t end = aigw_now_ms() + 5000;
         (aigw_upstream_in_flight(up) != in_flight || aigw_upstream_queued(up) != queued) && aigw_now_ms() < end;)
        sleep_ms(10);
}

static bool
answered_by(const struct pending *p, const char *backend)
{
    const struct aigw_upstream_result *r = res(p);

    return r->status == 200 && r->backend != NULL && strcmp(r->backend, backend) == 0;
}

/* Hand cfg (taken over) to the engine as configuration generation gen. */
static void
reconfigure(struct aigw_upstream *up, struct aigw_config *cfg, uint64_t gen)
{
    struct aigw_snapshot *snap = aigw_snapshot_adopt(cfg, gen);

    aigw_upstream_reconfigure(up, snap);
    aigw_snapshot_unref(snap);
}

/* The only backend is replaced: the call in flight ends on the old one, the
 * queued call and new calls go to the new one. */
static void
test_reconfigure_replace(void)
{
    struct aigw_config cfg, next;
    struct aigw_upstream *up;
    struct pending p[3];

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":1500}");
    cfg_init(&cfg);
    add_backend(&cfg, "old", mock1, 1);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p[0]);
    submit(up, &p[1]);
    wait_gauges(up, 1, 1);
    CHECK(aigw_upstream_in_flight(up) == 1 && aigw_upstream_queued(up) == 1, "replace: one in flight, one queued");
    cfg_init(&next);
    add_backend(&next, "new", mock2, 1);
    reconfigure(up, &next, 2);
    CHECK(wait_all(&p[1], 1, 5000) && answered_by(&p[1], "new"), "replace: the queued call went to the new backend");
    submit(up, &p[2]);
    CHECK(wait_all(p, 3, 10000), "replace: all done");
    CHECK(answered_by(&p[0], "old"), "replace: the call in flight finished on the removed backend");
    CHECK(answered_by(&p[2], "new"), "replace: a new call goes to the new backend");
    CHECK(tl_mock_stat(mock1, "chat_requests") == 1 && tl_mock_stat(mock2, "chat_requests") == 2,
          "replace: mock1 got 1, mock2 got 2");
    wait_gauges(up, 0, 0);
    CHECK(aigw_upstream_in_flight(up) == 0 && aigw_upstream_queued(up) == 0, "replace: gauges back to 0");
    free_all(p, 3);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    tl_mock_reset(mock1);
}

/* The same with active health: a backend new to the table gets no call
 * before its first probe (sent at once) answers, but the calls that would
 * go to it wait for that answer instead of failing at once with "no
 * backend up" (the queued one, and one submitted right after the reload);
 * a new backend whose probe says it is down still fails them. */
static void
test_reconfigure_probed(void)
{
    struct aigw_config cfg, next;
    struct aigw_health *h;
    struct aigw_upstream *up;
    struct pending p[4];
    char *dead = dead_url();

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":1500}");
    cfg_init(&cfg);
    cfg.health_interval_ms = 60000; /* only the probes a (re)configuration sends at once */
    add_backend(&cfg, "old", mock1, 1);
    h = aigw_health_start(&cfg);
    up = aigw_upstream_start(&cfg, h);
    for (int64_t end = aigw_now_ms() + 3000; !aigw_health_up(h, 0) && aigw_now_ms() < end;)
        sleep_ms(20);
    submit(up, &p[0]);
    submit(up, &p[1]);
    wait_gauges(up, 1, 1);
    CHECK(aigw_upstream_in_flight(up) == 1 && aigw_upstream_queued(up) == 1, "probed: one in flight, one queued");
    cfg_init(&next);
    next.health_interval_ms = 60000;
    add_backend(&next, "new", mock2, 1);
    reconfigure(up, &next, 2);
    submit(up, &p[2]);
    CHECK(wait_all(p, 3, 10000), "probed: all done");
    CHECK(answered_by(&p[1], "new"), "probed: the queued call waited for the new backend's probe and went there (%d %s)",
          res(&p[1])->status, res(&p[1])->error_detail ? res(&p[1])->error_detail : "-");
    CHECK(answered_by(&p[2], "new"), "probed: so did a call submitted right after the reload (%d %s)",
          res(&p[2])->status, res(&p[2])->error_detail ? res(&p[2])->error_detail : "-");
    CHECK(answered_by(&p[0], "old"), "probed: the call in flight finished on the removed backend");
    cfg_init(&next);
    next.health_interval_ms = 60000;
    add_backend(&next, "gone", dead, 1);
    reconfigure(up, &next, 3);
    submit(up, &p[3]);
    CHECK(wait_all(&p[3], 1, 5000), "probed: a call for a backend that is not there ends");
    check_error("probed down", &p[3], 503, "upstream_unavailable");
    CHECK(tl_mock_stat(mock2, "chat_requests") == 2, "probed: mock2 got 2");
    free_all(p, 4);
    aigw_upstream_stop(up);
    aigw_health_stop(h);
    aigw_config_free(&cfg);
    free(dead);
    tl_mock_reset(mock1);
}

/* A backend kept by name and URL keeps its in-flight count even when its
 * place in the list changes: it stays full, so new calls use the other. */
static void
test_reconfigure_keeps_counts(void)
{
    struct aigw_config cfg, next;
    struct aigw_upstream *up;
    struct pending p[3];

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":1500}");
    tl_mock_config(mock2, "{\"first_token_ms\":1500}");
    cfg_init(&cfg);
    add_backend(&cfg, "a", mock1, 1);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p[0]);
    wait_gauges(up, 1, 0);
    cfg_init(&next);
    add_backend(&next, "b", mock2, 1);
    add_backend(&next, "a", mock1, 1);
    reconfigure(up, &next, 2);
    sleep_ms(100); /* applied on the engine's next round (it wakes for it) */
    submit(up, &p[1]);
    submit(up, &p[2]);
    wait_gauges(up, 2, 1);
    CHECK(aigw_upstream_in_flight(up) == 2 && aigw_upstream_queued(up) == 1,
          "keep: a is still full after the reload (%zu in flight, %zu queued; want 2 and 1)",
          aigw_upstream_in_flight(up), aigw_upstream_queued(up));
    CHECK(wait_all(p, 3, 10000), "keep: all done");
    CHECK(answered_by(&p[0], "a") && answered_by(&p[1], "b") && res(&p[2])->status == 200, "keep: all answered");
    wait_gauges(up, 0, 0);
    CHECK(aigw_upstream_in_flight(up) == 0, "keep: gauges back to 0");
    free_all(p, 3);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    reset_mocks();
}

/* Every slot holds a removed backend with a call in flight: the reload
 * waits for a slot to free (the old table serves meanwhile), then applies. */
static void
test_reconfigure_deferred(void)
{
    struct aigw_config cfg, next;
    struct aigw_upstream *up;
    struct pending p[AIGW_MAX_BACKENDS + 2];
    const int during = AIGW_MAX_BACKENDS, after = AIGW_MAX_BACKENDS + 1;
    char name[16];
    int old_ok = 0;

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":1000,\"slots\":32}");
    cfg_init(&cfg);
    for (int i = 0; i < AIGW_MAX_BACKENDS; i++) {
        snprintf(name, sizeof(name), "old%d", i);
        /* one host: curl's per-host connection cap is the largest backend cap */
        add_backend(&cfg, name, mock1, i == 0 ? AIGW_MAX_BACKENDS : 1);
    }
    up = aigw_upstream_start(&cfg, NULL);
    for (int i = 0; i < AIGW_MAX_BACKENDS; i++)
        submit(up, &p[i]); /* least loaded first: one per backend, every slot busy */
    wait_gauges(up, AIGW_MAX_BACKENDS, 0);
    cfg_init(&next);
    add_backend(&next, "fresh", mock2, 1);
    reconfigure(up, &next, 2);
    sleep_ms(100);
    submit(up, &p[during]);
    CHECK(wait_all(p, AIGW_MAX_BACKENDS + 1, 15000), "deferred: all done");
    for (int i = 0; i <= during; i++)
        old_ok += res(&p[i])->status == 200 && strncmp(res(&p[i])->backend, "old", 3) == 0;
    CHECK(old_ok == AIGW_MAX_BACKENDS + 1, "deferred: the old table served until it could be replaced (%d)", old_ok);
    submit(up, &p[after]);
    CHECK(wait_all(&p[after], 1, 5000) && answered_by(&p[after], "fresh"), "deferred: then the new table applies");
    CHECK(tl_mock_stat(mock2, "chat_requests") == 1, "deferred: mock2 got the one call");
    free_all(p, AIGW_MAX_BACKENDS + 2);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    reset_mocks();
}

/* The drain deadline: cancel fails what is queued and in flight, and later
 * submits, but the engine stays usable until stop. */
static void
test_cancel(void)
{
    struct aigw_config cfg;
    struct aigw_upstream *up;
    struct pending p[3];

    reset_mocks();
    tl_mock_config(mock1, "{\"first_token_ms\":20000}");
    cfg_init(&cfg);
    cfg.timeout_ms = 30000;
    add_backend(&cfg, "mock1", mock1, 1);
    up = aigw_upstream_start(&cfg, NULL);
    submit(up, &p[0]);
    submit(up, &p[1]);
    wait_gauges(up, 1, 1);
    aigw_upstream_cancel_all(up);
    CHECK(wait_all(p, 2, 5000), "cancel: both calls ended at once");
    check_error("cancel in flight", &p[0], 503, "upstream_unavailable");
    check_error("cancel queued", &p[1], 503, "upstream_unavailable");
    submit(up, &p[2]);
    CHECK(wait_all(&p[2], 1, 1000), "cancel: a later submit ends at once");
    check_error("cancel later", &p[2], 503, "upstream_unavailable");
    CHECK(aigw_upstream_stalled_ms(up) < 10000, "cancel: the engine loop still goes round");
    free_all(p, 3);
    aigw_upstream_stop(up);
    aigw_config_free(&cfg);
    tl_mock_reset(mock1);
}

int
main(void)
{
    mock1 = tl_env("AIGW_MOCK_URL");
    mock2 = tl_env("AIGW_MOCK2_URL");
    json_object_seed(0);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    aigw_log_init(LOG_NOTICE, 0);
    reset_mocks();

    test_success();
    test_idle_cpu();
    test_backend_closes_idle();
    test_slots();
    test_many_submitters();
    test_flood();
    test_sse_data_lines();
    test_hostname_backend();
    test_open_after_done();
    test_llama_variants();
    test_health_misses();
    test_spread();
    test_queue_full();
    test_queue_timeout();
    test_fair_groups();
    expect_mode("error500", 502, "upstream_error");
    expect_mode("loading", 502, "upstream_error");
    expect_mode("garbage", 502, "upstream_error");
    expect_mode("disconnect", 502, "upstream_error");
    test_retry();
    test_retry_loading();
    test_passive_single();
    test_passive_ignores_500();
    test_passive_pair();
    test_active_health();
    test_v1_base_url();
    test_no_route();
    test_free_in_done();
    test_reconfigure_replace();
    test_reconfigure_probed();
    test_reconfigure_keeps_counts();
    test_reconfigure_deferred();
    test_cancel();
    /* hangs last: hung requests stay parked in the mock */
    test_hang_timeout();
    test_stop();

    reset_mocks();
    curl_global_cleanup();
    return tl_done();
}
