/* test_durability.c - usage rows survive a PostgreSQL outage and a kill -9 of aigw */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

static PGconn *owner;

static void
stack(const char *cmd)
{
    char *c = tl_sprintf("bash %s/scripts/devstack.sh --name %s %s >/dev/null 2>&1", AIGW_SOURCE_DIR,
                         tl_env("AIGW_STACK_NAME"), cmd);

    CHECK(system(c) == 0, "devstack %s", cmd);
    free(c);
}

static long
rows_for(const char *tid, long want, int timeout_ms)
{
    const char *p[1] = {tid};

    return tl_wait_sql(owner, want, timeout_ms, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p);
}

int
main(void)
{
    char id[37], code[65], *tok, *cfg, spool[128];
    struct tl_aigw gw;
    struct tl_resp r;
    const char *p[1];
    int answered = 0;
    PGresult *q;

    owner = tl_pg_owner();
    tl_mock_reset(tl_env("AIGW_MOCK_URL"));
    tl_create_tenant(owner, "enterprise", "active", id, code);
    p[0] = id;
    q = tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 10000}' WHERE id = $1", 1, p);
    PQclear(q);
    tok = tl_token(code, "optician", 600);
    snprintf(spool, sizeof(spool), "/tmp/aigw-durability-%d", (int)getpid());
    setenv("AIGW_SPOOL_DIR", spool, 1);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"tenants\":{\"cache_ttl_s\":3600},"
                          "\"usage\":{\"flush_ms\":50}}");

    /* 1) PostgreSQL goes away mid-run: answers go on, rows arrive afterwards, once each */
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    tl_get(gw.port, "/api/ai/limits", tok, &r); /* tenant now cached in process */
    tl_resp_free(&r);
    for (int i = 0; i < 5; i++) {
        char *b = tl_sprintf("{\"question\":\"before the outage %d\"}", i);

        tl_post(gw.port, "/api/ai/query", tok, b, &r);
        answered += r.status == 200;
        tl_resp_free(&r);
        free(b);
    }
    stack("pg-stop");
    for (int i = 0; i < 10; i++) {
        char *b = tl_sprintf("{\"question\":\"during the outage %d\"}", i);

        tl_post(gw.port, "/api/ai/query", tok, b, &r);
        answered += r.status == 200;
        tl_resp_free(&r);
        free(b);
    }
    stack("pg-start");
    tl_pg_reconnect(&owner);
    CHECK(answered == 15, "all 15 answered, 10 of them while PostgreSQL was down (%d)", answered);
    CHECK(rows_for(id, 15, 15000) == 15, "15 usage rows after PostgreSQL came back");
    CHECK(tl_sql_long(owner, "SELECT count(DISTINCT request_id) FROM ai_usage_logs WHERE tenant_id = $1", 1, p) == 15,
          "no row doubled");
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");

    /* 2) kill -9 in the middle of a burst: every answered request keeps its row */
    free(cfg);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"usage\":{\"flush_ms\":60000,"
                          "\"batch_rows\":10000}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    {
        char *bodies[30];
        struct tl_resp rs[30];
        int ok = 0;

        for (int i = 0; i < 30; i++)
            bodies[i] = tl_sprintf("{\"question\":\"burst before the crash %d\"}", i);
        tl_post_parallel(gw.port, "/api/ai/query", tok, NULL, (const char *const *)bodies, 30, rs);
        for (int i = 0; i < 30; i++) {
            ok += rs[i].status == 200;
            tl_resp_free(&rs[i]);
            free(bodies[i]);
        }
        CHECK(ok == 30, "burst answered (%d)", ok);
        tl_aigw_kill9(&gw); /* rows are only in the spool: flush_ms is a minute */
        CHECK(rows_for(id, 15, 0) == 15, "nothing written yet when aigw died");
        CHECK(tl_aigw_start(&gw, cfg) == 0, "restart on the same spool");
        CHECK(rows_for(id, 45, 15000) == 45, "all 30 rows replayed after the crash");
        CHECK(tl_sql_long(owner, "SELECT count(DISTINCT id) FROM ai_usage_logs WHERE tenant_id = $1", 1, p) == 45,
              "exactly once");
        CHECK(tl_sql_long(owner, "SELECT ai_queries_used FROM tenants WHERE id = $1", 1, p) == 45,
              "ai_queries_used in step with billed rows");
        CHECK(tl_aigw_stop(&gw) == 0, "clean stop after replay");
    }
    {
        char *c = tl_sprintf("rm -rf '%s'", spool);

        CHECK(system(c) == 0, "spool removed");
        free(c);
    }
    free(cfg);
    free(tok);
    PQfinish(owner);
    return tl_done();
}
