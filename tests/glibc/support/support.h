/* buddyslab's stand-in for glibc's <support/support.h>: allocation that
   cannot fail, shared memory and an async-signal-safe message.  */

#ifndef BUDDYSLAB_SUPPORT_SUPPORT_H
#define BUDDYSLAB_SUPPORT_SUPPORT_H

#include <stddef.h>
#include <sys/cdefs.h>

/* malloc, calloc, realloc and strdup that end the test (status 1) instead
   of returning NULL.  The memory comes from the malloc under test.  */
void *xmalloc (size_t size);
void *xcalloc (size_t count, size_t size);
void *xrealloc (void *pointer, size_t size);
char *xstrdup (const char *string);

/* Writes MESSAGE to standard output with write(2): usable in a signal
   handler.  */
void write_message (const char *message);

/* SIZE bytes of zeroed memory shared with every process forked later.  */
void *support_shared_allocate (size_t size);
void support_shared_free (void *pointer);

#endif
