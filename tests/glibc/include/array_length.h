/* buddyslab's stand-in for glibc's internal <array_length.h>.  */

#ifndef BUDDYSLAB_ARRAY_LENGTH_H
#define BUDDYSLAB_ARRAY_LENGTH_H

/* Number of elements of an array (not a pointer).  */
#define array_length(array) (sizeof (array) / sizeof ((array)[0]))

#endif
