/* Server-Sent Events: GET /v1/sse streams over one or more channels, with
 * named events, heartbeats, one resume cursor for all channels
 * (Last-Event-ID or ?since=), reset on history gaps, envelope mode, a max
 * lifetime and slow-reader policies. PROTOCOL.md "Server-Sent Events". */
#ifndef SB_SSE_H
#define SB_SSE_H

#include "channels/channels.h"
#include "http/http.h"

/* Registers the /v1/sse route and the SSE message formats. Main thread, at start. */
void sb_sse_init(void);

/* Appends one SSE event block: optional id, optional event, data split into
 * lines on CR, LF and CRLF (each line its own "data:" field). For tests and
 * other layers (AI streams). */
void sb_sse_format(sb_buf_t *b, const char *id, const char *event, const char *data, size_t len);

/* Presence on streams that ask for it (?presence=1), installed by the
 * presence layer before serving. open runs on the stream's loop once its
 * channels are subscribed: names[0..n) are borrowed until return, user and
 * info are the token's sub and info JSON ("" without them), and *slot is the
 * stream's pointer for the hook's state. close runs when the stream closes. */
typedef struct {
    void (*open)(sb_conn_t *c, void **slot, const sb_str_t *names, size_t n, const char *user,
                 const char *info);
    void (*close)(sb_conn_t *c, void **slot);
} sb_sse_presence_hooks_t;
void sb_sse_set_presence_hooks(const sb_sse_presence_hooks_t *hooks);

#endif
