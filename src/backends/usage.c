/* usage.c - usage rows: the spool is the queue
 *
 * aigw_usage_record appends each row as one JSON line (keys = the columns of
 * ai_usage_logs) with one write(2) to the current spool segment
 * <spool_dir>/usage-<seq>.jsonl. Once write returns the row is in the kernel,
 * so a kill -9 of aigw cannot lose it. One writer thread tails the segments
 * oldest first, inserts their rows in per-tenant batches over its own
 * PostgreSQL connection and unlinks a closed segment once every row in it is
 * committed (or rejected, see below).
 *
 * How far a segment is committed is kept in memory only: after a crash every
 * segment left is replayed from its start. That is safe because the row id is
 * the primary key: a batch is sent as a plain INSERT, and when that fails
 * with unique_violation (rows of the batch already there: a replay) it is
 * sent again as INSERT ... ON CONFLICT (id) DO NOTHING. The quota counter in
 * tenants is raised by the rows the INSERT RETURNs, i.e. only by rows
 * inserted now, so a replay adds neither a row nor a count.
 *
 * What goes to PostgreSQL: the tenant's rows of a batch as 19 arrays, one
 * per column, in PostgreSQL's binary array format (usage_line.c reads the
 * lines into them, strictly: only the exact shape aigw_usage_line writes),
 * inserted by INSERT ... SELECT * FROM unnest($1::uuid[], ...). In 500-row
 * batches PostgreSQL spends ~13.5 us of CPU per row on that statement
 * against ~25 us for the lines as one JSON array through
 * jsonb_populate_recordset (through this writer, its backend's schedstat:
 * ~21.5 against ~36 us), the difference being JSON parsing and text-to-type
 * conversion; reading the lines costs aigw ~0.25 us each. The JSON statement
 * stays for a tenant's batch with any line the binary reader refuses (an
 * older format, a hand-edited line, an odd value): PostgreSQL judges those as
 * it always did. It is also what isolate() uses row by row, when either
 * statement failed on a sound connection.
 *
 * PostgreSQL down: rows wait on disk, the writer holds one batch and retries
 * with backoff, so memory stays bounded. A row PostgreSQL refuses for good
 * (unknown tenant, bad value) is found by retrying its batch row by row and
 * moved to <spool_dir>/rejected.jsonl, so it cannot block the others. A
 * tenant deleted between the tenant lookup and the INSERT fails the statement
 * with 23503: since sql/008 a statement-level trigger on ai_usage_logs locks
 * the tenant row FOR KEY SHARE once per statement (the foreign key it
 * replaces did that once per row, ~4 us of CPU per row), so a concurrent
 * tenant DELETE either waits for this transaction and removes its rows, or
 * makes the batch fail and its rows go to rejected.jsonl. */
#include "aigw/usage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/pg.h"
#include "aigw/usage_line.h"
#include "aigw/util.h"

#define SEG_MAX_BYTES ((size_t)4 << 20) /* rotate the current segment at this size */
#define SEG_MAX_AGE_MS 10000            /* ... or, once all its rows are committed, at this age */
#define IDLE_WAIT_MS 1000               /* writer wake-up with nothing to do (rotation, sync) */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define READ_MIN ((size_t)64 << 10)

/* A plain INSERT first: a duplicate id only comes from a replay (the ids are
 * aigw's own UUIDv7s), and ON CONFLICT costs PostgreSQL ~12k instructions
 * per row (a speculative insertion: the index is checked before the heap
 * tuple goes in, then the insertion is confirmed) whether or not anything
 * conflicts. When it fails with unique_violation the batch is sent again
 * with ON CONFLICT (id) DO NOTHING, which inserts the rows not yet there. */
static const char INSERT_BIN_SQL[] = AIGW_USAGE_INSERT_BIN_HEAD AIGW_USAGE_RETURNING_TAIL;
/* ... prepared once per connection: parsing, analysing and planning it
 * cost PostgreSQL ~2.4M instructions per statement, ~24k per row in
 * 100-row batches. */
#define INSERT_STMT_PREFIX "aigw_usage_insert_"
/* The statement's name carries a digest of its text: a pooler in front
 * (PgBouncer in transaction mode) can hand the writer a server session on
 * which another aigw, of another version, prepared its own statement, and
 * a shared name would run that one's SQL. */
static void
insert_stmt_name(char out[64])
{
    unsigned char md[32];
    char hex[65];

    aigw_sha256(INSERT_BIN_SQL, sizeof(INSERT_BIN_SQL) - 1, md);
    aigw_hex(md, 32, hex);
    aigw_concat(out, 64, INSERT_STMT_PREFIX, NULL);
    memcpy(out + strlen(INSERT_STMT_PREFIX), hex, 16);
    out[strlen(INSERT_STMT_PREFIX) + 16] = '\0';
}
static const char INSERT_BIN_REPLAY_SQL[] = AIGW_USAGE_INSERT_BIN_HEAD AIGW_USAGE_ON_CONFLICT_TAIL;

/* For lines the binary reader does not take, and row by row in isolate():
 * $1 is a JSON array of spool lines. jsonb_populate_recordset matches keys
 * to column names (a missing key is NULL) and PostgreSQL judges every value. */
static const char INSERT_SQL[] =
    "WITH ins AS (INSERT INTO ai_usage_logs (" AIGW_USAGE_COLUMNS ")"
    " SELECT " AIGW_USAGE_COLUMNS " FROM jsonb_populate_recordset(NULL::ai_usage_logs, $1::jsonb)"
    AIGW_USAGE_ON_CONFLICT_TAIL;

#define UNIQUE_VIOLATION "23505"
#define NO_SUCH_STATEMENT "26000"   /* invalid_sql_statement_name */
#define DUPLICATE_STATEMENT "42P05" /* duplicate_prepared_statement */

/* Same as pg.c's, but here we read the result: '' means unknown tenant. */
static const char SET_TENANT_SQL[] =
    "SELECT set_config('app.current_tenant', COALESCE(aigw_tenant_id($1)::text, ''), true)";

struct seg {
    struct seg *next;
    char *path;
    int fd;                /* O_RDWR|O_APPEND while current, O_RDONLY if left by an earlier run */
    atomic_size_t size;    /* bytes of complete rows; grows under u->lock after the write */
    size_t done;           /* bytes whose rows are committed, rejected or skipped (writer only) */
    bool closed;           /* no more appends (writer only) */
    bool torn;             /* ends in part of a row that could not be cut off (under u->lock) */
    int64_t opened_ms;
};

/* A row the spool refused (disk full, I/O error): kept until it takes it. */
struct held {
    struct held *next;
    char *line;
    size_t len;
};

struct brow {
    const char *line;      /* into batch.buf, without the '\n' */
    size_t len;
    char id[37];
    char tenant[37];
    bool bad;              /* not a usage row: goes to rejected.jsonl */
    const char *why;       /* why it is bad */
    bool done;
};

/* The lines [seg->done, end) being written; kept across retries so that a
 * row already rejected is not sent (nor rejected) again. */
