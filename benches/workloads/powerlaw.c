/*
 * powerlaw: many live objects of medium sizes on a power law, replaced at
 * random, some grown by realloc.
 *
 * Each thread keeps 20 000 live slots. Every step frees a random slot and
 * allocates a new block in it: sizes from 8 B to 64 KiB on a power law of
 * exponent -1 (as many blocks in every octave, 8..16 B as often as
 * 32..64 KiB), and one block in 1000 from 128 KiB to 1.1 MiB. One new
 * block in 64 is then grown by realloc six times by x1.5 (a 64 KiB block
 * ends near 730 KiB). Each block is filled with a byte derived from its
 * slot's tag, stamped at both ends, and checked (stamps and one byte per
 * 64) before every realloc and free. So the live heap of a thread is
 * about 190 MB in blocks of every size, churned at random: what a cache,
 * an interpreter or a database buffer pool does, and what makes an
 * allocator that gives medium pages back eagerly fault them in again.
 *
 * Every thread does the same work, so N threads do N times the work of one.
 * Deterministic: threads are independent, each with its own random state.
 *
 * usage: powerlaw [scale=1.0] [threads=2]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "powerlaw"
#include "common.h"

#define SLOTS 20000
#define MIN_OCTAVE 3  /* 8 B */
#define OCTAVES 13    /* up to 64 KiB */
#define BIG_MIN ((size_t)128 << 10)
#define BIG_MAX ((size_t)1126 << 10) /* 1.1 MiB */
#define BIG_ONE_IN 1000
#define GROW_ONE_IN 64
#define GROW_TIMES 6
#define SAMPLE 64
#define MAX_THREADS 1024

struct slot {
    unsigned char *ptr;
    size_t size;
    uint64_t tag;
};

struct thread {
    uint64_t rng;
    uint64_t checksum;
    struct slot *slots;
};

static long steps;

static unsigned char fill_byte(uint64_t tag)
{
    return (unsigned char)(tag >> 56 | 1);
}

/* Fills [from, size) with the slot's byte and stamps both ends. */
static void fill(struct slot *s, size_t from)
{
    if (from < s->size)
        memset(s->ptr + from, fill_byte(s->tag), s->size - from);
    stamp(s->ptr, s->size, s->tag);
}

/* Checks the stamps of a block of `size` bytes and one byte per SAMPLE
 * between them; returns a sum of what it read. */
static uint64_t verify(const struct slot *s, size_t size)
{
    check_stamp(s->ptr, size, s->tag);
    unsigned char b = fill_byte(s->tag);
    uint64_t sum = 0;
    for (size_t i = 8; i + 8 < size; i += SAMPLE) {
        if (s->ptr[i] != b)
            corrupted(s->ptr, size, "fill byte");
        sum += s->ptr[i];
    }
    return sum;
}

static size_t draw_size(uint64_t *rng)
{
    uint64_t r = rng_next(rng);
    if (r % BIG_ONE_IN == 0)
        return BIG_MIN + (size_t)((r >> 20) % (BIG_MAX - BIG_MIN + 1));
    unsigned octave = MIN_OCTAVE + (unsigned)((r >> 10) % OCTAVES);
    size_t lo = (size_t)1 << octave;
    return lo + (size_t)((r >> 24) % lo);
}

static void place(struct thread *t, struct slot *s)
{
    s->tag = rng_next(&t->rng);
    s->size = draw_size(&t->rng);
    s->ptr = checked(malloc(s->size), "malloc");
    fill(s, 0);
    t->checksum = combine(t->checksum, s->size);
    if (rng_next(&t->rng) % GROW_ONE_IN == 0) {
        for (int g = 0; g < GROW_TIMES; g++) {
            size_t old = s->size;
            s->size = old + old / 2;
            s->ptr = checked(realloc(s->ptr, s->size), "realloc");
            verify(s, old); /* what realloc kept: the old block, stamps included */
            fill(s, old - 8);
        }
        t->checksum = combine(t->checksum, s->size);
    }
}

static void release(struct thread *t, struct slot *s)
{
    t->checksum += verify(s, s->size);
    free(s->ptr);
    s->ptr = NULL;
}

static void *run(void *arg)
{
    struct thread *t = arg;
    t->slots = checked(calloc(SLOTS, sizeof(struct slot)), "calloc");
    for (int i = 0; i < SLOTS; i++)
        place(t, &t->slots[i]);
    for (long n = 0; n < steps; n++) {
        struct slot *s = &t->slots[rng_next(&t->rng) % SLOTS];
        release(t, s);
        place(t, s);
    }
    for (int i = 0; i < SLOTS; i++)
        release(t, &t->slots[i]);
    free(t->slots);
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads;
    double scale = parse_args(argc, argv, "threads", 2, MAX_THREADS, &nthreads);
    steps = (long)(100000 * scale);
    struct thread *threads = checked(calloc((size_t)nthreads, sizeof *threads), "calloc");
    pthread_t *tids = checked(calloc((size_t)nthreads, sizeof *tids), "calloc");
    for (int i = 0; i < nthreads; i++)
        threads[i].rng = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
    run_threads(tids, nthreads, run, threads, sizeof *threads);
    uint64_t checksum = 0;
    for (int i = 0; i < nthreads; i++)
        checksum = combine(checksum, threads[i].checksum);
    printf("powerlaw threads=%d steps=%ld checksum=%016llx\n", nthreads, steps,
           (unsigned long long)checksum);
    free(threads);
    free(tids);
    return 0;
}
