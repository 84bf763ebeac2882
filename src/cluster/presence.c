/* Presence across cluster nodes: every node tells the others about its own
 * (local) members through one Redis pub/sub channel, "<prefix>:presence",
 * and merges theirs into its presence model under a node number of its own.
 *
 * Messages (text; docs/cluster.md has the reference):
 *   <node> <kind>[ <field>...]
 * node is the sender's id in 16 lowercase hex digits, kind one of enter,
 * update, leave, heartbeat, snapshot, query, bye, and every field a byte
 * string with its length in front: " <len>:<bytes>" (decimal, no leading
 * zeros). enter and update carry channel, clientId, userId and the member
 * JSON; leave carries channel and clientId; a snapshot carries " <count>"
 * and then count times the four fields of an enter; the others nothing.
 *
 * No ghosts. Local changes go out in the order the model made them (the
 * presence layer calls our hooks under its lock; a FIFO takes them to the
 * cluster thread, which PUBLISHes them in order on the command connection).
 * What gets lost is repaired by snapshots: a node publishes its snapshot, then
 * a query ("send me yours"), each time its subscription is (re)established,
 * and its snapshot when its command connection comes back or its queue
 * overflowed; every node answers a query with its snapshot. Every node sends
 * a heartbeat each HEARTBEAT_MS, and a node not heard from (any message
 * counts) for NODE_TIMEOUT_MS is dropped: its members leave, their users'
 * user.leave follows after --presence-grace. A clean shutdown says bye, which
 * drops the node at once. While this node's own subscription is down it
 * hears nobody, so the others time out here after NODE_TIMEOUT_MS and come
 * back with their snapshots once it is subscribed again (their members leave
 * and re-enter on this node's readers): accepted, a cut subscription is rare
 * and the view converges.
 *
 * Threads: the hooks run on the loops (the presence lock held) and only
 * queue; everything else runs on the cluster thread, except init, start and
 * free (main thread) and the metrics (any thread). */
#define _GNU_SOURCE
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/internal.h"
#include "core/json.h"
#include "presence/presence.h"

#define HEARTBEAT_MS 1000      /* a heartbeat this often */
#define NODE_TIMEOUT_MS 5000   /* a node not heard from this long is dropped */
#define SETTLE_MS 1000         /* longest start-up waits for the others' snapshots */
#define BYE_WAIT_MS 500        /* longest shutdown waits for the bye to be sent */
#define MAX_QUEUED 100000      /* local changes waiting for the cluster thread */
#define MAX_QUEUED_BYTES (64 << 20) /* and their bytes */
#define MAX_CLIENT_ID 64       /* bytes; ours are "<8 hex>-<connection id>" */
#define MAX_USER_ID 1024       /* bytes (ours are at most 128) */
#define MAX_MEMBER (64 * 1024) /* bytes of member JSON (ours stay below 8 KiB) */
#define MAX_NODES 65535        /* remote node numbers 1..65535 */

/* A message on its way out, queued by a loop. */
typedef struct pmsg {
    struct pmsg *next;
    uint64_t seq; /* the presence layer's number of the change */
    size_t len, cap;
    char p[];
} pmsg_t;

/* A remote node. */
typedef struct {
    uint64_t id;
    int64_t heard_ms; /* monotonic */
    uint16_t idx;     /* its node number in the presence model */
} rnode_t;

static struct {
    bool on;
    char chan[96];
    char hex[17];       /* our node id, as messages start */
    char cid_prefix[10]; /* "3fa9c2d1-" */
    uint64_t node;
    sb_presence_repl_t repl;
    uv_async_t wake;
    uv_timer_t bye_timer;
    bool handles;

    /* Under mu: */
    pthread_mutex_t mu;
    pmsg_t *qhead, *qtail;
    bool closed; /* no more queueing (shutting down) */

    /* Cluster thread only: */
    bool want_snapshot, want_query, retry_snapshot;
    int64_t last_hb;
    rnode_t *nodes;
    size_t nnodes, capnodes;
    uint8_t used[(MAX_NODES + 1 + 7) / 8]; /* node numbers taken */
    uint32_t next_idx;
    /* Start-up: waiting for the others' snapshots after our first query. */
    bool settled, query_sent;
    int64_t settle_deadline;
    int64_t expect, got; /* snapshots expected (subscribers - 1), received */
    bool bye_waiting;
    void (*bye_done)(void);

