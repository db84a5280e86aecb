/* main.c - process lifecycle: arguments, config, dependencies, threads, signals */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
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
#include "aigw/reservations.h"
#include "aigw/server.h"
#include "aigw/singleflight.h"
#include "aigw/snapshot.h"
#include "aigw/stages.h"
#include "aigw/upstream.h"
#include "aigw/usage.h"
#include "aigw/tenant.h"
#include "aigw/util.h"
#include "aigw/watchdog.h"

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

/* How long cancelled requests get to send their answers after the drain
 * deadline before their connections are closed. */
#define DRAIN_GRACE_MS 5000

/* Called first thing in main (after the arguments), before the
 * configuration is read: a SIGHUP in between (a reload asked for as aigw
 * was being started or restarted) used to end the process, SIGHUP's default
 * action, and systemd counts a death by SIGHUP as a clean exit, so
 * Restart=on-failure did not start it again. Blocked, it waits, and the
 * first wait for signals takes it as a reload (of the file just read, or of
 * one changed since); a SIGTERM waits likewise and is a drain. */
static void
block_signals(sigset_t *set)
{
    sigemptyset(set);
    sigaddset(set, SIGTERM);
    sigaddset(set, SIGINT);
    sigaddset(set, SIGHUP);
    sigaddset(set, SIGPIPE);
    /* before any thread starts, so only the main thread's waits see them */
    pthread_sigmask(SIG_BLOCK, set, NULL);
    /* a file size limit (LimitFSIZE=) reached by the usage spool or a
     * journal: the write fails with EFBIG and the row waits in memory
     * (usage.c), rather than SIGXFSZ ending the process and every row
     * waiting with it */
    signal(SIGXFSZ, SIG_IGN);
}

/* Wait up to max_ms (-1: no limit) for a signal of set, sending the
 * watchdog's pings meanwhile. Returns the signal, or 0. */
static int
wait_signal(const sigset_t *set, struct aigw_watchdog *wd, int max_ms)
{
    int due = aigw_watchdog_due_in_ms(wd), ms = max_ms, sig;
    struct timespec ts;

    if (due >= 0 && (ms < 0 || due < ms))
        ms = due;
    if (ms < 0) {
        sig = sigwaitinfo(set, NULL);
    } else {
        ts.tv_sec = ms / 1000;
        ts.tv_nsec = (long)(ms % 1000) * 1000000L;
        sig = sigtimedwait(set, NULL, &ts);
    }
    aigw_watchdog_tick(wd);
    return sig > 0 ? sig : 0;
}

/* "dev, k2": the kids of cfg's keys, for the log. */
static void
kid_list(const struct aigw_config *cfg, char *out, size_t cap)
{
    size_t off = 0;

    out[0] = '\0';
    for (size_t i = 0; i < cfg->n_jwt_keys && off < cap; i++)
        off += (size_t)snprintf(out + off, cap - off, "%s%s", i ? ", " : "", cfg->jwt_keys[i].kid);
}

/* SIGHUP: read the file again and, if it is valid, publish it as the new
 * snapshot (JWT keys, upstream backends and routes, log level, drain
 * deadline). A bad file is refused and logged, and the running snapshot
 * stays. Connections are untouched either way. When ready (READY=1 was
 * sent), RELOADING=1 and READY=1 wrap it; before that, READY=1 must wait
 * for the dependencies, so systemd hears nothing. */
static void
reload(struct aigw_server *srv, const char *config_path, bool ready)
{
    struct aigw_config next;
    struct aigw_snapshot *cur, *snap;
    char err[512], restart[256], kids[AIGW_MAX_JWT_KEYS * 66];

    if (ready)
        sd_notify(0, "RELOADING=1");
    if (aigw_config_load(config_path, &next, err, sizeof(err)) != 0)
        goto refused;
    if (!aigw_redis_url_check(next.redis_url, err, sizeof(err))) { /* restart-only, but the next start needs it */
        aigw_config_free(&next);
        goto refused;
    }
    if (aigw_config_restart_diff(&srv->cfg, &next, restart, sizeof(restart)) > 0)
        aigw_log(LOG_WARNING, "reload: %s changed; that takes a restart, the running values stay", restart);
    cur = aigw_snapshot_acquire(srv->live);
    snap = aigw_snapshot_adopt(&next, cur->generation + 1);
    aigw_snapshot_unref(cur);
    aigw_snapshot_publish(srv->live, aigw_snapshot_ref(snap));
    /* entries verified with the old keys miss anyway (generation); this frees them */
    aigw_jwt_cache_clear(srv->tokens);
    aigw_upstream_reconfigure(srv->upstream, snap);
    aigw_log_set_level(snap->cfg.log_level);
    aigw_tenant_cache_invalidate(srv->tenants, "*");
    aigw_apikey_cache_invalidate(srv->api_keys, "*");
    aigw_metrics_reload(srv->metrics, true);
    kid_list(&snap->cfg, kids, sizeof(kids));
    aigw_log(LOG_NOTICE, "reload: configuration %llu applied (JWT keys: %s; %zu upstream backends)",
             (unsigned long long)snap->generation, kids, snap->cfg.n_backends);
    if (ready)
        sd_notifyf(0, "READY=1\nSTATUS=serving on %s:%u, configuration %llu", srv->cfg.listen_addr,
                   srv->bound_port, (unsigned long long)snap->generation);
    aigw_snapshot_unref(snap);
    return;
refused:
    aigw_log(LOG_ERR, "reload refused, keeping the running configuration: %s", err);
    aigw_metrics_reload(srv->metrics, false);
    if (ready)
        sd_notify(0, "READY=1\nSTATUS=reload refused (see the log); running configuration kept");
}

