/* The durable message log: segment files, recovery, the store thread, the
 * sparse index, retention and the seq reservation. docs/storage.md has the
 * design. This file keeps to one rule above all: a record becomes visible to
 * readers (and its callback reports success) only once its bytes are where the
 * fsync mode promises, and a failed write is cut back out of the file before
 * anything else is written (if even that fails, appends stop). */
#define _GNU_SOURCE
#include "storage/storage.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

/* Segment header: "SBSEGLOG" | u32 version | u32 header size | u64 base seq |
 * u32 reserved | u32 CRC32 of the first 28 bytes. */
#define SEG_HDR 32u
#define SEG_VERSION 1u
static const char seg_magic[8] = {'S', 'B', 'S', 'E', 'G', 'L', 'O', 'G'};
#define SEG_NAME_DIGITS 20

/* Reservation file: "SBRESV01" | u64 upto | u32 CRC32 of the first 16 bytes. */
#define RES_FILE "reserve.meta"
#define RES_TMP "reserve.meta.tmp"
#define RES_LEN 20u
static const char res_magic[8] = {'S', 'B', 'R', 'E', 'S', 'V', '0', '1'};

/* Origin file: "SBORIG01" | u64 first seq ever handed out | u32 CRC32, the same
 * layout as the reservation. */
#define ORIGIN_FILE "origin.meta"
#define ORIGIN_TMP "origin.meta.tmp"
static const char origin_magic[8] = {'S', 'B', 'O', 'R', 'I', 'G', '0', '1'};

#define LOCK_FILE "LOCK"

/* An index entry every 64 records or 64 KiB, whichever comes first, so a read
 * from any seq decodes at most one span before it reaches its first record. */
#define IDX_EVERY 64u
#define IDX_SPAN_BYTES (64u << 10)

#define READ_CHUNK (64u << 10)
/* What preallocation writes past a segment's last record, by reference. */
static const uint8_t zeros[64u << 10];
/* A BATCH window closes early once this much is queued: waiting longer would
 * not make the fsync cheaper, only the acknowledgements later. */
#define BATCH_MAX_RECORDS 4096u
#define BATCH_MAX_BYTES (8u << 20)
/* With an age limit the idle store thread wakes this often to apply it. */
#define RETENTION_TICK_US 1000000u

/* Queue nodes of up to this many bytes (header included) come from a pool that
 * the store thread refills once per batch, instead of being malloc'd on the
 * loop and freed on the store thread: each such cross-thread free goes to
 * the loop's malloc arena under its lock, and a group of 100 records in
 * flight also defeats the loop's small per-thread cache. Most messages fit. */
#define NODE_POOL_BYTES 512u
#define NODE_POOL_MAX 4096u /* nodes kept: 2 MiB at most */

typedef struct {
    uint64_t seq, off;
} idx_ent_t;

/* One segment file. The fd and base never change. The rest is written by
 * recovery (before the thread starts) or by the store thread under meta_mu,
 * and read by readers under meta_mu. A reader that pins a segment (refs) may
 * keep reading it after retention has unlinked it. */
typedef struct {
    atomic_int refs;
    int fd;
    uint64_t base;      /* from the file name: every record's seq is >= base */
    uint64_t size;      /* end of the last valid record readers may see */
    uint64_t disk_bytes; /* the file's length (larger than size after a cut we kept) */
    uint64_t first_seq, last_seq, count;
    int64_t max_time_ms;
    bool sealed;        /* ends early on a bad record that we kept on disk: never append */
    idx_ent_t *idx;
    size_t nidx, idx_cap;
    uint64_t idx_off;   /* offset of the newest index entry */
    uint32_t since_idx; /* records since the newest index entry */
    char name[SEG_NAME_DIGITS + 5];
} seg_t;

/* One queued append: the header and the encoded record in one allocation. */
typedef struct node {
    struct node *next;
    sb_store_done_cb cb;
    void *ud;
    uint64_t seq;
    int64_t time_ms;
    uint64_t enq_us;
    uint32_t len;
    bool pooled; /* NODE_POOL_BYTES long; goes back to the pool */
    uint8_t buf[];
} node_t;

struct sb_store {
    sb_store_opts_t o;
    char *dir;
    int dirfd, lockfd;
    sb_store_io_t io;
    pthread_t thread;

    /* The append queue. */
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    node_t *q_head, *q_tail;
    uint32_t q_count;
    size_t q_bytes;
    uint64_t q_last_seq; /* newest seq accepted (or recovered) */
    uint64_t q_last_enq_us; /* when the newest append was queued (BATCH's quiet rule) */
    uint64_t res_want;      /* a reservation sb_store_reserve_async() asked for, 0 = none */
    bool idle;              /* the thread sleeps on an empty queue (sb_store_kick wakes it) */
    bool closing;
    atomic_bool broken;

    /* The segment list, oldest first. */
    pthread_mutex_t meta_mu;
    seg_t **segs;
    size_t nsegs, segs_cap;
    uint64_t total_bytes, records;

    /* Store thread only. */
    seg_t *active; /* where appends go; NULL until the first append creates one */
    uint64_t sync_avg_us; /* moving average of fdatasync latency */
    struct iovec *iov;
    size_t iov_cap;

    pthread_mutex_t pool_mu; /* the spare nodes (a push per batch, a pop per append) */
    node_t *pool;
    uint32_t npool;

    pthread_mutex_t res_mu; /* serializes sb_store_reserve() */
    _Atomic uint64_t reserved;

    _Atomic uint64_t appends, failed, fsyncs, last_fsync_us, max_fsync_us, fsync_us, read_bytes, deleted;
};

/* ---- small helpers ---------------------------------------------------------- */

static ssize_t real_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    return pwritev(fd, iov, cnt, off);
}

static const sb_store_io_t real_io = {real_pwritev, fdatasync, ftruncate};
static sb_store_io_t test_io;
static bool test_io_set;

void sb_store_set_io_for_test(const sb_store_io_t *io)
{
    test_io_set = io != NULL;
    if (io) test_io = *io;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
    return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void stat_max(_Atomic uint64_t *m, uint64_t v)
{
    uint64_t cur = atomic_load(m);
    while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
    }
}

static int full_pread(int fd, void *buf, size_t len, uint64_t off, size_t *got)
{
    size_t n = 0;
    while (n < len) {
        ssize_t r = pread(fd, (char *)buf + n, len - n, (off_t)(off + n));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) break;
        n += (size_t)r;
    }
    *got = n;
    return 0;
}

static int full_write(int fd, const void *buf, size_t len)
{
    size_t n = 0;
    while (n < len) {
        ssize_t w = write(fd, (const char *)buf + n, len - n);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return -errno;
        n += (size_t)w;
    }
    return 0;
}

/* Names an error code for a log line without allocating (uv_err_name() leaks
 * a string for codes libuv does not know, such as ours). */
static const char *ename(int rc, char buf[32])
{
    if (rc == SB_ENOMEM) return "ENOMEM";
    return uv_err_name_r(rc, buf, 32);
}

static int sync_dir(sb_store_t *s)
{
    return fsync(s->dirfd) < 0 ? -errno : 0;
}

