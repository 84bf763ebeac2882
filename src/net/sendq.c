#define _GNU_SOURCE
#include "net/sendq.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#ifdef SB_HAVE_URING
#include <liburing.h>

struct sb_sendq {
    struct io_uring ring;
    bool broken; /* the ring failed once: it is gone, every send goes the plain way */
    unsigned nslots; /* registered-file table size (0: none; slot = descriptor) */
    unsigned n, niov;
    void *ud[SB_SENDQ_MAX];
    struct msghdr msg[SB_SENDQ_MAX];
    struct iovec iov[SB_SENDQ_IOVS];
    /* the results of a run, moved out so that callbacks may queue anew */
    void *run_ud[SB_SENDQ_MAX];
    ssize_t run_res[SB_SENDQ_MAX];
};

/* Setup flags from the best to the plainest: a kernel that does not know a
 * flag refuses the whole setup with EINVAL, so try again with fewer. A loop's
 * ring is used by its own thread only (SINGLE_ISSUER), completions are reaped
 * only when we ask (DEFER_TASKRUN, COOP_TASKRUN: no interrupts for task
 * work), and one failed entry does not stop the rest (SUBMIT_ALL). */
static const unsigned setup_flags[] = {
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SINGLE_ISSUER |
        IORING_SETUP_DEFER_TASKRUN,
    IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
    IORING_SETUP_SUBMIT_ALL,
    0,
};

sb_sendq_t *sb_sendq_new(const char **why)
{
    sb_sendq_t *q = calloc(1, sizeof *q);
    if (!q) {
        *why = "out of memory";
        return NULL;
    }
    int r = -EINVAL;
    for (size_t i = 0; i < sizeof setup_flags / sizeof setup_flags[0]; i++) {
        r = io_uring_queue_init(SB_SENDQ_MAX, &q->ring, setup_flags[i]);
        if (r != -EINVAL) break;
    }
    if (r < 0) {
        *why = r == -EPERM     ? "io_uring is disabled (kernel.io_uring_disabled or seccomp)"
               : r == -ENOSYS  ? "the kernel has no io_uring"
               : r == -ENOMEM  ? "no memory for an io_uring (RLIMIT_MEMLOCK?)"
                               : "io_uring_setup failed";
        free(q);
        return NULL;
    }
    struct io_uring_probe *probe = io_uring_get_probe_ring(&q->ring);
    bool ok = probe && io_uring_opcode_supported(probe, IORING_OP_SENDMSG) &&
              io_uring_opcode_supported(probe, IORING_OP_SEND);
    if (probe) io_uring_free_probe(probe);
    if (!ok) {
        *why = "the kernel's io_uring has no SEND or SENDMSG";
        io_uring_queue_exit(&q->ring);
        free(q);
        return NULL;
    }
    /* A sparse table as large as the descriptor limit (slot = descriptor). A
     * kernel without sparse tables (before 5.19) keeps plain descriptors. */
    struct rlimit rl;
    unsigned want = 0;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        want = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > SB_SENDQ_SLOTS_MAX
                   ? SB_SENDQ_SLOTS_MAX
                   : (unsigned)rl.rlim_cur;
    if (want && io_uring_register_files_sparse(&q->ring, want) == 0) q->nslots = want;
    return q;
}

int sb_sendq_register(sb_sendq_t *q, int fd)
{
    if (q->broken || fd < 0 || (unsigned)fd >= q->nslots) return -1;
    return io_uring_register_files_update(&q->ring, (unsigned)fd, &fd, 1) == 1 ? fd : -1;
}

void sb_sendq_unregister(sb_sendq_t *q, int slot)
{
    if (q->broken || slot < 0 || (unsigned)slot >= q->nslots) return;
    int none = -1;
    if (io_uring_register_files_update(&q->ring, (unsigned)slot, &none, 1) != 1) {
        /* The table would keep the socket open behind a closed descriptor;
         * tearing the ring down drops every reference it holds. The caller
         * sees sb_sendq_failed and writes the plain way from now on. */
        io_uring_queue_exit(&q->ring);
        q->broken = true;
    }
}

void sb_sendq_free(sb_sendq_t *q)
{
    if (!q) return;
    if (!q->broken) io_uring_queue_exit(&q->ring);
    free(q);
}

