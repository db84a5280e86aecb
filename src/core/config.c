/* config.c - parse and validate the JSON configuration; strict about unknown keys */
#include "aigw/config.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/util.h"

const char *const aigw_query_type_names[AIGW_QUERY_TYPES] = {
    "knowledge", "sales", "inventory", "patient_analytics",
};

int
aigw_query_type_index(const char *name)
{
    for (int i = 0; i < AIGW_QUERY_TYPES; i++)
        if (strcmp(name, aigw_query_type_names[i]) == 0)
            return i;
    return -1;
}

struct ctx {
    char *err;
    size_t errlen;
    int failed;
    const char *where;     /* the object being read ("upstream", "jwt.keys[0]"), for messages */
};

/* "where.key" of the member key of the object being read, into buf. */
static const char *
key_path(const struct ctx *c, const char *key, char *buf, size_t cap)
{
    if (c->where == NULL)
        return key;
    snprintf(buf, cap, "%s.%s", c->where, key);
    return buf;
}

static void __attribute__((format(printf, 2, 3)))
fail(struct ctx *c, const char *fmt, ...)
{
    va_list ap;

    if (c->failed++)
        return;
    va_start(ap, fmt);
    vsnprintf(c->err, c->errlen, fmt, ap);
    va_end(ap);
}

/* Expand ${VAR} and ${VAR:-default}; returns a malloc'd string or NULL. */
static char *
expand(struct ctx *c, const char *where, const char *s)
{
    size_t cap = strlen(s) + 64, len = 0;
    char *out = aigw_xmalloc(cap);

    while (*s) {
        const char *val = NULL, *end;
        char *name, *dflt;
        size_t n;

        if (s[0] != '$' || s[1] != '{') {
            if (len + 2 > cap)
                out = aigw_xrealloc(out, cap *= 2);
            out[len++] = *s++;
            continue;
        }
        end = strchr(s, '}');
        if (end == NULL) {
            fail(c, "%s: unterminated ${ in value", where);
            free(out);
            return NULL;
        }
        n = (size_t)(end - (s + 2));
        if (n == 0) {
            fail(c, "%s: bad variable reference", where);
            free(out);
            return NULL;
        }
        name = aigw_xstrndup(s + 2, n); /* no length limit: a default may be a long URL */
        dflt = strstr(name, ":-");
        if (dflt != NULL) {
            *dflt = '\0';
            dflt += 2;
        }
        val = getenv(name);
        if (val == NULL || *val == '\0')
            val = dflt;
        if (val == NULL) {
            fail(c, "%s: environment variable %s is not set", where, name);
            free(name);
            free(out);
            return NULL;
        }
        n = strlen(val);
        while (len + n + 1 > cap)
            out = aigw_xrealloc(out, cap *= 2);
        memcpy(out + len, val, n);
        len += n;
        free(name);
        s = end + 1;
    }
    out[len] = '\0';
    return out;
}

static void
check_keys(struct ctx *c, json_t *obj, const char *where, const char *const *allowed)
{
    const char *k;
    json_t *v;

    if (!json_is_object(obj)) {
        fail(c, "%s: must be an object", where);
        return;
    }
    json_object_foreach(obj, k, v) {
        size_t i;

        if (k[0] == '_')
            continue; /* "_comment" keys document the file */
        for (i = 0; allowed[i] != NULL; i++)
            if (strcmp(k, allowed[i]) == 0)
                break;
        if (allowed[i] == NULL)
            fail(c, "%s: unknown key \"%s\"", where, k);
    }
}

static void
get_int(struct ctx *c, json_t *obj, const char *key, long min, long max, int *out)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;

    if (v == NULL)
        return;
    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        char path[96];

        fail(c, "%s: must be an integer in [%ld, %ld]", key_path(c, key, path, sizeof(path)), min, max);
        return;
    }
    *out = (int)json_integer_value(v);
}

static void
get_size(struct ctx *c, json_t *obj, const char *key, long min, long max, size_t *out)
{
    int v = (int)*out;

    get_int(c, obj, key, min, max, &v);
    *out = (size_t)v;
}

/* Replace *out with the expanded string value of obj[key], if present. */
static void
get_str(struct ctx *c, json_t *obj, const char *key, char **out)
{
    json_t *v = obj ? json_object_get(obj, key) : NULL;
    char path[96];
    char *s;

    if (v == NULL || json_is_null(v))
        return;
    if (!json_is_string(v)) {
        fail(c, "%s: must be a string", key_path(c, key, path, sizeof(path)));
        return;
    }
    s = expand(c, key_path(c, key, path, sizeof(path)), json_string_value(v));
    if (s == NULL)
        return;
    free(*out);
    *out = s;
}

/* The largest key or secret file read: far more than any key needs. */
#define KEY_FILE_MAX (1024 * 1024)

/* The whole of a key or secret file into *out (malloc'd, *len bytes). NULL
 * when read, else why not (in eb when from errno): a directory, a read
 * error or a file over KEY_FILE_MAX are refused, not read as empty or cut
 * short. */
