#define _GNU_SOURCE
#include "metrics/metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

#include "channels/channels.h"
#include "net/net.h"

#define WINDOW 10 /* seconds */

typedef struct {
    uint64_t requests, errors, deliveries, messages_in;
} sample_t;

static struct {
    pthread_mutex_t mu;
    sample_t ring[WINDOW + 1];
    int head, count;
    uint64_t lat_base[SB_HIST_BUCKETS]; /* delivery histogram at the window start */
    uint64_t lat_window[SB_HIST_BUCKETS];
    int64_t started_ms;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER};

static sb_metrics_fn extra[16];
static int nextra;
int64_t (*sb_metrics_active_users)(void);

void sb_metrics_register(sb_metrics_fn fn)
{
    if (nextra < 16) extra[nextra++] = fn;
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

typedef struct {
    uint64_t accepted, closed, refused, accept_pauses, bytes_in, bytes_out, writes, syscalls, partial, requests, r4xx, r5xx,
        deliveries, messages_in, slow_disc, slow_drop, slow_confl;
    int64_t open, sse, ws, longpolls;
} totals_t;

static void totals(totals_t *t)
{
    memset(t, 0, sizeof *t);
    for (int i = 0; i < sb_net.nloops; i++) {
        sb_loop_stats_t *s = &sb_net.loops[i]->stats;
        t->accepted += LOAD(s->conns_accepted);
        t->closed += LOAD(s->conns_closed);
        t->refused += LOAD(s->conns_refused);
        t->accept_pauses += LOAD(s->accept_pauses);
        t->bytes_in += LOAD(s->bytes_in);
        t->bytes_out += LOAD(s->bytes_out);
        t->writes += LOAD(s->writes);
        t->syscalls += LOAD(s->write_syscalls);
        t->partial += LOAD(s->write_calls_partial);
        t->requests += LOAD(s->requests);
        t->r4xx += LOAD(s->responses_4xx);
        t->r5xx += LOAD(s->responses_5xx);
        t->deliveries += LOAD(s->deliveries);
        t->messages_in += LOAD(s->messages_in);
        t->slow_disc += LOAD(s->slow_disconnects);
        t->slow_drop += LOAD(s->slow_dropped);
        t->slow_confl += LOAD(s->slow_conflated);
        t->open += LOAD(s->conns_open);
        t->sse += LOAD(s->sse_streams);
        t->ws += LOAD(s->ws_conns);
        t->longpolls += LOAD(s->longpolls);
    }
}

static void hist_sum(uint64_t *out)
{
    memset(out, 0, sizeof(uint64_t) * SB_HIST_BUCKETS);
    for (int i = 0; i < sb_net.nloops; i++)
        for (int b = 0; b < SB_HIST_BUCKETS; b++) out[b] += LOAD(sb_net.loops[i]->delivery_lat.b[b]);
}

void sb_metrics_sample(void)
{
    totals_t t;
    totals(&t);
    pthread_mutex_lock(&M.mu);
    if (!M.started_ms) M.started_ms = sb_now_ms();
    M.head = (M.head + 1) % (WINDOW + 1);
    M.ring[M.head] = (sample_t){t.requests, t.r4xx + t.r5xx, t.deliveries, t.messages_in};
    if (M.count < WINDOW + 1) M.count++;
    /* The latency window restarts every WINDOW seconds and reports the last full one. */
    if (M.head % WINDOW == 0) {
        uint64_t now[SB_HIST_BUCKETS];
        hist_sum(now);
        for (int b = 0; b < SB_HIST_BUCKETS; b++) {
            M.lat_window[b] = now[b] - M.lat_base[b];
            M.lat_base[b] = now[b];
        }
    }
    pthread_mutex_unlock(&M.mu);
}

static double window_rate(size_t field_off, double *secs)
{
    if (M.count < 2) {
        *secs = 0;
        return 0;
    }
    int oldest = (M.head - (M.count - 1) + (WINDOW + 1)) % (WINDOW + 1);
    uint64_t a = *(uint64_t *)((char *)&M.ring[oldest] + field_off);
    uint64_t b = *(uint64_t *)((char *)&M.ring[M.head] + field_off);
    *secs = M.count - 1;
    return (double)(b - a) / *secs;
}

/* p99 of the last full window, falling back to everything since start. */
static double p99_ms(void)
{
    uint64_t total = 0, counts[SB_HIST_BUCKETS];
    memcpy(counts, M.lat_window, sizeof counts);
    for (int b = 0; b < SB_HIST_BUCKETS; b++) total += counts[b];
    if (!total) hist_sum(counts);
    sb_hist_t h;
    for (int b = 0; b < SB_HIST_BUCKETS; b++) atomic_init(&h.b[b], counts[b]);
    return (double)sb_hist_percentile(&h, 1, sizeof h, 99.0) / 1000.0;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

void sb_metrics_json(sb_buf_t *b)
{
    totals_t t;
    totals(&t);
    sb_broker_stats_t bs;
    sb_broker_stats(&bs);
    pthread_mutex_lock(&M.mu);
    double secs;
    double rps = window_rate(offsetof(sample_t, requests), &secs);
    double eps = window_rate(offsetof(sample_t, errors), &secs);
    double dps = window_rate(offsetof(sample_t, deliveries), &secs);
    double mps = window_rate(offsetof(sample_t, messages_in), &secs);
    double p99 = p99_ms();
    pthread_mutex_unlock(&M.mu);
    int64_t users = sb_metrics_active_users ? sb_metrics_active_users() : -1;
    if (users < 0) users = t.sse + t.ws;
    sb_buf_printf(b,
                  "{\"activeUsers\":%lld,\"requestsPerSecond\":%.1f,\"errorRate\":%.4f,"
                  "\"p99Latency\":%.3f,\"connections\":%lld,\"sseStreams\":%lld,"
                  "\"wsConnections\":%lld,\"longPolls\":%lld,\"channels\":%lld,"
                  "\"subscriptions\":%lld,\"messagesKept\":%lld,\"published\":%llu,"
                  "\"publishedPerSecond\":%.1f,\"deliveries\":%llu,\"deliveriesPerSecond\":%.1f,"
                  "\"connectionsRefused\":%llu,\"acceptPauses\":%llu,\"slowDisconnects\":%llu,\"slowDropped\":%llu,"
                  "\"slowConflated\":%llu,\"bytesIn\":%llu,\"bytesOut\":%llu,\"rssBytes\":%lld,"
                  "\"workers\":%d,\"uptimeSeconds\":%lld,\"lastId\":\"%llu\"",
                  (long long)users, rps, rps > 0 ? eps / rps : 0.0, p99, (long long)t.open,
                  (long long)t.sse, (long long)t.ws, (long long)t.longpolls, (long long)bs.channels,
                  (long long)bs.subscriptions, (long long)bs.messages_kept,
                  (unsigned long long)bs.published, mps, (unsigned long long)t.deliveries, dps,
                  (unsigned long long)t.refused, (unsigned long long)t.accept_pauses, (unsigned long long)t.slow_disc,
                  (unsigned long long)t.slow_drop, (unsigned long long)t.slow_confl,
                  (unsigned long long)t.bytes_in, (unsigned long long)t.bytes_out,
                  (long long)rss_kb() * 1024, sb_net.nloops,
                  (long long)(M.started_ms ? (sb_now_ms() - M.started_ms) / 1000 : 0),
                  (unsigned long long)bs.last_seq);
    for (int i = 0; i < nextra; i++) extra[i](b, false);
    sb_buf_puts(b, "}");
}

void sb_metrics_prometheus(sb_buf_t *b)
{
    totals_t t;
    totals(&t);
    sb_broker_stats_t bs;
    sb_broker_stats(&bs);
#define C(name, help, v) \
    sb_buf_printf(b, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name, (unsigned long long)(v))
#define G(name, help, v) \
    sb_buf_printf(b, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, (long long)(v))
    G("switchboard_connections", "Open connections.", t.open);
    G("switchboard_sse_streams", "Open SSE streams.", t.sse);
    G("switchboard_ws_connections", "Open WebSocket connections.", t.ws);
    G("switchboard_long_polls", "Waiting long-poll requests.", t.longpolls);
    G("switchboard_channels", "Channels held.", bs.channels);
    G("switchboard_subscriptions", "Channel subscriptions.", bs.subscriptions);
    G("switchboard_history_messages", "Messages kept in history.", bs.messages_kept);
    G("switchboard_rss_bytes", "Resident memory.", rss_kb() * 1024);
    C("switchboard_connections_accepted_total", "Accepted connections.", t.accepted);
    C("switchboard_connections_refused_total", "Connections refused at a limit.", t.refused);
    C("switchboard_accept_pauses_total", "Times a listener stopped for --accept-rate (new connections then wait in the backlog).", t.accept_pauses);
    C("switchboard_http_requests_total", "HTTP requests.", t.requests);
    C("switchboard_http_responses_4xx_total", "4xx responses.", t.r4xx);
    C("switchboard_http_responses_5xx_total", "5xx responses.", t.r5xx);
    C("switchboard_messages_published_total", "Messages published.", bs.published);
    C("switchboard_idempotent_repeats_total", "Publishes answered from the idempotency window.", bs.idem_hits);
    C("switchboard_deliveries_total", "Messages delivered to subscribers.", t.deliveries);
    C("switchboard_bytes_in_total", "Bytes read.", t.bytes_in);
    C("switchboard_bytes_out_total", "Bytes written.", t.bytes_out);
    C("switchboard_write_calls_total", "Batched socket writes (one per connection per loop turn at most).", t.writes);
    C("switchboard_write_syscalls_total", "System calls that carried them (io_uring submits up to 256 writes in one).", t.syscalls);
    C("switchboard_slow_disconnects_total", "Readers cut for falling behind.", t.slow_disc);
    C("switchboard_slow_dropped_total", "Messages dropped by drop-oldest.", t.slow_drop);
    C("switchboard_slow_conflated_total", "Messages replaced by conflation.", t.slow_confl);
#undef C
#undef G
    sb_buf_puts(b, "# HELP switchboard_delivery_latency_seconds Publish to flush, per message per loop.\n"
                   "# TYPE switchboard_delivery_latency_seconds summary\n");
    /* Loops are separate allocations: sum their histograms into a local copy. */
    sb_hist_t sum;
    for (int bk = 0; bk < SB_HIST_BUCKETS; bk++) {
        uint64_t v = 0;
        for (int i = 0; i < sb_net.nloops; i++) v += LOAD(sb_net.loops[i]->delivery_lat.b[bk]);
        atomic_init(&sum.b[bk], v);
    }
    double qs[] = {50, 90, 99, 99.9};
    for (int i = 0; i < 4; i++)
        sb_buf_printf(b, "switchboard_delivery_latency_seconds{quantile=\"%g\"} %.6f\n", qs[i] / 100,
                      (double)sb_hist_percentile(&sum, 1, sizeof sum, qs[i]) / 1e6);
    sb_broker_metrics_per_channel(b);
    for (int i = 0; i < nextra; i++) extra[i](b, true);
}
