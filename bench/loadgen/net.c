/* The connection layer of sb_loadgen: non-blocking connects spread over source
 * addresses, the client side of the WebSocket, SSE and HTTP/1.1 exchanges, and the
 * accounting of every marker a receiver sees.
 *
 * Edge-triggered epoll with both directions registered once: a connection never costs
 * an epoll_ctl after it is added. Reads go into one shared scratch buffer; only the
 * unparsed tail of a read (a partial frame, line or header block) is copied into the
 * connection, so an idle connection holds no buffer at all. */
#define _GNU_SOURCE
#include "lg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_TAIL (256u * 1024u) /* a frame, line or header block larger than this is an error */
#define OUT_LIMIT (1u << 20)     /* a publisher stops sending while more than this is queued */

enum { CH_SIZE, CH_EXT, CH_SIZE_LF, CH_DATA, CH_DATA_CR, CH_DATA_LF, CH_TRAILER, CH_TRAILER_LF };

static uint32_t rng = 0x9e3779b9u;

static uint32_t xorshift(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

/* ---- small buffer helpers ----------------------------------------------------- */

static void die_oom(void)
{
    fprintf(stderr, "sb_loadgen: out of memory\n");
    exit(2);
}

static void keep_tail(lg_conn_t *c, const char *p, size_t n)
{
    c->in_len = 0;
    if (n == 0)
        return;
    if (n > c->in_cap) {
        size_t cap = n < 512 ? 512 : n * 2;
        char *q = realloc(c->in, cap);
        if (!q)
            die_oom();
        c->in = q;
        c->in_cap = (uint32_t)cap;
    }
    memmove(c->in, p, n);
    c->in_len = (uint32_t)n;
}

static const char *find(const char *p, size_t n, const char *lit)
{
    return memmem(p, n, lit, strlen(lit));
}

/* Case-insensitive search of a header name within a header block; returns the value. */
static const char *header_value(const char *h, size_t n, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    for (const char *p = h; p + nl < h + n;) {
        const char *eol = memchr(p, '\n', (size_t)(h + n - p));
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *e = eol;
            while (e > v && (e[-1] == '\r' || e[-1] == ' '))
                e--;
            *vlen = (size_t)(e - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* ---- closing ------------------------------------------------------------------ */

static void free_bufs(lg_conn_t *c)
{
    free(c->in);
    free(c->out);
    c->in = c->out = NULL;
    c->in_len = c->in_cap = c->out_len = c->out_cap = c->out_off = 0;
}

static bool in_flight(const lg_conn_t *c)
{
    return c->state == CS_CONNECTING || c->state == CS_HANDSHAKE || c->state == CS_SUBSCRIBING;
}

static void start_connect(lg_conn_t *c);

/* A connection that never got established counts as failed. One that was established
 * and then closed (by the server, or by an error) counts as dropped; a dropped
 * publish-only connection is reconnected so one server-side keep-alive limit does not
 * end a throughput run, and its requests in flight count as errors. */
static void conn_close(lg_conn_t *c, const char *why)
{
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    free_bufs(c);
    if (in_flight(c)) {
        L.inflight--;
        L.failed++;
        c->state = CS_FAILED;
        if (L.failed <= 5)
            fprintf(stderr, "sb_loadgen: connection %u failed: %s\n", (unsigned)(c - L.conns),
                    why);
        return;
    }
    if (c->state != CS_OPEN) {
        c->state = CS_CLOSED;
        return;
    }
    c->state = CS_CLOSED;
    L.ph.dropped++;
    L.closed_during_run++;
    if (L.closed_during_run <= 5)
        fprintf(stderr, "sb_loadgen: connection %u closed: %s\n", (unsigned)(c - L.conns), why);
    if (c->counted && c->receiver)
        L.group_recv[c->group]--;
    c->counted = false;
    if (c->pubid >= 0) {
        lg_pub_t *p = &L.pubs_v[c->pubid];
        L.ph.pub_errors += p->outstanding;
        L.outstanding -= p->outstanding;
        p->outstanding = 0;
        p->sa_len = 0;
        if (!c->receiver && L.publishing) {
            L.established--;
            c->in_body = c->chunked = false;
            c->state = CS_NEW;
            L.inflight++;
            start_connect(c);
        }
    }
}

void lg_net_close_all(void)
{
    struct linger lin = {1, 0};
    for (uint32_t i = 0; i < L.nconns; i++) {
        lg_conn_t *c = &L.conns[i];
        if (c->fd < 0)
            continue;
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lin, sizeof lin);
        close(c->fd);
        c->fd = -1;
        free_bufs(c);
    }
}

/* ---- writing ------------------------------------------------------------------ */

static bool flush_out(lg_conn_t *c)
{
    while (c->out_len > 0) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return true;
            conn_close(c, strerror(errno));
            return false;
        }
        c->out_off += (uint32_t)w;
        c->out_len -= (uint32_t)w;
    }
    c->out_off = 0;
    return true;
}

void lg_net_send(lg_conn_t *c, const void *p, size_t n)
{
    if (c->fd < 0)
        return;
    if (c->out_len == 0 && !c->cork) {
        ssize_t w = send(c->fd, p, n, MSG_NOSIGNAL);
        if (w == (ssize_t)n)
            return;
        if (w < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_close(c, strerror(errno));
                return;
            }
            w = 0;
        }
        p = (const char *)p + w;
        n -= (size_t)w;
        c->out_off = 0;
    }
    if (c->out_off + c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len);
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = (c->out_len + n) * 2;
            char *q = realloc(c->out, cap);
            if (!q)
                die_oom();
            c->out = q;
            c->out_cap = (uint32_t)cap;
        }
    }
    memcpy(c->out + c->out_off + c->out_len, p, n);
    c->out_len += (uint32_t)n;
}

