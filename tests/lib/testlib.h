/* testlib.h - tiny test harness: checks, HTTP client, aigw process control, SQL */
#ifndef AIGW_TESTLIB_H
#define AIGW_TESTLIB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

extern int tl_passed, tl_failed;

#define CHECK(cond, ...) tl_check((cond), __FILE__, __LINE__, #cond, __VA_ARGS__)
void tl_check(bool ok, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* Print "N passed, M failed" and return the process exit code. */
int tl_done(void);

/* Required environment variable (aborts the test with a message if unset). */
const char *tl_env(const char *name);

struct tl_resp {
    long status;
    char *body;            /* NUL-terminated */
    size_t body_len;
    char *headers;         /* raw header block */
};
void tl_resp_free(struct tl_resp *r);
/* Value of a response header (case-insensitive), copied into buf; NULL if absent. */
const char *tl_resp_header(const struct tl_resp *r, const char *name, char *buf, size_t cap);
/* JSON string at a "a.b.c" path of the body, copied into buf; NULL if absent. */
const char *tl_json_str(const struct tl_resp *r, const char *path, char *buf, size_t cap);
/* JSON integer at path; returns fallback if absent. */
long long tl_json_int(const struct tl_resp *r, const char *path, long long fallback);

/* HTTP request to 127.0.0.1:port. headers: NULL-terminated "Name: value"
 * list or NULL. body may be NULL. Returns 0, or -1 on transport error. */
int tl_http(int port, const char *method, const char *path, const char *const *headers, const char *body,
            size_t body_len, struct tl_resp *out);
/* A kept-alive client connection: requests reuse one TCP connection while
 * the server keeps it open. */
struct tl_conn;
struct tl_conn *tl_conn_open(int port);
void tl_conn_close(struct tl_conn *c);
/* GET on c (token may be NULL); *new_conns (may be NULL) is how many new
 * TCP connections the request needed (0 = the kept one was reused). */
int tl_conn_get(struct tl_conn *c, const char *path, const char *token, struct tl_resp *out, long *new_conns);

/* GET/POST with "Authorization: Bearer <token>" (token may be NULL). */
int tl_get(int port, const char *path, const char *token, struct tl_resp *out);
int tl_post(int port, const char *path, const char *token, const char *json, struct tl_resp *out);
/* Any method with the bearer token (may be NULL), a JSON body (may be NULL)
 * and extra "Name: value" headers (NULL-terminated list, may be NULL). */
int tl_send(int port, const char *method, const char *path, const char *token, const char *json,
            const char *const *extra_headers, struct tl_resp *out);

/* Check the exact status and, when code is not NULL, error.code; with field
 * not NULL also that error.message names it ("field: ..."). */
void tl_expect_field(const char *what, const struct tl_resp *r, long status, const char *code, const char *field);

/* A running aigw. */
struct tl_aigw {
    pid_t pid;
    int port;
    char dir[256];         /* temp dir with config and log */
    char config[300];
    char log[300];
    int status;            /* exit status once reaped by tl_aigw_wait/stop; -1 before */
    int failed_before;     /* tl_failed at start: tl_aigw_stop prints the log if checks failed since */
};
/* Write config_json (NULL = the repo's config/aigw.json) to a temp dir and
 * start the aigw binary on a free port with the test environment; wait for
 * /healthz. Returns 0 or -1. */
int tl_aigw_start(struct tl_aigw *gw, const char *config_json);
/* Like tl_aigw_start with extra "NAME=value" environment settings for aigw
 * (NULL-terminated); WATCHDOG_USEC also sets WATCHDOG_PID to aigw's pid, as
 * systemd does (NOTIFY_SOCKET and WATCHDOG_* are otherwise unset). */
int tl_aigw_start_env(struct tl_aigw *gw, const char *config_json, const char *const *env);
/* Like tl_aigw_start_env, run by a wrapper: wrap is its argv (NULL-terminated,
 * e.g. valgrind and its options), aigw's own argv follows it. Waits up to 60 s
 * for /healthz. */
int tl_aigw_start_wrapped(struct tl_aigw *gw, const char *config_json, const char *const *env,
                          const char *const *wrap);
/* SIGTERM and wait; returns the exit status (or -1). Prints the log when the
 * status is not 0 or checks failed since the start. Removes the temp dir. */
int tl_aigw_stop(struct tl_aigw *gw);
/* Send sig to aigw (if running). */
void tl_aigw_signal(const struct tl_aigw *gw, int sig);
/* Wait up to timeout_ms for aigw to exit; its exit status (128+N for a
 * signal), or -1 while it still runs. Keeps the temp dir (tl_aigw_stop removes it). */
int tl_aigw_wait(struct tl_aigw *gw, int timeout_ms);
/* Poll aigw's log until it contains needle; false after timeout_ms. */
bool tl_aigw_log_wait(const struct tl_aigw *gw, const char *needle, int timeout_ms);
/* SIGKILL aigw (a crash) and remove its temp dir (config, log). */
int tl_aigw_kill9(struct tl_aigw *gw);
/* Read the aigw log (malloc'd, caller frees). */
char *tl_aigw_log(const struct tl_aigw *gw);

/* Free TCP port on 127.0.0.1. */
int tl_free_port(void);

/* Owner (superuser) and app connections to the test database. */
PGconn *tl_pg_owner(void);
PGconn *tl_pg_app(void);
/* Run sql with params (text); returns the result (caller PQclears) or
 * aborts the test on error when must_succeed. */
PGresult *tl_sql(PGconn *c, bool must_succeed, const char *sql, int n, const char *const *params);
/* First column of first row as a long (or -1). */
long tl_sql_long(PGconn *c, const char *sql, int n, const char *const *params);

/* Mint an HS256 token with the test secret (AIGW_JWT_SECRET, kid "dev")
 * for tenant/role with the given lifetime. Returns malloc'd token. */
char *tl_token(const char *tenant, const char *role, long ttl);
/* Mint a platform operator's token: HS256 with AIGW_PLATFORM_JWT_SECRET,
 * kid "platform", sub "ops-1", the given role, no tenant_id. malloc'd. */
char *tl_platform_token(const char *role, long ttl);
/* The same with another HS256 key (kid, secret). */
char *tl_token_kid(const char *kid, const char *secret, const char *tenant, const char *role, long ttl);
/* Sign arbitrary claims JSON with kid/alg/key. alg "HS256" uses key as the
 * secret; "RS256"/"ES256" a private PEM. Returns malloc'd token. */
char *tl_sign(const char *alg, const char *kid, const char *key, size_t key_len, const char *claims_json);

/* Create a fresh tenant (random code) as the owner; returns its uuid in id. */
void tl_create_tenant(PGconn *owner, const char *tier, const char *status, char id[37], char code[65]);

/* Redis command on AIGW_REDIS_URL: returns integer reply or -1 (GET parses). */
long long tl_redis_int(const char *fmt, ...);
/* The same on another Redis, 127.0.0.1:port, after AUTH pass (when not
 * NULL) and SELECT db; a status reply (OK) gives 0. */
long long tl_redis_int_at(int port, const char *pass, int db, const char *fmt, ...);
/* Everything aigw keeps in Redis for tenant tid (the keys aigw:{tid}:*: rate
 * limit windows, quota counter, cache generation and entries, single-flight
 * locks and results, idempotency records) with their values, as text;
 * malloc'd, NULL if Redis does not answer. */
char *tl_tenant_redis(const char *tid);
/* Whether a request left the tenant's Redis state as tl_tenant_redis gave it
 * before: no key created or changed (one may have expired meanwhile). If
 * not, what names the first key created or changed. */
bool tl_tenant_redis_kept(const char *tid, const char *before, char *what, size_t cap);

#endif

#ifndef AIGW_TESTLIB_KEYS
#define AIGW_TESTLIB_KEYS
/* Generate an RSA-2048 ("RS256") or P-256 ("ES256") key pair as PEM
 * strings (malloc'd): SPKI public, PKCS#8 private. */
void tl_keypair(const char *alg, char **pub_pem, char **priv_pem);
/* Write s to path. */
void tl_write_file(const char *path, const char *s);
/* The whole file at path, malloc'd and NUL-terminated; NULL if unreadable. */
char *tl_read_file(const char *path);
/* rm -rf dir: true when it is gone. */
bool tl_rm_rf(const char *dir);
/* Entries of dir whose names start with prefix (-1: dir unreadable). */
int tl_count_files(const char *dir, const char *prefix);
#endif

/* The repo's config/aigw.json with an RFC 7386 JSON merge patch applied
 * (objects merge, other values replace, null deletes). malloc'd text. */
char *tl_config_patch(const char *patch_json);

/* HTTP to an absolute base URL (e.g. $AIGW_MOCK_URL) + path. */
int tl_http_url(const char *base, const char *method, const char *path, const char *body, struct tl_resp *out);
/* Configure a mock upstream (JSON for /__mock/config); aborts on failure. */
void tl_mock_config(const char *base, const char *json);
/* Reset a mock upstream's counters and config. */
void tl_mock_reset(const char *base);
/* Integer field of the mock's /__mock/stats. */
long long tl_mock_stat(const char *base, const char *field);

/* n POSTs at once (curl multi) of bodies[i] to path with the token and
 * optional extra headers (NULL-terminated). Fills out[0..n). */
void tl_post_parallel(int port, const char *path, const char *token, const char *const *extra_headers,
                      const char *const *bodies, int n, struct tl_resp *out);
/* Poll sql (returning one number) until it equals want or timeout_ms pass;
 * returns the last value. */
long tl_wait_sql(PGconn *c, long want, int timeout_ms, const char *sql, int n, const char *const *params);
/* Like tl_post_parallel without extra headers, alternating between two ports. */
void tl_post_parallel_two(int port1, int port2, const char *path, const char *token, const char *const *bodies, int n,
                          struct tl_resp *out);
struct json_t;
/* Walk a keyset-paged listing: GET first (a path with "?limit=..."), then
 * first + "&<cursor_arg>=<cursor>" while the body's cursor_key is a string.
 * each(item, ctx) runs for every element of the body's list_key array;
 * checks every page is 200 and holds at most limit items. Returns the pages
 * read, or -1 when one failed. */
int tl_walk_pages(int port, const char *token, const char *first, int limit, const char *list_key,
                  const char *cursor_key, const char *cursor_arg, void (*each)(struct json_t *item, void *ctx),
                  void *ctx);
/* Rows of a table (owner view, RLS does not apply). */
long tl_count_rows(PGconn *owner, const char *table);
/* malloc'd printf. */
char *tl_sprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reconnect a connection after a PostgreSQL restart (same URL). */
void tl_pg_reconnect(PGconn **c);

/* Request with an API key: as "X-API-Key: <key>", or as "Authorization:
 * Bearer <key>" when bearer. json (may be NULL) is sent as the body. */
int tl_key_request(int port, const char *method, const char *path, const char *key, bool bearer, const char *json,
                   struct tl_resp *out);
/* DELETE with "Authorization: Bearer <token>" (token may be NULL). */
int tl_delete(int port, const char *path, const char *token, struct tl_resp *out);
/* CHECK that r has status and, when code is not NULL, error.code code. */
void tl_expect(const char *name, const struct tl_resp *r, long status, const char *code);
/* CHECK that r is a 429 quota_exhausted as clients must see it: Retry-After
 * the seconds until its resets_at (give or take 5 s of test time), and
 * x-should-retry: false (the OpenAI SDKs retry a 429 unless told not to). */
void tl_expect_quota_exhausted(const char *name, const struct tl_resp *r);
/* POST /api/v1/api-keys with token and body json; on 201 copies the key
 * (cap bytes) and its id. Returns the HTTP status. */
long tl_api_key_create(int port, const char *token, const char *json, char *key, size_t cap, char id[37]);

/* ai_usage_logs rows of tenant tid matching the SQL condition where, polled
 * until there are want of them or 3 s passed; returns the last count. */
long tl_usage_rows(PGconn *owner, const char *tid, const char *where, long want);
/* Barrier before a check that a usage row was NOT written: poll the /metrics
 * of the aigw on port until aigw_usage_backlog_rows is 0, i.e. every row it
 * recorded is in PostgreSQL (a request's row is recorded before its response
 * leaves). false after 10 s. */
bool tl_usage_flushed(int port);
/* This UTC month's quota counter of tenant tid in Redis (-1 if missing). */
long long tl_quota_used(const char *tid);
/* The tenant's single-flight locks (aigw:{tid}:sf:*, not the published
 * results), or -1 when Redis could not be asked. */
long long tl_sf_locks(const char *tid);
/* The largest PTTL (ms) of the keys matching pattern; -1 when none. */
long long tl_max_pttl(const char *pattern);
/* tl_post_parallel on a background thread; out must stay valid until
 * tl_parallel_join, which waits for every answer. */
struct tl_parallel;
struct tl_parallel *tl_post_parallel_bg(int port, const char *path, const char *token, const char *const *bodies, int n,
                                        struct tl_resp *out);
void tl_parallel_join(struct tl_parallel *p);
/* Whether a TCP connect to 127.0.0.1:port is refused (nobody listens). */
bool tl_port_refuses(int port);

/* A unix datagram socket standing in for systemd's NOTIFY_SOCKET (in the
 * abstract namespace: path is "@name", the form NOTIFY_SOCKET takes). Aborts
 * the test on failure. */
int tl_notify_open(char *path, size_t cap);
/* Next datagram into buf (NUL-terminated): its length, or -1 after timeout_ms. */
int tl_notify_next(int fd, char *buf, size_t cap, int timeout_ms);
/* Read datagrams until one has line (e.g. "READY=1") as one of its lines;
 * false after timeout_ms. Datagrams read meanwhile are dropped. */
bool tl_notify_wait(int fd, const char *line, int timeout_ms);
/* Datagrams with line during the next window_ms. */
int tl_notify_count(int fd, const char *line, int window_ms);

/* The value of one sample ("name{labels}") in exposition text, or -1. */
double tl_metric_in(const char *text, const char *series);
/* The same from GET /metrics on port. */
double tl_metric(int port, const char *series);
/* Scrape until series equals want or timeout_ms pass; the last value. */
double tl_metric_wait(int port, const char *series, double want, int timeout_ms);
/* PgBouncer (/usr/sbin/pgbouncer) in transaction pooling mode, round robin
 * over at most pool_size server sessions, in front of the stack's
 * PostgreSQL, on a free port of 127.0.0.1; its files in dir. As root it
 * runs as the OS user of the stack's PostgreSQL (it refuses root, and that
 * user's socket admits no other), without supplementary groups, and dir is
 * handed to that user. The database is "aigw", user aigw_app without a
 * password; the connection's options are ignored. Returns its port, or 0
 * (checked) when it is not installed or does not answer. */
int tl_pgbouncer_start(const char *dir, int pool_size);
/* Stop the PgBouncer started in dir (its pid file); no-op if none. */
void tl_pgbouncer_stop(const char *dir);

/* scripts/devstack.sh <cmd> on the test stack (AIGW_STACK_NAME), e.g.
 * "pg-stop", "pg-start", "redis-stop", "redis-start"; CHECKed. true when it
 * succeeded. */
bool tl_stack(const char *cmd);

/* POST body (JSON) to path with a bearer token on a new connection to
 * port, its receive buffer set to rcvbuf when > 0; nothing is read. The
 * socket, or -1. */
int tl_post_raw(int port, const char *path, const char *token, const char *body, int rcvbuf);
/* A raw streaming query: tl_post_raw of /api/ai/query with "stream": true
 * and the question (no escaping). */
int tl_stream_open(int port, const char *token, const char *question, int rcvbuf);
/* Read fd until needle has appeared in what was read since the call (it may
 * span reads, and any amount may come before it: the reads are searched as
 * one text); false after timeout_ms or at EOF. */
bool tl_read_until(int fd, const char *needle, int timeout_ms);
