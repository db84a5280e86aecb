/* usage_rowcost.c - PostgreSQL backend CPU per usage row for the usage
 * writer's statement
 *
 *   usage_rowcost APP_URL TENANT_UUID ROWS BATCH [writer|unprepared|replay|plain|sql]
 *
 * Sends ROWS cache-hit-like usage rows of one tenant, BATCH rows per
 * statement, the way the writer does (src/backends/usage.c): the rows as
 * spool lines read into 19 binary arrays (usage_line.c), set_config of the
 * tenant and the INSERT in one pipeline, one implicit transaction per batch
 * (aigw_pg_exec_tenant_params). Prints the backend's CPU time over the
 * measured batches from /proc/<backend pid>/schedstat (ns on CPU) and
 * /proc/<pid>/stat (utime + stime), per row. "writer" is the writer's
 * statement (built from the AIGW_USAGE_* macros of usage_line.h, as the
 * writer builds it), prepared once on the
 * connection as the writer does, "unprepared" the same sent with its text
 * every time, "replay" the writer's unprepared statement
 * for a batch with rows already written (ON CONFLICT (id) DO NOTHING; the
 * rows here are new, so it measures what ON CONFLICT costs when nothing
 * conflicts), "plain" the INSERT alone
 * (no RETURNING, no quota UPDATE), "sql" the statement in $ROWCOST_SQL
 * (same 19 parameters). Two warm-up batches are not counted.
 * ROWCOST_SETUP=SQL runs SQL on the connection first (e.g. SET jit = off). */
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/usage_line.h"
#include "aigw/util.h"

/* INSERT_BIN_SQL: what the writer sends first; INSERT_BIN_REPLAY_SQL: its
 * statement for a batch with rows already written (mode "replay") */
static const char WRITER_SQL[] = AIGW_USAGE_INSERT_BIN_HEAD AIGW_USAGE_RETURNING_TAIL;
static const char REPLAY_SQL[] = AIGW_USAGE_INSERT_BIN_HEAD AIGW_USAGE_ON_CONFLICT_TAIL;

static const char PLAIN_SQL[] =
    "INSERT INTO ai_usage_logs (" AIGW_USAGE_COLUMNS ")"
    " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[],"
    " $7::text[], $8::text[], $9::text[], $10::int4[], $11::int4[], $12::bool[], $13::bool[],"
    " $14::int4[], $15::bool[], $16::text[], $17::int4[], $18::int4[], $19::timestamptz[])"
    " ON CONFLICT (id) DO NOTHING";

static void
proc_cpu(int pid, uint64_t *sched_ns, uint64_t *ticks, uint64_t *sys_ticks, uint64_t *minflt)
{
    char path[64], buf[1024];
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/schedstat", pid);
    f = fopen(path, "r");
    if (f == NULL || fscanf(f, "%" SCNu64, sched_ns) != 1) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL || fgets(buf, sizeof(buf), f) == NULL) {
        fprintf(stderr, "cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    {
        const char *p = strrchr(buf, ')');
        unsigned long long ut = 0, st = 0, mf = 0;

        /* fields after ")": state(3) ... minflt(10) ... utime(14) stime(15) */
        if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %llu %*u %*u %*u %llu %llu", &mf, &ut, &st) != 3) {
            fprintf(stderr, "cannot parse %s\n", path);
            exit(1);
        }
        *ticks = ut + st;
        *sys_ticks = st;
        *minflt = mf;
    }
}

