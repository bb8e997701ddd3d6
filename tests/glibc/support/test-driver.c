/* buddyslab's stand-in for glibc's <support/test-driver.c>: the main
   function of a test.  A test defines do_test (and may define TIMEOUT,
   EXPECTED_SIGNAL or EXPECTED_STATUS), then includes this file last.

   The driver runs do_test in a forked child, in the driver's own process
   group, and waits for it:

   - do_test's return value is the child's exit status; a failure a check
     recorded (in any process of the test) turns a 0 into 1;
   - with EXPECTED_SIGNAL or EXPECTED_STATUS, the child must end that way,
     and the driver exits 0 if it did, 1 if not;
   - after TIMEOUT seconds (DEFAULT_TIMEOUT if the test sets none), times
     TIMEOUTFACTOR from the environment if set, the driver prints
     "timed out" on standard error and kills its whole process group with
     SIGKILL, itself included, so that nothing the test started outlives
     it.  A caller sees a death by SIGKILL with that line.

   "--direct" runs do_test in the driver's process instead, for a
   debugger.  */

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <support/check.h>
#include <support/test-driver.h>

void support_failure_flag_share (void);

#ifndef TIMEOUT
# define TIMEOUT DEFAULT_TIMEOUT
#endif

static volatile sig_atomic_t driver_timed_out;

static void
driver_on_alarm (int signal_number)
{
  (void) signal_number;
  driver_timed_out = 1;
}

/* The test's own exit status: do_test's value, or 1 after a recorded
   failure.  */
static int
driver_run_test (void)
{
  int status = do_test ();
  if (status == 0 && support_record_failure_is_failed ())
    status = 1;
  return status;
}

static unsigned int
driver_timeout_seconds (void)
{
  double seconds = TIMEOUT;
  const char *factor = getenv ("TIMEOUTFACTOR");
  if (factor != NULL && factor[0] != '\0')
    {
      char *end;
      double value = strtod (factor, &end);
      if (*end == '\0' && value > 0)
        seconds *= value;
    }
  return seconds < 1 ? 1 : (unsigned int) (seconds + 0.5);
}

int
main (int argc, char **argv)
{
  if (argc > 1 && strcmp (argv[1], "--direct") == 0)
    return driver_run_test ();

  /* Line-buffered, so that the output before a crash or a kill is seen,
     and so that little is pending when the test forks.  */
  setvbuf (stdout, NULL, _IOLBF, 0);
  support_failure_flag_share ();
  unsigned int timeout = driver_timeout_seconds ();

  fflush (NULL);
  pid_t child = fork ();
  if (child < 0)
    {
      perror ("error: fork");
      return 1;
    }
  if (child == 0)
    exit (driver_run_test ());

  struct sigaction action;
  memset (&action, 0, sizeof action);
  action.sa_handler = driver_on_alarm;
  sigemptyset (&action.sa_mask);
  /* No SA_RESTART: the alarm must interrupt waitpid.  */
  sigaction (SIGALRM, &action, NULL);
  alarm (timeout);

  int status;
  for (;;)
    {
      if (waitpid (child, &status, 0) == child)
        break;
      if (errno != EINTR)
        {
          perror ("error: waitpid");
          return 1;
        }
      if (driver_timed_out)
        {
          fprintf (stderr, "error: timed out after %u s (the test hangs): "
                   "killing its process group\n", timeout);
          fflush (NULL);
          kill (0, SIGKILL);
          _exit (1); /* not reached */
        }
    }
  alarm (0);

#if defined EXPECTED_SIGNAL
  if (WIFSIGNALED (status) && WTERMSIG (status) == EXPECTED_SIGNAL)
    return 0;
  if (WIFSIGNALED (status))
    printf ("error: expected signal %d (%s), got signal %d (%s)\n",
            EXPECTED_SIGNAL, strsignal (EXPECTED_SIGNAL), WTERMSIG (status),
            strsignal (WTERMSIG (status)));
  else
    printf ("error: expected signal %d (%s), got exit status %d\n",
            EXPECTED_SIGNAL, strsignal (EXPECTED_SIGNAL),
            WEXITSTATUS (status));
  return 1;
#else
  if (WIFSIGNALED (status))
    {
      printf ("error: the test was killed by signal %d (%s)%s\n",
              WTERMSIG (status), strsignal (WTERMSIG (status)),
              WCOREDUMP (status) ? ", core dumped" : "");
      return 1;
    }
  int code = WEXITSTATUS (status);
# if defined EXPECTED_STATUS
  if (code == EXPECTED_STATUS)
    return 0;
  printf ("error: expected exit status %d, got %d\n", EXPECTED_STATUS, code);
  return 1;
# else
  if (code == 0 && support_record_failure_is_failed ())
    code = 1;
  return code;
# endif
#endif
}
