/* emu: kernel cost, memory accounting, topology, presets, clusters
 * (threads, failures, pacing), and the clock's decomposition. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "emu/emu.h"
#include "parallel/par.h"

static const emu_spec_t spec = {
    .peak_flops = 100e12, .mfu = 0.5, .mem_bw = 1e12, .bw_util = 0.5,
    .mem_capacity = 1e9, .launch_s = 1e-6};
static const emu_topo_t topo = {.devices_per_node = 4, .intra_bw = 100e9,
                                .intra_lat = 1e-6, .inter_bw = 10e9,
                                .inter_lat = 10e-6};

#define ASSERT_NEAR(a, b)                                                      \
    cr_assert(fabs((double)(a) - (double)(b)) <= 1e-12 * fabs((double)(b)) + 1e-18, \
              "%s = %.17g, expected %.17g", #a, (double)(a), (double)(b))

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ---- kernels */

Test(kernel, charge_time_and_split)
{
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 0, false, &d), MOEMU_OK);
    /* compute-bound: 1e12 flop at 50e12 flop/s = 20 ms; 1e6 bytes at
     * 0.5e12 = 2 us */
    emu_charge(d, EMU_KERNEL_GEMM, 1e12, 1e6);
    ASSERT_NEAR(emu_dev_clock(d), 1e-6 + 0.02);
    ASSERT_NEAR(emu_kernel_time(&spec, 1e12, 1e6), 1e-6 + 0.02);
    /* memory-bound: 1e9 bytes at 0.5e12 = 2 ms; 1e6 flop = 20 ns */
    emu_charge(d, EMU_KERNEL_GEMM, 1e6, 1e9);
    const emu_kernel_stats_t *k = emu_dev_kernel_stats(d, EMU_KERNEL_GEMM);
    ASSERT_NEAR(k->compute_time, 1e-6 + 0.02);
    ASSERT_NEAR(k->memory_time, 1e-6 + 0.002);
    ASSERT_NEAR(k->time, 2e-6 + 0.022);
    ASSERT_NEAR(k->flops, 1e12 + 1e6);
    ASSERT_NEAR(k->bytes, 1e9 + 1e6);
    cr_assert_eq(k->launches, 2);
    ASSERT_NEAR(emu_dev_clock(d), 2e-6 + 0.022);
    ASSERT_NEAR(emu_dev_kernel_time(d), emu_dev_clock(d));
    cr_assert_eq(emu_dev_kernel_stats(d, EMU_KERNEL_ATTN)->launches, 0);
    emu_dev_destroy(d);
}

/* A spec with tiles for gemm: 4 units of 12.5e12 FLOP/s (100e12 x 0.5),
 * rows in tiles of 16, 32, 64 or 128, columns in tiles of 128. */
static emu_spec_t tiled_spec(double overlap)
{
    emu_spec_t s = spec;
    s.units = 4;
    s.kernels[EMU_KERNEL_GEMM] = (emu_kernel_cost_t){
        .set = true, .nrow_tiles = 4, .row_tiles = {16, 32, 64, 128}, .col_tile = 128,
        .overlap = overlap};
    return s;
}

/* One tile of tm x 128 outputs at depth k on one unit, in seconds. */
static double tile_s(double tm, double k)
{
    return 2.0 * tm * 128 * k / 12.5e12;
}

static double gemm_s(const emu_spec_t *s, int64_t m, int64_t n, int64_t k, double bytes)
{
    emu_gemm_t g = {m, n, k, 1};
    return emu_kernel_time_of(s, EMU_KERNEL_GEMM, &g, 1, 2.0 * m * n * k, bytes);
}

Test(kernel, gemm_tiles_and_waves)
{
    emu_spec_t s = tiled_spec(1.0);
    /* 130 rows take two tiles of 128, as 256 rows do: the same time */
    ASSERT_NEAR(gemm_s(&s, 130, 128, 1024, 0), 1e-6 + tile_s(128, 1024));
    cr_assert_eq(gemm_s(&s, 130, 128, 1024, 0), gemm_s(&s, 256, 128, 1024, 0));
    /* the row tile: the smallest that covers m */
    ASSERT_NEAR(gemm_s(&s, 1, 128, 1024, 0), 1e-6 + tile_s(16, 1024));
    ASSERT_NEAR(gemm_s(&s, 17, 128, 1024, 0), 1e-6 + tile_s(32, 1024));
    ASSERT_NEAR(gemm_s(&s, 64, 128, 1024, 0), 1e-6 + tile_s(64, 1024));
    /* waves step at 4 tiles: 4 tiles are one wave, 5 are two, 8 two, 9 three */
    ASSERT_NEAR(gemm_s(&s, 128, 4 * 128, 1024, 0), 1e-6 + tile_s(128, 1024));
    ASSERT_NEAR(gemm_s(&s, 128, 4 * 128 + 1, 1024, 0), 1e-6 + 2 * tile_s(128, 1024));
    ASSERT_NEAR(gemm_s(&s, 256, 4 * 128, 1024, 0), 1e-6 + 2 * tile_s(128, 1024));
    ASSERT_NEAR(gemm_s(&s, 384, 3 * 128, 1024, 0), 1e-6 + 3 * tile_s(128, 1024));
    /* a grouped product: one row tile for the kernel by the mean rows of
     * its products (ceil(25 / 2) = 13: 16), each product's own tiles
     * (2 + 1), the empty one none */
    emu_gemm_t g[3] = {{20, 128, 1024, 1}, {0, 128, 1024, 1}, {5, 128, 1024, 1}};
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_GEMM, g, 3, 2.0 * 25 * 128 * 1024, 0),
                1e-6 + tile_s(16, 1024));
    g[0].m = 60; /* mean 33: tiles of 64, 1 + 1, still one wave */
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_GEMM, g, 3, 0, 0), 1e-6 + tile_s(64, 1024));
    /* nothing to compute: memory alone */
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_GEMM, g + 1, 1, 0, 1e6), 1e-6 + 2e-6);
    /* a product counted 5 times is 5 products: 5 tiles, two waves */
    emu_gemm_t five = {128, 128, 1024, 5}, each[5];
    for (int i = 0; i < 5; i++) each[i] = (emu_gemm_t){128, 128, 1024, 1};
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_GEMM, &five, 1, 0, 0),
                emu_kernel_time_of(&s, EMU_KERNEL_GEMM, each, 5, 0, 0));
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_GEMM, &five, 1, 0, 0), 1e-6 + 2 * tile_s(128, 1024));
}

