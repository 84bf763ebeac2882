/* sb_loadgen: the shared state of the load generator.
 *
 * One process, one epoll loop, non-blocking sockets. Every connection is a slot in one
 * array; publishers and receivers point into it. The generator is standalone on purpose
 * (it links neither the server library nor anything of it), so the same binary measures
 * Switchboard, nchan and the Node peers with identical costs on the client side. */
#ifndef LG_H
#define LG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- histogram: log-linear buckets, ~1.6% precision, values in microseconds ---- */
#define LG_HIST_BUCKETS 2432

typedef struct {
    uint64_t n[LG_HIST_BUCKETS];
    uint64_t count;
    uint64_t max;
} lg_hist_t;

/* Adds one sample (microseconds). */
void lg_hist_add(lg_hist_t *h, uint64_t us);
/* Returns the value at quantile q in [0,1] in microseconds (bucket midpoint), 0 if empty. */
double lg_hist_quantile(const lg_hist_t *h, double q);

/* ---- what the connections speak ---------------------------------------------- */
typedef enum {
    SUB_NONE,
    SUB_WS_JSON, /* GET /v1/ws then {"op":"subscribe"}; ready on {"op":"ok"} */
    SUB_WS_URL,  /* WebSocket whose URL names the channel (nchan); ready on 101 */
    SUB_ROOM,    /* raw room member: GET /?room=R; ready on 101 */
    SUB_SSE,     /* GET /v1/sse?channel=c; ready on the 200 headers */
} sub_kind_t;

typedef enum {
    PUB_NONE,
    PUB_HTTP,    /* POST with keep-alive, pipelined up to the window */
    PUB_WS_JSON, /* {"op":"publish"} over /v1/ws, acked by {"op":"ok"} */
    PUB_ROOM,    /* a raw text frame sent into a room, no ack */
} pub_kind_t;

enum { CS_NEW, CS_CONNECTING, CS_HANDSHAKE, CS_SUBSCRIBING, CS_OPEN, CS_CLOSED, CS_FAILED };

/* Chunked transfer decoding state, kept per connection across reads. */
typedef struct {
    uint8_t st;
    bool done;
    uint64_t left; /* bytes left in the current chunk, or the size being parsed */
} lg_chunk_t;

/* Per receiver, per publisher of its group: the newest sequence seen and a 64-bit
 * window below it, so duplicates and late (reordered) arrivals are told apart. */
typedef struct {
    uint32_t last;
    uint32_t pad;
    uint64_t seen;
} lg_seq_t;

typedef struct lg_conn {
    int fd;
    uint8_t state;
    uint8_t kind;     /* SUB_* for receivers, or 100 + PUB_* for publish-only connections */
    bool receiver;    /* counts deliveries */
    bool chunked;     /* SSE body in chunked transfer encoding */
    bool in_body;     /* HTTP publisher: parsing a response body */
    bool counted;     /* established and counted in its group */
    bool cork;        /* queue sends, one write when uncorked (lg_net_uncork) */
    uint32_t group;
    int32_t pubid;    /* publisher this connection sends for, or -1 */
    lg_seq_t *seq;    /* receivers: one slot per publisher of the group */
    char *in;         /* unparsed tail of the input (partial frame, line or header) */
    uint32_t in_len, in_cap;
    char *out;        /* bytes the socket did not take yet */
    uint32_t out_off, out_len, out_cap;
    uint64_t t_start; /* connect() time, us */
    uint64_t body_left;
    lg_chunk_t chunk;
    int rsp_status;
} lg_conn_t;

/* A publisher: one sequence space, sending over one connection. Paced messages that
 * could not go out at once (window full) wait in a small ring of their scheduled times. */
typedef struct {
    int32_t conn;
    uint32_t group;
    uint32_t slot;       /* index among the publishers of its group */
    uint32_t seq;        /* last sequence number sent */
    uint32_t phase_seq;  /* first sequence number of the current phase */
    uint32_t outstanding;/* requests or acks in flight */
    uint64_t *backlog;   /* scheduled send times waiting for the window, lazily allocated */
    uint32_t bl_head, bl_len;
    uint64_t *sent_at;   /* ring of send times of in-flight requests (response latency) */
    uint32_t sa_head, sa_len;
} lg_pub_t;

