/* The stream decoder: each dialect's extractor on crafted events, and the
 * recorded transcripts decoded whole, byte by byte, in random pieces, with
 * other line ends, and cut at every split point that can matter. */
#include "ai/ai.h"
#include "testlib.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixtures ------------------------------------------------------------ */

static char root[1024];

static void find_root(void)
{
    const char *env = getenv("SB_SOURCE_DIR");
    if (env) {
        snprintf(root, sizeof(root), "%s", env);
        return;
    }
    /* CMake compiles with absolute paths: the tree is where this file is. */
    const char *f = __FILE__, *cut = strstr(f, "/tests/unit/ai/");
    snprintf(root, sizeof(root), "%.*s", cut ? (int)(cut - f) : 1, cut ? f : ".");
}

static char *slurp(const char *name, size_t *len)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/tests/integration/fixtures/transcripts/%s", root, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (!p || fread(p, 1, (size_t)n, f) != (size_t)n) exit(1);
    p[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return p;
}

/* ---- running the decoder ------------------------------------------------- */

typedef struct {
    sb_buf_t text;    /* the concatenated text */
    sb_buf_t toks;    /* every token, "T:<text>" etc., separated by \x01 */
    const char *finish;
    int end;          /* 0 END, 1 ERROR, SB_AGAIN (no end marker), SB_EPARSE */
    int ntext;
} result_t;

static void res_free(result_t *r)
{
    sb_buf_free(&r->text);
    sb_buf_free(&r->toks);
}

static bool take(result_t *r, const sb_ai_tok_t *t)
{
    switch (t->kind) {
    case SB_AI_TOK_NONE:
        return false;
    case SB_AI_TOK_TEXT:
        CHECK(t->text.len > 0);
        CHECK(sb_utf8_valid((const uint8_t *)t->text.p, t->text.len));
        sb_buf_put(&r->text, t->text.p, t->text.len);
        sb_buf_puts(&r->toks, "T:");
        sb_buf_put(&r->toks, t->text.p, t->text.len);
        sb_buf_puts(&r->toks, "\x01");
        r->ntext++;
        return false;
    case SB_AI_TOK_END:
        r->end = 0;
        r->finish = t->finish;
        sb_buf_printf(&r->toks, "END:%s\x01", t->finish);
        return true;
    case SB_AI_TOK_ERROR:
        r->end = 1;
        sb_buf_puts(&r->toks, "ERR:");
        sb_buf_put(&r->toks, t->text.p, t->text.len);
        sb_buf_puts(&r->toks, "\x01");
        return true;
    }
    return false;
}

/* Decodes in pieces of the given lengths (the last piece takes the rest),
 * each flush against a guard page when guard is set. */
static void decode(sb_ai_dialect_t d, const char *in, size_t len, const size_t *pieces,
                   size_t npieces, bool guard, result_t *r)
{
    memset(r, 0, sizeof(*r));
    r->end = SB_AGAIN;
    sb_ai_decoder_t dec;
    sb_ai_decoder_init(&dec, d);
    size_t off = 0;
    bool over = false;
    for (size_t k = 0; off < len && !over; k++) {
        size_t n = k < npieces ? pieces[k] : len - off;
        if (n > len - off) n = len - off;
        char *g = guard ? tl_guarded(in + off, n) : (char *)in + off;
        size_t at = 0;
        while (at < n) {
            sb_ai_tok_t tok;
            const char *why = NULL;
            int rc = sb_ai_decoder_feed(&dec, g + at, n - at, &tok, &why);
            if (rc == SB_AGAIN) break;
            if (rc < 0) {
                CHECK(why != NULL);
                r->end = SB_EPARSE;
                over = true;
                break;
            }
            at += (size_t)rc;
            if (take(r, &tok)) over = true;
        }
        if (guard) tl_guard_free(g);
        off += n;
    }
    if (!over) {
        sb_ai_tok_t tok;
        const char *why = NULL;
        int rc = sb_ai_decoder_end(&dec, &tok, &why);
        if (rc == 0) take(r, &tok);
        else r->end = rc;
    }
    sb_ai_decoder_free(&dec);
}

static void decode_str(sb_ai_dialect_t d, const char *in, result_t *r)
{
    decode(d, in, strlen(in), NULL, 0, true, r);
}

/* ---- crafted events ------------------------------------------------------ */

#define OAI(delta, fin) \
    "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":" delta \
    ",\"finish_reason\":" fin "}]}\n\n"

