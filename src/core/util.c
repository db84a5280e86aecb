/* util.c - allocation, clocks, hashing, parsing helpers shared by every module */
#include "aigw/util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static void
oom(size_t n)
{
    fprintf(stderr, "<2>aigw: out of memory allocating %zu bytes\n", n);
    abort();
}

void *
aigw_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (p == NULL)
        oom(n);
    return p;
}

void *
aigw_xcalloc(size_t count, size_t n)
{
    void *p = calloc(count ? count : 1, n ? n : 1);

    if (p == NULL)
        oom(count * n);
    return p;
}

void *
aigw_xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);

    if (q == NULL)
        oom(n);
    return q;
}

char *
aigw_xstrdup(const char *s)
{
    return aigw_xstrndup(s, strlen(s));
}

char *
aigw_xstrndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = aigw_xmalloc(len + 1);

    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

int
aigw_sockaddr_parse(const char *addr, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof(*ss));
    if (addr == NULL)
        return -1;
    if (strchr(addr, ':') != NULL) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;

        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*s6);
        return inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;

    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    *len = sizeof(*s4);
    return inet_pton(AF_INET, addr, &s4->sin_addr) == 1 ? 0 : -1;
}

void
aigw_free_secret(char *s)
{
    if (s == NULL)
        return;
    explicit_bzero(s, strlen(s));
    free(s);
}

int64_t
aigw_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
aigw_now_ms(void)
{
    return aigw_now_us() / 1000;
}

int64_t
aigw_wall_s(void)
{
    return (int64_t)time(NULL);
}

int64_t
aigw_wall_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void
aigw_eventfd_signal(int fd)
{
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof(one));

    (void)n;
}

void
aigw_eventfd_drain(int fd)
{
    uint64_t v;
    ssize_t n = read(fd, &v, sizeof(v));

    (void)n;
}

void
aigw_deadline_ms(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* EVP_sha256() makes every digest look its implementation up in the
 * provider tables again (~2.3k instructions of a 100-byte hash); fetched once,
 * it is reused. Read-only after the first call; freed by the process exit. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void
sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void
aigw_sha256(const void *buf, size_t len, unsigned char out[32])
{
    unsigned int outlen = 0;

    pthread_once(&sha256_once, sha256_fetch);
    if (sha256_md == NULL || EVP_Digest(buf, len, out, &outlen, sha256_md, NULL) != 1)
        abort();
}

void
aigw_hex(const unsigned char *in, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * n] = '\0';
}

void
aigw_random(void *buf, size_t n)
{
    if (RAND_bytes(buf, (int)n) != 1) {
        fprintf(stderr, "<2>aigw: RAND_bytes failed\n");
        abort();
    }
}

/* xoshiro256** (Blackman & Vigna): fast, 256-bit state, not cryptographic. */
static uint64_t
rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

void
aigw_unique_bytes(void *buf, size_t n)
{
    static _Thread_local uint64_t st[4];
    static _Thread_local bool seeded;
    unsigned char *out = buf;

    if (!seeded) {
        do
            aigw_random(st, sizeof(st));
        while ((st[0] | st[1] | st[2] | st[3]) == 0);
        seeded = true;
    }
    while (n > 0) {
        uint64_t r = rotl(st[1] * 5, 7) * 9, t = st[1] << 17;
        size_t k = n < sizeof(r) ? n : sizeof(r);

        st[2] ^= st[0];
        st[3] ^= st[1];
        st[1] ^= st[2];
        st[0] ^= st[3];
        st[2] ^= t;
        st[3] = rotl(st[3], 45);
        memcpy(out, &r, k);
        out += k;
        n -= k;
    }
}

static void
uuid_text(unsigned char b[16], unsigned version, char out[37])
{
    static const char digits[] = "0123456789abcdef";
    size_t pos = 0;

    b[6] = (unsigned char)((b[6] & 0x0F) | (version << 4));
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[pos++] = '-';
        out[pos++] = digits[b[i] >> 4];
        out[pos++] = digits[b[i] & 15];
    }
    out[pos] = '\0';
}

