/* sb_loadgen: Switchboard's load generator (issue 9).
 *
 * Scenarios:
 *   fanout   N subscribers (WebSocket or SSE) on G channels, P publishers at a paced
 *            total rate (or as fast as a window of outstanding requests allows);
 *   rooms    R rooms of M raw WebSocket members, every member sending at a rate; each
 *            message must reach the other M-1 members and nobody else;
 *   publish  HTTP publish throughput with keep-alive (and pipelining up to --window);
 *   idle     hold N connections for --duration seconds, then read the server's RSS;
 *   storm    open N connections as fast as --concurrency allows, time until all are up.
 *
 * Every payload starts with SBLG:<pubid>:<seq>:<send_us>: and is padded to --size bytes.
 * Receivers scan the bytes they get for markers, whatever wraps them (Switchboard's JSON,
 * SSE data lines, nchan's raw frames), count lost, duplicate and reordered messages per
 * publisher, and put end-to-end latency into a log-bucket histogram. send_us is the
 * scheduled send time, not the time the generator got around to it, so a stalled
 * publisher shows up as latency instead of hiding (no coordinated omission).
 *
 * Output: a human table, then one line of key=value pairs per measured phase. */
#define _GNU_SOURCE
#include "lg.h"

#include <errno.h>
#include <getopt.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define BACKLOG_CAP 1024u /* paced messages one publisher may owe before they are skipped */
#define MAX_SIZE 65536u

lg_t L;

static uint64_t k_next, k_max;  /* paced schedule: message k is due at t_start + k * ivl */
static double ivl_us;
static bool afap;
static volatile sig_atomic_t interrupted;

uint64_t lg_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u - L.t0;
}

