/* Channels: the broker. Named ordered streams of messages, their bounded
 * history, and per-loop subscriber lists. Transports plug in through
 * sb_sink_ops_t and message formatters; the broker never includes a transport.
 *
 * Ordering: every message gets a process-wide sequence number (its id) under one
 * broker lock, and is handed to each interested loop's task queue under that
 * same lock. So each loop sees messages in id order across all channels, and an
 * SSE stream over several channels can use the id of the last message it sent
 * as one cursor for all of them. */
#ifndef SB_CHANNELS_H
#define SB_CHANNELS_H

#include "core/core.h"
#include "net/net.h"

typedef struct sb_chan sb_chan_t;
typedef struct sb_msg sb_msg_t;
typedef struct sb_sub sb_sub_t;

/* Wire formats a message can be serialized to, each built once and shared. */
enum {
    SB_FMT_SSE,        /* id/event/data lines, data bare */
    SB_FMT_SSE_ENV,    /* id/event lines, data = the whole message JSON */
    SB_FMT_JSON,       /* {"id","channel","event","data","time"} */
    SB_FMT_WS,         /* WebSocket text frame of {"op":"message",...} */
    SB_FMT_WS_DEFLATE, /* the same, permessage-deflate compressed */
    SB_FMT_WS_RAW,     /* raw rooms: the member's frame as it was sent */
    SB_FMT_COUNT
};

#define SB_MSG_DATA_STRING 1 /* data is a JSON string: SSE sends its bare text */
#define SB_MSG_RAW 2         /* data is the raw payload of a room frame, not JSON */
#define SB_MSG_BINARY 4      /* with RAW: a binary frame */
#define SB_MSG_COMPACT 8     /* a compacted text run (sb_broker_compact_text); never delivered as is */

struct sb_msg {
    atomic_int _refs;
    uint8_t flags;
    uint16_t event_len;
    uint32_t data_len;
    uint32_t _nparts; /* SB_MSG_COMPACT: the messages it stands for (fills padding) */
    uint64_t seq;     /* the id */
    int64_t time_ms;  /* server receive time */
    uint64_t pub_us;  /* monotonic publish time, for delivery latency */
    uint64_t origin;  /* publishing connection id (echo=0), 0 for none */
    sb_chan_t *chan;  /* a reference */
    const char *event; /* NUL-terminated, in tail */
    const char *data;  /* JSON text of the data value, NUL-terminated, in tail */
    _Atomic(sb_frame_t *) _frames[SB_FMT_COUNT];
    char tail[];
};

static inline sb_msg_t *sb_msg_ref(sb_msg_t *m)
{
    atomic_fetch_add_explicit(&m->_refs, 1, memory_order_relaxed);
    return m;
}
void sb_msg_unref(sb_msg_t *m);

/* Returns the message serialized in `fmt`, built on first use and cached on the
 * message (a borrowed reference, valid while m is). Thread-safe: two loops
 * racing build it twice and one copy is dropped. NULL on OOM. */
sb_frame_t *sb_msg_frame(sb_msg_t *m, int fmt);

/* Installs the builder of a format (transports do this at start, before any
 * message exists). The builder returns a new frame. */
typedef sb_frame_t *(*sb_msg_formatter_t)(const sb_msg_t *m);
void sb_msg_register_format(int fmt, sb_msg_formatter_t fn);

/* Appends the message as compact JSON {"id","channel","event","data","time"}. */
void sb_msg_json(const sb_msg_t *m, sb_buf_t *b);
/* Appends just its data as one JSON value: the data itself, or for a room
 * frame its JSON value when the text is JSON, else a string (binary frames as
 * base64). Every JSON transport reads room frames through this. */
void sb_msg_data_json(const sb_msg_t *m, sb_buf_t *b);

