/*
 * short.c — running short of memory, one mode per run:
 *
 *   short rlimit [MIB]    RLIMIT_AS set MIB (default 64) above the current
 *                         address-space size; then, per tier (16-byte and
 *                         3000-byte objects, 40 KiB page runs, 1 MiB
 *                         mapped blocks), allocate until malloc returns
 *                         NULL: errno must be ENOMEM, calloc, realloc,
 *                         posix_memalign and aligned_alloc must fail
 *                         cleanly too (realloc leaving its block intact),
 *                         every block must still hold what was written,
 *                         at least half the limit's worth must fit (what
 *                         the earlier tiers freed is usable by the next),
 *                         and after freeing it all the same amount can be
 *                         allocated again
 *   short brk-blocked     after the break has grown, a mapping placed
 *                         where the next chunk of the break would go:
 *                         allocating 64 MiB more must still work (the
 *                         allocator falls back to mmap), silently
 *
 * Prints "all checks passed" on success; failures on stderr, exit 1.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"

/* Blocks are kept on a list linked through their first word; the second
 * word holds a tag that the rest of the block repeats every 64 bytes. */
struct block {
    struct block *next;
    uint64_t tag;
};

static size_t fill(struct block *b, size_t size, uint64_t tag)
{
    b->tag = tag;
    for (size_t off = 64; off + sizeof tag <= size; off += 64)
        memcpy((char *)b + off, &tag, sizeof tag);
    return size;
}

static int intact(const struct block *b, size_t size)
{
    for (size_t off = 64; off + sizeof b->tag <= size; off += 64)
        if (memcmp((const char *)b + off, &b->tag, sizeof b->tag))
            return 0;
    return 1;
}

/* Allocates blocks of `size` until malloc fails (or `limit` blocks);
 * returns the count and the list. */
static size_t allocate_until_null(size_t size, size_t limit, struct block **list, int *errno_out)
{
    size_t n = 0;
    *errno_out = 0;
    while (n < limit) {
        errno = 0;
        struct block *b = malloc(size);
        if (!b) {
            *errno_out = errno;
            break;
        }
        fill(b, size, (uint64_t)(uintptr_t)b ^ size);
        b->next = *list;
        *list = b;
        n++;
    }
    return n;
}

static size_t free_all(struct block **list, size_t size)
{
    size_t bad = 0, n = 0;
    while (*list) {
        struct block *b = *list;
        *list = b->next;
        if (b->tag != ((uint64_t)(uintptr_t)b ^ size) || !intact(b, size))
            bad++;
        free(b);
        n++;
    }
    CHECK(bad == 0, "%zu of %zu blocks of %zu bytes changed", bad, n, size);
    return n;
}

/* The other entry points, each while memory is exhausted. */
static void others_fail_cleanly(void)
{
    errno = 0;
    void *p = calloc(1 << 20, 4);
    CHECK(p == NULL && errno == ENOMEM, "calloc(1M, 4) at the limit: %p, errno %d", p, errno);
    free(p);
    void *q = NULL;
    int rc = posix_memalign(&q, 1 << 16, 8 << 20);
    CHECK(rc == ENOMEM && q == NULL, "posix_memalign at the limit: rc %d, %p", rc, q);
    errno = 0;
    p = aligned_alloc(4096, 8 << 20);
    CHECK(p == NULL && errno == ENOMEM, "aligned_alloc at the limit: %p, errno %d", p, errno);
    free(p);
}

static void realloc_fails_cleanly(struct block *b, size_t size)
{
    if (!b)
        return;
    errno = 0;
    void *r = realloc(b, 256 << 20);
    CHECK(r == NULL && errno == ENOMEM, "realloc to 256 MiB at the limit: %p, errno %d", r, errno);
    if (r) {
        /* It worked after all: put it back the way it was. */
        b = realloc(r, size);
        CHECK(b != NULL, "realloc back");
    }
    CHECK(b && intact(b, size), "a block changed after its realloc failed");
}

static long vm_size_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0;
    if (f) {
        if (fscanf(f, "%ld", &pages) != 1)
            pages = 0;
        fclose(f);
    }
    return pages * sysconf(_SC_PAGESIZE);
}