static double cpu_self(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- the server's side, from /proc -------------------------------------------- */

/* User + system CPU seconds of all given processes (all their threads), -1 if unknown. */
static double server_cpu(void)
{
    double sum = 0;
    if (L.nserver_pids == 0)
        return -1;
    for (int i = 0; i < L.nserver_pids; i++) {
        char path[64], buf[1024];
        snprintf(path, sizeof path, "/proc/%d/stat", L.server_pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            return -1;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = 0;
        /* Fields after the command name, which may hold spaces: skip past its ')'. */
        char *p = strrchr(buf, ')');
        unsigned long ut = 0, st = 0;
        if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
                         &st) != 2)
            return -1;
        sum += (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    return sum;
}

/* Resident set of all given processes in KiB, -1 if unknown. */
static long server_rss_kb(void)
{
    long sum = 0;
    if (L.nserver_pids == 0)
        return -1;
    for (int i = 0; i < L.nserver_pids; i++) {
        char path[64], line[256];
        long kb = -1;
        snprintf(path, sizeof path, "/proc/%d/status", L.server_pids[i]);
        FILE *f = fopen(path, "r");
        if (!f)
            return -1;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmRSS: %ld", &kb) == 1)
                break;
        fclose(f);
        if (kb < 0)
            return -1;
        sum += kb;
    }
    return sum;
}

/* The whole machine from /proc/stat, in seconds: busy time (everything but idle and
 * iowait) and the softirq part of it (on loopback, the receive side of every segment).
 * What is busy besides the server and the generator is other work on the machine, the
 * first thing to look at when two runs disagree. */
static void machine_cpu(double *busy, double *softirq)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    *busy = *softirq = -1;
    if (!f)
        return;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
                   &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return;
    double tck = (double)sysconf(_SC_CLK_TCK);
    *busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / tck;
    *softirq = (double)v[6] / tck;
}

/* ---- publishing ------------------------------------------------------------- */

static uint64_t receivers_for(const lg_pub_t *p)
{
    const lg_conn_t *c = &L.conns[p->conn];
    uint64_t n = L.group_recv[p->group];
    return (c->receiver && c->counted && n > 0) ? n - 1 : n;
}

static bool can_send(const lg_pub_t *p)
{
    const lg_conn_t *c = &L.conns[p->conn];
    if (c->state != CS_OPEN)
        return false;
    if (L.pub == PUB_ROOM)
        return !lg_net_out_busy(c);
    return p->outstanding < L.window;
}

static void send_msg(lg_pub_t *p, uint64_t stamp)
{
    static char pl[MAX_SIZE + 64], msg[2 * MAX_SIZE + 1024];
    lg_conn_t *c = &L.conns[p->conn];
    uint32_t pubid = (uint32_t)(p - L.pubs_v);
    size_t n, pn;
    p->seq++;
    pn = (size_t)snprintf(pl, 64, "SBLG:%u:%u:%llu:", pubid, p->seq, (unsigned long long)stamp);
    if (pn < L.size) {
        memset(pl + pn, 'x', L.size - pn);
        pn = L.size;
    }
    if (L.pub == PUB_HTTP) {
        char path[512];
        lg_pub_path(p->group, path, sizeof path);
        n = (size_t)snprintf(msg, 1024,
                             "POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: text/plain\r\n"
                             "Content-Length: %zu\r\n\r\n",
                             path, L.host, L.port, pn);
        memcpy(msg + n, pl, pn);
        n += pn;
    } else if (L.pub == PUB_WS_JSON) {
        static char js[MAX_SIZE + 512];
        char name[160];
        lg_channel_name(p->group, name, sizeof name);
        size_t jn = (size_t)snprintf(js, 256, "{\"op\":\"publish\",\"channel\":\"%s\",\"data\":\"",
                                     name);
        memcpy(js + jn, pl, pn);
        jn += pn;
        jn += (size_t)snprintf(js + jn, 64, "\",\"ref\":%u}", p->seq);
        n = lg_ws_frame(msg, 0x1, js, jn);
    } else {
        n = lg_ws_frame(msg, 0x1, pl, pn);
    }
    L.ph.published++;
    if (L.pub == PUB_ROOM) {
        /* Raw rooms have no ack: a frame handed to the socket counts as accepted. */
        L.ph.accepted++;
        L.ph.expected += receivers_for(p);
    } else {
        p->outstanding++;
        L.outstanding++;
        if (p->sa_len < L.window) {
            p->sent_at[(p->sa_head + p->sa_len) % L.window] = lg_now();
            p->sa_len++;
        }
    }
    lg_net_send(c, msg, n);
}

void lg_pub_window_open(lg_pub_t *p)
{
    while (p->bl_len > 0 && can_send(p)) {
        uint64_t stamp = p->backlog[p->bl_head];
        p->bl_head = (p->bl_head + 1) % BACKLOG_CAP;
        p->bl_len--;
        send_msg(p, stamp);
    }
    if (afap && L.publishing && can_send(p)) {
        lg_conn_t *c = &L.conns[p->conn];
        bool was = c->cork;
        c->cork = true;
        while (can_send(p))
            send_msg(p, lg_now());
        if (!was)
            lg_net_uncork(c);
    }
}

void lg_pub_response(lg_conn_t *c, bool ok)
{
    lg_pub_t *p = &L.pubs_v[c->pubid];
    if (p->outstanding == 0)
        return; /* a reply to nothing we sent (a welcome frame, say) */
    p->outstanding--;
    L.outstanding--;
    if (p->sa_len > 0) {
        lg_hist_add(&L.ph.rsp, lg_now() - p->sent_at[p->sa_head]);
        p->sa_head = (p->sa_head + 1) % L.window;
        p->sa_len--;
    }
    if (ok) {
        L.ph.accepted++;
        L.ph.expected += receivers_for(p);
    } else {
        L.ph.pub_errors++;
    }
    lg_pub_window_open(p);
}

static void publish_one(lg_pub_t *p, uint64_t stamp)
{
    if (L.conns[p->conn].state != CS_OPEN) {
        L.ph.skipped++;
        return;
    }
    if (p->bl_len == 0 && can_send(p)) {
        send_msg(p, stamp);
        return;
    }
    if (p->bl_len == BACKLOG_CAP) {
        L.ph.skipped++;
        return;
    }
    if (!p->backlog && !(p->backlog = malloc(BACKLOG_CAP * sizeof *p->backlog))) {
        fprintf(stderr, "sb_loadgen: out of memory\n");
        exit(2);
    }
    p->backlog[(p->bl_head + p->bl_len) % BACKLOG_CAP] = stamp;
    p->bl_len++;
}

/* Sends every message whose time has come. A generator that fell behind catches up in
 * bursts of bounded size so that receiving never stalls behind sending. */
static void publish_due(uint64_t now)
{
    for (int burst = 0; burst < 20000 && k_next < k_max; burst++) {
        uint64_t due = L.ph.t_start + (uint64_t)((double)k_next * ivl_us);
        if (due > now)
            break;
        publish_one(&L.pubs_v[k_next % L.npubs], due);
        k_next++;
    }
}

static uint64_t next_due(void)
{
    if (afap || k_next >= k_max)
        return UINT64_MAX;
    return L.ph.t_start + (uint64_t)((double)k_next * ivl_us);
}

/* ---- options ---------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
"usage: sb_loadgen --scenario fanout|rooms|publish|idle|storm [options]\n"
"  --target HOST:PORT     server (default 127.0.0.1:8080; loopback only)\n"
"  --pub-target HOST:PORT publish-only connections go there instead (another node of\n"
"                         a cluster; the same loopback host as --target)\n"
"  --label NAME           name of the target in the output (default server)\n"
"  --sub KIND             ws-json (Switchboard /v1/ws + subscribe op), ws-url (nchan),\n"
"                         room (raw ?room= member), sse, none   (default ws-json)\n"
"  --pub KIND             http (POST, keep-alive), ws-json (publish op), room (raw frame)\n"
"  --subs N               subscriber connections (fanout, idle, storm)\n"
"  --pubs N               publisher connections (default 1; publish: 4)\n"
"  --channels G           spread subscribers and publishers over G channels (default 1)\n"
"  --channel NAME         channel name, or prefix when G > 1 (default bench)\n"
"  --rooms R --members M  rooms scenario: R rooms of M members (default 100 x 4)\n"
"  --rate R[,R...]        total msgs/s (rooms: per member); a list runs a ladder on the\n"
"                         same connections; 0 = as fast as the window allows\n"
"  --window W             requests or acks in flight per publisher (default 64)\n"
"  --size B               payload bytes, marker included (default 128)\n"
"  --duration S           publish phase or idle hold, seconds (default 10)\n"
"  --drain S              wait after the last publish for deliveries (default 5)\n"
"  --settle S             wait between connected and first publish (default 0.5)\n"
"  --concurrency C        connects in flight at once (default 256)\n"
"  --src-ips K            source addresses 127.0.0.1..127.0.0.K (default 8)\n"
"  --connect-timeout S    per connection, connect to ready (default 20)\n"
"  --ws-path P            WebSocket path; %%s is the channel (default by --sub:\n"
"                         /v1/ws, /v1/ws?channel=%%s, /?room=%%s)\n"
"  --sse-path P           default /v1/sse?channel=%%s\n"
"  --pub-path P           default /v1/channels/%%s/messages\n"
"  --server-pid PID[,PID] processes whose CPU and RSS are read from /proc\n"
"  --stop-on-loss         end a ladder at the first rate with a loss, a skipped or refused\n"
"                         publish, or (with --max-p99 MS) p99 over MS\n"
"  --max-p99 MS           see --stop-on-loss (default: no latency bound)\n"
"  --before-phase CMD     shell command run just before each publish phase starts\n"
"  --after-phase CMD      shell command run right after each phase has drained\n"
"                         (bench/callgrind.sh uses them to count only the phase)\n"
"  --busy-poll            never sleep in epoll_wait: the server then pays no wake-ups of\n"
"                         the generator (which shows 100%% CPU); see bench/README.md\n"
"  --no-io-uring          one recv(2) per ready subscriber instead of one io_uring\n"
"                         submission for all of them (the default where available)\n"
"  --self-test            check the histogram, chunked decoder and frame encoder; exit\n");
}

static int parse_kind(const char *s, const char *const *names, int n)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0)
            return i;
    return -1;
}

static void parse_args(int argc, char **argv)
{
    static const char *const subs[] = {"none", "ws-json", "ws-url", "room", "sse"};
    static const char *const pubs[] = {"none", "http", "ws-json", "room"};
    enum { O_TARGET = 256, O_LABEL, O_SUB, O_PUB, O_SUBS, O_PUBS, O_CHANNELS, O_CHANNEL,
           O_ROOMS, O_MEMBERS, O_RATE, O_WINDOW, O_SIZE, O_DURATION, O_DRAIN, O_SETTLE,
           O_CONC, O_SRC, O_CTO, O_WSP, O_SSEP, O_PUBP, O_PID, O_STOP, O_MAXP99, O_SCEN,
           O_BEFORE, O_AFTER, O_SELFTEST, O_BUSY, O_NOURING, O_PUBTARGET };
    static const struct option opts[] = {
        {"scenario", 1, 0, O_SCEN},       {"target", 1, 0, O_TARGET},
        {"label", 1, 0, O_LABEL},         {"sub", 1, 0, O_SUB},
        {"pub", 1, 0, O_PUB},             {"subs", 1, 0, O_SUBS},
        {"pubs", 1, 0, O_PUBS},           {"channels", 1, 0, O_CHANNELS},
        {"channel", 1, 0, O_CHANNEL},     {"rooms", 1, 0, O_ROOMS},
        {"members", 1, 0, O_MEMBERS},     {"rate", 1, 0, O_RATE},
        {"window", 1, 0, O_WINDOW},       {"size", 1, 0, O_SIZE},
        {"duration", 1, 0, O_DURATION},   {"drain", 1, 0, O_DRAIN},
        {"settle", 1, 0, O_SETTLE},       {"concurrency", 1, 0, O_CONC},
        {"src-ips", 1, 0, O_SRC},         {"connect-timeout", 1, 0, O_CTO},
        {"ws-path", 1, 0, O_WSP},         {"sse-path", 1, 0, O_SSEP},
        {"pub-path", 1, 0, O_PUBP},       {"server-pid", 1, 0, O_PID},
        {"stop-on-loss", 0, 0, O_STOP},   {"max-p99", 1, 0, O_MAXP99},
        {"before-phase", 1, 0, O_BEFORE}, {"after-phase", 1, 0, O_AFTER},
        {"self-test", 0, 0, O_SELFTEST},  {"busy-poll", 0, 0, O_BUSY},
        {"no-io-uring", 0, 0, O_NOURING}, {"help", 0, 0, 'h'},
        {"pub-target", 1, 0, O_PUBTARGET},
        {0, 0, 0, 0}};
    long subs_n = -1, pubs_n = -1, window = -1;
    int sub = -1, pub = -1, o;
    bool rate_set = false;
    const char *target = "127.0.0.1:8080", *pub_target = NULL;

    L.label = "server";
    L.channel = "bench";
    L.groups = 1;
    L.members = 4;
    L.size = 128;
    L.duration = 10;
    L.drain = 5;
    L.settle = 0.5;
    L.concurrency = 256;
    L.src_ips = 8;
    L.connect_timeout = 20;
    uint32_t rooms = 100;

    while ((o = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (o) {
        case O_SCEN: L.scenario = optarg; break;
        case O_TARGET: target = optarg; break;
        case O_PUBTARGET: pub_target = optarg; break;
        case O_LABEL: L.label = optarg; break;
        case O_SUB:
            if ((sub = parse_kind(optarg, subs, 5)) < 0)
                goto bad;
            break;
        case O_PUB:
            if ((pub = parse_kind(optarg, pubs, 4)) < 0)
                goto bad;
            break;
        case O_SUBS: subs_n = atol(optarg); break;
        case O_PUBS: pubs_n = atol(optarg); break;
        case O_CHANNELS: L.groups = (uint32_t)atol(optarg); break;
        case O_CHANNEL: L.channel = optarg; break;
        case O_ROOMS: rooms = (uint32_t)atol(optarg); break;
        case O_MEMBERS: L.members = (uint32_t)atol(optarg); break;
        case O_RATE: {
            char *s = optarg, *e;
            L.nrates = 0;
            while (*s && L.nrates < 16) {
                L.rates[L.nrates++] = strtod(s, &e);
                if (e == s)
                    goto bad;
                s = *e == ',' ? e + 1 : e;
            }
            rate_set = true;
            break;
        }
        case O_WINDOW: window = atol(optarg); break;
        case O_SIZE: L.size = (uint32_t)atol(optarg); break;
        case O_DURATION: L.duration = atof(optarg); break;
        case O_DRAIN: L.drain = atof(optarg); break;
        case O_SETTLE: L.settle = atof(optarg); break;
        case O_CONC: L.concurrency = (uint32_t)atol(optarg); break;
        case O_SRC: L.src_ips = (uint32_t)atol(optarg); break;
        case O_CTO: L.connect_timeout = atof(optarg); break;
        case O_WSP: snprintf(L.ws_path, sizeof L.ws_path, "%s", optarg); break;
        case O_SSEP: snprintf(L.sse_path, sizeof L.sse_path, "%s", optarg); break;
        case O_PUBP: snprintf(L.pub_path, sizeof L.pub_path, "%s", optarg); break;
        case O_PID: {
            char *s = optarg;
            while (*s && L.nserver_pids < 8) {
                L.server_pids[L.nserver_pids++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
                else
                    break;
            }
            break;
        }
        case O_STOP: L.stop_on_loss = true; break;
        case O_MAXP99: L.max_p99_ms = atof(optarg); break;
        case O_BEFORE: L.before_cmd = optarg; break;
        case O_AFTER: L.after_cmd = optarg; break;
        case O_SELFTEST: exit(lg_selftest());
        case O_BUSY: L.busy_poll = true; break;
        case O_NOURING: L.no_uring = true; break;
        case 'h': usage(stdout); exit(0);
        default: goto bad;
        }
    }
    if (!L.scenario)
        goto bad;

    /* Loopback only: this tool must never load anything but this machine. */
    {
        const char *colon = strrchr(target, ':');
        static char host[64];
        if (!colon || (size_t)(colon - target) >= sizeof host)
            goto bad;
        memcpy(host, target, (size_t)(colon - target));
        host[colon - target] = 0;
        if (strcmp(host, "localhost") == 0)
            snprintf(host, sizeof host, "127.0.0.1");
        if (strncmp(host, "127.", 4) != 0) {
            fprintf(stderr, "sb_loadgen: target must be a loopback address (127.x.x.x)\n");
            exit(2);
        }
        L.host = host;
        L.port = atoi(colon + 1);
        if (pub_target) {
            const char *pc = strrchr(pub_target, ':');
            if (!pc || (size_t)(pc - pub_target) != strlen(host) || strncmp(pub_target, host, strlen(host))) {
                fprintf(stderr, "sb_loadgen: --pub-target must be HOST:PORT on the --target host\n");
                exit(2);
            }
            L.pub_port = atoi(pc + 1);
        }
    }

    if (strcmp(L.scenario, "rooms") == 0) {
        L.sub = SUB_ROOM;
        L.pub = PUB_ROOM;
        L.groups = rooms;
        L.subs = rooms * L.members;
        L.pubs = L.subs;
        if (!rate_set) {
            L.rates[0] = 1;
            L.nrates = 1;
        }
    } else if (strcmp(L.scenario, "fanout") == 0 || strcmp(L.scenario, "publish") == 0) {
        bool publish = L.scenario[0] == 'p';
        L.sub = sub >= 0 ? (sub_kind_t)sub : publish ? SUB_NONE : SUB_WS_JSON;
        L.pub = pub >= 0 ? (pub_kind_t)pub : PUB_HTTP;
        L.subs = (uint32_t)(subs_n >= 0 ? subs_n : publish ? 0 : 1000);
        L.pubs = (uint32_t)(pubs_n > 0 ? pubs_n : publish ? 4 : 1);
        if (!rate_set) {
            L.rates[0] = publish ? 0 : 1000;
            L.nrates = 1;
        }
        if (L.pub == PUB_NONE)
            goto bad;
    } else if (strcmp(L.scenario, "idle") == 0 || strcmp(L.scenario, "storm") == 0) {
        L.sub = sub > 0 ? (sub_kind_t)sub : SUB_WS_JSON;
        L.pub = PUB_NONE;
        L.subs = (uint32_t)(subs_n >= 0 ? subs_n : 1000);
        L.pubs = 0;
    } else {
        goto bad;
    }
    if (L.subs > 0 && L.sub == SUB_NONE)
        goto bad;
    L.window = (uint32_t)(window > 0 ? window : 64);
    if (L.groups == 0 || L.src_ips == 0 || L.src_ips > 250 || L.concurrency == 0 ||
        L.size > MAX_SIZE || (L.pub == PUB_ROOM && L.sub != SUB_ROOM && L.sub != SUB_NONE))
        goto bad;
    for (int i = 0; i < L.nrates; i++)
        if (L.rates[i] <= 0 && L.pub == PUB_ROOM) {
            fprintf(stderr, "sb_loadgen: room publishers need a rate (they have no ack)\n");
            exit(2);
        }
    if (!L.ws_path[0])
        snprintf(L.ws_path, sizeof L.ws_path, "%s",
                 L.sub == SUB_WS_URL ? "/v1/ws?channel=%s"
                 : (L.sub == SUB_ROOM || L.pub == PUB_ROOM) ? "/?room=%s"
                                                            : "/v1/ws");
    if (!L.sse_path[0])
        snprintf(L.sse_path, sizeof L.sse_path, "/v1/sse?channel=%%s");
    if (!L.pub_path[0])
        snprintf(L.pub_path, sizeof L.pub_path, "/v1/channels/%%s/messages");
    return;
bad:
    usage(stderr);
    exit(2);
}

