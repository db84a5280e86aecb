/* admin.c - what the administration handlers share: paging, tenant
 * references, database error answers and the platform transaction */
#include "aigw/admin.h"

#include <string.h>

#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/pg.h"
#include "aigw/util.h"

bool
aigw_admin_limit(struct aigw_req *req, long *limit)
{
    const char *arg = aigw_req_arg(req, "limit");

    *limit = AIGW_ADMIN_PAGE_DEFAULT;
    if (arg == NULL || aigw_parse_long(arg, 1, AIGW_ADMIN_PAGE_MAX, limit))
        return true;
    aigw_req_fail(req, 400, "invalid_request", "limit: must be an integer in 1..%d", AIGW_ADMIN_PAGE_MAX);
    return false;
}

bool
aigw_admin_is_code(const char *s)
{
    size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_");

    return s[n] == '\0' && n >= 3 && n <= 64;
}

bool
aigw_admin_is_tenant_ref(const char *s)
{
    return aigw_is_uuid(s, strlen(s)) || aigw_admin_is_code(s);
}

enum aigw_rc
aigw_admin_db_fail(struct aigw_req *req, PGconn *conn)
{
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "the database is unavailable, retry shortly");
    }
    return aigw_req_fail(req, 500, "internal", "the database could not complete the request");
}

int
aigw_admin_begin_platform(PGconn *conn, const char *tenant_id)
{
    /* simple-query protocol: both statements in one round trip */
    PGresult *r = aigw_pg_exec_simple(conn, "BEGIN; SET LOCAL ROLE aigw_platform");

    if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
        const char *why = r != NULL ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;

        aigw_metrics_count_pg_error();
        aigw_log(LOG_ERR, "postgresql: platform transaction failed: %s", why != NULL ? why : "no result");
        PQclear(r);
        aigw_pg_rollback(conn);
        return -1;
    }
    PQclear(r);
    if (tenant_id == NULL)
        return 0;
    r = aigw_pg_exec(conn, "SELECT set_config('app.current_tenant', $1, true)", 1, &tenant_id);
    if (r == NULL) {
        aigw_pg_rollback(conn);
        return -1;
    }
    PQclear(r);
    return 0;
}

static void
clear_result(void *r)
{
    PQclear(r);
}

PGresult *
aigw_admin_own(struct aigw_req *req, PGresult *r)
{
    if (r != NULL)
        aigw_pool_cleanup(req->pool, clear_result, r);
    return r;
}

json_t *
aigw_admin_json_cell(PGresult *r, int i, int col)
{
    json_t *v = PQgetisnull(r, i, col) ? NULL : json_loads(PQgetvalue(r, i, col), JSON_DECODE_ANY, NULL);

    return v != NULL ? v : json_null();
}

enum aigw_rc
aigw_admin_page(struct aigw_req *req, PGresult *r, long limit, const char *list_key, const char *cursor_key)
{
    int n = PQntuples(r), shown = n > limit ? (int)limit : n;
    json_t *items = json_array();

    for (int i = 0; i < shown; i++)
        json_array_append_new(items, aigw_admin_json_cell(r, i, 0));
    return aigw_req_json(req, 200,
                         json_pack("{s:o, s:o}", list_key, items, cursor_key,
                                   n > limit ? json_string(PQgetvalue(r, shown - 1, 1)) : json_null()));
}
