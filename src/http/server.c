#define _GNU_SOURCE
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "auth/auth.h"
#include "auth/limits.h"
#include "http/http.h"

typedef struct {
    sb_http_chunked_t chunk;
    uint32_t raw_pos;   /* chunked: input bytes consumed after the head */
    size_t body_len;    /* chunked: decoded bytes so far */
    bool continue_sent;
    bool busy;          /* an async handler owns the current request */
    bool keep_alive;    /* of the request being answered */
    bool head_only;     /* HEAD: no body in the response */
    bool close_after;   /* the response ends the connection */
    bool in_request;    /* bytes of a request have arrived */
    int64_t throttle_until; /* over --publish-rate: hold further requests until then */
    uint64_t start_us;
    char cors[320];     /* CORS header lines for the current request */
} http_t;

typedef struct {
    char path[128];
    size_t len;
    bool prefix;
    unsigned methods;
    sb_http_handler_t fn;
} route_t;

static route_t routes[64];
static int nroutes;
static sb_http_handler_t upgrade_handler;

static ssize_t http_on_data(sb_conn_t *c, char *buf, size_t len);
static void http_on_tick(sb_conn_t *c, int64_t now);
static void http_on_close(sb_conn_t *c);
static const sb_conn_ops_t http_ops = {
    .on_data = http_on_data, .on_tick = http_on_tick, .on_close = http_on_close};

void sb_http_route(const char *path, unsigned methods, sb_http_handler_t fn)
{
    if (nroutes >= 64) abort();
    route_t *r = &routes[nroutes++];
    snprintf(r->path, sizeof r->path, "%s", path);
    r->len = strlen(r->path);
    /* "/" alone is exact (the console page), not a prefix of every path:
     * otherwise an unknown path would answer 405 to a POST instead of 404. */
    r->prefix = r->len > 1 && r->path[r->len - 1] == '/';
    r->methods = methods;
    r->fn = fn;
}

void sb_http_set_upgrade_handler(sb_http_handler_t fn) { upgrade_handler = fn; }

const char *sb_http_reason(int s)
{
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 426: return "Upgrade Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Status";
    }
}

/* Over --max-conns-per-ip or --conn-rate-per-ip, before a byte was read:
 * answer 429 and close at once, as the net layer does at the connection cap
 * (Retry-After: retry_s). A flood from one address
 * then costs an accept, one write and a close (measured under ASan: 80 us a
 * connection instead of 180 us with a graceful end), never a parse, a linger
 * or a timeout. A request that already arrived makes the close a reset, which
 * such a client has earned. TLS clients cannot read a plaintext answer before
 * their handshake, so they get the ordinary graceful error. */
static void refuse_address(sb_conn_t *c, sb_err_t why, int64_t retry_s)
{
    http_t *h = c->proto;
    SB_STAT_ADD(c->loop, conns_refused, 1);
    if (c->tls) {
        h->keep_alive = false;
        sb_http_error(c, why);
        return;
    }
    const sb_err_info_t *e = sb_err_info(why);
    sb_buf_t body = {0}, resp = {0};
    sb_buf_printf(&body, "{\"error\":{\"code\":\"%s\",\"message\":", e->code);
    sb_buf_json_str(&body, e->message, strlen(e->message));
    sb_buf_puts(&body, "}}");
    sb_buf_printf(&resp,
                  "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
                  "Retry-After: %lld\r\nContent-Length: %zu\r\n\r\n",
                  e->http_status, sb_http_reason(e->http_status), (long long)retry_s, body.len);
    sb_buf_put(&resp, body.p, body.len);
    if (!resp.oom) {
        uv_buf_t b = uv_buf_init(resp.p, (unsigned)resp.len);
        uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    }
    sb_buf_free(&body);
    sb_buf_free(&resp);
    SB_STAT_ADD(c->loop, responses_4xx, 1);
    sb_conn_close(c);
}

void sb_http_accept(sb_conn_t *c)
{
    http_t *h = calloc(1, sizeof *h);
    if (!h) {
        sb_conn_close(c);
        return;
    }
    h->keep_alive = true;
    c->proto = h;
    c->ops = &http_ops;
    c->deadline_ms = c->loop->now_ms + sb_cfg.header_timeout_ms;
    int64_t retry_s = 1;
    sb_err_t why = sb_limits_conn_open(c, &retry_s);
    if (why != SB_OK) refuse_address(c, why, retry_s);
}

bool sb_http_alive(sb_conn_t *c)
{
    return c->ops == &http_ops && !(c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING));
}

