/* The AI chat endpoint (docs/ai.md "The relay", docs/protocol.md "AI streams").
 *
 * POST /v1/ai/chat starts an upstream call (or the demo generator) on the
 * request's loop and takes the connection over: every token is written to the
 * client at once in the chosen format and published to channel ai:{id}, which
 * is what other tabs, reloads and GET /v1/ai/chats/{chatId}/stream read. The
 * stream's history is compacted as it grows (sb_broker_compact_text), so a
 * long answer is a handful of stored messages and still resumes exactly from
 * any cursor.
 *
 * Threads: a relay lives on the loop of its POST and is touched only there.
 * The registry (stream id -> loop, chat id -> stream, per-user counts) is
 * shared by all loops under one mutex, taken once per request, never per token.
 * A stop request on another loop is posted to the stream's loop. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "ai/ai.h"
#include "auth/auth.h"
#include "channels/channels.h"
#include "config/config.h"
#include "http/http.h"

#define ID_HEX 24           /* a stream id: 96 random bits in hex */
#define CHAN_CAP (ID_HEX + 4)
#define MAX_CHAT_ID 100     /* chat ids: 1-100 characters of the channel alphabet */
#define MAX_MODEL 127
#define USER_CAP 130        /* a token's sub as kept here */
#define KEY_CAP 140         /* registry keys: ids, chat ids, "u:<sub>", "ip:<addr>" */
#define MAX_FINISHED 100000 /* finished streams remembered for resume and stop */
#define FOLD_MAX 64         /* compact a stream's history every this many deltas */
#define FOLD_RETRY_MS 100   /* a final compaction waiting for the durable store */
#define FOLD_GIVE_UP_MS 30000

/* ---- configuration (set once by sb_ai_relay_init) ---- */

static struct {
    bool enabled;              /* an upstream, or the demo generator */
    bool demo;                 /* the demo generator (no upstream configured) */
    bool cancel_on_disconnect; /* --ai-on-disconnect cancel */
    uint32_t fold_every;
    int64_t retention_ms;
    sb_ai_upstream_t up; /* url, key, model (the default), dialect, timeouts */
} R;

/* ---- the registry ---- */

typedef struct node {
    struct node *hnext;
    uint32_t hash;
    char key[KEY_CAP];
} node_t;

typedef struct {
    node_t **b;
    uint32_t nb, n;
} map_t;

struct relay;

typedef struct stream_rec {
    node_t n;                 /* key: the stream id */
    struct stream_rec *fnext; /* the list of finished streams, oldest first */
    sb_loop_t *loop;          /* where it runs */
    struct relay *relay;      /* while active; dereferenced only on `loop` */
    int64_t done_ms;          /* 0 while active */
    char owner[USER_CAP];     /* the token's sub; "" without auth */
    char chat[MAX_CHAT_ID + 1];
} stream_rec_t;

typedef struct {
    node_t n; /* key: the chat id */
    char stream[ID_HEX + 1];
} chat_rec_t;

typedef struct {
    node_t n; /* key: "u:<sub>" or "ip:<address>" */
    int64_t active;
} user_rec_t;

