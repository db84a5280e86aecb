/* http.h - the request object, the stage chain and the response helpers */
#ifndef AIGW_HTTP_H
#define AIGW_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aigw/jwt.h"
#include "aigw/pool.h"
#include "aigw/server.h"

struct MHD_Connection;
struct aigw_sse;
struct aigw_tenant;
struct aigw_api_key;
struct aigw_snapshot;

/* The one status enum for control flow (nginx-style).
 * OK: go on with the next stage. DONE: a response is set on the request.
 * AGAIN: the request is suspended; it re-enters the same stage on resume. */
enum aigw_rc { AIGW_OK, AIGW_DONE, AIGW_AGAIN, AIGW_ERR };

struct aigw_req;
typedef enum aigw_rc (*aigw_stage_fn)(struct aigw_req *req);

#define AIGW_MAX_STAGES 16
#define AIGW_MAX_PARAMS 2
#define AIGW_MAX_RESP_HEADERS 12

struct aigw_route {
    const char *method;                /* "GET", "POST", ... */
    const char *path;                  /* "/api/ai/limits"; "{}" matches one segment */
    aigw_stage_fn stages[AIGW_MAX_STAGES]; /* run in order, NULL-terminated; the last is the handler */
    void (*finish)(struct aigw_req *req);  /* optional: runs once before any response is queued */
    void (*after)(struct aigw_req *req);   /* optional: runs once after the response went out (or the
                                            * connection ended): work the client need not wait for */
    bool ai;                               /* an AI route: every authenticated request gets a usage row */
    bool openai;                           /* errors in the OpenAI shape {"error":{"message","type","param","code"}} */
    const char *scope;                     /* API key scope the route needs ("query", "chat");
                                            * NULL: JWT only, API keys get 403 */
    bool ops;                              /* /healthz, /readyz, /metrics: still answered while draining */
};

struct aigw_hdr {
    const char *name, *value;
};

struct aigw_req {
    struct aigw_server *srv;
    struct aigw_snapshot *snap;        /* reloadable configuration: counted reference held until completion */
    struct MHD_Connection *conn;
    struct aigw_pool *pool;            /* owns everything below unless noted */
    const char *method, *url;
    const struct aigw_route *route;
    const char *params[AIGW_MAX_PARAMS]; /* "{}" path segments */
    size_t stage;                      /* index of the stage to run next */
    char request_id[65];
    char usage_id[37];                 /* unique per request (UUIDv7): usage row id, single-flight owner */
    int64_t start_us;
    int64_t start_wall_us;             /* wall clock at the start: the usage row's created_at and the
                                        * month whose quota counter the request counts in */

    /* upload */
    char *body;
    size_t body_len, body_cap;
    bool body_too_large;
    size_t body_over;                  /* bytes received since body_too_large (dropped) */
    json_t *json;                      /* parsed body (owned via pool cleanup) */

    /* query path state (NULL on other routes) */
    struct aigw_query *q;

    /* identity */
    struct aigw_claims claims;         /* for an API key: tenant = its tenant id, sub = "api_key:<id>" */
    const struct aigw_api_key *api_key; /* the key that authenticated the request, or NULL (JWT) */
    bool authenticated;
    struct aigw_tenant *tenant;        /* counted reference, put on completion */

    /* response */
    int status;
    char *resp_body;                   /* pool-owned */
    size_t resp_len;
    const char *content_type;
    struct aigw_hdr resp_headers[AIGW_MAX_RESP_HEADERS];
    size_t n_resp_headers;
    const char *error_code;            /* set by aigw_req_fail, for the access log */
    bool responded;                    /* a response was queued to MHD */
    bool arrived;                      /* the whole request (line, headers, body) was received */

    /* streaming response (text/event-stream); sse is NULL otherwise */
    struct aigw_sse *sse;              /* a reference, dropped when the connection ends */
    bool sse_live;                     /* the response is the stream (else an ordinary one was queued) */
    bool sse_final;                    /* sse_finalize ran */
    bool sse_cut;                      /* the connection ended because aigw stopped (the drain's grace ran
                                        * out), not because the client left */
    /* Runs once on the connection's thread when the stream ends: after the
     * producer closed and the client read everything (client_gone false),
     * or when the connection ended first (client_gone true). Does the
     * bookkeeping the route's finish hook and usage row would have done
     * before an ordinary response, and may append a final event. */
    void (*sse_finalize)(struct aigw_req *req, bool client_gone);
    /* The client drained a full pipe: unpause the producer. */
    void (*sse_on_drain)(struct aigw_req *req);
};

