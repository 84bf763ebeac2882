/* The engine end to end: a uv loop with libcurl's multi interface against the
 * local upstream (tests/integration/fixtures/upstream.mjs, spawned here), in
 * both dialects: whole answers, every fault the upstream injects, cancels,
 * calls started from callbacks, freeing the engine mid-stream, and 200
 * concurrent calls on one loop. Callbacks are counted per call and the counts
 * asserted at the end: one start at most, exactly one final callback, nothing
 * after it. Without node only the tests that need no upstream run. */
#define _GNU_SOURCE
#include "ai/ai.h"
#include "testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

extern char **environ;

static char root[1024];
static char *texts[2]; /* story, code */
static size_t text_lens[2];

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

static char *fixture(const char *name, size_t *len)
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

/* ---- the upstream process ------------------------------------------------ */

static pid_t up_pid = -1;
static int up_stdin = -1;
static int up_port;

/* Spawns node upstream.mjs --port 0 and reads the port it prints. Returns
 * false when node is not installed. */
static bool start_upstream(void)
{
    int out[2], in[2];
    if (pipe2(out, O_CLOEXEC) != 0 || pipe2(in, O_CLOEXEC) != 0) abort();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    char script[1200];
    snprintf(script, sizeof(script), "%s/tests/integration/fixtures/upstream.mjs", root);
    char *argv[] = {"node", script, "--port", "0", "--delay", "1-5", "--slow-ms", "3000",
                    "--exit-with-stdin", NULL};
    pid_t pid;
    int rc = posix_spawnp(&pid, "node", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(out[1]);
    close(in[0]);
    if (rc != 0) {
        close(out[0]);
        close(in[1]);
        return false;
    }
    up_pid = pid;
    up_stdin = in[1];
    /* "upstream listening on http://127.0.0.1:PORT\n", within 30 s. */
    char line[256];
    size_t n = 0;
    while (n < sizeof(line) - 1 && !memchr(line, '\n', n)) {
        struct pollfd p = {.fd = out[0], .events = POLLIN};
        if (poll(&p, 1, 30000) <= 0) break;
        ssize_t k = read(out[0], line + n, sizeof(line) - 1 - n);
        if (k <= 0) break;
        n += (size_t)k;
    }
    line[n] = '\0';
    close(out[0]);
    const char *colon = strrchr(line, ':');
    up_port = colon ? atoi(colon + 1) : 0;
    if (up_port <= 0) {
        fprintf(stderr, "the upstream did not start: \"%s\"\n", line);
        CHECK(up_port > 0);
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        up_pid = -1;
        return false;
    }
    return true;
}

static void stop_upstream(void)
{
    if (up_pid < 0) return;
    close(up_stdin);
    kill(up_pid, SIGTERM);
    while (waitpid(up_pid, NULL, 0) < 0 && errno == EINTR) {
    }
    up_pid = -1;
}

/* A loopback port with nothing listening: bound, then closed. */
static int dead_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(s, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(s, (struct sockaddr *)&a, &len) != 0)
        abort();
    close(s);
    return ntohs(a.sin_port);
}

/* ---- calls and what they reported ---------------------------------------- */

typedef struct call_rec {
    const char *name;
    sb_ai_dialect_t dialect;
    const char *model;
    int want_text;         /* 0 story, 1 code, -1 an error is expected, 2 echo */
    int want_status;
    const char *want_code;
    const char *want_msg;  /* a substring of the message */
    long first_token_ms, idle_ms;
    const char *key;
    char url[128];
    /* results */
    int starts, deltas, dones, errors, late;
    bool final;
    sb_buf_t text;
    int status;
    char code[64], msg[1100], finish[32];
    sb_ai_call_t *call;
    int cancel_after;      /* cancel from on_delta after this many deltas */
    struct call_rec *chain; /* started from this call's on_done */
    /* Started from this call's first on_delta; the first is cancelled at once. */
    struct call_rec *spawn_cancel, *spawn_keep;
    sb_ai_engine_t *eng;
} rec_t;

static int finals;

static void on_start(void *ud)
{
    rec_t *r = ud;
    if (r->final) r->late++;
    r->starts++;
}

