/* The cluster node: its thread, its two Redis connections, catch-up and
 * acknowledgements. cluster.h has the design in brief, docs/cluster.md in full.
 *
 * Everything below the "cluster thread" line runs on that thread only, except
 * where a comment says otherwise; the loops reach it through C.mu (the job
 * queue) and the wake async handle. */
#define _GNU_SOURCE
#include "cluster/cluster.h"
#include "cluster/internal.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "channels/channels.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "net/net.h"

#define PAGE 1000            /* stream entries per catch-up read */
#define ACK_WAIT_MS 3000     /* longest an acknowledgement waits for its own node to apply it */
#define MAX_JOBS 100000      /* publishes queued or in flight to Redis; past it, refused */
#define MAX_BUFFERED 100000  /* live records held while catching up; past it, read again */
#define TICK_MS 100

/* One publish on its way: queued by a loop, sent by the cluster thread, then
 * waiting for its node to apply it, then acknowledged on its loop. */
typedef struct job {
    struct job *next;
    sb_loop_t *loop;
    sb_publish_cb_t cb; /* NULL: nobody waits */
    void *ud;
    uint64_t seq;
    int status;
    int64_t deadline_ms;
    uint32_t body_len, idem_len; /* idem_len 0: no Idempotency-Key */
    char tail[];                 /* the record body, then the idempotency key's Redis key */
} job_t;

/* A live record that arrived while catching up. */
typedef struct rbuf {
    struct rbuf *next;
    size_t len;
    char p[];
} rbuf_t;

/* Numbers, appends and publishes a batch of records in one call (one round
 * trip and one script run for everything a wake-up found queued), or answers
 * a repeated Idempotency-Key with the first id. KEYS: seq, last, log, then
 * one idempotency key per record (a placeholder when it has none). ARGV:
 * window ms, log size, pub/sub channel, then per record has-idem and body.
 * Returns one string per record: its new id, '=' and the first id for a
 * repeat, or '!' and Redis's error when its append failed (the records
 * before it stand; the chain of prev ids skips the failed one). INCR comes
 * back as a Lua number (a double): '%.0f' prints it whole (ids stay below
 * 2^53), tostring would not. */
static const char PUBLISH_LUA[] =
    "local out = {}\n"
    "local prev = redis.call('GET', KEYS[2]) or '0'\n"
    "for i = 1, #KEYS - 3 do\n"
    "  local key, has, body = KEYS[i + 3], ARGV[2 * i + 2], ARGV[2 * i + 3]\n"
    "  local hit = has == '1' and redis.call('GET', key)\n"
    "  if hit then\n"
    "    out[i] = '=' .. hit\n"
    "  else\n"
    "    local seq = string.format('%.0f', redis.call('INCR', KEYS[1]))\n"
    "    local rec = seq .. ' ' .. prev .. ' ' .. body\n"
    "    local ok = redis.pcall('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], seq .. '-0', 'm', rec)\n"
    "    if type(ok) == 'table' and ok.err then\n"
    "      out[i] = '!' .. ok.err\n"
    "    else\n"
    "      redis.call('SET', KEYS[2], seq)\n"
    "      if has == '1' then redis.call('SET', key, seq, 'PX', ARGV[1]) end\n"
    "      redis.call('PUBLISH', ARGV[3], rec)\n"
    "      prev = seq\n"
    "      out[i] = seq\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

/* A new cluster (or a Redis that lost everything) starts its ids from the
 * clock, like a node alone, so that cursors from before are told apart
 * (they reset) rather than resumed at a wrong place. Returns the newest id. */
static const char INIT_LUA[] =
    "if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "return redis.call('GET', KEYS[1])\n";

static struct {
    bool on;
    char host[256];
    int port;
    char k_seq[96], k_last[96], k_log[96], k_chan[96], k_idem[96];
    char log_size[24], window[24];
    uint64_t node;

    pthread_t thread;
    bool started;
    uv_loop_t loop;
    uv_async_t wake;
    uv_timer_t tick;

    /* Under mu: */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    job_t *qhead, *qtail;
    bool stopping, ready;

    /* Cluster thread only: */
    redisAsyncContext *cmd, *sub;
    bool cmd_up, sub_up;
    bool need_catchup, catching, overflow, initial_done;
    uint64_t applied;   /* the newest record applied to the broker */
    uint64_t seq_start; /* the cluster's newest id when the command connection came up */
    rbuf_t *bhead, *btail;
    size_t blen;
    job_t *ahead, *atail; /* numbered, waiting for this node to apply them */
    job_t *phead, *ptail; /* taken from the queue, waiting for a script call */
    int calls_out;        /* script calls sent, not answered */
    int call_head;        /* the oldest of them in call_sent_ms */
    int64_t call_sent_ms[2];
    int64_t backoff_ms, retry_at_ms;
    int64_t cmd_since, sub_since; /* when the connection's attempt began */
    bool was_up;
    bool ready_logged;

