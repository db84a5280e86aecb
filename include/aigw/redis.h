/* redis.h - pool of synchronous hiredis contexts with timeouts, Lua scripts,
 * and one pipelined asynchronous connection for the hot path */
#ifndef AIGW_REDIS_H
#define AIGW_REDIS_H

#include <hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct aigw_redis_pool;

/* url: redis://host[:port][/db], redis://[IPv6 address][:port][/db] or
 * unix:///path/to/socket[?db=N]. Returns NULL with a reason in err when the
 * URL is invalid; connections open lazily. timeout_ms bounds connect and
 * every command. Owner: caller. */
struct aigw_redis_pool *aigw_redis_pool_create(const char *url, int size, int timeout_ms, char *err,
                                               size_t errlen);
/* Use password (copied) for AUTH instead of the URL's (the URL's user, if
 * any, stays). Before the pool or a pipe on it connects. */
void aigw_redis_pool_set_password(struct aigw_redis_pool *pool, const char *password);
/* Whether aigw_redis_pool_create would take url; else false with err. */
bool aigw_redis_url_check(const char *url, char *err, size_t errlen);
void aigw_redis_pool_destroy(struct aigw_redis_pool *pool);

/* Log "redis: what: detail" at LOG_ERR, at most once a second for the
 * pool (an outage would otherwise log once per request), and count it in
 * the Redis error metric. */
void aigw_redis_log_error(struct aigw_redis_pool *pool, const char *what, const char *detail);

/* Check out a connected context (waits up to the pool timeout); NULL when
 * Redis cannot be reached (logged, rate-limited).
 * Once a command or connect on the pool has timed out, the pool is
 * stalled: Redis takes connections or commands but does not answer (a
 * frozen or overloaded server). Until a reply comes back on one of its
 * connections or on a pipe, a caller may wait for Redis (the probe) at most once a
 * second and one at a time; every other acquire returns NULL at once. A
 * frozen Redis then blocks an HTTP worker for at most one timeout a
 * second, instead of one timeout per Redis call of every request. */
redisContext *aigw_redis_acquire(struct aigw_redis_pool *pool);
/* Whether the pool is stalled (see aigw_redis_acquire). NULL-safe (false). */
bool aigw_redis_pool_stalled(const struct aigw_redis_pool *pool);
/* Acquires refused at once because the pool was stalled. NULL-safe (0). */
uint64_t aigw_redis_pool_refused(const struct aigw_redis_pool *pool);
/* Return ctx; a context with an I/O error (c->err) is closed, not reused. */
void aigw_redis_release(struct aigw_redis_pool *pool, redisContext *ctx);

/* Run one command given as argv/argvlen. Returns the reply (caller frees
 * with freeReplyObject) or NULL on an I/O error, which leaves ctx dead (it
 * is then dropped by aigw_redis_release). An error *reply* is returned as a
 * REDIS_REPLY_ERROR object. */
redisReply *aigw_redis_cmd(redisContext *ctx, int argc, const char **argv, const size_t *argvlen);

/* "<cmd> <key>" on a pooled connection for a command with an integer reply
 * (EXISTS, INCR, ...). Returns the integer, or -1 when Redis could not be
 * asked or answered otherwise. */
long long aigw_redis_key_int(struct aigw_redis_pool *pool, const char *cmd, const char *key);

/* Whether Redis takes a write on a pooled context (SET of the expiring key
 * aigw:ready, within the pool timeout, or max_ms when that is shorter;
 * max_ms <= 0: the pool timeout): a Redis that answers but refuses writes
 * (READONLY replica, OOM, MISCONF; logged) is down for aigw. For /readyz
 * and the start-up wait. Never fails (false = down). */
bool aigw_redis_ping(struct aigw_redis_pool *pool, int max_ms);

