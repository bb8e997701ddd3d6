/* The views' call counts against the program's own: each of THREADS
 * threads (and the main thread) makes ROUNDS rounds of known calls to
 * every entry point, mixing sizes of every tier (slab objects, page runs,
 * large blocks), frees in and out of order, and realloc that stays,
 * moves, starts from null and ends at size 0. `tests/calls.rs` runs it
 * with ROUNDS and with 0 (the same threads) and checks that the counts of
 * BUDDYSLAB_STATS=json differ by exactly what the rounds called.
 *
 * Arguments: THREADS ROUNDS. Prints the calls it made per entry point. */
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rounds;
/* Not known to be null at compile time, so realloc(nothing, n) is not
 * folded into malloc(n). */
static void *volatile nothing;

static void use(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* Per round: 7 malloc, 10 free, 1 calloc, 5 realloc, 2 aligned. */
static void *work(void *arg)
{
    (void)arg;
    static const size_t sizes[] = {16, 64, 1000, 5000, 50000, 300000};
    for (int r = 0; r < rounds; r++) {
        void *held[6];
        for (int i = 0; i < 6; i++) {
            held[i] = malloc(sizes[i] + r % 7);
            use(held[i]);
        }
        for (int i = 5; i >= 0; i--)
            free(held[i]);
        void *p = malloc(64);
        use(p);
        free(p);

        void *c = calloc(3, 100);
        use(c);
        c = realloc(c, 200);    /* may stay */
        c = realloc(c, 20000);  /* moves to pages */
        c = realloc(c, 24);     /* moves back to a slab */
        use(c);
        c = realloc(c, 0);      /* frees */
        void *n = realloc(nothing, 40);
        use(n);
        free(n);

        void *a = memalign(64, 100);
        use(a);
        void *b = NULL;
        if (posix_memalign(&b, 4096, 10000) != 0)
            abort();
        use(b);
        free(a);
        free(b);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 64;
    int threads = atoi(argv[1]);
    rounds = atoi(argv[2]);
    pthread_t t[64];
    if (threads < 0 || threads > 64)
        return 64;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&t[i], NULL, work, NULL) != 0)
            return 1;
    work(NULL);
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    long k = (long)(threads + 1) * rounds;
    /* free: 6 + 1 + 1 (n) + 2 (a, b) = 10; malloc: 6 + 1 = 7 */
    printf("malloc %ld free %ld calloc %ld realloc %ld aligned %ld\n", 7 * k, 10 * k, k, 5 * k, 2 * k);
    return 0;
}
