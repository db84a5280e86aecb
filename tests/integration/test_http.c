/* test_http.c - HTTP bad input, routing, request ids, ops routes, cache invalidation */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

#define CLINIC1 "11111111-1111-4111-8111-111111111111"

static int port;
static char *admin_tok;

static long long
generation(void)
{
    long long g = tl_redis_int("GET aigw:{" CLINIC1 "}:gen");

    return g < 0 ? 0 : g;
}

static void
expect_error(const char *name, const struct tl_resp *r, long status, const char *code)
{
    char rid[80];

    tl_expect(name, r, status, code);
    CHECK(tl_json_str(r, "error.request_id", rid, sizeof(rid)) != NULL, "%s: request_id in the error", name);
}

static void
post_raw(const char *name, const char *ctype, const char *body, size_t len, long status, const char *code)
{
    char auth[4096], ct[128];
    const char *h[4] = {auth, ct, NULL, NULL};
    struct tl_resp r;
    long long before = generation();

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", admin_tok);
    if (ctype != NULL)
        snprintf(ct, sizeof(ct), "Content-Type: %s", ctype);
    else
        h[1] = NULL;
    tl_http(port, "POST", "/api/ai/cache/invalidate", h, body, len, &r);
    expect_error(name, &r, status, code);
    CHECK(generation() == before, "%s: cache generation unchanged", name);
    tl_resp_free(&r);
}

/* A raw TCP connection to aigw (fd or -1). */
static int
raw_connect(int to_port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)to_port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Headers near http.max_header_bytes: every request gets an answer, the
 * route's own or 431 headers_too_large, never a closed connection.
 * libmicrohttpd's per-connection pool also holds the parsed headers and
 * the reply's header block, so when it was exactly max_header_bytes,
 * headers a little under it were processed, billed and cached, and then
 * the reply could not be built. */
static void
test_header_limit(void)
{
    static char big[9100];
    char auth[4096], code[64];
    const char *h[4] = {auth, "Content-Type: application/json", big, NULL};
    static const char q[] = "{\"question\":\"How do I clean anti-reflective lenses?\"}";
    int silent = 0, wrong = 0, reordered = 0, answered[2] = {0, 0}, refused[2] = {0, 0};
    struct tl_resp r;
    PGconn *owner = tl_pg_owner();
    char tid[37], tcode[65], *tok;

    tl_create_tenant(owner, "enterprise", "active", tid, tcode); /* its own rate limit */
    tok = tl_token(tcode, "admin", 600);
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
    free(tok);
    for (int n = 6600; n <= 9000; n += 40) {
        memcpy(big, "X-Big: ", 7);
        memset(big + 7, 'a', (size_t)n);
        big[7 + n] = '\0';
        for (int route = 0; route < 2; route++) {
            if (route == 0)
                tl_http(port, "POST", "/api/ai/query", h, q, sizeof(q) - 1, &r);
            else
                tl_http(port, "GET", "/api/ai/limits", h, NULL, 0, &r);
            if (r.status == 200) {
                answered[route]++;
                reordered += refused[route] > 0;
            } else if (r.status == 431) {
                refused[route]++;
                wrong += !tl_json_str(&r, "error.code", code, sizeof(code)) || strcmp(code, "headers_too_large") != 0;
            } else {
                silent++;
                fprintf(stderr, "X-Big of %d bytes, %s: status %ld\n", n, route == 0 ? "query" : "limits", r.status);
            }
            tl_resp_free(&r);
        }
    }
    CHECK(silent == 0, "every request near the header limit is answered (%d were not)", silent);
    CHECK(wrong == 0, "every 431 is aigw's headers_too_large (%d were not)", wrong);
    CHECK(reordered == 0, "no request is answered after a smaller one was refused");
    CHECK(answered[0] > 0 && refused[0] > 0 && answered[1] > 0 && refused[1] > 0,
          "both routes answer below the limit and refuse above it (query %d/%d, limits %d/%d)", answered[0],
          refused[0], answered[1], refused[1]);
    CHECK(tl_usage_flushed(port), "the usage rows are written");
    CHECK(tl_usage_rows(owner, tid, "true", answered[0]) == answered[0], "a usage row for each answered query, none for a 431");

    /* the same with the bytes spread over many header lines: each one also
     * costs libmicrohttpd a record, and with the lines not counted heads of
     * 30-40 lines were processed and billed, then not answered. Far over the
     * limit, a head that does not fit libmicrohttpd's pool at all gets its
     * own 431, or nothing when not even that fits; never a billed row. */
    {
        long rows0 = tl_usage_rows(owner, tid, "true", answered[0]), ok = 0;
        int ours = 0, silent_below = 0, past_limit = 0;

        reordered = 0;
        for (int k = 0; k < 60; k++) {
            /* 50-byte lines, 20..136 of them; then 200-byte lines, 20..49 */
            int lines = k < 30 ? 20 + 4 * k : 20 + (k - 30), width = k < 30 ? 40 : 190;
            static char many[140][256];
            const char *hh[144] = {auth, "Content-Type: application/json"};
            char q2[96];

            for (int i = 0; i < lines; i++) {
                snprintf(many[i], sizeof(many[i]), "X-H%03d: %0*d", i, width, i);
                hh[2 + i] = many[i];
            }
            hh[2 + lines] = NULL;
            snprintf(q2, sizeof(q2), "{\"question\":\"many header lines %d\"}", k); /* a miss each */
            tl_http(port, "POST", "/api/ai/query", hh, q2, strlen(q2), &r);
            if (k == 30)
                past_limit = 0; /* the second sweep starts below the limit again */
            if (r.status == 200) {
                ok++;
                reordered += past_limit;
            } else if (r.status == 431) {
                past_limit = 1;
                ours += tl_json_str(&r, "error.code", code, sizeof(code)) && strcmp(code, "headers_too_large") == 0;
            } else {
                silent_below += !past_limit;
                fprintf(stderr, "%d header lines of %d bytes: status %ld\n", lines, width + 10, r.status);
            }
            tl_resp_free(&r);
        }
        CHECK(silent_below == 0 && reordered == 0,
              "many lines: every request up to the limit is answered (%d not), none after a refusal (%d)",
              silent_below, reordered);
        CHECK(ours > 0 && ok > 0, "many lines: answered below the limit (%ld), aigw's 431 above it (%d)", ok, ours);
        CHECK(tl_usage_flushed(port), "many lines: the usage rows are written");
        CHECK(tl_usage_rows(owner, tid, "true", rows0 + ok) == rows0 + ok,
              "many lines: a usage row for each answered query, none for the rest");
    }
    PQfinish(owner);
}

