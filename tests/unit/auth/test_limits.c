/* Limits: token buckets, per-address connection counts, the sweep that
 * releases connections the HTTP layer never saw close, and cleanup at stop. */
#define _GNU_SOURCE
#include <unistd.h>

#include "auth/limits.h"
#include "config/config.h"
#include "testlib.h"

static void accept_none(sb_conn_t *c) { (void)c; }

static uint64_t next_id = 1;

/* A connection as the net layer would hand it over: on the loop's list, with
 * an id and a peer address. Only the fields the limits read are set. */
static sb_conn_t *fake_conn(sb_loop_t *l, const char *peer)
{
    sb_conn_t *c = calloc(1, sizeof *c);
    c->loop = l;
    c->id = next_id++;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    c->next = l->conns;
    if (l->conns) l->conns->prev = c;
    l->conns = c;
    return c;
}

static void unlink_conn(sb_conn_t *c)
{
    sb_loop_t *l = c->loop;
    if (c->prev) c->prev->next = c->next;
    else l->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

static void drop_conn(sb_conn_t *c)
{
    unlink_conn(c);
    free(c);
}

static sb_err_t conn_open(sb_conn_t *c)
{
    int64_t retry_s = 0;
    sb_err_t e = sb_limits_conn_open(c, &retry_s);
    CHECK(retry_s >= 1);
    return e;
}

static bool conn_ok(sb_conn_t *c) { return conn_open(c) == SB_OK; }

static void run_sweep(sb_loop_t *l)
{
    usleep((SB_TICK_MS + 50) * 1000);
    uv_update_time(&l->uv);
    uv_run(&l->uv, UV_RUN_NOWAIT);
}

static void test_bucket(void)
{
    sb_bucket_t b;
    sb_bucket_init(&b, 5, 1000);
    int ok = 0;
    for (int i = 0; i < 10; i++) ok += sb_bucket_take(&b, 5, 1000);
    CHECK_EQ_INT(ok, 5); /* a burst of one second */
    CHECK(!sb_bucket_take(&b, 5, 1100));
    CHECK(sb_bucket_take(&b, 5, 1200)); /* 200 ms at 5/s is one token */
    CHECK(!sb_bucket_take(&b, 5, 1200));
    CHECK(!sb_bucket_take(&b, 5, 500)); /* a clock going back adds nothing */
    ok = 0;
    for (int i = 0; i < 10; i++) ok += sb_bucket_take(&b, 5, 60000);
    CHECK_EQ_INT(ok, 5); /* a long pause refills to the burst, not beyond */
    CHECK(sb_bucket_take(&b, 0, 60000)); /* no rate, no limit */
    /* How long until the next token: the hold of a connection over its rate. */
    sb_bucket_init(&b, 5, 1000);
    CHECK_EQ_INT(sb_bucket_wait_ms(&b, 5, 1000), 0);
    for (int i = 0; i < 5; i++) sb_bucket_take(&b, 5, 1000);
    int64_t w = sb_bucket_wait_ms(&b, 5, 1000);
    CHECK(w >= 200 && w <= 201); /* one token at 5/s is 200 ms */
    CHECK(sb_bucket_wait_ms(&b, 5, 1100) <= 101);
    CHECK_EQ_INT(sb_bucket_wait_ms(&b, 5, 1000 + w), 0);
    CHECK(sb_bucket_take(&b, 5, 1000 + w)); /* and the token is really there */
    CHECK_EQ_INT(sb_bucket_wait_ms(&b, 0, 1000), 0);
    /* A smaller burst (--accept-rate holds 50 ms of its rate). */
    sb_bucket_t a = {.tokens = 2, .at_ms = 1000};
    ok = 0;
    for (int i = 0; i < 5; i++) ok += sb_bucket_take_burst(&a, 40, 2, 1000);
    CHECK_EQ_INT(ok, 2);
    CHECK(sb_bucket_take_burst(&a, 40, 2, 1025)); /* 25 ms at 40/s is one token */
    ok = 0;
    for (int i = 0; i < 5; i++) ok += sb_bucket_take_burst(&a, 40, 2, 9000);
    CHECK_EQ_INT(ok, 2); /* a long pause refills to the burst only */
}

static void test_per_ip(sb_loop_t *l)
{
    sb_conn_t *a = fake_conn(l, "10.0.0.1"), *b = fake_conn(l, "10.0.0.1");
    sb_conn_t *c = fake_conn(l, "10.0.0.1"), *d = fake_conn(l, "10.0.0.2");
    CHECK(conn_ok(a));
    CHECK(conn_ok(b));
    uint64_t refused = sb_limits_refusals(SB_LIMIT_CONNS_PER_IP);
    CHECK_EQ_INT(conn_open(c), SB_ERR_TOO_MANY_CONNS); /* the third from one address */
    CHECK_EQ_INT(sb_limits_refusals(SB_LIMIT_CONNS_PER_IP) - refused, 1);
    CHECK(conn_ok(d));
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 2);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.2"), 1);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.3"), 0);
    /* The refused one was never counted: closing it changes nothing. */
    sb_limits_conn_closed(c);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 2);
    sb_limits_conn_closed(a);
    sb_limits_conn_closed(a); /* twice is harmless */
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 1);
    drop_conn(a);
    CHECK(conn_ok(c)); /* a slot was freed */
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 2);

    /* A connection that a WebSocket took over closes without the HTTP layer:
     * the sweep notices it is gone from the loop and releases it. */
    drop_conn(b);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 2);
    run_sweep(l);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 1);
    /* Closing (uv_close pending) counts as gone too; a later HTTP close of it
     * must not release it a second time. */
    c->flags |= SB_CONN_CLOSING;
    run_sweep(l);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 0);
    sb_limits_conn_closed(c);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.1"), 0);
    drop_conn(c);
    /* An empty peer (getpeername failed) is not counted, never refused. */
    sb_conn_t *e = fake_conn(l, "");
    sb_conn_t *f = fake_conn(l, "");
    sb_conn_t *g = fake_conn(l, "");
    CHECK(conn_ok(e) && conn_ok(f) && conn_ok(g));
    sb_limits_conn_closed(e);
    sb_limits_conn_closed(f);
    sb_limits_conn_closed(g);
    drop_conn(e);
    drop_conn(f);
    drop_conn(g);
    sb_limits_conn_closed(d);
    drop_conn(d);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.0.2"), 0);
}

