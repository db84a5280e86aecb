/* test_usage.c - the usage writer against the real PostgreSQL: rows and their
 * values (every column, through the binary statement), lines in another
 * shape (the JSON statement), the quota counter, exactly-once replay, a
 * PostgreSQL outage, a crash (SIGKILL), rejected rows, a tenant deleted
 * while its rows are written, and the writer behind PgBouncer in transaction
 * mode.
 *
 * Stopping PostgreSQL needs the devstack name: AIGW_STACK_NAME, or else the
 * name in the stack marker $AIGW_STACK_DIR/.aigw-devstack. */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "aigw/config.h"
#include "aigw/log.h"
#include "aigw/usage.h"
#include "aigw/usage_line.h"
#include "aigw/util.h"
#include "testlib.h"

#define SHA_HEX "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

static PGconn *owner;

/* ---- helpers ---- */

static void
config(struct aigw_config *c, const char *dir, const char *url, int flush_ms, int batch_rows)
{
    memset(c, 0, sizeof(*c));
    c->spool_dir = (char *)dir;
    c->database_url = (char *)url;
    c->usage_flush_ms = flush_ms;
    c->usage_batch_rows = batch_rows;
}

static void make_spool(char out[64]);

static struct aigw_usage *
start(const char *dir, const char *url, int flush_ms, int batch_rows)
{
    struct aigw_config c;

    config(&c, dir, url, flush_ms, batch_rows);
    return aigw_usage_start(&c);
}

/* A new tenant of tier, a new spool and a writer on it (NULL, checked, when it
 * does not start). */
static struct aigw_usage *
fresh_writer(const char *tier, char tenant[37], char dir[64], const char *url, int flush_ms, int batch_rows)
{
    char code[65];
    struct aigw_usage *u;

    tl_create_tenant(owner, tier, "active", tenant, code);
    make_spool(dir);
    u = start(dir, url, flush_ms, batch_rows);
    CHECK(u != NULL, "usage writer starts");
    return u;
}

static void
make_spool(char out[64])
{
    snprintf(out, 64, "/tmp/aigw-usage-test-XXXXXX");
    if (mkdtemp(out) == NULL) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Remove a flat directory and its files. */
static void
remove_spool(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[512];

    while (d != NULL && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d != NULL)
        closedir(d);
    rmdir(dir);
}

static bool
is_segment(const char *name)
{
    size_t n = strlen(name);

    return strncmp(name, "usage-", 6) == 0 && n > 12 && strcmp(name + n - 6, ".jsonl") == 0;
}

/* Number of spool segments in dir; the newest one's path into newest. */
static int
segments(const char *dir, char *newest, size_t cap)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char best[256] = "";
    int n = 0;

    while (d != NULL && (e = readdir(d)) != NULL) {
        if (!is_segment(e->d_name))
            continue;
        n++;
        if (strcmp(e->d_name, best) > 0)
            snprintf(best, sizeof(best), "%s", e->d_name);
    }
    if (d != NULL)
        closedir(d);
    if (newest != NULL)
        snprintf(newest, cap, "%s/%s", dir, best);
    return n;
}

static char *
read_all(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *buf = aigw_xcalloc(1, 1 << 20);
    size_t n = 0;

    if (f != NULL) {
        n = fread(buf, 1, (1 << 20) - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
    return buf;
}

static void
append_file(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0600);
    ssize_t n = fd >= 0 ? write(fd, text, strlen(text)) : -1;

    CHECK(n == (ssize_t)strlen(text), "append to %s", path);
    if (fd >= 0)
        close(fd);
}

static void
copy_segments(const char *from, const char *to)
{
    DIR *d = opendir(from);
    struct dirent *e;
    char path[512];

    while (d != NULL && (e = readdir(d)) != NULL) {
        char *text;

        if (!is_segment(e->d_name))
            continue;
        snprintf(path, sizeof(path), "%s/%s", from, e->d_name);
        text = read_all(path);
        snprintf(path, sizeof(path), "%s/%s", to, e->d_name);
        append_file(path, text);
        free(text);
    }
    if (d != NULL)
        closedir(d);
}

static bool
wait_backlog(const struct aigw_usage *u, size_t want, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        if (aigw_usage_backlog(u) == want)
            return true;
        usleep(20 * 1000);
    }
    return aigw_usage_backlog(u) == want;
}

static long
count_rows(const char *tenant)
{
    const char *p[1] = {tenant};

    return tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p);
}

static long
queries_used(const char *tenant)
{
    const char *p[1] = {tenant};

    return tl_sql_long(owner, "SELECT ai_queries_used FROM tenants WHERE id = $1", 1, p);
}

/* Whether a row with id is in ai_usage_logs. */
static bool
row_in(const char *id)
{
    const char *p[1] = {id};

    return tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE id = $1", 1, p) == 1;
}

/* What every test row of tenant shares: a successful knowledge query. */
static void
common_row(struct aigw_usage_row *r, const char *tenant)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->tenant_id, sizeof(r->tenant_id), "%s", tenant);
    r->route = "/api/ai/query";
    r->query_type = "knowledge";
    r->question_sha256 = SHA_HEX;
    r->model = "mock-model";
    r->status_code = 200;
    r->success = true;
}

/* Row i of a test series: billed unless i % 3 == 0, upstream_ms NULL for even i. */
static void
fill_row(struct aigw_usage_row *r, char *req, size_t cap, const char *tenant, int i)
{
    common_row(r, tenant);
    snprintf(req, cap, "usage-test-%d", i);
    r->request_id = req;
    r->prompt_tokens = 10 + i;
    r->completion_tokens = 20 + i;
    r->billed = i % 3 != 0;
    r->response_ms = 5;
    r->upstream_ms = i % 2 ? 4 : -1;
}

static int
billed(int from, int n)
{
    int b = 0;

    for (int i = from; i < from + n; i++)
        b += i % 3 != 0;
    return b;
}

/* Record rows from..from+n-1; returns how many records failed. */
static int
record_n(struct aigw_usage *u, const char *tenant, int from, int n)
{
    struct aigw_usage_row r;
    char req[64];
    int fails = 0;

    for (int i = from; i < from + n; i++) {
        fill_row(&r, req, sizeof(req), tenant, i);
        fails += aigw_usage_record(u, &r) != 0;
    }
    return fails;
}

/* ---- 1 + 2: rows, values, quota, exactly-once replay ---- */

struct worker {
    struct aigw_usage *u;
    const char *ta, *tb;
    int base, n, fails;
};

/* Even rows to tenant a, odd rows to tenant b, from several threads at once. */
static void *
worker_run(void *arg)
{
    struct worker *w = arg;
    struct aigw_usage_row r;
    char req[64];

    for (int i = w->base; i < w->base + w->n; i++) {
        fill_row(&r, req, sizeof(req), i % 2 ? w->tb : w->ta, i);
        w->fails += aigw_usage_record(w->u, &r) != 0;
    }
    return NULL;
}

/* A failed request with NULLs and a timestamp of an earlier month (billed,
 * but not in this month's counter), and a full cache hit with escapes. */
static void
record_special(struct aigw_usage *u, const char *ta, const char *tb, char ida[37], struct aigw_usage_row *rb)
{
    struct aigw_usage_row ra;

    memset(&ra, 0, sizeof(ra));
    aigw_uuid4(ra.id);
    memcpy(ida, ra.id, 37);
    memcpy(ra.tenant_id, ta, 37);
    ra.request_id = "req-special-a";
    ra.route = "/api/ai/query";
    ra.status_code = 504;
    ra.error_code = "upstream_timeout";
    ra.billed = true;
    ra.response_ms = 60001;
    ra.upstream_ms = -1;
    ra.created_at_us = 1700000000123456LL; /* 2023-11-14T22:13:20.123456Z */
    CHECK(aigw_usage_record(u, &ra) == 0, "record special a");

    memset(rb, 0, sizeof(*rb));
    memcpy(rb->tenant_id, tb, 37);
    rb->user_id = "user \"7\" \xc3\xbc";
    rb->api_key_id = "6f1d2c3b-4a5e-4f60-8a7b-9c8d7e6f5a4b";
    rb->request_id = "req-special-b";
    rb->route = "/api/ai/query";
    rb->query_type = "sales";
    rb->question_sha256 = SHA_HEX;
    rb->model = "m1";
    rb->prompt_tokens = 11;
    rb->completion_tokens = 22;
    rb->from_cache = true;
    rb->status_code = 200;
    rb->success = true;
    rb->upstream_ms = 33;
    CHECK(aigw_usage_record(u, rb) == 0, "record special b");
    CHECK(aigw_is_uuid(rb->id, strlen(rb->id)), "record fills the id: %s", rb->id);
    CHECK(llabs(rb->created_at_us / 1000000 - (long long)time(NULL)) < 5, "record fills created_at");
}

