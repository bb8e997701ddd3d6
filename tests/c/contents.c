/*
 * contents.c — what was written stays written.
 *
 * 1. 200k live objects of mixed sizes (1 B .. 300 KiB, skewed small), each
 *    filled over its whole usable size with a pattern derived from its slot
 *    and generation; then random frees, reallocs, callocs and aligned
 *    allocations driven by a fixed-seed PRNG, every object's contents checked
 *    before it is freed or resized and all of them checked at the end.
 * 2. realloc across every tier boundary (16 B -> 40 KiB -> 200 KiB -> 5 MiB
 *    -> 100 B and back), the common prefix checked at each step.
 * 3. At checkpoints, the live ranges [p, p + usable) sorted and checked for
 *    overlap.
 *
 * Prints one summary line on stdout; failures on stderr; exits 1 on any.
 * Deterministic: the PRNG seed is fixed (argv[1] overrides it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PRINTED 40
#include "common.h"

static uint64_t rng_state;

static uint64_t rng(void)
{
    return xorshift64star(&rng_state);
}

static size_t below(size_t n)
{
    return (size_t)(rng() % n);
}

/* Skewed small: most objects are tiny, a few are huge. */
static size_t random_size(void)
{
    unsigned r = (unsigned)below(10000);
    if (r < 7000)
        return 1 + below(128);
    if (r < 9500)
        return 129 + below(1024 - 128);
    if (r < 9967)
        return 1025 + below(8 * 1024 - 1024);
    if (r < 9997)
        return 8 * 1024 + below(120 * 1024);
    return 128 * 1024 + below(172 * 1024 + 1); /* up to 300 KiB */
}

/* The pattern: byte i of an object with tag t. Words, for speed. */
static inline uint64_t word_at(uint64_t tag, size_t word_index)
{
    uint64_t x = tag ^ (word_index * 0x9E3779B97F4A7C15ULL);
    x ^= x >> 29;
    return x;
}

static void fill(unsigned char *p, size_t n, uint64_t tag)
{
    size_t words = n / 8;
    for (size_t w = 0; w < words; w++) {
        uint64_t v = word_at(tag, w);
        memcpy(p + w * 8, &v, 8);
    }
    uint64_t last = word_at(tag, words);
    memcpy(p + words * 8, &last, n % 8);
}

/* Returns n if [p, p+n) holds fill(tag)'s pattern, else the first bad byte. */
static size_t verify(const unsigned char *p, size_t n, uint64_t tag)
{
    size_t words = n / 8;
    for (size_t w = 0; w < words; w++) {
        uint64_t v;
        memcpy(&v, p + w * 8, 8);
        if (v != word_at(tag, w)) {
            uint64_t want = word_at(tag, w);
            for (size_t b = 0; b < 8; b++)
                if (((const unsigned char *)&v)[b] != ((const unsigned char *)&want)[b])
                    return w * 8 + b;
        }
    }
    uint64_t want = word_at(tag, words);
    for (size_t b = 0; b < n % 8; b++)
        if (p[words * 8 + b] != ((const unsigned char *)&want)[b])
            return words * 8 + b;
    return n;
}

struct slot {
    unsigned char *p;
    size_t size;   /* requested */
    size_t usable; /* malloc_usable_size at the time it was filled */
    uint64_t tag;
};

#define NSLOTS 200000
static struct slot slots[NSLOTS];
static uint64_t generation;

static uint64_t new_tag(size_t index, size_t size)
{
    generation++;
    return (generation << 40) ^ ((uint64_t)index << 20) ^ size ^ 0xA5A5A5A5ULL;
}

/* Checks slot i's contents (whole usable size); returns 1 if intact. */
static int check_slot(size_t i, const char *when)
{
    struct slot *s = &slots[i];
    size_t bad = verify(s->p, s->usable, s->tag);
    CHECK(bad == s->usable,
          "slot %zu (%p, size %zu, usable %zu) corrupted at byte %zu %s",
          i, (void *)s->p, s->size, s->usable, bad, when);
    return bad == s->usable;
}

static void fill_slot(size_t i)
{
    struct slot *s = &slots[i];
    s->usable = malloc_usable_size(s->p);
    CHECK(s->usable >= s->size, "malloc_usable_size(%p) = %zu < requested %zu",
          (void *)s->p, s->usable, s->size);
    if (s->usable < s->size)
        s->usable = s->size;
    s->tag = new_tag(i, s->size);
    fill(s->p, s->usable, s->tag);
}

static void alloc_slot(size_t i)
{
    struct slot *s = &slots[i];
    size_t n = random_size();
    unsigned how = (unsigned)below(20);
    if (how == 0) {
        s->p = hidep(calloc(1, n));
        CHECK(s->p != NULL, "calloc(1, %zu) returned NULL", n);
        if (s->p)
            CHECK(first_nonzero(s->p, n) == n, "calloc(1, %zu) = %p is not zeroed", n,
                  (void *)s->p);
    } else if (how == 1) {
        size_t align = (size_t)32 << below(8); /* 32 .. 4096 */
        s->p = hidep(memalign(align, n));
        CHECK(s->p != NULL && ((uintptr_t)s->p & (align - 1)) == 0,
              "memalign(%zu, %zu) = %p", align, n, (void *)s->p);
    } else {
        s->p = hidep(malloc(n));
        CHECK(s->p != NULL, "malloc(%zu) returned NULL", n);
    }
    if (!s->p) {
        s->size = 0;
        return;
    }
    s->size = n;
    fill_slot(i);
}

static void free_slot(size_t i)
{
    check_slot(i, "before free");
    free(slots[i].p);
    slots[i].p = NULL;
    slots[i].size = 0;
}

