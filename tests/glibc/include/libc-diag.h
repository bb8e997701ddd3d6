/* buddyslab's stand-in for glibc's internal <libc-diag.h>: lets a test
   switch a compiler warning off around one statement.  The version
   argument (the newest compiler known to need it) is ignored.  */

#ifndef BUDDYSLAB_LIBC_DIAG_H
#define BUDDYSLAB_LIBC_DIAG_H

#define DIAG_PUSH_NEEDS_COMMENT _Pragma ("GCC diagnostic push")
#define DIAG_POP_NEEDS_COMMENT _Pragma ("GCC diagnostic pop")
#define DIAG_PRAGMA_TEXT(text) _Pragma (#text)
#define DIAG_IGNORE_NEEDS_COMMENT(version, option) \
  DIAG_PRAGMA_TEXT (GCC diagnostic ignored option)

#endif