/* ---- setup ------------------------------------------------------------------ */

static void *xcalloc(size_t n, size_t sz)
{
    void *p = calloc(n ? n : 1, sz);
    if (!p) {
        fprintf(stderr, "sb_loadgen: out of memory\n");
        exit(2);
    }
    return p;
}

static void make_ws_key(void)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    unsigned char raw[16], sha[SHA_DIGEST_LENGTH];
    char cat[96];
    FILE *f = fopen("/dev/urandom", "r");
    if (!f || fread(raw, 1, sizeof raw, f) != sizeof raw) {
        for (size_t i = 0; i < sizeof raw; i++)
            raw[i] = (unsigned char)(rand() >> 3);
    }
    if (f)
        fclose(f);
    /* One key for every connection: servers check its shape, not its uniqueness, and
     * the expected accept value is then computed once instead of 19,000 times. */
    EVP_EncodeBlock((unsigned char *)L.ws_key, raw, sizeof raw);
    snprintf(cat, sizeof cat, "%s%s", L.ws_key, guid);
    SHA1((const unsigned char *)cat, strlen(cat), sha);
    EVP_EncodeBlock((unsigned char *)L.ws_accept, sha, sizeof sha);
}

static void setup(void)
{
    struct rlimit rl;
    bool rooms = strcmp(L.scenario, "rooms") == 0;
    L.nrecv = L.subs;
    L.nconns = rooms ? L.subs : L.subs + L.pubs;
    L.npubs = L.pubs;

    /* The hard limit here is 20,000 files. Raise the soft limit to it, and refuse a run
     * that cannot fit rather than failing thousands of connects half-way through. */
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    if ((uint64_t)L.nconns + 16 > (uint64_t)rl.rlim_cur) {
        fprintf(stderr,
                "sb_loadgen: %u connections need %u open files, but the limit is %llu "
                "(ulimit -n); ask for fewer connections\n",
                L.nconns, L.nconns + 16, (unsigned long long)rl.rlim_cur);
        exit(2);
    }

    L.conns = xcalloc(L.nconns, sizeof *L.conns);
    L.pubs_v = xcalloc(L.npubs, sizeof *L.pubs_v);
    L.group_recv = xcalloc(L.groups, sizeof *L.group_recv);
    L.group_pubs = xcalloc(L.groups, sizeof *L.group_pubs);
    for (uint32_t i = 0; i < L.nconns; i++) {
        lg_conn_t *c = &L.conns[i];
        c->fd = -1;
        c->pubid = -1;
        c->group = i % L.groups;
        c->receiver = i < L.nrecv;
        c->kind = (uint8_t)(i < L.nrecv ? L.sub : 100 + L.pub);
    }
    /* Publisher j belongs to group j % G, so the paced schedule, which takes the
     * publishers in order, visits every group before it comes back to one. */
    for (uint32_t j = 0; j < L.npubs; j++) {
        lg_pub_t *p = &L.pubs_v[j];
        p->group = j % L.groups;
        p->slot = L.group_pubs[p->group]++;
        p->conn = (int32_t)(rooms ? j : L.nrecv + j);
        L.conns[p->conn].pubid = (int32_t)j;
        L.conns[p->conn].group = p->group;
        if (L.pub != PUB_ROOM)
            p->sent_at = xcalloc(L.window, sizeof *p->sent_at);
    }
    size_t slots = 0;
    for (uint32_t i = 0; i < L.nrecv; i++)
        slots += L.group_pubs[L.conns[i].group];
    lg_seq_t *seq = L.seq_block = xcalloc(slots, sizeof *seq);
    for (uint32_t i = 0; i < L.nrecv; i++) {
        L.conns[i].seq = seq;
        seq += L.group_pubs[L.conns[i].group];
    }

    L.scratch_cap = 4u << 20;
    L.scratch = xcalloc(1, L.scratch_cap);
    if (!L.no_uring)
        lg_net_uring_init();
    L.ep = epoll_create1(EPOLL_CLOEXEC);
    if (L.ep < 0) {
        perror("epoll_create1");
        exit(2);
    }
    make_ws_key();
}

