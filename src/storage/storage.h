/* Storage: the durable message log (issue 7).
 *
 * An append-only log of published messages, split into segment files in one
 * directory, with a CRC per record, recovery at open (a torn or corrupt tail is
 * cut off and logged, never served), a sparse in-memory index for reads from a
 * given seq, retention by bytes and age, and a durable seq reservation so that
 * message ids are never reused after a crash. docs/storage.md explains the
 * format and the reasons behind it.
 *
 * Threads: each store owns one thread that does all the appending disk work
 * (write, fdatasync, segment roll, retention). sb_store_append() only queues a
 * copy of the record under a mutex and may be called from any loop thread;
 * the completion callback runs on the store thread. sb_store_read() and
 * sb_store_info() may be called from any thread at any time between open and
 * close. sb_store_reserve() blocks on disk and is meant to be called rarely.
 *
 * Seqs: every record carries a seq >= 1, and appends must come in strictly
 * increasing seq order (the broker assigns seqs and appends under one lock).
 * Seqs need not be contiguous: a failed append leaves a gap. */
#ifndef SB_STORAGE_H
#define SB_STORAGE_H

#include "core/core.h"

#include <sys/types.h>
#include <sys/uio.h>

typedef struct sb_store sb_store_t;

/* When an append's completion callback fires, relative to the disk. */
typedef enum {
    SB_FSYNC_ALWAYS, /* after fdatasync of the record; never waits to gather others */
    SB_FSYNC_BATCH,  /* group commit: gathers appends while they keep coming (at most
                      * batch_window_us), then one write + one fdatasync for all */
    SB_FSYNC_OFF,    /* after write(2); the OS flushes when it likes */
} sb_fsync_mode_t;

/* Open options. Zero values of the numeric fields select the defaults. */
typedef struct {
    const char *dir;          /* created if missing (with parents); borrowed until open returns */
    sb_fsync_mode_t fsync;
    uint32_t batch_window_us; /* BATCH: longest wait to gather a group commit (default 5000) */
    uint32_t batch_quiet_us;  /* BATCH: close the group early after this long with no new
                               * append (default 100); see docs/storage.md */
    uint64_t segment_bytes;   /* roll to a new segment past this (default 64 MiB) */
    uint64_t retain_bytes;    /* delete oldest whole segments past this total; 0 = no cap */
    int64_t retain_ms;        /* delete segments whose newest record is older; 0 = no cap */
    /* Grow the active segment by writing this many zero bytes past its end
     * at a time (capped by segment_bytes), so that most appends overwrite
     * space the file already has and an fdatasync need not also write the
     * inode. 0 = no preallocation (this field has no default: the caller
     * picks, see SB_STORE_PREALLOC_BYTES_DEFAULT). */
    uint32_t prealloc_bytes;
    /* Optional, on the store thread: every completion callback of one written
     * run (the records of a group commit that share a write and an fdatasync)
     * runs between group_begin and group_end, in seq order. The broker takes
     * its lock once per group instead of once per record with them. */
    void (*group_begin)(void *ud);
    void (*group_end)(void *ud);
    void *group_ud;
} sb_store_opts_t;

#define SB_STORE_BATCH_WINDOW_US_DEFAULT 5000u
#define SB_STORE_BATCH_QUIET_US_DEFAULT 100u
#define SB_STORE_SEGMENT_BYTES_DEFAULT (64ull << 20)
#define SB_STORE_PREALLOC_BYTES_DEFAULT (1u << 20)

/* One record. In a record handed to a callback the slices point into the
 * store's read buffer and are valid during the callback only. */
typedef struct {
    uint64_t seq;     /* >= 1 */
    int64_t time_ms;  /* server receive time, ms since epoch */
    uint8_t flags;    /* opaque to the store */
    sb_str_t channel; /* at most 65535 bytes */
    sb_str_t event;   /* at most 65535 bytes */
    sb_str_t data;    /* at most SB_STORE_DATA_MAX bytes */
    sb_str_t idem_key; /* may be empty; at most 65535 bytes */
} sb_store_rec_t;

