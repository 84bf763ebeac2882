/* Fuzzes the cluster record parser: the bytes come back from Redis, where any
 * client of that Redis can PUBLISH or XADD whatever it likes. A record the
 * parser accepts must lie inside the input, must hold only what the broker
 * may apply (a valid channel and event, UTF-8 text, known flags), and must
 * come back the same after being written again the way a node writes it. */
#include "channels/channels.h"
#include "cluster/cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool inside(sb_str_t s, const char *lo, const char *hi)
{
    return !s.len || (s.p >= lo && s.p + s.len <= hi);
}

static bool same(sb_str_t a, sb_str_t b)
{
    return a.len == b.len && (!a.len || memcmp(a.p, b.p, a.len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data;
    sb_crec_t r;
    if (!sb_crec_parse(p, size, &r)) return 0;
    if (!inside(r.channel, p, p + size) || !inside(r.event, p, p + size) || !inside(r.data, p, p + size))
        __builtin_trap();
    if (!sb_valid_channel(r.channel) || (r.event.len && !sb_valid_event(r.event))) __builtin_trap();
    if (r.seq == 0 || r.prev >= r.seq || r.time_ms < 0) __builtin_trap();
    if (!(r.flags & SB_MSG_BINARY) && !sb_utf8_valid((const uint8_t *)r.data.p, r.data.len)) __builtin_trap();

    sb_buf_t b = {0};
    sb_buf_printf(&b, "%llu %llu ", (unsigned long long)r.seq, (unsigned long long)r.prev);
    sb_crec_body(&b, &r);
    if (b.oom) {
        sb_buf_free(&b);
        return 0;
    }
    sb_crec_t again;
    if (!sb_crec_parse(b.p, b.len, &again)) __builtin_trap();
    if (again.seq != r.seq || again.prev != r.prev || again.time_ms != r.time_ms || again.flags != r.flags ||
        again.node != r.node || again.origin != r.origin || !same(again.channel, r.channel) ||
        !same(again.event, r.event) || !same(again.data, r.data))
        __builtin_trap();
    sb_buf_free(&b);
    return 0;
}
