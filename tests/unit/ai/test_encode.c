/* The output encoders: exact bytes of each format, and the ai-sdk output of
 * whole transcripts read back by the `ai` package's own readers in Node
 * (tests/integration/fixtures/ai-sdk-check.mjs). That run also saves the UI
 * messages useChat really sends, and the request builder must read them. */
#define _GNU_SOURCE
#include "ai/ai.h"
#include "testlib.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static char root[1024];

static void find_root(void)
{
    const char *env = getenv("SB_SOURCE_DIR");
    if (env) {
        snprintf(root, sizeof(root), "%s", env);
        return;
    }
    const char *f = __FILE__, *cut = strstr(f, "/tests/unit/ai/");
    snprintf(root, sizeof(root), "%.*s", cut ? (int)(cut - f) : 1, cut ? f : ".");
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
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

static char *fixture(const char *name, size_t *len)
{
    char path[1200];
    snprintf(path, sizeof(path), "%s/tests/integration/fixtures/transcripts/%s", root, name);
    char *p = slurp(path, len);
    if (!p) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(1);
    }
    return p;
}

static void put_file(const char *path, const char *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n) exit(1);
    fclose(f);
}

/* ---- exact bytes --------------------------------------------------------- */

static void encode_steps(sb_ai_format_t fmt, const char *id, bool fail, sb_buf_t *out)
{
    sb_ai_enc_t e;
    sb_ai_enc_init(&e, fmt, id);
    sb_ai_enc_delta(&e, "Hi \"x\"\n", 7, out);
    sb_ai_enc_delta(&e, "", 0, out);
    sb_ai_enc_delta(&e, "\xC3\xA9\t\\", 4, out);
    if (fail) sb_ai_enc_error(&e, "upstream_error", "Over \"loaded\"", out);
    else sb_ai_enc_done(&e, "stop", out);
    /* Nothing after the end. */
    sb_ai_enc_delta(&e, "late", 4, out);
    sb_ai_enc_done(&e, "stop", out);
    sb_ai_enc_error(&e, "x", "y", out);
}

