/* permessage-deflate: offer negotiation, the RFC 7692 examples, round trips at
 * every window size, one compressed broadcast inflated by independent
 * receivers, context takeover, the output limit against a bomb, and corrupt
 * streams. */
#include "testlib.h"
#include "ws/frame.h"

#include <stdlib.h>

/* ---- negotiation ---- */

static void neg(const char *hdr, bool ok, const char *resp, int sbits, int cbits, bool cnct)
{
    char *g = tl_guarded(hdr, strlen(hdr));
    sb_ws_deflate_params_t p;
    char out[256];
    memset(out, 'x', sizeof(out));
    bool got = sb_ws_deflate_negotiate(sb_str(g, strlen(hdr)), &p, out, sizeof(out));
    tl_guard_free(g);
    if (got != ok) fprintf(stderr, "offer: %s\n", hdr);
    CHECK_EQ_INT(got, ok);
    CHECK_EQ_INT(p.enabled, ok);
    if (!ok) {
        CHECK_EQ_INT(out[0], '\0');
        return;
    }
    CHECK_EQ_STR(out, strlen(out), resp);
    CHECK(p.server_no_context_takeover);
    CHECK_EQ_INT(p.client_no_context_takeover, cnct);
    CHECK_EQ_INT(p.server_max_window_bits, sbits);
    CHECK_EQ_INT(p.client_max_window_bits, cbits);
}

#define PMD "permessage-deflate; server_no_context_takeover"

