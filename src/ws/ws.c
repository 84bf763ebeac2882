#define _GNU_SOURCE
#include "ws/ws.h"

#include <stdio.h>
#include <stdlib.h>

#include "auth/auth.h"
#include "auth/limits.h"
#include "config/config.h"
#include "ws/frame.h"

enum { WS_JSON = 0, WS_ROOM = 1 };

typedef struct {
    sb_sub_t sub;
    uint16_t name_len;
    char name[]; /* name_len bytes and a NUL, allocated to fit */
} ws_sub_t;

/* A subscription record sized to its channel name: idle connections are
 * counted in the tens of thousands, so nothing is reserved for a longest name. */
static ws_sub_t *sub_new(sb_str_t name)
{
    ws_sub_t *w = calloc(1, sizeof *w + name.len + 1);
    if (!w) return NULL;
    memcpy(w->name, name.p, name.len);
    w->name_len = (uint16_t)name.len;
    return w;
}

struct sb_ws {
    sb_conn_t *c;
    uint8_t kind;
    bool echo;
    bool deflate_rx;      /* the client may send compressed messages */
    bool deflate_tx;      /* we send the shared compressed format */
    bool close_sent;
    bool in_msg;          /* a fragmented message is being assembled */
    bool msg_compressed;
    uint8_t msg_op;
    sb_utf8_stream_t utf8;
    sb_buf_t msg;         /* fragments of the current message */
    sb_ws_inflater_t *inf; /* only when permessage-deflate was negotiated */
    int64_t last_rx_ms;
    int64_t ping_sent_ms;
    int64_t hold_until; /* over --publish-rate: nothing more is read until then */
    /* JSON protocol */
    ws_sub_t **subs;
    uint32_t nsubs, cap;
    void *presence;
    /* raw room */
    ws_sub_t *room;
    /* Heap strings, NULL while unset: most connections have none of them. */
    char *room_user; /* the seed's presence user id, for the leave message */
    bool room_user_is_num;
    char *user;      /* the token's sub */
    char *info;      /* the token's info claim, compact JSON */
    sb_token_t *tok; /* claims kept for per-op checks when --jwt-secret is set */
};

static sb_ws_hooks_t hooks;
static struct {
    char name[32];
    sb_ws_op_fn fn;
} ext_ops[8];
static int next_ops;

void sb_ws_set_hooks(const sb_ws_hooks_t *h) { hooks = *h; }
void sb_ws_register_op(const char *op, sb_ws_op_fn fn)
{
    if (next_ops < 8) {
        snprintf(ext_ops[next_ops].name, sizeof ext_ops[0].name, "%s", op);
        ext_ops[next_ops++].fn = fn;
    }
}
sb_conn_t *sb_ws_conn(sb_ws_t *ws) { return ws->c; }
const char *sb_ws_user(const sb_ws_t *ws) { return ws->user ? ws->user : ""; }
const char *sb_ws_info(const sb_ws_t *ws) { return ws->info ? ws->info : ""; }
void **sb_ws_presence_slot(sb_ws_t *ws) { return &ws->presence; }

/* ---- tokens ---- */
static void token_keep(sb_ws_t *ws, const sb_http_req_t *req)
{
    char buf[8200];
    sb_str_t tok = {0};
    int n = sb_http_query_get(req->query, "token", buf, sizeof buf);
    if (n >= 0) tok = sb_str(buf, (size_t)n);
    else {
        sb_str_t a = sb_http_header(req, "authorization");
        if (a.p && a.len > 7 && sb_str_ieq(sb_str(a.p, 7), "bearer ")) tok = sb_str(a.p + 7, a.len - 7);
    }
    sb_err_t why;
    sb_token_t t;
    if (tok.len && sb_auth_jwt_verify(tok, (const uint8_t *)sb_cfg.jwt_secret, strlen(sb_cfg.jwt_secret),
                                      sb_now_ms() / 1000, &t, &why) == 0) {
        ws->tok = malloc(sizeof *ws->tok);
        if (ws->tok) *ws->tok = t;
        else sb_token_free(&t);
    }
}

/* With --jwt-secret every op is checked against the token's patterns (the
 * upgrade already refused connections without a valid token). */
static bool token_allows(sb_ws_t *ws, sb_str_t channel, bool publish)
{
    if (!sb_cfg.jwt_secret[0]) return true;
    if (!ws->tok) return false;
    if (ws->tok->exp && ws->tok->exp <= sb_now_ms() / 1000) return false;
    return publish ? sb_auth_can_publish(ws->tok, channel) : sb_auth_can_subscribe(ws->tok, channel);
}

bool sb_ws_may_subscribe(sb_ws_t *ws, sb_str_t channel) { return token_allows(ws, channel, false); }

/* ---- sending ---- */
void sb_ws_send_frame(sb_ws_t *ws, sb_frame_t *f)
{
    if (ws->close_sent) {
        sb_frame_unref(f);
        return;
    }
    sb_conn_send(ws->c, f, NULL);
}

void sb_ws_send_text(sb_ws_t *ws, const char *json, size_t len)
{
    sb_ws_send_frame(ws, sb_ws_frame_build(SB_WS_OP_TEXT, false, json, len));
}

