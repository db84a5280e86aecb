/* chat.c - the OpenAI-compatible request: plan check, field-by-field
 * validation, model allow-list, policy (max_tokens clamp, usage in streams)
 * and the cache identity of a deterministic request */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/config.h"
#include "aigw/query.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

#define MAX_MESSAGES 256

static const char *const ROLES[] = {"system", "user", "assistant", "developer", "tool", NULL};

static bool
known_role(const char *r)
{
    for (size_t i = 0; ROLES[i] != NULL; i++)
        if (strcmp(r, ROLES[i]) == 0)
            return true;
    return false;
}

/* Each message an object with a known role and string content (an earlier
 * turn's tool calls may have null content); and at least one message with
 * something to read: a visible character in its content (as the query
 * route's blank question), or tool calls. Messages made only of white
 * space, zero-width or other invisible characters and control characters
 * went to the model and were billed. The scan stops at the first visible
 * character found, the first byte of most requests. */
static enum aigw_rc
check_messages(struct aigw_req *req, json_t *msgs)
{
    bool visible = false;
    size_t i;
    json_t *m;

    if (msgs == NULL || json_is_null(msgs))
        return aigw_req_fail(req, 400, "invalid_request", "messages: is required");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0 || json_array_size(msgs) > MAX_MESSAGES)
        return aigw_req_fail(req, 400, "invalid_request", "messages: must be an array of 1..%d messages",
                             MAX_MESSAGES);
    json_array_foreach(msgs, i, m) {
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");

        if (!json_is_object(m))
            return aigw_req_fail(req, 400, "invalid_request", "messages[%zu]: must be an object", i);
        if (!json_is_string(role) || !known_role(json_string_value(role)))
            return aigw_req_fail(req, 400, "invalid_request",
                                 "messages[%zu].role: must be one of system, user, assistant, developer, tool", i);
        if (!json_is_string(content) &&
            !((content == NULL || json_is_null(content)) && strcmp(json_string_value(role), "assistant") == 0 &&
              json_array_size(json_object_get(m, "tool_calls")) > 0)) /* an earlier turn's tool calls */
            return aigw_req_fail(req, 400, "invalid_request", "messages[%zu].content: must be a string", i);
        if (!visible) /* a string, else null beside tool calls */
            visible = !json_is_string(content) || aigw_utf8_has_visible(json_string_value(content));
    }
    if (!visible)
        return aigw_req_fail(req, 400, "invalid_request",
                             "messages: no message has a visible character (all are empty, white space or invisible)");
    return AIGW_OK;
}

/* max_tokens and max_completion_tokens: each positive when given (null is
 * not given); max_completion_tokens (OpenAI's newer name) wins when both
 * are; clamped to the plan. */
static enum aigw_rc
check_max_tokens(struct aigw_req *req, json_t *body, long *out)
{
    static const char *const names[2] = {"max_tokens", "max_completion_tokens"};
    long plan = req->tenant->max_tokens;

    *out = plan;
    for (int i = 0; i < 2; i++) {
        json_t *v = json_object_get(body, names[i]);

        if (v == NULL || json_is_null(v))
            continue;
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return aigw_req_fail(req, 400, "invalid_request", "%s: must be a positive integer", names[i]);
        *out = json_integer_value(v) < plan ? (long)json_integer_value(v) : plan;
    }
    return AIGW_OK;
}

/* body[name] absent, null or 1. */
static bool
one_or_absent(json_t *body, const char *name)
{
    json_t *v = json_object_get(body, name);

    return v == NULL || json_is_null(v) || (json_is_integer(v) && json_integer_value(v) == 1);
}

/* Does the request ask for the tokens' probabilities in its answer? */
static bool
wants_probs(json_t *body)
{
    json_t *n_probs = json_object_get(body, "n_probs");

    return json_is_true(json_object_get(body, "logprobs")) ||
           (json_is_number(n_probs) && json_number_value(n_probs) > 0);
}

/* The other sampling fields aigw reads: n, temperature, stream, stream_options. */
static enum aigw_rc
check_options(struct aigw_req *req, json_t *body, bool *cacheable)
{
    json_t *temp = json_object_get(body, "temperature");
    json_t *stream = json_object_get(body, "stream"), *so = json_object_get(body, "stream_options");
    struct aigw_query *q = req->q;

    if (!one_or_absent(body, "n"))
        return aigw_req_fail(req, 400, "invalid_request", "n: only 1 is supported");
    /* llama-server's own name for n: each extra completion takes a slot of
     * its own, and its usage reports one completion's tokens */
    if (!one_or_absent(body, "n_cmpl"))
        return aigw_req_fail(req, 400, "invalid_request", "n_cmpl: only 1 is supported");
    if (temp != NULL && !json_is_null(temp) &&
        (!json_is_number(temp) || json_number_value(temp) < 0 || json_number_value(temp) > 2))
        return aigw_req_fail(req, 400, "invalid_request", "temperature: must be a number from 0 to 2");
    if (stream != NULL && !json_is_null(stream) && !json_is_boolean(stream))
        return aigw_req_fail(req, 400, "invalid_request", "stream: must be a boolean");
    if (so != NULL && !json_is_null(so) &&
        (!json_is_object(so) || (json_object_get(so, "include_usage") != NULL &&
                                 !json_is_boolean(json_object_get(so, "include_usage")))))
        return aigw_req_fail(req, 400, "invalid_request", "stream_options: must be {\"include_usage\": boolean}");
    q->stream = json_is_true(stream);
    q->chat_usage = json_is_true(json_object_get(so, "include_usage"));
    /* the same request gives the same answer only without sampling; and
     * an answer with token probabilities (logprobs, or llama-server's own
     * n_probs) cannot be rebuilt from a cache entry, which has no
     * choices[0].logprobs */
    *cacheable = !q->stream && !wants_probs(body) &&
                 (req->srv->cfg.cache_sampled || (temp != NULL && json_is_number(temp) && json_number_value(temp) == 0));
    return AIGW_OK;
}