static void openai_events(void)
{
    result_t r;
    decode_str(SB_AI_OPENAI,
               OAI("{\"role\":\"assistant\",\"content\":\"\"}", "null")
               OAI("{\"content\":\"Hel\"}", "null") OAI("{\"content\":\"lo\"}", "null")
               OAI("{\"content\":null}", "null") OAI("{}", "\"length\"") "data: [DONE]\n\n",
               &r);
    CHECK_EQ_STR(r.text.p, r.text.len, "Hello");
    CHECK_EQ_INT(r.end, 0);
    CHECK_EQ_STR(r.finish, strlen(r.finish), "length");
    CHECK_EQ_INT(r.ntext, 2);
    res_free(&r);

    /* Text and finish reason in one chunk; a usage chunk without choices. */
    decode_str(SB_AI_OPENAI,
               OAI("{\"content\":\"x\"}", "\"stop\"")
               "data: {\"choices\":[],\"usage\":{\"total_tokens\":3}}\n\ndata: [DONE]\n\n",
               &r);
    CHECK_EQ_STR(r.text.p, r.text.len, "x");
    CHECK_EQ_STR(r.finish, strlen(r.finish), "stop");
    res_free(&r);

    /* Finish reasons in the AI SDK's words; none at all is "unknown". */
    static const char *const map[][2] = {
        {"content_filter", "content-filter"}, {"tool_calls", "tool-calls"},
        {"function_call", "tool-calls"},      {"weird", "other"},
    };
    for (size_t i = 0; i < 4; i++) {
        char in[256];
        snprintf(in, sizeof(in), OAI("{}", "\"%s\"") "data: [DONE]\n\n", map[i][0]);
        decode_str(SB_AI_OPENAI, in, &r);
        CHECK_EQ_STR(r.finish, strlen(r.finish), map[i][1]);
        res_free(&r);
    }
    decode_str(SB_AI_OPENAI, "data: [DONE]\n\n", &r);
    CHECK_EQ_INT(r.end, 0);
    CHECK_EQ_STR(r.finish, strlen(r.finish), "unknown");
    res_free(&r);

    /* A refusal is text the reader must see. */
    decode_str(SB_AI_OPENAI, OAI("{\"refusal\":\"I can't\"}", "null") "data: [DONE]\n\n", &r);
    CHECK_EQ_STR(r.text.p, r.text.len, "I can't");
    res_free(&r);

    /* \u escapes, surrogate pairs included, come out as UTF-8. */
    decode_str(SB_AI_OPENAI,
               OAI("{\"content\":\"caf\\u00e9 \\ud83d\\ude00 \\\"q\\\" \\\\ \\n\"}", "null")
               "data: [DONE]\n\n",
               &r);
    CHECK_EQ_STR(r.text.p, r.text.len, "caf\xC3\xA9 \xF0\x9F\x98\x80 \"q\" \\ \n");
    res_free(&r);

    /* In-stream errors, object or string. */
    decode_str(SB_AI_OPENAI,
               OAI("{\"content\":\"a\"}", "null")
               "data: {\"error\":{\"message\":\"boom\",\"type\":\"server_error\"}}\n\n"
               OAI("{\"content\":\"b\"}", "null"),
               &r);
    CHECK_EQ_INT(r.end, 1);
    CHECK_EQ_STR(r.toks.p, r.toks.len, "T:a\x01" "ERR:boom\x01");
    res_free(&r);
    decode_str(SB_AI_OPENAI, "data: {\"error\":\"overloaded\"}\n\n", &r);
    CHECK_EQ_STR(r.toks.p, r.toks.len, "ERR:overloaded\x01");
    res_free(&r);
    decode_str(SB_AI_OPENAI, "data: {\"error\":{}}\n\n", &r);
    CHECK_EQ_INT(r.end, 1);
    res_free(&r);
    decode_str(SB_AI_OPENAI, "data: {\"error\":null," "\"choices\":[]}\n\ndata: [DONE]\n\n", &r);
    CHECK_EQ_INT(r.end, 0);
    res_free(&r);

    /* Malformed: not JSON, not an object, bytes after the JSON, bad UTF-8,
     * a lone surrogate. The stream stops at the first one. */
    static const char *const bad[] = {
        "data: {not json\n\n",
        "data: [1,2]\n\n",
        "data: \"str\"\n\n",
        "data: {\"choices\":[]} trailing\n\n",
        "data: \n\n",
        OAI("{\"content\":\"\xC3\x28\"}", "null"),
        OAI("{\"content\":\"\xED\xA0\x80\"}", "null"),
        OAI("{\"content\":\"\\ud800\"}", "null"),
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        decode_str(SB_AI_OPENAI, bad[i], &r);
        CHECK_EQ_INT(r.end, SB_EPARSE);
        CHECK_EQ_INT(r.ntext, 0);
        res_free(&r);
    }
    /* Whitespace around the JSON is fine. */
    decode_str(SB_AI_OPENAI, "data:  {\"choices\":[]}  \n\ndata: [DONE]\n\n", &r);
    CHECK_EQ_INT(r.end, 0);
    res_free(&r);

    /* The end: missing marker, marker without its blank line, bytes after it. */
    decode_str(SB_AI_OPENAI, OAI("{\"content\":\"a\"}", "\"stop\""), &r);
    CHECK_EQ_INT(r.end, SB_AGAIN);
    res_free(&r);
    decode_str(SB_AI_OPENAI, OAI("{\"content\":\"a\"}", "\"stop\"") "data: [DONE]", &r);
    CHECK_EQ_INT(r.end, 0);
    CHECK_EQ_STR(r.finish, strlen(r.finish), "stop");
    res_free(&r);
    decode_str(SB_AI_OPENAI, OAI("{\"content\":\"a\"}", "null") "data: {\"choi", &r);
    CHECK_EQ_INT(r.end, SB_AGAIN);
    res_free(&r);
    decode_str(SB_AI_OPENAI, "data: [DONE]\n\n" OAI("{\"content\":\"late\"}", "null") "junk", &r);
    CHECK_EQ_INT(r.end, 0);
    CHECK_EQ_INT(r.ntext, 0);
    res_free(&r);
    {
        sb_ai_decoder_t d;
        sb_ai_tok_t tok;
        const char *why;
        sb_ai_decoder_init(&d, SB_AI_OPENAI);
        const char *in = "data: [DONE]\n\n";
        CHECK_EQ_INT(sb_ai_decoder_feed(&d, in, strlen(in), &tok, &why), (int)strlen(in));
        CHECK_EQ_INT(tok.kind, SB_AI_TOK_END);
        CHECK_EQ_INT(sb_ai_decoder_feed(&d, "data: x\n\n", 9, &tok, &why), SB_AGAIN);
        CHECK_EQ_INT(sb_ai_decoder_end(&d, &tok, &why), 0);
        CHECK_EQ_INT(tok.kind, SB_AI_TOK_END);
        sb_ai_decoder_free(&d);
    }
}

