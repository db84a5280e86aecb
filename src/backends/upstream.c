/* upstream.c - the upstream engine: one thread drives every backend transfer
 * through a libcurl multi handle, with per-backend slots, a bounded FIFO per
 * backend group, one retry on connect failure and passive health.
 *
 * The engine is event driven (curl_multi_socket_action): curl tells us which
 * sockets to watch and when its next timer is due, and each wake-up touches
 * only the transfers that have something to do. curl_multi_perform would walk
 * every transfer on every wake-up, O(n^2) with thousands in flight.
 *
 * Threads: aigw_upstream_submit() (any thread) only touches the inbox under
 * up->lock and writes the engine's eventfd. Everything else (the multi
 * handle, the epoll set, easy handles, queues, backend state) belongs to the
 * engine thread. */
#include "aigw/upstream.h"

#include <curl/curl.h>
#include <jansson.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "aigw/chunk.h"
#include "aigw/log.h"
#include "aigw/snapshot.h"
#include "aigw/util.h"

/* An answer is a few KiB of JSON; more than this is a broken backend, and
 * buffering it would let one backend eat the gateway's memory. */
#define MAX_ANSWER_BYTES ((size_t)4 << 20)
/* Longest poll: active health (another thread) can bring a backend back up
 * without waking us, so queued calls re-check at least this often. */
#define IDLE_POLL_MS 500
/* The same while a backend new to the table waits for its first probe. */
#define PROBE_POLL_MS 20
#define CHAT_PATH "/v1/chat/completions"
/* epoll events taken per wake-up; more stay ready for the next epoll_wait */
#define MAX_EVENTS 256
/* New calls taken from the inbox per round of the loop. A flood of them
 * (a thousand streams opened at once) is started a slice at a time, and the
 * events of the transfers already running are relayed between the slices
 * instead of after the whole flood: starting a call costs the engine tens
 * of microseconds (a new connection to the backend costs more). */
#define INBOX_SLICE 32
/* A stream that sent [DONE] but keeps its connection open this long after
 * it is ended by the engine (as a success: the answer is complete). A
 * backend normally ends the response right after [DONE]; ending it there
 * ourselves would close every kept-alive connection. */
#define DONE_GRACE_MS 1000
/* How often the engine looks for streams past [DONE] or idle (see
 * sweep_streams): the precision of stream_idle_ms and of the grace. */
#define SWEEP_MS 100
/* One server-sent event larger than this is a broken backend. */
#define MAX_SSE_EVENT_BYTES ((size_t)256 << 10)
/* curl's receive buffer of a buffered (non-stream) call. curl allocates it
 * per easy handle for the whole transfer (16 KiB by default), so a call that
 * waits seconds for the model holds it all that time: with thousands of
 * calls in flight it was the largest single cost (S3 in bench/README.md).
 * The answer is read once, when the model is done; at this size a few extra
 * recv() calls per answer cost microseconds. curl's minimum is 1024. */
#define ANSWER_RECV_BUFFER 1024L
/* How long aigw_upstream_cancel_all waits for the engine to fail its calls
 * (it takes a round of the loop: a wedged engine is the watchdog's bound). */
#define CANCEL_WAIT_MS 10000

/* pick() results besides a backend index */
#define PICK_FULL (-1) /* some backend of the group is eligible, none has a free slot */
#define PICK_DOWN (-2) /* no backend of the group is eligible */

/* A FIFO of calls ordered by seq; a call is in at most one list at a time. */
struct call_list {
    struct aigw_upstream_call *head, *tail;
    size_t n;
};

enum call_state { CS_INBOX, CS_QUEUED, CS_ACTIVE, CS_DONE };

/* control requests from other threads (under up->lock) */
enum { CTL_UNPAUSE = 1, CTL_CANCEL = 2 };

struct aigw_upstream_call {
    struct aigw_upstream_call *prev, *next; /* links of the list the call is in */
    atomic_int refs;       /* the caller's and the engine's (plus one per pending control request) */
    enum call_state state; /* engine thread */
    int qtype;
    bool keep_raw;
    aigw_upstream_event_fn on_event; /* non-NULL: streaming */
    /* control: under up->lock */
    struct aigw_upstream_call *ctl_next;
    unsigned ctl_ops;
    bool ctl_queued;
    bool cancelled;        /* engine thread: a cancel arrived before the call was placed */
    /* streaming, engine thread */
    char *sse;             /* bytes of the event being reassembled */
    size_t sse_len, sse_cap;
    char *delta;           /* the current event's decoded delta text */
    size_t delta_cap;
    bool want_pause, paused;
    bool held;             /* its client held it paused at least once (a slow reader) */
    bool stalled;          /* ended by the idle limit: no byte for stream_idle_ms */
    bool text_dropped;     /* the assembled text passed MAX_ANSWER_BYTES: not kept */
    bool stream_error;     /* an error event arrived */
    long stream_error_code; /* its code (llama-server's HTTP-like status), 0 if none */
    int64_t done_ms;       /* monotonic ms [DONE] arrived while in flight; 0 = not (yet) */
    int64_t last_byte_ms;  /* monotonic ms a byte last came (or the transfer started or resumed) */
    int idle_ms;           /* stream_idle_ms when the transfer started: a reload changes it for later
                            * calls only, as it does curl's timeouts (set at the start too) */
    long usage_prompt, usage_completion, timings_prompt, timings_predicted;
    uint64_t seq;          /* submit order: queues stay FIFO even for a retried call */
    int64_t submit_ms;
    char *body;            /* request JSON (copied at submit) */
    size_t len;
    aigw_upstream_done_fn done;
    void *ud;
    CURL *easy;            /* while in flight */
    int backend;           /* backend index while in flight, else -1 */
    unsigned tried;        /* backends that refused a connection or answered 503/404 (bit per index); non-zero = retried */
    char *buf;             /* answer bytes so far */
    size_t buf_len, buf_cap;
    bool too_big;          /* the answer passed MAX_ANSWER_BYTES */
    bool context_exceeded; /* an error event before any delivery said the prompt is over the context */
    struct aigw_upstream_result res;
};

/* Engine-thread state of one backend. */
struct backend {
    char *url;             /* <base URL>/v1/chat/completions */
    int cap;               /* in-flight limit: min(slots, max_connections) */
    int in_flight;
    int fails;             /* consecutive failures (passive health) */
    int64_t down_until;    /* monotonic ms; 0 = not marked down */
};

struct aigw_upstream {
    const struct aigw_config *cfg;
    struct aigw_health *health;        /* NULL: passive health only */
    CURLM *multi;
    struct curl_slist *hdrs;           /* request headers, shared read-only by every transfer */
    struct curl_slist *sse_hdrs;       /* the same for streaming calls */
    pthread_t thread;
    int wake_fd;                       /* eventfd in the epoll set: submit and stop write it */
    pthread_mutex_t lock;              /* guards inbox, next_seq and closed */
    struct call_list inbox;
    struct aigw_upstream_call *ctl_head; /* calls with control requests, LIFO */
    uint64_t next_seq;
    bool closed;                       /* the engine takes no more calls (shutting down) */
    atomic_bool stopping;
    atomic_size_t n_in_flight, n_queued;
    /* engine thread only */
    struct backend be[AIGW_MAX_BACKENDS];
    struct call_list queue[AIGW_QUERY_TYPES];
    struct call_list active;
    size_t rr[AIGW_QUERY_TYPES];       /* round-robin start per group, to spread ties */
    int epfd;                          /* curl's sockets and wake_fd */
    uint8_t *watch;                    /* per descriptor: WATCH_* (see on_socket) */
    size_t watch_cap;
    int64_t curl_due_us;               /* monotonic us curl's timer expires; -1 = none */
    bool added;                        /* transfers were added since the last kick */
    int64_t next_sweep_ms;             /* sweep_streams: when next */
    size_t n_streams;                  /* active streaming calls */
    struct epoll_event ev[MAX_EVENTS];
    /* reload and drain (see "reload" below); pending, cancel and cancels_done are guarded by lock */
    struct aigw_snapshot *pending;     /* newest configuration not applied yet */
    bool cancel;                       /* fail every call now and take no more */
    uint64_t cancels_done;             /* cancels carried out (every call failed, done() ran) */
    pthread_cond_t cancelled;          /* signalled with cancels_done */
    _Atomic int64_t beat_ms;           /* monotonic ms the loop last went round; 0 = not yet */
    struct aigw_config ecfg;           /* engine thread: the applied configuration (cfg points here once applied) */
    struct aigw_snapshot *snap;        /* engine thread: keeps the strings ecfg borrows alive */
    bool deferred;                     /* engine thread: a reload waits for a free slot (logged once) */
};

/* ---- call lists ---- */

/* Insert c keeping the list ordered by seq; scanning from the tail makes the
 * common case (the newest call) O(1). */
