/*
 * frag: fragmentation and giving memory back.
 *
 * 1. fill    ~300 MB of small objects (16..512 B)
 * 2. holes   free 90 % of them, chosen at random: the survivors pin pages
 * 3. medium  allocate ~100 MB of medium objects (1..64 KiB), written through:
 *            can the allocator build them from the holes?
 * 4. empty   free everything
 * 5. trim    malloc_trim(0)
 *
 * After each phase the resident set size (from /proc/self/statm) goes to
 * stderr as `rss <phase> <MiB> MiB`; compare.py collects these lines.
 *
 * Deterministic: one thread, one random state.
 *
 * usage: frag [scale=1.0]    stdout: one checksum line; stderr: RSS per phase
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WORKLOAD "frag"
#include "common.h"

#define SMALL_MIN 16
#define SMALL_MAX 512
#define MEDIUM_MIN 1024
#define MEDIUM_MAX (64 * 1024)

static void report_rss(const char *phase)
{
    long pages = -1, resident = -1;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
            resident = -1;
        fclose(f);
    }
    fprintf(stderr, "rss %s %.1f MiB\n", phase,
            (double)resident * (double)sysconf(_SC_PAGESIZE) / (1024.0 * 1024.0));
}

struct object {
    unsigned char *ptr;
    uint32_t size;
    uint32_t tag;
};

static unsigned char *make(struct object *o, uint64_t r, size_t min, size_t max, int fill)
{
    o->size = (uint32_t)(min + (r >> 24) % (max - min + 1));
    o->tag = (uint32_t)r;
    o->ptr = checked(malloc(o->size), "malloc");
    if (fill)
        memset(o->ptr, (int)(o->tag & 0xff), o->size);
    memcpy(o->ptr, &o->tag, 4);
    memcpy(o->ptr + o->size - 4, &o->tag, 4);
    return o->ptr;
}

static uint64_t release(struct object *o)
{
    uint32_t head, tail;
    memcpy(&head, o->ptr, 4);
    memcpy(&tail, o->ptr + o->size - 4, 4);
    if (head != o->tag || tail != o->tag)
        corrupted(o->ptr, o->size, NULL);
    free(o->ptr);
    o->ptr = NULL;
    return (uint64_t)o->tag + o->size;
}

int main(int argc, char **argv)
{
    double scale = parse_args(argc, argv, NULL, 0, 0, NULL);
    size_t small_bytes = (size_t)(300e6 * scale);
    size_t medium_bytes = (size_t)(100e6 * scale);
    size_t max_small = small_bytes / SMALL_MIN + 1;
    size_t max_medium = medium_bytes / MEDIUM_MIN + 1;
    uint64_t rng = 42, checksum = 0;

    report_rss("start");
    struct object *small = calloc(max_small, sizeof *small);
    struct object *medium = calloc(max_medium, sizeof *medium);
    if (!small || !medium)
        return 2;

    size_t n_small = 0, bytes = 0;
    while (bytes < small_bytes && n_small < max_small) {
        make(&small[n_small], rng_next(&rng), SMALL_MIN, SMALL_MAX, 0);
        bytes += small[n_small++].size;
    }
    report_rss("fill");

    size_t kept = 0;
    for (size_t i = 0; i < n_small; i++) {
        if (rng_next(&rng) % 10 != 0)
            checksum = checksum * 31 + release(&small[i]);
        else
            kept++;
    }
    report_rss("holes");

    size_t n_medium = 0;
    bytes = 0;
    while (bytes < medium_bytes && n_medium < max_medium) {
        make(&medium[n_medium], rng_next(&rng), MEDIUM_MIN, MEDIUM_MAX, 1);
        bytes += medium[n_medium++].size;
    }
    report_rss("medium");

    for (size_t i = 0; i < n_small; i++)
        if (small[i].ptr)
            checksum = checksum * 31 + release(&small[i]);
    for (size_t i = 0; i < n_medium; i++)
        checksum = checksum * 31 + release(&medium[i]);
    free(small);
    free(medium);
    report_rss("empty");

    malloc_trim(0);
    report_rss("trim");

    printf("frag small=%zu kept=%zu medium=%zu checksum=%016llx\n", n_small, kept, n_medium,
           (unsigned long long)checksum);
    return 0;
}
