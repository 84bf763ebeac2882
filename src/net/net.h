/* Net: one libuv loop per worker thread, connections pinned to their loop,
 * batched writes of shared frames, cross-loop task queues, and a per-loop tick.
 *
 * Write path: sb_conn_send() only queues a frame reference and marks the
 * connection pending. Once per loop turn (uv_check, right after I/O callbacks,
 * and uv_prepare, before the loop sleeps) every pending connection is flushed
 * with one non-blocking vectored write of its queued frames; only what the
 * kernel did not take is handed to uv_write. Where io_uring is available
 * (--io-uring), the writes of a pass go to the kernel together, up to 256
 * per system call (net/sendq.h). */
#ifndef SB_NET_H
#define SB_NET_H

#include <uv.h>

#include "core/core.h"

typedef struct sb_loop sb_loop_t;
typedef struct sb_conn sb_conn_t;

/* What a protocol (HTTP, SSE, WebSocket) plugs into a connection. */
typedef struct {
    /* New input: buf[0..len) holds all unconsumed bytes. Returns how many bytes
     * were consumed (the rest is kept and offered again with more input), or a
     * negative value when the connection was closed by the protocol. May write
     * into buf (in-place decoding). Called on the connection's loop. */
    ssize_t (*on_data)(sb_conn_t *c, char *buf, size_t len);
    /* Called every tick (SB_TICK_MS) with the loop's clock, for timeouts and heartbeats. */
    void (*on_tick)(sb_conn_t *c, int64_t now_ms);
    /* The output queue became empty after having held data. Optional. */
    void (*on_drain)(sb_conn_t *c);
    /* The connection is gone: release protocol state (subscriptions, buffers).
     * Called once from uv_close's callback; the conn is freed right after. */
    void (*on_close)(sb_conn_t *c);
    /* The server is shutting down: end this connection gracefully now (an SSE
     * retry hint, a WebSocket 1001 close). Optional; without it, close. */
    void (*on_shutdown)(sb_conn_t *c);
} sb_conn_ops_t;

#define SB_TICK_MS 250

/* One queued output frame. `tag` lets a slow-reader policy find the entries of
 * one channel (conflate, drop-oldest). */
typedef struct {
    sb_frame_t *f;
    uint32_t off;
    const void *tag;
} sb_out_t;

#define SB_OUT_INLINE 4

enum {
    SB_CONN_CLOSING = 1 << 0,   /* sb_conn_close called; uv_close pending */
    SB_CONN_ENDING = 1 << 1,    /* close once the queue drains */
    SB_CONN_PENDING = 1 << 2,   /* on the loop's pending-flush list */
    SB_CONN_WRITING = 1 << 3,   /* a uv_write is in flight */
    SB_CONN_PAUSED = 1 << 4,    /* reading stopped by the protocol */
    SB_CONN_SHUTDOWN = 1 << 5,  /* write side shut down; discarding input until EOF */
    SB_CONN_REFUSED = 1 << 6,   /* accepted over the cap: answer 503 and close */
    SB_CONN_REPROCESS = 1 << 7, /* run on_data over buffered input at the next flush pass */
    SB_CONN_DEAD = 1 << 8,      /* closed; the struct lives on only for its holders */
    SB_CONN_SENDQ = 1 << 9,     /* a send of it waits in the loop's send queue (with WRITING) */
    SB_CONN_PEER_EOF = 1 << 10, /* the peer half-closed while a hold was out: end after it */
};

#define SB_SQ_UNTRIED (-2)

struct sb_conn {
    uv_tcp_t tcp; /* first: the handle's data points back at the conn anyway */
    sb_loop_t *loop;
    const sb_conn_ops_t *ops;
    void *proto;     /* protocol state, owned by ops */
    uint64_t id;     /* process-unique, never 0 */
    uint32_t flags;
    uint32_t inflight;     /* queue entries covered by the uv_write in flight */
    /* unconsumed input (only while a request or frame is incomplete) */
    char *in;
    uint32_t in_len, in_cap;
    /* output queue: entries [qhead, qhead+qlen) of q */
    sb_out_t *q;
    uint32_t qhead, qlen, qcap;
    sb_out_t qinline[SB_OUT_INLINE];
    size_t out_bytes;      /* queued, not yet written */
    int64_t created_ms;
    int64_t deadline_ms;   /* protocol-owned timeout; 0 = none */
    sb_conn_t *next, *prev;     /* the loop's list of connections */
    sb_conn_t *pending_next;    /* the loop's pending-flush list */
    char peer[48];         /* remote IP, for logs and per-IP limits */
    void *tls;             /* SSL* when serving TLS, else NULL */
    uint32_t enc_upto;     /* TLS: queue entries [0, enc_upto) are ciphertext */
    bool tls_closing;      /* TLS: close_notify sent */
    uint32_t holds;        /* sb_conn_hold references: memory kept past the close */
    int32_t sq_slot;       /* its registered-file slot in the loop's send queue; -1: none,
                            * SB_SQ_UNTRIED: not registered yet (before its first send) */
};

