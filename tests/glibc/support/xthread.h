/* buddyslab's stand-in for glibc's <support/xthread.h>: pthread calls
   that end the test (status 1) with a message when they fail.  */

#ifndef BUDDYSLAB_SUPPORT_XTHREAD_H
#define BUDDYSLAB_SUPPORT_XTHREAD_H

#include <pthread.h>

pthread_t xpthread_create (pthread_attr_t *attr, void *(*function) (void *),
                           void *argument);
/* Returns the thread's result.  */
void *xpthread_join (pthread_t thread);
void xpthread_kill (pthread_t thread, int signal_number);

void xpthread_barrier_init (pthread_barrier_t *barrier,
                            pthread_barrierattr_t *attr, unsigned int count);
/* Returns nonzero in exactly one of the threads released together.  */
int xpthread_barrier_wait (pthread_barrier_t *barrier);
void xpthread_barrier_destroy (pthread_barrier_t *barrier);
void xpthread_barrierattr_init (pthread_barrierattr_t *attr);
void xpthread_barrierattr_setpshared (pthread_barrierattr_t *attr,
                                      int pshared);
void xpthread_barrierattr_destroy (pthread_barrierattr_t *attr);

#endif
