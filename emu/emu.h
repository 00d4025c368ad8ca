/* emu: emulated GPUs. Status and errors shared by every module, emulated
 * dtypes, the kernel cost model, virtual devices with clocks and memory
 * capacity, topology and hardware presets. Knows nothing of the modules
 * above it (parallel, layers, engine). */
#ifndef MOEMU_EMU_H
#define MOEMU_EMU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- Status: 0 is success. The code that finds a problem names it with
 * moemu_fail(); callers pass the status up with MOEMU_CHECK. The message
 * lives in a thread-local buffer, like errno: each device thread keeps its
 * own. */
typedef enum {
    MOEMU_OK = 0,
    MOEMU_ERR_INVALID, /* bad argument, config, strategy or flag */
    MOEMU_ERR_IO,      /* a file could not be opened, read or written */
    MOEMU_ERR_FORMAT,  /* a file's contents are malformed */
    MOEMU_ERR_NOMEM,   /* the host is out of memory */
    MOEMU_ERR_OOM,     /* a virtual device is over its memory capacity */
    MOEMU_ERR_PEER,    /* released because another device failed */
    MOEMU_ERR_INTERNAL /* a broken invariant */
} moemu_status_t;

const char *moemu_strerror(moemu_status_t st);
/* Record a one-line message for this thread and return st. */
moemu_status_t moemu_fail(moemu_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* This thread's last message ("" if none). */
const char *moemu_errmsg(void);
void moemu_errclear(void);

#define MOEMU_CHECK(call)                                                      \
    do {                                                                       \
        moemu_status_t st_ = (call);                                           \
        if (st_ != MOEMU_OK) return st_;                                       \
    } while (0)

/* ---- Emulated storage types. Math is fp32 on the host; the dtype sets the
 * bytes counted for capacity, bandwidth and communication. INT32 is for
 * token ids and counts. */
typedef enum {
    EMU_DTYPE_FP32 = 0,
    EMU_DTYPE_FP16,
    EMU_DTYPE_BF16,
    EMU_DTYPE_INT32,
    EMU_DTYPE__COUNT
} emu_dtype_t;

size_t emu_dtype_size(emu_dtype_t dt);
const char *emu_dtype_name(emu_dtype_t dt); /* "fp32", "fp16", ... */
/* Accepts "fp32"/"float32"/"float", "fp16"/"float16"/"half",
 * "bf16"/"bfloat16". Returns false for anything else. */
bool emu_dtype_parse(const char *s, emu_dtype_t *out);
/* Round an fp32 value to the nearest value representable in dt
 * (round-to-nearest-even); identity for FP32. */
float emu_dtype_round(emu_dtype_t dt, float x);
uint16_t emu_f32_to_f16(float x);
float emu_f16_to_f32(uint16_t h);
uint16_t emu_f32_to_bf16(float x);
float emu_bf16_to_f32(uint16_t h);

/* ---- Kernel kinds, for the split of virtual time per kind. */
typedef enum {
    EMU_KERNEL_EMBED = 0,
    EMU_KERNEL_NORM,
    EMU_KERNEL_ROPE,
    EMU_KERNEL_GEMM,   /* dense projections (q, k, v, o, lm_head) */
    EMU_KERNEL_ATTN,   /* attention scores, softmax, weighted values */
    EMU_KERNEL_ROUTER, /* router softmax, top-k, capacity */
    EMU_KERNEL_EXPERT, /* routed and shared expert products */
    EMU_KERNEL_ELEMWISE,
    EMU_KERNEL__COUNT
} emu_kernel_t;

const char *emu_kernel_name(emu_kernel_t k);

/* ---- A device spec: the budgets of one emulated GPU. */
typedef struct {
    double peak_flops;   /* FLOP/s, dense fp16/bf16 */
    double mfu;          /* achievable fraction of peak_flops, (0, 1] */
    double mem_bw;       /* bytes/s */
    double bw_util;      /* achievable fraction of mem_bw, (0, 1] */
    double mem_capacity; /* bytes */
    double launch_s;     /* per-kernel launch overhead, seconds */
} emu_spec_t;

/* Virtual seconds a kernel costs on spec:
 * launch + max(flops / (peak*mfu), bytes / (bw*util)). */
double emu_kernel_time(const emu_spec_t *spec, double flops, double bytes);

/* Memory categories counted against a device's capacity. */
typedef enum {
    EMU_MEM_WEIGHTS = 0,
    EMU_MEM_KV,
    EMU_MEM_ACT,
    EMU_MEM_COMM,
    EMU_MEM_OTHER,
    EMU_MEM__COUNT
} emu_mem_t;

const char *emu_mem_name(emu_mem_t m);

/* ---- A virtual device: a clock, work counters and memory accounting.
 * A device belongs to one thread at a time. */
typedef struct emu_dev emu_dev_t;

/* Per-kind totals kept by a device. */
typedef struct {
    double flops, bytes;
    double time;         /* virtual seconds charged, launch included */
    double compute_time; /* of which compute-bound */
    double memory_time;  /* of which bandwidth-bound */
    uint64_t launches;
} emu_kernel_stats_t;

/* A device outside any cluster (the single-device engine, tests). rank is
 * only a label. no_limit lifts the memory capacity. */
moemu_status_t emu_dev_create(const emu_spec_t *spec, int rank, bool no_limit,
                              emu_dev_t **out);
void emu_dev_destroy(emu_dev_t *dev);

int emu_dev_rank(const emu_dev_t *dev);
const emu_spec_t *emu_dev_spec(const emu_dev_t *dev);
double emu_dev_clock(const emu_dev_t *dev);
/* Charge one kernel to the device's clock and counters. */
void emu_charge(emu_dev_t *dev, emu_kernel_t kind, double flops, double bytes);
const emu_kernel_stats_t *emu_dev_kernel_stats(const emu_dev_t *dev,
                                               emu_kernel_t kind);

/* Count bytes (device bytes, in the emulated dtype) of category cat against
 * the capacity. Over capacity: MOEMU_ERR_OOM with a message naming the
 * device, the request, the use by category and the capacity. */
moemu_status_t emu_mem_reserve(emu_dev_t *dev, emu_mem_t cat, double bytes);
void emu_mem_release(emu_dev_t *dev, emu_mem_t cat, double bytes);
double emu_mem_used(const emu_dev_t *dev, emu_mem_t cat);  /* current */
double emu_mem_peak(const emu_dev_t *dev, emu_mem_t cat);  /* per category */
double emu_mem_total(const emu_dev_t *dev);                /* current, all */
double emu_mem_total_peak(const emu_dev_t *dev);           /* peak of total */

#endif
