/* test_jwt.c - JWT verification: every accepted and rejected shape, in process */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aigw/config.h"
#include "aigw/jwt.h"
#include "testlib.h"

static const char SECRET[] = "0123456789abcdef0123456789abcdef-unit-secret";
static struct aigw_config cfg;
static char *rs_pub, *rs_priv, *es_pub, *es_priv;
static long now;

static void
add_key(const char *kid, jwt_alg_t alg, const char *key)
{
    struct aigw_jwt_key *k = &cfg.jwt_keys[cfg.n_jwt_keys++];

    snprintf(k->kid, sizeof(k->kid), "%s", kid);
    k->alg = alg;
    k->key = (unsigned char *)strdup(key);
    k->key_len = strlen(key);
}

static char *
claims(long exp, const char *extra)
{
    static char buf[1024];

    snprintf(buf, sizeof(buf), "{\"sub\":\"u1\",\"tenant_id\":\"clinic_001\",\"role\":\"admin\"%s%ld%s}",
             exp ? ",\"exp\":" : "", exp ? exp : 0L, extra ? extra : "");
    if (!exp) /* no exp: drop the number we printed */
        snprintf(buf, sizeof(buf), "{\"sub\":\"u1\",\"tenant_id\":\"clinic_001\",\"role\":\"admin\"%s}",
                 extra ? extra : "");
    return buf;
}

static int
verify(const char *tok, const char **why)
{
    struct aigw_claims c;

    return aigw_jwt_verify(&cfg, tok, strlen(tok), now, &c, why);
}

static void
expect_reject(const char *name, const char *tok)
{
    const char *why = NULL;
    int rc = verify(tok, &why);

    CHECK(rc == -1 && why != NULL, "%s must be rejected (rc=%d)", name, rc);
}

static void
expect_accept(const char *name, const char *tok)
{
    const char *why = NULL;
    struct aigw_claims c;
    int rc = aigw_jwt_verify(&cfg, tok, strlen(tok), now, &c, &why);

    CHECK(rc == 0, "%s must be accepted: %s", name, why ? why : "");
    CHECK(rc != 0 || strcmp(c.tenant, "clinic_001") == 0, "%s tenant claim", name);
    CHECK(rc != 0 || strcmp(c.role, "admin") == 0, "%s role claim", name);
}

