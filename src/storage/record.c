/* The record codec: one framed, checksummed log record. Everything here is pure
 * and thread-agnostic; the decoder treats its input as hostile, because a log
 * file may have been torn by a crash, garbled by the disk or edited by hand. */
#include "storage/storage.h"

#include <zlib.h>

#define REC_MAGIC 0x31524253u /* "SBR1" in little-endian byte order: format version 1 */

static void put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

long sb_store_rec_size(const sb_store_rec_t *r)
{
    if (r->channel.len > 65535 || r->event.len > 65535 || r->idem_key.len > 65535 ||
        r->data.len > SB_STORE_DATA_MAX)
        return SB_ELIMIT;
    return (long)(SB_STORE_REC_HDR + SB_STORE_REC_FIXED + r->channel.len + r->event.len +
                  r->idem_key.len + r->data.len);
}

static uint8_t *put_str(uint8_t *p, sb_str_t s)
{
    if (s.len) memcpy(p, s.p, s.len);
    return p + s.len;
}

long sb_store_rec_encode(const sb_store_rec_t *r, void *buf, size_t cap)
{
    long n = sb_store_rec_size(r);
    if (n < 0 || (size_t)n > cap) return SB_ELIMIT;
    uint8_t *p = buf, *b = p + SB_STORE_REC_HDR;
    put32(p, REC_MAGIC);
    put32(p + 4, (uint32_t)(n - SB_STORE_REC_HDR));
    put64(b, r->seq);
    put64(b + 8, (uint64_t)r->time_ms);
    b[16] = r->flags;
    put16(b + 17, (uint16_t)r->channel.len);
    put16(b + 19, (uint16_t)r->event.len);
    put16(b + 21, (uint16_t)r->idem_key.len);
    put32(b + 23, (uint32_t)r->data.len);
    uint8_t *s = b + SB_STORE_REC_FIXED;
    s = put_str(s, r->channel);
    s = put_str(s, r->event);
    s = put_str(s, r->idem_key);
    put_str(s, r->data);
    /* The CRC covers the magic and the length too, so a flipped length bit is
     * caught even when it happens to point at another plausible frame. */
    uLong crc = crc32(0L, p, 8);
    crc = crc32_z(crc, p + SB_STORE_REC_HDR, (size_t)n - SB_STORE_REC_HDR);
    put32(p + 8, (uint32_t)crc);
    return n;
}

static long fail(const char **why, const char *reason)
{
    if (why) *why = reason;
    return SB_EPARSE;
}

long sb_store_rec_decode(const void *buf, size_t len, sb_store_rec_t *out, const char **why)
{
    const uint8_t *p = buf;
    if (why) *why = NULL;
    if (len == 0) return SB_AGAIN;
    /* Judge whatever prefix we have: a wrong magic is corruption even when
     * fewer than 12 bytes are present, while a right one is a torn frame. */
    if (len < 4) {
        static const uint8_t magic[4] = {'S', 'B', 'R', '1'};
        if (memcmp(p, magic, len) != 0) return fail(why, "bad_magic");
        return SB_AGAIN;
    }
    if (get32(p) != REC_MAGIC) return fail(why, "bad_magic");
    if (len < 8) return SB_AGAIN;
    uint32_t body = get32(p + 4);
    if (body < SB_STORE_REC_FIXED || body > SB_STORE_BODY_MAX) return fail(why, "bad_length");
    if (len < SB_STORE_REC_HDR + (size_t)body) return SB_AGAIN;

    const uint8_t *b = p + SB_STORE_REC_HDR;
    uLong crc = crc32(0L, p, 8);
    crc = crc32_z(crc, b, body);
    if ((uint32_t)crc != get32(p + 8)) return fail(why, "bad_crc");

    size_t clen = get16(b + 17), elen = get16(b + 19), ilen = get16(b + 21);
    size_t dlen = get32(b + 23);
    /* A CRC collision aside, these only disagree if our own encoder is broken;
     * check anyway so that no slice can ever point outside the frame. */
    if (dlen > SB_STORE_DATA_MAX || SB_STORE_REC_FIXED + clen + elen + ilen + dlen != body)
        return fail(why, "bad_field_lengths");
    const char *s = (const char *)b + SB_STORE_REC_FIXED;
    out->seq = get64(b);
    out->time_ms = (int64_t)get64(b + 8);
    out->flags = b[16];
    out->channel = sb_str(s, clen);
    out->event = sb_str(s + clen, elen);
    out->idem_key = sb_str(s + clen + elen, ilen);
    out->data = sb_str(s + clen + elen + ilen, dlen);
    return (long)(SB_STORE_REC_HDR + body);
}