#define ANT(type, json) "event: " type "\ndata: " json "\n\n"

static void anthropic_events(void)
{
    result_t r;
    decode_str(SB_AI_ANTHROPIC,
               ANT("message_start", "{\"type\":\"message_start\",\"message\":{\"id\":\"m\"}}")
               ANT("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
                                          "\"content_block\":{\"type\":\"thinking\","
                                          "\"thinking\":\"\"}}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
                                          "\"delta\":{\"type\":\"thinking_delta\","
                                          "\"thinking\":\"hm\"}}")
               ANT("content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}")
               ANT("content_block_start", "{\"type\":\"content_block_start\",\"index\":1,"
                                          "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}")
               ANT("ping", "{\"type\": \"ping\"}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,"
                                          "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi \"}}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":1,"
                                          "\"delta\":{\"type\":\"text_delta\",\"text\":\"there\"}}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":2,"
                                          "\"delta\":{\"type\":\"input_json_delta\","
                                          "\"partial_json\":\"{\"}}")
               ANT("brand_new_event", "{\"type\":\"brand_new_event\"}")
               ANT("message_delta", "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
                                    "\"max_tokens\"},\"usage\":{\"output_tokens\":3}}")
               ANT("message_stop", "{\"type\":\"message_stop\"}"),
               &r);
    CHECK_EQ_STR(r.text.p, r.text.len, "Hi there");
    CHECK_EQ_INT(r.end, 0);
    CHECK_EQ_STR(r.finish, strlen(r.finish), "length");
    res_free(&r);

    /* Stop reasons. */
    static const char *const map[][2] = {
        {"end_turn", "stop"},       {"stop_sequence", "stop"}, {"tool_use", "tool-calls"},
        {"refusal", "content-filter"}, {"pause_turn", "other"},
    };
    for (size_t i = 0; i < 5; i++) {
        char in[256];
        snprintf(in, sizeof(in),
                 ANT("message_delta", "{\"type\":\"message_delta\","
                                      "\"delta\":{\"stop_reason\":\"%s\"}}")
                 ANT("message_stop", "{\"type\":\"message_stop\"}"),
                 map[i][0]);
        decode_str(SB_AI_ANTHROPIC, in, &r);
        CHECK_EQ_STR(r.finish, strlen(r.finish), map[i][1]);
        res_free(&r);
    }

    /* The error event mid-stream. */
    decode_str(SB_AI_ANTHROPIC,
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
                                          "\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}")
               ANT("error", "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
                            "\"message\":\"Overloaded\"}}"),
               &r);
    CHECK_EQ_STR(r.toks.p, r.toks.len, "T:a\x01" "ERR:Overloaded\x01");
    res_free(&r);
    decode_str(SB_AI_ANTHROPIC, ANT("error", "{\"type\":\"error\"}"), &r);
    CHECK_EQ_INT(r.end, 1);
    res_free(&r);

    /* The event name stands in when the JSON has no type. */
    decode_str(SB_AI_ANTHROPIC, ANT("message_stop", "{}"), &r);
    CHECK_EQ_INT(r.end, 0);
    CHECK_EQ_STR(r.finish, strlen(r.finish), "unknown");
    res_free(&r);
    /* Text in a text block's start counts; a text_delta with no string does not. */
    decode_str(SB_AI_ANTHROPIC,
               ANT("content_block_start", "{\"type\":\"content_block_start\",\"index\":0,"
                                          "\"content_block\":{\"type\":\"text\",\"text\":\"pre\"}}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
                                          "\"delta\":{\"type\":\"text_delta\",\"text\":5}}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\",\"index\":0,"
                                          "\"delta\":{\"type\":\"text_delta\"}}")
               ANT("content_block_delta", "{\"type\":\"content_block_delta\"}")
               ANT("message_stop", "{\"type\":\"message_stop\"}"),
               &r);
    CHECK_EQ_STR(r.text.p, r.text.len, "pre");
    CHECK_EQ_INT(r.end, 0);
    res_free(&r);

    /* Malformed, and a stream that stops early. */
    decode_str(SB_AI_ANTHROPIC, ANT("content_block_delta", "<<<not json>>>"), &r);
    CHECK_EQ_INT(r.end, SB_EPARSE);
    res_free(&r);
    decode_str(SB_AI_ANTHROPIC, "data: [DONE]\n\n", &r);
    CHECK_EQ_INT(r.end, SB_EPARSE);
    res_free(&r);
    decode_str(SB_AI_ANTHROPIC,
               ANT("message_delta", "{\"type\":\"message_delta\","
                                    "\"delta\":{\"stop_reason\":\"end_turn\"}}"),
               &r);
    CHECK_EQ_INT(r.end, SB_AGAIN);
    res_free(&r);
    decode_str(SB_AI_ANTHROPIC, "event: message_stop\ndata: {\"type\":\"message_stop\"}", &r);
    CHECK_EQ_INT(r.end, 0);
    res_free(&r);
}

