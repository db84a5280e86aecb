/* api_keys.c - POST/GET/DELETE /api/v1/api-keys: a tenant admin creates,
 * lists and revokes the tenant's API keys. Every write and its audit row
 * commit together; the key itself is shown once and only its SHA-256 kept. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/admin.h"
#include "aigw/api.h"
#include "aigw/apikey.h"
#include "aigw/audit.h"
#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/query.h"
#include "aigw/redis.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

#define NAME_MAX_CHARS 200
#define RPM_MAX 100000
#define LIST_DEFAULT 50
#define LIST_MAX 100

/* user_id: the creator when the JWT's sub is one of the tenant's users. */
static const char INSERT_SQL[] =
    "INSERT INTO api_keys (tenant_id, user_id, name, prefix, secret_sha256, scopes, requests_per_minute, expires_at)"
    " VALUES ($1::uuid, (SELECT u.id FROM users u WHERE u.id = NULLIF($2, '')::uuid), $3, $4, decode($5, 'hex'),"
    " string_to_array($6, ','), NULLIF($7, '0')::int, to_timestamp(NULLIF($8, '0')::bigint))"
    " RETURNING id, floor(extract(epoch FROM created_at))::bigint";

/* Columns read by key_json, in its order. Times as whole seconds, floored:
 * the second they fall in, as the audit trail prints times (a cast alone
 * rounds, and 10:00:00.7 read as 10:00:01). */
#define KEY_COLUMNS                                                                                              \
    "id, name, prefix, array_to_string(scopes, ','), COALESCE(requests_per_minute, 0),"                        \
    " COALESCE(floor(extract(epoch FROM expires_at))::bigint, 0),"                                             \
    " COALESCE(floor(extract(epoch FROM revoked_at))::bigint, 0),"                                             \
    " COALESCE(floor(extract(epoch FROM last_used_at))::bigint, 0), floor(extract(epoch FROM created_at))::bigint"

static const char LIST_SQL[] =
    "SELECT " KEY_COLUMNS " FROM api_keys"
    " WHERE tenant_id = aigw_current_tenant()"
    "   AND ($1 = '' OR (created_at, id) < (SELECT b.created_at, b.id FROM api_keys b"
    "                                       WHERE b.id = NULLIF($1, '')::uuid))"
    " ORDER BY created_at DESC, id DESC LIMIT $2::int";

static const char REVOKE_SQL[] =
    "UPDATE api_keys SET revoked_at = now() WHERE id = $1::uuid AND revoked_at IS NULL RETURNING name, prefix";
static const char EXISTS_SQL[] = "SELECT 1 FROM api_keys WHERE id = $1::uuid";

/* A validated create request. */
struct key_input {
    const char *name;
    char scopes[32];           /* comma-separated known scope names */
    long rpm;                  /* 0 = none */
    int64_t expires_at;        /* 0 = never */
};

static enum aigw_rc
require_admin(struct aigw_req *req)
{
    if (strcmp(req->claims.role, "admin") != 0)
        return aigw_req_fail(req, 403, "forbidden", "only a tenant admin may manage API keys");
    return AIGW_OK;
}

/* Redis could not take the revocation marker. (Database failures are
 * aigw_admin_db_fail's: 503 only when PostgreSQL is out of reach.) */
static enum aigw_rc
unavailable(struct aigw_req *req)
{
    aigw_req_add_header(req, "Retry-After", "1");
    return aigw_req_fail(req, 503, "service_unavailable", "key data is unavailable, retry shortly");
}

/* Roll back a transaction still open (not one a failed COMMIT ended). */
static void
rollback(PGconn *conn)
{
    if (PQtransactionStatus(conn) != PQTRANS_IDLE)
        aigw_pg_rollback(conn);
}

/* ---- validation ---- */