/* Counters and the recovered position; a snapshot. */
typedef struct {
    uint64_t next_seq;      /* max(newest seq appended or recovered, reservation) + 1 */
    uint64_t reserved_upto; /* the durable reservation (0 if none) */
    uint64_t first_seq;     /* oldest retained record, 0 when the log is empty */
    uint64_t last_seq;      /* newest durable (readable) record, 0 when the log is empty */
    uint64_t records;       /* readable records retained */
    uint64_t bytes;         /* bytes of all segment files, headers included */
    uint32_t segments;      /* segment files */
    uint32_t queued;        /* appends waiting for the store thread */
    uint64_t appends;       /* appends whose callback reported success */
    uint64_t failed_writes; /* appends whose callback reported failure */
    uint64_t fsyncs;        /* fdatasync calls on segment files */
    uint64_t last_fsync_us; /* latency of the most recent one */
    uint64_t max_fsync_us;  /* the slowest one since open */
    uint64_t read_bytes;    /* bytes read from segment files by sb_store_read/recover */
    uint64_t segments_deleted; /* by retention, since open */
    bool broken;            /* appends fail at once until the store is reopened */
} sb_store_info_t;

/* Completion of one append: status 0 = durable under the fsync mode, < 0 = it
 * failed (a negative errno / UV_E* code such as UV_ENOSPC, UV_EIO, UV_EFBIG) and
 * the record is not in the log. Runs on the store thread, in seq order. It may
 * call sb_store_append(), sb_store_read() and sb_store_info(), never
 * sb_store_close(). */
typedef void (*sb_store_done_cb)(void *ud, int status);

/* Per-record iteration callback: r is borrowed for the call only. Return 0 to
 * continue, anything else to stop after this record. */
typedef int (*sb_store_rec_cb)(void *ud, const sb_store_rec_t *r);

/* Opens (creating if needed) the log in o->dir, recovers it and starts the
 * store thread. Recovery scans the segments in seq order and verifies the
 * framing and CRC of every record; the first bad record of the newest segment
 * and everything after it are cut off with ftruncate, and a bad record in an
 * older segment ends that segment (the file is left as is); each cut is logged
 * with sb_warn (file, offset, bytes). The sparse index is rebuilt on the way.
 * The directory is locked (flock) against a second opener.
 * Returns 0 and a new store in *out, or a negative code: UV_EINVAL for bad
 * options, UV_EBUSY if another store holds the directory, a negative errno for
 * I/O failures, SB_ENOMEM. Call from any thread; blocks on disk. */
int sb_store_open(const sb_store_opts_t *o, sb_store_t **out);

/* Calls cb for every retained record, oldest first. Meant for startup, to
 * rebuild channel positions and idempotency keys; safe (but pointless) to call
 * again later. Returns the number of records delivered, or a negative code on
 * an I/O error or a record that fails its CRC (logged; records before it have
 * been delivered). Any thread; blocks on disk. */
int sb_store_recover(sb_store_t *s, sb_store_rec_cb cb, void *ud);

/* Calls cb for at most max records with seq > after_seq, oldest first. Uses the
 * sparse index to seek, so the cost is bounded by the records returned plus
 * one index span, never a scan from the start. Only records whose append has
 * completed successfully are visible. Thread-safe against appends, retention
 * and other readers. Returns the number of records delivered (0 when nothing
 * is newer), or a negative code as sb_store_recover(). Blocks on disk (reads
 * usually hit the page cache). */
int sb_store_read(sb_store_t *s, uint64_t after_seq, size_t max, sb_store_rec_cb cb, void *ud);

/* Queues a copy of r (one allocation; r is borrowed until return) for the
 * store thread, which writes it and then calls cb(ud, status) once, as
 * described for sb_store_done_cb. Never blocks on disk: it takes a mutex for a
 * list push. Any thread; r->seq must be greater than every seq appended before.
 * Returns 0 when queued (cb will run), or at once, without calling cb:
 * UV_EINVAL (seq 0 or not increasing), SB_ELIMIT (a field too long),
 * SB_ENOMEM, UV_EIO (the store is broken: an earlier failure could not be
 * undone, see docs/storage.md; reopening repairs it), UV_ESHUTDOWN (closing). */
int sb_store_append(sb_store_t *s, const sb_store_rec_t *r, sb_store_done_cb cb, void *ud);

/* As sb_store_append(), but does not wake the store thread: the caller
 * promises an sb_store_kick() soon, typically once at the end of its event
 * loop's turn, so that all the appends of a turn cost the store thread one
 * wakeup instead of one each (on a small machine every wakeup preempts a loop).
 * Until the kick the records wait; a BATCH group that is already gathering
 * takes them without one. Same results and threads as sb_store_append(). */
int sb_store_append_deferred(sb_store_t *s, const sb_store_rec_t *r, sb_store_done_cb cb,
                             void *ud);

/* Wakes the store thread if it sleeps while appends wait (see
 * sb_store_append_deferred). Cheap when there is nothing to do: a mutex and a
 * test. Any thread. */
