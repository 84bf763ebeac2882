/* The presence model without loops: member and user events in order, the
 * grace period of user.leave (reload, second tab, expiry), snapshots that
 * match the change stream, distinct users, cluster node drops, limits, and
 * that every record is freed (ASan checks the leaks). */
#include <stdio.h>
#include <stdlib.h>

#include "presence/model.h"
#include "testlib.h"

typedef struct {
    pres_chan_t *ch;
    uint64_t seq;
    pres_action_t a;
    char member[256];
} rec_t;

static rec_t recs[4096];
static int nrecs;
static int chans_freed;

static void on_emit(pres_chan_t *ch, uint64_t seq, pres_action_t a, const char *m, size_t len)
{
    if (nrecs < 4096) {
        recs[nrecs] = (rec_t){.ch = ch, .seq = seq, .a = a};
        snprintf(recs[nrecs].member, sizeof recs[0].member, "%.*s", (int)len, m);
    }
    nrecs++;
}

static void on_free(pres_chan_t *ch)
{
    chans_freed++;
    free(*pres_chan_glue(ch));
}

static const pres_hooks_t hooks = {.emit = on_emit, .chan_free = on_free};

static sb_str_t S(const char *s) { return sb_str(s, strlen(s)); }

static pres_member_t *enter(pres_chan_t *ch, const char *cid, const char *uid, int64_t now)
{
    char json[200];
    snprintf(json, sizeof json, "{\"clientId\":\"%s\",\"userId\":\"%s\",\"info\":{},\"state\":{}}",
             cid, uid);
    return pres_enter(ch, 0, S(cid), S(uid), S(json), NULL, now);
}

/* Counts records of action a from index `from`. */
static int count(int from, pres_action_t a)
{
    int n = 0;
    for (int i = from; i < nrecs; i++) n += recs[i].a == a;
    return n;
}

static void test_members_and_order(void)
{
    pres_model_init(&hooks, 5000);
    nrecs = 0;
    pres_lock();
    pres_chan_t *ch = pres_chan_get(S("doc"), true, 0);
    CHECK(ch != NULL);
    CHECK(pres_chan_get(S("doc"), false, 0) == ch);
    CHECK(pres_chan_get(S("other"), false, 0) == NULL);
    pres_member_t *a = enter(ch, "1", "alice", 0);
    pres_member_t *b = enter(ch, "2", "bob", 0);
    CHECK(a && b);
    CHECK(enter(ch, "1", "alice", 0) == NULL); /* same clientId twice */
    CHECK_EQ_INT(nrecs, 4);
    CHECK(recs[0].a == PRES_USER_ENTER && recs[1].a == PRES_ENTER);
    CHECK(recs[2].a == PRES_USER_ENTER && recs[3].a == PRES_ENTER);
    for (int i = 0; i < nrecs; i++) CHECK_EQ_INT(recs[i].seq, i + 1);
    CHECK(pres_member_find(ch, 0, S("2")) == b);
    CHECK(pres_member_find(ch, 1, S("2")) == NULL); /* another node's clientId 2 */
    CHECK_EQ_INT(pres_update(b, S("{\"clientId\":\"2\",\"state\":{\"x\":1}}")), 0);
    CHECK(recs[4].a == PRES_UPDATE);
    CHECK(strstr(recs[4].member, "\"x\":1") != NULL);
    size_t jl;
    CHECK(strstr(pres_member_json(b, &jl), "\"x\":1") != NULL);

    sb_buf_t m = {0}, u = {0};
    uint64_t seq = pres_snapshot(ch, &m, &u);
    CHECK_EQ_INT(seq, 5);
    CHECK_EQ_INT(pres_chan_seq(ch), 5);
    CHECK_EQ_STR(m.p, m.len,
                 "[{\"clientId\":\"1\",\"userId\":\"alice\",\"info\":{},\"state\":{}},"
                 "{\"clientId\":\"2\",\"state\":{\"x\":1}}]");
    CHECK(u.len > 2 && strstr(u.p, "\"alice\"") && strstr(u.p, "\"bob\""));
    sb_buf_free(&m);
    sb_buf_free(&u);

    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.channels, 1);
    CHECK_EQ_INT(t.members, 2);
    CHECK_EQ_INT(t.users, 2);
    pres_leave(a, 100);
    pres_leave(b, 100);
    CHECK(recs[5].a == PRES_LEAVE && recs[6].a == PRES_LEAVE);
    pres_totals(&t);
    CHECK_EQ_INT(t.members, 0);
    CHECK_EQ_INT(t.users, 0);
    CHECK_EQ_INT(t.grace, 2);
    CHECK_EQ_INT(t.channels, 1); /* kept for the users within grace */
    CHECK_EQ_INT(pres_grace_next(), 5100);
    CHECK_EQ_INT(pres_grace_expire(5099), 5100);
    CHECK_EQ_INT(count(0, PRES_USER_LEAVE), 0);
    chans_freed = 0;
    CHECK_EQ_INT(pres_grace_expire(5100), 0);
    CHECK_EQ_INT(count(0, PRES_USER_LEAVE), 2);
    CHECK(recs[nrecs - 1].seq == 9);
    CHECK_EQ_INT(chans_freed, 1);
    CHECK(pres_chan_get(S("doc"), false, 0) == NULL);
    pres_unlock();
}