/* fsyncs the directory that holds path, so that a new entry in it survives. */
static void sync_parent(const char *path)
{
    char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s", path);
    char *slash = strrchr(buf, '/');
    if (slash == buf) slash[1] = 0;
    else if (slash) *slash = 0;
    else snprintf(buf, sizeof buf, ".");
    int fd = open(buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    fsync(fd);
    close(fd);
}

/* mkdir -p: the data directory's parents may not exist on a fresh machine.
 * Each directory we create is made durable in its parent, or a crash could
 * take the whole log with it. */
static int make_dirs(const char *path)
{
    char buf[PATH_MAX];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof buf) return UV_EINVAL;
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char c = buf[i];
        buf[i] = 0;
        if (mkdir(buf, 0755) == 0) sync_parent(buf);
        else if (errno != EEXIST) return -errno;
        buf[i] = c;
    }
    struct stat st;
    if (stat(path, &st) < 0) return -errno;
    return S_ISDIR(st.st_mode) ? 0 : UV_ENOTDIR;
}

/* ---- segments --------------------------------------------------------------- */

static seg_t *seg_new(int fd, uint64_t base)
{
    seg_t *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    atomic_init(&g->refs, 1);
    g->fd = fd;
    g->base = base;
    g->size = g->disk_bytes = SEG_HDR;
    snprintf(g->name, sizeof g->name, "%020llu.log", (unsigned long long)base);
    return g;
}

static seg_t *seg_ref(seg_t *g)
{
    atomic_fetch_add(&g->refs, 1);
    return g;
}

static void seg_unref(seg_t *g)
{
    if (!g || atomic_fetch_sub(&g->refs, 1) != 1) return;
    close(g->fd);
    free(g->idx);
    free(g);
}

/* Accounts one valid record at off in g and keeps the sparse index. Callers
 * hold meta_mu (or run before the store thread exists). An index entry that
 * cannot be allocated is skipped: lookups then start from an earlier entry,
 * which is slower but still correct. */
static void seg_note(seg_t *g, uint64_t seq, int64_t time_ms, uint64_t off, uint32_t len)
{
    if (g->count == 0 || g->since_idx >= IDX_EVERY || off - g->idx_off >= IDX_SPAN_BYTES) {
        if (g->nidx == g->idx_cap) {
            size_t cap = g->idx_cap ? g->idx_cap * 2 : 16;
            idx_ent_t *p = realloc(g->idx, cap * sizeof *p);
            if (p) {
                g->idx = p;
                g->idx_cap = cap;
            }
        }
        if (g->nidx < g->idx_cap) {
            g->idx[g->nidx++] = (idx_ent_t){seq, off};
            g->idx_off = off;
            g->since_idx = 0;
        }
    }
    g->since_idx++;
    if (g->count == 0) {
        g->first_seq = seq;
        g->max_time_ms = time_ms;
    }
    if (time_ms > g->max_time_ms) g->max_time_ms = time_ms;
    g->last_seq = seq;
    g->count++;
    g->size = off + len;
    if (g->size > g->disk_bytes) g->disk_bytes = g->size;
}

/* Returns the offset from which a scan for the first record with seq >= target
 * must start: the newest index entry at or below target. Under meta_mu. */
static uint64_t seg_seek(const seg_t *g, uint64_t target)
{
    size_t lo = 0, hi = g->nidx; /* find the last entry with seq <= target */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->idx[mid].seq <= target) lo = mid + 1;
        else hi = mid;
    }
    return lo ? g->idx[lo - 1].off : SEG_HDR;
}

static int segs_push(sb_store_t *s, seg_t *g)
{
    if (s->nsegs == s->segs_cap) {
        size_t cap = s->segs_cap ? s->segs_cap * 2 : 16;
        seg_t **p = realloc(s->segs, cap * sizeof *p);
        if (!p) return SB_ENOMEM;
        s->segs = p;
        s->segs_cap = cap;
    }
    s->segs[s->nsegs++] = g;
    s->total_bytes += g->disk_bytes;
    s->records += g->count;
    return 0;
}

static void seg_header(uint8_t h[SEG_HDR], uint64_t base)
{
    memset(h, 0, SEG_HDR);
    memcpy(h, seg_magic, 8);
    put32(h + 8, SEG_VERSION);
    put32(h + 12, SEG_HDR);
    put64(h + 16, base);
    put32(h + 28, (uint32_t)crc32(0L, h, 28));
}

static bool seg_header_ok(const uint8_t h[SEG_HDR], uint64_t base)
{
    return memcmp(h, seg_magic, 8) == 0 && get32(h + 8) == SEG_VERSION &&
           get32(h + 12) == SEG_HDR && get64(h + 16) == base &&
           get32(h + 28) == (uint32_t)crc32(0L, h, 28);
}

/* ---- buffered record reader (recovery and reads) --------------------------- */

typedef struct {
    int fd;
    uint8_t *buf;
    size_t cap, have;
    uint64_t boff; /* file offset of buf[0] */
    uint64_t end;  /* never read at or past this offset */
    uint64_t nread;
} rd_t;

static int rd_init(rd_t *r)
{
    *r = (rd_t){.fd = -1, .cap = READ_CHUNK};
    r->buf = malloc(r->cap);
    return r->buf ? 0 : SB_ENOMEM;
}

static void rd_reset(rd_t *r, int fd, uint64_t pos, uint64_t end)
{
    r->fd = fd;
    r->boff = pos;
    r->have = 0;
    r->end = end;
}

/* Decodes the record at pos (pos only moves forward). Returns its length, 0 at
 * end, SB_AGAIN for a partial record that runs into end, SB_EPARSE for bad
 * bytes (*why says which), or a negative errno. */
static long rd_next(rd_t *r, uint64_t pos, sb_store_rec_t *rec, const char **why)
{
    *why = NULL;
    if (pos >= r->end) return 0;
    if (pos < r->boff || pos > r->boff + r->have) {
        r->boff = pos;
        r->have = 0;
    }
    for (;;) {
        size_t at = (size_t)(pos - r->boff);
        long n = sb_store_rec_decode(r->buf + at, r->have - at, rec, why);
        if (n != SB_AGAIN) return n;
        if (r->boff + r->have >= r->end) {
            *why = "torn";
            return SB_AGAIN;
        }
        /* Slide the partial record to the front, then grow the buffer if even
         * that does not fit one record (the decoder has checked the length). */
        if (at) {
            memmove(r->buf, r->buf + at, r->have - at);
            r->have -= at;
            r->boff = pos;
        }
        if (r->have == r->cap) {
            size_t need = r->have >= 8 ? SB_STORE_REC_HDR + get32(r->buf + 4) : r->cap * 2;
            uint8_t *p = realloc(r->buf, need);
            if (!p) return SB_ENOMEM;
            r->buf = p;
            r->cap = need;
        }
        size_t want = r->cap - r->have;
        if (want > r->end - (r->boff + r->have)) want = (size_t)(r->end - (r->boff + r->have));
        size_t got = 0;
        int rc = full_pread(r->fd, r->buf + r->have, want, r->boff + r->have, &got);
        if (rc < 0) return rc;
        r->nread += got;
        r->have += got;
        if (got < want) r->end = r->boff + r->have; /* the file is shorter than we thought */
    }
}

