/*
 * busy.c - a program that keeps allocating until it is stopped, for the
 * tests of views written while a program runs (interval, signal, the
 * live page): rounds of 20000 blocks of 16 B to 2 KiB, all freed at the
 * end of each round, so thread caches empty and refill (the slow paths
 * where the views are written). Prints "ready" after its first round.
 * With an argument N it stops after N rounds (exit status 0).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long rounds = argc > 1 ? atol(argv[1]) : -1;
    static void *blocks[20000];
    unsigned state = 12345;
    for (long round = 0; rounds < 0 || round < rounds; round++) {
        for (int i = 0; i < 20000; i++) {
            state = state * 1103515245u + 12345u;
            size_t size = 16 + (state >> 8) % 2032;
            blocks[i] = malloc(size);
            if (!blocks[i])
                return 2;
            memset(blocks[i], (int)i, size < 64 ? size : 64);
        }
        for (int i = 0; i < 20000; i++)
            free(blocks[i]);
        if (round == 0) {
            printf("ready %d\n", (int)getpid());
            fflush(stdout);
        }
    }
    return 0;
}
