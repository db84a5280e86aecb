/*
 * mock-upstream: a fake llama.cpp `llama-server` (OpenAI compatible chat API)
 * for aigw's integration tests and benchmarks.
 *
 * Concurrency model: libmicrohttpd with a small epoll thread pool.  A request
 * that has to wait (for a slot, for its first token, for the next stream
 * token, or forever in "hang" mode) is parked with MHD_suspend_connection();
 * one timer thread keeps a min-heap of wake-up deadlines and calls
 * MHD_resume_connection() when they pass.  No thread per request, so tens of
 * thousands of slow requests / streams can be held at once.
 *
 * Locking: g_mu protects the config, the stats, the timer heap, the slot
 * queue, the list of live requests and every request's `suspended` flag.  A
 * request is suspended and resumed only with g_mu held, so a resume never
 * hits a connection that is not suspended.  Everything else in a request is
 * touched only by the MHD worker thread that owns its connection.
 */
#include "mock_upstream.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HANG_CAP_MS (3600L * 1000L)
#define MAX_MS_SETTING (3600L * 1000L)
#define MAX_TOKENS_SETTING 1000000L
#define MAX_TOKEN_PAD 131072L /* one token event stays well under aigw's 256 KiB event limit */

/* ------------------------------------------------------------------------ */
/* configuration and state                                                  */
/* ------------------------------------------------------------------------ */

enum mode {
    MODE_OK,
    MODE_ERROR500,
    MODE_LOADING,
    MODE_HANG,
    MODE_GARBAGE,
    MODE_DISCONNECT,
    MODE_ERROR_MIDSTREAM,
    MODE_ERROR_MIDSTREAM_DATA,
    MODE_EXCEED_CONTEXT,
    MODE_COUNT
};

static const char *const mode_names[MODE_COUNT] = {
    "ok", "error500", "loading", "hang", "garbage", "disconnect", "error_midstream",
    "error_midstream_data", "exceed_context",
};

struct config {
    enum mode mode;
    long fail_next; /* -1: the mode applies to every request */
    long token_latency_ms;
    long first_token_ms;
    long tokens;
    long slots;
    bool queue;
    bool usage_in_finish_chunk; /* pre-2025 llama-server stream usage placement */
    bool stamp_events;          /* bench: role/token chunks carry "x_mock_sent_us" */
    bool no_done;               /* streams end without data: [DONE] (llama-server before 2024-09) */
    bool nul_text;              /* the answer's last token ends in \u0000x */
    long reasoning_tokens;      /* the first N stream tokens are reasoning_content deltas */
    long token_pad;             /* '.' bytes appended to each token's text */
    bool empty_data_events;     /* empty data events (`data:` / `data: `) before the first token */
    char model[256];
};

struct stats {
    uint64_t chat_requests, chat_ok, streams, client_disconnects, health_requests,
        models_requests, rejected;
    long in_flight, max_in_flight, queued, active;
};

enum route { R_CHAT, R_HEALTH, R_MODELS, R_CFG_GET, R_CFG_POST, R_STATS, R_RESET, R_NOT_FOUND };

enum phase { PH_NEW, PH_QUEUED, PH_WAIT, PH_HANG, PH_STREAMING };

enum step { ST_FINISH, ST_USAGE, ST_DONE, ST_END, ST_ABORT, ST_ERRLINE, ST_ERRDATA, ST_GARBAGE, ST_ERRCTX };

struct req {
    struct MHD_Connection *conn;
    enum route route;
    enum phase phase;

    char *body;
    size_t body_len, body_cap;
    bool body_too_large;

    struct req *prev, *next;   /* g_all list */
    struct req *qprev, *qnext; /* slot wait queue */
    bool in_queue;
    long heap_idx; /* -1 when not in the timer heap */
    int64_t deadline_ns;
    bool suspended;
    bool has_slot;
    bool counted; /* chat request accounted in in_flight */

    /* generation parameters (fixed when admitted) */
    enum mode kind;
    bool stream, include_usage, usage_in_finish, stamp, no_done, nul, empty_data;
    long n_tokens, prompt_tokens, first_ms, lat_ms, reasoning, pad;
    const char *finish_reason;
    char id[48];
    char model[256];
    char snippet[MU_SNIPPET_BYTES + 8];
    long long created;
    int64_t t0_ns; /* slot acquired */

    /* stream state */
    long ev;        /* next role/token event; 0 = role chunk */
    long tok_limit; /* last token to emit; -1 = no role/token events */
    enum step steps[4];
    int nsteps, step_i;
    char *out;
    size_t out_len, out_off, out_cap;
    bool stream_finished, deliberate_abort, ok_result;
};

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cond;
static struct config g_cfg, g_cli_cfg;
static struct stats g_st;
static char *g_last_body;
static size_t g_last_len;
static struct req *g_all;
static struct req *g_qhead, *g_qtail;
static struct req **g_heap;
static size_t g_heap_len, g_heap_cap;
static bool g_timer_stop;
static atomic_bool g_shutdown;
static int64_t g_loading_until_ns;
static size_t g_max_body = 1024 * 1024;
static atomic_uint_fast64_t g_id_ctr;
static uint64_t g_id_seed;

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + (int64_t)ts.tv_nsec;
}

static int64_t ms_to_ns(long ms)
{
    return (int64_t)ms * 1000000LL;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fputs("mock-upstream: out of memory\n", stderr);
        abort();
    }
    return q;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* "chatcmpl-" + 32 alphanumerics, like llama-server's gen_chatcmplid() */
static void make_id(char *out, size_t cap)
{
    static const char alnum[] =
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    uint64_t x = g_id_seed ^ (atomic_fetch_add(&g_id_ctr, 1) * 0x2545F4914F6CDD1DULL);
    char rnd[33];
    for (int i = 0; i < 32; i++) {
        rnd[i] = alnum[splitmix64(&x) % (sizeof alnum - 1)];
    }
    rnd[32] = '\0';
    snprintf(out, cap, "chatcmpl-%s", rnd);
}

