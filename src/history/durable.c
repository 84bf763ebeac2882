/* The glue between the broker and the durable log. The broker stays free of
 * storage: it calls the two hooks installed here (append, and the id limit),
 * and gets its history back through sb_broker_restore() at start. */
#include "history/history.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "channels/channels.h"
#include "config/config.h"
#include "net/net.h"

static struct {
    sb_store_t *store;
    int64_t asked_ms;  /* under the broker lock: when the next id block was last asked for */
    bool *kick_posted; /* per loop, touched by that loop only: a kick is queued this turn */
    char mode[sizeof sb_cfg.data_dir + 16];
} H = {.mode = "memory"};

/* Runs in the flush pass at the end of the loop's turn, after every request
 * of the turn has been handled. */
static void kick_task(sb_loop_t *loop, void *a, void *b)
{
    /* After sb_history_stop (a task drained by sb_net_free) there is
     * nothing left to clear or kick. */
    if (H.kick_posted) H.kick_posted[loop->id] = false;
    if (H.store) sb_store_kick(H.store);
}

/* The broker's store hook, under its lock: only copies the message into the
 * store's queue (no disk work on the loop). On a loop the store thread is
 * woken once per turn rather than once per publish: a turn that handles 50
 * publishes costs one wakeup, which on a two-core machine is one preemption
 * of a loop instead of 50. */
static int append_hook(sb_msg_t *m, sb_str_t idem_key, void (*done)(void *, int), void *ud)
{
    size_t nl;
    const char *name = sb_chan_name(m->chan, &nl);
    sb_store_rec_t r = {
        .seq = m->seq,
        .time_ms = m->time_ms,
        .flags = m->flags,
        .channel = sb_str(name, nl),
        .event = sb_str(m->event, m->event_len),
        .data = sb_str(m->data, m->data_len),
        .idem_key = idem_key,
    };
    sb_loop_t *loop = H.kick_posted ? sb_loop_current() : NULL;
    if (!loop) return sb_store_append(H.store, &r, done, ud);
    int rc = sb_store_append_deferred(H.store, &r, done, ud);
    if (rc == 0 && !H.kick_posted[loop->id]) {
        H.kick_posted[loop->id] = true;
        sb_loop_post(loop, kick_task, NULL, NULL);
    }
    return rc;
}

/* The broker's id limit, under its lock: one atomic load while the reserved
 * block lasts. Once half of it is used, ask the store thread for the next one
 * (it writes it between two batches); a request that failed (a full disk) is
 * repeated at most every 100 ms rather than on every publish. */
static uint64_t limit_hook(uint64_t next)
{
    uint64_t lim = sb_store_reserved(H.store);
    if (lim < next + SB_HISTORY_SEQ_BLOCK / 2) {
        int64_t now = sb_now_ms();
        if (now - H.asked_ms >= 100) {
            H.asked_ms = now;
            sb_store_reserve_async(H.store, next + SB_HISTORY_SEQ_BLOCK);
        }
    }
    return lim;
}

static void group_begin(void *ud) { sb_broker_durable_group(true); }
static void group_end(void *ud) { sb_broker_durable_group(false); }

static int parse_fsync(const char *s, sb_fsync_mode_t *out)
{
    if (!strcmp(s, "always"))
        *out = SB_FSYNC_ALWAYS;
    else if (!strcmp(s, "batch"))
        *out = SB_FSYNC_BATCH;
    else if (!strcmp(s, "off"))
        *out = SB_FSYNC_OFF;
    else
        return -1;
    return 0;
}