static const char *
read_file(const char *path, unsigned char **out, size_t *len, char *eb, size_t eb_cap)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0, r;
    const char *why = NULL;

    if (f == NULL)
        return strerror_r(errno, eb, eb_cap);
    do {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            if (cap > KEY_FILE_MAX + 1)
                cap = KEY_FILE_MAX + 1; /* one byte more tells a longer file */
            buf = aigw_xrealloc(buf, cap);
        }
        r = fread(buf + n, 1, cap - n, f);
        n += r;
    } while (r > 0 && n <= KEY_FILE_MAX);
    if (ferror(f)) /* a directory: EISDIR */
        why = strerror_r(errno, eb, eb_cap);
    else if (n > KEY_FILE_MAX)
        why = "larger than 1 MiB";
    fclose(f);
    if (why != NULL) {
        explicit_bzero(buf, n);
        free(buf);
        return why;
    }
    *out = buf;
    *len = n;
    return NULL;
}

/* A file the configuration names (where: the object, key: the member, or
 * NULL when where names it) is an absolute path: a relative one is
 * read against the working directory, which is not the same for
 * `aigw --check-config` in a shell (it passed there) and for the service
 * (/, where a reload or the next start then refused it). */
static bool
absolute_file(struct ctx *c, const char *where, const char *key, const char *file)
{
    if (file[0] == '/')
        return true;
    fail(c, "%s: %s%smust be an absolute path (a relative one depends on the working directory)", where,
         key != NULL ? key : "", key != NULL ? " " : "");
    return false;
}

static EVP_PKEY *
public_key(const struct aigw_jwt_key *k)
{
    BIO *b = BIO_new_mem_buf(k->key, (int)k->key_len);
    EVP_PKEY *pk = b != NULL ? PEM_read_bio_PUBKEY(b, NULL, NULL, NULL) : NULL;

    BIO_free(b);
    ERR_clear_error(); /* a PEM that did not parse leaves its reasons queued */
    return pk;
}

/* Whether an RS256/ES256 key's PEM is a public key libjwt can verify its
 * algorithm with: RSA for RS256, EC on P-256 for ES256. Checked at load,
 * since libjwt only parses the key when a token arrives, and a key it
 * cannot use turns every token into a 401. */
static bool
public_key_fits(const struct aigw_jwt_key *k)
{
    EVP_PKEY *pk = public_key(k);
    char group[64];
    bool ok = false;

    if (pk == NULL)
        return false;
    if (k->alg == JWT_ALG_RS256)
        ok = EVP_PKEY_get_base_id(pk) == EVP_PKEY_RSA;
    else if (k->alg == JWT_ALG_ES256)
        ok = EVP_PKEY_get_base_id(pk) == EVP_PKEY_EC &&
             EVP_PKEY_get_group_name(pk, group, sizeof(group), NULL) == 1 &&
             OBJ_txt2nid(group) == NID_X9_62_prime256v1;
    EVP_PKEY_free(pk);
    return ok;
}

static void
parse_key(struct ctx *c, json_t *k, size_t idx, struct aigw_jwt_key *key)
{
    static const char *const allowed[] = {"kid", "alg", "secret", "secret_file",
                                          "public_key", "public_key_file", "platform", NULL};
    char where[32], *kid = NULL, *alg = NULL, *secret = NULL, *file = NULL, *pem = NULL, eb[128];
    const char *why;
    json_t *platform = json_object_get(k, "platform");

    const char *outer = c->where;

    snprintf(where, sizeof(where), "jwt.keys[%zu]", idx);
    c->where = where;
    check_keys(c, k, where, allowed);
    if (platform != NULL && !json_is_boolean(platform))
        fail(c, "%s: platform must be a boolean", where);
    key->platform = json_is_true(platform);
    get_str(c, k, "kid", &kid);
    get_str(c, k, "alg", &alg);
    get_str(c, k, "secret", &secret);
    get_str(c, k, "public_key", &pem);
    if (c->failed)
        goto out;
    if (kid == NULL || *kid == '\0' || strlen(kid) >= sizeof(key->kid)) {
        fail(c, "%s: kid is required (1..63 chars)", where);
        goto out;
    }
    snprintf(key->kid, sizeof(key->kid), "%s", kid);
    key->alg = alg ? jwt_str_alg(alg) : JWT_ALG_INVAL;
    if (key->alg != JWT_ALG_HS256 && key->alg != JWT_ALG_RS256 && key->alg != JWT_ALG_ES256) {
        fail(c, "%s: alg must be HS256, RS256 or ES256", where);
        goto out;
    }
    if (key->alg == JWT_ALG_HS256) {
        get_str(c, k, "secret_file", &file);
        if (secret != NULL) {
            key->key = (unsigned char *)secret;
            key->key_len = strlen(secret);
            secret = NULL;
        } else if (file != NULL && !absolute_file(c, where, "secret_file", file)) {
            goto out;
        } else if (file != NULL && (why = read_file(file, &key->key, &key->key_len, eb, sizeof(eb))) != NULL) {
            fail(c, "%s: cannot read secret_file %s: %s", where, file, why);
            goto out;
        }
        /* trailing CR/LF dropped: a file's final newline is not part of the secret */
        while (key->key_len > 0 && (key->key[key->key_len - 1] == '\n' || key->key[key->key_len - 1] == '\r'))
            key->key_len--;
        if (key->key == NULL || key->key_len < 32)
            fail(c, "%s: HS256 needs a secret of at least 32 bytes", where);
        else if (memmem(key->key, key->key_len, "-----BEGIN", 10) != NULL) /* a public key anyone may hold */
            fail(c, "%s: an HS256 secret must not be a PEM key (RS256/ES256 keys go in public_key or "
                    "public_key_file)", where);
    } else {
        get_str(c, k, "public_key_file", &file);
        if (pem != NULL) {
            key->key = (unsigned char *)pem;
            key->key_len = strlen(pem);
            pem = NULL;
        } else if (file != NULL && !absolute_file(c, where, "public_key_file", file)) {
            goto out;
        } else if (file != NULL && (why = read_file(file, &key->key, &key->key_len, eb, sizeof(eb))) != NULL) {
            fail(c, "%s: cannot read public_key_file %s: %s", where, file, why);
            goto out;
        }
        if (key->key == NULL || memmem(key->key, key->key_len, "PRIVATE KEY", 11) != NULL ||
            !public_key_fits(key))
            fail(c, "%s: %s needs %s public key (SPKI PEM) that OpenSSL can read", where,
                 key->alg == JWT_ALG_RS256 ? "RS256" : "ES256", key->alg == JWT_ALG_RS256 ? "an RSA" : "a P-256 EC");
    }
out:
    c->where = outer;
    free(kid);
    free(alg);
    free(secret);
    free(file);
    free(pem);
}