static struct {
    pthread_mutex_t mu;
    map_t streams, chats, users;
    stream_rec_t *ffirst, *flast;
    size_t nfinished;
    int64_t active;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

static node_t *map_get(map_t *m, const char *key)
{
    if (!m->nb) return NULL;
    uint32_t h = hash_str(key);
    for (node_t *n = m->b[h & (m->nb - 1)]; n; n = n->hnext)
        if (n->hash == h && !strcmp(n->key, key)) return n;
    return NULL;
}

/* Links n (its key set). Returns false without memory. */
static bool map_put(map_t *m, node_t *n)
{
    if (m->n >= m->nb) {
        uint32_t nb = m->nb ? m->nb * 2 : 256;
        node_t **b = calloc(nb, sizeof *b);
        if (!b) return false;
        for (uint32_t i = 0; i < m->nb; i++)
            for (node_t *x = m->b[i], *next; x; x = next) {
                next = x->hnext;
                x->hnext = b[x->hash & (nb - 1)];
                b[x->hash & (nb - 1)] = x;
            }
        free(m->b);
        m->b = b;
        m->nb = nb;
    }
    n->hash = hash_str(n->key);
    n->hnext = m->b[n->hash & (m->nb - 1)];
    m->b[n->hash & (m->nb - 1)] = n;
    m->n++;
    return true;
}

static void map_del(map_t *m, node_t *n)
{
    node_t **pp = &m->b[n->hash & (m->nb - 1)];
    while (*pp != n) pp = &(*pp)->hnext;
    *pp = n->hnext;
    m->n--;
}

/* Registry lock held: forgets finished streams past their retention. */
static void reg_expire(int64_t now)
{
    while (G.ffirst && (G.nfinished > MAX_FINISHED || now - G.ffirst->done_ms > R.retention_ms)) {
        stream_rec_t *s = G.ffirst;
        G.ffirst = s->fnext;
        if (!G.ffirst) G.flast = NULL;
        G.nfinished--;
        chat_rec_t *ch = s->chat[0] ? (chat_rec_t *)map_get(&G.chats, s->chat) : NULL;
        if (ch && !strcmp(ch->stream, s->n.key)) {
            map_del(&G.chats, &ch->n);
            free(ch);
        }
        map_del(&G.streams, &s->n);
        free(s);
    }
}

/* Takes one of the user's and the server's stream slots. Returns NULL, or the
 * message of the 429. */
static const char *reg_reserve(const char *ukey, char *msg, size_t cap)
{
    const char *refused = NULL;
    pthread_mutex_lock(&G.mu);
    user_rec_t *u = (user_rec_t *)map_get(&G.users, ukey);
    if (G.active >= sb_cfg.ai_max_streams) {
        snprintf(msg, cap, "The server runs as many AI streams as it allows (%lld); try again soon.",
                 (long long)sb_cfg.ai_max_streams);
        refused = msg;
    } else if (u && u->active >= sb_cfg.ai_max_streams_per_user) {
        snprintf(msg, cap, "This user already runs %lld AI streams, the most allowed at once.",
                 (long long)u->active);
        refused = msg;
    } else if (!u && (!(u = calloc(1, sizeof *u)) ||
                      (snprintf(u->n.key, sizeof u->n.key, "%s", ukey), !map_put(&G.users, &u->n)))) {
        free(u);
        snprintf(msg, cap, "The server is out of memory.");
        refused = msg;
    } else {
        u->active++;
        G.active++;
    }
    pthread_mutex_unlock(&G.mu);
    if (refused) sb_log_ratelimited(SB_LOG_WARN, 1000, "ai stream refused", "user=%s why=\"%s\"", ukey, msg);
    return refused;
}

/* Registry lock held: gives back a slot taken by reg_reserve. */
static void reg_release_locked(const char *ukey)
{
    user_rec_t *u = (user_rec_t *)map_get(&G.users, ukey);
    if (u && --u->active == 0) {
        map_del(&G.users, &u->n);
        free(u);
    }
    G.active--;
}

static void reg_release(const char *ukey)
{
    pthread_mutex_lock(&G.mu);
    reg_release_locked(ukey);
    pthread_mutex_unlock(&G.mu);
}

/* Records an active stream (and makes it its chat's stream). Returns false
 * without memory. */
static bool reg_add(const char *id, sb_loop_t *loop, struct relay *r, const char *owner, const char *chat)
{
    stream_rec_t *s = calloc(1, sizeof *s);
    if (!s) return false;
    snprintf(s->n.key, sizeof s->n.key, "%s", id);
    snprintf(s->owner, sizeof s->owner, "%s", owner);
    snprintf(s->chat, sizeof s->chat, "%s", chat);
    s->loop = loop;
    s->relay = r;
    pthread_mutex_lock(&G.mu);
    reg_expire(sb_now_ms());
    bool ok = map_put(&G.streams, &s->n);
    if (ok && chat[0]) {
        chat_rec_t *ch = (chat_rec_t *)map_get(&G.chats, chat);
        if (!ch && (ch = calloc(1, sizeof *ch))) {
            snprintf(ch->n.key, sizeof ch->n.key, "%s", chat);
            if (!map_put(&G.chats, &ch->n)) {
                free(ch);
                ch = NULL;
            }
        }
        /* Without memory the chat just cannot be resumed by its id. */
        if (ch) snprintf(ch->stream, sizeof ch->stream, "%s", id);
    }
    pthread_mutex_unlock(&G.mu);
    if (!ok) free(s);
    return ok;
}

/* The stream is over: it stays findable (resume, stop) for the retention,
 * and its slot is given back. */
static void reg_finish(const char *id, const char *ukey)
{
    int64_t now = sb_now_ms();
    pthread_mutex_lock(&G.mu);
    stream_rec_t *s = (stream_rec_t *)map_get(&G.streams, id);
    if (s && !s->done_ms) {
        s->relay = NULL;
        s->done_ms = now;
        if (G.flast) G.flast->fnext = s;
        else G.ffirst = s;
        G.flast = s;
        G.nfinished++;
    }
    reg_release_locked(ukey);
    reg_expire(now);
    pthread_mutex_unlock(&G.mu);
}

/* ---- writing a stream to a client ---- */

/* One client's response: its encoder and framing. Shared by the POST's own
 * response and by resume readers, as the first member of both (the
 * connection's proto points at it). */
typedef struct {
    sb_conn_t *c; /* NULL once the connection closed or went back to HTTP */
    sb_ai_enc_t enc;
    sb_ai_format_t fmt;
    sb_buf_t buf;    /* the encoded bytes of one step; reused */
    bool chunked;    /* HTTP/1.1: chunked framing, so an error can end the body abnormally */
    bool keep_alive; /* the connection may serve the client's next request */
    bool stray;      /* the client sent bytes during the stream (pipelining): close after */
    bool ended;      /* the response is complete: nothing more may be written */
    int64_t last_write_ms;
} writer_t;

/* Sends what w->buf holds as one frame (one chunk) and empties it. */
static void w_flush(writer_t *w)
{
    sb_buf_t *b = &w->buf;
    if (w->ended) {
        /* Past the end (a heartbeat while the last bytes drain): drop it. */
    } else if (w->c && b->oom) {
        /* Bytes of the answer are lost: the client must not take the rest as whole. */
        sb_conn_close(w->c);
    } else if (w->c && b->len) {
        char hdr[24];
        int hl = w->chunked ? snprintf(hdr, sizeof hdr, "%zx\r\n", b->len) : 0;
        size_t total = (size_t)hl + b->len + (w->chunked ? 2 : 0);
        sb_frame_t *f = sb_frame_new(total);
        if (!f) {
            sb_conn_close(w->c);
        } else {
            memcpy(f->data, hdr, (size_t)hl);
            memcpy(f->data + hl, b->p, b->len);
            if (w->chunked) memcpy(f->data + hl + b->len, "\r\n", 2);
            sb_conn_send(w->c, f, NULL);
            w->last_write_ms = w->c->loop->now_ms;
        }
    }
    b->len = 0;
    b->oom = false;
}

/* Ends the response: with its last chunk when clean, else without, so that a
 * reader of the bare text sees a broken body instead of a short answer (the
 * connection then closes). A clean end on a keep-alive connection hands it
 * back to HTTP for the client's next request (no new TCP or TLS handshake per
 * chat turn); returns true then, and w->c is NULL: the caller's state is no
 * longer the connection's proto and the caller frees it. */
static bool w_end(writer_t *w, bool clean)
{
    sb_conn_t *c = w->c;
    if (!c || w->ended) return false;
    w->ended = true;
    if (clean && w->chunked) sb_conn_send_copy(c, "0\r\n\r\n", 5);
    if (clean && w->keep_alive && !w->stray && !(c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING))) {
        sb_http_accept(c);
        w->c = NULL;
        return true;
    }
    sb_conn_end(c);
    return false;
}

