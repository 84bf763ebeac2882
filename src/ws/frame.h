/* RFC 6455 framing, incremental UTF-8 validation, the opening-handshake accept
 * key, and permessage-deflate (RFC 7692). Pure functions and small state
 * structs, no I/O; any thread. Private to the ws layer (and its tests/fuzzers). */
#ifndef SB_WS_FRAME_H
#define SB_WS_FRAME_H

#include "core/core.h"
#include <zlib.h>

enum {
    SB_WS_OP_CONT = 0x0,
    SB_WS_OP_TEXT = 0x1,
    SB_WS_OP_BINARY = 0x2,
    SB_WS_OP_CLOSE = 0x8,
    SB_WS_OP_PING = 0x9,
    SB_WS_OP_PONG = 0xA,
};

typedef struct {
    bool fin;
    bool rsv1; /* "compressed" with permessage-deflate, on the first frame only */
    uint8_t opcode;
    bool masked;
    uint8_t mask[4];
    uint64_t payload_len;
    size_t header_len; /* 2..14 */
} sb_ws_frame_t;

/* Parses one frame header from buf[0..len). Borrows buf.
 * Returns the header length (payload follows it), SB_AGAIN, or SB_EPARSE with
 * *close_code set: 1002 for reserved opcodes, RSV2/RSV3 set, RSV1 set when
 * `allow_rsv1` is false or on a control/continuation frame, control frames that
 * are fragmented or longer than 125, a non-minimal length encoding, a 64-bit
 * length with the top bit set, or an unmasked frame when `require_mask`; 1009
 * when payload_len > max_payload. */
int sb_ws_frame_parse(const uint8_t *buf, size_t len, bool require_mask, bool allow_rsv1,
                      uint64_t max_payload, sb_ws_frame_t *f, int *close_code);

/* XORs p[0..len) with the mask, where `offset` is the payload offset of p[0]
 * (so a payload can be unmasked in pieces). */
void sb_ws_unmask(uint8_t *p, size_t len, const uint8_t mask[4], uint64_t offset);

/* Writes an unmasked server frame header for a payload of len bytes into out
 * (at least 10 bytes); returns the header length. */
size_t sb_ws_frame_header(uint8_t *out, uint8_t opcode, bool fin, bool rsv1, uint64_t len);

/* Builds a whole unmasked frame (header + payload copy) as a new frame with one
 * reference; NULL on OOM. */
sb_frame_t *sb_ws_frame_build(uint8_t opcode, bool rsv1, const void *payload, size_t len);

/* Builds a close frame with code and reason (reason truncated to fit 125 bytes,
 * on a UTF-8 boundary). Returns a new frame. */
sb_frame_t *sb_ws_close_frame(uint16_t code, const char *reason);

/* Validates a close frame payload (RFC 6455 5.5.1, 7.4): empty, or a 2-byte code
 * that is allowed on the wire (1000-1003, 1007-1011, 3000-4999) followed by valid
 * UTF-8. Returns true when valid and sets *code (1005 for an empty payload). */
bool sb_ws_close_payload_valid(const uint8_t *p, size_t len, uint16_t *code);

/* Streaming UTF-8 validator for text messages split across frames and reads. */
typedef struct {
    uint32_t state; /* 0 = accept; internal otherwise */
} sb_utf8_stream_t;

/* Feeds bytes; returns false as soon as the input can no longer be valid UTF-8. */
bool sb_utf8_stream_feed(sb_utf8_stream_t *s, const uint8_t *p, size_t len);
/* True when the bytes fed so far end on a complete code point. */
bool sb_utf8_stream_complete(const sb_utf8_stream_t *s);

/* Computes Sec-WebSocket-Accept for a client key: base64(SHA1(key + GUID)).
 * out must hold 29 bytes (28 chars + NUL). */
void sb_ws_accept_key(sb_str_t client_key, char out[29]);

/* True when the key is the base64 encoding of exactly 16 bytes (24 chars). */
bool sb_ws_key_valid(sb_str_t key);

/* ---- permessage-deflate (RFC 7692) ---- */
typedef struct {
    bool enabled;
    bool server_no_context_takeover;
    bool client_no_context_takeover;
    int server_max_window_bits; /* 8..15; we compress with this */
    int client_max_window_bits; /* 8..15; the client compresses with at most this */
} sb_ws_deflate_params_t;

/* Negotiates from a Sec-WebSocket-Extensions request header value: picks the
 * first acceptable permessage-deflate offer. The server always asks for
 * server_no_context_takeover so that one compressed broadcast is valid for every
 * receiver. Writes the response header value (without the name) into resp.
 * Returns true when the extension is accepted. Malformed or unacceptable offers
 * are declined (false), never an error. */
bool sb_ws_deflate_negotiate(sb_str_t offer_header, sb_ws_deflate_params_t *out,
                             char *resp, size_t resp_cap);

/* Compresses one whole message for sending with RSV1: deflate with the params'
 * window, SYNC flush, strip the trailing 00 00 ff ff. Stateless (no context
 * takeover), so the result can be shared by every receiver that negotiated
 * server_no_context_takeover. Returns a new buffer in *out (malloc) or -1. */
int sb_ws_deflate_message(const uint8_t *p, size_t len, int window_bits, uint8_t **out,
                          size_t *out_len);

/* Per-connection inflate state for messages from the client. */
typedef struct {
    z_stream zs;
    bool init;
    bool no_context_takeover;
} sb_ws_inflater_t;

int sb_ws_inflater_init(sb_ws_inflater_t *inf, int window_bits, bool no_context_takeover);
/* Inflates one whole compressed message (appends 00 00 ff ff itself) into *out
 * (malloc, caller frees). Fails with SB_ELIMIT when the output would exceed max
 * (a zip bomb is refused, close 1009), SB_EPARSE on corrupt data (close 1007). */
int sb_ws_inflate_message(sb_ws_inflater_t *inf, const uint8_t *p, size_t len, size_t max,
                          uint8_t **out, size_t *out_len);
void sb_ws_inflater_free(sb_ws_inflater_t *inf);

#endif
