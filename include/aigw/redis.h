/* redis.h - pool of synchronous hiredis contexts with timeouts, and Lua scripts */
#ifndef AIGW_REDIS_H
#define AIGW_REDIS_H

#include <hiredis.h>
#include <stdbool.h>
#include <stddef.h>

struct aigw_redis_pool;

/* url: redis://host:port[/db] or unix:///path/to/socket[?db=N]. Returns NULL
 * with a reason in err when the URL is invalid; connections open lazily.
 * timeout_ms bounds connect and every command. Owner: caller. */
struct aigw_redis_pool *aigw_redis_pool_create(const char *url, int size, int timeout_ms, char *err,
                                               size_t errlen);
void aigw_redis_pool_destroy(struct aigw_redis_pool *pool);

/* Check out a connected context (waits up to the pool timeout); NULL when
 * Redis cannot be reached (logged, rate-limited). */
redisContext *aigw_redis_acquire(struct aigw_redis_pool *pool);
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

/* Whether a pooled context answers PING with PONG (within the pool
 * timeout). For /readyz and the start-up wait. Never fails (false = down). */
bool aigw_redis_ping(struct aigw_redis_pool *pool);

/* A Lua script run with EVALSHA, falling back to EVAL on NOSCRIPT. */
struct aigw_redis_script {
    const char *source;
    char sha1[41];         /* filled by aigw_redis_script_init */
};
void aigw_redis_script_init(struct aigw_redis_script *s);

/* EVALSHA s with keys then args (all binary-safe strings). Same reply
 * contract as aigw_redis_cmd. */
redisReply *aigw_redis_eval(redisContext *ctx, const struct aigw_redis_script *s, int nkeys,
                            const char **keys, int nargs, const char **args);

#endif
