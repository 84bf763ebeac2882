/* WebSocket transport (RFC 6455 + RFC 7692): the upgrade on the HTTP layer,
 * frames, the JSON protocol of /v1/ws, and raw rooms (?room=R) that relay
 * frames verbatim to the other members. PROTOCOL.md "WebSocket JSON protocol". */
#ifndef SB_WS_H
#define SB_WS_H

#include <cjson/cJSON.h>

#include "channels/channels.h"
#include "http/http.h"

typedef struct sb_ws sb_ws_t;

/* Registers the upgrade handler and the WebSocket message formats. Main
 * thread, at start. */
void sb_ws_init(void);

/* Makes c a WebSocket connection of the JSON protocol (room == NULL) or of raw
 * room `room` without an HTTP upgrade: for fuzzers and tests that feed frames
 * to a connection made with sb_conn_new_detached. Returns NULL on failure. */
sb_ws_t *sb_ws_attach(sb_conn_t *c, const char *room);

/* ---- for layers that extend the JSON protocol (presence, ai) ---- */
/* The connection of a ws, and the user and info its token named (may be ""). */
sb_conn_t *sb_ws_conn(sb_ws_t *ws);
const char *sb_ws_user(const sb_ws_t *ws);
const char *sb_ws_info(const sb_ws_t *ws);
/* Sends a text frame with json[0..len). Loop thread of ws. */
void sb_ws_send_text(sb_ws_t *ws, const char *json, size_t len);
/* Sends a prebuilt, shared frame (takes the reference). */
void sb_ws_send_frame(sb_ws_t *ws, sb_frame_t *f);
/* Replies {"op":"ok","ref":ref<extra>} where extra is "" or ",\"k\":v...". */
void sb_ws_reply_ok(sb_ws_t *ws, const cJSON *ref, const char *extra);
/* Replies {"op":"error","ref":ref,"code":...,"message":...}. */
void sb_ws_reply_error(sb_ws_t *ws, const cJSON *ref, sb_err_t err, const char *message);

/* An op handler: msg is the parsed frame; ref its "ref" (or NULL). */
typedef void (*sb_ws_op_fn)(sb_ws_t *ws, const cJSON *msg, const cJSON *ref);
void sb_ws_register_op(const char *op, sb_ws_op_fn fn);

/* Hooks for presence: called after a channel subscription is made (with the
 * subscribe message, to read "presence":true), before it is removed, and when
 * the connection closes. Any may be NULL. */
typedef struct {
    void (*subscribed)(sb_ws_t *ws, sb_str_t channel, const cJSON *msg);
    void (*unsubscribed)(sb_ws_t *ws, sb_str_t channel);
    void (*closed)(sb_ws_t *ws);
    /* Every frame received counts as a heartbeat for presence. */
    void (*alive)(sb_ws_t *ws);
} sb_ws_hooks_t;
void sb_ws_set_hooks(const sb_ws_hooks_t *hooks);
/* Per-connection slot for the presence layer. */
void **sb_ws_presence_slot(sb_ws_t *ws);
/* Sends a ping frame (the pong, like every frame received, reaches the alive
 * hook). Nothing after the close frame. Loop thread of ws. */
void sb_ws_ping(sb_ws_t *ws);
/* Returns a new unmasked, uncompressed text frame of p[0..len), to share
 * between receivers with sb_conn_send; NULL on OOM. Any thread. */
sb_frame_t *sb_ws_text_frame(const char *p, size_t len);
/* True when the connection's token allows subscribing to channel (always in
 * development mode). Loop thread of ws. */
bool sb_ws_may_subscribe(sb_ws_t *ws, sb_str_t channel);

#endif
