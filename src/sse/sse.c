#define _GNU_SOURCE
#include "sse/sse.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config.h"

typedef struct {
    sb_conn_t *c;
    int64_t last_write_ms;
    int64_t expires_ms;
    bool envelope;
    bool presence;        /* ?presence=1 */
    void *presence_state; /* the presence hooks' */
    uint32_t nsubs;
    sb_sub_t subs[];
} sse_t;

static sb_frame_t *hb_frame; /* ": hb\n\n", shared by every stream */
static sb_sse_presence_hooks_t presence_hooks;

void sb_sse_set_presence_hooks(const sb_sse_presence_hooks_t *h) { presence_hooks = *h; }

void sb_sse_format(sb_buf_t *b, const char *id, const char *event, const char *data, size_t len)
{
    if (id) sb_buf_printf(b, "id: %s\n", id);
    if (event) sb_buf_printf(b, "event: %s\n", event);
    /* Every line of the text is its own data field; CR, LF and CRLF all end a
     * line for an SSE parser, so all three split here. */
    size_t start = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && data[i] != '\n' && data[i] != '\r') continue;
        sb_buf_puts(b, "data: ");
        sb_buf_put(b, data + start, i - start);
        sb_buf_put(b, "\n", 1);
        if (i < len && data[i] == '\r' && i + 1 < len && data[i + 1] == '\n') i++;
        start = i + 1;
    }
    sb_buf_put(b, "\n", 1);
}

static sb_frame_t *fmt_sse(const sb_msg_t *m)
{
    char id[24];
    sb_cursor_encode(m->seq, id);
    const char *ev = strcmp(m->event, "message") ? m->event : NULL;
    sb_buf_t b = {0};
    if (m->flags & SB_MSG_DATA_STRING) {
        /* A JSON string travels as its bare text. */
        cJSON *s = cJSON_ParseWithLength(m->data, m->data_len);
        const char *txt = cJSON_IsString(s) ? s->valuestring : "";
        sb_sse_format(&b, id, ev, txt, strlen(txt));
        cJSON_Delete(s);
    } else if (m->flags & SB_MSG_BINARY) {
        /* A binary room frame: its bytes cannot go into a text stream, so
         * base64 text, as everywhere else it is read back. */
        sb_buf_t t = {0};
        sb_msg_data_json(m, &t);
        if (t.len >= 2) sb_sse_format(&b, id, ev, t.p + 1, t.len - 2);
        else b.oom = true;
        sb_buf_free(&t);
    } else {
        sb_sse_format(&b, id, ev, m->data, m->data_len);
    }
    sb_frame_t *f = sb_buf_to_frame(&b);
    sb_buf_free(&b);
    return f;
}

static sb_frame_t *fmt_sse_env(const sb_msg_t *m)
{
    char id[24];
    sb_cursor_encode(m->seq, id);
    const char *ev = strcmp(m->event, "message") ? m->event : NULL;
    sb_buf_t j = {0}, b = {0};
    sb_msg_json(m, &j);
    sb_sse_format(&b, id, ev, j.p, j.len);
    sb_frame_t *f = sb_buf_to_frame(&b);
    sb_buf_free(&j);
    sb_buf_free(&b);
    return f;
}

static void sse_deliver(sb_sub_t *s, sb_msg_t *m)
{
    sse_t *st = s->sink;
    sb_frame_t *f = sb_msg_frame(m, st->envelope ? SB_FMT_SSE_ENV : SB_FMT_SSE);
    if (!f) return;
    if (sb_sub_send(st->c, s, f)) st->last_write_ms = st->c->loop->now_ms;
}

static void sse_reset(sb_sub_t *s, const char *reason)
{
    sse_t *st = s->sink;
    size_t nl;
    const char *name = sb_chan_name(s->chan, &nl);
    sb_buf_t j = {0}, b = {0};
    sb_buf_puts(&j, "{\"channel\":");
    sb_buf_json_str(&j, name, nl);
    sb_buf_printf(&j, ",\"reason\":\"%s\"}", reason);
    sb_sse_format(&b, NULL, "reset", j.p, j.len);
    sb_conn_send(st->c, sb_buf_to_frame(&b), NULL);
    sb_buf_free(&j);
    sb_buf_free(&b);
}