/* Frees what setup() allocated, so leak checkers see a clean exit. */
static void teardown(void)
{
    for (uint32_t j = 0; j < L.npubs; j++) {
        free(L.pubs_v[j].backlog);
        free(L.pubs_v[j].sent_at);
    }
    free(L.seq_block);
    free(L.pubs_v);
    free(L.conns);
    free(L.group_recv);
    free(L.group_pubs);
    free(L.scratch);
    close(L.ep);
}

/* ---- phases ----------------------------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void connect_all(void)
{
    uint64_t last_expire = lg_now();
    while (L.established + L.failed < L.nconns && !interrupted) {
        lg_net_pump_connects();
        lg_net_poll(50000);
        uint64_t now = lg_now();
        if (now - last_expire > 500000) {
            lg_net_expire();
            last_expire = now;
        }
    }
    if (L.t_all_connected == 0)
        L.t_all_connected = lg_now();
}

/* Keeps the loop running (pings answered, drops noticed) for s seconds. */
static void hold(double s)
{
    uint64_t end = lg_now() + (uint64_t)(s * 1e6);
    for (uint64_t now = lg_now(); now < end && !interrupted; now = lg_now())
        lg_net_poll(end - now < 100000 ? end - now : 100000);
}

static bool drained(void)
{
    uint64_t unique = L.ph.received - L.ph.dup;
    return L.outstanding == 0 && unique >= L.ph.expected;
}

