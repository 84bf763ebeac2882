/* Presence model: see model.h. Three kinds of records, all under one mutex:
 * channels (a global hash by name), members (a per-channel hash by
 * (node, clientId) plus a list in enter order, so a sync lists them in a
 * stable order), and users (a per-channel hash by userId, counting the
 * channel's members of that user, plus a process-wide hash counting all
 * members of a userId for the distinct-users gauge). Users whose last member
 * left wait on one global grace list; the grace period is the same for all, so
 * the list is ordered by deadline and expiry only ever looks at its head. */
#include "presence/model.h"

#include <pthread.h>
#include <stdlib.h>

/* ---- an intrusive chained hash table: each record starts with an hnode_t ---- */
typedef struct hnode {
    struct hnode *next;
    uint64_t hash;
} hnode_t;

typedef struct {
    hnode_t **b;
    uint32_t mask; /* buckets - 1; 0 with b == NULL before the first insert */
    uint32_t n;
    uint32_t min;  /* bucket count never shrinks below this */
} htab_t;

static uint64_t hash_bytes(const char *p, size_t len, uint64_t seed)
{
    uint64_t h = 1469598103934665603ull ^ seed; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static bool ht_resize(htab_t *t, uint32_t nb)
{
    hnode_t **b = calloc(nb, sizeof *b);
    if (!b) return false;
    for (uint32_t i = 0; t->b && i <= t->mask; i++) {
        for (hnode_t *n = t->b[i], *next; n; n = next) {
            next = n->next;
            n->next = b[n->hash & (nb - 1)];
            b[n->hash & (nb - 1)] = n;
        }
    }
    free(t->b);
    t->b = b;
    t->mask = nb - 1;
    return true;
}

/* Returns false on OOM (nothing inserted). */
static bool ht_add(htab_t *t, hnode_t *n)
{
    if (!t->b && !ht_resize(t, t->min)) return false;
    if (t->n >= t->mask + 1 && !ht_resize(t, (t->mask + 1) * 2) && !t->b) return false;
    hnode_t **slot = &t->b[n->hash & t->mask];
    n->next = *slot;
    *slot = n;
    t->n++;
    return true;
}

static void ht_del(htab_t *t, hnode_t *n)
{
    for (hnode_t **p = &t->b[n->hash & t->mask]; *p; p = &(*p)->next) {
        if (*p != n) continue;
        *p = n->next;
        t->n--;
        break;
    }
    /* Give memory back after a burst: shrinking failing is harmless. */
    if (t->mask + 1 > t->min && t->n < (t->mask + 1) / 8) ht_resize(t, (t->mask + 1) / 2);
}

static void ht_free(htab_t *t)
{
    free(t->b);
    t->b = NULL;
    t->mask = 0;
    t->n = 0;
}

/* ---- records ---- */
typedef struct guser { /* a userId across all channels */
    hnode_t h;
    uint32_t nmembers;
    uint16_t id_len;
    char id[];
} guser_t;

typedef struct puser { /* a userId in one channel */
    hnode_t h;
    struct puser *gnext, *gprev; /* the grace list */
    pres_chan_t *ch;
    uint32_t nmembers;
    int64_t grace_until;         /* 0 = not within its grace period */
    char *last;                  /* member JSON for the user.leave to come */
    uint32_t last_len;
    uint16_t id_len;
    char id[];
} puser_t;

struct pres_member {
    hnode_t h;
    pres_member_t *next, *prev; /* the channel's members in enter order */
    pres_chan_t *ch;
    puser_t *user;
    guser_t *guser;
    void *owner;
    char *json;
    uint32_t json_len, json_cap;
    uint16_t node;
    uint16_t cid_len;
    char cid[];
};

struct pres_chan {
    hnode_t h;
    uint64_t seq;
    int64_t holds;
    htab_t members, users;
    pres_member_t *first, *last;
    void *glue;
    uint16_t name_len;
    char name[];
};

static struct {
    pthread_mutex_t mu;
    pres_hooks_t hooks;
    int64_t grace_ms;
    htab_t chans;
    htab_t gusers;
    puser_t *grace_head, *grace_tail;
    int64_t members, remote, ngrace;
} M = {.mu = PTHREAD_MUTEX_INITIALIZER, .chans = {.min = 64}, .gusers = {.min = 64}};

void pres_model_init(const pres_hooks_t *hooks, int64_t grace_ms)
{
    M.hooks = *hooks;
    M.grace_ms = grace_ms;
}

void pres_lock(void) { pthread_mutex_lock(&M.mu); }
void pres_unlock(void) { pthread_mutex_unlock(&M.mu); }

const char *pres_action_name(pres_action_t a)
{
    static const char *names[] = {"enter", "update", "leave", "user.enter", "user.leave"};
    return (unsigned)a < 5 ? names[a] : "unknown";
}

/* ---- channels ---- */
pres_chan_t *pres_chan_get(sb_str_t name, bool create, int64_t max_chans)
{
    uint64_t h = hash_bytes(name.p, name.len, 0);
    if (M.chans.b) {
        for (hnode_t *n = M.chans.b[h & M.chans.mask]; n; n = n->next) {
            pres_chan_t *ch = (pres_chan_t *)n;
            if (n->hash == h && ch->name_len == name.len && !memcmp(ch->name, name.p, name.len))
                return ch;
        }
    }
    if (!create || (max_chans > 0 && (int64_t)M.chans.n >= max_chans) || name.len > UINT16_MAX)
        return NULL;
    pres_chan_t *ch = calloc(1, sizeof *ch + name.len + 1);
    if (!ch) return NULL;
    ch->h.hash = h;
    ch->members.min = 8;
    ch->users.min = 8;
    ch->name_len = (uint16_t)name.len;
    memcpy(ch->name, name.p, name.len);
    if (!ht_add(&M.chans, &ch->h)) {
        free(ch);
        return NULL;
    }
    return ch;
}

static void chan_free(pres_chan_t *ch)
{
    if (M.hooks.chan_free) M.hooks.chan_free(ch);
    ht_free(&ch->members);
    ht_free(&ch->users);
    free(ch);
}

void pres_chan_maybe_free(pres_chan_t *ch)
{
    if (ch->holds > 0 || ch->members.n || ch->users.n) return;
    ht_del(&M.chans, &ch->h);
    chan_free(ch);
}

void pres_chan_hold(pres_chan_t *ch) { ch->holds++; }

void pres_chan_release(pres_chan_t *ch)
{
    ch->holds--;
    pres_chan_maybe_free(ch);
}

const char *pres_chan_name(const pres_chan_t *ch, size_t *len)
{
    *len = ch->name_len;
    return ch->name;
}

uint64_t pres_chan_seq(const pres_chan_t *ch) { return ch->seq; }
int64_t pres_chan_members(const pres_chan_t *ch) { return ch->members.n; }
void **pres_chan_glue(pres_chan_t *ch) { return &ch->glue; }

static void emit(pres_chan_t *ch, pres_action_t a, const char *json, size_t len)
{
    ch->seq++;
    if (M.hooks.emit) M.hooks.emit(ch, ch->seq, a, json, len);
}

/* ---- users ---- */
static puser_t *user_find(pres_chan_t *ch, sb_str_t id, uint64_t h)
{
    if (!ch->users.b) return NULL;
    for (hnode_t *n = ch->users.b[h & ch->users.mask]; n; n = n->next) {
        puser_t *u = (puser_t *)n;
        if (n->hash == h && u->id_len == id.len && !memcmp(u->id, id.p, id.len)) return u;
    }
    return NULL;
}

static guser_t *guser_get(sb_str_t id, uint64_t h)
{
    if (M.gusers.b) {
        for (hnode_t *n = M.gusers.b[h & M.gusers.mask]; n; n = n->next) {
            guser_t *g = (guser_t *)n;
            if (n->hash == h && g->id_len == id.len && !memcmp(g->id, id.p, id.len)) return g;
        }
    }
    guser_t *g = calloc(1, sizeof *g + id.len + 1);
    if (!g) return NULL;
    g->h.hash = h;
    g->id_len = (uint16_t)id.len;
    memcpy(g->id, id.p, id.len);
    if (!ht_add(&M.gusers, &g->h)) {
        free(g);
        return NULL;
    }
    return g;
}

static void guser_put(guser_t *g)
{
    if (--g->nmembers) return;
    ht_del(&M.gusers, &g->h);
    free(g);
}

static void grace_unlink(puser_t *u)
{
    if (u->gprev) u->gprev->gnext = u->gnext;
    else M.grace_head = u->gnext;
    if (u->gnext) u->gnext->gprev = u->gprev;
    else M.grace_tail = u->gprev;
    u->gnext = u->gprev = NULL;
    u->grace_until = 0;
    free(u->last);
    u->last = NULL;
    M.ngrace--;
}

static void user_free(puser_t *u)
{
    ht_del(&u->ch->users, &u->h);
    free(u->last);
    free(u);
}

/* ---- members ---- */
pres_member_t *pres_member_find(pres_chan_t *ch, uint16_t node, sb_str_t cid)
{
    if (!ch->members.b) return NULL;
    uint64_t h = hash_bytes(cid.p, cid.len, node);
    for (hnode_t *n = ch->members.b[h & ch->members.mask]; n; n = n->next) {
        pres_member_t *m = (pres_member_t *)n;
        if (n->hash == h && m->node == node && m->cid_len == cid.len &&
            !memcmp(m->cid, cid.p, cid.len))
            return m;
    }
    return NULL;
}

static bool set_json(pres_member_t *m, sb_str_t json)
{
    if (json.len > UINT32_MAX - 1) return false;
    if (json.len + 1 > m->json_cap || m->json_cap > 4 * (json.len + 64)) {
        char *p = malloc(json.len + 1);
        if (!p) return false;
        free(m->json);
        m->json = p;
        m->json_cap = (uint32_t)json.len + 1;
    }
    memcpy(m->json, json.p, json.len);
    m->json[json.len] = 0;
    m->json_len = (uint32_t)json.len;
    return true;
}

pres_member_t *pres_enter(pres_chan_t *ch, uint16_t node, sb_str_t cid, sb_str_t uid, sb_str_t json,
                          void *owner, int64_t now_ms)
{
    if (cid.len > UINT16_MAX || uid.len > UINT16_MAX || pres_member_find(ch, node, cid))
        return NULL;
    pres_member_t *m = calloc(1, sizeof *m + cid.len + 1);
    if (!m) return NULL;
    m->h.hash = hash_bytes(cid.p, cid.len, node);
    m->node = node;
    m->cid_len = (uint16_t)cid.len;
    memcpy(m->cid, cid.p, cid.len);
    m->owner = owner;
    m->ch = ch;
    if (!set_json(m, json)) goto fail;
    uint64_t uh = hash_bytes(uid.p, uid.len, 0);
    puser_t *u = user_find(ch, uid, uh);
    bool new_user = !u;
    if (!u) {
        u = calloc(1, sizeof *u + uid.len + 1);
        if (!u) goto fail;
        u->h.hash = uh;
        u->ch = ch;
        u->id_len = (uint16_t)uid.len;
        memcpy(u->id, uid.p, uid.len);
        if (!ht_add(&ch->users, &u->h)) {
            free(u);
            goto fail;
        }
    }
    guser_t *g = guser_get(uid, uh);
    if (!g || !ht_add(&ch->members, &m->h)) {
        if (g && !g->nmembers) {
            g->nmembers = 1;
            guser_put(g);
        }
        if (new_user) user_free(u);
        goto fail;
    }
    g->nmembers++;
    m->guser = g;
    m->user = u;
    m->prev = ch->last;
    if (ch->last) ch->last->next = m;
    else ch->first = m;
    ch->last = m;
    M.members++;
    if (node) M.remote++;
    /* A user back within its grace period never left as far as readers know. */
    bool announce = u->nmembers == 0 && !u->grace_until;
    if (u->grace_until) grace_unlink(u);
    u->nmembers++;
    (void)now_ms;
    if (announce) emit(ch, PRES_USER_ENTER, m->json, m->json_len);
    emit(ch, PRES_ENTER, m->json, m->json_len);
    return m;
fail:
    free(m->json);
    free(m);
    return NULL;
}

int pres_update(pres_member_t *m, sb_str_t json)
{
    if (!set_json(m, json)) return SB_ENOMEM;
    emit(m->ch, PRES_UPDATE, m->json, m->json_len);
    return 0;
}

static void user_gone(puser_t *u, const char *json, size_t len, int64_t now_ms)
{
    pres_chan_t *ch = u->ch;
    if (M.grace_ms <= 0) {
        emit(ch, PRES_USER_LEAVE, json, len);
        user_free(u);
        return;
    }
    /* Without memory for the member JSON, user.leave carries a bare member. */
    u->last = malloc(len + 1);
    if (u->last) {
        memcpy(u->last, json, len);
        u->last[len] = 0;
        u->last_len = (uint32_t)len;
    }
    u->grace_until = now_ms + M.grace_ms;
    u->gprev = M.grace_tail;
    u->gnext = NULL;
    if (M.grace_tail) M.grace_tail->gnext = u;
    else M.grace_head = u;
    M.grace_tail = u;
    M.ngrace++;
}

static void member_unlink(pres_member_t *m)
{
    pres_chan_t *ch = m->ch;
    ht_del(&ch->members, &m->h);
    if (m->prev) m->prev->next = m->next;
    else ch->first = m->next;
    if (m->next) m->next->prev = m->prev;
    else ch->last = m->prev;
    M.members--;
    if (m->node) M.remote--;
    guser_put(m->guser);
}

void pres_leave(pres_member_t *m, int64_t now_ms)
{
    pres_chan_t *ch = m->ch;
    puser_t *u = m->user;
    member_unlink(m);
    emit(ch, PRES_LEAVE, m->json, m->json_len);
    if (--u->nmembers == 0) user_gone(u, m->json, m->json_len, now_ms);
    free(m->json);
    free(m);
    pres_chan_maybe_free(ch);
}

int64_t pres_grace_expire(int64_t now_ms)
{
    while (M.grace_head && M.grace_head->grace_until <= now_ms) {
        puser_t *u = M.grace_head;
        pres_chan_t *ch = u->ch;
        char *json = u->last;
        uint32_t len = u->last_len;
        u->last = NULL;
        grace_unlink(u);
        if (json) {
            emit(ch, PRES_USER_LEAVE, json, len);
        } else {
            sb_buf_t b = {0};
            sb_buf_puts(&b, "{\"userId\":");
            sb_buf_json_str(&b, u->id, u->id_len);
            sb_buf_puts(&b, "}");
            if (!b.oom) emit(ch, PRES_USER_LEAVE, b.p, b.len);
            sb_buf_free(&b);
        }
        free(json);
        user_free(u);
        pres_chan_maybe_free(ch);
    }
    return pres_grace_next();
}

int64_t pres_grace_next(void) { return M.grace_head ? M.grace_head->grace_until : 0; }
void *pres_member_owner(const pres_member_t *m) { return m->owner; }

const char *pres_member_json(const pres_member_t *m, size_t *len)
{
    *len = m->json_len;
    return m->json;
}

uint64_t pres_snapshot(pres_chan_t *ch, sb_buf_t *members, sb_buf_t *users)
{
    sb_buf_put(members, "[", 1);
    for (pres_member_t *m = ch->first; m; m = m->next) {
        if (m != ch->first) sb_buf_put(members, ",", 1);
        sb_buf_put(members, m->json, m->json_len);
    }
    sb_buf_put(members, "]", 1);
    if (users) {
        sb_buf_put(users, "[", 1);
        bool first = true;
        for (uint32_t i = 0; ch->users.b && i <= ch->users.mask; i++) {
            for (hnode_t *n = ch->users.b[i]; n; n = n->next) {
                puser_t *u = (puser_t *)n;
                if (!first) sb_buf_put(users, ",", 1);
                first = false;
                sb_buf_json_str(users, u->id, u->id_len);
            }
        }
        sb_buf_put(users, "]", 1);
    }
    return ch->seq;
}

size_t pres_drop_node(uint16_t node, int64_t now_ms)
{
    size_t n = 0;
    /* Collect first: a leave may free its channel and reshape the table. */
    size_t cap = M.chans.n, nch = 0;
    pres_chan_t **chans = cap ? malloc(cap * sizeof *chans) : NULL;
    if (cap && !chans) return 0;
    for (uint32_t i = 0; M.chans.b && i <= M.chans.mask; i++)
        for (hnode_t *h = M.chans.b[i]; h; h = h->next) chans[nch++] = (pres_chan_t *)h;
    for (size_t i = 0; i < nch; i++) {
        pres_chan_t *ch = chans[i];
        /* Hold the channel so it survives its last member leaving mid-walk. */
        ch->holds++;
        for (pres_member_t *m = ch->first, *next; m; m = next) {
            next = m->next;
            if (m->node != node) continue;
            pres_leave(m, now_ms);
            n++;
        }
        pres_chan_release(ch);
    }
    free(chans);
    return n;
}

void pres_node_each(uint16_t node, void (*fn)(pres_member_t *m, void *ud), void *ud)
{
    for (uint32_t i = 0; M.chans.b && i <= M.chans.mask; i++)
        for (hnode_t *h = M.chans.b[i]; h; h = h->next)
            for (pres_member_t *m = ((pres_chan_t *)h)->first; m; m = m->next)
                if (m->node == node) fn(m, ud);
}

pres_chan_t *pres_member_chan(const pres_member_t *m) { return m->ch; }
uint16_t pres_member_node(const pres_member_t *m) { return m->node; }
sb_str_t pres_member_client_id(const pres_member_t *m) { return sb_str(m->cid, m->cid_len); }
sb_str_t pres_member_user_id(const pres_member_t *m)
{
    return sb_str(m->user->id, m->user->id_len);
}

void pres_totals(pres_totals_t *out)
{
    out->channels = M.chans.n;
    out->members = M.members;
    out->remote = M.remote;
    out->users = M.gusers.n;
    out->grace = M.ngrace;
}

void pres_model_clear(void)
{
    while (M.grace_head) grace_unlink(M.grace_head);
    for (uint32_t i = 0; M.chans.b && i <= M.chans.mask; i++) {
        for (hnode_t *h = M.chans.b[i], *hn; h; h = hn) {
            hn = h->next;
            pres_chan_t *ch = (pres_chan_t *)h;
            for (pres_member_t *m = ch->first, *next; m; m = next) {
                next = m->next;
                guser_put(m->guser);
                free(m->json);
                free(m);
            }
            for (uint32_t j = 0; ch->users.b && j <= ch->users.mask; j++) {
                for (hnode_t *u = ch->users.b[j], *un; u; u = un) {
                    un = u->next;
                    free(((puser_t *)u)->last);
                    free(u);
                }
            }
            chan_free(ch);
        }
    }
    ht_free(&M.chans);
    ht_free(&M.gusers);
    M.members = 0;
    M.remote = 0;
}

/* ---- throttle ---- */
void pres_throttle_sent(pres_throttle_t *t, int64_t now_ms)
{
    t->last_ms = now_ms;
    t->pending = false;
}

bool pres_throttle_offer(pres_throttle_t *t, int64_t now_ms, int64_t interval_ms)
{
    if (!t->pending && now_ms - t->last_ms >= interval_ms) {
        t->last_ms = now_ms;
        return true;
    }
    t->pending = true;
    return false;
}
