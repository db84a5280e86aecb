/* test_openai.c - the OpenAI-compatible routes: /v1/chat/completions (plain,
 * cached, streamed, failing mid-stream, bad input in the OpenAI error shape,
 * nothing billed on rejection, plan and model gating) and /v1/models */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static PGconn *owner;
static const char *mock;
static int port;

static const char CONFIG[] =
    "{\"upstream\":{\"timeout_ms\":5000,\"health_interval_ms\":60000,\"fail_threshold\":1000,"
    "\"routes\":null,\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":16,\"max_connections\":16}]},"
    "\"openai\":{\"models\":[{\"id\":\"clinic-small\"},{\"id\":\"clinic-large\",\"tiers\":[\"enterprise\"]},"
    "{\"id\":\"sales-rag\",\"route\":\"sales\",\"tiers\":[\"platinum\"]},"
    "{\"id\":\"clinic-analytics\",\"route\":\"patient_analytics\"}]},"
    "\"usage\":{\"flush_ms\":20}}";

static int
chat(const char *token, const char *body, struct tl_resp *r)
{
    return tl_post(port, "/v1/chat/completions", token, body, r);
}

/* OpenAI error shape: error.{message, type, param, code}. */
static void
expect_error(const char *name, const struct tl_resp *r, long status, const char *type, const char *param)
{
    char buf[256] = "", code[64] = "";

    CHECK(r->status == status, "%s: status %ld want %ld (%s)", name, r->status, status, r->body);
    CHECK(tl_json_str(r, "error.type", buf, sizeof(buf)) && strcmp(buf, type) == 0, "%s: type %s want %s", name, buf,
          type);
    CHECK(tl_json_str(r, "error.message", buf, sizeof(buf)) && buf[0] != '\0', "%s: has a message", name);
    CHECK(tl_json_str(r, "error.code", code, sizeof(code)) && code[0] != '\0', "%s: has a code", name);
    if (param != NULL)
        CHECK(tl_json_str(r, "error.param", buf, sizeof(buf)) && strcmp(buf, param) == 0, "%s: param %s want %s",
              name, buf, param);
}

static void
test_plain_and_cache(const char *tok, const char *tid)
{
    struct tl_resp r;
    char buf[512];
    long long calls = tl_mock_stat(mock, "chat_requests");
    const char *body = "{\"model\":\"clinic-small\",\"temperature\":0,\"max_tokens\":5000,"
                       "\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                       "{\"role\":\"user\",\"content\":\"What is presbyopia?\"}]}";

    chat(tok, body, &r);
    CHECK(r.status == 200, "chat: 200 (%ld %s)", r.status, r.body);
    CHECK(tl_json_str(&r, "object", buf, sizeof(buf)) && strcmp(buf, "chat.completion") == 0, "object chat.completion");
    CHECK(strstr(r.body, "Mock answer to [What is presbyopia?]") != NULL, "the upstream's answer passed through");
    CHECK(tl_json_int(&r, "usage.completion_tokens", -1) > 0, "usage from the upstream");
    CHECK(tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0, "MISS");
    CHECK(strstr(r.body, "\"timings\"") == NULL && strstr(r.body, "cache_n") == NULL,
          "no prompt-cache timings from the shared slot");
    CHECK(strstr(r.body, "prompt_tokens_details") == NULL && strstr(r.body, "cached_tokens") == NULL,
          "no usage.prompt_tokens_details (cached_tokens) from the shared slot");
    tl_resp_free(&r);
    /* what was forwarded: model kept, max_tokens clamped to the plan (enterprise: 1000) */
    {
        struct tl_resp st;

        tl_http_url(mock, "GET", "/__mock/stats", NULL, &st);
        CHECK(tl_json_int(&st, "last_request.max_tokens", -1) == 1000, "max_tokens clamped to the plan's 1000");
        CHECK(tl_json_str(&st, "last_request.model", buf, sizeof(buf)) && strcmp(buf, "clinic-small") == 0,
              "model forwarded");
        tl_resp_free(&st);
    }
    CHECK(tl_usage_rows(owner, tid, "billed AND route = '/v1/chat/completions' AND completion_tokens > 0", 1) == 1, "billed row");

    /* temperature 0: the same request is answered from the cache */
    chat(tok, body, &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "HIT") == 0,
          "repeat: HIT (%ld)", r.status);
    CHECK(strstr(r.body, "\"chat.completion\"") != NULL && strstr(r.body, "Mock answer to [What is presbyopia?]") != NULL,
          "hit in the chat.completion shape");
    CHECK(tl_json_int(&r, "usage.total_tokens", -1) > 0, "hit has usage");
    tl_resp_free(&r);
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 1, "one upstream call for two requests");

    /* sampled (no temperature): never cached */
    body = "{\"messages\":[{\"role\":\"user\",\"content\":\"Tell me a story\"}]}";
    chat(tok, body, &r);
    tl_resp_free(&r);
    chat(tok, body, &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
          "sampled request: MISS every time");
    tl_resp_free(&r);
    CHECK(tl_mock_stat(mock, "chat_requests") == calls + 3, "sampled requests both went upstream");

    /* temperature 0 with token probabilities (logprobs, or llama-server's
     * own n_probs): the rebuilt chat.completion a hit answers with has no
     * choices[0].logprobs, so these are never answered from the cache */
    {
        static const char *const probs[] = {
            "{\"temperature\":0,\"logprobs\":true,\"top_logprobs\":2,\"messages\":[{\"role\":\"user\",\"content\":\"How sure are you?\"}]}",
            "{\"temperature\":0,\"n_probs\":2,\"messages\":[{\"role\":\"user\",\"content\":\"How sure are you?\"}]}",
        };

        for (int i = 0; i < 2; i++) {
            chat(tok, probs[i], &r);
            tl_resp_free(&r);
            chat(tok, probs[i], &r);
            CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", buf, sizeof(buf)) && strcmp(buf, "MISS") == 0,
                  "%s: MISS again, not a hit without logprobs (%ld %s)", i == 0 ? "logprobs" : "n_probs", r.status, buf);
            tl_resp_free(&r);
        }
        CHECK(tl_mock_stat(mock, "chat_requests") == calls + 7, "requests for token probabilities all went upstream");
    }
    CHECK(tl_usage_rows(owner, tid, "billed", 7) == 7 && tl_usage_rows(owner, tid, "NOT billed", 1) == 1, "7 billed rows, 1 hit row");
}

