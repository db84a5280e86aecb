/* stages.h - the pipeline stages (DESIGN §2); each is an aigw_stage_fn.
 * A stage returns AIGW_OK to continue, AIGW_DONE after setting a response
 * (usually an error through aigw_req_fail), AIGW_AGAIN when it suspended. */
#ifndef AIGW_STAGES_H
#define AIGW_STAGES_H

#include "aigw/http.h"

/* Verify the bearer JWT; fills req->claims. 401 unauthenticated. */
enum aigw_rc aigw_stage_authenticate(struct aigw_req *req);

/* Load the caller's tenant (cache, else PostgreSQL under RLS) into
 * req->tenant. 403 forbidden (unknown), 403 tenant_inactive, 503. */
enum aigw_rc aigw_stage_tenant(struct aigw_req *req);

/* Parse the uploaded body as a JSON object (duplicate keys rejected, depth
 * limited) into req->json; an empty body becomes {}. 400 invalid_json. */
enum aigw_rc aigw_stage_json_body(struct aigw_req *req);

/* Nesting depth of JSON text (brackets outside strings); pure, for tests. */
int aigw_json_depth(const char *buf, size_t len);

#endif
