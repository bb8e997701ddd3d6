/*
 * secure.c — one memory error, chosen by argv[1], of the kinds the secure
 * build (libbuddyslab_secure.so) stops; tests/secure.rs runs each under
 * the default and the secure library and checks what each does.
 *
 *   secure CASE
 *
 * Before the error the program prints "addr=0x..." (the address the
 * allocator's message must name) on stdout. Reaching the end of main means
 * the error went through silently: the program prints "not caught" and
 * exits 3. An unknown case exits 2. The process is pinned to the CPU it
 * starts on, so a per-CPU quarantine sees every free of the case.
 *
 * Cases:
 *   double-free-small     free(p); free(p), 64 bytes
 *   double-free-pages     the same, 64 KiB (a page run)
 *   double-free-large     the same, 1 MiB (a mapping)
 *   free-neighbour        free(b - 16) for b = malloc(16): a live neighbour
 *                         where blocks of 16 bytes sit side by side
 *   realloc-freed         realloc of a freed 64-byte object
 *   usable-freed          malloc_usable_size of a freed 64-byte object
 *   realloc-foreign       realloc of the address of a local variable
 *   usable-foreign        malloc_usable_size of the same
 *   uaf-write-small       a byte written into a freed 64-byte object, then
 *                         more frees of that size
 *   uaf-write-small-threads
 *                         uaf-write-small in a new thread, after 50 threads
 *                         have each freed 200 objects of 64 bytes and, from
 *                         a key destructor that runs again after the
 *                         allocator's own, one more (their quarantines
 *                         come and go with them)
 *   uaf-link-small        the first word of a freed object overwritten (the
 *                         free-list link), then more mallocs and frees
 *   uaf-write-large       a byte written into a freed 1 MiB block
 *   uaf-read-large        a byte read from a freed 1 MiB block
 *   uaf-write-pages       a byte written into a freed 64 KiB block (a page
 *                         run), then more frees of that size
 *   uaf-read-pages        a byte read from a freed 64 KiB block
 *   overflow-1            1 byte written past a 64-byte object, then free
 *   overflow-8            8 bytes written past a 64-byte object, then free
 *   overflow-1-tight      1 byte written past a 24-byte object, then free
 *   overflow-large        1 byte written past a 1 MiB block, then free
 *   overflow-large-guard  bytes written past a 1 MiB block up to its next page
 *   overflow-reused-guard the same past a 1 MiB block the mapping cache
 *                         handed out again
 *   overflow-pages-guard  the same past a 64 KiB block
 *   overflow-grown-guard  the same past a block of 40 KiB grown by realloc
 *                         to 64 KiB and then 80 KiB (in place or moved:
 *                         the guard page follows the data either way)
 *   zero-write            a byte written into malloc(0)
 *   zero-read             a byte read from malloc(0)
 *   layout                prints the addresses of 32 blocks of 200 bytes
 *                         allocated back to back, and exits 0
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

/* Every case uses memory after free on purpose. */
#pragma GCC diagnostic ignored "-Wuse-after-free"

static void announce(void *p)
{
    printf("addr=%p\n", p);
    fflush(stdout);
}

/* Frees and allocates enough blocks of `size` to push anything
 * quarantined out of the quarantine and back into use. */
static void churn(size_t size)
{
    enum { N = 1024 };
    static void *blocks[N];
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < N; i++) {
            blocks[i] = hidep(malloc(size));
        }
        for (int i = 0; i < N; i++) {
            free(blocks[i]);
        }
    }
}

static pthread_key_t late_key;

/* The program's key destructor: it runs before the allocator's (its key
 * is older), sets itself again once, and frees that block in the next
 * round, after the allocator's destructor emptied the thread's
 * quarantine. */
static void late_free(void *arg)
{
    if (arg == (void *)1) {
        void *p = malloc(64);
        CHECK(p != NULL, "malloc in a destructor");
        pthread_setspecific(late_key, p);
    } else {
        free(arg);
    }
}

static void *short_thread(void *arg)
{
    (void)arg;
    void *blocks[200];
    for (int i = 0; i < 200; i++)
        blocks[i] = hidep(malloc(64));
    for (int i = 0; i < 200; i++)
        free(blocks[i]);
    pthread_setspecific(late_key, (void *)1);
    return NULL;
}

static void uaf_write_small(void)
{
    char *p = malloc(64);
    announce(p);
    free(p);
    ((volatile char *)hidep(p))[40] = 'x';
    churn(64);
}

static void *uaf_thread(void *arg)
{
    (void)arg;
    uaf_write_small();
    return NULL;
}

static void double_free(size_t size)
{
    char *p = malloc(size);
    char *again = hidep(p);
    announce(p);
    free(p);
    free(again);
}

/* Writes `len` bytes past the end of a `size`-byte block, then frees it. */
static void overflow(size_t size, size_t len)
{
    char *p = malloc(size);
    announce(p);
    memset(hidep(p) + size, 'x', len);
    free(p);
}

/* Writes past the `size`-byte block `p` byte by byte until the next page
 * boundary after its end, and on into the page after it. */
static void overflow_guard_of(char *p, size_t size)
{
    char *end = p + size;
    char *next_page = (char *)(((uintptr_t)end + 4095) & ~(uintptr_t)4095);
    /* The message names the first byte of the guard page. */
    announce(next_page);
    for (volatile char *q = hidep(end); q < next_page + 4096; q++) {
        *q = 'x';
    }
    free(p);
}

