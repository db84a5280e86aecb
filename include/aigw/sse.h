/* sse.h - a streaming (text/event-stream) response: a bounded byte pipe
 * from a producer thread (the upstream engine) to one MHD connection.
 *
 * Two owners hold a reference each: the request (dropped by
 * aigw_sse_detach when the connection ends, however it ends) and the
 * producer (dropped by aigw_sse_close). Whoever goes last frees it. The
 * consumer side waits by suspending its connection; the producer resumes it
 * when bytes arrive or it closes, so no thread ever blocks or polls. */
#ifndef AIGW_SSE_H
#define AIGW_SSE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct MHD_Connection;
struct aigw_sse;

/* A pipe for conn; the producer is told "full" once high_water bytes wait. */
struct aigw_sse *aigw_sse_create(struct MHD_Connection *conn, size_t high_water);

/* Producer (any thread): append n bytes; content marks an event that
 * carried answer text (counted for billing an interrupted stream). Returns
 * true when the pipe is full: the producer should pause until drained.
 * Bytes written after the request is gone are dropped. */
bool aigw_sse_write(struct aigw_sse *s, const char *p, size_t n, bool content);
/* Producer: no more bytes; wakes the consumer, drops the producer's reference. */
void aigw_sse_close(struct aigw_sse *s);

/* Consumer (the connection's thread, from the access handler or the
 * content reader): true when there is something to act on (bytes, or the
 * producer closed); otherwise the connection is suspended until there is,
 * and false is returned. */
bool aigw_sse_wait(struct aigw_sse *s);
/* Consumer: copy up to max waiting bytes. Returns the count (0 = none
 * waiting), or -1 once the producer closed and everything was read.
 * *drained is set when the pipe had been full and now fell to half its
 * high-water mark: the producer may be unpaused. */
ssize_t aigw_sse_read(struct aigw_sse *s, char *buf, size_t max, bool *drained);
/* Consumer: append bytes of its own (the final event); never "full". */
void aigw_sse_append(struct aigw_sse *s, const char *p, size_t n);
/* A consistent look at the pipe (each pointer may be NULL): started = any
 * byte was ever written (the response can start); closed = the producer
 * finished (its outcome is ready: it closes last); chunks = output events
 * written so far. */
void aigw_sse_state(struct aigw_sse *s, bool *started, bool *closed, long *chunks);
/* The request is gone: later writes are dropped; drops its reference. */
void aigw_sse_detach(struct aigw_sse *s);

#endif
