/* buddyslab's stand-in for glibc's internal <malloc-size.h>, for
   tst-mallocalign1: the alignment C asks of malloc, the alignment of
   max_align_t (what glibc's malloc gives on x86-64 too).  */

#ifndef BUDDYSLAB_MALLOC_SIZE_H
#define BUDDYSLAB_MALLOC_SIZE_H

#include <stddef.h>

#define MALLOC_ALIGNMENT (_Alignof (max_align_t))
#define MALLOC_ALIGN_MASK (MALLOC_ALIGNMENT - 1)

#endif