static void overflow_guard(size_t size)
{
    overflow_guard_of(malloc(size), size);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: secure CASE\n");
        return 2;
    }
    const char *c = argv[1];

    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu(), &one);
    sched_setaffinity(0, sizeof one, &one);

    if (!strcmp(c, "double-free-small")) {
        double_free(64);
    } else if (!strcmp(c, "double-free-pages")) {
        double_free(64 * 1024);
    } else if (!strcmp(c, "double-free-large")) {
        double_free(1 << 20);
    } else if (!strcmp(c, "free-neighbour")) {
        /* Two blocks side by side, where the allocator places them so. */
        char *a = malloc(16);
        char *b = malloc(16);
        for (int i = 0; i < 100 && b != a + 16; i++) {
            a = b;
            b = malloc(16);
        }
        announce(b - 16);
        free(hidep(b - 16));
    } else if (!strcmp(c, "realloc-freed") || !strcmp(c, "usable-freed")) {
        char *p = malloc(64);
        announce(p);
        free(p);
        if (c[0] == 'r') {
            p = realloc(hidep(p), 128);
        } else {
            printf("usable=%zu\n", malloc_usable_size(hidep(p)));
        }
    } else if (!strcmp(c, "realloc-foreign") || !strcmp(c, "usable-foreign")) {
        char local[64];
        announce(local);
        if (c[0] == 'r') {
            void *q = realloc(hidep(local), 128);
            (void)q;
        } else {
            printf("usable=%zu\n", malloc_usable_size(hidep(local)));
        }
    } else if (!strcmp(c, "uaf-write-small")) {
        uaf_write_small();
    } else if (!strcmp(c, "uaf-write-small-threads")) {
        CHECK(pthread_key_create(&late_key, late_free) == 0, "pthread_key_create");
        for (int i = 0; i < 50; i++) {
            pthread_t t;
            CHECK(pthread_create(&t, NULL, short_thread, NULL) == 0, "pthread_create");
            pthread_join(t, NULL);
        }
        pthread_t t;
        CHECK(pthread_create(&t, NULL, uaf_thread, NULL) == 0, "pthread_create");
        pthread_join(t, NULL);
    } else if (!strcmp(c, "uaf-link-small")) {
        char *p = malloc(64);
        announce(p);
        free(p);
        /* A forged link: the address of a local variable. */
        char target[64];
        *(void *volatile *)hidep(p) = target;
        churn(64);
    } else if (!strcmp(c, "uaf-write-large") || !strcmp(c, "uaf-read-large")) {
        char *p = malloc(1 << 20);
        memset(p, 1, 1 << 20);
        announce(p + 100);
        free(p);
        volatile char *q = hidep(p);
        if (c[4] == 'w') {
            q[100] = 'x';
        } else {
            printf("read %d\n", q[100]);
        }
    } else if (!strcmp(c, "uaf-write-pages") || !strcmp(c, "uaf-read-pages")) {
        char *p = malloc(64 << 10);
        memset(p, 1, 64 << 10);
        announce(p);
        free(p);
        volatile char *q = hidep(p);
        if (c[4] == 'w') {
            q[100] = 'x';
            churn(64 << 10);
        } else {
            printf("read %d\n", q[100]);
        }
    } else if (!strcmp(c, "overflow-1")) {
        overflow(64, 1);
    } else if (!strcmp(c, "overflow-8")) {
        overflow(64, 8);
    } else if (!strcmp(c, "overflow-1-tight")) {
        overflow(24, 1);
    } else if (!strcmp(c, "overflow-large")) {
        overflow(1 << 20, 1);
    } else if (!strcmp(c, "overflow-large-guard")) {
        overflow_guard((1 << 20) + 100);
    } else if (!strcmp(c, "overflow-reused-guard")) {
        /* Mappings of a few sizes freed and allocated again until the
         * quarantine and the spares are full and blocks come back from
         * the mapping cache; then an overflow of one of those. */
        enum { N = 64 };
        static void *blocks[N];
        for (int round = 0; round < 20; round++) {
            for (int i = 0; i < N; i++) {
                blocks[i] = hidep(malloc((1 << 20) + (size_t)(round * 4096 % 65536)));
            }
            for (int i = 0; i < N; i++) {
                free(blocks[i]);
            }
        }
        overflow_guard(1 << 20);
    } else if (!strcmp(c, "overflow-pages-guard")) {
        overflow_guard(64 * 1024 + 100);
    } else if (!strcmp(c, "overflow-grown-guard")) {
        char *p = malloc(40 * 1024);
        p = realloc(p, 64 * 1024);
        p = realloc(p, 80 * 1024 + 100);
        overflow_guard_of(p, 80 * 1024 + 100);
    } else if (!strcmp(c, "zero-write") || !strcmp(c, "zero-read")) {
        volatile char *p = malloc(0);
        announce((void *)p);
        if (c[5] == 'w') {
            p[0] = 'x';
        } else {
            printf("read %d\n", p[0]);
        }
        free((void *)p);
    } else if (!strcmp(c, "layout")) {
        void *blocks[32];
        for (int i = 0; i < 32; i++) {
            blocks[i] = malloc(200);
        }
        for (int i = 0; i < 32; i++) {
            printf("%p\n", blocks[i]);
        }
        return 0;
    } else {
        fprintf(stderr, "unknown case %s\n", c);
        return 2;
    }
    printf("not caught\n");
    return 3;
}