/* A reload (the old connection leaves, the new one enters within the grace
 * period) and a second tab produce no user-level events. */
static void test_grace(void)
{
    pres_model_init(&hooks, 5000);
    nrecs = 0;
    pres_lock();
    pres_chan_t *ch = pres_chan_get(S("room"), true, 0);
    pres_member_t *tab1 = enter(ch, "10", "carol", 1000);
    int mark = nrecs;
    pres_member_t *tab2 = enter(ch, "11", "carol", 1100); /* second tab */
    CHECK_EQ_INT(count(mark, PRES_USER_ENTER), 0);
    CHECK_EQ_INT(count(mark, PRES_ENTER), 1);
    pres_leave(tab1, 1200);
    CHECK_EQ_INT(pres_grace_next(), 0); /* tab2 still online: no grace */
    pres_leave(tab2, 1300);             /* reload: last tab gone ... */
    CHECK_EQ_INT(pres_grace_next(), 6300);
    pres_member_t *tab3 = enter(ch, "12", "carol", 1500); /* ... and back */
    CHECK_EQ_INT(pres_grace_next(), 0);
    CHECK_EQ_INT(pres_grace_expire(100000), 0);
    CHECK_EQ_INT(count(mark, PRES_USER_ENTER), 0);
    CHECK_EQ_INT(count(mark, PRES_USER_LEAVE), 0);
    /* Gone for good: user.leave after the grace period, carrying the last member. */
    pres_leave(tab3, 2000);
    CHECK_EQ_INT(pres_grace_expire(6999), 7000);
    CHECK_EQ_INT(count(mark, PRES_USER_LEAVE), 0);
    pres_grace_expire(7000);
    CHECK_EQ_INT(count(mark, PRES_USER_LEAVE), 1);
    CHECK(recs[nrecs - 1].a == PRES_USER_LEAVE);
    CHECK(strstr(recs[nrecs - 1].member, "\"clientId\":\"12\"") != NULL);
    /* Back after the grace period: a new user.enter. */
    pres_chan_t *ch2 = pres_chan_get(S("room"), true, 0);
    mark = nrecs;
    pres_member_t *again = enter(ch2, "13", "carol", 8000);
    CHECK_EQ_INT(count(mark, PRES_USER_ENTER), 1);
    pres_leave(again, 8100);
    pres_unlock();
    /* A zero grace period: user.leave right after the leave. */
    pres_model_init(&hooks, 0);
    pres_lock();
    mark = nrecs;
    pres_member_t *z = enter(pres_chan_get(S("room"), true, 0), "14", "dave", 0);
    pres_leave(z, 1);
    CHECK_EQ_INT(nrecs - mark, 4);
    CHECK(recs[nrecs - 2].a == PRES_LEAVE && recs[nrecs - 1].a == PRES_USER_LEAVE);
    pres_model_clear(); /* carol's grace entry from above */
    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.channels + t.members + t.users + t.grace, 0);
    pres_unlock();
}

