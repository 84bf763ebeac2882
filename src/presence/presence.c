/* Presence glue: the model (model.c) on the transports.
 *
 * Threads. The model is shared by all loops under its lock. Everything else
 * here belongs to one loop: a connection's presence record (pconn_t), its
 * memberships (pmemb_t: throttle state, the member JSON prefix) and its
 * reader registrations (preader_t), and the loop's presence state (ploop_t:
 * one timer for throttle flushes, pings, stale timeouts and grace expiry).
 *
 * Delivery. The model numbers each channel's changes. A change is turned into
 * one refcounted event and appended, under the model lock, to the outbox of
 * every loop that has readers of the channel; the first append of a turn
 * posts a drain task. The drain takes the whole outbox, groups it by channel,
 * and gives each reader one frame for the group: the plain change when there
 * is one, a presence.batch when there are several. The frame is built once
 * per group and loop and shared by the readers. A reader registered with a
 * snapshot (presence.sync) at change number S skips changes up to S, so
 * sync + deltas is exactly every other reader's view.
 *
 * Liveness. Every frame a WebSocket member sends counts as alive. While it
 * holds memberships this layer pings it every third of --presence-timeout; a
 * browser answers pings from its network stack even when the tab's timers are
 * throttled, so a healthy tab never times out, and a peer that answers
 * nothing for the timeout is closed and leaves. SSE members cannot be pinged:
 * they leave when their stream closes. */
#define _GNU_SOURCE
#include "presence/presence.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config.h"
#include "http/http.h"
#include "metrics/metrics.h"
#include "net/net.h"
#include "presence/model.h"
#include "sse/sse.h"
#include "ws/ws.h"

/* Hooks the REST API offers this layer (defined in src/http/api.c). */
extern int64_t (*sb_api_presence_count)(sb_str_t channel);
extern sb_http_handler_t sb_api_presence_handler;

#define MAX_STATE 4096   /* bytes of state JSON per member */
#define MAX_INFO 1024    /* bytes of info JSON per member */
#define MAX_USER_ID 128  /* bytes of a development-mode userId */
#define LIVE_SCAN_MS 250 /* how often pings and stale timeouts are checked */

typedef struct ploop ploop_t;
typedef struct pconn pconn_t;
typedef struct pmemb pmemb_t;
typedef struct preader preader_t;

/* One change on its way to the readers of some loops. */
typedef struct {
    atomic_int refs;
    pres_chan_t *ch; /* held (pres_chan_hold) once per outbox it sits in */
    uint64_t seq;
    uint32_t len;
    char text[]; /* "action":"...","member":{...} */
} pev_t;

/* Per channel: its readers on each loop. Each list belongs to its loop;
 * nreaders (all loops) is read under the model lock by whoever emits. */
typedef struct {
    preader_t **r;
    uint32_t n, cap;
} chloop_t;

typedef struct {
    int64_t nreaders;
    chloop_t lr[];
} chglue_t;

struct ploop {
    sb_loop_t *loop;
    uv_timer_t timer;
    int64_t timer_due; /* 0 = not armed */
    int64_t next_live;
    bool stopping, timer_closed;
    int64_t npc;        /* pconns on this loop */
    pconn_t *live;      /* WebSocket pconns holding memberships: pinged, timed out */
    pmemb_t *pending;   /* members with a throttled state waiting */
    sb_buf_t scratch;   /* member JSON being built */
    /* under the model lock */
    pev_t **out, **spare;
    size_t nout, capout, capspare;
    bool posted;
    /* counters: written by this loop only, read by metrics */
    _Atomic uint64_t frames, bytes, batches, coalesced, stale, pings, resyncs, slow;
};

struct pconn {
    sb_conn_t *c;
    sb_ws_t *ws; /* NULL for an SSE stream */
    ploop_t *pl;
    pconn_t *lnext, *lprev; /* pl->live */
    bool listed;
    int64_t last_alive, last_ping;
    pmemb_t *membs;
    uint32_t nmembs;
    preader_t *readers;
    uint8_t cid_len;
    char cid[40]; /* clientId: the connection id, after the node prefix in a cluster */
};

struct pmemb {
    pmemb_t *next;          /* pc->membs */
    pmemb_t *pnext, *pprev; /* pl->pending */
    bool queued;
    pconn_t *pc;
    pres_chan_t *ch;
    pres_member_t *m;
    pres_throttle_t th;
    char *prefix; /* {"clientId":..,"userId":..,"info":..,"state": */
    uint32_t prefix_len;
    char *pend;   /* the state waiting for the throttle */
    uint32_t pend_len, pend_cap;
};

struct preader {
    preader_t *next; /* pc->readers */
    pconn_t *pc;
    pres_chan_t *ch; /* held */
    uint64_t synced; /* changes up to this one are in its sync */
    uint32_t idx;    /* in the channel's list for this loop */
};

static struct {
    int64_t nploops; /* under the model lock */
    bool stopping;   /* under the model lock */
    bool used;       /* under the model lock: a member entered since start */
    _Atomic uint64_t events;
    /* Cluster replication (sb_presence_set_repl): the hooks and the number of
     * the last local change handed to them, under the model lock; the clientId
     * prefix, written before the loops run. */
    const sb_presence_repl_t *repl;
    uint64_t repl_seq;
    char cid_prefix[20];
} P;

/* Marks a loop whose presence state is gone for good (it stopped). */
static char stopped_mark;
#define STOPPED ((void *)&stopped_mark)

static int64_t now_ms(void) { return (int64_t)(sb_mono_us() / 1000); }

#define BUMP(pl, field, n)                                                                         \
    atomic_store_explicit(&(pl)->field,                                                            \
                          atomic_load_explicit(&(pl)->field, memory_order_relaxed) + (n),          \
                          memory_order_relaxed)

static void timer_cb(uv_timer_t *t);
static void drain_task(sb_loop_t *loop, void *a, void *b);

/* ---- events ---- */
static void ev_unref(pev_t *ev)
{
    if (atomic_fetch_sub_explicit(&ev->refs, 1, memory_order_acq_rel) == 1) free(ev);
}

static bool outbox_push(ploop_t *pl, pev_t *ev)
{
    if (pl->nout == pl->capout) {
        size_t cap = pl->capout ? pl->capout * 2 : 64;
        pev_t **n = realloc(pl->out, cap * sizeof *n);
        if (!n) return false;
        pl->out = n;
        pl->capout = cap;
    }
    pl->out[pl->nout++] = ev;
    return true;
}

/* The model's emit hook (lock held): queue the change for every loop with
 * readers of the channel. Channels nobody reads cost no allocation here. */
