/* Checks of the harness itself: each CHECK_* case is a test that must be
   judged the way tests/glibc_malloc.rs expects (passed, failed or hung),
   so that a broken harness cannot make glibc's tests pass.  Build with
   -DCHECK_<CASE>; a case that needs EXPECTED_SIGNAL or TIMEOUT sets it
   before the driver is included.  */

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <support/check.h>
#include <support/xunistd.h>

#if defined CHECK_HANG_DRIVER
/* The driver's own timeout must fire, and kill the grandchild too.  */
# define TIMEOUT 1
#endif

#if defined CHECK_SIGNAL_EXPECTED_AND_RAISED \
  || defined CHECK_SIGNAL_EXPECTED_NOT_RAISED
# define EXPECTED_SIGNAL SIGABRT
#endif

static int
do_test (void)
{
#if defined CHECK_PASS
  TEST_VERIFY (1 + 1 == 2);
  TEST_COMPARE (5, 5L);
  TEST_COMPARE ((size_t) 7, 7);
  return 0;
#elif defined CHECK_EXIT_STATUS
  return 1;
#elif defined CHECK_VERIFY
  TEST_VERIFY (1 + 1 == 3);
  return 0;
#elif defined CHECK_COMPARE_SIGNS
  /* Equal bits, different values.  */
  TEST_COMPARE (-1, SIZE_MAX);
  return 0;
#elif defined CHECK_VERIFY_IN_CHILD
  pid_t pid = xfork ();
  if (pid == 0)
    {
      TEST_VERIFY (0);
      _exit (0);
    }
  int status;
  xwaitpid (pid, &status, 0);
  return 0;
#elif defined CHECK_CRASH
  raise (SIGSEGV);
  return 0;
#elif defined CHECK_SIGNAL_EXPECTED_AND_RAISED
  abort ();
#elif defined CHECK_SIGNAL_EXPECTED_NOT_RAISED
  return 0;
#elif defined CHECK_HANG_DRIVER || defined CHECK_HANG_GUARD
  /* Print a grandchild's pid for the caller to check it is gone.  */
  pid_t pid = xfork ();
  if (pid == 0)
    for (;;)
      pause ();
  printf ("grandchild %d\n", (int) pid);
  fflush (stdout);
  for (;;)
    pause ();
#else
# error "define one CHECK_* case"
#endif
}

#include <support/test-driver.c>
