/* pool.h - per-request memory pool with cleanup hooks (nginx's ngx_pool_t, simplified) */
#ifndef AIGW_POOL_H
#define AIGW_POOL_H

#include <stdarg.h>
#include <stddef.h>

struct aigw_pool;

/* Create an empty pool. Never fails (aborts on OOM). Owner: the caller, who
 * calls aigw_pool_destroy exactly once. */
struct aigw_pool *aigw_pool_create(void);

/* Run the cleanup hooks in reverse order of registration, then free every
 * block. NULL is accepted. */
void aigw_pool_destroy(struct aigw_pool *pool);

/* Allocate n bytes aligned for any type, zero-filled; lives until the pool is
 * destroyed. Never returns NULL. */
void *aigw_pool_alloc(struct aigw_pool *pool, size_t n);
char *aigw_pool_strndup(struct aigw_pool *pool, const char *s, size_t n);
char *aigw_pool_strdup(struct aigw_pool *pool, const char *s);
char *aigw_pool_printf(struct aigw_pool *pool, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
char *aigw_pool_vprintf(struct aigw_pool *pool, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* Register fn(arg) to run when the pool is destroyed: the pool then owns arg
 * (json_t, PGresult, redisReply, ...). */
void aigw_pool_cleanup(struct aigw_pool *pool, void (*fn)(void *), void *arg);

#endif
