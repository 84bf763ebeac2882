#define _GNU_SOURCE
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

sb_log_level_t sb_log_level = SB_LOG_INFO;

static const sb_err_info_t err_table[] = {
    {"internal_error", 500, 1011, "The server failed to handle the request."},
#define SB_ERR(name, code, status, ws, msg) {code, status, ws, msg},
#include "core/errors.def"
#undef SB_ERR
};

const sb_err_info_t *sb_err_info(sb_err_t err)
{
    if (err <= SB_OK || err >= SB_ERR__COUNT) return &err_table[0];
    return &err_table[err];
}

bool sb_str_ieq(sb_str_t a, const char *lit)
{
    size_t n = strlen(lit);
    if (a.len != n) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char x = (unsigned char)a.p[i], y = (unsigned char)lit[i];
        if (x >= 'A' && x <= 'Z') x += 32;
        if (y >= 'A' && y <= 'Z') y += 32;
        if (x != y) return false;
    }
    return true;
}

bool sb_str_to_u64(sb_str_t s, uint64_t *out)
{
    if (s.len == 0 || s.len > 20) return false;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        unsigned d = (unsigned char)s.p[i] - '0';
        if (d > 9) return false;
        if (v > (UINT64_MAX - d) / 10) return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

/* ---- frames ---- */
sb_frame_t *sb_frame_new(size_t len)
{
    if (len > UINT32_MAX) return NULL;
    sb_frame_t *f = malloc(sizeof(*f) + len + 1);
    if (!f) return NULL;
    atomic_init(&f->_refs, 1);
    f->len = (uint32_t)len;
    f->data[len] = 0; /* convenient for logging; not part of the frame */
    return f;
}

sb_frame_t *sb_frame_copy(const void *p, size_t len)
{
    sb_frame_t *f = sb_frame_new(len);
    if (f && len) memcpy(f->data, p, len);
    return f;
}

sb_frame_t *sb_frame_printf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    sb_frame_t *f = sb_frame_new((size_t)n);
    if (!f) return NULL;
    va_start(ap, fmt);
    vsnprintf(f->data, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return f;
}

void sb_frame_unref(sb_frame_t *f)
{
    if (f && atomic_fetch_sub_explicit(&f->_refs, 1, memory_order_acq_rel) == 1) free(f);
}

/* ---- buf ---- */
static bool buf_grow(sb_buf_t *b, size_t extra)
{
    if (b->oom) return false;
    if (b->len + extra <= b->cap) return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

void sb_buf_put(sb_buf_t *b, const void *p, size_t len)
{
    if (!len || !buf_grow(b, len)) return;
    memcpy(b->p + b->len, p, len);
    b->len += len;
}

void sb_buf_puts(sb_buf_t *b, const char *s) { sb_buf_put(b, s, strlen(s)); }

void sb_buf_printf(sb_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !buf_grow(b, (size_t)n + 1)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void sb_buf_json_str(sb_buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    if (!buf_grow(b, len + 2)) return;
    b->p[b->len++] = '"';
    size_t run = 0; /* bytes copied verbatim in one go */
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        sb_buf_put(b, s + run, i - run);
        run = i + 1;
        char esc[7] = {'\\', 0};
        size_t n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            esc[1] = 'u'; esc[2] = '0'; esc[3] = '0';
            esc[4] = hex[c >> 4]; esc[5] = hex[c & 15];
            n = 6;
        }
        sb_buf_put(b, esc, n);
    }
    sb_buf_put(b, s + run, len - run);
    sb_buf_put(b, "\"", 1);
}

sb_frame_t *sb_buf_to_frame(sb_buf_t *b)
{
    sb_frame_t *f = b->oom ? NULL : sb_frame_copy(b->p, b->len);
    b->len = 0;
    return f;
}

void sb_buf_free(sb_buf_t *b)
{
    free(b->p);
    *b = (sb_buf_t){0};
}

size_t sb_u64_dec(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    out[n] = 0;
    return n;
}

/* ---- validation ---- */
static bool name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.' || c == ':' || c == '@';
}

bool sb_valid_channel(sb_str_t n)
{
    if (n.len < 1 || n.len > 128) return false;
    for (size_t i = 0; i < n.len; i++)
        if (!name_char((unsigned char)n.p[i])) return false;
    return true;
}

bool sb_valid_event(sb_str_t n)
{
    if (n.len < 1 || n.len > 64) return false;
    for (size_t i = 0; i < n.len; i++)
        if (!name_char((unsigned char)n.p[i])) return false;
    return true;
}

bool sb_utf8_valid(const uint8_t *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) {
            /* ASCII eight bytes at a time: most text is nothing else. */
            i++;
            while (len - i >= 8) {
                uint64_t x;
                memcpy(&x, s + i, 8);
                if (x & 0x8080808080808080ull) break;
                i += 8;
            }
            continue;
        }
        size_t n;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
        else return false;
        if (len - i <= n) return false;
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF))) return false;
        if (cp >= 0xD800 && cp <= 0xDFFF) return false;
        i += n + 1;
    }
    return true;
}

/* ---- clocks ---- */
int64_t sb_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- token buckets ---- */
void sb_bucket_init(sb_bucket_t *b, double rate, int64_t now_ms)
{
    b->tokens = rate > 0 ? rate : 0;
    b->at_ms = now_ms;
}

bool sb_bucket_take_burst(sb_bucket_t *b, double rate, double burst, int64_t now_ms)
{
    if (rate <= 0) return true;
    if (burst < 1) burst = 1;
    if (now_ms > b->at_ms) {
        b->tokens += (double)(now_ms - b->at_ms) * rate / 1000.0;
        if (b->tokens > burst) b->tokens = burst;
        b->at_ms = now_ms;
    }
    if (b->tokens < 1) return false;
    b->tokens -= 1;
    return true;
}

bool sb_bucket_take(sb_bucket_t *b, double rate, int64_t now_ms)
{
    return sb_bucket_take_burst(b, rate, rate, now_ms); /* a burst of one second */
}

int64_t sb_bucket_wait_ms(const sb_bucket_t *b, double rate, int64_t now_ms)
{
    if (rate <= 0) return 0;
    double t = b->tokens;
    if (now_ms > b->at_ms) t += (double)(now_ms - b->at_ms) * rate / 1000.0;
    if (t >= 1) return 0;
    return (int64_t)((1.0 - t) * 1000.0 / rate) + 1;
}

uint64_t sb_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ---- logging ---- */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

void sb_log(sb_log_level_t lvl, const char *msg, const char *kvfmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (lvl < sb_log_level) return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s msg=\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, names[lvl], msg);
    if (n < 0) return;
    if (kvfmt && *kvfmt && (size_t)n < sizeof line - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, kvfmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, kvfmt, ap);
        va_end(ap);
        if (m > 0) n += m;
        if ((size_t)n > sizeof line - 2) n = sizeof line - 2;
    }
    line[n++] = '\n';
    pthread_mutex_lock(&log_mu);
    fwrite(line, 1, (size_t)n, stderr);
    fflush(stderr);
    pthread_mutex_unlock(&log_mu);
}

uint64_t sb_random_u64(void)
{
    uint64_t v;
    if (getrandom(&v, sizeof v, 0) == sizeof v) return v;
    return (uint64_t)sb_mono_us() * 0x9E3779B97F4A7C15ull;
}
