/* libdlprobe.c -> libdlprobe.so, loaded and unloaded at run time by dlhost.
 *
 * int lib_probe(int x) -> x + 100. The constructor calls lib_probe(0) once per load,
 * so a probe on lib_probe is hit before dlopen has even returned. lib_probe_calls
 * counts the calls of this load (the data is fresh after each reload).
 * Hits per load: lib_probe 1 (constructor) + whatever the host calls.
 */
#include "../common.h"

volatile long utap_sink;
int lib_probe_calls;

PROBE int lib_probe(int x)
{
    utap_sink = x;
    lib_probe_calls++;
    return x + 100;
}

__attribute__((constructor)) static void lib_init(void)
{
    lib_probe(0);
}
