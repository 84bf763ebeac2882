/* HTTP/1.1 server: request framing (keep-alive, pipelining, Content-Length and
 * chunked bodies, limits, timeouts), routing, and responses. Other layers
 * register their endpoints (sb_http_route) and may take a connection over
 * (SSE streams, WebSocket upgrades). All functions run on the connection's loop. */
#ifndef SB_HTTP_H
#define SB_HTTP_H

#include "http/http_parser.h"
#include "net/net.h"

/* One request as handlers see it. Slices borrow the connection's input and are
 * valid only during the handler call; copy what must outlive it. */
typedef struct {
    sb_http_req_t *req;
    sb_str_t body;    /* decoded body (chunked already undone) */
    sb_str_t tail;    /* the path after the route's prefix */
    uint64_t start_us;
} sb_http_ctx_t;

/* A handler answers with sb_http_respond/sb_http_error (and returns
 * SB_HTTP_DONE), or takes the connection over or answers later (returns
 * SB_HTTP_ASYNC after sb_http_async_begin, or SB_HTTP_TAKEN after replacing
 * the connection's ops). */
enum { SB_HTTP_DONE = 0, SB_HTTP_ASYNC = 1, SB_HTTP_TAKEN = 2 };
typedef int (*sb_http_handler_t)(sb_conn_t *c, sb_http_ctx_t *x);

#define SB_M(m) (1u << (m))
/* Registers a handler for the methods in `methods` (SB_M(SB_HTTP_GET)|...) on
 * `path`: an exact path, or a prefix when it ends with '/'. Longest match wins;
 * a path that matches with another method gets 405. Call before serving. */
void sb_http_route(const char *path, unsigned methods, sb_http_handler_t fn);
/* The handler of every `Upgrade:` request (WebSocket); NULL answers 426/404. */
void sb_http_set_upgrade_handler(sb_http_handler_t fn);

/* Installs HTTP on a freshly accepted connection (the net layer's on_accept). */
void sb_http_accept(sb_conn_t *c);

/* Queues a complete response. `extra` is extra header lines, each ending in
 * "\r\n" (or NULL). Honors keep-alive of the current request. */
void sb_http_respond(sb_conn_t *c, int status, const char *ctype, const void *body, size_t len,
                     const char *extra);
/* Queues the JSON error of errors.def for err; errors that leave the input
 * stream unusable also close the connection after the response. */
void sb_http_error(sb_conn_t *c, sb_err_t err);
/* Same, with a custom human message (still a row of errors.def for the code). */
void sb_http_error_msg(sb_conn_t *c, sb_err_t err, const char *message);
/* Queues a response head for a body of unknown length that ends when the
 * connection closes (streams). */
void sb_http_stream_head(sb_conn_t *c, int status, const char *ctype, const char *extra);

/* For async handlers: no further (pipelined) request is parsed until
 * sb_http_async_end, which resumes them. Reading stops only once input
 * actually arrives meanwhile (it stays buffered): a client that waits for its
 * answer, as nearly all do, costs no epoll_ctl pair per request. A handler
 * whose connection's ops are replaced (long-poll) pauses it itself. */
void sb_http_async_begin(sb_conn_t *c);
void sb_http_async_end(sb_conn_t *c);
/* True while the connection is still HTTP (not taken over) and open. */
bool sb_http_alive(sb_conn_t *c);

/* Frees the HTTP state of a connection whose ops a handler replaced. */
void sb_http_detach(sb_conn_t *c);

/* Reads the request's Origin check against --allowed-origins; false = refuse 403. */
bool sb_http_origin_allowed(const sb_http_req_t *req);
/* Appends CORS headers for this request's Origin (when --cors-origins allows it). */
void sb_http_cors_headers(const sb_http_req_t *req, char *out, size_t cap);

/* Authorizes a realtime client (SSE, WebSocket) from its token (query `token`
 * or Authorization: Bearer): with no --jwt-secret everything is allowed;
 * otherwise the token must verify and allow subscribing to each of names.
 * On success copies the token's sub into user (may be empty) and its info JSON
 * into info (may be empty). Returns false with *why set. */
bool sb_http_authorize(const sb_http_req_t *req, const sb_str_t *names, size_t n, sb_err_t *why,
                       char *user, size_t user_cap, char *info, size_t info_cap);

/* The reason phrase of a status code. */
const char *sb_http_reason(int status);

/* Registers the REST API of channels (publish, history, info, health, metrics). */
void sb_http_api_init(void);
/* Registers the built-in console page at GET / (src/http/console.c); any other path
 * nothing else claims stays a 404. Call once before serving. */
void sb_console_init(void);

#endif
