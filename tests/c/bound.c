/*
 * bound.c — which object really serves each malloc-family symbol?
 *
 * For every function a malloc replacement must provide, prints
 *     bind <symbol> <path of the object that defines it>
 * as the dynamic loader resolves it for this process (dlsym(RTLD_DEFAULT)
 * then dladdr), or "bind <symbol> -" when nothing defines it.  Under
 * LD_PRELOAD=libbuddyslab.so every line must name libbuddyslab.so: one
 * function left to glibc means blocks cross between two allocators.
 *
 * Then frees, with free(), memory that libc itself allocated (strdup,
 * asprintf, getline, open_memstream, realpath, scandir): that works only if
 * libc's internal calls bind to the same malloc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const symbols[] = {
    "malloc",        "free",          "calloc",     "realloc",
    "reallocarray",  "posix_memalign", "aligned_alloc", "memalign",
    "valloc",        "pvalloc",       "malloc_usable_size", "cfree",
    "malloc_trim",   "mallopt",       "mallinfo2",  "malloc_stats",
};

int main(void)
{
    for (size_t i = 0; i < sizeof symbols / sizeof symbols[0]; i++) {
        void *f = dlsym(RTLD_DEFAULT, symbols[i]);
        Dl_info info;
        if (f && dladdr(f, &info) && info.dli_fname)
            printf("bind %s %s\n", symbols[i], info.dli_fname);
        else
            printf("bind %s -\n", symbols[i]);
    }

    char *s = strdup("bound: strdup");
    free(s);
    char *a = NULL;
    if (asprintf(&a, "bound: %d %s", 42, "asprintf") > 0)
        free(a);
    FILE *f = fopen("/proc/self/maps", "r");
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        while (getline(&line, &cap, f) > 0)
            ;
        free(line);
        fclose(f);
    }
    char *buf = NULL;
    size_t len = 0;
    FILE *m = open_memstream(&buf, &len);
    if (m) {
        for (int i = 0; i < 10000; i++)
            fprintf(m, "%d ", i);
        fclose(m);
        free(buf);
    }
    char *rp = realpath("/", NULL);
    free(rp);
    struct dirent **names = NULL;
    int n = scandir("/", &names, NULL, alphasort);
    for (int i = 0; i < n; i++)
        free(names[i]);
    free(names);
    printf("libc-allocated blocks freed: ok\n");
    return 0;
}