sb_frame_t *sb_ws_text_frame(const char *p, size_t len)
{
    return sb_ws_frame_build(SB_WS_OP_TEXT, false, p, len);
}

void sb_ws_ping(sb_ws_t *ws) { sb_ws_send_frame(ws, sb_ws_frame_build(SB_WS_OP_PING, false, "sb", 2)); }

static void append_ref(sb_buf_t *b, const cJSON *ref)
{
    if (!ref) return;
    char *r = cJSON_PrintUnformatted(ref);
    if (r) {
        sb_buf_printf(b, ",\"ref\":%s", r);
        free(r);
    }
}

void sb_ws_reply_ok(sb_ws_t *ws, const cJSON *ref, const char *extra)
{
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"op\":\"ok\"");
    append_ref(&b, ref);
    if (extra) sb_buf_puts(&b, extra);
    sb_buf_puts(&b, "}");
    sb_ws_send_text(ws, b.p, b.len);
    sb_buf_free(&b);
}

void sb_ws_reply_error(sb_ws_t *ws, const cJSON *ref, sb_err_t err, const char *message)
{
    const sb_err_info_t *e = sb_err_info(err);
    sb_limits_count_error(err);
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"op\":\"error\"");
    append_ref(&b, ref);
    sb_buf_printf(&b, ",\"code\":\"%s\",\"message\":", e->code);
    const char *m = message ? message : e->message;
    sb_buf_json_str(&b, m, strlen(m));
    sb_buf_puts(&b, "}");
    sb_ws_send_text(ws, b.p, b.len);
    sb_buf_free(&b);
}

/* Closing handshake: send our close frame, then end once it is written. */
static void ws_close(sb_ws_t *ws, uint16_t code, const char *reason)
{
    if (ws->close_sent) return;
    sb_conn_send(ws->c, sb_ws_close_frame(code, reason), NULL);
    ws->close_sent = true;
    sb_conn_end(ws->c);
}

/* A reader past its output limit: what is queued and unsent is dropped so the
 * 1013 close gets through, and the client resumes from history. */
static void ws_fail_slow(sb_ws_t *ws, sb_chan_t *ch)
{
    sb_conn_t *c = ws->c;
    SB_STAT_ADD(c->loop, slow_disconnects, 1);
    if (ch) sb_chan_count_slow(ch, SB_SLOW_DISCONNECT);
    sb_log_ratelimited(SB_LOG_WARN, 1000, "slow websocket reader closed", "conn=%llu peer=%s queued=%zu",
                       (unsigned long long)c->id, c->peer, c->out_bytes);
    sb_conn_discard_unsent(c);
    ws_close(ws, 1013, "slow consumer");
}

/* ---- formats ---- */
static sb_frame_t *fmt_ws(const sb_msg_t *m)
{
    sb_buf_t b = {0};
    sb_buf_put(&b, "\0\0\0\0\0\0\0\0\0\0", 10); /* room for the frame header */
    char id[24];
    size_t nl;
    const char *name = sb_chan_name(m->chan, &nl);
    sb_cursor_encode(m->seq, id);
    sb_buf_puts(&b, "{\"op\":\"message\",\"channel\":");
    sb_buf_json_str(&b, name, nl);
    sb_buf_printf(&b, ",\"id\":\"%s\",\"event\":", id);
    sb_buf_json_str(&b, m->event, m->event_len);
    sb_buf_puts(&b, ",\"data\":");
    sb_msg_data_json(m, &b);
    sb_buf_printf(&b, ",\"time\":%lld}", (long long)m->time_ms);
    if (b.oom) {
        sb_buf_free(&b);
        return NULL;
    }
    uint8_t hdr[10];
    size_t plen = b.len - 10, hl = sb_ws_frame_header(hdr, SB_WS_OP_TEXT, true, false, plen);
    sb_frame_t *f = sb_frame_new(hl + plen);
    if (f) {
        memcpy(f->data, hdr, hl);
        memcpy(f->data + hl, b.p + 10, plen);
    }
    sb_buf_free(&b);
    return f;
}

#define DEFLATE_MIN 256 /* smaller messages do not shrink enough to pay for it */

static sb_frame_t *fmt_ws_deflate(const sb_msg_t *mc)
{
    sb_msg_t *m = (sb_msg_t *)mc;
    sb_frame_t *plain = sb_msg_frame(m, SB_FMT_WS);
    if (!plain) return NULL;
    size_t hl = (plain->len - 2 < 126) ? 2 : (plain->len - 4 < 65536 ? 4 : 10);
    size_t plen = plain->len - hl;
    if (plen < DEFLATE_MIN) return sb_frame_ref(plain);
    uint8_t *z;
    size_t zlen;
    if (sb_ws_deflate_message((const uint8_t *)plain->data + hl, plen, 15, &z, &zlen) < 0 || zlen >= plen) {
        if (zlen >= plen) free(z);
        return sb_frame_ref(plain);
    }
    sb_frame_t *f = sb_ws_frame_build(SB_WS_OP_TEXT, true, z, zlen);
    free(z);
    return f;
}

