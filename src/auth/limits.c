/* Connections per address, per-connection publish buckets, limit counters
 * (limits.h). */
#define _GNU_SOURCE
#include "auth/limits.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "config/config.h"
#include "metrics/metrics.h"

/* ---- counters ---- */
static _Atomic uint64_t hits[SB_LIMIT__COUNT];

void sb_limits_count(sb_limit_t which)
{
    if ((unsigned)which < SB_LIMIT__COUNT) atomic_fetch_add_explicit(&hits[which], 1, memory_order_relaxed);
}

uint64_t sb_limits_refusals(sb_limit_t which)
{
    if ((unsigned)which >= SB_LIMIT__COUNT) return 0;
    return atomic_load_explicit(&hits[which], memory_order_relaxed);
}

void sb_limits_count_error(sb_err_t err)
{
    switch (err) {
    case SB_ERR_TOO_MANY_CONNS:
    case SB_ERR_CONN_RATE: break; /* counted where it is decided, with its log line */
    case SB_ERR_RATE_LIMITED: sb_limits_count(SB_LIMIT_PUBLISH_RATE); break;
    case SB_ERR_TOO_MANY_SUBS: sb_limits_count(SB_LIMIT_SUBSCRIPTIONS); break;
    case SB_ERR_REQUEST_TIMEOUT: sb_limits_count(SB_LIMIT_HEADER_TIMEOUT); break;
    case SB_ERR_BODY_TOO_LARGE: sb_limits_count(SB_LIMIT_BODY_SIZE); break;
    case SB_ERR_HEADERS_TOO_LARGE: sb_limits_count(SB_LIMIT_HEADER_SIZE); break;
    case SB_ERR_URI_TOO_LONG: sb_limits_count(SB_LIMIT_URI_LENGTH); break;
    default: break;
    }
}

/* ---- the address table: shared by all loops ---- */
typedef struct ipnode {
    struct ipnode *next;
    uint32_t hash;
    int64_t n;         /* connections counted for this address, across loops */
    sb_bucket_t conns; /* --conn-rate-per-ip: new connections; the node outlives its last
                        * connection until this bucket is full again (addr_sweep) */
    char ip[48];
} ipnode_t;

#define SHARDS 64
#define SHARD_MIN_BUCKETS 16

typedef struct {
    pthread_mutex_t mu;
    ipnode_t **tab;
    size_t nbuckets, len;
} shard_t;

/* One mutex per shard: accepts from different addresses rarely meet, and a
 * shard's critical section is a short chain walk. */
static shard_t shards[SHARDS];
static pthread_once_t shards_once = PTHREAD_ONCE_INIT;
static _Atomic int64_t addresses; /* distinct addresses with a connection */
static _Atomic int64_t kept;      /* nodes without a connection, kept for their rate bucket */

static void shards_init(void)
{
    for (int i = 0; i < SHARDS; i++) pthread_mutex_init(&shards[i].mu, NULL);
}

static uint32_t hash_ip(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static bool shard_grow(shard_t *s)
{
    size_t nb = s->nbuckets ? s->nbuckets * 2 : SHARD_MIN_BUCKETS;
    ipnode_t **t = calloc(nb, sizeof *t);
    if (!t) return false;
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (ipnode_t *n = s->tab[i], *next; n; n = next) {
            next = n->next;
            /* The low bits chose the shard; buckets use the high bits. */
            size_t b = (n->hash >> 6) & (nb - 1);
            n->next = t[b];
            t[b] = n;
        }
    }
    free(s->tab);
    s->tab = t;
    s->nbuckets = nb;
    return true;
}

enum { IP_OK, IP_OVER, IP_RATE, IP_NOMEM };

static void node_unlink(shard_t *s, ipnode_t *n)
{
    ipnode_t **pp = &s->tab[(n->hash >> 6) & (s->nbuckets - 1)];
    while (*pp != n) pp = &(*pp)->next;
    *pp = n->next;
    s->len--;
}