    /* Any thread: */
    atomic_int_fast64_t nq, nq_bytes, nnodes_gauge;
    atomic_bool snap_needed; /* the queue overflowed: changes were lost */
    _Atomic uint64_t n_in, n_out, n_bad, n_dropped;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER, .next_idx = 1};

static int64_t mono_ms(void) { return (int64_t)(sb_mono_us() / 1000); }

/* ---- on the loops: the replication hooks (presence lock held) ---- */

static size_t field_size(sb_str_t s) { return 1 + 20 + 1 + s.len; }

static char *put_field(char *w, sb_str_t s)
{
    *w++ = ' ';
    w += sb_u64_dec(s.len, w);
    *w++ = ':';
    memcpy(w, s.p, s.len);
    return w + s.len;
}

static void enqueue(uint64_t seq, const char *kind, const sb_str_t *f, int nf)
{
    size_t cap = 16 + 1 + strlen(kind);
    for (int i = 0; i < nf; i++) cap += field_size(f[i]);
    /* Never wait for the cluster thread: past the budget the change is
     * dropped, and a snapshot repairs it once the queue drains. */
    int_fast64_t n = atomic_fetch_add(&R.nq, 1) + 1;
    int_fast64_t bytes = atomic_fetch_add(&R.nq_bytes, (int_fast64_t)cap) + (int_fast64_t)cap;
    if (n > MAX_QUEUED || bytes > MAX_QUEUED_BYTES) {
        atomic_fetch_sub(&R.nq, 1);
        atomic_fetch_sub(&R.nq_bytes, (int_fast64_t)cap);
        atomic_fetch_add(&R.n_dropped, 1);
        atomic_store(&R.snap_needed, true);
        sb_log_ratelimited(SB_LOG_WARN, 1000, "cluster presence change dropped: queue full",
                           "max=%d max_bytes=%d (a snapshot repairs it)", MAX_QUEUED,
                           MAX_QUEUED_BYTES);
        return;
    }
    pmsg_t *m = malloc(sizeof *m + cap);
    if (!m) {
        atomic_fetch_sub(&R.nq, 1);
        atomic_fetch_sub(&R.nq_bytes, (int_fast64_t)cap);
        atomic_fetch_add(&R.n_dropped, 1);
        atomic_store(&R.snap_needed, true);
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory queueing a cluster presence change",
                           "%s", "");
        return;
    }
    char *w = m->p;
    memcpy(w, R.hex, 16);
    w += 16;
    *w++ = ' ';
    memcpy(w, kind, strlen(kind));
    w += strlen(kind);
    for (int i = 0; i < nf; i++) w = put_field(w, f[i]);
    m->len = (size_t)(w - m->p);
    m->cap = cap;
    m->seq = seq;
    m->next = NULL;
    pthread_mutex_lock(&R.mu);
    if (R.closed) {
        pthread_mutex_unlock(&R.mu);
        atomic_fetch_sub(&R.nq, 1);
        atomic_fetch_sub(&R.nq_bytes, (int_fast64_t)cap);
        free(m);
        return;
    }
    bool first = !R.qhead;
    if (R.qtail) R.qtail->next = m;
    else R.qhead = m;
    R.qtail = m;
    /* One wakeup per burst: later changes find the queue non-empty. Sent
     * under mu so that it never races the handle's close. */
    if (first) uv_async_send(&R.wake);
    pthread_mutex_unlock(&R.mu);
}

static void hook_enter(uint64_t seq, sb_str_t ch, sb_str_t cid, sb_str_t uid, sb_str_t member)
{
    sb_str_t f[] = {ch, cid, uid, member};
    enqueue(seq, "enter", f, 4);
}

static void hook_update(uint64_t seq, sb_str_t ch, sb_str_t cid, sb_str_t uid, sb_str_t member)
{
    sb_str_t f[] = {ch, cid, uid, member};
    enqueue(seq, "update", f, 4);
}

static void hook_leave(uint64_t seq, sb_str_t ch, sb_str_t cid)
{
    sb_str_t f[] = {ch, cid};
    enqueue(seq, "leave", f, 2);
}