static void
list_insert(struct call_list *l, struct aigw_upstream_call *c)
{
    struct aigw_upstream_call *p = l->tail;

    while (p != NULL && p->seq > c->seq)
        p = p->prev;
    c->prev = p;
    c->next = p != NULL ? p->next : l->head;
    if (c->next != NULL)
        c->next->prev = c;
    else
        l->tail = c;
    if (p != NULL)
        p->next = c;
    else
        l->head = c;
    l->n++;
}

/* Append without ordering: for the in-flight list, where order does not
 * matter and a retried (old) call must not cost a scan. */
static void
list_append(struct call_list *l, struct aigw_upstream_call *c)
{
    c->next = NULL;
    c->prev = l->tail;
    if (l->tail != NULL)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
    l->n++;
}

static void
list_remove(struct call_list *l, struct aigw_upstream_call *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
    l->n--;
}

static struct aigw_upstream_call *
list_pop(struct call_list *l)
{
    struct aigw_upstream_call *c = l->head;

    if (c != NULL)
        list_remove(l, c);
    return c;
}

/* ---- completion ---- */

static void
call_free(struct aigw_upstream_call *c)
{
    free(c->res.content);
    free(c->res.model);
    free(c->res.finish_reason);
    free(c->res.raw);
    free(c->buf);
    free(c->sse);
    free(c->delta);
    free(c->body);
    free(c);
}

static void
call_unref(struct aigw_upstream_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        call_free(c);
}

/* Hand the call back. The request and answer bytes go now (the result holds
 * copies; the caller may keep the call until its client has the answer).
 * The engine's reference goes last: done() or another thread may free c. */
static void
finish(struct aigw_upstream_call *c)
{
    c->state = CS_DONE;
    free(c->buf);
    c->buf = NULL;
    c->buf_len = c->buf_cap = 0;
    free(c->sse);
    c->sse = NULL;
    c->sse_len = c->sse_cap = 0;
    free(c->body);
    c->body = NULL;
    c->res.upstream_ms = aigw_now_ms() - c->submit_ms;
    c->done(c, c->ud);
    call_unref(c);
}

static void
fail(struct aigw_upstream_call *c, int status, const char *code, const char *detail, int retry_after_s)
{
    c->res.status = status;
    c->res.error_code = code;
    c->res.error_detail = detail;
    c->res.retry_after_s = status == 503 ? retry_after_s : 0;
    finish(c);
}

static void
fail_shutdown(struct aigw_upstream_call *c)
{
    fail(c, 503, "upstream_unavailable", "shutting down", 1);
}

/* ---- backend selection and passive health ---- */

static bool
eligible(const struct aigw_upstream *up, int b)
{
    return up->be[b].down_until == 0 && (up->health == NULL || aigw_health_up(up->health, (size_t)b));
}

/* The least loaded (in_flight / cap) eligible backend of group t with a free
 * slot, skipping the backends in mask; the scan starts at the group's
 * round-robin position so equally loaded backends take turns. No side
 * effects: returns a backend index, PICK_FULL or PICK_DOWN. */
/* A backend new to the table (at the start, or after a reload) whose first
 * /health probe is not over yet gets no calls, but the calls of its group
 * wait for that verdict (PICK_FULL: queued) rather than fail at once with
 * "no backend up": a reload that replaced a group's backends failed every
 * call queued for it, and every new one, until the probe answered. */
static int
pick(const struct aigw_upstream *up, int t, unsigned mask)
{
    size_t n = up->cfg->n_route_backends[t];
    int best = PICK_DOWN;

    for (size_t k = 0; k < n; k++) {
        int b = up->cfg->route_backends[t][(up->rr[t] + k) % n];
        const struct backend *be;
        bool probed;

        if (b < 0 || (size_t)b >= up->cfg->n_backends || (mask & (1u << b)))
            continue;
        /* read before eligible(): a verdict published meanwhile is seen there */
        probed = up->health == NULL || aigw_health_probed(up->health, (size_t)b);
        if (!eligible(up, b)) {
            if (!probed && up->be[b].down_until == 0 && best == PICK_DOWN)
                best = PICK_FULL;
            continue;
        }
        be = &up->be[b];
        if (be->in_flight >= be->cap) {
            if (best == PICK_DOWN)
                best = PICK_FULL;
            continue;
        }
        if (best < 0 || (long)be->in_flight * up->be[best].cap < (long)up->be[best].in_flight * be->cap)
            best = b;
    }
    return best;
}

static void
backend_failed(struct aigw_upstream *up, int b)
{
    struct backend *be = &up->be[b];

    if (be->down_until != 0) /* already down: late answers of old calls change nothing */
        return;
    if (++be->fails < up->cfg->fail_threshold)
        return;
    be->fails = 0;
    be->down_until = aigw_now_ms() + (up->cfg->down_ms > 0 ? up->cfg->down_ms : 1);
    aigw_log(LOG_WARNING, "upstream: backend %s marked down for %d ms after consecutive failures",
             up->cfg->backends[b].name, up->cfg->down_ms);
}

/* Bring back backends whose down time is over. They come back on probation
 * (a half-open circuit breaker): one more failure marks them down again,
 * one success clears the count. */
static void
recover(struct aigw_upstream *up, int64_t now)
{
    for (size_t b = 0; b < up->cfg->n_backends; b++) {
        struct backend *be = &up->be[b];

        if (be->down_until == 0 || now < be->down_until)
            continue;
        be->down_until = 0;
        be->fails = up->cfg->fail_threshold - 1;
        aigw_log(LOG_NOTICE, "upstream: backend %s is eligible again", up->cfg->backends[b].name);
    }
}

/* ---- answer bytes ---- */

/* The single place answer bytes arrive. A streaming mode hooks in here: it
 * hands each chunk to a per-call callback (returning CURL_WRITEFUNC_PAUSE
 * for backpressure) instead of buffering. */
static bool
body_append(struct aigw_upstream_call *c, const char *p, size_t n)
{
    size_t need = c->buf_len + n;

    if (n > MAX_ANSWER_BYTES || need > MAX_ANSWER_BYTES) {
        c->too_big = true;
        return false;
    }
    if (need > c->buf_cap) {
        size_t cap = c->buf_cap > 0 ? c->buf_cap : 4096;

        while (cap < need)
            cap *= 2;
        if (cap > MAX_ANSWER_BYTES)
            cap = MAX_ANSWER_BYTES;
        c->buf = aigw_xrealloc(c->buf, cap);
        c->buf_cap = cap;
    }
    memcpy(c->buf + c->buf_len, p, n);
    c->buf_len = need;
    return true;
}

static size_t
on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    size_t n = size * nmemb;

    return body_append(ud, ptr, n) ? n : 0; /* 0 aborts the transfer: CURLE_WRITE_ERROR */
}

/* A string member, copied; a NUL in it (\u0000, which the model may
 * produce and llama-server escapes) becomes U+FFFD, as in a stream, since
 * the text travels on as a C string. */
static char *
dup_string(const json_t *v)
{
    const char *p;
    size_t n, nuls = 0;
    char *out, *o;

    if (!json_is_string(v))
        return NULL;
    p = json_string_value(v);
    n = json_string_length(v);
    for (const char *z = memchr(p, '\0', n); z != NULL; z = memchr(z + 1, '\0', n - (size_t)(z + 1 - p)))
        nuls++;
    if (nuls == 0)
        return aigw_xstrndup(p, n);
    o = out = aigw_xmalloc(n + 2 * nuls + 1);
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '\0') {
            *o++ = p[i];
            continue;
        }
        memcpy(o, "\xEF\xBF\xBD", 3);
        o += 3;
    }
    *o = '\0';
    return out;
}

static long
token_count(const json_t *v)
{
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;

    return n > 0 && n <= LONG_MAX ? (long)n : 0;
}

/* Fill the result from a 200 answer; -1 if it is not a chat completion. */
static int
parse_answer(struct aigw_upstream_call *c)
{
    json_error_t err;
    json_t *root = json_loadb(c->buf != NULL ? c->buf : "", c->buf_len, JSON_ALLOW_NUL, &err);
    json_t *choice, *content, *usage;
    int rc = -1;

    if (root == NULL)
        return -1;
    choice = json_array_get(json_object_get(root, "choices"), 0);
    content = json_object_get(json_object_get(choice, "message"), "content");
    if (!json_is_string(content) && !json_is_null(content))
        goto out;
    /* null: an answer that is only tool calls (llama-server with --jinja) */
    c->res.content = json_is_string(content) ? dup_string(content) : aigw_xstrdup("");
    c->res.model = dup_string(json_object_get(root, "model"));
    c->res.finish_reason = dup_string(json_object_get(choice, "finish_reason"));
    c->res.thinking = json_string_length(json_object_get(json_object_get(choice, "message"), "reasoning_content")) > 0;
    usage = json_object_get(root, "usage");
    c->res.prompt_tokens = token_count(json_object_get(usage, "prompt_tokens"));
    c->res.completion_tokens = token_count(json_object_get(usage, "completion_tokens"));
    c->res.status = 200;
    rc = 0;
out:
    json_decref(root);
    return rc;
}