    /* Any thread: */
    atomic_bool cmd_ok;    /* publishes can be sent */
    atomic_bool connected; /* both connections up */
    atomic_int_fast64_t jobs;
    _Atomic uint64_t n_published, n_applied, n_catchups, n_gaps, n_bad, n_failed, n_calls;
} C = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

bool sb_cluster_enabled(void) { return C.on; }

/* ---- on the loops ---- */

static void ack_task(sb_loop_t *loop, void *a, void *b)
{
    job_t *j = a;
    j->cb(j->ud, j->status, j->seq);
    free(j);
}

/* The broker's publish hook, on a loop thread. */
static int cluster_publish(const sb_pub_t *p, int64_t time_ms, sb_publish_cb_t cb, void *ud, sb_err_t *why)
{
    if (!atomic_load(&C.cmd_ok)) {
        *why = SB_ERR_CLUSTER_UNAVAILABLE;
        return -1;
    }
    if (atomic_fetch_add(&C.jobs, 1) >= MAX_JOBS) {
        atomic_fetch_sub(&C.jobs, 1);
        sb_log_ratelimited(SB_LOG_WARN, 1000, "cluster publish refused: too many waiting for Redis", "max=%d",
                           MAX_JOBS);
        *why = SB_ERR_OVERLOADED;
        return -1;
    }
    sb_buf_t body = {0};
    sb_crec_t r = {.time_ms = time_ms,
                   .flags = (uint8_t)((p->data_is_string ? SB_MSG_DATA_STRING : 0) | p->raw_flags),
                   .node = C.node,
                   .origin = p->origin,
                   .channel = p->channel,
                   .event = p->event,
                   .data = p->data};
    sb_crec_body(&body, &r);
    size_t klen = 0;
    if (p->idem_key.len && sb_cfg.idem_window_ms > 0)
        klen = strlen(C.k_idem) + p->channel.len + 1 + p->idem_key.len;
    job_t *j = body.oom ? NULL : malloc(sizeof *j + body.len + klen);
    if (!j) {
        sb_buf_free(&body);
        atomic_fetch_sub(&C.jobs, 1);
        *why = SB_ERR_INTERNAL;
        return -1;
    }
    memset(j, 0, sizeof *j);
    j->loop = sb_loop_current();
    j->cb = j->loop ? cb : NULL;
    j->ud = ud;
    j->body_len = (uint32_t)body.len;
    memcpy(j->tail, body.p, body.len);
    sb_buf_free(&body);
    if (klen) {
        char *k = j->tail + j->body_len;
        size_t pl = strlen(C.k_idem);
        memcpy(k, C.k_idem, pl);
        memcpy(k + pl, p->channel.p, p->channel.len);
        k[pl + p->channel.len] = '/'; /* never in a channel name: unambiguous */
        memcpy(k + pl + p->channel.len + 1, p->idem_key.p, p->idem_key.len);
        j->idem_len = (uint32_t)klen;
    }
    pthread_mutex_lock(&C.mu);
    bool first = !C.qhead;
    if (C.qtail) C.qtail->next = j;
    else C.qhead = j;
    C.qtail = j;
    pthread_mutex_unlock(&C.mu);
    /* One wakeup per loop turn at most: later publishes of the turn find the
     * queue non-empty. */
    if (first) uv_async_send(&C.wake);
    return j->cb ? 0 : 1;
}

/* ---- cluster thread ---- */

static void ack(job_t *j, int status)
{
    atomic_fetch_sub(&C.jobs, 1);
    j->status = status;
    if (status != 0) atomic_fetch_add(&C.n_failed, 1);
    /* Also while stopping: the loops have stopped but sb_net_free still runs
     * their queued tasks, so the callback releases the connection it holds
     * and frees its context (it answers nobody, the connection is closed). */
    if (!j->cb) free(j);
    else sb_loop_post(j->loop, ack_task, j, NULL);
}

static void settle_acks(bool all)
{
    int64_t now = sb_now_ms();
    while (C.ahead && (C.ahead->seq <= C.applied || all || C.ahead->deadline_ms <= now)) {
        job_t *j = C.ahead;
        C.ahead = j->next;
        if (!C.ahead) C.atail = NULL;
        if (j->seq > C.applied && !all)
            sb_log_ratelimited(SB_LOG_WARN, 1000, "cluster ack without local apply",
                               "seq=%llu applied=%llu (Redis holds it; this node has not caught up)",
                               (unsigned long long)j->seq, (unsigned long long)C.applied);
        ack(j, 0);
    }
}

