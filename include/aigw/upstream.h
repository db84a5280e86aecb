/* upstream.h - the asynchronous upstream engine: one thread drives every
 * transfer to the llama-server backends with a libcurl multi handle.
 *
 * No caller ever waits on a model: aigw_upstream_submit() queues the call and
 * returns at once; the engine calls done() exactly once, on the engine thread,
 * when the call finished, failed, timed out or was cancelled. Worker threads
 * suspend their MHD connection and resume it from done(). */
#ifndef AIGW_UPSTREAM_H
#define AIGW_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aigw/config.h"
#include "aigw/health.h"

struct aigw_upstream;
struct aigw_upstream_call;
struct aigw_snapshot;

/* Outcome of one call, valid from done() until aigw_upstream_call_free(). */
struct aigw_upstream_result {
    int status;                /* 200 on success; else the status for the client: 502, 503 or 504 */
    const char *error_code;    /* NULL on success; "upstream_error", "upstream_unavailable", "upstream_timeout" */
    const char *error_detail;  /* short static text for the log (never upstream bytes) */
    int retry_after_s;         /* > 0 with 503 */
    char *content;             /* choices[0].message.content, or a stream's assembled deltas
                                * (NULL when a stream's text passed the size bound); owned by the call */
    char *raw;                 /* the whole answer body (opts.keep_raw, non-stream); owned by the call */
    size_t raw_len;
    char *model;               /* "model" of the answer (owned by the call) */
    char *finish_reason;       /* owned by the call; may be NULL */
    bool thinking;             /* choices[0].message.reasoning_content is a non-empty string (non-stream) */
    long prompt_tokens;        /* usage.prompt_tokens (0 if absent) */
    long completion_tokens;    /* usage.completion_tokens (0 if absent) */
    int64_t upstream_ms;       /* time from submit to done, queueing included */
    const char *backend;       /* name of the backend that answered, or NULL; readable for the engine's life
                                * (a later reload may give its slot to another backend) */
    /* streams */
    bool started;              /* at least one event reached on_event: a failure now is mid-stream */
    long chunks;               /* events that carried generated output: content, reasoning or tool calls */
    bool saw_done;             /* the upstream ended with data: [DONE] */
};

/* One server-sent event of a streaming answer, reassembled from libcurl's
 * chunks (which do not follow event boundaries). */
struct aigw_upstream_event {
    const char *bytes;         /* the event exactly as received, blank-line terminator included */
    size_t len;
    const char *delta;         /* decoded choices[0].delta.content, or NULL */
    size_t delta_len;
    bool done;                 /* data: [DONE] */
    bool error;                /* an error event (llama-server's error: line, or data: {"error":...}) */
    bool usage_only;           /* a chunk with usage and no choices (stream_options.include_usage) */
    bool output;               /* carries generated output: content, reasoning_content or tool_calls */
    bool meta;                 /* carries "usage" or llama-server's "timings" */
    const char *data;          /* the event's data (its data: lines joined), valid during the callback */
    size_t data_len;
};

/* Stream consumer, on the engine thread, once per event in order. Must not
 * block. Return true when the consumer's buffer is full: the transfer is
 * paused until aigw_upstream_unpause(). */
typedef bool (*aigw_upstream_event_fn)(struct aigw_upstream_call *call, const struct aigw_upstream_event *ev,
                                       void *ud);

/* Called once per call on the engine thread. Must not block. */
typedef void (*aigw_upstream_done_fn)(struct aigw_upstream_call *call, void *ud);

/* Start the engine thread for cfg's backends and routes. health supplies the
 * active /health state (a backend it reports down gets no new calls); NULL
 * means passive health only (tests). A backend gets at most
 * min(slots, max_connections) calls at once. cfg and health must outlive the
 * engine. Never fails (aborts on OOM). */
struct aigw_upstream *aigw_upstream_start(const struct aigw_config *cfg, struct aigw_health *health);

/* Cancel everything still queued or in flight (each completes with 503
 * upstream_unavailable "shutting down" and its done() runs), stop and join
 * the thread, free the engine. NULL-safe. */
void aigw_upstream_stop(struct aigw_upstream *up);

