/*
 * mixed: sizes from 8 B to 2 MiB, and realloc growth.
 *
 * Each thread keeps a small table of live objects whose sizes are spread
 * evenly over the octaves from 8 B to 2 MiB (as many 8..16 B objects as
 * 1..2 MiB ones). Per step it grows an object by half with realloc (60 %),
 * shrinks one to half (10 %), or frees one and allocates a fresh one (30 %);
 * growth past 2 MiB starts the object over. Every page of every object is
 * written once, so the page faults an allocator causes (or saves by reusing
 * memory) show in the time, and realloc must keep what was written:
 * the first 8 bytes (a tag), the last 8 (tag ^ size) and one byte per 4 KiB
 * page, all checked before every realloc and free.
 *
 * Deterministic: threads are independent, each with its own random state.
 *
 * usage: mixed [scale=1.0] [threads=2]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "mixed"
#include "common.h"

#define SLOTS 48
#define MIN_SIZE 8
#define MAX_SIZE (2u << 20)
#define PAGE 4096
#define MAX_THREADS 256

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

/* Page byte k (k >= 1) lives at k * PAGE, if it stays clear of the tail. */
static int has_page_byte(size_t size, size_t k)
{
    return size >= 16 && k * PAGE + 1 <= size - 8;
}

/* Writes the page bytes at offsets >= from, and the tail. */
static void write_from(struct slot *s, size_t from)
{
    for (size_t k = from / PAGE + (from % PAGE != 0); has_page_byte(s->size, k); k++)
        if (k > 0)
            s->ptr[k * PAGE] = (unsigned char)(s->tag + k);
    stamp_tail(s->ptr, s->size, s->tag);
}

static uint64_t verify(const struct slot *s)
{
    check_stamp(s->ptr, s->size, s->tag);
    for (size_t k = 1; has_page_byte(s->size, k); k++)
        if (s->ptr[k * PAGE] != (unsigned char)(s->tag + k))
            corrupted(s->ptr, s->size, "page byte");
    return s->tag + s->size;
}

static void fresh(struct slot *s, uint64_t r)
{
    unsigned octave = 3 + (unsigned)((r >> 16) % 18); /* 2^3 .. 2^20 */
    s->size = ((size_t)1 << octave) + (size_t)((r >> 32) & (((uint64_t)1 << octave) - 1));
    s->ptr = checked(malloc(s->size), "malloc");
    s->tag = r;
    memcpy(s->ptr, &r, 8);
    write_from(s, 8);
}

static void resize(struct slot *s, size_t size)
{
    size_t old = s->size;
    s->ptr = checked(realloc(s->ptr, size), "realloc");
    s->size = size;
    if (size > old) /* growth: the old tail may now hold page bytes */
        write_from(s, old >= 16 ? old - 8 : 8);
    else
        write_from(s, size); /* shrink: only the tail moves */
}

static void *worker(void *arg)
{
    struct thread *t = arg;
    for (long i = 0; i < steps; i++) {
        uint64_t r = rng_next(&t->rng);
        struct slot *s = &t->slots[r % SLOTS];
        if (!s->ptr) {
            fresh(s, r);
            continue;
        }
        t->checksum = t->checksum * 31 + verify(s);
        unsigned action = (unsigned)((r >> 8) % 10);
        size_t grown = s->size + s->size / 2 + 8 + (size_t)(r >> 58);
        if (action < 6 && grown <= MAX_SIZE) {
            resize(s, grown);
        } else if (action == 6) {
            resize(s, s->size / 2 > MIN_SIZE ? s->size / 2 : MIN_SIZE);
        } else {
            free(s->ptr);
            fresh(s, r);
        }
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
    double scale = parse_args(argc, argv, "threads", 2, MAX_THREADS, &nthreads);
    steps = (long)(60000 * scale);

    struct thread *threads = calloc((size_t)nthreads, sizeof *threads);
    pthread_t tids[MAX_THREADS];
    if (!threads)
        return 2;
    for (int i = 0; i < nthreads; i++)
        threads[i].rng = 0xabcdefULL * (uint64_t)(i + 1);
    run_threads(tids, nthreads, worker, threads, sizeof threads[0]);
    uint64_t checksum = 0;
    for (int i = 0; i < nthreads; i++)
        checksum = combine(checksum, threads[i].checksum);
    printf("mixed threads=%d steps=%ld checksum=%016llx\n", nthreads, steps * nthreads,
           (unsigned long long)checksum);
    free(threads);
    return 0;
}
