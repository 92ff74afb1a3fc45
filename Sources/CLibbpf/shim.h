#ifndef UTAP_CLIBBPF_SHIM_H
#define UTAP_CLIBBPF_SHIM_H
#include <bpf/libbpf.h>
#include <bpf/bpf.h>
#include <libelf.h>
#include <gelf.h>
#endif
