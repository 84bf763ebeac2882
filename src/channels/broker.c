#define _GNU_SOURCE
#include "channels/channels.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config.h"
#include "core/json.h"

/* Per-loop subscriber list of one channel. Only its loop's thread touches it. */
typedef struct {
    sb_sub_t **subs;
    uint32_t n, cap;
    uint32_t iterating; /* > 0 while delivering: removals leave holes */
    bool dirty;
} chan_loop_t;

struct sb_chan {
    atomic_int _refs;
    uint32_t hash;
    uint32_t name_len;
    sb_chan_t *hnext;
    bool registered;
    /* Under the broker lock: */
    sb_msg_t **ring;
    uint32_t ring_cap, ring_head, ring_len;
    uint64_t evicted_upto; /* the highest id dropped from this channel's history */
    sb_msg_t *last;
    uint32_t *loop_nsubs; /* subscriptions per loop */
    int64_t nsubs;
    int64_t last_active_ms;
    uint32_t pending; /* durable mode: messages numbered but not yet on disk */
    /* Loop-private: */
    chan_loop_t *loops;
    void *presence;
    _Atomic uint64_t slow[3];
    char name[];
};

struct pub_wait;

typedef struct idem {
    struct idem *hnext, *fnext; /* hash chain, FIFO by insertion */
    uint32_t hash;
    uint64_t seq;
    int64_t expires_ms;
    struct pub_wait *pending; /* durable mode: the publish still waiting for the disk */
    bool failed;              /* its publish failed: the key is free again */
    uint16_t klen;
    char key[]; /* channel '\0' key */
} idem_t;

static struct {
    pthread_mutex_t mu;
    uint64_t seq;     /* last issued id */
    uint64_t visible; /* newest id put into history (durable mode: lags seq by the disk) */
    uint64_t floor;   /* ids below this were issued by an earlier life of this server */
    sb_chan_t **buckets;
    uint32_t nbuckets;
    int64_t nchans;
    uint64_t published, idem_hits;
    int64_t messages_kept, subscriptions;
    uint64_t gc_watermark; /* highest id of any history forgotten with its channel */
    idem_t **ibuckets;
    uint32_t nibuckets;
    idem_t *ifirst, *ilast;
    int64_t nidem;
    sb_store_append_fn store;
    sb_seq_limit_fn seq_limit;
    sb_cluster_publish_fn cluster; /* cluster mode: Redis numbers and orders every publish */
    atomic_bool quiesced; /* the loops are gone: completions only release memory */
    struct ack_queue *acks; /* durable mode: per loop id, acknowledgements to hand over */
    int nacks;
} B = {.mu = PTHREAD_MUTEX_INITIALIZER};

static sb_msg_formatter_t formatters[SB_FMT_COUNT];

#define IDEM_MAX 200000

static uint32_t hash_bytes(const char *p, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
    return h;
}

/* ---- messages ---- */
void sb_msg_unref(sb_msg_t *m)
{
    if (!m || atomic_fetch_sub_explicit(&m->_refs, 1, memory_order_acq_rel) != 1) return;
    for (int i = 0; i < SB_FMT_COUNT; i++) sb_frame_unref(atomic_load(&m->_frames[i]));
    sb_chan_unref(m->chan);
    free(m);
}

void sb_msg_register_format(int fmt, sb_msg_formatter_t fn) { formatters[fmt] = fn; }

sb_frame_t *sb_msg_frame(sb_msg_t *m, int fmt)
{
    sb_frame_t *f = atomic_load_explicit(&m->_frames[fmt], memory_order_acquire);
    if (f) return f;
    if (!formatters[fmt]) return NULL;
    sb_frame_t *built = formatters[fmt](m);
    if (!built) return NULL;
    sb_frame_t *expected = NULL;
    if (atomic_compare_exchange_strong(&m->_frames[fmt], &expected, built)) return built;
    sb_frame_unref(built); /* another loop won the race; use its copy */
    return expected;
}

void sb_msg_data_json(const sb_msg_t *m, sb_buf_t *b)
{
    if (m->flags & SB_MSG_BINARY) {
        /* A binary room frame reads back as base64 text. */
        static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const uint8_t *d = (const uint8_t *)m->data;
        sb_buf_put(b, "\"", 1);
        for (uint32_t i = 0; i < m->data_len; i += 3) {
            uint32_t v = (uint32_t)d[i] << 16;
            if (i + 1 < m->data_len) v |= (uint32_t)d[i + 1] << 8;
            if (i + 2 < m->data_len) v |= d[i + 2];
            char q[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], i + 1 < m->data_len ? tbl[(v >> 6) & 63] : '=',
                         i + 2 < m->data_len ? tbl[v & 63] : '='};
            sb_buf_put(b, q, 4);
        }
        sb_buf_put(b, "\"", 1);
    } else if (m->flags & SB_MSG_RAW) {
        /* A text room frame: its JSON value when it is one JSON text (the
         * seeds' cursor and chat frames are), else a string. */
        bool obj;
        if (m->data_len && sb_json_scan(m->data, m->data_len, NULL, NULL, 0, &obj))
            sb_buf_put(b, m->data, m->data_len);
        else
            sb_buf_json_str(b, m->data, m->data_len);
    } else {
        sb_buf_put(b, m->data, m->data_len);
    }
}

void sb_msg_json(const sb_msg_t *m, sb_buf_t *b)
{
    char id[24];
    size_t nl;
    const char *name = sb_chan_name(m->chan, &nl);
    sb_cursor_encode(m->seq, id);
    sb_buf_printf(b, "{\"id\":\"%s\",\"channel\":", id);
    sb_buf_json_str(b, name, nl);
    sb_buf_puts(b, ",\"event\":");
    sb_buf_json_str(b, m->event, m->event_len);
    sb_buf_puts(b, ",\"data\":");
    sb_msg_data_json(m, b);
    sb_buf_printf(b, ",\"time\":%lld}", (long long)m->time_ms);
}

static sb_frame_t *fmt_json(const sb_msg_t *m)
{
    sb_buf_t b = {0};
    sb_msg_json(m, &b);
    sb_frame_t *f = sb_buf_to_frame(&b);
    sb_buf_free(&b);
    return f;
}

/* ---- cursors ---- */
bool sb_cursor_decode(sb_str_t s, sb_since_t *out)
{
    uint64_t v;
    if (!sb_str_to_u64(s, &v)) return false;
    if (s.len > 1 && s.p[0] == '0') return false; /* one spelling per cursor */
    out->set = true;
    out->seq = v;
    return true;
}

size_t sb_cursor_encode(uint64_t seq, char *out)
{
    return sb_u64_dec(seq, out);
}

/* ---- channels ---- */
const char *sb_chan_name(const sb_chan_t *ch, size_t *len)
{
    if (len) *len = ch->name_len;
    return ch->name;
}

sb_chan_t *sb_chan_ref(sb_chan_t *ch)
{
    atomic_fetch_add_explicit(&ch->_refs, 1, memory_order_relaxed);
    return ch;
}

void sb_chan_unref(sb_chan_t *ch)
{
    if (!ch || atomic_fetch_sub_explicit(&ch->_refs, 1, memory_order_acq_rel) != 1) return;
    for (int i = 0; i < sb_net.nloops; i++) free(ch->loops[i].subs);
    free(ch->loops);
    free(ch->loop_nsubs);
    free(ch->ring);
    free(ch);
}

void sb_chan_count_slow(sb_chan_t *ch, int policy)
{
    if (policy >= 0 && policy < 3) atomic_fetch_add_explicit(&ch->slow[policy], 1, memory_order_relaxed);
}

