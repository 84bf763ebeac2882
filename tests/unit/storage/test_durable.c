/* The history layer (src/history) over the durable log: a message enters
 * history and reaches subscribers only once stored; a repeat of an idempotency
 * key waits for the first publish's outcome; a failed write leaves no trace
 * and frees its key; a restart brings back history, last messages and keys,
 * continues the ids and resumes old cursors without a reset; cursors older
 * than what retention kept get one. Runs one real loop (no thread) driven by
 * uv_run; completions arrive on the store thread. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <unistd.h>
#include <uv.h>

#include "channels/channels.h"
#include "config/config.h"
#include "history/history.h"
#include "net/net.h"
#include "storage/storage.h"
#include "testlib.h"

/* ---- a subscriber that records what it gets ---- */
typedef struct {
    uint64_t ids[64];
    int n, resets;
} sink_t;

static void deliver(sb_sub_t *s, sb_msg_t *m)
{
    sink_t *k = s->sink;
    if (k->n < 64) k->ids[k->n] = m->seq;
    k->n++;
}
static void reset(sb_sub_t *s, const char *reason) { ((sink_t *)s->sink)->resets++; }
static const sb_sink_ops_t ops = {.deliver = deliver, .reset = reset};

static void accept_none(sb_conn_t *c) { sb_conn_close(c); }

static void run(sb_loop_t *l)
{
    for (int i = 0; i < 5; i++) uv_run(&l->uv, UV_RUN_NOWAIT);
}

/* ---- injected file operations: a slow or failing disk ---- */
static atomic_int slow_sync_ms, fail_writes;

static ssize_t io_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    if (atomic_load(&fail_writes)) {
        errno = ENOSPC;
        return -1;
    }
    return pwritev(fd, iov, cnt, off);
}

static int io_fdatasync(int fd)
{
    int ms = atomic_load(&slow_sync_ms);
    if (ms) usleep((useconds_t)ms * 1000);
    return fdatasync(fd);
}

static const sb_store_io_t test_io = {io_pwritev, io_fdatasync, ftruncate};

/* ---- publishing and waiting for the acknowledgement ---- */
typedef struct {
    atomic_int done;
    int status;
    uint64_t seq;
} ack_t;

static void ack_cb(void *ud, int status, uint64_t seq)
{
    ack_t *a = ud;
    a->status = status;
    a->seq = seq;
    atomic_store(&a->done, 1);
}

static bool wait_ack(ack_t *a)
{
    for (int i = 0; i < 10000 && !atomic_load(&a->done); i++) usleep(1000);
    return atomic_load(&a->done);
}

/* Publishes and, with an ack, returns what sb_broker_publish returned. */
static int pub(const char *ch, const char *data, const char *key, ack_t *a, uint64_t *seq)
{
    sb_pub_t p = {.channel = sb_str(ch, strlen(ch)), .data = sb_str(data, strlen(data))};
    if (key) p.idem_key = sb_str(key, strlen(key));
    sb_err_t why = SB_OK;
    if (a) *a = (ack_t){0};
    return sb_broker_publish(&p, seq, &why, a ? ack_cb : NULL, a);
}

/* Publishes and waits until it is durable; returns the id (0 on failure). */
static uint64_t pub_wait(const char *ch, const char *data, const char *key)
{
    ack_t a;
    uint64_t seq = 0;
    int r = pub(ch, data, key, &a, &seq);
    if (r == 1) return seq; /* an idempotency hit */
    CHECK_EQ_INT(r, 0);
    CHECK(wait_ack(&a));
    CHECK_EQ_INT(a.status, 0);
    CHECK(a.seq == seq);
    return a.status == 0 ? seq : 0;
}

static size_t history(const char *ch, uint64_t since, bool set, uint64_t *ids, size_t max,
                      bool *rst)
{
    sb_msg_t *out[64];
    uint64_t next;
    if (max > 64) max = 64;
    size_t n =
        sb_broker_history(sb_str(ch, strlen(ch)), (sb_since_t){set, since}, max, out, rst, &next);
    for (size_t i = 0; i < n; i++) {
        ids[i] = out[i]->seq;
        sb_msg_unref(out[i]);
    }
    return n;
}

