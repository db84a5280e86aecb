/* test_platform_keys.c - platform keys in the config and in JWT verification:
 * "platform": true parsed strictly, never sharing key material with a clinic
 * key; their tokens need no tenant_id and are marked, clinic tokens are not */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aigw/config.h"
#include "aigw/jwt.h"
#include "testlib.h"

#define BASE_DB "\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\"}"
#define CLINIC_SECRET "0123456789abcdef0123456789abcdef"
#define PLATFORM_SECRET "fedcba9876543210fedcba9876543210-platform"

static char path[64];

static int
load(const char *keys, struct aigw_config *cfg, char *err, size_t errlen)
{
    char json[4096];

    snprintf(json, sizeof(json), "{" BASE_DB ",\"jwt\":{\"keys\":[%s]}}", keys);
    tl_write_file(path, json);
    return aigw_config_load(path, cfg, err, errlen);
}

static void
expect_invalid(const char *name, const char *keys, const char *needle)
{
    struct aigw_config cfg;
    char err[512] = "";
    int rc = load(keys, &cfg, err, sizeof(err));

    CHECK(rc == -1 && strstr(err, needle) != NULL, "%s: rc=%d err=%s", name, rc, err);
}

static int
verify(const struct aigw_config *cfg, const char *kid, const char *secret, const char *claims_json,
       struct aigw_claims *out)
{
    char *tok = tl_sign("HS256", kid, secret, strlen(secret), claims_json);
    const char *why = NULL;
    int rc = aigw_jwt_verify(cfg, tok, strlen(tok), (int64_t)time(NULL), out, &why);

    free(tok);
    return rc;
}

/* Key material is compared as the keys it makes, not as bytes: the same
 * public key in another PEM layout (a file's trailing newline, CRLF), or an
 * HMAC secret that HMAC cannot tell apart (trailing zero bytes pad a key up
 * to the block size anyway; a key over 64 bytes is its SHA-256). */
static void
test_equivalent_keys(void)
{
    char *pub, *priv, esc[1024], keys[2048], file[96], secret_file[96];
    size_t o = 0;
    FILE *f;

    tl_keypair("ES256", &pub, &priv);
    snprintf(file, sizeof(file), "/tmp/aigw-platform-test-%d.pem", (int)getpid());
    tl_write_file(file, pub); /* as PEM_write_bio_PUBKEY wrote it: ends with a newline */
    /* the same key inline, JSON-escaped, CRLF lines, no final newline */
    for (const char *p = pub; *p && o + 8 < sizeof(esc); p++) {
        if (*p == '\n' && p[1] != '\0') {
            memcpy(esc + o, "\\r\\n", 4);
            o += 4;
        } else if (*p != '\n') {
            esc[o++] = *p;
        }
    }
    esc[o] = '\0';
    snprintf(keys, sizeof(keys),
             "{\"kid\":\"c\",\"alg\":\"ES256\",\"public_key_file\":\"%s\"},"
             "{\"kid\":\"p\",\"alg\":\"ES256\",\"public_key\":\"%s\",\"platform\":true}",
             file, esc);
    expect_invalid("platform key: the clinic's public key in another PEM layout", keys, "must not share its key");

    snprintf(secret_file, sizeof(secret_file), "/tmp/aigw-platform-test-%d.secret", (int)getpid());
    f = fopen(secret_file, "w");
    if (f == NULL || fwrite(CLINIC_SECRET "\0\0", 1, sizeof(CLINIC_SECRET) + 1, f) != sizeof(CLINIC_SECRET) + 1)
        abort();
    fclose(f);
    snprintf(keys, sizeof(keys),
             "{\"kid\":\"c\",\"alg\":\"HS256\",\"secret\":\"" CLINIC_SECRET "\"},"
             "{\"kid\":\"p\",\"alg\":\"HS256\",\"secret_file\":\"%s\",\"platform\":true}",
             secret_file);
    expect_invalid("platform key: the clinic secret with trailing zero bytes", keys, "must not share its key");
    /* the clinic's RS256 public key file as the platform's HS256 secret_file:
     * the secret lost its trailing newline, the PEM kept it, and the two
     * compared unequal byte for byte; a PEM as an HMAC secret is refused */
    free(pub);
    free(priv);
    tl_keypair("RS256", &pub, &priv);
    tl_write_file(file, pub);
    snprintf(keys, sizeof(keys),
             "{\"kid\":\"c\",\"alg\":\"RS256\",\"public_key_file\":\"%s\"},"
             "{\"kid\":\"p\",\"alg\":\"HS256\",\"secret_file\":\"%s\",\"platform\":true}",
             file, file);
    expect_invalid("platform HS256 key: the clinic's RS256 public key file", keys, "must not be a PEM key");
    snprintf(keys, sizeof(keys), "{\"kid\":\"c\",\"alg\":\"HS256\",\"secret_file\":\"%s\"}", file);
    expect_invalid("clinic HS256 key: a PEM file", keys, "must not be a PEM key");
    unlink(file);
    unlink(secret_file);
    free(pub);
    free(priv);
}

