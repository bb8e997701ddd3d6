/*
 * own_malloc.c - a program that brings its own malloc: malloc, free, calloc
 * and realloc defined in the executable (a bump allocator over a static
 * arena; free does nothing). The executable comes first in the loader's
 * global scope, so these win over any LD_PRELOAD, as a program with an
 * embedded allocator does; the buddyslab tool must say so.
 */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static _Alignas(16) unsigned char arena[64 << 20];
static size_t used;

void *malloc(size_t n)
{
    n = (n + 15) & ~(size_t)15;
    if (n > sizeof arena - used - 16)
        return NULL;
    size_t *header = (size_t *)(arena + used);
    *header = n;
    used += n + 16;
    return arena + used - n;
}

void free(void *p)
{
    (void)p;
}

void *calloc(size_t count, size_t size)
{
    if (size && count > (size_t)-1 / size)
        return NULL;
    void *p = malloc(count * size);
    if (p)
        memset(p, 0, count * size);
    return p;
}

void *realloc(void *p, size_t n)
{
    void *q = malloc(n);
    if (p && q) {
        size_t old = ((size_t *)p)[-2];
        memcpy(q, p, old < n ? old : n);
    }
    return q;
}

int main(void)
{
    char *s = malloc(32);
    strcpy(s, "own malloc in use");
    puts(s);
    return 0;
}
