/* listener.h - LISTEN/NOTIFY thread that invalidates the tenant cache */
#ifndef AIGW_LISTENER_H
#define AIGW_LISTENER_H

#include <stdbool.h>

#include "aigw/tenant.h"

struct aigw_listener;

/* Start a thread holding its own connection to db_url, LISTENing on
 * "aigw_tenant_changed"; each notification invalidates that tenant (payload
 * = id, or "*" = all) in cache. While disconnected it retries with backoff,
 * and after every (re)connect it flushes the whole cache, since
 * notifications sent meanwhile are lost. Never fails. */
struct aigw_listener *aigw_listener_start(const char *db_url, struct aigw_tenant_cache *cache);
/* Stop and join the thread; NULL-safe. */
void aigw_listener_stop(struct aigw_listener *l);
/* Whether the LISTEN connection is currently up. */
bool aigw_listener_connected(const struct aigw_listener *l);

#endif