Test(kernel, gemm_overlap)
{
    /* compute 1 tile of 128 x 128 x 1024 (2.68 us), memory 1e6 bytes at
     * 0.5e12 B/s (2 us) */
    double tc = tile_s(128, 1024), tm = 2e-6;
    emu_spec_t s1 = tiled_spec(1.0), s0 = tiled_spec(0.0), sq = tiled_spec(0.25);
    ASSERT_NEAR(gemm_s(&s1, 128, 128, 1024, 1e6), 1e-6 + tc);
    ASSERT_NEAR(gemm_s(&s0, 128, 128, 1024, 1e6), 1e-6 + tc + tm);
    ASSERT_NEAR(gemm_s(&sq, 128, 128, 1024, 1e6), 1e-6 + tc + 0.75 * tm);
    /* memory the larger: the compute is the part hidden */
    ASSERT_NEAR(gemm_s(&sq, 128, 128, 1024, 1e7), 1e-6 + 2e-5 + 0.75 * tc);
    /* the split follows the larger term; the charge books the FLOPs given */
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&s0, 0, false, &d), MOEMU_OK);
    emu_gemm_t g = {128, 128, 1024, 1};
    emu_charge_gemm(d, EMU_KERNEL_GEMM, &g, 1, 5.0, 1e6);
    const emu_kernel_stats_t *k = emu_dev_kernel_stats(d, EMU_KERNEL_GEMM);
    ASSERT_NEAR(k->compute_time, 1e-6 + tc + tm);
    cr_assert_eq(k->flops, 5.0);
    cr_assert_eq(k->launches, 1);
    /* a plain charge of a set kind: its overlap, no tiles */
    emu_charge(d, EMU_KERNEL_GEMM, 1e8, 1e6);
    ASSERT_NEAR(emu_dev_clock(d), 2e-6 + tc + tm + 1e8 / 50e12 + tm);
    emu_dev_destroy(d);
}

Test(kernel, kind_mfu)
{
    emu_spec_t s = spec;
    s.kernels[EMU_KERNEL_ATTN] = (emu_kernel_cost_t){.set = true, .overlap = 1, .mfu = 0.25};
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_ATTN, NULL, 0, 1e12, 0), 1e-6 + 0.04);
    ASSERT_NEAR(emu_kernel_time_of(&s, EMU_KERNEL_GEMM, NULL, 0, 1e12, 0), 1e-6 + 0.02);
}

/* An FP8 product runs at peak_flops_fp8 and counts its FLOPs as FP8; on a
 * card without FP8 at the dtype's peak. */
Test(kernel, fp8_products)
{
    emu_spec_t s = spec;
    s.peak_flops_fp8 = 2 * s.peak_flops;
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&s, 0, false, &d), MOEMU_OK);
    emu_charge_gemm_fp8(d, EMU_KERNEL_GEMM, NULL, 0, 1e12, 1e6);
    ASSERT_NEAR(emu_dev_clock(d), 1e-6 + 0.01);
    ASSERT_NEAR(emu_dev_kernel_stats(d, EMU_KERNEL_GEMM)->fp8_flops, 1e12);
    emu_charge_gemm(d, EMU_KERNEL_GEMM, NULL, 0, 1e12, 1e6);
    ASSERT_NEAR(emu_dev_clock(d), 2e-6 + 0.03);
    ASSERT_NEAR(emu_dev_kernel_stats(d, EMU_KERNEL_GEMM)->fp8_flops, 1e12);
    emu_dev_destroy(d);
    cr_assert_eq(emu_dev_create(&spec, 0, false, &d), MOEMU_OK);
    emu_charge_gemm_fp8(d, EMU_KERNEL_GEMM, NULL, 0, 1e12, 1e6);
    ASSERT_NEAR(emu_dev_clock(d), 1e-6 + 0.02);
    emu_dev_destroy(d);
}

/* A kind the spec does not set costs today's roofline bit for bit,
 * shapes or not, and so does overlap 1 without tiles. */
Test(kernel, unset_kind_is_the_roofline)
{
    emu_spec_t s1 = spec;
    s1.kernels[EMU_KERNEL_GEMM] = (emu_kernel_cost_t){.set = true, .overlap = 1};
    const double fl[] = {0, 1, 3e9, 1e12, 7.77e14}, by[] = {0, 5, 1e6, 3.3e9, 1e12};
    emu_gemm_t g = {130, 4096, 4096, 1};
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 5; j++) {
            double want = emu_kernel_time(&spec, fl[i], by[j]);
            cr_assert_eq(emu_kernel_time_of(&spec, EMU_KERNEL_GEMM, &g, 1, fl[i], by[j]), want);
            cr_assert_eq(emu_kernel_time_of(&s1, EMU_KERNEL_GEMM, NULL, 0, fl[i], by[j]), want);
        }
    emu_dev_t *a, *b;
    cr_assert_eq(emu_dev_create(&spec, 0, false, &a), MOEMU_OK);
    cr_assert_eq(emu_dev_create(&spec, 0, false, &b), MOEMU_OK);
    emu_charge(a, EMU_KERNEL_EXPERT, 3e9, 1e6);
    emu_charge_gemm(b, EMU_KERNEL_EXPERT, &g, 1, 3e9, 1e6);
    cr_assert_eq(emu_dev_clock(a), emu_dev_clock(b));
    emu_dev_destroy(a);
    emu_dev_destroy(b);
}

/* ---- memory */

Test(memory, categories_add_up_and_peak_is_kept)
{
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 5, false, &d), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_WEIGHTS, 400e6), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_KV, 100e6), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_ACT, 300e6), MOEMU_OK);
    emu_mem_release(d, EMU_MEM_ACT, 250e6);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_COMM, 20e6), MOEMU_OK);
    ASSERT_NEAR(emu_mem_used(d, EMU_MEM_ACT), 50e6);
    ASSERT_NEAR(emu_mem_peak(d, EMU_MEM_ACT), 300e6);
    ASSERT_NEAR(emu_mem_total(d), 400e6 + 100e6 + 50e6 + 20e6);
    ASSERT_NEAR(emu_mem_total_peak(d), 800e6);
    double sum = 0;
    for (int c = 0; c < EMU_MEM__COUNT; c++) sum += emu_mem_used(d, c);
    ASSERT_NEAR(sum, emu_mem_total(d));

    void *p;
    cr_assert_eq(emu_alloc(d, EMU_MEM_OTHER, 4096, 2048, &p), MOEMU_OK);
    cr_assert_eq((uintptr_t)p % 64, 0);
    cr_assert_eq(((unsigned char *)p)[4095], 0);
    ASSERT_NEAR(emu_mem_used(d, EMU_MEM_OTHER), 2048);
    emu_free(d, EMU_MEM_OTHER, p, 2048);
    ASSERT_NEAR(emu_mem_used(d, EMU_MEM_OTHER), 0);
    ASSERT_NEAR(emu_mem_peak(d, EMU_MEM_OTHER), 2048);
    emu_dev_destroy(d);
}

