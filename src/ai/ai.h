/* AI token streams, upstream half (see docs/ai.md).
 *
 * Switchboard calls an OpenAI-compatible (`/v1/chat/completions`) or Anthropic
 * (`/v1/messages`) upstream with streaming on, parses the upstream's event
 * stream as the bytes arrive, and hands each piece of text to its caller at
 * once. This header has two kinds of parts:
 *
 * - Pure parts, no I/O: the upstream SSE parser, the per-dialect stream
 *   decoder, the request builder and the output encoders. They may be used on
 *   any thread, each object by one thread at a time.
 * - The engine: libcurl's multi interface driven by one libuv loop (a uv_poll_t
 *   per socket, one uv_timer_t for curl and one for our own deadlines). An
 *   engine belongs to its loop: every function that takes an engine or a call
 *   must be called on the thread that runs that loop.
 *
 * The HTTP endpoint (`POST /v1/ai/chat`) is built on top of this layer; nothing
 * here knows about HTTP servers, channels or clients. */
#ifndef SB_AI_H
#define SB_AI_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "core/core.h"

/* ---- dialects and output formats ----------------------------------------- */

typedef enum {
    SB_AI_OPENAI,    /* POST .../v1/chat/completions, `data: {chunk}` ... `data: [DONE]` */
    SB_AI_ANTHROPIC, /* POST .../v1/messages, typed events ending in `message_stop` */
} sb_ai_dialect_t;

typedef enum {
    SB_AI_FMT_TEXT,  /* bare text chunks, for a fetch + getReader() loop */
    SB_AI_FMT_SSE,   /* `data: {"text":"..."}` per chunk, then `data: [DONE]` */
    SB_AI_FMT_AISDK, /* the AI SDK 5 UI message stream protocol (SSE of JSON parts) */
} sb_ai_format_t;

/* Parses a dialect name ("openai" or "anthropic"). Returns 0 and sets *out, or
 * SB_EPARSE for any other name. */
int sb_ai_dialect_parse(sb_str_t name, sb_ai_dialect_t *out);

/* Parses the `format` of a chat request ("text", "sse" or "ai-sdk"). Returns 0
 * and sets *out, or SB_EPARSE for any other name. */
int sb_ai_format_parse(sb_str_t name, sb_ai_format_t *out);

/* ---- upstream SSE parser (pure, incremental) ------------------------------ */

/* Largest upstream event (or line) we accept. Real events are a few hundred
 * bytes; the cap only stops a hostile or broken upstream from growing memory. */
#define SB_AI_MAX_EVENT (1u << 20)

/* One dispatched event. Both slices point into the parser and stay valid until
 * the next call on it. `event` is empty when the event had no `event:` field
 * (the SSE default, "message"); it is cut to 63 bytes, enough for every name
 * the dialects use. `data` is the event's data lines joined by "\n". */
typedef struct {
    sb_str_t event;
    sb_str_t data;
} sb_ai_sse_event_t;

/* State of the parser: initialize with sb_ai_sse_init, release with
 * sb_ai_sse_free. The fields are private. */
typedef struct {
    sb_buf_t _line;     /* the current line while it spans several inputs */
    sb_buf_t _data;     /* data lines of the event being built */
    char _event[64];    /* the event: field of the event being built */
    size_t _event_len;
    size_t _max;        /* limit for one line and for one event's data */
    bool _has_data;     /* a data: line was seen (its value may be empty) */
    bool _skip_lf;      /* the last line ended in CR: an LF right after belongs to it */
    bool _first_line;   /* a UTF-8 byte order mark may still start the stream */
    bool _reset;        /* an event was handed out: clear it before going on */
} sb_ai_sse_t;

/* Prepares p. max_event caps one line and one event's data (0: SB_AI_MAX_EVENT). */
void sb_ai_sse_init(sb_ai_sse_t *p, size_t max_event);

/* Releases what p holds; p may be initialized again afterwards. */
void sb_ai_sse_free(sb_ai_sse_t *p);

