/* test_sdk.c - the official OpenAI Node.js SDK (tests/sdk, installed from
 * npm by scripts/test.sh) against a running aigw with API keys: completions,
 * streams, the models list and typed errors (RateLimitError for a 429), and
 * a spent monthly quota it does not retry */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testlib.h"

static const char CONFIG[] =
    "{\"upstream\":{\"health_interval_ms\":60000,\"routes\":null,"
    "\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":8,\"max_connections\":8}]},"
    "\"usage\":{\"flush_ms\":20}}";

int
main(void)
{
    char *cfg = tl_config_patch(CONFIG);
    const char *sdk_dir = tl_env("AIGW_SDK_DIR");
    struct tl_aigw gw;
    struct tl_resp r;
    char id[37], code[65], lid[37], lcode[65], qid[37], qcode[65];
    const char *p[1] = {lid}, *qp[1] = {qid};
    char *tok, *ltok, *qtok, *cmd, line[512], key[128], lkey[128], qkey[128], kid[37];
    PGconn *owner = tl_pg_owner();
    int oks = 0, status;
    bool all_ok = false;
    FILE *f;

    tl_mock_reset(tl_env("AIGW_MOCK_URL"));
    tl_mock_config(tl_env("AIGW_MOCK_URL"), "{\"mode\":\"ok\",\"tokens\":6}");
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    free(cfg);
    tl_create_tenant(owner, "enterprise", "active", id, code);
    tok = tl_token(code, "admin", 600);
    /* a tenant allowed one request a minute, which is used up here */
    tl_create_tenant(owner, "enterprise", "active", lid, lcode);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 1}' WHERE id = $1", 1, p));
    ltok = tl_token(lcode, "admin", 600);
    tl_post(gw.port, "/v1/chat/completions", ltok, "{\"messages\":[{\"role\":\"user\",\"content\":\"first\"}]}", &r);
    CHECK(r.status == 200, "the limited tenant's one request");
    tl_resp_free(&r);
    /* a tenant whose one query of the month is spent here */
    tl_create_tenant(owner, "enterprise", "active", qid, qcode);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"monthly_query_limit\": 1}' WHERE id = $1", 1, qp));
    qtok = tl_token(qcode, "admin", 600);
    tl_post(gw.port, "/v1/chat/completions", qtok, "{\"messages\":[{\"role\":\"user\",\"content\":\"the one\"}]}", &r);
    CHECK(r.status == 200, "the spent tenant's one query");
    tl_resp_free(&r);

    /* the SDK authenticates with API keys (chat scope), as an enterprise client would */
    CHECK(tl_api_key_create(gw.port, tok, "{\"name\":\"sdk\",\"scopes\":[\"chat\"]}", key, sizeof(key), kid) == 201,
          "API key created");
    CHECK(tl_api_key_create(gw.port, ltok, "{\"name\":\"sdk-limited\",\"scopes\":[\"chat\"]}", lkey, sizeof(lkey),
                            kid) == 201,
          "limited tenant's API key created");
    CHECK(tl_api_key_create(gw.port, qtok, "{\"name\":\"sdk-spent\",\"scopes\":[\"chat\"]}", qkey, sizeof(qkey),
                            kid) == 201,
          "spent tenant's API key created");
    cmd = tl_sprintf("cd '%s' && AIGW_BASE_URL=http://127.0.0.1:%d/v1 AIGW_API_KEY='%s' AIGW_LIMITED_KEY='%s' "
                     "AIGW_QUOTA_KEY='%s' node openai_sdk.mjs 2>&1",
                     sdk_dir, gw.port, key, lkey, qkey);
    f = popen(cmd, "r");
    CHECK(f != NULL, "node runs");
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        fputs(line, stdout);
        if (strncmp(line, "ok ", 3) == 0)
            oks++;
        if (strncmp(line, "not ok", 6) == 0)
            CHECK(false, "sdk: %s", line);
        if (strncmp(line, "ALL OK", 6) == 0)
            all_ok = true;
    }
    status = f != NULL ? pclose(f) : -1;
    CHECK(status == 0 && all_ok, "the SDK script passed (exit %d)", status);
    CHECK(oks == 13, "all 13 SDK checks ran and passed (%d)", oks);
    /* the SDK (maxRetries 2) sent the over-quota request once: it retried it
     * twice when the 429 did not say x-should-retry: false */
    CHECK(tl_usage_flushed(gw.port), "usage rows flushed");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND status_code = 429", 1, qp) ==
              1,
          "the SDK sent the over-quota request once (%ld times)",
          tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND status_code = 429", 1, qp));

    free(cmd);
    free(tok);
    free(ltok);
    free(qtok);
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0");
    PQfinish(owner);
    return tl_done();
}
