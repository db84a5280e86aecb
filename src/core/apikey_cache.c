/* apikey_cache.c - key records by SHA-256 of the key: a direct-mapped table
 * with lock striping, filled from PostgreSQL through aigw_api_key_lookup()
 * (SECURITY DEFINER: the tenant is not known before the key is) and emptied
 * by NOTIFY aigw_api_key_changed. A hit costs no database query. A miss
 * does, and anyone can present well-formed random keys, which always miss:
 * so at most max_lookups misses wait for or use the pool at once, and the
 * others are refused without asking PostgreSQL (no queue). */
#include "aigw/apikey.h"

#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/util.h"

#define STRIPES 16
/* refused lookups are logged at most this often (with the count since) */
#define REFUSAL_LOG_MS 10000

struct slot {
    unsigned char sha[32];
    int64_t until_ms;          /* monotonic; 0 = empty */
    struct aigw_api_key key;
};

struct aigw_apikey_cache {
    size_t n;                  /* slots, a power of two */
    int ttl_ms;
    atomic_uint_fast64_t epoch; /* bumped by every invalidation, with every stripe held */
    pthread_mutex_t locks[STRIPES]; /* lock i guards the slots with index % STRIPES == i */
    struct slot *slots;
    int max_lookups;           /* 0 = unbounded */
    atomic_int lookups;        /* misses at the pool now */
    _Atomic int64_t refusal_logged_ms; /* monotonic; 0 = never */
    atomic_long refused_unlogged;
};

/* expires_at floored to its second: checked as "expired once the clock's
 * second reaches it", a key ends no later than its time (a cast alone
 * rounds, and one expiring at N.55 kept working until N+1) */
static const char LOOKUP_SQL[] =
    "SELECT id, tenant_id, array_to_string(scopes, ','), COALESCE(requests_per_minute, 0),"
    " COALESCE(floor(extract(epoch FROM expires_at))::bigint, 0), revoked"
    " FROM aigw_api_key_lookup(decode($1, 'hex'))";

struct aigw_apikey_cache *
aigw_apikey_cache_create(size_t slots, int ttl_s, int max_lookups)
{
    struct aigw_apikey_cache *c = aigw_xcalloc(1, sizeof(*c));
    size_t n = 64;

    while (n < slots)
        n *= 2;
    c->n = n;
    c->ttl_ms = ttl_s * 1000;
    atomic_init(&c->epoch, 0);
    c->max_lookups = max_lookups > 0 ? max_lookups : 0;
    atomic_init(&c->lookups, 0);
    atomic_init(&c->refusal_logged_ms, 0);
    atomic_init(&c->refused_unlogged, 0);
    c->slots = aigw_xcalloc(n, sizeof(*c->slots));
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    return c;
}

void
aigw_apikey_cache_destroy(struct aigw_apikey_cache *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_destroy(&c->locks[i]);
    free(c->slots);
    free(c);
}

static size_t
slot_of(const struct aigw_apikey_cache *c, const unsigned char sha[32])
{
    size_t v;

    memcpy(&v, sha, sizeof(v));
    return v & (c->n - 1);
}

bool
aigw_apikey_cache_peek(struct aigw_apikey_cache *c, const unsigned char sha[32], struct aigw_api_key *out)
{
    size_t i = slot_of(c, sha);
    pthread_mutex_t *lock = &c->locks[i % STRIPES];
    bool hit;

    pthread_mutex_lock(lock);
    hit = c->slots[i].until_ms > aigw_now_ms() && CRYPTO_memcmp(c->slots[i].sha, sha, 32) == 0;
    if (hit)
        *out = c->slots[i].key;
    pthread_mutex_unlock(lock);
    return hit;
}

uint64_t
aigw_apikey_cache_epoch(struct aigw_apikey_cache *c)
{
    return atomic_load(&c->epoch);
}

void
aigw_apikey_cache_put(struct aigw_apikey_cache *c, const unsigned char sha[32], const struct aigw_api_key *k,
                      uint64_t epoch)
{
    size_t i = slot_of(c, sha);
    pthread_mutex_t *lock = &c->locks[i % STRIPES];

    if (c->ttl_ms <= 0)
        return;
    pthread_mutex_lock(lock);
    /* invalidation bumps the epoch holding every stripe, so this test and the
     * store below cannot straddle one */
    if (atomic_load(&c->epoch) == epoch) {
        memcpy(c->slots[i].sha, sha, 32);
        c->slots[i].key = *k;
        c->slots[i].until_ms = aigw_now_ms() + c->ttl_ms;
    }
    pthread_mutex_unlock(lock);
}

