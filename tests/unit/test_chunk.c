/* test_chunk.c - the one-pass chunk scan against jansson: what it reads
 * from real llama-server events, and that it accepts, refuses and reads
 * exactly what json_loadb + json_object_get did, on hand-written edge cases
 * and on a few hundred thousand mutations of them */
#include <jansson.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/chunk.h"
#include "aigw/util.h"
#include "testlib.h"

/* What the engine read from an event, either way. */
struct seen {
    bool valid, error, choices_empty, usage, timings, tool_calls;
    char *model, *content, *finish_reason, *reasoning; /* NULL when absent or not a string */
    long error_code, code, prompt_tokens, completion_tokens, prompt_n, predicted_n, cache_n;
};

static void
seen_free(struct seen *s)
{
    free(s->model);
    free(s->content);
    free(s->finish_reason);
    free(s->reasoning);
    memset(s, 0, sizeof(*s));
}

/* A string as the scan decodes it: a NUL (\u0000, which JSON_ALLOW_NUL
 * lets through) as U+FFFD. */
static char *
ref_str(const json_t *v)
{
    const char *p;
    size_t n;
    char *out, *o;

    if (!json_is_string(v))
        return NULL;
    p = json_string_value(v);
    n = json_string_length(v);
    o = out = aigw_xmalloc(n * 3 + 1);
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\0') {
            memcpy(o, "\xEF\xBF\xBD", 3);
            o += 3;
        } else {
            *o++ = p[i];
        }
    }
    *o = '\0';
    return out;
}

static long
ref_count(const json_t *v)
{
    json_int_t n = json_is_integer(v) ? json_integer_value(v) : 0;

    return n > 0 && n <= LONG_MAX ? (long)n : 0;
}

/* The reference: jansson, read the way the engine's tap read it before. */
static void
by_jansson(const char *txt, size_t len, struct seen *s)
{
    json_t *root = json_loadb(txt, len, JSON_ALLOW_NUL, NULL), *choices, *choice, *delta, *usage, *timings, *tc;

    memset(s, 0, sizeof(*s));
    if (!json_is_object(root))
        goto out;
    s->valid = true;
    s->error = json_object_get(root, "error") != NULL;
    s->error_code = ref_count(json_object_get(json_object_get(root, "error"), "code"));
    s->code = ref_count(json_object_get(root, "code"));
    s->model = ref_str(json_object_get(root, "model"));
    choices = json_object_get(root, "choices");
    choice = json_array_get(choices, 0);
    delta = json_object_get(choice, "delta");
    s->content = ref_str(json_object_get(delta, "content"));
    s->reasoning = ref_str(json_object_get(delta, "reasoning_content"));
    tc = json_object_get(delta, "tool_calls");
    s->tool_calls = json_is_array(tc) && json_array_size(tc) > 0;
    s->finish_reason = ref_str(json_object_get(choice, "finish_reason"));
    s->choices_empty = json_is_array(choices) && json_array_size(choices) == 0;
    usage = json_object_get(root, "usage");
    if (json_is_object(usage)) {
        s->usage = true;
        s->prompt_tokens = ref_count(json_object_get(usage, "prompt_tokens"));
        s->completion_tokens = ref_count(json_object_get(usage, "completion_tokens"));
    }
    timings = json_object_get(root, "timings");
    if (json_is_object(timings)) {
        s->timings = true;
        s->prompt_n = ref_count(json_object_get(timings, "prompt_n"));
        s->predicted_n = ref_count(json_object_get(timings, "predicted_n"));
        s->cache_n = ref_count(json_object_get(timings, "cache_n"));
    }
out:
    json_decref(root);
}

static char *
decoded(const struct aigw_chunk_str *str)
{
    char *out;

    if (str->p == NULL)
        return NULL;
    out = aigw_xmalloc(str->len + 1);
    aigw_chunk_decode(str, out);
    return out;
}

