/* testlib.c - helpers shared by the integration tests (real PostgreSQL, Redis, aigw) */
#include "testlib.h"

#include "aigw/apikey.h"
#include "aigw/util.h"

#include <dirent.h>
#include <arpa/inet.h>
#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis.h>
#include <jansson.h>
#include <jwt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int tl_passed, tl_failed;

void
tl_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
{
    va_list ap;

    if (ok) {
        tl_passed++;
        return;
    }
    tl_failed++;
    fprintf(stderr, "FAIL %s:%d: %s -- ", file, line, expr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int
tl_done(void)
{
    printf("%d passed, %d failed\n", tl_passed, tl_failed);
    return tl_failed == 0 && tl_passed > 0 ? 0 : 1;
}

const char *
tl_env(const char *name)
{
    const char *v = getenv(name);

    if (v == NULL || *v == '\0') {
        fprintf(stderr, "test environment variable %s is not set (run through scripts/test.sh)\n", name);
        exit(1);
    }
    return v;
}

/* ---- HTTP ---- */

struct buf {
    char *p;
    size_t n;
};

static size_t
collect(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct buf *b = ud;
    size_t len = size * nmemb;

    b->p = realloc(b->p, b->n + len + 1);
    memcpy(b->p + b->n, ptr, len);
    b->n += len;
    b->p[b->n] = '\0';
    return len;
}

void
tl_resp_free(struct tl_resp *r)
{
    free(r->body);
    free(r->headers);
    memset(r, 0, sizeof(*r));
}

/* One request on c (a fresh or a kept handle: curl keeps its connections
 * across requests and curl_easy_reset). */
static int
perform(CURL *c, int port, const char *method, const char *path, const char *const *headers, const char *body,
        size_t body_len, struct tl_resp *out)
{
    struct curl_slist *hl = NULL;
    struct buf b = {NULL, 0}, h = {NULL, 0};
    char url[2048];
    CURLcode rc;

    memset(out, 0, sizeof(*out));
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &h);
    if (strcmp(method, "HEAD") == 0)
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    hl = curl_slist_append(hl, "Expect:");
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    if (body != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    rc = curl_easy_perform(c);
    if (rc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
    curl_slist_free_all(hl);
    out->body = b.p ? b.p : calloc(1, 1);
    out->body_len = b.n;
    out->headers = h.p ? h.p : calloc(1, 1);
    return rc == CURLE_OK ? 0 : -1;
}

int
tl_http(int port, const char *method, const char *path, const char *const *headers, const char *body,
        size_t body_len, struct tl_resp *out)
{
    CURL *c = curl_easy_init();
    int rc = perform(c, port, method, path, headers, body, body_len, out);

    curl_easy_cleanup(c);
    return rc;
}

struct tl_conn {
    CURL *curl;
    int port;
};

struct tl_conn *
tl_conn_open(int port)
{
    struct tl_conn *c = calloc(1, sizeof(*c));

    c->curl = curl_easy_init();
    c->port = port;
    return c;
}

void
tl_conn_close(struct tl_conn *c)
{
    if (c == NULL)
        return;
    curl_easy_cleanup(c->curl);
    free(c);
}

int
tl_conn_get(struct tl_conn *c, const char *path, const char *token, struct tl_resp *out, long *new_conns)
{
    char auth[9000];
    const char *hdrs[2] = {NULL, NULL};
    long n = -1;
    int rc;

    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        hdrs[0] = auth;
    }
    curl_easy_reset(c->curl);
    rc = perform(c->curl, c->port, "GET", path, hdrs, NULL, 0, out);
    curl_easy_getinfo(c->curl, CURLINFO_NUM_CONNECTS, &n);
    if (new_conns != NULL)
        *new_conns = n;
    return rc;
}

/* A request without a body, with "Authorization: Bearer <token>" when token is set. */
static int
bodyless(int port, const char *method, const char *path, const char *token, struct tl_resp *out)
{
    char auth[9000];
    const char *hdrs[2] = {NULL, NULL};

    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        hdrs[0] = auth;
    }
    return tl_http(port, method, path, hdrs, NULL, 0, out);
}

int
tl_get(int port, const char *path, const char *token, struct tl_resp *out)
{
    return bodyless(port, "GET", path, token, out);
}

int
tl_post(int port, const char *path, const char *token, const char *json, struct tl_resp *out)
{
    char auth[9000];
    const char *hdrs[3] = {"Content-Type: application/json", NULL, NULL};

    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        hdrs[1] = auth;
    }
    return tl_http(port, "POST", path, hdrs, json, json ? strlen(json) : 0, out);
}

