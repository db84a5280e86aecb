/* pg.c - a small checkout pool of libpq connections and the RLS helper */
#include "aigw/pg.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/util.h"

struct aigw_pg_pool {
    char *url;
    int size;
    pthread_mutex_t lock;  /* guards idle, n_idle, n_out */
    pthread_cond_t freed;  /* signalled when a connection is returned */
    PGconn **idle;
    int n_idle;
    int n_out;             /* checked out (or being connected) */
    bool probing;          /* guarded by lock: while stalled, a caller is trying PostgreSQL */
    PGconn *probe;         /* guarded by lock: that caller's connection once it has one */
};

/* A connection of this process was refused because its role bypasses RLS:
 * the pool's or one of its own (the listener's, the usage writer's, which
 * reconnect by themselves after a restart of PostgreSQL while nothing may
 * ask the pool for one). */
static atomic_bool role_refused_any;

/* PostgreSQL stopped answering: a statement on one of this process's
 * connections got no answer within ANSWER_WAIT_MS, or a connect timed out
 * (a frozen server, a partition without a reset). Until PostgreSQL answers
 * again, a pool hands out a connection at most once every STALL_PROBE_MS,
 * to one caller at a time (the probe); every other acquire gets NULL at
 * once. Process-wide, like role_refused_any: every connection of the
 * process talks to the same server. */
static atomic_bool stalled;
static _Atomic int64_t probe_at_ms;     /* aigw_now_ms: no probe before this */
static _Atomic uint64_t refused;        /* acquires refused while stalled */

/* How long a statement's answer is waited for on the caller's thread. The
 * server's own statement_timeout (5 s) cannot end a wait on a server that
 * does not run at all; an HTTP worker held longer than this is held past
 * the watchdog's check (5 s), so every connection it serves with it. */
#define ANSWER_WAIT_MS 3000
#define STALL_PROBE_MS 1000

static void
stall(void)
{
    atomic_store(&probe_at_ms, aigw_now_ms() + STALL_PROBE_MS);
    atomic_store(&stalled, true);
}

static void
answered(void)
{
    if (atomic_load_explicit(&stalled, memory_order_relaxed))
        atomic_store(&stalled, false);
}

/* Wait until conn has a result to hand out without blocking (the query
 * sent, its answer read); false at deadline_ms or on a broken connection. */
static bool
wait_result(PGconn *conn, int64_t deadline_ms)
{
    for (;;) {
        int flush = PQflush(conn), left, rc;
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};

        if (flush < 0)
            return false;
        if (flush == 0 && !PQisBusy(conn))
            return true;
        if (flush > 0)
            pfd.events |= POLLOUT;
        left = (int)(deadline_ms - aigw_now_ms());
        if (left <= 0)
            return false;
        rc = poll(&pfd, 1, left);
        if (rc < 0 && errno != EINTR)
            return false;
        if (rc > 0 && PQconsumeInput(conn) != 1)
            return false;
    }
}

/* The statement on conn got no answer in time: shut its socket down, so
 * libpq reads the end at once (the results still awaited come back as
 * errors, the connection reads CONNECTION_BAD and aigw_pg_release closes
 * it) and PostgreSQL's late answer is never taken for a later statement's. */
static void
give_up(PGconn *conn)
{
    aigw_metrics_count_pg_error();
    aigw_log(LOG_ERR, "postgresql: no answer within %d ms; connection dropped", ANSWER_WAIT_MS);
    stall();
    shutdown(PQsocket(conn), SHUT_RDWR);
}

/* PQgetResult, waiting for the answer until deadline_ms at most. */
static PGresult *
await_result(PGconn *conn, int64_t deadline_ms)
{
    if (wait_result(conn, deadline_ms))
        answered();
    else if (PQstatus(conn) == CONNECTION_OK && aigw_now_ms() >= deadline_ms)
        give_up(conn);
    return PQgetResult(conn);
}

/* After a PQsend*: every result until the end, each within ANSWER_WAIT_MS
 * of the send; the last one is returned (PQexec's rule), NULL when there
 * was none. */
static PGresult *
collect(PGconn *conn)
{
    int64_t deadline = aigw_now_ms() + ANSWER_WAIT_MS;
    PGresult *r, *last = NULL;

    while ((r = await_result(conn, deadline)) != NULL) {
        PQclear(last);
        last = r;
        if (PQstatus(conn) != CONNECTION_OK)
            break;
    }
    return last;
}