static sb_frame_t *fmt_ws_raw(const sb_msg_t *m)
{
    return sb_ws_frame_build((m->flags & SB_MSG_BINARY) ? SB_WS_OP_BINARY : SB_WS_OP_TEXT, false,
                             m->data, m->data_len);
}

/* ---- subscriptions ---- */
static void json_deliver(sb_sub_t *s, sb_msg_t *m)
{
    sb_ws_t *ws = s->sink;
    if (!ws->echo && m->origin == ws->c->id) return;
    if (ws->close_sent) return;
    sb_frame_t *f = sb_msg_frame(m, ws->deflate_tx ? SB_FMT_WS_DEFLATE : SB_FMT_WS);
    if (!f) return;
    if (s->policy == SB_SLOW_DISCONNECT && ws->c->out_bytes + f->len > (size_t)sb_cfg.max_output) {
        ws_fail_slow(ws, s->chan);
        return;
    }
    sb_sub_send(ws->c, s, f);
}

static void json_reset(sb_sub_t *s, const char *reason)
{
    sb_ws_t *ws = s->sink;
    ws_sub_t *w = (ws_sub_t *)s;
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"op\":\"reset\",\"channel\":");
    sb_buf_json_str(&b, w->name, w->name_len);
    sb_buf_printf(&b, ",\"reason\":\"%s\"}", reason);
    sb_ws_send_text(ws, b.p, b.len);
    sb_buf_free(&b);
}

static const sb_sink_ops_t json_sink = {.deliver = json_deliver, .reset = json_reset};

static void room_deliver(sb_sub_t *s, sb_msg_t *m)
{
    sb_ws_t *ws = s->sink;
    if (m->origin == ws->c->id || ws->close_sent) return; /* never back to the sender */
    sb_frame_t *f = sb_msg_frame(m, (m->flags & SB_MSG_RAW) ? SB_FMT_WS_RAW : SB_FMT_WS);
    if (!f) return;
    if (s->policy == SB_SLOW_DISCONNECT && ws->c->out_bytes + f->len > (size_t)sb_cfg.max_output) {
        ws_fail_slow(ws, s->chan);
        return;
    }
    sb_sub_send(ws->c, s, f);
}

static void room_reset(sb_sub_t *s, const char *reason) {}

static const sb_sink_ops_t room_sink = {.deliver = room_deliver, .reset = room_reset};

static ws_sub_t *find_sub(sb_ws_t *ws, sb_str_t name, uint32_t *idx)
{
    for (uint32_t i = 0; i < ws->nsubs; i++)
        if (ws->subs[i]->name_len == name.len && !memcmp(ws->subs[i]->name, name.p, name.len)) {
            if (idx) *idx = i;
            return ws->subs[i];
        }
    return NULL;
}

/* ---- JSON ops ---- */
static bool channel_of(const cJSON *msg, sb_str_t *out)
{
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(msg, "channel");
    if (!cJSON_IsString(ch)) return false;
    *out = sb_str(ch->valuestring, strlen(ch->valuestring));
    return sb_valid_channel(*out);
}

static void op_subscribe(sb_ws_t *ws, const cJSON *msg, const cJSON *ref)
{
    sb_str_t name;
    if (!channel_of(msg, &name)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_CHANNEL, NULL);
        return;
    }
    sb_since_t since = {0};
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(msg, "since");
    if (js && !cJSON_IsNull(js)) {
        char buf[32];
        if (cJSON_IsString(js)) snprintf(buf, sizeof buf, "%s", js->valuestring);
        else if (cJSON_IsNumber(js) && js->valuedouble >= 0 && js->valuedouble < 9e15)
            snprintf(buf, sizeof buf, "%.0f", js->valuedouble);
        else buf[0] = 'x', buf[1] = 0;
        if (!sb_cursor_decode(sb_str(buf, strlen(buf)), &since)) {
            sb_ws_reply_error(ws, ref, SB_ERR_INVALID_CURSOR, NULL);
            return;
        }
    }
    if (find_sub(ws, name, NULL)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_PARAM, "Already subscribed to this channel.");
        return;
    }
    if ((int64_t)ws->nsubs >= sb_cfg.max_subscriptions) {
        sb_ws_reply_error(ws, ref, SB_ERR_TOO_MANY_SUBS, NULL);
        return;
    }
    if (!token_allows(ws, name, false)) {
        sb_ws_reply_error(ws, ref, SB_ERR_FORBIDDEN, NULL);
        return;
    }
    if (ws->nsubs == ws->cap) {
        uint32_t cap = ws->cap ? ws->cap * 2 : 4;
        ws_sub_t **n = realloc(ws->subs, cap * sizeof *n);
        if (!n) {
            sb_ws_reply_error(ws, ref, SB_ERR_INTERNAL, NULL);
            return;
        }
        ws->subs = n;
        ws->cap = cap;
    }
    ws_sub_t *w = sub_new(name);
    if (!w) {
        sb_ws_reply_error(ws, ref, SB_ERR_INTERNAL, NULL);
        return;
    }
    w->sub.ops = &json_sink;
    w->sub.sink = ws;
    /* Live-only subscriptions start from the current last id, reported as
     * "last": the client resumes from it if nothing arrives before a drop. */
    if (!since.set) {
        sb_broker_stats_t bs;
        sb_broker_stats(&bs);
        since = (sb_since_t){true, bs.last_seq};
    }
    char cur[24];
    sb_cursor_encode(since.seq, cur);
    /* The ok goes out before the backlog, so the client knows the
     * subscription is live when the first replayed message arrives. */
    sb_buf_t b = {0};
    sb_buf_puts(&b, ",\"channel\":");
    sb_buf_json_str(&b, name.p, name.len);
    sb_buf_printf(&b, ",\"last\":\"%s\"", cur);
    sb_ws_reply_ok(ws, ref, b.p);
    sb_buf_free(&b);
    sb_sub_t *subs[1] = {&w->sub};
    sb_str_t names[1] = {sb_str(w->name, w->name_len)};
    sb_err_t why;
    ws->subs[ws->nsubs++] = w;
    if (sb_broker_subscribe(ws->c->loop, subs, names, 1, since, &why) < 0) {
        ws->nsubs--;
        free(w);
        sb_ws_reply_error(ws, ref, why, NULL);
        return;
    }
    if (hooks.subscribed) hooks.subscribed(ws, names[0], msg);
}

