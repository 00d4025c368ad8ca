/* A virtual device: clock, per-kind work counters, memory by category,
 * communication counters, the trace of its timeline, no-data buffers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>

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

uint64_t emu_fnv1a(uint64_t h, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++) h = (h ^ ((const unsigned char *)p)[i]) * 0x100000001b3ull;
    return h;
}

double emu_host_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *emu_mem_name(emu_mem_t m) { return emu_mem_names[m]; }

void emu_dev_init(emu_dev_t *dev, const emu_spec_t *spec, int rank,
                  bool no_limit)
{
    memset(dev, 0, sizeof *dev);
    dev->spec = *spec;
    dev->rank = rank;
    dev->no_limit = no_limit;
    /* a standalone device is alone on its node; links are never used */
    dev->topo = (emu_topo_t){.devices_per_node = 1, .nodes = 1,
                             .intra_bw = 1, .inter_bw = 1};
    dev->layer = -1;
    atomic_init(&dev->done, false);
}

static void emu_maps_unmap_all(emu_dev_t *dev);

void emu_dev_fini(emu_dev_t *dev)
{
    free(dev->spans);
    dev->spans = NULL;
    dev->nspans = dev->spans_cap = 0;
    emu_maps_unmap_all(dev);
    emu_lanes_free(dev);
}

moemu_status_t emu_dev_create(const emu_spec_t *spec, int rank, bool no_limit,
                              emu_dev_t **out)
{
    emu_dev_t *dev = malloc(sizeof *dev);
    if (!dev) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate device %d", rank);
    emu_dev_init(dev, spec, rank, no_limit);
    *out = dev;
    return MOEMU_OK;
}

void emu_dev_destroy(emu_dev_t *dev)
{
    if (!dev) return;
    emu_dev_fini(dev);
    free(dev);
}

int emu_dev_rank(const emu_dev_t *dev) { return dev->rank; }

const emu_spec_t *emu_dev_spec(const emu_dev_t *dev) { return &dev->spec; }

double emu_dev_clock(const emu_dev_t *dev) { return dev->clock; }

emu_cluster_t *emu_dev_cluster(const emu_dev_t *dev) { return dev->cluster; }

int emu_dev_node(const emu_dev_t *dev) { return dev->node; }

int emu_dev_local_rank(const emu_dev_t *dev) { return dev->local_rank; }

const emu_topo_t *emu_dev_topo(const emu_dev_t *dev) { return &dev->topo; }

bool emu_dev_done(const emu_dev_t *dev)
{
    return atomic_load_explicit(&dev->done, memory_order_acquire);
}

bool emu_dev_aborting(const emu_dev_t *dev)
{
    return dev->cluster && emu_cluster_aborting(dev->cluster);
}

/* Book a kernel of t seconds: counters, clock, trace, pace, jitter. */
static void emu_book(emu_dev_t *dev, emu_kernel_t kind, double flops, double bytes, double t,
                     bool compute_bound)
{
    emu_kernel_stats_t *k = &dev->kernels[kind];
    k->flops += flops;
    k->bytes += bytes;
    k->launches++;
    if (compute_bound) k->compute_time += t;
    else k->memory_time += t;
    k->time += t;
    double t0 = dev->clock;
    dev->clock += t;
    if (dev->trace)
        emu_span_add(dev, EMU_SPAN_KERNEL, kind, EMU_LINK_INTRA, t0,
                     dev->clock, flops, bytes);
    emu_dev_pace(dev);
    if (dev->jitter_us && ++dev->jitter_n == 16) {
        dev->jitter_n = 0;
        emu_dev_jitter(dev);
    }
}

void emu_charge(emu_dev_t *dev, emu_kernel_t kind, double flops, double bytes)
{
    emu_charge_gemm(dev, kind, NULL, 0, flops, bytes);
}

void emu_charge_gemm(emu_dev_t *dev, emu_kernel_t kind, const emu_gemm_t *g, int n,
                     double flops, double bytes)
{
    bool compute_bound;
    double t = emu_cost_kernel_of(&dev->spec, kind, g, n, flops, bytes, &compute_bound);
    emu_book(dev, kind, flops, bytes, t, compute_bound);
}

void emu_charge_gemm_fp8(emu_dev_t *dev, emu_kernel_t kind, const emu_gemm_t *g, int n,
                         double flops, double bytes)
{
    emu_spec_t s = dev->spec;
    if (s.peak_flops_fp8 > 0) s.peak_flops = s.peak_flops_fp8;
    bool compute_bound;
    double t = emu_cost_kernel_of(&s, kind, g, n, flops, bytes, &compute_bound);
    dev->kernels[kind].fp8_flops += flops;
    emu_book(dev, kind, flops, bytes, t, compute_bound);
}

