/* Metrics: counters summed over loops, windowed rates and latency
 * percentiles, in the seed dashboard's JSON shape and Prometheus text. */
#ifndef SB_METRICS_H
#define SB_METRICS_H

#include "core/core.h"

/* Appends the /api/metrics JSON: {"activeUsers","requestsPerSecond","errorRate",
 * "p99Latency", ...}. Any thread. */
void sb_metrics_json(sb_buf_t *b);
/* Appends Prometheus text exposition format. Any thread. */
void sb_metrics_prometheus(sb_buf_t *b);
/* Samples the counters for the windowed rates; call once a second (one thread). */
void sb_metrics_sample(void);

/* Extra gauges and counters from other layers (presence, storage, ai, cluster):
 * each registers a function that appends `"name":value` JSON members (with a
 * leading comma) and Prometheus lines. */
typedef void (*sb_metrics_fn)(sb_buf_t *b, bool prometheus);
void sb_metrics_register(sb_metrics_fn fn);
/* Distinct online users, when the presence layer knows them (else -1). */
extern int64_t (*sb_metrics_active_users)(void);

#endif