/* READY=1 waits for the first PostgreSQL and Redis contact (the listener is
 * already bound, so /readyz says what is missing). Returns 0 once both
 * answered (or after one look at PostgreSQL when startup.dependency_timeout_ms
 * is 0), the signal that asked to stop, -1 when the timeout passed, or -2
 * when PostgreSQL answered as a role that bypasses row-level security (both
 * logged; aigw_pg_connect refuses such a connection whenever it is
 * made, so a later start of PostgreSQL does not let it in either). */
static int
wait_dependencies(struct aigw_server *srv, struct aigw_watchdog *wd, const sigset_t *set, const char *config_path)
{
    int64_t start = aigw_now_ms(), next_note = start;
    int limit = srv->cfg.dependency_timeout_ms;

    if (limit == 0) { /* not waiting; a connection refused for its role (logged) at start ends it all the same */
        aigw_pg_ping(srv->pg, 1000);
        return aigw_pg_role_refused() ? -2 : 0;
    }
    for (;;) {
        /* each check waits at most 1 s, redis.timeout_ms (up to 60 s) or
         * not: this thread sends WATCHDOG=1, and systemd arms its watchdog
         * on the first one, before READY=1, so a Redis that takes the
         * connection and never answers (frozen, or a stopped process)
         * would get aigw killed instead of waited for */
        bool pg = aigw_pg_ping(srv->pg, 1000), redis = aigw_redis_ping(srv->redis, 1000);
        const char *missing = !pg && !redis ? "PostgreSQL and Redis" : !pg ? "PostgreSQL" : "Redis";
        int64_t now = aigw_now_ms();
        int sig;

        if (aigw_pg_role_refused())
            return -2; /* it answered, as a role aigw must not use (logged; the pool's or the listener's) */
        if (pg && redis) {
            aigw_pg_check_timeouts(srv->pg);
            return 0;
        }
        if (now - start >= limit) {
            aigw_log(LOG_ERR, "startup: %s not reachable after %d ms (startup.dependency_timeout_ms); exiting",
                     missing, limit);
            return -1;
        }
        if (now >= next_note) {
            aigw_log(LOG_WARNING, "startup: waiting for %s before reporting ready", missing);
            sd_notifyf(0, "STATUS=waiting for %s", missing);
            next_note = now + 5000;
        }
        sig = wait_signal(set, wd, 1000);
        if (sig == SIGTERM || sig == SIGINT)
            return sig;
        if (sig == SIGHUP)
            reload(srv, config_path, false);
    }
}

/* How often the main thread sends the Redis outbox again, serving or draining. */
#define OUTBOX_RETRY_MS 1000

/* Wait until no request is in flight or deadline_ms (monotonic) passes; a
 * second SIGTERM/SIGINT ends the wait. true when nothing is in flight. The
 * outbox is sent again meanwhile, as while serving: requests that end
 * during a drain leave their refunds and single-flight publishes there
 * when Redis misses them, and the waiters on other instances wait for the
 * publish (before, nothing was resent until the drain was over). */
