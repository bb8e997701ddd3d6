/*
 * faults.c: programs whose page faults are known, for tests/faults.rs,
 * which runs them under LD_PRELOAD=libbuddyslab.so with BUDDYSLAB_STATS=json
 * and holds the faults view against the kernel's ru_minflt.
 *
 *   faults TIER TOUCH   allocate BLOCKS blocks of SIZE bytes from one tier
 *                       and write TOUCH of each block's pages (one byte per
 *                       page, from the block's start), keeping them until
 *                       exit:
 *                         TIER large: 32 blocks of 4 MiB (own mappings)
 *                         TIER pages: 512 blocks of 64 KiB (page-tier runs)
 *                         TIER slab:  2048 objects of 16 KiB (slab objects)
 *                       all three 32 MiB (8192 pages);
 *                       TOUCH all, quarter or none; TIER none allocates
 *                       nothing (the baseline run: the same program, the
 *                       same stores to its own array)
 *   faults refault      512 page runs of 64 KiB written, freed, given back
 *                       with malloc_trim(0), then allocated and written
 *                       again: each page faults twice
 *   faults threads      mleak's pattern: 300 rounds of 10 threads at once,
 *                       each taking calloc(16, 8) and freeing a block some
 *                       earlier thread left; prints `thread_faults N`, the
 *                       faults of the last 250 rounds (the first 50 warm
 *                       up the stack cache and the heap), for a comparison
 *                       with glibc's run of the same program
 *
 * Transparent huge pages are turned off for the process, so each page
 * faults once, 4 KiB at a time, whatever the system's setting. Prints
 * `pages N`, the pages it wrote, and `block_pages N`, the pages of one
 * block.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sys/resource.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include "common.h"

#define PAGE 4096
#define TOTAL (32u << 20)
#define MAX_BLOCKS 2048

static void *blocks[MAX_BLOCKS];

/* Writes one byte in each of the first `pages` pages of `p`. */
static void touch(void *p, size_t pages)
{
    volatile char *c = p;
    for (size_t i = 0; i < pages; i++)
        c[i * PAGE] = (char)(i + 1);
}

#define SLOTS 1000
static void *_Atomic slots[SLOTS];

static void *leak(void *arg)
{
    void *p = calloc(16, 8);
    if (p == NULL)
        abort();
    free(atomic_exchange(&slots[(size_t)arg % SLOTS], p));
    return NULL;
}

static long minor_faults(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

static int threads(void)
{
    long start = 0;
    for (size_t round = 0; round < 300; round++) {
        if (round == 50)
            start = minor_faults();
        pthread_t t[10];
        int made[10];
        for (size_t i = 0; i < 10; i++) {
            made[i] = pthread_create(&t[i], NULL, leak, (void *)(round * 7919 + i * 104729)) == 0;
            CHECK(made[i], "pthread_create");
        }
        for (size_t i = 0; i < 10; i++)
            if (made[i])
                pthread_join(t[i], NULL);
    }
    printf("thread_faults %ld\n", minor_faults() - start);
    for (size_t i = 0; i < SLOTS; i++)
        free(atomic_exchange(&slots[i], NULL));
    return failures != 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: faults TIER TOUCH | faults refault\n");
        return 2;
    }
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    if (!strcmp(argv[1], "threads"))
        return threads();
    if (!strcmp(argv[1], "refault")) {
        size_t size = 64 << 10, n = TOTAL / size;
        for (int round = 0; round < 2; round++) {
            for (size_t i = 0; i < n; i++) {
                blocks[i] = malloc(hide(size));
                CHECK(blocks[i] != NULL, "malloc(%zu) failed", size);
                touch(blocks[i], size / PAGE);
            }
            if (round == 0) {
                for (size_t i = 0; i < n; i++)
                    free(blocks[i]);
                malloc_trim(0);
            }
        }
        printf("pages %zu\nblock_pages %zu\n", 2 * (size_t)(TOTAL / PAGE), size / PAGE);
        return failures != 0;
    }
    if (argc < 3) {
        fprintf(stderr, "usage: faults TIER TOUCH\n");
        return 2;
    }
    const char *tier = argv[1], *how = argv[2];
    size_t size = !strcmp(tier, "large") ? 4u << 20 : !strcmp(tier, "pages") ? 64u << 10 : 16u << 10;
    size_t n = TOTAL / size, block_pages = size / PAGE;
    size_t pages = !strcmp(how, "all") ? block_pages : !strcmp(how, "quarter") ? block_pages / 4 : 0;
    if (strcmp(how, "all") && strcmp(how, "quarter") && strcmp(how, "none")) {
        fprintf(stderr, "TOUCH must be all, quarter or none\n");
        return 2;
    }
    int allocate = strcmp(tier, "none") != 0;
    /* The baseline stores into the same array, so its own pages fault
     * in both runs. */
    for (size_t i = 0; i < MAX_BLOCKS; i++)
        blocks[i] = NULL;
    for (size_t i = 0; allocate && i < n; i++) {
        blocks[i] = malloc(hide(size));
        CHECK(blocks[i] != NULL, "malloc(%zu) failed", size);
        touch(blocks[i], pages);
    }
    printf("pages %zu\nblock_pages %zu\n", allocate ? n * pages : 0, block_pages);
    return failures != 0;
}
