/* billing.c - GET /api/v1/tenants/{id}/usage?period=YYYY-MM: one tenant's
 * month for billing, aggregated from ai_usage_logs in the tenant's own RLS
 * scope (index-only over ai_usage_logs_billing_idx, see sql/005_admin.sql) */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/admin.h"
#include "aigw/api.h"
#include "aigw/pg.h"
#include "aigw/quota.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

static const char TENANT_SQL[] =
    "SELECT t.id, t.code, t.tier, CASE WHEN t.ai_queries_month = $1::date THEN t.ai_queries_used ELSE 0 END"
    " FROM tenants t WHERE t.id = aigw_current_tenant()";

/* The counters, in the column order of USAGE_SQL from its third column. */
static const char *const COUNTERS[] = {
    "requests",   "billed_queries", "cache_hits",    "failures",
    "rejections", "successful",     "prompt_tokens", "completion_tokens",
};
#define N_COUNTERS (sizeof(COUNTERS) / sizeof(COUNTERS[0]))

/* failures: the request was ours to answer and was not (upstream or internal
 * errors, 5xx); rejections: refused by policy or input (4xx: invalid,
 * feature/PII, rate limit, quota). Tokens are those of billed queries only:
 * a cache hit repeats a stored answer and costs no generation. ROLLUP adds
 * the month's total row (is_total = 1) after the per-type rows. */
static const char USAGE_SQL[] =
    "SELECT COALESCE(query_type, 'other'), grouping(COALESCE(query_type, 'other')) AS is_total,"
    " count(*), count(*) FILTER (WHERE billed), count(*) FILTER (WHERE from_cache),"
    " count(*) FILTER (WHERE status_code >= 500), count(*) FILTER (WHERE status_code BETWEEN 400 AND 499),"
    " count(*) FILTER (WHERE success),"
    " COALESCE(sum(prompt_tokens) FILTER (WHERE billed), 0), COALESCE(sum(completion_tokens) FILTER (WHERE billed), 0)"
    " FROM ai_usage_logs"
    " WHERE tenant_id = aigw_current_tenant() AND created_at >= $1::timestamptz AND created_at < $2::timestamptz"
    " GROUP BY ROLLUP (COALESCE(query_type, 'other')) ORDER BY is_total, 1";

struct month {
    char name[32];          /* "2026-05" */
    char from[64], to[64];  /* its first instant and the next month's (RFC 3339) */
    char first_day[32];     /* "2026-05-01" */
    bool current;
};

/* period=YYYY-MM (default: the UTC month containing now, the request's
 * start, as the live quota counter add_quota reads). */
static bool
parse_month(const char *period, int64_t now, struct month *m)
{
    char now_key[8];
    long year, mon;
    char y[5], mm[3];

    aigw_month_key(now, now_key);
    if (period == NULL) {
        snprintf(y, sizeof(y), "%.4s", now_key);
        snprintf(mm, sizeof(mm), "%.2s", now_key + 4);
    } else {
        /* digits only: the number parser would take a sign or a space */
        if (strlen(period) != 7 || period[4] != '-' || strspn(period, "0123456789") != 4 ||
            strspn(period + 5, "0123456789") != 2)
            return false;
        snprintf(y, sizeof(y), "%.4s", period);
        snprintf(mm, sizeof(mm), "%.2s", period + 5);
    }
    if (!aigw_parse_long(y, 2000, 9999, &year) || !aigw_parse_long(mm, 1, 12, &mon) || strlen(mm) != 2)
        return false;
    snprintf(m->name, sizeof(m->name), "%04ld-%02ld", year, mon);
    snprintf(m->first_day, sizeof(m->first_day), "%04ld-%02ld-01", year, mon);
    snprintf(m->from, sizeof(m->from), "%04ld-%02ld-01T00:00:00Z", year, mon);
    snprintf(m->to, sizeof(m->to), "%04ld-%02ld-01T00:00:00Z", mon == 12 ? year + 1 : year, mon == 12 ? 1 : mon + 1);
    m->current = strncmp(now_key, y, 4) == 0 && strcmp(now_key + 4, mm) == 0;
    return true;
}

