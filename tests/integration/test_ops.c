/* test_ops.c - the daemon under systemd's eyes: sd_notify (READY, WATCHDOG,
 * RELOADING, STOPPING) through a fake NOTIFY_SOCKET, connection limits (and
 * the open-file limit), a SIGHUP during
 * start-up, readiness that waits for Redis, Redis with a password (and a
 * refused AUTH or SELECT), SIGHUP reloads (JWT key rotation, backends and routes, log level, the stream
 * buffer, refused bad files) on one kept-alive connection, a reload under
 * streams in flight, the access log, and the SIGTERM drain (all slow
 * requests answered, new connections refused, usage rows written;
 * cancellation at the deadline of every kind of request, with nothing left
 * in Redis or the quota journal; the outbox retried meanwhile). */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

static PGconn *owner;
static const char *mock1, *mock2;

static const char ONLY1[] = "[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\",\"slots\":8,\"max_connections\":8}]";
static const char ONLY2[] = "[{\"name\":\"mock2\",\"url\":\"${AIGW_MOCK2_URL}\",\"slots\":8,\"max_connections\":8}]";

/* A fresh enterprise tenant without a practical rate limit; its token. */
static char *
busy_tenant(char id[37], const char *kid, const char *secret)
{
    char code[65];
    const char *p[1];
    PGresult *r;

    tl_create_tenant(owner, "enterprise", "active", id, code);
    p[0] = id;
    r = tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 100000}' WHERE id = $1", 1, p);
    PQclear(r);
    return tl_token_kid(kid, secret, code, "optician", 600);
}

static long
usage_rows(const char *tenant_id, const char *where, long want, int timeout_ms)
{
    const char *p[1] = {tenant_id};
    char *sql = tl_sprintf("SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1 %s", where);
    long n = tl_wait_sql(owner, want, timeout_ms, sql, 1, p);

    free(sql);
    return n;
}

/* Start aigw with config and NOTIFY_SOCKET (plus extra_env, may be NULL);
 * the notify socket's fd into *fd. */
static int
start_notified(struct tl_aigw *gw, const char *config, const char *extra_env, int *fd)
{
    char path[108], sock_env[160];
    const char *env[3] = {sock_env, extra_env, NULL};
    int rc;

    *fd = tl_notify_open(path, sizeof(path));
    snprintf(sock_env, sizeof(sock_env), "NOTIFY_SOCKET=%s", path);
    rc = tl_aigw_start_env(gw, config, env);
    return rc;
}

/* Write config_json as gw's configuration file, SIGHUP, and wait for the
 * RELOADING=1 ... READY=1 pair. */
static bool
reload(struct tl_aigw *gw, int fd, const char *config_json)
{
    bool reloading, ready;

    tl_write_file(gw->config, config_json);
    tl_aigw_signal(gw, SIGHUP);
    reloading = tl_notify_wait(fd, "RELOADING=1", 15000);
    ready = reloading && tl_notify_wait(fd, "READY=1", 15000);
    CHECK(reloading && ready, "SIGHUP: RELOADING=1 (%d) then READY=1 (%d)", reloading, ready);
    return ready;
}

/* ---- sd_notify and the watchdog ---- */

/* A TCP connection from 127.0.0.<host>; with get, a GET /healthz is sent
 * on it. fd or -1. */
static int
connect_from(int host, int port, bool get)
{
    struct sockaddr_in from = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000000u | (unsigned)host)};
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    if (fd < 0 || bind(fd, (struct sockaddr *)&from, sizeof(from)) != 0 ||
        connect(fd, (struct sockaddr *)&to, sizeof(to)) != 0 ||
        (get && write(fd, req, sizeof(req) - 1) != (ssize_t)(sizeof(req) - 1))) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

static void
test_notify_and_watchdog(void)
{
    /* one worker and two connection slots, so two idle clients wedge the pool */
    char *cfg = tl_config_patch("{\"http\":{\"threads\":1,\"max_connections\":2,\"connection_timeout_s\":300}}");
    struct tl_aigw gw;
    int fd, held[2], pings;

    if (start_notified(&gw, cfg, "WATCHDOG_USEC=2000000", &fd) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    CHECK(tl_notify_wait(fd, "READY=1", 30000), "READY=1 after PostgreSQL, Redis and the listener");
    pings = tl_notify_count(fd, "WATCHDOG=1", 6000);
    CHECK(pings >= 2, "WATCHDOG=1 pings while healthy (%d in 6 s, one due per second)", pings);
    CHECK(reload(&gw, fd, cfg), "a reload of the same file");

    held[0] = connect_from(1, gw.port, false);
    held[1] = connect_from(1, gw.port, false);
    CHECK(held[0] >= 0 && held[1] >= 0, "two idle connections take both slots");
    tl_notify_count(fd, "WATCHDOG=1", 1500); /* a check already running may still pass */
    pings = tl_notify_count(fd, "WATCHDOG=1", 4000);
    CHECK(pings == 0, "no WATCHDOG=1 while the pool serves nobody new (%d)", pings);
    CHECK(tl_aigw_log_wait(&gw, "watchdog: not pinging systemd: GET /healthz", 5000), "the reason is logged");
    close(held[0]);
    close(held[1]);
    CHECK(tl_notify_wait(fd, "WATCHDOG=1", 10000), "pings resume once the pool serves again");

    tl_aigw_signal(&gw, SIGTERM);
    CHECK(tl_notify_wait(fd, "STOPPING=1", 15000), "STOPPING=1 on SIGTERM");
    CHECK(tl_aigw_wait(&gw, 30000) == 0, "exit 0 after SIGTERM");
out:
    tl_aigw_stop(&gw);
    close(fd);
    free(cfg);
}

/* ---- the accept thread and its limits ---- */

/* Within ms: 1 = "HTTP/1.1 200" arrived, 0 = the server closed the
 * connection without a response, -1 = nothing yet. */
static int
outcome(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char buf[256] = "";
    ssize_t n;

    if (poll(&p, 1, ms) != 1)
        return -1;
    n = read(fd, buf, sizeof(buf) - 1);
    return n > 12 && strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 1 : 0;
}

/* A client over the per-address cap is refused (libmicrohttpd closes the
 * handed-over socket) without using up a place under http.max_connections:
 * after many refusals a client from another address still gets in. With
 * the total at its limit a new client waits in the backlog, and is served
 * once a place frees. SIGTERM then exits 0 with connections still open. */
static void
test_connection_limits(void)
{
    char *cfg = tl_config_patch("{\"http\":{\"threads\":2,\"max_connections\":3,\"max_connections_per_ip\":2,"
                                "\"connection_timeout_s\":300}}");
    struct tl_aigw gw;
    int held[2] = {-1, -1}, other[2] = {-1, -1}, refused = 0;

    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    usleep(300 * 1000); /* the start-up probes' connections (from .1) are closed */
    held[0] = connect_from(3, gw.port, false);
    held[1] = connect_from(3, gw.port, false);
    CHECK(held[0] >= 0 && held[1] >= 0, "limits: two idle connections from 127.0.0.3");
    for (int i = 0; i < 8; i++) {
        int fd = connect_from(3, gw.port, true);

        refused += fd >= 0 && outcome(fd, 5000) == 0;
        if (fd >= 0)
            close(fd);
    }
    CHECK(refused == 8, "limits: a third client from 127.0.0.3 is refused (%d of 8)", refused);
    other[0] = connect_from(2, gw.port, true);
    CHECK(other[0] >= 0 && outcome(other[0], 5000) == 1, "limits: 8 refusals took no place: 127.0.0.2 is served");
    /* three open: the total limit */
    other[1] = connect_from(2, gw.port, true);
    CHECK(other[1] >= 0 && outcome(other[1], 700) == -1, "limits: a fourth client waits while three are open");
    close(held[0]);
    held[0] = -1;
    CHECK(outcome(other[1], 5000) == 1, "limits: it is served once a place frees");
    tl_aigw_signal(&gw, SIGTERM);
    CHECK(tl_aigw_wait(&gw, 30000) == 0, "limits: exit 0 after SIGTERM with connections still open");
out:
    for (int i = 0; i < 2; i++) {
        if (held[i] >= 0)
            close(held[i]);
        if (other[i] >= 0)
            close(other[i]);
    }
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 (and clean under the sanitizers)");
    free(cfg);
}

static long readyz_wait(int port, long want);

/* http.max_connections above what the open-file limit leaves: a crowd of
 * idle clients took every descriptor, so the health probes, PostgreSQL and
 * the upstream calls could open none, every backend went down and the
 * clients already connected got 503 (and /readyz 503). aigw now takes no
 * more clients than the limit leaves room for (the rest wait in the
 * backlog, as beyond http.max_connections) and says so at start. Run under
 * prlimit with 400 descriptors and the default 10000 connections. */
static void
test_nofile_limit(void)
{
    static const char *const wrap[] = {"prlimit", "--nofile=400:400", NULL};
    char *cfg = tl_config_patch("{\"http\":{\"connection_timeout_s\":300},\"upstream\":{\"health_interval_ms\":200}}");
    struct tl_aigw gw;
    struct tl_conn *c = NULL;
    struct tl_resp r;
    int crowd[600], n = 0;
    long news = -1;

    if (tl_aigw_start_wrapped(&gw, cfg, NULL, wrap) != 0) {
        CHECK(false, "aigw did not start under prlimit");
        free(cfg);
        return;
    }
    CHECK(tl_aigw_log_wait(&gw, "open-file limit", 5000), "the start-up says the open-file limit caps the clients");
    c = tl_conn_open(gw.port);
    CHECK(readyz_wait(gw.port, 200) == 200, "nofile: ready");
    tl_conn_get(c, "/readyz", NULL, &r, &news);
    CHECK(r.status == 200, "nofile: /readyz on the kept connection before the crowd: %ld", r.status);
    tl_resp_free(&r);
    for (; n < 600; n++) {
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)gw.port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};

        crowd[n] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (crowd[n] < 0 || connect(crowd[n], (struct sockaddr *)&to, sizeof(to)) != 0) {
            if (crowd[n] >= 0)
                close(crowd[n]);
            break;
        }
    }
    CHECK(n == 600, "nofile: 600 idle clients connected (%d)", n);
    usleep(2000 * 1000); /* ten health rounds */
    tl_conn_get(c, "/readyz", NULL, &r, &news);
    CHECK(r.status == 200 && news == 0, "nofile: with 600 idle clients /readyz on the kept connection is still 200 "
          "(%ld, new connections %ld): %s", r.status, news, r.body ? r.body : "");
    tl_resp_free(&r);
    CHECK(!tl_aigw_log_wait(&gw, "Too many open files", 0), "nofile: no descriptor ran out");
    for (int i = 0; i < n; i++)
        close(crowd[i]);
    tl_conn_close(c);
    CHECK(tl_aigw_stop(&gw) == 0, "nofile: exit 0");
    free(cfg);
}

/* ---- readiness waits for the dependencies ---- */

/* A private Redis on port without persistence, with the extra arguments
 * (NULL-terminated, may be NULL). */
