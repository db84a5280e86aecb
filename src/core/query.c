/* query.c - pure helpers of the query path: no I/O, unit-tested */
#include "aigw/query.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/config.h"
#include "aigw/util.h"

/* The Unicode space at p (valid UTF-8), as its length in bytes; 0 if none. */
static size_t
space_len(const unsigned char *p)
{
    unsigned cp;

    if (*p == ' ' || *p == '\t')
        return 1;
    if (p[0] == 0xc2 && p[1] == 0xa0)
        return 2;
    if ((p[0] & 0xf0) != 0xe0 || p[1] == 0 || p[2] == 0)
        return 0;
    cp = ((p[0] & 0x0fu) << 12) | ((p[1] & 0x3fu) << 6) | (p[2] & 0x3fu);
    if (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f ||
        cp == 0x205f || cp == 0x3000)
        return 3;
    return 0;
}

char *
aigw_query_normalize(const char *q)
{
    size_t n = strlen(q), o = 0;
    char *out = aigw_xmalloc(n + 1);
    bool space = false;

    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)q[i];
        /* Unicode spaces too: "date\u00a0of\u00a0birth" must meet the PII
         * guard's "date of birth", and ask the cache what "date of birth" does */
        size_t sl = isspace(ch) ? 1 : space_len((const unsigned char *)q + i);

        if (sl > 0) {
            i += sl - 1;
            space = o > 0;
            continue;
        }
        if (space)
            out[o++] = ' ';
        space = false;
        out[o++] = (char)(ch < 128 ? tolower(ch) : ch);
    }
    out[o] = '\0';
    return out;
}

size_t
aigw_utf8_chars(const char *s)
{
    size_t n = 0;

    for (; *s; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

bool
aigw_utf8_has_control(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    /* C1 is 0xC2 0x80..0x9F in UTF-8; p[1] is at worst the terminating NUL */
    for (; *p; p++)
        if (*p < 0x20 || *p == 0x7f || (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f))
            return true;
    return false;
}

bool
aigw_utf8_is_blank(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    while (*p) {
        size_t n = space_len(p);

        if (n == 0)
            return false;
        p += n;
    }
    return true;
}

/* The white space at p as its length in bytes: ASCII (isspace) or a
 * Unicode space; 0 if none. */
static size_t
white_len(const unsigned char *p)
{
    return isspace(*p) ? 1 : space_len(p);
}

const char *
aigw_utf8_trim(const char *s, size_t *len)
{
    const unsigned char *p = (const unsigned char *)s, *start, *end;
    size_t n;

    for (n = white_len(p); n > 0; n = white_len(p))
        p += n;
    start = end = p;
    /* a space's bytes are never the inner bytes of another character, so
     * everything else may be stepped over one byte at a time */
    while (*p != '\0') {
        n = white_len(p);
        p += n > 0 ? n : 1;
        if (n == 0)
            end = p;
    }
    *len = (size_t)(end - start);
    return (const char *)start;
}

/* The code point of the UTF-8 sequence at p, its length in *len; *len = 0
 * when p holds no complete sequence (a lone or cut one: the NUL that ends
 * the string is never a continuation byte, so nothing past it is read). */
static unsigned
utf8_decode(const unsigned char *p, size_t *len)
{
    size_t n = p[0] >= 0xf0 && p[0] <= 0xf4 ? 4 : p[0] >= 0xe0 ? 3 : p[0] >= 0xc2 && p[0] < 0xe0 ? 2 : 0;
    unsigned cp = n == 2 ? p[0] & 0x1fu : n == 3 ? p[0] & 0x0fu : p[0] & 0x07u;

    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80) {
            n = 0;
            break;
        }
        cp = (cp << 6) | (p[i] & 0x3fu);
    }
    *len = n;
    return cp;
}

