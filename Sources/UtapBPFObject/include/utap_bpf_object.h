#ifndef UTAP_BPF_OBJECT_H
#define UTAP_BPF_OBJECT_H
/* The prebuilt BPF object (bpf/utap.bpf.o), embedded at build time. */
const void *utap_bpf_object_data(void);
unsigned long utap_bpf_object_size(void);
#endif
