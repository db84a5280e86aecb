/* watchdog.c - WATCHDOG=1 only while a loopback request is served and no thread is wedged */
#include "aigw/watchdog.h"

#include <curl/curl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>

#include "aigw/http.h"
#include "aigw/log.h"
#include "aigw/server.h"
#include "aigw/upstream.h"
#include "aigw/util.h"

/* A callback or engine round this long is a wedge, never slow work: the
 * longest legitimate callback waits for a PostgreSQL pool slot and then a
 * statement (3 s + 5 s). */
#define MIN_STALL_MS 10000

struct aigw_watchdog {
    struct aigw_server *srv;
    CURL *curl;                /* the self-check client; a fresh connection each time */
    char url[128];             /* http://<loopback or listen address>:<port>/healthz */
    int64_t interval_us;       /* WATCHDOG_USEC / 2 */
    int64_t stall_ms;          /* max(MIN_STALL_MS, WATCHDOG_USEC / 2) */
    int64_t due_us;            /* monotonic us of the next ping */
};

static size_t
discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    (void)ptr;
    (void)ud;
    return size * nmemb;
}

/* The address to reach our own listener: a wildcard bind is reached on loopback. */
static void
self_url(const struct aigw_server *srv, char *url, size_t cap)
{
    const char *a = srv->cfg.listen_addr;

    if (strcmp(a, "0.0.0.0") == 0)
        a = "127.0.0.1";
    else if (strcmp(a, "::") == 0)
        a = "::1";
    if (strchr(a, ':') != NULL)
        snprintf(url, cap, "http://[%s]:%u/healthz", a, srv->bound_port);
    else
        snprintf(url, cap, "http://%s:%u/healthz", a, srv->bound_port);
}

struct aigw_watchdog *
aigw_watchdog_create(struct aigw_server *srv)
{
    struct aigw_watchdog *w;
    uint64_t usec = 0;
    long timeout_ms;

    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return NULL;
    w = aigw_xcalloc(1, sizeof(*w));
    w->srv = srv;
    w->interval_us = (int64_t)(usec / 2);
    w->stall_ms = (int64_t)(usec / 2000) > MIN_STALL_MS ? (int64_t)(usec / 2000) : MIN_STALL_MS;
    w->due_us = aigw_now_us();
    self_url(srv, w->url, sizeof(w->url));
    timeout_ms = (long)(usec / 4000);
    timeout_ms = timeout_ms < 200 ? 200 : timeout_ms > 5000 ? 5000 : timeout_ms;
    w->curl = curl_easy_init();
    if (w->curl == NULL)
        abort();
    curl_easy_setopt(w->curl, CURLOPT_URL, w->url);
    curl_easy_setopt(w->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(w->curl, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(w->curl, CURLOPT_FORBID_REUSE, 1L); /* every check goes through accept() */
    curl_easy_setopt(w->curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(w->curl, CURLOPT_PROXY, "");
    aigw_log(LOG_NOTICE, "watchdog: pinging every %lld ms while %s answers", (long long)(w->interval_us / 1000),
             w->url);
    return w;
}

void
aigw_watchdog_destroy(struct aigw_watchdog *w)
{
    if (w == NULL)
        return;
    curl_easy_cleanup(w->curl);
    free(w);
}

int
aigw_watchdog_due_in_ms(const struct aigw_watchdog *w)
{
    int64_t left;

    if (w == NULL)
        return -1;
    left = w->due_us - aigw_now_us();
    return left <= 0 ? 0 : (int)((left + 999) / 1000);
}

static bool
self_check(struct aigw_watchdog *w)
{
    long code = 0;

    if (curl_easy_perform(w->curl) != CURLE_OK)
        return false;
    curl_easy_getinfo(w->curl, CURLINFO_RESPONSE_CODE, &code);
    return code == 200;
}

bool
aigw_watchdog_healthy(struct aigw_watchdog *w, const char **why)
{
    struct aigw_server *srv = w->srv;

    *why = NULL;
    if (aigw_http_busy_ms(srv) >= w->stall_ms)
        *why = "an HTTP worker is stuck inside a request callback";
    else if (srv->upstream != NULL && aigw_upstream_stalled_ms(srv->upstream) >= w->stall_ms)
        *why = "the upstream engine loop is stuck";
    else if (!atomic_load(&srv->stopping) && !self_check(w))
        *why = "GET /healthz on the listening socket was not answered in time";
    return *why == NULL;
}

void
aigw_watchdog_tick(struct aigw_watchdog *w)
{
    const char *why;

    if (w == NULL || aigw_now_us() < w->due_us)
        return;
    if (aigw_watchdog_healthy(w, &why))
        sd_notify(0, "WATCHDOG=1");
    else
        aigw_log(LOG_ERR, "watchdog: not pinging systemd: %s", why);
    w->due_us = aigw_now_us() + w->interval_us;
}
