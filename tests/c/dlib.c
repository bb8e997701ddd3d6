/*
 * dlib.c — a small shared library for lifecycle.c's dlopen mode: it
 * allocates in its constructor, hands out blocks from dlib_make(), frees
 * its own table in its destructor (run by dlclose), and keeps a
 * thread-local buffer (dynamic TLS of a dlopened object is allocated with
 * malloc by the loader).
 */
#include <stdlib.h>
#include <string.h>

static char **table;
static const int table_len = 64;
static __thread char tls_buffer[4096];

__attribute__((constructor)) static void dlib_init(void)
{
    table = calloc((size_t)table_len, sizeof *table);
    for (int i = 0; table && i < table_len; i++) {
        table[i] = malloc((size_t)(i * 53 % 5000) + 1);
        if (table[i])
            memset(table[i], i, (size_t)(i * 53 % 5000) + 1);
    }
}

__attribute__((destructor)) static void dlib_fini(void)
{
    for (int i = 0; table && i < table_len; i++)
        free(table[i]);
    free(table);
    table = NULL;
}

/* Checks the constructor's table, then returns a fresh block of `size`
 * bytes filled with `fill`, which the caller frees (after dlclose). NULL
 * when the table is wrong. */
void *dlib_make(size_t size, int fill)
{
    if (!table)
        return NULL;
    for (int i = 0; i < table_len; i++) {
        size_t n = (size_t)(i * 53 % 5000) + 1;
        if (!table[i] || (unsigned char)table[i][n - 1] != (unsigned char)i)
            return NULL;
    }
    memset(tls_buffer, fill, sizeof tls_buffer);
    char *p = malloc(size);
    if (p)
        memset(p, fill, size);
    return p;
}
