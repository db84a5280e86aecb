/* ops.c - /healthz and /readyz for load balancers and systemd */
#include <jansson.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/health.h"
#include "aigw/pg.h"
#include "aigw/redis.h"
#include "aigw/usage.h"

enum aigw_rc
aigw_api_healthz(struct aigw_req *req)
{
    return aigw_req_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

enum aigw_rc
aigw_api_readyz(struct aigw_req *req)
{
    struct aigw_server *srv = req->srv;
    bool pg = aigw_pg_ping(srv->pg, 1000), redis = aigw_redis_ping(srv->redis, 0);
    bool draining = atomic_load(&srv->stopping);
    size_t up = aigw_health_up_count(srv->health);
    bool spool = aigw_usage_accepting(srv->usage); /* else AI requests get 503 (usage.c) */
    bool ready = pg && redis && up > 0 && spool && !draining;
    json_t *checks = json_pack("{s:s, s:s, s:{s:s, s:I, s:I}, s:s, s:s}", "postgresql", pg ? "ok" : "down", "redis",
                               redis ? "ok" : "down", "upstream", "status", up > 0 ? "ok" : "down", "healthy",
                               (json_int_t)up, "configured", (json_int_t)aigw_health_count(srv->health),
                               "usage_spool", spool ? "ok" : "down", "process", draining ? "draining" : "ok");

    return aigw_req_json(req, ready ? 200 : 503,
                         json_pack("{s:s, s:o}", "status", ready ? "ready" : "not_ready", "checks", checks));
}
