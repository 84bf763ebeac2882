/* The io_uring send queue (src/net/sendq.c) against real sockets: results in
 * order and equal to what the peers read, a full socket answering -EAGAIN
 * without blocking, a closed peer answering -EPIPE without SIGPIPE, gathered
 * iovecs arriving in order, the room limits, and registered-file slots
 * (sends by slot, and the socket closing only once its slot is dropped). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include "net/sendq.h"
#include "testlib.h"

#define MAXR 1024
static void *got_ud[MAXR];
static ssize_t got_res[MAXR];
static unsigned ngot;

static void done(void *ud, ssize_t r)
{
    if (ngot < MAXR) {
        got_ud[ngot] = ud;
        got_res[ngot] = r;
    }
    ngot++;
}

static void pair(int sv[2])
{
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0);
}

static size_t drain(int fd, char *out, size_t cap)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, out + n, cap - n);
        if (r <= 0) break;
        n += (size_t)r;
        if (n == cap) break;
    }
    return n;
}

static void test_many(sb_sendq_t *q)
{
    /* 300 sends over 300 sockets: the queue is full at SB_SENDQ_MAX, is run, and
     * takes the rest; every callback comes once, in order, with the byte count. */
    enum { N = 300 };
    static int sv[N][2];
    char msg[N][32];
    for (int i = 0; i < N; i++) {
        pair(sv[i]);
        snprintf(msg[i], sizeof msg[i], "message %d", i);
    }
    ngot = 0;
    unsigned ran = 0;
    for (int i = 0; i < N; i++) {
        struct iovec iov = {msg[i], strlen(msg[i])};
        if (!sb_sendq_room(q, 1)) {
            CHECK_EQ_INT(sb_sendq_len(q), SB_SENDQ_MAX);
            ran += sb_sendq_run(q, done);
        }
        sb_sendq_add(q, sv[i][0], -1, &iov, 1, (void *)(intptr_t)(i + 1));
    }
    ran += sb_sendq_run(q, done);
    CHECK_EQ_INT(ran, N);
    CHECK_EQ_INT(ngot, N);
    CHECK_EQ_INT(sb_sendq_len(q), 0);
    for (int i = 0; i < N; i++) {
        CHECK(got_ud[i] == (void *)(intptr_t)(i + 1));
        CHECK_EQ_INT(got_res[i], strlen(msg[i]));
        char buf[64];
        size_t n = drain(sv[i][1], buf, sizeof buf);
        CHECK_EQ_STR(buf, n, msg[i]);
        close(sv[i][0]);
        close(sv[i][1]);
    }
    CHECK_EQ_INT(sb_sendq_run(q, done), 0); /* an empty run is a no-op */
    CHECK(!sb_sendq_failed(q));
}

static void test_gather(sb_sendq_t *q)
{
    int sv[2];
    pair(sv);
    struct iovec iov[3] = {{"one ", 4}, {"two ", 4}, {"three", 5}};
    ngot = 0;
    sb_sendq_add(q, sv[0], -1, iov, 3, q);
    CHECK_EQ_INT(sb_sendq_run(q, done), 1);
    CHECK_EQ_INT(got_res[0], 13);
    char buf[64];
    size_t n = drain(sv[1], buf, sizeof buf);
    CHECK_EQ_STR(buf, n, "one two three");
    /* the iovec limit: a send of more entries than are left waits for a run */
    CHECK(sb_sendq_room(q, SB_SENDQ_IOVS));
    CHECK(!sb_sendq_room(q, SB_SENDQ_IOVS + 1));
    close(sv[0]);
    close(sv[1]);
}

static void test_full(sb_sendq_t *q)
{
    /* Nobody reads: sends go on until the buffer is full, then -EAGAIN comes at
     * once instead of the loop blocking, and what the sends reported equals
     * what the peer then reads. */
    int sv[2];
    pair(sv);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    static char chunk[16384];
    memset(chunk, 'x', sizeof chunk);
    size_t sent = 0;
    bool eagain = false;
    for (int round = 0; round < 1000 && !eagain; round++) {
        struct iovec iov = {chunk, sizeof chunk};
        ngot = 0;
        sb_sendq_add(q, sv[0], -1, &iov, 1, NULL);
        sb_sendq_run(q, done);
        CHECK_EQ_INT(ngot, 1);
        if (got_res[0] == -EAGAIN) eagain = true;
        else if (got_res[0] > 0) sent += (size_t)got_res[0];
        else CHECK(!"unexpected send result");
    }
    CHECK(eagain);
    static char back[1 << 22];
    size_t n = drain(sv[1], back, sizeof back);
    CHECK_EQ_INT(n, sent);
    close(sv[0]);
    close(sv[1]);
}