/* The channel's name (NUL-terminated, lives as long as the channel). */
const char *sb_chan_name(const sb_chan_t *ch, size_t *len);
sb_chan_t *sb_chan_ref(sb_chan_t *ch);
void sb_chan_unref(sb_chan_t *ch);
/* Per-channel counters for the slow-reader policies and metrics. */
void sb_chan_count_slow(sb_chan_t *ch, int policy);
/* A slot for the presence layer's per-channel state (owned by presence). */
void **sb_chan_presence_slot(sb_chan_t *ch);

/* What a subscriber plugs in. Both are called on the subscriber's loop. */
typedef struct {
    /* A message for this subscription (borrowed: ref it to keep it). */
    void (*deliver)(sb_sub_t *s, sb_msg_t *m);
    /* The requested resume point is older than the kept history (or unknown):
     * the kept history follows. reason is "history_gap". */
    void (*reset)(sb_sub_t *s, const char *reason);
} sb_sink_ops_t;

/* One subscription of one sink to one channel. Owned (embedded or allocated)
 * by the transport; the broker only links it. */
struct sb_sub {
    sb_chan_t *chan;          /* set by subscribe */
    uint8_t policy;           /* set by subscribe: the channel's slow-reader policy */
    const sb_sink_ops_t *ops; /* set by the caller */
    void *sink;               /* the transport's state, for the callbacks */
    uint64_t last_seq;        /* highest id delivered; later ones only */
    int32_t _idx;
    int16_t _loop;
    uint8_t flags; /* free for the transport */
};

/* Queues frame f (a borrowed reference) for the subscriber's connection c,
 * tagged with the channel, applying the channel's slow-reader policy
 * (--slow-policy): conflate replaces a pending message of the channel,
 * drop-oldest drops its oldest pending ones past the output limit, disconnect
 * closes a reader past the limit. Each is counted per channel. Returns false
 * when c was closed. Loop thread of c. */
bool sb_sub_send(sb_conn_t *c, sb_sub_t *s, sb_frame_t *f);

/* A resume point: absent (live only), or "after id seq" (0 = from the start of
 * kept history). */
typedef struct {
    bool set;
    uint64_t seq;
} sb_since_t;

/* Parses a cursor (the decimal id of a message, as sent in SSE id: lines and
 * message ids) into *out. Returns false on anything else. Any thread. */
bool sb_cursor_decode(sb_str_t s, sb_since_t *out);
/* Writes the cursor of seq into out (at least 21 bytes); returns its length. */
size_t sb_cursor_encode(uint64_t seq, char *out);

/* Starts the broker (in memory mode; the history layer then installs its
 * hooks). start_seq is the first id it may issue (from durable storage, or
 * derived from the clock in memory mode); floor_seq the first id this server
 * (or data directory) ever issued: older cursors get a reset. */
void sb_broker_init(uint64_t start_seq, uint64_t floor_seq);
/* Drops every channel and message (at exit, after the loops stopped). */
void sb_broker_free(void);

/* A publish request. Slices are borrowed until return. */
typedef struct {
    sb_str_t channel; /* must be valid (sb_valid_channel) */
    sb_str_t event;   /* empty = "message"; must be valid when set */
    sb_str_t data;    /* JSON text of the data value (validated by the caller) */
    bool data_is_string;
    uint8_t raw_flags; /* SB_MSG_RAW (| SB_MSG_BINARY) for room frames */
    sb_str_t idem_key; /* empty = none */
    uint64_t origin;   /* publishing connection id, 0 = none */
} sb_pub_t;

typedef void (*sb_publish_cb_t)(void *ud, int status, uint64_t seq);

/* Optional durable store hook: queues m (borrowed until return) for the disk
 * and returns 0, then calls done(ud, status) exactly once, on the store's
 * thread and in id order, with 0 once it is durable or < 0 if it failed; or
 * returns < 0 at once without calling done. Called under the broker lock, so
 * it must never block on disk. Installed by the history layer before the loops
 * start (src/history). With a store installed, every publish is appended and a
 * message enters history, `last` and the subscribers' streams only from done(0),
 * so a reader never sees what a crash could take back, and a failed message
 * never appears (its id is skipped). */