static void exact(void)
{
    sb_buf_t b = {0};
    encode_steps(SB_AI_FMT_TEXT, NULL, false, &b);
    CHECK_EQ_STR(b.p, b.len, "Hi \"x\"\n\xC3\xA9\t\\");
    b.len = 0;
    encode_steps(SB_AI_FMT_TEXT, NULL, true, &b);
    CHECK_EQ_STR(b.p, b.len, "Hi \"x\"\n\xC3\xA9\t\\");
    b.len = 0;

    encode_steps(SB_AI_FMT_SSE, NULL, false, &b);
    CHECK_EQ_STR(b.p, b.len,
                 "data: {\"text\":\"Hi \\\"x\\\"\\n\"}\n\n"
                 "data: {\"text\":\"\xC3\xA9\\t\\\\\"}\n\n"
                 "data: [DONE]\n\n");
    b.len = 0;
    encode_steps(SB_AI_FMT_SSE, NULL, true, &b);
    CHECK_EQ_STR(b.p, b.len,
                 "data: {\"text\":\"Hi \\\"x\\\"\\n\"}\n\n"
                 "data: {\"text\":\"\xC3\xA9\\t\\\\\"}\n\n"
                 "event: error\ndata: {\"error\":{\"code\":\"upstream_error\","
                 "\"message\":\"Over \\\"loaded\\\"\"}}\n\n");
    b.len = 0;

    encode_steps(SB_AI_FMT_AISDK, "msg-42", false, &b);
    CHECK_EQ_STR(b.p, b.len,
                 "data: {\"type\":\"start\",\"messageId\":\"msg-42\"}\n\n"
                 "data: {\"type\":\"start-step\"}\n\n"
                 "data: {\"type\":\"text-start\",\"id\":\"text-1\"}\n\n"
                 "data: {\"type\":\"text-delta\",\"id\":\"text-1\","
                 "\"delta\":\"Hi \\\"x\\\"\\n\"}\n\n"
                 "data: {\"type\":\"text-delta\",\"id\":\"text-1\","
                 "\"delta\":\"\xC3\xA9\\t\\\\\"}\n\n"
                 "data: {\"type\":\"text-end\",\"id\":\"text-1\"}\n\n"
                 "data: {\"type\":\"finish-step\"}\n\n"
                 "data: {\"type\":\"finish\"}\n\n"
                 "data: [DONE]\n\n");
    b.len = 0;
    encode_steps(SB_AI_FMT_AISDK, NULL, true, &b);
    CHECK_EQ_STR(b.p, b.len,
                 "data: {\"type\":\"start\"}\n\n"
                 "data: {\"type\":\"start-step\"}\n\n"
                 "data: {\"type\":\"text-start\",\"id\":\"text-1\"}\n\n"
                 "data: {\"type\":\"text-delta\",\"id\":\"text-1\","
                 "\"delta\":\"Hi \\\"x\\\"\\n\"}\n\n"
                 "data: {\"type\":\"text-delta\",\"id\":\"text-1\","
                 "\"delta\":\"\xC3\xA9\\t\\\\\"}\n\n"
                 "data: {\"type\":\"error\",\"errorText\":\"Over \\\"loaded\\\"\"}\n\n"
                 "data: [DONE]\n\n");
    b.len = 0;

    /* No text at all: done and error straight after the opening. */
    sb_ai_enc_t e;
    sb_ai_enc_init(&e, SB_AI_FMT_AISDK, "m");
    sb_ai_enc_start(&e, &b);
    sb_ai_enc_start(&e, &b);
    sb_ai_enc_done(&e, "stop", &b);
    CHECK_EQ_STR(b.p, b.len,
                 "data: {\"type\":\"start\",\"messageId\":\"m\"}\n\n"
                 "data: {\"type\":\"start-step\"}\n\n"
                 "data: {\"type\":\"finish-step\"}\n\n"
                 "data: {\"type\":\"finish\"}\n\n"
                 "data: [DONE]\n\n");
    b.len = 0;
    sb_ai_enc_init(&e, SB_AI_FMT_SSE, NULL);
    sb_ai_enc_error(&e, NULL, NULL, &b);
    CHECK_EQ_STR(b.p, b.len,
                 "event: error\ndata: {\"error\":{\"code\":\"internal_error\","
                 "\"message\":\"The answer failed.\"}}\n\n");
    b.len = 0;
    /* An id that needs escaping is escaped; an oversized one is left out. */
    sb_ai_enc_init(&e, SB_AI_FMT_AISDK, "a\"b");
    sb_ai_enc_start(&e, &b);
    CHECK_EQ_STR(b.p, b.len,
                 "data: {\"type\":\"start\",\"messageId\":\"a\\\"b\"}\n\n"
                 "data: {\"type\":\"start-step\"}\n\n");
    b.len = 0;
    char longid[80];
    memset(longid, 'x', 79);
    longid[79] = '\0';
    sb_ai_enc_init(&e, SB_AI_FMT_AISDK, longid);
    sb_ai_enc_start(&e, &b);
    CHECK_EQ_STR(b.p, b.len, "data: {\"type\":\"start\"}\n\ndata: {\"type\":\"start-step\"}\n\n");
    b.len = 0;
    /* Control characters become \u escapes. */
    sb_ai_enc_init(&e, SB_AI_FMT_SSE, NULL);
    sb_ai_enc_delta(&e, "\x01\x1f", 2, &b);
    CHECK_EQ_STR(b.p, b.len, "data: {\"text\":\"\\u0001\\u001f\"}\n\n");
    sb_buf_free(&b);

    CHECK_EQ_STR(sb_ai_content_type(SB_AI_FMT_TEXT), strlen(sb_ai_content_type(SB_AI_FMT_TEXT)),
                 "text/plain; charset=utf-8");
    CHECK_EQ_STR(sb_ai_content_type(SB_AI_FMT_SSE), strlen(sb_ai_content_type(SB_AI_FMT_SSE)),
                 "text/event-stream");
    CHECK_EQ_STR(sb_ai_content_type(SB_AI_FMT_AISDK),
                 strlen(sb_ai_content_type(SB_AI_FMT_AISDK)), "text/event-stream");
    CHECK(sb_ai_extra_header(SB_AI_FMT_TEXT) == NULL);
    CHECK(sb_ai_extra_header(SB_AI_FMT_SSE) == NULL);
    CHECK_EQ_STR(sb_ai_extra_header(SB_AI_FMT_AISDK), strlen(sb_ai_extra_header(SB_AI_FMT_AISDK)),
                 "x-vercel-ai-ui-message-stream: v1");
}

/* ---- transcripts through the encoders ------------------------------------ */

/* Decodes a transcript and encodes it in fmt; stop_after > 0 ends with an
 * error after that many deltas. Also returns the text encoded. */
