/* audit.c - audit rows, written inside the caller's transaction */
#include "aigw/audit.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "aigw/http.h"
#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/util.h"

static const char INSERT_SQL[] =
    "INSERT INTO audit_logs (tenant_id, actor, actor_role, action, target, ip, user_agent, request_id, details) "
    "VALUES ($1::uuid, $2, NULLIF($3, ''), $4, $5, NULLIF($6, ''), $7, $8, COALESCE($9::jsonb, '{}'))";

/* The client's User-Agent as text PostgreSQL takes: at most cap - 1 bytes,
 * cut between characters, and every byte that is not part of a valid UTF-8
 * sequence (a Latin-1 header, say) replaced by '?'. PostgreSQL refuses
 * invalid UTF-8 in a text parameter, and that would fail the audit insert
 * and with it the change it records. */
static const char *
ua_text(const char *ua, char *out, size_t cap)
{
    const unsigned char *p = (const unsigned char *)ua, *end = p + strlen(ua);
    size_t o = 0;

    while (p < end) {
        size_t n = *p < 0x80 ? 1 : aigw_utf8_seq(p, (size_t)(end - p));

        if (o + (n > 0 ? n : 1) >= cap)
            break;
        if (n == 0) {
            out[o++] = '?';
            p++;
            continue;
        }
        memcpy(out + o, p, n);
        o += n;
        p += n;
    }
    out[o] = '\0';
    return out;
}

int
aigw_audit_insert(PGconn *conn, struct aigw_req *req, const struct aigw_audit_entry *e)
{
    char ip[INET6_ADDRSTRLEN];
    const char *ua = aigw_req_header(req, "User-Agent");
    const char *sub = req->claims.sub[0] != '\0' ? req->claims.sub : "unknown";
    char ua_cut[256], actor[sizeof(req->claims.sub) + 16];
    const char *params[9];
    PGresult *r;

    /* the platform operator's staff share no user namespace with a clinic's */
    snprintf(actor, sizeof(actor), "%s%s", req->claims.platform_key ? "platform:" : "", sub);
    aigw_req_client_ip(req, ip, sizeof(ip));
    if (ua != NULL)
        ua = ua_text(ua, ua_cut, sizeof(ua_cut));
    params[0] = e->tenant_id;
    params[1] = actor;
    params[2] = req->claims.role;
    params[3] = e->action;
    params[4] = e->target;
    params[5] = ip;
    params[6] = ua;
    params[7] = req->request_id;
    params[8] = e->details;
    r = aigw_pg_exec(conn, INSERT_SQL, 9, params);
    if (r == NULL) {
        aigw_log_fields(LOG_ERR, "audit row not written", "REQUEST_ID", req->request_id, "ACTION", e->action,
                        NULL);
        return -1;
    }
    PQclear(r);
    return 0;
}