int
tl_send(int port, const char *method, const char *path, const char *token, const char *json,
        const char *const *extra_headers, struct tl_resp *out)
{
    char auth[9000];
    const char *hdrs[16];
    size_t n = 0;

    if (json != NULL || strcmp(method, "GET") != 0)
        hdrs[n++] = "Content-Type: application/json";
    if (token != NULL) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
        hdrs[n++] = auth;
    }
    for (size_t i = 0; extra_headers != NULL && extra_headers[i] != NULL && n < 15; i++)
        hdrs[n++] = extra_headers[i];
    hdrs[n] = NULL;
    return tl_http(port, method, path, hdrs, json, json ? strlen(json) : 0, out);
}

void
tl_expect_field(const char *what, const struct tl_resp *r, long status, const char *code, const char *field)
{
    char buf[512] = "";

    CHECK(r->status == status, "%s: status %ld want %ld: %s", what, r->status, status, r->body);
    if (code != NULL)
        CHECK(tl_json_str(r, "error.code", buf, sizeof(buf)) && strcmp(buf, code) == 0, "%s: code %s want %s", what,
              buf, code);
    if (field != NULL) {
        size_t n = strlen(field);

        CHECK(tl_json_str(r, "error.message", buf, sizeof(buf)) && strncmp(buf, field, n) == 0 && buf[n] == ':',
              "%s: message names %s: %s", what, field, r->body);
    }
}

const char *
tl_resp_header(const struct tl_resp *r, const char *name, char *buf, size_t cap)
{
    char needle[128];
    const char *p;
    size_t n;

    snprintf(needle, sizeof(needle), "\n%s:", name);
    p = strcasestr(r->headers, needle);
    if (p == NULL)
        return NULL;
    p += strlen(needle);
    while (*p == ' ')
        p++;
    n = strcspn(p, "\r\n");
    if (n >= cap)
        n = cap - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

static json_t *
json_at(const struct tl_resp *r, const char *path, json_t **root)
{
    char key[128];
    json_t *v;

    *root = json_loads(r->body, 0, NULL);
    v = *root;
    while (v != NULL && *path) {
        size_t n = strcspn(path, ".");

        snprintf(key, sizeof(key), "%.*s", (int)n, path);
        if (json_is_array(v) && n > 0 && strspn(key, "0123456789") == n) /* "choices.0.x" */
            v = json_array_get(v, strtoul(key, NULL, 10));
        else
            v = json_object_get(v, key);
        path += n;
        if (*path == '.')
            path++;
    }
    return v;
}

const char *
tl_json_str(const struct tl_resp *r, const char *path, char *buf, size_t cap)
{
    json_t *root, *v = json_at(r, path, &root);
    const char *res = NULL;

    if (json_is_string(v)) {
        snprintf(buf, cap, "%s", json_string_value(v));
        res = buf;
    } else if (json_is_boolean(v)) {
        snprintf(buf, cap, "%s", json_is_true(v) ? "true" : "false");
        res = buf;
    }
    json_decref(root);
    return res;
}

long long
tl_json_int(const struct tl_resp *r, const char *path, long long fallback)
{
    json_t *root, *v = json_at(r, path, &root);
    long long res = json_is_integer(v) ? json_integer_value(v) : fallback;

    json_decref(root);
    return res;
}

/* ---- aigw process ---- */

int
tl_free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port;

    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &len);
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}

char *
tl_read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    struct buf b = {NULL, 0};
    char tmp[4096];
    size_t n;

    if (f == NULL)
        return NULL;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        collect(tmp, 1, n, &b);
    fclose(f);
    return b.p ? b.p : calloc(1, 1);
}

/* In the child: the environment of a test aigw, then extra "NAME=value"
 * settings; a WATCHDOG_USEC among them also sets WATCHDOG_PID to the
 * child's own pid, as systemd does. */
static void
child_env(const struct tl_aigw *gw, const char *port, const char *const *env)
{
    setenv("AIGW_PORT", port, 1);
    if (getenv("AIGW_SPOOL_DIR") == NULL) {
        char spool[300];

        snprintf(spool, sizeof(spool), "%s/spool", gw->dir);
        setenv("AIGW_SPOOL_DIR", spool, 1);
    }
    unsetenv("JOURNAL_STREAM");
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
        char name[128];
        const char *eq = strchr(env[i], '=');

        if (eq == NULL || (size_t)(eq - env[i]) >= sizeof(name))
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(eq - env[i]), env[i]);
        setenv(name, eq + 1, 1);
        if (strcmp(name, "WATCHDOG_USEC") == 0) {
            char pid[24];

            snprintf(pid, sizeof(pid), "%d", (int)getpid());
            setenv("WATCHDOG_PID", pid, 1);
        }
    }
}

