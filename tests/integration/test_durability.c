/* test_durability.c - usage rows survive a PostgreSQL outage and a kill -9 of
 * aigw; a Redis outage refuses admission cleanly and is recovered from; a
 * listener session that stops answering is replaced */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "testlib.h"

static PGconn *owner;

static long
rows_for(const char *tid, long want, int timeout_ms)
{
    const char *p[1] = {tid};

    return tl_wait_sql(owner, want, timeout_ms, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p);
}

/* The one quota journal file in dir (malloc'd path), or NULL. */
static char *
journal_file(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    char *path = NULL;

    if (d == NULL)
        return NULL;
    while ((de = readdir(d)) != NULL)
        if (path == NULL && strncmp(de->d_name, "quota-reservations-", 19) == 0)
            path = tl_sprintf("%s/%s", dir, de->d_name);
    closedir(d);
    return path;
}

/* The bytes of the quota journal's files in dir. */
static long
journal_bytes(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    long total = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, "quota-reservations-", 19) == 0) {
            char *path = tl_sprintf("%s/%s", dir, de->d_name);
            struct stat st;

            if (stat(path, &st) == 0)
                total += (long)st.st_size;
            free(path);
        }
    closedir(d);
    return total;
}

/* One idempotent query, for a thread. */
struct idem_ask {
    pthread_t th;
    int port;
    const char *tok;
    struct tl_resp r;
};

static void *
idem_ask_run(void *arg)
{
    struct idem_ask *a = arg;
    const char *h[] = {"Idempotency-Key: settled-then-killed", NULL};
    const char *body[1] = {"{\"question\":\"answered while Redis stalls at the settlement\"}"};

    tl_post_parallel(a->port, "/api/ai/query", a->tok, h, body, 1, &a->r);
    return NULL;
}

/* The listener's PostgreSQL session stops answering without a reset (its
 * backend frozen: as a partition or a failover leaves it): a change made
 * meanwhile, whose NOTIFY it never sees, still reaches the tenant cache, by
 * the heartbeat's reconnect, long before the cache's hour. */
static void
test_listener_frozen(void)
{
    char tid[37], code[65], *tok, *cfg, pids[256] = "";
    const char *p[1] = {tid};
    struct tl_aigw gw;
    struct tl_resp r;
    PGresult *q;
    long status = 0;
    int waited;

    tl_create_tenant(owner, "pro", "active", tid, code);
    tok = tl_token(code, "admin", 600);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"tenants\":{\"cache_ttl_s\":3600}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        goto out;
    CHECK(tl_aigw_log_wait(&gw, "listener: listening", 10000), "the listener is up");
    tl_get(gw.port, "/api/ai/limits", tok, &r); /* the tenant is cached now */
    tl_expect("before", &r, 200, NULL);
    tl_resp_free(&r);
    q = tl_sql(owner, true, "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE query LIKE 'LISTEN %'", 0,
               NULL);
    if (PQntuples(q) == 1 && !PQgetisnull(q, 0, 0))
        snprintf(pids, sizeof(pids), "%s", PQgetvalue(q, 0, 0));
    PQclear(q);
    CHECK(pids[0] != '\0', "the listener's backend found");
    for (char *s = pids, *e; *s != '\0'; s = e) {
        long pid = strtol(s, &e, 10);

        CHECK(pid > 0 && kill((pid_t)pid, SIGSTOP) == 0, "backend %ld frozen", pid);
    }
    q = tl_sql(owner, true, "UPDATE tenants SET status = 'suspended' WHERE id = $1", 1, p);
    PQclear(q);
    for (waited = 0; waited < 30000; waited += 250) {
        tl_get(gw.port, "/api/ai/limits", tok, &r);
        status = r.status;
        tl_resp_free(&r);
        if (status == 403)
            break;
        usleep(250 * 1000);
    }
    CHECK(status == 403, "the suspension is seen within 30 s, not the cache's hour (%ld after %d ms)", status, waited);
    CHECK(tl_aigw_log_wait(&gw, "listener: PostgreSQL did not answer", 0), "the lost session is logged");
    for (char *s = pids, *e; *s != '\0'; s = e) {
        long pid = strtol(s, &e, 10);

        if (pid > 0)
            kill((pid_t)pid, SIGCONT);
    }
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
out:
    q = tl_sql(owner, true, "UPDATE tenants SET status = 'active' WHERE id = $1", 1, p);
    PQclear(q);
    free(cfg);
    free(tok);
}

/* DEL the tenant's quota counter of this month (as a Redis restarted
 * without persistence, or FLUSHALL, loses it). */
static void
drop_counter(const char *tid)
{
    time_t now = time(NULL);
    struct tm tm;
    char month[8];

    gmtime_r(&now, &tm);
    strftime(month, sizeof(month), "%Y%m", &tm);
    tl_redis_int("DEL aigw:{%s}:q:%s", tid, month);
}

