/* audit.c - audit rows, written inside the caller's transaction */
#include "aigw/audit.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

#include "aigw/http.h"
#include "aigw/log.h"
#include "aigw/pg.h"

static const char INSERT_SQL[] =
    "INSERT INTO audit_logs (tenant_id, actor, actor_role, action, target, ip, user_agent, request_id, details) "
    "VALUES ($1::uuid, $2, NULLIF($3, ''), $4, $5, NULLIF($6, ''), $7, $8, COALESCE($9::jsonb, '{}'))";

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
    if (ua != NULL) { /* bounded, and cut at a UTF-8 boundary so the text stays valid */
        size_t n = strlen(ua);

        if (n >= sizeof(ua_cut))
            n = sizeof(ua_cut) - 1;
        while (n > 0 && n < strlen(ua) && ((unsigned char)ua[n] & 0xC0) == 0x80)
            n--;
        memcpy(ua_cut, ua, n);
        ua_cut[n] = '\0';
        ua = ua_cut;
    }
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
