/* RFC 6455 frame headers: parsing (every opcode, length form, partial split, mask
 * and RSV rule), unmasking, the server-side builders and close payloads. Parser
 * inputs sit flush against a guard page, so reading one byte too far crashes. */
#include "testlib.h"
#include "ws/frame.h"

#include <stdlib.h>

/* Encodes a header independently of sb_ws_frame_header (which is under test
 * too): ext = 0, 2 or 8 picks the length form, so non-minimal forms can be made. */
static size_t enc(uint8_t *out, uint8_t b0, bool masked, int ext, uint64_t len)
{
    size_t n = 0;
    out[n++] = b0;
    uint8_t m = masked ? 0x80 : 0;
    if (ext == 0) {
        out[n++] = (uint8_t)(m | len);
    } else if (ext == 2) {
        out[n++] = m | 126;
        out[n++] = (uint8_t)(len >> 8);
        out[n++] = (uint8_t)len;
    } else {
        out[n++] = m | 127;
        for (int i = 7; i >= 0; i--) out[n++] = (uint8_t)(len >> (8 * i));
    }
    if (masked) {
        out[n++] = 0x37;
        out[n++] = 0xfa;
        out[n++] = 0x21;
        out[n++] = 0x3d;
    }
    return n;
}

typedef struct {
    int rc, code;
    sb_ws_frame_t f;
} res_t;

static res_t parse(const uint8_t *hdr, size_t len, bool require_mask, bool allow_rsv1,
                   uint64_t max)
{
    res_t r = {0, 0, {0}};
    char *g = tl_guarded(hdr, len);
    r.rc = sb_ws_frame_parse((const uint8_t *)g, len, require_mask, allow_rsv1, max, &r.f, &r.code);
    tl_guard_free(g);
    return r;
}

/* Every proper prefix of a valid header must ask for more input. */
static void check_every_split(const uint8_t *hdr, size_t hlen, bool require_mask)
{
    for (size_t k = 0; k < hlen; k++) {
        res_t r = parse(hdr, k, require_mask, true, UINT64_MAX);
        CHECK_EQ_INT(r.rc, SB_AGAIN);
    }
}

static void test_opcodes(void)
{
    for (int op = 0; op < 16; op++) {
        uint8_t h[14];
        size_t n = enc(h, (uint8_t)(0x80 | op), true, 0, 5);
        res_t r = parse(h, n, true, false, 1 << 20);
        bool known = op <= 2 || (op >= 8 && op <= 10);
        if (known) {
            CHECK_EQ_INT(r.rc, 6);
            CHECK_EQ_INT(r.f.opcode, op);
            CHECK(r.f.fin);
            CHECK(!r.f.rsv1);
            CHECK(r.f.masked);
            CHECK_EQ_INT(r.f.payload_len, 5);
            CHECK_EQ_INT(r.f.header_len, 6);
            CHECK(memcmp(r.f.mask, "\x37\xfa\x21\x3d", 4) == 0);
        } else {
            CHECK_EQ_INT(r.rc, SB_EPARSE);
            CHECK_EQ_INT(r.code, 1002);
            /* A reserved opcode is refused at the first byte. */
            r = parse(h, 1, true, false, 1 << 20);
            CHECK_EQ_INT(r.rc, SB_EPARSE);
            CHECK_EQ_INT(r.code, 1002);
        }
    }
}

