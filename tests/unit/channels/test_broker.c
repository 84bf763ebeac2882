/* Broker: cursors, the history ring, seam-free subscribe with backlog, merged
 * multi-channel order, resets, idempotency, removal during delivery. Runs one
 * real loop (no thread) and drives it with uv_run. */
#include <uv.h>

#include "channels/channels.h"
#include "config/config.h"
#include "net/net.h"
#include "testlib.h"

typedef struct {
    uint64_t ids[64];
    char chans[64][16];
    int n, resets;
    sb_sub_t *self_remove; /* unsubscribe this sub from inside deliver */
} sink_t;

static void deliver(sb_sub_t *s, sb_msg_t *m)
{
    sink_t *k = s->sink;
    if (k->n < 64) {
        k->ids[k->n] = m->seq;
        snprintf(k->chans[k->n], 16, "%s", sb_chan_name(m->chan, NULL));
        k->n++;
    }
    if (k->self_remove == s) sb_broker_unsubscribe(s);
}
static void reset(sb_sub_t *s, const char *reason) { ((sink_t *)s->sink)->resets++; }
static const sb_sink_ops_t ops = {.deliver = deliver, .reset = reset};

static void accept_none(sb_conn_t *c) { sb_conn_close(c); }

static uint64_t pub(const char *ch, const char *data, const char *key)
{
    sb_pub_t p = {.channel = sb_str(ch, strlen(ch)), .data = sb_str(data, strlen(data))};
    if (key) p.idem_key = sb_str(key, strlen(key));
    uint64_t seq = 0;
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_publish(&p, &seq, &why, NULL, NULL), 1);
    return seq;
}

static void run(sb_loop_t *l)
{
    for (int i = 0; i < 5; i++) uv_run(&l->uv, UV_RUN_NOWAIT);
}

static void test_cursor(void)
{
    sb_since_t s;
    CHECK(sb_cursor_decode(SB_STR("0"), &s) && s.set && s.seq == 0);
    CHECK(sb_cursor_decode(SB_STR("1795463857213001"), &s) && s.seq == 1795463857213001ull);
    CHECK(!sb_cursor_decode(SB_STR(""), &s));
    CHECK(!sb_cursor_decode(SB_STR("018"), &s));
    CHECK(!sb_cursor_decode(SB_STR("12a"), &s));
    CHECK(!sb_cursor_decode(SB_STR("-1"), &s));
    CHECK(!sb_cursor_decode(SB_STR("18446744073709551616"), &s));
    CHECK(sb_cursor_decode(SB_STR("18446744073709551615"), &s) && s.seq == UINT64_MAX);
    char buf[24];
    CHECK_EQ_STR(buf, sb_cursor_encode(42, buf), "42");
    /* sb_u64_dec (under the cursor) against printf, at every digit count. */
    bool same = true;
    uint64_t v = 0;
    for (int i = 0; i < 200 && same; i++) {
        char ref[24];
        int n = snprintf(ref, sizeof ref, "%llu", (unsigned long long)v);
        same = sb_cursor_encode(v, buf) == (size_t)n && strcmp(buf, ref) == 0;
        v = i % 3 == 0 ? v * 10 + 9 : v * 7 + (uint64_t)i; /* wraps through large values */
    }
    CHECK(same);
    CHECK_EQ_STR(buf, sb_cursor_encode(0, buf), "0");
    CHECK_EQ_STR(buf, sb_cursor_encode(UINT64_MAX, buf), "18446744073709551615");
    char *g = tl_guarded("123", 3);
    CHECK(sb_cursor_decode(sb_str(g, 3), &s) && s.seq == 123);
    tl_guard_free(g);
}

static void test_history(void)
{
    sb_msg_t *out[16];
    bool rst;
    uint64_t next, ids[10];
    for (int i = 0; i < 10; i++) ids[i] = pub("ring", "1", NULL);
    for (int i = 1; i < 10; i++) CHECK(ids[i] > ids[i - 1]);
    size_t n = sb_broker_history(SB_STR("ring"), (sb_since_t){true, 0}, 16, out, &rst, &next);
    CHECK_EQ_INT(n, 5); /* history-size 5 keeps the newest five */
    CHECK(!rst);
    CHECK(out[0]->seq == ids[5] && out[4]->seq == ids[9] && next == ids[9]);
    for (size_t i = 0; i < n; i++) sb_msg_unref(out[i]);
    n = sb_broker_history(SB_STR("ring"), (sb_since_t){true, ids[1]}, 16, out, &rst, &next);
    CHECK(rst); /* ids[2..4] were evicted: a gap */
    CHECK_EQ_INT(n, 5);
    for (size_t i = 0; i < n; i++) sb_msg_unref(out[i]);
    n = sb_broker_history(SB_STR("ring"), (sb_since_t){true, ids[6]}, 2, out, &rst, &next);
    CHECK(!rst);
    CHECK_EQ_INT(n, 2);
    CHECK(out[0]->seq == ids[7] && next == ids[8]);
    for (size_t i = 0; i < n; i++) sb_msg_unref(out[i]);
    n = sb_broker_history(SB_STR("ring"), (sb_since_t){true, ids[9] + 1000}, 2, out, &rst, &next);
    CHECK(rst); /* a cursor from the future is not ours */
    for (size_t i = 0; i < n; i++) sb_msg_unref(out[i]);
    n = sb_broker_history(SB_STR("nothing"), (sb_since_t){0}, 2, out, &rst, &next);
    CHECK_EQ_INT(n, 0);
}