static void on_emit(pres_chan_t *ch, uint64_t seq, pres_action_t a, const char *member, size_t len)
{
    atomic_fetch_add_explicit(&P.events, 1, memory_order_relaxed);
    chglue_t *g = *pres_chan_glue(ch);
    if (!g || !g->nreaders) return;
    const char *an = pres_action_name(a);
    size_t tl = strlen("\"action\":\"\",\"member\":") + strlen(an) + len;
    pev_t *ev = malloc(sizeof *ev + tl + 1);
    if (!ev) {
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory queueing a presence change",
                           "seq=%llu", (unsigned long long)seq);
        return;
    }
    atomic_init(&ev->refs, 1);
    ev->ch = ch;
    ev->seq = seq;
    ev->len = (uint32_t)snprintf(ev->text, tl + 1, "\"action\":\"%s\",\"member\":%.*s", an,
                                 (int)len, member);
    for (int l = 0; l < sb_net.nloops; l++) {
        if (!g->lr[l].n) continue;
        ploop_t *pl = sb_net.loops[l]->layer[SB_LAYER_PRESENCE];
        if (!pl || pl == STOPPED) continue;
        if (!outbox_push(pl, ev)) {
            sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory queueing a presence change",
                               "loop=%d", l);
            continue;
        }
        atomic_fetch_add_explicit(&ev->refs, 1, memory_order_relaxed);
        pres_chan_hold(ch);
        if (!pl->posted) {
            pl->posted = true;
            sb_loop_post(pl->loop, drain_task, NULL, NULL);
        }
    }
    ev_unref(ev);
}

static void on_chan_free(pres_chan_t *ch)
{
    chglue_t *g = *pres_chan_glue(ch);
    if (!g) return;
    for (int l = 0; l < sb_net.nloops; l++) free(g->lr[l].r);
    free(g);
    *pres_chan_glue(ch) = NULL;
}

/* ---- frames ---- */
static void put_chan(sb_buf_t *b, pres_chan_t *ch)
{
    size_t nl;
    const char *name = pres_chan_name(ch, &nl);
    sb_buf_json_str(b, name, nl);
}

/* Builds the frame of events evs[0..n) for a WebSocket or an SSE reader. */
static sb_frame_t *build_frame(pres_chan_t *ch, pev_t **evs, size_t n, bool sse)
{
    sb_buf_t b = {0};
    if (sse) {
        for (size_t i = 0; i < n; i++) {
            sb_buf_puts(&b, "event: presence\ndata: {\"channel\":");
            put_chan(&b, ch);
            sb_buf_put(&b, ",", 1);
            sb_buf_put(&b, evs[i]->text, evs[i]->len);
            sb_buf_puts(&b, "}\n\n");
        }
    } else if (n == 1) {
        sb_buf_puts(&b, "{\"op\":\"presence\",\"channel\":");
        put_chan(&b, ch);
        sb_buf_put(&b, ",", 1);
        sb_buf_put(&b, evs[0]->text, evs[0]->len);
        sb_buf_put(&b, "}", 1);
    } else {
        sb_buf_puts(&b, "{\"op\":\"presence.batch\",\"channel\":");
        put_chan(&b, ch);
        sb_buf_puts(&b, ",\"events\":[");
        for (size_t i = 0; i < n; i++) {
            sb_buf_puts(&b, i ? ",{" : "{");
            sb_buf_put(&b, evs[i]->text, evs[i]->len);
            sb_buf_put(&b, "}", 1);
        }
        sb_buf_puts(&b, "]}");
    }
    sb_frame_t *f = NULL;
    if (!b.oom) f = sse ? sb_buf_to_frame(&b) : sb_ws_text_frame(b.p, b.len);
    sb_buf_free(&b);
    return f;
}

/* The snapshot frame for one reader; sets r->synced. Lock not held. */
static sb_frame_t *build_sync(preader_t *r)
{
    sb_buf_t b = {0}, users = {0};
    bool sse = !r->pc->ws;
    sb_buf_puts(&b, sse ? "event: presence\ndata: {\"channel\":"
                        : "{\"op\":\"presence.sync\",\"channel\":");
    put_chan(&b, r->ch);
    sb_buf_puts(&b, sse ? ",\"action\":\"sync\",\"members\":" : ",\"members\":");
    pres_lock();
    r->synced = pres_snapshot(r->ch, &b, &users);
    pres_unlock();
    sb_buf_puts(&b, ",\"users\":");
    sb_buf_put(&b, users.p, users.len);
    sb_buf_puts(&b, sse ? "}\n\n" : "}");
    sb_frame_t *f = NULL;
    if (!b.oom && !users.oom) f = sse ? sb_buf_to_frame(&b) : sb_ws_text_frame(b.p, b.len);
    sb_buf_free(&b);
    sb_buf_free(&users);
    return f;
}

static bool conn_open(sb_conn_t *c) { return !(c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING)); }

/* Queues f (taken) for the reader, tagged with the channel. A reader whose
 * queue would pass --max-output has its unsent presence frames replaced by a
 * fresh sync (which covers f); if that is not enough, it is too slow to serve
 * and is closed. */
static void reader_send(preader_t *r, sb_frame_t *f)
{
    sb_conn_t *c = r->pc->c;
    ploop_t *pl = r->pc->pl;
    if (!f) return;
    if (!conn_open(c)) {
        sb_frame_unref(f);
        return;
    }
    if (c->out_bytes + f->len <= (size_t)sb_cfg.max_output) {
        BUMP(pl, frames, 1);
        BUMP(pl, bytes, f->len);
        sb_conn_send(c, f, r->ch);
        return;
    }
    sb_frame_unref(f);
    sb_conn_drop_tagged(c, r->ch, 0);
    BUMP(pl, resyncs, 1);
    sb_frame_t *s = build_sync(r);
    if (!s || c->out_bytes + s->len > (size_t)sb_cfg.max_output) {
        if (s) sb_frame_unref(s);
        BUMP(pl, slow, 1);
        SB_STAT_ADD(c->loop, slow_disconnects, 1);
        sb_log_ratelimited(SB_LOG_WARN, 1000, "slow presence reader closed",
                           "conn=%llu peer=%s queued=%zu", (unsigned long long)c->id, c->peer,
                           c->out_bytes);
        sb_conn_close(c);
        return;
    }
    BUMP(pl, frames, 1);
    BUMP(pl, bytes, s->len);
    sb_conn_send(c, s, r->ch);
}