bool sb_sendq_room(const sb_sendq_t *q, unsigned n)
{
    return !q->broken && q->n < SB_SENDQ_MAX && q->niov + n <= SB_SENDQ_IOVS;
}

unsigned sb_sendq_len(const sb_sendq_t *q) { return q->n; }

bool sb_sendq_failed(const sb_sendq_t *q) { return q->broken; }

void sb_sendq_add(sb_sendq_t *q, int fd, int slot, const struct iovec *iov, unsigned n, void *ud)
{
    /* The ring has SB_SENDQ_MAX entries and is empty between runs, so a
     * submission entry is always there while sb_sendq_room holds. */
    struct io_uring_sqe *sqe = io_uring_get_sqe(&q->ring);
    if (slot >= 0) fd = slot;
    const int flags = MSG_DONTWAIT | MSG_NOSIGNAL;
    if (n == 1) {
        /* The common fan-out case, one frame: a plain send skips copying and
         * checking a msghdr and its iovec array in the kernel. */
        io_uring_prep_send(sqe, fd, iov[0].iov_base, iov[0].iov_len, flags);
    } else {
        struct iovec *mine = &q->iov[q->niov];
        memcpy(mine, iov, n * sizeof *iov);
        struct msghdr *m = &q->msg[q->n];
        memset(m, 0, sizeof *m);
        m->msg_iov = mine;
        m->msg_iovlen = n;
        io_uring_prep_sendmsg(sqe, fd, m, flags);
        q->niov += n;
    }
    if (slot >= 0) io_uring_sqe_set_flags(sqe, IOSQE_FIXED_FILE);
    io_uring_sqe_set_data64(sqe, q->n);
    q->ud[q->n++] = ud;
}

unsigned sb_sendq_run(sb_sendq_t *q, void (*done)(void *ud, ssize_t result))
{
    unsigned n = q->n;
    if (!n) return 0;
    for (unsigned i = 0; i < n; i++) q->run_res[i] = -EIO;
    /* One io_uring_enter submits every send and, since MSG_DONTWAIT sends
     * complete while they are issued, normally finds all their completions
     * posted already: the wait does not sleep. */
    int r, tries = 0;
    do r = io_uring_submit_and_wait(&q->ring, n);
    while ((r == -EINTR || r == -EAGAIN || r == -EBUSY) && ++tries < 1000);
    unsigned seen = 0;
    if (r >= 0) {
        while (seen < n) {
            struct io_uring_cqe *cqe;
            int w = io_uring_wait_cqe(&q->ring, &cqe);
            if (w == -EINTR) continue;
            if (w < 0) break;
            uint64_t i = io_uring_cqe_get_data64(cqe);
            if (i < n) q->run_res[i] = cqe->res;
            io_uring_cqe_seen(&q->ring, cqe);
            seen++;
        }
    }
    if (seen < n) {
        /* The ring failed us (it should not). A send without a completion may
         * or may not have gone out, so writing its bytes again could corrupt
         * the stream: it is reported as -EIO, which closes that connection
         * (its client resumes from its cursor), and the ring is torn down so
         * the kernel can never send anything of it later. */
        io_uring_queue_exit(&q->ring);
        q->broken = true;
    }
    memcpy(q->run_ud, q->ud, n * sizeof q->ud[0]);
    q->n = 0;
    q->niov = 0;
    for (unsigned i = 0; i < n; i++) done(q->run_ud[i], q->run_res[i]);
    return n;
}

#else /* no liburing at build time */

struct sb_sendq {
    int unused;
};

sb_sendq_t *sb_sendq_new(const char **why)
{
    *why = "built without liburing";
    return NULL;
}
void sb_sendq_free(sb_sendq_t *q) { (void)q; }
bool sb_sendq_room(const sb_sendq_t *q, unsigned n) { return false; }
unsigned sb_sendq_len(const sb_sendq_t *q) { return 0; }
bool sb_sendq_failed(const sb_sendq_t *q) { return true; }
int sb_sendq_register(sb_sendq_t *q, int fd) { return -1; }
void sb_sendq_unregister(sb_sendq_t *q, int slot) {}
void sb_sendq_add(sb_sendq_t *q, int fd, int slot, const struct iovec *iov, unsigned n, void *ud) {}
unsigned sb_sendq_run(sb_sendq_t *q, void (*done)(void *ud, ssize_t result)) { return 0; }

#endif