static enum aigw_rc
parse_name(struct aigw_req *req, struct key_input *in)
{
    json_t *v = json_object_get(req->json, "name");
    const char *s;

    if (v == NULL || json_is_null(v))
        return aigw_req_fail(req, 400, "invalid_request", "name: is required");
    if (!json_is_string(v))
        return aigw_req_fail(req, 400, "invalid_request", "name: must be a string");
    s = json_string_value(v);
    if (strlen(s) != json_string_length(v))
        return aigw_req_fail(req, 400, "invalid_request", "name: must not contain NUL");
    if (aigw_utf8_has_control(s))
        return aigw_req_fail(req, 400, "invalid_request", "name: must not contain control characters");
    if (aigw_utf8_is_blank(s))
        return aigw_req_fail(req, 400, "invalid_request", "name: must not be empty or blank");
    if (aigw_utf8_chars(s) > NAME_MAX_CHARS)
        return aigw_req_fail(req, 400, "invalid_request", "name: at most %d characters", NAME_MAX_CHARS);
    in->name = s;
    return AIGW_OK;
}

static enum aigw_rc
parse_scopes(struct aigw_req *req, struct key_input *in)
{
    json_t *v = json_object_get(req->json, "scopes"), *e;
    unsigned bits = 0;
    size_t i, off = 0;

    if (v == NULL || json_is_null(v)) {
        snprintf(in->scopes, sizeof(in->scopes), "%s", aigw_scope_names[0]);
        return AIGW_OK;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return aigw_req_fail(req, 400, "invalid_request", "scopes: must be a non-empty array");
    json_array_foreach(v, i, e) {
        unsigned bit = json_is_string(e) ? aigw_scope_bit(json_string_value(e)) : 0;

        if (bit == 0)
            return aigw_req_fail(req, 400, "invalid_request", "scopes: each must be \"query\" or \"chat\"");
        if (bits & bit)
            return aigw_req_fail(req, 400, "invalid_request", "scopes: must not repeat a scope");
        bits |= bit;
        off += (size_t)snprintf(in->scopes + off, sizeof(in->scopes) - off, "%s%s", off ? "," : "",
                                json_string_value(e));
    }
    return AIGW_OK;
}

static enum aigw_rc
parse_limits(struct aigw_req *req, struct key_input *in)
{
    json_t *rpm = json_object_get(req->json, "requests_per_minute");
    json_t *exp = json_object_get(req->json, "expires_at");

    if (rpm != NULL && !json_is_null(rpm)) {
        if (!json_is_integer(rpm) || json_integer_value(rpm) < 1 || json_integer_value(rpm) > RPM_MAX)
            return aigw_req_fail(req, 400, "invalid_request",
                                 "requests_per_minute: must be an integer from 1 to %d", RPM_MAX);
        in->rpm = (long)json_integer_value(rpm);
    }
    if (exp != NULL && !json_is_null(exp)) {
        if (!json_is_string(exp) || !aigw_parse_rfc3339(json_string_value(exp), &in->expires_at))
            return aigw_req_fail(req, 400, "invalid_request",
                                 "expires_at: must be an RFC 3339 time such as 2027-01-31T00:00:00Z");
        if (in->expires_at <= aigw_wall_s())
            return aigw_req_fail(req, 400, "invalid_request", "expires_at: must be in the future");
    }
    return AIGW_OK;
}

static enum aigw_rc
parse_input(struct aigw_req *req, struct key_input *in)
{
    memset(in, 0, sizeof(*in));
    if (parse_name(req, in) != AIGW_OK || parse_scopes(req, in) != AIGW_OK || parse_limits(req, in) != AIGW_OK)
        return AIGW_DONE;
    return AIGW_OK;
}

/* ---- JSON ---- */

static json_t *
time_or_null(int64_t t)
{
    char buf[32];

    if (t == 0)
        return json_null();
    aigw_rfc3339(t, buf);
    return json_string(buf);
}

static json_t *
scopes_json(const char *list)
{
    json_t *a = json_array();
    unsigned bits = aigw_scope_parse_list(list);

    for (int i = 0; i < AIGW_N_SCOPES; i++)
        if (bits & (1u << i))
            json_array_append_new(a, json_string(aigw_scope_names[i]));
    return a;
}

/* One key as the API shows it; never the secret or its hash. */
static json_t *
key_json(const char *id, const char *name, const char *prefix, const char *scopes, long rpm, int64_t expires,
         int64_t revoked, int64_t last_used, int64_t created)
{
    const char *status = revoked ? "revoked" : expires != 0 && expires <= aigw_wall_s() ? "expired" : "active";

    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:s}", "id", id, "name", name, "prefix", prefix,
                     "scopes", scopes_json(scopes), "requests_per_minute",
                     rpm > 0 ? json_integer(rpm) : json_null(), "expires_at", time_or_null(expires), "revoked_at",
                     time_or_null(revoked), "last_used_at", time_or_null(last_used), "created_at",
                     time_or_null(created), "status", status);
}

