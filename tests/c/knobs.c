/*
 * knobs.c — glibc's malloc knobs, one check per argv[1]:
 *
 *   fresh BYTE     every byte of fresh blocks of many sizes (slab, page
 *                  run, mapped) equals BYTE (hex); calloc still zeroes.
 *                  Prints "fresh ok" and exits 0, or the first offender.
 *   freed BYTE     a freed 1000-byte block reads BYTE past its first 16
 *                  bytes (the allocator keeps its link there).
 *   mallopt        mallopt(M_PERTURB, 0x33), then as "fresh cc".
 *   info           malloc_info(0, stdout) after some allocations; and
 *                  malloc_info(1, ...) must return EINVAL, as glibc's does.
 *
 * Run under glibc and under buddyslab with the same environment, "fresh"
 * must print the same.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const size_t sizes[] = { 1, 24, 100, 1000, 5000, 40000, 300000, 2000000 };

static int fresh(unsigned byte)
{
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *p = hidep(malloc(sizes[i]));
        for (size_t j = 0; j < sizes[i]; j++) {
            if (p[j] != byte) {
                printf("malloc(%zu): byte %zu is %02x, not %02x\n", sizes[i], j, p[j], byte);
                return 1;
            }
        }
        unsigned char *z = hidep(calloc(1, sizes[i]));
        for (size_t j = 0; j < sizes[i]; j++) {
            if (z[j] != 0) {
                printf("calloc(%zu): byte %zu is %02x\n", sizes[i], j, z[j]);
                return 1;
            }
        }
        /* Kept: a freed block reused for the next size would not be fresh
         * under glibc's tcache, which does not perturb. */
    }
    printf("fresh ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: knobs MODE [BYTE]\n");
        return 2;
    }
    /* stdio's buffer first. */
    printf("mode %s\n", argv[1]);
    if (!strcmp(argv[1], "fresh") && argc == 3)
        return fresh((unsigned)strtoul(argv[2], NULL, 16));
    if (!strcmp(argv[1], "freed") && argc == 3) {
        unsigned byte = (unsigned)strtoul(argv[2], NULL, 16);
        unsigned char *p = hidep(malloc(1000));
        free(p);
        for (size_t j = 16; j < 1000; j++) {
            if (p[j] != byte) {
                printf("freed: byte %zu is %02x, not %02x\n", j, p[j], byte);
                return 1;
            }
        }
        printf("freed ok\n");
        return 0;
    }
    if (!strcmp(argv[1], "mallopt")) {
        if (mallopt(M_PERTURB, 0x33) != 1) {
            printf("mallopt(M_PERTURB) failed\n");
            return 1;
        }
        return fresh(0x33 ^ 0xff);
    }
    if (!strcmp(argv[1], "info")) {
        void *keep[64];
        for (int i = 0; i < 64; i++)
            keep[i] = malloc((size_t)(i + 1) * 48);
        for (int i = 0; i < 64; i += 2)
            free(keep[i]);
        void *big = malloc(4 << 20);
        fflush(stdout);
        /* glibc returns EINVAL itself for options it does not know. */
        if (malloc_info(1, stdout) != EINVAL) {
            fprintf(stderr, "malloc_info(1, ...) did not return EINVAL\n");
            return 1;
        }
        if (malloc_info(0, stdout) != 0) {
            fprintf(stderr, "malloc_info(0, stdout) failed\n");
            return 1;
        }
        free(big);
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
