/* The upstream SSE parser: line ends, fields, comments, dispatch rules, limits,
 * and the same events for every way the bytes can be split. */
#include "ai/ai.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

/* Parses in pieces cut at the given offsets (ascending) and writes the events
 * as "event|data" lines into out. Each piece sits flush against a guard page.
 * Returns the last parse result (SB_AGAIN when the input was all taken). */
static int run(const char *in, size_t len, const size_t *cuts, size_t ncuts, sb_buf_t *out,
               bool finish)
{
    sb_ai_sse_t p;
    sb_ai_sse_init(&p, 64);
    int rc = SB_AGAIN;
    size_t prev = 0;
    for (size_t k = 0; k <= ncuts && rc != SB_EPARSE; k++) {
        size_t end = k < ncuts ? cuts[k] : len;
        char *g = tl_guarded(in + prev, end - prev);
        size_t off = 0;
        while (off < end - prev) {
            sb_ai_sse_event_t ev;
            const char *why = NULL;
            rc = sb_ai_sse_parse(&p, g + off, end - prev - off, &ev, &why);
            if (rc == SB_AGAIN) break;
            if (rc < 0) {
                CHECK(why != NULL);
                break;
            }
            CHECK(rc >= 1);
            sb_buf_printf(out, "%.*s|%.*s\n", (int)ev.event.len, ev.event.p, (int)ev.data.len,
                          ev.data.p);
            off += (size_t)rc;
        }
        tl_guard_free(g);
        prev = end;
    }
    if (finish && rc != SB_EPARSE) {
        sb_ai_sse_event_t ev;
        if (sb_ai_sse_finish(&p, &ev))
            sb_buf_printf(out, "%.*s|%.*s (eof)\n", (int)ev.event.len, ev.event.p,
                          (int)ev.data.len, ev.data.p);
    }
    sb_ai_sse_free(&p);
    return rc;
}

static void expect(const char *in, const char *want)
{
    sb_buf_t out = {0};
    run(in, strlen(in), NULL, 0, &out, false);
    CHECK_EQ_STR(out.p ? out.p : "", out.len, want);
    sb_buf_free(&out);
}

/* Every split into two pieces, and every split into three for short inputs,
 * gives the events of the whole. */
static void every_split(const char *in, const char *want)
{
    size_t len = strlen(in);
    for (size_t i = 0; i <= len; i++) {
        sb_buf_t out = {0};
        run(in, len, &i, 1, &out, false);
        CHECK_EQ_STR(out.p ? out.p : "", out.len, want);
        sb_buf_free(&out);
        if (len > 80) continue;
        for (size_t j = i; j <= len; j++) {
            size_t cuts[2] = {i, j};
            sb_buf_t o3 = {0};
            run(in, len, cuts, 2, &o3, false);
            CHECK_EQ_STR(o3.p ? o3.p : "", o3.len, want);
            sb_buf_free(&o3);
        }
    }
}

