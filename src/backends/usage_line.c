/* usage_line.c - a usage row as a spool line, and spool lines read back as
 * PostgreSQL binary arrays
 *
 * The writer used to send a tenant's lines as one JSON array for
 * jsonb_populate_recordset; PostgreSQL spent much of its ~25 us per row
 * turning JSON into typed records. Here the lines are read in aigw instead
 * (~0.25 us per line), by a strict reader for exactly the shape
 * aigw_usage_line writes, into one binary array per column for unnest()
 * (~13.5 us per row in PostgreSQL). Anything else (an older format, a
 * hand-edited line, a value PostgreSQL might read differently) is refused
 * here and left to the JSON statement, so the arrays never say something the
 * JSON would not. No allocation per line or field: the arrays' buffers grow
 * and are reused. */
#include "aigw/usage_line.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/jsonw.h"
#include "aigw/util.h"

#define ARRAY_HEADER 20         /* ndim, has-null flag, element type, length, lower bound */
#define PG_EPOCH_DAYS 10957     /* 1970-01-01 to 2000-01-01, PostgreSQL's timestamp epoch */
#define ARRAY_MAX ((size_t)INT32_MAX)

enum ctype { C_UUID, C_TEXT, C_INT4, C_BOOL, C_TSTZ };

/* Element and array type OIDs (pg_type.dat), by enum ctype. */
static const Oid ELEM_OID[] = {2950, 25, 23, 16, 1184};
static const Oid ARRAY_OID[] = {2951, 1009, 1007, 1000, 1185};

#define COL(lead, type) {lead, sizeof(lead) - 1, type}

/* What precedes each value in a line and the column's type, in
 * AIGW_USAGE_COLUMNS order (aigw_usage_line writes the keys in this order). */
static const struct {
    const char *lead;
    size_t lead_len;
    enum ctype type;
} COLS[AIGW_USAGE_NCOLS] = {
    COL("{\"id\":", C_UUID),
    COL(",\"tenant_id\":", C_UUID),
    COL(",\"user_id\":", C_TEXT),
    COL(",\"api_key_id\":", C_UUID),
    COL(",\"request_id\":", C_TEXT),
    COL(",\"route\":", C_TEXT),
    COL(",\"query_type\":", C_TEXT),
    COL(",\"question_sha256\":", C_TEXT),
    COL(",\"model\":", C_TEXT),
    COL(",\"prompt_tokens\":", C_INT4),
    COL(",\"completion_tokens\":", C_INT4),
    COL(",\"from_cache\":", C_BOOL),
    COL(",\"billed\":", C_BOOL),
    COL(",\"status_code\":", C_INT4),
    COL(",\"success\":", C_BOOL),
    COL(",\"error_code\":", C_TEXT),
    COL(",\"response_ms\":", C_INT4),
    COL(",\"upstream_ms\":", C_INT4),
    COL(",\"created_at\":", C_TSTZ),
};

#undef COL

/* ---- writing ---- */

/* RFC 3339 UTC with microseconds, e.g. 2026-01-02T03:04:05.123456Z */
static void
format_ts(int64_t us, char out[40])
{
    int64_t frac = us % 1000000, secs = us / 1000000;

    if (frac < 0) {
        frac += 1000000;
        secs--;
    }
    aigw_utc_datetime(secs, out);
    out[19] = '.';
    for (int i = 25; i >= 20; i--, frac /= 10)
        out[i] = (char)('0' + frac % 10);
    out[26] = 'Z';
    out[27] = '\0';
}

/* A token count as the int4 column takes it: a model server that reports
 * more than 2^31 - 1 tokens (or a cache entry holding such a count) must
 * not get a billed row refused by PostgreSQL for good. */
static long
int4_clamp(long v)
{
    return v > INT32_MAX ? INT32_MAX : v < INT32_MIN ? INT32_MIN : v;
}

char *
aigw_usage_line(const struct aigw_usage_row *r, size_t *len)
{
    struct aigw_jsonw w;
    char ts[40];

    format_ts(r->created_at_us, ts);
    aigw_jsonw_init(&w, 640);
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "id", r->id);
    aigw_jsonw_kstr(&w, "tenant_id", r->tenant_id);
    aigw_jsonw_kstr(&w, "user_id", r->user_id);
    aigw_jsonw_kstr(&w, "api_key_id", r->api_key_id);
    aigw_jsonw_kstr(&w, "request_id", r->request_id);
    aigw_jsonw_kstr(&w, "route", r->route);
    aigw_jsonw_kstr(&w, "query_type", r->query_type);
    aigw_jsonw_kstr(&w, "question_sha256", r->question_sha256);
    aigw_jsonw_kstr(&w, "model", r->model);
    aigw_jsonw_kint(&w, "prompt_tokens", int4_clamp(r->prompt_tokens));
    aigw_jsonw_kint(&w, "completion_tokens", int4_clamp(r->completion_tokens));
    aigw_jsonw_kbool(&w, "from_cache", r->from_cache);
    aigw_jsonw_kbool(&w, "billed", r->billed);
    aigw_jsonw_kint(&w, "status_code", r->status_code);
    aigw_jsonw_kbool(&w, "success", r->success);
    aigw_jsonw_kstr(&w, "error_code", r->error_code);
    aigw_jsonw_kint(&w, "response_ms", r->response_ms);
    aigw_jsonw_key(&w, "upstream_ms");
    if (r->upstream_ms < 0)
        aigw_jsonw_null(&w);
    else
        aigw_jsonw_int(&w, r->upstream_ms);
    aigw_jsonw_kstr(&w, "created_at", ts);
    aigw_jsonw_obj_close(&w);
    aigw_jsonw_append(&w, "\n", 1);
    return aigw_jsonw_take(&w, len);
}