static ssize_t w_on_data(sb_conn_t *c, char *buf, size_t len)
{
    writer_t *w = c->proto;
    /* A client that speaks during its stream pipelines: it gets a close at
     * the end, so its next request is never read from the middle. */
    if (len) w->stray = true;
    return (ssize_t)len;
}

/* SSE formats get a comment now and then so proxies keep an idle stream (a
 * slow first token) open; the bare text format cannot carry one. */
static void w_heartbeat(writer_t *w, int64_t now)
{
    if (!w->c || w->ended || w->fmt == SB_AI_FMT_TEXT || now - w->last_write_ms < sb_cfg.heartbeat_ms)
        return;
    sb_buf_puts(&w->buf, ": hb\n\n");
    w_flush(w);
}

/* Sends the response head and takes the connection over with ops/proto. */
static void w_begin(writer_t *w, sb_conn_t *c, const sb_http_req_t *req, const char *id,
                    const sb_conn_ops_t *ops, void *proto)
{
    const char *xh = sb_ai_extra_header(w->fmt);
    char extra[512];
    w->chunked = req->minor >= 1;
    w->keep_alive = w->chunked && req->keep_alive;
    snprintf(extra, sizeof extra,
             "X-Stream-Id: %s\r\nCache-Control: no-cache, no-transform\r\nX-Accel-Buffering: no\r\n"
             "X-Content-Type-Options: nosniff\r\n%s%s%sConnection: %s\r\n",
             id, xh ? xh : "", xh ? "\r\n" : "", w->chunked ? "Transfer-Encoding: chunked\r\n" : "",
             w->keep_alive ? "keep-alive" : "close");
    sb_http_stream_head(c, 200, sb_ai_content_type(w->fmt), extra);
    sb_http_detach(c);
    c->ops = ops;
    c->proto = proto;
    c->deadline_ms = 0;
    w->c = c;
    w->last_write_ms = c->loop->now_ms;
    char msg_id[ID_HEX + 8];
    snprintf(msg_id, sizeof msg_id, "msg-%s", id);
    sb_ai_enc_init(&w->enc, w->fmt, msg_id);
    /* The AI SDK's reader shows the answer's start at once. */
    if (w->fmt == SB_AI_FMT_AISDK) {
        sb_ai_enc_start(&w->enc, &w->buf);
        w_flush(w);
    }
}

/* ---- streams ---- */

typedef struct relay relay_t;

typedef struct {
    char chan[CHAN_CAP];
    uint64_t upto;
    int64_t give_up_ms;
} fold_t;

typedef struct {
    sb_loop_t *loop;
    sb_ai_engine_t *engine; /* or: */
    sb_ai_demo_t *demo;
    relay_t *relays;
    uv_timer_t timer; /* retries final compactions waiting for the durable store */
    fold_t *folds;
    size_t nfolds, capfolds;
} ai_loop_t;

/* One stream: its upstream call, its client (while connected), its channel. */
struct relay {
    writer_t w;    /* first: the connection's proto */
    ai_loop_t *ls; /* NULL once the loop stopped */
    relay_t *next, *prev;
    sb_ai_call_t *call;      /* the upstream call, until its final callback */
    sb_ai_demo_call_t *demo; /* or the demo's */
    sb_buf_t pub;            /* the data of one published event; reused */
    uint64_t last_delta;     /* id of the newest delta published */
    uint32_t unfolded;       /* deltas published since the last compaction */
    bool finished;           /* the final event was published */
    char id[ID_HEX + 1];
    char chan[CHAN_CAP];
    char ukey[KEY_CAP];
};

static void fold_timer_cb(uv_timer_t *t)
{
    ai_loop_t *ls = t->data;
    int64_t now = sb_now_ms();
    for (size_t i = 0; i < ls->nfolds;) {
        fold_t *f = &ls->folds[i];
        int rc = sb_broker_compact_text(sb_str(f->chan, strlen(f->chan)), SB_STR("delta"), f->upto);
        if (rc == SB_AGAIN && now < f->give_up_ms) {
            i++;
            continue;
        }
        ls->folds[i] = ls->folds[--ls->nfolds];
    }
    if (!ls->nfolds) uv_timer_stop(&ls->timer);
}

/* Compacts the stream's deltas so far. After the end, a compaction that has
 * to wait for the durable store is retried by the loop's timer. */
static void fold(relay_t *r)
{
    r->unfolded = 0;
    if (!r->last_delta) return;
    int rc = sb_broker_compact_text(sb_str(r->chan, strlen(r->chan)), SB_STR("delta"), r->last_delta);
    if (rc != SB_AGAIN || !r->finished || !r->ls) return;
    ai_loop_t *ls = r->ls;
    if (ls->nfolds == ls->capfolds) {
        size_t cap = ls->capfolds ? ls->capfolds * 2 : 16;
        fold_t *nf = realloc(ls->folds, cap * sizeof *nf);
        if (!nf) return; /* the history just stays uncompacted */
        ls->folds = nf;
        ls->capfolds = cap;
    }
    fold_t *f = &ls->folds[ls->nfolds++];
    snprintf(f->chan, sizeof f->chan, "%s", r->chan);
    f->upto = r->last_delta;
    f->give_up_ms = sb_now_ms() + FOLD_GIVE_UP_MS;
    if (!uv_is_active((uv_handle_t *)&ls->timer))
        uv_timer_start(&ls->timer, fold_timer_cb, FOLD_RETRY_MS, FOLD_RETRY_MS);
}

static uint64_t publish(relay_t *r, const char *event)
{
    sb_buf_t *b = &r->pub;
    if (b->oom) {
        b->len = 0;
        b->oom = false;
        return 0;
    }
    sb_pub_t p = {.channel = sb_str(r->chan, strlen(r->chan)),
                  .event = sb_str(event, strlen(event)),
                  .data = sb_str(b->p, b->len)};
    uint64_t seq = 0;
    sb_err_t why = SB_OK;
    int rc = sb_broker_publish(&p, &seq, &why, NULL, NULL);
    b->len = 0;
    if (rc < 0) {
        /* The client still gets its answer; only the channel misses it. */
        sb_log_ratelimited(SB_LOG_WARN, 1000, "ai stream not published", "stream=%s why=%s", r->id,
                           sb_err_info(why)->code);
        return 0;
    }
    return seq;
}