/* ---- cluster thread: sending ---- */

static void on_sent(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    if (r && r->type != REDIS_REPLY_ERROR) return;
    /* No reply: the connection went (its return brings a snapshot). An
     * error: Redis refused it; the next heartbeat sends a snapshot. */
    atomic_fetch_add(&R.n_dropped, 1);
    if (r) {
        R.retry_snapshot = true;
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster presence publish failed", "err=%s", r->str);
    }
}

static void check_settled(void);

static void on_query_sent(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        on_sent(ac, reply, priv);
        return;
    }
    /* PUBLISH answers how many subscribers got it, ourselves included: at
     * start-up, that many snapshots minus ours are coming. */
    if (!R.settled) {
        R.expect = r->integer - 1;
        check_settled();
    }
}

static bool send_bytes(const char *p, size_t len, redisCallbackFn *cb)
{
    redisAsyncContext *ac = sb_cluster_cmd();
    const char *argv[] = {"PUBLISH", R.chan, p};
    size_t argl[] = {7, strlen(R.chan), len};
    if (!ac || redisAsyncCommandArgv(ac, cb, NULL, 3, argv, argl) != REDIS_OK) {
        atomic_fetch_add(&R.n_dropped, 1);
        return false;
    }
    atomic_fetch_add(&R.n_out, 1);
    return true;
}

static void send_bare(const char *kind, redisCallbackFn *cb)
{
    char m[48];
    int n = snprintf(m, sizeof m, "%s %s", R.hex, kind);
    send_bytes(m, (size_t)n, cb);
}

typedef struct {
    sb_buf_t body;
    uint64_t count;
} snap_t;

static void snap_cb(void *ud, const sb_presence_member_t *m)
{
    snap_t *s = ud;
    sb_str_t f[] = {m->channel, m->client_id, m->user_id, m->member};
    for (int i = 0; i < 4; i++) {
        sb_buf_printf(&s->body, " %zu:", f[i].len);
        sb_buf_put(&s->body, f[i].p, f[i].len);
    }
    s->count++;
}

/* Builds our snapshot message into out; returns the seq it reflects. */
static uint64_t build_snapshot(sb_buf_t *out)
{
    snap_t s = {0};
    uint64_t seq = sb_presence_local_snapshot(snap_cb, &s);
    sb_buf_printf(out, "%s snapshot %" PRIu64, R.hex, s.count);
    sb_buf_put(out, s.body.p, s.body.len);
    if (s.body.oom) out->oom = true;
    sb_buf_free(&s.body);
    return seq;
}

/* Sends what the loops queued, in order, with our snapshot among them when
 * one is due: after the changes it reflects, before the ones it does not. */
static void pump(void)
{
    bool up = sb_cluster_cmd() != NULL;
    sb_buf_t snap = {0};
    bool have = false;
    uint64_t snap_seq = 0;
    if (up && (R.want_snapshot || atomic_exchange(&R.snap_needed, false))) {
        R.want_snapshot = false;
        /* Taken before the queue: every change it reflects is queued by now
         * (the hooks queue under the presence lock the snapshot holds). */
        snap_seq = build_snapshot(&snap);
        have = true;
        if (snap.oom) {
            sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory building the presence snapshot",
                               "%s", "");
            have = false;
            R.retry_snapshot = true;
        }
    }
    pthread_mutex_lock(&R.mu);
    pmsg_t *q = R.qhead;
    R.qhead = R.qtail = NULL;
    pthread_mutex_unlock(&R.mu);
    bool lost = false;
    while (q) {
        pmsg_t *next = q->next;
        atomic_fetch_sub(&R.nq, 1);
        atomic_fetch_sub(&R.nq_bytes, (int_fast64_t)q->cap);
        if (have && q->seq > snap_seq) {
            send_bytes(snap.p, snap.len, on_sent);
            have = false;
        }
        if (!send_bytes(q->p, q->len, on_sent)) lost = true;
        free(q);
        q = next;
    }
    if (have) send_bytes(snap.p, snap.len, on_sent);
    sb_buf_free(&snap);
    /* Sent nowhere (the command connection is down): a snapshot follows as
     * soon as it is back. */
    if (lost) R.want_snapshot = true;
    if (up && R.want_query) {
        R.want_query = false;
        send_bare("query", on_query_sent);
        if (!R.query_sent) {
            R.query_sent = true;
            R.settle_deadline = mono_ms() + SETTLE_MS;
        }
    }
}