/* The quota counter is lost while billed rows are still in the spool, not in
 * PostgreSQL yet (flush_ms is a minute here; after a PostgreSQL outage, the
 * backlog): its rebuild counted only PostgreSQL's rows, so the tenant got
 * the spooled ones back for the rest of the month. Both rebuilds (a query's,
 * and GET /api/ai/limits') must count them. */
static void
test_rebuild_spooled(void)
{
    enum { N = 3 };
    char tid[37], code[65], *tok, *cfg;
    const char *p[1] = {tid};
    struct tl_aigw gw;
    struct tl_resp r;
    int answered = 0;

    tl_create_tenant(owner, "pro", "active", tid, code);
    tok = tl_token(code, "optician", 600);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"usage\":{\"flush_ms\":60000,"
                          "\"batch_rows\":10000}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        goto out;
    for (int i = 0; i < N; i++) {
        char *b = tl_sprintf("{\"question\":\"billed before the counter is lost %d\"}", i);

        tl_post(gw.port, "/api/ai/query", tok, b, &r);
        answered += r.status == 200;
        tl_resp_free(&r);
        free(b);
    }
    CHECK(answered == N, "%d answered (%d)", N, answered);
    CHECK(rows_for(tid, 0, 0) == 0, "their rows are only in the spool");
    CHECK(tl_quota_used(tid) == N, "counted (%lld)", tl_quota_used(tid));
    drop_counter(tid);
    tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"asked once the counter is lost\"}", &r);
    CHECK(r.status == 200, "the next query is answered (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(tl_quota_used(tid) == N + 1, "a query's rebuild counts the spooled rows (%lld, want %d)",
          tl_quota_used(tid), N + 1);
    drop_counter(tid);
    tl_get(gw.port, "/api/ai/limits", tok, &r);
    CHECK(r.status == 200 && tl_json_int(&r, "used", -1) == N + 1, "GET /api/ai/limits' rebuild too: %s", r.body);
    tl_resp_free(&r);
    CHECK(tl_quota_used(tid) == N + 1, "the counter is %d (%lld)", N + 1, tl_quota_used(tid));
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p) == N + 1,
          "the billed rows are the counter");
out:
    free(cfg);
    free(tok);
}

/* Set aigw's file size limit (RLIMIT_FSIZE) to cur, keeping the hard limit. */
static bool
fsize_limit(const struct tl_aigw *gw, rlim_t cur)
{
    struct rlimit old, lim;

    if (prlimit(gw->pid, RLIMIT_FSIZE, NULL, &old) != 0)
        return false;
    lim.rlim_cur = cur;
    lim.rlim_max = old.rlim_max;
    return prlimit(gw->pid, RLIMIT_FSIZE, &lim, NULL) == 0;
}

/* The spool refuses every write (a file size limit of 1 byte on the running
 * aigw, as LimitFSIZE= or a full disk would): aigw must not be killed by
 * SIGXFSZ (it was: the default action of the signal the kernel sends with
 * EFBIG), the answers go on with their rows kept in memory, and once the
 * spool takes writes again every row reaches PostgreSQL, once. */
static void
test_spool_refuses(void)
{
    enum { N = 5 };
    char tid[37], code[65], *tok, *cfg;
    const char *p[1] = {tid};
    struct tl_aigw gw;
    struct tl_resp r;
    int answered = 0;

    tl_create_tenant(owner, "pro", "active", tid, code);
    tok = tl_token(code, "optician", 600);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"usage\":{\"flush_ms\":50}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        goto out;
    CHECK(fsize_limit(&gw, 1), "aigw's file size limit set to 1 byte");
    for (int i = 0; i < N; i++) {
        char *b = tl_sprintf("{\"question\":\"asked while the spool refuses writes %d\"}", i);

        tl_post(gw.port, "/api/ai/query", tok, b, &r);
        answered += r.status == 200;
        tl_resp_free(&r);
        free(b);
    }
    CHECK(tl_aigw_wait(&gw, 500) == -1, "aigw still runs (exit status %d)", gw.status);
    CHECK(answered == N, "all %d answered (%d)", N, answered);
    CHECK(rows_for(tid, 0, 0) == 0, "no row in PostgreSQL while the spool refuses them");
    CHECK(tl_metric(gw.port, "aigw_usage_backlog_rows") >= N, "the rows wait (backlog %g)",
          tl_metric(gw.port, "aigw_usage_backlog_rows"));
    CHECK(fsize_limit(&gw, RLIM_INFINITY), "the limit lifted");
    CHECK(rows_for(tid, N, 15000) == N, "every row written once the spool takes them (%ld)", rows_for(tid, N, 0));
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p) == N,
          "billed once each");
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
out:
    free(cfg);
    free(tok);
}

/* One quota-journal test: a tenant of its own, a spool directory of its
 * own (AIGW_SPOOL_DIR) and an aigw on it. */
struct jt {
    char tid[37], code[65], spool[128];
    const char *mock;
    char *tok, *cfg;
    struct tl_aigw gw;
};

/* Set t up for the test called name, the tenant's overrides (JSON, or NULL)
 * written before aigw starts; false when aigw did not start. */
