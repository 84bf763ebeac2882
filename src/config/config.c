#define _GNU_SOURCE
#include "config/config.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>

sb_config_t sb_cfg;

typedef enum { T_STR, T_INT, T_DUR_MS, T_DUR_S, T_SIZE, T_BOOL, T_LISTEN, T_SLOW } opt_type_t;

typedef struct {
    const char *flag; /* without the leading dashes */
    opt_type_t type;
    size_t off;
    size_t cap; /* for T_STR */
    const char *help;
} opt_t;

#define S(field) offsetof(sb_config_t, field), sizeof(((sb_config_t *)0)->field)
#define I(field) offsetof(sb_config_t, field), 0

/* One row per option. The environment variable is SWITCHBOARD_ + the flag in
 * upper case with '-' as '_' (--history-size -> SWITCHBOARD_HISTORY_SIZE). */
static const opt_t opts[] = {
    {"listen", T_LISTEN, 0, 0, "HOST:PORT to listen on (default 127.0.0.1:8080)"},
    {"workers", T_INT, I(workers), "event-loop threads (default: number of cores)"},
    {"history-size", T_INT, I(history_size), "messages kept per channel (default 1000)"},
    {"history-ttl", T_DUR_S, I(history_ttl_ms), "max age of kept messages, e.g. 1h (default 1h; 0 = none)"},
    {"idempotency-window", T_DUR_S, I(idem_window_ms), "Idempotency-Key dedupe window (default 2m)"},
    {"max-channels", T_INT, I(max_channels), "max channels held (default 100000)"},
    {"heartbeat", T_DUR_S, I(heartbeat_ms), "SSE heartbeat comment interval (default 15s)"},
    {"sse-retry", T_DUR_MS, I(sse_retry_ms), "SSE retry: hint sent at stream start (default 1000ms)"},
    {"sse-max-lifetime", T_DUR_S, I(sse_max_lifetime_ms), "end SSE streams cleanly after this, the client resumes (default 0 = never)"},
    {"max-body", T_SIZE, I(max_body), "max request body (default 1MiB)"},
    {"max-output", T_SIZE, I(max_output), "per-connection queued output before the slow-reader policy applies (default 1MiB)"},
    {"header-timeout", T_DUR_S, I(header_timeout_ms), "time allowed to send a request head (default 10s)"},
    {"idle-timeout", T_DUR_S, I(idle_timeout_ms), "idle keep-alive connections are closed after this (default 60s)"},
    {"max-connections", T_INT, I(max_connections), "connection cap (default: open-file limit minus a reserve)"},
    {"max-wait", T_INT, I(max_wait_s), "long-poll wait cap in seconds (default 60)"},
    {"drain-time", T_DUR_S, I(drain_ms), "on SIGTERM, spread stream closes over this (default 5s)"},
    {"max-message", T_SIZE, I(max_message), "max WebSocket message (default 1MiB)"},
    {"ws-ping", T_DUR_S, I(ws_ping_ms), "WebSocket server ping interval (default 20s)"},
    {"presence-throttle", T_DUR_MS, I(presence_throttle_ms), "min interval between state broadcasts per member (default 60ms)"},
    {"presence-timeout", T_DUR_S, I(presence_timeout_ms), "a member with no heartbeat for this leaves (default 10s)"},
    {"presence-grace", T_DUR_S, I(presence_grace_ms), "user.leave after the last connection is gone this long (default 5s)"},
    {"slow-policy", T_SLOW, 0, 0, "slow-reader policy by channel pattern, e.g. 'cursor:*=conflate,*=disconnect'"},
    {"data-dir", T_STR, S(data_dir), "durable history directory, or 'none' for memory only (default none)"},
    {"fsync", T_STR, S(fsync), "always | batch | off (default batch)"},
    {"fsync-batch", T_DUR_MS, I(fsync_batch_us), "batch fsync window (default 5ms)"},
    {"retain-bytes", T_SIZE, I(retain_bytes), "durable log size cap (default 1GiB)"},
    {"cluster-redis", T_STR, S(cluster_redis), "HOST:PORT of a Redis: nodes sharing it serve one set of channels (default: none, one node)"},
    {"cluster-prefix", T_STR, S(cluster_prefix), "prefix of the cluster's keys in Redis, one per cluster (default switchboard)"},
    {"cluster-log-size", T_INT, I(cluster_log_size), "messages kept in Redis for nodes to catch up from (default 100000)"},
    {"jwt-secret", T_STR, S(jwt_secret), "HS256 secret for client tokens (enables auth)"},
    {"api-key", T_STR, S(api_key), "key for server-side publish (Authorization: Bearer KEY)"},
    {"allowed-origins", T_STR, S(allowed_origins), "comma-separated origins allowed for WebSocket and SSE"},
    {"cors-origins", T_STR, S(cors_origins), "comma-separated origins allowed by CORS for the HTTP API, or *"},
    {"max-conns-per-ip", T_INT, I(max_conns_per_ip), "connections per client IP (default 0 = no cap)"},
    {"conn-rate-per-ip", T_INT, I(conn_rate_per_ip), "new connections per second per client IP, a burst of one second; over it 429 at accept (default 0 = no cap)"},
    {"accept-rate", T_INT, I(accept_rate), "connections accepted per second by the whole server; the rest wait in the listen backlog, none is refused (default 0 = no cap)"},
    {"publish-rate", T_INT, I(publish_rate), "publishes per second per connection (default 0 = no cap)"},
    {"max-subscriptions", T_INT, I(max_subscriptions), "subscriptions per connection (default 1000)"},
    {"tls-cert", T_STR, S(tls_cert), "PEM certificate: serve HTTPS and wss://"},
    {"tls-key", T_STR, S(tls_key), "PEM private key for --tls-cert"},
    {"ai-upstream", T_STR, S(ai_upstream), "AI upstream URL (OpenAI-compatible or Anthropic)"},
    {"ai-key-env", T_STR, S(ai_key_env), "name of the environment variable holding the upstream API key"},
    {"ai-model", T_STR, S(ai_model), "default model"},
    {"ai-dialect", T_STR, S(ai_dialect), "openai | anthropic (default: from the URL)"},
    {"ai-on-disconnect", T_STR, S(ai_on_disconnect), "continue | cancel (default continue)"},
    {"ai-demo", T_BOOL, I(ai_demo), "serve the built-in demo token generator when no upstream is set"},
    {"ai-max-streams", T_INT, I(ai_max_streams), "concurrent AI streams in total (default 1000)"},
    {"ai-max-streams-per-user", T_INT, I(ai_max_streams_per_user), "concurrent AI streams per user (default 4)"},
    {"ai-connect-timeout", T_DUR_S, I(ai_connect_timeout_ms), "upstream TCP+TLS connect timeout (default 10s)"},
    {"ai-first-token-timeout", T_DUR_S, I(ai_first_token_timeout_ms), "upstream time to the first token (default 90s)"},
    {"ai-idle-timeout", T_DUR_S, I(ai_idle_timeout_ms), "longest upstream silence after the first token (default 60s)"},
    {"io-uring", T_STR, S(io_uring), "auto | on | off: batch each loop turn's socket writes through io_uring (default auto: when the kernel allows it)"},
    {"log-level", T_STR, S(log_level), "debug | info | warn | error (default info)"},
};
#undef S
#undef I

