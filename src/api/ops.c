/* ops.c - /healthz and /readyz for load balancers and systemd */
#include <jansson.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/health.h"
#include "aigw/pg.h"
#include "aigw/redis.h"

enum aigw_rc
aigw_api_healthz(struct aigw_req *req)
{
    return aigw_req_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

static bool
pg_ok(struct aigw_server *srv)
{
    PGconn *conn = aigw_pg_acquire(srv->pg, 1000);
    PGresult *r;
    bool ok;

    if (conn == NULL)
        return false;
    r = aigw_pg_exec(conn, "SELECT 1", 0, NULL);
    ok = r != NULL;
    PQclear(r);
    aigw_pg_release(srv->pg, conn);
    return ok;
}

static bool
redis_ok(struct aigw_server *srv)
{
    redisContext *c = aigw_redis_acquire(srv->redis);
    const char *argv[1] = {"PING"};
    size_t lens[1] = {4};
    redisReply *r;
    bool ok;

    if (c == NULL)
        return false;
    r = aigw_redis_cmd(c, 1, argv, lens);
    ok = r != NULL && r->type == REDIS_REPLY_STATUS && strcmp(r->str, "PONG") == 0;
    freeReplyObject(r);
    aigw_redis_release(srv->redis, c);
    return ok;
}

enum aigw_rc
aigw_api_readyz(struct aigw_req *req)
{
    struct aigw_server *srv = req->srv;
    bool pg = pg_ok(srv), redis = redis_ok(srv);
    size_t up = aigw_health_up_count(srv->health);
    bool ready = pg && redis && up > 0 && !atomic_load(&srv->stopping);
    json_t *checks = json_pack("{s:s, s:s, s:{s:s, s:I, s:I}}", "postgresql", pg ? "ok" : "down", "redis",
                               redis ? "ok" : "down", "upstream", "status", up > 0 ? "ok" : "down", "healthy",
                               (json_int_t)up, "configured", (json_int_t)srv->cfg.n_backends);

    return aigw_req_json(req, ready ? 200 : 503,
                         json_pack("{s:s, s:o}", "status", ready ? "ready" : "not_ready", "checks", checks));
}