/* ---- recovery --------------------------------------------------------------- */

static bool seg_name_parse(const char *name, uint64_t *base)
{
    size_t n = strlen(name);
    if (n != SEG_NAME_DIGITS + 4 || strcmp(name + SEG_NAME_DIGITS, ".log") != 0) return false;
    return sb_str_to_u64(sb_str(name, SEG_NAME_DIGITS), base);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Lists the segment bases in the directory, ascending. */
static int list_segments(sb_store_t *s, uint64_t **out, size_t *n)
{
    int fd = openat(s->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    uint64_t *v = NULL;
    size_t cnt = 0, cap = 0;
    int rc = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint64_t base;
        if (!seg_name_parse(e->d_name, &base)) continue;
        if (cnt == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *p = realloc(v, cap * sizeof *p);
            if (!p) {
                rc = SB_ENOMEM;
                break;
            }
            v = p;
        }
        v[cnt++] = base;
    }
    closedir(d);
    if (rc < 0) {
        free(v);
        return rc;
    }
    if (cnt) qsort(v, cnt, sizeof *v, cmp_u64);
    *out = v;
    *n = cnt;
    return 0;
}

/* Whether [pos, end) of fd holds only zero bytes: 1, 0, or a negative errno.
 * Uses rd's buffer (the caller resets rd before its next use). */
static int zero_tail(rd_t *rd, int fd, uint64_t pos, uint64_t end)
{
    rd->have = 0;
    rd->end = 0;
    while (pos < end) {
        size_t want = end - pos < rd->cap ? (size_t)(end - pos) : rd->cap, got = 0;
        int rc = full_pread(fd, rd->buf, want, pos, &got);
        if (rc < 0) return rc;
        if (got == 0) return 1; /* the file is shorter than fstat said */
        for (size_t i = 0; i < got; i++)
            if (rd->buf[i]) return 0;
        pos += got;
    }
    return 1;
}

/* Scans one segment: validates every record (framing, CRC, seq order), builds
 * the index, and deals with a bad tail. The newest segment is cut with
 * ftruncate, because appends continue after it; an older one is only ended
 * there in memory and the bytes are kept for inspection. A tail of zero bytes
 * is not damage but preallocated space (see write_run), and is not logged:
 * records are written in order into zeros, so a torn one shows as bytes that
 * are not all zero and is cut like any other. *prev_seq is the
 * newest seq seen so far, across segments. Returns 0 or a negative errno
 * (I/O errors fail the open: serving a log we could not read would hide
 * acknowledged records). */
static int scan_segment(sb_store_t *s, rd_t *rd, seg_t *g, uint64_t file_len, bool last,
                        uint64_t *prev_seq)
{
    rd_reset(rd, g->fd, SEG_HDR, file_len);
    uint64_t pos = SEG_HDR;
    const char *why = NULL;
    for (;;) {
        sb_store_rec_t r;
        long n = rd_next(rd, pos, &r, &why);
        if (n == 0) break;
        if (n < 0 && n != SB_AGAIN && n != SB_EPARSE) return (int)n; /* I/O error, OOM */
        if (n > 0 && (r.seq <= *prev_seq || r.seq < g->base)) {
            n = SB_EPARSE;
            why = "seq_out_of_order";
        }
        if (n < 0) break;
        seg_note(g, r.seq, r.time_ms, pos, (uint32_t)n);
        *prev_seq = r.seq;
        pos += (uint64_t)n;
    }
    g->disk_bytes = file_len;
    if (pos >= file_len) return 0;
    int z = zero_tail(rd, g->fd, pos, file_len);
    if (z < 0) return z;
    if (z) {
        /* Preallocated space: the log ends cleanly at pos. The newest
         * segment keeps it for the next appends; an older one (a roll that
         * could not trim it) gives it back. */
        if (!last && ftruncate(g->fd, (off_t)pos) == 0) g->disk_bytes = pos;
        return 0;
    }
    uint64_t cut = file_len - pos;
    if (!last) {
        g->sealed = true;
        sb_warn("storage: segment ends early at a bad record; the rest is not served",
                "file=%s/%s offset=%llu bytes=%llu reason=%s", s->dir, g->name,
                (unsigned long long)pos, (unsigned long long)cut, why ? why : "unknown");
        return 0;
    }
    if (ftruncate(g->fd, (off_t)pos) < 0 || fdatasync(g->fd) < 0) return -errno;
    g->disk_bytes = pos;
    sb_warn("storage: cut a torn or corrupt tail", "file=%s/%s offset=%llu bytes=%llu reason=%s",
            s->dir, g->name, (unsigned long long)pos, (unsigned long long)cut,
            why ? why : "unknown");
    return 0;
}

static int recover_segments(sb_store_t *s)
{
    uint64_t *bases = NULL;
    size_t n = 0;
    int rc = list_segments(s, &bases, &n);
    if (rc < 0) return rc;
    rd_t rd;
    if ((rc = rd_init(&rd)) < 0) {
        free(bases);
        return rc;
    }
    uint64_t prev_seq = 0;
    bool dir_dirty = false;
    for (size_t i = 0; i < n && rc == 0; i++) {
        bool last = i + 1 == n;
        char name[SEG_NAME_DIGITS + 5];
        snprintf(name, sizeof name, "%020llu.log", (unsigned long long)bases[i]);
        int fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            rc = -errno;
            break;
        }
        struct stat st;
        uint8_t h[SEG_HDR];
        size_t got = 0;
        rc = fstat(fd, &st) < 0 ? -errno : full_pread(fd, h, SEG_HDR, 0, &got);
        if (rc < 0) {
            close(fd);
            break;
        }
        if (got < SEG_HDR || !seg_header_ok(h, bases[i])) {
            /* A segment is created and its header synced before any record goes
             * in, so a newest segment no longer than a header is an interrupted
             * roll with nothing inside. Anything else is real damage: move the
             * file aside for inspection rather than delete what may be records. */
            close(fd);
            if (last && (uint64_t)st.st_size <= SEG_HDR) {
                sb_warn("storage: removed a segment with a torn header",
                        "file=%s/%s offset=0 bytes=%llu", s->dir, name,
                        (unsigned long long)st.st_size);
                if (unlinkat(s->dirfd, name, 0) < 0) rc = -errno;
            } else {
                char aside[sizeof name + 8];
                snprintf(aside, sizeof aside, "%s.corrupt", name);
                sb_error("storage: segment header is corrupt; moved aside, its records are lost",
                         "file=%s/%s bytes=%llu", s->dir, name, (unsigned long long)st.st_size);
                if (renameat(s->dirfd, name, s->dirfd, aside) < 0) rc = -errno;
            }
            dir_dirty = true;
            continue;
        }
        seg_t *g = seg_new(fd, bases[i]);
        if (!g) {
            close(fd);
            rc = SB_ENOMEM;
            break;
        }
        rc = scan_segment(s, &rd, g, (uint64_t)st.st_size, last, &prev_seq);
        if (rc == 0 && last && g->count == 0) {
            /* Nothing valid in the newest segment: drop it, and let the first
             * append create one named after its own seq. */
            if (unlinkat(s->dirfd, g->name, 0) < 0) rc = -errno;
            dir_dirty = true;
            seg_unref(g);
            continue;
        }
        if (rc == 0) rc = segs_push(s, g);
        if (rc < 0) seg_unref(g);
    }
    if (rc == 0 && dir_dirty) rc = sync_dir(s);
    free(rd.buf);
    free(bases);
    if (rc == 0 && s->nsegs && !s->segs[s->nsegs - 1]->sealed) s->active = s->segs[s->nsegs - 1];
    s->q_last_seq = prev_seq;
    return rc;
}

