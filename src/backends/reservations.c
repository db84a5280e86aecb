/* reservations.c - the journal of quota reservations in flight (see
 * reservations.h).
 *
 * <spool_dir>/quota-reservations-<seq>.log, lines:
 *   R <usage id> <tenant id> <unix second of the reservation's month>
 *   S <usage id>
 * A reservation's S line goes to the file its R line went to, so every file
 * stands alone: a file with no R line left open is removed, and at start a
 * file's R lines without an S line are what the previous run left in
 * flight. A line cut short by a crash (no newline) is ignored: its write
 * never completed, so neither did what it would have recorded. Appends go to
 * the page cache (no fsync): the journal is for a process that dies, as the
 * usage spool's rows are until their periodic sync. An S line the file
 * refuses (disk full, a file size limit) waits in memory and is written
 * before the next line that goes to the file: left out, its R line would
 * stay open and a crash (or a stop that keeps the file for a refund Redis
 * has not confirmed) would have the next start refund a query that was
 * kept, or refunded already. */
#include "aigw/reservations.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aigw/log.h"
#include "aigw/util.h"

/* A journal file is rotated past this size (~11k reservations). */
#define RESV_ROTATE_BYTES (1024 * 1024)
#define RESV_PREFIX "quota-reservations-"
#define RESV_SUFFIX ".log"
/* The largest file read back at start (a rotated file is ~1 MiB). */
#define RESV_READ_MAX (64 * 1024 * 1024)

struct aigw_resv_file {
    struct aigw_resv_file *next; /* open files, the current one first */
    char *path;
    int fd;
    size_t open;                 /* R lines here without their S line yet */
    size_t bytes;
    char (*unwritten)[37];       /* settled ids whose S line the file refused so far */
    size_t n_unwritten, cap_unwritten;
};

/* A reservation the previous run left unsettled. */
struct leftover {
    char id[37], tenant[37];
    int64_t at_s;
    size_t file;                 /* index in old[] */
    bool refunded;
};

struct aigw_resv {
    char *dir;
    pthread_mutex_t lock;        /* guards files, seq, warned */
    struct aigw_resv_file *files;
    uint64_t seq;
    bool warned;                 /* a failed write was logged */
    /* the previous run's (recover only) */
    struct leftover *left;
    size_t n_left;
    char **old;
    off_t *old_whole;            /* per old file: the length of its whole lines */
    size_t n_old;
};

/* One line, whole or not at all (a short write is cut back off). -1 with
 * errno set on failure. */
static int
append(struct aigw_resv_file *f, const char *line, size_t len)
{
    int err = 0;
    size_t off = aigw_write_all(f->fd, line, len, &err);

    if (off < len) {
        if (off > 0 && ftruncate(f->fd, (off_t)f->bytes) != 0)
            aigw_log(LOG_CRIT, "quota journal: cannot cut a partial line off %s", f->path);
        errno = err;
        return -1;
    }
    f->bytes += len;
    return 0;
}

/* Write the S lines f refused before (in any order: an S line only has to
 * be in the file); 0 when none is left. */
static int
write_unwritten(struct aigw_resv_file *f)
{
    while (f->n_unwritten > 0) {
        char line[48];
        int len = snprintf(line, sizeof(line), "S %s\n", f->unwritten[f->n_unwritten - 1]);

        if (append(f, line, (size_t)len) != 0)
            return -1;
        f->n_unwritten--;
    }
    return 0;
}

/* With lock held: f took a line; S lines it refused before go first. */
static void
catch_up(struct aigw_resv *j, struct aigw_resv_file *f)
{
    size_t n = f->n_unwritten;

    if (n > 0 && write_unwritten(f) == 0) {
        aigw_log(LOG_NOTICE, "quota journal: %s takes writes again; %zu settlements it refused written", f->path, n);
        j->warned = false;
    }
}

