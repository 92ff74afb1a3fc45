/* xz decompression for MiniDebugInfo, over liblzma (in C: its stream's initialiser is a macro). */
#include "utap_xz.h"
#include <lzma.h>
#include <stdlib.h>

int utap_xz_decompress(const uint8_t *in, size_t in_size, size_t max_out, uint8_t **out, size_t *out_size)
{
    lzma_stream stream = LZMA_STREAM_INIT;
    /* A section of a few MiB decompresses in far less; this only bounds a hostile one. */
    if (lzma_stream_decoder(&stream, 256u << 20, 0) != LZMA_OK)
        return -1;
    size_t capacity = in_size * 4 < 4096 ? 4096 : in_size * 4;
    uint8_t *buffer = NULL;
    lzma_ret ret = LZMA_OK;
    stream.next_in = in;
    stream.avail_in = in_size;
    while (ret == LZMA_OK) {
        if (buffer == NULL || stream.avail_out == 0) {
            size_t used = buffer ? stream.total_out : 0;
            if (buffer) {
                if (capacity >= max_out)
                    break;
                capacity = capacity * 2 > max_out ? max_out : capacity * 2;
            } else if (capacity > max_out) {
                capacity = max_out;
            }
            uint8_t *grown = realloc(buffer, capacity);
            if (!grown)
                break;
            buffer = grown;
            stream.next_out = buffer + used;
            stream.avail_out = capacity - used;
        }
        /* LZMA_FINISH: the input is all there is; a stream cut short is an error. */
        ret = lzma_code(&stream, LZMA_FINISH);
    }
    size_t total = stream.total_out;
    lzma_end(&stream);
    if (ret != LZMA_STREAM_END) {
        free(buffer);
        return -1;
    }
    *out = buffer;
    *out_size = total;
    return 0;
}
