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

#define SLOTS 2000
#define ROUNDS 10
#define MIN_SIZE 8
#define MAX_SIZE 1024

static uint64_t rng_next(uint64_t *state) /* splitmix64 */
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

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

/* Writes the tag at both ends of the object, so overlapping objects show. */
static void stamp(unsigned char *p, size_t size, uint64_t tag)
{
    uint64_t tail = tag ^ size;
    memcpy(p, &tag, 8);
    if (size >= 16)
        memcpy(p + size - 8, &tail, 8);
}

static uint64_t check_and_free(struct slot *s)
{
    uint64_t head, tail = s->tag ^ s->size;
    memcpy(&head, s->ptr, 8);
    if (s->size >= 16)
        memcpy(&tail, s->ptr + s->size - 8, 8);
    if (head != s->tag || tail != (s->tag ^ s->size)) {
        fprintf(stderr, "larson: object %p (size %zu) corrupted\n", (void *)s->ptr, s->size);
        abort();
    }
    free(s->ptr);
    s->ptr = NULL;
    return head * 31 + s->size;
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
            s->ptr = malloc(size);
            if (!s->ptr) {
                perror("larson: malloc");
                exit(2);
            }
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
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    nthreads = argc > 2 ? atoi(argv[2]) : 2;
    if (scale <= 0 || nthreads < 1) {
        fprintf(stderr, "usage: %s [scale>0] [threads>=1]\n", argv[0]);
        return 64;
    }
    ops_per_round = (long)(1500000 * scale);

    arrays = calloc((size_t)nthreads, sizeof *arrays);
    if (!arrays)
        return 2;
    for (int t = 0; t < nthreads; t++)
        arrays[t].rng = 0x1234567ULL * (uint64_t)(t + 1);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads);

    pthread_t *tids = malloc(sizeof *tids * (size_t)nthreads);
    for (int t = 0; t < nthreads; t++)
        if (pthread_create(&tids[t], NULL, worker, (void *)(intptr_t)t)) {
            perror("larson: pthread_create");
            return 2;
        }
    for (int t = 0; t < nthreads; t++)
        pthread_join(tids[t], NULL);

    uint64_t checksum = 0;
    for (int t = 0; t < nthreads; t++) {
        for (int i = 0; i < SLOTS; i++)
            if (arrays[t].slots[i].ptr)
                arrays[t].checksum += check_and_free(&arrays[t].slots[i]);
        checksum = checksum * 1000003 + arrays[t].checksum;
    }
    printf("larson threads=%d ops=%ld checksum=%016llx\n", nthreads,
           ops_per_round * ROUNDS * nthreads, (unsigned long long)checksum);
    free(tids);
    free(arrays);
    return 0;
}
