/* util.h - allocation that aborts on failure, time, hashing and small string helpers */
#ifndef AIGW_UTIL_H
#define AIGW_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* A numeric IPv4 or IPv6 address (one with a colon is IPv6) and a port as
 * a socket address in *ss (*len its size). 0, or -1 when addr is not one
 * (a host name, say). */
int aigw_sockaddr_parse(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len);

/* Allocate or abort: small allocations never fail in a way worth handling
 * (h2o and Redis do the same). Sizes driven by input are checked by callers. */
void *aigw_xmalloc(size_t n);
void *aigw_xcalloc(size_t count, size_t n);
void *aigw_xrealloc(void *p, size_t n);
char *aigw_xstrdup(const char *s);
char *aigw_xstrndup(const char *s, size_t n);
/* Overwrite a NUL-terminated secret, then free it. NULL-safe. */
void aigw_free_secret(char *s);

/* Monotonic clock in milliseconds / microseconds (CLOCK_MONOTONIC). */
int64_t aigw_now_ms(void);
int64_t aigw_now_us(void);
/* Wall clock, seconds since the epoch. */
int64_t aigw_wall_s(void);
/* Wall clock (CLOCK_REALTIME) in microseconds since the epoch. */
int64_t aigw_wall_us(void);

/* Wake-up eventfds (EFD_NONBLOCK) of the threads that sleep in poll/epoll:
 * signal adds one (EAGAIN = the counter is full, so a wake-up is pending
 * anyway), drain resets it. Neither can fail in a way worth handling. */
void aigw_eventfd_signal(int fd);
void aigw_eventfd_drain(int fd);

struct timespec;
/* *ts = the CLOCK_REALTIME instant ms milliseconds from now (for
 * pthread_cond_timedwait). */
void aigw_deadline_ms(struct timespec *ts, int64_t ms);

/* SHA-256 of buf into out[32]. Never fails. */
void aigw_sha256(const void *buf, size_t len, unsigned char out[32]);
/* Lower-case hex of n bytes into out (2n+1 bytes incl. NUL). */
void aigw_hex(const unsigned char *in, size_t n, char *out);
/* Length (1..4) of the valid UTF-8 sequence at p, reading at most avail
 * bytes; 0 when it is not one (RFC 3629: no overlong form, no surrogate,
 * nothing past U+10FFFF). A NUL ends a sequence, so a NUL-terminated string
 * may pass 4. */
size_t aigw_utf8_seq(const unsigned char *p, size_t avail);
/* The value of hex digit ch (either case), or -1. */
int aigw_hexval(char ch);
/* The JSON string escape at p (just after its backslash; p..end) decoded
 * to UTF-8 at *q, which advances (never by more bytes than the escape
 * takes in the text, at most 4). Returns the text after the escape, or NULL
 * for one JSON or PostgreSQL's jsonb refuses: an unknown letter, bad hex,
 * \u0000, a lone or reversed surrogate. */
const char *aigw_json_unescape(const char *p, const char *end, char **q);
/* Fill buf with n cryptographically random bytes; aborts if the RNG fails. */
void aigw_random(void *buf, size_t n);

/* Fill buf with n bytes for identifiers that must be unique but need not be
 * secret (request ids, usage row ids): xoshiro256** with per-thread state
 * seeded once from aigw_random, so the hot path makes no RAND_bytes call
 * (1.8 us each here, with a getpid(2) for fork detection). Never for keys,
 * tokens or anything an attacker must not predict. */
void aigw_unique_bytes(void *buf, size_t n);
/* A random (version 4) UUID in canonical text form. */
void aigw_uuid4(char out[37]);
/* A time-ordered (version 7, RFC 9562) UUID: 48 bits of Unix milliseconds,
 * then 74 bits of aigw_unique_bytes (unique, not secret). For primary keys
 * of append-mostly tables: new ids land on the rightmost B-tree page
 * instead of a random one. */
void aigw_uuid7(char out[37]);

/* Decimal text of v at out (at least 21 bytes), NUL-terminated; returns
 * its length. For hot paths, where snprintf's ~700 instructions show. */
size_t aigw_fmt_int(char *out, long long v);
/* dst = the NUL-terminated concatenation of the strings up to the NULL;
 * false (dst = "") if it would not fit in cap bytes. */
bool aigw_concat(char *dst, size_t cap, ...) __attribute__((sentinel));
/* write(2) all n bytes of p to fd, going on after short writes and EINTR.
 * Returns the bytes written: n, or fewer with *err set (errno, or ENOSPC
 * for a write that wrote nothing) when a write failed. */
size_t aigw_write_all(int fd, const void *p, size_t n, int *err);
/* "dir/name" in a new allocation. */
char *aigw_path_join(const char *dir, const char *name);

/* FNV-1a hash of a NUL-terminated string (hash tables, not security). */
uint64_t aigw_hash_str(const char *s);
/* Bits of the names in a comma-separated list: bit i for names[i] (n names);
 * unknown names and empty items are ignored. */
unsigned aigw_name_bits(const char *list, const char *const *names, int n);

/* Case-insensitive prefix test. */
bool aigw_has_prefix_ci(const char *s, const char *prefix);
/* True when s (len bytes) is a canonical textual UUID (8-4-4-4-12 hex). */
bool aigw_is_uuid(const char *s, size_t len);
/* Parse a base-10 integer in [min,max]; false on any junk or overflow. */
bool aigw_parse_long(const char *s, long min, long max, long *out);
/* Days from 1970-01-01 to y-m-d of the proleptic Gregorian calendar, and
 * back (H. Hinnant's algorithms; pure arithmetic: glibc's gmtime_r takes a
 * process-wide lock, three times per request before these). */
int64_t aigw_days_from_civil(int y, int m, int d);
void aigw_civil_from_days(int64_t days, int *y, int *m, int *d);
/* "YYYY-MM-DDTHH:MM:SS" of Unix time t into out (20 bytes incl. NUL);
 * years 0000-9999. */
void aigw_utc_datetime(int64_t t, char out[20]);
/* RFC 3339 UTC timestamp ("2026-12-01T00:00:00Z") of t into out[32]. */
void aigw_rfc3339(int64_t t, char out[32]);
/* Start of the UTC month after the one containing t, and "YYYYMM" of t. */
int64_t aigw_next_month_start(int64_t t);
void aigw_month_key(int64_t t, char out[8]);

#endif
