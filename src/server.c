/* Composition root: every layer's init in dependency order. */
#include "server.h"

#include "channels/channels.h"
#include "config/config.h"
#include "http/http.h"
#include "presence/presence.h"
#include "sse/sse.h"
#include "ws/ws.h"

int sb_server_init(void)
{
    /* Memory mode: ids start from the clock (ms x 1000), so a restarted server
     * issues ids above any the previous process issued (unless it averaged over
     * a million messages a second), and older cursors get an explicit reset. */
    uint64_t start = (uint64_t)sb_now_ms() * 1000;
    sb_broker_init(start, start);
    sb_http_api_init();
    sb_console_init();
    sb_sse_init();
    sb_ws_init();
    sb_presence_init();
    return 0;
}

int sb_server_start(void) { return 0; }

void sb_server_stop(void) {}

const char *sb_server_history_mode(void) { return "memory"; }