/* The length in bytes of an invisible character at p, else 0: Unicode's
 * default-ignorable code points (soft hyphen, combining grapheme joiner,
 * zero-width space, non-joiner and joiner, direction marks, embeddings and
 * isolates, word joiner and the invisible operators, Hangul fillers,
 * variation selectors, BOM, tags, ...), which render as nothing. */
static size_t
invisible_len(const unsigned char *p)
{
    static const unsigned ranges[][2] = {
        {0x00ad, 0x00ad},   {0x034f, 0x034f},   {0x061c, 0x061c},   {0x115f, 0x1160}, {0x17b4, 0x17b5},
        {0x180b, 0x180f},   {0x200b, 0x200f},   {0x202a, 0x202e},   {0x2060, 0x206f}, {0x3164, 0x3164},
        {0xfe00, 0xfe0f},   {0xfeff, 0xfeff},   {0xffa0, 0xffa0},   {0xfff0, 0xfff8}, {0x1bca0, 0x1bca3},
        {0x1d173, 0x1d17a}, {0xe0000, 0xe0fff},
    };
    size_t n;
    unsigned cp;

    if (*p < 0xc2)
        return 0;
    cp = utf8_decode(p, &n);
    for (size_t i = 0; n > 0 && i < sizeof(ranges) / sizeof(ranges[0]); i++)
        if (cp >= ranges[i][0] && cp <= ranges[i][1])
            return n;
    return 0;
}

bool
aigw_utf8_has_visible(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    /* a question starts with a visible character almost always: one byte
     * looked at */
    while (*p != '\0') {
        size_t n = white_len(p);

        if (n == 0)
            n = invisible_len(p);
        if (n == 0 && (*p < 0x20 || *p == 0x7f))
            n = 1; /* C0 control, DEL */
        if (n == 0 && p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f)
            n = 2; /* C1 control */
        if (n == 0)
            return true;
        p += n;
    }
    return false;
}

/* text as words of ASCII letters and digits, one space between them: every
 * other character (punctuation, hyphens and spaces of any kind) separates
 * words, invisible ones are dropped. Written to stack when it fits in cap
 * bytes (most questions), else malloc'd: the caller frees what is not
 * stack. */
static char *
words_only(const char *text, char *stack, size_t cap)
{
    const unsigned char *p = (const unsigned char *)text;
    size_t need = strlen(text) + 1, o = 0, n;
    char *out = need <= cap ? stack : aigw_xmalloc(need);

    while (*p) {
        if ((n = invisible_len(p)) > 0) {
            p += n;
        } else if (*p < 128 && isalnum(*p)) {
            out[o++] = (char)*p++;
        } else {
            if (o > 0 && out[o - 1] != ' ')
                out[o++] = ' ';
            p++;
        }
    }
    out[o] = '\0';
    return out;
}

static bool
word_end(const char *e)
{
    return *e == '\0' || *e == ' ';
}

/* Whole-word match of term in text (words_only), also with a plural "s"
 * or "es" after it. */
static bool
has_term(const char *text, const char *term)
{
    size_t tl = strlen(term);

    for (const char *p = strstr(text, term); p != NULL; p = strstr(p + 1, term)) {
        const char *e = p + tl;

        if (p != text && p[-1] != ' ')
            continue;
        if (word_end(e) || (e[0] == 's' && word_end(e + 1)) || (e[0] == 'e' && e[1] == 's' && word_end(e + 2)))
            return true;
    }
    return false;
}

/* Whole-word match of word in text (words_only), exactly as written. */
static bool
has_word(const char *text, const char *word)
{
    size_t wl = strlen(word);

    for (const char *p = strstr(text, word); p != NULL; p = strstr(p + 1, word))
        if ((p == text || p[-1] == ' ') && word_end(p + wl))
            return true;
    return false;
}

static bool
any_word(const char *text, const char *const *words)
{
    for (; *words != NULL; words++)
        if (has_word(text, *words))
            return true;
    return false;
}