void emu_charge_host(emu_dev_t *dev, int sequences)
{
    double t = dev->spec.host_seq_s * sequences, t0 = dev->clock;
    if (!(t > 0)) return;
    dev->host_time += t;
    dev->clock += t;
    if (dev->trace) emu_span_add(dev, EMU_SPAN_HOST, 0, EMU_LINK_INTRA, t0, dev->clock, 0, 0);
    emu_dev_pace(dev);
}

double emu_dev_host_time(const emu_dev_t *dev) { return dev->host_time; }

/* ---- tracing */

static const char *const emu_span_cat_names[EMU_SPAN__COUNT] = {
    [EMU_SPAN_KERNEL] = "kernel", [EMU_SPAN_COMM] = "comm",
    [EMU_SPAN_IDLE] = "idle", [EMU_SPAN_HOST] = "host",
};

static const char *const emu_wait_names[EMU_COLL__COUNT] = {
    [EMU_COLL_ALLREDUCE] = "wait: all-reduce",
    [EMU_COLL_REDUCE_SCATTER] = "wait: reduce-scatter",
    [EMU_COLL_ALLGATHER] = "wait: all-gather",
    [EMU_COLL_BROADCAST] = "wait: broadcast",
    [EMU_COLL_ALLTOALL] = "wait: all-to-all",
    [EMU_COLL_SEND] = "wait: send",
    [EMU_COLL_RECV] = "wait: recv",
    [EMU_COLL_BARRIER] = "wait: barrier",
};

const char *emu_span_cat_name(emu_span_cat_t c)
{
    return (unsigned)c < EMU_SPAN__COUNT ? emu_span_cat_names[c] : "?";
}

const char *emu_span_name(const emu_span_t *s)
{
    switch (s->cat) {
    case EMU_SPAN_KERNEL:
        return s->kind < EMU_KERNEL__COUNT ? emu_kernel_names[s->kind] : "?";
    case EMU_SPAN_COMM:
        return s->kind < EMU_COLL__COUNT ? emu_coll_name(s->kind) : "?";
    case EMU_SPAN_IDLE:
        return s->kind < EMU_COLL__COUNT ? emu_wait_names[s->kind] : "?";
    case EMU_SPAN_HOST: return "scheduling and sampling";
    default: return "?";
    }
}

emu_span_t *emu_span_add(emu_dev_t *dev, emu_span_cat_t cat, int kind, emu_link_t link,
                         double start, double end, double flops, double bytes)
{
    if (dev->nspans == dev->spans_cap) {
        size_t cap = dev->spans_cap ? 2 * dev->spans_cap : 1024;
        emu_span_t *s = cap <= SIZE_MAX / sizeof *s
                            ? realloc(dev->spans, cap * sizeof *s)
                            : NULL;
        if (!s) {
            dev->spans_lost++;
            return NULL;
        }
        dev->spans = s;
        dev->spans_cap = cap;
    }
    dev->spans[dev->nspans++] = (emu_span_t){
        .start = start, .end = end, .flops = flops, .bytes = bytes,
        .layer = dev->layer, .cat = (uint8_t)cat, .kind = (uint8_t)kind,
        .link = (uint8_t)link};
    return &dev->spans[dev->nspans - 1];
}

void emu_dev_set_trace(emu_dev_t *dev, bool on) { dev->trace = on; }

bool emu_dev_tracing(const emu_dev_t *dev) { return dev->trace; }

void emu_dev_set_layer(emu_dev_t *dev, int layer)
{
    dev->layer = layer < 0 ? -1 : layer;
}

int emu_dev_layer(const emu_dev_t *dev) { return dev->layer; }

size_t emu_dev_span_count(const emu_dev_t *dev) { return dev->nspans; }

const emu_span_t *emu_dev_span(const emu_dev_t *dev, size_t i)
{
    return i < dev->nspans ? &dev->spans[i] : NULL;
}

const emu_kernel_stats_t *emu_dev_kernel_stats(const emu_dev_t *dev,
                                               emu_kernel_t kind)
{
    return &dev->kernels[kind];
}

const emu_comm_stats_t *emu_dev_comm_stats(const emu_dev_t *dev,
                                           emu_coll_t kind, emu_link_t link)
{
    return &dev->comm[kind][link];
}