/* ---- streams ---- */

/* Append decoded delta text to the assembled answer (bounded: past the bound
 * the text is dropped and the answer is not cached, the stream goes on). */
static void
text_append(struct aigw_upstream_call *c, const char *p, size_t n)
{
    if (c->text_dropped)
        return;
    if (!body_append(c, p, n)) {
        c->text_dropped = true;
        free(c->buf);
        c->buf = NULL;
        c->buf_len = c->buf_cap = 0;
    }
}

/* The payload of an event: its data: lines joined with "\n" (SSE rules);
 * *is_error when it has an error: field. One data: line, the usual case,
 * is returned in place; several are joined into *joined (malloc'd, the
 * caller frees it). NULL when the event has no data. */
static const char *
event_payload(const char *ev, size_t len, bool *is_error, size_t *out_len, char **joined)
{
    const char *first = NULL, *p = ev, *end = ev + len;
    size_t first_len = 0, n = 0;
    char *out = NULL;

    *is_error = false;
    *joined = NULL;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t ll = (size_t)((eol != NULL ? eol : end) - p);
        const char *val = NULL;
        size_t vl = 0;

        if (ll > 0 && p[ll - 1] == '\r')
            ll--;
        if (ll >= 5 && memcmp(p, "data:", 5) == 0) {
            val = p + 5;
            vl = ll - 5;
        } else if (ll >= 6 && memcmp(p, "error:", 6) == 0) {
            val = p + 6;
            vl = ll - 6;
            *is_error = true;
        }
        if (val != NULL) {
            if (vl > 0 && *val == ' ') {
                val++;
                vl--;
            }
            if (first == NULL) {
                first = val;
                first_len = vl;
            } else {
                if (out == NULL) { /* a second data: line: from here on the lines are joined in a copy */
                    out = aigw_xmalloc(first_len + vl + 2);
                    memcpy(out, first, first_len);
                    n = first_len;
                } else {
                    out = aigw_xrealloc(out, n + vl + 2);
                }
                out[n++] = '\n';
                memcpy(out + n, val, vl);
                n += vl;
                out[n] = '\0';
            }
        }
        p = eol != NULL ? eol + 1 : end;
    }
    if (out == NULL) {
        *out_len = first_len;
        return first;
    }
    *joined = out;
    *out_len = n;
    return out;
}

/* A string of a scanned chunk, decoded into a new allocation. */
static char *
chunk_strdup(const struct aigw_chunk_str *s)
{
    char *out = aigw_xmalloc(s->len + 1);

    aigw_chunk_decode(s, out);
    return out;
}

/* Whether an error body (an answer's, or an error event's payload, which
 * llama-server writes as {"error": {...}} or as the error object itself)
 * says the prompt does not fit the model's context: llama-server's type
 * exceed_context_size_error. Only on the error path: parsed with jansson. */
static bool
says_context_exceeded(const char *json, size_t len)
{
    json_t *root = json_loadb(json != NULL ? json : "", len, 0, NULL), *e = json_object_get(root, "error");
    const char *type = json_string_value(json_object_get(json_is_object(e) ? e : root, "type"));
    bool yes = type != NULL && strcmp(type, "exceed_context_size_error") == 0;

    json_decref(root);
    return yes;
}

/* Tap one event for what aigw needs (text, counts, model, errors); the
 * bytes themselves go to the consumer unchanged. The event's JSON is
 * scanned in place (aigw_chunk_scan), not parsed into a tree; a delta is
 * decoded into the call's scratch buffer, valid until the next event. */
static void
tap_event(struct aigw_upstream_call *c, const char *payload, size_t plen, struct aigw_upstream_event *ev)
{
    struct aigw_chunk k;

    if (plen == 6 && memcmp(payload, "[DONE]", 6) == 0) {
        ev->done = true;
        if (!c->res.saw_done)
            c->done_ms = aigw_now_ms();
        c->res.saw_done = true;
        return;
    }
    if (aigw_chunk_scan(payload, plen, &k) != 0) {
        ev->error = true; /* not a JSON object at all: the stream is broken (whatever a partial scan read) */
        return;
    }
    if (k.error) {
        ev->error = true;
        if (c->stream_error_code == 0)
            c->stream_error_code = k.error_code;
        if (!c->res.started && !c->stream_error)
            c->context_exceeded = says_context_exceeded(payload, plen);
        return;
    }
    if (c->res.model == NULL && k.model.p != NULL)
        c->res.model = chunk_strdup(&k.model);
    if (k.content.p != NULL && k.content.len > 0) { /* no \u0000: a non-empty text decodes non-empty */
        if (k.content.len + 1 > c->delta_cap) {
            c->delta_cap = k.content.len + 1 > 256 ? k.content.len + 1 : 256;
            free(c->delta);
            c->delta = aigw_xmalloc(c->delta_cap);
        }
        ev->delta = c->delta;
        ev->delta_len = aigw_chunk_decode(&k.content, c->delta);
        text_append(c, ev->delta, ev->delta_len);
    }
    /* what the model generated, for the bill when the usage never comes:
     * thinking and tool calls are output too */
    ev->output = ev->delta != NULL || (k.reasoning.p != NULL && k.reasoning.len > 0) || k.tool_calls;
    if (ev->output)
        c->res.chunks++;
    if (k.finish_reason.p != NULL && c->res.finish_reason == NULL)
        c->res.finish_reason = chunk_strdup(&k.finish_reason);
    ev->meta = k.usage || k.timings;
    if (k.usage) {
        c->usage_prompt = k.prompt_tokens;
        c->usage_completion = k.completion_tokens;
        ev->usage_only = k.choices_empty;
    }
    if (k.timings) {
        /* prompt_n leaves out what the slot had cached (each is at most
         * INT32_MAX here: the spool line clamps counts to int4 anyway) */
        c->timings_prompt = (k.prompt_n < INT32_MAX ? k.prompt_n : INT32_MAX) +
                            (k.cache_n < INT32_MAX ? k.cache_n : INT32_MAX);
        c->timings_predicted = k.predicted_n;
    }
}

/* Hand the complete event ev[0..len) to the consumer. */
static void
deliver_event(struct aigw_upstream_call *c, const char *bytes, size_t len)
{
    struct aigw_upstream_event ev;
    size_t plen = 0;
    bool is_error;
    char *joined;
    const char *payload = event_payload(bytes, len, &is_error, &plen, &joined);

    /* a comment or keep-alive, or an event whose data is empty (`data:`
     * alone: the SSE rules dispatch an empty string, which no chunk is):
     * nothing for anyone */
    if (!is_error && (payload == NULL || plen == 0)) {
        free(joined);
        return;
    }
    memset(&ev, 0, sizeof(ev));
    ev.bytes = bytes;
    ev.len = len;
    ev.data = payload;
    ev.data_len = plen;
    if (is_error) { /* llama-server's `error:` event: the error object is the payload */
        struct aigw_chunk k;

        ev.error = true;
        if (payload != NULL && c->stream_error_code == 0 && aigw_chunk_scan(payload, plen, &k) == 0)
            c->stream_error_code = k.code;
        if (payload != NULL && !c->res.started && !c->stream_error)
            c->context_exceeded = says_context_exceeded(payload, plen);
    } else {
        tap_event(c, payload, plen, &ev);
    }
    /* an error before anything was delivered stays an ordinary failed call
     * (the client gets a plain HTTP error), and nothing after it is
     * delivered; once started, the consumer sees everything */
    if (c->res.started || (!ev.error && !c->stream_error)) {
        c->res.started = true;
        if (c->on_event(c, &ev, c->ud))
            c->want_pause = true;
    }
    if (ev.error)
        c->stream_error = true;
    free(joined);
}

/* The end of the event starting at p: just past its blank line, or NULL. */
static const char *
event_end(const char *p, const char *end)
{
    for (const char *q = p; q < end; q++) {
        if (*q != '\n')
            continue;
        if (q + 1 < end && q[1] == '\n')
            return q + 2;
        if (q + 2 < end && q[1] == '\r' && q[2] == '\n')
            return q + 3;
    }
    return NULL;
}

/* CURLOPT_WRITEFUNCTION of a stream: split the bytes into events (a chunk
 * may hold several, or part of one), hand each over as it completes.
 * Backpressure: once the consumer is full, the next chunk is refused with
 * CURL_WRITEFUNC_PAUSE (curl keeps it and delivers it again on unpause). */
