/* jwt.h - JWT verification with pinned algorithms (libjwt 1.10 checks none of the claims) */
#ifndef AIGW_JWT_H
#define AIGW_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aigw/config.h"

#define AIGW_JWT_MAX_LEN 8192

/* The verified identity carried by a token. */
struct aigw_claims {
    char sub[128];         /* "sub" or "user_id"; may be empty */
    char tenant[128];      /* "tenant_id": a tenant uuid or its code */
    char role[32];         /* "role"; may be empty */
    char kid[64];          /* the key that verified it */
    int64_t exp;
    bool platform_key;     /* verified by a key marked "platform" in the config */
};

/* Verify token (len bytes, not necessarily NUL-terminated) against the keys of
 * cfg at wall-clock time now: the header's alg must equal the pinned alg of
 * the key chosen by kid, the signature must verify, exp is required and
 * checked, nbf/iat checked when present (leeway from cfg), iss/aud when
 * configured, tenant_id required (except from a platform key, whose tokens
 * act for no tenant); a clinic token's user (sub, else user_id) may not
 * start with "api_key:" or "platform:" in any case (aigw's names for API keys
 * and the operator's staff). Returns 0 and fills *out, or -1 with a
 * short static reason in *why (safe to log: never contains token bytes). */
int aigw_jwt_verify(const struct aigw_config *cfg, const char *token, size_t len, int64_t now,
                    struct aigw_claims *out, const char **why);

/* A bounded cache of verified tokens, keyed by SHA-256 of the token text:
 * a hit skips both libjwt decodes (which re-parse JSON, and for RS/ES keys
 * the PEM). An entry is served until the token's exp, at most max_age_s
 * after it was verified. Direct-mapped with lock striping; thread-safe. */
struct aigw_jwt_cache;
struct aigw_jwt_cache *aigw_jwt_cache_create(size_t slots, int max_age_s);
void aigw_jwt_cache_destroy(struct aigw_jwt_cache *c);
/* true and *out filled when token_sha256 was verified under key generation
 * gen (the configuration snapshot's) and is still valid at now. An entry put
 * under another generation misses, so a request that verified with the keys
 * of before a reload can never make its verdict outlive that reload. */
bool aigw_jwt_cache_get(struct aigw_jwt_cache *c, const unsigned char token_sha256[32], int64_t now, uint64_t gen,
                        struct aigw_claims *out);
void aigw_jwt_cache_put(struct aigw_jwt_cache *c, const unsigned char token_sha256[32], int64_t now, uint64_t gen,
                        const struct aigw_claims *claims);
/* Forget everything (key rotation, reload). */
void aigw_jwt_cache_clear(struct aigw_jwt_cache *c);

/* Sign a token with key (HS256: key->key is the secret; RS256/ES256: pem is
 * the PRIVATE key PEM, key->key is ignored). claims_json is a JSON object
 * text with the claims. Returns a malloc'd token or NULL. Used by the
 * aigw-token tool and the tests. */
char *aigw_jwt_sign(const struct aigw_jwt_key *key, const unsigned char *private_pem,
                    size_t private_len, const char *claims_json);

#endif
