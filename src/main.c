/* switchboard: wires the layers together, runs the loops, and drains on
 * SIGTERM/SIGINT. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "channels/channels.h"
#include "config/config.h"
#include "http/http.h"
#include "metrics/metrics.h"
#include "net/net.h"
#include "server.h"
#include "sse/sse.h"

static bool is_loopback(const char *host)
{
    return !strncmp(host, "127.", 4) || !strcmp(host, "::1") || !strcmp(host, "localhost");
}

static int64_t fd_budget(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return 1000;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; /* take what we are allowed */
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Keep descriptors for listeners, loops' internal handles, storage, logs
     * and upstream calls: at the cap we refuse with 503 instead of hitting EMFILE. */
    int64_t reserve = 64 + 16 * (int64_t)sb_cfg.workers;
    int64_t n = (int64_t)rl.rlim_cur - reserve;
    return n > 16 ? n : 16;
}

int main(int argc, char **argv)
{
    int r = sb_config_parse(argc, argv);
    if (r != 0) return r > 0 ? 0 : 2;

    if (!sb_cfg.jwt_secret[0] && !sb_cfg.api_key[0] && !is_loopback(sb_cfg.listen_host)) {
        sb_warn("development mode (no --jwt-secret or --api-key): listening on loopback only",
                "requested=%s", sb_cfg.listen_host);
        snprintf(sb_cfg.listen_host, sizeof sb_cfg.listen_host, "127.0.0.1");
    }

    /* Signals are taken by this thread with sigtimedwait; block them before
     * the loop threads start so they inherit the mask. SIGPIPE never kills us. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* A file-size limit (RLIMIT_FSIZE) makes a storage write fail with EFBIG,
     * which publishes report as 507, instead of killing the process. */
    signal(SIGXFSZ, SIG_IGN);

    /* Never above the descriptor budget: at a real EMFILE with several loops,
     * libuv's reserve-descriptor trick can be lost to another loop and the
     * accept callback then spins. At the cap we answer 503 instead. */
    int64_t budget = fd_budget();
    sb_net.max_conns = budget;
    if (sb_cfg.max_connections > 0 && sb_cfg.max_connections <= budget) sb_net.max_conns = sb_cfg.max_connections;
    else if (sb_cfg.max_connections > budget)
        sb_warn("--max-connections is above the open-file limit; lowered to fit it", "requested=%lld max_connections=%lld",
                (long long)sb_cfg.max_connections, (long long)budget);
    if (sb_cfg.tls_cert[0] || sb_cfg.tls_key[0]) {
        if (!sb_cfg.tls_cert[0] || !sb_cfg.tls_key[0]) {
            fprintf(stderr, "switchboard: --tls-cert and --tls-key go together\n");
            return 2;
        }
        if (sb_net_tls_init(sb_cfg.tls_cert, sb_cfg.tls_key) < 0) return 1;
    }
    if (sb_server_init() < 0) return 1;
    if (sb_net_init(sb_cfg.workers, sb_cfg.listen_host, sb_cfg.listen_port, sb_http_accept) < 0)
        return 1;
    if (sb_server_start() < 0) return 1;
    if (sb_net_start() < 0) return 1;
    sb_info("listening", "addr=%s:%d tls=%s workers=%d max_connections=%lld history=%s auth=%s version=%s",
            sb_cfg.listen_host, sb_net_port(), sb_cfg.tls_cert[0] ? "on" : "off", sb_cfg.workers,
            (long long)sb_net.max_conns,
            sb_server_history_mode(), sb_cfg.jwt_secret[0] ? "jwt" : (sb_cfg.api_key[0] ? "api-key" : "development"),
            SB_VERSION);
    if (!sb_cfg.jwt_secret[0] && !sb_cfg.api_key[0])
        sb_info("development mode: no --jwt-secret or --api-key, everything is allowed", "console=http://%s:%d/",
                sb_cfg.listen_host, sb_net_port());

    /* Housekeeping on this thread: metrics windows and channel GC. */
    int sig = 0;
    int64_t last_gc = sb_now_ms();
    for (;;) {
        struct timespec ts = {1, 0};
        sig = sigtimedwait(&set, NULL, &ts);
        if (sig > 0) break;
        sb_metrics_sample();
        if (sb_now_ms() - last_gc >= 5000) {
            sb_broker_gc();
            last_gc = sb_now_ms();
        }
    }

    /* Drain: stop accepting, then end streams in paced batches (each with a
     * jittered retry hint) so clients do not all come back in one second. */
    int64_t open = sb_net_open();
    sb_info("draining", "signal=%s connections=%lld drain_ms=%lld", sig == SIGINT ? "SIGINT" : "SIGTERM",
            (long long)open, (long long)sb_cfg.drain_ms);
    sb_net_stop_accepting();
    int steps = (int)(sb_cfg.drain_ms / 100);
    if (steps < 1) steps = 1;
    int per_step = (int)((open / (sb_cfg.workers ? sb_cfg.workers : 1) + steps - 1) / steps);
    if (per_step < 1) per_step = 1;
    int64_t deadline = sb_now_ms() + sb_cfg.drain_ms + 2000;
    while (sb_net_open() > 0 && sb_now_ms() < deadline) {
        sb_net_shutdown_step(per_step);
        struct timespec ts = {0, 100 * 1000 * 1000};
        if (sigtimedwait(&set, NULL, &ts) > 0) break; /* a second signal: stop now */
    }
    sb_net_stop();
    sb_net_join();
    sb_server_stop();
    sb_net_free();
    sb_broker_free();
    sb_info("stopped", "%s", "");
    return 0;
}