/* Reads buf (borrowed until return) up to the end of the next complete event.
 * Lines may end in CRLF, LF or CR, and the input may be split anywhere, even
 * inside a line ending: bytes that do not complete an event are kept in p.
 * Comments (`:`) and unknown fields are skipped; an event without a data line
 * is not dispatched (per the HTML SSE rules).
 * Returns the number of bytes consumed (>= 1) when *ev holds an event; the
 * caller feeds the rest of buf next. Returns SB_AGAIN when every byte was taken
 * and no event is complete yet, or SB_EPARSE with *why set when a line or an
 * event is larger than the limit (the stream cannot go on after that). */
int sb_ai_sse_parse(sb_ai_sse_t *p, const char *buf, size_t len, sb_ai_sse_event_t *ev,
                    const char **why);

/* At the end of the stream: an event whose last line ended without the blank
 * line that dispatches it is handed out anyway (a leniency for upstreams that
 * close right after `data: [DONE]`). Returns 1 with *ev set, or 0 when nothing
 * was pending. A partial last line counts as a line. */
int sb_ai_sse_finish(sb_ai_sse_t *p, sb_ai_sse_event_t *ev);

/* ---- stream decoder: upstream bytes to tokens (pure, incremental) --------- */

typedef enum {
    SB_AI_TOK_NONE,  /* an event with nothing to relay (ping, role chunk, block start) */
    SB_AI_TOK_TEXT,  /* text: the next piece of the answer, valid UTF-8, never empty */
    SB_AI_TOK_END,   /* the upstream's end marker ([DONE] or message_stop); see finish */
    SB_AI_TOK_ERROR, /* the upstream reported an error in the stream; text is its message */
} sb_ai_tok_kind_t;

/* One decoded event. `text` points into the decoder and stays valid until the
 * next call on it. `finish` (END only) is the reason the answer stopped, in the
 * AI SDK's words: "stop", "length", "content-filter", "tool-calls", "other", or
 * "unknown" when the upstream never said; it is a static string. */
typedef struct {
    sb_ai_tok_kind_t kind;
    sb_str_t text;
    const char *finish;
} sb_ai_tok_t;

/* State of a decoder: sb_ai_decoder_init, then sb_ai_decoder_free. Private fields. */
typedef struct {
    sb_ai_dialect_t _dialect;
    sb_ai_sse_t _sse;
    void *_json;          /* the cJSON tree of the last event; tokens point into it */
    const char *_finish;  /* the finish reason seen so far, normalized */
    bool _over;           /* an end marker or an error was decoded: ignore the rest */
    bool _ended;          /* ... and it was the end marker */
} sb_ai_decoder_t;

void sb_ai_decoder_init(sb_ai_decoder_t *d, sb_ai_dialect_t dialect);
void sb_ai_decoder_free(sb_ai_decoder_t *d);

/* Decodes buf (borrowed until return) up to the next complete upstream event.
 * OpenAI: `choices[0].delta.content` (and `.refusal`) is text, `finish_reason`
 * is kept for the end, `data: [DONE]` is the end marker, a chunk carrying an
 * `error` object is an error. Anthropic: `content_block_delta` with a
 * `text_delta` is text, `message_delta`'s `stop_reason` is kept, `message_stop`
 * is the end marker, `error` is an error; ping and other events are NONE.
 * Returns bytes consumed (>= 1) with *tok set (its kind may be NONE), SB_AGAIN
 * when all of buf was taken without completing an event, or SB_EPARSE with *why
 * set for an event that is not a JSON object, text that is not valid UTF-8, or
 * an oversized event. After END or ERROR the rest of the stream is ignored
 * (SB_AGAIN). */
int sb_ai_decoder_feed(sb_ai_decoder_t *d, const char *buf, size_t len, sb_ai_tok_t *tok,
                       const char **why);