static void
check_special(const char *ida, const struct aigw_usage_row *rb)
{
    const char *p[1] = {ida};
    char want[32];
    PGresult *r = tl_sql(owner, true,
                         "SELECT user_id IS NULL, api_key_id IS NULL, query_type IS NULL, model IS NULL,"
                         " upstream_ms IS NULL, error_code, status_code, success, billed,"
                         " (extract(epoch FROM created_at) * 1000000)::bigint, request_id FROM ai_usage_logs"
                         " WHERE id = $1",
                         1, p);

    CHECK(PQntuples(r) == 1, "special row a present");
    if (PQntuples(r) == 1) {
        for (int c = 0; c < 5; c++)
            CHECK(strcmp(PQgetvalue(r, 0, c), "t") == 0, "special a: NULL column %d", c);
        CHECK(strcmp(PQgetvalue(r, 0, 5), "upstream_timeout") == 0, "error_code %s", PQgetvalue(r, 0, 5));
        CHECK(strcmp(PQgetvalue(r, 0, 6), "504") == 0 && strcmp(PQgetvalue(r, 0, 7), "f") == 0 &&
                  strcmp(PQgetvalue(r, 0, 8), "t") == 0, "status/success/billed");
        CHECK(strcmp(PQgetvalue(r, 0, 9), "1700000000123456") == 0, "created_at us: %s", PQgetvalue(r, 0, 9));
        CHECK(strcmp(PQgetvalue(r, 0, 10), "req-special-a") == 0, "request_id");
    }
    PQclear(r);
    p[0] = rb->id;
    r = tl_sql(owner, true,
               "SELECT user_id, api_key_id, query_type, model, prompt_tokens, completion_tokens, from_cache,"
               " billed, upstream_ms, (extract(epoch FROM created_at) * 1000000)::bigint, question_sha256"
               " FROM ai_usage_logs WHERE id = $1",
               1, p);
    CHECK(PQntuples(r) == 1, "special row b present");
    if (PQntuples(r) == 1) {
        snprintf(want, sizeof(want), "%lld", (long long)rb->created_at_us);
        CHECK(strcmp(PQgetvalue(r, 0, 0), rb->user_id) == 0, "user_id escapes: %s", PQgetvalue(r, 0, 0));
        CHECK(strcmp(PQgetvalue(r, 0, 1), rb->api_key_id) == 0, "api_key_id");
        CHECK(strcmp(PQgetvalue(r, 0, 2), "sales") == 0 && strcmp(PQgetvalue(r, 0, 3), "m1") == 0, "type/model");
        CHECK(strcmp(PQgetvalue(r, 0, 4), "11") == 0 && strcmp(PQgetvalue(r, 0, 5), "22") == 0, "tokens");
        CHECK(strcmp(PQgetvalue(r, 0, 6), "t") == 0 && strcmp(PQgetvalue(r, 0, 7), "f") == 0, "cache/billed");
        CHECK(strcmp(PQgetvalue(r, 0, 8), "33") == 0, "upstream_ms");
        CHECK(strcmp(PQgetvalue(r, 0, 9), want) == 0, "created_at %s vs %s", PQgetvalue(r, 0, 9), want);
        CHECK(strcmp(PQgetvalue(r, 0, 10), SHA_HEX) == 0, "question_sha256");
    }
    PQclear(r);
}

/* 2: a copy of the spool (plus half a line, as after a crash mid-write)
 * replayed by a second instance adds no row and no quota count. */
static void
check_replay(const char *url, const char *copy, const char *ta, const char *tb)
{
    long rows_a = count_rows(ta), rows_b = count_rows(tb), used_a = queries_used(ta), used_b = queries_used(tb);
    char newest[512];
    struct aigw_usage *u;

    CHECK(segments(copy, newest, sizeof(newest)) >= 1, "spool copied");
    append_file(newest, "{\"id\":\"0f0e0d0c-");
    u = start(copy, url, 20, 100);
    CHECK(u != NULL, "second instance on the copy");
    if (u == NULL)
        return;
    CHECK(wait_backlog(u, 0, 15000), "replay done (backlog %zu)", aigw_usage_backlog(u));
    aigw_usage_stop(u, 5000);
    CHECK(count_rows(ta) == rows_a && count_rows(tb) == rows_b, "replay added no rows (%ld/%ld)", count_rows(ta),
          count_rows(tb));
    CHECK(queries_used(ta) == used_a && queries_used(tb) == used_b, "replay counted nothing twice");
    CHECK(segments(copy, NULL, 0) == 0, "replayed segments removed");
}

static void
test_rows_and_replay(const char *url)
{
    enum { THREADS = 4, PER = 40 };
    char ta[37], tb[37], code[65], dir[64], copy[64], ida[37];
    struct worker w[THREADS];
    pthread_t th[THREADS];
    struct aigw_usage_row rb;
    struct aigw_usage *u;
    int fails = 0, billed_a = 0, billed_b = 0;

    tl_create_tenant(owner, "pro", "active", ta, code);
    tl_create_tenant(owner, "pro", "active", tb, code);
    make_spool(dir);
    make_spool(copy);
    u = start(dir, url, 50, 7);
    CHECK(u != NULL, "usage writer starts");
    if (u == NULL)
        return;
    for (int t = 0; t < THREADS; t++) {
        w[t] = (struct worker){u, ta, tb, t * PER, PER, 0};
        pthread_create(&th[t], NULL, worker_run, &w[t]);
    }
    record_special(u, ta, tb, ida, &rb);
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        fails += w[t].fails;
    }
    for (int i = 0; i < THREADS * PER; i++)
        *(i % 2 ? &billed_b : &billed_a) += i % 3 != 0;
    CHECK(fails == 0, "all records succeeded (%d failed)", fails);
    CHECK(wait_backlog(u, 0, 15000), "all rows committed (backlog %zu)", aigw_usage_backlog(u));
    CHECK(aigw_usage_spool_bytes(u) > 0, "rows are on disk until rotation");
    CHECK(count_rows(ta) == THREADS * PER / 2 + 1, "tenant a rows: %ld", count_rows(ta));
    CHECK(count_rows(tb) == THREADS * PER / 2 + 1, "tenant b rows: %ld", count_rows(tb));
    CHECK(queries_used(ta) == billed_a, "tenant a billed %ld, want %d", queries_used(ta), billed_a);
    CHECK(queries_used(tb) == billed_b, "tenant b billed %ld, want %d", queries_used(tb), billed_b);
    check_special(ida, &rb);
    copy_segments(dir, copy);
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "committed segments removed at stop");
    check_replay(url, copy, ta, tb);
    remove_spool(dir);
    remove_spool(copy);
}

/* ---- every column; other line shapes; bad values ---- */

/* Whether the usage writer's last statement (the query of the newest
 * backend named aigw, idle after its commit) contains needle. */
static bool
writer_used(const char *needle)
{
    PGresult *r = tl_sql(owner, true,
                         "SELECT query FROM pg_stat_activity WHERE application_name = 'aigw'"
                         " ORDER BY backend_start DESC LIMIT 1",
                         0, NULL);
    bool found = PQntuples(r) == 1 && strstr(PQgetvalue(r, 0, 0), needle) != NULL;

    PQclear(r);
    return found;
}

