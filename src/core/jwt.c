/* jwt.c - verify JWTs with libjwt 1.10 safely: pin alg per key, never decode
 * with a NULL key for auth, check exp/nbf/iat/iss/aud ourselves. */
#include "aigw/jwt.h"

#include <errno.h>
#include <stdbool.h>
#include <jansson.h>
#include <jwt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/util.h"

static int
copy_claim(jwt_t *j, const char *name, char *dst, size_t cap)
{
    const char *v = jwt_get_grant(j, name);

    if (v == NULL)
        return 0;
    if (strlen(v) >= cap)
        return -1;
    memcpy(dst, v, strlen(v) + 1);
    return 1;
}

/* A user id claim: a string (copy_claim), or an integer, which an issuer
 * may well send for a numeric user id and libjwt's jwt_get_grant does not
 * return: its digits. Anything else counts as absent. */
static int
id_claim(jwt_t *j, const char *name, char *dst, size_t cap)
{
    int r = copy_claim(j, name, dst, cap);
    char *raw;
    const char *digits;

    if (r != 0)
        return r;
    raw = jwt_get_grants_json(j, name);
    digits = raw != NULL && raw[0] == '-' ? raw + 1 : raw;
    if (digits != NULL && digits[0] != '\0' && digits[strspn(digits, "0123456789")] == '\0' && strlen(raw) < cap) {
        memcpy(dst, raw, strlen(raw) + 1);
        r = 1;
    }
    free(raw);
    return r;
}

/* Returns 1 if present and valid, 0 if absent, -1 if present but not a
 * non-negative integer. libjwt returns 0 without errno for a string, so a 0
 * is looked at as JSON (0 itself is a valid date: the epoch). */
static int
int_claim(jwt_t *j, const char *name, int64_t *out)
{
    long v;

    errno = 0;
    v = jwt_get_grant_int(j, name);
    if (errno == ENOENT)
        return 0;
    if (v == 0) {
        char *raw = jwt_get_grants_json(j, name);
        bool zero = raw != NULL && strcmp(raw, "0") == 0;

        free(raw);
        if (!zero)
            return -1;
    } else if (v < 0) {
        return -1;
    }
    *out = v;
    return 1;
}

static int
aud_matches(jwt_t *j, const char *want)
{
    char *raw = jwt_get_grants_json(j, "aud");
    json_t *aud;
    int ok = 0;

    if (raw == NULL)
        return 0;
    aud = json_loads(raw, JSON_DECODE_ANY, NULL);
    free(raw);
    if (json_is_string(aud)) {
        ok = strcmp(json_string_value(aud), want) == 0;
    } else if (json_is_array(aud)) {
        size_t i;
        json_t *v;

        json_array_foreach(aud, i, v)
            if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
                ok = 1;
    }
    json_decref(aud);
    return ok;
}

/* aigw names its own actors "api_key:<id>" (an API key's requests) and
 * "platform:<sub>" (the operator's staff): a clinic user named so would pass
 * for one of them in usage and audit rows and share an API key's
 * Idempotency-Key records. Any case, as a reader of the audit trail sees it. */
static bool
reserved_user(const char *sub)
{
    return aigw_has_prefix_ci(sub, "api_key:") || aigw_has_prefix_ci(sub, "platform:");
}

/* Structural pre-check: three non-empty base64url segments, sane length. */
static int
well_formed(const char *tok, size_t len)
{
    size_t dots = 0, seg = 0;

    if (len < 5 || len > AIGW_JWT_MAX_LEN)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char ch = tok[i];

        if (ch == '.') {
            if (seg == 0)
                return 0;
            dots++;
            seg = 0;
        } else if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
                   ch == '-' || ch == '_') {
            seg++;
        } else {
            return 0;
        }
    }
    return dots == 2 && seg > 0;
}

int
aigw_jwt_verify(const struct aigw_config *cfg, const char *token, size_t len, int64_t now,
                struct aigw_claims *out, const char **why)
{
    const struct aigw_jwt_key *key;
    jwt_t *peek = NULL, *j = NULL;
    jwt_alg_t hdr_alg;
    char tok[AIGW_JWT_MAX_LEN + 1], kid[64] = "";
    const char *a, *k;
    int64_t exp = 0, nbf = 0, iat = 0;
    int has_kid = 0, rc = -1, r;