Test(memory, over_capacity_names_everything)
{
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 5, false, &d), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_WEIGHTS, 600e6), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_KV, 150e6), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_ACT, 300e6), MOEMU_ERR_OOM);
    const char *m = moemu_errmsg();
    cr_assert(strstr(m, "device 5"), "%s", m);
    cr_assert(strstr(m, "activations request of 300 MB"), "%s", m);
    cr_assert(strstr(m, "weights 600 MB"), "%s", m);
    cr_assert(strstr(m, "kv-cache 150 MB"), "%s", m);
    cr_assert(strstr(m, "750 MB in use"), "%s", m);
    cr_assert(strstr(m, "capacity of 1.00 GB"), "%s", m);
    /* nothing was counted */
    ASSERT_NEAR(emu_mem_total(d), 750e6);
    void *p = (void *)1;
    cr_assert_eq(emu_alloc(d, EMU_MEM_ACT, 16, 300e6, &p), MOEMU_ERR_OOM);
    cr_assert_null(p);
    ASSERT_NEAR(emu_mem_total(d), 750e6);
    emu_dev_destroy(d);

    cr_assert_eq(emu_dev_create(&spec, 0, true, &d), MOEMU_OK);
    cr_assert_eq(emu_mem_reserve(d, EMU_MEM_WEIGHTS, 1e12), MOEMU_OK);
    ASSERT_NEAR(emu_mem_total_peak(d), 1e12);
    emu_dev_destroy(d);
}

/* Resident host memory of this process, bytes. */
static double rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long size = 0, res = 0;
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "%ld %ld", &size, &res), 2);
    fclose(f);
    return (double)res * (double)sysconf(_SC_PAGESIZE);
}

Test(memory, nodata_counts_without_host_memory)
{
    emu_dev_t *d;
    cr_assert_eq(emu_dev_create(&spec, 2, true, &d), MOEMU_OK);
    cr_assert_not(emu_dev_nodata(d));
    emu_dev_set_nodata(d, true);
    cr_assert(emu_dev_nodata(d));
    double rss0 = rss_bytes();
    /* 64 GB of fp32 on the host, held as 32 GB of bf16 */
    void *big;
    size_t host = (size_t)64e9;
    cr_assert_eq(emu_alloc(d, EMU_MEM_WEIGHTS, host, 32e9, &big), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert_not_null(big);
    ASSERT_NEAR(emu_mem_used(d, EMU_MEM_WEIGHTS), 32e9);
    /* many more, to grow the table of mappings; freed in a scrambled order */
    enum { N = 700 };
    void *p[N];
    for (int i = 0; i < N; i++) {
        cr_assert_eq(emu_alloc(d, EMU_MEM_ACT, (size_t)(i + 1) << 20, 1e6, &p[i]),
                     MOEMU_OK);
        cr_assert_eq((uintptr_t)p[i] % 64, 0);
    }
    void *zero;
    cr_assert_eq(emu_alloc(d, EMU_MEM_OTHER, 0, 0, &zero), MOEMU_OK);
    cr_assert_not_null(zero);
    ASSERT_NEAR(emu_mem_used(d, EMU_MEM_ACT), N * 1e6);
    double rss1 = rss_bytes();
    cr_assert_lt(rss1 - rss0, 64e6, "no-data buffers took %.0f MB of host memory",
                 (rss1 - rss0) / 1e6);
    for (int i = 0; i < N; i++) {
        int k = (int)(((long)i * 367) % N); /* 367 is prime to 700 */
        emu_free(d, EMU_MEM_ACT, p[k], 1e6);
    }
    emu_free(d, EMU_MEM_OTHER, zero, 0);
    emu_free(d, EMU_MEM_WEIGHTS, big, 32e9);
    ASSERT_NEAR(emu_mem_total(d), 0);
    ASSERT_NEAR(emu_mem_peak(d, EMU_MEM_WEIGHTS), 32e9);

    /* a buffer may change mode between its alloc and its free */
    void *with, *without;
    emu_dev_set_nodata(d, false);
    cr_assert_eq(emu_alloc(d, EMU_MEM_KV, 4096, 2048, &with), MOEMU_OK);
    cr_assert_eq(((unsigned char *)with)[4095], 0);
    emu_dev_set_nodata(d, true);
    cr_assert_eq(emu_alloc(d, EMU_MEM_KV, 4096, 2048, &without), MOEMU_OK);
    emu_free(d, EMU_MEM_KV, with, 2048);
    emu_dev_set_nodata(d, false);
    emu_free(d, EMU_MEM_KV, without, 2048);
    ASSERT_NEAR(emu_mem_used(d, EMU_MEM_KV), 0);
    /* destroying the device unmaps what is left */
    emu_dev_set_nodata(d, true);
    cr_assert_eq(emu_alloc(d, EMU_MEM_KV, 1 << 20, 2048, &without), MOEMU_OK);
    emu_dev_destroy(d);

    /* the capacity still holds, with the same message */
    cr_assert_eq(emu_dev_create(&spec, 5, false, &d), MOEMU_OK);
    emu_dev_set_nodata(d, true);
    void *q = (void *)1;
    cr_assert_eq(emu_alloc(d, EMU_MEM_ACT, 16, 1.5e9, &q), MOEMU_ERR_OOM);
    cr_assert_null(q);
    cr_assert(strstr(moemu_errmsg(), "activations request of 1.50 GB"), "%s",
              moemu_errmsg());
    ASSERT_NEAR(emu_mem_total(d), 0);
    emu_dev_destroy(d);
}

static moemu_status_t nodata_fn(emu_dev_t *dev, void *arg)
{
    void **p = arg;
    return emu_alloc(dev, EMU_MEM_WEIGHTS, (size_t)8e9, 4e9,
                     &p[emu_dev_rank(dev)]);
}

Test(memory, cluster_nodata_option)
{
    emu_cluster_t *c;
    emu_cluster_opts_t o = {.nodata = true, .no_limit = true};
    cr_assert_eq(emu_cluster_create(&spec, &topo, 4, &o, &c), MOEMU_OK);
    void *p[4] = {0};
    double rss0 = rss_bytes();
    cr_assert_eq(emu_cluster_run(c, nodata_fn, p), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_lt(rss_bytes() - rss0, 64e6);
    for (int r = 0; r < 4; r++) {
        emu_dev_t *d = emu_cluster_dev(c, r);
        cr_assert(emu_dev_nodata(d));
        ASSERT_NEAR(emu_mem_used(d, EMU_MEM_WEIGHTS), 4e9);
        if (r % 2) emu_free(d, EMU_MEM_WEIGHTS, p[r], 4e9);
    }
    emu_cluster_destroy(c); /* unmaps the others */
}

static moemu_status_t oom_fn(emu_dev_t *dev, void *arg)
{
    (void)arg;
    MOEMU_CHECK(emu_mem_reserve(dev, EMU_MEM_WEIGHTS, 0.9e9));
    MOEMU_CHECK(emu_mem_reserve(dev, EMU_MEM_KV, 0.2e9));
    return MOEMU_OK;
}

Test(memory, cluster_limit_and_no_limit)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 2, NULL, &c), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, oom_fn, NULL), MOEMU_ERR_OOM);
    cr_assert(strstr(moemu_errmsg(), "out of memory"), "%s", moemu_errmsg());
    cr_assert(strncmp(moemu_errmsg(), "device ", 7) == 0, "%s", moemu_errmsg());
    emu_cluster_destroy(c);
    emu_cluster_opts_t o = {.no_limit = true};
    cr_assert_eq(emu_cluster_create(&spec, &topo, 2, &o, &c), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, oom_fn, NULL), MOEMU_OK);
    ASSERT_NEAR(emu_mem_total(emu_cluster_dev(c, 1)), 1.1e9);
    emu_cluster_destroy(c);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* Every device runs out of memory, the highest ranks first. */