void lg_net_uncork(lg_conn_t *c)
{
    c->cork = false;
    if (c->fd >= 0 && c->out_len > 0)
        flush_out(c);
}

bool lg_net_out_busy(const lg_conn_t *c) { return c->out_len > OUT_LIMIT; }

/* Writes one masked client frame (RFC 6455 5.3: every client frame is masked). */
size_t lg_ws_frame(char *out, int op, const char *payload, size_t n)
{
    size_t h = 0;
    out[h++] = (char)(0x80 | op);
    if (n < 126) {
        out[h++] = (char)(0x80 | n);
    } else if (n < 65536) {
        out[h++] = (char)(0x80 | 126);
        out[h++] = (char)(n >> 8);
        out[h++] = (char)n;
    } else {
        out[h++] = (char)(0x80 | 127);
        for (int i = 7; i >= 0; i--)
            out[h++] = (char)((uint64_t)n >> (8 * i));
    }
    uint32_t key = xorshift();
    uint8_t k[4];
    memcpy(k, &key, 4);
    memcpy(out + h, k, 4);
    h += 4;
    for (size_t i = 0; i < n; i++)
        out[h + i] = (char)(payload[i] ^ k[i & 3]);
    return h + n;
}

/* ---- establishing ------------------------------------------------------------- */

static void path_for(const char *tmpl, uint32_t group, char *out, size_t cap)
{
    char name[160];
    if (L.groups == 1)
        snprintf(name, sizeof name, "%s", L.channel);
    else
        snprintf(name, sizeof name, "%s%u", L.channel, group);
    /* The template is user input: substitute the first %s by hand, never as a format. */
    const char *s = strstr(tmpl, "%s");
    if (!s) {
        snprintf(out, cap, "%s", tmpl);
        return;
    }
    snprintf(out, cap, "%.*s%s%s", (int)(s - tmpl), tmpl, name, s + 2);
}

void lg_channel_name(uint32_t group, char *out, size_t cap)
{
    if (L.groups == 1)
        snprintf(out, cap, "%s", L.channel);
    else
        snprintf(out, cap, "%s%u", L.channel, group);
}

void lg_pub_path(uint32_t group, char *out, size_t cap) { path_for(L.pub_path, group, out, cap); }

