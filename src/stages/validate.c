/* validate.c - parse and check the body of /api/ai/query and /api/ai/recommendation */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "aigw/api.h"
#include "aigw/config.h"
#include "aigw/query.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

static void
free_ptr(void *p)
{
    free(p);
}

/* Whether a Cache-Control value has the no-cache directive: its names are
 * compared case-insensitively (RFC 9111 5.2), and a quoted argument is
 * skipped (private="no-cache" names a header field, not the directive). */
static bool
has_no_cache(const char *cc)
{
    const char *p = cc;

    while (p != NULL && *p != '\0') {
        size_t n;

        p += strspn(p, " \t,");
        n = strcspn(p, " \t,=");
        if (n == 8 && strncasecmp(p, "no-cache", 8) == 0)
            return true;
        p += n;
        p += strspn(p, " \t=");
        if (*p == '"') {
            for (p++; *p != '\0' && *p != '"'; p++)
                if (*p == '\\' && p[1] != '\0')
                    p++;
        }
        p += strcspn(p, ",");
    }
    return false;
}

struct aigw_query *
aigw_query_new(struct aigw_req *req)
{
    struct aigw_query *q = aigw_pool_alloc(req->pool, sizeof(*q));
    const char *cc = aigw_req_header(req, "Cache-Control");

    q->upstream_ms = -1;
    q->queries_remaining = -1;
    q->sf_pre = -1;
    q->quota_pre = -1;
    q->no_cache = has_no_cache(cc);
    q->respond = aigw_api_query;
    req->q = q;
    return q;
}

/* Shared tail: question -> normalized form, hashes, type. */
static enum aigw_rc
set_question(struct aigw_req *req, struct aigw_query *q, const char *question, int qtype)
{
    const struct aigw_tenant *t = req->tenant;
    char *trimmed, *normalized;
    size_t len;

    /* the white space a blank question is made of: ASCII (form feed and
     * vertical tab too) and the Unicode spaces (U+00A0, U+3000, ...); the
     * 4000 characters are counted without it, and the model is not sent it.
     * Nothing visible at all (zero-width spaces, a BOM, word joiners,
     * control characters) is blank too: it went to the model and was billed */
    question = aigw_utf8_trim(question, &len);
    trimmed = aigw_pool_strndup(req->pool, question, len);
    normalized = aigw_query_normalize(trimmed);
    aigw_pool_cleanup(req->pool, free_ptr, normalized);
    if (len == 0 || !aigw_utf8_has_visible(trimmed))
        return aigw_req_fail(req, 400, "invalid_request", "question: must not be empty or blank");
    if (aigw_utf8_chars(trimmed) > AIGW_QUESTION_MAX_CHARS)
        return aigw_req_fail(req, 400, "invalid_request", "question: at most %d characters",
                             AIGW_QUESTION_MAX_CHARS);
    q->question = trimmed;
    q->normalized = normalized;
    q->qtype = qtype >= 0 ? qtype : aigw_query_classify(q->normalized);
    {
        unsigned char md[32];

        aigw_sha256(q->normalized, strlen(q->normalized), md);
        aigw_hex(md, 32, q->question_sha256);
    }
    aigw_query_cache_hex(false, t->id, q->qtype, q->normalized, req->srv->cfg.model, t->max_tokens, q->cache_hex);
    return AIGW_OK;
}

/* "stream": absent, null or a boolean. */
static enum aigw_rc
read_stream(struct aigw_req *req, struct aigw_query *q)
{
    json_t *stream = json_object_get(req->json, "stream");

    if (stream == NULL || json_is_null(stream))
        return AIGW_OK;
    if (!json_is_boolean(stream))
        return aigw_req_fail(req, 400, "invalid_request", "stream: must be a boolean");
    q->stream = json_is_true(stream);
    return AIGW_OK;
}

