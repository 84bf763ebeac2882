/* History: makes channel history survive the server (issue 7). It owns the
 * durable message log (src/storage) and wires it into the broker: every
 * publish is appended, a message enters history and reaches subscribers once
 * it is stored, and at start the log is read back into the broker's
 * per-channel rings, last messages and idempotency keys. Ids continue past
 * everything the data directory ever handed out. With no --data-dir (or
 * "none") history lives in memory only, as before. docs/storage.md explains
 * the design and the fsync modes. */
#ifndef SB_HISTORY_H
#define SB_HISTORY_H

#include "core/core.h"
#include "storage/storage.h"

/* Ids are reserved on disk in blocks of this many (one small atomic file
 * write per block, on the store thread, requested when half is used). */
#define SB_HISTORY_SEQ_BLOCK 1000000ull

/* Reads --data-dir, --fsync, --fsync-batch, --retain-bytes, --history-ttl and
 * --idempotency-window from sb_cfg. Memory mode: starts the broker's ids from
 * the clock. Durable mode: opens (and so repairs) the log, starts the broker's
 * ids past every id the directory ever issued, reserves the first block of
 * ids on disk and installs the broker's store hooks. Call once, before the
 * loops exist; blocks on disk. Returns 0, or -1 after logging why. */
int sb_history_init(void);

/* Durable mode: rebuilds every channel's history, last message and
 * idempotency keys from the log. Call after sb_net_init and before the loops
 * run (channels need the loops' count); blocks on disk. Returns 0, or -1
 * after logging why (a log that cannot be read back is not served). Memory
 * mode: returns 0. */
int sb_history_start(void);

/* After the loops have stopped: writes and syncs everything still queued and
 * closes the log. Pending publish acknowledgements are dropped (nobody is
 * left to receive them). Idempotent. */
void sb_history_stop(void);

/* "memory" or "durable:<dir>", for the start log line. Static storage. */
const char *sb_history_mode(void);

/* Fills *out with the log's counters and returns true in durable mode;
 * returns false in memory mode. Any thread; never blocks on disk. */
bool sb_history_info(sb_store_info_t *out);

#endif
