/* server.h - the one documented global: everything a request may read.
 *
 * Filled in by main() before the HTTP daemon starts; read-only afterwards
 * except for the fields that are themselves thread-safe objects (pools,
 * caches, the snapshot slot) or atomics. The reloadable settings (JWT keys,
 * upstream backends and routes, log level, drain deadline) are read from the
 * request's snapshot (req->snap, see snapshot.h), never from cfg. */
#ifndef AIGW_SERVER_H
#define AIGW_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "aigw/config.h"

struct MHD_Daemon;
struct aigw_pg_pool;
struct aigw_redis_pool;
struct aigw_tenant_cache;
struct aigw_jwt_cache;
struct aigw_apikey_cache;
struct aigw_apikey_usage;
struct aigw_health;
struct aigw_listener;
struct aigw_upstream;
struct aigw_usage;
struct aigw_sf;
struct aigw_metrics;
struct aigw_snapshot_slot;
struct aigw_resv;
struct aigw_busy;
struct aigw_acceptor;
struct aigw_redis_outbox;

struct aigw_server {
    struct aigw_config cfg;                 /* start-up configuration; read-only while serving */
    struct aigw_snapshot_slot *live;        /* the live reloadable configuration (snapshot.h) */
    struct MHD_Daemon *mhd;
    struct aigw_pg_pool *pg;                /* thread-safe checkout pool */
    struct aigw_redis_pool *redis;          /* thread-safe checkout pool */
    struct aigw_redis_pipe *pipe;           /* async pipelined connection (admission); thread-safe */
    struct aigw_tenant_cache *tenants;      /* thread-safe */
    struct aigw_jwt_cache *tokens;          /* verified tokens; thread-safe */
    struct aigw_apikey_cache *api_keys;     /* API key records by SHA-256; thread-safe */
    struct aigw_apikey_usage *key_usage;    /* last_used_at batcher; thread-safe */
    struct aigw_health *health;             /* upstream /health prober */
    struct aigw_listener *listener;         /* LISTEN/NOTIFY thread */
    struct aigw_upstream *upstream;         /* curl multi engine thread */
    struct aigw_usage *usage;               /* usage spool + writer thread */
    struct aigw_resv *resv;                 /* journal of quota reservations in flight; thread-safe */
    struct aigw_redis_outbox *outbox;       /* scripts sent until Redis confirms them (redis.h); thread-safe */
    struct aigw_sf *sf;                     /* single-flight waiter poller */
    struct aigw_metrics *metrics;           /* lock-free counters for GET /metrics */
    struct aigw_busy *busy;                 /* per-worker callback stamps for the watchdog (http.h) */
    struct aigw_acceptor *acceptor;         /* the listening socket and its accept thread (acceptor.h) */
    atomic_bool stopping;                   /* draining: /readyz 503, new requests 503 + Connection: close */
    atomic_size_t in_flight;                /* requests from their first callback to completion */
    int64_t started_wall_s;
    uint16_t bound_port;
};

#endif