int
main(void)
{
    char *tok, big[10240];
    const char *why;

    now = (long)time(NULL);
    tl_keypair("RS256", &rs_pub, &rs_priv);
    tl_keypair("ES256", &es_pub, &es_priv);
    add_key("hs", JWT_ALG_HS256, SECRET);
    add_key("rs", JWT_ALG_RS256, rs_pub);
    add_key("es", JWT_ALG_ES256, es_pub);
    cfg.jwt_leeway_s = 30;

    /* accepted */
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, NULL));
    expect_accept("HS256", tok);
    free(tok);
    tok = tl_sign("RS256", "rs", rs_priv, strlen(rs_priv), claims(now + 600, NULL));
    expect_accept("RS256", tok);
    free(tok);
    tok = tl_sign("ES256", "es", es_priv, strlen(es_priv), claims(now + 600, NULL));
    expect_accept("ES256", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now - 10, NULL));
    expect_accept("expired within leeway", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"user_id\":\"x\",\"nbf\":1"));
    expect_accept("nbf in the past", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"nbf\":0,\"iat\":0"));
    expect_accept("nbf and iat at the epoch (0)", tok);
    free(tok);
    /* the largest exp JSON can carry: adding the leeway overflowed (signed
     * overflow) and the token read as expired */
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET),
                  "{\"sub\":\"u1\",\"tenant_id\":\"clinic_001\",\"role\":\"admin\",\"exp\":9223372036854775807}");
    expect_accept("exp at INT64_MAX", tok);
    free(tok);
    /* the user: sub, else user_id; a number is taken as its digits (it was
     * dropped: usage rows had no user, idempotency shared one scope) */
    {
        static const struct {
            const char *claims, *want;
        } ids[] = {
            {"\"user_id\":42", "42"},
            {"\"sub\":7", "7"},
            {"\"user_id\":\"u-9\"", "u-9"},
            {"\"user_id\":4.5", ""},
            {"\"user_id\":true", ""},
        };

        for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
            char *cl = tl_sprintf("{\"tenant_id\":\"clinic_001\",\"role\":\"admin\",%s,\"exp\":%ld}", ids[i].claims, now + 600);
            struct aigw_claims c;

            why = NULL;
            tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), cl);
            CHECK(aigw_jwt_verify(&cfg, tok, strlen(tok), now, &c, &why) == 0 && strcmp(c.sub, ids[i].want) == 0,
                  "user of %s: '%s' want '%s' (%s)", cl, c.sub, ids[i].want, why ? why : "");
            free(tok);
            free(cl);
        }
    }

    /* rejected */
    tok = tl_sign("none", "hs", NULL, 0, claims(now + 600, NULL));
    expect_reject("alg none", tok);
    free(tok);
    tok = tl_sign("HS256", "rs", rs_pub, strlen(rs_pub), claims(now + 600, NULL));
    expect_reject("alg confusion (HS256 with the RSA public key)", tok);
    free(tok);
    tok = tl_sign("HS256", "es", es_pub, strlen(es_pub), claims(now + 600, NULL));
    expect_reject("alg confusion (HS256 with the EC public key)", tok);
    free(tok);
    tok = tl_sign("RS256", "es", rs_priv, strlen(rs_priv), claims(now + 600, NULL));
    expect_reject("RS256 token on the ES256 key", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", "another-secret-another-secret-xx!", 33, claims(now + 600, NULL));
    expect_reject("bad signature", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, NULL));
    tok[strlen(tok) - 2] = tok[strlen(tok) - 2] == 'A' ? 'B' : 'A';
    expect_reject("tampered signature", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now - 3600, NULL));
    expect_reject("expired", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"nbf\":9999999999"));
    expect_reject("nbf in the future", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"iat\":9999999999"));
    expect_reject("iat in the future", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(0, NULL));
    expect_reject("missing exp", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), "{\"sub\":\"u\",\"tenant_id\":\"t\",\"exp\":\"soon\"}");
    expect_reject("string exp", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"nbf\":\"0\""));
    expect_reject("string nbf \"0\"", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"iat\":-5"));
    expect_reject("negative iat", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, ",\"nbf\":0.0"));
    expect_reject("fractional nbf 0.0", tok);
    free(tok);
    {
        char c[256];

        snprintf(c, sizeof(c), "{\"sub\":\"u1\",\"role\":\"admin\",\"exp\":%ld}", now + 600);
        tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), c);
        expect_reject("missing tenant_id", tok);
        free(tok);
        snprintf(c, sizeof(c), "{\"sub\":\"u1\",\"tenant_id\":42,\"exp\":%ld}", now + 600);
        tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), c);
        expect_reject("numeric tenant_id", tok);
        free(tok);
    }
    /* a clinic user named like one of aigw's own actors ("api_key:<id>" for
     * an API key's requests, "platform:<sub>" for the operator's staff)
     * passed for it in audit rows and shared its idempotency records */
    {
        static const char *const who[] = {
            "\"sub\":\"api_key:0190a1b2-0000-7000-8000-000000000001\"",
            "\"sub\":\"platform:ops-1\"",
            "\"sub\":\"API_KEY:x\"",
            "\"sub\":\"Platform:x\"",
            "\"user_id\":\"api_key:x\"",
            "\"sub\":\"\",\"user_id\":\"platform:x\"",
        };

        for (size_t i = 0; i < sizeof(who) / sizeof(who[0]); i++) {
            char *cl = tl_sprintf("{\"tenant_id\":\"clinic_001\",\"role\":\"admin\",%s,\"exp\":%ld}", who[i], now + 600);

            tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), cl);
            why = NULL;
            CHECK(verify(tok, &why) == -1 && why != NULL && strstr(why, "reserved") != NULL,
                  "a user named like an aigw actor (%s) is rejected: %s", who[i], why ? why : "accepted");
            free(tok);
            free(cl);
        }
        /* the prefix only: such words elsewhere in the name are a user's own */
        tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET),
                      claims(now + 600, ",\"user_id\":\"api_key:x\"")); /* sub u1 names the user */
        expect_accept("user_id with the prefix beside a sub", tok);
        free(tok);
        {
            char *cl = tl_sprintf("{\"sub\":\"my-api_key:1\",\"tenant_id\":\"clinic_001\",\"role\":\"admin\","
                                  "\"exp\":%ld}", now + 600);

            tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), cl);
            expect_accept("a sub with api_key: inside", tok);
            free(tok);
            free(cl);
        }
        /* the operator's tokens are told apart by their key (their actor is
         * "platform:<sub>" whatever the sub), so their subs are not refused */
        {
            static const char PSECRET[] = "fedcba9876543210fedcba9876543210-unit-platform";
            struct aigw_claims c;
            char *cl = tl_sprintf("{\"sub\":\"platform:ops-1\",\"role\":\"platform_admin\",\"exp\":%ld}", now + 600);

            add_key("pk", JWT_ALG_HS256, PSECRET);
            cfg.jwt_keys[cfg.n_jwt_keys - 1].platform = true;
            tok = tl_sign("HS256", "pk", PSECRET, strlen(PSECRET), cl);
            why = NULL;
            CHECK(aigw_jwt_verify(&cfg, tok, strlen(tok), now, &c, &why) == 0 && c.platform_key &&
                      strcmp(c.sub, "platform:ops-1") == 0,
                  "a platform token's sub may start with platform: (%s)", why ? why : "");
            free(tok);
            free(cl);
        }
    }
    tok = tl_sign("HS256", "nope", SECRET, strlen(SECRET), claims(now + 600, NULL));
    expect_reject("unknown kid", tok);
    free(tok);
    tok = tl_sign("HS256", NULL, SECRET, strlen(SECRET), claims(now + 600, NULL));
    expect_reject("no kid with several keys", tok);
    free(tok);
    expect_reject("non-base64 segments", "eyJhbGciOiJIUzI1NiJ9.!!!$$$.abc");
    expect_reject("non-JSON header", "bm90IGpzb24.eyJzdWIiOiJ4In0.c2ln");
    expect_reject("two segments", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0");
    expect_reject("empty", "");
    expect_reject("dots only", "..");
    memset(big, 'A', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    big[100] = '.';
    big[200] = '.';
    expect_reject("10 kB garbage", big);

    /* iss / aud when configured */
    cfg.jwt_issuer = strdup("https://issuer.example/");
    cfg.jwt_audience = strdup("aigw");
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET), claims(now + 600, NULL));
    expect_reject("missing iss/aud when configured", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET),
                  claims(now + 600, ",\"iss\":\"https://issuer.example/\",\"aud\":[\"other\",\"aigw\"]"));
    expect_accept("iss + aud array", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET),
                  claims(now + 600, ",\"iss\":\"https://evil.example/\",\"aud\":\"aigw\""));
    expect_reject("wrong iss", tok);
    free(tok);
    tok = tl_sign("HS256", "hs", SECRET, strlen(SECRET),
                  claims(now + 600, ",\"iss\":\"https://issuer.example/\",\"aud\":\"other\""));
    expect_reject("wrong aud", tok);
    free(tok);
    (void)why;

    /* aigw-token signs with the configuration it loads, so its token carries
     * that configuration's issuer and audience (README: Authentication) */
    {
        struct aigw_config tcfg;
        struct aigw_claims tc;
        char path[64], cmd[256], err[512], json[512], out[4096] = "";
        FILE *p;

        snprintf(path, sizeof(path), "/tmp/aigw-jwt-test-%d.json", (int)getpid());
        snprintf(json, sizeof(json),
                 "{\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\"},"
                 "\"jwt\":{\"issuer\":\"https://issuer.example/\",\"audience\":\"aigw\",\"keys\":"
                 "[{\"kid\":\"hs\",\"alg\":\"HS256\",\"secret\":\"%s\"}]}}",
                 SECRET);
        tl_write_file(path, json);
        CHECK(aigw_config_load(path, &tcfg, err, sizeof(err)) == 0, "token config loads: %s", err);
        snprintf(cmd, sizeof(cmd), "%s -c %s -t clinic_001", AIGW_TOKEN_BIN_PATH, path);
        p = popen(cmd, "r");
        CHECK(p != NULL && fgets(out, sizeof(out), p) != NULL, "aigw-token prints a token");
        if (p != NULL)
            pclose(p);
        out[strcspn(out, "\n")] = '\0';
        why = NULL;
        CHECK(aigw_jwt_verify(&tcfg, out, strlen(out), now, &tc, &why) == 0,
              "aigw-token's token passes the configured iss/aud: %s", why ? why : "");
        snprintf(cmd, sizeof(cmd), "%s -c %s -t clinic_001 -j '{\"aud\": null}'", AIGW_TOKEN_BIN_PATH, path);
        p = popen(cmd, "r");
        out[0] = '\0';
        CHECK(p != NULL && fgets(out, sizeof(out), p) != NULL, "aigw-token -j prints a token");
        if (p != NULL)
            pclose(p);
        out[strcspn(out, "\n")] = '\0';
        CHECK(aigw_jwt_verify(&tcfg, out, strlen(out), now, &tc, &why) == -1, "-j can still remove aud");
        aigw_config_free(&tcfg);
        unlink(path);
    }

    aigw_config_free(&cfg);
    free(rs_pub);
    free(rs_priv);
    free(es_pub);
    free(es_priv);
    return tl_done();
}
