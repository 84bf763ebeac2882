/* Crash test of the durable message log: a child process appends from several
 * threads (seqs assigned and appended under one lock, as the broker does) and
 * writes every acknowledged seq to a pipe from the completion callback; the
 * parent kills it with SIGKILL at a random moment, reopens the log and checks
 * that every acknowledged seq is there, in order, once, with its bytes intact.
 * Five crash rounds per fsync mode (ALWAYS, then BATCH), each continuing the
 * log the previous one left behind, so recovery of a killed writer is itself
 * followed by appends and another kill. */
#define _GNU_SOURCE
#include "storage/storage.h"
#include "testlib.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define ROUNDS 5
#define THREADS 3
#define MAX_ACKS 400000

/* ---- records whose every byte follows from their seq ---- */

typedef struct {
    char chan[16], key[32], data[700];
} bufs_t;

static sb_store_rec_t make_rec(uint64_t seq, bufs_t *b)
{
    int cl = snprintf(b->chan, sizeof b->chan, "room-%u", (unsigned)(seq % 5));
    int kl = seq % 4 ? 0 : snprintf(b->key, sizeof b->key, "idem-%llu", (unsigned long long)seq);
    size_t dl = (size_t)((seq * 7919) % 700);
    for (size_t i = 0; i < dl; i++) b->data[i] = (char)(seq ^ (i * 13));
    return (sb_store_rec_t){.seq = seq,
                            .time_ms = 1700000000000ll + (int64_t)seq,
                            .flags = (uint8_t)(seq >> 3),
                            .channel = sb_str(b->chan, (size_t)cl),
                            .event = SB_STR("token"),
                            .data = sb_str(b->data, dl),
                            .idem_key = sb_str(b->key, (size_t)kl)};
}

static bool same(sb_str_t a, sb_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool rec_ok(const sb_store_rec_t *r)
{
    bufs_t b;
    sb_store_rec_t e = make_rec(r->seq, &b);
    return r->time_ms == e.time_ms && r->flags == e.flags && same(r->channel, e.channel) &&
           same(r->event, e.event) && same(r->data, e.data) && same(r->idem_key, e.idem_key);
}

/* ---- the child: append until killed ---- */

static sb_store_t *child_store;
static pthread_mutex_t child_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t child_next;
static int ack_fd;

static void ack_cb(void *ud, int status)
{
    if (status != 0) _exit(3); /* the disk is healthy here: any failure is a bug */
    uint64_t seq = (uint64_t)(uintptr_t)ud;
    /* 8 bytes < PIPE_BUF: each write is atomic, and the acknowledgement is sent
     * only now that the record is durable. */
    if (write(ack_fd, &seq, sizeof seq) != sizeof seq) _exit(4);
}

static void *child_appender(void *arg)
{
    for (;;) {
        bufs_t b;
        pthread_mutex_lock(&child_mu);
        uint64_t seq = child_next++;
        sb_store_rec_t r = make_rec(seq, &b);
        int rc = sb_store_append(child_store, &r, ack_cb, (void *)(uintptr_t)seq);
        pthread_mutex_unlock(&child_mu);
        if (rc < 0) _exit(5);
        /* Keep the queue from growing without bound while the disk syncs. */
        sb_store_info_t in;
        sb_store_info(child_store, &in);
        if (in.queued > 2000) usleep(200);
    }
    return arg;
}

static void child_main(const char *dir, sb_fsync_mode_t mode, int fd)
{
    ack_fd = fd;
    /* Preallocation on, as the server runs it, in small steps: kills land
     * in fills, in zeros being overwritten, and in the trims of rolls. */
    sb_store_opts_t o = {.dir = dir, .fsync = mode, .segment_bytes = 256u << 10,
                         .prealloc_bytes = 48u << 10};
    if (sb_store_open(&o, &child_store) < 0) _exit(2);
    sb_store_info_t in;
    sb_store_info(child_store, &in);
    child_next = in.next_seq;
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++) pthread_create(&th[i], NULL, child_appender, NULL);
    for (;;) pause();
}

/* ---- the parent ---- */

static uint64_t *acks;
static size_t nacks;

typedef struct {
    uint64_t *seqs;
    size_t n, cap, bad;
} col_t;

