/*
 * common.h: what the test programs in this folder share.
 *
 * Each program is still one .c file, compiled on its own by
 * tests/common/mod.rs (`cc -O1 -g -pthread -Wall -Wextra -o x x.c -ldl`),
 * and includes this header with `#include "common.h"` after its system
 * headers. A program may define MAX_PRINTED (how many failed checks are
 * printed; default 40) before the include. Everything here is static, and
 * the functions static inline, so a program that uses only some of it
 * compiles without warnings.
 */
#ifndef TESTS_C_COMMON_H
#define TESTS_C_COMMON_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#ifndef MAX_PRINTED
#define MAX_PRINTED 40
#endif

/* ------------------------------------------------------------ checks */

static atomic_int failures;

/*
 * CHECK(cond, fmt, ...): counts a failure when cond is false and prints
 * "FAIL <line>: <message>" on stderr for the first MAX_PRINTED of them.
 * Safe from any thread and in a child between fork() and exit: the line is
 * formatted on the stack (cut at 510 bytes) and written with one write(2),
 * without stdio's locks.
 */
#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            if (atomic_fetch_add(&failures, 1) < MAX_PRINTED) {               \
                char msg_[512];                                               \
                int len_ = snprintf(msg_, sizeof msg_, "FAIL %d: ", __LINE__); \
                len_ += snprintf(msg_ + len_, sizeof msg_ - (size_t)len_,     \
                                 __VA_ARGS__);                                \
                if (len_ > (int)sizeof msg_ - 2)                              \
                    len_ = (int)sizeof msg_ - 2;                              \
                msg_[len_++] = '\n';                                          \
                (void)!write(2, msg_, (size_t)len_);                          \
            }                                                                 \
        }                                                                     \
    } while (0)

/*
 * The end of main. With failures: says on stderr how many were not
 * printed, prints "<name>: <n> check(s) FAILED" on stdout (name formatted
 * from fmt) and returns n; without: returns 0, and the caller prints its
 * "all checks passed" line.
 */
__attribute__((format(printf, 1, 2))) static inline int checks_failed(const char *fmt, ...)
{
    int f = atomic_load(&failures);
    if (!f)
        return 0;
    if (f > MAX_PRINTED)
        fprintf(stderr, "(%d more failures not printed)\n", f - MAX_PRINTED);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf(": %d check(s) FAILED\n", f);
    return f;
}

/* -------------------------------------------- values the compiler can't see */

/*
 * Sizes and pointers pass through hide()/hidep() so the compiler can
 * neither fold a call whose result it thinks it knows (malloc(SIZE_MAX),
 * calloc's zeroes) nor delete an unused malloc/free pair.
 */
static inline size_t hide(size_t x)
{
    __asm__ volatile("" : "+r"(x));
    return x;
}

static inline void *hidep(void *p)
{
    __asm__ volatile("" : "+r"(p) : : "memory");
    return p;
}

/* Index of the first byte of [p, p+n) that is not 0, or n. */
static inline size_t first_nonzero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return i;
    return n;
}

/* ------------------------------------------------------------ random */

/* xorshift64*: small, fast, and the same sequence on every run (state != 0). */
static inline uint64_t xorshift64star(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#endif