static const sb_sink_ops_t sse_sink = {.deliver = sse_deliver, .reset = sse_reset};

static ssize_t sse_on_data(sb_conn_t *c, char *buf, size_t len)
{
    return (ssize_t)len; /* an SSE client has nothing more to say; ignore it */
}

static void send_retry_and_end(sb_conn_t *c, int64_t lo, int64_t hi)
{
    int64_t retry = lo + (hi > lo ? (int64_t)(sb_random_u64() % (uint64_t)(hi - lo)) : 0);
    sb_conn_send(c, sb_frame_printf("retry: %lld\n\n", (long long)retry), NULL);
    sb_conn_end(c);
}

static void sse_on_tick(sb_conn_t *c, int64_t now)
{
    sse_t *st = c->proto;
    if (st->expires_ms && now >= st->expires_ms) {
        /* Hosts kill long streams; we end first, cleanly, and the client
         * resumes by cursor right away. */
        send_retry_and_end(c, 0, 1000);
        return;
    }
    if (now - st->last_write_ms >= sb_cfg.heartbeat_ms) {
        sb_conn_send(c, sb_frame_ref(hb_frame), NULL);
        st->last_write_ms = now;
    }
}

static void sse_on_shutdown(sb_conn_t *c)
{
    /* Spread the reconnects of thousands of clients over the retry window. */
    send_retry_and_end(c, sb_cfg.sse_retry_ms, sb_cfg.sse_retry_ms + 9000);
}

static void sse_on_close(sb_conn_t *c)
{
    sse_t *st = c->proto;
    if (st->presence && presence_hooks.close) presence_hooks.close(c, &st->presence_state);
    for (uint32_t i = 0; i < st->nsubs; i++) sb_broker_unsubscribe(&st->subs[i]);
    SB_STAT_ADD(c->loop, sse_streams, -1);
    free(st);
}

static const sb_conn_ops_t sse_ops = {.on_data = sse_on_data,
                                      .on_tick = sse_on_tick,
                                      .on_close = sse_on_close,
                                      .on_shutdown = sse_on_shutdown};

#define MAX_SSE_CHANNELS 64

