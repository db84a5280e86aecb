/* health.c - one prober thread; results published as atomics */
#include "aigw/health.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aigw/log.h"
#include "aigw/util.h"

/* One probed slot. gen changes whenever the slot gets another backend, so a
 * probe that started before a reconfigure cannot publish into the new one. */
struct target {
    char name[64];
    char *url;             /* NULL: not probed */
    unsigned gen;
    int misses;            /* probes in a row that got no answer at all */
};

/* What a probe got: 200; another status (llama-server's 503 "Loading
 * model", say: the backend says it cannot serve) or a refused connection
 * (nothing listens); or no answer within the probe's timeout. */
enum probe_result { PROBE_OK, PROBE_REFUSED, PROBE_NO_ANSWER };

/* An up backend goes down on a refusal at once, but only on the second
 * probe in a row without any answer: a llama-server busy with a long
 * prompt can miss one (builds of 2024 ran /health through the task queue),
 * and one missed probe took every call of a single-backend group down. */
#define MISSES_DOWN 2

struct aigw_health {
    pthread_t thread;
    pthread_mutex_t lock;  /* guards stop, kick, targets, n and interval_ms (with wake) */
    pthread_cond_t wake;
    bool stop;
    bool kick;             /* probe again at once (after a reconfigure) */
    struct target targets[AIGW_MAX_BACKENDS];
    size_t n;
    int interval_ms;
    atomic_bool up[AIGW_MAX_BACKENDS];
    atomic_bool probed[AIGW_MAX_BACKENDS]; /* up[] holds a verdict on the slot's backend (set after up[]) */
};

static size_t
discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    (void)ptr;
    (void)ud;
    return size * nmemb;
}

static enum probe_result
probe(CURL *curl, const char *base)
{
    char url[AIGW_MAX_BACKEND_URL + sizeof("/health")]; /* config.c refuses longer base URLs */
    long code = 0;
    size_t n = strlen(base);

    while (n > 0 && base[n - 1] == '/')
        n--;
    snprintf(url, sizeof(url), "%.*s/health", (int)n, base);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    switch (curl_easy_perform(curl)) {
    case CURLE_OK:
        break;
    case CURLE_COULDNT_CONNECT: /* nothing listens: the server is gone, not busy */
    case CURLE_COULDNT_RESOLVE_HOST:
        return PROBE_REFUSED;
    default:
        return PROBE_NO_ANSWER;
    }
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    return code == 200 ? PROBE_OK : PROBE_REFUSED;
}

/* Probe slot i without holding the lock; publish only if the slot still
 * holds the same backend. Returns false when i is past the last slot. */
static bool
probe_slot(struct aigw_health *h, CURL *curl, size_t i)
{
    char name[64], *url;
    unsigned gen;
    enum probe_result res;
    bool ok, was;

    pthread_mutex_lock(&h->lock);
    if (i >= h->n) {
        pthread_mutex_unlock(&h->lock);
        return false;
    }
    url = h->targets[i].url != NULL ? aigw_xstrdup(h->targets[i].url) : NULL;
    gen = h->targets[i].gen;
    memcpy(name, h->targets[i].name, sizeof(name));
    pthread_mutex_unlock(&h->lock);
    if (url == NULL)
        return true;
    res = probe(curl, url);
    free(url);
    pthread_mutex_lock(&h->lock);
    ok = was = res == PROBE_OK;
    if (h->targets[i].gen == gen) {
        struct target *t = &h->targets[i];

        t->misses = res == PROBE_NO_ANSWER ? t->misses + 1 : 0;
        if (res == PROBE_NO_ANSWER && t->misses < MISSES_DOWN && atomic_load(&h->up[i]))
            ok = true; /* one miss: stays up */
        was = atomic_exchange(&h->up[i], ok);
        atomic_store(&h->probed[i], true); /* after up[]: see aigw_health_probed */
    }
    pthread_mutex_unlock(&h->lock);
    if (ok != was)
        aigw_log(ok ? LOG_NOTICE : LOG_WARNING, "upstream: backend %s is %s", name, ok ? "up" : "down");
    return true;
}

