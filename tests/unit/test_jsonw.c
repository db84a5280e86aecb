/* test_jsonw.c - the hot-path JSON writer and the verified-token cache */
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/jsonw.h"
#include "aigw/jwt.h"
#include "aigw/util.h"
#include "testlib.h"

/* Deterministic pseudo-random numbers (xorshift64): the same cases every run. */
static uint64_t
next_rand(uint64_t *st)
{
    *st ^= *st << 13;
    *st ^= *st >> 7;
    *st ^= *st << 17;
    return *st;
}

/* Length of the valid UTF-8 sequence at p, or 0: Unicode's table of
 * well-formed byte sequences (Table 3-7), independent of aigw_utf8_seq. */
static size_t
ref_seq(const unsigned char *p)
{
    static const struct {
        unsigned char lo0, hi0, lo1, hi1;
        size_t n;
    } rows[] = {
        {0x01, 0x7F, 0, 0, 1},       {0xC2, 0xDF, 0x80, 0xBF, 2}, {0xE0, 0xE0, 0xA0, 0xBF, 3},
        {0xE1, 0xEC, 0x80, 0xBF, 3}, {0xED, 0xED, 0x80, 0x9F, 3}, {0xEE, 0xEF, 0x80, 0xBF, 3},
        {0xF0, 0xF0, 0x90, 0xBF, 4}, {0xF1, 0xF3, 0x80, 0xBF, 4}, {0xF4, 0xF4, 0x80, 0x8F, 4},
    };

    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        if (p[0] < rows[r].lo0 || p[0] > rows[r].hi0)
            continue;
        if (rows[r].n == 1)
            return 1;
        if (p[1] < rows[r].lo1 || p[1] > rows[r].hi1)
            return 0;
        for (size_t i = 2; i < rows[r].n; i++)
            if (p[i] < 0x80 || p[i] > 0xBF)
                return 0;
        return rows[r].n;
    }
    return 0;
}

/* Random byte strings (and strings of valid and odd characters) as a key
 * and a value: jansson reads the text back, and gets every valid sequence
 * as it was and '?' for each byte of anything else. */
static void
test_random_strings(void)
{
    static const char *const pieces[] = {"a",  "\xc3\xa9", "\xe2\x80\xa8", "\xe2\x80\xa9", "\xf0\x9f\x98\x80", "\x7f",
                                         "\x01", "\x1f",     "\"",           "\\",           "\xef\xbf\xbf",     "\xed\xa0\x80",
                                         "\xf4\x90\x80\x80", "\xc0\xaf", "\xe0\x80\xaf",  "\xf4\x8f\xbf\xbf"};
    uint64_t st = 20261207;
    int bad = 0;

    for (int i = 0; i < 20000; i++) {
        char in[80], want[80];
        size_t n = 0, o = 0, len;
        struct aigw_jsonw w;
        json_t *back;
        char *text;

        if (i % 2 == 0) {
            for (size_t k = next_rand(&st) % 64; n < k; n++)
                in[n] = (char)(next_rand(&st) % 255 + 1);
        } else {
            while (n < 60) {
                const char *p = pieces[next_rand(&st) % (sizeof(pieces) / sizeof(pieces[0]))];

                memcpy(in + n, p, strlen(p));
                n += strlen(p);
            }
        }
        in[n] = '\0';
        for (const unsigned char *p = (const unsigned char *)in; *p;) {
            size_t m = ref_seq(p);

            if (m == 0) {
                want[o++] = '?';
                p++;
            } else {
                memcpy(want + o, p, m);
                o += m;
                p += m;
            }
        }
        want[o] = '\0';
        aigw_jsonw_init(&w, 4);
        aigw_jsonw_obj_open(&w);
        aigw_jsonw_kstr(&w, in, in);
        aigw_jsonw_obj_close(&w);
        text = aigw_jsonw_take(&w, &len);
        back = json_loads(text, 0, NULL);
        if (back == NULL || strlen(text) != len || json_object_size(back) != 1 ||
            json_string_value(json_object_get(back, want)) == NULL ||
            strcmp(json_string_value(json_object_get(back, want)), want) != 0)
            bad++;
        json_decref(back);
        free(text);
    }
    CHECK(bad == 0, "random strings round-trip through jansson (%d failures)", bad);
}

/* Integers, the extremes included, as snprintf and jansson have them. */
static void
test_random_ints(void)
{
    static const long long edges[] = {0, 1, -1, 9, 10, -10, INT32_MIN, INT32_MAX, LLONG_MAX, LLONG_MIN, LLONG_MIN + 1};
    uint64_t st = 7;
    int bad = 0;

    for (int i = 0; i < 100000; i++) {
        long long v = i < (int)(sizeof(edges) / sizeof(edges[0])) ? edges[i]
                                                                    : (long long)(next_rand(&st) >> (next_rand(&st) % 64));
        char num[24], ref[24], *text;
        size_t n = aigw_fmt_int(num, i % 2 ? v : ~v), len;
        struct aigw_jsonw w;
        json_t *back;

        snprintf(ref, sizeof(ref), "%lld", i % 2 ? v : ~v);
        if (strcmp(num, ref) != 0 || n != strlen(ref))
            bad++;
        aigw_jsonw_init(&w, 4);
        aigw_jsonw_int(&w, v);
        text = aigw_jsonw_take(&w, &len);
        back = json_loads(text, JSON_DECODE_ANY, NULL);
        if (back == NULL || !json_is_integer(back) || json_integer_value(back) != v)
            bad++;
        json_decref(back);
        free(text);
    }
    CHECK(bad == 0, "aigw_fmt_int matches snprintf and jansson reads the numbers back (%d failures)", bad);
}