void **sb_chan_presence_slot(sb_chan_t *ch) { return &ch->presence; }

static sb_chan_t *chan_find(sb_str_t name, uint32_t h)
{
    if (!B.nbuckets) return NULL;
    for (sb_chan_t *c = B.buckets[h & (B.nbuckets - 1)]; c; c = c->hnext)
        if (c->hash == h && c->name_len == name.len && !memcmp(c->name, name.p, name.len)) return c;
    return NULL;
}

static void chan_rehash(void)
{
    uint32_t nb = B.nbuckets ? B.nbuckets * 2 : 1024;
    sb_chan_t **nbk = calloc(nb, sizeof *nbk);
    if (!nbk) return; /* keep the old table: longer chains, still correct */
    for (uint32_t i = 0; i < B.nbuckets; i++)
        for (sb_chan_t *c = B.buckets[i], *n; c; c = n) {
            n = c->hnext;
            c->hnext = nbk[c->hash & (nb - 1)];
            nbk[c->hash & (nb - 1)] = c;
        }
    free(B.buckets);
    B.buckets = nbk;
    B.nbuckets = nb;
}

/* Broker lock held. Returns the channel (registry's reference) or NULL at the limit. */
static sb_chan_t *chan_get(sb_str_t name, bool create)
{
    uint32_t h = hash_bytes(name.p, name.len);
    sb_chan_t *c = chan_find(name, h);
    if (c || !create) return c;
    if (B.nchans >= sb_cfg.max_channels) {
        sb_log_ratelimited(SB_LOG_WARN, 1000, "channel limit reached", "max=%lld",
                           (long long)sb_cfg.max_channels);
        return NULL;
    }
    if ((uint32_t)B.nchans >= B.nbuckets) chan_rehash();
    c = calloc(1, sizeof *c + name.len + 1);
    if (!c) return NULL;
    c->loops = calloc((size_t)sb_net.nloops, sizeof *c->loops);
    c->loop_nsubs = calloc((size_t)sb_net.nloops, sizeof *c->loop_nsubs);
    if (!c->loops || !c->loop_nsubs) {
        free(c->loops);
        free(c->loop_nsubs);
        free(c);
        return NULL;
    }
    atomic_init(&c->_refs, 1);
    memcpy(c->name, name.p, name.len);
    c->name_len = (uint32_t)name.len;
    c->hash = h;
    /* A channel forgotten earlier may have had history: anything older than
     * the forgotten ids cannot be resumed without a reset. */
    c->evicted_upto = B.gc_watermark;
    c->last_active_ms = sb_now_ms();
    c->registered = true;
    c->hnext = B.buckets[h & (B.nbuckets - 1)];
    B.buckets[h & (B.nbuckets - 1)] = c;
    B.nchans++;
    return c;
}

static void chan_unregister(sb_chan_t *c)
{
    sb_chan_t **pp = &B.buckets[c->hash & (B.nbuckets - 1)];
    while (*pp != c) pp = &(*pp)->hnext;
    *pp = c->hnext;
    c->registered = false;
    B.nchans--;
    if (c->evicted_upto > B.gc_watermark) B.gc_watermark = c->evicted_upto;
    sb_msg_t *last = c->last;
    c->last = NULL;
    if (last && last->seq > B.gc_watermark) B.gc_watermark = last->seq;
    sb_msg_unref(last);
    sb_chan_unref(c);
}

/* ---- history ring (broker lock held) ---- */
static sb_msg_t *ring_at(sb_chan_t *c, uint32_t i) { return c->ring[(c->ring_head + i) % c->ring_cap]; }

static void msg_release(sb_msg_t *m);

static void ring_drop_oldest(sb_chan_t *c)
{
    sb_msg_t *m = c->ring[c->ring_head];
    c->ring[c->ring_head] = NULL;
    c->ring_head = (c->ring_head + 1) % c->ring_cap;
    c->ring_len--;
    if (m->seq > c->evicted_upto) c->evicted_upto = m->seq;
    B.messages_kept--;
    msg_release(m);
}

static void ring_expire(sb_chan_t *c, int64_t now)
{
    if (sb_cfg.history_ttl_ms <= 0) return;
    while (c->ring_len && ring_at(c, 0)->time_ms < now - sb_cfg.history_ttl_ms) ring_drop_oldest(c);
}

static void ring_push(sb_chan_t *c, sb_msg_t *m)
{
    uint32_t max = (uint32_t)sb_cfg.history_size;
    if (max == 0) return;
    if (c->ring_len == max) ring_drop_oldest(c);
    if (c->ring_len == c->ring_cap) {
        uint32_t cap = c->ring_cap ? c->ring_cap * 2 : 8;
        if (cap > max) cap = max;
        sb_msg_t **r = malloc(cap * sizeof *r);
        if (!r) {
            /* Cannot grow: keep the bound we have by dropping the oldest. */
            ring_drop_oldest(c);
        } else {
            for (uint32_t i = 0; i < c->ring_len; i++) r[i] = ring_at(c, i);
            free(c->ring);
            c->ring = r;
            c->ring_cap = cap;
            c->ring_head = 0;
        }
    }
    c->ring[(c->ring_head + c->ring_len) % c->ring_cap] = sb_msg_ref(m);
    c->ring_len++;
    B.messages_kept++;
}

