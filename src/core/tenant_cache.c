/* tenant_cache.c - tenant snapshots keyed by the JWT's tenant reference (id or
 * code). An epoch counter makes invalidation race-free: a load that started
 * before an invalidation is returned to its caller but never cached. */
#include "aigw/tenant.h"

#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/log.h"
#include "aigw/util.h"

#define BUCKETS 1024
#define WARNED 64 /* impossible limit values remembered as logged */

const char *const aigw_feature_names[AIGW_N_FEATURES] = {
    "knowledge", "sales", "inventory", "patient_analytics", "api_access",
};

struct entry {
    struct entry *next;
    char *ref;
    struct aigw_tenant *tenant;
    int64_t loaded_ms;
};

struct aigw_tenant_cache {
    int ttl_ms;
    pthread_mutex_t lock;  /* guards buckets and epoch */
    uint64_t epoch;        /* bumped by every invalidation */
    struct entry *buckets[BUCKETS];
    uint64_t warned[WARNED]; /* hashes of the impossible values logged (a ring, guarded by lock) */
    unsigned n_warned;
};

/* Each limit as the tenant's override (text, read here: a value that
 * cannot work is not cast in SQL, where it failed the load) beside the
 * plan's, in the order of LIMITS. The plan a feature requires is the
 * lowest-ranked one that has it, the first by tier name among plans of
 * equal rank ('' when no plan has it). */
static const char LOAD_SQL[] =
    "SELECT t.id, t.code, t.name, t.tier, t.status, t.ai_enabled,"
    " t.overrides->>'monthly_query_limit', p.monthly_query_limit,"
    " t.overrides->>'requests_per_minute', p.requests_per_minute,"
    " t.overrides->>'max_tokens', p.max_tokens,"
    " array_to_string(p.features, ','), t.cache_ttl_s,"
    " (SELECT string_agg(COALESCE((SELECT x.tier FROM plans x WHERE f = ANY(x.features)"
    "   ORDER BY x.rank, x.tier LIMIT 1), ''), ',' ORDER BY o)"
    "  FROM unnest(ARRAY['knowledge','sales','inventory','patient_analytics','api_access']) WITH ORDINALITY AS u(f, o))"
    " FROM tenants t JOIN plans p ON p.tier = t.tier";

#define LIMITS_COL 6 /* the first override column of LOAD_SQL */

/* The limits a tenant's plan sets and an override may replace, with the
 * least value that can work (the API's and the database's lower bounds,
 * sql/002 and sql/015); at most INT_MAX, the columns' type. */
static const struct {
    const char *key;
    long min;
} LIMITS[] = {{"monthly_query_limit", -1}, {"requests_per_minute", 1}, {"max_tokens", 1}};
#define N_LIMITS (sizeof(LIMITS) / sizeof(LIMITS[0]))

bool
aigw_tenant_active(const struct aigw_tenant *t)
{
    return t->ai_enabled && (strcmp(t->status, "active") == 0 || strcmp(t->status, "trial") == 0);
}

const char *
aigw_tenant_required_tier(const struct aigw_tenant *t, int feat)
{
    return t->required_tier[feat][0] != '\0' ? t->required_tier[feat] : NULL;
}

struct aigw_tenant_cache *
aigw_tenant_cache_create(int ttl_s)
{
    struct aigw_tenant_cache *c = aigw_xcalloc(1, sizeof(*c));

    c->ttl_ms = ttl_s * 1000;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

void
aigw_tenant_put(struct aigw_tenant *t)
{
    if (t != NULL && atomic_fetch_sub(&t->refs, 1) == 1)
        free(t);
}

static void
free_entry(struct entry *e)
{
    aigw_tenant_put(e->tenant);
    free(e->ref);
    free(e);
}

void
aigw_tenant_cache_destroy(struct aigw_tenant_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < BUCKETS; i++)
        for (struct entry *e = c->buckets[i], *next; e != NULL; e = next) {
            next = e->next;
            free_entry(e);
        }
    pthread_mutex_destroy(&c->lock);
    free(c);
}

static size_t
bucket_of(const char *ref)
{
    return (size_t)(aigw_hash_str(ref) % BUCKETS);
}

