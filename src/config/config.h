/* Configuration: command-line flags and SWITCHBOARD_* environment variables,
 * parsed once at start into one immutable struct that every loop reads. */
#ifndef SB_CONFIG_H
#define SB_CONFIG_H

#include "core/core.h"

typedef enum { SB_SLOW_DISCONNECT, SB_SLOW_CONFLATE, SB_SLOW_DROP_OLDEST } sb_slow_policy_t;

typedef struct {
    char pattern[130]; /* channel pattern, '*' suffix wildcard */
    sb_slow_policy_t policy;
} sb_slow_rule_t;

typedef struct sb_config {
    char listen_host[64];
    int listen_port;
    int workers;
    /* history */
    int64_t history_size;    /* messages kept per channel */
    int64_t history_ttl_ms;  /* age bound; 0 = none */
    int64_t idem_window_ms;  /* Idempotency-Key dedupe window */
    int64_t max_channels;
    /* transports */
    int64_t heartbeat_ms;        /* SSE ": hb" interval */
    int64_t sse_retry_ms;        /* retry: hint at stream start */
    int64_t sse_max_lifetime_ms; /* 0 = streams live forever */
    int64_t max_body;            /* request body limit */
    int64_t max_output;          /* per-connection queued output limit (bytes) */
    int64_t header_timeout_ms;   /* a request head must arrive within this */
    int64_t idle_timeout_ms;     /* idle keep-alive connections are closed after this */
    int64_t max_connections;     /* 0 = derived from the open-file limit */
    int64_t max_wait_s;          /* long-poll cap */
    int64_t drain_ms;            /* graceful shutdown: time to spread stream closes over */
    int64_t max_message;         /* WebSocket message limit */
    int64_t ws_ping_ms;          /* server ping interval; idle peers are dropped after 2x */
    /* presence */
    int64_t presence_throttle_ms;
    int64_t presence_timeout_ms;
    int64_t presence_grace_ms;
    /* slow-reader policy rules, first match wins; default disconnect */
    sb_slow_rule_t slow_rules[16];
    int nslow_rules;
    /* storage */
    char data_dir[512]; /* "" or "none" = memory only */
    char cluster_redis[256];  /* HOST:PORT of the cluster's Redis; "" = one node alone */
    char cluster_prefix[64];  /* prefix of every key and channel the cluster uses in Redis */
    int64_t cluster_log_size; /* entries kept in the Redis stream nodes catch up from */
    char fsync[16];     /* always | batch | off */
    int64_t fsync_batch_us;
    int64_t retain_bytes;
    /* auth and limits */
    char jwt_secret[256];
    char api_key[256];
    char allowed_origins[1024]; /* comma-separated; "" = any */
    char cors_origins[1024];    /* comma-separated; "*" allowed; "" = none */
    int64_t max_conns_per_ip;
    int64_t conn_rate_per_ip;   /* new connections per second per client address (token bucket) */
    int64_t accept_rate;        /* connections accepted per second, server-wide (paced, not refused) */
    int64_t publish_rate;       /* publishes per second per connection (token bucket) */
    int64_t max_subscriptions;  /* per connection */
    char tls_cert[512];
    char tls_key[512];
    /* AI relay */
    char ai_upstream[512];
    char ai_key_env[128];
    char ai_model[128];
    char ai_dialect[32];
    char ai_on_disconnect[16];
    bool ai_demo;
    int64_t ai_max_streams;
    int64_t ai_max_streams_per_user;
    int64_t ai_connect_timeout_ms, ai_first_token_timeout_ms, ai_idle_timeout_ms; /* 0: built-in */
    /* cluster */
    char log_level[16];
    char io_uring[8]; /* auto | on | off */
} sb_config_t;

/* The process-wide configuration; read-only after sb_config_parse. */
extern sb_config_t sb_cfg;

/* Fills sb_cfg with defaults, then environment variables, then argv (flags win).
 * argv[0] is the program; an optional first word "serve" is skipped.
 * Returns 0 to run, 1 when --help/--version printed something and the process
 * should exit 0, or -1 after printing an error (exit 2). */
int sb_config_parse(int argc, char **argv);

/* Returns the slow-reader policy for a channel name. */
sb_slow_policy_t sb_config_slow_policy(sb_str_t channel);

/* Parses a --slow-policy value ("cursor:*=conflate,*=disconnect") into cfg.
 * Returns 0 or -1. Exposed for tests. */
int sb_config_parse_slow_policy(sb_config_t *cfg, const char *spec);

/* Parses a duration like "15s", "500ms", "2m", "1h" or a bare number of `unit_ms`.
 * Returns 0 or -1. */
int sb_config_parse_duration(const char *s, int64_t unit_ms, int64_t *out_ms);
/* Parses a size like "1MiB", "64k", "1048576". Returns 0 or -1. */
int sb_config_parse_size(const char *s, int64_t *out);

/* True when `pattern` (a name with an optional trailing '*') matches name. */
bool sb_config_pattern_match(const char *pattern, sb_str_t name);

#endif