static int ev_cmp(const void *a, const void *b)
{
    const pev_t *x = *(pev_t *const *)a, *y = *(pev_t *const *)b;
    if (x->ch != y->ch) return (uintptr_t)x->ch < (uintptr_t)y->ch ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Delivers one channel's changes of this turn to the loop's readers. */
static void deliver_group(ploop_t *pl, pres_chan_t *ch, pev_t **evs, size_t n)
{
    chglue_t *g = *pres_chan_glue(ch);
    chloop_t *cl = &g->lr[pl->loop->id];
    sb_frame_t *shared[2] = {NULL, NULL}; /* WebSocket, SSE */
    for (uint32_t i = 0; i < cl->n; i++) {
        preader_t *r = cl->r[i];
        bool sse = !r->pc->ws;
        size_t from = 0;
        while (from < n && evs[from]->seq <= r->synced) from++;
        if (from == n) continue;
        sb_frame_t *f;
        if (from == 0) {
            if (!shared[sse]) shared[sse] = build_frame(ch, evs, n, sse);
            f = shared[sse] ? sb_frame_ref(shared[sse]) : NULL;
        } else {
            f = build_frame(ch, evs + from, n - from, sse);
        }
        if (n - from > 1) BUMP(pl, batches, 1);
        reader_send(r, f);
    }
    for (int k = 0; k < 2; k++)
        if (shared[k]) sb_frame_unref(shared[k]);
}

static void drain_task(sb_loop_t *loop, void *a, void *b)
{
    ploop_t *pl = loop->layer[SB_LAYER_PRESENCE];
    if (!pl || pl == STOPPED) return;
    pres_lock();
    pev_t **evs = pl->out;
    size_t n = pl->nout, cap = pl->capout;
    pl->out = pl->spare;
    pl->capout = pl->capspare;
    pl->nout = 0;
    pl->spare = NULL;
    pl->capspare = 0;
    pl->posted = false;
    pres_unlock();
    if (n > 1) qsort(evs, n, sizeof *evs, ev_cmp);
    for (size_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && evs[j]->ch == evs[i]->ch; j++) {}
        deliver_group(pl, evs[i]->ch, evs + i, j - i);
    }
    pres_lock();
    for (size_t i = 0; i < n; i++) pres_chan_release(evs[i]->ch);
    pres_unlock();
    for (size_t i = 0; i < n; i++) ev_unref(evs[i]);
    /* The array is reused for the turn after next; only this loop touches spare. */
    if (!pl->spare) {
        pl->spare = evs;
        pl->capspare = cap;
    } else {
        free(evs);
    }
}

/* ---- per-loop state ---- */
static ploop_t *ploop_get(sb_loop_t *loop)
{
    ploop_t *pl = loop->layer[SB_LAYER_PRESENCE];
    if (pl == STOPPED) return NULL;
    if (pl) return pl;
    pl = calloc(1, sizeof *pl);
    if (!pl) return NULL;
    pl->loop = loop;
    uv_timer_init(&loop->uv, &pl->timer);
    pl->timer.data = pl;
    pres_lock();
    loop->layer[SB_LAYER_PRESENCE] = pl;
    P.nploops++;
    pres_unlock();
    return pl;
}

/* Frees a stopped loop's presence state once its timer is closed and its
 * last connection record is gone; the last loop to go frees the model. */
static void ploop_maybe_free(ploop_t *pl)
{
    if (!pl->timer_closed || pl->npc) return;
    pres_lock();
    pl->loop->layer[SB_LAYER_PRESENCE] = STOPPED;
    for (size_t i = 0; i < pl->nout; i++) {
        pres_chan_release(pl->out[i]->ch);
        ev_unref(pl->out[i]);
    }
    if (--P.nploops == 0 && P.stopping) pres_model_clear();
    pres_unlock();
    free(pl->out);
    free(pl->spare);
    sb_buf_free(&pl->scratch);
    free(pl);
}

static void timer_closed_cb(uv_handle_t *h)
{
    ploop_t *pl = h->data;
    pl->timer_closed = true;
    ploop_maybe_free(pl);
}

static void on_loop_stop(sb_loop_t *loop)
{
    ploop_t *pl = loop->layer[SB_LAYER_PRESENCE];
    pres_lock();
    P.stopping = true;
    if (!pl) loop->layer[SB_LAYER_PRESENCE] = STOPPED;
    pres_unlock();
    if (!pl || pl == STOPPED) return;
    pl->stopping = true;
    uv_timer_stop(&pl->timer);
    uv_close((uv_handle_t *)&pl->timer, timer_closed_cb);
}

/* Makes sure the timer fires by `due` (never before the next loop turn). */
static void arm(ploop_t *pl, int64_t due)
{
    if (pl->stopping || !due) return;
    if (pl->timer_due && pl->timer_due <= due) return;
    int64_t now = now_ms();
    pl->timer_due = due;
    uv_timer_start(&pl->timer, timer_cb, (uint64_t)(due > now ? due - now : 0), 0);
}

/* ---- replication of local changes to the cluster ---- */
enum { REPL_ENTER, REPL_UPDATE, REPL_LEAVE };

/* Hands a change of local member m to the cluster layer, lock held, right
 * where the model changed (for a leave: just before), so that the order of
 * the replicated changes is the order of the model's. */
static void replicate(int kind, const pres_member_t *m)
{
    const sb_presence_repl_t *r = P.repl;
    if (!r) return;
    size_t nl;
    const char *name = pres_chan_name(pres_member_chan(m), &nl);
    sb_str_t ch = sb_str(name, nl), cid = pres_member_client_id(m);
    uint64_t seq = ++P.repl_seq;
    if (kind == REPL_LEAVE) {
        r->leave(seq, ch, cid);
        return;
    }
    size_t jl;
    const char *j = pres_member_json(m, &jl);
    sb_str_t uid = pres_member_user_id(m), json = sb_str(j, jl);
    if (kind == REPL_ENTER) r->enter(seq, ch, cid, uid, json);
    else r->update(seq, ch, cid, uid, json);
}

/* ---- memberships ---- */
static void member_json(ploop_t *pl, pmemb_t *pm, const char *state, size_t len)
{
    pl->scratch.len = 0;
    sb_buf_put(&pl->scratch, pm->prefix, pm->prefix_len);
    sb_buf_put(&pl->scratch, state, len);
    sb_buf_put(&pl->scratch, "}", 1);
}

static void unqueue(ploop_t *pl, pmemb_t *pm)
{
    if (!pm->queued) return;
    if (pm->pprev) pm->pprev->pnext = pm->pnext;
    else pl->pending = pm->pnext;
    if (pm->pnext) pm->pnext->pprev = pm->pprev;
    pm->pnext = pm->pprev = NULL;
    pm->queued = false;
}