static void
keep_unwritten(struct aigw_resv_file *f, const char *id)
{
    if (f->n_unwritten == f->cap_unwritten) {
        f->cap_unwritten = f->cap_unwritten ? f->cap_unwritten * 2 : 16;
        f->unwritten = aigw_xrealloc(f->unwritten, f->cap_unwritten * sizeof(*f->unwritten));
    }
    snprintf(f->unwritten[f->n_unwritten++], sizeof(*f->unwritten), "%s", id);
}

static void
file_free(struct aigw_resv_file *f, bool remove)
{
    if (remove && unlink(f->path) != 0 && errno != ENOENT)
        aigw_log(LOG_WARNING, "quota journal: cannot remove %s", f->path);
    close(f->fd);
    free(f->unwritten);
    free(f->path);
    free(f);
}

/* With lock held (or before threads): a new current file. */
static int
new_file(struct aigw_resv *j)
{
    char name[64];
    struct aigw_resv_file *f;
    int fd;

    snprintf(name, sizeof(name), RESV_PREFIX "%020llu" RESV_SUFFIX, (unsigned long long)++j->seq);
    f = aigw_xcalloc(1, sizeof(*f));
    f->path = aigw_path_join(j->dir, name);
    fd = open(f->path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) {
        free(f->path);
        free(f);
        return -1;
    }
    f->fd = fd;
    f->next = j->files;
    j->files = f;
    return 0;
}

/* With lock held: take f out of the open files and free it. */
static void
drop_file(struct aigw_resv *j, struct aigw_resv_file *f, bool remove)
{
    struct aigw_resv_file **pp = &j->files;

    while (*pp != NULL && *pp != f)
        pp = &(*pp)->next;
    if (*pp == f)
        *pp = f->next;
    file_free(f, remove);
}

static int
cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, 36);
}

/* The unsettled R lines of one file of the previous run into j->left;
 * j->old_whole[index] = the length of its whole lines. -1 when the file
 * cannot be read (nothing taken from it). */
static int
read_old(struct aigw_resv *j, const char *path, size_t index)
{
    struct stat st;
    char *text = NULL, *p, *end, (*settled)[36] = NULL;
    size_t n_settled = 0, cap_settled = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC), ret = -1;

    if (fd < 0 || fstat(fd, &st) != 0 || st.st_size > RESV_READ_MAX)
        goto out;
    text = aigw_xmalloc((size_t)st.st_size + 1);
    if (read(fd, text, (size_t)st.st_size) != (ssize_t)st.st_size)
        goto out;
    ret = 0;
    end = text + st.st_size;
    /* the S lines first: which ids settled */
    for (p = text; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));

        if (nl == NULL)
            break; /* cut short by a crash */
        j->old_whole[index] = nl + 1 - text;
        if (nl - p == 38 && p[0] == 'S' && p[1] == ' ' && aigw_is_uuid(p + 2, 36)) {
            if (n_settled == cap_settled)
                settled = aigw_xrealloc(settled, (cap_settled = cap_settled ? cap_settled * 2 : 64) * 36);
            memcpy(settled[n_settled++], p + 2, 36);
        }
        p = nl + 1;
    }
    if (n_settled > 0)
        qsort(settled, n_settled, 36, cmp_id);
    for (p = text; p < end;) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        long long at_s;
        char *e;

        if (nl == NULL)
            break;
        *nl = '\0';
        if (p[0] == 'R' && p[1] == ' ' && nl - p > 77 && aigw_is_uuid(p + 2, 36) && p[38] == ' ' &&
            aigw_is_uuid(p + 39, 36) && p[75] == ' ' && (at_s = strtoll(p + 76, &e, 10)) > 0 && *e == '\0' &&
            (n_settled == 0 || bsearch(p + 2, settled, n_settled, 36, cmp_id) == NULL)) {
            struct leftover *l;

            j->left = aigw_xrealloc(j->left, (j->n_left + 1) * sizeof(*j->left));
            l = &j->left[j->n_left++];
            memset(l, 0, sizeof(*l));
            memcpy(l->id, p + 2, 36);
            memcpy(l->tenant, p + 39, 36);
            l->at_s = at_s;
            l->file = index;
        }
        p = nl + 1;
    }