/* Counts one more connection for ip unless it already has `cap` (cap <= 0: no
 * cap), or (rate > 0) its bucket of new connections is empty: IP_RATE, with
 * *wait_ms until the next token. A refusal takes nothing. */
static int ip_acquire(const char *ip, int64_t cap, int64_t rate, int64_t now_ms, ipnode_t **out,
                      int64_t *count, int64_t *wait_ms)
{
    uint32_t h = hash_ip(ip);
    shard_t *s = &shards[h & (SHARDS - 1)];
    int r = IP_OK;
    pthread_mutex_lock(&s->mu);
    ipnode_t *n = NULL;
    if (s->nbuckets) {
        n = s->tab[(h >> 6) & (s->nbuckets - 1)];
        while (n && (n->hash != h || strcmp(n->ip, ip))) n = n->next;
    }
    if (n && cap > 0 && n->n >= cap) {
        *count = n->n;
        r = IP_OVER;
    } else if (n && !sb_bucket_take(&n->conns, rate, now_ms)) {
        *count = n->n;
        *wait_ms = sb_bucket_wait_ms(&n->conns, rate, now_ms);
        r = IP_RATE;
    } else if (n) {
        if (n->n++ == 0) {
            atomic_fetch_sub_explicit(&kept, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&addresses, 1, memory_order_relaxed);
        }
        *count = n->n;
    } else if ((s->len + 1 > s->nbuckets && !shard_grow(s)) || !(n = calloc(1, sizeof *n))) {
        r = IP_NOMEM;
    } else {
        n->hash = h;
        n->n = 1;
        sb_bucket_init(&n->conns, rate, now_ms);
        sb_bucket_take(&n->conns, rate, now_ms);
        snprintf(n->ip, sizeof n->ip, "%s", ip);
        size_t b = (h >> 6) & (s->nbuckets - 1);
        n->next = s->tab[b];
        s->tab[b] = n;
        s->len++;
        atomic_fetch_add_explicit(&addresses, 1, memory_order_relaxed);
        *count = 1;
    }
    pthread_mutex_unlock(&s->mu);
    *out = r == IP_OK ? n : NULL;
    return r;
}

static void ip_release(ipnode_t *n)
{
    shard_t *s = &shards[n->hash & (SHARDS - 1)];
    pthread_mutex_lock(&s->mu);
    if (--n->n == 0) {
        atomic_fetch_sub_explicit(&addresses, 1, memory_order_relaxed);
        if (sb_cfg.conn_rate_per_ip > 0) {
            /* Forgetting the address now would hand a reconnecting client a
             * full bucket: the node stays until its bucket has refilled. */
            atomic_fetch_add_explicit(&kept, 1, memory_order_relaxed);
        } else {
            node_unlink(s, n);
            free(n);
        }
    }
    pthread_mutex_unlock(&s->mu);
}

/* Frees the nodes kept only for their rate bucket once it is full again (a
 * second after the address's last new connection): they would admit a burst
 * anyway. Called from loop 0 about once a second; one pass over the table. */
static void addr_sweep(int64_t now_ms)
{
    int64_t rate = sb_cfg.conn_rate_per_ip;
    if (rate <= 0 || atomic_load_explicit(&kept, memory_order_relaxed) == 0) return;
    for (int i = 0; i < SHARDS; i++) {
        shard_t *s = &shards[i];
        pthread_mutex_lock(&s->mu);
        for (size_t b = 0; b < s->nbuckets; b++) {
            for (ipnode_t *n = s->tab[b], *next; n; n = next) {
                next = n->next;
                if (n->n || now_ms - n->conns.at_ms < 1000) continue;
                node_unlink(s, n);
                free(n);
                atomic_fetch_sub_explicit(&kept, 1, memory_order_relaxed);
            }
        }
        pthread_mutex_unlock(&s->mu);
    }
}