/* Runs a hook command to completion; the loop is outside any measured window then. */
static void run_hook(const char *cmd)
{
    if (!cmd)
        return;
    fflush(stdout);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "sb_loadgen: hook '%s' exited with %d\n", cmd, rc);
}

typedef struct {
    double rate, total_rate, gen_cpu, server_cpu, wall;
    double busy, softirq; /* machine-wide CPU seconds during the phase */
} phase_info_t;

static phase_info_t run_phase(double rate)
{
    phase_info_t pi = {.rate = rate};
    bool rooms = strcmp(L.scenario, "rooms") == 0;
    memset(&L.ph, 0, sizeof L.ph);
    for (uint32_t j = 0; j < L.npubs; j++) {
        lg_pub_t *p = &L.pubs_v[j];
        p->phase_seq = p->seq + 1;
        p->bl_head = p->bl_len = 0;
    }
    afap = rate <= 0;
    pi.total_rate = afap ? 0 : rooms ? rate * L.npubs : rate;
    ivl_us = afap ? 0 : 1e6 / pi.total_rate;
    k_next = 0;
    k_max = afap ? 0 : (uint64_t)(pi.total_rate * L.duration + 0.5);

    run_hook(L.before_cmd);
    double g0 = cpu_self(), s0 = server_cpu(), b0, q0, b1, q1;
    machine_cpu(&b0, &q0);
    L.ph.t_start = lg_now();
    L.publishing = true;
    if (afap)
        for (uint32_t j = 0; j < L.npubs; j++)
            lg_pub_window_open(&L.pubs_v[j]);
    uint64_t end = L.ph.t_start + (uint64_t)(L.duration * 1e6);
    for (;;) {
        uint64_t now = lg_now();
        if (now >= end || interrupted)
            break;
        publish_due(now);
        uint64_t wake = next_due();
        if (wake > end)
            wake = end;
        now = lg_now();
        uint64_t t = wake > now ? wake - now : 0;
        lg_net_poll(t < 100000 ? t : 100000);
    }
    L.publishing = false;
    L.ph.t_end = lg_now();
    for (uint32_t j = 0; j < L.npubs; j++) {
        L.ph.skipped += L.pubs_v[j].bl_len;
        L.pubs_v[j].bl_len = 0;
    }
    /* Messages the server accepted but did not deliver within the drain time are
     * counted as lost, not as slow. */
    uint64_t dend = L.ph.t_end + (uint64_t)(L.drain * 1e6);
    for (uint64_t now = lg_now(); now < dend && !interrupted && !drained(); now = lg_now())
        lg_net_poll(dend - now < 10000 ? dend - now : 10000);
    pi.gen_cpu = cpu_self() - g0;
    double s1 = server_cpu();
    machine_cpu(&b1, &q1);
    pi.busy = (b0 >= 0 && b1 >= 0) ? b1 - b0 : -1;
    pi.softirq = (q0 >= 0 && q1 >= 0) ? q1 - q0 : -1;
    pi.server_cpu = (s0 >= 0 && s1 >= 0) ? s1 - s0 : -1;
    pi.wall = (double)(lg_now() - L.ph.t_start) / 1e6;
    run_hook(L.after_cmd);
    return pi;
}