static bool is_ws(const lg_conn_t *c)
{
    return c->kind == SUB_WS_JSON || c->kind == SUB_WS_URL || c->kind == SUB_ROOM ||
           c->kind == 100 + PUB_WS_JSON || c->kind == 100 + PUB_ROOM;
}

static void established(lg_conn_t *c)
{
    uint64_t now = lg_now();
    c->state = CS_OPEN;
    L.inflight--;
    L.established++;
    lg_hist_add(&L.connect_hist, now - c->t_start);
    if (c->receiver && !c->counted)
        L.group_recv[c->group]++;
    c->counted = true;
    if (L.established + L.failed == L.nconns && L.t_all_connected == 0)
        L.t_all_connected = now;
    if (c->pubid >= 0)
        lg_pub_window_open(&L.pubs_v[c->pubid]);
}

static void on_connected(lg_conn_t *c)
{
    char path[512], req[1024];
    int n;
    if (c->kind == 100 + PUB_HTTP) {
        established(c);
        return;
    }
    if (is_ws(c)) {
        path_for(L.ws_path, c->group, path, sizeof path);
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, L.host, L.port, L.ws_key);
    } else {
        path_for(L.sse_path, c->group, path, sizeof path);
        n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                     "Cache-Control: no-cache\r\n\r\n",
                     path, L.host, L.port);
    }
    c->state = CS_HANDSHAKE;
    lg_net_send(c, req, (size_t)n);
}

static void start_connect(lg_conn_t *c)
{
    uint32_t idx = (uint32_t)(c - L.conns);
    struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET};
    int one = 1;
    c->t_start = lg_now();
    if (L.t_first_connect == 0)
        L.t_first_connect = c->t_start ? c->t_start : 1;
    c->state = CS_CONNECTING;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (c->fd < 0) {
        conn_close(c, strerror(errno));
        return;
    }
    /* Choosing the port at connect() time instead of bind() time lets the kernel reuse
     * a local port towards another destination, so each source address gives ~28k
     * connections per server port rather than ~28k in total. */
    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    src.sin_addr.s_addr = htonl(0x7f000001u + idx % L.src_ips);
    if (bind(c->fd, (struct sockaddr *)&src, sizeof src) < 0) {
        conn_close(c, strerror(errno));
        return;
    }
    inet_pton(AF_INET, L.host, &dst.sin_addr);
    /* Publish-only connections may go to another node of a cluster (--pub-target). */
    dst.sin_port = htons((uint16_t)(c->kind >= 100 && L.pub_port ? L.pub_port : L.port));
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(L.ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
        conn_close(c, strerror(errno));
        return;
    }
    if (connect(c->fd, (struct sockaddr *)&dst, sizeof dst) == 0) {
        on_connected(c);
    } else if (errno != EINPROGRESS) {
        conn_close(c, strerror(errno));
    }
}

void lg_net_pump_connects(void)
{
    while (L.inflight < L.concurrency && L.next_connect < L.nconns) {
        lg_conn_t *c = &L.conns[L.next_connect++];
        L.inflight++;
        start_connect(c);
    }
}

void lg_net_expire(void)
{
    uint64_t now = lg_now(), limit = (uint64_t)(L.connect_timeout * 1e6);
    for (uint32_t i = 0; i < L.next_connect; i++) {
        lg_conn_t *c = &L.conns[i];
        if (in_flight(c) && now - c->t_start > limit)
            conn_close(c, "connect or handshake timed out");
    }
}

/* ---- receiving: markers ------------------------------------------------------- */

static bool parse_u64(const char **pp, const char *end, uint64_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    if (p >= end || *p < '0' || *p > '9')
        return false;
    while (p < end && *p >= '0' && *p <= '9')
        v = v * 10 + (uint64_t)(*p++ - '0');
    if (p >= end || *p != ':')
        return false;
    *pp = p + 1;
    *out = v;
    return true;
}