/* The address's connection count, or -1 when the table does not hold it. */
static int64_t ip_lookup(const char *ip)
{
    pthread_once(&shards_once, shards_init);
    uint32_t h = hash_ip(ip);
    shard_t *s = &shards[h & (SHARDS - 1)];
    int64_t v = -1;
    pthread_mutex_lock(&s->mu);
    if (s->nbuckets) {
        ipnode_t *n = s->tab[(h >> 6) & (s->nbuckets - 1)];
        while (n && (n->hash != h || strcmp(n->ip, ip))) n = n->next;
        if (n) v = n->n;
    }
    pthread_mutex_unlock(&s->mu);
    return v;
}

int64_t sb_limits_ip_count(const char *ip)
{
    int64_t v = ip_lookup(ip);
    return v < 0 ? 0 : v;
}

bool sb_limits_ip_tracked(const char *ip) { return ip_lookup(ip) >= 0; }

/* ---- per-loop registries: only the owning loop's thread touches one ---- */
#define TOMB UINT64_MAX /* connection ids start at 1 and never get here */
#define MAX_LOOPS 64    /* --workers is at most 64 */

typedef struct {
    uint64_t id; /* 0 = empty, TOMB = deleted */
    ipnode_t *ip; /* NULL when the address is not counted */
    sb_bucket_t pub;
    uint32_t mark;
} entry_t;

typedef struct {
    uv_timer_t sweep; /* first: its data is this struct anyway */
    sb_loop_t *loop;
    entry_t *tab;
    size_t cap, used, live; /* used counts live entries and tombstones */
    uint32_t epoch;
    uint32_t ticks; /* sweeps run, for the once-a-second address sweep (loop 0) */
} registry_t;

static registry_t *registries[MAX_LOOPS];
static _Atomic bool stopped[MAX_LOOPS];

static size_t slot_of(uint64_t id, size_t cap)
{
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (cap - 1);
}

static entry_t *reg_find(registry_t *r, uint64_t id)
{
    for (size_t i = slot_of(id, r->cap);; i = (i + 1) & (r->cap - 1)) {
        if (r->tab[i].id == id) return &r->tab[i];
        if (r->tab[i].id == 0) return NULL;
    }
}

static bool reg_rehash(registry_t *r, size_t cap)
{
    entry_t *t = calloc(cap, sizeof *t);
    if (!t) return false;
    for (size_t i = 0; i < r->cap; i++) {
        entry_t *e = &r->tab[i];
        if (e->id == 0 || e->id == TOMB) continue;
        size_t j = slot_of(e->id, cap);
        while (t[j].id) j = (j + 1) & (cap - 1);
        t[j] = *e;
    }
    free(r->tab);
    r->tab = t;
    r->cap = cap;
    r->used = r->live;
    return true;
}

static entry_t *reg_insert(registry_t *r, uint64_t id)
{
    /* Keep the table at most 3/4 full, tombstones included, so probes end. */
    if ((r->used + 1) * 4 > r->cap * 3) {
        size_t cap = (r->live + 1) * 2 > r->cap ? r->cap * 2 : r->cap;
        if (!reg_rehash(r, cap)) return NULL;
    }
    size_t i = slot_of(id, r->cap);
    while (r->tab[i].id && r->tab[i].id != TOMB) i = (i + 1) & (r->cap - 1);
    if (r->tab[i].id == 0) r->used++;
    r->live++;
    r->tab[i] = (entry_t){.id = id};
    return &r->tab[i];
}

static void reg_remove(registry_t *r, entry_t *e)
{
    if (e->ip) ip_release(e->ip);
    *e = (entry_t){.id = TOMB};
    r->live--;
}

/* Connections whose close the HTTP layer never sees (WebSocket, SSE, other
 * takeovers) leave their registry entry behind: every tick, entries without a
 * live connection on this loop are released. Cost: one hash probe per open
 * connection of the loop, a few hundred microseconds at 10,000. */
