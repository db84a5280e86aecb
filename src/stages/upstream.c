/* upstream.c - the upstream stage: build the chat request, suspend, and turn
 * the engine's outcome into the answer or an error once resumed. A streaming
 * request becomes a live text/event-stream response at the first token. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/config.h"
#include "aigw/jsonw.h"
#include "aigw/query.h"
#include "aigw/snapshot.h"
#include "aigw/sse.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/upstream.h"
#include "aigw/util.h"

/* Engine thread: the result is ready; wake the request. */
static void
on_done(struct aigw_upstream_call *call, void *ud)
{
    struct aigw_req *req = ud;

    (void)call;
    atomic_store(&req->q->call_done, 1);
    aigw_req_resume(req);
}

static void
free_call(void *call)
{
    aigw_upstream_call_free(call);
}

static char *build_query_body(struct aigw_req *req, const struct aigw_tenant *t);

/* The tenant and the query type go into the system prompt, never the model. */
static char *
build_body(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;

    if (req->q->chat_body != NULL) /* the OpenAI route forwards the client's request */
        return aigw_xstrdup(req->q->chat_body);
    return build_query_body(req, t);
}

static char *
build_query_body(struct aigw_req *req, const struct aigw_tenant *t)
{
    struct aigw_query *q = req->q;
    char *system = aigw_pool_printf(req->pool,
                                    "You are the AI assistant of %s (tenant %s), an optical clinic. "
                                    "Query type: %s. Answer concisely for clinic staff; never reveal "
                                    "personal data of patients.",
                                    t->name, t->code, aigw_query_type_names[q->qtype]);
    json_t *body = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:i, s:b}", "model", req->srv->cfg.model,
                             "messages", "role", "system", "content", system, "role", "user", "content",
                             q->question, "max_tokens", t->max_tokens, "stream", q->stream);
    char *text;

    if (body != NULL && q->stream) /* ask for the token counts at the end of the stream */
        json_object_set_new(body, "stream_options", json_pack("{s:b}", "include_usage", 1));
    text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    return text;
}

/* ---- streaming ---- */

/* Engine thread: each upstream token becomes data: {"delta": "..."}; the
 * closing event is written by the finalizer, which knows the bookkeeping. */
static bool
on_query_event(struct aigw_upstream_call *call, const struct aigw_upstream_event *ev, void *ud)
{
    struct aigw_jsonw w;
    bool full;

    (void)call;
    if (ev->delta == NULL)
        return false;
    aigw_jsonw_init(&w, ev->delta_len + 32);
    aigw_jsonw_append(&w, "data: ", 6);
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "delta", ev->delta);
    aigw_jsonw_obj_close(&w);
    aigw_jsonw_append(&w, "\n\n", 2);
    full = aigw_sse_write(ud, w.buf, w.len, true);
    aigw_jsonw_free(&w);
    return full;
}

static void
on_stream_done(struct aigw_upstream_call *call, void *ud)
{
    (void)call;
    aigw_sse_close(ud);
}

/* The model a result is booked under. The OpenAI route keeps the id the
 * client asked for (set at validation: one of openai.models, what usage rows
 * and billing group by); llama-server reports its own alias or file name
 * there. The query route reports what the model server said it ran. */
static void
answer_model(struct aigw_req *req, const struct aigw_upstream_result *res)
{
    struct aigw_query *q = req->q;

    if (q->chat_body != NULL)
        return;
    q->model = aigw_pool_strdup(req->pool, res != NULL && res->model ? res->model : req->srv->cfg.model);
}

static void
stream_unpause(struct aigw_req *req)
{
    aigw_upstream_unpause(req->srv->upstream, req->q->call);
}

void
aigw_stream_start(struct aigw_req *req, const char *body, size_t len, aigw_upstream_event_fn on_event,
                  void (*finalize)(struct aigw_req *, bool))
{
    struct aigw_query *q = req->q;
    struct aigw_upstream_opts o = {.qtype = q->qtype, .body = body, .len = len, .on_event = on_event,
                                   .done = on_stream_done};

    req->sse = aigw_sse_create(req->conn, (size_t)req->snap->cfg.stream_buffer_bytes);
    req->sse_finalize = finalize;
    req->sse_on_drain = stream_unpause;
    o.ud = req->sse;
    q->stream_submit_ms = aigw_now_ms();
    q->call = aigw_upstream_submit_opts(req->srv->upstream, &o);
    aigw_pool_cleanup(req->pool, free_call, q->call);
}