static void relay_free(relay_t *r)
{
    if (r->ls) {
        if (r->prev) r->prev->next = r->next;
        else r->ls->relays = r->next;
        if (r->next) r->next->prev = r->prev;
    }
    sb_buf_free(&r->w.buf);
    sb_buf_free(&r->pub);
    free(r);
}

/* A relay goes once its answer is over and its client is gone. */
static void relay_maybe_free(relay_t *r)
{
    if (r->finished && !r->w.c) relay_free(r);
}

enum { END_DONE, END_STOPPED, END_ERROR };

/* Ends the stream: the final event on the channel and to the client, the last
 * compaction, and the registry. For END_DONE `code` is the finish reason, for
 * END_STOPPED who stopped it ("request", "disconnect"). May free r. */
static void relay_finish(relay_t *r, int kind, int status, const char *code, const char *message)
{
    if (r->finished) return;
    r->finished = true;
    sb_buf_t *b = &r->pub;
    if (kind == END_DONE) {
        sb_buf_puts(b, "{\"reason\":\"complete\",\"finishReason\":");
        sb_buf_json_str(b, code, strlen(code));
    } else if (kind == END_STOPPED) {
        sb_buf_puts(b, "{\"reason\":\"stopped\",\"by\":");
        sb_buf_json_str(b, code, strlen(code));
    } else {
        sb_buf_printf(b, "{\"status\":%d,\"code\":", status);
        sb_buf_json_str(b, code, strlen(code));
        sb_buf_puts(b, ",\"message\":");
        sb_buf_json_str(b, message, strlen(message));
    }
    sb_buf_puts(b, "}");
    publish(r, kind == END_ERROR ? "error" : "done");
    if (r->w.c) {
        if (kind == END_ERROR) sb_ai_enc_error(&r->w.enc, code, message, &r->w.buf);
        else sb_ai_enc_done(&r->w.enc, kind == END_DONE ? code : "other", &r->w.buf);
        w_flush(&r->w);
        w_end(&r->w, !(kind == END_ERROR && r->w.fmt == SB_AI_FMT_TEXT));
    }
    fold(r);
    reg_finish(r->id, r->ukey);
    sb_debug("ai stream end", "stream=%s kind=%d status=%d code=%s", r->id, kind, status, code);
    relay_maybe_free(r);
}

/* Stops the generation now (DELETE, or a client gone with --ai-on-disconnect
 * cancel). May free r. */
static void relay_stop(relay_t *r, const char *by)
{
    if (r->finished) return;
    if (r->call) sb_ai_cancel(r->call);
    if (r->demo) sb_ai_demo_cancel(r->demo);
    r->call = NULL;
    r->demo = NULL;
    relay_finish(r, END_STOPPED, 0, by, NULL);
}

/* ---- upstream callbacks (on the relay's loop) ---- */

static void on_delta(void *ud, const char *text, size_t len)
{
    relay_t *r = ud;
    /* The client first: it is the one waiting. */
    if (r->w.c) {
        sb_ai_enc_delta(&r->w.enc, text, len, &r->w.buf);
        w_flush(&r->w);
    }
    sb_buf_puts(&r->pub, "{\"text\":");
    sb_buf_json_str(&r->pub, text, len);
    sb_buf_puts(&r->pub, "}");
    uint64_t seq = publish(r, "delta");
    if (!seq) return;
    r->last_delta = seq;
    if (++r->unfolded >= R.fold_every) fold(r);
}

static void on_done(void *ud, const char *finish_reason)
{
    relay_t *r = ud;
    r->call = NULL;
    r->demo = NULL;
    relay_finish(r, END_DONE, 0, finish_reason ? finish_reason : "unknown", NULL);
}

static void on_error(void *ud, int status, const char *code, const char *message)
{
    relay_t *r = ud;
    r->call = NULL;
    r->demo = NULL;
    relay_finish(r, END_ERROR, status, code, message);
}

static const sb_ai_cbs_t relay_cbs = {.on_delta = on_delta, .on_done = on_done, .on_error = on_error};

/* ---- the POST's connection ---- */

static void relay_on_tick(sb_conn_t *c, int64_t now)
{
    relay_t *r = c->proto;
    w_heartbeat(&r->w, now);
}

static void relay_on_close(sb_conn_t *c)
{
    relay_t *r = c->proto;
    r->w.c = NULL;
    if (!r->finished && R.cancel_on_disconnect) relay_stop(r, "disconnect");
    else relay_maybe_free(r);
}

/* At shutdown an answer is left to finish within the drain time; the loop's
 * stop hook ends whatever is still running. */
static void relay_on_shutdown(sb_conn_t *c) {}

static const sb_conn_ops_t relay_ops = {.on_data = w_on_data,
                                        .on_tick = relay_on_tick,
                                        .on_close = relay_on_close,
                                        .on_shutdown = relay_on_shutdown};

/* ---- per-loop state ---- */

static ai_loop_t *loop_state(sb_loop_t *loop)
{
    ai_loop_t *ls = loop->layer[SB_LAYER_AI];
    if (ls) return ls;
    ls = calloc(1, sizeof *ls);
    if (!ls) return NULL;
    ls->loop = loop;
    if (R.demo) ls->demo = sb_ai_demo_new(&loop->uv);
    else ls->engine = sb_ai_engine_new(&loop->uv);
    if ((!ls->demo && !ls->engine) || uv_timer_init(&loop->uv, &ls->timer) < 0) {
        if (ls->demo) sb_ai_demo_free(ls->demo);
        if (ls->engine) sb_ai_engine_free(ls->engine);
        free(ls);
        return NULL;
    }
    ls->timer.data = ls;
    loop->layer[SB_LAYER_AI] = ls;
    return ls;
}

