/*
 * api_edges.c — every edge of the glibc malloc API that programs rely on.
 *
 * Run it plain (glibc) or with LD_PRELOAD=libbuddyslab.so; it must pass
 * both ways.  Each failed check prints "FAIL <line>: <what>" on stderr; the
 * program exits 1 if any check failed, 0 otherwise, and prints one summary
 * line on stdout.
 *
 * The checks follow glibc's documented behaviour on x86-64: 16-byte
 * alignment for every size, unique non-NULL malloc(0), NULL + ENOMEM for
 * every size overflow, EINVAL (and an untouched out-pointer) for a bad
 * posix_memalign alignment, realloc(p, 0) frees and returns NULL, free keeps
 * errno, and the extensions (cfree, mallopt, mallinfo2, malloc_trim,
 * malloc_stats) exist and answer plausibly; free_sized and
 * free_aligned_sized are exercised where the malloc in use defines them.
 *
 * Sizes and pointers pass through hide()/hidep() (common.h) so the compiler
 * can neither fold a call whose result it thinks it knows (malloc(SIZE_MAX),
 * calloc's zeroes) nor delete an unused malloc/free pair.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096u
#define MAX_PRINTED 60
#include "common.h"

static int aligned_to(const void *p, size_t align)
{
    return ((uintptr_t)p & (align - 1)) == 0;
}

/* Fill [p, p+n) with a pattern derived from seed. */
static void fill(void *p, size_t n, unsigned seed)
{
    unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(seed + i * 131u + (i >> 9));
}

/* Index of the first byte that differs from fill()'s pattern, or n. */
static size_t first_bad(const void *p, size_t n, unsigned seed)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != (unsigned char)(seed + i * 131u + (i >> 9)))
            return i;
    return n;
}

/* ---------------------------------------------------------------------- */

/* Runs first: glibc raises its mmap threshold when a big mmapped block is
 * freed, after which a 1 MiB block would no longer count in hblkhd. */
static void test_mallinfo2(void)
{
    void *small[100];
    for (int i = 0; i < 100; i++) {
        small[i] = hidep(malloc(hide(32 + i * 8)));
        CHECK(small[i] != NULL, "malloc(%d) for mallinfo2 returned NULL", 32 + i * 8);
    }
    struct mallinfo2 m1 = mallinfo2();
    CHECK(m1.arena > 0, "mallinfo2().arena == 0 with 100 small blocks live");
    CHECK(m1.uordblks > 0, "mallinfo2().uordblks == 0 with 100 small blocks live");
    CHECK(m1.uordblks <= m1.arena, "mallinfo2(): uordblks %zu > arena %zu",
          m1.uordblks, m1.arena);
    CHECK(m1.fordblks <= m1.arena, "mallinfo2(): fordblks %zu > arena %zu",
          m1.fordblks, m1.arena);

    void *big = hidep(malloc(hide(1u << 20)));
    CHECK(big != NULL, "malloc(1 MiB) returned NULL");
    if (big)
        memset(big, 0x5a, 1u << 20);
    struct mallinfo2 m2 = mallinfo2();
    CHECK(m2.hblkhd >= m1.hblkhd + (1u << 20),
          "mallinfo2().hblkhd did not grow by 1 MiB with a 1 MiB block live "
          "(before %zu, after %zu)", m1.hblkhd, m2.hblkhd);
    CHECK(m2.hblks >= m1.hblks + 1,
          "mallinfo2().hblks did not grow with a 1 MiB block live (before %zu, after %zu)",
          m1.hblks, m2.hblks);
    free(big);
    struct mallinfo2 m3 = mallinfo2();
    CHECK(m3.hblkhd + (1u << 20) <= m2.hblkhd,
          "mallinfo2().hblkhd did not shrink after freeing the 1 MiB block "
          "(live %zu, after free %zu)", m2.hblkhd, m3.hblkhd);
    for (int i = 0; i < 100; i++)
        free(small[i]);
}

