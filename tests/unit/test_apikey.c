/* test_apikey.c - API key format, scopes, RFC 3339 parsing, the key record cache */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/apikey.h"
#include "aigw/util.h"
#include "testlib.h"

static void
test_generate(void)
{
    char a[AIGW_APIKEY_LEN + 1], b[AIGW_APIKEY_LEN + 1], shown[AIGW_APIKEY_SHOWN_LEN + 1];

    aigw_apikey_generate(a, shown);
    CHECK(strlen(a) == 48, "key length %zu", strlen(a));
    CHECK(strncmp(a, "aigw_", 5) == 0, "key prefix");
    CHECK(aigw_apikey_well_formed(a, strlen(a)), "a generated key is well formed");
    CHECK(strlen(shown) == 13 && strncmp(a, shown, 13) == 0, "shown prefix is the key's first 13 characters");
    CHECK(strspn(a + 5, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == 43,
          "base64url alphabet only");
    aigw_apikey_generate(b, shown);
    CHECK(strcmp(a, b) != 0, "two keys differ");
    CHECK(aigw_apikey_has_prefix(a) && !aigw_apikey_has_prefix("eyJhbGciOiJIUzI1NiJ9.e30.x"),
          "prefix tells a key from a JWT");
}

static void
test_well_formed(void)
{
    char k[AIGW_APIKEY_LEN + 2], shown[AIGW_APIKEY_SHOWN_LEN + 1];

    aigw_apikey_generate(k, shown);
    CHECK(!aigw_apikey_well_formed(k, 47), "one character short");
    k[48] = 'A';
    k[49] = '\0';
    CHECK(!aigw_apikey_well_formed(k, 49), "one character long");
    k[48] = '\0';
    k[20] = '+';
    CHECK(!aigw_apikey_well_formed(k, 48), "'+' is not base64url");
    k[20] = '=';
    CHECK(!aigw_apikey_well_formed(k, 48), "padding is not allowed");
    k[20] = 'Q';
    k[0] = 'A';
    CHECK(!aigw_apikey_well_formed(k, 48), "prefix is case-sensitive");
    k[0] = 'a';
    CHECK(aigw_apikey_well_formed(k, 48), "restored key is well formed");
    CHECK(!aigw_apikey_well_formed("aigw_", 5), "prefix alone");
    CHECK(!aigw_apikey_well_formed("", 0), "empty");
    {
        char with_nul[49];

        memcpy(with_nul, k, 48);
        with_nul[30] = '\0';
        CHECK(!aigw_apikey_well_formed(with_nul, 48), "embedded NUL");
    }
}

static void
test_scopes(void)
{
    CHECK(aigw_scope_bit("query") == AIGW_SCOPE_QUERY, "query bit");
    CHECK(aigw_scope_bit("chat") == AIGW_SCOPE_CHAT, "chat bit");
    CHECK(aigw_scope_bit("admin") == 0 && aigw_scope_bit("") == 0 && aigw_scope_bit("Query") == 0,
          "unknown scopes have no bit");
    CHECK(aigw_scope_parse_list("query,chat") == (AIGW_SCOPE_QUERY | AIGW_SCOPE_CHAT), "both");
    CHECK(aigw_scope_parse_list("chat") == AIGW_SCOPE_CHAT, "chat only");
    CHECK(aigw_scope_parse_list("bogus,query") == AIGW_SCOPE_QUERY, "unknown names ignored");
    CHECK(aigw_scope_parse_list("") == 0, "empty list");
    CHECK(aigw_scope_parse_list("querychat") == 0, "no partial matches");
}

static void
ts_ok(const char *s, int64_t want)
{
    int64_t got = -1;

    CHECK(aigw_parse_rfc3339(s, &got) && got == want, "rfc3339(\"%s\") = %lld, want %lld", s, (long long)got,
          (long long)want);
}

static void
ts_bad(const char *s)
{
    int64_t got;

    CHECK(!aigw_parse_rfc3339(s, &got), "rfc3339(\"%s\") must be rejected", s);
}

static void
test_rfc3339(void)
{
    ts_ok("1970-01-01T00:00:00Z", 0);
    ts_ok("2026-12-01T00:00:00Z", 1796083200);
    ts_ok("2024-02-29T12:00:00Z", 1709208000);
    ts_ok("2026-12-01T02:00:00+02:00", 1796083200);
    ts_ok("2026-11-30T18:30:00-05:30", 1796083200);
    ts_ok("2026-12-01T00:00:00.999Z", 1796083200);
    ts_ok("2026-12-01t00:00:00z", 1796083200);
    ts_ok("2000-12-31T23:59:59Z", 978307199);
    ts_bad("2023-02-29T00:00:00Z");
    ts_bad("2100-02-29T00:00:00Z");
    ts_bad("2026-13-01T00:00:00Z");
    ts_bad("2026-00-01T00:00:00Z");
    ts_bad("2026-12-32T00:00:00Z");
    ts_bad("2026-04-31T00:00:00Z");
    ts_bad("2026-12-01T24:00:00Z");
    ts_bad("2026-12-01T00:60:00Z");
    ts_bad("2026-12-01T00:00:60Z");
    ts_bad("2026-12-01T00:00:00");
    ts_bad("2026-12-01 00:00:00Z");
    ts_bad("2026-12-01T00:00:00Zjunk");
    ts_bad("2026-12-01T00:00:00.Z");
    ts_bad("2026-12-01T00:00:00+2:00");
    ts_bad("2026-12-01T00:00:00+24:00");
    ts_bad("2026-12-01");
    ts_bad("1969-12-31T23:59:59Z");
    /* the last instant aigw_rfc3339 can write back, and none after it: a
     * negative offset on 9999-12-31 is a time in year 10000 (was accepted,
     * then shown as "0000-01-01T...Z", a time long past) */
    ts_ok("9999-12-31T23:59:59Z", 253402300799);
    ts_ok("9999-12-31T23:59:59.999+00:00", 253402300799);
    ts_ok("9999-12-31T23:59:59+14:00", 253402250399);
    ts_bad("9999-12-31T23:59:59-00:01");
    ts_bad("9999-12-31T23:59:59-23:59");
    ts_bad("9999-12-31T20:00:00-05:00");
    ts_bad("tomorrow");
    ts_bad("");
    /* every day of a leap and a common year against timegm */
    for (int y = 2027; y <= 2028; y++)
        for (int d = 0; d < 366; d++) {
            struct tm tm = {.tm_year = y - 1900, .tm_mon = 0, .tm_mday = 1 + d, .tm_hour = 13, .tm_min = 7,
                            .tm_sec = 9};
            time_t t = timegm(&tm);
            struct tm back;
            char s[32];
            int64_t got = 0;

            gmtime_r(&t, &back);
            if (back.tm_year != y - 1900)
                continue;
            strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%SZ", &back);
            CHECK(aigw_parse_rfc3339(s, &got) && got == (int64_t)t, "%s vs timegm", s);
        }
    /* whatever is accepted on the last day is written back as the same
     * instant, whatever its offset */
    for (int off = -23 * 60 - 59; off <= 23 * 60 + 59; off += 7) {
        char s[40], back[32];
        int64_t got = 0, again = -1;

        snprintf(s, sizeof(s), "9999-12-31T12:34:56%c%02d:%02d", off < 0 ? '-' : '+', abs(off) / 60, abs(off) % 60);
        if (!aigw_parse_rfc3339(s, &got))
            continue;
        aigw_rfc3339(got, back);
        CHECK(aigw_parse_rfc3339(back, &again) && again == got, "%s -> %s written back", s, back);
    }
}

/* aigw_utc_datetime, aigw_rfc3339, aigw_month_key and aigw_next_month_start
 * against glibc's calendar over years 0000..9999 (before 1970 too), and
 * every time aigw_rfc3339 writes parses back to itself. Deterministic. */
static void
test_calendar(void)
{
    const int64_t first = -62167219200LL, last = 253402300799LL; /* 0000-01-01, 9999-12-31T23:59:59 */
    uint64_t st = 1796083200;
    int bad = 0;

    for (int i = 0; i < 200000; i++) {
        static const int64_t edges[] = {0, -1, 1, 86399, 86400, -86400, -86401, 951782400, 951868800, 4107542400LL};
        int64_t t, back = -1, next;
        time_t tt;
        struct tm tm, nm;
        char want[96], got[32], key[8];

        st ^= st << 13;
        st ^= st >> 7;
        st ^= st << 17;
        t = i < (int)(sizeof(edges) / sizeof(edges[0])) ? edges[i]
            : i % 100 == 0                               ? last - (int64_t)(st % 1000)
                                                         : first + (int64_t)(st % (uint64_t)(last - first + 1));
        tt = (time_t)t;
        gmtime_r(&tt, &tm);
        snprintf(want, sizeof(want), "%04d-%02d-%02dT%02d:%02d:%02d", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec);
        aigw_utc_datetime(t, got);
        bad += strcmp(got, want) != 0;
        aigw_month_key(t, key);
        bad += strncmp(key, want, 4) != 0 || strncmp(key + 4, want + 5, 2) != 0 || key[6] != '\0';
        nm = (struct tm){.tm_year = tm.tm_year, .tm_mon = tm.tm_mon + 1, .tm_mday = 1};
        next = (int64_t)timegm(&nm);
        bad += aigw_next_month_start(t) != next;
        if (t >= 0) {
            aigw_rfc3339(t, got);
            bad += !aigw_parse_rfc3339(got, &back) || back != t;
        }
    }
    CHECK(bad == 0, "calendar helpers agree with gmtime_r/timegm, rfc3339 round-trips (%d failures)", bad);
}

static void
test_cache(void)
{
    struct aigw_apikey_cache *c = aigw_apikey_cache_create(100, 60, 0);
    struct aigw_api_key k = {.id = "6f1d2c3b-4a5e-4f60-8a7b-9c8d7e6f5a4b",
                             .tenant_id = "22222222-2222-4222-8222-222222222222",
                             .scopes = AIGW_SCOPE_QUERY,
                             .requests_per_minute = 5};
    struct aigw_api_key out;
    unsigned char sha[32], other[32];
    uint64_t epoch;

    memset(sha, 0xab, sizeof(sha));
    memcpy(other, sha, sizeof(other));
    other[31] ^= 1; /* same slot, different hash */
    CHECK(!aigw_apikey_cache_peek(c, sha, &out), "empty cache misses");
    aigw_apikey_cache_put(c, sha, &k, aigw_apikey_cache_epoch(c));
    CHECK(aigw_apikey_cache_peek(c, sha, &out) && strcmp(out.id, k.id) == 0 && out.requests_per_minute == 5,
          "hit after put");
    CHECK(!aigw_apikey_cache_peek(c, other, &out), "a hash differing in the last byte misses");
    aigw_apikey_cache_invalidate(c, "00000000-0000-4000-8000-000000000000");
    CHECK(aigw_apikey_cache_peek(c, sha, &out), "invalidating another id keeps the entry");
    aigw_apikey_cache_invalidate(c, k.id);
    CHECK(!aigw_apikey_cache_peek(c, sha, &out), "invalidating its id drops the entry");

    epoch = aigw_apikey_cache_epoch(c);
    aigw_apikey_cache_invalidate(c, "*"); /* races the load that read epoch */
    aigw_apikey_cache_put(c, sha, &k, epoch);
    CHECK(!aigw_apikey_cache_peek(c, sha, &out), "a load older than an invalidation is not cached");
    aigw_apikey_cache_put(c, sha, &k, aigw_apikey_cache_epoch(c));
    aigw_apikey_cache_invalidate(c, NULL);
    CHECK(!aigw_apikey_cache_peek(c, sha, &out), "invalidate all");
    aigw_apikey_cache_destroy(c);

    c = aigw_apikey_cache_create(10, 0, 0);
    aigw_apikey_cache_put(c, sha, &k, aigw_apikey_cache_epoch(c));
    CHECK(!aigw_apikey_cache_peek(c, sha, &out), "ttl 0 caches nothing");
    aigw_apikey_cache_destroy(c);
    aigw_apikey_cache_invalidate(NULL, "*"); /* NULL-safe */
}

static void
test_redis_keys(void)
{
    char a[160], b[160];

    aigw_apikey_revoked_key("t-1", "k-1", a, sizeof(a));
    aigw_apikey_window_key("t-1", "k-1", b, sizeof(b));
    CHECK(strncmp(a, "aigw:{t-1}:", 11) == 0 && strncmp(b, "aigw:{t-1}:", 11) == 0,
          "key names share the tenant's hash tag: %s %s", a, b);
    CHECK(strcmp(a, b) != 0 && strstr(a, "k-1") != NULL && strstr(b, "k-1") != NULL, "distinct, per key");
}

int
main(void)
{
    test_generate();
    test_well_formed();
    test_scopes();
    test_rfc3339();
    test_calendar();
    test_cache();
    test_redis_keys();
    return tl_done();
}