void sb_http_detach(sb_conn_t *c)
{
    if (c->ops == &http_ops) {
        free(c->proto);
        c->proto = NULL;
        c->ops = NULL;
    }
}

static void http_on_close(sb_conn_t *c)
{
    sb_limits_conn_closed(c);
    free(c->proto);
    c->proto = NULL;
}

static void count_response(sb_conn_t *c, int status)
{
    http_t *h = c->proto;
    if (status >= 500) SB_STAT_ADD(c->loop, responses_5xx, 1);
    else if (status >= 400) SB_STAT_ADD(c->loop, responses_4xx, 1);
    if (h && h->start_us) {
        sb_hist_add(&c->loop->request_lat, sb_mono_us() - h->start_us);
        h->start_us = 0;
    }
}

static void response_head(sb_buf_t *b, http_t *h, int status, const char *ctype, const char *extra)
{
    sb_buf_printf(b, "HTTP/1.1 %d %s\r\n", status, sb_http_reason(status));
    if (ctype) sb_buf_printf(b, "Content-Type: %s\r\n", ctype);
    if (h && h->cors[0]) sb_buf_puts(b, h->cors);
    if (extra) sb_buf_puts(b, extra);
}

static char *put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put(p, lit, sizeof lit - 1)

/* Every publish and history answer goes through here, so it measures the
 * response once and writes it straight into its frame: one allocation, no
 * printf (which was a third of a publish's instructions in callgrind). */
void sb_http_respond(sb_conn_t *c, int status, const char *ctype, const void *body, size_t len,
                     const char *extra)
{
    http_t *h = c->ops == &http_ops ? c->proto : NULL;
    bool close = !h || !h->keep_alive || h->close_after;
    bool with_body = !(h && h->head_only);
    char st[21], cl[21];
    size_t stn = sb_u64_dec(status > 0 ? (uint64_t)status : 500u, st), cln = sb_u64_dec(len, cl);
    const char *reason = sb_http_reason(status);
    size_t rn = strlen(reason), tn = ctype ? strlen(ctype) : 0;
    size_t corsn = h && h->cors[0] ? strlen(h->cors) : 0, en = extra ? strlen(extra) : 0;
    size_t total = (sizeof "HTTP/1.1 " - 1) + stn + 1 + rn + 2 +
                   (ctype ? (sizeof "Content-Type: " - 1) + tn + 2 : 0) + corsn + en +
                   (sizeof "Content-Length: " - 1) + cln + 2 +
                   (close ? sizeof "Connection: close\r\n" - 1 : 0) + 2 + (with_body ? len : 0);
    sb_frame_t *f = sb_frame_new(total);
    if (f) {
        char *p = PUT_LIT(f->data, "HTTP/1.1 ");
        p = put(p, st, stn);
        *p++ = ' ';
        p = put(p, reason, rn);
        p = PUT_LIT(p, "\r\n");
        if (ctype) {
            p = PUT_LIT(p, "Content-Type: ");
            p = put(p, ctype, tn);
            p = PUT_LIT(p, "\r\n");
        }
        p = put(p, h ? h->cors : "", corsn);
        p = put(p, extra ? extra : "", en);
        p = PUT_LIT(p, "Content-Length: ");
        p = put(p, cl, cln);
        p = PUT_LIT(p, "\r\n");
        if (close) p = PUT_LIT(p, "Connection: close\r\n");
        p = PUT_LIT(p, "\r\n");
        if (with_body && len) p = put(p, body, len);
        assert((size_t)(p - f->data) == total);
    }
    sb_conn_send(c, f, NULL);
    count_response(c, status);
    if (close) sb_conn_end(c);
}

void sb_http_stream_head(sb_conn_t *c, int status, const char *ctype, const char *extra)
{
    http_t *h = c->ops == &http_ops ? c->proto : NULL;
    sb_buf_t b = {0};
    response_head(&b, h, status, ctype, extra);
    sb_buf_puts(&b, "\r\n");
    sb_conn_send(c, sb_buf_to_frame(&b), NULL);
    sb_buf_free(&b);
    count_response(c, status);
}

