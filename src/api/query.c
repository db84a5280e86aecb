/* query.c - the answer of /api/ai/query and /api/ai/recommendation, and the
 * bookkeeping that must happen before it leaves */
#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aigw/api.h"
#include "aigw/config.h"
#include "aigw/jsonw.h"
#include "aigw/query.h"
#include "aigw/quota.h"
#include "aigw/reservations.h"
#include "aigw/singleflight.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"

/* queries_remaining for answers that did not reserve (cache hits, coalesced) */
static long
remaining_now(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    struct aigw_query *q = req->q;
    long used = q->quota_used;

    if (t->monthly_limit < 0)
        return -1;
    if (used < 0 && aigw_quota_used(req->srv, t, req->start_wall_us / 1000000, &used) != 0)
        return -1;
    return used >= t->monthly_limit ? 0 : t->monthly_limit - used;
}

/* "model" and the "usage" object of an answer, as the response and a
 * leader's published outcome both carry them. */
static void
model_and_usage(struct aigw_jsonw *w, const struct aigw_query *q)
{
    aigw_jsonw_kstr(w, "model", q->model ? q->model : "");
    aigw_jsonw_key(w, "usage");
    aigw_jsonw_obj_open(w);
    aigw_jsonw_kint(w, "prompt_tokens", q->prompt_tokens);
    aigw_jsonw_kint(w, "completion_tokens", q->completion_tokens);
    aigw_jsonw_obj_close(w);
}

/* Built with the streaming writer: this is the hot path of every answer. */
enum aigw_rc
aigw_api_query(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    bool rec = strcmp(q->route_label, "recommendation") == 0;
    long remaining = q->quota_reserved ? q->queries_remaining : remaining_now(req);
    struct aigw_jsonw w;
    enum aigw_rc rc;

    aigw_jsonw_init(&w, 512 + (q->answer ? strlen(q->answer) : 0));
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_key(&w, rec ? "recommendation" : "answer");
    if (q->answer_json != NULL)
        aigw_jsonw_raw(&w, q->answer_json, strlen(q->answer_json));
    else
        aigw_jsonw_str(&w, q->answer ? q->answer : "");
    aigw_jsonw_kstr(&w, "query_type", aigw_query_type_names[q->qtype]);
    aigw_jsonw_kbool(&w, "cached", q->from_cache);
    aigw_jsonw_kstr(&w, "request_id", req->request_id);
    model_and_usage(&w, q);
    aigw_jsonw_kint(&w, "queries_remaining", remaining);
    aigw_jsonw_obj_close(&w);
    aigw_req_add_header(req, "X-Cache", q->from_cache ? "HIT" : "MISS");
    rc = aigw_req_json_text(req, 200, w.buf, w.len);
    aigw_jsonw_free(&w);
    return rc;
}

enum aigw_rc
aigw_query_from_json(struct aigw_req *req, json_t *root)
{
    struct aigw_query *q = req->q;
    json_t *usage = json_object_get(root, "usage");
    const char *answer = json_string_value(json_object_get(root, "answer"));

    if (answer == NULL)
        return aigw_req_fail(req, 502, "upstream_error", "the stored answer was unreadable");
    q->answer = answer; /* borrowed: root is owned by the pool */
    q->model = json_string_value(json_object_get(root, "model"));
    q->prompt_tokens = (long)json_integer_value(json_object_get(usage, "prompt_tokens"));
    q->completion_tokens = (long)json_integer_value(json_object_get(usage, "completion_tokens"));
    q->finish_reason = json_string_value(json_object_get(root, "finish_reason")); /* borrowed too */
    q->from_cache = true;
    return q->respond(req);
}

/* A leader's error as waiters will read it: status, code, message and the
 * error's other fields from the response it sent. */
static char *
outcome_error(struct aigw_req *req)
{
    json_t *sent = json_loadb(req->resp_body ? req->resp_body : "", req->resp_len, 0, NULL);
    json_t *err = json_object_get(sent, "error");
    json_t *extra = json_deep_copy(err);
    const char *msg = json_string_value(json_object_get(err, "message"));
    json_t *o;
    char *text;

    json_object_del(extra, "code");
    json_object_del(extra, "message");
    json_object_del(extra, "request_id");
    o = json_pack("{s:{s:i, s:s, s:s, s:o}}", "error", "status", req->status, "code",
                  req->error_code ? req->error_code : "upstream_error", "message",
                  msg ? msg : "the upstream call failed", "extra", extra ? extra : json_object());
    /* a 503's Retry-After goes with it: a waiter answered with this outcome
     * (or a request arriving while the result is kept) is asked to retry too */
    for (size_t i = 0; o != NULL && i < req->n_resp_headers; i++)
        if (strcasecmp(req->resp_headers[i].name, "Retry-After") == 0)
            json_object_set_new(json_object_get(o, "error"), "retry_after", json_string(req->resp_headers[i].value));
    json_decref(sent);
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

/* The leader's outcome as waiters will read it (aigw_query_from_json);
 * an answer, on every miss, with the streaming writer. */
static char *
outcome_json(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    struct aigw_jsonw w;

    if (req->status != 200 || q->answer == NULL)
        return outcome_error(req);
    aigw_jsonw_init(&w, strlen(q->answer) + 128);
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "answer", q->answer);
    if (q->finish_reason != NULL)
        aigw_jsonw_kstr(&w, "finish_reason", q->finish_reason);
    model_and_usage(&w, q);
    aigw_jsonw_obj_close(&w);
    return aigw_jsonw_take(&w, NULL);
}

