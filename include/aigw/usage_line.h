/* usage_line.h - the usage spool's line format, for the usage writer (and
 * its tests): aigw_usage_line writes a row as one compact JSON object whose
 * keys are the columns of ai_usage_logs in AIGW_USAGE_COLUMNS order; the
 * writer reads such lines back into one PostgreSQL binary array per column
 * (array send format), the parameters of its unnest() INSERT. */
#ifndef AIGW_USAGE_LINE_H
#define AIGW_USAGE_LINE_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "aigw/usage.h"

#define AIGW_USAGE_NCOLS 19
#define AIGW_USAGE_COLUMNS                                                                         \
    "id, tenant_id, user_id, api_key_id, request_id, route, query_type, question_sha256, model,"    \
    " prompt_tokens, completion_tokens, from_cache, billed, status_code, success, error_code,"      \
    " response_ms, upstream_ms, created_at"

/* The writer's statements (here so that bench/usage_rowcost sends the very
 * same). What they do with the rows: insert the new ones and raise the
 * quota counter by the billed rows inserted now (not the conflicting
 * replays) whose created_at lies in the current UTC month (a row stamped
 * in another month by a clock ahead or behind is left out), restarting at
 * 0 in a new month; the UPDATE is skipped when there is nothing to add, and
 * leaves updated_at alone (the tenant's settings did not change: the
 * platform routes show it as their last change). The column list is
 * explicit so that a column added later gets its default. */
#define AIGW_USAGE_RETURNING_TAIL                                                                   \
    " RETURNING billed, created_at),"                                                               \
    " n AS (SELECT count(*) AS c FROM ins WHERE billed"                                             \
    " AND created_at >= date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"           \
    " AND created_at < (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month')"        \
    " AT TIME ZONE 'UTC')"                                                                          \
    " UPDATE tenants SET ai_queries_used = CASE WHEN ai_queries_month ="                            \
    " date_trunc('month', now() AT TIME ZONE 'UTC')::date THEN ai_queries_used ELSE 0 END + n.c,"   \
    " ai_queries_month = date_trunc('month', now() AT TIME ZONE 'UTC')::date"                       \
    " FROM n WHERE tenants.id = aigw_current_tenant() AND n.c > 0"
#define AIGW_USAGE_ON_CONFLICT_TAIL " ON CONFLICT (id) DO NOTHING" AIGW_USAGE_RETURNING_TAIL

/* The usual statement: $1..$19 are one binary array per column (see
 * usage_line.c), in AIGW_USAGE_COLUMNS order. */
#define AIGW_USAGE_INSERT_BIN_HEAD                                                                  \
    "WITH ins AS (INSERT INTO ai_usage_logs (" AIGW_USAGE_COLUMNS ")"                               \
    " SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::text[], $6::text[]," \
    " $7::text[], $8::text[], $9::text[], $10::int4[], $11::int4[], $12::bool[], $13::bool[],"      \
    " $14::int4[], $15::bool[], $16::text[], $17::int4[], $18::int4[], $19::timestamptz[])"

/* The row as one compact JSON line ending in '\n', keys in AIGW_USAGE_COLUMNS
 * order (id and tenant_id first); created_at is RFC 3339 UTC with
 * microseconds. Text that is not UTF-8 keeps the row with '?' for the odd
 * bytes. malloc'd (caller frees), *len without a NUL. */
char *aigw_usage_line(const struct aigw_usage_row *r, size_t *len);

/* One column's array in PostgreSQL's binary array format. */
struct aigw_usage_array {
    char *buf;             /* 20-byte header, then the elements */
    size_t len, cap;
    bool has_null;
};

/* The 19 arrays of one statement; the buffers are kept (and only grow)
 * across statements. Zero-initialise before the first reset. */
struct aigw_usage_arrays {
    struct aigw_usage_array col[AIGW_USAGE_NCOLS];
    int n;                 /* rows (elements per array) */
};

/* Empty all arrays for a new statement. */
void aigw_usage_arrays_reset(struct aigw_usage_arrays *a);

/* Append the row in line (len bytes, no '\n') as one element of each array.
 * Only lines exactly in aigw_usage_line's shape are taken: every key in its
 * place, no whitespace, string/int/bool/null as the column's type allows,
 * canonical uuids, int4 range, created_at as YYYY-MM-DDTHH:MM:SS.ffffffZ, and
 * strings whose escapes PostgreSQL's jsonb would decode the same way. false
 * for anything else: the arrays are then unusable until the next reset, and
 * the caller sends these rows as JSON for PostgreSQL to judge. */
bool aigw_usage_arrays_add(struct aigw_usage_arrays *a, const char *line, size_t len);

/* Complete the array headers and describe them as the statement's binary
 * parameters: types[i] the array type's OID, values[i]/lengths[i] the bytes
 * (valid until the next reset or add). */
void aigw_usage_arrays_finish(struct aigw_usage_arrays *a, Oid types[AIGW_USAGE_NCOLS],
                              const char *values[AIGW_USAGE_NCOLS], int lengths[AIGW_USAGE_NCOLS]);

void aigw_usage_arrays_free(struct aigw_usage_arrays *a);

#endif