/* ------------------------------------------------------------------------ */
/* timer heap (g_mu held)                                                   */
/* ------------------------------------------------------------------------ */

static void heap_set(size_t i, struct req *r)
{
    g_heap[i] = r;
    r->heap_idx = (long)i;
}

static void heap_sift_up(size_t i)
{
    struct req *r = g_heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (g_heap[p]->deadline_ns <= r->deadline_ns) {
            break;
        }
        heap_set(i, g_heap[p]);
        i = p;
    }
    heap_set(i, r);
}

static void heap_sift_down(size_t i)
{
    struct req *r = g_heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        int64_t best = r->deadline_ns;
        if (l < g_heap_len && g_heap[l]->deadline_ns < best) {
            m = l;
            best = g_heap[l]->deadline_ns;
        }
        if (l + 1 < g_heap_len && g_heap[l + 1]->deadline_ns < best) {
            m = l + 1;
        }
        if (m == i) {
            break;
        }
        heap_set(i, g_heap[m]);
        i = m;
    }
    heap_set(i, r);
}

static void heap_push(struct req *r, int64_t deadline_ns)
{
    if (g_heap_len == g_heap_cap) {
        g_heap_cap = g_heap_cap ? g_heap_cap * 2 : 1024;
        g_heap = xrealloc(g_heap, g_heap_cap * sizeof *g_heap);
    }
    r->deadline_ns = deadline_ns;
    heap_set(g_heap_len++, r);
    heap_sift_up(g_heap_len - 1);
    if (r->heap_idx == 0) {
        pthread_cond_signal(&g_cond);
    }
}

static void heap_remove(struct req *r)
{
    if (r->heap_idx < 0) {
        return;
    }
    size_t i = (size_t)r->heap_idx;
    r->heap_idx = -1;
    g_heap_len--;
    if (i == g_heap_len) {
        return;
    }
    struct req *moved = g_heap[g_heap_len];
    heap_set(i, moved);
    heap_sift_up(i);
    if ((size_t)moved->heap_idx == i) {
        heap_sift_down(i);
    }
}

/* Suspend r's connection, optionally with a wake-up deadline (< 0: none).
 * Must be called from r's access handler or content reader, g_mu held.
 * Returns false (and does nothing) once shutdown has begun. */
static bool park_locked(struct req *r, int64_t deadline_ns)
{
    if (atomic_load(&g_shutdown)) {
        return false;
    }
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    if (deadline_ns >= 0) {
        heap_push(r, deadline_ns);
    }
    return true;
}

static void *timer_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g_mu);
    while (!g_timer_stop) {
        if (g_heap_len == 0) {
            pthread_cond_wait(&g_cond, &g_mu);
            continue;
        }
        struct req *top = g_heap[0];
        int64_t now = mono_ns();
        if (top->deadline_ns <= now) {
            heap_remove(top);
            if (top->suspended) {
                top->suspended = false;
                MHD_resume_connection(top->conn);
            }
            continue;
        }
        struct timespec ts = {.tv_sec = (time_t)(top->deadline_ns / 1000000000LL),
                              .tv_nsec = (long)(top->deadline_ns % 1000000000LL)};
        pthread_cond_timedwait(&g_cond, &g_mu, &ts);
    }
    pthread_mutex_unlock(&g_mu);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* slots (g_mu held)                                                        */
/* ------------------------------------------------------------------------ */

static int64_t gen_deadline(const struct req *r)
{
    if (r->stream) {
        return r->t0_ns + ms_to_ns(r->first_ms);
    }
    return r->t0_ns + ms_to_ns(r->first_ms) + ms_to_ns(r->lat_ms) * r->n_tokens;
}

static void queue_unlink_locked(struct req *r)
{
    if (!r->in_queue) {
        return;
    }
    if (r->qprev) {
        r->qprev->qnext = r->qnext;
    } else {
        g_qhead = r->qnext;
    }
    if (r->qnext) {
        r->qnext->qprev = r->qprev;
    } else {
        g_qtail = r->qprev;
    }
    r->qprev = r->qnext = NULL;
    r->in_queue = false;
    g_st.queued--;
}

/* Hand free slots to waiting requests, FIFO.  Their connections are already
 * suspended; they get a wake-up at their first deadline. */
static void slots_promote_locked(void)
{
    while (g_qhead && g_st.active < g_cfg.slots && !atomic_load(&g_shutdown)) {
        struct req *r = g_qhead;
        queue_unlink_locked(r);
        r->has_slot = true;
        g_st.active++;
        r->t0_ns = mono_ns();
        r->phase = PH_WAIT;
        heap_push(r, gen_deadline(r));
    }
}

/* ------------------------------------------------------------------------ */
/* responses                                                                */
/* ------------------------------------------------------------------------ */

static enum MHD_Result send_buf(struct MHD_Connection *c, unsigned int status, char *body,
                                const char *ctype)
{
    if (!body) {
        return MHD_NO;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, "llama.cpp");
    enum MHD_Result ret = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned int status, char *body)
{
    return send_buf(c, status, body, "application/json; charset=utf-8");
}

static enum MHD_Result send_json_obj(struct MHD_Connection *c, unsigned int status, json_t *j)
{
    char *s = j ? json_dumps(j, MU_DUMP_FLAGS) : NULL;
    json_decref(j);
    return send_json(c, status, s);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned int status,
                                  const char *message, const char *type)
{
    return send_json(c, status, mu_render_error((int)status, message, type, false));
}

static enum MHD_Result send_loading(struct MHD_Connection *c)
{
    return send_json(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                     mu_render_error(503, "Loading model", "unavailable_error", true));
}

static enum MHD_Result send_not_found(struct MHD_Connection *c)
{
    return send_json(c, MHD_HTTP_NOT_FOUND,
                     mu_render_error(404, "File Not Found", "not_found_error", true));
}

