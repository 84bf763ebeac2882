/* permessage-deflate (RFC 7692): offer negotiation, stateless compression of
 * outgoing messages and bounded decompression of incoming ones. Pure functions
 * and per-connection state; any thread. */
#include "ws/frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- negotiation ------------------------------------------------------------ */

/* A cursor over the header value. */
typedef struct {
    const char *p, *end;
} cur_t;

/* One permessage-deflate offer as parsed: -1 absent, 0 present without a value
 * (client_max_window_bits only), else the window bits 8..15. */
typedef struct {
    bool server_nct, client_nct;
    int server_bits, client_bits;
} offer_t;

static bool tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void skip_ows(cur_t *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t')) c->p++;
}

static sb_str_t take_token(cur_t *c)
{
    const char *s = c->p;
    while (c->p < c->end && tchar((unsigned char)*c->p)) c->p++;
    return sb_str(s, (size_t)(c->p - s));
}

/* Reads a quoted-string (RFC 9110 5.6.4) at the cursor, unescaping it into
 * val[0..cap). False when it is unterminated or longer than cap; the window
 * values this extension knows are two digits, so a small cap loses nothing. */
static bool take_quoted(cur_t *c, char *val, size_t cap, size_t *vlen)
{
    size_t n = 0;
    c->p++; /* the opening quote */
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == '"') {
            *vlen = n;
            return true;
        }
        if (ch == '\\') {
            if (c->p == c->end) return false;
            ch = (unsigned char)*c->p++;
        }
        if (n == cap) return false;
        val[n++] = (char)ch;
    }
    return false;
}

/* Moves past the next list comma that is not inside a quoted-string, or to the
 * end: how a malformed or declined offer is stepped over. */
static void skip_offer(cur_t *c)
{
    bool quoted = false;
    while (c->p < c->end) {
        char ch = *c->p++;
        if (quoted && ch == '\\' && c->p < c->end)
            c->p++;
        else if (ch == '"')
            quoted = !quoted;
        else if (ch == ',' && !quoted)
            return;
    }
}

/* RFC 7692 7.1.2: an integer from 8 to 15 without leading zeroes. */
static int window_bits_value(const char *v, size_t n)
{
    if (n == 1 && v[0] >= '8' && v[0] <= '9') return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5') return 10 + (v[1] - '0');
    return -1;
}

/* Records one parameter into the offer; false when it makes the offer
 * unacceptable (unknown, repeated, or a value that is missing, present where
 * none is allowed, or out of range). has_val tells a bare name from name="". */
static bool offer_param(offer_t *o, sb_str_t name, bool has_val, const char *v, size_t vn)
{
    if (sb_str_ieq(name, "server_no_context_takeover")) {
        if (o->server_nct || has_val) return false;
        o->server_nct = true;
    } else if (sb_str_ieq(name, "client_no_context_takeover")) {
        if (o->client_nct || has_val) return false;
        o->client_nct = true;
    } else if (sb_str_ieq(name, "server_max_window_bits")) {
        if (o->server_bits != -1 || !has_val) return false;
        o->server_bits = window_bits_value(v, vn);
        if (o->server_bits < 0) return false;
    } else if (sb_str_ieq(name, "client_max_window_bits")) {
        if (o->client_bits != -1) return false;
        o->client_bits = has_val ? window_bits_value(v, vn) : 0;
        if (o->client_bits < 0) return false;
    } else {
        return false;
    }
    return true;
}

/* Parses the offer at the cursor and leaves the cursor after its comma. Returns
 * true only for a well-formed permessage-deflate offer whose every parameter is
 * known and valid. */
static bool parse_offer(cur_t *c, offer_t *o)
{
    *o = (offer_t){.server_bits = -1, .client_bits = -1};
    sb_str_t name = take_token(c);
    if (!sb_str_ieq(name, "permessage-deflate")) goto decline;
    for (;;) {
        skip_ows(c);
        if (c->p == c->end) return true;
        if (*c->p == ',') {
            c->p++;
            return true;
        }
        if (*c->p != ';') goto decline;
        c->p++;
        skip_ows(c);
        sb_str_t pname = take_token(c);
        if (pname.len == 0) goto decline;
        skip_ows(c);
        char val[16];
        size_t vn = 0;
        bool has_val = false;
        if (c->p < c->end && *c->p == '=') {
            c->p++;
            skip_ows(c);
            has_val = true;
            if (c->p < c->end && *c->p == '"') {
                if (!take_quoted(c, val, sizeof(val), &vn)) goto decline;
            } else {
                sb_str_t tok = take_token(c);
                if (tok.len == 0 || tok.len > sizeof(val)) goto decline;
                memcpy(val, tok.p, tok.len);
                vn = tok.len;
            }
        }
        if (!offer_param(o, pname, has_val, val, vn)) goto decline;
    }
decline:
    skip_offer(c);
    return false;
}

