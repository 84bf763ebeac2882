/* JSON scanning without a tree (see json.h). One pass, no allocation, no
 * recursion: the nesting is a bit stack (object or array per level). */
#include "core/json.h"

#include <stdint.h>
#include <string.h>

/* Eight bytes at a time (SWAR): a byte of x is flagged in the result when
 * it is '"', '\\' or below 0x20. Flags above the lowest one may be false
 * (borrows), the lowest is exact, and on a little-endian machine it is the
 * first such byte. */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "json.c's string scan assumes a little-endian machine"
#endif
#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull
static inline uint64_t zero_bytes(uint64_t v) { return (v - ONES) & ~v & HIGHS; }

/* The first index at or after i of a byte that ends a run of plain string
 * bytes ('"', '\\', a control character), or n. */
static size_t string_run(const char *p, size_t n, size_t i)
{
    while (n - i >= 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        uint64_t t = zero_bytes(x ^ (ONES * '"')) | zero_bytes(x ^ (ONES * '\\')) |
                     ((x - ONES * 0x20) & ~x & HIGHS);
        if (t) return i + ((size_t)__builtin_ctzll(t) >> 3);
        i += 8;
    }
    while (i < n && (unsigned char)p[i] >= 0x20 && p[i] != '"' && p[i] != '\\') i++;
    return i;
}