/* One cache hit's row, as the gateway fills it (src/http/server.c). */
static void
add_row(struct aigw_usage_arrays *a, const char *tenant, long i)
{
    static const char sha[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    struct aigw_usage_row r;
    struct timespec ts;
    unsigned char rnd[16];
    char reqid[33];
    char *line;
    size_t len;

    memset(&r, 0, sizeof(r));
    aigw_uuid7(r.id);
    memcpy(r.tenant_id, tenant, 36);
    for (size_t k = 0; k < sizeof(rnd); k++)
        rnd[k] = (unsigned char)(i * 31 + (long)k * 7);
    aigw_hex(rnd, sizeof(rnd), reqid);
    r.user_id = "a1111111-0000-4000-8000-000000000003";
    r.request_id = reqid;
    r.route = "/api/ai/query";
    r.query_type = "knowledge";
    r.question_sha256 = sha;
    r.model = "gpt-4o-mini";
    r.prompt_tokens = 42 + i % 50;
    r.completion_tokens = 120 + i % 200;
    r.from_cache = true;
    r.billed = false;
    r.status_code = 200;
    r.success = true;
    r.response_ms = 1;
    r.upstream_ms = -1;
    clock_gettime(CLOCK_REALTIME, &ts);
    r.created_at_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    line = aigw_usage_line(&r, &len);
    if (line == NULL || !aigw_usage_arrays_add(a, line, len - 1)) {
        fprintf(stderr, "row %ld not taken by the binary reader\n", i);
        exit(1);
    }
    free(line);
}

int
main(int argc, char **argv)
{
    static const int formats[AIGW_USAGE_NCOLS] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    struct aigw_usage_arrays a;
    const char *values[AIGW_USAGE_NCOLS];
    int lengths[AIGW_USAGE_NCOLS];
    Oid types[AIGW_USAGE_NCOLS];
    const char *sql = WRITER_SQL;
    bool prepare = argc <= 5 || strcmp(argv[5], "writer") == 0, prepared = false;
    uint64_t ns0 = 0, ns1, t0 = 0, t1, s0 = 0, s1, f0 = 0, f1;
    long rows, batch, done = 0, i = 0;
    int pid, warm = 2;
    PGconn *c;
    PGresult *r;

    if (argc < 5) {
        fprintf(stderr, "usage: %s APP_URL TENANT_UUID ROWS BATCH [writer|unprepared|replay|plain|sql]\n", argv[0]);
        return 2;
    }
    if (argc > 5 && strcmp(argv[5], "plain") == 0)
        sql = PLAIN_SQL;
    else if (argc > 5 && strcmp(argv[5], "replay") == 0)
        sql = REPLAY_SQL;
    else if (argc > 5 && strcmp(argv[5], "unprepared") == 0)
        prepare = false;
    else if (argc > 5 && strcmp(argv[5], "sql") == 0)
        sql = getenv("ROWCOST_SQL"); /* another statement with the same 19 parameters */
    if (sql == NULL) {
        fprintf(stderr, "ROWCOST_SQL is not set\n");
        return 2;
    }
    rows = strtol(argv[3], NULL, 10);
    batch = strtol(argv[4], NULL, 10);
    aigw_log_init(LOG_WARNING, 0);
    c = aigw_pg_connect(argv[1]);
    if (c == NULL)
        return 1;
    if (getenv("ROWCOST_SETUP") != NULL) { /* e.g. "SET jit = off", for a comparison */
        r = PQexec(c, getenv("ROWCOST_SETUP"));
        if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
            fprintf(stderr, "ROWCOST_SETUP: %s", PQerrorMessage(c));
            return 1;
        }
        PQclear(r);
    }
    r = PQexec(c, "SELECT pg_backend_pid()");
    pid = (int)strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    memset(&a, 0, sizeof(a));
    while (done < rows) {
        aigw_usage_arrays_reset(&a);
        for (long k = 0; k < batch; k++)
            add_row(&a, argv[2], i++);
        aigw_usage_arrays_finish(&a, types, values, lengths);
        if (warm == 0 && done == 0)
            proc_cpu(pid, &ns0, &t0, &s0, &f0);
        if (prepare && !prepared) {
            if (aigw_pg_prepare(c, "rowcost", sql, AIGW_USAGE_NCOLS, types, NULL, NULL) != 0)
                return 1;
            prepared = true;
        }
        if (prepare)
            r = aigw_pg_exec_tenant_stmt(c, argv[2], "rowcost", NULL, AIGW_USAGE_NCOLS, NULL, values, lengths,
                                         formats, NULL, NULL);
        else
            r = aigw_pg_exec_tenant_params(c, argv[2], sql, AIGW_USAGE_NCOLS, types, values, lengths, formats);
        if (r == NULL) {
            fprintf(stderr, "batch failed\n");
            return 1;
        }
        PQclear(r);
        if (warm > 0)
            warm--;
        else
            done += batch;
    }
    proc_cpu(pid, &ns1, &t1, &s1, &f1);
    printf("backend=%d rows=%ld batch=%ld sched_us_per_row=%.2f "
           "stat_us_per_row=%.2f (sys %.2f) minflt_per_row=%.2f\n",
           pid, done, batch, (double)(ns1 - ns0) / 1e3 / (double)done,
           (double)(t1 - t0) * 1e6 / (double)sysconf(_SC_CLK_TCK) / (double)done,
           (double)(s1 - s0) * 1e6 / (double)sysconf(_SC_CLK_TCK) / (double)done, (double)(f1 - f0) / (double)done);
    aigw_usage_arrays_free(&a);
    PQfinish(c);
    return 0;
}
