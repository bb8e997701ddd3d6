/*
 * large.c — big blocks as glibc treats them: the adaptive mmap threshold,
 * reuse of released big blocks, mremap growth, malloc_trim.
 *
 * Every check holds under plain glibc too (the harness runs it there when
 * it fails under buddyslab, to tell whose fault it is). "mmapped" is read
 * from mallinfo2().hblks, which counts blocks at or above the threshold
 * in both.
 *
 * usage: large            the default-threshold checks, then mallopt's
 *        large fixed      the threshold was fixed from the environment
 *                         (MALLOC_MMAP_THRESHOLD_=262144 or the
 *                         BUDDYSLAB_ one): a 1 MiB block stays mmapped
 *                         after a 2 MiB one was freed
 *        large double-free SIZE_MIB
 *                         frees a block twice; must not return
 * Prints "all checks passed" on stdout when nothing failed.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define PAGE ((size_t)4096)

static size_t mmapped_blocks(void)
{
    return mallinfo2().hblks;
}

static long minor_faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt;
}

static size_t resident_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static void touch(unsigned char *p, size_t size, unsigned char seed)
{
    for (size_t i = 0; i < size; i += PAGE)
        p[i] = (unsigned char)(seed + i / PAGE);
    p[size - 1] = seed;
}

static size_t first_untouched(const unsigned char *p, size_t size, unsigned char seed)
{
    for (size_t i = 0; i < size; i += PAGE)
        if (p[i] != (unsigned char)(seed + i / PAGE))
            return i;
    return size;
}

/* A block freed above the threshold raises it: one of half its size is
 * then not mmapped. */
static void threshold_adapts(void)
{
    unsigned char *a = hidep(malloc(hide(MIB)));
    CHECK(a != NULL, "malloc(1 MiB)");
    CHECK(mmapped_blocks() == 1, "1 MiB at the default threshold: %zu mmapped blocks, want 1",
          mmapped_blocks());
    touch(a, MIB, 1);
    free(a);
    unsigned char *b = hidep(malloc(hide(512 * KIB)));
    CHECK(mmapped_blocks() == 0,
          "512 KiB after freeing 1 MiB: %zu mmapped blocks, want 0 (threshold did not adapt)",
          mmapped_blocks());
    free(b);
}

/* realloc of a big block keeps what it held, growing and shrinking. */
static void realloc_keeps_contents(void)
{
    size_t sizes[] = {6 * MIB, 40 * MIB, 100 * MIB, 7 * MIB, 33 * MIB, 200 * KIB};
    size_t have = sizes[0];
    unsigned char *p = malloc(have);
    CHECK(p != NULL, "malloc(6 MiB)");
    if (!p)
        return;
    touch(p, have, 7);
    for (size_t k = 1; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t size = sizes[k];
        p = realloc(p, size);
        CHECK(p != NULL, "realloc to %zu", size);
        if (!p)
            return;
        size_t keep = have < size ? have : size;
        size_t bad = first_untouched(p, keep & ~(PAGE - 1), 7);
        CHECK(bad == (keep & ~(PAGE - 1)), "realloc %zu -> %zu lost byte %zu", have, size, bad);
        touch(p, size, 7);
        have = size;
    }
    free(p);
}

/* Freed big blocks come back resident: the fourth round of
 * malloc/touch/free of 20 MiB faults on few of its pages. */
static void released_blocks_are_reused(void)
{
    size_t size = 20 * MIB;
    long faults = 0;
    for (int round = 0; round < 4; round++) {
        long before = minor_faults();
        unsigned char *p = hidep(malloc(hide(size)));
        CHECK(p != NULL, "malloc(20 MiB)");
        if (!p)
            return;
        touch(p, size, (unsigned char)round);
        free(p);
        faults = minor_faults() - before;
    }
    CHECK(faults < (long)(size / PAGE / 4), "round 4 of 20 MiB blocks: %ld faults (%zu pages)", faults,
          size / PAGE);
}

/* What was kept for reuse goes back to the system on malloc_trim(0). */
static void trim_releases(void)
{
    unsigned char *p = hidep(malloc(hide(20 * MIB)));
    CHECK(p != NULL, "malloc(20 MiB)");
    if (!p)
        return;
    touch(p, 20 * MIB, 3);
    free(p);
    size_t before = resident_bytes();
    malloc_trim(0);
    size_t after = resident_bytes();
    CHECK(after + 16 * MIB <= before, "malloc_trim(0): resident %zu -> %zu bytes, want 16 MiB less",
          before, after);
}

/* mallopt(M_MMAP_THRESHOLD) fixes the threshold: a freed 2 MiB block no
 * longer raises it. */
static void mallopt_stops_adapting(void)
{
    CHECK(mallopt(M_MMAP_THRESHOLD, 256 << 10) == 1, "mallopt(M_MMAP_THRESHOLD, 256 KiB) refused");
    void *a = hidep(malloc(hide(2 * MIB)));
    free(a);
    void *b = hidep(malloc(hide(MIB)));
    CHECK(mmapped_blocks() == 1, "1 MiB after mallopt(256 KiB) and a freed 2 MiB: %zu mmapped, want 1",
          mmapped_blocks());
    free(b);
}

static void fixed_threshold(void)
{
    void *a = hidep(malloc(hide(2 * MIB)));
    free(a);
    void *b = hidep(malloc(hide(MIB)));
    CHECK(mmapped_blocks() == 1, "1 MiB after a freed 2 MiB, threshold fixed by the environment: "
          "%zu mmapped, want 1", mmapped_blocks());
    free(b);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "default";
    if (!strcmp(mode, "double-free")) {
        size_t size = (argc > 2 ? (size_t)atoi(argv[2]) : 20) * MIB;
        unsigned char *p = hidep(malloc(hide(size)));
        touch(p, size, 1);
        void *again = hidep(p); /* the compiler must not see the same pointer */
        free(p);
        free(again);
        printf("the second free returned\n");
        return 1;
    }
    if (!strcmp(mode, "fixed")) {
        fixed_threshold();
    } else {
        threshold_adapts();
        realloc_keeps_contents();
        released_blocks_are_reused();
        trim_releases();
        mallopt_stops_adapting();
    }
    if (checks_failed("large %s", mode))
        return 1;
    printf("large %s: all checks passed\n", mode);
    return 0;
}