static size_t
on_stream_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct aigw_upstream_call *c = ud;
    size_t n = size * nmemb;
    long code = 0;
    const char *p, *end, *e;

    c->last_byte_ms = aigw_now_ms();
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
    if (code != 200) /* an error answer: keep it as a body for the log, like a plain call */
        return body_append(c, ptr, n) ? n : 0;
    if (c->res.saw_done)
        return 0; /* bytes after [DONE] (keep-alive comments, say): the answer is complete, end here */
    if (c->want_pause) {
        c->paused = c->held = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (c->sse_len + n + 1 > c->sse_cap) {
        c->sse_cap = (c->sse_len + n + 1) * 2;
        c->sse = aigw_xrealloc(c->sse, c->sse_cap);
    }
    memcpy(c->sse + c->sse_len, ptr, n);
    c->sse_len += n;
    p = c->sse;
    end = c->sse + c->sse_len;
    while ((e = event_end(p, end)) != NULL) {
        deliver_event(c, p, (size_t)(e - p));
        p = e;
    }
    c->sse_len = (size_t)(end - p);
    memmove(c->sse, p, c->sse_len);
    if (c->sse_len > MAX_SSE_EVENT_BYTES) {
        c->too_big = true;
        return 0;
    }
    return n;
}

/* Fill a stream's result once the transfer is over: the assembled text and
 * the token counts, from the best source the upstream gave. */
static void
stream_result(struct aigw_upstream_call *c)
{
    if (!c->text_dropped) {
        c->res.content = aigw_xstrndup(c->buf != NULL ? c->buf : "", c->buf_len);
    }
    c->res.prompt_tokens = c->usage_prompt > 0 ? c->usage_prompt : c->timings_prompt;
    c->res.completion_tokens = c->usage_completion > 0    ? c->usage_completion
                               : c->timings_predicted > 0 ? c->timings_predicted
                                                          : c->res.chunks;
}

/* ---- the epoll set ---- */

/* What the epoll set holds for a descriptor of curl's. A socket curl stops
 * watching (CURL_POLL_REMOVE: its transfer ended and the connection went
 * back to curl's cache) stays in the set, marked idle, so that the next
 * transfer on the same kept-alive connection needs no epoll_ctl at all:
 * two syscalls fewer per call. An idle socket that reports an event (the
 * backend closed the connection) is taken out then; one curl closes leaves
 * the set by itself (on_close_socket clears its entry, so a reused number
 * is added afresh). Only connections are kept idle (WATCH_CONN: curl opened
 * them through on_open_socket): the threaded resolver's socketpair is closed
 * by curl without the close hook, and an entry left for it made the next
 * socketpair with the same number look watched already, so its answer was
 * seen only at curl's next timer (up to ~200 ms later). */
enum { WATCH_SET = 1, WATCH_IN = 2, WATCH_OUT = 4, WATCH_IDLE = 8, WATCH_CONN = 16 };

static uint8_t *
watch_of(struct aigw_upstream *up, curl_socket_t s)
{
    if ((size_t)s >= up->watch_cap) {
        size_t cap = up->watch_cap ? up->watch_cap : 256;

        while (cap <= (size_t)s)
            cap *= 2;
        up->watch = aigw_xrealloc(up->watch, cap);
        memset(up->watch + up->watch_cap, 0, cap - up->watch_cap);
        up->watch_cap = cap;
    }
    return &up->watch[s];
}

/* CURLMOPT_SOCKETFUNCTION: mirror in the epoll set what curl wants to know
 * about socket s (see WATCH_*). */
static int
on_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    struct aigw_upstream *up = userp;
    struct epoll_event ev;
    uint8_t *w, want;
    int op;

    (void)e;
    (void)socketp;
    if (s < 0)
        return 0;
    w = watch_of(up, s);
    if (what == CURL_POLL_REMOVE) {
        if ((*w & WATCH_SET) && (*w & WATCH_CONN)) {
            *w |= WATCH_IDLE;
        } else if (*w & WATCH_SET) { /* not a connection: about to be closed behind our back */
            epoll_ctl(up->epfd, EPOLL_CTL_DEL, s, NULL);
            *w = 0;
        }
        return 0;
    }
    want = (uint8_t)(WATCH_SET | ((what & CURL_POLL_IN) ? WATCH_IN : 0) | ((what & CURL_POLL_OUT) ? WATCH_OUT : 0) |
                     (*w & WATCH_CONN));
    if ((*w & ~WATCH_IDLE) == want) {
        *w = want;
        return 0;
    }
    memset(&ev, 0, sizeof(ev));
    ev.events = ((want & WATCH_IN) ? (uint32_t)EPOLLIN : 0u) | ((want & WATCH_OUT) ? (uint32_t)EPOLLOUT : 0u);
    ev.data.fd = s;
    op = (*w & WATCH_SET) ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    if (epoll_ctl(up->epfd, op, s, &ev) != 0
        && epoll_ctl(up->epfd, op == EPOLL_CTL_ADD ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s, &ev) != 0) {
        /* only on ENOMEM/ENOSPC; the transfer still ends, by its curl timeout */
        aigw_log(LOG_ERR, "upstream: cannot watch a backend socket");
        *w &= WATCH_CONN;
        return 0;
    }
    *w = want;
    return 0;
}

/* CURLOPT_OPENSOCKETFUNCTION: a connection's socket. Its number is fresh,
 * so whatever the table says of it is stale (a socket closed behind our
 * back: the kernel took it out of the epoll set). */
static curl_socket_t
on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    struct aigw_upstream *up = clientp;
    curl_socket_t s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);

    (void)purpose;
    if (s == CURL_SOCKET_BAD)
        return CURL_SOCKET_BAD;
    *watch_of(up, s) = WATCH_CONN;
    return s;
}

/* CURLOPT_CLOSESOCKETFUNCTION: closing takes s out of the epoll set. */
static int
on_close_socket(void *clientp, curl_socket_t s)
{
    struct aigw_upstream *up = clientp;

    if (s >= 0 && (size_t)s < up->watch_cap)
        up->watch[s] = 0;
    return close(s);
}

/* ---- transfers ---- */

static CURL *
make_easy(struct aigw_upstream *up, struct aigw_upstream_call *c, int b)
{
    CURL *e = curl_easy_init();

    if (e == NULL)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, up->be[b].url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->on_event != NULL ? up->sse_hdrs : up->hdrs);
    /* POSTFIELDS + size: a Content-Length body, never chunked; the call owns
     * the bytes until it is freed, so curl need not copy them */
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->len);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)c);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)up->cfg->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, (void *)up);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, (void *)up);
    if (c->on_event != NULL) {
        /* TIMEOUT_MS would cut a long stream: an idle limit (no byte for
         * stream_idle_ms, the first token included: sweep_streams; curl's
         * own low-speed check averages over seconds and ended a stream up
         * to ~6 s late) plus a generous total */
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_stream_write);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)up->cfg->stream_timeout_ms);
    } else {
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)up->cfg->timeout_ms);
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, ANSWER_RECV_BUFFER);
    }
    return e;
}

