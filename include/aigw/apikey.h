/* apikey.h - API keys: the key format, scopes, the key record and the
 * in-process cache of key records (loaded through a narrow SECURITY DEFINER
 * lookup by SHA-256, invalidated by NOTIFY) */
#ifndef AIGW_APIKEY_H
#define AIGW_APIKEY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct aigw_pg_pool;

/* "aigw_" + 43 base64url characters (256 random bits, no padding). The
 * prefix tells a key from a JWT (whose header always starts with "eyJ"). */
#define AIGW_APIKEY_PREFIX "aigw_"
#define AIGW_APIKEY_PREFIX_LEN 5
#define AIGW_APIKEY_RANDOM_BYTES 32
#define AIGW_APIKEY_LEN (AIGW_APIKEY_PREFIX_LEN + 43)
/* The human-visible part stored in api_keys.prefix: "aigw_" + 8 characters. */
#define AIGW_APIKEY_SHOWN_LEN (AIGW_APIKEY_PREFIX_LEN + 8)
/* How long a revocation marker stays in Redis: longer than any key cache
 * entry can live (api_keys.cache_ttl_s is at most an hour), so an instance
 * that missed the NOTIFY still refuses the key until its entry expires. */
#define AIGW_APIKEY_REVOKED_TTL_S 86400

/* Scopes: which routes a key may call (struct aigw_route.scope). */
enum aigw_scope {
    AIGW_SCOPE_QUERY = 1 << 0, /* /api/ai/query, recommendation, limits, usage */
    AIGW_SCOPE_CHAT = 1 << 1,  /* the OpenAI-compatible routes */
};
#define AIGW_N_SCOPES 2
/* Scope names in bit order ("query", "chat"). */
extern const char *const aigw_scope_names[AIGW_N_SCOPES];

/* The bit of scope name, or 0 when the name is not a scope. */
unsigned aigw_scope_bit(const char *name);
/* Bits of a comma-separated scope list ("query,chat"); unknown names are
 * ignored. */
unsigned aigw_scope_parse_list(const char *list);

/* A new key: fills key (AIGW_APIKEY_LEN + 1 bytes) from the CSPRNG and shown
 * with its first AIGW_APIKEY_SHOWN_LEN characters. Never fails (aborts if
 * the RNG does). The caller wipes key when done. */
void aigw_apikey_generate(char key[AIGW_APIKEY_LEN + 1], char shown[AIGW_APIKEY_SHOWN_LEN + 1]);
/* True when s starts with the key prefix: the caller meant an API key. */
bool aigw_apikey_has_prefix(const char *s);
/* True when s (len bytes) has the exact key format: the prefix, then 43
 * base64url characters. Pure; no lookup. */
bool aigw_apikey_well_formed(const char *s, size_t len);

/* Parse an RFC 3339 timestamp ("2026-12-01T00:00:00Z", "…T10:00:00.5+02:00")
 * into seconds since the epoch (fractions are dropped). Strict: every field
 * in range (leap days included), an offset or Z required. false on junk,
 * and for an instant after 9999-12-31T23:59:59Z (a negative offset on the
 * last day of 9999), which has no RFC 3339 form to be shown back in. */
bool aigw_parse_rfc3339(const char *s, int64_t *out);

/* Redis keys of a key, in the tenant's hash slot: the revocation marker and
 * the key's own sliding window. */
void aigw_apikey_revoked_key(const char *tenant_id, const char *key_id, char *buf, size_t cap);
void aigw_apikey_window_key(const char *tenant_id, const char *key_id, char *buf, size_t cap);

/* What authentication needs to know about a key; never the secret. */
struct aigw_api_key {
    char id[37];
    char tenant_id[37];
    unsigned scopes;           /* enum aigw_scope bits */
    int requests_per_minute;   /* 0 = only the tenant's limit applies */
    int64_t expires_at;        /* wall-clock seconds; 0 = never */
    bool revoked;
};

/* A bounded, direct-mapped cache of key records keyed by the SHA-256 of the
 * key, with lock striping; an entry is served for at most ttl_s. An epoch
 * makes invalidation race-free: a load that started before an invalidation
 * is returned to its caller but never cached. Thread-safe. */
struct aigw_apikey_cache;

/* slots is rounded up to a power of two; ttl_s 0 disables caching.
 * max_lookups bounds the misses that wait for or use the database pool at
 * once (aigw passes max(1, database.pool_size / 2)); 0 = no bound. Never
 * fails. Owner: the caller (aigw_apikey_cache_destroy). */
struct aigw_apikey_cache *aigw_apikey_cache_create(size_t slots, int ttl_s, int max_lookups);
void aigw_apikey_cache_destroy(struct aigw_apikey_cache *c);

/* The record of the key whose SHA-256 is sha: from the cache (stored
 * hashes compared in constant time), else from PostgreSQL through pool
 * (aigw_api_key_lookup). Returns 0 with *out filled (revoked and expired
 * keys too: the caller decides), 1 when no key has that hash, -1 when the
 * database could not be asked (logged), 2 when it was not asked: a miss
 * while max_lookups others are at the pool (logged, rate-limited). A hit
 * takes one stripe lock and nothing else. */
int aigw_apikey_get(struct aigw_apikey_cache *c, struct aigw_pg_pool *pool, const unsigned char sha[32],
                    struct aigw_api_key *out);

/* Put a record (used by aigw_apikey_get and the unit tests); dropped when
 * the cache was invalidated since epoch was read with aigw_apikey_cache_epoch. */
uint64_t aigw_apikey_cache_epoch(struct aigw_apikey_cache *c);
void aigw_apikey_cache_put(struct aigw_apikey_cache *c, const unsigned char sha[32], const struct aigw_api_key *k,
                           uint64_t epoch);
/* Cached record only (no database); true on a hit. */
bool aigw_apikey_cache_peek(struct aigw_apikey_cache *c, const unsigned char sha[32], struct aigw_api_key *out);

/* Drop the entry of key id (a uuid), or every entry when id is "*" or NULL.
 * NULL-safe on c. */
void aigw_apikey_cache_invalidate(struct aigw_apikey_cache *c, const char *id);

#endif