struct batch {
    struct seg *seg;       /* NULL = empty */
    size_t end;
    char *buf;
    size_t cap;
    struct brow *rows;
    size_t n;
};

struct aigw_usage {
    char *dir;
    char *db_url;
    int dir_fd;            /* fsync after create/unlink; holds the flock */
    int batch_rows;
    int flush_ms;
    pthread_t thread;
    pthread_mutex_t lock;  /* guards cur, appends to it, held, pending, stop, deadline_ms */
    pthread_cond_t wake;   /* CLOCK_MONOTONIC */
    pthread_cond_t written_cv; /* CLOCK_MONOTONIC: a batch is done (aigw_usage_sync) */
    size_t recorded;       /* lines ever counted in the backlog, in spool order (under lock) */
    size_t written;        /* of them, the lines of the batches done (under lock) */
    size_t syncing;        /* callers waiting in aigw_usage_sync: no waiting for a full batch */
    struct seg *segs;      /* oldest first, cur last; the list belongs to the writer */
    struct seg *cur;
    uint64_t last_seq;
    size_t pending;        /* rows appended since the writer last looked */
    struct held *held;     /* rows the spool refused, oldest first; held_tail: the end */
    struct held **held_tail;
    size_t held_bytes;
    size_t held_max;       /* usage.memory_max_kb */
    atomic_bool full;      /* held rows reached held_max: new AI requests are refused */
    size_t lost;           /* unbilled rows dropped since the spool last took one (held_max reached) */
    bool failing;          /* a spool write failed: logged once, until one succeeds */
    int64_t rotate_retry_ms; /* a new segment could not be created: not again before (writer only) */
    bool stop;
    int64_t deadline_ms;
    size_t synced;         /* cur's size at its last fdatasync (writer only) */
    int64_t synced_ms;
    PGconn *conn;          /* the writer's own connection */
    char stmt[64];         /* INSERT_BIN_SQL's statement name (insert_stmt_name) */
    bool prepared;         /* INSERT_BIN_SQL is prepared on conn as stmt */
    bool unnamed;          /* conn's sessions are shared (a pooler): no named statement */
    bool db_down;          /* logged once per outage */
    struct batch b;
    struct aigw_usage_arrays arrays; /* the binary statement's parameters (writer only) */
    atomic_size_t backlog;
    atomic_size_t spool_bytes;
};

static const char *
errstr(int err, char *buf, size_t cap)
{
    return strerror_r(err, buf, cap);
}

static void
abs_time(struct timespec *ts, int64_t mono_ms)
{
    ts->tv_sec = (time_t)(mono_ms / 1000);
    ts->tv_nsec = (long)(mono_ms % 1000) * 1000000L;
}

/* ---- the spool directory and its segments ---- */

static int
make_dir(const char *dir)
{
    char *p = aigw_xstrdup(dir);
    int ret = 0;

    for (char *s = p + 1;; s++) {
        char c = *s;

        if (c != '/' && c != '\0')
            continue;
        *s = '\0';
        if (mkdir(p, 0700) != 0 && errno != EEXIST)
            ret = -1;
        *s = c;
        if (c == '\0' || ret != 0)
            break;
    }
    free(p);
    return ret;
}

/* Create (if needed), open and lock the spool directory: two processes
 * sharing one spool would unlink each other's segments. */
static int
open_spool(struct aigw_usage *u)
{
    char eb[128];

    if (u->dir[0] == '\0') {
        aigw_log(LOG_ERR, "usage: no spool directory configured");
        return -1;
    }
    if (make_dir(u->dir) != 0) {
        aigw_log(LOG_ERR, "usage: cannot create spool directory %s: %s", u->dir, errstr(errno, eb, sizeof(eb)));
        return -1;
    }
    u->dir_fd = open(u->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (u->dir_fd < 0) {
        aigw_log(LOG_ERR, "usage: cannot open spool directory %s: %s", u->dir, errstr(errno, eb, sizeof(eb)));
        return -1;
    }
    if (flock(u->dir_fd, LOCK_EX | LOCK_NB) != 0) {
        aigw_log(LOG_ERR, "usage: spool directory %s is in use by another process", u->dir);
        return -1;
    }
    return 0;
}

static char *
seg_path(const struct aigw_usage *u, const char *name)
{
    return aigw_path_join(u->dir, name);
}

static void
seg_append(struct aigw_usage *u, struct seg *s)
{
    struct seg **pp = &u->segs;

    while (*pp != NULL)
        pp = &(*pp)->next;
    *pp = s;
}

/* A new, empty segment; its name sorts after every earlier one, also across
 * restarts (wall-clock microseconds, bumped past the last seen). */
static struct seg *
seg_create(struct aigw_usage *u)
{
    uint64_t seq = (uint64_t)aigw_wall_us();
    char name[64], eb[128];
    struct seg *s;
    int fd;

    if (seq <= u->last_seq)
        seq = u->last_seq + 1;
    u->last_seq = seq;
    snprintf(name, sizeof(name), "usage-%020llu.jsonl", (unsigned long long)seq);
    s = aigw_xcalloc(1, sizeof(*s));
    s->path = seg_path(u, name);
    fd = open(s->path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        aigw_log(LOG_ERR, "usage: cannot create %s: %s", s->path, errstr(errno, eb, sizeof(eb)));
        free(s->path);
        free(s);
        return NULL;
    }
    fsync(u->dir_fd); /* the name itself must survive a power loss */
    s->fd = fd;
    atomic_init(&s->size, 0);
    s->opened_ms = aigw_now_ms();
    return s;
}

/* Close a segment; unlink it when all its rows are handled. Returns the
 * number of bytes still to replay. */
static size_t
seg_free(struct aigw_usage *u, struct seg *s)
{
    size_t size = atomic_load(&s->size), left = size - s->done;

    close(s->fd);
    if (left == 0 && unlink(s->path) == 0)
        atomic_fetch_sub(&u->spool_bytes, size);
    free(s->path);
    free(s);
    return left;
}

/* Unlink closed segments whose rows are all handled. */
static void
collect(struct aigw_usage *u)
{
    struct seg **pp = &u->segs;
    bool any = false;

    while (*pp != NULL) {
        struct seg *s = *pp;

        if (s->closed && s->done == atomic_load(&s->size)) {
            *pp = s->next;
            seg_free(u, s);
            any = true;
        } else {
            pp = &s->next;
        }
    }
    if (any)
        fsync(u->dir_fd);
}

static size_t
count_lines(int fd, const char *path)
{
    char buf[65536];
    size_t lines = 0;
    off_t off = 0;
    ssize_t n;

    while ((n = pread(fd, buf, sizeof(buf), off)) > 0) {
        for (const char *p = buf; (p = memchr(p, '\n', (size_t)(buf + n - p))) != NULL; p++)
            lines++;
        off += n;
    }
    if (n < 0)
        aigw_log(LOG_ERR, "usage: reading %s failed", path);
    return lines;
}

/* Queue a segment left by an earlier run (crash or unfinished stop). */
static void
add_old_segment(struct aigw_usage *u, const char *name)
{
    struct seg *s = aigw_xcalloc(1, sizeof(*s));
    struct stat st;
    char eb[128];
    size_t lines;

    s->path = seg_path(u, name);
    s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (s->fd < 0 || fstat(s->fd, &st) != 0) {
        aigw_log(LOG_ERR, "usage: cannot read %s (left in place): %s", s->path, errstr(errno, eb, sizeof(eb)));
        if (s->fd >= 0)
            close(s->fd);
        free(s->path);
        free(s);
        return;
    }
    atomic_init(&s->size, (size_t)st.st_size);
    atomic_fetch_add(&u->spool_bytes, (size_t)st.st_size);
    s->closed = true;
    lines = count_lines(s->fd, s->path);
    atomic_fetch_add(&u->backlog, lines);
    u->recorded += lines; /* before the writer starts */
    if (lines > 0)
        aigw_log(LOG_NOTICE, "usage: replaying %zu rows from %s", lines, s->path);
    seg_append(u, s); /* an empty one is unlinked by the first collect() */
}

struct old_name {
    uint64_t seq;
    char *name;
};

static int
cmp_old(const void *a, const void *b)
{
    uint64_t x = ((const struct old_name *)a)->seq, y = ((const struct old_name *)b)->seq;

    return x < y ? -1 : x > y;
}

/* "usage-<digits>.jsonl" -> seq */
static bool
parse_seg_name(const char *name, uint64_t *seq)
{
    const char *p = name + 6;
    char *end;

    if (strncmp(name, "usage-", 6) != 0 || *p < '0' || *p > '9')
        return false;
    errno = 0;
    *seq = strtoull(p, &end, 10);
    return errno == 0 && strcmp(end, ".jsonl") == 0;
}

/* Queue every segment of earlier runs, oldest first. */
static int
load_old_segments(struct aigw_usage *u)
{
    DIR *d = opendir(u->dir);
    struct old_name *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;

    if (d == NULL)
        return -1;
    while ((e = readdir(d)) != NULL) {
        uint64_t seq;

        if (!parse_seg_name(e->d_name, &seq))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = aigw_xrealloc(v, cap * sizeof(*v));
        }
        v[n].seq = seq;
        v[n++].name = aigw_xstrdup(e->d_name);
    }
    closedir(d);
    if (n > 0)
        qsort(v, n, sizeof(*v), cmp_old);
    for (size_t i = 0; i < n; i++) {
        add_old_segment(u, v[i].name);
        if (v[i].seq > u->last_seq)
            u->last_seq = v[i].seq;
        free(v[i].name);
    }
    free(v);
    return 0;
}