static void test_negotiate(void)
{
    neg("permessage-deflate", true, PMD, 15, 15, false);
    neg("permessage-deflate; client_max_window_bits", true, PMD, 15, 15, false);
    neg("permessage-deflate; client_max_window_bits, permessage-deflate", true, PMD, 15, 15,
        false);
    neg("permessage-deflate; client_max_window_bits=10", true,
        PMD "; client_max_window_bits=10", 15, 10, false);
    neg("permessage-deflate; client_max_window_bits=\"12\"", true,
        PMD "; client_max_window_bits=12", 15, 12, false);
    neg("permessage-deflate; server_max_window_bits=10", true,
        PMD "; server_max_window_bits=10", 10, 15, false);
    neg("permessage-deflate; server_max_window_bits=8", true,
        PMD "; server_max_window_bits=8", 8, 15, false);
    neg("permessage-deflate; server_max_window_bits=\"9\"", true,
        PMD "; server_max_window_bits=9", 9, 15, false);
    neg("permessage-deflate; server_max_window_bits=\"\\1\\5\"", true,
        PMD "; server_max_window_bits=15", 15, 15, false);
    neg("permessage-deflate; client_no_context_takeover", true,
        PMD "; client_no_context_takeover", 15, 15, true);
    neg("permessage-deflate; server_no_context_takeover", true, PMD, 15, 15, false);
    neg("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=11; client_max_window_bits=9",
        true,
        PMD "; client_no_context_takeover; server_max_window_bits=11; client_max_window_bits=9",
        11, 9, true);
    /* Whitespace anywhere the grammar allows it, empty list elements, case. */
    neg("  permessage-deflate\t;client_max_window_bits = 10 , ", true,
        PMD "; client_max_window_bits=10", 15, 10, false);
    neg(", ,permessage-deflate,", true, PMD, 15, 15, false);
    neg("PerMessage-Deflate; Client_No_Context_Takeover", true,
        PMD "; client_no_context_takeover", 15, 15, true);

    /* Declined offers: the first acceptable one wins, or none. */
    neg("", false, NULL, 0, 0, false);
    neg(" , ", false, NULL, 0, 0, false);
    neg("x-webkit-deflate-frame", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits=7", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits=16", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits=08", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits=1a", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits=\"\"", false, NULL, 0, 0, false);
    neg("permessage-deflate; client_max_window_bits=0", false, NULL, 0, 0, false);
    neg("permessage-deflate; client_max_window_bits=\"10", false, NULL, 0, 0, false);
    neg("permessage-deflate; client_no_context_takeover=1", false, NULL, 0, 0, false);
    neg("permessage-deflate; server_no_context_takeover=\"\"", false, NULL, 0, 0, false);
    neg("permessage-deflate; client_no_context_takeover; client_no_context_takeover", false,
        NULL, 0, 0, false);
    neg("permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", false, NULL,
        0, 0, false);
    neg("permessage-deflate; client_max_window_bits; client_max_window_bits=9", false, NULL, 0,
        0, false);
    neg("permessage-deflate; foo", false, NULL, 0, 0, false);
    neg("permessage-deflate; foo=bar", false, NULL, 0, 0, false);
    neg("permessage-deflate;", false, NULL, 0, 0, false);
    neg("permessage-deflate;;", false, NULL, 0, 0, false);
    neg("permessage-deflate x", false, NULL, 0, 0, false);
    neg("permessage-deflate; =10", false, NULL, 0, 0, false);
    neg("permessage-deflate; client_max_window_bits=", false, NULL, 0, 0, false);
    neg("permessage-deflate; client_max_window_bits=10 11", false, NULL, 0, 0, false);
    neg("permessage-deflatex", false, NULL, 0, 0, false);
    neg("\"permessage-deflate\"", false, NULL, 0, 0, false);

    /* A declined offer is stepped over, commas inside its quoted values included. */
    neg("permessage-deflate; foo, permessage-deflate; client_no_context_takeover", true,
        PMD "; client_no_context_takeover", 15, 15, true);
    neg("permessage-deflate; server_max_window_bits=20, permessage-deflate; "
        "server_max_window_bits=12",
        true, PMD "; server_max_window_bits=12", 12, 15, false);
    neg("foo; bar=\"a, permessage-deflate\", permessage-deflate; client_max_window_bits=9", true,
        PMD "; client_max_window_bits=9", 15, 9, false);
    neg("foo; bar=\"a\\\", permessage-deflate\", permessage-deflate", true, PMD, 15, 15, false);
    neg("foo; bar=\"unterminated, permessage-deflate", false, NULL, 0, 0, false);
    neg("x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=15", true,
        PMD "; client_max_window_bits=15", 15, 15, false);

    /* A response buffer too small for the answer declines rather than truncating. */
    sb_ws_deflate_params_t p;
    char small[20];
    CHECK(!sb_ws_deflate_negotiate(SB_STR("permessage-deflate"), &p, small, sizeof(small)));
    CHECK(!p.enabled);
    CHECK_EQ_INT(small[0], '\0');
    char exact[sizeof(PMD)];
    CHECK(sb_ws_deflate_negotiate(SB_STR("permessage-deflate"), &p, exact, sizeof(exact)));
    CHECK_EQ_STR(exact, strlen(exact), PMD);
    CHECK(!sb_ws_deflate_negotiate(SB_STR("permessage-deflate"), &p, exact, sizeof(exact) - 1));
}

/* ---- compression ---- */

static int inflate_guarded(sb_ws_inflater_t *inf, const uint8_t *p, size_t len, size_t max,
                           uint8_t **out, size_t *out_len)
{
    char *g = tl_guarded(p, len);
    int rc = sb_ws_inflate_message(inf, (const uint8_t *)g, len, max, out, out_len);
    tl_guard_free(g);
    return rc;
}

static void expect_inflate(sb_ws_inflater_t *inf, const uint8_t *p, size_t len, const char *want)
{
    uint8_t *out = NULL;
    size_t n = 0;
    int rc = inflate_guarded(inf, p, len, 1 << 20, &out, &n);
    CHECK_EQ_INT(rc, 0);
    if (rc == 0) CHECK_EQ_STR(out, n, want);
    free(out);
}