/* ---- lives of a server on one data directory ---- */
static char *tmpdir(void)
{
    char tmpl[512];
    const char *base = getenv("TMPDIR");
    snprintf(tmpl, sizeof tmpl, "%s/sbdurable-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    if (!d) abort();
    return strdup(d);
}

static void life_begin(const char *dir, const char *fsync, const char *retain)
{
    char *argv[] = {"t",           "--data-dir",     (char *)dir,    "--fsync",
                    (char *)fsync, "--history-size", "1000",         "--retain-bytes",
                    (char *)retain, "--log-level",   "warn",         NULL};
    CHECK_EQ_INT(sb_config_parse(11, argv), 0);
    sb_store_set_io_for_test(&test_io);
    CHECK_EQ_INT(sb_history_init(), 0);
    sb_store_set_io_for_test(NULL);
    CHECK_EQ_INT(sb_history_start(), 0);
}

static void life_end(sb_loop_t *l)
{
    run(l);
    sb_history_stop();
    run(l);
    sb_broker_free();
}

static void rm_rf(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* ---- tests ---- */

static void test_visible_once_durable(sb_loop_t *l)
{
    char *dir = tmpdir();
    life_begin(dir, "always", "1GiB");
    sink_t k = {0};
    sb_sub_t s = {.ops = &ops, .sink = &k}, *subs[1] = {&s};
    sb_str_t names[1] = {SB_STR("vis")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 1, (sb_since_t){0}, &why), 0);

    /* While the disk is busy the message is numbered but nowhere to be seen. */
    atomic_store(&slow_sync_ms, 300);
    ack_t a;
    uint64_t seq = 0, ids[4];
    bool rst;
    CHECK_EQ_INT(pub("vis", "1", NULL, &a, &seq), 0);
    CHECK(seq > 0);
    CHECK_EQ_INT(history("vis", 0, true, ids, 4, &rst), 0);
    sb_chan_info_t info;
    sb_broker_channel_info(SB_STR("vis"), &info);
    CHECK(info.exists && info.last == NULL);
    run(l);
    CHECK_EQ_INT(k.n, 0);
    CHECK(wait_ack(&a));
    atomic_store(&slow_sync_ms, 0);
    CHECK_EQ_INT(a.status, 0);
    CHECK(a.seq == seq);
    CHECK_EQ_INT(history("vis", 0, true, ids, 4, &rst), 1);
    CHECK(ids[0] == seq && !rst);
    sb_broker_channel_info(SB_STR("vis"), &info);
    CHECK(info.last && info.last->seq == seq);
    sb_msg_unref(info.last);
    run(l);
    CHECK_EQ_INT(k.n, 1);
    CHECK(k.ids[0] == seq);

    /* Without a callback (room frames) publish returns at once; the message
     * still appears only once stored, after the one before it. */
    uint64_t seq2 = 0;
    CHECK_EQ_INT(pub("vis", "2", NULL, NULL, &seq2), 1);
    CHECK(seq2 > seq);
    uint64_t seq3 = pub_wait("vis", "3", NULL);
    CHECK(seq3 > seq2);
    CHECK_EQ_INT(history("vis", seq, true, ids, 4, &rst), 2);
    CHECK(ids[0] == seq2 && ids[1] == seq3);
    run(l);
    CHECK_EQ_INT(k.n, 3);
    CHECK(k.ids[1] == seq2 && k.ids[2] == seq3);
    sb_broker_unsubscribe(&s);
    life_end(l);
    rm_rf(dir);
    free(dir);
}

static void test_idempotency_waits_and_failures(sb_loop_t *l)
{
    char *dir = tmpdir();
    life_begin(dir, "batch", "1GiB");

    /* A repeat of a key whose first publish is still on its way to the disk
     * is answered with the same id, and only once that is durable. */
    atomic_store(&slow_sync_ms, 200);
    ack_t a1, a2;
    uint64_t s1 = 0, s2 = 0;
    CHECK_EQ_INT(pub("idem", "1", "k1", &a1, &s1), 0);
    CHECK_EQ_INT(pub("idem", "1", "k1", &a2, &s2), 0);
    CHECK(s1 == s2);
    CHECK(!atomic_load(&a2.done));
    CHECK(wait_ack(&a1) && wait_ack(&a2));
    atomic_store(&slow_sync_ms, 0);
    CHECK(a1.status == 0 && a2.status == 0 && a2.seq == s1);
    uint64_t s3 = 0;
    CHECK_EQ_INT(pub("idem", "1", "k1", &a1, &s3), 1); /* settled: answered at once */
    CHECK(s3 == s1);

    /* A failed write: the publisher and the waiting repeat hear it, nothing
     * appears in history, and a retry with the key publishes anew. */
    sink_t k = {0};
    sb_sub_t s = {.ops = &ops, .sink = &k}, *subs[1] = {&s};
    sb_str_t names[1] = {SB_STR("idem")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 1, (sb_since_t){0}, &why), 0);
    atomic_store(&fail_writes, 1);
    uint64_t f1 = 0, f2 = 0;
    CHECK_EQ_INT(pub("idem", "2", "k2", &a1, &f1), 0);
    CHECK_EQ_INT(pub("idem", "2", "k2", &a2, &f2), 0);
    CHECK(wait_ack(&a1) && wait_ack(&a2));
    CHECK(a1.status < 0 && a2.status < 0);
    atomic_store(&fail_writes, 0);
    uint64_t ids[8];
    bool rst;
    CHECK_EQ_INT(history("idem", 0, true, ids, 8, &rst), 1);
    CHECK(ids[0] == s1);
    sb_chan_info_t info;
    sb_broker_channel_info(SB_STR("idem"), &info);
    CHECK(info.last && info.last->seq == s1);
    sb_msg_unref(info.last);
    uint64_t r1 = pub_wait("idem", "2", "k2");
    CHECK(r1 > f1);
    CHECK_EQ_INT(history("idem", 0, true, ids, 8, &rst), 2);
    CHECK(ids[1] == r1);
    run(l);
    CHECK_EQ_INT(k.n, 1); /* only the retry, never the failed one */
    CHECK(k.ids[0] == r1);
    sb_store_info_t si;
    CHECK(sb_history_info(&si));
    CHECK(si.failed_writes >= 1 && !si.broken);
    sb_broker_unsubscribe(&s);
    life_end(l);
    rm_rf(dir);
    free(dir);
}

