/* HTTP/1.1 request parsing: the request head (RFC 9112 sections 2, 3 and 6 with
 * the field rules of RFC 9110), chunked bodies (RFC 9112 7.1) and query strings.
 * The contracts are in http_parser.h. Everything here is a pure function of its
 * arguments: no allocation, no mutable globals, callable from any thread. */
#include "http/http_parser.h"

#include <assert.h>
#include <limits.h>

/* ---- byte classes ----------------------------------------------------------- */

enum {
    C_TCHAR = 1,  /* tchar (RFC 9110 5.6.2): method and field-name bytes */
    C_TARGET = 2, /* request-target byte: VCHAR except '#' (fragments are never sent) */
    C_VALUE = 4,  /* field-value byte other than HTAB: SP, VCHAR and obs-text */
    C_HEX = 8,    /* hexadecimal digit */
};

/* One lookup per byte instead of a chain of comparisons. The one-letter names
 * keep the rows readable and exist only for the table. */
#define T C_TCHAR
#define G C_TARGET
#define V C_VALUE
#define X C_HEX
static const uint8_t cls[256] = {
    0, 0, 0, 0, 0, 0, 0, 0, /* 0x00 */
    0, 0, 0, 0, 0, 0, 0, 0, /* 0x08 */
    0, 0, 0, 0, 0, 0, 0, 0, /* 0x10 */
    0, 0, 0, 0, 0, 0, 0, 0, /* 0x18 */
    V, T|G|V, G|V, T|V, T|G|V, T|G|V, T|G|V, T|G|V, /* 0x20 */
    G|V, G|V, T|G|V, T|G|V, G|V, T|G|V, T|G|V, G|V, /* 0x28 */
    T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, /* 0x30 */
    T|G|V|X, T|G|V|X, G|V, G|V, G|V, G|V, G|V, G|V, /* 0x38 */
    G|V, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V, /* 0x40 */
    T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, /* 0x48 */
    T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, /* 0x50 */
    T|G|V, T|G|V, T|G|V, G|V, G|V, G|V, T|G|V, T|G|V, /* 0x58 */
    T|G|V, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V|X, T|G|V, /* 0x60 */
    T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, /* 0x68 */
    T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, T|G|V, /* 0x70 */
    T|G|V, T|G|V, T|G|V, G|V, T|G|V, G|V, T|G|V, 0, /* 0x78 */
    /* 0x80-0xFF: obs-text, allowed in field values only. */
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
    V, V, V, V, V, V, V, V, V, V, V, V, V, V, V, V,
};
#undef T
#undef G
#undef V
#undef X

static inline int hexval(uint8_t c)
{
    if (!(cls[c] & C_HEX)) return -1;
    return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
}

static inline uint8_t lower(uint8_t c) { return c >= 'A' && c <= 'Z' ? (uint8_t)(c + 32) : c; }

/* ASCII case-insensitive comparison of a[0..n) with lit[0..n). */
static bool ieq(const char *a, const char *lit, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower((uint8_t)a[i]) != lower((uint8_t)lit[i])) return false;
    return true;
}

static inline bool is_ows(uint8_t c) { return c == ' ' || c == '\t'; }

/* ---- eight bytes at a time -------------------------------------------------- */

/* Header values and targets are the bulk of a request head (cookies, tokens,
 * user agents, long query strings), so they are checked a word at a time and
 * only the word holding a special byte is looked at byte by byte. */
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static inline uint64_t load8(const uint8_t *p)
{
    uint64_t w;
    memcpy(&w, p, sizeof w);
    return w;
}

/* Nonzero when some byte of w is below n (n <= 128). Only the yes/no answer is
 * exact, which is all the scanners need. */
static inline uint64_t has_below(uint64_t w, uint8_t n) { return (w - ONES * n) & ~w & HIGHS; }

/* Nonzero when some byte of w equals b. */
static inline uint64_t has_byte(uint64_t w, uint8_t b)
{
    uint64_t x = w ^ (ONES * b);
    return (x - ONES) & ~x & HIGHS;
}

/* Returns the index of the first byte in p[i..end) that may not appear in a
 * field value as is (a control byte, including HTAB, CR and LF, or DEL), or end. */
