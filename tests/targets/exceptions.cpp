// C++ exceptions thrown through a function whose return is probed.
//   exceptions [COUNT]   (default 10)
// middle(i) calls thrower(i), which throws for odd i; main catches. For even i middle
// returns i + 1. Prints "caught=C sum=S": C = COUNT/2 (odd i), S = sum of (i + 1) for even i.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

extern "C" {
volatile int utap_sink;
}

__attribute__((noinline)) int thrower(int i)
{
    utap_sink = i;
    if (i % 2)
        throw std::runtime_error("odd");
    return i;
}

// Not a tail call: the + 1 runs after thrower returns, so middle has a frame to unwind.
__attribute__((noinline)) int middle(int i)
{
    return thrower(i) + 1;
}

int main(int argc, char **argv)
{
    int count = argc > 1 ? atoi(argv[1]) : 10;
    int caught = 0;
    long sum = 0;
    for (int i = 0; i < count; i++) {
        try {
            sum += middle(i);
        } catch (const std::exception &) {
            caught++;
        }
    }
    printf("caught=%d sum=%ld\n", caught, sum);
    return 0;
}
