/* HTTP/1.1 request parsing: the request head, chunked bodies, query strings.
 * Pure functions over caller-owned bytes; no allocation, no I/O; any thread.
 * Private to the http layer (and its tests and fuzzer). */
#ifndef SB_HTTP_PARSER_H
#define SB_HTTP_PARSER_H

#include "core/core.h"

#define SB_HTTP_MAX_HEADERS 64
#define SB_HTTP_MAX_HEAD 16384  /* request line + headers + CRLFCRLF; past it: 431 */
#define SB_HTTP_MAX_TARGET 8192 /* request-target longer than this: 414 */

typedef enum {
    SB_HTTP_GET,
    SB_HTTP_HEAD,
    SB_HTTP_POST,
    SB_HTTP_PUT,
    SB_HTTP_DELETE,
    SB_HTTP_OPTIONS,
    SB_HTTP_PATCH,
    SB_HTTP_OTHER, /* a syntactically valid token we do not serve: 405 or 501 later */
} sb_http_method_t;

typedef struct {
    sb_str_t name, value; /* value has surrounding whitespace trimmed */
} sb_http_header_t;

typedef struct {
    sb_http_method_t method;
    sb_str_t method_str;
    sb_str_t target; /* raw request-target as sent */
    sb_str_t path;   /* target up to '?', not percent-decoded; origin-form only */
    sb_str_t query;  /* after '?', without it; empty when absent */
    int minor;       /* HTTP/1.<minor>: 0 or 1 */
    sb_http_header_t headers[SB_HTTP_MAX_HEADERS];
    int nheaders;
    /* Derived from the headers by the parser: */
    int64_t content_length; /* -1 when absent */
    bool chunked;           /* Transfer-Encoding: chunked (the final coding) */
    bool keep_alive;        /* HTTP/1.1 unless "Connection: close"; 1.0 only with keep-alive */
    bool upgrade;           /* Connection has the "upgrade" token and Upgrade is present */
    bool expect_continue;   /* Expect: 100-continue */
} sb_http_req_t;

/* Parses one request head from buf[0..len). Borrows buf: every slice in *req
 * points into it. Leading empty lines (CRLF) before the request line are skipped
 * (RFC 9112 2.2).
 * Returns the bytes the head used (through the CRLFCRLF, including skipped leading
 * CRLFs), SB_AGAIN when the head is incomplete and still within SB_HTTP_MAX_HEAD, or
 * SB_EPARSE with *why set to one of:
 *   SB_ERR_BAD_REQUEST_LINE  malformed request line (bad method token, bad target,
 *                            missing/extra spaces, control chars)
 *   SB_ERR_BAD_VERSION       a version other than HTTP/1.0 or HTTP/1.1
 *   SB_ERR_URI_TOO_LONG      target longer than SB_HTTP_MAX_TARGET
 *   SB_ERR_HEADERS_TOO_LARGE head longer than SB_HTTP_MAX_HEAD, or more than
 *                            SB_HTTP_MAX_HEADERS headers
 *   SB_ERR_BAD_HEADER        malformed header line (no colon, space before colon,
 *                            invalid token char in name, CTL/NUL in value,
 *                            obsolete line folding)
 *   SB_ERR_BAD_CONTENT_LENGTH non-numeric, overflowing, or conflicting repeated
 *                            Content-Length; or both Content-Length and
 *                            Transfer-Encoding present (request smuggling)
 *   SB_ERR_NOT_IMPLEMENTED   a Transfer-Encoding whose final coding is not chunked
 * Bare LF line endings are accepted as CRLF is (RFC 9112 2.2 allows it). */
int sb_http_parse_head(const char *buf, size_t len, sb_http_req_t *req, sb_err_t *why);

/* Returns the value of the first header named `name` (case-insensitive), or an
 * empty slice with p == NULL when absent. */
sb_str_t sb_http_header(const sb_http_req_t *req, const char *name);

/* True when the comma-separated header value list contains token (case-insensitive),
 * e.g. sb_http_has_token(connection_value, "upgrade"). */
bool sb_http_has_token(sb_str_t list, const char *token);

/* Incremental chunked-body decoder. Zero-initialize before the first call. */
typedef struct {
    int state;
    uint64_t remaining; /* bytes left in the current chunk */
    uint64_t total;     /* decoded bytes so far */
    uint32_t line_len;  /* bytes of the current size/trailer line, for limits */
    bool done;
} sb_http_chunked_t;

/* Decodes chunked data from in[0..len), appending decoded bytes at out + *out_len
 * (out may equal in: decoding in place is safe because output never overtakes
 * input). Returns the input bytes consumed (which may be less than len only when
 * the body ended: bytes after the last CRLF belong to the next request), SB_EPARSE
 * on malformed framing (bad hex, missing CRLF after data, oversized chunk-size or
 * trailer line > 4 KiB, chunk extensions are allowed and skipped), or SB_ELIMIT
 * when the decoded total would exceed max_body. st->done becomes true once the
 * last-chunk and trailer section have been consumed. */
int sb_http_chunked_decode(sb_http_chunked_t *st, const char *in, size_t len, char *out,
                           size_t *out_len, uint64_t max_body);

/* Iterates a query string: on each call splits the next `key[=value]` pair off
 * *q (separated by '&'), returns false when none is left. Slices are raw
 * (percent-encoded); decode them with sb_http_pct_decode. */
bool sb_http_query_next(sb_str_t *q, sb_str_t *key, sb_str_t *val);

/* Percent-decodes in (and '+' as space when form is true) into out[0..cap).
 * Returns the decoded length, or -1 on a bad escape or when cap is too small. */
int sb_http_pct_decode(sb_str_t in, char *out, size_t cap, bool form);

/* Finds the first query parameter named key and percent-decodes its value into
 * out[0..cap) as a NUL-terminated string. Returns the length, -1 when absent,
 * -2 when malformed or too long. */
int sb_http_query_get(sb_str_t query, const char *key, char *out, size_t cap);

#endif