static void
by_scan(const char *txt, size_t len, struct seen *s)
{
    struct aigw_chunk c;

    memset(s, 0, sizeof(*s));
    if (aigw_chunk_scan(txt, len, &c) != 0)
        return;
    s->valid = true;
    s->error = c.error;
    s->model = decoded(&c.model);
    s->content = decoded(&c.content);
    s->finish_reason = decoded(&c.finish_reason);
    s->reasoning = decoded(&c.reasoning);
    s->tool_calls = c.tool_calls;
    s->error_code = c.error_code;
    s->code = c.code;
    s->choices_empty = c.choices_empty;
    s->usage = c.usage;
    s->timings = c.timings;
    s->prompt_tokens = c.prompt_tokens;
    s->completion_tokens = c.completion_tokens;
    s->prompt_n = c.prompt_n;
    s->predicted_n = c.predicted_n;
    s->cache_n = c.cache_n;
}

static bool
same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* NULL when both read the same; else the first field that differs. */
static const char *
differs(const struct seen *a, const struct seen *b)
{
    if (a->valid != b->valid)
        return "valid";
    if (!a->valid)
        return NULL;
    if (a->error != b->error || a->error_code != b->error_code || a->code != b->code)
        return "error";
    if (!same_str(a->reasoning, b->reasoning) || a->tool_calls != b->tool_calls)
        return "reasoning/tool_calls";
    if (!same_str(a->model, b->model))
        return "model";
    if (!same_str(a->content, b->content))
        return "content";
    if (!same_str(a->finish_reason, b->finish_reason))
        return "finish_reason";
    if (a->choices_empty != b->choices_empty)
        return "choices_empty";
    if (a->usage != b->usage || a->prompt_tokens != b->prompt_tokens || a->completion_tokens != b->completion_tokens)
        return "usage";
    if (a->timings != b->timings || a->prompt_n != b->prompt_n || a->predicted_n != b->predicted_n ||
        a->cache_n != b->cache_n)
        return "timings";
    return NULL;
}

static void
print_text(const char *txt, size_t len)
{
    for (size_t i = 0; i < len && i < 300; i++) {
        unsigned char c = (unsigned char)txt[i];

        if (c >= 0x20 && c < 0x7f)
            putchar(c);
        else
            printf("\\x%02x", c);
    }
    putchar('\n');
}

/* The one place the scan is stricter on purpose: jansson 2.14 drops a NUL
 * byte that directly follows a number or true/false/null (its lexer reads
 * one byte ahead there and its stream skips a NUL when the byte is put
 * back), so it accepts {"a":1\0}; the scan refuses any NUL outside a
 * string (inside one both refuse it). When jansson accepted a text with
 * NULs, those are all of that kind: the scan must read the text without
 * them exactly as jansson read the text with them. */
static size_t
drop_nuls(const char *txt, size_t len, char *out)
{
    size_t n = 0;

    for (size_t i = 0; i < len; i++)
        if (txt[i] != '\0')
            out[n++] = txt[i];
    return n;
}

/* Compare both readers on txt; prints the case when they differ. */
static bool
agree(const char *txt, size_t len, struct seen *ref_out)
{
    struct seen a, b;
    const char *d;

    by_jansson(txt, len, &a);
    by_scan(txt, len, &b);
    if (a.valid && !b.valid && memchr(txt, '\0', len) != NULL) {
        char *clean = aigw_xmalloc(len + 1);

        seen_free(&b);
        by_scan(clean, drop_nuls(txt, len, clean), &b);
        free(clean);
    }
    d = differs(&a, &b);
    if (d != NULL) {
        printf("  scan and jansson differ on %s (jansson valid %d, scan valid %d) for: ", d, a.valid, b.valid);
        print_text(txt, len);
    }
    if (ref_out != NULL)
        *ref_out = a;
    else
        seen_free(&a);
    seen_free(&b);
    return d == NULL;
}

#define LLAMA_TOKEN                                                                                              \
    "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" lenses\"}}],"                  \
    "\"created\":1796604276,\"id\":\"chatcmpl-3e9DbkLeWvSr3BVrApLge2UPAXrFrbtS\",\"model\":\"qwen2.5-7b\","      \
    "\"system_fingerprint\":\"b4500-adc5f84\",\"object\":\"chat.completion.chunk\"}"
