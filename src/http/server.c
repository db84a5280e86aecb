/* server.c - libmicrohttpd glue: request lifecycle, upload limits, the stage loop */
#include <arpa/inet.h>
#include <ctype.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "aigw/acceptor.h"
#include "aigw/api.h"
#include "aigw/apikey.h"
#include "aigw/apikey_usage.h"
#include "aigw/http.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/query.h"
#include "aigw/sse.h"
#include "aigw/snapshot.h"
#include "aigw/usage.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

/* Per-worker "inside a callback since" stamps for the watchdog: callbacks
 * never wait on a model, so a worker that stays inside one for long is
 * wedged. Each libmicrohttpd worker thread claims a slot on its first
 * callback and keeps a pointer to it in busy_stamp (thread-private). */
struct aigw_busy {
    unsigned n;                    /* slots: one per worker thread */
    atomic_uint claimed;           /* slots handed out so far */
    _Atomic int64_t since_us[];    /* monotonic us the worker entered its callback; 0 = not in one */
};

static _Thread_local _Atomic int64_t *busy_stamp;

static void
mhd_logger(void *cls, const char *fmt, va_list ap)
{
    char msg[512];

    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    msg[strcspn(msg, "\n")] = '\0';
    aigw_log(LOG_WARNING, "http: %s", msg);
}

/* Echo a client X-Request-Id made of safe characters, else make one up. */
static void
set_request_id(struct aigw_req *req)
{
    const char *in = aigw_req_header(req, "X-Request-Id");
    unsigned char rnd[16];

    if (in != NULL) {
        size_t n = strlen(in), i;

        for (i = 0; i < n; i++)
            if (!isalnum((unsigned char)in[i]) && in[i] != '-' && in[i] != '_' && in[i] != '.')
                break;
        if (n > 0 && n < sizeof(req->request_id) && i == n) {
            memcpy(req->request_id, in, n + 1);
            return;
        }
    }
    aigw_unique_bytes(rnd, sizeof(rnd));
    aigw_hex(rnd, sizeof(rnd), req->request_id);
}

void
aigw_req_client_ip(const struct aigw_req *req, char *buf, size_t cap)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci != NULL ? ci->client_addr : NULL;

    buf[0] = '\0';
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, buf, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, buf, (socklen_t)cap);
}

void
aigw_req_suspend(struct aigw_req *req)
{
    MHD_suspend_connection(req->conn);
}

void
aigw_req_resume(struct aigw_req *req)
{
    MHD_resume_connection(req->conn);
}

/* The usage row of an authenticated request: durable (spooled) before the
 * response is queued, so a crash after the answer cannot lose it. */
static void
record_usage(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    struct aigw_usage_row row;

    if (req->route == NULL || !req->route->ai || !req->authenticated || req->tenant == NULL || req->srv->usage == NULL)
        return;
    memset(&row, 0, sizeof(row));
    memcpy(row.id, req->usage_id, sizeof(row.id));
    memcpy(row.tenant_id, req->tenant->id, sizeof(row.tenant_id));
    row.user_id = req->claims.sub[0] && req->api_key == NULL ? req->claims.sub : NULL;
    row.api_key_id = req->api_key != NULL ? req->api_key->id : NULL;
    row.request_id = req->request_id;
    row.route = req->route->path;
    row.status_code = req->status;
    row.success = req->status < 400;
    row.error_code = req->error_code;
    row.response_ms = (long)((aigw_now_us() - req->start_us) / 1000);
    row.upstream_ms = -1;
    /* the request's start, not its end: a reservation made at 23:59:59 on
     * the last of the month is billed in that month, as counted */
    row.created_at_us = req->start_wall_us;
    if (q != NULL) {
        row.query_type = q->question ? aigw_query_type_names[q->qtype] : NULL;
        row.question_sha256 = q->question ? q->question_sha256 : NULL;
        row.model = q->model;
        row.prompt_tokens = q->prompt_tokens;
        row.completion_tokens = q->completion_tokens;
        row.from_cache = q->from_cache;
        row.billed = q->billed; /* also an interrupted stream that delivered text */
        row.upstream_ms = q->upstream_ms;
    }
    aigw_usage_record(req->srv->usage, &row);
}

