/* health.h - active /health probes of the upstream model servers */
#ifndef AIGW_HEALTH_H
#define AIGW_HEALTH_H

#include <stdbool.h>
#include <stddef.h>

#include "aigw/config.h"

struct aigw_health;

/* One probed backend as reported by aigw_health_list. */
struct aigw_health_backend {
    char name[64];
    bool up;
};

/* Start one thread that GETs <url>/health of every backend of cfg every
 * cfg->health_interval_ms (timeout 1 s). A backend starts as down until its
 * first probe answers 200. The prober copies what it needs from cfg. Never
 * fails. */
struct aigw_health *aigw_health_start(const struct aigw_config *cfg);
/* Stop and join the thread, free everything. NULL-safe. */
void aigw_health_stop(struct aigw_health *h);

/* Probe the backends of cfg from now on, by index: a slot whose name and URL
 * are unchanged keeps its state; a changed slot starts as down until its
 * next probe, which runs at once; a slot with a NULL url is not probed and
 * reads as down. Also takes health_interval_ms. Thread-safe; the upstream
 * engine calls it when it applies a reload, so indexes match its own. */
void aigw_health_reconfigure(struct aigw_health *h, const struct aigw_config *cfg);

/* Whether backend idx answered its last probe with 200. Thread-safe. */
bool aigw_health_up(const struct aigw_health *h, size_t idx);
/* Whether aigw_health_up has a verdict on slot idx's backend: false from
 * the moment the slot gets a backend (at the start, or a reload) until its
 * first probe is over. A caller that reads this first and then
 * aigw_health_up sees, when this said true, a verdict at least that new.
 * A slot without a URL reads as probed (and down). Thread-safe. */
bool aigw_health_probed(const struct aigw_health *h, size_t idx);
/* Number of probed backends currently up. Thread-safe. */
size_t aigw_health_up_count(struct aigw_health *h);
/* Number of probed backends (configured with a URL). Thread-safe. */
size_t aigw_health_count(struct aigw_health *h);
/* Name and state of each probed backend, at most cap, into out; returns how
 * many were written. Thread-safe. */
size_t aigw_health_list(struct aigw_health *h, struct aigw_health_backend *out, size_t cap);

#endif