static void defaults(sb_config_t *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen_host, sizeof c->listen_host, "127.0.0.1");
    c->listen_port = 8080;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->workers = n > 0 ? (int)n : 1;
    c->history_size = 1000;
    c->history_ttl_ms = 3600 * 1000;
    c->idem_window_ms = 120 * 1000;
    c->max_channels = 100000;
    c->heartbeat_ms = 15000;
    c->sse_retry_ms = 1000;
    c->max_body = 1 << 20;
    c->max_output = 1 << 20;
    c->header_timeout_ms = 10000;
    c->idle_timeout_ms = 60000;
    c->max_wait_s = 60;
    c->drain_ms = 5000;
    c->max_message = 1 << 20;
    c->ws_ping_ms = 20000;
    c->presence_throttle_ms = 60;
    c->presence_timeout_ms = 10000;
    c->presence_grace_ms = 5000;
    snprintf(c->fsync, sizeof c->fsync, "batch");
    c->fsync_batch_us = 5000;
    c->retain_bytes = (int64_t)1 << 30;
    snprintf(c->cluster_prefix, sizeof c->cluster_prefix, "switchboard");
    c->cluster_log_size = 100000;
    c->max_subscriptions = 1000;
    snprintf(c->ai_on_disconnect, sizeof c->ai_on_disconnect, "continue");
    c->ai_max_streams = 1000;
    c->ai_max_streams_per_user = 4;
    snprintf(c->log_level, sizeof c->log_level, "info");
    snprintf(c->io_uring, sizeof c->io_uring, "auto");
}

