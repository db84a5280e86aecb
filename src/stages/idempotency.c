/* idempotency.c - Idempotency-Key: replay the first outcome for 24 h, 409
 * while it runs, 422 when the key comes back with a different body. Records
 * are keyed by tenant + caller + key, so one tenant can never replay another's. */
#include <jansson.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "aigw/config.h"
#include "aigw/log.h"
#include "aigw/query.h"
#include "aigw/redis.h"
#include "aigw/snapshot.h"
#include "aigw/stages.h"
#include "aigw/tenant.h"
#include "aigw/util.h"

#define IDEM_TTL_MS "86400000"

/* KEYS[1] record; ARGV[1] "P"..fingerprint, ARGV[2] pending ttl ms, ARGV[3]
 * deadline (see AIGW_REDIS_PAST_LUA: a late run would leave a pending
 * record, and the client's retry of the 503 would get 409 for minutes).
 * -> {0} when this request now owns the key, else {1, stored value};
 * 'expired' (did nothing) */
static struct aigw_redis_script begin_script = {
    .source = AIGW_REDIS_PAST_LUA "if past(ARGV[3]) then return 'expired' end\n"
                                  "local v = redis.call('GET', KEYS[1])\n"
                                  "if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return {0} end\n"
                                  "return {1, v}\n",
};

/* KEYS[1] record; ARGV[1] the request's own pending value, ARGV[2] the
 * outcome to store ('' = remove the record), ARGV[3] its ttl ms -> 1 done,
 * 0 the record is no longer this request's (its pending record expired;
 * another request may own the key now). Safe to run twice. */
static struct aigw_redis_script finish_script = {
    .source = "if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end\n"
              "if ARGV[2] == '' then redis.call('DEL', KEYS[1])\n"
              "else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end\n"
              "return 1\n",
};

void
aigw_idempotency_init(void)
{
    aigw_redis_script_init(&begin_script);
    aigw_redis_script_init(&finish_script);
}

/* Accept a structured-field string ("...") or the bare form: 1..255 visible ASCII. */
static const char *
parse_key(struct aigw_req *req, const char *hdr)
{
    size_t n = strlen(hdr);

    if (n >= 2 && hdr[0] == '"' && hdr[n - 1] == '"') {
        hdr++;
        n -= 2;
        if (memchr(hdr, '"', n) != NULL || memchr(hdr, '\\', n) != NULL)
            return NULL;
    }
    if (n == 0 || n > 255)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (hdr[i] < 0x21 || hdr[i] > 0x7e)
            return NULL;
    return aigw_pool_strndup(req->pool, hdr, n);
}

static void
fingerprint(struct aigw_req *req, char out[65])
{
    char *canon = json_dumps(req->json, JSON_COMPACT | JSON_SORT_KEYS);
    char *text = aigw_pool_printf(req->pool, "%s %s\n%s", req->method, req->route->path, canon ? canon : "");
    unsigned char md[32];

    free(canon);
    aigw_sha256(text, strlen(text), md);
    aigw_hex(md, 32, out);
}

/* Replay "D<fp>\n<status>\n<body>". */
static enum aigw_rc
replay(struct aigw_req *req, const char *stored)
{
    const char *nl1 = strchr(stored, '\n'), *nl2 = nl1 ? strchr(nl1 + 1, '\n') : NULL;
    long status;
    char st[8];

    if (nl2 == NULL || nl2 - nl1 - 1 >= (long)sizeof(st))
        return aigw_req_fail(req, 500, "internal", "corrupt idempotency record");
    memcpy(st, nl1 + 1, (size_t)(nl2 - nl1 - 1));
    st[nl2 - nl1 - 1] = '\0';
    if (!aigw_parse_long(st, 100, 599, &status))
        return aigw_req_fail(req, 500, "internal", "corrupt idempotency record");
    req->status = (int)status;
    req->resp_body = aigw_pool_strdup(req->pool, nl2 + 1);
    req->resp_len = strlen(req->resp_body);
    req->content_type = "application/json; charset=utf-8";
    req->q->from_cache = true;
    aigw_req_add_header(req, "Idempotent-Replayed", "true");
    if (status == 200) {
        /* every answer of a query route has X-Cache (API.md); the first
         * outcome's, as its body still says it */
        json_t *body = json_loads(req->resp_body, 0, NULL);

        aigw_req_add_header(req, "X-Cache", json_is_true(json_object_get(body, "cached")) ? "HIT" : "MISS");
        json_decref(body);
    }
    return AIGW_DONE;
}