/* A chunked body over http.max_body_bytes that never ends must not keep a
 * worker reading it: libmicrohttpd 0.9.75 takes no answer in the middle of
 * a body, so after 1 MiB more the connection is closed. */
static void
test_endless_chunked_body(void)
{
    char head[4096], chunk[1100], resp[512];
    int fd = raw_connect(port), n;
    size_t sent = 0;
    ssize_t got = -1;

    snprintf(head, sizeof(head),
             "POST /api/ai/cache/invalidate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
             admin_tok);
    n = snprintf(chunk, sizeof(chunk), "400\r\n");
    memset(chunk + n, ' ', 1024);
    memcpy(chunk + n + 1024, "\r\n", 2);
    n += 1026;
    CHECK(fd >= 0 && send(fd, head, strlen(head), MSG_NOSIGNAL) == (ssize_t)strlen(head), "request sent");
    while (fd >= 0 && sent < 4u << 20) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};

        if (poll(&pfd, 1, 1) > 0) {
            got = recv(fd, resp, sizeof(resp) - 1, 0);
            break;
        }
        if (send(fd, chunk, (size_t)n, MSG_NOSIGNAL) != n) { /* closed on us: the answer may be there */
            struct pollfd last = {.fd = fd, .events = POLLIN};

            if (poll(&last, 1, 2000) > 0)
                got = recv(fd, resp, sizeof(resp) - 1, 0);
            break;
        }
        sent += (size_t)n;
    }
    CHECK(got == 0 || (got < 0 && errno == ECONNRESET), "the connection is closed (recv %zd)", got);
    CHECK(sent > 1u << 20 && sent < 3u << 20, "after about 1 MiB over the limit (%zu bytes sent)", sent);
    if (fd >= 0)
        close(fd);
}

/* Bodies whose end a proxy in front could place elsewhere than
 * libmicrohttpd 0.9.75 does (it takes the first of several Content-Length
 * headers, lets Transfer-Encoding win over Content-Length, and reads a body
 * of any coding but exactly "chunked" until the connection closes) are
 * refused with 400 and the connection is closed: the request pipelined
 * after them is never served, and none hangs the connection. */
