// demangle_cxx.cpp - C++ names for the demangling tests: a namespace, a class with an
// overloaded method and a const method, a function template with two instances.
//   demangle_cxx [COUNT] [--wait]   (COUNT default 10)
// Calls, in order: Counter::bump(int) COUNT times (i = 0..COUNT-1), Counter::bump(double)
// twice (0.5), twice<int> 3 times (1, 2, 3), twice<long> once (21), report(Counter const&)
// once, which calls Counter::total() const once, which calls detail::sum(long, double) once.
// All keep frame pointers: a --stack taken in sum() shows report() (at a function's entry
// the frame-pointer walk skips the immediate caller, total()).
// Output: "total=T twice=W" with T = COUNT*(COUNT-1)/2 + 1 (the two 0.5s), W = 2+4+6+42.
#include "common.h"

volatile long utap_sink;

namespace shapes {

class Counter {
public:
    PROBE long bump(int by);
    PROBE long bump(double by);
    PROBE long total() const;

private:
    long value_ = 0;
    double fraction_ = 0;
};

long Counter::bump(int by)
{
    value_ += by;
    utap_sink = value_;
    return value_;
}

long Counter::bump(double by)
{
    fraction_ += by;
    utap_sink = (long)fraction_;
    return (long)fraction_;
}

namespace detail {

PROBE long sum(long whole, double fraction)
{
    utap_sink = whole;
    return whole + (long)fraction;
}

} // namespace detail

long Counter::total() const
{
    long total = detail::sum(value_, fraction_);
    utap_sink = total; // not a tail call: total() keeps its frame
    return total;
}

template <typename T>
PROBE T twice(T x)
{
    utap_sink = (long)x;
    return x + x;
}

template int twice<int>(int);
template long twice<long>(long);

// Calls total(): --stack tests see this frame, demangled, below it.
PROBE long report(const Counter &counter)
{
    long total = counter.total();
    utap_sink = total;
    return total + 0;
}

} // namespace shapes

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, 10, &o);
    target_ready_wait(o.wait);

    shapes::Counter counter;
    for (long i = 0; i < o.count; i++)
        counter.bump((int)i);
    counter.bump(0.5);
    counter.bump(0.5);
    long w = 0;
    for (int i = 1; i <= 3; i++)
        w += shapes::twice<int>(i);
    w += shapes::twice<long>(21);
    long total = shapes::report(counter);
    printf("total=%ld twice=%ld\n", total, w);
    return 0;
}