/* PQexec, with the answer waited for ANSWER_WAIT_MS at most. */
PGresult *
aigw_pg_exec_simple(PGconn *conn, const char *sql)
{
    return PQsendQuery(conn, sql) == 1 ? collect(conn) : NULL;
}

static const char SET_TENANT_SQL[] =
    "SELECT set_config('app.current_tenant', COALESCE(aigw_tenant_id($1)::text, ''), true)";

struct aigw_pg_pool *
aigw_pg_pool_create(const char *url, int size)
{
    struct aigw_pg_pool *pool = aigw_xcalloc(1, sizeof(*pool));

    pool->url = aigw_xstrdup(url);
    pool->size = size;
    pool->idle = aigw_xcalloc((size_t)size, sizeof(PGconn *));
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->freed, NULL);
    return pool;
}

void
aigw_pg_pool_destroy(struct aigw_pg_pool *pool)
{
    if (pool == NULL)
        return;
    for (int i = 0; i < pool->n_idle; i++)
        PQfinish(pool->idle[i]);
    pthread_cond_destroy(&pool->freed);
    pthread_mutex_destroy(&pool->lock);
    free(pool->idle);
    free(pool->url);
    free(pool);
}

static void
first_line(const char *msg, char *out, size_t cap)
{
    size_t n = strcspn(msg, "\n");

    if (n >= cap)
        n = cap - 1;
    memcpy(out, msg, n);
    out[n] = '\0';
}

/* What aigw asks PostgreSQL for on every connection (ms), in its options. */
#define STATEMENT_TIMEOUT "5000"
#define LOCK_TIMEOUT "2000"

/* 1 when the session's role bypasses row-level security, 0 when not, -1
 * when the question failed. */
