/* RFC 6455 frame headers, payload unmasking, server frame builders and close
 * payload validation. Pure functions; any thread. The UTF-8 validator lives in
 * utf8.c, the accept key in handshake.c and permessage-deflate in deflate.c. */
#include "ws/frame.h"

#include <stdlib.h>

static bool is_control(uint8_t opcode) { return (opcode & 0x8) != 0; }

static bool is_known_opcode(uint8_t opcode)
{
    switch (opcode) {
    case SB_WS_OP_CONT:
    case SB_WS_OP_TEXT:
    case SB_WS_OP_BINARY:
    case SB_WS_OP_CLOSE:
    case SB_WS_OP_PING:
    case SB_WS_OP_PONG:
        return true;
    default:
        return false;
    }
}

static int fail(int *close_code, int code)
{
    if (close_code) *close_code = code;
    return SB_EPARSE;
}

/* Checks are made as soon as the bytes they need have arrived, so a hostile
 * header is refused at its first byte rather than after the peer sends more:
 * byte 0 alone settles the opcode and RSV rules, byte 1 the mask bit and the
 * control-frame length, the extended length settles minimality and the limit. */
int sb_ws_frame_parse(const uint8_t *buf, size_t len, bool require_mask, bool allow_rsv1,
                      uint64_t max_payload, sb_ws_frame_t *f, int *close_code)
{
    if (len < 1) return SB_AGAIN;
    uint8_t b0 = buf[0];
    bool fin = (b0 & 0x80) != 0, rsv1 = (b0 & 0x40) != 0;
    uint8_t opcode = b0 & 0x0F;
    if (!is_known_opcode(opcode)) return fail(close_code, 1002);
    if (b0 & 0x30) return fail(close_code, 1002); /* RSV2, RSV3: no extension defines them */
    /* permessage-deflate marks only the first frame of a data message; RFC 7692 6.1. */
    if (rsv1 && (!allow_rsv1 || is_control(opcode) || opcode == SB_WS_OP_CONT))
        return fail(close_code, 1002);
    if (is_control(opcode) && !fin) return fail(close_code, 1002); /* RFC 6455 5.5 */

    if (len < 2) return SB_AGAIN;
    uint8_t b1 = buf[1];
    bool masked = (b1 & 0x80) != 0;
    uint8_t len7 = b1 & 0x7F;
    if (require_mask && !masked) return fail(close_code, 1002); /* RFC 6455 5.1 */
    if (is_control(opcode) && len7 > 125) return fail(close_code, 1002);

    size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    size_t hlen = 2 + ext + (masked ? 4 : 0);
    uint64_t plen = len7;
    if (ext) {
        if (len < 2 + ext) return SB_AGAIN;
        plen = 0;
        for (size_t i = 0; i < ext; i++) plen = (plen << 8) | buf[2 + i];
        /* RFC 6455 5.2: "the minimal number of bytes MUST be used". */
        if (ext == 2 && plen < 126) return fail(close_code, 1002);
        if (ext == 8 && (plen >> 63)) return fail(close_code, 1002);
        if (ext == 8 && plen < 65536) return fail(close_code, 1002);
    }
    if (plen > max_payload) return fail(close_code, 1009);
    if (len < hlen) return SB_AGAIN;

    f->fin = fin;
    f->rsv1 = rsv1;
    f->opcode = opcode;
    f->masked = masked;
    if (masked)
        memcpy(f->mask, buf + 2 + ext, 4);
    else
        memset(f->mask, 0, 4);
    f->payload_len = plen;
    f->header_len = hlen;
    return (int)hlen;
}

/* XOR with the mask rotated to the payload offset. Leading bytes are done one at
 * a time until p is 8-byte aligned; the aligned middle is done 32 bytes per
 * iteration with a 64-bit key (memcpy keeps it free of aliasing and alignment
 * UB and compiles to plain loads, which the compiler also vectorizes); the tail
 * goes byte by byte again. The key for the middle is built after the lead-in so
 * its rotation matches the offset of the first aligned byte. */