/* Index of the first kept message with id > seq. */
static uint32_t ring_find_after(sb_chan_t *c, uint64_t seq)
{
    uint32_t lo = 0, hi = c->ring_len;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (ring_at(c, mid)->seq <= seq) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* True when resuming after `since` on c would skip messages we no longer have. */
static bool has_gap(sb_chan_t *c, sb_since_t since)
{
    if (!since.set || since.seq == 0) return false;
    if (since.seq < c->evicted_upto) return true;
    /* A cursor from before this server's history began (a restart in memory
     * mode), or from the future (another server): we cannot know what it missed.
     * In a cluster a cursor past this node's newest id is normal: another node
     * acknowledged a message this one is about to apply, and everything up to
     * the cursor is then skipped as it arrives. */
    if (since.seq + 1 < B.floor) return true;
    if (since.seq > B.seq && !B.cluster) return true;
    return false;
}

/* ---- idempotency (broker lock held) ---- */
static uint32_t idem_hash(sb_str_t ch, sb_str_t key)
{
    return hash_bytes(key.p, key.len) ^ hash_bytes(ch.p, ch.len);
}

static void pending_unlink_idem(struct pub_wait *w);

static void idem_expire(int64_t now)
{
    while (B.ifirst && (B.ifirst->expires_ms <= now || B.nidem > IDEM_MAX)) {
        idem_t *e = B.ifirst;
        idem_t **pp = &B.ibuckets[e->hash & (B.nibuckets - 1)];
        while (*pp != e) pp = &(*pp)->hnext;
        *pp = e->hnext;
        B.ifirst = e->fnext;
        if (!B.ifirst) B.ilast = NULL;
        B.nidem--;
        /* Pushed out by the count cap while its publish still waits for the
         * disk: the publish must not touch the entry when it completes. */
        if (e->pending) pending_unlink_idem(e->pending);
        free(e);
    }
}

static idem_t *idem_find(sb_str_t ch, sb_str_t key, uint32_t h)
{
    if (!B.nibuckets) return NULL;
    for (idem_t *e = B.ibuckets[h & (B.nibuckets - 1)]; e; e = e->hnext)
        if (!e->failed && e->hash == h && e->klen == ch.len + 1 + key.len &&
            !memcmp(e->key, ch.p, ch.len) && !memcmp(e->key + ch.len + 1, key.p, key.len))
            return e;
    return NULL;
}

/* Returns the new entry, or NULL without memory (the key then only goes
 * unremembered). expires_ms is the end of its dedupe window. */
static idem_t *idem_insert(sb_str_t ch, sb_str_t key, uint32_t h, uint64_t seq, int64_t expires_ms)
{
    if (!B.nibuckets) {
        B.ibuckets = calloc(65536, sizeof *B.ibuckets);
        if (!B.ibuckets) return NULL;
        B.nibuckets = 65536;
    }
    idem_t *e = malloc(sizeof *e + ch.len + 1 + key.len);
    if (!e) return NULL;
    e->hash = h;
    e->seq = seq;
    e->expires_ms = expires_ms;
    e->pending = NULL;
    e->failed = false;
    e->klen = (uint16_t)(ch.len + 1 + key.len);
    memcpy(e->key, ch.p, ch.len);
    e->key[ch.len] = 0;
    memcpy(e->key + ch.len + 1, key.p, key.len);
    e->hnext = B.ibuckets[h & (B.nibuckets - 1)];
    B.ibuckets[h & (B.nibuckets - 1)] = e;
    e->fnext = NULL;
    if (B.ilast) B.ilast->fnext = e;
    else B.ifirst = e;
    B.ilast = e;
    B.nidem++;
    return e;
}

/* ---- delivery (on each loop) ---- */
static void chan_loop_compact(chan_loop_t *cl)
{
    uint32_t w = 0;
    for (uint32_t i = 0; i < cl->n; i++) {
        sb_sub_t *s = cl->subs[i];
        if (!s) continue;
        s->_idx = (int32_t)w;
        cl->subs[w++] = s;
    }
    cl->n = w;
    cl->dirty = false;
}

static void deliver_task(sb_loop_t *loop, void *a, void *b)
{
    sb_msg_t *m = a;
    chan_loop_t *cl = &m->chan->loops[loop->id];
    uint64_t now = sb_mono_us();
    sb_hist_add(&loop->delivery_lat, now > m->pub_us ? now - m->pub_us : 0);
    uint64_t n = 0;
    cl->iterating++;
    for (uint32_t i = 0; i < cl->n; i++) {
        sb_sub_t *s = cl->subs[i];
        if (!s || m->seq <= s->last_seq) continue;
        s->last_seq = m->seq;
        s->ops->deliver(s, m);
        n++;
    }
    if (--cl->iterating == 0 && cl->dirty) chan_loop_compact(cl);
    SB_STAT_ADD(loop, deliveries, n);
    sb_msg_unref(m);
}

/* ---- public ---- */
void sb_broker_init(uint64_t start_seq, uint64_t floor_seq)
{
    B.seq = start_seq ? start_seq - 1 : 0;
    B.visible = B.seq;
    B.floor = floor_seq;
    /* A new life (tests run several in one process): memory mode until the
     * history layer installs its hooks. */
    B.gc_watermark = 0;
    B.store = NULL;
    B.seq_limit = NULL;
    B.cluster = NULL;
    atomic_store(&B.quiesced, false);
    formatters[SB_FMT_JSON] = fmt_json;
}

void sb_broker_set_store(sb_store_append_fn fn) { B.store = fn; }

void sb_broker_set_seq_limit(sb_seq_limit_fn fn) { B.seq_limit = fn; }

void sb_broker_set_cluster(sb_cluster_publish_fn fn) { B.cluster = fn; }

sb_err_t sb_publish_error(int status)
{
    return status == SB_PUB_CLUSTER_DOWN ? SB_ERR_CLUSTER_UNAVAILABLE : SB_ERR_STORAGE_FAILED;
}

void sb_broker_set_watermark(uint64_t upto)
{
    pthread_mutex_lock(&B.mu);
    if (upto > B.gc_watermark) B.gc_watermark = upto;
    pthread_mutex_unlock(&B.mu);
}

void sb_broker_quiesce(void) { atomic_store(&B.quiesced, true); }

static sb_msg_t *msg_new(const sb_pub_t *p)
{
    sb_str_t ev = p->event.len ? p->event : SB_STR("message");
    sb_msg_t *m = malloc(sizeof *m + ev.len + 1 + p->data.len + 1);
    if (!m) return NULL;
    memset(m, 0, sizeof *m);
    atomic_init(&m->_refs, 1);
    m->flags = (uint8_t)((p->data_is_string ? SB_MSG_DATA_STRING : 0) | p->raw_flags);
    m->event_len = (uint16_t)ev.len;
    m->data_len = (uint32_t)p->data.len;
    m->origin = p->origin;
    m->time_ms = sb_now_ms();
    m->pub_us = sb_mono_us();
    memcpy(m->tail, ev.p, ev.len);
    m->tail[ev.len] = 0;
    /* An empty message (a zero-length room frame) may come with no pointer. */
    if (p->data.len) memcpy(m->tail + ev.len + 1, p->data.p, p->data.len);
    m->tail[ev.len + 1 + p->data.len] = 0;
    m->event = m->tail;
    m->data = m->tail + ev.len + 1;
    return m;
}

/* Durable mode: a publish waiting for the disk, or a repeat of its
 * idempotency key waiting for the same outcome. */
typedef struct pub_wait {
    sb_loop_t *loop;      /* where cb runs; NULL: on the store thread */
    sb_publish_cb_t cb;   /* NULL: nobody waits for the outcome */
    void *ud;
    uint64_t seq;
    int status;
    sb_msg_t *m;           /* a reference to the message; NULL for a repeat */
    idem_t *idem;          /* its idempotency entry, while both exist */
    struct pub_wait *dups; /* repeats of its key */
    struct pub_wait *next; /* in the dups list */
} pub_wait_t;

static void pending_unlink_idem(pub_wait_t *w) { w->idem = NULL; }

static void pub_done_task(sb_loop_t *loop, void *a, void *b)
{
    pub_wait_t *w = a;
    w->cb(w->ud, w->status, w->seq);
    free(w);
}

/* The acknowledgements that one loop has yet to run, oldest first, under
 * B.mu. The store completes a whole fsync group in a row; the first
 * completion of a loop posts it one task and the rest only join the queue, so
 * a group of 100 publishes costs a loop one task (and the store thread one
 * take of the loop's inbox lock, contended by the loop) instead of 100. */
typedef struct ack_queue {
    pub_wait_t *head, *tail;
    struct grave *graves; /* messages whose last references the store thread dropped */
} ack_queue_t;

/* Messages released by the store thread during a group (the ring's oldest,
 * the old `last`, the waiter's reference) go back to the loop that made them
 * and are released there: a message freed on the store thread refills that
 * thread's malloc cache, not the loop's, and takes the loop's arena lock
 * against the loop's own mallocs (it showed as futex time on both threads). */
typedef struct grave {
    struct grave *next;
    uint32_t n, cap;
    sb_msg_t *m[];
} grave_t;

static void grave_release(grave_t *g)
{
    while (g) {
        grave_t *next = g->next;
        for (uint32_t i = 0; i < g->n; i++) sb_msg_unref(g->m[i]);
        free(g);
        g = next;
    }
}

/* The store thread's group in progress (see sb_broker_durable_group); only
 * that thread touches it, and only while it holds B.mu for the group. */
static _Thread_local struct {
    bool on;
    sb_loop_t *loop;     /* where the graves go: the loop of the group's first waiter */
    grave_t *grave;      /* the current array */
    pub_wait_t *settle;  /* outcomes to hand over once the lock is released */
} G;

/* Drops one reference. Inside a store group the message is kept for its loop
 * instead, unless it is not the last reference (then dropping it frees nothing). */
static void msg_release(sb_msg_t *m)
{
    if (!m) return;
    if (!G.on || atomic_load_explicit(&m->_refs, memory_order_acquire) > 1) {
        sb_msg_unref(m);
        return;
    }
    grave_t *g = G.grave;
    if (!g || g->n == g->cap) {
        uint32_t cap = g ? g->cap * 2 : 64;
        grave_t *ng = malloc(sizeof *ng + cap * sizeof ng->m[0]);
        if (!ng) {
            sb_msg_unref(m);
            return;
        }
        ng->next = g;
        ng->n = 0;
        ng->cap = cap;
        G.grave = g = ng;
    }
    g->m[g->n++] = m;
}

/* On the loop: runs every acknowledgement queued for it so far. */
static void acks_task(sb_loop_t *loop, void *a, void *b)
{
    pthread_mutex_lock(&B.mu);
    ack_queue_t *q = &B.acks[loop->id];
    pub_wait_t *w = q->head;
    grave_t *graves = q->graves;
    q->head = q->tail = NULL;
    q->graves = NULL;
    pthread_mutex_unlock(&B.mu);
    grave_release(graves);
    while (w) {
        pub_wait_t *next = w->next;
        w->cb(w->ud, w->status, w->seq);
        free(w);
        w = next;
    }
}

/* Under B.mu: the acknowledgement queue of a loop, grown on first use. */
static ack_queue_t *ack_queue_locked(sb_loop_t *loop)
{
    int id = loop->id;
    if (id >= B.nacks) {
        int n = sb_net.nloops > id ? sb_net.nloops : id + 1;
        ack_queue_t *q = realloc(B.acks, (size_t)n * sizeof *q);
        if (!q) return NULL;
        memset(q + B.nacks, 0, (size_t)(n - B.nacks) * sizeof *q);
        B.acks = q;
        B.nacks = n;
    }
    return &B.acks[id];
}

/* Under B.mu: queues w's outcome for its loop. Returns false when w has no
 * loop to go to (or the queues cannot grow): pub_ack settles it then, after
 * the unlock. */
static bool ack_enqueue_locked(pub_wait_t *w, int status)
{
    w->status = status;
    if (!w->cb || !w->loop || atomic_load(&B.quiesced)) return false;
    ack_queue_t *q = ack_queue_locked(w->loop);
    if (!q) return false;
    w->next = NULL;
    if (q->tail) {
        q->tail->next = w;
    } else {
        q->head = w;
        if (!q->graves) sb_loop_post(w->loop, acks_task, NULL, NULL);
    }
    q->tail = w;
    if (G.on && !G.loop) G.loop = w->loop;
    return true;
}

/* Hands the outcome to whoever waits for it, on its loop, and frees w. */
static void pub_ack(pub_wait_t *w, int status)
{
    w->status = status;
    if (!w->cb || atomic_load(&B.quiesced)) {
        /* No waiter, or the loops are gone (see sb_broker_quiesce). */
        free(w);
    } else if (w->loop) {
        sb_loop_post(w->loop, pub_done_task, w, NULL);
    } else {
        pub_done_task(NULL, w, NULL);
    }
}

/* The store's completion, on its thread, in seq order: a stored message enters
 * history and goes to the subscribers' loops now, so that nobody ever sees a
 * message that a crash could take back; a failed one never appears. Because
 * completions come in seq order and the deliveries are posted under the lock,
 * every loop still sees messages in id order. */
static void pub_durable(void *ud, int status)
{
    if (!G.on) {
        /* A store without group hooks: each completion is a group of one. */
        sb_broker_durable_group(true);
        pub_durable(ud, status);
        sb_broker_durable_group(false);
        return;
    }
    pub_wait_t *w = ud;
    sb_msg_t *m = w->m;
    sb_chan_t *c = m->chan;
    c->pending--;
    if (w->idem) {
        w->idem->pending = NULL;
        /* A failed publish frees its key: a retry must publish again rather
         * than receive the id of a message that is not stored. */
        if (status < 0) w->idem->failed = true;
        w->idem = NULL;
    }
    pub_wait_t *dups = w->dups;
    if (status == 0) {
        if (m->seq > B.visible) B.visible = m->seq;
        ring_expire(c, sb_now_ms());
        ring_push(c, m);
        msg_release(c->last);
        c->last = sb_msg_ref(m);
        if (!atomic_load(&B.quiesced))
            for (int i = 0; i < sb_net.nloops; i++)
                if (c->loop_nsubs[i])
                    sb_loop_post(sb_net.loops[i], deliver_task, sb_msg_ref(m), NULL);
    }
    /* Queued after the deliveries above, and after the message entered
     * history: an acknowledged id is always readable. From here on the loop
     * owns whatever was queued; w may be gone once the lock is released.
     * What has no loop to go to is settled at the group's end, after it. */
    if (!ack_enqueue_locked(w, status)) {
        w->next = G.settle;
        G.settle = w;
    }
    while (dups) {
        pub_wait_t *next = dups->next;
        if (!ack_enqueue_locked(dups, status)) {
            dups->next = G.settle;
            G.settle = dups;
        }
        dups = next;
    }
    msg_release(m);
}

void sb_broker_durable_group(bool begin)
{
    if (begin) {
        pthread_mutex_lock(&B.mu);
        G.on = true;
        return;
    }
    if (!G.on) return;
    G.on = false;
    grave_t *left = G.grave;
    G.grave = NULL;
    if (left && G.loop && !atomic_load(&B.quiesced)) {
        ack_queue_t *q = ack_queue_locked(G.loop);
        if (q) {
            if (!q->head && !q->graves) sb_loop_post(G.loop, acks_task, NULL, NULL);
            grave_t *tail = left;
            while (tail->next) tail = tail->next;
            tail->next = q->graves;
            q->graves = left;
            left = NULL;
        }
    }
    G.loop = NULL;
    pub_wait_t *settle = G.settle;
    G.settle = NULL;
    pthread_mutex_unlock(&B.mu);
    /* No loop to take them (a group without waiters, or the loops are gone). */
    grave_release(left);
    while (settle) {
        pub_wait_t *next = settle->next;
        pub_ack(settle, settle->status);
        settle = next;
    }
}

/* Durable mode: number the message and queue it for the disk, both under the
 * lock (the store wants seqs in order); pub_durable does the rest. m is not
 * linked yet and is consumed. */
static int publish_durable(const sb_pub_t *p, sb_msg_t *m, uint64_t *seq_out, sb_err_t *why,
                           sb_publish_cb_t cb, void *ud)
{
    pub_wait_t *w = calloc(1, sizeof *w);
    if (!w) {
        free(m);
        *why = SB_ERR_INTERNAL;
        return -1;
    }
    w->loop = sb_loop_current();
    w->cb = cb;
    w->ud = ud;
    int64_t now = m->time_ms;
    uint32_t ih = 0;
    pthread_mutex_lock(&B.mu);
    if (p->idem_key.len) {
        idem_expire(now);
        ih = idem_hash(p->channel, p->idem_key);
        idem_t *e = idem_find(p->channel, p->idem_key, ih);
        if (e) {
            B.idem_hits++;
            *seq_out = e->seq;
            free(m);
            if (e->pending && cb) {
                /* The first publish of this key is still on its way to the
                 * disk: the repeat is answered with its outcome, not before. */
                w->seq = e->seq;
                w->next = e->pending->dups;
                e->pending->dups = w;
                pthread_mutex_unlock(&B.mu);
                return 0;
            }
            pthread_mutex_unlock(&B.mu);
            free(w);
            return 1;
        }
    }
    sb_chan_t *c = chan_get(p->channel, true);
    if (!c) {
        pthread_mutex_unlock(&B.mu);
        free(m);
        free(w);
        *why = SB_ERR_CHANNEL_LIMIT;
        return -1;
    }
    /* Never hand out an id the disk has not reserved: a restart begins past
     * the reservation, so an id is never issued twice even when its record
     * was lost in a crash. The hook asks for the next block well ahead. */
    if (B.seq_limit && B.seq + 1 > B.seq_limit(B.seq + 1)) {
        pthread_mutex_unlock(&B.mu);
        free(m);
        free(w);
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "publish refused: ids past the durable reservation",
                           "next=%llu", (unsigned long long)(B.seq + 1));
        *why = SB_ERR_STORAGE_FAILED;
        return -1;
    }
    m->seq = ++B.seq;
    m->chan = sb_chan_ref(c);
    c->last_active_ms = now;
    B.published++;
    w->seq = m->seq;
    w->m = m;
    if (p->idem_key.len) {
        w->idem = idem_insert(p->channel, p->idem_key, ih, m->seq, now + sb_cfg.idem_window_ms);
        if (w->idem) w->idem->pending = w;
    }
    if (B.store(m, p->idem_key, pub_durable, w) != 0) {
        /* The store refused at once (broken, closing, out of memory): the
         * message never enters history and its key is free again. */
        if (w->idem) {
            w->idem->pending = NULL;
            w->idem->failed = true;
        }
        pthread_mutex_unlock(&B.mu);
        sb_msg_unref(m);
        free(w);
        *why = SB_ERR_STORAGE_FAILED;
        return -1;
    }
    c->pending++;
    uint64_t seq = m->seq;
    pthread_mutex_unlock(&B.mu);
    /* w belongs to the store's completion from here on. */
    *seq_out = seq;
    return cb ? 0 : 1;
}

