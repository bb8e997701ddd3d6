/*
 * reallocchain: many buffers growing by realloc side by side, as string
 * builders and vectors grow.
 *
 * Each thread keeps 256 growing buffers ("chains"). Every step picks one
 * at random and grows it by realloc, one of three ways fixed when the
 * chain starts: appends (+16..128 B per realloc, as a string built one
 * piece at a time), x1.5 (a vector) or x2 (a doubling buffer). A chain
 * stops at a target size drawn per chain on a power law (as many in every
 * octave): appends from 256 B to 64 KiB, the others from 1 KiB to 4 MiB.
 * Then half of the finished chains are shrunk to three quarters (shrink to
 * fit) and the chain is freed, and a new one starts from 16..256 B. Because
 * the chains grow interleaved, a block's neighbour is usually live, so
 * growing in place works only as far as the allocator leaves room; above
 * its mmap threshold an allocator can move pages with mremap instead of
 * copying.
 *
 * Contents: the first 8 bytes (a tag), the last 8 (tag ^ size) and one byte
 * per 256 carry a pattern, checked after every realloc (what was kept) and
 * before every free.
 *
 * Every thread does the same work. Deterministic: threads are independent.
 *
 * usage: reallocchain [scale=1.0] [threads=2]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "reallocchain"
#include "common.h"

#define CHAINS 256
#define SAMPLE 256
#define MAX_THREADS 1024

enum growth { APPEND, HALF, DOUBLE };

struct chain {
    unsigned char *ptr;
    size_t size;
    size_t target;
    uint64_t tag;
    enum growth how;
};

struct thread {
    uint64_t rng;
    uint64_t checksum;
    long reallocs;
    struct chain chains[CHAINS];
};

static long steps;

/* Pattern byte at offset i (a multiple of SAMPLE). */
static unsigned char pattern(uint64_t tag, size_t i)
{
    return (unsigned char)(tag + i / SAMPLE);
}

/* Writes the pattern bytes in [from, size - 8) and the stamps. */
static void write_from(struct chain *c, size_t from)
{
    for (size_t i = (from + SAMPLE - 1) / SAMPLE * SAMPLE; i + 8 < c->size; i += SAMPLE)
        if (i >= 8)
            c->ptr[i] = pattern(c->tag, i);
    stamp(c->ptr, c->size, c->tag);
}

/* Checks the first `size` bytes as written for a block of that size. */
static uint64_t verify(const struct chain *c, size_t size)
{
    check_stamp(c->ptr, size, c->tag);
    uint64_t sum = 0;
    for (size_t i = SAMPLE; i + 8 < size; i += SAMPLE) {
        if (c->ptr[i] != pattern(c->tag, i))
            corrupted(c->ptr, size, "pattern byte");
        sum += c->ptr[i];
    }
    return sum;
}

/* Power law: a uniform octave in [lo_octave, hi_octave), uniform inside it. */
static size_t draw(uint64_t *rng, unsigned lo_octave, unsigned hi_octave)
{
    uint64_t r = rng_next(rng);
    unsigned octave = lo_octave + (unsigned)(r % (hi_octave - lo_octave));
    size_t lo = (size_t)1 << octave;
    return lo + (size_t)((r >> 16) % lo);
}

static void start(struct thread *t, struct chain *c)
{
    c->tag = rng_next(&t->rng);
    c->how = (enum growth)(rng_next(&t->rng) % 3);
    c->target = c->how == APPEND ? draw(&t->rng, 8, 16) : draw(&t->rng, 10, 22);
    c->size = 16 + rng_next(&t->rng) % 241;
    c->ptr = checked(malloc(c->size), "malloc");
    write_from(c, 0);
}

static void resize(struct thread *t, struct chain *c, size_t size)
{
    size_t old = c->size;
    c->ptr = checked(realloc(c->ptr, size), "realloc");
    t->reallocs++;
    size_t kept = old < size ? old : size;
    if (kept == old) {
        verify(c, old);
    } else {
        /* Shrunk: the head and the pattern bytes that fit must be intact. */
        uint64_t head;
        memcpy(&head, c->ptr, 8);
        if (head != c->tag)
            corrupted(c->ptr, size, "head after shrink");
        for (size_t i = SAMPLE; i + 8 < kept; i += SAMPLE)
            if (c->ptr[i] != pattern(c->tag, i))
                corrupted(c->ptr, size, "pattern byte after shrink");
    }
    c->size = size;
    write_from(c, kept >= 8 ? kept - 8 : 0);
}

static void finish(struct thread *t, struct chain *c)
{
    if (rng_next(&t->rng) & 1)
        resize(t, c, c->size / 4 * 3);
    t->checksum = combine(t->checksum, verify(c, c->size) + c->size);
    free(c->ptr);
    c->ptr = NULL;
}

static void *run(void *arg)
{
    struct thread *t = arg;
    for (int i = 0; i < CHAINS; i++)
        start(t, &t->chains[i]);
    for (long n = 0; n < steps; n++) {
        struct chain *c = &t->chains[rng_next(&t->rng) % CHAINS];
        size_t next;
        switch (c->how) {
        case APPEND:
            next = c->size + 16 + rng_next(&t->rng) % 113;
            break;
        case HALF:
            next = c->size + c->size / 2;
            break;
        default:
            next = c->size * 2;
            break;
        }
        resize(t, c, next);
        if (c->size >= c->target) {
            finish(t, c);
            start(t, c);
        }
    }
    for (int i = 0; i < CHAINS; i++)
        finish(t, &t->chains[i]);
    return NULL;
}

int main(int argc, char **argv)
{
    int nthreads;
    double scale = parse_args(argc, argv, "threads", 2, MAX_THREADS, &nthreads);
    steps = (long)(250000 * scale);
    struct thread *threads = checked(calloc((size_t)nthreads, sizeof *threads), "calloc");
    pthread_t *tids = checked(calloc((size_t)nthreads, sizeof *tids), "calloc");
    for (int i = 0; i < nthreads; i++)
        threads[i].rng = 0x2545f4914f6cdd1dULL * (uint64_t)(i + 1);
    run_threads(tids, nthreads, run, threads, sizeof *threads);
    uint64_t checksum = 0;
    long reallocs = 0;
    for (int i = 0; i < nthreads; i++) {
        checksum = combine(checksum, threads[i].checksum);
        reallocs += threads[i].reallocs;
    }
    printf("reallocchain threads=%d steps=%ld reallocs=%ld checksum=%016llx\n", nthreads, steps,
           reallocs, (unsigned long long)checksum);
    free(threads);
    free(tids);
    return 0;
}