static void test_alignment_and_usable(void)
{
    enum { N = 4097 };
    static void *p[N];
    for (size_t n = 0; n < N; n++) {
        p[n] = hidep(malloc(hide(n)));
        CHECK(p[n] != NULL, "malloc(%zu) returned NULL", n);
        if (!p[n])
            continue;
        CHECK(aligned_to(p[n], 16), "malloc(%zu) = %p is not 16-byte aligned", n, p[n]);
        size_t u = malloc_usable_size(p[n]);
        CHECK(u >= n, "malloc_usable_size(malloc(%zu)) = %zu < requested", n, u);
        memset(p[n], (int)(n & 0xff), u); /* the whole usable size is ours */
    }
    for (size_t n = 0; n < N; n++) {
        if (!p[n])
            continue;
        const unsigned char *b = p[n];
        size_t u = malloc_usable_size(p[n]);
        size_t bad = u;
        for (size_t i = 0; i < u; i++)
            if (b[i] != (unsigned char)(n & 0xff)) {
                bad = i;
                break;
            }
        CHECK(bad == u, "malloc(%zu) block changed at byte %zu while live "
              "(another block overlaps it?)", n, bad);
    }
    for (size_t n = 0; n < N; n++)
        free(p[n]);

    static const size_t large[] = {
        4097, 5000, 8191, 16384, 32769, 65536, 100000, 131071, 131072,
        131073, 262144, 1u << 20, (3u << 20) + 7, 17u << 20,
    };
    for (size_t i = 0; i < sizeof large / sizeof large[0]; i++) {
        size_t n = large[i];
        void *q = hidep(malloc(hide(n)));
        CHECK(q != NULL, "malloc(%zu) returned NULL", n);
        if (!q)
            continue;
        CHECK(aligned_to(q, 16), "malloc(%zu) = %p is not 16-byte aligned", n, q);
        size_t u = malloc_usable_size(q);
        CHECK(u >= n, "malloc_usable_size(malloc(%zu)) = %zu < requested", n, u);
        memset(q, 0x77, u);
        free(q);
    }

    CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) = %zu, want 0",
          malloc_usable_size(NULL));
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
    return x < y ? -1 : x > y;
}

static void test_zero_sizes(void)
{
    enum { N = 64 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = hidep(malloc(hide(0)));
        CHECK(p[i] != NULL, "malloc(0) returned NULL (glibc returns a unique pointer)");
    }
    qsort(p, N, sizeof p[0], cmp_ptr);
    for (int i = 1; i < N; i++)
        CHECK(p[i] == NULL || p[i] != p[i - 1], "malloc(0) returned %p twice", p[i]);
    for (int i = 0; i < N; i++)
        free(p[i]);

    void *q;
    q = hidep(calloc(hide(0), hide(0)));
    CHECK(q != NULL, "calloc(0, 0) returned NULL");
    free(q);
    q = hidep(calloc(hide(0), hide(100)));
    CHECK(q != NULL, "calloc(0, 100) returned NULL");
    free(q);
    q = hidep(realloc(NULL, hide(0)));
    CHECK(q != NULL, "realloc(NULL, 0) returned NULL (glibc: same as malloc(0))");
    free(q);
    q = hidep(memalign(hide(64), hide(0)));
    CHECK(q != NULL && aligned_to(q, 64), "memalign(64, 0) = %p", q);
    free(q);
    q = hidep(aligned_alloc(hide(256), hide(0)));
    CHECK(q != NULL && aligned_to(q, 256), "aligned_alloc(256, 0) = %p", q);
    free(q);
    q = NULL;
    int rc = posix_memalign(&q, hide(128), hide(0));
    CHECK(rc == 0 && q != NULL && aligned_to(q, 128),
          "posix_memalign(&p, 128, 0) = %d, p = %p", rc, q);
    free(q);

    free(NULL); /* must be a no-op */
    errno = 0;
    free(hidep(NULL));
    CHECK(errno == 0, "free(NULL) changed errno to %d", errno);
}

