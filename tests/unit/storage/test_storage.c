/* Unit tests of the durable message log (src/storage): codec, recovery of torn
 * and garbled tails, index reads, retention, fsync modes, reservation, and
 * failed writes (injected through sb_store_set_io_for_test and RLIMIT_FSIZE). */
#define _GNU_SOURCE
#include "storage/storage.h"
#include "testlib.h"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>
#include <zlib.h>

/* ---- helpers: records whose every byte follows from their seq, temp
 * directories, a completion recorder ---- */

#define TU_TIME0 1700000000000ll

/* Storage for one generated record's strings. */
typedef struct {
    char chan[16], ev[8], key[32], data[400];
} tu_bufs_t;

/* Builds the record for seq: the channel, data length and bytes (NULs
 * included), idempotency key and flags all derive from seq, so any reader can
 * check a record without remembering it. */
static sb_store_rec_t tu_rec(uint64_t seq, tu_bufs_t *b)
{
    int cl = snprintf(b->chan, sizeof b->chan, "ch-%u", (unsigned)(seq % 7));
    memcpy(b->ev, "ev", 2);
    int kl = seq % 3 == 0 ? snprintf(b->key, sizeof b->key, "k-%llu", (unsigned long long)seq) : 0;
    size_t dl = (size_t)((seq * 37) % 300);
    for (size_t i = 0; i < dl; i++) b->data[i] = (char)(seq * 31 + i);
    return (sb_store_rec_t){.seq = seq,
                            .time_ms = TU_TIME0 + (int64_t)seq,
                            .flags = (uint8_t)seq,
                            .channel = sb_str(b->chan, (size_t)cl),
                            .event = sb_str(b->ev, 2),
                            .data = sb_str(b->data, dl),
                            .idem_key = sb_str(b->key, (size_t)kl)};
}

static bool tu_str_same(sb_str_t a, sb_str_t b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

/* True if r is exactly what tu_rec(r->seq) builds (time may be overridden by
 * tests that care about age; they pass check_time = false). */
static bool tu_rec_ok(const sb_store_rec_t *r, bool check_time)
{
    tu_bufs_t b;
    sb_store_rec_t e = tu_rec(r->seq, &b);
    return (!check_time || r->time_ms == e.time_ms) && r->flags == e.flags &&
           tu_str_same(r->channel, e.channel) && tu_str_same(r->event, e.event) &&
           tu_str_same(r->data, e.data) && tu_str_same(r->idem_key, e.idem_key);
}

/* ---- directories ---- */

static char *tu_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[512];
    snprintf(tmpl, sizeof tmpl, "%s/sbstore-XXXXXX", base && *base ? base : "/tmp");
    char *d = mkdtemp(tmpl);
    if (!d) {
        perror("mkdtemp");
        abort();
    }
    return strdup(d);
}

static void tu_rmrf(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char p[1024];
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* Sums the sizes of the segment files (*.log) and counts them. */
static uint64_t tu_log_bytes(const char *dir, int *nfiles)
{
    DIR *d = opendir(dir);
    uint64_t sum = 0;
    int n = 0;
    struct dirent *e;
    char p[1024];
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".log") != 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) == 0) sum += (uint64_t)st.st_size, n++;
    }
    if (d) closedir(d);
    if (nfiles) *nfiles = n;
    return sum;
}

/* Path of the n-th segment (0 = oldest) in buf; false if there is none. */
static bool tu_segment_path(const char *dir, int nth, char *buf, size_t cap)
{
    DIR *d = opendir(dir);
    char names[256][32];
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL && n < 256) {
        size_t l = strlen(e->d_name);
        if (l != 24 || strcmp(e->d_name + 20, ".log") != 0) continue;
        memcpy(names[n++], e->d_name, l + 1);
    }
    if (d) closedir(d);
    qsort(names, (size_t)n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    if (nth < 0) nth += n;
    if (nth < 0 || nth >= n) return false;
    snprintf(buf, cap, "%s/%s", dir, names[nth]);
    return true;
}

static uint8_t *tu_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)n + 1);
    *len = fread(p, 1, (size_t)n, f);
    p[*len] = 0; /* the log checks read it as a string */
    fclose(f);
    return p;
}

static void tu_write_file(const char *path, const void *p, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    if (len) fwrite(p, 1, len, f);
    fclose(f);
}

/* ---- completion recorder ---- */

static pthread_mutex_t tu_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t tu_cv = PTHREAD_COND_INITIALIZER;
static uint64_t tu_seqs[200000];
static int tu_status[200000];
static size_t tu_n;

static void tu_reset(void)
{
    pthread_mutex_lock(&tu_mu);
    tu_n = 0;
    pthread_mutex_unlock(&tu_mu);
}

/* Completion callback; ud is the seq. */
static void tu_done_cb(void *ud, int status)
{
    pthread_mutex_lock(&tu_mu);
    if (tu_n < sizeof tu_seqs / sizeof tu_seqs[0]) {
        tu_seqs[tu_n] = (uint64_t)(uintptr_t)ud;
        tu_status[tu_n] = status;
        tu_n++;
    }
    pthread_cond_broadcast(&tu_cv);
    pthread_mutex_unlock(&tu_mu);
}

static void tu_wait(size_t n)
{
    pthread_mutex_lock(&tu_mu);
    while (tu_n < n) pthread_cond_wait(&tu_cv, &tu_mu);
    pthread_mutex_unlock(&tu_mu);
}

static int tu_append(sb_store_t *s, uint64_t seq)
{
    tu_bufs_t b;
    sb_store_rec_t r = tu_rec(seq, &b);
    return sb_store_append(s, &r, tu_done_cb, (void *)(uintptr_t)seq);
}

/* Appends seq and waits for its callback; returns the callback status. */
static int tu_append_sync(sb_store_t *s, uint64_t seq)
{
    pthread_mutex_lock(&tu_mu);
    size_t before = tu_n;
    pthread_mutex_unlock(&tu_mu);
    int rc = tu_append(s, seq);
    if (rc < 0) return rc;
    tu_wait(before + 1);
    pthread_mutex_lock(&tu_mu);
    rc = tu_status[before];
    pthread_mutex_unlock(&tu_mu);
    return rc;
}

/* ---- collecting reads ---- */

typedef struct {
    uint64_t *seqs;
    size_t n, cap;
    size_t bad; /* records whose bytes differ from tu_rec() */
    bool check_time;
} tu_col_t;

static int tu_collect_cb(void *ud, const sb_store_rec_t *r)
{
    tu_col_t *c = ud;
    if (c->n == c->cap) {
        c->cap = c->cap ? c->cap * 2 : 256;
        c->seqs = realloc(c->seqs, c->cap * sizeof *c->seqs);
    }
    c->seqs[c->n++] = r->seq;
    if (!tu_rec_ok(r, c->check_time)) c->bad++;
    return 0;
}

static void tu_col_free(tu_col_t *c)
{
    free(c->seqs);
    *c = (tu_col_t){0};
}

static sb_store_t *tu_open(const char *dir, sb_fsync_mode_t mode, uint64_t seg_bytes)
{
    sb_store_opts_t o = {.dir = dir, .fsync = mode, .segment_bytes = seg_bytes};
    sb_store_t *s = NULL;
    int rc = sb_store_open(&o, &s);
    if (rc < 0) fprintf(stderr, "sb_store_open(%s) = %d\n", dir, rc);
    return s;
}


