/* listener.h - LISTEN/NOTIFY thread that invalidates the tenant and API key caches */
#ifndef AIGW_LISTENER_H
#define AIGW_LISTENER_H

#include <stdbool.h>

#include "aigw/apikey.h"
#include "aigw/tenant.h"

struct aigw_listener;

/* Start a thread holding its own connection to db_url, LISTENing on
 * "aigw_tenant_changed" and "aigw_api_key_changed"; each notification
 * invalidates that tenant in cache, or that key in keys (payload = id, or
 * "*" = all). While disconnected it retries with backoff, and after every
 * (re)connect it flushes both caches, since notifications sent meanwhile are
 * lost. keys may be NULL. Never fails. */
struct aigw_listener *aigw_listener_start(const char *db_url, struct aigw_tenant_cache *cache,
                                          struct aigw_apikey_cache *keys);
/* Stop and join the thread; NULL-safe. */
void aigw_listener_stop(struct aigw_listener *l);
/* Whether the LISTEN connection is currently up. */
bool aigw_listener_connected(const struct aigw_listener *l);

#endif