static void
expect_col(const PGresult *r, int col, const char *want, const char *what)
{
    const char *name = PQfname(r, col);

    if (want == NULL)
        CHECK(PQgetisnull(r, 0, col), "%s: %s is NULL, not '%s'", what, name, PQgetvalue(r, 0, col));
    else
        CHECK(!PQgetisnull(r, 0, col) && strcmp(PQgetvalue(r, 0, col), want) == 0, "%s: %s is '%s', want '%s'",
              what, name, PQgetisnull(r, 0, col) ? "NULL" : PQgetvalue(r, 0, col), want);
}

/* Every column of the row with w's id equals w; created_at to the
 * microsecond. An api_key_id is expected in PostgreSQL's lower case. */
static void
check_columns(const char *what, const struct aigw_usage_row *w)
{
    const char *p[1] = {w->id};
    char num[7][24];
    const char *want[AIGW_USAGE_NCOLS] = {
        w->id, w->tenant_id, w->user_id, w->api_key_id, w->request_id, w->route, w->query_type,
        w->question_sha256, w->model, num[0], num[1], w->from_cache ? "t" : "f", w->billed ? "t" : "f",
        num[2], w->success ? "t" : "f", w->error_code, num[3], w->upstream_ms < 0 ? NULL : num[4], num[5],
    };
    PGresult *r = tl_sql(owner, true,
                         "SELECT id, tenant_id, user_id, api_key_id, request_id, route, query_type, question_sha256,"
                         " model, prompt_tokens, completion_tokens, from_cache, billed, status_code, success,"
                         " error_code, response_ms, upstream_ms,"
                         " (extract(epoch FROM created_at) * 1000000)::bigint AS created_at_us"
                         " FROM ai_usage_logs WHERE id = $1",
                         1, p);

    snprintf(num[0], sizeof(num[0]), "%ld", w->prompt_tokens);
    snprintf(num[1], sizeof(num[1]), "%ld", w->completion_tokens);
    snprintf(num[2], sizeof(num[2]), "%d", w->status_code);
    snprintf(num[3], sizeof(num[3]), "%ld", w->response_ms);
    snprintf(num[4], sizeof(num[4]), "%ld", w->upstream_ms);
    snprintf(num[5], sizeof(num[5]), "%lld", (long long)w->created_at_us);
    CHECK(PQntuples(r) == 1, "%s: row %s present", what, w->id);
    if (PQntuples(r) == 1)
        for (int c = 0; c < AIGW_USAGE_NCOLS; c++)
            expect_col(r, c, want[c], what);
    PQclear(r);
}

/* A complete row of tenant: request_id req, a fixed created_at. */
static void
base_row(struct aigw_usage_row *r, const char *tenant, const char *req)
{
    common_row(r, tenant);
    aigw_uuid7(r->id);
    r->user_id = "user-1";
    r->api_key_id = "6f1d2c3b-4a5e-4f60-8a7b-9c8d7e6f5a4b";
    r->request_id = req;
    r->prompt_tokens = 12;
    r->completion_tokens = 34;
    r->billed = true;
    r->response_ms = 7;
    r->upstream_ms = 5;
    r->created_at_us = 1767323045123456LL; /* 2026-01-02T03:04:05.123456Z */
}

/* Rows written by aigw land with exactly their values, through the binary
 * statement: NULL and empty text apart, odd user_id text, int4 limits, both
 * booleans, timestamps before PostgreSQL's epoch and on a leap day. */
static void
test_values(const char *url)
{
    enum { N = 4 };
    char tenant[37], dir[64], what[32];
    struct aigw_usage_row w[N];
    struct aigw_usage *u;

    u = fresh_writer("pro", tenant, dir, url, 20, 50);
    if (u == NULL)
        return;
    base_row(&w[0], tenant, "req-values-0");
    w[0].user_id = "q\"uote b\\ack \xc3\xbc \xe6\x97\xa5 \xf0\x9f\x98\x80 ctl\x01\x1f tab\t nl\n";
    w[0].api_key_id = NULL;
    w[0].from_cache = true;
    w[0].billed = false;
    w[0].upstream_ms = -1;
    base_row(&w[1], tenant, "req-values-1");
    w[1].user_id = "";
    w[1].query_type = NULL;
    w[1].question_sha256 = NULL;
    w[1].model = NULL;
    w[1].prompt_tokens = 2147483647;
    w[1].completion_tokens = -2147483647L - 1;
    w[1].status_code = 504;
    w[1].success = false;
    w[1].error_code = "upstream_timeout";
    w[1].response_ms = 60001;
    w[1].upstream_ms = 0;
    w[1].created_at_us = 946684799999999LL; /* 1999-12-31T23:59:59.999999Z */
    base_row(&w[2], tenant, "req-values-2");
    w[2].user_id = NULL;
    w[2].error_code = "";
    w[2].created_at_us = 0; /* now: the only billed row of this month */
    base_row(&w[3], tenant, "req-values-3");
    w[3].billed = false;
    w[3].created_at_us = 1709208000000001LL; /* 2024-02-29T12:00:00.000001Z */
    for (int i = 0; i < N; i++)
        CHECK(aigw_usage_record(u, &w[i]) == 0, "record row %d", i);
    CHECK(wait_backlog(u, 0, 15000), "all rows committed (backlog %zu)", aigw_usage_backlog(u));
    CHECK(writer_used("unnest($1::uuid[]"), "the rows went through the binary statement");
    for (int i = 0; i < N; i++) {
        snprintf(what, sizeof(what), "values row %d", i);
        check_columns(what, &w[i]);
    }
    CHECK(count_rows(tenant) == N, "rows: %ld", count_rows(tenant));
    CHECK(queries_used(tenant) == 1, "billed this month: %ld", queries_used(tenant));
    aigw_usage_stop(u, 5000);
    remove_spool(dir);
}

/* The spool line of r with the first from replaced by to (without '\n'). */
static char *
line_of(const struct aigw_usage_row *r, const char *from, const char *to)
{
    size_t len;
    char *line = aigw_usage_line(r, &len), *at, *out;

    line[len - 1] = '\0';
    if (from == NULL)
        return line;
    at = strstr(line, from);
    CHECK(at != NULL, "'%s' in %s", from, line);
    out = at ? tl_sprintf("%.*s%s%s", (int)(at - line), line, to, at + strlen(from)) : aigw_xstrdup(line);
    free(line);
    return out;
}

struct shape {
    const char *from, *to;
};

/* A base_row of tenant with request id req, appended to the segment at path
 * as its spool line with from replaced by to (NULL: as written). */
static void
append_row(const char *path, struct aigw_usage_row *r, const char *tenant, const char *req, const char *from,
           const char *to)
{
    char *text;

    base_row(r, tenant, req);
    text = line_of(r, from, to);
    append_file(path, text);
    append_file(path, "\n");
    free(text);
}

/* Lines in another valid shape, each meaning the same row as the spool's
 * own line, mixed with own lines of the same tenant and another tenant's
 * own lines in one segment: that tenant's batch goes as JSON and loses
 * nothing; the other tenant's rows and the next batch go binary again. */
