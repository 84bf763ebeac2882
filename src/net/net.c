#define _GNU_SOURCE
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "config/config.h"
#include "net/sendq.h"

struct sb_task {
    sb_task_fn fn;
    void *a, *b;
};

sb_net_t sb_net;
static _Thread_local sb_loop_t *current_loop;
static _Atomic uint64_t next_conn_id = 1;
static int bound_port;

#define READBUF_SIZE 65536
#define IOV_BATCH 64
/* Input kept for one connection can never exceed this, whatever the protocol
 * limits say: a last line of defence against a protocol bug. */
#define SB_CONN_MAX_INPUT ((size_t)64 << 20)

static void flush_pass(sb_loop_t *loop);

sb_loop_t *sb_loop_current(void) { return current_loop; }
void sb_loop_bind_current(sb_loop_t *loop) { current_loop = loop; }

/* ---- histograms ---- */
static int hist_bucket(uint64_t us)
{
    /* Buckets: 0..15 us linear, then 4 sub-buckets per power of two. */
    if (us < 16) return (int)us;
    int log2 = 63 - __builtin_clzll(us);
    int sub = (int)((us >> (log2 - 2)) & 3);
    int b = 16 + (log2 - 4) * 4 + sub;
    return b < SB_HIST_BUCKETS ? b : SB_HIST_BUCKETS - 1;
}

static uint64_t bucket_upper(int b)
{
    if (b < 16) return (uint64_t)b;
    int log2 = (b - 16) / 4 + 4, sub = (b - 16) % 4;
    return ((uint64_t)(4 + sub + 1) << (log2 - 2));
}

void sb_hist_add(sb_hist_t *h, uint64_t us)
{
    atomic_fetch_add_explicit(&h->b[hist_bucket(us)], 1, memory_order_relaxed);
}

uint64_t sb_hist_percentile(const sb_hist_t *hs, size_t n, size_t stride, double pct)
{
    uint64_t counts[SB_HIST_BUCKETS] = {0}, total = 0;
    for (size_t i = 0; i < n; i++) {
        const sb_hist_t *h = (const sb_hist_t *)((const char *)hs + i * stride);
        for (int b = 0; b < SB_HIST_BUCKETS; b++) {
            uint64_t v = atomic_load_explicit(&h->b[b], memory_order_relaxed);
            counts[b] += v;
            total += v;
        }
    }
    if (!total) return 0;
    uint64_t want = (uint64_t)((double)total * pct / 100.0 + 0.999999), seen = 0;
    if (want == 0) want = 1;
    for (int b = 0; b < SB_HIST_BUCKETS; b++) {
        seen += counts[b];
        if (seen >= want) return bucket_upper(b);
    }
    return bucket_upper(SB_HIST_BUCKETS - 1);
}

/* ---- tasks ---- */
void sb_loop_post(sb_loop_t *loop, sb_task_fn fn, void *a, void *b)
{
    uv_mutex_lock(&loop->inbox_mu);
    if (loop->inbox_len == loop->inbox_cap) {
        size_t cap = loop->inbox_cap ? loop->inbox_cap * 2 : 64;
        struct sb_task *t = realloc(loop->inbox, cap * sizeof *t);
        if (!t) {
            uv_mutex_unlock(&loop->inbox_mu);
            /* Out of memory: a lost task would lose a delivery silently, which
             * we never do; dying loudly is the honest option here. */
            sb_error("out of memory queueing a cross-loop task", "loop=%d", loop->id);
            abort();
        }
        loop->inbox = t;
        loop->inbox_cap = cap;
    }
    loop->inbox[loop->inbox_len++] = (struct sb_task){fn, a, b};
    bool first = loop->inbox_len == 1;
    uv_mutex_unlock(&loop->inbox_mu);
    /* The loop's own posts are drained by the flush pass of this turn; other
     * threads wake it. Wakeups coalesce, so only the first post signals. */
    if (first && current_loop != loop) uv_async_send(&loop->async);
}

static void drain_tasks(sb_loop_t *loop)
{
    for (;;) {
        uv_mutex_lock(&loop->inbox_mu);
        struct sb_task *t = loop->inbox;
        size_t n = loop->inbox_len, cap = loop->inbox_cap;
        loop->inbox = loop->work;
        loop->inbox_cap = loop->work_cap;
        loop->inbox_len = 0;
        uv_mutex_unlock(&loop->inbox_mu);
        loop->work = t;
        loop->work_cap = cap;
        if (!n) return;
        for (size_t i = 0; i < n; i++) t[i].fn(loop, t[i].a, t[i].b);
    }
}

static void async_cb(uv_async_t *h) { flush_pass(h->data); }

/* ---- output queue ---- */
static inline sb_out_t *qat(sb_conn_t *c, uint32_t i) { return &c->q[c->qhead + i]; }

static bool q_reserve(sb_conn_t *c)
{
    if (c->qhead + c->qlen < c->qcap) return true;
    if (c->qhead > 0) { /* slide down before growing */
        memmove(c->q, c->q + c->qhead, c->qlen * sizeof(sb_out_t));
        c->qhead = 0;
        if (c->qlen < c->qcap) return true;
    }
    uint32_t cap = c->qcap * 2;
    sb_out_t *nq;
    if (c->q == c->qinline) {
        nq = malloc(cap * sizeof *nq);
        if (nq) memcpy(nq, c->q, c->qlen * sizeof *nq);
    } else {
        nq = realloc(c->q, cap * sizeof *nq);
    }
    if (!nq) return false;
    c->q = nq;
    c->qcap = cap;
    return true;
}