static pid_t
start_redis_args(int port, const char *const *extra)
{
    char portbuf[16];
    const char *argv[24] = {"redis-server", "--port", portbuf, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"};
    int n = 9;
    pid_t pid;

    snprintf(portbuf, sizeof(portbuf), "%d", port);
    for (; extra != NULL && *extra != NULL && n < 23; extra++)
        argv[n++] = *extra;
    argv[n] = NULL;
    pid = fork();
    if (pid == 0) {
        int null = open("/dev/null", O_WRONLY);

        dup2(null, 1);
        dup2(null, 2);
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    return pid;
}

/* A private Redis on port; with a password when pass is not NULL. */
static pid_t
start_redis_pass(int port, const char *pass)
{
    const char *extra[3] = {"--requirepass", pass, NULL};

    return start_redis_args(port, pass != NULL ? extra : NULL);
}

static pid_t
start_redis(int port)
{
    return start_redis_pass(port, NULL);
}

/* Wait up to 2 s for a Redis started on port to listen. */
static void
redis_wait_up(int port)
{
    for (int i = 0; i < 100 && tl_port_refuses(port); i++)
        usleep(20 * 1000);
}

/* Keys in databases 0..n-1 of the private Redis on port (-1: it did not answer). */
static long long
redis_keys(int port, const char *pass, int n)
{
    long long sum = 0;

    for (int db = 0; db < n; db++) {
        long long k = tl_redis_int_at(port, pass, db, "DBSIZE");

        if (k < 0)
            return -1;
        sum += k;
    }
    return sum;
}

/* n distinct questions at once (most of them take the admission pipe: the
 * direct path serves one caller at a time, and never while a call is on
 * the pipe); how many were answered status with error.code code (NULL:
 * any). */
static int
query_burst(int port, const char *tok, const char *tag, int n, long status, const char *code)
{
    char *bodies[40], buf[64];
    struct tl_resp rs[40];
    int got = 0;

    if (n > 40)
        n = 40;
    for (int i = 0; i < n; i++)
        bodies[i] = tl_sprintf("{\"question\":\"%s, burst question %d of pid %d\"}", tag, i, (int)getpid());
    tl_post_parallel(port, "/api/ai/query", tok, NULL, (const char *const *)bodies, n, rs);
    for (int i = 0; i < n; i++) {
        got += rs[i].status == status &&
               (code == NULL || (tl_json_str(&rs[i], "error.code", buf, sizeof(buf)) && strcmp(buf, code) == 0));
        tl_resp_free(&rs[i]);
        free(bodies[i]);
    }
    return got;
}

static long long
model_calls(void)
{
    return tl_mock_stat(mock1, "chat_requests") + tl_mock_stat(mock2, "chat_requests");
}

/* GET /readyz until it answers want (or 15 s); the last status. */
static long
readyz_wait(int port, long want)
{
    long st = -1;

    for (int i = 0; i < 300 && st != want; i++) {
        struct tl_resp r;

        tl_get(port, "/readyz", NULL, &r);
        st = r.status;
        tl_resp_free(&r);
        if (st != want)
            usleep(50 * 1000);
    }
    return st;
}

/* A Redis with a password: aigw sends AUTH on every connection (the pool's
 * and the admission pipe's), a wrong password keeps it unready with the
 * reason logged, and the password appears in no log line. */
static void
test_redis_auth(void)
{
    static const char PASS[] = "Zq9:s3cr@t"; /* a ':' and an '@' of its own */
    int rport = tl_free_port();
    char *good = tl_sprintf("AIGW_REDIS_URL=redis://:%s@127.0.0.1:%d/3", PASS, rport);
    char *bad = tl_sprintf("AIGW_REDIS_URL=redis://default:Zq9-wrong@127.0.0.1:%d", rport);
    const char *env[2] = {good, NULL};
    char *cfg = tl_config_patch("{}"), *log, id[37], code[65], *tok, hit[16], busy_id[37], *busy;
    struct tl_aigw gw;
    struct tl_resp r;
    pid_t redis = start_redis_pass(rport, PASS);
    long long calls, keys;
    int n;

    redis_wait_up(rport);
    tl_create_tenant(owner, "pro", "active", id, code);
    tok = tl_token(code, "optician", 600);
    busy = busy_tenant(busy_id, "dev", tl_env("AIGW_JWT_SECRET"));
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "aigw did not start against a Redis with a password");
        goto out;
    }
    CHECK(readyz_wait(gw.port, 200) == 200, "auth: ready once AUTH is accepted");
    for (int i = 0; i < 2; i++) {
        tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"Asked of a Redis with a password\"}", &r);
        CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", hit, sizeof(hit)) &&
                  strcmp(hit, i == 0 ? "MISS" : "HIT") == 0,
              "auth: query %d answered (%ld %s)", i, r.status, hit);
        tl_resp_free(&r);
    }
    n = query_burst(gw.port, busy, "right password", 20, 200, NULL);
    CHECK(n == 20, "auth: a burst on the pipe is served (%d of 20)", n);
    log = tl_aigw_log(&gw);
    CHECK(log != NULL && strstr(log, "Zq9") == NULL, "auth: the password is in no log line");
    free(log);
    CHECK(tl_aigw_stop(&gw) == 0, "auth: clean stop");

    env[0] = bad;
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "aigw did not start with a wrong Redis password");
        goto out;
    }
    CHECK(readyz_wait(gw.port, 503) == 503, "auth: a wrong password keeps it unready");
    CHECK(tl_aigw_log_wait(&gw, "WRONGPASS", 5000), "auth: the refusal is logged");
    keys = redis_keys(rport, PASS, 4);
    calls = model_calls();
    n = query_burst(gw.port, busy, "wrong password", 20, 503, "service_unavailable");
    CHECK(n == 20, "auth: a wrong password: a burst gets 503 service_unavailable (%d of 20)", n);
    CHECK(keys >= 0 && redis_keys(rport, PASS, 4) == keys, "auth: a wrong password: nothing counted in Redis (%lld keys, were %lld)",
          redis_keys(rport, PASS, 4), keys);
    CHECK(model_calls() == calls, "auth: a wrong password: nothing reached the model");
    log = tl_aigw_log(&gw);
    CHECK(log != NULL && strstr(log, "Zq9") == NULL, "auth: the wrong password is in no log line either");
    free(log);
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 (and clean under the sanitizers)");

    /* the password from redis.password_file (a systemd credential), the URL without one */
    {
        char *file = tl_sprintf("/tmp/aigw-test-redis-pw-%d", (int)getpid());
        char *patch = tl_sprintf("{\"redis\":{\"password_file\":\"%s\"}}", file);
        char *cfg_file = tl_config_patch(patch);
        char *plain = tl_sprintf("AIGW_REDIS_URL=redis://127.0.0.1:%d/3", rport); /* the db of the first run */
        char *pw_line = tl_sprintf("%s\n", PASS);

        tl_write_file(file, pw_line);
        env[0] = plain;
        if (tl_aigw_start_env(&gw, cfg_file, env) == 0) {
            CHECK(readyz_wait(gw.port, 200) == 200, "auth: ready with the password from password_file");
            tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"Asked of a Redis with a password\"}", &r);
            CHECK(r.status == 200 && tl_resp_header(&r, "X-Cache", hit, sizeof(hit)) && strcmp(hit, "HIT") == 0,
                  "auth: password_file: the cached answer is read (%ld)", r.status);
            tl_resp_free(&r);
            CHECK(tl_aigw_stop(&gw) == 0, "auth: password_file: clean stop");
        } else {
            CHECK(false, "aigw did not start with redis.password_file");
        }
        unlink(file);
        free(pw_line);
        free(plain);
        free(cfg_file);
        free(patch);
        free(file);
    }
out:
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    free(busy);
    free(tok);
    free(cfg);
    free(good);
    free(bad);
}

/* The admission pipe sends AUTH and SELECT ahead of the callers' scripts on
 * a new connection. When Redis refuses either, no caller's script may run
 * on that connection. Here Redis's default user needs no password (aigw
 * logs in as its own ACL user), so a script sent after a refused AUTH would
 * run, unauthenticated, as the default user; and one sent after a refused
 * SELECT would run on database 0. A burst (most of it on the pipe) gets 503
 * service_unavailable, nothing is counted in any database and nothing
 * reaches the model; with the right password and database the same burst
 * is served, on that database alone. */
static void
test_redis_setup_refused(void)
{
    static const char PASS[] = "Pipe-s3cret";
    static const char *const EXTRA[] = {"--databases", "4", NULL};
    static const struct {
        const char *what, *userinfo, *reason;
        int db;
        bool served;
    } CASES[] = {
        {"the right password and database", "aigw:Pipe-s3cret", NULL, 2, true},
        {"a wrong password", "aigw:Pipe-wrong", "WRONGPASS", 2, false},
        {"a database Redis does not have", "aigw:Pipe-s3cret", "out of range", 9, false},
    };
    int rport = tl_free_port();
    pid_t redis = start_redis_args(rport, EXTRA);
    char id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET")), *cfg = tl_config_patch("{}");

    redis_wait_up(rport);
    CHECK(tl_redis_int_at(rport, NULL, 0, "ACL SETUSER aigw on >%s ~* &* +@all", PASS) == 0, "setup: aigw's ACL user");
    for (size_t c = 0; c < sizeof(CASES) / sizeof(CASES[0]); c++) {
        char *env_url = tl_sprintf("AIGW_REDIS_URL=redis://%s@127.0.0.1:%d/%d", CASES[c].userinfo, rport, CASES[c].db);
        const char *env[2] = {env_url, NULL};
        struct tl_aigw gw;
        long long calls = model_calls();
        int n;

        if (tl_aigw_start_env(&gw, cfg, env) != 0) {
            CHECK(false, "setup refused: aigw did not start with %s", CASES[c].what);
            free(env_url);
            continue;
        }
        if (CASES[c].served) {
            CHECK(readyz_wait(gw.port, 200) == 200, "setup: ready with %s", CASES[c].what);
            n = query_burst(gw.port, tok, CASES[c].what, 20, 200, NULL);
            CHECK(n == 20, "setup: %s: the burst is served (%d of 20)", CASES[c].what, n);
            CHECK(tl_redis_int_at(rport, NULL, 2, "DBSIZE") > 0 && redis_keys(rport, NULL, 2) == 0 &&
                      tl_redis_int_at(rport, NULL, 3, "DBSIZE") == 0,
                  "setup: %s: counted in database 2 alone", CASES[c].what);
        } else {
            CHECK(tl_aigw_log_wait(&gw, CASES[c].reason, 5000), "setup: %s: the refusal is logged (%s)", CASES[c].what,
                  CASES[c].reason);
            n = query_burst(gw.port, tok, CASES[c].what, 20, 503, "service_unavailable");
            CHECK(n == 20, "setup refused: %s: a burst gets 503 service_unavailable (%d of 20)", CASES[c].what, n);
            CHECK(redis_keys(rport, NULL, 4) == 0, "setup refused: %s: no script ran, in any database (%lld keys)",
                  CASES[c].what, redis_keys(rport, NULL, 4));
            CHECK(model_calls() == calls, "setup refused: %s: nothing reached the model", CASES[c].what);
        }
        CHECK(tl_aigw_stop(&gw) == 0, "setup: %s: clean stop", CASES[c].what);
        /* the keys go, the scripts stay loaded (as in a Redis other
         * instances use): a script sent on a refused connection would run
         * at once, not come back NOSCRIPT. After the stop: the last
         * answers' after hooks (the cache store) run once the client has
         * its answer, and one that landed after the flush was counted
         * below as a script run on a refused connection */
        if (CASES[c].served)
            CHECK(tl_redis_int_at(rport, NULL, 0, "FLUSHALL") == 0 && redis_keys(rport, NULL, 4) == 0,
                  "setup: the keys flushed");
        free(env_url);
    }
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    free(cfg);
    free(tok);
}

static void
test_ready_waits_for_redis(void)
{
    int rport = tl_free_port(), fd;
    /* AIGW_REDIS_URL overrides redis.url outright */
    char *redis_env = tl_sprintf("AIGW_REDIS_URL=redis://127.0.0.1:%d", rport);
    const char *env[2] = {redis_env, NULL};
    char *cfg = tl_config_patch("{\"startup\":{\"dependency_timeout_ms\":60000}}"), *cfg_short, buf[64];
    struct tl_aigw gw;
    struct tl_resp r;
    pid_t redis;

    if (start_notified(&gw, cfg, redis_env, &fd) != 0) {
        CHECK(false, "aigw did not start without Redis");
        goto out;
    }
    tl_get(gw.port, "/readyz", NULL, &r);
    CHECK(r.status == 503, "/readyz 503 without Redis: %ld", r.status);
    CHECK(tl_json_str(&r, "checks.redis", buf, sizeof(buf)) && strcmp(buf, "down") == 0, "/readyz names Redis: %s",
          r.body);
    CHECK(tl_json_str(&r, "checks.postgresql", buf, sizeof(buf)) && strcmp(buf, "ok") == 0,
          "PostgreSQL is fine: %s", r.body);
    tl_resp_free(&r);
    tl_aigw_signal(&gw, SIGHUP); /* a reload while waiting must not announce READY=1 */
    CHECK(tl_aigw_log_wait(&gw, "reload: configuration 2 applied", 5000), "a reload while waiting applies");
    CHECK(!tl_notify_wait(fd, "READY=1", 1500), "no READY=1 while Redis is down, reload or not");
    CHECK(tl_aigw_log_wait(&gw, "startup: waiting for Redis", 5000), "the wait is logged");
    redis = start_redis(rport);
    CHECK(tl_notify_wait(fd, "READY=1", 30000), "READY=1 once Redis answers");
    /* a Redis that answers PING but takes no write (a replica after a
     * failover; OOM and MISCONF alike) fails every admission with 503:
     * not ready, so the load balancer sends the traffic elsewhere */
    CHECK(readyz_wait(gw.port, 200) == 200, "ready with a writable Redis");
    CHECK(tl_redis_int_at(rport, NULL, 0, "REPLICAOF 127.0.0.1 %d", tl_free_port()) == 0, "Redis made a replica");
    CHECK(readyz_wait(gw.port, 503) == 503, "/readyz 503 while Redis is a read-only replica");
    tl_get(gw.port, "/readyz", NULL, &r);
    CHECK(tl_json_str(&r, "checks.redis", buf, sizeof(buf)) && strcmp(buf, "down") == 0,
          "/readyz names the read-only Redis: %s", r.body);
    tl_resp_free(&r);
    CHECK(tl_aigw_log_wait(&gw, "READONLY", 5000), "Redis's refusal is logged");
    CHECK(tl_redis_int_at(rport, NULL, 0, "REPLICAOF NO ONE") == 0, "Redis a primary again");
    CHECK(readyz_wait(gw.port, 200) == 200, "ready again once Redis takes writes");
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    close(fd);

    /* nothing comes: it gives up after startup.dependency_timeout_ms */
    cfg_short = tl_config_patch("{\"startup\":{\"dependency_timeout_ms\":1000}}");
    tl_aigw_start_env(&gw, cfg_short, env); /* may have given up before /healthz was polled */
    CHECK(tl_aigw_wait(&gw, 30000) == 1, "exit 1 when Redis never answers (%d)", gw.status);
    CHECK(tl_aigw_log_wait(&gw, "Redis not reachable after 1000 ms", 0), "the reason is logged");
    tl_aigw_stop(&gw);
    free(cfg_short);
out:
    free(redis_env);
    free(cfg);
}

