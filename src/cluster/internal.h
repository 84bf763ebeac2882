/* Private to src/cluster: what the node (cluster.c: the thread, the Redis
 * connections) and presence across nodes (presence.c) share. Everything here
 * runs on the cluster thread unless its comment says otherwise. */
#ifndef SB_CLUSTER_INTERNAL_H
#define SB_CLUSTER_INTERNAL_H

#include <hiredis/async.h>
#include <uv.h>

#include "core/core.h"

/* ---- cluster.c ---- */

/* The command connection while it is up (its init script answered), else
 * NULL. Commands sent on it run in the order they were sent. */
redisAsyncContext *sb_cluster_cmd(void);
/* Serving starts (sb_cluster_start returns) once the first catch-up is done
 * and presence has settled (sb_cluster_pres_settled): call when either may
 * have just become true. */
void sb_cluster_maybe_ready(void);

/* ---- presence.c: presence across nodes ---- */

/* Main thread, from sb_cluster_init: names the pub/sub channel
 * "<prefix>:presence" and installs the presence replication hooks (clientIds
 * get the node prefix from now on). */
void sb_cluster_pres_init(const char *prefix, uint64_t node);
/* The pub/sub channel, for SUBSCRIBE and to tell its messages apart. */
const char *sb_cluster_pres_channel(void);
/* Main thread, before the cluster thread starts: its handles on loop.
 * Returns 0 or a libuv error. */
int sb_cluster_pres_start(uv_loop_t *loop);
/* The subscription to the presence channel is (again) in place: publish our
 * snapshot, then ask the others for theirs. */
void sb_cluster_pres_subscribed(void);
/* The command connection is (again) up: what we published meanwhile may be
 * lost, so publish our snapshot. */
void sb_cluster_pres_cmd_up(void);
/* True once the snapshots asked for by the first query are in (the number
 * of subscribers PUBLISH reported, less ourselves), or SETTLE_MS after it. */
bool sb_cluster_pres_settled(void);
/* A message from the presence channel (borrowed until return). */
void sb_cluster_pres_message(const char *p, size_t len);
/* Every tick of the cluster thread: heartbeats, node timeouts, grace expiry. */
void sb_cluster_pres_tick(void);
/* Shutting down: publishes what is queued and a bye. Returns true when it
 * will call done once the bye is answered (or given up on); false when done
 * should be called now (nothing to wait for). Repeated calls while waiting
 * return true and do nothing. */
bool sb_cluster_pres_goodbye(void (*done)(void));
/* Closes its handles on the cluster loop (from the cluster's close_all). */
void sb_cluster_pres_close(void);
/* Main thread, after the cluster thread was joined: every remote member
 * leaves and what is queued is freed. */
void sb_cluster_pres_free(void);
/* Appends the presence part of the cluster metrics. Any thread. */
void sb_cluster_pres_metrics(sb_buf_t *b, bool prometheus);

#endif
