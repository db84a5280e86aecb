/* apikey_usage.c - last_used_at of API keys, noted in memory per request and
 * written in batches by one thread. RLS stays on: one UPDATE per tenant, the
 * tenant set in the same pipeline sync as the statement. What a shutdown
 * cannot write (PostgreSQL down) is kept in <spool_dir>/PENDING_NAME, lines
 * "<key id> <tenant id> <unix second>", and noted again by the next start;
 * writing a use twice is harmless (the time never moves backwards). */
#include "aigw/apikey_usage.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aigw/apikey.h"
#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/util.h"

#define TABLE_SLOTS (2 * AIGW_APIKEY_USAGE_MAX) /* open addressing, at most half full */
#define PENDING_NAME "api-key-last-used.pending"

struct use {
    char key_id[37];           /* "" = empty slot */
    char tenant_id[37];
    int64_t at;                /* wall-clock seconds */
};

struct aigw_apikey_usage {
    struct aigw_pg_pool *pool;
    int flush_ms;
    char *pending_path;        /* uses kept across a restart; NULL: none */
    pthread_t thread;
    pthread_mutex_t lock;      /* guards table, n, stop */
    pthread_cond_t wake;       /* signalled by stop */
    struct use *table;         /* TABLE_SLOTS entries */
    size_t n;
    bool stop;
};

static const char UPDATE_SQL[] =
    "UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, to_timestamp(v.at))"
    " FROM unnest($1::uuid[], $2::bigint[]) AS v(id, at) WHERE k.id = v.id";

static size_t
probe_start(const char *key_id)
{
    return (size_t)(aigw_hash_str(key_id) % TABLE_SLOTS);
}

/* Record a use under u->lock; keeps the latest time per key. */
static void
note(struct aigw_apikey_usage *u, const char *key_id, const char *tenant_id, int64_t at)
{
    for (size_t i = probe_start(key_id), tries = 0; tries < TABLE_SLOTS; i = (i + 1) % TABLE_SLOTS, tries++) {
        struct use *s = &u->table[i];

        if (s->key_id[0] == '\0') {
            if (u->n >= AIGW_APIKEY_USAGE_MAX)
                return;
            memcpy(s->key_id, key_id, sizeof(s->key_id));
            memcpy(s->tenant_id, tenant_id, sizeof(s->tenant_id));
            s->at = at;
            u->n++;
            return;
        }
        if (strcmp(s->key_id, key_id) == 0) {
            if (at > s->at)
                s->at = at;
            return;
        }
    }
}

void
aigw_apikey_usage_touch(struct aigw_apikey_usage *u, const struct aigw_api_key *k, int64_t now)
{
    if (u == NULL)
        return;
    pthread_mutex_lock(&u->lock);
    note(u, k->id, k->tenant_id, now);
    pthread_mutex_unlock(&u->lock);
}

static int
by_tenant(const void *a, const void *b)
{
    return strcmp(((const struct use *)a)->tenant_id, ((const struct use *)b)->tenant_id);
}

/* "{a,b,c}" array literals of the ids and times of uses[0..n). malloc'd. */
static void
array_literals(const struct use *uses, size_t n, char **ids, char **ats)
{
    size_t id_cap = n * 38 + 3, at_cap = n * 21 + 3, io = 0, ao = 0;

    *ids = aigw_xmalloc(id_cap);
    *ats = aigw_xmalloc(at_cap);
    (*ids)[io++] = '{';
    (*ats)[ao++] = '{';
    for (size_t i = 0; i < n; i++) {
        io += (size_t)snprintf(*ids + io, id_cap - io, "%s%s", i ? "," : "", uses[i].key_id);
        ao += (size_t)snprintf(*ats + ao, at_cap - ao, "%s%lld", i ? "," : "", (long long)uses[i].at);
    }
    snprintf(*ids + io, id_cap - io, "}");
    snprintf(*ats + ao, at_cap - ao, "}");
}

/* One tenant's batch; 0 or -1. */
static int
write_tenant(PGconn *conn, const struct use *uses, size_t n)
{
    char *ids, *ats;
    const char *params[2];
    PGresult *r;

    array_literals(uses, n, &ids, &ats);
    params[0] = ids;
    params[1] = ats;
    r = aigw_pg_exec_tenant(conn, uses[0].tenant_id, UPDATE_SQL, 2, params);
    free(ids);
    free(ats);
    PQclear(r);
    return r != NULL ? 0 : -1;
}

/* Take every pending use out of the table; returns how many (into *out, malloc'd). */
static size_t
take(struct aigw_apikey_usage *u, struct use **out)
{
    size_t n = 0;

    *out = NULL;
    pthread_mutex_lock(&u->lock);
    if (u->n > 0) {
        *out = aigw_xmalloc(u->n * sizeof(**out));
        for (size_t i = 0; i < TABLE_SLOTS; i++)
            if (u->table[i].key_id[0] != '\0')
                (*out)[n++] = u->table[i];
        memset(u->table, 0, TABLE_SLOTS * sizeof(*u->table));
        u->n = 0;
    }
    pthread_mutex_unlock(&u->lock);
    return n;
}

static void
put_back(struct aigw_apikey_usage *u, const struct use *uses, size_t n)
{
    pthread_mutex_lock(&u->lock);
    for (size_t i = 0; i < n; i++)
        note(u, uses[i].key_id, uses[i].tenant_id, uses[i].at);
    pthread_mutex_unlock(&u->lock);
}