/* ---- the arrays ---- */

static void
put_be32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static void
put_be64(char *p, uint64_t v)
{
    put_be32(p, (uint32_t)(v >> 32));
    put_be32(p + 4, (uint32_t)v);
}

/* Room for more bytes at the end of c's array; NULL past what one parameter
 * can hold (the length is an int). */
static char *
room(struct aigw_usage_array *c, size_t more)
{
    size_t cap = c->cap ? c->cap : 4096;

    if (more > ARRAY_MAX - c->len)
        return NULL;
    if (c->len + more > c->cap) {
        while (cap < c->len + more)
            cap *= 2;
        c->buf = aigw_xrealloc(c->buf, cap);
        c->cap = cap;
    }
    return c->buf + c->len;
}

/* A NULL element. */
static bool
put_null(struct aigw_usage_array *c)
{
    char *out = room(c, 4);

    if (out == NULL)
        return false;
    put_be32(out, UINT32_MAX); /* length -1 */
    c->len += 4;
    c->has_null = true;
    return true;
}

/* An element of n bytes whose contents the caller writes at the result. */
static char *
put_elem(struct aigw_usage_array *c, uint32_t n)
{
    char *out = room(c, 4 + (size_t)n);

    if (out == NULL)
        return NULL;
    put_be32(out, n);
    c->len += 4 + (size_t)n;
    return out + 4;
}

/* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" -> 16 bytes; the end of the value or NULL. */
static const char *
read_uuid(struct aigw_usage_array *c, const char *p, const char *end)
{
    unsigned char raw[16];
    const char *s = p + 1;
    char *out;
    int k = 0;

    if (end - p < 38 || p[0] != '"' || p[37] != '"')
        return NULL;
    for (int i = 0; i < 36;) {
        int hi, lo;

        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i++] != '-')
                return NULL;
            continue;
        }
        hi = aigw_hexval(s[i]);
        lo = aigw_hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return NULL;
        raw[k++] = (unsigned char)(hi << 4 | lo);
        i += 2;
    }
    if ((out = put_elem(c, 16)) == NULL)
        return NULL;
    memcpy(out, raw, 16);
    return p + 38;
}

/* A JSON string, unescaped, as a text element. Raw control characters are
 * refused as JSON refuses them; other bytes pass as they are (PostgreSQL
 * checks the encoding of a binary text value as it does of JSON text). */
static const char *
read_text(struct aigw_usage_array *c, const char *p, const char *end)
{
    char *out, *q;

    if (p >= end || *p++ != '"')
        return NULL;
    /* the text is at most as long as its JSON: reserve that, trim after */
    if ((out = room(c, 4 + (size_t)(end - p))) == NULL)
        return NULL;
    q = out + 4;
    while (p < end) {
        unsigned char ch = (unsigned char)*p++;

        if (ch == '"') {
            put_be32(out, (uint32_t)(q - out - 4));
            c->len += (size_t)(q - out);
            return p;
        }
        if (ch < 0x20)
            return NULL;
        if (ch != '\\')
            *q++ = (char)ch;
        else if ((p = aigw_json_unescape(p, end, &q)) == NULL)
            return NULL;
    }
    return NULL;
}

/* A JSON integer (no fraction, exponent or leading zero) in int4 range. */
static const char *
read_int4(struct aigw_usage_array *c, const char *p, const char *end)
{
    bool neg = p < end && *p == '-';
    const char *s = p + neg;
    int64_t v = 0;
    char *out;

    for (p = s; p < end && p - s <= 10 && *p >= '0' && *p <= '9'; p++)
        v = v * 10 + (*p - '0');
    if (p == s || p - s > 10 || (*s == '0' && p - s > 1))
        return NULL;
    if (neg)
        v = -v;
    if (v < INT32_MIN || v > INT32_MAX || (out = put_elem(c, 4)) == NULL)
        return NULL;
    put_be32(out, (uint32_t)(int32_t)v);
    return p;
}