/* ---- fault injection: every store in this file writes through these ---- */

static atomic_int fail_write, partial_write, fail_sync, fail_trunc;
static _Atomic long unsynced; /* bytes written since the last successful fdatasync */

static ssize_t h_pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    if (atomic_load(&fail_write)) {
        /* A disk filling up mid-write: some bytes land, then the error. */
        if (atomic_exchange(&partial_write, 0) && iov[0].iov_len > 1) {
            struct iovec half = {iov[0].iov_base, iov[0].iov_len / 2};
            ssize_t w = pwritev(fd, &half, 1, off);
            if (w > 0) atomic_fetch_add(&unsynced, w);
            return w;
        }
        errno = atomic_load(&fail_write);
        return -1;
    }
    ssize_t w = pwritev(fd, iov, cnt, off);
    if (w > 0) atomic_fetch_add(&unsynced, w);
    return w;
}

static int h_fdatasync(int fd)
{
    if (atomic_load(&fail_sync)) {
        errno = atomic_load(&fail_sync);
        return -1;
    }
    int rc = fdatasync(fd);
    if (rc == 0) atomic_store(&unsynced, 0);
    return rc;
}

static int h_ftruncate(int fd, off_t len)
{
    if (atomic_load(&fail_trunc)) {
        errno = atomic_load(&fail_trunc);
        return -1;
    }
    atomic_store(&unsynced, 0);
    return ftruncate(fd, len);
}

static const sb_store_io_t hooks = {h_pwritev, h_fdatasync, h_ftruncate};

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static long rec_size(uint64_t seq)
{
    tu_bufs_t b;
    sb_store_rec_t r = tu_rec(seq, &b);
    return sb_store_rec_size(&r);
}

static off_t file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Reads everything and checks it is exactly seqs first..last (step 1), intact. */
static void check_all(sb_store_t *s, uint64_t first, uint64_t last)
{
    tu_col_t c = {.check_time = true};
    int n = sb_store_recover(s, tu_collect_cb, &c);
    CHECK_EQ_INT(n, last - first + 1);
    CHECK_EQ_INT(c.n, last - first + 1);
    CHECK_EQ_INT(c.bad, 0);
    bool seq_ok = true;
    for (size_t i = 0; i < c.n; i++) seq_ok = seq_ok && c.seqs[i] == first + i;
    CHECK(seq_ok);
    tu_col_free(&c);
}

/* ---- the codec ---- */

static void test_codec(void)
{
    tu_bufs_t b;
    sb_store_rec_t r = tu_rec(12345, &b);
    uint8_t buf[1024];
    long n = sb_store_rec_size(&r);
    CHECK(n > (long)(SB_STORE_REC_HDR + SB_STORE_REC_FIXED));
    CHECK_EQ_INT(sb_store_rec_encode(&r, buf, sizeof buf), n);
    CHECK_EQ_INT(sb_store_rec_encode(&r, buf, (size_t)n - 1), SB_ELIMIT);

    sb_store_rec_t d;
    const char *why = "unset";
    char *g = tl_guarded(buf, (size_t)n);
    CHECK_EQ_INT(sb_store_rec_decode(g, (size_t)n, &d, &why), n);
    CHECK(why == NULL);
    CHECK_EQ_INT(d.seq, 12345);
    CHECK(tu_rec_ok(&d, true));
    tl_guard_free(g);

    /* Every proper prefix is a torn record, never an error and never a read
     * past the end. */
    int again = 0;
    for (long k = 0; k < n; k++) {
        g = tl_guarded(buf, (size_t)k);
        again += sb_store_rec_decode(g, (size_t)k, &d, NULL) == SB_AGAIN;
        tl_guard_free(g);
    }
    CHECK_EQ_INT(again, n);

    /* Any garbled byte is caught (a garbled length may also read as torn). */
    int caught = 0;
    for (long k = 0; k < n; k++) {
        uint8_t c[1024];
        memcpy(c, buf, (size_t)n);
        c[k] ^= 0x5A;
        g = tl_guarded(c, (size_t)n);
        long rc = sb_store_rec_decode(g, (size_t)n, &d, &why);
        caught += rc == SB_EPARSE || rc == SB_AGAIN;
        tl_guard_free(g);
    }
    CHECK_EQ_INT(caught, n);

    /* A wrong magic is an error even before the header is complete. */
    g = tl_guarded("SBX", 3);
    CHECK_EQ_INT(sb_store_rec_decode(g, 3, &d, &why), SB_EPARSE);
    CHECK_EQ_STR(why, strlen(why), "bad_magic");
    tl_guard_free(g);

    /* Impossible lengths are errors, not requests for 4 GiB more input. */
    uint8_t h[12];
    memcpy(h, buf, 12);
    h[4] = 0xFF, h[5] = 0xFF, h[6] = 0xFF, h[7] = 0xFF;
    CHECK_EQ_INT(sb_store_rec_decode(h, 12, &d, &why), SB_EPARSE);
    CHECK_EQ_STR(why, strlen(why), "bad_length");
    h[4] = 3, h[5] = 0, h[6] = 0, h[7] = 0;
    CHECK_EQ_INT(sb_store_rec_decode(h, 12, &d, &why), SB_EPARSE);

    /* Field lengths that disagree with the body, under a valid CRC. */
    uint8_t c[1024];
    memcpy(c, buf, (size_t)n);
    c[12 + 17] += 1; /* channel length */
    uLong crc = crc32(crc32(0L, c, 8), c + 12, (uInt)(n - 12));
    for (int i = 0; i < 4; i++) c[8 + i] = (uint8_t)(crc >> (8 * i));
    CHECK_EQ_INT(sb_store_rec_decode(c, (size_t)n, &d, &why), SB_EPARSE);
    CHECK_EQ_STR(why, strlen(why), "bad_field_lengths");

    /* An all-empty record round-trips too. */
    sb_store_rec_t e = {.seq = 1};
    long en = sb_store_rec_encode(&e, buf, sizeof buf);
    CHECK_EQ_INT(en, SB_STORE_REC_HDR + SB_STORE_REC_FIXED);
    g = tl_guarded(buf, (size_t)en);
    CHECK_EQ_INT(sb_store_rec_decode(g, (size_t)en, &d, NULL), en);
    CHECK(d.channel.len == 0 && d.data.len == 0 && d.idem_key.len == 0 && d.seq == 1);
    tl_guard_free(g);

    /* Too long fields are refused by size (nothing is read from them). */
    sb_store_rec_t big = {.seq = 1, .channel = sb_str(b.chan, 65536)};
    CHECK_EQ_INT(sb_store_rec_size(&big), SB_ELIMIT);
    big = (sb_store_rec_t){.seq = 1, .data = sb_str(b.data, SB_STORE_DATA_MAX + 1)};
    CHECK_EQ_INT(sb_store_rec_size(&big), SB_ELIMIT);
}

/* ---- append, read back, reopen ---- */