static bool is_loading_locked(void)
{
    return g_cfg.mode == MODE_LOADING || mono_ns() < g_loading_until_ns;
}

static json_t *config_json_locked(void)
{
    return json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:b, s:b, s:b, s:b, s:b, s:I, s:I, s:b, s:s}",
                     "mode", mode_names[g_cfg.mode],
                     "fail_next", (json_int_t)g_cfg.fail_next,
                     "token_latency_ms", (json_int_t)g_cfg.token_latency_ms,
                     "first_token_ms", (json_int_t)g_cfg.first_token_ms,
                     "tokens", (json_int_t)g_cfg.tokens,
                     "slots", (json_int_t)g_cfg.slots,
                     "queue", (int)g_cfg.queue,
                     "usage_in_finish_chunk", (int)g_cfg.usage_in_finish_chunk,
                     "stamp_events", (int)g_cfg.stamp_events,
                     "no_done", (int)g_cfg.no_done,
                     "nul_text", (int)g_cfg.nul_text,
                     "reasoning_tokens", (json_int_t)g_cfg.reasoning_tokens,
                     "token_pad", (json_int_t)g_cfg.token_pad,
                     "empty_data_events", (int)g_cfg.empty_data_events,
                     "model", g_cfg.model);
}

static json_t *stats_json_locked(void)
{
    json_t *last = json_null();
    if (g_last_body) {
        json_t *parsed = json_loadb(g_last_body, g_last_len, JSON_DECODE_ANY, NULL);
        last = parsed ? parsed : json_stringn(g_last_body, g_last_len);
    }
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:o?}",
                     "chat_requests", (json_int_t)g_st.chat_requests,
                     "chat_ok", (json_int_t)g_st.chat_ok,
                     "streams", (json_int_t)g_st.streams,
                     "in_flight", (json_int_t)g_st.in_flight,
                     "max_in_flight", (json_int_t)g_st.max_in_flight,
                     "queued", (json_int_t)g_st.queued,
                     "active", (json_int_t)g_st.active,
                     "rejected", (json_int_t)g_st.rejected,
                     "client_disconnects", (json_int_t)g_st.client_disconnects,
                     "health_requests", (json_int_t)g_st.health_requests,
                     "models_requests", (json_int_t)g_st.models_requests,
                     "loading", (int)is_loading_locked(),
                     "last_request", last);
}

/* ------------------------------------------------------------------------ */
/* control API                                                              */
/* ------------------------------------------------------------------------ */

static bool parse_mode(const char *s, enum mode *out)
{
    for (int i = 0; i < MODE_COUNT; i++) {
        if (strcmp(s, mode_names[i]) == 0) {
            *out = (enum mode)i;
            return true;
        }
    }
    return false;
}

static bool cfg_int(json_t *v, long lo, long hi, long *out)
{
    if (!json_is_integer(v)) {
        return false;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        return false;
    }
    *out = (long)x;
    return true;
}

static enum MHD_Result handle_config_post(struct req *r)
{
    json_error_t jerr;
    json_t *j = json_loadb(r->body ? r->body : "", r->body_len, 0, &jerr);
    if (!json_is_object(j)) {
        json_decref(j);
        return send_error(r->conn, 400, "config body must be a JSON object",
                          "invalid_request_error");
    }
    char msg[300] = "";
    pthread_mutex_lock(&g_mu);
    struct config c = g_cfg;
    bool mode_set = false, fail_set = false;
    const char *key;
    json_t *v;
    json_object_foreach(j, key, v) {
        bool ok = true;
        if (strcmp(key, "mode") == 0) {
            ok = json_is_string(v) && parse_mode(json_string_value(v), &c.mode);
            mode_set = true;
        } else if (strcmp(key, "fail_next") == 0) {
            ok = cfg_int(v, -1, LONG_MAX, &c.fail_next);
            fail_set = true;
        } else if (strcmp(key, "token_latency_ms") == 0) {
            ok = cfg_int(v, 0, MAX_MS_SETTING, &c.token_latency_ms);
        } else if (strcmp(key, "first_token_ms") == 0) {
            ok = cfg_int(v, 0, MAX_MS_SETTING, &c.first_token_ms);
        } else if (strcmp(key, "tokens") == 0) {
            ok = cfg_int(v, 0, MAX_TOKENS_SETTING, &c.tokens);
        } else if (strcmp(key, "slots") == 0) {
            ok = cfg_int(v, 1, 10000000, &c.slots);
        } else if (strcmp(key, "queue") == 0) {
            ok = json_is_boolean(v);
            c.queue = json_is_true(v);
        } else if (strcmp(key, "usage_in_finish_chunk") == 0) {
            ok = json_is_boolean(v);
            c.usage_in_finish_chunk = json_is_true(v);
        } else if (strcmp(key, "stamp_events") == 0) {
            ok = json_is_boolean(v);
            c.stamp_events = json_is_true(v);
        } else if (strcmp(key, "no_done") == 0) {
            ok = json_is_boolean(v);
            c.no_done = json_is_true(v);
        } else if (strcmp(key, "nul_text") == 0) {
            ok = json_is_boolean(v);
            c.nul_text = json_is_true(v);
        } else if (strcmp(key, "reasoning_tokens") == 0) {
            ok = cfg_int(v, 0, MAX_TOKENS_SETTING, &c.reasoning_tokens);
        } else if (strcmp(key, "token_pad") == 0) {
            ok = cfg_int(v, 0, MAX_TOKEN_PAD, &c.token_pad);
        } else if (strcmp(key, "empty_data_events") == 0) {
            ok = json_is_boolean(v);
            c.empty_data_events = json_is_true(v);
        } else if (strcmp(key, "model") == 0) {
            ok = json_is_string(v) && json_string_length(v) > 0 &&
                 json_string_length(v) < sizeof c.model;
            if (ok) {
                snprintf(c.model, sizeof c.model, "%s", json_string_value(v));
            }
        } else {
            snprintf(msg, sizeof msg, "unknown config key '%.200s'", key);
            break;
        }
        if (!ok) {
            snprintf(msg, sizeof msg, "invalid value for '%.200s'", key);
            break;
        }
    }
    if (!msg[0]) {
        if (mode_set && !fail_set) {
            c.fail_next = -1;
        }
        if (c.fail_next == 0 || c.mode == MODE_OK) {
            c.mode = MODE_OK;
            c.fail_next = -1;
        }
        g_cfg = c;
        slots_promote_locked();
    }
    json_t *out = msg[0] ? NULL : config_json_locked();
    pthread_mutex_unlock(&g_mu);
    json_decref(j);
    if (msg[0]) {
        return send_error(r->conn, 400, msg, "invalid_request_error");
    }
    return send_json_obj(r->conn, 200, out);
}

