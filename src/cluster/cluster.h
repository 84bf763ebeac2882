/* Cluster: several Switchboard processes serving one set of channels through
 * one Redis (--cluster-redis HOST:PORT). docs/cluster.md has the design.
 *
 * Redis is the sequencer and the log. A publish on any node runs one Lua
 * script that gives it the next cluster-wide id (INCR), appends it to a
 * capped stream (XADD, the catch-up log) and PUBLISHes it on one pub/sub
 * channel. Every node, the publishing one included, applies what arrives on
 * that channel to its broker in id order: history, `last` and subscribers
 * are the same on every node, so a cursor from one node resumes on any other.
 * Each record names the id of the record before it, so a node notices a
 * record it missed (pub/sub is at-most-once) and reads it back from the
 * stream; what the stream no longer holds is a real gap, and readers are told
 * (reset). The publisher's acknowledgement waits until its own node has
 * applied the message, so what was acknowledged is readable where it was
 * published.
 *
 * Threads: one cluster thread with its own libuv loop owns both Redis
 * connections (commands, and the pub/sub subscription); the event loops hand
 * it publishes through a queue and get their acknowledgements back as tasks.
 *
 * Presence is cluster-wide too (presence.c): over a second pub/sub channel,
 * "<prefix>:presence", on the same two connections, each node publishes its
 * own members' changes, snapshots and heartbeats and merges the others'. At
 * sb_cluster_stop it says bye (best effort) and frees the remote members. */
#ifndef SB_CLUSTER_H
#define SB_CLUSTER_H

#include "core/core.h"

/* ---- records (pure functions, record.c) ---- */

/* One message as it travels through Redis. The node writes the body; the
 * script puts "<seq> <prev> " in front:
 *   <seq> <prev> <time_ms> <flags> <node> <origin> <chlen> <evlen>\n
 *   <channel><event><data>
 * decimal numbers, node as 16 hex digits, then the three byte strings back to
 * back (data to the end). */
typedef struct {
    uint64_t seq, prev; /* its id, and the id of the record before it (0: none) */
    int64_t time_ms;
    uint8_t flags; /* SB_MSG_DATA_STRING | SB_MSG_RAW | SB_MSG_BINARY */
    uint64_t node;   /* the publishing node */
    uint64_t origin; /* the publishing connection on that node, 0 = none */
    sb_str_t channel, event, data; /* slices of the parsed text */
} sb_crec_t;

/* Appends the body of a record (everything after "<seq> <prev> ") to b. */
void sb_crec_body(sb_buf_t *b, const sb_crec_t *r);

/* Parses a whole record. Returns false on anything malformed: bad numbers,
 * lengths past the end, an invalid channel or event name, unknown flags, data
 * that is not UTF-8 where it must be text. The slices point into p. */
bool sb_crec_parse(const char *p, size_t len, sb_crec_t *out);

/* ---- the node ---- */

/* Reads --cluster-redis, --cluster-prefix and --cluster-log-size. Without
 * --cluster-redis it does nothing and returns 0. Refuses (-1, logged) a bad
 * address or a durable --data-dir (Redis is the log in cluster mode).
 * Installs the broker's cluster hook. Call before the loops exist. */
int sb_cluster_init(void);

/* Starts the cluster thread and waits up to `wait_ms` for the first catch-up
 * (the history Redis holds) before the loops start serving; past that it
 * logs a warning and serving starts anyway, history following as soon as
 * Redis answers. Returns 0 (also without cluster mode), -1 if the thread
 * cannot start. Call after sb_net_init, before the loops run. */
int sb_cluster_start(int64_t wait_ms);

/* After the loops stopped: closes the connections and joins the thread.
 * Publishes still waiting for Redis get their callbacks with an error (on
 * the stopped loops, run by sb_net_free: they only release what they hold). */
void sb_cluster_stop(void);

/* True in cluster mode. */
bool sb_cluster_enabled(void);

#endif
