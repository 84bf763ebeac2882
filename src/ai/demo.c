/* The built-in demo generator (--ai-demo): a stand-in for a model so the AI
 * stream pattern can be seen with `make run` and the console, with no API key
 * and no network. It is not a model: it streams one of a few fixed answers,
 * naming itself and quoting the question, word by word on a timer. It has the
 * engine's callback contract (sb_ai_cbs_t), so the relay drives both alike.
 *
 * One uv_timer_t per generator (per loop) paces every call: it ticks every
 * TICK_MS while calls exist, and each tick hands out the words that are due. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "ai/ai.h"

#define TICK_MS 10
#define FIRST_MS 150 /* "thinking" before the first word */
#define QUOTE_MAX 80 /* bytes of the question quoted back */

struct sb_ai_demo_call {
    sb_ai_demo_t *d;
    sb_ai_demo_call_t *next, *prev;
    sb_ai_cbs_t cbs;
    void *ud;
    char *text;      /* the whole answer */
    size_t len, off; /* off: what was handed out */
    uint64_t due_ms; /* when the next word goes out */
    uint32_t rand;   /* pacing jitter */
    bool dead;       /* finished or cancelled: reaped after the walk */
};

struct sb_ai_demo {
    uv_timer_t timer;
    sb_ai_demo_call_t *calls;
    size_t active;
    int walking; /* > 0 inside the timer's walk: frees wait until it ends */
};

static const char *answers[] = {
    "Streaming is what makes an answer feel alive: each word is sent the moment it exists, so "
    "the reader starts reading while the rest is still being written. Switchboard relays every "
    "token as it arrives, and also keeps the stream as a channel, so a reload or a second tab "
    "picks it up where it was, with nothing lost and nothing doubled.",
    "Here is how this stream travels: the server takes the chat request, calls the model "
    "upstream with streaming on, and forwards each piece of text in the format the client asked "
    "for: bare text for a fetch reader, server-sent events, or the AI SDK's UI message stream "
    "for useChat. Every piece is also published to the channel named in X-Stream-Id.",
    "Try this: open the stream's channel in another tab while the answer is still coming in. It "
    "replays what was already said, then follows live. Stop the answer with DELETE "
    "/v1/ai/streams/{id}, or close the page: with --ai-on-disconnect continue the answer still "
    "completes and stays replayable for the history retention.",
};

static uint64_t now_ms(void) { return sb_mono_us() / 1000; }

static uint32_t next_rand(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* The text of the last user message of an OpenAI request body, or "". */
static void last_user_text(const char *body, char *out, size_t cap)
{
    out[0] = 0;
    cJSON *j = cJSON_Parse(body);
    cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (cJSON_IsString(role) && !strcmp(role->valuestring, "user") && cJSON_IsString(content))
            snprintf(out, cap, "%s", content->valuestring);
    }
    cJSON_Delete(j);
}

/* Builds the answer: who is speaking, the question quoted (one line, cut at a
 * character boundary), and a fixed paragraph chosen by the question. */
static char *build_answer(const char *question)
{
    char q[QUOTE_MAX + 8];
    size_t n = 0;
    uint32_t h = 2166136261u;
    for (const char *p = question; *p && n < QUOTE_MAX; p++) {
        unsigned char ch = (unsigned char)*p;
        h = (h ^ ch) * 16777619u;
        q[n++] = ch < 0x20 ? ' ' : (char)ch;
    }
    /* Do not end inside a multi-byte character. */
    while (n > 0 && ((unsigned char)q[n - 1] & 0xc0) == 0x80) n--;
    if (n > 0 && (unsigned char)q[n - 1] >= 0xc0) n--;
    q[n] = 0;
    const char *para = answers[h % (sizeof answers / sizeof answers[0])];
    char *out = NULL;
    if (asprintf(&out,
                 "This is Switchboard's built-in demo generator (--ai-demo), not a language "
                 "model. You asked: \"%s%s\". %s",
                 q, question[n] ? "..." : "", para) < 0)
        return NULL;
    return out;
}