static int start(rec_t *r);

static void on_delta(void *ud, const char *text, size_t len)
{
    rec_t *r = ud;
    if (r->deltas == 0 && r->spawn_cancel) {
        /* Both wait for the engine to leave curl; cancelling the later one
         * (the head of the waiting list) must not lose the other. */
        CHECK_EQ_INT(start(r->spawn_keep), 0);
        CHECK_EQ_INT(start(r->spawn_cancel), 0);
        sb_ai_cancel(r->spawn_cancel->call);
        r->spawn_cancel->final = true;
        finals++;
    }
    if (r->final) r->late++;
    CHECK(len > 0);
    CHECK(sb_utf8_valid((const uint8_t *)text, len));
    sb_buf_put(&r->text, text, len);
    r->deltas++;
    if (r->cancel_after && r->deltas == r->cancel_after) {
        sb_ai_cancel(r->call);
        r->final = true;
        finals++;
    }
}

static const char *msgs_json = "[{\"role\":\"system\",\"content\":\"Be kind.\"},"
                               "{\"role\":\"user\",\"content\":\"Tell me a story.\"}]";
static const char *echo_json = "[{\"id\":\"u1\",\"role\":\"user\",\"parts\":[{\"type\":\"text\","
                               "\"text\":\"Echo me: caf\xC3\xA9 \xF0\x9F\x9A\x80 "
                               "\\\"quoted\\\"\"}]}]";
static const char *echo_text = "Echo me: caf\xC3\xA9 \xF0\x9F\x9A\x80 \"quoted\"";

static void on_done(void *ud, const char *finish)
{
    rec_t *r = ud;
    if (r->final) r->late++;
    r->dones++;
    r->final = true;
    finals++;
    snprintf(r->finish, sizeof(r->finish), "%s", finish);
    /* Cancelling oneself inside the final callback is a no-op. */
    sb_ai_cancel(r->call);
    if (r->chain) CHECK_EQ_INT(start(r->chain), 0);
}

static void on_error(void *ud, int status, const char *code, const char *msg)
{
    rec_t *r = ud;
    if (r->final) r->late++;
    r->errors++;
    r->final = true;
    finals++;
    r->status = status;
    snprintf(r->code, sizeof(r->code), "%s", code);
    snprintf(r->msg, sizeof(r->msg), "%s", msg);
    CHECK(sb_utf8_valid((const uint8_t *)msg, strlen(msg)));
}

static const sb_ai_cbs_t cbs = {on_start, on_delta, on_done, on_error};

static int start(rec_t *r)
{
    if (!r->url[0])
        snprintf(r->url, sizeof(r->url), "http://127.0.0.1:%d%s", up_port,
                 r->dialect == SB_AI_OPENAI ? "/v1" : "");
    sb_ai_upstream_t up = {
        .url = r->url,
        .api_key = r->key ? (strcmp(r->key, "none") == 0 ? NULL : r->key) : "sk-test",
        .model = r->model,
        .dialect = r->dialect,
        .first_token_timeout_ms = r->first_token_ms,
        .idle_timeout_ms = r->idle_ms,
    };
    const char *m = r->want_text == 2 ? echo_json : msgs_json;
    const char *why = NULL;
    return sb_ai_start(r->eng, &up, m, strlen(m), &cbs, r, &r->call, &why);
}

static bool timed_out;
static void watchdog_cb(uv_timer_t *t) { timed_out = true; }

