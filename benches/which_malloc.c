/*
 * which_malloc: prints the file that the process's malloc, free and realloc
 * come from. compare.py runs it under each LD_PRELOAD to make sure the
 * library was loaded and really interposes (the loader only warns, then
 * runs the program with glibc's malloc, when a preload fails).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

static const char *origin(void *function)
{
    Dl_info info;
    return dladdr(function, &info) && info.dli_fname ? info.dli_fname : "?";
}

int main(void)
{
    void *(*volatile m)(size_t) = malloc;
    void (*volatile f)(void *) = free;
    void *(*volatile r)(void *, size_t) = realloc;
    void *p = m(100);
    p = r(p, 1000);
    f(p);
    printf("malloc %s\nfree %s\nrealloc %s\n", origin((void *)m), origin((void *)f),
           origin((void *)r));
    return 0;
}
