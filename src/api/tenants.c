/* tenants.c - platform administration of tenants: onboard, list, read,
 * change, change plan. Every write runs in one platform transaction with its
 * audit row, then drops the tenant from this instance's cache at once (the
 * other instances hear the tenants trigger's NOTIFY). */
#include <jansson.h>
#include <string.h>

#include "aigw/admin.h"
#include "aigw/api.h"
#include "aigw/audit.h"
#include "aigw/pg.h"
#include "aigw/query.h"
#include "aigw/quota.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

/* A tenant as the API shows it, with the limits in force (plan + overrides),
 * over "t" (tenants) joined with "p" (its plan). */
#define TENANT_JSON                                                                                          \
    "json_build_object('id', t.id, 'code', t.code, 'name', t.name, 'tier', t.tier, 'status', t.status,"      \
    " 'ai_enabled', t.ai_enabled, 'overrides', t.overrides, 'cache_ttl_s', t.cache_ttl_s,"                   \
    " 'limits', json_build_object("                                                                          \
    "   'monthly_query_limit', COALESCE((t.overrides->>'monthly_query_limit')::int, p.monthly_query_limit)," \
    "   'requests_per_minute', COALESCE((t.overrides->>'requests_per_minute')::int, p.requests_per_minute)," \
    "   'max_tokens', COALESCE((t.overrides->>'max_tokens')::int, p.max_tokens), 'features', p.features),"   \
    " 'created_at', " AIGW_ADMIN_SQL_TS("t.created_at") ", 'updated_at', " AIGW_ADMIN_SQL_TS("t.updated_at") ")::text"

/* RLS shows only the tenant set, and the WHERE says so again: a role that
 * bypassed RLS would otherwise get whichever tenant came first. */
static const char GET_SQL[] =
    "SELECT " TENANT_JSON " FROM tenants t JOIN plans p ON p.tier = t.tier WHERE t.id = aigw_current_tenant()";

static const char LIST_SQL[] = "SELECT " TENANT_JSON ", t.code FROM tenants t JOIN plans p ON p.tier = t.tier"
                               " WHERE t.code > COALESCE($1, '') ORDER BY t.code LIMIT $2::int + 1";

static const char INSERT_SQL[] =
    "WITH t AS (INSERT INTO tenants (id, code, name, tier, status, ai_enabled, overrides, cache_ttl_s)"
    " VALUES ($1::uuid, $2, $3, $4, COALESCE($5, 'active'), COALESCE($6::boolean, true),"
    " COALESCE($7::jsonb, '{}'), COALESCE($8::int, 3600))"
    " ON CONFLICT (code) DO NOTHING RETURNING *)"
    " SELECT " TENANT_JSON " FROM t JOIN plans p ON p.tier = t.tier";

/* No join: a locking read that waited for a concurrent plan change
 * re-checks its join against the committed row with the plan row it had
 * read before, and the old plan no longer matches the new tier (the row
 * vanished, a 404). The subquery is evaluated on the row as locked. */
static const char LOCK_SQL[] =
    "SELECT t.name, t.status, t.ai_enabled, t.overrides::text, t.cache_ttl_s, t.tier,"
    " (SELECT p.rank FROM plans p WHERE p.tier = t.tier)"
    " FROM tenants t WHERE t.id = $1::uuid FOR UPDATE";

static const char UPDATE_SQL[] =
    "WITH t AS (UPDATE tenants SET name = COALESCE($2, name), status = COALESCE($3, status),"
    " ai_enabled = COALESCE($4::boolean, ai_enabled), overrides = COALESCE($5::jsonb, overrides),"
    " cache_ttl_s = COALESCE($6::int, cache_ttl_s), tier = COALESCE($7, tier), updated_at = now()"
    " WHERE id = $1::uuid RETURNING *)"
    " SELECT " TENANT_JSON " FROM t JOIN plans p ON p.tier = t.tier";

static const char *const STATUSES[] = {"active", "trial", "suspended", "cancelled", NULL};

/* per-tenant override keys and their bounds (the tenant cache reads them as int) */
static const struct {
    const char *key;
    long min, max;
} OVERRIDES[] = {
    {"monthly_query_limit", -1, 2147483647},
    {"requests_per_minute", 1, 1000000},
    {"max_tokens", 1, 1000000},
};
#define N_OVERRIDES (sizeof(OVERRIDES) / sizeof(OVERRIDES[0]))

