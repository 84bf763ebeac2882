/* Cluster records: the text form of a message in Redis (see cluster.h). What
 * comes back from Redis is parsed like any other input: a record that does
 * not parse is counted and skipped, never applied. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "channels/channels.h"
#include "cluster/cluster.h"
#include "core/json.h"

#define KNOWN_FLAGS (SB_MSG_DATA_STRING | SB_MSG_RAW | SB_MSG_BINARY)

void sb_crec_body(sb_buf_t *b, const sb_crec_t *r)
{
    sb_buf_printf(b, "%" PRId64 " %u %016" PRIx64 " %" PRIu64 " %zu %zu\n", r->time_ms, (unsigned)r->flags,
                  r->node, r->origin, r->channel.len, r->event.len);
    sb_buf_put(b, r->channel.p, r->channel.len);
    sb_buf_put(b, r->event.p, r->event.len);
    if (r->data.len) sb_buf_put(b, r->data.p, r->data.len);
}

/* The next space- (or, for the last field, newline-) terminated field. */
static bool field(const char **p, const char *end, char sep, sb_str_t *out)
{
    const char *s = *p;
    const char *e = memchr(s, sep, (size_t)(end - s));
    if (!e || e == s) return false;
    *out = sb_str(s, (size_t)(e - s));
    *p = e + 1;
    return true;
}

static bool num(const char **p, const char *end, char sep, uint64_t *out)
{
    sb_str_t f;
    return field(p, end, sep, &f) && sb_str_to_u64(f, out);
}

static bool hex16(const char **p, const char *end, uint64_t *out)
{
    sb_str_t f;
    if (!field(p, end, ' ', &f) || f.len != 16) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < 16; i++) {
        char c = f.p[i];
        unsigned d = c >= '0' && c <= '9' ? (unsigned)(c - '0') : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10) : 16;
        if (d > 15) return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

bool sb_crec_parse(const char *p, size_t len, sb_crec_t *out)
{
    const char *end = p + len;
    uint64_t time_ms, flags, chlen, evlen;
    memset(out, 0, sizeof *out);
    if (!num(&p, end, ' ', &out->seq) || !num(&p, end, ' ', &out->prev) || !num(&p, end, ' ', &time_ms) ||
        !num(&p, end, ' ', &flags) || !hex16(&p, end, &out->node) || !num(&p, end, ' ', &out->origin) ||
        !num(&p, end, ' ', &chlen) || !num(&p, end, '\n', &evlen))
        return false;
    if (out->seq == 0 || out->prev >= out->seq || time_ms > INT64_MAX || (flags & ~(uint64_t)KNOWN_FLAGS))
        return false;
    if ((flags & SB_MSG_BINARY) && !(flags & SB_MSG_RAW)) return false;
    size_t left = (size_t)(end - p);
    if (chlen > left || evlen > left - chlen) return false;
    out->time_ms = (int64_t)time_ms;
    out->flags = (uint8_t)flags;
    out->channel = sb_str(p, chlen);
    out->event = sb_str(p + chlen, evlen);
    out->data = sb_str(p + chlen + evlen, left - chlen - evlen);
    if (!sb_valid_channel(out->channel)) return false;
    if (out->event.len && !sb_valid_event(out->event)) return false;
    if (out->data.len > UINT32_MAX) return false;
    /* Text goes into SSE lines and WebSocket text frames as it is. */
    if (!(flags & SB_MSG_BINARY) && !sb_utf8_valid((const uint8_t *)out->data.p, out->data.len)) return false;
    /* Not a room frame: the data goes into JSON frames as it is, so it must
     * be one JSON value (a string when the flag says so). */
    if (!(flags & SB_MSG_RAW)) {
        bool obj;
        if (!sb_json_scan(out->data.p, out->data.len, NULL, NULL, 0, &obj)) return false;
        if ((flags & SB_MSG_DATA_STRING) && out->data.p[0] != '"') return false;
    }
    if ((flags & SB_MSG_RAW) && (flags & SB_MSG_DATA_STRING)) return false;
    return true;
}