/* A Redis that takes the connection and never answers (here SIGSTOPped;
 * a frozen server after a failover alike) while aigw waits for it at
 * start: the wait's Redis check waited redis.timeout_ms (up to 5 s) on
 * the main thread, which sends WATCHDOG=1, and systemd arms its watchdog
 * on the first one even before READY=1, so it would have killed aigw
 * instead of letting it wait. The check now waits at most 1 s, and the
 * pings keep their pace (every WatchdogSec/2 = 2 s here). */
static void
test_ready_waits_for_frozen_redis(void)
{
    int rport = tl_free_port(), fd = -1, pings = 0;
    char *redis_env = tl_sprintf("AIGW_REDIS_URL=redis://127.0.0.1:%d", rport), path[108], sock_env[160], buf[4096];
    const char *env[4] = {sock_env, redis_env, "WATCHDOG_USEC=4000000", NULL};
    char *cfg = tl_config_patch("{\"redis\":{\"timeout_ms\":5000},\"startup\":{\"dependency_timeout_ms\":120000}}");
    struct tl_aigw gw;
    int64_t last, gap, max_gap = 0, end;
    bool ready = false, started = false;
    pid_t redis = start_redis(rport);

    redis_wait_up(rport);
    CHECK(kill(redis, SIGSTOP) == 0, "frozen Redis: SIGSTOP");
    fd = tl_notify_open(path, sizeof(path));
    snprintf(sock_env, sizeof(sock_env), "NOTIFY_SOCKET=%s", path);
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "frozen Redis: aigw did not start");
        goto out;
    }
    started = true;
    /* 10 s of waiting: a WATCHDOG=1 every 2 s (give or take the 1 s
     * check), never a gap near WatchdogSec (4 s), and no READY=1 */
    last = aigw_now_ms();
    end = last + 10000;
    while (aigw_now_ms() < end) {
        int64_t left = end - aigw_now_ms();

        if (tl_notify_next(fd, buf, sizeof(buf), (int)(left > 0 ? left : 1)) < 0)
            break;
        if (strstr(buf, "READY=1") != NULL)
            ready = true;
        if (strstr(buf, "WATCHDOG=1") != NULL) {
            gap = aigw_now_ms() - last;
            max_gap = gap > max_gap ? gap : max_gap;
            last = aigw_now_ms();
            pings++;
        }
    }
    gap = aigw_now_ms() - last;
    max_gap = gap > max_gap ? gap : max_gap;
    printf("frozen Redis: %d WATCHDOG=1 in 10 s, longest gap %lld ms\n", pings, (long long)max_gap);
    CHECK(!ready, "frozen Redis: no READY=1 while Redis does not answer");
    CHECK(pings >= 4 && max_gap < 3500, "frozen Redis: WATCHDOG=1 keeps coming (%d in 10 s, longest gap %lld ms)",
          pings, (long long)max_gap);
    CHECK(tl_aigw_log_wait(&gw, "startup: waiting for Redis", 0), "frozen Redis: the wait is logged");
    kill(redis, SIGCONT);
    CHECK(tl_notify_wait(fd, "READY=1", 15000), "frozen Redis: READY=1 once Redis answers");
out:
    kill(redis, SIGCONT); /* whatever happened */
    if (started)
        CHECK(tl_aigw_stop(&gw) == 0, "frozen Redis: clean stop");
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    if (fd >= 0)
        close(fd);
    free(redis_env);
    free(cfg);
}

/* The leaders' single-flight locks (not their published results) in the
 * private Redis on port; -1 when it did not answer. */
static long long
redis_sf_locks(int port)
{
    return tl_redis_int_at(port, NULL, 0, "EVAL %s 0",
                           "local n = 0 for _, k in ipairs(redis.call('KEYS', 'aigw:*:sf:*')) do "
                           "if string.sub(k, -2) ~= ':r' then n = n + 1 end end return n");
}

/* Redis freezes (SIGSTOP: it takes connections and never answers) while
 * 32 leaders are at the model. Each of them publishes its outcome when its
 * answer has gone, a blocking call on its HTTP worker: with every call
 * waiting out redis.timeout_ms (500 ms) in turn, the 2 workers were blocked
 * for about 8 s, and so was every connection they served, /healthz (the
 * watchdog's check, 5 s at most) included. Now once a call has timed out
 * only one call a second waits for Redis, the others give up at once (the
 * publish goes to the outbox), so /healthz keeps answering; /readyz says
 * Redis is down without waiting; and when Redis is back the outbox
 * publishes what was left (the locks go) and queries are answered again. */
static void
test_frozen_redis_serving(void)
{
    enum { N = 32 };
    int rport = tl_free_port();
    char *redis_env = tl_sprintf("AIGW_REDIS_URL=redis://127.0.0.1:%d", rport), buf[64];
    const char *env[2] = {redis_env, NULL};
    char *cfg = tl_config_patch("{\"redis\":{\"timeout_ms\":500},\"http\":{\"threads\":2},"
                                "\"upstream\":{\"routes\":null,\"backends\":[{\"name\":\"mock1\",\"url\":"
                                "\"${AIGW_MOCK_URL}\",\"slots\":64,\"max_connections\":64}]}}");
    char *bodies[N], id[37], code[65], *tok = NULL;
    struct tl_resp out[N], r;
    struct tl_parallel *bg = NULL;
    struct tl_aigw gw;
    int64_t end, t0, took, worst = 0;
    int checks = 0, ok = 0;
    bool started = false, frozen = false;
    pid_t redis = start_redis(rport);

    redis_wait_up(rport);
    for (int i = 0; i < N; i++)
        bodies[i] = tl_sprintf("{\"question\":\"Which lens suits driver %d at night, asked as Redis froze?\"}", i);
    tl_create_tenant(owner, "enterprise", "active", id, code);
    tok = tl_token(code, "optician", 600);
    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"first_token_ms\":1500,\"slots\":64}"); /* all answer at once */
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "frozen Redis serving: aigw did not start");
        goto out;
    }
    started = true;
    CHECK(readyz_wait(gw.port, 200) == 200, "frozen Redis serving: ready before");
    bg = tl_post_parallel_bg(gw.port, "/api/ai/query", tok, (const char *const *)bodies, N, out);
    CHECK(tl_metric_wait(gw.port, "aigw_upstream_in_flight", N, 15000) == N, "frozen Redis serving: %d leaders at the model", N);
    CHECK(kill(redis, SIGSTOP) == 0, "frozen Redis serving: SIGSTOP");
    frozen = true;
    /* the answers leave about 1.5 s after the calls went out, and their
     * publishes follow: watch /healthz until well past them */
    end = aigw_now_ms() + 4500;
    while (aigw_now_ms() < end) {
        t0 = aigw_now_ms();
        tl_get(gw.port, "/healthz", NULL, &r);
        took = aigw_now_ms() - t0;
        worst = took > worst ? took : worst;
        checks++;
        ok += r.status == 200;
        tl_resp_free(&r);
        usleep(50 * 1000);
    }
    printf("frozen Redis serving: %d /healthz, slowest %lld ms\n", checks, (long long)worst);
    CHECK(ok == checks, "frozen Redis serving: /healthz answered 200 every time (%d of %d)", ok, checks);
    CHECK(worst < 2000, "frozen Redis serving: /healthz never waited for Redis (slowest %lld ms)", (long long)worst);
    tl_parallel_join(bg);
    bg = NULL;
    for (int i = 0; i < N; i++) {
        CHECK(out[i].status == 200, "frozen Redis serving: leader %d answered from the model: %ld", i, out[i].status);
        tl_resp_free(&out[i]);
    }
    t0 = aigw_now_ms();
    tl_get(gw.port, "/readyz", NULL, &r);
    took = aigw_now_ms() - t0;
    CHECK(r.status == 503 && tl_json_str(&r, "checks.redis", buf, sizeof(buf)) && strcmp(buf, "down") == 0,
          "frozen Redis serving: /readyz names Redis: %ld %s", r.status, r.body);
    CHECK(took < 1000, "frozen Redis serving: /readyz answered without waiting out the timeout (%lld ms)", (long long)took);
    tl_resp_free(&r);
    CHECK(tl_metric(gw.port, "aigw_redis_stalled") == 1, "frozen Redis serving: metrics say Redis stalled");
    CHECK(tl_metric(gw.port, "aigw_redis_calls_refused_total") > 0,
          "frozen Redis serving: calls given up without waiting are counted (%.0f)",
          tl_metric(gw.port, "aigw_redis_calls_refused_total"));
    kill(redis, SIGCONT);
    frozen = false;
    /* the outbox sends the publishes again (once a second): the locks go */
    for (end = aigw_now_ms() + 15000; redis_sf_locks(rport) != 0 && aigw_now_ms() < end;)
        usleep(100 * 1000);
    CHECK(redis_sf_locks(rport) == 0, "frozen Redis serving: the leaders' locks released once Redis is back (%lld left)",
          redis_sf_locks(rport));
    tl_mock_config(mock1, "{\"first_token_ms\":0}");
    for (end = aigw_now_ms() + 10000;; usleep(200 * 1000)) {
        tl_post(gw.port, "/api/ai/query", tok, "{\"question\":\"Is Redis answering again?\"}", &r);
        if (r.status == 200 || aigw_now_ms() >= end)
            break;
        tl_resp_free(&r);
    }
    CHECK(r.status == 200, "frozen Redis serving: queries answered again: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    CHECK(tl_metric(gw.port, "aigw_redis_stalled") == 0, "frozen Redis serving: no longer stalled");
out:
    if (frozen)
        kill(redis, SIGCONT);
    if (bg != NULL) {
        tl_parallel_join(bg);
        for (int i = 0; i < N; i++)
            tl_resp_free(&out[i]);
    }
    if (started)
        CHECK(tl_aigw_stop(&gw) == 0, "frozen Redis serving: clean stop");
    tl_mock_reset(mock1);
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    for (int i = 0; i < N; i++)
        free(bodies[i]);
    free(tok);
    free(redis_env);
    free(cfg);
}

/* Write data into the FIFO at path once a reader has it open (up to
 * timeout_ms), then close it: the reader sees data, then EOF. */
static bool
fifo_feed(const char *path, const char *data, int timeout_ms)
{
    int64_t end = aigw_now_ms() + timeout_ms;
    size_t len = strlen(data);
    bool ok;
    int fd;

    while ((fd = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0 && errno == ENXIO && aigw_now_ms() < end)
        usleep(5 * 1000);
    if (fd < 0)
        return false;
    ok = write(fd, data, len) == (ssize_t)len;
    close(fd);
    return ok;
}

struct early_hup {
    const char *fifo;
    struct tl_aigw *gw;
    bool sent, fed;
};

/* Waits for aigw to open the FIFO holding its JWT secret (it is then inside
 * its configuration, at start-up), sends it SIGHUP, and only then hands it
 * the secret. */
static void *
early_hup_run(void *arg)
{
    struct early_hup *h = arg;
    int64_t end = aigw_now_ms() + 20000;
    int fd;
    sigset_t pipe_set;

    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE); /* aigw may be gone by the write */
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);
    while ((fd = open(h->fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC)) < 0 && errno == ENXIO && aigw_now_ms() < end)
        usleep(2 * 1000);
    if (fd < 0)
        return NULL;
    h->sent = kill(__atomic_load_n(&h->gw->pid, __ATOMIC_SEQ_CST), SIGHUP) == 0;
    usleep(300 * 1000); /* the signal has been dealt with, one way or the other */
    h->fed = write(fd, tl_env("AIGW_JWT_SECRET"), strlen(tl_env("AIGW_JWT_SECRET"))) > 0;
    close(fd);
    return NULL;
}

/* A SIGHUP while aigw is still reading its configuration at start-up (a
 * reload asked for just as it was started or restarted) killed it: the
 * signals it handles were blocked only once the configuration was loaded,
 * so SIGHUP's default action ended the process, and systemd takes a death
 * by SIGHUP for a clean exit, so Restart=on-failure did not start it again.
 * Now the SIGHUP waits and is a reload once aigw runs. The HS256 secret
 * comes through a FIFO here, so the start waits while the signal is sent. */