static void loop_state_closed(uv_handle_t *h) { free(h->data); }

/* The loop stops: every answer still running ends with an error event (its
 * client is being closed anyway), then the engine goes. */
static void ai_loop_stop(sb_loop_t *loop)
{
    ai_loop_t *ls = loop->layer[SB_LAYER_AI];
    if (!ls) return;
    for (relay_t *r = ls->relays, *next; r; r = next) {
        next = r->next;
        if (r->finished) continue;
        if (r->call) sb_ai_cancel(r->call);
        if (r->demo) sb_ai_demo_cancel(r->demo);
        r->call = NULL;
        r->demo = NULL;
        relay_finish(r, END_ERROR, 0, "shutting_down", sb_err_info(SB_ERR_SHUTTING_DOWN)->message);
    }
    /* The rest still have a connection, closing now: its on_close frees them. */
    for (relay_t *r = ls->relays; r; r = r->next) r->ls = NULL;
    ls->relays = NULL;
    if (ls->engine) sb_ai_engine_free(ls->engine);
    if (ls->demo) sb_ai_demo_free(ls->demo);
    for (size_t i = 0; i < ls->nfolds; i++)
        sb_broker_compact_text(sb_str(ls->folds[i].chan, strlen(ls->folds[i].chan)), SB_STR("delta"),
                               ls->folds[i].upto);
    free(ls->folds);
    loop->layer[SB_LAYER_AI] = NULL;
    uv_close((uv_handle_t *)&ls->timer, loop_state_closed);
}

/* ---- requests ---- */

static bool valid_id_chars(const char *s, size_t max)
{
    size_t n = strlen(s);
    return n >= 1 && n <= max && sb_valid_channel(sb_str(s, n));
}

/* Who is asking. With --jwt-secret a valid token (query `token` or Bearer)
 * is required and its sub is the user (an --api-key Bearer also passes);
 * with only --api-key that key is required; in development mode everyone may.
 * On refusal the error is answered and false returned. */
static bool authorize(sb_conn_t *c, const sb_http_req_t *req, char *user, size_t cap)
{
    user[0] = 0;
    if (!sb_cfg.jwt_secret[0] && !sb_cfg.api_key[0]) return true;
    sb_str_t auth = sb_http_header(req, "authorization");
    if (sb_cfg.api_key[0] && auth.p && auth.len > 7 && sb_str_ieq(sb_str(auth.p, 7), "bearer ") &&
        sb_auth_ct_equal(auth.p + 7, auth.len - 7, sb_cfg.api_key, strlen(sb_cfg.api_key)))
        return true;
    sb_err_t why = SB_ERR_UNAUTHORIZED;
    if (sb_cfg.jwt_secret[0] && sb_http_authorize(req, NULL, 0, &why, user, cap, NULL, 0)) return true;
    sb_http_error(c, why);
    return false;
}

/* The key of the user's concurrency limit: the token's sub, else the peer. */
static void user_key(sb_conn_t *c, const char *user, char *out, size_t cap)
{
    if (user[0]) snprintf(out, cap, "u:%s", user);
    else snprintf(out, cap, "ip:%s", c->peer);
}

static void new_id(char *out)
{
    static const char hex[] = "0123456789abcdef";
    uint64_t a = sb_random_u64(), b = sb_random_u64();
    for (int i = 0; i < 16; i++) out[i] = hex[(a >> (4 * i)) & 15];
    for (int i = 0; i < ID_HEX - 16; i++) out[16 + i] = hex[(b >> (4 * i)) & 15];
    out[ID_HEX] = 0;
}

/* A chat request, parsed. */
typedef struct {
    cJSON *root;
    char *messages; /* the messages array as JSON text (malloc) */
    char chat[MAX_CHAT_ID + 1];
    char model[MAX_MODEL + 1];
    sb_ai_format_t fmt;
} chat_req_t;

/* Without a `format`, a request that looks like useChat's (an `id` and UI
 * messages, which have `parts`) gets the AI SDK's stream; anything else gets
 * bare text, which is what the seed's fetch reader expects. */
static sb_ai_format_t default_format(const cJSON *root, const cJSON *messages)
{
    if (!cJSON_IsString(cJSON_GetObjectItemCaseSensitive(root, "id"))) return SB_AI_FMT_TEXT;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        if (cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(m, "parts"))) return SB_AI_FMT_AISDK;
    }
    return SB_AI_FMT_TEXT;
}

