/* Compile-time checks that the C view of the shared layouts is the one Swift and BPF expect. */
#include <stddef.h>
#include "utap_abi.h"

_Static_assert(offsetof(struct utap_event, values) == UTAP_EVENT_HEADER_SIZE, "event header size");
_Static_assert(sizeof(struct utap_field_config) == 16, "field config size");
_Static_assert(sizeof(struct utap_probe_config) == 16 + 16 * UTAP_MAX_FIELDS, "probe config size");
_Static_assert((UTAP_RECORD_MAX & (UTAP_RECORD_MAX - 1)) == 0, "record max is a power of two");
_Static_assert(UTAP_EVENT_HEADER_SIZE + UTAP_MAX_FIELDS * (8 + UTAP_STR_MAX) +
               (8 + UTAP_BUILD_ID_FRAME_SIZE) * UTAP_STACK_MAX + 8 < UTAP_RECORD_MAX,
               "largest record fits");
_Static_assert(offsetof(struct utap_event, latency_ns) == 8 && offsetof(struct utap_event, pid) == 16 &&
               offsetof(struct utap_event, tid) == 20 && offsetof(struct utap_event, probe) == 24 &&
               offsetof(struct utap_event, size) == 28 && offsetof(struct utap_event, flags) == 30 &&
               offsetof(struct utap_event, comm) == 32,
               "RecordDecoder and RingSet read these offsets");
_Static_assert(sizeof(struct utap_histogram) == 24 + 8 * UTAP_HIST_BUCKETS, "histogram layout");
_Static_assert(UTAP_HIST_BUCKETS == 256, "LatencyHistogram.bucketCount");
_Static_assert(sizeof(struct utap_filter_insn) == 24, "filter instruction layout");
_Static_assert(sizeof(struct utap_filter) == 8 + 24 * UTAP_FILTER_MAX, "filter layout");