int
main(void)
{
    struct aigw_config cfg;
    struct aigw_claims c;
    char err[512] = "", claims[256];
    long exp = (long)time(NULL) + 600;

    snprintf(path, sizeof(path), "/tmp/aigw-platform-test-%d.json", (int)getpid());
    unsetenv("AIGW_DATABASE_URL");
    unsetenv("AIGW_REDIS_URL");

    expect_invalid("platform must be a boolean",
                   "{\"kid\":\"p\",\"alg\":\"HS256\",\"secret\":\"" PLATFORM_SECRET "\",\"platform\":\"yes\"}",
                   "platform must be a boolean");
    expect_invalid("platform key sharing a clinic secret",
                   "{\"kid\":\"c\",\"alg\":\"HS256\",\"secret\":\"" CLINIC_SECRET "\"},"
                   "{\"kid\":\"p\",\"alg\":\"HS256\",\"secret\":\"" CLINIC_SECRET "\",\"platform\":true}",
                   "must not share its key");

    test_equivalent_keys();

    CHECK(load("{\"kid\":\"c\",\"alg\":\"HS256\",\"secret\":\"" CLINIC_SECRET "\",\"platform\":false},"
               "{\"kid\":\"p\",\"alg\":\"HS256\",\"secret\":\"" PLATFORM_SECRET "\",\"platform\":true}",
               &cfg, err, sizeof(err)) == 0,
          "clinic + platform keys: %s", err);
    CHECK(!cfg.jwt_keys[0].platform && cfg.jwt_keys[1].platform, "platform flag parsed per key");

    /* platform tokens: no tenant_id needed, marked as such */
    snprintf(claims, sizeof(claims), "{\"sub\":\"ops\",\"role\":\"platform_admin\",\"exp\":%ld}", exp);
    CHECK(verify(&cfg, "p", PLATFORM_SECRET, claims, &c) == 0 && c.platform_key && c.tenant[0] == '\0' &&
              strcmp(c.role, "platform_admin") == 0,
          "platform token without tenant_id accepted and marked");
    /* clinic tokens: tenant_id still required, never marked */
    CHECK(verify(&cfg, "c", CLINIC_SECRET, claims, &c) == -1, "clinic token without tenant_id rejected");
    snprintf(claims, sizeof(claims),
             "{\"sub\":\"u\",\"tenant_id\":\"clinic_001\",\"role\":\"platform_admin\",\"exp\":%ld}", exp);
    CHECK(verify(&cfg, "c", CLINIC_SECRET, claims, &c) == 0 && !c.platform_key,
          "a clinic token claiming platform_admin is still a clinic token");
    /* key material decides, not the kid header */
    CHECK(verify(&cfg, "p", CLINIC_SECRET, claims, &c) == -1, "clinic secret under the platform kid rejected");
    CHECK(verify(&cfg, "c", PLATFORM_SECRET, claims, &c) == -1, "platform secret under the clinic kid rejected");
    aigw_config_free(&cfg);
    unlink(path);
    return tl_done();
}