static void q_pop(sb_conn_t *c)
{
    sb_frame_unref(c->q[c->qhead].f);
    if (c->enc_upto) c->enc_upto--;
    c->qhead++;
    c->qlen--;
    if (c->qlen == 0) {
        c->qhead = 0;
        /* Give back a grown queue when it empties: idle connections hold no
         * heap for output. */
        if (c->q != c->qinline) {
            free(c->q);
            c->q = c->qinline;
            c->qcap = SB_OUT_INLINE;
        }
    }
}

static void mark_pending(sb_conn_t *c)
{
    if (c->flags & SB_CONN_PENDING) return;
    c->flags |= SB_CONN_PENDING;
    c->pending_next = c->loop->pending;
    c->loop->pending = c;
}

void sb_conn_send(sb_conn_t *c, sb_frame_t *f, const void *tag)
{
    if (!f) return;
    if ((c->flags & (SB_CONN_CLOSING | SB_CONN_SHUTDOWN)) || !q_reserve(c)) {
        sb_frame_unref(f);
        return;
    }
    c->q[c->qhead + c->qlen++] = (sb_out_t){f, 0, tag};
    c->out_bytes += f->len;
    mark_pending(c);
}

void sb_conn_send_copy(sb_conn_t *c, const void *p, size_t len)
{
    sb_conn_send(c, sb_frame_copy(p, len), NULL);
}

/* The first queue entry a policy may touch: not in flight, not partly
 * written, not already encrypted. */
static uint32_t first_untouched(sb_conn_t *c)
{
    uint32_t start = (c->flags & SB_CONN_WRITING) ? c->inflight : 0;
    if (start < c->qlen && qat(c, start)->off) start++;
    if (start < c->enc_upto) start = c->enc_upto;
    return start;
}

size_t sb_conn_drop_tagged(sb_conn_t *c, const void *tag, size_t keep_bytes)
{
    uint32_t start = first_untouched(c);
    size_t tagged = 0;
    for (uint32_t i = start; i < c->qlen; i++)
        if (qat(c, i)->tag == tag) tagged += qat(c, i)->f->len;
    size_t removed = 0;
    uint32_t w = start;
    for (uint32_t i = start; i < c->qlen; i++) {
        sb_out_t e = *qat(c, i);
        if (e.tag == tag && tagged > keep_bytes) {
            tagged -= e.f->len;
            c->out_bytes -= e.f->len;
            sb_frame_unref(e.f);
            removed++;
            continue;
        }
        *qat(c, w++) = e;
    }
    c->qlen = w;
    return removed;
}

size_t sb_conn_discard_unsent(sb_conn_t *c)
{
    uint32_t keep = first_untouched(c);
    size_t bytes = 0;
    while (c->qlen > keep) {
        sb_out_t *e = qat(c, c->qlen - 1);
        bytes += e->f->len;
        sb_frame_unref(e->f);
        c->qlen--;
    }
    c->out_bytes -= bytes;
    return bytes;
}

bool sb_conn_replace_tagged(sb_conn_t *c, const void *tag, sb_frame_t *f)
{
    uint32_t start = first_untouched(c);
    for (uint32_t i = c->qlen; i-- > start;) {
        sb_out_t *e = qat(c, i);
        if (e->tag != tag || e->off) continue;
        c->out_bytes = c->out_bytes - e->f->len + f->len;
        sb_frame_unref(e->f);
        e->f = f;
        return true;
    }
    return false;
}

/* Entries that may go to the socket: all of them, or with TLS the encrypted ones. */
static uint32_t writable(const sb_conn_t *c) { return c->tls ? c->enc_upto : c->qlen; }

static uint32_t fill_iov(sb_conn_t *c, uv_buf_t *iov, uint32_t max)
{
    uint32_t w = writable(c);
    uint32_t n = w < max ? w : max;
    for (uint32_t i = 0; i < n; i++) {
        sb_out_t *e = qat(c, i);
        iov[i] = uv_buf_init(e->f->data + e->off, e->f->len - e->off);
    }
    return n;
}

static void consume(sb_conn_t *c, size_t bytes)
{
    c->out_bytes -= bytes;
    while (bytes && c->qlen) {
        sb_out_t *e = &c->q[c->qhead];
        size_t left = e->f->len - e->off;
        if (bytes >= left) {
            bytes -= left;
            q_pop(c);
        } else {
            e->off += (uint32_t)bytes;
            bytes = 0;
        }
    }
}

static void start_shutdown(sb_conn_t *c);

static void write_cb(uv_write_t *req, int status)
{
    sb_conn_t *c = req->data;
    sb_loop_t *loop = c->loop;
    *(uv_write_t **)req = loop->write_free; /* reuse the request's memory as a list link */
    loop->write_free = req;
    c->flags &= ~SB_CONN_WRITING;
    if (c->flags & SB_CONN_CLOSING) return; /* close_cb releases the queue */
    if (status < 0) {
        sb_debug("write failed", "conn=%llu err=%s", (unsigned long long)c->id, uv_err_name(status));
        sb_conn_close(c);
        return;
    }
    size_t bytes = 0;
    for (uint32_t i = 0; i < c->inflight && i < c->qlen; i++)
        bytes += qat(c, i)->f->len - qat(c, i)->off;
    consume(c, bytes);
    c->inflight = 0;
    SB_STAT_ADD(loop, bytes_out, bytes);
    if (c->qlen || (c->flags & SB_CONN_ENDING)) mark_pending(c);
    else if (c->ops && c->ops->on_drain) c->ops->on_drain(c);
}

static void tls_encrypt(sb_conn_t *c);

static void flush_done(sb_conn_t *c, int r);

