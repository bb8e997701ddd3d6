/* buddyslab's stand-in for glibc's old test-skeleton.c, which older tests
   include as "../test-skeleton.c" after defining do_test: it is the
   driver.  The test harness copies the tests into a build folder with
   this file one level above them.  */

#include <support/test-driver.c>