static size_t scan_value(const uint8_t *p, size_t i, size_t end)
{
    while (end - i >= 8) {
        uint64_t w = load8(p + i);
        if (has_below(w, 0x20) | has_byte(w, 0x7f)) break;
        i += 8;
    }
    while (i < end && (cls[p[i]] & C_VALUE)) i++;
    return i;
}

/* Returns the index of the first byte in p[i..end) that may not appear in a
 * request-target, or end. */
static size_t scan_target(const uint8_t *p, size_t i, size_t end)
{
    while (end - i >= 8) {
        uint64_t w = load8(p + i);
        if (has_below(w, 0x21) | (w & HIGHS) | has_byte(w, 0x7f) | has_byte(w, '#')) break;
        i += 8;
    }
    while (i < end && (cls[p[i]] & C_TARGET)) i++;
    return i;
}

/* ---- comma-separated lists (RFC 9110 5.6.1) ----------------------------------- */

/* Splits the next non-empty element, trimmed of OWS, off the front of *l.
 * Returns false when only empty elements were left. Quoted strings are not
 * special: none of the lists this parser reads may contain them. */
static bool next_elem(sb_str_t *l, sb_str_t *e)
{
    while (l->len) {
        const char *s = l->p, *comma = memchr(s, ',', l->len);
        size_t n = comma ? (size_t)(comma - s) : l->len;
        l->p += comma ? n + 1 : n;
        l->len -= comma ? n + 1 : n;
        while (n && is_ows((uint8_t)*s)) s++, n--;
        while (n && is_ows((uint8_t)s[n - 1])) n--;
        if (n) {
            *e = sb_str(s, n);
            return true;
        }
    }
    return false;
}

bool sb_http_has_token(sb_str_t list, const char *token)
{
    size_t n = strlen(token);
    sb_str_t e;
    while (next_elem(&list, &e))
        if (e.len == n && ieq(e.p, token, n)) return true;
    return false;
}

sb_str_t sb_http_header(const sb_http_req_t *req, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < req->nheaders; i++) {
        const sb_http_header_t *h = &req->headers[i];
        if (h->name.len == n && ieq(h->name.p, name, n)) return h->value;
    }
    return (sb_str_t){NULL, 0};
}

/* ---- the request line ----------------------------------------------------------- */

static int fail(sb_err_t *why, sb_err_t err)
{
    *why = err;
    return SB_EPARSE;
}

static sb_http_method_t method_of(sb_str_t m)
{
    /* Methods are case-sensitive (RFC 9110 9.1): "get" is some other method. */
    switch (m.len) {
    case 3:
        if (sb_str_eq(m, "GET")) return SB_HTTP_GET;
        if (sb_str_eq(m, "PUT")) return SB_HTTP_PUT;
        break;
    case 4:
        if (sb_str_eq(m, "POST")) return SB_HTTP_POST;
        if (sb_str_eq(m, "HEAD")) return SB_HTTP_HEAD;
        break;
    case 5:
        if (sb_str_eq(m, "PATCH")) return SB_HTTP_PATCH;
        break;
    case 6:
        if (sb_str_eq(m, "DELETE")) return SB_HTTP_DELETE;
        break;
    case 7:
        if (sb_str_eq(m, "OPTIONS")) return SB_HTTP_OPTIONS;
        break;
    }
    return SB_HTTP_OTHER;
}

/* Splits req->target into path and query, accepting the three forms a server
 * can be sent (RFC 9112 3.2): origin-form "/p?q", asterisk-form "*" (OPTIONS
 * only) and absolute-form "http://host/p?q". Authority-form is for CONNECT,
 * which this server does not proxy. Returns false for anything else. */
static bool split_target(sb_http_req_t *req)
{
    const char *s = req->target.p;
    size_t n = req->target.len, ps = 0;

    if (s[0] == '*') {
        if (n != 1 || req->method != SB_HTTP_OPTIONS) return false;
        req->path = req->target;
        req->query = sb_str(s + 1, 0);
        return true;
    }
    if (s[0] != '/') {
        if (n > 7 && ieq(s, "http://", 7)) ps = 7;
        else if (n > 8 && ieq(s, "https://", 8)) ps = 8;
        else return false;
        size_t a = ps;
        /* The authority runs to the path or the query. Userinfo is refused
         * (RFC 9110 4.2.4): it has no meaning here and only hides the host. */
        while (ps < n && s[ps] != '/' && s[ps] != '?') {
            if (s[ps] == '@') return false;
            ps++;
        }
        if (ps == a) return false;
    }
    /* An absolute-form target without a path ("http://h" or "http://h?q") leaves
     * the path empty rather than pointing it at a "/" outside the buffer: every
     * slice stays inside buf, so a caller may move the buffer and rebase them. */
    const char *q = memchr(s + ps, '?', n - ps);
    size_t pe = q ? (size_t)(q - s) : n;
    req->path = sb_str(s + ps, pe - ps);
    req->query = q ? sb_str(q + 1, n - pe - 1) : sb_str(s + n, 0);
    return true;
}

