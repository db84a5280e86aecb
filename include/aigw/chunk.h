/* chunk.h - what aigw reads from one event of a streamed chat completion
 * (an OpenAI "chat.completion.chunk", as llama-server sends it), found in one
 * pass over the JSON text: no tree, no allocation.
 *
 * The upstream engine reads every event of every stream, and building a
 * jansson tree of ~10 members per event to look at three of them was a sixth
 * of its CPU per relayed event. The scan accepts exactly the texts that
 * json_loadb(text, len, 0, ...) accepts with an object at the top (RFC 8259
 * with jansson's rules: valid UTF-8, no unpaired surrogate escape, integers
 * within long long, reals that do not overflow, at most 2048 levels of
 * nesting, nothing but whitespace after the value), and reads a repeated
 * key's last value, as jansson does. A \u0000 escape is accepted in a
 * string value and refused in a key, as jansson does with JSON_ALLOW_NUL:
 * llama-server writes a NUL the model produced that way, and that is an
 * answer, not a broken backend; decoded, it becomes U+FFFD, since the text
 * is handled as a C string. tests/unit/test_chunk.c checks both against
 * jansson on realistic and on mutated events. */
#ifndef AIGW_CHUNK_H
#define AIGW_CHUNK_H

#include <stdbool.h>
#include <stddef.h>

/* A string member as it appears in the text: the bytes between its quotes,
 * escapes not yet decoded. p is NULL when the member is absent or not a
 * string. */
struct aigw_chunk_str {
    const char *p;
    size_t len;
    bool escaped;              /* has a backslash: decode before use */
};

struct aigw_chunk {
    bool error;                /* a top-level "error" member, whatever its value */
    long error_code;           /* error.code when a positive integer, else 0 */
    long code;                 /* a top-level "code" likewise: the payload of
                                * llama-server's own `error:` event is the
                                * error object itself */
    struct aigw_chunk_str model;          /* "model" */
    struct aigw_chunk_str content;        /* choices[0].delta.content */
    struct aigw_chunk_str finish_reason;  /* choices[0].finish_reason */
    struct aigw_chunk_str reasoning;      /* choices[0].delta.reasoning_content */
    bool tool_calls;           /* choices[0].delta.tool_calls is a non-empty array */
    bool choices_empty;        /* "choices" is an empty array */
    bool usage;                /* "usage" is an object */
    long prompt_tokens;        /* usage.prompt_tokens, completion_tokens, */
    long completion_tokens;    /* timings.prompt_n and predicted_n: the value */
    bool timings;              /* when it is a positive integer, else 0 */
    long prompt_n;             /* ("timings" is llama-server's own object) */
    long predicted_n;
    long cache_n;              /* timings.cache_n: prompt tokens the slot held already (not in prompt_n) */
};

/* Scan json[0..len). 0 when it is one JSON object, *out filled; -1 when
 * it is anything else (not JSON, or JSON but not an object). */
int aigw_chunk_scan(const char *json, size_t len, struct aigw_chunk *out);

/* Decode s (from a successful scan of text that is still alive) into out,
 * which must have room for s->len + 1 bytes (decoding never lengthens);
 * NUL-terminated; returns the decoded length. */
size_t aigw_chunk_decode(const struct aigw_chunk_str *s, char *out);

#endif