/* Users are counted once across channels and tabs. */
static void test_distinct_users(void)
{
    pres_model_init(&hooks, 1000);
    pres_lock();
    pres_chan_t *a = pres_chan_get(S("a"), true, 0), *b = pres_chan_get(S("b"), true, 0);
    pres_member_t *m[4] = {enter(a, "1", "u1", 0), enter(b, "1", "u1", 0), enter(a, "2", "u1", 0),
                           enter(b, "3", "u2", 0)};
    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.users, 2);
    CHECK_EQ_INT(t.members, 4);
    CHECK_EQ_INT(pres_chan_members(a), 2);
    pres_leave(m[0], 0);
    pres_leave(m[1], 0);
    pres_totals(&t);
    CHECK_EQ_INT(t.users, 2); /* u1 still has member 2 */
    pres_leave(m[2], 0);
    pres_totals(&t);
    CHECK_EQ_INT(t.users, 1);
    pres_leave(m[3], 0);
    pres_grace_expire(1000);
    pres_totals(&t);
    CHECK_EQ_INT(t.users + t.members + t.channels, 0);
    pres_unlock();
}

/* Holds keep an empty channel; the channel limit refuses new channels. */
static void test_holds_and_limits(void)
{
    pres_model_init(&hooks, 0);
    pres_lock();
    pres_chan_t *ch = pres_chan_get(S("held"), true, 0);
    pres_chan_hold(ch);
    pres_member_t *m = enter(ch, "1", "u", 0);
    pres_leave(m, 0);
    CHECK(pres_chan_get(S("held"), false, 0) == ch);
    CHECK(pres_chan_get(S("second"), true, 1) == NULL); /* limit of one channel */
    pres_chan_release(ch);
    CHECK(pres_chan_get(S("held"), false, 0) == NULL);
    CHECK(pres_chan_get(S("second"), true, 1) != NULL);
    pres_chan_maybe_free(pres_chan_get(S("second"), false, 0));
    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.channels, 0);
    pres_unlock();
}

/* A departed cluster node takes exactly its members with it. */
static void test_drop_node(void)
{
    pres_model_init(&hooks, 0);
    nrecs = 0;
    pres_lock();
    pres_chan_t *ch = pres_chan_get(S("c"), true, 0);
    const char *j = "{}";
    pres_enter(ch, 0, S("1"), S("local"), S(j), NULL, 0);
    pres_enter(ch, 7, S("1"), S("remote"), S(j), NULL, 0); /* same clientId, other node */
    pres_enter(ch, 7, S("2"), S("remote2"), S(j), NULL, 0);
    pres_chan_t *only = pres_chan_get(S("only-remote"), true, 0);
    pres_enter(only, 7, S("5"), S("r"), S(j), NULL, 0);
    CHECK_EQ_INT(pres_drop_node(7, 0), 3);
    CHECK(pres_chan_get(S("only-remote"), false, 0) == NULL);
    CHECK_EQ_INT(pres_chan_members(ch), 1);
    CHECK(pres_member_find(ch, 0, S("1")) != NULL);
    pres_leave(pres_member_find(ch, 0, S("1")), 0);
    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.channels + t.members + t.users, 0);
    pres_unlock();
}

/* The members of one node, walked for a cluster snapshot, with what each is
 * (channel, node, clientId, userId); remote members counted apart. */
typedef struct {
    int n;
    char seen[8][64];
} walk_t;

static void walk_cb(pres_member_t *m, void *ud)
{
    walk_t *w = ud;
    size_t nl;
    const char *name = pres_chan_name(pres_member_chan(m), &nl);
    sb_str_t cid = pres_member_client_id(m), uid = pres_member_user_id(m);
    if (w->n < 8)
        snprintf(w->seen[w->n], sizeof w->seen[0], "%.*s/%u/%.*s/%.*s", (int)nl, name,
                 (unsigned)pres_member_node(m), (int)cid.len, cid.p, (int)uid.len, uid.p);
    w->n++;
}

static bool walked(const walk_t *w, const char *s)
{
    for (int i = 0; i < w->n && i < 8; i++)
        if (!strcmp(w->seen[i], s)) return true;
    return false;
}