static void
test_early_sighup(void)
{
    char dir[] = "/tmp/aigw-early-hup-XXXXXX", *fifo = NULL, *patch = NULL, *cfg = NULL, *tok = NULL;
    struct tl_aigw gw;
    struct early_hup h;
    pthread_t th;
    struct tl_resp r;
    int rc;

    if (mkdtemp(dir) == NULL) {
        CHECK(false, "mkdtemp");
        return;
    }
    fifo = tl_sprintf("%s/jwt-secret", dir);
    CHECK(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    patch = tl_sprintf("{\"jwt\":{\"keys\":[{\"kid\":\"dev\",\"alg\":\"HS256\",\"secret_file\":\"%s\"},"
                       "{\"kid\":\"platform\",\"alg\":\"HS256\",\"secret\":\"${AIGW_PLATFORM_JWT_SECRET}\","
                       "\"platform\":true}]}}",
                       fifo);
    cfg = tl_config_patch(patch);
    h = (struct early_hup){.fifo = fifo, .gw = &gw, .sent = false, .fed = false};
    memset(&gw, 0, sizeof(gw));
    pthread_create(&th, NULL, early_hup_run, &h);
    rc = tl_aigw_start(&gw, cfg);
    pthread_join(th, NULL);
    CHECK(h.sent, "SIGHUP sent while aigw read its configuration");
    CHECK(h.fed, "then the secret");
    CHECK(rc == 0, "aigw survives a SIGHUP during its start-up (exit status %d)", gw.status);
    if (rc != 0) {
        tl_aigw_stop(&gw); /* its temp dir */
        goto out;
    }
    /* the SIGHUP waited: once running, aigw reloads, and reads the FIFO again */
    CHECK(fifo_feed(fifo, tl_env("AIGW_JWT_SECRET"), 20000), "the reload reads the secret again");
    CHECK(tl_aigw_log_wait(&gw, "reload: configuration 2 applied", 10000), "the early SIGHUP became a reload");
    tok = tl_token("clinic_001", "admin", 600);
    tl_get(gw.port, "/api/ai/limits", tok, &r);
    CHECK(r.status == 200, "the secret read through the FIFO verifies tokens: %ld", r.status);
    tl_resp_free(&r);
    CHECK(tl_aigw_stop(&gw) == 0, "clean stop");
out:
    unlink(fifo);
    rmdir(dir);
    free(tok);
    free(cfg);
    free(patch);
    free(fifo);
}

/* SIGSTOP (freeze) or SIGCONT every PostgreSQL session of role; how many. */
static int
signal_sessions(const char *role, int sig)
{
    const char *p[1] = {role};
    PGresult *q = tl_sql(owner, true, "SELECT pid FROM pg_stat_activity WHERE usename = $1", 1, p);
    int n = 0;

    for (int i = 0; i < PQntuples(q); i++)
        n += kill((pid_t)strtol(PQgetvalue(q, i, 0), NULL, 10), sig) == 0;
    PQclear(q);
    return n;
}

/* PostgreSQL stops answering without a reset (a partition, a failover that
 * leaves the old server frozen): /readyz must still answer, 503 naming
 * postgresql, within its own deadline. Its SELECT 1 on a pooled connection
 * used to wait for TCP to give up (minutes): the load balancer's check
 * timed out instead of reading 503, every worker it reached stayed inside
 * the callback, and the watchdog then restarted aigw for it. */
static void
test_ready_pg_frozen(void)
{
    static const char ROLE[] = "aigw_ops_frozen";
    static const char APP[] = "user=aigw_app";
    const char *url = tl_env("AIGW_DATABASE_URL"), *u = strstr(url, APP);
    char *url_env = NULL, *cfg = tl_config_patch("{}"), *sql, buf[64];
    const char *env[2] = {NULL, NULL};
    struct tl_aigw gw;
    struct tl_resp r;
    int64_t t0, took;
    bool started = false;

    CHECK(u != NULL, "the application URL names user=aigw_app: %s", url);
    if (u == NULL)
        goto out;
    url_env = tl_sprintf("AIGW_DATABASE_URL=%.*suser=%s%s", (int)(u - url), url, ROLE, u + strlen(APP));
    env[0] = url_env;
    PQclear(tl_sql(owner, true, "DROP ROLE IF EXISTS aigw_ops_frozen", 0, NULL));
    sql = tl_sprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS INHERIT IN ROLE aigw_app", ROLE);
    PQclear(tl_sql(owner, true, sql, 0, NULL));
    free(sql);
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "frozen: aigw did not start");
        goto out;
    }
    started = true;
    CHECK(readyz_wait(gw.port, 200) == 200, "frozen: ready before");
    CHECK(signal_sessions(ROLE, SIGSTOP) > 0, "frozen: aigw's PostgreSQL sessions stopped");
    t0 = aigw_now_ms();
    tl_get(gw.port, "/readyz", NULL, &r);
    took = aigw_now_ms() - t0;
    CHECK(r.status == 503 && took < 5000, "frozen: /readyz answers 503 in time (%ld after %lld ms)", r.status,
          (long long)took);
    CHECK(tl_json_str(&r, "checks.postgresql", buf, sizeof(buf)) && strcmp(buf, "down") == 0,
          "frozen: /readyz names PostgreSQL: %s", r.body);
    tl_resp_free(&r);
    signal_sessions(ROLE, SIGCONT);
    CHECK(readyz_wait(gw.port, 200) == 200, "frozen: ready again once PostgreSQL answers");
out:
    signal_sessions(ROLE, SIGCONT); /* whatever happened */
    if (started)
        CHECK(tl_aigw_stop(&gw) == 0, "frozen: clean stop");
    PQclear(tl_sql(owner, true, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'aigw_ops_frozen'",
                   0, NULL));
    PQclear(tl_sql(owner, false, "DROP ROLE IF EXISTS aigw_ops_frozen", 0, NULL));
    free(url_env);
    free(cfg);
}

/* A GET on its own thread, for requests that may hang. */
struct bg_get {
    pthread_t th;
    int port;
    const char *path, *token;
    struct tl_resp r;
    int64_t took_ms;
    atomic_bool done;
};

static void *
bg_get_run(void *arg)
{
    struct bg_get *g = arg;
    int64_t t0 = aigw_now_ms();

    tl_get(g->port, g->path, g->token, &g->r);
    g->took_ms = aigw_now_ms() - t0;
    atomic_store(&g->done, true);
    return NULL;
}

/* PostgreSQL stops answering (aigw's sessions SIGSTOPped; a frozen server
 * or a partition alike) while aigw serves. Its statements used to wait for
 * an answer on the HTTP worker for as long as the freeze lasted: a request
 * that reads PostgreSQL (here GET /api/ai/usage) held its worker, and
 * with it every connection the worker served: /healthz, and queries of a
 * cached tenant that need no PostgreSQL at all; the watchdog would have
 * restarted aigw. Now a statement's answer is waited for 3 s at most (the
 * connection is then dropped), PostgreSQL counts as stalled and the other
 * requests that need it are refused at once, so /healthz and cached
 * queries keep being served, every request gets its answer while the
 * freeze lasts, and the usage rows of the queries made meanwhile reach
 * PostgreSQL once it answers again. */
