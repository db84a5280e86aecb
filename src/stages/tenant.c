/* tenant.c - attach the caller's tenant context; refuse unknown and inactive
 * tenants, and API keys of plans without api_access */
#include "aigw/stages.h"
#include "aigw/tenant.h"

enum aigw_rc
aigw_require_api_access(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    const int feat = __builtin_ctz(AIGW_FEAT_API_ACCESS); /* index into the per-feature arrays */

    if (t->features & AIGW_FEAT_API_ACCESS)
        return AIGW_OK;
    return aigw_req_fail_extra(req, 403, "feature_not_in_plan",
                               json_pack("{s:s?, s:s}", "required_tier", aigw_tenant_required_tier(t, feat), "feature",
                                         aigw_feature_names[feat]),
                               "API access is not in the %s plan", t->tier);
}

enum aigw_rc
aigw_stage_tenant(struct aigw_req *req)
{
    struct aigw_tenant *t = NULL;
    int rc;

    /* platform-operator tokens never act for a tenant, whatever they claim */
    if (req->claims.platform_key)
        return aigw_req_fail(req, 403, "forbidden", "platform tokens cannot use tenant routes");
    rc = aigw_tenant_get(req->srv->tenants, req->srv->pg, req->claims.tenant, &t);
    if (rc < 0) {
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "tenant data is unavailable, retry shortly");
    }
    if (rc > 0)
        return aigw_req_fail(req, 403, "forbidden", "unknown tenant");
    req->tenant = t; /* put when the request completes */
    if (!aigw_tenant_active(t))
        return aigw_req_fail(req, 403, "tenant_inactive", "the tenant is %s",
                             t->ai_enabled ? t->status : "not enabled for AI");
    if (req->api_key != NULL)
        return aigw_require_api_access(req);
    return AIGW_OK;
}
