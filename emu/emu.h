/* emu: emulated GPUs. Status and errors shared by every module, emulated
 * dtypes, the kernel cost model, virtual devices with clocks and memory
 * capacity, topology and hardware presets. Knows nothing of the modules
 * above it (parallel, layers, engine). */
#ifndef MOEMU_EMU_H
#define MOEMU_EMU_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

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
/* Record a one-line message for this thread and return st. Control
 * characters in it (from file names, tensor names, config values) are
 * written as \xNN; an argument may be moemu_errmsg() itself. */
moemu_status_t moemu_fail(moemu_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* This thread's last message ("" if none). */
const char *moemu_errmsg(void);
/* Problems found together, reported at once: "; "-joined into buf, n of
 * them (a full buffer keeps what fits). Start from {0}.
 * With lines set (start from {.lines = true}), for lists too long for one
 * line (a checkpoint's missing and misshapen tensors): each problem goes
 * on a line of its own, after "\n  ", with its control characters already
 * written as \xNN so that the only line breaks are the separators; a
 * problem that no longer fits whole is left out and counted in dropped.
 * Report them with moemu_fail_problems. */
typedef struct {
    char buf[4096];
    size_t len;
    int n;
    bool lines;
    int dropped;
} moemu_problems_t;
void moemu_problem(moemu_problems_t *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* moemu_fail with fmt's message (escaped as moemu_fail's) followed by p's
 * problems: one a line when p->lines (and "(N more not shown)" for those
 * dropped), else after ": " on the same line. */
moemu_status_t moemu_fail_problems(moemu_status_t st, const moemu_problems_t *p,
                                   const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void moemu_errclear(void);
/* Something the user should know that does not stop the run (keys a
 * config holds that moemu does not read): one line, its control
 * characters escaped, to the warning handler, by default
 * "moemu: warning: ..." on stderr. */
moemu_status_t moemu_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Replace the handler (NULL restores stderr); tests capture warnings. */
void moemu_warn_handler(void (*fn)(void *arg, const char *line), void *arg);
/* Strict mode (--strict, for CI): every warning is an error instead,
 * moemu_warn then returns MOEMU_ERR_INVALID with the warning as this
 * thread's message. Process-wide; set before any work. */
void moemu_set_strict(bool on);
bool moemu_strict(void);

#define MOEMU_CHECK(call)                                                      \
    do {                                                                       \
        moemu_status_t st_ = (call);                                           \
        if (st_ != MOEMU_OK) return st_;                                       \
    } while (0)

/* ---- Reading JSON: one family of typed getters for every loader
 * (hardware, strategies, configs, plans, workloads). A message names the
 * origin, the key with the object's path, the type or range expected and
 * the value found: "p.json: plan key 'workload.batch' = 0 is out of range
 * (at least 1)". */
typedef struct {
    const char *origin;    /* the file or text read: first in every message */
    const char *noun;      /* what a key is called ("config key"); NULL: "key" */
    const char *path;      /* the object's place in the document ("device",
                              "claims[2]"); NULL: the top level */
    moemu_status_t status; /* of a bad value and of malformed JSON; 0:
                              MOEMU_ERR_INVALID and MOEMU_ERR_FORMAT */
} emu_json_src_t;

enum {
    EMU_JSON_REQUIRED = 1 << 0,   /* absent is an error */
    EMU_JSON_NULLABLE = 1 << 1,   /* null reads as absent */
    EMU_JSON_WHOLE_REAL = 1 << 2, /* a whole real (4096.0) reads as an integer */
};

/* Parse text, or the file at path, into *root (the caller's: json_decref).
 * Duplicate keys are refused. A file that cannot be read is MOEMU_ERR_IO. */
moemu_status_t emu_json_load_text(const emu_json_src_t *src, const char *text, json_t **root);
moemu_status_t emu_json_load_file(const emu_json_src_t *src, const char *path, json_t **root);
/* src inside it at key (a path "key" or "parent.key", held in buf). */
emu_json_src_t emu_json_in(const emu_json_src_t *src, const char *key, char *buf, size_t n);
/* The same for element i of the array src names ("pp_layers[1]"). */
emu_json_src_t emu_json_at(const emu_json_src_t *src, size_t i, char *buf, size_t n);

/* Getters: the value of key in the object obj. Absent (see the flags):
 * MOEMU_OK with *out untouched, so a default set before stays. */
moemu_status_t emu_json_get(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, json_t **out);
moemu_status_t emu_json_int(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, int lo, int hi, int *out);
moemu_status_t emu_json_i64(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, int64_t lo, int64_t hi, int64_t *out);
moemu_status_t emu_json_num(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, double *out);
moemu_status_t emu_json_bool(const emu_json_src_t *src, const json_t *obj, const char *key,
                             int flags, bool *out);
moemu_status_t emu_json_str(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, const char **out);
moemu_status_t emu_json_obj(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, json_t **out);
moemu_status_t emu_json_arr(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, json_t **out);
/* Element i of the array src names, as emu_json_int (always required). */
moemu_status_t emu_json_int_at(const emu_json_src_t *src, const json_t *arr, size_t i,
                               int lo, int hi, int *out);
/* A rule of the caller's: "<origin>: <noun> '<path.key>' <why>[, got <v>]"
 * (key NULL: the object itself; v NULL: no value shown). */
moemu_status_t emu_json_bad(const emu_json_src_t *src, const char *key, const json_t *v,
                            const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/* v as a message shows it: 4096, 2.0, 1e-05, "silu", compact JSON cut at
 * about 70 characters. */
void emu_json_describe(const json_t *v, char *buf, size_t n);

/* ---- Vector kernels, chosen at run time from what the host's CPU has:
 * portable C, AVX2 (with F16C), AVX-512 (F, BW, VL). Every kernel gives
 * the same bits; only the speed differs. */
typedef enum { EMU_SIMD_C, EMU_SIMD_AVX2, EMU_SIMD_AVX512, EMU_SIMD__COUNT } emu_simd_t;
bool emu_simd_supported(emu_simd_t k);
emu_simd_t emu_simd_best(void); /* the widest supported */
const char *emu_simd_name(emu_simd_t k); /* "c", "avx2", "avx512" */

/* ---- Emulated storage types. Math is fp32 on the host; the dtype sets the
 * bytes counted for capacity, bandwidth and communication. INT32 is for
 * token ids and counts. FP8 (e4m3) is a storage and exchange format, never
 * a model's dtype: activations sent in it carry an fp32 scale per 128
 * values (DeepSeek-V3's 1 x 128 tiles), weights stored in it a scale per
 * block (cfg_weight_size). */
typedef enum {
    EMU_DTYPE_FP32 = 0,
    EMU_DTYPE_FP16,
    EMU_DTYPE_BF16,
    EMU_DTYPE_INT32,
    EMU_DTYPE_FP8,
    EMU_DTYPE__COUNT
} emu_dtype_t;

#define EMU_FP8_GROUP 128 /* values per scale of FP8 activations */
size_t emu_dtype_size(emu_dtype_t dt);
/* Bytes an element takes with its share of the scales: 1 + 4/128 for FP8,
 * the size otherwise. What capacity, bandwidth and links are charged. */
double emu_dtype_bytes(emu_dtype_t dt);
const char *emu_dtype_name(emu_dtype_t dt); /* "fp32", "fp16", ... */
/* Accepts "fp32"/"float32"/"float", "fp16"/"float16"/"half",
 * "bf16"/"bfloat16", "fp8"/"float8_e4m3fn". Returns false for anything
 * else. */
bool emu_dtype_parse(const char *s, emu_dtype_t *out);
/* Round an fp32 value to the nearest value representable in dt
 * (round-to-nearest-even; FP8 without a scale); identity for FP32. */
float emu_dtype_round(emu_dtype_t dt, float x);
/* emu_dtype_round of p[0..n) in place, bit for bit, on the widest vector
 * kernel the CPU has (emu_simd_best). */
void emu_dtype_round_n(emu_dtype_t dt, float *p, int64_t n);
/* The same on kernel k, which the CPU must support: for tests and benches. */
void emu_dtype_round_n_on(emu_simd_t k, emu_dtype_t dt, float *p, int64_t n);
/* Values already in dt (fp16 or bf16) as their 16 bits, and back: exact
 * both ways, on the widest vector kernel the CPU has. fp16's packing takes
 * any value: its conversion rounds as emu_dtype_round does. */
void emu_dtype_pack_n(emu_dtype_t dt, uint16_t *out, const float *in, int64_t n);
void emu_dtype_widen_n(emu_dtype_t dt, float *out, const uint16_t *in, int64_t n);
uint16_t emu_f32_to_f16(float x);
float emu_f16_to_f32(uint16_t h);
uint16_t emu_f32_to_bf16(float x);
float emu_bf16_to_f32(uint16_t h);
/* FP8 is float8_e4m3fn (OCP FP8): 1 sign bit, 4 exponent bits with
 * bias 7, 3 mantissa bits, no infinities; 0x7f and 0xff are NaN, 448 the
 * largest value, 2^-6 (0x08) the smallest normal, 2^-9 (0x01) the
 * smallest subnormal. Decoding is exact. Encoding rounds to nearest even
 * and, as torch's float8_e4m3fn cast does (c10 fp8e4m3fn_from_fp32_value),
 * gives NaN (0x7f with the sign) for what rounds above 448, i.e. above
 * 464, and for Inf and NaN: it does not saturate. */
uint8_t emu_f32_to_e4m3(float x);
float emu_e4m3_to_f32(uint8_t b);

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

/* The host's monotonic clock in seconds, for wall-time figures (never for
 * virtual time). */
double emu_host_seconds(void);

/* FNV-1a over n bytes, continuing from h (EMU_FNV1A_INIT to begin): the
 * streams of generated weights (by tensor name) and the fingerprints that
 * refuse MPI processes running different jobs. */
#define EMU_FNV1A_INIT 0xcbf29ce484222325ull
uint64_t emu_fnv1a(uint64_t h, const void *p, size_t n);

/* ---- How one kind of kernel runs on a device (the preset's
 * "device.kernels.<kind>"). A kind not set costs the plain roofline. */
#define EMU_ROW_TILES_MAX 8
typedef struct {
    bool set;
    int nrow_tiles;                   /* 0: no tiles (needs col_tile too) */
    int row_tiles[EMU_ROW_TILES_MAX]; /* output rows per tile, ascending */
    int col_tile;                     /* output columns per tile; 0: none */
    double overlap; /* of the smaller of compute and memory time hidden
                       under the larger, [0, 1]; 1: the plain roofline */
    double mfu;     /* the kind's own fraction of peak; 0: the device's */
} emu_kernel_cost_t;

/* How the software stack runs what the strategy asks: the choices of an
 * engine profile (its "overlap" and "dispatcher"), or of --overlap and
 * --dispatcher. */
typedef enum {
    EMU_OVERLAP_NONE = 0,
    /* Megatron-Core's --moe-shared-expert-overlap: the shared experts
     * compute while the routed tokens' all-to-all is in flight (emu.h,
     * "Streams") */
    EMU_OVERLAP_SHARED_EXPERTS,
    /* DeepSeek's and SGLang's two-batch overlap (--enable-two-batch-overlap):
     * micro-batches run two at a time as lanes of each device, one's
     * dispatch and combine in flight while the other computes, the shared
     * experts beside the dispatch ("Lanes") */
    EMU_OVERLAP_TWO_BATCH,
    EMU_OVERLAP__COUNT
} emu_overlap_mode_t;

typedef enum {
    EMU_DISPATCH_ALLTOALL = 0, /* counts, then rows, all-to-all over EP */
    /* Megatron-Core's --moe-token-dispatcher-type allgather: every EP
     * member gathers the group's rows and choices, computes its experts on
     * all of them, and a reduce-scatter sums the outputs back */
    EMU_DISPATCH_ALLGATHER,
    /* DeepEP's normal mode: each row goes once to each member holding one
     * of its choices, and one row per (row, member) comes back, the
     * member's experts' outputs summed there */
    EMU_DISPATCH_DEEPEP,
    /* DeepEP's low-latency mode: each row goes to each expert it chose,
     * the counts in band with the rows (no exchange of its own, no host
     * synchronisation), and each choice's output comes back to be
     * weighted at its row; buffers of a fixed size */
    EMU_DISPATCH_DEEPEP_LL,
    /* SGLang's --deepep-mode auto: the normal mode in prefill, the
     * low-latency one in decode */
    EMU_DISPATCH_DEEPEP_AUTO,
    EMU_DISPATCH__COUNT
} emu_dispatcher_t;

/* How many kernels a layer launches for its projections. */
typedef enum {
    /* one per weight matrix, as Hugging Face transformers runs them */
    EMU_KERNELS_SEPARATE = 0,
    /* q, k and v as one product, and gate and up as one (vLLM's
     * QKVParallelLinear and MergedColumnParallelLinear, fused_moe's w13,
     * TensorRT-LLM's and Megatron-Core's fused QKV and fc1) */
    EMU_KERNELS_FUSED,
    EMU_KERNELS__COUNT
} emu_kernels_mode_t;

typedef struct {
    emu_overlap_mode_t overlap;
    emu_dispatcher_t dispatcher;
    emu_kernels_mode_t kernels;
} emu_stack_t;

/* Set choice key ("overlap": "none", "shared-experts", "two-batch"; "dispatcher":
 * "all-to-all", "all-gather", "deepep"; "kernels": "separate", "fused") to the
 * value named; MOEMU_ERR_INVALID, the
 * message beginning with origin and listing the values, when the key or
 * the value (NULL: not a string) is none of them. */
moemu_status_t emu_stack_set(emu_stack_t *s, const char *key, const char *value,
                             const char *origin);
/* The choices' keys, NULL past the last. */
const char *emu_stack_key(int i);
/* The name of the value of choice key in s. */
const char *emu_stack_name(const emu_stack_t *s, const char *key);

/* ---- A device spec: the budgets of one emulated GPU, and what its
 * software stack overlaps. */
typedef struct {
    double peak_flops;   /* FLOP/s, dense fp16/bf16 */
    double peak_flops_fp8; /* FLOP/s, dense FP8 (e4m3) Tensor Core; 0: none */
    double mfu;          /* achievable fraction of peak_flops, (0, 1] */
    double mem_bw;       /* bytes/s */
    double bw_util;      /* achievable fraction of mem_bw, (0, 1] */
    double mem_capacity; /* bytes */
    double launch_s;     /* per-kernel launch overhead, seconds */
    double host_seq_s;   /* the serving engine's host work per sequence and
                          * forward pass (scheduling, sampling), seconds,
                          * the device waiting; 0: none */
    int units;           /* compute units (SMs) tiles spread over; 0: none */
    emu_kernel_cost_t kernels[EMU_KERNEL__COUNT];
    emu_stack_t stack;
} emu_spec_t;

/* Virtual seconds a kernel costs on spec:
 * launch + max(flops / (peak*mfu), bytes / (bw*util)). */
double emu_kernel_time(const emu_spec_t *spec, double flops, double bytes);

/* One matrix product of a kernel: m x k times k x n; count of them (0 or
 * 1: one), as attention's heads are. */
typedef struct {
    int64_t m, n, k, count;
} emu_gemm_t;

/* Virtual seconds a kernel of kind costs on spec (docs/emulation.md,
 * "Kernels"): the plain roofline unless spec sets the kind; then its mfu,
 * the partial overlap of compute and memory and, with tiles and units,
 * the compute of the n products g (NULL: none) as tiles in waves. */
double emu_kernel_time_of(const emu_spec_t *spec, emu_kernel_t kind, const emu_gemm_t *g,
                          int n, double flops, double bytes);

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
    double fp8_flops;    /* of flops, computed in FP8 (emu_charge_gemm_fp8) */
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
/* The same for a kernel of n matrix products g (a grouped expert product
 * is one kernel of one product per expert): timed by their shapes
 * (emu_kernel_time_of). flops: the kernel's FLOPs, 2 m n k summed plus
 * any epilogue it fuses (a bias). */
void emu_charge_gemm(emu_dev_t *dev, emu_kernel_t kind, const emu_gemm_t *g, int n,
                     double flops, double bytes);
/* The same for products computed in FP8 (e4m3 operands, fp32 sums): at
 * peak_flops_fp8 instead of peak_flops (the dtype's, on a card without
 * one; callers refuse FP8 there first). */
void emu_charge_gemm_fp8(emu_dev_t *dev, emu_kernel_t kind, const emu_gemm_t *g, int n,
                         double flops, double bytes);
/* The serving engine's host work for a pass of sequences sequences:
 * spec.host_seq_s each, the device waiting (nothing when 0). */
void emu_charge_host(emu_dev_t *dev, int sequences);
/* The virtual seconds charged so. */
double emu_dev_host_time(const emu_dev_t *dev);
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

/* Allocate a host buffer of host_bytes (64-byte aligned, zeroed) that the
 * device holds as dev_bytes of category cat (the emulated dtype's bytes;
 * the host keeps fp32). The capacity check is emu_mem_reserve's. The caller
 * frees it with emu_free and the same sizes. In no-data mode (below) the
 * buffer is a page-aligned mapping that is neither zeroed nor backed by
 * host memory: its addresses are valid, its bytes must not be touched. */
moemu_status_t emu_alloc(emu_dev_t *dev, emu_mem_t cat, size_t host_bytes,
                         double dev_bytes, void **out);
void emu_free(emu_dev_t *dev, emu_mem_t cat, void *p, double dev_bytes);

/* ---- No-data mode, for dry runs: the same schedule, the same
 * collectives and the same cost accounting, without computing or storing
 * tensors. emu_alloc checks and counts the device bytes exactly as with
 * data, but maps the host buffer with mmap(MAP_NORESERVE) and never
 * touches it (it costs address space, no host memory; emu_free unmaps
 * it). Collectives of members in no-data mode synchronise, check and
 * charge exactly as with data (virtual times and counters are the same
 * bits) but move no data and accept NULL buffers; the members of a
 * communicator must all be in the same mode. Off by default; a cluster
 * turns it on for every device with opts.nodata. Set it between runs. A
 * buffer allocated in one mode may be freed in the other. */
void emu_dev_set_nodata(emu_dev_t *dev, bool on);
bool emu_dev_nodata(const emu_dev_t *dev);

/* ---- Tracing: a log of the spans of a device's virtual timeline, off by
 * default (then it costs one branch per charge). While on, every charge
 * records what moved the clock: a kernel (emu_charge), the wait for the
 * last member of a collective or for a message's departure (idle, only
 * when > 0), and the communication itself (only when it takes time; sends
 * take none). A device's spans never overlap, are in time order, and tile
 * its clock from the first recorded span on: each starts where the
 * previous ended and the last ends at the clock. The exception is a
 * collective that ran beside computation or queued behind one that did:
 * its spans (waiting for the group, communicating) are on stream 1, in
 * time order there, and the compute stream shows only its own wait for
 * them (idle, named after the last). Spans belong with the
 * clock: they carry over from run to run, and go with the device. */
typedef enum {
    EMU_SPAN_KERNEL = 0,
    EMU_SPAN_COMM,
    EMU_SPAN_IDLE,
    EMU_SPAN_HOST, /* the engine's host work (emu_charge_host) */
    EMU_SPAN__COUNT
} emu_span_cat_t;

/* "kernel", "comm", "idle", "host" */
const char *emu_span_cat_name(emu_span_cat_t c);

typedef struct {
    double start, end; /* virtual seconds; the duration is end - start */
    double flops;      /* kernels; 0 for the others */
    double bytes;      /* kernels: bytes moved; comm: bytes this device
                        * sent (its emu_comm_stats_t share), but a recv:
                        * the message's bytes; idle: 0 */
    int32_t layer;     /* the device's layer tag at the time, -1: none */
    uint8_t cat;       /* emu_span_cat_t */
    uint8_t kind;      /* kernels: emu_kernel_t; comm, idle: emu_coll_t */
    uint8_t link;      /* comm, idle: emu_link_t of the collective (the
                        * group's class; a recv: the pair's); kernels: 0 */
    uint8_t stream;    /* 0: the compute stream; 1: the communication
                        * stream (emu.h, "Streams") */
} emu_span_t;

/* The span's name as the trace shows it: the kernel kind ("gemm"), the
 * collective ("all-reduce", "recv") or the wait ("wait: all-gather"). */
const char *emu_span_name(const emu_span_t *s);

/* Record spans from now on (or stop; recorded spans stay). Between runs,
 * or from the device's own thread. A cluster turns it on for every device
 * with opts.trace. */
void emu_dev_set_trace(emu_dev_t *dev, bool on);
bool emu_dev_tracing(const emu_dev_t *dev);
/* The layer tag recorded with each span from now on; -1 (the default):
 * none. From the device's own thread. */
void emu_dev_set_layer(emu_dev_t *dev, int layer);
int emu_dev_layer(const emu_dev_t *dev);
size_t emu_dev_span_count(const emu_dev_t *dev);
/* Span i (0 <= i < count), oldest first; valid until the next charge. */
const emu_span_t *emu_dev_span(const emu_dev_t *dev, size_t i);

/* Byte counts for messages: "512 B", "1.50 KB", "64.0 MB", "80.0 GB"
 * (decimal units). Returns buf. */
char *emu_fmt_bytes(double bytes, char buf[32]);

/* ---- Topology: nodes of devices_per_node devices; device d lies on node
 * d / devices_per_node. Bandwidths are per device and per direction (a
 * device sends at bw while it receives at bw): NVLink's datasheet figure,
 * which adds both directions, is halved; a NIC's line rate is per
 * direction already. The inter-node figures are one device's NIC. */
typedef struct {
    int devices_per_node; /* >= 1 */
    int nodes;            /* 0: as many as the devices need */
    double intra_bw;      /* bytes/s per direction, inside a node */
    double intra_lat;     /* seconds per message or ring step */
    double inter_bw;      /* bytes/s per direction of one device's NIC */
    double inter_lat;     /* seconds */
} emu_topo_t;

/* Link classes: which links a transfer crosses. */
typedef enum {
    EMU_LINK_INTRA = 0, /* inside a node (NVLink) */
    EMU_LINK_INTER,     /* between nodes (the device's NIC) */
    EMU_LINK__COUNT
} emu_link_t;

const char *emu_link_name(emu_link_t l); /* "intra-node", "inter-node" */
int emu_topo_node(const emu_topo_t *t, int rank);
emu_link_t emu_topo_link(const emu_topo_t *t, int a, int b);
/* The slowest class a group of global ranks crosses: inter-node as soon as
 * its members span two nodes. A group of one is intra-node. */
emu_link_t emu_topo_group_link(const emu_topo_t *t, const int *ranks, int n);
double emu_topo_bw(const emu_topo_t *t, emu_link_t l);
double emu_topo_lat(const emu_topo_t *t, emu_link_t l);

/* Check a spec or topology: every figure within its physical range
 * (docs/emulation.md, "Preset files": peak_flops in [1e9, 1e18] FLOP/s,
 * mfu and bw_util in [0.001, 1], ...), the range named in the message.
 * origin names the source in the message (a file, "--hw", ...). */
moemu_status_t emu_spec_check(const emu_spec_t *s, const char *origin);
moemu_status_t emu_topo_check(const emu_topo_t *t, const char *origin);
/* The nodes ndev devices occupy on t: t->nodes, or as many as they need
 * when it is 0; MOEMU_ERR_INVALID naming the numbers when they do not fit. */
moemu_status_t emu_topo_nodes(const emu_topo_t *t, int ndev, int *nodes);

/* ---- Hardware presets: a device spec and the topology of its usual node,
 * with a name and a comment that cites the sources of the figures. */
typedef struct {
    char name[64];
    char comment[4096];
    emu_spec_t spec;
    emu_topo_t topo; /* nodes is 0 unless the file sets it */
} emu_hw_t;

/* Load a preset by name ("h100-sxm"), or a JSON file when the argument
 * holds a '/' or ends in ".json". Built-in presets are compiled into the
 * library; a name not built in is looked for as <pkgdatadir>/hw/NAME.json.
 * Unknown keys are ignored; a missing key, a wrong type or an impossible
 * value is an error naming the key and the file. */
moemu_status_t emu_hw_load(const char *name_or_path, emu_hw_t *out);
/* One warning (an error under --strict) naming the figures of a loaded
 * hardware file outside what real accelerators and links have (a 1 MB
 * device, a 1e9 GB/s link), with the plausible range of each. */
moemu_status_t emu_hw_plausible(const emu_hw_t *hw, const char *origin);

/* Parse JSON text; origin names it in messages. */
moemu_status_t emu_hw_parse(const char *json, const char *origin,
                            emu_hw_t *out);
/* The JSON document of a preset or file that emu_hw_load accepts, as
 * written (comments and all); the caller decrefs it. */
moemu_status_t emu_hw_json(const char *name_or_path, json_t **out);
/* ---- Engine profiles: how a serving stack runs on each card, as the
 * efficiency parameters fitted for it (hw/engines/NAME.json, built in, or
 * a path): {"name", "comment", "overlap" and "dispatcher" (optional: the
 * emu_stack_t choices), "cards": {"<preset name>": {"mfu", "bw_util",
 * "launch_s", "overlap", "comment"}}}. emu_engine_apply puts the entry of
 * hw's card over hw's device (a card's overlap: every kernel kind the
 * preset sets) with the profile's choices, checked as a preset's figures are, and names hw
 * "<card>+<profile name>" (reports say what ran); *found is false (hw
 * untouched) when the profile has no entry for the card. An unknown
 * profile is MOEMU_ERR_INVALID naming the built-in ones. */
moemu_status_t emu_engine_apply(const char *engine, emu_hw_t *hw, bool *found);
/* The profile's JSON as written; the caller decrefs it. */
moemu_status_t emu_engine_json(const char *engine, json_t **out);
/* The built-in profiles' names, NULL past the last. */
const char *emu_engine_name(int i);
int emu_hw_preset_count(void);
const char *emu_hw_preset_name(int i); /* built-in presets, in order */

/* The host as hwloc sees it (for `moemu hw` and thread placement). */
typedef struct {
    int packages, numa_nodes, cores, pus; /* usable by this process */
    char cpu_model[128];                   /* "" if unknown */
} emu_host_t;

moemu_status_t emu_host_query(emu_host_t *out);

/* ---- The host's limits (emu/limits.c): what this process may still
 * take, read from the kernel when asked. A run adds up what it will need
 * and checks it before it allocates or starts anything large, so that a
 * run too large for the host is refused at once with both figures. */
typedef struct {
    double left;      /* what this process may still take; INFINITY: no limit */
    double limit;     /* the limit itself */
    const char *name; /* "the address-space limit (RLIMIT_AS, ulimit -v)" */
} emu_limit_t;

/* Each the tightest of its limits: memory (MemAvailable; a cgroup v2
 * memory.max or v1 memory.limit_in_bytes less the cgroup's use), address
 * space (RLIMIT_AS less VmSize), threads (RLIMIT_NPROC, threads-max, the
 * cgroup's pids.max) and memory mappings (vm.max_map_count). */
typedef struct {
    emu_limit_t mem, as, threads, maps;
} emu_limits_t;

void emu_limits_read(emu_limits_t *out);

/* What a step will take: named parts in resident bytes (mem) and address
 * space (as), threads and mappings. Start from {0}. */
#define EMU_NEED_PARTS 8
typedef struct {
    const char *what;
    double mem, as;
} emu_need_part_t;

typedef struct {
    emu_need_part_t part[EMU_NEED_PARTS];
    int n;
    double threads, maps;
    const char *hint; /* appended to a refusal: "; or use ..." */
} emu_need_t;

/* Add to the part named what (a static string), or start it. */
void emu_need_add(emu_need_t *n, const char *what, double mem, double as);
/* ndev device threads: their stacks, malloc arenas and devices, and with
 * blas_resident >= 0 (real math) the BLAS buffers of the callers
 * emu_blas_callers lets in at once, each mapping OpenBLAS's buffer and
 * keeping blas_resident bytes of it resident. */
void emu_need_devices(emu_need_t *n, int ndev, double blas_resident);
/* n against limits (NULL: read now): MOEMU_ERR_NOMEM naming what, the
 * need (by part), what is left and the limit, for the first of threads,
 * mappings, memory and address space that falls short. */
moemu_status_t emu_need_check(const emu_need_t *n, const emu_limits_t *limits,
                              const char *what);

/* ---- BLAS callers. OpenBLAS serves a fixed number of threads inside it
 * at once (its build's MAX_THREADS: one buffer each, in a table twice that
 * size); more crash it. Every BLAS call of moemu goes between
 * emu_blas_enter and emu_blas_leave, which let emu_blas_callers() threads
 * in at once (MAX_THREADS, or fewer with MOEMU_BLAS_CALLERS=N); the
 * others wait. Process-wide, as the library's table is; the results and
 * virtual times never depend on it. emu_blas_most: the most threads that
 * were inside at once since the process started (for tests). */
int emu_blas_callers(void);
void emu_blas_enter(void);
void emu_blas_leave(void);
int emu_blas_most(void);

/* OpenBLAS picks its kernels when it loads, from the CPU's model number;
 * a release older than the CPU (Debian 12's 0.3.21 on Sapphire or
 * Emerald Rapids) falls back to its SSE3 kernels ("Prescott"), several
 * times slower than the CPU's AVX-512 ones. emu_blas_core_advice: the
 * OpenBLAS core type the CPU's features call for when OpenBLAS fell back
 * to Prescott and OPENBLAS_CORETYPE is unset, else NULL.
 * emu_host_prepare, first thing in a program's main (moemu's and the
 * benches'): when there is advice, sets OPENBLAS_CORETYPE to it and
 * executes the program again (OpenBLAS reads it only when it loads), then
 * tunes malloc for a run's repeated large blocks. The kernels change the
 * bits of the math, never the virtual figures; OPENBLAS_CORETYPE set by
 * the user is always kept. */
const char *emu_blas_core_advice(void);
void emu_host_prepare(char **argv);
/* The core type of the kernels OpenBLAS runs: what a wall time assumed. */
const char *emu_blas_core(void);

/* ---- Collectives' cost model. Each algorithm's time is a closed form of
 * the group size p, the bytes B of the whole buffer in the emulated dtype
 * and the latency alpha (s) and bandwidth beta (bytes/s) of the slowest
 * link class the group crosses (docs/emulation.md derives each):
 *   all-reduce     ring      2(p-1) alpha + 2(p-1)/p B/beta   (default)
 *                  tree      2 ceil(log2 p) alpha + 2 B/beta
 *   reduce-scatter ring      (p-1) alpha + (p-1)/p B/beta
 *   all-gather     ring      (p-1) alpha + (p-1)/p B/beta
 *   broadcast      pipeline  (p-1) alpha + B/beta              (default)
 *                  binomial  ceil(log2 p) (alpha + B/beta)
 *   barrier        dissemination  ceil(log2 p) alpha
 * All-to-all (pairwise exchange) and send/recv cost each pair over its own
 * link class; see emu_coll_alltoall and emu_p2p_send. Their entries here
 * are the uniform case over one class: all-to-all "pairwise" (B/p to each
 * peer) is p-1 steps of alpha + B/p/beta, summed as emu_coll_alltoall
 * charges them; send/recv "hop" is one message on an idle link,
 * alpha + B/beta. */
typedef enum {
    EMU_COLL_ALLREDUCE = 0,
    EMU_COLL_REDUCE_SCATTER,
    EMU_COLL_ALLGATHER,
    EMU_COLL_BROADCAST,
    EMU_COLL_ALLTOALL,
    EMU_COLL_SEND,
    EMU_COLL_RECV,
    EMU_COLL_BARRIER,
    EMU_COLL__COUNT
} emu_coll_t;

const char *emu_coll_name(emu_coll_t k); /* "all-reduce", ... */

/* An algorithm is an index into its collective's table; 0 is the default.
 * emu_coll_algo_parse returns -1 (and names the choices in the message)
 * for a name the collective does not have. */
int emu_coll_algo_count(emu_coll_t k);
const char *emu_coll_algo_name(emu_coll_t k, int algo);
int emu_coll_algo_parse(emu_coll_t k, const char *name);
/* Closed-form time of algorithm algo of collective k (one of the closed
 * forms above; 0 for p <= 1). */
double emu_coll_cost(emu_coll_t k, int algo, int p, double bytes, double alpha,
                     double beta);

/* ---- A cluster: devices that run as threads, one per device, on the host
 * cores that hwloc finds, or, when a run moves no data, as coroutines on
 * the calling thread. Nothing is global: clusters are independent. */
typedef struct emu_cluster emu_cluster_t;

/* The largest pace: 1000 x virtual time is already a slow demonstration,
 * and a larger one (1e12) would keep a run asleep for ever. */
#define EMU_PACE_MAX 1e3

typedef struct {
    bool no_limit; /* lift every device's memory capacity */
    double pace;   /* > 0: a device sleeps so that its wall time since the
                    * run started is at least pace x its virtual time;
                    * at most EMU_PACE_MAX */
    bool no_pin;   /* leave device threads unpinned */
    bool trace;    /* every device records its spans (emu_trace_dump) */
    bool nodata;   /* every device in no-data mode (emu_dev_set_nodata) */
    /* > 0: each device sleeps a pseudo-random 0 to jitter_us microseconds
     * of wall time at the entry of every collective, send and receive (and
     * of their second meeting) and at every 16th kernel charge, so that
     * tests can vary how the device threads interleave on the host.
     * Virtual time never depends on it. Each device draws from its own
     * generator, seeded with jitter_seed and its rank when the cluster is
     * created: another seed gives other delays. */
    unsigned jitter_us;
    uint64_t jitter_seed;
    /* Devices [local0, local1) run here; the others run in other
     * processes (MPI, parallel/mpi.c), whose figures arrive after the run
     * through emu_dev_import. Both 0: every device runs here. */
    int local0, local1;
    /* Called once per run, when the run starts to abort (its first
     * failure), so that the processes sharing the run learn of it. */
    void (*on_abort)(void *arg);
    void *abort_arg;
    /* one thread per device even when the run moves no data (also with
     * the environment's MOEMU_DRY_THREADS=1); see emu_cluster_run */
    bool threads;
} emu_cluster_opts_t;

/* ndev devices of the given spec laid out on topo (device d on node
 * d / devices_per_node). topo->nodes == 0 takes as many nodes as needed;
 * otherwise ndev must fit in nodes x devices_per_node. opts may be NULL. */
moemu_status_t emu_cluster_create(const emu_spec_t *spec,
                                  const emu_topo_t *topo, int ndev,
                                  const emu_cluster_opts_t *opts,
                                  emu_cluster_t **out);
/* Frees the devices too. Not while a run is going; destroy the cluster's
 * communicators first (a late one is detached, but its devices are gone). */
void emu_cluster_destroy(emu_cluster_t *c);

int emu_cluster_size(const emu_cluster_t *c);
const emu_topo_t *emu_cluster_topo(const emu_cluster_t *c); /* nodes set */
emu_dev_t *emu_cluster_dev(emu_cluster_t *c, int rank);
int emu_cluster_host_cores(const emu_cluster_t *c);
/* The devices that run in this process: [*lo, *hi). */
void emu_cluster_local(const emu_cluster_t *c, int *lo, int *hi);
/* Abort the current run from outside its devices (a failure in another
 * process): every waiter gives up with MOEMU_ERR_PEER. */
void emu_cluster_abort(emu_cluster_t *c);
/* The device whose failure the last run reported, -1 if none; *peer: it
 * only stopped because another failed (MOEMU_ERR_PEER). */
int emu_cluster_failure(const emu_cluster_t *c, bool *peer);
/* A device's figures (clock, kernels, memory, communication, spans) as
 * bytes, to carry them to another process after a run: the size needed,
 * written only when it fits cap. emu_dev_import replaces a device's
 * figures with what export wrote (same build); MOEMU_ERR_FORMAT if n does
 * not match. */
size_t emu_dev_export(const emu_dev_t *dev, void *buf, size_t cap);
moemu_status_t emu_dev_import(emu_dev_t *dev, const void *buf, size_t n);

/* One device's work. It returns MOEMU_OK or the status of a moemu_fail in
 * its own thread. */
typedef moemu_status_t (*emu_dev_fn)(emu_dev_t *dev, void *arg);

/* Start one thread per device calling fn(dev, arg), wait for all of them.
 * While it runs, OpenBLAS uses max(1, cores / ndev) threads (never more
 * than it was set to before the run; restored afterwards). A run that
 * moves no data (every device in no-data mode, no pace, opts.threads
 * unset) runs the devices as coroutines on the calling thread instead,
 * taking turns in a fixed order where a thread would wait: the same
 * virtual times and counters, bit for bit. There fn must wait for other
 * devices only in collectives and receives (a spin would never end), and
 * a run in which no device can go on while some are not done (a
 * deadlock, which would hang threads) fails with MOEMU_ERR_INVALID
 * naming the devices that wait. The first device to fail aborts the run:
 * every device waiting in a collective is released with MOEMU_ERR_PEER.
 * Returns the status of the lowest-ranked device that failed on its own
 * (not released by another's failure), whichever failed first; its
 * message, naming the device once ("device N: " put before it unless it
 * begins with "device N"), is then the calling thread's moemu_errmsg().
 * Clocks and counters carry over from run to run. */
moemu_status_t emu_cluster_run(emu_cluster_t *c, emu_dev_fn fn, void *arg);

/* ---- A device's place and communication counters. */
emu_cluster_t *emu_dev_cluster(const emu_dev_t *dev); /* NULL: standalone */
int emu_dev_node(const emu_dev_t *dev);
int emu_dev_local_rank(const emu_dev_t *dev); /* index inside its node */
const emu_topo_t *emu_dev_topo(const emu_dev_t *dev);
/* True once the run is aborting: long loops may stop early. */
bool emu_dev_aborting(const emu_dev_t *dev);

/* Per collective kind and link class, what one device did. */
typedef struct {
    uint64_t calls;
    double bytes; /* sent by this device, emulated dtype */
    double time;  /* virtual seconds communicating */
    double idle;  /* virtual seconds waiting for the last member (or the
                   * sender of a message) to arrive */
} emu_comm_stats_t;

const emu_comm_stats_t *emu_dev_comm_stats(const emu_dev_t *dev,
                                           emu_coll_t kind, emu_link_t link);
/* The same summed over link classes. */
emu_comm_stats_t emu_dev_comm_kind(const emu_dev_t *dev, emu_coll_t kind);
/* The clock decomposes (up to rounding) as
 * clock = kernel_time + comm_time + idle_time - overlap.comm - overlap.idle
 * (emu_dev_overlap; both 0 unless collectives ran asynchronously). */
double emu_dev_kernel_time(const emu_dev_t *dev);
double emu_dev_comm_time(const emu_dev_t *dev);
double emu_dev_idle_time(const emu_dev_t *dev);

/* ---- Streams. A device has a compute stream, whose time is its clock,
 * and a communication stream on which its collectives run one after
 * another in the order issued (NCCL on its own CUDA stream). A member is
 * ready for a collective at the later of its clock (its data exists then)
 * and the end of its previous collective; the collective starts when the
 * last member is ready. By default the compute stream waits for each
 * collective at once, so nothing overlaps and the clock is the
 * collective's end. Collectives issued while emu_dev_set_async is on do
 * not make it wait: kernels charged meanwhile run beside them, until
 * emu_dev_comm_wait (the event that the consumer of their results waits
 * on). A collective issued synchronously behind asynchronous ones waits
 * for them too, as a stream does. Sends and receives stay on the compute
 * stream (pipeline stages exchange activations between layers). */
void emu_dev_set_async(emu_dev_t *dev, bool on);
/* The compute stream waits for every collective issued: the clock becomes
 * the communication stream's end if that is later. */
void emu_dev_comm_wait(emu_dev_t *dev);
/* A mark on the communication stream: the collectives issued so far. */
uint64_t emu_dev_comm_mark(const emu_dev_t *dev);
/* The compute stream waits for the collectives issued before mark only
 * (an event recorded after them); later ones stay in flight. */
void emu_dev_comm_wait_mark(emu_dev_t *dev, uint64_t mark);
/* When the device is ready for its next collective: max(clock, the end
 * of its last collective). The collectives module publishes it. */
double emu_dev_comm_ready(const emu_dev_t *dev);
/* The communication stream's time that ran while the compute stream did
 * its own work, never waited for: its communication and its waiting for
 * other members of a group. */
typedef struct {
    double comm, idle;
} emu_overlap_t;
emu_overlap_t emu_dev_overlap(const emu_dev_t *dev);

/* ---- Lanes: micro-batches that take turns on one device, as DeepSeek's
 * and SGLang's two-batch overlap runs them: while one lane's collectives
 * travel, the other computes. Each lane runs fn(args[i]) on a stack of
 * its own on the device's thread (or coroutine), lane 0 first; a lane
 * gives the device to the next lane not done at emu_dev_lane_yield, and
 * gets it back when that one yields or ends. The turns are fixed by the
 * code, not by the host, so the virtual time is deterministic. The lanes
 * share the device's clock and streams: a lane waits for its own
 * collectives with emu_dev_comm_wait_mark. Returns when every lane is
 * done: the first lane's own failure (before a peer's "stopped"); a
 * failing lane aborts the run so that the others do not wait for it. */
#define EMU_LANES_MAX 2
typedef moemu_status_t (*emu_lane_fn)(void *arg);
moemu_status_t emu_dev_lanes(emu_dev_t *dev, int n, emu_lane_fn fn, void *const *args);
/* From a lane: let the next lane run until it yields or ends; returns at
 * once when none other is left or no lanes run. */
void emu_dev_lane_yield(emu_dev_t *dev);
bool emu_dev_in_lanes(const emu_dev_t *dev);

/* ---- Charging communication, for the collectives module. Every member
 * of a group passes the same arrival clocks (clocks[i] of group member i,
 * global ranks in ranks[]); the result depends on nothing else.
 * A collective that moves no bytes costs nothing and waits for nobody
 * (NCCL returns at once on count 0); a barrier always synchronises.
 * A tracing device records the wait (idle) and the communication as
 * spans; emu_p2p_send records none (it takes no time). */

/* kind is a closed-form collective (not all-to-all, send or recv), dev is
 * member me, root the broadcast's root (ignored otherwise) and bytes is B
 * above. Charges the start (the latest arrival) minus dev's clock as idle,
 * the closed form as communication, and the bytes this member sends under
 * the algorithm. Returns the time charged as communication. */
double emu_coll_charge(emu_dev_t *dev, emu_coll_t kind, int algo,
                       const int *ranks, int p, int me, int root,
                       const double *clocks, double bytes);
/* Bytes that member me sends in algorithm algo of collective k. */
double emu_coll_sent(emu_coll_t k, int algo, int p, int me, int root,
                     double bytes);
/* Pairwise all-to-all: bytes[i * p + j] go from member i to member j. At
 * step s = 1..p-1 member r sends to (r+s)%p and receives from (r-s)%p at
 * the same time; the step costs the slower direction, alpha + bytes/beta
 * of that pair's link class (a direction with no bytes costs nothing).
 * Every member finishes at start + the largest sum of steps. Returns the
 * time charged. */
double emu_coll_alltoall(emu_dev_t *dev, const int *ranks, int p, int me,
                         const double *clocks, const double *bytes);

/* Send, eager: the sender pays nothing in time; the message leaves when
 * the device's outgoing link of that class is free (messages queue behind
 * each other) and arrives alpha + bytes/beta later. Returns the departure
 * and arrival times for the receiver. */
typedef struct {
    double depart, arrive;
    double bytes; /* the message's, for the receiver's trace */
} emu_msg_time_t;

emu_msg_time_t emu_p2p_send(emu_dev_t *dev, int peer_rank, double bytes);
/* The receiver's clock becomes max(clock, arrive): idle until the message
 * departs, communicating while it is in flight. */
void emu_p2p_recv(emu_dev_t *dev, int peer_rank, emu_msg_time_t t);

/* ---- Writing traces: Chrome trace-event JSON (the "JSON Object Format")
 * that Perfetto and chrome://tracing open: one process per node ("node
 * N"), one thread per device ("device R"), every span a complete event
 * ("ph":"X") whose "ts" and "dur" are microseconds of virtual time, "name"
 * emu_span_name's, "cat" emu_span_cat_name's, and "args" flops, bytes,
 * layer (when tagged) and link (comm and idle). docs/emulation.md shows
 * the format. Written to f, the caller's stream (moemu's files go through
 * engine/tools/outfile, complete or not at all); title (may be NULL) goes
 * to "otherData". MOEMU_ERR_NOMEM when a device lost spans for want of
 * host memory, MOEMU_ERR_INVALID for a title that is not UTF-8; the
 * stream's own errors are the caller's to check. Call it between runs. */
moemu_status_t emu_trace_dump(const emu_cluster_t *c, FILE *f,
                              const char *title);
/* The same for any devices (standalone ones: node 0, thread = rank). */
moemu_status_t emu_trace_dump_devs(const emu_dev_t *const *devs, int n,
                                   FILE *f, const char *title);

/* ---- Waiting inside a cluster, for the collectives module: a mutex and a
 * condition variable that the cluster broadcasts when a run aborts or a
 * device's function returns, so that no waiter hangs. reset (may be NULL)
 * is called with arg before each run, from the thread that runs it, to
 * clear state that an aborted run left behind. */
typedef struct emu_sync emu_sync_t;

moemu_status_t emu_sync_create(emu_cluster_t *c, void (*reset)(void *),
                               void *arg, emu_sync_t **out);
void emu_sync_destroy(emu_sync_t *s);
void emu_sync_lock(emu_sync_t *s);
void emu_sync_unlock(emu_sync_t *s);
void emu_sync_broadcast(emu_sync_t *s);
/* With the lock held: wait for a broadcast (spurious wake-ups happen;
 * check the condition again). */
void emu_sync_wait(emu_sync_t *s);
bool emu_cluster_aborting(const emu_cluster_t *c);
/* True once dev's function has returned in the current run. */
bool emu_dev_done(const emu_dev_t *dev);

#endif
