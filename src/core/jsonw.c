/* jsonw.c - streaming JSON writer; escaping follows RFC 8259 */
#include "aigw/jsonw.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/util.h"

static void
reserve(struct aigw_jsonw *w, size_t more)
{
    if (w->len + more + 1 <= w->cap)
        return;
    while (w->len + more + 1 > w->cap)
        w->cap *= 2;
    w->buf = aigw_xrealloc(w->buf, w->cap);
}

void
aigw_jsonw_append(struct aigw_jsonw *w, const char *s, size_t len)
{
    reserve(w, len);
    memcpy(w->buf + w->len, s, len);
    w->len += len;
    w->buf[w->len] = '\0';
}

static void
put(struct aigw_jsonw *w, char ch)
{
    reserve(w, 1);
    w->buf[w->len++] = ch;
    w->buf[w->len] = '\0';
}

/* Before a value in an array/object context: a comma unless first. */
static void
sep(struct aigw_jsonw *w)
{
    if (w->need_comma)
        put(w, ',');
    w->need_comma = true;
}

void
aigw_jsonw_init(struct aigw_jsonw *w, size_t cap)
{
    w->cap = cap < 64 ? 64 : cap;
    w->buf = aigw_xmalloc(w->cap);
    w->buf[0] = '\0';
    w->len = 0;
    w->need_comma = false;
}

char *
aigw_jsonw_take(struct aigw_jsonw *w, size_t *len)
{
    char *b = w->buf;

    if (len != NULL)
        *len = w->len;
    w->buf = NULL;
    w->len = w->cap = 0;
    return b;
}

void
aigw_jsonw_free(struct aigw_jsonw *w)
{
    free(w->buf);
    w->buf = NULL;
}

void
aigw_jsonw_obj_open(struct aigw_jsonw *w)
{
    sep(w);
    put(w, '{');
    w->need_comma = false;
}

void
aigw_jsonw_obj_close(struct aigw_jsonw *w)
{
    put(w, '}');
    w->need_comma = true;
}

/* Printable ASCII other than '"' and '\\': copied as it is. */
static bool
plain(unsigned char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* Does any of the 8 bytes in x need escaping (< 0x20, '"', '\\') or a
 * UTF-8 check (>= 0x80)? Word-at-a-time tests (Hacker's Delight / "Bit
 * Twiddling Hacks" haszero): about 1.5 instructions per byte instead of 6. */
static bool
swar_special(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    uint64_t q = x ^ (ones * '"'), b = x ^ (ones * '\\');

    return ((((x - ones * 0x20) & ~x) | ((q - ones) & ~q) | ((b - ones) & ~b) | x) & high) != 0;
}

static void
escaped(struct aigw_jsonw *w, const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t len = strlen(s);
    char *o;

    /* the usual string needs no escaping: one reserve, one pass */
    reserve(w, len + 2);
    o = w->buf + w->len;
    *o++ = '"';
    for (const unsigned char *end8 = p + (len & ~(size_t)7); p < end8; p += 8, o += 8) {
        uint64_t x;

        memcpy(&x, p, 8);
        if (swar_special(x))
            break;
        memcpy(o, p, 8);
    }
    while (plain(*p))
        *o++ = (char)*p++;
    w->len = (size_t)(o - w->buf);
    w->buf[w->len] = '\0';
    while (*p) {
        size_t run = 0, n;

        /* copy the longest run that needs no escaping at once */
        while (plain(p[run]))
            run++;
        if (run > 0) {
            aigw_jsonw_append(w, (const char *)p, run);
            p += run;
            continue;
        }
        if (*p == '"' || *p == '\\') {
            char e[2] = {'\\', (char)*p};

            aigw_jsonw_append(w, e, 2);
            p++;
        } else if (*p < 0x20) {
            char e[8];

            snprintf(e, sizeof(e), "\\u%04x", *p);
            aigw_jsonw_append(w, e, 6);
            p++;
        } else if ((n = aigw_utf8_seq(p, 4)) > 0) { /* a NUL ends a sequence: no read past the string */
            aigw_jsonw_append(w, (const char *)p, n);
            p += n;
        } else {
            put(w, '?');
            p++;
        }
    }
    put(w, '"');
}

void
aigw_jsonw_key(struct aigw_jsonw *w, const char *key)
{
    sep(w);
    escaped(w, key);
    put(w, ':');
    w->need_comma = false;
}

void
aigw_jsonw_str(struct aigw_jsonw *w, const char *s)
{
    sep(w);
    if (s == NULL)
        aigw_jsonw_append(w, "null", 4);
    else
        escaped(w, s);
}

void
aigw_jsonw_int(struct aigw_jsonw *w, long long v)
{
    char num[24];
    size_t n = aigw_fmt_int(num, v);

    sep(w);
    aigw_jsonw_append(w, num, n);
}

void
aigw_jsonw_bool(struct aigw_jsonw *w, bool v)
{
    sep(w);
    aigw_jsonw_append(w, v ? "true" : "false", v ? 4 : 5);
}

void
aigw_jsonw_null(struct aigw_jsonw *w)
{
    sep(w);
    aigw_jsonw_append(w, "null", 4);
}

void
aigw_jsonw_raw(struct aigw_jsonw *w, const char *json, size_t len)
{
    sep(w);
    aigw_jsonw_append(w, json, len);
}

void
aigw_jsonw_kstr(struct aigw_jsonw *w, const char *key, const char *s)
{
    aigw_jsonw_key(w, key);
    aigw_jsonw_str(w, s);
}

void
aigw_jsonw_kint(struct aigw_jsonw *w, const char *key, long long v)
{
    aigw_jsonw_key(w, key);
    aigw_jsonw_int(w, v);
}

void
aigw_jsonw_kbool(struct aigw_jsonw *w, const char *key, bool v)
{
    aigw_jsonw_key(w, key);
    aigw_jsonw_bool(w, v);
}