/* Reads a small meta file (magic | u64 | CRC32). Returns 0 with *v set, 1 when
 * the file is missing or damaged (damage is logged), or a negative errno. */
static int read_meta(sb_store_t *s, const char *name, const char magic[8], uint64_t *v)
{
    int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? 1 : -errno;
    uint8_t b[RES_LEN];
    size_t got = 0;
    int rc = full_pread(fd, b, RES_LEN, 0, &got);
    close(fd);
    if (rc < 0) return rc;
    if (got != RES_LEN || memcmp(b, magic, 8) != 0 ||
        get32(b + 16) != (uint32_t)crc32(0L, b, 16)) {
        /* The file is replaced by rename, so only media damage gets here. */
        sb_error("storage: meta file is corrupt; ignoring it", "file=%s/%s bytes=%zu", s->dir,
                 name, got);
        return 1;
    }
    *v = get64(b + 8);
    return 0;
}

/* Replaces a small meta file atomically: write the temp file, fsync it, rename
 * it over the old one, fsync the directory. Returns 0 or a negative errno (the
 * old file then stands). */
static int write_meta(sb_store_t *s, const char *tmp, const char *name, const char magic[8],
                      uint64_t v)
{
    uint8_t b[RES_LEN];
    memcpy(b, magic, 8);
    put64(b + 8, v);
    put32(b + 16, (uint32_t)crc32(0L, b, 16));
    int rc = 0;
    int fd = openat(s->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) rc = -errno;
    if (rc == 0) rc = full_write(fd, b, RES_LEN);
    if (rc == 0 && fsync(fd) < 0) rc = -errno;
    if (fd >= 0) close(fd);
    if (rc == 0 && renameat(s->dirfd, tmp, s->dirfd, name) < 0) rc = -errno;
    if (rc == 0) rc = sync_dir(s);
    return rc;
}

static int read_reservation(sb_store_t *s)
{
    /* A damaged reservation is ignored: the records still bound next_seq from
     * below, and the error log says that ids handed out but never stored
     * before the crash might come round again. */
    uint64_t v = 0;
    int rc = read_meta(s, RES_FILE, res_magic, &v);
    if (rc < 0) return rc;
    if (rc == 0) atomic_store(&s->reserved, v);
    return 0;
}

/* ---- retention ---------------------------------------------------------------- */

/* Deletes whole segments from the old end while the total is over retain_bytes
 * or the segment's newest record is older than retain_ms. The newest segment
 * is never deleted (it is, or is about to be, the active one). Store thread
 * (or open, before the thread starts). */
static void apply_retention(sb_store_t *s)
{
    if (!s->o.retain_bytes && !s->o.retain_ms) return;
    int64_t now = sb_now_ms();
    seg_t *gone[64];
    size_t ngone = 0;
    pthread_mutex_lock(&s->meta_mu);
    while (s->nsegs > 1 && ngone < sizeof gone / sizeof gone[0]) {
        seg_t *g = s->segs[0];
        bool over = s->o.retain_bytes && s->total_bytes > s->o.retain_bytes;
        bool old = s->o.retain_ms && (g->count == 0 || g->max_time_ms < now - s->o.retain_ms);
        if (!over && !old) break;
        memmove(s->segs, s->segs + 1, (s->nsegs - 1) * sizeof *s->segs);
        s->nsegs--;
        s->total_bytes -= g->disk_bytes;
        s->records -= g->count;
        gone[ngone++] = g;
    }
    pthread_mutex_unlock(&s->meta_mu);
    for (size_t i = 0; i < ngone; i++) {
        seg_t *g = gone[i];
        if (unlinkat(s->dirfd, g->name, 0) < 0)
            sb_error("storage: could not delete an old segment", "file=%s/%s errno=%d", s->dir,
                     g->name, errno);
        else
            sb_info("storage: retention deleted a segment", "file=%s/%s records=%llu bytes=%llu",
                    s->dir, g->name, (unsigned long long)g->count,
                    (unsigned long long)g->disk_bytes);
        atomic_fetch_add(&s->deleted, 1);
        seg_unref(g);
    }
    /* Make the unlinks durable, so that a crash cannot bring old segments back
     * and push the directory over its cap again. */
    if (ngone && sync_dir(s) < 0)
        sb_warn("storage: fsync of the data directory failed", "dir=%s errno=%d", s->dir, errno);
    if (ngone == sizeof gone / sizeof gone[0]) apply_retention(s);
}

/* ---- the store thread: writing ---------------------------------------------- */

static int timed_sync(sb_store_t *s, int fd)
{
    uint64_t t0 = sb_mono_us();
    int rc = s->io.fdatasync(fd) < 0 ? -errno : 0;
    uint64_t dt = sb_mono_us() - t0;
    /* A smoothed fsync time for BATCH's group span. A quarter weight lets
     * it recover within a few syncs from one slow one (a journal commit, a
     * neighbour's burst on a shared disk). */
    s->sync_avg_us = s->sync_avg_us ? (3 * s->sync_avg_us + dt) / 4 : dt;
    atomic_fetch_add(&s->fsyncs, 1);
    atomic_store(&s->last_fsync_us, dt);
    atomic_fetch_add(&s->fsync_us, dt);
    stat_max(&s->max_fsync_us, dt);
    return rc;
}

