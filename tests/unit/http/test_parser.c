/* Unit tests for the HTTP/1.1 request parser (src/http/parser.c): request heads,
 * chunked bodies and query strings. Every input sits flush against a guard page,
 * so reading one byte past it crashes the test. */
#include "http/http_parser.h"
#include "testlib.h"

#include <stdlib.h>

/* ---- helpers ------------------------------------------------------------------ */

/* The guarded copy behind the last parse; the slices in the request point into
 * it, so it lives until the next parse. */
static char *last_input;

static int parse_n(const char *s, size_t n, sb_http_req_t *req, sb_err_t *why)
{
    if (last_input) tl_guard_free(last_input);
    last_input = tl_guarded(s, n);
    *why = SB_OK;
    return sb_http_parse_head(last_input, n, req, why);
}

static int parse(const char *s, sb_http_req_t *req, sb_err_t *why)
{
    return parse_n(s, strlen(s), req, why);
}

/* The error a head gets, as one number to compare: the sb_err_t when it is
 * refused, -1 for SB_AGAIN, -2 when it parses. */
static int err_n(const char *s, size_t n)
{
    sb_http_req_t req;
    sb_err_t why;
    int r = parse_n(s, n, &req, &why);
    if (r == SB_EPARSE) return (int)why;
    return r == SB_AGAIN ? -1 : -2;
}

static int err_of(const char *s) { return err_n(s, strlen(s)); }

#define OK (-2)
#define AGAIN (-1)

/* Wraps one header line into an otherwise valid request. */
static int err_hdr(const char *line)
{
    char buf[512];
    snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nHost: h\r\n%s\r\n\r\n", line);
    return err_of(buf);
}

static bool slice_in(sb_str_t s, const char *base, size_t n)
{
    return s.p && s.p >= base && s.p + s.len <= base + n;
}

/* ---- request heads ---------------------------------------------------------------- */

static void test_simple_get(void)
{
    const char *s = "GET /v1/channels/news/messages?since=42&limit=10 HTTP/1.1\r\n"
                    "Host: example.com\r\n"
                    "User-Agent: test/1.0\r\n"
                    "Accept: */*\r\n"
                    "\r\n";
    sb_http_req_t req;
    sb_err_t why;
    int n = parse(s, &req, &why);
    CHECK_EQ_INT(n, strlen(s));
    CHECK_EQ_INT(why, SB_OK);
    CHECK_EQ_INT(req.method, SB_HTTP_GET);
    CHECK_EQ_STR(req.method_str.p, req.method_str.len, "GET");
    CHECK_EQ_STR(req.target.p, req.target.len, "/v1/channels/news/messages?since=42&limit=10");
    CHECK_EQ_STR(req.path.p, req.path.len, "/v1/channels/news/messages");
    CHECK_EQ_STR(req.query.p, req.query.len, "since=42&limit=10");
    CHECK_EQ_INT(req.minor, 1);
    CHECK_EQ_INT(req.nheaders, 3);
    CHECK_EQ_STR(req.headers[0].name.p, req.headers[0].name.len, "Host");
    CHECK_EQ_STR(req.headers[0].value.p, req.headers[0].value.len, "example.com");
    CHECK_EQ_STR(req.headers[2].name.p, req.headers[2].name.len, "Accept");
    CHECK_EQ_STR(req.headers[2].value.p, req.headers[2].value.len, "*/*");
    CHECK_EQ_INT(req.content_length, -1);
    CHECK(!req.chunked);
    CHECK(req.keep_alive);
    CHECK(!req.upgrade);
    CHECK(!req.expect_continue);
    CHECK(slice_in(req.target, last_input, (size_t)n));
    for (int i = 0; i < req.nheaders; i++) {
        CHECK(slice_in(req.headers[i].name, last_input, (size_t)n));
        CHECK(slice_in(req.headers[i].value, last_input, (size_t)n));
    }

    /* No query: an empty slice. No headers at all is fine too. */
    n = parse("GET /healthz HTTP/1.1\r\n\r\n", &req, &why);
    CHECK_EQ_INT(n, 25);
    CHECK_EQ_STR(req.path.p, req.path.len, "/healthz");
    CHECK_EQ_INT(req.query.len, 0);
    CHECK_EQ_INT(req.nheaders, 0);

    /* A '?' with nothing after it, and a '?' inside the query. */
    parse("GET /p? HTTP/1.1\r\n\r\n", &req, &why);
    CHECK_EQ_STR(req.path.p, req.path.len, "/p");
    CHECK_EQ_INT(req.query.len, 0);
    parse("GET /p?a?b=/c HTTP/1.1\r\n\r\n", &req, &why);
    CHECK_EQ_STR(req.path.p, req.path.len, "/p");
    CHECK_EQ_STR(req.query.p, req.query.len, "a?b=/c");
}

