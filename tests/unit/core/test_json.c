/* The publish path's JSON scanner (src/core/json.c): what it accepts and
 * refuses, the members it finds, minify and unescape. Every input is read
 * from a guarded copy, so a read one byte past the end crashes. */
#include "core/json.h"
#include "testlib.h"

static const char *const KEYS[] = {"event", "data"};

/* Scans s; returns validity, and the two members' texts in ev/da. */
static bool scan(const char *s, sb_str_t v[2], bool *obj)
{
    size_t n = strlen(s);
    char *g = tl_guarded(s, n);
    bool ok = sb_json_scan(g, n, KEYS, v, 2, obj);
    /* The spans point into the guarded copy: turn them into offsets of s. */
    for (int i = 0; i < 2; i++)
        if (v[i].p) v[i].p = s + (v[i].p - g);
    tl_guard_free(g);
    return ok;
}

static bool valid(const char *s)
{
    sb_str_t v[2];
    bool obj;
    return scan(s, v, &obj);
}

static void test_validity(void)
{
    static const char *good[] = {
        "0", "-0", "1.5", "-12.5e+3", "1E9", "1e-0", "true", "false", "null", "\"\"",
        "\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\"", "\"\\u00e9\\uD83D\\uDE00\"", "[]", "{}",
        " [ 1 , [ ] , { } , \"x\" ] ", "{\"a\":{\"b\":[1,{\"c\":null}]}}", "\t\r\n{}\n",
        "\"\xc3\xa9 raw UTF-8 passes\"", "123456789012345678901234567890",
    };
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        bool ok = valid(good[i]);
        if (!ok) fprintf(stderr, "refused: %s\n", good[i]);
        CHECK(ok);
    }
    static const char *bad[] = {
        "", " ", "01", "+1", "1.", ".5", "1e", "1e+", "-", "--1", "0x10", "tru", "nul", "True",
        "\"abc", "\"a\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\uDE00\"", "\"\\uD83D\"",
        "\"\\uD83Dx\"", "\"\\uD83D\\u0041\"", "\"tab\there\"", "[1,]", "[,1]", "[1 2]", "{,}",
        "{\"a\"}", "{\"a\":}", "{\"a\":1,}", "{a:1}", "{\"a\" 1}", "{\"a\":1]", "[1}", "[",
        "{\"a\":[}", "1 2", "{} {}", "{}x", "[]]", "\"\\",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        bool ok = valid(bad[i]);
        if (ok) fprintf(stderr, "accepted: %s\n", bad[i]);
        CHECK(!ok);
    }
    /* Nesting: SB_JSON_MAX_DEPTH levels are fine, one more is refused. */
    char deep[2 * SB_JSON_MAX_DEPTH + 3];
    for (int extra = 0; extra < 2; extra++) {
        size_t d = SB_JSON_MAX_DEPTH + (size_t)extra, n = 0;
        for (size_t i = 0; i < d; i++) deep[n++] = '[';
        for (size_t i = 0; i < d; i++) deep[n++] = ']';
        deep[n] = 0;
        CHECK(valid(deep) == (extra == 0));
    }
}

static void test_members(void)
{
    sb_str_t v[2];
    bool obj = false;
    CHECK(scan("{\"event\":\"x\",\"data\":{\"a\":[1, 2]} }", v, &obj) && obj);
    CHECK_EQ_STR(v[0].p, v[0].len, "\"x\"");
    CHECK_EQ_STR(v[1].p, v[1].len, "{\"a\":[1, 2]}");
    /* Nested members of the same name do not count; the first top-level one does. */
    CHECK(scan("{\"x\":{\"data\":1},\"data\" : 2 ,\"data\":3}", v, &obj));
    CHECK(!v[0].p);
    CHECK_EQ_STR(v[1].p, v[1].len, "2");
    /* Names compare unescaped. */
    CHECK(scan("{\"d\\u0061ta\":[]}", v, &obj));
    CHECK_EQ_STR(v[1].p, v[1].len, "[]");
    /* A value inside an array is not a member. */
    CHECK(scan("[{\"data\":1}]", v, &obj) && !obj && !v[1].p);
    CHECK(scan("\"data\"", v, &obj) && !obj && !v[1].p);
    CHECK(scan("{\"data\":{}}", v, &obj));
    CHECK_EQ_STR(v[1].p, v[1].len, "{}");
}

static void test_minify_unescape(void)
{
    const char *s = " { \"a b\" : [ 1 , \"x \\\" y\\\\\" ] ,\n\t\"c\" : { } } ";
    char out[128];
    size_t n = sb_json_minify(s, strlen(s), out);
    CHECK_EQ_STR(out, n, "{\"a b\":[1,\"x \\\" y\\\\\"],\"c\":{}}");
    char e[16];
    const char *lit = "\"a\\n\\u00e9\\uD83D\\uDE00\\/\"";
    long l = sb_json_unescape(lit, strlen(lit), e, sizeof e);
    CHECK_EQ_STR(e, l, "a\n\xc3\xa9\xf0\x9f\x98\x80/");
    CHECK_EQ_INT(sb_json_unescape("\"a\\u0000b\"", 10, e, sizeof e), -1); /* NUL */
    CHECK_EQ_INT(sb_json_unescape("\"abcdef\"", 8, e, 5), -1);            /* does not fit */
    CHECK_EQ_INT(sb_json_unescape("\"\"", 2, e, 0), 0);
}

int main(void)
{
    test_validity();
    test_members();
    test_minify_unescape();
    return tl_done("json");
}
