/* Composition root: every layer's init in dependency order. */
#include "server.h"

#include "ai/ai.h"
#include "channels/channels.h"
#include "cluster/cluster.h"
#include "config/config.h"
#include "history/history.h"
#include "http/http.h"
#include "presence/presence.h"
#include "sse/sse.h"
#include "ws/ws.h"

int sb_server_init(void)
{
    /* Ids first: from the durable log, or from the clock in memory mode. */
    if (sb_history_init() < 0) return -1;
    /* In a cluster, ids come from Redis instead (refused with --data-dir). */
    if (sb_cluster_init() < 0) return -1;
    sb_http_api_init();
    sb_console_init();
    sb_sse_init();
    sb_ws_init();
    if (sb_ai_relay_init() < 0) return -1;
    sb_presence_init();
    return 0;
}

int sb_server_start(void)
{
    if (sb_history_start() < 0) return -1;
    /* A node serves once it holds the cluster's history (or 5 s have passed). */
    return sb_cluster_start(5000);
}

void sb_server_stop(void)
{
    sb_cluster_stop();
    sb_history_stop();
}

const char *sb_server_history_mode(void) { return sb_history_mode(); }