int sb_broker_publish(const sb_pub_t *p, uint64_t *seq_out, sb_err_t *why, sb_publish_cb_t cb,
                      void *ud)
{
    /* Build the message before taking the lock: the critical section only
     * numbers it and links it. */
    sb_msg_t *m = msg_new(p);
    if (!m) {
        *why = SB_ERR_INTERNAL;
        return -1;
    }
    if (B.store) return publish_durable(p, m, seq_out, why, cb, ud);
    if (B.cluster) {
        /* The message enters history when Redis hands it back numbered
         * (sb_broker_apply); m was only built to share msg_new's checks. */
        int64_t now = m->time_ms;
        free(m);
        *seq_out = 0;
        return B.cluster(p, now, cb, ud, why);
    }
    int64_t now = m->time_ms;
    uint32_t ih = 0;
    pthread_mutex_lock(&B.mu);
    if (p->idem_key.len) {
        idem_expire(now);
        ih = hash_bytes(p->idem_key.p, p->idem_key.len) ^ hash_bytes(p->channel.p, p->channel.len);
        idem_t *e = idem_find(p->channel, p->idem_key, ih);
        if (e) {
            *seq_out = e->seq;
            B.idem_hits++;
            pthread_mutex_unlock(&B.mu);
            free(m);
            return 1;
        }
    }
    sb_chan_t *c = chan_get(p->channel, true);
    if (!c) {
        pthread_mutex_unlock(&B.mu);
        free(m);
        *why = SB_ERR_CHANNEL_LIMIT;
        return -1;
    }
    m->seq = ++B.seq;
    B.visible = m->seq;
    m->chan = sb_chan_ref(c);
    c->last_active_ms = now;
    ring_expire(c, now);
    ring_push(c, m);
    sb_msg_unref(c->last);
    c->last = sb_msg_ref(m);
    B.published++;
    if (p->idem_key.len)
        idem_insert(p->channel, p->idem_key, ih, m->seq, now + sb_cfg.idem_window_ms);
    for (int i = 0; i < sb_net.nloops; i++)
        if (c->loop_nsubs[i]) sb_loop_post(sb_net.loops[i], deliver_task, sb_msg_ref(m), NULL);
    pthread_mutex_unlock(&B.mu);
    *seq_out = m->seq;
    sb_msg_unref(m);
    return 1;
}