/* Broadcasts a state now (lock held by the caller). */
static void broadcast_locked(ploop_t *pl, pmemb_t *pm, const char *state, size_t len)
{
    member_json(pl, pm, state, len);
    if (pl->scratch.oom) {
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory building a presence state", "%s", "");
        pl->scratch.oom = false;
        return;
    }
    /* Remote nodes get exactly the states local readers get: this one. */
    if (pres_update(pm->m, sb_str(pl->scratch.p, pl->scratch.len)) == 0)
        replicate(REPL_UPDATE, pm->m);
}

static void live_list(pconn_t *pc)
{
    /* --presence-timeout 0 turns stale timeouts (and their pings) off. */
    if (pc->listed || !pc->ws || sb_cfg.presence_timeout_ms <= 0) return;
    ploop_t *pl = pc->pl;
    pc->lprev = NULL;
    pc->lnext = pl->live;
    if (pl->live) pl->live->lprev = pc;
    pl->live = pc;
    pc->listed = true;
    pc->last_alive = pc->last_ping = now_ms();
    arm(pl, pc->last_alive + LIVE_SCAN_MS);
}

static void live_unlist(pconn_t *pc)
{
    if (!pc->listed) return;
    if (pc->lprev) pc->lprev->lnext = pc->lnext;
    else pc->pl->live = pc->lnext;
    if (pc->lnext) pc->lnext->lprev = pc->lprev;
    pc->listed = false;
}

static pmemb_t *memb_find(pconn_t *pc, sb_str_t ch, pmemb_t ***link)
{
    for (pmemb_t **p = &pc->membs; *p; p = &(*p)->next) {
        size_t nl;
        const char *name = pres_chan_name((*p)->ch, &nl);
        if (nl == ch.len && !memcmp(name, ch.p, nl)) {
            if (link) *link = p;
            return *p;
        }
    }
    return NULL;
}

/* Enters pc into channel `name`. info and state are JSON texts. Returns 0 or
 * an error to report. */
static sb_err_t memb_enter(pconn_t *pc, sb_str_t name, sb_str_t user, sb_str_t info, sb_str_t state)
{
    ploop_t *pl = pc->pl;
    if ((int64_t)pc->nmembs >= sb_cfg.max_subscriptions) return SB_ERR_TOO_MANY_SUBS;
    pmemb_t *pm = calloc(1, sizeof *pm);
    if (!pm) return SB_ERR_INTERNAL;
    pm->pc = pc;
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"clientId\":\"");
    sb_buf_put(&b, pc->cid, pc->cid_len);
    sb_buf_puts(&b, "\",\"userId\":");
    if (user.len) sb_buf_json_str(&b, user.p, user.len);
    else sb_buf_printf(&b, "\"%.*s\"", (int)pc->cid_len, pc->cid);
    sb_buf_puts(&b, ",\"info\":");
    sb_buf_put(&b, info.p, info.len);
    sb_buf_puts(&b, ",\"state\":");
    if (b.oom) {
        sb_buf_free(&b);
        free(pm);
        return SB_ERR_INTERNAL;
    }
    pm->prefix = b.p;
    pm->prefix_len = (uint32_t)b.len;
    member_json(pl, pm, state.p, state.len);
    sb_err_t err = SB_OK;
    int64_t now = now_ms();
    pres_lock();
    pres_chan_t *ch = pres_chan_get(name, true, sb_cfg.max_channels);
    if (!ch) err = SB_ERR_CHANNEL_LIMIT;
    else if (pl->scratch.oom) err = SB_ERR_INTERNAL;
    else {
        pm->m = pres_enter(ch, 0, sb_str(pc->cid, pc->cid_len),
                           user.len ? user : sb_str(pc->cid, pc->cid_len),
                           sb_str(pl->scratch.p, pl->scratch.len), pm, now);
        if (!pm->m) {
            err = SB_ERR_INTERNAL;
            pres_chan_maybe_free(ch);
        } else {
            replicate(REPL_ENTER, pm->m);
        }
    }
    if (!err) P.used = true;
    pres_unlock();
    pl->scratch.oom = false;
    if (err) {
        free(pm->prefix);
        free(pm);
        return err;
    }
    pm->ch = ch;
    pres_throttle_sent(&pm->th, now);
    pm->next = pc->membs;
    pc->membs = pm;
    pc->nmembs++;
    live_list(pc);
    return SB_OK;
}

/* Takes a new state for the member: out now, or pending for the throttle. */
static void memb_update(pmemb_t *pm, const char *state, size_t len)
{
    ploop_t *pl = pm->pc->pl;
    int64_t now = now_ms();
    if (pres_throttle_offer(&pm->th, now, sb_cfg.presence_throttle_ms)) {
        pres_lock();
        broadcast_locked(pl, pm, state, len);
        pres_unlock();
        return;
    }
    if (pm->queued) BUMP(pl, coalesced, 1); /* the older pending state never goes out */
    if (pm->pend_cap < len + 1) {
        char *p = malloc(len + 1);
        if (!p) {
            sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory keeping a presence state", "%s",
                               "");
            return;
        }
        free(pm->pend);
        pm->pend = p;
        pm->pend_cap = (uint32_t)len + 1;
    }
    memcpy(pm->pend, state, len);
    pm->pend[len] = 0;
    pm->pend_len = (uint32_t)len;
    if (!pm->queued) {
        pm->queued = true;
        pm->pprev = NULL;
        pm->pnext = pl->pending;
        if (pl->pending) pl->pending->pprev = pm;
        pl->pending = pm;
    }
    /* Flushes are grouped on a grid of a sixth of the interval: never early,
     * and many members' trailing edges share one timer and one batch. */
    int64_t grid = sb_cfg.presence_throttle_ms / 6;
    int64_t due = pres_throttle_due(&pm->th, sb_cfg.presence_throttle_ms);
    arm(pl, grid > 1 ? (due + grid - 1) / grid * grid : due);
}

/* Leaves; the lock is held by the caller (several leaves share one). */
static void memb_leave_locked(pmemb_t *pm, int64_t now)
{
    unqueue(pm->pc->pl, pm);
    /* Every way a local member goes (leave op, close, stale timeout, SSE
     * close) comes through here. */
    replicate(REPL_LEAVE, pm->m);
    pres_leave(pm->m, now);
    free(pm->prefix);
    free(pm->pend);
    free(pm);
}

static void memb_leave(pconn_t *pc, pmemb_t **link)
{
    pmemb_t *pm = *link;
    *link = pm->next;
    pc->nmembs--;
    int64_t now = now_ms();
    pres_lock();
    memb_leave_locked(pm, now);
    int64_t g = pres_grace_next();
    pres_unlock();
    arm(pc->pl, g);
    if (!pc->nmembs) live_unlist(pc);
}

