/* testlib_ops.c - test helpers for the operations tests: requests in the
 * background, a fake systemd notify socket, /metrics samples */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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