/* At the end of the upstream's bytes. Returns 0 with *tok END when the stream
 * ended with its end marker (possibly in an unterminated last event), 0 with
 * *tok ERROR when an unterminated last event is an error, or SB_AGAIN when it
 * ended before its end marker: the upstream reset or closed early. Text or
 * unparsable bytes in an unterminated last event are what a cut connection
 * leaves, so they are dropped, not reported as malformed. Never SB_EPARSE;
 * why is kept for symmetry with sb_ai_decoder_feed. */
int sb_ai_decoder_end(sb_ai_decoder_t *d, sb_ai_tok_t *tok, const char **why);

/* ---- requests ------------------------------------------------------------- */

/* Builds the upstream request body from the messages of a chat request.
 * messages_json (borrowed) is a JSON array whose items are either plain
 * `{role, content}` messages (content a string, or an array of
 * `{type:"text", text}` parts) or the AI SDK's UI messages
 * (`{id, role, parts:[{type:"text", text}, ...]}`, other part types ignored).
 * Roles are system (or developer), user and assistant; others are skipped, as
 * are messages with no text. Several text parts of one message are joined with
 * a blank line. OpenAI: `{model, messages, stream:true}`. Anthropic:
 * `{model, max_tokens, system?, messages, stream:true}`, every system message
 * goes to the `system` field.
 * Returns 0 and sets *out to a new NUL-terminated string (the caller frees it
 * with free()), SB_EPARSE with *why set for input that is not such an array,
 * text that is not UTF-8, or no user or assistant text at all, or SB_ENOMEM. */
int sb_ai_request_body(sb_ai_dialect_t dialect, const char *model, long max_tokens,
                       const char *messages_json, size_t len, char **out, const char **why);

/* Completes a configured upstream address into the endpoint URL: a URL that
 * already ends in /chat/completions or /messages, or has a query, is kept; a
 * URL ending in /v1 gets the dialect's path; anything else gets /v1 and the
 * path ("https://api.anthropic.com" becomes ".../v1/messages"). Returns a new
 * string (free()), or NULL on OOM. */
char *sb_ai_endpoint_url(sb_ai_dialect_t dialect, const char *url);

/* ---- output encoders (pure) ----------------------------------------------- */

/* The encoding state of one response. Initialize with sb_ai_enc_init; it holds
 * no memory, so there is nothing to free. Private fields. */
typedef struct {
    sb_ai_format_t _fmt;
    char _msg_id[72];   /* ai-sdk: the start part's messageId ("" to leave it out) */
    bool _started;      /* the opening parts were written */
    bool _text_open;    /* ai-sdk: a text-start was written and no text-end yet */
    bool _over;         /* done or error was written: nothing more is encoded */
} sb_ai_enc_t;

/* Prepares e for one response in fmt. message_id (borrowed, may be NULL) names
 * the answer in the ai-sdk `start` part; ids longer than 64 bytes are left out. */
void sb_ai_enc_init(sb_ai_enc_t *e, sb_ai_format_t fmt, const char *message_id);

/* The Content-Type of a response in fmt (a static string). */
const char *sb_ai_content_type(sb_ai_format_t fmt);

/* The one extra response header a format needs, as "name: value" without a
 * line end (ai-sdk: "x-vercel-ai-ui-message-stream: v1"), or NULL. Static. */
const char *sb_ai_extra_header(sb_ai_format_t fmt);

/* Each function below appends the bytes of one step to out (the caller owns
 * the buffer; an allocation failure sets out->oom). The opening parts are
 * written before the first delta, done or error, so calling sb_ai_enc_start is
 * only needed to send them early (ai-sdk: `start` and `start-step`).
 * text: deltas are the bare text; done and error write nothing (a text reader
 * cannot tell them apart from content, so the server ends the body instead).
 * sse: `data: {"text":"..."}`, done `data: [DONE]`, error
 * `event: error` + `data: {"error":{"code","message"}}`.
 * ai-sdk: `text-start` before the first delta, `text-delta` {id, delta},
 * done `text-end`, `finish-step`, `finish`, `data: [DONE]`; error
 * `{"type":"error","errorText":message}` then `data: [DONE]`.
 * text must be valid UTF-8 (what the decoder hands out is). Nothing is written
 * after done or error. */