/* Returns SB_OK, or the error with *msg set to its message. */
static sb_err_t parse_chat(sb_str_t body, chat_req_t *q, const char **msg)
{
    memset(q, 0, sizeof *q);
    *msg = NULL;
    q->root = cJSON_ParseWithLength(body.p, body.len);
    if (!q->root) return SB_ERR_INVALID_JSON;
    if (!cJSON_IsObject(q->root)) {
        *msg = "The body must be a JSON object with a messages array.";
        return SB_ERR_INVALID_BODY;
    }
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(q->root, "messages");
    if (!cJSON_IsArray(messages) || !cJSON_GetArraySize(messages)) {
        *msg = "messages must be a non-empty array.";
        return SB_ERR_INVALID_BODY;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(q->root, "id");
    if (id && !cJSON_IsNull(id)) {
        if (!cJSON_IsString(id) || !valid_id_chars(id->valuestring, MAX_CHAT_ID)) {
            *msg = "id must be 1-100 characters of A-Z a-z 0-9 _ - . : @.";
            return SB_ERR_INVALID_BODY;
        }
        snprintf(q->chat, sizeof q->chat, "%s", id->valuestring);
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(q->root, "model");
    if (model && !cJSON_IsNull(model)) {
        bool ok = cJSON_IsString(model) && model->valuestring[0] && strlen(model->valuestring) <= MAX_MODEL;
        for (const char *p = ok ? model->valuestring : ""; ok && *p; p++)
            ok = (unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f;
        if (!ok) {
            *msg = "model must be 1-127 printable ASCII characters.";
            return SB_ERR_INVALID_BODY;
        }
        snprintf(q->model, sizeof q->model, "%s", model->valuestring);
    }
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q->root, "format");
    if (fmt && !cJSON_IsNull(fmt)) {
        if (!cJSON_IsString(fmt) ||
            sb_ai_format_parse(sb_str(fmt->valuestring, strlen(fmt->valuestring)), &q->fmt) < 0) {
            *msg = "format must be text, sse or ai-sdk.";
            return SB_ERR_INVALID_BODY;
        }
    } else {
        q->fmt = default_format(q->root, messages);
    }
    q->messages = cJSON_PrintUnformatted(messages);
    if (!q->messages) return SB_ERR_INTERNAL;
    return SB_OK;
}

static void chat_req_free(chat_req_t *q)
{
    cJSON_Delete(q->root);
    free(q->messages);
}

/* POST /v1/ai/chat */
static int handle_chat(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_http_req_t *req = x->req;
    if (!sb_http_origin_allowed(req)) {
        sb_http_error(c, SB_ERR_ORIGIN_FORBIDDEN);
        return SB_HTTP_DONE;
    }
    char user[USER_CAP];
    if (!authorize(c, req, user, sizeof user)) return SB_HTTP_DONE;
    if (!R.enabled) {
        sb_http_error(c, SB_ERR_NO_UPSTREAM);
        return SB_HTTP_DONE;
    }
    chat_req_t q;
    const char *msg;
    sb_err_t err = parse_chat(x->body, &q, &msg);
    const char *model = q.model[0] ? q.model : R.up.model;
    if (err == SB_OK && !R.demo && !model[0]) {
        err = SB_ERR_INVALID_BODY;
        msg = "No model: send \"model\", or start the server with --ai-model.";
    }
    if (err != SB_OK) {
        sb_http_error_msg(c, err, msg);
        chat_req_free(&q);
        return SB_HTTP_DONE;
    }
    char ukey[KEY_CAP], limit_msg[160];
    user_key(c, user, ukey, sizeof ukey);
    if (reg_reserve(ukey, limit_msg, sizeof limit_msg)) {
        sb_http_error_msg(c, SB_ERR_RATE_LIMITED, limit_msg);
        chat_req_free(&q);
        return SB_HTTP_DONE;
    }
    ai_loop_t *ls = loop_state(c->loop);
    relay_t *r = ls ? calloc(1, sizeof *r) : NULL;
    int rc = SB_ENOMEM;
    const char *why = NULL;
    if (r) {
        r->ls = ls;
        r->w.fmt = q.fmt;
        new_id(r->id);
        snprintf(r->chan, sizeof r->chan, "ai:%s", r->id);
        snprintf(r->ukey, sizeof r->ukey, "%s", ukey);
        size_t len = strlen(q.messages);
        if (R.demo) {
            rc = sb_ai_demo_start(ls->demo, q.messages, len, &relay_cbs, r, &r->demo, &why);
        } else {
            sb_ai_upstream_t up = R.up;
            up.model = model;
            rc = sb_ai_start(ls->engine, &up, q.messages, len, &relay_cbs, r, &r->call, &why);
        }
        /* No callback runs inside a start: the relay is set up before any token. */
        if (rc == 0 && !reg_add(r->id, c->loop, r, user, q.chat)) {
            if (r->call) sb_ai_cancel(r->call);
            if (r->demo) sb_ai_demo_cancel(r->demo);
            rc = SB_ENOMEM;
        }
    }
    if (rc < 0) {
        reg_release(ukey);
        free(r);
        if (rc == SB_EPARSE) sb_http_error_msg(c, SB_ERR_INVALID_BODY, why);
        else sb_http_error(c, SB_ERR_INTERNAL);
        chat_req_free(&q);
        return SB_HTTP_DONE;
    }
    r->next = ls->relays;
    if (ls->relays) ls->relays->prev = r;
    ls->relays = r;
    sb_debug("ai stream start", "stream=%s chat=%s format=%d user=%s", r->id, q.chat, (int)q.fmt, ukey);
    chat_req_free(&q);
    w_begin(&r->w, c, req, r->id, &relay_ops, r);
    return SB_HTTP_TAKEN;
}

/* ---- resume: GET /v1/ai/chats/{chatId}/stream ---- */

typedef struct {
    writer_t w; /* first: the connection's proto */
    sb_sub_t sub;
    sb_loop_t *loop;
    bool over;
} resume_t;

static void resume_free_task(sb_loop_t *loop, void *a, void *b)
{
    resume_t *rs = a;
    sb_buf_free(&rs->w.buf);
    free(rs);
}

/* The replay is over. When the connection went back to HTTP the reader is
 * unsubscribed now and freed once the broker is done delivering (this may
 * run inside a delivery). */
static void resume_end(resume_t *rs, bool clean)
{
    rs->over = true;
    if (!w_end(&rs->w, clean)) return;
    sb_broker_unsubscribe(&rs->sub);
    sb_loop_post(rs->loop, resume_free_task, rs, NULL);
}

/* Replays the channel's events in the reader's format, then ends with the stream. */
static void resume_deliver(sb_sub_t *s, sb_msg_t *m)
{
    resume_t *rs = s->sink;
    if (rs->over || !rs->w.c) return;
    bool delta = !strcmp(m->event, "delta"), done = !strcmp(m->event, "done");
    bool error = !strcmp(m->event, "error");
    if (!delta && !done && !error) return; /* not ours: someone else published here */
    cJSON *j = cJSON_ParseWithLength(m->data, m->data_len);
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, delta ? "text" : done ? "finishReason" : "code");
    const char *av = cJSON_IsString(a) ? a->valuestring : NULL;
    if (delta) {
        if (av && av[0]) sb_ai_enc_delta(&rs->w.enc, av, strlen(av), &rs->w.buf);
        w_flush(&rs->w);
    } else if (done) {
        sb_ai_enc_done(&rs->w.enc, av ? av : "other", &rs->w.buf);
        w_flush(&rs->w);
        resume_end(rs, true);
    } else {
        const cJSON *mm = cJSON_GetObjectItemCaseSensitive(j, "message");
        sb_ai_enc_error(&rs->w.enc, av ? av : "upstream_error",
                        cJSON_IsString(mm) ? mm->valuestring : "The stream failed.", &rs->w.buf);
        w_flush(&rs->w);
        resume_end(rs, rs->w.fmt != SB_AI_FMT_TEXT);
    }
    cJSON_Delete(j);
}

static void resume_reset(sb_sub_t *s, const char *reason)
{
    resume_t *rs = s->sink;
    if (rs->over) return;
    sb_ai_enc_error(&rs->w.enc, reason, "The beginning of this stream is no longer kept.", &rs->w.buf);
    w_flush(&rs->w);
    resume_end(rs, rs->w.fmt != SB_AI_FMT_TEXT);
}

static const sb_sink_ops_t resume_sink = {.deliver = resume_deliver, .reset = resume_reset};

static void resume_on_tick(sb_conn_t *c, int64_t now)
{
    resume_t *rs = c->proto;
    if (!rs->over) w_heartbeat(&rs->w, now);
}

static void resume_on_close(sb_conn_t *c)
{
    resume_t *rs = c->proto;
    sb_broker_unsubscribe(&rs->sub);
    sb_buf_free(&rs->w.buf);
    free(rs);
}

static const sb_conn_ops_t resume_ops = {
    .on_data = w_on_data, .on_tick = resume_on_tick, .on_close = resume_on_close};

/* GET /v1/ai/chats/{chatId}/stream and /v1/ai/chat/{chatId}/stream: the
 * chat's running or just-finished stream from its start, then live; or 204. */
static int handle_resume(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_http_req_t *req = x->req;
    if (!sb_http_origin_allowed(req)) {
        sb_http_error(c, SB_ERR_ORIGIN_FORBIDDEN);
        return SB_HTTP_DONE;
    }
    char user[USER_CAP];
    if (!authorize(c, req, user, sizeof user)) return SB_HTTP_DONE;
    static const char suffix[] = "/stream";
    sb_str_t t = x->tail;
    char chat[MAX_CHAT_ID + 1];
    int n = -1;
    if (t.len > sizeof suffix - 1 && !memcmp(t.p + t.len - (sizeof suffix - 1), suffix, sizeof suffix - 1))
        n = sb_http_pct_decode(sb_str(t.p, t.len - (sizeof suffix - 1)), chat, sizeof chat - 1, false);
    if (n >= 0) chat[n] = 0;
    if (n < 0 || !valid_id_chars(chat, MAX_CHAT_ID)) {
        sb_http_error(c, SB_ERR_NOT_FOUND);
        return SB_HTTP_DONE;
    }
    sb_ai_format_t fmt = SB_AI_FMT_AISDK;
    char fv[16];
    int fl = sb_http_query_get(req->query, "format", fv, sizeof fv);
    if (fl == -2 || (fl >= 0 && sb_ai_format_parse(sb_str(fv, (size_t)fl), &fmt) < 0)) {
        sb_http_error_msg(c, SB_ERR_INVALID_PARAM, "format must be text, sse or ai-sdk.");
        return SB_HTTP_DONE;
    }
    char id[ID_HEX + 1] = "";
    pthread_mutex_lock(&G.mu);
    reg_expire(sb_now_ms());
    chat_rec_t *ch = (chat_rec_t *)map_get(&G.chats, chat);
    stream_rec_t *s = ch ? (stream_rec_t *)map_get(&G.streams, ch->stream) : NULL;
    /* Someone else's chat is answered like an unknown one. */
    if (s && (!s->owner[0] || !strcmp(s->owner, user))) snprintf(id, sizeof id, "%.24s", s->n.key);
    pthread_mutex_unlock(&G.mu);
    if (!id[0]) {
        /* No Content-Length on a 204 (RFC 9110); the connection stays usable. */
        sb_http_stream_head(c, 204, NULL, "Cache-Control: no-store\r\n");
        if (!req->keep_alive) sb_conn_end(c);
        return SB_HTTP_DONE;
    }
    resume_t *rs = calloc(1, sizeof *rs);
    if (!rs) {
        sb_http_error(c, SB_ERR_INTERNAL);
        return SB_HTTP_DONE;
    }
    rs->w.fmt = fmt;
    rs->loop = c->loop;
    rs->sub.ops = &resume_sink;
    rs->sub.sink = rs;
    w_begin(&rs->w, c, req, id, &resume_ops, rs);
    char chan[CHAN_CAP];
    snprintf(chan, sizeof chan, "ai:%s", id);
    sb_str_t name = sb_str(chan, strlen(chan));
    sb_sub_t *subs[1] = {&rs->sub};
    sb_err_t why;
    if (sb_broker_subscribe(c->loop, subs, &name, 1, (sb_since_t){true, 0}, &why) < 0) {
        const sb_err_info_t *e = sb_err_info(why);
        sb_ai_enc_error(&rs->w.enc, e->code, e->message, &rs->w.buf);
        w_flush(&rs->w);
        resume_end(rs, fmt != SB_AI_FMT_TEXT);
    }
    return SB_HTTP_TAKEN;
}

/* ---- stop: DELETE /v1/ai/streams/{id} ---- */

/* On the stream's loop: the relay is only touched there. */
static void stop_task(sb_loop_t *loop, void *a, void *b)
{
    char *id = a;
    pthread_mutex_lock(&G.mu);
    stream_rec_t *s = (stream_rec_t *)map_get(&G.streams, id);
    relay_t *r = s && !s->done_ms && s->loop == loop ? s->relay : NULL;
    pthread_mutex_unlock(&G.mu);
    if (r) relay_stop(r, "request");
    free(id);
}

static int handle_stop(sb_conn_t *c, sb_http_ctx_t *x)
{
    char user[USER_CAP];
    if (!authorize(c, x->req, user, sizeof user)) return SB_HTTP_DONE;
    char id[ID_HEX + 1];
    if (x->tail.len != ID_HEX) {
        sb_http_error(c, SB_ERR_STREAM_NOT_FOUND);
        return SB_HTTP_DONE;
    }
    memcpy(id, x->tail.p, ID_HEX);
    id[ID_HEX] = 0;
    pthread_mutex_lock(&G.mu);
    reg_expire(sb_now_ms());
    stream_rec_t *s = (stream_rec_t *)map_get(&G.streams, id);
    bool found = s != NULL, mine = s && (!s->owner[0] || !strcmp(s->owner, user));
    bool active = s && !s->done_ms;
    sb_loop_t *loop = s ? s->loop : NULL;
    pthread_mutex_unlock(&G.mu);
    if (!found) {
        sb_http_error(c, SB_ERR_STREAM_NOT_FOUND);
        return SB_HTTP_DONE;
    }
    if (!mine) {
        sb_http_error(c, SB_ERR_FORBIDDEN);
        return SB_HTTP_DONE;
    }
    if (active) {
        char *copy = strdup(id);
        if (!copy) {
            sb_http_error(c, SB_ERR_INTERNAL);
            return SB_HTTP_DONE;
        }
        if (loop == c->loop) stop_task(loop, copy, NULL);
        else sb_loop_post(loop, stop_task, copy, NULL);
    }
    char body[96];
    int bl = snprintf(body, sizeof body, "{\"id\":\"%s\",\"stopped\":%s}", id, active ? "true" : "false");
    sb_http_respond(c, 200, "application/json", body, (size_t)bl, NULL);
    return SB_HTTP_DONE;
}

/* ---- init ---- */

/* --ai-*-timeout: 0 keeps the engine's default; at most a day. */
static int timeout_flag(const char *flag, int64_t v, long *out_ms)
{
    if (v < 0 || v > 86400000) {
        sb_error("invalid AI timeout", "flag=--%s value_ms=%lld", flag, (long long)v);
        return -1;
    }
    if (v > 0) *out_ms = (long)v;
    return 0;
}

int sb_ai_relay_init(void)
{
    memset(&R, 0, sizeof R);
    if (!strcmp(sb_cfg.ai_on_disconnect, "cancel")) {
        R.cancel_on_disconnect = true;
    } else if (strcmp(sb_cfg.ai_on_disconnect, "continue")) {
        sb_error("--ai-on-disconnect must be continue or cancel", "value=\"%s\"", sb_cfg.ai_on_disconnect);
        return -1;
    }
    if (sb_cfg.ai_max_streams < 1 || sb_cfg.ai_max_streams_per_user < 1) {
        sb_error("--ai-max-streams and --ai-max-streams-per-user must be at least 1", "%s", "");
        return -1;
    }
    /* A finished stream stays resumable as long as its messages are kept. */
    R.retention_ms = sb_cfg.history_ttl_ms > 0 ? sb_cfg.history_ttl_ms : INT64_MAX / 2;
    int64_t fe = sb_cfg.history_size / 4;
    R.fold_every = (uint32_t)(fe < 1 ? 1 : fe > FOLD_MAX ? FOLD_MAX : fe);
    const char *url = sb_cfg.ai_upstream;
    if (url[0]) {
        R.enabled = true;
        R.up.url = url;
        R.up.model = sb_cfg.ai_model;
        if (sb_cfg.ai_dialect[0]) {
            if (sb_ai_dialect_parse(sb_str(sb_cfg.ai_dialect, strlen(sb_cfg.ai_dialect)), &R.up.dialect) < 0) {
                sb_error("--ai-dialect must be openai or anthropic", "value=\"%s\"", sb_cfg.ai_dialect);
                return -1;
            }
        } else {
            /* From the URL: Anthropic's host or its endpoint, else OpenAI-compatible. */
            size_t ul = strlen(url);
            bool anth = strstr(url, "anthropic") || (ul >= 9 && !strcmp(url + ul - 9, "/messages"));
            R.up.dialect = anth ? SB_AI_ANTHROPIC : SB_AI_OPENAI;
        }
        const char *env = sb_cfg.ai_key_env[0]             ? sb_cfg.ai_key_env
                          : R.up.dialect == SB_AI_ANTHROPIC ? "ANTHROPIC_API_KEY"
                                                            : "OPENAI_API_KEY";
        R.up.api_key = getenv(env);
        if (!R.up.api_key || !R.up.api_key[0])
            sb_warn("no AI upstream key: the upstream may refuse calls", "env=%s", env);
        if (timeout_flag("ai-connect-timeout", sb_cfg.ai_connect_timeout_ms, &R.up.connect_timeout_ms) < 0 ||
            timeout_flag("ai-first-token-timeout", sb_cfg.ai_first_token_timeout_ms,
                         &R.up.first_token_timeout_ms) < 0 ||
            timeout_flag("ai-idle-timeout", sb_cfg.ai_idle_timeout_ms, &R.up.idle_timeout_ms) < 0)
            return -1;
        if (sb_cfg.ai_demo) sb_info("--ai-demo is ignored: --ai-upstream is set", "%s", "");
        sb_info("ai relay", "upstream=%s dialect=%s model=%s on_disconnect=%s", url,
                R.up.dialect == SB_AI_ANTHROPIC ? "anthropic" : "openai",
                R.up.model[0] ? R.up.model : "(per request)", sb_cfg.ai_on_disconnect);
    } else if (sb_cfg.ai_demo) {
        R.enabled = true;
        R.demo = true;
        sb_info("ai relay: built-in demo generator (--ai-demo), no upstream", "%s", "");
    }
    sb_net_on_stop(ai_loop_stop);
    unsigned get = SB_M(SB_HTTP_GET);
    sb_http_route("/v1/ai/chat", SB_M(SB_HTTP_POST), handle_chat);
    sb_http_route("/v1/ai/chats/", get, handle_resume);
    sb_http_route("/v1/ai/chat/", get, handle_resume);
    sb_http_route("/v1/ai/streams/", SB_M(SB_HTTP_DELETE), handle_stop);
    return 0;
}
