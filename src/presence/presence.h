/* Presence: who is in a channel right now, and what they are doing (cursors,
 * typing). PROTOCOL.md "Presence rules" and docs/protocol.md "Presence".
 *
 * Members are connections (a WebSocket that entered, or an SSE stream with
 * ?presence=1 and a token); users are userIds. Readers (a WebSocket
 * subscription with "presence":true, an SSE stream with ?presence=1) get a
 * presence.sync and then every change in order, batched per loop turn. State
 * updates are throttled per member with the trailing edge kept. Members leave
 * when they say so, when their connection closes, or when it stops answering
 * the pings this layer sends for --presence-timeout; user.leave waits
 * --presence-grace for the user's last member. */
#ifndef SB_PRESENCE_H
#define SB_PRESENCE_H

#include "core/core.h"

/* Registers the WebSocket "presence" op and hooks, the SSE hooks, the REST
 * endpoint GET /v1/channels/{ch}/presence, the channel info count, and the
 * metrics. Main thread, at start, after sb_ws_init and sb_sse_init and before
 * the loops run. */
void sb_presence_init(void);

/* Members of a channel right now (0 when it has no presence). Any thread. */
int64_t sb_presence_count(sb_str_t channel);

/* Appends {"members":[...]} for a channel: the same list a presence.sync
 * carries. Any thread. */
void sb_presence_members_json(sb_str_t channel, sb_buf_t *out);

#endif
