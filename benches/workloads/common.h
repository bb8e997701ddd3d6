/*
 * common.h: helpers the workloads in this folder share.
 *
 * Each workload is still one .c file, compiled on its own
 * (`cc -O2 -pthread -o larson larson.c`, as benches/compare.py does); it
 * defines WORKLOAD, its name for messages, and then includes this header:
 *
 *     #define WORKLOAD "larson"
 *     #include "common.h"
 *
 * Everything here is static inline, so a workload that uses only some of
 * it compiles without warnings. Messages go to stderr as
 * "<WORKLOAD>: ..."; nothing here writes to stdout, where the workloads
 * print their checksums.
 */
#ifndef WORKLOADS_COMMON_H
#define WORKLOADS_COMMON_H

#ifndef WORKLOAD
#error "define WORKLOAD (the workload's name, a string) before including common.h"
#endif

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* splitmix64: one state per thread (or per array), so runs repeat exactly. */
static inline uint64_t rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * The command line every workload takes: argv[1] is the scale (> 0,
 * default 1.0), the return value. With count_name, argv[2] is a count
 * (threads, pairs, ...) from 1 to count_max, or with no upper bound when
 * count_max is 0, default count_default, stored in *count; without it,
 * argv[2] is ignored. Anything else prints the usage line and exits 64.
 */
static inline double parse_args(int argc, char **argv, const char *count_name,
                                int count_default, int count_max, int *count)
{
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    int n = count_name && argc > 2 ? atoi(argv[2]) : count_default;
    if (scale <= 0 || (count_name && (n < 1 || (count_max > 0 && n > count_max)))) {
        if (!count_name)
            fprintf(stderr, "usage: %s [scale>0]\n", argv[0]);
        else if (count_max > 0)
            fprintf(stderr, "usage: %s [scale>0] [%s=1..%d]\n", argv[0], count_name, count_max);
        else
            fprintf(stderr, "usage: %s [scale>0] [%s>=1]\n", argv[0], count_name);
        exit(64);
    }
    if (count)
        *count = n;
    return scale;
}

/*
 * Returns p; when p is NULL (the malloc or realloc named by `what`
 * failed) prints "<WORKLOAD>: <what>: <errno's text>", as perror does,
 * and exits 2.
 */
static inline void *checked(void *p, const char *what)
{
    if (!p) {
        int e = errno;
        fprintf(stderr, "%s: %s: %s\n", WORKLOAD, what, strerror(e));
        exit(2);
    }
    return p;
}

/* pthread_create, or "<WORKLOAD>: pthread_create: <error>" and exit 2. */
static inline void start_thread(pthread_t *tid, void *(*fn)(void *), void *arg)
{
    int rc = pthread_create(tid, NULL, fn, arg);
    if (rc) {
        fprintf(stderr, "%s: pthread_create: %s\n", WORKLOAD, strerror(rc));
        exit(2);
    }
}

/*
 * Starts fn on n threads (their ids go to tids[0..n)) and waits for all of
 * them. Thread i gets (char *)args + i * stride, or, when args is NULL,
 * the number i itself: (void *)(intptr_t)i.
 */
static inline void run_threads(pthread_t *tids, int n, void *(*fn)(void *), void *args,
                               size_t stride)
{
    for (int i = 0; i < n; i++)
        start_thread(&tids[i], fn,
                     args ? (char *)args + (size_t)i * stride : (void *)(intptr_t)i);
    for (int i = 0; i < n; i++)
        pthread_join(tids[i], NULL);
}

/* Folds one thread's (or pair's, or array's) checksum into the total. */
static inline uint64_t combine(uint64_t checksum, uint64_t part)
{
    return checksum * 1000003 + part;
}

/*
 * Reports a corrupted object, "<WORKLOAD>: object <p> (size <size>)
 * corrupted[: <what>]", and aborts.
 */
__attribute__((noreturn)) static inline void corrupted(const void *p, size_t size,
                                                       const char *what)
{
    fprintf(stderr, "%s: object %p (size %zu) corrupted%s%s\n", WORKLOAD, p, size,
            what ? ": " : "", what ? what : "");
    abort();
}

/*
 * The stamp objects are checked by: the tag in the first 8 bytes and, in
 * objects of 16 bytes or more, tag ^ size in the last 8 (so an object that
 * overlaps another, or lost its end in a realloc, shows).
 */
static inline void stamp_tail(unsigned char *p, size_t size, uint64_t tag)
{
    if (size >= 16) {
        uint64_t tail = tag ^ size;
        memcpy(p + size - 8, &tail, 8);
    }
}

static inline void stamp(unsigned char *p, size_t size, uint64_t tag)
{
    memcpy(p, &tag, 8);
    stamp_tail(p, size, tag);
}

/* Aborts through corrupted() unless p holds stamp(p, size, tag). */
static inline void check_stamp(const unsigned char *p, size_t size, uint64_t tag)
{
    uint64_t head;
    memcpy(&head, p, 8);
    if (head != tag)
        corrupted(p, size, "head");
    if (size >= 16) {
        uint64_t tail;
        memcpy(&tail, p + size - 8, 8);
        if (tail != (tag ^ size))
            corrupted(p, size, "tail");
    }
}

#endif