static void test_overflows(void)
{
    const size_t half = SIZE_MAX / 2 + 1;
    void *q;

    errno = 0;
    q = hidep(malloc(hide(SIZE_MAX)));
    CHECK(q == NULL && errno == ENOMEM, "malloc(SIZE_MAX) = %p, errno %d (want NULL, ENOMEM)",
          q, errno);
    errno = 0;
    q = hidep(malloc(hide((size_t)PTRDIFF_MAX + 1)));
    CHECK(q == NULL && errno == ENOMEM,
          "malloc(PTRDIFF_MAX+1) = %p, errno %d (want NULL, ENOMEM)", q, errno);
    errno = 0;
    q = hidep(malloc(hide((size_t)PTRDIFF_MAX)));
    CHECK(q == NULL && errno == ENOMEM,
          "malloc(PTRDIFF_MAX) = %p, errno %d (want NULL, ENOMEM)", q, errno);
    errno = 0;
    q = hidep(malloc(hide(SIZE_MAX - PAGE + 1)));
    CHECK(q == NULL && errno == ENOMEM,
          "malloc(SIZE_MAX-4095) = %p, errno %d (want NULL, ENOMEM; page rounding must not wrap)",
          q, errno);

    static const size_t calloc_args[][2] = {
        {SIZE_MAX / 2 + 1, 4}, {4, SIZE_MAX / 2 + 1}, {SIZE_MAX, SIZE_MAX},
        {SIZE_MAX / 16 + 1, 16}, {(size_t)1 << 32, (size_t)1 << 32},
        {(size_t)1 << 33, (size_t)1 << 31}, {SIZE_MAX, 2},
    };
    for (size_t i = 0; i < sizeof calloc_args / sizeof calloc_args[0]; i++) {
        size_t n = calloc_args[i][0], m = calloc_args[i][1];
        errno = 0;
        q = hidep(calloc(hide(n), hide(m)));
        int e = errno;
        CHECK(q == NULL && e == ENOMEM,
              "calloc(%#zx, %#zx) (product overflows) = %p, errno %d (want NULL, ENOMEM)",
              n, m, q, e);
        if (q)
            free(q);
    }

    /* reallocarray: NULL and ENOMEM on overflow; the old block stays. */
    errno = 0;
    q = hidep(reallocarray(NULL, hide(half), hide(4)));
    CHECK(q == NULL && errno == ENOMEM,
          "reallocarray(NULL, SIZE_MAX/2+1, 4) = %p, errno %d (want NULL, ENOMEM)", q, errno);
    void *r = hidep(reallocarray(NULL, hide(10), hide(10)));
    CHECK(r != NULL, "reallocarray(NULL, 10, 10) returned NULL");
    if (r) {
        CHECK(malloc_usable_size(r) >= 100, "reallocarray(NULL, 10, 10) usable %zu < 100",
              malloc_usable_size(r));
        fill(r, 100, 7);
        errno = 0;
        q = hidep(reallocarray(hidep(r), hide(half), hide(4)));
        CHECK(q == NULL && errno == ENOMEM,
              "reallocarray(p, SIZE_MAX/2+1, 4) = %p, errno %d (want NULL, ENOMEM)", q, errno);
        CHECK(first_bad(r, 100, 7) == 100, "reallocarray overflow damaged the old block");
        q = hidep(reallocarray(r, hide(100), hide(50)));
        CHECK(q != NULL, "reallocarray(p, 100, 50) returned NULL");
        if (q) {
            CHECK(first_bad(q, 100, 7) == 100, "reallocarray(p, 100, 50) lost the contents");
            r = q;
        }
        free(r);
    }

    /* aligned functions: sizes that overflow once alignment is added. */
    errno = 0;
    q = hidep(memalign(hide(4096), hide(SIZE_MAX - 100)));
    CHECK(q == NULL && errno == ENOMEM, "memalign(4096, SIZE_MAX-100) = %p, errno %d", q, errno);
    errno = 0;
    q = hidep(aligned_alloc(hide(64), hide(SIZE_MAX)));
    CHECK(q == NULL && errno == ENOMEM, "aligned_alloc(64, SIZE_MAX) = %p, errno %d", q, errno);
    q = (void *)0x1234;
    int rc = posix_memalign(&q, hide(1u << 20), hide(SIZE_MAX - (1u << 19)));
    CHECK(rc == ENOMEM && q == (void *)0x1234,
          "posix_memalign(&p, 1 MiB, SIZE_MAX-512KiB) = %d, p = %p (want ENOMEM, p untouched)",
          rc, q);
    errno = 0;
    q = hidep(valloc(hide(SIZE_MAX - 10)));
    CHECK(q == NULL && errno == ENOMEM, "valloc(SIZE_MAX-10) = %p, errno %d", q, errno);
    errno = 0;
    q = hidep(pvalloc(hide(SIZE_MAX - 10)));
    CHECK(q == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX-10) = %p, errno %d", q, errno);
}

