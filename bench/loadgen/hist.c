/* Log-linear latency histogram (HdrHistogram-like): values below 128 us have one bucket
 * each; above, every power of two is split into 64 equal buckets, so any recorded value
 * is known to within 1/64 (about 1.6%). Adding is a few instructions and no allocation,
 * which matters when the generator records a million deliveries per second. */
#include "lg.h"

#define LINEAR 128u /* values below this are exact */
#define SUB_BITS 6u /* 64 buckets per octave */

static unsigned bucket_of(uint64_t v)
{
    if (v < LINEAR)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* v in [2^e, 2^(e+1)), e >= 7 */
    unsigned m = (unsigned)(v >> (e - SUB_BITS));    /* top 7 bits: [64, 128) */
    unsigned idx = LINEAR + (e - 7u) * 64u + (m - 64u);
    return idx < LG_HIST_BUCKETS ? idx : LG_HIST_BUCKETS - 1;
}

static double bucket_mid(unsigned idx)
{
    if (idx < LINEAR)
        return idx;
    unsigned e = (idx - LINEAR) / 64u + 7u;
    uint64_t m = (idx - LINEAR) % 64u + 64u;
    uint64_t width = 1ull << (e - SUB_BITS);
    return (double)(m * width) + (double)width / 2.0;
}

void lg_hist_add(lg_hist_t *h, uint64_t us)
{
    h->n[bucket_of(us)]++;
    h->count++;
    if (us > h->max)
        h->max = us;
}

double lg_hist_quantile(const lg_hist_t *h, double q)
{
    if (h->count == 0)
        return 0;
    if (q >= 1.0)
        return (double)h->max;
    /* The rank is rounded up so that p99.9 of 1,000 samples is the largest, not the
     * second largest: a percentile must never look better than the data. */
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t acc = 0;
    for (unsigned i = 0; i < LG_HIST_BUCKETS; i++) {
        acc += h->n[i];
        if (acc >= rank) {
            double mid = bucket_mid(i);
            return mid > (double)h->max ? (double)h->max : mid;
        }
    }
    return (double)h->max;
}
