/*
 * mock-upstream: a fake llama.cpp `llama-server` used by aigw's integration
 * tests and benchmarks.  Shared declarations between mock_upstream.c (HTTP
 * server, scheduling, control API) and mock_json.c (request parsing and
 * llama-server compatible JSON rendering).
 */
#ifndef AIGW_MOCK_UPSTREAM_H
#define AIGW_MOCK_UPSTREAM_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define MU_SYSTEM_FINGERPRINT "b0-mock-upstream"
#define MU_SNIPPET_BYTES 40
/* compact like nlohmann::json::dump(); 15 digits avoids 0.1 -> 0.10000000000000001 */
#define MU_DUMP_FLAGS (JSON_COMPACT | JSON_REAL_PRECISION(15))

/* The facts of one chat completion request that matter to the mock. */
struct mu_chat_req {
    bool parsed;                        /* body was valid JSON */
    bool valid;                         /* ... and a valid chat request */
    char err[512];                      /* error message when !valid */
    bool stream;
    bool include_usage;                 /* stream_options.include_usage */
    long max_tokens;                    /* <= 0: no limit requested */
    char model[256];                    /* "" when the request had none */
    char snippet[MU_SNIPPET_BYTES + 8]; /* first bytes of last user message */
    long prompt_tokens;                 /* whitespace separated words, >= 1 */
};

/* Identity of one generated completion (shared by all its chunks). */
struct mu_gen {
    const char *id;
    long long created;
    const char *model;
    const char *snippet;
    const char *finish_reason;
    long n_tokens;
    long prompt_tokens;
    long reasoning;  /* tokens 1..reasoning stream as delta.reasoning_content */
    bool nul;        /* the last token ends in a NUL character and "x" (\u0000x on the wire) */
    long pad;        /* each token's text ends in this many '.' (an answer of megabytes in a few events) */
};

struct mu_timings {
    double prompt_ms;
    double predicted_ms;
};

void mu_parse_chat(const char *body, size_t len, struct mu_chat_req *out);

/* Text of token i (1-based); the concatenation of tokens 1..n is the content.
 * buf needs MU_TOKEN_BYTES(g) bytes. */
#define MU_TOKEN_BYTES(g) ((size_t)(g)->pad + MU_SNIPPET_BYTES + 64)
void mu_token_text(const struct mu_gen *g, long i, char *buf, size_t cap);

/* All mu_render_* return malloc'd NUL-terminated strings (NULL on OOM). */
char *mu_render_completion(const struct mu_gen *g, const struct mu_timings *t);
char *mu_render_chunk_role(const struct mu_gen *g);
char *mu_render_chunk_token(const struct mu_gen *g, long i);
char *mu_render_chunk_finish(const struct mu_gen *g, bool with_usage,
                             const struct mu_timings *t_or_null);
char *mu_render_chunk_usage(const struct mu_gen *g, const struct mu_timings *t);
/* {"code":C,"message":M,"type":T} (llama-server's format_error_response) */
json_t *mu_error_obj(int code, const char *message, const char *type);
/* {"error":{...}}; middleware_order uses llama-server's pre-routing key
 * order {"message","type","code"} (503 Loading model / 404). */
char *mu_render_error(int code, const char *message, const char *type,
                      bool middleware_order);
char *mu_render_models(const char *model);

#endif
