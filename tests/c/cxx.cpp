/*
 * cxx.cpp — C++'s operator new and delete under the preloaded library.
 *
 * Run it plain (glibc and libstdc++) or with LD_PRELOAD=libbuddyslab.so;
 * it must pass both ways. Each failed check prints "FAIL <line>: <what>" on
 * stderr; the program exits 1 if any check failed, and prints one summary
 * line on stdout.
 *
 * - Every replaceable form of operator new and delete (C++17: plain,
 *   array, aligned, nothrow, sized) resolves to the preloaded library when
 *   one named "buddyslab" is preloaded (dladdr of what the program binds).
 * - Blocks of many sizes keep their contents and alignment, through new,
 *   new[], aligned new and over-aligned types, and are freed by every
 *   delete form.
 * - Failure keeps the standard's semantics: a throwing new that finds no
 *   memory calls the new-handler until it gives up and then throws
 *   std::bad_alloc; a nothrow new returns null after the handler loop.
 */
#include <dlfcn.h>
#include <malloc.h>
#include <new>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (!(cond)) {                                                          \
            failures++;                                                         \
            fprintf(stderr, "FAIL %d: ", __LINE__);                             \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
        }                                                                       \
    } while (0)

/* Keeps the compiler from folding a size it would otherwise know. */
static size_t hide(size_t n)
{
    __asm__ volatile("" : "+r"(n));
    return n;
}

static const char *const forms[] = {
    "_Znwm", "_Znam", "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t",
    "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t", "_ZdlPv", "_ZdaPv", "_ZdlPvm", "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t", "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t", "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

static void check_binding(void)
{
    const char *preload = getenv("LD_PRELOAD");
    int ours = preload && strstr(preload, "buddyslab");
    for (const char *name : forms) {
        void *f = dlsym(RTLD_DEFAULT, name);
        Dl_info info;
        CHECK(f && dladdr(f, &info) && info.dli_fname, "%s: not found", name);
        if (f && dladdr(f, &info) && info.dli_fname && ours)
            CHECK(strstr(info.dli_fname, "buddyslab"), "%s comes from %s, not the preloaded library", name,
                  info.dli_fname);
    }
    printf("operator new from %s\n", ours ? "the preloaded library" : "the C++ runtime");
}

struct alignas(64) Line {
    unsigned char bytes[64];
};

struct alignas(4096) Page {
    unsigned char bytes[4096];
};

static void check_blocks(void)
{
    static const size_t sizes[] = {0, 1, 8, 24, 100, 1000, 4096, 40000, 200000, 3 << 20};
    for (size_t size : sizes) {
        size_t n = hide(size);
        unsigned char *a = static_cast<unsigned char *>(::operator new(n));
        unsigned char *b = new unsigned char[n];
        CHECK(((uintptr_t)a & 15) == 0 && ((uintptr_t)b & 15) == 0, "new(%zu) misaligned", n);
        memset(a, 0xa5, n);
        memset(b, 0x5a, n);
        CHECK(n == 0 || (a[0] == 0xa5 && a[n - 1] == 0xa5 && b[0] == 0x5a && b[n - 1] == 0x5a),
              "new(%zu): contents lost", n);
        CHECK(malloc_usable_size(a) >= n, "new(%zu): %zu usable", n, malloc_usable_size(a));
        if (size % 2)
            ::operator delete(a, n);
        else
            ::operator delete(a);
        if (size % 3)
            ::operator delete[](b, n);
        else
            delete[] b;
        for (size_t align = 16; align <= (1 << 16); align <<= 2) {
            void *p = ::operator new(n, std::align_val_t(align));
            void *q = ::operator new[](n, std::align_val_t(align), std::nothrow);
            CHECK(((uintptr_t)p & (align - 1)) == 0 && q && ((uintptr_t)q & (align - 1)) == 0,
                  "new(%zu, align %zu) misaligned", n, align);
            memset(p, 1, n);
            memset(q, 2, n);
            ::operator delete(p, n, std::align_val_t(align));
            ::operator delete[](q, std::align_val_t(align), std::nothrow);
        }
        void *r = ::operator new(n, std::nothrow);
        CHECK(r != NULL, "nothrow new(%zu) failed", n);
        ::operator delete(r, std::nothrow);
    }
    Line *lines = new Line[7];
    Page *page = new Page;
    CHECK(((uintptr_t)lines & 63) == 0 && ((uintptr_t)page & 4095) == 0, "over-aligned types misaligned");
    memset(page->bytes, 3, sizeof page->bytes);
    delete[] lines;
    delete page;
}

static int handler_calls;

/* Gives up at its third call: the throwing new then throws. */
static void handler(void)
{
    if (++handler_calls >= 3)
        std::set_new_handler(nullptr);
}

static void check_failure(void)
{
    size_t huge = hide(SIZE_MAX / 4);
    int thrown = 0;
    try {
        void *p = ::operator new(huge);
        ::operator delete(p);
    } catch (const std::bad_alloc &) {
        thrown = 1;
    }
    CHECK(thrown, "new(SIZE_MAX / 4) did not throw std::bad_alloc");

    std::set_new_handler(handler);
    thrown = 0;
    try {
        void *p = ::operator new[](huge);
        ::operator delete[](p);
    } catch (const std::bad_alloc &) {
        thrown = 1;
    }
    CHECK(thrown && handler_calls == 3, "new[] with a handler: thrown %d, handler called %d times (3 expected)",
          thrown, handler_calls);

    handler_calls = 0;
    std::set_new_handler(handler);
    void *p = ::operator new(huge, std::nothrow);
    CHECK(p == NULL && handler_calls == 3, "nothrow new: %p, handler called %d times (3 expected)", p,
          handler_calls);

    thrown = 0;
    try {
        void *q = ::operator new(huge, std::align_val_t(64));
        ::operator delete(q, std::align_val_t(64));
    } catch (const std::bad_alloc &) {
        thrown = 1;
    }
    CHECK(thrown, "aligned new(SIZE_MAX / 4) did not throw std::bad_alloc");
    p = ::operator new(huge, std::align_val_t(64), std::nothrow);
    CHECK(p == NULL, "aligned nothrow new(SIZE_MAX / 4) gave %p", p);
}

int main(void)
{
    check_binding();
    check_blocks();
    check_failure();
    if (failures) {
        printf("%d checks failed\n", failures);
        return 1;
    }
    printf("all checks passed\n");
    return 0;
}