static void leave_all(pconn_t *pc)
{
    if (!pc->membs) return;
    int64_t now = now_ms();
    pres_lock();
    while (pc->membs) {
        pmemb_t *pm = pc->membs;
        pc->membs = pm->next;
        memb_leave_locked(pm, now);
    }
    int64_t g = pres_grace_next();
    pres_unlock();
    pc->nmembs = 0;
    live_unlist(pc);
    arm(pc->pl, g);
}

/* ---- readers ---- */
static sb_err_t reader_add(pconn_t *pc, sb_str_t name)
{
    ploop_t *pl = pc->pl;
    int l = pl->loop->id;
    for (preader_t *r = pc->readers; r; r = r->next) {
        size_t nl;
        const char *n = pres_chan_name(r->ch, &nl);
        if (nl == name.len && !memcmp(n, name.p, nl)) return SB_OK;
    }
    preader_t *r = calloc(1, sizeof *r);
    if (!r) return SB_ERR_INTERNAL;
    r->pc = pc;
    sb_err_t err = SB_OK;
    pres_lock();
    pres_chan_t *ch = pres_chan_get(name, true, sb_cfg.max_channels);
    chglue_t *g = ch ? *pres_chan_glue(ch) : NULL;
    if (!ch) {
        err = SB_ERR_CHANNEL_LIMIT;
    } else if (!g && !(g = calloc(1, sizeof *g + (size_t)sb_net.nloops * sizeof(chloop_t)))) {
        err = SB_ERR_INTERNAL;
    } else {
        *pres_chan_glue(ch) = g;
        chloop_t *cl = &g->lr[l];
        if (cl->n == cl->cap) {
            uint32_t cap = cl->cap ? cl->cap * 2 : 4;
            preader_t **nr = realloc(cl->r, cap * sizeof *nr);
            if (nr) {
                cl->r = nr;
                cl->cap = cap;
            }
        }
        if (cl->n == cl->cap) {
            err = SB_ERR_INTERNAL;
        } else {
            r->idx = cl->n;
            cl->r[cl->n++] = r;
            g->nreaders++;
            r->ch = ch;
            pres_chan_hold(ch);
        }
    }
    if (err && ch) pres_chan_maybe_free(ch);
    pres_unlock();
    if (err) {
        free(r);
        return err;
    }
    r->next = pc->readers;
    pc->readers = r;
    /* The snapshot is taken after registering: every change after it reaches
     * this reader through the outbox, every one before is in the sync. */
    sb_frame_t *f = build_sync(r);
    if (f && conn_open(pc->c)) {
        BUMP(pl, frames, 1);
        BUMP(pl, bytes, f->len);
        sb_conn_send(pc->c, f, r->ch);
    } else if (f) {
        sb_frame_unref(f);
    }
    return SB_OK;
}

static void reader_free(preader_t *r)
{
    ploop_t *pl = r->pc->pl;
    pres_lock();
    chglue_t *g = *pres_chan_glue(r->ch);
    chloop_t *cl = &g->lr[pl->loop->id];
    preader_t *moved = cl->r[--cl->n];
    cl->r[r->idx] = moved;
    moved->idx = r->idx;
    g->nreaders--;
    pres_chan_release(r->ch);
    pres_unlock();
    free(r);
}

static void reader_remove(pconn_t *pc, sb_str_t name)
{
    for (preader_t **p = &pc->readers; *p; p = &(*p)->next) {
        size_t nl;
        const char *n = pres_chan_name((*p)->ch, &nl);
        if (nl != name.len || memcmp(n, name.p, nl)) continue;
        preader_t *r = *p;
        *p = r->next;
        reader_free(r);
        return;
    }
}

/* ---- connection records ---- */
static pconn_t *pconn_new(sb_conn_t *c, sb_ws_t *ws)
{
    ploop_t *pl = ploop_get(c->loop);
    if (!pl || pl->stopping) return NULL;
    pconn_t *pc = calloc(1, sizeof *pc);
    if (!pc) return NULL;
    pc->c = c;
    pc->ws = ws;
    pc->pl = pl;
    pc->cid_len = (uint8_t)snprintf(pc->cid, sizeof pc->cid, "%s%llu", P.cid_prefix,
                                    (unsigned long long)c->id);
    pl->npc++;
    return pc;
}

static void pconn_free(pconn_t *pc)
{
    ploop_t *pl = pc->pl;
    leave_all(pc);
    while (pc->readers) {
        preader_t *r = pc->readers;
        pc->readers = r->next;
        reader_free(r);
    }
    free(pc);
    pl->npc--;
    if (pl->stopping) ploop_maybe_free(pl);
}

/* ---- the timer: throttle flushes, pings, stale timeouts, grace ---- */
static void timer_cb(uv_timer_t *t)
{
    ploop_t *pl = t->data;
    int64_t now = now_ms(), next = 0;
    pl->timer_due = 0;
#define NEXT(x) do { int64_t x_ = (x); if (x_ && (!next || x_ < next)) next = x_; } while (0)
    /* Trailing edges that are due go out together, one lock for all. */
    if (pl->pending) {
        bool locked = false;
        for (pmemb_t *pm = pl->pending, *pn; pm; pm = pn) {
            pn = pm->pnext;
            int64_t due = pres_throttle_due(&pm->th, sb_cfg.presence_throttle_ms);
            if (due > now) {
                NEXT(due);
                continue;
            }
            if (!locked) pres_lock();
            locked = true;
            unqueue(pl, pm);
            pres_throttle_sent(&pm->th, now);
            broadcast_locked(pl, pm, pm->pend, pm->pend_len);
        }
        if (locked) pres_unlock();
    }
    if (pl->live && now >= pl->next_live) {
        int64_t timeout = sb_cfg.presence_timeout_ms, ping_every = timeout / 3;
        for (pconn_t *pc = pl->live, *pn; pc; pc = pn) {
            pn = pc->lnext;
            if (!conn_open(pc->c)) continue;
            if (now - pc->last_alive >= timeout) {
                /* Silent for the whole timeout, pings included: gone. */
                BUMP(pl, stale, 1);
                sb_log_ratelimited(SB_LOG_INFO, 1000, "presence member timed out",
                                   "conn=%llu peer=%s silent_ms=%lld",
                                   (unsigned long long)pc->c->id, pc->c->peer,
                                   (long long)(now - pc->last_alive));
                leave_all(pc);
                sb_conn_close(pc->c);
                continue;
            }
            if (now - pc->last_alive >= ping_every && now - pc->last_ping >= ping_every) {
                pc->last_ping = now;
                BUMP(pl, pings, 1);
                sb_ws_ping(pc->ws);
            }
        }
        pl->next_live = now + (timeout / 8 < LIVE_SCAN_MS ? (timeout / 8 > 10 ? timeout / 8 : 10)
                                                          : LIVE_SCAN_MS);
    }
    if (pl->live) NEXT(pl->next_live);
    pres_lock();
    NEXT(pres_grace_expire(now));
    pres_unlock();
    if (pl->pending) {
        /* Keep the grid: at most one wakeup per sixth of the interval. */
        int64_t grid = sb_cfg.presence_throttle_ms / 6;
        if (grid > 1 && next) next = (next + grid - 1) / grid * grid;
    }
#undef NEXT
    arm(pl, next);
}