static void test_roundtrip(void)
{
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    CHECK(s != NULL);
    if (!s) return;
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 1);
    CHECK_EQ_INT(in.records, 0);
    CHECK_EQ_INT(in.first_seq, 0);

    /* A second opener of the same directory is refused. */
    sb_store_t *s2 = NULL;
    sb_store_opts_t o = {.dir = dir};
    CHECK_EQ_INT(sb_store_open(&o, &s2), UV_EBUSY);
    CHECK(s2 == NULL);

    tu_reset();
    for (uint64_t q = 1; q <= 1000; q++) CHECK_EQ_INT(tu_append(s, q), 0);
    /* Refused at once, without a callback: seq 0, seqs not increasing, a
     * field too long. */
    CHECK_EQ_INT(tu_append(s, 0), UV_EINVAL);
    CHECK_EQ_INT(tu_append(s, 1000), UV_EINVAL);
    CHECK_EQ_INT(tu_append(s, 7), UV_EINVAL);
    char longch[70000];
    memset(longch, 'a', sizeof longch);
    sb_store_rec_t lr = {.seq = 2000, .channel = sb_str(longch, sizeof longch)};
    CHECK_EQ_INT(sb_store_append(s, &lr, tu_done_cb, NULL), SB_ELIMIT);
    tu_wait(1000);
    bool ok = true;
    for (size_t i = 0; i < 1000; i++) ok = ok && tu_seqs[i] == i + 1 && tu_status[i] == 0;
    CHECK(ok);
    CHECK_EQ_INT(tu_n, 1000);

    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 1001);
    CHECK_EQ_INT(in.first_seq, 1);
    CHECK_EQ_INT(in.last_seq, 1000);
    CHECK_EQ_INT(in.records, 1000);
    CHECK_EQ_INT(in.appends, 1000);
    CHECK_EQ_INT(in.failed_writes, 0);
    CHECK_EQ_INT(in.segments, 1);
    CHECK(in.fsyncs >= 1);
    CHECK_EQ_INT(in.bytes, (uint64_t)tu_log_bytes(dir, NULL));
    check_all(s, 1, 1000);
    sb_store_close(s);

    s = tu_open(dir, SB_FSYNC_BATCH, 0);
    CHECK(s != NULL);
    if (!s) return;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 1001);
    CHECK_EQ_INT(in.records, 1000);
    check_all(s, 1, 1000);
    tu_reset();
    for (uint64_t q = 1001; q <= 1100; q++) CHECK_EQ_INT(tu_append(s, q), 0);
    tu_wait(100);
    sb_store_close(s);

    s = tu_open(dir, SB_FSYNC_OFF, 0);
    CHECK(s != NULL);
    if (!s) return;
    check_all(s, 1, 1100);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- recovery cuts a torn or garbled tail and keeps every intact record ---- */

static int count_and_check(const char *dir, uint64_t expect_last, uint64_t *next_seq)
{
    sb_store_t *s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (!s) return -1;
    tu_col_t c = {.check_time = true};
    sb_store_recover(s, tu_collect_cb, &c);
    bool ok = c.bad == 0 && c.n == expect_last;
    for (size_t i = 0; ok && i < c.n; i++) ok = c.seqs[i] == i + 1;
    sb_store_info_t in;
    sb_store_info(s, &in);
    if (next_seq) *next_seq = in.next_seq;
    sb_store_close(s);
    tu_col_free(&c);
    return ok ? 0 : -1;
}

/* Runs count_and_check with stderr (the server's log) captured into a file
 * next to dir; *log gets what was written (NUL-terminated, the caller frees;
 * NULL if the file could not be read). */
static int check_captured(const char *dir, uint64_t last, uint64_t *next, char **log)
{
    char logpath[1100];
    snprintf(logpath, sizeof logpath, "%s.stderr", dir);
    fflush(stderr);
    int saved_err = dup(2);
    int lfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(lfd, 2);
    close(lfd);
    int rc = count_and_check(dir, last, next);
    fflush(stderr);
    dup2(saved_err, 2);
    close(saved_err);
    size_t llen = 0;
    *log = (char *)tu_read_file(logpath, &llen);
    unlink(logpath);
    return rc;
}

static void test_torn_tail(void)
{
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (!s) return;
    for (uint64_t q = 1; q <= 20; q++) tu_append_sync(s, q);
    sb_store_close(s);

    char seg[1024];
    CHECK(tu_segment_path(dir, 0, seg, sizeof seg));
    size_t plen;
    uint8_t *pristine = tu_read_file(seg, &plen);
    size_t off_last = 32, off_10 = 0;
    for (uint64_t q = 1; q <= 19; q++) {
        if (q == 10) off_10 = off_last;
        off_last += (size_t)rec_size(q);
    }
    size_t last_len = (size_t)rec_size(20);
    CHECK_EQ_INT(plen, off_last + last_len);

    sb_log_level_t saved = sb_log_level;
    sb_log_level = SB_LOG_ERROR; /* hundreds of opens: keep the output readable */
    int bad_cut = 0, bad_size = 0;
    for (size_t cut = 0; cut < last_len; cut++) {
        tu_write_file(seg, pristine, off_last + cut);
        uint64_t next = 0;
        bad_cut += count_and_check(dir, 19, &next) != 0 || next != 20;
        bad_size += file_size(seg) != (off_t)off_last;
    }
    CHECK_EQ_INT(bad_cut, 0);
    CHECK_EQ_INT(bad_size, 0);

    /* Garble each byte of the last record, in two ways. */
    int bad_garble = 0;
    uint8_t *c = malloc(plen + 4096);
    for (size_t k = 0; k < last_len; k++) {
        for (int way = 0; way < 2; way++) {
            memcpy(c, pristine, plen);
            c[off_last + k] = way ? (uint8_t)(c[off_last + k] ^ 0x01) : (uint8_t)~c[off_last + k];
            tu_write_file(seg, c, plen);
            bad_garble += count_and_check(dir, 19, NULL) != 0;
            bad_garble += file_size(seg) != (off_t)off_last;
        }
    }
    CHECK_EQ_INT(bad_garble, 0);

    /* A zero-filled tail (preallocated space, or a crash after the size but
     * before the data reached the disk) ends the log cleanly: it is kept for
     * appends, which go right after the last record. */
    memcpy(c, pristine, plen);
    memset(c + plen, 0, 4096);
    tu_write_file(seg, c, plen + 4096);
    CHECK_EQ_INT(count_and_check(dir, 20, NULL), 0);
    CHECK_EQ_INT(file_size(seg), plen + 4096);
    s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (s) {
        CHECK_EQ_INT(tu_append_sync(s, 21), 0);
        sb_store_close(s);
    }
    CHECK_EQ_INT(count_and_check(dir, 21, NULL), 0);
    CHECK_EQ_INT(file_size(seg), plen + 4096);
    /* Random garbage after the last record is cut. */
    memcpy(c, pristine, plen);
    for (int i = 0; i < 4096; i++) c[plen + i] = (uint8_t)rnd();
    tu_write_file(seg, c, plen + 4096);
    CHECK_EQ_INT(count_and_check(dir, 20, NULL), 0);
    CHECK_EQ_INT(file_size(seg), plen);
    sb_log_level = saved;

    /* Garbage in the middle of the newest segment: everything from there on
     * is cut, and the cut is logged with file, offset and bytes. */
    memcpy(c, pristine, plen);
    c[off_10 + 20] ^= 0x40;
    tu_write_file(seg, c, plen);
    uint64_t next = 0;
    char *log = NULL;
    CHECK_EQ_INT(check_captured(dir, 9, &next, &log), 0);
    CHECK_EQ_INT(next, 10);
    CHECK_EQ_INT(file_size(seg), off_10);
    char want[128];
    snprintf(want, sizeof want, "offset=%zu bytes=%zu reason=bad_crc", off_10, plen - off_10);
    CHECK(log && strstr(log, "cut a torn or corrupt tail") && strstr(log, want));
    CHECK(log && strstr(log, seg));
    free(log);

    /* Appends continue right after the cut, and survive another reopen. */
    s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (s) {
        for (uint64_t q = 10; q <= 25; q++) CHECK_EQ_INT(tu_append_sync(s, q), 0);
        sb_store_close(s);
    }
    CHECK_EQ_INT(count_and_check(dir, 25, NULL), 0);
    free(c);
    free(pristine);
    tu_rmrf(dir);
    free(dir);
}