static moemu_status_t late_oom_fn(emu_dev_t *dev, void *arg)
{
    (void)arg;
    sleep_ms(10 * (3 - emu_dev_rank(dev)));
    return oom_fn(dev, NULL);
}

/* Device 0 is stopped by another's failure; 1 fails after 2 on its own. */
static moemu_status_t stopped_fn(emu_dev_t *dev, void *arg)
{
    (void)arg;
    int r = emu_dev_rank(dev);
    for (int i = 0; r == 0 && i < 5000 && !emu_dev_aborting(dev); i++) sleep_ms(1);
    if (r == 0) return moemu_fail(MOEMU_ERR_PEER, "stopped");
    if (r == 1) sleep_ms(20);
    return oom_fn(dev, NULL);
}

#define OOM_OF(d)                                                                       \
    "device " #d " out of memory: kv-cache request of 200 MB on top of 900 MB in use " \
    "(weights 900 MB, kv-cache 0 B, activations 0 B, comm-buffers 0 B, other 0 B) "   \
    "exceeds the capacity of 1.00 GB"

/* Whichever thread fails first, the run reports the lowest rank's own
 * failure, naming the device once. */
Test(memory, lowest_failing_device_is_reported)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 4, NULL, &c), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, late_oom_fn, NULL), MOEMU_ERR_OOM);
    cr_assert_str_eq(moemu_errmsg(), OOM_OF(0));
    emu_cluster_destroy(c); /* a new one: memory use carries over */
    cr_assert_eq(emu_cluster_create(&spec, &topo, 4, NULL, &c), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, stopped_fn, NULL), MOEMU_ERR_OOM);
    cr_assert_str_eq(moemu_errmsg(), OOM_OF(1));
    emu_cluster_destroy(c);
}

Test(memory, fmt_bytes)
{
    char b[32];
    cr_assert_str_eq(emu_fmt_bytes(512, b), "512 B");
    cr_assert_str_eq(emu_fmt_bytes(1500, b), "1.50 KB");
    cr_assert_str_eq(emu_fmt_bytes(64e9, b), "64.0 GB");
    cr_assert_str_eq(emu_fmt_bytes(141e9, b), "141 GB");
}

/* ---- topology and costs */

Test(topology, nodes_and_links)
{
    cr_assert_eq(emu_topo_node(&topo, 3), 0);
    cr_assert_eq(emu_topo_node(&topo, 4), 1);
    cr_assert_eq(emu_topo_link(&topo, 1, 3), EMU_LINK_INTRA);
    cr_assert_eq(emu_topo_link(&topo, 3, 4), EMU_LINK_INTER);
    int a[] = {4, 5, 7}, b[] = {0, 5};
    cr_assert_eq(emu_topo_group_link(&topo, a, 3), EMU_LINK_INTRA);
    cr_assert_eq(emu_topo_group_link(&topo, b, 2), EMU_LINK_INTER);
    cr_assert_eq(emu_topo_group_link(&topo, b, 1), EMU_LINK_INTRA);
    cr_assert_str_eq(emu_link_name(EMU_LINK_INTER), "inter-node");
}

Test(topology, closed_forms)
{
    double a = 2e-6, b = 600e9, B = 64.0 * 1024 * 1024;
    /* ring all-reduce of 64 MiB over 8: 14 alpha + 1.75 B / beta */
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_ALLREDUCE, 0, 8, B, a, b),
                28e-6 + 117440512.0 / 600e9);
    int tree = emu_coll_algo_parse(EMU_COLL_ALLREDUCE, "tree");
    cr_assert_eq(tree, 1);
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_ALLREDUCE, tree, 8, B, a, b),
                6 * a + 2 * B / b);
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_REDUCE_SCATTER, 0, 8, B, a, b),
                7 * a + 0.875 * B / b);
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_ALLGATHER, 0, 5, B, a, b),
                4 * a + 0.8 * B / b);
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_BROADCAST, 0, 8, B, a, b), 7 * a + B / b);
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_BROADCAST, 1, 5, B, a, b),
                3 * (a + B / b));
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_BARRIER, 0, 9, 0, a, b), 4 * a);
    ASSERT_NEAR(emu_coll_cost(EMU_COLL_ALLREDUCE, 0, 1, B, a, b), 0);
    cr_assert_eq(emu_coll_algo_parse(EMU_COLL_ALLGATHER, "tree"), -1);
    cr_assert(strstr(moemu_errmsg(), "choose: ring"), "%s", moemu_errmsg());
    /* bytes sent per member */
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_ALLREDUCE, 0, 4, 0, 0, 1000), 1500);
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_BROADCAST, 0, 4, 1, 2, 1000), 0);
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_BROADCAST, 0, 4, 2, 2, 1000), 1000);
    /* binomial over 8 from root 0: round m, ranks below m send to +m, so
     * rank 0 sends 3 times, rank 1 twice (3, 5), rank 4 never */
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_BROADCAST, 1, 8, 0, 0, 1000), 3000);
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_BROADCAST, 1, 8, 1, 0, 1000), 2000);
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_BROADCAST, 1, 8, 4, 0, 1000), 0);
    ASSERT_NEAR(emu_coll_sent(EMU_COLL_BROADCAST, 1, 8, 7, 0, 1000), 0);
}