static void
test_pg_frozen_serving(void)
{
    enum { N = 4 };
    static const char ROLE[] = "aigw_ops_pgfrz";
    static const char APP[] = "user=aigw_app";
    const char *url = tl_env("AIGW_DATABASE_URL"), *u = strstr(url, APP);
    char *url_env = NULL, *cfg = tl_config_patch("{\"http\":{\"threads\":2}}"), *sql, *tok = NULL, id[37], code[65];
    const char *env[2] = {NULL, NULL};
    struct bg_get g[N];
    struct tl_resp r, both[2];
    const char *warm[2] = {"{\"question\":\"Which frames suit a narrow face?\"}",
                           "{\"question\":\"How often should contact lenses be replaced?\"}"};
    struct tl_aigw gw;
    int64_t t0, took, worst = 0, end;
    int finished = 0, ok = 0, checks = 0, queries = 0, threads = 0;
    bool started = false, frozen = false;
    const char *p[1] = {id};
    char *log;
    long rows;

    memset(g, 0, sizeof(g));
    CHECK(u != NULL, "pg frozen serving: the application URL names user=aigw_app: %s", url);
    if (u == NULL)
        goto out;
    url_env = tl_sprintf("AIGW_DATABASE_URL=%.*suser=%s%s", (int)(u - url), url, ROLE, u + strlen(APP));
    env[0] = url_env;
    PQclear(tl_sql(owner, true, "DROP ROLE IF EXISTS aigw_ops_pgfrz", 0, NULL));
    sql = tl_sprintf("CREATE ROLE %s LOGIN NOSUPERUSER NOBYPASSRLS INHERIT IN ROLE aigw_app", ROLE);
    PQclear(tl_sql(owner, true, sql, 0, NULL));
    free(sql);
    tl_create_tenant(owner, "enterprise", "active", id, code);
    PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = '{\"requests_per_minute\": 100000}' WHERE id = $1", 1, p));
    tok = tl_token(code, "admin", 600);
    tl_mock_reset(mock1);
    tl_mock_reset(mock2);
    if (tl_aigw_start_env(&gw, cfg, env) != 0) {
        CHECK(false, "pg frozen serving: aigw did not start");
        goto out;
    }
    started = true;
    CHECK(readyz_wait(gw.port, 200) == 200, "pg frozen serving: ready before");
    /* the tenant in the cache, connections idle in the pool */
    tl_post_parallel(gw.port, "/api/ai/query", tok, NULL, warm, 2, both);
    for (int i = 0; i < 2; i++) {
        CHECK(both[i].status == 200, "pg frozen serving: warm-up query %d: %ld", i, both[i].status);
        tl_resp_free(&both[i]);
    }
    for (int i = 0; i < N; i++) {
        g[i] = (struct bg_get){.port = gw.port, .path = "/api/ai/usage", .token = tok};
        CHECK(pthread_create(&g[i].th, NULL, bg_get_run, &g[i]) == 0, "pg frozen serving: warm-up reader %d", i);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(g[i].th, NULL);
        CHECK(g[i].r.status == 200, "pg frozen serving: usage before: %ld %s", g[i].r.status, g[i].r.body);
        tl_resp_free(&g[i].r);
    }
    CHECK(tl_usage_flushed(gw.port), "pg frozen serving: usage rows written before");

    CHECK(signal_sessions(ROLE, SIGSTOP) > 0, "pg frozen serving: aigw's PostgreSQL sessions stopped");
    frozen = true;
    for (int i = 0; i < N; i++) {
        g[i] = (struct bg_get){.port = gw.port, .path = "/api/ai/usage", .token = tok};
        if (pthread_create(&g[i].th, NULL, bg_get_run, &g[i]) == 0)
            threads++;
    }
    /* 6 s: /healthz and a query of the cached tenant, again and again */
    for (end = aigw_now_ms() + 6000; aigw_now_ms() < end; usleep(100 * 1000)) {
        char *q = tl_sprintf("{\"question\":\"Is lens %d in stock while the database sleeps?\"}", checks);

        t0 = aigw_now_ms();
        tl_get(gw.port, "/healthz", NULL, &r);
        took = aigw_now_ms() - t0;
        worst = took > worst ? took : worst;
        ok += r.status == 200;
        tl_resp_free(&r);
        tl_post(gw.port, "/api/ai/query", tok, q, &r);
        queries += r.status == 200;
        tl_resp_free(&r);
        free(q);
        checks++;
    }
    for (int i = 0; i < N; i++)
        finished += atomic_load(&g[i].done);
    printf("pg frozen serving: %d rounds, slowest /healthz %lld ms, %d of %d readers answered\n", checks,
           (long long)worst, finished, N);
    CHECK(ok == checks && worst < 4500, "pg frozen serving: /healthz answered at once every time (%d of %d, slowest %lld ms)",
          ok, checks, (long long)worst);
    CHECK(queries == checks, "pg frozen serving: queries of the cached tenant answered (%d of %d)", queries, checks);
    CHECK(finished == N, "pg frozen serving: every request that reads PostgreSQL got its answer during the freeze "
                         "(%d of %d)", finished, N);
    log = tl_aigw_log(&gw);
    CHECK(log != NULL && strstr(log, "postgresql: no answer within 3000 ms; connection dropped") != NULL,
          "pg frozen serving: the statement given up on is logged");
    free(log);
    signal_sessions(ROLE, SIGCONT);
    frozen = false;
    for (int i = 0; i < threads; i++) {
        pthread_join(g[i].th, NULL);
        CHECK(g[i].r.status == 200 || g[i].r.status == 503, "pg frozen serving: reader %d: %ld %s", i, g[i].r.status,
              g[i].r.body);
        tl_resp_free(&g[i].r);
    }
    threads = 0;
    /* PostgreSQL is back: the rows of the queries made meanwhile arrive */
    rows = usage_rows(id, "AND route = '/api/ai/query'", 2 + checks, 20000);
    CHECK(rows == 2 + checks, "pg frozen serving: every query's usage row is in PostgreSQL (%ld, want %d)", rows,
          2 + checks);
    for (end = aigw_now_ms() + 10000;; usleep(200 * 1000)) {
        tl_get(gw.port, "/api/ai/usage", tok, &r);
        if (r.status == 200 || aigw_now_ms() >= end)
            break;
        tl_resp_free(&r);
    }
    CHECK(r.status == 200, "pg frozen serving: usage answered again: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    CHECK(tl_metric(gw.port, "aigw_postgres_stalled") == 0, "pg frozen serving: no longer stalled");
out:
    if (frozen)
        signal_sessions(ROLE, SIGCONT);
    for (int i = 0; i < threads; i++) {
        pthread_join(g[i].th, NULL);
        tl_resp_free(&g[i].r);
    }
    if (started)
        CHECK(tl_aigw_stop(&gw) == 0, "pg frozen serving: clean stop");
    PQclear(tl_sql(owner, true, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'aigw_ops_pgfrz'",
                   0, NULL));
    PQclear(tl_sql(owner, false, "DROP ROLE IF EXISTS aigw_ops_pgfrz", 0, NULL));
    free(tok);
    free(url_env);
    free(cfg);
}

/* ---- reloads ---- */

/* A configuration with the given jwt.keys, upstream.backends and log level. */
static char *
config_with(const char *keys, const char *backends, const char *level)
{
    char *patch = tl_sprintf("{\"jwt\":{\"keys\":%s},\"upstream\":{\"health_interval_ms\":200,\"fail_threshold\":100,"
                             "\"routes\":null,\"backends\":%s},\"log\":{\"level\":\"%s\"}}",
                             keys, backends, level);
    char *cfg = tl_config_patch(patch);

    free(patch);
    return cfg;
}

struct keys {
    char secret2[48];
    char *dev_keys, *both_keys, *k2_keys;
    char *dev_tok, *k2_tok;        /* clinic_001 admins */
};

static void
make_keys(struct keys *k)
{
    for (size_t i = 0; i + 1 < sizeof(k->secret2); i++)
        k->secret2[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[rand() % 36];
    k->secret2[sizeof(k->secret2) - 1] = '\0';
    k->dev_keys = tl_sprintf("[{\"kid\":\"dev\",\"alg\":\"HS256\",\"secret\":\"${AIGW_JWT_SECRET}\"}]");
    k->both_keys = tl_sprintf("[{\"kid\":\"dev\",\"alg\":\"HS256\",\"secret\":\"${AIGW_JWT_SECRET}\"},"
                              "{\"kid\":\"k2\",\"alg\":\"HS256\",\"secret\":\"%s\"}]",
                              k->secret2);
    k->k2_keys = tl_sprintf("[{\"kid\":\"k2\",\"alg\":\"HS256\",\"secret\":\"%s\"}]", k->secret2);
    k->dev_tok = tl_token("clinic_001", "admin", 600);
    k->k2_tok = tl_token_kid("k2", k->secret2, "clinic_001", "admin", 600);
}

static void
free_keys(struct keys *k)
{
    free(k->dev_keys);
    free(k->both_keys);
    free(k->k2_keys);
    free(k->dev_tok);
    free(k->k2_tok);
}

/* GET /api/ai/limits on the kept connection: the status, and whether the
 * connection was reused (no new TCP connection). */
static long
limits_on(struct tl_conn *c, const char *tok, bool *reused)
{
    struct tl_resp r;
    long news = -1, status;

    tl_conn_get(c, "/api/ai/limits", tok, &r, &news);
    status = r.status;
    *reused = news == 0;
    tl_resp_free(&r);
    return status;
}

static void
test_key_rotation(struct tl_aigw *gw, int fd, struct keys *k, const char *backends)
{
    struct tl_conn *c = tl_conn_open(gw->port);
    bool reused = false;
    long st;
    char *cfg;

    CHECK(limits_on(c, k->dev_tok, &reused) == 200, "dev token before the rotation");
    CHECK(limits_on(c, k->k2_tok, &reused) == 401, "k2 unknown before the rotation");

    cfg = config_with(k->both_keys, backends, "info");
    reload(gw, fd, cfg);
    free(cfg);
    st = limits_on(c, k->dev_tok, &reused);
    CHECK(st == 200 && reused, "old kid still valid after adding k2 (%ld, same connection %d)", st, reused);
    st = limits_on(c, k->k2_tok, &reused);
    CHECK(st == 200 && reused, "new kid k2 valid (%ld, same connection %d)", st, reused);

    cfg = config_with(k->k2_keys, backends, "info");
    reload(gw, fd, cfg);
    free(cfg);
    st = limits_on(c, k->dev_tok, &reused);
    CHECK(st == 401 && reused, "old kid removed: its token (cached before) gets 401 (%ld, same connection %d)", st,
          reused);
    st = limits_on(c, k->k2_tok, &reused);
    CHECK(st == 200 && reused, "k2 still valid (%ld, same connection %d)", st, reused);
    CHECK(tl_aigw_log_wait(gw, "reload: configuration 3 applied (JWT keys: k2;", 5000), "the applied keys are logged");
    CHECK(tl_metric(gw->port, "aigw_config_reloads_total{result=\"success\"}") == 2, "two reloads counted");
    tl_conn_close(c);
}

static void
test_bad_reload(struct tl_aigw *gw, int fd, struct keys *k, const char *backends)
{
    struct tl_conn *c = tl_conn_open(gw->port);
    char *short_secret = config_with("[{\"kid\":\"k3\",\"alg\":\"HS256\",\"secret\":\"too-short\"}]", backends, "info");
    bool reused = false;
    long st;
    char *log;
    int refused = 0;

    CHECK(limits_on(c, k->k2_tok, &reused) == 200, "k2 before the bad reloads");
    reload(gw, fd, "{ \"listen\": this is not JSON");
    CHECK(tl_aigw_log_wait(gw, "reload refused, keeping the running configuration", 5000), "bad JSON refused, logged");
    reload(gw, fd, short_secret);
    st = limits_on(c, k->k2_tok, &reused);
    CHECK(st == 200 && reused, "still serving with the old keys (%ld, same connection %d)", st, reused);
    CHECK(limits_on(c, k->dev_tok, &reused) == 401, "and still without the removed one");
    log = tl_aigw_log(gw);
    for (const char *p = log; (p = strstr(p, "reload refused")) != NULL; p++)
        refused++;
    CHECK(refused == 2, "both refusals logged (%d)", refused);
    CHECK(log != NULL && strstr(log, "HS256 needs a secret of at least 32 bytes") != NULL, "the reason is logged");
    CHECK(tl_metric(gw->port, "aigw_config_reloads_total{result=\"failure\"}") == 2, "failures counted");
    CHECK(tl_metric(gw->port, "aigw_config_last_reload_successful") == 0, "last reload marked failed");
    free(log);
    free(short_secret);
    tl_conn_close(c);
}

static void
test_backend_reload(struct tl_aigw *gw, int fd, struct keys *k)
{
    const char *slow_body[1] = {"{\"question\":\"What frame suits a round face, asked before the reload?\"}"};
    struct tl_resp slow, r;
    struct tl_parallel *bg;
    char id[37], *tok = busy_tenant(id, "k2", k->secret2), *cfg;

    tl_mock_reset(mock1);
    tl_mock_reset(mock2);
    tl_mock_config(mock1, "{\"first_token_ms\":2500}");
    bg = tl_post_parallel_bg(gw->port, "/api/ai/query", tok, slow_body, 1, &slow);
    CHECK(tl_metric_wait(gw->port, "aigw_upstream_in_flight", 1, 15000) == 1, "a slow call is in flight on mock1");

    cfg = config_with(k->k2_keys, ONLY2, "info");
    reload(gw, fd, cfg);
    free(cfg);
    CHECK(tl_aigw_log_wait(gw, "upstream: configuration 4 applied: 1 backends", 5000), "the engine applied it");
    /* a backend new to the table takes calls once its first probe (sent at once) answers */
    CHECK(tl_metric_wait(gw->port, "aigw_upstream_backend_up{backend=\"mock2\"}", 1, 5000) == 1,
          "metrics show mock2, up");
    tl_post(gw->port, "/api/ai/query", tok, "{\"question\":\"Which lens coating resists scratches best?\"}", &r);
    CHECK(r.status == 200, "a query after the reload: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    CHECK(tl_mock_stat(mock2, "chat_requests") == 1, "it went to the new backend mock2");
    tl_parallel_join(bg);
    CHECK(slow.status == 200, "the call in flight finished on its old backend: %ld %s", slow.status, slow.body);
    tl_resp_free(&slow);
    CHECK(tl_mock_stat(mock1, "chat_requests") == 1, "mock1 got nothing new");
    CHECK(tl_metric(gw->port, "aigw_upstream_backend_up{backend=\"mock1\"}") == -1, "metrics no longer show mock1");
    tl_mock_reset(mock1);
    free(tok);
}

/* The single-flight lock lives as long as the reloaded upstream timeouts
 * say, not the start-up ones (a lock sized for a shorter timeout expired
 * under a live leader, and its waiters made their own model calls). */
static void
test_lock_follows_reload(struct tl_aigw *gw, int fd, struct keys *k)
{
    const char *slow_body[1] = {"{\"question\":\"How long may the leader of this question take?\"}"};
    struct tl_resp slow;
    struct tl_parallel *bg;
    char id[37], *tok = busy_tenant(id, "k2", k->secret2), *pattern = tl_sprintf("aigw:{%s}:sf:*", id);
    char *patch = tl_sprintf("{\"jwt\":{\"keys\":%s},\"upstream\":{\"health_interval_ms\":200,\"fail_threshold\":100,"
                             "\"timeout_ms\":20000,\"routes\":null,\"backends\":%s}}",
                             k->k2_keys, ONLY2);
    char *cfg = tl_config_patch(patch);
    long long pttl;

    reload(gw, fd, cfg); /* upstream.timeout_ms 60000 -> 20000; queue_timeout_ms stays 10000 */
    tl_mock_config(mock2, "{\"first_token_ms\":1500}");
    bg = tl_post_parallel_bg(gw->port, "/api/ai/query", tok, slow_body, 1, &slow);
    CHECK(tl_metric_wait(gw->port, "aigw_upstream_in_flight", 1, 15000) == 1, "a leader is at the model");
    pttl = tl_max_pttl(pattern);
    CHECK(pttl > 30000 && pttl <= 35000, "its lock lives 20 + 10 + 5 s, as reloaded (%lld ms left)", pttl);
    tl_parallel_join(bg);
    CHECK(slow.status == 200, "answered: %ld", slow.status);
    tl_resp_free(&slow);
    tl_mock_reset(mock2);
    free(cfg);
    free(patch);
    free(pattern);
    free(tok);
}

/* GET /api/ai/limits with an X-Request-Id, for the access log. */
static long
limits_with_id(int port, const char *tok, const char *rid)
{
    char auth[4096], idh[128];
    const char *h[3] = {auth, idh, NULL};
    struct tl_resp r;
    long st;

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
    snprintf(idh, sizeof(idh), "X-Request-Id: %s", rid);
    tl_http(port, "GET", "/api/ai/limits", h, NULL, 0, &r);
    st = r.status;
    tl_resp_free(&r);
    return st;
}

static void
test_log_level_reload(struct tl_aigw *gw, int fd, struct keys *k, const char *backends)
{
    static const char DONE[] = "aigw_requests_total{route=\"/api/ai/limits\",code=\"2xx\"}";
    char quiet[64], loud[64], *cfg, *log;
    double before;

    snprintf(quiet, sizeof(quiet), "level-quiet-%d", (int)getpid());
    snprintf(loud, sizeof(loud), "level-loud-%d", (int)getpid());
    cfg = config_with(k->k2_keys, backends, "warning");
    reload(gw, fd, cfg);
    free(cfg);
    before = tl_metric(gw->port, DONE);
    CHECK(limits_with_id(gw->port, k->k2_tok, quiet) == 200, "a request at level warning");
    CHECK(tl_metric_wait(gw->port, DONE, before + 1, 5000) == before + 1, "it completed");
    cfg = config_with(k->k2_keys, backends, "info");
    reload(gw, fd, cfg);
    free(cfg);
    CHECK(limits_with_id(gw->port, k->k2_tok, loud) == 200, "a request at level info");
    CHECK(tl_aigw_log_wait(gw, loud, 5000), "info access entries are back");
    log = tl_aigw_log(gw);
    CHECK(log != NULL && strstr(log, quiet) == NULL, "nothing at info while the level was warning");
    free(log);
}

/* A stream of 10,000 tokens (mock2) to a client that reads nothing after
 * its first event and keeps a small receive buffer: whether aigw took all
 * of it from the model (the call ended) within wait_ms; then the client
 * leaves, and *tokens is what its usage row bills. */
static bool
unread_stream(struct tl_aigw *gw, const char *tok, const char *tid, const char *question, int wait_ms, long *tokens)
{
    const char *p[1] = {tid};
    int fd = tl_stream_open(gw->port, tok, question, 2048);
    bool ended;

    CHECK(fd >= 0 && tl_read_until(fd, "delta", 5000), "stream buffer: the stream started (%s)", question);
    ended = tl_metric_wait(gw->port, "aigw_upstream_in_flight", 0, wait_ms) == 0;
    if (fd >= 0)
        close(fd);
    CHECK(tl_wait_sql(owner, 1, 10000, "SELECT count(*) FROM ai_usage_logs WHERE tenant_id = $1", 1, p) == 1,
          "stream buffer: its usage row (%s)", question);
    *tokens = tl_sql_long(owner, "SELECT completion_tokens FROM ai_usage_logs WHERE tenant_id = $1", 1, p);
    return ended;
}

/* upstream.stream_buffer_bytes is reloaded (new streams take the new size):
 * with 4 MiB a client that reads nothing still lets aigw take a whole
 * 10,000-token stream from the model (~0.6 MB: the call ends, all of it
 * billed); after a reload to 4096 bytes the same stream is paused when the
 * buffer fills: the call stays in flight and the client, gone, is billed
 * for far less. */
static void
test_stream_buffer_reload(struct tl_aigw *gw, int fd, struct keys *k)
{
    static const int SIZES[2] = {4 << 20, 4096};
    long tokens[2] = {-1, -1};
    bool ended[2];

    tl_mock_reset(mock2);
    tl_mock_config(mock2, "{\"mode\":\"ok\",\"tokens\":10000,\"token_latency_ms\":0}");
    for (int i = 0; i < 2; i++) {
        char id[37], *tok = busy_tenant(id, "k2", k->secret2), question[96];
        char *patch = tl_sprintf("{\"jwt\":{\"keys\":%s},\"upstream\":{\"health_interval_ms\":200,"
                                 "\"fail_threshold\":100,\"routes\":null,\"backends\":%s,\"stream_buffer_bytes\":%d}}",
                                 k->k2_keys, ONLY2, SIZES[i]);
        char *cfg = tl_config_patch(patch);
        const char *p[1] = {id};

        PQclear(tl_sql(owner, true, "UPDATE tenants SET overrides = overrides || '{\"max_tokens\": 10000}' WHERE id = $1",
                       1, p));
        reload(gw, fd, cfg);
        snprintf(question, sizeof(question), "Everything about lens coatings, buffer %d, pid %d", SIZES[i], (int)getpid());
        ended[i] = unread_stream(gw, tok, id, question, i == 0 ? 20000 : 2000, &tokens[i]);
        free(cfg);
        free(patch);
        free(tok);
    }
    CHECK(ended[0] && tokens[0] == 10000,
          "stream buffer 4 MiB: the whole stream taken from the model for a client reading nothing (ended %d, %ld tokens)",
          ended[0], tokens[0]);
    CHECK(!ended[1] && tokens[1] > 0 && tokens[1] < 3000,
          "stream buffer reloaded to 4096: the stream paused, the call still in flight (ended %d), %ld tokens billed",
          ended[1], tokens[1]);
    CHECK(tl_metric_wait(gw->port, "aigw_upstream_in_flight", 0, 10000) == 0, "stream buffer: the paused call ended");
    tl_mock_reset(mock2);
}

/* The line of the log holding needle (malloc'd), or NULL. */
static char *
log_line(const struct tl_aigw *gw, const char *needle)
{
    char *log = tl_aigw_log(gw), *p = log ? strstr(log, needle) : NULL, *line = NULL;

    if (p != NULL) {
        char *start = p, *end = strchr(p, '\n');

        while (start > log && start[-1] != '\n')
            start--;
        line = tl_sprintf("%.*s", (int)((end ? end : p + strlen(p)) - start), start);
    }
    free(log);
    return line;
}

static void
ask_with_id(int port, const char *tok, const char *question, const char *rid, struct tl_resp *r)
{
    char auth[4096], idh[128], *body = tl_sprintf("{\"question\":\"%s\"}", question);
    const char *h[4] = {"Content-Type: application/json", auth, idh, NULL};

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok);
    snprintf(idh, sizeof(idh), "X-Request-Id: %s", rid);
    tl_http(port, "POST", "/api/ai/query", h, body, strlen(body), r);
    free(body);
}

static void
test_access_log(struct tl_aigw *gw, struct keys *k)
{
    char id[37], *tok = busy_tenant(id, "k2", k->secret2), q[128], miss_id[64], hit_id[64], *line, *log, want[96];
    struct tl_resp r;

    snprintf(q, sizeof(q), "How do I store zebra quokka lenses number %d?", (int)getpid());
    snprintf(miss_id, sizeof(miss_id), "access-miss-%d", (int)getpid());
    ask_with_id(gw->port, tok, q, miss_id, &r);
    CHECK(r.status == 200, "query: %ld %s", r.status, r.body);
    tl_resp_free(&r);
    /* the answer is stored after the response leaves: a question asked at
     * once can still find the flight's published result instead (X-Cache
     * HIT too, but logged CACHE=coalesced), so ask again until the log says
     * the cache answered */
    for (int i = 0; i < 40; i++) {
        bool hit;

        snprintf(hit_id, sizeof(hit_id), "access-hit-%d-%d.", (int)getpid(), i);
        ask_with_id(gw->port, tok, q, hit_id, &r);
        CHECK(r.status == 200, "same query again: %ld", r.status);
        tl_resp_free(&r);
        line = tl_aigw_log_wait(gw, hit_id, 5000) ? log_line(gw, hit_id) : NULL;
        hit = line != NULL && strstr(line, "CACHE=coalesced") == NULL;
        free(line);
        if (hit)
            break;
        usleep(50 * 1000);
    }
    CHECK(tl_aigw_log_wait(gw, hit_id, 5000) && tl_aigw_log_wait(gw, miss_id, 5000), "both logged");
    line = log_line(gw, miss_id);
    snprintf(want, sizeof(want), "TENANT_ID=%s", id);
    CHECK(line != NULL && strstr(line, "ROUTE=/api/ai/query") && strstr(line, "STATUS=200") &&
              strstr(line, "DURATION_MS=") && strstr(line, want) && strstr(line, "CACHE=miss") &&
              strstr(line, "UPSTREAM_MS="),
          "miss entry has the fields: %s", line ? line : "(none)");
    free(line);
    line = log_line(gw, hit_id);
    CHECK(line != NULL && strstr(line, "CACHE=hit") && !strstr(line, "UPSTREAM_MS=") && strstr(line, want),
          "hit entry: %s", line ? line : "(none)");
    CHECK(line != NULL && strncmp(line, "<6>request ", 11) == 0, "access entries are priority info: %s",
          line ? line : "(none)");
    free(line);
    log = tl_aigw_log(gw);
    CHECK(log != NULL && strstr(log, "zebra quokka") == NULL, "the question text is never logged");
    CHECK(log != NULL && strstr(log, tok) == NULL && strstr(log, k->secret2) == NULL, "nor tokens or keys");
    free(log);
    free(tok);
}

static void
test_reloads(void)
{
    struct keys k;
    struct tl_aigw gw;
    char *cfg;
    int fd;

    make_keys(&k);
    cfg = config_with(k.dev_keys, ONLY1, "info");
    if (start_notified(&gw, cfg, NULL, &fd) != 0) {
        CHECK(false, "aigw did not start");
        free(cfg);
        free_keys(&k);
        return;
    }
    CHECK(tl_notify_wait(fd, "READY=1", 30000), "READY=1");
    test_key_rotation(&gw, fd, &k, ONLY1);
    test_bad_reload(&gw, fd, &k, ONLY1);
    test_backend_reload(&gw, fd, &k);
    test_lock_follows_reload(&gw, fd, &k);
    test_log_level_reload(&gw, fd, &k, ONLY2);
    test_stream_buffer_reload(&gw, fd, &k);
    test_access_log(&gw, &k);
    CHECK(tl_aigw_stop(&gw) == 0, "clean exit after the reloads");
    close(fd);
    free(cfg);
    free_keys(&k);
}

/* What fd receives until the peer closes it, what was read holds until
 * (when not NULL), or timeout_ms pass (malloc'd). */
static char *
read_text(int fd, const char *until, int timeout_ms)
{
    size_t n = 0, cap = 65536;
    char *acc = malloc(cap);
    int64_t end = aigw_now_ms() + timeout_ms;

    while (aigw_now_ms() < end && n < cap - 1) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        ssize_t k;

        if (poll(&pfd, 1, 100) <= 0)
            continue;
        k = read(fd, acc + n, cap - 1 - n);
        if (k <= 0)
            break;
        n += (size_t)k;
        acc[n] = '\0';
        if (until != NULL && strstr(acc, until) != NULL)
            break;
    }
    acc[n] = '\0';
    return acc;
}

/* A streamed OpenAI chat completion on a new connection; nothing is read. */
static int
chat_stream_open(int port, const char *tok, const char *content)
{
    char *body = tl_sprintf("{\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", content);
    int fd = tl_post_raw(port, "/v1/chat/completions", tok, body, 0);

    free(body);
    return fd;
}

/* Streams on both routes under way while SIGHUP replaces their backend,
 * their JWT key and the log level, twice in a row: both run to their
 * normal end on the old backend and are billed; new requests see the new
 * configuration. */
static void
test_reload_mid_stream(void)
{
    struct keys k;
    struct tl_aigw gw;
    char id[37], *tok, *cfg, *next, *q, *text_a = NULL, *text_b = NULL;
    int fd, fd_a = -1, fd_b = -1;
    struct tl_resp r;

    make_keys(&k);
    tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET"));
    cfg = config_with(k.dev_keys, ONLY1, "info");
    next = config_with(k.k2_keys, ONLY2, "warning");
    tl_mock_reset(mock1);
    tl_mock_reset(mock2);
    tl_mock_config(mock1, "{\"first_token_ms\":100,\"token_latency_ms\":200,\"tokens\":20}");
    if (start_notified(&gw, cfg, NULL, &fd) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    CHECK(tl_notify_wait(fd, "READY=1", 30000), "READY=1");
    q = tl_sprintf("Which lens for the reloaded stream of %d?", (int)getpid());
    fd_a = tl_stream_open(gw.port, tok, q, 0);
    free(q);
    CHECK(fd_a >= 0 && tl_read_until(fd_a, "delta", 10000), "reload mid-stream: the query stream is under way");
    q = tl_sprintf("Which frame for the reloaded chat of %d?", (int)getpid());
    fd_b = chat_stream_open(gw.port, tok, q);
    free(q);
    CHECK(fd_b >= 0 && tl_read_until(fd_b, "data: {", 10000), "reload mid-stream: the chat stream is under way");
    tl_write_file(gw.config, next);
    tl_aigw_signal(&gw, SIGHUP);
    tl_aigw_signal(&gw, SIGHUP);
    CHECK(tl_notify_wait(fd, "RELOADING=1", 15000) && tl_notify_wait(fd, "READY=1", 15000),
          "reload mid-stream: RELOADING=1 then READY=1");
    text_a = read_text(fd_a, "\"done\":true", 20000);
    text_b = read_text(fd_b, "data: [DONE]", 20000);
    CHECK(strstr(text_a, "\"done\":true") != NULL && strstr(text_a, "\"error\"") == NULL,
          "reload mid-stream: the query stream ran to its normal end: %s", text_a);
    CHECK(strstr(text_b, "data: [DONE]") != NULL && strstr(text_b, "\"error\"") == NULL &&
              strstr(text_b, "\"finish_reason\":\"stop\"") != NULL,
          "reload mid-stream: the chat stream ran to its normal end: %s", text_b);
    CHECK(tl_mock_stat(mock1, "streams") == 2 && tl_mock_stat(mock2, "chat_requests") == 0,
          "reload mid-stream: both on the old backend");
    CHECK(usage_rows(id, "AND status_code = 200 AND billed", 2, 10000) == 2, "reload mid-stream: both billed, 200");
    tl_get(gw.port, "/api/ai/limits", tok, &r);
    CHECK(r.status == 401, "reload mid-stream: the removed key's token now gets 401 (%ld)", r.status);
    tl_resp_free(&r);
    tl_post(gw.port, "/api/ai/query", k.k2_tok, "{\"question\":\"Which coating after the reload?\"}", &r);
    CHECK(r.status == 200 && tl_mock_stat(mock2, "chat_requests") == 1,
          "reload mid-stream: a new query goes to the new backend (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    CHECK(tl_aigw_stop(&gw) == 0, "reload mid-stream: clean exit");
    close(fd);
out:
    if (fd_a >= 0)
        close(fd_a);
    if (fd_b >= 0)
        close(fd_b);
    tl_mock_reset(mock1);
    tl_mock_reset(mock2);
    free(text_a);
    free(text_b);
    free(next);
    free(cfg);
    free(tok);
    free_keys(&k);
}

/* upstream.stream_idle_ms, reloaded lower while a stream waits for its
 * first token, applies to later streams: the one in flight keeps the limit
 * it started with, as a call keeps its curl timeouts (it was measured
 * against the new limit and failed with 504 on the next sweep). */
static void
test_reload_stream_idle(void)
{
    static const char PATCH[] = "{\"upstream\":{\"health_interval_ms\":200,\"fail_threshold\":100,\"routes\":null,"
                                "\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\"}],"
                                "\"stream_idle_ms\":%d}}";
    char *patch = tl_sprintf(PATCH, 30000), *cfg = tl_config_patch(patch), *next, *q, *text = NULL;
    char id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET"));
    struct tl_aigw gw;
    int fd = -1;

    free(patch);
    patch = tl_sprintf(PATCH, 1000);
    next = tl_config_patch(patch);
    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"first_token_ms\":3000,\"tokens\":4}");
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    q = tl_sprintf("Which lens for the patient stream of %d?", (int)getpid());
    fd = tl_stream_open(gw.port, tok, q, 0);
    free(q);
    CHECK(tl_metric_wait(gw.port, "aigw_upstream_in_flight", 1, 10000) == 1, "stream idle: the stream is at the model");
    tl_write_file(gw.config, next);
    tl_aigw_signal(&gw, SIGHUP);
    CHECK(tl_aigw_log_wait(&gw, "upstream: configuration 2 applied", 5000), "stream idle: reloaded to 1000 ms");
    text = read_text(fd, "\"done\":true", 15000);
    CHECK(strstr(text, "\"done\":true") != NULL && strstr(text, "\"error\"") == NULL,
          "stream idle: the stream in flight keeps the 30 s it started with: %s", text);
    CHECK(tl_aigw_stop(&gw) == 0, "stream idle: clean exit");
out:
    if (fd >= 0)
        close(fd);
    tl_mock_reset(mock1);
    free(text);
    free(next);
    free(patch);
    free(cfg);
    free(tok);
}

/* ---- SIGTERM drain ---- */

static char *
drain_config(int drain_ms)
{
    char *patch = tl_sprintf("{\"upstream\":{\"health_interval_ms\":200,\"fail_threshold\":100,\"timeout_ms\":30000,"
                             "\"routes\":null,\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\","
                             "\"slots\":32,\"max_connections\":32}]},\"shutdown\":{\"drain_timeout_ms\":%d}}",
                             drain_ms);
    char *cfg = tl_config_patch(patch);

    free(patch);
    return cfg;
}

/* How many of the n answers have status (and error code, when not NULL);
 * frees the answers and their bodies. */
static int
count_answers(struct tl_resp *out, char **bodies, int n, long status, const char *code)
{
    char got[64];
    int k = 0;

    for (int i = 0; i < n; i++) {
        k += out[i].status == status &&
             (code == NULL || (tl_json_str(&out[i], "error.code", got, sizeof(got)) && strcmp(got, code) == 0));
        tl_resp_free(&out[i]);
        free(bodies[i]);
    }
    return k;
}

/* n distinct questions in the background on gw; waits until all n are in
 * flight upstream. */
static struct tl_parallel *
slow_burst(const struct tl_aigw *gw, const char *tok, const char *tag, int n, char **bodies, struct tl_resp *out)
{
    struct tl_parallel *bg;

    for (int i = 0; i < n; i++)
        bodies[i] = tl_sprintf("{\"question\":\"Which lens for %s case %d of %d?\"}", tag, i, (int)getpid());
    bg = tl_post_parallel_bg(gw->port, "/api/ai/query", tok, (const char *const *)bodies, n, out);
    CHECK(tl_metric_wait(gw->port, "aigw_upstream_in_flight", n, 20000) == n, "%d calls in flight upstream", n);
    return bg;
}

static void
test_drain(void)
{
    char *cfg = drain_config(30000), id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET")), *bodies[20];
    char buf[64];
    struct tl_resp out[20], r;
    struct tl_parallel *bg;
    struct tl_conn *api, *ops, *mon, *oai;
    struct tl_aigw gw;
    int ok = 0;
    bool refused = false;

    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"first_token_ms\":4000,\"slots\":64}");
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    api = tl_conn_open(gw.port);
    ops = tl_conn_open(gw.port);
    mon = tl_conn_open(gw.port);
    oai = tl_conn_open(gw.port);
    tl_conn_get(api, "/api/ai/limits", tok, &r, NULL); /* the connections open and kept */
    tl_resp_free(&r);
    tl_conn_get(oai, "/healthz", NULL, &r, NULL);
    tl_resp_free(&r);
    tl_conn_get(ops, "/healthz", NULL, &r, NULL);
    tl_resp_free(&r);
    tl_conn_get(mon, "/healthz", NULL, &r, NULL);
    tl_resp_free(&r);
    bg = slow_burst(&gw, tok, "drain", 20, bodies, out);

    tl_aigw_signal(&gw, SIGTERM);
    for (int64_t end = aigw_now_ms() + 10000; !refused && aigw_now_ms() < end; usleep(20 * 1000))
        refused = tl_port_refuses(gw.port);
    CHECK(refused, "new connections are refused once draining");
    tl_conn_get(api, "/api/ai/limits", tok, &r, NULL);
    CHECK(r.status == 503 && tl_json_str(&r, "error.code", buf, sizeof(buf)) &&
              strcmp(buf, "service_unavailable") == 0,
          "a new request on a kept connection: 503 (%ld %s)", r.status, r.body);
    CHECK(tl_resp_header(&r, "Connection", buf, sizeof(buf)) && strcmp(buf, "close") == 0,
          "with Connection: close");
    tl_resp_free(&r);
    /* the OpenAI routes too: every route but /healthz, /readyz and /metrics */
    tl_conn_get(oai, "/v1/models", tok, &r, NULL);
    CHECK(r.status == 503 && tl_json_str(&r, "error.code", buf, sizeof(buf)) &&
              strcmp(buf, "service_unavailable") == 0,
          "/v1/models on a kept connection: 503 (%ld %s)", r.status, r.body);
    tl_resp_free(&r);
    tl_conn_get(mon, "/metrics", NULL, &r, NULL);
    CHECK(tl_metric_in(r.body, "aigw_draining") == 1 && tl_metric_in(r.body, "aigw_requests_in_flight") >= 20,
          "/metrics while draining: aigw_draining %g, aigw_requests_in_flight %g", tl_metric_in(r.body, "aigw_draining"),
          tl_metric_in(r.body, "aigw_requests_in_flight"));
    tl_resp_free(&r);
    tl_conn_get(ops, "/readyz", NULL, &r, NULL);
    CHECK(r.status == 503 && tl_json_str(&r, "checks.process", buf, sizeof(buf)) && strcmp(buf, "draining") == 0,
          "/readyz says draining: %ld %s", r.status, r.body);
    tl_resp_free(&r);

    tl_parallel_join(bg);
    ok = count_answers(out, bodies, 20, 200, NULL);
    CHECK(ok == 20, "all 20 requests in flight at SIGTERM answered 200 (%d)", ok);
    CHECK(tl_aigw_wait(&gw, 60000) == 0, "exit 0 after the drain (%d)", gw.status);
    CHECK(usage_rows(id, "AND route = '/api/ai/query' AND status_code = 200", 20, 10000) == 20,
          "20 usage rows in PostgreSQL");
    CHECK(tl_aigw_log_wait(&gw, "drain: HTTP stopped", 0), "the drain is logged");
    tl_conn_close(api);
    tl_conn_close(ops);
    tl_conn_close(mon);
    tl_conn_close(oai);
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 (and clean under the sanitizers)");
out:
    tl_mock_reset(mock1);
    free(tok);
    free(cfg);
}

static void
test_drain_deadline(void)
{
    char *cfg = drain_config(1000), id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET")), *bodies[5];
    struct tl_resp out[5];
    struct tl_parallel *bg;
    struct tl_aigw gw;
    int cancelled = 0;

    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"first_token_ms\":6000,\"slots\":64}");
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    bg = slow_burst(&gw, tok, "deadline", 5, bodies, out);
    tl_aigw_signal(&gw, SIGTERM);
    tl_parallel_join(bg);
    cancelled = count_answers(out, bodies, 5, 503, "upstream_unavailable");
    CHECK(cancelled == 5, "past the deadline the 5 calls end with a clean 503 (%d)", cancelled);
    CHECK(tl_aigw_wait(&gw, 60000) == 0, "exit 0 (%d)", gw.status);
    CHECK(usage_rows(id, "AND status_code = 503 AND error_code = 'upstream_unavailable'", 5, 10000) == 5,
          "their 5 usage rows are written");
    CHECK(tl_aigw_log_wait(&gw, "still in flight at the deadline; cancelling", 0), "the cancellation is logged");
    {
        char *line = log_line(&gw, "<4>request ");

        CHECK(line != NULL && strstr(line, "STATUS=503") != NULL && strstr(line, "ERROR_CODE=upstream_unavailable"),
              "5xx access entries are warnings (<4>): %s", line ? line : "(none)");
        free(line);
    }
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 (and clean under the sanitizers)");
    /* the mock still generates the abandoned answers: let them end before other tests use it */
    for (int64_t end = aigw_now_ms() + 30000; tl_mock_stat(mock1, "in_flight") > 0 && aigw_now_ms() < end;)
        usleep(100 * 1000);
out:
    tl_mock_reset(mock1);
    free(tok);
    free(cfg);
}