void sb_store_kick(sb_store_t *s);

/* Durably records that seqs up to upto may have been handed out, so that
 * after a crash next_seq is past them even if their records never reached the
 * disk. Writes a small meta file atomically (temp file, fsync, rename, fsync of
 * the directory), in every fsync mode. A value not above the current
 * reservation returns 0 at once. Returns 0 or a negative errno; on failure the
 * old reservation stands and the caller must not hand out seqs past it. Any
 * thread; blocks on disk (one or two fsyncs), so call it once per large block
 * of seqs. */
int sb_store_reserve(sb_store_t *s, uint64_t upto);

/* Asks the store thread to extend the reservation to upto (as sb_store_reserve)
 * between two batches, so that the caller never waits for the disk. Repeated
 * requests merge into the largest. The outcome shows in sb_store_reserved(); a
 * failed attempt is logged and forgotten, so the caller asks again later. Never
 * blocks on disk; any thread. */
void sb_store_reserve_async(sb_store_t *s, uint64_t upto);

/* The durable reservation: seqs up to it may be handed out. One atomic load;
 * any thread. */
uint64_t sb_store_reserved(sb_store_t *s);

/* The first seq this directory ever handed out, so that a cursor older than
 * the directory itself can be told apart from one whose records retention
 * deleted. Stored in origin.meta (written atomically like the reservation).
 * A directory without one takes `fresh` when it holds no records and no
 * reservation, and otherwise its oldest retained record (or next_seq when it
 * holds none), which is the best that can still be known; a damaged file is
 * logged and treated as missing. Returns 0 with *out set, or a negative errno
 * when the file cannot be read or written. Any thread; blocks on disk. Meant
 * for startup. */
int sb_store_origin(sb_store_t *s, uint64_t fresh, uint64_t *out);

/* Fills *out with a snapshot of the counters. Any thread; never blocks on disk. */
void sb_store_info(sb_store_t *s, sb_store_info_t *out);

/* Stops accepting appends, lets the store thread write and sync everything
 * queued (their callbacks run), fdatasyncs the active segment in every mode,
 * joins the thread and frees the store. Readers must have returned. NULL is a
 * no-op. Any thread except the store thread. */
void sb_store_close(sb_store_t *s);

/* ---- record codec (used by recovery and reads; public for tests and the fuzzer) ---- */

/* Frame: u32 magic "SBR1" | u32 body length | u32 CRC32 (zlib) of the first
 * 8 bytes and the body | body: u64 seq, i64 time_ms, u8 flags, u16 channel
 * length, u16 event length, u16 idem_key length, u32 data length, then the four
 * byte strings. All integers little-endian. */
#define SB_STORE_REC_HDR 12u
#define SB_STORE_REC_FIXED 27u                  /* body bytes before the strings */
#define SB_STORE_DATA_MAX (16u << 20)            /* largest data accepted */
#define SB_STORE_BODY_MAX (SB_STORE_REC_FIXED + 3u * 65535u + SB_STORE_DATA_MAX)

/* Returns the encoded size of r, or SB_ELIMIT if a field is too long. Pure. */
long sb_store_rec_size(const sb_store_rec_t *r);

/* Encodes r into buf (cap bytes). Returns the bytes written, or SB_ELIMIT if a
 * field is too long or cap is too small. Pure. */
long sb_store_rec_encode(const sb_store_rec_t *r, void *buf, size_t cap);

/* Decodes one record from the start of p[0..len), which is untrusted. Returns
 * the bytes consumed with *out's slices pointing into p; SB_AGAIN if p holds a
 * plausible but incomplete record (a torn tail at the end of a file);
 * SB_EPARSE if the bytes are not a valid record (bad magic, impossible
 * lengths, CRC mismatch); *why then names the reason (static string; why may
 * be NULL). Pure; never reads outside p[0..len). */
long sb_store_rec_decode(const void *p, size_t len, sb_store_rec_t *out, const char **why);

/* ---- fault injection (tests only) ---- */

/* The file operations the store thread uses on segment files. A test replaces
 * them to make writes, syncs or truncations fail; production never calls this. */
typedef struct {
    ssize_t (*pwritev)(int fd, const struct iovec *iov, int cnt, off_t off);
    int (*fdatasync)(int fd);
    int (*ftruncate)(int fd, off_t len);
} sb_store_io_t;

/* Sets the operations used by stores opened afterwards (NULL restores the
 * real ones); the struct is copied. Not thread-safe against sb_store_open(). */
void sb_store_set_io_for_test(const sb_store_io_t *io);

#endif
