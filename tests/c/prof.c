/* The heap profile's test program: two call sites keep memory live, one
 * 50 MB and one 1 MB, in blocks of the same size class and interleaved,
 * so the sampler sees them side by side. `tests/prof.rs` runs it with
 * BUDDYSLAB_PROF set and checks what `buddyslab prof` says.
 *
 * Arguments: [block size] [linger]  (default 1000 bytes; a size above the
 * slab tier's 32 KiB exercises page runs and large blocks instead; with
 * `linger`, the program then churns small blocks until it is killed, so
 * only the interval can have written its profile). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BIG_BYTES (50u * 1000 * 1000)
#define SMALL_BYTES (1u * 1000 * 1000)

/* noinline: each is a call site of its own in the profile. */
__attribute__((noinline)) static void *fifty_megabytes_site(size_t n)
{
    void *p = malloc(n);
    if (p)
        memset(p, 1, n);
    return p;
}

__attribute__((noinline)) static void *one_megabyte_site(size_t n)
{
    void *p = malloc(n);
    if (p)
        memset(p, 2, n);
    return p;
}

/* Churn that is freed at once: must not show as live. Its blocks are a
 * third of the size, in another size class: within one class the sampler
 * gives a sample to whichever request finds the thread's bin empty, and a
 * call site that frees at once what it allocates can take samples from
 * one that keeps its blocks (see the bias described in src/profile.rs). */
__attribute__((noinline)) static void churn_site(size_t n)
{
    void *p = malloc(n);
    if (p)
        memset(p, 3, n);
    /* Keeps the compiler from dropping the malloc/free pair. */
    __asm__ volatile("" : : "r"(p) : "memory");
    free(p);
}

int main(int argc, char **argv)
{
    size_t block = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000;
    size_t big = BIG_BYTES / block, small = SMALL_BYTES / block;
    void **keep = calloc(big + small, sizeof *keep);
    if (!keep) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    size_t k = 0;
    for (size_t i = 0; i < big; i++) {
        keep[k++] = fifty_megabytes_site(block);
        if (i % (big / small) == 0 && k < big + small)
            keep[k++] = one_megabyte_site(block);
        churn_site(block / 3);
    }
    for (size_t i = 0; i < k; i++) {
        if (!keep[i]) {
            fprintf(stderr, "allocation %zu failed\n", i);
            return 1;
        }
    }
    printf("kept %zu blocks of %zu bytes live\n", k, block);
    fflush(stdout);
    if (argc > 2 && strcmp(argv[2], "linger") == 0) {
        /* Bursts that empty and refill the thread's bins: slow paths,
         * where the interval is checked. */
        static void *burst[512];
        for (;;) {
            for (int i = 0; i < 512; i++)
                burst[i] = malloc(100);
            for (int i = 0; i < 512; i++)
                free(burst[i]);
            usleep(1000);
        }
    }
    return 0; /* the blocks stay live: the profile at exit holds them */
}