static void test_lengths(void)
{
    static const struct {
        uint64_t len;
        int ext;
    } cases[] = {
        {0, 0},         {1, 0},          {125, 0},     {126, 2},           {127, 2},
        {65535, 2},     {65536, 8},      {65537, 8},   {(1ull << 32) + 7, 8},
        {(1ull << 63) - 1, 8},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (int masked = 0; masked < 2; masked++) {
            for (int op = 1; op <= 2; op++) {
                uint8_t h[14];
                size_t n = enc(h, (uint8_t)(0x80 | op), masked, cases[i].ext, cases[i].len);
                res_t r = parse(h, n, masked, false, UINT64_MAX);
                CHECK_EQ_INT(r.rc, (int)n);
                CHECK_EQ_INT(r.f.header_len, n);
                CHECK(r.f.payload_len == cases[i].len);
                CHECK_EQ_INT(r.f.masked, masked);
                CHECK_EQ_INT(r.f.opcode, op);
                check_every_split(h, n, masked);
                /* Extra bytes after the header are the payload's, not ours. */
                uint8_t more[20];
                memcpy(more, h, n);
                memset(more + n, 0xAA, sizeof(more) - n);
                r = parse(more, sizeof(more), masked, false, UINT64_MAX);
                CHECK_EQ_INT(r.rc, (int)n);
            }
        }
    }
    /* A fragment that is not FIN parses the same way. */
    uint8_t h[14];
    size_t n = enc(h, SB_WS_OP_TEXT, true, 2, 300);
    res_t r = parse(h, n, true, false, UINT64_MAX);
    CHECK_EQ_INT(r.rc, 8);
    CHECK(!r.f.fin);
    n = enc(h, SB_WS_OP_CONT, true, 0, 3);
    r = parse(h, n, true, false, UINT64_MAX);
    CHECK_EQ_INT(r.rc, 6);
    CHECK_EQ_INT(r.f.opcode, SB_WS_OP_CONT);
    check_every_split(h, n, true);
}

static void expect_1002(const uint8_t *h, size_t n, bool require_mask, bool allow_rsv1)
{
    res_t r = parse(h, n, require_mask, allow_rsv1, UINT64_MAX);
    CHECK_EQ_INT(r.rc, SB_EPARSE);
    CHECK_EQ_INT(r.code, 1002);
}

static void test_non_minimal(void)
{
    uint8_t h[14];
    size_t n;
    static const uint64_t bad16[] = {0, 1, 125};
    for (size_t i = 0; i < 3; i++) {
        n = enc(h, 0x82, true, 2, bad16[i]);
        expect_1002(h, n, true, false);
        /* Refused as soon as the extended length is known, before the mask. */
        expect_1002(h, 4, true, false);
    }
    static const uint64_t bad64[] = {0, 125, 126, 65535};
    for (size_t i = 0; i < 4; i++) {
        n = enc(h, 0x82, true, 8, bad64[i]);
        expect_1002(h, n, true, false);
        expect_1002(h, 10, true, false);
    }
    /* The most significant bit of a 64-bit length must be 0. */
    n = enc(h, 0x82, true, 8, 1ull << 63);
    expect_1002(h, n, true, false);
    n = enc(h, 0x82, true, 8, UINT64_MAX);
    expect_1002(h, n, true, false);
}

static void test_mask_rule(void)
{
    uint8_t h[14];
    size_t n = enc(h, 0x81, false, 0, 3);
    expect_1002(h, n, true, false);
    expect_1002(h, 2, true, false);
    res_t r = parse(h, n, false, false, UINT64_MAX);
    CHECK_EQ_INT(r.rc, 2);
    CHECK(!r.f.masked);
    CHECK(memcmp(r.f.mask, "\0\0\0\0", 4) == 0);
    n = enc(h, 0x89, false, 0, 0);
    expect_1002(h, n, true, false);
}

