/* test_usage_line.c - the usage spool line read back as PostgreSQL binary
 * arrays: every column's value, NULLs, escapes, timestamps, the array
 * headers, and the lines the strict reader must leave to the JSON statement */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/usage_line.h"
#include "aigw/util.h"
#include "testlib.h"

#define PG_EPOCH_US 946684800000000LL /* 2000-01-01 in Unix microseconds */
#define TENANT "0b6e2c1d-3f4a-4b5c-8d6e-7f8091a2b3c4"

enum { C_ID, C_TENANT, C_USER, C_KEY, C_REQ, C_ROUTE, C_QTYPE, C_SHA, C_MODEL, C_PTOK, C_CTOK, C_CACHE,
       C_BILLED, C_STATUS, C_SUCCESS, C_ERR, C_RESP, C_UPS, C_CREATED };

static const Oid ELEM[AIGW_USAGE_NCOLS] = {2950, 2950, 25, 2950, 25, 25, 25, 25, 25, 23,
                                          23,   16,   16, 23,   16, 25, 23, 23, 1184};
static const Oid ARRAY[AIGW_USAGE_NCOLS] = {2951, 2951, 1009, 2951, 1009, 1009, 1009, 1009, 1009, 1007,
                                           1007, 1000, 1000, 1007, 1000, 1009, 1007, 1007, 1185};

static uint32_t
be32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;

    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

static int64_t
be64(const char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* Element row of column col: its bytes (NULL for an SQL NULL), length in *len. */
static const char *
elem(const struct aigw_usage_arrays *a, int col, int row, int *len)
{
    const char *p = a->col[col].buf + 20;

    for (int i = 0;; i++) {
        int32_t n = (int32_t)be32(p);

        if (i == row) {
            *len = n;
            return n < 0 ? NULL : p + 4;
        }
        p += 4 + (n < 0 ? 0 : n);
    }
}

static bool
elem_null(const struct aigw_usage_arrays *a, int col, int row)
{
    int len;

    return elem(a, col, row, &len) == NULL && len == -1;
}

/* Text/uuid-as-text comparisons: s NULL means an SQL NULL. */
static bool
elem_text(const struct aigw_usage_arrays *a, int col, int row, const char *s)
{
    int len;
    const char *p = elem(a, col, row, &len);

    if (s == NULL)
        return p == NULL;
    return p != NULL && (size_t)len == strlen(s) && memcmp(p, s, (size_t)len) == 0;
}

static bool
elem_uuid(const struct aigw_usage_arrays *a, int col, int row, const char *uuid)
{
    char hex[33];
    int len, k = 0;
    const char *p = elem(a, col, row, &len);

    if (uuid == NULL)
        return p == NULL;
    if (p == NULL || len != 16)
        return false;
    for (int i = 0; i < 16; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)p[i]);
    for (const char *u = uuid; *u; u++) {
        if (*u == '-')
            continue;
        if ((*u | 0x20) != hex[k++])
            return false;
    }
    return k == 32;
}

static bool
elem_int4(const struct aigw_usage_arrays *a, int col, int row, long v)
{
    int len;
    const char *p = elem(a, col, row, &len);

    return p != NULL && len == 4 && (int32_t)be32(p) == v;
}

static bool
elem_bool(const struct aigw_usage_arrays *a, int col, int row, bool v)
{
    int len;
    const char *p = elem(a, col, row, &len);

    return p != NULL && len == 1 && *p == (v ? 1 : 0);
}

static bool
elem_tstz(const struct aigw_usage_arrays *a, int col, int row, int64_t pg_us)
{
    int len;
    const char *p = elem(a, col, row, &len);

    return p != NULL && len == 8 && be64(p) == pg_us;
}

/* Read the row's own line into a; false if the reader refused it. */
static bool
add_row(struct aigw_usage_arrays *a, const struct aigw_usage_row *r)
{
    size_t len;
    char *line = aigw_usage_line(r, &len);
    bool ok = len > 0 && line[len - 1] == '\n' && aigw_usage_arrays_add(a, line, len - 1);

    free(line);
    return ok;
}