/* redis.password_file: the password for Redis's AUTH, kept out of the
 * configuration and the environment (a systemd credential, say); every
 * trailing CR and LF is dropped. */
static void
read_redis_password(struct ctx *c, json_t *sec, struct aigw_config *cfg)
{
    char *file = NULL;
    unsigned char *buf = NULL;
    size_t len = 0;
    char eb[128];
    const char *why;

    get_str(c, sec, "password_file", &file);
    if (file == NULL)
        return;
    if (!absolute_file(c, "redis.password_file", NULL, file))
        goto out;
    if ((why = read_file(file, &buf, &len, eb, sizeof(eb))) != NULL) {
        fail(c, "redis.password_file: cannot read %s: %s", file, why);
        goto out;
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
        len--;
    if (len == 0 || memchr(buf, '\0', len) != NULL) {
        fail(c, "redis.password_file: %s holds no password (empty, or a NUL byte in it)", file);
        goto out;
    }
    cfg->redis_password = aigw_xstrndup((const char *)buf, len);
out:
    if (buf != NULL) {
        explicit_bzero(buf, len);
        free(buf);
    }
    free(file);
}

/* The key an HMAC key is to HMAC-SHA256: one over the 64-byte block is
 * replaced by its SHA-256, and a shorter one is padded with zero bytes, so
 * trailing zero bytes change nothing. */
static size_t
hmac_effective_key(const struct aigw_jwt_key *k, unsigned char out[64])
{
    size_t n = k->key_len;

    if (n > 64) {
        aigw_sha256(k->key, n, out);
        n = 32;
    } else {
        memcpy(out, k->key, n);
    }
    while (n > 0 && out[n - 1] == 0)
        n--;
    return n;
}

/* Whether two keys verify the same signatures: HMAC secrets as HMAC sees
 * them, public keys as keys (the same key in another PEM layout - a file's
 * trailing newline, CRLF lines - is the same key). */
static bool
same_key(const struct aigw_jwt_key *a, const struct aigw_jwt_key *b)
{
    bool same = false;

    if (a->key == NULL || b->key == NULL)
        return false;
    if (a->alg == JWT_ALG_HS256 && b->alg == JWT_ALG_HS256) {
        unsigned char ka[64], kb[64];
        size_t na = hmac_effective_key(a, ka), nb = hmac_effective_key(b, kb);

        same = na == nb && CRYPTO_memcmp(ka, kb, na) == 0;
        explicit_bzero(ka, sizeof(ka));
        explicit_bzero(kb, sizeof(kb));
    } else if (a->alg != JWT_ALG_HS256 && b->alg != JWT_ALG_HS256) {
        EVP_PKEY *pa = public_key(a), *pb = public_key(b);

        same = pa != NULL && pb != NULL && EVP_PKEY_eq(pa, pb) == 1;
        EVP_PKEY_free(pa);
        EVP_PKEY_free(pb);
    }
    /* byte for byte as before, whatever the algorithms */
    return same || (a->key_len == b->key_len && memcmp(a->key, b->key, a->key_len) == 0);
}

/* A platform key must not share its key material with a clinic key: whoever
 * holds a clinic secret could otherwise sign platform tokens (kid is just a
 * header the signer chooses). */
static void
check_platform_keys(struct ctx *c, const struct aigw_config *cfg)
{
    for (size_t i = 0; i < cfg->n_jwt_keys; i++) {
        const struct aigw_jwt_key *p = &cfg->jwt_keys[i];

        for (size_t j = 0; p->platform && j < cfg->n_jwt_keys; j++) {
            const struct aigw_jwt_key *o = &cfg->jwt_keys[j];

            if (!o->platform && same_key(o, p))
                fail(c, "jwt.keys[%zu]: a platform key must not share its key with a clinic key", i);
        }
    }
}

/* A backend's base URL, read as libcurl reads it: http or https, a host, a
 * port 1..65535 if one is given. The API paths (/v1/chat/completions,
 * /health) are appended to it, so a query or a fragment would swallow them;
 * user:password is refused too (llama-server takes an API key, not Basic
 * auth, and a URL is no place for a secret). */
static void
check_backend_url(struct ctx *c, const char *where, const char *url)
{
    CURLU *u = NULL;
    CURLUcode rc;
    char *part = NULL;
    long port;

    if (url == NULL || !(aigw_has_prefix_ci(url, "http://") || aigw_has_prefix_ci(url, "https://"))) {
        fail(c, "%s: url must start with http:// or https://", where);
        return;
    }
    if (strlen(url) > AIGW_MAX_BACKEND_URL) {
        fail(c, "%s: url is longer than %d characters", where, AIGW_MAX_BACKEND_URL);
        return;
    }
    if (strstr(url, "://")[3] == '/') { /* libcurl would take the path's first segment for the host */
        fail(c, "%s: url has no host", where);
        return;
    }
    u = curl_url();
    if (u == NULL) {
        fail(c, "%s: out of memory", where);
        return;
    }
    rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc != CURLUE_OK)
        fail(c, "%s: url is not a valid URL (%s)", where, curl_url_strerror(rc));
    else if (curl_url_get(u, CURLUPART_USER, &part, 0) != CURLUE_NO_USER)
        fail(c, "%s: url must not hold a user name or password", where);
    else if (curl_url_get(u, CURLUPART_QUERY, &part, 0) != CURLUE_NO_QUERY ||
             curl_url_get(u, CURLUPART_FRAGMENT, &part, 0) != CURLUE_NO_FRAGMENT)
        fail(c, "%s: url must not have a query or a fragment (the API path is appended to it)", where);
    else if (curl_url_get(u, CURLUPART_PORT, &part, 0) == CURLUE_OK && !aigw_parse_long(part, 1, 65535, &port))
        fail(c, "%s: url has a bad port (1..65535)", where);
    curl_free(part);
    curl_url_cleanup(u);
}

