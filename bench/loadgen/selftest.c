/* sb_loadgen --self-test: the generator's own parsers and arithmetic, checked without a
 * server. A generator that miscounts would make every figure of the benchmark wrong, so
 * it proves these before anyone reads its numbers. */
#define _GNU_SOURCE
#include "lg.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define EXPECT(cond, ...)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            failures++;                                                                    \
            fprintf(stderr, "self-test: %s:%d: ", __FILE__, __LINE__);                     \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

/* Every quantile of a uniform 1..N sample must be within the bucket precision. */
static void test_hist(void)
{
    static lg_hist_t h;
    const uint64_t n = 200000;
    for (uint64_t v = 1; v <= n; v++)
        lg_hist_add(&h, v);
    const double qs[] = {0.5, 0.9, 0.99, 0.999};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        double got = lg_hist_quantile(&h, qs[i]), want = qs[i] * (double)n;
        EXPECT(fabs(got - want) / want < 0.02, "q%.3f = %.0f, want %.0f", qs[i], got, want);
    }
    EXPECT(lg_hist_quantile(&h, 1.0) == (double)n, "max quantile is the max");
    static lg_hist_t one;
    lg_hist_add(&one, 7);
    EXPECT(lg_hist_quantile(&one, 0.5) == 7, "small values are exact");
    static lg_hist_t big;
    lg_hist_add(&big, 1ull << 50); /* beyond the last bucket: clamped, never out of range */
    EXPECT(lg_hist_quantile(&big, 0.5) > 0, "huge values are kept");
}

/* A chunked body split at every byte must decode to the same bytes and stop exactly at
 * its end, leaving what follows (the next pipelined response) alone. */
static void test_dechunk(void)
{
    static const char body[] = "5\r\nhello\r\n3;ext=1\r\n wo\r\nA\r\nrld and mo\r\n"
                               "0\r\nTrailer: x\r\n\r\nNEXT";
    const size_t total = sizeof body - 1, end = total - 4;
    for (size_t cut = 0; cut <= total; cut++) {
        lg_chunk_t ch;
        char out[64];
        size_t o1 = 0, o2 = 0;
        memset(&ch, 0, sizeof ch);
        size_t used = lg_dechunk(&ch, body, cut, out, &o1);
        if (!ch.done)
            used += lg_dechunk(&ch, body + used, total - used, out + o1, &o2);
        EXPECT(ch.done, "cut %zu: end of body seen", cut);
        EXPECT(used == end, "cut %zu: consumed %zu, want %zu", cut, used, end);
        EXPECT(o1 + o2 == 18 && memcmp(out, "hello world and mo", 18) == 0,
               "cut %zu: decoded '%.*s'", cut, (int)(o1 + o2), out);
    }
    lg_chunk_t ch;
    size_t o;
    memset(&ch, 0, sizeof ch);
    lg_dechunk(&ch, "0\r\n\r\n", 5, NULL, &o);
    EXPECT(ch.done && o == 0, "empty chunked body");
}

/* Client frames: the length encodings of RFC 6455 5.2 and a mask that round-trips. */
static void test_frames(void)
{
    const size_t sizes[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    char *payload = malloc(70000), *frame = malloc(70000 + 14);
    if (!payload || !frame)
        exit(2);
    for (size_t i = 0; i < 70000; i++)
        payload[i] = (char)('a' + i % 26);
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s], len = lg_ws_frame(frame, 0x1, payload, n);
        const uint8_t *b = (const uint8_t *)frame;
        size_t h = 2;
        uint64_t got = b[1] & 0x7f;
        EXPECT(b[0] == 0x81, "size %zu: FIN + text", n);
        EXPECT(b[1] & 0x80, "size %zu: masked", n);
        if (got == 126) {
            got = (uint64_t)b[2] << 8 | b[3];
            h = 4;
        } else if (got == 127) {
            got = 0;
            for (int k = 0; k < 8; k++)
                got = got << 8 | b[2 + k];
            h = 10;
        }
        EXPECT(got == n, "size %zu: length field says %llu", n, (unsigned long long)got);
        EXPECT(n < 126 ? h == 2 : n < 65536 ? h == 4 : h == 10, "size %zu: minimal header", n);
        EXPECT(len == h + 4 + n, "size %zu: frame length %zu", n, len);
        const uint8_t *mask = b + h;
        bool same = true;
        for (size_t k = 0; k < n; k++)
            same &= (char)(b[h + 4 + k] ^ mask[k & 3]) == payload[k];
        EXPECT(same, "size %zu: payload unmasks to the original", n);
    }
    free(payload);
    free(frame);
}

int lg_selftest(void)
{
    test_hist();
    test_dechunk();
    test_frames();
    printf("sb_loadgen self-test: %s\n", failures ? "FAILED" : "ok");
    return failures ? 1 : 0;
}
