/* response.c - request accessors and the JSON / error response builders */
#include <microhttpd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aigw/http.h"
#include "aigw/util.h"

const char *
aigw_req_header(struct aigw_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *
aigw_req_arg(struct aigw_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

/* Names counted by count_named: header names case-insensitively (HTTP),
 * query-string argument names exactly. */
struct name_count {
    const char *name, *other; /* other: NULL, or a second name that counts too */
    int n;
};

static enum MHD_Result
count_named(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    struct name_count *c = cls;
    int (*cmp)(const char *, const char *) = kind == MHD_HEADER_KIND ? strcasecmp : strcmp;

    (void)value;
    if (cmp(key, c->name) == 0 || (c->other != NULL && cmp(key, c->other) == 0))
        c->n++;
    return MHD_YES;
}

int
aigw_req_header_count(struct aigw_req *req, const char *name, const char *other)
{
    struct name_count c = {.name = name, .other = other, .n = 0};

    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_named, &c);
    return c.n;
}

bool
aigw_req_arg_once(struct aigw_req *req, const char *name, const char **value)
{
    struct name_count c = {.name = name, .other = NULL, .n = 0};

    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, count_named, &c);
    /* a bare "?name" is given, with the empty value: libmicrohttpd has NULL
     * for it, which read as absent took the default */
    *value = c.n == 1 && aigw_req_arg(req, name) == NULL ? "" : aigw_req_arg(req, name);
    return c.n <= 1;
}

void
aigw_req_add_header(struct aigw_req *req, const char *name, const char *value)
{
    if (req->n_resp_headers == AIGW_MAX_RESP_HEADERS)
        return;
    req->resp_headers[req->n_resp_headers].name = name;
    req->resp_headers[req->n_resp_headers].value = value;
    req->n_resp_headers++;
}

/* Reals with 15 significant digits, the most a double holds exactly in
 * decimal: jansson's default of 17 printed the 213.3 PostgreSQL rounded an
 * average to as 213.30000000000001. */
enum aigw_rc
aigw_req_json(struct aigw_req *req, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15));
    size_t len;

    json_decref(body);
    if (text == NULL) {
        text = aigw_xstrdup("{\"error\":{\"code\":\"internal\",\"message\":\"response encoding failed\"}}");
        status = 500;
    }
    len = strlen(text);
    req->resp_body = aigw_pool_alloc(req->pool, len + 2);
    memcpy(req->resp_body, text, len);
    req->resp_body[len] = '\n';
    req->resp_len = len + 1;
    free(text);
    req->status = status;
    req->content_type = "application/json; charset=utf-8";
    return AIGW_DONE;
}

enum aigw_rc
aigw_req_json_text(struct aigw_req *req, int status, const char *text, size_t len)
{
    req->resp_body = aigw_pool_alloc(req->pool, len + 2);
    memcpy(req->resp_body, text, len);
    req->resp_body[len] = '\n';
    req->resp_len = len + 1;
    req->status = status;
    req->content_type = "application/json; charset=utf-8";
    return AIGW_DONE;
}

/* OpenAI clients read {"message", "type", "param", "code"}; aigw's own
 * fields (request_id, limit, ...) stay beside them. */
static void
openai_shape(json_t *err, int status, const char *msg)
{
    const char *type = status == 401   ? "authentication_error"
                       : status == 403 ? "permission_error"
                       : status == 404 ? "not_found_error"
                       : status == 429 ? "rate_limit_error"
                       : status < 500  ? "invalid_request_error"
                                       : "api_error";
    size_t field = strcspn(msg, ": ");

    json_object_set_new(err, "type", json_string(type));
    /* validation messages start with the field they name: "messages[0].role: ..." */
    if (status == 400 && msg[field] == ':' && field > 0)
        json_object_set_new(err, "param", json_stringn(msg, field));
    else
        json_object_set_new(err, "param", json_null());
}

enum aigw_rc
aigw_req_fail_extra(struct aigw_req *req, int status, const char *code, json_t *extra,
                    const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    json_t *err, *root;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    err = json_pack("{s:s, s:s, s:s}", "code", code, "message", msg, "request_id", req->request_id);
    if (err == NULL) /* msg was not UTF-8: never echo it */
        err = json_pack("{s:s, s:s, s:s}", "code", code, "message", code, "request_id", req->request_id);
    if (extra != NULL) {
        json_object_update(err, extra);
        json_decref(extra);
    }
    if (req->route != NULL ? req->route->openai : aigw_router_openai_path(req->url))
        openai_shape(err, status, msg);
    root = json_pack("{s:o}", "error", err);
    req->error_code = code;
    if (status == 401)
        aigw_req_add_header(req, "WWW-Authenticate",
                            req->claims.tenant[0] || aigw_req_header(req, "Authorization") ||
                                    aigw_req_header(req, "X-API-Key")
                                ? "Bearer realm=\"aigw\", error=\"invalid_token\""
                                : "Bearer realm=\"aigw\"");
    return aigw_req_json(req, status, root);
}
