/* pg.h - PostgreSQL connection pool and the RLS-scoped query helper */
#ifndef AIGW_PG_H
#define AIGW_PG_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>

struct aigw_pg_pool;

/* Create a pool of at most size connections to url (a libpq URI or
 * key=value string). Connections are opened lazily. Never fails. Owner: the
 * caller (aigw_pg_pool_destroy). */
struct aigw_pg_pool *aigw_pg_pool_create(const char *url, int size);
void aigw_pg_pool_destroy(struct aigw_pg_pool *pool);

/* Open one standalone connection with aigw's session settings (statement
 * timeout, application_name). NULL on failure (reason logged), also when
 * the role bypasses row-level security (a superuser or BYPASSRLS role, such
 * as the migration owner given as database.url by mistake): every tenant
 * policy would be void, so aigw does not use such a connection, whenever it
 * connects (aigw_pg_role_refused tells that case apart). Owner: caller,
 * PQfinish. Used by the pool, for LISTEN, by the usage writer and the
 * tests. */
PGconn *aigw_pg_connect(const char *url);

/* Check out a healthy connection, waiting at most timeout_ms for a free one.
 * NULL when none could be had or connecting failed (logged).
 * Every statement run through this module waits at most 3 s for
 * PostgreSQL's answer; one that gets none has its connection shut down
 * (its results come back as errors, aigw_pg_release closes it), and so
 * does a connect that times out. PostgreSQL then counts as stalled (a
 * frozen server, a partition without a reset) until it answers again:
 * meanwhile acquire hands out a connection at most once a second, to one
 * caller at a time, and returns NULL at once to every other caller. So a
 * frozen server holds an HTTP worker for at most one wait a second, not
 * one per statement of every request. */
PGconn *aigw_pg_acquire(struct aigw_pg_pool *pool, int timeout_ms);
/* Whether PostgreSQL counts as stalled (see aigw_pg_acquire), and how many
 * acquires were refused at once for it. Process-wide. */
bool aigw_pg_stalled(void);
uint64_t aigw_pg_refused(void);

/* Return conn to the pool. A connection that is broken is closed; one left
 * inside a transaction is rolled back first, so no tenant setting or open
 * transaction ever leaks to the next user. NULL is ignored. */
void aigw_pg_release(struct aigw_pg_pool *pool, PGconn *conn);

/* Run sql with app.current_tenant set, transaction-locally, to the tenant
 * whose id or code is tenant_ref (resolved by aigw_tenant_id(); an unknown
 * ref sets '' and RLS then shows nothing). One round trip: the setting and
 * the statement go in one pipeline sync, i.e. one implicit transaction.
 * Returns the statement's result (PGRES_TUPLES_OK / PGRES_COMMAND_OK), owned
 * by the caller (PQclear), or NULL on any error (logged without parameters). */
PGresult *aigw_pg_exec_tenant(PGconn *conn, const char *tenant_ref, const char *sql, int nparams,
                              const char *const *params);
/* The same with PQexecParams's full parameter description: types (NULL, or
 * one Oid per parameter, 0 = inferred), lengths and formats (NULL = all text;
 * formats[i] = 1 sends values[i] as lengths[i] bytes in binary format). The
 * result is in text format. */
PGresult *aigw_pg_exec_tenant_params(PGconn *conn, const char *tenant_ref, const char *sql, int nparams,
                                     const Oid *types, const char *const *values, const int *lengths,
                                     const int *formats);

/* The same for a caller that handles some errors itself, with stmt naming
 * a statement prepared on conn (aigw_pg_prepare; sql and types unused), or
 * NULL: sql with types as an unnamed statement. When the statement (not
 * the tenant setting, not the connection) fails, state (char[6], may be
 * NULL) gets its SQLSTATE, else ""; an error whose SQLSTATE is in
 * quiet_states (space-separated, NULL = none) is neither logged nor counted
 * as a PostgreSQL error. The implicit transaction is over either way: a
 * retry sends both again. A named statement conn's session does not have
 * fails with SQLSTATE 26000. */
PGresult *aigw_pg_exec_tenant_stmt(PGconn *conn, const char *tenant_ref, const char *stmt, const char *sql,
                                   int nparams, const Oid *types, const char *const *values, const int *lengths,
                                   const int *formats, const char *quiet_states, char *state);
/* Prepare sql as stmt on conn (outside any transaction): 0, or -1 with the
 * SQLSTATE in state (char[6], may be NULL; "" when there is none), logged
 * unless it is in quiet_states (as above). A session that has stmt already
 * answers 42P05. */
int aigw_pg_prepare(PGconn *conn, const char *stmt, const char *sql, int nparams, const Oid *types,
                    const char *quiet_states, char *state);

/* sql (one or more statements, no parameters) in the simple-query
 * protocol, like PQexec: the last result (the caller PQclears it; check its
 * status), or NULL when none came. */
PGresult *aigw_pg_exec_simple(PGconn *conn, const char *sql);

/* A multi-statement transaction under RLS: BEGIN and the transaction-local
 * tenant setting (tenant_ref resolved as in aigw_pg_exec_tenant) in one
 * round trip. Run statements with aigw_pg_exec, then aigw_pg_commit; on any
 * failure call aigw_pg_rollback (aigw_pg_release also rolls back a
 * connection left in a transaction). Return 0, or -1 (logged). */
int aigw_pg_begin_tenant(PGconn *conn, const char *tenant_ref);
int aigw_pg_commit(PGconn *conn);
void aigw_pg_rollback(PGconn *conn);

/* Whether a pooled connection can be had within timeout_ms and answers
 * SELECT 1 within timeout_ms more (a connection that does not is closed,
 * logged and counted). For /readyz and the start-up wait. Never fails
 * (false = down). */
bool aigw_pg_ping(struct aigw_pg_pool *pool, int timeout_ms);
/* Log a warning when a pooled connection runs without statement_timeout or
 * lock_timeout (0): aigw asks for them in the connection's options, which a
 * pooler such as PgBouncer drops, and then nothing bounds a stuck statement.
 * For start-up, once PostgreSQL answered; silent when it cannot ask. */
void aigw_pg_check_timeouts(struct aigw_pg_pool *pool);
/* Whether a connection was refused because its role bypasses row-level
 * security (see aigw_pg_connect): any connection of the process,
 * not only the pool's (the listener and the usage writer connect on their
 * own, and after a restart of PostgreSQL they may be the first to). */
bool aigw_pg_role_refused(void);

/* Plain parameterized statement; same result contract as above. */
PGresult *aigw_pg_exec(PGconn *conn, const char *sql, int nparams, const char *const *params);

#endif
