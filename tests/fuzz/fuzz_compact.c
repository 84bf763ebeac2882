/* Fuzzes the compaction of text runs (sb_broker_compact_text) as a property:
 * the input is a script of publishes (deltas with any bytes, other events,
 * deltas of other shapes, messages on another channel) and compactions at
 * any point; afterwards, reading the channel's history after every id it
 * ever issued (and from the start) must give exactly the deltas' text after
 * that id, in increasing ids, in bounded chunks. The broker starts a new life
 * per input. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>

#include "channels/channels.h"
#include "config/config.h"
#include "net/net.h"

#define MAXOPS 300

static void accept_none(sb_conn_t *c) { sb_conn_close(c); }

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    sb_log_level = SB_LOG_ERROR;
    char *args[] = {"fuzz", "--history-size", "100000", "--history-ttl", "0", NULL};
    if (sb_config_parse(5, args) != 0) abort();
    if (sb_net_init(1, "127.0.0.1", 0, accept_none) != 0) abort();
    return 0;
}

static uint64_t publish(const char *ch, const char *event, const char *data, size_t len)
{
    sb_pub_t p = {.channel = sb_str(ch, strlen(ch)), .event = sb_str(event, strlen(event)),
                  .data = sb_str(data, len)};
    uint64_t seq = 0;
    sb_err_t why;
    if (sb_broker_publish(&p, &seq, &why, NULL, NULL) != 1) abort();
    return seq;
}

/* The text of a message as a reader sees it: a delta's {"text"} string. */
static bool text_of(const sb_msg_t *m, sb_buf_t *out)
{
    if (strcmp(m->event, "delta")) return false;
    cJSON *j = cJSON_ParseWithLength(m->data, m->data_len);
    cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
    bool ok = cJSON_IsString(t) && j->child == t && !t->next;
    if (ok) sb_buf_puts(out, t->valuestring);
    cJSON_Delete(j);
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_broker_init(1000, 1000);
    uint64_t ids[MAXOPS + 1];
    size_t ends[MAXOPS + 1]; /* expected text length up to and including ids[i] */
    size_t n = 0;
    sb_buf_t model = {0};
    ids[n] = 0;
    ends[n++] = 0;
    size_t i = 0;
    while (i < size && n <= MAXOPS) {
        uint8_t op = data[i++];
        size_t len = i < size ? data[i++] % 24 : 0;
        if (len > size - i) len = size - i;
        /* Text: the input's bytes, printable ASCII or two-byte UTF-8, never NUL. */
        char text[64];
        size_t tl = 0;
        for (size_t k = 0; k < len; k++) {
            uint8_t b = data[i + k];
            if (b & 0x80) {
                text[tl++] = (char)(0xc2 + (b & 1));
                text[tl++] = (char)(0x80 | (b & 0x3f));
            } else {
                text[tl++] = (char)(0x20 + b % 0x5f);
            }
        }
        i += len;
        sb_buf_t d = {0};
        switch (op % 6) {
        case 0:
        case 1: /* a delta */
            sb_buf_puts(&d, "{\"text\":");
            sb_buf_json_str(&d, text, tl);
            sb_buf_puts(&d, "}");
            ids[n] = publish("ai:f", "delta", d.p, d.len);
            sb_buf_put(&model, text, tl);
            ends[n++] = model.len;
            break;
        case 2: /* another event on the channel: never part of a run */
            ids[n] = publish("ai:f", "note", "{\"text\":\"x\"}", 12);
            ends[n++] = model.len;
            break;
        case 3: /* a delta of another shape: not joinable, and no text for readers */
            ids[n] = publish("ai:f", "delta", "{\"text\":\"y\",\"z\":1}", 18);
            ends[n++] = model.len;
            break;
        case 4: /* another channel in between */
            publish("news", "delta", "{\"text\":\"n\"}", 12);
            break;
        case 5: /* compact up to some id published so far */
            if (sb_broker_compact_text(SB_STR("ai:f"), SB_STR("delta"), ids[(size_t)len % n]) ==
                SB_ENOMEM)
                abort();
            break;
        }
        sb_buf_free(&d);
    }
    sb_broker_compact_text(SB_STR("ai:f"), SB_STR("delta"), ids[n - 1]);
    /* Every id the channel issued (and 0) as a cursor. */
    sb_msg_t *out[64];
    for (size_t c = 0; c < n; c++) {
        sb_buf_t got = {0};
        uint64_t since = ids[c], prev = since;
        for (;;) {
            bool rst;
            uint64_t next;
            size_t k = sb_broker_history(SB_STR("ai:f"), (sb_since_t){true, since}, 64, out, &rst, &next);
            if (rst) abort();
            for (size_t x = 0; x < k; x++) {
                if (out[x]->seq <= prev || (out[x]->flags & SB_MSG_COMPACT)) abort();
                prev = out[x]->seq;
                size_t before = got.len;
                if (text_of(out[x], &got) && got.len - before > SB_RUN_CHUNK + 64) abort();
                sb_msg_unref(out[x]);
            }
            if (k < 64) break;
            since = next;
        }
        size_t want = model.len - ends[c];
        if (got.len != want || (want && memcmp(got.p, model.p + ends[c], want))) abort();
        sb_buf_free(&got);
    }
    sb_buf_free(&model);
    sb_broker_free();
    return 0;
}