emu_comm_stats_t emu_dev_comm_kind(const emu_dev_t *dev, emu_coll_t kind)
{
    emu_comm_stats_t s = {0};
    for (int l = 0; l < EMU_LINK__COUNT; l++) {
        const emu_comm_stats_t *c = &dev->comm[kind][l];
        s.calls += c->calls;
        s.bytes += c->bytes;
        s.time += c->time;
        s.idle += c->idle;
    }
    return s;
}

double emu_dev_kernel_time(const emu_dev_t *dev)
{
    double t = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) t += dev->kernels[k].time;
    return t;
}

double emu_dev_comm_time(const emu_dev_t *dev)
{
    double t = 0;
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) t += dev->comm[k][l].time;
    return t;
}

double emu_dev_idle_time(const emu_dev_t *dev)
{
    double t = 0;
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) t += dev->comm[k][l].idle;
    return t;
}

char *emu_fmt_bytes(double bytes, char buf[32])
{
    static const char *const units[] = {"B", "KB", "MB", "GB", "TB", "PB"};
    double v = bytes < 0 ? -bytes : bytes;
    int u = 0;
    while (v >= 1000 && u < 5) {
        v /= 1000;
        u++;
    }
    if (bytes < 0) v = -v;
    if (u == 0) snprintf(buf, 32, "%.0f B", v);
    else snprintf(buf, 32, "%.*f %s", v < 10 ? 2 : v < 100 ? 1 : 0, v,
                  units[u]);
    return buf;
}

moemu_status_t emu_mem_reserve(emu_dev_t *dev, emu_mem_t cat, double bytes)
{
    double total = emu_mem_total(dev);
    if (!dev->no_limit && total + bytes > dev->spec.mem_capacity) {
        char use[512], b[32];
        size_t n = 0;
        for (int c = 0; c < EMU_MEM__COUNT && n < sizeof use; c++)
            n += (size_t)snprintf(use + n, sizeof use - n, "%s%s %s",
                                  c ? ", " : "", emu_mem_names[c],
                                  emu_fmt_bytes(dev->mem[c], b));
        char req[32], tot[32], cap[32];
        return moemu_fail(MOEMU_ERR_OOM,
                          "device %d out of memory: %s request of %s "
                          "on top of %s in use (%s) exceeds the "
                          "capacity of %s",
                          dev->rank, emu_mem_names[cat],
                          emu_fmt_bytes(bytes, req), emu_fmt_bytes(total, tot),
                          use, emu_fmt_bytes(dev->spec.mem_capacity, cap));
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

/* ---- no-data mode: untouched host mappings, remembered by address */

void emu_dev_set_nodata(emu_dev_t *dev, bool on) { dev->nodata = on; }

bool emu_dev_nodata(const emu_dev_t *dev) { return dev->nodata; }

static size_t emu_map_slot(const emu_dev_t *dev, const void *p)
{
    uint64_t h = (uint64_t)((uintptr_t)p >> 12) * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> 32) & (dev->maps_cap - 1);
}

/* Insert p (not present); false if the table cannot grow. */
static bool emu_maps_put(emu_dev_t *dev, void *p, size_t len)
{
    if (2 * (dev->nmaps + 1) > dev->maps_cap) { /* load <= 1/2 */
        size_t cap = dev->maps_cap ? 2 * dev->maps_cap : 64;
        struct emu_map *old = dev->maps, *m = calloc(cap, sizeof *m);
        if (!m) return false;
        size_t oldcap = dev->maps_cap;
        dev->maps = m;
        dev->maps_cap = cap;
        for (size_t i = 0; i < oldcap; i++)
            if (old[i].p) {
                size_t j = emu_map_slot(dev, old[i].p);
                while (m[j].p) j = (j + 1) & (cap - 1);
                m[j] = old[i];
            }
        free(old);
    }
    size_t j = emu_map_slot(dev, p);
    while (dev->maps[j].p) j = (j + 1) & (dev->maps_cap - 1);
    dev->maps[j] = (struct emu_map){p, len};
    dev->nmaps++;
    return true;
}

/* Remove p and return its length; 0 if it is not a mapping of ours. */
static size_t emu_maps_take(emu_dev_t *dev, const void *p)
{
    if (!dev->nmaps) return 0;
    size_t mask = dev->maps_cap - 1, i = emu_map_slot(dev, p);
    while (dev->maps[i].p != p) {
        if (!dev->maps[i].p) return 0;
        i = (i + 1) & mask;
    }
    size_t len = dev->maps[i].len;
    /* backward-shift deletion keeps every probe chain unbroken */
    for (size_t j = (i + 1) & mask; dev->maps[j].p; j = (j + 1) & mask) {
        size_t home = emu_map_slot(dev, dev->maps[j].p);
        /* j's entry may move to the hole i unless home lies in (i, j] */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            dev->maps[i] = dev->maps[j];
            i = j;
        }
    }
    dev->maps[i] = (struct emu_map){NULL, 0};
    dev->nmaps--;
    return len;
}