static void test_rsv_rules(void)
{
    uint8_t h[14];
    size_t n;
    for (int allow = 0; allow < 2; allow++) {
        /* RSV2 and RSV3 have no meaning here, with or without deflate. */
        n = enc(h, 0x80 | 0x20 | SB_WS_OP_TEXT, true, 0, 1);
        expect_1002(h, n, true, allow);
        expect_1002(h, 1, true, allow);
        n = enc(h, 0x80 | 0x10 | SB_WS_OP_BINARY, true, 0, 1);
        expect_1002(h, n, true, allow);
        n = enc(h, 0x80 | 0x70 | SB_WS_OP_BINARY, true, 0, 1);
        expect_1002(h, n, true, allow);
        /* RSV1 never on control or continuation frames. */
        static const uint8_t ops[] = {SB_WS_OP_CONT, SB_WS_OP_CLOSE, SB_WS_OP_PING, SB_WS_OP_PONG};
        for (size_t i = 0; i < sizeof(ops); i++) {
            n = enc(h, (uint8_t)(0x80 | 0x40 | ops[i]), true, 0, 2);
            expect_1002(h, n, true, allow);
        }
    }
    /* RSV1 on the first data frame only when deflate was negotiated. */
    for (uint8_t op = 1; op <= 2; op++) {
        n = enc(h, (uint8_t)(0x40 | op), true, 0, 2); /* not FIN: first of several */
        expect_1002(h, n, true, false);
        res_t r = parse(h, n, true, true, UINT64_MAX);
        CHECK_EQ_INT(r.rc, 6);
        CHECK(r.f.rsv1);
        CHECK(!r.f.fin);
        check_every_split(h, n, true);
    }
}

static void test_control_frames(void)
{
    uint8_t h[14];
    size_t n;
    static const uint8_t ops[] = {SB_WS_OP_CLOSE, SB_WS_OP_PING, SB_WS_OP_PONG};
    for (size_t i = 0; i < 3; i++) {
        n = enc(h, (uint8_t)(0x80 | ops[i]), true, 0, 125);
        res_t r = parse(h, n, true, true, UINT64_MAX);
        CHECK_EQ_INT(r.rc, 6);
        CHECK_EQ_INT(r.f.payload_len, 125);
        /* Fragmented control frames are refused at the first byte. */
        n = enc(h, ops[i], true, 0, 1);
        expect_1002(h, n, true, true);
        expect_1002(h, 1, true, true);
        /* Longer than 125: refused at the second byte, whatever follows. */
        n = enc(h, (uint8_t)(0x80 | ops[i]), true, 2, 126);
        expect_1002(h, n, true, true);
        expect_1002(h, 2, true, true);
        n = enc(h, (uint8_t)(0x80 | ops[i]), true, 8, 70000);
        expect_1002(h, n, true, true);
    }
}

static void test_max_payload(void)
{
    static const uint64_t lens[] = {0, 100, 125, 126, 1000, 65535, 65536, 1u << 24};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        uint64_t len = lens[i];
        int ext = len <= 125 ? 0 : len <= 65535 ? 2 : 8;
        uint8_t h[14];
        size_t n = enc(h, 0x82, true, ext, len);
        res_t r = parse(h, n, true, false, len);
        CHECK_EQ_INT(r.rc, (int)n);
        if (len == 0) continue;
        r = parse(h, n, true, false, len - 1);
        CHECK_EQ_INT(r.rc, SB_EPARSE);
        CHECK_EQ_INT(r.code, 1009);
        /* Known as soon as the length is: the mask bytes need not arrive. */
        r = parse(h, n - 4, true, false, len - 1);
        CHECK_EQ_INT(r.rc, SB_EPARSE);
        CHECK_EQ_INT(r.code, 1009);
    }
    /* A protocol error outranks the size limit. */
    uint8_t h[14];
    size_t n = enc(h, 0x82, true, 2, 100);
    res_t r = parse(h, n, true, false, 10);
    CHECK_EQ_INT(r.code, 1002);
}

/* ---- unmask ---- */

static void ref_unmask(uint8_t *p, size_t len, const uint8_t m[4], uint64_t off)
{
    for (size_t i = 0; i < len; i++) p[i] ^= m[(off + i) & 3];
}

static uint32_t rng_state = 12345;
static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}