int
tl_aigw_start(struct tl_aigw *gw, const char *config_json)
{
    return tl_aigw_start_env(gw, config_json, NULL);
}

int
tl_aigw_start_env(struct tl_aigw *gw, const char *config_json, const char *const *env)
{
    return tl_aigw_start_wrapped(gw, config_json, env, NULL);
}

int
tl_aigw_start_wrapped(struct tl_aigw *gw, const char *config_json, const char *const *env, const char *const *wrap)
{
    char portbuf[16];
    char *cfg = NULL;
    pid_t parent = getpid();
    FILE *f;

    memset(gw, 0, sizeof(*gw));
    gw->status = -1;
    gw->failed_before = tl_failed;
    snprintf(gw->dir, sizeof(gw->dir), "/tmp/aigw-test-XXXXXX");
    if (mkdtemp(gw->dir) == NULL)
        return -1;
    snprintf(gw->config, sizeof(gw->config), "%s/aigw.json", gw->dir);
    snprintf(gw->log, sizeof(gw->log), "%s/aigw.log", gw->dir);
    if (config_json == NULL)
        cfg = tl_read_file(AIGW_SOURCE_DIR "/config/aigw.json");
    f = fopen(gw->config, "w");
    fputs(config_json ? config_json : cfg, f);
    fclose(f);
    free(cfg);
    gw->port = tl_free_port();
    snprintf(portbuf, sizeof(portbuf), "%d", gw->port);
    gw->pid = fork();
    if (gw->pid == 0) {
        int fd;

        /* a test that dies without stopping its aigw (a crash, ctest's
         * timeout) must not leave it serving: it is killed with the test
         * (with the thread that forked it, so start it from the test's main
         * thread); and the test may have died before the signal was set */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        fd = open(gw->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fd, 1);
        dup2(fd, 2);
        child_env(gw, portbuf, env);
        if (wrap != NULL) {
            const char *argv[32];
            size_t n = 0;

            while (n < 28 && wrap[n] != NULL) {
                argv[n] = wrap[n];
                n++;
            }
            argv[n++] = AIGW_BIN_PATH;
            argv[n++] = "-c";
            argv[n++] = gw->config;
            argv[n] = NULL;
            execvp(argv[0], (char *const *)argv);
            _exit(127);
        }
        execl(AIGW_BIN_PATH, "aigw", "-c", gw->config, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < (wrap != NULL ? 1200 : 200); i++) {
        struct tl_resp r;
        int status;

        if (waitpid(gw->pid, &status, WNOHANG) == gw->pid) {
            char *log = tl_aigw_log(gw);

            fprintf(stderr, "aigw exited during start-up:\n%s\n", log ? log : "");
            free(log);
            gw->pid = 0;
            gw->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return -1;
        }
        if (tl_get(gw->port, "/healthz", NULL, &r) == 0 && r.status == 200) {
            tl_resp_free(&r);
            return 0;
        }
        tl_resp_free(&r);
        usleep(50 * 1000);
    }
    {
        char *log = tl_aigw_log(gw);

        fprintf(stderr, "aigw did not become healthy; log:\n%s\n", log ? log : "");
        free(log);
    }
    tl_aigw_kill9(gw); /* not left running, nor its temp dir */
    return -1;
}

int
tl_aigw_kill9(struct tl_aigw *gw)
{
    int status = 0;

    if (gw->pid <= 0)
        return -1;
    kill(gw->pid, SIGKILL);
    waitpid(gw->pid, &status, 0);
    gw->pid = 0;
    if (gw->dir[0] != '\0') {
        if (!tl_rm_rf(gw->dir))
            fprintf(stderr, "could not remove %s\n", gw->dir);
        gw->dir[0] = '\0';
    }
    return 0;
}

char *
tl_aigw_log(const struct tl_aigw *gw)
{
    return tl_read_file(gw->log);
}

void
tl_aigw_signal(const struct tl_aigw *gw, int sig)
{
    if (gw->pid > 0)
        kill(gw->pid, sig);
}

int
tl_aigw_wait(struct tl_aigw *gw, int timeout_ms)
{
    int status = 0;

    for (int waited = 0; gw->pid > 0; waited += 50) {
        if (waitpid(gw->pid, &status, WNOHANG) == gw->pid) {
            gw->pid = 0;
            gw->status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            return gw->status;
        }
        if (waited >= timeout_ms)
            return -1;
        usleep(50 * 1000);
    }
    return gw->status;
}

int
tl_aigw_stop(struct tl_aigw *gw)
{
    int res;

    tl_aigw_signal(gw, SIGTERM);
    res = tl_aigw_wait(gw, 10000);
    if (res == -1 && gw->pid > 0) {
        kill(gw->pid, SIGKILL);
        waitpid(gw->pid, NULL, 0);
    }
    if (res != 0 || tl_failed > gw->failed_before) {
        char *log = tl_aigw_log(gw);

        fprintf(stderr, "aigw exit status %d; log:\n%s\n", res, log ? log : "");
        free(log);
    }
    if (gw->dir[0] != '\0') {
        if (!tl_rm_rf(gw->dir))
            fprintf(stderr, "could not remove %s\n", gw->dir);
        gw->dir[0] = '\0';
    }
    gw->pid = 0;
    return res;
}

bool
tl_aigw_log_wait(const struct tl_aigw *gw, const char *needle, int timeout_ms)
{
    for (int waited = 0;; waited += 50) {
        char *log = tl_aigw_log(gw);
        bool found = log != NULL && strstr(log, needle) != NULL;

        free(log);
        if (found)
            return true;
        if (waited >= timeout_ms)
            return false;
        usleep(50 * 1000);
    }
}

/* ---- PostgreSQL ---- */

static PGconn *
connect_url(const char *url)
{
    PGconn *c = PQconnectdb(url);

    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "connect %s: %s\n", url, PQerrorMessage(c));
        exit(1);
    }
    return c;
}

