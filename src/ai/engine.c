/* The upstream engine: libcurl's multi interface on a libuv loop.
 *
 * One CURLM per loop does every call of that loop: curl tells us which sockets
 * to watch (CURLMOPT_SOCKETFUNCTION, one uv_poll_t each) and when to wake it
 * (CURLMOPT_TIMERFUNCTION, one uv_timer_t), and we hand readiness back with
 * curl_multi_socket_action. No thread per stream; curl keeps connections to
 * the upstream alive between calls, so most calls skip the TCP and TLS setup.
 *
 * Our own deadlines (first token, silence mid-answer) hang off one more timer
 * per engine that ticks while calls exist, never a timer per call.
 *
 * Re-entrancy: user callbacks run inside curl's callbacks (the body arrives in
 * curl's write callback), where curl forbids removing or adding handles. So
 * every entry from the loop is bracketed by enter()/leave(): while the engine
 * is busy, a cancelled or finished call only goes on the reap list and a call
 * started from a callback goes on the pending list; leave() applies both once
 * curl has returned. This also makes it safe to free a call that a callback of
 * another call cancelled while we walk the list of calls. */
#include "ai/ai.h"

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TICK_MS 50                 /* deadline resolution; far below any timeout */
#define ERRBODY_MAX (64 * 1024)    /* what we keep of a non-2xx body to find its message */
#define MSG_MAX 1024               /* longest error message we hand on */
#define DEF_CONNECT_MS 10000
#define DEF_FIRST_TOKEN_MS 90000
#define DEF_IDLE_MS 60000
#define DEF_MAX_TOKENS 4096

typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    sb_ai_engine_t *eng;
    struct sock *prev, *next;
} sock_t;

struct sb_ai_call {
    sb_ai_engine_t *eng;
    sb_ai_call_t *prev, *next; /* every call the engine holds */
    sb_ai_call_t *pend_next;   /* the pending list (started while the engine was busy) */
    sb_ai_call_t *reap_next;   /* the reap list; a pending call may be on both */
    CURL *easy;
    struct curl_slist *headers;
    char *url, *body;
    sb_ai_dialect_t dialect;
    sb_ai_decoder_t dec;
    sb_ai_cbs_t cbs;
    void *ud;
    sb_buf_t errbody;
    uint64_t t_start, t_last; /* monotonic ms */
    long first_token_ms, idle_ms;
    long status;
    bool added;     /* curl_multi_add_handle succeeded */
    bool final;     /* the final callback ran, or the caller cancelled: no more callbacks */
    bool stop;      /* the transfer must end: the write callback refuses more bytes */
    bool reaping;   /* on the reap list */
    bool started;   /* on_start ran */
    bool got_token; /* the first text (or the end) arrived */
    char errbuf[CURL_ERROR_SIZE];
};

