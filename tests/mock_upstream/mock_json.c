/*
 * mock-upstream: request parsing and llama-server compatible JSON rendering.
 *
 * Shapes follow llama.cpp tools/server (server-task.cpp:
 * to_json_oaicompat_chat, to_json_oaicompat_chat_stream, the partial chunk
 * to_json_oaicompat_chat, result_timings::to_json; server-common:
 * format_error_response; server-context: /v1/models).
 */
#include "mock_upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------------ */
/* request parsing                                                          */
/* ------------------------------------------------------------------------ */

static long count_words(const char *s, size_t len)
{
    long n = 0;
    bool in_word = false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        bool space = c == ' ' || c == '\t' || c == '\n' || c == '\r' ||
                     c == '\v' || c == '\f';
        if (!space && !in_word) {
            n++;
        }
        in_word = !space;
    }
    return n;
}

/* Words in a message "content": a string or an array of parts with "text". */
static long content_words(const json_t *content)
{
    if (json_is_string(content)) {
        return count_words(json_string_value(content), json_string_length(content));
    }
    long n = 0;
    if (json_is_array(content)) {
        size_t i;
        const json_t *part;
        json_array_foreach(content, i, part) {
            const json_t *text = json_object_get(part, "text");
            if (json_is_string(text)) {
                n += count_words(json_string_value(text), json_string_length(text));
            }
        }
    }
    return n;
}

struct sbuf {
    char *p;
    size_t len, cap; /* cap is the usable size, excluding the NUL */
};