static const char *
read_bool(struct aigw_usage_array *c, const char *p, const char *end)
{
    bool t = end - p >= 4 && memcmp(p, "true", 4) == 0;
    char *out;

    if (!t && !(end - p >= 5 && memcmp(p, "false", 5) == 0))
        return NULL;
    if ((out = put_elem(c, 1)) == NULL)
        return NULL;
    *out = t ? 1 : 0;
    return p + (t ? 4 : 5);
}

/* n decimal digits at p as a number, or -1. */
static int
digits(const char *p, int n)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" (years 0001-9999, no leap second) as
 * timestamptz: microseconds since 2000-01-01 00:00:00 UTC. */
static const char *
read_tstz(struct aigw_usage_array *c, const char *p, const char *end)
{
    const char *s = p + 1;
    int y, mo, d, h, mi, sec, us, cy, cm, cd;
    int64_t days, v;
    char *out;

    if (end - p < 29 || p[0] != '"' || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' ||
        s[16] != ':' || s[19] != '.' || s[26] != 'Z' || s[27] != '"')
        return NULL;
    y = digits(s, 4);
    mo = digits(s + 5, 2);
    d = digits(s + 8, 2);
    h = digits(s + 11, 2);
    mi = digits(s + 14, 2);
    sec = digits(s + 17, 2);
    us = digits(s + 20, 6);
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || sec < 0 ||
        sec > 59 || us < 0)
        return NULL;
    days = aigw_days_from_civil(y, mo, d);
    aigw_civil_from_days(days, &cy, &cm, &cd);
    if (cy != y || cm != mo || cd != d) /* no such day, e.g. 02-30 */
        return NULL;
    days -= PG_EPOCH_DAYS;
    v = ((days * 24 + h) * 60 + mi) * 60 + sec;
    if ((out = put_elem(c, 8)) == NULL)
        return NULL;
    put_be64(out, (uint64_t)(v * 1000000 + us));
    return p + 29;
}

/* One value of a column of type t at p; the rest of the line or NULL. */
static const char *
read_value(struct aigw_usage_array *c, enum ctype t, const char *p, const char *end)
{
    if (end - p >= 4 && memcmp(p, "null", 4) == 0)
        return put_null(c) ? p + 4 : NULL;
    switch (t) {
    case C_UUID:
        return read_uuid(c, p, end);
    case C_TEXT:
        return read_text(c, p, end);
    case C_INT4:
        return read_int4(c, p, end);
    case C_BOOL:
        return read_bool(c, p, end);
    case C_TSTZ:
        return read_tstz(c, p, end);
    }
    return NULL;
}

void
aigw_usage_arrays_reset(struct aigw_usage_arrays *a)
{
    a->n = 0;
    for (int i = 0; i < AIGW_USAGE_NCOLS; i++) {
        struct aigw_usage_array *c = &a->col[i];

        c->len = 0;
        c->has_null = false;
        room(c, ARRAY_HEADER); /* filled in by finish */
        c->len = ARRAY_HEADER;
    }
}

bool
aigw_usage_arrays_add(struct aigw_usage_arrays *a, const char *line, size_t len)
{
    const char *p = line, *end = line + len;

    if (a->n == INT32_MAX)
        return false;
    for (int i = 0; i < AIGW_USAGE_NCOLS; i++) {
        if ((size_t)(end - p) < COLS[i].lead_len || memcmp(p, COLS[i].lead, COLS[i].lead_len) != 0)
            return false;
        p = read_value(&a->col[i], COLS[i].type, p + COLS[i].lead_len, end);
        if (p == NULL)
            return false;
    }
    if (end - p != 1 || *p != '}')
        return false;
    a->n++;
    return true;
}

void
aigw_usage_arrays_finish(struct aigw_usage_arrays *a, Oid types[AIGW_USAGE_NCOLS],
                         const char *values[AIGW_USAGE_NCOLS], int lengths[AIGW_USAGE_NCOLS])
{
    for (int i = 0; i < AIGW_USAGE_NCOLS; i++) {
        struct aigw_usage_array *c = &a->col[i];
        char *h = c->buf;

        put_be32(h, a->n > 0 ? 1 : 0); /* an empty array has no dimension */
        put_be32(h + 4, c->has_null ? 1 : 0);
        put_be32(h + 8, ELEM_OID[COLS[i].type]);
        put_be32(h + 12, (uint32_t)a->n);
        put_be32(h + 16, 1);
        types[i] = ARRAY_OID[COLS[i].type];
        values[i] = c->buf;
        lengths[i] = a->n > 0 ? (int)c->len : 12;
    }
}

void
aigw_usage_arrays_free(struct aigw_usage_arrays *a)
{
    for (int i = 0; i < AIGW_USAGE_NCOLS; i++) {
        free(a->col[i].buf);
        a->col[i] = (struct aigw_usage_array){0};
    }
    a->n = 0;
}
