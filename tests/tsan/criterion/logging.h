/* Criterion stand-in for ThreadSanitizer builds: see criterion.h. */
#include <criterion/criterion.h>
