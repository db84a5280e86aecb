/* chunk.c - one-pass scan of a chat.completion.chunk (see chunk.h). The
 * grammar and its limits follow jansson 2.14's load.c and utf.c rule for
 * rule, since the scan must accept and refuse exactly what json_loadb did
 * before it. */
#include "aigw/chunk.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/util.h"

#define MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH: a value nested deeper fails */
#define KEY_MAX 128    /* raw length past which a key cannot spell any key looked for */

/* What a value is to the scan: where it sits decides what is read from it. */
enum role {
    R_SKIP,                /* validated only */
    R_ROOT,                /* the top-level object */
    R_ERROR,               /* root.error: its presence is what counts */
    R_ERROR_CODE,          /* root.error.code */
    R_CODE,                /* root.code */
    R_CHOICES,             /* root.choices */
    R_CHOICE0,             /* root.choices[0] */
    R_DELTA,               /* root.choices[0].delta */
    R_USAGE,               /* root.usage */
    R_TIMINGS,             /* root.timings */
    R_MODEL,               /* root.model */
    R_CONTENT,             /* root.choices[0].delta.content */
    R_REASONING,           /* root.choices[0].delta.reasoning_content */
    R_TOOL_CALLS,          /* root.choices[0].delta.tool_calls */
    R_FINISH,              /* root.choices[0].finish_reason */
    R_PROMPT_TOKENS,       /* root.usage.prompt_tokens */
    R_COMPLETION_TOKENS,   /* root.usage.completion_tokens */
    R_PROMPT_N,            /* root.timings.prompt_n */
    R_PREDICTED_N,         /* root.timings.predicted_n */
    R_CACHE_N,             /* root.timings.cache_n */
};

struct scan {
    const unsigned char *p, *end;
    struct aigw_chunk *out;
};

static int value(struct scan *s, enum role r, int depth);

static void
skip_ws(struct scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A \u0000 escape at p (its backslash)? */
static bool
nul_escape(const unsigned char *p, const unsigned char *end)
{
    return end - p >= 6 && memcmp(p + 1, "u0000", 5) == 0;
}

/* The string at s->p (its opening quote): validated, its span in *out. A
 * key may not hold \u0000 (jansson refuses it there even with
 * JSON_ALLOW_NUL); a value may. */
static int
string(struct scan *s, struct aigw_chunk_str *out, bool key)
{
    const unsigned char *start = s->p + 1, *p = start, *end = s->end;
    bool escaped = false;

    for (;;) {
        char tmp[4], *q;
        const char *after;
        unsigned char c;

        if (p >= end)
            return -1;
        c = *p;
        if (c == '"')
            break;
        if (c < 0x20)
            return -1; /* a control character, NUL included */
        if (c >= 0x80) {
            size_t n = aigw_utf8_seq(p, (size_t)(end - p));

            if (n == 0)
                return -1;
            p += n;
            continue;
        }
        p++;
        if (c != '\\')
            continue;
        escaped = true;
        if (nul_escape(p - 1, end)) {
            if (key)
                return -1;
            p += 5;
            continue;
        }
        q = tmp; /* validated here, decoded later if wanted */
        if ((after = aigw_json_unescape((const char *)p, (const char *)end, &q)) == NULL)
            return -1;
        p = (const unsigned char *)after;
    }
    out->p = (const char *)start;
    out->len = (size_t)(p - start);
    out->escaped = escaped;
    s->p = p + 1;
    return 0;
}

/* A real's text: refused when it overflows a double, as jansson does. */
static int
real_ok(const unsigned char *p, size_t n)
{
    char small[64], *txt = n < sizeof(small) ? small : aigw_xmalloc(n + 1);
    double v;
    int rc = 0;

    memcpy(txt, p, n);
    txt[n] = '\0';
    errno = 0;
    v = strtod(txt, NULL);
    if ((v == HUGE_VAL || v == -HUGE_VAL) && errno == ERANGE)
        rc = -1;
    if (txt != small)
        free(txt);
    return rc;
}

/* The number at s->p. *iv is its value when it is an integer (*is_int),
 * which must fit a long long. */
static int
number(struct scan *s, bool *is_int, long long *iv)
{
    const unsigned char *start = s->p, *p = s->p, *end = s->end;
    bool neg = false;
    unsigned long long acc = 0, limit;

    if (*p == '-') {
        neg = true;
        p++;
    }
    limit = neg ? (unsigned long long)LLONG_MAX + 1 : (unsigned long long)LLONG_MAX;
    if (p >= end || *p < '0' || *p > '9')
        return -1;
    if (*p == '0') {
        p++;
        if (p < end && *p >= '0' && *p <= '9')
            return -1; /* a leading zero */
    } else {
        while (p < end && *p >= '0' && *p <= '9') {
            unsigned d = (unsigned)(*p - '0');

            if (acc > (limit - d) / 10)
                acc = limit + 1; /* too big: refused below if it stays an integer */
            else
                acc = acc * 10 + d;
            p++;
        }
    }
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) {
        if (*p == '.') {
            p++;
            if (p >= end || *p < '0' || *p > '9')
                return -1;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
        }
        if (p < end && (*p == 'e' || *p == 'E')) {
            p++;
            if (p < end && (*p == '+' || *p == '-'))
                p++;
            if (p >= end || *p < '0' || *p > '9')
                return -1;
            while (p < end && *p >= '0' && *p <= '9')
                p++;
        }
        if (real_ok(start, (size_t)(p - start)) < 0)
            return -1;
        *is_int = false;
    } else {
        if (acc > limit)
            return -1;
        *is_int = true;
        *iv = neg ? (acc == (unsigned long long)LLONG_MAX + 1 ? LLONG_MIN : -(long long)acc) : (long long)acc;
    }
    s->p = p;
    return 0;
}

