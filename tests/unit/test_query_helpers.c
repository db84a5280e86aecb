/* test_query_helpers.c - normalization, classification, PII guard, cache key */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/config.h"
#include "aigw/query.h"
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

int
main(void)
{
    char a[65], b[65];

    norm("  Hello   World \n", "hello world");
    norm("\tA\t\tB", "a b");
    norm("", "");
    norm("   ", "");
    norm("Café  AU lait", "café au lait");

    cls("What were our SALES last month?", "sales");
    cls("total revenue by store", "sales");
    cls("How many frames were sold?", "sales");
    cls("Do we have stock of progressive lenses?", "inventory");
    cls("order more supplies", "inventory");
    cls("How many patients came back this year?", "patient_analytics");
    cls("customer trends in Q3", "patient_analytics");
    cls("How do I clean anti-reflective lenses?", "knowledge");
    cls("wholesale", "knowledge"); /* whole words only */

    pii("list the phone numbers of patients", true);
    pii("give me their e-mail addresses", true);
    pii("patients' date of birth", true);
    pii("show SSN of patient 4", true);
    pii("what is the full name of the patient", true);
    pii("how many patients were seen per month", false);
    pii("average age of myopic patients", false);

    aigw_query_cache_hex("t1", 0, "hello", "m", 300, a);
    aigw_query_cache_hex("t1", 0, "hello", "m", 300, b);
    CHECK(strcmp(a, b) == 0 && strlen(a) == 64, "cache key is deterministic hex");
    /* the encoding is pinned: entries cached by an older build stay valid */
    CHECK(strcmp(a, "0ca417b0580a27dbad2aeced3dedc1ee5aa4fa76b37223fc75fbd96b423b86cd") == 0,
          "cache key = SHA-256 of aigw-cache-v1 NUL tenant NUL type NUL max_tokens NUL question NUL model");
    {
        char q[601];

        memset(q, 'x', 600);
        q[600] = '\0';
        aigw_query_cache_hex("11111111-1111-4111-8111-111111111111", 2, q, "default", -1, b);
        CHECK(strcmp(b, "d3669edfd7642077c27ce7f667fc9cccf92b65f70234823b0ffd7a6704d9711f") == 0, "cache key of a question longer than the stack buffer");
    }
    aigw_query_cache_hex("t2", 0, "hello", "m", 300, b);
    CHECK(strcmp(a, b) != 0, "tenant changes the key");
    aigw_query_cache_hex("t1", 1, "hello", "m", 300, b);
    CHECK(strcmp(a, b) != 0, "query type changes the key");
    aigw_query_cache_hex("t1", 0, "hello", "m", 500, b);
    CHECK(strcmp(a, b) != 0, "max_tokens changes the key");
    aigw_query_cache_hex("t1", 0, "hello", "m2", 300, b);
    CHECK(strcmp(a, b) != 0, "model changes the key");
    aigw_query_cache_hex("t1", 0, "hellom", "", 300, b);
    CHECK(strcmp(a, b) != 0, "no ambiguity between question and model");
    CHECK(aigw_utf8_chars("caf\xc3\xa9") == 4, "utf8 chars");

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