int sb_broker_restore(const sb_pub_t *p, uint64_t seq, int64_t time_ms)
{
    sb_msg_t *m = msg_new(p);
    if (!m) return -1;
    m->seq = seq;
    m->time_ms = time_ms;
    int64_t now = sb_now_ms();
    pthread_mutex_lock(&B.mu);
    sb_chan_t *c = chan_get(p->channel, true);
    if (!c) {
        pthread_mutex_unlock(&B.mu);
        free(m);
        return -1;
    }
    m->chan = sb_chan_ref(c);
    /* The ring keeps its bounds as it would have live: the newest
     * --history-size messages younger than --history-ttl. */
    ring_push(c, m);
    ring_expire(c, now);
    sb_msg_unref(c->last);
    c->last = sb_msg_ref(m);
    if (seq > B.seq) B.seq = seq;
    if (seq > B.visible) B.visible = seq;
    int64_t expires = time_ms + sb_cfg.idem_window_ms;
    if (p->idem_key.len && expires > now) {
        idem_expire(now);
        uint32_t ih = idem_hash(p->channel, p->idem_key);
        idem_insert(p->channel, p->idem_key, ih, seq, expires);
    }
    pthread_mutex_unlock(&B.mu);
    sb_msg_unref(m);
    return 0;
}

/* On each loop with readers of a channel whose history lost messages. */
static void gap_task(sb_loop_t *loop, void *a, void *b)
{
    sb_chan_t *c = a;
    chan_loop_t *cl = &c->loops[loop->id];
    cl->iterating++;
    for (uint32_t i = 0; i < cl->n; i++)
        if (cl->subs[i]) cl->subs[i]->ops->reset(cl->subs[i], "history_gap");
    if (--cl->iterating == 0 && cl->dirty) chan_loop_compact(cl);
    sb_chan_unref(c);
}

int sb_broker_apply(const sb_pub_t *p, uint64_t seq, int64_t time_ms)
{
    sb_msg_t *m = msg_new(p);
    if (!m) return -1;
    m->seq = seq;
    m->time_ms = time_ms;
    int64_t now = sb_now_ms();
    pthread_mutex_lock(&B.mu);
    if (seq <= B.seq) {
        /* Already applied (a catch-up overlapping the live stream). */
        pthread_mutex_unlock(&B.mu);
        free(m);
        return 0;
    }
    sb_chan_t *c = chan_get(p->channel, true);
    if (!c) {
        pthread_mutex_unlock(&B.mu);
        free(m);
        return -1;
    }
    m->chan = sb_chan_ref(c);
    B.seq = B.visible = seq;
    c->last_active_ms = now;
    ring_push(c, m);
    ring_expire(c, now);
    sb_msg_unref(c->last);
    c->last = sb_msg_ref(m);
    B.published++;
    if (!atomic_load(&B.quiesced))
        for (int i = 0; i < sb_net.nloops; i++)
            if (c->loop_nsubs[i]) sb_loop_post(sb_net.loops[i], deliver_task, sb_msg_ref(m), NULL);
    pthread_mutex_unlock(&B.mu);
    sb_msg_unref(m);
    return 0;
}