int
main(void)
{
    struct aigw_jsonw w;
    json_t *back;
    size_t len;
    char *text;

    aigw_jsonw_init(&w, 4);
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "a", "quote \" backslash \\ newline \n tab \t ctl \x01 é 😀");
    aigw_jsonw_kint(&w, "n", -42);
    aigw_jsonw_kbool(&w, "t", true);
    aigw_jsonw_key(&w, "nested");
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "null", NULL);
    aigw_jsonw_obj_close(&w);
    aigw_jsonw_kstr(&w, "bad", "ok\xff\xfe" "end\xc3");
    aigw_jsonw_key(&w, "raw");
    aigw_jsonw_raw(&w, "[1,2]", 5);
    aigw_jsonw_obj_close(&w);
    text = aigw_jsonw_take(&w, &len);
    CHECK(strlen(text) == len, "length matches");
    back = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    CHECK(back != NULL, "output parses as JSON: %s", text);
    CHECK(back && strcmp(json_string_value(json_object_get(back, "a")),
                         "quote \" backslash \\ newline \n tab \t ctl \x01 é 😀") == 0,
          "escaping round-trips");
    CHECK(back && json_integer_value(json_object_get(back, "n")) == -42, "int");
    CHECK(back && json_is_true(json_object_get(back, "t")), "bool");
    CHECK(back && json_is_null(json_object_get(json_object_get(back, "nested"), "null")), "null in nested object");
    CHECK(back && strcmp(json_string_value(json_object_get(back, "bad")), "ok??end?") == 0,
          "invalid UTF-8 becomes '?'");
    CHECK(back && json_array_size(json_object_get(back, "raw")) == 2, "raw value");
    json_decref(back);
    free(text);

    /* the word-at-a-time scan: every special byte at every offset of strings
     * of 1..40 bytes round-trips through jansson */
    {
        static const char specials[] = {'"', '\\', '\n', 0x01, 0x1f, 0x7f, ' ', '~'};
        int bad = 0;

        for (size_t n = 1; n <= 40; n++)
            for (size_t at = 0; at < n; at++)
                for (size_t k = 0; k < sizeof(specials); k++) {
                    char in[48];

                    for (size_t i = 0; i < n; i++)
                        in[i] = (char)('a' + i % 26);
                    in[at] = specials[k];
                    in[n] = '\0';
                    aigw_jsonw_init(&w, 4);
                    aigw_jsonw_str(&w, in);
                    text = aigw_jsonw_take(&w, &len);
                    back = json_loads(text, JSON_DECODE_ANY, NULL);
                    if (back == NULL || strcmp(json_string_value(back), in) != 0 || strlen(text) != len)
                        bad++;
                    json_decref(back);
                    free(text);
                }
        CHECK(bad == 0, "special bytes at every offset round-trip (%d failures)", bad);
    }
    test_random_strings();
    test_random_ints();

    /* verified-token cache */
    {
        struct aigw_jwt_cache *c = aigw_jwt_cache_create(100, 300);
        struct aigw_claims cl, out;
        unsigned char h1[32], h2[32];

        memset(&cl, 0, sizeof(cl));
        snprintf(cl.tenant, sizeof(cl.tenant), "t1");
        cl.exp = 1000;
        aigw_sha256("token-1", 7, h1);
        aigw_sha256("token-2", 7, h2);
        CHECK(!aigw_jwt_cache_get(c, h1, 500, 1, &out), "empty cache misses");
        aigw_jwt_cache_put(c, h1, 500, 1, &cl);
        CHECK(aigw_jwt_cache_get(c, h1, 600, 1, &out) && strcmp(out.tenant, "t1") == 0, "hit");
        CHECK(!aigw_jwt_cache_get(c, h2, 600, 1, &out), "other token misses");
        CHECK(!aigw_jwt_cache_get(c, h1, 1000, 1, &out), "no hit at exp");
        cl.exp = 100000;
        aigw_jwt_cache_put(c, h1, 500, 1, &cl);
        CHECK(!aigw_jwt_cache_get(c, h1, 801, 1, &out), "no hit after max age");
        aigw_jwt_cache_put(c, h1, 900, 1, &cl);
        CHECK(!aigw_jwt_cache_get(c, h1, 901, 2, &out), "an entry of another key generation misses");
        CHECK(aigw_jwt_cache_get(c, h1, 901, 1, &out), "its own generation still hits");
        aigw_jwt_cache_clear(c);
        CHECK(!aigw_jwt_cache_get(c, h1, 901, 1, &out), "cleared");
        aigw_jwt_cache_destroy(c);
    }
    return tl_done();
}