/* Freed no-data mappings, kept for any device of any cluster of the
 * process: a dry run frees and allocates the same buffers every layer, its
 * devices in turn, and a sweep runs cluster after cluster. Reusing them
 * spares mmap and munmap (which serialise device threads on the address
 * space) and the page faults of touching fresh pages, costly on virtual
 * machines. Lengths are rounded up to a size class (four per power of two)
 * whose bin is a stack. What a buffer holds on reuse is stale: no-data
 * buffers are written before they are read (their metadata) or never. */
enum { POOL_CLASSES = 4 * 64, POOL_MAX = 16384 }; /* classes: see pool_class */

static struct {
    pthread_mutex_t mu;
    struct emu_map *bin[POOL_CLASSES];
    int n[POOL_CLASSES], cap[POOL_CLASSES], total;
} pool = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The class of a length and the class's length: up to 4 pages, each
 * count of pages; above, the multiples of 2^(e-2) pages in (4, 8] x
 * 2^(e-2), for 2^e < pages <= 2^(e+1). */
static int pool_class(size_t len, size_t *class_len)
{
    size_t pages = (len + 4095) / 4096;
    if (pages <= 4) {
        *class_len = (pages ? pages : 1) * 4096;
        return pages ? (int)pages - 1 : 0;
    }
    int e = 63 - __builtin_clzll((unsigned long long)(pages - 1));
    size_t unit = (size_t)1 << (e - 2), q = (pages + unit - 1) / unit;
    *class_len = q * unit * 4096;
    return 4 * (e - 1) + (int)q - 5;
}

/* A kept mapping of class c, NULL if none. */
static void *pool_take(int c)
{
    void *p = NULL;
    pthread_mutex_lock(&pool.mu);
    if (pool.n[c] > 0) {
        p = pool.bin[c][--pool.n[c]].p;
        pool.total--;
    }
    pthread_mutex_unlock(&pool.mu);
    return p;
}

/* Keep the mapping for reuse, or unmap it when the pool is full. */
static void pool_give(void *p, size_t len)
{
    size_t class_len;
    int c = pool_class(len, &class_len);
    bool kept = false;
    pthread_mutex_lock(&pool.mu);
    if (class_len == len && pool.total < POOL_MAX) {
        if (pool.n[c] == pool.cap[c]) {
            int cap = pool.cap[c] ? 2 * pool.cap[c] : 16;
            struct emu_map *b = realloc(pool.bin[c], sizeof *b * (size_t)cap);
            if (b) pool.bin[c] = b, pool.cap[c] = cap;
        }
        if (pool.n[c] < pool.cap[c]) {
            pool.bin[c][pool.n[c]++] = (struct emu_map){p, len};
            pool.total++;
            kept = true;
        }
    }
    pthread_mutex_unlock(&pool.mu);
    if (!kept) munmap(p, len);
}

static void emu_maps_unmap_all(emu_dev_t *dev)
{
    for (size_t i = 0; i < dev->maps_cap; i++)
        if (dev->maps[i].p) pool_give(dev->maps[i].p, dev->maps[i].len);
    free(dev->maps);
    dev->maps = NULL;
    dev->nmaps = dev->maps_cap = 0;
}

static moemu_status_t emu_alloc_nodata(emu_dev_t *dev, emu_mem_t cat,
                                       size_t host_bytes, double dev_bytes,
                                       void **out)
{
    size_t len;
    int c = pool_class(host_bytes ? host_bytes : 1, &len);
    void *p = pool_take(c);
    if (!p)
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
    if (p == MAP_FAILED || !emu_maps_put(dev, p, len)) {
        int e = p == MAP_FAILED ? errno : ENOMEM;
        if (p != MAP_FAILED) munmap(p, len);
        emu_mem_release(dev, cat, dev_bytes);
        char b[32];
        return moemu_fail(MOEMU_ERR_NOMEM,
                          "device %d: host cannot map %s of address space "
                          "for %s (no-data mode): %s",
                          dev->rank, emu_fmt_bytes((double)host_bytes, b),
                          emu_mem_names[cat], strerror(e));
    }
    *out = p;
    return MOEMU_OK;
}