static void
parse_backend(struct ctx *c, json_t *b, size_t idx, struct aigw_backend_cfg *be)
{
    static const char *const allowed[] = {"name", "url", "slots", "max_connections", NULL};
    char where[40], *name = NULL;
    const char *outer = c->where;

    snprintf(where, sizeof(where), "upstream.backends[%zu]", idx);
    c->where = where;
    check_keys(c, b, where, allowed);
    get_str(c, b, "name", &name);
    get_str(c, b, "url", &be->url);
    be->slots = 4;
    be->max_connections = 4;
    get_int(c, b, "slots", 1, 100000, &be->slots);
    get_int(c, b, "max_connections", 1, 100000, &be->max_connections);
    if (name == NULL || *name == '\0' || strlen(name) >= sizeof(be->name))
        fail(c, "%s: name is required (1..63 chars)", where);
    else
        snprintf(be->name, sizeof(be->name), "%s", name);
    check_backend_url(c, where, be->url);
    c->where = outer;
    free(name);
}

static void
parse_model(struct ctx *c, json_t *m, size_t idx, struct aigw_model_cfg *mc)
{
    static const char *const allowed[] = {"id", "route", "tiers", NULL};
    char where[40], *id = NULL, *route = NULL;
    json_t *tiers = json_object_get(m, "tiers"), *t;
    size_t i;

    const char *outer = c->where;

    snprintf(where, sizeof(where), "openai.models[%zu]", idx);
    c->where = where;
    check_keys(c, m, where, allowed);
    get_str(c, m, "id", &id);
    get_str(c, m, "route", &route);
    c->where = outer;
    if (id == NULL || *id == '\0' || strlen(id) >= sizeof(mc->id))
        fail(c, "%s: id is required (1..127 chars)", where);
    else
        snprintf(mc->id, sizeof(mc->id), "%s", id);
    mc->qtype = route != NULL ? aigw_query_type_index(route) : 0;
    if (mc->qtype < 0)
        fail(c, "%s: route must be a query type", where);
    if (tiers != NULL && (!json_is_array(tiers) || json_array_size(tiers) > AIGW_MAX_MODEL_TIERS)) {
        fail(c, "%s: tiers must be an array of at most %d plan names", where, AIGW_MAX_MODEL_TIERS);
        tiers = NULL; /* not read: it would not fit mc->tiers */
    }
    json_array_foreach(tiers, i, t) {
        if (!json_is_string(t) || json_string_length(t) == 0 || json_string_length(t) >= sizeof(mc->tiers[0])) {
            fail(c, "%s: tiers must be plan names", where);
            break;
        }
        snprintf(mc->tiers[mc->n_tiers++], sizeof(mc->tiers[0]), "%s", json_string_value(t));
    }
    free(id);
    free(route);
}

static void
parse_openai(struct ctx *c, json_t *sec, struct aigw_config *cfg)
{
    json_t *arr = json_object_get(sec, "models"), *v = json_object_get(sec, "cache_sampled");

    if (arr != NULL && (!json_is_array(arr) || json_array_size(arr) == 0 || json_array_size(arr) > AIGW_MAX_MODELS))
        fail(c, "openai.models: must be an array of 1..%d models", AIGW_MAX_MODELS);
    else if (arr != NULL)
        for (size_t i = 0; i < json_array_size(arr) && !c->failed; i++) {
            parse_model(c, json_array_get(arr, i), i, &cfg->models[i]);
            cfg->n_models = i + 1;
            for (size_t j = 0; j < i && !c->failed; j++) /* the first would win; /v1/models listed both */
                if (strcmp(cfg->models[j].id, cfg->models[i].id) == 0)
                    fail(c, "openai.models: duplicate id \"%s\"", cfg->models[i].id);
        }
    if (v != NULL && !json_is_boolean(v))
        fail(c, "openai.cache_sampled: must be true or false");
    cfg->cache_sampled = json_is_true(v);
}

/* routes: {"knowledge": ["name", ...], ...}; a type with no route uses
 * every backend. */