/* The body of a create / update; NULL / -1 = absent. */
struct fields {
    const char *code, *name, *tier, *status;
    int ai_enabled;
    json_t *overrides;       /* borrowed from req->json */
    long cache_ttl_s;
};

/* ---- validation: each check answers 400 naming the field and returns false ---- */

static bool
get_string(struct aigw_req *req, const char *field, const char **out)
{
    json_t *v = json_object_get(req->json, field);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v)) {
        aigw_req_fail(req, 400, "invalid_request", "%s: must be a string", field);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

static bool
check_name(struct aigw_req *req, const char *name)
{
    size_t n = aigw_utf8_chars(name);
    bool blank = aigw_utf8_is_blank(name);

    if (aigw_utf8_has_control(name)) {
        aigw_req_fail(req, 400, "invalid_request", "name: must not contain control characters");
        return false;
    }
    if (n < 1 || n > 200 || blank) {
        aigw_req_fail(req, 400, "invalid_request", "name: must be 1..200 characters, not blank");
        return false;
    }
    return true;
}

static bool
check_status(struct aigw_req *req, const char *status)
{
    for (size_t i = 0; STATUSES[i] != NULL; i++)
        if (strcmp(status, STATUSES[i]) == 0)
            return true;
    aigw_req_fail(req, 400, "invalid_request", "status: must be one of active, trial, suspended, cancelled");
    return false;
}

static bool
check_tier_syntax(struct aigw_req *req, const char *tier)
{
    size_t n = strspn(tier, "abcdefghijklmnopqrstuvwxyz0123456789_");

    if (tier[n] == '\0' && n >= 2 && n <= 32)
        return true;
    aigw_req_fail(req, 400, "invalid_request", "tier: no such plan (see GET /api/v1/plans)");
    return false;
}

static bool
check_override(struct aigw_req *req, const char *key, json_t *v)
{
    for (size_t i = 0; i < N_OVERRIDES; i++) {
        if (strcmp(key, OVERRIDES[i].key) != 0)
            continue;
        if (json_is_integer(v) && json_integer_value(v) >= OVERRIDES[i].min &&
            json_integer_value(v) <= OVERRIDES[i].max)
            return true;
        aigw_req_fail(req, 400, "invalid_request", "overrides.%s: must be an integer in %ld..%ld", OVERRIDES[i].key,
                      OVERRIDES[i].min, OVERRIDES[i].max);
        return false;
    }
    aigw_req_fail(req, 400, "invalid_request",
                  "overrides: unknown key (allowed: monthly_query_limit, requests_per_minute, max_tokens)");
    return false;
}

static bool
get_overrides(struct aigw_req *req, json_t **out)
{
    json_t *v = json_object_get(req->json, "overrides"), *val;
    const char *key;

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return true;
    if (!json_is_object(v)) {
        aigw_req_fail(req, 400, "invalid_request", "overrides: must be an object");
        return false;
    }
    json_object_foreach(v, key, val) {
        if (!check_override(req, key, val))
            return false;
    }
    *out = v;
    return true;
}

static bool
get_scalars(struct aigw_req *req, struct fields *f)
{
    json_t *ai = json_object_get(req->json, "ai_enabled");
    json_t *ttl = json_object_get(req->json, "cache_ttl_s");

    f->ai_enabled = -1;
    f->cache_ttl_s = -1;
    if (ai != NULL && !json_is_null(ai)) {
        if (!json_is_boolean(ai)) {
            aigw_req_fail(req, 400, "invalid_request", "ai_enabled: must be a boolean");
            return false;
        }
        f->ai_enabled = json_is_true(ai);
    }
    if (ttl != NULL && !json_is_null(ttl)) {
        if (!json_is_integer(ttl) || json_integer_value(ttl) < 0 || json_integer_value(ttl) > 2592000) {
            aigw_req_fail(req, 400, "invalid_request", "cache_ttl_s: must be an integer in 0..2592000");
            return false;
        }
        f->cache_ttl_s = (long)json_integer_value(ttl);
    }
    return true;
}

/* Parse and check every field present in the body (presence rules are the caller's). */
static bool
parse_fields(struct aigw_req *req, struct fields *f)
{
    memset(f, 0, sizeof(*f));
    if (!get_string(req, "code", &f->code) || !get_string(req, "name", &f->name) ||
        !get_string(req, "tier", &f->tier) || !get_string(req, "status", &f->status))
        return false;
    if (f->code != NULL && !aigw_admin_is_code(f->code)) {
        aigw_req_fail(req, 400, "invalid_request", "code: must be 3..64 characters of a-z, 0-9 and _");
        return false;
    }
    if ((f->name != NULL && !check_name(req, f->name)) || (f->tier != NULL && !check_tier_syntax(req, f->tier)) ||
        (f->status != NULL && !check_status(req, f->status)))
        return false;
    return get_overrides(req, &f->overrides) && get_scalars(req, f);
}

/* The fields a body may have, per route. A field aigw does not know is
 * refused rather than ignored: a misspelled "overides" next to a valid
 * field answered 200 with the tenant unchanged, as if it had been applied. */
static const char *const CREATE_FIELDS[] = {"code", "name", "tier", "status", "ai_enabled", "overrides", "cache_ttl_s",
                                            NULL};
/* code and tier are known here so that their own messages explain the refusal */
static const char *const UPDATE_FIELDS[] = {"name", "status", "ai_enabled", "overrides", "cache_ttl_s", "code", "tier",
                                            NULL};
static const char *const UPGRADE_FIELDS[] = {"tier", NULL};

static bool
known_fields(struct aigw_req *req, const char *const *allowed, const char *list)
{
    const char *key;
    json_t *v;

    json_object_foreach(req->json, key, v) {
        size_t i = 0;

        while (allowed[i] != NULL && strcmp(key, allowed[i]) != 0)
            i++;
        if (allowed[i] == NULL) {
            size_t n = strlen(key);
            bool plain = n <= 64;

            for (size_t k = 0; k < n && plain; k++) /* echoed only when short and printable ASCII */
                plain = key[k] >= 0x20 && key[k] < 0x7f;
            aigw_req_fail(req, 400, "invalid_request", "%s: unknown field (allowed: %s)", plain ? key : "body", list);
            return false;
        }
    }
    return true;
}

static bool
require(struct aigw_req *req, const char *field, const char *value)
{
    if (value != NULL)
        return true;
    aigw_req_fail(req, 400, "invalid_request", "%s: is required", field);
    return false;
}

/* ---- database steps ---- */

/* 0 and id set, 1 no such tenant, -1 error */
static int
resolve(struct aigw_req *req, PGconn *conn, const char *ref, char id[37])
{
    PGresult *r = aigw_admin_own(req, aigw_pg_exec(conn, "SELECT aigw_tenant_id($1)::text", 1, &ref));

    if (r == NULL)
        return -1;
    if (PQgetisnull(r, 0, 0))
        return 1;
    snprintf(id, 37, "%s", PQgetvalue(r, 0, 0));
    return 0;
}

/* 0 and *rank set, 1 no such plan, -1 error */
static int
plan_rank(struct aigw_req *req, PGconn *conn, const char *tier, long *rank)
{
    PGresult *r = aigw_admin_own(req, aigw_pg_exec(conn, "SELECT rank FROM plans WHERE tier = $1", 1, &tier));

    if (r == NULL)
        return -1;
    if (PQntuples(r) == 0)
        return 1;
    *rank = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    return 0;
}

/* The audit row of the change (details: a JSON object, stolen). */
static int
audit(struct aigw_req *req, PGconn *conn, const char *id, const char *action, json_t *details)
{
    char *text = json_dumps(details, JSON_COMPACT | JSON_SORT_KEYS);
    struct aigw_audit_entry e = {id, action, id, text};
    int rc = text != NULL ? aigw_audit_insert(conn, req, &e) : -1;

    free(text);
    json_decref(details);
    return rc;
}

/* Commit, then make this instance serve the change on its very next request. */
static int
commit(struct aigw_req *req, PGconn *conn, const char *id)
{
    if (aigw_pg_commit(conn) != 0)
        return -1;
    aigw_tenant_cache_invalidate(req->srv->tenants, id);
    return 0;
}

/* limits.used / limits.remaining: the month's quota counter (it belongs to
 * the tenant, not the plan, so it carries over plan changes). Best effort:
 * left out when Redis and PostgreSQL cannot say. */
static void
add_quota(struct aigw_req *req, json_t *body, const char *ref)
{
    json_t *limits = json_object_get(body, "limits");
    struct aigw_tenant *t = NULL;
    long used;

    if (!json_is_object(limits) || aigw_tenant_get(req->srv->tenants, req->srv->pg, ref, &t) != 0)
        return;
    if (aigw_quota_used(req->srv, t, req->start_wall_us / 1000000, &used) == 0) {
        json_object_set_new(limits, "used", json_integer(used));
        json_object_set_new(limits, "remaining",
                            json_integer(t->monthly_limit < 0 ? -1 : used >= t->monthly_limit ? 0 : t->monthly_limit - used));
    }
    aigw_tenant_put(t);
}

/* ---- handlers ---- */

static json_t *
created_values(const struct fields *f)
{
    json_t *d = json_pack("{s:s, s:s, s:s, s:s}", "code", f->code, "name", f->name, "tier", f->tier, "status",
                          f->status ? f->status : "active");

    if (f->ai_enabled >= 0)
        json_object_set_new(d, "ai_enabled", json_boolean(f->ai_enabled));
    if (f->overrides != NULL)
        json_object_set(d, "overrides", f->overrides);
    if (f->cache_ttl_s >= 0)
        json_object_set_new(d, "cache_ttl_s", json_integer(f->cache_ttl_s));
    return d;
}

static char *
pool_json(struct aigw_req *req, const json_t *v)
{
    char *text = v != NULL ? json_dumps(v, JSON_COMPACT) : NULL;
    char *out = text != NULL ? aigw_pool_strdup(req->pool, text) : NULL;

    free(text);
    return out;
}

static char *
pool_long(struct aigw_req *req, long v)
{
    return v < 0 ? NULL : aigw_pool_printf(req->pool, "%ld", v);
}

enum aigw_rc
aigw_api_tenant_create(struct aigw_req *req)
{
    struct fields f;
    char id[37];
    const char *params[8];
    PGconn *conn;
    PGresult *r;
    json_t *body;
    enum aigw_rc rc;
    long rank;
    int found;

    if (!known_fields(req, CREATE_FIELDS, "code, name, tier, status, ai_enabled, overrides, cache_ttl_s") ||
        !parse_fields(req, &f) || !require(req, "code", f.code) || !require(req, "name", f.name) ||
        !require(req, "tier", f.tier))
        return AIGW_DONE;
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    if (conn == NULL)
        return aigw_admin_db_fail(req, NULL);
    found = plan_rank(req, conn, f.tier, &rank);
    if (found != 0) {
        rc = found > 0 ? aigw_req_fail(req, 400, "invalid_request", "tier: no such plan (see GET /api/v1/plans)")
                       : aigw_admin_db_fail(req, conn);
        goto out;
    }
    aigw_uuid4(id);
    if (aigw_admin_begin_platform(conn, id) != 0)
        goto fail;
    params[0] = id;
    params[1] = f.code;
    params[2] = f.name;
    params[3] = f.tier;
    params[4] = f.status;
    params[5] = f.ai_enabled < 0 ? NULL : f.ai_enabled ? "true" : "false";
    params[6] = pool_json(req, f.overrides);
    params[7] = pool_long(req, f.cache_ttl_s);
    r = aigw_admin_own(req, aigw_pg_exec(conn, INSERT_SQL, 8, params));
    if (r == NULL)
        goto fail;
    if (PQntuples(r) == 0) {
        aigw_pg_rollback(conn);
        rc = aigw_req_fail(req, 409, "conflict", "code: a tenant with this code already exists");
        goto out;
    }
    if (audit(req, conn, id, "tenant.create", created_values(&f)) != 0 || commit(req, conn, id) != 0)
        goto fail;
    aigw_pg_release(req->srv->pg, conn);
    body = aigw_admin_json_cell(r, 0, 0);
    add_quota(req, body, id);
    aigw_req_add_header(req, "Location", aigw_pool_printf(req->pool, "/api/v1/tenants/%s", id));
    return aigw_req_json(req, 201, body);
fail:
    rc = aigw_admin_db_fail(req, conn);
out:
    aigw_pg_release(req->srv->pg, conn);
    return rc;
}

enum aigw_rc
aigw_api_tenant_list(struct aigw_req *req)
{
    const char *after = aigw_req_arg(req, "after");
    const char *params[2];
    long limit;
    PGconn *conn;
    PGresult *r = NULL;
    enum aigw_rc rc;

    if (!aigw_admin_limit(req, &limit))
        return AIGW_DONE;
    if (after != NULL && !aigw_admin_is_code(after))
        return aigw_req_fail(req, 400, "invalid_request", "after: must be a tenant code (next_after of a page)");
    params[0] = after;
    params[1] = aigw_pool_printf(req->pool, "%ld", limit);
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    if (conn != NULL && aigw_admin_begin_platform(conn, NULL) == 0) {
        r = aigw_admin_own(req, aigw_pg_exec(conn, LIST_SQL, 2, params));
        if (r == NULL || aigw_pg_commit(conn) != 0)
            r = NULL;
    }
    rc = r != NULL ? aigw_admin_page(req, r, limit, "tenants", "next_after") : aigw_admin_db_fail(req, conn);
    aigw_pg_release(req->srv->pg, conn);
    return rc;
}

/* Read one tenant in its own RLS scope: no platform right needed. */
enum aigw_rc
aigw_api_tenant_get(struct aigw_req *req)
{
    const char *ref = req->params[0];
    PGconn *conn;
    PGresult *r;
    json_t *body;

    if (!aigw_admin_is_tenant_ref(ref))
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    r = conn != NULL ? aigw_admin_own(req, aigw_pg_exec_tenant(conn, ref, GET_SQL, 0, NULL)) : NULL;
    if (r == NULL) {
        enum aigw_rc rc = aigw_admin_db_fail(req, conn);

        aigw_pg_release(req->srv->pg, conn);
        return rc;
    }
    aigw_pg_release(req->srv->pg, conn);
    if (PQntuples(r) == 0)
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    body = aigw_admin_json_cell(r, 0, 0);
    add_quota(req, body, ref);
    return aigw_req_json(req, 200, body);
}

/* One field of the diff: {"from": old, "to": new} (both stolen) unless equal. */
static void
diff_field(json_t *diff, const char *field, json_t *from, json_t *to)
{
    if (json_equal(from, to)) {
        json_decref(from);
        json_decref(to);
        return;
    }
    json_object_set_new(diff, field, json_pack("{s:o, s:o}", "from", from, "to", to));
}

/* What the change does to the locked row (LOCK_SQL's columns). */
static json_t *
change_diff(PGresult *old, const struct fields *f)
{
    json_t *diff = json_object();

    if (f->name != NULL)
        diff_field(diff, "name", json_string(PQgetvalue(old, 0, 0)), json_string(f->name));
    if (f->status != NULL)
        diff_field(diff, "status", json_string(PQgetvalue(old, 0, 1)), json_string(f->status));
    if (f->ai_enabled >= 0)
        diff_field(diff, "ai_enabled", json_boolean(PQgetvalue(old, 0, 2)[0] == 't'), json_boolean(f->ai_enabled));
    if (f->overrides != NULL)
        diff_field(diff, "overrides", aigw_admin_json_cell(old, 0, 3), json_incref(f->overrides));
    if (f->cache_ttl_s >= 0)
        diff_field(diff, "cache_ttl_s", json_integer(strtol(PQgetvalue(old, 0, 4), NULL, 10)),
                   json_integer(f->cache_ttl_s));
    if (f->tier != NULL)
        diff_field(diff, "tier", json_string(PQgetvalue(old, 0, 5)), json_string(f->tier));
    return diff;
}

/* The audited action: a plan change goes up or down the plan ranks;
 * suspending and cancelling are their own actions; the rest are updates. */
static const char *
change_action(const json_t *diff, const struct fields *f, long old_rank, long new_rank)
{
    if (json_object_get(diff, "tier") != NULL)
        return new_rank >= old_rank ? "tenant.upgrade" : "tenant.downgrade";
    if (json_object_get(diff, "status") != NULL && strcmp(f->status, "suspended") == 0)
        return "tenant.suspend";
    if (json_object_get(diff, "status") != NULL && strcmp(f->status, "cancelled") == 0)
        return "tenant.cancel";
    return "tenant.update";
}

/* Resolve, lock, diff, update, audit and commit in one platform transaction.
 * *r gets the updated tenant's row. Returns AIGW_OK when committed, AIGW_AGAIN
 * when nothing changes (nothing written, no audit row), else AIGW_DONE with
 * the error answered. */
static enum aigw_rc
change_tx(struct aigw_req *req, PGconn *conn, const struct fields *f, PGresult **r)
{
    char id[37];
    const char *params[7] = {id};
    PGresult *old;
    json_t *diff;
    long new_rank = 0;
    int found = resolve(req, conn, req->params[0], id);

    if (found != 0)
        return found > 0 ? aigw_req_fail(req, 404, "not_found", "no such tenant") : aigw_admin_db_fail(req, conn);
    if (aigw_admin_begin_platform(conn, id) != 0)
        return aigw_admin_db_fail(req, conn);
    old = aigw_admin_own(req, aigw_pg_exec(conn, LOCK_SQL, 1, params));
    if (old == NULL)
        return aigw_admin_db_fail(req, conn);
    if (PQntuples(old) == 0) /* deleted since it was resolved */
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    found = f->tier != NULL ? plan_rank(req, conn, f->tier, &new_rank) : 0;
    if (found != 0)
        return found > 0 ? aigw_req_fail(req, 400, "invalid_request", "tier: no such plan (see GET /api/v1/plans)")
                         : aigw_admin_db_fail(req, conn);
    diff = change_diff(old, f);
    if (json_object_size(diff) == 0) {
        json_decref(diff);
        return AIGW_AGAIN;
    }
    params[1] = f->name;
    params[2] = f->status;
    params[3] = f->ai_enabled < 0 ? NULL : f->ai_enabled ? "true" : "false";
    params[4] = pool_json(req, f->overrides);
    params[5] = pool_long(req, f->cache_ttl_s);
    params[6] = f->tier;
    *r = aigw_admin_own(req, aigw_pg_exec(conn, UPDATE_SQL, 7, params));
    if (*r == NULL || PQntuples(*r) != 1) {
        json_decref(diff);
        return aigw_admin_db_fail(req, conn);
    }
    if (audit(req, conn, id, change_action(diff, f, strtol(PQgetvalue(old, 0, 6), NULL, 10), new_rank), diff) != 0 ||
        commit(req, conn, id) != 0)
        return aigw_admin_db_fail(req, conn);
    return AIGW_OK;
}

/* The write path of PUT and upgrade. A request that changes nothing writes
 * nothing and answers the tenant as it is. */
static enum aigw_rc
change_tenant(struct aigw_req *req, const struct fields *f)
{
    PGconn *conn = aigw_pg_acquire(req->srv->pg, 2000);
    PGresult *r = NULL;
    enum aigw_rc rc;
    json_t *body;

    if (conn == NULL)
        return aigw_admin_db_fail(req, NULL);
    rc = change_tx(req, conn, f, &r);
    aigw_pg_release(req->srv->pg, conn); /* rolls back whatever did not commit */
    if (rc == AIGW_AGAIN)
        return aigw_api_tenant_get(req);
    if (rc != AIGW_OK)
        return rc;
    body = aigw_admin_json_cell(r, 0, 0);
    add_quota(req, body, req->params[0]);
    return aigw_req_json(req, 200, body);
}

enum aigw_rc
aigw_api_tenant_update(struct aigw_req *req)
{
    struct fields f;

    if (!aigw_admin_is_tenant_ref(req->params[0]))
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    if (!known_fields(req, UPDATE_FIELDS, "name, status, ai_enabled, overrides, cache_ttl_s") ||
        !parse_fields(req, &f))
        return AIGW_DONE;
    if (f.code != NULL)
        return aigw_req_fail(req, 400, "invalid_request", "code: cannot be changed");
    if (f.tier != NULL)
        return aigw_req_fail(req, 400, "invalid_request", "tier: change it with POST /api/v1/tenants/{id}/upgrade");
    if (f.name == NULL && f.status == NULL && f.ai_enabled < 0 && f.overrides == NULL && f.cache_ttl_s < 0)
        return aigw_req_fail(req, 400, "invalid_request",
                             "body: give at least one of name, status, ai_enabled, overrides, cache_ttl_s");
    return change_tenant(req, &f);
}

/* POST /api/v1/tenants/{id}/upgrade {"tier"}: any plan, up or down the ranks;
 * the month's quota count stays (it is the tenant's, not the plan's). */
enum aigw_rc
aigw_api_tenant_upgrade(struct aigw_req *req)
{
    struct fields f = {.ai_enabled = -1, .cache_ttl_s = -1};

    if (!aigw_admin_is_tenant_ref(req->params[0]))
        return aigw_req_fail(req, 404, "not_found", "no such tenant");
    if (!known_fields(req, UPGRADE_FIELDS, "tier") || !get_string(req, "tier", &f.tier) ||
        !require(req, "tier", f.tier) || !check_tier_syntax(req, f.tier))
        return AIGW_DONE;
    return change_tenant(req, &f);
}
