/* Presence model: per-channel member sets, per-channel users with their grace
 * period, distinct online users, and the ordered stream of changes. No I/O and
 * no loops here: the transport glue (presence.c) turns the changes this model
 * emits into frames. Private to src/presence and its unit tests.
 *
 * Locking: one process-wide mutex (pres_lock) guards everything in this file.
 * Every function below except the throttle helpers must be called with it
 * held, from any thread. Hooks run with it held and must not call back in
 * except through the functions they are documented to use.
 *
 * Cluster: a member is keyed by (node, clientId). Node 0 is this process; a
 * cluster layer enters members of other nodes with their node id and drops
 * them all at once with pres_drop_node when a node goes away. */
#ifndef SB_PRESENCE_MODEL_H
#define SB_PRESENCE_MODEL_H

#include "core/core.h"

typedef struct pres_chan pres_chan_t;
typedef struct pres_member pres_member_t;

/* The actions a change carries; the strings are the wire names. */
typedef enum {
    PRES_ENTER,
    PRES_UPDATE,
    PRES_LEAVE,
    PRES_USER_ENTER,
    PRES_USER_LEAVE
} pres_action_t;
/* "enter", "update", "leave", "user.enter", "user.leave". */
const char *pres_action_name(pres_action_t a);

typedef struct {
    /* One change of channel ch. seq numbers the changes of a channel from 1 up,
     * without gaps, in the order every reader must apply them. member is the
     * member JSON the change carries (for user.* the member that brought the
     * user online, or the last one that left), borrowed until return. */
    void (*emit)(pres_chan_t *ch, uint64_t seq, pres_action_t action, const char *member,
                 size_t len);
    /* The channel is about to be freed: release what *pres_chan_glue(ch) holds. */
    void (*chan_free)(pres_chan_t *ch);
} pres_hooks_t;

/* Installs the hooks and the grace period (ms) of user.leave. Call before any
 * other function (tests may call it again between cases, lock not held). */
void pres_model_init(const pres_hooks_t *hooks, int64_t grace_ms);
void pres_lock(void);
void pres_unlock(void);

/* The channel named name; created when `create` (NULL at max_chans channels or
 * on OOM), else NULL when it has no presence state. The pointer stays valid
 * while the channel has members, users, or holds (pres_chan_hold). */
pres_chan_t *pres_chan_get(sb_str_t name, bool create, int64_t max_chans);
/* Keeps an otherwise empty channel alive (a reader, a queued change); release
 * frees the channel once nothing holds it and it has no members or users. */
void pres_chan_hold(pres_chan_t *ch);
void pres_chan_release(pres_chan_t *ch);
/* Frees ch now if nothing keeps it (after a failed enter on a new channel). */
void pres_chan_maybe_free(pres_chan_t *ch);
const char *pres_chan_name(const pres_chan_t *ch, size_t *len);
/* The last change number issued for the channel (0 before the first). */
uint64_t pres_chan_seq(const pres_chan_t *ch);
int64_t pres_chan_members(const pres_chan_t *ch);
/* One pointer of glue state per channel, owned by the glue (see chan_free). */
void **pres_chan_glue(pres_chan_t *ch);

/* The member (node, clientId) of ch, or NULL. */
pres_member_t *pres_member_find(pres_chan_t *ch, uint16_t node, sb_str_t client_id);
/* Adds a member. Emits user.enter when userId was neither online nor within
 * its grace period in ch, then enter. json is the member JSON (copied); owner
 * is the caller's record, returned by pres_member_owner. Returns the member,
 * or NULL on OOM or when (node, clientId) is already a member (nothing emitted). */
pres_member_t *pres_enter(pres_chan_t *ch, uint16_t node, sb_str_t client_id, sb_str_t user_id,
                          sb_str_t json, void *owner, int64_t now_ms);
/* Replaces the member JSON (copied) and emits update. Returns 0 or SB_ENOMEM
 * (the member keeps its previous JSON, nothing is emitted). */
int pres_update(pres_member_t *m, sb_str_t json);
/* Removes and frees the member and emits leave. When it was its user's last
 * member in the channel, the user enters its grace period (user.leave comes
 * from pres_grace_expire), or with a zero grace period leaves at once. The
 * channel is freed when nothing keeps it. */
void pres_leave(pres_member_t *m, int64_t now_ms);
/* Emits user.leave for every user whose grace period ended by now_ms and
 * frees them. Returns the next grace deadline, or 0 when none is pending. */
int64_t pres_grace_expire(int64_t now_ms);
/* Earliest pending grace deadline, or 0. */
int64_t pres_grace_next(void);
void *pres_member_owner(const pres_member_t *m);
/* The member JSON as last emitted (borrowed while the member lives). */
const char *pres_member_json(const pres_member_t *m, size_t *len);

/* Appends the channel's members as a JSON array (in enter order) to members,
 * and its users (online or within grace) as a JSON array of userIds to users
 * (when not NULL). Returns the channel's seq: the snapshot reflects exactly the
 * changes up to it. On OOM the buffers have oom set. */
uint64_t pres_snapshot(pres_chan_t *ch, sb_buf_t *members, sb_buf_t *users);

/* Removes every member of node (a departed cluster node), as pres_leave each.
 * Returns how many left. */
size_t pres_drop_node(uint16_t node, int64_t now_ms);

/* Calls fn for every member of node, channel by channel, each channel's in
 * enter order. fn must not enter, update or leave members (collect them and
 * act after the walk); the member is borrowed until fn returns. */
void pres_node_each(uint16_t node, void (*fn)(pres_member_t *m, void *ud), void *ud);
/* What a member is: its channel, node, clientId and userId (borrowed while
 * the member lives). */
pres_chan_t *pres_member_chan(const pres_member_t *m);
uint16_t pres_member_node(const pres_member_t *m);
sb_str_t pres_member_client_id(const pres_member_t *m);
sb_str_t pres_member_user_id(const pres_member_t *m);

typedef struct {
    int64_t channels;     /* channels with presence state */
    int64_t members;      /* members across channels */
    int64_t remote;       /* of which members of other cluster nodes (node != 0) */
    int64_t users;        /* distinct userIds with at least one member anywhere */
    int64_t grace;        /* users within their grace period */
} pres_totals_t;
void pres_totals(pres_totals_t *out);

/* Frees every channel, member and user without emitting anything (at exit,
 * and between unit tests). Channels still held are freed too: call only when
 * no holder remains that would release them. */
void pres_model_clear(void);

/* ---- throttle: at most one broadcast per interval, trailing edge kept ----
 * Pure helpers on the owner's clock; no lock needed. */
typedef struct {
    int64_t last_ms; /* when the last broadcast went out */
    bool pending;    /* a newer state waits for last_ms + interval */
} pres_throttle_t;

/* A broadcast went out at now (enter, or a flushed pending state). */
void pres_throttle_sent(pres_throttle_t *t, int64_t now_ms);
/* A new state arrives at now: returns true when it may go out at once (the
 * caller then broadcasts it); false when it must wait (it becomes pending and
 * replaces an older pending state). */
bool pres_throttle_offer(pres_throttle_t *t, int64_t now_ms, int64_t interval_ms);
/* When the pending state may go out. */
static inline int64_t pres_throttle_due(const pres_throttle_t *t, int64_t interval_ms)
{
    return t->last_ms + interval_ms;
}

#endif