/* Every kind of request still in flight at the drain deadline: a stream on
 * each route, a single-flight leader with two waiters, a call holding a
 * backend slot and one queued for a slot. Each ends with the documented
 * status and a usage row; after the exit nothing is left behind: no
 * single-flight lock, a quota counter equal to the billed
 * rows and no reservation left open in the journal. */
static void
test_drain_kinds(void)
{
    char *patch = tl_sprintf("{\"upstream\":{\"health_interval_ms\":200,\"fail_threshold\":100,\"timeout_ms\":60000,"
                             "\"queue_timeout_ms\":60000,\"routes\":null,\"backends\":[{\"name\":\"mock1\","
                             "\"url\":\"${AIGW_MOCK_URL}\",\"slots\":4,\"max_connections\":4}]},"
                             "\"shutdown\":{\"drain_timeout_ms\":2000}}");
    char *cfg = tl_config_patch(patch), id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET"));
    char *bodies[5], *q = NULL, *text_a = NULL, *text_b = NULL, *spool = NULL;
    struct tl_resp out[5];
    struct tl_parallel *bg;
    struct tl_aigw gw;
    int fd_a = -1, fd_b = -1, n503 = 0, n504 = 0;
    long billed;

    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"first_token_ms\":100,\"token_latency_ms\":500,\"tokens\":60,\"slots\":64}");
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    spool = tl_sprintf("%s/spool", gw.dir);
    q = tl_sprintf("Which lens for the drained stream of %d?", (int)getpid());
    fd_a = tl_stream_open(gw.port, tok, q, 0);
    CHECK(fd_a >= 0 && tl_read_until(fd_a, "delta", 10000), "the query stream is under way");
    free(q);
    q = tl_sprintf("Which frame for the drained chat of %d?", (int)getpid());
    fd_b = chat_stream_open(gw.port, tok, q);
    CHECK(fd_b >= 0 && tl_read_until(fd_b, "data: {", 10000), "the chat stream is under way");
    for (int i = 0; i < 5; i++)
        bodies[i] = i < 3 ? tl_sprintf("{\"question\":\"Which lens for the shared drain case of %d?\"}", (int)getpid())
                          : tl_sprintf("{\"question\":\"Which lens for drain kind %d of %d?\"}", i, (int)getpid());
    bg = tl_post_parallel_bg(gw.port, "/api/ai/query", tok, (const char *const *)bodies, 5, out);
    CHECK(tl_metric_wait(gw.port, "aigw_upstream_in_flight", 4, 20000) == 4, "4 calls hold the 4 slots");
    CHECK(tl_metric_wait(gw.port, "aigw_upstream_queued", 1, 20000) == 1, "1 call waits for a slot");
    CHECK(tl_metric_wait(gw.port, "aigw_requests_in_flight", 8, 20000) == 8, "7 requests in flight (+ the scrape)");
    tl_aigw_signal(&gw, SIGTERM);
    tl_parallel_join(bg);
    text_a = read_text(fd_a, NULL, 30000);
    text_b = read_text(fd_b, NULL, 30000);
    CHECK(tl_aigw_wait(&gw, 60000) == 0, "exit 0 (%d)", gw.status);
    for (int i = 0; i < 5; i++) {
        char code[64] = "";

        tl_json_str(&out[i], "error.code", code, sizeof(code));
        n503 += out[i].status == 503 && strcmp(code, "upstream_unavailable") == 0;
        n504 += out[i].status == 504 && strcmp(code, "upstream_timeout") == 0;
        tl_resp_free(&out[i]);
        free(bodies[i]);
    }
    CHECK(n503 + n504 == 5 && n503 >= 3, "the 5 calls cancelled at the deadline: %d 503, %d 504", n503, n504);
    CHECK(strstr(text_a, "upstream_unavailable") != NULL, "the query stream ends with its error event: %s", text_a);
    CHECK(strstr(text_b, "upstream_unavailable") != NULL && strstr(text_b, "data: [DONE]") != NULL,
          "the chat stream ends with its error event and [DONE]: %s", text_b);
    CHECK(usage_rows(id, "", 7, 10000) == 7, "a usage row for each of the 7 requests");
    CHECK(usage_rows(id, "AND status_code >= 500", 7, 1000) == 7, "each with its 5xx status");
    billed = usage_rows(id, "AND billed", 2, 1000);
    CHECK(billed == 2, "the two streams that delivered text are billed (%ld)", billed);
    CHECK(tl_quota_used(id) == billed, "the quota counter (%lld) is the billed rows (%ld): the rest refunded",
          tl_quota_used(id), billed);
    CHECK(tl_sf_locks(id) == 0, "no single-flight lock is left (%lld)", tl_sf_locks(id));
    CHECK(tl_count_files(spool, "quota-reservations-") == 0, "no reservation journal is left open (%d files)",
          tl_count_files(spool, "quota-reservations-"));
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 (and clean under the sanitizers)");
    for (int64_t end = aigw_now_ms() + 40000; tl_mock_stat(mock1, "in_flight") > 0 && aigw_now_ms() < end;)
        usleep(100 * 1000);
