/* sb_storage: closed-loop publish benchmark for the durable history (issue 7).
 *
 * C connections each keep exactly one request in flight: send, wait for the
 * whole reply, send the next. That is what a publishing client does when it
 * waits for its acknowledgement, and it is where group commit matters: the
 * throughput is connections / latency. Two protocols, so the same client
 * measures both sides of the comparison:
 *
 *   http   POST /v1/channels/<prefix><i % channels>/messages, JSON {"data":"..."},
 *          keep-alive; a reply counts as acknowledged when it is 201.
 *   redis  XADD <prefix><i % channels> MAXLEN ~ 1000 * data <payload> (RESP); a
 *          bulk-string reply (the entry id) counts as acknowledged.
 *
 * One thread, epoll, non-blocking sockets. Latency is from the first byte
 * written to the last byte of the reply, recorded for every request after the
 * warm-up; percentiles come from sorting them. Prints one line of key=value.
 *
 * usage: sb_storage --proto http|redis --target HOST:PORT [--conns C]
 *        [--duration S] [--warmup S] [--size B] [--channels G] [--label NAME] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { PROTO_HTTP, PROTO_REDIS };

typedef struct {
    int fd;
    int idx;
    char *req;     /* this connection's request, built once */
    size_t req_len, sent;
    char *in;      /* reply bytes received so far */
    size_t in_len, in_cap;
    uint64_t t0;   /* when the current request started */
    bool connected;
} conn_t;

static struct {
    int proto;
    char host[64];
    int port;
    int conns, channels, size;
    double duration, warmup;
    const char *label, *prefix;
    uint32_t *lat; /* microseconds, one per acknowledged request after warm-up */
    size_t nlat, cap_lat;
    uint64_t ok, errors, measuring_from, ends_at;
    int inflight; /* requests sent and not yet answered */
    char first_error[200];
} G = {.proto = PROTO_HTTP,
       .host = "127.0.0.1",
       .port = 8080,
       .conns = 16,
       .channels = 16,
       .size = 128,
       .duration = 10,
       .warmup = 1,
       .label = "target",
       .prefix = "bench-"};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void build_request(conn_t *c)
{
    char ch[64];
    int chl = snprintf(ch, sizeof ch, "%s%d", G.prefix, c->idx % G.channels);
    char *payload = malloc((size_t)G.size + 1);
    if (!payload) die("malloc");
    for (int i = 0; i < G.size; i++) payload[i] = (char)('a' + (i + c->idx) % 26);
    payload[G.size] = 0;
    size_t cap = (size_t)G.size + 512;
    c->req = malloc(cap);
    if (!c->req) die("malloc");
    int n;
    if (G.proto == PROTO_HTTP) {
        int body = G.size + 11; /* {"data":"<payload>"} */
        n = snprintf(c->req, cap,
                     "POST /v1/channels/%s/messages HTTP/1.1\r\nHost: bench\r\n"
                     "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                     "{\"data\":\"%s\"}",
                     ch, body, payload);
    } else {
        n = snprintf(c->req, cap,
                     "*8\r\n$4\r\nXADD\r\n$%d\r\n%s\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n"
                     "$1\r\n*\r\n$4\r\ndata\r\n$%d\r\n%s\r\n",
                     chl, ch, G.size, payload);
    }
    free(payload);
    c->req_len = (size_t)n;
}

/* Returns the length of one complete reply at the start of c->in, 0 if more
 * bytes are needed; *ok says whether it acknowledges the write. */
static size_t reply_len(conn_t *c, bool *ok)
{
    char *p = c->in;
    size_t n = c->in_len;
    if (G.proto == PROTO_HTTP) {
        char *end = memmem(p, n, "\r\n\r\n", 4);
        if (!end) return 0;
        size_t head = (size_t)(end - p) + 4;
        size_t body = 0;
        for (char *h = p; h < end; h++) {
            if ((*h == 'C' || *h == 'c') && end - h > 16 && !strncasecmp(h, "content-length:", 15)) {
                body = strtoul(h + 15, NULL, 10);
                break;
            }
        }
        if (n < head + body) return 0;
        *ok = n >= 12 && !memcmp(p + 9, "201", 3);
        return head + body;
    }
    char *eol = memmem(p, n, "\r\n", 2);
    if (!eol) return 0;
    size_t line = (size_t)(eol - p) + 2;
    if (p[0] == '$') {
        long len = strtol(p + 1, NULL, 10);
        if (len < 0) {
            *ok = false;
            return line;
        }
        if (n < line + (size_t)len + 2) return 0;
        *ok = true;
        return line + (size_t)len + 2;
    }
    *ok = false; /* -ERR or anything unexpected */
    return line;
}

static void record(conn_t *c, bool ok, uint64_t t)
{
    if (!ok) {
        G.errors++;
        if (!G.first_error[0]) {
            size_t k = c->in_len < sizeof G.first_error - 1 ? c->in_len : sizeof G.first_error - 1;
            for (size_t i = 0; i < k; i++)
                G.first_error[i] = c->in[i] == '\r' || c->in[i] == '\n' ? ' ' : c->in[i];
        }
        return;
    }
    if (c->t0 < G.measuring_from) return;
    G.ok++;
    if (G.nlat == G.cap_lat) {
        G.cap_lat = G.cap_lat ? G.cap_lat * 2 : 1 << 16;
        G.lat = realloc(G.lat, G.cap_lat * sizeof *G.lat);
        if (!G.lat) die("realloc");
    }
    uint64_t d = t - c->t0;
    G.lat[G.nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
}

static void start_request(conn_t *c)
{
    c->sent = 0;
    c->t0 = now_us();
    G.inflight++;
}

/* Writes what it can; returns false if the connection broke. */
static bool flush_out(conn_t *c)
{
    while (c->sent < c->req_len) {
        ssize_t w = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
        if (w <= 0) return false;
        c->sent += (size_t)w;
    }
    return true;
}

/* Reads and handles replies; returns false if the connection broke. */
static bool read_in(conn_t *c)
{
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            c->in_cap = c->in_cap ? c->in_cap * 2 : 16384;
            c->in = realloc(c->in, c->in_cap);
            if (!c->in) die("realloc");
        }
        ssize_t r = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (r <= 0) return false;
        c->in_len += (size_t)r;
    }
    bool ok;
    size_t n;
    while ((n = reply_len(c, &ok)) > 0) {
        uint64_t t = now_us();
        G.inflight--;
        record(c, ok, t);
        memmove(c->in, c->in + n, c->in_len - n);
        c->in_len -= n;
        if (t < G.ends_at) {
            start_request(c);
            if (!flush_out(c)) return false;
        }
    }
    return true;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double p)
{
    if (!G.nlat) return 0;
    size_t i = (size_t)(p / 100.0 * (double)(G.nlat - 1) + 0.5);
    return G.lat[i];
}

