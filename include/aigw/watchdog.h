/* watchdog.h - systemd watchdog pings that prove the process still serves.
 *
 * Under WatchdogSec= systemd passes WATCHDOG_USEC (and WATCHDOG_PID); the
 * main thread calls aigw_watchdog_tick() between signals and a ping
 * (WATCHDOG=1) goes out every WATCHDOG_USEC/2, but only when the process is
 * healthy: a GET /healthz through the listening socket on loopback is
 * answered (the accept path and a worker serve), no worker has been stuck
 * inside one libmicrohttpd callback, and the upstream engine loop goes
 * round. A wedged process stops pinging and systemd restarts it. PostgreSQL
 * or Redis being down is not a reason: a restart would not fix it. */
#ifndef AIGW_WATCHDOG_H
#define AIGW_WATCHDOG_H

#include <stdbool.h>

struct aigw_server;
struct aigw_watchdog;

/* The watchdog systemd asked for (sd_watchdog_enabled), checking srv, whose
 * HTTP daemon must be listening (srv->bound_port). NULL when there is no
 * watchdog; every function below accepts NULL. Owner: caller. */
struct aigw_watchdog *aigw_watchdog_create(struct aigw_server *srv);
void aigw_watchdog_destroy(struct aigw_watchdog *w);

/* Milliseconds until the next ping is due (0 = now); -1 without a watchdog. */
int aigw_watchdog_due_in_ms(const struct aigw_watchdog *w);

/* When a ping is due: check the process and send WATCHDOG=1 if it is
 * healthy, else log why not (LOG_ERR). Blocks for at most the self-check
 * timeout (WATCHDOG_USEC/4, within 0.2..5 s). While srv->stopping the
 * listening socket is closed, so the self-check is skipped. */
void aigw_watchdog_tick(struct aigw_watchdog *w);

/* Whether the process is healthy, with the reason when not (static text)
 * in *why. What the tick checks; exposed for tests. */
bool aigw_watchdog_healthy(struct aigw_watchdog *w, const char **why);

#endif