static void relay(sb_ai_dialect_t d, const char *file, sb_ai_format_t fmt, int stop_after,
                  sb_buf_t *out, sb_buf_t *text)
{
    size_t len;
    char *in = fixture(file, &len);
    sb_ai_decoder_t dec;
    sb_ai_decoder_init(&dec, d);
    sb_ai_enc_t e;
    sb_ai_enc_init(&e, fmt, "msg-test");
    int deltas = 0;
    size_t off = 0;
    /* Pieces of 13 bytes, as if from the network. */
    while (off < len) {
        size_t n = len - off < 13 ? len - off : 13, at = 0;
        while (at < n) {
            sb_ai_tok_t tok;
            const char *why;
            int rc = sb_ai_decoder_feed(&dec, in + off + at, n - at, &tok, &why);
            if (rc < 0) break;
            at += (size_t)rc;
            if (tok.kind == SB_AI_TOK_TEXT) {
                if (stop_after > 0 && deltas == stop_after) {
                    sb_ai_enc_error(&e, SB_AI_E_RESET, "The upstream's stream broke off.", out);
                    continue;
                }
                sb_ai_enc_delta(&e, tok.text.p, tok.text.len, out);
                if (!e._over) sb_buf_put(text, tok.text.p, tok.text.len);
                deltas++;
            } else if (tok.kind == SB_AI_TOK_END) {
                sb_ai_enc_done(&e, tok.finish, out);
            }
        }
        off += n;
    }
    CHECK(e._over);
    sb_ai_decoder_free(&dec);
    free(in);
}

/* The sse format read back by our own SSE parser: the texts joined are the
 * answer, and [DONE] comes last. */
static void sse_roundtrip(sb_ai_dialect_t d, const char *file, const char *txt)
{
    size_t tlen;
    char *want = fixture(txt, &tlen);
    sb_buf_t out = {0}, text = {0}, got = {0};
    relay(d, file, SB_AI_FMT_SSE, 0, &out, &text);
    sb_ai_sse_t p;
    sb_ai_sse_init(&p, 0);
    size_t off = 0;
    bool done = false;
    while (off < out.len) {
        sb_ai_sse_event_t ev;
        const char *why;
        int n = sb_ai_sse_parse(&p, out.p + off, out.len - off, &ev, &why);
        if (n < 0) break;
        off += (size_t)n;
        CHECK(!done);
        if (sb_str_eq(ev.data, "[DONE]")) {
            done = true;
            continue;
        }
        cJSON *j = cJSON_ParseWithLength(ev.data.p, ev.data.len);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        CHECK(cJSON_IsString(t));
        if (cJSON_IsString(t)) sb_buf_puts(&got, t->valuestring);
        cJSON_Delete(j);
    }
    CHECK(done);
    CHECK(got.len == tlen && memcmp(got.p, want, tlen) == 0);
    /* The text format is the bare answer. */
    sb_buf_t bare = {0}, t2 = {0};
    relay(d, file, SB_AI_FMT_TEXT, 0, &bare, &t2);
    CHECK(bare.len == tlen && memcmp(bare.p, want, tlen) == 0);
    sb_ai_sse_free(&p);
    sb_buf_free(&out);
    sb_buf_free(&text);
    sb_buf_free(&got);
    sb_buf_free(&bare);
    sb_buf_free(&t2);
    free(want);
}

/* ---- the ai package's readers -------------------------------------------- */

/* Runs node with argv; returns its exit code, or -1 when node cannot run. */
static int run_node(char *const argv[])
{
    pid_t pid;
    int rc = posix_spawnp(&pid, "node", NULL, NULL, argv, environ);
    if (rc != 0) return -1;
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st)) return 1;
    return WEXITSTATUS(st) == 127 ? -1 : WEXITSTATUS(st);
}

static bool node_missing;