static bool
jt_start(struct jt *t, const char *name, const char *overrides, const char *cfg_patch)
{
    const char *p[2] = {t->tid, overrides};

    memset(t, 0, sizeof(*t));
    t->mock = tl_env("AIGW_MOCK_URL");
    snprintf(t->spool, sizeof(t->spool), "/tmp/aigw-%s-%d", name, (int)getpid());
    setenv("AIGW_SPOOL_DIR", t->spool, 1);
    tl_create_tenant(owner, "pro", "active", t->tid, t->code);
    if (overrides != NULL)
        PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = $2::jsonb WHERE id = $1", 2, p));
    t->tok = tl_token(t->code, "optician", 600);
    t->cfg = tl_config_patch(cfg_patch);
    return tl_aigw_start(&t->gw, t->cfg) == 0;
}

/* Stop aigw cleanly: no journal file is left when every reservation was
 * settled. */
static void
jt_stop(struct jt *t)
{
    CHECK(tl_aigw_stop(&t->gw) == 0, "clean stop");
    CHECK(tl_count_files(t->spool, "quota-reservations-") == 0, "no journal file left");
}

static void
jt_end(struct jt *t)
{
    tl_rm_rf(t->spool);
    unsetenv("AIGW_SPOOL_DIR");
    free(t->cfg);
    free(t->tok);
}

/* The mock set to mock_cfg, one query with body started in the background
 * (its answer in *rs): returned once its call is at the model, or after 2 s. */
static struct tl_parallel *
jt_call_at_model(struct jt *t, const char *mock_cfg, const char *body, struct tl_resp *rs, const char *what)
{
    const char *b[1] = {body};
    long long before = tl_mock_stat(t->mock, "in_flight"), in_flight = 0;
    struct tl_parallel *bg;

    tl_mock_config(t->mock, mock_cfg);
    bg = tl_post_parallel_bg(t->gw.port, "/api/ai/query", t->tok, b, 1, rs);
    for (int i = 0; i < 100 && (in_flight = tl_mock_stat(t->mock, "in_flight") - before) < 1; i++)
        usleep(20 * 1000);
    CHECK(in_flight == 1, "%s: the call is at the model (%lld)", what, in_flight);
    return bg;
}

/* kill -9 with the call of bg at the model, and start again on the same
 * spool: the start refunds the n reservations left in flight. */
static void
jt_crash_restart(struct jt *t, struct tl_parallel *bg, struct tl_resp *rs, int n)
{
    char *line = tl_sprintf("%d of %d reservations the previous run left unsettled refunded", n, n);

    tl_aigw_kill9(&t->gw);
    tl_parallel_join(bg);
    tl_resp_free(rs);
    tl_mock_reset(t->mock);
    CHECK(tl_aigw_start(&t->gw, t->cfg) == 0, "restart on the same spool");
    CHECK(tl_aigw_log_wait(&t->gw, line, 10000), "the restart refunds the %d reservation(s) left in flight", n);
    free(line);
}

static long
billed_rows(const char *tid)
{
    const char *p[1] = {tid};

    return tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p);
}

/* The quota journal refuses writes (a file size limit of 1 byte) while an
 * answered request settles: its S line could not be written and was given
 * up, so its R line stayed open in the journal although the query was kept
 * (billed). A later kill -9 (here with another call at the model) and the
 * restart refunded it with the one really left in flight: the counter fell
 * one below the billed rows. The S line must be written once the journal
 * takes writes again. */
static void
test_journal_refuses(void)
{
    struct jt t;
    struct tl_resp r, rs[1];
    struct tl_parallel *bg;
    char *jpath, *jtext;

    if (!jt_start(&t, "journal-refuses", NULL,
                  "{\"upstream\":{\"health_interval_ms\":60000},\"usage\":{\"flush_ms\":50}}"))
        goto out;
    tl_get(t.gw.port, "/api/ai/limits", t.tok, &r); /* tenant cached in process */
    tl_resp_free(&r);
    bg = jt_call_at_model(&t, "{\"first_token_ms\":1500}",
                          "{\"question\":\"answered while the journal refuses writes\"}", rs, "A");
    jpath = journal_file(t.spool);
    jtext = jpath ? tl_read_file(jpath) : NULL;
    CHECK(jtext != NULL && strncmp(jtext, "R ", 2) == 0, "A: its reservation is journaled");
    free(jtext);
    free(jpath);
    CHECK(fsize_limit(&t.gw, 1), "aigw's file size limit set to 1 byte");
    tl_parallel_join(bg);
    CHECK(rs[0].status == 200, "A: answered (%ld)", rs[0].status);
    tl_resp_free(&rs[0]);
    tl_mock_reset(t.mock);
    CHECK(fsize_limit(&t.gw, RLIM_INFINITY), "the limit lifted");
    CHECK(rows_for(t.tid, 1, 10000) == 1, "A: its row reaches PostgreSQL");
    CHECK(tl_quota_used(t.tid) == 1, "A: counted (%lld)", tl_quota_used(t.tid));
    bg = jt_call_at_model(&t, "{\"mode\":\"hang\"}",
                          "{\"question\":\"in flight at the crash, the journal writable again\"}", rs, "B");
    CHECK(tl_quota_used(t.tid) == 2, "B: reserved (%lld)", tl_quota_used(t.tid));
    /* only B's reservation was left in flight */
    jt_crash_restart(&t, bg, rs, 1);
    CHECK(tl_quota_used(t.tid) == 1, "the counter is the billed rows (%lld, want 1)", tl_quota_used(t.tid));
    CHECK(billed_rows(t.tid) == 1, "one billed row");
    jt_stop(&t);
out:
    jt_end(&t);
}