/* ---- recording (request threads) ---- */

/* With u->lock held: a spool write failed (logged once until one succeeds). */
static int
spool_failed(struct aigw_usage *u, const struct seg *s, int err)
{
    char eb[128];

    if (!u->failing)
        aigw_log(LOG_ERR, "usage: spool write to %s failed: %s; rows wait in memory until the spool takes them",
                 s->path, errstr(err, eb, sizeof(eb)));
    u->failing = true;
    return -1;
}

/* With u->lock held: one write (looping only on short writes, which nobody
 * else can interleave with under the lock). A failed write is cut back off
 * so that the next row does not get glued onto half a row; if even that
 * fails, the piece is ended with a '\n' before the next row, a line of its
 * own that the writer rejects. fresh: a row not counted in the backlog yet
 * (not one that waited in memory). */
static int
append_line(struct aigw_usage *u, const char *line, size_t len, bool fresh)
{
    struct seg *s = u->cur;
    size_t old = atomic_load(&s->size), off;
    int err = 0;

    if (s->torn) {
        if (aigw_write_all(s->fd, "\n", 1, &err) != 1)
            return spool_failed(u, s, err);
        s->torn = false;
        atomic_store(&s->size, ++old);
        atomic_fetch_add(&u->spool_bytes, 1);
        atomic_fetch_add(&u->backlog, 1); /* one more line for the writer */
        u->recorded++;
    }
    if ((off = aigw_write_all(s->fd, line, len, &err)) < len) {
        if (off > 0 && ftruncate(s->fd, (off_t)old) != 0) {
            /* half a row stays: publish it, ended by the next append */
            aigw_log(LOG_CRIT, "usage: cannot cut a partial row off %s", s->path);
            atomic_store(&s->size, old + off);
            atomic_fetch_add(&u->spool_bytes, off);
            s->torn = true;
        }
        return spool_failed(u, s, err);
    }
    atomic_store(&s->size, old + len);
    atomic_fetch_add(&u->spool_bytes, len);
    if (fresh) {
        atomic_fetch_add(&u->backlog, 1);
        u->recorded++;
    }
    if (u->failing && u->lost > 0)
        aigw_log(LOG_WARNING, "usage: the spool takes rows again; %zu rows of requests not billed were dropped "
                 "meanwhile", u->lost);
    else if (u->failing)
        aigw_log(LOG_NOTICE, "usage: the spool takes rows again");
    u->failing = false;
    u->lost = 0;
    /* wake an idle writer at the first row, a waiting one at a full batch */
    if (++u->pending == 1 || u->pending == (size_t)u->batch_rows)
        pthread_cond_signal(&u->wake);
    return 0;
}

/* With u->lock held: keep a row the spool refused (line is malloc'd, taken
 * over). Once held_max bytes wait, new AI requests are refused (see
 * aigw_usage_accepting) and only billed rows are still kept: those of
 * requests admitted before, so their number is bounded by the requests in
 * flight. -1 when the row (not billed) is dropped. */
static int
hold(struct aigw_usage *u, char *line, size_t len, bool billed)
{
    struct held *h;

    if (u->held_bytes + len > u->held_max) {
        if (!atomic_load_explicit(&u->full, memory_order_relaxed))
            aigw_log(LOG_CRIT, "usage: the spool refuses writes and %zu bytes of rows wait in memory: AI requests "
                     "are refused with 503 until it takes rows again", u->held_bytes);
        atomic_store_explicit(&u->full, true, memory_order_relaxed);
        if (!billed) {
            u->lost++;
            return -1;
        }
    }
    h = aigw_xmalloc(sizeof(*h));
    h->next = NULL;
    h->line = line;
    h->len = len;
    *u->held_tail = h;
    u->held_tail = &h->next;
    u->held_bytes += len;
    atomic_fetch_add(&u->backlog, 1);
    u->recorded++; /* in spool order: held rows go before any later row */
    return 0;
}

/* With u->lock held: append the rows that wait in memory, oldest first;
 * 0 when none is left. */
static int
flush_held(struct aigw_usage *u)
{
    while (u->held != NULL) {
        struct held *h = u->held;

        if (append_line(u, h->line, h->len, false) != 0)
            return -1;
        u->held = h->next;
        if (u->held == NULL)
            u->held_tail = &u->held;
        u->held_bytes -= h->len;
        free(h->line);
        free(h);
    }
    atomic_store_explicit(&u->full, false, memory_order_relaxed);
    return 0;
}