/* ---- reporting -------------------------------------------------------------- */

static const char *sub_name(void)
{
    static const char *const n[] = {"none", "ws-json", "ws-url", "room", "sse"};
    return n[L.sub];
}

static const char *pub_name(void)
{
    static const char *const n[] = {"none", "http", "ws-json", "room"};
    return n[L.pub];
}

static double ms(double us) { return us / 1000.0; }

/* One " key=value" of the summary line, which print_common() starts. */
static void kvu(const char *k, uint64_t v) { printf(" %s=%llu", k, (unsigned long long)v); }
static void kvd(const char *k, double v, int prec) { printf(" %s=%.*f", k, prec, v); }

static void print_common(FILE *f)
{
    fprintf(f, "scenario=%s target=%s sub=%s pub=%s subs=%u pubs=%u channels=%u", L.scenario,
            L.label, sub_name(), pub_name(), L.subs, L.pubs, L.groups);
    if (strcmp(L.scenario, "rooms") == 0)
        fprintf(f, " members=%u", L.members);
    fprintf(f, " size=%u established=%u failed=%u connect_s=%.3f", L.size, L.established,
            L.failed, (double)(L.t_all_connected - L.t_first_connect) / 1e6);
}

static void report_phase(const phase_info_t *pi, int idx)
{
    lg_phase_t *ph = &L.ph;
    uint64_t unique = ph->received - ph->dup;
    uint64_t lost = ph->expected > unique ? ph->expected - unique : 0;
    double dur = (double)(ph->t_end - ph->t_start) / 1e6;
    uint64_t last = ph->t_last_recv > ph->t_end ? ph->t_last_recv : ph->t_end;
    double span = (double)(last - ph->t_start) / 1e6;
    double dps = span > 0 ? (double)unique / span : 0;
    double pps = dur > 0 ? (double)ph->accepted / dur : 0;
    double loss = ph->expected ? 100.0 * (double)lost / (double)ph->expected : 0;
    double q[5] = {lg_hist_quantile(&ph->lat, 0.5), lg_hist_quantile(&ph->lat, 0.9),
                   lg_hist_quantile(&ph->lat, 0.99), lg_hist_quantile(&ph->lat, 0.999),
                   (double)ph->lat.max};
    double r50 = lg_hist_quantile(&ph->rsp, 0.5), r99 = lg_hist_quantile(&ph->rsp, 0.99);
    long rss = server_rss_kb();
    double per_del = (pi->server_cpu >= 0 && unique) ? pi->server_cpu * 1e6 / (double)unique : -1;
    double per_pub =
        (pi->server_cpu >= 0 && ph->accepted) ? pi->server_cpu * 1e6 / (double)ph->accepted : -1;
    /* Softirq time is charged to whichever task the tick interrupts, so it is already
     * inside the server's and the generator's figures: it is shown, not subtracted. */
    double others = pi->busy - pi->gen_cpu - (pi->server_cpu > 0 ? pi->server_cpu : 0);
    if (others < 0)
        others = 0; /* /proc/stat is sampled by ticks, per-process times are not */

    printf("\n%s -> %s  phase %d: %s subscribers, %s publishers, rate %s\n", L.scenario, L.label,
           idx, sub_name(), pub_name(), pi->total_rate > 0 ? "paced" : "as fast as possible");
    printf("  connections  %u established, %u failed, %llu dropped during the phase\n",
           L.established, L.failed, (unsigned long long)ph->dropped);
    printf("  published    %llu sent, %llu accepted (%.0f/s requested, %.0f/s accepted), "
           "%llu skipped, %llu errors\n",
           (unsigned long long)ph->published, (unsigned long long)ph->accepted, pi->total_rate,
           pps, (unsigned long long)ph->skipped, (unsigned long long)ph->pub_errors);
    printf("  deliveries   %llu expected, %llu received, %llu lost (%.3f%%), %llu dup, "
           "%llu reordered, %llu misdelivered, %llu late, %llu bad\n",
           (unsigned long long)ph->expected, (unsigned long long)ph->received,
           (unsigned long long)lost, loss, (unsigned long long)ph->dup,
           (unsigned long long)ph->reordered, (unsigned long long)ph->misdelivered,
           (unsigned long long)ph->late, (unsigned long long)ph->bad);
    printf("  throughput   %.0f deliveries/s over %.2f s\n", dps, span);
    printf("  latency ms   p50 %.2f  p90 %.2f  p99 %.2f  p99.9 %.2f  max %.2f\n", ms(q[0]),
           ms(q[1]), ms(q[2]), ms(q[3]), ms(q[4]));
    if (ph->rsp.count)
        printf("  publish rsp  p50 %.2f ms  p99 %.2f ms\n", ms(r50), ms(r99));
    printf("  generator    %.2f CPU s (%.0f%% of one core), %.2f us/delivery, %llu reads%s, "
           "%.1f events per wakeup\n",
           pi->gen_cpu, 100.0 * pi->gen_cpu / pi->wall,
           unique ? pi->gen_cpu * 1e6 / (double)unique : 0, (unsigned long long)ph->reads,
           lg_net_uring_active() ? " (io_uring)" : "",
           ph->polls ? (double)ph->events / (double)ph->polls : 0);
    if (pi->server_cpu >= 0)
        printf("  server       %.2f CPU s, %.2f us/delivery, %.2f us/publish, RSS %ld KiB\n",
               pi->server_cpu, per_del, per_pub, rss);
    if (pi->busy >= 0)
        printf("  machine      %.2f of %.2f CPU s busy (softirq %.2f); other processes %.2f\n",
               pi->busy, pi->wall * (double)sysconf(_SC_NPROCESSORS_ONLN), pi->softirq,
               others);

    print_common(stdout);
    kvd("phase", idx, 0);
    kvd("rate", pi->total_rate, 1);
    kvd("duration_s", dur, 2);
    kvu("published", ph->published);
    kvu("accepted", ph->accepted);
    kvu("skipped", ph->skipped);
    kvu("pub_errors", ph->pub_errors);
    kvd("pub_per_s", pps, 1);
    kvu("expected", ph->expected);
    kvu("received", ph->received);
    kvu("unique", unique);
    kvu("lost", lost);
    kvd("loss_pct", loss, 4);
    kvu("dup", ph->dup);
    kvu("reordered", ph->reordered);
    kvu("misdelivered", ph->misdelivered);
    kvu("late", ph->late);
    kvu("bad", ph->bad);
    kvu("dropped", ph->dropped);
    kvd("delivered_per_s", dps, 1);
    kvd("p50_ms", ms(q[0]), 3);
    kvd("p90_ms", ms(q[1]), 3);
    kvd("p99_ms", ms(q[2]), 3);
    kvd("p999_ms", ms(q[3]), 3);
    kvd("max_ms", ms(q[4]), 3);
    kvd("rsp_p50_ms", ms(r50), 3);
    kvd("rsp_p99_ms", ms(r99), 3);
    kvd("gen_cpu_s", pi->gen_cpu, 3);
    kvd("gen_cpu_pct", 100.0 * pi->gen_cpu / pi->wall, 1);
    kvu("gen_reads", ph->reads);
    kvu("gen_wakeups", ph->polls);
    kvd("server_cpu_s", pi->server_cpu, 3);
    kvd("server_us_per_delivery", per_del, 3);
    kvd("server_us_per_publish", per_pub, 3);
    kvd("server_rss_kb", (double)rss, 0);
    kvd("softirq_s", pi->softirq, 2);
    kvd("others_cpu_s", others, 2);
    putchar('\n');
    fflush(stdout);
}

