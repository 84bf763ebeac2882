/* The per-member throttle: at most one broadcast per interval, the latest
 * state always delivered (trailing edge), driven the way the presence timer
 * drives it. A simulated sender offers states on a clock; the test replays
 * what the glue does and checks every broadcast against the two rules. */
#include "presence/model.h"
#include "testlib.h"

#define INTERVAL 60

typedef struct {
    pres_throttle_t th;
    int latest;     /* the newest state offered */
    int pending;    /* the state waiting for the timer, -1 = none */
    int sent[4096]; /* times of broadcasts */
    int values[4096];
    int nsent;
} sim_t;

static void broadcast(sim_t *s, int now, int value)
{
    s->sent[s->nsent] = now;
    s->values[s->nsent++] = value;
}

static void offer(sim_t *s, int now, int value)
{
    s->latest = value;
    if (pres_throttle_offer(&s->th, now, INTERVAL)) broadcast(s, now, value);
    else s->pending = value;
}

/* The timer: runs at `now`; flushes the pending state when due. */
static void timer(sim_t *s, int now)
{
    if (s->th.pending && pres_throttle_due(&s->th, INTERVAL) <= now) {
        pres_throttle_sent(&s->th, now);
        broadcast(s, now, s->pending);
        s->pending = -1;
    }
}

static void check_rules(sim_t *s, const char *what)
{
    int bad = 0;
    for (int i = 1; i < s->nsent; i++)
        if (s->sent[i] - s->sent[i - 1] < INTERVAL) bad++;
    if (bad) fprintf(stderr, "%s: %d broadcasts closer than the interval\n", what, bad);
    CHECK_EQ_INT(bad, 0);
    CHECK(s->nsent > 0);
    CHECK_EQ_INT(s->values[s->nsent - 1], s->latest);
}

int main(void)
{
    /* The first state goes out at once (leading edge). */
    {
        pres_throttle_t t = {0};
        pres_throttle_sent(&t, 1000); /* the enter */
        CHECK(!pres_throttle_offer(&t, 1010, INTERVAL));
        CHECK(t.pending);
        CHECK_EQ_INT(pres_throttle_due(&t, INTERVAL), 1060);
        pres_throttle_sent(&t, 1060);
        CHECK(!t.pending);
        CHECK(pres_throttle_offer(&t, 1200, INTERVAL)); /* idle long enough: immediate */
        CHECK(!t.pending);
        CHECK(!pres_throttle_offer(&t, 1259, INTERVAL));
    }
    /* A pending state is not overtaken by a later offer once the interval
     * passed: it stays pending (the timer flushes the newest value), so two
     * broadcasts never come closer than the interval. */
    {
        pres_throttle_t t = {0};
        pres_throttle_sent(&t, 0);
        CHECK(!pres_throttle_offer(&t, 30, INTERVAL));
        CHECK(!pres_throttle_offer(&t, 70, INTERVAL)); /* due passed, still pending */
        CHECK(t.pending);
    }
    /* 100 updates/s for 5 s with a 10 ms timer grid (the glue's is 10 ms for 60 ms). */
    {
        static sim_t s;
        s.pending = -1;
        pres_throttle_sent(&s.th, 0);
        for (int now = 1; now <= 5000; now++) {
            if (now % 10 == 0) offer(&s, now, now / 10);
            if (now % 10 == 5) timer(&s, now);
        }
        for (int now = 5001; now <= 5200; now++)
            if (now % 10 == 5) timer(&s, now);
        check_rules(&s, "100/s");
        CHECK(s.nsent >= 5000 / 70);
        CHECK(s.nsent <= 5000 / INTERVAL + 1);
    }
    /* Bursty sender with irregular gaps and a timer at every millisecond. */
    {
        static sim_t s;
        s.pending = -1;
        pres_throttle_sent(&s.th, 0);
        unsigned x = 12345;
        int now = 0, v = 0;
        while (now < 20000) {
            x = x * 1103515245u + 12345u;
            int gap = (int)((x >> 16) % 150);
            for (int k = 1; k <= gap; k++) timer(&s, now + k);
            now += gap;
            offer(&s, now, ++v);
        }
        for (int k = 1; k <= 100; k++) timer(&s, now + k);
        check_rules(&s, "bursty");
        /* Nothing is held back longer than needed: every offer is either sent
         * at once or by the next timer after its due time. */
        CHECK(!s.th.pending);
    }
    /* Sparse updates (slower than the interval) all go out at once. */
    {
        static sim_t s;
        s.pending = -1;
        pres_throttle_sent(&s.th, 0);
        for (int i = 1; i <= 50; i++) offer(&s, i * 100, i);
        CHECK_EQ_INT(s.nsent, 50);
        for (int i = 0; i < 50; i++) CHECK_EQ_INT(s.sent[i], (i + 1) * 100);
        check_rules(&s, "sparse");
    }
    return tl_done("presence/throttle");
}
