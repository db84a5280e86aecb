/* role.c - who may use the administration routes: platform operators and tenant admins */
#include <string.h>

#include "aigw/stages.h"

enum aigw_rc
aigw_stage_platform_admin(struct aigw_req *req)
{
    /* both: the key is configured as a platform key, and the token says so */
    if (!req->claims.platform_key || strcmp(req->claims.role, "platform_admin") != 0)
        return aigw_req_fail(req, 403, "forbidden", "only a platform administrator may use this route");
    return AIGW_OK;
}

enum aigw_rc
aigw_stage_tenant_admin(struct aigw_req *req)
{
    if (strcmp(req->claims.role, "admin") != 0)
        return aigw_req_fail(req, 403, "forbidden", "only a tenant admin may use this route");
    return AIGW_OK;
}
