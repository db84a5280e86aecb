/* usage.c - GET /api/ai/usage: the caller's tenant's usage since the start
 * of the UTC day, ISO week or month, read under RLS */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/pg.h"
#include "aigw/tenant.h"

/* Tokens are those of billed queries, as on the billing route: a cache
 * hit's row carries the tokens of the stored answer it repeats, which
 * generated nothing. The period ends where the next one starts, as the
 * billing route's month does: a row stamped later (by an aigw whose clock
 * is ahead of the database's) is not this period's. ROLLUP adds the
 * all-types row (query_type NULL) after the per-type rows. */
static const char USAGE_SQL[] =
    "SELECT COALESCE(query_type, 'other') AS qt, grouping(COALESCE(query_type, 'other')) AS is_total,"
    " count(*), count(*) FILTER (WHERE success), count(*) FILTER (WHERE from_cache),"
    " count(*) FILTER (WHERE billed),"
    " COALESCE(round(avg(response_ms)::numeric, 1), 0),"
    " COALESCE(percentile_cont(0.95) WITHIN GROUP (ORDER BY response_ms), 0)::int,"
    " COALESCE(sum(prompt_tokens) FILTER (WHERE billed), 0), COALESCE(sum(completion_tokens) FILTER (WHERE billed), 0),"
    " to_char(date_trunc($1, now() AT TIME ZONE 'UTC'), 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
    " FROM ai_usage_logs"
    " WHERE tenant_id = aigw_current_tenant()"
    "   AND created_at >= date_trunc($1, now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    "   AND created_at < (date_trunc($1, now() AT TIME ZONE 'UTC') + ('1 ' || $1)::interval) AT TIME ZONE 'UTC'"
    " GROUP BY ROLLUP (COALESCE(query_type, 'other'))"
    " ORDER BY is_total, qt";

static json_t *
row_json(PGresult *r, int i)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I}", "total",
                     (json_int_t)strtoll(PQgetvalue(r, i, 2), NULL, 10), "successful",
                     (json_int_t)strtoll(PQgetvalue(r, i, 3), NULL, 10), "cached",
                     (json_int_t)strtoll(PQgetvalue(r, i, 4), NULL, 10), "billed",
                     (json_int_t)strtoll(PQgetvalue(r, i, 5), NULL, 10), "avg_response_ms",
                     strtod(PQgetvalue(r, i, 6), NULL), "p95_response_ms",
                     (json_int_t)strtoll(PQgetvalue(r, i, 7), NULL, 10), "prompt_tokens",
                     (json_int_t)strtoll(PQgetvalue(r, i, 8), NULL, 10), "completion_tokens",
                     (json_int_t)strtoll(PQgetvalue(r, i, 9), NULL, 10));
}

enum aigw_rc
aigw_api_usage(struct aigw_req *req)
{
    const char *period;
    const char *params[1];
    PGconn *conn;
    PGresult *r;
    json_t *body, *types;
    int n;

    if (!aigw_req_arg_once(req, "period", &period))
        return aigw_req_fail(req, 400, "invalid_request", "period: given more than once");
    if (period == NULL)
        period = "month";
    if (strcmp(period, "day") != 0 && strcmp(period, "week") != 0 && strcmp(period, "month") != 0)
        return aigw_req_fail(req, 400, "invalid_request", "period: must be day, week or month");
    params[0] = period;
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    r = conn ? aigw_pg_exec_tenant(conn, req->tenant->id, USAGE_SQL, 1, params) : NULL;
    aigw_pg_release(req->srv->pg, conn);
    if (r == NULL) {
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "usage data is unavailable, retry shortly");
    }
    n = PQntuples(r);
    types = json_array();
    body = NULL;
    for (int i = 0; i < n; i++) {
        json_t *row = row_json(r, i);

        if (PQgetvalue(r, i, 1)[0] == '1') {
            body = row;
        } else {
            json_object_set_new(row, "query_type", json_string(PQgetvalue(r, i, 0)));
            json_array_append_new(types, row);
        }
    }
    if (body == NULL)
        body = json_pack("{s:i, s:i, s:i, s:i, s:f, s:i, s:i, s:i}", "total", 0, "successful", 0, "cached", 0,
                         "billed", 0, "avg_response_ms", 0.0, "p95_response_ms", 0, "prompt_tokens", 0,
                         "completion_tokens", 0);
    json_object_set_new(body, "tenant", json_string(req->tenant->code));
    json_object_set_new(body, "period", json_string(period));
    if (n > 0)
        json_object_set_new(body, "since", json_string(PQgetvalue(r, 0, 10)));
    json_object_set_new(body, "by_query_type", types);
    PQclear(r);
    return aigw_req_json(req, 200, body);
}
