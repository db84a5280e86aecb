/* test_query_helpers.c - normalization, classification, PII guard, cache key */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/config.h"
#include "aigw/query.h"
#include "aigw/stages.h"
#include "aigw/util.h"
#include "testlib.h"

static void
norm(const char *in, const char *want)
{
    char *out = aigw_query_normalize(in);

    CHECK(strcmp(out, want) == 0, "normalize(\"%s\") = \"%s\", want \"%s\"", in, out, want);
    free(out);
}

static void
cls(const char *q, const char *want)
{
    char *n = aigw_query_normalize(q);
    int t = aigw_query_classify(n);

    CHECK(strcmp(aigw_query_type_names[t], want) == 0, "classify(\"%s\") = %s, want %s", q, aigw_query_type_names[t],
          want);
    free(n);
}

static void
pii(const char *q, bool want)
{
    char *n = aigw_query_normalize(q);

    CHECK(aigw_query_asks_pii(n) == want, "pii(\"%s\") want %d", q, want);
    free(n);
}

/* What leaves for the tenant of an answer's counts: no prompt-cache details. */
static void
test_strip_cache_info(void)
{
    static const char both[] = "{\"id\":\"c\",\"usage\":{\"prompt_tokens\":9,\"prompt_tokens_details\":"
                               "{\"cached_tokens\":7}},\"timings\":{\"cache_n\":7,\"prompt_n\":2}}";
    static const char plain[] = "{\"id\":\"c\",\"usage\":{\"prompt_tokens\":9}}";
    size_t n = 0;
    static const char escaped[] = "{\"model\":\"q.gguf\",\"t\\u0069mings\":{\"cache_n\":7}}";
    char *out = aigw_chat_strip_cache_info(both, sizeof(both) - 1, NULL, &n);

    CHECK(out != NULL && strcmp(out, "{\"id\":\"c\",\"usage\":{\"prompt_tokens\":9}}") == 0 && n == strlen(out),
          "timings and prompt_tokens_details removed, the rest kept: %s", out ? out : "(null)");
    free(out);
    out = aigw_chat_strip_cache_info(escaped, sizeof(escaped) - 1, "clinic-small", &n);
    CHECK(out != NULL && strcmp(out, "{\"model\":\"clinic-small\"}") == 0,
          "an escaped key is seen; the model becomes the one asked for: %s", out ? out : "(null)");
    free(out);
    CHECK(aigw_chat_strip_cache_info(plain, sizeof(plain) - 1, "m", &n) == NULL, "nothing to remove: sent as is");
    CHECK(aigw_chat_strip_cache_info("[\"timings\"]", 11, NULL, &n) == NULL, "not an object: sent as is");
    CHECK(aigw_chat_strip_cache_info("{\"timings\":1", 12, NULL, &n) == NULL, "not JSON: sent as is");
}