bool sb_ws_deflate_negotiate(sb_str_t offer_header, sb_ws_deflate_params_t *out, char *resp,
                             size_t resp_cap)
{
    *out = (sb_ws_deflate_params_t){.server_max_window_bits = 15, .client_max_window_bits = 15};
    if (resp_cap) resp[0] = '\0';
    cur_t c = {offer_header.p, offer_header.p + offer_header.len};
    while (c.p < c.end) {
        skip_ows(&c);
        if (c.p < c.end && *c.p == ',') { /* an empty list element (RFC 9110 5.6.1) */
            c.p++;
            continue;
        }
        if (c.p == c.end) break;
        offer_t o;
        if (!parse_offer(&c, &o)) continue;

        /* Accept this offer. server_no_context_takeover is always answered (so
         * one compressed broadcast suits every receiver); the client's own
         * requests are granted as they came. */
        int sbits = o.server_bits > 0 ? o.server_bits : 15;
        int cbits = o.client_bits > 0 ? o.client_bits : 15;
        char sb[48] = "", cb[48] = ""; /* room for any int, to keep -Wformat-truncation quiet */
        if (o.server_bits > 0) snprintf(sb, sizeof(sb), "; server_max_window_bits=%d", sbits);
        if (o.client_bits > 0) snprintf(cb, sizeof(cb), "; client_max_window_bits=%d", cbits);
        int n = snprintf(resp, resp_cap, "permessage-deflate; server_no_context_takeover%s%s%s",
                         o.client_nct ? "; client_no_context_takeover" : "", sb, cb);
        if (n < 0 || (size_t)n >= resp_cap) {
            /* The caller's buffer cannot hold the answer: declining is the one
             * outcome that keeps the connection correct. */
            if (resp_cap) resp[0] = '\0';
            return false;
        }
        out->enabled = true;
        out->server_no_context_takeover = true;
        out->client_no_context_takeover = o.client_nct;
        out->server_max_window_bits = sbits;
        out->client_max_window_bits = cbits;
        return true;
    }
    return false;
}

/* ---- compression ------------------------------------------------------------ */

/* zlib's avail_in and avail_out are 32-bit; larger buffers go in slices. */
#define ZCHUNK ((size_t)1 << 30)

/* Bytes of lookahead that zlib keeps out of the usable window (MIN_LOOKAHEAD). */
#define ZLOOKAHEAD 262

int sb_ws_deflate_message(const uint8_t *p, size_t len, int window_bits, uint8_t **out,
                          size_t *out_len)
{
    *out = NULL;
    *out_len = 0;
    if (window_bits < 8 || window_bits > 15) return -1;
    /* zlib cannot produce raw deflate with a 256-byte window and needs 9. That
     * is still valid for a peer that really inflates with 256 bytes: zlib keeps
     * 262 bytes of lookahead out of its window, so with 512 bytes no match
     * reaches further back than 250. */
    if (window_bits == 8) window_bits = 9;
    /* A message shorter than the usable window never reaches its far end, so a
     * smaller window gives the same bytes with less memory to set up. */
    while (window_bits > 9 && ((size_t)1 << (window_bits - 1)) - ZLOOKAHEAD >= len) window_bits--;

    z_stream zs = {0};
    int rc = deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -window_bits, 8,
                          Z_DEFAULT_STRATEGY);
    if (rc != Z_OK) return -1;
    size_t cap = (size_t)deflateBound(&zs, (uLong)len) + 16;
    uint8_t *buf = malloc(cap);
    size_t total = 0;
    if (!buf) goto fail;
    const uint8_t *ip = p;
    size_t left = len;
    do {
        size_t chunk = left < ZCHUNK ? left : ZCHUNK;
        zs.next_in = (Bytef *)(uintptr_t)ip;
        zs.avail_in = (uInt)chunk;
        if (chunk) ip += chunk; /* p may be NULL for an empty message */
        left -= chunk;
        int flush = left ? Z_NO_FLUSH : Z_SYNC_FLUSH;
        /* zlib asks to be called again while it fills the whole output space. */
        do {
            if (total == cap) {
                size_t ncap = cap * 2;
                uint8_t *nb = ncap > cap ? realloc(buf, ncap) : NULL;
                if (!nb) goto fail;
                buf = nb;
                cap = ncap;
            }
            size_t room = cap - total < ZCHUNK ? cap - total : ZCHUNK;
            zs.next_out = buf + total;
            zs.avail_out = (uInt)room;
            rc = deflate(&zs, flush);
            total += room - zs.avail_out;
            if (rc != Z_OK && rc != Z_BUF_ERROR) goto fail;
        } while (zs.avail_out == 0);
    } while (left);
    deflateEnd(&zs);

    /* RFC 7692 7.2.1: remove the 00 00 ff ff that ends a sync flush. */
    static const uint8_t sync_tail[4] = {0x00, 0x00, 0xff, 0xff};
    if (total < 4 || memcmp(buf + total - 4, sync_tail, 4) != 0) {
        free(buf);
        return -1;
    }
    *out = buf;
    *out_len = total - 4;
    return 0;

