/* The streaming UTF-8 validator: valid multilingual text and boundary code
 * points, every invalid class with the exact byte at which it must fail (fail
 * fast, for an early 1007), every split of every vector, and an exhaustive
 * comparison with a plain decoder over all short sequences. */
#include "testlib.h"
#include "ws/frame.h"

#include <stdlib.h>

typedef struct {
    const char *s;
    size_t len;
} vec_t;
#define V(lit) {(lit), sizeof(lit) - 1}

static const vec_t valid[] = {
    V(""),
    V("Hello, world"),
    V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5"),                 /* kosme */
    V("Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!"),
    V("\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c"), /* Chinese */
    V("\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82"),             /* Russian */
    V("\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7"),                     /* Arabic */
    V("\xf0\x9f\x98\x80 \xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd"),             /* emoji */
    V("\x00"), V("\x7f"),
    V("\xc2\x80"), V("\xdf\xbf"),                 /* U+0080, U+07FF */
    V("\xe0\xa0\x80"), V("\xed\x9f\xbf"),         /* U+0800, U+D7FF */
    V("\xee\x80\x80"), V("\xef\xbf\xbd"),         /* U+E000, U+FFFD */
    V("\xef\xbf\xbe"), V("\xef\xbf\xbf"),         /* noncharacters are valid */
    V("\xf0\x90\x80\x80"), V("\xf4\x8f\xbf\xbf"), /* U+10000, U+10FFFF */
    V("\xf3\xbf\xbf\xbf"),
};

/* Invalid input and the index of the byte at which the validator must say so;
 * -1 means every byte is a possible prefix, and only completeness fails. */
static const struct {
    vec_t v;
    int fail_at;
} invalid[] = {
    {V("\x80"), 0},                      /* lone continuation bytes */
    {V("\xbf"), 0},
    {V("ab\x80\x80"), 2},
    {V("\xc0\x80"), 0},                  /* overlong 2-byte: C0, C1 are never valid */
    {V("\xc1\xbf"), 0},
    {V("\xe0\x80\x80"), 1},              /* overlong 3-byte */
    {V("\xe0\x9f\xbf"), 1},
    {V("\xf0\x80\x80\x80"), 1},          /* overlong 4-byte */
    {V("\xf0\x8f\xbf\xbf"), 1},
    {V("\xed\xa0\x80"), 1},              /* surrogates */
    {V("\xed\xbf\xbf"), 1},
    {V("\xed\xa0\x80\xed\xb0\x80"), 1},  /* a surrogate pair, CESU-8 style */
    {V("\xf4\x90\x80\x80"), 1},          /* above U+10FFFF */
    {V("\xf4\xbf\xbf\xbf"), 1},
    {V("\xf5\x80\x80\x80"), 0},          /* F5..FF fail at once */
    {V("\xf7\xbf\xbf\xbf"), 0},
    {V("\xf8\x88\x80\x80\x80"), 0},
    {V("\xfc\x84\x80\x80\x80\x80"), 0},
    {V("\xfe"), 0},
    {V("\xff"), 0},
    {V("abc\xff"), 3},
    {V("\xc2\x41"), 1},                  /* a continuation replaced by ASCII */
    {V("\xe1\x80\x41"), 2},
    {V("\xf1\x80\x80\x41"), 3},
    {V("\xc2\xc2\x80"), 1},              /* a lead where a continuation belongs */
    {V("\xe1\x80\xe1\x80\x80"), 2},
    {V("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80" "edited"), 12},
    {V("\xc2"), -1},                     /* truncated: fine so far, never complete */
    {V("\xe0\xa0"), -1},
    {V("\xf0\x90\x80"), -1},
    {V("\xf4\x8f\xbf"), -1},
    {V("ok \xe2\x82"), -1},
};

static bool feed(sb_utf8_stream_t *s, const char *p, size_t n)
{
    char *g = tl_guarded(p, n);
    bool ok = sb_utf8_stream_feed(s, (const uint8_t *)g, n);
    tl_guard_free(g);
    return ok;
}