/* --conn-rate-per-ip: a bucket of new connections per address, which outlives
 * the address's connections until it has refilled (a client that closes and
 * reconnects does not get a fresh burst), then is forgotten. */
static void test_conn_rate(sb_loop_t *l)
{
    int64_t cap = sb_cfg.max_conns_per_ip;
    sb_cfg.max_conns_per_ip = 0; /* the rate alone */
    sb_cfg.conn_rate_per_ip = 3;
    l->now_ms = 10000;
    sb_conn_t *c[5];
    for (int i = 0; i < 5; i++) c[i] = fake_conn(l, "10.0.2.1");
    for (int i = 0; i < 3; i++) CHECK(conn_ok(c[i])); /* the burst: one second's worth */
    uint64_t refused = sb_limits_refusals(SB_LIMIT_CONN_RATE);
    int64_t retry_s = 0;
    CHECK_EQ_INT(sb_limits_conn_open(c[3], &retry_s), SB_ERR_CONN_RATE);
    CHECK_EQ_INT(retry_s, 1); /* a token in 334 ms, rounded up to whole seconds */
    CHECK_EQ_INT(sb_limits_refusals(SB_LIMIT_CONN_RATE) - refused, 1);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.2.1"), 3); /* the refused one is not counted */
    sb_conn_t *other = fake_conn(l, "10.0.2.2");
    CHECK(conn_ok(other)); /* buckets are per address */
    for (int i = 0; i < 3; i++) sb_limits_conn_closed(c[i]);
    CHECK_EQ_INT(sb_limits_ip_count("10.0.2.1"), 0);
    CHECK(sb_limits_ip_tracked("10.0.2.1")); /* kept for its bucket */
    CHECK_EQ_INT(conn_open(c[3]), SB_ERR_CONN_RATE); /* closing gave nothing back */
    l->now_ms += 340;
    CHECK(conn_ok(c[3])); /* one token at 3/s */
    CHECK_EQ_INT(conn_open(c[4]), SB_ERR_CONN_RATE);
    sb_limits_conn_closed(c[3]);
    /* A second without a new connection refills the bucket: the address is
     * forgotten by the sweep (loop 0, about once a second). */
    l->now_ms += 1000;
    for (int i = 0; i < 1000 / SB_TICK_MS + 1; i++) run_sweep(l);
    CHECK(!sb_limits_ip_tracked("10.0.2.1"));
    CHECK(sb_limits_ip_tracked("10.0.2.2")); /* it still has a connection */
    CHECK(conn_ok(c[4]));
    sb_limits_conn_closed(c[4]);
    sb_limits_conn_closed(other);
    for (int i = 0; i < 5; i++) drop_conn(c[i]);
    drop_conn(other);
    sb_cfg.conn_rate_per_ip = 0;
    sb_cfg.max_conns_per_ip = cap;
}

