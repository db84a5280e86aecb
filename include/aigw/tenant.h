/* tenant.h - tenant context: loaded under RLS, cached in process, invalidated by NOTIFY */
#ifndef AIGW_TENANT_H
#define AIGW_TENANT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "aigw/pg.h"

enum aigw_feature {
    AIGW_FEAT_KNOWLEDGE = 1 << 0,
    AIGW_FEAT_SALES = 1 << 1,
    AIGW_FEAT_INVENTORY = 1 << 2,
    AIGW_FEAT_PATIENT_ANALYTICS = 1 << 3,
    AIGW_FEAT_API_ACCESS = 1 << 4,
};
#define AIGW_N_FEATURES 5
/* Feature names in bit order ("knowledge", "sales", ...). */
extern const char *const aigw_feature_names[AIGW_N_FEATURES];

/* An immutable snapshot of one tenant and its effective plan. Shared by
 * reference: aigw_tenant_get returns a counted reference that the holder
 * drops with aigw_tenant_put. */
struct aigw_tenant {
    atomic_int refs;
    char id[37];
    char code[65];
    char name[201];
    char tier[33];
    char status[16];
    bool ai_enabled;
    long monthly_limit;    /* -1 = unlimited */
    int requests_per_minute;
    int max_tokens;
    unsigned features;     /* enum aigw_feature bits */
    int cache_ttl_s;
    /* lowest-ranked plan that has each feature (the first by name among
     * equal ranks), in enum aigw_feature bit order ("" if none) */
    char required_tier[AIGW_N_FEATURES][33];
};

/* The plan a 403 feature_not_in_plan names for feature index feat (bit
 * order), NULL when no plan has the feature (required_tier is then null). */
const char *aigw_tenant_required_tier(const struct aigw_tenant *t, int feat);

/* True when the tenant may use the AI (status active or trial, ai_enabled). */
bool aigw_tenant_active(const struct aigw_tenant *t);

struct aigw_tenant_cache;

/* ttl_s: how long an entry may be served without a reload (0 = never
 * cached). Owner: caller. */
struct aigw_tenant_cache *aigw_tenant_cache_create(int ttl_s);
void aigw_tenant_cache_destroy(struct aigw_tenant_cache *cache);

/* Find the tenant whose id or code is ref: from the cache, else loaded from
 * PostgreSQL through pool under RLS. Returns 0 with *out set (a reference
 * the caller must put), 1 when no such tenant exists, -1 when the database
 * could not be asked. */
int aigw_tenant_get(struct aigw_tenant_cache *cache, struct aigw_pg_pool *pool, const char *ref,
                    struct aigw_tenant **out);
void aigw_tenant_put(struct aigw_tenant *t);

/* Drop the entry of tenant id (a uuid), or every entry when id is "*" or
 * NULL. Loads racing with the invalidation are not cached. Thread-safe. */
void aigw_tenant_cache_invalidate(struct aigw_tenant_cache *cache, const char *id);

#endif
