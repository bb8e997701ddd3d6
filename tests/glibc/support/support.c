/* The functions behind buddyslab's stand-in for glibc's support/ headers,
   compiled into every test program.  See tests/glibc/README.md.  */

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <support/check.h>
#include <support/support.h>
#include <support/temp_file.h>
#include <support/xsignal.h>
#include <support/xthread.h>
#include <support/xunistd.h>

/* ------------------------------------------------------------- failures */

/* Points at a shared page once the driver has set it up (so a failure in
   a forked child is seen by the driver), at a private flag before.  */
static volatile int private_failure_flag;
static volatile int *failure_flag = &private_failure_flag;

/* Called by the driver before it forks the test.  */
void
support_failure_flag_share (void)
{
  void *page = mmap (NULL, sizeof (int), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED)
    {
      perror ("error: mmap for the shared failure flag");
      exit (1);
    }
  failure_flag = page;
}

void
support_record_failure (void)
{
  __atomic_store_n (failure_flag, 1, __ATOMIC_SEQ_CST);
}

bool
support_record_failure_is_failed (void)
{
  return __atomic_load_n (failure_flag, __ATOMIC_SEQ_CST) != 0;
}

static void
print_error_v (const char *file, int line, const char *format, va_list ap)
{
  int saved_errno = errno;
  fflush (stdout);
  printf ("error: %s:%d: ", file, line);
  errno = saved_errno; /* for a %m in FORMAT */
  vprintf (format, ap);
  if (format[0] == '\0' || format[strlen (format) - 1] != '\n')
    putchar ('\n');
  fflush (stdout);
}

void
support_check_print (const char *file, int line, const char *format, ...)
{
  va_list ap;
  va_start (ap, format);
  print_error_v (file, line, format, ap);
  va_end (ap);
  support_record_failure ();
}

void
support_check_exit (int status, const char *file, int line,
                    const char *format, ...)
{
  va_list ap;
  va_start (ap, format);
  print_error_v (file, line, format, ap);
  va_end (ap);
  if (status != EXIT_UNSUPPORTED)
    support_record_failure ();
  exit (status);
}

void
support_check_compare_failed (const char *file, int line,
                              const char *left_text, bool left_negative,
                              unsigned long long left_bits,
                              const char *right_text, bool right_negative,
                              unsigned long long right_bits)
{
  char left[32];
  char right[32];
  if (left_negative)
    snprintf (left, sizeof left, "%lld", (long long) left_bits);
  else
    snprintf (left, sizeof left, "%llu", left_bits);
  if (right_negative)
    snprintf (right, sizeof right, "%lld", (long long) right_bits);
  else
    snprintf (right, sizeof right, "%llu", right_bits);
  support_check_print (file, line, "%s == %s is false: %s != %s",
                       left_text, right_text, left, right);
}

/* Ends the test after a failed library call.  ERROR is an errno value.  */
static _Noreturn void
call_failed (const char *what, int error)
{
  fflush (stdout);
  printf ("error: %s: %s\n", what, strerror (error));
  fflush (stdout);
  support_record_failure ();
  exit (1);
}

/* ----------------------------------------------------------- allocation */

void *
xmalloc (size_t size)
{
  void *p = malloc (size);
  if (p == NULL)
    call_failed ("malloc", errno);
  return p;
}

void *
xcalloc (size_t count, size_t size)
{
  void *p = calloc (count, size);
  if (p == NULL)
    call_failed ("calloc", errno);
  return p;
}

void *
xrealloc (void *pointer, size_t size)
{
  void *p = realloc (pointer, size);
  if (p == NULL && size != 0)
    call_failed ("realloc", errno);
  return p;
}

char *
xstrdup (const char *string)
{
  char *p = strdup (string);
  if (p == NULL)
    call_failed ("strdup", errno);
  return p;
}

void
write_message (const char *message)
{
  size_t left = strlen (message);
  while (left > 0)
    {
      ssize_t written = write (STDOUT_FILENO, message, left);
      if (written <= 0)
        {
          if (written < 0 && errno == EINTR)
            continue;
          return;
        }
      message += written;
      left -= written;
    }
}

/* The mapping starts with its own length, so that free needs no size.  */
struct shared_header
{
  size_t mapped;
  max_align_t align;
};