static void test_subscribe_seam(sb_loop_t *l)
{
    uint64_t a[4];
    for (int i = 0; i < 4; i++) a[i] = pub("seam", "2", NULL);
    sink_t k = {0};
    sb_sub_t s = {.ops = &ops, .sink = &k}, *subs[1] = {&s};
    sb_str_t names[1] = {SB_STR("seam")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 1, (sb_since_t){true, a[1]}, &why), 0);
    CHECK_EQ_INT(k.n, 2); /* backlog: a[2], a[3] */
    CHECK(k.ids[0] == a[2] && k.ids[1] == a[3]);
    uint64_t live = pub("seam", "3", NULL);
    run(l);
    CHECK_EQ_INT(k.n, 3);
    CHECK(k.ids[2] == live);
    sb_broker_unsubscribe(&s);
    pub("seam", "4", NULL);
    run(l);
    CHECK_EQ_INT(k.n, 3); /* nothing after unsubscribe */
}

static void test_merge_order(sb_loop_t *l)
{
    uint64_t x1 = pub("mx", "1", NULL), y1 = pub("my", "1", NULL);
    uint64_t x2 = pub("mx", "2", NULL), y2 = pub("my", "2", NULL);
    sink_t k = {0};
    sb_sub_t s1 = {.ops = &ops, .sink = &k}, s2 = {.ops = &ops, .sink = &k};
    sb_sub_t *subs[2] = {&s1, &s2};
    sb_str_t names[2] = {SB_STR("mx"), SB_STR("my")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 2, (sb_since_t){true, x1 - 1}, &why), 0);
    CHECK_EQ_INT(k.n, 4);
    CHECK(k.ids[0] == x1 && k.ids[1] == y1 && k.ids[2] == x2 && k.ids[3] == y2);
    CHECK(!strcmp(k.chans[1], "my"));
    sb_broker_unsubscribe(&s1);
    sb_broker_unsubscribe(&s2);
}

static void test_reset_and_remove_in_delivery(sb_loop_t *l)
{
    uint64_t first = pub("gap", "1", NULL);
    for (int i = 0; i < 6; i++) pub("gap", "x", NULL);
    sink_t k = {0};
    sb_sub_t s = {.ops = &ops, .sink = &k}, *subs[1] = {&s};
    sb_str_t names[1] = {SB_STR("gap")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 1, (sb_since_t){true, first}, &why), 0);
    CHECK_EQ_INT(k.resets, 1);
    CHECK_EQ_INT(k.n, 5); /* the kept history follows the reset */
    /* Two subscribers; the first removes itself while the message is being
     * delivered: the second must still get it, exactly once. */
    sink_t k2 = {0}, k3 = {0};
    sb_sub_t t2 = {.ops = &ops, .sink = &k2}, t3 = {.ops = &ops, .sink = &k3};
    sb_sub_t *s2[1] = {&t2}, *s3[1] = {&t3};
    sb_broker_subscribe(l, s2, names, 1, (sb_since_t){0}, &why);
    sb_broker_subscribe(l, s3, names, 1, (sb_since_t){0}, &why);
    k2.self_remove = &t2;
    pub("gap", "y", NULL);
    pub("gap", "z", NULL);
    run(l);
    CHECK_EQ_INT(k2.n, 1);
    CHECK_EQ_INT(k3.n, 2);
    sb_broker_unsubscribe(&t3);
    sb_broker_unsubscribe(&s);
}

static void test_idempotency(void)
{
    uint64_t a = pub("idem", "1", "key-1");
    uint64_t b = pub("idem", "1", "key-1");
    uint64_t c = pub("idem", "1", "key-2");
    uint64_t d = pub("idem-other", "1", "key-1"); /* keys are per channel */
    CHECK(a == b);
    CHECK(c != a && d != a);
    sb_chan_info_t info;
    sb_broker_channel_info(SB_STR("idem"), &info);
    CHECK_EQ_INT(info.history, 2);
    sb_msg_unref(info.last);
}

