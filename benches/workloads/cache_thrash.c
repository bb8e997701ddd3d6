/*
 * cache_thrash: allocator-induced false sharing (Hoard's cache-thrash and
 * cache-scratch).
 *
 * Main allocates one small object per thread, back to back, so they likely
 * share a cache line, and hands one to each thread. Each thread frees the
 * object it was given (passive: an allocator that hands a freed object to
 * the thread that freed it spreads one cache line over threads), then
 * repeatedly allocates its own small object, writes it hard and frees it
 * (active: an allocator that carves objects for different threads out of
 * one cache line makes the cores fight over that line). An allocator that
 * keeps each thread's objects apart runs this at the speed of one core.
 *
 * Deterministic: each thread's checksum only depends on what it wrote.
 *
 * usage: cache_thrash [scale=1.0] [threads=2]   stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "cache_thrash"
#include "common.h"

#define OBJECT_SIZE 8
#define REPETITIONS 500
#define MAX_THREADS 256

struct thread {
    unsigned char *given; /* allocated by main, freed by this thread */
    uint64_t checksum;
};

static long iterations;

static void *worker(void *arg)
{
    struct thread *t = arg;
    free(t->given);
    uint64_t sum = 0;
    for (long i = 0; i < iterations; i++) {
        volatile unsigned char *p = checked(malloc(OBJECT_SIZE), "malloc");
        for (int k = 0; k < OBJECT_SIZE; k++)
            p[k] = (unsigned char)(i + k);
        for (int j = 0; j < REPETITIONS; j++)
            for (int k = 0; k < OBJECT_SIZE; k++)
                p[k] = (unsigned char)(p[k] + 1);
        for (int k = 0; k < OBJECT_SIZE; k++)
            sum = sum * 31 + p[k];
        free((void *)p);
    }
    t->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads;
    double scale = parse_args(argc, argv, "threads", 2, MAX_THREADS, &nthreads);
    iterations = (long)(300000 * scale);

    struct thread threads[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        threads[i].given = malloc(OBJECT_SIZE);
        if (!threads[i].given)
            return 2;
        memset(threads[i].given, i, OBJECT_SIZE);
    }
    run_threads(tids, nthreads, worker, threads, sizeof threads[0]);
    uint64_t checksum = 0;
    for (int i = 0; i < nthreads; i++)
        checksum = combine(checksum, threads[i].checksum);
    printf("cache_thrash threads=%d objects=%ld checksum=%016llx\n", nthreads,
           iterations * nthreads, (unsigned long long)checksum);
    return 0;
}
