/* Fuzzes the WebSocket framing pieces the way a server uses them on hostile
 * client bytes: parse a sequence of frames, unmask each payload in two pieces,
 * reassemble fragmented messages, validate text as a stream, validate close
 * payloads, inflate RSV1 messages under a small limit. Besides "no crash, no
 * over-read", it checks invariants: a parsed header is consistent, piecewise
 * unmasking equals the plain XOR, streaming UTF-8 equals a plain decoder on
 * whole messages, built frames parse back, and deflate round-trips.
 *
 * Input: byte 0 picks the server's settings, the rest is the client's stream.
 * With bit 7 of byte 0 set the rest is also tried as a Sec-WebSocket-Extensions
 * value and a Sec-WebSocket-Key first. */
#include "ws/frame.h"

#include <stdio.h>
#include <stdlib.h>

#define MAX_MSG (64 * 1024)
#define INFLATE_LIMIT (16 * 1024)
#define ROUNDTRIP_MAX 4096

#define REQUIRE(cond)                                                          \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "invariant failed at line %d: %s\n", __LINE__, #cond); \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* The plain definition of UTF-8, written differently from the DFA under test. */
static bool ref_utf8(const uint8_t *s, size_t len)
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
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
        i += n + 1;
    }
    return true;
}

static bool ref_close_code(unsigned c)
{
    if (c >= 3000 && c <= 4999) return true;
    return c >= 1000 && c <= 1014 && c != 1004 && c != 1005 && c != 1006;
}

static void check_handshake_pieces(const uint8_t *data, size_t size)
{
    sb_ws_deflate_params_t p;
    char resp[128];
    sb_str_t s = sb_str((const char *)data, size);
    if (sb_ws_deflate_negotiate(s, &p, resp, sizeof(resp))) {
        REQUIRE(p.enabled && p.server_no_context_takeover);
        REQUIRE(p.server_max_window_bits >= 8 && p.server_max_window_bits <= 15);
        REQUIRE(p.client_max_window_bits >= 8 && p.client_max_window_bits <= 15);
        REQUIRE(memchr(resp, '\0', sizeof(resp)) != NULL);
        REQUIRE(strncmp(resp, "permessage-deflate; server_no_context_takeover", 46) == 0);
    } else {
        REQUIRE(!p.enabled && resp[0] == '\0');
    }
    char accept[29];
    sb_ws_accept_key(s, accept);
    REQUIRE(strlen(accept) == 28);
    if (sb_ws_key_valid(s)) REQUIRE(size == 24);
}

/* Frames the server builds must parse back as what was built. */
static void check_build(uint8_t opcode, const uint8_t *p, size_t len)
{
    sb_frame_t *f = sb_ws_frame_build(opcode, false, p, len);
    REQUIRE(f != NULL);
    sb_ws_frame_t h;
    int code = 0;
    int n = sb_ws_frame_parse((const uint8_t *)f->data, f->len, false, false, UINT64_MAX, &h,
                              &code);
    REQUIRE(n > 0 && h.opcode == opcode && h.fin && !h.masked && h.payload_len == len);
    REQUIRE((size_t)n + len == f->len && memcmp(f->data + n, p, len) == 0);
    sb_frame_unref(f);
}

