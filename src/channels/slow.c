/* Slow-reader policies: what happens when a subscriber's connection cannot
 * keep up. Memory per connection stays bounded by --max-output in every case. */
#include "channels/channels.h"
#include "config/config.h"

bool sb_sub_send(sb_conn_t *c, sb_sub_t *s, sb_frame_t *f)
{
    const void *tag = s->chan;
    size_t limit = (size_t)sb_cfg.max_output;
    if (s->policy == SB_SLOW_CONFLATE && c->qlen > 0 &&
        sb_conn_replace_tagged(c, tag, sb_frame_ref(f))) {
        /* Only the newest pending message of this channel matters (cursors,
         * dashboards): replace the one still waiting. */
        SB_STAT_ADD(c->loop, slow_conflated, 1);
        sb_chan_count_slow(s->chan, SB_SLOW_CONFLATE);
        return true;
    }
    if (c->out_bytes + f->len > limit) {
        if (s->policy == SB_SLOW_DROP_OLDEST || s->policy == SB_SLOW_CONFLATE) {
            size_t dropped = sb_conn_drop_tagged(c, tag, limit / 2);
            SB_STAT_ADD(c->loop, slow_dropped, dropped);
            for (size_t i = 0; i < dropped; i++) sb_chan_count_slow(s->chan, SB_SLOW_DROP_OLDEST);
        }
        if (c->out_bytes + f->len > limit) {
            /* Past the limit with nothing left to drop: cut the reader. It
             * resumes from history by cursor when it comes back. */
            size_t nl;
            const char *name = sb_chan_name(s->chan, &nl);
            SB_STAT_ADD(c->loop, slow_disconnects, 1);
            sb_chan_count_slow(s->chan, SB_SLOW_DISCONNECT);
            sb_log_ratelimited(SB_LOG_WARN, 1000, "slow reader disconnected",
                               "conn=%llu peer=%s channel=%s queued=%zu limit=%zu",
                               (unsigned long long)c->id, c->peer, name, c->out_bytes, limit);
            sb_conn_close(c);
            return false;
        }
    }
    sb_conn_send(c, sb_frame_ref(f), tag);
    return true;
}