static json_t *
row_json(PGresult *r, int i)
{
    return key_json(PQgetvalue(r, i, 0), PQgetvalue(r, i, 1), PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                    strtol(PQgetvalue(r, i, 4), NULL, 10), strtoll(PQgetvalue(r, i, 5), NULL, 10),
                    strtoll(PQgetvalue(r, i, 6), NULL, 10), strtoll(PQgetvalue(r, i, 7), NULL, 10),
                    strtoll(PQgetvalue(r, i, 8), NULL, 10));
}

/* Audit details: what was created, never the secret. malloc'd. */
static char *
create_details(const struct key_input *in, const char *shown)
{
    json_t *d = json_pack("{s:s, s:s, s:o, s:o, s:o}", "name", in->name, "prefix", shown, "scopes",
                          scopes_json(in->scopes), "requests_per_minute",
                          in->rpm > 0 ? json_integer(in->rpm) : json_null(), "expires_at",
                          time_or_null(in->expires_at));
    char *text = json_dumps(d, JSON_COMPACT);

    json_decref(d);
    return text;
}

/* ---- create ---- */

/* INSERT + audit row in one transaction; fills id and created. 0 or -1. */
static int
store(struct aigw_req *req, PGconn *conn, const struct key_input *in, const char *shown, const char *sha_hex,
      char id[37], int64_t *created)
{
    const char *sub = req->claims.sub;
    char rpm[24], exp[24];
    const char *params[8] = {req->tenant->id, aigw_is_uuid(sub, strlen(sub)) ? sub : "", in->name, shown,
                             sha_hex,        in->scopes, rpm, exp};
    struct aigw_audit_entry audit = {req->tenant->id, "api_key.create", id, NULL};
    char *details = NULL;
    PGresult *r;
    int rc = -1;

    snprintf(rpm, sizeof(rpm), "%ld", in->rpm);
    snprintf(exp, sizeof(exp), "%lld", (long long)in->expires_at);
    if (aigw_pg_begin_tenant(conn, req->tenant->id) != 0)
        return -1;
    r = aigw_pg_exec(conn, INSERT_SQL, 8, params);
    if (r == NULL || PQntuples(r) != 1)
        goto out;
    snprintf(id, 37, "%s", PQgetvalue(r, 0, 0));
    *created = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
    details = create_details(in, shown);
    audit.details = details;
    if (aigw_audit_insert(conn, req, &audit) != 0 || aigw_pg_commit(conn) != 0)
        goto out;
    rc = 0;
out:
    if (rc != 0)
        rollback(conn);
    free(details);
    PQclear(r);
    return rc;
}

