/* Streaming UTF-8 validation for WebSocket text messages (RFC 6455 8.1).
 *
 * A text message may be split across frames and reads at any byte, and the
 * connection must be failed with 1007 as soon as the bytes seen so far cannot
 * start a valid message (Autobahn case 6.x checks how early that happens). A
 * small DFA does exactly that: each state says which byte range the next byte
 * must fall in, so overlongs (E0 80, F0 80), surrogates (ED A0..BF), code points
 * above U+10FFFF (F4 90, F5..FF) and stray or missing continuation bytes are
 * refused at the first byte that proves them wrong.
 *
 * The DFA is "shift-based": a state is a bit offset, and each byte class has one
 * 64-bit row holding the next state for every current state, 6 bits apiece. A
 * step is then next = (row >> state) & 63. The row load depends only on the
 * input byte, so the chain from one byte to the next is a shift and a mask,
 * which runs about twice as fast as a [state][class] table lookup. */
#include "ws/frame.h"

/* States are bit offsets into a row (multiples of 6 up to 48). ACCEPT is 0 so
 * that a zeroed sb_utf8_stream_t is a fresh stream. */
enum {
    ACCEPT = 0,    /* between code points: the only state that may end a message */
    REJECT = 6,    /* sticky: once invalid, always invalid */
    NEED1 = 12,    /* one more 80..BF */
    NEED2 = 18,    /* two more 80..BF */
    NEED3 = 24,    /* three more 80..BF */
    AFTER_E0 = 30, /* A0..BF, then one more (no overlong 3-byte forms) */
    AFTER_ED = 36, /* 80..9F, then one more (no surrogates D800..DFFF) */
    AFTER_F0 = 42, /* 90..BF, then two more (no overlong 4-byte forms) */
    AFTER_F4 = 48, /* 80..8F, then two more (nothing above U+10FFFF) */
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

/* One row per byte class: the next state from each current state, in the order
 * of the ROW arguments. */
#define ROW(acc, rej, n1, n2, n3, e0, ed, f0, f4)                                            \
    ((uint64_t)(acc) << ACCEPT | (uint64_t)(rej) << REJECT | (uint64_t)(n1) << NEED1 |       \
     (uint64_t)(n2) << NEED2 | (uint64_t)(n3) << NEED3 | (uint64_t)(e0) << AFTER_E0 |        \
     (uint64_t)(ed) << AFTER_ED | (uint64_t)(f0) << AFTER_F0 | (uint64_t)(f4) << AFTER_F4)
#define R_ REJECT
static const uint64_t class_row[12] = {
    /* columns, the state stepped from: ACCEPT REJECT NEED1 NEED2 NEED3 E0 ED F0 F4 */
    /* 00..7F */ ROW(ACCEPT, R_, R_, R_, R_, R_, R_, R_, R_),
    /* 80..8F */ ROW(R_, R_, ACCEPT, NEED1, NEED2, R_, NEED1, R_, NEED2),
    /* 90..9F */ ROW(R_, R_, ACCEPT, NEED1, NEED2, R_, NEED1, NEED2, R_),
    /* A0..BF */ ROW(R_, R_, ACCEPT, NEED1, NEED2, NEED1, R_, NEED2, R_),
    /* C2..DF */ ROW(NEED1, R_, R_, R_, R_, R_, R_, R_, R_),
    /* E0     */ ROW(AFTER_E0, R_, R_, R_, R_, R_, R_, R_, R_),
    /* E1..EF */ ROW(NEED2, R_, R_, R_, R_, R_, R_, R_, R_),
    /* ED     */ ROW(AFTER_ED, R_, R_, R_, R_, R_, R_, R_, R_),
    /* F0     */ ROW(AFTER_F0, R_, R_, R_, R_, R_, R_, R_, R_),
    /* F1..F3 */ ROW(NEED3, R_, R_, R_, R_, R_, R_, R_, R_),
    /* F4     */ ROW(AFTER_F4, R_, R_, R_, R_, R_, R_, R_, R_),
    /* bad    */ ROW(R_, R_, R_, R_, R_, R_, R_, R_, R_),
};
#undef R_
#undef ROW

bool sb_utf8_stream_feed(sb_utf8_stream_t *s, const uint8_t *p, size_t len)
{
    uint32_t st = s->state;
    if (st > AFTER_F4 || st % 6 != 0) st = REJECT; /* a corrupted state is never "valid" */
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
        st = (uint32_t)(class_row[byte_class[p[i++]]] >> st) & 63;
        if (st == REJECT) break;
    }
    s->state = st;
    return st != REJECT;
}

bool sb_utf8_stream_complete(const sb_utf8_stream_t *s) { return s->state == ACCEPT; }