static int
bypasses_rls(PGconn *conn)
{
    PGresult *r = aigw_pg_exec_simple(conn, "SELECT (r.rolsuper OR r.rolbypassrls)::int, current_user"
                                    " FROM pg_catalog.pg_roles r WHERE r.rolname = current_user");
    int rc = -1;

    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        rc = strcmp(PQgetvalue(r, 0, 0), "1") == 0;
        if (rc == 1)
            aigw_log(LOG_ERR,
                     "postgresql: role %s bypasses row-level security (superuser or BYPASSRLS), so no tenant "
                     "policy would hold; refusing the connection: give database.url the application role "
                     "(aigw_app), not the owner",
                     PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    return rc;
}

PGconn *
aigw_pg_connect(const char *url)
{
    const char *keys[] = {"dbname", "application_name", "connect_timeout", "options", NULL};
    const char *vals[] = {url, "aigw", "3",
                          "-c statement_timeout=" STATEMENT_TIMEOUT " -c lock_timeout=" LOCK_TIMEOUT, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    char why[256];
    int bypass = -1;

    if (conn != NULL && PQstatus(conn) == CONNECTION_OK)
        answered(); /* the server took the session */
    else if (conn != NULL && strstr(PQerrorMessage(conn), "timeout expired") != NULL)
        stall(); /* libpq's words for connect_timeout */

    if (conn != NULL && PQstatus(conn) == CONNECTION_OK && (bypass = bypasses_rls(conn)) == 0)
        return conn;
    if (conn != NULL && PQstatus(conn) == CONNECTION_OK) {
        if (bypass == 1) {
            atomic_store(&role_refused_any, true);
        } else {
            first_line(PQerrorMessage(conn), why, sizeof(why));
            aigw_log(LOG_ERR, "postgresql: connect failed: the session's role could not be checked: %s", why);
        }
        aigw_metrics_count_pg_error();
        PQfinish(conn);
        return NULL;
    }
    first_line(conn ? PQerrorMessage(conn) : "out of memory", why, sizeof(why));
    aigw_metrics_count_pg_error();
    aigw_log(LOG_ERR, "postgresql: connect failed: %s", why);
    PQfinish(conn);
    return NULL;
}

/* An idle connection PostgreSQL has closed (a restart, an administrator's
 * pg_terminate_backend) still reads CONNECTION_OK until libpq reads from it,
 * and the statement sent on it would fail its request. Such a server says
 * so before it closes: the socket is readable. Whatever is there is read
 * (an asynchronous message from a live server is harmless). */
static bool
idle_alive(PGconn *conn)
{
    struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};

    if (PQstatus(conn) != CONNECTION_OK || pfd.fd < 0)
        return false;
    if (poll(&pfd, 1, 0) == 0)
        return true;
    return PQconsumeInput(conn) == 1 && PQstatus(conn) == CONNECTION_OK && !(pfd.revents & (POLLHUP | POLLERR));
}

/* The probe has its answer, or none (conn NULL: it got no connection);
 * pool->lock held. */
static void
probe_done_locked(struct aigw_pg_pool *pool, PGconn *conn)
{
    if (conn == NULL || pool->probe == conn) {
        pool->probe = NULL;
        pool->probing = false;
    }
}

/* conn leaves the caller: back to the idle list (keep), else closed. A
 * probe that got this far had its answer, or gave up. */
static void
give_back(struct aigw_pg_pool *pool, PGconn *conn, bool keep)
{
    pthread_mutex_lock(&pool->lock);
    probe_done_locked(pool, conn);
    pool->n_out--;
    if (keep)
        pool->idle[pool->n_idle++] = conn;
    pthread_cond_signal(&pool->freed);
    pthread_mutex_unlock(&pool->lock);
    if (!keep)
        PQfinish(conn);
}

PGconn *
aigw_pg_acquire(struct aigw_pg_pool *pool, int timeout_ms)
{
    struct timespec deadline;
    PGconn *conn = NULL;
    bool probe = false;

    aigw_deadline_ms(&deadline, timeout_ms);
    pthread_mutex_lock(&pool->lock);
    if (atomic_load(&stalled)) {
        if (pool->probing || aigw_now_ms() < atomic_load(&probe_at_ms)) {
            pthread_mutex_unlock(&pool->lock);
            atomic_fetch_add_explicit(&refused, 1, memory_order_relaxed);
            aigw_metrics_count_pg_error();
            return NULL;
        }
        probe = pool->probing = true;
    }
    while (pool->n_idle == 0 && pool->n_out >= pool->size) {
        if (pthread_cond_timedwait(&pool->freed, &pool->lock, &deadline) == ETIMEDOUT)
            break;
    }
    if (pool->n_idle > 0) {
        conn = pool->idle[--pool->n_idle];
        pool->n_out++;
    } else if (pool->n_out < pool->size) {
        pool->n_out++; /* reserve the slot, connect outside the lock */
    } else {
        if (probe)
            probe_done_locked(pool, NULL);
        pthread_mutex_unlock(&pool->lock);
        aigw_metrics_count_pg_error();
        aigw_log(LOG_WARNING, "postgresql: pool exhausted (%d connections busy)", pool->size);
        return NULL;
    }
    pthread_mutex_unlock(&pool->lock);

    if (conn != NULL && !idle_alive(conn)) {
        PQfinish(conn);
        conn = NULL;
    }
    if (conn == NULL)
        conn = aigw_pg_connect(pool->url);
    if (conn == NULL || probe) {
        pthread_mutex_lock(&pool->lock);
        if (conn == NULL) {
            pool->n_out--;
            pthread_cond_signal(&pool->freed);
        }
        if (probe && conn != NULL)
            pool->probe = conn; /* its statements decide; its release ends the probe */
        else if (probe)
            probe_done_locked(pool, NULL); /* the next caller probes */
        pthread_mutex_unlock(&pool->lock);
    }
    return conn;
}

void
aigw_pg_release(struct aigw_pg_pool *pool, PGconn *conn)
{
    bool keep;

    if (conn == NULL)
        return;
    keep = PQpipelineStatus(conn) == PQ_PIPELINE_OFF && PQstatus(conn) == CONNECTION_OK;
    if (keep && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PQclear(aigw_pg_exec_simple(conn, "ROLLBACK"));
        keep = PQtransactionStatus(conn) == PQTRANS_IDLE;
    }
    give_back(pool, conn, keep);
}

static bool
result_ok(PGresult *r)
{
    ExecStatusType st = PQresultStatus(r);

    return st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;
}

static void
log_result_error(const char *what, PGconn *conn, PGresult *r)
{
    char why[256];
    const char *msg = r ? PQresultErrorMessage(r) : PQerrorMessage(conn);

    first_line(msg && *msg ? msg : PQerrorMessage(conn), why, sizeof(why));
    aigw_metrics_count_pg_error();
    aigw_log(LOG_ERR, "postgresql: %s failed: %s", what, why);
}

PGresult *
aigw_pg_exec(PGconn *conn, const char *sql, int nparams, const char *const *params)
{
    PGresult *r = PQsendQueryParams(conn, sql, nparams, NULL, params, NULL, NULL, 0) == 1 ? collect(conn) : NULL;

    if (r != NULL && result_ok(r))
        return r;
    log_result_error("query", conn, r);
    PQclear(r);
    return NULL;
}

int
aigw_pg_begin_tenant(PGconn *conn, const char *tenant_ref)
{
    PGresult *r = aigw_pg_exec_simple(conn, "BEGIN");

    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        log_result_error("begin", conn, r);
        PQclear(r);
        return -1;
    }
    PQclear(r);
    r = aigw_pg_exec(conn, SET_TENANT_SQL, 1, &tenant_ref);
    if (r == NULL) {
        aigw_pg_rollback(conn);
        return -1;
    }
    PQclear(r);
    return 0;
}