/* ---- damage in older segments ---- */

typedef struct {
    uint64_t seq, off;
} pos_t;

/* Lists the records of a segment file (which must be intact). */
static size_t list_records(const char *path, pos_t *out, size_t max)
{
    size_t len, n = 0, off = 32;
    uint8_t *p = tu_read_file(path, &len);
    while (p && off < len && n < max) {
        sb_store_rec_t r;
        long k = sb_store_rec_decode(p + off, len - off, &r, NULL);
        if (k <= 0) break;
        out[n++] = (pos_t){r.seq, off};
        off += (size_t)k;
    }
    free(p);
    return n;
}

static void test_older_segments(void)
{
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_OFF, 2048);
    if (!s) return;
    tu_reset();
    for (uint64_t q = 1; q <= 80; q++) tu_append(s, q);
    tu_wait(80);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK(in.segments >= 6);
    sb_store_close(s);

    /* A bad record in the middle of segment 1: that segment ends there (the
     * file is kept as is), every other segment is served. */
    char seg1[1024], seg2[1024], segl[1024];
    CHECK(tu_segment_path(dir, 1, seg1, sizeof seg1));
    CHECK(tu_segment_path(dir, 2, seg2, sizeof seg2));
    CHECK(tu_segment_path(dir, -1, segl, sizeof segl));
    pos_t recs[64];
    size_t n1 = list_records(seg1, recs, 64);
    CHECK(n1 >= 4);
    size_t len;
    uint8_t *p = tu_read_file(seg1, &len);
    p[recs[2].off + 14] ^= 0x10;
    tu_write_file(seg1, p, len);
    free(p);
    uint64_t lost_from = recs[2].seq, lost_to = recs[n1 - 1].seq;
    s = tu_open(dir, SB_FSYNC_OFF, 2048);
    if (!s) return;
    tu_col_t c = {.check_time = true};
    sb_store_recover(s, tu_collect_cb, &c);
    CHECK_EQ_INT(c.bad, 0);
    CHECK_EQ_INT(c.n, 80 - (lost_to - lost_from + 1));
    bool ok = true;
    for (size_t i = 1; i < c.n; i++) ok = ok && c.seqs[i] > c.seqs[i - 1];
    for (size_t i = 0; i < c.n; i++) ok = ok && (c.seqs[i] < lost_from || c.seqs[i] > lost_to);
    CHECK(ok);
    tu_col_free(&c);
    /* Reads that start inside the damaged span continue in the next segment. */
    c = (tu_col_t){.check_time = true};
    CHECK_EQ_INT(sb_store_read(s, lost_from, 3, tu_collect_cb, &c), 3);
    CHECK(c.n == 3 && c.seqs[0] == lost_to + 1);
    tu_col_free(&c);
    sb_store_close(s);
    CHECK_EQ_INT(file_size(seg1), len);

    /* A corrupt header on an older segment: the file is moved aside. */
    pos_t recs2[64];
    size_t n2 = list_records(seg2, recs2, 64);
    p = tu_read_file(seg2, &len);
    p[3] ^= 0xFF;
    tu_write_file(seg2, p, len);
    free(p);
    s = tu_open(dir, SB_FSYNC_OFF, 2048);
    if (!s) return;
    c = (tu_col_t){.check_time = true};
    sb_store_recover(s, tu_collect_cb, &c);
    CHECK_EQ_INT(c.n, 80 - (lost_to - lost_from + 1) - n2);
    CHECK_EQ_INT(c.bad, 0);
    tu_col_free(&c);
    sb_store_close(s);
    char aside[1100];
    snprintf(aside, sizeof aside, "%s.corrupt", seg2);
    CHECK(file_size(aside) == (off_t)len);
    CHECK(file_size(seg2) < 0);

    /* The newest segment torn during its creation (shorter than a header) is
     * removed, and appends go on into a new one. */
    tu_write_file(segl, "SBSEG", 5);
    s = tu_open(dir, SB_FSYNC_OFF, 2048);
    if (!s) return;
    CHECK(file_size(segl) < 0);
    sb_store_info(s, &in);
    uint64_t base = 0;
    sb_str_to_u64(sb_str(strrchr(segl, '/') + 1, 20), &base);
    CHECK_EQ_INT(in.next_seq, base); /* the records of the removed file are gone */
    CHECK_EQ_INT(tu_append_sync(s, 100), 0);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- index reads ---- */

typedef struct {
    sb_store_t *s;
    atomic_bool stop;
    atomic_int errors, reads;
} reader_arg_t;

static void *reader_main(void *arg)
{
    reader_arg_t *a = arg;
    uint64_t x = 12345;
    while (!atomic_load(&a->stop)) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        tu_col_t c = {.check_time = true};
        int n = sb_store_read(a->s, (x >> 33) % 70000, 50, tu_collect_cb, &c);
        bool ok = n >= 0 && (size_t)n == c.n && c.bad == 0;
        for (size_t i = 1; i < c.n; i++) ok = ok && c.seqs[i] > c.seqs[i - 1];
        if (!ok) atomic_fetch_add(&a->errors, 1);
        atomic_fetch_add(&a->reads, 1);
        tu_col_free(&c);
    }
    return NULL;
}

static int stop_after_5(void *ud, const sb_store_rec_t *r)
{
    int *n = ud;
    return ++*n == 5;
}

static size_t first_after(const uint64_t *v, size_t n, uint64_t after)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (v[mid] <= after) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int check_reads(sb_store_t *s, const uint64_t *ref, size_t nref, int rounds)
{
    int bad = 0;
    for (int i = 0; i < rounds; i++) {
        uint64_t after = rnd() % (ref[nref - 1] + 10);
        size_t max = 1 + rnd() % 150;
        size_t at = first_after(ref, nref, after);
        size_t want = nref - at < max ? nref - at : max;
        tu_col_t c = {.check_time = true};
        int n = sb_store_read(s, after, max, tu_collect_cb, &c);
        bool ok = n == (int)want && c.n == want && c.bad == 0;
        for (size_t k = 0; ok && k < want; k++) ok = c.seqs[k] == ref[at + k];
        bad += !ok;
        tu_col_free(&c);
    }
    return bad;
}