static bool
wait_idle(struct aigw_server *srv, struct aigw_watchdog *wd, const sigset_t *set, int64_t deadline_ms)
{
    int64_t retry_ms = aigw_now_ms() + OUTBOX_RETRY_MS;

    while (aigw_http_in_flight(srv) > 0) {
        int64_t left = deadline_ms - aigw_now_ms();
        int sig;

        if (left <= 0)
            return false;
        sig = wait_signal(set, wd, left < 50 ? (int)left : 50);
        if (aigw_now_ms() >= retry_ms) {
            aigw_redis_outbox_retry(srv->outbox);
            retry_ms = aigw_now_ms() + OUTBOX_RETRY_MS;
        }
        if (sig == SIGTERM || sig == SIGINT) {
            aigw_log(LOG_NOTICE, "drain: signal %d again, not waiting any longer", sig);
            return false;
        }
        if (sig == SIGHUP)
            aigw_log(LOG_NOTICE, "drain: reload ignored while shutting down");
    }
    return true;
}

/* SIGTERM: refuse new connections, let requests in flight (also those
 * waiting on a model) finish until the deadline, then cancel the rest:
 * their upstream calls and single-flight waits end at once, so they answer
 * 503/504 and spool their usage rows. Returns with the HTTP daemon stopped. */
static void
drain(struct aigw_server *srv, struct aigw_watchdog *wd, const sigset_t *set, int timeout_ms)
{
    size_t n = aigw_http_in_flight(srv);

    sd_notifyf(0, "STOPPING=1\nSTATUS=draining %zu requests", n);
    atomic_store(&srv->stopping, true);
    aigw_http_quiesce(srv);
    aigw_log(LOG_NOTICE, "drain: listener closed, %zu requests in flight, waiting up to %d ms", n, timeout_ms);
    if (!wait_idle(srv, wd, set, aigw_now_ms() + timeout_ms)) {
        aigw_log(LOG_WARNING, "drain: %zu requests still in flight at the deadline; cancelling them",
                 aigw_http_in_flight(srv));
        /* both return once every request they held is resumed: a third
         * signal ends the wait below at once, and libmicrohttpd aborts if
         * it is stopped with a connection still suspended */
        aigw_upstream_cancel_all(srv->upstream);
        aigw_sf_cancel(srv->sf);
        if (!wait_idle(srv, wd, set, aigw_now_ms() + DRAIN_GRACE_MS))
            aigw_log(LOG_WARNING, "drain: closing %zu connections that did not finish", aigw_http_in_flight(srv));
    }
    aigw_redis_outbox_retry(srv->outbox); /* a last try: the cancel sends what is queued and waits for the replies */
    aigw_redis_pipe_cancel(srv->pipe); /* resumes any request still waiting on it: before MHD stops */
    aigw_http_stop(srv);
    aigw_log(LOG_NOTICE, "drain: HTTP stopped");
}

static int
drain_timeout_ms(struct aigw_server *srv)
{
    struct aigw_snapshot *snap = aigw_snapshot_acquire(srv->live);
    int ms = snap->cfg.drain_timeout_ms;

    aigw_snapshot_unref(snap);
    return ms;
}

static int
refund_leftover(void *ud, const char *id, const char *tenant_id, int64_t at_s)
{
    return aigw_quota_refund(ud, id, tenant_id, at_s);
}

/* Reservations the previous run left unsettled (in flight when it died, or
 * a refund Redis could not take): refunded now that Redis answers (the ones
 * that fail stay journaled for the next start). */
static void
recover_reservations(struct aigw_server *srv)
{
    size_t left = aigw_resv_leftover(srv->resv);
    size_t done = aigw_resv_recover(srv->resv, refund_leftover, srv); /* also removes the previous run's files */

    if (left > 0)
        aigw_log(done == left ? LOG_NOTICE : LOG_ERR,
                 "quota: %zu of %zu reservations the previous run left unsettled refunded%s", done, left,
                 done == left ? "" : "; the rest stay journaled for the next start");
}

/* Start the threads and the listener, wait for the dependencies, then
 * serve until SIGTERM/SIGINT and drain. Returns the exit code. */