int
main(void)
{
    char a[65], b[65];

    test_strip_cache_info();
    norm("  Hello   World \n", "hello world");
    norm("\tA\t\tB", "a b");
    norm("", "");
    norm("   ", "");
    norm("Café  AU lait", "café au lait");
    /* Unicode spaces are white space too (U+00A0, U+2009, U+3000, U+2028) */
    norm("\xc2\xa0 A\xc2\xa0\xe2\x80\x89" "B\xe3\x80\x80\xe2\x80\xa8", "a b");
    norm("\xe2\x80\x90x\xe2\x80", "\xe2\x80\x90x\xe2\x80"); /* U+2010 and a cut sequence are kept */

    cls("What were our SALES last month?", "sales");
    cls("total revenue by store", "sales");
    cls("How many frames were sold?", "sales");
    cls("Do we have stock of progressive lenses?", "inventory");
    cls("order more supplies", "inventory");
    cls("How many patients came back this year?", "patient_analytics");
    cls("customer trends in Q3", "patient_analytics");
    cls("How do I clean anti-reflective lenses?", "knowledge");
    cls("wholesale", "knowledge"); /* whole words only */
    /* the classifier reads the words as the PII guard does: an invisible
     * character inside "patients" made the question knowledge, and so
     * passed the guard; a phrase joined by punctuation is the phrase */
    cls("list the pa\xe2\x80\x8btients' names", "patient_analytics"); /* zero-width space */
    cls("pa\xc2\xad" "tient names", "patient_analytics");                 /* soft hyphen */
    cls("pat\xe2\x80\x8eients by month", "patient_analytics");           /* left-to-right mark */
    cls("customer-trends by store", "patient_analytics");
    cls("customer_trend in Q3", "patient_analytics");
    cls("sales\xe2\x80\x8bman of the month", "knowledge"); /* one word: "salesman" */

    pii("list the phone numbers of patients", true);
    pii("give me their e-mail addresses", true);
    pii("patients' date of birth", true);
    pii("show SSN of patient 4", true);
    pii("what is the full name of the patient", true);
    pii("how many patients were seen per month", false);
    /* no-break and other Unicode spaces between the words (passed before) */
    pii("patients' date\xc2\xa0of\xc2\xa0" "birth", true);
    pii("each patient's social\xe2\x80\x89" "security number", true);
    pii("contact\xe3\x80\x80" "details of our patients", true);
    pii("average age of myopic patients", false);
    /* the words of a phrase joined by punctuation */
    pii("patients' date-of-birth", true);
    pii("list social_security numbers of patients", true);
    pii("patients' contact / details", true);
    pii("the insurance-number of each patient", true);
    pii("how many patient records were renamed or dated", false);
    pii("patients by birth year, dated-of-birth-rate", false);
    /* plurals, other separators, and invisible characters inside a word */
    pii("list the dates of birth of patients with myopia", true);
    pii("patient date-of-birth by clinic", true);
    pii("patient date_of_birth by clinic", true);
    pii("patient date\xc2\xa0" "of\xc2\xa0" "birth by clinic", true);           /* NBSP */
    pii("patient date\xe2\x80\x91" "of\xe2\x80\x91" "birth by clinic", true); /* non-breaking hyphens */
    pii("the surnames of patients seen in March", true);
    pii("the mobile numbers of our patients", true);
    pii("their social-security numbers", true);
    pii("patients' insurance numbers", true);
    pii("patients' birth dates", true);
    pii("patients' birthdays this month", true);
    pii("scan their passports", true);
    pii("patients' e-mails", true);
    pii("patient firstname and lastname", true);
    pii("patient na\xe2\x80\x8bmes", true);                               /* zero-width space */
    pii("patient ad\xc2\xad" "dresses", true);                                /* soft hyphen */
    pii("complaints addressed per month", false);
    pii("patients by age band", false);
    pii("renamed frames sold", false);
    /* every invisible (default-ignorable) character, not only the zero-width
     * space and the soft hyphen: direction marks and embeddings, invisible
     * operators, the combining grapheme joiner, variation selectors, tags */
    pii("patient na\xe2\x80\x8e" "mes", true);     /* U+200E left-to-right mark */
    pii("patient na\xe2\x80\x8f" "mes", true);     /* U+200F right-to-left mark */
    pii("patient na\xe2\x80\xae" "mes", true);     /* U+202E right-to-left override */
    pii("patient na\xe2\x81\xa2" "mes", true);     /* U+2062 invisible times */
    pii("patient na\xe2\x81\xa6" "mes", true);     /* U+2066 left-to-right isolate */
    pii("patient na\xcd\x8f" "mes", true);          /* U+034F combining grapheme joiner */
    pii("patient na\xd8\x9c" "mes", true);          /* U+061C Arabic letter mark */
    pii("patient na\xe1\xa0\x8e" "mes", true);     /* U+180E Mongolian vowel separator */
    pii("patient na\xef\xb8\x8f" "mes", true);     /* U+FE0F variation selector 16 */
    pii("patient na\xf3\xa0\x81\x81" "mes", true); /* U+E0041 tag latin capital a */
    pii("patient na\xe2\x80\x8e", false);          /* cut short: "na" */
    pii("patient na\xe2\x80", false);               /* a cut sequence is no character */
    /* the words of a phrase with nothing visible between them: written
     * together, or split by an invisible character */
    pii("patients' social\xe2\x80\x8bsecurity numbers", true);
    pii("patients' socialsecurity numbers", true);
    pii("patient mobilenumbers", true);
    pii("patient contactdetails", true);
    pii("patient insurancenumbers", true);
    pii("patient datesofbirth", true);
    pii("patient dates\xe2\x81\xa0of\xe2\x81\xa0" "birth", true); /* word joiners */
    pii("social securityguard schedule for patients", false);

    {
        /* longer than words_only's stack buffer: read from the heap */
        char q[700];

        memset(q, 'x', 600);
        snprintf(q + 600, sizeof(q) - 600, " the pa\xe2\x80\x8btients' date-of-birth");
        cls(q, "patient_analytics");
        pii(q, true);
        snprintf(q + 600, sizeof(q) - 600, " patients by age band");
        pii(q, false);
    }

    aigw_query_cache_hex(false, "t1", 0, "hello", "m", 300, a);
    aigw_query_cache_hex(false, "t1", 0, "hello", "m", 300, b);
    CHECK(strcmp(a, b) == 0 && strlen(a) == 64, "cache key is deterministic hex");
    /* the encoding is pinned: entries cached by an older build stay valid */
    CHECK(strcmp(a, "0ca417b0580a27dbad2aeced3dedc1ee5aa4fa76b37223fc75fbd96b423b86cd") == 0,
          "cache key = SHA-256 of aigw-cache-v1 NUL tenant NUL type NUL max_tokens NUL question NUL model");
    {
        char q[601];

        memset(q, 'x', 600);
        q[600] = '\0';
        aigw_query_cache_hex(false, "11111111-1111-4111-8111-111111111111", 2, q, "default", -1, b);
        CHECK(strcmp(b, "d3669edfd7642077c27ce7f667fc9cccf92b65f70234823b0ffd7a6704d9711f") == 0, "cache key of a question longer than the stack buffer");
    }
    aigw_query_cache_hex(false, "t2", 0, "hello", "m", 300, b);
    CHECK(strcmp(a, b) != 0, "tenant changes the key");
    aigw_query_cache_hex(false, "t1", 1, "hello", "m", 300, b);
    CHECK(strcmp(a, b) != 0, "query type changes the key");
    aigw_query_cache_hex(false, "t1", 0, "hello", "m", 500, b);
    CHECK(strcmp(a, b) != 0, "max_tokens changes the key");
    aigw_query_cache_hex(false, "t1", 0, "hello", "m2", 300, b);
    CHECK(strcmp(a, b) != 0, "model changes the key");
    aigw_query_cache_hex(false, "t1", 0, "hellom", "", 300, b);
    CHECK(strcmp(a, b) != 0, "no ambiguity between question and model");
    /* a question may spell the JSON the OpenAI route forwards */
    aigw_query_cache_hex(true, "t1", 0, "hello", "m", 300, b);
    CHECK(strcmp(a, b) != 0, "the OpenAI route's identity differs from the query route's");
    CHECK(aigw_utf8_chars("caf\xc3\xa9") == 4, "utf8 chars");
    CHECK(aigw_utf8_has_control("a\x1b[31m") && aigw_utf8_has_control("a\x7f") &&
              aigw_utf8_has_control("a\xc2\x85") && aigw_utf8_has_control("\xc2\x9f"),
          "C0, DEL and C1 are control characters");
    CHECK(!aigw_utf8_has_control("caf\xc3\xa9 \xc2\xa0\xc2\xa9") && !aigw_utf8_has_control("\xc2"),
          "letters, NBSP, (c) and a lone lead byte at the end are not");
    CHECK(aigw_utf8_is_blank("") && aigw_utf8_is_blank(" \t") && aigw_utf8_is_blank("\xc2\xa0\xe2\x80\x83\xe3\x80\x80"),
          "spaces, Unicode ones too, are blank");
    CHECK(!aigw_utf8_is_blank(" x ") && !aigw_utf8_is_blank("\xe2\x80\x90") && !aigw_utf8_is_blank("\xe2\x80"),
          "a letter, U+2010 and a cut sequence are not blank");
    {
        /* nothing visible: white space, control characters and the
         * default-ignorable code points, alone or mixed */
        static const char *const invisible[] = {
            "",
            " \t\n",
            "\xe2\x80\x8b",                                 /* U+200B zero-width space */
            "\xef\xbb\xbf",                                 /* U+FEFF BOM */
            "\xe2\x81\xa0\xe2\x80\x8d\xc2\xad",            /* word joiner, ZWJ, soft hyphen */
            " \xe2\x80\x8b\xe3\x80\x80\xef\xbb\xbf\n",   /* mixed with white space */
            "\xe2\x80\x8e\xef\xb8\x8f\xf3\xa0\x81\x81", /* LRM, VS16, tag A (U+E0041) */
            "\x01\x7f\xc2\x85\xc2\x9f",                    /* C0, DEL, C1 */
        };
        static const char *const visible[] = {
            "a",
            "\xe2\x80\x8bx",                      /* ZWSP then a letter */
            "\xef\xbb\xbf \xe2\x81\xa0?",          /* a question mark at the end */
            "\xc3\xa9",                            /* e acute */
            "\xe2\x80\x90",                       /* U+2010 hyphen */
            "\xf0\x9f\x98\x80",                   /* an emoji */
            "\xc2\xa9",                            /* (c), past C1 */
        };

        for (size_t i = 0; i < sizeof(invisible) / sizeof(invisible[0]); i++)
            CHECK(!aigw_utf8_has_visible(invisible[i]), "nothing visible, case %zu", i);
        for (size_t i = 0; i < sizeof(visible) / sizeof(visible[0]); i++)
            CHECK(aigw_utf8_has_visible(visible[i]), "something visible, case %zu", i);
    }
    {
        /* trimmed of what counts as white space: ASCII (form feed and
         * vertical tab too) and the Unicode spaces; inner ones stay */
        static const struct {
            const char *in, *want;
        } trims[] = {
            {"  a b \t", "a b"},
            {"\f\v\r\n x\n", "x"},
            {"\xc2\xa0\xe3\x80\x80"
             "caf\xc3\xa9 \xc2\xa0"
             "au lait\xe2\x80\x83\xc2\xa0",
             "caf\xc3\xa9 \xc2\xa0"
             "au lait"},
            {"\xe2\x80\x90x\xf0\x9f\x98\x80", "\xe2\x80\x90x\xf0\x9f\x98\x80"},
            {" \xc2\xa0 ", ""},
            {"", ""},
        };

        for (size_t i = 0; i < sizeof(trims) / sizeof(trims[0]); i++) {
            size_t len = 0;
            const char *t = aigw_utf8_trim(trims[i].in, &len);

            CHECK(len == strlen(trims[i].want) && strncmp(t, trims[i].want, len) == 0, "trim case %zu: \"%.*s\"", i,
                  (int)len, t);
        }
    }

    {
        /* calendar arithmetic against glibc's gmtime_r/timegm: 200k random
         * instants in 1900..2400 plus the edges */
        static const int64_t edges[] = {0, -1, 86399, 86400, 951782400 /* 2000-02-29 */, 4107542399 /* 2100-02-28T23:59:59 */,
                                        -2208988800 /* 1900-01-01 */, 253402300799 /* 9999-12-31T23:59:59 */};
        int bad = 0;
        uint64_t x = 88172645463325252ULL;

        for (int i = 0; i < 200000 + (int)(sizeof(edges) / sizeof(edges[0])); i++) {
            int64_t t;
            time_t tt;
            struct tm tm;
            char want[32], got[32], wm[8], gm[8];

            if (i < (int)(sizeof(edges) / sizeof(edges[0]))) {
                t = edges[i];
            } else {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                t = -2208988800LL + (int64_t)(x % 15778800000ULL); /* 1900 .. 2400 */
            }
            tt = (time_t)t;
            gmtime_r(&tt, &tm);
            strftime(want, sizeof(want), "%Y-%m-%dT%H:%M:%SZ", &tm);
            strftime(wm, sizeof(wm), "%Y%m", &tm);
            aigw_rfc3339(t, got);
            aigw_month_key(t, gm);
            tm.tm_mday = 1;
            tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
            if (++tm.tm_mon == 12) {
                tm.tm_mon = 0;
                tm.tm_year++;
            }
            if (strcmp(want, got) != 0 || strcmp(wm, gm) != 0 || aigw_next_month_start(t) != (int64_t)timegm(&tm)) {
                if (bad++ < 3)
                    fprintf(stderr, "calendar mismatch at %lld: %s vs %s, %s vs %s\n", (long long)t, want, got, wm, gm);
            }
        }
        CHECK(bad == 0, "rfc3339, month key and next month start agree with gmtime_r/timegm (%d mismatches)", bad);
    }
    {
        char num[24], dst[12];

        CHECK(aigw_fmt_int(num, 0) == 1 && strcmp(num, "0") == 0, "fmt_int 0");
        CHECK(aigw_fmt_int(num, -7) == 2 && strcmp(num, "-7") == 0, "fmt_int -7");
        CHECK(aigw_fmt_int(num, 1234567890) == 10 && strcmp(num, "1234567890") == 0, "fmt_int 1234567890");
        CHECK(aigw_fmt_int(num, LLONG_MAX) == 19 && strcmp(num, "9223372036854775807") == 0, "fmt_int LLONG_MAX");
        CHECK(aigw_fmt_int(num, LLONG_MIN) == 20 && strcmp(num, "-9223372036854775808") == 0, "fmt_int LLONG_MIN");
        CHECK(aigw_concat(dst, sizeof(dst), "aigw:{", "t1", "}:q", NULL) && strcmp(dst, "aigw:{t1}:q") == 0,
              "concat joins the parts");
        CHECK(!aigw_concat(dst, sizeof(dst), "aigw:{", "t12", "}:q", NULL) && dst[0] == '\0',
              "concat refuses what does not fit with its NUL, leaving an empty string");
        CHECK(aigw_concat(dst, sizeof(dst), NULL) && dst[0] == '\0', "concat of nothing is empty");
    }
    return tl_done();
}