static void account(lg_conn_t *c, uint64_t pubid, uint64_t seq, uint64_t sent, uint64_t now)
{
    lg_phase_t *ph = &L.ph;
    if (pubid >= L.npubs) {
        ph->bad++;
        return;
    }
    lg_pub_t *p = &L.pubs_v[pubid];
    if (p->group != c->group || p->conn == (int32_t)(c - L.conns)) {
        ph->misdelivered++;
        return;
    }
    lg_seq_t *s = &c->seq[p->slot];
    bool dup = false, reordered = false;
    uint32_t q = (uint32_t)seq;
    if (q > s->last) {
        uint32_t shift = q - s->last;
        s->seen = shift >= 64 ? 1 : (s->seen << shift) | 1;
        s->last = q;
    } else {
        uint32_t d = s->last - q;
        if (d < 64 && (s->seen & (1ull << d))) {
            dup = true;
        } else {
            reordered = true;
            if (d < 64)
                s->seen |= 1ull << d;
        }
    }
    if (q < p->phase_seq) {
        ph->late++;
        return;
    }
    ph->received++;
    if (dup) {
        ph->dup++;
        return;
    }
    if (reordered)
        ph->reordered++;
    lg_hist_add(&ph->lat, now > sent ? now - sent : 0);
    ph->t_last_recv = now;
}

/* The next "SBLG:" in [p, end). memchr for the 'S' is vectorised and nothing else
 * in a payload or a server's envelope is an upper-case S as a rule, so this costs
 * a fraction of memmem, which was the generator's top function at 1M msgs/s. */
static const char *next_marker(const char *p, const char *end)
{
    while (p < end && (p = memchr(p, 'S', (size_t)(end - p))) != NULL) {
        if (end - p >= 5 && memcmp(p + 1, "BLG:", 4) == 0)
            return p;
        p++;
    }
    return NULL;
}

/* Scans bytes for SBLG:<pubid>:<seq>:<send_us>: markers. The same scan serves raw
 * frames, Switchboard's JSON envelopes and SSE data lines, which is what lets one
 * generator measure every server. */
static void scan(lg_conn_t *c, const char *p, size_t n, uint64_t now)
{
    const char *end = p + n;
    if (!c->receiver)
        return;
    while ((p = next_marker(p, end)) != NULL) {
        uint64_t id, seq, sent;
        p += 5;
        if (!parse_u64(&p, end, &id) || !parse_u64(&p, end, &seq) ||
            !parse_u64(&p, end, &sent)) {
            L.ph.bad++;
            continue;
        }
        account(c, id, seq, sent, now);
    }
}

/* ---- receiving: protocols ----------------------------------------------------- */

static void ws_text(lg_conn_t *c, const char *p, size_t n, uint64_t now)
{
    if (c->state == CS_SUBSCRIBING && find(p, n, "\"op\":\"ok\"")) {
        established(c);
        return;
    }
    if (c->kind == 100 + PUB_WS_JSON) {
        bool ok = find(p, n, "\"op\":\"ok\"") != NULL;
        if (ok || find(p, n, "\"op\":\"error\"")) {
            lg_pub_response(c, ok);
        }
        return;
    }
    scan(c, p, n, now);
}

/* Parses complete server frames; returns the bytes consumed. */
static size_t ws_frames(lg_conn_t *c, const char *buf, size_t len, uint64_t now)
{
    size_t pos = 0;
    while (len - pos >= 2 && c->fd >= 0) {
        const uint8_t *b = (const uint8_t *)buf + pos;
        int op = b[0] & 0x0f;
        uint64_t n = b[1] & 0x7f;
        size_t h = 2;
        if (n == 126) {
            if (len - pos < 4)
                break;
            n = (uint64_t)b[2] << 8 | b[3];
            h = 4;
        } else if (n == 127) {
            if (len - pos < 10)
                break;
            n = 0;
            for (int i = 0; i < 8; i++)
                n = n << 8 | b[2 + i];
            h = 10;
        }
        if (b[1] & 0x80)
            h += 4; /* servers must not mask, but tolerate it */
        if (n > MAX_TAIL) {
            conn_close(c, "frame too large");
            return len;
        }
        if (len - pos < h + n)
            break;
        const char *pl = buf + pos + h;
        if (op == 0x9) {
            char pong[256];
            size_t m = lg_ws_frame(pong, 0xA, pl, n > 125 ? 125 : (size_t)n);
            lg_net_send(c, pong, m);
        } else if (op == 0x8) {
            char cl[256];
            size_t m = lg_ws_frame(cl, 0x8, pl, n > 125 ? 125 : (size_t)n);
            lg_net_send(c, cl, m);
            conn_close(c, "server sent close");
            return len;
        } else if (op <= 0x2) {
            ws_text(c, pl, (size_t)n, now);
        }
        pos += h + (size_t)n;
    }
    return pos;
}