static void test_closed_peer(sb_sendq_t *q)
{
    /* SIGPIPE is left at its default here: MSG_NOSIGNAL must keep it away. */
    signal(SIGPIPE, SIG_DFL);
    int sv[2];
    pair(sv);
    close(sv[1]);
    struct iovec iov = {"lost", 4};
    ngot = 0;
    sb_sendq_add(q, sv[0], -1, &iov, 1, NULL);
    sb_sendq_run(q, done);
    CHECK_EQ_INT(ngot, 1);
    CHECK(got_res[0] == -EPIPE || got_res[0] == -ECONNRESET);
    /* a descriptor that is not open at all */
    ngot = 0;
    int bad = sv[0];
    close(sv[0]);
    sb_sendq_add(q, bad, -1, &iov, 1, NULL);
    sb_sendq_run(q, done);
    CHECK_EQ_INT(ngot, 1);
    CHECK_EQ_INT(got_res[0], -EBADF);
}

static bool peer_sees_eof(int fd)
{
    char c;
    for (int i = 0; i < 100; i++) {
        ssize_t r = read(fd, &c, 1);
        if (r == 0) return true;
        if (r < 0 && errno != EAGAIN) return false;
        usleep(1000);
    }
    return false;
}

static void test_registered(sb_sendq_t *q)
{
    /* Sends through a registered slot arrive like the others, single and
     * gathered. The table holds the socket open behind a closed descriptor
     * until the slot is unregistered: the peer sees EOF only then. A new
     * socket that reuses the number is registered anew and gets its own data. */
    int sv[2];
    pair(sv);
    int slot = sb_sendq_register(q, sv[0]);
    CHECK_EQ_INT(slot, sv[0]);
    struct iovec one = {"fixed ", 6};
    struct iovec two[2] = {{"gathered ", 9}, {"too", 3}};
    ngot = 0;
    sb_sendq_add(q, -1, slot, &one, 1, NULL);
    sb_sendq_add(q, -1, slot, two, 2, NULL);
    CHECK_EQ_INT(sb_sendq_run(q, done), 2);
    CHECK_EQ_INT(got_res[0], 6);
    CHECK_EQ_INT(got_res[1], 12);
    char buf[64];
    size_t n = drain(sv[1], buf, sizeof buf);
    CHECK_EQ_STR(buf, n, "fixed gathered too");
    close(sv[0]);
    CHECK(!peer_sees_eof(sv[1])); /* still referenced by the table */
    sb_sendq_unregister(q, slot);
    CHECK(!sb_sendq_failed(q));
    CHECK(peer_sees_eof(sv[1]));
    int nv[2];
    pair(nv);
    CHECK_EQ_INT(nv[0] == slot || nv[1] == slot, 1); /* the number comes back */
    int mine = nv[0] == slot ? nv[0] : nv[1], other = mine == nv[0] ? nv[1] : nv[0];
    CHECK_EQ_INT(sb_sendq_register(q, mine), slot);
    struct iovec hello = {"new socket", 10};
    ngot = 0;
    sb_sendq_add(q, -1, slot, &hello, 1, NULL);
    sb_sendq_run(q, done);
    CHECK_EQ_INT(got_res[0], 10);
    n = drain(other, buf, sizeof buf);
    CHECK_EQ_STR(buf, n, "new socket");
    sb_sendq_unregister(q, slot);
    close(nv[0]);
    close(nv[1]);
    close(sv[1]);
    /* out of the table's range: no slot, the caller names the descriptor */
    CHECK_EQ_INT(sb_sendq_register(q, SB_SENDQ_SLOTS_MAX + 5), -1);
    CHECK_EQ_INT(sb_sendq_register(q, -1), -1);
}

int main(void)
{
    const char *why = NULL;
    sb_sendq_t *q = sb_sendq_new(&why);
#ifdef SB_HAVE_URING
    /* Built with liburing: the kernel must take it, unless the machine says
     * io_uring is off (then the server falls back, and so does this test). */
    if (!q) {
        FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
        int disabled = 0;
        if (f) {
            if (fscanf(f, "%d", &disabled) != 1) disabled = 0;
            fclose(f);
        }
        fprintf(stderr, "io_uring unavailable: %s (io_uring_disabled=%d)\n", why, disabled);
        CHECK(disabled != 0);
        return tl_done("net/sendq");
    }
    test_many(q);
    test_gather(q);
    test_full(q);
    test_closed_peer(q);
    test_registered(q);
    sb_sendq_free(q);
#else
    CHECK(q == NULL && why != NULL);
#endif
    return tl_done("net/sendq");
}