int sb_config_parse_duration(const char *s, int64_t unit_ms, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    double mult = (double)unit_ms;
    if (!strcmp(end, "ms")) mult = 1;
    else if (!strcmp(end, "s")) mult = 1000;
    else if (!strcmp(end, "m")) mult = 60000;
    else if (!strcmp(end, "h")) mult = 3600000;
    else if (!strcmp(end, "d")) mult = 86400000;
    else if (*end) return -1;
    if (v * mult > 9e15) return -1;
    *out = (int64_t)(v * mult);
    return 0;
}

int sb_config_parse_size(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || v < 0) return -1;
    double mult = 1;
    if (!*end || !strcasecmp(end, "b")) mult = 1;
    else if (!strcasecmp(end, "k") || !strcasecmp(end, "kb") || !strcasecmp(end, "kib")) mult = 1024;
    else if (!strcasecmp(end, "m") || !strcasecmp(end, "mb") || !strcasecmp(end, "mib")) mult = 1048576;
    else if (!strcasecmp(end, "g") || !strcasecmp(end, "gb") || !strcasecmp(end, "gib")) mult = 1073741824.0;
    else return -1;
    if (v * mult > 9e15) return -1;
    *out = (int64_t)(v * mult);
    return 0;
}

bool sb_config_pattern_match(const char *pattern, sb_str_t name)
{
    size_t pl = strlen(pattern);
    if (pl && pattern[pl - 1] == '*')
        return name.len >= pl - 1 && memcmp(name.p, pattern, pl - 1) == 0;
    return name.len == pl && memcmp(name.p, pattern, pl) == 0;
}

int sb_config_parse_slow_policy(sb_config_t *cfg, const char *spec)
{
    cfg->nslow_rules = 0;
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        if (!eq || eq == p || cfg->nslow_rules >= 16) return -1;
        size_t plen = (size_t)(eq - p);
        if (plen >= sizeof cfg->slow_rules[0].pattern) return -1;
        sb_slow_rule_t *r = &cfg->slow_rules[cfg->nslow_rules];
        memcpy(r->pattern, p, plen);
        r->pattern[plen] = 0;
        sb_str_t pol = sb_str(eq + 1, len - plen - 1);
        if (sb_str_eq(pol, "disconnect")) r->policy = SB_SLOW_DISCONNECT;
        else if (sb_str_eq(pol, "conflate")) r->policy = SB_SLOW_CONFLATE;
        else if (sb_str_eq(pol, "drop-oldest")) r->policy = SB_SLOW_DROP_OLDEST;
        else return -1;
        cfg->nslow_rules++;
        p += len;
        if (*p == ',') p++;
    }
    return 0;
}

sb_slow_policy_t sb_config_slow_policy(sb_str_t channel)
{
    for (int i = 0; i < sb_cfg.nslow_rules; i++)
        if (sb_config_pattern_match(sb_cfg.slow_rules[i].pattern, channel))
            return sb_cfg.slow_rules[i].policy;
    return SB_SLOW_DISCONNECT;
}

static int set_opt(sb_config_t *c, const opt_t *o, const char *val, const char *src)
{
    char *base = (char *)c;
    int64_t v;
    switch (o->type) {
    case T_STR:
        if (strlen(val) >= o->cap) goto bad;
        memcpy(base + o->off, val, strlen(val) + 1);
        return 0;
    case T_INT: {
        char *end;
        errno = 0;
        long long x = strtoll(val, &end, 10);
        if (end == val || *end || errno || x < 0) goto bad;
        if (!strcmp(o->flag, "workers")) {
            if (x < 1 || x > 64) goto bad;
            c->workers = (int)x;
        } else {
            *(int64_t *)(base + o->off) = x;
        }
        return 0;
    }
    case T_DUR_MS:
        if (sb_config_parse_duration(val, 1, &v)) goto bad;
        if (!strcmp(o->flag, "fsync-batch")) v *= 1000; /* stored in microseconds */
        *(int64_t *)(base + o->off) = v;
        return 0;
    case T_DUR_S:
        if (sb_config_parse_duration(val, 1000, &v)) goto bad;
        *(int64_t *)(base + o->off) = v;
        return 0;
    case T_SIZE:
        if (sb_config_parse_size(val, &v)) goto bad;
        *(int64_t *)(base + o->off) = v;
        return 0;
    case T_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes") || !strcmp(val, "on"))
            *(bool *)(base + o->off) = true;
        else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no") || !strcmp(val, "off"))
            *(bool *)(base + o->off) = false;
        else goto bad;
        return 0;
    case T_LISTEN: {
        const char *colon = strrchr(val, ':');
        if (!colon || colon == val) goto bad;
        size_t hl = (size_t)(colon - val);
        if (hl >= sizeof c->listen_host) goto bad;
        char *end;
        long port = strtol(colon + 1, &end, 10);
        if (*end || port < 0 || port > 65535 || end == colon + 1) goto bad;
        memcpy(c->listen_host, val, hl);
        c->listen_host[hl] = 0;
        /* [::1]:8080 */
        if (c->listen_host[0] == '[' && hl > 2 && c->listen_host[hl - 1] == ']') {
            memmove(c->listen_host, c->listen_host + 1, hl - 2);
            c->listen_host[hl - 2] = 0;
        }
        c->listen_port = (int)port;
        return 0;
    }
    case T_SLOW:
        if (sb_config_parse_slow_policy(c, val)) goto bad;
        return 0;
    }
bad:
    fprintf(stderr, "switchboard: invalid value for %s%s: '%s'\n", src, o->flag, val);
    return -1;
}