/* Runs the loop's queued sends and finishes each of their connections. */
static void sendq_done(void *ud, ssize_t result)
{
    sb_conn_t *c = ud;
    c->flags &= ~(SB_CONN_WRITING | SB_CONN_SENDQ);
    c->inflight = 0;
    if (c->flags & SB_CONN_CLOSING) return; /* close_cb releases the queue */
    flush_done(c, result >= 0 ? (int)result : uv_translate_sys_error((int)-result));
}

/* A ring that failed is gone (sb_sendq_failed): the loop writes the plain way. */
static void sendq_drop_if_failed(sb_loop_t *loop)
{
    if (!sb_sendq_failed(loop->sendq)) return;
    sb_error("io_uring failed; this loop writes with plain system calls from now on", "loop=%d",
             loop->id);
    sb_sendq_free(loop->sendq);
    loop->sendq = NULL;
}

static void sendq_run(sb_loop_t *loop)
{
    if (!loop->sendq || !sb_sendq_len(loop->sendq)) return;
    SB_STAT_ADD(loop, write_syscalls, 1);
    sb_sendq_run(loop->sendq, sendq_done);
    sendq_drop_if_failed(loop);
}

/* Starts writing c's queue: one non-blocking vectored write, now or (with a
 * send queue) at the end of this pass together with the other connections'. */
static void flush_conn(sb_conn_t *c)
{
    sb_loop_t *loop = c->loop;
    if (c->flags & (SB_CONN_WRITING | SB_CONN_CLOSING)) return;
    if ((c->flags & SB_CONN_PEER_EOF) && !c->holds) c->flags |= SB_CONN_ENDING;
    if (c->tls) tls_encrypt(c);
    if (c->flags & SB_CONN_CLOSING) return;
    if (writable(c) == 0) {
        if (c->qlen) return; /* TLS: plaintext waits for the handshake */
        if ((c->flags & SB_CONN_ENDING) && !(c->flags & SB_CONN_SHUTDOWN)) start_shutdown(c);
        return;
    }
    uv_buf_t iov[IOV_BATCH];
    uint32_t n = fill_iov(c, iov, IOV_BATCH);
    SB_STAT_ADD(loop, writes, 1);
    uv_os_fd_t fd;
    if (loop->sendq && uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) {
        if (!sb_sendq_room(loop->sendq, n)) sendq_run(loop);
        if (loop->sendq) {
            /* uv_buf_t is laid out as struct iovec on Unix. Until the send has
             * run, the entries count as in flight (WRITING): no policy drops
             * them and no other write starts. */
            /* Once per connection, at its first send: later sends name the
             * socket by its slot (no file lookup per send). */
            if (c->sq_slot == SB_SQ_UNTRIED) c->sq_slot = sb_sendq_register(loop->sendq, fd);
            sb_sendq_add(loop->sendq, fd, c->sq_slot, (const struct iovec *)iov, n, c);
            c->flags |= SB_CONN_WRITING | SB_CONN_SENDQ;
            c->inflight = n;
            return;
        }
    }
    SB_STAT_ADD(loop, write_syscalls, 1);
    flush_done(c, uv_try_write((uv_stream_t *)&c->tcp, iov, n));
}

/* What the kernel took of a write (r bytes, or a negative libuv error;
 * UV_EAGAIN: nothing): the written entries leave the queue, and what is left
 * is handed to uv_write, which polls for POLLOUT. */
static void flush_done(sb_conn_t *c, int r)
{
    sb_loop_t *loop = c->loop;
    if (r < 0 && r != UV_EAGAIN) {
        sb_debug("write failed", "conn=%llu err=%s", (unsigned long long)c->id, uv_err_name(r));
        sb_conn_close(c);
        return;
    }
    if (r > 0) {
        consume(c, (size_t)r);
        SB_STAT_ADD(loop, bytes_out, (uint64_t)r);
    }
    if (writable(c) == 0) {
        if (c->qlen) return;
        if (c->flags & SB_CONN_ENDING) start_shutdown(c);
        else if (c->ops && c->ops->on_drain) c->ops->on_drain(c);
        return;
    }
    /* The kernel took less than all: hand the rest to libuv, which polls for
     * POLLOUT. Frames stay referenced by the queue until write_cb. */
    SB_STAT_ADD(loop, write_calls_partial, 1);
    uv_buf_t iov[IOV_BATCH];
    uint32_t n = fill_iov(c, iov, IOV_BATCH);
    uv_write_t *req = loop->write_free;
    if (req) loop->write_free = *(uv_write_t **)req;
    else if (!(req = malloc(sizeof *req))) {
        sb_conn_close(c);
        return;
    }
    req->data = c;
    c->inflight = n;
    c->flags |= SB_CONN_WRITING;
    r = uv_write(req, (uv_stream_t *)&c->tcp, iov, n, write_cb);
    if (r < 0) {
        c->flags &= ~SB_CONN_WRITING;
        c->inflight = 0;
        *(uv_write_t **)req = loop->write_free;
        loop->write_free = req;
        sb_conn_close(c);
    }
}

static void run_on_data(sb_conn_t *c)
{
    if (!c->in_len || (c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING)) || !c->ops) return;
    ssize_t used = c->ops->on_data(c, c->in, c->in_len);
    if (used < 0 || (c->flags & SB_CONN_CLOSING)) return;
    size_t rest = c->in_len - (size_t)used;
    if (rest) memmove(c->in, c->in + used, rest);
    c->in_len = (uint32_t)rest;
    if (!rest) {
        free(c->in);
        c->in = NULL;
        c->in_cap = 0;
    }
}

