/* rename_me N: calls before_rename(i) N times, renames itself (prctl PR_SET_NAME) to
 * "after-rename", then calls after_rename(i) N times. Output: "renamed N". */
#include "common.h"
#include <sys/prctl.h>

volatile long utap_sink;

PROBE long before_rename(long i)
{
    utap_sink = i;
    return i;
}

PROBE long after_rename(long i)
{
    utap_sink = i;
    return i;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10;
    for (long i = 0; i < n; i++)
        before_rename(i);
    prctl(PR_SET_NAME, "after-rename");
    for (long i = 0; i < n; i++)
        after_rename(i);
    printf("renamed %ld\n", n);
    return 0;
}
