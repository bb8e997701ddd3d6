/*
 * memory: the allocator's memory return and its views, driven from C.
 * Prints `key value` lines on stdout for tests/memory.rs to check; the
 * views themselves come from BUDDYSLAB_STATS at exit, on stderr.
 *
 *   memory objects SIZE N   malloc N objects of SIZE bytes, write them and
 *                           keep them until exit (the views count them)
 *   memory faults           64 blocks of 4 MiB and 200000 objects of 64 B,
 *                           every byte written (transparent huge pages
 *                           off for this process, so each page faults once)
 *   memory decay            64 MiB of 256 B objects, written, all freed;
 *                           RSS, then a pause longer than the decay period,
 *                           then some page-level work (which runs the
 *                           decay), then RSS again
 *   memory reuse            2 MiB of objects in each of 24 size classes,
 *                           written, all freed (each class's empty slabs
 *                           fit what its cache keeps), then 48 MiB of
 *                           objects of 2000 bytes, written: prints the
 *                           heap's mapped bytes (mallinfo2's arena) after
 *                           the frees and after the new objects
 *   memory trim             the same, then malloc_trim(0) instead of the
 *                           pause; prints what malloc_trim returned
 *   memory churn SLOTS STEPS  two threads, each keeping SLOTS blocks live;
 *                           every step frees a random one and allocates
 *                           a new one, 8 B to 64 KiB on a power law (one
 *                           in 1000 from 128 KiB to 1.1 MiB), one in 64
 *                           then grown six times by half with realloc;
 *                           every page written, contents checked. Prints
 *                           the bytes freed, the minor faults and the
 *                           peak RSS (the loop issue 18 found: memory
 *                           given back and faulted in again while in use)
 *   memory regrow [nothp]   a buffer grown by realloc from 1 MiB to
 *                           128 MiB, each new page written; prints the
 *                           minor faults that took, whether the buffer's
 *                           mapping is advised for huge pages and how much
 *                           of it the kernel backs with them (from
 *                           /proc/self/smaps). `nothp` first turns THP off
 *                           for the process (PR_SET_THP_DISABLE).
 *
 * RSS lines are in KiB, from /proc/self/statm.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include "common.h"

#define MAX_OBJECTS 300000
static void *objects[MAX_OBJECTS];

static long rss_kib(void)
{
    long pages = 0, resident = -1;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = -1;
        fclose(f);
    }
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static void fill_and_free(size_t size, size_t total)
{
    size_t n = total / size;
    for (size_t i = 0; i < n; i++) {
        objects[i] = malloc(hide(size));
        memset(objects[i], 0x5a, size);
    }
    printf("rss_full %ld\n", rss_kib());
    for (size_t i = 0; i < n; i++)
        free(objects[i]);
    printf("rss_freed %ld\n", rss_kib());
}

/* For the mapping of /proc/self/smaps that holds `p`: whether its VmFlags
 * has `hg` (MADV_HUGEPAGE), and its AnonHugePages in KiB. */
static void smaps_of(const void *p, int *advised, long *anon_huge_kib)
{
    char line[512];
    int inside = 0;
    *advised = 0;
    *anon_huge_kib = 0;
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char dash;
        if (sscanf(line, "%lx%c%lx ", &lo, &dash, &hi) == 3 && dash == '-') {
            inside = (unsigned long)p >= lo && (unsigned long)p < hi;
        } else if (inside && !strncmp(line, "AnonHugePages:", 14)) {
            *anon_huge_kib = strtol(line + 14, NULL, 10);
        } else if (inside && !strncmp(line, "VmFlags:", 8)) {
            *advised = strstr(line, " hg") != NULL;
        }
    }
    fclose(f);
}

/* ------------------------------------------------------------ churn */

struct churn {
    size_t slots;
    long steps;
    uint64_t rng;
    size_t freed;
};

static uint64_t churn_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static size_t churn_size(uint64_t *r)
{
    if (churn_next(r) % 1000 == 0)
        return (128 << 10) + churn_next(r) % ((1100 << 10) - (128 << 10));
    /* As many blocks in every octave from 8 B to 64 KiB. */
    unsigned octave = 3 + (unsigned)(churn_next(r) % 13);
    return ((size_t)1 << octave) + churn_next(r) % ((size_t)1 << octave);
}

/* Byte i of a block tagged t, for the bytes churn writes: the first, one
 * per page and the last. */
static unsigned char churn_byte(size_t i, unsigned t) { return (unsigned char)(t + i / 4096); }

static void churn_write(unsigned char *p, size_t from, size_t size, unsigned t)
{
    for (size_t i = from; i < size; i = (i / 4096 + 1) * 4096)
        p[i] = churn_byte(i, t);
    p[size - 1] = churn_byte(size - 1, t);
}

static void churn_check(const unsigned char *p, size_t size, unsigned t)
{
    for (size_t i = 0; i < size; i = (i / 4096 + 1) * 4096)
        CHECK(p[i] == churn_byte(i, t), "churn block %p byte %zu lost", (const void *)p, i);
    CHECK(p[size - 1] == churn_byte(size - 1, t), "churn block %p last byte lost", (const void *)p);
}

