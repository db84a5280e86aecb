/* admin.h - helpers shared by the administration handlers (tenants, plans,
 * billing usage, audit trail): paging, database errors, platform transactions */
#ifndef AIGW_ADMIN_H
#define AIGW_ADMIN_H

#include <jansson.h>
#include <libpq-fe.h>
#include <stdbool.h>

#include "aigw/http.h"

/* SQL: timestamptz column col as RFC 3339 UTC text ("2026-05-01T10:00:00Z") */
#define AIGW_ADMIN_SQL_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

#define AIGW_ADMIN_PAGE_DEFAULT 50
#define AIGW_ADMIN_PAGE_MAX 100

/* ?limit= of a listing: 1..AIGW_ADMIN_PAGE_MAX, default AIGW_ADMIN_PAGE_DEFAULT.
 * Returns true with *limit set, or false after answering 400
 * invalid_request naming "limit". */
bool aigw_admin_limit(struct aigw_req *req, long *limit);

/* True when s is a tenant reference a path may carry: a canonical uuid or a
 * tenant code ([a-z0-9_]{3,64}). Anything else names no tenant (404). */
bool aigw_admin_is_tenant_ref(const char *s);
/* True when s is a tenant code: [a-z0-9_]{3,64}. */
bool aigw_admin_is_code(const char *s);

/* Answer a failed database step on conn (may be NULL: none could be had):
 * 503 service_unavailable + Retry-After when PostgreSQL is out of reach or
 * the connection broke, else 500 internal (a statement failed; logged by
 * pg.c). Call before releasing conn (the release rolls back an unfinished
 * transaction). Returns AIGW_DONE. */
enum aigw_rc aigw_admin_db_fail(struct aigw_req *req, PGconn *conn);

/* BEGIN a platform transaction on conn: SET LOCAL ROLE aigw_platform (the
 * cross-tenant rights of sql/005_admin.sql, for this transaction only) and,
 * when tenant_id is not NULL, app.current_tenant = tenant_id, a uuid that
 * need not exist yet (onboarding), so the audit row of the change passes
 * the audit table's tenant policy. Finish with aigw_pg_commit or
 * aigw_pg_rollback. Returns 0, or -1 (logged, rolled back). */
int aigw_admin_begin_platform(PGconn *conn, const char *tenant_id);

/* Hand r (may be NULL) to the request's pool, which PQclears it when the
 * request ends. Returns r, so a call can wrap aigw_pg_exec(...). */
PGresult *aigw_admin_own(struct aigw_req *req, PGresult *r);

/* The JSON text in row i, column col of r, parsed (a new reference; JSON
 * null when the cell is SQL NULL or unparsable). */
json_t *aigw_admin_json_cell(PGresult *r, int i, int col);

/* Answer 200 with one page of a keyset listing. r holds up to limit + 1
 * rows: column 0 is a row's JSON text, column 1 its cursor. The body is
 * {list_key: [first limit rows], cursor_key: cursor of the last row shown,
 * or null when there is no further row}. r stays the caller's. */
enum aigw_rc aigw_admin_page(struct aigw_req *req, PGresult *r, long limit, const char *list_key,
                             const char *cursor_key);

#endif
