/* reservations.h - a journal of the monthly-quota reservations in flight.
 *
 * A query's quota is reserved in Redis before its model call and either kept
 * (billed) or refunded when the request settles. A process that dies in
 * between (kill -9, OOM, a crash) settles nothing, and without this journal
 * those reservations stayed counted for the rest of the month. Each
 * reservation is appended to a journal file in the spool directory ("R" line)
 * and marked settled in the same file ("S" line); at the next start the
 * reservations of the previous run that never settled are refunded. Files
 * rotate at a size and a file is removed once every reservation in it has
 * settled. Thread-safe; one instance per spool directory (the usage spool's
 * lock on the directory covers it). */
#ifndef AIGW_RESERVATIONS_H
#define AIGW_RESERVATIONS_H

#include <stddef.h>
#include <stdint.h>

struct aigw_resv;
/* The journal file a reservation was written to (its S line goes there). */
struct aigw_resv_file;

/* Read what the previous run left in dir (reservations never settled: see
 * aigw_resv_recover) and start a new journal file. NULL with err on failure. */
struct aigw_resv *aigw_resv_open(const char *dir, char *err, size_t cap);
/* Reservations left unsettled by the previous run and not refunded yet. */
size_t aigw_resv_leftover(const struct aigw_resv *j);
/* refund(ud, reservation id, tenant id, at_s): give back the query reserved
 * from the month containing at_s, once per id however often it is asked
 * (the journal may ask again for a refund whose answer was lost); 0 done,
 * else it stays for the next attempt. */
typedef int (*aigw_resv_refund_fn)(void *ud, const char *id, const char *tenant_id, int64_t at_s);
/* Refund the previous run's unsettled reservations, once each; when all are
 * done the previous run's files are removed (else they stay for the next
 * start). Returns how many were refunded now. */
size_t aigw_resv_recover(struct aigw_resv *j, aigw_resv_refund_fn refund, void *ud);
/* Journal a reservation (id: the request's usage id). Returns the file to
 * settle it in, or NULL when it could not be written (logged; the
 * reservation is then not covered). NULL-safe on j. */
struct aigw_resv_file *aigw_resv_add(struct aigw_resv *j, const char *id, const char *tenant_id, int64_t at_s);
/* The reservation id in f is settled (kept or refunded). NULL-safe. */
void aigw_resv_settle(struct aigw_resv *j, struct aigw_resv_file *f, const char *id);
/* Close; files whose reservations all settled are removed. NULL-safe. */
void aigw_resv_close(struct aigw_resv *j);

#endif
