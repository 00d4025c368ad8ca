/* emu private: the device structure, shared by the emu sources only. */
#ifndef MOEMU_EMU_IMPL_H
#define MOEMU_EMU_IMPL_H

#include <stdio.h>

#include "emu/emu.h"

struct emu_dev {
    emu_spec_t spec;
    int rank;
    bool no_limit;
    double clock; /* virtual seconds */
    emu_kernel_stats_t kernels[EMU_KERNEL__COUNT];
    double mem[EMU_MEM__COUNT];
    double mem_peak[EMU_MEM__COUNT];
    double mem_total_peak;
};

#endif
