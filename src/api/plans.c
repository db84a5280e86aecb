/* plans.c - GET /api/v1/plans: the plans a tenant can be put on (plans are data) */
#include "aigw/admin.h"
#include "aigw/api.h"
#include "aigw/pg.h"

static const char PLANS_SQL[] =
    "SELECT COALESCE(json_agg(json_build_object('tier', tier, 'display_name', display_name,"
    " 'monthly_query_limit', monthly_query_limit, 'requests_per_minute', requests_per_minute,"
    " 'max_tokens', max_tokens, 'features', features, 'rank', rank) ORDER BY rank, tier), '[]')::text"
    " FROM plans";

enum aigw_rc
aigw_api_plans(struct aigw_req *req)
{
    PGconn *conn = aigw_pg_acquire(req->srv->pg, 2000);
    PGresult *r = conn != NULL ? aigw_admin_own(req, aigw_pg_exec(conn, PLANS_SQL, 0, NULL)) : NULL;
    enum aigw_rc rc = r != NULL ? aigw_req_json(req, 200, json_pack("{s:o}", "plans", aigw_admin_json_cell(r, 0, 0)))
                                : aigw_admin_db_fail(req, conn);

    aigw_pg_release(req->srv->pg, conn);
    return rc;
}