int sb_history_init(void)
{
    const char *dir = sb_cfg.data_dir;
    if (!dir[0] || !strcmp(dir, "none")) {
        /* Memory mode: ids start from the clock (ms x 1000), so a restarted
         * server issues ids above any the previous process issued (unless it
         * averaged over a million messages a second), and older cursors get
         * an explicit reset. */
        uint64_t start = (uint64_t)sb_now_ms() * 1000;
        sb_broker_init(start, start);
        snprintf(H.mode, sizeof H.mode, "memory");
        return 0;
    }
    sb_store_opts_t o = {.dir = dir, .group_begin = group_begin, .group_end = group_end};
    if (parse_fsync(sb_cfg.fsync, &o.fsync) < 0) {
        sb_error("history: --fsync must be always, batch or off", "fsync=%s", sb_cfg.fsync);
        return -1;
    }
    if (sb_cfg.fsync_batch_us > 0)
        o.batch_window_us =
            sb_cfg.fsync_batch_us > UINT32_MAX ? UINT32_MAX : (uint32_t)sb_cfg.fsync_batch_us;
    o.retain_bytes = sb_cfg.retain_bytes > 0 ? (uint64_t)sb_cfg.retain_bytes : 0;
    /* Preallocation only pays where appends wait for an fdatasync; with
     * --fsync off it would only write every block twice. */
    if (o.fsync != SB_FSYNC_OFF) o.prealloc_bytes = SB_STORE_PREALLOC_BYTES_DEFAULT;
    /* Age retention follows the history TTL, since older messages are never
     * served, but keeps records at least as long as their idempotency keys
     * must be remembered across a restart. */
    if (sb_cfg.history_ttl_ms > 0)
        o.retain_ms = sb_cfg.history_ttl_ms > sb_cfg.idem_window_ms ? sb_cfg.history_ttl_ms
                                                                    : sb_cfg.idem_window_ms;
    int rc = sb_store_open(&o, &H.store);
    if (rc < 0) {
        sb_error("history: cannot open the data directory", "dir=%s err=%d", dir, rc);
        return -1;
    }
    sb_store_info_t in;
    sb_store_info(H.store, &in);
    /* A fresh directory starts from the clock, like memory mode, so that
     * cursors from a wiped directory or an earlier memory-mode server are
     * told apart (they reset) instead of resuming at a wrong place. */
    uint64_t origin = 0;
    if (sb_store_origin(H.store, (uint64_t)sb_now_ms() * 1000, &origin) < 0) goto fail;
    uint64_t start = in.next_seq > origin ? in.next_seq : origin;
    /* Without a reservation no id may be issued, but a server restarted on a
     * full disk must still serve its readers: it starts, and publishes get
     * 507 until the limit hook's retries succeed. */
    if (sb_store_reserve(H.store, start - 1 + SB_HISTORY_SEQ_BLOCK) < 0)
        sb_warn("history: no id reservation on disk; publishes fail until one succeeds",
                "dir=%s", dir);
    /* The floor is the first id this directory ever issued: any cursor from
     * its past resumes without a reset. Cursors older than the oldest record
     * retention kept may have missed deleted messages: they reset. */
    sb_broker_init(start, origin);
    sb_broker_set_watermark(in.first_seq ? in.first_seq - 1 : start - 1);
    sb_broker_set_store(append_hook);
    sb_broker_set_seq_limit(limit_hook);
    snprintf(H.mode, sizeof H.mode, "durable:%s", dir);
    sb_info(
        "history: durable",
        "dir=%s fsync=%s batch_window_us=%u retain_bytes=%llu retain_ms=%lld "
        "records=%llu first_id=%llu next_id=%llu origin=%llu",
        dir, sb_cfg.fsync, o.batch_window_us ? o.batch_window_us : SB_STORE_BATCH_WINDOW_US_DEFAULT,
        (unsigned long long)o.retain_bytes, (long long)o.retain_ms, (unsigned long long)in.records,
        (unsigned long long)in.first_seq, (unsigned long long)start, (unsigned long long)origin);
    return 0;
fail:
    sb_error("history: cannot record the directory's first id", "dir=%s", dir);
    sb_store_close(H.store);
    H.store = NULL;
    return -1;
}

typedef struct {
    uint64_t restored, skipped, keys;
} restore_t;

static int restore_cb(void *ud, const sb_store_rec_t *r)
{
    restore_t *st = ud;
    sb_pub_t p = {
        .channel = r->channel,
        .event = r->event,
        .data = r->data,
        .data_is_string = (r->flags & SB_MSG_DATA_STRING) != 0,
        .raw_flags = (uint8_t)(r->flags & (SB_MSG_RAW | SB_MSG_BINARY)),
        .idem_key = r->idem_key,
    };
    if (sb_broker_restore(&p, r->seq, r->time_ms) < 0) {
        st->skipped++;
        sb_log_ratelimited(SB_LOG_WARN, 1000, "history: a recovered message was skipped",
                           "id=%llu reason=channel_limit_or_memory", (unsigned long long)r->seq);
    } else {
        st->restored++;
        if (r->idem_key.len) st->keys++;
    }
    return 0;
}

int sb_history_start(void)
{
    if (!H.store) return 0;
    H.kick_posted = calloc((size_t)(sb_net.nloops > 0 ? sb_net.nloops : 1), sizeof *H.kick_posted);
    if (!H.kick_posted) {
        sb_error("history: out of memory", "%s", "");
        return -1;
    }
    uint64_t t0 = sb_mono_us();
    restore_t st = {0};
    int n = sb_store_recover(H.store, restore_cb, &st);
    if (n < 0) {
        sb_error("history: the log could not be read back; refusing to serve a "
                 "partial history",
                 "err=%d", n);
        return -1;
    }
    sb_broker_stats_t bs;
    sb_broker_stats(&bs);
    sb_info("history: recovered",
            "records=%llu skipped=%llu channels=%lld kept=%lld keys=%llu ms=%llu",
            (unsigned long long)st.restored, (unsigned long long)st.skipped, (long long)bs.channels,
            (long long)bs.messages_kept, (unsigned long long)st.keys,
            (unsigned long long)((sb_mono_us() - t0) / 1000));
    return 0;
}

void sb_history_stop(void)
{
    if (!H.store) return;
    sb_broker_quiesce();
    sb_store_close(H.store);
    H.store = NULL;
    free(H.kick_posted);
    H.kick_posted = NULL;
}

const char *sb_history_mode(void) { return H.mode; }

bool sb_history_info(sb_store_info_t *out)
{
    if (!H.store) return false;
    sb_store_info(H.store, out);
    return true;
}