/* The quota journal refused a reservation's R line (a file size limit of 1
 * byte when the call started), the limit is lifted, and the call fails
 * while Redis is down: its refund waits in the outbox, in memory only, and
 * aigw stops before Redis is back. The refund was lost: nothing journaled
 * it. It must be journaled when it goes to the outbox, so the next start
 * makes it. */
static void
test_journal_refused_refund(void)
{
    struct jt t;
    struct tl_resp r, rs[1];
    struct tl_parallel *bg;

    if (!jt_start(&t, "journal-refund", NULL,
                  "{\"upstream\":{\"health_interval_ms\":60000,\"timeout_ms\":1500},"
                  "\"tenants\":{\"cache_ttl_s\":3600},\"usage\":{\"flush_ms\":50}}"))
        goto out;
    tl_get(t.gw.port, "/api/ai/limits", t.tok, &r); /* tenant cached in process */
    tl_resp_free(&r);
    CHECK(fsize_limit(&t.gw, 1), "aigw's file size limit set to 1 byte");
    bg = jt_call_at_model(&t, "{\"mode\":\"hang\"}",
                          "{\"question\":\"a refund Redis misses, its reservation not journaled\"}", rs, "the call");
    CHECK(tl_quota_used(t.tid) == 1, "reserved (%lld)", tl_quota_used(t.tid));
    CHECK(tl_count_files(t.spool, "quota-reservations-") == 1 && journal_bytes(t.spool) == 0,
          "its reservation is not journaled");
    CHECK(fsize_limit(&t.gw, RLIM_INFINITY), "the limit lifted");
    tl_stack("redis-stop");
    tl_parallel_join(bg);
    CHECK(rs[0].status == 504, "the call times out: 504 (%ld)", rs[0].status);
    tl_resp_free(&rs[0]);
    tl_mock_reset(t.mock);
    CHECK(tl_metric(t.gw.port, "aigw_redis_outbox_pending") >= 1, "its refund waits in the outbox");
    CHECK(tl_aigw_stop(&t.gw) == 0, "clean stop while Redis is down");
    tl_stack("redis-start");
    CHECK(tl_quota_used(t.tid) == 1, "not refunded yet (%lld)", tl_quota_used(t.tid));
    CHECK(tl_aigw_start(&t.gw, t.cfg) == 0, "restart");
    CHECK(tl_aigw_log_wait(&t.gw, "1 of 1 reservations the previous run left unsettled refunded", 10000),
          "the refund is made at the start");
    CHECK(tl_quota_used(t.tid) == 0, "the counter is the billed rows (%lld, want 0)", tl_quota_used(t.tid));
    CHECK(billed_rows(t.tid) == 0, "nothing billed");
    jt_stop(&t);
out:
    jt_end(&t);
}

/* A file size limit (LimitFSIZE=) below the size the quota journal's file
 * reaches before it rotates (1 MiB): once the file hit it every R line was
 * refused for as long as aigw ran, so no reservation was covered any more
 * and one left in flight by a kill -9 stayed counted for the month. The
 * journal must move on to a new file, as the usage spool does. */
static void
test_journal_limit(void)
{
    enum { N = 40 };
    struct jt t;
    struct tl_resp r, rs[1];
    struct tl_parallel *bg;
    int answered = 0;

    if (!jt_start(&t, "journal-limit", "{\"requests_per_minute\": 10000}",
                  "{\"upstream\":{\"health_interval_ms\":60000},\"usage\":{\"flush_ms\":50}}"))
        goto out;
    CHECK(fsize_limit(&t.gw, 4096), "aigw's file size limit set to 4 KiB (~32 reservations of the journal)");
    for (int i = 0; i < N; i++) {
        char *b = tl_sprintf("{\"question\":\"asked under a 4 KiB file size limit %d\"}", i);

        tl_post(t.gw.port, "/api/ai/query", t.tok, b, &r);
        answered += r.status == 200;
        tl_resp_free(&r);
        free(b);
    }
    CHECK(answered == N, "all %d answered (%d)", N, answered);
    CHECK(rows_for(t.tid, N, 15000) == N, "their rows reach PostgreSQL (%ld)", rows_for(t.tid, N, 0));
    bg = jt_call_at_model(&t, "{\"mode\":\"hang\"}",
                          "{\"question\":\"in flight at the crash, past the journal's file size limit\"}", rs,
                          "the last");
    CHECK(tl_quota_used(t.tid) == N + 1, "the last: reserved (%lld)", tl_quota_used(t.tid));
    jt_crash_restart(&t, bg, rs, 1);
    CHECK(tl_quota_used(t.tid) == N, "the counter is the billed rows (%lld, want %d)", tl_quota_used(t.tid), N);
    CHECK(billed_rows(t.tid) == N, "%d billed rows", N);
    jt_stop(&t);
out:
    jt_end(&t);
}