/* Every column of element row equals r. */
static void
check_row(const struct aigw_usage_arrays *a, int row, const struct aigw_usage_row *r)
{
    CHECK(elem_uuid(a, C_ID, row, r->id), "row %d id", row);
    CHECK(elem_uuid(a, C_TENANT, row, r->tenant_id), "row %d tenant_id", row);
    CHECK(elem_text(a, C_USER, row, r->user_id), "row %d user_id", row);
    CHECK(elem_uuid(a, C_KEY, row, r->api_key_id), "row %d api_key_id", row);
    CHECK(elem_text(a, C_REQ, row, r->request_id), "row %d request_id", row);
    CHECK(elem_text(a, C_ROUTE, row, r->route), "row %d route", row);
    CHECK(elem_text(a, C_QTYPE, row, r->query_type), "row %d query_type", row);
    CHECK(elem_text(a, C_SHA, row, r->question_sha256), "row %d question_sha256", row);
    CHECK(elem_text(a, C_MODEL, row, r->model), "row %d model", row);
    CHECK(elem_int4(a, C_PTOK, row, r->prompt_tokens), "row %d prompt_tokens", row);
    CHECK(elem_int4(a, C_CTOK, row, r->completion_tokens), "row %d completion_tokens", row);
    CHECK(elem_bool(a, C_CACHE, row, r->from_cache), "row %d from_cache", row);
    CHECK(elem_bool(a, C_BILLED, row, r->billed), "row %d billed", row);
    CHECK(elem_int4(a, C_STATUS, row, r->status_code), "row %d status_code", row);
    CHECK(elem_bool(a, C_SUCCESS, row, r->success), "row %d success", row);
    CHECK(elem_text(a, C_ERR, row, r->error_code), "row %d error_code", row);
    CHECK(elem_int4(a, C_RESP, row, r->response_ms), "row %d response_ms", row);
    if (r->upstream_ms < 0)
        CHECK(elem_null(a, C_UPS, row), "row %d upstream_ms NULL", row);
    else
        CHECK(elem_int4(a, C_UPS, row, r->upstream_ms), "row %d upstream_ms", row);
    CHECK(elem_tstz(a, C_CREATED, row, r->created_at_us - PG_EPOCH_US), "row %d created_at", row);
}

/* Array headers after finish: ndim 1, the has-null flag, element type,
 * n elements from 1; the parameters describe the buffers. */
static void
check_headers(struct aigw_usage_arrays *a, int n, const bool has_null[AIGW_USAGE_NCOLS])
{
    const char *values[AIGW_USAGE_NCOLS];
    int lengths[AIGW_USAGE_NCOLS];
    Oid types[AIGW_USAGE_NCOLS];

    aigw_usage_arrays_finish(a, types, values, lengths);
    for (int c = 0; c < AIGW_USAGE_NCOLS; c++) {
        const char *h = values[c];

        CHECK(types[c] == ARRAY[c], "column %d array type %u", c, types[c]);
        CHECK(h == a->col[c].buf && lengths[c] == (int)a->col[c].len, "column %d parameter", c);
        CHECK(be32(h) == 1 && be32(h + 4) == (has_null[c] ? 1u : 0u) && be32(h + 8) == ELEM[c] &&
                  be32(h + 12) == (uint32_t)n && be32(h + 16) == 1,
              "column %d header: ndim %u null %u oid %u n %u lb %u", c, be32(h), be32(h + 4), be32(h + 8),
              be32(h + 12), be32(h + 16));
    }
}

static void
base_row(struct aigw_usage_row *r)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->id, sizeof(r->id), "%s", "019a1b2c-3d4e-7f60-8a1b-2c3d4e5f6071");
    snprintf(r->tenant_id, sizeof(r->tenant_id), "%s", TENANT);
    r->user_id = "user-1";
    r->api_key_id = "6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B";
    r->request_id = "req-1";
    r->route = "/api/ai/query";
    r->query_type = "knowledge";
    r->question_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    r->model = "m";
    r->prompt_tokens = 10;
    r->completion_tokens = 20;
    r->billed = true;
    r->status_code = 200;
    r->success = true;
    r->response_ms = 5;
    r->upstream_ms = 4;
    r->created_at_us = 1767323045123456LL; /* 2026-01-02T03:04:05.123456Z */
}

