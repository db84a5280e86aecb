/* body.c - parse the request body as one JSON object, strictly */
#include <jansson.h>

#include "aigw/stages.h"

int
aigw_json_depth(const char *buf, size_t len)
{
    int depth = 0, max = 0;
    bool in_str = false, esc = false;

    for (size_t i = 0; i < len; i++) {
        char ch = buf[i];

        if (in_str) {
            if (esc)
                esc = false;
            else if (ch == '\\')
                esc = true;
            else if (ch == '"')
                in_str = false;
        } else if (ch == '"') {
            in_str = true;
        } else if (ch == '{' || ch == '[') {
            if (++depth > max)
                max = depth;
        } else if (ch == '}' || ch == ']') {
            depth--;
        }
    }
    return max;
}

static void
decref(void *p)
{
    json_decref(p);
}

enum aigw_rc
aigw_stage_json_body(struct aigw_req *req)
{
    json_error_t err;
    json_t *root;

    if (req->body_len == 0) {
        req->json = json_object();
        aigw_pool_cleanup(req->pool, decref, req->json);
        return AIGW_OK;
    }
    if (aigw_json_depth(req->body, req->body_len) > req->srv->cfg.max_json_depth)
        return aigw_req_fail(req, 400, "invalid_json", "JSON nested deeper than %d levels",
                             req->srv->cfg.max_json_depth);
    root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL)
        return aigw_req_fail(req, 400, "invalid_json", "invalid JSON at line %d column %d", err.line,
                             err.column);
    aigw_pool_cleanup(req->pool, decref, root);
    if (!json_is_object(root))
        return aigw_req_fail(req, 400, "invalid_json", "the body must be a JSON object");
    req->json = root;
    return AIGW_OK;
}