struct sb_ai_engine {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer;
    uv_timer_t tick;
    sb_ai_call_t *calls;
    sb_ai_call_t *pending; /* started while busy: to add to the multi handle */
    sb_ai_call_t *reap;    /* to remove from the multi handle and free */
    sock_t *socks;
    size_t ncalls;         /* calls held, including finished ones still draining */
    size_t active;         /* calls whose final callback has not run */
    int busy;              /* depth of entries from the loop */
    int open_handles;      /* uv handles whose close callback has not run */
    bool tick_on;
    bool freeing;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    /* Once per process, before any loop thread uses curl; never undone, since
     * other threads' engines may still be running when one is freed. */
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static uint64_t now_ms(void) { return sb_mono_us() / 1000; }

/* ---- call lifecycle ----------------------------------------------------- */

static void destroy(sb_ai_call_t *c)
{
    sb_ai_engine_t *e = c->eng;
    if (c->added) curl_multi_remove_handle(e->multi, c->easy);
    curl_easy_cleanup(c->easy);
    curl_slist_free_all(c->headers);
    free(c->url);
    free(c->body);
    sb_ai_decoder_free(&c->dec);
    sb_buf_free(&c->errbody);
    if (c->prev) c->prev->next = c->next;
    else e->calls = c->next;
    if (c->next) c->next->prev = c->prev;
    if (!c->final) e->active--;
    e->ncalls--;
    free(c);
}

static void schedule_reap(sb_ai_call_t *c)
{
    if (c->reaping) return;
    c->reaping = true;
    c->stop = true;
    c->reap_next = c->eng->reap;
    c->eng->reap = c;
}

static void enter(sb_ai_engine_t *e) { e->busy++; }

static void fail(sb_ai_call_t *c, long status, const char *code, const char *msg);

/* Leaving the outermost entry: now curl may be told about added and removed
 * handles. Callbacks that run here (a failed add) may start or cancel calls,
 * hence the loop until both lists are empty. */
static void leave(sb_ai_engine_t *e)
{
    while (e->busy == 1 && (e->pending || e->reap)) {
        while (e->pending) {
            sb_ai_call_t *c = e->pending;
            e->pending = c->pend_next;
            c->pend_next = NULL;
            if (c->reaping) continue; /* cancelled before it was added */
            if (curl_multi_add_handle(e->multi, c->easy) == CURLM_OK) {
                c->added = true;
            } else {
                fail(c, 0, SB_AI_E_INTERNAL, "The upstream call could not be started.");
            }
        }
        while (e->reap) {
            sb_ai_call_t *c = e->reap;
            e->reap = c->reap_next;
            destroy(c);
        }
    }
    e->busy--;
    if (e->busy == 0 && e->ncalls == 0 && e->tick_on) {
        uv_timer_stop(&e->tick);
        e->tick_on = false;
    }
}

/* Copies an error message, cut to MSG_MAX bytes at a character boundary; a
 * message that is not UTF-8 is replaced, since it ends up inside JSON. */
static void clip(char *dst, const char *src, size_t n, const char *fallback)
{
    if (n >= MSG_MAX) {
        n = MSG_MAX - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80) n--;
    }
    if (n == 0 || !sb_utf8_valid((const uint8_t *)src, n)) {
        snprintf(dst, MSG_MAX, "%s", fallback);
        return;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void fail(sb_ai_call_t *c, long status, const char *code, const char *msg)
{
    if (c->final) return;
    c->final = true;
    c->eng->active--;
    /* An error ends the transfer: the connection's state is unknown. */
    c->stop = true;
    char m[MSG_MAX];
    clip(m, msg, strlen(msg), "The upstream call failed.");
    sb_debug("ai upstream error", "status=%ld code=%s", status, code);
    if (c->cbs.on_error) c->cbs.on_error(c->ud, (int)status, code, m);
    schedule_reap(c);
}

static void finish(sb_ai_call_t *c, const char *reason)
{
    if (c->final) return;
    c->final = true;
    c->eng->active--;
    if (c->cbs.on_done) c->cbs.on_done(c->ud, reason);
    /* The transfer goes on to read the rest of the response (at most the
     * chunked terminator), so curl can keep the connection for the next call. */
}

/* ---- the body as it arrives --------------------------------------------- */

static void deliver(sb_ai_call_t *c, const sb_ai_tok_t *tok)
{
    switch (tok->kind) {
    case SB_AI_TOK_NONE:
        break;
    case SB_AI_TOK_TEXT:
        c->got_token = true;
        if (c->cbs.on_delta) c->cbs.on_delta(c->ud, tok->text.p, tok->text.len);
        break;
    case SB_AI_TOK_END:
        c->got_token = true;
        finish(c, tok->finish);
        break;
    case SB_AI_TOK_ERROR: {
        char m[MSG_MAX];
        clip(m, tok->text.p, tok->text.len, "The upstream reported an error in the stream.");
        fail(c, c->status, SB_AI_E_STATUS, m);
        break;
    }
    }
}

static bool ok_status(long s) { return s >= 200 && s <= 299; }

static size_t write_cb(char *p, size_t size, size_t nmemb, void *ud)
{
    sb_ai_call_t *c = ud;
    size_t len = size * nmemb;
    c->t_last = now_ms();
    if (c->stop) return 0; /* cancelled or failed: a short count aborts the transfer */
    if (c->final) return len;
    if (!c->status) curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    if (!ok_status(c->status)) {
        /* An error answer: keep the start of its body to find its message. */
        size_t room = ERRBODY_MAX - c->errbody.len;
        sb_buf_put(&c->errbody, p, len < room ? len : room);
        return len;
    }
    if (!c->started) {
        c->started = true;
        if (c->cbs.on_start) c->cbs.on_start(c->ud);
    }
    size_t off = 0;
    while (off < len && !c->final) {
        sb_ai_tok_t tok;
        const char *why = "an upstream event is malformed";
        int n = sb_ai_decoder_feed(&c->dec, p + off, len - off, &tok, &why);
        if (n == SB_AGAIN) break;
        if (n < 0) {
            fail(c, c->status, SB_AI_E_MALFORMED, why);
            break;
        }
        off += (size_t)n;
        deliver(c, &tok);
    }
    return c->stop ? 0 : len;
}

/* The message of an error answer: OpenAI {"error":{"message"}}, Anthropic
 * {"type":"error","error":{"message"}}, and what compatible servers send
 * ({"error":"..."}, {"message":"..."}, {"detail":"..."}). */
static void status_error(sb_ai_call_t *c, long status)
{
    char fallback[96];
    snprintf(fallback, sizeof(fallback), "The upstream answered HTTP %ld.", status);
    const char *msg = fallback;
    cJSON *j = c->errbody.len ? cJSON_ParseWithLength(c->errbody.p, c->errbody.len) : NULL;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    const cJSON *cands[] = {
        cJSON_GetObjectItemCaseSensitive(err, "message"),
        err,
        cJSON_GetObjectItemCaseSensitive(j, "message"),
        cJSON_GetObjectItemCaseSensitive(j, "detail"),
    };
    for (size_t i = 0; i < sizeof(cands) / sizeof(cands[0]); i++)
        if (cJSON_IsString(cands[i]) && cands[i]->valuestring[0]) {
            msg = cands[i]->valuestring;
            break;
        }
    char m[MSG_MAX];
    clip(m, msg, strlen(msg), fallback);
    cJSON_Delete(j);
    fail(c, status, SB_AI_E_STATUS, m);
}

static bool unreachable(CURLcode rc)
{
    switch (rc) {
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SEND_ERROR:
        return true;
    default:
        return false;
    }
}

/* The transfer is over (curl's CURLMSG_DONE). */
static void complete(sb_ai_call_t *c, CURLcode rc)
{
    if (c->final) return;
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    const char *detail = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
    char m[MSG_MAX];
    if (rc != CURLE_OK && status == 0) {
        bool to = rc == CURLE_OPERATION_TIMEDOUT;
        snprintf(m, sizeof(m), "%s (%s).",
                 to ? "The upstream did not accept the connection in time"
                    : unreachable(rc) ? "The upstream could not be reached"
                                      : "The upstream closed the connection without answering",
                 detail);
        fail(c, 0, to ? SB_AI_E_TIMEOUT : unreachable(rc) ? SB_AI_E_UNREACHABLE : SB_AI_E_RESET, m);
        return;
    }
    if (!ok_status(status)) {
        status_error(c, status);
        return;
    }
    const char *marker = c->dialect == SB_AI_ANTHROPIC ? "message_stop" : "[DONE]";
    if (rc != CURLE_OK) {
        snprintf(m, sizeof(m), "The upstream's stream broke off before %s (%s).", marker, detail);
        fail(c, status, SB_AI_E_RESET, m);
        return;
    }
    sb_ai_tok_t tok;
    const char *why = "an upstream event is malformed";
    int r = sb_ai_decoder_end(&c->dec, &tok, &why);
    if (r == 0) {
        deliver(c, &tok);
    } else if (r == SB_AGAIN) {
        snprintf(m, sizeof(m), "The upstream's stream ended before %s.", marker);
        fail(c, status, SB_AI_E_RESET, m);
    } else {
        fail(c, status, SB_AI_E_MALFORMED, why);
    }
}

static void read_info(sb_ai_engine_t *e)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(e->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        sb_ai_call_t *c = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        CURLcode rc = msg->data.result;
        complete(c, rc);
        schedule_reap(c);
    }
}

/* ---- curl on the loop --------------------------------------------------- */

static void handle_closed(uv_handle_t *h)
{
    sb_ai_engine_t *e = h->data;
    if (--e->open_handles == 0 && e->freeing) free(e);
}

static void sock_closed(uv_handle_t *h)
{
    sock_t *s = h->data;
    sb_ai_engine_t *e = s->eng;
    free(s);
    if (--e->open_handles == 0 && e->freeing) free(e);
}

static void close_sock(sb_ai_engine_t *e, sock_t *s)
{
    if (s->prev) s->prev->next = s->next;
    else e->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, sock_closed);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    sock_t *s = h->data;
    sb_ai_engine_t *e = s->eng;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    int running;
    enter(e);
    curl_multi_socket_action(e->multi, s->fd, flags, &running);
    read_info(e);
    leave(e);
}