static void remove_sub(sb_ws_t *ws, uint32_t i)
{
    ws_sub_t *w = ws->subs[i];
    if (hooks.unsubscribed) hooks.unsubscribed(ws, sb_str(w->name, w->name_len));
    sb_broker_unsubscribe(&w->sub);
    ws->subs[i] = ws->subs[--ws->nsubs];
    free(w);
}

static void op_unsubscribe(sb_ws_t *ws, const cJSON *msg, const cJSON *ref)
{
    sb_str_t name;
    uint32_t i;
    if (!channel_of(msg, &name)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_CHANNEL, NULL);
        return;
    }
    if (find_sub(ws, name, &i)) remove_sub(ws, i);
    sb_ws_reply_ok(ws, ref, NULL);
}

typedef struct {
    sb_conn_t *c;
    cJSON *ref;
} ws_pub_t;

static void ws_published(void *ud, int status, uint64_t seq)
{
    ws_pub_t *p = ud;
    sb_conn_t *c = p->c;
    if (sb_conn_release(c) && c->proto) {
        sb_ws_t *ws = c->proto;
        if (status == 0) {
            char extra[48], id[24];
            sb_cursor_encode(seq, id);
            snprintf(extra, sizeof extra, ",\"id\":\"%s\"", id);
            sb_ws_reply_ok(ws, p->ref, extra);
        } else {
            sb_ws_reply_error(ws, p->ref, sb_publish_error(status), NULL);
        }
    }
    cJSON_Delete(p->ref);
    free(p);
}

/* --publish-rate, from the connection's bucket in auth/limits (the one HTTP
 * publishes use). Over the rate nothing more is read from the connection until
 * a token is there, as over HTTP after a 429, so a client sending publishes
 * back to back is slowed by TCP instead of costing a parse and an error each.
 * `pace`: a raw room has no error channel, so it stops reading as soon as the
 * bucket is empty instead of refusing a frame: no frame is ever dropped. */
static bool rate_ok(sb_ws_t *ws, bool pace)
{
    int64_t wait;
    bool ok = sb_limits_publish_take(ws->c, &wait);
    if ((!ok || pace) && wait > 0) ws->hold_until = ws->c->loop->now_ms + wait;
    return ok;
}

static void op_publish(sb_ws_t *ws, const cJSON *msg, const cJSON *ref)
{
    sb_str_t name;
    if (!channel_of(msg, &name)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_CHANNEL, NULL);
        return;
    }
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(msg, "event");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(msg, "data");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(msg, "key");
    if (ev && !(cJSON_IsString(ev) && sb_valid_event(sb_str(ev->valuestring, strlen(ev->valuestring))))) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_EVENT, NULL);
        return;
    }
    if (key && !(cJSON_IsString(key) && strlen(key->valuestring) >= 1 && strlen(key->valuestring) <= 256)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_PARAM, "key must be a string of 1-256 characters.");
        return;
    }
    if (!token_allows(ws, name, true)) {
        sb_ws_reply_error(ws, ref, SB_ERR_FORBIDDEN, NULL);
        return;
    }
    if (!rate_ok(ws, false)) {
        sb_ws_reply_error(ws, ref, SB_ERR_RATE_LIMITED, NULL);
        return;
    }
    char *text = data ? cJSON_PrintUnformatted(data) : NULL;
    sb_pub_t p = {.channel = name, .origin = ws->c->id};
    p.data = text ? sb_str(text, strlen(text)) : SB_STR("null");
    p.data_is_string = data && cJSON_IsString(data);
    if (ev) p.event = sb_str(ev->valuestring, strlen(ev->valuestring));
    if (key) p.idem_key = sb_str(key->valuestring, strlen(key->valuestring));
    ws_pub_t *pc = malloc(sizeof *pc);
    uint64_t seq = 0;
    sb_err_t why = SB_ERR_INTERNAL;
    int r = -1;
    if (pc) {
        *pc = (ws_pub_t){ws->c, ref ? cJSON_Duplicate(ref, true) : NULL};
        SB_STAT_ADD(ws->c->loop, messages_in, 1);
        r = sb_broker_publish(&p, &seq, &why, ws_published, pc);
    }
    free(text);
    if (r == 0) {
        sb_conn_hold(ws->c); /* acknowledged once durable: ws_published releases */
        return;
    }
    if (pc) {
        cJSON_Delete(pc->ref);
        free(pc);
    }
    if (r < 0) {
        sb_ws_reply_error(ws, ref, why, NULL);
        return;
    }
    char extra[48], id[24];
    sb_cursor_encode(seq, id);
    snprintf(extra, sizeof extra, ",\"id\":\"%s\"", id);
    sb_ws_reply_ok(ws, ref, extra);
}