/* Decodes chunked transfer encoding (see lg.h). Everything but data bytes is consumed
 * here, so no raw tail is kept between reads. */
size_t lg_dechunk(lg_chunk_t *ch, const char *in, size_t n, char *out, size_t *outn)
{
    size_t o = 0, i = 0;
    while (i < n && !ch->done) {
        char b = in[i];
        switch (ch->st) {
        case CH_SIZE:
            if (b >= '0' && b <= '9')
                ch->left = ch->left * 16 + (uint64_t)(b - '0');
            else if ((b | 0x20) >= 'a' && (b | 0x20) <= 'f')
                ch->left = ch->left * 16 + (uint64_t)((b | 0x20) - 'a' + 10);
            else if (b == ';')
                ch->st = CH_EXT;
            else if (b == '\r')
                ch->st = CH_SIZE_LF;
            else if (b == '\n')
                ch->st = ch->left ? CH_DATA : CH_TRAILER;
            i++;
            break;
        case CH_EXT:
        case CH_SIZE_LF:
            if (b == '\n')
                ch->st = ch->left ? CH_DATA : CH_TRAILER;
            i++;
            break;
        case CH_DATA: {
            size_t take = n - i < ch->left ? n - i : (size_t)ch->left;
            if (out)
                memcpy(out + o, in + i, take);
            o += take;
            i += take;
            ch->left -= take;
            if (ch->left == 0)
                ch->st = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (b == '\n') {
                ch->st = CH_SIZE;
                ch->left = 0;
            }
            i++;
            break;
        case CH_TRAILER: /* at the start of a trailer line: an empty line ends the body */
            if (b == '\n')
                ch->done = true;
            else if (b != '\r')
                ch->st = CH_TRAILER_LF;
            i++;
            break;
        default: /* CH_TRAILER_LF: inside a trailer line */
            if (b == '\n')
                ch->st = CH_TRAILER;
            i++;
            break;
        }
    }
    *outn = o;
    return i;
}

/* SSE: a marker never spans a newline, so only the bytes after the last newline wait. */
static size_t sse_lines(lg_conn_t *c, const char *buf, size_t len, uint64_t now)
{
    const char *nl = memrchr(buf, '\n', len);
    if (!nl)
        return 0;
    size_t n = (size_t)(nl - buf) + 1;
    scan(c, buf, n, now);
    return n;
}

/* Chunked SSE keeps its tail decoded: raw bytes are decoded behind it and then split. */
static void sse_chunked(lg_conn_t *c, const char *raw, size_t n, uint64_t now)
{
    char *dec = L.scratch + L.scratch_cap / 2;
    size_t left = c->in_len;
    if (left)
        memcpy(dec, c->in, left);
    size_t m;
    lg_dechunk(&c->chunk, raw, n, dec + left, &m);
    m += left;
    size_t used = sse_lines(c, dec, m, now);
    if (m - used > MAX_TAIL) {
        conn_close(c, "SSE line too long");
        return;
    }
    keep_tail(c, dec + used, m - used);
    if (c->chunk.done)
        conn_close(c, "SSE stream ended");
}

/* HTTP publisher: responses (pipelined, any number per read). */
static size_t http_responses(lg_conn_t *c, const char *buf, size_t len)
{
    size_t pos = 0;
    while (pos < len && c->fd >= 0) {
        if (!c->in_body) {
            const char *e = find(buf + pos, len - pos, "\r\n\r\n");
            if (!e)
                return pos;
            size_t hl = (size_t)(e - (buf + pos)) + 4, vl;
            const char *h = buf + pos;
            c->rsp_status = (hl > 12 && memcmp(h, "HTTP/1.", 7) == 0) ? atoi(h + 9) : 0;
            const char *v = header_value(h, hl, "Transfer-Encoding", &vl);
            bool chunked = v && vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
            v = header_value(h, hl, "Content-Length", &vl);
            c->body_left = v ? strtoull(v, NULL, 10) : 0;
            memset(&c->chunk, 0, sizeof c->chunk);
            c->chunked = chunked;
            c->in_body = chunked || c->body_left > 0;
            pos += hl;
        } else if (c->chunked) {
            size_t ignored;
            pos += lg_dechunk(&c->chunk, buf + pos, len - pos, NULL, &ignored);
            if (c->chunk.done)
                c->in_body = false;
        } else {
            size_t take = len - pos < c->body_left ? len - pos : (size_t)c->body_left;
            pos += take;
            c->body_left -= take;
            c->in_body = c->body_left > 0;
        }
        if (!c->in_body)
            lg_pub_response(c, c->rsp_status >= 200 && c->rsp_status < 300);
    }
    return pos;
}

/* The upgrade or SSE response; returns bytes consumed, or 0 while incomplete. */
static size_t handshake(lg_conn_t *c, const char *buf, size_t len)
{
    const char *e = find(buf, len, "\r\n\r\n");
    if (!e) {
        if (len > 16384)
            conn_close(c, "response headers too large");
        return 0;
    }
    size_t hl = (size_t)(e - buf) + 4, vl;
    int status = (hl > 12 && memcmp(buf, "HTTP/1.", 7) == 0) ? atoi(buf + 9) : 0;
    if (is_ws(c)) {
        const char *v = header_value(buf, hl, "Sec-WebSocket-Accept", &vl);
        if (status != 101 || !v || vl != strlen(L.ws_accept) || memcmp(v, L.ws_accept, vl)) {
            char why[64];
            snprintf(why, sizeof why, "upgrade refused (status %d)", status);
            conn_close(c, why);
            return len;
        }
        if (c->kind == SUB_WS_JSON) {
            char name[160], msg[320], fr[400];
            lg_channel_name(c->group, name, sizeof name);
            int n = snprintf(msg, sizeof msg, "{\"op\":\"subscribe\",\"channel\":\"%s\",\"ref\":1}",
                             name);
            c->state = CS_SUBSCRIBING;
            lg_net_send(c, fr, lg_ws_frame(fr, 0x1, msg, (size_t)n));
        } else {
            established(c);
        }
    } else {
        if (status != 200) {
            char why[64];
            snprintf(why, sizeof why, "SSE refused (status %d)", status);
            conn_close(c, why);
            return len;
        }
        const char *v = header_value(buf, hl, "Transfer-Encoding", &vl);
        c->chunked = v && vl >= 7 && strncasecmp(v + vl - 7, "chunked", 7) == 0;
        memset(&c->chunk, 0, sizeof c->chunk);
        established(c);
    }
    return hl;
}

/* Feeds bytes to whatever the connection expects now; returns the bytes consumed. */
static size_t process(lg_conn_t *c, const char *buf, size_t len, uint64_t now)
{
    size_t pos = 0;
    if (c->state == CS_HANDSHAKE) {
        pos = handshake(c, buf, len);
        if (pos == 0 || c->fd < 0)
            return c->fd < 0 ? len : 0;
    }
    if (c->kind == 100 + PUB_HTTP)
        return pos + http_responses(c, buf + pos, len - pos);
    if (is_ws(c))
        return pos + ws_frames(c, buf + pos, len - pos, now);
    if (c->chunked) {
        /* The stream just turned chunked: what the tail held was the header block. */
        c->in_len = 0;
        sse_chunked(c, buf + pos, len - pos, now);
        return len;
    }
    return pos + sse_lines(c, buf + pos, len - pos, now);
}

static void read_all(lg_conn_t *c);

/* A publisher answers each response with the next request. Every request triggered by
 * one read goes out in one send: on loopback the sender pays for the receiver's TCP
 * input too, so a send per request would make the generator the bottleneck. */
static void on_readable(lg_conn_t *c)
{
    if (c->kind < 100) {
        read_all(c);
        return;
    }
    c->cork = true;
    read_all(c);
    lg_net_uncork(c);
}

/* Where the next read of c goes: after the kept tail of a partial message, except
 * for chunked SSE, which keeps a decoded tail and so reads its raw bytes alone.
 * Copies the tail to buf and returns its length. */
static size_t read_prefix(lg_conn_t *c, char *buf, bool *raw)
{
    *raw = c->state == CS_OPEN && c->chunked && c->kind == SUB_SSE;
    size_t left = *raw ? 0 : c->in_len;
    if (left)
        memcpy(buf, c->in, left);
    return left;
}

/* Handles one read of r bytes (or -errno) that went to buf + left. Returns true
 * when the socket may hold more (the read filled its room). */
static bool read_done(lg_conn_t *c, char *buf, size_t left, size_t room, bool raw, ssize_t r)
{
    L.ph.reads++;
    if (r == 0) {
        conn_close(c, "closed by server");
        return false;
    }
    if (r < 0) {
        if (r != -EAGAIN && r != -EINTR)
            conn_close(c, strerror((int)-r));
        return false;
    }
    uint64_t now = lg_now();
    if (raw) {
        sse_chunked(c, buf, (size_t)r, now);
    } else {
        size_t len = left + (size_t)r;
        size_t used = process(c, buf, len, now);
        if (c->fd < 0)
            return false;
        if (used < len) {
            if (len - used > MAX_TAIL) {
                conn_close(c, "message too large");
                return false;
            }
            /* A handshake that turned the stream into chunked SSE already kept its
             * decoded tail; its raw bytes were consumed in full. */
            keep_tail(c, buf + used, len - used);
        } else if (!(c->chunked && c->kind == SUB_SSE)) {
            c->in_len = 0;
        }
    }
    /* Edge-triggered, and a short read means the socket was drained: any byte
     * arriving later raises a new edge. This saves one EAGAIN read per wakeup. */
    return (size_t)r == room && c->fd >= 0;
}

static void read_all(lg_conn_t *c)
{
    for (;;) {
        if (c->fd < 0)
            return;
        bool raw;
        char *buf = L.scratch;
        size_t left = read_prefix(c, buf, &raw);
        size_t room = L.scratch_cap / 2 - left;
        ssize_t r = recv(c->fd, buf + left, room, 0);
        if (!read_done(c, buf, left, room, raw, r < 0 ? -errno : r))
            return;
    }
}

/* ---- batched receives (io_uring) ------------------------------------------------
 * With a few hundred subscribers ready per wakeup, one recv(2) each made the
 * generator slower per delivery than the servers it measures (a system call costs
 * about a microsecond here), so its own backlog showed up as their latency. When
 * the kernel allows, the first read of every ready subscriber goes to the kernel in
 * one io_uring submission (MSG_DONTWAIT: each completes at once, data or -EAGAIN);
 * a read that filled its slot is continued with plain recv until drained. */
#ifdef LG_HAVE_URING
#include <liburing.h>
#define RX_SLOTS 512
#define RX_SLOT_BYTES (64u * 1024u)
static struct io_uring rx_ring;
static bool rx_on;
static char *rx_buf;

void lg_net_uring_init(void)
{
    if (io_uring_queue_init(RX_SLOTS, &rx_ring, 0) < 0)
        return;
    rx_buf = malloc((size_t)RX_SLOTS * RX_SLOT_BYTES);
    if (!rx_buf) {
        io_uring_queue_exit(&rx_ring);
        return;
    }
    rx_on = true;
}

bool lg_net_uring_active(void) { return rx_on; }

static void rx_batch(lg_conn_t **cs, int n)
{
    size_t left[RX_SLOTS];
    bool raw[RX_SLOTS], plain[RX_SLOTS];
    ssize_t res[RX_SLOTS];
    for (int i = 0; i < n; i++) {
        char *buf = rx_buf + (size_t)i * RX_SLOT_BYTES;
        left[i] = read_prefix(cs[i], buf, &raw[i]);
        res[i] = -EAGAIN;
        /* a partial message longer than a slot is read the plain way */
        plain[i] = left[i] >= RX_SLOT_BYTES;
        if (plain[i])
            continue;
        struct io_uring_sqe *sqe = io_uring_get_sqe(&rx_ring);
        io_uring_prep_recv(sqe, cs[i]->fd, buf + left[i], RX_SLOT_BYTES - left[i], MSG_DONTWAIT);
        io_uring_sqe_set_data64(sqe, (uint64_t)i);
    }
    int want = io_uring_sq_ready(&rx_ring);
    if (want > 0 && io_uring_submit_and_wait(&rx_ring, (unsigned)want) >= 0) {
        for (int got = 0; got < want;) {
            struct io_uring_cqe *cqe;
            if (io_uring_wait_cqe(&rx_ring, &cqe) < 0)
                break;
            res[io_uring_cqe_get_data64(cqe)] = cqe->res;
            io_uring_cqe_seen(&rx_ring, cqe);
            got++;
        }
    }
    for (int i = 0; i < n; i++) {
        lg_conn_t *c = cs[i];
        if (plain[i]) {
            read_all(c);
            continue;
        }
        if (c->fd < 0)
            continue;
        char *buf = rx_buf + (size_t)i * RX_SLOT_BYTES;
        /* -EAGAIN: a spurious edge, or (should the ring ever fail) nothing read */
        if (read_done(c, buf, left[i], RX_SLOT_BYTES - left[i], raw[i], res[i]) ||
            res[i] == -EAGAIN)
            read_all(c);
    }
}
#else
void lg_net_uring_init(void) {}
bool lg_net_uring_active(void) { return false; }
#endif

void lg_net_poll(uint64_t timeout_us)
{
    struct epoll_event evs[512];
    if (L.busy_poll)
        timeout_us = 0;
    struct timespec ts = {(time_t)(timeout_us / 1000000), (long)(timeout_us % 1000000) * 1000};
    int n = epoll_pwait2(L.ep, evs, 512, &ts, NULL);
    L.ph.polls++;
    L.ph.events += n > 0 ? (uint64_t)n : 0;
#ifdef LG_HAVE_URING
    lg_conn_t *rx[512];
    int nrx = 0;
#endif
    for (int i = 0; i < n; i++) {
        lg_conn_t *c = evs[i].data.ptr;
        uint32_t ev = evs[i].events;
        if (c->fd < 0)
            continue;
        if (c->state == CS_CONNECTING) {
            int err = 0;
            socklen_t sl = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
            if (err) {
                conn_close(c, strerror(err));
                continue;
            }
            if (!(ev & EPOLLOUT))
                continue;
            on_connected(c);
        } else if ((ev & EPOLLOUT) && c->out_len) {
            if (!flush_out(c))
                continue;
            if (c->out_len == 0 && c->pubid >= 0 && c->state == CS_OPEN)
                lg_pub_window_open(&L.pubs_v[c->pubid]);
        }
        if (!(ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
            continue;
#ifdef LG_HAVE_URING
        /* Subscribers' reads are gathered; publishers answer each response with the
         * next request, corked, so they keep their own path. */
        if (rx_on && c->kind < 100 && c->state == CS_OPEN) {
            rx[nrx++] = c;
            continue;
        }
#endif
        on_readable(c);
    }
#ifdef LG_HAVE_URING
    if (nrx)
        rx_batch(rx, nrx);
#endif
}