static void on_wake(uv_async_t *h) { pump(); }

/* ---- cluster thread: the node table ---- */

static rnode_t *node_find(uint64_t id)
{
    /* A cluster has a handful of nodes: a scan beats a hash table here. */
    for (size_t i = 0; i < R.nnodes; i++)
        if (R.nodes[i].id == id) return &R.nodes[i];
    return NULL;
}

static rnode_t *node_add(uint64_t id)
{
    if (R.nnodes >= MAX_NODES) return NULL;
    if (R.nnodes == R.capnodes) {
        size_t cap = R.capnodes ? R.capnodes * 2 : 8;
        rnode_t *n = realloc(R.nodes, cap * sizeof *n);
        if (!n) return NULL;
        R.nodes = n;
        R.capnodes = cap;
    }
    /* Numbers go round before one is reused: a dropped node's number stays
     * free as long as possible. */
    uint32_t idx = R.next_idx;
    while (R.used[idx / 8] & (1u << (idx % 8))) idx = idx == MAX_NODES ? 1 : idx + 1;
    R.next_idx = idx == MAX_NODES ? 1 : idx + 1;
    R.used[idx / 8] |= (uint8_t)(1u << (idx % 8));
    rnode_t *n = &R.nodes[R.nnodes++];
    n->id = id;
    n->idx = (uint16_t)idx;
    n->heard_ms = mono_ms();
    atomic_store(&R.nnodes_gauge, (int_fast64_t)R.nnodes);
    sb_info("cluster presence: node joined", "node=%016" PRIx64 " index=%u", id, (unsigned)idx);
    return n;
}

static void node_drop(rnode_t *n, const char *why)
{
    size_t left = sb_presence_drop_node(n->idx);
    sb_info("cluster presence: node dropped", "node=%016" PRIx64 " reason=%s members=%zu", n->id,
            why, left);
    R.used[n->idx / 8] &= (uint8_t)~(1u << (n->idx % 8));
    *n = R.nodes[--R.nnodes];
    atomic_store(&R.nnodes_gauge, (int_fast64_t)R.nnodes);
}

/* ---- cluster thread: receiving ---- */

typedef struct {
    const char *p, *end;
} rd_t;

/* " <len>:<bytes>" */
static bool rd_field(rd_t *r, sb_str_t *out)
{
    if (r->p == r->end || *r->p != ' ') return false;
    r->p++;
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    size_t nd = (size_t)(r->p - s);
    if (!nd || nd > 19 || (nd > 1 && *s == '0') || r->p == r->end || *r->p != ':') return false;
    uint64_t len;
    if (!sb_str_to_u64(sb_str(s, nd), &len)) return false;
    r->p++;
    if (len > (uint64_t)(r->end - r->p)) return false;
    *out = sb_str(r->p, (size_t)len);
    r->p += len;
    return true;
}

/* " <count>" */
static bool rd_count(rd_t *r, uint64_t *out)
{
    if (r->p == r->end || *r->p != ' ') return false;
    r->p++;
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') r->p++;
    size_t nd = (size_t)(r->p - s);
    return nd && nd <= 19 && !(nd > 1 && *s == '0') && sb_str_to_u64(sb_str(s, nd), out);
}

/* A JSON string member of the object equals want (after unescaping). */
static bool json_str_is(sb_str_t lit, sb_str_t want)
{
    char buf[MAX_USER_ID + 1];
    if (!lit.p || lit.len < 2 || lit.p[0] != '"') return false;
    long n = sb_json_unescape(lit.p, lit.len, buf, sizeof buf);
    return n >= 0 && (size_t)n == want.len && !memcmp(buf, want.p, want.len);
}