Test(topology, checks_name_the_key)
{
    emu_spec_t s = spec;
    s.mfu = 1.5;
    cr_assert_eq(emu_spec_check(&s, "here"), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "here: device.mfu"), "%s", moemu_errmsg());
    s = spec;
    s.mem_bw = 0;
    cr_assert_eq(emu_spec_check(&s, "x"), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "device.mem_bw must be in [1e8, 1e15] B/s (got 0)"),
              "%s", moemu_errmsg());
    emu_topo_t t = topo;
    t.inter_bw = -1;
    cr_assert_eq(emu_topo_check(&t, "x"), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "topology.inter_bw"), "%s", moemu_errmsg());
    t = topo;
    t.devices_per_node = 0;
    cr_assert_eq(emu_topo_check(&t, "x"), MOEMU_ERR_INVALID);
}

/* ---- presets */

Test(presets, built_in_figures)
{
    cr_assert_eq(emu_hw_preset_count(), 5);
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert_str_eq(hw.name, "card-400tf-64gb");
    ASSERT_NEAR(hw.spec.peak_flops, 400e12);
    ASSERT_NEAR(hw.spec.mfu, 0.6);
    ASSERT_NEAR(hw.spec.mem_bw, 1.8e12);
    ASSERT_NEAR(hw.spec.bw_util, 0.8);
    ASSERT_NEAR(hw.spec.mem_capacity, 64e9);
    ASSERT_NEAR(hw.topo.intra_bw, 600e9);
    ASSERT_NEAR(hw.topo.inter_bw, 25e9);
    cr_assert_eq(hw.topo.devices_per_node, 8);
    cr_assert_eq(hw.topo.nodes, 0);

    cr_assert_eq(emu_hw_load("a100-80g", &hw), MOEMU_OK);
    ASSERT_NEAR(hw.spec.peak_flops, 312e12);
    ASSERT_NEAR(hw.spec.mem_bw, 2.039e12);
    ASSERT_NEAR(hw.spec.mem_capacity, 80e9);
    ASSERT_NEAR(hw.topo.intra_bw, 300e9);
    ASSERT_NEAR(hw.topo.inter_bw, 25e9);
    cr_assert(strstr(hw.comment, "datasheet"), "%s", hw.comment);

    /* the H100's compute and memory, NVLink cut to 400 GB/s (200 a direction) */
    cr_assert_eq(emu_hw_load("h800", &hw), MOEMU_OK);
    ASSERT_NEAR(hw.spec.peak_flops, 989e12);
    ASSERT_NEAR(hw.spec.mem_bw, 3.35e12);
    ASSERT_NEAR(hw.topo.intra_bw, 200e9);
    cr_assert(strstr(hw.comment, "H800"), "%s", hw.comment);

    cr_assert_eq(emu_hw_load("h100-sxm", &hw), MOEMU_OK);
    ASSERT_NEAR(hw.spec.peak_flops, 989e12);
    ASSERT_NEAR(hw.spec.mem_bw, 3.35e12);
    ASSERT_NEAR(hw.topo.intra_bw, 450e9);
    ASSERT_NEAR(hw.topo.inter_bw, 50e9);

    cr_assert_eq(emu_hw_load("h200", &hw), MOEMU_OK);
    ASSERT_NEAR(hw.spec.mem_bw, 4.8e12);
    ASSERT_NEAR(hw.spec.mem_capacity, 141e9);
    /* FP8 Tensor Cores: twice BF16 on Hopper, none on the A100 */
    ASSERT_NEAR(hw.spec.peak_flops_fp8, 1979e12);
    cr_assert_eq(emu_hw_load("a100-80g", &hw), MOEMU_OK);
    cr_assert_eq(hw.spec.peak_flops_fp8, 0);

    for (int i = 0; i < emu_hw_preset_count(); i++) {
        cr_assert_eq(emu_hw_load(emu_hw_preset_name(i), &hw), MOEMU_OK);
        cr_assert_str_eq(hw.name, emu_hw_preset_name(i));
        cr_assert(strlen(hw.comment) > 100);
    }
}

