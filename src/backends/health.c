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

struct aigw_health {
    const struct aigw_config *cfg;
    pthread_t thread;
    pthread_mutex_t lock;  /* guards stop (with wake) */
    pthread_cond_t wake;
    bool stop;
    atomic_bool up[AIGW_MAX_BACKENDS];
};

static size_t
discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    (void)ptr;
    (void)ud;
    return size * nmemb;
}

static bool
probe(CURL *curl, const char *base)
{
    char url[1024];
    long code = 0;
    size_t n = strlen(base);

    while (n > 0 && base[n - 1] == '/')
        n--;
    snprintf(url, sizeof(url), "%.*s/health", (int)n, base);
    curl_easy_setopt(curl, CURLOPT_URL, url);
    if (curl_easy_perform(curl) != CURLE_OK)
        return false;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    return code == 200;
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

        for (size_t i = 0; i < h->cfg->n_backends; i++) {
            bool ok = probe(curl, h->cfg->backends[i].url);
            bool was = atomic_exchange(&h->up[i], ok);

            if (ok != was)
                aigw_log(ok ? LOG_NOTICE : LOG_WARNING, "upstream: backend %s is %s", h->cfg->backends[i].name,
                         ok ? "up" : "down");
        }
        aigw_deadline_ms(&until, h->cfg->health_interval_ms);
        pthread_mutex_lock(&h->lock);
        while (!h->stop && pthread_cond_timedwait(&h->wake, &h->lock, &until) == 0)
            ;
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

    h->cfg = cfg;
    pthread_mutex_init(&h->lock, NULL);
    pthread_cond_init(&h->wake, NULL);
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
    pthread_cond_destroy(&h->wake);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

bool
aigw_health_up(const struct aigw_health *h, size_t idx)
{
    return idx < AIGW_MAX_BACKENDS && atomic_load(&h->up[idx]);
}

size_t
aigw_health_up_count(const struct aigw_health *h)
{
    size_t n = 0;

    for (size_t i = 0; i < h->cfg->n_backends; i++)
        n += atomic_load(&h->up[i]);
    return n;
}
