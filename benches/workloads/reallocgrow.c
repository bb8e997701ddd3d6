/*
 * reallocgrow: a buffer doubling from 1 KiB to 256 MiB by realloc, again
 * and again.
 *
 * Per round: malloc 1 KiB, then realloc to 2 KiB, 4 KiB, ... 256 MiB;
 * after each step the kept half's first and last bytes are checked and
 * the new half gets one byte per 4 KiB page and a stamp at the end; every
 * page is checked before the buffer is freed. An allocator that grows big blocks in place (or
 * moves their pages with mremap) copies nothing; one that copies moves
 * 256 MiB per round, and every allocator pays the page faults of the new
 * halves.
 *
 * usage: reallocgrow [scale=1.0]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WORKLOAD "reallocgrow"
#include "common.h"

#define START ((size_t)1 << 10)
#define LIMIT ((size_t)256 << 20)
#define PAGE 4096

/* One byte per page in [from, to), and the last byte. */
static void fill(unsigned char *p, size_t from, size_t to, uint64_t tag)
{
    for (size_t k = (from + PAGE - 1) / PAGE; k * PAGE < to; k++)
        p[k * PAGE] = (unsigned char)(tag + k);
    p[to - 1] = (unsigned char)(tag ^ to);
}

static uint64_t verify(const unsigned char *p, size_t size, uint64_t tag)
{
    uint64_t sum = 0;
    for (size_t k = 0; k * PAGE < size; k++) {
        if (p[k * PAGE] != (unsigned char)(tag + k))
            corrupted(p, size, "page byte");
        sum += p[k * PAGE];
    }
    if (p[size - 1] != (unsigned char)(tag ^ size))
        corrupted(p, size, "last byte");
    return sum;
}

int main(int argc, char **argv)
{
    double scale = parse_args(argc, argv, NULL, 0, 0, NULL);
    long rounds = (long)(24 * scale);
    if (rounds < 1)
        rounds = 1;
    uint64_t state = 0x5eed, checksum = 0;
    for (long r = 0; r < rounds; r++) {
        uint64_t tag = rng_next(&state);
        size_t size = START;
        unsigned char *p = checked(malloc(size), "malloc");
        fill(p, 0, size, tag);
        while (size < LIMIT) {
            size_t old = size;
            size *= 2;
            p = checked(realloc(p, size), "realloc");
            if (p[0] != (unsigned char)tag || p[old - 1] != (unsigned char)(tag ^ old))
                corrupted(p, size, "kept half");
            fill(p, old, size, tag);
        }
        checksum = checksum * 31 + verify(p, size, tag);
        free(p);
    }
    printf("reallocgrow rounds=%ld checksum=%016llx\n", rounds, (unsigned long long)checksum);
    return 0;
}
