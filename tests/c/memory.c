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
 *   memory trim             the same, then malloc_trim(0) instead of the
 *                           pause; prints what malloc_trim returned
 *
 * RSS lines are in KiB, from /proc/self/statm.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
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
    } else if (!strcmp(mode, "trim")) {
        fill_and_free(256, 64 << 20);
        int first = malloc_trim(0);
        int again = malloc_trim(0);
        printf("trim_returned %d\n", first);
        printf("trim_again %d\n", again);
        printf("rss_after %ld\n", rss_kib());
    } else {
        fprintf(stderr, "usage: memory objects SIZE N | faults | decay | trim\n");
        return 64;
    }
    return 0;
}