void sb_ai_enc_start(sb_ai_enc_t *e, sb_buf_t *out);
void sb_ai_enc_delta(sb_ai_enc_t *e, const char *text, size_t len, sb_buf_t *out);
void sb_ai_enc_done(sb_ai_enc_t *e, const char *finish_reason, sb_buf_t *out);
void sb_ai_enc_error(sb_ai_enc_t *e, const char *code, const char *message, sb_buf_t *out);

/* ---- the engine: upstream calls on a uv loop ------------------------------ */

/* The error codes on_error reports (snake_case, like PROTOCOL.md's codes). */
#define SB_AI_E_UNREACHABLE "upstream_unreachable" /* refused, DNS, TLS: no HTTP answer */
#define SB_AI_E_TIMEOUT "upstream_timeout"         /* no first token before the deadline */
#define SB_AI_E_STALLED "upstream_stalled"         /* nothing arrived mid-answer for too long */
#define SB_AI_E_STATUS "upstream_error"            /* non-2xx answer, or an error event */
#define SB_AI_E_RESET "upstream_reset"             /* the stream ended before its end marker */
#define SB_AI_E_MALFORMED "upstream_malformed"     /* an event we cannot read */
#define SB_AI_E_INTERNAL "internal_error"          /* our side failed (memory, libcurl) */

/* Where and how to call the upstream. Every string is borrowed by
 * sb_ai_start until it returns (the call keeps its own copies). A timeout of 0
 * picks the default in brackets. */
typedef struct {
    const char *url;             /* base or endpoint URL; see sb_ai_endpoint_url */
    const char *api_key;         /* Bearer token (OpenAI) or x-api-key (Anthropic); may be NULL */
    const char *model;
    sb_ai_dialect_t dialect;
    long max_tokens;             /* Anthropic's required max_tokens [4096] */
    long connect_timeout_ms;     /* TCP + TLS connect [10 s] */
    long first_token_timeout_ms; /* from start until the first text or the end [90 s] */
    long idle_timeout_ms;        /* longest silence after the first token [60 s] */
} sb_ai_upstream_t;

/* What a call reports, always on the engine's loop and never from inside
 * sb_ai_start. Exactly one of on_done and on_error is called, exactly once,
 * unless the call is cancelled first; nothing is called after it, nor after
 * sb_ai_cancel returns. Any callback may be NULL. `text` and the strings are
 * borrowed for the duration of the callback. A callback may call sb_ai_cancel
 * (on any call) and sb_ai_start, never sb_ai_engine_free. */
typedef struct {
    /* The upstream answered 2xx and its body began. */
    void (*on_start)(void *ud);
    /* The next piece of text, valid UTF-8, never empty, as soon as it was decoded. */
    void (*on_delta)(void *ud, const char *text, size_t len);
    /* The upstream's end marker arrived; finish_reason as in sb_ai_tok_t. */
    void (*on_done)(void *ud, const char *finish_reason);
    /* The call failed. upstream_status is the upstream's HTTP status, 0 when no
     * answer arrived. code is one of SB_AI_E_*; message is the upstream's own
     * error message when it sent one, else a sentence of ours (valid UTF-8). */
    void (*on_error)(void *ud, int upstream_status, const char *code, const char *message);
} sb_ai_cbs_t;

typedef struct sb_ai_engine sb_ai_engine_t;
typedef struct sb_ai_call sb_ai_call_t;

/* Returns a new engine (one curl multi handle) driven by loop, or NULL when
 * libcurl or memory fails. One engine per loop; loop's thread only. */
sb_ai_engine_t *sb_ai_engine_new(uv_loop_t *loop);

/* Starts a call: builds the request from messages_json (see
 * sb_ai_request_body), connects and streams. up, messages_json and cbs are
 * borrowed until return; ud is handed to the callbacks untouched. On success
 * returns 0 and sets *out (may be NULL) to the call, which stays valid until
 * its final callback has returned or sb_ai_cancel was called on it. Returns
 * SB_EPARSE with *why set (why may be NULL) when the messages are unusable,
 * SB_ENOMEM or SB_ELIMIT (engine being freed); no callback follows a failure.
 * Loop thread only. */
