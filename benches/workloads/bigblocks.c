/*
 * bigblocks: repeated malloc, touch and free of 5-25 MiB blocks.
 *
 * Each thread keeps two live blocks. Per step it checks one (its stamp and
 * one byte per 4 KiB page), frees it, and allocates a new one of a random
 * size between 5 and 25 MiB, writing one byte in each of its pages. The
 * bytes written are few, so the time is the allocator's: system calls and
 * the page faults of memory it maps afresh, against memory it reuses
 * resident. glibc raises its mmap threshold when the first such block is
 * freed and serves the rest from its heap; an allocator that maps and
 * unmaps every block pays thousands of faults per step.
 *
 * Deterministic: threads are independent, each with its own random state.
 *
 * usage: bigblocks [scale=1.0] [threads=1]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "bigblocks"
#include "common.h"

#define SLOTS 2
#define MIN_SIZE ((size_t)5 << 20)
#define SPREAD ((size_t)20 << 20)
#define PAGE 4096
#define MAX_THREADS 64

struct slot {
    unsigned char *ptr;
    size_t size;
    uint64_t tag;
};

struct thread {
    uint64_t rng;
    uint64_t checksum;
    struct slot slots[SLOTS];
};

static long steps;

static void fill(struct slot *s)
{
    for (size_t k = 1; (k + 1) * PAGE <= s->size; k++)
        s->ptr[k * PAGE] = (unsigned char)(s->tag + k);
    stamp(s->ptr, s->size, s->tag);
}

static uint64_t verify(const struct slot *s)
{
    check_stamp(s->ptr, s->size, s->tag);
    uint64_t sum = 0;
    for (size_t k = 1; (k + 1) * PAGE <= s->size; k++) {
        if (s->ptr[k * PAGE] != (unsigned char)(s->tag + k))
            corrupted(s->ptr, s->size, "page byte");
        sum += s->ptr[k * PAGE];
    }
    return sum + s->size;
}

static void *worker(void *arg)
{
    struct thread *t = arg;
    for (long i = 0; i < steps; i++) {
        uint64_t r = rng_next(&t->rng);
        struct slot *s = &t->slots[r % SLOTS];
        if (s->ptr) {
            t->checksum = t->checksum * 31 + verify(s);
            free(s->ptr);
        }
        s->size = MIN_SIZE + (size_t)((r >> 16) % SPREAD);
        s->ptr = checked(malloc(s->size), "malloc");
        s->tag = r;
        fill(s);
    }
    for (int i = 0; i < SLOTS; i++)
        if (t->slots[i].ptr) {
            t->checksum = t->checksum * 31 + verify(&t->slots[i]);
            free(t->slots[i].ptr);
        }
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads;
    double scale = parse_args(argc, argv, "threads", 1, MAX_THREADS, &nthreads);
    steps = (long)(2000 * scale);
    if (steps < 1)
        steps = 1;

    struct thread *threads = calloc((size_t)nthreads, sizeof *threads);
    pthread_t tids[MAX_THREADS];
    if (!threads)
        return 2;
    for (int i = 0; i < nthreads; i++)
        threads[i].rng = 0xb16b10c5ULL * (uint64_t)(i + 1);
    run_threads(tids, nthreads, worker, threads, sizeof threads[0]);
    uint64_t checksum = 0;
    for (int i = 0; i < nthreads; i++)
        checksum = combine(checksum, threads[i].checksum);
    printf("bigblocks threads=%d steps=%ld checksum=%016llx\n", nthreads, steps * nthreads,
           (unsigned long long)checksum);
    free(threads);
    return 0;
}
