/* buddyslab's stand-in for glibc's <support/temp_file.h>.  */

#ifndef BUDDYSLAB_SUPPORT_TEMP_FILE_H
#define BUDDYSLAB_SUPPORT_TEMP_FILE_H

/* Creates an empty file named after BASE in $TMPDIR (or /tmp), open for
   reading and writing, and returns its descriptor, or -1 with errno set.
   When FILENAME is not NULL, *FILENAME receives its path in memory from
   malloc, for the caller to free.  The file is removed when the process
   that created it exits normally.  */
int create_temp_file (const char *base, char **filename);

#endif