static void test_methods(void)
{
    static const struct {
        const char *m;
        sb_http_method_t want;
    } cases[] = {
        {"GET", SB_HTTP_GET},           {"HEAD", SB_HTTP_HEAD},      {"POST", SB_HTTP_POST},
        {"PUT", SB_HTTP_PUT},           {"DELETE", SB_HTTP_DELETE},  {"OPTIONS", SB_HTTP_OPTIONS},
        {"PATCH", SB_HTTP_PATCH},       {"TRACE", SB_HTTP_OTHER},    {"CONNECT", SB_HTTP_OTHER},
        {"PROPFIND", SB_HTTP_OTHER},    {"M-SEARCH", SB_HTTP_OTHER}, {"get", SB_HTTP_OTHER},
        {"Post", SB_HTTP_OTHER},        {"GETS", SB_HTTP_OTHER},
        {"X!#$%&'*+-.^_`|~9", SB_HTTP_OTHER},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[128];
        snprintf(buf, sizeof buf, "%s /x HTTP/1.1\r\n\r\n", cases[i].m);
        sb_http_req_t req;
        sb_err_t why;
        int n = parse(buf, &req, &why);
        CHECK_EQ_INT(n, strlen(buf));
        CHECK_EQ_INT(req.method, cases[i].want);
        CHECK_EQ_STR(req.method_str.p, req.method_str.len, cases[i].m);
    }
    /* Not tokens: separators, controls, an empty method, a leading space. */
    CHECK_EQ_INT(err_of("GE(T / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GE:T / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET\t/ HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of(" / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of(" GET / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_n("G\0T / HTTP/1.1\r\n\r\n", 18), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("G\xc3\xa9T / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
}

static void test_versions(void)
{
    sb_http_req_t req;
    sb_err_t why;
    CHECK(parse("GET / HTTP/1.0\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_INT(req.minor, 0);
    CHECK(parse("GET / HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_INT(req.minor, 1);

    /* Well-formed versions we do not speak: 505. */
    CHECK_EQ_INT(err_of("GET / HTTP/2.0\r\n\r\n"), SB_ERR_BAD_VERSION);
    CHECK_EQ_INT(err_of("GET / HTTP/1.2\r\n\r\n"), SB_ERR_BAD_VERSION);
    CHECK_EQ_INT(err_of("GET / HTTP/0.9\r\n\r\n"), SB_ERR_BAD_VERSION);
    CHECK_EQ_INT(err_of("GET / HTTP/3.1\r\n\r\n"), SB_ERR_BAD_VERSION);
    /* Not versions at all: 400. */
    CHECK_EQ_INT(err_of("GET / HTTP/1.10\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / http/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/11\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/1.x\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1 \r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1\r\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1\rX\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE); /* HTTP/0.9 style */
    CHECK_EQ_INT(err_of("GET / \r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET  / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /  HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1 extra\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
}

static void test_keep_alive(void)
{
    static const struct {
        const char *head;
        bool want;
    } cases[] = {
        {"GET / HTTP/1.1\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: CLOSE\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: foo ,  keep-alive \r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nKeep-Alive: timeout=5\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_http_req_t req;
        sb_err_t why;
        CHECK(parse(cases[i].head, &req, &why) > 0);
        if (req.keep_alive != cases[i].want)
            fprintf(stderr, "keep-alive case %zu: %s", i, cases[i].head);
        CHECK_EQ_INT(req.keep_alive, cases[i].want);
    }
}

static void test_upgrade_and_expect(void)
{
    sb_http_req_t req;
    sb_err_t why;
    const char *ws = "GET /v1/ws?token=abc HTTP/1.1\r\n"
                     "Host: localhost:8080\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "\r\n";
    CHECK_EQ_INT(parse(ws, &req, &why), strlen(ws));
    CHECK(req.upgrade);
    CHECK(req.keep_alive);
    sb_str_t key = sb_http_header(&req, "sec-websocket-key");
    CHECK_EQ_STR(key.p, key.len, "dGhlIHNhbXBsZSBub25jZQ==");

    CHECK(parse("GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
                &req, &why) > 0);
    CHECK(req.upgrade);
    CHECK(parse("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", &req, &why) > 0);
    CHECK(!req.upgrade); /* Connection does not name it */
    CHECK(parse("GET / HTTP/1.1\r\nConnection: upgrade\r\n\r\n", &req, &why) > 0);
    CHECK(!req.upgrade); /* no Upgrade field */
    CHECK(parse("GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade:\r\n\r\n", &req, &why) > 0);
    CHECK(!req.upgrade); /* an empty Upgrade field names no protocol */
    CHECK(parse("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", &req,
                &why) > 0);
    CHECK(!req.upgrade); /* HTTP/1.0 Upgrade is ignored */

    CHECK(parse("POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", &req,
                &why) > 0);
    CHECK(req.expect_continue);
    CHECK(parse("POST / HTTP/1.1\r\nExpect:  100-Continue \r\n\r\n", &req, &why) > 0);
    CHECK(req.expect_continue);
    CHECK(parse("POST / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", &req, &why) > 0);
    CHECK(!req.expect_continue);
    CHECK(parse("POST / HTTP/1.0\r\nExpect: 100-continue\r\n\r\n", &req, &why) > 0);
    CHECK(!req.expect_continue);
}

static void test_content_length(void)
{
    static const struct {
        const char *value;
        int64_t want; /* -2: refused */
    } cases[] = {
        {"5", 5},
        {"0", 0},
        {"007", 7},
        {"9223372036854775807", INT64_MAX},
        {"5, 5", 5},
        {"5,5,5", 5},
        {"  12  ", 12},
        {"+5", -2},
        {"-1", -2},
        {"5,6", -2},
        {"5, 6", -2},
        {"5 6", -2},
        {"5,", -2},
        {",5", -2},
        {"5,,5", -2},
        {"", -2},
        {"abc", -2},
        {"0x5", -2},
        {"5a", -2},
        {"1.0", -2},
        {"9223372036854775808", -2},
        {"99999999999999999999999", -2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[256];
        snprintf(buf, sizeof buf, "POST / HTTP/1.1\r\nContent-Length: %s\r\n\r\n", cases[i].value);
        sb_http_req_t req;
        sb_err_t why;
        int n = parse(buf, &req, &why);
        if (cases[i].want == -2) {
            CHECK_EQ_INT(n, SB_EPARSE);
            CHECK_EQ_INT(why, SB_ERR_BAD_CONTENT_LENGTH);
        } else {
            CHECK_EQ_INT(n, strlen(buf));
            CHECK_EQ_INT(req.content_length, cases[i].want);
        }
        if ((n < 0) != (cases[i].want == -2)) fprintf(stderr, "content-length case %zu\n", i);
    }

    sb_http_req_t req;
    sb_err_t why;
    /* Repeated field lines: identical values are one value, others a conflict. */
    CHECK(parse("POST / HTTP/1.1\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n", &req, &why) >
          0);
    CHECK_EQ_INT(req.content_length, 3);
    CHECK_EQ_INT(err_of("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"),
                 SB_ERR_BAD_CONTENT_LENGTH);
    CHECK_EQ_INT(err_of("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3, 4\r\n\r\n"),
                 SB_ERR_BAD_CONTENT_LENGTH);
    /* Absent. */
    CHECK(parse("POST / HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_INT(req.content_length, -1);
}

static void test_transfer_encoding(void)
{
    sb_http_req_t req;
    sb_err_t why;
    CHECK(parse("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", &req, &why) > 0);
    CHECK(req.chunked);
    CHECK_EQ_INT(req.content_length, -1);
    CHECK(parse("POST / HTTP/1.1\r\ntransfer-encoding:  Chunked \r\n\r\n", &req, &why) > 0);
    CHECK(req.chunked);
    CHECK(parse("POST / HTTP/1.1\r\nTransfer-Encoding: , chunked,\r\n\r\n", &req, &why) > 0);
    CHECK(req.chunked); /* empty list elements are ignored (RFC 9110 5.6.1) */

    /* Codings we cannot decode, final or not: 501. */
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: gzip"), SB_ERR_NOT_IMPLEMENTED);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: chunked, gzip"), SB_ERR_NOT_IMPLEMENTED);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: gzip, chunked"), SB_ERR_NOT_IMPLEMENTED);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: identity"), SB_ERR_NOT_IMPLEMENTED);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: chunked;x=1"), SB_ERR_NOT_IMPLEMENTED);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: chunkedx"), SB_ERR_NOT_IMPLEMENTED);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip"),
                 SB_ERR_NOT_IMPLEMENTED);
    /* Malformed lists. */
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: chunked, chunked"), SB_ERR_BAD_HEADER);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding:"), SB_ERR_BAD_HEADER);
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: ,"), SB_ERR_BAD_HEADER);
    /* Both framings at once is how requests are smuggled. */
    CHECK_EQ_INT(err_hdr("Transfer-Encoding: chunked\r\nContent-Length: 5"),
                 SB_ERR_BAD_CONTENT_LENGTH);
    CHECK_EQ_INT(err_hdr("Content-Length: 5\r\nTransfer-Encoding: chunked"),
                 SB_ERR_BAD_CONTENT_LENGTH);
    CHECK_EQ_INT(err_hdr("Content-Length: 0\r\nTransfer-Encoding: gzip"),
                 SB_ERR_BAD_CONTENT_LENGTH);
    /* HTTP/1.0 has no transfer codings. */
    CHECK_EQ_INT(err_of("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
                 SB_ERR_BAD_HEADER);
}

static void test_header_edges(void)
{
    sb_http_req_t req;
    sb_err_t why;

    /* Empty values, with and without whitespace; the slice still points into
     * the buffer, so "present but empty" differs from absent. */
    CHECK(parse("GET / HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \t \r\n\r\n", &req, &why) > 0);
    CHECK_EQ_INT(req.nheaders, 2);
    CHECK_EQ_INT(req.headers[0].value.len, 0);
    CHECK_EQ_INT(req.headers[1].value.len, 0);
    sb_str_t v = sb_http_header(&req, "x-empty");
    CHECK(v.p != NULL);
    CHECK_EQ_INT(v.len, 0);
    v = sb_http_header(&req, "x-absent");
    CHECK(v.p == NULL);
    CHECK_EQ_INT(v.len, 0);

    /* OWS trimmed on both sides, inner whitespace kept; obs-text allowed. */
    CHECK(parse("GET / HTTP/1.1\r\nX-A: \t a \t b \t \r\nX-B:c\r\nX-C: caf\xc3\xa9\x80\xff\r\n\r\n",
                &req, &why) > 0);
    CHECK_EQ_STR(req.headers[0].value.p, req.headers[0].value.len, "a \t b");
    CHECK_EQ_STR(req.headers[1].value.p, req.headers[1].value.len, "c");
    CHECK_EQ_STR(req.headers[2].value.p, req.headers[2].value.len, "caf\xc3\xa9\x80\xff");
    /* A long value crosses the word-at-a-time scanner's boundaries. */
    CHECK(parse("GET / HTTP/1.1\r\nCookie: 0123456789abcdef0123456789abcdef0123\t456789!\r\n\r\n",
                &req, &why) > 0);
    CHECK_EQ_STR(req.headers[0].value.p, req.headers[0].value.len,
                 "0123456789abcdef0123456789abcdef0123\t456789!");

    /* Bytes a value may not hold, at every offset of a long value. */
    static const char bad_bytes[] = {'\x00', '\x01', '\x1f', '\x7f', '\r', '\v'};
    for (size_t b = 0; b < sizeof bad_bytes; b++) {
        for (int off = 0; off < 20; off++) {
            char buf[128];
            int n = snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\nX: %.*s_%s\r\n\r\n", off,
                             "abcdefghijklmnopqrstuvwxyz", "yyyyyyyyyyyyyyyyyy");
            buf[19 + off] = bad_bytes[b];
            CHECK_EQ_INT(err_n(buf, (size_t)n), SB_ERR_BAD_HEADER);
        }
    }

    /* Bare LF line endings are accepted throughout. */
    const char *lf = "GET /lf HTTP/1.1\nHost: h\nX: y\n\n";
    CHECK_EQ_INT(parse(lf, &req, &why), strlen(lf));
    CHECK_EQ_INT(req.nheaders, 2);
    CHECK_EQ_STR(req.headers[1].value.p, req.headers[1].value.len, "y");
    lf = "GET /lf HTTP/1.1\r\nHost: h\n\r\n";
    CHECK_EQ_INT(parse(lf, &req, &why), strlen(lf));

    /* Malformed lines. */
    CHECK_EQ_INT(err_hdr("X-Fold: a\r\n b"), SB_ERR_BAD_HEADER);        /* obs-fold */
    CHECK_EQ_INT(err_hdr("X-Fold: a\r\n\tb"), SB_ERR_BAD_HEADER);       /* obs-fold */
    CHECK_EQ_INT(err_of("GET / HTTP/1.1\r\n Host: h\r\n\r\n"), SB_ERR_BAD_HEADER);
    CHECK_EQ_INT(err_hdr("NoColon"), SB_ERR_BAD_HEADER);
    CHECK_EQ_INT(err_hdr("No Colon: x"), SB_ERR_BAD_HEADER);
    CHECK_EQ_INT(err_hdr("Host : x"), SB_ERR_BAD_HEADER);                /* space before colon */
    CHECK_EQ_INT(err_hdr("X\t: x"), SB_ERR_BAD_HEADER);
    CHECK_EQ_INT(err_hdr(": x"), SB_ERR_BAD_HEADER);                     /* empty name */
    CHECK_EQ_INT(err_hdr("X(: x"), SB_ERR_BAD_HEADER);                   /* separator in name */
    CHECK_EQ_INT(err_hdr("X: a\x01 b"), SB_ERR_BAD_HEADER);              /* CTL */
    CHECK_EQ_INT(err_hdr("X: a\x7f b"), SB_ERR_BAD_HEADER);              /* DEL */
    CHECK_EQ_INT(err_hdr("X: a\rb"), SB_ERR_BAD_HEADER);                 /* bare CR */
    CHECK_EQ_INT(err_hdr("X: a\r"), SB_ERR_BAD_HEADER);                  /* CR CR LF */
    CHECK_EQ_INT(err_hdr("\rX: a"), SB_ERR_BAD_HEADER);
    const char nul_value[] = "GET / HTTP/1.1\r\nX: a\0b\r\n\r\n";
    CHECK_EQ_INT(err_n(nul_value, sizeof nul_value - 1), SB_ERR_BAD_HEADER);
    const char nul_name[] = "GET / HTTP/1.1\r\nX\0Y: ab\r\n\r\n";
    CHECK_EQ_INT(err_n(nul_name, sizeof nul_name - 1), SB_ERR_BAD_HEADER);
    /* A second Host names a second site. */
    CHECK_EQ_INT(err_hdr("host: other"), SB_ERR_BAD_HEADER);
}

static void test_header_count(void)
{
    static char buf[SB_HTTP_MAX_HEAD];
    for (int count = SB_HTTP_MAX_HEADERS; count <= SB_HTTP_MAX_HEADERS + 1; count++) {
        size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
        for (int i = 0; i < count; i++)
            n += (size_t)snprintf(buf + n, sizeof buf - n, "X-H%d: %d\r\n", i, i);
        n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
        sb_http_req_t req;
        sb_err_t why;
        int r = parse_n(buf, n, &req, &why);
        if (count <= SB_HTTP_MAX_HEADERS) {
            CHECK_EQ_INT(r, n);
            CHECK_EQ_INT(req.nheaders, count);
            CHECK_EQ_STR(req.headers[count - 1].name.p, req.headers[count - 1].name.len, "X-H63");
        } else {
            CHECK_EQ_INT(r, SB_EPARSE);
            CHECK_EQ_INT(why, SB_ERR_HEADERS_TOO_LARGE);
        }
    }
}

static void test_targets(void)
{
    sb_http_req_t req;
    sb_err_t why;
    /* asterisk-form, OPTIONS only. */
    CHECK(parse("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_STR(req.target.p, req.target.len, "*");
    CHECK_EQ_STR(req.path.p, req.path.len, "*");
    CHECK_EQ_INT(req.query.len, 0);
    CHECK_EQ_INT(err_of("GET * HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("OPTIONS *x HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("OPTIONS ** HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);

    /* absolute-form: the path is the part after the authority. */
    CHECK(parse("GET http://example.com:8080/a/b?x=1 HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_STR(req.target.p, req.target.len, "http://example.com:8080/a/b?x=1");
    CHECK_EQ_STR(req.path.p, req.path.len, "/a/b");
    CHECK_EQ_STR(req.query.p, req.query.len, "x=1");
    CHECK(parse("GET HTTPS://EXAMPLE.COM/x HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_STR(req.path.p, req.path.len, "/x");
    CHECK(parse("GET http://[::1]:80/ HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_STR(req.path.p, req.path.len, "/");
    /* No path: left empty, still inside the buffer. */
    CHECK(parse("GET http://h HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_INT(req.path.len, 0);
    CHECK(slice_in(req.path, last_input, strlen("GET http://h HTTP/1.1\r\n\r\n")));
    CHECK(parse("GET http://h?q=1 HTTP/1.1\r\n\r\n", &req, &why) > 0);
    CHECK_EQ_INT(req.path.len, 0);
    CHECK_EQ_STR(req.query.p, req.query.len, "q=1");
    CHECK_EQ_INT(err_of("GET http:///x HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET http:// HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET http://u:p@h/x HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET ftp://h/x HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET http:/h/x HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    /* Neither form. */
    CHECK_EQ_INT(err_of("GET x HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("CONNECT h:443 HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    /* Bytes a target may not hold: controls, DEL, fragments, raw non-ASCII. */
    CHECK_EQ_INT(err_of("GET /a\x01 HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /a\tb HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /a\x7f HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /a#f HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /a b HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
    const char nul_target[] = "GET /a\0 HTTP/1.1\r\n\r\n";
    CHECK_EQ_INT(err_n(nul_target, sizeof nul_target - 1), SB_ERR_BAD_REQUEST_LINE);
    /* Long targets cross the word-at-a-time scanner with a bad byte at each offset. */
    static const char bad_bytes[] = {'\x01', '\t', '#', '\x7f', '\x80', '\xff'};
    for (size_t b = 0; b < sizeof bad_bytes; b++) {
        for (int off = 0; off < 20; off++) {
            char buf[128];
            int n = snprintf(buf, sizeof buf, "GET /%.*s%cxxxxxxxxxxxxxxxxxxxx HTTP/1.1\r\n\r\n",
                             off, "abcdefghijklmnopqrstuvwxyz", bad_bytes[b]);
            CHECK_EQ_INT(err_n(buf, (size_t)n), SB_ERR_BAD_REQUEST_LINE);
        }
    }
}

/* Builds "GET /<pad> HTTP/1.1\r\n\r\n" with a target of exactly tlen bytes. */
static size_t long_target(char *buf, size_t tlen)
{
    memcpy(buf, "GET /", 5);
    memset(buf + 5, 'a', tlen - 1);
    memcpy(buf + 4 + tlen, " HTTP/1.1\r\n\r\n", 13);
    return 4 + tlen + 13;
}

static void test_uri_too_long(void)
{
    static char buf[SB_HTTP_MAX_TARGET + 64];
    size_t n = long_target(buf, SB_HTTP_MAX_TARGET);
    CHECK_EQ_INT(err_n(buf, n), OK);
    n = long_target(buf, SB_HTTP_MAX_TARGET + 1);
    CHECK_EQ_INT(err_n(buf, n), SB_ERR_URI_TOO_LONG);
    /* Before the line ends: as soon as the target is one byte too long. */
    CHECK_EQ_INT(err_n(buf, 4 + SB_HTTP_MAX_TARGET), AGAIN);
    CHECK_EQ_INT(err_n(buf, 4 + SB_HTTP_MAX_TARGET + 1), SB_ERR_URI_TOO_LONG);
    CHECK_EQ_INT(err_n(buf, 4 + SB_HTTP_MAX_TARGET + 2), SB_ERR_URI_TOO_LONG);
}

/* Builds a complete head of exactly total bytes (one padded header). */
static size_t sized_head(char *buf, size_t total)
{
    const char *start = "GET / HTTP/1.1\r\nX-Pad: ";
    size_t s = strlen(start), pad = total - s - 4;
    memcpy(buf, start, s);
    memset(buf + s, 'p', pad);
    memcpy(buf + s + pad, "\r\n\r\n", 4);
    return total;
}

static void test_head_too_large(void)
{
    static char buf[SB_HTTP_MAX_HEAD + 64];
    sb_http_req_t req;
    sb_err_t why;
    size_t n = sized_head(buf, SB_HTTP_MAX_HEAD);
    CHECK_EQ_INT(parse_n(buf, n, &req, &why), SB_HTTP_MAX_HEAD);
    CHECK_EQ_INT(req.headers[0].value.len, SB_HTTP_MAX_HEAD - 27);
    /* A byte more, complete or not. */
    n = sized_head(buf, SB_HTTP_MAX_HEAD + 1);
    CHECK_EQ_INT(err_n(buf, n), SB_ERR_HEADERS_TOO_LARGE);
    CHECK_EQ_INT(err_n(buf, SB_HTTP_MAX_HEAD), SB_ERR_HEADERS_TOO_LARGE);
    CHECK_EQ_INT(err_n(buf, SB_HTTP_MAX_HEAD - 1), AGAIN);
    /* With the blank line only in the part past the limit, and more bytes after. */
    n = sized_head(buf, SB_HTTP_MAX_HEAD + 40);
    CHECK_EQ_INT(err_n(buf, n), SB_ERR_HEADERS_TOO_LARGE);
    /* Leading empty lines count toward the limit. */
    memset(buf, '\n', SB_HTTP_MAX_HEAD);
    CHECK_EQ_INT(err_n(buf, SB_HTTP_MAX_HEAD - 1), AGAIN);
    CHECK_EQ_INT(err_n(buf, SB_HTTP_MAX_HEAD), SB_ERR_HEADERS_TOO_LARGE);
    /* A huge method only fails at the head limit. */
    memset(buf, 'G', SB_HTTP_MAX_HEAD + 1);
    CHECK_EQ_INT(err_n(buf, SB_HTTP_MAX_HEAD - 1), AGAIN);
    CHECK_EQ_INT(err_n(buf, SB_HTTP_MAX_HEAD + 1), SB_ERR_HEADERS_TOO_LARGE);
}

static void test_leading_empty_lines(void)
{
    sb_http_req_t req;
    sb_err_t why;
    const char *s = "\r\n\r\n\nGET / HTTP/1.1\r\n\r\n";
    CHECK_EQ_INT(parse(s, &req, &why), strlen(s));
    CHECK_EQ_INT(req.method, SB_HTTP_GET);
    CHECK_EQ_INT(err_of("\r"), AGAIN);
    CHECK_EQ_INT(err_of("\r\n"), AGAIN);
    CHECK_EQ_INT(err_of(""), AGAIN);
    CHECK_EQ_INT(err_of("\rGET / HTTP/1.1\r\n\r\n"), SB_ERR_BAD_REQUEST_LINE);
}

static void test_incomplete(void)
{
    /* Every proper prefix of a valid head waits; the whole head parses. */
    const char *s = "POST /v1/channels/c/messages?event=e HTTP/1.1\r\n"
                    "Host: h\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    size_t head = strlen(s) - 5;
    for (size_t k = 0; k <= strlen(s); k++) {
        sb_http_req_t req;
        sb_err_t why;
        int r = parse_n(s, k, &req, &why);
        CHECK_EQ_INT(r, k < head ? SB_AGAIN : (int)head);
    }
    /* Bad request lines are refused before the head ends. */
    CHECK_EQ_INT(err_of("GE(T"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET /a\x01"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/2.0\r\n"), SB_ERR_BAD_VERSION);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1 garbage"), SB_ERR_BAD_REQUEST_LINE);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1\r"), AGAIN);
    CHECK_EQ_INT(err_of("GET / HTTP/1.1\r\nHost: h\r\n\r"), AGAIN);
    CHECK_EQ_INT(err_of("\x16\x03\x01\x02\x00\x01"), SB_ERR_BAD_REQUEST_LINE); /* TLS hello */

    /* A prefix of a bad request waits or fails the same way the whole does. */
    static const char *bad[] = {
        "GET / HTTP/1.1\r\nX: a\x01\r\n\r\n",
        "GET /x HTTP/3.0\r\nHost: h\r\n\r\n",
        "GET http://u@h/ HTTP/1.1\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
        "\r\n\rGET / HTTP/1.1\r\n\r\n",
    };
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++) {
        size_t n = strlen(bad[b]);
        int whole = err_n(bad[b], n);
        CHECK(whole >= 0);
        for (size_t k = 0; k < n; k++) {
            int part = err_n(bad[b], k);
            if (part != AGAIN && part != whole)
                fprintf(stderr, "bad[%zu] prefix %zu: %d, whole %d\n", b, k, part, whole);
            CHECK(part == AGAIN || part == whole);
        }
    }
}

static void test_pipelined(void)
{
    const char *s = "GET /first HTTP/1.1\r\nHost: h\r\n\r\n"
                    "GET /second?x=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    size_t first = strlen("GET /first HTTP/1.1\r\nHost: h\r\n\r\n");
    sb_http_req_t req;
    sb_err_t why;
    CHECK_EQ_INT(parse(s, &req, &why), first);
    CHECK_EQ_STR(req.path.p, req.path.len, "/first");
    CHECK(req.keep_alive);
    CHECK_EQ_INT(parse(s + first, &req, &why), strlen(s) - first);
    CHECK_EQ_STR(req.path.p, req.path.len, "/second");
    CHECK(!req.keep_alive);
}

/* ---- a connection's view: arbitrary splits ---------------------------------------- */

/* Feeds stream[0..n) to the parsers the way a connection does, delivering it in
 * pieces that end at cuts[0..ncuts) and then at n, and writes a transcript of
 * every request, body and error to *log. Each parser call sees only the bytes
 * received so far, copied flush against a guard page; chunked bodies are
 * decoded in place. */
static void run_stream(const char *stream, size_t n, const size_t *cuts, size_t ncuts,
                       sb_buf_t *log)
{
    enum { HEAD, CHUNKED, FIXED } state = HEAD;
    sb_http_chunked_t ch = {0};
    int64_t left = 0;
    size_t pos = 0;
    for (size_t c = 0; c <= ncuts; c++) {
        size_t avail = c < ncuts ? cuts[c] : n;
        while (pos < avail) {
            size_t have = avail - pos;
            char *g = tl_guarded(stream + pos, have);
            if (state == HEAD) {
                sb_http_req_t req;
                sb_err_t why = SB_OK;
                int r = sb_http_parse_head(g, have, &req, &why);
                if (r == SB_AGAIN) {
                    tl_guard_free(g);
                    break;
                }
                if (r < 0) {
                    sb_buf_printf(log, "error %d\n", (int)why);
                    tl_guard_free(g);
                    return;
                }
                sb_buf_printf(log, "%d %.*s %.*s path=%.*s query=%.*s 1.%d cl=%lld ch=%d ka=%d "
                              "up=%d ex=%d\n",
                              r, (int)req.method_str.len, req.method_str.p, (int)req.target.len,
                              req.target.p, (int)req.path.len, req.path.p, (int)req.query.len,
                              req.query.p, req.minor, (long long)req.content_length,
                              req.chunked, req.keep_alive, req.upgrade, req.expect_continue);
                for (int i = 0; i < req.nheaders; i++)
                    sb_buf_printf(log, "  [%.*s]=[%.*s]\n", (int)req.headers[i].name.len,
                                  req.headers[i].name.p, (int)req.headers[i].value.len,
                                  req.headers[i].value.p);
                pos += (size_t)r;
                if (req.chunked) {
                    state = CHUNKED;
                    memset(&ch, 0, sizeof ch);
                } else if (req.content_length > 0) {
                    state = FIXED;
                    left = req.content_length;
                }
                sb_buf_puts(log, "body: ");
                if (state == HEAD) sb_buf_puts(log, "\n");
            } else if (state == CHUNKED) {
                size_t out_len = 0;
                int r = sb_http_chunked_decode(&ch, g, have, g, &out_len, 1 << 20);
                sb_buf_put(log, g, out_len);
                if (r < 0) {
                    sb_buf_printf(log, "\nchunked error %d\n", r);
                    tl_guard_free(g);
                    return;
                }
                CHECK(out_len <= (size_t)r);
                pos += (size_t)r;
                if (ch.done) {
                    sb_buf_printf(log, "\n(%llu decoded)\n", (unsigned long long)ch.total);
                    state = HEAD;
                }
            } else {
                size_t take = have < (size_t)left ? have : (size_t)left;
                sb_buf_put(log, g, take);
                pos += take;
                left -= (int64_t)take;
                if (!left) {
                    sb_buf_puts(log, "\n");
                    state = HEAD;
                }
            }
            tl_guard_free(g);
        }
    }
    sb_buf_printf(log, "end state=%d pos=%zu\n", (int)state, pos);
}

static void check_all_splits(const char *stream, size_t n, const char *must_contain)
{
    sb_buf_t whole = {0};
    run_stream(stream, n, NULL, 0, &whole);
    sb_buf_put(&whole, "", 1);
    CHECK(whole.p && strstr(whole.p, must_contain) != NULL);
    if (!whole.p || !strstr(whole.p, must_contain)) fprintf(stderr, "%s", whole.p);

    /* Two pieces, cut at every byte. */
    for (size_t k = 1; k < n; k++) {
        sb_buf_t split = {0};
        run_stream(stream, n, &k, 1, &split);
        sb_buf_put(&split, "", 1);
        bool same = split.len == whole.len && memcmp(split.p, whole.p, whole.len) == 0;
        CHECK(same);
        if (!same) fprintf(stderr, "split at %zu:\n%s---- whole:\n%s", k, split.p, whole.p);
        sb_buf_free(&split);
    }
    /* One byte at a time. */
    size_t *cuts = malloc(n * sizeof *cuts);
    for (size_t k = 0; k + 1 < n; k++) cuts[k] = k + 1;
    sb_buf_t bytes = {0};
    run_stream(stream, n, cuts, n - 1, &bytes);
    sb_buf_put(&bytes, "", 1);
    CHECK(bytes.len == whole.len && memcmp(bytes.p, whole.p, whole.len) == 0);
    free(cuts);
    sb_buf_free(&bytes);
    sb_buf_free(&whole);
}

static void test_splits(void)
{
    const char *one = "GET /v1/sse?channel=a&channel=b%20c HTTP/1.1\r\n"
                      "Host: localhost:8080\r\n"
                      "Accept: text/event-stream\r\n"
                      "Last-Event-ID:  17 \r\n"
                      "Cache-Control: no-cache\r\n"
                      "\r\n";
    check_all_splits(one, strlen(one), "[Last-Event-ID]=[17]");

    const char *pair = "POST /v1/channels/news/messages HTTP/1.1\r\n"
                       "Host: h\r\n"
                       "Transfer-Encoding: chunked\r\n"
                       "Content-Type: application/json\r\n"
                       "\r\n"
                       "7;name=\"v\"\r\n{\"data\"\r\n"
                       "A\r\n:\"chunked\"\r\n"
                       "1\r\n}\r\n"
                       "0\r\n"
                       "X-Trailer: yes\r\n"
                       "\r\n"
                       "\r\n" /* a stray CRLF between requests is allowed */
                       "POST /v1/channels/b/messages?event=e HTTP/1.1\r\n"
                       "Host: h\r\n"
                       "Content-Length: 5\r\n"
                       "\r\n"
                       "hello"
                       "GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    check_all_splits(pair, strlen(pair), "{\"data\":\"chunked\"}\n(18 decoded)");
}

/* ---- chunked bodies ------------------------------------------------------------------ */

#define MAXB (1u << 20)
#define ALL (-3)
#define MORE (-4)

/* Decodes s whole, in place, from a guarded copy. Returns the decoder's result
 * and the decoded bytes in out (NUL-terminated). */
static int dechunk(const char *s, size_t n, uint64_t max_body, char *out, size_t *out_len,
                   sb_http_chunked_t *st)
{
    char *g = tl_guarded(s, n);
    memset(st, 0, sizeof *st);
    *out_len = 0;
    int r = sb_http_chunked_decode(st, g, n, g, out_len, max_body);
    memcpy(out, g, *out_len);
    out[*out_len] = '\0';
    tl_guard_free(g);
    return r;
}

/* The same, one byte per call, each byte alone on its guarded page. Returns
 * the bytes consumed before the body ended, or the first error. */
static int dechunk_bytes(const char *s, size_t n, uint64_t max_body, char *out, size_t *out_len,
                         sb_http_chunked_t *st)
{
    memset(st, 0, sizeof *st);
    *out_len = 0;
    size_t used = 0;
    for (size_t i = 0; i < n && !st->done; i++) {
        char *g = tl_guarded(s + i, 1);
        int r = sb_http_chunked_decode(st, g, 1, out, out_len, max_body);
        tl_guard_free(g);
        if (r < 0) return r;
        used += (size_t)r;
    }
    out[*out_len] = '\0';
    return (int)used;
}

static void test_chunked(void)
{
    char out[8192];
    size_t ol;
    sb_http_chunked_t st;

    static const struct {
        const char *in;
        int ret;          /* whole-input result: consumed, SB_EPARSE, SB_ELIMIT, ALL
                             (all consumed and done) or MORE (all consumed, not done) */
        const char *body; /* decoded bytes, when it decodes */
        uint64_t max;
    } cases[] = {
        {"5\r\nhello\r\n0\r\n\r\n", ALL, "hello", MAXB},
        {"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n", ALL, "hello world", MAXB},
        {"0\r\n\r\n", ALL, "", MAXB},
        {"A\r\n0123456789\r\n0\r\n\r\n", ALL, "0123456789", MAXB},
        {"a\r\n0123456789\r\n0\r\n\r\n", ALL, "0123456789", MAXB},
        {"0005\r\nhello\r\n000\r\n\r\n", ALL, "hello", MAXB},
        /* extensions, with BWS and quoted values */
        {"5;a=b\r\nhello\r\n0;x\r\n\r\n", ALL, "hello", MAXB},
        {"5 ; a = \"q;\\\"x\" ; b\r\nhello\r\n0\r\n\r\n", ALL, "hello", MAXB},
        /* trailers are read and dropped */
        {"5\r\nhello\r\n0\r\nX-T: 1\r\nY:\r\n\r\n", ALL, "hello", MAXB},
        /* bytes after the body belong to the next request */
        {"1\r\na\r\n0\r\n\r\nGET / HTTP/1.1\r\n", 11, "a", MAXB},
        /* incomplete: everything consumed, not done */
        {"5\r\nhel", MORE, "hel", MAXB},
        {"5\r\nhello\r\n0\r\nX: y\r\n", MORE, "hello", MAXB},
        /* malformed */
        {"g\r\n", SB_EPARSE, NULL, MAXB},
        {"\r\n", SB_EPARSE, NULL, MAXB},
        {";a\r\n", SB_EPARSE, NULL, MAXB},
        {"-1\r\n", SB_EPARSE, NULL, MAXB},
        {"0x5\r\nhello\r\n", SB_EPARSE, NULL, MAXB},
        {"5\nhello\r\n0\r\n\r\n", SB_EPARSE, NULL, MAXB},   /* bare LF */
        {"5\r\nhelloX\r\n0\r\n\r\n", SB_EPARSE, NULL, MAXB}, /* missing CRLF after data */
        {"5\r\nhello\n0\r\n\r\n", SB_EPARSE, NULL, MAXB},
        {"5\r\nhello\r0\r\n\r\n", SB_EPARSE, NULL, MAXB},
        {"5;a\nb\r\nhello\r\n", SB_EPARSE, NULL, MAXB},       /* LF inside an extension */
        {"5;a\x01\r\nhello\r\n", SB_EPARSE, NULL, MAXB},
        {"5\r\r\nhello\r\n", SB_EPARSE, NULL, MAXB},
        {"0\r\nNoColon\r\n\r\n", SB_EPARSE, NULL, MAXB},
        {"0\r\n: v\r\n\r\n", SB_EPARSE, NULL, MAXB},
        {"0\r\n X: v\r\n\r\n", SB_EPARSE, NULL, MAXB},
        {"0\r\nX: a\x01\r\n\r\n", SB_EPARSE, NULL, MAXB},
        {"0\r\n\n", SB_EPARSE, NULL, MAXB},
        {"0\r\n\rX", SB_EPARSE, NULL, MAXB},
        {"ffffffffffffffffff\r\n", SB_EPARSE, NULL, UINT64_MAX}, /* overflows 64 bits */
        /* limits: exactly max_body is fine, one more is refused when the size
         * is read, before any data arrives */
        {"5\r\nhello\r\n0\r\n\r\n", ALL, "hello", 5},
        {"6\r\nhello!\r\n", SB_ELIMIT, NULL, 5},
        {"3\r\nhel\r\n3\r\nlo!\r\n0\r\n\r\n", SB_ELIMIT, NULL, 5},
        {"1\r\na\r\n", MORE, "a", 1},
        {"1\r\n", SB_ELIMIT, NULL, 0},
        {"0\r\n\r\n", ALL, "", 0},
        {"ffffffffffffffffff\r\n", SB_ELIMIT, NULL, MAXB},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i].in);
        int want = cases[i].ret == ALL || cases[i].ret == MORE ? (int)n : cases[i].ret;
        bool want_done = cases[i].ret != MORE;
        int r = dechunk(cases[i].in, n, cases[i].max, out, &ol, &st);
        if (r != want) fprintf(stderr, "chunked case %zu\n", i);
        CHECK_EQ_INT(r, want);
        if (want >= 0) {
            CHECK_EQ_INT(st.done, want_done);
            CHECK_EQ_STR(out, ol, cases[i].body);
            CHECK_EQ_INT(st.total, strlen(cases[i].body));
        }
        /* One byte at a time gives the same answer. */
        r = dechunk_bytes(cases[i].in, n, cases[i].max, out, &ol, &st);
        if (r != want) fprintf(stderr, "chunked case %zu, byte by byte\n", i);
        CHECK_EQ_INT(r, want);
        if (want >= 0) {
            CHECK_EQ_INT(st.done, want_done);
            CHECK_EQ_STR(out, ol, cases[i].body);
        }
    }

    /* After the end, nothing more is consumed. */
    const char *twice = "0\r\n\r\n0\r\n\r\n";
    CHECK_EQ_INT(dechunk(twice, strlen(twice), MAXB, out, &ol, &st), 5);
    size_t zero = 0;
    CHECK_EQ_INT(sb_http_chunked_decode(&st, twice + 5, 5, out, &zero, MAXB), 0);
    /* An empty call is harmless. */
    memset(&st, 0, sizeof st);
    CHECK_EQ_INT(sb_http_chunked_decode(&st, out, 0, out, &zero, MAXB), 0);

    /* Size lines (with extensions) and trailer lines are limited to 4 KiB. */
    static char big[40000];
    size_t n = (size_t)snprintf(big, sizeof big, "1;");
    memset(big + n, 'e', 4092);
    n += 4092;
    memcpy(big + n, "\r\na\r\n0\r\n\r\n", 10);
    CHECK_EQ_INT(dechunk(big, n + 10, MAXB, out, &ol, &st), (int)n + 10); /* 4094 + CR = 4095 */
    memmove(big + 3, big + 2, n + 10 - 2);
    big[2] = 'e';
    CHECK_EQ_INT(dechunk(big, n + 11, MAXB, out, &ol, &st), n + 11); /* 4096 */
    memmove(big + 3, big + 2, n + 11 - 2);
    CHECK_EQ_INT(dechunk(big, n + 12, MAXB, out, &ol, &st), SB_EPARSE); /* 4097 */
    memset(big, '0', 5000);
    CHECK_EQ_INT(dechunk(big, 5000, MAXB, out, &ol, &st), SB_EPARSE); /* endless zeros */
    n = (size_t)snprintf(big, sizeof big, "0\r\nX: ");
    memset(big + n, 'v', 5000);
    CHECK_EQ_INT(dechunk(big, n + 5000, MAXB, out, &ol, &st), SB_EPARSE);
    /* Many short trailer lines: the section as a whole is limited too. */
    n = (size_t)snprintf(big, sizeof big, "0\r\n");
    while (n + 8 < sizeof big) n += (size_t)snprintf(big + n, sizeof big - n, "X: 1234\r\n");
    CHECK_EQ_INT(dechunk(big, n, MAXB, out, &ol, &st), SB_EPARSE);

    /* Decoding in place across calls: the output trails the input. */
    char buf[] = "3\r\nabc\r\n4;e\r\ndefg\r\n0\r\n\r\nNEXT";
    memset(&st, 0, sizeof st);
    size_t used = 0;
    ol = 0;
    for (size_t piece = 5; used < sizeof buf - 1 && !st.done; piece += 3) {
        size_t len = sizeof buf - 1 - used;
        if (len > piece) len = piece;
        int r = sb_http_chunked_decode(&st, buf + used, len, buf, &ol, MAXB);
        CHECK(r >= 0);
        if (r < 0) break;
        used += (size_t)r;
        CHECK(ol <= used);
    }
    CHECK(st.done);
    CHECK_EQ_STR(buf, ol, "abcdefg");
    CHECK_EQ_STR(buf + used, strlen(buf + used), "NEXT");
}

/* ---- query strings ------------------------------------------------------------------- */

static void test_query(void)
{
    const char *raw = "a=1&b=&c&&d=x%20y&=e&f=g=h&";
    char *g = tl_guarded(raw, strlen(raw));
    sb_str_t q = sb_str(g, strlen(raw)), k, v;
    static const char *want[][2] = {{"a", "1"}, {"b", ""},    {"c", ""},
                                    {"d", "x%20y"}, {"", "e"}, {"f", "g=h"}};
    size_t i = 0;
    while (sb_http_query_next(&q, &k, &v)) {
        CHECK(i < 6);
        if (i >= 6) break;
        CHECK_EQ_STR(k.p, k.len, want[i][0]);
        CHECK_EQ_STR(v.p, v.len, want[i][1]);
        CHECK(k.p >= g && k.p + k.len <= g + strlen(raw));
        CHECK(v.p >= g && v.p + v.len <= g + strlen(raw));
        i++;
    }
    CHECK_EQ_INT(i, 6);
    tl_guard_free(g);
    q = (sb_str_t){NULL, 0};
    CHECK(!sb_http_query_next(&q, &k, &v));
    q = SB_STR("&&&");
    CHECK(!sb_http_query_next(&q, &k, &v));

    /* Percent-decoding. */
    char out[64];
    static const struct {
        const char *in;
        bool form;
        int want_len;
        const char *want;
    } pct[] = {
        {"%41%62+c", true, 4, "Ab c"},  {"%41%62+c", false, 4, "Ab+c"},
        {"a%2Bb%2bc", true, 5, "a+b+c"}, {"%e2%82%AC", false, 3, "\xe2\x82\xac"},
        {"", true, 0, ""},               {"plain", true, 5, "plain"},
        {"%", true, -1, NULL},           {"%4", true, -1, NULL},
        {"a%", true, -1, NULL},          {"%zz", true, -1, NULL},
        {"%4g", true, -1, NULL},         {"%g4", true, -1, NULL},
        {"%%41", true, -1, NULL},        {"%00", true, 1, "\0"},
    };
    for (i = 0; i < sizeof pct / sizeof pct[0]; i++) {
        size_t n = strlen(pct[i].in);
        g = tl_guarded(pct[i].in, n);
        int r = sb_http_pct_decode(sb_str(g, n), out, sizeof out, pct[i].form);
        CHECK_EQ_INT(r, pct[i].want_len);
        if (r >= 0) CHECK(memcmp(out, pct[i].want, (size_t)r) == 0);
        tl_guard_free(g);
    }
    /* The output capacity is exact: no terminator is written. */
    CHECK_EQ_INT(sb_http_pct_decode(SB_STR("abc"), out, 3, true), 3);
    CHECK_EQ_INT(sb_http_pct_decode(SB_STR("abcd"), out, 3, true), -1);
    CHECK_EQ_INT(sb_http_pct_decode(SB_STR("ab%41"), out, 3, true), 3);
    CHECK_EQ_INT(sb_http_pct_decode(SB_STR("a"), out, 0, true), -1);
    /* In place. */
    char inplace[] = "x%41+y";
    CHECK_EQ_INT(sb_http_pct_decode(sb_str(inplace, 6), inplace, 6, true), 4);
    CHECK_EQ_STR(inplace, 4, "xA y");

    /* Lookup by name. */
    const char *qs = "channel=a&since=42&channel=b&chan%6Eel2=x+y&empty&bad=%zz&nul=a%00b";
    g = tl_guarded(qs, strlen(qs));
    q = sb_str(g, strlen(qs));
    CHECK_EQ_INT(sb_http_query_get(q, "channel", out, sizeof out), 1);
    CHECK_EQ_STR(out, strlen(out), "a"); /* the first one */
    CHECK_EQ_INT(sb_http_query_get(q, "since", out, sizeof out), 2);
    CHECK_EQ_STR(out, strlen(out), "42");
    CHECK_EQ_INT(sb_http_query_get(q, "channel2", out, sizeof out), 3); /* encoded key */
    CHECK_EQ_STR(out, strlen(out), "x y");
    CHECK_EQ_INT(sb_http_query_get(q, "empty", out, sizeof out), 0);
    CHECK_EQ_STR(out, strlen(out), "");
    CHECK_EQ_INT(sb_http_query_get(q, "missing", out, sizeof out), -1);
    CHECK_EQ_INT(sb_http_query_get(q, "chan", out, sizeof out), -1);
    CHECK_EQ_INT(sb_http_query_get(q, "bad", out, sizeof out), -2);
    CHECK_EQ_INT(sb_http_query_get(q, "nul", out, sizeof out), -2);
    /* The terminator needs room: "42" fits in 3 bytes, not in 2. */
    CHECK_EQ_INT(sb_http_query_get(q, "since", out, 3), 2);
    CHECK_EQ_INT(sb_http_query_get(q, "since", out, 2), -2);
    CHECK_EQ_INT(sb_http_query_get(q, "since", out, 0), -2);
    tl_guard_free(g);
    CHECK_EQ_INT(sb_http_query_get((sb_str_t){NULL, 0}, "a", out, sizeof out), -1);
}

static void test_tokens(void)
{
    CHECK(sb_http_has_token(SB_STR("keep-alive, Upgrade"), "upgrade"));
    CHECK(sb_http_has_token(SB_STR(" upgrade "), "UPGRADE"));
    CHECK(sb_http_has_token(SB_STR(",,upgrade,,"), "upgrade"));
    CHECK(sb_http_has_token(SB_STR("a,\tb\t,c"), "b"));
    CHECK(!sb_http_has_token(SB_STR("upgraded"), "upgrade"));
    CHECK(!sb_http_has_token(SB_STR("up grade"), "upgrade"));
    CHECK(!sb_http_has_token(SB_STR(""), "upgrade"));
    CHECK(!sb_http_has_token(SB_STR("a, b"), ""));
    CHECK(!sb_http_has_token((sb_str_t){NULL, 0}, "x"));
}

int main(void)
{
    test_simple_get();
    test_methods();
    test_versions();
    test_keep_alive();
    test_upgrade_and_expect();
    test_content_length();
    test_transfer_encoding();
    test_header_edges();
    test_header_count();
    test_targets();
    test_uri_too_long();
    test_head_too_large();
    test_leading_empty_lines();
    test_incomplete();
    test_pipelined();
    test_splits();
    test_chunked();
    test_query();
    test_tokens();
    if (last_input) tl_guard_free(last_input);
    return tl_done("http_parser");
}
