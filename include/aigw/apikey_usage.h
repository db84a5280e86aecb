/* apikey_usage.h - api_keys.last_used_at without a database write per
 * request: uses are noted in memory and written by a background thread in
 * one batched UPDATE per tenant every flush interval, and at shutdown */
#ifndef AIGW_APIKEY_USAGE_H
#define AIGW_APIKEY_USAGE_H

#include <stddef.h>
#include <stdint.h>

struct aigw_api_key;
struct aigw_pg_pool;

/* At most this many distinct keys are remembered between two flushes; uses
 * of further keys wait for the next interval (last_used_at is advisory). */
#define AIGW_APIKEY_USAGE_MAX 4096

struct aigw_apikey_usage;

/* Start the flush thread writing through pool every flush_ms. spool_dir
 * (NULL: none) must exist: the uses a stop could not write are kept there
 * and noted again here. Never fails (aborts if the thread cannot start).
 * Owner: the caller (aigw_apikey_usage_stop). */
struct aigw_apikey_usage *aigw_apikey_usage_start(struct aigw_pg_pool *pool, int flush_ms, const char *spool_dir);

/* Note that key k was used at wall-clock second now. Thread-safe, no I/O:
 * one mutex and a hash probe. NULL-safe on u. */
void aigw_apikey_usage_touch(struct aigw_apikey_usage *u, const struct aigw_api_key *k, int64_t now);

/* Write what is pending now, on the caller's thread. Returns the number of
 * keys whose use could not be written (they stay pending). */
size_t aigw_apikey_usage_flush(struct aigw_apikey_usage *u);

/* Stop the thread after a final flush, keep what it could not write in the
 * spool directory for the next start (or remove the file when nothing is
 * left), then free. NULL-safe. */
void aigw_apikey_usage_stop(struct aigw_apikey_usage *u);

#endif