static void
test_other_shapes(const char *url)
{
    static const struct shape shapes[] = {
        {"Z\"}", "+00:00\"}"},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T05:04:05.123456+02:00\""},
        {"\"2026-01-02T03:04:05.123456Z\"", "\"2026-01-02T03:04:05.123456\\u005a\""},
        {"\"prompt_tokens\":12", "\"prompt_tokens\":\"12\""},
        {"\",\"route\":", "\" , \"route\" : "},
        {"\"route\":\"/api/ai/query\",\"query_type\":\"knowledge\"",
         "\"query_type\":\"knowledge\",\"route\":\"/api/ai/query\""},
        {",\"upstream_ms\":5", ""}, /* missing: NULL, as jsonb_populate_recordset has it */
        {"\"6f1d2c3b-4a5e-4f60-8a7b-9c8d7e6f5a4b\"", "\"{6F1D2C3B-4A5E-4F60-8A7B-9C8D7E6F5A4B}\""},
        {"\"user-1\"", "\"\\u00fcser-\\ud83d\\ude00\""},
        {"Z\"}", "Z\",\"extra\":[1,{\"a\":null}]}"},
    };
    enum { NS = sizeof(shapes) / sizeof(shapes[0]), NOWN = 3, NROWS = NOWN + NS + NS / 4 + 1 + 3 };
    char ta[37], tb[37], code[65], dir[64], path[512], what[48], reqs[NROWS][32];
    struct aigw_usage_row w[NROWS];
    struct aigw_usage *u;
    int n = 0;

    tl_create_tenant(owner, "pro", "active", ta, code);
    tl_create_tenant(owner, "pro", "active", tb, code);
    make_spool(dir);
    snprintf(path, sizeof(path), "%s/usage-00000000000000000001.jsonl", dir);
    for (int i = 0; i < NOWN; i++, n++) { /* tenant b's own lines first: its statement runs first */
        snprintf(reqs[n], sizeof(reqs[n]), "req-own-b-%d", i);
        append_row(path, &w[n], tb, reqs[n], NULL, NULL);
    }
    for (int i = 0; i < NS; i++, n++) {
        snprintf(reqs[n], sizeof(reqs[n]), "req-shape-%d", i);
        append_row(path, &w[n], ta, reqs[n], shapes[i].from, shapes[i].to);
        if (strcmp(shapes[i].from, ",\"upstream_ms\":5") == 0)
            w[n].upstream_ms = -1;
        if (strcmp(shapes[i].from, "\"user-1\"") == 0)
            w[n].user_id = "\xc3\xbcser-\xf0\x9f\x98\x80";
        if (i % 4 == 0) { /* an own line of tenant a between the others */
            n++;
            snprintf(reqs[n], sizeof(reqs[n]), "req-own-a-%d", i);
            append_row(path, &w[n], ta, reqs[n], NULL, NULL);
        }
    }
    u = start(dir, url, 20, 100);
    CHECK(u != NULL, "writer starts on the mixed segment");
    if (u == NULL)
        return;
    CHECK(wait_backlog(u, 0, 15000), "mixed segment committed (backlog %zu)", aigw_usage_backlog(u));
    CHECK(writer_used("jsonb_populate_recordset"), "tenant a's mixed batch went as JSON");
    CHECK(count_rows(ta) == n - NOWN && count_rows(tb) == NOWN, "nothing lost: %ld + %ld rows of %d",
          count_rows(ta), count_rows(tb), n);
    for (int i = 0; i < n; i++) {
        snprintf(what, sizeof(what), "shapes row %d (%s)", i, w[i].request_id);
        check_columns(what, &w[i]);
    }
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    CHECK(access(path, F_OK) != 0, "nothing rejected");
    for (int i = 0; i < 100 && segments(dir, NULL, 0) > 1; i++)
        usleep(20 * 1000);
    CHECK(segments(dir, NULL, 0) == 1, "the mixed segment is gone: %d segments", segments(dir, NULL, 0));

    /* the next batch of own lines goes binary again */
    for (int i = 0; i < 3; i++, n++) {
        snprintf(reqs[n], sizeof(reqs[n]), "req-after-%d", i);
        base_row(&w[n], ta, reqs[n]);
        w[n].created_at_us = 0;
        CHECK(aigw_usage_record(u, &w[n]) == 0, "record after the mixed batch");
    }
    CHECK(wait_backlog(u, 0, 15000), "committed (backlog %zu)", aigw_usage_backlog(u));
    CHECK(writer_used("unnest($1::uuid[]"), "the next batch went through the binary statement");
    for (int i = n - 3; i < n; i++) {
        snprintf(what, sizeof(what), "after row %d", i);
        check_columns(what, &w[i]);
    }
    CHECK(queries_used(ta) == 3, "tenant a billed this month: %ld", queries_used(ta));
    aigw_usage_stop(u, 5000);
    remove_spool(dir);
}

/* Rows with a value PostgreSQL refuses go to rejected.jsonl and the rest of
 * their batch is inserted: values the binary reader leaves to the JSON
 * statement (an impossible date, \u0000, a number out of int4 range), and
 * values it takes that fail the binary statement (bytes that are not UTF-8,
 * a NULL request_id), which is then retried row by row. */
static void
test_bad_values(const char *url)
{
    char tenant[37], code[65], dir[64], path[512], reqs[16][32];
    struct aigw_usage_row w[16];
    bool bad[16] = {false};
    struct aigw_usage *u;
    char *text;
    int n = 0, good = 0;

    tl_create_tenant(owner, "pro", "active", tenant, code);
    make_spool(dir);
    for (int seg = 1; seg <= 2; seg++) {
        static const struct shape bad_shapes[2][2] = {
            {{"\"2026-01-02T03:04:05.123456Z\"", "\"2026-02-30T03:04:05.123456Z\""},
             {"\"user-1\"", "\"nul \\u0000 byte\""}},
            {{"\"user-1\"", "\"not \xff\xfe UTF-8\""}, {"\"user-1\"", "\"cut \xe6\x97\""}},
        };

        snprintf(path, sizeof(path), "%s/usage-0000000000000000000%d.jsonl", dir, seg);
        for (int i = 0; i < 5; i++, n++) {
            bool is_bad = i == 1 || i == 3;

            snprintf(reqs[n], sizeof(reqs[n]), "req-bad-%d-%d", seg, i);
            append_row(path, &w[n], tenant, reqs[n], is_bad ? bad_shapes[seg - 1][i / 2].from : NULL,
                       is_bad ? bad_shapes[seg - 1][i / 2].to : NULL);
            bad[n] = is_bad;
        }
    }
    u = start(dir, url, 20, 100);
    CHECK(u != NULL, "writer starts on the segments");
    if (u == NULL)
        return;
    CHECK(wait_backlog(u, 0, 15000), "segments handled (backlog %zu)", aigw_usage_backlog(u));
    /* a batch recorded by aigw: good rows around a NULL request_id (rejected);
     * then a row with prompt_tokens past int4, which a model server may claim:
     * written as int4's largest, so the billed row is kept, not rejected */
    for (int b = 0; b < 2; b++) {
        for (int i = 0; i < 3; i++, n++) {
            snprintf(reqs[n], sizeof(reqs[n]), "req-bad-rec-%d-%d", b, i);
            base_row(&w[n], tenant, reqs[n]);
            bad[n] = i == 1 && b == 0;
            if (bad[n])
                w[n].request_id = NULL;
            if (i == 1 && b == 1)
                w[n].prompt_tokens = 3000000000L;
            CHECK(aigw_usage_record(u, &w[n]) == 0, "record %s", reqs[n]);
            if (i == 1 && b == 1)
                w[n].prompt_tokens = 2147483647; /* what check_columns must find */
        }
        CHECK(wait_backlog(u, 0, 15000), "batch %d handled (backlog %zu)", b, aigw_usage_backlog(u));
    }
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    text = read_all(path);
    for (int i = 0; i < n; i++) {
        const char *p[1] = {w[i].id};
        long in = tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE id = $1", 1, p);

        if (bad[i]) {
            CHECK(in == 0 && strstr(text, w[i].id) != NULL, "bad row %d (%s) rejected, not inserted", i, reqs[i]);
        } else {
            good++;
            CHECK(in == 1 && strstr(text, w[i].id) == NULL, "good row %d (%s) inserted, not rejected", i, reqs[i]);
            check_columns(reqs[i], &w[i]);
        }
    }
    CHECK(count_rows(tenant) == good, "good rows: %ld of %d", count_rows(tenant), good);
    CHECK(strstr(text, "\"nul \\u0000 byte\"") != NULL && strstr(text, "\"not \xff\xfe UTF-8\"") != NULL,
          "rejected lines are kept byte for byte");
    free(text);
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
    remove_spool(dir);
}

/* ---- batching under a steady trickle ---- */

/* Rows that arrive one by one (a row every ~0.25 ms for ~0.5 s, faster than
 * a commit takes) are written in flush_ms batches, not a few at a time as
 * soon as the previous commit returns: rows committed together share their
 * transaction id (xmin). */
