#ifndef UTAP_CZYDIS_SHIM_H
#define UTAP_CZYDIS_SHIM_H
#include <Zydis/Zydis.h>
#endif
