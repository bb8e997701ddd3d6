/*
 * badfree.c — one bad call to free, realloc or malloc_usable_size, chosen
 * by argv[1]; the allocator must stop the process with abort() after one
 * line on stderr naming the error and the address.
 *
 *   badfree MODE
 *
 * Before the bad call the program prints "addr=0x..." (the address it is
 * about to pass, in the format the allocator prints) on stdout and flushes
 * it, so the test can check that the message names that address. Reaching
 * the end of main means the bad call went through silently: the program
 * then prints "not caught" and exits 3. An unknown mode exits 2.
 *
 * Modes (CALL-CASE; CALL is free, realloc or usable):
 *   free-small-double            free(p); free(p) for a 64-byte object
 *   free-small-double-between    the same with other frees in between
 *   free-pages-double            a 64 KiB page run freed twice
 *   free-large-double            a 1 MiB mapped block freed twice
 *   CALL-stack                   the address of a local variable
 *   CALL-interior-small          p + 64 inside a live 200-byte object
 *   CALL-interior-pages          p + 64 inside a live 64 KiB page run
 *   CALL-interior-large          p + 64 inside a live 1 MiB mapped block
 *   CALL-mmapped                 the start of memory the program mapped
 *   CALL-mmapped-interior        p + 64 inside memory the program mapped
 *   CALL-large-freed             (realloc, usable) a freed 1 MiB block
 *   CALL-small-freed             (realloc, usable) a freed 64-byte object
 *   free-wild                    an address nothing is mapped at
 *   free-remote-double           a 64-byte object of another node (made by
 *                                a thread on CPU 0, freed on CPU 1, after
 *                                one good free from its chunk) freed
 *                                twice: the remote bin's road
 *   free-remote-interior         p + 16 inside such an object
 * (On a machine with one CPU the remote cases are ordinary frees.)
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

enum call { CALL_FREE, CALL_REALLOC, CALL_USABLE };

/* Says which address the bad call will pass. Printed before any block of
 * the case is freed: stdio's first output allocates its buffer, which must
 * not land in the block just freed (the bad call would then hit a live
 * block). */
static void announce(void *p)
{
    printf("addr=%p\n", p);
    fflush(stdout);
}

/* Makes the bad call; the address was announced already. */
static void call_only(enum call call, void *p)
{
    p = hidep(p);
    switch (call) {
    case CALL_FREE:
        free(p);
        break;
    case CALL_REALLOC:
        /* Shrinking and growing both count: a realloc that stayed in place
         * would be as silent as one that moved. */
        hidep(realloc(p, 48));
        break;
    case CALL_USABLE:
        printf("usable=%zu\n", malloc_usable_size(p));
        break;
    }
}

static void bad_call(enum call call, void *p)
{
    announce(p);
    call_only(call, p);
}

static void *filled(size_t size)
{
    void *p = malloc(size);
    if (!p) {
        fprintf(stderr, "malloc(%zu) failed\n", size);
        exit(4);
    }
    memset(p, 0x5a, size);
    return p;
}

/* Pins the calling thread to `cpu` (nothing when the machine has none). */
static void pin(int cpu)
{
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    sched_setaffinity(0, sizeof one, &one);
}

/* A thread on CPU 0 makes two 64-byte objects (one slab's, so one
 * chunk's), left live for main. */
static void *objects_on_cpu0(void *out)
{
    pin(0);
    ((void **)out)[0] = filled(64);
    ((void **)out)[1] = filled(64);
    return NULL;
}

