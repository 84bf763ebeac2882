/* Fuzzes the incremental upstream stream decoders (SSE parser plus the OpenAI
 * and Anthropic extractors) with hostile bytes.
 *
 * The first byte picks the mode: bit 0 the dialect, bit 7 the request builder
 * instead of the decoder (client messages are hostile too), the rest seeds the
 * split. Properties checked beyond "no crash, no leak":
 * - decoding the input whole and decoding it in random pieces give the same
 *   tokens and the same ending (the parser must not care where reads end);
 * - every text token is non-empty, valid UTF-8;
 * - each token encoded in the sse and ai-sdk formats reads back through our
 *   own SSE parser as JSON whose text is the token (the escaping is right). */
#include "ai/ai.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MUST(c)                      \
    do {                             \
        if (!(c)) __builtin_trap();  \
    } while (0)

typedef struct {
    sb_buf_t log; /* kind byte + length + bytes, per token */
    int end;
} run_t;

static void record(run_t *r, const sb_ai_tok_t *t)
{
    uint32_t n = (uint32_t)t->text.len;
    char k = (char)t->kind;
    sb_buf_put(&r->log, &k, 1);
    sb_buf_put(&r->log, &n, sizeof(n));
    sb_buf_put(&r->log, t->text.p, t->text.len);
    if (t->finish) sb_buf_puts(&r->log, t->finish);
}

/* Checks that an encoder's output is SSE whose every data is [DONE] or JSON,
 * and returns the text of the first JSON string found at key (or of
 * "delta"/"text"), so the caller can compare it with what was encoded. */
static void check_encoded(const sb_buf_t *out, const char *key, const sb_str_t want)
{
    sb_ai_sse_t p;
    sb_ai_sse_init(&p, 0);
    size_t off = 0;
    bool seen = false;
    while (off < out->len) {
        sb_ai_sse_event_t ev;
        const char *why;
        int n = sb_ai_sse_parse(&p, out->p + off, out->len - off, &ev, &why);
        MUST(n != SB_EPARSE);
        if (n == SB_AGAIN) break;
        off += (size_t)n;
        if (sb_str_eq(ev.data, "[DONE]")) continue;
        cJSON *j = cJSON_ParseWithLength(ev.data.p, ev.data.len);
        MUST(j != NULL);
        const cJSON *s = cJSON_GetObjectItemCaseSensitive(j, key);
        if (cJSON_IsString(s)) {
            /* A NUL inside the text ends cJSON's string early; compare up to it. */
            size_t n2 = strlen(s->valuestring);
            MUST(n2 <= want.len && memcmp(s->valuestring, want.p, n2) == 0);
            MUST(n2 == want.len || memchr(want.p, '\0', want.len));
            seen = true;
        }
        cJSON_Delete(j);
    }
    MUST(off == out->len);
    MUST(seen);
    sb_ai_sse_free(&p);
}

static void check_text(const sb_ai_tok_t *t)
{
    MUST(t->text.len > 0);
    MUST(sb_utf8_valid((const uint8_t *)t->text.p, t->text.len));
    sb_buf_t out = {0};
    sb_ai_enc_t e;
    sb_ai_enc_init(&e, SB_AI_FMT_SSE, NULL);
    sb_ai_enc_delta(&e, t->text.p, t->text.len, &out);
    check_encoded(&out, "text", t->text);
    out.len = 0;
    sb_ai_enc_init(&e, SB_AI_FMT_AISDK, "m");
    sb_ai_enc_delta(&e, t->text.p, t->text.len, &out);
    check_encoded(&out, "delta", t->text);
    sb_buf_free(&out);
}

static void decode(sb_ai_dialect_t d, const uint8_t *in, size_t len, uint32_t seed, bool checks,
                   run_t *r)
{
    sb_ai_decoder_t dec;
    sb_ai_decoder_init(&dec, d);
    r->end = SB_AGAIN;
    size_t off = 0;
    bool over = false;
    while (off < len && !over) {
        size_t n = len - off;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            n = 1 + (seed >> 16) % 64;
            if (n > len - off) n = len - off;
        }
        /* A private copy of the piece, so a read past it is caught by ASan. */
        char *piece = malloc(n);
        memcpy(piece, in + off, n);
        size_t at = 0;
        while (at < n) {
            sb_ai_tok_t tok;
            const char *why = NULL;
            int rc = sb_ai_decoder_feed(&dec, piece + at, n - at, &tok, &why);
            if (rc == SB_AGAIN) break;
            if (rc < 0) {
                MUST(rc == SB_EPARSE && why);
                r->end = SB_EPARSE;
                over = true;
                break;
            }
            MUST(rc >= 1 && (size_t)rc <= n - at);
            at += (size_t)rc;
            record(r, &tok);
            if (tok.kind == SB_AI_TOK_TEXT && checks) check_text(&tok);
            if (tok.kind == SB_AI_TOK_END || tok.kind == SB_AI_TOK_ERROR) {
                r->end = tok.kind;
                over = true;
                break;
            }
        }
        free(piece);
        off += n;
    }
    if (!over) {
        sb_ai_tok_t tok;
        const char *why = NULL;
        int rc = sb_ai_decoder_end(&dec, &tok, &why);
        MUST(rc == 0 || rc == SB_AGAIN);
        if (rc == 0) {
            MUST(tok.kind == SB_AI_TOK_END || tok.kind == SB_AI_TOK_ERROR);
            record(r, &tok);
            r->end = tok.kind;
        }
    }
    sb_ai_decoder_free(&dec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (mode & 0x80) {
        for (int d = 0; d < 2; d++) {
            char *out = NULL;
            const char *why = NULL;
            int rc = sb_ai_request_body((sb_ai_dialect_t)d, "m", 0, (const char *)data, size, &out,
                                        &why);
            MUST(rc == 0 || rc == SB_EPARSE);
            if (rc == 0) {
                /* What we send is JSON. */
                cJSON *j = cJSON_Parse(out);
                MUST(j != NULL);
                cJSON_Delete(j);
            } else {
                MUST(out == NULL && why != NULL);
            }
            free(out);
        }
        return 0;
    }
    sb_ai_dialect_t d = (mode & 1) ? SB_AI_ANTHROPIC : SB_AI_OPENAI;
    run_t whole = {0}, split = {0};
    decode(d, data, size, 0, true, &whole);
    decode(d, data, size, (uint32_t)(mode >> 1) + 1, false, &split);
    MUST(whole.end == split.end);
    MUST(whole.log.len == split.log.len &&
         (whole.log.len == 0 || memcmp(whole.log.p, split.log.p, whole.log.len) == 0));
    sb_buf_free(&whole.log);
    sb_buf_free(&split.log);
    return 0;
}