static int socket_fn(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    sb_ai_engine_t *e = userp;
    sock_t *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(e->multi, fd, NULL);
            close_sock(e, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s) return -1;
        if (uv_poll_init_socket(e->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->fd = fd;
        s->eng = e;
        s->poll.data = s;
        s->next = e->socks;
        if (e->socks) e->socks->prev = s;
        e->socks = s;
        e->open_handles++;
        curl_multi_assign(e->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    return uv_poll_start(&s->poll, ev, poll_cb) == 0 ? 0 : -1;
}

static void curl_timer_cb(uv_timer_t *t)
{
    sb_ai_engine_t *e = t->data;
    int running;
    enter(e);
    curl_multi_socket_action(e->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    read_info(e);
    leave(e);
}

static int timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    sb_ai_engine_t *e = userp;
    /* curl asks for -1 to stop, 0 for "as soon as possible": the next loop turn. */
    if (timeout_ms < 0) uv_timer_stop(&e->curl_timer);
    else uv_timer_start(&e->curl_timer, curl_timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* The deadlines: no first token in time, or silence mid-answer. A finished
 * call still reading its response's tail is dropped quietly when it stalls. */
static void tick_cb(uv_timer_t *t)
{
    sb_ai_engine_t *e = t->data;
    uint64_t now = now_ms();
    enter(e);
    for (sb_ai_call_t *c = e->calls; c; c = c->next) {
        if (c->reaping || !c->added) continue;
        char m[MSG_MAX];
        if (c->final) {
            if (now - c->t_last >= (uint64_t)c->idle_ms) schedule_reap(c);
        } else if (!c->got_token && now - c->t_start >= (uint64_t)c->first_token_ms) {
            long status = 0;
            curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
            snprintf(m, sizeof(m), "The upstream sent no answer within %ld ms.",
                     c->first_token_ms);
            fail(c, status, SB_AI_E_TIMEOUT, m);
        } else if (c->got_token && now - c->t_last >= (uint64_t)c->idle_ms) {
            snprintf(m, sizeof(m), "The upstream sent nothing for %ld ms mid-answer.", c->idle_ms);
            fail(c, c->status, SB_AI_E_STALLED, m);
        }
    }
    leave(e);
}

/* ---- public ------------------------------------------------------------- */

sb_ai_engine_t *sb_ai_engine_new(uv_loop_t *loop)
{
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK) return NULL;
    sb_ai_engine_t *e = calloc(1, sizeof(*e));
    if (!e) return NULL;
    e->loop = loop;
    e->multi = curl_multi_init();
    if (!e->multi) goto fail;
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETFUNCTION, socket_fn);
    curl_multi_setopt(e->multi, CURLMOPT_SOCKETDATA, e);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERFUNCTION, timer_fn);
    curl_multi_setopt(e->multi, CURLMOPT_TIMERDATA, e);
    uv_timer_init(loop, &e->curl_timer);
    uv_timer_init(loop, &e->tick);
    e->curl_timer.data = e;
    e->tick.data = e;
    e->open_handles = 2;
    return e;
fail:
    free(e);
    return NULL;
}

size_t sb_ai_engine_active(const sb_ai_engine_t *e) { return e->active; }

static bool header_safe(const char *s)
{
    return s && !strpbrk(s, "\r\n");
}

int sb_ai_start(sb_ai_engine_t *e, const sb_ai_upstream_t *up, const char *messages_json,
                size_t len, const sb_ai_cbs_t *cbs, void *ud, sb_ai_call_t **out,
                const char **why)
{
    const char *dummy;
    if (!why) why = &dummy;
    if (out) *out = NULL;
    if (e->freeing) {
        *why = "the engine is shutting down";
        return SB_ELIMIT;
    }
    if (!up->url || (up->api_key && !header_safe(up->api_key))) {
        *why = up->url ? "the API key holds a line break" : "no upstream URL";
        return SB_EPARSE;
    }
    int rc = SB_ENOMEM;
    sb_ai_call_t *c = calloc(1, sizeof(*c));
    if (!c) goto fail;
    c->eng = e;
    c->dialect = up->dialect;
    sb_ai_decoder_init(&c->dec, up->dialect);
    rc = sb_ai_request_body(up->dialect, up->model, up->max_tokens > 0 ? up->max_tokens
                                                                        : DEF_MAX_TOKENS,
                            messages_json, len, &c->body, why);
    if (rc != 0) goto fail;
    rc = SB_ENOMEM;
    *why = "out of memory";
    c->url = sb_ai_endpoint_url(up->dialect, up->url);
    c->easy = curl_easy_init();
    if (!c->url || !c->easy) goto fail;

    char auth[1024];
    const char *hdrs[6];
    size_t nh = 0;
    hdrs[nh++] = "Content-Type: application/json";
    hdrs[nh++] = "Accept: text/event-stream";
    /* No "Expect: 100-continue" round trip before the body: it costs time to first token. */
    hdrs[nh++] = "Expect:";
    if (up->dialect == SB_AI_ANTHROPIC) {
        hdrs[nh++] = "anthropic-version: 2023-06-01";
        if (up->api_key) {
            snprintf(auth, sizeof(auth), "x-api-key: %s", up->api_key);
            hdrs[nh++] = auth;
        }
    } else if (up->api_key) {
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", up->api_key);
        hdrs[nh++] = auth;
    }
    for (size_t i = 0; i < nh; i++) {
        struct curl_slist *l = curl_slist_append(c->headers, hdrs[i]);
        if (!l) goto fail;
        c->headers = l;
    }
    CURL *h = c->easy;
    curl_easy_setopt(h, CURLOPT_URL, c->url);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, c->body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(c->body));
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_PRIVATE, c);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, c->errbuf);
    /* Loop threads must never see SIGALRM or SIGPIPE from curl. */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     up->connect_timeout_ms > 0 ? up->connect_timeout_ms : (long)DEF_CONNECT_MS);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "switchboard/" SB_VERSION);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#endif

    c->cbs = cbs ? *cbs : (sb_ai_cbs_t){0};
    c->ud = ud;
    c->first_token_ms = up->first_token_timeout_ms > 0 ? up->first_token_timeout_ms
                                                       : DEF_FIRST_TOKEN_MS;
    c->idle_ms = up->idle_timeout_ms > 0 ? up->idle_timeout_ms : DEF_IDLE_MS;
    c->t_start = c->t_last = now_ms();

    if (e->busy) {
        /* Inside a callback curl may be running: add the handle on leaving. */
        c->pend_next = e->pending;
        e->pending = c;
    } else if (curl_multi_add_handle(e->multi, c->easy) == CURLM_OK) {
        c->added = true;
    } else {
        *why = "libcurl refused the call";
        goto fail;
    }
    c->next = e->calls;
    if (e->calls) e->calls->prev = c;
    e->calls = c;
    e->ncalls++;
    e->active++;
    if (!e->tick_on) {
        uv_timer_start(&e->tick, tick_cb, TICK_MS, TICK_MS);
        e->tick_on = true;
    }
    if (out) *out = c;
    return 0;