void *
support_shared_allocate (size_t size)
{
  size_t mapped = offsetof (struct shared_header, align) + size;
  void *map = mmap (NULL, mapped, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (map == MAP_FAILED)
    call_failed ("mmap (shared)", errno);
  struct shared_header *header = map;
  header->mapped = mapped;
  return &header->align;
}

void
support_shared_free (void *pointer)
{
  struct shared_header *header
    = (void *) ((char *) pointer - offsetof (struct shared_header, align));
  if (munmap (header, header->mapped) != 0)
    call_failed ("munmap (shared)", errno);
}

/* -------------------------------------------------------------- threads */

pthread_t
xpthread_create (pthread_attr_t *attr, void *(*function) (void *),
                 void *argument)
{
  pthread_t thread;
  int error = pthread_create (&thread, attr, function, argument);
  if (error != 0)
    call_failed ("pthread_create", error);
  return thread;
}

void *
xpthread_join (pthread_t thread)
{
  void *result;
  int error = pthread_join (thread, &result);
  if (error != 0)
    call_failed ("pthread_join", error);
  return result;
}

void
xpthread_kill (pthread_t thread, int signal_number)
{
  int error = pthread_kill (thread, signal_number);
  if (error != 0)
    call_failed ("pthread_kill", error);
}

void
xpthread_barrier_init (pthread_barrier_t *barrier,
                       pthread_barrierattr_t *attr, unsigned int count)
{
  int error = pthread_barrier_init (barrier, attr, count);
  if (error != 0)
    call_failed ("pthread_barrier_init", error);
}

int
xpthread_barrier_wait (pthread_barrier_t *barrier)
{
  int result = pthread_barrier_wait (barrier);
  if (result != 0 && result != PTHREAD_BARRIER_SERIAL_THREAD)
    call_failed ("pthread_barrier_wait", result);
  return result == PTHREAD_BARRIER_SERIAL_THREAD;
}

void
xpthread_barrier_destroy (pthread_barrier_t *barrier)
{
  int error = pthread_barrier_destroy (barrier);
  if (error != 0)
    call_failed ("pthread_barrier_destroy", error);
}

void
xpthread_barrierattr_init (pthread_barrierattr_t *attr)
{
  int error = pthread_barrierattr_init (attr);
  if (error != 0)
    call_failed ("pthread_barrierattr_init", error);
}

void
xpthread_barrierattr_setpshared (pthread_barrierattr_t *attr, int pshared)
{
  int error = pthread_barrierattr_setpshared (attr, pshared);
  if (error != 0)
    call_failed ("pthread_barrierattr_setpshared", error);
}

void
xpthread_barrierattr_destroy (pthread_barrierattr_t *attr)
{
  int error = pthread_barrierattr_destroy (attr);
  if (error != 0)
    call_failed ("pthread_barrierattr_destroy", error);
}

/* ------------------------------------------------ processes, files, maps */

pid_t
xfork (void)
{
  pid_t pid = fork ();
  if (pid < 0)
    call_failed ("fork", errno);
  return pid;
}

pid_t
xwaitpid (pid_t pid, int *status, int flags)
{
  pid_t result;
  do
    result = waitpid (pid, status, flags);
  while (result < 0 && errno == EINTR);
  if (result < 0)
    call_failed ("waitpid", errno);
  return result;
}

long
xsysconf (int name)
{
  errno = 0;
  long value = sysconf (name);
  if (value < 0)
    call_failed ("sysconf", errno != 0 ? errno : EINVAL);
  return value;
}

int
xopen (const char *path, int flags, mode_t mode)
{
  int fd = open (path, flags, mode);
  if (fd < 0)
    call_failed (path, errno);
  return fd;
}

void
xclose (int fd)
{
  if (close (fd) != 0 && errno != EINTR)
    call_failed ("close", errno);
}

void
xpipe (int fds[2])
{
  if (pipe (fds) != 0)
    call_failed ("pipe", errno);
}

void *
xmmap (void *address, size_t length, int protection, int flags, int fd)
{
  void *map = mmap (address, length, protection, flags, fd, 0);
  if (map == MAP_FAILED)
    call_failed ("mmap", errno);
  return map;
}

void
xmunmap (void *address, size_t length)
{
  if (munmap (address, length) != 0)
    call_failed ("munmap", errno);
}

sighandler_t
xsignal (int signal_number, sighandler_t handler)
{
  sighandler_t old = signal (signal_number, handler);
  if (old == SIG_ERR)
    call_failed ("signal", errno);
  return old;
}

/* ---------------------------------------------------------- temp files */

/* Files to remove at exit, and the process that made them (a forked child
   that calls exit must not remove its parent's files).  */
enum { temp_files_max = 16 };
static char temp_file_names[temp_files_max][4096];
static int temp_file_count;
static pid_t temp_file_owner;

static void
remove_temp_files (void)
{
  if (getpid () != temp_file_owner)
    return;
  for (int i = 0; i < temp_file_count; ++i)
    unlink (temp_file_names[i]);
}

int
create_temp_file (const char *base, char **filename)
{
  if (temp_file_count == temp_files_max)
    {
      errno = EMFILE;
      return -1;
    }
  const char *dir = getenv ("TMPDIR");
  if (dir == NULL || dir[0] == '\0')
    dir = "/tmp";
  char *name = temp_file_names[temp_file_count];
  int length = snprintf (name, sizeof temp_file_names[0], "%s/%sXXXXXX",
                         dir, base);
  if (length < 0 || (size_t) length >= sizeof temp_file_names[0])
    {
      errno = ENAMETOOLONG;
      return -1;
    }
  int fd = mkstemp (name);
  if (fd < 0)
    return -1;
  if (temp_file_count == 0)
    {
      temp_file_owner = getpid ();
      atexit (remove_temp_files);
    }
  ++temp_file_count;
  if (filename != NULL)
    *filename = xstrdup (name);
  return fd;
}