/* ---- WebSocket ---- */
static pconn_t *ws_pconn(sb_ws_t *ws, bool create)
{
    void **slot = sb_ws_presence_slot(ws);
    if (!*slot && create) *slot = pconn_new(sb_ws_conn(ws), ws);
    return *slot;
}

static bool channel_of(const cJSON *msg, sb_str_t *out)
{
    const cJSON *ch = cJSON_GetObjectItemCaseSensitive(msg, "channel");
    if (!cJSON_IsString(ch)) return false;
    *out = sb_str(ch->valuestring, strlen(ch->valuestring));
    return sb_valid_channel(*out);
}

/* Prints an optional JSON object member of msg into *out (malloc'd): "{}"
 * when absent. Returns false with a message for a non-object or a too big one. */
static bool object_of(const cJSON *msg, const char *key, size_t max, char **out, const char **why)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(msg, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) {
        *out = strdup("{}");
    } else if (!cJSON_IsObject(v)) {
        *why =
            !strcmp(key, "state") ? "state must be a JSON object." : "info must be a JSON object.";
        return false;
    } else {
        *out = cJSON_PrintUnformatted(v);
    }
    if (!*out) {
        *why = "Out of memory.";
        return false;
    }
    if (strlen(*out) > max) {
        free(*out);
        *out = NULL;
        *why = !strcmp(key, "state") ? "state is larger than 4 KiB." : "info is larger than 1 KiB.";
        return false;
    }
    return true;
}

static void op_presence(sb_ws_t *ws, const cJSON *msg, const cJSON *ref)
{
    sb_str_t name;
    if (!channel_of(msg, &name)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_CHANNEL, NULL);
        return;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(msg, "action");
    const char *a = cJSON_IsString(act) ? act->valuestring : "";
    bool enter = !strcmp(a, "enter"), update = !strcmp(a, "update"), leave = !strcmp(a, "leave");
    if (!enter && !update && !leave) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_PARAM, "action must be enter, update or leave.");
        return;
    }
    pconn_t *pc = ws_pconn(ws, !leave);
    pmemb_t **link = NULL;
    pmemb_t *pm = pc ? memb_find(pc, name, &link) : NULL;
    if (leave) {
        if (pm) memb_leave(pc, link);
        sb_ws_reply_ok(ws, ref, NULL);
        return;
    }
    if (!pc) {
        sb_ws_reply_error(ws, ref, SB_ERR_SHUTTING_DOWN, NULL);
        return;
    }
    const char *why = NULL;
    char *state = NULL;
    if (update && !cJSON_GetObjectItemCaseSensitive(msg, "state")) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_BODY, "update needs a state object.");
        return;
    }
    if (!object_of(msg, "state", MAX_STATE, &state, &why)) {
        sb_ws_reply_error(ws, ref, SB_ERR_INVALID_BODY, why);
        return;
    }
    if (pm) {
        /* Already a member: enter and update both just set the state. */
        memb_update(pm, state, strlen(state));
        free(state);
        if (enter || ref) {
            char extra[64];
            snprintf(extra, sizeof extra, ",\"clientId\":\"%s\"", pc->cid);
            sb_ws_reply_ok(ws, ref, extra);
        }
        return;
    }
    /* Entering (an update of a channel not entered yet enters it). */
    char *info = NULL;
    sb_str_t user = {0};
    sb_err_t err = SB_OK;
    if (sb_cfg.jwt_secret[0]) {
        if (!sb_ws_may_subscribe(ws, name)) err = SB_ERR_FORBIDDEN;
        const char *ti = sb_ws_info(ws);
        info = strdup(ti[0] ? ti : "{}");
        user = sb_str(sb_ws_user(ws), strlen(sb_ws_user(ws)));
    } else {
        const cJSON *uid = cJSON_GetObjectItemCaseSensitive(msg, "userId");
        if (uid && !(cJSON_IsString(uid) && uid->valuestring[0] &&
                     strlen(uid->valuestring) <= MAX_USER_ID)) {
            sb_ws_reply_error(ws, ref, SB_ERR_INVALID_BODY,
                              "userId must be a string of 1-128 bytes.");
            free(state);
            return;
        }
        if (uid) user = sb_str(uid->valuestring, strlen(uid->valuestring));
        if (!object_of(msg, "info", MAX_INFO, &info, &why)) {
            sb_ws_reply_error(ws, ref, SB_ERR_INVALID_BODY, why);
            free(state);
            return;
        }
    }
    if (!err && !info) err = SB_ERR_INTERNAL;
    if (!err)
        err = memb_enter(pc, name, user, sb_str(info, strlen(info)), sb_str(state, strlen(state)));
    free(info);
    free(state);
    if (err) {
        sb_ws_reply_error(ws, ref, err, NULL);
        return;
    }
    char extra[64];
    snprintf(extra, sizeof extra, ",\"clientId\":\"%s\"", pc->cid);
    sb_ws_reply_ok(ws, ref, extra);
}

static void ws_subscribed(sb_ws_t *ws, sb_str_t channel, const cJSON *msg)
{
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(msg, "presence"))) return;
    pconn_t *pc = ws_pconn(ws, true);
    sb_err_t err = pc ? reader_add(pc, channel) : SB_ERR_SHUTTING_DOWN;
    if (err) {
        const cJSON *ref = cJSON_GetObjectItemCaseSensitive(msg, "ref");
        if (ref && !cJSON_IsNumber(ref) && !cJSON_IsString(ref)) ref = NULL;
        sb_ws_reply_error(ws, ref, err,
                          "The subscription is live, but its presence could not be started.");
    }
}

static void ws_unsubscribed(sb_ws_t *ws, sb_str_t channel)
{
    pconn_t *pc = ws_pconn(ws, false);
    if (pc) reader_remove(pc, channel);
}

static void ws_closed(sb_ws_t *ws)
{
    void **slot = sb_ws_presence_slot(ws);
    if (*slot) pconn_free(*slot);
    *slot = NULL;
}

static void ws_alive(sb_ws_t *ws)
{
    pconn_t *pc = *sb_ws_presence_slot(ws);
    if (pc && pc->listed) pc->last_alive = now_ms();
}