static void usage(void)
{
    fprintf(stderr, "usage: sb_storage --proto http|redis --target HOST:PORT [--conns C] "
                    "[--duration S] [--warmup S] [--size B] [--channels G] [--label NAME]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        i++;
        if (!strcmp(a, "--proto")) G.proto = !strcmp(v, "redis") ? PROTO_REDIS : PROTO_HTTP;
        else if (!strcmp(a, "--target")) {
            const char *colon = strrchr(v, ':');
            if (!colon || colon - v >= (long)sizeof G.host) usage();
            memcpy(G.host, v, (size_t)(colon - v));
            G.host[colon - v] = 0;
            G.port = atoi(colon + 1);
        } else if (!strcmp(a, "--conns")) G.conns = atoi(v);
        else if (!strcmp(a, "--duration")) G.duration = atof(v);
        else if (!strcmp(a, "--warmup")) G.warmup = atof(v);
        else if (!strcmp(a, "--size")) G.size = atoi(v);
        else if (!strcmp(a, "--channels")) G.channels = atoi(v);
        else if (!strcmp(a, "--label")) G.label = v;
        else if (!strcmp(a, "--prefix")) G.prefix = v;
        else usage();
    }
    if (G.conns < 1 || G.channels < 1 || G.size < 1 || G.size > 65536 || G.duration <= 0) usage();

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    conn_t *cs = calloc((size_t)G.conns, sizeof *cs);
    if (!cs) die("calloc");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)G.port)};
    if (inet_pton(AF_INET, G.host, &sa.sin_addr) != 1) usage();
    for (int i = 0; i < G.conns; i++) {
        conn_t *c = &cs[i];
        c->idx = i;
        build_request(c);
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (c->fd < 0) die("socket");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(c->fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
        fcntl(c->fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
    uint64_t t_start = now_us();
    G.measuring_from = t_start + (uint64_t)(G.warmup * 1e6);
    G.ends_at = G.measuring_from + (uint64_t)(G.duration * 1e6);
    for (int i = 0; i < G.conns; i++) {
        start_request(&cs[i]);
        if (!flush_out(&cs[i])) die("send");
    }
    int broken = 0;
    struct epoll_event evs[256];
    while (now_us() < G.ends_at + 2000000u) {
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) die("epoll_wait");
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (c->fd < 0) continue;
            bool alive = true;
            if (evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) alive = read_in(c);
            if (alive && (evs[k].events & EPOLLOUT)) alive = flush_out(c);
            if (!alive) {
                close(c->fd);
                c->fd = -1;
                G.inflight--;
                broken++;
            }
        }
        /* Past the end, once every connection has its last reply: done. */
        if (G.inflight == 0 && now_us() >= G.ends_at) break;
    }
    qsort(G.lat, G.nlat, sizeof *G.lat, cmp_u32);
    double mean = 0;
    for (size_t i = 0; i < G.nlat; i++) mean += G.lat[i];
    if (G.nlat) mean /= (double)G.nlat;
    printf("label=%s proto=%s conns=%d size=%d duration_s=%.1f acked=%llu errors=%llu "
           "broken=%d per_s=%.0f mean_us=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f",
           G.label, G.proto == PROTO_HTTP ? "http" : "redis", G.conns, G.size, G.duration,
           (unsigned long long)G.ok, (unsigned long long)G.errors, broken,
           (double)G.ok / G.duration, mean, pct(50), pct(99), pct(99.9),
           G.nlat ? (double)G.lat[G.nlat - 1] : 0.0);
    if (G.first_error[0]) printf(" first_error=\"%s\"", G.first_error);
    printf("\n");
    for (int i = 0; i < G.conns; i++) {
        if (cs[i].fd >= 0) close(cs[i].fd);
        free(cs[i].req);
        free(cs[i].in);
    }
    free(cs);
    free(G.lat);
    close(ep);
    return G.errors || broken ? 1 : 0;
}
