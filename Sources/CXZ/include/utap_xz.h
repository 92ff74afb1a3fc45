#ifndef UTAP_XZ_H
#define UTAP_XZ_H
#include <stddef.h>
#include <stdint.h>

/*
 * Decompresses the complete .xz stream `in` (MiniDebugInfo's `.gnu_debugdata` section)
 * into a buffer from malloc, at most `max_out` bytes. Returns 0 and sets *out (for the
 * caller to free) and *out_size; -1 when `in` is not one whole xz stream, or would take
 * more than `max_out` bytes or more memory than liblzma is allowed here.
 */
int utap_xz_decompress(const uint8_t *in, size_t in_size, size_t max_out, uint8_t **out, size_t *out_size);

#endif