static void apply(const sb_crec_t *r)
{
    sb_pub_t p = {.channel = r->channel,
                  .event = r->event,
                  .data = r->data,
                  .data_is_string = (r->flags & SB_MSG_DATA_STRING) != 0,
                  .raw_flags = (uint8_t)(r->flags & (SB_MSG_RAW | SB_MSG_BINARY)),
                  /* Connection ids are per process: echo suppression only
                   * means something on the node that published. */
                  .origin = r->node == C.node ? r->origin : 0};
    if (sb_broker_apply(&p, r->seq, r->time_ms) < 0)
        sb_log_ratelimited(SB_LOG_WARN, 1000, "cluster message not kept (channel limit or memory)", "seq=%llu",
                           (unsigned long long)r->seq);
    C.applied = r->seq;
    atomic_fetch_add(&C.n_applied, 1);
}

static bool parse(const char *p, size_t len, sb_crec_t *r)
{
    if (sb_crec_parse(p, len, r)) return true;
    atomic_fetch_add(&C.n_bad, 1);
    sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster record malformed, skipped", "len=%zu", len);
    return false;
}

/* A record in id order from the log or the buffer: applies it, first saying
 * so when records before it are gone for good. */
static void take_in_order(const sb_crec_t *r)
{
    if (r->seq <= C.applied) return;
    if (r->prev != C.applied) {
        /* What lies between is neither in the log nor in what arrived live:
         * trimmed from the stream, or lost with Redis. At the first catch-up
         * this only marks where this node's history begins. */
        uint64_t upto = r->seq - 1;
        if (C.initial_done) {
            atomic_fetch_add(&C.n_gaps, 1);
            sb_warn("cluster gap: messages lost for good", "after=%llu upto=%llu", (unsigned long long)C.applied,
                    (unsigned long long)upto);
        }
        sb_broker_gap(upto, C.initial_done);
    }
    apply(r);
}

static void buffer_free(void)
{
    while (C.bhead) {
        rbuf_t *b = C.bhead;
        C.bhead = b->next;
        free(b);
    }
    C.btail = NULL;
    C.blen = 0;
}

static void buffer_add(const char *p, size_t len)
{
    rbuf_t *b = C.blen < MAX_BUFFERED ? malloc(sizeof *b + len) : NULL;
    if (!b) {
        /* Too much (or no memory): forget what is held and read it all back
         * from the stream afterwards, which holds it too. */
        buffer_free();
        C.overflow = true;
        return;
    }
    b->next = NULL;
    b->len = len;
    memcpy(b->p, p, len);
    if (C.btail) C.btail->next = b;
    else C.bhead = b;
    C.btail = b;
    C.blen++;
}

static void on_range(redisAsyncContext *ac, void *reply, void *priv);
static void note_state(void);

static void send_range(void)
{
    char start[32];
    if (C.applied) snprintf(start, sizeof start, "(%llu-0", (unsigned long long)C.applied);
    else snprintf(start, sizeof start, "-");
    const char *argv[] = {"XRANGE", C.k_log, start, "+", "COUNT", "1000"};
    if (redisAsyncCommandArgv(C.cmd, on_range, NULL, 6, argv, NULL) != REDIS_OK) {
        C.catching = false;
        C.need_catchup = true;
    }
}

static void maybe_catchup(void)
{
    if (!C.need_catchup || C.catching || !C.cmd_up || !C.sub_up) return;
    C.need_catchup = false;
    C.catching = true;
    C.overflow = false;
    atomic_fetch_add(&C.n_catchups, 1);
    send_range();
}

static void catchup_done(void)
{
    if (C.overflow) {
        /* Live records were dropped while reading: read again from where
         * the log left off. */
        C.overflow = false;
        send_range();
        return;
    }
    /* What arrived live meanwhile follows the log; nothing falls between,
     * since the subscription came first and every record enters the log
     * before it is published. */
    while (C.bhead) {
        rbuf_t *b = C.bhead;
        C.bhead = b->next;
        sb_crec_t r;
        if (parse(b->p, b->len, &r)) take_in_order(&r);
        free(b);
    }
    C.btail = NULL;
    C.blen = 0;
    C.catching = false;
    settle_acks(false);
    if (!C.initial_done) {
        /* An empty log: history begins after the cluster's newest id. */
        if (!C.applied && C.seq_start) sb_broker_gap(C.seq_start, false);
        C.initial_done = true;
        sb_cluster_maybe_ready();
    }
    maybe_catchup();
}

void sb_cluster_maybe_ready(void)
{
    /* The other nodes' members too: a reader's first presence.sync on a
     * node started later holds them. */
    if (C.ready_logged || !C.initial_done || !sb_cluster_pres_settled()) return;
    C.ready_logged = true;
    sb_info("cluster ready", "node=%016llx applied=%llu", (unsigned long long)C.node,
            (unsigned long long)C.applied);
    pthread_mutex_lock(&C.mu);
    C.ready = true;
    pthread_cond_broadcast(&C.cv);
    pthread_mutex_unlock(&C.mu);
}