static void test_unmask(void)
{
    const uint8_t m[4] = {0x12, 0x9a, 0xfe, 0x01};
    uint8_t src[300], a[320], b[320];
    for (size_t i = 0; i < sizeof(src); i++) src[i] = (uint8_t)rnd();
    int bad = 0;
    /* Every start alignment, every offset rotation, lengths across the word,
     * 32-byte and tail paths. */
    for (size_t align = 0; align < 8; align++)
        for (uint64_t off = 0; off < 9; off++)
            for (size_t len = 0; len <= 100; len++) {
                memcpy(a + align, src, len);
                memcpy(b + align, src, len);
                sb_ws_unmask(a + align, len, m, off);
                ref_unmask(b + align, len, m, off);
                if (memcmp(a + align, b + align, len) != 0) bad++;
            }
    CHECK_EQ_INT(bad, 0);
    /* Unmasking in pieces at any split matches unmasking all at once. */
    bad = 0;
    for (int t = 0; t < 2000; t++) {
        size_t len = rnd() % 300;
        memcpy(a, src, len);
        memcpy(b, src, len);
        ref_unmask(b, len, m, 0);
        size_t pos = 0;
        while (pos < len) {
            size_t piece = 1 + rnd() % (len - pos);
            sb_ws_unmask(a + pos, piece, m, pos);
            pos += piece;
        }
        if (memcmp(a, b, len) != 0) bad++;
    }
    CHECK_EQ_INT(bad, 0);
    /* A large payload, and unmasking twice restores it. */
    size_t big = (1u << 20) + 3;
    uint8_t *x = malloc(big), *y = malloc(big);
    for (size_t i = 0; i < big; i++) x[i] = y[i] = (uint8_t)(i * 31);
    sb_ws_unmask(x + 1, big - 1, m, 2);
    ref_unmask(y + 1, big - 1, m, 2);
    CHECK(memcmp(x, y, big) == 0);
    sb_ws_unmask(x + 1, big - 1, m, 2);
    for (size_t i = 0; i < big; i++) y[i] = (uint8_t)(i * 31);
    CHECK(memcmp(x, y, big) == 0);
    free(x);
    free(y);
    /* Against the guard page: the last byte is the last readable one. */
    char *g = tl_guarded(src, 13);
    sb_ws_unmask((uint8_t *)g, 13, m, 1);
    memcpy(b, src, 13);
    ref_unmask(b, 13, m, 1);
    CHECK(memcmp(g, b, 13) == 0);
    tl_guard_free(g);
}

/* ---- builders ---- */

static void test_frame_header(void)
{
    static const uint64_t lens[] = {0, 125, 126, 65535, 65536, (1ull << 32) + 5};
    static const size_t hlens[] = {2, 2, 4, 4, 10, 10};
    for (size_t i = 0; i < 6; i++) {
        uint8_t h[10];
        size_t n = sb_ws_frame_header(h, SB_WS_OP_BINARY, true, false, lens[i]);
        CHECK_EQ_INT(n, hlens[i]);
        CHECK_EQ_INT(h[0], 0x82);
        CHECK_EQ_INT(h[1] & 0x80, 0); /* servers never mask */
        res_t r = parse(h, n, false, false, UINT64_MAX);
        CHECK_EQ_INT(r.rc, (int)n);
        CHECK(r.f.payload_len == lens[i]);
        CHECK(!r.f.masked);
    }
    uint8_t h[10];
    size_t n = sb_ws_frame_header(h, SB_WS_OP_TEXT, false, true, 3);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(h[0], 0x41);
    CHECK_EQ_INT(h[1], 3);
    n = sb_ws_frame_header(h, SB_WS_OP_CONT, true, false, 300);
    CHECK_EQ_INT(h[0], 0x80);
    CHECK(memcmp(h + 1, "\x7e\x01\x2c", 3) == 0);
    n = sb_ws_frame_header(h, SB_WS_OP_BINARY, true, false, 0x0102030405ull);
    CHECK(memcmp(h + 1, "\x7f\x00\x00\x00\x01\x02\x03\x04\x05", 9) == 0);
}