/* What the server does with one complete message. */
static void check_message(bool text, const uint8_t *p, size_t len)
{
    check_build(text ? SB_WS_OP_TEXT : SB_WS_OP_BINARY, p, len);
    if (text) {
        /* The same bytes in one piece and in two must get the same answer as
         * the reference decoder. */
        sb_utf8_stream_t a = {0}, b = {0};
        bool whole = sb_utf8_stream_feed(&a, p, len) && sb_utf8_stream_complete(&a);
        size_t cut = len / 2;
        bool parts = sb_utf8_stream_feed(&b, p, cut);
        parts = sb_utf8_stream_feed(&b, p + cut, len - cut) && parts && sb_utf8_stream_complete(&b);
        bool ref = ref_utf8(p, len);
        REQUIRE(whole == ref && parts == ref);
    }
    if (len <= ROUNDTRIP_MAX) {
        int wb = 8 + (int)(len % 8);
        uint8_t *c = NULL, *d = NULL;
        size_t cn = 0, dn = 0;
        REQUIRE(sb_ws_deflate_message(p, len, wb, &c, &cn) == 0);
        sb_ws_inflater_t inf;
        REQUIRE(sb_ws_inflater_init(&inf, wb, true) == 0);
        REQUIRE(sb_ws_inflate_message(&inf, c, cn, len, &d, &dn) == 0);
        REQUIRE(dn == len && (len == 0 || memcmp(d, p, len) == 0));
        sb_ws_inflater_free(&inf);
        free(c);
        free(d);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t cfg = data[0];
    bool require_mask = !(cfg & 1);
    bool allow_rsv1 = (cfg & 2) != 0;
    bool no_ctx = (cfg & 4) != 0;
    int wbits = 8 + ((cfg >> 3) & 7);
    uint64_t max_payload = (cfg & 0x40) ? 125 : MAX_MSG;
    data++;
    size--;
    if (cfg & 0x80) check_handshake_pieces(data, size);

    sb_ws_inflater_t inf = {0};
    if (allow_rsv1) REQUIRE(sb_ws_inflater_init(&inf, wbits, no_ctx) == 0);
    uint8_t *msg = NULL;
    size_t msg_len = 0;
    bool in_msg = false, msg_text = false, msg_deflated = false;
    sb_utf8_stream_t utf8 = {0};

    size_t pos = 0;
    while (pos < size) {
        sb_ws_frame_t f;
        int code = 0;
        int n = sb_ws_frame_parse(data + pos, size - pos, require_mask, allow_rsv1, max_payload,
                                  &f, &code);
        if (n == SB_AGAIN) break;
        if (n < 0) {
            REQUIRE(n == SB_EPARSE && (code == 1002 || code == 1009));
            break;
        }
        REQUIRE(n >= 2 && n <= 14 && (size_t)n == f.header_len && (size_t)n <= size - pos);
        REQUIRE(f.payload_len <= max_payload);
        REQUIRE(!require_mask || f.masked);
        REQUIRE(!f.rsv1 || (allow_rsv1 && f.opcode != SB_WS_OP_CONT && !(f.opcode & 8)));
        /* One byte less of the same header must ask for more. */
        sb_ws_frame_t g;
        REQUIRE(sb_ws_frame_parse(data + pos, (size_t)n - 1, require_mask, allow_rsv1,
                                  max_payload, &g, &code) == SB_AGAIN);
        pos += (size_t)n;

        /* The payload in an exact-size copy, so reading past it is caught. */
        size_t avail = size - pos;
        bool complete = f.payload_len <= avail;
        size_t plen = complete ? (size_t)f.payload_len : avail;
        uint8_t *pl = malloc(plen ? plen : 1);
        REQUIRE(pl != NULL);
        memcpy(pl, data + pos, plen);
        pos += plen;
        if (f.masked) {
            size_t cut = plen ? (size_t)data[pos - plen] % (plen + 1) : 0;
            sb_ws_unmask(pl, cut, f.mask, 0);
            sb_ws_unmask(pl + cut, plen - cut, f.mask, cut);
            for (size_t i = 0; i < plen; i++)
                REQUIRE(pl[i] == (data[pos - plen + i] ^ f.mask[i & 3]));
        }
        if (!complete) { /* the rest of the payload has not arrived */
            free(pl);
            break;
        }

        bool stop = false;
        if (f.opcode & 8) {
            if (f.opcode == SB_WS_OP_CLOSE) {
                uint16_t cc = 0;
                bool ok = sb_ws_close_payload_valid(pl, plen, &cc);
                bool ref = plen == 0 ||
                           (plen >= 2 && ref_close_code((unsigned)(pl[0] << 8 | pl[1])) &&
                            ref_utf8(pl + 2, plen - 2));
                REQUIRE(ok == ref);
                if (ok && plen == 0) REQUIRE(cc == 1005);
                /* Our own close frame, with the peer's bytes as the reason. */
                char reason[126];
                memcpy(reason, pl, plen);
                reason[plen] = '\0';
                sb_frame_t *cf = sb_ws_close_frame(4000, reason);
                REQUIRE(cf != NULL && cf->len >= 4 && cf->len <= 127);
                REQUIRE(sb_ws_close_payload_valid((const uint8_t *)cf->data + 2, cf->len - 2,
                                                  &cc) &&
                        cc == 4000);
                sb_frame_unref(cf);
                stop = true; /* a server answers a close and reads nothing more */
            } else if (f.opcode == SB_WS_OP_PING) {
                check_build(SB_WS_OP_PONG, pl, plen);
            }
        } else {
            if (f.opcode == SB_WS_OP_CONT ? !in_msg : in_msg) {
                stop = true; /* 1002: continuation without a start, or a new start */
            } else {
                if (f.opcode != SB_WS_OP_CONT) {
                    in_msg = true;
                    msg_text = f.opcode == SB_WS_OP_TEXT;
                    msg_deflated = f.rsv1;
                    msg_len = 0;
                    utf8 = (sb_utf8_stream_t){0};
                }
                if (msg_len + plen > MAX_MSG) {
                    stop = true; /* 1009 */
                } else {
                    uint8_t *nm = realloc(msg, msg_len + plen + 1);
                    REQUIRE(nm != NULL);
                    msg = nm;
                    memcpy(msg + msg_len, pl, plen);
                    msg_len += plen;
                    /* Uncompressed text is checked as it arrives, for an early 1007. */
                    if (msg_text && !msg_deflated && !sb_utf8_stream_feed(&utf8, pl, plen)) {
                        REQUIRE(!ref_utf8(msg, msg_len));
                        stop = true;
                    }
                }
                if (!stop && f.fin) {
                    in_msg = false;
                    if (msg_deflated) {
                        uint8_t *out = NULL;
                        size_t out_len = 0;
                        int rc = sb_ws_inflate_message(&inf, msg, msg_len, INFLATE_LIMIT, &out,
                                                       &out_len);
                        REQUIRE(rc == 0 || rc == SB_EPARSE || rc == SB_ELIMIT);
                        if (rc == 0) {
                            REQUIRE(out != NULL && out_len <= INFLATE_LIMIT);
                            check_message(msg_text, out, out_len);
                            free(out);
                        } else {
                            REQUIRE(out == NULL);
                            stop = true; /* 1007 or 1009 */
                        }
                    } else {
                        if (msg_text)
                            REQUIRE(sb_utf8_stream_complete(&utf8) == ref_utf8(msg, msg_len));
                        check_message(msg_text, msg, msg_len);
                    }
                }
            }
        }
        free(pl);
        if (stop) break;
    }
    free(msg);
    sb_ws_inflater_free(&inf);
    return 0;
}