int
aigw_pg_commit(PGconn *conn)
{
    PGresult *r = aigw_pg_exec_simple(conn, "COMMIT");
    /* COMMIT of a failed transaction "succeeds" with the tag ROLLBACK */
    int rc = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdStatus(r), "COMMIT") == 0 ? 0 : -1;

    if (rc != 0)
        log_result_error("commit", conn, r);
    PQclear(r);
    return rc;
}

void
aigw_pg_rollback(PGconn *conn)
{
    PQclear(aigw_pg_exec_simple(conn, "ROLLBACK"));
}

PGresult *
aigw_pg_exec_tenant(PGconn *conn, const char *tenant_ref, const char *sql, int nparams,
                    const char *const *params)
{
    return aigw_pg_exec_tenant_params(conn, tenant_ref, sql, nparams, NULL, params, NULL, NULL);
}

/* The statement's error: its SQLSTATE into state; logged (and counted)
 * unless it is one of quiet_states. */
static void
statement_error(PGconn *conn, PGresult *r, const char *what, const char *quiet_states, char *state)
{
    const char *st = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    bool valid = st != NULL && strlen(st) == 5 && strchr(st, ' ') == NULL;

    if (state != NULL && valid)
        memcpy(state, st, 6);
    /* SQLSTATEs are 5 characters without spaces: in a space-separated list
     * a code can only match itself */
    if (quiet_states == NULL || !valid || strstr(quiet_states, st) == NULL)
        log_result_error(what, conn, r);
}

/* sql, or (stmt != NULL) the statement prepared as stmt */
static PGresult *
exec_tenant(PGconn *conn, const char *tenant_ref, const char *sql, const char *stmt, int nparams, const Oid *types,
            const char *const *values, const int *lengths, const int *formats, const char *quiet_states, char *state)
{
    PGresult *r, *out = NULL;
    bool failed = false, synced = false;
    int idx = 0, sent;
    int64_t deadline = aigw_now_ms() + ANSWER_WAIT_MS;

    if (state != NULL)
        state[0] = '\0';
    if (PQenterPipelineMode(conn) != 1) {
        log_result_error("pipeline", conn, NULL);
        return NULL;
    }
    sent = PQsendQueryParams(conn, SET_TENANT_SQL, 1, NULL, &tenant_ref, NULL, NULL, 0);
    if (sent == 1 && stmt != NULL)
        sent = PQsendQueryPrepared(conn, stmt, nparams, values, lengths, formats, 0);
    else if (sent == 1)
        sent = PQsendQueryParams(conn, sql, nparams, types, values, lengths, formats, 0);
    if (sent != 1 || PQpipelineSync(conn) != 1) {
        log_result_error("send", conn, NULL);
        failed = true;
        goto out;
    }
    /* results: set_config, NULL, statement, NULL, SYNC */
    while (!synced) {
        r = await_result(conn, deadline);
        if (r == NULL) {
            if (PQstatus(conn) != CONNECTION_OK) {
                failed = true;
                break;
            }
            idx++;
            continue;
        }
        switch (PQresultStatus(r)) {
        case PGRES_PIPELINE_SYNC:
            synced = true;
            PQclear(r);
            break;
        case PGRES_TUPLES_OK:
        case PGRES_COMMAND_OK:
            if (idx == 1 && out == NULL)
                out = r;
            else
                PQclear(r);
            break;
        default:
            if (!failed && idx == 1)
                statement_error(conn, r, "tenant query", quiet_states, state);
            else if (!failed)
                log_result_error("tenant query", conn, r);
            failed = true;
            PQclear(r);
            break;
        }
    }
out:
    if (PQexitPipelineMode(conn) != 1)
        failed = true; /* aigw_pg_release closes a connection left in pipeline mode */
    if (failed) {
        PQclear(out);
        return NULL;
    }
    return out;
}