Test(presets, file_in_source_tree_matches_built_in)
{
    /* make check says where the sources are; run by hand from the build
     * folder, this file's compile-time path does */
    const char *src = getenv("MOEMU_SRCDIR");
    char path[4096];
    if (src) snprintf(path, sizeof path, "%s/hw/h100-sxm.json", src);
    else
        snprintf(path, sizeof path, "%.*shw/h100-sxm.json",
                 (int)(strlen(__FILE__) - strlen("tests/test_device.c")),
                 __FILE__);
    emu_hw_t a, b;
    cr_assert_eq(emu_hw_load(path, &a), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(emu_hw_load("h100-sxm", &b), MOEMU_OK);
    cr_assert_eq(memcmp(&a.spec, &b.spec, sizeof a.spec), 0);
    cr_assert_eq(memcmp(&a.topo, &b.topo, sizeof a.topo), 0);
}

static const char *good_json =
    "{\"name\": \"mine\", \"vendor\": \"ignored\", \"comment\": \"test\",\n"
    " \"device\": {\"peak_flops\": 1e15, \"mfu\": 0.5, \"mem_bw\": 2e12,\n"
    "  \"bw_util\": 0.9, \"mem_capacity\": 96e9, \"launch_s\": 0, \"x\": []},\n"
    " \"topology\": {\"devices_per_node\": 4, \"nodes\": 2, \"intra_bw\": 1e11,\n"
    "  \"intra_lat\": 1e-6, \"inter_bw\": 1e10, \"inter_lat\": 1e-5}}\n";

/* good_json with the first occurrence of from replaced by to */
static void write_variant(char *path, const char *from, const char *to)
{
    char text[2048];
    const char *at = strstr(good_json, from);
    cr_assert(at || !from[0]);
    if (from[0])
        snprintf(text, sizeof text, "%.*s%s%s", (int)(at - good_json),
                 good_json, to, at + strlen(from));
    else
        snprintf(text, sizeof text, "%s", to);
    strcpy(path, "/tmp/moemu-hw-XXXXXX.json");
    int fd = mkstemps(path, 5);
    cr_assert(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fputs(text, f);
    fclose(f);
}

static void expect_error(const char *from, const char *to,
                         moemu_status_t want, const char *needle)
{
    char path[64];
    write_variant(path, from, to);
    emu_hw_t hw;
    moemu_status_t st = emu_hw_load(path, &hw);
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", moemu_errmsg());
    unlink(path);
    cr_assert_eq(st, want, "%s -> %s: status %d: %s", from, to, st, msg);
    cr_assert(strstr(msg, needle), "%s -> %s: %s", from, to, msg);
    cr_assert(strstr(msg, path), "message does not name the file: %s", msg);
}

Test(presets, custom_file_and_errors)
{
    char path[64];
    write_variant(path, "", good_json);
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load(path, &hw), MOEMU_OK, "%s", moemu_errmsg());
    unlink(path);
    cr_assert_str_eq(hw.name, "mine");
    cr_assert_eq(hw.topo.nodes, 2);
    ASSERT_NEAR(hw.spec.mem_capacity, 96e9);

    expect_error("\"mfu\": 0.5", "\"mfu\": 1.5", MOEMU_ERR_FORMAT, "device.mfu");
    expect_error("\"mfu\": 0.5", "\"mfu\": 0", MOEMU_ERR_FORMAT, "device.mfu");
    expect_error("\"mem_bw\": 2e12", "\"mem_bw\": -2e12", MOEMU_ERR_FORMAT,
                 "device.mem_bw");
    expect_error("\"inter_bw\": 1e10", "\"inter_bw\": 0", MOEMU_ERR_FORMAT,
                 "topology.inter_bw");
    expect_error("\"peak_flops\": 1e15", "\"peak_flops\": \"fast\"",
                 MOEMU_ERR_FORMAT, "key 'device.peak_flops' must be a number, got \"fast\"");
    expect_error("\"launch_s\": 0, ", "", MOEMU_ERR_FORMAT,
                 "key 'device.launch_s' is required but missing");
    expect_error("\"devices_per_node\": 4", "\"devices_per_node\": 2.5",
                 MOEMU_ERR_FORMAT, "key 'topology.devices_per_node' must be an integer, got 2.5");
    expect_error("\"name\": \"mine\"", "\"name\": 3", MOEMU_ERR_FORMAT,
                 "key 'name' must be a string, got 3");
    expect_error("\"intra_lat\": 1e-6", "\"intra_lat\": 1e-6,,",
                 MOEMU_ERR_FORMAT, "malformed JSON at line 5");
    expect_error("\"device\"", "\"devices\"", MOEMU_ERR_FORMAT,
                 "key 'device' is required but missing");

    cr_assert_eq(emu_hw_load("/nonexistent/x.json", &hw), MOEMU_ERR_IO);
    cr_assert(strstr(moemu_errmsg(), "/nonexistent/x.json"));
    cr_assert_eq(emu_hw_load("b200", &hw), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "'b200'"));
    cr_assert(strstr(moemu_errmsg(), "h100-sxm"), "%s", moemu_errmsg());
}

/* Figures outside physical ranges are refused with the range: a FLOP rate
 * of 5e-324 or a launch of 1e300 s made the report print inf and nan. */
Test(presets, figures_outside_physical_ranges)
{
    expect_error("\"peak_flops\": 1e15", "\"peak_flops\": 5e-324", MOEMU_ERR_FORMAT,
                 "device.peak_flops must be in [1e9, 1e18] FLOP/s (got 4.94066e-324)");
    expect_error("\"launch_s\": 0", "\"launch_s\": 1e300", MOEMU_ERR_FORMAT,
                 "device.launch_s must be in [0, 0.01] s (got 1e+300)");
    expect_error("\"mfu\": 0.5", "\"mfu\": 1e-9", MOEMU_ERR_FORMAT,
                 "device.mfu must be in [0.001, 1] (got 1e-09)");
    expect_error("\"mem_bw\": 2e12", "\"mem_bw\": 1e16", MOEMU_ERR_FORMAT,
                 "device.mem_bw must be in [1e8, 1e15] B/s (got 1e+16)");
    expect_error("\"bw_util\": 0.9", "\"bw_util\": 1e-300", MOEMU_ERR_FORMAT,
                 "device.bw_util must be in [0.001, 1] (got 1e-300)");
    expect_error("\"mem_capacity\": 96e9", "\"mem_capacity\": 1e300", MOEMU_ERR_FORMAT,
                 "device.mem_capacity must be in [1e3, 1e14] B (got 1e+300)");
    expect_error("\"intra_bw\": 1e11", "\"intra_bw\": 1e-300", MOEMU_ERR_FORMAT,
                 "topology.intra_bw must be in [1e6, 1e14] B/s (got 1e-300)");
    expect_error("\"inter_lat\": 1e-5", "\"inter_lat\": 1e300", MOEMU_ERR_FORMAT,
                 "topology.inter_lat must be in [0, 0.1] s (got 1e+300)");
    expect_error("\"launch_s\": 0", "\"launch_s\": 0, \"peak_flops_fp8\": 1e30",
                 MOEMU_ERR_FORMAT, "device.peak_flops_fp8 must be in [1e9, 1e18] FLOP/s, or absent");
    /* the kernels' parameters */
    expect_error("\"launch_s\": 0", "\"launch_s\": 0, \"units\": 0", MOEMU_ERR_FORMAT,
                 "'device.units' = 0 is out of range");
    expect_error("\"launch_s\": 0", "\"launch_s\": 0, \"kernels\": {\"gem\": {}}",
                 MOEMU_ERR_FORMAT, "'device.kernels.gem' is not a kernel kind (embed, norm,");
    expect_error("\"launch_s\": 0", "\"launch_s\": 0, \"kernels\": {\"gemm\": {\"overlap\": 1.5}}",
                 MOEMU_ERR_FORMAT, "device.kernels.gemm.overlap must be in [0, 1] (got 1.5)");
    expect_error("\"launch_s\": 0", "\"launch_s\": 0, \"kernels\": {\"expert\": {\"mfu\": 2}}",
                 MOEMU_ERR_FORMAT, "device.kernels.expert.mfu must be in [0.001, 1] (got 2)");
    expect_error("\"launch_s\": 0",
                 "\"launch_s\": 0, \"units\": 8, \"kernels\": {\"gemm\": {\"row_tiles\": [64, 32], "
                 "\"col_tile\": 128}}",
                 MOEMU_ERR_FORMAT, "'device.kernels.gemm.row_tiles' must be in ascending order");
    expect_error("\"launch_s\": 0",
                 "\"launch_s\": 0, \"units\": 8, \"kernels\": {\"gemm\": {\"row_tiles\": [0], "
                 "\"col_tile\": 128}}",
                 MOEMU_ERR_FORMAT, "'device.kernels.gemm.row_tiles[0]' = 0 is out of range");
    expect_error("\"launch_s\": 0",
                 "\"launch_s\": 0, \"units\": 8, \"kernels\": {\"gemm\": {\"col_tile\": 5000}}",
                 MOEMU_ERR_FORMAT, "'device.kernels.gemm.col_tile' = 5000 is out of range");
    expect_error("\"launch_s\": 0",
                 "\"launch_s\": 0, \"units\": 8, \"kernels\": {\"gemm\": {\"row_tiles\": [16]}}",
                 MOEMU_ERR_FORMAT, "device.kernels.gemm needs both row_tiles and col_tile");
    expect_error("\"launch_s\": 0",
                 "\"launch_s\": 0, \"kernels\": {\"gemm\": {\"row_tiles\": [16], \"col_tile\": 128}}",
                 MOEMU_ERR_FORMAT, "device.kernels.gemm has tiles but device.units is not set");
    /* every built-in preset is within them */
    for (int i = 0; i < emu_hw_preset_count(); i++) {
        emu_hw_t hw;
        cr_expect_eq(emu_hw_load(emu_hw_preset_name(i), &hw), MOEMU_OK, "%s",
                     moemu_errmsg());
    }
}