/* The four fields of an enter, update or snapshot entry, checked. */
static bool rd_member(rd_t *r, sb_presence_member_t *m)
{
    if (!rd_field(r, &m->channel) || !rd_field(r, &m->client_id) || !rd_field(r, &m->user_id) ||
        !rd_field(r, &m->member))
        return false;
    if (!sb_valid_channel(m->channel)) return false;
    if (!m->client_id.len || m->client_id.len > MAX_CLIENT_ID || !m->user_id.len ||
        m->user_id.len > MAX_USER_ID || m->member.len > MAX_MEMBER)
        return false;
    if (!sb_utf8_valid((const uint8_t *)m->client_id.p, m->client_id.len) ||
        !sb_utf8_valid((const uint8_t *)m->user_id.p, m->user_id.len) ||
        !sb_utf8_valid((const uint8_t *)m->member.p, m->member.len))
        return false;
    /* The member JSON is an object whose clientId and userId are the ones
     * the message names: what readers see agrees with how it is keyed. */
    static const char *const keys[] = {"clientId", "userId"};
    sb_str_t vals[2];
    bool obj = false;
    if (!sb_json_scan(m->member.p, m->member.len, keys, vals, 2, &obj) || !obj) return false;
    return json_str_is(vals[0], m->client_id) && json_str_is(vals[1], m->user_id);
}

static bool hex16(const char *p, uint64_t *out)
{
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        char c = p[i];
        unsigned d;
        if (c >= '0' && c <= '9') d = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') d = (unsigned)(c - 'a' + 10);
        else return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

static void bad(size_t len, const char *why)
{
    atomic_fetch_add(&R.n_bad, 1);
    sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster presence message malformed, skipped",
                       "len=%zu why=%s", len, why);
}

static void apply_snapshot(rnode_t *n, rd_t *r, size_t len)
{
    uint64_t count;
    /* Each entry takes at least 4 * 3 bytes: a count past that is a lie. */
    if (!rd_count(r, &count) || count > (uint64_t)(r->end - r->p) / 12) {
        bad(len, "snapshot count");
        return;
    }
    sb_presence_member_t *ms = count ? malloc(count * sizeof *ms) : NULL;
    if (count && !ms) {
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "out of memory applying a presence snapshot", "%s",
                           "");
        return;
    }
    for (uint64_t i = 0; i < count; i++) {
        if (!rd_member(r, &ms[i])) {
            free(ms);
            bad(len, "snapshot member");
            return;
        }
    }
    if (r->p != r->end) {
        free(ms);
        bad(len, "trailing bytes");
        return;
    }
    sb_presence_remote_sync(n->idx, ms, (size_t)count);
    free(ms);
    if (!R.settled && R.query_sent) {
        R.got++;
        check_settled();
    }
}

void sb_cluster_pres_message(const char *p, size_t len)
{
    uint64_t id;
    if (len < 18 || !hex16(p, &id) || p[16] != ' ' || !id) {
        bad(len, "node id");
        return;
    }
    if (id == R.node) return; /* our own, back from Redis */
    rd_t r = {p + 17, p + len};
    const char *k = r.p;
    while (r.p < r.end && *r.p != ' ') r.p++;
    sb_str_t kind = sb_str(k, (size_t)(r.p - k));
    bool enter = sb_str_eq(kind, "enter"), update = sb_str_eq(kind, "update");
    bool leave = sb_str_eq(kind, "leave"), snapshot = sb_str_eq(kind, "snapshot");
    bool bare = sb_str_eq(kind, "heartbeat") || sb_str_eq(kind, "query") || sb_str_eq(kind, "bye");
    if (!enter && !update && !leave && !snapshot && !bare) {
        bad(len, "kind");
        return;
    }
    sb_presence_member_t m = {0};
    if (enter || update) {
        if (!rd_member(&r, &m) || r.p != r.end) {
            bad(len, "member");
            return;
        }
    } else if (leave) {
        if (!rd_field(&r, &m.channel) || !rd_field(&r, &m.client_id) || r.p != r.end ||
            !sb_valid_channel(m.channel) || !m.client_id.len || m.client_id.len > MAX_CLIENT_ID ||
            !sb_utf8_valid((const uint8_t *)m.client_id.p, m.client_id.len)) {
            bad(len, "leave");
            return;
        }
    } else if (bare && r.p != r.end) {
        bad(len, "trailing bytes");
        return;
    }
    rnode_t *n = node_find(id);
    if (sb_str_eq(kind, "bye")) {
        atomic_fetch_add(&R.n_in, 1);
        if (n) node_drop(n, "bye");
        return;
    }
    /* Any message says the node is alive; one never heard of joins. */
    if (!n && !(n = node_add(id))) {
        sb_log_ratelimited(SB_LOG_ERROR, 1000,
                           "cluster presence: node not tracked (table full or memory)",
                           "node=%016" PRIx64, id);
        return;
    }
    n->heard_ms = mono_ms();
    atomic_fetch_add(&R.n_in, 1);
    if (enter) sb_presence_remote_enter(n->idx, m.channel, m.client_id, m.user_id, m.member);
    else if (update) sb_presence_remote_update(n->idx, m.channel, m.client_id, m.user_id, m.member);
    else if (leave) sb_presence_remote_leave(n->idx, m.channel, m.client_id);
    else if (snapshot) apply_snapshot(n, &r, len);
    else if (sb_str_eq(kind, "query")) {
        R.want_snapshot = true;
        pump();
    }
}