static int
literal(struct scan *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return -1;
    s->p += n;
    return 0;
}

/* Does key (as scanned) spell word? Escaped keys are decoded first. */
static bool
key_is(const struct aigw_chunk_str *key, const char *word)
{
    size_t n = strlen(word);
    char buf[KEY_MAX + 1];

    if (!key->escaped)
        return key->len == n && memcmp(key->p, word, n) == 0;
    if (key->len > KEY_MAX)
        return false;
    return aigw_chunk_decode(key, buf) == n && memcmp(buf, word, n) == 0;
}

/* The members read, by the role of the object they are in. */
static const struct {
    enum role in;
    const char *key;
    enum role role;
} members[] = {
    {R_ROOT, "error", R_ERROR},
    {R_ROOT, "model", R_MODEL},
    {R_ROOT, "choices", R_CHOICES},
    {R_ROOT, "usage", R_USAGE},
    {R_ROOT, "timings", R_TIMINGS},
    {R_CHOICE0, "delta", R_DELTA},
    {R_CHOICE0, "finish_reason", R_FINISH},
    {R_DELTA, "content", R_CONTENT},
    {R_DELTA, "reasoning_content", R_REASONING},
    {R_DELTA, "tool_calls", R_TOOL_CALLS},
    {R_ERROR, "code", R_ERROR_CODE},
    {R_ROOT, "code", R_CODE},
    {R_USAGE, "prompt_tokens", R_PROMPT_TOKENS},
    {R_USAGE, "completion_tokens", R_COMPLETION_TOKENS},
    {R_TIMINGS, "prompt_n", R_PROMPT_N},
    {R_TIMINGS, "predicted_n", R_PREDICTED_N},
    {R_TIMINGS, "cache_n", R_CACHE_N},
};

static struct aigw_chunk_str *string_slot(struct aigw_chunk *out, enum role r);
static long *count_slot(struct aigw_chunk *out, enum role r);

/* A member of role r begins. Its value replaces whatever an earlier member
 * of the same name gave (jansson keeps the last of a repeated key), so
 * everything read from under it is cleared first. */
static void
member_begins(struct aigw_chunk *out, enum role r)
{
    static const struct aigw_chunk_str none;
    struct aigw_chunk_str *str = string_slot(out, r);
    long *count = count_slot(out, r);

    if (str != NULL)
        *str = none;
    if (count != NULL)
        *count = 0;
    switch (r) {
    case R_ERROR:
        out->error = true;
        out->error_code = 0;
        break;
    case R_CHOICES:
        out->content = out->finish_reason = out->reasoning = none;
        out->tool_calls = out->choices_empty = false;
        break;
    case R_DELTA:
        out->content = out->reasoning = none;
        out->tool_calls = false;
        break;
    case R_TOOL_CALLS:
        out->tool_calls = false;
        break;
    case R_USAGE:
        out->usage = false;
        out->prompt_tokens = out->completion_tokens = 0;
        break;
    case R_TIMINGS:
        out->timings = false;
        out->prompt_n = out->predicted_n = out->cache_n = 0;
        break;
    default:
        break;
    }
}

/* The role of the member named key in an object of role obj. */
static enum role
member(struct aigw_chunk *out, enum role obj, const struct aigw_chunk_str *key)
{
    if (obj == R_SKIP)
        return R_SKIP;
    for (size_t i = 0; i < sizeof(members) / sizeof(members[0]); i++) {
        if (members[i].in == obj && key_is(key, members[i].key)) {
            member_begins(out, members[i].role);
            return members[i].role;
        }
    }
    return R_SKIP;
}

/* After a member or element: 1 at a comma (skipped, with the whitespace
 * after it), 0 at close (skipped), -1 at anything else. */