enum aigw_rc
aigw_api_keys_create(struct aigw_req *req)
{
    struct key_input in;
    char key[AIGW_APIKEY_LEN + 1], shown[AIGW_APIKEY_SHOWN_LEN + 1], sha_hex[65], id[37];
    unsigned char sha[32];
    int64_t created = 0;
    PGconn *conn;
    json_t *body;
    int rc;

    if (require_admin(req) != AIGW_OK || aigw_require_api_access(req) != AIGW_OK || parse_input(req, &in) != AIGW_OK)
        return AIGW_DONE;
    aigw_apikey_generate(key, shown);
    aigw_sha256(key, AIGW_APIKEY_LEN, sha);
    aigw_hex(sha, 32, sha_hex);
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    rc = conn != NULL ? store(req, conn, &in, shown, sha_hex, id, &created) : -1;
    if (rc != 0) {
        enum aigw_rc failed = aigw_admin_db_fail(req, conn);

        aigw_pg_release(req->srv->pg, conn);
        explicit_bzero(key, sizeof(key));
        return failed;
    }
    aigw_pg_release(req->srv->pg, conn);
    body = key_json(id, in.name, shown, in.scopes, in.rpm, in.expires_at, 0, 0, created);
    json_object_set_new(body, "key", json_string(key));
    explicit_bzero(key, sizeof(key));
    aigw_log_fields(LOG_NOTICE, "api key created", "REQUEST_ID", req->request_id, "TENANT_ID", req->tenant->id,
                    "API_KEY_ID", id, NULL);
    return aigw_req_json(req, 201, body);
}

/* ---- list ---- */

/* Whether the key id names a key of the caller's tenant (RLS): 1 yes, 0 no,
 * -1 error. */
static int
cursor_known(struct aigw_req *req, PGconn *conn, const char *id)
{
    PGresult *r = aigw_pg_exec_tenant(conn, req->tenant->id, EXISTS_SQL, 1, &id);
    int rc = r == NULL ? -1 : PQntuples(r) > 0;

    PQclear(r);
    return rc;
}

enum aigw_rc
aigw_api_keys_list(struct aigw_req *req)
{
    const char *limit_arg = aigw_req_arg(req, "limit"), *before = aigw_req_arg(req, "before");
    long limit = LIST_DEFAULT;
    char fetch[24];
    const char *params[2] = {before != NULL ? before : "", fetch};
    PGconn *conn;
    PGresult *r;
    json_t *keys, *body;
    int n, known;

    if (require_admin(req) != AIGW_OK)
        return AIGW_DONE;
    if (limit_arg != NULL && !aigw_parse_long(limit_arg, 1, LIST_MAX, &limit))
        return aigw_req_fail(req, 400, "invalid_request", "limit: must be an integer from 1 to %d", LIST_MAX);
    if (before != NULL && !aigw_is_uuid(before, strlen(before)))
        return aigw_req_fail(req, 400, "invalid_request", "before: must be the id of a key");
    snprintf(fetch, sizeof(fetch), "%ld", limit + 1); /* one more tells whether a next page exists */
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    r = conn != NULL ? aigw_pg_exec_tenant(conn, req->tenant->id, LIST_SQL, 2, params) : NULL;
    /* an empty page after a cursor: the cursor may name no key of this
     * tenant (unknown, or another tenant's: the same answer), which is no
     * position in the list, not its end */
    known = r != NULL && PQntuples(r) == 0 && before != NULL ? cursor_known(req, conn, before) : 1;
    if (r == NULL || known < 0) {
        enum aigw_rc failed = aigw_admin_db_fail(req, conn);

        PQclear(r);
        aigw_pg_release(req->srv->pg, conn);
        return failed;
    }
    aigw_pg_release(req->srv->pg, conn);
    if (known == 0) {
        PQclear(r);
        return aigw_req_fail(req, 400, "invalid_request", "before: no such key (use next_before of a page)");
    }
    n = PQntuples(r);
    keys = json_array();
    for (int i = 0; i < n && i < limit; i++)
        json_array_append_new(keys, row_json(r, i));
    body = json_pack("{s:o, s:o}", "api_keys", keys, "next_before",
                     n > limit ? json_string(PQgetvalue(r, (int)limit - 1, 0)) : json_null());
    PQclear(r);
    return aigw_req_json(req, 200, body);
}

/* ---- revoke ---- */

