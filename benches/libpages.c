/* Preloaded beside an allocator's library: at exit, prints how many KiB of
 * that library's mappings are resident (the Rss of every mapping of the
 * file named by LIBPAGES_NAME in /proc/self/smaps), the part of a
 * program's peak RSS that the allocator's code and data take. Text pages
 * are never given back, so at exit is at the peak. Used by
 * benches/libpages.sh; nothing here calls malloc (the library under test
 * may be the one that is broken). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char text[1 << 20];

__attribute__((destructor)) static void report(void)
{
    const char *name = getenv("LIBPAGES_NAME");
    int fd = open("/proc/self/smaps", O_RDONLY);
    if (!name || fd < 0)
        return;
    size_t n = 0;
    ssize_t r;
    while (n < sizeof text - 1 && (r = read(fd, text + n, sizeof text - 1 - n)) > 0)
        n += (size_t)r;
    close(fd);
    text[n] = 0;
    long kib = 0;
    int ours = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        /* A mapping's header starts with its range, "start-end perms ...";
         * the fields below it start with a capitalised key. */
        if (line[0] >= 'A' && line[0] <= 'Z') {
            if (ours && !strncmp(line, "Rss:", 4))
                kib += atol(line + 4);
        } else {
            const char *slash = strrchr(line, '/');
            ours = slash && !strcmp(slash + 1, name);
        }
    }
    fprintf(stderr, "libpages: %ld KiB of %s resident\n", kib, name);
}