static void
parse_routes(struct ctx *c, json_t *routes, struct aigw_config *cfg)
{
    static const char *const allowed[] = {"knowledge", "sales", "inventory", "patient_analytics", NULL};
    const char *type;
    json_t *list;

    if (routes != NULL) {
        check_keys(c, routes, "upstream.routes", allowed);
        json_object_foreach(routes, type, list) {
            int t = aigw_query_type_index(type);
            size_t i;
            json_t *name;

            if (t < 0)
                continue;
            if (!json_is_array(list) || json_array_size(list) == 0) {
                fail(c, "upstream.routes.%s: must be a non-empty array of backend names", type);
                return;
            }
            json_array_foreach(list, i, name) {
                size_t b;

                for (b = 0; b < cfg->n_backends; b++)
                    if (json_is_string(name) && strcmp(json_string_value(name), cfg->backends[b].name) == 0)
                        break;
                if (b == cfg->n_backends) {
                    fail(c, "upstream.routes.%s: unknown backend", type);
                    return;
                }
                cfg->route_backends[t][cfg->n_route_backends[t]++] = (int)b;
                if (cfg->n_route_backends[t] == AIGW_MAX_BACKENDS)
                    break;
            }
        }
    }
    for (int t = 0; t < AIGW_QUERY_TYPES; t++)
        if (cfg->n_route_backends[t] == 0)
            for (size_t b = 0; b < cfg->n_backends; b++)
                cfg->route_backends[t][cfg->n_route_backends[t]++] = (int)b;
}

/* Whether libpq can parse url. Checked here, where the reason can be left
 * out: libpq's own message quotes the part it could not parse, password
 * included, and would otherwise reach the log at every connection attempt. */
static bool
conninfo_ok(const char *url)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(url, &err);

    PQfreemem(err);
    if (o == NULL)
        return false;
    PQconninfoFree(o);
    return true;
}

/* An optional string set to "" counts as unset: *s becomes NULL. */
static void
unset_empty(char **s)
{
    if (*s != NULL && **s == '\0') {
        free(*s);
        *s = NULL;
    }
}

static void
set_defaults(struct aigw_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen_addr = aigw_xstrdup("127.0.0.1");
    cfg->port = 8080;
    cfg->max_body_bytes = 256 * 1024;
    cfg->max_header_bytes = 8 * 1024; /* also the per-connection memory pool: 8 KiB x 10k connections */
    cfg->max_connections = 10000;
    cfg->max_connections_per_ip = 0;
    cfg->connection_timeout_s = 30;
    cfg->request_timeout_s = 30;
    cfg->max_json_depth = 32;
    cfg->db_pool_size = 8;
    cfg->redis_pool_size = 8;
    cfg->redis_timeout_ms = 500;
    cfg->jwt_leeway_s = 30;
    cfg->tenant_cache_ttl_s = 60;
    cfg->api_key_cache_ttl_s = 60;
    cfg->api_key_flush_ms = 30000;
    cfg->health_interval_ms = 2000;
    cfg->connect_timeout_ms = 2000;
    cfg->timeout_ms = 60000;
    cfg->stream_idle_ms = 30000;
    cfg->stream_timeout_ms = 600000;
    cfg->stream_buffer_bytes = 65536;
    cfg->queue_size = 256;
    cfg->queue_timeout_ms = 10000;
    cfg->fail_threshold = 3;
    cfg->down_ms = 10000;
    cfg->model = aigw_xstrdup("default");
    cfg->spool_dir = aigw_xstrdup("/var/lib/aigw/spool");
    cfg->usage_batch_rows = 500;
    cfg->usage_flush_ms = 100;
    cfg->usage_memory_max_kb = 65536;
    cfg->log_level = LOG_INFO;
    cfg->dependency_timeout_ms = 60000;
    cfg->drain_timeout_ms = 30000;
}

static void
apply_env(struct ctx *c, struct aigw_config *cfg)
{
    const char *v;
    long n;

    if ((v = getenv("AIGW_DATABASE_URL")) != NULL && *v) {
        free(cfg->database_url);
        cfg->database_url = aigw_xstrdup(v);
    }
    if ((v = getenv("AIGW_REDIS_URL")) != NULL && *v) {
        free(cfg->redis_url);
        cfg->redis_url = aigw_xstrdup(v);
    }
    if ((v = getenv("AIGW_LISTEN_ADDR")) != NULL && *v) {
        free(cfg->listen_addr);
        cfg->listen_addr = aigw_xstrdup(v);
    }
    if ((v = getenv("AIGW_PORT")) != NULL && *v) {
        if (aigw_parse_long(v, 0, 65535, &n))
            cfg->port = (int)n;
        else
            fail(c, "AIGW_PORT: must be a port number");
    }
    if ((v = getenv("AIGW_LOG_LEVEL")) != NULL && *v) {
        if (aigw_log_level_parse(v) < 0)
            fail(c, "AIGW_LOG_LEVEL: unknown level");
        else
            cfg->log_level = aigw_log_level_parse(v);
    }
}