PGconn *
tl_pg_owner(void)
{
    return connect_url(tl_env("AIGW_DATABASE_OWNER_URL"));
}

PGconn *
tl_pg_app(void)
{
    return connect_url(tl_env("AIGW_DATABASE_URL"));
}

PGresult *
tl_sql(PGconn *c, bool must_succeed, const char *sql, int n, const char *const *params)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(r);

    if (must_succeed && st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
        fprintf(stderr, "SQL failed: %s\n  %s\n", sql, PQresultErrorMessage(r));
        exit(1);
    }
    return r;
}

long
tl_sql_long(PGconn *c, const char *sql, int n, const char *const *params)
{
    PGresult *r = tl_sql(c, true, sql, n, params);
    long v = PQntuples(r) > 0 && !PQgetisnull(r, 0, 0) ? strtol(PQgetvalue(r, 0, 0), NULL, 10) : -1;

    PQclear(r);
    return v;
}

void
tl_create_tenant(PGconn *owner, const char *tier, const char *status, char id[37], char code[65])
{
    const char *params[3];
    PGresult *r;
    unsigned rnd = (unsigned)time(NULL) ^ ((unsigned)getpid() << 8) ^ (unsigned)rand();
    static int seq;

    snprintf(code, 65, "t_%08x_%d", rnd, ++seq);
    params[0] = code;
    params[1] = tier;
    params[2] = status;
    r = tl_sql(owner, true,
               "INSERT INTO tenants (code, name, tier, status) VALUES ($1, 'Test ' || $1, $2, $3) RETURNING id", 3,
               params);
    snprintf(id, 37, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* ---- tokens ---- */

char *
tl_sign(const char *alg, const char *kid, const char *key, size_t key_len, const char *claims_json)
{
    jwt_t *j = NULL;
    char *tok, *res;

    if (jwt_new(&j) != 0 || jwt_add_grants_json(j, claims_json) != 0)
        abort();
    if (kid != NULL)
        jwt_add_header(j, "kid", kid);
    if (jwt_set_alg(j, jwt_str_alg(alg), (const unsigned char *)key, (int)key_len) != 0)
        abort();
    tok = jwt_encode_str(j);
    jwt_free(j);
    if (tok == NULL)
        abort();
    res = strdup(tok);
    free(tok);
    return res;
}

char *
tl_token(const char *tenant, const char *role, long ttl)
{
    return tl_token_kid("dev", tl_env("AIGW_JWT_SECRET"), tenant, role, ttl);
}

char *
tl_token_kid(const char *kid, const char *secret, const char *tenant, const char *role, long ttl)
{
    char claims[512];
    long now = (long)time(NULL);

    snprintf(claims, sizeof(claims), "{\"sub\":\"user-1\",\"tenant_id\":\"%s\",\"role\":\"%s\",\"iat\":%ld,\"exp\":%ld}",
             tenant, role, now, now + ttl);
    return tl_sign("HS256", kid, secret, strlen(secret), claims);
}

char *
tl_platform_token(const char *role, long ttl)
{
    const char *secret = tl_env("AIGW_PLATFORM_JWT_SECRET");
    char claims[256];
    long now = (long)time(NULL);

    snprintf(claims, sizeof(claims), "{\"sub\":\"ops-1\",\"role\":\"%s\",\"iat\":%ld,\"exp\":%ld}", role, now,
             now + ttl);
    return tl_sign("HS256", "platform", secret, strlen(secret), claims);
}

/* One page: the items to each(), the next cursor into cursor ("" at the end). */
static bool
walk_page(const struct tl_resp *r, int limit, const char *list_key, const char *cursor_key,
          void (*each)(struct json_t *item, void *ctx), void *ctx, char *cursor, size_t cap)
{
    json_t *root = json_loads(r->body, 0, NULL), *list = json_object_get(root, list_key), *item, *next;
    size_t i;
    bool ok = json_is_array(list) && json_array_size(list) <= (size_t)limit;

    CHECK(ok, "page of at most %d %s: %s", limit, list_key, r->body);
    json_array_foreach(list, i, item) {
        each(item, ctx);
    }
    next = json_object_get(root, cursor_key);
    snprintf(cursor, cap, "%s", json_is_string(next) ? json_string_value(next) : "");
    json_decref(root);
    return ok;
}

int
tl_walk_pages(int port, const char *token, const char *first, int limit, const char *list_key,
              const char *cursor_key, const char *cursor_arg, void (*each)(struct json_t *item, void *ctx),
              void *ctx)
{
    char path[512], cursor[128] = "";
    int pages = 0;

    do {
        struct tl_resp r;
        bool ok;

        snprintf(path, sizeof(path), "%s%s%s%s%s", first, cursor[0] ? "&" : "", cursor[0] ? cursor_arg : "",
                 cursor[0] ? "=" : "", cursor);
        tl_get(port, path, token, &r);
        CHECK(r.status == 200, "page %s: %ld %s", path, r.status, r.body);
        ok = r.status == 200 && walk_page(&r, limit, list_key, cursor_key, each, ctx, cursor, sizeof(cursor));
        tl_resp_free(&r);
        if (!ok)
            return -1;
        pages++;
    } while (cursor[0] != '\0' && pages < 10000);
    return pages;
}

long
tl_count_rows(PGconn *owner, const char *table)
{
    char sql[128];

    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s", table);
    return tl_sql_long(owner, sql, 0, NULL);
}

/* ---- Redis ---- */

/* A connection to AIGW_REDIS_URL, or NULL. */
static redisContext *
redis_connect(void)
{
    const char *url = tl_env("AIGW_REDIS_URL");
    char host[64] = "127.0.0.1";
    int port = 6379;
    redisContext *c;

    if (sscanf(url, "redis://%63[^:]:%d", host, &port) < 1)
        return NULL;
    c = redisConnect(host, port);
    if (c == NULL || c->err) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Run fmt on c: an integer reply, or a string of one; -1 for anything else
 * (a status: 0 when status_zero). */
static long long
command_int(redisContext *c, bool status_zero, const char *fmt, va_list ap)
{
    redisReply *r = redisvCommand(c, fmt, ap);
    long long v = -1;

    if (r != NULL && r->type == REDIS_REPLY_INTEGER)
        v = r->integer;
    else if (r != NULL && r->type == REDIS_REPLY_STRING)
        v = strtoll(r->str, NULL, 10);
    else if (r != NULL && r->type == REDIS_REPLY_STATUS && status_zero)
        v = 0;
    freeReplyObject(r);
    return v;
}

long long
tl_redis_int(const char *fmt, ...)
{
    redisContext *c = redis_connect();
    va_list ap;
    long long v;

    if (c == NULL)
        return -1;
    va_start(ap, fmt);
    v = command_int(c, false, fmt, ap);
    va_end(ap);
    redisFree(c);
    return v;
}

long long
tl_redis_int_at(int port, const char *pass, int db, const char *fmt, ...)
{
    redisContext *c = redisConnect("127.0.0.1", port);
    redisReply *r = NULL;
    va_list ap;
    long long v = -1;

    if (c == NULL || c->err) {
        redisFree(c);
        return -1;
    }
    if (pass != NULL)
        r = redisCommand(c, "AUTH %s", pass);
    if (pass == NULL || (r != NULL && r->type == REDIS_REPLY_STATUS)) {
        freeReplyObject(r);
        r = redisCommand(c, "SELECT %d", db);
    }
    if (r != NULL && r->type == REDIS_REPLY_STATUS) {
        va_start(ap, fmt);
        v = command_int(c, true, fmt, ap);
        va_end(ap);
    }
    freeReplyObject(r);
    redisFree(c);
    return v;
}

static int
cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char *
tl_tenant_redis(const char *tid)
{
    redisContext *c = redis_connect();
    redisReply *keys;
    struct buf out = {NULL, 0};
    char **lines;
    size_t n = 0;

    if (c == NULL)
        return NULL;
    keys = redisCommand(c, "KEYS aigw:{%s}:*", tid);
    if (keys == NULL || keys->type != REDIS_REPLY_ARRAY) {
        freeReplyObject(keys);
        redisFree(c);
        return NULL;
    }
    lines = calloc(keys->elements + 1, sizeof(*lines));
    for (size_t i = 0; i < keys->elements; i++) {
        redisReply *d = redisCommand(c, "DUMP %b", keys->element[i]->str, keys->element[i]->len);
        struct buf line = {NULL, 0};

        if (d != NULL && d->type == REDIS_REPLY_STRING) { /* (nil: expired since KEYS) */
            collect(keys->element[i]->str, 1, keys->element[i]->len, &line);
            collect(" ", 1, 1, &line);
            for (size_t k = 0; k < d->len; k++) {
                char hex[3];

                snprintf(hex, sizeof(hex), "%02x", (unsigned char)d->str[k]);
                collect(hex, 1, 2, &line);
            }
            lines[n++] = line.p;
        }
        freeReplyObject(d);
    }
    qsort(lines, n, sizeof(*lines), cmp_str);
    collect("\n", 1, 1, &out);
    for (size_t i = 0; i < n; i++) {
        collect(lines[i], 1, strlen(lines[i]), &out);
        collect("\n", 1, 1, &out);
        free(lines[i]);
    }
    free(lines);
    freeReplyObject(keys);
    redisFree(c);
    return out.p;
}

bool
tl_tenant_redis_kept(const char *tid, const char *before, char *what, size_t cap)
{
    char *now = tl_tenant_redis(tid);
    bool kept = now != NULL && before != NULL;

    snprintf(what, cap, "%s", kept ? "" : "Redis not readable");
    /* every line of now ("\nkey value\n") must be one of before's */
    for (const char *p = now; kept && p[1] != '\0'; p = strchr(p + 1, '\n')) {
        size_t len = (size_t)(strchr(p + 1, '\n') - p) + 1;
        char *line = strndup(p, len);

        if (strstr(before, line) == NULL) {
            kept = false;
            snprintf(what, cap, "%.*s", (int)strcspn(line + 1, " "), line + 1);
        }
        free(line);
    }
    free(now);
    return kept;
}

/* ---- keys ---- */
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

static char *
bio_string(BIO *b)
{
    char *data = NULL;
    long n = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)n + 1);

    memcpy(s, data, (size_t)n);
    s[n] = '\0';
    BIO_free(b);
    return s;
}

void
tl_keypair(const char *alg, char **pub_pem, char **priv_pem)
{
    EVP_PKEY *k = strcmp(alg, "RS256") == 0 ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    BIO *pub = BIO_new(BIO_s_mem()), *priv = BIO_new(BIO_s_mem());

    if (k == NULL || PEM_write_bio_PUBKEY(pub, k) != 1 ||
        PEM_write_bio_PrivateKey(priv, k, NULL, NULL, 0, NULL, NULL) != 1)
        abort();
    *pub_pem = bio_string(pub);
    *priv_pem = bio_string(priv);
    EVP_PKEY_free(k);
}

void
tl_write_file(const char *path, const char *s)
{
    FILE *f = fopen(path, "w");

    if (f == NULL)
        abort();
    fputs(s, f);
    fclose(f);
}

int
tl_count_files(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        n += strncmp(de->d_name, prefix, strlen(prefix)) == 0;
    closedir(d);
    return n;
}

bool
tl_rm_rf(const char *dir)
{
    char *cmd = tl_sprintf("rm -rf '%s'", dir);
    bool ok = system(cmd) == 0;

    free(cmd);
    return ok;
}

static void
merge_patch(json_t *target, json_t *patch)
{
    const char *k;
    json_t *v;

    json_object_foreach(patch, k, v) {
        json_t *cur = json_object_get(target, k);

        if (json_is_null(v))
            json_object_del(target, k);
        else if (json_is_object(v) && json_is_object(cur))
            merge_patch(cur, v);
        else
            json_object_set(target, k, v);
    }
}

char *
tl_config_patch(const char *patch_json)
{
    json_t *cfg = json_load_file(AIGW_SOURCE_DIR "/config/aigw.json", 0, NULL);
    json_t *patch = json_loads(patch_json, 0, NULL);
    char *out;

    if (cfg == NULL || patch == NULL) {
        fprintf(stderr, "tl_config_patch: bad JSON\n");
        exit(1);
    }
    merge_patch(cfg, patch);
    out = json_dumps(cfg, JSON_INDENT(2));
    json_decref(cfg);
    json_decref(patch);
    return out;
}

/* ---- mock upstream and parallel requests ---- */

int
tl_http_url(const char *base, const char *method, const char *path, const char *body, struct tl_resp *out)
{
    int port = 0;
    const char *colon = strrchr(base, ':');
    const char *h[] = {"Content-Type: application/json", NULL};

    if (colon != NULL)
        port = (int)strtol(colon + 1, NULL, 10);
    return tl_http(port, method, path, body ? h : NULL, body, body ? strlen(body) : 0, out);
}

void
tl_mock_config(const char *base, const char *json)
{
    struct tl_resp r;

    if (tl_http_url(base, "POST", "/__mock/config", json, &r) != 0 || r.status != 200) {
        fprintf(stderr, "mock config %s failed: %ld %s\n", json, r.status, r.body);
        exit(1);
    }
    tl_resp_free(&r);
}

void
tl_mock_reset(const char *base)
{
    struct tl_resp r;

    tl_http_url(base, "POST", "/__mock/reset", "{}", &r);
    tl_resp_free(&r);
}

long long
tl_mock_stat(const char *base, const char *field)
{
    struct tl_resp r;
    long long v;

    tl_http_url(base, "GET", "/__mock/stats", NULL, &r);
    v = tl_json_int(&r, field, -1);
    tl_resp_free(&r);
    return v;
}

static void parallel(const int *ports, const char *path, const char *token, const char *const *extra_headers,
                     const char *const *bodies, int n, struct tl_resp *out);

void
tl_post_parallel(int port, const char *path, const char *token, const char *const *extra_headers,
                 const char *const *bodies, int n, struct tl_resp *out)
{
    int *ports = malloc((size_t)n * sizeof(int));

    for (int i = 0; i < n; i++)
        ports[i] = port;
    parallel(ports, path, token, extra_headers, bodies, n, out);
    free(ports);
}

void
tl_post_parallel_two(int port1, int port2, const char *path, const char *token, const char *const *bodies, int n,
                     struct tl_resp *out)
{
    int *ports = malloc((size_t)n * sizeof(int));

    for (int i = 0; i < n; i++)
        ports[i] = i % 2 ? port2 : port1;
    parallel(ports, path, token, NULL, bodies, n, out);
    free(ports);
}

char *
tl_sprintf(const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;

    va_start(ap, fmt);
    if (vasprintf(&s, fmt, ap) < 0)
        abort();
    va_end(ap);
    return s;
}

static void
parallel(const int *ports, const char *path, const char *token, const char *const *extra_headers,
         const char *const *bodies, int n, struct tl_resp *out)
{
    CURLM *m = curl_multi_init();
    CURL **easy = calloc((size_t)n, sizeof(*easy));
    struct buf *b = calloc((size_t)n, sizeof(*b)), *h = calloc((size_t)n, sizeof(*h));
    struct curl_slist *hl = NULL;
    char url[512], auth[9000];
    int running = 0;

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", token);
    hl = curl_slist_append(hl, auth);
    hl = curl_slist_append(hl, "Content-Type: application/json");
    hl = curl_slist_append(hl, "Expect:");
    for (size_t i = 0; extra_headers && extra_headers[i]; i++)
        hl = curl_slist_append(hl, extra_headers[i]);
    curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, 0L);
    for (int i = 0; i < n; i++) {
        easy[i] = curl_easy_init();
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", ports[i], path);
        curl_easy_setopt(easy[i], CURLOPT_URL, url);
        curl_easy_setopt(easy[i], CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy[i], CURLOPT_TIMEOUT, 60L);
        curl_easy_setopt(easy[i], CURLOPT_HTTPHEADER, hl);
        curl_easy_setopt(easy[i], CURLOPT_POSTFIELDS, bodies[i]);
        curl_easy_setopt(easy[i], CURLOPT_WRITEFUNCTION, collect);
        curl_easy_setopt(easy[i], CURLOPT_WRITEDATA, &b[i]);
        curl_easy_setopt(easy[i], CURLOPT_HEADERFUNCTION, collect);
        curl_easy_setopt(easy[i], CURLOPT_HEADERDATA, &h[i]);
        curl_easy_setopt(easy[i], CURLOPT_FORBID_REUSE, 1L);
        curl_multi_add_handle(m, easy[i]);
    }
    do {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 100, NULL);
    } while (running);
    for (int i = 0; i < n; i++) {
        memset(&out[i], 0, sizeof(out[i]));
        curl_easy_getinfo(easy[i], CURLINFO_RESPONSE_CODE, &out[i].status);
        out[i].body = b[i].p ? b[i].p : calloc(1, 1);
        out[i].body_len = b[i].n;
        out[i].headers = h[i].p ? h[i].p : calloc(1, 1);
        curl_multi_remove_handle(m, easy[i]);
        curl_easy_cleanup(easy[i]);
    }
    curl_slist_free_all(hl);
    curl_multi_cleanup(m);
    free(easy);
    free(b);
    free(h);
}