/* Per-loop counters. Each is written only by its loop's thread (relaxed
 * load+store, no lock prefix) and read by the metrics endpoint from any thread. */
typedef struct {
    _Atomic uint64_t conns_accepted, conns_closed, conns_refused;
    _Atomic uint64_t accept_pauses; /* --accept-rate: times the listener waited for a token */
    _Atomic uint64_t bytes_in, bytes_out, writes, write_calls_partial;
    _Atomic uint64_t write_syscalls; /* system calls that carried the writes (io_uring batches them) */
    _Atomic uint64_t requests, responses_4xx, responses_5xx;
    _Atomic uint64_t deliveries, messages_in;
    _Atomic uint64_t slow_disconnects, slow_dropped, slow_conflated;
    _Atomic int64_t conns_open, sse_streams, ws_conns, longpolls;
} sb_loop_stats_t;

#define SB_STAT_ADD(loop, field, n)                                                        \
    atomic_store_explicit(&(loop)->stats.field,                                            \
                          atomic_load_explicit(&(loop)->stats.field, memory_order_relaxed) + \
                              (n),                                                         \
                          memory_order_relaxed)

typedef void (*sb_task_fn)(sb_loop_t *loop, void *a, void *b);

/* Log-bucketed latency histogram (microseconds), one per loop per kind. */
#define SB_HIST_BUCKETS 64
typedef struct {
    _Atomic uint64_t b[SB_HIST_BUCKETS];
} sb_hist_t;
void sb_hist_add(sb_hist_t *h, uint64_t us);
/* Percentile (0..100) of the sum of hs[0..n), in microseconds (bucket upper bound). */
uint64_t sb_hist_percentile(const sb_hist_t *hs, size_t n, size_t stride, double pct);

struct sb_loop {
    uv_loop_t uv;
    int id;
    uv_thread_t thread;
    uv_tcp_t listener;
    bool listening;
    /* --accept-rate: this loop's share as a token bucket. While it is empty the
     * listener is not read (libuv holds the one accepted socket), so pending
     * connections wait in the kernel's backlog rather than being refused. */
    uv_timer_t accept_timer;
    bool accept_held;       /* a connection waits for a token (accept_timer runs) */
    sb_bucket_t accept;     /* monotonic ms; at_ms 0 until the first accept */
    uv_async_t async;
    uv_check_t check;
    uv_prepare_t prepare;
    uv_timer_t tick;
    int64_t now_ms; /* wall clock at the last tick or turn */
    /* cross-loop tasks */
    uv_mutex_t inbox_mu;
    struct sb_task *inbox, *work;
    size_t inbox_len, inbox_cap, work_cap;
    /* connections */
    sb_conn_t *conns;
    sb_conn_t *pending;
    size_t nconns;
    uv_write_t *write_free; /* freelist of write requests */
    struct sb_sendq *sendq; /* io_uring batch of this turn's writes, or NULL: plain writes */
    char *readbuf;          /* shared by all reads on this loop (libuv reads one at a time) */
    char *tlsbuf;           /* decrypted bytes of the current TLS read */
    bool readbuf_busy;
    sb_loop_stats_t stats;
    sb_hist_t delivery_lat; /* publish -> handed to the loop's flush, per message per loop */
    sb_hist_t request_lat;  /* HTTP request head parsed -> response queued */
    void *layer[8];         /* per-loop state of other layers (presence, ai, ...) */
};

enum { SB_LAYER_PRESENCE = 0, SB_LAYER_AI = 1, SB_LAYER_WS = 2, SB_LAYER_CLUSTER = 3 };

/* The server: all loops. */
typedef struct {
    sb_loop_t **loops;
    int nloops;
    _Atomic int64_t conns_open;    /* across loops, for the cap */
    int64_t max_conns;
    _Atomic bool draining;
    /* Called for every accepted connection to install its first protocol. */
    void (*on_accept)(sb_conn_t *c);
} sb_net_t;