/* ---- SSE ---- */
static void sse_open(sb_conn_t *c, void **slot, const sb_str_t *names, size_t n, const char *user,
                     const char *info)
{
    pconn_t *pc = pconn_new(c, NULL);
    if (!pc) return;
    *slot = pc;
    for (size_t i = 0; i < n; i++) {
        reader_add(pc, names[i]);
        /* A stream with a token is a member of its channels while it is open. */
        if (user[0])
            memb_enter(pc, names[i], sb_str(user, strlen(user)),
                       info[0] ? sb_str(info, strlen(info)) : SB_STR("{}"), SB_STR("{}"));
    }
}

static void sse_close(sb_conn_t *c, void **slot)
{
    if (*slot) pconn_free(*slot);
    *slot = NULL;
}

/* ---- cluster: replication hooks and remote members ----
 * The cluster layer calls these from its own thread (not a loop): they take
 * the model lock, and what they emit reaches the readers through on_emit,
 * which only touches state under that lock and posts drain tasks with
 * sb_loop_post (thread-safe). */
void sb_presence_set_repl(const sb_presence_repl_t *r)
{
    pres_lock();
    P.repl = r;
    if (r && r->client_prefix)
        snprintf(P.cid_prefix, sizeof P.cid_prefix, "%s", r->client_prefix);
    pres_unlock();
}

/* Enters or replaces remote member (node, cid) of channel; lock held.
 * `always`: emit update even when the JSON did not change (a broadcast of
 * the origin's readers); otherwise an unchanged member emits nothing. */
static int remote_put(uint16_t node, sb_str_t channel, sb_str_t cid, sb_str_t uid, sb_str_t json,
                      bool always)
{
    pres_chan_t *ch = pres_chan_get(channel, true, sb_cfg.max_channels);
    if (!ch) {
        sb_log_ratelimited(SB_LOG_WARN, 1000, "remote presence member not kept (channel limit)",
                           "channel=%.*s", (int)channel.len, channel.p);
        return SB_ELIMIT;
    }
    int rc = 0;
    int64_t now = now_ms();
    /* Held so that a leave below cannot free it under us. */
    pres_chan_hold(ch);
    pres_member_t *m = pres_member_find(ch, node, cid);
    if (m) {
        sb_str_t u = pres_member_user_id(m);
        if (u.len == uid.len && !memcmp(u.p, uid.p, uid.len)) {
            size_t jl;
            const char *j = pres_member_json(m, &jl);
            if (always || jl != json.len || memcmp(j, json.p, jl)) rc = pres_update(m, json);
            pres_chan_release(ch);
            return rc;
        }
        /* Another user under the same clientId: the origin's leave and enter
         * were missed here. */
        pres_leave(m, now);
    }
    if (pres_enter(ch, node, cid, uid, json, NULL, now)) P.used = true;
    else rc = SB_ENOMEM;
    pres_chan_release(ch);
    return rc;
}

int sb_presence_remote_enter(uint16_t node, sb_str_t channel, sb_str_t client_id,
                             sb_str_t user_id, sb_str_t member)
{
    pres_lock();
    int rc = remote_put(node, channel, client_id, user_id, member, false);
    pres_unlock();
    return rc;
}

int sb_presence_remote_update(uint16_t node, sb_str_t channel, sb_str_t client_id,
                              sb_str_t user_id, sb_str_t member)
{
    pres_lock();
    int rc = remote_put(node, channel, client_id, user_id, member, true);
    pres_unlock();
    return rc;
}

void sb_presence_remote_leave(uint16_t node, sb_str_t channel, sb_str_t client_id)
{
    pres_lock();
    pres_chan_t *ch = pres_chan_get(channel, false, 0);
    pres_member_t *m = ch ? pres_member_find(ch, node, client_id) : NULL;
    if (m) pres_leave(m, now_ms());
    pres_unlock();
}

size_t sb_presence_drop_node(uint16_t node)
{
    if (!node) return 0;
    pres_lock();
    size_t n = pres_drop_node(node, now_ms());
    pres_unlock();
    return n;
}

typedef struct {
    const pres_member_t **seen; /* sorted */
    size_t nseen;
    pres_member_t **gone;
    size_t ngone, capgone;
    bool oom;
} sweep_t;

static int ptr_cmp(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t) * (const void *const *)a, y = (uintptr_t) * (const void *const *)b;
    return x < y ? -1 : x > y;
}

static void sweep_cb(pres_member_t *m, void *ud)
{
    sweep_t *s = ud;
    const pres_member_t *key = m;
    if (s->nseen && bsearch(&key, s->seen, s->nseen, sizeof *s->seen, ptr_cmp)) return;
    if (s->ngone == s->capgone) {
        size_t cap = s->capgone ? s->capgone * 2 : 16;
        pres_member_t **n = realloc(s->gone, cap * sizeof *n);
        if (!n) {
            s->oom = true;
            return;
        }
        s->gone = n;
        s->capgone = cap;
    }
    s->gone[s->ngone++] = m;
}

void sb_presence_remote_sync(uint16_t node, const sb_presence_member_t *members, size_t n)
{
    if (!node) return;
    sweep_t s = {0};
    s.seen = n ? malloc(n * sizeof *s.seen) : NULL;
    pres_lock();
    /* Enters and updates first, leaves after: a user whose member was
     * replaced under a new clientId never looks offline. */
    for (size_t i = 0; i < n; i++) {
        const sb_presence_member_t *x = &members[i];
        /* A member that failed to update (memory) is still current: kept. */
        remote_put(node, x->channel, x->client_id, x->user_id, x->member, false);
        pres_chan_t *ch = pres_chan_get(x->channel, false, 0);
        const pres_member_t *m = ch ? pres_member_find(ch, node, x->client_id) : NULL;
        if (m && s.seen) s.seen[s.nseen++] = m;
    }
    if (n && !s.seen) {
        /* Without the list of what is current nothing can be told stale:
         * the next snapshot sweeps. */
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory reconciling remote presence",
                           "node=%u", (unsigned)node);
        pres_unlock();
        return;
    }
    if (s.nseen > 1) qsort(s.seen, s.nseen, sizeof *s.seen, ptr_cmp);
    pres_node_each(node, sweep_cb, &s);
    int64_t now = now_ms();
    /* A channel outlives the walk while any of its members is still listed. */
    for (size_t i = 0; i < s.ngone; i++) pres_leave(s.gone[i], now);
    pres_unlock();
    if (s.oom)
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory reconciling remote presence",
                           "node=%u", (unsigned)node);
    free(s.seen);
    free(s.gone);
}

typedef struct {
    sb_presence_each_fn fn;
    void *ud;
} each_t;

