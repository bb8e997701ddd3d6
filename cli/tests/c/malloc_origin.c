/*
 * malloc_origin.c - prints the file name of the object that defines the
 * malloc this process calls ("libc.so.6", "libbuddyslab.so", ...): output
 * that depends on the malloc by design, for the check in
 * `buddyslab compare` that the output is the same under every malloc.
 * It also exits with status 3 when that object is libbuddyslab.so, so the
 * exit status differs as well.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void)
{
    /* Taking the addresses makes a non-PIE build give malloc and free
     * canonical PLT entries in the executable. */
    void *(*volatile m)(size_t) = malloc;
    void (*volatile f)(void *) = free;
    f(m(24));
    Dl_info info;
    const char *name = "?";
    if (dladdr((void *)m, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        name = slash ? slash + 1 : info.dli_fname;
    }
    printf("malloc from %s\n", name);
    return strcmp(name, "libbuddyslab.so") == 0 ? 3 : 0;
}