int
aigw_usage_record(struct aigw_usage *u, struct aigw_usage_row *row)
{
    size_t len = 0;
    char *line;
    int ret = 0;

    if (u == NULL || row == NULL)
        return -1;
    if (row->id[0] == '\0')
        aigw_uuid7(row->id);
    if (row->created_at_us == 0)
        row->created_at_us = aigw_wall_us();
    line = aigw_usage_line(row, &len);
    if (line == NULL) {
        aigw_log(LOG_ERR, "usage: cannot serialize usage row %s", row->id);
        return -1;
    }
    pthread_mutex_lock(&u->lock);
    if ((u->held == NULL || flush_held(u) == 0) && append_line(u, line, len, true) == 0) {
        free(line);
    } else if ((ret = hold(u, line, len, row->billed)) != 0) {
        free(line);
    }
    pthread_mutex_unlock(&u->lock);
    return ret;
}

/* ---- the writer: reading the spool ---- */

static void
row_finished(struct aigw_usage *u, struct brow *row)
{
    row->done = true;
    atomic_fetch_sub(&u->backlog, 1);
}

/* id and tenant_id are all the writer needs to know here (the values are
 * read, or left to PostgreSQL, when the batch is sent). Lines written by
 * aigw_usage_line start with a fixed prefix, read without a JSON parse;
 * anything else goes through jansson. */
static bool
parse_row_fast(struct brow *row)
{
    static const char a[] = "{\"id\":\"", b[] = "\",\"tenant_id\":\"";
    const char *p = row->line;

    if (row->len < sizeof(a) - 1 + 36 + sizeof(b) - 1 + 37 || memcmp(p, a, sizeof(a) - 1) != 0)
        return false;
    p += sizeof(a) - 1;
    if (!aigw_is_uuid(p, 36) || memcmp(p + 36, b, sizeof(b) - 1) != 0)
        return false;
    if (!aigw_is_uuid(p + 36 + sizeof(b) - 1, 36) || p[36 + sizeof(b) - 1 + 36] != '"')
        return false;
    memcpy(row->id, p, 36);
    row->id[36] = '\0';
    memcpy(row->tenant, p + 36 + sizeof(b) - 1, 36);
    row->tenant[36] = '\0';
    row->bad = false;
    row->why = NULL;
    return true;
}

static void
parse_row(struct brow *row)
{
    json_t *o;

    if (parse_row_fast(row))
        return;
    o = json_loadb(row->line, row->len, 0, NULL);
    const char *id = json_string_value(json_object_get(o, "id"));
    const char *tenant = json_string_value(json_object_get(o, "tenant_id"));

    row->bad = id == NULL || tenant == NULL || !aigw_is_uuid(id, strlen(id)) ||
               !aigw_is_uuid(tenant, strlen(tenant));
    row->why = row->bad ? "not a usage row" : NULL;
    snprintf(row->id, sizeof(row->id), "%s", row->bad ? "-" : id);
    snprintf(row->tenant, sizeof(row->tenant), "%s", row->bad ? "-" : tenant);
    json_decref(o);
}

/* Turn the complete lines at the start of buf into batch rows; returns the
 * bytes consumed. Empty lines are nothing to write. */
static size_t
split_lines(struct aigw_usage *u, const char *buf, size_t len)
{
    struct batch *b = &u->b;
    size_t off = 0;
    const char *nl;

    while (b->n < (size_t)u->batch_rows && (nl = memchr(buf + off, '\n', len - off)) != NULL) {
        struct brow *row = &b->rows[b->n++];

        row->line = buf + off;
        row->len = (size_t)(nl - row->line);
        row->done = false;
        off += row->len + 1;
        if (row->len == 0)
            row_finished(u, row);
        else
            parse_row(row);
    }
    return off;
}

static bool
pread_all(int fd, char *buf, size_t len, size_t off)
{
    size_t got = 0;

    while (got < len) {
        ssize_t n = pread(fd, buf + got, len - got, (off_t)(off + got));

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        got += (size_t)n;
    }
    return true;
}

/* Read the next lines of the oldest segment with unread rows into the batch.
 * Returns 1 when a batch was read, 0 when nothing is left, -1 on a read error. */
static int
fill_batch(struct aigw_usage *u)
{
    struct batch *b = &u->b;
    struct seg *s = u->segs;
    size_t avail, want;

    while (s != NULL && s->done >= atomic_load(&s->size))
        s = s->next;
    if (s == NULL)
        return 0;
    avail = atomic_load(&s->size) - s->done;
    for (;;) {
        want = avail < b->cap ? avail : b->cap;
        if (!pread_all(s->fd, b->buf, want, s->done)) {
            aigw_log(LOG_ERR, "usage: reading %s failed", s->path);
            return -1;
        }
        if (memchr(b->buf, '\n', want) != NULL || want == avail)
            break;
        b->cap *= 2; /* a line longer than the buffer */
        b->buf = aigw_xrealloc(b->buf, b->cap);
    }
    b->seg = s;
    b->n = 0;
    b->end = s->done + split_lines(u, b->buf, want);
    if (b->end == s->done) {
        /* no '\n' up to the end: the last row of a crashed run, half written */
        aigw_log(LOG_WARNING, "usage: %s: skipping a partial last line (%zu bytes)", s->path, avail);
        b->end = s->done + avail;
    }
    return 1;
}

/* ---- the writer: PostgreSQL ---- */

static bool
conn_usable(PGconn *c)
{
    return c != NULL && PQstatus(c) == CONNECTION_OK && PQpipelineStatus(c) == PQ_PIPELINE_OFF &&
           PQtransactionStatus(c) == PQTRANS_IDLE;
}

static void
db_lost(struct aigw_usage *u)
{
    PQfinish(u->conn);
    u->conn = NULL;
    u->prepared = false;
    if (!u->db_down)
        aigw_log(LOG_WARNING, "usage: PostgreSQL unavailable; %zu rows wait in the spool",
                 atomic_load(&u->backlog));
    u->db_down = true;
}

static int
ensure_conn(struct aigw_usage *u)
{
    if (conn_usable(u->conn))
        return 0;
    PQfinish(u->conn);
    u->prepared = false; /* a new connection has no prepared statement */
    u->conn = aigw_pg_connect(u->db_url);
    if (u->conn == NULL) {
        db_lost(u);
        return -1;
    }
    if (u->db_down)
        aigw_log(LOG_NOTICE, "usage: PostgreSQL is back; writing %zu rows", atomic_load(&u->backlog));
    u->db_down = false;
    return 0;
}

/* An unfinished, sound row of tenant. */
static bool
of_tenant(const struct brow *r, const char *tenant)
{
    return !r->done && !r->bad && strcmp(r->tenant, tenant) == 0;
}

static bool
row_wanted(const struct brow *r, const char *tenant, const struct brow *only)
{
    if (only != NULL)
        return r == only;
    return tenant != NULL && of_tenant(r, tenant);
}