static void
test_ambiguous_framing(void)
{
    static const char next[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    static const struct {
        const char *name, *head, *body;
    } cases[] = {
        {"two Content-Length, 0 first", "Content-Length: 0\r\nContent-Length: 2\r\n", "{}"},
        {"two Content-Length, equal", "Content-Length: 2\r\nContent-Length: 2\r\n", "{}"},
        {"Content-Length and chunked", "Content-Length: 2\r\nTransfer-Encoding: chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"},
        {"Transfer-Encoding identity", "Content-Length: 2\r\nTransfer-Encoding: identity\r\n", "{}"},
        {"Transfer-Encoding gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", "2\r\n{}\r\n0\r\n\r\n"},
        {"two Transfer-Encoding", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
         "2\r\n{}\r\n0\r\n\r\n"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char req[8192], resp[8192];
        int fd = raw_connect(port), n;
        size_t got = 0;
        bool closed = false;
        const char *p;
        int answers = 0;

        n = snprintf(req, sizeof(req),
                     "POST /api/ai/cache/invalidate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\n%s\r\n%s%s",
                     admin_tok, cases[i].head, cases[i].body, next);
        CHECK(fd >= 0 && send(fd, req, (size_t)n, MSG_NOSIGNAL) == n, "%s: sent", cases[i].name);
        while (fd >= 0 && got < sizeof(resp) - 1) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            ssize_t r;

            if (poll(&pfd, 1, 3000) <= 0)
                break;
            r = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
            if (r <= 0) {
                closed = true;
                break;
            }
            got += (size_t)r;
        }
        resp[got] = '\0';
        for (p = resp; (p = strstr(p, "HTTP/1.1 ")) != NULL; p++)
            answers++;
        CHECK(strncmp(resp, "HTTP/1.1 400", 12) == 0 && strstr(resp, "\"invalid_request\"") != NULL,
              "%s: 400 invalid_request (got %.40s)", cases[i].name, resp);
        CHECK(answers == 1 && strstr(resp, "\"status\":\"ok\"") == NULL, "%s: the pipelined request is not served",
              cases[i].name);
        CHECK(closed, "%s: the connection is closed", cases[i].name);
        if (fd >= 0)
            close(fd);
    }
}

/* A %00 in the path or the query. libmicrohttpd decodes the URL in place
 * and hands aigw C strings, so a decoded NUL cut the path or the argument
 * short: DELETE /api/v1/api-keys/<id>%00junk revoked <id>, and
 * period=month%00x read as month. aigw leaves %00 undecoded: the route or
 * the argument sees the longer text, which matches nothing. */
static void
test_nul_escape(void)
{
    PGconn *owner = tl_pg_owner();
    char tid[37], tcode[65], key[128], id[37], path[160], *tok;
    const char *p[1] = {tid};
    struct tl_resp r;

    tl_create_tenant(owner, "enterprise", "active", tid, tcode);
    tok = tl_token(tcode, "admin", 600);
    CHECK(tl_api_key_create(port, tok, "{\"name\":\"nul\"}", key, sizeof(key), id) == 201, "%%00: key created");
    snprintf(path, sizeof(path), "/api/v1/api-keys/%s%%00junk", id);
    tl_delete(port, path, tok, &r);
    expect_error("%00 in the key id", &r, 404, "not_found");
    tl_resp_free(&r);
    snprintf(path, sizeof(path), "/api/v1/api-keys/%s%%00", id);
    tl_delete(port, path, tok, &r);
    expect_error("%00 at the end of the key id", &r, 404, "not_found");
    tl_resp_free(&r);
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM api_keys WHERE revoked_at IS NULL AND tenant_id = $1", 1, p) == 1,
          "%%00: the key is still active");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM audit_logs WHERE tenant_id = $1 AND action = 'api_key.revoke'", 1,
                      p) == 0,
          "%%00: no revoke audit row");
    tl_key_request(port, "GET", "/api/ai/limits", key, false, NULL, &r);
    tl_expect("%00: the key still works", &r, 200, NULL);
    tl_resp_free(&r);

    tl_get(port, "/healthz%00", NULL, &r);
    expect_error("%00 after a route", &r, 404, "not_found");
    tl_resp_free(&r);
    tl_get(port, "/api/ai/usage?period=month%00x", tok, &r);
    expect_error("%00 in a query value", &r, 400, "invalid_request");
    tl_resp_free(&r);
    tl_get(port, "/api/ai/usage?period=day%00", tok, &r);
    expect_error("%00 at the end of a query value", &r, 400, "invalid_request");
    tl_resp_free(&r);
    /* every other escape still decodes */
    tl_get(port, "/api/ai/usage?period=%64ay", tok, &r);
    tl_expect("an escaped letter in a query value", &r, 200, NULL);
    CHECK(strstr(r.body, "\"period\":\"day\"") != NULL, "%%64ay reads as day: %s", r.body);
    tl_resp_free(&r);
    tl_get(port, "/health%7a", NULL, &r);
    tl_expect("an escaped letter in the path", &r, 200, NULL);
    tl_resp_free(&r);
    free(tok);
    PQfinish(owner);
}

