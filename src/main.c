/* main.c - process lifecycle: arguments, config, dependencies, threads, signals */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "aigw/apikey.h"
#include "aigw/apikey_usage.h"
#include "aigw/health.h"
#include "aigw/http.h"
#include "aigw/jwt.h"
#include "aigw/listener.h"
#include "aigw/log.h"
#include "aigw/metrics.h"
#include "aigw/pg.h"
#include "aigw/quota.h"
#include "aigw/redis.h"
#include "aigw/server.h"
#include "aigw/singleflight.h"
#include "aigw/stages.h"
#include "aigw/upstream.h"
#include "aigw/usage.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

static void
usage(FILE *f)
{
    fprintf(f, "usage: aigw [-c CONFIG] [--check-config] [--version]\n"
               "  -c, --config PATH   configuration file (default /etc/aigw/aigw.json)\n"
               "      --check-config  validate the configuration and exit (0 = valid)\n"
               "  -V, --version       print the version and exit\n"
               "Environment overrides: AIGW_DATABASE_URL, AIGW_REDIS_URL, AIGW_LISTEN_ADDR,\n"
               "AIGW_PORT, AIGW_LOG_LEVEL; \"${VAR}\" in config strings expands from the environment.\n");
}

static void
raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Log (never fail) when a dependency is down at start: /readyz reports it
 * and the pools reconnect on their own. */
static void
check_dependencies(struct aigw_server *srv)
{
    PGconn *pg = aigw_pg_acquire(srv->pg, 3000);
    redisContext *rc = aigw_redis_acquire(srv->redis);

    if (pg == NULL)
        aigw_log(LOG_WARNING, "startup: PostgreSQL is not reachable yet");
    if (rc == NULL)
        aigw_log(LOG_WARNING, "startup: Redis is not reachable yet");
    aigw_pg_release(srv->pg, pg);
    aigw_redis_release(srv->redis, rc);
}

/* SIGHUP: validate the file again; apply the log level and drop cached
 * tenants. Keys, backends and listeners are fixed for the process life. */
static void
reload(struct aigw_server *srv, const char *config_path)
{
    struct aigw_config next;
    char err[512];

    if (aigw_config_load(config_path, &next, err, sizeof(err)) != 0) {
        aigw_log(LOG_ERR, "reload refused, keeping the running configuration: %s", err);
        return;
    }
    aigw_log_set_level(next.log_level);
    aigw_tenant_cache_invalidate(srv->tenants, "*");
    aigw_apikey_cache_invalidate(srv->api_keys, "*");
    aigw_jwt_cache_clear(srv->tokens);
    aigw_config_free(&next);
    aigw_log(LOG_NOTICE, "reload: log level applied, tenant and API key caches flushed");
}

static int
serve(struct aigw_server *srv, const char *config_path)
{
    sigset_t set;
    int sig = 0;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    /* block before any thread starts so only sigwait below sees them */
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    srv->tenants = aigw_tenant_cache_create(srv->cfg.tenant_cache_ttl_s);
    srv->tokens = aigw_jwt_cache_create(8192, 300);
    srv->api_keys = aigw_apikey_cache_create(4096, srv->cfg.api_key_cache_ttl_s);
    srv->key_usage = aigw_apikey_usage_start(srv->pg, srv->cfg.api_key_flush_ms);
    srv->usage = aigw_usage_start(&srv->cfg);
    if (srv->usage == NULL)
        return 1;
    srv->health = aigw_health_start(&srv->cfg);
    srv->upstream = aigw_upstream_start(&srv->cfg, srv->health);
    srv->sf = aigw_sf_start(srv->redis, 20);
    srv->listener = aigw_listener_start(srv->cfg.database_url, srv->tenants, srv->api_keys);
    check_dependencies(srv);
    if (aigw_http_start(srv) != 0)
        return 1;
    sd_notifyf(0, "READY=1\nSTATUS=listening on %s:%u\nMAINPID=%lu", srv->cfg.listen_addr, srv->bound_port,
               (unsigned long)getpid());
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig == SIGHUP)
            reload(srv, config_path);
    }
    aigw_log(LOG_NOTICE, "shutting down on signal %d", sig);
    sd_notify(0, "STOPPING=1");
    atomic_store(&srv->stopping, true);
    aigw_http_quiesce(srv);
    /* suspended requests must be resumed before the daemon stops */
    aigw_sf_stop(srv->sf);
    srv->sf = NULL;
    aigw_upstream_stop(srv->upstream);
    srv->upstream = NULL;
    aigw_http_stop(srv);
    return 0;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check-config", no_argument, NULL, 'k'},
        {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *config_path = "/etc/aigw/aigw.json";
    struct aigw_server srv;
    char err[512];
    int check_only = 0, opt, rc = 1;

    memset(&srv, 0, sizeof(srv));
    while ((opt = getopt_long(argc, argv, "c:Vh", opts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 'k':
            check_only = 1;
            break;
        case 'V':
            printf("aigw %s\n", AIGW_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    aigw_log_init(LOG_INFO, 0);
    json_object_seed(0);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        aigw_log(LOG_CRIT, "curl_global_init failed");
        return 1;
    }
    if (aigw_config_load(config_path, &srv.cfg, err, sizeof(err)) != 0) {
        aigw_log(LOG_ERR, "config: %s", err);
        fprintf(stderr, "aigw: invalid configuration: %s\n", err);
        rc = 2;
        goto out;
    }
    srv.redis = aigw_redis_pool_create(srv.cfg.redis_url, srv.cfg.redis_pool_size, srv.cfg.redis_timeout_ms,
                                       err, sizeof(err));
    if (srv.redis == NULL) {
        fprintf(stderr, "aigw: invalid configuration: %s\n", err);
        rc = 2;
        goto out;
    }
    if (check_only) {
        printf("configuration ok: %s (%zu jwt keys, %zu backends)\n", config_path, srv.cfg.n_jwt_keys,
               srv.cfg.n_backends);
        rc = 0;
        goto out;
    }
    aigw_log_set_level(srv.cfg.log_level);
    raise_nofile();
    aigw_quota_init();
    aigw_admit_init();
    aigw_idempotency_init();
    srv.started_wall_s = aigw_wall_s();
    srv.metrics = aigw_metrics_create();
    srv.pg = aigw_pg_pool_create(srv.cfg.database_url, srv.cfg.db_pool_size);
    rc = serve(&srv, config_path);
out:
    aigw_sf_stop(srv.sf);
    aigw_upstream_stop(srv.upstream);
    aigw_http_stop(&srv);
    aigw_apikey_usage_stop(srv.key_usage); /* last flush of last_used_at */
    aigw_usage_stop(srv.usage, 5000);
    aigw_listener_stop(srv.listener);
    aigw_health_stop(srv.health);
    aigw_tenant_cache_destroy(srv.tenants);
    aigw_jwt_cache_destroy(srv.tokens);
    aigw_apikey_cache_destroy(srv.api_keys);
    aigw_pg_pool_destroy(srv.pg);
    aigw_redis_pool_destroy(srv.redis);
    aigw_metrics_destroy(srv.metrics);
    aigw_config_free(&srv.cfg);
    curl_global_cleanup();
    return rc;
}