enum aigw_rc
aigw_stage_idempotency(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    const char *hdr = aigw_req_header(req, "Idempotency-Key"), *key;
    char scoped[65], deadline[24];
    unsigned char md[32];
    const char *keys[1], *args[3] = {NULL, "0", deadline};
    int pending_ms;
    redisContext *rc;
    redisReply *r;
    enum aigw_rc ret = AIGW_OK;

    if (hdr == NULL)
        return AIGW_OK;
    key = parse_key(req, hdr);
    if (key == NULL)
        return aigw_req_fail(req, 400, "invalid_request", "Idempotency-Key: 1..255 visible ASCII characters");
    {
        /* the caller: its sub (an API key's is "api_key:<id>"); a token
         * that names no user (no sub or user_id, or one that is not a
         * string) is a caller of its own, told by its SHA-256 (with the
         * empty sub, every such caller of the tenant shared one record per
         * key); the NUL in front keeps it apart from any sub */
        const char *auth = aigw_req_header(req, "Authorization");
        char *scope;
        size_t len;

        if (req->claims.sub[0] != '\0' || auth == NULL) {
            scope = aigw_pool_printf(req->pool, "%s%c%s", req->claims.sub, 0, key);
            len = strlen(req->claims.sub) + 1 + strlen(key);
        } else {
            char tok[65];

            aigw_sha256(auth, strlen(auth), md);
            aigw_hex(md, 32, tok);
            scope = aigw_pool_printf(req->pool, "%c%s%c%s", 0, tok, 0, key);
            len = 1 + 64 + 1 + strlen(key);
        }
        aigw_sha256(scope, len, md);
        aigw_hex(md, 32, scoped);
    }
    q->idem_key = aigw_pool_printf(req->pool, "aigw:{%s}:idem:%s", req->tenant->id, scoped);
    fingerprint(req, q->idem_fp);
    /* the request's own pending value: its outcome replaces only that */
    q->idem_pending = aigw_pool_printf(req->pool, "P%s%s", q->idem_fp, req->usage_id);
    args[0] = q->idem_pending;
    /* as long as the request may run: a stream up to stream_timeout_ms (a
     * record sized by timeout_ms expired under a live stream, a retry ran
     * the query again and the stream's outcome was never stored) */
    pending_ms = aigw_config_call_ms(&req->snap->cfg, q->stream) + req->snap->cfg.queue_timeout_ms + 30000;
    args[1] = aigw_pool_printf(req->pool, "%d", pending_ms);
    q->idem_until_ms = aigw_now_ms() + pending_ms;
    keys[0] = q->idem_key;
    rc = aigw_redis_acquire(req->srv->redis);
    if (rc == NULL)
        goto unavailable;
    aigw_redis_deadline_arg(req->srv->pipe, deadline);
    r = aigw_redis_eval(rc, &begin_script, 1, keys, 3, args); /* 'expired': not an array, 503 */
    aigw_redis_release(req->srv->redis, rc);
    if (r == NULL) {
        /* no reply: the script may have written the pending record all
         * the same, and every retry of this 503 would get 409 for as long
         * as it lives: take it back (only if it is still this request's) */
        const char *back[3] = {q->idem_pending, "", IDEM_TTL_MS};

        aigw_redis_outbox_eval(req->srv->outbox, &finish_script, 1, keys, 3, back, q->idem_until_ms,
                               "taking back an idempotency record", NULL, NULL);
        goto unavailable;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) {
        freeReplyObject(r);
        goto unavailable;
    }
    if (r->element[0]->integer == 0) {
        q->idem_owner = true;
    } else if (r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING && r->element[1]->len >= 65) {
        const char *v = r->element[1]->str;

        if (memcmp(v + 1, q->idem_fp, 64) != 0) {
            ret = aigw_req_fail(req, 422, "idempotency_key_reused",
                                "this Idempotency-Key was used with a different request body");
        } else if (v[0] == 'P') {
            /* when to ask again (the OpenAI SDKs retry a 409 and honour
             * it): the first request's outcome is replayed once stored */
            aigw_req_add_header(req, "Retry-After", "1");
            ret = aigw_req_fail(req, 409, "idempotency_in_progress",
                                "a request with this Idempotency-Key is still being processed");
        } else {
            ret = replay(req, v + 65);
        }
    } else {
        ret = aigw_req_fail(req, 500, "internal", "corrupt idempotency record");
    }
    freeReplyObject(r);
    return ret;
unavailable:
    aigw_req_add_header(req, "Retry-After", "1");
    return aigw_req_fail(req, 503, "service_unavailable", "idempotency store is unavailable, retry shortly");
}

void
aigw_idempotency_finish(struct aigw_req *req)
{
    struct aigw_query *q = req->q;
    const char *keys[1], *args[3], *code;
    redisReply *r;

    if (q == NULL || !q->idem_owner)
        return;
    keys[0] = q->idem_key;
    args[0] = q->idem_pending;
    args[2] = IDEM_TTL_MS;
    code = req->error_code ? req->error_code : "";
    if ((req->status == 503 && !q->billed &&
         (strcmp(code, "service_unavailable") == 0 || strcmp(code, "upstream_unavailable") == 0)) ||
        (req->status >= 500 && !q->billed && atomic_load(&req->srv->stopping)) || req->status == 499 ||
        strcmp(code, "shutting_down") == 0 || strcmp(code, "quota_exhausted") == 0) {
        /* our dependency failed before the work ran, no model was free to
         * run it (a 503 that asks for a retry after Retry-After: stored, it
         * was replayed for 24 h), a failure while this instance drains (the
         * drain may have cut the request short: a waiter's 504 was replayed
         * to its retry on another instance for 24 h), or the client left
         * mid-stream, or the drain cut the stream before its end (the
         * client saw no outcome either way), or the month's quota was gone
         * (nothing ran; stored, the 429 was replayed for 24 h, also after
         * an upgrade or the month's turn gave the tenant queries again):
         * let a retry run it */
        args[1] = "";
    } else {
        args[1] = aigw_pool_printf(req->pool, "D%s\n%d\n%.*s", q->idem_fp, req->status, (int)req->resp_len,
                                   req->resp_body ? req->resp_body : "");
    }
    /* without Redis's answer, again until it takes it (a retry meanwhile
     * gets 409) or the pending record has expired anyway */
    r = aigw_redis_outbox_eval_now(req->srv->outbox, &finish_script, NULL, 1, keys, 3, args, q->idem_until_ms,
                                   "storing an idempotency record", NULL, NULL);
    if (r == NULL)
        aigw_log(LOG_WARNING, "redis: idempotency record of request %s not stored yet; retrying", req->request_id);
    freeReplyObject(r);
}
