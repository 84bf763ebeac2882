/* A batch of non-blocking socket sends submitted with one system call.
 *
 * The flush pass of a loop writes to every connection with queued output. With
 * plain writes that is one writev(2) per connection, and on this kind of
 * machine the entry and exit of a system call alone cost about a microsecond
 * (page-table isolation), a sixth of a whole loopback delivery. A send queue
 * gathers the writes of a pass as io_uring IORING_OP_SENDMSG entries flagged
 * MSG_DONTWAIT and submits them together: each one still runs in the kernel
 * exactly like a writev, inline, and a full socket answers -EAGAIN at once
 * instead of waiting, so the caller handles every result as it would a
 * try-write's, before the next send queue is built.
 *
 * Built only with liburing (SB_HAVE_URING); without it, or when the kernel
 * refuses io_uring (io_uring_disabled, seccomp, an old kernel), sb_sendq_new
 * returns NULL and the caller writes as before. One send queue per loop,
 * used by that loop's thread only. */
#ifndef SB_NET_SENDQ_H
#define SB_NET_SENDQ_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>

typedef struct sb_sendq sb_sendq_t;

/* Sends queued at most at once, and iovec entries across them. */
#define SB_SENDQ_MAX 256
#define SB_SENDQ_IOVS 4096
/* Registered-file slots at most (the descriptor limit, if lower). */
#define SB_SENDQ_SLOTS_MAX 65536

/* A send queue of the calling thread, or NULL (with *why set to a static
 * reason) when io_uring is not available here. */
sb_sendq_t *sb_sendq_new(const char **why);
void sb_sendq_free(sb_sendq_t *q);

/* True once the ring has failed (sb_sendq_run said so by -EIO): nothing is
 * queued any more, and the caller should free it and write the plain way. */
bool sb_sendq_failed(const sb_sendq_t *q);
/* Room for one more send of n iovecs? When false, run the queue first. */
bool sb_sendq_room(const sb_sendq_t *q, unsigned n);
/* Registered files: a socket registered once with the ring is used by index,
 * so that no send has to look its descriptor up and take and drop a reference
 * to its file (fget/fput, 3-4 % of a loopback delivery in perf). The slot of a
 * descriptor is the descriptor itself. sb_sendq_register returns the slot, or
 * -1 when the ring has no table (an old kernel) or the call fails; the caller
 * then passes -1 and the send names the descriptor. A registered slot holds a
 * reference to the socket: sb_sendq_unregister must come before the
 * descriptor is closed, or the socket stays open (no FIN) behind the table. */
int sb_sendq_register(sb_sendq_t *q, int fd);
void sb_sendq_unregister(sb_sendq_t *q, int slot);
/* Queues sendmsg(fd, iov[0..n), MSG_DONTWAIT | MSG_NOSIGNAL) for `ud`, through
 * the registered `slot` when it is >= 0 (then fd is not used). The iovec
 * array is copied; the bytes it points to must stay untouched until
 * sb_sendq_run returns. Needs sb_sendq_room(q, n). */
void sb_sendq_add(sb_sendq_t *q, int fd, int slot, const struct iovec *iov, unsigned n, void *ud);
/* Queued, not yet run. */
unsigned sb_sendq_len(const sb_sendq_t *q);

/* Submits everything queued with one system call and calls done(ud, result)
 * once per send, in the order they were added: result is the bytes sent or
 * a negative errno (-EAGAIN when the socket buffer was full). Returns the
 * number of sends run. The queue is empty again when it returns, and done may
 * add to it (those run at the next sb_sendq_run). */
unsigned sb_sendq_run(sb_sendq_t *q, void (*done)(void *ud, ssize_t result));

#endif
