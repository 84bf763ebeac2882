/* The REST API of channels: publish, history (with long-poll), channel info,
 * health. PROTOCOL.md "HTTP endpoints". */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>

#include "auth/auth.h"
#include "auth/limits.h"
#include "channels/channels.h"
#include "config/config.h"
#include "core/json.h"
#include "http/http.h"
#include "metrics/metrics.h"

#define MAX_HISTORY_PAGE 1000

/* Extracts and validates the channel name at the start of tail (up to '/' or
 * the end), percent-decoded into out. Returns the length or -1. */
static int channel_from_path(sb_str_t tail, char *out, size_t cap, sb_str_t *rest)
{
    const char *slash = memchr(tail.p, '/', tail.len);
    sb_str_t raw = sb_str(tail.p, slash ? (size_t)(slash - tail.p) : tail.len);
    *rest = slash ? sb_str(slash, tail.len - raw.len) : sb_str("", 0);
    int n = sb_http_pct_decode(raw, out, cap - 1, false);
    if (n < 0) return -1;
    out[n] = 0;
    if (!sb_valid_channel(sb_str(out, (size_t)n))) return -1;
    return n;
}

/* True when the request's Bearer token is the --api-key: the application's
 * own backend, which may publish anywhere and is not rate limited. */
static bool has_server_key(const sb_http_req_t *req)
{
    if (!sb_cfg.api_key[0]) return false;
    sb_str_t auth = sb_http_header(req, "authorization");
    if (!auth.p || auth.len < 8 || !sb_str_ieq(sb_str(auth.p, 7), "bearer ")) return false;
    return sb_auth_ct_equal(auth.p + 7, auth.len - 7, sb_cfg.api_key, strlen(sb_cfg.api_key));
}

/* Server-side publish auth: with --api-key, a Bearer key may publish anywhere;
 * with --jwt-secret, a token with matching "publish" patterns may publish. With
 * neither, development mode allows everything. */
static bool may_publish(sb_conn_t *c, const sb_http_req_t *req, sb_str_t channel, sb_err_t *why,
                        bool server_key)
{
    if (server_key) return true;
    if (!sb_cfg.api_key[0] && !sb_cfg.jwt_secret[0]) return true;
    sb_str_t auth = sb_http_header(req, "authorization");
    if (!auth.p || auth.len < 8 || !sb_str_ieq(sb_str(auth.p, 7), "bearer ")) {
        *why = SB_ERR_UNAUTHORIZED;
        return false;
    }
    sb_str_t tok = sb_str(auth.p + 7, auth.len - 7);
    if (sb_cfg.jwt_secret[0]) {
        sb_token_t t;
        if (sb_auth_jwt_verify(tok, (const uint8_t *)sb_cfg.jwt_secret, strlen(sb_cfg.jwt_secret),
                               sb_now_ms() / 1000, &t, why) < 0)
            return false;
        bool ok = sb_auth_can_publish(&t, channel);
        sb_token_free(&t);
        if (!ok) *why = SB_ERR_FORBIDDEN;
        return ok;
    }
    *why = SB_ERR_UNAUTHORIZED;
    return false;
}

typedef struct {
    sb_conn_t *c;
    char channel[130];
} pub_ctx_t;

static void reply_published(sb_conn_t *c, const char *channel, uint64_t seq)
{
    /* Every publish ends here: no printf. The channel name was validated
     * (it fits pub_ctx_t, and holds nothing that JSON escapes). */
    char body[220], id[24];
    size_t idn = sb_cursor_encode(seq, id), chn = strnlen(channel, 129), n = 0;
    memcpy(body, "{\"id\":\"", 7), n = 7;
    memcpy(body + n, id, idn), n += idn;
    memcpy(body + n, "\",\"channel\":\"", 13), n += 13;
    memcpy(body + n, channel, chn), n += chn;
    memcpy(body + n, "\"}", 2), n += 2;
    sb_http_respond(c, 201, "application/json", body, n, NULL);
}

/* The durable store acknowledged (on the publisher's loop). The connection
 * may have closed meanwhile: its hold kept the memory valid until now. */
static void publish_durable_cb(void *ud, int status, uint64_t seq)
{
    pub_ctx_t *p = ud;
    sb_conn_t *c = p->c;
    if (sb_conn_release(c) && sb_http_alive(c)) {
        if (status == 0) reply_published(c, p->channel, seq);
        else sb_http_error(c, sb_publish_error(status));
        sb_http_async_end(c);
    }
    free(p);
}