out:
    if (fd >= 0)
        close(fd);
    free(settled);
    free(text);
    return ret;
}

struct aigw_resv *
aigw_resv_open(const char *dir, char *err, size_t cap)
{
    struct aigw_resv *j = aigw_xcalloc(1, sizeof(*j));
    DIR *d = opendir(dir);
    struct dirent *de;

    if (d == NULL) {
        snprintf(err, cap, "quota journal: cannot open %s", dir);
        free(j);
        return NULL;
    }
    j->dir = aigw_xstrdup(dir);
    pthread_mutex_init(&j->lock, NULL);
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name), pl = sizeof(RESV_PREFIX) - 1, sl = sizeof(RESV_SUFFIX) - 1;
        unsigned long long seq;
        char *e;

        if (len <= pl + sl || strncmp(de->d_name, RESV_PREFIX, pl) != 0 ||
            strcmp(de->d_name + len - sl, RESV_SUFFIX) != 0)
            continue;
        seq = strtoull(de->d_name + pl, &e, 10);
        if (e != de->d_name + len - sl)
            continue;
        if (seq > j->seq)
            j->seq = seq;
        j->old = aigw_xrealloc(j->old, (j->n_old + 1) * sizeof(*j->old));
        j->old_whole = aigw_xrealloc(j->old_whole, (j->n_old + 1) * sizeof(*j->old_whole));
        j->old_whole[j->n_old] = 0;
        j->old[j->n_old] = aigw_path_join(dir, de->d_name);
        if (read_old(j, j->old[j->n_old], j->n_old) != 0) {
            /* not one of the files a recovery removes: what it holds is not
             * known, so it is not thrown away either */
            aigw_log(LOG_ERR, "quota journal: cannot read %s (unreadable, or over %d MiB): left in place, its "
                     "reservations are not refunded", j->old[j->n_old], RESV_READ_MAX >> 20);
            free(j->old[j->n_old]);
            continue;
        }
        j->n_old++;
    }
    closedir(d);
    if (new_file(j) != 0) {
        snprintf(err, cap, "quota journal: cannot create a file in %s", dir);
        aigw_resv_close(j);
        return NULL;
    }
    return j;
}

size_t
aigw_resv_leftover(const struct aigw_resv *j)
{
    size_t n = 0;

    for (size_t i = 0; j != NULL && i < j->n_left; i++)
        n += !j->left[i].refunded;
    return n;
}

size_t
aigw_resv_recover(struct aigw_resv *j, aigw_resv_refund_fn refund, void *ud)
{
    size_t done = 0;

    if (j == NULL || j->n_old == 0)
        return 0;
    for (size_t i = 0; i < j->n_left; i++) {
        struct leftover *l = &j->left[i];
        char line[48];
        int fd;

        if (l->refunded || refund(ud, l->id, l->tenant, l->at_s) != 0)
            continue;
        l->refunded = true;
        done++;
        /* settled in its own file, so a start that finds it again (the
         * others failed, the files stay) does not refund it twice; a line
         * the crash cut short is cut off first, or this one would complete
         * it */
        snprintf(line, sizeof(line), "S %s\n", l->id);
        fd = open(j->old[l->file], O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd >= 0 && ftruncate(fd, j->old_whole[l->file]) != 0) {
            close(fd);
            fd = -1;
        }
        if (fd >= 0 && write(fd, line, strlen(line)) == (ssize_t)strlen(line))
            j->old_whole[l->file] += (off_t)strlen(line); /* a failed write is cut off by the next one */
        else
            aigw_log(LOG_ERR, "quota journal: cannot mark %s refunded in %s", l->id, j->old[l->file]);
        if (fd >= 0)
            close(fd);
    }
    if (aigw_resv_leftover(j) == 0) {
        for (size_t i = 0; i < j->n_old; i++) {
            if (unlink(j->old[i]) != 0 && errno != ENOENT)
                aigw_log(LOG_WARNING, "quota journal: cannot remove %s", j->old[i]);
            free(j->old[i]);
        }
        free(j->old);
        free(j->old_whole);
        j->old = NULL;
        j->old_whole = NULL;
        j->n_old = 0;
        free(j->left);
        j->left = NULL;
        j->n_left = 0;
    }
    return done;
}