/* Parses the request line that starts at p[i], reading no further than p[end].
 * Returns the index just past its LF, SB_AGAIN when the line is still arriving
 * and nothing in it is wrong so far, or SB_EPARSE with *why set. Every error is
 * decided by bytes before the point where it would otherwise wait, so a prefix
 * of a request never fails differently from the whole request. */
static int parse_request_line(const uint8_t *p, size_t i, size_t end, sb_http_req_t *req,
                              sb_err_t *why)
{
    size_t m = i;
    while (m < end && (cls[p[m]] & C_TCHAR)) m++;
    if (m == end) return SB_AGAIN;
    if (m == i || p[m] != ' ') return fail(why, SB_ERR_BAD_REQUEST_LINE);
    req->method_str = sb_str((const char *)p + i, m - i);
    req->method = method_of(req->method_str);

    /* Scan at most one byte past the target limit: that byte is the proof that
     * the target is too long, whether or not the rest has arrived. */
    size_t t0 = m + 1;
    size_t tend = end - t0 > SB_HTTP_MAX_TARGET ? t0 + SB_HTTP_MAX_TARGET + 1 : end;
    size_t t = scan_target(p, t0, tend);
    if (t - t0 > SB_HTTP_MAX_TARGET) return fail(why, SB_ERR_URI_TOO_LONG);
    if (t == end) return SB_AGAIN;
    if (t == t0 || p[t] != ' ') return fail(why, SB_ERR_BAD_REQUEST_LINE);
    req->target = sb_str((const char *)p + t0, t - t0);
    if (!split_target(req)) return fail(why, SB_ERR_BAD_REQUEST_LINE);

    /* HTTP-version = "HTTP/" DIGIT "." DIGIT, case-sensitive, then CRLF or LF.
     * Anything longer than "HTTP/1.1\r" without a LF can already be refused. */
    size_t v = t + 1;
    const uint8_t *lf = memchr(p + v, '\n', end - v);
    if (!lf) return end - v > 9 ? fail(why, SB_ERR_BAD_REQUEST_LINE) : SB_AGAIN;
    size_t e = (size_t)(lf - p), vlen = e - v;
    if (vlen && p[e - 1] == '\r') vlen--;
    const uint8_t *s = p + v;
    if (vlen != 8 || memcmp(s, "HTTP/", 5) != 0 || s[5] < '0' || s[5] > '9' || s[6] != '.' ||
        s[7] < '0' || s[7] > '9')
        return fail(why, SB_ERR_BAD_REQUEST_LINE);
    if (s[5] != '1' || s[7] > '1') return fail(why, SB_ERR_BAD_VERSION);
    req->minor = s[7] - '0';
    return (int)(e + 1);
}

/* ---- header fields -------------------------------------------------------------- */

/* What the framing and connection headers said, gathered while the field lines
 * are read and turned into the request's derived fields at the end. */
typedef struct {
    bool te;         /* a Transfer-Encoding field was present */
    bool te_other;   /* ... naming a coding other than chunked */
    int te_chunked;  /* how many times chunked was listed */
    bool close, keep_alive, conn_upgrade;
    bool upgrade;    /* a non-empty Upgrade field */
    bool expect;     /* Expect: 100-continue */
    int hosts;
} framing_t;

/* Parses a Content-Length value: 1*DIGIT, or the same number repeated as a
 * list ("42, 42"), which RFC 9110 8.6 lets a recipient take as one value. */
