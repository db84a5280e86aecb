/* listener.h - LISTEN/NOTIFY thread that invalidates the tenant and API key caches */
#ifndef AIGW_LISTENER_H
#define AIGW_LISTENER_H

#include <stdbool.h>

#include "aigw/apikey.h"
#include "aigw/tenant.h"

struct aigw_listener;
struct aigw_pg_pool;
struct aigw_redis_pool;

/* Start a thread holding its own connection to db_url, LISTENing on
 * "aigw_tenant_changed" and "aigw_api_key_changed"; each notification
 * invalidates that tenant in cache, or that key in keys (payload = id, or
 * "*" = all). On "aigw_api_key_revoked" ("<tenant id>:<key id>", a key
 * revoked or deleted in SQL, sql/016) it sets the key's revocation marker
 * in redis, for the instances whose listener missed it, once the key is
 * found revoked or gone through pool (a forged notice changes nothing).
 * While disconnected it retries with backoff, and after every (re)connect
 * it flushes both caches, since notifications sent meanwhile are lost.
 * keys, redis and pool may be NULL (no markers without both). Never fails. */
struct aigw_listener *aigw_listener_start(const char *db_url, struct aigw_tenant_cache *cache,
                                          struct aigw_apikey_cache *keys, struct aigw_redis_pool *redis,
                                          struct aigw_pg_pool *pool);
/* Stop and join the thread; NULL-safe. */
void aigw_listener_stop(struct aigw_listener *l);
/* Whether the LISTEN connection is currently up. */
bool aigw_listener_connected(const struct aigw_listener *l);

#endif
