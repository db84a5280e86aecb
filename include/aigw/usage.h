/* usage.h - one usage row per authenticated request, durable before the
 * response leaves: appended to a spool file (the write has reached the
 * kernel) and written to PostgreSQL in batches by a writer thread. The spool
 * is replayed at start-up and whenever PostgreSQL comes back; the row id is
 * the primary key, so a replay can never double a row. */
#ifndef AIGW_USAGE_H
#define AIGW_USAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aigw/config.h"

struct aigw_usage_row {
    char id[37];               /* uuid, filled by aigw_usage_record when empty */
    char tenant_id[37];        /* required */
    const char *user_id;       /* JWT sub; NULL allowed */
    const char *api_key_id;    /* uuid or NULL */
    const char *request_id;    /* required */
    const char *route;         /* required, e.g. "/api/ai/query" */
    const char *query_type;    /* NULL allowed */
    const char *question_sha256; /* hex; NULL allowed; never the text */
    const char *model;         /* NULL allowed */
    long prompt_tokens;
    long completion_tokens;
    bool from_cache;
    bool billed;               /* counted against the monthly quota */
    int status_code;
    bool success;
    const char *error_code;    /* NULL on success */
    long response_ms;
    long upstream_ms;          /* < 0 = NULL (no upstream call) */
    int64_t created_at_us;     /* wall clock, microseconds; 0 = now */
};

struct aigw_usage;

/* Open (create) cfg->spool_dir, start the writer thread with its own
 * PostgreSQL connection to cfg->database_url, and queue every spool segment
 * left by an earlier run for replay. Returns NULL (logged) when the spool
 * directory cannot be used: aigw must not serve without durable usage. */
struct aigw_usage *aigw_usage_start(const struct aigw_config *cfg);

/* Write every row still pending to PostgreSQL (trying for at most
 * deadline_ms; rows waiting in memory because the spool refuses them are
 * inserted directly), stop the thread, close the spool (kept on disk when
 * rows remain, removed when all are in PostgreSQL), free. NULL-safe. */
void aigw_usage_stop(struct aigw_usage *u, int deadline_ms);

/* Append row to the spool (one write(2) of one JSON line) and wake the
 * writer. Thread-safe; cheap (no PostgreSQL on the caller's thread). A row
 * the spool refuses (disk full, I/O error) waits in memory and is appended,
 * before any later row, as soon as the spool takes rows again. Once
 * usage.memory_max_kb of rows wait, aigw_usage_accepting says no and only
 * billed rows are still kept. Returns 0, or -1 if the row (not billed) is
 * dropped (logged). */
int aigw_usage_record(struct aigw_usage *u, struct aigw_usage_row *row);

/* False while the rows the spool refused fill usage.memory_max_kb: new AI
 * requests must be refused (503) rather than answered without a durable
 * row. One relaxed atomic load; NULL-safe (true). */
bool aigw_usage_accepting(struct aigw_usage *u);

/* Wait until every row recorded before the call is in PostgreSQL (or
 * rejected), for at most timeout_ms; the writer does not wait for a full
 * batch meanwhile. 0 done, -1 not in time (PostgreSQL down, the spool
 * refusing rows, a large backlog). For a count of the rows that must not
 * miss those still in the spool (the quota counter's rebuild). NULL-safe. */
int aigw_usage_sync(struct aigw_usage *u, int timeout_ms);

/* Rows recorded but not yet committed to PostgreSQL; spool bytes on disk. */
size_t aigw_usage_backlog(const struct aigw_usage *u);
size_t aigw_usage_spool_bytes(const struct aigw_usage *u);

#endif