static uint64_t limit_none(uint64_t next) { return next - 1; }

static void test_restart(sb_loop_t *l)
{
    char *dir = tmpdir();
    life_begin(dir, "batch", "1GiB");
    uint64_t a[6];
    for (int i = 0; i < 6; i++)
        a[i] = pub_wait(i % 2 ? "rb" : "ra", "{\"x\":1}", i == 3 ? "key" : NULL);
    uint64_t first = a[0];
    life_end(l);

    life_begin(dir, "batch", "1GiB");
    uint64_t ids[8];
    bool rst;
    CHECK_EQ_INT(history("ra", 0, true, ids, 8, &rst), 3);
    CHECK(ids[0] == a[0] && ids[1] == a[2] && ids[2] == a[4]);
    CHECK_EQ_INT(history("rb", 0, true, ids, 8, &rst), 3);
    CHECK(ids[0] == a[1] && ids[1] == a[3] && ids[2] == a[5]);
    sb_chan_info_t info;
    sb_broker_channel_info(SB_STR("rb"), &info);
    CHECK(info.last && info.last->seq == a[5]);
    if (info.last) CHECK(!strcmp(info.last->data, "{\"x\":1}"));
    sb_msg_unref(info.last);
    /* The key survived: a repeat gets the old id and publishes nothing. */
    uint64_t again = 0;
    CHECK_EQ_INT(pub("rb", "{\"x\":1}", "key", NULL, &again), 1);
    CHECK(again == a[3]);
    /* Ids keep increasing. */
    uint64_t n1 = pub_wait("ra", "2", NULL);
    CHECK(n1 > a[5]);
    /* A cursor from the previous life resumes without a reset, and so does
     * "before the first message this directory ever issued". */
    sink_t k = {0};
    sb_sub_t s = {.ops = &ops, .sink = &k}, *subs[1] = {&s};
    sb_str_t names[1] = {SB_STR("ra")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 1, (sb_since_t){true, a[2]}, &why), 0);
    CHECK_EQ_INT(k.resets, 0);
    CHECK_EQ_INT(k.n, 2);
    CHECK(k.ids[0] == a[4] && k.ids[1] == n1);
    sb_broker_unsubscribe(&s);
    CHECK_EQ_INT(history("ra", first - 1, true, ids, 8, &rst), 4);
    CHECK(!rst);
    /* No id past the reservation: the hook says where it ends. */
    sb_broker_set_seq_limit(limit_none);
    sb_pub_t p = {.channel = SB_STR("ra"), .data = SB_STR("1")};
    uint64_t seq = 0;
    why = SB_OK;
    CHECK_EQ_INT(sb_broker_publish(&p, &seq, &why, NULL, NULL), -1);
    CHECK_EQ_INT(why, SB_ERR_STORAGE_FAILED);
    CHECK_EQ_INT(history("ra", first - 1, true, ids, 8, &rst), 4);
    CHECK(!rst);
    /* Older than the directory: not ours, so a reset. */
    history("ra", first - 2, true, ids, 8, &rst);
    CHECK(rst);
    life_end(l);
    rm_rf(dir);
    free(dir);
}