static void test_realloc(void)
{
    /* realloc(NULL, n) is malloc(n). */
    static const size_t sizes[] = {1, 24, 1000, 40000, 200000, 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        size_t n = sizes[i];
        void *p = hidep(realloc(NULL, hide(n)));
        CHECK(p != NULL, "realloc(NULL, %zu) returned NULL", n);
        if (!p)
            continue;
        CHECK(aligned_to(p, 16), "realloc(NULL, %zu) = %p not 16-byte aligned", n, p);
        CHECK(malloc_usable_size(p) >= n, "realloc(NULL, %zu): usable %zu", n,
              malloc_usable_size(p));
        fill(p, n, (unsigned)i);
        CHECK(first_bad(p, n, (unsigned)i) == n, "realloc(NULL, %zu) block not writable", n);

        /* realloc(p, 0) frees the block and (glibc) returns NULL. */
        void *z = hidep(realloc(p, hide(0)));
        CHECK(z == NULL, "realloc(p, 0) = %p, glibc frees and returns NULL", z);
        if (z)
            free(z);
    }

    /* A failing realloc returns NULL, sets ENOMEM, and leaves the block. */
    static const size_t old_sizes[] = {16, 700, 5000, 60000, 300000, 2u << 20};
    static const size_t huge[] = {
        SIZE_MAX, SIZE_MAX - PAGE + 1, (size_t)PTRDIFF_MAX + 1, (size_t)PTRDIFF_MAX,
    };
    for (size_t i = 0; i < sizeof old_sizes / sizeof old_sizes[0]; i++) {
        size_t n = old_sizes[i];
        void *p = hidep(malloc(hide(n)));
        CHECK(p != NULL, "malloc(%zu) returned NULL", n);
        if (!p)
            continue;
        fill(p, n, 99 + (unsigned)i);
        for (size_t j = 0; j < sizeof huge / sizeof huge[0]; j++) {
            errno = 0;
            void *q = hidep(realloc(hidep(p), hide(huge[j])));
            int e = errno;
            CHECK(q == NULL && e == ENOMEM,
                  "realloc(malloc(%zu), %#zx) = %p, errno %d (want NULL, ENOMEM)",
                  n, huge[j], q, e);
            size_t bad = first_bad(p, n, 99 + (unsigned)i);
            CHECK(bad == n, "failed realloc(malloc(%zu), %#zx) damaged the old block at byte %zu",
                  n, huge[j], bad);
        }
        /* The old block is still usable: grow it and check the prefix. */
        void *q = hidep(realloc(p, hide(n * 3 + 1)));
        CHECK(q != NULL, "realloc(malloc(%zu), %zu) returned NULL", n, n * 3 + 1);
        if (q) {
            size_t bad = first_bad(q, n, 99 + (unsigned)i);
            CHECK(bad == n, "realloc %zu -> %zu lost byte %zu", n, n * 3 + 1, bad);
            p = q;
        }
        free(p);
    }

    /* realloc of an over-aligned block keeps its contents. */
    static const size_t aligns[] = {64, 4096, 65536, 1u << 21};
    for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
        size_t a = aligns[i];
        void *p = hidep(memalign(hide(a), hide(3000)));
        CHECK(p != NULL && aligned_to(p, a), "memalign(%zu, 3000) = %p", a, p);
        if (!p)
            continue;
        fill(p, 3000, 5);
        void *q = hidep(realloc(hidep(p), hide(500000)));
        CHECK(q != NULL, "realloc(memalign(%zu, 3000), 500000) returned NULL", a);
        if (!q) {
            free(p);
            continue;
        }
        CHECK(first_bad(q, 3000, 5) == 3000, "realloc of memalign(%zu) block lost contents", a);
        q = hidep(realloc(q, hide(100)));
        CHECK(q != NULL && first_bad(q, 100, 5) == 100,
              "realloc of memalign(%zu) block down to 100 B lost contents", a);
        free(q);
    }
}

