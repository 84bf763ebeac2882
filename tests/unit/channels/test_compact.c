/* Compaction of text runs (sb_broker_compact_text), as AI streams use it:
 * history pages and subscribe backlogs replay a compacted run as bounded
 * chunks that resume exactly from any cursor inside it, and stay in id order
 * with the other channels of a stream. Runs one real loop (no thread). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "channels/channels.h"
#include "config/config.h"
#include "net/net.h"
#include "testlib.h"

#define MAXN 400

typedef struct {
    uint64_t ids[MAXN];
    char chans[MAXN][16];
    char events[MAXN][16];
    char *texts[MAXN];
    int n, resets;
} sink_t;

/* The text of a {"text":"..."} message (malloc), or NULL. */
static char *text_of(const sb_msg_t *m)
{
    cJSON *j = cJSON_ParseWithLength(m->data, m->data_len);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
    char *out = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
    cJSON_Delete(j);
    return out;
}

static void deliver(sb_sub_t *s, sb_msg_t *m)
{
    sink_t *k = s->sink;
    CHECK(!(m->flags & SB_MSG_COMPACT)); /* never handed out as is */
    if (k->n >= MAXN) return;
    k->ids[k->n] = m->seq;
    snprintf(k->chans[k->n], 16, "%s", sb_chan_name(m->chan, NULL));
    snprintf(k->events[k->n], 16, "%s", m->event);
    k->texts[k->n] = text_of(m);
    k->n++;
}
static void reset(sb_sub_t *s, const char *reason) { ((sink_t *)s->sink)->resets++; }
static const sb_sink_ops_t ops = {.deliver = deliver, .reset = reset};

static void sink_clear(sink_t *k)
{
    for (int i = 0; i < k->n; i++) free(k->texts[i]);
    memset(k, 0, sizeof *k);
}

static void accept_none(sb_conn_t *c) { sb_conn_close(c); }

static uint64_t pub(const char *ch, const char *event, const char *data)
{
    sb_pub_t p = {.channel = sb_str(ch, strlen(ch)), .event = sb_str(event, strlen(event)),
                  .data = sb_str(data, strlen(data))};
    uint64_t seq = 0;
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_publish(&p, &seq, &why, NULL, NULL), 1);
    return seq;
}

static uint64_t pub_text(const char *ch, const char *text)
{
    sb_buf_t b = {0};
    sb_buf_puts(&b, "{\"text\":");
    sb_buf_json_str(&b, text, strlen(text));
    sb_buf_puts(&b, "}");
    sb_buf_put(&b, "", 1);
    uint64_t seq = pub(ch, "delta", b.p);
    sb_buf_free(&b);
    return seq;
}

static int64_t kept(const char *ch)
{
    sb_chan_info_t info;
    sb_broker_channel_info(sb_str(ch, strlen(ch)), &info);
    sb_msg_unref(info.last);
    return info.history;
}

/* The concatenated delta texts of the history after `since`, checking that
 * ids increase, start after since, and that every chunk is bounded. */
static char *history_text(const char *ch, uint64_t since, size_t limit, size_t *count, uint64_t *last)
{
    sb_msg_t *out[MAXN];
    bool rst;
    uint64_t next;
    size_t n = sb_broker_history(sb_str(ch, strlen(ch)), (sb_since_t){true, since}, limit, out, &rst, &next);
    CHECK(!rst);
    sb_buf_t b = {0};
    uint64_t prev = since;
    for (size_t i = 0; i < n; i++) {
        CHECK(out[i]->seq > prev);
        prev = out[i]->seq;
        CHECK(!(out[i]->flags & SB_MSG_COMPACT));
        if (!strcmp(out[i]->event, "delta")) {
            char *t = text_of(out[i]); /* NULL for a delta that is not {"text"} */
            if (t) {
                CHECK(strlen(t) <= SB_RUN_CHUNK + 1000);
                sb_buf_puts(&b, t);
            }
            free(t);
        }
        sb_msg_unref(out[i]);
    }
    if (n) CHECK(next == prev);
    sb_buf_put(&b, "", 1);
    if (count) *count = n;
    if (last) *last = prev;
    return b.p;
}

static void run(sb_loop_t *l)
{
    for (int i = 0; i < 5; i++) uv_run(&l->uv, UV_RUN_NOWAIT);
}

