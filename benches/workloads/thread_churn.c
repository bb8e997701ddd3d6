/*
 * thread_churn: short-lived threads whose objects outlive them.
 *
 * Main starts threads one after another, keeping a few running at once.
 * Each thread churns through temporary objects, then leaves behind a batch
 * of objects (its "results") and exits; main checks and frees the results
 * after joining it. This is what thread-per-request servers and task pools
 * that respawn workers do: every thread's cache is set up and torn down,
 * and memory allocated by a dead thread is freed by a live one.
 *
 * Deterministic: each thread's random state is seeded by its number.
 *
 * usage: thread_churn [scale=1.0] [concurrent=2]   stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "thread_churn"
#include "common.h"

#define KEEP 400     /* objects each thread leaves to main */
#define CHURN 4000   /* temporary malloc/free pairs per thread */
#define WINDOW 32    /* temporaries alive at once */
#define MAX_CONCURRENT 256

/* The size follows from the tag, so whoever frees can find the tail. */
static size_t size_of(uint64_t tag, size_t max)
{
    return 16 + (size_t)(tag >> 40) % (max - 15);
}

static unsigned char *make(uint64_t tag, size_t max)
{
    size_t size = size_of(tag, max);
    unsigned char *p = checked(malloc(size), "malloc");
    stamp(p, size, tag);
    return p;
}

static uint64_t check_and_free(unsigned char *p, size_t max)
{
    uint64_t tag;
    memcpy(&tag, p, 8);
    check_stamp(p, size_of(tag, max), tag);
    free(p);
    return tag;
}

struct job {
    long number;
    unsigned char **results; /* KEEP objects, and the array itself, freed by main */
    uint64_t checksum;       /* of the temporaries */
};

static void *worker(void *arg)
{
    struct job *job = arg;
    uint64_t rng = 0x5eedULL + (uint64_t)job->number * 0x100000001b3ULL;
    unsigned char *window[WINDOW] = {0};
    uint64_t sum = 0;

    job->results = malloc(KEEP * sizeof *job->results);
    if (!job->results)
        exit(2);
    for (int i = 0; i < CHURN; i++) {
        uint64_t r = rng_next(&rng);
        unsigned char **slot = &window[r % WINDOW];
        if (*slot)
            sum = sum * 31 + check_and_free(*slot, 512);
        *slot = make(r, 512);
        if (i % (CHURN / KEEP) == 0)
            job->results[i / (CHURN / KEEP)] = make(rng_next(&rng), 2048);
    }
    for (int i = 0; i < WINDOW; i++)
        if (window[i])
            sum = sum * 31 + check_and_free(window[i], 512);
    job->checksum = sum;
    return NULL;
}

int main(int argc, char **argv)
{
    int concurrent;
    double scale = parse_args(argc, argv, "concurrent", 2, MAX_CONCURRENT, &concurrent);
    long total = (long)(5000 * scale);
    if (total < concurrent)
        total = concurrent;

    struct job jobs[MAX_CONCURRENT];
    pthread_t tids[MAX_CONCURRENT];
    uint64_t checksum = 0;
    for (long n = 0; n < total + concurrent; n++) {
        int slot = (int)(n % concurrent);
        if (n >= concurrent) { /* the thread started `concurrent` ago: reap it */
            struct job *done = &jobs[slot];
            pthread_join(tids[slot], NULL);
            checksum = combine(checksum, done->checksum);
            for (int i = 0; i < KEEP; i++)
                checksum = checksum * 31 + check_and_free(done->results[i], 2048);
            free(done->results);
        }
        if (n < total) {
            jobs[slot].number = n;
            start_thread(&tids[slot], worker, &jobs[slot]);
        }
    }
    printf("thread_churn threads=%ld checksum=%016llx\n", total, (unsigned long long)checksum);
    return 0;
}