static bool ctype_is(sb_str_t ct, const char *type)
{
    size_t n = strlen(type);
    if (ct.len < n || !sb_str_ieq(sb_str(ct.p, n), type)) return false;
    return ct.len == n || ct.p[n] == ';' || ct.p[n] == ' ';
}

static int handle_publish(sb_conn_t *c, sb_http_ctx_t *x, const char *channel, size_t chlen)
{
    sb_http_req_t *req = x->req;
    sb_err_t why = SB_OK;
    /* --publish-rate per connection, as for WebSocket publishes. Every attempt
     * takes a token, before the token is verified: a flood of bad credentials
     * is refused as cheaply as a flood of good ones (and the HTTP layer holds
     * the connection's next requests until its rate allows one). */
    bool server_key = has_server_key(req);
    if (!server_key && !sb_limits_publish_ok(c)) {
        sb_http_error(c, SB_ERR_RATE_LIMITED);
        return SB_HTTP_DONE;
    }
    if (!may_publish(c, req, sb_str(channel, chlen), &why, server_key)) {
        sb_http_error(c, why);
        return SB_HTTP_DONE;
    }
    sb_pub_t p = {.channel = sb_str(channel, chlen)};
    char event[80];
    int en = sb_http_query_get(req->query, "event", event, sizeof event);
    if (en == -2 || (en >= 0 && !sb_valid_event(sb_str(event, (size_t)en)))) {
        sb_http_error(c, SB_ERR_INVALID_EVENT);
        return SB_HTTP_DONE;
    }
    if (en >= 0) p.event = sb_str(event, (size_t)en);
    sb_str_t key = sb_http_header(req, "idempotency-key");
    if (key.p) {
        bool ok = key.len >= 1 && key.len <= 256;
        for (size_t i = 0; ok && i < key.len; i++)
            ok = (unsigned char)key.p[i] >= 0x21 && (unsigned char)key.p[i] < 0x7f;
        if (!ok) {
            sb_http_error_msg(c, SB_ERR_INVALID_PARAM,
                              "Idempotency-Key must be 1-256 printable ASCII characters.");
            return SB_HTTP_DONE;
        }
        p.idem_key = key;
    }
    sb_str_t ct = sb_http_header(req, "content-type");
    char *data_text = NULL;
    char event_buf[72];
    sb_buf_t sbuf = {0};
    if (ct.p && ctype_is(ct, "application/json")) {
        /* Scanned, not parsed into a tree: the data goes on as JSON text. */
        static const char *const keys[] = {"event", "data"};
        sb_str_t v[2];
        bool is_object = false;
        if (!sb_json_scan(x->body.p, x->body.len, keys, v, 2, &is_object) ||
            !sb_utf8_valid((const uint8_t *)x->body.p, x->body.len)) {
            sb_http_error(c, SB_ERR_INVALID_JSON);
            return SB_HTTP_DONE;
        }
        if (!is_object || !v[1].p || (v[0].p && v[0].p[0] != '"')) {
            sb_http_error_msg(c, SB_ERR_INVALID_BODY,
                              "Expected a JSON object {\"event\":\"name\",\"data\":<any JSON>}.");
            return SB_HTTP_DONE;
        }
        if (v[0].p) {
            long n = sb_json_unescape(v[0].p, v[0].len, event_buf, sizeof event_buf);
            if (n < 0 || !sb_valid_event(sb_str(event_buf, (size_t)n))) {
                sb_http_error(c, SB_ERR_INVALID_EVENT);
                return SB_HTTP_DONE;
            }
            p.event = sb_str(event_buf, (size_t)n);
        }
        if (!(data_text = malloc(v[1].len + 1))) {
            sb_http_error(c, SB_ERR_INTERNAL);
            return SB_HTTP_DONE;
        }
        size_t dn = sb_json_minify(v[1].p, v[1].len, data_text);
        data_text[dn] = 0;
        p.data = sb_str(data_text, dn);
        p.data_is_string = data_text[0] == '"';
    } else {
        if (ct.p && (ctype_is(ct, "application/octet-stream") || ctype_is(ct, "multipart/form-data") ||
                     (ct.len >= 6 && (sb_str_ieq(sb_str(ct.p, 6), "image/") ||
                                      sb_str_ieq(sb_str(ct.p, 6), "audio/") ||
                                      sb_str_ieq(sb_str(ct.p, 6), "video/"))))) {
            sb_http_error_msg(c, SB_ERR_UNSUPPORTED_MEDIA,
                              "Publish JSON (application/json) or text; binary bodies are not accepted.");
            return SB_HTTP_DONE;
        }
        if (!sb_utf8_valid((const uint8_t *)x->body.p, x->body.len)) {
            sb_http_error(c, SB_ERR_INVALID_UTF8);
            return SB_HTTP_DONE;
        }
        /* The raw body becomes a JSON string value. */
        sb_buf_json_str(&sbuf, x->body.p, x->body.len);
        if (sbuf.oom) {
            sb_buf_free(&sbuf);
            sb_http_error(c, SB_ERR_INTERNAL);
            return SB_HTTP_DONE;
        }
        p.data = sb_str(sbuf.p, sbuf.len);
        p.data_is_string = true;
    }
    SB_STAT_ADD(c->loop, messages_in, 1);
    pub_ctx_t *pc = malloc(sizeof *pc);
    uint64_t seq = 0;
    int r = -1;
    if (pc) {
        pc->c = c;
        memcpy(pc->channel, channel, chlen + 1);
        r = sb_broker_publish(&p, &seq, &why, publish_durable_cb, pc);
    } else {
        why = SB_ERR_INTERNAL;
    }
    free(data_text);
    sb_buf_free(&sbuf);
    if (r == 0) {
        sb_conn_hold(c); /* publish_durable_cb releases */
        sb_http_async_begin(c);
        return SB_HTTP_ASYNC;
    }
    free(pc);
    if (r < 0) sb_http_error(c, why);
    else reply_published(c, channel, seq);
    return SB_HTTP_DONE;
}