/* Runs the loop until `want` final callbacks arrived, or 60 s passed. */
static void run_until(uv_loop_t *loop, int want)
{
    uv_timer_t wd;
    uv_timer_init(loop, &wd);
    uv_timer_start(&wd, watchdog_cb, 60000, 0);
    timed_out = false;
    while (finals < want && !timed_out) uv_run(loop, UV_RUN_ONCE);
    CHECK(!timed_out);
    uv_close((uv_handle_t *)&wd, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

static void check_rec(rec_t *r)
{
    int before = tl_failures;
    CHECK_EQ_INT(r->dones + r->errors, 1);
    CHECK_EQ_INT(r->late, 0);
    CHECK(r->starts <= 1);
    if (r->want_text >= 0) {
        const char *want = r->want_text == 2 ? echo_text : texts[r->want_text];
        size_t wlen = r->want_text == 2 ? strlen(echo_text) : text_lens[r->want_text];
        CHECK_EQ_INT(r->dones, 1);
        CHECK_EQ_INT(r->starts, 1);
        CHECK(r->text.len == wlen && memcmp(r->text.p, want, wlen) == 0);
        CHECK_EQ_STR(r->finish, strlen(r->finish), "stop");
    } else {
        CHECK_EQ_INT(r->errors, 1);
        CHECK_EQ_INT(r->status, r->want_status);
        CHECK_EQ_STR(r->code, strlen(r->code), r->want_code);
        CHECK(strstr(r->msg, r->want_msg) != NULL);
        /* What arrived before the failure is a prefix of the answer. */
        CHECK(r->text.len <= text_lens[0] &&
              (r->text.len == 0 || memcmp(r->text.p, texts[0], r->text.len) == 0));
    }
    if (tl_failures != before)
        fprintf(stderr, "  in call %s (%s): status %d code %s msg \"%s\", %zu bytes of text\n",
                r->name, r->model, r->status, r->code, r->msg, r->text.len);
}

/* ---- scenarios ----------------------------------------------------------- */

#define OK(n, d, m, t) {.name = n, .dialect = d, .model = m, .want_text = t}
#define ERR(n, d, m, st, code, msg)                                                       \
    {.name = n, .dialect = d, .model = m, .want_text = -1, .want_status = st,            \
     .want_code = code, .want_msg = msg}

static void scenarios(uv_loop_t *loop, sb_ai_engine_t *e)
{
    static rec_t recs[] = {
        OK("openai story", SB_AI_OPENAI, "story", 0),
        OK("openai code", SB_AI_OPENAI, "code", 1),
        OK("openai crlf", SB_AI_OPENAI, "story@crlf", 0),
        OK("openai cr", SB_AI_OPENAI, "code@cr", 1),
        OK("openai bytes", SB_AI_OPENAI, "code@bytes", 1),
        OK("openai echo", SB_AI_OPENAI, "echo", 2),
        OK("anthropic story", SB_AI_ANTHROPIC, "story", 0),
        OK("anthropic code", SB_AI_ANTHROPIC, "code", 1),
        OK("anthropic crlf", SB_AI_ANTHROPIC, "code@crlf", 1),
        OK("anthropic cr", SB_AI_ANTHROPIC, "story@cr", 0),
        OK("anthropic bytes", SB_AI_ANTHROPIC, "story@bytes", 0),
        OK("anthropic echo", SB_AI_ANTHROPIC, "echo", 2),
        ERR("openai slow", SB_AI_OPENAI, "story@slow", 0, SB_AI_E_TIMEOUT, "no answer within"),
        ERR("openai slowbody", SB_AI_OPENAI, "story@slowbody", 200, SB_AI_E_TIMEOUT, "no answer"),
        ERR("openai reset", SB_AI_OPENAI, "story@reset", 200, SB_AI_E_RESET, "before [DONE]"),
        ERR("openai truncate", SB_AI_OPENAI, "story@truncate", 200, SB_AI_E_RESET,
            "ended before [DONE]"),
        ERR("openai empty", SB_AI_OPENAI, "story@empty", 200, SB_AI_E_RESET, "[DONE]"),
        ERR("openai stall", SB_AI_OPENAI, "story@stall", 200, SB_AI_E_STALLED, "mid-answer"),
        ERR("openai garbage", SB_AI_OPENAI, "story@garbage", 200, SB_AI_E_MALFORMED, "not JSON"),
        ERR("openai midstream", SB_AI_OPENAI, "story@midstream", 200, SB_AI_E_STATUS,
            "The server had an error while processing your request. Sorry about that!"),
        ERR("openai 429", SB_AI_OPENAI, "story@429", 429, SB_AI_E_STATUS,
            "Rate limit reached for gpt-4o in organization org-switchboard on tokens per min"),
        ERR("openai 500", SB_AI_OPENAI, "story@500", 500, SB_AI_E_STATUS,
            "The server had an error while processing your request."),
        ERR("openai 529", SB_AI_OPENAI, "story@529", 529, SB_AI_E_STATUS, "overloaded"),
        ERR("openai html502", SB_AI_OPENAI, "story@html502", 502, SB_AI_E_STATUS,
            "The upstream answered HTTP 502."),
        ERR("openai no key", SB_AI_OPENAI, "story", 401, SB_AI_E_STATUS,
            "You didn't provide an API key."),
        ERR("anthropic slow", SB_AI_ANTHROPIC, "story@slow", 0, SB_AI_E_TIMEOUT, "no answer"),
        ERR("anthropic slowbody", SB_AI_ANTHROPIC, "code@slowbody", 200, SB_AI_E_TIMEOUT,
            "no answer"),
        ERR("anthropic reset", SB_AI_ANTHROPIC, "story@reset", 200, SB_AI_E_RESET,
            "before message_stop"),
        ERR("anthropic truncate", SB_AI_ANTHROPIC, "story@truncate", 200, SB_AI_E_RESET,
            "ended before message_stop"),
        ERR("anthropic empty", SB_AI_ANTHROPIC, "story@empty", 200, SB_AI_E_RESET,
            "message_stop"),
        ERR("anthropic stall", SB_AI_ANTHROPIC, "story@stall", 200, SB_AI_E_STALLED,
            "mid-answer"),
        ERR("anthropic garbage", SB_AI_ANTHROPIC, "story@garbage", 200, SB_AI_E_MALFORMED,
            "not JSON"),
        ERR("anthropic midstream", SB_AI_ANTHROPIC, "story@midstream", 200, SB_AI_E_STATUS,
            "Overloaded"),
        ERR("anthropic 429", SB_AI_ANTHROPIC, "story@429", 429, SB_AI_E_STATUS,
            "This request would exceed the rate limit for your organization"),
        ERR("anthropic 500", SB_AI_ANTHROPIC, "story@500", 500, SB_AI_E_STATUS,
            "Internal server error"),
        ERR("anthropic 529", SB_AI_ANTHROPIC, "story@529", 529, SB_AI_E_STATUS, "Overloaded"),
        ERR("anthropic html502", SB_AI_ANTHROPIC, "story@html502", 502, SB_AI_E_STATUS,
            "The upstream answered HTTP 502."),
        ERR("anthropic no key", SB_AI_ANTHROPIC, "story", 401, SB_AI_E_STATUS,
            "invalid x-api-key"),
        ERR("no route", SB_AI_OPENAI, "story", 404, SB_AI_E_STATUS, "No route POST /nope"),
    };
    size_t n = sizeof(recs) / sizeof(recs[0]);
    for (size_t i = 0; i < n; i++) {
        rec_t *r = &recs[i];
        r->eng = e;
        /* Wide enough that a loaded machine still gets the headers of
         * slowbody in time; the upstream waits 5 s, so both faults still fire. */
        if (strstr(r->model, "@slow")) r->first_token_ms = 2000;
        if (strstr(r->model, "@stall")) r->idle_ms = 600;
        if (strstr(r->name, "no key")) r->key = "none";
        if (strcmp(r->name, "no route") == 0)
            snprintf(r->url, sizeof(r->url), "http://127.0.0.1:%d/nope/v1", up_port);
        CHECK_EQ_INT(start(r), 0);
    }
    CHECK_EQ_INT(sb_ai_engine_active(e), n);
    finals = 0;
    run_until(loop, (int)n);
    for (size_t i = 0; i < n; i++) {
        check_rec(&recs[i]);
        sb_buf_free(&recs[i].text);
    }
    CHECK_EQ_INT(sb_ai_engine_active(e), 0);
}

/* Cancels: from inside on_delta, and from outside any callback (a timer). */
static rec_t *outside;
static void cancel_cb(uv_timer_t *t)
{
    if (outside->deltas > 0 && !outside->final) {
        sb_ai_cancel(outside->call);
        outside->final = true;
        finals++;
        uv_timer_stop(t);
    }
}

static void cancels(uv_loop_t *loop, sb_ai_engine_t *e)
{
    rec_t in = OK("cancel inside", SB_AI_ANTHROPIC, "story", 0);
    rec_t out = OK("cancel outside", SB_AI_OPENAI, "story", 0);
    /* A call whose on_done starts another: the second must run to its end too. */
    rec_t second = OK("chained", SB_AI_ANTHROPIC, "code", 1);
    rec_t first = OK("chaining", SB_AI_OPENAI, "code", 1);
    /* A call whose first delta starts two, cancelling one of them at once. */
    rec_t spawner = OK("spawner", SB_AI_OPENAI, "story", 0);
    rec_t dropped = OK("spawned and cancelled", SB_AI_ANTHROPIC, "story", 0);
    rec_t kept = OK("spawned and kept", SB_AI_ANTHROPIC, "code", 1);
    in.eng = out.eng = second.eng = first.eng = spawner.eng = dropped.eng = kept.eng = e;
    in.cancel_after = 5;
    first.chain = &second;
    spawner.spawn_cancel = &dropped;
    spawner.spawn_keep = &kept;
    outside = &out;
    finals = 0;
    CHECK_EQ_INT(start(&in), 0);
    CHECK_EQ_INT(start(&out), 0);
    CHECK_EQ_INT(start(&first), 0);
    CHECK_EQ_INT(start(&spawner), 0);
    uv_timer_t t;
    uv_timer_init(loop, &t);
    uv_timer_start(&t, cancel_cb, 5, 5);
    run_until(loop, 7);
    uv_close((uv_handle_t *)&t, NULL);
    /* Let the cancelled calls' remaining bytes arrive: nothing may be reported. */
    uv_timer_t wait;
    uv_timer_init(loop, &wait);
    uv_timer_start(&wait, watchdog_cb, 300, 0);
    timed_out = false;
    while (!timed_out) uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wait, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* the two timers live on this stack: finish closing them */
    CHECK_EQ_INT(in.deltas, 5);
    CHECK_EQ_INT(in.dones + in.errors + in.late, 0);
    CHECK(out.deltas >= 1);
    CHECK_EQ_INT(out.dones + out.errors + out.late, 0);
    check_rec(&first);
    check_rec(&second);
    check_rec(&spawner);
    check_rec(&kept);
    CHECK_EQ_INT(dropped.starts + dropped.deltas + dropped.dones + dropped.errors, 0);
    CHECK_EQ_INT(sb_ai_engine_active(e), 0);
    sb_buf_free(&in.text);
    sb_buf_free(&out.text);
    sb_buf_free(&first.text);
    sb_buf_free(&second.text);
    sb_buf_free(&spawner.text);
    sb_buf_free(&kept.text);
}

/* 200 calls at once on one loop, both dialects: each gets its whole answer. */
static void concurrent(uv_loop_t *loop, sb_ai_engine_t *e)
{
    enum { N = 200 };
    rec_t *recs = calloc(N, sizeof(rec_t));
    for (int i = 0; i < N; i++) {
        recs[i] = (rec_t)OK("concurrent", i % 2 ? SB_AI_ANTHROPIC : SB_AI_OPENAI,
                            i % 4 < 2 ? "story" : "code", i % 4 < 2 ? 0 : 1);
        recs[i].eng = e;
        CHECK_EQ_INT(start(&recs[i]), 0);
    }
    finals = 0;
    run_until(loop, N);
    int whole = 0;
    for (int i = 0; i < N; i++) {
        int before = tl_failures;
        check_rec(&recs[i]);
        if (tl_failures == before) whole++;
        sb_buf_free(&recs[i].text);
    }
    printf("ai/engine: %d of %d concurrent calls got their whole transcript\n", whole, N);
    free(recs);
}

/* Freeing the engine with calls mid-stream: no callback afterwards, and the
 * loop closes with every handle gone. */
static void free_midstream(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sb_ai_engine_t *e = sb_ai_engine_new(&loop);
    rec_t r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (rec_t)OK("freed", i % 2 ? SB_AI_ANTHROPIC : SB_AI_OPENAI, "story", 0);
        r[i].eng = e;
        CHECK_EQ_INT(start(&r[i]), 0);
    }
    /* Run until some text arrived, then free from outside any engine callback. */
    uv_timer_t wd;
    uv_timer_init(&loop, &wd);
    uv_timer_start(&wd, watchdog_cb, 30000, 0);
    timed_out = false;
    while (r[0].deltas + r[1].deltas < 10 && !timed_out) uv_run(&loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&wd, NULL);
    CHECK(!timed_out);
    sb_ai_engine_free(e);
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < 4; i++) {
        CHECK_EQ_INT(r[i].dones + r[i].errors, 0);
        sb_buf_free(&r[i].text);
    }
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* What needs no upstream: refused connections, bad input, an unused engine. */
static void offline(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    sb_ai_engine_t *e = sb_ai_engine_new(&loop);
    CHECK(e != NULL);

    rec_t refused = {.name = "refused", .dialect = SB_AI_OPENAI, .model = "story",
                     .want_text = -1, .want_status = 0, .want_code = SB_AI_E_UNREACHABLE,
                     .want_msg = "could not be reached", .eng = e};
    snprintf(refused.url, sizeof(refused.url), "http://127.0.0.1:%d", dead_port());
    rec_t refused2 = refused;
    refused2.dialect = SB_AI_ANTHROPIC;
    CHECK_EQ_INT(start(&refused), 0);
    CHECK_EQ_INT(start(&refused2), 0);

    /* Refused synchronously, with no callback ever. */
    sb_ai_upstream_t up = {.url = "http://127.0.0.1:1", .model = "m"};
    const char *why = NULL;
    sb_ai_call_t *c = (sb_ai_call_t *)&up;
    CHECK_EQ_INT(sb_ai_start(e, &up, "[]", 2, &cbs, NULL, &c, &why), SB_EPARSE);
    CHECK(c == NULL && why != NULL);
    CHECK_EQ_INT(sb_ai_start(e, &up, "{", 1, &cbs, NULL, NULL, NULL), SB_EPARSE);
    up.api_key = "sk\r\nX-Injected: 1";
    CHECK_EQ_INT(sb_ai_start(e, &up, msgs_json, strlen(msgs_json), &cbs, NULL, NULL, &why),
                 SB_EPARSE);
    up.url = NULL;
    CHECK_EQ_INT(sb_ai_start(e, &up, msgs_json, strlen(msgs_json), &cbs, NULL, NULL, &why),
                 SB_EPARSE);

    finals = 0;
    run_until(&loop, 2);
    check_rec(&refused);
    check_rec(&refused2);
    sb_ai_engine_free(e);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);

    /* An engine never used. */
    uv_loop_init(&loop);
    sb_ai_engine_free(sb_ai_engine_new(&loop));
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    find_root();
    texts[0] = fixture("story.txt", &text_lens[0]);
    texts[1] = fixture("code.txt", &text_lens[1]);

    uint64_t t0 = sb_mono_us();
#define PHASE(what)                                                                   \
    do {                                                                              \
        printf("ai/engine: %-28s %6.2f s\n", what, (double)(sb_mono_us() - t0) / 1e6); \
        t0 = sb_mono_us();                                                            \
    } while (0)
    offline();
    PHASE("offline");
    if (!start_upstream()) {
        if (up_port == 0 && tl_failures == 0)
            printf("SKIP: node is not installed; the calls against the local upstream did not "
                   "run\n");
    } else {
        uv_loop_t loop;
        uv_loop_init(&loop);
        sb_ai_engine_t *e = sb_ai_engine_new(&loop);
        PHASE("upstream started");
        scenarios(&loop, e);
        PHASE("both dialects, every fault");
        cancels(&loop, e);
        PHASE("cancels and chained calls");
        concurrent(&loop, e);
        PHASE("200 concurrent calls");
        sb_ai_engine_free(e);
        uv_run(&loop, UV_RUN_DEFAULT);
        CHECK_EQ_INT(uv_loop_close(&loop), 0);
        free_midstream();
        PHASE("engine freed mid-stream");
        stop_upstream();
    }
    free(texts[0]);
    free(texts[1]);
    return tl_done("ai/engine");
}