static void test_index(void)
{
    enum { N = 20000 };
    static uint64_t ref[N + 5000];
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_OFF, 1 << 20);
    if (!s) return;
    tu_reset();
    uint64_t q = 0;
    for (size_t i = 0; i < N; i++) {
        q += 1 + rnd() % 3; /* gaps, as after failed appends */
        ref[i] = q;
        tu_append(s, q);
    }
    tu_wait(N);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK(in.segments >= 3);
    CHECK_EQ_INT(in.records, N);

    CHECK_EQ_INT(check_reads(s, ref, N, 400), 0);
    tu_col_t c = {0};
    CHECK_EQ_INT(sb_store_read(s, 0, N * 2, tu_collect_cb, &c), N);
    tu_col_free(&c);
    CHECK_EQ_INT(sb_store_read(s, ref[N - 1], 10, tu_collect_cb, &c), 0);
    CHECK_EQ_INT(sb_store_read(s, UINT64_MAX, 10, tu_collect_cb, &c), 0);
    CHECK_EQ_INT(sb_store_read(s, 0, 0, tu_collect_cb, &c), 0);
    int seen = 0;
    CHECK_EQ_INT(sb_store_read(s, 100, 50, stop_after_5, &seen), 5);

    /* The index bounds the work: one record from the middle of a multi-MiB
     * log reads at most one index span and one read chunk. */
    sb_store_info(s, &in);
    uint64_t before = in.read_bytes;
    c = (tu_col_t){0};
    CHECK_EQ_INT(sb_store_read(s, ref[N / 2], 1, tu_collect_cb, &c), 1);
    CHECK(c.n == 1 && c.seqs[0] == ref[N / 2 + 1]);
    tu_col_free(&c);
    sb_store_info(s, &in);
    CHECK(in.bytes > (3u << 20));
    CHECK(in.read_bytes - before <= (128u << 10));

    /* Readers racing appends see only whole, increasing records. */
    reader_arg_t ra = {.s = s};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, reader_main, &ra);
    for (size_t i = N; i < N + 5000; i++) {
        q += 1 + rnd() % 3;
        ref[i] = q;
        tu_append(s, q);
    }
    tu_wait(N + 5000);
    atomic_store(&ra.stop, true);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    CHECK_EQ_INT(atomic_load(&ra.errors), 0);
    CHECK(atomic_load(&ra.reads) > 0);
    sb_store_close(s);

    /* The index is rebuilt at recovery. */
    s = tu_open(dir, SB_FSYNC_OFF, 1 << 20);
    if (!s) return;
    CHECK_EQ_INT(check_reads(s, ref, N + 5000, 300), 0);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- retention ---- */

static void test_retention(void)
{
    char *dir = tu_tmpdir();
    const uint64_t cap = 64u << 10;
    sb_store_opts_t o = {.dir = dir, .fsync = SB_FSYNC_BATCH, .batch_window_us = 200,
                         .segment_bytes = 8u << 10, .retain_bytes = cap};
    sb_store_t *s = NULL;
    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    tu_reset();
    int over = 0;
    uint64_t recent = 0; /* bytes of the records appended since the last check */
    for (uint64_t q = 1; q <= 3000; q++) {
        tu_append(s, q);
        recent += (uint64_t)rec_size(q);
        if (q % 100 == 0) {
            tu_wait(q);
            sb_store_info_t in;
            sb_store_info(s, &in);
            /* Retention runs right after a batch's callbacks, so at this point
             * the total may still hold the newest batch (at most the records
             * since the last check, and the headers of the segments they
             * opened) on top of the cap; never more. */
            over += in.bytes > cap + recent + 16 * 32;
            recent = 0;
        }
    }
    tu_wait(3000);
    CHECK_EQ_INT(over, 0);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK(in.segments_deleted > 0);
    CHECK(in.first_seq > 1);
    CHECK_EQ_INT(in.last_seq, 3000);
    sb_store_close(s);
    /* Close runs the last retention pass: now the cap holds exactly. */
    CHECK(tu_log_bytes(dir, NULL) <= cap);

    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    sb_store_info(s, &in);
    uint64_t first = in.first_seq;
    CHECK(first > 1);
    check_all(s, first, 3000);
    CHECK(in.bytes <= cap);
    CHECK_EQ_INT(in.bytes, tu_log_bytes(dir, NULL));
    /* A read from before the retained range starts at the oldest record. */
    tu_col_t c = {0};
    CHECK_EQ_INT(sb_store_read(s, 0, 1, tu_collect_cb, &c), 1);
    CHECK(c.n == 1 && c.seqs[0] == first);
    tu_col_free(&c);
    sb_store_close(s);
    tu_rmrf(dir);

    /* By age: segments whose newest record is older than retain_ms go, the
     * newer ones (and any segment holding a new record) stay. */
    free(dir);
    dir = tu_tmpdir();
    o = (sb_store_opts_t){.dir = dir, .fsync = SB_FSYNC_OFF, .segment_bytes = 4096};
    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    tu_reset();
    int64_t now = sb_now_ms();
    for (uint64_t q = 1; q <= 600; q++) {
        tu_bufs_t b;
        sb_store_rec_t r = tu_rec(q, &b);
        r.time_ms = q <= 300 ? now - 3600 * 1000 : now;
        sb_store_append(s, &r, tu_done_cb, (void *)(uintptr_t)q);
    }
    tu_wait(600);
    sb_store_close(s);
    int files_before;
    tu_log_bytes(dir, &files_before);
    o.retain_ms = 60 * 1000;
    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    sb_store_info(s, &in);
    CHECK(in.first_seq > 1 && in.first_seq <= 301);
    CHECK(in.segments_deleted > 0);
    int files_after;
    tu_log_bytes(dir, &files_after);
    CHECK_EQ_INT(files_after, files_before - (int)in.segments_deleted);
    c = (tu_col_t){.check_time = false};
    sb_store_recover(s, tu_collect_cb, &c);
    CHECK_EQ_INT(c.n, 600 - in.first_seq + 1);
    CHECK_EQ_INT(c.bad, 0);
    tu_col_free(&c);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- fsync modes: callbacks in order, and only after the promised sync ---- */

static atomic_int mode_violations;
static sb_fsync_mode_t cur_mode;

static void mode_cb(void *ud, int status)
{
    long u = atomic_load(&unsynced);
    /* ALWAYS and BATCH: nothing written may be waiting for a sync when a
     * callback runs. OFF: the callback comes before any sync. */
    if (cur_mode != SB_FSYNC_OFF ? u != 0 : u == 0) atomic_fetch_add(&mode_violations, 1);
    tu_done_cb(ud, status);
}

typedef struct {
    sb_store_t *s;
    pthread_mutex_t *mu;
    uint64_t *next;
    int count;
} appender_t;

static void *appender_main(void *arg)
{
    appender_t *a = arg;
    for (int i = 0; i < a->count; i++) {
        tu_bufs_t b;
        /* Like the broker: the seq is assigned and appended under one lock. */
        pthread_mutex_lock(a->mu);
        uint64_t q = (*a->next)++;
        sb_store_rec_t r = tu_rec(q, &b);
        int rc = sb_store_append(a->s, &r, mode_cb, (void *)(uintptr_t)q);
        pthread_mutex_unlock(a->mu);
        if (rc < 0) atomic_fetch_add(&mode_violations, 1);
    }
    return NULL;
}

static void test_modes(void)
{
    static const sb_fsync_mode_t modes[] = {SB_FSYNC_ALWAYS, SB_FSYNC_BATCH, SB_FSYNC_OFF};
    for (int m = 0; m < 3; m++) {
        char *dir = tu_tmpdir();
        cur_mode = modes[m];
        atomic_store(&mode_violations, 0);
        sb_store_opts_t o = {.dir = dir, .fsync = modes[m], .segment_bytes = 32u << 10};
        sb_store_t *s = NULL;
        CHECK_EQ_INT(sb_store_open(&o, &s), 0);
        if (!s) return;
        tu_reset();
        pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
        uint64_t next = 1;
        appender_t a = {s, &mu, &next, 600};
        pthread_t th[2];
        for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, appender_main, &a);
        for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
        tu_wait(1200);
        bool ok = tu_n == 1200;
        for (size_t i = 0; i < tu_n; i++) ok = ok && tu_seqs[i] == i + 1 && tu_status[i] == 0;
        CHECK(ok);
        CHECK_EQ_INT(atomic_load(&mode_violations), 0);
        sb_store_info_t in;
        sb_store_info(s, &in);
        if (modes[m] == SB_FSYNC_OFF) CHECK_EQ_INT(in.fsyncs, 0);
        else CHECK(in.fsyncs >= 2);
        /* Group commit: a burst inside one generous window shares one sync. */
        if (modes[m] == SB_FSYNC_BATCH) {
            sb_store_close(s);
            o.batch_window_us = 1000 * 1000;
            o.batch_quiet_us = 1000 * 1000; /* the window alone decides, whatever the timing */
            o.segment_bytes = 0;
            CHECK_EQ_INT(sb_store_open(&o, &s), 0);
            if (!s) return;
            sb_store_info(s, &in);
            uint64_t f0 = in.fsyncs;
            tu_reset();
            for (uint64_t q = 2000; q < 2100; q++) {
                tu_bufs_t b;
                sb_store_rec_t r = tu_rec(q, &b);
                sb_store_append(s, &r, mode_cb, (void *)(uintptr_t)q);
            }
            tu_wait(100);
            sb_store_info(s, &in);
            CHECK(in.fsyncs - f0 >= 1 && in.fsyncs - f0 <= 2);
        }
        sb_store_close(s);
        tu_rmrf(dir);
        free(dir);
    }
}

