/* Minimal unit-test support: CHECK macros that count, and a guard page so a
 * parser reading one byte past its input crashes under test. */
#ifndef SB_TESTLIB_H
#define SB_TESTLIB_H
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern int tl_checks, tl_failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        tl_checks++;                                                                 \
        if (!(cond)) {                                                               \
            tl_failures++;                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
        }                                                                            \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                           \
    do {                                                                             \
        long long a_ = (long long)(a), b_ = (long long)(b);                          \
        tl_checks++;                                                                 \
        if (a_ != b_) {                                                              \
            tl_failures++;                                                           \
            fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__,    \
                    __LINE__, #a, a_, #b, b_);                                       \
        }                                                                            \
    } while (0)
#define CHECK_EQ_STR(a, alen, lit)                                                   \
    do {                                                                             \
        tl_checks++;                                                                 \
        if ((size_t)(alen) != strlen(lit) || memcmp((a), (lit), strlen(lit)) != 0) { \
            tl_failures++;                                                           \
            fprintf(stderr, "%s:%d: got \"%.*s\", expected \"%s\"\n", __FILE__,      \
                    __LINE__, (int)(alen), (const char *)(a), (lit));                \
        }                                                                            \
    } while (0)

/* Copies len bytes so that the last byte sits just before an unreadable page.
 * Returns the pointer to the copy; release with tl_guard_free(). */
char *tl_guarded(const void *p, size_t len);
void tl_guard_free(char *p);

/* Prints the summary line and returns the process exit code. */
int tl_done(const char *suite);

#endif