/* ---- transcripts --------------------------------------------------------- */

static uint64_t rnd_state = 0x243F6A8885A308D3ull;
static uint64_t rnd(void)
{
    rnd_state ^= rnd_state << 13;
    rnd_state ^= rnd_state >> 7;
    rnd_state ^= rnd_state << 17;
    return rnd_state;
}

static int splits_checked;

static void same(const result_t *want, const result_t *got)
{
    CHECK_EQ_INT(got->end, want->end);
    CHECK(got->toks.len == want->toks.len &&
          (want->toks.len == 0 || memcmp(got->toks.p, want->toks.p, want->toks.len) == 0));
}

static void check_split(sb_ai_dialect_t d, const char *in, size_t len, size_t at,
                        const result_t *want)
{
    result_t r;
    decode(d, in, len, &at, 1, false, &r);
    same(want, &r);
    res_free(&r);
    splits_checked++;
}

/* Rewrites every LF as CRLF or CR. */
static char *relined(const char *in, size_t len, const char *nl, size_t *out_len)
{
    sb_buf_t b = {0};
    for (size_t i = 0; i < len; i++) {
        if (in[i] == '\n') sb_buf_puts(&b, nl);
        else sb_buf_put(&b, in + i, 1);
    }
    *out_len = b.len;
    return b.p;
}