/* Three rows through aigw_usage_line and back: all values, NULLs, odd text. */
static void
test_round_trip(struct aigw_usage_arrays *a)
{
    struct aigw_usage_row r[3];
    bool has_null[AIGW_USAGE_NCOLS] = {false};

    base_row(&r[0]);
    base_row(&r[1]);
    r[1].user_id = "q\"uote b\\ack s/ash \xc3\xbc \xe6\x97\xa5 \xf0\x9f\x98\x80 ctl\x01\x1f tab\t nl\n\x7f";
    r[1].api_key_id = NULL;
    r[1].query_type = NULL;
    r[1].question_sha256 = NULL;
    r[1].model = "";
    r[1].prompt_tokens = 2147483647;
    r[1].completion_tokens = -2147483647 - 1;
    r[1].from_cache = true;
    r[1].billed = false;
    r[1].status_code = 504;
    r[1].success = false;
    r[1].error_code = "upstream_timeout";
    r[1].response_ms = 0;
    r[1].upstream_ms = -1;
    r[1].created_at_us = 946684799999999LL; /* 1999-12-31T23:59:59.999999Z: before PostgreSQL's epoch */
    base_row(&r[2]);
    r[2].id[0] = 'F';
    r[2].user_id = NULL;
    r[2].upstream_ms = 0;
    r[2].created_at_us = 1709208000000001LL; /* 2024-02-29T12:00:00.000001Z */
    has_null[C_USER] = has_null[C_KEY] = has_null[C_QTYPE] = has_null[C_SHA] = has_null[C_UPS] = true;
    has_null[C_ERR] = true;

    aigw_usage_arrays_reset(a);
    for (int i = 0; i < 3; i++)
        CHECK(add_row(a, &r[i]), "row %d read", i);
    CHECK(a->n == 3, "3 elements: %d", a->n);
    for (int i = 0; i < 3; i++)
        check_row(a, i, &r[i]);
    check_headers(a, 3, has_null);

    /* the buffers are reused: a reset starts empty again */
    aigw_usage_arrays_reset(a);
    CHECK(add_row(a, &r[0]), "row read after a reset");
    check_row(a, 0, &r[0]);
    memset(has_null, 0, sizeof(has_null));
    has_null[C_ERR] = true; /* the base row has no error_code */
    check_headers(a, 1, has_null);
}

/* Token counts past int4 (a model server's word, or a cache entry holding
 * it) are written as the nearest int4, so the billed row is not refused. */
static void
test_token_clamp(struct aigw_usage_arrays *a)
{
    struct aigw_usage_row r, want;

    base_row(&r);
    r.prompt_tokens = 3000000000L;
    r.completion_tokens = -3000000000L;
    want = r;
    want.prompt_tokens = 2147483647;
    want.completion_tokens = -2147483647 - 1;
    aigw_usage_arrays_reset(a);
    CHECK(add_row(a, &r), "a row with counts past int4 is read");
    CHECK(a->n == 1, "1 element: %d", a->n);
    check_row(a, 0, &want);
}

/* created_at across the calendar: aigw_usage_line's timestamp read back to
 * the microsecond (1900-01-01 to 9999-12-31, every month's end, leap days). */
static void
test_timestamps(struct aigw_usage_arrays *a)
{
    static const int64_t fixed[] = {
        -2208988800000000LL,  /* 1900-01-01T00:00:00.000000Z */
        -1LL,                 /* 1969-12-31T23:59:59.999999Z */
        0, 1,                 /* 0 in a row means now for aigw_usage_record, not here */
        951782400000000LL,    /* 2000-02-29 */
        4107542399999999LL,   /* 2100-02-28T23:59:59.999999Z */
        4107542400000000LL,   /* 2100-03-01 (2100 is no leap year) */
        253402300799999999LL, /* 9999-12-31T23:59:59.999999Z */
    };
    struct aigw_usage_row r;
    uint64_t x = 88172645463325252ULL;
    int bad = 0, n = 0;

    base_row(&r);
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]) + 20000; i++) {
        if (i < sizeof(fixed) / sizeof(fixed[0])) {
            r.created_at_us = fixed[i];
        } else {
            x ^= x << 13; /* xorshift64 */
            x ^= x >> 7;
            x ^= x << 17;
            r.created_at_us = -2208988800000000LL + (int64_t)(x % 255611289600000000ULL);
        }
        aigw_usage_arrays_reset(a);
        if (!add_row(a, &r) || !elem_tstz(a, C_CREATED, 0, r.created_at_us - PG_EPOCH_US)) {
            if (bad++ < 5)
                CHECK(false, "created_at %lld read back", (long long)r.created_at_us);
        }
        n++;
    }
    CHECK(bad == 0, "%d of %d timestamps read back wrong", bad, n);
}

