/* config.h - the configuration snapshot: JSON file + environment overrides */
#ifndef AIGW_CONFIG_H
#define AIGW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include <jwt.h>

#define AIGW_MAX_JWT_KEYS 8
#define AIGW_MAX_BACKENDS 16
#define AIGW_QUERY_TYPES 4
#define AIGW_MAX_MODELS 16
#define AIGW_MAX_MODEL_TIERS 8
#define AIGW_MAX_BACKEND_URL 1000 /* characters of upstream.backends[].url; paths are appended to it */

/* One verification key; the algorithm is pinned to it. */
struct aigw_jwt_key {
    char kid[64];
    jwt_alg_t alg;         /* JWT_ALG_HS256, _RS256 or _ES256, never NONE */
    unsigned char *key;    /* HS: secret bytes; RS/ES: SPKI PEM text */
    size_t key_len;
    bool platform;         /* "platform": true - signs platform-operator tokens only: a token it
                            * verifies may reach the platform routes (with role platform_admin)
                            * and never a tenant's; clinic keys never reach platform routes */
};

struct aigw_backend_cfg {
    char name[64];
    char *url;             /* base URL, e.g. http://127.0.0.1:8081 */
    int slots;             /* max requests in flight to this backend */
    int max_connections;   /* pooled connections kept to it */
};

/* A model offered on the OpenAI-compatible routes. */
struct aigw_model_cfg {
    char id[128];          /* the name clients use, also sent upstream */
    int qtype;             /* backend group it runs on (index into aigw_query_type_names) */
    char tiers[AIGW_MAX_MODEL_TIERS][33]; /* plans allowed to use it; none = every plan with api_access */
    size_t n_tiers;
};

struct aigw_config {
    /* http */
    char *listen_addr;     /* IPv4/IPv6 literal; default 127.0.0.1 */
    int port;
    int threads;           /* MHD worker threads; 0 = number of CPUs */
    size_t max_body_bytes;
    size_t max_header_bytes;
    int max_connections;
    int max_connections_per_ip;
    int connection_timeout_s;
    int request_timeout_s; /* a whole request must arrive within this of the connection's start or last response */
    int max_json_depth;

    /* dependencies */
    char *database_url;
    char *database_listen_url; /* the listener's session; NULL = database_url */
    int db_pool_size;
    char *redis_url;
    char *redis_password;      /* read from redis.password_file (a secret): replaces the URL's password */
    int redis_pool_size;
    int redis_timeout_ms;

    /* auth */
    struct aigw_jwt_key jwt_keys[AIGW_MAX_JWT_KEYS];
    size_t n_jwt_keys;
    char *jwt_issuer;      /* NULL = not checked */
    char *jwt_audience;    /* NULL = not checked */
    int jwt_leeway_s;

    /* tenants */
    int tenant_cache_ttl_s;

    /* API keys */
    int api_key_cache_ttl_s;   /* in-process key records; NOTIFY + Redis marker revoke at once anyway */
    int api_key_flush_ms;      /* last_used_at batch interval */

    /* upstream */
    struct aigw_backend_cfg backends[AIGW_MAX_BACKENDS];
    size_t n_backends;
    int health_interval_ms;
    /* query type -> backend group: route_backends[t] lists indexes into
     * backends[], n_route_backends[t] of them; t follows aigw_query_type_names */
    int route_backends[AIGW_QUERY_TYPES][AIGW_MAX_BACKENDS];
    size_t n_route_backends[AIGW_QUERY_TYPES];
    int connect_timeout_ms;    /* TCP connect to a backend */
    int timeout_ms;            /* whole non-streaming request */
    int stream_idle_ms;        /* a stream with no byte for this long fails (first token included) */
    int stream_timeout_ms;     /* longest a whole stream may last */
    int stream_buffer_bytes;   /* per stream: bytes held for a slow client before the upstream is paused */
    int queue_size;            /* requests waiting for a slot, per group */
    int queue_timeout_ms;      /* longest wait for a slot before 503 */
    int fail_threshold;        /* consecutive failures that mark a backend down */
    int down_ms;               /* how long a failed backend stays down */
    char *model;               /* model name sent upstream and reported */

    /* OpenAI-compatible routes */
    struct aigw_model_cfg models[AIGW_MAX_MODELS]; /* models[0] is the default; at least one */
    size_t n_models;
    bool cache_sampled;        /* also cache answers asked with temperature > 0 (or unset) */

    /* usage rows */
    char *spool_dir;           /* append-only spool of usage rows */
    int usage_batch_rows;      /* rows per INSERT batch */
    int usage_flush_ms;        /* longest a row waits before its batch is written */
    int usage_memory_max_kb;   /* rows the spool refused, kept in memory; at this size AI requests get 503 */

    /* logging */
    int log_level;         /* syslog priority */

    /* process lifecycle */
    int dependency_timeout_ms; /* start-up: longest wait for PostgreSQL + Redis before READY=1; 0 = no wait */
    int drain_timeout_ms;      /* SIGTERM: longest wait for in-flight requests before they are cancelled */
};

/* Query types, in the order used by route_backends. */
extern const char *const aigw_query_type_names[AIGW_QUERY_TYPES];
/* Index of a query type name, or -1. */
int aigw_query_type_index(const char *name);

/* Load path (JSON) into *cfg, apply defaults, expand "${VAR}" / "${VAR:-def}"
 * in string values from the environment, then apply the env overrides
 * AIGW_DATABASE_URL, AIGW_REDIS_URL, AIGW_LISTEN_ADDR, AIGW_PORT, AIGW_LOG_LEVEL.
 * On failure returns -1 with a one-line reason in err (no secrets) and
 * leaves *cfg empty; on success returns 0 and the caller owns *cfg
 * (release with aigw_config_free). */
int aigw_config_load(const char *path, struct aigw_config *cfg, char *err, size_t errlen);

/* Free everything cfg owns and zero it. NULL-safe. */
void aigw_config_free(struct aigw_config *cfg);

/* The longest one upstream call may take (ms): a stream runs up to
 * upstream.stream_timeout_ms, an answer in one piece timeout_ms. What a
 * record that must outlive the call (a single-flight lock, an idempotency
 * key's pending record) is sized by. */
int aigw_config_call_ms(const struct aigw_config *cfg, bool stream);

/* The model called id that tier may use, or NULL. */
const struct aigw_model_cfg *aigw_config_model(const struct aigw_config *cfg, const char *id, const char *tier);

/* Settings that differ between the running configuration a and a reloaded
 * one b but only take effect at start-up (listen.*, http.*, database.*,
 * redis.*, tenants.*, usage.*, upstream.model, startup.*): their names,
 * comma-separated, into out ("" when none; truncated to cap). Returns how
 * many differ. Never fails. */
size_t aigw_config_restart_diff(const struct aigw_config *a, const struct aigw_config *b, char *out, size_t cap);

/* Find a key by kid; with kid == NULL, the only key when exactly one is
 * configured. NULL when not found. */
const struct aigw_jwt_key *aigw_config_find_key(const struct aigw_config *cfg, const char *kid);

#endif