int
aigw_config_load(const char *path, struct aigw_config *cfg, char *err, size_t errlen)
{
    static const char *const top[] = {"listen", "http", "database", "redis", "jwt",
                                      "tenants", "api_keys", "upstream", "openai", "usage", "log", "startup",
                                      "shutdown", NULL};
    static const char *const listen_k[] = {"address", "port", NULL};
    static const char *const http_k[] = {"threads", "max_body_bytes", "max_header_bytes",
                                         "max_connections", "max_connections_per_ip",
                                         "connection_timeout_s", "request_timeout_s", "max_json_depth", NULL};
    static const char *const db_k[] = {"url", "listen_url", "pool_size", NULL};
    static const char *const redis_k[] = {"url", "password_file", "pool_size", "timeout_ms", NULL};
    static const char *const jwt_k[] = {"issuer", "audience", "leeway_s", "keys", NULL};
    static const char *const tenants_k[] = {"cache_ttl_s", NULL};
    static const char *const api_keys_k[] = {"cache_ttl_s", "last_used_flush_ms", NULL};
    static const char *const up_k[] = {"health_interval_ms", "backends", "routes", "connect_timeout_ms",
                                       "timeout_ms", "queue_size", "queue_timeout_ms", "fail_threshold",
                                       "down_ms", "model", "stream_idle_ms", "stream_timeout_ms",
                                       "stream_buffer_bytes", NULL};
    static const char *const usage_k[] = {"spool_dir", "batch_rows", "flush_ms", "memory_max_kb", NULL};
    static const char *const log_k[] = {"level", NULL};
    static const char *const openai_k[] = {"models", "cache_sampled", NULL};
    static const char *const startup_k[] = {"dependency_timeout_ms", NULL};
    static const char *const shutdown_k[] = {"drain_timeout_ms", NULL};
    struct ctx c = {err, errlen, 0, NULL};
    json_error_t jerr;
    json_t *root, *sec, *arr;
    char *level = NULL;
    struct sockaddr_storage listen_ss; /* as the listener will bind it */
    socklen_t listen_len;

    set_defaults(cfg);
    root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        /* jansson's text quotes the token it stopped at ("near '...'"),
         * which can be part of a secret: line and column say where */
        char *near = strstr(jerr.text, " near '");

        if (near != NULL)
            *near = '\0';
        fail(&c, "%s:%d:%d: %s", path, jerr.line, jerr.column, jerr.text);
        goto out;
    }
    check_keys(&c, root, "config", top);