static void realloc_slot(size_t i)
{
    struct slot *s = &slots[i];
    check_slot(i, "before realloc");
    size_t n = random_size();
    unsigned char *q = hidep(realloc(s->p, n));
    CHECK(q != NULL, "realloc(%p, %zu) returned NULL", (void *)s->p, n);
    if (!q)
        return; /* the old block stays valid and filled */
    size_t keep = s->size < n ? s->size : n;
    size_t bad = verify(q, keep, s->tag);
    CHECK(bad == keep, "realloc(slot %zu: %zu -> %zu) lost the prefix at byte %zu of %zu",
          i, s->size, n, bad, keep);
    s->p = q;
    s->size = n;
    fill_slot(i);
}

struct range {
    uintptr_t start, end;
    size_t slot;
};

static struct range ranges[NSLOTS];

static int cmp_range(const void *a, const void *b)
{
    const struct range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

static void check_overlap(const char *where)
{
    size_t n = 0;
    for (size_t i = 0; i < NSLOTS; i++) {
        if (!slots[i].p)
            continue;
        uintptr_t start = (uintptr_t)slots[i].p;
        ranges[n].start = start;
        ranges[n].end = start + malloc_usable_size(slots[i].p);
        ranges[n].slot = i;
        n++;
    }
    qsort(ranges, n, sizeof ranges[0], cmp_range);
    int printed = 0;
    for (size_t k = 1; k < n; k++) {
        if (ranges[k - 1].end > ranges[k].start) {
            CHECK(0, "%s: live blocks overlap: slot %zu [%#lx, %#lx) and slot %zu [%#lx, %#lx)",
                  where, ranges[k - 1].slot, (unsigned long)ranges[k - 1].start,
                  (unsigned long)ranges[k - 1].end, ranges[k].slot,
                  (unsigned long)ranges[k].start, (unsigned long)ranges[k].end);
            if (++printed > 5)
                break;
        }
    }
}

static void check_all(const char *when)
{
    for (size_t i = 0; i < NSLOTS; i++)
        if (slots[i].p)
            check_slot(i, when);
}

/* realloc one block through every tier and back, twice over. */
static void tier_walk(void)
{
    static const size_t path[] = {
        16, 40 * 1024, 200 * 1024, 5u << 20, 100,
        5u << 20, 200 * 1024, 40 * 1024, 16,
        1, 4096, 128 * 1024, 128 * 1024 + 1, 127 * 1024, 4u << 20, (4u << 20) + 1, 24,
    };
    enum { NP = sizeof path / sizeof path[0] };
    for (int round = 0; round < 3; round++) {
        size_t size = path[0];
        unsigned char *p = hidep(malloc(size));
        CHECK(p != NULL, "malloc(%zu) returned NULL", size);
        if (!p)
            return;
        uint64_t tag = 0x1234ULL + (uint64_t)round;
        fill(p, size, tag);
        /* Something else live between steps, so realloc cannot always
         * grow in place. */
        void *other[NP];
        for (size_t k = 1; k < NP; k++) {
            size_t n = path[k];
            unsigned char *q = hidep(realloc(p, n));
            CHECK(q != NULL, "tier walk: realloc(%zu -> %zu) returned NULL", size, n);
            if (!q) {
                other[k] = NULL;
                continue;
            }
            size_t keep = size < n ? size : n;
            size_t bad = verify(q, keep, tag);
            CHECK(bad == keep, "tier walk round %d: realloc(%zu -> %zu) lost byte %zu of %zu",
                  round, size, n, bad, keep);
            p = q;
            size = n;
            tag += 0x100;
            fill(p, size, tag);
            other[k] = round == 1 ? hidep(malloc(n)) : NULL;
        }
        CHECK(verify(p, size, tag) == size, "tier walk round %d: final block corrupted", round);
        free(p);
        for (size_t k = 1; k < NP; k++)
            free(other[k]);
    }
}

int main(int argc, char **argv)
{
    rng_state = argc > 1 ? strtoull(argv[1], NULL, 0) : 0x9E3779B97F4A7C15ULL;
    if (rng_state == 0)
        rng_state = 1;

    tier_walk();

    for (size_t i = 0; i < NSLOTS; i++)
        alloc_slot(i);
    check_overlap("after filling 200k slots");

    size_t live_bytes = 0;
    for (size_t i = 0; i < NSLOTS; i++)
        live_bytes += slots[i].size;

    enum { OPS = 400000 };
    for (size_t op = 0; op < OPS; op++) {
        size_t i = below(NSLOTS);
        if (!slots[i].p) {
            alloc_slot(i);
        } else {
            unsigned r = (unsigned)below(10);
            if (r < 5)
                free_slot(i);
            else if (r < 9)
                realloc_slot(i);
            else
                check_slot(i, "during the random phase");
        }
        if (op == OPS / 2) {
            check_overlap("half-way through the random phase");
            tier_walk();
        }
        if (atomic_load(&failures) > MAX_PRINTED)
            break;
    }
    check_overlap("after the random phase");
    check_all("at the end");

    /* Free in an order unrelated to allocation order. */
    for (size_t k = 0; k < NSLOTS; k++) {
        size_t i = (k * 7919) % NSLOTS; /* 7919 is prime, so this visits all */
        if (slots[i].p)
            free_slot(i);
    }
    tier_walk();

    if (checks_failed("contents"))
        return 1;
    printf("contents: all checks passed (%zu objects, %zu MiB live at the start)\n",
           (size_t)NSLOTS, live_bytes >> 20);
    return 0;
}
