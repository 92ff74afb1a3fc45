/* args.c - argument/return-value decoding target (built five ways).
 * Exact call sequence: see README.md. */
#include "common.h"
#include <stdint.h>

volatile long utap_sink;

PROBE int first_call(int x)
{
    utap_sink = x;
    return x * 6;
}

PROBE long add2(long a, long b)
{
    utap_sink = a;
    return a + b;
}

PROBE void take_ints(signed char a, unsigned char b, short c,
                     unsigned short d, int e, unsigned int f)
{
    utap_sink = (long)a + (long)b + (long)c + (long)d + (long)e + (long)f;
}

PROBE long take_s64(long a, unsigned long b)
{
    utap_sink = a ^ (long)b;
    return -1;
}

PROBE int take_str(const char *s)
{
    if (s == NULL) {
        utap_sink = -1;
        return -1;
    }
    int n = (int)strlen(s);
    utap_sink = n;
    return n;
}

PROBE int is_even(int v)
{
    utap_sink = v;
    return (v % 2) == 0;
}

static int failures;

static void expect(const char *what, long got, long want)
{
    if (got != want) {
        fprintf(stderr, "args: %s returned %ld, expected %ld\n", what, got, want);
        failures++;
    }
}

int main(int argc, char **argv)
{
    int fc = first_call(7);

    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 10, &o);
    expect("first_call", fc, 42);

    static const char s_hello[] = "hello";
    static const char s_empty[] = "";
    static const char s_bytes[] = "\xff\xfe ok";   /* non-UTF-8 */
    target_touch(s_hello);
    target_touch(s_empty);
    target_touch(s_bytes);

    target_ready_wait(o.wait);

    long sum = 0;
    for (long i = 0; i < o.count; i++)
        sum += add2(i, 2 * i);

    take_ints(-5, 250, -30000, 65000, -2000000000, 4000000000u);

    expect("take_s64", take_s64(INT64_MIN, UINT64_MAX), -1);

    static char big[301];
    for (int i = 0; i < 300; i++)
        big[i] = (char)('a' + i % 26);
    big[300] = '\0';

    long strs = 0;
    strs += take_str(s_hello);
    strs += take_str(s_empty);
    strs += take_str(big);
    strs += take_str(s_bytes);
    strs += take_str(NULL);

    expect("is_even(3)", is_even(3), 0);
    expect("is_even(4)", is_even(4), 1);

    printf("sum=%ld strs=%ld\n", sum, strs);
    fflush(stdout);
    return failures ? 1 : 0;
}