#define LLAMA_FINISH                                                                                             \
    "{\"choices\":[{\"finish_reason\":\"stop\",\"index\":0,\"delta\":{}}],\"created\":1796604279,"              \
    "\"id\":\"chatcmpl-x\",\"model\":\"qwen2.5-7b\",\"object\":\"chat.completion.chunk\",\"usage\":"             \
    "{\"completion_tokens\":57,\"prompt_tokens\":31,\"total_tokens\":88},\"timings\":{\"cache_n\":12,\"prompt_n\":19,"          \
    "\"prompt_ms\":12.5,\"prompt_per_token_ms\":0.403,\"predicted_n\":57,\"predicted_ms\":812.25,"               \
    "\"predicted_per_second\":70.17e0}}"

static const char *const corpus[] = {
    LLAMA_TOKEN,
    LLAMA_FINISH,
    "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null}}],"
    "\"created\":1,\"id\":\"c\",\"model\":\"m\",\"object\":\"chat.completion.chunk\"}",
    "{\"choices\":[],\"created\":1,\"id\":\"c\",\"model\":\"m\",\"object\":\"chat.completion.chunk\","
    "\"usage\":{\"completion_tokens\":8,\"prompt_tokens\":12,\"total_tokens\":20}}",
    "{\"error\":{\"code\":500,\"message\":\"the model crashed\",\"type\":\"server_error\"}}",
    "{\"choices\":[{\"delta\":{\"content\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\/ \\b\\f\\n\\r\\t "
    "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"}}],\"model\":\"m\\u00e9\"}",
    "{\"model\":\"a\",\"model\":\"b\",\"choices\":[{\"delta\":{\"content\":\"x\"},\"delta\":{\"content\":\"y\"}}]}",
    "{\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"choices\":{\"0\":1},\"model\":\"a\",\"model\":7}",
    "{\"usage\":{\"prompt_tokens\":3},\"usage\":null,\"timings\":{\"predicted_n\":4},\"timings\":{\"prompt_n\":5}}",
    "{\"mo\\u0064el\":\"escaped key\",\"c\\u0068oices\":[{\"d\\u0065lta\":{\"cont\\u0065nt\":\"k\"}}],"
    "\"u\\u0073age\":{\"prompt\\u005ftokens\":9}}",
    "{\"usage\":{\"prompt_tokens\":9223372036854775807,\"completion_tokens\":-5},\"timings\":{\"prompt_n\":5.0,"
    "\"predicted_n\":\"6\"},\"x\":[-9223372036854775808,1e308,-1e308,1e-400,0,-0,0.5e+10,2E-3]}",
    "{\"choices\":[[1],{\"delta\":{\"content\":\"second\"}}],\"model\":null}",
    "{\"choices\":[{\"delta\":[{\"content\":\"in array\"}],\"finish_reason\":[\"stop\"]}]}",
    " \t\r\n{ \"choices\" : [ { \"delta\" : { \"content\" : \"\" } } ] , \"a\":true,\"b\":false,\"c\":null } \n",
    "{\"choices\":[],\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1}}",
    "{\"choices\":[{\"delta\":{\"content\":\"nested\",\"x\":{\"y\":[{\"z\":[[[]]]}]}}}],\"error\":null}",
    "{}",
    "{\"choices\":[{\"delta\":{\"reasoning_content\":\"Think\\u0000ing\"},\"index\":0}],\"model\":\"m\"}",
    "{\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\","
    "\"function\":{\"name\":\"get_rx\",\"arguments\":\"{\\\"id\\\": 1}\"}}]}}]}",
    "{\"choices\":[{\"delta\":{\"tool_calls\":[1],\"tool_calls\":[]}}],\"error\":{\"code\":400},\"error\":[]}",
    "{\"error\":{\"code\":400,\"message\":\"the request exceeds the available context size\","
    "\"type\":\"exceed_context_size_error\",\"n_prompt_tokens\":5000,\"n_ctx\":4096}}",
    "{\"choices\":[{\"delta\":{\"content\":\"a\\u0000b\\u00000\"}}]}",
    "{\"code\":400,\"message\":\"the request exceeds the available context size\",\"type\":\"invalid_request_error\"}",
};