static void test_frame_build(void)
{
    sb_frame_t *f = sb_ws_frame_build(SB_WS_OP_TEXT, false, "Hello", 5);
    CHECK(f != NULL);
    CHECK_EQ_INT(f->len, 7);
    CHECK(memcmp(f->data, "\x81\x05Hello", 7) == 0);
    sb_frame_unref(f);

    f = sb_ws_frame_build(SB_WS_OP_PING, false, NULL, 0);
    CHECK_EQ_INT(f->len, 2);
    CHECK(memcmp(f->data, "\x89\x00", 2) == 0);
    sb_frame_unref(f);

    f = sb_ws_frame_build(SB_WS_OP_BINARY, true, "\xf2\x48", 2);
    CHECK(memcmp(f->data, "\xc2\x02\xf2\x48", 4) == 0);
    sb_frame_unref(f);

    size_t sizes[] = {125, 126, 65535, 65536};
    for (size_t i = 0; i < 4; i++) {
        uint8_t *p = malloc(sizes[i]);
        for (size_t j = 0; j < sizes[i]; j++) p[j] = (uint8_t)j;
        f = sb_ws_frame_build(SB_WS_OP_BINARY, false, p, sizes[i]);
        res_t r = parse((const uint8_t *)f->data, f->len, false, false, UINT64_MAX);
        CHECK(r.rc > 0);
        CHECK(r.f.payload_len == sizes[i]);
        CHECK_EQ_INT(f->len, (size_t)r.rc + sizes[i]);
        CHECK(memcmp(f->data + r.rc, p, sizes[i]) == 0);
        sb_frame_unref(f);
        free(p);
    }
}

static void check_close_frame(sb_frame_t *f, uint16_t code, const char *reason, size_t rlen)
{
    CHECK(f != NULL);
    if (!f) return;
    res_t r = parse((const uint8_t *)f->data, f->len, false, false, UINT64_MAX);
    CHECK_EQ_INT(r.rc, 2);
    CHECK_EQ_INT(r.f.opcode, SB_WS_OP_CLOSE);
    CHECK(r.f.fin);
    CHECK(r.f.payload_len <= 125);
    CHECK_EQ_INT(f->len, 2 + r.f.payload_len);
    const uint8_t *p = (const uint8_t *)f->data + 2;
    uint16_t got = 0;
    CHECK(sb_ws_close_payload_valid(p, (size_t)r.f.payload_len, &got));
    CHECK_EQ_INT(got, code);
    if (code != 1005) CHECK_EQ_STR(p + 2, r.f.payload_len - 2, reason);
    CHECK_EQ_INT(r.f.payload_len, code == 1005 ? 0 : 2 + rlen);
    sb_frame_unref(f);
}

static void test_close_frame(void)
{
    check_close_frame(sb_ws_close_frame(1000, "bye"), 1000, "bye", 3);
    check_close_frame(sb_ws_close_frame(1009, NULL), 1009, "", 0);
    check_close_frame(sb_ws_close_frame(1013, ""), 1013, "", 0);
    /* 1005 must never be sent: it becomes an empty close payload. */
    check_close_frame(sb_ws_close_frame(1005, "ignored"), 1005, "", 0);
    check_close_frame(sb_ws_close_frame(0, NULL), 1005, "", 0);

    /* 123 bytes of reason fit exactly; a longer one is cut there. */
    char r[200], expect[200];
    memset(r, 'a', 123);
    r[123] = '\0';
    check_close_frame(sb_ws_close_frame(1001, r), 1001, r, 123);
    memcpy(expect, r, 124);
    memset(r, 'a', 150);
    r[150] = '\0';
    check_close_frame(sb_ws_close_frame(1001, r), 1001, expect, 123);

    /* A 3-byte character straddling the cut is dropped whole, at every offset. */
    for (size_t pre = 118; pre <= 123; pre++) {
        memset(r, 'b', pre);
        memcpy(r + pre, "\xe2\x82\xac\xe2\x82\xac", 6); /* two euro signs */
        r[pre + 6] = '\0';
        size_t keep = pre;
        while (keep + 3 <= pre + 6 && keep + 3 <= 123) keep += 3;
        memcpy(expect, r, keep);
        expect[keep] = '\0';
        check_close_frame(sb_ws_close_frame(4000, r), 4000, expect, keep);
    }
    /* A reason that is not UTF-8 is dropped rather than sent. */
    check_close_frame(sb_ws_close_frame(1011, "bad \xff byte"), 1011, "", 0);
}