int sb_ai_start(sb_ai_engine_t *e, const sb_ai_upstream_t *up, const char *messages_json,
                size_t len, const sb_ai_cbs_t *cbs, void *ud, sb_ai_call_t **out,
                const char **why);

/* Stops a call now: no callback of it runs after this returns, and its
 * connection is closed. A no-op inside the call's own final callback. Loop
 * thread only; allowed inside callbacks. */
void sb_ai_cancel(sb_ai_call_t *c);

/* The number of calls that have not yet had their final callback. */
size_t sb_ai_engine_active(const sb_ai_engine_t *e);

/* Cancels every call (no callbacks), closes the engine's handles and frees it
 * once their close callbacks have run: the caller runs the loop afterwards
 * (uv_run) before closing it. Never call it from inside an engine callback.
 * Loop thread only. */
void sb_ai_engine_free(sb_ai_engine_t *e);

/* ---- the demo generator (demo.c) ----------------------------------------- */

/* A stand-in for an upstream (--ai-demo): streams a fixed answer that names
 * itself and quotes the question, a word every 15-40 ms after a 150 ms pause
 * (one to two seconds per answer). It has the engine's contract: the same
 * callbacks, exactly one on_done ("stop") unless cancelled, nothing called
 * from inside sb_ai_demo_start, cancel allowed inside callbacks and a no-op
 * after the final one. One generator per loop (one uv_timer_t paces all its
 * calls); loop thread only. */
typedef struct sb_ai_demo sb_ai_demo_t;
typedef struct sb_ai_demo_call sb_ai_demo_call_t;

/* Returns a new generator on loop, or NULL on OOM. */
sb_ai_demo_t *sb_ai_demo_new(uv_loop_t *loop);
/* Starts an answer to messages_json (borrowed until return; checked like
 * sb_ai_start checks it). Returns 0 and sets *out (may be NULL), SB_EPARSE
 * with *why set for unusable messages, or SB_ENOMEM. */
int sb_ai_demo_start(sb_ai_demo_t *d, const char *messages_json, size_t len, const sb_ai_cbs_t *cbs,
                     void *ud, sb_ai_demo_call_t **out, const char **why);
/* Stops an answer: no callback of it runs after this returns. */
void sb_ai_demo_cancel(sb_ai_demo_call_t *c);
/* Answers not yet finished. */
size_t sb_ai_demo_active(const sb_ai_demo_t *d);
/* Cancels everything without callbacks and frees the generator once its
 * timer closed (run the loop afterwards). Never from inside a callback. */
void sb_ai_demo_free(sb_ai_demo_t *d);

/* ---- the chat endpoint (relay.c) ----------------------------------------- */

/* The HTTP side of AI streams, built on everything above (docs/ai.md "The
 * relay"): POST /v1/ai/chat, GET /v1/ai/chats/{chatId}/stream (also under
 * /v1/ai/chat/{chatId}/stream, the AI SDK transport's default), and
 * DELETE /v1/ai/streams/{id}. Every stream is channel `ai:{id}` with events
 * `delta` {"text"}, then `done` {"reason":"complete","finishReason"} or
 * {"reason":"stopped","by":"request"|"disconnect"}, or `error`
 * {"status","code","message"}; its deltas are compacted as it goes
 * (sb_broker_compact_text). Per-loop state (engine or demo generator) is made
 * on first use and freed by a sb_net_on_stop hook.
 * Reads the --ai-* flags and, from the environment, the upstream timeouts
 * SWITCHBOARD_AI_CONNECT_TIMEOUT, SWITCHBOARD_AI_FIRST_TOKEN_TIMEOUT and
 * SWITCHBOARD_AI_IDLE_TIMEOUT (durations such as "90s"). Returns 0, or -1
 * after logging why (a bad flag value). Main thread, before the loops start. */
int sb_ai_relay_init(void);

#endif