static int rlimit_mode(long mib)
{
    /* stdio's buffer before the limit, so printing still works. */
    printf("rlimit: address space limited to %ld MiB above the current size\n", mib);
    fflush(stdout);
    struct rlimit rl = {.rlim_cur = (rlim_t)(vm_size_bytes() + (mib << 20)), .rlim_max = RLIM_INFINITY};
    if (setrlimit(RLIMIT_AS, &rl)) {
        perror("setrlimit");
        return 1;
    }
    static const size_t sizes[] = {16, 3000, 40 << 10, 1 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t size = sizes[s];
        struct block *list = NULL;
        int err;
        /* Enough blocks to pass any limit a few times over, so a NULL is
         * certain; the limit stops it long before. */
        size_t first = allocate_until_null(size, (size_t)(4 * mib << 20) / size + 1000, &list, &err);
        CHECK(err == ENOMEM, "%zu-byte blocks: malloc returned NULL with errno %d, not ENOMEM (after %zu blocks)", size,
              err, first);
        /* Address space the earlier tiers took and gave back is usable by
         * this one: at least half the limit's worth fits. */
        CHECK(first * size >= (size_t)(mib << 20) / 2,
              "%zu-byte blocks: only %zu fit under a %ld MiB limit after the other tiers were freed", size, first, mib);
        others_fail_cleanly();
        realloc_fails_cleanly(list, size);
        /* Still consistent: a little churn at the limit, a few NULLs. */
        for (int i = 0; i < 1000; i++) {
            void *p = malloc((size_t)(i * 131 % 5000) + 1);
            free(p);
        }
        size_t freed = free_all(&list, size);
        CHECK(freed == first, "%zu-byte blocks: freed %zu of %zu", size, freed, first);
        /* Memory freed is usable again: at least as many fit a second time
         * (a few percent less may fit while freed page-tier and slab memory
         * is still cached in fragments of other shapes). */
        struct block *again = NULL;
        size_t second = allocate_until_null(size, first, &again, &err);
        CHECK(second * 100 >= first * 95, "%zu-byte blocks: %zu fit before the limit, only %zu after freeing them", size,
              first, second);
        free_all(&again, size);
        malloc_trim(0);
        printf("rlimit: %zu blocks of %zu bytes before ENOMEM, %zu again after freeing\n", first, size, second);
        fflush(stdout);
    }
    return 0;
}

/* The kernel's program break. Not sbrk(0): glibc caches the break it set
 * itself and does not see the allocator's raw brk calls. */
static void *current_break(void)
{
    return (void *)syscall(SYS_brk, 0);
}

static int brk_blocked_mode(void)
{
    const uintptr_t chunk = 4 << 20;
    void *start_brk = current_break();
    /* Let the break grow: the allocator takes chunks from it. */
    struct block *list = NULL;
    int err;
    size_t n = allocate_until_null(200, (8 << 20) / 200, &list, &err);
    void *grown_brk = current_break();
    printf("brk-blocked: break %p -> %p after %zu small blocks\n", start_brk, grown_brk, n);
    CHECK((uintptr_t)grown_brk > (uintptr_t)start_brk, "the break did not grow: the allocator does not use brk here");
    /* Block the next chunk of the break. */
    uintptr_t next = ((uintptr_t)grown_brk + chunk - 1) & ~(chunk - 1);
    void *blocker = mmap((void *)next, 1 << 16, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    CHECK(blocker == (void *)next, "could not place the blocking mapping at %p: %s", (void *)next, strerror(errno));
    /* 64 MiB more in slabs and page runs: must come from mmap. */
    struct block *more = NULL, *runs = NULL;
    size_t m = allocate_until_null(1000, (48 << 20) / 1000, &more, &err);
    CHECK(m == (48 << 20) / 1000, "small blocks stopped at %zu with errno %d after brk was blocked", m, err);
    size_t r = allocate_until_null(64 << 10, (16 << 20) / (64 << 10), &runs, &err);
    CHECK(r == (16 << 20) / (64 << 10), "page runs stopped at %zu with errno %d after brk was blocked", r, err);
    void *after_brk = current_break();
    CHECK((uintptr_t)after_brk <= next, "the break grew into the blocking mapping: %p", after_brk);
    free_all(&more, 1000);
    free_all(&runs, 64 << 10);
    free_all(&list, 200);
    printf("brk-blocked: break stayed at %p; 64 MiB allocated from mmap\n", after_brk);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: short rlimit [MIB] | short brk-blocked\n");
        return 2;
    }
    int rc;
    if (!strcmp(argv[1], "rlimit"))
        rc = rlimit_mode(argc > 2 ? atol(argv[2]) : 64);
    else if (!strcmp(argv[1], "brk-blocked"))
        rc = brk_blocked_mode();
    else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    if (rc || checks_failed("short %s", argv[1]))
        return 1;
    printf("all checks passed\n");
    return 0;
}
