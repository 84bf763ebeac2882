/* SSE framing: multi-line data split on LF, CRLF and CR; JSON string values
 * sent as bare text, other values as JSON; envelope mode. */
#include "channels/channels.h"
#include "config/config.h"
#include "sse/sse.h"
#include "testlib.h"

static void fmt(const char *id, const char *ev, const char *data, const char *want)
{
    sb_buf_t b = {0};
    sb_sse_format(&b, id, ev, data, strlen(data));
    CHECK_EQ_STR(b.p, b.len, want);
    sb_buf_free(&b);
}

static void accept_none(sb_conn_t *c) { sb_conn_close(c); }

static sb_msg_t *publish_and_get(const char *ch, const char *event, const char *data, bool is_str)
{
    sb_pub_t p = {.channel = sb_str(ch, strlen(ch)), .data = sb_str(data, strlen(data)),
                  .data_is_string = is_str};
    if (event) p.event = sb_str(event, strlen(event));
    uint64_t seq;
    sb_err_t why;
    sb_broker_publish(&p, &seq, &why, NULL, NULL);
    sb_msg_t *out[1];
    bool rst;
    uint64_t next;
    CHECK_EQ_INT(sb_broker_history(sb_str(ch, strlen(ch)), (sb_since_t){true, seq - 1}, 1, out, &rst, &next), 1);
    return out[0];
}

int main(void)
{
    sb_log_level = SB_LOG_WARN;
    char *argv[] = {"t", NULL};
    sb_config_parse(1, argv);
    fmt("1", NULL, "hello", "id: 1\ndata: hello\n\n");
    fmt(NULL, "note", "a\nb", "event: note\ndata: a\ndata: b\n\n");
    fmt(NULL, NULL, "a\r\nb\rc\n", "data: a\ndata: b\ndata: c\ndata: \n\n");
    fmt(NULL, NULL, "", "data: \n\n");
    fmt("7", "x", "\n\n", "id: 7\nevent: x\ndata: \ndata: \ndata: \n\n");

    sb_net_init(1, "127.0.0.1", 0, accept_none);
    sb_broker_init(100, 100);
    sb_sse_init();
    sb_msg_t *m = publish_and_get("c", "notification", "\"line1\\nline2 \\u00e9\"", true);
    sb_frame_t *f = sb_msg_frame(m, SB_FMT_SSE);
    CHECK_EQ_STR(f->data, f->len, "id: 100\nevent: notification\ndata: line1\ndata: line2 \xc3\xa9\n\n");
    CHECK(sb_msg_frame(m, SB_FMT_SSE) == f); /* built once, cached */
    sb_msg_unref(m);
    m = publish_and_get("c", NULL, "{\"a\":[1,2]}", false);
    f = sb_msg_frame(m, SB_FMT_SSE);
    CHECK_EQ_STR(f->data, f->len, "id: 101\ndata: {\"a\":[1,2]}\n\n"); /* "message" is implicit */
    f = sb_msg_frame(m, SB_FMT_SSE_ENV);
    CHECK(strstr(f->data, "data: {\"id\":\"101\",\"channel\":\"c\",\"event\":\"message\",\"data\":{\"a\":[1,2]},\"time\":") == f->data + 8);
    sb_msg_unref(m);
    sb_net_stop();
    uv_run(&sb_net.loops[0]->uv, UV_RUN_DEFAULT);
    sb_net_free();
    sb_broker_free();
    return tl_done("sse_format");
}
