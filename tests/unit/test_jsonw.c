/* test_jsonw.c - the hot-path JSON writer and the verified-token cache */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aigw/jsonw.h"
#include "aigw/jwt.h"
#include "aigw/util.h"
#include "testlib.h"

int
main(void)
{
    struct aigw_jsonw w;
    json_t *back;
    size_t len;
    char *text;

    aigw_jsonw_init(&w, 4);
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "a", "quote \" backslash \\ newline \n tab \t ctl \x01 é 😀");
    aigw_jsonw_kint(&w, "n", -42);
    aigw_jsonw_kbool(&w, "t", true);
    aigw_jsonw_key(&w, "nested");
    aigw_jsonw_obj_open(&w);
    aigw_jsonw_kstr(&w, "null", NULL);
    aigw_jsonw_obj_close(&w);
    aigw_jsonw_kstr(&w, "bad", "ok\xff\xfe" "end\xc3");
    aigw_jsonw_key(&w, "raw");
    aigw_jsonw_raw(&w, "[1,2]", 5);
    aigw_jsonw_obj_close(&w);
    text = aigw_jsonw_take(&w, &len);
    CHECK(strlen(text) == len, "length matches");
    back = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    CHECK(back != NULL, "output parses as JSON: %s", text);
    CHECK(back && strcmp(json_string_value(json_object_get(back, "a")),
                         "quote \" backslash \\ newline \n tab \t ctl \x01 é 😀") == 0,
          "escaping round-trips");
    CHECK(back && json_integer_value(json_object_get(back, "n")) == -42, "int");
    CHECK(back && json_is_true(json_object_get(back, "t")), "bool");
    CHECK(back && json_is_null(json_object_get(json_object_get(back, "nested"), "null")), "null in nested object");
    CHECK(back && strcmp(json_string_value(json_object_get(back, "bad")), "ok??end?") == 0,
          "invalid UTF-8 becomes '?'");
    CHECK(back && json_array_size(json_object_get(back, "raw")) == 2, "raw value");
    json_decref(back);
    free(text);

    /* the word-at-a-time scan: every special byte at every offset of strings
     * of 1..40 bytes round-trips through jansson */
    {
        static const char specials[] = {'"', '\\', '\n', 0x01, 0x1f, 0x7f, ' ', '~'};
        int bad = 0;

        for (size_t n = 1; n <= 40; n++)
            for (size_t at = 0; at < n; at++)
                for (size_t k = 0; k < sizeof(specials); k++) {
                    char in[48];

                    for (size_t i = 0; i < n; i++)
                        in[i] = (char)('a' + i % 26);
                    in[at] = specials[k];
                    in[n] = '\0';
                    aigw_jsonw_init(&w, 4);
                    aigw_jsonw_str(&w, in);
                    text = aigw_jsonw_take(&w, &len);
                    back = json_loads(text, JSON_DECODE_ANY, NULL);
                    if (back == NULL || strcmp(json_string_value(back), in) != 0 || strlen(text) != len)
                        bad++;
                    json_decref(back);
                    free(text);
                }
        CHECK(bad == 0, "special bytes at every offset round-trip (%d failures)", bad);
    }

    /* verified-token cache */
    {
        struct aigw_jwt_cache *c = aigw_jwt_cache_create(100, 300);
        struct aigw_claims cl, out;
        unsigned char h1[32], h2[32];

        memset(&cl, 0, sizeof(cl));
        snprintf(cl.tenant, sizeof(cl.tenant), "t1");
        cl.exp = 1000;
        aigw_sha256("token-1", 7, h1);
        aigw_sha256("token-2", 7, h2);
        CHECK(!aigw_jwt_cache_get(c, h1, 500, 1, &out), "empty cache misses");
        aigw_jwt_cache_put(c, h1, 500, 1, &cl);
        CHECK(aigw_jwt_cache_get(c, h1, 600, 1, &out) && strcmp(out.tenant, "t1") == 0, "hit");
        CHECK(!aigw_jwt_cache_get(c, h2, 600, 1, &out), "other token misses");
        CHECK(!aigw_jwt_cache_get(c, h1, 1000, 1, &out), "no hit at exp");
        cl.exp = 100000;
        aigw_jwt_cache_put(c, h1, 500, 1, &cl);
        CHECK(!aigw_jwt_cache_get(c, h1, 801, 1, &out), "no hit after max age");
        aigw_jwt_cache_put(c, h1, 900, 1, &cl);
        CHECK(!aigw_jwt_cache_get(c, h1, 901, 2, &out), "an entry of another key generation misses");
        CHECK(aigw_jwt_cache_get(c, h1, 901, 1, &out), "its own generation still hits");
        aigw_jwt_cache_clear(c);
        CHECK(!aigw_jwt_cache_get(c, h1, 901, 1, &out), "cleared");
        aigw_jwt_cache_destroy(c);
    }
    return tl_done();
}