moemu_status_t emu_alloc(emu_dev_t *dev, emu_mem_t cat, size_t host_bytes,
                         double dev_bytes, void **out)
{
    *out = NULL;
    MOEMU_CHECK(emu_mem_reserve(dev, cat, dev_bytes));
    if (dev->nodata) return emu_alloc_nodata(dev, cat, host_bytes, dev_bytes, out);
    void *p = NULL;
    /* 64 bytes: a cache line, and what AVX-512 loads like */
    if (posix_memalign(&p, 64, host_bytes ? host_bytes : 1) != 0) {
        emu_mem_release(dev, cat, dev_bytes);
        char b[32];
        return moemu_fail(MOEMU_ERR_NOMEM,
                          "device %d: host cannot allocate %s for %s",
                          dev->rank, emu_fmt_bytes((double)host_bytes, b),
                          emu_mem_names[cat]);
    }
    memset(p, 0, host_bytes);
    *out = p;
    return MOEMU_OK;
}

void emu_free(emu_dev_t *dev, emu_mem_t cat, void *p, double dev_bytes)
{
    if (!p) return;
    size_t len = emu_maps_take(dev, p);
    if (len) pool_give(p, len);
    else free(p);
    emu_mem_release(dev, cat, dev_bytes);
}

/* ---- figures between processes */

/* What a device's figures are, without its place or run state. */
typedef struct {
    double clock, host_time;
    emu_kernel_stats_t kernels[EMU_KERNEL__COUNT];
    double mem[EMU_MEM__COUNT], mem_peak[EMU_MEM__COUNT], mem_total_peak;
    emu_comm_stats_t comm[EMU_COLL__COUNT][EMU_LINK__COUNT];
    double egress_free[EMU_LINK__COUNT];
    double comm_clock;
    emu_overlap_t overlap;
    uint64_t nspans, spans_lost;
} emu_figures_t;

size_t emu_dev_export(const emu_dev_t *dev, void *buf, size_t cap)
{
    size_t need = sizeof(emu_figures_t) + dev->nspans * sizeof(emu_span_t);
    if (need > cap) return need;
    emu_figures_t f = {.clock = dev->clock, .host_time = dev->host_time,
                       .mem_total_peak = dev->mem_total_peak,
                       .comm_clock = dev->comm_clock, .overlap = dev->overlap,
                       .nspans = dev->nspans, .spans_lost = dev->spans_lost};
    memcpy(f.kernels, dev->kernels, sizeof f.kernels);
    memcpy(f.mem, dev->mem, sizeof f.mem);
    memcpy(f.mem_peak, dev->mem_peak, sizeof f.mem_peak);
    memcpy(f.comm, dev->comm, sizeof f.comm);
    memcpy(f.egress_free, dev->egress_free, sizeof f.egress_free);
    memcpy(buf, &f, sizeof f);
    if (dev->nspans) memcpy((char *)buf + sizeof f, dev->spans, dev->nspans * sizeof(emu_span_t));
    return need;
}

moemu_status_t emu_dev_import(emu_dev_t *dev, const void *buf, size_t n)
{
    emu_figures_t f;
    if (n < sizeof f) goto bad;
    memcpy(&f, buf, sizeof f);
    if (f.nspans > (n - sizeof f) / sizeof(emu_span_t) ||
        n != sizeof f + f.nspans * sizeof(emu_span_t))
        goto bad;
    emu_span_t *spans = NULL;
    if (f.nspans && !(spans = malloc(f.nspans * sizeof *spans)))
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %llu spans of device %d",
                          (unsigned long long)f.nspans, dev->rank);
    if (f.nspans) memcpy(spans, (const char *)buf + sizeof f, f.nspans * sizeof *spans);
    free(dev->spans);
    dev->spans = spans;
    dev->nspans = dev->spans_cap = f.nspans;
    dev->spans_lost = f.spans_lost;
    dev->clock = f.clock;
    dev->host_time = f.host_time;
    dev->comm_clock = f.comm_clock;
    dev->overlap = f.overlap;
    dev->mem_total_peak = f.mem_total_peak;
    memcpy(dev->kernels, f.kernels, sizeof f.kernels);
    memcpy(dev->mem, f.mem, sizeof f.mem);
    memcpy(dev->mem_peak, f.mem_peak, sizeof f.mem_peak);
    memcpy(dev->comm, f.comm, sizeof f.comm);
    memcpy(dev->egress_free, f.egress_free, sizeof f.egress_free);
    return MOEMU_OK;
bad:
    return moemu_fail(MOEMU_ERR_FORMAT, "device %d: %zu bytes of figures do not match "
                      "this build's layout", dev->rank, n);
}