static void report_connect(const char *what, long rss0, double s0, double g0, double held)
{
    double secs = (double)(L.t_all_connected - L.t_first_connect) / 1e6;
    long rss = server_rss_kb();
    double s1 = server_cpu(), scpu = (s0 >= 0 && s1 >= 0) ? s1 - s0 : -1;
    double per = (rss0 >= 0 && rss >= 0 && L.established)
                     ? (double)(rss - rss0) * 1024.0 / (double)L.established
                     : -1;
    double gcpu = cpu_self() - g0;
    uint64_t dropped = L.closed_during_run;
    printf("\n%s -> %s: %u %s connections\n", what, L.label, L.subs, sub_name());
    printf("  connections  %u established, %u failed, %llu dropped, all up in %.3f s "
           "(%.0f/s)\n",
           L.established, L.failed, (unsigned long long)dropped, secs,
           secs > 0 ? L.established / secs : 0);
    printf("  connect ms   p50 %.2f  p99 %.2f  max %.2f\n",
           ms(lg_hist_quantile(&L.connect_hist, 0.5)),
           ms(lg_hist_quantile(&L.connect_hist, 0.99)), ms((double)L.connect_hist.max));
    if (rss >= 0)
        printf("  server       RSS %ld KiB (before %ld KiB): %.0f bytes per connection; "
               "%.2f CPU s\n",
               rss, rss0, per, scpu);
    printf("  generator    %.2f CPU s\n", gcpu);
    print_common(stdout);
    kvd("held_s", held, 1);
    kvu("dropped", dropped);
    kvd("conns_per_s", secs > 0 ? L.established / secs : 0, 1);
    kvd("connect_p50_ms", ms(lg_hist_quantile(&L.connect_hist, 0.5)), 3);
    kvd("connect_p99_ms", ms(lg_hist_quantile(&L.connect_hist, 0.99)), 3);
    kvd("connect_max_ms", ms((double)L.connect_hist.max), 3);
    kvd("rss_before_kb", (double)rss0, 0);
    kvd("server_rss_kb", (double)rss, 0);
    kvd("rss_per_conn_b", per, 0);
    kvd("server_cpu_s", scpu, 3);
    kvd("server_us_per_conn", (scpu >= 0 && L.established) ? scpu * 1e6 / L.established : -1, 1);
    kvd("gen_cpu_s", gcpu, 3);
    putchar('\n');
    fflush(stdout);
}

