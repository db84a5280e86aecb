/* log.c - one sink chosen at start-up; never logs secrets (callers pass none) */
#include "aigw/log.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-journal.h>

static atomic_int log_max = LOG_INFO;
static int log_journal;

static int
stderr_is_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long dev = 0, ino = 0;
    struct stat st;

    if (js == NULL || sscanf(js, "%lu:%lu", &dev, &ino) != 2)
        return 0;
    if (fstat(STDERR_FILENO, &st) != 0)
        return 0;
    return st.st_dev == (dev_t)dev && st.st_ino == (ino_t)ino;
}

void
aigw_log_init(int max_prio, int force_journal)
{
    atomic_store(&log_max, max_prio);
    log_journal = force_journal || stderr_is_journal();
}

void
aigw_log_set_level(int max_prio)
{
    atomic_store(&log_max, max_prio);
}

bool
aigw_log_enabled(int prio)
{
    return prio <= atomic_load(&log_max);
}

int
aigw_log_level_parse(const char *name)
{
    static const struct {
        const char *name;
        int prio;
    } levels[] = {
        {"debug", LOG_DEBUG}, {"info", LOG_INFO},   {"notice", LOG_NOTICE},
        {"warning", LOG_WARNING}, {"warn", LOG_WARNING}, {"err", LOG_ERR},
        {"error", LOG_ERR}, {"crit", LOG_CRIT},
    };

    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcmp(name, levels[i].name) == 0)
            return levels[i].prio;
    return -1;
}

/* Replace control characters so one log call is one line, and with '?',
 * not a space: a tab in a client's value (libmicrohttpd splits the request
 * line on spaces only, so a method can hold tabs) must not turn into
 * " NAME=value" fields of its own in the stderr format. */
static void
sanitize(char *s)
{
    for (; *s; s++)
        if (iscntrl((unsigned char)*s))
            *s = '?';
}

static void
write_line(char *line, size_t len)
{
    ssize_t n = write(STDERR_FILENO, line, len);

    (void)n;
}

void
aigw_log(int prio, const char *fmt, ...)
{
    char msg[2048], line[2100];
    va_list ap;
    int n;

    if (!aigw_log_enabled(prio))
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    sanitize(msg);
    if (log_journal) {
        sd_journal_send("MESSAGE=%s", msg, "PRIORITY=%d", prio, "SYSLOG_IDENTIFIER=aigw", NULL);
        return;
    }
    n = snprintf(line, sizeof(line), "<%d>%s\n", prio, msg);
    if (n > 0)
        write_line(line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

void
aigw_log_fields(int prio, const char *msg, ...)
{
    struct iovec iov[24];
    char bufs[24][512];
    char line[4096];
    size_t nio = 0, off;
    const char *name;
    va_list ap;
    int n;

    if (!aigw_log_enabled(prio))
        return;
    n = snprintf(bufs[nio], sizeof(bufs[0]), "MESSAGE=%s", msg);
    (void)n;
    sanitize(bufs[nio]);
    nio++;
    snprintf(bufs[nio++], sizeof(bufs[0]), "PRIORITY=%d", prio);
    snprintf(bufs[nio++], sizeof(bufs[0]), "SYSLOG_IDENTIFIER=aigw");
    va_start(ap, msg);
    while ((name = va_arg(ap, const char *)) != NULL && nio < 24) {
        const char *value = va_arg(ap, const char *);

        if (value == NULL)
            continue;
        snprintf(bufs[nio], sizeof(bufs[0]), "%s=%s", name, value);
        sanitize(bufs[nio]);
        nio++;
    }
    va_end(ap);

    if (log_journal) {
        for (size_t i = 0; i < nio; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = strlen(bufs[i]);
        }
        sd_journal_sendv(iov, (int)nio);
        return;
    }
    off = (size_t)snprintf(line, sizeof(line), "<%d>%s", prio, msg);
    for (size_t i = 3; i < nio && off < sizeof(line); i++)
        off += (size_t)snprintf(line + off, sizeof(line) - off, " %s", bufs[i]);
    if (off >= sizeof(line) - 1)
        off = sizeof(line) - 2;
    sanitize(line);
    line[off++] = '\n';
    write_line(line, off);
}
