/* jsonw.h - a small JSON writer for the hot path (responses, usage rows,
 * cache entries): appends to a growable buffer, no tree, no allocation per value */
#ifndef AIGW_JSONW_H
#define AIGW_JSONW_H

#include <stdbool.h>
#include <stddef.h>

struct aigw_jsonw {
    char *buf;             /* NUL-terminated; owned (free) */
    size_t len, cap;
    bool need_comma;
};

/* Start empty (cap is a first size hint). Never fails (aborts on OOM). */
void aigw_jsonw_init(struct aigw_jsonw *w, size_t cap);
/* Give up the buffer: *len gets its length; the caller frees the result. */
char *aigw_jsonw_take(struct aigw_jsonw *w, size_t *len);
void aigw_jsonw_free(struct aigw_jsonw *w);

void aigw_jsonw_obj_open(struct aigw_jsonw *w);   /* '{' (as a value) */
void aigw_jsonw_obj_close(struct aigw_jsonw *w);  /* '}' */
/* Object key (escaped) followed by ':'; the next call writes its value. */
void aigw_jsonw_key(struct aigw_jsonw *w, const char *key);
/* Values. Strings are escaped; bytes that are not valid UTF-8 become '?'.
 * NULL writes null. */
void aigw_jsonw_str(struct aigw_jsonw *w, const char *s);
void aigw_jsonw_int(struct aigw_jsonw *w, long long v);
void aigw_jsonw_bool(struct aigw_jsonw *w, bool v);
void aigw_jsonw_null(struct aigw_jsonw *w);
/* A value that is already valid JSON text (len bytes). */
void aigw_jsonw_raw(struct aigw_jsonw *w, const char *json, size_t len);
/* Append bytes with no separator logic (e.g. a trailing newline). */
void aigw_jsonw_append(struct aigw_jsonw *w, const char *s, size_t len);

/* Shorthands: key + value. */
void aigw_jsonw_kstr(struct aigw_jsonw *w, const char *key, const char *s);
void aigw_jsonw_kint(struct aigw_jsonw *w, const char *key, long long v);
void aigw_jsonw_kbool(struct aigw_jsonw *w, const char *key, bool v);

#endif