/* Whole, and in two and three pieces at every split point. */
static bool stream_valid(const char *p, size_t n)
{
    sb_utf8_stream_t s = {0};
    return feed(&s, p, n) && sb_utf8_stream_complete(&s);
}

static bool split2(const char *p, size_t n, size_t i)
{
    sb_utf8_stream_t s = {0};
    bool a = feed(&s, p, i);
    bool b = feed(&s, p + i, n - i);
    return a && b && sb_utf8_stream_complete(&s);
}

static bool split3(const char *p, size_t n, size_t i, size_t j)
{
    sb_utf8_stream_t s = {0};
    bool a = feed(&s, p, i);
    bool b = feed(&s, p + i, j - i);
    bool c = feed(&s, p + j, n - j);
    return a && b && c && sb_utf8_stream_complete(&s);
}

static void test_vectors(void)
{
    for (size_t k = 0; k < sizeof(valid) / sizeof(valid[0]); k++) {
        const char *p = valid[k].s;
        size_t n = valid[k].len;
        CHECK(stream_valid(p, n));
        for (size_t i = 0; i <= n; i++) {
            CHECK(split2(p, n, i));
            for (size_t j = i; j <= n; j++) CHECK(split3(p, n, i, j));
        }
        /* Byte by byte, a prefix is complete exactly at code point boundaries. */
        sb_utf8_stream_t s = {0};
        for (size_t i = 0; i < n; i++) {
            CHECK(sb_utf8_stream_feed(&s, (const uint8_t *)p + i, 1));
            bool boundary = i + 1 == n || ((uint8_t)p[i + 1] & 0xC0) != 0x80;
            CHECK_EQ_INT(sb_utf8_stream_complete(&s), boundary);
        }
    }
    for (size_t k = 0; k < sizeof(invalid) / sizeof(invalid[0]); k++) {
        const char *p = invalid[k].v.s;
        size_t n = invalid[k].v.len;
        CHECK(!stream_valid(p, n));
        for (size_t i = 0; i <= n; i++) {
            CHECK(!split2(p, n, i));
            for (size_t j = i; j <= n; j++) CHECK(!split3(p, n, i, j));
        }
        /* Fed one byte at a time, it fails exactly at the first byte that
         * proves the text invalid, and stays failed. */
        sb_utf8_stream_t s = {0};
        int failed_at = -1;
        for (size_t i = 0; i < n; i++) {
            bool ok = feed(&s, p + i, 1);
            if (!ok && failed_at < 0) failed_at = (int)i;
            if (failed_at >= 0) CHECK(!ok);
        }
        if (failed_at != invalid[k].fail_at) fprintf(stderr, "invalid vector %zu\n", k);
        CHECK_EQ_INT(failed_at, invalid[k].fail_at);
        CHECK(!sb_utf8_stream_complete(&s));
    }
}

/* The plain definition: decode, then check the range of the code point. */
static bool ref_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        size_t n;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (len - i <= n) return false; /* truncated */
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

static bool dfa_valid(const uint8_t *p, size_t n)
{
    sb_utf8_stream_t s = {0};
    return sb_utf8_stream_feed(&s, p, n) && sb_utf8_stream_complete(&s);
}