static int
serve(struct aigw_server *srv, const char *config_path, const sigset_t *set)
{
    struct aigw_watchdog *wd = NULL;
    int sig = 0, rc = 0;

    srv->live = aigw_snapshot_slot_create(aigw_snapshot_borrow(&srv->cfg, 1));
    srv->tenants = aigw_tenant_cache_create(srv->cfg.tenant_cache_ttl_s);
    srv->tokens = aigw_jwt_cache_create(8192, 300);
    {
        /* anyone can send keys that miss: at most half the pool, and half
         * the HTTP workers (a lookup holds its worker), look keys up */
        int by_pool = srv->cfg.db_pool_size / 2, by_threads = (int)(aigw_http_threads(&srv->cfg) / 2);
        int most = by_pool < by_threads ? by_pool : by_threads;

        srv->api_keys = aigw_apikey_cache_create(4096, srv->cfg.api_key_cache_ttl_s, most > 1 ? most : 1);
    }
    srv->usage = aigw_usage_start(&srv->cfg);
    if (srv->usage == NULL)
        return 1;
    /* keeps what a stop could not write in the spool directory, so after it */
    srv->key_usage = aigw_apikey_usage_start(srv->pg, srv->cfg.api_key_flush_ms, srv->cfg.spool_dir);
    {
        char err[256];

        /* in the spool directory, which the usage spool has created and locked */
        srv->resv = aigw_resv_open(srv->cfg.spool_dir, err, sizeof(err));
        if (srv->resv == NULL) {
            aigw_log(LOG_ERR, "%s", err);
            return 1;
        }
    }
    srv->health = aigw_health_start(&srv->cfg);
    srv->upstream = aigw_upstream_start(&srv->cfg, srv->health);
    srv->sf = aigw_sf_start(srv->redis, 20);
    srv->pipe = aigw_redis_pipe_start(srv->redis);
    srv->outbox = aigw_redis_outbox_create(srv->pipe);
    srv->listener = aigw_listener_start(srv->cfg.database_listen_url ? srv->cfg.database_listen_url
                                                                     : srv->cfg.database_url,
                                        srv->tenants, srv->api_keys, srv->redis, srv->pg);
    if (aigw_http_start(srv) != 0)
        return 1;
    wd = aigw_watchdog_create(srv);
    sig = wait_dependencies(srv, wd, set, config_path);
    if (sig == 0)
        recover_reservations(srv);
    if (sig == 0) {
        sd_notifyf(0, "READY=1\nSTATUS=serving on %s:%u\nMAINPID=%lu", srv->cfg.listen_addr, srv->bound_port,
                   (unsigned long)getpid());
        aigw_log(LOG_NOTICE, "ready: serving on %s:%u", srv->cfg.listen_addr, srv->bound_port);
        while (sig != SIGTERM && sig != SIGINT) {
            sig = wait_signal(set, wd, 1000);
            if (sig == SIGHUP)
                reload(srv, config_path, true);
            aigw_redis_outbox_retry(srv->outbox);
            if (aigw_pg_role_refused()) { /* PostgreSQL came (back) as a role that bypasses RLS */
                sig = -2;
                break;
            }
        }
    }
    rc = sig < 0 ? 1 : 0;
    aigw_log(LOG_NOTICE, "shutting down (%s)",
             sig == -2 ? "refused the database role" : sig < 0 ? "dependencies unreachable" : "signal");
    drain(srv, wd, set, sig < 0 ? 0 : drain_timeout_ms(srv));
    aigw_watchdog_destroy(wd);
    return rc;
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
    sigset_t signals;
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
    if (optind < argc) { /* "aigw --check-config new.json" checked the default file, not new.json */
        fprintf(stderr, "aigw: unexpected argument \"%s\" (the configuration file goes after -c)\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!check_only) /* a check stays killable, and has no reload to wait for */
        block_signals(&signals);
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
    if (srv.cfg.redis_password != NULL)
        aigw_redis_pool_set_password(srv.redis, srv.cfg.redis_password);
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
    rc = serve(&srv, config_path, &signals);
out:
    aigw_redis_pipe_cancel(srv.pipe); /* resumes requests waiting on it, so before the daemon stops */
    aigw_http_stop(&srv); /* then: requests may still use everything below */
    aigw_resv_close(srv.resv); /* every request settled: the journal files go */
    aigw_sf_stop(srv.sf);
    aigw_upstream_stop(srv.upstream);
    aigw_apikey_usage_stop(srv.key_usage); /* last flush of last_used_at */
    aigw_usage_stop(srv.usage, 5000); /* writes the rows still spooled */
    aigw_listener_stop(srv.listener);
    aigw_health_stop(srv.health);
    aigw_tenant_cache_destroy(srv.tenants);
    aigw_jwt_cache_destroy(srv.tokens);
    aigw_apikey_cache_destroy(srv.api_keys);
    aigw_pg_pool_destroy(srv.pg);
    aigw_redis_outbox_destroy(srv.outbox); /* after the cancel: its last failures wait there */
    aigw_redis_pipe_destroy(srv.pipe);
    aigw_redis_pool_destroy(srv.redis);
    aigw_metrics_destroy(srv.metrics);
    aigw_snapshot_slot_destroy(srv.live); /* the last snapshot may borrow from srv.cfg */
    aigw_config_free(&srv.cfg);
    curl_global_cleanup();
    return rc;
}