/* Durable mode with a fake store: completions of a group run under one take
 * of the broker lock (sb_broker_durable_group), acknowledgements of publishes
 * made on a loop are handed to that loop, and so are the messages the group
 * released (the ring's oldest, the old `last`); ASan checks that nothing leaks. */
typedef struct {
    void (*done)(void *, int);
    void *ud;
} pending_t;
static pending_t pend[32];
static int npend;

static int fake_store(sb_msg_t *m, sb_str_t key, void (*done)(void *, int), void *ud)
{
    if (npend == 32) return -1;
    pend[npend++] = (pending_t){done, ud};
    return 0;
}

typedef struct {
    int acks, failed, last_status;
    uint64_t seqs[32];
} acks_t;

static void on_ack(void *ud, int status, uint64_t seq)
{
    acks_t *a = ud;
    a->seqs[a->acks + a->failed] = seq;
    if (status == 0) a->acks++;
    else a->failed++;
    a->last_status = status;
}

static void publish_task(sb_loop_t *loop, void *a, void *b)
{
    sb_loop_bind_current(loop); /* as on the loop's own thread */
    sb_pub_t p = {.channel = SB_STR("dur"), .data = SB_STR("1")};
    if (b) p.idem_key = SB_STR("same-key");
    uint64_t seq;
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_publish(&p, &seq, &why, on_ack, a), 0);
    sb_loop_bind_current(NULL);
}

static void test_durable_group(sb_loop_t *l)
{
    acks_t a = {0}, off = {0};
    sb_broker_set_store(fake_store);
    /* Eight publishes on the loop, plus a repeat of the last one's key while it
     * is still pending (it gets the same outcome, not before). */
    for (int i = 0; i < 7; i++) sb_loop_post(l, publish_task, &a, NULL);
    sb_loop_post(l, publish_task, &a, (void *)1);
    sb_loop_post(l, publish_task, &a, (void *)1);
    run(l);
    CHECK_EQ_INT(npend, 8);
    CHECK_EQ_INT(a.acks + a.failed, 0);
    /* The first six stored, the seventh failed, as one group on "the store
     * thread" (here: outside any loop). */
    sb_broker_durable_group(true);
    for (int i = 0; i < 6; i++) pend[i].done(pend[i].ud, 0);
    pend[6].done(pend[6].ud, UV_EIO);
    sb_broker_durable_group(false);
    /* Nothing ran on "the store thread": the loop's task queue has them. */
    CHECK_EQ_INT(a.acks + a.failed, 0);
    run(l);
    CHECK_EQ_INT(a.acks, 6);
    CHECK_EQ_INT(a.failed, 1);
    for (int i = 1; i < 7; i++) CHECK(a.seqs[i] > a.seqs[i - 1]);
    sb_msg_t *out[8];
    bool rst;
    uint64_t next;
    size_t n = sb_broker_history(SB_STR("dur"), (sb_since_t){true, 0}, 8, out, &rst, &next);
    CHECK_EQ_INT(n, 5); /* history-size 5: the ring released one inside the group */
    CHECK(n == 5 && out[4]->seq == a.seqs[5]);
    for (size_t i = 0; i < n; i++) sb_msg_unref(out[i]);
    /* The eighth and its repeat, completed outside any group (the old path). */
    pend[7].done(pend[7].ud, 0);
    run(l);
    CHECK_EQ_INT(a.acks, 8);
    CHECK(a.seqs[7] == a.seqs[8]);
    /* A publish from no loop: its outcome is settled on the completing thread
     * once the group ends, after the lock. */
    npend = 0;
    sb_pub_t p = {.channel = SB_STR("dur"), .data = SB_STR("2")};
    uint64_t seq;
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_publish(&p, &seq, &why, on_ack, &off), 0);
    sb_broker_durable_group(true);
    pend[0].done(pend[0].ud, 0);
    CHECK_EQ_INT(off.acks, 0);
    sb_broker_durable_group(false);
    CHECK_EQ_INT(off.acks, 1);
    CHECK(off.seqs[0] == seq);
    sb_broker_set_store(NULL);
}

int main(void)
{
    sb_log_level = SB_LOG_WARN;
    char *argv[] = {"t", "--history-size", "5", NULL};
    CHECK_EQ_INT(sb_config_parse(3, argv), 0);
    CHECK_EQ_INT(sb_net_init(1, "127.0.0.1", 0, accept_none), 0);
    sb_broker_init(1000, 1000);
    sb_loop_t *l = sb_net.loops[0];
    test_cursor();
    test_history();
    test_subscribe_seam(l);
    test_merge_order(l);
    test_reset_and_remove_in_delivery(l);
    test_idempotency();
    test_durable_group(l);
    sb_net_stop();
    uv_run(&l->uv, UV_RUN_DEFAULT);
    sb_net_free();
    sb_broker_free();
    return tl_done("broker");
}