/* A stream of small deltas: compacted to one message, every cursor resumes exactly. */
static void test_every_cursor(void)
{
    uint64_t ids[120];
    char full[4096] = "", prefix[120][4096];
    for (int i = 0; i < 120; i++) {
        char t[32];
        snprintf(t, sizeof t, "%s%d%s", i % 9 ? " w" : " é", i, i % 13 ? "" : "\n\"q\"");
        ids[i] = pub_text("ai:a", t);
        strcat(full, t);
        snprintf(prefix[i], sizeof prefix[i], "%s", full);
    }
    uint64_t done = pub("ai:a", "done", "{\"reason\":\"complete\"}");
    CHECK_EQ_INT(kept("ai:a"), 121);
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:a"), SB_STR("delta"), ids[119]), 0);
    CHECK_EQ_INT(kept("ai:a"), 2); /* the run and the done */
    size_t n;
    uint64_t last;
    char *t = history_text("ai:a", 0, MAXN, &n, &last);
    CHECK_EQ_STR(t, strlen(t), full);
    CHECK_EQ_INT(n, 2);
    CHECK(last == done);
    free(t);
    for (int i = 0; i < 120; i++) {
        t = history_text("ai:a", ids[i], MAXN, &n, &last);
        CHECK(strlen(prefix[i]) + strlen(t) == strlen(full) && !strcmp(full + strlen(prefix[i]), t));
        CHECK(last == done);
        free(t);
    }
    /* Compacting again changes nothing; an unknown channel is fine. */
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:a"), SB_STR("delta"), done), 0);
    CHECK_EQ_INT(kept("ai:a"), 2);
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:none"), SB_STR("delta"), done), 0);
}

/* Long texts come back in bounded chunks cut at original boundaries, and a
 * history page's limit counts chunks. */
static void test_bounded_chunks(void)
{
    char word[1001];
    memset(word, 'x', 1000);
    word[1000] = 0;
    uint64_t ids[40];
    for (int i = 0; i < 40; i++) {
        word[0] = (char)('A' + i % 26);
        ids[i] = pub_text("ai:b", word);
    }
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:b"), SB_STR("delta"), ids[39]), 0);
    CHECK_EQ_INT(kept("ai:b"), 1);
    sb_msg_t *out[16];
    bool rst;
    uint64_t next;
    size_t n = sb_broker_history(SB_STR("ai:b"), (sb_since_t){true, 0}, 16, out, &rst, &next);
    CHECK(n >= 5);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        char *t = text_of(out[i]);
        size_t len = t ? strlen(t) : 0;
        CHECK(len <= SB_RUN_CHUNK && len % 1000 == 0); /* whole originals only */
        bool known = false;
        for (int k = 0; k < 40; k++) known |= out[i]->seq == ids[k];
        CHECK(known); /* a chunk carries the id of its last original */
        total += len;
        free(t);
        sb_msg_unref(out[i]);
    }
    CHECK_EQ_INT(total, 40000);
    /* limit 2: two chunks, and next resumes after the second. */
    n = sb_broker_history(SB_STR("ai:b"), (sb_since_t){true, 0}, 2, out, &rst, &next);
    CHECK_EQ_INT(n, 2);
    CHECK(next == out[1]->seq);
    uint64_t after = next;
    for (size_t i = 0; i < n; i++) sb_msg_unref(out[i]);
    size_t rest;
    char *t = history_text("ai:b", after, MAXN, &rest, NULL);
    CHECK(strlen(t) + 2 * 8000 == 40000);
    free(t);
}

/* Runs grow as a stream goes on; foreign messages and other shapes split them. */
static void test_incremental_and_breaks(void)
{
    uint64_t a = 0;
    for (int i = 0; i < 10; i++) a = pub_text("ai:c", "a");
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:c"), SB_STR("delta"), a), 0);
    CHECK_EQ_INT(kept("ai:c"), 1);
    for (int i = 0; i < 10; i++) a = pub_text("ai:c", "b");
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:c"), SB_STR("delta"), a), 0);
    CHECK_EQ_INT(kept("ai:c"), 1);
    pub("ai:c", "note", "{\"text\":\"not a delta\"}");
    pub("ai:c", "delta", "{\"text\":\"x\",\"more\":1}");
    pub("ai:c", "delta", "{\"text\":\"nul\\u0000\"}");
    pub("ai:c", "delta", "\"bare\"");
    for (int i = 0; i < 3; i++) a = pub_text("ai:c", "c");
    uint64_t single = pub("ai:c", "note", "{}");
    a = pub_text("ai:c", "d");
    /* SB_AGAIN: an id past the newest is not in history yet; what is there is done. */
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:c"), SB_STR("delta"), a + 5), SB_AGAIN);
    /* run(20) note x nul bare run(3) note d: the lone "d" stays as it is. */
    CHECK_EQ_INT(kept("ai:c"), 8);
    size_t n;
    uint64_t last;
    char *t = history_text("ai:c", 0, MAXN, &n, &last);
    CHECK_EQ_STR(t, strlen(t), "aaaaaaaaaabbbbbbbbbbxnulcccd"); /* cJSON cuts "nul\u0000" */
    free(t);
    t = history_text("ai:c", single, MAXN, &n, &last);
    CHECK_EQ_STR(t, strlen(t), "d");
    CHECK(last == a);
    free(t);
}

/* A backlog over an AI channel and another one: chunks never jump over a
 * message of the other channel, so one cursor covers both. Both
 * subscriptions record into one sink, in delivery order. */
