/* libFuzzer target for the HTTP/1.1 request parser (src/http/parser.c).
 *
 * The input is a byte stream as a client would send it. The head parser runs
 * on all of it and on prefixes of it; when a head parses, the bytes after it go
 * to the chunked decoder, whole and one byte per call, and the query helpers
 * run on the parsed query. Every buffer is allocated at its exact length so
 * AddressSanitizer catches a read one byte past it. Any broken invariant aborts. */
#include "http/http_parser.h"

#include <stdio.h>
#include <stdlib.h>

#define REQUIRE(cond)                                                                   \
    do {                                                                                \
        if (!(cond)) {                                                                  \
            fprintf(stderr, "fuzz_http: invariant failed at line %d: %s\n", __LINE__, \
                    #cond);                                                             \
            abort();                                                                    \
        }                                                                               \
    } while (0)

static char *dup_exact(const void *p, size_t n)
{
    char *c = malloc(n ? n : 1);
    if (!c) abort();
    if (n) memcpy(c, p, n);
    return c;
}

static bool inside(sb_str_t s, const char *base, size_t n)
{
    return s.p && s.p >= base && s.len <= n && s.p + s.len <= base + n;
}

static bool is_ows(char c) { return c == ' ' || c == '\t'; }

static bool is_parse_error(sb_err_t why)
{
    switch (why) {
    case SB_ERR_BAD_REQUEST_LINE:
    case SB_ERR_BAD_VERSION:
    case SB_ERR_URI_TOO_LONG:
    case SB_ERR_HEADERS_TOO_LARGE:
    case SB_ERR_BAD_HEADER:
    case SB_ERR_BAD_CONTENT_LENGTH:
    case SB_ERR_NOT_IMPLEMENTED:
        return true;
    default:
        return false;
    }
}

/* Everything a successful parse promises about *req. */
static void check_request(const sb_http_req_t *req, const char *buf, size_t n)
{
    REQUIRE(req->minor == 0 || req->minor == 1);
    REQUIRE(req->nheaders >= 0 && req->nheaders <= SB_HTTP_MAX_HEADERS);
    REQUIRE(inside(req->method_str, buf, n) && req->method_str.len > 0);
    REQUIRE(inside(req->target, buf, n) && req->target.len > 0);
    REQUIRE(req->target.len <= SB_HTTP_MAX_TARGET);
    REQUIRE(inside(req->path, req->target.p, req->target.len + 1));
    REQUIRE(inside(req->query, req->target.p, req->target.len + 1));
    REQUIRE(req->query.p + req->query.len == req->target.p + req->target.len);
    for (size_t i = 0; i < req->target.len; i++) {
        unsigned char c = (unsigned char)req->target.p[i];
        REQUIRE(c > 0x20 && c < 0x7f && c != '#');
    }
    REQUIRE((req->method == SB_HTTP_GET) == sb_str_eq(req->method_str, "GET"));
    REQUIRE((req->method == SB_HTTP_POST) == sb_str_eq(req->method_str, "POST"));
    REQUIRE((req->method == SB_HTTP_OPTIONS) == sb_str_eq(req->method_str, "OPTIONS"));
    REQUIRE(req->content_length >= -1);
    REQUIRE(!(req->chunked && req->content_length >= 0));
    REQUIRE(!req->chunked || req->minor == 1);
    REQUIRE(!req->upgrade || req->minor == 1);
    REQUIRE(!req->expect_continue || req->minor == 1);
    for (int i = 0; i < req->nheaders; i++) {
        sb_str_t name = req->headers[i].name, value = req->headers[i].value;
        REQUIRE(inside(name, buf, n) && name.len > 0);
        REQUIRE(inside(value, buf, n));
        REQUIRE(memchr(name.p, ':', name.len) == NULL);
        for (size_t j = 0; j < value.len; j++)
            REQUIRE(value.p[j] != '\r' && value.p[j] != '\n' && value.p[j] != '\0');
        if (value.len) REQUIRE(!is_ows(value.p[0]) && !is_ows(value.p[value.len - 1]));
        /* The lookup finds a header with this name (maybe an earlier one). */
        char lname[64];
        if (name.len < sizeof lname && !memchr(name.p, '\0', name.len)) {
            memcpy(lname, name.p, name.len);
            lname[name.len] = '\0';
            sb_str_t v = sb_http_header(req, lname);
            REQUIRE(v.p != NULL && inside(v, buf, n));
        }
        sb_http_has_token(value, "upgrade");
        sb_http_has_token(value, "chunked");
    }
    sb_str_t absent = sb_http_header(req, "x-not-a-header-anyone-sends");
    REQUIRE(absent.p == NULL || inside(absent, buf, n));
}

/* Parses an exact-length copy of data[0..len). */
static int parse_copy(const uint8_t *data, size_t len, sb_err_t *why)
{
    char *b = dup_exact(data, len);
    sb_http_req_t req;
    *why = SB_OK;
    int r = sb_http_parse_head(b, len, &req, why);
    if (r > 0) check_request(&req, b, len);
    free(b);
    return r;
}

/* Decodes body[0..n) as chunked, all at once in place and then one byte per
 * call into a separate buffer; both must agree. */
static void check_chunked(const char *body, size_t n, uint64_t max_body)
{
    char *whole = dup_exact(body, n);
    sb_http_chunked_t st = {0};
    size_t out_len = 0;
    int r = sb_http_chunked_decode(&st, whole, n, whole, &out_len, max_body);
    REQUIRE(r == SB_EPARSE || r == SB_ELIMIT || (r >= 0 && (size_t)r <= n));
    if (r >= 0) {
        REQUIRE(out_len <= (size_t)r);
        REQUIRE(st.total == out_len);
        REQUIRE(st.total <= max_body);
        REQUIRE((size_t)r == n || st.done);
    }

    char *out = malloc(n ? n : 1);
    if (!out) abort();
    sb_http_chunked_t bs = {0};
    size_t bl = 0, used = 0;
    int br = 0;
    for (size_t i = 0; i < n && !bs.done; i++) {
        char *one = dup_exact(body + i, 1);
        br = sb_http_chunked_decode(&bs, one, 1, out, &bl, max_body);
        free(one);
        if (br < 0) break;
        REQUIRE(br <= 1);
        used += (size_t)br;
        REQUIRE(bl <= used);
    }
    if (r < 0) {
        REQUIRE(br == r);
    } else {
        REQUIRE(br >= 0 && used == (size_t)r);
        REQUIRE(bs.done == st.done && bl == out_len && bs.total == st.total);
        REQUIRE(out_len == 0 || memcmp(out, whole, out_len) == 0);
        /* A finished decoder consumes nothing more. */
        if (st.done) {
            size_t more = out_len;
            REQUIRE(sb_http_chunked_decode(&st, whole, n, whole, &more, max_body) == 0);
            REQUIRE(more == out_len);
        }
    }
    free(out);
    free(whole);
}

static void check_query(sb_str_t query)
{
    /* Work on an exact-length copy so over-reads of the slice are caught. */
    char *q = dup_exact(query.p, query.len);
    sb_str_t it = sb_str(q, query.len), k, v;
    char *out = malloc(query.len + 1);
    if (!out) abort();
    size_t pairs = 0;
    char first_key[64] = "";
    while (sb_http_query_next(&it, &k, &v)) {
        REQUIRE(++pairs <= query.len);
        REQUIRE(inside(k, q, query.len) && inside(v, q, query.len));
        REQUIRE(memchr(k.p, '&', k.len) == NULL && memchr(v.p, '&', v.len) == NULL);
        REQUIRE(memchr(k.p, '=', k.len) == NULL);
        for (int form = 0; form < 2; form++) {
            int d = sb_http_pct_decode(v, out, v.len, form);
            REQUIRE(d >= -1 && d <= (int)v.len);
            int h = sb_http_pct_decode(v, out, v.len / 2, form);
            REQUIRE(h == (d > (int)(v.len / 2) ? -1 : d));
        }
        int d = sb_http_pct_decode(k, out, sizeof first_key - 1, true);
        if (pairs == 1 && d > 0 && !memchr(out, '\0', (size_t)d)) {
            memcpy(first_key, out, (size_t)d);
            first_key[d] = '\0';
        }
    }
    const char *keys[] = {"channel", "since", "token", "event", first_key};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char val[256];
        int r = sb_http_query_get(sb_str(q, query.len), keys[i], val, sizeof val);
        REQUIRE(r >= -2 && r < (int)sizeof val);
        if (r >= 0) REQUIRE(val[r] == '\0' && strlen(val) == (size_t)r);
        if (i == 4 && first_key[0]) REQUIRE(r != -1); /* the first key is there */
    }
    free(out);
    free(q);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = dup_exact(data, size);
    sb_http_req_t req;
    sb_err_t why = SB_OK;
    int n = sb_http_parse_head(buf, size, &req, &why);

    if (n == SB_AGAIN) {
        REQUIRE(size < SB_HTTP_MAX_HEAD);
    } else if (n == SB_EPARSE) {
        REQUIRE(is_parse_error(why));
    } else {
        REQUIRE(n > 0 && (size_t)n <= size && n <= SB_HTTP_MAX_HEAD);
        REQUIRE(buf[n - 1] == '\n');
        check_request(&req, buf, (size_t)n);
    }

    /* A prefix of the stream either waits or answers exactly as the whole
     * does: a head never depends on bytes after it, and an error is never
     * reported for bytes that a longer read would have made valid. */
    size_t cuts[3] = {size / 2, size ? (size * 7 + data[0]) % size : 0, n > 0 ? (size_t)n - 1 : 0};
    for (int c = 0; c < 3; c++) {
        sb_err_t w;
        int r = parse_copy(data, cuts[c], &w);
        REQUIRE(r == SB_AGAIN || r == n);
        if (r == SB_EPARSE) REQUIRE(w == why);
        if (c == 2 && n > 0) REQUIRE(r == SB_AGAIN);
    }
    if (n > 0) {
        sb_err_t w;
        REQUIRE(parse_copy(data, (size_t)n, &w) == n);

        /* Whatever follows the head goes through the chunked decoder, chunked
         * or not, with a small body limit on odd sizes to reach SB_ELIMIT. */
        check_chunked(buf + n, size - (size_t)n, (size & 1) ? 16 : (1u << 20));
        check_query(req.query);
    }
    free(buf);
    return 0;
}