void
aigw_uuid4(char out[37])
{
    unsigned char b[16];

    aigw_random(b, sizeof(b));
    uuid_text(b, 4, out);
}

void
aigw_uuid7(char out[37])
{
    unsigned char b[16];
    struct timespec ts;
    uint64_t ms;

    clock_gettime(CLOCK_REALTIME, &ts);
    ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
    aigw_unique_bytes(b + 6, sizeof(b) - 6);
    for (int i = 5; i >= 0; i--, ms >>= 8)
        b[i] = (unsigned char)(ms & 0xFF);
    uuid_text(b, 7, out);
}

size_t
aigw_fmt_int(char *out, long long v)
{
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    char tmp[24];
    size_t n = 0, len = 0;

    do
        tmp[n++] = (char)('0' + u % 10);
    while ((u /= 10) > 0);
    if (v < 0)
        out[len++] = '-';
    while (n > 0)
        out[len++] = tmp[--n];
    out[len] = '\0';
    return len;
}

size_t
aigw_write_all(int fd, const void *p, size_t n, int *err)
{
    size_t off = 0;

    while (off < n) {
        ssize_t w = write(fd, (const char *)p + off, n - off);

        if (w > 0) {
            off += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else {
            *err = w < 0 ? errno : ENOSPC;
            break;
        }
    }
    return off;
}

char *
aigw_path_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = aigw_xmalloc(n);

    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

bool
aigw_concat(char *dst, size_t cap, ...)
{
    size_t pos = 0;
    const char *s;
    va_list ap;

    va_start(ap, cap);
    while ((s = va_arg(ap, const char *)) != NULL) {
        size_t n = strlen(s);

        if (n >= cap - pos) {
            va_end(ap);
            if (cap > 0)
                dst[0] = '\0';
            return false;
        }
        memcpy(dst + pos, s, n);
        pos += n;
    }
    va_end(ap);
    if (cap > 0)
        dst[pos] = '\0';
    return cap > 0;
}

bool
aigw_has_prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

bool
aigw_is_uuid(const char *s, size_t len)
{
    if (len != 36)
        return false;
    for (size_t i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return false;
        } else if (!isxdigit((unsigned char)s[i])) {
            return false;
        }
    }
    return true;
}

bool
aigw_parse_long(const char *s, long min, long max, long *out)
{
    char *end = NULL;
    long v;

    if (s == NULL || *s == '\0')
        return false;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return false;
    *out = v;
    return true;
}

