/* chat.c - the answers of the OpenAI-compatible routes */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/config.h"
#include "aigw/jsonw.h"
#include "aigw/query.h"
#include "aigw/server.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

/* A fresh answer is the upstream's body as it came; a cached or coalesced
 * one is rebuilt in the chat.completion shape from the stored fields. */
enum aigw_rc
aigw_api_chat(struct aigw_req *req)
{
    struct aigw_query *q = req->q;

    aigw_req_add_header(req, "X-Cache", q->from_cache ? "HIT" : "MISS");
    if (q->raw != NULL && !q->from_cache) {
        size_t n;
        char *clean = aigw_chat_strip_cache_info(q->raw, strlen(q->raw), q->model, &n);
        enum aigw_rc rc;

        if (clean == NULL)
            return aigw_req_json_text(req, 200, q->raw, strlen(q->raw));
        rc = aigw_req_json_text(req, 200, clean, n);
        free(clean);
        return rc;
    }
    {
        json_t *text = q->answer_json != NULL ? json_loads(q->answer_json, JSON_DECODE_ANY, NULL)
                                              : json_string(q->answer ? q->answer : "");
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:o}, s:s}], s:{s:I, s:I, s:I}}", "id",
                              aigw_pool_printf(req->pool, "chatcmpl-%s", req->request_id), "object", "chat.completion",
                              "created", (json_int_t)aigw_wall_s(), "model", q->model ? q->model : req->srv->cfg.models[0].id,
                              "choices", "index", 0, "message", "role", "assistant", "content",
                              text != NULL ? text : json_string(""), "finish_reason",
                              q->finish_reason ? q->finish_reason : "stop", "usage", "prompt_tokens",
                              (json_int_t)q->prompt_tokens, "completion_tokens", (json_int_t)q->completion_tokens,
                              "total_tokens", (json_int_t)(q->prompt_tokens + q->completion_tokens));

        if (o == NULL)
            return aigw_req_fail(req, 500, "internal", "could not encode the answer");
        return aigw_req_json(req, 200, o);
    }
}

enum aigw_rc
aigw_api_models(struct aigw_req *req)
{
    const struct aigw_config *cfg = &req->srv->cfg;
    struct aigw_jsonw w;
    enum aigw_rc rc;

    aigw_jsonw_init(&w, 256 * (cfg->n_models + 1));
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "object", "list");
    aigw_jsonw_key(&w, "data");
    aigw_jsonw_append(&w, "[", 1);
    for (size_t i = 0; i < cfg->n_models; i++) {
        if (aigw_chat_model(req, cfg->models[i].id) == NULL)
            continue;
        aigw_jsonw_obj_open(&w); /* the writer puts the comma between elements itself */
        aigw_jsonw_kstr(&w, "id", cfg->models[i].id);
        aigw_jsonw_kstr(&w, "object", "model");
        aigw_jsonw_kint(&w, "created", req->srv->started_wall_s);
        aigw_jsonw_kstr(&w, "owned_by", "aigw");
        aigw_jsonw_obj_close(&w);
    }
    aigw_jsonw_append(&w, "]", 1);
    aigw_jsonw_obj_close(&w);
    rc = aigw_req_json_text(req, 200, w.buf, w.len);
    aigw_jsonw_free(&w);
    return rc;
}