/* ---- cluster thread: connection events, the tick ---- */

void sb_cluster_pres_subscribed(void)
{
    R.want_snapshot = true;
    R.want_query = true;
    pump();
}

void sb_cluster_pres_cmd_up(void)
{
    R.want_snapshot = true;
    pump();
}

bool sb_cluster_pres_settled(void) { return !R.on || R.settled; }

static void check_settled(void)
{
    if (R.settled || !R.query_sent) return;
    if ((R.expect >= 0 && R.got >= R.expect) || mono_ms() >= R.settle_deadline) {
        R.settled = true;
        sb_cluster_maybe_ready();
    }
}

void sb_cluster_pres_tick(void)
{
    int64_t now = mono_ms();
    /* Users whose last member was remote: no loop's timer waits for them. */
    sb_presence_grace_tick();
    if (R.bye_waiting) return; /* said bye: a heartbeat now would bring us back */
    for (size_t i = 0; i < R.nnodes;) {
        if (now - R.nodes[i].heard_ms > NODE_TIMEOUT_MS) node_drop(&R.nodes[i], "timeout");
        else i++;
    }
    check_settled();
    if (now - R.last_hb >= HEARTBEAT_MS) {
        R.last_hb = now;
        if (R.retry_snapshot) {
            R.retry_snapshot = false;
            R.want_snapshot = true;
        }
        pump();
        if (sb_cluster_cmd()) send_bare("heartbeat", on_sent);
    } else if (atomic_load(&R.snap_needed)) {
        pump();
    }
}

/* ---- shutdown ---- */

static void bye_finish(uv_timer_t *t)
{
    void (*done)(void) = R.bye_done;
    R.bye_done = NULL;
    if (done) done();
}

static void on_bye_sent(redisAsyncContext *ac, void *reply, void *priv)
{
    /* Not from inside hiredis's callback: done frees the connection. */
    if (R.bye_done && R.handles && !uv_is_closing((uv_handle_t *)&R.bye_timer))
        uv_timer_start(&R.bye_timer, bye_finish, 0, 0);
}

bool sb_cluster_pres_goodbye(void (*done)(void))
{
    if (!R.on) return false;
    if (R.bye_waiting) return true;
    /* No more local changes: the leaves of the drain are queued already. */
    sb_presence_set_repl(NULL);
    pthread_mutex_lock(&R.mu);
    R.closed = true;
    pthread_mutex_unlock(&R.mu);
    R.want_snapshot = R.want_query = false;
    atomic_store(&R.snap_needed, false);
    pump();
    redisAsyncContext *ac = sb_cluster_cmd();
    if (!ac || !R.handles) return false;
    char m[48];
    int n = snprintf(m, sizeof m, "%s bye", R.hex);
    if (!send_bytes(m, (size_t)n, on_bye_sent)) return false;
    R.bye_waiting = true;
    R.bye_done = done;
    uv_timer_start(&R.bye_timer, bye_finish, BYE_WAIT_MS, 0);
    return true;
}

void sb_cluster_pres_close(void)
{
    if (!R.on || !R.handles) return;
    pthread_mutex_lock(&R.mu);
    R.closed = true;
    pthread_mutex_unlock(&R.mu);
    R.bye_done = NULL;
    if (!uv_is_closing((uv_handle_t *)&R.wake)) uv_close((uv_handle_t *)&R.wake, NULL);
    if (!uv_is_closing((uv_handle_t *)&R.bye_timer)) uv_close((uv_handle_t *)&R.bye_timer, NULL);
}

