/* testlib_ops.c - test helpers for the operations tests: requests in the
 * background, a fake systemd notify socket, /metrics samples, PgBouncer in
 * front of the stack's PostgreSQL */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "aigw/util.h"
#include "testlib.h"

/* ---- background requests ---- */

struct tl_parallel {
    pthread_t thread;
    int port, n;
    const char *path, *token;
    const char *const *bodies;
    struct tl_resp *out;
};

static void *
parallel_main(void *arg)
{
    struct tl_parallel *p = arg;

    tl_post_parallel(p->port, p->path, p->token, NULL, p->bodies, p->n, p->out);
    return NULL;
}

struct tl_parallel *
tl_post_parallel_bg(int port, const char *path, const char *token, const char *const *bodies, int n,
                    struct tl_resp *out)
{
    struct tl_parallel *p = calloc(1, sizeof(*p));

    *p = (struct tl_parallel){.port = port, .n = n, .path = path, .token = token, .bodies = bodies, .out = out};
    if (pthread_create(&p->thread, NULL, parallel_main, p) != 0)
        abort();
    return p;
}

void
tl_parallel_join(struct tl_parallel *p)
{
    pthread_join(p->thread, NULL);
    free(p);
}

bool
tl_port_refuses(int port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool refused = connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno == ECONNREFUSED;

    close(fd);
    return refused;
}

/* ---- sd_notify ---- */

int
tl_notify_open(char *path, size_t cap)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    socklen_t len;

    /* abstract namespace ("@name" in NOTIFY_SOCKET): nothing to unlink */
    snprintf(path, cap, "@aigw-notify-%d-%d", (int)getpid(), rand());
    snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "%s", path + 1);
    len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) != 0) {
        fprintf(stderr, "cannot bind the notify socket %s\n", path);
        exit(1);
    }
    return fd;
}

int
tl_notify_next(int fd, char *buf, size_t cap, int timeout_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    ssize_t n;

    if (poll(&p, 1, timeout_ms) <= 0)
        return -1;
    n = recv(fd, buf, cap - 1, 0);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return (int)n;
}

/* Whether the datagram text has line as one of its lines. */
static bool
has_line(const char *text, const char *line)
{
    size_t n = strlen(line);

    for (const char *p = text; p != NULL; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == '\0'))
            return true;
    return false;
}

bool
tl_notify_wait(int fd, const char *line, int timeout_ms)
{
    char buf[4096];
    int64_t end = aigw_now_ms() + timeout_ms;

    for (;;) {
        int64_t left = end - aigw_now_ms();

        if (left <= 0 || tl_notify_next(fd, buf, sizeof(buf), (int)left) < 0)
            return false;
        if (has_line(buf, line))
            return true;
    }
}

int
tl_notify_count(int fd, const char *line, int window_ms)
{
    char buf[4096];
    int64_t end = aigw_now_ms() + window_ms;
    int n = 0;

    for (;;) {
        int64_t left = end - aigw_now_ms();

        if (left <= 0 || tl_notify_next(fd, buf, sizeof(buf), (int)left) < 0)
            return n;
        n += has_line(buf, line);
    }
}

/* ---- /metrics ---- */