/* The usage row first, then the route's finish hook: the hook settles the
 * quota reservation (an S line in the journal, or a refund in Redis) and
 * stores the idempotency record, Redis round trips that can take up to
 * redis.timeout_ms. A kill -9 in between must find the row on the spool:
 * after the row, the restart either sees the reservation settled or refunds
 * it (the row is billed only when the quota was kept, and such a refund is
 * the one-query window the journal documents); before it, a kept
 * reservation had no row, the counter stayed one above the billed rows and
 * an idempotency record stored meanwhile replayed an answer never billed. */
void
aigw_req_settle(struct aigw_req *req)
{
    record_usage(req);
    if (req->route != NULL && req->route->finish != NULL)
        req->route->finish(req);
}

/* MHD content reader of a live stream: hand over what the producer wrote,
 * suspend while there is nothing, finalize once it closed. */
static ssize_t
sse_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct aigw_req *req = cls;

    (void)pos;
    for (;;) {
        bool drained = false;
        ssize_t n = aigw_sse_read(req->sse, buf, max, &drained);

        if (drained && req->sse_on_drain != NULL)
            req->sse_on_drain(req);
        if (n > 0)
            return n;
        if (n == 0) {
            if (aigw_sse_wait(req->sse))
                continue;
            return 0; /* suspended: the producer resumes us */
        }
        if (req->sse_final)
            return MHD_CONTENT_READER_END_OF_STREAM;
        req->sse_final = true;
        req->sse_finalize(req, false); /* may append the closing event */
    }
}

static struct MHD_Response *
make_response(struct aigw_req *req)
{
    struct MHD_Response *resp;

    if (req->sse_live) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        int sndbuf = req->snap->cfg.stream_buffer_bytes;

        /* a stream's kernel send buffer is bounded like its pipe: a slow
         * reader then pauses the upstream instead of filling megabytes of
         * socket memory (autotuning would let it grow to tcp_wmem's max) */
        if (ci != NULL)
            setsockopt(ci->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, sse_reader, req, NULL);
        if (resp != NULL) {
            MHD_add_response_header(resp, "Content-Type", "text/event-stream");
            MHD_add_response_header(resp, "X-Accel-Buffering", "no"); /* proxies: do not buffer */
        }
        return resp;
    }
    aigw_req_settle(req);
    aigw_query_sse_replay(req);
    resp = MHD_create_response_from_buffer(req->resp_len, req->resp_body, MHD_RESPMEM_PERSISTENT);
    /* a 204 has no content, so no type: clients that parse JSON when the
     * type says so failed on its empty body */
    if (resp != NULL && req->status != 204)
        MHD_add_response_header(resp, "Content-Type", req->content_type ? req->content_type : "application/json");
    return resp;
}

static enum MHD_Result
queue(struct aigw_req *req)
{
    struct MHD_Response *resp = make_response(req);
    enum MHD_Result ret;

    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "X-Request-Id", req->request_id);
    MHD_add_response_header(resp, "Cache-Control", req->sse_live ? "no-cache" : "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    for (size_t i = 0; i < req->n_resp_headers; i++)
        MHD_add_response_header(resp, req->resp_headers[i].name, req->resp_headers[i].value);
    if (atomic_load(&req->srv->stopping))
        MHD_add_response_header(resp, "Connection", "close"); /* draining: no next request on this connection */
    ret = MHD_queue_response(req->conn, (unsigned)req->status, resp);
    MHD_destroy_response(resp);
    if (ret == MHD_YES)
        req->responded = true;
    return ret;
}