/* RFC 7692 7.2.3. */
static void test_rfc_examples(void)
{
    static const uint8_t hello[] = {0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00};
    static const uint8_t hello_again[] = {0xf2, 0x00, 0x11, 0x00, 0x00};
    static const uint8_t stored[] = {0x00, 0x05, 0x00, 0xfa, 0xff, 0x48,
                                     0x65, 0x6c, 0x6c, 0x6f, 0x00};
    static const uint8_t bfinal[] = {0xf3, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00, 0x00};
    static const uint8_t two_blocks[] = {0xf2, 0x48, 0x05, 0x00, 0x00, 0x00, 0xff,
                                         0xff, 0xca, 0xc9, 0xc9, 0x07, 0x00};
    sb_ws_inflater_t inf;
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, false), 0);
    expect_inflate(&inf, hello, sizeof(hello), "Hello");
    expect_inflate(&inf, hello_again, sizeof(hello_again), "Hello"); /* shared window */
    expect_inflate(&inf, stored, sizeof(stored), "Hello");
    expect_inflate(&inf, bfinal, sizeof(bfinal), "Hello");
    /* After a final block the next message starts a new stream. */
    expect_inflate(&inf, hello, sizeof(hello), "Hello");
    expect_inflate(&inf, two_blocks, sizeof(two_blocks), "Hello");
    expect_inflate(&inf, (const uint8_t *)"\x00", 1, ""); /* RFC 7692 7.2.3.6: empty */
    expect_inflate(&inf, NULL, 0, "");
    sb_ws_inflater_free(&inf);
    sb_ws_inflater_free(&inf); /* twice is harmless */

    /* Without context takeover, the back reference to the last message fails. */
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, true), 0);
    expect_inflate(&inf, hello, sizeof(hello), "Hello");
    uint8_t *out = NULL;
    size_t n = 0;
    CHECK_EQ_INT(inflate_guarded(&inf, hello_again, sizeof(hello_again), 100, &out, &n),
                 SB_EPARSE);
    CHECK(out == NULL);
    sb_ws_inflater_free(&inf);
}

static void fill_text(uint8_t *p, size_t len, uint32_t seed)
{
    static const char *words[] = {"{\"op\":", "\"message\"", ",\"channel\":\"news\"",
                                  "42",     ",\"data\":{\"text\":\"", "hello ",
                                  "world ", "\xc3\xa9t\xc3\xa9 "};
    size_t i = 0;
    while (i < len) {
        seed = seed * 1103515245u + 12345u;
        const char *w = words[(seed >> 16) % 8];
        for (size_t k = 0; w[k] && i < len; k++) p[i++] = (uint8_t)w[k];
    }
}

static void fill_random(uint8_t *p, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        p[i] = (uint8_t)seed;
    }
}

static void test_round_trips(void)
{
    static const size_t lens[] = {0, 1, 5, 100, 249, 250, 251, 700, 5000, 70000, 300000};
    size_t maxlen = 300000;
    uint8_t *text = malloc(maxlen), *rnd = malloc(maxlen);
    fill_text(text, maxlen, 7);
    fill_random(rnd, maxlen, 7);
    int bad = 0;
    for (int wb = 8; wb <= 15; wb++)
        for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++)
            for (int kind = 0; kind < 2; kind++) {
                const uint8_t *src = kind ? rnd : text;
                uint8_t *c = NULL, *d = NULL;
                size_t cn = 0, dn = 0;
                if (sb_ws_deflate_message(src, lens[i], wb, &c, &cn) != 0) {
                    bad++;
                    continue;
                }
                if (cn >= 4 && memcmp(c + cn - 4, "\x00\x00\xff\xff", 4) == 0) bad++;
                if (kind == 0 && lens[i] >= 5000 && cn * 3 > lens[i]) {
                    fprintf(stderr, "ratio wb=%d len=%zu cn=%zu\n", wb, lens[i], cn);
                    bad++;
                }
                sb_ws_inflater_t inf;
                CHECK_EQ_INT(sb_ws_inflater_init(&inf, wb, true), 0);
                int rc = inflate_guarded(&inf, c, cn, maxlen, &d, &dn);
                if (rc != 0 || dn != lens[i] || (dn && memcmp(d, src, dn) != 0)) {
                    fprintf(stderr, "round trip wb=%d len=%zu kind=%d rc=%d\n", wb, lens[i],
                            kind, rc);
                    bad++;
                }
                sb_ws_inflater_free(&inf);
                free(c);
                free(d);
            }
    CHECK_EQ_INT(bad, 0);

    /* The empty message is the single byte 0x00 (RFC 7692 7.2.3.6). */
    uint8_t *c = NULL;
    size_t cn = 0;
    CHECK_EQ_INT(sb_ws_deflate_message((const uint8_t *)"", 0, 15, &c, &cn), 0);
    CHECK_EQ_INT(cn, 1);
    if (cn == 1) CHECK_EQ_INT(c[0], 0);
    free(c);
    CHECK_EQ_INT(sb_ws_deflate_message(NULL, 0, 9, &c, &cn), 0);
    CHECK_EQ_INT(cn, 1);
    free(c);

    /* Windows outside 8..15 are refused. */
    CHECK_EQ_INT(sb_ws_deflate_message(text, 10, 7, &c, &cn), -1);
    CHECK_EQ_INT(sb_ws_deflate_message(text, 10, 16, &c, &cn), -1);
    CHECK(c == NULL);
    free(text);
    free(rnd);
}