/* Send c to backend b; on a local failure the call completes at once. */
static void
start(struct aigw_upstream *up, struct aigw_upstream_call *c, int b)
{
    CURL *e;

    c->buf_len = 0; /* a retry starts a fresh answer */
    c->sse_len = 0;
    c->too_big = false;
    e = make_easy(up, c, b);
    if (e == NULL || curl_multi_add_handle(up->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        aigw_log(LOG_ERR, "upstream: could not start a transfer to %s", up->cfg->backends[b].name);
        fail(c, 502, "upstream_error", "could not start the transfer", 0);
        return;
    }
    c->easy = e;
    c->backend = b;
    c->state = CS_ACTIVE;
    c->last_byte_ms = aigw_now_ms();
    c->idle_ms = up->cfg->stream_idle_ms;
    up->n_streams += c->on_event != NULL;
    list_append(&up->active, c);
    up->added = true;
    up->be[b].in_flight++;
    up->rr[c->qtype]++;
    atomic_fetch_add(&up->n_in_flight, 1);
}

/* Take c out of the multi and free its slot; returns the backend it used. */
static int
detach(struct aigw_upstream *up, struct aigw_upstream_call *c)
{
    int b = c->backend;

    curl_multi_remove_handle(up->multi, c->easy);
    curl_easy_cleanup(c->easy);
    c->easy = NULL;
    c->backend = -1;
    c->done_ms = 0;
    up->n_streams -= c->on_event != NULL;
    list_remove(&up->active, c);
    up->be[b].in_flight--;
    atomic_fetch_sub(&up->n_in_flight, 1);
    return b;
}

/* ---- queues ---- */

static void
enqueue(struct aigw_upstream *up, struct aigw_upstream_call *c)
{
    struct call_list *q = &up->queue[c->qtype];

    if (up->cfg->queue_size <= 0 || q->n >= (size_t)up->cfg->queue_size) {
        fail(c, 503, "upstream_unavailable", "queue full", 1);
        return;
    }
    list_insert(q, c);
    c->state = CS_QUEUED;
    atomic_fetch_add(&up->n_queued, 1);
}

static void
unqueue(struct aigw_upstream *up, struct aigw_upstream_call *c)
{
    list_remove(&up->queue[c->qtype], c);
    atomic_fetch_sub(&up->n_queued, 1);
}

/* First placement of a new call. A non-empty queue means the group is busy,
 * so the call waits behind the others rather than overtaking them. */
static void
route(struct aigw_upstream *up, struct aigw_upstream_call *c)
{
    int t = c->qtype, b;

    if (c->cancelled) {
        fail(c, 499, "client_closed", "cancelled", 0);
        return;
    }
    if (t < 0 || t >= AIGW_QUERY_TYPES || up->cfg->n_route_backends[t] == 0) {
        fail(c, 503, "upstream_unavailable", "no backend serves this query type", 2);
        return;
    }
    if (up->queue[t].n > 0) {
        enqueue(up, c);
        return;
    }
    b = pick(up, t, 0);
    if (b >= 0)
        start(up, c, b);
    else if (b == PICK_FULL)
        enqueue(up, c);
    else
        fail(c, 503, "upstream_unavailable", "no backend up", 2);
}

/* Connect failed on backend b: nothing reached the model, so one more try
 * on another backend of the group is safe. */
static void
retry(struct aigw_upstream *up, struct aigw_upstream_call *c, int b)
{
    int nb;

    if (c->tried != 0) {
        fail(c, 503, "upstream_unavailable", "backends refused the connection", 2);
        return;
    }
    c->tried |= 1u << b;
    nb = pick(up, c->qtype, c->tried);
    if (nb >= 0)
        start(up, c, nb);
    else if (nb == PICK_FULL)
        enqueue(up, c); /* keeps its place: the queue is ordered by submit */
    else
        fail(c, 503, "upstream_unavailable", "backend refused the connection", 2);
}

/* Backend b answered before the call reached a slot: 503 while its model
 * loads (llama-server's HTTP side starts first, after a restart or a model
 * swap, and the prober learns of it only at its next probe), or 404 (no
 * chat route at that URL: see status_blames_backend). As after a refused
 * connection nothing ran, so the call goes once to another backend of the
 * group; false when it has been retried already or no other backend is
 * eligible (the caller fails it as before). */
static bool
retry_unserved(struct aigw_upstream *up, struct aigw_upstream_call *c, int b)
{
    int nb;

    if (c->tried != 0)
        return false;
    nb = pick(up, c->qtype, 1u << b);
    if (nb == PICK_DOWN)
        return false;
    c->tried |= 1u << b;
    if (nb >= 0)
        start(up, c, nb);
    else
        enqueue(up, c); /* keeps its place: the queue is ordered by submit */
    return true;
}

/* The oldest queued call, over every group, that a free slot can take now;
 * *out_b is its backend. Within a group only retried calls (which skip a
 * backend) can be passed over, so the scan stops at the first plain call. */
static struct aigw_upstream_call *
next_placeable(const struct aigw_upstream *up, int *out_b)
{
    struct aigw_upstream_call *best = NULL;

    for (int t = 0; t < AIGW_QUERY_TYPES; t++) {
        for (struct aigw_upstream_call *c = up->queue[t].head; c != NULL; c = c->next) {
            int b = pick(up, t, c->tried);

            if (b >= 0) {
                if (best == NULL || c->seq < best->seq) {
                    best = c;
                    *out_b = b;
                }
                break;
            }
            if (c->tried == 0)
                break;
        }
    }
    return best;
}

/* Fail what waited too long or can no longer be served, then fill the free
 * slots oldest first. */
static void
service_queues(struct aigw_upstream *up, int64_t now)
{
    struct aigw_upstream_call *c;
    int b = -1;

    for (int t = 0; t < AIGW_QUERY_TYPES; t++) {
        struct call_list *q = &up->queue[t];

        while (q->head != NULL && q->head->submit_ms + up->cfg->queue_timeout_ms <= now) {
            c = q->head;
            unqueue(up, c);
            fail(c, 503, "upstream_unavailable", "queue timeout", 1);
        }
        while (q->head != NULL && pick(up, t, 0) == PICK_DOWN) {
            c = q->head;
            unqueue(up, c);
            fail(c, 503, "upstream_unavailable", "no backend up", 2);
        }
    }
    for (;;) {
        c = next_placeable(up, &b);
        if (c == NULL)
            break;
        unqueue(up, c);
        start(up, c, b);
    }
}

/* ---- results ---- */

/* Whether a failure says the backend is sick, by the HTTP status (or the
 * code of an error event, which llama-server gives the status it would
 * have answered with): 4xx means the request was wrong, and llama-server
 * answers 500 for a request it cannot serve (a `tools` field when it runs
 * without --jinja, say); one client's requests must not take a backend out
 * for everyone. 502-504 (loading, overloaded, a proxy in front that lost
 * it) count, and so does 404: no request gets one from llama-server's chat
 * route, only a URL it does not serve (a base URL given with /v1, which
 * its /v1/health alias keeps up for the prober). */
static bool
status_blames_backend(long code)
{
    return code >= 502 || code < 400 || code == 404;
}

/* A stream that got its 200: success with [DONE] and no error event
 * (however the response ended after it: see on_stream_write and
 * sweep_streams), or, from a llama-server older than [DONE] in its chat
 * streams (before September 2024), a response that ended cleanly after a
 * chunk with a finish_reason; either way the result carries what was
 * delivered. */
static void
complete_stream(struct aigw_upstream *up, struct aigw_upstream_call *c, CURLcode rc, int b)
{
    stream_result(c);
    if (!c->stream_error && (c->res.saw_done || (rc == CURLE_OK && c->res.finish_reason != NULL))) {
        up->be[b].fails = 0;
        c->res.status = 200;
        finish(c);
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        /* a stall is the backend's; stream_timeout_ms reached by a stream
         * its client held paused is (at least in part) the client's time:
         * one slow reader took a backend out for everyone */
        if (c->stalled || !c->held)
            backend_failed(up, b);
        fail(c, 504, "upstream_timeout", "stream stalled or ran too long", 0);
    } else if (rc == CURLE_WRITE_ERROR && c->too_big) {
        fail(c, 502, "upstream_error", "stream event too large", 0);
    } else if (c->context_exceeded && !c->res.started) {
        fail(c, 400, "context_length_exceeded", "the prompt is longer than the model's context", 0);
    } else {
        aigw_log(LOG_INFO, "upstream: backend %s: stream ended %s (code %ld)", up->cfg->backends[b].name,
                 c->stream_error ? "with an error event" : rc != CURLE_OK ? curl_easy_strerror(rc) : "without [DONE]",
                 c->stream_error_code);
        /* an error event with no code, or a transport error, counts; a
         * refused request (a prompt over the context size, say) does not */
        if (!c->stream_error || c->stream_error_code == 0 || status_blames_backend(c->stream_error_code))
            backend_failed(up, b);
        fail(c, 502, "upstream_error", c->stream_error ? "error event in the stream" : "stream ended early", 0);
    }
}

/* Turn a finished transfer into the result, the retry or the health verdict. */
static void
complete(struct aigw_upstream *up, struct aigw_upstream_call *c, CURLcode rc)
{
    long code = 0;
    int b;

    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
    b = detach(up, c);
    if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST) {
        aigw_log(LOG_INFO, "upstream: backend %s: %s", up->cfg->backends[b].name, curl_easy_strerror(rc));
        backend_failed(up, b);
        retry(up, c, b);
        return;
    }
    c->res.backend = up->cfg->backends[b].name;
    if (c->on_event != NULL && code == 200) {
        complete_stream(up, c, rc, b);
        return;
    }
    if (c->keep_raw && rc == CURLE_OK && code == 200 && c->buf_len > 0) {
        c->res.raw = aigw_xstrndup(c->buf, c->buf_len);
        c->res.raw_len = c->buf_len;
    }
    if (rc == CURLE_WRITE_ERROR && c->too_big) {
        fail(c, 502, "upstream_error", "answer too large", 0); /* a long answer is no sign of a sick backend */
    } else if (rc == CURLE_OPERATION_TIMEDOUT) {
        backend_failed(up, b);
        fail(c, 504, "upstream_timeout", "backend timed out", 0);
    } else if (rc != CURLE_OK) {
        aigw_log(LOG_INFO, "upstream: backend %s: %s", up->cfg->backends[b].name, curl_easy_strerror(rc));
        backend_failed(up, b);
        fail(c, 502, "upstream_error", "transport error", 0);
    } else if (code == 400 && says_context_exceeded(c->buf, c->buf_len)) {
        /* the request's fault, not the backend's, and the client can mend
         * it (a shorter history): a 400 of its own, not a 502 its SDK retries */
        fail(c, 400, "context_length_exceeded", "the prompt is longer than the model's context", 0);
    } else if (code != 200) {
        aigw_log(LOG_INFO, "upstream: backend %s answered HTTP %ld", up->cfg->backends[b].name, code);
        /* transport errors, timeouts and answers that are not the protocol
         * count as well (above and below) */
        if (status_blames_backend(code))
            backend_failed(up, b);
        if ((code == 503 || code == 404) && retry_unserved(up, c, b))
            return;
        fail(c, 502, "upstream_error", "backend answered with an error status", 0);
    } else if (parse_answer(c) != 0) {
        aigw_log(LOG_INFO, "upstream: backend %s sent an invalid answer", up->cfg->backends[b].name);
        backend_failed(up, b);
        fail(c, 502, "upstream_error", "invalid answer", 0);
    } else {
        up->be[b].fails = 0;
        finish(c);
    }
}