size_t
aigw_apikey_usage_flush(struct aigw_apikey_usage *u)
{
    struct use *uses;
    size_t n = take(u, &uses), failed = 0;
    PGconn *conn;

    if (n == 0)
        return 0;
    qsort(uses, n, sizeof(*uses), by_tenant);
    conn = aigw_pg_acquire(u->pool, 2000);
    for (size_t start = 0, end; start < n; start = end) {
        for (end = start + 1; end < n && strcmp(uses[end].tenant_id, uses[start].tenant_id) == 0; end++)
            ;
        if (conn == NULL || write_tenant(conn, uses + start, end - start) != 0) {
            put_back(u, uses + start, end - start);
            failed += end - start;
        }
    }
    aigw_pg_release(u->pool, conn);
    if (failed > 0)
        aigw_log(LOG_WARNING, "api keys: last_used_at of %zu keys not written, retrying later", failed);
    free(uses);
    return failed;
}

static void *
run(void *arg)
{
    struct aigw_apikey_usage *u = arg;
    struct timespec deadline;

    pthread_mutex_lock(&u->lock);
    while (!u->stop) {
        aigw_deadline_ms(&deadline, u->flush_ms);
        while (!u->stop && pthread_cond_timedwait(&u->wake, &u->lock, &deadline) != ETIMEDOUT)
            ;
        pthread_mutex_unlock(&u->lock);
        aigw_apikey_usage_flush(u);
        pthread_mutex_lock(&u->lock);
    }
    pthread_mutex_unlock(&u->lock);
    aigw_apikey_usage_flush(u); /* uses noted while the last round ran */
    return NULL;
}

/* Note the uses the previous run kept (before the thread starts). The file
 * stays until the next stop rewrites or removes it: after a crash its uses
 * are written again, which changes nothing. */
static void
load_pending(struct aigw_apikey_usage *u)
{
    FILE *f = fopen(u->pending_path, "r");
    char line[128];
    size_t n = 0;

    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL) {
        char *at_end;
        long long at;

        /* "<36> <36> <digits>\n"; anything else (a line cut short) is skipped */
        if (strlen(line) < 75 || line[36] != ' ' || line[73] != ' ' || !aigw_is_uuid(line, 36) ||
            !aigw_is_uuid(line + 37, 36))
            continue;
        at = strtoll(line + 74, &at_end, 10);
        if (at_end == line + 74 || *at_end != '\n' || at <= 0)
            continue;
        line[36] = line[73] = '\0';
        note(u, line, line + 37, at);
        n++;
    }
    fclose(f);
    if (n > 0)
        aigw_log(LOG_NOTICE, "api keys: last_used_at of %zu keys the previous run could not write is pending", n);
}

/* After the final flush: keep what it could not write for the next start,
 * or remove the file when nothing is left. */
static void
save_pending(struct aigw_apikey_usage *u)
{
    struct use *uses;
    size_t n = take(u, &uses);
    size_t cap = strlen(u->pending_path) + sizeof(".tmp");
    char *tmp;
    FILE *f;
    bool ok;

    if (n == 0) {
        unlink(u->pending_path);
        return;
    }
    tmp = aigw_xmalloc(cap);
    snprintf(tmp, cap, "%s.tmp", u->pending_path);
    f = fopen(tmp, "w");
    ok = f != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = fprintf(f, "%s %s %lld\n", uses[i].key_id, uses[i].tenant_id, (long long)uses[i].at) > 0;
    ok = ok && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (f != NULL && fclose(f) != 0)
        ok = false;
    ok = ok && rename(tmp, u->pending_path) == 0;
    if (ok) {
        aigw_log(LOG_WARNING, "api keys: last_used_at of %zu keys kept in %s for the next start", n,
                 u->pending_path);
    } else {
        unlink(tmp);
        aigw_log(LOG_ERR, "api keys: last_used_at of %zu keys lost: cannot write %s", n, u->pending_path);
    }
    free(tmp);
    free(uses);
}

struct aigw_apikey_usage *
aigw_apikey_usage_start(struct aigw_pg_pool *pool, int flush_ms, const char *spool_dir)
{
    struct aigw_apikey_usage *u = aigw_xcalloc(1, sizeof(*u));

    u->pool = pool;
    u->flush_ms = flush_ms;
    u->table = aigw_xcalloc(TABLE_SLOTS, sizeof(*u->table));
    pthread_mutex_init(&u->lock, NULL);
    pthread_cond_init(&u->wake, NULL);
    if (spool_dir != NULL && *spool_dir != '\0') {
        u->pending_path = aigw_path_join(spool_dir, PENDING_NAME);
        load_pending(u);
    }
    if (pthread_create(&u->thread, NULL, run, u) != 0)
        abort();
    return u;
}

void
aigw_apikey_usage_stop(struct aigw_apikey_usage *u)
{
    if (u == NULL)
        return;
    pthread_mutex_lock(&u->lock);
    u->stop = true;
    pthread_cond_signal(&u->wake);
    pthread_mutex_unlock(&u->lock);
    pthread_join(u->thread, NULL); /* it flushes what is pending before it ends */
    if (u->pending_path != NULL)
        save_pending(u);
    pthread_cond_destroy(&u->wake);
    pthread_mutex_destroy(&u->lock);
    free(u->pending_path);
    free(u->table);
    free(u);
}
