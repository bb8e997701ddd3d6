/*
 * pairs: N malloc+free pairs of one size, after a warm-up, for callgrind.sh.
 *
 * usage: pairs N [size=64] [warmup=10000]
 *
 * callgrind.sh runs this with N and with 0 and divides the difference in
 * instructions by N, which cancels start-up, the warm-up and exit; what is
 * left is one pair plus this loop's own few instructions (a compare, an
 * increment, a store and two calls' set-up).
 */
#include <stdio.h>
#include <stdlib.h>

void *volatile sink; /* the pointer escapes, so the compiler keeps every pair */

static __attribute__((noinline)) void churn(long n, size_t size)
{
    for (long i = 0; i < n; i++) {
        void *p = malloc(size);
        sink = p;
        free(p);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s N [size=64] [warmup=10000]\n", argv[0]);
        return 64;
    }
    long n = atol(argv[1]);
    size_t size = argc > 2 ? (size_t)atol(argv[2]) : 64;
    long warmup = argc > 3 ? atol(argv[3]) : 10000;
    churn(warmup, size);
    churn(n, size);
    return sink ? 0 : 1;
}