long
tl_wait_sql(PGconn *c, long want, int timeout_ms, const char *sql, int n, const char *const *params)
{
    long v = -1;

    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        v = tl_sql_long(c, sql, n, params);
        if (v == want)
            break;
        usleep(50 * 1000);
    }
    return v;
}

void
tl_pg_reconnect(PGconn **c)
{
    PQreset(*c);
    for (int i = 0; i < 100 && PQstatus(*c) != CONNECTION_OK; i++) {
        usleep(100 * 1000);
        PQreset(*c);
    }
}

/* ---- API keys ---- */

int
tl_key_request(int port, const char *method, const char *path, const char *key, bool bearer, const char *json,
               struct tl_resp *out)
{
    char cred[512];
    const char *hdrs[3] = {cred, json ? "Content-Type: application/json" : NULL, NULL};

    snprintf(cred, sizeof(cred), bearer ? "Authorization: Bearer %s" : "X-API-Key: %s", key);
    return tl_http(port, method, path, hdrs, json, json ? strlen(json) : 0, out);
}

int
tl_delete(int port, const char *path, const char *token, struct tl_resp *out)
{
    return bodyless(port, "DELETE", path, token, out);
}

void
tl_expect(const char *name, const struct tl_resp *r, long status, const char *code)
{
    tl_expect_field(name, r, status, code, NULL);
}

