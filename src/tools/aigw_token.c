/* aigw_token.c - mint a JWT for a tenant/user/role from the configured key (dev, tests, bench) */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/config.h"
#include "aigw/jwt.h"
#include "aigw/util.h"

static void
usage(FILE *f)
{
    fprintf(f,
            "usage: aigw-token -c CONFIG -t TENANT [options]\n"
            "       aigw-token -c CONFIG -k PLATFORM_KID [options]   (a platform operator's token)\n"
            "  -c, --config PATH       aigw configuration with the signing key (HS256 secret);\n"
            "                          its jwt.issuer and jwt.audience become iss and aud\n"
            "  -t, --tenant REF        tenant_id claim: tenant uuid or code (clinic_001);\n"
            "                          not needed with a key marked \"platform\"\n"
            "  -u, --user ID           sub claim (default: user-1)\n"
            "  -r, --role ROLE         role claim (default: admin; platform_admin with a platform key)\n"
            "  -k, --kid KID           key to sign with (default: the first configured key)\n"
            "  -e, --ttl SECONDS       lifetime (default 3600); exp = now + ttl\n"
            "  -p, --private-key PEM   private key file for RS256/ES256 keys\n"
            "  -j, --claims JSON       extra claims merged over the defaults (null removes one)\n");
}

static unsigned char *
slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;

    if (f == NULL)
        return NULL;
    buf = aigw_xmalloc(65536);
    *len = fread(buf, 1, 65535, f);
    fclose(f);
    return buf;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"tenant", required_argument, NULL, 't'},
        {"user", required_argument, NULL, 'u'},   {"role", required_argument, NULL, 'r'},
        {"kid", required_argument, NULL, 'k'},    {"ttl", required_argument, NULL, 'e'},
        {"private-key", required_argument, NULL, 'p'}, {"claims", required_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},         {NULL, 0, NULL, 0},
    };
    const char *config = NULL, *tenant = NULL, *user = "user-1", *role = NULL, *kid = NULL;
    const char *pkfile = NULL, *extra = NULL;
    long ttl = 3600;
    struct aigw_config cfg;
    const struct aigw_jwt_key *key;
    unsigned char *pk = NULL;
    size_t pklen = 0;
    json_t *claims = NULL, *more;
    char err[512], *text = NULL, *tok = NULL;
    int opt, rc = 1;
    int64_t now = aigw_wall_s();

    memset(&cfg, 0, sizeof(cfg));
    while ((opt = getopt_long(argc, argv, "c:t:u:r:k:e:p:j:h", opts, NULL)) != -1) {
        switch (opt) {
        case 'c': config = optarg; break;
        case 't': tenant = optarg; break;
        case 'u': user = optarg; break;
        case 'r': role = optarg; break;
        case 'k': kid = optarg; break;
        case 'p': pkfile = optarg; break;
        case 'j': extra = optarg; break;
        case 'e':
            if (!aigw_parse_long(optarg, -315360000, 315360000, &ttl)) {
                fprintf(stderr, "aigw-token: bad --ttl\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (config == NULL || (tenant == NULL && extra == NULL && kid == NULL)) {
        usage(stderr);
        return 2;
    }
    if (aigw_config_load(config, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "aigw-token: %s\n", err);
        return 2;
    }
    key = kid ? aigw_config_find_key(&cfg, kid) : &cfg.jwt_keys[0];
    if (key == NULL) {
        fprintf(stderr, "aigw-token: no key with kid %s\n", kid);
        goto out;
    }
    if (tenant == NULL && extra == NULL && !key->platform) {
        fprintf(stderr, "aigw-token: -t TENANT is required (key %s is not a platform key)\n", key->kid);
        goto out;
    }
    if (role == NULL)
        role = key->platform ? "platform_admin" : "admin";
    if (key->alg != JWT_ALG_HS256) {
        if (pkfile == NULL || (pk = slurp(pkfile, &pklen)) == NULL) {
            fprintf(stderr, "aigw-token: key %s is %s: give its private key with --private-key\n", key->kid,
                    jwt_alg_str(key->alg));
            goto out;
        }
    }
    claims = json_pack("{s:s, s:s, s:I, s:I}", "sub", user, "role", role, "iat", (json_int_t)now, "exp",
                       (json_int_t)(now + ttl));
    if (tenant != NULL)
        json_object_set_new(claims, "tenant_id", json_string(tenant));
    /* aigw checks these when the configuration sets them (-j can drop them) */
    if (cfg.jwt_issuer != NULL)
        json_object_set_new(claims, "iss", json_string(cfg.jwt_issuer));
    if (cfg.jwt_audience != NULL)
        json_object_set_new(claims, "aud", json_string(cfg.jwt_audience));
    if (extra != NULL) {
        const char *k;
        json_t *v;

        more = json_loads(extra, JSON_REJECT_DUPLICATES, NULL);
        if (!json_is_object(more)) {
            fprintf(stderr, "aigw-token: --claims must be a JSON object\n");
            json_decref(more);
            goto out;
        }
        json_object_foreach(more, k, v) {
            if (json_is_null(v))
                json_object_del(claims, k);
            else
                json_object_set(claims, k, v);
        }
        json_decref(more);
    }
    text = json_dumps(claims, JSON_COMPACT);
    tok = text ? aigw_jwt_sign(key, pk, pklen, text) : NULL;
    if (tok == NULL) {
        fprintf(stderr, "aigw-token: signing failed\n");
        goto out;
    }
    printf("%s\n", tok);
    rc = 0;
out:
    free(tok);
    free(text);
    free(pk);
    json_decref(claims);
    aigw_config_free(&cfg);
    return rc;
}