void sb_http_error_msg(sb_conn_t *c, sb_err_t err, const char *message)
{
    const sb_err_info_t *e = sb_err_info(err);
    http_t *h = c->ops == &http_ops ? c->proto : NULL;
    sb_limits_count_error(err);
    if (h && err == SB_ERR_RATE_LIMITED) {
        /* Answer, then read nothing more from this connection until its bucket
         * has a token again: a client that pipelines publishes as fast as it
         * can is slowed down by TCP instead of costing a parse and a 429 each. */
        int64_t wait = sb_limits_publish_wait_ms(c);
        h->throttle_until = c->loop->now_ms + (wait > 0 ? wait : 1);
    }
    /* After these the input framing is unknown or unread: the connection ends. */
    if (h && (e->http_status == 400 || e->http_status == 408 || e->http_status == 413 ||
              e->http_status == 414 || e->http_status == 431 || e->http_status == 411 ||
              e->http_status == 501 || e->http_status == 505) &&
        (err == SB_ERR_BAD_REQUEST_LINE || err == SB_ERR_BAD_HEADER || err == SB_ERR_BAD_CHUNKED ||
         err == SB_ERR_BAD_CONTENT_LENGTH || err == SB_ERR_HEADERS_TOO_LARGE ||
         err == SB_ERR_URI_TOO_LONG || err == SB_ERR_BODY_TOO_LARGE ||
         err == SB_ERR_REQUEST_TIMEOUT || err == SB_ERR_LENGTH_REQUIRED ||
         err == SB_ERR_NOT_IMPLEMENTED || err == SB_ERR_BAD_VERSION || err == SB_ERR_BAD_REQUEST))
        h->close_after = true;
    sb_buf_t b = {0};
    sb_buf_printf(&b, "{\"error\":{\"code\":\"%s\",\"message\":", e->code);
    const char *msg = message ? message : e->message;
    sb_buf_json_str(&b, msg, strlen(msg));
    sb_buf_puts(&b, "}}");
    const char *extra = NULL;
    if (err == SB_ERR_METHOD_NOT_ALLOWED) extra = NULL;
    if (e->http_status == 426) extra = "Sec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n";
    if (e->http_status == 503 || e->http_status == 429) extra = "Retry-After: 1\r\n";
    sb_http_respond(c, e->http_status, "application/json", b.p, b.len, extra);
    sb_buf_free(&b);
}

void sb_http_error(sb_conn_t *c, sb_err_t err) { sb_http_error_msg(c, err, NULL); }

void sb_http_async_begin(sb_conn_t *c)
{
    http_t *h = c->proto;
    h->busy = true;
    /* No sb_conn_pause here: uv_read_stop + uv_read_start cost two epoll_ctl
     * per request (one failing with EEXIST), about 2 us of a durable publish
     * at 1.1 us a syscall. http_on_data stops reading if bytes come while busy. */
}

void sb_http_async_end(sb_conn_t *c)
{
    if (c->ops != &http_ops) return;
    http_t *h = c->proto;
    h->busy = false;
    c->deadline_ms = c->loop->now_ms + sb_cfg.idle_timeout_ms;
    if (c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING)) return;
    sb_conn_resume(c);
    if (c->in_len) sb_conn_reprocess(c);
}

/* ---- origins and CORS ---- */
static bool list_has(const char *list, sb_str_t item)
{
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == ',') p++;
        const char *e = p;
        while (*e && *e != ',') e++;
        const char *t = e;
        while (t > p && t[-1] == ' ') t--;
        if ((size_t)(t - p) == item.len && !memcmp(p, item.p, item.len)) return true;
        if (t - p == 1 && *p == '*') return true;
        p = e;
    }
    return false;
}

bool sb_http_origin_allowed(const sb_http_req_t *req)
{
    if (!sb_cfg.allowed_origins[0]) return true;
    sb_str_t o = sb_http_header(req, "origin");
    if (!o.p) return true; /* not a browser: origin checks protect browsers only */
    return list_has(sb_cfg.allowed_origins, o);
}

void sb_http_cors_headers(const sb_http_req_t *req, char *out, size_t cap)
{
    out[0] = 0;
    if (!sb_cfg.cors_origins[0]) return;
    sb_str_t o = sb_http_header(req, "origin");
    if (!o.p || o.len > 200 || !list_has(sb_cfg.cors_origins, o)) return;
    for (size_t i = 0; i < o.len; i++)
        if ((unsigned char)o.p[i] < 0x21 || o.p[i] == 0x7f) return; /* no header injection */
    snprintf(out, cap,
             "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\n"
             "Access-Control-Expose-Headers: X-Stream-Id, Location\r\n",
             (int)o.len, o.p);
}

