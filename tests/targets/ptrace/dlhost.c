/* dlhost.c - probes in a library that comes and goes: R rounds (argv[1], default 2;
 * --wait: say ready and wait for a line on stdin first) of
 *   dlopen(<dir of /proc/self/exe>/libdlprobe.so) -> lib_probe(1), (2), (3) -> dlclose
 * and a check that dlclose really unmapped it (dlopen RTLD_NOLOAD then fails).
 *
 * Hits with the default R = 2: lib_probe 8 (per round 1 from the library's constructor,
 * during dlopen, with x = 0, then 3 from dlhost with x = 1, 2, 3); each round maps
 * the library afresh (possibly at a different address).
 * Output, one line per round:
 *   round 1 sum=306 lib_calls=4 unloaded=1
 *   round 2 sum=306 lib_calls=4 unloaded=1
 * sum = the three returns (101+102+103); lib_calls = the library's own count
 * (constructor + 3).
 */
#include "../common.h"
#include <dlfcn.h>
#include <limits.h>
#include <libgen.h>

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "dlhost: %s: %s\n", what, detail ? detail : "failed");
    exit(1);
}

int main(int argc, char **argv)
{
    target_line_buffered();
    struct target_opts opts;
    target_parse(argc, argv, 2, &opts);
    long rounds = opts.count;
    target_ready_wait(opts.wait);

    char exe[PATH_MAX], lib[PATH_MAX + 32];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        die("readlink /proc/self/exe", NULL);
    exe[len] = '\0';
    snprintf(lib, sizeof lib, "%s/libdlprobe.so", dirname(exe));

    for (long r = 1; r <= rounds; r++) {
        void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
        if (!h)
            die("dlopen", dlerror());
        int (*probe)(int) = (int (*)(int))dlsym(h, "lib_probe");
        int *calls = dlsym(h, "lib_probe_calls");
        if (!probe || !calls)
            die("dlsym", dlerror());
        long sum = 0;
        for (int x = 1; x <= 3; x++)
            sum += probe(x);
        int lib_calls = *calls;
        if (dlclose(h) != 0)
            die("dlclose", dlerror());
        void *still = dlopen(lib, RTLD_NOW | RTLD_NOLOAD);
        if (still)
            dlclose(still);
        printf("round %ld sum=%ld lib_calls=%d unloaded=%d\n", r, sum, lib_calls, still == NULL);
    }
    return 0;
}
