/* cache.c - POST /api/ai/cache/invalidate: one INCR of the tenant's cache
 * generation, audited. Redis and PostgreSQL share no transaction, so the
 * audit row is inserted first and committed only after the INCR: a failed
 * INCR leaves no audit row; only a COMMIT lost after a successful INCR can
 * leave an invalidation unaudited (harmless: stale answers just age out). */
#include <string.h>

#include "aigw/admin.h"
#include "aigw/api.h"
#include "aigw/audit.h"
#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/redis.h"
#include "aigw/tenant.h"

/* The new generation, or -1 when Redis could not be asked. */
static long long
bump_generation(struct aigw_req *req)
{
    char key[96];

    snprintf(key, sizeof(key), "aigw:{%s}:gen", req->tenant->id);
    return aigw_redis_key_int(req->srv->redis, "INCR", key);
}

enum aigw_rc
aigw_api_cache_invalidate(struct aigw_req *req)
{
    const char *role = req->claims.role;
    const struct aigw_audit_entry entry = {req->tenant->id, "cache.invalidate", "cache", NULL};
    PGconn *conn;
    long long gen = -1;
    enum aigw_rc rc;

    if (strcmp(role, "admin") != 0 && strcmp(role, "manager") != 0)
        return aigw_req_fail(req, 403, "forbidden", "only a tenant admin or manager may invalidate the cache");
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    if (conn == NULL || aigw_pg_begin_tenant(conn, req->tenant->id) != 0 ||
        aigw_audit_insert(conn, req, &entry) != 0) {
        rc = aigw_admin_db_fail(req, conn);
        goto out;
    }
    gen = bump_generation(req);
    if (gen < 0) {
        aigw_req_add_header(req, "Retry-After", "1");
        rc = aigw_req_fail(req, 503, "service_unavailable", "the cache store is unavailable, retry shortly");
        goto out; /* released: rolled back, no audit row */
    }
    if (aigw_pg_commit(conn) != 0) {
        rc = aigw_admin_db_fail(req, conn);
        goto out;
    }
    aigw_log_fields(LOG_NOTICE, "cache invalidated", "REQUEST_ID", req->request_id, "TENANT_ID",
                    req->tenant->id, NULL);
    rc = aigw_req_json(req, 200, json_pack("{s:b, s:I}", "invalidated", 1, "generation", (json_int_t)gen));
out:
    aigw_pg_release(req->srv->pg, conn);
    return rc;
}
