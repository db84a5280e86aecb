/* audit_logs.c - GET /api/v1/audit-logs: the caller's tenant's audit trail,
 * newest first, read under RLS (a tenant admin sees only its own rows) */
#include "aigw/admin.h"
#include "aigw/api.h"
#include "aigw/pg.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

/* keyset on the identity column: audit_logs_tenant_idx (tenant_id, id DESC) */
static const char AUDIT_SQL[] =
    "SELECT json_build_object('id', id, 'created_at', " AIGW_ADMIN_SQL_TS("created_at") ","
    " 'actor', actor, 'actor_role', actor_role, 'action', action, 'target', target, 'ip', ip,"
    " 'user_agent', user_agent, 'request_id', request_id, 'status', status, 'details', details)::text, id"
    " FROM audit_logs WHERE tenant_id = aigw_current_tenant()"
    " AND id < COALESCE($1::bigint, 9223372036854775807) ORDER BY id DESC LIMIT $2::int + 1";

enum aigw_rc
aigw_api_audit_logs(struct aigw_req *req)
{
    const char *before = aigw_req_arg(req, "before");
    const char *params[2];
    long limit, cursor;
    PGconn *conn;
    PGresult *r;
    enum aigw_rc rc;

    if (!aigw_admin_limit(req, &limit))
        return AIGW_DONE;
    if (before != NULL && !aigw_parse_long(before, 1, __LONG_MAX__, &cursor))
        return aigw_req_fail(req, 400, "invalid_request", "before: must be a positive integer (next_before of a page)");
    params[0] = before;
    params[1] = aigw_pool_printf(req->pool, "%ld", limit);
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    r = conn != NULL ? aigw_admin_own(req, aigw_pg_exec_tenant(conn, req->tenant->id, AUDIT_SQL, 2, params)) : NULL;
    rc = r != NULL ? aigw_admin_page(req, r, limit, "audit_logs", "next_before") : aigw_admin_db_fail(req, conn);
    aigw_pg_release(req->srv->pg, conn);
    return rc;
}
