/* sseload - hold N server-sent-event streams open at once and measure the
 * gaps between their events (bench S4). One thread, epoll, non-blocking
 * sockets, HTTP/1.1 with Connection: close.
 *
 *   sseload -p PORT -P PATH -c STREAMS [-H "Name: value"]... -b BODY [-t TIMEOUT_S]
 *
 * BODY may contain one %d, replaced by the stream's index (unique prompts).
 * Prints one JSON object: streams, completed (saw [DONE] or a closing
 * "done" event), errors, events, ttft_p50_ms / ttft_p99_ms (request to
 * first event) and gap_p50_ms / gap_p99_ms / gap_max_ms (between
 * consecutive events of one stream, over all streams), and the same gaps in
 * steady state only (steady_gaps, steady_gap_p50_ms / steady_gap_p99_ms):
 * those that began after the last stream got its first event, i.e. without
 * the ramp-up in which the server is still taking in the other streams.
 * Events that carry the mock's "x_mock_sent_us" stamp (its stamp_events
 * setting: the CLOCK_MONOTONIC instant it produced the event) also give
 * their one-way latency, production to arrival here (lat_samples,
 * lat_p50_ms / lat_p99_ms / lat_max_ms, and steady_lat_* for the events
 * that arrived after the last stream got its first): what the path between
 * the model server and the client added to each token, without the gap's
 * dependence on the events around it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "aigw/util.h"

struct stream {
    int fd;
    char *req;
    size_t req_len, req_off;
    double start_ms, last_ms, first_ms;
    long events;
    char tail[24];     /* the last bytes of the previous read, to match across reads */
    size_t tail_len;
    bool done, failed, closed;
};

struct vec {
    double *v;
    size_t n, cap;
};

/* What the reads of every stream add up to. */
struct samples {
    struct vec gaps, gap_at, ttft, lat, lat_at;
};

/* aigw's own monotonic clock, in milliseconds */
static double
now_ms(void)
{
    return (double)aigw_now_us() / 1000.0;
}

static void
push(struct vec *v, double x)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4096;
        v->v = realloc(v->v, v->cap * sizeof(double));
        if (v->v == NULL)
            abort();
    }
    v->v[v->n++] = x;
}

static int
cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double
pct(struct vec *v, double p)
{
    if (v->n == 0)
        return 0;
    qsort(v->v, v->n, sizeof(double), cmp);
    return v->v[(size_t)(p * (double)(v->n - 1) + 0.5)];
}

/* The one-way latency (ms) of the event whose data starts at p, from the
 * mock's stamp; -1 when it has none (or the stamp is cut off by the read). */
static double
stamp_latency(const char *p, double now)
{
    static const char key[] = "{\"x_mock_sent_us\":";
    char *end;
    long long sent;

    if (strncmp(p, key, sizeof(key) - 1) != 0)
        return -1;
    sent = strtoll(p + sizeof(key) - 1, &end, 10);
    if (*end != ',' || sent <= 0)
        return -1;
    return now - (double)sent / 1000.0;
}

/* Count "data: " occurrences (one per event) in the bytes just read; the
 * tail of the previous read is prepended so a marker split across reads is
 * still seen once. Note [DONE] or a closing {"done":true event. */
static void
scan(struct stream *s, const char *buf, size_t n, struct samples *sm)
{
    size_t total = s->tail_len + n, keep;
    char *joined = malloc(total + 1);
    const char *p;

    memcpy(joined, s->tail, s->tail_len);
    memcpy(joined + s->tail_len, buf, n);
    joined[total] = '\0';
    for (p = joined; (p = strstr(p, "data: ")) != NULL; p += 6) {
        double t = now_ms();

        double lat;

        if ((size_t)(p + 6 - joined) <= s->tail_len) /* complete in the previous read: counted then */
            continue;
        if (s->events == 0) {
            push(&sm->ttft, t - s->start_ms);
            s->first_ms = t;
        } else {
            push(&sm->gaps, t - s->last_ms);
            push(&sm->gap_at, s->last_ms);
        }
        if ((lat = stamp_latency(p + 6, t)) >= 0) {
            push(&sm->lat, lat);
            push(&sm->lat_at, t);
        }
        s->last_ms = t;
        s->events++;
    }
    if (strstr(joined, "data: [DONE]") != NULL || strstr(joined, "data: {\"done\":true") != NULL)
        s->done = true;
    keep = total < sizeof(s->tail) ? total : sizeof(s->tail);
    memcpy(s->tail, joined + total - keep, keep);
    s->tail_len = keep;
    free(joined);
}

/* body with its first "%d" replaced by i (a format string from the
 * command line would be unchecked). */
static int
fill_body(char *out, size_t cap, const char *body, int i)
{
    const char *d = strstr(body, "%d");

    if (d == NULL)
        return snprintf(out, cap, "%s", body);
    return snprintf(out, cap, "%.*s%d%s", (int)(d - body), body, i, d + 2);
}

/* A numeric option in [min,max] into *out; false on junk or out of range. */
static bool
opt_int(const char *arg, long min, long max, int *out)
{
    long v;

    if (!aigw_parse_long(arg, min, max, &v))
        return false;
    *out = (int)v;
    return true;
}

static int
open_conn(int port)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

    if (fd < 0)
        return -1;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