static int write_all(sb_store_t *s, int fd, struct iovec *iov, int cnt, uint64_t off)
{
    while (cnt > 0) {
        int c = cnt < IOV_MAX ? cnt : IOV_MAX;
        ssize_t w = s->io.pwritev(fd, iov, c, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno ? -errno : UV_EIO;
        if (w == 0) return UV_EIO;
        off += (uint64_t)w;
        size_t left = (size_t)w;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* Sets the file length of g that total_bytes counts. Store thread. */
static void seg_set_disk(sb_store_t *s, seg_t *g, uint64_t len)
{
    pthread_mutex_lock(&s->meta_mu);
    s->total_bytes = s->total_bytes - g->disk_bytes + len;
    g->disk_bytes = len;
    pthread_mutex_unlock(&s->meta_mu);
}

/* Gives back the preallocated space past a segment's last record, once
 * nothing more goes into it. If that fails the zeros stay (recovery trims
 * them), and only disk space is lost. */
static void trim_tail(sb_store_t *s, seg_t *g)
{
    if (g->disk_bytes <= g->size) return;
    if (s->io.ftruncate(g->fd, (off_t)g->size) < 0 ||
        (s->o.fsync != SB_FSYNC_OFF && s->io.fdatasync(g->fd) < 0)) {
        sb_warn("storage: could not trim a segment's preallocated tail",
                "file=%s/%s offset=%llu errno=%d", s->dir, g->name, (unsigned long long)g->size,
                errno);
        return;
    }
    seg_set_disk(s, g, g->size);
}

/* Creates the segment that starts at seq base and makes it the active one. The
 * header and the directory entry are synced first (unless fsync is off), so
 * recovery never finds records in a file it cannot name. */
static int roll(sb_store_t *s, uint64_t base)
{
    if (s->active) trim_tail(s, s->active);
    seg_t *g = NULL;
    char name[SEG_NAME_DIGITS + 5];
    snprintf(name, sizeof name, "%020llu.log", (unsigned long long)base);
    int fd = openat(s->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    uint8_t h[SEG_HDR];
    seg_header(h, base);
    struct iovec iov = {h, SEG_HDR};
    int rc = write_all(s, fd, &iov, 1, 0);
    if (rc == 0 && s->o.fsync != SB_FSYNC_OFF) rc = timed_sync(s, fd);
    if (rc == 0 && s->o.fsync != SB_FSYNC_OFF) rc = sync_dir(s);
    if (rc == 0 && !(g = seg_new(fd, base))) rc = SB_ENOMEM;
    if (rc == 0) {
        pthread_mutex_lock(&s->meta_mu);
        rc = segs_push(s, g);
        pthread_mutex_unlock(&s->meta_mu);
    }
    if (rc < 0) {
        if (g) seg_unref(g);
        else close(fd);
        unlinkat(s->dirfd, name, 0);
        return rc;
    }
    s->active = g;
    return 0;
}

/* Spare nodes of one batch, store thread only, handed to the pool at its end. */
typedef struct {
    node_t *head, *tail;
    uint32_t n;
} spares_t;

static void finish(sb_store_t *s, node_t *n, int status, spares_t *sp)
{
    atomic_fetch_add(status == 0 ? &s->appends : &s->failed, 1);
    if (n->cb) n->cb(n->ud, status);
    if (!n->pooled) {
        free(n);
        return;
    }
    n->next = sp->head;
    sp->head = n;
    if (!sp->tail) sp->tail = n;
    sp->n++;
}

/* One lock for the whole batch's spares; what the pool cannot keep is freed. */
static void pool_give(sb_store_t *s, spares_t *sp)
{
    if (!sp->head) return;
    pthread_mutex_lock(&s->pool_mu);
    bool fits = s->npool + sp->n <= NODE_POOL_MAX;
    if (fits) {
        sp->tail->next = s->pool;
        s->pool = sp->head;
        s->npool += sp->n;
    }
    pthread_mutex_unlock(&s->pool_mu);
    if (fits) return;
    for (node_t *n = sp->head, *next; n; n = next) {
        next = n->next;
        free(n);
    }
}

static node_t *node_alloc(sb_store_t *s, size_t len)
{
    if (sizeof(node_t) + len > NODE_POOL_BYTES) {
        node_t *n = malloc(sizeof *n + len);
        if (n) n->pooled = false;
        return n;
    }
    pthread_mutex_lock(&s->pool_mu);
    node_t *n = s->pool;
    if (n) {
        s->pool = n->next;
        s->npool--;
    }
    pthread_mutex_unlock(&s->pool_mu);
    if (!n && (n = malloc(NODE_POOL_BYTES))) n->pooled = true;
    return n;
}

/* Where a run that ends at `end` should also fill zeros to (0: nowhere). Past
 * the preallocated space the file grows by prealloc_bytes at a time, never
 * past segment_bytes: the first fdatasync after that writes the zeros and the
 * new length once, and the appends that follow overwrite blocks the file
 * already has, so their fdatasync writes the data alone and not the inode
 * too (on ext4 here: 92 us instead of 141 us at p50, docs/storage.md). */
static uint64_t prealloc_to(const sb_store_t *s, const seg_t *g, uint64_t end)
{
    if (!s->o.prealloc_bytes || end <= g->disk_bytes) return 0;
    uint64_t to = (end + s->o.prealloc_bytes + 4095) & ~(uint64_t)4095;
    if (to > s->o.segment_bytes) to = s->o.segment_bytes;
    return to > end ? to : 0;
}

/* Builds the iovec of a run, and of the zeros from end to fill_to. */
static int run_iov(sb_store_t *s, node_t *first, size_t cnt, uint64_t end, uint64_t fill_to)
{
    size_t nfill = fill_to ? (size_t)((fill_to - end + sizeof zeros - 1) / sizeof zeros) : 0;
    if (cnt + nfill > s->iov_cap) {
        struct iovec *p = realloc(s->iov, (cnt + nfill) * sizeof *p);
        if (!p) return SB_ENOMEM;
        s->iov = p;
        s->iov_cap = cnt + nfill;
    }
    node_t *n = first;
    for (size_t i = 0; i < cnt; i++, n = n->next) s->iov[i] = (struct iovec){n->buf, n->len};
    for (size_t i = 0; i < nfill; i++) {
        uint64_t left = fill_to - end - (uint64_t)i * sizeof zeros;
        s->iov[cnt + i] = (struct iovec){(void *)zeros, left < sizeof zeros ? left : sizeof zeros};
    }
    return (int)(cnt + nfill);
}

/* Writes one run of records that all go into the active segment g, syncs it
 * under the fsync mode, and either publishes them (index, counters) or undoes
 * the write. Returns 0 or the negative code that the run's callbacks get. */
static int write_run(sb_store_t *s, seg_t *g, node_t *first, size_t cnt)
{
    uint64_t off = g->size; /* only this thread moves it */
    uint64_t end = off;
    node_t *n = first;
    for (size_t i = 0; i < cnt; i++, n = n->next) end += n->len;
    uint64_t fill_to = prealloc_to(s, g, end);
    int niov = run_iov(s, first, cnt, end, fill_to);
    if (niov < 0) return niov;
    int rc = write_all(s, g->fd, s->iov, niov, off);
    if (rc == 0 && s->o.fsync != SB_FSYNC_OFF) rc = timed_sync(s, g->fd);
    if (rc < 0 && fill_to) {
        /* A disk with room for the records but not for the zeros (ENOSPC,
         * EFBIG) must still take the records: cut back, then write them alone. */
        fill_to = 0;
        if (s->io.ftruncate(g->fd, (off_t)off) == 0) {
            seg_set_disk(s, g, off);
            /* Built again: write_all advanced the first try's entries in place. */
            niov = run_iov(s, first, cnt, end, 0);
            rc = write_all(s, g->fd, s->iov, niov, off);
            if (rc == 0 && s->o.fsync != SB_FSYNC_OFF) rc = timed_sync(s, g->fd);
        }
    }
    if (rc < 0) {
        /* Cut whatever part of the run reached the file, so that neither a
         * reader nor a later recovery can see a record whose publisher was
         * told it failed, and the next run starts at a record boundary. If the
         * cut fails too, the file's tail is no longer ours to vouch for: stop
         * appending until a reopen lets recovery judge it. */
        if (s->io.ftruncate(g->fd, (off_t)off) < 0) {
            atomic_store(&s->broken, true);
            sb_error("storage: could not cut a failed write; appends stop until restart",
                     "file=%s/%s offset=%llu errno=%d", s->dir, g->name, (unsigned long long)off,
                     errno);
        } else if (g->disk_bytes != off) {
            seg_set_disk(s, g, off);
        }
        char eb[32];
        sb_log_ratelimited(SB_LOG_ERROR, 1000, "storage: write failed",
                           "file=%s/%s records=%zu err=%s", s->dir, g->name, cnt, ename(rc, eb));
        return rc;
    }
    pthread_mutex_lock(&s->meta_mu);
    uint64_t disk_before = g->disk_bytes;
    n = first;
    for (size_t i = 0; i < cnt; i++, n = n->next) {
        seg_note(g, n->seq, n->time_ms, off, n->len);
        off += n->len;
    }
    if (fill_to > g->disk_bytes) g->disk_bytes = fill_to;
    s->total_bytes += g->disk_bytes - disk_before;
    s->records += cnt;
    pthread_mutex_unlock(&s->meta_mu);
    return 0;
}

static void group_begin(sb_store_t *s)
{
    if (s->o.group_begin) s->o.group_begin(s->o.group_ud);
}

static void group_end(sb_store_t *s)
{
    if (s->o.group_end) s->o.group_end(s->o.group_ud);
}

/* Writes a batch taken from the queue, in order, as runs of records that fit
 * the active segment, rolling between runs; then fires every callback. */
static void commit(sb_store_t *s, node_t *batch)
{
    spares_t sp = {0};
    node_t *n = batch;
    while (n) {
        seg_t *g = s->active;
        if (!g || (g->count > 0 && g->size + n->len > s->o.segment_bytes)) {
            int rc = roll(s, n->seq);
            if (rc < 0) {
                /* The disk refused a new file; the rest of this batch would
                 * only hammer it again. The next batch retries. */
                char eb[32];
                sb_log_ratelimited(SB_LOG_ERROR, 1000, "storage: could not create a segment",
                                   "dir=%s err=%s", s->dir, ename(rc, eb));
                group_begin(s);
                while (n) {
                    node_t *next = n->next;
                    finish(s, n, rc, &sp);
                    n = next;
                }
                group_end(s);
                pool_give(s, &sp);
                return;
            }
            g = s->active;
        }
        size_t cnt = 0;
        uint64_t bytes = 0;
        node_t *end = n;
        while (end && (cnt == 0 || g->size + bytes + end->len <= s->o.segment_bytes)) {
            bytes += end->len;
            cnt++;
            end = end->next;
        }
        int rc = write_run(s, g, n, cnt);
        group_begin(s);
        while (n != end) {
            node_t *next = n->next;
            finish(s, n, rc, &sp);
            n = next;
        }
        group_end(s);
    }
    pool_give(s, &sp);
}

static struct timespec mono_deadline(uint64_t at_us)
{
    return (struct timespec){.tv_sec = (time_t)(at_us / 1000000u),
                             .tv_nsec = (long)(at_us % 1000000u) * 1000};
}

static void *store_main(void *arg)
{
    sb_store_t *s = arg;
    bool woke_idle = true; /* the next group starts on an idle thread (BATCH gathers it) */
    pthread_setname_np(pthread_self(), "sb-store");
    pthread_mutex_lock(&s->q_mu);
    for (;;) {
        if (s->res_want > atomic_load(&s->reserved)) {
            /* An asynchronous reservation goes before the next batch: the
             * broker asked for it well before it runs out of ids. */
            uint64_t want = s->res_want;
            s->res_want = 0;
            pthread_mutex_unlock(&s->q_mu);
            sb_store_reserve(s, want);
            pthread_mutex_lock(&s->q_mu);
            continue;
        }
        if (!s->q_head) {
            if (s->closing) break;
            s->idle = true;
            if (s->o.retain_ms) {
                struct timespec ts = mono_deadline(sb_mono_us() + RETENTION_TICK_US);
                if (pthread_cond_timedwait(&s->q_cv, &s->q_mu, &ts) == ETIMEDOUT) {
                    s->idle = false;
                    pthread_mutex_unlock(&s->q_mu);
                    apply_retention(s);
                    pthread_mutex_lock(&s->q_mu);
                }
            } else {
                pthread_cond_wait(&s->q_cv, &s->q_mu);
            }
            s->idle = false;
            woke_idle = true;
            continue;
        }
        if (s->o.fsync == SB_FSYNC_BATCH && woke_idle) {
            /* Group commit for a burst: a group that starts on an idle thread
             * stays open while appends keep coming, so that one fdatasync
             * covers the whole burst (ALWAYS would sync its first arrivals
             * alone and make the rest wait for a second fsync). It closes as
             * soon as no append has arrived for batch_quiet_us: the
             * publishers are then waiting for this group's acknowledgements,
             * and waiting longer only adds latency (a fixed window caps a
             * closed loop at one round per window). Under a steady stream it
             * closes after about one fsync time (never past the window):
             * longer would only keep the disk idle. Records that queued while
             * the thread was busy go at once, as in ALWAYS: they gathered
             * during the previous fsync. docs/storage.md has the reasons and
             * the measurements. */
            uint64_t span = s->sync_avg_us > s->o.batch_quiet_us ? s->sync_avg_us
                                                                  : s->o.batch_quiet_us;
            if (span > s->o.batch_window_us) span = s->o.batch_window_us;
            uint64_t deadline = s->q_head->enq_us + span;
            while (!s->closing && s->q_count < BATCH_MAX_RECORDS && s->q_bytes < BATCH_MAX_BYTES) {
                uint64_t until = s->q_last_enq_us + s->o.batch_quiet_us;
                if (until > deadline) until = deadline;
                if (sb_mono_us() >= until) break;
                struct timespec ts = mono_deadline(until);
                pthread_cond_timedwait(&s->q_cv, &s->q_mu, &ts);
            }
        }
        woke_idle = false;
        node_t *batch = s->q_head;
        s->q_head = s->q_tail = NULL;
        s->q_count = 0;
        s->q_bytes = 0;
        pthread_mutex_unlock(&s->q_mu);
        commit(s, batch);
        apply_retention(s);
        pthread_mutex_lock(&s->q_mu);
    }
    pthread_mutex_unlock(&s->q_mu);
    /* Close promises a synced log in every mode, OFF included. */
    if (s->active && timed_sync(s, s->active->fd) < 0)
        sb_error("storage: final fdatasync failed", "file=%s/%s errno=%d", s->dir, s->active->name,
                 errno);
    return NULL;
}

/* ---- public API ------------------------------------------------------------------- */

static void store_free(sb_store_t *s)
{
    for (size_t i = 0; i < s->nsegs; i++) seg_unref(s->segs[i]);
    free(s->segs);
    free(s->iov);
    if (s->dirfd >= 0) close(s->dirfd);
    if (s->lockfd >= 0) close(s->lockfd); /* releases the flock */
    pthread_mutex_destroy(&s->q_mu);
    pthread_cond_destroy(&s->q_cv);
    pthread_mutex_destroy(&s->meta_mu);
    pthread_mutex_destroy(&s->res_mu);
    for (node_t *n = s->pool, *next; n; n = next) {
        next = n->next;
        free(n);
    }
    pthread_mutex_destroy(&s->pool_mu);
    free(s->dir);
    free(s);
}

int sb_store_open(const sb_store_opts_t *o, sb_store_t **out)
{
    *out = NULL;
    if (!o || !o->dir || !*o->dir || o->fsync < SB_FSYNC_ALWAYS || o->fsync > SB_FSYNC_OFF ||
        o->retain_ms < 0)
        return UV_EINVAL;
    sb_store_t *s = calloc(1, sizeof *s);
    if (!s) return SB_ENOMEM;
    s->o = *o;
    s->dirfd = s->lockfd = -1;
    s->io = test_io_set ? test_io : real_io;
    if (!s->o.batch_window_us) s->o.batch_window_us = SB_STORE_BATCH_WINDOW_US_DEFAULT;
    if (!s->o.batch_quiet_us) s->o.batch_quiet_us = SB_STORE_BATCH_QUIET_US_DEFAULT;
    if (!s->o.segment_bytes) s->o.segment_bytes = SB_STORE_SEGMENT_BYTES_DEFAULT;
    /* Retention deletes whole segments and never the active one, so a segment
     * larger than half the cap could keep the total over it. */
    if (s->o.retain_bytes && s->o.segment_bytes > s->o.retain_bytes / 2)
        s->o.segment_bytes = s->o.retain_bytes / 2 > SEG_HDR ? s->o.retain_bytes / 2 : SEG_HDR + 1;
    pthread_mutex_init(&s->q_mu, NULL);
    pthread_mutex_init(&s->meta_mu, NULL);
    pthread_mutex_init(&s->res_mu, NULL);
    pthread_mutex_init(&s->pool_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->q_cv, &ca);
    pthread_condattr_destroy(&ca);

    int rc = SB_ENOMEM;
    if (!(s->dir = strdup(o->dir))) goto fail;
    s->o.dir = s->dir;
    if ((rc = make_dirs(s->dir)) < 0) goto fail;
    if ((s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) goto fail_errno;
    s->lockfd = openat(s->dirfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (s->lockfd < 0) goto fail_errno;
    if (flock(s->lockfd, LOCK_EX | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? UV_EBUSY : -errno;
        goto fail;
    }
    /* A temp file left by a crash in the middle of sb_store_reserve() is
     * garbage: the rename is what commits a reservation. */
    if (unlinkat(s->dirfd, RES_TMP, 0) < 0 && errno != ENOENT) goto fail_errno;
    if (unlinkat(s->dirfd, ORIGIN_TMP, 0) < 0 && errno != ENOENT) goto fail_errno;
    if ((rc = read_reservation(s)) < 0) goto fail;
    if ((rc = recover_segments(s)) < 0) goto fail;
    apply_retention(s);
    if ((rc = -pthread_create(&s->thread, NULL, store_main, s)) < 0) goto fail;
    sb_info("storage: opened", "dir=%s segments=%zu records=%llu next_seq=%llu", s->dir, s->nsegs,
            (unsigned long long)s->records,
            (unsigned long long)((s->q_last_seq > s->reserved ? s->q_last_seq : s->reserved) + 1));
    *out = s;
    return 0;
fail_errno:
    rc = -errno;
fail:;
    char eb[32];
    sb_error("storage: open failed", "dir=%s err=%s", o->dir, ename(rc, eb));
    store_free(s);
    return rc;
}

static int append(sb_store_t *s, const sb_store_rec_t *r, sb_store_done_cb cb, void *ud,
                  bool defer)
{
    if (atomic_load_explicit(&s->broken, memory_order_relaxed)) return UV_EIO;
    if (r->seq == 0) return UV_EINVAL;
    long len = sb_store_rec_size(r);
    if (len < 0) return (int)len;
    /* Encode outside the lock: the CRC and the copy are the expensive part. */
    node_t *n = node_alloc(s, (size_t)len);
    if (!n) return SB_ENOMEM;
    sb_store_rec_encode(r, n->buf, (size_t)len);
    n->next = NULL;
    n->cb = cb;
    n->ud = ud;
    n->seq = r->seq;
    n->time_ms = r->time_ms;
    n->len = (uint32_t)len;
    n->enq_us = sb_mono_us();

    int rc = 0;
    bool wake = false;
    pthread_mutex_lock(&s->q_mu);
    if (s->closing) {
        rc = UV_ESHUTDOWN;
    } else if (r->seq <= s->q_last_seq) {
        rc = UV_EINVAL;
    } else {
        s->q_last_seq = r->seq;
        s->q_last_enq_us = n->enq_us;
        if (s->q_tail) s->q_tail->next = n;
        else s->q_head = n;
        s->q_tail = n;
        s->q_count++;
        s->q_bytes += (size_t)len;
        /* The thread sleeps only on an empty queue, or in a BATCH group that
         * ends on its own clock; wake it only when that changes (a deferred
         * append leaves the first case to sb_store_kick). */
        wake = (s->q_count == 1 && !defer) ||
               (s->o.fsync == SB_FSYNC_BATCH &&
                (s->q_count == BATCH_MAX_RECORDS ||
                 (s->q_bytes >= BATCH_MAX_BYTES && s->q_bytes - (size_t)len < BATCH_MAX_BYTES)));
    }
    pthread_mutex_unlock(&s->q_mu);
    if (rc < 0) {
        free(n);
        return rc;
    }
    if (wake) pthread_cond_signal(&s->q_cv);
    return 0;
}

int sb_store_append(sb_store_t *s, const sb_store_rec_t *r, sb_store_done_cb cb, void *ud)
{
    return append(s, r, cb, ud, false);
}

int sb_store_append_deferred(sb_store_t *s, const sb_store_rec_t *r, sb_store_done_cb cb, void *ud)
{
    return append(s, r, cb, ud, true);
}

void sb_store_kick(sb_store_t *s)
{
    pthread_mutex_lock(&s->q_mu);
    bool wake = s->idle && s->q_head;
    pthread_mutex_unlock(&s->q_mu);
    if (wake) pthread_cond_signal(&s->q_cv);
}

/* Finds the first segment that may hold a record with seq >= target, pinned,
 * and the offset to scan from. NULL if no record is that new. */
static seg_t *locate(sb_store_t *s, uint64_t target, uint64_t *pos, uint64_t *end)
{
    seg_t *g = NULL;
    pthread_mutex_lock(&s->meta_mu);
    /* Segments are few (a 64 MiB default), so a linear pass over them costs
     * nothing next to the read; the index inside the segment is what matters. */
    for (size_t i = 0; i < s->nsegs; i++) {
        seg_t *c = s->segs[i];
        if (c->count == 0 || c->last_seq < target) continue;
        g = seg_ref(c);
        *pos = seg_seek(c, target);
        *end = c->size;
        break;
    }
    pthread_mutex_unlock(&s->meta_mu);
    return g;
}

/* The segment after cur (by base; cur may have been deleted meanwhile), or
 * more bytes of cur if it has grown. Returns the pinned segment to continue
 * with (cur itself, or the next one with cur released) or NULL at the end. */
static seg_t *advance(sb_store_t *s, seg_t *cur, uint64_t *pos, uint64_t *end, bool *moved)
{
    seg_t *next = NULL;
    pthread_mutex_lock(&s->meta_mu);
    if (cur->size > *end) {
        *end = cur->size;
        next = cur;
    } else {
        for (size_t i = 0; i < s->nsegs; i++) {
            seg_t *c = s->segs[i];
            if (c->base > cur->base && c->count > 0) {
                next = seg_ref(c);
                *pos = SEG_HDR;
                *end = c->size;
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->meta_mu);
    *moved = next != cur;
    if (*moved) seg_unref(cur);
    return next;
}

static int iterate(sb_store_t *s, uint64_t after, size_t max, sb_store_rec_cb cb, void *ud)
{
    if (max == 0 || after == UINT64_MAX) return 0;
    uint64_t pos = 0, end = 0;
    seg_t *g = locate(s, after + 1, &pos, &end);
    if (!g) return 0;
    rd_t rd;
    int rc = rd_init(&rd);
    if (rc < 0) {
        seg_unref(g);
        return rc;
    }
    rd_reset(&rd, g->fd, pos, end);
    size_t done = 0;
    while (g && done < max) {
        sb_store_rec_t r;
        const char *why;
        rd.end = end;
        long n = rd_next(&rd, pos, &r, &why);
        if (n == 0) {
            bool moved;
            g = advance(s, g, &pos, &end, &moved);
            if (g && moved) rd_reset(&rd, g->fd, pos, end);
            continue;
        }
        if (n < 0) {
            /* Everything below end was validated at recovery or written and
             * synced by us, so this is damage after the fact (or an I/O error).
             * Stop rather than skip: a silent gap would break resumption. */
            sb_error("storage: read failed", "file=%s/%s offset=%llu reason=%s", s->dir, g->name,
                     (unsigned long long)pos, n == SB_EPARSE || n == SB_AGAIN ? why : "io");
            rc = n == SB_EPARSE || n == SB_AGAIN ? UV_EIO : (int)n;
            break;
        }
        pos += (uint64_t)n;
        if (r.seq <= after) continue;
        done++;
        if (cb(ud, &r) != 0) break;
    }
    if (g) seg_unref(g);
    atomic_fetch_add(&s->read_bytes, rd.nread);
    free(rd.buf);
    if (rc < 0) return rc;
    return done > INT_MAX ? INT_MAX : (int)done;
}

int sb_store_read(sb_store_t *s, uint64_t after_seq, size_t max, sb_store_rec_cb cb, void *ud)
{
    return iterate(s, after_seq, max, cb, ud);
}

int sb_store_recover(sb_store_t *s, sb_store_rec_cb cb, void *ud)
{
    return iterate(s, 0, SIZE_MAX, cb, ud);
}

int sb_store_reserve(sb_store_t *s, uint64_t upto)
{
    if (upto <= atomic_load(&s->reserved)) return 0;
    pthread_mutex_lock(&s->res_mu);
    int rc = 0;
    if (upto > atomic_load(&s->reserved)) {
        rc = write_meta(s, RES_TMP, RES_FILE, res_magic, upto);
        char eb[32];
        if (rc == 0) atomic_store(&s->reserved, upto);
        else
            sb_error("storage: seq reservation failed", "dir=%s upto=%llu err=%s", s->dir,
                     (unsigned long long)upto, ename(rc, eb));
    }
    pthread_mutex_unlock(&s->res_mu);
    return rc;
}

void sb_store_reserve_async(sb_store_t *s, uint64_t upto)
{
    if (upto <= atomic_load(&s->reserved)) return;
    pthread_mutex_lock(&s->q_mu);
    if (upto > s->res_want) s->res_want = upto;
    pthread_mutex_unlock(&s->q_mu);
    /* Rare (once per block of seqs), so always wake the thread: it may be
     * asleep on an empty queue. */
    pthread_cond_signal(&s->q_cv);
}

uint64_t sb_store_reserved(sb_store_t *s) { return atomic_load(&s->reserved); }

int sb_store_origin(sb_store_t *s, uint64_t fresh, uint64_t *out)
{
    uint64_t v = 0;
    int rc = read_meta(s, ORIGIN_FILE, origin_magic, &v);
    if (rc < 0) return rc;
    if (rc == 0 && v > 0) {
        *out = v;
        return 0;
    }
    sb_store_info_t in;
    sb_store_info(s, &in);
    if (in.first_seq) v = in.first_seq;
    else if (in.reserved_upto) v = in.next_seq;
    else v = fresh ? fresh : 1;
    if ((rc = write_meta(s, ORIGIN_TMP, ORIGIN_FILE, origin_magic, v)) < 0) {
        char eb[32];
        sb_error("storage: could not record the directory's first seq", "dir=%s err=%s", s->dir,
                 ename(rc, eb));
        return rc;
    }
    *out = v;
    return 0;
}

void sb_store_info(sb_store_t *s, sb_store_info_t *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->q_mu);
    uint64_t last = s->q_last_seq;
    out->queued = s->q_count;
    pthread_mutex_unlock(&s->q_mu);
    out->reserved_upto = atomic_load(&s->reserved);
    out->next_seq = (last > out->reserved_upto ? last : out->reserved_upto) + 1;
    pthread_mutex_lock(&s->meta_mu);
    for (size_t i = 0; i < s->nsegs; i++) {
        seg_t *g = s->segs[i];
        if (g->count == 0) continue;
        if (!out->first_seq) out->first_seq = g->first_seq;
        out->last_seq = g->last_seq;
    }
    out->records = s->records;
    out->bytes = s->total_bytes;
    out->segments = (uint32_t)s->nsegs;
    pthread_mutex_unlock(&s->meta_mu);
    out->appends = atomic_load(&s->appends);
    out->failed_writes = atomic_load(&s->failed);
    out->fsyncs = atomic_load(&s->fsyncs);
    out->last_fsync_us = atomic_load(&s->last_fsync_us);
    out->max_fsync_us = atomic_load(&s->max_fsync_us);
    out->read_bytes = atomic_load(&s->read_bytes);
    out->segments_deleted = atomic_load(&s->deleted);
    out->broken = atomic_load(&s->broken);
}

void sb_store_close(sb_store_t *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->q_mu);
    s->closing = true;
    pthread_mutex_unlock(&s->q_mu);
    pthread_cond_signal(&s->q_cv);
    pthread_join(s->thread, NULL);
    uint64_t nsync = atomic_load(&s->fsyncs);
    sb_info("storage: closed",
            "dir=%s appends=%llu failed=%llu fsyncs=%llu mean_fsync_us=%llu max_fsync_us=%llu",
            s->dir, (unsigned long long)atomic_load(&s->appends),
            (unsigned long long)atomic_load(&s->failed), (unsigned long long)nsync,
            (unsigned long long)(nsync ? atomic_load(&s->fsync_us) / nsync : 0),
            (unsigned long long)atomic_load(&s->max_fsync_us));
    store_free(s);
}