/* With lock held: an R line into the current file; when that file reached
 * a file size limit (LimitFSIZE=, EFBIG), into a new one (the S lines of
 * the old file's reservations still go to the old one). The file it went
 * to, or NULL. */
static struct aigw_resv_file *
append_r(struct aigw_resv *j, const char *line, size_t len)
{
    struct aigw_resv_file *f = j->files;

    if (f == NULL)
        return NULL;
    catch_up(j, f);
    if (append(f, line, len) == 0)
        return f;
    if (errno != EFBIG || f->bytes == 0 || new_file(j) != 0) /* a new file would refuse it too */
        return NULL;
    if (f->open == 0)
        drop_file(j, f, true);
    f = j->files;
    return append(f, line, len) == 0 ? f : NULL;
}

struct aigw_resv_file *
aigw_resv_add(struct aigw_resv *j, const char *id, const char *tenant_id, int64_t at_s)
{
    char line[128];
    int len;
    struct aigw_resv_file *f;

    if (j == NULL)
        return NULL;
    len = snprintf(line, sizeof(line), "R %s %s %lld\n", id, tenant_id, (long long)at_s);
    pthread_mutex_lock(&j->lock);
    f = len > 0 && (size_t)len < sizeof(line) ? append_r(j, line, (size_t)len) : NULL;
    if (f == NULL) {
        if (!j->warned)
            aigw_log(LOG_ERR, "quota journal: cannot write to %s: a crash now would leave reservations counted",
                     j->dir);
        j->warned = true;
        pthread_mutex_unlock(&j->lock);
        return NULL;
    }
    f->open++;
    if (f->bytes > RESV_ROTATE_BYTES && new_file(j) != 0) /* keep writing to f */
        aigw_log(LOG_WARNING, "quota journal: cannot rotate in %s", j->dir);
    pthread_mutex_unlock(&j->lock);
    return f;
}

void
aigw_resv_settle(struct aigw_resv *j, struct aigw_resv_file *f, const char *id)
{
    char line[48];
    int len;

    if (j == NULL || f == NULL)
        return;
    len = snprintf(line, sizeof(line), "S %s\n", id);
    pthread_mutex_lock(&j->lock);
    catch_up(j, f);
    if (f->n_unwritten > 0 || append(f, line, (size_t)len) != 0) {
        keep_unwritten(f, id); /* written before the file's next line */
        if (!j->warned)
            aigw_log(LOG_ERR, "quota journal: cannot write to %s: settlements wait in memory; a crash now would "
                     "refund them", f->path);
        j->warned = true;
    }
    if (--f->open == 0 && f != j->files) /* rotated out and nothing left open: done with */
        drop_file(j, f, true);
    pthread_mutex_unlock(&j->lock);
}

void
aigw_resv_close(struct aigw_resv *j)
{
    if (j == NULL)
        return;
    while (j->files != NULL) {
        struct aigw_resv_file *f = j->files;

        /* kept for a refund Redis has not confirmed: its settlements first */
        if (f->open > 0 && f->n_unwritten > 0 && write_unwritten(f) != 0)
            aigw_log(LOG_ERR, "quota journal: %s refuses writes: the next start refunds %zu reservations that "
                     "were settled", f->path, f->n_unwritten);
        drop_file(j, f, f->open == 0);
    }
    for (size_t i = 0; i < j->n_old; i++)
        free(j->old[i]);
    free(j->old);
    free(j->old_whole);
    free(j->left);
    free(j->dir);
    pthread_mutex_destroy(&j->lock);
    free(j);
}