bool
aigw_stream_outcome(struct aigw_req *req, bool client_gone, long *chunks)
{
    struct aigw_query *q = req->q;
    const struct aigw_upstream_result *res = aigw_upstream_result(q->call);
    bool closed;

    aigw_sse_state(req->sse, NULL, &closed, chunks);
    if (!closed) { /* the client left first: stop the model at once */
        aigw_upstream_cancel(req->srv->upstream, q->call);
        res = NULL;
    }
    /* a cancelled call has no time of its own yet, but the model ran until
     * now: without one the access log, the usage row and the upstream
     * histogram left out a call that did reach a model */
    q->upstream_ms = res != NULL ? (long)res->upstream_ms : (long)(aigw_now_ms() - q->stream_submit_ms);
    answer_model(req, res);
    q->prompt_tokens = res != NULL ? res->prompt_tokens : 0;
    /* what the client got: the upstream's count when it finished, else
     * the output events handed over (content, reasoning, tool calls: never zero when any went out) */
    q->completion_tokens = !client_gone && res != NULL && res->completion_tokens > 0 ? res->completion_tokens : *chunks;
    q->billed = *chunks > 0;
    if (client_gone || res == NULL || res->status != 200) {
        if (client_gone && req->sse_cut) /* aigw stopped with the stream still open, not the client */
            aigw_req_fail(req, 503, "shutting_down", "aigw shut down before the stream was delivered");
        else if (client_gone)
            aigw_req_fail(req, 499, "client_closed", "the client closed the connection mid-stream");
        else
            aigw_req_fail(req, res != NULL ? res->status : 502,
                          res != NULL && res->error_code ? res->error_code : "upstream_error",
                          "the model server failed mid-stream");
        return false;
    }
    q->answer = res->content != NULL ? aigw_pool_strdup(req->pool, res->content) : NULL;
    q->billed = true;
    return true;
}

/* Connection thread, at the stream's end: settle the books like an ordinary
 * answer would (the finish hook caches it, the usage row bills it), then
 * the closing event: the fields of the JSON answer, or the error. */
static void
query_finalize(struct aigw_req *req, bool client_gone)
{
    long chunks;
    bool ok = aigw_stream_outcome(req, client_gone, &chunks);
    char *ev;

    /* past 4 MiB the engine streams on without assembling the text: an
     * answer it could not keep is no answer to cache, hand to waiters or
     * replay (kept as "", a retry with the same Idempotency-Key was
     * replayed an empty answer). It ends as the 502 a plain answer that
     * size gets, the text delivered billed. */
    if (ok && req->q->answer == NULL) {
        aigw_req_fail(req, 502, "upstream_error", "the answer is over 4 MiB");
        ok = false;
    }
    if (ok)
        aigw_api_query(req); /* the JSON answer: for the idempotency record and the closing event */
    aigw_req_settle(req);
    if (client_gone)
        return;
    ev = aigw_query_sse_closing(req);
    aigw_sse_append(req->sse, ev, strlen(ev));
}

/* Engine thread: the OpenAI route passes the upstream's events through
 * byte for byte; only the ending (or the usage chunk nobody asked for) is
 * aigw's to write. */
static bool
chat_event(const struct aigw_upstream_event *ev, void *ud, bool usage_wanted)
{
    size_t n;
    char *clean, *event;
    bool full;

    if (ev->done || ev->error || (ev->usage_only && !usage_wanted))
        return false;
    /* the chunk with the counts (one or two per stream) is written anew
     * without the prompt-cache details (aigw_chat_strip_cache_info) */
    if (!ev->meta || (clean = aigw_chat_strip_cache_info(ev->data, ev->data_len, NULL, &n)) == NULL)
        return aigw_sse_write(ud, ev->bytes, ev->len, ev->output);
    event = aigw_xmalloc(n + 9);
    memcpy(event, "data: ", 6);
    memcpy(event + 6, clean, n);
    memcpy(event + 6 + n, "\n\n", 3);
    full = aigw_sse_write(ud, event, n + 8, ev->output);
    free(event);
    free(clean);
    return full;
}

static bool
on_chat_event(struct aigw_upstream_call *call, const struct aigw_upstream_event *ev, void *ud)
{
    (void)call;
    return chat_event(ev, ud, false);
}

static bool
on_chat_event_usage(struct aigw_upstream_call *call, const struct aigw_upstream_event *ev, void *ud)
{
    (void)call;
    return chat_event(ev, ud, true);
}

