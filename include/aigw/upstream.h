/* upstream.h - the asynchronous upstream engine: one thread drives every
 * transfer to the llama-server backends with a libcurl multi handle.
 *
 * No caller ever waits on a model: aigw_upstream_submit() queues the call and
 * returns at once; the engine calls done() exactly once, on the engine thread,
 * when the call finished, failed, timed out or was cancelled. Worker threads
 * suspend their MHD connection and resume it from done(). */
#ifndef AIGW_UPSTREAM_H
#define AIGW_UPSTREAM_H

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
    char *content;             /* choices[0].message.content (malloc'd, owned by the call) */
    char *model;               /* "model" of the answer (owned by the call) */
    char *finish_reason;       /* owned by the call; may be NULL */
    long prompt_tokens;        /* usage.prompt_tokens (0 if absent) */
    long completion_tokens;    /* usage.completion_tokens (0 if absent) */
    int64_t upstream_ms;       /* time from submit to done, queueing included */
    const char *backend;       /* name of the backend that answered, or NULL; readable for the engine's life
                                * (a later reload may give its slot to another backend) */
};

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

/* The outcome; only meaningful once done() ran. */
const struct aigw_upstream_result *aigw_upstream_result(const struct aigw_upstream_call *call);

/* Free a finished call. NULL-safe. */
void aigw_upstream_call_free(struct aigw_upstream_call *call);

/* Apply snap's backends, routes and upstream settings (everything in
 * upstream.* except model) from the engine's next round on: new calls use
 * the new table, calls in flight finish on the backend they started on, a
 * backend kept by name and URL keeps its slot counts and health state, and
 * the health prober follows the new table. Takes its own reference to snap.
 * If more backends are replaced than there are free slots, it waits for
 * calls on removed backends to end (at most upstream.timeout_ms). A newer
 * reconfigure replaces one not yet applied. Thread-safe, never blocks. */
void aigw_upstream_reconfigure(struct aigw_upstream *up, struct aigw_snapshot *snap);

/* Fail every queued and in-flight call now (503 upstream_unavailable
 * "shutting down", done() runs on the engine thread) and every later submit
 * at once, as after aigw_upstream_stop, but keep the engine object valid
 * until aigw_upstream_stop: the drain deadline. Thread-safe, asynchronous. */
void aigw_upstream_cancel(struct aigw_upstream *up);

/* How long (ms) since the engine loop last went round (it goes round at
 * least twice a second); 0 before its first round. For the watchdog. */
int64_t aigw_upstream_stalled_ms(const struct aigw_upstream *up);

/* Gauges for /readyz and metrics (thread-safe snapshots). */
size_t aigw_upstream_in_flight(const struct aigw_upstream *up);
size_t aigw_upstream_queued(const struct aigw_upstream *up);

#endif
