/* platform - what this machine charges for the two things aigw's hot paths
 * are made of: entering the kernel, and handing work to another thread.
 * A gateway request is mostly small syscalls (recv, send, one Redis round
 * trip, one spool write) and a few thread hand-offs (MHD worker -> upstream
 * engine -> MHD worker), so these two numbers bound what any design can
 * reach here; bench/run.sh prints them beside the scenarios.
 *
 *   platform [-n ROUNDS]
 *
 * Prints one JSON object:
 *   syscall_us         getppid(2), the cheapest real syscall
 *   pipe_rw_us         a 1-byte write + read on a unix socket pair (one thread)
 *   thread_rtt_us      ping-pong between two threads over eventfds: two
 *                      wake-ups of a sleeping thread (median of 5 batches)
 *   idle_wake_us_p50   a thread asleep for 2 ms (the machine otherwise idle,
 *   idle_wake_us_p99   as between two requests at low load) woken through
 *                      an eventfd: from the write to the woken thread
 *                      running (IDLE_WAKES samples)
 * The first three are means over ROUNDS (default 20000) calls. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "aigw/util.h"

#define IDLE_WAKES 300

struct pair {
    int ping, pong;
};

/* The idle wake-up probe: the waker stamps sent_us just before its write. */
struct idle {
    int fd;
    _Atomic double sent_us;
    double lat_us[IDLE_WAKES];
    int n;
};

/* aigw's own monotonic clock, in microseconds as a double */
static double
now_us(void)
{
    return (double)aigw_now_us();
}

static void *
echo(void *arg)
{
    const struct pair *p = arg;
    uint64_t v;

    while (read(p->ping, &v, sizeof(v)) == (ssize_t)sizeof(v))
        if (v == UINT64_MAX - 1 || write(p->pong, &v, sizeof(v)) != (ssize_t)sizeof(v))
            break;
    return NULL;
}

static void *
idle_waiter(void *arg)
{
    struct idle *w = arg;
    uint64_t v;

    /* two writes can meet in one read when this thread is late: the last
     * write (UINT64_MAX - 1, added to whatever is pending) ends the loop */
    while (read(w->fd, &v, sizeof(v)) == (ssize_t)sizeof(v) && v < UINT64_MAX / 2)
        if (w->n < IDLE_WAKES)
            w->lat_us[w->n++] = now_us() - atomic_load(&w->sent_us);
    return NULL;
}

/* Up to IDLE_WAKES wake-ups of a thread that slept 2 ms into w->lat_us
 * (w->n of them). */
static int
idle_wakes(struct idle *w)
{
    struct timespec gap = {0, 2000000};
    pthread_t t;
    uint64_t v = 1;

    w->n = 0;
    if ((w->fd = eventfd(0, EFD_CLOEXEC)) < 0 || pthread_create(&t, NULL, idle_waiter, w) != 0)
        return -1;
    for (int i = 0; i < IDLE_WAKES; i++) {
        nanosleep(&gap, NULL);
        atomic_store(&w->sent_us, now_us());
        if (write(w->fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
            return -1;
    }
    v = UINT64_MAX - 1;
    if (write(w->fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
        return -1;
    pthread_join(t, NULL);
    close(w->fd);
    return 0;
}

static int
cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

int
main(int argc, char **argv)
{
    int n, sv[2], opt;
    long rounds = 20000;
    struct pair p;
    pthread_t t;
    double t0, syscall_us, pipe_us, rtt[5];
    static struct idle w;
    uint64_t v;
    char c = 0;

    while ((opt = getopt(argc, argv, "n:")) != -1) {
        if (opt != 'n' || !aigw_parse_long(optarg, 1, 1000000000, &rounds)) {
            fprintf(stderr, "usage: platform [-n ROUNDS]\n");
            return 2;
        }
    }
    n = (int)rounds;
    t0 = now_us();
    for (int i = 0; i < n; i++)
        (void)getppid();
    syscall_us = (now_us() - t0) / n;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return 1;
    t0 = now_us();
    for (int i = 0; i < n; i++)
        if (write(sv[0], &c, 1) != 1 || read(sv[1], &c, 1) != 1)
            return 1;
    pipe_us = (now_us() - t0) / n;
    close(sv[0]);
    close(sv[1]);

    p.ping = eventfd(0, EFD_CLOEXEC);
    p.pong = eventfd(0, EFD_CLOEXEC);
    if (p.ping < 0 || p.pong < 0 || pthread_create(&t, NULL, echo, &p) != 0)
        return 1;
    for (int b = 0; b < 5; b++) {
        t0 = now_us();
        for (int i = 0; i < n / 5; i++) {
            v = 1;
            if (write(p.ping, &v, sizeof(v)) != (ssize_t)sizeof(v) || read(p.pong, &v, sizeof(v)) != (ssize_t)sizeof(v))
                return 1;
        }
        rtt[b] = (now_us() - t0) / (n / 5 > 0 ? n / 5 : 1);
    }
    v = UINT64_MAX - 1; /* tells echo to stop */
    if (write(p.ping, &v, sizeof(v)) != (ssize_t)sizeof(v))
        return 1;
    pthread_join(t, NULL);
    close(p.ping);
    close(p.pong);
    qsort(rtt, 5, sizeof(rtt[0]), cmp);
    if (idle_wakes(&w) != 0 || w.n == 0)
        return 1;
    qsort(w.lat_us, (size_t)w.n, sizeof(w.lat_us[0]), cmp);
    printf("{\"syscall_us\": %.2f, \"pipe_rw_us\": %.2f, \"thread_rtt_us\": %.1f, \"idle_wake_us_p50\": %.1f, "
           "\"idle_wake_us_p99\": %.1f}\n",
           syscall_us, pipe_us, rtt[2], w.lat_us[w.n / 2], w.lat_us[w.n * 99 / 100]);
    return 0;
}
