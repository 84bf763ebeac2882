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

#endif