static void aisdk_check(sb_ai_dialect_t d, const char *file, const char *txt, int stop_after,
                        const char *save_request)
{
    if (node_missing) return;
    char body_path[] = "/tmp/sb-ai-body-XXXXXX", text_path[] = "/tmp/sb-ai-text-XXXXXX";
    int fd1 = mkstemp(body_path), fd2 = mkstemp(text_path);
    CHECK(fd1 >= 0 && fd2 >= 0);
    close(fd1);
    close(fd2);
    sb_buf_t out = {0}, text = {0};
    relay(d, file, SB_AI_FMT_AISDK, stop_after, &out, &text);
    put_file(body_path, out.p, out.len);
    if (stop_after == 0) {
        size_t tlen;
        char *want = fixture(txt, &tlen);
        CHECK(text.len == tlen && memcmp(text.p, want, tlen) == 0);
        free(want);
    }
    put_file(text_path, text.p ? text.p : "", text.len);

    char script[1200];
    snprintf(script, sizeof(script), "%s/tests/integration/fixtures/ai-sdk-check.mjs", root);
    char ctype[64], header[64];
    snprintf(ctype, sizeof(ctype), "%s", sb_ai_content_type(SB_AI_FMT_AISDK));
    snprintf(header, sizeof(header), "%s", sb_ai_extra_header(SB_AI_FMT_AISDK));
    char *argv[16];
    int a = 0;
    argv[a++] = "node";
    argv[a++] = script;
    argv[a++] = "--stream";
    argv[a++] = body_path;
    argv[a++] = "--text";
    argv[a++] = text_path;
    argv[a++] = "--content-type";
    argv[a++] = ctype;
    argv[a++] = "--header";
    argv[a++] = header;
    if (stop_after > 0) {
        argv[a++] = "--error";
        argv[a++] = "The upstream's stream broke off.";
    }
    if (save_request) {
        argv[a++] = "--save-request";
        argv[a++] = (char *)save_request;
    }
    argv[a] = NULL;
    fflush(stdout);
    int rc = run_node(argv);
    if (rc < 0) {
        printf("SKIP: node is not installed; the ai-sdk output was not read by the ai package\n");
        node_missing = true;
    } else {
        if (rc != 0)
            fprintf(stderr, "ai-sdk-check failed for %s (is the `ai` package installed? "
                            "scripts/deps.sh runs npm install in tests/)\n", file);
        CHECK_EQ_INT(rc, 0);
    }
    unlink(body_path);
    unlink(text_path);
    sb_buf_free(&out);
    sb_buf_free(&text);
}

/* The messages useChat POSTed, through the request builder. */
static void sdk_request(const char *path)
{
    if (node_missing) return;
    size_t len;
    char *raw = slurp(path, &len);
    CHECK(raw != NULL);
    if (!raw) return;
    cJSON *j = cJSON_Parse(raw);
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    CHECK(cJSON_IsArray(msgs));
    char *m = cJSON_PrintUnformatted(msgs);
    static const char *const want[2] = {
        "{\"model\":\"gpt\",\"messages\":[{\"role\":\"user\",\"content\":"
        "\"Tell me a story about a lighthouse.\"}],\"stream\":true}",
        "{\"model\":\"gpt\",\"max_tokens\":4096,\"messages\":[{\"role\":\"user\",\"content\":"
        "\"Tell me a story about a lighthouse.\"}],\"stream\":true}",
    };
    for (int d = 0; d < 2; d++) {
        char *out = NULL;
        const char *why = NULL;
        CHECK_EQ_INT(sb_ai_request_body((sb_ai_dialect_t)d, "gpt", 0, m, strlen(m), &out, &why), 0);
        if (out) CHECK_EQ_STR(out, strlen(out), want[d]);
        free(out);
    }
    free(m);
    cJSON_Delete(j);
    free(raw);
    unlink(path);
}

int main(void)
{
    find_root();
    exact();
    sse_roundtrip(SB_AI_OPENAI, "openai-story.sse", "story.txt");
    sse_roundtrip(SB_AI_OPENAI, "openai-code.sse", "code.txt");
    sse_roundtrip(SB_AI_ANTHROPIC, "anthropic-story.sse", "story.txt");
    sse_roundtrip(SB_AI_ANTHROPIC, "anthropic-code.sse", "code.txt");

    char req[] = "/tmp/sb-ai-req-XXXXXX";
    int fd = mkstemp(req);
    CHECK(fd >= 0);
    close(fd);
    aisdk_check(SB_AI_OPENAI, "openai-story.sse", "story.txt", 0, req);
    sdk_request(req);
    aisdk_check(SB_AI_ANTHROPIC, "anthropic-code.sse", "code.txt", 0, NULL);
    aisdk_check(SB_AI_OPENAI, "openai-code.sse", "code.txt", 0, NULL);
    aisdk_check(SB_AI_ANTHROPIC, "anthropic-story.sse", "story.txt", 40, NULL);
    unlink(req);
    return tl_done("ai/encode");
}