void
aigw_apikey_cache_invalidate(struct aigw_apikey_cache *c, const char *id)
{
    bool all = id == NULL || strcmp(id, "*") == 0;
    int dropped = 0;

    if (c == NULL)
        return;
    for (int s = 0; s < STRIPES; s++)
        pthread_mutex_lock(&c->locks[s]);
    atomic_fetch_add(&c->epoch, 1);
    for (size_t i = 0; i < c->n; i++) {
        if (c->slots[i].until_ms == 0 || !(all || strcmp(c->slots[i].key.id, id) == 0))
            continue;
        memset(&c->slots[i], 0, sizeof(c->slots[i]));
        dropped++;
    }
    for (int s = STRIPES - 1; s >= 0; s--)
        pthread_mutex_unlock(&c->locks[s]);
    aigw_log(LOG_DEBUG, "api key cache: invalidated %s (%d entries)", all ? "all" : id, dropped);
}

static void
copy_text(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);

    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* 0 found, 1 no such key, -1 database error */
static int
load(struct aigw_pg_pool *pool, const unsigned char sha[32], struct aigw_api_key *out)
{
    char hex[65];
    const char *params[1] = {hex};
    PGconn *conn = aigw_pg_acquire(pool, 2000);
    PGresult *r;
    int rc = 1;

    if (conn == NULL)
        return -1;
    aigw_hex(sha, 32, hex);
    r = aigw_pg_exec(conn, LOOKUP_SQL, 1, params);
    aigw_pg_release(pool, conn);
    if (r == NULL)
        return -1;
    if (PQntuples(r) == 1) {
        memset(out, 0, sizeof(*out));
        copy_text(out->id, sizeof(out->id), PQgetvalue(r, 0, 0));
        copy_text(out->tenant_id, sizeof(out->tenant_id), PQgetvalue(r, 0, 1));
        out->scopes = aigw_scope_parse_list(PQgetvalue(r, 0, 2));
        out->requests_per_minute = (int)strtol(PQgetvalue(r, 0, 3), NULL, 10);
        if (out->requests_per_minute < 0) { /* past the CHECK (> 0): the admission refused every request for ever */
            aigw_log(LOG_WARNING, "api key %s: requests_per_minute %d cannot work; only the tenant's limit applies",
                     out->id, out->requests_per_minute);
            out->requests_per_minute = 0;
        }
        out->expires_at = strtoll(PQgetvalue(r, 0, 4), NULL, 10);
        out->revoked = PQgetvalue(r, 0, 5)[0] == 't';
        rc = 0;
    }
    PQclear(r);
    return rc;
}

/* A lookup refused by the bound: logged at most every REFUSAL_LOG_MS, with
 * how many were refused since the last line (never a key or its hash). */
static void
note_refusal(struct aigw_apikey_cache *c)
{
    int64_t now = aigw_now_ms();
    int64_t last = atomic_load_explicit(&c->refusal_logged_ms, memory_order_relaxed);
    long n;

    atomic_fetch_add_explicit(&c->refused_unlogged, 1, memory_order_relaxed);
    if (last != 0 && now - last < REFUSAL_LOG_MS)
        return;
    if (!atomic_compare_exchange_strong(&c->refusal_logged_ms, &last, now))
        return; /* another thread logs */
    n = atomic_exchange(&c->refused_unlogged, 0);
    aigw_log(LOG_NOTICE,
             "api keys: %ld API key lookups refused with 503 since the last report: %d already wait for or use "
             "PostgreSQL (half of database.pool_size); keys not cached arrive faster than PostgreSQL answers "
             "(a flood of unknown keys?)",
             n, c->max_lookups);
}

int
aigw_apikey_get(struct aigw_apikey_cache *c, struct aigw_pg_pool *pool, const unsigned char sha[32],
                struct aigw_api_key *out)
{
    uint64_t epoch;
    int rc;

    if (aigw_apikey_cache_peek(c, sha, out))
        return 0;
    if (c->max_lookups > 0 &&
        atomic_fetch_add_explicit(&c->lookups, 1, memory_order_relaxed) >= c->max_lookups) {
        atomic_fetch_sub_explicit(&c->lookups, 1, memory_order_relaxed);
        note_refusal(c);
        return 2;
    }
    epoch = aigw_apikey_cache_epoch(c);
    rc = load(pool, sha, out);
    if (rc == 0)
        aigw_apikey_cache_put(c, sha, out, epoch);
    if (c->max_lookups > 0)
        atomic_fetch_sub_explicit(&c->lookups, 1, memory_order_relaxed);
    return rc;
}
