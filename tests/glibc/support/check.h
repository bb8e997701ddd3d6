/* buddyslab's stand-in for glibc's <support/check.h>: the checking macros
   glibc's malloc tests use.  Written for buddyslab; see tests/glibc/README.md.

   A failed check prints "error: FILE:LINE: ..." on standard output and is
   recorded in a flag shared by every process of the test, so that the
   driver (test-driver.c) fails the test even when do_test returns 0 or the
   failure happened in a forked child.  */

#ifndef BUDDYSLAB_SUPPORT_CHECK_H
#define BUDDYSLAB_SUPPORT_CHECK_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include <support/test-driver.h>

/* Marks the test as failed without stopping it.  */
void support_record_failure (void);

/* True once any process of this test has recorded a failure.  */
bool support_record_failure_is_failed (void);

/* Prints the formatted message after "error: FILE:LINE: " and records a
   failure.  Keeps errno for a "%m" in FORMAT.  */
void support_check_print (const char *file, int line, const char *format, ...)
  __attribute__ ((format (printf, 3, 4)));

/* As support_check_print, then exits with STATUS (77 is "unsupported" and
   is not recorded as a failure).  */
_Noreturn void support_check_exit (int status, const char *file, int line,
                                   const char *format, ...)
  __attribute__ ((format (printf, 4, 5)));

/* What TEST_COMPARE reports when its operands differ.  */
void support_check_compare_failed (const char *file, int line,
                                   const char *left_text, bool left_negative,
                                   unsigned long long left_bits,
                                   const char *right_text, bool right_negative,
                                   unsigned long long right_bits);

#define FAIL(...) support_check_print (__FILE__, __LINE__, __VA_ARGS__)
#define FAIL_RET(...) \
  return (support_check_print (__FILE__, __LINE__, __VA_ARGS__), 1)
#define FAIL_EXIT(status, ...) \
  support_check_exit ((status), __FILE__, __LINE__, __VA_ARGS__)
#define FAIL_EXIT1(...) FAIL_EXIT (1, __VA_ARGS__)
#define FAIL_UNSUPPORTED(...) FAIL_EXIT (EXIT_UNSUPPORTED, __VA_ARGS__)

#define TEST_VERIFY(expr)                                               \
  ((expr) ? (void) 0                                                    \
   : support_check_print (__FILE__, __LINE__, "check failed: %s", #expr))

#define TEST_VERIFY_EXIT(expr)                                          \
  ((expr) ? (void) 0                                                    \
   : support_check_exit (1, __FILE__, __LINE__, "check failed: %s", #expr))

/* Compares two integers of any types by value: -1 and (size_t) -1 differ.
   Each side is evaluated once.  */
#define TEST_COMPARE(left, right)                                       \
  do                                                                    \
    {                                                                   \
      __typeof__ (left) compare_left = (left);                          \
      __typeof__ (right) compare_right = (right);                       \
      bool compare_left_negative                                        \
        = (__typeof__ (compare_left)) -1 < 0                            \
          && (long long) compare_left < 0;                              \
      bool compare_right_negative                                       \
        = (__typeof__ (compare_right)) -1 < 0                           \
          && (long long) compare_right < 0;                             \
      if (compare_left_negative != compare_right_negative               \
          || (unsigned long long) compare_left                          \
             != (unsigned long long) compare_right)                     \
        support_check_compare_failed                                    \
          (__FILE__, __LINE__, #left, compare_left_negative,            \
           (unsigned long long) compare_left, #right,                   \
           compare_right_negative, (unsigned long long) compare_right); \
    }                                                                   \
  while (0)

#endif
