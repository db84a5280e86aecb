/* upstream.c - the upstream stage: build the chat request, suspend, and turn
 * the engine's outcome into the answer or an error once resumed */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/config.h"
#include "aigw/query.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/upstream.h"

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

/* The tenant and the query type go into the system prompt, never the model. */
static char *
build_body(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    struct aigw_query *q = req->q;
    char *system = aigw_pool_printf(req->pool,
                                    "You are the AI assistant of %s (tenant %s), an optical clinic. "
                                    "Query type: %s. Answer concisely for clinic staff; never reveal "
                                    "personal data of patients.",
                                    t->name, t->code, aigw_query_type_names[q->qtype]);
    json_t *body = json_pack("{s:s, s:[{s:s, s:s}, {s:s, s:s}], s:i, s:b}", "model", req->srv->cfg.model,
                             "messages", "role", "system", "content", system, "role", "user", "content",
                             q->question, "max_tokens", t->max_tokens, "stream", 0);
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;

    json_decref(body);
    return text;
}

enum aigw_rc
aigw_stage_upstream(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    const struct aigw_upstream_result *res;
    char *body;

    if (q->call == NULL) {
        body = build_body(req);
        if (body == NULL)
            return aigw_req_fail(req, 500, "internal", "could not encode the upstream request");
        aigw_req_suspend(req);
        q->call = aigw_upstream_submit(req->srv->upstream, q->qtype, body, strlen(body), on_done, req);
        aigw_pool_cleanup(req->pool, free_call, q->call);
        free(body);
        return AIGW_AGAIN;
    }
    if (!atomic_load(&q->call_done))
        return aigw_req_fail(req, 500, "internal", "resumed before the upstream call finished");
    res = aigw_upstream_result(q->call);
    q->upstream_ms = (long)res->upstream_ms;
    if (res->status != 200) {
        if (res->retry_after_s > 0)
            aigw_req_add_header(req, "Retry-After", aigw_pool_printf(req->pool, "%d", res->retry_after_s));
        return aigw_req_fail(req, res->status, res->error_code ? res->error_code : "upstream_error", "%s",
                             res->status == 504   ? "the model server did not answer in time"
                             : res->status == 503 ? "no model server is available, retry shortly"
                                                  : "the model server failed to answer");
    }
    q->answer = aigw_pool_strdup(req->pool, res->content ? res->content : "");
    q->model = aigw_pool_strdup(req->pool, res->model ? res->model : req->srv->cfg.model);
    q->prompt_tokens = res->prompt_tokens;
    q->completion_tokens = res->completion_tokens;
    q->billed = true;
    return AIGW_OK;
}
