/* uselib.c - calls into libutaptest.so.1 (found via DT_RUNPATH $ORIGIN). */
#include "common.h"

int lib_add(int a, int b);
int lib_greet(const char *name);

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 10, &o);
    static const char world[] = "world";
    target_touch(world);

    target_ready_wait(o.wait);

    long sum = 0;
    for (int i = 0; i < o.count; i++)
        sum += lib_add(i, 100);
    int g = lib_greet(world);

    printf("sum=%ld greet=%d\n", sum, g);
    fflush(stdout);
    return 0;
}