static void test_retention_resets(sb_loop_t *l)
{
    char *dir = tmpdir();
    life_begin(dir, "off", "16KiB");
    char data[600];
    memset(data, 'x', sizeof data);
    data[0] = data[sizeof data - 2] = '"';
    data[sizeof data - 1] = 0;
    uint64_t first = 0, last = 0;
    for (int i = 0; i < 100; i++) {
        last = pub_wait("ret", data, NULL);
        if (!first) first = last;
    }
    sb_store_info_t si;
    CHECK(sb_history_info(&si));
    CHECK(si.segments_deleted > 0);
    CHECK(si.bytes <= 16384);
    life_end(l);

    life_begin(dir, "off", "16KiB");
    CHECK(sb_history_info(&si));
    uint64_t kept_from = si.first_seq;
    CHECK(kept_from > first && kept_from <= last);
    uint64_t ids[64];
    bool rst;
    size_t n = history("ret", 0, true, ids, 64, &rst);
    CHECK(n > 0 && ids[0] == kept_from && ids[n - 1] == last);
    /* Right before the oldest kept record: nothing was lost. */
    history("ret", kept_from - 1, true, ids, 64, &rst);
    CHECK(!rst);
    /* Further back, retention deleted messages this cursor never saw. */
    history("ret", first, true, ids, 64, &rst);
    CHECK(rst);
    /* A channel whose messages all went also resets old cursors. */
    history("gone", first, true, ids, 64, &rst);
    CHECK(rst);
    life_end(l);
    rm_rf(dir);
    free(dir);
}

int main(void)
{
    sb_log_level = SB_LOG_ERROR;
    CHECK_EQ_INT(sb_net_init(1, "127.0.0.1", 0, accept_none), 0);
    sb_loop_t *l = sb_net.loops[0];
    test_visible_once_durable(l);
    test_idempotency_waits_and_failures(l);
    test_restart(l);
    test_retention_resets(l);
    sb_net_stop();
    uv_run(&l->uv, UV_RUN_DEFAULT);
    sb_net_free();
    return tl_done("durable");
}