static void sweep_cb(uv_timer_t *t)
{
    registry_t *r = (registry_t *)t;
    if (r->loop->id == 0 && ++r->ticks % (1000 / SB_TICK_MS) == 0) addr_sweep(r->loop->now_ms);
    if (!r->live) return;
    uint32_t epoch = ++r->epoch;
    for (sb_conn_t *c = r->loop->conns; c; c = c->next) {
        if (c->flags & SB_CONN_CLOSING) continue;
        entry_t *e = reg_find(r, c->id);
        if (e) e->mark = epoch;
    }
    for (size_t i = 0; i < r->cap; i++) {
        entry_t *e = &r->tab[i];
        if (e->id && e->id != TOMB && e->mark != epoch) reg_remove(r, e);
    }
    if (r->used - r->live > r->cap / 4) reg_rehash(r, r->cap);
}

static registry_t *registry(sb_loop_t *loop, bool create)
{
    if (loop->id < 0 || loop->id >= MAX_LOOPS) return NULL;
    registry_t *r = registries[loop->id];
    if (r || !create || atomic_load(&stopped[loop->id])) return r;
    r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->cap = 64;
    r->tab = calloc(r->cap, sizeof *r->tab);
    if (!r->tab) {
        free(r);
        return NULL;
    }
    r->loop = loop;
    uv_timer_init(&loop->uv, &r->sweep);
    uv_timer_start(&r->sweep, sweep_cb, SB_TICK_MS, SB_TICK_MS);
    /* Never the reason a loop keeps running; the stop hook closes it. */
    uv_unref((uv_handle_t *)&r->sweep);
    registries[loop->id] = r;
    return r;
}

static void registry_closed_cb(uv_handle_t *h) { free(h); }

/* On each loop as it stops: connections are being closed, so every count this
 * loop holds is released now, and later closes find no registry. */
static void limits_stop(sb_loop_t *loop)
{
    if (loop->id < 0 || loop->id >= MAX_LOOPS) return;
    atomic_store(&stopped[loop->id], true);
    registry_t *r = registries[loop->id];
    if (!r) return;
    registries[loop->id] = NULL;
    for (size_t i = 0; i < r->cap; i++)
        if (r->tab[i].id && r->tab[i].id != TOMB) reg_remove(r, &r->tab[i]);
    free(r->tab);
    r->tab = NULL;
    uv_close((uv_handle_t *)&r->sweep, registry_closed_cb);
}

sb_err_t sb_limits_conn_open(sb_conn_t *c, int64_t *retry_s)
{
    int64_t cap = sb_cfg.max_conns_per_ip, crate = sb_cfg.conn_rate_per_ip, rate = sb_cfg.publish_rate;
    *retry_s = 1;
    if (cap <= 0 && crate <= 0 && rate <= 0) return SB_OK;
    pthread_once(&shards_once, shards_init);
    registry_t *r = registry(c->loop, true);
    if (!r) return SB_OK;
    ipnode_t *ip = NULL;
    if ((cap > 0 || crate > 0) && c->peer[0]) {
        int64_t n = 0, wait_ms = 0;
        int res = ip_acquire(c->peer, cap, crate, c->loop->now_ms, &ip, &n, &wait_ms);
        if (res == IP_OVER) {
            sb_limits_count(SB_LIMIT_CONNS_PER_IP);
            sb_log_ratelimited(SB_LOG_WARN, 1000, "connection refused: too many from one address",
                               "peer=%s open=%lld max=%lld", c->peer, (long long)n, (long long)cap);
            return SB_ERR_TOO_MANY_CONNS;
        }
        if (res == IP_RATE) {
            sb_limits_count(SB_LIMIT_CONN_RATE);
            sb_log_ratelimited(SB_LOG_WARN, 1000, "connection refused: one address connecting too fast",
                               "peer=%s rate=%lld open=%lld", c->peer, (long long)crate, (long long)n);
            *retry_s = (wait_ms + 999) / 1000;
            return SB_ERR_CONN_RATE;
        }
    }
    entry_t *e = reg_insert(r, c->id);
    if (!e) {
        if (ip) ip_release(ip);
        return SB_OK;
    }
    e->ip = ip;
    e->mark = r->epoch;
    sb_bucket_init(&e->pub, rate, c->loop->now_ms);
    return SB_OK;
}