static void on_range(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY) {
        if (r && r->type == REDIS_REPLY_ERROR)
            sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster catch-up failed", "err=%s", r->str);
        /* Retried once the connections are back (or at the next tick). */
        C.catching = false;
        C.need_catchup = true;
        return;
    }
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[1]->type != REDIS_REPLY_ARRAY) continue;
        redisReply *kv = e->element[1];
        for (size_t k = 0; k + 1 < kv->elements; k += 2) {
            if (kv->element[k + 1]->type != REDIS_REPLY_STRING) continue;
            sb_crec_t rec;
            if (parse(kv->element[k + 1]->str, kv->element[k + 1]->len, &rec)) take_in_order(&rec);
        }
    }
    if (r->elements == PAGE) send_range();
    else catchup_done();
    settle_acks(false);
}

static void on_message(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[0]->type != REDIS_REPLY_STRING) return;
    const char *kind = r->element[0]->str;
    /* One subscription, two channels: presence has its own. */
    if (r->element[1]->type == REDIS_REPLY_STRING && !strcmp(r->element[1]->str, sb_cluster_pres_channel())) {
        if (!strcmp(kind, "subscribe")) sb_cluster_pres_subscribed();
        else if (!strcmp(kind, "message") && r->element[2]->type == REDIS_REPLY_STRING)
            sb_cluster_pres_message(r->element[2]->str, r->element[2]->len);
        return;
    }
    if (!strcmp(kind, "subscribe")) {
        C.sub_up = true;
        C.backoff_ms = 0;
        note_state();
        /* Whatever was published while unsubscribed is in the log. */
        C.need_catchup = true;
        maybe_catchup();
        return;
    }
    if (strcmp(kind, "message") || r->element[2]->type != REDIS_REPLY_STRING) return;
    const char *p = r->element[2]->str;
    size_t len = r->element[2]->len;
    if (C.catching || C.need_catchup) {
        buffer_add(p, len);
        return;
    }
    sb_crec_t rec;
    if (!parse(p, len, &rec) || rec.seq <= C.applied) return;
    if (rec.prev == C.applied) {
        apply(&rec);
        settle_acks(false);
        return;
    }
    /* A record came that does not follow the last one: the ones between
     * were missed here (or lost); read them from the log. */
    buffer_add(p, len);
    C.need_catchup = true;
    maybe_catchup();
}

/* Records per script call, and the bytes of their bodies: a wake-up with
 * more queued sends several calls back to back on the one connection. */
#define BATCH_MAX 256
#define BATCH_MAX_BYTES (1u << 20)
/* Script calls unanswered at most (see send_jobs). */
#define CALLS_OUT 2
_Static_assert(CALLS_OUT == sizeof C.call_sent_ms / sizeof C.call_sent_ms[0], "one send time per call out");

typedef struct {
    int n;
    job_t *job[BATCH_MAX];
} batch_t;

/* The script's answer for one job. */
static void numbered(job_t *j, const redisReply *e)
{
    uint64_t seq = 0;
    bool repeat = e && e->type == REDIS_REPLY_STRING && e->len && e->str[0] == '=';
    if (e && e->type == REDIS_REPLY_STRING && e->len && e->str[0] == '!') {
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster publish failed", "err=%.*s", (int)e->len - 1, e->str + 1);
    } else if (e && e->type == REDIS_REPLY_STRING &&
               sb_str_to_u64(sb_str(e->str + repeat, e->len - repeat), &seq) && seq) {
        if (!repeat) atomic_fetch_add(&C.n_published, 1);
        j->seq = seq;
        if (seq <= C.applied) {
            ack(j, 0);
            return;
        }
        j->deadline_ms = sb_now_ms() + ACK_WAIT_MS;
        j->next = NULL;
        if (C.atail) C.atail->next = j;
        else C.ahead = j;
        C.atail = j;
        return;
    }
    /* No answer (the connection went), or a failed append: the script may
     * or may not have numbered it. The publisher hears 503 and retries;
     * with an Idempotency-Key the retry gets the first id if it had. */
    ack(j, SB_PUB_CLUSTER_DOWN);
}

static void send_jobs(void);

static void on_publish(redisAsyncContext *ac, void *reply, void *priv)
{
    batch_t *b = priv;
    redisReply *r = reply;
    bool whole = r && r->type == REDIS_REPLY_ARRAY && r->elements == (size_t)b->n;
    if (r && r->type == REDIS_REPLY_ERROR)
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster publish failed", "err=%s records=%d", r->str, b->n);
    for (int i = 0; i < b->n; i++) numbered(b->job[i], whole ? r->element[i] : NULL);
    free(b);
    C.calls_out--;
    C.call_head = (C.call_head + 1) % CALLS_OUT;
    send_jobs();
}

