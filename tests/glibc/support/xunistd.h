/* buddyslab's stand-in for glibc's <support/xunistd.h>: process, file and
   mapping calls that end the test (status 1) when they fail.  */

#ifndef BUDDYSLAB_SUPPORT_XUNISTD_H
#define BUDDYSLAB_SUPPORT_XUNISTD_H

#include <sys/types.h>
#include <unistd.h>

pid_t xfork (void);
pid_t xwaitpid (pid_t pid, int *status, int flags);
long xsysconf (int name);
int xopen (const char *path, int flags, mode_t mode);
void xclose (int fd);
void xpipe (int fds[2]);
void *xmmap (void *address, size_t length, int protection, int flags,
             int fd);
void xmunmap (void *address, size_t length);

#endif