static void
copy_field(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Whether this value of LIMITS[limit] (the plan's or the override) of
 * this tenant was not logged yet (and is from now on). */
static bool
first_warning(struct aigw_tenant_cache *c, const char *id, bool plan, size_t limit, const char *value)
{
    char buf[256];
    uint64_t h;
    bool first = true;

    snprintf(buf, sizeof(buf), "%s %c%zu %s", id, plan ? 'p' : 'o', limit, value);
    h = aigw_hash_str(buf);
    pthread_mutex_lock(&c->lock);
    for (unsigned i = 0; i < WARNED && first; i++)
        first = c->warned[i] != h;
    if (first)
        c->warned[c->n_warned++ % WARNED] = h;
    pthread_mutex_unlock(&c->lock);
    return first;
}

/* The limits in force: the override where it can work, else the plan's.
 * A value that cannot work only gets into the tables past their CHECKs
 * (an override written before sql/015): an override of 0 requests per
 * minute refused every request 429 with "Retry-After: 1" for ever. Such an
 * override is ignored; a plan's makes the load fail (false: its tenants'
 * requests answer 503). Either is logged once per value. */
static bool
read_limits(struct aigw_tenant_cache *c, const PGresult *r, const struct aigw_tenant *t, long out[N_LIMITS])
{
    for (size_t i = 0; i < N_LIMITS; i++) {
        int col = LIMITS_COL + 2 * (int)i;
        const char *ov = PQgetisnull(r, 0, col) ? NULL : PQgetvalue(r, 0, col), *plan = PQgetvalue(r, 0, col + 1);

        if (ov != NULL && aigw_parse_long(ov, LIMITS[i].min, INT_MAX, &out[i]))
            continue;
        if (!aigw_parse_long(plan, LIMITS[i].min, INT_MAX, &out[i])) {
            if (first_warning(c, t->id, true, i, plan))
                aigw_log(LOG_ERR, "tenant %s (%s): plan %s has %s = %s, which cannot work (%ld..%d); "
                         "its requests fail 503", t->code, t->id, t->tier, LIMITS[i].key, plan, LIMITS[i].min, INT_MAX);
            return false;
        }
        if (ov != NULL && first_warning(c, t->id, false, i, ov))
            aigw_log(LOG_WARNING, "tenant %s (%s): overrides.%s = %.40s cannot work (an integer in %ld..%d); "
                     "the plan's %ld applies", t->code, t->id, LIMITS[i].key, ov, LIMITS[i].min, INT_MAX, out[i]);
    }
    return true;
}

/* 0 found, 1 not found, -1 error */
static int
load(struct aigw_tenant_cache *c, struct aigw_pg_pool *pool, const char *ref, struct aigw_tenant **out)
{
    PGconn *conn = aigw_pg_acquire(pool, 2000);
    PGresult *r;
    struct aigw_tenant *t;
    long limits[N_LIMITS];
    int rc;

    if (conn == NULL)
        return -1;
    r = aigw_pg_exec_tenant(conn, ref, LOAD_SQL, 0, NULL);
    aigw_pg_release(pool, conn);
    if (r == NULL)
        return -1;
    if (PQntuples(r) != 1) {
        rc = 1;
        goto out;
    }
    t = aigw_xcalloc(1, sizeof(*t));
    atomic_init(&t->refs, 1);
    copy_field(t->id, sizeof(t->id), PQgetvalue(r, 0, 0));
    copy_field(t->code, sizeof(t->code), PQgetvalue(r, 0, 1));
    copy_field(t->name, sizeof(t->name), PQgetvalue(r, 0, 2));
    copy_field(t->tier, sizeof(t->tier), PQgetvalue(r, 0, 3));
    copy_field(t->status, sizeof(t->status), PQgetvalue(r, 0, 4));
    t->ai_enabled = PQgetvalue(r, 0, 5)[0] == 't';
    if (!read_limits(c, r, t, limits)) {
        free(t);
        rc = -1;
        goto out;
    }
    t->monthly_limit = limits[0];
    t->requests_per_minute = (int)limits[1];
    t->max_tokens = (int)limits[2];
    t->features = aigw_name_bits(PQgetvalue(r, 0, 12), aigw_feature_names, AIGW_N_FEATURES);
    t->cache_ttl_s = (int)strtol(PQgetvalue(r, 0, 13), NULL, 10);
    {
        const char *p = PQgetvalue(r, 0, 14);

        for (int i = 0; i < AIGW_N_FEATURES && *p; i++) {
            size_t n = strcspn(p, ",");

            if (n < sizeof(t->required_tier[i]))
                memcpy(t->required_tier[i], p, n);
            p += n;
            if (*p == ',')
                p++;
        }
    }
    *out = t;
    rc = 0;
out:
    PQclear(r);
    return rc;
}

int
aigw_tenant_get(struct aigw_tenant_cache *c, struct aigw_pg_pool *pool, const char *ref,
                struct aigw_tenant **out)
{
    size_t b = bucket_of(ref);
    int64_t now = aigw_now_ms();
    struct aigw_tenant *t = NULL;
    uint64_t epoch;
    int rc;

    *out = NULL;
    pthread_mutex_lock(&c->lock);
    for (struct entry **pe = &c->buckets[b]; *pe != NULL; pe = &(*pe)->next) {
        struct entry *e = *pe;

        if (strcmp(e->ref, ref) != 0)
            continue;
        if (now - e->loaded_ms < c->ttl_ms) {
            t = e->tenant;
            atomic_fetch_add(&t->refs, 1);
        } else {
            *pe = e->next;
            free_entry(e);
        }
        break;
    }
    epoch = c->epoch;
    pthread_mutex_unlock(&c->lock);
    if (t != NULL) {
        *out = t;
        return 0;
    }

    rc = load(c, pool, ref, &t);
    if (rc != 0)
        return rc;
    pthread_mutex_lock(&c->lock);
    if (c->epoch == epoch && c->ttl_ms > 0) {
        bool present = false;

        for (struct entry *e = c->buckets[b]; e != NULL; e = e->next)
            present |= strcmp(e->ref, ref) == 0;
        if (!present) {
            struct entry *e = aigw_xcalloc(1, sizeof(*e));

            e->ref = aigw_xstrdup(ref);
            e->tenant = t;
            e->loaded_ms = now;
            atomic_fetch_add(&t->refs, 1);
            e->next = c->buckets[b];
            c->buckets[b] = e;
        }
    }
    pthread_mutex_unlock(&c->lock);
    *out = t;
    return 0;
}

void
aigw_tenant_cache_invalidate(struct aigw_tenant_cache *c, const char *id)
{
    bool all = id == NULL || strcmp(id, "*") == 0;
    int dropped = 0;

    pthread_mutex_lock(&c->lock);
    c->epoch++;
    for (size_t i = 0; i < BUCKETS; i++) {
        for (struct entry **pe = &c->buckets[i]; *pe != NULL;) {
            struct entry *e = *pe;

            if (all || strcmp(e->tenant->id, id) == 0) {
                *pe = e->next;
                free_entry(e);
                dropped++;
            } else {
                pe = &e->next;
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    aigw_log(LOG_DEBUG, "tenant cache: invalidated %s (%d entries)", all ? "all" : id, dropped);
}