out:
    if (fd_a >= 0)
        close(fd_a);
    if (fd_b >= 0)
        close(fd_b);
    tl_mock_reset(mock1);
    free(text_a);
    free(text_b);
    free(spool);
    free(q);
    free(tok);
    free(cfg);
    free(patch);
}

/* A stream whose client reads nothing more cannot end: its call is
 * cancelled at the drain deadline, and its connection is still open when
 * the 5 s grace ends, so aigw closes it. The usage row says so (503
 * shutting_down): it said 499 client_closed, as if the client had left. */
static void
test_drain_grace_cut(void)
{
    char *cfg = drain_config(500), id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET")), *q = NULL;
    char *auth = NULL;
    struct tl_aigw gw;
    int fd = -1;

    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"tokens\":70,\"token_pad\":65536,\"token_latency_ms\":1,\"slots\":64}");
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    q = tl_sprintf("{\"question\":\"Which lens for the stream the drain cuts, %d?\",\"stream\":true}", (int)getpid());
    auth = tl_sprintf("%s\r\nIdempotency-Key: grace-cut", tok); /* one more header after Authorization */
    fd = tl_post_raw(gw.port, "/api/ai/query", auth, q, 4096);
    CHECK(fd >= 0 && tl_read_until(fd, "delta", 10000), "grace cut: the stream is under way");
    CHECK(tl_redis_int("EVAL %s 0 aigw:{%s}:idem:*", "return #redis.call('KEYS', ARGV[1])", id) == 1,
          "grace cut: the stream holds its pending idempotency record");
    /* from here the client reads nothing: 4.5 MB of answer fill every buffer on the way */
    tl_aigw_signal(&gw, SIGTERM);
    CHECK(tl_aigw_wait(&gw, 60000) == 0, "grace cut: exit 0 (%d)", gw.status);
    CHECK(tl_aigw_log_wait(&gw, "drain: closing 1 connections that did not finish", 0),
          "grace cut: the stream was still open when the grace ended");
    CHECK(usage_rows(id, "AND status_code = 503 AND error_code = 'shutting_down' AND NOT success AND billed", 1, 10000) ==
              1,
          "grace cut: the usage row is 503 shutting_down, billed for the text delivered");
    CHECK(usage_rows(id, "", 1, 1000) == 1, "grace cut: one usage row");
    CHECK(usage_rows(id, "AND status_code = 499", 0, 1000) == 0, "grace cut: not recorded as the client leaving (499)");
    /* the client saw no outcome: its retry with the same key runs, as after a client that left */
    CHECK(tl_redis_int("EVAL %s 0 aigw:{%s}:idem:*", "return #redis.call('KEYS', ARGV[1])", id) == 0,
          "grace cut: no idempotency record is left to replay the cut stream");
    {
        char *line = log_line(&gw, "ERROR_CODE=shutting_down");

        CHECK(line != NULL && strstr(line, "STATUS=503") != NULL, "grace cut: the access log says 503 shutting_down: %s",
              line ? line : "(none)");
        free(line);
    }
    CHECK(tl_aigw_stop(&gw) == 0, "grace cut: aigw exits 0 (and clean under the sanitizers)");
    for (int64_t end = aigw_now_ms() + 30000; tl_mock_stat(mock1, "in_flight") > 0 && aigw_now_ms() < end;)
        usleep(100 * 1000);