void
aigw_query_finish(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    bool settled = true;

    if (q == NULL)
        return;
    if (q->redis_lost) /* before the refund below clears quota_reserved */
        aigw_quota_abandon(req, false);
    if (q->quota_reserved && !q->billed) {
        settled = aigw_quota_refund_request(req, q->resv);
        q->quota_reserved = false;
    }
    /* kept, or refunded: settled. A refund Redis has not confirmed yet is
     * settled when it does (the outbox), or stays open in the journal for
     * the next start. */
    if (settled)
        aigw_resv_settle(req->srv->resv, q->resv, req->usage_id);
    q->resv = NULL;
    aigw_idempotency_finish(req);
}

/* Off the client's clock: the answer has gone out when waiters get it and
 * the cache stores it. A leader does both in one Redis round trip (the
 * publish script also stores the entry); the miss path does not wait for
 * it. A waiter polls every few ms, so it sees the result a little later. */
void
aigw_query_after(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    struct aigw_cache_entry entry;
    bool store;

    if (q == NULL)
        return;
    store = aigw_cache_entry(req, &entry);
    if (q->sf_role == AIGW_SF_LEADER) {
        /* no result for the waiters of a tool call or a thinking model's
         * answer (aigw_query_fresh_only): they ask for themselves;
         * nor a failure while this instance drains (the drain may have cut
         * the call short): the waiters on other instances take the flight
         * over instead of failing with it */
        bool draining = req->status >= 500 && atomic_load(&req->srv->stopping);
        char *text = req->status == 499 || !req->responded || draining || aigw_query_fresh_only(q)
                         ? NULL
                         : outcome_json(req);

        aigw_sf_publish(req, text, store ? &entry : NULL);
        free(text);
        q->sf_role = AIGW_SF_NONE;
    } else if (store) {
        aigw_cache_store(req, &entry);
    }
    if (store)
        aigw_jsonw_free(&entry.value);
}

/* The JSON answer's fields minus the text: what closes a stream. */
static json_t *
closing_fields(json_t *answer)
{
    json_t *o = json_object();
    const char *k;
    json_t *v;

    json_object_set_new(o, "done", json_true());
    json_object_foreach(answer, k, v)
    {
        if (strcmp(k, "answer") != 0 && strcmp(k, "recommendation") != 0)
            json_object_set(o, k, v);
    }
    return o;
}

static void
append_event(struct aigw_jsonw *w, json_t *data)
{
    char *text = json_dumps(data, JSON_COMPACT);

    aigw_jsonw_append(w, "data: ", 6);
    if (text != NULL)
        aigw_jsonw_append(w, text, strlen(text));
    aigw_jsonw_append(w, "\n\n", 2);
    free(text);
}

char *
aigw_query_sse_closing(struct aigw_req *req)
{
    json_t *body = json_loadb(req->resp_body ? req->resp_body : "", req->resp_len, 0, NULL);
    json_t *data = req->status == 200 ? closing_fields(body)
                                      : json_pack("{s:O?}", "error", json_object_get(body, "error"));
    struct aigw_jsonw w;
    char *out;

    aigw_jsonw_init(&w, req->resp_len + 64);
    append_event(&w, data);
    out = aigw_pool_strndup(req->pool, w.buf, w.len);
    aigw_jsonw_free(&w);
    json_decref(data);
    json_decref(body);
    return out;
}

void
aigw_query_sse_replay(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    json_t *body, *text;
    struct aigw_jsonw w;
    char *closing;

    /* only answers in aigw's own shape (the OpenAI route neither caches nor
     * coalesces streams, so it never has a finished answer to replay) */
    if (q == NULL || !q->stream || req->status != 200 || req->sse_live || q->respond != aigw_api_query)
        return;
    body = json_loadb(req->resp_body ? req->resp_body : "", req->resp_len, 0, NULL);
    text = json_object_get(body, "answer") ? json_object_get(body, "answer") : json_object_get(body, "recommendation");
    aigw_jsonw_init(&w, req->resp_len + 64);
    if (json_is_string(text)) {
        json_t *delta = json_pack("{s:O}", "delta", text);

        append_event(&w, delta);
        json_decref(delta);
    }
    closing = aigw_query_sse_closing(req);
    aigw_jsonw_append(&w, closing, strlen(closing));
    req->resp_body = aigw_pool_strndup(req->pool, w.buf, w.len);
    req->resp_len = w.len;
    req->content_type = "text/event-stream";
    aigw_jsonw_free(&w);
    json_decref(body);
}