double
tl_metric_in(const char *text, const char *series)
{
    size_t n = strlen(series);

    for (const char *p = text; p != NULL; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

double
tl_metric(int port, const char *series)
{
    struct tl_resp r;
    double v = -1;

    if (tl_get(port, "/metrics", NULL, &r) == 0 && r.status == 200)
        v = tl_metric_in(r.body, series);
    tl_resp_free(&r);
    return v;
}

double
tl_metric_wait(int port, const char *series, double want, int timeout_ms)
{
    double v = -1;

    for (int waited = 0; waited <= timeout_ms; waited += 20) {
        v = tl_metric(port, series);
        if (v == want)
            break;
        usleep(20 * 1000);
    }
    return v;
}

bool
tl_usage_flushed(int port)
{
    return tl_metric_wait(port, "aigw_usage_backlog_rows", 0, 10000) == 0;
}

/* ---- PgBouncer ---- */

#define PGBOUNCER "/usr/sbin/pgbouncer"

int
tl_pgbouncer_start(const char *dir, int pool_size)
{
    PGconn *owner, *c = NULL;
    char *ini, *users, *cmd, *url, *text, *sock, *as_user = NULL;
    int port = tl_free_port();
    struct stat sb;

    if (access(PGBOUNCER, X_OK) != 0) {
        CHECK(false, "%s is installed (scripts/install-deps.sh)", PGBOUNCER);
        return 0;
    }
    owner = tl_pg_owner();
    /* PgBouncer refuses to run as root, and the stack's PostgreSQL admits
     * no one but its own OS user and root (devstack: unix socket only, mode
     * 0700), so as root PgBouncer runs as the socket's owner, without that
     * user's supplementary groups, and dir becomes that user's */
    sock = tl_sprintf("%s/.s.PGSQL.%s", PQhost(owner), PQport(owner));
    if (getuid() == 0) {
        if (stat(sock, &sb) != 0 || sb.st_uid == 0 || chown(dir, sb.st_uid, sb.st_gid) != 0) {
            CHECK(false, "a non-root owner of %s to run pgbouncer as", sock);
            PQfinish(owner);
            free(sock);
            return 0;
        }
        as_user = tl_sprintf("setpriv --reuid=%u --regid=%u --clear-groups --", (unsigned)sb.st_uid,
                             (unsigned)sb.st_gid);
    }
    free(sock);
    users = tl_sprintf("%s/users.txt", dir);
    tl_write_file(users, "\"aigw_app\" \"\"\n");
    ini = tl_sprintf("%s/pgbouncer.ini", dir);
    text = tl_sprintf("[databases]\naigw = host=%s port=%s dbname=aigw\n"
                      "[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %d\nunix_socket_dir =\n"
                      "auth_type = trust\nauth_file = %s\npool_mode = transaction\n"
                      "server_round_robin = 1\ndefault_pool_size = %d\nmax_client_conn = 100\n"
                      "ignore_startup_parameters = extra_float_digits,options\n"
                      "logfile = %s/pgbouncer.log\npidfile = %s/pgbouncer.pid\n",
                      PQhost(owner), PQport(owner), port, users, pool_size, dir, dir);
    PQfinish(owner);
    tl_write_file(ini, text);
    cmd = tl_sprintf("%s %s -d %s", as_user != NULL ? as_user : "", PGBOUNCER, ini);
    CHECK(system(cmd) == 0, "pgbouncer starts: %s", cmd);
    url = tl_sprintf("postgresql://aigw_app@127.0.0.1:%d/aigw", port);
    for (int i = 0; i < 50; i++) {
        c = PQconnectdb(url);
        if (PQstatus(c) == CONNECTION_OK)
            break;
        PQfinish(c);
        c = NULL;
        usleep(100 * 1000);
    }
    if (c == NULL)
        port = 0;
    PQfinish(c);
    CHECK(port != 0, "pgbouncer answers on 127.0.0.1");
    free(url);
    free(cmd);
    free(as_user);
    free(text);
    free(ini);
    free(users);
    return port;
}

void
tl_pgbouncer_stop(const char *dir)
{
    char *pidfile = tl_sprintf("%s/pgbouncer.pid", dir);
    FILE *f = fopen(pidfile, "r");
    long pid = 0;

    if (f != NULL && fscanf(f, "%ld", &pid) == 1 && pid > 1) {
        kill((pid_t)pid, SIGTERM);
        for (int i = 0; i < 50 && kill((pid_t)pid, 0) == 0; i++)
            usleep(100 * 1000);
    }
    if (f != NULL)
        fclose(f);
    free(pidfile);
}

/* ---- the test stack ---- */

bool
tl_stack(const char *cmd)
{
    char *c = tl_sprintf("bash %s/scripts/devstack.sh --name %s %s >/dev/null 2>&1", AIGW_SOURCE_DIR,
                         tl_env("AIGW_STACK_NAME"), cmd);
    bool ok = system(c) == 0;

    CHECK(ok, "devstack %s", cmd);
    free(c);
    return ok;
}

/* ---- raw streams ---- */

int
tl_post_raw(int port, const char *path, const char *token, const char *body, int rcvbuf)
{
    struct sockaddr_in a;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    char *req = tl_sprintf("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
                           "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                           path, token, strlen(body), body);

    if (fd >= 0 && rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
                    write(fd, req, strlen(req)) != (ssize_t)strlen(req))) {
        close(fd);
        fd = -1;
    }
    free(req);
    return fd;
}

int
tl_stream_open(int port, const char *token, const char *question, int rcvbuf)
{
    char *body = tl_sprintf("{\"question\":\"%s\",\"stream\":true}", question);
    int fd = tl_post_raw(port, "/api/ai/query", token, body, rcvbuf);

    free(body);
    return fd;
}

bool
tl_read_until(int fd, const char *needle, int timeout_ms)
{
    static char acc[65536];
    size_t n = 0, keep = strlen(needle) > 0 ? strlen(needle) - 1 : 0;
    int64_t end = aigw_now_ms() + timeout_ms;
    struct timeval tv = {0, 100000};

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    while (aigw_now_ms() < end) {
        ssize_t k;

        if (n == sizeof(acc) - 1) { /* full: keep only the tail a needle may start in */
            memmove(acc, acc + n - keep, keep);
            n = keep;
        }
        k = read(fd, acc + n, sizeof(acc) - 1 - n);
        if (k > 0) {
            n += (size_t)k;
            acc[n] = '\0';
            if (strstr(acc, needle) != NULL)
                return true;
        } else if (k == 0) {
            break;
        }
    }
    return false;
}
