/*
 * bintree: the benchmarks game's binary-trees, with malloc for every node.
 *
 * Builds many short-lived perfect binary trees of 16-byte nodes, walks them
 * and frees them, while one long-lived tree stays allocated throughout: a
 * burst of tiny, short-lived objects, as in compilers and interpreters.
 * The work of each depth is split across the threads.
 *
 * Deterministic: the checks only count nodes.
 *
 * usage: bintree [scale=1.0] [threads=2]    stdout: the game's lines
 * The maximum depth is 18 + round(log2(scale)), so each halving of scale
 * halves the work.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define WORKLOAD "bintree"
#include "common.h"

#define MIN_DEPTH 4
#define BASE_DEPTH 18
#define MAX_THREADS 256

struct node {
    struct node *left, *right;
};

static struct node *bottom_up(int depth)
{
    struct node *n = checked(malloc(sizeof *n), "malloc");
    if (depth > 0) {
        n->left = bottom_up(depth - 1);
        n->right = bottom_up(depth - 1);
    } else {
        n->left = n->right = NULL;
    }
    return n;
}

static long check(const struct node *n)
{
    return 1 + (n->left ? check(n->left) + check(n->right) : 0);
}

static void delete_tree(struct node *n)
{
    if (n->left) {
        delete_tree(n->left);
        delete_tree(n->right);
    }
    free(n);
}

static int max_depth, nthreads;
static long checks[MAX_THREADS][64]; /* [thread][depth] */

static void *worker(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int d = MIN_DEPTH; d <= max_depth; d += 2) {
        long iterations = 1L << (max_depth - d + MIN_DEPTH);
        long sum = 0;
        for (long i = id; i < iterations; i += nthreads) {
            struct node *t = bottom_up(d);
            sum += check(t);
            delete_tree(t);
        }
        checks[id][d] = sum;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = parse_args(argc, argv, "threads", 2, MAX_THREADS, &nthreads);
    /* BASE_DEPTH + round(log2(scale)), without libm */
    max_depth = BASE_DEPTH;
    for (double s = scale; s >= 1.4142 && max_depth < 40; s /= 2)
        max_depth++;
    for (double s = scale; s < 0.7071 && max_depth > MIN_DEPTH + 2; s *= 2)
        max_depth--;

    struct node *stretch = bottom_up(max_depth + 1);
    printf("stretch tree of depth %d\t check: %ld\n", max_depth + 1, check(stretch));
    delete_tree(stretch);

    struct node *long_lived = bottom_up(max_depth);

    pthread_t tids[MAX_THREADS];
    run_threads(tids, nthreads, worker, NULL, 0);

    for (int d = MIN_DEPTH; d <= max_depth; d += 2) {
        long sum = 0;
        for (int t = 0; t < nthreads; t++)
            sum += checks[t][d];
        printf("%ld\t trees of depth %d\t check: %ld\n", 1L << (max_depth - d + MIN_DEPTH), d,
               sum);
    }
    printf("long lived tree of depth %d\t check: %ld\n", max_depth, check(long_lived));
    delete_tree(long_lived);
    return 0;
}