static void handle_json(sb_ws_t *ws, const char *p, size_t len)
{
    cJSON *msg = cJSON_ParseWithLength(p, len);
    if (!msg || !cJSON_IsObject(msg)) {
        cJSON_Delete(msg);
        sb_ws_reply_error(ws, NULL, SB_ERR_INVALID_JSON, "Each text frame must be one JSON object.");
        return;
    }
    const cJSON *op = cJSON_GetObjectItemCaseSensitive(msg, "op");
    const cJSON *ref = cJSON_GetObjectItemCaseSensitive(msg, "ref");
    if (ref && !cJSON_IsNumber(ref) && !cJSON_IsString(ref)) ref = NULL;
    if (!cJSON_IsString(op)) {
        sb_ws_reply_error(ws, ref, SB_ERR_UNKNOWN_OP, "Missing \"op\".");
    } else if (!strcmp(op->valuestring, "subscribe")) {
        op_subscribe(ws, msg, ref);
    } else if (!strcmp(op->valuestring, "unsubscribe")) {
        op_unsubscribe(ws, msg, ref);
    } else if (!strcmp(op->valuestring, "publish")) {
        op_publish(ws, msg, ref);
    } else if (!strcmp(op->valuestring, "ping")) {
        sb_buf_t b = {0};
        sb_buf_puts(&b, "{\"op\":\"pong\"");
        append_ref(&b, ref);
        sb_buf_puts(&b, "}");
        sb_ws_send_text(ws, b.p, b.len);
        sb_buf_free(&b);
    } else {
        int i = 0;
        while (i < next_ops && strcmp(ext_ops[i].name, op->valuestring)) i++;
        if (i < next_ops) ext_ops[i].fn(ws, msg, ref);
        else sb_ws_reply_error(ws, ref, SB_ERR_UNKNOWN_OP, NULL);
    }
    cJSON_Delete(msg);
}

/* ---- rooms ---- */
static void room_note_presence(sb_ws_t *ws, const char *p, size_t len)
{
    /* The seed's usePresence sends {"type":"presence","user":{"id":...}}; its
     * client also handles {"type":"leave","userId":...}, which its server never
     * sends. We remember the id once, cheaply, and say leave on disconnect. */
    if (ws->room_user || len < 16 || p[0] != '{' || !memmem(p, len, "\"presence\"", 10)) return;
    cJSON *j = cJSON_ParseWithLength(p, len);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
    const cJSON *user = cJSON_GetObjectItemCaseSensitive(j, "user");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(user, "id");
    if (cJSON_IsString(type) && !strcmp(type->valuestring, "presence")) {
        if (cJSON_IsString(id) && id->valuestring[0] && strlen(id->valuestring) <= 128) {
            ws->room_user = strdup(id->valuestring);
            ws->room_user_is_num = false;
        } else if (cJSON_IsNumber(id)) {
            char num[32];
            snprintf(num, sizeof num, "%.17g", id->valuedouble);
            ws->room_user = strdup(num);
            ws->room_user_is_num = true;
        }
    }
    cJSON_Delete(j);
}

static void room_publish(sb_ws_t *ws, const char *p, size_t len, bool binary)
{
    if (!rate_ok(ws, true)) return; /* over the rate: dropped, which pacing keeps from happening */
    sb_pub_t pub = {.channel = sb_str(ws->room->name, ws->room->name_len),
                    .data = sb_str(p, len),
                    .raw_flags = (uint8_t)(SB_MSG_RAW | (binary ? SB_MSG_BINARY : 0)),
                    .origin = ws->c->id};
    uint64_t seq;
    sb_err_t why;
    SB_STAT_ADD(ws->c->loop, messages_in, 1);
    if (sb_broker_publish(&pub, &seq, &why, NULL, NULL) < 0) {
        /* A room frame has no acknowledgement to carry the refusal (channel
         * limit, cluster unavailable): rather than drop it silently, close
         * with the error's code and code name, and the seeds' client
         * reconnects with its backoff. */
        const sb_err_info_t *e = sb_err_info(why);
        sb_log_ratelimited(SB_LOG_WARN, 1000, "room frame refused, member closed", "room=%.*s why=%s",
                           (int)ws->room->name_len, ws->room->name, e->code);
        ws_close(ws, (uint16_t)e->ws_close, e->code);
    }
}