typedef int (*sb_store_append_fn)(sb_msg_t *m, sb_str_t idem_key, void (*done)(void *, int), void *ud);
void sb_broker_set_store(sb_store_append_fn fn);

/* The store's group hooks (sb_store_opts_t.group_begin/end), on its thread:
 * between begin and end every done() callback of the group runs under one take
 * of the broker lock, and what they release goes back to the publishing loop. */
void sb_broker_durable_group(bool begin);

/* Durable mode: returns the highest id the broker may issue, about to issue
 * `next`. Called under the broker lock on every durable publish, so it must be
 * cheap and never block on disk (it may ask for a new block asynchronously).
 * Publishes past the limit fail with SB_ERR_STORAGE_FAILED. */
typedef uint64_t (*sb_seq_limit_fn)(uint64_t next);
void sb_broker_set_seq_limit(sb_seq_limit_fn fn);

/* Cluster mode (src/cluster): the hook that takes over every publish. It
 * sends p (borrowed until return) to be numbered cluster-wide and returns 0
 * when cb will run later on the calling loop (status 0 with the id, or
 * SB_PUB_CLUSTER_DOWN), 1 when there is no cb (the message appears once the
 * cluster has numbered it; *seq_out stays 0), or -1 with *why set. The
 * message enters history only through sb_broker_apply. Installed before the
 * loops start. */
typedef int (*sb_cluster_publish_fn)(const sb_pub_t *p, int64_t time_ms, sb_publish_cb_t cb, void *ud,
                                     sb_err_t *why);
void sb_broker_set_cluster(sb_cluster_publish_fn fn);

/* The status a publish callback gets when the cluster could not take it. */
#define SB_PUB_CLUSTER_DOWN (-2)
/* The client-visible error of a failed publish callback's status. */
sb_err_t sb_publish_error(int status);

/* Cluster mode: applies a message the cluster numbered `seq`, in id order
 * (an id at or below the newest applied one is ignored): history, `last` and
 * the subscribers' loops, as a local publish would. Idempotency keys are the
 * cluster's business, not this table's. Any thread. Returns 0, or -1 at the
 * channel limit or without memory (the message is skipped). */
int sb_broker_apply(const sb_pub_t *p, uint64_t seq, int64_t time_ms);

/* Cluster mode: ids up to `upto` are lost for good (the cluster log no longer
 * holds what this node missed). Resuming after an older cursor gets a reset;
 * with `tell`, every current subscriber is sent a reset ("history_gap") now,
 * since its stream skipped messages. Any thread. */
void sb_broker_gap(uint64_t upto, bool tell);

/* Puts a message recovered from the durable log back into history, as if it
 * had just been published with id seq at time_ms: the channel's ring (within
 * --history-size and --history-ttl), its last message, and its idempotency key
 * while time_ms + --idempotency-window is ahead. p's slices are borrowed until
 * return. Call in id order, after the loops exist and before they run. Returns
 * 0, or -1 at the channel limit or without memory (the message is skipped). */
int sb_broker_restore(const sb_pub_t *p, uint64_t seq, int64_t time_ms);

/* Ids up to `upto` may have been forgotten (durable log retention deleted
 * them): resuming after an older cursor gets a reset. Any thread. */
void sb_broker_set_watermark(uint64_t upto);

/* Called once the loops have stopped and before the store closes: completions
 * still update history, but post nothing to the loops, and acknowledgements
 * still pending are dropped (their callbacks never run). Any thread. */
void sb_broker_quiesce(void);

/* Publishes: assigns the id, appends to history, hands the message to every
 * loop with subscribers. Returns 1 when done (*seq_out set; a repeated
 * idempotency key returns the first id and publishes nothing), 0 when the
 * acknowledgement waits for durable storage (only with a store and a cb: cb
 * runs later on the calling loop, with status 0 or < 0 for
 * SB_ERR_STORAGE_FAILED; a repeat of a key whose first publish is still
 * waiting waits for the same outcome), or -1 with *why set
 * (SB_ERR_CHANNEL_LIMIT, SB_ERR_STORAGE_FAILED). Without a cb in durable mode
 * it returns 1 at once and the message appears once stored. Any loop thread. */