int main(void)
{
    /* Basics and each line end. */
    expect("data: hello\n\n", "|hello\n");
    expect("data: hello\r\n\r\n", "|hello\n");
    expect("data: hello\r\r", "|hello\n");
    expect("data: a\n\ndata: b\n\n", "|a\n|b\n");
    expect("data: a\r\ndata: b\r\n\r\n", "|a\nb\n");
    expect("data: a\rdata: b\n\r\n", "|a\nb\n");
    /* One leading space is dropped, not two; no space is fine; a bare field is empty. */
    expect("data:  two\n\n", "| two\n");
    expect("data:x\n\n", "|x\n");
    expect("data\n\n", "|\n");
    expect("data:\ndata:\n\n", "|\n\n");
    /* Event names, comments, unknown fields, id and retry. */
    expect("event: message_stop\ndata: {}\n\n", "message_stop|{}\n");
    expect(": keep-alive\n\ndata: x\n\n", "|x\n");
    expect("id: 7\nretry: 100\nfoo: bar\ndata: x\n\n", "|x\n");
    /* An event without data is dropped along with its name. */
    expect("event: ping\n\ndata: x\n\n", "|x\n");
    /* Colons in the value stay; a field name is case-sensitive. */
    expect("data: a:b: c\n\n", "|a:b: c\n");
    expect("Data: x\n\ndata: y\n\n", "|y\n");
    /* A byte order mark at the very start is not part of the first field. */
    expect("\xEF\xBB\xBF" "data: x\n\n", "|x\n");
    expect("data: x\n\n\xEF\xBB\xBF" "data: y\n\n", "|x\n");
    /* A long event name is cut, never overflows. */
    expect("event: 0123456789012345678901234567890123456789012345678901234567890123456789\n"
           "data: x\n\n",
           "012345678901234567890123456789012345678901234567890123456789012|x\n");
    /* Blank lines between events dispatch nothing. */
    expect("\n\n\r\n\rdata: x\n\n\n\n", "|x\n");

    /* Every split of inputs that mix all of the above, including inside CRLF. */
    every_split("event: a\r\ndata: 1\r\n\r\n: c\rdata: 2\rdata: 3\r\rdata: 4\n\n",
                "a|1\n|2\n3\n|4\n");
    every_split("\xEF\xBB\xBF" "data: x\r\n\r\nevent: e\ndata\n\n", "|x\ne|\n");

    /* The end of the stream: an event missing its blank line is handed out;
     * a partial last line counts; nothing pending gives nothing. */
    {
        sb_buf_t out = {0};
        const char *in = "data: 1\n\ndata: [DONE]";
        run(in, strlen(in), NULL, 0, &out, true);
        CHECK_EQ_STR(out.p, out.len, "|1\n|[DONE] (eof)\n");
        sb_buf_free(&out);
        in = "data: [DONE]\n";
        run(in, strlen(in), NULL, 0, &out, true);
        CHECK_EQ_STR(out.p, out.len, "|[DONE] (eof)\n");
        sb_buf_free(&out);
        in = "data: 1\n\n: tail";
        run(in, strlen(in), NULL, 0, &out, true);
        CHECK_EQ_STR(out.p, out.len, "|1\n");
        sb_buf_free(&out);
    }

    /* Limits (64 bytes in these runs): a long line, split or whole, and long data. */
    {
        char big[200];
        memset(big, 'x', sizeof(big));
        memcpy(big, "data: ", 6);
        big[198] = '\n';
        big[199] = '\n';
        sb_buf_t out = {0};
        CHECK_EQ_INT(run(big, sizeof(big), NULL, 0, &out, false), SB_EPARSE);
        size_t cut = 100;
        CHECK_EQ_INT(run(big, sizeof(big), &cut, 1, &out, false), SB_EPARSE);
        cut = 30;
        CHECK_EQ_INT(run(big, sizeof(big), &cut, 1, &out, false), SB_EPARSE);
        CHECK_EQ_INT(out.len, 0);
        sb_buf_t many = {0};
        for (int i = 0; i < 20; i++) sb_buf_puts(&many, "data: 0123\n");
        CHECK_EQ_INT(run(many.p, many.len, NULL, 0, &out, false), SB_EPARSE);
        sb_buf_free(&many);
        sb_buf_free(&out);
    }

    /* Returned slices stay valid until the next call, and the next event
     * does not inherit the previous one's name. */
    {
        sb_ai_sse_t p;
        sb_ai_sse_init(&p, 0);
        const char *in = "event: x\ndata: 1\n\ndata: 2\n\n";
        sb_ai_sse_event_t ev;
        const char *why;
        int n = sb_ai_sse_parse(&p, in, strlen(in), &ev, &why);
        CHECK_EQ_INT(n, 18);
        CHECK_EQ_STR(ev.event.p, ev.event.len, "x");
        CHECK_EQ_STR(ev.data.p, ev.data.len, "1");
        int m = sb_ai_sse_parse(&p, in + n, strlen(in) - (size_t)n, &ev, &why);
        CHECK_EQ_INT(m, 9);
        CHECK_EQ_INT(ev.event.len, 0);
        CHECK_EQ_STR(ev.data.p, ev.data.len, "2");
        CHECK_EQ_INT(sb_ai_sse_parse(&p, "", 0, &ev, &why), SB_AGAIN);
        sb_ai_sse_free(&p);
    }
    return tl_done("ai/sse");
}
