/* singleflight.h - collapse identical in-flight questions across threads and instances.
 *
 * The first request for a key takes a Redis lock (SET NX PX) and becomes the
 * leader; later ones, in this or another aigw process, suspend and are
 * polled by one thread that watches for the leader's published result. When
 * it appears every waiter is resumed in the same poll round (success or
 * error alike); when the lock vanishes without a result (the leader died)
 * the waiters are resumed to retry, and one of them becomes the new leader. */
#ifndef AIGW_SINGLEFLIGHT_H
#define AIGW_SINGLEFLIGHT_H

#include "aigw/redis.h"

struct aigw_sf;
struct aigw_req;
struct aigw_cache_entry;

/* Lua: sf_acquire(lock, result key, owner, ttl ms, take) -> 2, result: a
 * leader's published outcome (taken only when take is true, and never a
 * published error: that was for the waiters of its flight); 1: this caller
 * holds the lock now (SET NX PX), and an earlier flight's result is gone, so
 * its error cannot answer this flight's waiters (deleted unless the GET
 * just saw there is none); 0: someone else leads. Shared by the
 * acquire script here and the admission script, which leads a miss in its
 * own round trip. */
#define AIGW_SF_ACQUIRE_LUA                                                                          \
    "local function sf_acquire(lock, result, owner, ttl, take)\n"                                   \
    "  local r = false\n"                                                                           \
    "  if take then\n"                                                                              \
    "    r = redis.call('GET', result)\n"                                                           \
    "    if r and string.sub(r, 1, 9) ~= '{\"error\":' then return 2, r end\n"                      \
    "  end\n"                                                                                       \
    "  if redis.call('SET', lock, owner, 'NX', 'PX', ttl) then\n"                                  \
    "    if r or not take then redis.call('DEL', result) end\n"                                     \
    "    return 1, false\n"                                                                         \
    "  end\n"                                                                                       \
    "  return 0, false\n"                                                                           \
    "end\n"

/* Start the poller thread (checks every poll_ms). Never fails. */
struct aigw_sf *aigw_sf_start(struct aigw_redis_pool *redis, int poll_ms);
/* Resume every waiter as timed out, stop and join the thread. NULL-safe. */
void aigw_sf_stop(struct aigw_sf *sf);
/* The drain deadline: resume every waiter as timed out and every later
 * aigw_sf_wait at once, but keep sf valid until aigw_sf_stop. Returns once
 * the poller thread has resumed them and exited (at most the Redis round
 * trip it may be in). Main thread; NULL-safe. */
void aigw_sf_cancel(struct aigw_sf *sf);
/* Register a suspended waiter (req->q->sf_* set). */
void aigw_sf_wait(struct aigw_sf *sf, struct aigw_req *req);
/* How long a leader's lock lives (ms): the longest its call may take
 * (upstream.stream_timeout_ms for a streamed answer, timeout_ms for one in a
 * piece) plus queueing plus a margin, so a live leader never loses it. */
int aigw_singleflight_lock_ms(const struct aigw_req *req);
/* Leader: publish its outcome (JSON text) for the waiters and release the
 * lock. NULL publishes nothing: the waiters see the lock go and retry, one
 * of them leading (the leader's client left mid-stream). With entry (may be
 * NULL) the answer is also stored in the cache, in the same round trip. */
void aigw_sf_publish(struct aigw_req *req, const char *result_json, const struct aigw_cache_entry *entry);

#endif