static void
test_batches(const char *url)
{
    enum { ROWS = 2000 };
    char tenant[37], dir[64], req[64];
    const char *p[1] = {tenant};
    struct aigw_usage_row r;
    struct aigw_usage *u;
    struct timespec gap = {0, 200 * 1000L};
    long txns;
    int fails = 0;

    u = fresh_writer("pro", tenant, dir, url, 150, 500);
    if (u == NULL)
        return;
    for (int i = 0; i < ROWS; i++) {
        fill_row(&r, req, sizeof(req), tenant, i);
        fails += aigw_usage_record(u, &r) != 0;
        nanosleep(&gap, NULL);
    }
    CHECK(fails == 0, "all records succeeded (%d failed)", fails);
    CHECK(wait_backlog(u, 0, 15000), "all rows committed (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(tenant) == ROWS, "every row written: %ld", count_rows(tenant));
    txns = tl_sql_long(owner, "SELECT count(DISTINCT xmin::text) FROM ai_usage_logs WHERE tenant_id = $1", 1, p);
    CHECK(txns >= 1 && txns <= 30, "%d rows in %ld transactions (flush_ms 150, batch_rows 500)", ROWS, txns);
    aigw_usage_stop(u, 5000);
    remove_spool(dir);
}

/* A batch with a row already in PostgreSQL (as in a replay, but in a live
 * writer): the plain INSERT fails with unique_violation and the batch goes
 * again with ON CONFLICT (id) DO NOTHING. Its other rows are written, in one
 * transaction; the known row is neither doubled, nor counted twice, nor
 * rejected. */
static void
test_batch_with_written_row(const char *url)
{
    char tenant[37], dir[64], path[512], req[6][64];
    const char *p[1] = {tenant};
    struct aigw_usage_row r[6];
    struct aigw_usage *u = fresh_writer("pro", tenant, dir, url, 300, 100);
    int fails = 0;

    if (u == NULL)
        return;
    for (int i = 0; i < 2; i++) {
        fill_row(&r[i], req[i], sizeof(req[i]), tenant, i);
        fails += aigw_usage_record(u, &r[i]) != 0;
    }
    CHECK(wait_backlog(u, 0, 15000), "first rows written (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(tenant) == 2, "2 rows in: %ld", count_rows(tenant));
    /* one batch: rows 2..5 with row 1 again (same id) in the middle */
    for (int i = 2; i < 6; i++) {
        fill_row(&r[i], req[i], sizeof(req[i]), tenant, i);
        fails += aigw_usage_record(u, &r[i]) != 0;
        if (i == 3)
            fails += aigw_usage_record(u, &r[1]) != 0;
    }
    CHECK(fails == 0, "all records succeeded (%d failed)", fails);
    CHECK(wait_backlog(u, 0, 15000), "batch with a written row handled (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(tenant) == 6, "every row once: %ld", count_rows(tenant));
    CHECK(tl_sql_long(owner, "SELECT count(DISTINCT id) FROM ai_usage_logs WHERE tenant_id = $1", 1, p) == 6,
          "no id twice");
    CHECK(tl_sql_long(owner,
                      "SELECT count(DISTINCT xmin::text) FROM ai_usage_logs WHERE tenant_id = $1"
                      " AND request_id IN ('usage-test-2', 'usage-test-3', 'usage-test-4', 'usage-test-5')",
                      1, p) == 1,
          "the batch's new rows in one transaction");
    CHECK(queries_used(tenant) == billed(0, 6), "quota counted once per row: %ld (want %d)", queries_used(tenant),
          billed(0, 6));
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    CHECK(access(path, F_OK) != 0, "nothing rejected");
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
    remove_spool(dir);
}

/* ---- 3: PostgreSQL outage ---- */

static const char *
stack_name(void)
{
    static char name[128];
    const char *env = getenv("AIGW_STACK_NAME");
    char marker[512], *text, *p;

    if (env != NULL && *env) {
        snprintf(name, sizeof(name), "%s", env);
    } else {
        snprintf(marker, sizeof(marker), "%s/.aigw-devstack", tl_env("AIGW_STACK_DIR"));
        text = read_all(marker);
        p = strstr(text, "name=");
        snprintf(name, sizeof(name), "%.*s", p ? (int)strcspn(p + 5, "\n") : 0, p ? p + 5 : "");
        free(text);
    }
    if (name[0] == '\0' || name[strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")]) {
        fprintf(stderr, "cannot tell the devstack name (set AIGW_STACK_NAME)\n");
        exit(1);
    }
    return name;
}

static int
devstack(const char *cmd)
{
    char line[1024];

    snprintf(line, sizeof(line), "bash '%s/scripts/devstack.sh' --name '%s' %s", AIGW_SOURCE_DIR, stack_name(), cmd);
    return system(line);
}

static void
test_outage(const char *url)
{
    enum { DOWN_ROWS = 9000 };
    char tc[37], dir[64];
    struct aigw_usage *u;
    int fails;

    u = fresh_writer("standard", tc, dir, url, 20, 50);
    if (u == NULL)
        return;
    CHECK(record_n(u, tc, 0, 3) == 0 && wait_backlog(u, 0, 10000), "rows before the outage committed");
    if (devstack("pg-stop") != 0) {
        CHECK(false, "devstack pg-stop failed");
        aigw_usage_stop(u, 5000);
        return;
    }
    /* > 4 MiB of rows: the segment rotates while nothing in it is committed */
    fails = record_n(u, tc, 3, DOWN_ROWS);
    for (int i = 0; i < 100 && segments(dir, NULL, 0) < 2; i++)
        usleep(100 * 1000);
    CHECK(fails == 0, "records succeed while PostgreSQL is down");
    CHECK(aigw_usage_backlog(u) == DOWN_ROWS, "backlog while down: %zu", aigw_usage_backlog(u));
    CHECK(aigw_usage_spool_bytes(u) > 4000000, "rows are in the spool: %zu", aigw_usage_spool_bytes(u));
    CHECK(segments(dir, NULL, 0) >= 2, "big segment rotated: %d", segments(dir, NULL, 0));
    CHECK(devstack("pg-start") == 0, "devstack pg-start");
    CHECK(wait_backlog(u, 0, 60000), "backlog drained after the outage (%zu)", aigw_usage_backlog(u));
    PQfinish(owner);
    owner = tl_pg_owner();
    CHECK(count_rows(tc) == 3 + DOWN_ROWS, "all rows present exactly once: %ld", count_rows(tc));
    CHECK(queries_used(tc) == billed(0, 3 + DOWN_ROWS), "billed %ld, want %d", queries_used(tc),
          billed(0, 3 + DOWN_ROWS));
    CHECK(segments(dir, NULL, 0) == 1, "rotated segments unlinked once committed: %d", segments(dir, NULL, 0));
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
    remove_spool(dir);
}

/* ---- 4: crash ---- */

/* A child records rows and SIGKILLs itself: no stop, no flush. With
 * wait_commit it first lets the rows reach PostgreSQL (so the replay meets
 * rows already there). */
static pid_t
crash_child(const char *dir, const char *url, const char *tenant, int from, int n, bool wait_commit)
{
    pid_t pid = fork();
    struct aigw_usage *u;

    if (pid != 0)
        return pid;
    u = start(dir, url, 20, 50);
    if (u == NULL)
        _exit(2);
    if (record_n(u, tenant, from, n) != 0)
        _exit(3);
    if (wait_commit && !wait_backlog(u, 0, 10000))
        _exit(4);
    kill(getpid(), SIGKILL);
    _exit(5);
}

static bool
killed(pid_t pid)
{
    int st = 0;

    return pid > 0 && waitpid(pid, &st, 0) == pid && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL;
}

/* stop with PostgreSQL unreachable: bounded by the deadline, the rows stay
 * in the spool and the next start writes them. */
static void
stop_while_down(const char *url, const char *nowhere, const char *td, const char *dir)
{
    struct aigw_usage *u = start(dir, nowhere, 20, 50);
    int64_t t0;

    CHECK(u != NULL, "writer starts without a database");
    if (u == NULL)
        return;
    CHECK(record_n(u, td, 12, 4) == 0, "records without a database");
    t0 = aigw_now_ms();
    aigw_usage_stop(u, 300);
    CHECK(aigw_now_ms() - t0 < 5000, "stop kept its deadline: %lld ms", (long long)(aigw_now_ms() - t0));
    CHECK(segments(dir, NULL, 0) == 1, "the unwritten segment is kept: %d", segments(dir, NULL, 0));
    u = start(dir, url, 20, 50);
    CHECK(u != NULL && wait_backlog(u, 0, 15000), "kept rows written at the next start");
    aigw_usage_stop(u, 5000);
    CHECK(count_rows(td) == 16, "rows after the kept spool: %ld", count_rows(td));
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
}

static void
test_crash(const char *url)
{
    static const char nowhere[] = "postgresql:///aigw?host=/nonexistent-aigw-test&port=5432&user=aigw_app";
    char td[37], code[65], dir[64], newest[512];
    struct aigw_usage *u;

    tl_create_tenant(owner, "pro", "active", td, code);
    make_spool(dir);
    CHECK(killed(crash_child(dir, url, td, 0, 5, true)), "child 1 committed and was killed");
    CHECK(count_rows(td) == 5, "child 1 rows: %ld", count_rows(td));
    CHECK(killed(crash_child(dir, nowhere, td, 5, 7, false)), "child 2 (no database) was killed");
    CHECK(segments(dir, newest, sizeof(newest)) == 2, "both segments left: %d", segments(dir, NULL, 0));
    append_file(newest, "{\"id\":\"half a row");
    u = start(dir, url, 20, 50);
    CHECK(u != NULL, "restart on the crashed spool");
    if (u == NULL)
        return;
    CHECK(wait_backlog(u, 0, 15000), "replayed (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(td) == 12, "all rows exactly once: %ld", count_rows(td));
    CHECK(queries_used(td) == billed(0, 12), "billed %ld, want %d", queries_used(td), billed(0, 12));
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
    stop_while_down(url, nowhere, td, dir);
    remove_spool(dir);
}

/* ---- 5: rejected rows ---- */

static void
test_rejected(const char *url)
{
    char te[37], code[65], dir[64], path[512], ghost[37], bad_key[37];
    struct aigw_usage_row r;
    struct aigw_usage *u;
    char req[64], *text;
    const char *p[2] = {ghost, bad_key};

    tl_create_tenant(owner, "pro", "active", te, code);
    make_spool(dir);
    snprintf(path, sizeof(path), "%s/usage-00000000000000000001.jsonl", dir);
    append_file(path, "this is not json\n\n");
    u = start(dir, url, 20, 50);
    CHECK(u != NULL, "writer starts");
    if (u == NULL)
        return;
    CHECK(start(dir, url, 20, 50) == NULL, "a second writer on the same spool is refused");
    CHECK(start("", url, 20, 50) == NULL, "no spool directory, no writer");
    CHECK(record_n(u, te, 0, 3) == 0, "good rows");
    fill_row(&r, req, sizeof(req), te, 100);
    aigw_uuid4(ghost);
    memcpy(r.tenant_id, ghost, 37); /* a tenant that does not exist */
    CHECK(aigw_usage_record(u, &r) == 0, "ghost row");
    memcpy(ghost, r.id, 37);
    fill_row(&r, req, sizeof(req), te, 101);
    r.api_key_id = "not-a-uuid";
    CHECK(aigw_usage_record(u, &r) == 0, "bad row");
    memcpy(bad_key, r.id, 37);
    CHECK(record_n(u, te, 3, 4) == 0, "more good rows");
    CHECK(wait_backlog(u, 0, 15000), "nothing blocked (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(te) == 7, "good rows in: %ld", count_rows(te));
    CHECK(queries_used(te) == billed(0, 7), "billed %ld, want %d", queries_used(te), billed(0, 7));
    CHECK(tl_sql_long(owner, "SELECT count(*) FROM ai_usage_logs WHERE id IN ($1, $2)", 2, p) == 0,
          "rejected rows not inserted");
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    text = read_all(path);
    CHECK(strstr(text, ghost) != NULL, "unknown tenant row in rejected.jsonl");
    CHECK(strstr(text, bad_key) != NULL, "malformed api_key_id row in rejected.jsonl");
    CHECK(strstr(text, "this is not json\n") != NULL, "garbage line in rejected.jsonl");
    free(text);
    aigw_usage_stop(u, 5000);
    remove_spool(dir);
}

/* ---- 5b: malformed lines the JSON statement would misread ---- */

/* Edited or corrupted lines that the binary reader refuses, and that the
 * JSON statement would read otherwise than the writer groups them: a
 * tenant_id given twice (PostgreSQL keeps the last one, another tenant than
 * the first the writer goes by, so the statement and its row-by-row retry
 * fail on RLS for ever and every row behind it waits), and a second object
 * after the first on one line (in the JSON array it is a second row, billed
 * from half a line). Both are moved to rejected.jsonl, and the rows around
 * them are written. */
static void
test_malformed_lines(const char *url)
{
    char ta[37], tb[37], code[65], dir[64], path[512], *tail, *second, *text;
    struct aigw_usage_row w[5], extra;
    struct aigw_usage *u;

    tl_create_tenant(owner, "pro", "active", ta, code);
    tl_create_tenant(owner, "pro", "active", tb, code);
    make_spool(dir);
    snprintf(path, sizeof(path), "%s/usage-00000000000000000001.jsonl", dir);
    append_row(path, &w[0], ta, "req-malformed-0", NULL, NULL);
    tail = tl_sprintf("Z\",\"tenant_id\":\"%s\"}", tb);
    append_row(path, &w[1], ta, "req-malformed-1", "Z\"}", tail);
    free(tail);
    append_row(path, &w[2], ta, "req-malformed-2", NULL, NULL);
    base_row(&extra, ta, "req-malformed-extra");
    second = line_of(&extra, NULL, NULL);
    tail = tl_sprintf("Z\"},%s", second);
    append_row(path, &w[3], ta, "req-malformed-3", "Z\"}", tail);
    free(tail);
    free(second);
    append_row(path, &w[4], ta, "req-malformed-4", NULL, NULL);
    u = start(dir, url, 20, 100);
    CHECK(u != NULL, "writer starts on the segment");
    if (u == NULL)
        return;
    CHECK(wait_backlog(u, 0, 10000), "nothing blocked behind the malformed lines (backlog %zu)",
          aigw_usage_backlog(u));
    CHECK(row_in(w[0].id) && row_in(w[2].id) && row_in(w[4].id), "the good rows are written");
    CHECK(!row_in(w[1].id) && !row_in(w[3].id), "the malformed lines are not");
    CHECK(!row_in(extra.id), "no row is made from the second half of a line");
    CHECK(count_rows(ta) == 3 && count_rows(tb) == 0, "rows: %ld of tenant a, %ld of tenant b", count_rows(ta),
          count_rows(tb));
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    text = read_all(path);
    CHECK(strstr(text, w[1].id) != NULL && strstr(text, w[3].id) != NULL, "both lines are in rejected.jsonl");
    free(text);
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segment removed");
    remove_spool(dir);
}

/* ---- 5c: a spool that refuses writes ---- */

/* The spool cannot take a row (a full disk; here a file size limit, so
 * that write fails with EFBIG part-way through rows): the row is kept in
 * memory and appended as soon as the spool takes rows again (the writer
 * moves on to a new segment meanwhile), so every row still reaches
 * PostgreSQL, once. */
static void
test_spool_refuses(const char *url)
{
    enum { N = 60 };
    char tenant[37], dir[64], path[512];
    struct rlimit old, lim;
    struct aigw_usage *u;
    int fails;

    u = fresh_writer("pro", tenant, dir, url, 20, 100);
    if (u == NULL)
        return;
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 4000; /* ~8 rows per segment */
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "file size limit set");
    fails = record_n(u, tenant, 0, N);
    CHECK(wait_backlog(u, 0, 15000), "every row committed while the limit holds (backlog %zu)",
          aigw_usage_backlog(u));
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(fails == 0, "no row given up (%d)", fails);
    CHECK(count_rows(tenant) == N, "every row written: %ld of %d", count_rows(tenant), N);
    CHECK(queries_used(tenant) == billed(0, N), "billed once each: %ld, want %d", queries_used(tenant),
          billed(0, N));
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    CHECK(access(path, F_OK) != 0, "nothing rejected");
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
    remove_spool(dir);
}

/* aigw stops while the spool still refuses every write (a file size limit
 * of 1 byte: even an empty segment takes nothing): the rows waiting in
 * memory used to be lost at exit; they are inserted straight into
 * PostgreSQL, once each, and the spool is left empty. */
static void
test_stop_spool_refuses(const char *url)
{
    enum { N = 30 };
    char tenant[37], dir[64], path[512];
    struct rlimit old, lim;
    struct aigw_usage *u;
    int fails;

    u = fresh_writer("pro", tenant, dir, url, 20, 8);
    if (u == NULL)
        return;
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 1;
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "file size limit set");
    fails = record_n(u, tenant, 0, N);
    CHECK(fails == 0, "every row kept in memory (%d refused)", fails);
    CHECK(aigw_usage_backlog(u) == N, "backlog %zu", aigw_usage_backlog(u));
    CHECK(count_rows(tenant) == 0, "nothing in PostgreSQL yet");
    aigw_usage_stop(u, 5000);
    setrlimit(RLIMIT_FSIZE, &old);
    CHECK(count_rows(tenant) == N, "every row written at the stop: %ld of %d", count_rows(tenant), N);
    CHECK(queries_used(tenant) == billed(0, N), "billed once each: %ld, want %d", queries_used(tenant),
          billed(0, N));
    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    CHECK(access(path, F_OK) != 0, "nothing rejected");
    CHECK(segments(dir, NULL, 0) == 0, "no segment left");
    remove_spool(dir);
}

/* Set or clear the append-only flag of path (EPERM for ftruncate). */
static bool
append_only(const char *path, bool on)
{
    int fd = open(path, O_RDONLY), fl = 0;
    bool ok = fd >= 0 && ioctl(fd, FS_IOC_GETFLAGS, &fl) == 0;

    if (ok) {
        fl = on ? fl | FS_APPEND_FL : fl & ~FS_APPEND_FL;
        ok = ioctl(fd, FS_IOC_SETFLAGS, &fl) == 0;
    }
    if (fd >= 0)
        close(fd);
    return ok;
}

/* A write that fails part-way and whose piece cannot be cut off again
 * (ftruncate refused: the file is append-only here) leaves part of a row
 * without its '\n' in the segment. The next row must not be glued onto it:
 * the piece is ended as a line of its own (and rejected), the row that
 * failed is written once the spool takes it, and the next row is written. */
static void
test_torn_row(const char *url)
{
    char tenant[37], dir[64], seg[512], req[3][64];
    struct aigw_usage_row r[3];
    struct rlimit old, lim;
    struct aigw_usage *u;
    struct stat st;

    u = fresh_writer("pro", tenant, dir, url, 20, 100);
    if (u == NULL)
        return;
    fill_row(&r[0], req[0], sizeof(req[0]), tenant, 1);
    CHECK(aigw_usage_record(u, &r[0]) == 0, "first row");
    CHECK(wait_backlog(u, 0, 5000), "first row committed");
    segments(dir, seg, sizeof(seg));
    if (stat(seg, &st) != 0 || !append_only(seg, true)) {
        fprintf(stderr, "test_torn_row: skipped, no append-only flag here\n");
        aigw_usage_stop(u, 5000);
        remove_spool(dir);
        return;
    }
    signal(SIGXFSZ, SIG_IGN);
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = (rlim_t)st.st_size + 60; /* 60 bytes of the next row fit */
    setrlimit(RLIMIT_FSIZE, &lim);
    fill_row(&r[1], req[1], sizeof(req[1]), tenant, 2);
    aigw_usage_record(u, &r[1]);
    setrlimit(RLIMIT_FSIZE, &old);
    append_only(seg, false);
    fill_row(&r[2], req[2], sizeof(req[2]), tenant, 4);
    CHECK(aigw_usage_record(u, &r[2]) == 0, "the row after the torn one");
    CHECK(wait_backlog(u, 0, 10000), "all handled (backlog %zu)", aigw_usage_backlog(u));
    CHECK(row_in(r[0].id) && row_in(r[1].id) && row_in(r[2].id), "all three rows written (%d %d %d)",
          row_in(r[0].id), row_in(r[1].id), row_in(r[2].id));
    CHECK(count_rows(tenant) == 3, "once each: %ld", count_rows(tenant));
    aigw_usage_stop(u, 5000);
    remove_spool(dir);
}

/* ---- 6: a tenant's deletion and its usage rows ---- */

/* Poll (up to 5 s) until the backend of the query sql selects (one row: its
 * pid, or nothing) is blocked by blocker's lock. */
static bool
wait_blocked(PGconn *blocker, const char *sql)
{
    char pid[16];
    const char *p[1] = {pid};

    snprintf(pid, sizeof(pid), "%d", PQbackendPID(blocker));
    for (int waited = 0; waited < 5000; waited += 10) {
        if (tl_sql_long(owner, sql, 1, p) > 0)
            return true;
        usleep(10 * 1000);
    }
    return false;
}

/* Whether the id of every row is in dir's rejected.jsonl. */
static bool
in_rejected(const char *dir, const struct aigw_usage_row *rows, int n)
{
    char path[512], *text;
    bool all = true;

    snprintf(path, sizeof(path), "%s/rejected.jsonl", dir);
    text = read_all(path);
    for (int i = 0; i < n; i++)
        all = all && strstr(text, rows[i].id) != NULL;
    free(text);
    return all;
}

/* A batch for a tenant whose DELETE is under way: the writer resolves the
 * tenant (the DELETE is not committed yet), its insert waits on the tenant
 * row, and once the DELETE commits the batch fails like a foreign-key
 * violation: nothing inserted, the rows in rejected.jsonl. Rows written
 * before the DELETE went with the tenant. */
static void
test_tenant_deleted_during_batch(const char *url)
{
    char tenant[37], dir[64], reqs[4][32];
    const char *p[1] = {tenant};
    struct aigw_usage_row w[4];
    struct aigw_usage *u = fresh_writer("pro", tenant, dir, url, 20, 100);
    PGconn *deleter = tl_pg_owner();

    if (u == NULL)
        return;
    CHECK(record_n(u, tenant, 0, 3) == 0, "rows before the delete");
    CHECK(wait_backlog(u, 0, 15000), "written (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(tenant) == 3, "3 rows in: %ld", count_rows(tenant));

    PQclear(tl_sql(deleter, true, "BEGIN", 0, NULL));
    PQclear(tl_sql(deleter, true, "DELETE FROM tenants WHERE id = $1", 1, p));
    for (int i = 0; i < 4; i++) {
        snprintf(reqs[i], sizeof(reqs[i]), "req-deleted-%d", i);
        base_row(&w[i], tenant, reqs[i]);
        CHECK(aigw_usage_record(u, &w[i]) == 0, "record %s", reqs[i]);
    }
    CHECK(wait_blocked(deleter, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'aigw_app'"
                                " AND application_name = 'aigw' AND query LIKE '%ai_usage_logs%'"
                                " AND $1::int = ANY (pg_blocking_pids(pid))"),
          "the writer's insert waits for the uncommitted tenant DELETE");
    PQclear(tl_sql(deleter, true, "COMMIT", 0, NULL));
    CHECK(wait_backlog(u, 0, 15000), "batch handled (backlog %zu)", aigw_usage_backlog(u));
    CHECK(count_rows(tenant) == 0, "no usage row of the deleted tenant: %ld", count_rows(tenant));
    CHECK(in_rejected(dir, w, 4), "the batch's rows are in rejected.jsonl");
    aigw_usage_stop(u, 5000);
    CHECK(segments(dir, NULL, 0) == 0, "segments removed");
    remove_spool(dir);
    PQfinish(deleter);
}

/* The other order: a transaction that inserted rows holds the tenant row
 * (FOR KEY SHARE); a DELETE of the tenant waits for it and then deletes the
 * rows it committed, so no orphan is left. Also: no insert for a tenant that
 * is gone, even when the tenant setting names it; no new id for a tenant with
 * usage rows; no tenant DELETE outside READ COMMITTED. */
static void
test_tenant_delete_waits(void)
{
    static const char INS[] =
        "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success)"
        " SELECT gen_random_uuid(), $1, 'delete-wait', '/api/ai/query', 200, true FROM generate_series(1, 5)";
    char tenant[37], code[65];
    const char *p[1] = {tenant};
    PGconn *app = tl_pg_app(), *deleter = tl_pg_owner();
    const char *state;
    PGresult *r;

    tl_create_tenant(owner, "pro", "active", tenant, code);
    PQclear(tl_sql(app, true, "BEGIN", 0, NULL));
    PQclear(tl_sql(app, true, "SELECT set_config('app.current_tenant', $1, true)", 1, p));
    PQclear(tl_sql(app, true, INS, 1, p));

    CHECK(PQsendQueryParams(deleter, "DELETE FROM tenants WHERE id = $1", 1, NULL, p, NULL, NULL, 0) == 1,
          "send DELETE");
    CHECK(wait_blocked(app, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'DELETE FROM tenants%'"
                            " AND $1::int = ANY (pg_blocking_pids(pid))"),
          "the DELETE waits for the open insert");
    usleep(200 * 1000);
    PQconsumeInput(deleter);
    CHECK(PQisBusy(deleter), "still waiting after 200 ms");
    PQclear(tl_sql(app, true, "COMMIT", 0, NULL));
    r = PQgetResult(deleter);
    CHECK(PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(r), "1") == 0, "tenant deleted: %s",
          PQresultErrorMessage(r));
    PQclear(r);
    while ((r = PQgetResult(deleter)) != NULL)
        PQclear(r);
    CHECK(count_rows(tenant) == 0, "the committed rows went with the tenant: %ld", count_rows(tenant));

    /* the tenant setting still names the deleted tenant: the insert is refused as by the foreign key */
    PQclear(tl_sql(app, true, "BEGIN", 0, NULL));
    PQclear(tl_sql(app, true, "SELECT set_config('app.current_tenant', $1, true)", 1, p));
    r = tl_sql(app, false, INS, 1, p);
    state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    CHECK(PQresultStatus(r) == PGRES_FATAL_ERROR && state != NULL && strcmp(state, "23503") == 0,
          "insert for a deleted tenant: 23503 as from the foreign key: %s", PQresultErrorMessage(r));
    PQclear(r);
    PQclear(tl_sql(app, true, "ROLLBACK", 0, NULL));
    CHECK(count_rows(tenant) == 0, "nothing inserted");

    /* a tenant id with usage rows cannot change */
    tl_create_tenant(owner, "pro", "active", tenant, code);
    PQclear(tl_sql(owner, true,
                   "INSERT INTO ai_usage_logs (id, tenant_id, request_id, route, status_code, success)"
                   " VALUES (gen_random_uuid(), $1, 'new-id', '/api/ai/query', 200, true)",
                   1, p));
    r = tl_sql(owner, false, "UPDATE tenants SET id = gen_random_uuid() WHERE id = $1", 1, p);
    CHECK(PQresultStatus(r) == PGRES_FATAL_ERROR, "new id for a tenant with usage rows refused");
    PQclear(r);
    /* nor can it be deleted outside READ COMMITTED */
    PQclear(tl_sql(deleter, true, "BEGIN ISOLATION LEVEL REPEATABLE READ", 0, NULL));
    r = tl_sql(deleter, false, "DELETE FROM tenants WHERE id = $1", 1, p);
    CHECK(PQresultStatus(r) == PGRES_FATAL_ERROR && strstr(PQresultErrorMessage(r), "READ COMMITTED") != NULL,
          "tenant DELETE under REPEATABLE READ refused: %s", PQresultErrorMessage(r));
    PQclear(r);
    PQclear(tl_sql(deleter, true, "ROLLBACK", 0, NULL));
    PQclear(tl_sql(owner, true, "DELETE FROM tenants WHERE id = $1", 1, p));
    CHECK(count_rows(tenant) == 0, "deleting the tenant deleted its row");
    PQfinish(deleter);
    PQfinish(app);
}

/* ---- behind PgBouncer in transaction mode ---- */

/* Two client transactions open at once: PgBouncer gives each a server
 * session, so it has two to go round. */
static void
two_server_sessions(const char *url)
{
    PGconn *a = PQconnectdb(url), *b = PQconnectdb(url);

    PQclear(PQexec(a, "BEGIN"));
    PQclear(PQexec(a, "SELECT 1"));
    PQclear(PQexec(b, "BEGIN"));
    PQclear(PQexec(b, "SELECT 1"));
    PQclear(PQexec(a, "COMMIT"));
    PQclear(PQexec(b, "COMMIT"));
    PQfinish(a);
    PQfinish(b);
}

/* The writer through PgBouncer in transaction mode: consecutive
 * transactions land on different server sessions, so the named statement
 * prepared in one is missing in the other (26000), or is there already in
 * one the writer's connection never prepared it on (42P05). The writer
 * says so once, sends the statement unnamed from then on, and no batch
 * fails; every row arrives once. (Its log goes to stderr, which is a file
 * here for the length of the test.) */
static void
test_pgbouncer(void)
{
    enum { BATCHES = 6, PER = 40 };
    char tenant[37], dir[64], pdir[64], req[64], *url, *log, *logpath;
    struct aigw_usage_row r;
    struct aigw_usage *u;
    int port, saved, fd, fails = 0, shared = 0;

    make_spool(pdir);
    port = tl_pgbouncer_start(pdir, 2);
    if (port == 0) {
        tl_pgbouncer_stop(pdir);
        remove_spool(pdir);
        return;
    }
    url = tl_sprintf("postgresql://aigw_app@127.0.0.1:%d/aigw", port);
    two_server_sessions(url);

    logpath = tl_sprintf("%s/writer.log", pdir);
    fflush(stderr);
    saved = dup(STDERR_FILENO);
    fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(fd, STDERR_FILENO);
    close(fd);

    u = fresh_writer("pro", tenant, dir, url, 20, 500);
    for (int b = 0; u != NULL && b < BATCHES; b++) {
        for (int i = 0; i < PER; i++) {
            fill_row(&r, req, sizeof(req), tenant, b * PER + i);
            fails += aigw_usage_record(u, &r) != 0;
        }
        CHECK(wait_backlog(u, 0, 10000), "batch %d committed through pgbouncer (backlog %zu)", b,
              aigw_usage_backlog(u));
    }
    if (u != NULL)
        aigw_usage_stop(u, 5000);

    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    log = tl_read_file(logpath);
    for (const char *p = log; p != NULL && (p = strstr(p, "its sessions are shared")) != NULL; p++)
        shared++;
    CHECK(fails == 0, "all records succeeded (%d failed)", fails);
    CHECK(count_rows(tenant) == BATCHES * PER, "every row written once through pgbouncer: %ld", count_rows(tenant));
    CHECK(shared == 1, "the writer noticed the shared sessions once (%d times); its log:\n%s", shared,
          log ? log : "(none)");
    CHECK(log != NULL && strstr(log, "insert failed") == NULL && strstr(log, "failed:") == NULL,
          "no batch and no statement failed; the writer's log:\n%s", log ? log : "(none)");
    free(log);
    free(logpath);
    free(url);
    tl_pgbouncer_stop(pdir);
    remove_spool(pdir);
    remove_spool(dir);
}

int
main(void)
{
    const char *url = tl_env("AIGW_DATABASE_URL");

    aigw_log_init(LOG_INFO, 0);
    owner = tl_pg_owner();
    test_rows_and_replay(url);
    test_values(url);
    test_other_shapes(url);
    test_bad_values(url);
    test_batches(url);
    test_batch_with_written_row(url);
    test_rejected(url);
    test_malformed_lines(url);
    test_spool_refuses(url);
    test_stop_spool_refuses(url);
    test_torn_row(url);
    test_tenant_deleted_during_batch(url);
    test_tenant_delete_waits();
    test_pgbouncer();
    test_crash(url);
    test_outage(url); /* last: restarts PostgreSQL */
    PQfinish(owner);
    return tl_done();
}