int
aigw_query_classify(const char *normalized)
{
    static const char *const sales[] = {"sales", "sale", "revenue", "revenues", "sold", "sell", "selling", NULL};
    static const char *const inventory[] = {"inventory", "stock", "stocks", "supplies", "supply", "reorder", NULL};
    static const char *const patients[] = {"patient", "patients", "customer trend", "customer trends", NULL};
    /* the words as the PII guard reads them: a question the guard would see
     * as asking for "patients' names" is a patient-analytics one here too
     * (read with an invisible character inside "patients", it was
     * knowledge, and the guard never ran) */
    char stack[512], *text = words_only(normalized, stack, sizeof(stack));
    const char *type = any_word(text, sales)       ? "sales"
                       : any_word(text, inventory) ? "inventory"
                       : any_word(text, patients)  ? "patient_analytics"
                                                   : "knowledge";

    if (text != stack)
        free(text);
    return aigw_query_type_index(type);
}

/* has_term, and for a phrase also its words written together: nothing
 * visible between them ("socialsecurity", "social<U+200B>security"). */
static bool
has_phrase(const char *text, const char *term)
{
    char joined[32];
    size_t o = 0;

    if (has_term(text, term))
        return true;
    if (strchr(term, ' ') == NULL)
        return false;
    for (const char *c = term; *c != '\0' && o + 1 < sizeof(joined); c++)
        if (*c != ' ')
            joined[o++] = *c;
    joined[o] = '\0';
    return has_term(text, joined);
}

bool
aigw_query_asks_pii(const char *normalized)
{
    /* as words_only spells them (e-mail is "e mail"); plurals match too, and
     * a phrase written as one word ("dateofbirth", "email") */
    static const char *const pii[] = {
        "name", "full name", "first name", "last name", "surname", "address", "phone", "phone number",
        "telephone", "mobile number", "cellphone", "e mail", "ssn", "social security", "date of birth",
        "dates of birth", "dob", "birth date", "birthday", "contact details", "insurance number", "passport", NULL,
    };
    char stack[512], *text = words_only(normalized, stack, sizeof(stack));
    bool found = false;

    for (const char *const *w = pii; *w != NULL && !found; w++)
        found = has_phrase(text, *w);
    if (text != stack)
        free(text);
    return found;
}

void
aigw_query_cache_hex(bool chat, const char *tenant_id, int qtype, const char *normalized, const char *model,
                     int max_tokens, char out[65])
{
    /* the OpenAI route's identity is the JSON it forwards, which a question
     * can spell too: its own tag keeps the two routes' answers apart (the
     * query route's tag is the one older builds used, so its entries stay) */
    const char *tag = chat ? "aigw-chat-v1" : "aigw-cache-v1";
    unsigned char md[32];
    char stack[512], *buf;
    size_t gl = strlen(tag) + 1, tl = strlen(tenant_id), ql = strlen(normalized), ml = strlen(model);
    size_t need = gl + tl + 1 + 22 + 22 + ql + 1 + ml, hl = 0;

    /* tag NUL tenant NUL qtype NUL max_tokens NUL question NUL model: the
     * NUL separators make the encoding unambiguous */
    buf = need <= sizeof(stack) ? stack : aigw_xmalloc(need);
    memcpy(buf, tag, gl);
    hl = gl;
    memcpy(buf + hl, tenant_id, tl + 1);
    hl += tl + 1;
    hl += aigw_fmt_int(buf + hl, qtype) + 1;
    hl += aigw_fmt_int(buf + hl, max_tokens) + 1;
    memcpy(buf + hl, normalized, ql + 1);
    memcpy(buf + hl + ql + 1, model, ml);
    aigw_sha256(buf, hl + ql + 1 + ml, md);
    if (buf != stack)
        free(buf);
    aigw_hex(md, 32, out);
}

bool
aigw_query_fresh_only(const struct aigw_query *q)
{
    return q->thinking || (q->finish_reason != NULL && strcmp(q->finish_reason, "tool_calls") == 0);
}
