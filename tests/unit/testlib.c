#define _GNU_SOURCE
#include "testlib.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

int tl_checks, tl_failures;

typedef struct {
    void *base;
    size_t maplen;
} guard_hdr_t;

/* Each guarded allocation maps its own pages: [data pages][guard page]. The
 * mapping base and length are kept in a small side table (tests are tiny). */
static struct {
    char *p;
    void *base;
    size_t len;
} guards[256];

char *tl_guarded(const void *p, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t data_pages = (len + pg - 1) / pg;
    if (data_pages == 0) data_pages = 1;
    size_t maplen = (data_pages + 1) * pg;
    char *base = mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) abort();
    mprotect(base + data_pages * pg, pg, PROT_NONE);
    char *out = base + data_pages * pg - len;
    if (len) memcpy(out, p, len);
    for (int i = 0; i < 256; i++)
        if (!guards[i].p) {
            guards[i].p = out;
            guards[i].base = base;
            guards[i].len = maplen;
            return out;
        }
    abort();
}

void tl_guard_free(char *p)
{
    for (int i = 0; i < 256; i++)
        if (guards[i].p == p) {
            munmap(guards[i].base, guards[i].len);
            guards[i].p = NULL;
            return;
        }
}

int tl_done(const char *suite)
{
    printf("%s: %d checks, %d failed\n", suite, tl_checks, tl_failures);
    return tl_failures ? 1 : 0;
}