/* A peer that negotiated server_max_window_bits=8 may inflate with a real
 * 256-byte window. zlib compresses with 9 at least, so the output must use no
 * distance beyond 256: inflate it with plain zlib at window 8, one output byte
 * per call so that every back reference goes through the window. */
static void test_window_8(void)
{
    uint8_t block[300], msg[3000];
    fill_random(block, sizeof(block), 3);
    for (size_t i = 0; i < sizeof(msg); i++) msg[i] = block[i % sizeof(block)];
    uint8_t *c = NULL;
    size_t cn = 0;
    CHECK_EQ_INT(sb_ws_deflate_message(msg, sizeof(msg), 8, &c, &cn), 0);
    uint8_t *in = malloc(cn + 4);
    memcpy(in, c, cn);
    memcpy(in + cn, "\x00\x00\xff\xff", 4);
    z_stream zs = {0};
    CHECK_EQ_INT(inflateInit2(&zs, -8), Z_OK);
    zs.next_in = in;
    zs.avail_in = (uInt)(cn + 4);
    uint8_t out[3001];
    size_t got = 0;
    int rc = Z_OK;
    while (got < sizeof(out) && (rc == Z_OK)) {
        zs.next_out = out + got;
        zs.avail_out = 1;
        rc = inflate(&zs, Z_SYNC_FLUSH);
        got += 1 - zs.avail_out;
        if (zs.avail_out == 1) break;
    }
    CHECK(rc == Z_OK || rc == Z_BUF_ERROR);
    CHECK_EQ_INT(got, sizeof(msg));
    CHECK(memcmp(out, msg, sizeof(msg)) == 0);
    inflateEnd(&zs);
    free(in);
    free(c);
}

/* Compressed once, inflated by independent receivers in whatever state their
 * earlier messages left them: the broadcast carries no context of its own. */
static void test_shared_broadcast(void)
{
    uint8_t msg[4000], other[2000];
    fill_text(msg, sizeof(msg), 11);
    fill_text(other, sizeof(other), 12);
    uint8_t *c = NULL, *o = NULL;
    size_t cn = 0, on = 0;
    CHECK_EQ_INT(sb_ws_deflate_message(msg, sizeof(msg), 15, &c, &cn), 0);
    CHECK_EQ_INT(sb_ws_deflate_message(other, sizeof(other), 15, &o, &on), 0);

    sb_ws_inflater_t a, b;
    CHECK_EQ_INT(sb_ws_inflater_init(&a, 15, false), 0);
    CHECK_EQ_INT(sb_ws_inflater_init(&b, 12, true), 0);
    uint8_t *d = NULL;
    size_t dn = 0;
    CHECK_EQ_INT(sb_ws_inflate_message(&a, o, on, 1 << 20, &d, &dn), 0);
    free(d);
    for (int round = 0; round < 3; round++) {
        sb_ws_inflater_t *infs[2] = {&a, &b};
        for (int k = 0; k < 2; k++) {
            d = NULL;
            CHECK_EQ_INT(inflate_guarded(infs[k], c, cn, 1 << 20, &d, &dn), 0);
            CHECK_EQ_INT(dn, sizeof(msg));
            CHECK(d && memcmp(d, msg, sizeof(msg)) == 0);
            free(d);
        }
    }
    sb_ws_inflater_free(&a);
    sb_ws_inflater_free(&b);
    free(c);
    free(o);
}