static void test_node_each(void)
{
    pres_model_init(&hooks, 1000);
    nrecs = 0;
    pres_lock();
    pres_chan_t *a = pres_chan_get(S("a"), true, 0), *b = pres_chan_get(S("b"), true, 0);
    const char *j = "{}";
    pres_enter(a, 0, S("1"), S("local"), S(j), NULL, 0);
    pres_enter(a, 3, S("1"), S("r1"), S(j), NULL, 0);
    pres_enter(a, 3, S("2"), S("r2"), S(j), NULL, 0);
    pres_enter(b, 3, S("1"), S("r1"), S(j), NULL, 0);
    pres_enter(b, 4, S("9"), S("r9"), S(j), NULL, 0);
    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.members, 5);
    CHECK_EQ_INT(t.remote, 4);
    walk_t w = {0};
    pres_node_each(3, walk_cb, &w);
    CHECK_EQ_INT(w.n, 3);
    CHECK(walked(&w, "a/3/1/r1") && walked(&w, "a/3/2/r2") && walked(&w, "b/3/1/r1"));
    memset(&w, 0, sizeof w);
    pres_node_each(0, walk_cb, &w);
    CHECK_EQ_INT(w.n, 1);
    CHECK(walked(&w, "a/0/1/local"));
    memset(&w, 0, sizeof w);
    pres_node_each(5, walk_cb, &w); /* a node with no members */
    CHECK_EQ_INT(w.n, 0);
    /* A remote member that leaves is no longer counted, nor walked. */
    pres_leave(pres_member_find(b, 4, S("9")), 0);
    pres_totals(&t);
    CHECK_EQ_INT(t.remote, 3);
    CHECK_EQ_INT(pres_drop_node(3, 0), 3);
    pres_totals(&t);
    CHECK_EQ_INT(t.remote, 0);
    CHECK_EQ_INT(t.members, 1);
    memset(&w, 0, sizeof w);
    pres_node_each(3, walk_cb, &w);
    CHECK_EQ_INT(w.n, 0);
    /* The users of the dropped members (and r9's) wait out their grace. */
    CHECK_EQ_INT(t.grace, 4);
    CHECK(pres_grace_expire(1000) == 0);
    pres_leave(pres_member_find(a, 0, S("1")), 0);
    pres_grace_expire(2000);
    pres_totals(&t);
    CHECK_EQ_INT(t.channels + t.members + t.users + t.grace + t.remote, 0);
    pres_unlock();
}

/* Many members churning through one channel: tables grow and shrink, all
 * memory goes (ASan would name any leak). The change stream stays gapless. */
static void test_churn(void)
{
    pres_model_init(&hooks, 0);
    nrecs = 0;
    pres_lock();
    static pres_member_t *live[2000];
    uint64_t expect_seq = 0;
    for (int round = 0; round < 5; round++) {
        pres_chan_t *ch = pres_chan_get(S("churn"), true, 0);
        pres_chan_hold(ch);
        uint64_t before = pres_chan_seq(ch);
        CHECK(round == 0 || before == expect_seq || before == 0);
        for (int i = 0; i < 2000; i++) {
            char cid[16], uid[16];
            snprintf(cid, sizeof cid, "%d", i);
            snprintf(uid, sizeof uid, "u%d", i % 700);
            live[i] = enter(ch, cid, uid, 0);
            CHECK(live[i] != NULL);
        }
        CHECK_EQ_INT(pres_chan_members(ch), 2000);
        for (int i = 0; i < 2000; i++) pres_update(live[i], S("{\"s\":1}"));
        for (int i = 0; i < 2000; i++) pres_leave(live[i], 0);
        /* 700 user.enter + 2000 enter + 2000 update + 2000 leave + 700 user.leave */
        CHECK_EQ_INT(pres_chan_seq(ch) - before, 7400);
        expect_seq = pres_chan_seq(ch);
        pres_chan_release(ch);
    }
    pres_totals_t t;
    pres_totals(&t);
    CHECK_EQ_INT(t.channels + t.members + t.users + t.grace, 0);
    pres_unlock();
}

int main(void)
{
    test_members_and_order();
    test_grace();
    test_distinct_users();
    test_holds_and_limits();
    test_drop_node();
    test_node_each();
    test_churn();
    pres_lock();
    pres_model_clear();
    pres_unlock();
    return tl_done("presence/model");
}