void sb_broker_gap(uint64_t upto, bool tell)
{
    pthread_mutex_lock(&B.mu);
    if (upto > B.gc_watermark) B.gc_watermark = upto;
    for (uint32_t i = 0; i < B.nbuckets; i++)
        for (sb_chan_t *c = B.buckets[i]; c; c = c->hnext) {
            if (upto > c->evicted_upto) c->evicted_upto = upto;
            if (!tell || atomic_load(&B.quiesced)) continue;
            for (int l = 0; l < sb_net.nloops; l++)
                if (c->loop_nsubs[l]) sb_loop_post(sb_net.loops[l], gap_task, sb_chan_ref(c), NULL);
        }
    if (upto > B.seq) B.seq = B.visible = upto;
    pthread_mutex_unlock(&B.mu);
}

static int cmp_seq(const void *a, const void *b)
{
    uint64_t x = (*(sb_msg_t *const *)a)->seq, y = (*(sb_msg_t *const *)b)->seq;
    return x < y ? -1 : x > y;
}

/* ---- compacted text runs (sb_broker_compact_text) ---- */

/* A run message keeps, after its text, the id of every original message (in
 * order) and the end offset of each one's text: seqs[], then ends[]. */
static const uint64_t *run_seqs(const sb_msg_t *m)
{
    uintptr_t p = (uintptr_t)(m->data + m->data_len + 1);
    return (const uint64_t *)((p + 7) & ~(uintptr_t)7);
}

static const uint32_t *run_ends(const sb_msg_t *m) { return (const uint32_t *)(run_seqs(m) + m->_nparts); }

/* Index of the first original message of run m with id > seq. */
static uint32_t run_first_after(const sb_msg_t *m, uint64_t seq)
{
    const uint64_t *seqs = run_seqs(m);
    uint32_t lo = 0, hi = m->_nparts;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (seqs[mid] <= seq) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Builds the next replayed message of run m from original *pos on: whole
 * originals with ids below `before`, up to SB_RUN_CHUNK bytes of text (at
 * least one original). Advances *pos. Returns a new message, NULL on OOM. */
static sb_msg_t *run_chunk(sb_msg_t *m, uint32_t *pos, uint64_t before)
{
    const uint64_t *seqs = run_seqs(m);
    const uint32_t *ends = run_ends(m);
    uint32_t i = *pos, start = i ? ends[i - 1] : 0, j = i + 1;
    while (j < m->_nparts && seqs[j] < before && ends[j] - start <= SB_RUN_CHUNK) j++;
    *pos = j;
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"text\":");
    sb_buf_json_str(&b, m->data + start, ends[j - 1] - start);
    sb_buf_puts(&b, "}");
    sb_msg_t *out = NULL;
    if (!b.oom) {
        sb_pub_t p = {.event = sb_str(m->event, m->event_len), .data = sb_str(b.p, b.len)};
        out = msg_new(&p);
    }
    sb_buf_free(&b);
    if (!out) return NULL;
    out->seq = seqs[j - 1];
    out->time_ms = m->time_ms;
    out->chan = sb_chan_ref(m->chan);
    return out;
}

/* The text of a message that may join a run: event `event` and data exactly
 * {"text":"..."} (no other member, no NUL inside, which cJSON would cut).
 * Returns the parsed tree (the text is its child's valuestring) or NULL. */