/* A client with context takeover compresses each message against the previous
 * ones; the inflater keeps its window between messages to follow it. */
static void test_context_takeover(void)
{
    z_stream cz = {0};
    CHECK_EQ_INT(deflateInit2(&cz, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
    sb_ws_inflater_t inf;
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, false), 0);
    uint8_t msg[1500];
    fill_text(msg, sizeof(msg), 5);
    size_t first = 0;
    for (int i = 0; i < 5; i++) {
        uint8_t c[4000];
        cz.next_in = msg;
        cz.avail_in = sizeof(msg);
        cz.next_out = c;
        cz.avail_out = sizeof(c);
        CHECK_EQ_INT(deflate(&cz, Z_SYNC_FLUSH), Z_OK);
        size_t cn = sizeof(c) - cz.avail_out - 4;
        if (i == 0) first = cn;
        if (i > 0) CHECK(cn * 10 < first); /* it really refers back */
        uint8_t *d = NULL;
        size_t dn = 0;
        CHECK_EQ_INT(inflate_guarded(&inf, c, cn, 1 << 20, &d, &dn), 0);
        CHECK(dn == sizeof(msg) && memcmp(d, msg, dn) == 0);
        free(d);
    }
    deflateEnd(&cz);
    sb_ws_inflater_free(&inf);
}

/* A raw deflate stream that inflates to `segments` MiB of zeros: one
 * full-flushed MiB repeated, since a full flush makes each copy stand alone. */
static uint8_t *make_bomb(size_t segments, size_t *len)
{
    size_t mib = 1 << 20;
    uint8_t *zeros = calloc(1, mib), seg[4096];
    z_stream zs = {0};
    deflateInit2(&zs, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY);
    zs.next_in = zeros;
    zs.avail_in = (uInt)mib;
    zs.next_out = seg;
    zs.avail_out = sizeof(seg);
    deflate(&zs, Z_FULL_FLUSH);
    size_t sn = sizeof(seg) - zs.avail_out;
    deflateEnd(&zs);
    free(zeros);
    uint8_t *bomb = malloc(sn * segments);
    for (size_t i = 0; i < segments; i++) memcpy(bomb + i * sn, seg, sn);
    *len = sn * segments;
    return bomb;
}

static void test_limits(void)
{
    /* 4 GiB of zeros in about 4 MiB: refused after max + 1 bytes, having read
     * only the first of its segments. */
    size_t blen = 0;
    uint8_t *bomb = make_bomb(4096, &blen);
    sb_ws_inflater_t inf;
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, false), 0);
    uint8_t *out = (uint8_t *)&inf; /* must be reset to NULL */
    size_t n = 1;
    CHECK_EQ_INT(sb_ws_inflate_message(&inf, bomb, blen, 1 << 20, &out, &n), SB_ELIMIT);
    CHECK(out == NULL);
    CHECK_EQ_INT(n, 0);
    CHECK(inf.zs.total_in < blen / 1000);
    CHECK(inf.zs.total_out <= (1 << 20) + 1);
    sb_ws_inflater_free(&inf);
    free(bomb);

    /* Exactly max bytes pass; one more does not. */
    uint8_t msg[1000];
    fill_text(msg, sizeof(msg), 9);
    uint8_t *c = NULL;
    size_t cn = 0;
    CHECK_EQ_INT(sb_ws_deflate_message(msg, sizeof(msg), 15, &c, &cn), 0);
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, true), 0);
    CHECK_EQ_INT(inflate_guarded(&inf, c, cn, sizeof(msg), &out, &n), 0);
    CHECK_EQ_INT(n, sizeof(msg));
    free(out);
    CHECK_EQ_INT(inflate_guarded(&inf, c, cn, sizeof(msg) - 1, &out, &n), SB_ELIMIT);
    sb_ws_inflater_free(&inf);
    free(c);

    /* max 0 allows only the empty message. */
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, true), 0);
    CHECK_EQ_INT(inflate_guarded(&inf, (const uint8_t *)"\x00", 1, 0, &out, &n), 0);
    CHECK_EQ_INT(n, 0);
    free(out);
    CHECK_EQ_INT(inflate_guarded(&inf, (const uint8_t *)"\xf2\x48\xcd\xc9\xc9\x07\x00", 7, 0,
                                 &out, &n),
                 SB_ELIMIT);
    sb_ws_inflater_free(&inf);
}

