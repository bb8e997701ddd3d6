/*
 * phases: a long-running server whose load changes phase.
 *
 * A pool of worker threads serves "requests" in rounds; every round goes
 * through four phases, all workers together (a barrier between phases):
 *
 *   small   each request builds a list of 20..60 objects of 16..512 B,
 *           walks it and frees it; one object in 8 goes to the shared cache
 *   medium  each request allocates 2..6 buffers of 4..64 KiB and fills
 *           them; one in 8 goes to the shared cache
 *   large   each request allocates a 256 KiB..4 MiB buffer and writes
 *           every page of it
 *   idle    no requests: the workers sleep for 50 ms, as a server waits
 *           for traffic; the allocator may give memory back here
 *
 * The shared cache (4096 entries per worker, striped locks) is the
 * server's long-lived state: it lives across phases and rounds, and an
 * object put there is usually freed by another thread when evicted, so
 * every phase has cross-thread frees, and memory freed in one phase is
 * what the next, of other sizes, could reuse.
 *
 * After every phase the main thread prints the process's resident memory
 * to stderr as `rss <phase>-<round> <MiB> MiB` (benches/compare.py makes a
 * table of these): the idle rows show what the allocator kept.
 *
 * Contents: every object is stamped at both ends and checked before it is
 * freed. Every worker does the same work. The checksum depends only on
 * each worker's own random state, so it is the same under every allocator.
 *
 * usage: phases [scale=1.0] [threads=2]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WORKLOAD "phases"
#include "common.h"

#define MAX_THREADS 1024
#define CACHE_PER_THREAD 4096
#define STRIPES 64
#define PAGE 4096
#define IDLE_MS 50

struct node {
    struct node *next;
    uint64_t tag;
    size_t size;
};

struct entry {
    unsigned char *ptr;
    size_t size;
    uint64_t tag;
};

struct worker {
    uint64_t rng;
    uint64_t checksum;
    int id;
};

static struct entry *cache;
static size_t cache_size;
static pthread_mutex_t stripes[STRIPES];
static pthread_barrier_t barrier;
static int rounds;
static long small_requests, medium_requests, large_requests;

static const char *const PHASES[] = {"small", "medium", "large", "idle"};

/* Puts an object into the cache in place of a random entry, which is
 * checked and freed (by whichever thread evicts it). */
static void cache_put(struct worker *w, unsigned char *p, size_t size, uint64_t tag)
{
    size_t i = rng_next(&w->rng) % cache_size;
    pthread_mutex_t *lock = &stripes[i % STRIPES];
    pthread_mutex_lock(lock);
    struct entry old = cache[i];
    cache[i] = (struct entry){p, size, tag};
    pthread_mutex_unlock(lock);
    if (old.ptr) {
        check_stamp(old.ptr, old.size, old.tag);
        free(old.ptr);
    }
}

static void small_request(struct worker *w)
{
    struct node *head = NULL;
    int n = 20 + (int)(rng_next(&w->rng) % 41);
    for (int i = 0; i < n; i++) {
        size_t size = 16 + rng_next(&w->rng) % 497;
        uint64_t tag = rng_next(&w->rng);
        if (size >= sizeof(struct node) && i % 8 != 0) {
            struct node *x = checked(malloc(size), "malloc");
            x->next = head;
            x->tag = tag;
            x->size = size;
            head = x;
        } else {
            unsigned char *p = checked(malloc(size), "malloc");
            stamp(p, size, tag);
            cache_put(w, p, size, tag);
        }
        w->checksum += size;
    }
    while (head) {
        struct node *next = head->next;
        w->checksum = combine(w->checksum, head->tag ^ head->size);
        free(head);
        head = next;
    }
}

static void medium_request(struct worker *w)
{
    int n = 2 + (int)(rng_next(&w->rng) % 5);
    unsigned char *bufs[6];
    size_t sizes[6];
    uint64_t tags[6];
    for (int i = 0; i < n; i++) {
        sizes[i] = ((size_t)4 << 10) + rng_next(&w->rng) % ((size_t)60 << 10);
        tags[i] = rng_next(&w->rng);
        bufs[i] = checked(malloc(sizes[i]), "malloc");
        memset(bufs[i], (int)(tags[i] & 0xff), sizes[i]);
        stamp(bufs[i], sizes[i], tags[i]);
    }
    for (int i = 0; i < n; i++) {
        check_stamp(bufs[i], sizes[i], tags[i]);
        w->checksum = combine(w->checksum, bufs[i][sizes[i] / 2] + sizes[i]);
        if (rng_next(&w->rng) % 8 == 0)
            cache_put(w, bufs[i], sizes[i], tags[i]);
        else
            free(bufs[i]);
    }
}