/* Value of request header name (case-insensitive) or NULL. */
const char *aigw_req_header(struct aigw_req *req, const char *name);
/* How many request headers are named name or other (other may be NULL;
 * case-insensitive), in one pass over the headers. */
int aigw_req_header_count(struct aigw_req *req, const char *name, const char *other);
/* Value of query-string argument name or NULL. */
const char *aigw_req_arg(struct aigw_req *req, const char *name);
/* Query-string argument name given at most once: true with *value = its
 * value ("" for a bare "?name") or NULL (absent); false when it is given more than once (aigw_req_arg
 * would take the first, a proxy or a log may read another). */
bool aigw_req_arg_once(struct aigw_req *req, const char *name, const char **value);

/* The peer's address as text ("127.0.0.1", "::1") into buf; "" if unknown.
 * Proxies in front are not trusted: X-Forwarded-For is ignored. */
void aigw_req_client_ip(const struct aigw_req *req, char *buf, size_t cap);

/* Add a response header; both strings must outlive the request (pool or
 * static). Silently ignored beyond AIGW_MAX_RESP_HEADERS. */
void aigw_req_add_header(struct aigw_req *req, const char *name, const char *value);

/* Set a JSON response: status and body (the reference is stolen). Returns
 * AIGW_DONE, so a stage can `return aigw_req_json(req, 200, body);`. */
enum aigw_rc aigw_req_json(struct aigw_req *req, int status, json_t *body);

/* Set a JSON response from text that is already JSON (len bytes, copied
 * into the pool). Returns AIGW_DONE. */
enum aigw_rc aigw_req_json_text(struct aigw_req *req, int status, const char *text, size_t len);

/* Set the standard error response {"error":{"code","message","request_id"}}
 * plus the fields of extra (stolen, may be NULL). Adds WWW-Authenticate to
 * 401s. message must not contain secrets or user text. Returns AIGW_DONE. */
enum aigw_rc aigw_req_fail_extra(struct aigw_req *req, int status, const char *code, json_t *extra,
                                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define aigw_req_fail(req, status, code, ...) aigw_req_fail_extra(req, status, code, NULL, __VA_ARGS__)

/* Suspend the connection (only from a stage, which then returns AIGW_AGAIN);
 * whoever finishes the pending work calls aigw_req_resume exactly once, from
 * any thread, and the stage chain re-enters the same stage. */
void aigw_req_suspend(struct aigw_req *req);
void aigw_req_resume(struct aigw_req *req);

/* The bookkeeping before a response leaves: the route's finish hook, then
 * the usage row (spooled, so durable) for AI routes. queue() runs it for
 * ordinary responses; a stream's sse_finalize runs it at the stream's end. */
void aigw_req_settle(struct aigw_req *req);

/* Start the HTTP daemon on srv (uses srv->cfg). Returns 0, or -1 (logged). */
int aigw_http_start(struct aigw_server *srv);
/* The number of libmicrohttpd worker threads cfg asks for (http.threads, 0 =
 * one per online CPU). */
unsigned aigw_http_threads(const struct aigw_config *cfg);
/* Stop accepting new connections and close the listening socket, so new
 * clients are refused at once instead of waiting in the kernel backlog
 * (in-flight requests go on). Safe before start and after stop; idempotent. */
void aigw_http_quiesce(struct aigw_server *srv);
/* Requests between their first callback and their completion. */
size_t aigw_http_in_flight(const struct aigw_server *srv);
/* How long (ms) the worker that has been inside one libmicrohttpd callback
 * the longest has been there; 0 when every worker is idle or polling. A
 * large value means a wedged worker (callbacks never wait on a model). */
int64_t aigw_http_busy_ms(const struct aigw_server *srv);
/* Stop the daemon; every suspended request must have been resumed. NULL-safe. */
void aigw_http_stop(struct aigw_server *srv);

/* Route table lookup. Returns the route (params[] filled with pool-owned
 * copies of "{}" segments), or NULL with *status 404 or 405 and, for 405,
 * allow filled with the "GET, POST"-style list of methods of that path. */
const struct aigw_route *aigw_router_match(struct aigw_pool *pool, const char *method, const char *path,
                                           const char **params, int *status, char *allow,
                                           size_t allow_cap);
/* Whether path lies under the OpenAI SDKs' base path (/v1), where every
 * error, of a route or of none (404, 405), takes the OpenAI shape. Cannot fail. */
bool aigw_router_openai_path(const char *path);

#endif