static void test_corrupt(void)
{
    sb_ws_inflater_t inf;
    uint8_t *out = NULL;
    size_t n = 0;
    /* A reserved block type (BFINAL=1, BTYPE=11). */
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, false), 0);
    CHECK_EQ_INT(inflate_guarded(&inf, (const uint8_t *)"\x07", 1, 1000, &out, &n), SB_EPARSE);
    CHECK(out == NULL);
    sb_ws_inflater_free(&inf);
    /* A stored block whose LEN and NLEN disagree. */
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, false), 0);
    CHECK_EQ_INT(inflate_guarded(&inf, (const uint8_t *)"\x00\x05\x00\x00\x00", 5, 1000, &out, &n),
                 SB_EPARSE);
    sb_ws_inflater_free(&inf);
    /* A distance before the start of the stream. */
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 15, false), 0);
    CHECK_EQ_INT(inflate_guarded(&inf, (const uint8_t *)"\xf2\x00\x11\x00\x00", 5, 1000, &out, &n),
                 SB_EPARSE);
    sb_ws_inflater_free(&inf);

    /* Random bytes and damaged real messages: an answer, never a crash. */
    uint8_t msg[3000], junk[600];
    fill_text(msg, sizeof(msg), 21);
    uint8_t *c = NULL;
    size_t cn = 0;
    CHECK_EQ_INT(sb_ws_deflate_message(msg, sizeof(msg), 15, &c, &cn), 0);
    int odd = 0;
    for (uint32_t t = 0; t < 300; t++) {
        CHECK_EQ_INT(sb_ws_inflater_init(&inf, 9 + t % 7, t & 1), 0);
        int rc;
        if (t % 3 == 0) {
            fill_random(junk, sizeof(junk), t + 1);
            rc = inflate_guarded(&inf, junk, 1 + t % sizeof(junk), 1 << 16, &out, &n);
        } else if (t % 3 == 1) {
            rc = inflate_guarded(&inf, c, t % cn, 1 << 16, &out, &n); /* truncated */
        } else {
            uint8_t *d = malloc(cn);
            memcpy(d, c, cn);
            d[t % cn] ^= (uint8_t)(1 + t);
            rc = inflate_guarded(&inf, d, cn, 1 << 16, &out, &n);
            free(d);
        }
        if (rc != 0 && rc != SB_EPARSE && rc != SB_ELIMIT) odd++;
        if (rc == 0) free(out);
        sb_ws_inflater_free(&inf);
    }
    CHECK_EQ_INT(odd, 0);
    free(c);
}

static void test_init_args(void)
{
    sb_ws_inflater_t inf;
    CHECK(sb_ws_inflater_init(&inf, 7, false) < 0);
    CHECK(!inf.init);
    sb_ws_inflater_free(&inf);
    CHECK(sb_ws_inflater_init(&inf, 16, false) < 0);
    sb_ws_inflater_free(&inf);
    uint8_t *out = NULL;
    size_t n = 0;
    CHECK(sb_ws_inflate_message(&inf, (const uint8_t *)"\x00", 1, 10, &out, &n) < 0);
    /* 8 is accepted (and inflates with 9, which accepts every 8-bit stream). */
    CHECK_EQ_INT(sb_ws_inflater_init(&inf, 8, false), 0);
    expect_inflate(&inf, (const uint8_t *)"\xf2\x48\xcd\xc9\xc9\x07\x00", 7, "Hello");
    sb_ws_inflater_free(&inf);
}

int main(void)
{
    test_negotiate();
    test_rfc_examples();
    test_round_trips();
    test_window_8();
    test_shared_broadcast();
    test_context_takeover();
    test_limits();
    test_corrupt();
    test_init_args();
    return tl_done("ws/deflate");
}
