/* buddyslab's stand-in for glibc's <support/xsignal.h>.  */

#ifndef BUDDYSLAB_SUPPORT_XSIGNAL_H
#define BUDDYSLAB_SUPPORT_XSIGNAL_H

#include <signal.h>

/* signal(2) that ends the test (status 1) when it fails.  */
sighandler_t xsignal (int signal_number, sighandler_t handler);

#endif
