/* Incremental parser for the upstream's Server-Sent Events stream.
 *
 * It follows the HTML "event stream interpretation" rules: lines end in CRLF,
 * LF or CR; a blank line dispatches the event built so far; `:` starts a
 * comment; `field: value` loses one leading space of the value; data lines are
 * joined by "\n"; unknown fields are ignored. The upstream's bytes arrive in
 * whatever pieces the network made, so a line (or its CRLF) may be split
 * anywhere: an unfinished line is kept in the parser until its end arrives. */
#include "ai/ai.h"

#include <limits.h>
#include <string.h>

void sb_ai_sse_init(sb_ai_sse_t *p, size_t max_event)
{
    memset(p, 0, sizeof(*p));
    p->_max = max_event ? max_event : SB_AI_MAX_EVENT;
    p->_first_line = true;
}

void sb_ai_sse_free(sb_ai_sse_t *p)
{
    sb_buf_free(&p->_line);
    sb_buf_free(&p->_data);
    p->_line = (sb_buf_t){0};
    p->_data = (sb_buf_t){0};
}

static void clear_event(sb_ai_sse_t *p)
{
    p->_data.len = 0;
    p->_event_len = 0;
    p->_has_data = false;
    p->_reset = false;
}

static void hand_out(sb_ai_sse_t *p, sb_ai_sse_event_t *ev)
{
    ev->event = sb_str(p->_event, p->_event_len);
    ev->data = sb_str(p->_data.len ? p->_data.p : "", p->_data.len);
    /* The slices stay valid until the next call, which clears the event first. */
    p->_reset = true;
}

/* Applies one complete line (without its line end). Returns 1 when the line
 * was blank and an event is ready, 0 otherwise, or SB_EPARSE. */
static int take_line(sb_ai_sse_t *p, const char *s, size_t n, const char **why)
{
    if (p->_first_line) {
        p->_first_line = false;
        /* A byte order mark may start the stream; it is not part of the first field. */
        if (n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
            s += 3;
            n -= 3;
        }
    }
    if (n == 0) {
        if (p->_has_data) return 1;
        /* An event without data is not dispatched; its event name is dropped too. */
        p->_event_len = 0;
        return 0;
    }
    if (s[0] == ':') return 0; /* a comment, e.g. a keep-alive */
    const char *colon = memchr(s, ':', n);
    size_t flen = colon ? (size_t)(colon - s) : n;
    const char *v = colon ? colon + 1 : s + n;
    size_t vlen = colon ? n - flen - 1 : 0;
    if (vlen && v[0] == ' ') {
        v++;
        vlen--;
    }
    if (flen == 4 && memcmp(s, "data", 4) == 0) {
        size_t need = p->_data.len + (p->_has_data ? 1 : 0) + vlen;
        if (need > p->_max) {
            *why = "an upstream event is larger than the limit";
            return SB_EPARSE;
        }
        if (p->_has_data) sb_buf_put(&p->_data, "\n", 1);
        sb_buf_put(&p->_data, v, vlen);
        p->_has_data = true;
    } else if (flen == 5 && memcmp(s, "event", 5) == 0) {
        /* Names we act on are short; a longer one is cut and so matches none. */
        size_t keep = vlen < sizeof(p->_event) - 1 ? vlen : sizeof(p->_event) - 1;
        memcpy(p->_event, v, keep);
        p->_event_len = keep;
    }
    /* id, retry and unknown fields mean nothing for an upstream answer. */
    return 0;
}

int sb_ai_sse_parse(sb_ai_sse_t *p, const char *buf, size_t len, sb_ai_sse_event_t *ev,
                    const char **why)
{
    if (len > (size_t)INT_MAX) {
        /* The count of consumed bytes must fit the int we return. */
        *why = "an upstream read is larger than 2 GiB";
        return SB_EPARSE;
    }
    if (p->_reset) clear_event(p);
    size_t i = 0;
    if (p->_skip_lf && len > 0) {
        p->_skip_lf = false;
        if (buf[0] == '\n') i = 1;
    }
    while (i < len) {
        /* Find the end of the current line in this input. */
        size_t start = i;
        while (i < len && buf[i] != '\n' && buf[i] != '\r') i++;
        if (i == len) {
            /* No line end yet: keep the piece for the next input. */
            if (p->_line.len + (len - start) > p->_max) {
                *why = "an upstream line is longer than the limit";
                return SB_EPARSE;
            }
            sb_buf_put(&p->_line, buf + start, len - start);
            if (p->_line.oom) {
                *why = "out of memory buffering an upstream line";
                return SB_EPARSE;
            }
            return SB_AGAIN;
        }
        const char *s = buf + start;
        size_t n = i - start;
        if (p->_line.len > 0) {
            if (p->_line.len + n > p->_max) {
                *why = "an upstream line is longer than the limit";
                return SB_EPARSE;
            }
            sb_buf_put(&p->_line, s, n);
            if (p->_line.oom) {
                *why = "out of memory buffering an upstream line";
                return SB_EPARSE;
            }
            s = p->_line.p;
            n = p->_line.len;
        }
        /* Step over the line end; a CR may be followed by an LF in the next input. */
        if (buf[i] == '\r') {
            i++;
            if (i < len) {
                if (buf[i] == '\n') i++;
            } else {
                p->_skip_lf = true;
            }
        } else {
            i++;
        }
        int r = take_line(p, s, n, why);
        p->_line.len = 0;
        if (p->_data.oom) {
            *why = "out of memory buffering an upstream event";
            return SB_EPARSE;
        }
        if (r < 0) return r;
        if (r == 1) {
            hand_out(p, ev);
            return (int)i;
        }
    }
    return SB_AGAIN;
}

int sb_ai_sse_finish(sb_ai_sse_t *p, sb_ai_sse_event_t *ev)
{
    if (p->_reset) clear_event(p);
    const char *why = NULL;
    if (p->_line.len > 0) {
        int r = take_line(p, p->_line.p, p->_line.len, &why);
        p->_line.len = 0;
        if (r < 0) return 0;
    }
    if (!p->_has_data || p->_data.oom) return 0;
    hand_out(p, ev);
    return 1;
}