static void unlink_call(sb_ai_demo_call_t *c)
{
    sb_ai_demo_t *d = c->d;
    if (c->prev) c->prev->next = c->next;
    else d->calls = c->next;
    if (c->next) c->next->prev = c->prev;
}

static void free_call(sb_ai_demo_call_t *c)
{
    unlink_call(c);
    free(c->text);
    free(c);
}

/* The end of one word: its leading spaces and the non-space bytes after them. */
static size_t word_end(const char *s, size_t off, size_t len)
{
    size_t i = off;
    while (i < len && s[i] == ' ') i++;
    while (i < len && s[i] != ' ') i++;
    return i;
}

static void tick_cb(uv_timer_t *t)
{
    sb_ai_demo_t *d = t->data;
    uint64_t now = now_ms();
    d->walking++;
    /* Calls started from a callback go to the head of the list and are not
     * visited in this walk; none is due yet anyway. */
    for (sb_ai_demo_call_t *c = d->calls; c; c = c->next) {
        while (!c->dead && c->due_ms <= now) {
            if (c->off < c->len) {
                size_t end = word_end(c->text, c->off, c->len);
                size_t off = c->off;
                c->off = end;
                c->due_ms += 15 + next_rand(&c->rand) % 25;
                if (c->cbs.on_delta) c->cbs.on_delta(c->ud, c->text + off, end - off);
            } else {
                c->dead = true;
                d->active--;
                if (c->cbs.on_done) c->cbs.on_done(c->ud, "stop");
            }
        }
    }
    if (--d->walking == 0) {
        for (sb_ai_demo_call_t *c = d->calls, *next; c; c = next) {
            next = c->next;
            if (c->dead) free_call(c);
        }
    }
    if (!d->calls) uv_timer_stop(&d->timer);
}

sb_ai_demo_t *sb_ai_demo_new(uv_loop_t *loop)
{
    sb_ai_demo_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    if (uv_timer_init(loop, &d->timer) < 0) {
        free(d);
        return NULL;
    }
    d->timer.data = d;
    return d;
}

int sb_ai_demo_start(sb_ai_demo_t *d, const char *messages_json, size_t len, const sb_ai_cbs_t *cbs,
                     void *ud, sb_ai_demo_call_t **out, const char **why)
{
    /* The same checks as a real call, so the demo refuses what an upstream
     * call would refuse. */
    char *body = NULL;
    const char *w = NULL;
    int rc = sb_ai_request_body(SB_AI_OPENAI, "demo", 0, messages_json, len, &body, &w);
    if (rc < 0) {
        if (why) *why = w;
        return rc;
    }
    char question[4096];
    last_user_text(body, question, sizeof question);
    free(body);
    sb_ai_demo_call_t *c = calloc(1, sizeof *c);
    if (!c || !(c->text = build_answer(question))) {
        free(c);
        return SB_ENOMEM;
    }
    c->d = d;
    c->cbs = *cbs;
    c->ud = ud;
    c->len = strlen(c->text);
    c->rand = (uint32_t)sb_random_u64() | 1;
    c->due_ms = now_ms() + FIRST_MS;
    c->next = d->calls;
    if (d->calls) d->calls->prev = c;
    d->calls = c;
    d->active++;
    if (!uv_is_active((uv_handle_t *)&d->timer)) uv_timer_start(&d->timer, tick_cb, TICK_MS, TICK_MS);
    if (out) *out = c;
    return 0;
}

void sb_ai_demo_cancel(sb_ai_demo_call_t *c)
{
    if (!c || c->dead) return;
    c->dead = true;
    c->d->active--;
    if (!c->d->walking) free_call(c);
}

size_t sb_ai_demo_active(const sb_ai_demo_t *d) { return d->active; }

static void timer_closed(uv_handle_t *h) { free(h->data); }

void sb_ai_demo_free(sb_ai_demo_t *d)
{
    if (!d) return;
    while (d->calls) free_call(d->calls);
    uv_close((uv_handle_t *)&d->timer, timer_closed);
}