/* ---- close payload validity ---- */

static bool expect_valid_code(unsigned c)
{
    if (c >= 3000 && c <= 4999) return true;
    return c >= 1000 && c <= 1014 && c != 1004 && c != 1005 && c != 1006;
}

static bool close_valid(const void *p, size_t len, uint16_t *code)
{
    char *g = tl_guarded(p, len);
    bool ok = sb_ws_close_payload_valid((const uint8_t *)g, len, code);
    tl_guard_free(g);
    return ok;
}

static void test_close_payload(void)
{
    uint16_t code = 0;
    CHECK(close_valid("", 0, &code));
    CHECK_EQ_INT(code, 1005);
    CHECK(!close_valid("\x03", 1, &code));

    /* The table as the RFC and the IANA registry have it. */
    static const struct {
        unsigned code;
        bool ok;
    } table[] = {
        {0, false},     {999, false},   {1000, true},   {1001, true},  {1002, true},
        {1003, true},   {1004, false},  {1005, false},  {1006, false}, {1007, true},
        {1008, true},   {1009, true},   {1010, true},   {1011, true},  {1012, true},
        {1013, true},   {1014, true},   {1015, false},  {1016, false}, {1100, false},
        {2000, false},  {2999, false},  {3000, true},   {3999, true},  {4000, true},
        {4999, true},   {5000, false},  {65535, false},
    };
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        uint8_t p[2] = {(uint8_t)(table[i].code >> 8), (uint8_t)table[i].code};
        code = 0;
        bool ok = close_valid(p, 2, &code);
        if (ok != table[i].ok) fprintf(stderr, "close code %u\n", table[i].code);
        CHECK_EQ_INT(ok, table[i].ok);
        if (ok) CHECK_EQ_INT(code, table[i].code);
    }
    /* And every 16-bit code agrees with the rule. */
    int bad = 0;
    for (unsigned c = 0; c <= 0xFFFF; c++) {
        uint8_t p[2] = {(uint8_t)(c >> 8), (uint8_t)c};
        if (sb_ws_close_payload_valid(p, 2, &code) != expect_valid_code(c)) bad++;
    }
    CHECK_EQ_INT(bad, 0);

    CHECK(close_valid("\x03\xe8normal", 8, &code));
    CHECK_EQ_INT(code, 1000);
    CHECK(close_valid("\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", 13, &code));
    CHECK(!close_valid("\x03\xe8\xff", 3, &code));
    CHECK(!close_valid("\x03\xe8\xed\xa0\x80", 5, &code));  /* surrogate */
    CHECK(!close_valid("\x03\xe8\xce", 3, &code));          /* truncated code point */
    CHECK(!close_valid("\x03\xe8\xc0\xaf", 4, &code));      /* overlong '/' */
    CHECK(!close_valid("\x03\xec" "abc", 5, &code));        /* 1004 */

    uint8_t big[126];
    big[0] = 0x03;
    big[1] = 0xe8;
    memset(big + 2, 'x', sizeof(big) - 2);
    CHECK(close_valid(big, 125, &code));
    CHECK(!close_valid(big, 126, &code));
    /* code may be NULL. */
    CHECK(sb_ws_close_payload_valid(big, 125, NULL));
}

int main(void)
{
    test_opcodes();
    test_lengths();
    test_non_minimal();
    test_mask_rule();
    test_rsv_rules();
    test_control_frames();
    test_max_payload();
    test_unmask();
    test_frame_header();
    test_frame_build();
    test_close_frame();
    test_close_payload();
    return tl_done("ws/frame");
}