static void test_exhaustive(void)
{
    int bad = 0;
    uint8_t b[4];
    for (unsigned x = 0; x < 256; x++) {
        b[0] = (uint8_t)x;
        if (dfa_valid(b, 1) != ref_valid(b, 1)) bad++;
        for (unsigned y = 0; y < 256; y++) {
            b[1] = (uint8_t)y;
            if (dfa_valid(b, 2) != ref_valid(b, 2)) bad++;
        }
    }
    /* Every 3-byte sequence whose lead can start a multi-byte character. */
    for (unsigned x = 0xC0; x < 256; x++)
        for (unsigned y = 0; y < 256; y++)
            for (unsigned z = 0; z < 256; z++) {
                b[0] = (uint8_t)x, b[1] = (uint8_t)y, b[2] = (uint8_t)z;
                if (dfa_valid(b, 3) != ref_valid(b, 3)) bad++;
            }
    /* 4-byte sequences: every lead and second byte, the interesting edges after. */
    static const uint8_t edge[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F,
                                   0xA0, 0xBF, 0xC0, 0xC2, 0xE0, 0xF0, 0xFF};
    for (unsigned x = 0xE0; x < 256; x++)
        for (unsigned y = 0; y < 256; y++)
            for (size_t z = 0; z < sizeof(edge); z++)
                for (size_t w = 0; w < sizeof(edge); w++) {
                    b[0] = (uint8_t)x, b[1] = (uint8_t)y, b[2] = edge[z], b[3] = edge[w];
                    if (dfa_valid(b, 4) != ref_valid(b, 4)) bad++;
                }
    CHECK_EQ_INT(bad, 0);
}

/* Long ASCII runs take the 8-bytes-at-a-time path: a bad byte anywhere in them,
 * at any alignment, is still found, and the last byte before the guard page is
 * read but not the one after it. */
static void test_ascii_fast_path(void)
{
    char buf[80];
    for (size_t len = 1; len <= 64; len++)
        for (size_t bad = 0; bad < len; bad++) {
            memset(buf, 'a', len);
            buf[bad] = (char)0x80;
            sb_utf8_stream_t s = {0};
            CHECK(!feed(&s, buf, len));
            memset(buf, 'a', len);
            buf[bad] = (char)0xC3;
            if (bad + 1 < len) buf[bad + 1] = (char)0xA9;
            s = (sb_utf8_stream_t){0};
            CHECK(feed(&s, buf, len));
            CHECK_EQ_INT(sb_utf8_stream_complete(&s), bad + 1 < len);
        }
    /* Random text made of valid pieces, checked against the reference. */
    static const char *pieces[] = {"a", "hello ", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                                   "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf", "0123456789abcdef"};
    uint32_t r = 99;
    int mismatch = 0;
    for (int t = 0; t < 3000; t++) {
        char text[512];
        size_t n = 0;
        while (n < 400) {
            r = r * 1103515245u + 12345u;
            const char *pc = pieces[(r >> 16) % 8];
            size_t pl = strlen(pc);
            memcpy(text + n, pc, pl);
            n += pl;
        }
        /* Half the time, corrupt one byte. */
        r = r * 1103515245u + 12345u;
        if (r & 0x10000) text[(r >> 17) % n] = (char)(r >> 8);
        if (dfa_valid((const uint8_t *)text, n) != ref_valid((const uint8_t *)text, n)) mismatch++;
        r = r * 1103515245u + 12345u;
        size_t cut = (r >> 16) % (n + 1);
        if (split2(text, n, cut) != ref_valid((const uint8_t *)text, n)) mismatch++;
    }
    CHECK_EQ_INT(mismatch, 0);
}

static void test_sticky(void)
{
    sb_utf8_stream_t s = {0};
    CHECK(!sb_utf8_stream_feed(&s, (const uint8_t *)"\xff", 1));
    CHECK(!sb_utf8_stream_feed(&s, (const uint8_t *)"plain ascii", 11));
    CHECK(!sb_utf8_stream_feed(&s, (const uint8_t *)"", 0));
    CHECK(!sb_utf8_stream_complete(&s));
    /* A state this module never writes is treated as failed, not trusted. */
    s.state = 12345;
    CHECK(!sb_utf8_stream_feed(&s, (const uint8_t *)"a", 1));
    /* Feeding nothing keeps a fresh stream valid and complete. */
    s = (sb_utf8_stream_t){0};
    CHECK(sb_utf8_stream_feed(&s, NULL, 0));
    CHECK(sb_utf8_stream_complete(&s));
}

int main(void)
{
    test_vectors();
    test_exhaustive();
    test_ascii_fast_path();
    test_sticky();
    return tl_done("ws/utf8");
}