static enum MHD_Result
run_stages(struct aigw_req *req)
{
    enum aigw_rc rc = AIGW_OK;

    while (rc == AIGW_OK) {
        aigw_stage_fn fn = req->stage < AIGW_MAX_STAGES ? req->route->stages[req->stage] : NULL;

        if (fn == NULL) {
            rc = aigw_req_fail(req, 500, "internal", "the route produced no response");
            break;
        }
        rc = fn(req);
        if (rc == AIGW_OK)
            req->stage++;
    }
    if (rc == AIGW_AGAIN)
        return MHD_YES;
    if (rc == AIGW_ERR)
        aigw_req_fail(req, 500, "internal", "internal error");
    return queue(req);
}

static bool
is_json_type(const char *ct)
{
    size_t n = strlen("application/json");

    while (*ct == ' ')
        ct++;
    return strncasecmp(ct, "application/json", n) == 0 && (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* The first body buffer's largest size (see on_headers). */
#define BODY_FIRST_MAX 8192
/* How much of a body past http.max_body_bytes is read (and dropped) while
 * waiting for its end to answer 413 (see handle). */
#define BODY_DISCARD_MAX (1024 * 1024)

/* What libmicrohttpd 0.9.75 keeps per parsed header, cookie or query
 * argument besides its text: a 56-byte record, 16-byte aligned. */
#define HEADER_RECORD_BYTES 64

/* What one pass over the request's head finds. */
struct head_scan {
    size_t bytes;              /* see head_scan() */
    unsigned cl, te, host;     /* Content-Length / Transfer-Encoding / Host header lines */
    const char *te_value;
};

static enum MHD_Result
scan_value(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_len, const char *value, size_t value_len)
{
    struct head_scan *h = cls;

    h->bytes += key_len + value_len + 4 + HEADER_RECORD_BYTES; /* "name: value\r\n" and its record */
    if (kind != MHD_HEADER_KIND)
        return MHD_YES;
    if (key_len == 14 && strcasecmp(key, "Content-Length") == 0) {
        h->cl++;
    } else if (key_len == 17 && strcasecmp(key, "Transfer-Encoding") == 0) {
        h->te++;
        h->te_value = value;
    } else if (key_len == 4 && strcasecmp(key, "Host") == 0) {
        h->host++;
    }
    return MHD_YES;
}

/* h->bytes: what the request's head takes of libmicrohttpd's
 * per-connection pool: the request line and header lines as sent (give or
 * take the query string's escapes) plus a record per header, cookie and
 * query argument. The pool is http.max_header_bytes + HEADER_POOL_RESERVE,
 * the reserve being room for the reply's header block, so the limit is
 * checked here: a head that used up the reserve was processed, billed, and
 * then could not be answered. Also counts the framing headers. */
static void
head_scan(struct aigw_req *req, struct head_scan *h)
{
    memset(h, 0, sizeof(*h));
    h->bytes = strlen(req->method) + strlen(req->url) + 11; /* " HTTP/1.1\r\n" */
    MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND | MHD_COOKIE_KIND | MHD_GET_ARGUMENT_KIND, scan_value,
                                h);
}

/* A body whose length a proxy in front could read differently from
 * libmicrohttpd 0.9.75, which takes the first Content-Length of several,
 * lets Transfer-Encoding win over Content-Length, and reads a body with any
 * coding but exactly "chunked" (say "gzip, chunked" or "identity") until
 * the connection closes: each is a way to smuggle a request past a proxy
 * or to swallow the requests that follow on its connection. NULL when the
 * framing is unambiguous, else the reason. */
static const char *
framing_error(const struct head_scan *h)
{
    if (h->cl > 1)
        return "Content-Length: sent more than once";
    if (h->te > 1)
        return "Transfer-Encoding: sent more than once";
    if (h->te == 1 && strcasecmp(h->te_value, "chunked") != 0)
        return "Transfer-Encoding: only chunked is supported";
    if (h->te == 1 && h->cl == 1)
        return "Content-Length: not allowed with Transfer-Encoding";
    return NULL;
}

static int
hex_value(char c)
{
    return isdigit((unsigned char)c) ? c - '0' : tolower((unsigned char)c) - 'a' + 10;
}

/* MHD_OPTION_UNESCAPE_CALLBACK: decodes %HH in the path and in each query
 * argument's name and value as libmicrohttpd 0.9.75 does (an escape that
 * is not two hex digits stays as sent), except %00, which stays as sent
 * too. libmicrohttpd hands the path and the arguments over as C strings,
 * so a decoded NUL cut them short: DELETE /api/v1/api-keys/<id>%00junk
 * revoked <id>, period=month%00x read as month. Undecoded, the longer text
 * matches no route and no parameter's syntax (404 or 400). */
static size_t
unescape_cb(void *cls, struct MHD_Connection *conn, char *s)
{
    char *w = s;

    (void)cls;
    (void)conn;
    for (const char *r = s; *r != '\0'; r++) {
        if (r[0] == '%' && isxdigit((unsigned char)r[1]) && isxdigit((unsigned char)r[2]) &&
            (r[1] != '0' || r[2] != '0')) {
            *w++ = (char)(hex_value(r[1]) << 4 | hex_value(r[2]));
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return (size_t)(w - s);
}

/* RFC 9112 section 3.2: an HTTP/1.1 request must carry one Host header
 * (it may be empty), any request at most one; libmicrohttpd 0.9.75 serves
 * either way. NULL when Host is as it should be, else the reason. */
static const char *
host_error(const struct head_scan *h, const char *version)
{
    if (h->host > 1)
        return "Host: sent more than once";
    if (h->host == 0 && strcmp(version, MHD_HTTP_VERSION_1_0) != 0)
        return "Host: required in an HTTP/1.1 request";
    return NULL;
}

/* Checks that need only the headers: body framing, Host, route, header
 * size, content type, declared length. */
static enum MHD_Result
on_headers(struct aigw_req *req, const char *version)
{
    int status = 0;
    char allow[64];
    const char *path = req->url, *bad_head;
    struct head_scan head;

    head_scan(req, &head);
    bad_head = framing_error(&head);
    if (bad_head == NULL)
        bad_head = host_error(&head, version);

    if (bad_head != NULL) {
        /* where this request ends is unknown (or, without a good Host,
         * whom it is for): nothing after it on this connection can be
         * trusted to be a request of its own */
        aigw_req_add_header(req, "Connection", "close");
        aigw_req_fail(req, 400, "invalid_request", "%s", bad_head);
        return queue(req);
    }
    req->route = aigw_router_match(req->pool, req->method, path, req->params, &status, allow, sizeof(allow));
    if (req->route == NULL) {
        if (status == 405) {
            aigw_req_add_header(req, "Allow", aigw_pool_strdup(req->pool, allow));
            aigw_req_fail(req, 405, "method_not_allowed", "method %s is not allowed here", req->method);
        } else {
            aigw_req_fail(req, 404, "not_found", "no such route");
        }
        return queue(req);
    }
    if (head.bytes > req->srv->cfg.max_header_bytes) {
        aigw_req_fail(req, 431, "headers_too_large", "request line and headers are over %zu bytes",
                      req->srv->cfg.max_header_bytes);
        return queue(req);
    }
    if (atomic_load(&req->srv->stopping) && !req->route->ops) {
        /* draining: only the ops routes (/healthz, /readyz, /metrics) still answer */
        aigw_req_add_header(req, "Retry-After", "1");
        aigw_req_fail(req, 503, "service_unavailable", "shutting down, retry on another instance");
        return queue(req);
    }
    if (strcmp(req->method, "POST") == 0 || strcmp(req->method, "PUT") == 0 || strcmp(req->method, "PATCH") == 0) {
        const char *ct = aigw_req_header(req, "Content-Type");
        const char *cl = aigw_req_header(req, "Content-Length");
        const char *te = aigw_req_header(req, "Transfer-Encoding");
        long len = 0;
        bool cl_ok = cl != NULL && aigw_parse_long(cl, 0, __LONG_MAX__, &len);
        bool has_body = te != NULL || (cl != NULL && !(cl_ok && len == 0));

        if (cl_ok && (size_t)len > req->srv->cfg.max_body_bytes) {
            aigw_req_fail(req, 413, "body_too_large", "request body is over %zu bytes",
                          req->srv->cfg.max_body_bytes);
            return queue(req);
        }
        if (has_body && (ct == NULL || !is_json_type(ct))) {
            aigw_req_fail(req, 415, "unsupported_media_type", "the body must be application/json");
            return queue(req);
        }
        if (cl_ok && len > 0) {
            /* exactly the declared size, up to BODY_FIRST_MAX: the buffer
             * lives in the pool as long as the request, through the whole
             * model call, so a 100-byte question should not hold 1 KiB (a
             * chunked body starts at 1 KiB and doubles in on_upload). A
             * larger declared body doubles in on_upload as it arrives:
             * memory follows the bytes received, not a length a client
             * merely claims before it has even authenticated. */
            req->body_cap = (size_t)len + 1 < BODY_FIRST_MAX ? (size_t)len + 1 : BODY_FIRST_MAX;
            req->body = aigw_pool_alloc(req->pool, req->body_cap);
        }
    }
    return MHD_YES;
}

static void
on_upload(struct aigw_req *req, const char *data, size_t size)
{
    size_t max = req->srv->cfg.max_body_bytes;

    if (req->body_too_large)
        return;
    if (req->body_len + size > max) {
        req->body_too_large = true;
        return;
    }
    if (req->body_len + size + 1 > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap : 1024;
        char *nb;

        while (cap < req->body_len + size + 1)
            cap *= 2;
        if (cap > max + 1)
            cap = max + 1;
        nb = aigw_pool_alloc(req->pool, cap);
        if (req->body_len)
            memcpy(nb, req->body, req->body_len);
        req->body = nb; /* the old block stays in the pool until the request ends */
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, size);
    req->body_len += size;
    req->body[req->body_len] = '\0';
}

static enum MHD_Result
handle(struct aigw_server *srv, struct MHD_Connection *conn, const char *url, const char *method,
       const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    struct aigw_req *req = *con_cls;

    if (req == NULL) {
        struct aigw_pool *pool = aigw_pool_create();

        atomic_fetch_add(&srv->in_flight, 1);
        req = aigw_pool_alloc(pool, sizeof(*req));
        req->pool = pool;
        req->srv = srv;
        req->snap = aigw_snapshot_acquire(srv->live);
        req->conn = conn;
        req->start_us = aigw_now_us();
        req->start_wall_us = aigw_wall_us();
        req->method = aigw_pool_strdup(pool, method);
        req->url = aigw_pool_strdup(pool, url);
        *con_cls = req;
        set_request_id(req);
        aigw_uuid7(req->usage_id);
        return on_headers(req, version);
    }
    if (*upload_data_size == 0 && !req->arrived) {
        /* the whole request is in: its deadline no longer applies */
        req->arrived = true;
        aigw_acceptor_request_arrived(srv->acceptor, conn);
    }
    if (req->responded) {
        *upload_data_size = 0; /* an early error was queued: drop the rest */
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        on_upload(req, upload_data, *upload_data_size);
        if (req->body_too_large && (req->body_over += *upload_data_size) > BODY_DISCARD_MAX) {
            /* a chunked body over the limit that keeps coming: libmicrohttpd
             * 0.9.75 takes no answer in the middle of a body, so the 413
             * waits for its end; past this much more, the connection is
             * closed instead of read on (maybe forever) */
            aigw_log(LOG_INFO, "http: request %s: body over %zu bytes kept coming; connection closed",
                     req->request_id, srv->cfg.max_body_bytes);
            return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (req->body_too_large) {
        aigw_req_fail(req, 413, "body_too_large", "request body is over %zu bytes", srv->cfg.max_body_bytes);
        return queue(req);
    }
    return run_stages(req);
}

static void
busy_enter(struct aigw_server *srv)
{
    struct aigw_busy *b = srv->busy;

    if (busy_stamp == NULL && b != NULL) {
        unsigned i = atomic_fetch_add(&b->claimed, 1);

        if (i < b->n)
            busy_stamp = &b->since_us[i];
    }
    if (busy_stamp != NULL)
        atomic_store_explicit(busy_stamp, aigw_now_us(), memory_order_relaxed);
}

static void
busy_leave(void)
{
    if (busy_stamp != NULL)
        atomic_store_explicit(busy_stamp, 0, memory_order_relaxed);
}

static enum MHD_Result
access_cb(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
          const char *version, const char *upload_data, size_t *upload_data_size, void **con_cls)
{
    struct aigw_server *srv = cls;
    enum MHD_Result ret;

    busy_enter(srv);
    ret = handle(srv, conn, url, method, version, upload_data, upload_data_size, con_cls);
    busy_leave();
    return ret;
}

/* The access log's CACHE field: how a query was answered (NULL off the
 * query path and for queries refused before the cache was consulted). */
static const char *
cache_state(const struct aigw_query *q)
{
    if (q == NULL || q->question == NULL)
        return NULL;
    if (q->from_cache)
        return q->sf_role == AIGW_SF_WAITER ? "coalesced" : "hit";
    if (q->call != NULL) /* handed to the upstream engine (UPSTREAM_MS says whether a model answered) */
        return q->no_cache ? "bypass" : "miss";
    return NULL;
}

/* One structured entry per request: ids, route, outcome and timings only,
 * never the question, the token or any key. 5xx are warnings. */
static void
access_log(const struct aigw_req *req, enum MHD_RequestTerminationCode toe)
{
    char status[8], dur[24], up_ms[24];
    const struct aigw_query *q = req->q;
    bool upstream = q != NULL && q->upstream_ms >= 0;
    int prio = req->responded && req->status >= 500 ? LOG_WARNING : LOG_INFO;

    if (!aigw_log_enabled(prio))
        return;
    snprintf(status, sizeof(status), "%d", req->responded ? req->status : 0);
    snprintf(dur, sizeof(dur), "%.3f", (double)(aigw_now_us() - req->start_us) / 1000.0);
    if (upstream)
        snprintf(up_ms, sizeof(up_ms), "%ld", q->upstream_ms);
    aigw_log_fields(prio, "request", "REQUEST_ID",
                    req->request_id, "METHOD", req->method, "ROUTE", req->route ? req->route->path : "-", "STATUS",
                    status, "DURATION_MS", dur, "TENANT_ID", req->tenant ? req->tenant->id : NULL, "API_KEY_ID",
                    req->api_key ? req->api_key->id : NULL, "CACHE",
                    cache_state(q), "UPSTREAM_MS", upstream ? up_ms : NULL, "ERROR_CODE", req->error_code,
                    "TERMINATION", toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? NULL : "aborted", NULL);
}

static void
completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    struct aigw_server *srv = cls;
    struct aigw_req *req = *con_cls;
    struct aigw_snapshot *snap;

    if (req == NULL)
        return;
    aigw_acceptor_request_done(srv->acceptor, conn); /* the next request's deadline runs from here */
    if (req->sse != NULL) {
        if (req->sse_live && !req->sse_final) { /* the client left mid-stream (or never read the end) */
            req->sse_final = true;
            req->sse_cut = toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN; /* or aigw closed it, stopping */
            req->sse_finalize(req, true);
        }
        aigw_sse_detach(req->sse);
        req->sse = NULL;
    }
    /* logged and measured as the client saw it, before the after hook's
     * Redis work (single-flight publish, cache store) */
    access_log(req, toe);
    aigw_metrics_request_done(srv->metrics, req);
    if (req->route != NULL && req->route->after != NULL)
        req->route->after(req);
    if (req->api_key != NULL && req->authenticated) /* batched: no database write here */
        aigw_apikey_usage_touch(req->srv->key_usage, req->api_key, aigw_wall_s());
    aigw_tenant_put(req->tenant);
    req->tenant = NULL;
    snap = req->snap;
    *con_cls = NULL;
    aigw_pool_destroy(req->pool); /* pool cleanups may still read the snapshot */
    aigw_snapshot_unref(snap);
    atomic_fetch_sub(&srv->in_flight, 1);
}

/* Room in libmicrohttpd's per-connection pool beyond http.max_header_bytes:
 * the parsed header records (~56 bytes each) and the reply's status line
 * and headers. Requests over the limit get aigw's 431 (head_scan); only
 * headers too large or too many even for this room get libmicrohttpd's. */
#define HEADER_POOL_RESERVE 2048

unsigned
aigw_http_threads(const struct aigw_config *cfg)
{
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    return cfg->threads > 0 ? (unsigned)cfg->threads : (unsigned)(ncpu > 0 ? ncpu : 2);
}

int
aigw_http_start(struct aigw_server *srv)
{
    const struct aigw_config *cfg = &srv->cfg;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_ITC;
    unsigned threads = aigw_http_threads(cfg);
    /* each worker gets limit / threads: this way none can be full before the
     * acceptor's own limit is (see acceptor.c) */
    unsigned mhd_limit = (unsigned)cfg->max_connections * threads + threads;

    srv->acceptor = aigw_acceptor_open(cfg, threads);
    if (srv->acceptor == NULL)
        return -1;
    srv->bound_port = aigw_acceptor_port(srv->acceptor);
    srv->busy = aigw_xcalloc(1, sizeof(*srv->busy) + threads * sizeof(srv->busy->since_us[0]));
    srv->busy->n = threads;
    srv->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, access_cb, srv, MHD_OPTION_EXTERNAL_LOGGER, mhd_logger, srv,
        MHD_OPTION_THREAD_POOL_SIZE, threads, MHD_OPTION_CONNECTION_LIMIT, mhd_limit,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_connections_per_ip,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->connection_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)cfg->max_header_bytes + HEADER_POOL_RESERVE,
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, srv, MHD_OPTION_NOTIFY_CONNECTION, aigw_acceptor_notify,
        srv->acceptor, MHD_OPTION_UNESCAPE_CALLBACK, unescape_cb, NULL, MHD_OPTION_END);
    if (srv->mhd == NULL) {
        aigw_log(LOG_ERR, "http: cannot start the HTTP workers");
        return -1;
    }
    aigw_acceptor_start(srv->acceptor, srv->mhd, srv->metrics);
    aigw_log(LOG_NOTICE, "http: listening on %s:%u with %u threads", cfg->listen_addr, srv->bound_port,
             threads);
    return 0;
}

void
aigw_http_quiesce(struct aigw_server *srv)
{
    aigw_acceptor_quiesce(srv->acceptor);
}

size_t
aigw_http_in_flight(const struct aigw_server *srv)
{
    return atomic_load(&srv->in_flight);
}

int64_t
aigw_http_busy_ms(const struct aigw_server *srv)
{
    const struct aigw_busy *b = srv->busy;
    int64_t now = aigw_now_us(), worst = 0;
    unsigned n;

    if (b == NULL)
        return 0;
    n = atomic_load(&b->claimed);
    for (unsigned i = 0; i < n && i < b->n; i++) {
        int64_t since = atomic_load_explicit(&b->since_us[i], memory_order_relaxed);

        if (since != 0 && now - since > worst)
            worst = now - since;
    }
    return worst / 1000;
}

void
aigw_http_stop(struct aigw_server *srv)
{
    aigw_http_quiesce(srv); /* the acceptor first: it hands connections to the daemon */
    if (srv->mhd != NULL)
        MHD_stop_daemon(srv->mhd);
    srv->mhd = NULL;
    free(srv->busy);
    srv->busy = NULL;
    aigw_acceptor_free(srv->acceptor);
    srv->acceptor = NULL;
}