static void test_calloc_zero(void)
{
    static const size_t sizes[] = {8, 24, 100, 1000, 3000, 12000, 40000, 100000, 200u * 1024};
    enum { N = 64 };
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        void *p[N];
        /* Dirty a set of blocks of this size, free them, then calloc the
         * same size: the allocator is likely to hand back the dirty ones. */
        for (int round = 0; round < 3; round++) {
            for (int i = 0; i < N; i++) {
                p[i] = hidep(malloc(hide(n)));
                CHECK(p[i] != NULL, "malloc(%zu) returned NULL", n);
                if (p[i])
                    memset(p[i], 0xa5, malloc_usable_size(p[i]));
            }
            for (int i = 0; i < N; i++)
                free(p[i]);
            for (int i = 0; i < N; i++) {
                p[i] = hidep(calloc(hide(1), hide(n)));
                CHECK(p[i] != NULL, "calloc(1, %zu) returned NULL", n);
                if (!p[i])
                    continue;
                CHECK(aligned_to(p[i], 16), "calloc(1, %zu) = %p not 16-byte aligned", n, p[i]);
                size_t bad = first_nonzero(p[i], n);
                CHECK(bad == n, "calloc(1, %zu) (round %d, block %d) byte %zu is %#x, not 0",
                      n, round, i, bad, ((unsigned char *)p[i])[bad]);
                memset(p[i], 0x5a, malloc_usable_size(p[i]));
            }
            for (int i = 0; i < N; i++)
                free(p[i]);
        }
    }
    /* n*m products that do not overflow. */
    void *q = hidep(calloc(hide(1000), hide(40)));
    CHECK(q != NULL && first_nonzero(q, 40000) == 40000, "calloc(1000, 40) not zeroed");
    free(q);
    q = hidep(calloc(hide(3), hide(70000)));
    CHECK(q != NULL && first_nonzero(q, 210000) == 210000, "calloc(3, 70000) not zeroed");
    free(q);
    /* A large block shrunk by realloc and then freed leaves dirty memory. */
    q = hidep(malloc(hide(600000)));
    if (q) {
        memset(q, 0xee, 600000);
        q = hidep(realloc(q, hide(150000)));
        free(q);
    }
    q = hidep(calloc(hide(1), hide(600000)));
    CHECK(q != NULL && first_nonzero(q, 600000) == 600000,
          "calloc(1, 600000) after dirtying not zeroed");
    free(q);
}