/* The body sent upstream: the client's, with the model, the clamped
 * max_tokens and (streams) usage at the end. Of llama-server's own fields,
 * n_predict goes (it wins over max_tokens there, and would lift the plan's
 * limit), and so does the slot choice (id_slot, or slot_id in older
 * builds): it would queue the call inside llama-server behind aigw's slot
 * accounting, and pick the slot whose prompt cache another tenant filled;
 * return_progress and timings_per_token go too (below). */
static json_t *
forwarded(json_t *body, const struct aigw_model_cfg *m, long max_tokens, bool stream)
{
    json_t *out = json_deep_copy(body);

    json_object_set_new(out, "model", json_string(m->id));
    json_object_del(out, "max_completion_tokens");
    json_object_del(out, "n_predict");
    json_object_del(out, "id_slot");
    json_object_del(out, "slot_id");
    /* progress chunks tell how much of the prompt the slot had cached
     * (prompt_progress.cache), and per-token timings would make every
     * chunk one to rewrite (aigw_chat_strip_cache_info) */
    json_object_del(out, "return_progress");
    json_object_del(out, "timings_per_token");
    json_object_set_new(out, "max_tokens", json_integer(max_tokens));
    if (stream)
        json_object_set_new(out, "stream_options", json_pack("{s:b}", "include_usage", 1));
    return out;
}

/* Identity of the request for the cache, the usage row and single-flight:
 * canonical JSON (sorted keys) of what is forwarded. */
static void
identity(struct aigw_req *req, json_t *fwd, const struct aigw_model_cfg *m, long max_tokens)
{
    struct aigw_query *q = req->q;
    char *canon = json_dumps(fwd, JSON_COMPACT | JSON_SORT_KEYS);
    unsigned char md[32];

    q->question = aigw_pool_strdup(req->pool, canon != NULL ? canon : "");
    aigw_sha256(q->question, strlen(q->question), md);
    aigw_hex(md, 32, q->question_sha256);
    aigw_query_cache_hex(true, req->tenant->id, q->qtype, q->question, m->id, (int)max_tokens, q->cache_hex);
    free(canon);
}

const struct aigw_model_cfg *
aigw_chat_model(const struct aigw_req *req, const char *id)
{
    const struct aigw_model_cfg *m = aigw_config_model(&req->srv->cfg, id, req->tenant->tier);

    return m != NULL && (req->tenant->features & (1u << m->qtype)) ? m : NULL; /* feature bits follow the query types */
}

enum aigw_rc
aigw_stage_validate_chat(struct aigw_req *req)
{
    struct aigw_query *q = aigw_query_new(req);
    json_t *body = req->json, *model = json_object_get(body, "model"), *fwd;
    const struct aigw_model_cfg *m;
    const char *model_id;
    bool cacheable = false;
    long max_tokens;
    char *text;
    enum aigw_rc rc;

    q->route_label = "chat";
    q->respond = aigw_api_chat;
    if ((rc = aigw_require_api_access(req)) != AIGW_OK)
        return rc;
    if ((rc = check_messages(req, json_object_get(body, "messages"))) != AIGW_OK ||
        (rc = check_max_tokens(req, body, &max_tokens)) != AIGW_OK || (rc = check_options(req, body, &cacheable)) != AIGW_OK)
        return rc;
    if (model != NULL && !json_is_null(model) && !json_is_string(model))
        return aigw_req_fail(req, 400, "invalid_request", "model: must be a string");
    model_id = json_is_string(model) ? json_string_value(model) : req->srv->cfg.models[0].id;
    m = aigw_chat_model(req, model_id);
    if (m == NULL)
        return aigw_req_fail(req, 404, "model_not_found",
                             "model: the requested model does not exist or is not available to this plan");
    q->qtype = m->qtype;
    fwd = forwarded(body, m, max_tokens, q->stream);
    text = json_dumps(fwd, JSON_COMPACT);
    q->chat_body = aigw_pool_strdup(req->pool, text != NULL ? text : "{}");
    free(text);
    json_object_del(fwd, "stream");
    json_object_del(fwd, "stream_options");
    identity(req, fwd, m, max_tokens);
    json_decref(fwd);
    q->model = m->id;
    if (!cacheable)
        q->no_cache = q->no_store = true;
    return AIGW_OK;
}

char *
aigw_chat_strip_cache_info(const char *json, size_t len, const char *model, size_t *out_len)
{
    json_t *root, *usage;
    char *out = NULL;
    bool changed;

    if (memmem(json, len, "timings", 7) == NULL && memmem(json, len, "prompt_tokens_details", 21) == NULL &&
        memchr(json, '\\', len) == NULL) /* an escaped key could spell either */
        return NULL;
    root = json_loadb(json, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(root)) {
        json_decref(root);
        return NULL;
    }
    usage = json_object_get(root, "usage");
    changed = json_object_del(root, "timings") == 0;
    changed |= json_is_object(usage) && json_object_del(usage, "prompt_tokens_details") == 0;
    /* rewritten anyway: the model the client asked for, as a cached answer has it */
    if (changed && model != NULL)
        json_object_set_new(root, "model", json_string(model));
    if (changed && (out = json_dumps(root, JSON_COMPACT)) != NULL)
        *out_len = strlen(out);
    json_decref(root);
    return out;
}