/* Send req on a new connection and read until the server closes it or
 * 3 s pass without a byte; closed tells which. */
static void
raw_exchange(const char *req, char *resp, size_t cap, bool *closed)
{
    int fd = raw_connect(port);
    size_t got = 0;

    *closed = false;
    if (fd >= 0 && send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
        close(fd);
        fd = -1;
    }
    while (fd >= 0 && got < cap - 1) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t r;

        if (poll(&pfd, 1, 3000) <= 0)
            break;
        r = recv(fd, resp + got, cap - 1 - got, 0);
        if (r <= 0) {
            *closed = true;
            break;
        }
        got += (size_t)r;
    }
    resp[got] = '\0';
    if (fd >= 0)
        close(fd);
}

/* RFC 9112 section 3.2: an HTTP/1.1 request without Host, or any request
 * with two, is answered 400 and not served (it was served). HTTP/1.0 may
 * leave Host out; an empty Host is allowed. */
static void
test_host_header(void)
{
    static const char next[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    char req[8192], resp[8192], *p;
    bool closed;
    int answers;
    long long before = generation();

    snprintf(req, sizeof(req), "GET /healthz HTTP/1.1\r\n\r\n%s", next);
    raw_exchange(req, resp, sizeof(resp), &closed);
    answers = 0;
    for (p = resp; (p = strstr(p, "HTTP/1.1 ")) != NULL; p++)
        answers += p == resp || p[-1] == '\n'; /* a status line, not the message's text */
    CHECK(strncmp(resp, "HTTP/1.1 400", 12) == 0 && strstr(resp, "\"invalid_request\"") != NULL,
          "HTTP/1.1 without Host: 400 invalid_request (got %.60s)", resp);
    CHECK(strcasestr(resp, "\r\nConnection: close\r\n") != NULL, "without Host: Connection: close");
    CHECK(answers == 1 && closed, "without Host: the pipelined request is not served, the connection is closed");

    snprintf(req, sizeof(req),
             "POST /api/ai/cache/invalidate HTTP/1.1\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
             admin_tok);
    raw_exchange(req, resp, sizeof(resp), &closed);
    CHECK(strncmp(resp, "HTTP/1.1 400", 12) == 0 && strstr(resp, "\"invalid_request\"") != NULL && closed,
          "a POST without Host: 400 invalid_request, closed (got %.60s)", resp);
    CHECK(generation() == before, "a POST without Host changes nothing");

    raw_exchange("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", resp, sizeof(resp), &closed);
    CHECK(strncmp(resp, "HTTP/1.1 400", 12) == 0 && strstr(resp, "\"invalid_request\"") != NULL && closed,
          "two Host headers: 400 invalid_request, closed (got %.60s)", resp);
    raw_exchange("GET /healthz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", resp, sizeof(resp), &closed);
    CHECK(strncmp(resp, "HTTP/1.1 400", 12) == 0 && strstr(resp, "\"invalid_request\"") != NULL,
          "HTTP/1.0, two Host headers: 400 invalid_request (got %.60s)", resp);

    raw_exchange("GET /healthz HTTP/1.0\r\n\r\n", resp, sizeof(resp), &closed);
    CHECK(strncmp(resp, "HTTP/1.1 200", 12) == 0 && strstr(resp, "\"status\":\"ok\"") != NULL,
          "HTTP/1.0 without Host is served (got %.60s)", resp);
    raw_exchange("GET /healthz HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n", resp, sizeof(resp), &closed);
    CHECK(strncmp(resp, "HTTP/1.1 200", 12) == 0, "HTTP/1.1 with an empty Host is served (got %.60s)", resp);
    raw_exchange("GET /healthz HTTP/1.1\r\nhost: x\r\nConnection: close\r\n\r\n", resp, sizeof(resp), &closed);
    CHECK(strncmp(resp, "HTTP/1.1 200", 12) == 0, "HTTP/1.1 with a lower-case host is served (got %.60s)", resp);
}

static long
rss_kb(pid_t pid)
{
    char path[64], *text, *p;
    long kb = -1;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    text = tl_read_file(path);
    if (text != NULL && (p = strstr(text, "VmRSS:")) != NULL)
        kb = strtol(p + 6, NULL, 10);
    free(text);
    return kb;
}

/* A declared Content-Length costs memory only as the body arrives: 100
 * clients that announce 1 MiB, send one byte and wait, before any
 * authentication, must not make aigw allocate (and zero) 100 MiB. */
static void
test_declared_length_memory(void)
{
    char *cfg = tl_config_patch("{\"http\":{\"max_body_bytes\":1048576}}");
    static const char req[] = "POST /api/ai/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              "Content-Length: 1048576\r\n\r\n{";
    struct tl_aigw gw;
    int fds[100], open_n = 0;
    long before, after;
    double idle, seen;

    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        free(cfg);
        return;
    }
    /* in flight with nothing else going on (the scrape itself, if it
     * counts): the least of a few samples, since the start-up's own
     * /healthz can still be in flight at the first one */
    idle = -1;
    for (int i = 0, got = 0; i < 100 && got < 5; i++) {
        double v = tl_metric(gw.port, "aigw_requests_in_flight");

        if (v >= 0 && (idle < 0 || v < idle))
            idle = v;
        got += v >= 0;
        usleep(20 * 1000);
    }
    before = rss_kb(gw.pid);
    for (int i = 0; i < 100; i++) {
        fds[i] = raw_connect(gw.port);
        if (fds[i] >= 0 && send(fds[i], req, sizeof(req) - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof(req) - 1))
            open_n++;
    }
    /* the sample counts once aigw has taken every head (and with it the
     * declared length, where a body buffer would be sized) */
    seen = -1;
    for (int waited = 0; waited < 10000 && seen < idle + open_n; waited += 20) {
        seen = tl_metric(gw.port, "aigw_requests_in_flight");
        if (seen < idle + open_n)
            usleep(20 * 1000);
    }
    CHECK(idle >= 0 && seen >= idle + open_n, "aigw read the %d heads (in flight %.0f, idle %.0f)", open_n, seen, idle);
    after = rss_kb(gw.pid);
    CHECK(open_n == 100, "100 clients announced 1 MiB bodies (%d)", open_n);
    CHECK(before > 0 && after - before < 30 * 1024, "aigw grew by %ld KiB for them (100 MiB if it took them at their word)",
          after - before);
    for (int i = 0; i < 100; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    free(cfg);
}

static int64_t
mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Seconds until fd is closed by the peer while trickle (if not NULL) is
 * sent one byte per 250 ms; -1 if still open after limit_s. */
static double
closed_after(int fd, const char *trickle, double limit_s)
{
    int64_t t0 = mono_ms();
    size_t i = 0, n = trickle != NULL ? strlen(trickle) : 0;

    while (mono_ms() - t0 < (int64_t)(limit_s * 1000)) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        char buf[512];

        if (poll(&pfd, 1, 250) > 0) {
            ssize_t r = recv(fd, buf, sizeof(buf), 0);

            if (r == 0 || (r < 0 && errno == ECONNRESET))
                return (double)(mono_ms() - t0) / 1000.0;
            continue; /* an answer: read on */
        }
        if (i < n && send(fd, trickle + i++, 1, MSG_NOSIGNAL) != 1)
            return (double)(mono_ms() - t0) / 1000.0;
    }
    return -1;
}

/* http.request_timeout_s: a whole request (line, headers, body) must arrive
 * within it of the connection's start or of the previous response. The
 * idle timeout alone let a client that sends a byte now and then hold a
 * connection for hours. A request that has arrived is not cut, however
 * long the model takes. */
static void
test_request_deadline(void)
{
    char *cfg = tl_config_patch("{\"http\":{\"request_timeout_s\":2,\"connection_timeout_s\":60}}");
    const char *mock = tl_env("AIGW_MOCK_URL");
    PGconn *owner = tl_pg_owner();
    const char *tid[1] = {CLINIC1};
    struct tl_aigw gw;
    struct tl_resp r;
    char head[4096], *big;
    long rows_before, rows_after;
    long long used_before;
    double t;
    int fd;

    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        free(cfg);
        return;
    }
    /* a request line and headers trickled one byte per 250 ms */
    big = tl_sprintf("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: %0200d\r\n\r\n", 0);
    fd = raw_connect(gw.port);
    t = closed_after(fd, big, 12);
    CHECK(t >= 1.5 && t < 8, "a trickled head is cut at the deadline (after %.1f s; 2 s + the 1 s sweep)", t);
    if (fd >= 0)
        close(fd);
    free(big);

    /* a slow head that makes it in time is served */
    fd = raw_connect(gw.port);
    {
        static const char *const parts[] = {"GET /heal", "thz HTTP/1.1\r\nHo", "st: x\r\nConnection: close\r\n\r\n"};
        char resp[256] = "";

        for (int i = 0; i < 3 && fd >= 0; i++) {
            CHECK(send(fd, parts[i], strlen(parts[i]), MSG_NOSIGNAL) > 0, "part %d sent", i);
            usleep(300 * 1000);
        }
        CHECK(fd >= 0 && recv(fd, resp, sizeof(resp) - 1, 0) > 0 && strncmp(resp, "HTTP/1.1 200", 12) == 0,
              "a head sent in three parts within the deadline gets its 200 (%.20s)", resp);
    }
    if (fd >= 0)
        close(fd);

    /* keep-alive: the next request's deadline runs from the response */
    fd = raw_connect(gw.port);
    {
        static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        char resp[512] = "";

        CHECK(fd >= 0 && send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof(req) - 1) &&
                  recv(fd, resp, sizeof(resp) - 1, 0) > 0 && strncmp(resp, "HTTP/1.1 200", 12) == 0,
              "first request on the connection: 200");
        t = fd >= 0 ? closed_after(fd, NULL, 12) : -1;
        CHECK(t >= 1.5 && t < 8, "an idle kept-alive connection is closed at the next request's deadline (%.1f s)", t);
    }
    if (fd >= 0)
        close(fd);

    /* a body trickled after a complete head: cut, nothing run or written */
    rows_before = tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, tid);
    used_before = tl_quota_used(CLINIC1);
    snprintf(head, sizeof(head),
             "POST /api/ai/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\nContent-Length: 60\r\n\r\n",
             admin_tok);
    fd = raw_connect(gw.port);
    CHECK(fd >= 0 && send(fd, head, strlen(head), MSG_NOSIGNAL) == (ssize_t)strlen(head), "head sent");
    t = fd >= 0 ? closed_after(fd, "{\"question\":\"What lens coating cuts glare at night, please?\"}", 12) : -1;
    CHECK(t >= 1.5 && t < 8, "a trickled body is cut at the deadline (%.1f s)", t);
    if (fd >= 0)
        close(fd);
    usleep(500 * 1000);
    rows_after = tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, tid);
    CHECK(rows_after == rows_before, "no usage row for the cut request (%ld -> %ld)", rows_before, rows_after);
    CHECK(tl_quota_used(CLINIC1) == used_before, "no quota used by it");

    /* a request that arrived is not cut while the model takes longer */
    tl_mock_config(mock, "{\"first_token_ms\":3500}");
    {
        char *q = tl_sprintf("{\"question\":\"How long do photochromic lenses take to darken, case %d?\"}",
                             (int)getpid());

        tl_post(gw.port, "/api/ai/query", admin_tok, q, &r);
        CHECK(r.status == 200, "a 3.5 s model answer is not cut by a 2 s request deadline: %ld %s", r.status,
              r.body ? r.body : "");
        tl_resp_free(&r);
        free(q);
    }
    tl_mock_reset(mock);

    CHECK(tl_metric(gw.port, "aigw_http_request_timeouts_total") >= 3, "aigw_http_request_timeouts_total counts them");
    CHECK(tl_aigw_log_wait(&gw, "sent no whole request within 2 s", 3000), "and the cut is logged");
    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    PQfinish(owner);
    free(cfg);
}