static void test_publish_rate(sb_loop_t *l)
{
    sb_conn_t *a = fake_conn(l, "10.0.1.1"), *b = fake_conn(l, "10.0.1.1");
    CHECK(conn_ok(a) && conn_ok(b));
    l->now_ms = 5000;
    int ok = 0;
    for (int i = 0; i < 20; i++) ok += sb_limits_publish_ok(a);
    CHECK(ok >= 5 && ok <= 6); /* the burst (plus what elapsed since the open) */
    CHECK(sb_limits_publish_ok(b)); /* buckets are per connection */
    sb_limits_conn_closed(a);
    sb_limits_conn_closed(b);
    drop_conn(a);
    drop_conn(b);
}

/* Thousands of connections from many addresses, closed in an interleaved
 * order through both paths: counts stay exact through table growth and
 * tombstone clean-ups. */
static void test_many(sb_loop_t *l)
{
    enum { N = 6000 };
    static sb_conn_t *cs[N];
    char ip[32];
    for (int i = 0; i < N; i++) {
        snprintf(ip, sizeof ip, "192.168.%d.%d", i % 50, i % 7);
        cs[i] = fake_conn(l, ip);
        CHECK(conn_ok(cs[i]));
    }
    CHECK_EQ_INT(sb_limits_ip_count("192.168.0.0"), N / 350 + (N % 350 > 0));
    for (int i = 0; i < N; i += 2) {
        sb_limits_conn_closed(cs[i]);
        drop_conn(cs[i]);
    }
    for (int i = 1; i < N; i += 4) drop_conn(cs[i]); /* gone without an HTTP close */
    run_sweep(l);
    int64_t left = 0;
    for (int a = 0; a < 50; a++)
        for (int b = 0; b < 7; b++) {
            snprintf(ip, sizeof ip, "192.168.%d.%d", a, b);
            left += sb_limits_ip_count(ip);
        }
    CHECK_EQ_INT(left, N / 4);
    for (int i = 3; i < N; i += 4) {
        sb_limits_conn_closed(cs[i]);
        drop_conn(cs[i]);
    }
    left = 0;
    for (int a = 0; a < 50; a++)
        for (int b = 0; b < 7; b++) {
            snprintf(ip, sizeof ip, "192.168.%d.%d", a, b);
            left += sb_limits_ip_count(ip);
        }
    CHECK_EQ_INT(left, 0);
}

static void test_count_error(void)
{
    uint64_t t0 = sb_limits_refusals(SB_LIMIT_HEADER_TIMEOUT), b0 = sb_limits_refusals(SB_LIMIT_BODY_SIZE);
    sb_limits_count_error(SB_ERR_REQUEST_TIMEOUT);
    sb_limits_count_error(SB_ERR_BODY_TOO_LARGE);
    sb_limits_count_error(SB_ERR_BODY_TOO_LARGE);
    sb_limits_count_error(SB_ERR_NOT_FOUND); /* not a limit */
    CHECK_EQ_INT(sb_limits_refusals(SB_LIMIT_HEADER_TIMEOUT) - t0, 1);
    CHECK_EQ_INT(sb_limits_refusals(SB_LIMIT_BODY_SIZE) - b0, 2);
    CHECK_EQ_INT(sb_limits_refusals(SB_LIMIT__COUNT), 0);
}

int main(void)
{
    sb_log_level = SB_LOG_ERROR;
    char *argv[] = {"t", "--max-conns-per-ip", "2", "--publish-rate", "5", NULL};
    CHECK_EQ_INT(sb_config_parse(5, argv), 0);
    CHECK_EQ_INT(sb_net_init(1, "127.0.0.1", 0, accept_none), 0);
    sb_limits_init();
    sb_loop_t *l = sb_net.loops[0];
    test_bucket();
    test_per_ip(l);
    test_publish_rate(l);
    test_conn_rate(l);
    sb_cfg.max_conns_per_ip = 1000;
    test_many(l);
    test_count_error();
    /* At stop every count still held is released: nothing leaks. */
    sb_conn_t *held = fake_conn(l, "10.9.9.9");
    CHECK(conn_ok(held));
    unlink_conn(held);
    sb_net_stop();
    uv_run(&l->uv, UV_RUN_DEFAULT);
    CHECK_EQ_INT(sb_limits_ip_count("10.9.9.9"), 0);
    free(held);
    sb_net_free();
    return tl_done("limits");
}