enum aigw_rc
aigw_stage_validate_query(struct aigw_req *req)
{
    struct aigw_query *q = aigw_query_new(req);
    json_t *question = json_object_get(req->json, "question");
    json_t *type = json_object_get(req->json, "query_type");
    int qtype = -1;
    enum aigw_rc rc;

    q->route_label = "query";
    if (question == NULL || json_is_null(question))
        return aigw_req_fail(req, 400, "invalid_request", "question: is required");
    if (!json_is_string(question))
        return aigw_req_fail(req, 400, "invalid_request", "question: must be a string");
    if (strlen(json_string_value(question)) != json_string_length(question))
        return aigw_req_fail(req, 400, "invalid_request", "question: must not contain NUL");
    if (type != NULL && !json_is_null(type)) {
        if (!json_is_string(type) || (qtype = aigw_query_type_index(json_string_value(type))) < 0)
            return aigw_req_fail(req, 400, "invalid_request",
                                 "query_type: must be one of knowledge, sales, inventory, patient_analytics");
    }
    if ((rc = read_stream(req, q)) != AIGW_OK)
        return rc;
    return set_question(req, q, json_string_value(question), qtype);
}

enum aigw_rc
aigw_stage_validate_recommendation(struct aigw_req *req)
{
    struct aigw_query *q = aigw_query_new(req);
    json_t *product = json_object_get(req->json, "product_type");
    json_t *rx = json_object_get(req->json, "prescription");
    const char *pt = json_string_value(product);
    char *rx_text = NULL, *question;
    size_t pt_len = 0;
    enum aigw_rc rc;

    q->route_label = "recommendation";
    if ((rc = read_stream(req, q)) != AIGW_OK)
        return rc;
    /* characters, not bytes; blank (white space of any kind, line breaks
     * too, or nothing visible: zero-width spaces, a BOM, ...) is no
     * product: the template around it would still make a question, sent
     * and billed */
    if (pt != NULL)
        aigw_utf8_trim(pt, &pt_len);
    if (pt == NULL || strlen(pt) != json_string_length(product) || pt_len == 0 || !aigw_utf8_has_visible(pt) ||
        aigw_utf8_chars(pt) > 200)
        return aigw_req_fail(req, 400, "invalid_request",
                             "product_type: a string of 1..200 characters, not blank, is required");
    if (rx != NULL && !json_is_null(rx) && !json_is_object(rx))
        return aigw_req_fail(req, 400, "invalid_request", "prescription: must be an object");
    if (rx != NULL && json_is_object(rx)) {
        rx_text = json_dumps(rx, JSON_COMPACT | JSON_SORT_KEYS);
        if (rx_text == NULL || strlen(rx_text) > 2000) {
            free(rx_text);
            return aigw_req_fail(req, 400, "invalid_request", "prescription: at most 2000 bytes");
        }
    }
    question = aigw_pool_printf(req->pool,
                                "Recommend a suitable %s for this patient and explain why in plain language. "
                                "Prescription: %s",
                                json_string_value(product), rx_text ? rx_text : "not given");
    free(rx_text);
    rc = set_question(req, q, question, aigw_query_type_index("knowledge"));
    return rc;
}

enum aigw_rc
aigw_stage_authorize(struct aigw_req *req)
{
    const struct aigw_tenant *t = req->tenant;
    struct aigw_query *q = req->q;
    unsigned need = 1u << q->qtype; /* feature bits follow the query type order */

    if (!(t->features & need)) {
        const char *tier = aigw_tenant_required_tier(t, q->qtype); /* NULL: no plan has it */

        return aigw_req_fail_extra(req, 403, "feature_not_in_plan",
                                   json_pack("{s:s?, s:s}", "required_tier", tier, "feature",
                                             aigw_query_type_names[q->qtype]),
                                   "%s questions are not in the %s plan", aigw_query_type_names[q->qtype], t->tier);
    }
    if (q->qtype == aigw_query_type_index("patient_analytics") && aigw_query_asks_pii(q->normalized))
        return aigw_req_fail(req, 403, "pii_not_allowed",
                             "patient analytics answers aggregates only, never personal identifiers");
    return AIGW_OK;
}