/* Inputs jansson refuses (or that are not an object), each for a reason. */
static const struct {
    const char *txt;
    size_t len; /* 0: strlen */
} refused[] = {
    {"", 0},
    {"  ", 0},
    {"[]", 0},
    {"\"s\"", 0},
    {"{\"a\":1,}", 0},
    {"{\"a\":01}", 0},
    {"{\"a\":1.}", 0},
    {"{\"a\":-}", 0},
    {"{\"a\":1e}", 0},
    {"{\"a\":.5}", 0},
    {"{\"a\":+1}", 0},
    {"{\"a\":9223372036854775808}", 0},
    {"{\"a\":-9223372036854775809}", 0},
    {"{\"a\":1e309}", 0},
    {"{\"a\":-1e400}", 0},
    {"{\"\\u0000\":1}", 0},
    {"{\"a\\u0000\":{\"b\":\"\\u0000\"}}", 0},
    {"{\"a\":\"\\ud800\"}", 0},
    {"{\"a\":\"\\udc00\\ud800\"}", 0},
    {"{\"a\":\"\\ud800\\u0041\"}", 0},
    {"{\"a\":\"\\ud800\\n\"}", 0},
    {"{\"a\":\"\\x\"}", 0},
    {"{\"a\":\"\\u12g4\"}", 0},
    {"{\"a\":\"tab\tinside\"}", 0},
    {"{\"a\":\"\xc0\x80\"}", 0},
    {"{\"a\":\"\xed\xa0\x80\"}", 0},
    {"{\"a\":\"\xf4\x90\x80\x80\"}", 0},
    {"{\"a\":\"\xe0\x80\xaf\"}", 0},
    {"{\"a\":\"\xc3\"}", 0},
    {"{\"a\":\"\x80\"}", 0},
    {"{\"a\":\"\xff\"}", 0},
    {"{\"a\":tru}", 0},
    {"{\"a\":truex}", 0},
    {"{\"a\":nul}", 0},
    {"{\"a\":1}x", 0},
    {"{\"a\":1}{}", 0},
    {"{\"a\" 1}", 0},
    {"{a:1}", 0},
    {"{\"a\":1", 0},
    {"{\"a\":\"x", 0},
    {"{\"a\":[1,]}", 0},
    {"{\"a\":[1 2]}", 0},
    {"\xef\xbb\xbf{}", 0},
    {"{\"a\":\"x\"}\0", 11},
    {"{\"a\":\"x\0y\"}", 11},
};