static int collect(void *ud, const sb_store_rec_t *r)
{
    col_t *c = ud;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 1024;
        c->seqs = realloc(c->seqs, c->cap * sizeof *c->seqs);
    }
    c->seqs[c->n++] = r->seq;
    if (!rec_ok(r)) c->bad++;
    return 0;
}

static bool contains(const uint64_t *v, size_t n, uint64_t x)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v[mid] < x) lo = mid + 1;
        else hi = mid;
    }
    return lo < n && v[lo] == x;
}

/* Reads acks until `want` more have arrived (or EOF/timeout); returns false on
 * timeout or EOF, which means the child died on its own. */
static bool read_acks(int fd, size_t want, int timeout_ms)
{
    size_t target = nacks + want;
    while (nacks < target) {
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, timeout_ms);
        if (r <= 0) return false;
        uint64_t buf[512];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0) return false;
        /* The child writes whole 8-byte acks atomically and the buffer is a
         * multiple of 8, so a read never splits one. */
        if (n % 8) {
            fprintf(stderr, "crash test: torn ack read\n");
            return false;
        }
        for (ssize_t i = 0; i < n / 8 && nacks < MAX_ACKS; i++) acks[nacks++] = buf[i];
    }
    return true;
}

static void drain_acks(int fd)
{
    uint64_t buf[512];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        for (ssize_t i = 0; i < n / 8 && nacks < MAX_ACKS; i++) acks[nacks++] = buf[i];
}

static void crash_round(const char *dir, sb_fsync_mode_t mode, int round)
{
    int p[2];
    if (pipe(p) < 0) abort();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(p[0]);
        child_main(dir, mode, p[1]);
    }
    close(p[1]);
    size_t before = nacks;
    /* A random moment: after a random number of acknowledgements, plus a
     * random few milliseconds so the kill lands anywhere in a write, an
     * fdatasync, a roll or an idle wait. */
    size_t want = 1 + (size_t)(sb_random_u64() % 20000);
    bool alive = read_acks(p[0], want, 30000);
    usleep((useconds_t)(sb_random_u64() % 20000));
    kill(pid, SIGKILL);
    int st = 0;
    waitpid(pid, &st, 0);
    drain_acks(p[0]);
    close(p[0]);
    CHECK(alive);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    CHECK(nacks > before);

    /* The acks of one run arrive in seq order (callbacks run in order). */
    bool ordered = true;
    for (size_t i = before + 1; i < nacks; i++) ordered = ordered && acks[i] > acks[i - 1];
    CHECK(ordered);

    sb_store_t *s = NULL;
    sb_store_opts_t o = {.dir = dir, .fsync = mode};
    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    col_t c = {0};
    int n = sb_store_recover(s, collect, &c);
    CHECK_EQ_INT(n, c.n);
    CHECK_EQ_INT(c.bad, 0);
    bool increasing = true;
    for (size_t i = 1; i < c.n; i++) increasing = increasing && c.seqs[i] > c.seqs[i - 1];
    CHECK(increasing); /* so each record is there once */
    size_t missing = 0;
    for (size_t i = 0; i < nacks; i++) missing += !contains(c.seqs, c.n, acks[i]);
    CHECK_EQ_INT(missing, 0);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK(in.next_seq > (c.n ? c.seqs[c.n - 1] : 0));
    printf("crash %s round %d: %zu acked this run, %zu acked in all, %zu records after restart\n",
           mode == SB_FSYNC_ALWAYS ? "always" : "batch", round, nacks - before, nacks, c.n);
    free(c.seqs);
    sb_store_close(s);
}

static void rmrf(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[1024];
    while (d && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

int main(void)
{
    sb_log_level = SB_LOG_WARN;
    acks = malloc(MAX_ACKS * sizeof *acks);
    static const sb_fsync_mode_t modes[] = {SB_FSYNC_ALWAYS, SB_FSYNC_BATCH};
    for (int m = 0; m < 2; m++) {
        const char *base = getenv("TMPDIR");
        char dir[512];
        snprintf(dir, sizeof dir, "%s/sbcrash-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(dir)) abort();
        nacks = 0;
        for (int r = 0; r < ROUNDS; r++) crash_round(dir, modes[m], r);
        rmrf(dir);
    }
    free(acks);
    return tl_done("storage_crash");
}
