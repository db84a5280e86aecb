/* audit.h - the audit trail: one row per administrative write, inserted in
 * the same transaction as the change it records */
#ifndef AIGW_AUDIT_H
#define AIGW_AUDIT_H

#include <libpq-fe.h>

struct aigw_req;

struct aigw_audit_entry {
    const char *tenant_id; /* uuid of the tenant the row belongs to (RLS) */
    const char *action;    /* dotted verb: "tenant.create", "api_key.revoke", "cache.invalidate" */
    const char *target;    /* what was changed (an id), or NULL */
    const char *details;   /* JSON object text: the diff {"field": {"from": .., "to": ..}} or the
                            * created values; NULL means {} */
};

/* Insert the audit row for req's caller (actor = the token's sub,
 * "platform:<sub>" for a platform operator's token, or "api_key:<id>"; role; client IP; User-Agent; request id) on conn. conn
 * must be inside the transaction of the change, begun with
 * aigw_pg_begin_tenant(conn, e->tenant_id), so the row and the change
 * commit or vanish together. Returns 0, or -1 (logged); on -1 the caller
 * rolls back and fails the request. */
int aigw_audit_insert(PGconn *conn, struct aigw_req *req, const struct aigw_audit_entry *e);

#endif
