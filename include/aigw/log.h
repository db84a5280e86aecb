/* log.h - journald-aware logging: structured fields under systemd, "<N>" lines on stderr elsewhere */
#ifndef AIGW_LOG_H
#define AIGW_LOG_H

#include <stdbool.h>
#include <syslog.h>

/* Choose the sink once at start-up: journald when stderr is connected to the
 * journal (JOURNAL_STREAM matches stderr) or force_journal, else stderr.
 * max_prio: messages with a priority number above it are dropped (LOG_INFO
 * keeps info and more severe). Not thread-safe: call before threads start. */
void aigw_log_init(int max_prio, int force_journal);
void aigw_log_set_level(int max_prio);
/* Would a line of this priority be written? (skip building one that would not) */
bool aigw_log_enabled(int prio);
/* "debug", "info", "notice", "warning", "err"/"error", "crit"; -1 if unknown. */
int aigw_log_level_parse(const char *name);

/* Log one line. Thread-safe; each line is written with a single write(). */
void aigw_log(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Log a message with structured fields: a NULL-terminated list of
 * (FIELD_NAME, value) string pairs; NULL values are skipped. Field names are
 * upper-case journald names (REQUEST_ID, TENANT_ID, ...). On stderr the
 * fields are appended as name=value. */
void aigw_log_fields(int prio, const char *msg, ...) __attribute__((sentinel));

#endif
