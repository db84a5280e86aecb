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
    char json[1024];

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
