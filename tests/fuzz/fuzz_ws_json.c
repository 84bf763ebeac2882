/* Fuzzes the WebSocket JSON protocol end to end inside one process: the input
 * is a client's byte stream (mode 0) or one JSON op sent as a masked text
 * frame (mode 1), fed to a real /v1/ws session on a real loop and broker;
 * afterwards the session is closed and every subscription must be released
 * (LeakSanitizer checks it at exit). */
#include <stdlib.h>
#include <uv.h>

#include "channels/channels.h"
#include "config/config.h"
#include "net/net.h"
#include "sse/sse.h"
#include "ws/ws.h"

static sb_loop_t *L;

static void accept_none(sb_conn_t *c) { sb_conn_close(c); }

static void setup(void)
{
    char *argv[] = {"fuzz", "--history-size", "16", "--max-message", "65536", "--log-level", "error", NULL};
    sb_config_parse(7, argv);
    sb_net_init(1, "127.0.0.1", 0, accept_none);
    sb_broker_init(1000, 1000);
    sb_sse_init();
    sb_ws_init();
    L = sb_net.loops[0];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!L) setup();
    if (size < 1) return 0;
    sb_conn_t *c = sb_conn_new_detached(L);
    if (!c) return 0;
    if (!sb_ws_attach(c, (data[0] & 2) ? "room:fuzz" : NULL)) {
        sb_conn_close(c);
        return 0;
    }
    size_t n = size - 1;
    uint8_t *buf = malloc(n + 14);
    size_t len;
    if (data[0] & 1) {
        /* One masked text frame carrying the rest of the input. */
        size_t h = 0;
        buf[h++] = 0x81;
        if (n < 126) buf[h++] = (uint8_t)(0x80 | n);
        else if (n < 65536) {
            buf[h++] = 0x80 | 126;
            buf[h++] = (uint8_t)(n >> 8);
            buf[h++] = (uint8_t)n;
        } else {
            free(buf);
            sb_conn_close(c);
            return 0;
        }
        static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
        memcpy(buf + h, mask, 4);
        h += 4;
        for (size_t i = 0; i < n; i++) buf[h + i] = data[1 + i] ^ mask[i & 3];
        len = h + n;
    } else {
        memcpy(buf, data + 1, n);
        len = n;
    }
    if (c->ops && c->ops->on_data) c->ops->on_data(c, (char *)buf, len);
    free(buf);
    sb_conn_close(c);
    for (int i = 0; i < 3; i++) uv_run(&L->uv, UV_RUN_NOWAIT);
    return 0;
}