#define SECTION(name, keys) \
    ((c.where = name, sec = json_object_get(root, name)) != NULL ? (check_keys(&c, sec, name, keys), sec) : NULL)

    if ((sec = SECTION("listen", listen_k)) != NULL) {
        get_str(&c, sec, "address", &cfg->listen_addr);
        get_int(&c, sec, "port", 0, 65535, &cfg->port);
    }
    if ((sec = SECTION("http", http_k)) != NULL) {
        get_int(&c, sec, "threads", 0, 256, &cfg->threads);
        get_size(&c, sec, "max_body_bytes", 1024, 64L << 20, &cfg->max_body_bytes);
        get_size(&c, sec, "max_header_bytes", 4096, 1L << 20, &cfg->max_header_bytes);
        get_int(&c, sec, "max_connections", 1, 1000000, &cfg->max_connections);
        get_int(&c, sec, "max_connections_per_ip", 0, 1000000, &cfg->max_connections_per_ip);
        get_int(&c, sec, "connection_timeout_s", 1, 3600, &cfg->connection_timeout_s);
        get_int(&c, sec, "request_timeout_s", 1, 3600, &cfg->request_timeout_s);
        get_int(&c, sec, "max_json_depth", 2, 1000, &cfg->max_json_depth);
    }
    if ((sec = SECTION("database", db_k)) != NULL) {
        get_str(&c, sec, "url", &cfg->database_url);
        get_str(&c, sec, "listen_url", &cfg->database_listen_url);
        get_int(&c, sec, "pool_size", 1, 1000, &cfg->db_pool_size);
    }
    if ((sec = SECTION("redis", redis_k)) != NULL) {
        get_str(&c, sec, "url", &cfg->redis_url);
        read_redis_password(&c, sec, cfg);
        get_int(&c, sec, "pool_size", 1, 1000, &cfg->redis_pool_size);
        /* at most 5 s: one call a second may wait this long on an HTTP
         * worker while Redis does not answer (redis.h), and the watchdog's
         * /healthz check allows 5 s at most */
        get_int(&c, sec, "timeout_ms", 1, 5000, &cfg->redis_timeout_ms);
    }
    if ((sec = SECTION("jwt", jwt_k)) != NULL) {
        get_str(&c, sec, "issuer", &cfg->jwt_issuer);
        get_str(&c, sec, "audience", &cfg->jwt_audience);
        get_int(&c, sec, "leeway_s", 0, 300, &cfg->jwt_leeway_s);
        arr = json_object_get(sec, "keys");
        if (arr != NULL && (!json_is_array(arr) || json_array_size(arr) > AIGW_MAX_JWT_KEYS))
            fail(&c, "jwt.keys: must be an array of at most %d keys", AIGW_MAX_JWT_KEYS);
        else if (arr != NULL) {
            for (size_t i = 0; i < json_array_size(arr) && !c.failed; i++) {
                parse_key(&c, json_array_get(arr, i), i, &cfg->jwt_keys[i]);
                cfg->n_jwt_keys = i + 1;
                for (size_t j = 0; j < i; j++)
                    if (strcmp(cfg->jwt_keys[j].kid, cfg->jwt_keys[i].kid) == 0)
                        fail(&c, "jwt.keys: duplicate kid \"%s\"", cfg->jwt_keys[i].kid);
            }
            check_platform_keys(&c, cfg);
        }
    }
    if ((sec = SECTION("tenants", tenants_k)) != NULL)
        get_int(&c, sec, "cache_ttl_s", 0, 86400, &cfg->tenant_cache_ttl_s);
    if ((sec = SECTION("api_keys", api_keys_k)) != NULL) {
        /* at most an hour: a revocation marker outlives every cached entry */
        get_int(&c, sec, "cache_ttl_s", 0, 3600, &cfg->api_key_cache_ttl_s);
        get_int(&c, sec, "last_used_flush_ms", 10, 3600000, &cfg->api_key_flush_ms);
    }
    if ((sec = SECTION("upstream", up_k)) != NULL) {
        get_int(&c, sec, "health_interval_ms", 100, 3600000, &cfg->health_interval_ms);
        arr = json_object_get(sec, "backends");
        if (arr != NULL && (!json_is_array(arr) || json_array_size(arr) > AIGW_MAX_BACKENDS))
            fail(&c, "upstream.backends: must be an array of at most %d", AIGW_MAX_BACKENDS);
        else if (arr != NULL) {
            for (size_t i = 0; i < json_array_size(arr) && !c.failed; i++) {
                parse_backend(&c, json_array_get(arr, i), i, &cfg->backends[i]);
                cfg->n_backends = i + 1;
                for (size_t j = 0; j < i; j++)
                    if (strcmp(cfg->backends[j].name, cfg->backends[i].name) == 0)
                        fail(&c, "upstream.backends: duplicate name \"%s\"", cfg->backends[i].name);
            }
        }
        get_int(&c, sec, "connect_timeout_ms", 10, 600000, &cfg->connect_timeout_ms);
        get_int(&c, sec, "timeout_ms", 10, 3600000, &cfg->timeout_ms);
        get_int(&c, sec, "stream_idle_ms", 1000, 3600000, &cfg->stream_idle_ms);
        get_int(&c, sec, "stream_timeout_ms", 1000, 86400000, &cfg->stream_timeout_ms);
        get_int(&c, sec, "stream_buffer_bytes", 4096, 16 << 20, &cfg->stream_buffer_bytes);
        get_int(&c, sec, "queue_size", 0, 1000000, &cfg->queue_size);
        get_int(&c, sec, "queue_timeout_ms", 1, 3600000, &cfg->queue_timeout_ms);
        get_int(&c, sec, "fail_threshold", 1, 1000, &cfg->fail_threshold);
        get_int(&c, sec, "down_ms", 1, 3600000, &cfg->down_ms);
        get_str(&c, sec, "model", &cfg->model);
        /* it is also the default model's id (openai.models[0].id): cut to fit, it was silently another name */
        if (cfg->model == NULL || cfg->model[0] == '\0' || strlen(cfg->model) >= sizeof(cfg->models[0].id))
            fail(&c, "upstream.model: must be 1..%zu characters", sizeof(cfg->models[0].id) - 1);
        parse_routes(&c, json_object_get(sec, "routes"), cfg);
    } else {
        parse_routes(&c, NULL, cfg);
    }
    if ((sec = SECTION("usage", usage_k)) != NULL) {
        get_str(&c, sec, "spool_dir", &cfg->spool_dir);
        get_int(&c, sec, "batch_rows", 1, 10000, &cfg->usage_batch_rows);
        get_int(&c, sec, "flush_ms", 1, 60000, &cfg->usage_flush_ms);
        get_int(&c, sec, "memory_max_kb", 1, 1048576, &cfg->usage_memory_max_kb);
    }
    /* the spool is opened at start-up, after the checks; "" or a relative
     * path (resolved against whatever the cwd is) passed them and then failed */
    if (!c.failed && (cfg->spool_dir == NULL || cfg->spool_dir[0] != '/'))
        fail(&c, "usage.spool_dir: must be an absolute path");
    if ((sec = SECTION("openai", openai_k)) != NULL)
        parse_openai(&c, sec, cfg);
    if (!c.failed && cfg->n_models == 0) { /* the default: the upstream model, every plan with api_access */
        snprintf(cfg->models[0].id, sizeof(cfg->models[0].id), "%s", cfg->model != NULL ? cfg->model : "default");
        cfg->n_models = 1;
    }
    if ((sec = SECTION("log", log_k)) != NULL) {
        get_str(&c, sec, "level", &level);
        if (level != NULL && aigw_log_level_parse(level) < 0)
            fail(&c, "log.level: unknown level \"%s\"", level);
        else if (level != NULL)
            cfg->log_level = aigw_log_level_parse(level);
    }
    if ((sec = SECTION("startup", startup_k)) != NULL)
        get_int(&c, sec, "dependency_timeout_ms", 0, 3600000, &cfg->dependency_timeout_ms);
    if ((sec = SECTION("shutdown", shutdown_k)) != NULL)
        get_int(&c, sec, "drain_timeout_ms", 0, 3600000, &cfg->drain_timeout_ms);
#undef SECTION
    c.where = NULL;
    apply_env(&c, cfg);
    if (!c.failed && (cfg->database_url == NULL || *cfg->database_url == '\0'))
        fail(&c, "database.url (or AIGW_DATABASE_URL) is required");
    if (!c.failed && (cfg->redis_url == NULL || *cfg->redis_url == '\0'))
        fail(&c, "redis.url (or AIGW_REDIS_URL) is required");
    /* optional strings: "" (e.g. "${VAR:-}") means unset, not "match the empty string" */
    unset_empty(&cfg->database_listen_url);
    unset_empty(&cfg->jwt_issuer);
    unset_empty(&cfg->jwt_audience);
    if (!c.failed && !conninfo_ok(cfg->database_url))
        fail(&c, "database.url: not a connection string libpq can parse (why is not shown: it may quote the "
                 "password; percent-encode special characters in it)");
    if (!c.failed && cfg->database_listen_url != NULL && !conninfo_ok(cfg->database_listen_url))
        fail(&c, "database.listen_url: not a connection string libpq can parse (why is not shown: it may quote "
                 "the password)");
    if (!c.failed && cfg->n_jwt_keys == 0)
        fail(&c, "jwt.keys: at least one key is required");
    if (!c.failed && aigw_sockaddr_parse(cfg->listen_addr, cfg->port, &listen_ss, &listen_len) != 0)
        fail(&c, "listen.address (or AIGW_LISTEN_ADDR): must be a numeric IPv4 or IPv6 address, not a host name");
