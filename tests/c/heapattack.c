/*
 * heapattack.c — the classic free-list attack, one variant per argv[1]:
 * write a chosen address into the first word of a freed object and wait
 * for malloc to return that address. The allocator must stop the process
 * (SIGABRT after one line naming the corrupted list and the object) before
 * it returns the address.
 *
 *   heapattack MODE
 *
 * Before poisoning, the program prints "addr=0x..." (the object whose
 * link is poisoned) and flushes stdout. Outcomes it reports itself:
 *   exit 4, "exploited": malloc returned the chosen address;
 *   exit 3, "not caught": a thousand mallocs later nothing happened;
 *   exit 5, "discarded": malloc returned the poisoned object itself
 *           without following its link (the poison was overwritten).
 *
 * Modes:
 *   bin          the object sits in the thread's bin (tcache-like)
 *   slab         the object went back to its slab (free, malloc_trim)
 *   thread-exit  freed by a thread that then exited (its cache drained)
 *   learn-key    first reads what a fresh object's first word reveals
 *                (the encoded link, if handing out left it there) and
 *                poisons with the key it would give
 *   fresh-words  no attack: every object handed out, fresh or reused,
 *                must have its first two words cleared; exit 0 if so
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* The attacker's target: a global the program would then write through. */
static char target[256] __attribute__((aligned(64)));

/* An uncommon size, so the object's class is used by nothing else here
 * (stdio's buffers, the thread's start-up). */
#define SIZE 200

static void announce(void *p)
{
    printf("addr=%p\n", p);
    fflush(stdout);
}

/* The object whose link was overwritten. */
static void *poisoned;

static void poison(void *freed, uintptr_t word)
{
    poisoned = freed;
    *(volatile uintptr_t *)hidep(freed) = word;
}

/* Allocates until the target comes back (exploited) or a thousand
 * objects later (not caught). */
static int wait_for_target(const char *mode)
{
    for (int i = 0; i < 1000; i++) {
        /* Through hidep: the compiler would otherwise know that a fresh
         * block is never a global, fold the compare and drop the call. */
        uintptr_t q = (uintptr_t)hidep(malloc(SIZE));
        if (q == (uintptr_t)hidep(target)) {
            printf("exploited: %s: malloc returned the target\n", mode);
            return 4;
        }
        if (q == (uintptr_t)poisoned) {
            /* Handed out again without its link being followed: it was the
             * last of a list whose length was known, and the allocator
             * wrote a fresh link over the poison when it spliced the list.
             * The attack came to nothing. */
            printf("discarded: %s: the poisoned link was never followed\n", mode);
            return 5;
        }
    }
    printf("not caught: %s\n", mode);
    return 3;
}

static void *exiting_thread(void *arg)
{
    void **out = arg;
    out[0] = malloc(SIZE); /* stays live: keeps the slab from being released */
    out[1] = malloc(SIZE);
    free(out[1]);
    return NULL;
}

static uintptr_t bswap(uintptr_t x)
{
    return __builtin_bswap64(x);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: heapattack MODE\n");
        return 2;
    }
    const char *mode = argv[1];
    /* One CPU for the whole process, threads included: the allocator's
     * per-CPU caches and nodes must not send the freed object to another
     * CPU's lists, out of the attacker's reach. */
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu() < 0 ? 0 : sched_getcpu(), &one);
    sched_setaffinity(0, sizeof one, &one);
    /* stdio's buffer first, so it is not the object attacked. */
    printf("mode=%s\n", mode);
    fflush(stdout);

    if (!strcmp(mode, "bin")) {
        char *a = malloc(SIZE);
        announce(a);
        free(a);
        poison(a, (uintptr_t)target);
        return wait_for_target(mode);
    } else if (!strcmp(mode, "slab")) {
        /* An object that shares its page with another live one, so the
         * trim does not release its slab (a 4 KiB slab of this class). */
        enum { N = 40 };
        char *live[N];
        for (int i = 0; i < N; i++)
            live[i] = malloc(SIZE);
        int pick = -1;
        for (int i = 0; i < N && pick < 0; i++)
            for (int j = 0; j < N; j++)
                if (j != i && ((uintptr_t)live[i] >> 12) == ((uintptr_t)live[j] >> 12))
                    pick = i;
        if (pick < 0) {
            fprintf(stderr, "no two objects share a page\n");
            return 2;
        }
        char *a = live[pick];
        announce(a);
        free(a);
        malloc_trim(0);
        poison(a, (uintptr_t)target);
        int r = wait_for_target(mode);
        for (int i = 0; i < N; i++)
            if (i != pick)
                free(live[i]);
        return r;
    } else if (!strcmp(mode, "thread-exit")) {
        void *objects[2];
        pthread_t t;
        if (pthread_create(&t, NULL, exiting_thread, objects) || pthread_join(t, NULL)) {
            fprintf(stderr, "pthread failed\n");
            return 2;
        }
        announce(objects[1]);
        poison(objects[1], (uintptr_t)target);
        return wait_for_target(mode);
    } else if (!strcmp(mode, "learn-key")) {
        /* Two fresh objects of a fresh run: a is handed out, b was next on
         * the list, so a's first word, if left, is the encoded link to b. */
        char *a = malloc(SIZE);
        char *b = malloc(SIZE);
        uintptr_t leaked = *(volatile uintptr_t *)hidep(a);
        /* The key the word would give under the plain and the
         * address-mixed encodings; the attack uses whichever is
         * consistent (a plain link leaks b itself). */
        uintptr_t key = leaked == (uintptr_t)b ? 0 : leaked ^ (uintptr_t)b ^ bswap((uintptr_t)a);
        printf("leaked=%#lx\n", (unsigned long)leaked);
        announce(a);
        free(a);
        uintptr_t word = (uintptr_t)target ^ key;
        if (key != 0)
            word ^= bswap((uintptr_t)a);
        poison(a, word);
        int r = wait_for_target(mode);
        free(b);
        return r;
    } else if (!strcmp(mode, "fresh-words")) {
        enum { N = 2000 };
        static char *blocks[N];
        size_t sizes[] = { 16, 24, 64, 200, 1000, 4000 };
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < N; i++) {
                size_t size = sizes[i % 6];
                blocks[i] = malloc(size);
                uintptr_t w[2];
                memcpy(w, blocks[i], sizeof w);
                CHECK(w[0] == 0 && w[1] == 0, "round %d: malloc(%zu) = %p holds %#lx %#lx", round, size,
                      (void *)blocks[i], (unsigned long)w[0], (unsigned long)w[1]);
                memset(blocks[i], 0x5a, size);
            }
            for (int i = 0; i < N; i++)
                free(blocks[(i * 7) % N]);
            if (round == 1)
                malloc_trim(0);
        }
        if (checks_failed("heapattack fresh-words"))
            return 1;
        printf("fresh-words: all checks passed\n");
        return 0;
    }
    fprintf(stderr, "unknown mode %s\n", mode);
    return 2;
}