/* ---- frames in ---- */
static void handle_message(sb_ws_t *ws, uint8_t op, const char *p, size_t len)
{
    if (ws->kind == WS_ROOM) {
        if (op == SB_WS_OP_TEXT) room_note_presence(ws, p, len);
        room_publish(ws, p, len, op == SB_WS_OP_BINARY);
        return;
    }
    if (op == SB_WS_OP_BINARY) {
        sb_ws_reply_error(ws, NULL, SB_ERR_INVALID_BODY, "The JSON protocol takes text frames only.");
        return;
    }
    handle_json(ws, p, len);
}

static void fail(sb_ws_t *ws, int code, const char *why)
{
    sb_debug("websocket protocol error", "conn=%llu code=%d why=\"%s\"", (unsigned long long)ws->c->id, code, why);
    ws_close(ws, (uint16_t)code, why);
}

static ssize_t ws_on_data(sb_conn_t *c, char *buf, size_t len)
{
    sb_ws_t *ws = c->proto;
    size_t off = 0;
    ws->last_rx_ms = c->loop->now_ms;
    if (hooks.alive) hooks.alive(ws);
    while (off < len && !ws->close_sent) {
        if (ws->hold_until > c->loop->now_ms) {
            sb_conn_pause(c); /* over --publish-rate: ws_on_tick resumes it */
            break;
        }
        sb_ws_frame_t f;
        int code = 0;
        int hl = sb_ws_frame_parse((const uint8_t *)buf + off, len - off, true, ws->deflate_rx,
                                   (uint64_t)sb_cfg.max_message, &f, &code);
        if (hl == SB_AGAIN) break;
        if (hl < 0) {
            fail(ws, code, code == 1009 ? "message too big" : "protocol error");
            return (ssize_t)len;
        }
        if (len - off - (size_t)hl < f.payload_len) break; /* wait for the whole frame */
        uint8_t *pl = (uint8_t *)buf + off + hl;
        size_t plen = (size_t)f.payload_len;
        sb_ws_unmask(pl, plen, f.mask, 0);
        off += (size_t)hl + plen;
        switch (f.opcode) {
        case SB_WS_OP_PING:
            sb_ws_send_frame(ws, sb_ws_frame_build(SB_WS_OP_PONG, false, pl, plen));
            continue;
        case SB_WS_OP_PONG:
            ws->ping_sent_ms = 0;
            continue;
        case SB_WS_OP_CLOSE: {
            uint16_t cc;
            if (!sb_ws_close_payload_valid(pl, plen, &cc)) {
                fail(ws, 1002, "invalid close frame");
                return (ssize_t)len;
            }
            /* Echo the code (RFC 6455 5.5.1), then close once it is written. */
            if (cc == 1005) ws_close(ws, 1000, "");
            else ws_close(ws, cc, "");
            return (ssize_t)len;
        }
        case SB_WS_OP_TEXT:
        case SB_WS_OP_BINARY:
            if (ws->in_msg) {
                fail(ws, 1002, "new message inside a fragmented one");
                return (ssize_t)len;
            }
            ws->msg_op = f.opcode;
            ws->msg_compressed = f.rsv1;
            ws->utf8 = (sb_utf8_stream_t){0};
            break;
        case SB_WS_OP_CONT:
            if (!ws->in_msg) {
                fail(ws, 1002, "continuation without a message");
                return (ssize_t)len;
            }
            break;
        }
        bool text = ws->msg_op == SB_WS_OP_TEXT;
        /* Validate text as it arrives so bad UTF-8 fails fast, even mid-message. */
        if (text && !ws->msg_compressed && !sb_utf8_stream_feed(&ws->utf8, pl, plen)) {
            fail(ws, 1007, "invalid UTF-8");
            return (ssize_t)len;
        }
        if (!f.fin || ws->in_msg) {
            if (ws->msg.len + plen > (size_t)sb_cfg.max_message) {
                fail(ws, 1009, "message too big");
                return (ssize_t)len;
            }
            sb_buf_put(&ws->msg, pl, plen);
            ws->in_msg = !f.fin;
            if (!f.fin) continue;
            pl = (uint8_t *)ws->msg.p;
            plen = ws->msg.len;
        }
        uint8_t *inflated = NULL;
        if (ws->msg_compressed) {
            size_t outlen;
            int r = sb_ws_inflate_message(ws->inf, pl, plen, (size_t)sb_cfg.max_message, &inflated, &outlen);
            if (r < 0) {
                fail(ws, r == SB_ELIMIT ? 1009 : 1007, r == SB_ELIMIT ? "message too big" : "bad compressed data");
                return (ssize_t)len;
            }
            pl = inflated;
            plen = outlen;
            if (text && !sb_utf8_valid(pl, plen)) {
                free(inflated);
                fail(ws, 1007, "invalid UTF-8");
                return (ssize_t)len;
            }
        } else if (text && !sb_utf8_stream_complete(&ws->utf8)) {
            fail(ws, 1007, "truncated UTF-8");
            return (ssize_t)len;
        }
        handle_message(ws, ws->msg_op, (const char *)pl, plen);
        free(inflated);
        ws->msg.len = 0;
        if (ws->msg.cap > 65536) sb_buf_free(&ws->msg);
        if (c->flags & SB_CONN_CLOSING) return -1;
    }
    return (ssize_t)off;
}