/* ---- dispatch ---- */
static int dispatch(sb_conn_t *c, sb_http_req_t *req, sb_str_t body)
{
    http_t *h = c->proto;
    sb_http_ctx_t x = {.req = req, .body = body, .start_us = h->start_us};
    SB_STAT_ADD(c->loop, requests, 1);
    sb_http_cors_headers(req, h->cors, sizeof h->cors);
    if (req->upgrade) {
        if (upgrade_handler) return upgrade_handler(c, &x);
        sb_http_error(c, SB_ERR_NOT_FOUND);
        return SB_HTTP_DONE;
    }
    if (req->method == SB_HTTP_OPTIONS && h->cors[0]) {
        /* CORS preflight for the HTTP API. */
        sb_http_respond(c, 204, NULL, "", 0,
                        "Access-Control-Allow-Methods: GET, POST, DELETE, OPTIONS\r\n"
                        "Access-Control-Allow-Headers: Content-Type, Authorization, "
                        "Idempotency-Key, Last-Event-ID\r\nAccess-Control-Max-Age: 600\r\n");
        return SB_HTTP_DONE;
    }
    route_t *best = NULL;
    bool path_matched = false;
    for (int i = 0; i < nroutes; i++) {
        route_t *r = &routes[i];
        bool m = r->prefix ? (req->path.len >= r->len && !memcmp(req->path.p, r->path, r->len))
                           : (req->path.len == r->len && !memcmp(req->path.p, r->path, r->len));
        if (!m) continue;
        unsigned meth = SB_M(req->method);
        if (req->method == SB_HTTP_HEAD) meth |= SB_M(SB_HTTP_GET);
        if (!(r->methods & meth)) {
            path_matched = true;
            continue;
        }
        if (!best || r->len > best->len) best = r;
    }
    if (!best) {
        sb_http_error(c, path_matched ? SB_ERR_METHOD_NOT_ALLOWED : SB_ERR_NOT_FOUND);
        return SB_HTTP_DONE;
    }
    x.tail = sb_str(req->path.p + best->len, req->path.len - best->len);
    return best->fn(c, &x);
}