void sb_limits_conn_closed(sb_conn_t *c)
{
    registry_t *r = registry(c->loop, false);
    if (!r) return;
    entry_t *e = reg_find(r, c->id);
    if (e) reg_remove(r, e);
}

bool sb_limits_publish_take(sb_conn_t *c, int64_t *wait_ms)
{
    int64_t rate = sb_cfg.publish_rate;
    if (wait_ms) *wait_ms = 0;
    if (rate <= 0) return true;
    registry_t *r = registry(c->loop, false);
    entry_t *e = r ? reg_find(r, c->id) : NULL;
    /* A connection without an entry was accepted while memory ran out; it is
     * not worth refusing a client for the server's own trouble. */
    if (!e) return true;
    bool ok = sb_bucket_take(&e->pub, rate, c->loop->now_ms);
    if (wait_ms) *wait_ms = sb_bucket_wait_ms(&e->pub, rate, c->loop->now_ms);
    return ok;
}

bool sb_limits_publish_ok(sb_conn_t *c) { return sb_limits_publish_take(c, NULL); }

int64_t sb_limits_publish_wait_ms(sb_conn_t *c)
{
    int64_t rate = sb_cfg.publish_rate;
    if (rate <= 0) return 0;
    registry_t *r = registry(c->loop, false);
    entry_t *e = r ? reg_find(r, c->id) : NULL;
    return e ? sb_bucket_wait_ms(&e->pub, rate, c->loop->now_ms) : 0;
}

/* ---- metrics ---- */
static const char *const limit_names[SB_LIMIT__COUNT][2] = {
    [SB_LIMIT_CONNS_PER_IP] = {"conns_per_ip", "connsPerIp"},
    [SB_LIMIT_CONN_RATE] = {"conn_rate", "connRate"},
    [SB_LIMIT_PUBLISH_RATE] = {"publish_rate", "publishRate"},
    [SB_LIMIT_SUBSCRIPTIONS] = {"subscriptions", "subscriptions"},
    [SB_LIMIT_HEADER_TIMEOUT] = {"header_timeout", "headerTimeout"},
    [SB_LIMIT_BODY_SIZE] = {"body_size", "bodySize"},
    [SB_LIMIT_HEADER_SIZE] = {"header_size", "headerSize"},
    [SB_LIMIT_URI_LENGTH] = {"uri_length", "uriLength"},
};

static void limits_metrics(sb_buf_t *b, bool prometheus)
{
    if (prometheus) {
        sb_buf_puts(b, "# HELP switchboard_limit_refusals_total Requests and connections refused at a limit.\n"
                       "# TYPE switchboard_limit_refusals_total counter\n");
        for (int i = 0; i < SB_LIMIT__COUNT; i++)
            sb_buf_printf(b, "switchboard_limit_refusals_total{limit=\"%s\"} %llu\n", limit_names[i][0],
                          (unsigned long long)atomic_load_explicit(&hits[i], memory_order_relaxed));
        sb_buf_printf(b,
                      "# HELP switchboard_client_addresses Client addresses with an open connection "
                      "(counted when --max-conns-per-ip is set).\n"
                      "# TYPE switchboard_client_addresses gauge\nswitchboard_client_addresses %lld\n",
                      (long long)atomic_load(&addresses));
        return;
    }
    sb_buf_puts(b, ",\"limitRefusals\":{");
    for (int i = 0; i < SB_LIMIT__COUNT; i++)
        sb_buf_printf(b, "%s\"%s\":%llu", i ? "," : "", limit_names[i][1],
                      (unsigned long long)atomic_load_explicit(&hits[i], memory_order_relaxed));
    sb_buf_printf(b, "},\"clientAddresses\":%lld", (long long)atomic_load(&addresses));
}

void sb_limits_init(void)
{
    pthread_once(&shards_once, shards_init);
    sb_metrics_register(limits_metrics);
    sb_net_on_stop(limits_stop);
}