/* A line of the spool's shape with user_id's JSON text replaced by json. */
static char *
line_with_user(const char *json)
{
    struct aigw_usage_row r;
    char *line, *out, *at;
    size_t len;

    base_row(&r);
    r.user_id = "@@";
    line = aigw_usage_line(&r, &len);
    line[len - 1] = '\0';
    at = strstr(line, "\"@@\"");
    out = tl_sprintf("%.*s%s%s", (int)(at - line), line, json, at + 4);
    free(line);
    return out;
}

/* JSON escapes decoded as jansson decodes them (the same as jsonb). */
static void
test_escapes(struct aigw_usage_arrays *a)
{
    static const char *const ok[] = {
        "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"",
        "\"\\u0001\\u001F\\u007f\\u00e9\\u00E9\\u20ac\\uFFFF\"",
        "\"\\ud83d\\ude00 \\uD800\\uDC00 \\udbff\\udfff\"",
        "\"raw \xc3\xbc \xe6\x97\xa5 \xf0\x9f\x98\x80 \x7f\"",
        "\"\"",
    };

    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char *line = line_with_user(ok[i]);
        json_t *o = json_loads(line, 0, NULL);
        const char *want = json_string_value(json_object_get(o, "user_id"));
        int len;
        const char *got;

        aigw_usage_arrays_reset(a);
        CHECK(want != NULL, "jansson reads %s", line);
        CHECK(aigw_usage_arrays_add(a, line, strlen(line)), "escapes read: %s", ok[i]);
        got = elem(a, C_USER, 0, &len);
        CHECK(want != NULL && got != NULL && (size_t)len == strlen(want) && memcmp(got, want, strlen(want)) == 0,
              "decoded like jansson: %s", ok[i]);
        json_decref(o);
        free(line);
    }
}

/* base (the spool's own line) with the first from replaced by to. */
static char *
mutate(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);

    if (at == NULL)
        return NULL;
    return tl_sprintf("%.*s%s%s", (int)(at - base), base, to, at + strlen(from));
}

struct edit {
    const char *from, *to;
};

/* Lines a strict reader must refuse (the JSON statement judges them), and
 * near misses it must take. */