void sb_conn_reprocess(sb_conn_t *c)
{
    if (c->flags & SB_CONN_CLOSING) return;
    c->flags |= SB_CONN_REPROCESS;
    mark_pending(c);
}

/* Once per loop turn: run posted tasks, re-run protocols that asked for it,
 * then flush every connection that has queued output. */
static void flush_pass(sb_loop_t *loop)
{
    /* Deadlines computed in callbacks use this; a tick-old clock would cut
     * timeouts short by up to a tick. */
    loop->now_ms = sb_now_ms();
    drain_tasks(loop);
    for (int rounds = 0; loop->pending && rounds < 4; rounds++) {
        sb_conn_t *list = loop->pending;
        loop->pending = NULL;
        while (list) {
            sb_conn_t *c = list;
            list = c->pending_next;
            c->pending_next = NULL;
            c->flags &= ~SB_CONN_PENDING;
            if (c->flags & SB_CONN_CLOSING) continue;
            if (c->flags & SB_CONN_REPROCESS) {
                c->flags &= ~SB_CONN_REPROCESS;
                /* Protocol code may close other connections: queued sends
                 * go out before it runs (sb_conn_close would do it anyway). */
                sendq_run(loop);
                run_on_data(c);
                if (c->flags & SB_CONN_CLOSING) continue;
            }
            flush_conn(c);
        }
        sendq_run(loop);
        drain_tasks(loop);
    }
}

static void check_cb(uv_check_t *h) { flush_pass(h->data); }

static void prepare_cb(uv_prepare_t *h)
{
    sb_loop_t *loop = h->data;
    flush_pass(loop);
    /* Work left over (a reprocess that published, say) must not wait for the
     * next I/O event: wake the poll at once. */
    uv_mutex_lock(&loop->inbox_mu);
    bool more = loop->inbox_len > 0;
    uv_mutex_unlock(&loop->inbox_mu);
    if (more || loop->pending) uv_async_send(&loop->async);
}

/* ---- connections ---- */
static void close_cb(uv_handle_t *h)
{
    sb_conn_t *c = h->data;
    sb_loop_t *loop = c->loop;
    if (c->ops && c->ops->on_close) c->ops->on_close(c);
    if (c->tls) SSL_free(c->tls);
    while (c->qlen) q_pop(c);
    if (c->q != c->qinline) free(c->q);
    free(c->in);
    if (c->flags & SB_CONN_PENDING) {
        sb_conn_t **pp = &loop->pending;
        while (*pp && *pp != c) pp = &(*pp)->pending_next;
        if (*pp) *pp = c->pending_next;
    }
    if (c->prev) c->prev->next = c->next;
    else loop->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    loop->nconns--;
    if (!(c->flags & SB_CONN_REFUSED)) {
        atomic_fetch_sub(&sb_net.conns_open, 1);
        SB_STAT_ADD(loop, conns_open, -1);
    }
    SB_STAT_ADD(loop, conns_closed, 1);
    if (c->holds) {
        /* An acknowledgement still on its way refers to this connection: keep
         * the memory, marked dead, until it arrives (sb_conn_release). */
        c->ops = NULL;
        c->proto = NULL;
        c->flags |= SB_CONN_DEAD | SB_CONN_CLOSING;
        return;
    }
    free(c);
}

void sb_conn_hold(sb_conn_t *c) { c->holds++; }

bool sb_conn_release(sb_conn_t *c)
{
    if (--c->holds == 0 && (c->flags & SB_CONN_DEAD)) {
        free(c);
        return false;
    }
    /* A half-closed client: the flush pass of this turn, after the caller
     * queued the answer, writes it and ends the connection. */
    if (c->holds == 0 && (c->flags & SB_CONN_PEER_EOF)) mark_pending(c);
    return !(c->flags & (SB_CONN_DEAD | SB_CONN_CLOSING));
}

void sb_conn_close(sb_conn_t *c)
{
    if (c->flags & SB_CONN_CLOSING) return;
    /* uv_close closes the descriptor at once, and a send still queued for it
     * would go to whatever file gets that number next: run the queue first. */
    sb_loop_t *loop = c->loop;
    if (c->flags & SB_CONN_SENDQ) sendq_run(loop);
    if (c->sq_slot >= 0 && loop->sendq) {
        /* The ring's table holds a reference to the socket: drop it first, or
         * closing the descriptor would not close the connection. (A ring that
         * was torn down dropped all of them.) */
        sb_sendq_unregister(loop->sendq, c->sq_slot);
        sendq_drop_if_failed(loop);
    }
    c->sq_slot = -1;
    c->flags |= SB_CONN_CLOSING;
    uv_close((uv_handle_t *)&c->tcp, close_cb);
}

static void shutdown_cb(uv_shutdown_t *req, int status)
{
    sb_conn_t *c = req->data;
    free(req);
    if (status < 0 && !(c->flags & SB_CONN_CLOSING)) sb_conn_close(c);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf);
static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void start_shutdown(sb_conn_t *c)
{
    /* Half-close, then read and discard until the peer closes or the linger
     * time passes: closing with unread input would send RST and could destroy
     * the response we just wrote before the client reads it. */
    c->flags |= SB_CONN_SHUTDOWN;
    c->deadline_ms = c->loop->now_ms + 2000;
    uv_shutdown_t *req = malloc(sizeof *req);
    if (!req || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_cb) < 0) {
        free(req);
        sb_conn_close(c);
        return;
    }
    req->data = c;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

void sb_conn_end(sb_conn_t *c)
{
    if (c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING)) return;
    c->flags |= SB_CONN_ENDING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    mark_pending(c);
}