PGresult *
aigw_pg_exec_tenant_params(PGconn *conn, const char *tenant_ref, const char *sql, int nparams, const Oid *types,
                           const char *const *values, const int *lengths, const int *formats)
{
    return exec_tenant(conn, tenant_ref, sql, NULL, nparams, types, values, lengths, formats, NULL, NULL);
}

PGresult *
aigw_pg_exec_tenant_stmt(PGconn *conn, const char *tenant_ref, const char *stmt, const char *sql, int nparams,
                         const Oid *types, const char *const *values, const int *lengths, const int *formats,
                         const char *quiet_states, char *state)
{
    return exec_tenant(conn, tenant_ref, sql, stmt, nparams, types, values, lengths, formats, quiet_states, state);
}

int
aigw_pg_prepare(PGconn *conn, const char *stmt, const char *sql, int nparams, const Oid *types,
                const char *quiet_states, char *state)
{
    PGresult *r = PQsendPrepare(conn, stmt, sql, nparams, types) == 1 ? collect(conn) : NULL;
    int rc = r != NULL && PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;

    if (state != NULL)
        state[0] = '\0';
    if (rc != 0)
        statement_error(conn, r, "prepare", quiet_states, state);
    PQclear(r);
    return rc;
}

bool
aigw_pg_role_refused(void)
{
    return atomic_load(&role_refused_any);
}

void
aigw_pg_check_timeouts(struct aigw_pg_pool *pool)
{
    PGconn *conn = aigw_pg_acquire(pool, 1000);
    PGresult *r;

    if (conn == NULL)
        return;
    r = aigw_pg_exec(conn, "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')", 0, NULL);
    if (r != NULL && PQntuples(r) == 1 &&
        (strcmp(PQgetvalue(r, 0, 0), "0") == 0 || strcmp(PQgetvalue(r, 0, 1), "0") == 0))
        aigw_log(LOG_WARNING,
                 "postgresql: statement_timeout is %s and lock_timeout %s on aigw's connections (0 = none; a pooler "
                 "that drops the connection's options?): set them on the role, e.g. ALTER ROLE aigw_app SET "
                 "statement_timeout = '" STATEMENT_TIMEOUT "ms'; ALTER ROLE aigw_app SET lock_timeout = '" LOCK_TIMEOUT
                 "ms'",
                 PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 1));
    PQclear(r);
    aigw_pg_release(pool, conn);
}

/* SELECT 1 that gives up after timeout_ms: a server that stopped answering
 * without a reset (a partition, a frozen server left by a failover) held
 * the blocking call until TCP gave up, minutes, and /readyz with it (the
 * statement_timeout is the server's own, so it cannot help). -1 timed out
 * (the connection must go), 0 an error result, 1 answered. */
static int
select1_within(PGconn *conn, int timeout_ms)
{
    int64_t deadline = aigw_now_ms() + timeout_ms;
    PGresult *r;
    int rc = 0;

    if (PQsendQuery(conn, "SELECT 1") != 1)
        return -1;
    for (;;) {
        if (!wait_result(conn, deadline))
            return -1;
        r = PQgetResult(conn);
        if (r == NULL)
            return rc;
        if (PQresultStatus(r) == PGRES_TUPLES_OK)
            rc = 1;
        else
            log_result_error("query", conn, r);
        PQclear(r);
    }
}

bool
aigw_pg_ping(struct aigw_pg_pool *pool, int timeout_ms)
{
    PGconn *conn = aigw_pg_acquire(pool, timeout_ms);
    int rc;

    if (conn == NULL)
        return false;
    rc = select1_within(conn, timeout_ms);
    if (rc >= 0) {
        answered();
        aigw_pg_release(pool, conn);
        return rc == 1;
    }
    aigw_metrics_count_pg_error();
    aigw_log(LOG_ERR, "postgresql: no answer to SELECT 1 within %d ms; connection dropped", timeout_ms);
    stall();
    give_back(pool, conn, false); /* never back to the pool: its answer may still come */
    return false;
}

bool
aigw_pg_stalled(void)
{
    return atomic_load(&stalled);
}

uint64_t
aigw_pg_refused(void)
{
    return atomic_load_explicit(&refused, memory_order_relaxed);
}