out:
    free(level);
    json_decref(root);
    if (c.failed) {
        aigw_config_free(cfg);
        return -1;
    }
    return 0;
}

void
aigw_config_free(struct aigw_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->listen_addr);
    free(cfg->database_url);
    free(cfg->database_listen_url);
    free(cfg->redis_url);
    aigw_free_secret(cfg->redis_password);
    free(cfg->jwt_issuer);
    free(cfg->jwt_audience);
    free(cfg->model);
    free(cfg->spool_dir);
    for (size_t i = 0; i < AIGW_MAX_JWT_KEYS; i++) {
        if (cfg->jwt_keys[i].key != NULL)
            explicit_bzero(cfg->jwt_keys[i].key, cfg->jwt_keys[i].key_len);
        free(cfg->jwt_keys[i].key);
    }
    for (size_t i = 0; i < AIGW_MAX_BACKENDS; i++)
        free(cfg->backends[i].url);
    memset(cfg, 0, sizeof(*cfg));
}

int
aigw_config_call_ms(const struct aigw_config *cfg, bool stream)
{
    return stream && cfg->stream_timeout_ms > cfg->timeout_ms ? cfg->stream_timeout_ms : cfg->timeout_ms;
}

const struct aigw_model_cfg *
aigw_config_model(const struct aigw_config *cfg, const char *id, const char *tier)
{
    for (size_t i = 0; i < cfg->n_models; i++) {
        const struct aigw_model_cfg *m = &cfg->models[i];
        bool ok = m->n_tiers == 0;

        if (strcmp(m->id, id) != 0)
            continue;
        for (size_t k = 0; k < m->n_tiers && !ok; k++)
            ok = strcmp(m->tiers[k], tier) == 0;
        return ok ? m : NULL;
    }
    return NULL;
}

static bool
same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Append name to the comma-separated list in out when differs. */
static void
note_diff(bool differs, const char *name, char *out, size_t cap, size_t *n)
{
    size_t len = strlen(out);

    if (!differs)
        return;
    (*n)++;
    if (len < cap)
        snprintf(out + len, cap - len, "%s%s", len > 0 ? ", " : "", name);
}

size_t
aigw_config_restart_diff(const struct aigw_config *a, const struct aigw_config *b, char *out, size_t cap)
{
    size_t n = 0;

    if (cap == 0)
        return 0;
    out[0] = '\0';
    note_diff(!same_str(a->listen_addr, b->listen_addr) || a->port != b->port, "listen", out, cap, &n);
    note_diff(a->threads != b->threads || a->max_body_bytes != b->max_body_bytes ||
                  a->max_header_bytes != b->max_header_bytes || a->max_connections != b->max_connections ||
                  a->max_connections_per_ip != b->max_connections_per_ip ||
                  a->connection_timeout_s != b->connection_timeout_s || a->request_timeout_s != b->request_timeout_s ||
                  a->max_json_depth != b->max_json_depth,
              "http", out, cap, &n);
    note_diff(!same_str(a->database_url, b->database_url) ||
                  !same_str(a->database_listen_url, b->database_listen_url) || a->db_pool_size != b->db_pool_size,
              "database", out, cap, &n);
    note_diff(!same_str(a->redis_url, b->redis_url) || !same_str(a->redis_password, b->redis_password) ||
                  a->redis_pool_size != b->redis_pool_size ||
                  a->redis_timeout_ms != b->redis_timeout_ms,
              "redis", out, cap, &n);
    note_diff(a->tenant_cache_ttl_s != b->tenant_cache_ttl_s, "tenants", out, cap, &n);
    note_diff(!same_str(a->model, b->model), "upstream.model", out, cap, &n);
    note_diff(!same_str(a->spool_dir, b->spool_dir) || a->usage_batch_rows != b->usage_batch_rows ||
                  a->usage_flush_ms != b->usage_flush_ms || a->usage_memory_max_kb != b->usage_memory_max_kb,
              "usage", out, cap, &n);
    note_diff(a->dependency_timeout_ms != b->dependency_timeout_ms, "startup", out, cap, &n);
    note_diff(a->n_models != b->n_models || memcmp(a->models, b->models, sizeof(a->models)) != 0 ||
                  a->cache_sampled != b->cache_sampled,
              "openai", out, cap, &n);
    note_diff(a->api_key_cache_ttl_s != b->api_key_cache_ttl_s || a->api_key_flush_ms != b->api_key_flush_ms,
              "api_keys", out, cap, &n);
    return n;
}

const struct aigw_jwt_key *
aigw_config_find_key(const struct aigw_config *cfg, const char *kid)
{
    if (kid == NULL)
        return cfg->n_jwt_keys == 1 ? &cfg->jwt_keys[0] : NULL;
    for (size_t i = 0; i < cfg->n_jwt_keys; i++)
        if (strcmp(cfg->jwt_keys[i].kid, kid) == 0)
            return &cfg->jwt_keys[i];
    return NULL;
}
