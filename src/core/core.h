/* Core: the types every layer shares. No I/O here.
 * strings as slices, refcounted immutable frames, the error table, logging,
 * clocks. Every function here may be called from any loop thread. */
#ifndef SB_CORE_H
#define SB_CORE_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Parser results (see STYLE.md): bytes consumed (>= 0), or one of these. */
#define SB_AGAIN (-1000)  /* need more input */
#define SB_EPARSE (-1001) /* malformed input; the reason is set */
#define SB_ENOMEM (-1002)
#define SB_ELIMIT (-1003) /* a configured limit was hit */

/* A slice of bytes that someone else owns. Never NUL-terminated by contract. */
typedef struct {
    const char *p;
    size_t len;
} sb_str_t;

#define SB_STR(lit) ((sb_str_t){(lit), sizeof(lit) - 1})
static inline sb_str_t sb_str(const char *p, size_t len) { return (sb_str_t){p, len}; }
static inline bool sb_str_eq(sb_str_t a, const char *lit)
{
    size_t n = strlen(lit);
    return a.len == n && memcmp(a.p, lit, n) == 0;
}
bool sb_str_ieq(sb_str_t a, const char *lit); /* ASCII case-insensitive */
/* Parses a decimal uint64 that is the whole slice; false on anything else or overflow. */
bool sb_str_to_u64(sb_str_t s, uint64_t *out);

/* ---- errors ---------------------------------------------------------------- */
typedef enum {
    SB_OK = 0,
#define SB_ERR(name, code, status, ws, msg) SB_ERR_##name,
#include "core/errors.def"
#undef SB_ERR
    SB_ERR__COUNT
} sb_err_t;

typedef struct {
    const char *code;    /* "invalid_channel" */
    int http_status;     /* 400 */
    int ws_close;        /* 1008 */
    const char *message; /* human sentence */
} sb_err_info_t;

/* Returns the static row of errors.def for err (never NULL; SB_OK maps to internal). */
const sb_err_info_t *sb_err_info(sb_err_t err);

/* ---- frames: immutable, refcounted byte strings shared by every receiver ---- */
typedef struct sb_frame {
    atomic_int _refs;
    uint32_t len;
    char data[];
} sb_frame_t;

/* Returns a new frame (one reference) of len bytes, contents uninitialized; NULL on OOM. */
sb_frame_t *sb_frame_new(size_t len);
/* Returns a new frame holding a copy of p[0..len). */
sb_frame_t *sb_frame_copy(const void *p, size_t len);
/* Returns a new frame from printf-style formatting. */
sb_frame_t *sb_frame_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline sb_frame_t *sb_frame_ref(sb_frame_t *f)
{
    atomic_fetch_add_explicit(&f->_refs, 1, memory_order_relaxed);
    return f;
}
void sb_frame_unref(sb_frame_t *f);

/* ---- growable byte buffer (for building responses off the hot path) -------- */
typedef struct {
    char *p;
    size_t len, cap;
    bool oom;
} sb_buf_t;

void sb_buf_put(sb_buf_t *b, const void *p, size_t len);
void sb_buf_puts(sb_buf_t *b, const char *s);
void sb_buf_printf(sb_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included. */
void sb_buf_json_str(sb_buf_t *b, const char *s, size_t len);
/* Takes the buffer's bytes into a new frame and resets the buffer. */
sb_frame_t *sb_buf_to_frame(sb_buf_t *b);
void sb_buf_free(sb_buf_t *b);

/* Writes v in decimal at out (at least 21 bytes), NUL-terminated; returns
 * its length. For hot paths, where snprintf costs ten times as much. */
size_t sb_u64_dec(uint64_t v, char *out);

/* ---- validation ------------------------------------------------------------- */
/* Channel names: 1-128 chars of A-Z a-z 0-9 _ - . : @ (PROTOCOL.md). */
bool sb_valid_channel(sb_str_t name);
/* Event names: 1-64 chars of the same alphabet; no CR/LF can ever reach an SSE line. */
bool sb_valid_event(sb_str_t name);
/* Validates UTF-8 (no overlongs, no surrogates, max U+10FFFF). */
bool sb_utf8_valid(const uint8_t *p, size_t len);

/* ---- clocks ----------------------------------------------------------------- */
int64_t sb_now_ms(void);     /* wall clock, ms since epoch */
uint64_t sb_mono_us(void);   /* monotonic microseconds */

/* A token bucket: `rate` tokens a second, holding at most one second's worth
 * (so a client may burst `rate` operations, then sustain `rate` a second), or
 * `burst` tokens with sb_bucket_take_burst. */
typedef struct {
    double tokens;
    int64_t at_ms;
} sb_bucket_t;

/* Fills the bucket (a new client starts with a full second's burst). */
void sb_bucket_init(sb_bucket_t *b, double rate, int64_t now_ms);
/* Refills by the time elapsed since the last call and takes one token.
 * Returns false, taking nothing, when less than one token is left. A rate of
 * 0 or less means no limit (always true). now_ms must not go backwards by
 * more than the caller tolerates: an earlier time simply adds nothing. */
bool sb_bucket_take(sb_bucket_t *b, double rate, int64_t now_ms);
/* The same with a bucket that holds at most `burst` tokens (at least 1). */
bool sb_bucket_take_burst(sb_bucket_t *b, double rate, double burst, int64_t now_ms);
/* Milliseconds from now_ms until the bucket holds a whole token (0: it does). */
int64_t sb_bucket_wait_ms(const sb_bucket_t *b, double rate, int64_t now_ms);

/* ---- logging: one line per event, logfmt, to stderr ------------------------- */
typedef enum { SB_LOG_DEBUG, SB_LOG_INFO, SB_LOG_WARN, SB_LOG_ERROR } sb_log_level_t;
extern sb_log_level_t sb_log_level;
/* Writes `ts=... level=... msg="..." <kv>`; kv is a printf format of key=value pairs. */
void sb_log(sb_log_level_t lvl, const char *msg, const char *kvfmt, ...)
    __attribute__((format(printf, 3, 4)));
#define sb_debug(msg, ...) \
    do { if (sb_log_level <= SB_LOG_DEBUG) sb_log(SB_LOG_DEBUG, msg, __VA_ARGS__); } while (0)
#define sb_info(msg, ...) sb_log(SB_LOG_INFO, msg, __VA_ARGS__)
#define sb_warn(msg, ...) sb_log(SB_LOG_WARN, msg, __VA_ARGS__)
#define sb_error(msg, ...) sb_log(SB_LOG_ERROR, msg, __VA_ARGS__)
/* Logs at most once per `every_ms` for one call site (a limit hit a million times
 * logs once a second, not a million times). */
#define sb_log_ratelimited(lvl, every_ms, msg, ...)                                   \
    do {                                                                          \
        static _Atomic int64_t last_;                                             \
        int64_t now_ = sb_now_ms(), prev_ = atomic_load(&last_);                  \
        if (now_ - prev_ >= (every_ms) && atomic_compare_exchange_strong(&last_, &prev_, now_)) \
            sb_log(lvl, msg, __VA_ARGS__);                                        \
    } while (0)

/* Random 64 bits from the OS (seeded once); used for jitter and epochs. */
uint64_t sb_random_u64(void);

#endif