static json_t *
counters_json(PGresult *r, int i)
{
    json_t *o = json_object();

    for (size_t k = 0; k < N_COUNTERS; k++)
        json_object_set_new(o, COUNTERS[k],
                            json_integer(r != NULL ? strtoll(PQgetvalue(r, i, 2 + (int)k), NULL, 10) : 0));
    return o;
}

/* The month's totals, then by_query_type. */
static json_t *
usage_json(PGresult *r)
{
    json_t *body = NULL, *types = json_array();

    for (int i = 0; i < PQntuples(r); i++) {
        json_t *row = counters_json(r, i);

        if (PQgetvalue(r, i, 1)[0] == '1') {
            json_decref(body);
            body = row;
        } else {
            json_object_set_new(row, "query_type", json_string(PQgetvalue(r, i, 0)));
            json_array_append_new(types, row);
        }
    }
    if (body == NULL)
        body = counters_json(NULL, 0);
    json_object_set_new(body, "by_query_type", types);
    return body;
}

/* For the current month: the live quota counter and the tenants column the
 * usage writer keeps, which both count billed queries like the rows do. */
static void
add_quota(struct aigw_req *req, json_t *body, PGresult *t)
{
    struct aigw_tenant *tenant = NULL;
    json_t *quota = json_pack("{s:I}", "ai_queries_used", (json_int_t)strtoll(PQgetvalue(t, 0, 3), NULL, 10));
    long used;

    if (aigw_tenant_get(req->srv->tenants, req->srv->pg, PQgetvalue(t, 0, 0), &tenant) == 0) {
        json_object_set_new(quota, "monthly_limit", json_integer(tenant->monthly_limit));
        if (aigw_quota_used(req->srv, tenant, req->start_wall_us / 1000000, &used) == 0)
            json_object_set_new(quota, "counter", json_integer(used));
        aigw_tenant_put(tenant);
    }
    json_object_set_new(body, "quota", quota);
}

enum aigw_rc
aigw_api_tenant_usage(struct aigw_req *req)
{
    const char *ref = req->params[0], *period;
    struct month m;
    const char *p_tenant[1] = {m.first_day}, *p_usage[2] = {m.from, m.to};
    PGconn *conn;
    PGresult *t = NULL, *u = NULL;
    json_t *body;
    enum aigw_rc rc;

    if (!aigw_admin_is_tenant_ref(ref))
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    if (!aigw_req_arg_once(req, "period", &period))
        return aigw_req_fail(req, 400, "invalid_request", "period: given more than once");
    if (!parse_month(period, req->start_wall_us / 1000000, &m))
        return aigw_req_fail(req, 400, "invalid_request", "period: must be a month, YYYY-MM");
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    if (conn != NULL)
        t = aigw_admin_own(req, aigw_pg_exec_tenant(conn, ref, TENANT_SQL, 1, p_tenant));
    if (t != NULL && PQntuples(t) == 1)
        u = aigw_admin_own(req, aigw_pg_exec_tenant(conn, PQgetvalue(t, 0, 0), USAGE_SQL, 2, p_usage));
    if (t == NULL || (PQntuples(t) == 1 && u == NULL)) {
        rc = aigw_admin_db_fail(req, conn);
        aigw_pg_release(req->srv->pg, conn);
        return rc;
    }
    aigw_pg_release(req->srv->pg, conn);
    if (PQntuples(t) == 0)
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    body = usage_json(u);
    json_object_set_new(body, "tenant_id", json_string(PQgetvalue(t, 0, 0)));
    json_object_set_new(body, "tenant", json_string(PQgetvalue(t, 0, 1)));
    json_object_set_new(body, "tier", json_string(PQgetvalue(t, 0, 2)));
    json_object_set_new(body, "period", json_string(m.name));
    json_object_set_new(body, "from", json_string(m.from));
    json_object_set_new(body, "to", json_string(m.to));
    if (m.current)
        add_quota(req, body, t);
    return aigw_req_json(req, 200, body);
}