static int handle_sse(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_http_req_t *req = x->req;
    if (!sb_http_origin_allowed(req)) {
        sb_http_error(c, SB_ERR_ORIGIN_FORBIDDEN);
        return SB_HTTP_DONE;
    }
    /* Channel names are copied: the request's bytes go away after this call. */
    char names_buf[MAX_SSE_CHANNELS][132];
    sb_str_t names[MAX_SSE_CHANNELS];
    size_t n = 0;
    bool envelope = false, presence = false;
    sb_since_t since = {0};
    sb_str_t q = req->query, k, v;
    while (sb_http_query_next(&q, &k, &v)) {
        if (sb_str_eq(k, "channel")) {
            if (n == MAX_SSE_CHANNELS || (int64_t)n >= sb_cfg.max_subscriptions) {
                sb_http_error(c, SB_ERR_TOO_MANY_SUBS);
                return SB_HTTP_DONE;
            }
            int len = sb_http_pct_decode(v, names_buf[n], 131, true);
            if (len < 0 || !sb_valid_channel(sb_str(names_buf[n], (size_t)len))) {
                sb_http_error(c, SB_ERR_INVALID_CHANNEL);
                return SB_HTTP_DONE;
            }
            names_buf[n][len] = 0;
            bool dup = false;
            for (size_t i = 0; i < n; i++)
                if (names[i].len == (size_t)len && !memcmp(names[i].p, names_buf[n], (size_t)len)) dup = true;
            if (!dup) {
                names[n] = sb_str(names_buf[n], (size_t)len);
                n++;
            }
        } else if (sb_str_eq(k, "envelope")) {
            envelope = sb_str_eq(v, "1") || sb_str_eq(v, "true");
        } else if (sb_str_eq(k, "presence")) {
            presence = sb_str_eq(v, "1") || sb_str_eq(v, "true");
        } else if (sb_str_eq(k, "since")) {
            char cur[32];
            int len = sb_http_pct_decode(v, cur, sizeof cur, true);
            if (len < 0 || !sb_cursor_decode(sb_str(cur, (size_t)len), &since)) {
                sb_http_error(c, SB_ERR_INVALID_CURSOR);
                return SB_HTTP_DONE;
            }
        }
    }
    /* On reconnect EventSource sends the id of the last event it saw; it is
     * newer than the since= of the URL it reconnects to, so it wins. */
    sb_str_t leid = sb_http_header(req, "last-event-id");
    if (leid.p && leid.len) {
        if (!sb_cursor_decode(leid, &since)) {
            sb_http_error(c, SB_ERR_INVALID_CURSOR);
            return SB_HTTP_DONE;
        }
    }
    if (n == 0) {
        sb_http_error_msg(c, SB_ERR_INVALID_CHANNEL, "Name at least one ?channel= to stream.");
        return SB_HTTP_DONE;
    }
    sb_err_t why;
    char user[128], info[512];
    if (!sb_http_authorize(req, names, n, &why, user, sizeof user, info, sizeof info)) {
        sb_http_error(c, why);
        return SB_HTTP_DONE;
    }
    sse_t *st = calloc(1, sizeof *st + n * sizeof(sb_sub_t));
    if (!st) {
        sb_http_error(c, SB_ERR_INTERNAL);
        return SB_HTTP_DONE;
    }
    st->c = c;
    st->envelope = envelope;
    st->presence = presence;
    st->nsubs = (uint32_t)n;
    st->last_write_ms = c->loop->now_ms;
    if (sb_cfg.sse_max_lifetime_ms > 0) st->expires_ms = c->loop->now_ms + sb_cfg.sse_max_lifetime_ms;
    sb_sub_t *subs[MAX_SSE_CHANNELS];
    for (size_t i = 0; i < n; i++) {
        st->subs[i].ops = &sse_sink;
        st->subs[i].sink = st;
        subs[i] = &st->subs[i];
    }
    /* A stream without a resume point starts at the current last id, and says
     * so in an id-only block: EventSource then has a Last-Event-ID even before
     * the first message, and a reconnect misses nothing published meanwhile. */
    if (!since.set) {
        sb_broker_stats_t bs;
        sb_broker_stats(&bs);
        since = (sb_since_t){true, bs.last_seq};
    }
    sb_http_stream_head(c, 200, "text/event-stream; charset=utf-8",
                        "Cache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\n");
    char cur[24];
    sb_cursor_encode(since.seq, cur);
    sb_conn_send(c,
                 sb_frame_printf("retry: %lld\nid: %s\n: switchboard %s\n\n",
                                 (long long)sb_cfg.sse_retry_ms, cur, SB_VERSION),
                 NULL);
    /* From here on the connection is an SSE stream. */
    sb_http_detach(c);
    c->ops = &sse_ops;
    c->proto = st;
    c->deadline_ms = 0;
    SB_STAT_ADD(c->loop, sse_streams, 1);
    if (sb_broker_subscribe(c->loop, subs, names, n, since, &why) < 0) {
        /* Channel limit: the head is sent, so tell it as an event and end. */
        sb_buf_t b = {0};
        const sb_err_info_t *e = sb_err_info(why);
        sb_buf_printf(&b, "{\"code\":\"%s\",\"message\":\"%s\"}", e->code, e->message);
        sb_buf_t o = {0};
        sb_sse_format(&o, NULL, "error", b.p, b.len);
        sb_conn_send(c, sb_buf_to_frame(&o), NULL);
        sb_buf_free(&b);
        sb_buf_free(&o);
        st->nsubs = 0;
        sb_conn_end(c);
    } else if (presence && presence_hooks.open) {
        presence_hooks.open(c, &st->presence_state, names, n, user, info);
    }
    return SB_HTTP_TAKEN;
}

void sb_sse_init(void)
{
    hb_frame = sb_frame_copy(": hb\n\n", 6);
    sb_msg_register_format(SB_FMT_SSE, fmt_sse);
    sb_msg_register_format(SB_FMT_SSE_ENV, fmt_sse_env);
    sb_http_route("/v1/sse", SB_M(SB_HTTP_GET), handle_sse);
}