static void ws_on_tick(sb_conn_t *c, int64_t now)
{
    sb_ws_t *ws = c->proto;
    if (ws->close_sent) return;
    if (ws->hold_until && now >= ws->hold_until) {
        ws->hold_until = 0;
        ws->last_rx_ms = now; /* held by us, not silent */
        sb_conn_resume(c);
        if (c->in_len) sb_conn_reprocess(c);
    }
    if (now - ws->last_rx_ms >= 2 * sb_cfg.ws_ping_ms) {
        /* Nothing heard for two ping intervals: the peer is gone. */
        sb_conn_close(c);
        return;
    }
    if (now - ws->last_rx_ms >= sb_cfg.ws_ping_ms && !ws->ping_sent_ms) {
        ws->ping_sent_ms = now;
        sb_conn_send(c, sb_ws_frame_build(SB_WS_OP_PING, false, "sb", 2), NULL);
    }
}

static void ws_on_shutdown(sb_conn_t *c) { ws_close(c->proto, 1001, "server shutting down"); }

static void ws_on_close(sb_conn_t *c)
{
    sb_ws_t *ws = c->proto;
    if (hooks.closed) hooks.closed(ws);
    while (ws->nsubs) remove_sub(ws, ws->nsubs - 1);
    free(ws->subs);
    if (ws->room) {
        sb_broker_unsubscribe(&ws->room->sub);
        if (ws->room_user) {
            /* The id came from the client: escape it, it is put back into JSON. */
            sb_buf_t leave = {0};
            sb_buf_puts(&leave, "{\"type\":\"leave\",\"userId\":");
            if (ws->room_user_is_num) sb_buf_puts(&leave, ws->room_user);
            else sb_buf_json_str(&leave, ws->room_user, strlen(ws->room_user));
            sb_buf_puts(&leave, "}");
            sb_pub_t pub = {.channel = sb_str(ws->room->name, ws->room->name_len),
                            .data = sb_str(leave.p, leave.len), .raw_flags = SB_MSG_RAW, .origin = c->id};
            uint64_t seq;
            sb_err_t why;
            if (leave.p) sb_broker_publish(&pub, &seq, &why, NULL, NULL);
            sb_buf_free(&leave);
        }
        free(ws->room);
    }
    sb_buf_free(&ws->msg);
    if (ws->inf) {
        sb_ws_inflater_free(ws->inf);
        free(ws->inf);
    }
    free(ws->room_user);
    free(ws->user);
    free(ws->info);
    if (ws->tok) {
        sb_token_free(ws->tok);
        free(ws->tok);
    }
    SB_STAT_ADD(c->loop, ws_conns, -1);
    free(ws);
}

static const sb_conn_ops_t ws_ops = {.on_data = ws_on_data,
                                     .on_tick = ws_on_tick,
                                     .on_close = ws_on_close,
                                     .on_shutdown = ws_on_shutdown};

