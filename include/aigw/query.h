/* query.h - state of one AI query as it moves through the stages, and the
 * pure helpers that shape it (normalization, classification, PII guard, keys) */
#ifndef AIGW_QUERY_H
#define AIGW_QUERY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aigw/http.h"

#define AIGW_QUESTION_MAX_CHARS 4000

struct aigw_upstream_call;
struct redisReply;
struct aigw_req;

enum aigw_sf_role { AIGW_SF_NONE, AIGW_SF_LEADER, AIGW_SF_WAITER };

/* Everything the query stages learn; pool-allocated, owned by the request. */
struct aigw_resv_file;

struct aigw_query {
    /* request */
    const char *question;      /* trimmed */
    char *normalized;          /* trimmed, white space collapsed, ASCII case folded */
    int qtype;                 /* index into aigw_query_type_names */
    bool stream;
    bool no_cache;             /* Cache-Control: no-cache */
    const char *route_label;   /* "query" or "recommendation" */
    char question_sha256[65];  /* of the normalized question: the usage row keeps only this */
    char cache_hex[65];        /* SHA-256 over route, tenant, query type, question, model, max_tokens */

    /* admission (one Redis round trip on the pipe, the request suspended
     * meanwhile: rate limit + generation + cache GET) */
    bool admit_sent;           /* the script call is on the pipe */
    atomic_int admit_done;     /* its callback ran: admit_reply is the answer */
    struct redisReply *admit_reply; /* NULL = Redis unavailable; freed with the request */
    bool admitted;
    long rl_limit, rl_remaining, rl_reset_s;
    char gen[24];
    char *cached;              /* cached answer JSON text, or NULL */
    long quota_used;           /* this month's counter as admission saw it (after its reservation,
                                * when it made one); -1 = missing */
    int sf_pre;                /* single-flight answer of the admission script: -1 none, 0 someone
                                * else leads, 1 this request leads, 2 result in sf_pre_result */
    char *sf_pre_result;
    int quota_pre;             /* quota answer of the admission script: -1 none, -2 counter
                                * missing, 0 exhausted, 1 reserved */

    /* idempotency */
    char *idem_key;            /* Redis key, NULL when no Idempotency-Key */
    char idem_fp[65];          /* fingerprint of the request body */
    bool idem_owner;           /* this request wrote the pending record */
    char *idem_pending;        /* its value: "P" fingerprint usage id */
    int64_t idem_until_ms;     /* the pending record has expired by then */

    /* single-flight */
    enum aigw_sf_role sf_role;
    char *sf_lock_key, *sf_result_key;
    int64_t sf_deadline_ms;
    atomic_int sf_state;       /* 0 waiting, 1 result ready, 2 retry (leader gone), 3 timed out */
    char *sf_result;           /* malloc'd by the poller; freed with the request */
    bool sf_registered;        /* the cleanup of sf_result is registered */

    /* quota */
    bool quota_reserved;
    bool redis_lost;           /* a script that may reserve or lock had no reply: aigw_quota_abandon */
    struct aigw_resv_file *resv; /* the journal file the reservation is in (NULL: none) */
    long queries_remaining;    /* -1 unlimited */

    /* upstream */
    struct aigw_upstream_call *call;
    atomic_int call_done;
    int64_t stream_submit_ms;  /* monotonic ms a stream's call was submitted (its time if the client leaves) */

    /* the OpenAI route: the body sent upstream (policy applied), else NULL */
    char *chat_body;
    bool chat_usage;           /* the client asked for stream_options.include_usage */
    bool no_store;             /* never cached nor coalesced (sampled or streamed OpenAI requests) */
    /* answers this request from the outcome fields (cache hit, coalesced) */
    enum aigw_rc (*respond)(struct aigw_req *req);

    /* outcome */
    const char *raw;           /* the upstream's answer body as received (OpenAI route, fresh) */
    const char *finish_reason;
    bool thinking;             /* the fresh answer has a thinking model's reasoning_content (OpenAI route) */
    const char *answer;
    const char *answer_json;   /* the answer already as a JSON string (cache hits), or NULL */
    const char *model;
    long prompt_tokens, completion_tokens;
    long upstream_ms;          /* -1 when no upstream call */
    bool from_cache;           /* served from the cache or a coalesced result: not billed */
    bool billed;
};

/* Trimmed, white space runs (ASCII white space and the Unicode spaces of
 * aigw_utf8_is_blank) collapsed to one space, ASCII letters lower-cased.
 * Returns a malloc'd string. */
char *aigw_query_normalize(const char *q);
/* Number of UTF-8 code points in s (s is valid UTF-8). */
size_t aigw_utf8_chars(const char *s);
/* Whether s (valid UTF-8) holds a control character: C0 (U+0000..U+001F),
 * DEL or C1 (U+0080..U+009F, such as NEL and the 8-bit CSI). */
bool aigw_utf8_has_control(const char *s);
/* Whether s (valid UTF-8) is empty or only white space: ASCII space and
 * tab, and the Unicode spaces (U+00A0, U+1680, U+2000..U+200A, U+2028,
 * U+2029, U+202F, U+205F, U+3000). */
bool aigw_utf8_is_blank(const char *s);
/* s (valid UTF-8) without the white space at its ends: ASCII white space
 * (isspace) and the Unicode spaces of aigw_utf8_is_blank. Returns a pointer
 * into s and sets *len to the trimmed length in bytes (0 when s is blank).
 * Cannot fail. */
const char *aigw_utf8_trim(const char *s, size_t *len);
/* Whether s (valid UTF-8) has a character that shows: one that is neither
 * white space (as aigw_utf8_trim's), a control character (C0, DEL, C1) nor
 * one of Unicode's default-ignorable code points (zero-width space and
 * joiners, word joiner, BOM, soft hyphen, direction marks, variation
 * selectors, tags, ...). Stops at the first such character. */
bool aigw_utf8_has_visible(const char *s);
/* Query type index for a question with no explicit type (API rules): its
 * keywords matched whole on the words aigw_query_asks_pii reads. */
int aigw_query_classify(const char *normalized);
/* Whether the answer has parts the shape a cached or coalesced answer is
 * rebuilt in lacks: tool calls (finish_reason "tool_calls") or a thinking
 * model's reasoning_content. Such an answer is neither cached nor handed
 * to single-flight waiters. */
bool aigw_query_fresh_only(const struct aigw_query *q);
/* True when a patient-analytics question asks for personal identifiers:
 * the words matched whole, plurals too, whatever separates them (spaces,
 * hyphens, punctuation, Unicode spaces, or nothing: "dateofbirth"), the
 * invisible (default-ignorable) characters ignored. */
bool aigw_query_asks_pii(const char *normalized);
/* Hex SHA-256 of the cache identity: route (chat: the OpenAI route, whose
 * "question" is the canonical JSON it forwards; else the query routes),
 * tenant, query type, normalized question, model and max_tokens (the
 * generation is part of the Redis key). */
void aigw_query_cache_hex(bool chat, const char *tenant_id, int qtype, const char *normalized, const char *model,
                          int max_tokens, char out[65]);

#endif