static void
test_reads_llama_events(void)
{
    struct aigw_chunk c;
    char buf[256];

    CHECK(aigw_chunk_scan(LLAMA_TOKEN, strlen(LLAMA_TOKEN), &c) == 0, "a token chunk scans");
    CHECK(!c.error && !c.usage && !c.timings && !c.choices_empty, "nothing but text in a token chunk");
    aigw_chunk_decode(&c.content, buf);
    CHECK(strcmp(buf, " lenses") == 0, "content read: '%s'", buf);
    aigw_chunk_decode(&c.model, buf);
    CHECK(strcmp(buf, "qwen2.5-7b") == 0, "model read: '%s'", buf);
    CHECK(c.finish_reason.p == NULL, "finish_reason null is no string");

    CHECK(aigw_chunk_scan(LLAMA_FINISH, strlen(LLAMA_FINISH), &c) == 0, "the closing chunk scans");
    CHECK(c.content.p == NULL, "no content in {}");
    aigw_chunk_decode(&c.finish_reason, buf);
    CHECK(strcmp(buf, "stop") == 0, "finish_reason read: '%s'", buf);
    CHECK(c.usage && c.prompt_tokens == 31 && c.completion_tokens == 57, "usage read: %ld/%ld", c.prompt_tokens,
          c.completion_tokens);
    CHECK(c.timings && c.prompt_n == 19 && c.predicted_n == 57 && c.cache_n == 12, "timings read: %ld/%ld/%ld",
          c.prompt_n, c.predicted_n, c.cache_n);

    CHECK(aigw_chunk_scan(corpus[3], strlen(corpus[3]), &c) == 0 && c.choices_empty && c.usage &&
              c.prompt_tokens == 12,
          "the usage-only chunk (choices []) is told apart");
    CHECK(aigw_chunk_scan(corpus[4], strlen(corpus[4]), &c) == 0 && c.error && c.error_code == 500,
          "an error event is flagged, with its code");
    CHECK(aigw_chunk_scan(corpus[20], strlen(corpus[20]), &c) == 0 && c.error && c.error_code == 400,
          "a refused request mid-stream: code 400");
    CHECK(aigw_chunk_scan(corpus[17], strlen(corpus[17]), &c) == 0 && c.content.p == NULL && c.reasoning.p != NULL &&
              !c.tool_calls,
          "a reasoning delta is read");
    aigw_chunk_decode(&c.reasoning, buf);
    CHECK(strcmp(buf, "Think\xEF\xBF\xBDing") == 0, "\\u0000 decodes to U+FFFD: '%s'", buf);
    CHECK(aigw_chunk_scan(corpus[18], strlen(corpus[18]), &c) == 0 && c.tool_calls && c.content.p == NULL,
          "a tool-call delta is read");
    CHECK(aigw_chunk_scan(corpus[19], strlen(corpus[19]), &c) == 0 && !c.tool_calls && c.error && c.error_code == 0,
          "the last tool_calls and error count");
    CHECK(aigw_chunk_scan(corpus[22], strlen(corpus[22]), &c) == 0 && !c.error && c.code == 400,
          "the payload of an error: event has its code at the top");
    CHECK(aigw_chunk_scan(corpus[21], strlen(corpus[21]), &c) == 0, "a NUL in the text scans");
    CHECK(aigw_chunk_decode(&c.content, buf) == 9 && memcmp(buf, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD" "0", 10) == 0,
          "\\u0000 decodes to U+FFFD, \\u00000 too plus its 0");

    CHECK(aigw_chunk_scan(corpus[5], strlen(corpus[5]), &c) == 0 && c.content.escaped, "escapes scan");
    aigw_chunk_decode(&c.content, buf);
    CHECK(strcmp(buf, "caf\xc3\xa9 \xf0\x9f\x98\x80 \"q\" \\ / \b\f\n\r\t \xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80") == 0,
          "escapes decoded to UTF-8");
    CHECK(aigw_chunk_scan(corpus[6], strlen(corpus[6]), &c) == 0, "repeated keys scan");
    aigw_chunk_decode(&c.content, buf);
    CHECK(strcmp(buf, "y") == 0, "the last delta counts: '%s'", buf);
    aigw_chunk_decode(&c.model, buf);
    CHECK(strcmp(buf, "b") == 0, "the last model counts: '%s'", buf);
    CHECK(aigw_chunk_scan(corpus[7], strlen(corpus[7]), &c) == 0 && c.content.p == NULL && c.model.p == NULL,
          "a later non-array choices and non-string model drop the earlier ones");
    CHECK(aigw_chunk_scan(corpus[9], strlen(corpus[9]), &c) == 0 && c.content.p != NULL && c.prompt_tokens == 9,
          "escaped keys are matched decoded");
    {
        struct seen ref;

        by_jansson("{\"a\":1\0}", 8, &ref);
        CHECK(ref.valid && aigw_chunk_scan("{\"a\":1\0}", 8, &c) != 0,
              "a NUL after a number: jansson 2.14 drops it, the scan refuses the text");
        seen_free(&ref);
    }
}

static void
test_edge_cases_agree(void)
{
    size_t bad = 0;

    for (size_t i = 0; i < sizeof(corpus) / sizeof(corpus[0]); i++) {
        struct seen ref;

        if (!agree(corpus[i], strlen(corpus[i]), &ref))
            bad++;
        CHECK(ref.valid, "corpus entry %zu is a JSON object to jansson", i);
        seen_free(&ref);
    }
    CHECK(bad == 0, "scan reads every corpus entry as jansson does (%zu differ)", bad);
    bad = 0;
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        size_t len = refused[i].len ? refused[i].len : strlen(refused[i].txt);
        struct aigw_chunk c;
        struct seen ref;

        if (!agree(refused[i].txt, len, &ref))
            bad++;
        if (ref.valid || aigw_chunk_scan(refused[i].txt, len, &c) == 0) {
            printf("  case %zu: ", i);
            print_text(refused[i].txt, len);
        }
        CHECK(!ref.valid, "refused case %zu is refused by jansson too", i);
        seen_free(&ref);
    }
    CHECK(bad == 0, "scan refuses what jansson refuses (%zu differ)", bad);
}

