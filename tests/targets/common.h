/* Shared helpers for utap integration-test target programs.
 *
 * Conventions (see README.md):
 *   prog [COUNT] [--wait]
 *   COUNT  : optional decimal integer (program-specific default).
 *   --wait : after setup print exactly "ready <pid>\n" to stdout, flush,
 *            then block until one line (or EOF) is read from stdin.
 * Arguments may appear in either order.
 */
#ifndef UTAP_TARGET_COMMON_H
#define UTAP_TARGET_COMMON_H

#define _GNU_SOURCE 1
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Attribute for probed functions: never inlined, never cloned (.isra,
 * .constprop, .part), always emitted, and (GCC) no inter-procedural
 * assumptions at all, so every call site is a real `call` with the plain
 * SysV calling convention. */
#if defined(__clang__)
#define PROBE __attribute__((noinline, used))
#else
#define PROBE __attribute__((noinline, noclone, noipa, used))
#endif

/* Written by every probed function so no call can be dropped as pure. */
extern volatile long utap_sink;

struct target_opts {
    long count;
    int wait;
};

static inline void target_parse(int argc, char **argv, long def_count,
                                 struct target_opts *o)
{
    o->count = def_count;
    o->wait = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            o->wait = 1;
        } else {
            char *end = NULL;
            long v = strtol(argv[i], &end, 10);
            if (end != argv[i] && *end == '\0' && v >= 0)
                o->count = v;
        }
    }
}

static inline void target_line_buffered(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
}

/* Print "ready <pid>" and block on one line of stdin (EOF also releases). */
static inline void target_ready_wait(int wait)
{
    if (!wait)
        return;
    char line[256];
    printf("ready %ld\n", (long)getpid());
    fflush(stdout);
    if (fgets(line, sizeof line, stdin) == NULL) {
        /* EOF or error: proceed anyway. */
    }
}

/* Read every byte of a string (incl. NUL) through a volatile pointer so the
 * page holding it (e.g. .rodata) is mapped before a probed function receives
 * it. Otherwise the first in-kernel read of a never-touched .rodata page from
 * a uprobe handler fails (the handler cannot take the page fault) and string
 * arguments would decode as empty/unreadable depending on run conditions. */
static inline void target_touch(const char *s)
{
    const volatile char *p = s;
    while (*p)
        p++;
}

#endif