/* Length limits the plan sets cannot be lifted: llama-server's own
 * n_predict (which wins over max_tokens there) is not forwarded, and a null
 * max_completion_tokens leaves the client's max_tokens in force. */
static void
test_length_limits(const char *tok)
{
    struct tl_resp r, st;
    char buf[64];

    chat(tok, "{\"n_predict\":1400,\"messages\":[{\"role\":\"user\",\"content\":\"a long one, please\"}]}", &r);
    CHECK(r.status == 200 && tl_json_int(&r, "usage.completion_tokens", -1) <= 1000,
          "n_predict 1400 on a 1000-token plan: %lld tokens", tl_json_int(&r, "usage.completion_tokens", -1));
    tl_resp_free(&r);
    tl_http_url(mock, "GET", "/__mock/stats", NULL, &st);
    CHECK(tl_json_int(&st, "last_request.max_tokens", -1) == 1000 && !tl_json_str(&st, "last_request.n_predict", buf, sizeof(buf)) &&
              tl_json_int(&st, "last_request.n_predict", -1) == -1,
          "forwarded: max_tokens 1000, no n_predict");
    tl_resp_free(&st);
    /* the slot is aigw's to choose: a pinned one would queue inside
     * llama-server and reuse the prompt cache another tenant filled */
    chat(tok, "{\"id_slot\":0,\"slot_id\":0,\"n_cmpl\":1,\"return_progress\":true,\"timings_per_token\":true,"
              "\"messages\":[{\"role\":\"user\",\"content\":\"my slot\"}]}",
         &r);
    CHECK(r.status == 200, "id_slot, slot_id and n_cmpl 1 are accepted (%ld)", r.status);
    tl_resp_free(&r);
    tl_http_url(mock, "GET", "/__mock/stats", NULL, &st);
    CHECK(tl_json_int(&st, "last_request.id_slot", -1) == -1 && tl_json_int(&st, "last_request.slot_id", -1) == -1 &&
              tl_json_int(&st, "last_request.n_cmpl", -1) == 1,
          "forwarded: no id_slot or slot_id, n_cmpl 1 as sent");
    CHECK(!strstr(st.body, "return_progress") && !strstr(st.body, "timings_per_token"),
          "forwarded: no return_progress (its chunks tell the slot's cached prompt), no timings_per_token");
    tl_resp_free(&st);
    chat(tok, "{\"max_completion_tokens\":null,\"max_tokens\":3,\"messages\":[{\"role\":\"user\",\"content\":\"short\"}]}",
         &r);
    CHECK(r.status == 200 && tl_json_int(&r, "usage.completion_tokens", -1) == 3,
          "max_completion_tokens null, max_tokens 3: %lld tokens", tl_json_int(&r, "usage.completion_tokens", -1));
    tl_resp_free(&r);
}

/* A cached answer keeps its finish_reason ("length" when max_tokens cut
 * it: it was always "stop"), and an earlier turn's tool calls (an
 * assistant message with null content) are a valid conversation. */
