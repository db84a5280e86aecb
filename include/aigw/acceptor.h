/* acceptor.h - aigw's listening socket, the thread that accepts on it and
 * deals the connections out to libmicrohttpd's workers, the connection
 * limit and the request deadline (http.request_timeout_s).
 *
 * Lifecycle: aigw_acceptor_open (binds), MHD_start_daemon with
 * MHD_OPTION_NOTIFY_CONNECTION = aigw_acceptor_notify and its cls = the
 * acceptor, aigw_acceptor_start (the thread), ... aigw_acceptor_quiesce
 * (stop accepting, close the socket: the drain), MHD_stop_daemon (its close
 * notifications still reach the acceptor), aigw_acceptor_free. */
#ifndef AIGW_ACCEPTOR_H
#define AIGW_ACCEPTOR_H

#include <microhttpd.h>
#include <stdint.h>

#include "aigw/config.h"

struct aigw_acceptor;
struct aigw_metrics;

/* Bind and listen on cfg's address for threads workers; the client limit
 * is http.max_connections, or fewer when the open-file limit leaves no
 * room for that many beside aigw's own descriptors (logged). NULL when the
 * address cannot be parsed or bound (logged). Owner: caller
 * (aigw_acceptor_free). */
struct aigw_acceptor *aigw_acceptor_open(const struct aigw_config *cfg, unsigned threads);

/* The port bound (the configured one, or the kernel's pick for port 0). */
uint16_t aigw_acceptor_port(const struct aigw_acceptor *a);

/* Start the accept thread, handing connections to mhd; refused request
 * deadlines are counted in metrics (may be NULL). Aborts when no thread
 * can be made. */
void aigw_acceptor_start(struct aigw_acceptor *a, struct MHD_Daemon *mhd, struct aigw_metrics *metrics);

/* MHD_OPTION_NOTIFY_CONNECTION callback (cls = the acceptor): a connection
 * starts (its request deadline runs) or closes (its place is free). */
void aigw_acceptor_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe);

/* A request arrived whole on conn (line, headers, body): its deadline no
 * longer applies. From a libmicrohttpd worker; NULL-safe on a. */
void aigw_acceptor_request_arrived(struct aigw_acceptor *a, struct MHD_Connection *conn);

/* conn's response ended: the next request's deadline runs from now. */
void aigw_acceptor_request_done(struct aigw_acceptor *a, struct MHD_Connection *conn);

/* Stop accepting, join the thread and close the listening socket (new
 * clients are refused instead of parked in the backlog). Idempotent,
 * NULL-safe. */
void aigw_acceptor_quiesce(struct aigw_acceptor *a);

/* Free (after aigw_acceptor_quiesce and MHD_stop_daemon). NULL-safe. */
void aigw_acceptor_free(struct aigw_acceptor *a);

#endif