void sb_conn_pause(sb_conn_t *c)
{
    if (c->flags & (SB_CONN_PAUSED | SB_CONN_CLOSING)) return;
    c->flags |= SB_CONN_PAUSED;
    uv_read_stop((uv_stream_t *)&c->tcp);
}

void sb_conn_resume(sb_conn_t *c)
{
    if (!(c->flags & SB_CONN_PAUSED) || (c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING))) return;
    c->flags &= ~SB_CONN_PAUSED;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    sb_conn_t *c = h->data;
    if (c->in_len && !c->tls && !(c->flags & SB_CONN_SHUTDOWN)) {
        /* An incomplete request or frame is pending: read straight after it. */
        if (c->in_cap - c->in_len < 16384) {
            size_t cap = c->in_cap * 2;
            if (cap < c->in_len + 16384u) cap = c->in_len + 16384u;
            char *p = cap <= SB_CONN_MAX_INPUT ? realloc(c->in, cap) : NULL;
            if (!p) {
                *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
                return;
            }
            c->in = p;
            c->in_cap = (uint32_t)cap;
        }
        *buf = uv_buf_init(c->in + c->in_len, c->in_cap - c->in_len);
        return;
    }
    *buf = uv_buf_init(c->loop->readbuf, READBUF_SIZE);
}

/* Hands bytes from a scratch buffer (the loop's) to the protocol; what it does
 * not consume yet is kept in the connection's own input buffer. */
static void feed(sb_conn_t *c, char *p, size_t n)
{
    if (c->in_len) {
        if (c->in_cap - c->in_len < n) {
            size_t cap = c->in_len + n + 16384;
            char *q = cap <= SB_CONN_MAX_INPUT ? realloc(c->in, cap) : NULL;
            if (!q) {
                sb_conn_close(c);
                return;
            }
            c->in = q;
            c->in_cap = (uint32_t)cap;
        }
        memcpy(c->in + c->in_len, p, n);
        c->in_len += (uint32_t)n;
        run_on_data(c);
        return;
    }
    ssize_t used = c->ops->on_data(c, p, n);
    if (used < 0 || (c->flags & SB_CONN_CLOSING)) return;
    size_t rest = n - (size_t)used;
    if (!rest) return;
    size_t cap = rest * 2 < 16384 ? 16384 : rest * 2;
    c->in = malloc(cap);
    if (!c->in) {
        sb_conn_close(c);
        return;
    }
    memcpy(c->in, p + used, rest);
    c->in_len = (uint32_t)rest;
    c->in_cap = (uint32_t)cap;
}

/* ---- TLS: memory BIOs on the loop; the socket only ever sees ciphertext ---- */
static SSL_CTX *tls_ctx;

int sb_net_tls_init(const char *cert, const char *key)
{
    tls_ctx = SSL_CTX_new(TLS_server_method());
    if (!tls_ctx) goto fail;
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    /* Idle connections give their record buffers back. */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(tls_ctx, cert) != 1 ||
        SSL_CTX_use_PrivateKey_file(tls_ctx, key, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(tls_ctx) != 1)
        goto fail;
    return 0;
fail:;
    char err[256] = "unknown";
    unsigned long e = ERR_get_error();
    if (e) ERR_error_string_n(e, err, sizeof err);
    sb_error("cannot load TLS certificate or key", "cert=%s key=%s err=\"%s\"", cert, key, err);
    if (tls_ctx) SSL_CTX_free(tls_ctx);
    tls_ctx = NULL;
    return -1;
}

/* Moves ciphertext OpenSSL produced into the queue, after the ciphertext
 * already there and before any plaintext not yet encrypted. */
static void tls_emit(sb_conn_t *c)
{
    BIO *wbio = SSL_get_wbio(c->tls);
    int pending = (int)BIO_ctrl_pending(wbio);
    if (pending <= 0) return;
    sb_frame_t *f = sb_frame_new((size_t)pending);
    if (!f || !q_reserve(c)) {
        sb_frame_unref(f);
        sb_conn_close(c);
        return;
    }
    BIO_read(wbio, f->data, pending);
    uint32_t at = c->enc_upto;
    memmove(qat(c, at + 1), qat(c, at), (c->qlen - at) * sizeof(sb_out_t));
    *qat(c, at) = (sb_out_t){f, 0, NULL};
    c->qlen++;
    c->enc_upto++;
    c->out_bytes += f->len;
    mark_pending(c);
}

static void tls_encrypt(sb_conn_t *c)
{
    if (!SSL_is_init_finished(c->tls)) return;
    if (c->enc_upto < c->qlen) {
        /* All plaintext queued this turn becomes one run of TLS records. */
        uint32_t from = c->enc_upto;
        for (uint32_t i = from; i < c->qlen; i++) {
            sb_out_t *e = qat(c, i);
            if (SSL_write(c->tls, e->f->data + e->off, (int)(e->f->len - e->off)) <= 0) {
                ERR_clear_error();
                sb_conn_close(c);
                return;
            }
            c->out_bytes -= e->f->len - e->off;
            sb_frame_unref(e->f);
        }
        c->qlen = from;
        tls_emit(c);
    }
    if ((c->flags & SB_CONN_ENDING) && !c->tls_closing && c->enc_upto == c->qlen) {
        c->tls_closing = true;
        SSL_shutdown(c->tls); /* close_notify after the last byte of data */
        tls_emit(c);
    }
}