static bool parse_content_length(sb_str_t v, int64_t *out)
{
    int64_t val = -1;
    size_t i = 0;
    for (;;) {
        while (i < v.len && is_ows((uint8_t)v.p[i])) i++;
        size_t s = i;
        int64_t x = 0;
        while (i < v.len && v.p[i] >= '0' && v.p[i] <= '9') {
            int d = v.p[i++] - '0';
            if (x > (INT64_MAX - d) / 10) return false;
            x = x * 10 + d;
        }
        if (i == s || (val >= 0 && x != val)) return false;
        val = x;
        while (i < v.len && is_ows((uint8_t)v.p[i])) i++;
        if (i == v.len) break;
        if (v.p[i++] != ',') return false;
    }
    *out = val;
    return true;
}

/* Notes what one field line means for framing and the connection. */
static int note_field(sb_str_t name, sb_str_t value, sb_http_req_t *req, framing_t *f,
                      sb_err_t *why)
{
    sb_str_t e;
    switch (name.len) {
    case 4:
        /* More than one Host is refused (RFC 9112 3.2): two hosts let a cache
         * and this server disagree about which site a request is for. */
        if (ieq(name.p, "host", 4) && ++f->hosts > 1) return fail(why, SB_ERR_BAD_HEADER);
        break;
    case 6:
        if (ieq(name.p, "expect", 6) && value.len == 12 && ieq(value.p, "100-continue", 12))
            f->expect = true;
        break;
    case 7:
        if (ieq(name.p, "upgrade", 7) && value.len) f->upgrade = true;
        break;
    case 10:
        if (!ieq(name.p, "connection", 10)) break;
        while (next_elem(&value, &e)) {
            if (e.len == 5 && ieq(e.p, "close", 5)) f->close = true;
            else if (e.len == 10 && ieq(e.p, "keep-alive", 10)) f->keep_alive = true;
            else if (e.len == 7 && ieq(e.p, "upgrade", 7)) f->conn_upgrade = true;
        }
        break;
    case 14: {
        if (!ieq(name.p, "content-length", 14)) break;
        int64_t n;
        if (!parse_content_length(value, &n) ||
            (req->content_length >= 0 && req->content_length != n))
            return fail(why, SB_ERR_BAD_CONTENT_LENGTH);
        req->content_length = n;
        break;
    }
    case 17:
        if (!ieq(name.p, "transfer-encoding", 17)) break;
        /* Several field lines form one list; parameters ("chunked;x=1") make
         * the coding one we do not know. */
        f->te = true;
        while (next_elem(&value, &e)) {
            if (e.len == 7 && ieq(e.p, "chunked", 7)) f->te_chunked++;
            else f->te_other = true;
        }
        break;
    }
    return 0;
}

/* Turns what the fields said into the request's derived fields. Framing is
 * judged strictly because a front proxy that frames a request differently
 * from us is how requests get smuggled (RFC 9112 6.3, 11.2). */
static int finish_framing(sb_http_req_t *req, const framing_t *f, sb_err_t *why)
{
    bool v11 = req->minor == 1;
    if (f->te) {
        if (req->content_length >= 0) return fail(why, SB_ERR_BAD_CONTENT_LENGTH);
        /* HTTP/1.0 has no Transfer-Encoding: RFC 9112 6.1 says to treat such a
         * message's framing as faulty, so it is refused outright. */
        if (!v11) return fail(why, SB_ERR_BAD_HEADER);
        /* Only chunked is decoded. A coding before it ("gzip, chunked") would
         * leave the body encoded, so it is as unsupported as a final one. */
        if (f->te_other) return fail(why, SB_ERR_NOT_IMPLEMENTED);
        /* An empty list has no final coding; chunked twice is forbidden. */
        if (f->te_chunked != 1) return fail(why, SB_ERR_BAD_HEADER);
        req->chunked = true;
    }
    req->keep_alive = v11 ? !f->close : f->keep_alive && !f->close;
    /* HTTP/1.0 Upgrade and Expect are ignored (RFC 9110 7.8, 10.1.1). */
    req->upgrade = v11 && f->conn_upgrade && f->upgrade;
    req->expect_continue = v11 && f->expect;
    return 0;
}

/* Parses the field lines from p[i] to the blank line that ends at p[end]
 * (the caller found it, so every line here ends with a LF before end).
 * Returns end or SB_EPARSE. */