static void
reap(struct aigw_upstream *up)
{
    for (;;) {
        int left = 0;
        CURLMsg *msg = curl_multi_info_read(up->multi, &left);
        char *priv = NULL;

        if (msg == NULL)
            break;
        if (msg->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        complete(up, (struct aigw_upstream_call *)(void *)priv, msg->data.result); /* msg is invalid from here on */
    }
}

/* ---- sockets, timer and wake-ups ---- */

/* CURLMOPT_TIMERFUNCTION: only note the deadline; libcurl forbids calling
 * back into the multi from here, the loop acts on it. */
static int
on_timer(CURLM *m, long timeout_ms, void *userp)
{
    struct aigw_upstream *up = userp;

    (void)m;
    up->curl_due_us = timeout_ms < 0 ? -1 : aigw_now_us() + (int64_t)timeout_ms * 1000;
    return 0;
}

/* What curl_multi_poll would report: an error or hang-up makes the socket
 * readable (an error also writable), so curl meets it on its next I/O. */
static int
curl_bits(uint32_t events)
{
    int bits = 0;

    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        bits |= CURL_CSELECT_IN;
    if (events & (EPOLLOUT | EPOLLERR))
        bits |= CURL_CSELECT_OUT;
    return bits;
}

/* ---- the engine thread ---- */

/* The wake-up was drained before this (dispatch), so a submit after the
 * swap finds the inbox empty and writes the eventfd again. */
/* Route up to INBOX_SLICE new calls, oldest first; true when more wait. */
static bool
take_inbox(struct aigw_upstream *up)
{
    struct call_list batch;
    bool more;

    memset(&batch, 0, sizeof(batch));
    pthread_mutex_lock(&up->lock);
    for (int i = 0; i < INBOX_SLICE && up->inbox.head != NULL; i++)
        list_append(&batch, list_pop(&up->inbox));
    more = up->inbox.head != NULL;
    pthread_mutex_unlock(&up->lock);
    for (;;) {
        struct aigw_upstream_call *c = list_pop(&batch);

        if (c == NULL)
            break;
        route(up, c);
    }
    return more;
}

/* Apply what other threads asked for: unpause drained streams, drop the
 * calls of clients that left. Each pending request holds a reference. */
static void
take_control(struct aigw_upstream *up)
{
    struct aigw_upstream_call *c, *next;

    pthread_mutex_lock(&up->lock);
    c = up->ctl_head;
    up->ctl_head = NULL;
    pthread_mutex_unlock(&up->lock);
    for (; c != NULL; c = next) {
        unsigned ops;
        CURLcode rc;

        pthread_mutex_lock(&up->lock);
        next = c->ctl_next;
        c->ctl_next = NULL;
        c->ctl_queued = false;
        ops = c->ctl_ops;
        c->ctl_ops = 0;
        pthread_mutex_unlock(&up->lock);
        if ((ops & CTL_CANCEL) && c->state == CS_ACTIVE) {
            detach(up, c); /* an unfinished transfer's connection is closed, not reused */
            fail(c, 499, "client_closed", "cancelled", 0);
        } else if ((ops & CTL_CANCEL) && c->state == CS_QUEUED) {
            unqueue(up, c);
            fail(c, 499, "client_closed", "cancelled", 0);
        } else if ((ops & CTL_CANCEL) && c->state == CS_INBOX) {
            c->cancelled = true; /* submitted after take_inbox: route() drops it */
        } else if ((ops & CTL_UNPAUSE) && c->state == CS_ACTIVE) {
            c->want_pause = false;
            if (c->paused) {
                c->paused = false;
                c->last_byte_ms = aigw_now_ms(); /* the idle clock stood still while the client was full */
                /* curl hands over what it held here; a refusal of it (an
                 * event grown too large) is reported only by this return,
                 * and libcurl 7.88 then leaves the transfer waiting for
                 * the socket: end it now, as the transfer's own error */
                rc = curl_easy_pause(c->easy, CURLPAUSE_CONT);
                if (rc != CURLE_OK)
                    complete(up, c, rc);
            }
        }
        call_unref(c);
    }
}

/* How long the engine may sleep for its own deadlines: until the oldest
 * queued call times out or a down backend comes back, at most IDLE_POLL_MS. */
static int
poll_timeout(const struct aigw_upstream *up, int64_t now)
{
    int64_t t = IDLE_POLL_MS;

    for (int g = 0; g < AIGW_QUERY_TYPES; g++)
        if (up->queue[g].head != NULL && up->queue[g].head->submit_ms + up->cfg->queue_timeout_ms - now < t)
            t = up->queue[g].head->submit_ms + up->cfg->queue_timeout_ms - now;
    for (size_t b = 0; b < up->cfg->n_backends; b++) {
        if (up->be[b].down_until != 0 && up->be[b].down_until - now < t)
            t = up->be[b].down_until - now;
        if (up->health != NULL && PROBE_POLL_MS < t && !aigw_health_probed(up->health, b))
            t = PROBE_POLL_MS; /* calls may wait for its first probe (see pick), which does not wake us */
    }
    if (up->n_streams > 0 && up->next_sweep_ms - now < t)
        t = up->next_sweep_ms - now; /* sweep_streams */
    return t > 0 ? (int)t : 0;
}

/* The epoll_wait timeout: our deadlines or curl's timer, whichever is first
 * (rounded up, so we do not wake just before curl's timer and spin).
 *
 * A deadline that has passed is asked of curl again: libcurl 7.88 does not
 * always report a timer it drops (a transfer that finishes and is removed
 * leaves the last deadline standing, with no callback of -1), and one it
 * reports in whole milliseconds, rounded down, is not ripe when that time
 * comes. Trusting the stale value made this loop spin on epoll_wait(0)
 * between transfers: a core of CPU on the miss path. curl_multi_timeout says
 * -1 (no timer), 0 (ripe: dispatch acts on it) or the time left (>= 1 ms). */
static int
wait_timeout(struct aigw_upstream *up)
{
    int64_t now_us = aigw_now_us();
    int64_t t = poll_timeout(up, now_us / 1000);

    if (up->curl_due_us >= 0 && up->curl_due_us <= now_us) {
        long ms = -1;

        if (curl_multi_timeout(up->multi, &ms) != CURLM_OK)
            ms = 0;
        up->curl_due_us = ms < 0 ? -1 : now_us + (int64_t)ms * 1000;
    }
    if (up->curl_due_us >= 0 && (up->curl_due_us - now_us + 999) / 1000 < t)
        t = (up->curl_due_us - now_us + 999) / 1000;
    return t > 0 ? (int)t : 0;
}

/* Hand each ready socket to curl, which touches only the transfers on it;
 * then curl's timers if due. */
static void
dispatch(struct aigw_upstream *up, int n)
{
    int running = 0;

    for (int i = 0; i < n; i++) {
        int fd = up->ev[i].data.fd;

        if (fd == up->wake_fd) {
            aigw_eventfd_drain(up->wake_fd);
        } else if ((size_t)fd < up->watch_cap && (up->watch[fd] & WATCH_IDLE)) {
            /* an idle kept-alive connection stirred (closed by the backend):
             * out of the set; curl finds it dead when it next looks */
            epoll_ctl(up->epfd, EPOLL_CTL_DEL, fd, NULL);
            up->watch[fd] = WATCH_CONN;
        } else {
            curl_multi_socket_action(up->multi, fd, curl_bits(up->ev[i].events), &running);
        }
    }
    if (up->curl_due_us >= 0 && up->curl_due_us <= aigw_now_us())
        curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
}

/* Every SWEEP_MS: end the streams that sent [DONE] DONE_GRACE_MS ago and
 * are still open (the backend holds the response open) as a success, and
 * the ones with no byte for the stream_idle_ms they started with (not counting time paused while
 * the client was full) as timed out. */
static void
sweep_streams(struct aigw_upstream *up, int64_t now)
{
    struct aigw_upstream_call *c, *next;

    if (up->n_streams == 0 || now < up->next_sweep_ms)
        return;
    up->next_sweep_ms = now + SWEEP_MS;
    for (c = up->active.head; c != NULL; c = next) {
        next = c->next;
        if (c->on_event == NULL)
            continue;
        if (c->done_ms != 0 && c->done_ms + DONE_GRACE_MS <= now)
            complete(up, c, CURLE_OK);
        else if (c->done_ms == 0 && !c->paused && c->idle_ms > 0 && now - c->last_byte_ms >= c->idle_ms) {
            c->stalled = true;
            complete(up, c, CURLE_OPERATION_TIMEDOUT);
        }
    }
}

/* Complete what curl finished and fill the freed slots. A new easy handle
 * only gets a timer from curl_multi_add_handle; the timeout kick starts it.
 * A kick can itself finish transfers (and free slots), so go round until a
 * pass starts nothing. */
static void
settle(struct aigw_upstream *up)
{
    for (;;) {
        int running = 0;

        reap(up);
        sweep_streams(up, aigw_now_ms());
        recover(up, aigw_now_ms());
        service_queues(up, aigw_now_ms());
        if (!up->added)
            return;
        up->added = false;
        curl_multi_socket_action(up->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
}

/* Every call still held completes with 503; submit fails calls itself once
 * closed is set, so none can slip in after the last inbox drain. */
static void
shutdown_calls(struct aigw_upstream *up)
{
    struct call_list late;
    struct aigw_upstream_call *c;

    pthread_mutex_lock(&up->lock);
    up->closed = true;
    late = up->inbox;
    memset(&up->inbox, 0, sizeof(up->inbox));
    pthread_mutex_unlock(&up->lock);
    for (c = list_pop(&late); c != NULL; c = list_pop(&late))
        fail_shutdown(c);
    for (int t = 0; t < AIGW_QUERY_TYPES; t++)
        for (c = up->queue[t].head; c != NULL; c = up->queue[t].head) {
            unqueue(up, c);
            fail_shutdown(c);
        }
    for (c = up->active.head; c != NULL; c = up->active.head) {
        detach(up, c);
        fail_shutdown(c);
    }
    take_control(up); /* everything is done now: this only drops references */
}

static void checkpoint(struct aigw_upstream *up);

static void *
run(void *arg)
{
    struct aigw_upstream *up = arg;

    while (!atomic_load(&up->stopping)) {
        bool more;
        int n;

        checkpoint(up);
        recover(up, aigw_now_ms());
        more = take_inbox(up);
        take_control(up);
        settle(up);
        /* calls left in the inbox: look at the sockets without sleeping, then take the next slice */
        n = epoll_wait(up->epfd, up->ev, MAX_EVENTS, more ? 0 : wait_timeout(up));
        dispatch(up, n > 0 ? n : 0); /* n < 0: EINTR, just go round */
    }
    shutdown_calls(up);
    return NULL;
}

/* ---- set-up ---- */

static char *
chat_url(const char *base)
{
    size_t n = strlen(base), cap;
    char *url;

    while (n > 0 && base[n - 1] == '/')
        n--;
    cap = n + sizeof(CHAT_PATH);
    url = aigw_xmalloc(cap);
    snprintf(url, cap, "%.*s%s", (int)n, base, CHAT_PATH);
    return url;
}

static struct curl_slist *
header_list(const char *accept)
{
    const char *const lines[] = {
        "Content-Type: application/json", accept,
        "Expect:", /* no 100-continue round trip before the body */
    };
    struct curl_slist *l = NULL;

    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        struct curl_slist *n = curl_slist_append(l, lines[i]);

        if (n == NULL)
            abort();
        l = n;
    }
    return l;
}

/* A backend never has more transfers than it has connections: with HTTP/1.1
 * a transfer over the connection cap would wait inside curl, invisible to
 * our queue and its timeout. So cap = min(slots, max_connections), and the
 * idle connections curl keeps per backend never exceed it either (llama-server
 * pins one HTTP thread per keep-alive connection). */
static void
setup_backends(struct aigw_upstream *up)
{
    long host_max = 1, total = 0;

    for (size_t b = 0; b < up->cfg->n_backends; b++) {
        const struct aigw_backend_cfg *bc = &up->cfg->backends[b];
        struct backend *be = &up->be[b];

        be->url = chat_url(bc->url != NULL ? bc->url : "");
        be->cap = bc->slots > 0 ? bc->slots : 1;
        if (bc->max_connections > 0 && bc->max_connections < be->cap)
            be->cap = bc->max_connections;
        if (be->cap > host_max)
            host_max = be->cap;
        total += be->cap;
    }
    curl_multi_setopt(up->multi, CURLMOPT_MAX_HOST_CONNECTIONS, host_max);
    curl_multi_setopt(up->multi, CURLMOPT_MAXCONNECTS, total > 0 ? total : 1L);
}

/* The epoll set with the eventfd in it, and curl's hooks into both. */
static void
setup_events(struct aigw_upstream *up)
{
    struct epoll_event ev;

    up->curl_due_us = -1;
    up->epfd = epoll_create1(EPOLL_CLOEXEC);
    up->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN;
    ev.data.fd = up->wake_fd;
    if (up->epfd < 0 || up->wake_fd < 0 || epoll_ctl(up->epfd, EPOLL_CTL_ADD, up->wake_fd, &ev) != 0)
        abort();
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(up->multi, CURLMOPT_SOCKETDATA, (void *)up);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(up->multi, CURLMOPT_TIMERDATA, (void *)up);
}

/* ---- reload ----
 *
 * A reload is posted (aigw_upstream_reconfigure) and applied by the engine
 * thread between two loop rounds, so no transfer ever sees half a table.
 * Backend indexes are stable: a backend with the same name and URL keeps its
 * slot with its in-flight count and passive health; a removed one that still
 * has calls in flight keeps its slot, outside every route, until they end on
 * it; a new one takes a free slot. Queued calls stay queued and are placed by
 * the new routes. */

static bool
same_backend(const struct aigw_backend_cfg *a, const struct aigw_backend_cfg *b)
{
    return a->url != NULL && b->url != NULL && strcmp(a->name, b->name) == 0 && strcmp(a->url, b->url) == 0;
}

/* Slot for each backend of next into map[]. false when a new backend finds
 * no free slot yet (removed backends still finishing calls): retry later. */
static bool
map_slots(const struct aigw_upstream *up, const struct aigw_config *next, int map[AIGW_MAX_BACKENDS],
          bool taken[AIGW_MAX_BACKENDS])
{
    const struct aigw_config *cur = up->cfg;

    memset(taken, 0, AIGW_MAX_BACKENDS * sizeof(taken[0]));
    for (size_t j = 0; j < next->n_backends; j++) {
        map[j] = -1;
        for (size_t i = 0; i < cur->n_backends && map[j] < 0; i++)
            if (!taken[i] && same_backend(&cur->backends[i], &next->backends[j]))
                map[j] = (int)i;
        if (map[j] >= 0)
            taken[map[j]] = true;
    }
    for (size_t j = 0; j < next->n_backends; j++) {
        for (size_t i = 0; i < AIGW_MAX_BACKENDS && map[j] < 0; i++)
            if (!taken[i] && (i >= cur->n_backends || up->be[i].in_flight == 0))
                map[j] = (int)i;
        if (map[j] < 0)
            return false;
        taken[map[j]] = true;
    }
    return true;
}

/* next with its backends moved to their slots, plus the removed backends
 * still draining (no URL, in no route). Strings stay next's. */
static void
slotted_config(const struct aigw_upstream *up, const struct aigw_config *next, const int map[AIGW_MAX_BACKENDS],
               const bool taken[AIGW_MAX_BACKENDS], struct aigw_config *out)
{
    const struct aigw_config *cur = up->cfg;
    size_t n = 0;

    *out = *next;
    memset(out->backends, 0, sizeof(out->backends));
    for (size_t i = 0; i < cur->n_backends; i++) {
        if (taken[i] || up->be[i].in_flight == 0)
            continue;
        out->backends[i] = cur->backends[i];
        out->backends[i].url = NULL;
        n = i + 1;
    }
    for (size_t j = 0; j < next->n_backends; j++) {
        out->backends[map[j]] = next->backends[j];
        if ((size_t)map[j] + 1 > n)
            n = (size_t)map[j] + 1;
    }
    out->n_backends = n;
    for (int t = 0; t < AIGW_QUERY_TYPES; t++)
        for (size_t k = 0; k < next->n_route_backends[t]; k++)
            out->route_backends[t][k] = map[next->route_backends[t][k]];
}

/* Engine state for the slots of the new table prev -> up->cfg: kept and
 * draining slots keep their counters, every other slot starts afresh. */
static void
reset_slots(struct aigw_upstream *up, const struct aigw_config *prev)
{
    const struct aigw_config *cur = up->cfg;

    for (size_t i = 0; i < AIGW_MAX_BACKENDS; i++) {
        struct backend *be = &up->be[i];
        bool kept = i < cur->n_backends && i < prev->n_backends &&
                    same_backend(&prev->backends[i], &cur->backends[i]);

        free(be->url);
        be->url = NULL;
        if (!kept && be->in_flight == 0) {
            be->fails = 0;
            be->down_until = 0;
        }
    }
    setup_backends(up); /* URLs, caps and curl's connection limits for the new table */
}

static void
apply(struct aigw_upstream *up, struct aigw_snapshot *snap)
{
    struct aigw_config prev = *up->cfg, next;
    int map[AIGW_MAX_BACKENDS];
    bool taken[AIGW_MAX_BACKENDS];

    if (!map_slots(up, &snap->cfg, map, taken)) {
        if (!up->deferred)
            aigw_log(LOG_NOTICE, "upstream: configuration %llu waits for calls on removed backends to end",
                     (unsigned long long)snap->generation);
        up->deferred = true;
        pthread_mutex_lock(&up->lock);
        if (up->pending == NULL) /* else a newer one came meanwhile: it wins */
            up->pending = aigw_snapshot_ref(snap);
        pthread_mutex_unlock(&up->lock);
        return;
    }
    up->deferred = false;
    slotted_config(up, &snap->cfg, map, taken, &next);
    up->ecfg = next;
    up->cfg = &up->ecfg;
    reset_slots(up, &prev);
    if (up->health != NULL)
        aigw_health_reconfigure(up->health, up->cfg);
    aigw_snapshot_unref(up->snap); /* prev's strings are not needed any more */
    up->snap = aigw_snapshot_ref(snap);
    aigw_log(LOG_NOTICE, "upstream: configuration %llu applied: %zu backends", (unsigned long long)snap->generation,
             snap->cfg.n_backends);
}

/* Top of every engine round: the heartbeat, then a posted cancel or reload. */
static void
checkpoint(struct aigw_upstream *up)
{
    struct aigw_snapshot *snap;
    bool cancel;

    atomic_store_explicit(&up->beat_ms, aigw_now_ms(), memory_order_relaxed);
    pthread_mutex_lock(&up->lock);
    snap = up->pending;
    up->pending = NULL;
    cancel = up->cancel;
    up->cancel = false;
    pthread_mutex_unlock(&up->lock);
    if (cancel) {
        shutdown_calls(up);
        pthread_mutex_lock(&up->lock);
        up->cancels_done++;
        pthread_cond_broadcast(&up->cancelled);
        pthread_mutex_unlock(&up->lock);
    }
    if (snap != NULL)
        apply(up, snap);
    aigw_snapshot_unref(snap);
}

void
aigw_upstream_reconfigure(struct aigw_upstream *up, struct aigw_snapshot *snap)
{
    struct aigw_snapshot *old;

    pthread_mutex_lock(&up->lock);
    old = up->pending;
    up->pending = aigw_snapshot_ref(snap);
    pthread_mutex_unlock(&up->lock);
    aigw_snapshot_unref(old);
    aigw_eventfd_signal(up->wake_fd);
}

/* Waits for the engine: the drain stops the HTTP daemon right after this
 * when told to hurry (a third signal), and libmicrohttpd 0.9.75 aborts the
 * process if a connection is still suspended then ("MHD_stop_daemon()
 * called while we have suspended connections"); a done() running later
 * would resume a connection already freed. */
void
aigw_upstream_cancel_all(struct aigw_upstream *up)
{
    struct timespec until;
    uint64_t want;
    bool done = true;

    aigw_deadline_ms(&until, CANCEL_WAIT_MS);
    pthread_mutex_lock(&up->lock);
    up->cancel = true;
    want = up->cancels_done + 1; /* a cancel already posted and not begun yet counts as this one */
    aigw_eventfd_signal(up->wake_fd);
    while (up->cancels_done < want && done)
        done = pthread_cond_timedwait(&up->cancelled, &up->lock, &until) == 0;
    pthread_mutex_unlock(&up->lock);
    if (!done)
        aigw_log(LOG_ERR, "upstream: the engine did not cancel its calls within %d ms", CANCEL_WAIT_MS);
}

int64_t
aigw_upstream_stalled_ms(const struct aigw_upstream *up)
{
    int64_t beat = atomic_load_explicit(&up->beat_ms, memory_order_relaxed);

    return beat > 0 ? aigw_now_ms() - beat : 0;
}

struct aigw_upstream *
aigw_upstream_start(const struct aigw_config *cfg, struct aigw_health *health)
{
    struct aigw_upstream *up = aigw_xcalloc(1, sizeof(*up));

    up->cfg = cfg;
    up->health = health;
    up->multi = curl_multi_init();
    if (up->multi == NULL)
        abort();
    up->hdrs = header_list("Accept: application/json");
    up->sse_hdrs = header_list("Accept: text/event-stream");
    setup_backends(up);
    setup_events(up);
    pthread_mutex_init(&up->lock, NULL);
    pthread_cond_init(&up->cancelled, NULL);
    atomic_init(&up->stopping, false);
    atomic_init(&up->n_in_flight, 0);
    atomic_init(&up->n_queued, 0);
    if (pthread_create(&up->thread, NULL, run, up) != 0)
        abort();
    return up;
}

void
aigw_upstream_stop(struct aigw_upstream *up)
{
    if (up == NULL)
        return;
    atomic_store(&up->stopping, true);
    aigw_eventfd_signal(up->wake_fd);
    pthread_join(up->thread, NULL);
    curl_multi_cleanup(up->multi); /* may still call on_socket: the epoll set goes after it */
    close(up->epfd);
    free(up->watch);
    close(up->wake_fd);
    curl_slist_free_all(up->hdrs);
    curl_slist_free_all(up->sse_hdrs);
    for (size_t b = 0; b < up->cfg->n_backends; b++)
        free(up->be[b].url);
    pthread_cond_destroy(&up->cancelled);
    pthread_mutex_destroy(&up->lock);
    aigw_snapshot_unref(up->pending);
    aigw_snapshot_unref(up->snap);
    free(up);
}

/* ---- calls ---- */

struct aigw_upstream_call *
aigw_upstream_submit_opts(struct aigw_upstream *up, const struct aigw_upstream_opts *o)
{
    struct aigw_upstream_call *c = aigw_xcalloc(1, sizeof(*c));
    bool closed;

    atomic_init(&c->refs, 2); /* the caller's and the engine's */
    c->state = CS_INBOX;
    c->qtype = o->qtype;
    c->keep_raw = o->keep_raw;
    c->on_event = o->on_event;
    c->body = aigw_xmalloc(o->len + 1);
    if (o->len > 0)
        memcpy(c->body, o->body, o->len);
    c->body[o->len] = '\0';
    c->len = o->len;
    c->done = o->done;
    c->ud = o->ud;
    c->backend = -1;
    pthread_mutex_lock(&up->lock);
    closed = up->closed;
    if (!closed) {
        /* seq and submit time under one lock: queue order = deadline order */
        c->seq = up->next_seq++;
        c->submit_ms = aigw_now_ms();
        /* only the first call into an empty inbox wakes the engine: after
         * draining the eventfd it takes the inbox a slice per round and does
         * not sleep until the inbox is empty, so no call is missed */
        if (up->inbox.head == NULL)
            aigw_eventfd_signal(up->wake_fd); /* under the lock: closed is not set yet, so wake_fd is open */
        list_insert(&up->inbox, c);
    }
    pthread_mutex_unlock(&up->lock);
    if (closed) {
        c->submit_ms = aigw_now_ms();
        fail_shutdown(c); /* no engine thread left to run done() */
    }
    return c;
}

struct aigw_upstream_call *
aigw_upstream_submit(struct aigw_upstream *up, int qtype, const char *body, size_t len, aigw_upstream_done_fn done,
                     void *ud)
{
    struct aigw_upstream_opts o = {.qtype = qtype, .body = body, .len = len, .done = done, .ud = ud};

    return aigw_upstream_submit_opts(up, &o);
}

/* Queue a control request for the engine thread. */
static void
control(struct aigw_upstream *up, struct aigw_upstream_call *c, unsigned op)
{
    pthread_mutex_lock(&up->lock);
    if (!up->closed) {
        c->ctl_ops |= op;
        if (!c->ctl_queued) {
            c->ctl_queued = true;
            atomic_fetch_add(&c->refs, 1);
            c->ctl_next = up->ctl_head;
            if (up->ctl_head == NULL && up->inbox.head == NULL)
                aigw_eventfd_signal(up->wake_fd);
            up->ctl_head = c;
        }
    }
    pthread_mutex_unlock(&up->lock);
}

void
aigw_upstream_unpause(struct aigw_upstream *up, struct aigw_upstream_call *call)
{
    control(up, call, CTL_UNPAUSE);
}

void
aigw_upstream_cancel(struct aigw_upstream *up, struct aigw_upstream_call *call)
{
    control(up, call, CTL_CANCEL);
}

const struct aigw_upstream_result *
aigw_upstream_result(const struct aigw_upstream_call *call)
{
    return &call->res;
}

void
aigw_upstream_call_free(struct aigw_upstream_call *call)
{
    if (call != NULL)
        call_unref(call);
}

size_t
aigw_upstream_in_flight(const struct aigw_upstream *up)
{
    return atomic_load(&up->n_in_flight);
}

size_t
aigw_upstream_queued(const struct aigw_upstream *up)
{
    return atomic_load(&up->n_queued);
}