static size_t skip_ws(const char *p, size_t n, size_t i)
{
    while (i < n && (p[i] == ' ' || p[i] == '\t' || p[i] == '\n' || p[i] == '\r')) i++;
    return i;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The code unit of the 4 hex digits at p[i..i+4), or -1. */
static long hex4(const char *p, size_t n, size_t i)
{
    if (i > n || n - i < 4) return -1;
    long v = 0;
    for (size_t k = 0; k < 4; k++) {
        int h = hexval(p[i + k]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    return v;
}

/* The string literal at p[i] == '"': returns the index after its closing
 * quote, or 0 when it is not valid. *esc is set when it holds an escape. */
static size_t scan_string(const char *p, size_t n, size_t i, bool *esc)
{
    i++;
    while ((i = string_run(p, n, i)) < n) {
        unsigned char c = (unsigned char)p[i];
        if (c == '"') return i + 1;
        if (c < 0x20) return 0;
        *esc = true; /* a backslash */
        if (++i >= n) return 0;
        c = (unsigned char)p[i];
        if (c == 'u') {
            long u = hex4(p, n, i + 1);
            if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return 0;
            i += 5;
            if (u >= 0xD800 && u <= 0xDBFF) { /* a high surrogate needs its low half */
                if (n - i < 6 || p[i] != '\\' || p[i + 1] != 'u') return 0;
                long lo = hex4(p, n, i + 2);
                if (lo < 0xDC00 || lo > 0xDFFF) return 0;
                i += 6;
            }
            continue;
        }
        if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n' && c != 'r' &&
            c != 't')
            return 0;
        i++;
    }
    return 0;
}

static bool digit(char c) { return c >= '0' && c <= '9'; }

/* The number at p[i]: returns the index after it, or 0. */
static size_t scan_number(const char *p, size_t n, size_t i)
{
    if (p[i] == '-') i++;
    if (i >= n) return 0;
    if (p[i] == '0') {
        i++;
    } else if (p[i] >= '1' && p[i] <= '9') {
        while (i < n && digit(p[i])) i++;
    } else {
        return 0;
    }
    if (i < n && p[i] == '.') {
        size_t d = ++i;
        while (i < n && digit(p[i])) i++;
        if (i == d) return 0;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-')) i++;
        size_t d = i;
        while (i < n && digit(p[i])) i++;
        if (i == d) return 0;
    }
    return i;
}

static size_t scan_literal(const char *p, size_t n, size_t i, const char *lit, size_t ln)
{
    return n - i >= ln && memcmp(p + i, lit, ln) == 0 ? i + ln : 0;
}

typedef struct {
    const char *const *keys;
    size_t nkeys;
    int member;     /* index in keys of the top-level member being scanned, or -1 */
    bool pending;   /* a top-level member's value is being scanned */
    size_t mstart;  /* where that value starts */
} members_t;

/* A member name at p[i] (then ':' and the whitespace around it) of an object
 * at the given depth. Returns the index of its value, or 0. */
static size_t member_name(const char *p, size_t n, size_t i, size_t depth, members_t *m)
{
    if (i >= n || p[i] != '"') return 0;
    bool esc = false;
    size_t end = scan_string(p, n, i, &esc);
    if (!end) return 0;
    if (depth == 1) {
        m->member = -1;
        char buf[64];
        const char *name = p + i + 1;
        long nl = (long)(end - i - 2);
        if (esc) {
            nl = sb_json_unescape(p + i, end - i, buf, sizeof buf);
            name = buf;
        }
        for (size_t k = 0; nl >= 0 && k < m->nkeys; k++)
            if (strlen(m->keys[k]) == (size_t)nl && memcmp(m->keys[k], name, (size_t)nl) == 0) {
                m->member = (int)k;
                break;
            }
    }
    i = skip_ws(p, n, end);
    if (i >= n || p[i] != ':') return 0;
    i = skip_ws(p, n, i + 1);
    if (depth == 1) {
        m->pending = true;
        m->mstart = i;
    }
    return i;
}

bool sb_json_scan(const char *p, size_t len, const char *const *keys, sb_str_t *vals, size_t nkeys,
                  bool *is_object)
{
    uint8_t obj[SB_JSON_MAX_DEPTH / 8]; /* bit d: level d is an object */
    size_t depth = 0;
    members_t m = {.keys = keys, .nkeys = nkeys, .member = -1};
    for (size_t k = 0; k < nkeys; k++) vals[k] = (sb_str_t){NULL, 0};
    size_t i = skip_ws(p, len, 0);
    *is_object = i < len && p[i] == '{';
    for (;;) {
        /* A value starts at i. */
        if (i >= len) return false;
        char c = p[i];
        if (c == '{' || c == '[') {
            if (depth == SB_JSON_MAX_DEPTH) return false;
            if (c == '{') obj[depth / 8] |= (uint8_t)(1u << (depth % 8));
            else obj[depth / 8] &= (uint8_t)~(1u << (depth % 8));
            depth++;
            i = skip_ws(p, len, i + 1);
            if (i < len && p[i] == (c == '{' ? '}' : ']')) {
                i++;
                depth--; /* empty: a value that has ended */
            } else if (c == '{') {
                if (!(i = member_name(p, len, i, depth, &m))) return false;
                continue;
            } else {
                continue;
            }
        } else if (c == '"') {
            bool esc = false;
            if (!(i = scan_string(p, len, i, &esc))) return false;
        } else if (c == '-' || digit(c)) {
            if (!(i = scan_number(p, len, i))) return false;
        } else if (c == 't') {
            if (!(i = scan_literal(p, len, i, "true", 4))) return false;
        } else if (c == 'f') {
            if (!(i = scan_literal(p, len, i, "false", 5))) return false;
        } else if (c == 'n') {
            if (!(i = scan_literal(p, len, i, "null", 4))) return false;
        } else {
            return false;
        }
        /* A value ended at i: note it if it is a top-level member's, then
         * close every container it ends, up to the next value. */
        for (;;) {
            if (depth == 1 && m.pending) {
                if (m.member >= 0 && !vals[m.member].p)
                    vals[m.member] = (sb_str_t){p + m.mstart, i - m.mstart};
                m.pending = false;
            }
            i = skip_ws(p, len, i);
            if (depth == 0) return i == len;
            bool in_obj = obj[(depth - 1) / 8] & (1u << ((depth - 1) % 8));
            if (i >= len) return false;
            if (p[i] == ',') {
                i = skip_ws(p, len, i + 1);
                if (in_obj && !(i = member_name(p, len, i, depth, &m))) return false;
                break;
            }
            if (p[i] != (in_obj ? '}' : ']')) return false;
            i++;
            depth--;
        }
    }
}

size_t sb_json_minify(const char *p, size_t len, char *out)
{
    size_t o = 0;
    bool in_str = false;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (in_str) {
            /* Plain bytes in one copy, up to the quote or escape that stops them. */
            size_t j = string_run(p, len, i);
            memcpy(out + o, p + i, j - i);
            o += j - i;
            if (j >= len) break;
            out[o++] = p[j];
            if (p[j] == '\\' && j + 1 < len) out[o++] = p[++j];
            else if (p[j] == '"') in_str = false;
            i = j;
            continue;
        }
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r') continue;
        if (c == '"') in_str = true;
        out[o++] = c;
    }
    return o;
}

long sb_json_unescape(const char *lit, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 1; i + 1 < len; i++) {
        unsigned char c = (unsigned char)lit[i];
        if (c != '\\') {
            if (o >= cap) return -1;
            out[o++] = (char)c;
            continue;
        }
        uint32_t cp;
        switch (c = (unsigned char)lit[++i]) {
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            long u = hex4(lit, len, i + 1);
            if (u < 0) return -1;
            cp = (uint32_t)u;
            i += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo = hex4(lit, len, i + 3);
                if (lo < 0) return -1;
                cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
                i += 6;
            }
            break;
        }
        default: cp = c; /* " \ / */
        }
        if (cp == 0) return -1;
        size_t need = cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
        if (cap - o < need) return -1;
        if (need == 1) {
            out[o++] = (char)cp;
        } else if (need == 2) {
            out[o++] = (char)(0xC0 | (cp >> 6));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else if (need == 3) {
            out[o++] = (char)(0xE0 | (cp >> 12));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        } else {
            out[o++] = (char)(0xF0 | (cp >> 18));
            out[o++] = (char)(0x80 | ((cp >> 12) & 0x3F));
            out[o++] = (char)(0x80 | ((cp >> 6) & 0x3F));
            out[o++] = (char)(0x80 | (cp & 0x3F));
        }
    }
    return (long)o;
}
