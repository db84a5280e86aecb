/* api.h - route handlers: the last stage of each route */
#ifndef AIGW_API_H
#define AIGW_API_H

#include "aigw/http.h"

/* GET /healthz: 200 while the process runs. */
enum aigw_rc aigw_api_healthz(struct aigw_req *req);
/* GET /readyz: 200 when PostgreSQL, Redis and >= 1 upstream answer, else 503
 * naming what failed. */
enum aigw_rc aigw_api_readyz(struct aigw_req *req);
/* GET /api/ai/limits: the caller's plan, quota used and remaining. */
enum aigw_rc aigw_api_limits(struct aigw_req *req);
/* POST /api/ai/cache/invalidate: bump the tenant's cache generation
 * (tenant admin or manager). */
enum aigw_rc aigw_api_cache_invalidate(struct aigw_req *req);

#endif