int
main(int argc, char **argv)
{
    const char *path = "/", *body = "{}", *headers[16];
    int port = 0, n = 100, nh = 0, timeout_s = 120, opt, ep, open_n = 0;
    struct stream *st;
    struct samples sm = {0};
    struct vec steady = {0}, steady_lat = {0};
    double all_started = 0;
    long completed = 0, errors = 0, events = 0;
    struct rlimit rl;
    double deadline;

    while ((opt = getopt(argc, argv, "p:P:c:H:b:t:")) != -1) {
        bool ok = true;

        switch (opt) {
        case 'p': ok = opt_int(optarg, 1, 65535, &port); break;
        case 'P': path = optarg; break;
        case 'c': ok = opt_int(optarg, 1, 10000000, &n); break;
        case 'H': if (nh < 16) headers[nh++] = optarg; break;
        case 'b': body = optarg; break;
        case 't': ok = opt_int(optarg, 1, 86400, &timeout_s); break;
        default: ok = false; break;
        }
        if (!ok) {
            fprintf(stderr, "usage: sseload -p PORT -P PATH -c STREAMS [-H header]... -b BODY [-t TIMEOUT_S]\n");
            return 2;
        }
    }
    if (port <= 0)
        return 2;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    st = calloc((size_t)n, sizeof(*st));
    ep = epoll_create1(0);
    for (int i = 0; i < n; i++) {
        char b[8192], hdr[4096];
        size_t off = 0;
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)i};
        int blen = fill_body(b, sizeof(b), body, i);

        for (int h = 0; h < nh; h++)
            off += (size_t)snprintf(hdr + off, sizeof(hdr) - off, "%s\r\n", headers[h]);
        hdr[off] = '\0';
        st[i].req_len = (size_t)asprintf(&st[i].req,
                                         "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                                         "Content-Type: application/json\r\nAccept: text/event-stream\r\n%s"
                                         "Content-Length: %d\r\n\r\n%s",
                                         path, hdr, blen, b);
        st[i].fd = open_conn(port);
        st[i].start_ms = now_ms();
        if (st[i].fd < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, st[i].fd, &ev) != 0) {
            st[i].failed = st[i].closed = true;
            continue;
        }
        open_n++;
    }
    deadline = now_ms() + timeout_s * 1000.0;
    while (open_n > 0 && now_ms() < deadline) {
        struct epoll_event evs[256];
        int k = epoll_wait(ep, evs, 256, 1000);

        for (int e = 0; e < k; e++) {
            struct stream *s = &st[evs[e].data.u32];
            char buf[16384];

            if (s->closed)
                continue;
            if (s->req_off < s->req_len && (evs[e].events & EPOLLOUT)) {
                ssize_t w = write(s->fd, s->req + s->req_off, s->req_len - s->req_off);

                if (w > 0)
                    s->req_off += (size_t)w;
                if (s->req_off == s->req_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = evs[e].data.u32};

                    epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev);
                }
            }
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(s->fd, buf, sizeof(buf));

                    if (r > 0) {
                        scan(s, buf, (size_t)r, &sm);
                        continue;
                    }
                    if (r < 0 && (errno == EAGAIN || errno == EINTR))
                        break;
                    s->closed = true; /* EOF or error */
                    close(s->fd);
                    open_n--;
                    break;
                }
            }
        }
    }
    for (int i = 0; i < n; i++) {
        if (!st[i].closed)
            close(st[i].fd);
        if (st[i].done)
            completed++;
        else
            errors++;
        events += st[i].events;
        if (st[i].first_ms > all_started)
            all_started = st[i].first_ms;
        free(st[i].req);
    }
    /* steady state: gaps that began once every stream had its first event
     * (the ramp-up, where the server is still accepting and connecting the
     * later streams, is left out); gap_at[i] is when gaps[i] began */
    for (size_t i = 0; i < sm.gaps.n; i++)
        if (sm.gap_at.v[i] >= all_started)
            push(&steady, sm.gaps.v[i]);
    for (size_t i = 0; i < sm.lat.n; i++)
        if (sm.lat_at.v[i] >= all_started)
            push(&steady_lat, sm.lat.v[i]);
    printf("{\"streams\": %d, \"completed\": %ld, \"errors\": %ld, \"events\": %ld, "
           "\"ttft_p50_ms\": %.3f, \"ttft_p99_ms\": %.3f, \"gap_p50_ms\": %.3f, \"gap_p99_ms\": %.3f, "
           "\"gap_max_ms\": %.3f, \"steady_gaps\": %zu, \"steady_gap_p50_ms\": %.3f, \"steady_gap_p99_ms\": %.3f, "
           "\"lat_samples\": %zu, \"lat_p50_ms\": %.3f, \"lat_p99_ms\": %.3f, \"lat_max_ms\": %.3f, "
           "\"steady_lat_samples\": %zu, \"steady_lat_p50_ms\": %.3f, \"steady_lat_p99_ms\": %.3f}\n",
           n, completed, errors, events, pct(&sm.ttft, 0.5), pct(&sm.ttft, 0.99), pct(&sm.gaps, 0.5),
           pct(&sm.gaps, 0.99), pct(&sm.gaps, 1.0), steady.n, pct(&steady, 0.5), pct(&steady, 0.99), sm.lat.n,
           pct(&sm.lat, 0.5), pct(&sm.lat, 0.99), pct(&sm.lat, 1.0), steady_lat.n, pct(&steady_lat, 0.5),
           pct(&steady_lat, 0.99));
    free(st);
    free(sm.gaps.v);
    free(sm.gap_at.v);
    free(sm.ttft.v);
    free(sm.lat.v);
    free(sm.lat_at.v);
    free(steady.v);
    free(steady_lat.v);
    return errors == 0 && completed == n ? 0 : 1; /* the numbers are printed either way */
}