/* SET (set) or DEL the key's revocation marker; 0 or -1. */
static int
marker(struct aigw_req *req, const char *key_id, bool set)
{
    char key[160], ttl[16];
    const char *argv[5] = {set ? "SET" : "DEL", key, "1", "EX", ttl};
    size_t lens[5];
    redisContext *rc;
    redisReply *r;
    int argc = set ? 5 : 2, res;

    aigw_apikey_revoked_key(req->tenant->id, key_id, key, sizeof(key));
    snprintf(ttl, sizeof(ttl), "%d", AIGW_APIKEY_REVOKED_TTL_S);
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    rc = aigw_redis_acquire(req->srv->redis);
    if (rc == NULL)
        return -1;
    r = aigw_redis_cmd(rc, argc, argv, lens);
    aigw_redis_release(req->srv->redis, rc);
    res = r != NULL && r->type != REDIS_REPLY_ERROR ? 0 : -1;
    freeReplyObject(r);
    return res;
}

/* Audit row for a revocation that just happened (r: name, prefix). */
static int
audit_revoke(struct aigw_req *req, PGconn *conn, const char *id, PGresult *r)
{
    json_t *d = json_pack("{s:s, s:s}", "name", PQgetvalue(r, 0, 0), "prefix", PQgetvalue(r, 0, 1));
    char *details = json_dumps(d, JSON_COMPACT);
    struct aigw_audit_entry audit = {req->tenant->id, "api_key.revoke", id, details};
    int rc = aigw_audit_insert(conn, req, &audit);

    free(details);
    json_decref(d);
    return rc;
}

/* The revocation: UPDATE + audit row, then the Redis marker, then COMMIT, so
 * once the database says revoked every instance's next admission sees the
 * marker (a failed COMMIT takes the marker back). 0 revoked now, 2 it was
 * revoked before (nothing written), 1 no such key for this tenant, -1
 * database error, -2 Redis did not take the marker (rolled back). */
static int
revoke(struct aigw_req *req, PGconn *conn, const char *id)
{
    PGresult *r = NULL;
    bool changed;
    int rc = -1;

    if (aigw_pg_begin_tenant(conn, req->tenant->id) != 0)
        return -1;
    r = aigw_pg_exec(conn, REVOKE_SQL, 1, &id);
    if (r == NULL)
        goto out;
    changed = PQntuples(r) == 1;
    if (changed && audit_revoke(req, conn, id, r) != 0)
        goto out;
    if (!changed) {
        PQclear(r);
        r = aigw_pg_exec(conn, EXISTS_SQL, 1, &id);
        if (r == NULL)
            goto out;
        if (PQntuples(r) == 0) {
            rc = 1;
            goto out;
        }
    }
    if (marker(req, id, true) != 0) {
        rc = -2;
        goto out;
    }
    if (aigw_pg_commit(conn) != 0) {
        if (changed)
            marker(req, id, false);
        goto out;
    }
    rc = changed ? 0 : 2;
out:
    if (rc == -1 || rc == -2 || rc == 1)
        rollback(conn);
    PQclear(r);
    return rc;
}

enum aigw_rc
aigw_api_keys_revoke(struct aigw_req *req)
{
    const char *id = req->params[0];
    PGconn *conn;
    int rc;

    if (require_admin(req) != AIGW_OK)
        return AIGW_DONE;
    if (id == NULL || !aigw_is_uuid(id, strlen(id)))
        return aigw_req_fail(req, 404, "not_found", "no such API key");
    conn = aigw_pg_acquire(req->srv->pg, 2000);
    rc = conn != NULL ? revoke(req, conn, id) : -1;
    if (rc < 0) {
        enum aigw_rc failed = rc == -2 ? unavailable(req) : aigw_admin_db_fail(req, conn);

        aigw_pg_release(req->srv->pg, conn);
        return failed;
    }
    aigw_pg_release(req->srv->pg, conn);
    if (rc == 1)
        return aigw_req_fail(req, 404, "not_found", "no such API key");
    aigw_apikey_cache_invalidate(req->srv->api_keys, id); /* at once here; NOTIFY tells the others */
    if (rc == 0) /* not for a key revoked before: nothing happened */
        aigw_log_fields(LOG_NOTICE, "api key revoked", "REQUEST_ID", req->request_id, "TENANT_ID", req->tenant->id,
                        "API_KEY_ID", id, NULL);
    req->status = 204;
    req->resp_len = 0;
    return AIGW_DONE;
}