static cJSON *run_text_of(const sb_msg_t *m, sb_str_t event)
{
    if (m->flags & (SB_MSG_RAW | SB_MSG_COMPACT | SB_MSG_DATA_STRING)) return NULL;
    if (m->event_len != event.len || memcmp(m->event, event.p, event.len)) return NULL;
    if (memmem(m->data, m->data_len, "\\u0000", 6)) return NULL;
    cJSON *j = cJSON_ParseWithLength(m->data, m->data_len);
    cJSON *t = j && cJSON_IsObject(j) ? j->child : NULL;
    if (!t || t->next || !t->string || strcmp(t->string, "text") || !cJSON_IsString(t)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

static bool run_joinable(const sb_msg_t *m, sb_str_t event)
{
    if (m->flags & SB_MSG_COMPACT)
        return m->event_len == event.len && !memcmp(m->event, event.p, event.len);
    cJSON *j = run_text_of(m, event);
    cJSON_Delete(j);
    return j != NULL;
}

/* Builds one run message from msgs[0..n) (all joinable). NULL on OOM. */
static sb_msg_t *run_build(sb_msg_t **msgs, size_t n, sb_str_t event)
{
    size_t parts = 0;
    for (size_t i = 0; i < n; i++) parts += (msgs[i]->flags & SB_MSG_COMPACT) ? msgs[i]->_nparts : 1;
    sb_buf_t text = {0};
    uint64_t *seqs = malloc(parts * sizeof *seqs);
    uint32_t *ends = malloc(parts * sizeof *ends);
    sb_msg_t *m = NULL;
    size_t k = 0;
    if (!seqs || !ends) goto out;
    for (size_t i = 0; i < n; i++) {
        sb_msg_t *x = msgs[i];
        if (x->flags & SB_MSG_COMPACT) {
            size_t base = text.len;
            sb_buf_put(&text, x->data, x->data_len);
            for (uint32_t p = 0; p < x->_nparts; p++, k++) {
                seqs[k] = run_seqs(x)[p];
                ends[k] = (uint32_t)(base + run_ends(x)[p]);
            }
        } else {
            cJSON *j = run_text_of(x, event);
            if (!j) goto out; /* cannot happen: checked by the caller */
            sb_buf_puts(&text, j->child->valuestring);
            cJSON_Delete(j);
            seqs[k] = x->seq;
            ends[k++] = (uint32_t)text.len;
        }
    }
    if (text.oom || text.len > UINT32_MAX - 64) goto out;
    size_t tail = event.len + 1 + text.len + 1;
    m = malloc(sizeof *m + tail + 8 + parts * (sizeof *seqs + sizeof *ends));
    if (!m) goto out;
    memset(m, 0, sizeof *m);
    atomic_init(&m->_refs, 1);
    m->flags = SB_MSG_COMPACT;
    m->event_len = (uint16_t)event.len;
    m->data_len = (uint32_t)text.len;
    m->_nparts = (uint32_t)parts;
    memcpy(m->tail, event.p, event.len);
    m->tail[event.len] = 0;
    if (text.len) memcpy(m->tail + event.len + 1, text.p, text.len);
    m->tail[event.len + 1 + text.len] = 0;
    m->event = m->tail;
    m->data = m->tail + event.len + 1;
    memcpy((void *)run_seqs(m), seqs, parts * sizeof *seqs);
    memcpy((void *)run_ends(m), ends, parts * sizeof *ends);
    m->seq = seqs[parts - 1];
    m->time_ms = msgs[n - 1]->time_ms;
    m->pub_us = msgs[n - 1]->pub_us;
    m->chan = sb_chan_ref(msgs[0]->chan);
out:
    sb_buf_free(&text);
    free(seqs);
    free(ends);
    return m;
}

/* Broker lock held: replaces msgs[0..n), if they still are consecutive kept
 * messages of c, by run. Returns true when swapped (the ring's references to
 * msgs go to the caller, who unrefs them after unlocking). */
static bool run_swap(sb_chan_t *c, sb_msg_t **msgs, size_t n, sb_msg_t *run)
{
    if (!c->registered) return false;
    uint32_t at = ring_find_after(c, msgs[0]->seq - 1);
    if (at + n > c->ring_len) return false;
    for (size_t k = 0; k < n; k++)
        if (ring_at(c, at + (uint32_t)k) != msgs[k]) return false;
    c->ring[(c->ring_head + at) % c->ring_cap] = run;
    uint32_t drop = (uint32_t)n - 1;
    for (uint32_t i = at + 1; i + drop < c->ring_len; i++)
        c->ring[(c->ring_head + i) % c->ring_cap] = ring_at(c, i + drop);
    for (uint32_t i = c->ring_len - drop; i < c->ring_len; i++)
        c->ring[(c->ring_head + i) % c->ring_cap] = NULL;
    c->ring_len -= drop;
    B.messages_kept -= drop;
    return true;
}

int sb_broker_compact_text(sb_str_t channel, sb_str_t event, uint64_t upto)
{
    /* Snapshot the candidates under the lock; parse and build outside it. */
    pthread_mutex_lock(&B.mu);
    int rc = B.visible < upto ? SB_AGAIN : 0;
    sb_chan_t *c = chan_get(channel, false);
    uint32_t n = c ? ring_find_after(c, upto) : 0;
    sb_msg_t **msgs = n > 1 ? malloc(n * sizeof *msgs) : NULL;
    if (msgs) {
        sb_chan_ref(c);
        for (uint32_t i = 0; i < n; i++) msgs[i] = sb_msg_ref(ring_at(c, i));
    }
    pthread_mutex_unlock(&B.mu);
    if (n <= 1) return rc;
    if (!msgs) return SB_ENOMEM;
    bool *ok = malloc(n * sizeof *ok);
    if (!ok) rc = SB_ENOMEM;
    for (uint32_t i = 0; ok && i < n; i++) ok[i] = run_joinable(msgs[i], event);
    for (uint32_t i = 0; ok && i < n;) {
        uint32_t j = i;
        while (j < n && ok[j]) j++;
        if (j - i >= 2) {
            sb_msg_t *run = run_build(msgs + i, j - i, event);
            if (!run) {
                rc = SB_ENOMEM;
            } else {
                pthread_mutex_lock(&B.mu);
                bool swapped = run_swap(c, msgs + i, j - i, run);
                pthread_mutex_unlock(&B.mu);
                /* Swapped: drop the ring's references too. */
                for (uint32_t k = i; swapped && k < j; k++) sb_msg_unref(msgs[k]);
                if (!swapped) sb_msg_unref(run);
            }
        }
        i = j == i ? i + 1 : j;
    }
    for (uint32_t i = 0; i < n; i++) sb_msg_unref(msgs[i]);
    free(msgs);
    free(ok);
    sb_chan_unref(c);
    return rc;
}

/* Hands a subscribe backlog (sorted by id, references owned) to the
 * subscriptions, replaying run messages as chunks merged into the id order. */
static void replay_backlog(sb_sub_t **subs, size_t n, sb_msg_t **backlog, size_t nb)
{
    typedef struct {
        sb_msg_t *m;
        sb_sub_t *s;
        uint32_t pos;
    } cur_t;
    cur_t *runs = NULL;
    size_t nruns = 0;
    for (size_t k = 0; k < nb; k++)
        if (backlog[k]->flags & SB_MSG_COMPACT) nruns++;
    if (nruns && !(runs = calloc(nruns, sizeof *runs))) nruns = 0; /* no memory: runs are skipped */
    size_t w = 0, r = 0;
    for (size_t k = 0; k < nb; k++) {
        sb_msg_t *m = backlog[k];
        if (!(m->flags & SB_MSG_COMPACT)) {
            backlog[w++] = m;
            continue;
        }
        for (size_t i = 0; runs && i < n; i++)
            if (subs[i]->chan == m->chan) {
                runs[r++] = (cur_t){m, subs[i], run_first_after(m, subs[i]->last_seq)};
                m = NULL;
                break;
            }
        sb_msg_unref(m);
    }
    nruns = r;
    size_t k = 0;
    for (;;) {
        /* The next thing in id order: a plain message, or a run's next original. */
        uint64_t next_plain = k < w ? backlog[k]->seq : UINT64_MAX;
        cur_t *best = NULL;
        uint64_t best_seq = UINT64_MAX, second = UINT64_MAX;
        for (size_t i = 0; i < nruns; i++) {
            if (runs[i].pos >= runs[i].m->_nparts) continue;
            uint64_t s = run_seqs(runs[i].m)[runs[i].pos];
            if (s < best_seq) {
                second = best_seq;
                best_seq = s;
                best = &runs[i];
            } else if (s < second) {
                second = s;
            }
        }
        if (!best && k == w) break;
        if (!best || next_plain < best_seq) {
            sb_msg_t *m = backlog[k++];
            for (size_t i = 0; i < n; i++) {
                sb_sub_t *s = subs[i];
                if (s->chan == m->chan && m->seq > s->last_seq && s->chan) {
                    s->last_seq = m->seq;
                    s->ops->deliver(s, m);
                    break;
                }
            }
            sb_msg_unref(m);
            continue;
        }
        sb_msg_t *chunk = run_chunk(best->m, &best->pos, next_plain < second ? next_plain : second);
        if (!chunk) {
            best->pos = best->m->_nparts; /* no memory: the rest of this run is lost to this reader */
            continue;
        }
        sb_sub_t *s = best->s;
        if (s->chan && chunk->seq > s->last_seq) {
            s->last_seq = chunk->seq;
            s->ops->deliver(s, chunk);
        }
        sb_msg_unref(chunk);
    }
    for (size_t i = 0; i < nruns; i++) sb_msg_unref(runs[i].m);
    free(runs);
}

/* Replaces the run messages among out[0..n) (references) by their chunks for a
 * reader after `after`, keeping at most limit messages. Returns the count. */
static size_t history_expand(sb_msg_t **out, size_t n, size_t limit, uint64_t after)
{
    sb_msg_t **in = malloc(n * sizeof *in);
    if (!in) {
        /* No memory to expand: answer the plain messages before the first run. */
        size_t k = 0;
        while (k < n && !(out[k]->flags & SB_MSG_COMPACT)) k++;
        for (size_t i = k; i < n; i++) sb_msg_unref(out[i]);
        return k;
    }
    memcpy(in, out, n * sizeof *in);
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        sb_msg_t *m = in[i];
        if (!(m->flags & SB_MSG_COMPACT)) {
            if (w < limit) out[w++] = m;
            else sb_msg_unref(m);
            continue;
        }
        uint32_t pos = run_first_after(m, after);
        while (w < limit && pos < m->_nparts) {
            sb_msg_t *chunk = run_chunk(m, &pos, UINT64_MAX);
            if (!chunk) {
                /* Stop here rather than skip text: the reader asks again from next. */
                limit = w;
                break;
            }
            out[w++] = chunk;
        }
        sb_msg_unref(m);
    }
    free(in);
    return w;
}

int sb_broker_subscribe(sb_loop_t *loop, sb_sub_t **subs, const sb_str_t *names, size_t n,
                        sb_since_t since, sb_err_t *why)
{
    sb_msg_t **backlog = NULL;
    size_t nb = 0, cap = 0;
    bool *gap = calloc(n ? n : 1, sizeof *gap);
    if (!gap) {
        *why = SB_ERR_INTERNAL;
        return -1;
    }
    int64_t now = sb_now_ms();
    pthread_mutex_lock(&B.mu);
    /* Create every channel first so a refusal leaves nothing half-done. */
    for (size_t i = 0; i < n; i++) {
        if (!chan_get(names[i], true)) {
            pthread_mutex_unlock(&B.mu);
            free(gap);
            *why = SB_ERR_CHANNEL_LIMIT;
            return -1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        sb_chan_t *c = chan_get(names[i], false);
        sb_sub_t *s = subs[i];
        s->chan = sb_chan_ref(c);
        s->policy = (uint8_t)sb_config_slow_policy(names[i]);
        s->_loop = (int16_t)loop->id;
        s->last_seq = since.set ? since.seq : B.visible;
        c->loop_nsubs[loop->id]++;
        c->nsubs++;
        c->last_active_ms = now;
        B.subscriptions++;
        if (!since.set) continue;
        ring_expire(c, now);
        uint32_t from = 0;
        if (has_gap(c, since)) {
            gap[i] = true;
            s->last_seq = 0;
        } else {
            from = ring_find_after(c, since.seq);
        }
        size_t want = c->ring_len - from;
        if (nb + want > cap) {
            size_t ncap = cap ? cap : 64;
            while (ncap < nb + want) ncap *= 2;
            sb_msg_t **nbl = realloc(backlog, ncap * sizeof *nbl);
            if (!nbl) continue; /* no memory for the backlog: the subscriber gets live only */
            backlog = nbl;
            cap = ncap;
        }
        for (uint32_t k = from; k < c->ring_len; k++) backlog[nb++] = sb_msg_ref(ring_at(c, k));
    }
    pthread_mutex_unlock(&B.mu);

    for (size_t i = 0; i < n; i++) {
        sb_sub_t *s = subs[i];
        chan_loop_t *cl = &s->chan->loops[loop->id];
        if (cl->n == cl->cap) {
            uint32_t ncap = cl->cap ? cl->cap * 2 : 4;
            sb_sub_t **ns = realloc(cl->subs, ncap * sizeof *ns);
            if (!ns) abort(); /* tiny allocation; without it the loop list is inconsistent */
            cl->subs = ns;
            cl->cap = ncap;
        }
        s->_idx = (int32_t)cl->n;
        cl->subs[cl->n++] = s;
    }
    for (size_t i = 0; i < n; i++)
        if (gap[i]) subs[i]->ops->reset(subs[i], "history_gap");
    if (nb) qsort(backlog, nb, sizeof *backlog, cmp_seq);
    replay_backlog(subs, n, backlog, nb);
    free(backlog);
    free(gap);
    return 0;
}

void sb_broker_unsubscribe(sb_sub_t *s)
{
    sb_chan_t *c = s->chan;
    if (!c) return;
    chan_loop_t *cl = &c->loops[s->_loop];
    if (cl->iterating) {
        cl->subs[s->_idx] = NULL;
        cl->dirty = true;
    } else {
        sb_sub_t *lastsub = cl->subs[--cl->n];
        cl->subs[s->_idx] = lastsub;
        lastsub->_idx = s->_idx;
    }
    pthread_mutex_lock(&B.mu);
    c->loop_nsubs[s->_loop]--;
    c->nsubs--;
    c->last_active_ms = sb_now_ms();
    B.subscriptions--;
    pthread_mutex_unlock(&B.mu);
    s->chan = NULL;
    sb_chan_unref(c);
}

size_t sb_broker_history(sb_str_t channel, sb_since_t since, size_t limit, sb_msg_t **out,
                         bool *reset, uint64_t *next)
{
    size_t n = 0;
    *reset = false;
    *next = since.set ? since.seq : 0;
    pthread_mutex_lock(&B.mu);
    sb_chan_t *c = chan_get(channel, false);
    if (!c) {
        /* No such channel now; a cursor older than forgotten history still gaps. */
        if (since.set && since.seq && (since.seq < B.gc_watermark || since.seq + 1 < B.floor ||
                                       (since.seq > B.seq && !B.cluster)))
            *reset = true;
        pthread_mutex_unlock(&B.mu);
        return 0;
    }
    ring_expire(c, sb_now_ms());
    uint32_t from = 0;
    if (since.set) {
        if (has_gap(c, since)) *reset = true;
        else from = ring_find_after(c, since.seq);
    }
    bool runs = false;
    for (uint32_t k = from; k < c->ring_len && n < limit; k++) {
        out[n] = sb_msg_ref(ring_at(c, k));
        runs |= (out[n++]->flags & SB_MSG_COMPACT) != 0;
    }
    if (n) *next = out[n - 1]->seq;
    else if (c->last && (!since.set || *reset)) *next = c->last->seq;
    pthread_mutex_unlock(&B.mu);
    /* Runs are cut into chunks outside the lock; each gives at least one. */
    if (runs) {
        n = history_expand(out, n, limit, since.set && !*reset ? since.seq : 0);
        if (n) *next = out[n - 1]->seq;
    }
    return n;
}

void sb_broker_channel_info(sb_str_t channel, sb_chan_info_t *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&B.mu);
    sb_chan_t *c = chan_get(channel, false);
    if (c) {
        out->exists = true;
        out->last = c->last ? sb_msg_ref(c->last) : NULL;
        out->subscribers = c->nsubs;
        out->history = c->ring_len;
    }
    pthread_mutex_unlock(&B.mu);
}

void sb_broker_stats(sb_broker_stats_t *o)
{
    pthread_mutex_lock(&B.mu);
    o->channels = B.nchans;
    o->messages_kept = B.messages_kept;
    o->subscriptions = B.subscriptions;
    o->published = B.published;
    o->idem_hits = B.idem_hits;
    o->last_seq = B.seq;
    pthread_mutex_unlock(&B.mu);
}

void sb_broker_metrics_per_channel(sb_buf_t *b)
{
    static const char *names[] = {"disconnect", "conflate", "drop_oldest"};
    pthread_mutex_lock(&B.mu);
    for (uint32_t i = 0; i < B.nbuckets; i++)
        for (sb_chan_t *c = B.buckets[i]; c; c = c->hnext)
            for (int p = 0; p < 3; p++) {
                uint64_t v = atomic_load_explicit(&c->slow[p], memory_order_relaxed);
                if (!v) continue;
                sb_buf_printf(b, "switchboard_channel_slow_total{channel=\"%s\",policy=\"%s\"} %llu\n",
                              c->name, names[p], (unsigned long long)v);
            }
    pthread_mutex_unlock(&B.mu);
}

void sb_broker_gc(void)
{
    int64_t now = sb_now_ms();
    pthread_mutex_lock(&B.mu);
    idem_expire(now);
    for (uint32_t i = 0; i < B.nbuckets; i++) {
        sb_chan_t *c = B.buckets[i];
        while (c) {
            sb_chan_t *next = c->hnext;
            ring_expire(c, now);
            /* Forget a channel nobody reads, with no history left, quiet for a
             * while; its ids are remembered in gc_watermark for resets. */
            bool last_stale = !c->last || sb_cfg.history_ttl_ms <= 0 ||
                              c->last->time_ms < now - sb_cfg.history_ttl_ms;
            if (!c->nsubs && !c->ring_len && !c->presence && !c->pending && last_stale &&
                c->last_active_ms < now - 10000)
                chan_unregister(c);
            c = next;
        }
    }
    pthread_mutex_unlock(&B.mu);
}

void sb_broker_free(void)
{
    pthread_mutex_lock(&B.mu);
    for (uint32_t i = 0; i < B.nbuckets; i++) {
        sb_chan_t *c = B.buckets[i];
        while (c) {
            sb_chan_t *next = c->hnext;
            while (c->ring_len) ring_drop_oldest(c);
            sb_msg_unref(c->last);
            c->last = NULL;
            c->registered = false;
            sb_chan_unref(c);
            c = next;
        }
    }
    free(B.buckets);
    B.buckets = NULL;
    B.nbuckets = 0;
    B.nchans = 0;
    while (B.ifirst) {
        idem_t *e = B.ifirst;
        B.ifirst = e->fnext;
        free(e);
    }
    B.ilast = NULL;
    free(B.ibuckets);
    B.ibuckets = NULL;
    B.nibuckets = 0;
    B.nidem = 0;
    pthread_mutex_unlock(&B.mu);
}
