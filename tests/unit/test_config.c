/* test_config.c - configuration validation, env expansion, --check-config, small pure helpers */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/buffer.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#include "aigw/config.h"
#include "aigw/redis.h"
#include "aigw/stages.h"
#include "aigw/util.h"
#include "testlib.h"

static char path[64];

static int
load(const char *json, char *err, size_t errlen)
{
    struct aigw_config cfg;
    int rc;

    tl_write_file(path, json);
    rc = aigw_config_load(path, &cfg, err, errlen);
    if (rc == 0)
        aigw_config_free(&cfg);
    return rc;
}

#define BASE_DB "\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\"}"
#define HS_KEY "{\"kid\":\"k\",\"alg\":\"HS256\",\"secret\":\"0123456789abcdef0123456789abcdef\"}"

static void
expect_invalid(const char *name, const char *json, const char *needle)
{
    char err[512] = "";
    int rc = load(json, err, sizeof(err));

    CHECK(rc == -1 && strstr(err, needle) != NULL, "%s: rc=%d err=%s", name, rc, err);
}

/* An RS256/ES256 key file holding PEM text "with the right header" is not
 * enough: the key is parsed at load and must be RSA for RS256, EC P-256 for
 * ES256 (a garbled PEM or a key of the other kind was taken, and then every
 * token got 401). */
static void
test_public_keys(void)
{
    char *rpub, *rpriv, *epub, *epriv, *p384, *trunc, file[64];
    EVP_PKEY *k = EVP_EC_gen("P-384");
    BIO *b = BIO_new(BIO_s_mem());
    BUF_MEM *mem;

    tl_keypair("RS256", &rpub, &rpriv);
    tl_keypair("ES256", &epub, &epriv);
    if (k == NULL || b == NULL || PEM_write_bio_PUBKEY(b, k) != 1)
        abort();
    BIO_get_mem_ptr(b, &mem);
    p384 = aigw_xstrndup(mem->data, mem->length);
    trunc = aigw_xstrndup(rpub, strlen(rpub) / 2);
    snprintf(file, sizeof(file), "/tmp/aigw-config-pub-%d.pem", (int)getpid());

    const struct {
        const char *alg, *what, *pem, *needle; /* needle NULL: loads */
    } cases[] = {
        {"RS256", "RSA", rpub, NULL},
        {"ES256", "P-256", epub, NULL},
        {"ES256", "RSA", rpub, "ES256 needs a P-256 EC public key"},
        {"RS256", "P-256", epub, "RS256 needs an RSA public key"},
        {"ES256", "P-384", p384, "ES256 needs a P-256 EC public key"},
        {"RS256", "truncated", trunc, "RS256 needs an RSA public key"},
        {"RS256", "garbled", "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n",
         "RS256 needs an RSA public key"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[512] = "", *json;
        int rc;

        tl_write_file(file, cases[i].pem);
        json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"%s\","
                          "\"public_key_file\":\"%s\"}]}}",
                          cases[i].alg, file);
        rc = load(json, err, sizeof(err));
        free(json);
        if (cases[i].needle == NULL)
            CHECK(rc == 0, "%s with a %s key loads: %s", cases[i].alg, cases[i].what, err);
        else
            CHECK(rc == -1 && strstr(err, cases[i].needle) != NULL, "%s with a %s key refused: rc=%d %s",
                  cases[i].alg, cases[i].what, rc, err);
    }
    unlink(file);
    free(trunc);
    free(p384);
    BIO_free(b);
    EVP_PKEY_free(k);
    free(rpub);
    free(rpriv);
    free(epub);
    free(epriv);
}

/* secret_file, public_key_file and redis.password_file are absolute
 * paths: a relative one was read against the working directory, so
 * `aigw --check-config` run from the directory holding the files passed,
 * and then the service (working directory /) refused the same file at a
 * reload or the next start. Each file here is readable from the test's
 * working directory, under the relative name the configuration gives. */