int main(int argc, char **argv)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    L.t0 = (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u - 1;
    parse_args(argc, argv);
    setup();
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    long rss0 = server_rss_kb();
    double s0 = server_cpu(), g0 = cpu_self();
    connect_all();
    int rc = L.established == 0 ? 1 : 0;

    if (strcmp(L.scenario, "storm") == 0) {
        report_connect("storm", rss0, s0, g0, 0);
    } else if (strcmp(L.scenario, "idle") == 0) {
        hold(L.duration);
        report_connect("idle", rss0, s0, g0, L.duration);
    } else if (L.established > 0) {
        hold(L.settle);
        for (int i = 0; i < L.nrates && !interrupted; i++) {
            phase_info_t pi = run_phase(L.rates[i]);
            report_phase(&pi, i);
            /* A rung fails when anything accepted was lost, or when the server could not
             * take the rate at all (publishes skipped or refused). */
            uint64_t unique = L.ph.received - L.ph.dup;
            bool bad = unique < L.ph.expected || L.ph.skipped > 0 || L.ph.pub_errors > 0 ||
                       (L.max_p99_ms > 0 && ms(lg_hist_quantile(&L.ph.lat, 0.99)) > L.max_p99_ms);
            if (L.stop_on_loss && bad)
                break;
        }
    }
    lg_net_close_all();
    teardown();
    return interrupted ? 130 : rc;
}