static void send_batch(batch_t *b)
{
    /* The cluster thread alone sends: one set of argument arrays serves. */
    static const char *argv[9 + 3 * BATCH_MAX];
    static size_t argl[9 + 3 * BATCH_MAX];
    int n = 0;
#define ARG(p, l) (argv[n] = (p), argl[n] = (l), n++)
#define ARGS(s) ARG(s, strlen(s))
    ARGS("EVAL");
    ARG(PUBLISH_LUA, sizeof PUBLISH_LUA - 1);
    char nkeys[16];
    snprintf(nkeys, sizeof nkeys, "%d", 3 + b->n);
    ARGS(nkeys);
    ARGS(C.k_seq);
    ARGS(C.k_last);
    ARGS(C.k_log);
    for (int i = 0; i < b->n; i++) {
        job_t *j = b->job[i];
        if (j->idem_len) ARG(j->tail + j->body_len, j->idem_len);
        else ARGS(C.k_idem);
    }
    ARGS(C.window);
    ARGS(C.log_size);
    ARGS(C.k_chan);
    for (int i = 0; i < b->n; i++) {
        job_t *j = b->job[i];
        ARGS(j->idem_len ? "1" : "0");
        ARG(j->tail, j->body_len);
    }
#undef ARG
#undef ARGS
    if (!C.cmd_up || redisAsyncCommandArgv(C.cmd, on_publish, b, n, argv, argl) != REDIS_OK) {
        for (int i = 0; i < b->n; i++) ack(b->job[i], SB_PUB_CLUSTER_DOWN);
        free(b);
        return;
    }
    C.call_sent_ms[(C.call_head + C.calls_out) % CALLS_OUT] = sb_now_ms();
    C.calls_out++;
    atomic_fetch_add(&C.n_calls, 1);
}

/* Sends the waiting jobs, in order, BATCH_MAX (or BATCH_MAX_BYTES) a call,
 * with at most CALLS_OUT calls unanswered. An idle cluster sends a publish
 * the moment it is queued; under load the publishes that come while calls
 * are out wait for the next answer and go together in one call, so a batch
 * grows with the load and the number of round trips does not. */

static void send_jobs(void)
{
    while (C.phead && C.calls_out < CALLS_OUT) {
        batch_t *b = malloc(sizeof *b);
        if (!b) {
            /* Out of memory: these publishes fail; nothing was sent. */
            job_t *j = C.phead;
            C.phead = C.ptail = NULL;
            while (j) {
                job_t *next = j->next;
                ack(j, SB_PUB_CLUSTER_DOWN);
                j = next;
            }
            return;
        }
        b->n = 0;
        size_t bytes = 0;
        while (C.phead && b->n < BATCH_MAX && (b->n == 0 || bytes + C.phead->body_len <= BATCH_MAX_BYTES)) {
            job_t *j = C.phead;
            C.phead = j->next;
            if (!C.phead) C.ptail = NULL;
            j->next = NULL;
            bytes += j->body_len;
            b->job[b->n++] = j;
        }
        /* With the connection down this answers 503 at once and sends on. */
        send_batch(b);
    }
}

static void close_all(void);

static void on_wake(uv_async_t *h)
{
    pthread_mutex_lock(&C.mu);
    job_t *j = C.qhead, *tail = C.qtail;
    C.qhead = C.qtail = NULL;
    bool stopping = C.stopping;
    pthread_mutex_unlock(&C.mu);
    if (j) {
        if (C.ptail) C.ptail->next = j;
        else C.phead = j;
        C.ptail = tail;
    }
    if (stopping) {
        j = C.phead;
        C.phead = C.ptail = NULL;
        while (j) {
            job_t *next = j->next;
            ack(j, SB_PUB_CLUSTER_DOWN);
            j = next;
        }
    } else {
        send_jobs();
    }
    /* A bye first (best effort): the others drop our members at once. */
    if (stopping && !sb_cluster_pres_goodbye(close_all)) close_all();
}

static void schedule_retry(void)
{
    int64_t b = C.backoff_ms ? C.backoff_ms * 2 : 100;
    if (b > 2000) b = 2000;
    C.backoff_ms = b;
    /* Half fixed, half jitter: nodes restarted together spread out. */
    C.retry_at_ms = sb_now_ms() + b / 2 + (int64_t)(sb_random_u64() % (uint64_t)(b / 2 + 1));
}