static int parse_fields(const uint8_t *p, size_t i, size_t end, sb_http_req_t *req, sb_err_t *why)
{
    framing_t f = {0};
    for (;;) {
        uint8_t c = p[i];
        /* A line that starts with CR and is not CRLF is not blank: it fails
         * below as a field name. p[i + 1] exists because p[end - 1] is a LF. */
        if (c == '\n' || (c == '\r' && p[i + 1] == '\n')) break;
        /* Obsolete line folding, or whitespace between the request line and the
         * first field: RFC 9112 2.2 and 5.2 allow rejecting both. */
        if (is_ows(c)) return fail(why, SB_ERR_BAD_HEADER);

        size_t n0 = i;
        while (i < end && (cls[p[i]] & C_TCHAR)) i++;
        /* This also refuses a space before the colon (RFC 9112 5.1). */
        if (i == n0 || p[i] != ':') return fail(why, SB_ERR_BAD_HEADER);
        size_t n1 = i++;
        while (is_ows(p[i])) i++;
        size_t v0 = i, v1;
        for (;;) {
            i = scan_value(p, i, end);
            c = p[i];
            if (c == '\t') {
                i++;
            } else if (c == '\n') {
                v1 = i++;
                break;
            } else if (c == '\r' && p[i + 1] == '\n') {
                v1 = i;
                i += 2;
                break;
            } else {
                /* NUL, other controls, DEL, or a CR not followed by LF. */
                return fail(why, SB_ERR_BAD_HEADER);
            }
        }
        while (v1 > v0 && is_ows(p[v1 - 1])) v1--;

        if (req->nheaders == SB_HTTP_MAX_HEADERS) return fail(why, SB_ERR_HEADERS_TOO_LARGE);
        sb_http_header_t *h = &req->headers[req->nheaders++];
        h->name = sb_str((const char *)p + n0, n1 - n0);
        h->value = sb_str((const char *)p + v0, v1 - v0);
        if (note_field(h->name, h->value, req, &f, why) < 0) return SB_EPARSE;
    }
    if (finish_framing(req, &f, why) < 0) return SB_EPARSE;
    return (int)end;
}

/* Returns the index just past the first blank line (LF LF or LF CR LF) in
 * p[i..lim), or 0 when there is none yet. */
static size_t find_head_end(const uint8_t *p, size_t i, size_t lim)
{
    for (;;) {
        const uint8_t *lf = memchr(p + i, '\n', lim - i);
        if (!lf) return 0;
        i = (size_t)(lf - p) + 1;
        if (i < lim && p[i] == '\n') return i + 1;
        if (i + 1 < lim && p[i] == '\r' && p[i + 1] == '\n') return i + 2;
    }
}

/* What to answer when the head has not ended within the bytes we have: wait,
 * unless we already hold SB_HTTP_MAX_HEAD bytes, which proves it is too long. */
static int incomplete(size_t len, sb_err_t *why)
{
    return len >= SB_HTTP_MAX_HEAD ? fail(why, SB_ERR_HEADERS_TOO_LARGE) : SB_AGAIN;
}

int sb_http_parse_head(const char *buf, size_t len, sb_http_req_t *req, sb_err_t *why)
{
    const uint8_t *p = (const uint8_t *)buf;
    size_t lim = len < SB_HTTP_MAX_HEAD ? len : SB_HTTP_MAX_HEAD;
    sb_err_t ignored;
    if (!why) why = &ignored;
    *why = SB_OK;
    req->method = SB_HTTP_OTHER;
    req->method_str = req->target = req->path = req->query = (sb_str_t){NULL, 0};
    req->minor = 1;
    req->nheaders = 0;
    req->content_length = -1;
    req->chunked = req->keep_alive = req->upgrade = req->expect_continue = false;

    /* Empty lines before the request line are skipped (RFC 9112 2.2): some
     * clients send a CRLF after a body. They count toward the head limit. */
    size_t i = 0;
    while (i < lim && (p[i] == '\r' || p[i] == '\n')) {
        if (p[i] == '\r') {
            if (i + 1 == lim) return incomplete(len, why);
            if (p[i + 1] != '\n') return fail(why, SB_ERR_BAD_REQUEST_LINE);
            i++;
        }
        i++;
    }
    if (i == lim) return incomplete(len, why);

    /* Looking for the blank line first makes a partial head cheap to retry:
     * one memchr per line, plus the request line, which is checked anyway so
     * that garbage and overlong targets are refused before the head ends. */
    size_t end = find_head_end(p, i, lim);
    if (!end) {
        int r = parse_request_line(p, i, lim, req, why);
        return r == SB_EPARSE ? r : incomplete(len, why);
    }
    int r = parse_request_line(p, i, end, req, why);
    /* The request line's LF comes before the blank line, so it is complete. */
    assert(r != SB_AGAIN);
    if (r < 0) return r;
    return parse_fields(p, (size_t)r, end, req, why);
}

