/* Cluster records (src/cluster/record.c): what a node writes round-trips, and
 * what Redis hands back is refused unless every field is exactly right. */
#include "channels/channels.h"
#include "cluster/cluster.h"
#include "testlib.h"

/* Parses text from a guarded copy, so a read past the end crashes here. The
 * slices point into the copy: it lives until the next parse. */
static char *held;
static bool parse(const char *text, size_t len, sb_crec_t *r)
{
    if (held) tl_guard_free(held);
    held = tl_guarded(text, len);
    return sb_crec_parse(held, len, r);
}

static bool parse_s(const char *text)
{
    sb_crec_t r;
    return parse(text, strlen(text), &r);
}

/* "<seq> <prev> " + body, as the script writes it. */
static size_t full(char *out, size_t cap, uint64_t seq, uint64_t prev, const sb_crec_t *r)
{
    sb_buf_t b = {0};
    sb_buf_printf(&b, "%llu %llu ", (unsigned long long)seq, (unsigned long long)prev);
    sb_crec_body(&b, r);
    size_t n = b.len < cap ? b.len : cap;
    memcpy(out, b.p, n);
    sb_buf_free(&b);
    return n;
}

static void round_trip(void)
{
    sb_crec_t in = {.time_ms = 1765000000123,
                    .flags = 0,
                    .node = 0x0123456789abcdefULL,
                    .origin = 42,
                    .channel = SB_STR("chat:lobby"),
                    .event = SB_STR("message"),
                    .data = SB_STR("{\"text\":\"h\xc3\xa9llo\"}")};
    char buf[512];
    size_t n = full(buf, sizeof buf, 1000001, 1000000, &in);
    sb_crec_t r;
    CHECK(parse(buf, n, &r));
    CHECK_EQ_INT(r.seq, 1000001);
    CHECK_EQ_INT(r.prev, 1000000);
    CHECK_EQ_INT(r.time_ms, 1765000000123);
    CHECK_EQ_INT(r.flags, 0);
    CHECK(r.node == 0x0123456789abcdefULL);
    CHECK_EQ_INT(r.origin, 42);
    CHECK_EQ_STR(r.channel.p, r.channel.len, "chat:lobby");
    CHECK_EQ_STR(r.event.p, r.event.len, "message");
    CHECK_EQ_STR(r.data.p, r.data.len, "{\"text\":\"h\xc3\xa9llo\"}");

    /* No event, a string, no previous record. */
    sb_crec_t s = {.flags = SB_MSG_DATA_STRING, .channel = SB_STR("a"), .data = SB_STR("\"plain\"")};
    n = full(buf, sizeof buf, 7, 0, &s);
    CHECK(parse(buf, n, &r));
    CHECK_EQ_INT(r.prev, 0);
    CHECK_EQ_INT(r.event.len, 0);
    CHECK_EQ_INT(r.flags, SB_MSG_DATA_STRING);
    CHECK_EQ_STR(r.data.p, r.data.len, "\"plain\"");

    /* A binary room frame: any bytes, NULs and newlines included. */
    const char bin[] = {0, '\n', (char)0xff, (char)0xc3, ' ', 0};
    sb_crec_t b = {.flags = SB_MSG_RAW | SB_MSG_BINARY, .channel = SB_STR("room:r1"),
                   .data = sb_str(bin, sizeof bin)};
    n = full(buf, sizeof buf, 9, 8, &b);
    CHECK(parse(buf, n, &r));
    CHECK_EQ_INT(r.data.len, sizeof bin);
    CHECK(memcmp(r.data.p, bin, sizeof bin) == 0);

    /* An empty text room frame, and a text frame that is not JSON. */
    sb_crec_t e = {.flags = SB_MSG_RAW, .channel = SB_STR("room:r1")};
    n = full(buf, sizeof buf, 10, 9, &e);
    CHECK(parse(buf, n, &r));
    CHECK_EQ_INT(r.data.len, 0);
    CHECK(parse_s("11 10 1 2 0000000000000001 0 7 0\nroom:r1not json {"));
}

static void refusals(void)
{
    /* The good one every refusal below is one change away from. */
    CHECK(parse_s("5 4 1 0 00000000000000aa 0 1 0\nc{}"));

    CHECK(!parse_s(""));
    CHECK(!parse_s("5"));
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 0"));         /* no newline, no channel */
    CHECK(!parse_s("0 0 1 0 00000000000000aa 0 1 0\nc{}"));    /* seq 0 */
    CHECK(!parse_s("5 5 1 0 00000000000000aa 0 1 0\nc{}"));    /* prev not before seq */
    CHECK(!parse_s("5 9 1 0 00000000000000aa 0 1 0\nc{}"));
    CHECK(!parse_s("5  4 1 0 00000000000000aa 0 1 0\nc{}"));   /* empty field */
    CHECK(!parse_s("5 -4 1 0 00000000000000aa 0 1 0\nc{}"));   /* sign */
    CHECK(!parse_s("5 4 1x 0 00000000000000aa 0 1 0\nc{}"));   /* junk in a number */
    CHECK(!parse_s("99999999999999999999999 4 1 0 00000000000000aa 0 1 0\nc{}")); /* overflow */
    CHECK(!parse_s("5 4 9223372036854775808 0 00000000000000aa 0 1 0\nc{}"));      /* time past int64 */
    CHECK(!parse_s("5 4 1 8 00000000000000aa 0 1 0\nc{}"));    /* unknown flag */
    CHECK(!parse_s("5 4 1 4 00000000000000aa 0 1 0\nc{}"));    /* binary without raw */
    CHECK(!parse_s("5 4 1 3 00000000000000aa 0 1 0\nc\"x\"")); /* raw and string */
    CHECK(!parse_s("5 4 1 0 00000000000000AA 0 1 0\nc{}"));    /* node: lower-case hex only */
    CHECK(!parse_s("5 4 1 0 0000000000000aa 0 1 0\nc{}"));     /* node: 15 digits */
    CHECK(!parse_s("5 4 1 0 00000000000000ag 0 1 0\nc{}"));
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 9 0\nc{}"));    /* channel past the end */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 9\nc{}"));    /* event past the end */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 18446744073709551615 1\nc{}"));
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 0 0\n{}"));     /* empty channel */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 2 0\na/{}"));   /* bad channel name */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 2\nc\n\n{}")); /* bad event name */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 0\nc{"));     /* not JSON */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 0\nc"));      /* no data at all */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 0\nc{} {}")); /* two values */
    CHECK(!parse_s("5 4 1 1 00000000000000aa 0 1 0\nc{}"));    /* string flag, not a string */
    CHECK(!parse_s("5 4 1 0 00000000000000aa 0 1 0\nc\"\xff\"")); /* not UTF-8 */
    CHECK(!parse_s("5 4 1 2 00000000000000aa 0 1 0\nc\xc3"));  /* text room frame: UTF-8 too */
    CHECK(parse_s("5 4 1 6 00000000000000aa 0 1 0\nc\xc3"));   /* binary: any bytes */
}

int main(void)
{
    round_trip();
    refusals();
    if (held) tl_guard_free(held);
    return tl_done("cluster/record");
}