    memset(out, 0, sizeof(*out));
    *why = "malformed token";
    if (!well_formed(token, len))
        return -1;
    memcpy(tok, token, len);
    tok[len] = '\0';

    /* 1) header only, to choose the key: not an authentication decision */
    if (jwt_decode(&peek, tok, NULL, 0) != 0 || peek == NULL)
        goto out;
    a = jwt_get_header(peek, "alg");
    k = jwt_get_header(peek, "kid");
    hdr_alg = a ? jwt_str_alg(a) : JWT_ALG_INVAL;
    if (k != NULL) {
        if (strlen(k) >= sizeof(kid)) {
            *why = "unknown key id";
            goto out;
        }
        memcpy(kid, k, strlen(k) + 1);
        has_kid = 1;
    }
    jwt_free(peek); /* a and k dangle from here */
    peek = NULL;
    key = aigw_config_find_key(cfg, has_kid ? kid : NULL);
    if (key == NULL) {
        *why = "unknown key id";
        goto out;
    }
    if (hdr_alg != key->alg) {
        *why = "algorithm not allowed for this key";
        goto out;
    }

    /* 2) the real verification; key is never NULL here */
    if (jwt_decode(&j, tok, key->key, (unsigned int)key->key_len) != 0 || j == NULL) {
        *why = "bad signature";
        goto out;
    }
    if (jwt_get_alg(j) != key->alg) {
        *why = "algorithm not allowed for this key";
        goto out;
    }

    /* 3) claims libjwt 1.10 does not check */
    r = int_claim(j, "exp", &exp);
    if (r <= 0) {
        *why = "exp claim missing or invalid";
        goto out;
    }
    if (exp < now - cfg->jwt_leeway_s) { /* exp + leeway overflows for an exp near INT64_MAX */
        *why = "token expired";
        goto out;
    }
    r = int_claim(j, "nbf", &nbf);
    if (r < 0 || (r > 0 && nbf - cfg->jwt_leeway_s > now)) {
        *why = "token not yet valid";
        goto out;
    }
    r = int_claim(j, "iat", &iat);
    if (r < 0 || (r > 0 && iat - cfg->jwt_leeway_s > now)) {
        *why = "token issued in the future";
        goto out;
    }
    if (cfg->jwt_issuer != NULL) {
        const char *iss = jwt_get_grant(j, "iss");

        if (iss == NULL || strcmp(iss, cfg->jwt_issuer) != 0) {
            *why = "wrong issuer";
            goto out;
        }
    }
    if (cfg->jwt_audience != NULL && !aud_matches(j, cfg->jwt_audience)) {
        *why = "wrong audience";
        goto out;
    }
    /* a platform key's tokens act for no tenant, so they need no tenant_id */
    r = copy_claim(j, "tenant_id", out->tenant, sizeof(out->tenant));
    if (r < 0 || (!key->platform && (r == 0 || out->tenant[0] == '\0'))) {
        *why = "tenant_id claim missing or invalid";
        goto out;
    }
    if (id_claim(j, "sub", out->sub, sizeof(out->sub)) < 0 ||
        (out->sub[0] == '\0' && id_claim(j, "user_id", out->sub, sizeof(out->sub)) < 0) ||
        copy_claim(j, "role", out->role, sizeof(out->role)) < 0) {
        *why = "claim too long";
        goto out;
    }
    /* a platform key's users are "platform:<sub>" whatever their sub */
    if (!key->platform && reserved_user(out->sub)) {
        *why = "sub or user_id uses a reserved prefix (api_key:, platform:)";
        goto out;
    }
    memcpy(out->kid, key->kid, sizeof(out->kid));
    out->exp = exp;
    out->platform_key = key->platform;
    *why = NULL;
    rc = 0;
out:
    jwt_free(peek);
    jwt_free(j);
    explicit_bzero(tok, len);
    if (rc != 0)
        memset(out, 0, sizeof(*out));
    return rc;
}

