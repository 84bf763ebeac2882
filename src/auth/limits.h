/* Limits: connections per client address, per-connection publish token
 * buckets, and the counters behind the limit metrics.
 *
 * Unlike the rest of the auth layer this file knows connections and loops
 * (net.h): a per-address count has to follow every connection from accept to
 * close, whichever protocol ends up owning it. The HTTP layer calls in at
 * accept and close; everything else (WebSocket and SSE connections, which
 * replace the HTTP ops) is reconciled by a per-loop sweep every SB_TICK_MS.
 *
 * Data layout: a global table of addresses (64 shards, each a chained hash
 * under its own mutex) holds how many connections each address has across
 * all loops; each loop has a private registry (open addressing by connection
 * id, no lock) of the connections it counted, with their publish buckets. */
#ifndef SB_LIMITS_H
#define SB_LIMITS_H

#include "net/net.h"

/* What a refusal is counted as in the metrics. */
typedef enum {
    SB_LIMIT_CONNS_PER_IP = 0, /* --max-conns-per-ip: 429 too_many_connections */
    SB_LIMIT_PUBLISH_RATE,     /* --publish-rate: 429 rate_limited */
    SB_LIMIT_SUBSCRIPTIONS,    /* --max-subscriptions: 429 too_many_subscriptions */
    SB_LIMIT_HEADER_TIMEOUT,   /* --header-timeout: 408 request_timeout */
    SB_LIMIT_BODY_SIZE,        /* --max-body: 413 body_too_large */
    SB_LIMIT_HEADER_SIZE,      /* 16 KiB header block: 431 headers_too_large */
    SB_LIMIT_URI_LENGTH,       /* request target: 414 uri_too_long */
    SB_LIMIT_CONN_RATE,        /* --conn-rate-per-ip: 429 connection_rate_limited */
    SB_LIMIT__COUNT
} sb_limit_t;

/* Publish and connection-rate buckets are sb_bucket_t (core.h). */

/* Registers the limit metrics and the per-loop cleanup. Call once from the
 * main thread before the loops start (sb_http_api_init does). */
void sb_limits_init(void);

/* A connection was accepted (HTTP layer, on c's loop, c->peer already set).
 * Counts it against its address and gives it a publish bucket. Returns SB_OK,
 * or the refusal the caller answers (and must then not call
 * sb_limits_conn_closed for it):
 * - SB_ERR_TOO_MANY_CONNS: the address already has --max-conns-per-ip;
 * - SB_ERR_CONN_RATE: the address opened --conn-rate-per-ip connections in
 *   the last second (a token bucket, a burst of one second's worth); *retry_s
 *   gets the seconds until it may connect again (at least 1).
 * Refusals are counted and logged at most once a second here. Never refuses
 * for its own failures (out of memory). */
sb_err_t sb_limits_conn_open(sb_conn_t *c, int64_t *retry_s);

/* The connection is closing (on its loop): releases its address count now.
 * Safe to call for connections that were never counted and more than once.
 * Connections whose close the HTTP layer does not see are released by the
 * loop's sweep within SB_TICK_MS. */
void sb_limits_conn_closed(sb_conn_t *c);

/* Takes one publish token from c's bucket (--publish-rate per connection).
 * Returns false when the connection is over its rate; the caller answers
 * 429 rate_limited (sb_http_error counts it). True when no rate is configured. */
bool sb_limits_publish_ok(sb_conn_t *c);
/* The same, and *wait_ms gets the milliseconds until the bucket holds a
 * token again (0: now, or no limit): how long a transport stops reading a
 * connection that is over its rate. One lookup for both. */
bool sb_limits_publish_take(sb_conn_t *c, int64_t *wait_ms);
/* Only the wait, taking nothing (after a refusal already taken). */
int64_t sb_limits_publish_wait_ms(sb_conn_t *c);

/* Counts one refusal at a limit (for the metrics). Any thread. */
void sb_limits_count(sb_limit_t which);
/* Counts the refusal that an error response stands for, if it is one of the
 * limits above (408, 413, 414, 429, 431); other errors are ignored. Any thread. */
void sb_limits_count_error(sb_err_t err);

/* Refusals counted so far for one limit (0 for an unknown one). Any thread. */
uint64_t sb_limits_refusals(sb_limit_t which);

/* Current connections counted for an address (a numeric IP as in c->peer);
 * 0 when unknown. For tests and diagnostics; any thread. */
int64_t sb_limits_ip_count(const char *ip);
/* Whether the table holds the address at all: with a connection, or kept for
 * its --conn-rate-per-ip bucket. For tests; any thread. */
bool sb_limits_ip_tracked(const char *ip);

#endif