void
tl_expect_quota_exhausted(const char *name, const struct tl_resp *r)
{
    char resets[64] = "", retry[32] = "", should[32] = "";
    int64_t at = 0;
    long secs = -1;

    tl_expect_field(name, r, 429, "quota_exhausted", NULL);
    CHECK(tl_json_str(r, "error.resets_at", resets, sizeof(resets)) && aigw_parse_rfc3339(resets, &at),
          "%s: resets_at %s", name, resets);
    CHECK(tl_resp_header(r, "Retry-After", retry, sizeof(retry)) != NULL && aigw_parse_long(retry, 1, LONG_MAX, &secs),
          "%s: Retry-After %s", name, retry);
    CHECK(secs >= at - (int64_t)time(NULL) - 5 && secs <= at - (int64_t)time(NULL) + 5,
          "%s: Retry-After %ld says when resets_at %s comes", name, secs, resets);
    CHECK(tl_resp_header(r, "x-should-retry", should, sizeof(should)) != NULL && strcmp(should, "false") == 0,
          "%s: x-should-retry %s, want false", name, should);
}

long
tl_api_key_create(int port, const char *token, const char *json, char *key, size_t cap, char id[37])
{
    struct tl_resp r;
    long status;

    tl_post(port, "/api/v1/api-keys", token, json, &r);
    status = r.status;
    if (status == 201) {
        tl_json_str(&r, "key", key, cap);
        tl_json_str(&r, "id", id, 37);
    }
    tl_resp_free(&r);
    return status;
}

long
tl_usage_rows(PGconn *owner, const char *tid, const char *where, long want)
{
    const char *p[1] = {tid};
    char *sql = tl_sprintf("SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 AND %s", where);
    long n = tl_wait_sql(owner, want, 3000, sql, 1, p);

    free(sql);
    return n;
}

long long
tl_quota_used(const char *tid)
{
    time_t now = time(NULL);
    struct tm tm;
    char month[8];

    gmtime_r(&now, &tm);
    strftime(month, sizeof(month), "%Y%m", &tm);
    return tl_redis_int("GET aigw:{%s}:q:%s", tid, month);
}

long long
tl_sf_locks(const char *tid)
{
    return tl_redis_int("EVAL %s 0 aigw:{%s}:sf:*",
                        "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do"
                        " if string.sub(k, -2) ~= ':r' then n = n + 1 end end return n",
                        tid);
}

long long
tl_max_pttl(const char *pattern)
{
    return tl_redis_int("EVAL %s 0 %s",
                        "local m = -1 for _, key in ipairs(redis.call('KEYS', ARGV[1])) do "
                        "local t = redis.call('PTTL', key) if t > m then m = t end end return m",
                        pattern);
}