/* Counters of one measured phase (one rate of a ladder). */
typedef struct {
    uint64_t published, accepted, pub_errors, skipped;
    uint64_t expected, received, dup, reordered, late, misdelivered, bad, dropped;
    uint64_t t_start, t_end, t_last_recv;
    uint64_t polls, events, reads; /* the generator's own syscalls: is it saturated? */
    lg_hist_t lat;       /* end-to-end delivery latency */
    lg_hist_t rsp;       /* publish request -> response (HTTP, WS acks) */
} lg_phase_t;

typedef struct {
    /* options */
    const char *scenario, *label, *host, *channel;
    int port;
    int pub_port; /* --pub-target: publish-only connections go here (0: to port) */
    sub_kind_t sub;
    pub_kind_t pub;
    uint32_t subs, pubs, groups, members, window, size, concurrency, src_ips;
    double rates[16];
    int nrates;
    double duration, drain, settle, connect_timeout, max_p99_ms;
    bool stop_on_loss;
    bool busy_poll;         /* epoll_wait never sleeps */
    bool no_uring;          /* --no-io-uring: one recv per ready subscriber */
    const char *before_cmd, *after_cmd; /* shell commands run around each phase */
    char ws_path[256], sse_path[256], pub_path[256];
    int server_pids[8];
    int nserver_pids;

    /* runtime */
    int ep;
    lg_conn_t *conns;
    uint32_t nconns, nrecv; /* receivers first, then publish-only connections */
    lg_pub_t *pubs_v;
    uint32_t npubs;
    uint32_t *group_recv;   /* established receivers per group */
    uint32_t *group_pubs;   /* publishers per group */
    lg_seq_t *seq_block;    /* every receiver's sequence slots, one allocation */
    uint32_t next_connect, inflight, established, failed, closed_during_run;
    uint64_t outstanding;   /* publish requests or acks in flight, all publishers */
    uint64_t t0;            /* CLOCK_MONOTONIC at start, us */
    char ws_key[32], ws_accept[32];
    char *scratch;
    size_t scratch_cap;
    bool publishing;        /* the schedule is running */
    lg_phase_t ph;
    lg_hist_t connect_hist; /* connect() to established */
    uint64_t t_first_connect, t_all_connected;
} lg_t;

extern lg_t L;

/* Microseconds since the generator started (monotonic). */
uint64_t lg_now(void);

/* ---- connection layer (net.c) ----------------------------------------------- */
/* Starts connects while fewer than the configured number are in flight. */
void lg_net_pump_connects(void);
/* Sets up batched io_uring receives for subscribers, where the kernel allows. */
void lg_net_uring_init(void);
bool lg_net_uring_active(void);
/* Runs one epoll wait of at most timeout_us and handles what it returns. */
void lg_net_poll(uint64_t timeout_us);
/* Queues bytes on a connection: writes at once what the socket takes, keeps the rest. */
void lg_net_send(lg_conn_t *c, const void *p, size_t n);
/* Fails connections whose connect or handshake takes longer than the connect timeout. */
void lg_net_expire(void);
/* Decodes chunked transfer encoding: returns the input bytes consumed (it stops right
 * after the body's end, setting ch->done); data bytes go to out (may be NULL), their
 * count to *outn. Start with a zeroed lg_chunk_t. */
size_t lg_dechunk(lg_chunk_t *ch, const char *in, size_t n, char *out, size_t *outn);
/* Checks the histogram, the chunked decoder and the frame encoder; returns 0 if sound. */
int lg_selftest(void);
/* Resets every connection with SO_LINGER 0 so the kernel keeps no TIME_WAIT. */
void lg_net_close_all(void);
/* Writes what a corked connection queued, in one send. */
void lg_net_uncork(lg_conn_t *c);
/* True while a connection has more queued than a publisher may pile up. */
bool lg_net_out_busy(const lg_conn_t *c);
/* Writes one masked client WebSocket frame into out (n + 14 bytes at most). */
size_t lg_ws_frame(char *out, int op, const char *payload, size_t n);
/* The channel (or room) name of a group, and its publish path. */
void lg_channel_name(uint32_t group, char *out, size_t cap);
void lg_pub_path(uint32_t group, char *out, size_t cap);

/* ---- publishing (main.c) ---------------------------------------------------- */
/* Called by the net layer when a publisher's window may have opened. */
void lg_pub_window_open(lg_pub_t *p);
/* Called by the net layer for each HTTP response or WebSocket ack of a publisher. */
void lg_pub_response(lg_conn_t *c, bool ok);

#endif
