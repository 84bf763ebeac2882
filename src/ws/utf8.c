/* Streaming UTF-8 validation for WebSocket text messages (RFC 6455 8.1).
 *
 * A text message may be split across frames and reads at any byte, and the
 * connection must be failed with 1007 as soon as the bytes seen so far cannot
 * start a valid message (Autobahn case 6.x checks how early that happens). A
 * small DFA does exactly that: each state says which byte range the next byte
 * must fall in, so overlongs (E0 80, F0 80), surrogates (ED A0..BF), code points
 * above U+10FFFF (F4 90, F5..FF) and stray or missing continuation bytes are
 * refused at the first byte that proves them wrong. */
#include "ws/frame.h"

enum {
    ACCEPT = 0, /* between code points: the only state that may end a message */
    REJECT = 1, /* sticky: once invalid, always invalid */
    NEED1,      /* one more 80..BF */
    NEED2,      /* two more 80..BF */
    NEED3,      /* three more 80..BF */
    AFTER_E0,   /* A0..BF, then one more (no overlong 3-byte forms) */
    AFTER_ED,   /* 80..9F, then one more (no surrogates D800..DFFF) */
    AFTER_F0,   /* 90..BF, then two more (no overlong 4-byte forms) */
    AFTER_F4,   /* 80..8F, then two more (nothing above U+10FFFF) */
    NSTATES
};

/* Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 C2..DF, 5 E0,
 * 6 E1..EC and EE..EF, 7 ED, 8 F0, 9 F1..F3, 10 F4, 11 never valid (C0, C1, F5..FF). */
static const uint8_t byte_class[256] = {
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 00 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 10 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 20 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 30 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 40 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 50 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 60 */
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 70 */
    1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  1,  /* 80 */
    2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 90 */
    3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* A0 */
    3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  3,  /* B0 */
    11, 11, 4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* C0 */
    4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  4,  /* D0 */
    5,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  6,  7,  6,  6,  /* E0 */
    8,  9,  9,  9,  10, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, 11, /* F0 */
};

/* Short names so that the table reads as a grid: one row per state, one column
 * per byte class. */
#define A_ ACCEPT
#define R_ REJECT
#define N1 NEED1
#define N2 NEED2
#define N3 NEED3
static const uint8_t transition[NSTATES][12] = {
    /* columns: 00-7F 80-8F 90-9F A0-BF C2-DF E0 E1-EF ED F0 F1-F3 F4 bad */
    [ACCEPT] = {A_, R_, R_, R_, N1, AFTER_E0, N2, AFTER_ED, AFTER_F0, N3, AFTER_F4, R_},
    [REJECT] = {R_, R_, R_, R_, R_, R_, R_, R_, R_, R_, R_, R_},
    [NEED1] = {R_, A_, A_, A_, R_, R_, R_, R_, R_, R_, R_, R_},
    [NEED2] = {R_, N1, N1, N1, R_, R_, R_, R_, R_, R_, R_, R_},
    [NEED3] = {R_, N2, N2, N2, R_, R_, R_, R_, R_, R_, R_, R_},
    [AFTER_E0] = {R_, R_, R_, N1, R_, R_, R_, R_, R_, R_, R_, R_},
    [AFTER_ED] = {R_, N1, N1, R_, R_, R_, R_, R_, R_, R_, R_, R_},
    [AFTER_F0] = {R_, R_, N2, N2, R_, R_, R_, R_, R_, R_, R_, R_},
    [AFTER_F4] = {R_, N2, R_, R_, R_, R_, R_, R_, R_, R_, R_, R_},
};
#undef A_
#undef R_
#undef N1
#undef N2
#undef N3

bool sb_utf8_stream_feed(sb_utf8_stream_t *s, const uint8_t *p, size_t len)
{
    uint32_t st = s->state;
    if (st >= NSTATES) st = REJECT; /* a corrupted state is never "valid" */
    size_t i = 0;
    while (i < len) {
        /* Most text is ASCII: between code points, skip 8 such bytes at a time. */
        if (st == ACCEPT) {
            while (len - i >= 8) {
                uint64_t w;
                memcpy(&w, p + i, 8);
                if (w & 0x8080808080808080ull) break;
                i += 8;
            }
            if (i == len) break;
        }
        st = transition[st][byte_class[p[i++]]];
        if (st == REJECT) break;
    }
    s->state = st;
    return st != REJECT;
}

bool sb_utf8_stream_complete(const sb_utf8_stream_t *s) { return s->state == ACCEPT; }