static void
test_relative_files(void)
{
    char name[64], pem_name[64], *json, *pub = NULL, *priv = NULL;

    snprintf(name, sizeof(name), "aigw-config-rel-%d.secret", (int)getpid());
    snprintf(pem_name, sizeof(pem_name), "aigw-config-rel-%d.pem", (int)getpid());
    tl_write_file(name, "0123456789abcdef0123456789abcdef\n");
    tl_keypair("ES256", &pub, &priv);
    tl_write_file(pem_name, pub);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\",\"secret_file\":\"%s\"}]}}",
                      name);
    expect_invalid("a relative secret_file", json, "jwt.keys[0]: secret_file must be an absolute path");
    free(json);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\","
                      "\"public_key_file\":\"./%s\"}]}}",
                      pem_name);
    expect_invalid("a relative public_key_file", json, "jwt.keys[0]: public_key_file must be an absolute path");
    free(json);
    json = tl_sprintf("{\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\","
                      "\"password_file\":\"%s\"},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                      name);
    expect_invalid("a relative redis.password_file", json, "redis.password_file: must be an absolute path");
    free(json);
    unlink(name);
    unlink(pem_name);
    free(pub);
    free(priv);
}

/* A key or secret file that is a directory, or over 1 MiB: a clear error
 * naming the key (a directory read as empty: "needs a secret of at least
 * 32 bytes", "holds no password"; a longer file was cut at 1 MiB and
 * loaded). */
static void
test_unreadable_files(void)
{
    char dir[64], big[64], *json, *want, *text, *pub = NULL, *priv = NULL;
    size_t mib = 1024 * 1024;
    char err[512];

    snprintf(dir, sizeof(dir), "/tmp/aigw-config-dir-%d", (int)getpid());
    snprintf(big, sizeof(big), "/tmp/aigw-config-big-%d", (int)getpid());
    CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\",\"secret_file\":\"%s\"}]}}",
                      dir);
    want = tl_sprintf("jwt.keys[0]: cannot read secret_file %s: Is a directory", dir);
    expect_invalid("secret_file a directory", json, want);
    free(json);
    free(want);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\",\"public_key_file\":\"%s\"}]}}",
                      dir);
    want = tl_sprintf("jwt.keys[0]: cannot read public_key_file %s: Is a directory", dir);
    expect_invalid("public_key_file a directory", json, want);
    free(json);
    free(want);
    json = tl_sprintf("{\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\","
                      "\"password_file\":\"%s\"},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                      dir);
    want = tl_sprintf("redis.password_file: cannot read %s: Is a directory", dir);
    expect_invalid("redis.password_file a directory", json, want);
    free(json);
    free(want);

    /* exactly 1 MiB loads; one byte more is refused, not cut */
    text = malloc(mib + 2);
    memset(text, 'a', mib + 1);
    text[mib] = '\0';
    tl_write_file(big, text);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\",\"secret_file\":\"%s\"}]}}",
                      big);
    CHECK(load(json, err, sizeof(err)) == 0, "a secret_file of 1 MiB loads: %s", err);
    text[mib] = 'a';
    text[mib + 1] = '\0';
    tl_write_file(big, text);
    want = tl_sprintf("jwt.keys[0]: cannot read secret_file %s: larger than 1 MiB", big);
    expect_invalid("secret_file over 1 MiB", json, want);
    free(json);
    free(want);
    json = tl_sprintf("{\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\","
                      "\"password_file\":\"%s\"},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                      big);
    want = tl_sprintf("redis.password_file: cannot read %s: larger than 1 MiB", big);
    expect_invalid("redis.password_file over 1 MiB", json, want);
    free(json);
    free(want);
    /* a public key followed by padding: it loaded from its first MiB */
    tl_keypair("ES256", &pub, &priv);
    memset(text, '\n', mib + 1);
    memcpy(text, pub, strlen(pub));
    tl_write_file(big, text);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\",\"public_key_file\":\"%s\"}]}}",
                      big);
    want = tl_sprintf("jwt.keys[0]: cannot read public_key_file %s: larger than 1 MiB", big);
    expect_invalid("public_key_file over 1 MiB", json, want);
    free(json);
    free(want);
    text[mib] = '\0';
    tl_write_file(big, text);
    json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"ES256\",\"public_key_file\":\"%s\"}]}}",
                      big);
    CHECK(load(json, err, sizeof(err)) == 0, "a public_key_file of 1 MiB loads: %s", err);
    free(json);
    free(text);
    free(pub);
    free(priv);
    unlink(big);
    rmdir(dir);
}