int sb_broker_publish(const sb_pub_t *p, uint64_t *seq_out, sb_err_t *why, sb_publish_cb_t cb,
                      void *ud);

/* Subscribes n subscriptions on `loop` (the calling loop) at once, to the
 * channels named in names[i], each resuming after `since`. Under one lock it
 * registers them all and snapshots their history; then, on this thread, it
 * calls reset for every channel whose history has a gap, and delivers the
 * backlogs merged in id order, so one cursor covers all channels of the
 * stream. Afterwards live messages follow with no gap and no duplicate.
 * Returns 0, or -1 with *why set (SB_ERR_CHANNEL_LIMIT): then none is subscribed. */
int sb_broker_subscribe(sb_loop_t *loop, sb_sub_t **subs, const sb_str_t *names, size_t n,
                        sb_since_t since, sb_err_t *why);
/* Removes a subscription (safe while the channel is delivering). Loop thread
 * of the subscription. Idempotent. */
void sb_broker_unsubscribe(sb_sub_t *s);

/* Copies up to `limit` history messages with id > since (all kept history when
 * !since.set) as new references into out[], oldest first. *reset is set when
 * the resume point is older than the kept history. *next is the cursor to ask
 * with next time (the last returned id, or the channel's last id). Returns the
 * count. Unknown channels have no history. Any thread. */
size_t sb_broker_history(sb_str_t channel, sb_since_t since, size_t limit, sb_msg_t **out,
                         bool *reset, uint64_t *next);

/* Compaction of a text stream's history (AI answers: thousands of tiny
 * `delta` messages). Every run of consecutive kept messages of `channel` with
 * id <= upto whose event is `event` and whose data is exactly {"text":"..."}
 * (runs compacted earlier included) becomes one stored message holding the
 * concatenated text and, for each original message, its id and where its text
 * ends. Readers never receive that stored message: history pages and subscribe
 * backlogs replay it as `event` messages {"text":"..."} of at most
 * SB_RUN_CHUNK bytes of text (one longer original alone), each made of whole
 * original messages and carrying the id of the last of them, starting right
 * after the reader's cursor and cut wherever another message of the reader's
 * stream falls between two originals. So a reader resuming from any id inside
 * the run gets exactly the text it missed, and one cursor still covers every
 * channel of a stream. Live delivery is not affected (live readers already got
 * the originals). Runs of one message are left alone. The work happens outside
 * the broker lock, which is only taken to snapshot and to swap; a run that
 * changed meanwhile (eviction) is left as it is.
 * Returns 0 when every id <= upto is in history, SB_AGAIN when some are still
 * on their way to the durable store (what was there is compacted; call again
 * later), or SB_ENOMEM. An unknown channel returns 0. Any loop thread. */
#define SB_RUN_CHUNK 8192
int sb_broker_compact_text(sb_str_t channel, sb_str_t event, uint64_t upto);

typedef struct {
    sb_msg_t *last; /* a new reference or NULL */
    int64_t subscribers;
    int64_t history;
    bool exists;
} sb_chan_info_t;
/* Fills the channel's info. Any thread. */
void sb_broker_channel_info(sb_str_t channel, sb_chan_info_t *out);

typedef struct {
    int64_t channels, messages_kept, subscriptions;
    uint64_t published, idem_hits, last_seq;
} sb_broker_stats_t;
void sb_broker_stats(sb_broker_stats_t *out);

/* Appends Prometheus lines for channels with slow-reader events. */
void sb_broker_metrics_per_channel(sb_buf_t *b);

/* Expires old history and forgets idle channels; run periodically (any thread). */
void sb_broker_gc(void);

#endif