static void tls_on_cipher(sb_conn_t *c, const char *p, size_t n)
{
    BIO_write(SSL_get_rbio(c->tls), p, (int)n);
    if (!SSL_is_init_finished(c->tls)) {
        int r = SSL_do_handshake(c->tls);
        tls_emit(c);
        if (r != 1) {
            int e = SSL_get_error(c->tls, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                sb_log_ratelimited(SB_LOG_INFO, 1000, "TLS handshake failed", "peer=%s", c->peer);
                ERR_clear_error();
                sb_conn_close(c);
            }
            return;
        }
    }
    for (;;) {
        int r = SSL_read(c->tls, c->loop->tlsbuf, READBUF_SIZE);
        if (r > 0) {
            feed(c, c->loop->tlsbuf, (size_t)r);
            if (c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING | SB_CONN_SHUTDOWN)) break;
            continue;
        }
        int e = SSL_get_error(c->tls, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) break;
        ERR_clear_error();
        sb_conn_close(c); /* close_notify or a TLS error */
        return;
    }
    tls_emit(c);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    sb_conn_t *c = s->data;
    if (c->flags & SB_CONN_CLOSING) return;
    if (nread < 0) {
        if (nread == UV_EOF && c->holds && !(c->flags & SB_CONN_SHUTDOWN)) {
            /* The client half-closed while an acknowledgement it waits for (a
             * durable publish) is still on its way: answer it first, then end
             * the connection (sb_conn_release). Reading no longer pauses while
             * such an answer is pending, so the FIN can arrive before it. */
            c->flags |= SB_CONN_PEER_EOF;
            uv_read_stop(s);
            return;
        }
        /* EOF or reset. A client closing an SSE or WebSocket connection is
         * noticed here at once and all its state goes in close_cb. */
        sb_conn_close(c);
        return;
    }
    if (nread == 0) return;
    SB_STAT_ADD(c->loop, bytes_in, (uint64_t)nread);
    if (c->flags & SB_CONN_SHUTDOWN) return; /* lingering: discard */
    if (c->tls) {
        tls_on_cipher(c, buf->base, (size_t)nread);
        return;
    }
    if (buf->base != c->loop->readbuf) {
        c->in_len += (uint32_t)nread;
        run_on_data(c);
        return;
    }
    feed(c, buf->base, (size_t)nread);
}

/* A zeroed connection with its handle initialized and linked into the loop. */
static sb_conn_t *conn_alloc(sb_loop_t *loop)
{
    sb_conn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->loop = loop;
    c->id = atomic_fetch_add(&next_conn_id, 1);
    c->q = c->qinline;
    c->qcap = SB_OUT_INLINE;
    c->sq_slot = SB_SQ_UNTRIED;
    c->created_ms = loop->now_ms;
    uv_tcp_init(&loop->uv, &c->tcp);
    c->tcp.data = c;
    c->next = loop->conns;
    if (loop->conns) loop->conns->prev = c;
    loop->conns = c;
    loop->nconns++;
    return c;
}

static const char refused_503[] =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    "Connection: close\r\nRetry-After: 5\r\nContent-Length: 104\r\n\r\n"
    "{\"error\":{\"code\":\"overloaded\",\"message\":\"The server is at its connection limit; try again later.\"}}";

/* ---- accept pacing (--accept-rate) ---- */

/* Connections a second this loop may accept (its share of --accept-rate), 0: no cap. */
static double accept_rate_per_loop(void)
{
    if (sb_cfg.accept_rate <= 0 || sb_net.nloops <= 0) return 0;
    return (double)sb_cfg.accept_rate / sb_net.nloops;
}

/* Takes one accept token; false (taking nothing) when the bucket is empty. The
 * bucket holds 50 ms of the rate (at least one): a storm is admitted at the
 * rate from its first moment, not after a free second's burst. */
static bool accept_take(sb_loop_t *l)
{
    double rate = accept_rate_per_loop();
    if (rate <= 0) return true;
    double burst = rate / 20 > 1 ? rate / 20 : 1;
    int64_t now = (int64_t)(sb_mono_us() / 1000);
    if (!l->accept.at_ms) l->accept = (sb_bucket_t){.tokens = burst, .at_ms = now};
    return sb_bucket_take_burst(&l->accept, rate, burst, now);
}

static void accept_one(sb_loop_t *loop, uv_stream_t *server);

static void accept_timer_cb(uv_timer_t *t)
{
    sb_loop_t *l = t->data;
    if (!l->accept_held || !l->listening) return;
    if (!accept_take(l)) {
        uv_timer_start(&l->accept_timer, accept_timer_cb, 1, 0);
        return;
    }
    l->accept_held = false;
    /* uv_accept takes the socket libuv held and starts reading the listener again. */
    accept_one(l, (uv_stream_t *)&l->listener);
}

static void on_connection(uv_stream_t *server, int status)
{
    sb_loop_t *loop = server->data;
    if (status >= 0 && !accept_take(loop)) {
        /* Over the rate: leave the socket with libuv, which stops reading the
         * listener until uv_accept; the rest of a storm queues in the backlog.
         * The wait is the time to the next token, at least 1 ms. */
        int64_t now = (int64_t)(sb_mono_us() / 1000);
        int64_t wait = sb_bucket_wait_ms(&loop->accept, accept_rate_per_loop(), now);
        loop->accept_held = true;
        SB_STAT_ADD(loop, accept_pauses, 1);
        uv_timer_start(&loop->accept_timer, accept_timer_cb, wait > 0 ? (uint64_t)wait : 1, 0);
        return;
    }
    if (status < 0) {
        /* EMFILE/ENFILE: libuv sheds the pending connection with its reserve
         * descriptor. main.c keeps --max-connections under the open-file limit
         * so this takes descriptors used by something else (storage, AI
         * upstreams); we count and log once a second. */
        SB_STAT_ADD(loop, conns_refused, 1);
        sb_log_ratelimited(SB_LOG_WARN, 1000, "accept failed", "err=%s open=%lld",
                           uv_err_name(status), (long long)atomic_load(&sb_net.conns_open));
        return;
    }
    accept_one(loop, server);
}

