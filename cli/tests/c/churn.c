/*
 * churn.c - a small, deterministic malloc workload for the buddyslab tool's
 * tests: builds and frees lists of blocks of pseudo-random sizes (16 B to
 * 256 KiB, so every tier is used), fills each block with a pattern, checks
 * the pattern before freeing, and prints a checksum. With an argument N it
 * exits with status N after printing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct block {
    struct block *next;
    size_t size;
    unsigned char data[];
};

static uint64_t state = 88172645463325252ull;

static uint64_t next_random(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

int main(int argc, char **argv)
{
    uint64_t checksum = 0;
    for (int round = 0; round < 40; round++) {
        struct block *head = NULL;
        for (int i = 0; i < 2000; i++) {
            uint64_t r = next_random();
            size_t size = (r % 100 == 0) ? 1 + r % (256 << 10) : 1 + r % 512;
            struct block *b = malloc(sizeof *b + size);
            if (!b) {
                fprintf(stderr, "churn: out of memory\n");
                return 2;
            }
            b->size = size;
            memset(b->data, (int)(size & 0xff), size);
            b->next = head;
            head = b;
        }
        while (head) {
            struct block *b = head;
            head = b->next;
            for (size_t k = 0; k < b->size; k += 61) {
                if (b->data[k] != (unsigned char)(b->size & 0xff)) {
                    fprintf(stderr, "churn: block of %zu bytes corrupted\n", b->size);
                    return 3;
                }
            }
            checksum = checksum * 31 + b->size;
            free(b);
        }
    }
    printf("churn checksum %llu\n", (unsigned long long)checksum);
    return argc > 1 ? atoi(argv[1]) : 0;
}