fail:
    if (c) {
        curl_easy_cleanup(c->easy);
        curl_slist_free_all(c->headers);
        free(c->url);
        free(c->body);
        sb_ai_decoder_free(&c->dec);
        free(c);
    }
    return rc;
}

void sb_ai_cancel(sb_ai_call_t *c)
{
    if (!c || c->final) return;
    sb_ai_engine_t *e = c->eng;
    c->final = true;
    e->active--;
    schedule_reap(c);
    if (e->busy == 0) {
        /* Called from outside the engine (a client went away): free it now. */
        enter(e);
        leave(e);
    }
}

void sb_ai_engine_free(sb_ai_engine_t *e)
{
    if (!e) return;
    e->freeing = true;
    /* No callbacks from here on: every call is final before any is removed. */
    for (sb_ai_call_t *c = e->calls; c; c = c->next) {
        if (!c->final) e->active--;
        c->final = c->stop = true;
    }
    e->pending = e->reap = NULL;
    while (e->calls) destroy(e->calls);
    /* Cleanup closes the cached connections; curl may still report sockets
     * through socket_fn while it does, so the multi handle goes before the polls. */
    curl_multi_cleanup(e->multi);
    e->multi = NULL;
    while (e->socks) close_sock(e, e->socks);
    uv_timer_stop(&e->tick);
    uv_timer_stop(&e->curl_timer);
    uv_close((uv_handle_t *)&e->curl_timer, handle_closed);
    uv_close((uv_handle_t *)&e->tick, handle_closed);
}