/* ---- close drains the queue ---- */

static void test_close_drains(void)
{
    char *dir = tu_tmpdir();
    sb_store_opts_t o = {.dir = dir,
                         .fsync = SB_FSYNC_BATCH,
                         .batch_window_us = 10 * 1000 * 1000,
                         .batch_quiet_us = 10 * 1000 * 1000};
    sb_store_t *s = NULL;
    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    tu_reset();
    for (uint64_t q = 1; q <= 500; q++) tu_append(s, q);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK(in.queued > 0); /* the 10 s window is still open */
    sb_store_close(s);
    pthread_mutex_lock(&tu_mu);
    CHECK_EQ_INT(tu_n, 500);
    bool ok = true;
    for (size_t i = 0; i < tu_n; i++) ok = ok && tu_status[i] == 0;
    pthread_mutex_unlock(&tu_mu);
    CHECK(ok);
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    check_all(s, 1, 500);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- the seq reservation ---- */

static void test_reservation(void)
{
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    CHECK_EQ_INT(sb_store_reserve(s, 100000), 0);
    CHECK_EQ_INT(sb_store_reserve(s, 50), 0); /* lower: no change */
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 100001);
    CHECK_EQ_INT(in.reserved_upto, 100000);
    CHECK_EQ_INT(tu_append_sync(s, 5), 0);
    sb_store_close(s);

    /* The reservation, not the newest record, sets next_seq after a crash. */
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 100001);
    CHECK_EQ_INT(in.last_seq, 5);
    CHECK_EQ_INT(tu_append_sync(s, 100500), 0);
    sb_store_close(s);

    /* Past the reservation, the newest record wins. A stale temp file from a
     * crash mid-reservation is ignored and removed. */
    char p[1100];
    snprintf(p, sizeof p, "%s/reserve.meta.tmp", dir);
    tu_write_file(p, "garbage", 7);
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 100501);
    CHECK(file_size(p) < 0);
    CHECK_EQ_INT(sb_store_reserve(s, 200000), 0);
    sb_store_close(s);
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 200001);
    sb_store_close(s);

    /* A damaged reservation file is reported and ignored, not fatal. */
    snprintf(p, sizeof p, "%s/reserve.meta", dir);
    size_t len;
    uint8_t *b = tu_read_file(p, &len);
    CHECK_EQ_INT(len, 20);
    b[9] ^= 1;
    tu_write_file(p, b, len);
    free(b);
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.next_seq, 100501);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- BATCH closes early when appends stop ---- */

static void test_batch_quiet(void)
{
    char *dir = tu_tmpdir();
    /* A 10 s window: only the quiet rule can answer within the wait below. */
    sb_store_opts_t o = {.dir = dir, .fsync = SB_FSYNC_BATCH, .batch_window_us = 10 * 1000 * 1000};
    sb_store_t *s = NULL;
    CHECK_EQ_INT(sb_store_open(&o, &s), 0);
    if (!s) return;
    tu_reset();
    uint64_t t0 = sb_mono_us();
    CHECK_EQ_INT(tu_append(s, 1), 0);
    tu_wait(1);
    CHECK(sb_mono_us() - t0 < 5 * 1000 * 1000);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.last_seq, 1);
    CHECK(in.fsyncs >= 1);
    /* A burst shares fsyncs: far fewer than one per record. */
    uint64_t f0 = in.fsyncs;
    for (uint64_t q = 2; q <= 201; q++) tu_append(s, q);
    tu_wait(201);
    sb_store_info(s, &in);
    CHECK(in.fsyncs - f0 >= 1 && in.fsyncs - f0 < 200);
    bool ok = true;
    for (size_t i = 0; i < tu_n; i++) ok = ok && tu_seqs[i] == i + 1 && tu_status[i] == 0;
    CHECK(ok);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- deferred appends wait for a kick ---- */

static void test_deferred_kick(void)
{
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (!s) return;
    tu_reset();
    /* One plain append, then let the thread settle into its idle wait. */
    CHECK_EQ_INT(tu_append(s, 1), 0);
    tu_wait(1);
    usleep(20 * 1000);
    sb_store_kick(s); /* nothing queued: nothing to do */
    tu_bufs_t b;
    for (uint64_t q = 2; q <= 4; q++) {
        sb_store_rec_t r = tu_rec(q, &b);
        CHECK_EQ_INT(sb_store_append_deferred(s, &r, tu_done_cb, (void *)(uintptr_t)q), 0);
    }
    /* The idle thread was not woken: the records wait for the kick. */
    usleep(20 * 1000);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.queued, 3);
    CHECK_EQ_INT(in.last_seq, 1);
    sb_store_kick(s);
    tu_wait(4);
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.last_seq, 4);
    CHECK_EQ_INT(in.queued, 0);
    /* A plain append still wakes it by itself. */
    CHECK_EQ_INT(tu_append(s, 5), 0);
    tu_wait(5);
    bool ok = true;
    for (size_t i = 0; i < tu_n; i++) ok = ok && tu_seqs[i] == i + 1 && tu_status[i] == 0;
    CHECK(ok);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- asynchronous reservation and the directory's origin ---- */