/* The real cards carry their SMs and the products' tiles; the example
 * plans' card (the golden figures') none: the plain roofline. */
Test(presets, kernel_parameters)
{
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("a100-80g", &hw), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(hw.spec.units, 108);
    const emu_kernel_cost_t *e = &hw.spec.kernels[EMU_KERNEL_EXPERT];
    cr_assert(e->set);
    cr_assert_eq(e->nrow_tiles, 4);
    cr_assert_eq(e->row_tiles[0], 16);
    cr_assert_eq(e->row_tiles[3], 128);
    cr_assert_eq(e->col_tile, 128);
    cr_assert_eq(e->overlap, 1.0); /* as calibration found it (the preset's comment) */
    /* attention: FlashAttention-2's key blocks of 64 on A100, FA3's 128 on Hopper */
    cr_assert(hw.spec.kernels[EMU_KERNEL_ATTN].set);
    cr_assert_eq(hw.spec.kernels[EMU_KERNEL_ATTN].col_tile, 64);
    cr_assert(!hw.spec.kernels[EMU_KERNEL_ROUTER].set);
    const char *hopper[] = {"h100-sxm", "h200", "h800"};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(emu_hw_load(hopper[i], &hw), MOEMU_OK, "%s", moemu_errmsg());
        cr_assert_eq(hw.spec.units, 132, "%s", hopper[i]);
        cr_assert_eq(hw.spec.kernels[EMU_KERNEL_GEMM].row_tiles[0], 64, "%s", hopper[i]);
        cr_assert_eq(hw.spec.kernels[EMU_KERNEL_ATTN].col_tile, 128, "%s", hopper[i]);
    }
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    cr_assert_eq(hw.spec.units, 0);
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) cr_assert(!hw.spec.kernels[k].set);
}

Test(presets, host)
{
    emu_host_t h;
    cr_assert_eq(emu_host_query(&h), MOEMU_OK);
    cr_assert_geq(h.cores, 1);
    cr_assert_geq(h.pus, h.cores);
}

/* ---- clusters */

typedef struct {
    int rank[64], node[64], local[64], size[64];
} place_t;

static moemu_status_t place_fn(emu_dev_t *dev, void *arg)
{
    place_t *p = arg;
    int r = emu_dev_rank(dev);
    p->rank[r] = r;
    p->node[r] = emu_dev_node(dev);
    p->local[r] = emu_dev_local_rank(dev);
    p->size[r] = emu_dev_topo(dev)->nodes;
    emu_charge(dev, EMU_KERNEL_GEMM, 1e9 * (r + 1), 0);
    return MOEMU_OK;
}

Test(cluster, placement_and_topology)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 10, NULL, &c), MOEMU_OK);
    cr_assert_eq(emu_cluster_size(c), 10);
    cr_assert_eq(emu_cluster_topo(c)->nodes, 3);
    cr_assert_geq(emu_cluster_host_cores(c), 1);
    place_t p;
    memset(&p, -1, sizeof p);
    cr_assert_eq(emu_cluster_run(c, place_fn, &p), MOEMU_OK);
    for (int r = 0; r < 10; r++) {
        cr_assert_eq(p.rank[r], r);
        cr_assert_eq(p.node[r], r / 4);
        cr_assert_eq(p.local[r], r % 4);
        cr_assert_eq(p.size[r], 3);
        emu_dev_t *d = emu_cluster_dev(c, r);
        cr_assert_eq(emu_dev_cluster(d), c);
        ASSERT_NEAR(emu_dev_clock(d), emu_kernel_time(&spec, 1e9 * (r + 1), 0));
    }
    cr_assert_null(emu_cluster_dev(c, 10));
    /* clocks carry over to the next run */
    cr_assert_eq(emu_cluster_run(c, place_fn, &p), MOEMU_OK);
    ASSERT_NEAR(emu_dev_clock(emu_cluster_dev(c, 0)),
                2 * emu_kernel_time(&spec, 1e9, 0));
    emu_cluster_destroy(c);

    emu_topo_t t = topo;
    t.nodes = 2;
    cr_assert_eq(emu_cluster_create(&spec, &t, 9, NULL, &c), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "9 devices do not fit on 2 nodes of 4"),
              "%s", moemu_errmsg());
    cr_assert_eq(emu_cluster_create(&spec, &t, 0, NULL, &c), MOEMU_ERR_INVALID);
    emu_cluster_opts_t o = {.pace = -1};
    cr_assert_eq(emu_cluster_create(&spec, &t, 2, &o, &c), MOEMU_ERR_INVALID);
    /* a device would sleep 1e12 x its virtual time: the run never ends */
    o.pace = 1e12;
    cr_assert_eq(emu_cluster_create(&spec, &t, 2, &o, &c), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "pace must be in [0, 1000] (got 1e+12)");
}

static moemu_status_t fail_fn(emu_dev_t *dev, void *arg)
{
    int bad = *(int *)arg;
    if (emu_dev_rank(dev) == bad)
        return moemu_fail(MOEMU_ERR_FORMAT, "bad thing number %d", bad);
    return MOEMU_OK;
}

Test(cluster, failure_status_and_message)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 6, NULL, &c), MOEMU_OK);
    int bad = 3;
    cr_assert_eq(emu_cluster_run(c, fail_fn, &bad), MOEMU_ERR_FORMAT);
    cr_assert_str_eq(moemu_errmsg(), "device 3: bad thing number 3");
    bad = -1;
    cr_assert_eq(emu_cluster_run(c, fail_fn, &bad), MOEMU_OK);
    emu_cluster_destroy(c);
}