char *
aigw_jwt_sign(const struct aigw_jwt_key *key, const unsigned char *private_pem, size_t private_len,
              const char *claims_json)
{
    jwt_t *j = NULL;
    char *tok = NULL, *res = NULL;
    const unsigned char *k = key->alg == JWT_ALG_HS256 ? key->key : private_pem;
    size_t klen = key->alg == JWT_ALG_HS256 ? key->key_len : private_len;

    if (k == NULL || klen == 0 || jwt_new(&j) != 0)
        goto out;
    if (jwt_add_grants_json(j, claims_json) != 0)
        goto out;
    if (jwt_add_header(j, "kid", key->kid) != 0)
        goto out;
    if (jwt_set_alg(j, key->alg, k, (int)klen) != 0)
        goto out;
    tok = jwt_encode_str(j);
    if (tok != NULL)
        res = aigw_xstrdup(tok);
out:
    free(tok);
    jwt_free(j);
    return res;
}

/* ---- verified-token cache ---- */

#define JWT_CACHE_STRIPES 16

struct jwt_slot {
    unsigned char hash[32];
    int64_t valid_until;       /* 0 = empty */
    uint64_t gen;              /* configuration generation whose keys verified it */
    struct aigw_claims claims;
};

struct aigw_jwt_cache {
    size_t n;                  /* slots, a power of two */
    int max_age_s;
    pthread_mutex_t locks[JWT_CACHE_STRIPES]; /* lock i guards slots with index % STRIPES == i */
    struct jwt_slot *slots;
};

struct aigw_jwt_cache *
aigw_jwt_cache_create(size_t slots, int max_age_s)
{
    struct aigw_jwt_cache *c = aigw_xcalloc(1, sizeof(*c));
    size_t n = 64;

    while (n < slots)
        n *= 2;
    c->n = n;
    c->max_age_s = max_age_s;
    c->slots = aigw_xcalloc(n, sizeof(*c->slots));
    for (int i = 0; i < JWT_CACHE_STRIPES; i++)
        pthread_mutex_init(&c->locks[i], NULL);
    return c;
}

void
aigw_jwt_cache_destroy(struct aigw_jwt_cache *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < JWT_CACHE_STRIPES; i++)
        pthread_mutex_destroy(&c->locks[i]);
    explicit_bzero(c->slots, c->n * sizeof(*c->slots));
    free(c->slots);
    free(c);
}

static size_t
slot_of(const struct aigw_jwt_cache *c, const unsigned char h[32])
{
    size_t v;

    memcpy(&v, h, sizeof(v));
    return v & (c->n - 1);
}

bool
aigw_jwt_cache_get(struct aigw_jwt_cache *c, const unsigned char token_sha256[32], int64_t now, uint64_t gen,
                   struct aigw_claims *out)
{
    size_t i = slot_of(c, token_sha256);
    pthread_mutex_t *lock = &c->locks[i % JWT_CACHE_STRIPES];
    bool hit;

    pthread_mutex_lock(lock);
    hit = c->slots[i].valid_until > now && c->slots[i].gen == gen && memcmp(c->slots[i].hash, token_sha256, 32) == 0;
    if (hit)
        *out = c->slots[i].claims;
    pthread_mutex_unlock(lock);
    return hit;
}

void
aigw_jwt_cache_put(struct aigw_jwt_cache *c, const unsigned char token_sha256[32], int64_t now, uint64_t gen,
                   const struct aigw_claims *claims)
{
    size_t i = slot_of(c, token_sha256);
    pthread_mutex_t *lock = &c->locks[i % JWT_CACHE_STRIPES];
    int64_t until = claims->exp < now + c->max_age_s ? claims->exp : now + c->max_age_s;

    pthread_mutex_lock(lock);
    memcpy(c->slots[i].hash, token_sha256, 32);
    c->slots[i].claims = *claims;
    c->slots[i].valid_until = until;
    c->slots[i].gen = gen;
    pthread_mutex_unlock(lock);
}

void
aigw_jwt_cache_clear(struct aigw_jwt_cache *c)
{
    for (int s = 0; s < JWT_CACHE_STRIPES; s++)
        pthread_mutex_lock(&c->locks[s]);
    memset(c->slots, 0, c->n * sizeof(*c->slots));
    for (int s = JWT_CACHE_STRIPES - 1; s >= 0; s--)
        pthread_mutex_unlock(&c->locks[s]);
}
