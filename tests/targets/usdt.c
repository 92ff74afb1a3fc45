/*
 * USDT target: SystemTap SDT probes, one of them guarded by its semaphore.
 *   usdt [COUNT]   (default 10)
 * Probes (provider utaptest):
 *   tick(i, -i)      COUNT times, i = 0..COUNT-1 (arguments: long, long)
 *   message(msg)     once, msg = "hello usdt" (char *)
 *   guarded(i)       for i = 0..COUNT-1, but only while the semaphore says a tracer is attached
 * Prints "guarded=N": how many guarded probes ran (0 when untraced).
 */
#define _SDT_HAS_SEMAPHORES 1
#include <stdio.h>
#include <stdlib.h>
#include <sys/sdt.h>

/* With _SDT_HAS_SEMAPHORES every probe's note names its semaphore; the kernel increments
 * one while a uprobe with that reference counter is attached. */
__extension__ unsigned short utaptest_tick_semaphore __attribute__((unused, section(".probes")));
__extension__ unsigned short utaptest_message_semaphore __attribute__((unused, section(".probes")));
__extension__ unsigned short utaptest_guarded_semaphore __attribute__((unused, section(".probes")));

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 10;
    for (long i = 0; i < count; i++)
        STAP_PROBE2(utaptest, tick, i, -i);
    const char *message = "hello usdt";
    /* Touch the string's page, as a real program would before passing it on: a uprobe
     * cannot fault in a page, and this process may be gone before utap can retry. */
    if (*(volatile const char *)message != 'h')
        return 1;
    STAP_PROBE1(utaptest, message, message);
    long guarded = 0;
    for (long i = 0; i < count; i++) {
        if (utaptest_guarded_semaphore) {
            guarded++;
            STAP_PROBE1(utaptest, guarded, i);
        }
    }
    printf("guarded=%ld\n", guarded);
    return 0;
}