static enum MHD_Result handle_control(struct req *r)
{
    json_t *out = NULL;
    pthread_mutex_lock(&g_mu);
    switch (r->route) {
    case R_CFG_GET:
        out = config_json_locked();
        break;
    case R_STATS:
        out = stats_json_locked();
        break;
    case R_RESET: {
        struct stats s = {0};
        s.in_flight = g_st.in_flight;
        s.max_in_flight = g_st.in_flight;
        s.queued = g_st.queued;
        s.active = g_st.active;
        g_st = s;
        free(g_last_body);
        g_last_body = NULL;
        g_last_len = 0;
        g_cfg = g_cli_cfg;
        slots_promote_locked();
        out = config_json_locked();
        break;
    }
    default:
        break;
    }
    pthread_mutex_unlock(&g_mu);
    return send_json_obj(r->conn, 200, out);
}

/* ------------------------------------------------------------------------ */
/* streaming                                                                */
/* ------------------------------------------------------------------------ */

static void gen_of(const struct req *r, struct mu_gen *g)
{
    g->id = r->id;
    g->created = r->created;
    g->model = r->model;
    g->snippet = r->snippet;
    g->finish_reason = r->finish_reason;
    g->n_tokens = r->n_tokens;
    g->prompt_tokens = r->prompt_tokens;
    g->reasoning = r->reasoning;
    g->nul = r->nul;
    g->pad = r->pad;
}

static void timings_of(const struct req *r, struct mu_timings *t)
{
    double total_ms = (double)(mono_ns() - r->t0_ns) / 1e6;
    t->prompt_ms = (double)r->first_ms;
    t->predicted_ms = total_ms - (double)r->first_ms;
}

static bool out_set(struct req *r, const char *prefix, char *payload, const char *suffix)
{
    if (!payload) {
        return false;
    }
    size_t need = strlen(prefix) + strlen(payload) + strlen(suffix) + 1;
    if (need > r->out_cap) {
        r->out_cap = need < 1024 ? 1024 : need;
        r->out = xrealloc(r->out, r->out_cap);
    }
    int n = snprintf(r->out, r->out_cap, "%s%s%s", prefix, payload, suffix);
    free(payload);
    r->out_len = n > 0 ? (size_t)n : 0;
    r->out_off = 0;
    return true;
}

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    if (!d) {
        fputs("mock-upstream: out of memory\n", stderr);
        abort();
    }
    return d;
}

static void stream_setup(struct req *r)
{
    long two = r->n_tokens < 2 ? r->n_tokens : 2;
    r->ev = 0;
    r->step_i = 0;
    r->nsteps = 0;
    switch (r->kind) {
    case MODE_DISCONNECT:
        r->tok_limit = two;
        r->steps[r->nsteps++] = ST_ABORT;
        break;
    case MODE_ERROR_MIDSTREAM:
        r->tok_limit = two;
        r->steps[r->nsteps++] = ST_ERRLINE;
        r->steps[r->nsteps++] = ST_DONE;
        r->steps[r->nsteps++] = ST_END;
        break;
    case MODE_ERROR_MIDSTREAM_DATA:
        r->tok_limit = two;
        r->steps[r->nsteps++] = ST_ERRDATA;
        r->steps[r->nsteps++] = ST_END;
        break;
    case MODE_EXCEED_CONTEXT: /* llama-server 2024-09..2025-10: a 200, then the refusal as an event */
        r->tok_limit = -1;
        r->steps[r->nsteps++] = ST_ERRCTX;
        r->steps[r->nsteps++] = ST_DONE;
        r->steps[r->nsteps++] = ST_END;
        break;
    case MODE_GARBAGE:
        r->tok_limit = -1;
        r->steps[r->nsteps++] = ST_GARBAGE;
        r->steps[r->nsteps++] = ST_DONE;
        r->steps[r->nsteps++] = ST_END;
        break;
    default:
        r->tok_limit = r->n_tokens;
        r->steps[r->nsteps++] = ST_FINISH;
        if (r->include_usage && !r->usage_in_finish) {
            r->steps[r->nsteps++] = ST_USAGE;
        }
        if (!r->no_done) {
            r->steps[r->nsteps++] = ST_DONE;
        }
        r->steps[r->nsteps++] = ST_END;
        break;
    }
}

/* chunk with "x_mock_sent_us" (CLOCK_MONOTONIC, microseconds) as its first
 * member: the bench's client, on the same machine, takes the event's
 * one-way latency from it. Takes chunk; NULL on OOM. */
static char *stamp_chunk(char *chunk, int64_t now_ns)
{
    char *out = NULL;
    if (chunk != NULL && chunk[0] == '{' &&
        asprintf(&out, "{\"x_mock_sent_us\":%lld,%s", (long long)(now_ns / 1000), chunk + 1) < 0) {
        out = NULL;
    }
    free(chunk);
    return out;
}

/* Produce the next SSE event into r->out.
 * 1: produced; 0: not due yet (*due set); -1: end of stream; -2: abort. */