/* ---- history and long-poll ---- */
static void reply_history(sb_conn_t *c, sb_str_t channel, sb_since_t since, size_t limit)
{
    sb_msg_t *msgs[MAX_HISTORY_PAGE];
    bool reset;
    uint64_t next;
    size_t n = sb_broker_history(channel, since, limit, msgs, &reset, &next);
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"messages\":[");
    for (size_t i = 0; i < n; i++) {
        if (i) sb_buf_put(&b, ",", 1);
        sb_frame_t *f = sb_msg_frame(msgs[i], SB_FMT_JSON);
        if (f) sb_buf_put(&b, f->data, f->len);
        sb_msg_unref(msgs[i]);
    }
    char id[24];
    sb_cursor_encode(next, id);
    sb_buf_printf(&b, "],\"next\":\"%s\",\"reset\":%s}", id, reset ? "true" : "false");
    if (b.oom) sb_http_error(c, SB_ERR_INTERNAL);
    else sb_http_respond(c, 200, "application/json", b.p, b.len, "Cache-Control: no-store\r\n");
    sb_buf_free(&b);
}

typedef struct {
    sb_sub_t sub;
    sb_conn_t *c;
    int64_t deadline_ms;
    size_t limit;
    sb_since_t since;
    char channel[130];
    size_t chlen;
} longpoll_t;

static ssize_t lp_on_data(sb_conn_t *c, char *buf, size_t len);
static void lp_on_tick(sb_conn_t *c, int64_t now);
static void lp_on_close(sb_conn_t *c);
static const sb_conn_ops_t lp_ops = {.on_data = lp_on_data, .on_tick = lp_on_tick, .on_close = lp_on_close};

/* While a long-poll waits, the connection runs these ops; the HTTP state is
 * kept aside in the waiter and restored when it answers. */
typedef struct {
    longpoll_t lp;
    const sb_conn_ops_t *saved_ops;
    void *saved_proto;
} lp_hold_t;

static void lp_finish(lp_hold_t *h, bool timed_out)
{
    sb_conn_t *c = h->lp.c;
    sb_broker_unsubscribe(&h->lp.sub);
    c->ops = h->saved_ops;
    c->proto = h->saved_proto;
    SB_STAT_ADD(c->loop, longpolls, -1);
    if (!(c->flags & SB_CONN_CLOSING)) {
        reply_history(c, sb_str(h->lp.channel, h->lp.chlen), h->lp.since, h->lp.limit);
        (void)timed_out;
        sb_http_async_end(c);
    }
    free(h);
}

static void lp_deliver(sb_sub_t *s, sb_msg_t *m)
{
    lp_hold_t *h = s->sink;
    lp_finish(h, false);
}

static void lp_reset(sb_sub_t *s, const char *reason) { lp_finish(s->sink, false); }

