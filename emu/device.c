/* A virtual device: clock, per-kind work counters, memory by category. */
#include <stdlib.h>
#include <string.h>

#include "emu/emu_impl.h"

static const char *const emu_kernel_names[EMU_KERNEL__COUNT] = {
    [EMU_KERNEL_EMBED] = "embed",   [EMU_KERNEL_NORM] = "norm",
    [EMU_KERNEL_ROPE] = "rope",     [EMU_KERNEL_GEMM] = "gemm",
    [EMU_KERNEL_ATTN] = "attention", [EMU_KERNEL_ROUTER] = "router",
    [EMU_KERNEL_EXPERT] = "expert", [EMU_KERNEL_ELEMWISE] = "elementwise",
};

static const char *const emu_mem_names[EMU_MEM__COUNT] = {
    [EMU_MEM_WEIGHTS] = "weights", [EMU_MEM_KV] = "kv-cache",
    [EMU_MEM_ACT] = "activations", [EMU_MEM_COMM] = "comm-buffers",
    [EMU_MEM_OTHER] = "other",
};

const char *emu_kernel_name(emu_kernel_t k) { return emu_kernel_names[k]; }

const char *emu_mem_name(emu_mem_t m) { return emu_mem_names[m]; }

double emu_kernel_time(const emu_spec_t *spec, double flops, double bytes)
{
    double tc = flops / (spec->peak_flops * spec->mfu);
    double tm = bytes / (spec->mem_bw * spec->bw_util);
    return spec->launch_s + (tc > tm ? tc : tm);
}

moemu_status_t emu_dev_create(const emu_spec_t *spec, int rank, bool no_limit,
                              emu_dev_t **out)
{
    emu_dev_t *dev = calloc(1, sizeof *dev);
    if (!dev) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate device %d", rank);
    dev->spec = *spec;
    dev->rank = rank;
    dev->no_limit = no_limit;
    *out = dev;
    return MOEMU_OK;
}

void emu_dev_destroy(emu_dev_t *dev) { free(dev); }

int emu_dev_rank(const emu_dev_t *dev) { return dev->rank; }

const emu_spec_t *emu_dev_spec(const emu_dev_t *dev) { return &dev->spec; }

double emu_dev_clock(const emu_dev_t *dev) { return dev->clock; }

void emu_charge(emu_dev_t *dev, emu_kernel_t kind, double flops, double bytes)
{
    const emu_spec_t *s = &dev->spec;
    double tc = flops / (s->peak_flops * s->mfu);
    double tm = bytes / (s->mem_bw * s->bw_util);
    emu_kernel_stats_t *k = &dev->kernels[kind];
    k->flops += flops;
    k->bytes += bytes;
    k->launches++;
    if (tc >= tm) k->compute_time += s->launch_s + tc;
    else k->memory_time += s->launch_s + tm;
    double t = s->launch_s + (tc > tm ? tc : tm);
    k->time += t;
    dev->clock += t;
}

const emu_kernel_stats_t *emu_dev_kernel_stats(const emu_dev_t *dev,
                                               emu_kernel_t kind)
{
    return &dev->kernels[kind];
}

moemu_status_t emu_mem_reserve(emu_dev_t *dev, emu_mem_t cat, double bytes)
{
    double total = emu_mem_total(dev);
    if (!dev->no_limit && total + bytes > dev->spec.mem_capacity) {
        char use[512];
        size_t n = 0;
        for (int c = 0; c < EMU_MEM__COUNT; c++)
            n += (size_t)snprintf(use + n, sizeof use - n, "%s%s %.3f GB",
                                  c ? ", " : "", emu_mem_names[c],
                                  dev->mem[c] / 1e9);
        return moemu_fail(MOEMU_ERR_OOM,
                          "device %d out of memory: %s request of %.3f GB "
                          "on top of %.3f GB in use (%s) exceeds the "
                          "capacity of %.3f GB",
                          dev->rank, emu_mem_names[cat], bytes / 1e9,
                          total / 1e9, use, dev->spec.mem_capacity / 1e9);
    }
    dev->mem[cat] += bytes;
    if (dev->mem[cat] > dev->mem_peak[cat]) dev->mem_peak[cat] = dev->mem[cat];
    if (total + bytes > dev->mem_total_peak) dev->mem_total_peak = total + bytes;
    return MOEMU_OK;
}

void emu_mem_release(emu_dev_t *dev, emu_mem_t cat, double bytes)
{
    dev->mem[cat] -= bytes;
}

double emu_mem_used(const emu_dev_t *dev, emu_mem_t cat) { return dev->mem[cat]; }

double emu_mem_peak(const emu_dev_t *dev, emu_mem_t cat) { return dev->mem_peak[cat]; }

double emu_mem_total(const emu_dev_t *dev)
{
    double t = 0;
    for (int c = 0; c < EMU_MEM__COUNT; c++) t += dev->mem[c];
    return t;
}

double emu_mem_total_peak(const emu_dev_t *dev) { return dev->mem_total_peak; }