static void
test_shapes(struct aigw_usage_arrays *a)
{
    static const struct edit refused[] = {
        {"{\"id\"", "{ \"id\""},
        {"\"id\":", "\"id\" :"},
        {",\"route\":\"/api/ai/query\"", ""},                         /* a missing key */
        {",\"model\":\"m\"", ",\"model\":\"m\",\"extra\":1"},        /* an extra key */
        {"\"route\":\"/api/ai/query\",\"query_type\":\"knowledge\"", /* keys swapped */
         "\"query_type\":\"knowledge\",\"route\":\"/api/ai/query\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T03:04:05.123456+00:00\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T03:04:05.123456z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T03:04:05Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T03:04:05.123Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02 03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-02-29T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2024-02-30T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-04-31T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-13-02T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-00-02T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-00T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T24:00:00.000000Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T23:60:00.000000Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T23:59:60.000000Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"0000-01-02T03:04:05.123456Z\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T03:04:05.12345xZ\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "1767323045"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":1.0"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":1e3"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":010"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":-"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":+10"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":2147483648"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":-2147483649"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":99999999999999999999"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":\"10\""},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":true"},
        {"\"billed\":true", "\"billed\":1"},
        {"\"billed\":true", "\"billed\":\"true\""},
        {"\"billed\":true", "\"billed\":tru"},
        {"\"billed\":true", "\"billed\":nul"},
        {"\"user_id\":\"user-1\"", "\"user_id\":5"},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"a\x01z\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"a\\u0000z\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\ud83d\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\ude00\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\ud83d\\u0041\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\ude00\\ud83d\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\x41\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\u12\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\u12g4\""},
        {"\"user_id\":\"user-1\"", "\"user_id\":\"\\'\""},
        {"\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B\"", "\"api_key_id\":\"not-a-uuid\""},
        {"\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B\"",
         "\"api_key_id\":\"{6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B}\""},
        {"\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B\"",
         "\"api_key_id\":\"6F1D2C3B4A5E4F608A7B9C8D7E6F5A4B\""},
        {"\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B\"",
         "\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4G\""},
        {"\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B\"",
         "\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4\""},
        {"\"api_key_id\":\"6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B\"", "\"api_key_id\":\"\""},
        {"Z\"}", "Z\"} "},
        {"Z\"}", "Z\",}"},
        {"Z\"}", "Z\""},
        {"Z\"}", "Z\"}}"},
    };
    static const struct edit taken[] = {
        {"\"prompt_tokens\":10", "\"prompt_tokens\":2147483647"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":-2147483648"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":0"},
        {"\"prompt_tokens\":10", "\"prompt_tokens\":null"},
        {"\"billed\":true", "\"billed\":null"},
        {"\"billed\":true", "\"billed\":false"},
        {"\"user_id\":\"user-1\"", "\"user_id\":null"},
        {"\"id\":\"019a1b2c-3d4e-7f60-8a1b-2c3d4e5f6071\"", "\"id\":null"}, /* NOT NULL is PostgreSQL's */
        {"\"2026-01-02T03:04:05.123456Z\"", "null"},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2024-02-29T23:59:59.999999Z\""},
    };
    struct aigw_usage_row r;
    size_t len;
    char *base;

    base_row(&r);
    base = aigw_usage_line(&r, &len);
    base[len - 1] = '\0';
    aigw_usage_arrays_reset(a);
    CHECK(aigw_usage_arrays_add(a, base, len - 1), "the spool's own line is taken: %s", base);
    CHECK(!aigw_usage_arrays_add(a, base, len - 2), "a cut line is refused");
    CHECK(!aigw_usage_arrays_add(a, "", 0), "an empty line is refused");
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        char *line = mutate(base, refused[i].from, refused[i].to);

        aigw_usage_arrays_reset(a);
        CHECK(line != NULL && !aigw_usage_arrays_add(a, line, strlen(line)), "refused: %s", line ? line : "?");
        free(line);
    }
    for (size_t i = 0; i < sizeof(taken) / sizeof(taken[0]); i++) {
        char *line = mutate(base, taken[i].from, taken[i].to);

        aigw_usage_arrays_reset(a);
        CHECK(line != NULL && aigw_usage_arrays_add(a, line, strlen(line)) && a->n == 1, "taken: %s",
              line ? line : "?");
        free(line);
    }
    aigw_usage_arrays_reset(a);
    {
        char *line = mutate(base, "\"prompt_tokens\":10", "\"prompt_tokens\":-2147483648");

        CHECK(aigw_usage_arrays_add(a, line, strlen(line)) && elem_int4(a, C_PTOK, 0, -2147483647L - 1),
              "int4 minimum");
        free(line);
    }
    free(base);
}

/* No rows: empty one-dimensionless arrays (what array_recv takes for '{}'). */
static void
test_empty(struct aigw_usage_arrays *a)
{
    const char *values[AIGW_USAGE_NCOLS];
    int lengths[AIGW_USAGE_NCOLS];
    Oid types[AIGW_USAGE_NCOLS];

    aigw_usage_arrays_reset(a);
    aigw_usage_arrays_finish(a, types, values, lengths);
    CHECK(lengths[0] == 12 && be32(values[0]) == 0 && be32(values[0] + 8) == 2950, "empty uuid array");
    CHECK(lengths[18] == 12 && be32(values[18]) == 0 && be32(values[18] + 8) == 1184, "empty timestamptz array");
}

int
main(void)
{
    struct aigw_usage_arrays a = {0};

    test_round_trip(&a);
    test_token_clamp(&a);
    test_timestamps(&a);
    test_escapes(&a);
    test_shapes(&a);
    test_empty(&a);
    aigw_usage_arrays_free(&a);
    return tl_done();
}