/* A Lua script run with EVALSHA, falling back to EVAL on NOSCRIPT. */
struct aigw_redis_script {
    const char *source;
    char sha1[41];         /* filled by aigw_redis_script_init */
    bool by_source;        /* always EVAL with the source, never EVALSHA: for a script that
                            * must run on its first try even when Redis does not know it
                            * yet and its replies are late (no NOSCRIPT round first) */
};
void aigw_redis_script_init(struct aigw_redis_script *s);

/* EVALSHA s with keys then args (all binary-safe strings). Same reply
 * contract as aigw_redis_cmd. */
redisReply *aigw_redis_eval(redisContext *ctx, const struct aigw_redis_script *s, int nkeys,
                            const char **keys, int nargs, const char **args);

/* ---- the pipe: asynchronous, pipelined script calls ----
 * One connection and one thread. A caller hands over a script call and goes
 * on (the HTTP worker suspends its request instead of blocking on the round
 * trip); the thread writes every call that arrived since its last round in
 * one write(2), so Redis reads, runs and answers them in batches instead of
 * being woken once per request, and hands each reply to its callback in
 * order. Same endpoint and timeout as the pool. A call that gets no reply
 * within the timeout fails (NULL) at its own deadline; calls behind it keep
 * theirs. While the oldest call on the connection is past its deadline
 * unanswered, new calls are held back, not written; a late reply to a
 * failed call is read and dropped, and once every call on the connection
 * has failed it is dropped and the held calls go out on a new one. So a
 * call is written only while Redis keeps up, and a script that takes a
 * deadline (aigw_redis_pipe_deadline) and does nothing once it is past can
 * never act on a call whose caller was told it failed. A NOSCRIPT reply
 * loads the script (SCRIPT LOAD) and sends the call once more. The thread
 * also samples Redis's clock (TIME) on connecting and every 10 s. */
struct aigw_redis_pipe;

/* reply: the reply (the callee owns it: freeReplyObject), or NULL when
 * Redis could not be asked or did not answer in time. Runs on the pipe's
 * thread, or on the caller's when the pipe is cancelled; exactly once. */
typedef void (*aigw_redis_done_fn)(redisReply *reply, void *ud);

/* Endpoint and timeout from pool, which must outlive the pipe. */
struct aigw_redis_pipe *aigw_redis_pipe_start(struct aigw_redis_pool *pool);
/* EVALSHA s with keys then args (copied: they need not outlive the call);
 * done(reply, ud) later, exactly once. NULL-safe on p: done(NULL) at once. */
void aigw_redis_pipe_eval(struct aigw_redis_pipe *p, const struct aigw_redis_script *s, int nkeys,
                          const char **keys, int nargs, const char **args, aigw_redis_done_fn done, void *ud);
/* The direct path: when Redis is otherwise idle, a blocking round trip on
 * the caller's thread answers sooner than a hand-off to the pipe's thread
 * and back, which costs two thread wake-ups. When no call is in flight on
 * the pipe, no other caller is on this path and the pool is not stalled
 * (see aigw_redis_acquire), runs s on a pool connection
 * (aigw_redis_eval) and returns true with *reply (NULL: Redis unavailable;
 * the caller frees it). Else returns false: use aigw_redis_pipe_eval.
 * NULL-safe (false). */
bool aigw_redis_pipe_try_direct(struct aigw_redis_pipe *p, const struct aigw_redis_script *s, int nkeys,
                                const char **keys, int nargs, const char **args, redisReply **reply);
/* For a script that must not act after its caller gave up on it: the
 * Redis-clock instant (TIME in ms since the epoch) by which a call handed
 * over now must have started so that its reply still arrives in time: now
 * on Redis's clock + the timeout - a quarter of it for the way back. Redis's
 * clock comes from the pipe's samples (off by half a round trip at most),
 * so aigw's and Redis's clocks need not agree. -1 while there is no sample
 * yet (Redis not reached since start): the script cannot be told a deadline.
 * NULL-safe (-1). */