static void usage(FILE *f)
{
    fprintf(f, "Usage: switchboard [serve] [options]\n\n"
               "One binary for real-time web apps: Server-Sent Events, WebSocket rooms,\n"
               "presence, history with resume, AI token streaming.\n\nOptions (each also "
               "read from SWITCHBOARD_<NAME>, e.g. SWITCHBOARD_LISTEN):\n");
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++)
        fprintf(f, "  --%-26s %s\n", opts[i].flag, opts[i].help);
    fprintf(f, "  --%-26s %s\n  --%-26s %s\n", "help", "this text", "version", "print the version");
}

int sb_config_parse(int argc, char **argv)
{
    defaults(&sb_cfg);
    char envname[96];
    for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) {
        snprintf(envname, sizeof envname, "SWITCHBOARD_");
        size_t k = strlen(envname);
        for (const char *p = opts[i].flag; *p && k < sizeof envname - 1; p++)
            envname[k++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
        envname[k] = 0;
        const char *v = getenv(envname);
        if (v && set_opt(&sb_cfg, &opts[i], v, "$SWITCHBOARD_ for --")) return -1;
    }
    int i = 1;
    if (i < argc && !strcmp(argv[i], "serve")) i++;
    for (; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 1;
        }
        if (!strcmp(a, "--version")) {
            printf("switchboard %s\n", SB_VERSION);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            fprintf(stderr, "switchboard: unexpected argument '%s' (see --help)\n", a);
            return -1;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        const opt_t *o = NULL;
        for (size_t j = 0; j < sizeof opts / sizeof opts[0]; j++)
            if (strlen(opts[j].flag) == nl && !strncmp(opts[j].flag, a, nl)) o = &opts[j];
        if (!o) {
            fprintf(stderr, "switchboard: unknown option '--%.*s' (see --help)\n", (int)nl, a);
            return -1;
        }
        const char *val;
        if (eq) val = eq + 1;
        else if (o->type == T_BOOL) val = "true";
        else if (i + 1 < argc) val = argv[++i];
        else {
            fprintf(stderr, "switchboard: --%s needs a value\n", o->flag);
            return -1;
        }
        if (set_opt(&sb_cfg, o, val, "--")) return -1;
    }
    if (!strcmp(sb_cfg.log_level, "debug")) sb_log_level = SB_LOG_DEBUG;
    else if (!strcmp(sb_cfg.log_level, "info")) sb_log_level = SB_LOG_INFO;
    else if (!strcmp(sb_cfg.log_level, "warn")) sb_log_level = SB_LOG_WARN;
    else if (!strcmp(sb_cfg.log_level, "error")) sb_log_level = SB_LOG_ERROR;
    else {
        fprintf(stderr, "switchboard: --log-level must be debug, info, warn or error\n");
        return -1;
    }
    if (strcmp(sb_cfg.fsync, "always") && strcmp(sb_cfg.fsync, "batch") && strcmp(sb_cfg.fsync, "off")) {
        fprintf(stderr, "switchboard: --fsync must be always, batch or off\n");
        return -1;
    }
    if (strcmp(sb_cfg.io_uring, "auto") && strcmp(sb_cfg.io_uring, "on") && strcmp(sb_cfg.io_uring, "off")) {
        fprintf(stderr, "switchboard: --io-uring must be auto, on or off\n");
        return -1;
    }
    if (sb_cfg.history_size < 0 || sb_cfg.history_size > 10000000) {
        fprintf(stderr, "switchboard: --history-size must be 0..10000000\n");
        return -1;
    }
    if (sb_cfg.max_wait_s > 3600) sb_cfg.max_wait_s = 3600;
    return 0;
}
