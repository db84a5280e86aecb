/* health.h - active /health probes of the upstream model servers */
#ifndef AIGW_HEALTH_H
#define AIGW_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "aigw/config.h"

struct aigw_health;

/* Start one thread that GETs <url>/health of every backend of cfg every
 * cfg->health_interval_ms (timeout 1 s). A backend starts as down until its
 * first probe answers 200. cfg must outlive the prober. Never fails. */
struct aigw_health *aigw_health_start(const struct aigw_config *cfg);
/* Stop and join the thread, free everything. NULL-safe. */
void aigw_health_stop(struct aigw_health *h);

/* Whether backend idx answered its last probe with 200. Thread-safe. */
bool aigw_health_up(const struct aigw_health *h, size_t idx);
/* Number of backends currently up. Thread-safe. */
size_t aigw_health_up_count(const struct aigw_health *h);

#endif