int64_t
aigw_days_from_civil(int y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void
aigw_civil_from_days(int64_t days, int *y, int *m, int *d)
{
    int64_t z = days + 719468, era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;

    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = (int)(yoe + era * 400 + (*m <= 2));
}

/* n decimal digits of v (0 <= v < 10^n) at out */
static void
put_digits(char *out, int v, int n)
{
    for (int i = n - 1; i >= 0; i--, v /= 10)
        out[i] = (char)('0' + v % 10);
}

void
aigw_utc_datetime(int64_t t, char out[20])
{
    int64_t days = (t >= 0 ? t : t - 86399) / 86400, secs = t - days * 86400;
    int y, m, d;

    aigw_civil_from_days(days, &y, &m, &d);
    put_digits(out, y, 4);
    out[4] = '-';
    put_digits(out + 5, m, 2);
    out[7] = '-';
    put_digits(out + 8, d, 2);
    out[10] = 'T';
    put_digits(out + 11, (int)(secs / 3600), 2);
    out[13] = ':';
    put_digits(out + 14, (int)(secs / 60 % 60), 2);
    out[16] = ':';
    put_digits(out + 17, (int)(secs % 60), 2);
    out[19] = '\0';
}

void
aigw_rfc3339(int64_t t, char out[32])
{
    aigw_utc_datetime(t, out);
    out[19] = 'Z';
    out[20] = '\0';
}

int64_t
aigw_next_month_start(int64_t t)
{
    int y, m, d;

    aigw_civil_from_days((t >= 0 ? t : t - 86399) / 86400, &y, &m, &d);
    if (++m == 13) {
        m = 1;
        y++;
    }
    return aigw_days_from_civil(y, m, 1) * 86400;
}

void
aigw_month_key(int64_t t, char out[8])
{
    int y, m, d;

    aigw_civil_from_days((t >= 0 ? t : t - 86399) / 86400, &y, &m, &d);
    put_digits(out, y, 4);
    put_digits(out + 4, m, 2);
    out[6] = '\0';
}

uint64_t
aigw_hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

unsigned
aigw_name_bits(const char *list, const char *const *names, int n)
{
    unsigned bits = 0;

    while (*list) {
        size_t len = strcspn(list, ",");

        for (int i = 0; i < n; i++)
            if (strlen(names[i]) == len && strncmp(list, names[i], len) == 0)
                bits |= 1u << i;
        list += len;
        if (*list == ',')
            list++;
    }
    return bits;
}

/* ---- UTF-8 ---- */

size_t
aigw_utf8_seq(const unsigned char *p, size_t avail)
{
    size_t n;
    unsigned cp;

    if (avail == 0)
        return 0;
    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xE0) == 0xC0) {
        n = 2;
        cp = p[0] & 0x1F;
    } else if ((p[0] & 0xF0) == 0xE0) {
        n = 3;
        cp = p[0] & 0x0F;
    } else if ((p[0] & 0xF8) == 0xF0) {
        n = 4;
        cp = p[0] & 0x07;
    } else {
        return 0;
    }
    for (size_t i = 1; i < n; i++) {
        if (i >= avail || (p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

/* ---- JSON string escapes ---- */

int
aigw_hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Four hex digits at p (end permitting) as a number, or -1. */
static long
hex4(const char *p, const char *end)
{
    long v = 0;

    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        int h = aigw_hexval(p[i]);

        if (h < 0)
            return -1;
        v = v << 4 | h;
    }
    return v;
}

/* Code point cp as UTF-8 at q; returns the end. */
static char *
utf8_put(char *q, unsigned long cp)
{
    if (cp < 0x80) {
        *q++ = (char)cp;
    } else if (cp < 0x800) {
        *q++ = (char)(0xC0 | cp >> 6);
        *q++ = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        *q++ = (char)(0xE0 | cp >> 12);
        *q++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (char)(0x80 | (cp & 0x3F));
    } else {
        *q++ = (char)(0xF0 | cp >> 18);
        *q++ = (char)(0x80 | ((cp >> 12) & 0x3F));
        *q++ = (char)(0x80 | ((cp >> 6) & 0x3F));
        *q++ = (char)(0x80 | (cp & 0x3F));
    }
    return q;
}

/* The \u escape at p (after "\u"): a BMP code point or a surrogate pair,
 * decoded to UTF-8 at *q. NULL for what jsonb refuses (\u0000, a lone or
 * reversed surrogate). */
static const char *
unescape_u(const char *p, const char *end, char **q)
{
    long cp = hex4(p, end), lo;

    if (cp <= 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
        return NULL;
    p += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        if (end - p < 6 || p[0] != '\\' || p[1] != 'u')
            return NULL;
        lo = hex4(p + 2, end);
        if (lo < 0xDC00 || lo > 0xDFFF)
            return NULL;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        p += 6;
    }
    *q = utf8_put(*q, (unsigned long)cp);
    return p;
}

const char *
aigw_json_unescape(const char *p, const char *end, char **q)
{
    char ch;

    if (p >= end)
        return NULL;
    switch (*p++) {
    case '"':
        ch = '"';
        break;
    case '\\':
        ch = '\\';
        break;
    case '/':
        ch = '/';
        break;
    case 'b':
        ch = '\b';
        break;
    case 'f':
        ch = '\f';
        break;
    case 'n':
        ch = '\n';
        break;
    case 'r':
        ch = '\r';
        break;
    case 't':
        ch = '\t';
        break;
    case 'u':
        return unescape_u(p, end, q);
    default:
        return NULL;
    }
    *(*q)++ = ch;
    return p;
}