static void test_reserve_async_and_origin(void)
{
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_BATCH, 0);
    if (!s) return;
    CHECK(sb_store_reserved(s) == 0);
    sb_store_reserve_async(s, 5000);
    sb_store_reserve_async(s, 3000); /* merged into the larger */
    for (int i = 0; i < 5000 && sb_store_reserved(s) < 5000; i++) usleep(1000);
    CHECK(sb_store_reserved(s) == 5000);
    sb_store_reserve_async(s, 10); /* below: nothing to do */
    uint64_t origin = 0;
    CHECK_EQ_INT(sb_store_origin(s, 777, &origin), 0);
    CHECK(origin == 5001); /* a reservation but no records: next_seq */
    CHECK_EQ_INT(sb_store_origin(s, 999, &origin), 0);
    CHECK(origin == 5001); /* written once, then read back */
    sb_store_close(s);
    s = tu_open(dir, SB_FSYNC_BATCH, 0);
    if (!s) return;
    CHECK(sb_store_reserved(s) == 5000);
    CHECK_EQ_INT(sb_store_origin(s, 999, &origin), 0);
    CHECK(origin == 5001);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);

    /* Fresh: the caller's value. With records but no origin file (a damaged
     * one, or a directory from before the file existed): the oldest record. */
    dir = tu_tmpdir();
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    CHECK_EQ_INT(sb_store_origin(s, 4242, &origin), 0);
    CHECK(origin == 4242);
    CHECK_EQ_INT(tu_append_sync(s, 4300), 0);
    sb_store_close(s);
    char p[1100];
    snprintf(p, sizeof p, "%s/origin.meta", dir);
    size_t len;
    uint8_t *b = tu_read_file(p, &len);
    CHECK_EQ_INT(len, 20);
    b[10] ^= 4;
    tu_write_file(p, b, len);
    free(b);
    s = tu_open(dir, SB_FSYNC_OFF, 0);
    if (!s) return;
    CHECK_EQ_INT(sb_store_origin(s, 1, &origin), 0);
    CHECK(origin == 4300);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
}

/* ---- failed writes and syncs ---- */

static void test_failures(void)
{
    for (int mode = 0; mode < 2; mode++) {
        sb_fsync_mode_t fm = mode ? SB_FSYNC_BATCH : SB_FSYNC_ALWAYS;
        char *dir = tu_tmpdir();
        sb_store_opts_t o = {.dir = dir, .fsync = fm, .batch_window_us = 500};
        sb_store_t *s = NULL;
        CHECK_EQ_INT(sb_store_open(&o, &s), 0);
        if (!s) return;
        for (uint64_t q = 1; q <= 10; q++) CHECK_EQ_INT(tu_append_sync(s, q), 0);

        /* ENOSPC after part of a record was written: the callback fails, the
         * partial bytes are cut, later appends work once the disk recovers. */
        atomic_store(&partial_write, 1);
        atomic_store(&fail_write, ENOSPC);
        CHECK_EQ_INT(tu_append_sync(s, 11), UV_ENOSPC);
        CHECK_EQ_INT(tu_append_sync(s, 12), UV_ENOSPC);
        atomic_store(&fail_write, 0);
        CHECK_EQ_INT(tu_append_sync(s, 13), 0);
        /* EIO from fdatasync: the written records are cut again. */
        atomic_store(&fail_sync, EIO);
        tu_reset();
        for (uint64_t q = 14; q <= 20; q++) tu_append(s, q);
        tu_wait(7);
        int failed = 0;
        for (size_t i = 0; i < 7; i++) failed += tu_status[i] == UV_EIO;
        CHECK_EQ_INT(failed, 7);
        atomic_store(&fail_sync, 0);
        CHECK_EQ_INT(tu_append_sync(s, 21), 0);

        sb_store_info_t in;
        sb_store_info(s, &in);
        CHECK_EQ_INT(in.failed_writes, 9);
        CHECK_EQ_INT(in.appends, 12);
        CHECK_EQ_INT(in.records, 12);
        CHECK(!in.broken);
        /* Readers never saw the failed records. */
        tu_col_t c = {.check_time = true};
        CHECK_EQ_INT(sb_store_read(s, 10, 100, tu_collect_cb, &c), 2);
        CHECK(c.n == 2 && c.seqs[0] == 13 && c.seqs[1] == 21);
        tu_col_free(&c);
        sb_store_close(s);

        char seg[1024];
        tu_segment_path(dir, 0, seg, sizeof seg);
        off_t want = 32;
        for (uint64_t q = 1; q <= 10; q++) want += rec_size(q);
        want += rec_size(13) + rec_size(21);
        CHECK_EQ_INT(file_size(seg), want); /* nothing left to cut at recovery */
        CHECK_EQ_INT(sb_store_open(&o, &s), 0);
        if (!s) return;
        c = (tu_col_t){.check_time = true};
        sb_store_recover(s, tu_collect_cb, &c);
        CHECK_EQ_INT(c.n, 12);
        CHECK_EQ_INT(c.bad, 0);
        CHECK(c.n == 12 && c.seqs[9] == 10 && c.seqs[10] == 13 && c.seqs[11] == 21);
        tu_col_free(&c);

        /* A failure that cannot be undone (the cut fails too) breaks the store:
         * appends fail at once, readers go on, and a reopen repairs it. */
        atomic_store(&partial_write, 1);
        atomic_store(&fail_write, EIO);
        atomic_store(&fail_trunc, EIO);
        CHECK_EQ_INT(tu_append_sync(s, 30), UV_EIO);
        atomic_store(&fail_write, 0);
        atomic_store(&fail_trunc, 0);
        CHECK_EQ_INT(tu_append(s, 31), UV_EIO);
        sb_store_info(s, &in);
        CHECK(in.broken);
        c = (tu_col_t){.check_time = true};
        CHECK_EQ_INT(sb_store_recover(s, tu_collect_cb, &c), 12);
        tu_col_free(&c);
        sb_store_close(s);
        CHECK(file_size(seg) > want); /* the torn half record is still there */
        CHECK_EQ_INT(sb_store_open(&o, &s), 0);
        if (!s) return;
        CHECK_EQ_INT(file_size(seg), want);
        CHECK_EQ_INT(tu_append_sync(s, 32), 0);
        c = (tu_col_t){.check_time = true};
        CHECK_EQ_INT(sb_store_recover(s, tu_collect_cb, &c), 13);
        CHECK_EQ_INT(c.bad, 0);
        tu_col_free(&c);
        sb_store_close(s);
        tu_rmrf(dir);
        free(dir);
    }
}

/* A real kernel failure: RLIMIT_FSIZE makes write(2) stop at the limit with
 * EFBIG (SIGXFSZ ignored), the same path as a full disk. */