static const sb_sink_ops_t lp_sink = {.deliver = lp_deliver, .reset = lp_reset};

static ssize_t lp_on_data(sb_conn_t *c, char *buf, size_t len) { return 0; /* pipelined: later */ }

static void lp_on_tick(sb_conn_t *c, int64_t now)
{
    lp_hold_t *h = (lp_hold_t *)c->proto;
    if (now >= h->lp.deadline_ms) lp_finish(h, true);
}

static void lp_on_close(sb_conn_t *c)
{
    lp_hold_t *h = (lp_hold_t *)c->proto;
    sb_broker_unsubscribe(&h->lp.sub);
    SB_STAT_ADD(c->loop, longpolls, -1);
    c->ops = h->saved_ops;
    c->proto = h->saved_proto;
    free(h);
    if (c->ops && c->ops->on_close) c->ops->on_close(c);
}

static int handle_history(sb_conn_t *c, sb_http_ctx_t *x, const char *channel, size_t chlen)
{
    sb_http_req_t *req = x->req;
    char v[64];
    sb_since_t since = {0};
    int n = sb_http_query_get(req->query, "since", v, sizeof v);
    if (n == -2 || (n >= 0 && !sb_cursor_decode(sb_str(v, (size_t)n), &since))) {
        sb_http_error(c, SB_ERR_INVALID_CURSOR);
        return SB_HTTP_DONE;
    }
    uint64_t limit = 100, wait = 0;
    n = sb_http_query_get(req->query, "limit", v, sizeof v);
    if (n == -2 || (n >= 0 && (!sb_str_to_u64(sb_str(v, (size_t)n), &limit) || limit < 1 ||
                               limit > MAX_HISTORY_PAGE))) {
        sb_http_error_msg(c, SB_ERR_INVALID_PARAM, "limit must be 1-1000.");
        return SB_HTTP_DONE;
    }
    n = sb_http_query_get(req->query, "wait", v, sizeof v);
    if (n == -2 || (n >= 0 && (!sb_str_to_u64(sb_str(v, (size_t)n), &wait) ||
                               wait > (uint64_t)sb_cfg.max_wait_s))) {
        char msg[64];
        snprintf(msg, sizeof msg, "wait must be 0-%lld seconds.", (long long)sb_cfg.max_wait_s);
        sb_http_error_msg(c, SB_ERR_INVALID_PARAM, msg);
        return SB_HTTP_DONE;
    }
    sb_str_t ch = sb_str(channel, chlen);
    if (wait > 0) {
        /* Long-poll: answer now if there is something after `since`, else wait
         * for the next message on the channel. */
        sb_msg_t *probe[1];
        bool reset;
        uint64_t next;
        size_t have = sb_broker_history(ch, since, 1, probe, &reset, &next);
        if (have) sb_msg_unref(probe[0]);
        if (!have && !reset) {
            lp_hold_t *h = calloc(1, sizeof *h);
            if (!h) {
                sb_http_error(c, SB_ERR_INTERNAL);
                return SB_HTTP_DONE;
            }
            h->lp.c = c;
            h->lp.limit = (size_t)limit;
            h->lp.deadline_ms = c->loop->now_ms + (int64_t)wait * 1000;
            memcpy(h->lp.channel, channel, chlen + 1);
            h->lp.chlen = chlen;
            h->lp.sub.ops = &lp_sink;
            h->lp.sub.sink = h;
            /* Without since, wait for what comes after now. */
            h->lp.since = since.set ? since : (sb_since_t){true, next};
            sb_err_t why;
            sb_sub_t *subs[1] = {&h->lp.sub};
            sb_since_t live = {0};
            sb_http_async_begin(c);
            /* lp_on_data leaves input unread: stop reading at once, as before
             * (a long-poll is not a per-request cost worth saving). */
            sb_conn_pause(c);
            if (sb_broker_subscribe(c->loop, subs, &ch, 1, live, &why) < 0) {
                free(h);
                sb_http_async_end(c);
                sb_http_error(c, why);
                return SB_HTTP_DONE;
            }
            /* Live subscription starts after the current last id; a message
             * between the probe and now would be missed, so check again. */
            have = sb_broker_history(ch, h->lp.since, 1, probe, &reset, &next);
            if (have) sb_msg_unref(probe[0]);
            h->saved_ops = c->ops;
            h->saved_proto = c->proto;
            c->ops = &lp_ops;
            c->proto = h;
            SB_STAT_ADD(c->loop, longpolls, 1);
            if (have || reset) lp_finish(h, false);
            return SB_HTTP_ASYNC;
        }
    }
    reply_history(c, ch, since, (size_t)limit);
    return SB_HTTP_DONE;
}

