/* limits.c - GET /api/ai/limits: the caller's plan and where it stands this month */
#include <jansson.h>

#include "aigw/api.h"
#include "aigw/apikey.h"
#include "aigw/quota.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

enum aigw_rc
aigw_api_limits(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    json_t *features = json_object(), *body;
    char resets[32];
    int64_t at = req->start_wall_us / 1000000;
    long used = 0, remaining;
    int rpm = t->requests_per_minute;

    /* used and period_resets_at of one month: the one the request started in */
    if (aigw_quota_used(req->srv, t, at, &used) != 0) {
        json_decref(features);
        aigw_req_add_header(req, "Retry-After", "1");
        return aigw_req_fail(req, 503, "service_unavailable", "usage data is unavailable, retry shortly");
    }
    for (int i = 0; i < AIGW_N_FEATURES; i++)
        json_object_set_new(features, aigw_feature_names[i], json_boolean(t->features & (1u << i)));
    remaining = t->monthly_limit < 0 ? -1 : t->monthly_limit - used;
    if (remaining < -1 || (t->monthly_limit >= 0 && remaining < 0))
        remaining = 0;
    /* an API key with a tighter limit of its own meets that one (the
     * RateLimit-Policy of its requests says so): the tenant's told a
     * 3 rpm key it had 100 */
    if (req->api_key != NULL && req->api_key->requests_per_minute > 0 && req->api_key->requests_per_minute < rpm)
        rpm = req->api_key->requests_per_minute;
    aigw_rfc3339(aigw_next_month_start(at), resets);
    body = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:i, s:i, s:o, s:s}", "tenant", t->code, "tenant_id", t->id,
                     "tier", t->tier, "monthly_limit", (json_int_t)t->monthly_limit, "used", (json_int_t)used,
                     "remaining", (json_int_t)remaining, "requests_per_minute", rpm,
                     "max_tokens", t->max_tokens, "features", features, "period_resets_at", resets);
    return aigw_req_json(req, 200, body);
}