static void
test_finish_and_tools(const char *tok, const char *tid)
{
    static const char cut[] = "{\"temperature\":0,\"max_tokens\":3,\"messages\":[{\"role\":\"user\",\"content\":"
                              "\"cut me short\"}]}";
    struct tl_resp r;
    char fr[32] = "", hit[8] = "";

    chat(tok, cut, &r);
    CHECK(r.status == 200 && tl_json_str(&r, "choices.0.finish_reason", fr, sizeof(fr)) && strcmp(fr, "length") == 0,
          "cut by max_tokens: finish_reason length (%s)", fr);
    tl_resp_free(&r);
    chat(tok, cut, &r);
    CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", hit, sizeof(hit)) && strcmp(hit, "HIT") == 0 &&
              tl_json_str(&r, "choices.0.finish_reason", fr, sizeof(fr)) && strcmp(fr, "length") == 0,
          "from the cache: still length (%s, %s)", hit, fr);
    tl_resp_free(&r);
    chat(tok, "{\"messages\":[{\"role\":\"user\",\"content\":\"weather?\"},{\"role\":\"assistant\",\"content\":null,"
              "\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"w\",\"arguments\":\"{}\"}}]},"
              "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"sunny\"}]}",
         &r);
    CHECK(r.status == 200, "a turn after tool calls: 200 (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    /* a thinking model's answer (message.reasoning_content beside the
     * content): the rebuilt chat.completion of a hit or of a coalesced
     * answer has no reasoning_content, so it is given fresh every time */
    {
        static const char think[] = "{\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"think first\"}]}";
        char thought[128] = "";

        tl_mock_config(mock, "{\"tokens\":5,\"reasoning_tokens\":2}");
        for (int i = 0; i < 2; i++) {
            chat(tok, think, &r);
            CHECK(r.status == 200 && tl_json_str(&r, "choices.0.message.reasoning_content", thought, sizeof(thought)) &&
                      strstr(thought, "tok2") != NULL && tl_resp_header(&r, "X-Cache", hit, sizeof(hit)) &&
                      strcmp(hit, "MISS") == 0,
                  "thinking answer %d: fresh, with its reasoning_content (%ld %s %s)", i + 1, r.status, hit, r.body);
            tl_resp_free(&r);
        }
        tl_mock_config(mock, "{\"tokens\":6,\"reasoning_tokens\":0}");
    }
    chat(tok, "{\"messages\":[{\"role\":\"assistant\",\"content\":null},{\"role\":\"user\",\"content\":\"x\"}]}", &r);
    expect_error("null content without tool calls", &r, 400, "invalid_request_error", "messages[0].content");
    tl_resp_free(&r);
    /* an empty answer is not kept for the next one to get (the published
     * result single-flight hands to late-comers for 10 s is another matter) */
    {
        static const char empty[] = "{\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"say nothing\"}]}";
        static const char COUNT[] = "return #redis.call('KEYS', ARGV[1])";
        char *pattern = tl_sprintf("aigw:{%s}:c:*", tid);
        long long entries = tl_redis_int("EVAL %s 0 %s", COUNT, pattern);

        tl_mock_config(mock, "{\"tokens\":0}");
        chat(tok, empty, &r);
        CHECK(r.status == 200 && tl_json_str(&r, "choices.0.message.content", fr, sizeof(fr)) && fr[0] == '\0' &&
                  tl_resp_header(&r, "X-Cache", hit, sizeof(hit)) && strcmp(hit, "MISS") == 0,
              "empty answer: 200, a MISS (%ld %s)", r.status, hit);
        tl_resp_free(&r);
        CHECK(tl_redis_int("EVAL %s 0 %s", COUNT, pattern) == entries, "an empty answer is not cached");
        free(pattern);
        tl_mock_config(mock, "{\"tokens\":6}");
    }
}

/* Split an SSE body into its data payloads; false on bad framing. */
static bool
payloads(const char *body, char out[][2048], int cap, int *n)
{
    const char *p = body;

    *n = 0;
    while (*p != '\0') {
        const char *nl = strstr(p, "\n\n");

        if (nl == NULL || strncmp(p, "data: ", 6) != 0 || memchr(p, '\n', (size_t)(nl - p)) != NULL || *n == cap)
            return false;
        snprintf(out[*n], 2048, "%.*s", (int)(nl - p - 6), p + 6);
        (*n)++;
        p = nl + 2;
    }
    return true;
}