static void *
run(void *arg)
{
    struct aigw_health *h = arg;
    CURL *curl = curl_easy_init();

    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, 500L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(curl, CURLOPT_FORBID_REUSE, 1L); /* never pin an llama-server HTTP thread */
    for (;;) {
        struct timespec until;

        for (size_t i = 0; probe_slot(h, curl, i); i++)
            ;
        pthread_mutex_lock(&h->lock);
        aigw_deadline_ms(&until, h->interval_ms);
        while (!h->stop && !h->kick && pthread_cond_timedwait(&h->wake, &h->lock, &until) == 0)
            ;
        h->kick = false;
        if (h->stop) {
            pthread_mutex_unlock(&h->lock);
            break;
        }
        pthread_mutex_unlock(&h->lock);
    }
    curl_easy_cleanup(curl);
    return NULL;
}

struct aigw_health *
aigw_health_start(const struct aigw_config *cfg)
{
    struct aigw_health *h = aigw_xcalloc(1, sizeof(*h));

    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
    aigw_health_reconfigure(h, cfg);
    if (pthread_create(&h->thread, NULL, run, h) != 0)
        abort();
    return h;
}

void
aigw_health_stop(struct aigw_health *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
    pthread_join(h->thread, NULL);
    for (size_t i = 0; i < AIGW_MAX_BACKENDS; i++)
        free(h->targets[i].url);
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

static bool
same_target(const struct target *t, const struct aigw_backend_cfg *b)
{
    if (b == NULL || b->url == NULL)
        return t->url == NULL;
    return t->url != NULL && strcmp(t->url, b->url) == 0 && strcmp(t->name, b->name) == 0;
}

void
aigw_health_reconfigure(struct aigw_health *h, const struct aigw_config *cfg)
{
    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < AIGW_MAX_BACKENDS; i++) {
        const struct aigw_backend_cfg *b = i < cfg->n_backends ? &cfg->backends[i] : NULL;
        struct target *t = &h->targets[i];

        if (same_target(t, b))
            continue;
        free(t->url);
        t->url = b != NULL && b->url != NULL ? aigw_xstrdup(b->url) : NULL;
        snprintf(t->name, sizeof(t->name), "%s", b != NULL ? b->name : "");
        t->gen++;
        t->misses = 0;
        atomic_store(&h->probed[i], t->url == NULL); /* a slot without a URL is down, no probe needed */
        atomic_store(&h->up[i], false);
    }
    h->n = cfg->n_backends;
    h->interval_ms = cfg->health_interval_ms;
    h->kick = true;
    pthread_cond_signal(&h->wake);
    pthread_mutex_unlock(&h->lock);
}

bool
aigw_health_up(const struct aigw_health *h, size_t idx)
{
    return idx < AIGW_MAX_BACKENDS && atomic_load(&h->up[idx]);
}

bool
aigw_health_probed(const struct aigw_health *h, size_t idx)
{
    return idx >= AIGW_MAX_BACKENDS || atomic_load(&h->probed[idx]);
}

size_t
aigw_health_list(struct aigw_health *h, struct aigw_health_backend *out, size_t cap)
{
    size_t k = 0;

    pthread_mutex_lock(&h->lock);
    for (size_t i = 0; i < h->n && k < cap; i++) {
        if (h->targets[i].url == NULL)
            continue;
        memcpy(out[k].name, h->targets[i].name, sizeof(out[k].name));
        out[k].up = atomic_load(&h->up[i]);
        k++;
    }
    pthread_mutex_unlock(&h->lock);
    return k;
}

size_t
aigw_health_count(struct aigw_health *h)
{
    struct aigw_health_backend list[AIGW_MAX_BACKENDS];

    return aigw_health_list(h, list, AIGW_MAX_BACKENDS);
}

size_t
aigw_health_up_count(struct aigw_health *h)
{
    struct aigw_health_backend list[AIGW_MAX_BACKENDS];
    size_t n = aigw_health_list(h, list, AIGW_MAX_BACKENDS), up = 0;

    for (size_t i = 0; i < n; i++)
        up += list[i].up;
    return up;
}
