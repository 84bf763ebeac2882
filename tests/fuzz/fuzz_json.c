/* Fuzzes the publish path's JSON scanner (src/core/json.c) against cJSON,
 * which it replaced there:
 * - what the scanner accepts, cJSON (strict: nothing after the value) accepts
 *   too, except numbers longer than cJSON's 63-character buffer;
 * - the "data" member it finds, minified, is the same JSON as cJSON's "data"
 *   (both printed by cJSON), and minifying it again changes nothing;
 * - the "event" member unescapes to cJSON's string, or is refused (a NUL, too long).
 * Inputs that are not UTF-8 are only scanned (the publish path refuses them).
 * The input is read from a copy that ends at an unreadable page, so a read
 * past the end crashes. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/json.h"

static bool long_number(const uint8_t *d, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        bool num = (d[i] >= '0' && d[i] <= '9') || d[i] == '.' || d[i] == 'e' || d[i] == 'E' ||
                   d[i] == '+' || d[i] == '-';
        run = num ? run + 1 : 0;
        if (run >= 60) return true;
    }
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536) return 0;
    /* The copy ends at a guard page. */
    long pg = sysconf(_SC_PAGESIZE);
    size_t span = ((size + (size_t)pg - 1) / (size_t)pg + 1) * (size_t)pg;
    uint8_t *map = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) abort();
    mprotect(map + span - (size_t)pg, (size_t)pg, PROT_NONE);
    char *p = (char *)map + (span - (size_t)pg) - size;
    memcpy(p, data, size);

    static const char *const keys[] = {"event", "data"};
    sb_str_t v[2];
    bool obj = false;
    bool ok = sb_json_scan(p, size, keys, v, 2, &obj);
    /* Compared with cJSON on what the publish path lets through: it checks
     * UTF-8 over the whole body, and the scanner passes high bytes on. */
    if (ok && sb_utf8_valid(data, size)) {
        for (int i = 0; i < 2; i++)
            if (v[i].p && (v[i].p < p || v[i].p + v[i].len > p + size || !v[i].len)) abort();
        const char *end = NULL;
        cJSON *root = cJSON_ParseWithLengthOpts(p, size, &end, false);
        bool strict = root && (size_t)(end - p) <= size;
        if (strict)
            for (const char *q = end; q < p + size; q++)
                if (*q != ' ' && *q != '\t' && *q != '\n' && *q != '\r') strict = false;
        if (!strict && !long_number(data, size)) abort();
        if (strict && obj != cJSON_IsObject(root)) abort();
        if (strict && obj) {
            cJSON *d = cJSON_GetObjectItemCaseSensitive(root, "data");
            if (!!d != !!v[1].p) abort();
            if (d) {
                char *m = malloc(v[1].len + 1), *m2 = malloc(v[1].len + 1);
                size_t mn = sb_json_minify(v[1].p, v[1].len, m);
                size_t mn2 = sb_json_minify(m, mn, m2);
                if (mn2 != mn || memcmp(m, m2, mn) != 0) abort();
                /* Compared as printed trees: cJSON_Compare looks members up
                 * by name, which fails on duplicate names. */
                cJSON *again = cJSON_ParseWithLength(m, mn);
                if (!again) abort();
                char *pa = cJSON_PrintUnformatted(again), *pd = cJSON_PrintUnformatted(d);
                if (!pa || !pd || strcmp(pa, pd) != 0) abort();
                free(pa);
                free(pd);
                cJSON_Delete(again);
                free(m);
                free(m2);
            }
            cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "event");
            if (!!e != !!v[0].p) abort();
            if (e && cJSON_IsString(e) != (v[0].p[0] == '"')) abort();
            if (e && cJSON_IsString(e)) {
                char buf[256];
                long n = sb_json_unescape(v[0].p, v[0].len, buf, sizeof buf);
                size_t cl = strlen(e->valuestring);
                /* cJSON stops a string at an escaped NUL; the scanner refuses it. */
                if (n >= 0 && ((size_t)n != cl || memcmp(buf, e->valuestring, cl) != 0)) abort();
            }
        }
        cJSON_Delete(root);
    }
    munmap(map, span);
    return 0;
}
