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

/* ---- cluster ----
 * Members are keyed by (node, clientId): node 0 is this process, nodes
 * 1..65535 are the cluster layer's numbers for the other processes. This
 * layer knows nothing of Redis; the cluster layer plugs in below. */

/* Called for every change of a local (node 0) member, on the loop thread
 * where it changed, with the presence lock held, right where the model
 * changed: the calls come in the model's order. seq numbers them from 1 up.
 * enter and update borrow the strings until return; update is the
 * throttled broadcast (exactly the states local readers get). The hooks must
 * not block nor call back into this layer. */
typedef struct {
    void (*enter)(uint64_t seq, sb_str_t channel, sb_str_t client_id, sb_str_t user_id,
                  sb_str_t member);
    void (*update)(uint64_t seq, sb_str_t channel, sb_str_t client_id, sb_str_t user_id,
                   sb_str_t member);
    void (*leave)(uint64_t seq, sb_str_t channel, sb_str_t client_id);
    /* Put before the connection id in clientIds ("3fa9c2d1-"), at most 19 bytes. */
    const char *client_prefix;
} sb_presence_repl_t;

/* Installs the hooks (borrowed for good), or removes them (NULL; the
 * clientId prefix stays). Main thread: at init before the loops run, and at
 * shutdown. Any thread otherwise safe (takes the lock). */
void sb_presence_set_repl(const sb_presence_repl_t *r);

/* One member as the cluster layer carries it: slices the caller owns. */
typedef struct {
    sb_str_t channel, client_id, user_id, member; /* member: the member JSON object */
} sb_presence_member_t;

/* Apply a remote node's changes. The inputs are validated by the caller
 * (channel name, UTF-8, member JSON an object) and borrowed until return.
 * Any thread but a loop's; each takes the presence lock.
 * enter: a new member enters (user.enter first when its user is new to the
 * channel); an existing (node, clientId) only has its JSON replaced (update,
 * nothing when unchanged), so a repeated enter is harmless. update: the
 * same, but always emits update (the origin broadcast this state). Both
 * return 0, SB_ELIMIT (--max-channels) or SB_ENOMEM. leave: the member
 * leaves; nothing when it is not there. */
int sb_presence_remote_enter(uint16_t node, sb_str_t channel, sb_str_t client_id,
                             sb_str_t user_id, sb_str_t member);
int sb_presence_remote_update(uint16_t node, sb_str_t channel, sb_str_t client_id,
                              sb_str_t user_id, sb_str_t member);
void sb_presence_remote_leave(uint16_t node, sb_str_t channel, sb_str_t client_id);
/* Every member of node leaves (the node went away); their users' user.leave
 * follows after --presence-grace. Returns how many left. */
size_t sb_presence_drop_node(uint16_t node);
/* Makes node's members exactly the n given (its full snapshot): missing ones
 * enter, changed ones update, unchanged ones emit nothing, and members of
 * node not listed leave. */
void sb_presence_remote_sync(uint16_t node, const sb_presence_member_t *members, size_t n);

/* Calls fn for every local (node 0) member with the presence lock held (fn
 * must not call into this layer; the member is borrowed until fn returns).
 * Returns the seq of the last change handed to the hooks: the snapshot holds
 * exactly the changes up to it. Any thread. */
typedef void (*sb_presence_each_fn)(void *ud, const sb_presence_member_t *m);
uint64_t sb_presence_local_snapshot(sb_presence_each_fn fn, void *ud);

/* Emits the user.leave of users whose grace period ended. The loops' timers
 * do it for the users whose last member left on them; the cluster layer
 * calls this on its tick for those whose last member was remote. Any thread. */
void sb_presence_grace_tick(void);
/* Members of other nodes right now. Any thread. */
int64_t sb_presence_remote_members(void);
/* At shutdown, after the loops and the cluster thread stopped: frees what
 * is left of the model when no loop will (remote members, users within
 * their grace period). Main thread. */
void sb_presence_remote_clear(void);

#endif
