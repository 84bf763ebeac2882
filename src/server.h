/* The server's composition: which layers exist and how they are wired. Used
 * by main and by tests that run a server in-process. */
#ifndef SB_SERVER_H
#define SB_SERVER_H

/* Initializes every layer (routes, formats, storage recovery) before the loops
 * exist. Returns 0 or -1 after logging why. */
int sb_server_init(void);
/* Starts per-loop state of the layers once the loops exist (before they run). */
int sb_server_start(void);
/* Stops layers after the loops stopped (flushes storage). */
void sb_server_stop(void);
/* "memory" or "durable:<dir>" for the start log line. */
const char *sb_server_history_mode(void);

#endif