/* Submit a POST /v1/chat/completions with body (len bytes of JSON, copied)
 * to the backend group of query type qtype (index into
 * aigw_query_type_names). Thread-safe, never blocks on I/O. Returns the call
 * handle; the engine owns it until done() has run, after which the caller
 * must release it with aigw_upstream_call_free (from any thread, also from
 * inside done()). Never returns NULL. Once aigw_upstream_stop() has begun,
 * the call fails at once (503 "shutting down") and done() runs on the
 * calling thread before submit returns. */
struct aigw_upstream_call *aigw_upstream_submit(struct aigw_upstream *up, int qtype, const char *body, size_t len,
                                                aigw_upstream_done_fn done, void *ud);

/* Everything a call can ask for. */
struct aigw_upstream_opts {
    int qtype;                 /* backend group: index into aigw_query_type_names */
    const char *body;          /* request JSON (copied) */
    size_t len;
    bool keep_raw;             /* non-stream: keep the answer body in result.raw */
    aigw_upstream_event_fn on_event; /* non-NULL: a streaming call (the body must ask for stream) */
    aigw_upstream_done_fn done;
    void *ud;
};

/* Like aigw_upstream_submit, with every option. A streaming call uses the
 * stream timeouts (idle, total) instead of timeout_ms; a stream that ends
 * without [DONE], or with an error event, completes with 502 and the
 * counts of what was delivered. */
struct aigw_upstream_call *aigw_upstream_submit_opts(struct aigw_upstream *up, const struct aigw_upstream_opts *o);

/* Resume a paused stream (its consumer drained). Thread-safe, never blocks;
 * ignored once the call is done. */
void aigw_upstream_unpause(struct aigw_upstream *up, struct aigw_upstream_call *call);

/* Abort the call (the client is gone): the transfer is dropped at once,
 * closing its connection, and done() runs with 499 "client_closed". Thread-safe;
 * ignored once the call is done. */
void aigw_upstream_cancel(struct aigw_upstream *up, struct aigw_upstream_call *call);

/* The outcome; only meaningful once done() ran. */
const struct aigw_upstream_result *aigw_upstream_result(const struct aigw_upstream_call *call);

/* Drop the caller's reference: the call is freed once the engine is done
 * with it too, so this is safe at any time, even before done() ran (use
 * aigw_upstream_cancel first if the outcome is no longer wanted). NULL-safe. */
void aigw_upstream_call_free(struct aigw_upstream_call *call);

/* Apply snap's backends, routes and upstream settings (everything in
 * upstream.* except model) from the engine's next round on: new calls use
 * the new table, calls in flight finish on the backend they started on, a
 * backend kept by name and URL keeps its slot counts and health state, and
 * the health prober follows the new table. Takes its own reference to snap.
 * If more backends are replaced than there are free slots, it waits for
 * calls on removed backends to end (at most upstream.timeout_ms for buffered
 * calls, upstream.stream_timeout_ms when a stream holds one). A newer
 * reconfigure replaces one not yet applied. Thread-safe, never blocks. */
void aigw_upstream_reconfigure(struct aigw_upstream *up, struct aigw_snapshot *snap);

/* Fail every queued and in-flight call now (503 upstream_unavailable
 * "shutting down", done() runs on the engine thread) and every later submit
 * at once, as after aigw_upstream_stop, but keep the engine object valid
 * until aigw_upstream_stop: the drain deadline. Returns once the engine has
 * done so, i.e. every done() of a call submitted before has run (it waits
 * at most 10 s for a wedged engine). Thread-safe; must not be called from
 * a done() or an event callback. */
void aigw_upstream_cancel_all(struct aigw_upstream *up);

/* How long (ms) since the engine loop last went round (it goes round at
 * least twice a second); 0 before its first round. For the watchdog. */
int64_t aigw_upstream_stalled_ms(const struct aigw_upstream *up);

/* Gauges for /readyz and metrics (thread-safe snapshots). */
size_t aigw_upstream_in_flight(const struct aigw_upstream *up);
size_t aigw_upstream_queued(const struct aigw_upstream *up);

#endif