static void
test_stream(const char *tok, const char *tid)
{
    static char ev[64][2048];
    struct tl_resp r;
    int n = 0, deltas = 0;
    bool all_json = true, has_usage = false;
    char buf[128];

    chat(tok, "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Stream please\"}]}", &r);
    CHECK(r.status == 200, "stream: 200");
    CHECK(tl_resp_header(&r, "Content-Type", buf, sizeof(buf)) && strcmp(buf, "text/event-stream") == 0,
          "stream: text/event-stream");
    CHECK(payloads(r.body, ev, 64, &n), "stream framing: data: + one line + blank line: %s", r.body);
    CHECK(n > 2 && strcmp(ev[n - 1], "[DONE]") == 0, "[DONE] last");
    for (int i = 0; i < n - 1; i++) {
        json_t *j = json_loads(ev[i], 0, NULL);

        all_json = all_json && j != NULL;
        if (json_object_get(j, "usage") != NULL && json_array_size(json_object_get(j, "choices")) == 0)
            has_usage = true;
        if (strstr(ev[i], "\"chat.completion.chunk\"") != NULL && strstr(ev[i], "\"content\":\"") != NULL)
            deltas++;
        json_decref(j);
    }
    CHECK(all_json, "every event but [DONE] is one JSON object");
    CHECK(deltas == 6, "6 content chunks passed through (%d)", deltas);
    CHECK(!has_usage, "no usage chunk the client did not ask for");
    tl_resp_free(&r);
    CHECK(tl_usage_rows(owner, tid, "billed AND completion_tokens = 6 AND prompt_tokens > 0 AND success", 1) >= 1,
          "stream billed with the upstream's token counts");

    /* asked for usage: the usage chunk comes through */
    chat(tok,
         "{\"stream\":true,\"stream_options\":{\"include_usage\":true},"
         "\"messages\":[{\"role\":\"user\",\"content\":\"Stream with usage\"}]}",
         &r);
    CHECK(r.status == 200 && strstr(r.body, "\"choices\":[]") != NULL && strstr(r.body, "\"usage\"") != NULL,
          "include_usage: the usage chunk is passed through");
    /* the mock, like llama-server, puts timings (cache_n: how much of the
     * prompt the shared slot held) on the last chunk: not for the tenant */
    CHECK(strstr(r.body, "\"timings\"") == NULL && strstr(r.body, "cache_n") == NULL,
          "include_usage: no prompt-cache timings in the stream");
    CHECK(strstr(r.body, "prompt_tokens_details") == NULL && strstr(r.body, "cached_tokens") == NULL,
          "include_usage: no usage.prompt_tokens_details (cached_tokens) in the stream");
    CHECK(payloads(r.body, ev, 64, &n) && n >= 2 && strcmp(ev[n - 1], "[DONE]") == 0,
          "include_usage: the rewritten chunk keeps the framing");
    tl_resp_free(&r);

    /* failure after the first byte: an error event, then [DONE] */
    tl_mock_config(mock, "{\"mode\":\"error_midstream_data\"}");
    chat(tok, "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Break mid-way\"}]}", &r);
    CHECK(r.status == 200 && payloads(r.body, ev, 64, &n), "mid-stream failure: well-formed stream");
    CHECK(n >= 2 && strcmp(ev[n - 1], "[DONE]") == 0 && strstr(ev[n - 2], "\"error\"") != NULL &&
              strstr(ev[n - 2], "\"type\"") != NULL,
          "mid-stream failure: an OpenAI error event then [DONE]");
    tl_resp_free(&r);
    tl_mock_config(mock, "{\"mode\":\"ok\"}");
    CHECK(tl_usage_rows(owner, tid, "billed AND NOT success AND completion_tokens = 2", 1) == 1, "partial stream billed for 2 tokens");
}

/* An upstream event with empty data (`data:`, or `data: ` then a CRLF
 * blank line: an empty string under the SSE rules) is skipped, not
 * relayed and not a failure: it failed the stream mid-way as a 502. */
static void
test_stream_empty_data(void)
{
    static char ev[64][2048];
    char id[37], code[65], *tok;
    struct tl_resp r;
    int n = 0, deltas = 0;
    bool errors = false;

    tl_create_tenant(owner, "enterprise", "active", id, code);
    tok = tl_token(code, "admin", 600);
    tl_mock_config(mock, "{\"empty_data_events\":true}");
    chat(tok, "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Stream past empty events\"}]}", &r);
    CHECK(r.status == 200, "empty data event: 200 (%ld)", r.status);
    CHECK(payloads(r.body, ev, 64, &n), "empty data event: every event is data: + one line: %s", r.body);
    CHECK(n > 2 && strcmp(ev[n - 1], "[DONE]") == 0, "empty data event: [DONE] last: %s", r.body);
    for (int i = 0; i < n - 1; i++) {
        errors = errors || strstr(ev[i], "\"error\"") != NULL || ev[i][0] == '\0';
        deltas += strstr(ev[i], "\"chat.completion.chunk\"") != NULL && strstr(ev[i], "\"content\":\"") != NULL;
    }
    CHECK(!errors, "empty data event: no error event and no empty event relayed: %s", r.body);
    CHECK(deltas == 6, "empty data event: the 6 content chunks passed through (%d)", deltas);
    CHECK(strstr(r.body, "Mock answer to [Stream past empty events]") != NULL, "empty data event: the whole answer");
    tl_resp_free(&r);
    tl_mock_config(mock, "{\"empty_data_events\":false}");
    CHECK(tl_usage_rows(owner, id, "status_code = 200 AND success AND error_code IS NULL AND billed AND completion_tokens = 6",
                        1) == 1,
          "empty data event: the usage row is a billed 200 with the 6 tokens");
    CHECK(tl_usage_rows(owner, id, "true", 1) == 1, "empty data event: exactly one row");
    free(tok);
}