static void test_aligned(void)
{
    int rc;
    static const size_t bad[] = {0, 3, 24, sizeof(void *) / 2, 12, 48, 4095, 4097,
                                 (size_t)1 << 63 | 8};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *q = (void *)0xdeadbeef;
        rc = posix_memalign(&q, hide(bad[i]), hide(64));
        CHECK(rc == EINVAL, "posix_memalign(&p, %zu, 64) = %d, want EINVAL", bad[i], rc);
        CHECK(q == (void *)0xdeadbeef,
              "posix_memalign with bad alignment %zu wrote the out-pointer (%p)", bad[i], q);
        if (rc == 0 && q != (void *)0xdeadbeef)
            free(q);
    }

    for (size_t a = 8; a <= (4u << 20); a <<= 1) {
        const size_t sizes[] = {1, a / 2, a - 1, a, a + 1, a + a / 2, 100};
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t n = sizes[si];
            size_t want = a < 16 ? 16 : a; /* glibc never goes below 16 */
            void *p[3] = {NULL, NULL, NULL};

            rc = posix_memalign(&p[0], hide(a), hide(n));
            CHECK(rc == 0 && p[0] != NULL, "posix_memalign(&p, %zu, %zu) = %d", a, n, rc);
            p[1] = hidep(aligned_alloc(hide(a), hide(n)));
            CHECK(p[1] != NULL, "aligned_alloc(%zu, %zu) returned NULL", a, n);
            p[2] = hidep(memalign(hide(a), hide(n)));
            CHECK(p[2] != NULL, "memalign(%zu, %zu) returned NULL", a, n);

            static const char *const fn[3] = {"posix_memalign", "aligned_alloc", "memalign"};
            for (int f = 0; f < 3; f++) {
                if (!p[f])
                    continue;
                CHECK(aligned_to(p[f], want), "%s(%zu, %zu) = %p is not %zu-aligned",
                      fn[f], a, n, p[f], want);
                size_t u = malloc_usable_size(p[f]);
                CHECK(u >= n, "malloc_usable_size(%s(%zu, %zu)) = %zu", fn[f], a, n, u);
                fill(p[f], n, (unsigned)(a + n + f));
            }
            for (int f = 0; f < 3; f++) {
                if (!p[f])
                    continue;
                size_t b = first_bad(p[f], n, (unsigned)(a + n + f));
                CHECK(b == n, "%s(%zu, %zu) block changed at byte %zu", fn[f], a, n, b);
                free(p[f]);
            }
        }
    }

    static const size_t vsizes[] = {1, 100, 4095, 4096, 4097, 100000, 1u << 20};
    for (size_t i = 0; i < sizeof vsizes / sizeof vsizes[0]; i++) {
        size_t n = vsizes[i];
        void *p = hidep(valloc(hide(n)));
        CHECK(p != NULL && aligned_to(p, PAGE), "valloc(%zu) = %p (want page-aligned)", n, p);
        if (!p)
            continue;
        CHECK(malloc_usable_size(p) >= n, "valloc(%zu): usable %zu", n, malloc_usable_size(p));
        memset(p, 1, n);
        free(p);
    }

    static const size_t psizes[][2] = {{0, 0}, {1, 4096}, {4095, 4096}, {4096, 4096},
                                       {4097, 8192}, {10000, 12288}, {300000, 303104}};
    for (size_t i = 0; i < sizeof psizes / sizeof psizes[0]; i++) {
        size_t n = psizes[i][0], want = psizes[i][1];
        void *p = hidep(pvalloc(hide(n)));
        CHECK(p != NULL && aligned_to(p, PAGE), "pvalloc(%zu) = %p (want page-aligned)", n, p);
        if (!p)
            continue;
        size_t u = malloc_usable_size(p);
        CHECK(u >= want, "pvalloc(%zu): usable %zu, want >= %zu (rounded up to a page)",
              n, u, want);
        memset(p, 2, u);
        free(p);
    }
}

