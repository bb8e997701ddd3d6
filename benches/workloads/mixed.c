/*
 * mixed: sizes from 8 B to 2 MiB, and realloc growth.
 *
 * Each thread keeps a small table of live objects whose sizes are spread
 * evenly over the octaves from 8 B to 2 MiB (as many 8..16 B objects as
 * 1..2 MiB ones). Per step it grows an object by half with realloc (60 %),
 * shrinks one to half (10 %), or frees one and allocates a fresh one (30 %);
 * growth past 2 MiB starts the object over. Every page of every object is
 * written once, so the page faults an allocator causes (or saves by reusing
 * memory) show in the time, and realloc must keep what was written:
 * the first 8 bytes (a tag), the last 8 (tag ^ size) and one byte per 4 KiB
 * page, all checked before every realloc and free.
 *
 * Deterministic: threads are independent, each with its own random state.
 *
 * usage: mixed [scale=1.0] [threads=2]      stdout: one checksum line
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 48
#define MIN_SIZE 8
#define MAX_SIZE (2u << 20)
#define PAGE 4096
#define MAX_THREADS 256

static uint64_t rng_next(uint64_t *state) /* splitmix64 */
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

struct slot {
    unsigned char *ptr;
    size_t size;
    uint64_t tag;
};

struct thread {
    uint64_t rng;
    uint64_t checksum;
    struct slot slots[SLOTS];
};

static long steps;

static void corrupted(const struct slot *s, const char *what)
{
    fprintf(stderr, "mixed: object %p (size %zu) corrupted: %s\n", (void *)s->ptr, s->size,
            what);
    abort();
}

/* Page byte k (k >= 1) lives at k * PAGE, if it stays clear of the tail. */
static int has_page_byte(size_t size, size_t k)
{
    return size >= 16 && k * PAGE + 1 <= size - 8;
}

/* Writes the page bytes at offsets >= from, and the tail. */
static void write_from(struct slot *s, size_t from)
{
    for (size_t k = from / PAGE + (from % PAGE != 0); has_page_byte(s->size, k); k++)
        if (k > 0)
            s->ptr[k * PAGE] = (unsigned char)(s->tag + k);
    if (s->size >= 16) {
        uint64_t tail = s->tag ^ s->size;
        memcpy(s->ptr + s->size - 8, &tail, 8);
    }
}

static uint64_t verify(const struct slot *s)
{
    uint64_t head;
    memcpy(&head, s->ptr, 8);
    if (head != s->tag)
        corrupted(s, "head");
    if (s->size >= 16) {
        uint64_t tail;
        memcpy(&tail, s->ptr + s->size - 8, 8);
        if (tail != (s->tag ^ s->size))
            corrupted(s, "tail");
    }
    for (size_t k = 1; has_page_byte(s->size, k); k++)
        if (s->ptr[k * PAGE] != (unsigned char)(s->tag + k))
            corrupted(s, "page byte");
    return s->tag + s->size;
}

static void fresh(struct slot *s, uint64_t r)
{
    unsigned octave = 3 + (unsigned)((r >> 16) % 18); /* 2^3 .. 2^20 */
    s->size = ((size_t)1 << octave) + (size_t)((r >> 32) & (((uint64_t)1 << octave) - 1));
    s->ptr = malloc(s->size);
    if (!s->ptr) {
        perror("mixed: malloc");
        exit(2);
    }
    s->tag = r;
    memcpy(s->ptr, &r, 8);
    write_from(s, 8);
}

static void resize(struct slot *s, size_t size)
{
    size_t old = s->size;
    unsigned char *p = realloc(s->ptr, size);
    if (!p) {
        perror("mixed: realloc");
        exit(2);
    }
    s->ptr = p;
    s->size = size;
    if (size > old) /* growth: the old tail may now hold page bytes */
        write_from(s, old >= 16 ? old - 8 : 8);
    else
        write_from(s, size); /* shrink: only the tail moves */
}

static void *worker(void *arg)
{
    struct thread *t = arg;
    for (long i = 0; i < steps; i++) {
        uint64_t r = rng_next(&t->rng);
        struct slot *s = &t->slots[r % SLOTS];
        if (!s->ptr) {
            fresh(s, r);
            continue;
        }
        t->checksum = t->checksum * 31 + verify(s);
        unsigned action = (unsigned)((r >> 8) % 10);
        size_t grown = s->size + s->size / 2 + 8 + (size_t)(r >> 58);
        if (action < 6 && grown <= MAX_SIZE) {
            resize(s, grown);
        } else if (action == 6) {
            resize(s, s->size / 2 > MIN_SIZE ? s->size / 2 : MIN_SIZE);
        } else {
            free(s->ptr);
            fresh(s, r);
        }
    }
    for (int i = 0; i < SLOTS; i++)
        if (t->slots[i].ptr) {
            t->checksum = t->checksum * 31 + verify(&t->slots[i]);
            free(t->slots[i].ptr);
        }
    return NULL;
}

int main(int argc, char **argv)
{
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    int nthreads = argc > 2 ? atoi(argv[2]) : 2;
    if (scale <= 0 || nthreads < 1 || nthreads > MAX_THREADS) {
        fprintf(stderr, "usage: %s [scale>0] [threads=1..%d]\n", argv[0], MAX_THREADS);
        return 64;
    }
    steps = (long)(60000 * scale);

    struct thread *threads = calloc((size_t)nthreads, sizeof *threads);
    pthread_t tids[MAX_THREADS];
    if (!threads)
        return 2;
    for (int i = 0; i < nthreads; i++) {
        threads[i].rng = 0xabcdefULL * (uint64_t)(i + 1);
        if (pthread_create(&tids[i], NULL, worker, &threads[i])) {
            perror("mixed: pthread_create");
            return 2;
        }
    }
    uint64_t checksum = 0;
    for (int i = 0; i < nthreads; i++) {
        pthread_join(tids[i], NULL);
        checksum = checksum * 1000003 + threads[i].checksum;
    }
    printf("mixed threads=%d steps=%ld checksum=%016llx\n", nthreads, steps * nthreads,
           (unsigned long long)checksum);
    free(threads);
    return 0;
}
