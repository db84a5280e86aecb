/* authenticate.c - verify the caller's bearer JWT and attach its claims */
#include <string.h>

#include "aigw/log.h"
#include "aigw/snapshot.h"
#include "aigw/stages.h"
#include "aigw/util.h"

enum aigw_rc
aigw_stage_authenticate(struct aigw_req *req)
{
    const char *hdr = aigw_req_header(req, "Authorization");
    const char *why = NULL;
    const char *tok;
    unsigned char hash[32];
    size_t len;
    int64_t now;

    if (hdr == NULL || *hdr == '\0')
        return aigw_req_fail(req, 401, "unauthenticated", "missing credentials");
    if (!aigw_has_prefix_ci(hdr, "Bearer "))
        return aigw_req_fail(req, 401, "unauthenticated", "use the Bearer authorization scheme");
    tok = hdr + 7;
    while (*tok == ' ')
        tok++;
    len = strlen(tok);
    if (len > AIGW_JWT_MAX_LEN)
        return aigw_req_fail(req, 401, "unauthenticated", "invalid token: malformed token");
    aigw_sha256(tok, len, hash);
    now = aigw_wall_s();
    /* keys come from the request's snapshot: a reload swaps them whole */
    if (req->srv->tokens != NULL &&
        aigw_jwt_cache_get(req->srv->tokens, hash, now, req->snap->generation, &req->claims)) {
        req->authenticated = true;
        return AIGW_OK;
    }
    if (aigw_jwt_verify(&req->snap->cfg, tok, len, now, &req->claims, &why) != 0) {
        aigw_log_fields(LOG_NOTICE, "authentication failed", "REQUEST_ID", req->request_id, "REASON", why,
                        NULL);
        return aigw_req_fail(req, 401, "unauthenticated", "invalid token: %s", why);
    }
    if (req->srv->tokens != NULL)
        aigw_jwt_cache_put(req->srv->tokens, hash, now, req->snap->generation, &req->claims);
    req->authenticated = true;
    return AIGW_OK;
}