static void accept_one(sb_loop_t *loop, uv_stream_t *server)
{
    sb_conn_t *c = conn_alloc(loop);
    if (!c) {
        /* Out of memory: libuv keeps the socket and stops reading the
         * listener until it is accepted, so try again shortly rather than
         * never. */
        loop->accept_held = true;
        uv_timer_start(&loop->accept_timer, accept_timer_cb, 100, 0);
        return;
    }
    SB_STAT_ADD(loop, conns_accepted, 1);
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->flags |= SB_CONN_REFUSED;
        sb_conn_close(c);
        return;
    }
    int64_t open = atomic_fetch_add(&sb_net.conns_open, 1) + 1;
    if (open > sb_net.max_conns || atomic_load(&sb_net.draining)) {
        /* At the cap: answer 503 and close, never hold or spin. */
        atomic_fetch_sub(&sb_net.conns_open, 1);
        c->flags |= SB_CONN_REFUSED;
        SB_STAT_ADD(loop, conns_refused, 1);
        sb_log_ratelimited(SB_LOG_WARN, 1000, "connection refused: at the connection cap",
                           "open=%lld max=%lld", (long long)open - 1, (long long)sb_net.max_conns);
        /* A TLS client cannot read a plaintext answer: it sees the close. */
        uv_buf_t b = uv_buf_init((char *)refused_503, sizeof refused_503 - 1);
        if (!tls_ctx) uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        sb_conn_close(c);
        return;
    }
    SB_STAT_ADD(loop, conns_open, 1);
    struct sockaddr_storage ss;
    int sl = sizeof ss;
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
        else if (ss.ss_family == AF_INET6)
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
    }
    /* Real-time traffic: never wait for Nagle. */
    uv_tcp_nodelay(&c->tcp, 1);
    if (tls_ctx) {
        SSL *ssl = SSL_new(tls_ctx);
        BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
        if (!ssl || !rb || !wb) {
            SSL_free(ssl);
            BIO_free(rb);
            BIO_free(wb);
            sb_conn_close(c);
            return;
        }
        SSL_set_bio(ssl, rb, wb);
        SSL_set_accept_state(ssl);
        c->tls = ssl;
    }
    sb_net.on_accept(c);
    if (!(c->flags & SB_CONN_CLOSING)) uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
}

sb_conn_t *sb_conn_new_detached(sb_loop_t *loop)
{
    sb_conn_t *c = conn_alloc(loop);
    if (!c) return NULL;
    atomic_fetch_add(&sb_net.conns_open, 1);
    SB_STAT_ADD(loop, conns_open, 1);
    return c;
}

static void tick_cb(uv_timer_t *t)
{
    sb_loop_t *loop = t->data;
    int64_t now = sb_now_ms();
    loop->now_ms = now;
    for (sb_conn_t *c = loop->conns; c; c = c->next) {
        if (c->flags & SB_CONN_CLOSING) continue;
        if (c->flags & SB_CONN_SHUTDOWN) {
            if (now >= c->deadline_ms) sb_conn_close(c);
            continue;
        }
        if (c->ops && c->ops->on_tick) c->ops->on_tick(c, now);
    }
}

/* ---- listeners and loops ---- */
static int make_listener(const char *host, int port)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) == 0) {
        sl = sizeof(struct sockaddr_in);
    } else if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) == 0) {
        sl = sizeof(struct sockaddr_in6);
    } else {
        return -EINVAL;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* One listening socket per loop: the kernel spreads new connections over
     * the loops, no loop hands sockets to another. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 4096) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static int bound_port_of(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0) return -1;
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

int sb_net_init(int nloops, const char *host, int port, void (*on_accept)(sb_conn_t *c))
{
    if (!strcmp(sb_cfg.io_uring, "on")) {
        /* Asked for by name: refuse to start without it rather than run slower
         * than the operator measured. (auto falls back, with a warning.) */
        const char *why = NULL;
        sb_sendq_t *probe = sb_sendq_new(&why);
        if (!probe) {
            sb_error("--io-uring on, but io_uring is not available", "why=\"%s\"", why);
            return -ENOTSUP;
        }
        sb_sendq_free(probe);
    }
    sb_net.nloops = nloops;
    sb_net.on_accept = on_accept;
    sb_net.loops = calloc((size_t)nloops, sizeof *sb_net.loops);
    if (!sb_net.loops) return -ENOMEM;
    for (int i = 0; i < nloops; i++) {
        sb_loop_t *l = calloc(1, sizeof *l);
        if (!l) return -ENOMEM;
        sb_net.loops[i] = l;
        l->id = i;
        l->readbuf = malloc(READBUF_SIZE);
        l->tlsbuf = tls_ctx ? malloc(READBUF_SIZE) : NULL;
        if (!l->readbuf || (tls_ctx && !l->tlsbuf)) return -ENOMEM;
        l->now_ms = sb_now_ms();
        uv_loop_init(&l->uv);
        l->uv.data = l;
        uv_mutex_init(&l->inbox_mu);
        uv_async_init(&l->uv, &l->async, async_cb);
        l->async.data = l;
        uv_check_init(&l->uv, &l->check);
        l->check.data = l;
        uv_check_start(&l->check, check_cb);
        uv_prepare_init(&l->uv, &l->prepare);
        l->prepare.data = l;
        uv_prepare_start(&l->prepare, prepare_cb);
        uv_timer_init(&l->uv, &l->tick);
        l->tick.data = l;
        uv_timer_start(&l->tick, tick_cb, SB_TICK_MS, SB_TICK_MS);
        int fd = make_listener(host, port);
        if (fd < 0) {
            sb_error("cannot listen", "addr=%s:%d err=\"%s\"", host, port, strerror(-fd));
            return fd;
        }
        if (port == 0) port = bound_port_of(fd);
        uv_tcp_init(&l->uv, &l->listener);
        l->listener.data = l;
        int r = uv_tcp_open(&l->listener, fd);
        if (r == 0) r = uv_listen((uv_stream_t *)&l->listener, 4096, on_connection);
        if (r < 0) {
            sb_error("cannot listen", "addr=%s:%d err=%s", host, port, uv_err_name(r));
            return r;
        }
        l->listening = true;
        uv_timer_init(&l->uv, &l->accept_timer);
        l->accept_timer.data = l;
    }
    bound_port = port;
    return 0;
}