static moemu_status_t empty_fail_fn(emu_dev_t *dev, void *arg)
{
    (void)arg;
    return emu_dev_rank(dev) == 1 ? MOEMU_ERR_INTERNAL : MOEMU_OK;
}

Test(cluster, failure_without_message_uses_strerror)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 2, NULL, &c), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, empty_fail_fn, NULL), MOEMU_ERR_INTERNAL);
    cr_assert_str_eq(moemu_errmsg(), "device 1: internal error");
    emu_cluster_destroy(c);
}

static moemu_status_t many_fn(emu_dev_t *dev, void *arg)
{
    par_comm_t *w = arg;
    float x = (float)emu_dev_rank(dev), y;
    MOEMU_CHECK(par_allreduce(&x, &y, 1, EMU_DTYPE_FP32, PAR_OP_SUM, w, dev));
    int n = emu_cluster_size(emu_dev_cluster(dev));
    if (y != (float)(n * (n - 1) / 2))
        return moemu_fail(MOEMU_ERR_INTERNAL, "sum %g", y);
    return par_barrier(w, dev);
}

Test(cluster, sixty_four_devices)
{
    emu_cluster_t *c;
    emu_topo_t t = topo;
    t.devices_per_node = 8;
    cr_assert_eq(emu_cluster_create(&spec, &t, 64, NULL, &c), MOEMU_OK);
    par_comm_t *w;
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(emu_cluster_run(c, many_fn, w), MOEMU_OK, "%s",
                     moemu_errmsg());
    par_comm_destroy(w);
    emu_cluster_destroy(c);
}

/* ---- pacing */

typedef struct {
    double pace_kernel; /* flops of the long kernel */
    int fail_rank;
} pace_arg_t;

static moemu_status_t pace_fn(emu_dev_t *dev, void *arg)
{
    pace_arg_t *a = arg;
    if (emu_dev_rank(dev) == a->fail_rank) {
        usleep(20000);
        return moemu_fail(MOEMU_ERR_INVALID, "failing on purpose");
    }
    emu_charge(dev, EMU_KERNEL_GEMM, a->pace_kernel, 0);
    return MOEMU_OK;
}

Test(pace, virtual_time_unchanged)
{
    emu_cluster_opts_t o = {.pace = 0.5};
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 2, &o, &c), MOEMU_OK);
    /* 1 ms of virtual time, paced at 0.5 */
    pace_arg_t a = {.pace_kernel = 50e12 * 1e-3, .fail_rank = -1};
    cr_assert_eq(emu_cluster_run(c, pace_fn, &a), MOEMU_OK);
    ASSERT_NEAR(emu_dev_clock(emu_cluster_dev(c, 1)),
                emu_kernel_time(&spec, a.pace_kernel, 0));
    emu_cluster_destroy(c);
}

Test(pace, abort_wakes_a_paced_sleep)
{
    emu_cluster_opts_t o = {.pace = 1};
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 2, &o, &c), MOEMU_OK);
    /* 100 s of virtual time: device 0 would sleep 100 s */
    pace_arg_t a = {.pace_kernel = 50e12 * 100, .fail_rank = 1};
    double t0 = wall_now();
    cr_assert_eq(emu_cluster_run(c, pace_fn, &a), MOEMU_ERR_INVALID);
    cr_assert_lt(wall_now() - t0, 1.0);
    emu_cluster_destroy(c);
}

/* ---- two clusters at once */

typedef struct {
    emu_cluster_t *c;
    par_comm_t *w;
    moemu_status_t st;
} two_t;

static void *two_thread(void *p)
{
    two_t *t = p;
    for (int i = 0; i < 5 && t->st == MOEMU_OK; i++)
        t->st = emu_cluster_run(t->c, many_fn, t->w);
    return NULL;
}

Test(cluster, two_clusters_in_one_process)
{
    two_t t[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(emu_cluster_create(&spec, &topo, 3 + 2 * i, NULL, &t[i].c),
                     MOEMU_OK);
        cr_assert_eq(par_comm_create_world(t[i].c, &t[i].w), MOEMU_OK);
        t[i].st = MOEMU_OK;
    }
    for (int i = 0; i < 2; i++) pthread_create(&th[i], NULL, two_thread, &t[i]);
    for (int i = 0; i < 2; i++) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(t[i].st, MOEMU_OK);
        par_comm_destroy(t[i].w);
        emu_cluster_destroy(t[i].c);
    }
}

/* ---- the clock decomposes into kernels, communication and idle time */

static moemu_status_t mixed_fn(emu_dev_t *dev, void *arg)
{
    par_comm_t *w = arg;
    int r = emu_dev_rank(dev), n = par_comm_size(w);
    float buf[64] = {0}, out[64 * 8];
    for (int i = 0; i < 3; i++) {
        emu_charge(dev, EMU_KERNEL_EXPERT, 1e9 * (r + 1) * (i + 1), 1e6);
        MOEMU_CHECK(par_allreduce(buf, buf, 64, EMU_DTYPE_BF16, PAR_OP_SUM, w, dev));
        emu_charge(dev, EMU_KERNEL_ATTN, 1e6, 1e8 * (n - r));
        MOEMU_CHECK(par_allgather(buf, out, 8, EMU_DTYPE_FP16, w, dev));
        MOEMU_CHECK(par_send(buf, 16, EMU_DTYPE_FP32, (r + 1) % n, w, dev));
        MOEMU_CHECK(par_recv(buf, 16, EMU_DTYPE_FP32, (r + n - 1) % n, w, dev));
        MOEMU_CHECK(par_alltoall(out, out + 8 * n, 1, EMU_DTYPE_FP32, w, dev));
        MOEMU_CHECK(par_barrier(w, dev));
    }
    return MOEMU_OK;
}

Test(cluster, clock_decomposes)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 6, NULL, &c), MOEMU_OK);
    par_comm_t *w;
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, mixed_fn, w), MOEMU_OK, "%s", moemu_errmsg());
    double idle = 0;
    for (int r = 0; r < 6; r++) {
        emu_dev_t *d = emu_cluster_dev(c, r);
        double sum = emu_dev_kernel_time(d) + emu_dev_comm_time(d) +
                     emu_dev_idle_time(d);
        ASSERT_NEAR(sum, emu_dev_clock(d));
        idle += emu_dev_idle_time(d);
        cr_assert_eq(emu_dev_comm_stats(d, EMU_COLL_ALLREDUCE, EMU_LINK_INTER)->calls, 3);
        cr_assert_eq(emu_dev_comm_stats(d, EMU_COLL_BARRIER, EMU_LINK_INTER)->calls, 3);
    }
    cr_assert_gt(idle, 0);
    par_comm_destroy(w);
    emu_cluster_destroy(c);
}