int
main(void)
{
    struct tl_aigw gw;
    char *cfg = tl_config_patch("{\"http\":{\"max_body_bytes\":4096,\"max_header_bytes\":8192}}");
    struct tl_resp r;
    char buf[256];

    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    port = gw.port;
    admin_tok = tl_token("clinic_001", "admin", 600);

    /* ops routes */
    tl_get(port, "/healthz", NULL, &r);
    CHECK(r.status == 200 && tl_json_str(&r, "status", buf, sizeof(buf)) && strcmp(buf, "ok") == 0, "healthz");
    tl_resp_free(&r);
    tl_http(port, "HEAD", "/healthz", NULL, NULL, 0, &r);
    CHECK(r.status == 200, "HEAD /healthz: %ld", r.status);
    tl_resp_free(&r);
    {
        bool ready = false;

        for (int i = 0; i < 60 && !ready; i++) {
            tl_get(port, "/readyz", NULL, &r);
            ready = r.status == 200;
            if (!ready)
                usleep(100 * 1000);
            else
                CHECK(tl_json_str(&r, "checks.postgresql", buf, sizeof(buf)) && strcmp(buf, "ok") == 0,
                      "readyz names postgresql ok");
            tl_resp_free(&r);
        }
        CHECK(ready, "readyz turns 200 with PostgreSQL, Redis and a mock upstream up");
    }

    /* routing */
    tl_get(port, "/nope", NULL, &r);
    expect_error("unknown route", &r, 404, "not_found");
    CHECK(tl_resp_header(&r, "X-Request-Id", buf, sizeof(buf)) && strlen(buf) == 32, "generated X-Request-Id");
    tl_resp_free(&r);
    /* HEAD runs wherever GET does, so the 405's Allow (RFC 9110: every
     * method the resource supports) names it too */
    tl_http(port, "DELETE", "/api/ai/limits", NULL, NULL, 0, &r);
    expect_error("wrong method", &r, 405, "method_not_allowed");
    CHECK(tl_resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "GET, HEAD") == 0, "Allow: GET, HEAD (got %s)",
          buf);
    tl_resp_free(&r);
    tl_http(port, "HEAD", "/api/ai/limits", NULL, NULL, 0, &r);
    CHECK(r.status == 401, "HEAD /api/ai/limits runs as GET: 401 without credentials, not 405 (got %ld)", r.status);
    tl_resp_free(&r);
    tl_http(port, "PUT", "/api/v1/api-keys", NULL, NULL, 0, &r);
    expect_error("PUT on the key list", &r, 405, "method_not_allowed");
    CHECK(tl_resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "POST, GET, HEAD") == 0,
          "Allow: POST, GET, HEAD (got %s)", buf);
    tl_resp_free(&r);
    tl_get(port, "/api/ai/cache/invalidate", NULL, &r);
    expect_error("GET on a POST route", &r, 405, "method_not_allowed");
    CHECK(tl_resp_header(&r, "Allow", buf, sizeof(buf)) && strcmp(buf, "POST") == 0, "Allow: POST");
    tl_resp_free(&r);
    {
        const char *h[] = {"X-Request-Id: trace-abc_123.4", NULL};

        tl_http(port, "GET", "/healthz", h, NULL, 0, &r);
        CHECK(tl_resp_header(&r, "X-Request-Id", buf, sizeof(buf)) && strcmp(buf, "trace-abc_123.4") == 0,
              "valid X-Request-Id is echoed");
        tl_resp_free(&r);
        h[0] = "X-Request-Id: bad id <script>";
        tl_http(port, "GET", "/healthz", h, NULL, 0, &r);
        CHECK(tl_resp_header(&r, "X-Request-Id", buf, sizeof(buf)) && strlen(buf) == 32 && !strchr(buf, '<'),
              "unsafe X-Request-Id is replaced");
        tl_resp_free(&r);
    }
    {
        static char hdr[20000];
        const char *h[] = {hdr, NULL};

        memcpy(hdr, "X-Big: ", 7);
        memset(hdr + 7, 'a', sizeof(hdr) - 8);
        hdr[sizeof(hdr) - 1] = '\0';
        tl_http(port, "GET", "/healthz", h, NULL, 0, &r);
        CHECK(r.status == 431, "oversized header -> 431 (got %ld)", r.status);
        tl_resp_free(&r);
    }

    /* bad bodies: nothing changes */
    {
        static char big[8192];
        const char *chunked_h[4];
        char auth[4096];

        memset(big, ' ', sizeof(big) - 1);
        big[0] = '{';
        big[sizeof(big) - 2] = '}';
        post_raw("oversized body", "application/json", big, sizeof(big) - 1, 413, "body_too_large");
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", admin_tok);
        chunked_h[0] = auth;
        chunked_h[1] = "Content-Type: application/json";
        chunked_h[2] = "Transfer-Encoding: chunked";
        chunked_h[3] = NULL;
        tl_http(port, "POST", "/api/ai/cache/invalidate", chunked_h, big, sizeof(big) - 1, &r);
        expect_error("oversized chunked body", &r, 413, "body_too_large");
        tl_resp_free(&r);
        post_raw("wrong content type", "text/plain", "{}", 2, 415, "unsupported_media_type");
        post_raw("missing content type", NULL, "{}", 2, 415, "unsupported_media_type");
        post_raw("form content type", "application/x-www-form-urlencoded", "a=1", 3, 415, "unsupported_media_type");
        post_raw("broken JSON", "application/json", "{\"a\":", 5, 400, "invalid_json");
        post_raw("duplicate keys", "application/json", "{\"a\":1,\"a\":2}", 13, 400, "invalid_json");
        post_raw("not an object", "application/json", "[1,2]", 5, 400, "invalid_json");
        post_raw("trailing garbage", "application/json", "{} {}", 5, 400, "invalid_json");
        post_raw("invalid UTF-8", "application/json", "{\"a\":\"\xff\xfe\"}", 10, 400, "invalid_json");
        {
            char nested[256];
            int n = 0;

            n += snprintf(nested + n, sizeof(nested) - (size_t)n, "{\"a\":");
            for (int i = 0; i < 40; i++)
                nested[n++] = '[';
            for (int i = 0; i < 40; i++)
                nested[n++] = ']';
            nested[n++] = '}';
            nested[n] = '\0';
            post_raw("too deep", "application/json", nested, (size_t)n, 400, "invalid_json");
        }
    }

    /* cache invalidation: role-checked, bumps the generation by one */
    {
        char *tok = tl_token("clinic_001", "optician", 600);
        long long before = generation();

        tl_post(port, "/api/ai/cache/invalidate", tok, "{}", &r);
        expect_error("optician may not invalidate", &r, 403, "forbidden");
        CHECK(generation() == before, "generation unchanged after 403");
        tl_resp_free(&r);
        free(tok);
        tl_post(port, "/api/ai/cache/invalidate", admin_tok, "{}", &r);
        CHECK(r.status == 200 && tl_json_int(&r, "generation", -1) == before + 1, "admin invalidates: %s", r.body);
        CHECK(tl_json_str(&r, "invalidated", buf, sizeof(buf)) && strcmp(buf, "true") == 0, "invalidated true");
        CHECK(generation() == before + 1, "Redis generation bumped once");
        tl_resp_free(&r);
        tok = tl_token("clinic_001", "manager", 600);
        tl_post(port, "/api/ai/cache/invalidate", tok, NULL, &r);
        CHECK(r.status == 200 && tl_json_int(&r, "generation", -1) == before + 2, "manager, empty body: %s", r.body);
        tl_resp_free(&r);
        free(tok);
    }

    test_header_limit();
    test_endless_chunked_body();
    test_ambiguous_framing();
    test_nul_escape();
    test_host_header();
    {
        /* a tab in the method (libmicrohttpd splits the request line on
         * spaces only) must not forge fields in the access log's NAME=value
         * line: control characters become '?', not spaces */
        static const char req[] = "GET\tTENANT_ID=forged-tenant\tSTATUS=299 /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
        int fd = raw_connect(port);
        char buf2[256];
        char *log;

        CHECK(fd >= 0 && send(fd, req, sizeof(req) - 1, MSG_NOSIGNAL) == (ssize_t)(sizeof(req) - 1) &&
                  recv(fd, buf2, sizeof(buf2), 0) > 0,
              "a method with tabs gets an answer");
        if (fd >= 0)
            close(fd);
        CHECK(tl_aigw_log_wait(&gw, "TENANT_ID=forged-tenant", 3000), "the request is logged");
        log = tl_aigw_log(&gw);
        CHECK(log != NULL && strstr(log, " TENANT_ID=forged-tenant") == NULL && strstr(log, " STATUS=299") == NULL,
              "as part of METHOD, not as fields of their own");
        free(log);
    }

    CHECK(tl_aigw_stop(&gw) == 0, "clean exit");
    test_declared_length_memory();
    test_request_deadline();
    free(admin_tok);
    free(cfg);
    return tl_done();
}