int64_t aigw_redis_pipe_deadline(struct aigw_redis_pipe *p);
/* aigw_redis_pipe_deadline as a script argument: digits, or "" for none. */
void aigw_redis_deadline_arg(struct aigw_redis_pipe *p, char out[24]);
/* Lua: past(deadline) is true when Redis's clock is past deadline (ms, as
 * from aigw_redis_deadline_arg; '' never is). A script on a pool
 * connection that must not act after its caller gave up starts with
 * `if past(ARGV[n]) then return 'expired' end`: a Redis stuck behind another
 * client's slow command still runs what was sent to it once it is free, and
 * the caller answered 503 long before. */
#define AIGW_REDIS_PAST_LUA                                                                          \
    "local function past(deadline)\n"                                                               \
    "  if deadline == nil or deadline == '' then return false end\n"                                \
    "  local t = redis.call('TIME')\n"                                                              \
    "  return t[1] * 1000 + math.floor(t[2] / 1000) > deadline + 0\n"                                \
    "end\n"
/* Refuse new calls (they fail at once), let the thread finish the calls
 * already handed over — answered, or failed at the timeout, so this waits
 * at most about redis.timeout_ms — and stop it. Idempotent, NULL-safe.
 * Before the HTTP daemon stops: callbacks resume suspended requests. */
void aigw_redis_pipe_cancel(struct aigw_redis_pipe *p);
/* Cancel, then free. NULL-safe. */
void aigw_redis_pipe_destroy(struct aigw_redis_pipe *p);

/* The outbox: scripts that must reach Redis eventually, though nobody waits
 * for them (taking back what a request gave up on, an idempotency record's
 * outcome). Each goes on the pipe; one that Redis does not confirm (no
 * reply, or an error reply) waits for the next aigw_redis_outbox_retry and
 * is sent again, until its own deadline. A script given to it must be safe
 * to run twice: the first run's reply may be the one that was lost. Bounded
 * in entries and bytes (what does not fit is dropped). What is lost (given
 * up, dropped) is logged at most once a second, with a count. Thread-safe. */
struct aigw_redis_outbox;

/* done(reply, ud): the confirming reply (the callee frees it), or NULL when
 * the script is given up (deadline passed, no room, exit). Once. */
typedef void (*aigw_redis_outbox_fn)(redisReply *reply, void *ud);
/* Sends through pipe, which must outlive the outbox's last send. */
struct aigw_redis_outbox *aigw_redis_outbox_create(struct aigw_redis_pipe *pipe);
/* Run s with keys then args (copied) until Redis confirms it or until_ms
 * (aigw_now_ms clock) passes; what names it in the log. done may be NULL. */
void aigw_redis_outbox_eval(struct aigw_redis_outbox *o, const struct aigw_redis_script *s, int nkeys,
                            const char **keys, int nargs, const char **args, int64_t until_ms, const char *what,
                            aigw_redis_outbox_fn done, void *ud);
/* The same, but run s once now on a pool connection first (blocking, on
 * the caller's thread): its confirming reply is returned (the caller frees
 * it; done is not called). Without one, again (s when NULL: a script safe
 * to run twice) goes to the outbox as above, and NULL is returned. */
redisReply *aigw_redis_outbox_eval_now(struct aigw_redis_outbox *o, const struct aigw_redis_script *s,
                                       const struct aigw_redis_script *again, int nkeys, const char **keys,
                                       int nargs, const char **args, int64_t until_ms, const char *what,
                                       aigw_redis_outbox_fn done, void *ud);
/* Send the waiting scripts again (the main loop, once a second). Returns
 * how many were sent. NULL-safe. */
size_t aigw_redis_outbox_retry(struct aigw_redis_outbox *o);
/* Scripts not confirmed yet (sent or waiting for a retry). NULL-safe (0). */
size_t aigw_redis_outbox_pending(struct aigw_redis_outbox *o);
/* After the pipe is cancelled: what still waits is given up (logged). NULL-safe. */
void aigw_redis_outbox_destroy(struct aigw_redis_outbox *o);

#endif