static void transcript(sb_ai_dialect_t d, const char *file, const char *txt)
{
    size_t len, tlen;
    char *in = slurp(file, &len);
    char *want_text = slurp(txt, &tlen);
    bool exhaustive = getenv("SB_AI_EXHAUSTIVE") != NULL;

    /* Whole, against a guard page: the text is the transcript's text. */
    result_t whole;
    decode(d, in, len, NULL, 0, true, &whole);
    CHECK_EQ_INT(whole.end, 0);
    CHECK_EQ_STR(whole.finish, strlen(whole.finish), "stop");
    CHECK(whole.text.len == tlen && memcmp(whole.text.p, want_text, tlen) == 0);
    CHECK(whole.ntext > 100);

    /* Byte by byte. */
    {
        size_t *ones = calloc(len + 1, sizeof(size_t));
        for (size_t i = 0; i < len; i++) ones[i] = 1;
        result_t r;
        decode(d, in, len, ones, len, false, &r);
        same(&whole, &r);
        res_free(&r);
        free(ones);
    }

    /* Two pieces, cut at every byte. A cut is checked within the event it
     * falls in, against that event decoded whole: across an event boundary
     * the decoder carries only the finish reason (which a lone event has or
     * lacks both ways) and a pending CR (the CR runs below cut next to every
     * one), so this covers every byte of every transcript in a second or two.
     * A sample of cuts also runs over the whole transcript; SB_AI_EXHAUSTIVE=1
     * runs every cut over the whole transcript (minutes under the sanitizers). */
    {
        size_t n = 0, start = 0;
        for (size_t i = 0; i + 1 < len; i++) {
            if (in[i] != '\n' || in[i + 1] != '\n') continue;
            size_t end = i + 2;
            result_t want;
            decode(d, in + start, end - start, NULL, 0, false, &want);
            for (size_t at = 0; at <= end - start; at++)
                check_split(d, in + start, end - start, at, &want);
            res_free(&want);
            start = end;
            n++;
        }
        CHECK_EQ_INT(start, len);
        CHECK(n > 100);
    }
    for (size_t i = 0; i <= len; i += exhaustive ? 1 : 2039) check_split(d, in, len, i, &whole);

    /* Random pieces, tiny or up to a few events long; the larger ones flush
     * against a guard page (a page each, so not the tiny ones). */
    for (int round = 0; round < 8; round++) {
        size_t pieces[4096], n = 0, sum = 0;
        while (sum < len && n < 4096) {
            size_t p = 1 + (size_t)(rnd() % (round % 2 ? 7 : 300));
            pieces[n++] = p;
            sum += p;
        }
        result_t r;
        decode(d, in, len, pieces, n, round % 2 == 0, &r);
        same(&whole, &r);
        res_free(&r);
    }

    /* CRLF and CR line ends give the same tokens, whole and in small pieces. */
    static const char *const nls[] = {"\r\n", "\r"};
    for (int k = 0; k < 2; k++) {
        size_t rl;
        char *re = relined(in, len, nls[k], &rl);
        result_t r;
        decode(d, re, rl, NULL, 0, true, &r);
        same(&whole, &r);
        res_free(&r);
        for (int round = 0; round < 2; round++) {
            size_t pieces[8192], n = 0, sum = 0;
            while (sum < rl && n < 8192) {
                size_t p = 1 + (size_t)(rnd() % 5);
                pieces[n++] = p;
                sum += p;
            }
            decode(d, re, rl, pieces, n, false, &r);
            same(&whole, &r);
            res_free(&r);
        }
        free(re);
    }

    /* Every prefix that stops before the end marker is an incomplete stream. */
    for (size_t cut = 0; cut < len; cut += len / 40 + 1) {
        result_t r;
        decode(d, in, cut, NULL, 0, false, &r);
        CHECK_EQ_INT(r.end, SB_AGAIN);
        CHECK(r.text.len <= tlen && memcmp(r.text.p ? r.text.p : "", want_text, r.text.len) == 0);
        res_free(&r);
    }

    res_free(&whole);
    free(in);
    free(want_text);
}

int main(void)
{
    find_root();
    openai_events();
    anthropic_events();
    transcript(SB_AI_OPENAI, "openai-story.sse", "story.txt");
    transcript(SB_AI_OPENAI, "openai-code.sse", "code.txt");
    transcript(SB_AI_ANTHROPIC, "anthropic-story.sse", "story.txt");
    transcript(SB_AI_ANTHROPIC, "anthropic-code.sse", "code.txt");
    printf("ai/decode: %d split points decoded\n", splits_checked);
    return tl_done("ai/decode");
}