static void test_free_keeps_errno(void)
{
    static const size_t sizes[] = {0, 1, 16, 100, 1024, 4000, 20000, 70000,
                                   130000, 1u << 20, 10u << 20};
    enum { NS = sizeof sizes / sizeof sizes[0] };
    for (size_t i = 0; i < NS; i++) {
        void *p = hidep(malloc(hide(sizes[i])));
        CHECK(p != NULL, "malloc(%zu) returned NULL", sizes[i]);
        memset(p, 3, sizes[i]);
        errno = 1234;
        free(p);
        CHECK(errno == 1234, "free(malloc(%zu)) changed errno from 1234 to %d", sizes[i], errno);
    }
    /* Many frees in a row, so that slabs empty and chunks may be released. */
    enum { N = 2000 };
    static void *p[N];
    for (int i = 0; i < N; i++)
        p[i] = hidep(malloc(hide((size_t)(i % 50) * 97 + 1)));
    for (int i = 0; i < N; i++) {
        errno = 1234;
        free(p[i]);
        if (errno != 1234) {
            CHECK(0, "free of block %d of a batch changed errno from 1234 to %d", i, errno);
            break;
        }
    }
    void *a = hidep(memalign(hide(1u << 16), hide(300000)));
    errno = 1234;
    free(a);
    CHECK(errno == 1234, "free(memalign(64 KiB, 300000)) changed errno to %d", errno);
    errno = 1234;
    free(NULL);
    CHECK(errno == 1234, "free(NULL) changed errno to %d", errno);
}

/* cfree is a compat-only symbol in glibc >= 2.26, so a plain link against it
 * fails: reference it weakly, and ask the loader for glibc's versioned one
 * when nothing else defines it.  Whichever is found must live in the same
 * object as malloc, or cfree would hand our blocks to another allocator. */
void cfree(void *) __attribute__((weak));

static void test_cfree(void)
{
    void (*f)(void *) = cfree;
    if (!f)
        f = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
    if (!f)
        f = (void (*)(void *))dlvsym(RTLD_DEFAULT, "cfree", "GLIBC_2.2.5");
    CHECK(f != NULL, "cfree is not defined");
    if (!f)
        return;
    Dl_info fi, mi;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    int ok = dladdr((void *)f, &fi) && dladdr(m, &mi);
    CHECK(ok, "dladdr failed on cfree or malloc");
    if (!ok)
        return;
    CHECK(strcmp(fi.dli_fname, mi.dli_fname) == 0,
          "cfree comes from %s but malloc from %s", fi.dli_fname, mi.dli_fname);
    if (strcmp(fi.dli_fname, mi.dli_fname) != 0)
        return;
    for (size_t n = 1; n < 300000; n = n * 5 + 3) {
        void *p = hidep(malloc(hide(n)));
        memset(p, 4, n);
        errno = 1234;
        f(p);
        CHECK(errno == 1234, "cfree(malloc(%zu)) changed errno to %d", n, errno);
    }
    f(NULL);
}

/* free_sized and free_aligned_sized (C23, glibc >= 2.43): checked only where
 * the library that serves malloc defines them; a free_sized from another
 * object would be as wrong as a foreign cfree. */
static void test_free_sized(void)
{
    Dl_info mi;
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    if (!dladdr(m, &mi))
        return;
    void (*fs)(void *, size_t) = (void (*)(void *, size_t))dlsym(RTLD_DEFAULT, "free_sized");
    void (*fas)(void *, size_t, size_t) =
        (void (*)(void *, size_t, size_t))dlsym(RTLD_DEFAULT, "free_aligned_sized");
    Dl_info fi;
    if (fs && dladdr((void *)fs, &fi)) {
        CHECK(strcmp(fi.dli_fname, mi.dli_fname) == 0,
              "free_sized comes from %s but malloc from %s", fi.dli_fname, mi.dli_fname);
        if (strcmp(fi.dli_fname, mi.dli_fname) == 0) {
            for (size_t n = 1; n < 600000; n = n * 3 + 5) {
                void *p = hidep(malloc(hide(n)));
                CHECK(p != NULL, "malloc(%zu) returned NULL", n);
                memset(p, 6, n);
                errno = 1234;
                fs(p, n);
                CHECK(errno == 1234, "free_sized(malloc(%zu), %zu) changed errno to %d", n, n,
                      errno);
                p = hidep(calloc(hide(n), hide(1)));
                fs(p, n);
            }
            fs(NULL, 0);
        }
    }
    if (fas && dladdr((void *)fas, &fi)) {
        CHECK(strcmp(fi.dli_fname, mi.dli_fname) == 0,
              "free_aligned_sized comes from %s but malloc from %s", fi.dli_fname, mi.dli_fname);
        if (strcmp(fi.dli_fname, mi.dli_fname) == 0) {
            for (size_t a = 16; a <= (1u << 20); a <<= 2) {
                for (size_t n = a; n < 3 * a + 600000; n += a * 7 + 4096) {
                    void *p = hidep(aligned_alloc(hide(a), hide(n)));
                    CHECK(p != NULL && aligned_to(p, a), "aligned_alloc(%zu, %zu) = %p", a, n, p);
                    if (!p)
                        continue;
                    memset(p, 7, n);
                    errno = 1234;
                    fas(p, a, n);
                    CHECK(errno == 1234, "free_aligned_sized(p, %zu, %zu) changed errno to %d",
                          a, n, errno);
                }
            }
            fas(NULL, 64, 0);
        }
    }
}