static ssize_t http_on_data(sb_conn_t *c, char *buf, size_t len)
{
    http_t *h = c->proto;
    size_t off = 0;
    while (off < len && !h->busy && !(c->flags & (SB_CONN_CLOSING | SB_CONN_ENDING))) {
        if (h->throttle_until > c->loop->now_ms) {
            sb_conn_pause(c); /* over --publish-rate: http_on_tick resumes it */
            break;
        }
        char *data = buf + off;
        size_t avail = len - off;
        sb_http_req_t req;
        sb_err_t why = SB_OK;
        if (!h->in_request) {
            h->in_request = true;
            h->start_us = sb_mono_us();
            c->deadline_ms = c->loop->now_ms + sb_cfg.header_timeout_ms;
        }
        int hl = sb_http_parse_head(data, avail, &req, &why);
        if (hl == SB_AGAIN) break;
        if (hl < 0) {
            h->keep_alive = false;
            sb_http_error(c, why);
            return (ssize_t)len;
        }
        h->keep_alive = req.keep_alive;
        h->head_only = req.method == SB_HTTP_HEAD;
        size_t total;
        sb_str_t body;
        if (req.chunked) {
            char *out = data + hl;
            size_t in_avail = avail - (size_t)hl - h->raw_pos;
            if (req.expect_continue && !h->continue_sent && in_avail == 0) {
                sb_conn_send_copy(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                h->continue_sent = true;
            }
            int r = sb_http_chunked_decode(&h->chunk, data + hl + h->raw_pos, in_avail, out,
                                           &h->body_len, (uint64_t)sb_cfg.max_body);
            if (r == SB_ELIMIT || r == SB_EPARSE) {
                h->keep_alive = false;
                sb_http_error(c, r == SB_ELIMIT ? SB_ERR_BODY_TOO_LARGE : SB_ERR_BAD_CHUNKED);
                return (ssize_t)len;
            }
            h->raw_pos += (uint32_t)r;
            if (!h->chunk.done) break;
            total = (size_t)hl + h->raw_pos;
            body = sb_str(out, h->body_len);
        } else if (req.content_length >= 0) {
            if (req.content_length > sb_cfg.max_body) {
                h->keep_alive = false;
                sb_http_error(c, SB_ERR_BODY_TOO_LARGE);
                return (ssize_t)len;
            }
            total = (size_t)hl + (size_t)req.content_length;
            if (avail < total) {
                if (req.expect_continue && !h->continue_sent) {
                    sb_conn_send_copy(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                    h->continue_sent = true;
                }
                break;
            }
            body = sb_str(data + hl, (size_t)req.content_length);
        } else {
            if (req.method == SB_HTTP_POST || req.method == SB_HTTP_PUT || req.method == SB_HTTP_PATCH) {
                h->keep_alive = false;
                sb_http_error(c, SB_ERR_LENGTH_REQUIRED);
                return (ssize_t)len;
            }
            total = (size_t)hl;
            body = sb_str(data + hl, 0);
        }
        /* A whole request is here: reset the framing state before the handler,
         * which may answer, go async, or take the connection over. */
        memset(&h->chunk, 0, sizeof h->chunk);
        h->raw_pos = 0;
        h->body_len = 0;
        h->continue_sent = false;
        h->in_request = false;
        off += total;
        int r = dispatch(c, &req, body);
        if (r == SB_HTTP_TAKEN) {
            /* The new protocol owns the rest of the input (a WebSocket client may
             * have sent frames right behind its upgrade request). */
            if (off < len && c->ops && !(c->flags & SB_CONN_CLOSING)) sb_conn_reprocess(c);
            return (ssize_t)off;
        }
        if (r == SB_HTTP_DONE && c->ops == &http_ops)
            c->deadline_ms = c->loop->now_ms + sb_cfg.idle_timeout_ms;
    }
    if (h->busy && off < len) {
        /* Input behind a request that is still being answered stays buffered,
         * unparsed; stop reading more until sb_http_async_end resumes, so a
         * pipelining client cannot grow the buffer without bound. */
        sb_conn_pause(c);
    }
    if (off >= len && !h->busy) {
        /* Nothing buffered: the connection is idle until the next request. */
        h->in_request = false;
    }
    return (ssize_t)off;
}

static void http_on_tick(sb_conn_t *c, int64_t now)
{
    http_t *h = c->proto;
    if (h && h->throttle_until && now >= h->throttle_until) {
        h->throttle_until = 0;
        if (!h->busy) {
            sb_conn_resume(c);
            if (c->in_len) sb_conn_reprocess(c);
        }
    }
    if (!h || h->busy || !c->deadline_ms || now < c->deadline_ms) return;
    if (h->in_request || c->in_len) {
        /* Slowloris: the request head (or body) did not arrive in time. */
        h->keep_alive = false;
        sb_http_error(c, SB_ERR_REQUEST_TIMEOUT);
    } else {
        sb_conn_close(c); /* idle keep-alive connection */
    }
}

/* ---- realtime client auth ---- */
bool sb_http_authorize(const sb_http_req_t *req, const sb_str_t *names, size_t n, sb_err_t *why,
                       char *user, size_t user_cap, char *info, size_t info_cap)
{
    if (user_cap) user[0] = 0;
    if (info_cap) info[0] = 0;
    if (!sb_cfg.jwt_secret[0]) return true;
    char tokbuf[8200];
    sb_str_t tok = {0};
    int tl = sb_http_query_get(req->query, "token", tokbuf, sizeof tokbuf);
    if (tl >= 0) {
        tok = sb_str(tokbuf, (size_t)tl);
    } else {
        sb_str_t auth = sb_http_header(req, "authorization");
        if (auth.p && auth.len > 7 && sb_str_ieq(sb_str(auth.p, 7), "bearer "))
            tok = sb_str(auth.p + 7, auth.len - 7);
    }
    if (!tok.len) {
        *why = SB_ERR_UNAUTHORIZED;
        return false;
    }
    sb_token_t t;
    if (sb_auth_jwt_verify(tok, (const uint8_t *)sb_cfg.jwt_secret, strlen(sb_cfg.jwt_secret),
                           sb_now_ms() / 1000, &t, why) < 0)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!sb_auth_can_subscribe(&t, names[i])) {
            sb_token_free(&t);
            *why = SB_ERR_FORBIDDEN;
            return false;
        }
    /* A user id or info that does not fit is refused, never cut: two users
     * whose ids differ only past the cut would become one. */
    if ((user_cap && t.sub && strlen(t.sub) >= user_cap) ||
        (info_cap && t.info_json && strlen(t.info_json) >= info_cap)) {
        sb_token_free(&t);
        *why = SB_ERR_UNAUTHORIZED;
        return false;
    }
    if (t.sub && user_cap) snprintf(user, user_cap, "%s", t.sub);
    if (t.info_json && info_cap) snprintf(info, info_cap, "%s", t.info_json);
    sb_token_free(&t);
    return true;
}