int
main(void)
{
    struct aigw_config cfg;
    char err[512], month[8], ts[32];
    int status;

    snprintf(path, sizeof(path), "/tmp/aigw-config-test-%d.json", (int)getpid());
    unsetenv("AIGW_DATABASE_URL");
    unsetenv("AIGW_REDIS_URL");
    unsetenv("AIGW_PORT");
    unsetenv("AIGW_LISTEN_ADDR");

    CHECK(load("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]}}", err, sizeof(err)) == 0, "minimal config: %s", err);
    test_public_keys();
    /* streaming and OpenAI-route settings */
    expect_invalid("stream_idle_ms too small", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"stream_idle_ms\":5}}",
                   "stream_idle_ms");
    /* Redis URLs: an IPv6 address takes brackets (unbracketed, its colons
     * were read as a port); credentials as [user]:password@, %XX-escaped */
    {
        static const struct {
            const char *url;
            bool ok;
        } urls[] = {
            {"redis://127.0.0.1:6379", true}, {"redis://h", true},           {"redis://[::1]:6379/2", true},
            {"redis://[::1]", true},          {"unix:///run/r.sock?db=3", true}, {"redis://::1:6379", false},
            {"redis://::1", false},           {"redis://fe80::1:6379", false}, {"redis://[::1", false},
            {"redis://[::1]x", false},        {"redis://u:Zq9@h:1", true},     {"rediss://h:1", false},
            {"redis://h:0", false},           {"redis://h:1/x", false},        {"redis://:Zq9@h:1/2", true},
            {"redis://:Zq9@x@h", true},       {"redis://:Zq9%40x@[::1]:1", true}, {"redis://Zq9@h:1", true},
            {"redis://:@h:1", false},         {"redis://:Zq9%zz@h:1", false},  {"redis://:Zq9%00@h:1", false},
            {"redis://:Zq9%4@h:1", false},    {"redis://@h:1", false},    {"redis://:Zq9@::1:6379", false},
        };

        for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
            err[0] = '\0';
            CHECK(aigw_redis_url_check(urls[i].url, err, sizeof(err)) == urls[i].ok, "redis url %s: %s (%s)",
                  urls[i].url, urls[i].ok ? "taken" : "refused", err);
            CHECK(strstr(err, "Zq9") == NULL, "the message quotes no password: %s", err);
        }
    }
    /* redis.password_file: read at load, trailing CR/LF dropped */
    {
        char pwpath[64], *json;
        struct aigw_config pc;
        int rc;

        snprintf(pwpath, sizeof(pwpath), "/tmp/aigw-config-pw-%d", (int)getpid());
        json = tl_sprintf("{\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\","
                          "\"password_file\":\"%s\"},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                          pwpath);
        unlink(pwpath);
        expect_invalid("redis password_file missing", json, "redis.password_file: cannot read");
        tl_write_file(pwpath, "\n");
        expect_invalid("redis password_file empty", json, "holds no password");
        tl_write_file(pwpath, "s3cr3t\n");
        tl_write_file(path, json);
        rc = aigw_config_load(path, &pc, err, sizeof(err));
        CHECK(rc == 0 && pc.redis_password != NULL && strcmp(pc.redis_password, "s3cr3t") == 0,
              "redis password_file read without its newline: %s", err);
        if (rc == 0)
            aigw_config_free(&pc);
        unlink(pwpath);
        free(json);
    }
    /* messages name the whole path of the key */
    expect_invalid("range: section named", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"stream_idle_ms\":5}}",
                   "upstream.stream_idle_ms: must be an integer");
    expect_invalid("unset variable: section named",
                   "{" BASE_DB ",\"jwt\":{\"issuer\":\"${AIGW_TEST_NOT_SET_ANYWHERE}\",\"keys\":[" HS_KEY "]}}",
                   "jwt.issuer: environment variable AIGW_TEST_NOT_SET_ANYWHERE is not set");
    expect_invalid("backend slots: index named",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"backends\":[{\"name\":\"a\","
                   "\"url\":\"http://127.0.0.1:1\",\"slots\":0}]}}",
                   "upstream.backends[0].slots: must be an integer");
    expect_invalid("listen address: a host name", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"listen\":{\"address\":\"localhost\"}}",
                   "listen.address");
    expect_invalid("listen address: not an address", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"listen\":{\"address\":\"::1::2\"}}",
                   "listen.address");
    CHECK(load("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"listen\":{\"address\":\"::1\"}}", err, sizeof(err)) == 0,
          "listen address ::1 loads: %s", err);
    expect_invalid("stream_buffer_bytes too small",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"stream_buffer_bytes\":10}}",
                   "stream_buffer_bytes");
    expect_invalid("openai.models empty", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"openai\":{\"models\":[]}}",
                   "openai.models");
    expect_invalid("openai model ids duplicated",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"openai\":{\"models\":[{\"id\":\"m\"},"
                   "{\"id\":\"m2\"},{\"id\":\"m\",\"route\":\"sales\"}]}}",
                   "openai.models: duplicate id \"m\"");
    {
        /* upstream.model names the default model too: over 127 characters it
         * was cut to fit openai.models[0].id, a name no client could send */
        char model[160], *json;

        memset(model, 'm', 128);
        model[128] = '\0';
        json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"model\":\"%s\"}}", model);
        expect_invalid("upstream.model of 128 characters", json, "upstream.model: must be 1..127 characters");
        free(json);
        model[127] = '\0';
        json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"model\":\"%s\"}}", model);
        CHECK(load(json, err, sizeof(err)) == 0, "upstream.model of 127 characters loads: %s", err);
        free(json);
        expect_invalid("empty upstream.model", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"model\":\"\"}}",
                       "upstream.model: must be 1..127 characters");
    }
    expect_invalid("openai model without id",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"openai\":{\"models\":[{\"route\":\"sales\"}]}}",
                   "openai.models[0]: id");
    expect_invalid("openai model with an unknown route",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"openai\":{\"models\":[{\"id\":\"m\",\"route\":\"x\"}]}}",
                   "route must be a query type");
    {
        /* more tiers than the struct holds: refused, not written past it (9
         * of them overwrote n_tiers, 40 crashed --check-config and a reload) */
        char json[4096];
        int n = snprintf(json, sizeof(json), "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},"
                                             "\"openai\":{\"models\":[{\"id\":\"m\",\"tiers\":[");

        for (int i = 0; i < 40; i++)
            n += snprintf(json + n, sizeof(json) - (size_t)n, "%s\"tier-number-%02d\"", i ? "," : "", i);
        snprintf(json + n, sizeof(json) - (size_t)n, "]},{\"id\":\"m2\"}]}}");
        expect_invalid("40 tiers", json, "at most 8 plan names");
        n = snprintf(json, sizeof(json), "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},"
                                         "\"openai\":{\"models\":[{\"id\":\"m\",\"tiers\":[");
        for (int i = 0; i < 9; i++)
            n += snprintf(json + n, sizeof(json) - (size_t)n, "%s\"tier-%d\"", i ? "," : "", i);
        snprintf(json + n, sizeof(json) - (size_t)n, "]}]}}");
        expect_invalid("9 tiers", json, "at most 8 plan names");
    }
    {
        /* a database URL libpq cannot parse is refused without libpq's reason,
         * which quotes the password (it reached the log at every attempt) */
        char e3[512] = "";

        CHECK(load("{\"database\":{\"url\":\"postgresql://aigw:S3cr%et@127.0.0.1:1/aigw\"},"
                   "\"redis\":{\"url\":\"redis://127.0.0.1:1\"},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                   e3, sizeof(e3)) == -1 &&
                  strstr(e3, "database.url") != NULL && strstr(e3, "S3cr") == NULL,
              "an unparsable database.url, without the password: %s", e3);
    }
    {
        /* a JSON error names the line and column, not the text it stopped
         * at: that can be a secret with a stray backslash */
        char e2[512] = "";

        CHECK(load("{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\","
                   "\"secret\":\"TopSecretHmac\\Kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk\"}]}}",
                   e2, sizeof(e2)) == -1 &&
                  strstr(e2, ":1:") != NULL && strstr(e2, "TopSecret") == NULL,
              "a JSON error without the secret: %s", e2);
    }
    expect_invalid("openai.cache_sampled not a boolean",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"openai\":{\"cache_sampled\":1}}", "cache_sampled");
    {
        const struct aigw_model_cfg *m;

        tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"openai\":{\"models\":["
                            "{\"id\":\"small\"},{\"id\":\"big\",\"route\":\"sales\",\"tiers\":[\"enterprise\"]}]}}");
        CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "openai models load: %s", err);
        m = aigw_config_model(&cfg, "big", "enterprise");
        CHECK(m != NULL && m->qtype == aigw_query_type_index("sales"), "big: sales route for enterprise");
        CHECK(aigw_config_model(&cfg, "big", "pro") == NULL, "big: not for pro");
        CHECK(aigw_config_model(&cfg, "small", "standard") != NULL, "small: every plan");
        CHECK(aigw_config_model(&cfg, "nope", "enterprise") == NULL, "unknown model");
        aigw_config_free(&cfg);
    }
    expect_invalid("unknown key", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"lisen\":{}}", "unknown key \"lisen\"");
    expect_invalid("short HS256 secret",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\",\"secret\":\"short\"}]}}",
                   "at least 32 bytes");
    expect_invalid("alg none", "{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"none\",\"secret\":\"x\"}]}}",
                   "alg must be");
    expect_invalid("private key as public key",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"RS256\",\"public_key\":"
                   "\"-----BEGIN PRIVATE KEY-----\\nabc\\n-----END PRIVATE KEY-----\\n\"}]}}",
                   "public key");
    expect_invalid("duplicate kid", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "," HS_KEY "]}}", "duplicate kid");
    expect_invalid("no keys", "{" BASE_DB ",\"jwt\":{\"keys\":[]}}", "at least one key");
    expect_invalid("missing database url", "{\"redis\":{\"url\":\"redis://h:1\"},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                   "database.url");
    expect_invalid("unset variable",
                   "{\"database\":{\"url\":\"${AIGW_SURELY_UNSET_VAR}\"},\"redis\":{\"url\":\"redis://h:1\"},"
                   "\"jwt\":{\"keys\":[" HS_KEY "]}}",
                   "AIGW_SURELY_UNSET_VAR is not set");
    expect_invalid("port out of range", "{" BASE_DB ",\"listen\":{\"port\":70000},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                   "port");
    expect_invalid("redis timeout over 5 s",
                   "{\"database\":{\"url\":\"postgresql:///x\"},\"redis\":{\"url\":\"redis://127.0.0.1:1\","
                   "\"timeout_ms\":5001},\"jwt\":{\"keys\":[" HS_KEY "]}}",
                   "timeout_ms");
    expect_invalid("duplicate JSON key", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"log\":{},\"log\":{}}",
                   "duplicate");
    /* backend URLs are parsed as libcurl parses them: a query or a fragment
     * (the API path is appended after it), user:password, no host, a bad
     * port or a URL over 1000 characters are refused at load */
    {
        static const struct {
            const char *url, *needle; /* NULL: loads */
        } urls[] = {
            {"http://127.0.0.1:8081", NULL},
            {"https://llm.example:443/prefix/", NULL},
            {"http://[::1]:8081", NULL},
            {"HTTP://Host", NULL},
            {"http://", "not a valid URL"},
            {"http:///x", "no host"},
            {"http://exa mple:80", "not a valid URL"},
            {"http://127.0.0.1:abc", "not a valid URL"},
            {"http://127.0.0.1:65536", "not a valid URL"},
            {"http://127.0.0.1:0", "bad port"},
            {"https://h/x?y=1", "query or a fragment"},
            {"https://h/x?", "query or a fragment"},
            {"https://h/x#frag", "query or a fragment"},
            {"http://user:pw@h:1", "user name or password"},
            {"http://user@h:1", "user name or password"},
            {"ftp://x", "url must start"},
        };
        char *longurl = aigw_xmalloc(1100), *json;

        for (size_t i = 0; i < sizeof(urls) / sizeof(urls[0]); i++) {
            json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"backends\":[{\"name\":"
                              "\"a\",\"url\":\"%s\"}]}}",
                              urls[i].url);
            err[0] = '\0';
            if (urls[i].needle == NULL)
                CHECK(load(json, err, sizeof(err)) == 0, "backend url %s loads: %s", urls[i].url, err);
            else
                expect_invalid(urls[i].url, json, urls[i].needle);
            free(json);
        }
        snprintf(longurl, 1100, "http://h/%0990d", 0); /* 999 characters: taken */
        json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"backends\":[{\"name\":"
                          "\"a\",\"url\":\"%s\"}]}}",
                          longurl);
        CHECK(load(json, err, sizeof(err)) == 0, "a backend url of 999 characters loads: %s", err);
        free(json);
        snprintf(longurl, 1100, "http://h/%01000d", 0); /* 1009 characters: the probe cut it at 1024 with /health */
        json = tl_sprintf("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"backends\":[{\"name\":"
                          "\"a\",\"url\":\"%s\"}]}}",
                          longurl);
        expect_invalid("a backend url over 1000 characters", json, "longer than 1000");
        free(json);
        free(longurl);
    }
    test_relative_files();
    test_unreadable_files();
    expect_invalid("empty spool_dir", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"usage\":{\"spool_dir\":\"${AIGW_NOPE:-}\"}}",
                   "usage.spool_dir: must be an absolute path");
    expect_invalid("relative spool_dir", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"usage\":{\"spool_dir\":\"spool\"}}",
                   "usage.spool_dir: must be an absolute path");
    CHECK(load("{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"usage\":{\"spool_dir\":\"/tmp/x\"}}", err, sizeof(err)) == 0,
          "an absolute spool_dir loads: %s", err);
    expect_invalid("request_timeout_s 0", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"http\":{\"request_timeout_s\":0}}",
                   "http.request_timeout_s: must be an integer in [1, 3600]");
    expect_invalid("request_timeout_s 3601", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"http\":{\"request_timeout_s\":3601}}",
                   "http.request_timeout_s: must be an integer in [1, 3600]");
    expect_invalid("memory_max_kb 0", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"usage\":{\"memory_max_kb\":0}}",
                   "usage.memory_max_kb: must be an integer in [1, 1048576]");
    expect_invalid("bad backend url",
                   "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"upstream\":{\"backends\":[{\"name\":\"a\",\"url\":\"ftp://x\"}]}}",
                   "url must start");

    /* env expansion and overrides */
    setenv("AIGW_TEST_SECRET", "abcdefghijklmnopqrstuvwxyz0123456789", 1);
    setenv("AIGW_PORT", "9999", 1);
    tl_write_file(path, "{\"database\":{\"url\":\"${AIGW_NOPE:-postgresql:///fallback}\"},"
                        "\"redis\":{\"url\":\"redis://h:1\"},\"_comment\":\"ignored\","
                        "\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\",\"secret\":\"${AIGW_TEST_SECRET}\"}]}}");
    CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "expansion config loads: %s", err);
    CHECK(cfg.database_url && strcmp(cfg.database_url, "postgresql:///fallback") == 0, "default applied");
    CHECK(cfg.database_listen_url == NULL, "no database.listen_url: the listener uses database.url");
    CHECK(cfg.jwt_keys[0].key_len == 36, "secret from environment");
    CHECK(cfg.port == 9999, "AIGW_PORT override");
    CHECK(aigw_config_find_key(&cfg, NULL) == &cfg.jwt_keys[0], "single key found without kid");
    CHECK(aigw_config_find_key(&cfg, "other") == NULL, "unknown kid not found");
    aigw_config_free(&cfg);
    unsetenv("AIGW_PORT");

    {
        /* ${VAR:-default}: name and default had to fit in 127 bytes (a long
         * default URL was a "bad variable reference") */
        char dflt[300], *json;

        snprintf(dflt, sizeof(dflt), "postgresql:///aigw?host=/run/postgresql&application_name=%0200d", 0);
        json = tl_sprintf("{\"database\":{\"url\":\"${AIGW_NOPE:-%s}\"},\"redis\":{\"url\":\"redis://h:1\"},"
                          "\"jwt\":{\"keys\":[" HS_KEY "]}}",
                          dflt);
        tl_write_file(path, json);
        free(json);
        CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "a long ${VAR:-default} loads: %s", err);
        CHECK(cfg.database_url != NULL && strcmp(cfg.database_url, dflt) == 0, "a long default applied");
        aigw_config_free(&cfg);
    }

    /* database.listen_url: its own session for LISTEN; "" (an empty default) means unset */
    tl_write_file(path, "{\"database\":{\"url\":\"postgresql://u@127.0.0.1:6432/aigw\","
                        "\"listen_url\":\"postgresql:///aigw?host=/run/postgresql\"},"
                        "\"redis\":{\"url\":\"redis://h:1\"},\"jwt\":{\"keys\":[" HS_KEY "]}}");
    CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "listen_url config loads: %s", err);
    CHECK(cfg.database_listen_url && strcmp(cfg.database_listen_url, "postgresql:///aigw?host=/run/postgresql") == 0,
          "database.listen_url read");
    aigw_config_free(&cfg);
    tl_write_file(path, "{\"database\":{\"url\":\"postgresql:///x\",\"listen_url\":\"${AIGW_NOPE:-}\"},"
                        "\"redis\":{\"url\":\"redis://h:1\"},\"jwt\":{\"keys\":[" HS_KEY "]}}");
    CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "empty listen_url config loads: %s", err);
    CHECK(cfg.database_listen_url == NULL, "an empty database.listen_url counts as unset");
    aigw_config_free(&cfg);
    /* jwt.issuer / jwt.audience: "" counts as unset too (it rejected every token) */
    tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"issuer\":\"${AIGW_NOPE:-}\",\"audience\":\"\",\"keys\":[" HS_KEY "]}}");
    CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "empty issuer/audience config loads: %s", err);
    CHECK(cfg.jwt_issuer == NULL && cfg.jwt_audience == NULL, "an empty jwt.issuer and jwt.audience count as unset");
    aigw_config_free(&cfg);
    tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"issuer\":\"${AIGW_NOPE:-iss}\",\"audience\":\"aud\",\"keys\":[" HS_KEY "]}}");
    CHECK(aigw_config_load(path, &cfg, err, sizeof(err)) == 0, "issuer/audience config loads: %s", err);
    CHECK(cfg.jwt_issuer != NULL && strcmp(cfg.jwt_issuer, "iss") == 0 && cfg.jwt_audience != NULL &&
              strcmp(cfg.jwt_audience, "aud") == 0,
          "jwt.issuer and jwt.audience read");
    aigw_config_free(&cfg);
    expect_invalid("listen_url not a string", "{\"database\":{\"url\":\"postgresql:///x\",\"listen_url\":5},"
                   "\"redis\":{\"url\":\"redis://h:1\"},\"jwt\":{\"keys\":[" HS_KEY "]}}", "listen_url");

    /* aigw --check-config: 0 for a valid file, 2 for an invalid one, secrets never printed */
    {
        char cmd[512];

        tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]}}");
        snprintf(cmd, sizeof(cmd), "%s --check-config -c %s >/dev/null 2>&1", AIGW_BIN_PATH, path);
        status = system(cmd);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "--check-config valid -> 0");
        tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[{\"kid\":\"k\",\"alg\":\"HS256\",\"secret\":\"tooshort\"}]}}");
        status = system(cmd);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "--check-config invalid -> 2");
        snprintf(cmd, sizeof(cmd), "%s --check-config -c %s 2>&1 | grep -q tooshort", AIGW_BIN_PATH, path);
        status = system(cmd);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 1, "the secret is not echoed in the error");
        /* a path without -c is refused, not ignored (the default file was checked instead) */
        tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]}}");
        snprintf(cmd, sizeof(cmd), "%s --check-config %s 2>&1 | grep -q '^usage: aigw'", AIGW_BIN_PATH, path);
        status = system(cmd);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "--check-config PATH without -c prints the usage");
        snprintf(cmd, sizeof(cmd), "%s --check-config %s >/dev/null 2>&1", AIGW_BIN_PATH, path);
        status = system(cmd);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "--check-config PATH without -c -> 2");
        snprintf(cmd, sizeof(cmd), "%s --check-config -c %s extra >/dev/null 2>&1", AIGW_BIN_PATH, path);
        status = system(cmd);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 2, "an extra argument after -c PATH -> 2");
    }

    /* lifecycle keys and what a reload cannot change */
    {
        struct aigw_config a, b;
        char diff[256];

        tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]}}");
        CHECK(aigw_config_load(path, &a, err, sizeof(err)) == 0, "defaults: %s", err);
        CHECK(a.dependency_timeout_ms == 60000 && a.drain_timeout_ms == 30000, "lifecycle defaults %d %d",
              a.dependency_timeout_ms, a.drain_timeout_ms);
        CHECK(a.request_timeout_s == 30, "http.request_timeout_s defaults to 30 (%d)", a.request_timeout_s);
        {
            struct aigw_config c;

            tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"http\":{\"request_timeout_s\":7}}");
            CHECK(aigw_config_load(path, &c, err, sizeof(err)) == 0 && c.request_timeout_s == 7, "request_timeout_s read: %s",
                  err);
            CHECK(aigw_config_restart_diff(&a, &c, diff, sizeof(diff)) == 1 && strcmp(diff, "http") == 0,
                  "a request_timeout_s change is for a restart: \"%s\"", diff);
            aigw_config_free(&c);
        }
        tl_write_file(path, "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "],\"leeway_s\":5},"
                            "\"listen\":{\"port\":9001},\"http\":{\"max_body_bytes\":4096},"
                            "\"startup\":{\"dependency_timeout_ms\":0},\"shutdown\":{\"drain_timeout_ms\":1500},"
                            "\"log\":{\"level\":\"debug\"}}");
        CHECK(aigw_config_load(path, &b, err, sizeof(err)) == 0, "lifecycle keys: %s", err);
        CHECK(b.dependency_timeout_ms == 0 && b.drain_timeout_ms == 1500, "lifecycle keys read");
        CHECK(aigw_config_restart_diff(&a, &b, diff, sizeof(diff)) == 3 &&
                  strcmp(diff, "listen, http, startup") == 0,
              "restart-only settings named, reloadable ones (jwt, log, shutdown) not: \"%s\"", diff);
        CHECK(aigw_config_restart_diff(&a, &a, diff, sizeof(diff)) == 0 && diff[0] == '\0', "no difference");
        aigw_config_free(&a);
        aigw_config_free(&b);
        expect_invalid("drain timeout range", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"shutdown\":{\"drain_timeout_ms\":-1}}",
                       "drain_timeout_ms");
        expect_invalid("unknown shutdown key", "{" BASE_DB ",\"jwt\":{\"keys\":[" HS_KEY "]},\"shutdown\":{\"grace\":1}}",
                       "unknown key \"grace\"");
    }

    /* pure helpers */
    CHECK(aigw_json_depth("{\"a\":[[1]]}", 11) == 3, "json depth 3");
    CHECK(aigw_json_depth("{\"a\":\"[[[[\"}", 12) == 1, "brackets inside strings do not count");
    CHECK(aigw_json_depth("{\"a\":\"\\\"[[\"}", 12) == 1, "escaped quote handled");
    aigw_month_key(1795392000, month); /* 2026-11-23 */
    CHECK(strcmp(month, "202611") == 0, "month key %s", month);
    aigw_rfc3339(aigw_next_month_start(1795392000), ts);
    CHECK(strcmp(ts, "2026-12-01T00:00:00Z") == 0, "next month start %s", ts);
    aigw_rfc3339(aigw_next_month_start(1798675200), ts); /* 2026-12-31 */
    CHECK(strcmp(ts, "2027-01-01T00:00:00Z") == 0, "year rollover %s", ts);
    CHECK(aigw_is_uuid("11111111-1111-4111-8111-111111111111", 36), "uuid ok");
    CHECK(!aigw_is_uuid("11111111-1111-4111-8111-11111111111g", 36), "uuid bad hex");
    {
        char a[37], b[37], c[37], hex[13];
        struct timespec pause = {0, 3 * 1000000L};
        long long ms = (long long)time(NULL) * 1000, prefix;

        aigw_uuid7(a);
        nanosleep(&pause, NULL);
        aigw_uuid7(b);
        aigw_uuid7(c);
        CHECK(aigw_is_uuid(a, 36) && a[14] == '7' && strchr("89ab", a[19]) != NULL, "uuid7 version and variant: %s", a);
        snprintf(hex, sizeof(hex), "%.8s%.4s", a, a + 9);
        prefix = strtoll(hex, NULL, 16);
        CHECK(prefix >= ms - 1000 && prefix <= ms + 2000, "uuid7 starts with the Unix ms: %lld vs %lld", prefix, ms);
        CHECK(strcmp(a, b) < 0, "uuid7 ids sort by time: %s < %s", a, b);
        CHECK(strcmp(b, c) != 0, "uuid7 ids differ within one ms");
    }
    {
        unsigned char x[21], y[21];

        memset(x, 0xAA, sizeof(x));
        memset(y, 0xAA, sizeof(y));
        aigw_unique_bytes(x, 13);
        aigw_unique_bytes(y, 13);
        CHECK(memcmp(x, y, 13) != 0, "unique bytes differ call to call");
        CHECK(x[13] == 0xAA && y[13] == 0xAA && x[20] == 0xAA, "unique bytes write exactly n bytes");
        aigw_unique_bytes(x, 0);
        CHECK(x[13] == 0xAA, "n = 0 writes nothing");
    }
    {
        long v;

        CHECK(aigw_parse_long("42", 0, 100, &v) && v == 42, "parse 42");
        CHECK(!aigw_parse_long("42x", 0, 100, &v), "parse junk");
        CHECK(!aigw_parse_long("101", 0, 100, &v), "parse range");
        CHECK(!aigw_parse_long("", 0, 100, &v), "parse empty");
    }
    unlink(path);
    return tl_done();
}
