/* Fuzzes the resume cursor decoder (since= and Last-Event-ID): anything it
 * accepts must encode back to the same bytes. */
#include <stdlib.h>

#include "channels/channels.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_since_t s;
    if (sb_cursor_decode(sb_str((const char *)data, size), &s)) {
        char out[24];
        size_t n = sb_cursor_encode(s.seq, out);
        if (n != size || memcmp(out, data, n) != 0) abort();
    }
    return 0;
}