static void note_state(void)
{
    bool up = C.cmd_up && C.sub_up;
    atomic_store(&C.cmd_ok, C.cmd_up);
    atomic_store(&C.connected, up);
    if (up && !C.was_up) sb_info("cluster connected", "redis=%s:%d", C.host, C.port);
    if (!up && C.was_up) sb_warn("cluster disconnected", "redis=%s:%d (publishes answer 503 until it is back)", C.host, C.port);
    C.was_up = up;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    if (ac == C.cmd) {
        C.cmd = NULL;
        C.cmd_up = false;
        /* A catch-up in flight is lost with it: start over once it is back,
         * holding what arrives live meanwhile. */
        if (C.catching) {
            C.catching = false;
            C.need_catchup = true;
        }
    } else if (ac == C.sub) {
        C.sub = NULL;
        C.sub_up = false;
        /* The next subscription reads the log from the last applied record. */
        C.need_catchup = false;
        buffer_free();
    } else {
        return;
    }
    note_state();
    schedule_retry();
}

static void on_init(redisAsyncContext *ac, void *reply, void *priv)
{
    redisReply *r = reply;
    uint64_t seq = 0;
    if (!r || r->type != REDIS_REPLY_STRING || !sb_str_to_u64(sb_str(r->str, r->len), &seq)) {
        if (r && r->type == REDIS_REPLY_ERROR)
            sb_log_ratelimited(SB_LOG_ERROR, 1000, "cluster init failed", "err=%s", r->str);
        if (C.cmd == ac) redisAsyncDisconnect(C.cmd);
        return;
    }
    if (!C.seq_start) C.seq_start = seq;
    C.cmd_up = true;
    C.backoff_ms = 0;
    note_state();
    sb_cluster_pres_cmd_up();
    maybe_catchup();
}

redisAsyncContext *sb_cluster_cmd(void) { return C.cmd_up ? C.cmd : NULL; }

static void on_connect(const redisAsyncContext *cac, int status)
{
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    if (status != REDIS_OK) {
        sb_log_ratelimited(SB_LOG_WARN, 2000, "cluster cannot reach redis", "redis=%s:%d err=%s", C.host, C.port,
                           ac->errstr);
        if (ac == C.cmd) C.cmd = NULL;
        if (ac == C.sub) C.sub = NULL;
        schedule_retry();
        return;
    }
    if (ac == C.cmd) {
        char floor[24];
        snprintf(floor, sizeof floor, "%llu", (unsigned long long)sb_now_ms() * 1000ull);
        const char *argv[] = {"EVAL", INIT_LUA, "1", C.k_seq, floor};
        redisAsyncCommandArgv(ac, on_init, NULL, 5, argv, NULL);
    } else if (ac == C.sub) {
        const char *argv[] = {"SUBSCRIBE", C.k_chan, sb_cluster_pres_channel()};
        redisAsyncCommandArgv(ac, on_message, NULL, 3, argv, NULL);
    }
}