static void *churn_thread(void *arg)
{
    struct churn *c = arg;
    unsigned char **p = calloc(c->slots, sizeof *p);
    size_t *size = calloc(c->slots, sizeof *size);
    unsigned *tag = calloc(c->slots, sizeof *tag);
    for (size_t i = 0; i < c->slots; i++) {
        size[i] = churn_size(&c->rng);
        tag[i] = (unsigned)churn_next(&c->rng);
        p[i] = malloc(hide(size[i]));
        churn_write(p[i], 0, size[i], tag[i]);
    }
    for (long n = 0; n < c->steps; n++) {
        size_t i = churn_next(&c->rng) % c->slots;
        churn_check(p[i], size[i], tag[i]);
        free(p[i]);
        c->freed += size[i];
        size[i] = churn_size(&c->rng);
        tag[i] = (unsigned)churn_next(&c->rng);
        p[i] = malloc(hide(size[i]));
        churn_write(p[i], 0, size[i], tag[i]);
        if (churn_next(&c->rng) % 64 == 0) {
            for (int g = 0; g < 6; g++) {
                size_t old = size[i];
                size[i] = old + old / 2 + 1;
                p[i] = realloc(p[i], size[i]);
                c->freed += old;
                churn_check(p[i], old, tag[i]);
                churn_write(p[i], old, size[i], tag[i]);
            }
        }
    }
    /* The blocks stay live until exit: the views count them. */
    return NULL;
}

static void churn(size_t slots, long steps)
{
    struct churn c[2] = {{slots, steps, 1, 0}, {slots, steps, 2, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, churn_thread, &c[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    printf("freed_kib %zu\n", (c[0].freed + c[1].freed) / 1024);
    printf("minflt %ld\n", u.ru_minflt);
    printf("maxrss_kib %ld\n", u.ru_maxrss);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "objects") && argc == 4) {
        size_t size = strtoul(argv[2], NULL, 0), n = strtoul(argv[3], NULL, 0);
        if (n > MAX_OBJECTS)
            return 64;
        for (size_t i = 0; i < n; i++) {
            objects[i] = malloc(hide(size));
            memset(objects[i], 1, size);
        }
        printf("allocated %zu\n", n);
    } else if (!strcmp(mode, "faults")) {
        /* Each page faults once, 4 KiB at a time, whatever the system's
         * THP setting (the prediction models 4 KiB faults). */
        prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
        for (int i = 0; i < 64; i++) {
            objects[i] = malloc(hide(4 << 20));
            memset(objects[i], 2, 4 << 20);
        }
        for (int i = 0; i < 200000; i++) {
            objects[64 + i] = malloc(hide(64));
            memset(objects[64 + i], 3, 64);
        }
        printf("touched %d\n", 64 * 1024 + 200000 * 64 / 4096);
    } else if (!strcmp(mode, "decay")) {
        fill_and_free(256, 64 << 20);
        struct timespec pause = {0, 300 * 1000 * 1000};
        nanosleep(&pause, NULL);
        /* Slow-path work: page-tier runs go to and from the buddy. */
        for (int i = 0; i < 200; i++)
            free(hidep(malloc(hide(40000))));
        printf("rss_after %ld\n", rss_kib());
    } else if (!strcmp(mode, "reuse")) {
        size_t n = 0;
        for (size_t size = 32; size <= 768; size += 32)
            for (size_t i = 0; i < ((size_t)2 << 20) / size; i++) {
                objects[n] = malloc(hide(size));
                memset(objects[n++], 0x5a, size);
            }
        for (size_t i = 0; i < n; i++)
            free(objects[i]);
        printf("arena_freed %zu\n", mallinfo2().arena);
        size_t others = ((size_t)48 << 20) / 2000;
        for (size_t i = 0; i < others; i++) {
            objects[i] = malloc(hide(2000));
            memset(objects[i], 0xa5, 2000);
        }
        printf("arena_others %zu\n", mallinfo2().arena);
        for (size_t i = 0; i < others; i++)
            free(objects[i]);
    } else if (!strcmp(mode, "trim")) {
        fill_and_free(256, 64 << 20);
        int first = malloc_trim(0);
        int again = malloc_trim(0);
        printf("trim_returned %d\n", first);
        printf("trim_again %d\n", again);
        printf("rss_after %ld\n", rss_kib());
    } else if (!strcmp(mode, "churn") && argc == 4) {
        churn(strtoul(argv[2], NULL, 0), strtol(argv[3], NULL, 0));
        if (failures)
            return 1;
    } else if (!strcmp(mode, "regrow")) {
        if (argc > 2 && !strcmp(argv[2], "nothp"))
            prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
        struct rusage before, after;
        getrusage(RUSAGE_SELF, &before);
        size_t size = 1 << 20;
        unsigned char *p = malloc(hide(size));
        memset(p, 4, size);
        while (size < ((size_t)128 << 20)) {
            p = realloc(p, size * 2);
            if (!p)
                return 66;
            for (size_t i = size; i < size * 2; i += 4096)
                p[i] = 5;
            size *= 2;
        }
        getrusage(RUSAGE_SELF, &after);
        int advised;
        long anon_huge_kib;
        smaps_of(p, &advised, &anon_huge_kib);
        for (size_t i = 0; i < size; i += 4096)
            if (p[i] != (i < (1 << 20) ? 4 : 5))
                return 65;
        objects[0] = p;
        printf("regrow_minflt %ld\n", after.ru_minflt - before.ru_minflt);
        printf("huge_advised %d\n", advised);
        printf("anon_huge_kib %ld\n", anon_huge_kib);
    } else {
        fprintf(stderr, "usage: memory objects SIZE N | faults | decay | trim | churn SLOTS STEPS | regrow [nothp]\n");
        return 64;
    }
    return 0;
}