static void test_merged_backlog(sb_loop_t *l)
{
    uint64_t ids[60], news[3];
    int nn = 0;
    char full[256] = "";
    for (int i = 0; i < 60; i++) {
        char t[8];
        snprintf(t, sizeof t, "%c", 'a' + i % 26);
        ids[i] = pub_text("ai:d", t);
        strcat(full, t);
        if (i == 10 || i == 30 || i == 50) news[nn++] = pub("news", "message", "{\"n\":1}");
    }
    uint64_t done = pub("ai:d", "done", "{}");
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:d"), SB_STR("delta"), ids[59]), 0);
    uint64_t cursors[] = {0, ids[0], ids[5], news[0], ids[20], news[1], news[2], ids[59]};
    for (size_t c = 0; c < sizeof cursors / sizeof cursors[0]; c++) {
        sink_t k = {0};
        sb_sub_t s1 = {.ops = &ops, .sink = &k}, s2 = {.ops = &ops, .sink = &k};
        sb_sub_t *subs[] = {&s1, &s2};
        sb_str_t names[] = {SB_STR("ai:d"), SB_STR("news")};
        sb_err_t why;
        CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 2, (sb_since_t){true, cursors[c]}, &why), 0);
        CHECK_EQ_INT(k.resets, 0);
        /* One increasing sequence: a reader stopping anywhere has one cursor. */
        for (int x = 1; x < k.n; x++) CHECK(k.ids[x] > k.ids[x - 1]);
        CHECK(k.n && k.ids[0] > cursors[c] && k.ids[k.n - 1] == done);
        /* Every news message comes after exactly the text published before it. */
        sb_buf_t b = {0};
        size_t seen = 0;
        for (int x = 0; x < 60; x++)
            if (ids[x] <= cursors[c]) seen++;
        for (int x = 0; x < k.n; x++) {
            if (!strcmp(k.chans[x], "news")) {
                size_t before = 0;
                for (int z = 0; z < 60; z++)
                    if (ids[z] < k.ids[x]) before++;
                CHECK_EQ_INT(seen + b.len, before);
            } else if (!strcmp(k.events[x], "delta") && k.texts[x]) {
                sb_buf_puts(&b, k.texts[x]);
            }
        }
        sb_buf_put(&b, "", 1);
        CHECK(!strcmp(b.p, full + seen));
        sb_buf_free(&b);
        sb_broker_unsubscribe(&s1);
        sb_broker_unsubscribe(&s2);
        run(l);
        sink_clear(&k);
    }
}

/* Two compacted runs whose originals interleave: the replay alternates
 * between them in id order. */
static void test_two_runs(sb_loop_t *l)
{
    uint64_t last = 0;
    for (int i = 0; i < 40; i++) last = pub_text(i % 3 ? "ai:e" : "ai:f", i % 3 ? "e" : "f");
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:e"), SB_STR("delta"), last), 0);
    CHECK_EQ_INT(sb_broker_compact_text(SB_STR("ai:f"), SB_STR("delta"), last), 0);
    CHECK_EQ_INT(kept("ai:e"), 1);
    CHECK_EQ_INT(kept("ai:f"), 1);
    sink_t k = {0};
    sb_sub_t s1 = {.ops = &ops, .sink = &k}, s2 = {.ops = &ops, .sink = &k};
    sb_sub_t *subs[] = {&s1, &s2};
    sb_str_t names[] = {SB_STR("ai:e"), SB_STR("ai:f")};
    sb_err_t why;
    CHECK_EQ_INT(sb_broker_subscribe(l, subs, names, 2, (sb_since_t){true, 0}, &why), 0);
    sb_buf_t b = {0};
    for (int x = 0; x < k.n; x++) {
        if (x) CHECK(k.ids[x] > k.ids[x - 1]);
        if (k.texts[x]) sb_buf_puts(&b, k.texts[x]);
    }
    sb_buf_put(&b, "", 1);
    /* f ee f ee ...: each chunk is a stretch of one channel between the other's. */
    char want[64] = "";
    for (int i = 0; i < 40; i++) strcat(want, i % 3 ? "e" : "f");
    CHECK_EQ_STR(b.p, strlen(b.p), want);
    sb_buf_free(&b);
    sb_broker_unsubscribe(&s1);
    sb_broker_unsubscribe(&s2);
    run(l);
    sink_clear(&k);
}

int main(void)
{
    sb_log_level = SB_LOG_WARN;
    char *argv[] = {"t", "--history-size", "200", NULL};
    CHECK_EQ_INT(sb_config_parse(3, argv), 0);
    CHECK_EQ_INT(sb_net_init(1, "127.0.0.1", 0, accept_none), 0);
    sb_broker_init(1000, 1000);
    sb_loop_t *l = sb_net.loops[0];
    test_every_cursor();
    test_bounded_chunks();
    test_incremental_and_breaks();
    test_merged_backlog(l);
    test_two_runs(l);
    sb_net_stop();
    uv_run(&l->uv, UV_RUN_DEFAULT);
    sb_net_free();
    sb_broker_free();
    return tl_done("compact");
}