out:
    if (fd >= 0)
        close(fd);
    tl_mock_reset(mock1);
    free(q);
    free(auth);
    free(tok);
    free(cfg);
}

/* The outbox keeps retrying during a drain, once a second as always: a
 * refund (and a leader's publish) that Redis missed while a request ended
 * mid-drain is made as soon as Redis is back, not at the drain's end,
 * which a slow request may hold off for the whole drain_timeout_ms (the
 * publish releases the lock waiters on other instances wait for). */
static void
test_drain_outbox(void)
{
    char *cfg = tl_config_patch("{\"upstream\":{\"health_interval_ms\":60000,\"fail_threshold\":100,\"timeout_ms\":1500,"
                                "\"routes\":null,\"backends\":[{\"name\":\"mock1\",\"url\":\"${AIGW_MOCK_URL}\"}]},"
                                "\"tenants\":{\"cache_ttl_s\":3600},\"shutdown\":{\"drain_timeout_ms\":30000}}");
    char id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET")), *head;
    const char *body[1] = {"{\"question\":\"a refund while the drain goes on\"}"};
    struct tl_conn *mon[2];
    struct tl_parallel *bg;
    struct tl_resp rs[1], r;
    struct tl_aigw gw;
    long long used;
    int slow;

    tl_mock_reset(mock1);
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    for (int i = 0; i < 2; i++) {
        mon[i] = tl_conn_open(gw.port);
        tl_conn_get(mon[i], "/healthz", NULL, &r, NULL);
        tl_resp_free(&r);
    }
    tl_get(gw.port, "/api/ai/limits", tok, &r); /* the tenant cached */
    tl_resp_free(&r);
    used = tl_quota_used(id);
    /* a request whose body never completes holds the drain open */
    slow = connect_from(1, gw.port, false);
    head = tl_sprintf("POST /api/ai/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                      "Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"question\"",
                      tok);
    CHECK(slow >= 0 && write(slow, head, strlen(head)) == (ssize_t)strlen(head), "drain outbox: a slow upload");
    free(head);
    tl_mock_config(mock1, "{\"mode\":\"hang\"}");
    bg = tl_post_parallel_bg(gw.port, "/api/ai/query", tok, body, 1, rs);
    CHECK(tl_metric_wait(gw.port, "aigw_upstream_in_flight", 1, 10000) == 1, "drain outbox: a call at the model");
    CHECK(tl_quota_used(id) == used + 1, "drain outbox: its query reserved (%lld, was %lld)", tl_quota_used(id), used);
    tl_aigw_signal(&gw, SIGTERM);
    CHECK(tl_aigw_log_wait(&gw, "drain: listener closed", 10000), "drain outbox: the drain began");
    tl_stack("redis-stop");
    tl_parallel_join(bg);
    CHECK(rs[0].status == 504, "drain outbox: the call times out mid-drain: 504 (%ld)", rs[0].status);
    tl_resp_free(&rs[0]);
    tl_conn_get(mon[0], "/metrics", NULL, &r, NULL);
    CHECK(tl_metric_in(r.body, "aigw_redis_outbox_pending") >= 1, "drain outbox: its refund waits in the outbox (%g)",
          tl_metric_in(r.body, "aigw_redis_outbox_pending"));
    tl_resp_free(&r);
    tl_stack("redis-start");
    for (int i = 0; i < 200 && tl_quota_used(id) != used; i++)
        usleep(20 * 1000);
    CHECK(tl_quota_used(id) == used, "drain outbox: Redis back, the refund is made while the drain goes on (%lld, was %lld)",
          tl_quota_used(id), used);
    usleep(1500 * 1000);
    tl_conn_get(mon[1], "/metrics", NULL, &r, NULL);
    CHECK(tl_metric_in(r.body, "aigw_redis_outbox_pending") == 0 && tl_metric_in(r.body, "aigw_draining") == 1,
          "drain outbox: the outbox is empty, still draining (%g, %g)", tl_metric_in(r.body, "aigw_redis_outbox_pending"),
          tl_metric_in(r.body, "aigw_draining"));
    tl_resp_free(&r);
    if (slow >= 0)
        close(slow); /* the drain can end */
    CHECK(tl_aigw_wait(&gw, 30000) == 0, "drain outbox: exit 0 (%d)", gw.status);
    for (int i = 0; i < 2; i++)
        tl_conn_close(mon[i]);
    CHECK(tl_aigw_stop(&gw) == 0, "drain outbox: clean exit");
out:
    tl_mock_reset(mock1);
    free(tok);
    free(cfg);
}

/* A second signal cancels what is still in flight; a third one, right
 * behind it, ends the wait for their answers at once. The HTTP daemon must
 * not be stopped while a request is still suspended on the engine or on a
 * single-flight leader: libmicrohttpd 0.9.75 aborts the process then
 * ("MHD_stop_daemon() called while we have suspended connections"), and a
 * late resume would touch a freed connection. Both cancellations used to
 * be asynchronous, so the third signal raced them. calls distinct
 * questions wait on the model (hung), waiters more on one leader; with
 * redis_stalled Redis is paused before the last two signals, so the
 * single-flight poller is inside a round trip when it is cancelled. */
static void
drain_signals(int calls, int waiters, bool redis_stalled)
{
    int n = calls + 1 + waiters;
    char *patch = tl_sprintf("{\"upstream\":{\"health_interval_ms\":200,\"fail_threshold\":100,\"timeout_ms\":60000,"
                             "\"queue_size\":1000,\"routes\":null,\"backends\":[{\"name\":\"mock1\","
                             "\"url\":\"${AIGW_MOCK_URL}\",\"slots\":%d,\"max_connections\":%d}]},"
                             "\"shutdown\":{\"drain_timeout_ms\":60000}}",
                             calls + 1, calls + 1);
    char *cfg = tl_config_patch(patch), id[37], *tok = busy_tenant(id, "dev", tl_env("AIGW_JWT_SECRET"));
    char **bodies = calloc((size_t)n, sizeof(*bodies));
    struct tl_resp *out = calloc((size_t)n, sizeof(*out));
    struct tl_parallel *bg;
    struct tl_aigw gw;
    int status;

    tl_mock_reset(mock1);
    tl_mock_config(mock1, "{\"mode\":\"hang\",\"slots\":1000}");
    if (tl_aigw_start(&gw, cfg) != 0) {
        CHECK(false, "aigw did not start");
        goto out;
    }
    for (int i = 0; i < n; i++)
        bodies[i] = i < calls ? tl_sprintf("{\"question\":\"Which lens for signal case %d of %d?\"}", i, (int)getpid())
                              : tl_sprintf("{\"question\":\"Which lens for the shared signal case of %d?\"}",
                                           (int)getpid());
    bg = tl_post_parallel_bg(gw.port, "/api/ai/query", tok, (const char *const *)bodies, n, out);
    CHECK(tl_metric_wait(gw.port, "aigw_upstream_in_flight", calls + 1, 20000) == calls + 1,
          "%d calls in flight upstream", calls + 1);
    CHECK(tl_metric_wait(gw.port, "aigw_requests_in_flight", n + 1, 20000) == n + 1,
          "%d requests in flight (the scrape included)", n + 1);
    tl_aigw_signal(&gw, SIGTERM);
    CHECK(tl_aigw_log_wait(&gw, "drain: listener closed", 10000), "the drain began");
    if (redis_stalled) {
        tl_redis_int("CLIENT PAUSE 1500 ALL");
        usleep(50 * 1000); /* the poller's next round (every 20 ms) is stuck in Redis now */
    }
    /* two different signals stay pending together: the drain takes one as
     * "cancel now" and the other as "stop waiting" at once */
    tl_aigw_signal(&gw, SIGINT);
    tl_aigw_signal(&gw, SIGTERM);
    status = tl_aigw_wait(&gw, 60000);
    CHECK(status == 0, "exit 0 after three signals (%d calls, %d waiters%s): %d", calls, waiters,
          redis_stalled ? ", Redis stalled" : "", status);
    tl_parallel_join(bg);
    for (int i = 0; i < n; i++) {
        tl_resp_free(&out[i]);
        free(bodies[i]);
    }
    CHECK(tl_aigw_stop(&gw) == 0, "aigw exits 0 (and clean under the sanitizers)");
    if (redis_stalled)
        usleep(1500 * 1000); /* the pause ends before the next test */
out:
    tl_mock_reset(mock1);
    free(bodies);
    free(out);
    free(tok);
    free(cfg);
    free(patch);
}

static void
test_drain_signals(void)
{
    for (int i = 0; i < 3; i++) /* a race: each round used to abort about two times in three */
        drain_signals(200, 40, false);
    drain_signals(0, 40, true);
}

int
main(void)
{
    owner = tl_pg_owner();
    mock1 = tl_env("AIGW_MOCK_URL");
    mock2 = tl_env("AIGW_MOCK2_URL");
    srand((unsigned)getpid());
    test_notify_and_watchdog();
    test_connection_limits();
    test_nofile_limit();
    test_early_sighup();
    test_ready_waits_for_redis();
    test_ready_waits_for_frozen_redis();
    test_frozen_redis_serving();
    test_ready_pg_frozen();
    test_pg_frozen_serving();
    test_redis_auth();
    test_redis_setup_refused();
    test_reloads();
    test_reload_mid_stream();
    test_reload_stream_idle();
    test_drain();
    test_drain_deadline();
    test_drain_kinds();
    test_drain_grace_cut();
    test_drain_outbox();
    test_drain_signals();
    PQfinish(owner);
    return tl_done();
}