int sb_net_port(void) { return bound_port; }

static void loop_thread(void *arg)
{
    sb_loop_t *l = arg;
    current_loop = l;
    char name[16];
    snprintf(name, sizeof name, "sb-loop-%d", l->id);
    pthread_setname_np(pthread_self(), name);
    /* The ring belongs to the thread that submits to it (SINGLE_ISSUER). */
    if (strcmp(sb_cfg.io_uring, "off") != 0) {
        const char *why = NULL;
        l->sendq = sb_sendq_new(&why);
        if (l->id == 0) {
            if (l->sendq) sb_info("writes go through io_uring, batched per loop turn", "loops=%d", sb_net.nloops);
            else sb_warn("io_uring is not available; writing with plain system calls", "why=\"%s\"", why);
        }
    }
    uv_run(&l->uv, UV_RUN_DEFAULT);
    sb_sendq_free(l->sendq);
    l->sendq = NULL;
}

int sb_net_start(void)
{
    for (int i = 0; i < sb_net.nloops; i++) {
        int r = uv_thread_create(&sb_net.loops[i]->thread, loop_thread, sb_net.loops[i]);
        if (r < 0) return r;
    }
    return 0;
}

void sb_net_join(void)
{
    for (int i = 0; i < sb_net.nloops; i++) uv_thread_join(&sb_net.loops[i]->thread);
}

static void stop_accepting_task(sb_loop_t *l, void *a, void *b)
{
    if (l->listening) {
        l->listening = false;
        /* A socket held for --accept-rate is closed with the listener. */
        l->accept_held = false;
        uv_close((uv_handle_t *)&l->listener, NULL);
        uv_close((uv_handle_t *)&l->accept_timer, NULL);
    }
}

void sb_net_stop_accepting(void)
{
    atomic_store(&sb_net.draining, true);
    for (int i = 0; i < sb_net.nloops; i++) sb_loop_post(sb_net.loops[i], stop_accepting_task, NULL, NULL);
}

static void shutdown_step_task(sb_loop_t *l, void *a, void *b)
{
    intptr_t n = (intptr_t)a;
    for (sb_conn_t *c = l->conns; c && n > 0; c = c->next) {
        if (c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING | SB_CONN_SHUTDOWN)) continue;
        n--;
        if (c->ops && c->ops->on_shutdown) c->ops->on_shutdown(c);
        else sb_conn_close(c);
    }
}

void sb_net_shutdown_step(int n)
{
    for (int i = 0; i < sb_net.nloops; i++)
        sb_loop_post(sb_net.loops[i], shutdown_step_task, (void *)(intptr_t)n, NULL);
}

int64_t sb_net_open(void) { return atomic_load(&sb_net.conns_open); }

static void (*stop_hooks[8])(sb_loop_t *);
static int nstop_hooks;

void sb_net_on_stop(void (*fn)(sb_loop_t *))
{
    if (nstop_hooks < 8) stop_hooks[nstop_hooks++] = fn;
}

static void stop_task(sb_loop_t *l, void *a, void *b)
{
    stop_accepting_task(l, NULL, NULL);
    for (sb_conn_t *c = l->conns; c; c = c->next) sb_conn_close(c);
    for (int i = 0; i < nstop_hooks; i++) stop_hooks[i](l);
    uv_close((uv_handle_t *)&l->tick, NULL);
    uv_close((uv_handle_t *)&l->check, NULL);
    uv_close((uv_handle_t *)&l->prepare, NULL);
    uv_close((uv_handle_t *)&l->async, NULL);
}

void sb_net_stop(void)
{
    for (int i = 0; i < sb_net.nloops; i++) sb_loop_post(sb_net.loops[i], stop_task, NULL, NULL);
}

void sb_net_free(void)
{
    for (int i = 0; i < sb_net.nloops; i++) {
        sb_loop_t *l = sb_net.loops[i];
        /* Tasks posted after the stop (late cross-loop deliveries) still hold
         * references: run them so they release what they own. */
        drain_tasks(l);
        uv_run(&l->uv, UV_RUN_NOWAIT);
        uv_loop_close(&l->uv);
        while (l->write_free) {
            uv_write_t *r = l->write_free;
            l->write_free = *(uv_write_t **)r;
            free(r);
        }
        uv_mutex_destroy(&l->inbox_mu);
        free(l->inbox);
        free(l->work);
        free(l->readbuf);
        free(l->tlsbuf);
        free(l);
    }
    free(sb_net.loops);
    sb_net.loops = NULL;
}