static void test_extensions(void)
{
    int r = mallopt(M_MMAP_THRESHOLD, 1 << 20);
    CHECK(r == 1, "mallopt(M_MMAP_THRESHOLD, 1 MiB) = %d, want 1", r);
    /* Blocks on both sides of the new threshold still work. */
    static const size_t sizes[] = {200000, (1u << 20) - 4096, (1u << 20) + 1, 3u << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = hidep(malloc(hide(sizes[i])));
        CHECK(p != NULL && aligned_to(p, 16), "malloc(%zu) after mallopt = %p", sizes[i], p);
        if (!p)
            continue;
        fill(p, sizes[i], 11);
        p = hidep(realloc(p, hide(sizes[i] + 70000)));
        CHECK(p != NULL && first_bad(p, sizes[i], 11) == sizes[i],
              "realloc(%zu -> %zu) after mallopt lost contents", sizes[i], sizes[i] + 70000);
        free(p);
    }

    /* Leave a lot freed behind, then trim. */
    enum { N = 3000 };
    static void *p[N];
    for (int i = 0; i < N; i++) {
        p[i] = hidep(malloc(hide(100 + (size_t)(i % 13) * 300)));
        if (p[i])
            memset(p[i], 9, 100);
    }
    for (int i = 0; i < N; i += 2)
        free(p[i]);
    r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "malloc_trim(0) = %d, want 0 or 1", r);
    for (int i = 1; i < N; i += 2) {
        const unsigned char *b = p[i];
        CHECK(b == NULL || (b[0] == 9 && b[99] == 9), "malloc_trim damaged a live block");
        free(p[i]);
    }
    r = malloc_trim(0);
    CHECK(r == 0 || r == 1, "second malloc_trim(0) = %d, want 0 or 1", r);
    r = malloc_trim(1u << 20);
    CHECK(r == 0 || r == 1, "malloc_trim(1 MiB) = %d, want 0 or 1", r);
    void *after = hidep(malloc(hide(5000)));
    CHECK(after != NULL, "malloc after malloc_trim returned NULL");
    free(after);

    /* malloc_stats writes to stderr (fd 2): catch it in a temporary file. */
    fflush(stderr);
    FILE *tmp = tmpfile();
    CHECK(tmp != NULL, "tmpfile() failed");
    if (!tmp)
        return;
    int saved = dup(2);
    dup2(fileno(tmp), 2);
    malloc_stats();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    struct stat st;
    fstat(fileno(tmp), &st);
    CHECK(st.st_size > 0, "malloc_stats() wrote nothing to stderr");
    fclose(tmp);
}

int main(void)
{
    setvbuf(stdout, NULL, _IONBF, 0);
    test_mallinfo2();
    test_alignment_and_usable();
    test_zero_sizes();
    test_overflows();
    test_realloc();
    test_calloc_zero();
    test_aligned();
    test_free_keeps_errno();
    test_cfree();
    test_free_sized();
    test_extensions();
    if (checks_failed("api_edges"))
        return 1;
    printf("api_edges: all checks passed\n");
    return 0;
}
