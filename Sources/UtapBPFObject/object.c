#pragma clang diagnostic ignored "-Wc23-extensions"
#include "utap_bpf_object.h"

/* `make bpf` touches this file so a rebuilt object is embedded again. */
static const unsigned char object[] = {
#embed "../../bpf/utap.bpf.o"
};

const void *utap_bpf_object_data(void) { return object; }
unsigned long utap_bpf_object_size(void) { return sizeof(object); }