/* "[line,line,...]" of the batch's unfinished rows of tenant (or just one). */
static char *
json_array_of(const struct batch *b, const char *tenant, const struct brow *only)
{
    size_t len = 2, pos = 0;
    char *out;

    for (size_t i = 0; i < b->n; i++)
        if (row_wanted(&b->rows[i], tenant, only))
            len += b->rows[i].len + 1;
    out = aigw_xmalloc(len + 1);
    out[pos++] = '[';
    for (size_t i = 0; i < b->n; i++) {
        const struct brow *r = &b->rows[i];

        if (!row_wanted(r, tenant, only))
            continue;
        if (pos > 1)
            out[pos++] = ',';
        memcpy(out + pos, r->line, r->len);
        pos += r->len;
    }
    out[pos++] = ']';
    out[pos] = '\0';
    return out;
}

static int
rollback_and(PGconn *c, int ret)
{
    PGTransactionStatusType ts = PQtransactionStatus(c);

    if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
        PQclear(PQexec(c, "ROLLBACK"));
    return ret;
}

/* A failed single-row insert: data errors (SQLSTATE class 22, integrity
 * class 23) are the row's fault and permanent; anything else (timeouts,
 * locks, shutdown, privileges) may pass, so the row is kept and retried. */
static int
classify(PGresult *r, char *why, size_t cap)
{
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    size_t n;

    snprintf(why, cap, "%s: %s", state ? state : "?????", msg ? msg : "no message");
    n = strcspn(why, "\n");
    why[n] = '\0';
    if (state != NULL && (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0))
        return 1;
    aigw_log(LOG_WARNING, "usage: insert failed, will retry: %s", why);
    return -1;
}

/* One row in its own explicit transaction, so that the error's SQLSTATE can
 * be read (aigw_pg_exec_tenant only says "failed"). 0 committed, 1 rejected
 * for good (why says why), -1 try again later. */