extern sb_net_t sb_net;

/* Creates nloops loops and binds a SO_REUSEPORT listener on each to host:port.
 * port 0 picks a free port (shared by every loop). Returns 0 or a negative
 * errno; logs the reason. Call from the main thread before sb_net_run. */
int sb_net_init(int nloops, const char *host, int port, void (*on_accept)(sb_conn_t *c));
/* Serves TLS on every connection from now on: loads a PEM certificate chain and
 * key. Call before sb_net_init. Returns 0, or -1 after logging why. */
int sb_net_tls_init(const char *cert_file, const char *key_file);
/* The bound port (useful with port 0). */
int sb_net_port(void);
/* Starts one thread per loop and returns; sb_net_join waits for them. */
int sb_net_start(void);
void sb_net_join(void);
/* Frees the loops after sb_net_join. */
void sb_net_free(void);

/* Runs fn(loop, a, b) on `loop`'s thread soon. Thread-safe; never blocks on I/O. */
void sb_loop_post(sb_loop_t *loop, sb_task_fn fn, void *a, void *b);
/* The loop whose thread is calling, or NULL on other threads. */
sb_loop_t *sb_loop_current(void);
/* Makes `loop` the calling thread's loop (NULL: none): for unit tests that run
 * a loop with uv_run on their own thread instead of sb_net_start. */
void sb_loop_bind_current(sb_loop_t *loop);

/* Creates a connection on `loop` that no socket backs (for fuzzers and unit
 * tests that drive a protocol's on_data directly): writes to it fail and close
 * it. Loop thread only; freed by sb_conn_close like any other. */
sb_conn_t *sb_conn_new_detached(sb_loop_t *loop);

/* Queues a frame for writing. Takes the reference f. `tag` marks the channel for
 * slow-reader policies (NULL for protocol frames). Dropped silently when the
 * conn is closing. Loop thread only. */
void sb_conn_send(sb_conn_t *c, sb_frame_t *f, const void *tag);
/* Copies bytes into a new frame and queues it. */
void sb_conn_send_copy(sb_conn_t *c, const void *p, size_t len);
/* Closes now, dropping queued output. Safe to call more than once and from
 * inside any callback; the memory goes in uv_close's callback. */
void sb_conn_close(sb_conn_t *c);
/* Keeps the connection's memory valid across an asynchronous step (a durable
 * publish's acknowledgement) even if it closes meanwhile. Call on its loop.
 * sb_conn_release drops the hold and says whether the connection is still
 * open; after false, `c` must not be touched again. */
void sb_conn_hold(sb_conn_t *c);
bool sb_conn_release(sb_conn_t *c);
/* Closes once everything queued has been written (then a FIN, a short linger
 * that discards input, and close). */
void sb_conn_end(sb_conn_t *c);
void sb_conn_pause(sb_conn_t *c);
void sb_conn_resume(sb_conn_t *c);
/* Re-runs on_data over buffered input (after the protocol finished an async step). */
void sb_conn_reprocess(sb_conn_t *c);
/* Removes queued entries that have not started writing and whose tag equals tag,
 * oldest first, until at most `keep_bytes` of that tag remain queued. Returns
 * the number of entries removed. */
size_t sb_conn_drop_tagged(sb_conn_t *c, const void *tag, size_t keep_bytes);
/* Drops every queued entry that has not started writing (before a last
 * close frame to a reader that fell behind). Returns the bytes dropped. */
size_t sb_conn_discard_unsent(sb_conn_t *c);
/* Replaces the newest queued, not-yet-started entry with `tag` by f (taking f),
 * returning true; false (f not taken) when there is none. */
bool sb_conn_replace_tagged(sb_conn_t *c, const void *tag, sb_frame_t *f);

/* Registers fn to run on each loop when it stops (to close layer handles). */
void sb_net_on_stop(void (*fn)(sb_loop_t *));
/* Stops accepting on every loop (for shutdown). Thread-safe. */
void sb_net_stop_accepting(void);
/* Ends up to `n` connections on every loop through their on_shutdown (for a
 * paced drain). Thread-safe. */
void sb_net_shutdown_step(int n);
/* Open connections across loops. */
int64_t sb_net_open(void);
/* Asks every loop to stop once its connections are gone; thread-safe. */
void sb_net_stop(void);

#endif
