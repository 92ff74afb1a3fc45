/* libutaptest.c - shared library target (soname libutaptest.so.1). */
#include "common.h"

__attribute__((visibility("hidden"))) volatile long utap_sink;

PROBE int lib_add(int a, int b)
{
    utap_sink = a;
    return a + b;
}

PROBE int lib_greet(const char *name)
{
    int n = name ? (int)strlen(name) : -1;
    utap_sink = n;
    return n;
}