static int
after_item(struct scan *s, unsigned char close)
{
    skip_ws(s);
    if (s->p >= s->end)
        return -1;
    if (*s->p == close) {
        s->p++;
        return 0;
    }
    if (*s->p != ',')
        return -1;
    s->p++;
    skip_ws(s);
    return 1;
}

static int
object(struct scan *s, enum role r, int depth)
{
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        struct aigw_chunk_str key;
        int more;

        if (s->p >= s->end || *s->p != '"' || string(s, &key, true) < 0)
            return -1;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':')
            return -1;
        s->p++;
        skip_ws(s);
        if (value(s, member(s->out, r, &key), depth + 1) < 0 || (more = after_item(s, '}')) < 0)
            return -1;
        if (more == 0)
            return 0;
    }
}

static int
array(struct scan *s, enum role r, int depth)
{
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        if (r == R_CHOICES)
            s->out->choices_empty = true;
        return 0;
    }
    if (r == R_TOOL_CALLS)
        s->out->tool_calls = true;
    for (bool first = true;; first = false) {
        int more;

        if (value(s, r == R_CHOICES && first ? R_CHOICE0 : R_SKIP, depth + 1) < 0 || (more = after_item(s, ']')) < 0)
            return -1;
        if (more == 0)
            return 0;
    }
}

/* Where a string of role r goes, or NULL. */
static struct aigw_chunk_str *
string_slot(struct aigw_chunk *out, enum role r)
{
    switch (r) {
    case R_MODEL:
        return &out->model;
    case R_CONTENT:
        return &out->content;
    case R_FINISH:
        return &out->finish_reason;
    case R_REASONING:
        return &out->reasoning;
    default:
        return NULL;
    }
}

/* Where an integer of role r goes, or NULL. */
static long *
count_slot(struct aigw_chunk *out, enum role r)
{
    switch (r) {
    case R_PROMPT_TOKENS:
        return &out->prompt_tokens;
    case R_COMPLETION_TOKENS:
        return &out->completion_tokens;
    case R_PROMPT_N:
        return &out->prompt_n;
    case R_PREDICTED_N:
        return &out->predicted_n;
    case R_CACHE_N:
        return &out->cache_n;
    case R_ERROR_CODE:
        return &out->error_code;
    case R_CODE:
        return &out->code;
    default:
        return NULL;
    }
}

static int
value(struct scan *s, enum role r, int depth)
{
    if (depth > MAX_DEPTH || s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '{':
        if (r == R_ROOT || r == R_ERROR || r == R_CHOICE0 || r == R_DELTA || r == R_USAGE || r == R_TIMINGS) {
            s->out->usage |= r == R_USAGE;
            s->out->timings |= r == R_TIMINGS;
            return object(s, r, depth);
        }
        return object(s, R_SKIP, depth);
    case '[':
        return array(s, r == R_CHOICES || r == R_TOOL_CALLS ? r : R_SKIP, depth);
    case '"': {
        struct aigw_chunk_str str, *slot = string_slot(s->out, r);

        if (string(s, &str, false) < 0)
            return -1;
        if (slot != NULL)
            *slot = str;
        return 0;
    }
    case 't':
        return literal(s, "true", 4);
    case 'f':
        return literal(s, "false", 5);
    case 'n':
        return literal(s, "null", 4);
    default: {
        bool is_int = false;
        long long iv = 0;
        long *slot = count_slot(s->out, r);

        if (*s->p != '-' && (*s->p < '0' || *s->p > '9'))
            return -1;
        if (number(s, &is_int, &iv) < 0)
            return -1;
        if (slot != NULL && is_int && iv > 0 && iv <= LONG_MAX)
            *slot = (long)iv;
        return 0;
    }
    }
}

int
aigw_chunk_scan(const char *json, size_t len, struct aigw_chunk *out)
{
    struct scan s = {(const unsigned char *)json, (const unsigned char *)json + len, out};

    memset(out, 0, sizeof(*out));
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return -1;
    if (value(&s, R_ROOT, 1) < 0)
        return -1;
    skip_ws(&s);
    return s.p == s.end ? 0 : -1;
}

size_t
aigw_chunk_decode(const struct aigw_chunk_str *s, char *out)
{
    const char *p = s->p, *end = p + s->len;
    char *o = out;

    while (p != NULL && p < end) {
        const char *bs = s->escaped ? memchr(p, '\\', (size_t)(end - p)) : NULL;
        size_t run = (size_t)((bs != NULL ? bs : end) - p);

        memcpy(o, p, run);
        o += run;
        p += run;
        if (p >= end)
            break;
        if (nul_escape((const unsigned char *)p, (const unsigned char *)end)) { /* 6 bytes become 3 */
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
            p += 6;
        } else { /* a backslash: the scan checked the escape, so this never fails */
            p = aigw_json_unescape(p + 1, end, &o);
        }
    }
    *o = '\0';
    return (size_t)(o - out);
}