/* The ending of an OpenAI stream: [DONE], after an error event if it failed. */
static void
chat_finalize(struct aigw_req *req, bool client_gone)
{
    long chunks;
    bool ok = aigw_stream_outcome(req, client_gone, &chunks);
    static const char done[] = "data: [DONE]\n\n";

    aigw_req_settle(req);
    if (client_gone)
        return;
    if (!ok) { /* the error object aigw_stream_outcome set, as one event */
        aigw_sse_append(req->sse, "data: ", 6);
        aigw_sse_append(req->sse, req->resp_body, req->resp_len > 0 && req->resp_body[req->resp_len - 1] == '\n'
                                                      ? req->resp_len - 1
                                                      : req->resp_len);
        aigw_sse_append(req->sse, "\n\n", 2);
    }
    aigw_sse_append(req->sse, done, sizeof(done) - 1);
}

/* First entry: start the stream and wait for its first event. */
static enum aigw_rc
stream_stage(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    bool started;

    if (q->call == NULL) {
        char *body = build_body(req);

        if (body == NULL)
            return aigw_req_fail(req, 500, "internal", "could not encode the upstream request");
        if (q->chat_body != NULL)
            aigw_stream_start(req, body, strlen(body), q->chat_usage ? on_chat_event_usage : on_chat_event,
                              chat_finalize);
        else
            aigw_stream_start(req, body, strlen(body), on_query_event, query_finalize);
        free(body);
    }
    if (!aigw_sse_wait(req->sse))
        return AIGW_AGAIN;
    aigw_sse_state(req->sse, &started, NULL, NULL);
    if (started) {
        aigw_req_add_header(req, "X-Cache", "MISS");
        req->status = 200;
        req->sse_live = true;
        return AIGW_DONE;
    }
    atomic_store(&q->call_done, 1); /* closed before any byte: an ordinary outcome */
    return AIGW_OK;
}

/* ---- the stage ---- */

enum aigw_rc
aigw_stage_upstream(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    const struct aigw_upstream_result *res;
    char *body;

    if (q->stream) {
        enum aigw_rc rc = stream_stage(req);

        if (rc != AIGW_OK)
            return rc;
    } else if (q->call == NULL) {
        if ((body = build_body(req)) == NULL)
            return aigw_req_fail(req, 500, "internal", "could not encode the upstream request");
        struct aigw_upstream_opts o = {.qtype = q->qtype, .body = body, .len = strlen(body),
                                       .keep_raw = q->chat_body != NULL, .done = on_done, .ud = req};

        aigw_req_suspend(req);
        q->call = aigw_upstream_submit_opts(req->srv->upstream, &o);
        aigw_pool_cleanup(req->pool, free_call, q->call);
        free(body);
        return AIGW_AGAIN;
    }
    if (!atomic_load(&q->call_done))
        return aigw_req_fail(req, 500, "internal", "resumed before the upstream call finished");
    res = aigw_upstream_result(q->call);
    /* only a call that reached a model has an upstream time: a 503 with no
     * backend up (queue full, queue timeout, every connect refused) called
     * none, and its ~0 ms pulled the upstream histogram down in outages */
    q->upstream_ms = res->backend != NULL ? (long)res->upstream_ms : -1;
    if (res->status != 200) {
        if (res->retry_after_s > 0)
            aigw_req_add_header(req, "Retry-After", aigw_pool_printf(req->pool, "%d", res->retry_after_s));
        return aigw_req_fail(req, res->status, res->error_code ? res->error_code : "upstream_error", "%s",
                             res->status == 504   ? "the model server did not answer in time"
                             : res->status == 503 ? "no model server is available, retry shortly"
                             : res->status == 400 ? "the prompt is longer than the model's context; shorten it"
                                                  : "the model server failed to answer");
    }
    q->answer = aigw_pool_strdup(req->pool, res->content ? res->content : "");
    answer_model(req, res);
    q->prompt_tokens = res->prompt_tokens;
    q->completion_tokens = res->completion_tokens;
    q->finish_reason = res->finish_reason ? aigw_pool_strdup(req->pool, res->finish_reason) : NULL;
    /* the query route's answer is the content alone, cached or not */
    q->thinking = q->chat_body != NULL && res->thinking;
    q->raw = res->raw ? aigw_pool_strndup(req->pool, res->raw, res->raw_len) : NULL;
    q->billed = true;
    return AIGW_OK;
}