/* On a tenant of its own: another test's answer may still be on its way
 * into the cache (stored after the response) while this one looks at what
 * its tenant has in Redis. */
static void
test_bad_input(void)
{
    static const struct {
        const char *name, *body, *param;
    } cases[] = {
        {"messages missing", "{}", "messages"},
        {"messages not an array", "{\"messages\":\"hi\"}", "messages"},
        {"messages empty", "{\"messages\":[]}", "messages"},
        {"message not an object", "{\"messages\":[\"hi\"]}", "messages[0]"},
        {"wrong role", "{\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}", "messages[0].role"},
        {"content not a string", "{\"messages\":[{\"role\":\"user\",\"content\":42}]}", "messages[0].content"},
        {"n > 1", "{\"n\":2,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "n"},
        {"n_cmpl > 1 (llama-server's n)", "{\"n_cmpl\":4,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "n_cmpl"},
        {"max_tokens negative", "{\"max_tokens\":-5,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "max_tokens"},
        {"max_tokens not integer", "{\"max_tokens\":\"many\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "max_tokens"},
        {"max_tokens bad beside a good max_completion_tokens",
         "{\"max_tokens\":-5,\"max_completion_tokens\":10,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "max_tokens"},
        {"max_completion_tokens zero", "{\"max_completion_tokens\":0,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "max_completion_tokens"},
        {"temperature too high", "{\"temperature\":7,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         "temperature"},
        {"stream not bool", "{\"stream\":\"yes\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "stream"},
    };
    long long calls = tl_mock_stat(mock, "chat_requests"), q0;
    char tid[37], code[65], what[256], *tok, *redis0;
    struct tl_resp r;

    tl_create_tenant(owner, "enterprise", "active", tid, code);
    tok = tl_token(code, "admin", 600);
    q0 = tl_quota_used(tid);
    redis0 = tl_tenant_redis(tid);

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        chat(tok, cases[i].body, &r);
        expect_error(cases[i].name, &r, 400, "invalid_request_error", cases[i].param);
        tl_resp_free(&r);
    }
    chat(tok, "{not json", &r);
    expect_error("invalid JSON", &r, 400, "invalid_request_error", NULL);
    tl_resp_free(&r);
    chat(tok, "{\"model\":\"gpt-9\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r);
    expect_error("unknown model", &r, 404, "not_found_error", NULL);
    tl_resp_free(&r);
    chat(tok, "{\"model\":\"sales-rag\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r);
    expect_error("model of another plan", &r, 404, "not_found_error", NULL);
    tl_resp_free(&r);
    chat("not-a-token", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r);
    expect_error("bad token", &r, 401, "authentication_error", NULL);
    tl_resp_free(&r);
    CHECK(tl_mock_stat(mock, "chat_requests") == calls, "no bad request reached the upstream");
    CHECK(tl_usage_flushed(port), "bad input: the usage rows are written");
    CHECK(tl_usage_rows(owner, tid, "billed", 0) == 0, "nothing billed for bad input");
    CHECK(tl_quota_used(tid) == q0, "quota untouched by bad input");
    CHECK(tl_tenant_redis_kept(tid, redis0, what, sizeof(what)),
          "bad input: nothing counted or stored in Redis (rate limit window, cache, single-flight): %s", what);
    free(redis0);
    free(tok);
}

/* Messages with no visible character in any of them (empty, white space,
 * zero-width and other default-ignorable characters, control characters):
 * 400 invalid_request on param "messages", as the query route refuses a
 * blank question, before admission: the model not called, nothing billed,
 * no quota, no rate-limit unit, nothing cached (they went to the model and
 * were billed). One message with a visible character is enough, in any
 * position, beside empty ones; an earlier turn's tool calls count too. */
static void
test_invisible_messages(void)
{
    static const char *const refused[] = {
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\"}]}",
        "{\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"\\u200b\\u200b\"}]}",
        "{\"messages\":[{\"role\":\"system\",\"content\":\" \\t\\n\"},"
        "{\"role\":\"user\",\"content\":\"\\u3000\\ufeff\\u2060\\u00ad\\u00a0\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\\u0001\\u007f\\u0085\\u200e\"}]}",
        "{\"messages\":[{\"role\":\"developer\",\"content\":\"\"},{\"role\":\"user\",\"content\":\"\\udb40\\udc41\"},"
        "{\"role\":\"assistant\",\"content\":\"\\ufe0f\"}]}", /* a tag character, a variation selector */
        "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"\\u200b\"}]}",
    };
    static const char *const accepted[] = {
        "{\"messages\":[{\"role\":\"system\",\"content\":\"\"},{\"role\":\"user\",\"content\":\"\\u200bvisible\"}]}",
        "{\"messages\":[{\"role\":\"user\",\"content\":\"\\u200b\"},{\"role\":\"user\",\"content\":\" \\u00e9 \"}]}",
        "{\"messages\":[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
        "\"function\":{\"name\":\"w\",\"arguments\":\"{}\"}}]},{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"\"}]}",
    };
    size_t n = sizeof(refused) / sizeof(refused[0]);
    long long calls = tl_mock_stat(mock, "chat_requests");
    char tid[37], code[65], what[256], buf[64], *tok, *redis0;
    struct tl_resp r;

    tl_create_tenant(owner, "enterprise", "active", tid, code);
    tok = tl_token(code, "admin", 600);
    redis0 = tl_tenant_redis(tid);
    for (size_t i = 0; i < n; i++) {
        char *name = tl_sprintf("no visible character %zu", i);

        chat(tok, refused[i], &r);
        expect_error(name, &r, 400, "invalid_request_error", "messages");
        CHECK(tl_json_str(&r, "error.code", buf, sizeof(buf)) && strcmp(buf, "invalid_request") == 0,
              "%s: code invalid_request (%s)", name, buf);
        CHECK(tl_resp_header(&r, "RateLimit", buf, sizeof(buf)) == NULL, "%s: refused before admission", name);
        tl_resp_free(&r);
        free(name);
    }
    CHECK(tl_mock_stat(mock, "chat_requests") == calls, "no visible character: the model was not called (%lld)",
          tl_mock_stat(mock, "chat_requests") - calls);
    CHECK(tl_usage_flushed(port), "no visible character: the usage rows are written");
    CHECK(tl_usage_rows(owner, tid, "status_code = 400 AND error_code = 'invalid_request' AND NOT billed", (long)n) ==
              (long)n,
          "a 400 invalid_request row, not billed, for each");
    CHECK(tl_usage_rows(owner, tid, "billed", 0) == 0, "nothing billed");
    CHECK(tl_quota_used(tid) == -1, "no quota counted or reserved (%lld)", tl_quota_used(tid));
    CHECK(tl_tenant_redis_kept(tid, redis0, what, sizeof(what)),
          "no visible character: nothing counted or stored in Redis (window, quota, cache, single-flight): %s", what);
    for (size_t i = 0; i < sizeof(accepted) / sizeof(accepted[0]); i++) {
        chat(tok, accepted[i], &r);
        CHECK(r.status == 200, "a visible character in one message: accepted %zu (%ld %s)", i, r.status, r.body);
        tl_resp_free(&r);
    }
    free(redis0);
    free(tok);
}

/* The OpenAI SDKs send everything under /v1: a wrong method on one of its
 * paths, or a path aigw does not serve there, answers in the OpenAI error
 * shape too (the SDK's typed errors read error.type); elsewhere aigw's own. */
static void
test_unrouted(const char *tok)
{
    struct tl_resp r;
    char allow[64] = "";

    tl_get(port, "/v1/chat/completions", tok, &r);
    expect_error("GET /v1/chat/completions", &r, 405, "invalid_request_error", NULL);
    CHECK(tl_resp_header(&r, "Allow", allow, sizeof(allow)) && strcmp(allow, "POST") == 0, "405 has Allow: POST (%s)",
          allow);
    tl_resp_free(&r);
    tl_post(port, "/v1/models", tok, "{}", &r);
    expect_error("POST /v1/models", &r, 405, "invalid_request_error", NULL);
    tl_resp_free(&r);
    tl_post(port, "/v1/embeddings", tok, "{\"input\":\"x\"}", &r);
    expect_error("POST /v1/embeddings", &r, 404, "not_found_error", NULL);
    tl_resp_free(&r);
    tl_get(port, "/api/ai/nothing-here", tok, &r);
    CHECK(r.status == 404 && strstr(r.body, "\"type\"") == NULL, "off /v1: aigw's own error shape (%s)", r.body);
    tl_resp_free(&r);
}

static void
test_gating(const char *tok_ent)
{
    char id[37], code[65], buf[128];
    struct tl_resp r;
    char *tok;

    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "admin", 600);
    chat(tok, "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r);
    expect_error("pro plan", &r, 403, "permission_error", NULL);
    CHECK(tl_json_str(&r, "error.code", buf, sizeof(buf)) && strcmp(buf, "feature_not_in_plan") == 0,
          "code feature_not_in_plan");
    tl_resp_free(&r);
    tl_get(port, "/v1/models", tok, &r);
    CHECK(r.status == 403, "pro plan: /v1/models 403");
    tl_resp_free(&r);
    CHECK(tl_usage_rows(owner, id, "status_code = 403 AND NOT billed AND error_code = 'feature_not_in_plan'", 1) == 1,
          "the gated chat request is logged, not billed");
    CHECK(tl_usage_rows(owner, id, "billed", 0) == 0, "nothing billed");
    free(tok);

    tl_get(port, "/v1/models", tok_ent, &r);
    CHECK(r.status == 200 && strstr(r.body, "\"object\":\"list\"") != NULL, "/v1/models: list");
    CHECK(strstr(r.body, "\"clinic-small\"") != NULL && strstr(r.body, "\"clinic-large\"") != NULL,
          "enterprise sees its models");
    CHECK(strstr(r.body, "sales-rag") == NULL, "a model of another plan is not listed");
    tl_resp_free(&r);

    /* a model routed to a query type is for plans with that feature, even
     * with no tiers of its own: a plan with api_access but without
     * patient_analytics neither sees nor uses clinic-analytics */
    PQclear(tl_sql(owner, true,
                   "INSERT INTO plans (tier, display_name, monthly_query_limit, requests_per_minute, max_tokens, "
                   "features, rank) VALUES ('api_basic', 'API basic', 100, 30, 300, '{knowledge,api_access}', 15) "
                   "ON CONFLICT (tier) DO NOTHING",
                   0, NULL));
    tl_create_tenant(owner, "api_basic", "active", id, code);
    tok = tl_token(code, "admin", 600);
    tl_get(port, "/v1/models", tok, &r);
    CHECK(r.status == 200 && strstr(r.body, "\"clinic-small\"") != NULL && strstr(r.body, "clinic-analytics") == NULL,
          "api_basic lists clinic-small, not clinic-analytics (%s)", r.body);
    tl_resp_free(&r);
    chat(tok, "{\"model\":\"clinic-analytics\",\"messages\":[{\"role\":\"user\",\"content\":\"how many exams?\"}]}",
         &r);
    expect_error("a model routed to a feature the plan lacks", &r, 404, "not_found_error", NULL);
    tl_resp_free(&r);
    chat(tok, "{\"model\":\"clinic-small\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", &r);
    CHECK(r.status == 200, "api_basic uses clinic-small (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    free(tok);
    { /* the plan goes again: test_admin counts the stack's plans */
        const char *tp[1] = {id};

        PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, tp));
        PQclear(tl_sql(owner, true, "DELETE FROM plans WHERE tier = 'api_basic'", 0, NULL));
    }
    tl_get(port, "/v1/models", tok_ent, &r);
    CHECK(r.status == 200 && strstr(r.body, "\"clinic-analytics\"") != NULL, "enterprise lists clinic-analytics");
    {
        json_t *list = json_loads(r.body, 0, NULL);

        /* three models listed is JSON too (the list had ",," between them) */
        CHECK(json_array_size(json_object_get(list, "data")) == 3, "enterprise: /v1/models is JSON with 3 models: %s",
              r.body);
        json_decref(list);
    }
    tl_resp_free(&r);
}

static void
test_rate_limit(void)
{
    char id[37], code[65], buf[64];
    const char *p[1] = {id};
    struct tl_resp r;
    char *tok;
    int limited = 0;

    tl_create_tenant(owner, "enterprise", "active", id, code);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 2}' WHERE id = $1", 1, p));
    tok = tl_token(code, "admin", 600);
    for (int i = 0; i < 3; i++) {
        chat(tok, "{\"messages\":[{\"role\":\"user\",\"content\":\"again\"}]}", &r);
        if (r.status == 429) {
            limited++;
            expect_error("rate limited", &r, 429, "rate_limit_error", NULL);
            CHECK(tl_resp_header(&r, "Retry-After", buf, sizeof(buf)) != NULL, "429 has Retry-After");
            CHECK(tl_resp_header(&r, "x-should-retry", buf, sizeof(buf)) == NULL,
                  "a rate_limited 429 is for retrying: no x-should-retry");
        }
        tl_resp_free(&r);
    }
    CHECK(limited == 1, "third request in a minute: 429 (%d)", limited);
    free(tok);
}

/* The monthly quota spent: 429 quota_exhausted in the OpenAI shape, with
 * Retry-After (the seconds until resets_at) and x-should-retry: false, which
 * the OpenAI SDKs obey (they retry every other 429, and this one stands
 * until the month ends), plain and streamed. */
static void
test_quota(void)
{
    char id[37], code[65];
    const char *p[1] = {id};
    struct tl_resp r;
    char *tok;

    tl_create_tenant(owner, "enterprise", "active", id, code);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"monthly_query_limit\": 1}' WHERE id = $1", 1, p));
    tok = tl_token(code, "admin", 600);
    chat(tok, "{\"messages\":[{\"role\":\"user\",\"content\":\"the month's one question\"}]}", &r);
    CHECK(r.status == 200, "the month's one query (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    chat(tok, "{\"messages\":[{\"role\":\"user\",\"content\":\"one too many\"}]}", &r);
    expect_error("over the quota", &r, 429, "rate_limit_error", NULL);
    tl_expect_quota_exhausted("/v1 over the quota", &r);
    tl_resp_free(&r);
    chat(tok, "{\"messages\":[{\"role\":\"user\",\"content\":\"one too many\"}],\"stream\":true}", &r);
    expect_error("over the quota, streamed", &r, 429, "rate_limit_error", NULL);
    tl_expect_quota_exhausted("/v1 over the quota, streamed", &r);
    tl_resp_free(&r);
    free(tok);
}

/* A prompt over the model's context (llama-server: exceed_context_size_error,
 * as a 400 answer or, from 2024-09..2025-10 builds, a 200 whose first event
 * is that error): a 400 context_length_exceeded the client can act on (an
 * OpenAI SDK retries a 5xx twice: three calls, three rate-limit units), on
 * /v1 plain and streamed and on /api/ai/query; nothing billed or counted. */
static void
test_context_exceeded(void)
{
    static const struct {
        const char *name, *path, *body;
    } cases[] = {
        {"plain", "/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"a very long history\"}]}"},
        {"streamed", "/v1/chat/completions",
         "{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"a very long history, streamed\"}]}"},
        {"query route", "/api/ai/query", "{\"question\":\"a very long question\"}"},
        {"query route, streamed", "/api/ai/query", "{\"question\":\"a very long question, streamed\",\"stream\":true}"},
    };
    char tid[37], code[65], buf[64], *tok;
    long long q0;
    struct tl_resp r;

    tl_create_tenant(owner, "enterprise", "active", tid, code);
    tok = tl_token(code, "admin", 600);
    q0 = tl_quota_used(tid);
    tl_mock_config(mock, "{\"mode\":\"exceed_context\"}");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tl_post(port, cases[i].path, tok, cases[i].body, &r);
        CHECK(r.status == 400, "%s: 400 (%ld %s)", cases[i].name, r.status, r.body);
        CHECK(tl_json_str(&r, "error.code", buf, sizeof(buf)) && strcmp(buf, "context_length_exceeded") == 0,
              "%s: code context_length_exceeded (%s)", cases[i].name, r.body);
        if (strncmp(cases[i].path, "/v1/", 4) == 0)
            CHECK(tl_json_str(&r, "error.type", buf, sizeof(buf)) && strcmp(buf, "invalid_request_error") == 0,
                  "%s: type invalid_request_error", cases[i].name);
        tl_resp_free(&r);
    }
    tl_mock_config(mock, "{\"mode\":\"ok\"}");
    CHECK(tl_usage_rows(owner, tid, "status_code = 400 AND NOT success", 4) == 4, "a row for each 400");
    CHECK(tl_usage_rows(owner, tid, "billed", 0) == 0, "nothing billed");
    CHECK(tl_quota_used(tid) == (q0 < 0 ? 0 : q0), "every reservation refunded (%lld, was %lld: -1 no counter yet)",
          tl_quota_used(tid), q0);
    free(tok);
}

int
main(void)
{
    char *cfg = tl_config_patch(CONFIG);
    struct tl_aigw gw;
    char id[37], code[65];
    char *tok;

    owner = tl_pg_owner();
    mock = tl_env("AIGW_MOCK_URL");
    tl_mock_reset(mock);
    tl_mock_config(mock, "{\"mode\":\"ok\",\"tokens\":6}");
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    free(cfg);
    port = gw.port;
    tl_create_tenant(owner, "enterprise", "active", id, code);
    tok = tl_token(code, "admin", 600);

    test_plain_and_cache(tok, id);
    test_length_limits(tok);
    test_finish_and_tools(tok, id);
    test_stream(tok, id);
    test_stream_empty_data();
    test_bad_input();
    test_invisible_messages();
    test_gating(tok);
    test_unrouted(tok);
    test_rate_limit();
    test_quota();
    test_context_exceeded();

    free(tok);
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0");
    tl_mock_reset(mock);
    PQfinish(owner);
    return tl_done();
}
