/* A JSON scanner for the publish path: validates a body and finds the raw text
 * of a few top-level members, without building a tree. A publish needs only
 * "event" and "data", and the data goes on as JSON text, so a tree (cJSON
 * parses into one node per value, then prints the data back) was a third of a
 * publish's instructions. Strict RFC 8259: one value, optional whitespace
 * around it, nothing after it; no leading zeros or "+", no lone surrogates.
 * Bytes above 0x7f inside strings are passed through: the caller checks UTF-8
 * (sb_utf8_valid) over the whole body. */
#ifndef SB_JSON_H
#define SB_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "core/core.h"

/* Deeper nesting is refused (cJSON's own limit is 1000). */
#define SB_JSON_MAX_DEPTH 512

/* Scans p[0..len) as one JSON value. When it is an object, vals[i] is set to
 * the raw text (as in the input) of the value of its first top-level member
 * named keys[i] (names compare after unescaping), or {NULL, 0} when there is
 * none. *is_object says whether the value is an object. Returns false when
 * the text is not valid JSON. */
bool sb_json_scan(const char *p, size_t len, const char *const *keys, sb_str_t *vals, size_t nkeys,
                  bool *is_object);

/* Copies valid JSON text to out (at least len bytes) without the whitespace
 * between tokens; returns the length written. */
size_t sb_json_minify(const char *p, size_t len, char *out);

/* Decodes a valid JSON string literal (quotes included) into out as UTF-8.
 * Returns its length, or -1 when it does not fit in cap bytes or holds a NUL
 * (\u0000), which no C string can carry. */
long sb_json_unescape(const char *lit, size_t len, char *out, size_t cap);

#endif
