/* metrics.c - GET /metrics: the Prometheus text exposition (no auth: an ops route) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/api.h"
#include "aigw/metrics.h"

enum aigw_rc
aigw_api_metrics(struct aigw_req *req)
{
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    int rc;

    if (out == NULL)
        return AIGW_ERR;
    rc = aigw_metrics_render(req->srv->metrics, req->srv, out);
    if (fclose(out) != 0 || rc != 0) {
        free(text);
        return AIGW_ERR;
    }
    req->resp_body = aigw_pool_alloc(req->pool, len + 1);
    memcpy(req->resp_body, text, len + 1);
    req->resp_len = len;
    free(text);
    req->status = 200;
    req->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return AIGW_DONE;
}
