/* Fuzzes the log record decoder, which reads bytes from disk that a crash, a
 * failing disk or a person may have mangled. The input is walked the way
 * recovery walks a segment: records back to back until the first torn or bad
 * one. Every record the decoder accepts must lie inside the input and must
 * re-encode to exactly the bytes it came from (so no byte of a frame escapes
 * the checks). A second pass patches a valid CRC into the first frame, because
 * random mutations almost never produce one, and the field checks behind the
 * CRC would otherwise go unexplored. */
#include "storage/storage.h"

#include <stdlib.h>
#include <zlib.h>

static void walk(const uint8_t *data, size_t size)
{
    size_t off = 0;
    while (off < size) {
        sb_store_rec_t r;
        const char *why = NULL;
        long n = sb_store_rec_decode(data + off, size - off, &r, &why);
        if (n == SB_AGAIN) break;
        if (n == SB_EPARSE) {
            if (!why) __builtin_trap(); /* every refusal names its reason */
            break;
        }
        if (n <= 0 || (size_t)n > size - off) __builtin_trap();
        const char *lo = (const char *)data + off, *hi = lo + n;
        const sb_str_t *f[] = {&r.channel, &r.event, &r.data, &r.idem_key};
        for (int i = 0; i < 4; i++)
            if (f[i]->len && (f[i]->p < lo || f[i]->p + f[i]->len > hi)) __builtin_trap();
        if (sb_store_rec_size(&r) != n) __builtin_trap();
        uint8_t *buf = malloc((size_t)n);
        if (!buf) return;
        if (sb_store_rec_encode(&r, buf, (size_t)n) != n || memcmp(buf, data + off, (size_t)n))
            __builtin_trap();
        free(buf);
        off += (size_t)n;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    walk(data, size);
    if (size < SB_STORE_REC_HDR) return 0;
    size_t body = (size_t)data[4] | (size_t)data[5] << 8 | (size_t)data[6] << 16 |
                  (size_t)data[7] << 24;
    if (body > size - SB_STORE_REC_HDR) return 0;
    uint8_t *p = malloc(size);
    if (!p) return 0;
    memcpy(p, data, size);
    uLong crc = crc32_z(crc32(0L, p, 8), p + SB_STORE_REC_HDR, body);
    for (int i = 0; i < 4; i++) p[8 + i] = (uint8_t)(crc >> (8 * i));
    walk(p, size);
    free(p);
    return 0;
}