static void sbuf_add(struct sbuf *b, const char *s, size_t n)
{
    size_t room = b->cap - b->len;
    if (n > room) {
        n = room;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

/* First MU_SNIPPET_BYTES bytes of the text of a message content, cut at a
 * UTF-8 character boundary, control characters replaced by spaces. */
static void content_snippet(const json_t *content, char *out, size_t outcap)
{
    char tmp[MU_SNIPPET_BYTES * 2 + 8];
    struct sbuf b = {tmp, 0, sizeof tmp - 1};
    tmp[0] = '\0';
    if (json_is_string(content)) {
        sbuf_add(&b, json_string_value(content), json_string_length(content));
    } else if (json_is_array(content)) {
        size_t i;
        const json_t *part;
        bool first = true;
        json_array_foreach(content, i, part) {
            const json_t *text = json_object_get(part, "text");
            if (!json_is_string(text)) {
                continue;
            }
            if (!first) {
                sbuf_add(&b, " ", 1);
            }
            first = false;
            sbuf_add(&b, json_string_value(text), json_string_length(text));
        }
    }
    size_t k = b.len < MU_SNIPPET_BYTES ? b.len : MU_SNIPPET_BYTES;
    while (k > 0 && k < b.len && ((unsigned char)tmp[k] & 0xC0) == 0x80) {
        k--;
    }
    if (k >= outcap) {
        k = outcap - 1;
    }
    for (size_t i = 0; i < k; i++) {
        unsigned char c = (unsigned char)tmp[i];
        out[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[k] = '\0';
}

static bool get_int(const json_t *root, const char *key, long *out)
{
    const json_t *v = json_object_get(root, key);
    if (json_is_integer(v)) {
        *out = (long)json_integer_value(v);
        return true;
    }
    return false;
}

void mu_parse_chat(const char *body, size_t len, struct mu_chat_req *out)
{
    memset(out, 0, sizeof *out);
    out->prompt_tokens = 1;

    if (len == 0) {
        snprintf(out->err, sizeof out->err, "%s",
                 "[json.exception.parse_error.101] parse error at line 1, column 1: "
                 "attempting to parse an empty input; check that your input string "
                 "or stream contains the expected JSON");
        return;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_DECODE_ANY, &jerr);
    if (!root) {
        snprintf(out->err, sizeof out->err,
                 "[json.exception.parse_error.101] parse error at line %d, column %d: "
                 "syntax error while parsing value - %s",
                 jerr.line, jerr.column, jerr.text);
        return;
    }
    out->parsed = true;
    out->stream = json_is_true(json_object_get(root, "stream"));
    out->include_usage =
        json_is_true(json_object_get(json_object_get(root, "stream_options"), "include_usage"));
    /* llama-server: n_predict > max_completion_tokens > max_tokens */
    long mt = 0;
    if (get_int(root, "n_predict", &mt) || get_int(root, "max_completion_tokens", &mt) ||
        get_int(root, "max_tokens", &mt)) {
        out->max_tokens = mt;
    }
    const json_t *model = json_object_get(root, "model");
    if (json_is_string(model)) {
        snprintf(out->model, sizeof out->model, "%s", json_string_value(model));
    }

    /* Validation mirrors oaicompat_chat_params_parse (llama-server builds
     * that throw std::runtime_error here answer 500 server_error). */
    const json_t *messages = json_object_get(root, "messages");
    if (!json_is_object(root) || !messages) {
        snprintf(out->err, sizeof out->err, "%s", "'messages' is required");
        goto done;
    }
    if (!json_is_array(messages)) {
        snprintf(out->err, sizeof out->err, "%s", "Expected 'messages' to be an array");
        goto done;
    }
    long words = 0;
    const json_t *last_user = NULL;
    size_t i;
    const json_t *msg;
    json_array_foreach(messages, i, msg) {
        const json_t *role = json_object_get(msg, "role");
        const char *r = json_is_string(role) ? json_string_value(role) : "";
        const json_t *content = json_object_get(msg, "content");
        if (strcmp(r, "assistant") != 0 && !content) {
            snprintf(out->err, sizeof out->err, "%s",
                     "All non-assistant messages must contain 'content'");
            goto done;
        }
        if (strcmp(r, "assistant") == 0 && !content && !json_object_get(msg, "tool_calls")) {
            snprintf(out->err, sizeof out->err, "%s",
                     "Assistant message must contain either 'content' or 'tool_calls'!");
            goto done;
        }
        words += content_words(content);
        if (strcmp(r, "user") == 0) {
            last_user = content;
        }
    }
    out->prompt_tokens = words > 0 ? words : 1;
    content_snippet(last_user, out->snippet, sizeof out->snippet);
    out->valid = true;
done:
    json_decref(root);
}

/* ------------------------------------------------------------------------ */
/* rendering                                                                */
/* ------------------------------------------------------------------------ */

void mu_token_text(const struct mu_gen *g, long i, char *buf, size_t cap)
{
    if (i == 1) {
        snprintf(buf, cap, "Mock answer to [%s]: tok1", g->snippet);
    } else {
        snprintf(buf, cap, " tok%ld", i);
    }
    if (g->pad > 0) {
        size_t len = strlen(buf);
        size_t n = len + (size_t)g->pad < cap ? (size_t)g->pad : cap - 1 - len;
        memset(buf + len, '.', n);
        buf[len + n] = '\0';
    }
}

static char *dump_steal(json_t *j)
{
    if (!j) {
        return NULL;
    }
    char *s = json_dumps(j, MU_DUMP_FLAGS);
    json_decref(j);
    return s;
}

static json_t *timings_obj(long prompt_n, long predicted_n, const struct mu_timings *t)
{
    double p_ms = t->prompt_ms > 0 ? t->prompt_ms : 0.0;
    double g_ms = t->predicted_ms > 0 ? t->predicted_ms : 0.0;
    double p_tok = prompt_n > 0 ? p_ms / (double)prompt_n : 0.0;
    double p_sec = p_ms > 0 ? 1e3 * (double)prompt_n / p_ms : 0.0;
    double g_tok = predicted_n > 0 ? g_ms / (double)predicted_n : 0.0;
    double g_sec = g_ms > 0 ? 1e3 * (double)predicted_n / g_ms : 0.0;
    return json_pack("{s:i, s:I, s:f, s:f, s:f, s:I, s:f, s:f, s:f}",
                     "cache_n", 0,
                     "prompt_n", (json_int_t)prompt_n,
                     "prompt_ms", p_ms,
                     "prompt_per_token_ms", p_tok,
                     "prompt_per_second", p_sec,
                     "predicted_n", (json_int_t)predicted_n,
                     "predicted_ms", g_ms,
                     "predicted_per_token_ms", g_tok,
                     "predicted_per_second", g_sec);
}

/* usage_json_oaicompat: cached_tokens is how much of the prompt the slot
 * held already (the mock keeps no prompt cache) */
static json_t *usage_obj(const struct mu_gen *g)
{
    return json_pack("{s:I, s:I, s:I, s:{s:i}}",
                     "completion_tokens", (json_int_t)g->n_tokens,
                     "prompt_tokens", (json_int_t)g->prompt_tokens,
                     "total_tokens", (json_int_t)(g->n_tokens + g->prompt_tokens),
                     "prompt_tokens_details", "cached_tokens", 0);
}

char *mu_render_completion(const struct mu_gen *g, const struct mu_timings *t)
{
    size_t cap = 128 + MU_SNIPPET_BYTES + (size_t)g->n_tokens * (24 + (size_t)g->pad);
    char *content = malloc(cap);
    if (!content) {
        return NULL;
    }
    size_t len = 0, thought = 0;
    content[0] = '\0';
    for (long i = 1; i <= g->n_tokens; i++) {
        mu_token_text(g, i, content + len, cap - len);
        len += strlen(content + len);
        if (i == g->reasoning) {
            thought = len; /* tokens 1..reasoning are the thinking, as in a stream */
        }
    }
    if (g->nul && len + 2 < cap) {
        content[len++] = '\0';
        content[len++] = 'x';
    }
    json_t *message = json_pack("{s:s, s:s%}", "role", "assistant", "content", content + thought, len - thought);
    if (message && thought > 0) {
        json_object_set_new(message, "reasoning_content", json_stringn(content, thought));
    }
    json_t *j = json_pack(
        "{s:[{s:s, s:i, s:o?}], s:I, s:s, s:s, s:s, s:o?, s:s, s:o?}",
        "choices", "finish_reason", g->finish_reason, "index", 0,
        "message", message,
        "created", (json_int_t)g->created,
        "model", g->model,
        "system_fingerprint", MU_SYSTEM_FINGERPRINT,
        "object", "chat.completion",
        "usage", usage_obj(g),
        "id", g->id,
        "timings", timings_obj(g->prompt_tokens, g->n_tokens, t));
    free(content);
    return dump_steal(j);
}

/* {"choices":C,"created":..,"id":..,"model":..,"system_fingerprint":..,
 *  "object":"chat.completion.chunk"} -- steals choices */
static json_t *chunk_base(const struct mu_gen *g, json_t *choices)
{
    return json_pack("{s:o, s:I, s:s, s:s, s:s, s:s}",
                     "choices", choices,
                     "created", (json_int_t)g->created,
                     "id", g->id,
                     "model", g->model,
                     "system_fingerprint", MU_SYSTEM_FINGERPRINT,
                     "object", "chat.completion.chunk");
}

static json_t *one_choice(const char *finish_reason, json_t *delta)
{
    return json_pack("[{s:s?, s:i, s:o}]", "finish_reason", finish_reason, "index", 0,
                     "delta", delta);
}

char *mu_render_chunk_role(const struct mu_gen *g)
{
    json_t *delta = json_pack("{s:s, s:n}", "role", "assistant", "content");
    return dump_steal(chunk_base(g, one_choice(NULL, delta)));
}

char *mu_render_chunk_token(const struct mu_gen *g, long i)
{
    size_t cap = MU_TOKEN_BYTES(g);
    char *text = malloc(cap);
    if (!text) {
        return NULL;
    }
    mu_token_text(g, i, text, cap);
    size_t len = strlen(text);
    if (g->nul && i == g->n_tokens && len + 2 < cap) {
        text[len++] = '\0';
        text[len++] = 'x';
    }
    json_t *delta = json_pack("{s:s%}", i <= g->reasoning ? "reasoning_content" : "content", text, len);
    free(text);
    return dump_steal(chunk_base(g, one_choice(NULL, delta)));
}

char *mu_render_chunk_finish(const struct mu_gen *g, bool with_usage,
                             const struct mu_timings *t_or_null)
{
    json_t *j = chunk_base(g, one_choice(g->finish_reason, json_object()));
    if (j && with_usage) {
        json_object_set_new(j, "usage", usage_obj(g));
    }
    if (j && t_or_null) {
        json_object_set_new(j, "timings", timings_obj(g->prompt_tokens, g->n_tokens, t_or_null));
    }
    return dump_steal(j);
}

char *mu_render_chunk_usage(const struct mu_gen *g, const struct mu_timings *t)
{
    json_t *j = chunk_base(g, json_array());
    if (j) {
        json_object_set_new(j, "usage", usage_obj(g));
        json_object_set_new(j, "timings", timings_obj(g->prompt_tokens, g->n_tokens, t));
    }
    return dump_steal(j);
}

json_t *mu_error_obj(int code, const char *message, const char *type)
{
    return json_pack("{s:i, s:s, s:s}", "code", code, "message", message, "type", type);
}

char *mu_render_error(int code, const char *message, const char *type, bool middleware_order)
{
    json_t *inner = middleware_order
                        ? json_pack("{s:s, s:s, s:i}", "message", message, "type", type,
                                    "code", code)
                        : mu_error_obj(code, message, type);
    return dump_steal(json_pack("{s:o}", "error", inner));
}

char *mu_render_models(const char *model)
{
    json_t *ollama = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:[s], s:[s], s:s,"
        " s:{s:s, s:s, s:s, s:[s], s:s, s:s}}",
        "name", model, "model", model, "modified_at", "", "size", "", "digest", "",
        "type", "model", "description", "", "tags", "", "capabilities", "completion",
        "parameters", "",
        "details", "parent_model", "", "format", "gguf", "family", "", "families", "",
        "parameter_size", "", "quantization_level", "");
    json_t *oai = json_pack(
        "{s:s, s:[], s:[], s:s, s:I, s:s,"
        " s:{s:i, s:i, s:i, s:i, s:i, s:I, s:I}}",
        "id", model, "aliases", "tags", "object", "model",
        "created", (json_int_t)time(NULL), "owned_by", "llamacpp",
        "meta", "vocab_type", 2, "n_vocab", 32000, "n_ctx", 4096, "n_ctx_train", 4096,
        "n_embd", 4096, "n_params", (json_int_t)7000000000LL,
        "size", (json_int_t)4000000000LL);
    return dump_steal(json_pack("{s:[o?], s:s, s:[o?]}", "models", ollama, "object", "list",
                                "data", oai));
}