static void large_request(struct worker *w)
{
    size_t size = ((size_t)256 << 10) + rng_next(&w->rng) % ((size_t)3840 << 10);
    uint64_t tag = rng_next(&w->rng);
    unsigned char *p = checked(malloc(size), "malloc");
    for (size_t i = 8; i + 8 < size; i += PAGE)
        p[i] = (unsigned char)(tag + i / PAGE);
    stamp(p, size, tag);
    uint64_t sum = 0;
    for (size_t i = 8; i + 8 < size; i += PAGE) {
        if (p[i] != (unsigned char)(tag + i / PAGE))
            corrupted(p, size, "page byte");
        sum += p[i];
    }
    check_stamp(p, size, tag);
    free(p);
    w->checksum = combine(w->checksum, sum + size);
}

static void *serve(void *arg)
{
    struct worker *w = arg;
    for (int r = 0; r < rounds; r++) {
        for (long i = 0; i < small_requests; i++)
            small_request(w);
        pthread_barrier_wait(&barrier);
        pthread_barrier_wait(&barrier); /* main reads RSS in between */
        for (long i = 0; i < medium_requests; i++)
            medium_request(w);
        pthread_barrier_wait(&barrier);
        pthread_barrier_wait(&barrier);
        for (long i = 0; i < large_requests; i++)
            large_request(w);
        pthread_barrier_wait(&barrier);
        pthread_barrier_wait(&barrier);
        struct timespec idle = {0, IDLE_MS * 1000000L};
        nanosleep(&idle, NULL);
        pthread_barrier_wait(&barrier);
        pthread_barrier_wait(&barrier);
    }
    return NULL;
}

static double rss_mib(void)
{
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = 0;
        fclose(f);
    }
    return (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0);
}

int main(int argc, char **argv)
{
    int nthreads;
    double scale = parse_args(argc, argv, "threads", 2, MAX_THREADS, &nthreads);
    rounds = 4;
    small_requests = (long)(15000 * scale);
    medium_requests = (long)(4000 * scale);
    large_requests = (long)(400 * scale);
    cache_size = (size_t)CACHE_PER_THREAD * (size_t)nthreads;
    cache = checked(calloc(cache_size, sizeof *cache), "calloc");
    for (int i = 0; i < STRIPES; i++)
        pthread_mutex_init(&stripes[i], NULL);
    pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1);

    struct worker *workers = checked(calloc((size_t)nthreads, sizeof *workers), "calloc");
    pthread_t *tids = checked(calloc((size_t)nthreads, sizeof *tids), "calloc");
    for (int i = 0; i < nthreads; i++) {
        workers[i].rng = 0xd1b54a32d192ed03ULL * (uint64_t)(i + 1);
        workers[i].id = i;
        start_thread(&tids[i], serve, &workers[i]);
    }
    for (int r = 0; r < rounds; r++) {
        for (int ph = 0; ph < 4; ph++) {
            pthread_barrier_wait(&barrier); /* the phase is over */
            fprintf(stderr, "rss %s-%d %.1f MiB\n", PHASES[ph], r + 1, rss_mib());
            pthread_barrier_wait(&barrier); /* next phase */
        }
    }
    for (int i = 0; i < nthreads; i++)
        pthread_join(tids[i], NULL);

    for (size_t i = 0; i < cache_size; i++) {
        if (cache[i].ptr) {
            check_stamp(cache[i].ptr, cache[i].size, cache[i].tag);
            free(cache[i].ptr);
        }
    }
    uint64_t checksum = 0;
    for (int i = 0; i < nthreads; i++)
        checksum = combine(checksum, workers[i].checksum);
    printf("phases threads=%d rounds=%d checksum=%016llx\n", nthreads, rounds,
           (unsigned long long)checksum);
    free(cache);
    free(workers);
    free(tids);
    return 0;
}