/* Nesting: jansson takes 2048 levels of values and refuses 2049. */
static void
test_depth_limit(void)
{
    for (size_t levels = 2046; levels <= 2050; levels++) {
        /* {"a": [[...[1]...]]}: the object is level 1, the arrays 2..levels-1, the 1 is level `levels` */
        size_t arrays = levels - 2, n = 0;
        char *txt = aigw_xmalloc(arrays * 2 + 16);
        struct aigw_chunk c;
        struct seen ref;

        memcpy(txt, "{\"a\":", 5);
        n += 5;
        memset(txt + n, '[', arrays);
        n += arrays;
        txt[n++] = '1';
        memset(txt + n, ']', arrays);
        n += arrays;
        txt[n++] = '}';
        CHECK(agree(txt, n, &ref), "depth %zu: scan and jansson agree", levels);
        CHECK((aigw_chunk_scan(txt, n, &c) == 0) == (levels <= 2048), "depth %zu %s", levels,
              levels <= 2048 ? "accepted" : "refused");
        seen_free(&ref);
        free(txt);
    }
}

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint32_t
next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

/* Mutate txt (n bytes, room for cap) in place; returns the new length. */
static size_t
mutate(char *txt, size_t n, size_t cap)
{
    static const char pool[] = "{}[]:,\"\\u0123456789abcdefABCDEF.eE+-ntrfls \t\r\n/";
    static const unsigned char odd[] = {0x00, 0x01, 0x1f, 0x7f, 0x80, 0xbf, 0xc0, 0xc3, 0xdf, 0xe0,
                                        0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff, 0xa9, 0x9f};
    int edits = 1 + (int)(next() % 3);

    for (int e = 0; e < edits && n > 0; e++) {
        /* cppcheck-suppress zerodivcond ; n > 0 is the loop's condition */
        size_t at = next() % n;
        char c = next() % 4 == 0 ? (char)odd[next() % sizeof(odd)] : pool[next() % (sizeof(pool) - 1)];

        switch (next() % 5) {
        case 0: /* replace */
            txt[at] = c;
            break;
        case 1: /* delete */
            memmove(txt + at, txt + at + 1, n - at - 1);
            n--;
            break;
        case 2: /* insert */
            if (n + 1 < cap) {
                memmove(txt + at + 1, txt + at, n - at);
                txt[at] = c;
                n++;
            }
            break;
        case 3: /* truncate */
            n = at;
            break;
        default: { /* repeat a span: duplicate keys, nesting */
            size_t len = 1 + next() % 24;

            if (at + len <= n && n + len < cap) {
                memmove(txt + at + len, txt + at, n - at);
                n += len;
            }
            break;
        }
        }
    }
    return n;
}

/* Mutations per corpus entry. Under ASan (which the suite runs with exact,
 * slow stack traces on every malloc, and jansson allocates for every value)
 * a fifth of them, enough to run the scan's memory accesses over every kind
 * of damage; the plain build compares all of them with jansson. */
#ifdef __SANITIZE_ADDRESS__
#define PER_ENTRY 5000
#else
#define PER_ENTRY 25000
#endif

static void
test_mutations_agree(void)
{
    enum { CAP = 2048 };
    size_t total = 0, bad = 0, valid = 0;
    char txt[CAP];

    for (size_t i = 0; i < sizeof(corpus) / sizeof(corpus[0]); i++) {
        for (int k = 0; k < PER_ENTRY; k++) {
            size_t n = strlen(corpus[i]);
            struct seen ref;

            memcpy(txt, corpus[i], n);
            n = mutate(txt, n, CAP);
            if (!agree(txt, n, &ref) && ++bad > 20)
                goto out;
            valid += ref.valid;
            total++;
            seen_free(&ref);
        }
    }
out:
    printf("  %zu mutated events, %zu of them still JSON objects\n", total, valid);
    CHECK(bad == 0, "scan and jansson agree on every mutated event (%zu differ)", bad);
    CHECK(valid > total / 20 && valid < total - total / 20, "the mutations mix accepted (%zu) and refused events",
          valid);
}

int
main(void)
{
    test_reads_llama_events();
    test_edge_cases_agree();
    test_depth_limit();
    test_mutations_agree();
    return tl_done();
}