static redisAsyncContext *open_conn(void)
{
    redisAsyncContext *ac = redisAsyncConnect(C.host, C.port);
    if (!ac) return NULL;
    if (ac->err) {
        sb_log_ratelimited(SB_LOG_WARN, 2000, "cluster cannot reach redis", "redis=%s:%d err=%s", C.host, C.port,
                           ac->errstr);
        redisAsyncFree(ac);
        return NULL;
    }
    if (redisLibuvAttach(ac, &C.loop) != REDIS_OK) {
        redisAsyncFree(ac);
        return NULL;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    return ac;
}

static void connect_missing(void)
{
    bool failed = false;
    int64_t now = sb_now_ms();
    if (!C.cmd) {
        if ((C.cmd = open_conn())) C.cmd_since = now;
        else failed = true;
    }
    if (!C.sub) {
        if ((C.sub = open_conn())) C.sub_since = now;
        else failed = true;
    }
    if (failed) schedule_retry();
}

/* hiredis 0.14's libuv adapter drops poll errors, so a refused connect
 * neither completes nor fails: an attempt not up within this is abandoned. */
#define CONNECT_DEADLINE_MS 2000
#define CALL_DEADLINE_MS 5000 /* longest a publish waits for Redis's answer */

/* A connect attempt not up within CONNECT_DEADLINE_MS is freed and retried
 * (hiredis 0.14's libuv adapter drops some connect errors). */
static void abandon_stuck(redisAsyncContext **ac, int64_t *since, bool up, int64_t now)
{
    if (!*ac || up || !*since || now - *since <= CONNECT_DEADLINE_MS) return;
    redisAsyncContext *a = *ac;
    *ac = NULL;
    *since = 0;
    redisAsyncFree(a);
    schedule_retry();
}

static void on_tick(uv_timer_t *t)
{
    settle_acks(false);
    int64_t now = sb_now_ms();
    if (C.cmd_up) C.cmd_since = 0;
    if (C.sub_up) C.sub_since = 0;
    abandon_stuck(&C.cmd, &C.cmd_since, C.cmd_up, now);
    abandon_stuck(&C.sub, &C.sub_since, C.sub_up, now);
    /* A Redis that stops answering (paused, swapping, a long script) would
     * hold every publish forever: drop the connection, the publishes out
     * answer 503 (their publishers retry, with their Idempotency-Key), and
     * the usual reconnection follows. */
    if (C.cmd && C.cmd_up && C.calls_out && now - C.call_sent_ms[C.call_head] > CALL_DEADLINE_MS) {
        sb_warn("cluster: Redis did not answer a publish in time; reconnecting", "waited_ms=%lld calls=%d",
                (long long)(now - C.call_sent_ms[C.call_head]), C.calls_out);
        redisAsyncContext *a = C.cmd;
        redisAsyncFree(a);
        /* on_disconnect ran inside (the context was connected); be sure. */
        if (C.cmd == a) {
            C.cmd = NULL;
            C.cmd_up = false;
            note_state();
            schedule_retry();
        }
    }
    if ((!C.cmd || !C.sub) && sb_now_ms() >= C.retry_at_ms) connect_missing();
    maybe_catchup();
    sb_cluster_pres_tick();
}

static void close_all(void)
{
    /* Frees run every pending callback with no reply: publishes in flight
     * are answered with an error (nobody is left to read it). */
    redisAsyncContext *a = C.cmd, *b = C.sub;
    C.cmd = C.sub = NULL;
    C.cmd_up = C.sub_up = false;
    atomic_store(&C.cmd_ok, false);
    atomic_store(&C.connected, false);
    if (a) redisAsyncFree(a);
    if (b) redisAsyncFree(b);
    settle_acks(true);
    buffer_free();
    sb_cluster_pres_close();
    if (!uv_is_closing((uv_handle_t *)&C.tick)) uv_close((uv_handle_t *)&C.tick, NULL);
    if (!uv_is_closing((uv_handle_t *)&C.wake)) uv_close((uv_handle_t *)&C.wake, NULL);
}

static void *thread_main(void *arg)
{
    connect_missing();
    uv_run(&C.loop, UV_RUN_DEFAULT);
    return NULL;
}

/* ---- metrics ---- */
static void cluster_metrics(sb_buf_t *b, bool prometheus)
{
    unsigned long long pub = atomic_load(&C.n_published), app = atomic_load(&C.n_applied),
                       cu = atomic_load(&C.n_catchups), gaps = atomic_load(&C.n_gaps), bad = atomic_load(&C.n_bad),
                       failed = atomic_load(&C.n_failed), calls = atomic_load(&C.n_calls);
    bool up = atomic_load(&C.connected);
    if (prometheus) {
        sb_buf_printf(b,
                      "# HELP switchboard_cluster_connected 1 while both Redis connections of this node are up.\n"
                      "# TYPE switchboard_cluster_connected gauge\nswitchboard_cluster_connected %d\n"
                      "# HELP switchboard_cluster_published_total Messages this node published into the cluster.\n"
                      "# TYPE switchboard_cluster_published_total counter\nswitchboard_cluster_published_total %llu\n"
                      "# HELP switchboard_cluster_applied_total Cluster messages applied to this node's history.\n"
                      "# TYPE switchboard_cluster_applied_total counter\nswitchboard_cluster_applied_total %llu\n"
                      "# HELP switchboard_cluster_catchups_total Reads of the Redis log (at connect and after a missed record).\n"
                      "# TYPE switchboard_cluster_catchups_total counter\nswitchboard_cluster_catchups_total %llu\n"
                      "# HELP switchboard_cluster_gaps_total Times messages were lost for good (readers got a reset).\n"
                      "# TYPE switchboard_cluster_gaps_total counter\nswitchboard_cluster_gaps_total %llu\n"
                      "# HELP switchboard_cluster_bad_records_total Records from Redis that did not parse (skipped).\n"
                      "# TYPE switchboard_cluster_bad_records_total counter\nswitchboard_cluster_bad_records_total %llu\n"
                      "# HELP switchboard_cluster_publish_failures_total Publishes answered 503 (Redis unreachable or failing).\n"
                      "# TYPE switchboard_cluster_publish_failures_total counter\nswitchboard_cluster_publish_failures_total %llu\n"
                      "# HELP switchboard_cluster_publish_calls_total Script calls to Redis that numbered publishes (each carries a batch).\n"
                      "# TYPE switchboard_cluster_publish_calls_total counter\nswitchboard_cluster_publish_calls_total %llu\n",
                      up ? 1 : 0, pub, app, cu, gaps, bad, failed, calls);
        sb_cluster_pres_metrics(b, true);
        return;
    }
    sb_buf_printf(b,
                  ",\"cluster\":{\"connected\":%s,\"node\":\"%016llx\",\"published\":%llu,\"applied\":%llu,"
                  "\"catchups\":%llu,\"gaps\":%llu,\"badRecords\":%llu,\"publishFailures\":%llu,\"publishCalls\":%llu",
                  up ? "true" : "false", (unsigned long long)C.node, pub, app, cu, gaps, bad, failed, calls);
    sb_cluster_pres_metrics(b, false);
    sb_buf_put(b, "}", 1);
}

/* ---- lifecycle (main thread) ---- */
int sb_cluster_init(void)
{
    const char *addr = sb_cfg.cluster_redis;
    if (!addr[0] || !strcmp(addr, "none")) return 0;
    if (sb_cfg.data_dir[0] && strcmp(sb_cfg.data_dir, "none")) {
        sb_error("cluster: --cluster-redis and a durable --data-dir cannot be combined",
                 "data_dir=%s (in a cluster, Redis holds the log: run Redis with appendonly for durability)",
                 sb_cfg.data_dir);
        return -1;
    }
    if (!strncmp(addr, "redis://", 8)) addr += 8;
    const char *colon = strrchr(addr, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : 6379;
    size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
    if ((colon && (!end || *end || end == colon + 1)) || port <= 0 || port > 65535 || hl == 0 ||
        hl >= sizeof C.host) {
        sb_error("cluster: --cluster-redis must be HOST:PORT", "value=%s", sb_cfg.cluster_redis);
        return -1;
    }
    const char *pre = sb_cfg.cluster_prefix;
    for (const char *q = pre; *q; q++)
        if (*q <= ' ' || *q > '~') {
            sb_error("cluster: --cluster-prefix must be printable ASCII without spaces", "value=%s", pre);
            return -1;
        }
    if (strlen(pre) > 60 || sb_cfg.cluster_log_size < 1) {
        sb_error("cluster: bad --cluster-prefix or --cluster-log-size", "prefix=%s log_size=%lld", pre,
                 (long long)sb_cfg.cluster_log_size);
        return -1;
    }
    memcpy(C.host, addr, hl);
    C.host[hl] = 0;
    C.port = (int)port;
    snprintf(C.k_seq, sizeof C.k_seq, "%s:seq", pre);
    snprintf(C.k_last, sizeof C.k_last, "%s:last", pre);
    snprintf(C.k_log, sizeof C.k_log, "%s:log", pre);
    snprintf(C.k_chan, sizeof C.k_chan, "%s:messages", pre);
    snprintf(C.k_idem, sizeof C.k_idem, "%s:idem:", pre);
    snprintf(C.log_size, sizeof C.log_size, "%lld", (long long)sb_cfg.cluster_log_size);
    snprintf(C.window, sizeof C.window, "%lld", (long long)(sb_cfg.idem_window_ms > 0 ? sb_cfg.idem_window_ms : 1));
    do C.node = sb_random_u64();
    while (!C.node);
    C.on = true;
    sb_cluster_pres_init(pre, C.node);
    /* Ids come from Redis: this node's own clock-based numbering is dropped
     * before anything was published. */
    sb_broker_init(0, 0);
    sb_broker_set_cluster(cluster_publish);
    sb_metrics_register(cluster_metrics);
    return 0;
}

int sb_cluster_start(int64_t wait_ms)
{
    if (!C.on) return 0;
    if (uv_loop_init(&C.loop) || uv_async_init(&C.loop, &C.wake, on_wake) || uv_timer_init(&C.loop, &C.tick) ||
        sb_cluster_pres_start(&C.loop)) {
        sb_error("cluster: cannot set up its loop", "%s", "");
        return -1;
    }
    uv_timer_start(&C.tick, on_tick, TICK_MS, TICK_MS);
    if (pthread_create(&C.thread, NULL, thread_main, NULL)) {
        sb_error("cluster: cannot start its thread", "%s", "");
        return -1;
    }
    C.started = true;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += wait_ms / 1000;
    until.tv_nsec += (wait_ms % 1000) * 1000000;
    if (until.tv_nsec >= 1000000000) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&C.mu);
    while (!C.ready)
        if (pthread_cond_timedwait(&C.cv, &C.mu, &until)) break;
    bool ready = C.ready;
    pthread_mutex_unlock(&C.mu);
    if (!ready)
        sb_warn("cluster not ready yet: serving without the cluster's history",
                "redis=%s:%d waited_ms=%lld (publishes answer 503 until Redis answers)", C.host, C.port,
                (long long)wait_ms);
    return 0;
}

void sb_cluster_stop(void)
{
    if (!C.on || !C.started) return;
    pthread_mutex_lock(&C.mu);
    C.stopping = true;
    pthread_mutex_unlock(&C.mu);
    uv_async_send(&C.wake);
    pthread_join(C.thread, NULL);
    C.started = false;
    /* The remote members leave (nobody reads them any more) and are freed. */
    sb_cluster_pres_free();
    /* The libuv adapter closes its poll handles asynchronously: let them go. */
    uv_run(&C.loop, UV_RUN_NOWAIT);
    uv_loop_close(&C.loop);
}