static void *program_mapping(void)
{
    void *m = mmap(NULL, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        perror("mmap");
        exit(4);
    }
    memset(m, 0x5a, 1 << 16);
    return m;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: badfree MODE\n");
        return 2;
    }
    const char *mode = argv[1];
    enum call call;
    const char *rest;
    if (!strncmp(mode, "free-", 5)) {
        call = CALL_FREE;
        rest = mode + 5;
    } else if (!strncmp(mode, "realloc-", 8)) {
        call = CALL_REALLOC;
        rest = mode + 8;
    } else if (!strncmp(mode, "usable-", 7)) {
        call = CALL_USABLE;
        rest = mode + 7;
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }

    /* Some ordinary traffic first, so the thread cache and the tiers are
     * warm, as in a real program. */
    void *warm[64];
    for (int i = 0; i < 64; i++)
        warm[i] = filled((size_t)(i * 97 % 3000) + 1);
    for (int i = 0; i < 64; i += 2)
        free(warm[i]);

    volatile char local[128];
    memset((char *)local, 1, sizeof local);

    if (call == CALL_FREE && !strcmp(rest, "small-double")) {
        void *p = filled(64), *alias = hidep(p);
        announce(p);
        free(p);
        call_only(call, alias);
    } else if (call == CALL_FREE && !strcmp(rest, "small-double-between")) {
        void *p = filled(64), *alias = hidep(p);
        void *q = filled(64);
        void *r = filled(64);
        void *s = filled(1000);
        announce(p);
        free(p);
        free(q);
        free(s);
        free(r);
        call_only(call, alias);
    } else if (call == CALL_FREE && (!strcmp(rest, "remote-double") || !strcmp(rest, "remote-interior"))) {
        /* This thread on CPU 1, its node CPU 1's (a refill sets it: a
         * size nothing above used), the object from a thread on CPU 0. */
        pin(1);
        free(malloc(5000));
        void *pair[2] = {NULL, NULL};
        pthread_t t;
        if (pthread_create(&t, NULL, objects_on_cpu0, pair) || pthread_join(t, NULL)) {
            fprintf(stderr, "pthread failed\n");
            return 4;
        }
        /* A good remote free first: this thread now remembers the chunk,
         * so the bad call below takes free's path for remote objects of
         * remembered chunks (heap::free_other), not the lookup's. */
        void *p = pair[0];
        free(pair[1]);
        if (!strcmp(rest, "remote-double")) {
            void *alias = hidep(p);
            announce(p);
            free(p);
            call_only(call, alias);
        } else {
            void *inside = (char *)p + 16;
            announce(inside);
            call_only(call, inside);
        }
    } else if (call == CALL_FREE && !strcmp(rest, "pages-double")) {
        void *p = filled(64 << 10), *alias = hidep(p);
        announce(p);
        free(p);
        call_only(call, alias);
    } else if (call == CALL_FREE && !strcmp(rest, "large-double")) {
        void *p = filled(1 << 20), *alias = hidep(p);
        announce(p);
        free(p);
        call_only(call, alias);
    } else if (call != CALL_FREE && !strcmp(rest, "small-freed")) {
        /* A freed 64-byte object, still on a free list: a realloc that
         * stayed in place would hand it back alive while the next malloc
         * hands it out again. */
        void *p = filled(64), *alias = hidep(p);
        announce(p);
        free(p);
        call_only(call, alias);
    } else if (call != CALL_FREE && !strcmp(rest, "large-freed")) {
        void *p = filled(1 << 20), *alias = hidep(p);
        announce(p);
        free(p);
        call_only(call, alias);
    } else if (!strcmp(rest, "stack")) {
        bad_call(call, (char *)local + 16);
    } else if (!strcmp(rest, "interior-small")) {
        bad_call(call, (char *)filled(200) + 64);
    } else if (!strcmp(rest, "interior-pages")) {
        bad_call(call, (char *)filled(64 << 10) + 64);
    } else if (!strcmp(rest, "interior-large")) {
        bad_call(call, (char *)filled(1 << 20) + 64);
    } else if (!strcmp(rest, "mmapped")) {
        bad_call(call, program_mapping());
    } else if (!strcmp(rest, "mmapped-interior")) {
        bad_call(call, (char *)program_mapping() + 64);
    } else if (call == CALL_FREE && !strcmp(rest, "wild")) {
        /* Below mmap_min_addr: nothing can be mapped there. */
        bad_call(call, (void *)(uintptr_t)0x1230);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    for (int i = 1; i < 64; i += 2)
        free(warm[i]);
    printf("not caught: %s returned\n", mode);
    return 3;
}
