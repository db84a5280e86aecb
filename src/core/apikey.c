/* apikey.c - API key format, scopes and the strict timestamp parser (pure) */
#include "aigw/apikey.h"

#include <stdio.h>
#include <string.h>

#include "aigw/util.h"

const char *const aigw_scope_names[AIGW_N_SCOPES] = {"query", "chat"};

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

unsigned
aigw_scope_bit(const char *name)
{
    for (int i = 0; i < AIGW_N_SCOPES; i++)
        if (strcmp(name, aigw_scope_names[i]) == 0)
            return 1u << i;
    return 0;
}

unsigned
aigw_scope_parse_list(const char *list)
{
    return aigw_name_bits(list, aigw_scope_names, AIGW_N_SCOPES);
}

/* base64url without padding; out holds 4 * ceil(n / 3) + 1 bytes. */
static size_t
b64url(const unsigned char *in, size_t n, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        size_t left = n - i;

        if (left > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (left > 2)
            v |= in[i + 2];
        out[o++] = B64URL[(v >> 18) & 63];
        out[o++] = B64URL[(v >> 12) & 63];
        if (left > 1)
            out[o++] = B64URL[(v >> 6) & 63];
        if (left > 2)
            out[o++] = B64URL[v & 63];
    }
    out[o] = '\0';
    return o;
}

void
aigw_apikey_generate(char key[AIGW_APIKEY_LEN + 1], char shown[AIGW_APIKEY_SHOWN_LEN + 1])
{
    unsigned char rnd[AIGW_APIKEY_RANDOM_BYTES];

    aigw_random(rnd, sizeof(rnd));
    memcpy(key, AIGW_APIKEY_PREFIX, AIGW_APIKEY_PREFIX_LEN);
    b64url(rnd, sizeof(rnd), key + AIGW_APIKEY_PREFIX_LEN);
    explicit_bzero(rnd, sizeof(rnd));
    memcpy(shown, key, AIGW_APIKEY_SHOWN_LEN);
    shown[AIGW_APIKEY_SHOWN_LEN] = '\0';
}

bool
aigw_apikey_has_prefix(const char *s)
{
    return strncmp(s, AIGW_APIKEY_PREFIX, AIGW_APIKEY_PREFIX_LEN) == 0;
}

bool
aigw_apikey_well_formed(const char *s, size_t len)
{
    if (len != AIGW_APIKEY_LEN || !aigw_apikey_has_prefix(s))
        return false;
    for (size_t i = AIGW_APIKEY_PREFIX_LEN; i < len; i++)
        if (s[i] == '\0' || strchr(B64URL, s[i]) == NULL)
            return false;
    return true;
}

/* ---- RFC 3339 ---- */

/* n decimal digits at s into *out. */
static bool
digits(const char *s, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

static bool
leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant's algorithm). */
static int64_t
days_from_civil(int y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* 9999-12-31T23:59:59Z: the last instant RFC 3339's four-digit year can
 * write (aigw_rfc3339 shows times back to the client) */
#define RFC3339_MAX 253402300799

/* "Z" or "+HH:MM" / "-HH:MM" at s, ending the string; offset in seconds east. */
static bool
parse_offset(const char *s, int *offset)
{
    int hh, mm;

    if ((s[0] == 'Z' || s[0] == 'z') && s[1] == '\0') {
        *offset = 0;
        return true;
    }
    if ((s[0] != '+' && s[0] != '-') || !digits(s + 1, 2, &hh) || s[3] != ':' || !digits(s + 4, 2, &mm) ||
        s[6] != '\0' || hh > 23 || mm > 59)
        return false;
    *offset = (hh * 3600 + mm * 60) * (s[0] == '-' ? -1 : 1);
    return true;
}

bool
aigw_parse_rfc3339(const char *s, int64_t *out)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int y, mo, d, h, mi, sec, offset;

    if (strlen(s) < 20 || !digits(s, 4, &y) || s[4] != '-' || !digits(s + 5, 2, &mo) || s[7] != '-' ||
        !digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || !digits(s + 11, 2, &h) || s[13] != ':' ||
        !digits(s + 14, 2, &mi) || s[16] != ':' || !digits(s + 17, 2, &sec))
        return false;
    if (y < 1970 || mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] + (mo == 2 && leap(y)) || h > 23 || mi > 59 ||
        sec > 59)
        return false;
    s += 19;
    if (*s == '.') {
        s++;
        if (*s < '0' || *s > '9')
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    if (!parse_offset(s, &offset))
        return false;
    *out = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset;
    return *out <= RFC3339_MAX;
}

void
aigw_apikey_revoked_key(const char *tenant_id, const char *key_id, char *buf, size_t cap)
{
    snprintf(buf, cap, "aigw:{%s}:kr:%s", tenant_id, key_id);
}

void
aigw_apikey_window_key(const char *tenant_id, const char *key_id, char *buf, size_t cap)
{
    snprintf(buf, cap, "aigw:{%s}:krlb:%s", tenant_id, key_id);
}