fail:
    deflateEnd(&zs);
    free(buf);
    return -1;
}

/* ---- decompression ---------------------------------------------------------- */

/* Bad arguments return -EINVAL, which is UV_EINVAL on every Unix libuv runs on;
 * this file stays free of libuv because it does no I/O. */

int sb_ws_inflater_init(sb_ws_inflater_t *inf, int window_bits, bool no_context_takeover)
{
    memset(inf, 0, sizeof(*inf));
    if (window_bits < 8 || window_bits > 15) return -EINVAL;
    /* A client told to use 8 may well compress with 9, as zlib-based ones must;
     * a larger window accepts everything a smaller one does, for 256 bytes. */
    if (window_bits == 8) window_bits = 9;
    int rc = inflateInit2(&inf->zs, -window_bits);
    if (rc != Z_OK) return rc == Z_MEM_ERROR ? SB_ENOMEM : -EINVAL;
    inf->init = true;
    inf->no_context_takeover = no_context_takeover;
    return 0;
}

/* The message is fed in two pieces, the payload and the 00 00 ff ff that the
 * sender stripped (RFC 7692 7.2.2). The output buffer grows by doubling but
 * never beyond max + 1 bytes: reaching that one extra byte proves the message
 * too big, so a bomb costs at most max + 1 bytes of output and the input that
 * produced them, never its full expansion.
 *
 * After an error the stream is left where it failed: the caller closes the
 * connection (1007 or 1009) and frees the inflater. */
int sb_ws_inflate_message(sb_ws_inflater_t *inf, const uint8_t *p, size_t len, size_t max,
                          uint8_t **out, size_t *out_len)
{
    static const uint8_t sync_tail[4] = {0x00, 0x00, 0xff, 0xff};
    *out = NULL;
    *out_len = 0;
    if (!inf->init) return -EINVAL;
    z_stream *zs = &inf->zs;
    size_t limit = max < SIZE_MAX ? max + 1 : SIZE_MAX;
    size_t cap = len < SIZE_MAX / 4 ? len * 4 : SIZE_MAX;
    if (cap < 1024) cap = 1024;
    if (cap > limit) cap = limit;
    uint8_t *buf = malloc(cap);
    if (!buf) return SB_ENOMEM;
    size_t total = 0;
    int err = 0;

    const uint8_t *pieces[2] = {p, sync_tail};
    size_t piece_len[2] = {len, sizeof(sync_tail)};
    for (int k = 0; k < 2 && !err; k++) {
        const uint8_t *ip = pieces[k];
        size_t left = piece_len[k];
        zs->avail_in = 0;
        for (;;) {
            if (zs->avail_in == 0 && left) {
                size_t chunk = left < ZCHUNK ? left : ZCHUNK;
                zs->next_in = (Bytef *)(uintptr_t)ip;
                zs->avail_in = (uInt)chunk;
                ip += chunk;
                left -= chunk;
            }
            if (total == cap) {
                size_t ncap = cap <= limit / 2 ? cap * 2 : limit;
                uint8_t *nb = realloc(buf, ncap);
                if (!nb) {
                    err = SB_ENOMEM;
                    break;
                }
                buf = nb;
                cap = ncap;
            }
            size_t room = cap - total < ZCHUNK ? cap - total : ZCHUNK;
            zs->next_out = buf + total;
            zs->avail_out = (uInt)room;
            int rc = inflate(zs, Z_SYNC_FLUSH);
            total += room - zs->avail_out;
            if (total > max) {
                err = SB_ELIMIT;
                break;
            }
            if (rc == Z_STREAM_END) {
                /* The sender ended its stream with a final block (allowed by
                 * RFC 7692 7.2.3.x); whatever follows starts a new one. */
                inflateReset(zs);
                if (zs->avail_in == 0 && !left) break;
                continue;
            }
            if (rc == Z_MEM_ERROR) {
                err = SB_ENOMEM;
                break;
            }
            if (rc != Z_OK && rc != Z_BUF_ERROR) {
                err = SB_EPARSE;
                break;
            }
            /* Input used up with output space to spare: everything it held is out. */
            if (zs->avail_in == 0 && !left && zs->avail_out > 0) break;
            if (rc == Z_BUF_ERROR && zs->avail_out > 0 && zs->avail_in > 0) {
                /* No progress although both input and output space remain;
                 * zlib never does this on a sound stream, and looping would spin. */
                err = SB_EPARSE;
                break;
            }
        }
    }
    zs->next_in = NULL;
    zs->next_out = NULL;
    if (err) {
        free(buf);
        return err;
    }
    if (inf->no_context_takeover) inflateReset(zs);
    *out = buf;
    *out_len = total;
    return 0;
}

void sb_ws_inflater_free(sb_ws_inflater_t *inf)
{
    if (inf->init) inflateEnd(&inf->zs);
    inf->init = false;
}
