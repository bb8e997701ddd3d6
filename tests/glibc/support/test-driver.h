/* buddyslab's stand-in for glibc's <support/test-driver.h>: the constants
   a test may read.  The driver itself is test-driver.c, which a test
   includes at its end after defining do_test.  */

#ifndef BUDDYSLAB_SUPPORT_TEST_DRIVER_H
#define BUDDYSLAB_SUPPORT_TEST_DRIVER_H

enum
  {
    /* Exit status of a test that cannot run here.  */
    EXIT_UNSUPPORTED = 77,
    /* Seconds a test may run when it does not define TIMEOUT.  */
    DEFAULT_TIMEOUT = 20,
  };

#endif