/* The spool refuses every write for longer than usage.memory_max_kb of rows
 * can wait in memory (4 KiB here, a few rows): rows used to be dropped from
 * then on while every request was still answered, unbilled. Now new AI
 * requests are refused with 503 before they reach the quota or a model, every
 * answered request keeps its billed row, and once the spool takes rows again
 * requests are answered again. */
static void
test_spool_full(void)
{
    enum { N = 40 };
    char tid[37], code[65], *tok, *cfg, ra[16] = "";
    const char *p[1] = {tid};
    struct tl_aigw gw;
    struct tl_resp r;
    int answered = 0, refused = 0, other = 0;

    tl_create_tenant(owner, "pro", "active", tid, code);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 10000}' WHERE id = $1", 1,
                   p));
    tok = tl_token(code, "optician", 600);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"usage\":{\"flush_ms\":50,"
                          "\"memory_max_kb\":4}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        goto out;
    CHECK(fsize_limit(&gw, 1), "aigw's file size limit set to 1 byte");
    for (int i = 0; i < N; i++) {
        char *b = tl_sprintf("{\"question\":\"asked while the spool is full %d\"}", i);

        tl_post(gw.port, "/api/ai/query", tok, b, &r);
        if (r.status == 200) {
            answered++;
        } else if (r.status == 503 && strstr(r.body, "\"service_unavailable\"") != NULL) {
            if (refused++ == 0)
                CHECK(tl_resp_header(&r, "Retry-After", ra, sizeof(ra)) && strcmp(ra, "1") == 0,
                      "Retry-After: '%s'", ra);
        } else {
            other++;
            fprintf(stderr, "unexpected: %ld %s\n", r.status, r.body);
        }
        tl_resp_free(&r);
        free(b);
    }
    CHECK(answered > 0 && refused > 0 && other == 0, "answered %d, then refused %d (other %d)", answered, refused,
          other);
    CHECK(tl_quota_used(tid) == answered, "only the answered requests are counted (%lld, want %d)",
          tl_quota_used(tid), answered);
    tl_get(gw.port, "/readyz", NULL, &r);
    CHECK(r.status == 503 && tl_json_str(&r, "checks.usage_spool", ra, sizeof(ra)) && strcmp(ra, "down") == 0,
          "/readyz: 503, usage_spool down (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(fsize_limit(&gw, RLIM_INFINITY), "the limit lifted");
    CHECK(tl_wait_sql(owner, answered, 15000,
                      "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p) == answered,
          "every answered request billed (%ld of %d)",
          tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p), answered);
    tl_get(gw.port, "/readyz", NULL, &r);
    CHECK(r.status == 200 && tl_json_str(&r, "checks.usage_spool", ra, sizeof(ra)) && strcmp(ra, "ok") == 0,
          "/readyz: 200, usage_spool ok (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"asked once the spool takes rows again\"}", &r);
    tl_expect("after", &r, 200, NULL);
    tl_resp_free(&r);
    CHECK(tl_wait_sql(owner, answered + 1, 15000,
                      "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p) == answered + 1,
          "and billed");
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
out:
    free(cfg);
    free(tok);
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
    tl_stack("pg-stop");
    for (int i = 0; i < 10; i++) {
        char *b = tl_sprintf("{\"question\":\"during the outage %d\"}", i);

        tl_post(gw.port, "/api/ai/query", tok, b, &r);
        answered += r.status == 200;
        tl_resp_free(&r);
        free(b);
    }
    tl_stack("pg-start");
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
        CHECK(tl_quota_used(id) == 45, "the quota counter is in step too (%lld)", tl_quota_used(id));
    }
    /* 2b) kill -9 while 3 model calls hang: their quota was reserved and
     * never settled; the restart refunds exactly those, so the counter is
     * the billed rows again (it stayed 3 too high for the rest of the month) */
    {
        const char *mock = tl_env("AIGW_MOCK_URL");
        char *bodies[3];
        struct tl_resp rs[3];
        struct tl_parallel *bg;
        long long in_flight = 0, before = tl_mock_stat(mock, "in_flight");

        tl_mock_config(mock, "{\"mode\":\"hang\"}");
        for (int i = 0; i < 3; i++)
            bodies[i] = tl_sprintf("{\"question\":\"in flight at the crash %d\"}", i);
        bg = tl_post_parallel_bg(gw.port, "/api/ai/query", tok, (const char *const *)bodies, 3, rs);
        for (int i = 0; i < 100 && (in_flight = tl_mock_stat(mock, "in_flight") - before) < 3; i++)
            usleep(50 * 1000);
        CHECK(in_flight == 3, "3 calls hang at the model (%lld)", in_flight);
        CHECK(tl_quota_used(id) == 48, "their 3 queries are reserved (%lld)", tl_quota_used(id));
        tl_aigw_kill9(&gw);
        tl_parallel_join(bg);
        for (int i = 0; i < 3; i++) {
            tl_resp_free(&rs[i]);
            free(bodies[i]);
        }
        tl_mock_reset(mock);
        CHECK(tl_aigw_start(&gw, cfg) == 0, "restart on the same spool");
        /* refunded once Redis answers, before READY (/healthz answers earlier) */
        CHECK(tl_aigw_log_wait(&gw, "3 of 3 reservations the previous run left unsettled refunded", 10000),
              "the refund is logged");
        CHECK(tl_quota_used(id) == 45, "the 3 reservations left in flight are refunded (%lld)", tl_quota_used(id));
        CHECK(rows_for(id, 45, 0) == 45, "and no row was made up for them");
        tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"after the crash\"}", &r);
        CHECK(r.status == 200 && tl_json_int(&r, "queries_remaining", -9) == -1, "served again: %ld", r.status);
        tl_resp_free(&r);
        CHECK(tl_quota_used(id) == 46, "counted once (%lld)", tl_quota_used(id));
        CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
        CHECK(tl_count_files(spool, "quota-reservations-") == 0, "a clean stop leaves no journal file (%d)", tl_count_files(spool, "quota-reservations-"));
    }
    /* 3) Redis goes away: admission is refused with 503 on both paths (a lone
     * request: the blocking round trip; a burst: the pipe), nothing reaches
     * the model, nothing is billed or counted; the next request after Redis
     * is back is admitted again (the pipe reconnects) */
    free(cfg);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"tenants\":{\"cache_ttl_s\":3600},"
                          "\"usage\":{\"flush_ms\":50}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    {
        const char *mock = tl_env("AIGW_MOCK_URL");
        char *bodies[20], buf[64];
        struct tl_resp rs[20];
        long long calls, used;
        long billed, rows;
        int refused = 0;

        tl_get(gw.port, "/api/ai/limits", tok, &r); /* tenant cached in process */
        tl_resp_free(&r);
        rows = rows_for(id, 45, 15000);
        billed = tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p);
        used = tl_quota_used(id);
        calls = tl_mock_stat(mock, "chat_requests");
        tl_stack("redis-stop");
        tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"while Redis is down\"}", &r);
        CHECK(r.status == 503 && tl_json_str(&r, "error.code", buf, sizeof(buf)) &&
                  strcmp(buf, "service_unavailable") == 0,
              "Redis down, a lone request: 503 service_unavailable (%ld %s)", r.status, r.body);
        CHECK(tl_resp_header(&r, "Retry-After", buf, sizeof(buf)) && strcmp(buf, "1") == 0, "with Retry-After: 1");
        tl_resp_free(&r);
        for (int i = 0; i < 20; i++)
            bodies[i] = tl_sprintf("{\"question\":\"burst while Redis is down %d\"}", i);
        tl_post_parallel(gw.port, "/api/ai/query", tok, NULL, (const char *const *)bodies, 20, rs);
        for (int i = 0; i < 20; i++) {
            refused += rs[i].status == 503 && tl_json_str(&rs[i], "error.code", buf, sizeof(buf)) &&
                       strcmp(buf, "service_unavailable") == 0;
            tl_resp_free(&rs[i]);
            free(bodies[i]);
        }
        CHECK(refused == 20, "Redis down, a burst of 20: all 503 service_unavailable (%d)", refused);
        CHECK(tl_mock_stat(mock, "chat_requests") == calls, "no call reached the model");
        tl_stack("redis-start");
        CHECK(rows_for(id, rows + 21, 15000) == rows + 21, "the 21 refusals are logged as usage rows");
        CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p) == billed,
              "none of them billed");
        CHECK(tl_sql_long(owner,
                          "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND status_code = 503 "
                          "AND NOT success AND error_code = 'service_unavailable'",
                          1, p) == 21,
              "each as a failed 503");
        CHECK(tl_quota_used(id) == used, "the quota counter did not move (%lld, was %lld)", tl_quota_used(id), used);
        tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"Redis is back\"}", &r);
        CHECK(r.status == 200, "Redis back: admitted again (%ld %s)", r.status, r.body);
        tl_resp_free(&r);
        for (int i = 0; i < 20; i++)
            bodies[i] = tl_sprintf("{\"question\":\"burst after Redis is back %d\"}", i);
        tl_post_parallel(gw.port, "/api/ai/query", tok, NULL, (const char *const *)bodies, 20, rs);
        refused = 0;
        for (int i = 0; i < 20; i++) {
            refused += rs[i].status != 200;
            tl_resp_free(&rs[i]);
            free(bodies[i]);
        }
        CHECK(refused == 0, "a burst after Redis is back: all answered (%d not)", refused);
        /* Redis restarted while nobody asked: the pool's idle connections
         * are dead, and a lone request (the blocking path, on one of them)
         * is admitted all the same */
        tl_stack("redis-stop");
        tl_stack("redis-start");
        for (int i = 0; i < 3; i++) {
            char *qn = tl_sprintf("{\"question\":\"after a quiet Redis restart %d\"}", i);

            tl_post(gw.port, "/api/ai/query", tok, qn, &r);
            CHECK(r.status == 200, "after a quiet Redis restart, lone request %d: 200 (%ld %s)", i, r.status, r.body);
            tl_resp_free(&r);
            free(qn);
        }
        /* the same for PostgreSQL: restarted while nobody asked, its idle
         * pool connections are dead, and a route that reads it answers */
        tl_get(gw.port, "/api/ai/usage", tok, &r);
        CHECK(r.status == 200, "usage read before a quiet PostgreSQL restart (%ld %s)", r.status, r.body);
        tl_resp_free(&r);
        tl_stack("pg-stop");
        tl_stack("pg-start");
        tl_pg_reconnect(&owner);
        for (int i = 0; i < 3; i++) {
            tl_get(gw.port, "/api/ai/usage", tok, &r);
            CHECK(r.status == 200, "after a quiet PostgreSQL restart, usage read %d: 200 (%ld %s)", i, r.status, r.body);
            tl_resp_free(&r);
        }
        CHECK(tl_aigw_stop(&gw) == 0, "clean stop after the Redis outage");
    }
    /* 4) a refund Redis cannot take (it went away while the call was at the
     * model): a) sent again by the outbox once Redis is back, and settled;
     * b) aigw killed while it waits there: it stays journaled, and the next
     * start makes it */
    free(cfg);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000,\"timeout_ms\":1500},"
                          "\"tenants\":{\"cache_ttl_s\":3600},\"usage\":{\"flush_ms\":50}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    {
        const char *mock = tl_env("AIGW_MOCK_URL");
        const char *body[1] = {"{\"question\":\"a refund while Redis is down\"}"};
        char *jpath = NULL, *jtext = NULL;
        struct tl_resp rs[1];
        struct tl_parallel *bg;
        long long used, before = tl_mock_stat(mock, "in_flight"), in_flight = 0;

        tl_get(gw.port, "/api/ai/limits", tok, &r); /* tenant cached in process */
        tl_resp_free(&r);
        used = tl_quota_used(id);
        for (int round = 0; round < 2; round++) {
            before = tl_mock_stat(mock, "in_flight");
            tl_mock_config(mock, "{\"mode\":\"hang\"}");
            bg = tl_post_parallel_bg(gw.port, "/api/ai/query", tok, body, 1, rs);
            for (int i = 0; i < 100 && (in_flight = tl_mock_stat(mock, "in_flight") - before) < 1; i++)
                usleep(50 * 1000);
            CHECK(in_flight == 1 && tl_quota_used(id) == used + 1,
                  "round %d: a call at the model, its query reserved (%lld, %lld)", round, in_flight,
                  tl_quota_used(id));
            tl_stack("redis-stop");
            tl_parallel_join(bg);
            CHECK(rs[0].status == 504, "round %d: the call times out: 504 (%ld)", round, rs[0].status);
            tl_resp_free(&rs[0]);
            tl_mock_reset(mock);
            /* with the leader's publish */
            CHECK(tl_metric(gw.port, "aigw_redis_outbox_pending") >= 1, "round %d: its refund waits in the outbox",
                  round);
            if (round == 1)
                tl_aigw_kill9(&gw);
            tl_stack("redis-start");
            if (round == 1)
                break;
            for (int i = 0; i < 150 && tl_quota_used(id) != used; i++)
                usleep(20 * 1000);
            CHECK(tl_quota_used(id) == used, "a) once Redis is back the outbox makes the refund (%lld, was %lld)",
                  tl_quota_used(id), used);
            CHECK(tl_metric_wait(gw.port, "aigw_redis_outbox_pending", 0, 2000) == 0, "a) and the outbox is empty");
            CHECK(tl_aigw_stop(&gw) == 0, "a) clean stop");
            CHECK(tl_count_files(spool, "quota-reservations-") == 0, "a) the refund settled it: no journal file (%d)",
                  tl_count_files(spool, "quota-reservations-"));
            CHECK(tl_aigw_start(&gw, cfg) == 0, "restart");
            tl_get(gw.port, "/api/ai/limits", tok, &r);
            tl_resp_free(&r);
        }
        CHECK(tl_quota_used(id) == used + 1, "b) killed before Redis came back: not refunded (%lld)", tl_quota_used(id));
        CHECK(tl_count_files(spool, "quota-reservations-") == 1, "b) the journal file with it is kept (%d)",
              tl_count_files(spool, "quota-reservations-"));
        jpath = journal_file(spool);
        jtext = jpath ? tl_read_file(jpath) : NULL;
        CHECK(jtext != NULL && strncmp(jtext, "R ", 2) == 0, "b) it holds the open reservation");
        CHECK(tl_aigw_start(&gw, cfg) == 0, "restart");
        CHECK(tl_aigw_log_wait(&gw, "1 of 1 reservations the previous run left unsettled refunded", 10000),
              "b) the refund is made at the start");
        CHECK(tl_quota_used(id) == used, "b) the counter is back (%lld, was %lld)", tl_quota_used(id), used);
        CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
        CHECK(tl_count_files(spool, "quota-reservations-") == 0, "and no journal file is left");
        /* 5) that refund was made but its reply was lost (the journal still
         * has it open): the next start asks again, and Redis refunds each
         * reservation once */
        if (jpath != NULL && jtext != NULL)
            tl_write_file(jpath, jtext);
        CHECK(tl_aigw_start(&gw, cfg) == 0, "restart on the journal as the lost reply left it");
        CHECK(tl_aigw_log_wait(&gw, "1 of 1 reservations the previous run left unsettled refunded", 10000),
              "the refund is asked for again");
        CHECK(tl_aigw_log_wait(&gw, "was refunded already", 2000), "and found made");
        CHECK(tl_quota_used(id) == used, "the counter is not refunded twice (%lld, was %lld)", tl_quota_used(id),
              used);
        CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
        CHECK(tl_count_files(spool, "quota-reservations-") == 0, "and no journal file is left");
        free(jpath);
        free(jtext);
    }
    /* 6) kill -9 while an answered request settles: its reservation is
     * settled (kept) in the journal and its idempotency record is on its
     * way to Redis, which stalls. Its usage row must be on the spool by
     * then: else the restart neither refunds the query (the journal says it
     * was kept) nor finds a row for it, and the counter stays one above the
     * billed rows for the rest of the month. */
    free(cfg);
    cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000},\"tenants\":{\"cache_ttl_s\":3600},"
                          "\"redis\":{\"timeout_ms\":4000},\"usage\":{\"flush_ms\":50}}");
    if (tl_aigw_start(&gw, cfg) != 0)
        return 1;
    {
        const char *mock = tl_env("AIGW_MOCK_URL");
        long long before = tl_mock_stat(mock, "in_flight"), in_flight = 0;
        long rows, billed;
        struct idem_ask a = {.port = gw.port, .tok = tok};
        char *jpath = NULL, *jtext = NULL;
        bool settled = false;

        tl_get(gw.port, "/api/ai/limits", tok, &r); /* tenant cached in process */
        tl_resp_free(&r);
        rows = rows_for(id, 0, 0);
        billed = tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p);
        CHECK(tl_quota_used(id) == billed, "before: the counter is the billed rows (%lld, %ld)", tl_quota_used(id),
              billed);
        tl_mock_config(mock, "{\"first_token_ms\":1500}");
        pthread_create(&a.th, NULL, idem_ask_run, &a);
        for (int i = 0; i < 100 && (in_flight = tl_mock_stat(mock, "in_flight") - before) < 1; i++)
            usleep(20 * 1000);
        CHECK(in_flight == 1, "the call is at the model");
        tl_redis_int("CLIENT PAUSE 6000 ALL");
        for (int i = 0; i < 300 && !settled; i++) {
            free(jtext);
            free(jpath);
            jpath = journal_file(spool);
            jtext = jpath ? tl_read_file(jpath) : NULL;
            settled = jtext != NULL && strstr(jtext, "\nS ") != NULL;
            if (!settled)
                usleep(10 * 1000);
        }
        CHECK(settled, "the reservation is settled in the journal");
        tl_aigw_kill9(&gw); /* the idempotency record still waits for Redis */
        tl_redis_int("CLIENT UNPAUSE");
        pthread_join(a.th, NULL);
        tl_resp_free(&a.r);
        free(jtext);
        free(jpath);
        tl_mock_reset(mock);
        CHECK(tl_aigw_start(&gw, cfg) == 0, "restart on the same spool");
        CHECK(rows_for(id, rows + 1, 10000) == rows + 1, "the answered request has its usage row (%ld, want %ld)",
              rows_for(id, rows + 1, 0), rows + 1);
        CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND billed", 1, p) ==
                  billed + 1,
              "billed");
        CHECK(tl_quota_used(id) == billed + 1, "the counter is the billed rows again (%lld, want %ld)",
              tl_quota_used(id), billed + 1);
        CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
    }
    CHECK(tl_rm_rf(spool), "spool removed");
    unsetenv("AIGW_SPOOL_DIR");
    test_rebuild_spooled();
    test_journal_refuses();
    test_journal_limit();
    test_journal_refused_refund();
    test_spool_refuses();
    test_spool_full();
    test_listener_frozen();
    free(cfg);
    free(tok);
    PQfinish(owner);
    return tl_done();
}