void sb_cluster_pres_free(void)
{
    if (!R.on) return;
    sb_presence_set_repl(NULL);
    while (R.nnodes) node_drop(&R.nodes[R.nnodes - 1], "shutdown");
    free(R.nodes);
    R.nodes = NULL;
    R.capnodes = 0;
    pthread_mutex_lock(&R.mu);
    pmsg_t *q = R.qhead;
    R.qhead = R.qtail = NULL;
    R.closed = true;
    pthread_mutex_unlock(&R.mu);
    while (q) {
        pmsg_t *next = q->next;
        free(q);
        q = next;
    }
    atomic_store(&R.nq, 0);
    atomic_store(&R.nq_bytes, 0);
    sb_presence_remote_clear();
}

/* ---- lifecycle (main thread) ---- */

void sb_cluster_pres_init(const char *prefix, uint64_t node)
{
    R.on = true;
    R.node = node;
    snprintf(R.chan, sizeof R.chan, "%s:presence", prefix);
    snprintf(R.hex, sizeof R.hex, "%016" PRIx64, node);
    snprintf(R.cid_prefix, sizeof R.cid_prefix, "%.8s-", R.hex);
    R.repl = (sb_presence_repl_t){.enter = hook_enter,
                                  .update = hook_update,
                                  .leave = hook_leave,
                                  .client_prefix = R.cid_prefix};
    R.expect = -1;
    sb_presence_set_repl(&R.repl);
}

const char *sb_cluster_pres_channel(void) { return R.chan; }

int sb_cluster_pres_start(uv_loop_t *loop)
{
    int rc = uv_async_init(loop, &R.wake, on_wake);
    if (rc) return rc;
    if ((rc = uv_timer_init(loop, &R.bye_timer))) {
        uv_close((uv_handle_t *)&R.wake, NULL);
        return rc;
    }
    R.handles = true;
    R.last_hb = mono_ms();
    return 0;
}

/* ---- metrics ---- */

void sb_cluster_pres_metrics(sb_buf_t *b, bool prometheus)
{
    long long nodes = (long long)atomic_load(&R.nnodes_gauge);
    long long members = (long long)sb_presence_remote_members();
    unsigned long long in = atomic_load(&R.n_in), out = atomic_load(&R.n_out);
    unsigned long long badn = atomic_load(&R.n_bad), dropped = atomic_load(&R.n_dropped);
    if (!prometheus) {
        sb_buf_printf(b,
                      ",\"presenceNodes\":%lld,\"presenceRemoteMembers\":%lld,"
                      "\"presenceMessagesReceived\":%llu,\"presenceMessagesSent\":%llu,"
                      "\"presenceBad\":%llu,\"presenceDropped\":%llu",
                      nodes, members, in, out, badn, dropped);
        return;
    }
#define HELP(name, type, help) "# HELP " name " " help "\n# TYPE " name " " type "\n"
    sb_buf_printf(
        b,
        HELP("switchboard_cluster_presence_nodes", "gauge",
             "Other nodes this node hears from (presence heartbeats).")
        "switchboard_cluster_presence_nodes %lld\n"
        HELP("switchboard_cluster_presence_remote_members", "gauge",
             "Presence members of other nodes merged into this node's view.")
        "switchboard_cluster_presence_remote_members %lld\n"
        HELP("switchboard_cluster_presence_messages_total", "counter",
             "Presence messages this node published, and received from other nodes.")
        "switchboard_cluster_presence_messages_total{direction=\"received\"} %llu\n"
        "switchboard_cluster_presence_messages_total{direction=\"sent\"} %llu\n"
        HELP("switchboard_cluster_presence_bad_total", "counter",
             "Presence messages from Redis that did not parse (skipped).")
        "switchboard_cluster_presence_bad_total %llu\n"
        HELP("switchboard_cluster_presence_dropped_total", "counter",
             "Presence messages not published (queue full, Redis down); snapshots repair them.")
        "switchboard_cluster_presence_dropped_total %llu\n",
        nodes, members, in, out, badn, dropped);
#undef HELP
}
