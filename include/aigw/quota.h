/* quota.h - the monthly query quota: a month-keyed Redis counter rebuilt from PostgreSQL */
#ifndef AIGW_QUOTA_H
#define AIGW_QUOTA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aigw/server.h"
#include "aigw/tenant.h"

/* Lua: quota_reserve(counter key, limit number[, value]) -> status, count:
 * -2, 0 the counter is missing (rebuild it first); 0, used: exhausted; 1,
 * used after the increment: reserved. Limit < 0 = unlimited (still
 * counted). value: the counter as the script read it already (GET's or
 * MGET's reply, false when missing), saving a second read. Shared by the
 * reserve script here and the admission script, which reserves for the
 * leader of a miss in its own round trip. */
#define AIGW_QUOTA_RESERVE_LUA                                                                       \
    "local function quota_reserve(key, limit, v)\n"                                                 \
    "  if v == nil then v = redis.call('GET', key) end\n"                                           \
    "  if not v then return -2, 0 end\n"                                                            \
    "  v = tonumber(v)\n"                                                                           \
    "  if limit >= 0 and v >= limit then return 0, v end\n"                                         \
    "  return 1, redis.call('INCR', key)\n"                                                         \
    "end\n"

/* The request's mark: a hash "aigw:{<tenant>}:rv:<usage id>" that the
 * scripts which reserve a query of the quota or take a single-flight lock
 * for a request fill in the same step ('q' = the counter reserved from,
 * 'l' = the lock taken; mark(marker, field, value[, field, value]): both in
 * one HSET), for AIGW_MARK_TTL_MS. When aigw gives up on such a
 * script's reply (redis.timeout_ms) it cannot tell whether the script ran:
 * a late one is stopped by its deadline, but one that ran in time and
 * whose reply was held up did its work. aigw_quota_abandon then takes back
 * what the mark says was done and the request did not go on to use. */
#define AIGW_MARK_TTL_MS 120000
#define AIGW_MARK_STR_(x) #x
#define AIGW_MARK_STR(x) AIGW_MARK_STR_(x)
#define AIGW_MARK_LUA                                                                               \
    "local function mark(marker, ...)\n"                                                            \
    "  if marker and marker ~= '' then\n"                                                           \
    "    redis.call('HSET', marker, ...)\n"                                                         \
    "    redis.call('PEXPIRE', marker, " AIGW_MARK_STR(AIGW_MARK_TTL_MS) ")\n"                      \
    "  end\n"                                                                                       \
    "end\n"

/* The request's mark key into out (see AIGW_MARK_LUA). */
void aigw_quota_mark_key(const char *tenant_id, const char *usage_id, char *out, size_t cap);

struct aigw_req;

/* A script of req that may have reserved or locked had no reply in time
 * (req->q->redis_lost): undo, from its mark, the reservation unless the
 * request holds it knowingly (q->quota_reserved) or lock_only, and the
 * single-flight lock unless it leads. Asynchronous, never blocks: through
 * srv->outbox, which sends it again while Redis does not confirm it, for as
 * long as the mark can live. */
void aigw_quota_abandon(struct aigw_req *req, bool lock_only);

/* Prepare the Lua scripts; call once before threads start. */
void aigw_quota_init(void);

/* Redis key of tenant_id's counter for the UTC month containing now:
 * "aigw:{<tenant id>}:q:YYYYMM" (hash tag = tenant id). */
void aigw_quota_key(const char *tenant_id, int64_t now, char *out, size_t cap);

/* Billed queries of tenant t in the UTC month containing now (a request's
 * start, req->start_wall_us: the month it counts in, and whose end its
 * answer names, even when the month turns while it runs). Reads the Redis
 * counter; when the key is missing (first use this month, or Redis lost it)
 * it is rebuilt from the billed rows of ai_usage_logs, never reset to zero.
 * Falls back to the PostgreSQL count when Redis is down. Returns 0 with
 * *used set, or -1 when neither store could answer (logged). */
int aigw_quota_used(struct aigw_server *srv, const struct aigw_tenant *t, int64_t now, long *used);

/* Count the billed usage rows of tenant t in the UTC month containing now
 * (the rebuild source). Returns 0 or -1. */
int aigw_quota_count_billed(struct aigw_server *srv, const struct aigw_tenant *t, int64_t now, long *count);

/* Reserve one query of the monthly quota of the UTC month containing at_s
 * (the request's start) atomically (rebuilding a missing counter from
 * PostgreSQL first), noted in the mark key mark (NULL: none). Returns 0 with *used = the count including this query,
 * 1 when the quota is exhausted (*used = the count), -1 when
 * Redis/PostgreSQL could not answer. Unlimited plans (limit < 0) count too. */
int aigw_quota_reserve(struct aigw_server *srv, const struct aigw_tenant *t, int64_t at_s, const char *mark,
                       long *used);
/* Give back the query of tenant_id reserved for the month containing at_s
 * by request usage_id (the upstream call failed): to the counter it was
 * taken from, even when the month has turned since, and once only (a
 * second refund of the same reservation, e.g. at the next start after a
 * lost reply, does nothing). Returns 0 (done now or before), or -1 when
 * Redis could not be asked or gave no answer (logged). */
int aigw_quota_refund(struct aigw_server *srv, const char *usage_id, const char *tenant_id, int64_t at_s);
struct aigw_resv_file;
/* The refund of request req's reservation (its call failed), journaled in
 * file: like aigw_quota_refund but recorded for minutes only (a failing
 * model makes one per failed call). True when Redis confirmed it now; else
 * it is sent again through srv->outbox while its record would still stop a
 * second run, and file's reservation is settled when Redis confirms it (or
 * stays open for the next start). */
bool aigw_quota_refund_request(struct aigw_req *req, struct aigw_resv_file *file);

/* The response headers of a 429 quota_exhausted whose quota resets at
 * resets_s (Unix seconds): Retry-After, the seconds from the request's start
 * to then (at least 1; left out when resets_s is 0, not known), and
 * x-should-retry: false, which the OpenAI SDKs obey: they retry every other
 * 429, and this one stands until the month ends. For the quota stage's own
 * refusal and for one a request is given from another's outcome (a
 * single-flight leader's, whose body names resets_at). Cannot fail. */
void aigw_quota_exhausted_headers(struct aigw_req *req, int64_t resets_s);

#endif