static int stream_produce(struct req *r, int64_t now, int64_t *due)
{
    struct mu_gen g;
    gen_of(r, &g);
    if (r->tok_limit >= 0 && r->ev <= r->tok_limit) {
        int64_t when = r->t0_ns + ms_to_ns(r->first_ms) + ms_to_ns(r->lat_ms) * r->ev;
        if (when > now) {
            *due = when;
            return 0;
        }
        char *chunk = r->ev == 0 ? mu_render_chunk_role(&g) : mu_render_chunk_token(&g, r->ev);
        r->ev++;
        if (r->stamp) {
            chunk = stamp_chunk(chunk, now);
        }
        /* WHATWG SSE: both dispatch an event whose data is the empty string */
        const char *prefix = r->empty_data && r->ev == 2 ? "data:\n\ndata: \r\n\r\ndata: " : "data: ";
        return out_set(r, prefix, chunk, "\n\n") ? 1 : -2;
    }
    if (r->step_i >= r->nsteps) {
        return -1;
    }
    struct mu_timings t;
    timings_of(r, &t);
    enum step s = r->steps[r->step_i++];
    bool ok = true;
    switch (s) {
    case ST_FINISH: {
        bool usage_here = r->usage_in_finish;
        bool timings_here = !(r->include_usage && !r->usage_in_finish);
        ok = out_set(r, "data: ", mu_render_chunk_finish(&g, usage_here, timings_here ? &t : NULL),
                     "\n\n");
        break;
    }
    case ST_USAGE:
        ok = out_set(r, "data: ", mu_render_chunk_usage(&g, &t), "\n\n");
        break;
    case ST_DONE:
        ok = out_set(r, "", xstrdup("data: [DONE]"), "\n\n");
        break;
    case ST_ERRLINE: {
        /* pre-2025 llama-server: server_sent_event(sink, "error", error_data) */
        json_t *e = mu_error_obj(500, "mock-upstream: simulated error during generation",
                                 "server_error");
        ok = out_set(r, "error: ", e ? json_dumps(e, MU_DUMP_FLAGS) : NULL, "\n\n");
        json_decref(e);
        break;
    }
    case ST_ERRDATA:
        /* current llama-server: format_oai_sse({"error": error_data}), no [DONE] */
        ok = out_set(r, "data: ",
                     mu_render_error(500, "mock-upstream: simulated error during generation",
                                     "server_error", false),
                     "\n\n");
        break;
    case ST_GARBAGE:
        ok = out_set(r, "", xstrdup("data: {not json"), "\n\n");
        break;
    case ST_ERRCTX:
        ok = out_set(r, "data: ",
                     mu_render_error(400, "the request exceeds the available context size, try increasing it",
                                     "exceed_context_size_error", false),
                     "\n\n");
        break;
    case ST_END:
        return -1;
    case ST_ABORT:
        return -2;
    }
    return ok ? 1 : -2;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct req *r = cls;
    (void)pos;
    for (;;) {
        if (r->out_off < r->out_len) {
            size_t n = r->out_len - r->out_off;
            if (n > max) {
                n = max;
            }
            memcpy(buf, r->out + r->out_off, n);
            r->out_off += n;
            return (ssize_t)n;
        }
        if (atomic_load(&g_shutdown)) {
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        int64_t due = 0;
        int rc = stream_produce(r, mono_ns(), &due);
        if (rc == 1) {
            continue;
        }
        if (rc == 0) {
            pthread_mutex_lock(&g_mu);
            bool parked = park_locked(r, due);
            pthread_mutex_unlock(&g_mu);
            return parked ? 0 : MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (rc == -1) {
            r->stream_finished = true;
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        r->deliberate_abort = true;
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static enum MHD_Result start_stream(struct req *r)
{
    stream_setup(r);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r, NULL);
    if (!resp) {
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_SERVER, "llama.cpp");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    r->phase = PH_STREAMING;
    enum MHD_Result ret = MHD_queue_response(r->conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* ------------------------------------------------------------------------ */
/* chat completions                                                         */
/* ------------------------------------------------------------------------ */

/* The request's generation time is over (or it never had to wait). */
static enum MHD_Result finish_generation(struct req *r)
{
    if (r->stream) {
        return start_stream(r);
    }
    switch (r->kind) {
    case MODE_DISCONNECT:
        r->deliberate_abort = true;
        return MHD_NO; /* MHD closes the connection without a response */
    case MODE_ERROR_MIDSTREAM:
    case MODE_ERROR_MIDSTREAM_DATA:
        return send_error(r->conn, 500, "mock-upstream: simulated error during generation",
                          "server_error");
    case MODE_EXCEED_CONTEXT:
        return send_error(r->conn, 400, "the request exceeds the available context size, try increasing it",
                          "exceed_context_size_error");
    default: {
        struct mu_gen g;
        struct mu_timings t;
        gen_of(r, &g);
        timings_of(r, &t);
        r->ok_result = true;
        return send_json(r->conn, 200, mu_render_completion(&g, &t));
    }
    }
}

static enum MHD_Result handle_chat(struct req *r)
{
    struct mu_chat_req pr;
    mu_parse_chat(r->body ? r->body : "", r->body_len, &pr);

    struct config c;
    enum mode eff = MODE_OK;
    char *old_body;
    pthread_mutex_lock(&g_mu);
    old_body = g_last_body;
    g_last_body = r->body;
    g_last_len = r->body_len;
    r->body = NULL;
    r->body_len = r->body_cap = 0;
    if (pr.parsed && pr.stream) {
        g_st.streams++;
    }
    if (mono_ns() < g_loading_until_ns) {
        eff = MODE_LOADING;
    } else if (g_cfg.mode != MODE_OK) {
        eff = g_cfg.mode;
        if (g_cfg.fail_next > 0 && --g_cfg.fail_next == 0) {
            g_cfg.mode = MODE_OK;
            g_cfg.fail_next = -1;
        }
    }
    c = g_cfg;
    pthread_mutex_unlock(&g_mu);
    free(old_body);

    switch (eff) {
    case MODE_LOADING:
        return send_loading(r->conn);
    case MODE_ERROR500:
        return send_error(r->conn, 500, "mock-upstream: simulated server error", "server_error");
    case MODE_HANG: {
        r->phase = PH_HANG;
        pthread_mutex_lock(&g_mu);
        bool parked = park_locked(r, mono_ns() + ms_to_ns(HANG_CAP_MS));
        pthread_mutex_unlock(&g_mu);
        return parked ? MHD_YES : MHD_NO;
    }
    case MODE_GARBAGE:
        if (pr.stream) {
            r->kind = MODE_GARBAGE;
            r->stream = true;
            return start_stream(r);
        }
        return send_json(r->conn, 200, xstrdup("<html>this is { not json"));
    default:
        break;
    }
    if (!pr.valid) {
        return send_error(r->conn, 500, pr.err, "server_error");
    }

    r->kind = eff;
    r->stream = pr.stream;
    r->include_usage = pr.include_usage;
    r->usage_in_finish = c.usage_in_finish_chunk;
    r->stamp = c.stamp_events;
    r->no_done = c.no_done;
    r->nul = c.nul_text;
    r->reasoning = c.reasoning_tokens;
    r->pad = c.token_pad;
    r->empty_data = c.empty_data_events;
    r->n_tokens = c.tokens;
    r->finish_reason = "stop";
    if (pr.max_tokens > 0 && pr.max_tokens < c.tokens) {
        r->n_tokens = pr.max_tokens;
        r->finish_reason = "length";
    }
    r->prompt_tokens = pr.prompt_tokens;
    r->first_ms = c.first_token_ms;
    r->lat_ms = c.token_latency_ms;
    snprintf(r->model, sizeof r->model, "%s", pr.model[0] ? pr.model : c.model);
    snprintf(r->snippet, sizeof r->snippet, "%s", pr.snippet);
    make_id(r->id, sizeof r->id);
    r->created = (long long)time(NULL);

    pthread_mutex_lock(&g_mu);
    if (g_st.active < g_cfg.slots) {
        r->has_slot = true;
        g_st.active++;
        r->t0_ns = mono_ns();
        r->phase = PH_WAIT;
        int64_t deadline = gen_deadline(r);
        if (deadline <= r->t0_ns) {
            pthread_mutex_unlock(&g_mu);
            return finish_generation(r);
        }
        bool parked = park_locked(r, deadline);
        pthread_mutex_unlock(&g_mu);
        return parked ? MHD_YES : MHD_NO;
    }
    if (!g_cfg.queue) {
        g_st.rejected++;
        pthread_mutex_unlock(&g_mu);
        return send_error(r->conn, 503, "no slot available", "unavailable_error");
    }
    r->phase = PH_QUEUED;
    if (!park_locked(r, -1)) {
        pthread_mutex_unlock(&g_mu);
        return MHD_NO;
    }
    r->in_queue = true;
    r->qprev = g_qtail;
    r->qnext = NULL;
    if (g_qtail) {
        g_qtail->qnext = r;
    } else {
        g_qhead = r;
    }
    g_qtail = r;
    g_st.queued++;
    pthread_mutex_unlock(&g_mu);
    return MHD_YES;
}

/* ------------------------------------------------------------------------ */
/* MHD callbacks                                                            */
/* ------------------------------------------------------------------------ */

static enum route classify(const char *method, const char *url)
{
    bool get = strcmp(method, MHD_HTTP_METHOD_GET) == 0;
    bool post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
    if (post && (strcmp(url, "/v1/chat/completions") == 0 || strcmp(url, "/chat/completions") == 0)) {
        return R_CHAT;
    }
    if (get && (strcmp(url, "/health") == 0 || strcmp(url, "/v1/health") == 0)) {
        return R_HEALTH;
    }
    if (get && (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0)) {
        return R_MODELS;
    }
    if (strcmp(url, "/__mock/config") == 0 && (get || post)) {
        return get ? R_CFG_GET : R_CFG_POST;
    }
    if (get && strcmp(url, "/__mock/stats") == 0) {
        return R_STATS;
    }
    if (post && strcmp(url, "/__mock/reset") == 0) {
        return R_RESET;
    }
    return R_NOT_FOUND;
}

static void body_append(struct req *r, const char *data, size_t n)
{
    if (r->body_too_large || r->body_len + n > g_max_body) {
        r->body_too_large = true;
        return;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1) {
            cap *= 2;
        }
        r->body = xrealloc(r->body, cap);
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = '\0';
}

static enum MHD_Result handle_new(struct req *r)
{
    if (r->body_too_large) {
        return send_error(r->conn, 413, "request body too large", "invalid_request_error");
    }
    switch (r->route) {
    case R_CFG_POST:
        return handle_config_post(r);
    case R_CFG_GET:
    case R_STATS:
    case R_RESET:
        return handle_control(r);
    default:
        break;
    }
    pthread_mutex_lock(&g_mu);
    bool loading = is_loading_locked();
    if (r->route == R_HEALTH) {
        g_st.health_requests++;
    } else if (r->route == R_MODELS) {
        g_st.models_requests++;
    }
    char model[sizeof g_cfg.model];
    snprintf(model, sizeof model, "%s", g_cfg.model);
    pthread_mutex_unlock(&g_mu);

    if (r->route == R_CHAT) {
        return handle_chat(r); /* does its own loading / mode handling */
    }
    if (loading) {
        return send_loading(r->conn);
    }
    switch (r->route) {
    case R_HEALTH:
        return send_json(r->conn, 200, xstrdup("{\"status\":\"ok\"}"));
    case R_MODELS:
        return send_json(r->conn, 200, mu_render_models(model));
    default:
        return send_not_found(r->conn);
    }
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload_data, size_t *upload_data_size,
                                 void **con_cls)
{
    (void)cls;
    (void)version;
    struct req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) {
            return MHD_NO;
        }
        r->conn = conn;
        r->heap_idx = -1;
        r->route = classify(method, url);
        pthread_mutex_lock(&g_mu);
        r->next = g_all;
        if (g_all) {
            g_all->prev = r;
        }
        g_all = r;
        if (r->route == R_CHAT) {
            r->counted = true;
            g_st.chat_requests++;
            g_st.in_flight++;
            if (g_st.in_flight > g_st.max_in_flight) {
                g_st.max_in_flight = g_st.in_flight;
            }
        }
        pthread_mutex_unlock(&g_mu);
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        body_append(r, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (atomic_load(&g_shutdown)) {
        return MHD_NO;
    }
    switch (r->phase) {
    case PH_NEW:
        return handle_new(r);
    case PH_WAIT:
        return finish_generation(r);
    case PH_QUEUED: {
        /* not expected: only shutdown resumes a queued request */
        pthread_mutex_lock(&g_mu);
        bool parked = park_locked(r, -1);
        pthread_mutex_unlock(&g_mu);
        return parked ? MHD_YES : MHD_NO;
    }
    case PH_HANG:     /* hang cap reached: drop the connection */
    case PH_STREAMING: /* not expected */
    default:
        return MHD_NO;
    }
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    struct req *r = *con_cls;
    if (!r) {
        return;
    }
    *con_cls = NULL;
    pthread_mutex_lock(&g_mu);
    if (r->prev) {
        r->prev->next = r->next;
    } else {
        g_all = r->next;
    }
    if (r->next) {
        r->next->prev = r->prev;
    }
    queue_unlink_locked(r);
    heap_remove(r);
    if (r->counted) {
        g_st.in_flight--;
    }
    if (r->has_slot) {
        g_st.active--;
        slots_promote_locked();
    }
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        if (r->stream ? (r->kind == MODE_OK && r->stream_finished) : r->ok_result) {
            g_st.chat_ok++;
        }
    } else if (r->phase == PH_STREAMING && !r->stream_finished && !r->deliberate_abort &&
               toe != MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN && !atomic_load(&g_shutdown)) {
        g_st.client_disconnects++;
    }
    pthread_mutex_unlock(&g_mu);
    free(r->body);
    free(r->out);
    free(r);
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fputs(
        "usage: mock-upstream [options]\n"
        "A fake llama.cpp llama-server (OpenAI-compatible chat API) for tests.\n"
        "\n"
        "  --port N              listen port (0 = ephemeral, default 0)\n"
        "  --bind ADDR           listen address (default 127.0.0.1; IPv6 allowed)\n"
        "  --port-file PATH      write the bound port + newline to PATH (atomic)\n"
        "  --model NAME          model name (default mock-model)\n"
        "  --tokens N            completion tokens per answer (default 16)\n"
        "  --first-token-ms MS   delay before the first token (default 0)\n"
        "  --token-latency-ms MS delay per token (default 0)\n"
        "  --slots N             concurrent generations (default 4)\n"
        "  --reject-when-busy    answer 503 when no slot is free (default: queue FIFO)\n"
        "  --mode M              ok|error500|loading|hang|garbage|disconnect|\n"
        "                        error_midstream|error_midstream_data|exceed_context (default ok)\n"
        "  --loading-ms MS       answer 503 Loading model for MS ms after start\n"
        "  --usage-in-finish-chunk  old llama-server stream usage placement\n"
        "  --max-body BYTES      request body cap (default 1048576)\n"
        "  --threads N           MHD worker threads (default 2)\n"
        "  --connection-limit N  max connections (default 20000, capped by RLIMIT_NOFILE)\n"
        "  --help                this text\n"
        "\n"
        "Control API: POST /__mock/config {mode,fail_next,token_latency_ms,first_token_ms,\n"
        "tokens,slots,queue,usage_in_finish_chunk,stamp_events,no_done,nul_text,reasoning_tokens,token_pad,empty_data_events,model}; GET /__mock/config;\n"
        "GET /__mock/stats; POST /__mock/reset.\n",
        f);
}

static bool parse_long(const char *s, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return false;
    }
    *out = v;
    return true;
}

static bool write_port_file(const char *path, unsigned port)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        return false;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "mock-upstream: cannot write %s: %m\n", tmp);
        return false;
    }
    bool ok = fprintf(f, "%u\n", port) > 0;
    ok = (fclose(f) == 0) && ok;
    if (!ok || rename(tmp, path) != 0) {
        fprintf(stderr, "mock-upstream: cannot create %s: %m\n", path);
        unlink(tmp);
        return false;
    }
    return true;
}

static rlim_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        return 1024;
    }
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
            getrlimit(RLIMIT_NOFILE, &rl);
        }
    }
    return rl.rlim_cur;
}