static void local_cb(pres_member_t *m, void *ud)
{
    each_t *e = ud;
    size_t nl, jl;
    const char *name = pres_chan_name(pres_member_chan(m), &nl);
    const char *j = pres_member_json(m, &jl);
    sb_presence_member_t x = {.channel = sb_str(name, nl),
                              .client_id = pres_member_client_id(m),
                              .user_id = pres_member_user_id(m),
                              .member = sb_str(j, jl)};
    e->fn(e->ud, &x);
}

uint64_t sb_presence_local_snapshot(sb_presence_each_fn fn, void *ud)
{
    each_t e = {fn, ud};
    pres_lock();
    pres_node_each(0, local_cb, &e);
    uint64_t seq = P.repl_seq;
    pres_unlock();
    return seq;
}

void sb_presence_grace_tick(void)
{
    pres_lock();
    pres_grace_expire(now_ms());
    pres_unlock();
}

int64_t sb_presence_remote_members(void)
{
    pres_totals_t t;
    pres_lock();
    pres_totals(&t);
    pres_unlock();
    return t.remote;
}

void sb_presence_remote_clear(void)
{
    pres_lock();
    /* Every loop is gone: what is left are remote members and users within
     * their grace period, which no loop will free any more. Otherwise the
     * last loop to go frees the model (ploop_maybe_free). */
    if (P.nploops == 0) pres_model_clear();
    pres_unlock();
}

/* ---- REST, info, metrics ---- */
void sb_presence_members_json(sb_str_t channel, sb_buf_t *out)
{
    sb_buf_puts(out, "{\"members\":");
    pres_lock();
    pres_chan_t *ch = pres_chan_get(channel, false, 0);
    if (ch) pres_snapshot(ch, out, NULL);
    else sb_buf_puts(out, "[]");
    pres_unlock();
    sb_buf_puts(out, "}");
}

int64_t sb_presence_count(sb_str_t channel)
{
    pres_lock();
    pres_chan_t *ch = pres_chan_get(channel, false, 0);
    int64_t n = ch ? pres_chan_members(ch) : 0;
    pres_unlock();
    return n;
}

static int http_presence(sb_conn_t *c, sb_http_ctx_t *x)
{
    sb_buf_t b = {0};
    sb_presence_members_json(x->tail, &b);
    if (b.oom) sb_http_error(c, SB_ERR_INTERNAL);
    else sb_http_respond(c, 200, "application/json", b.p, b.len, "Cache-Control: no-store\r\n");
    sb_buf_free(&b);
    return SB_HTTP_DONE;
}

/* Distinct userIds with a member. Until the first member ever enters, -1:
 * the dashboard then counts connections, as it did before presence existed. */
static int64_t active_users(void)
{
    pres_totals_t t;
    pres_lock();
    pres_totals(&t);
    bool used = P.used;
    pres_unlock();
    return used ? t.users : -1;
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

static void metrics(sb_buf_t *b, bool prom)
{
    pres_totals_t t;
    uint64_t c[8] = {0}; /* frames, bytes, batches, coalesced, stale, pings, resyncs, slow */
    /* Under the lock: a stopped loop's state is freed under it too. */
    pres_lock();
    pres_totals(&t);
    for (int i = 0; i < sb_net.nloops; i++) {
        ploop_t *pl = sb_net.loops[i]->layer[SB_LAYER_PRESENCE];
        if (!pl || pl == STOPPED) continue;
        c[0] += LOAD(pl->frames);
        c[1] += LOAD(pl->bytes);
        c[2] += LOAD(pl->batches);
        c[3] += LOAD(pl->coalesced);
        c[4] += LOAD(pl->stale);
        c[5] += LOAD(pl->pings);
        c[6] += LOAD(pl->resyncs);
        c[7] += LOAD(pl->slow);
    }
    pres_unlock();
    uint64_t events = LOAD(P.events);
    if (!prom) {
        sb_buf_printf(b,
                      ",\"presenceMembers\":%lld,\"presenceUsers\":%lld,\"presenceChannels\":%lld,"
                      "\"presenceChanges\":%llu,\"presenceFrames\":%llu,\"presenceBytes\":%llu",
                      (long long)t.members, (long long)t.users, (long long)t.channels,
                      (unsigned long long)events, (unsigned long long)c[0],
                      (unsigned long long)c[1]);
        return;
    }
#define G(name, help, v)                                                                           \
    sb_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name,           \
                  (long long)(v))
#define C(name, help, v)                                                                           \
    sb_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,         \
                  (unsigned long long)(v))
    G("switchboard_presence_members", "Presence members (connections) across channels.", t.members);
    G("switchboard_presence_users", "Distinct userIds with at least one presence member.", t.users);
    G("switchboard_presence_channels", "Channels with presence state.", t.channels);
    G("switchboard_presence_grace_users", "Users whose last member left, within the grace period.",
      t.grace);
    C("switchboard_presence_changes_total", "Presence changes (enter, update, leave, user.*).",
      events);
    C("switchboard_presence_frames_total",
      "Presence frames queued to readers (sync, change, batch).", c[0]);
    C("switchboard_presence_bytes_total", "Bytes of presence frames queued to readers.", c[1]);
    C("switchboard_presence_batches_total", "Presence frames that carried more than one change.",
      c[2]);
    C("switchboard_presence_coalesced_total",
      "State updates replaced by a newer one within the throttle.", c[3]);
    C("switchboard_presence_stale_total", "Members removed after the stale timeout.", c[4]);
    C("switchboard_presence_pings_total", "Pings sent to keep members alive.", c[5]);
    C("switchboard_presence_resyncs_total", "Readers resynchronized after falling behind.", c[6]);
    C("switchboard_presence_slow_closed_total", "Presence readers closed for falling behind.",
      c[7]);
#undef G
#undef C
}

void sb_presence_init(void)
{
    static const pres_hooks_t mh = {.emit = on_emit, .chan_free = on_chan_free};
    pres_model_init(&mh, sb_cfg.presence_grace_ms);
    sb_ws_register_op("presence", op_presence);
    static const sb_ws_hooks_t wh = {.subscribed = ws_subscribed,
                                     .unsubscribed = ws_unsubscribed,
                                     .closed = ws_closed,
                                     .alive = ws_alive};
    sb_ws_set_hooks(&wh);
    static const sb_sse_presence_hooks_t sh = {.open = sse_open, .close = sse_close};
    sb_sse_set_presence_hooks(&sh);
    sb_api_presence_handler = http_presence;
    sb_api_presence_count = sb_presence_count;
    sb_metrics_active_users = active_users;
    sb_metrics_register(metrics);
    sb_net_on_stop(on_loop_stop);
}
