/*
 * larson: a server-style workload after Larson & Krishnan's benchmark.
 *
 * Each of T threads owns a "slot array" of objects (8..1024 bytes). In every
 * round a thread picks random slots, frees the object there and puts a new
 * one in its place. Between rounds the arrays rotate one thread along, so
 * most frees hit objects that another thread allocated (a server's request
 * buffers freed by whichever worker finishes the request). Main frees what
 * is left at the end.
 *
 * Deterministic: every array carries its own random state and checksum, and
 * a barrier separates rounds, so the output does not depend on scheduling.
 *
 * usage: larson [scale=1.0] [threads=2]     stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "larson"
#include "common.h"

#define SLOTS 2000
#define ROUNDS 10
#define MIN_SIZE 8
#define MAX_SIZE 1024

struct slot {
    unsigned char *ptr;
    size_t size;
    uint64_t tag;
};

struct array {
    struct slot slots[SLOTS];
    uint64_t rng;
    uint64_t checksum;
};

static struct array *arrays;
static int nthreads;
static long ops_per_round;
static pthread_barrier_t barrier;

static uint64_t check_and_free(struct slot *s)
{
    check_stamp(s->ptr, s->size, s->tag);
    free(s->ptr);
    s->ptr = NULL;
    return s->tag * 31 + s->size;
}

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int round = 0; round < ROUNDS; round++) {
        struct array *a = &arrays[(id + round) % nthreads];
        for (long i = 0; i < ops_per_round; i++) {
            uint64_t r = rng_next(&a->rng);
            struct slot *s = &a->slots[r % SLOTS];
            if (s->ptr)
                a->checksum += check_and_free(s);
            size_t size = MIN_SIZE + (r >> 32) % (MAX_SIZE - MIN_SIZE + 1);
            s->ptr = checked(malloc(size), "malloc");
            s->size = size;
            s->tag = r;
            stamp(s->ptr, size, r);
        }
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = parse_args(argc, argv, "threads", 2, 0, &nthreads);
    ops_per_round = (long)(1500000 * scale);

    arrays = calloc((size_t)nthreads, sizeof *arrays);
    if (!arrays)
        return 2;
    for (int t = 0; t < nthreads; t++)
        arrays[t].rng = 0x1234567ULL * (uint64_t)(t + 1);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);

    pthread_t *tids = malloc(sizeof *tids * (size_t)nthreads);
    run_threads(tids, nthreads, worker, NULL, 0);

    uint64_t checksum = 0;
    for (int t = 0; t < nthreads; t++) {
        for (int i = 0; i < SLOTS; i++)
            if (arrays[t].slots[i].ptr)
                arrays[t].checksum += check_and_free(&arrays[t].slots[i]);
        checksum = combine(checksum, arrays[t].checksum);
    }
    printf("larson threads=%d ops=%ld checksum=%016llx\n", nthreads,
           ops_per_round * ROUNDS * nthreads, (unsigned long long)checksum);
    free(tids);
    free(arrays);
    return 0;
}