__attribute__((format(printf, 2, 0)))
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    if (atomic_load(&g_shutdown)) {
        return; /* resumed connections being dropped on purpose */
    }
    fputs("mock-upstream: mhd: ", stderr);
    vfprintf(stderr, fmt, ap);
}

int main(int argc, char **argv)
{
    enum {
        O_PORT = 1000, O_BIND, O_MODEL, O_TOKENS, O_FIRST, O_LAT, O_SLOTS, O_REJECT, O_MODE,
        O_LOADING, O_PORTFILE, O_USAGE_FIN, O_MAXBODY, O_THREADS, O_CONNLIMIT, O_HELP
    };
    static const struct option opts[] = {
        {"port", required_argument, NULL, O_PORT},
        {"bind", required_argument, NULL, O_BIND},
        {"model", required_argument, NULL, O_MODEL},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"first-token-ms", required_argument, NULL, O_FIRST},
        {"token-latency-ms", required_argument, NULL, O_LAT},
        {"slots", required_argument, NULL, O_SLOTS},
        {"reject-when-busy", no_argument, NULL, O_REJECT},
        {"mode", required_argument, NULL, O_MODE},
        {"loading-ms", required_argument, NULL, O_LOADING},
        {"port-file", required_argument, NULL, O_PORTFILE},
        {"usage-in-finish-chunk", no_argument, NULL, O_USAGE_FIN},
        {"max-body", required_argument, NULL, O_MAXBODY},
        {"threads", required_argument, NULL, O_THREADS},
        {"connection-limit", required_argument, NULL, O_CONNLIMIT},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct config c = {
        .mode = MODE_OK, .fail_next = -1, .token_latency_ms = 0, .first_token_ms = 0,
        .tokens = 16, .slots = 4, .queue = true, .usage_in_finish_chunk = false,
        .model = "mock-model",
    };
    long port = 0, loading_ms = 0, threads = 2, conn_limit = 20000, max_body = 1024 * 1024;
    const char *bind_addr = "127.0.0.1", *port_file = NULL;
    int opt;
    while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        bool ok = true;
        switch (opt) {
        case O_PORT: ok = parse_long(optarg, 0, 65535, &port); break;
        case O_BIND: bind_addr = optarg; break;
        case O_MODEL:
            ok = optarg[0] && strlen(optarg) < sizeof c.model;
            if (ok) {
                snprintf(c.model, sizeof c.model, "%s", optarg);
            }
            break;
        case O_TOKENS: ok = parse_long(optarg, 0, MAX_TOKENS_SETTING, &c.tokens); break;
        case O_FIRST: ok = parse_long(optarg, 0, MAX_MS_SETTING, &c.first_token_ms); break;
        case O_LAT: ok = parse_long(optarg, 0, MAX_MS_SETTING, &c.token_latency_ms); break;
        case O_SLOTS: ok = parse_long(optarg, 1, 10000000, &c.slots); break;
        case O_REJECT: c.queue = false; break;
        case O_MODE: ok = parse_mode(optarg, &c.mode); break;
        case O_LOADING: ok = parse_long(optarg, 0, LONG_MAX / 1000000L, &loading_ms); break;
        case O_PORTFILE: port_file = optarg; break;
        case O_USAGE_FIN: c.usage_in_finish_chunk = true; break;
        case O_MAXBODY: ok = parse_long(optarg, 1, 1L << 30, &max_body); break;
        case O_THREADS: ok = parse_long(optarg, 1, 64, &threads); break;
        case O_CONNLIMIT: ok = parse_long(optarg, 1, 1000000, &conn_limit); break;
        case O_HELP:
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
        if (!ok) {
            fprintf(stderr, "mock-upstream: invalid value '%s' for --%s\n", optarg,
                    opts[opt - O_PORT].name);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mock-upstream: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } sa;
    memset(&sa, 0, sizeof sa);
    unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                         MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    bool v6 = false;
    if (inet_pton(AF_INET, bind_addr, &sa.in4.sin_addr) == 1) {
        sa.in4.sin_family = AF_INET;
        sa.in4.sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, bind_addr, &sa.in6.sin6_addr) == 1) {
        sa.in6.sin6_family = AF_INET6;
        sa.in6.sin6_port = htons((uint16_t)port);
        flags |= MHD_USE_IPv6;
        v6 = true;
    } else {
        fprintf(stderr, "mock-upstream: --bind needs a numeric IPv4/IPv6 address: %s\n",
                bind_addr);
        return 2;
    }

    rlim_t nofile = raise_nofile();
    if (nofile > 128 && (rlim_t)conn_limit > nofile - 64) {
        conn_limit = (long)(nofile - 64);
    }

    g_cfg = g_cli_cfg = c;
    g_max_body = (size_t)max_body;
    g_id_seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)mono_ns();
    g_loading_until_ns = loading_ms > 0 ? mono_ns() + ms_to_ns(loading_ms) : 0;

    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g_cond, &ca);
    pthread_condattr_destroy(&ca);

    /* Signals are taken synchronously by main(); every other thread
     * (timer, MHD workers) inherits the blocked mask. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    pthread_t timer;
    if (pthread_create(&timer, NULL, timer_main, NULL) != 0) {
        fputs("mock-upstream: cannot start timer thread\n", stderr);
        return 1;
    }

    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)port, NULL, NULL, on_access, NULL,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, &sa.sa,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned int)threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)conn_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)0,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(16 * 1024),
        MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned int)4096,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_END);
    int rc = 0;
    if (!d) {
        fprintf(stderr, "mock-upstream: cannot listen on %s:%ld\n", bind_addr, port);
        rc = 1;
    } else {
        const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
        unsigned bound = info ? info->port : (unsigned)port;
        fprintf(stderr, v6 ? "mock-upstream listening on [%s]:%u\n"
                           : "mock-upstream listening on %s:%u\n",
                bind_addr, bound);
        if (port_file && !write_port_file(port_file, bound)) {
            rc = 1;
        }
        while (rc == 0) {
            int sig = 0;
            if (sigwait(&sigs, &sig) == 0) {
                break;
            }
        }
    }

    /* Shutdown: refuse new parking, resume every parked connection (MHD must
     * not be stopped with suspended connections), stop the timer, stop MHD. */
    pthread_mutex_lock(&g_mu);
    atomic_store(&g_shutdown, true);
    for (struct req *r = g_all; r; r = r->next) {
        r->heap_idx = -1;
        if (r->in_queue) {
            r->in_queue = false;
            r->qprev = r->qnext = NULL;
        }
        if (r->suspended) {
            r->suspended = false;
            MHD_resume_connection(r->conn);
        }
    }
    g_heap_len = 0;
    g_qhead = g_qtail = NULL;
    g_st.queued = 0;
    g_timer_stop = true;
    pthread_cond_broadcast(&g_cond);
    pthread_mutex_unlock(&g_mu);
    pthread_join(timer, NULL);
    if (d) {
        MHD_stop_daemon(d);
    }
    free(g_heap);
    free(g_last_body);
    pthread_cond_destroy(&g_cond);
    return rc;
}
