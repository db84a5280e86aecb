/* pool.c - per-request arena: bump allocation in blocks, cleanups run LIFO */
#include "aigw/pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/util.h"

/* A block is malloc'd whole and lives as long as its request, slack included:
 * with thousands of requests held while the model works, the slack is paid
 * thousands of times. 3 KiB holds an AI request's state (struct aigw_req and
 * struct aigw_query are 1.4 KiB) with its body, keys, prompt and a short answer
 * (2.1-2.6 KiB measured in bench S3); anything bigger takes one more block. */
#define POOL_BLOCK 3072
#define POOL_ALIGN 16

struct block {
    struct block *next;
    size_t used, size;
    _Alignas(POOL_ALIGN) unsigned char data[];
};

struct cleanup {
    struct cleanup *next;
    void (*fn)(void *);
    void *arg;
};

struct aigw_pool {
    struct block *head;
    struct cleanup *cleanups;
};

struct aigw_pool *
aigw_pool_create(void)
{
    return aigw_xcalloc(1, sizeof(struct aigw_pool));
}

void
aigw_pool_destroy(struct aigw_pool *pool)
{
    if (pool == NULL)
        return;
    for (struct cleanup *c = pool->cleanups; c != NULL; c = c->next)
        c->fn(c->arg);
    /* cleanups live inside the blocks, so free blocks only afterwards */
    for (struct block *b = pool->head, *next; b != NULL; b = next) {
        next = b->next;
        free(b);
    }
    free(pool);
}

void *
aigw_pool_alloc(struct aigw_pool *pool, size_t n)
{
    size_t need = (n + POOL_ALIGN - 1) & ~(size_t)(POOL_ALIGN - 1);
    struct block *b = pool->head;
    void *p;

    if (b == NULL || b->size - b->used < need) {
        size_t size = need > POOL_BLOCK / 2 ? need : POOL_BLOCK;

        b = aigw_xmalloc(sizeof(*b) + size);
        b->size = size;
        b->used = 0;
        if (need > POOL_BLOCK / 2 && pool->head != NULL) {
            /* big allocation: keep the current block for small ones */
            b->next = pool->head->next;
            pool->head->next = b;
        } else {
            b->next = pool->head;
            pool->head = b;
        }
    }
    p = b->data + b->used;
    b->used += need;
    memset(p, 0, n);
    return p;
}

char *
aigw_pool_strndup(struct aigw_pool *pool, const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = aigw_pool_alloc(pool, len + 1);

    memcpy(p, s, len);
    return p;
}

char *
aigw_pool_strdup(struct aigw_pool *pool, const char *s)
{
    return aigw_pool_strndup(pool, s, strlen(s));
}

char *
aigw_pool_vprintf(struct aigw_pool *pool, const char *fmt, va_list ap)
{
    va_list copy;
    int n;
    char *p;

    va_copy(copy, ap);
    n = vsnprintf(NULL, 0, fmt, copy);
    va_end(copy);
    if (n < 0)
        return aigw_pool_strdup(pool, "");
    p = aigw_pool_alloc(pool, (size_t)n + 1);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    return p;
}

char *
aigw_pool_printf(struct aigw_pool *pool, const char *fmt, ...)
{
    va_list ap;
    char *p;

    va_start(ap, fmt);
    p = aigw_pool_vprintf(pool, fmt, ap);
    va_end(ap);
    return p;
}

void
aigw_pool_cleanup(struct aigw_pool *pool, void (*fn)(void *), void *arg)
{
    struct cleanup *c = aigw_pool_alloc(pool, sizeof(*c));

    c->fn = fn;
    c->arg = arg;
    c->next = pool->cleanups;
    pool->cleanups = c;
}
