/* test_memcheck.c - the daemon's normal lifecycle under valgrind's memcheck:
 * start, a cache miss and its hit, a stream, the OpenAI route plain and
 * streamed, an API key made and used, refused requests, /metrics, a reload,
 * a SIGTERM drain. Memcheck sees what the sanitizer pass does not: a branch
 * on memory never written, and a leak of the whole lifecycle (LSan checks it
 * too, in the other build). Any error, or a leak definitely or indirectly
 * lost, is valgrind's exit status 99 and fails the test. Not built with the
 * sanitizers (they and valgrind do not mix). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

static const char CONFIG[] =
    "{\"redis\":{\"timeout_ms\":5000},"
    "\"upstream\":{\"timeout_ms\":20000,\"stream_idle_ms\":20000,\"queue_timeout_ms\":20000,"
    "\"health_interval_ms\":60000,\"fail_threshold\":1000,"
    "\"routes\":null,\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":4,\"max_connections\":4}]},"
    "\"openai\":{\"models\":[{\"id\":\"clinic-small\"}]},"
    "\"usage\":{\"flush_ms\":20}}";

/* Read a streamed answer to its end; whether it ended with its closing
 * event (needle). */
static bool
stream_done(int port, const char *tok, const char *path, const char *body, const char *needle)
{
    struct tl_resp r;
    bool ok;

    tl_post(port, path, tok, body, &r);
    ok = r.status == 200 && strstr(r.body, needle) != NULL;
    if (!ok)
        fprintf(stderr, "stream %s: %ld %s\n", path, r.status, r.body);
    tl_resp_free(&r);
    return ok;
}

int
main(void)
{
    const char *wrap[] = {"valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                          "--show-leak-kinds=definite,indirect", "--errors-for-leak-kinds=definite,indirect",
                          "--num-callers=30", NULL};
    char *cfg = tl_config_patch(CONFIG), *tok, *log;
    const char *mock = tl_env("AIGW_MOCK_URL");
    PGconn *owner = tl_pg_owner();
    struct tl_aigw gw;
    struct tl_resp r;
    char tid[37], code[65], key[128], kid[37], cache[32] = "";
    int port, st;
    long n;

    tl_mock_reset(mock);
    tl_mock_config(mock, "{\"mode\":\"ok\",\"tokens\":5}");
    if (tl_aigw_start_wrapped(&gw, cfg, NULL, wrap) != 0)
        return 1;
    free(cfg);
    port = gw.port;
    tl_create_tenant(owner, "enterprise", "active", tid, code);
    tok = tl_token(code, "admin", 600);

    /* a miss, then its hit */
    for (int i = 0; i < 2; i++) {
        tl_post(port, "/api/ai/query", tok, "{\"question\":\"How do I clean my lenses?\"}", &r);
        tl_expect(i == 0 ? "miss" : "hit", &r, 200, NULL);
        tl_resp_header(&r, "X-Cache", cache, sizeof(cache));
        CHECK(strcmp(cache, i == 0 ? "MISS" : "HIT") == 0, "request %d: X-Cache %s", i, cache);
        tl_resp_free(&r);
    }
    CHECK(stream_done(port, tok, "/api/ai/query", "{\"question\":\"What is myopia?\",\"stream\":true}",
                      "data: {\"done\":true"),
          "a stream on /api/ai/query ends with its closing event");
    tl_post(port, "/v1/chat/completions", tok,
            "{\"model\":\"clinic-small\",\"messages\":[{\"role\":\"user\",\"content\":\"What is astigmatism?\"}]}",
            &r);
    tl_expect("OpenAI route", &r, 200, NULL);
    tl_resp_free(&r);
    CHECK(stream_done(port, tok, "/v1/chat/completions",
                      "{\"model\":\"clinic-small\",\"stream\":true,"
                      "\"messages\":[{\"role\":\"user\",\"content\":\"What is hyperopia?\"}]}",
                      "data: [DONE]"),
          "a stream on /v1/chat/completions ends with [DONE]");

    /* an API key made, used, revoked */
    CHECK(tl_api_key_create(port, tok, "{\"name\":\"memcheck\"}", key, sizeof(key), kid) == 201, "key created");
    st = tl_key_request(port, "POST", "/api/ai/query", key, false, "{\"question\":\"How do I clean my lenses?\"}", &r);
    CHECK(st == 0 && r.status == 200, "the key is served (%ld)", r.status);
    tl_resp_free(&r);
    {
        char *path = tl_sprintf("/api/v1/api-keys/%s", kid);

        tl_delete(port, path, tok, &r);
        CHECK(r.status == 204, "key revoked (%ld %s)", r.status, r.body);
        tl_resp_free(&r);
        free(path);
    }

    /* refused: a bad token, a bad body, an unknown route */
    tl_post(port, "/api/ai/query", "not-a-token", "{\"question\":\"x\"}", &r);
    tl_expect("bad token", &r, 401, "unauthenticated");
    tl_resp_free(&r);
    tl_post(port, "/api/ai/query", tok, "{\"question\":", &r);
    tl_expect("bad body", &r, 400, NULL);
    tl_resp_free(&r);
    tl_get(port, "/nowhere", tok, &r);
    tl_expect("unknown route", &r, 404, NULL);
    tl_resp_free(&r);
    tl_get(port, "/metrics", NULL, &r);
    CHECK(r.status == 200 && strstr(r.body, "aigw_") != NULL, "/metrics (%ld)", r.status);
    tl_resp_free(&r);

    /* a reload, then a request on the reloaded settings */
    tl_aigw_signal(&gw, SIGHUP);
    CHECK(tl_aigw_log_wait(&gw, "reload: configuration", 30000), "the reload is logged");
    tl_post(port, "/api/ai/query", tok, "{\"question\":\"After the reload?\"}", &r);
    tl_expect("after the reload", &r, 200, NULL);
    tl_resp_free(&r);
    n = tl_usage_rows(owner, tid, "billed", 5);
    CHECK(n == 5, "the 5 answers from the model are billed: %ld", n);
    n = tl_usage_rows(owner, tid, "from_cache AND NOT billed", 2);
    CHECK(n == 2, "the 2 cache hits have their rows, not billed: %ld", n);

    /* the drain and exit: valgrind's status is aigw's, or 99 */
    tl_aigw_signal(&gw, SIGTERM);
    st = tl_aigw_wait(&gw, 120000);
    log = tl_aigw_log(&gw);
    CHECK(st == 0, "aigw under memcheck exits 0 (99: memcheck found errors or leaks): %d", st);
    CHECK(log != NULL && strstr(log, "== ") == NULL, "nothing from memcheck in the log:\n%s", log ? log : "");
    free(log);
    tl_aigw_stop(&gw);
    free(tok);
    tl_mock_reset(mock);
    PQfinish(owner);
    return tl_done();
}
