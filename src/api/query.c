/* query.c - the answer of /api/ai/query and /api/ai/recommendation, and the
 * bookkeeping that must happen before it leaves */
#include <jansson.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/config.h"
#include "aigw/query.h"
#include "aigw/quota.h"
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
    if (used < 0 && aigw_quota_used(req->srv, t, &used) != 0)
        return -1;
    return used >= t->monthly_limit ? 0 : t->monthly_limit - used;
}

enum aigw_rc
aigw_api_query(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    bool rec = strcmp(q->route_label, "recommendation") == 0;
    long remaining = q->quota_reserved ? q->queries_remaining : remaining_now(req);
    json_t *body = json_pack("{s:s, s:s, s:b, s:s, s:s, s:{s:I, s:I}, s:I}", rec ? "recommendation" : "answer",
                             q->answer, "query_type", aigw_query_type_names[q->qtype], "cached", q->from_cache,
                             "request_id", req->request_id, "model", q->model ? q->model : "", "usage",
                             "prompt_tokens", (json_int_t)q->prompt_tokens, "completion_tokens",
                             (json_int_t)q->completion_tokens, "queries_remaining", (json_int_t)remaining);

    aigw_req_add_header(req, "X-Cache", q->from_cache ? "HIT" : "MISS");
    if (body == NULL)
        return aigw_req_fail(req, 500, "internal", "could not encode the answer");
    return aigw_req_json(req, 200, body);
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
    q->from_cache = true;
    return aigw_api_query(req);
}

/* The leader's outcome as waiters will read it. */
static char *
outcome_json(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    json_t *o;
    char *text;

    if (req->status == 200 && q->answer != NULL)
        o = json_pack("{s:s, s:s, s:{s:I, s:I}}", "answer", q->answer, "model", q->model ? q->model : "", "usage",
                      "prompt_tokens", (json_int_t)q->prompt_tokens, "completion_tokens",
                      (json_int_t)q->completion_tokens);
    else {
        json_t *sent = json_loadb(req->resp_body ? req->resp_body : "", req->resp_len, 0, NULL);
        json_t *err = json_object_get(sent, "error");
        json_t *extra = json_deep_copy(err);

        json_object_del(extra, "code");
        json_object_del(extra, "message");
        json_object_del(extra, "request_id");
        o = json_pack("{s:{s:i, s:s, s:s, s:o}}", "error", "status", req->status, "code",
                      req->error_code ? req->error_code : "upstream_error", "message",
                      json_string_value(json_object_get(err, "message")) ? json_string_value(json_object_get(err, "message"))
                                                                          : "the upstream call failed",
                      "extra", extra ? extra : json_object());
        json_decref(sent);
    }
    text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

void
aigw_query_finish(struct aigw_req *req)
{
    struct aigw_query *q = req->q;

    if (q == NULL)
        return;
    if (q->sf_role == AIGW_SF_LEADER) {
        char *text = outcome_json(req);

        if (text != NULL)
            aigw_sf_publish(req, text);
        free(text);
    }
    if (req->status == 200 && q->billed)
        aigw_cache_store(req);
    if (q->quota_reserved && !(req->status == 200 && q->billed)) {
        aigw_quota_refund(req->srv, req->tenant);
        q->quota_reserved = false;
    }
    aigw_idempotency_finish(req);
}