static void test_fsize_limit(void)
{
    sb_store_set_io_for_test(NULL);
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (!s) return;
    for (uint64_t q = 1; q <= 10; q++) CHECK_EQ_INT(tu_append_sync(s, q), 0);
    char seg[1024];
    tu_segment_path(dir, 0, seg, sizeof seg);
    off_t size0 = file_size(seg);

    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {(rlim_t)size0 + 1000, old.rlim_max};
    CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int ok = 0, efbig = 0, other = 0;
    uint64_t good[64];
    for (uint64_t q = 11; q <= 40; q++) {
        int rc = tu_append_sync(s, q);
        if (rc == 0) good[ok++] = q;
        else if (rc == UV_EFBIG) efbig++;
        else other++;
    }
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, oldsig);
    CHECK(ok > 0 && efbig > 0);
    CHECK_EQ_INT(other, 0);
    CHECK(file_size(seg) <= size0 + 1000);
    for (uint64_t q = 41; q <= 45; q++) CHECK_EQ_INT(tu_append_sync(s, q), 0);
    sb_store_close(s);

    s = tu_open(dir, SB_FSYNC_ALWAYS, 0);
    if (!s) return;
    tu_col_t c = {.check_time = true};
    sb_store_recover(s, tu_collect_cb, &c);
    CHECK_EQ_INT(c.n, 10 + ok + 5);
    CHECK_EQ_INT(c.bad, 0);
    bool same = c.n == (size_t)(15 + ok);
    for (int i = 0; same && i < ok; i++) same = c.seqs[10 + i] == good[i];
    CHECK(same);
    tu_col_free(&c);
    sb_store_close(s);
    tu_rmrf(dir);
    free(dir);
    sb_store_set_io_for_test(&hooks);
}

/* ---- preallocation: zeros ahead of the records, kept, trimmed, and given up ---- */

static sb_store_t *tu_open_prealloc(const char *dir, uint32_t prealloc, uint64_t seg_bytes)
{
    sb_store_opts_t o = {.dir = dir, .fsync = SB_FSYNC_ALWAYS, .segment_bytes = seg_bytes,
                         .prealloc_bytes = prealloc};
    sb_store_t *s = NULL;
    int rc = sb_store_open(&o, &s);
    if (rc < 0) fprintf(stderr, "sb_store_open(%s) = %d\n", dir, rc);
    return s;
}

/* Runs count_and_check with stderr captured; *logged says whether anything
 * was logged at warn or above. */
static int check_quietly(const char *dir, uint64_t last, bool *logged)
{
    char *log = NULL;
    int rc = check_captured(dir, last, NULL, &log);
    *logged = log && (strstr(log, "level=warn") || strstr(log, "level=error"));
    free(log);
    return rc;
}

static void test_prealloc(void)
{
    const uint32_t pre = 16384;
    const uint64_t seg_bytes = 65536;
    char *dir = tu_tmpdir();
    sb_store_t *s = tu_open_prealloc(dir, pre, seg_bytes);
    if (!s) return;
    CHECK_EQ_INT(tu_append_sync(s, 1), 0);
    char seg[1024];
    CHECK(tu_segment_path(dir, 0, seg, sizeof seg));
    uint64_t data = 32 + (uint64_t)rec_size(1);
    /* The first append grew the file past its record, to a block boundary. */
    off_t sz = file_size(seg);
    CHECK(sz >= (off_t)(data + pre) && sz % 4096 == 0);
    sb_store_info_t in;
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.bytes, sz); /* disk use counts the preallocated space */
    /* Appends fill it without growing it. */
    uint64_t q = 2;
    for (; data + (uint64_t)rec_size(q) <= (uint64_t)sz - 1024; q++) {
        CHECK_EQ_INT(tu_append_sync(s, q), 0);
        data += (uint64_t)rec_size(q);
    }
    CHECK_EQ_INT(file_size(seg), sz);
    sb_store_close(s);

    /* Reopening sees a clean end (nothing logged), keeps the space, and
     * appends right after the last record. */
    bool logged = true;
    CHECK_EQ_INT(check_quietly(dir, q - 1, &logged), 0);
    CHECK(!logged);
    CHECK_EQ_INT(file_size(seg), sz);

    /* A record torn inside the preallocated space is cut, and logged. */
    size_t plen;
    uint8_t *img = tu_read_file(seg, &plen);
    CHECK(img && plen == (size_t)sz);
    if (img) {
        size_t rs = (size_t)rec_size(1);
        memcpy(img + data, img + 32, rs / 2); /* half a record's bytes */
        tu_write_file(seg, img, plen);
        free(img);
    }
    CHECK_EQ_INT(check_quietly(dir, q - 1, &logged), 0);
    CHECK(logged);
    CHECK_EQ_INT(file_size(seg), data);

    /* Appending until the segment rolls: the full one is trimmed to its last
     * record, and the new one is preallocated. */
    s = tu_open_prealloc(dir, pre, seg_bytes);
    if (!s) return;
    uint64_t first_q = q;
    char seg2[1024] = "";
    for (; q < first_q + 1000 && !tu_segment_path(dir, 1, seg2, sizeof seg2); q++) {
        CHECK_EQ_INT(tu_append_sync(s, q), 0);
        if (!tu_segment_path(dir, 1, seg2, sizeof seg2)) data += (uint64_t)rec_size(q);
    }
    CHECK(seg2[0] != 0);
    CHECK_EQ_INT(file_size(seg), data);
    CHECK(file_size(seg2) > (off_t)pre);
    sb_store_info(s, &in);
    CHECK_EQ_INT(in.bytes, file_size(seg) + file_size(seg2));
    sb_store_close(s);
    CHECK_EQ_INT(count_and_check(dir, q - 1, NULL), 0);

    /* A file that may not grow past its preallocated end plus a little still
     * takes records up to that limit: the zeros are given up, not the records. */
    sb_store_set_io_for_test(NULL);
    s = tu_open_prealloc(dir, pre, seg_bytes);
    if (!s) return;
    off_t limit = file_size(seg2) + 1000;
    struct rlimit old;
    getrlimit(RLIMIT_FSIZE, &old);
    void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
    struct rlimit lim = {(rlim_t)limit, old.rlim_max};
    CHECK_EQ_INT(setrlimit(RLIMIT_FSIZE, &lim), 0);
    int ok = 0, efbig = 0, other = 0;
    uint64_t acked_last = q - 1;
    for (int i = 0; i < 400 && !efbig; i++, q++) {
        int rc = tu_append_sync(s, q);
        if (rc == 0) ok++, acked_last = q;
        else if (rc == UV_EFBIG) efbig++;
        else other++;
    }
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, oldsig);
    sb_store_set_io_for_test(&hooks);
    CHECK(efbig == 1 && other == 0);
    CHECK(file_size(seg2) <= limit);
    CHECK(file_size(seg2) > limit - 1000 - (off_t)pre); /* records went past the zeros' end */
    sb_store_close(s);
    CHECK_EQ_INT(count_and_check(dir, acked_last, NULL), 0);
    tu_rmrf(dir);
    free(dir);
}

int main(void)
{
    sb_log_level = SB_LOG_WARN; /* every open logs at info */
    sb_store_set_io_for_test(&hooks);
    test_codec();
    test_roundtrip();
    test_torn_tail();
    test_older_segments();
    test_index();
    test_retention();
    test_modes();
    test_close_drains();
    test_reservation();
    test_batch_quiet();
    test_deferred_kick();
    test_reserve_async_and_origin();
    test_failures();
    test_fsize_limit();
    test_prealloc();
    sb_store_set_io_for_test(NULL);
    return tl_done("storage");
}
