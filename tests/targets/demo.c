/* demo.c - tiny fake request handler used by `make demo`. */
#include "common.h"
#include <time.h>

volatile long utap_sink;

PROBE long checksum(const char *buf, unsigned long len)
{
    long sum = 0;                       /* plain sum of the bytes */
    for (unsigned long i = 0; i < len; i++)
        sum += (unsigned char)buf[i];
    utap_sink = sum;
    return sum;
}

PROBE int handle_request(int id, const char *path)
{
    utap_sink = id;
    return strstr(path, "missing") ? 404 : 200;
}

static const char *const paths[] = {
    "/index.html",
    "/api/users/42",
    "/missing.png",
    "/static/app.js",
    "/api/orders?limit=10",
    "/favicon.ico",
    "/images/missing-logo.svg",
    "/about",
};
#define NPATHS (sizeof paths / sizeof paths[0])

int main(int argc, char **argv)
{
    struct target_opts o;
    target_line_buffered();
    target_parse(argc, argv, (long)NPATHS, &o);
    for (unsigned i = 0; i < NPATHS; i++)
        target_touch(paths[i]);

    target_ready_wait(o.wait);

    const struct timespec gap = { 0, 150L * 1000000L };
    for (long i = 0; i < o.count; i++) {
        const char *path = paths[i % NPATHS];
        if (i > 0)
            nanosleep(&gap, NULL);
        int id = (int)i + 1;
        int status = handle_request(id, path);
        long sum = checksum(path, strlen(path));
        printf("request %d GET %s -> %d (checksum %ld)\n", id, path, status, sum);
    }
    fflush(stdout);
    return 0;
}