/* ---- chunked bodies ----------------------------------------------------------- */

enum {
    CH_SIZE0,      /* first hex digit of a chunk-size */
    CH_SIZE,       /* more hex digits */
    CH_EXT,        /* chunk extensions, skipped up to CR */
    CH_SIZE_LF,    /* LF of the chunk-size line */
    CH_DATA,       /* chunk data; remaining bytes to copy */
    CH_DATA_CR,    /* CRLF after chunk data */
    CH_DATA_LF,
    CH_TRAILER0,   /* start of a trailer line, or the final CRLF */
    CH_TRAILER_NAME,
    CH_TRAILER,    /* rest of a trailer line up to CR */
    CH_TRAILER_LF,
    CH_END_LF,     /* LF of the final CRLF */
    CH_DONE,
};

#define CHUNK_LINE_MAX 4096          /* a chunk-size or trailer line, header-documented */
#define CHUNK_TRAILERS_MAX SB_HTTP_MAX_HEAD /* the whole trailer section */

int sb_http_chunked_decode(sb_http_chunked_t *st, const char *in, size_t len, char *out,
                           size_t *out_len, uint64_t max_body)
{
    const uint8_t *p = (const uint8_t *)in;
    size_t i = 0, o = *out_len;
    int ret = 0;
    /* The return value is an int: a larger input is consumed in pieces and the
     * caller comes back for the rest, as it does after any partial read. */
    if (len > INT_MAX) len = INT_MAX;
    if (st->done) return 0;

/* Framing lines are CRLF-terminated strictly: a bare LF is refused because
 * parsers that disagree on line ends inside a chunked body can be made to see
 * different requests in the same bytes. */
#define BAD()              \
    do {                   \
        ret = SB_EPARSE;   \
        goto out;          \
    } while (0)
#define EXPECT(ch) \
    if (p[i++] != (ch)) BAD()

    while (i < len) {
        switch (st->state) {
        case CH_SIZE0:
        case CH_SIZE: {
            uint8_t c = p[i++];
            if (++st->line_len > CHUNK_LINE_MAX) BAD();
            int d = hexval(c);
            if (d >= 0) {
                if (st->remaining > (UINT64_MAX >> 4)) BAD();
                st->remaining = st->remaining << 4 | (uint64_t)d;
                /* Refuse an oversized chunk as soon as its size is known, not
                 * after buffering up to max_body bytes of it. */
                if (st->total > max_body || st->remaining > max_body - st->total) {
                    ret = SB_ELIMIT;
                    goto out;
                }
                st->state = CH_SIZE;
            } else if (st->state == CH_SIZE0) {
                BAD();
            } else if (c == ';' || is_ows(c)) {
                st->state = CH_EXT; /* BWS ";" ext-name [ "=" ext-val ] ... */
            } else if (c == '\r') {
                st->state = CH_SIZE_LF;
            } else {
                BAD();
            }
            break;
        }
        case CH_EXT: {
            /* Extensions are ignored, but their bytes must be ones a token or a
             * quoted-string may hold, and they count toward the line limit. */
            uint8_t c = p[i++];
            if (++st->line_len > CHUNK_LINE_MAX) BAD();
            if (c == '\r') st->state = CH_SIZE_LF;
            else if (!(cls[c] & C_VALUE) && c != '\t') BAD();
            break;
        }
        case CH_SIZE_LF:
            EXPECT('\n');
            st->line_len = 0;
            st->state = st->remaining ? CH_DATA : CH_TRAILER0;
            /* In the trailer section, remaining counts trailer bytes instead. */
            break;
        case CH_DATA: {
            size_t n = len - i;
            if (n > st->remaining) n = (size_t)st->remaining;
            if (out + o != in + i) memmove(out + o, in + i, n);
            o += n;
            i += n;
            st->remaining -= n;
            st->total += n;
            if (!st->remaining) st->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            EXPECT('\r');
            st->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            EXPECT('\n');
            st->state = CH_SIZE0;
            break;
        case CH_TRAILER0:
            if (p[i] == '\r') {
                i++;
                st->state = CH_END_LF;
                break;
            }
            st->state = CH_TRAILER_NAME; /* this byte starts a field name */
            break;
        case CH_TRAILER_NAME:
        case CH_TRAILER: {
            /* Trailer fields are read and dropped: a field line needs a
             * name and a colon, its value the bytes a header value may have. */
            uint8_t c = p[i++];
            if (++st->line_len > CHUNK_LINE_MAX || ++st->remaining > CHUNK_TRAILERS_MAX) BAD();
            if (st->state == CH_TRAILER_NAME) {
                if (c == ':' && st->line_len > 1) st->state = CH_TRAILER;
                else if (!(cls[c] & C_TCHAR)) BAD();
            } else if (c == '\r') {
                st->state = CH_TRAILER_LF;
            } else if (!(cls[c] & C_VALUE) && c != '\t') {
                BAD();
            }
            break;
        }
        case CH_TRAILER_LF:
            EXPECT('\n');
            st->line_len = 0;
            st->state = CH_TRAILER0;
            break;
        case CH_END_LF:
            EXPECT('\n');
            st->state = CH_DONE;
            st->done = true;
            ret = (int)i;
            goto out;
        default:
            BAD();
        }
    }
    ret = (int)i;
out:
    *out_len = o;
    return ret;
#undef BAD
#undef EXPECT
}

/* ---- query strings ---------------------------------------------------------------- */

bool sb_http_query_next(sb_str_t *q, sb_str_t *key, sb_str_t *val)
{
    while (q->len) {
        const char *s = q->p, *amp = memchr(s, '&', q->len);
        size_t n = amp ? (size_t)(amp - s) : q->len;
        q->p += amp ? n + 1 : n;
        q->len -= amp ? n + 1 : n;
        if (!n) continue; /* "a=1&&b=2": an empty pair carries nothing */
        const char *eq = memchr(s, '=', n);
        size_t k = eq ? (size_t)(eq - s) : n;
        *key = sb_str(s, k);
        *val = eq ? sb_str(eq + 1, n - k - 1) : sb_str(s + n, 0);
        return true;
    }
    return false;
}

int sb_http_pct_decode(sb_str_t in, char *out, size_t cap, bool form)
{
    if (in.len > INT_MAX) return -1;
    size_t o = 0;
    /* Output never runs ahead of input, so out may equal in.p. */
    for (size_t i = 0; i < in.len; i++) {
        uint8_t c = (uint8_t)in.p[i];
        if (c == '%') {
            if (in.len - i < 3) return -1;
            int hi = hexval((uint8_t)in.p[i + 1]), lo = hexval((uint8_t)in.p[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (uint8_t)(hi << 4 | lo);
            i += 2;
        } else if (c == '+' && form) {
            c = ' ';
        }
        if (o == cap) return -1;
        out[o++] = (char)c;
    }
    return (int)o;
}

/* True when the raw (encoded) query key k decodes to key[0..klen). A key with a
 * bad escape matches nothing. */
static bool key_eq(sb_str_t k, const char *key, size_t klen)
{
    size_t j = 0;
    for (size_t i = 0; i < k.len; i++, j++) {
        uint8_t c = (uint8_t)k.p[i];
        if (c == '%') {
            if (k.len - i < 3) return false;
            int hi = hexval((uint8_t)k.p[i + 1]), lo = hexval((uint8_t)k.p[i + 2]);
            if (hi < 0 || lo < 0) return false;
            c = (uint8_t)(hi << 4 | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (j == klen || (uint8_t)key[j] != c) return false;
    }
    return j == klen;
}

int sb_http_query_get(sb_str_t query, const char *key, char *out, size_t cap)
{
    size_t klen = strlen(key);
    sb_str_t k, v;
    if (cap) out[0] = '\0';
    while (sb_http_query_next(&query, &k, &v)) {
        if (!key_eq(k, key, klen)) continue;
        if (!cap) return -2;
        int n = sb_http_pct_decode(v, out, cap - 1, true);
        /* A decoded NUL ("%00") is refused: the caller gets a C string, and a
         * string that ends early is a different value than the one sent. */
        if (n < 0 || memchr(out, '\0', (size_t)n)) {
            out[0] = '\0';
            return -2;
        }
        out[n] = '\0';
        return n;
    }
    return -1;
}