void sb_ws_unmask(uint8_t *p, size_t len, const uint8_t mask[4], uint64_t offset)
{
    size_t k = (size_t)(offset & 3);
    size_t i = 0;
    while (i < len && ((uintptr_t)(p + i) & 7) != 0) {
        p[i++] ^= mask[k];
        k = (k + 1) & 3;
    }
    if (len - i >= 8) {
        uint8_t kb[8];
        for (size_t j = 0; j < 8; j++) kb[j] = mask[(k + j) & 3];
        uint64_t key;
        memcpy(&key, kb, 8);
        for (; len - i >= 32; i += 32) {
            uint64_t w[4];
            memcpy(w, p + i, 32);
            w[0] ^= key;
            w[1] ^= key;
            w[2] ^= key;
            w[3] ^= key;
            memcpy(p + i, w, 32);
        }
        for (; len - i >= 8; i += 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            w ^= key;
            memcpy(p + i, &w, 8);
        }
        /* A multiple of 8 bytes went by, so the rotation k is unchanged. */
    }
    for (; i < len; i++) {
        p[i] ^= mask[k];
        k = (k + 1) & 3;
    }
}

size_t sb_ws_frame_header(uint8_t *out, uint8_t opcode, bool fin, bool rsv1, uint64_t len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | (opcode & 0x0F));
    if (len <= 125) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++) out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

sb_frame_t *sb_ws_frame_build(uint8_t opcode, bool rsv1, const void *payload, size_t len)
{
    if (len > SIZE_MAX - 10) return NULL;
    uint8_t hdr[10];
    size_t hlen = sb_ws_frame_header(hdr, opcode, true, rsv1, len);
    sb_frame_t *f = sb_frame_new(hlen + len);
    if (!f) return NULL;
    memcpy(f->data, hdr, hlen);
    if (len) memcpy(f->data + hlen, payload, len);
    return f;
}

/* Codes 1005 (no status) and 0 mean "no code": RFC 6455 7.4.1 forbids sending
 * 1005 in a close frame, so those become an empty close payload. A reason that
 * is not valid UTF-8 is dropped rather than sent, since the peer would have to
 * fail the connection over it. */
sb_frame_t *sb_ws_close_frame(uint16_t code, const char *reason)
{
    uint8_t payload[125];
    size_t plen = 0;
    if (code != 0 && code != 1005) {
        payload[0] = (uint8_t)(code >> 8);
        payload[1] = (uint8_t)code;
        plen = 2;
        size_t rlen = reason ? strlen(reason) : 0;
        if (rlen > sizeof(payload) - 2) {
            rlen = sizeof(payload) - 2;
            /* Back off to the start of a code point so the cut never splits one. */
            while (rlen > 0 && ((uint8_t)reason[rlen] & 0xC0) == 0x80) rlen--;
        }
        sb_utf8_stream_t u = {0};
        if (rlen && sb_utf8_stream_feed(&u, (const uint8_t *)reason, rlen) &&
            sb_utf8_stream_complete(&u)) {
            memcpy(payload + 2, reason, rlen);
            plen += rlen;
        }
    }
    return sb_ws_frame_build(SB_WS_OP_CLOSE, false, payload, plen);
}

/* RFC 6455 7.4.1 and the IANA registry: 1004 is reserved, 1005, 1006 and 1015
 * must never appear on the wire, and 1016-2999 are unassigned or reserved for
 * future protocol revisions. 1012-1014 (service restart, try again later, bad
 * gateway) are registered and sent by real servers, this one included (1013). */
static bool close_code_ok(uint16_t code)
{
    if (code >= 3000 && code <= 4999) return true;
    if (code < 1000 || code > 1014) return false;
    return code != 1004 && code != 1005 && code != 1006;
}

bool sb_ws_close_payload_valid(const uint8_t *p, size_t len, uint16_t *code)
{
    if (len == 0) {
        if (code) *code = 1005;
        return true;
    }
    if (len < 2 || len > 125) return false;
    uint16_t c = (uint16_t)((p[0] << 8) | p[1]);
    if (!close_code_ok(c)) return false;
    sb_utf8_stream_t u = {0};
    if (!sb_utf8_stream_feed(&u, p + 2, len - 2) || !sb_utf8_stream_complete(&u)) return false;
    if (code) *code = c;
    return true;
}