/* Presence count of a channel, filled in by the presence layer when present. */
int64_t (*sb_api_presence_count)(sb_str_t channel);

static int handle_info(sb_conn_t *c, const char *channel, size_t chlen)
{
    sb_chan_info_t info;
    sb_broker_channel_info(sb_str(channel, chlen), &info);
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"channel\":");
    sb_buf_json_str(&b, channel, chlen);
    sb_buf_puts(&b, ",\"last\":");
    if (info.last) {
        sb_frame_t *f = sb_msg_frame(info.last, SB_FMT_JSON);
        if (f) sb_buf_put(&b, f->data, f->len);
        sb_msg_unref(info.last);
    } else {
        sb_buf_puts(&b, "null");
    }
    int64_t pres = sb_api_presence_count ? sb_api_presence_count(sb_str(channel, chlen)) : 0;
    sb_buf_printf(&b, ",\"subscribers\":%lld,\"presence\":%lld,\"history\":%lld}",
                  (long long)info.subscribers, (long long)pres, (long long)info.history);
    sb_http_respond(c, 200, "application/json", b.p, b.len, "Cache-Control: no-store\r\n");
    sb_buf_free(&b);
    return SB_HTTP_DONE;
}

/* Other layers serve sub-resources of a channel (presence). */
sb_http_handler_t sb_api_presence_handler;

static int handle_channels(sb_conn_t *c, sb_http_ctx_t *x)
{
    char channel[132];
    sb_str_t rest;
    int chlen = channel_from_path(x->tail, channel, sizeof channel, &rest);
    if (chlen < 0) {
        sb_http_error(c, SB_ERR_INVALID_CHANNEL);
        return SB_HTTP_DONE;
    }
    sb_http_method_t m = x->req->method;
    if (rest.len == 0) {
        if (m != SB_HTTP_GET && m != SB_HTTP_HEAD) goto not_allowed;
        return handle_info(c, channel, (size_t)chlen);
    }
    if (sb_str_eq(rest, "/messages")) {
        if (m == SB_HTTP_POST) return handle_publish(c, x, channel, (size_t)chlen);
        if (m == SB_HTTP_GET || m == SB_HTTP_HEAD) return handle_history(c, x, channel, (size_t)chlen);
        goto not_allowed;
    }
    if (sb_str_eq(rest, "/presence") && sb_api_presence_handler) {
        if (m != SB_HTTP_GET && m != SB_HTTP_HEAD) goto not_allowed;
        x->tail = sb_str(channel, (size_t)chlen);
        return sb_api_presence_handler(c, x);
    }
    sb_http_error(c, SB_ERR_NOT_FOUND);
    return SB_HTTP_DONE;
not_allowed:
    sb_http_error(c, SB_ERR_METHOD_NOT_ALLOWED);
    return SB_HTTP_DONE;
}

static int handle_health(sb_conn_t *c, sb_http_ctx_t *x)
{
    if (atomic_load(&sb_net.draining)) {
        sb_http_error(c, SB_ERR_SHUTTING_DOWN);
        return SB_HTTP_DONE;
    }
    sb_http_respond(c, 200, "text/plain", "ok", 2, "Cache-Control: no-store\r\n");
    return SB_HTTP_DONE;
}

static int handle_api_metrics(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_buf_t b = {0};
    sb_metrics_json(&b);
    sb_http_respond(c, 200, "application/json", b.p, b.len, "Cache-Control: no-store\r\n");
    sb_buf_free(&b);
    return SB_HTTP_DONE;
}

static int handle_prom(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_buf_t b = {0};
    sb_metrics_prometheus(&b);
    sb_http_respond(c, 200, "text/plain; version=0.0.4", b.p, b.len, "Cache-Control: no-store\r\n");
    sb_buf_free(&b);
    return SB_HTTP_DONE;
}

void sb_http_api_init(void)
{
    sb_limits_init();
    unsigned get = SB_M(SB_HTTP_GET);
    sb_http_route("/v1/channels/", get | SB_M(SB_HTTP_POST), handle_channels);
    sb_http_route("/healthz", get, handle_health);
    sb_http_route("/api/metrics", get, handle_api_metrics);
    sb_http_route("/metrics", get, handle_prom);
}