static int
try_alone(PGconn *c, const struct batch *b, const struct brow *row, char *why, size_t cap)
{
    const char *tp[1] = {row->tenant};
    char *param = json_array_of(b, NULL, row);
    const char *pp[1] = {param};
    PGresult *r = PQexec(c, "BEGIN");
    int ret = -1;

    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        goto out;
    PQclear(r);
    r = PQexecParams(c, SET_TENANT_SQL, 1, NULL, tp, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
        goto out;
    if (PQgetvalue(r, 0, 0)[0] == '\0') {
        snprintf(why, cap, "unknown tenant");
        ret = 1;
        goto out;
    }
    PQclear(r);
    r = PQexecParams(c, INSERT_SQL, 1, NULL, pp, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        ret = classify(r, why, cap);
        goto out;
    }
    PQclear(r);
    r = PQexec(c, "COMMIT");
    ret = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
out:
    PQclear(r);
    free(param);
    return rollback_and(c, ret);
}

/* Append the raw line to rejected.jsonl (synced) and count it as handled.
 * If even that fails the row stays pending: nothing is ever dropped. */
static int
reject(struct aigw_usage *u, struct brow *row, const char *why)
{
    char *path = seg_path(u, "rejected.jsonl"), eb[128];
    struct iovec iov[2] = {{(void *)row->line, row->len}, {(void *)"\n", 1}};
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && writev(fd, iov, 2) == (ssize_t)(row->len + 1) && fdatasync(fd) == 0;
    int err = errno;

    if (fd >= 0)
        close(fd);
    if (!ok) {
        aigw_log(LOG_ERR, "usage: cannot write %s (row %s stays in the spool): %s", path, row->id,
                 errstr(err, eb, sizeof(eb)));
        free(path);
        return -1;
    }
    aigw_log(LOG_ERR, "usage: row %s of tenant %s rejected (%s); moved to %s", row->id, row->tenant, why, path);
    row_finished(u, row);
    free(path);
    return 0;
}

/* The tenant's statement failed but the connection is fine: some row is at
 * fault. Write the rows one by one; reject the ones PostgreSQL refuses. */
static int
isolate(struct aigw_usage *u, const char *tenant)
{
    struct batch *b = &u->b;
    char why[256];

    for (size_t i = 0; i < b->n; i++) {
        struct brow *row = &b->rows[i];
        int v;

        if (!of_tenant(row, tenant))
            continue;
        v = try_alone(u->conn, b, row, why, sizeof(why));
        if (v == 0) {
            row_finished(u, row);
        } else if (v > 0) {
            if (reject(u, row, why) != 0)
                return -1;
        } else {
            if (!conn_usable(u->conn))
                db_lost(u);
            return -1;
        }
    }
    return 0;
}

/* Whether the JSON statement reads line as the row the writer took it for:
 * one object (after a comma, a second object would be a second row in the
 * JSON array), no key twice (jsonb keeps the last one; parse_row_fast went
 * by the first, and a second tenant_id failed every statement on RLS, for
 * ever), and its id and tenant_id. jansson reads JSON as jsonb does
 * otherwise (a \u0000 is for PostgreSQL to refuse). Only for lines the
 * binary reader refuses. */
static bool
json_line_sound(const struct brow *row)
{
    json_t *o = json_loadb(row->line, row->len, JSON_REJECT_DUPLICATES | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL,
                           NULL);
    json_t *id = json_object_get(o, "id"), *tenant = json_object_get(o, "tenant_id");
    bool ok = json_string_length(id) == 36 && json_string_length(tenant) == 36 &&
              strcasecmp(json_string_value(id), row->id) == 0 && strcasecmp(json_string_value(tenant), row->tenant) == 0;

    json_decref(o);
    return ok;
}

/* The tenant's unfinished rows as binary arrays in u->arrays; false when a
 * line is not in aigw_usage_line's exact shape: the rows then go as JSON,
 * and a line from there on that the JSON statement would misread is marked
 * bad (commit_batch rejects it). */
static bool
arrays_of(struct aigw_usage *u, const char *tenant)
{
    struct batch *b = &u->b;
    bool bin = true;

    aigw_usage_arrays_reset(&u->arrays);
    for (size_t i = 0; i < b->n; i++) {
        struct brow *r = &b->rows[i];

        if (!row_wanted(r, tenant, NULL) || (bin && aigw_usage_arrays_add(&u->arrays, r->line, r->len)))
            continue;
        bin = false;
        if (!json_line_sound(r)) {
            r->bad = true;
            r->why = "a line the JSON statement would misread (a key twice, or more than one object)";
        }
    }
    return bin;
}

/* PostgreSQL answered state (26000: no such statement, after it was
 * prepared; 42P05: it exists already, on a connection that never prepared
 * it): the sessions behind the writer's connection are shared, as behind
 * PgBouncer in transaction mode, so a named statement lives in a session
 * the next transaction may not get. From now on the statement goes unnamed
 * (parsed and planned per batch), for the life of the writer. */
static void
sessions_shared(struct aigw_usage *u, const char *state)
{
    u->unnamed = true;
    u->prepared = false;
    aigw_log(LOG_NOTICE,
             "usage: PostgreSQL answered %s to the writer's prepared statement: its sessions are shared (a pooler in "
             "transaction mode?); sending the statement unnamed from now on",
             state);
}

/* INSERT_BIN_SQL as the statement prepared on the writer's connection
 * (prepared first if it is not yet), or unnamed once the sessions turned
 * out to be shared. NULL when it failed; state = its SQLSTATE or "". */
static PGresult *
insert_bin(struct aigw_usage *u, const char *tenant, const Oid *types, const char *const *values,
           const int *lengths, const int *formats, char *state)
{
    PGresult *r;

    state[0] = '\0';
    if (!u->unnamed && !u->prepared) {
        if (aigw_pg_prepare(u->conn, u->stmt, INSERT_BIN_SQL, AIGW_USAGE_NCOLS, types, DUPLICATE_STATEMENT,
                            state) == 0)
            u->prepared = true;
        else if (strcmp(state, DUPLICATE_STATEMENT) == 0)
            sessions_shared(u, state);
        else
            return NULL;
    }
    if (!u->unnamed) {
        r = aigw_pg_exec_tenant_stmt(u->conn, tenant, u->stmt, NULL, AIGW_USAGE_NCOLS, NULL, values, lengths,
                                     formats, UNIQUE_VIOLATION " " NO_SUCH_STATEMENT, state);
        if (r != NULL || strcmp(state, NO_SUCH_STATEMENT) != 0)
            return r;
        sessions_shared(u, state);
    }
    return aigw_pg_exec_tenant_stmt(u->conn, tenant, NULL, INSERT_BIN_SQL, AIGW_USAGE_NCOLS, types, values, lengths,
                                    formats, UNIQUE_VIOLATION, state);
}

/* The tenant's rows in one statement: binary arrays when every line reads
 * as one, else the lines as JSON. NULL when it failed. */
static PGresult *
insert_tenant(struct aigw_usage *u, const char *tenant)
{
    static const int formats[AIGW_USAGE_NCOLS] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    const char *values[AIGW_USAGE_NCOLS];
    int lengths[AIGW_USAGE_NCOLS];
    Oid types[AIGW_USAGE_NCOLS];
    const char *pp[1];
    char *param;
    PGresult *r;

    if (arrays_of(u, tenant)) {
        char state[6];

        aigw_usage_arrays_finish(&u->arrays, types, values, lengths);
        r = insert_bin(u, tenant, types, values, lengths, formats, state);
        if (r != NULL || strcmp(state, UNIQUE_VIOLATION) != 0)
            return r;
        /* the statement and its transaction were rolled back: all again */
        aigw_log(LOG_INFO, "usage: tenant %s: the batch has rows already written (a replay); skipping those",
                 tenant);
        return aigw_pg_exec_tenant_params(u->conn, tenant, INSERT_BIN_REPLAY_SQL, AIGW_USAGE_NCOLS, types,
                                          values, lengths, formats);
    }
    aigw_log(LOG_DEBUG, "usage: tenant %s: a line not in the spool's own format; sending JSON", tenant);
    param = json_array_of(&u->b, tenant, NULL);
    pp[0] = param;
    r = aigw_pg_exec_tenant(u->conn, tenant, INSERT_SQL, 1, pp);
    free(param);
    return r;
}

/* All unfinished rows of one tenant in one statement (one transaction). */
static int
commit_tenant(struct aigw_usage *u, const char *tenant)
{
    struct batch *b = &u->b;
    PGresult *r = insert_tenant(u, tenant);

    if (r != NULL) {
        PQclear(r);
        for (size_t i = 0; i < b->n; i++)
            if (of_tenant(&b->rows[i], tenant))
                row_finished(u, &b->rows[i]);
        return 0;
    }
    if (!conn_usable(u->conn)) {
        db_lost(u);
        return -1;
    }
    return isolate(u, tenant);
}

static int
commit_batch(struct aigw_usage *u)
{
    struct batch *b = &u->b;

    for (size_t i = 0; i < b->n;) {
        struct brow *row = &b->rows[i];
        char tenant[37];

        if (row->done) {
            i++;
            continue;
        }
        if (row->bad) {
            if (reject(u, row, row->why) != 0)
                return -1;
            continue;
        }
        if (ensure_conn(u) != 0)
            return -1;
        memcpy(tenant, row->tenant, sizeof(tenant)); /* row is marked done below */
        if (commit_tenant(u, tenant) != 0)
            return -1;
        /* row is done now, or was found bad on the way (arrays_of): again */
    }
    return 0;
}

/* ---- the writer thread ---- */

static bool
out_of_time(struct aigw_usage *u)
{
    bool late;

    pthread_mutex_lock(&u->lock);
    late = u->stop && aigw_now_ms() >= u->deadline_ms;
    pthread_mutex_unlock(&u->lock);
    return late;
}

/* Rotate the current segment when it is big, or old with every row
 * committed (then collect() unlinks it at once), or (refused) when it
 * refused a write: a new file may take what this one does not (a file size
 * limit, an I/O error of its own). Only the writer changes u->cur;
 * appenders see the switch under the lock. */
static void
maybe_rotate(struct aigw_usage *u, bool refused)
{
    struct seg *old = u->cur, *next;
    size_t size = atomic_load(&old->size);

    if (size < SEG_MAX_BYTES && !(refused && size > 0) &&
        !(size > 0 && old->done == size && aigw_now_ms() - old->opened_ms >= SEG_MAX_AGE_MS))
        return;
    if (aigw_now_ms() < u->rotate_retry_ms)
        return;
    if ((next = seg_create(u)) == NULL) {
        u->rotate_retry_ms = aigw_now_ms() + IDLE_WAIT_MS; /* logged; keep appending to the old one */
        return;
    }
    pthread_mutex_lock(&u->lock);
    old->next = next;
    u->cur = next;
    pthread_mutex_unlock(&u->lock);
    if (u->synced != atomic_load(&old->size) && fdatasync(old->fd) != 0)
        aigw_log(LOG_WARNING, "usage: fdatasync %s failed", old->path);
    old->closed = true;
    u->synced = 0;
    u->synced_ms = aigw_now_ms();
}

/* Append the rows that wait in memory (the writer's retry); true while
 * some still wait. */
static bool
retry_held(struct aigw_usage *u)
{
    bool stuck;

    pthread_mutex_lock(&u->lock);
    stuck = u->held != NULL && flush_held(u) != 0;
    pthread_mutex_unlock(&u->lock);
    return stuck;
}

/* Append rows that wait in memory, fdatasync new rows at most every flush
 * interval (or now, when forced), rotate, unlink what is done. Returns
 * whether rows waited in memory (appended now, or still waiting). */
static bool
tend(struct aigw_usage *u, bool force)
{
    size_t size;
    int64_t now = aigw_now_ms();
    bool had, stuck;

    pthread_mutex_lock(&u->lock);
    had = u->held != NULL;
    pthread_mutex_unlock(&u->lock);
    stuck = had && retry_held(u);
    size = atomic_load(&u->cur->size);
    if (size != u->synced && (force || now - u->synced_ms >= u->flush_ms)) {
        if (fdatasync(u->cur->fd) != 0)
            aigw_log(LOG_WARNING, "usage: fdatasync %s failed", u->cur->path);
        u->synced = size;
        u->synced_ms = now;
    }
    maybe_rotate(u, stuck);
    if (stuck)
        retry_held(u); /* into the new segment, if there is one */
    collect(u);
    return had;
}

static bool
stopping(struct aigw_usage *u)
{
    bool stop;

    pthread_mutex_lock(&u->lock);
    stop = u->stop;
    pthread_mutex_unlock(&u->lock);
    return stop;
}

/* Write batches while there is a backlog; 0 = caught up, -1 = failed (or out
 * of time while stopping), retry later. A batch that was not full means the
 * writer has caught up: it returns to wait_for_rows() for the next batch to
 * fill (up to flush_ms) instead of committing the few rows that arrived
 * during the commit. (Chasing them kept batches at ~16 rows and cost
 * PostgreSQL ~65 us per row at 10k rows/s, mostly per-statement parse and
 * plan.) While stopping it writes everything. */
static int
drain(struct aigw_usage *u)
{
    struct batch *b = &u->b;

    for (;;) {
        bool full;

        if (out_of_time(u))
            return -1;
        if (b->seg == NULL) {
            int r = fill_batch(u);

            if (r <= 0)
                return r;
        }
        full = b->n >= (size_t)u->batch_rows;
        if (commit_batch(u) != 0)
            return -1;
        b->seg->done = b->end;
        b->seg = NULL;
        pthread_mutex_lock(&u->lock);
        u->written += b->n; /* every line before these is done too: batches go in spool order */
        if (u->syncing > 0)
            pthread_cond_broadcast(&u->written_cv);
        pthread_mutex_unlock(&u->lock);
        b->n = 0;
        tend(u, false);
        if (!full && !stopping(u))
            return 0;
    }
}

/* Sleep until rows arrive, then up to flush_ms more for a full batch. */
static void
wait_for_rows(struct aigw_usage *u)
{
    struct timespec ts;

    pthread_mutex_lock(&u->lock);
    abs_time(&ts, aigw_now_ms() + IDLE_WAIT_MS);
    while (!u->stop && u->pending == 0)
        if (pthread_cond_timedwait(&u->wake, &u->lock, &ts) == ETIMEDOUT)
            break;
    abs_time(&ts, aigw_now_ms() + u->flush_ms);
    while (!u->stop && u->syncing == 0 && u->pending > 0 && u->pending < (size_t)u->batch_rows)
        if (pthread_cond_timedwait(&u->wake, &u->lock, &ts) == ETIMEDOUT)
            break;
    u->pending = 0;
    pthread_mutex_unlock(&u->lock);
}

/* Sleep ms unless the stop request differs from was; true if it does. */
static bool
sleep_unless_stop(struct aigw_usage *u, int64_t ms, bool was)
{
    struct timespec ts;
    bool changed;

    pthread_mutex_lock(&u->lock);
    abs_time(&ts, aigw_now_ms() + ms);
    while (u->stop == was)
        if (pthread_cond_timedwait(&u->wake, &u->lock, &ts) == ETIMEDOUT)
            break;
    changed = u->stop != was;
    pthread_mutex_unlock(&u->lock);
    return changed;
}

/* Back off after a failure, cut short by a stop request and never past the
 * stop deadline. Meanwhile the spool is still synced and rotated every flush
 * interval: an outage must not stretch the window a power loss can eat. */
static void
back_off(struct aigw_usage *u, int ms)
{
    int64_t until = aigw_now_ms() + ms, step;
    int64_t slice = u->flush_ms < BACKOFF_MIN_MS / 5 ? BACKOFF_MIN_MS / 5 : u->flush_ms;
    bool was;

    pthread_mutex_lock(&u->lock);
    was = u->stop;
    if (was && until > u->deadline_ms)
        until = u->deadline_ms;
    pthread_mutex_unlock(&u->lock);
    while ((step = until - aigw_now_ms()) > 0) {
        if (step > slice)
            step = slice;
        if (sleep_unless_stop(u, step, was))
            return;
        tend(u, false);
    }
}

/* Whether rows wait in memory. */
static bool
held_waiting(struct aigw_usage *u)
{
    bool any;

    pthread_mutex_lock(&u->lock);
    any = u->held != NULL;
    pthread_mutex_unlock(&u->lock);
    return any;
}

/* Take up to max rows off the front of the held list (under the lock). */
static struct held *
held_take(struct aigw_usage *u, size_t max, size_t *n)
{
    struct held *first, **pp;

    pthread_mutex_lock(&u->lock);
    first = u->held;
    pp = &u->held;
    for (*n = 0; *pp != NULL && *n < max; (*n)++) {
        u->held_bytes -= (*pp)->len;
        pp = &(*pp)->next;
    }
    u->held = *pp;
    *pp = NULL;
    if (u->held == NULL)
        u->held_tail = &u->held;
    pthread_mutex_unlock(&u->lock);
    return first;
}

/* Put rows back at the front of the held list, in their order (under the lock). */
static void
held_put_back(struct aigw_usage *u, struct held *list)
{
    struct held *last = list;
    size_t bytes = 0;

    if (list == NULL)
        return;
    for (;; last = last->next) {
        bytes += last->len;
        if (last->next == NULL)
            break;
    }
    pthread_mutex_lock(&u->lock);
    last->next = u->held;
    if (u->held == NULL)
        u->held_tail = &last->next;
    u->held = list;
    u->held_bytes += bytes;
    pthread_mutex_unlock(&u->lock);
}

/* Stopping, every spooled row written, and rows still wait in memory
 * because the spool refuses them: insert those straight into PostgreSQL,
 * a batch at a time, rather than lose them at exit (their ids are primary
 * keys, so a copy that reaches the spool after all is skipped). What is not
 * written (PostgreSQL down) goes back to the list. Needs an empty batch. */
static void
write_held(struct aigw_usage *u)
{
    struct batch *b = &u->b;

    while (!out_of_time(u)) {
        size_t n, pos = 0, i = 0;
        struct held *list = held_take(u, (size_t)u->batch_rows, &n), *keep = NULL, **keep_tail = &keep;
        int rc;

        if (list == NULL)
            return;
        for (const struct held *h = list; h != NULL; h = h->next)
            pos += h->len;
        if (pos > b->cap) {
            b->cap = pos;
            b->buf = aigw_xrealloc(b->buf, b->cap);
        }
        pos = 0;
        for (const struct held *h = list; h != NULL; h = h->next) {
            memcpy(b->buf + pos, h->line, h->len);
            pos += h->len;
        }
        b->n = 0;
        split_lines(u, b->buf, pos); /* one row per held line: each ends in its '\n' */
        rc = commit_batch(u);
        for (struct held *h = list, *next; h != NULL; h = next, i++) {
            next = h->next;
            if (i < b->n && b->rows[i].done) {
                free(h->line);
                free(h);
            } else {
                h->next = NULL;
                *keep_tail = h;
                keep_tail = &h->next;
            }
        }
        b->n = 0;
        held_put_back(u, keep);
        if (rc != 0 || keep != NULL)
            return;
        aigw_log(LOG_NOTICE, "usage: %zu rows the spool refused written to PostgreSQL directly", n);
    }
}

static void *
run(void *arg)
{
    struct aigw_usage *u = arg;
    int backoff = BACKOFF_MIN_MS;

    for (;;) {
        int r = drain(u); /* first round: what earlier runs left */
        bool held = tend(u, true); /* rows that waited in memory: appended now, or still waiting */

        if (held && r == 0 && stopping(u) && held_waiting(u))
            write_held(u); /* the spool still refuses them; the next round sees what is left */

        if (stopping(u) && ((r == 0 && !held) || aigw_now_ms() >= u->deadline_ms))
            break;
        if (r == 0 && !held) {
            backoff = BACKOFF_MIN_MS;
            wait_for_rows(u);
            continue;
        }
        back_off(u, backoff);
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
    }
    PQfinish(u->conn);
    u->conn = NULL;
    return NULL;
}

/* ---- life cycle ---- */

static void
destroy(struct aigw_usage *u)
{
    while (u->held != NULL) {
        struct held *h = u->held;

        u->held = h->next;
        free(h->line);
        free(h);
    }
    while (u->segs != NULL) {
        struct seg *s = u->segs;

        u->segs = s->next;
        seg_free(u, s);
    }
    if (u->dir_fd >= 0) {
        fsync(u->dir_fd);
        close(u->dir_fd); /* releases the flock */
    }
    pthread_cond_destroy(&u->wake);
    pthread_cond_destroy(&u->written_cv);
    pthread_mutex_destroy(&u->lock);
    free(u->b.buf);
    free(u->b.rows);
    aigw_usage_arrays_free(&u->arrays);
    free(u->db_url);
    free(u->dir);
    free(u);
}

static void
init_sync(struct aigw_usage *u)
{
    pthread_condattr_t ca;

    pthread_mutex_init(&u->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&u->wake, &ca);
    pthread_cond_init(&u->written_cv, &ca);
    pthread_condattr_destroy(&ca);
}

struct aigw_usage *
aigw_usage_start(const struct aigw_config *cfg)
{
    struct aigw_usage *u = aigw_xcalloc(1, sizeof(*u));

    insert_stmt_name(u->stmt);
    init_sync(u);
    u->dir_fd = -1;
    u->dir = aigw_xstrdup(cfg->spool_dir ? cfg->spool_dir : "");
    u->db_url = aigw_xstrdup(cfg->database_url ? cfg->database_url : "");
    u->batch_rows = cfg->usage_batch_rows > 0 ? cfg->usage_batch_rows : 1;
    u->flush_ms = cfg->usage_flush_ms > 0 ? cfg->usage_flush_ms : 1;
    u->held_max = (size_t)(cfg->usage_memory_max_kb > 0 ? cfg->usage_memory_max_kb : 65536) << 10;
    atomic_init(&u->backlog, 0);
    atomic_init(&u->spool_bytes, 0);
    u->held_tail = &u->held;
    atomic_init(&u->full, false);
    if (open_spool(u) != 0 || load_old_segments(u) != 0 || (u->cur = seg_create(u)) == NULL) {
        aigw_log(LOG_ERR, "usage: spool %s unusable; not starting", u->dir);
        destroy(u);
        return NULL;
    }
    seg_append(u, u->cur);
    u->synced_ms = aigw_now_ms();
    u->b.rows = aigw_xcalloc((size_t)u->batch_rows, sizeof(*u->b.rows));
    u->b.cap = (size_t)u->batch_rows * 1024 > READ_MIN ? (size_t)u->batch_rows * 1024 : READ_MIN;
    u->b.buf = aigw_xmalloc(u->b.cap);
    if (pthread_create(&u->thread, NULL, run, u) != 0)
        abort();
    aigw_log(LOG_INFO, "usage: spool %s, %zu rows to replay", u->dir, atomic_load(&u->backlog));
    return u;
}

void
aigw_usage_stop(struct aigw_usage *u, int deadline_ms)
{
    size_t left = 0;

    if (u == NULL)
        return;
    pthread_mutex_lock(&u->lock);
    u->stop = true;
    u->deadline_ms = aigw_now_ms() + (deadline_ms > 0 ? deadline_ms : 0);
    pthread_cond_broadcast(&u->wake);
    pthread_mutex_unlock(&u->lock);
    pthread_join(u->thread, NULL);

    pthread_mutex_lock(&u->lock);
    if (u->held != NULL && flush_held(u) != 0) { /* a last try: then they wait in the spool for the next start */
        size_t lost = 0;

        for (const struct held *h = u->held; h != NULL; h = h->next)
            lost++;
        atomic_fetch_sub(&u->backlog, lost);
        aigw_log(LOG_CRIT, "usage: the spool refuses writes: %zu usage rows that waited in memory are lost", lost);
    }
    pthread_mutex_unlock(&u->lock);
    if (fdatasync(u->cur->fd) != 0)
        aigw_log(LOG_WARNING, "usage: fdatasync %s failed", u->cur->path);
    while (u->segs != NULL) {
        struct seg *s = u->segs;

        u->segs = s->next;
        left += seg_free(u, s) > 0;
    }
    if (atomic_load(&u->backlog) > 0)
        aigw_log(LOG_WARNING, "usage: %zu rows not in PostgreSQL yet stay in %s (%zu segments) for the next start",
                 atomic_load(&u->backlog), u->dir, left);
    destroy(u);
}

int
aigw_usage_sync(struct aigw_usage *u, int timeout_ms)
{
    struct timespec ts;
    size_t target;
    int ret;

    if (u == NULL)
        return 0;
    pthread_mutex_lock(&u->lock);
    target = u->recorded;
    if (u->written < target) {
        u->syncing++;
        pthread_cond_signal(&u->wake); /* a writer waiting for a full batch writes what it has */
        abs_time(&ts, aigw_now_ms() + timeout_ms);
        while (u->written < target && !u->stop)
            if (pthread_cond_timedwait(&u->written_cv, &u->lock, &ts) == ETIMEDOUT)
                break;
        u->syncing--;
    }
    ret = u->written >= target ? 0 : -1;
    pthread_mutex_unlock(&u->lock);
    return ret;
}

bool
aigw_usage_accepting(struct aigw_usage *u)
{
    return u == NULL || !atomic_load_explicit(&u->full, memory_order_relaxed);
}

size_t
aigw_usage_backlog(const struct aigw_usage *u)
{
    return u ? atomic_load(&u->backlog) : 0;
}

size_t
aigw_usage_spool_bytes(const struct aigw_usage *u)
{
    return u ? atomic_load(&u->spool_bytes) : 0;
}
