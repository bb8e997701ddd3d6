/*
 * prodcons: one thread allocates, another frees.
 *
 * Each producer/consumer pair shares a small ring of batches guarded by a
 * mutex. The producer mallocs objects of random size (16..1024 bytes),
 * stamps them and passes them on, 256 to a batch; the consumer checks and
 * frees them while the producer fills the next batches. Every free is a
 * remote free, and the producer's allocator cache never gets its objects
 * back locally: the pattern of message queues, loggers and pipelines.
 *
 * Deterministic: the ring is FIFO and each pair has its own random state.
 *
 * usage: prodcons [scale=1.0] [pairs=1]     stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "prodcons"
#include "common.h"

#define DEPTH 4    /* batches in the ring */
#define BATCH 256  /* objects per batch */
#define MIN_SIZE 16
#define MAX_SIZE 1024

/* The object's size follows from its random tag, so the consumer can find the tail. */
static uint32_t size_of(uint64_t r)
{
    return MIN_SIZE + (uint32_t)(r >> 40) % (MAX_SIZE - MIN_SIZE + 1);
}

struct batch {
    int count; /* 0: the producer is done */
    unsigned char *objects[BATCH];
};

/*
 * The ring holds batches, not single objects: handing over every object on
 * its own makes the run time depend mostly on how the scheduler happens to
 * place the two threads (bimodal on a busy two-core machine). Slots from
 * `tail` to `head` are full; the producer fills slot `head` and the consumer
 * empties slot `tail` outside the lock.
 */
struct pair {
    pthread_mutex_t lock;
    pthread_cond_t not_full, not_empty;
    unsigned long head, tail; /* under lock */
    struct batch ring[DEPTH];
    long count;
    uint64_t seed;
    uint64_t checksum;
};

static void *producer(void *arg)
{
    struct pair *p = arg;
    uint64_t rng = p->seed;
    long made = 0;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (p->head - p->tail == DEPTH)
            pthread_cond_wait(&p->not_full, &p->lock);
        struct batch *b = &p->ring[p->head % DEPTH];
        pthread_mutex_unlock(&p->lock);

        b->count = 0;
        while (b->count < BATCH && made < p->count) {
            uint64_t r = rng_next(&rng);
            uint32_t size = size_of(r);
            unsigned char *obj = checked(malloc(size), "malloc");
            stamp(obj, size, r);
            b->objects[b->count++] = obj;
            made++;
        }

        pthread_mutex_lock(&p->lock);
        p->head++;
        pthread_cond_signal(&p->not_empty);
        pthread_mutex_unlock(&p->lock);
        if (b->count == 0)
            return NULL;
    }
}

static void *consumer(void *arg)
{
    struct pair *p = arg;
    uint64_t sum = 0;
    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (p->head == p->tail)
            pthread_cond_wait(&p->not_empty, &p->lock);
        struct batch *b = &p->ring[p->tail % DEPTH];
        pthread_mutex_unlock(&p->lock);

        int count = b->count;
        for (int i = 0; i < count; i++) {
            unsigned char *obj = b->objects[i];
            uint64_t r;
            memcpy(&r, obj, 8);
            uint32_t size = size_of(r);
            check_stamp(obj, size, r);
            sum = sum * 31 + r + size;
            free(obj);
        }

        pthread_mutex_lock(&p->lock);
        p->tail++;
        pthread_cond_signal(&p->not_full);
        pthread_mutex_unlock(&p->lock);
        if (count == 0)
            break;
    }
    p->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int npairs;
    double scale = parse_args(argc, argv, "pairs", 1, 0, &npairs);
    long count = (long)(3000000 * scale);

    struct pair *pairs = malloc(sizeof *pairs * (size_t)npairs);
    pthread_t *tids = malloc(sizeof *tids * 2 * (size_t)npairs);
    if (!pairs || !tids)
        return 2;
    for (int i = 0; i < npairs; i++) {
        memset(&pairs[i], 0, sizeof pairs[i]);
        pthread_mutex_init(&pairs[i].lock, NULL);
        pthread_cond_init(&pairs[i].not_full, NULL);
        pthread_cond_init(&pairs[i].not_empty, NULL);
        pairs[i].count = count;
        pairs[i].seed = 0xc0ffeeULL * (uint64_t)(i + 1);
        start_thread(&tids[2 * i], consumer, &pairs[i]);
        start_thread(&tids[2 * i + 1], producer, &pairs[i]);
    }
    uint64_t checksum = 0;
    for (int i = 0; i < npairs; i++) {
        pthread_join(tids[2 * i + 1], NULL);
        pthread_join(tids[2 * i], NULL);
        checksum = combine(checksum, pairs[i].checksum);
    }
    printf("prodcons pairs=%d messages=%ld checksum=%016llx\n", npairs, count * npairs,
           (unsigned long long)checksum);
    free(tids);
    free(pairs);
    return 0;
}