/* ---- the upgrade ---- */
static int handle_upgrade(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_http_req_t *req = x->req;
    sb_str_t up = sb_http_header(req, "upgrade");
    if (!up.p || !sb_http_has_token(up, "websocket")) {
        sb_http_error_msg(c, SB_ERR_BAD_REQUEST, "Only WebSocket upgrades are supported.");
        return SB_HTTP_DONE;
    }
    char room[132];
    int rn = sb_http_query_get(req->query, "room", room + 5, sizeof room - 5);
    bool is_json = sb_str_eq(req->path, "/v1/ws");
    if (!is_json && rn < 0) {
        sb_http_error(c, SB_ERR_NOT_FOUND);
        return SB_HTTP_DONE;
    }
    if (req->method != SB_HTTP_GET || req->minor != 1) {
        sb_http_error_msg(c, SB_ERR_BAD_REQUEST, "A WebSocket upgrade is a GET over HTTP/1.1.");
        return SB_HTTP_DONE;
    }
    sb_str_t ver = sb_http_header(req, "sec-websocket-version");
    if (!ver.p || !sb_str_eq(ver, "13")) {
        sb_http_error(c, SB_ERR_UPGRADE_REQUIRED);
        return SB_HTTP_DONE;
    }
    sb_str_t key = sb_http_header(req, "sec-websocket-key");
    if (!key.p || !sb_ws_key_valid(key)) {
        sb_http_error_msg(c, SB_ERR_BAD_REQUEST, "Sec-WebSocket-Key is missing or invalid.");
        return SB_HTTP_DONE;
    }
    if (!sb_http_origin_allowed(req)) {
        sb_http_error(c, SB_ERR_ORIGIN_FORBIDDEN);
        return SB_HTTP_DONE;
    }
    sb_str_t room_name = {0};
    if (!is_json) {
        if (rn < 0 || rn > 120) {
            sb_http_error(c, SB_ERR_INVALID_CHANNEL);
            return SB_HTTP_DONE;
        }
        memcpy(room, "room:", 5);
        room_name = sb_str(room, (size_t)rn + 5);
        if (!sb_valid_channel(room_name)) {
            sb_http_error_msg(c, SB_ERR_INVALID_CHANNEL, "Room names are 1-120 characters of A-Z a-z 0-9 _ - . : @.");
            return SB_HTTP_DONE;
        }
    }
    sb_err_t why;
    sb_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws) {
        sb_http_error(c, SB_ERR_INTERNAL);
        return SB_HTTP_DONE;
    }
    char user[128], info[512];
    if (!sb_http_authorize(req, is_json ? NULL : &room_name, is_json ? 0 : 1, &why, user, sizeof user,
                           info, sizeof info)) {
        free(ws);
        sb_http_error(c, why);
        return SB_HTTP_DONE;
    }
    if (user[0]) ws->user = strdup(user);
    if (info[0]) ws->info = strdup(info);
    if (sb_cfg.jwt_secret[0]) token_keep(ws, req);
    ws->c = c;
    ws->kind = is_json ? WS_JSON : WS_ROOM;
    ws->echo = true;
    char v[8];
    if (sb_http_query_get(req->query, "echo", v, sizeof v) >= 0 && !strcmp(v, "0")) ws->echo = false;
    ws->last_rx_ms = c->loop->now_ms;

    char accept[29], ext[160] = "";
    sb_ws_accept_key(key, accept);
    sb_str_t offer = sb_http_header(req, "sec-websocket-extensions");
    sb_ws_deflate_params_t dp = {0};
    if (offer.p && sb_ws_deflate_negotiate(offer, &dp, ext, sizeof ext) && dp.enabled) {
        ws->inf = calloc(1, sizeof *ws->inf);
        if (ws->inf && sb_ws_inflater_init(ws->inf, dp.client_max_window_bits, dp.client_no_context_takeover) == 0) {
            ws->deflate_rx = true;
            /* One compressed broadcast is shared by every receiver; that needs
             * our full window and no context, which the negotiation pins. */
            ws->deflate_tx = dp.server_no_context_takeover && dp.server_max_window_bits >= 15;
        } else {
            free(ws->inf);
            ws->inf = NULL;
            ext[0] = 0;
        }
    } else {
        ext[0] = 0;
    }
    sb_buf_t b = {0};
    sb_buf_printf(&b, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Accept: %s\r\n", accept);
    if (ext[0]) sb_buf_printf(&b, "Sec-WebSocket-Extensions: %s\r\n", ext);
    sb_buf_puts(&b, "\r\n");
    sb_conn_send(c, sb_buf_to_frame(&b), NULL);
    sb_buf_free(&b);
    sb_http_detach(c);
    c->ops = &ws_ops;
    c->proto = ws;
    c->deadline_ms = 0;
    SB_STAT_ADD(c->loop, ws_conns, 1);
    if (!is_json) {
        ws->room = sub_new(room_name);
        if (!ws->room) {
            sb_conn_close(c);
            return SB_HTTP_TAKEN;
        }
        ws->room->sub.ops = &room_sink;
        ws->room->sub.sink = ws;
        sb_sub_t *subs[1] = {&ws->room->sub};
        sb_str_t names[1] = {sb_str(ws->room->name, ws->room->name_len)};
        if (sb_broker_subscribe(c->loop, subs, names, 1, (sb_since_t){0}, &why) < 0) {
            free(ws->room);
            ws->room = NULL;
            ws_close(ws, 1013, "channel limit");
        }
    }
    return SB_HTTP_TAKEN;
}

sb_ws_t *sb_ws_attach(sb_conn_t *c, const char *room)
{
    sb_ws_t *ws = calloc(1, sizeof *ws);
    if (!ws) return NULL;
    ws->c = c;
    ws->kind = room ? WS_ROOM : WS_JSON;
    ws->echo = true;
    ws->last_rx_ms = c->loop->now_ms;
    c->ops = &ws_ops;
    c->proto = ws;
    SB_STAT_ADD(c->loop, ws_conns, 1);
    if (room) {
        size_t n = strlen(room);
        if (n > 128) return ws;
        ws->room = sub_new(sb_str(room, n));
        if (!ws->room) return ws;
        ws->room->sub.ops = &room_sink;
        ws->room->sub.sink = ws;
        sb_sub_t *subs[1] = {&ws->room->sub};
        sb_str_t names[1] = {sb_str(ws->room->name, n)};
        sb_err_t why;
        if (sb_broker_subscribe(c->loop, subs, names, 1, (sb_since_t){0}, &why) < 0) {
            free(ws->room);
            ws->room = NULL;
        }
    }
    return ws;
}

static int plain_get(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_http_error(c, SB_ERR_UPGRADE_REQUIRED);
    return SB_HTTP_DONE;
}

void sb_ws_init(void)
{
    sb_msg_register_format(SB_FMT_WS, fmt_ws);
    sb_msg_register_format(SB_FMT_WS_DEFLATE, fmt_ws_deflate);
    sb_msg_register_format(SB_FMT_WS_RAW, fmt_ws_raw);
    sb_http_set_upgrade_handler(handle_upgrade);
    sb_http_route("/v1/ws", SB_M(SB_HTTP_GET), plain_get);
}
