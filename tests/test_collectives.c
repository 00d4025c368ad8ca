/* parallel: every collective against a serial computation, determinism
 * under random delays, virtual time against hand-computed closed forms,
 * argument errors, and failures that must end the run quickly. */
#include <criterion/criterion.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "emu/emu.h"
#include "parallel/par.h"
#include "parallel/par_impl.h" /* the transport table, for the seam test */

static const emu_spec_t spec = {
    .peak_flops = 100e12, .mfu = 0.5, .mem_bw = 1e12, .bw_util = 0.5,
    .mem_capacity = 1e9, .launch_s = 1e-6};
static const emu_topo_t topo4 = {.devices_per_node = 4, .intra_bw = 100e9,
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

static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ---- one case: a communicator, a count, a dtype, and every buffer */

enum { B_IN, B_AR, B_MX, B_RS, B_RSI, B_AG, B_AGI, B_BC, B_A2A, B_A2AV, B_SR,
       B__COUNT };

typedef struct {
    par_comm_t *comm;
    int p;
    size_t n;
    emu_dtype_t dt;
    bool integer;   /* integer-valued floats */
    int root;
    unsigned delay_us; /* random delay before each call, 0: none */
    uint64_t seed;
    void **buf[B__COUNT]; /* [kind][comm rank] */
    size_t *cnt;          /* p x p all-to-all-v counts */
    moemu_status_t *st;   /* per comm rank */
} case_t;

typedef struct {
    int ncases;
    case_t *cases;
} job_t;

static size_t buf_len(const case_t *k, int kind)
{
    size_t n = k->n, p = (size_t)k->p, big = n * (p > 2 ? p : 2);
    switch (kind) {
    case B_AR: case B_MX: case B_BC: return n;
    case B_RS: return n;
    case B_SR: return 2 * n;
    case B_A2AV: {
        size_t m = 0;
        for (size_t i = 0; i < p * p; i++) m += k->cnt[i];
        return m; /* more than any rank needs */
    }
    default: return big;
    }
}

static void case_init(case_t *k, par_comm_t *comm, size_t n, emu_dtype_t dt,
                      bool integer, uint64_t seed)
{
    memset(k, 0, sizeof *k);
    k->comm = comm;
    k->p = par_comm_size(comm);
    k->n = n;
    k->dt = dt;
    k->integer = integer;
    k->root = (k->p - 1) / 2;
    k->seed = seed;
    uint64_t s = seed | 1;
    int p = k->p;
    k->cnt = calloc((size_t)p * p, sizeof *k->cnt);
    for (int i = 0; i < p * p; i++) k->cnt[i] = rng_next(&s) % (n + 1);
    k->st = calloc((size_t)p, sizeof *k->st);
    for (int b = 0; b < B__COUNT; b++) {
        k->buf[b] = calloc((size_t)p, sizeof(void *));
        for (int r = 0; r < p; r++)
            k->buf[b][r] = calloc(buf_len(k, b) + 1, 4);
    }
    for (int r = 0; r < p; r++) {
        size_t len = buf_len(k, B_IN);
        float *f = k->buf[B_IN][r];
        int32_t *i32 = k->buf[B_IN][r];
        for (size_t i = 0; i < len; i++) {
            uint64_t x = rng_next(&s);
            if (dt == EMU_DTYPE_INT32) i32[i] = (int32_t)(x >> 32);
            else if (integer) f[i] = (float)((int)(x % 2001) - 1000);
            else /* varied magnitudes, so rounding differs with order */
                f[i] = (float)((double)(x >> 11) * 0x1p-53 - 0.5) *
                       ldexpf(1.0f, (int)((x >> 3) % 20) - 10);
        }
    }
}

static void case_clear_outputs(case_t *k)
{
    for (int b = B_AR; b < B__COUNT; b++)
        for (int r = 0; r < k->p; r++)
            memset(k->buf[b][r], 0xA5, (buf_len(k, b) + 1) * 4);
}

static void case_free(case_t *k)
{
    for (int b = 0; b < B__COUNT; b++) {
        for (int r = 0; r < k->p; r++) free(k->buf[b][r]);
        free(k->buf[b]);
    }
    free(k->cnt);
    free(k->st);
}

static void delay(case_t *k, uint64_t *s)
{
    if (k->delay_us) usleep((useconds_t)(rng_next(s) % k->delay_us));
}

/* Every collective once, in a fixed order, by comm rank r. */
static moemu_status_t case_run(case_t *k, int r, emu_dev_t *dev)
{
    par_comm_t *c = k->comm;
    int p = k->p;
    size_t n = k->n;
    emu_dtype_t dt = k->dt;
    uint64_t s = k->seed ^ (0x9E3779B97F4A7C15ULL * (uint64_t)(emu_dev_rank(dev) + 1));
    char *in = k->buf[B_IN][r];

    delay(k, &s);
    MOEMU_CHECK(par_allreduce(in, k->buf[B_AR][r], n, dt, PAR_OP_SUM, c, dev));
    delay(k, &s);
    memcpy(k->buf[B_MX][r], in, n * 4);
    MOEMU_CHECK(par_allreduce(k->buf[B_MX][r], k->buf[B_MX][r], n, dt,
                              PAR_OP_MAX, c, dev));
    delay(k, &s);
    MOEMU_CHECK(par_reduce_scatter(in, k->buf[B_RS][r], n, dt, PAR_OP_SUM, c, dev));
    delay(k, &s);
    char *rsi = k->buf[B_RSI][r];
    memcpy(rsi, in, n * p * 4);
    MOEMU_CHECK(par_reduce_scatter(rsi, rsi + r * n * 4, n, dt, PAR_OP_SUM, c, dev));
    delay(k, &s);
    MOEMU_CHECK(par_allgather(in, k->buf[B_AG][r], n, dt, c, dev));
    delay(k, &s);
    char *agi = k->buf[B_AGI][r];
    memcpy(agi + r * n * 4, in, n * 4);
    MOEMU_CHECK(par_allgather(agi + r * n * 4, agi, n, dt, c, dev));
    delay(k, &s);
    if (r == k->root) memcpy(k->buf[B_BC][r], in, n * 4);
    MOEMU_CHECK(par_broadcast(r == k->root ? k->buf[B_BC][r] : NULL,
                              k->buf[B_BC][r], n, dt, k->root, c, dev));
    delay(k, &s);
    MOEMU_CHECK(par_alltoall(in, k->buf[B_A2A][r], n, dt, c, dev));
    delay(k, &s);
    /* v: packed send blocks; receive blocks in reverse rank order */
    size_t sc[64], sd[64], rc[64], rd[64], off = 0;
    for (int q = 0; q < p; q++) {
        sc[q] = k->cnt[r * p + q];
        sd[q] = off;
        off += sc[q];
        rc[q] = k->cnt[q * p + r];
    }
    off = 0;
    for (int q = p - 1; q >= 0; q--) {
        rd[q] = off;
        off += rc[q];
    }
    MOEMU_CHECK(par_alltoallv(in, sc, sd, k->buf[B_A2AV][r], rc, rd, dt, c, dev));
    delay(k, &s);
    MOEMU_CHECK(par_send(in, n, dt, (r + 1) % p, c, dev));
    MOEMU_CHECK(par_send(in + n * 4, n, dt, (r + 1) % p, c, dev));
    delay(k, &s);
    char *sr = k->buf[B_SR][r];
    MOEMU_CHECK(par_recv(sr, n, dt, (r + p - 1) % p, c, dev));
    MOEMU_CHECK(par_recv(sr + n * 4, n, dt, (r + p - 1) % p, c, dev));
    delay(k, &s);
    return par_barrier(c, dev);
}

static moemu_status_t job_fn(emu_dev_t *dev, void *arg)
{
    job_t *j = arg;
    for (int i = 0; i < j->ncases; i++) {
        case_t *k = &j->cases[i];
        int r = par_comm_rank(k->comm, dev);
        if (r < 0) continue;
        k->st[r] = case_run(k, r, dev);
        MOEMU_CHECK(k->st[r]);
    }
    return MOEMU_OK;
}

/* The serial reference: element i reduced left to right over ranks. */
static uint32_t ref_elem(const case_t *k, size_t i, par_op_t op)
{
    if (k->dt == EMU_DTYPE_INT32) {
        uint32_t acc = ((uint32_t *)k->buf[B_IN][0])[i];
        for (int q = 1; q < k->p; q++) {
            int32_t x = ((int32_t *)k->buf[B_IN][q])[i];
            if (op == PAR_OP_SUM) acc += (uint32_t)x;
            else if (x > (int32_t)acc) acc = (uint32_t)x;
        }
        return acc;
    }
    float acc = ((float *)k->buf[B_IN][0])[i];
    for (int q = 1; q < k->p; q++) {
        float x = ((float *)k->buf[B_IN][q])[i];
        if (op == PAR_OP_SUM) acc += x;
        else if (x > acc) acc = x;
    }
    uint32_t u;
    memcpy(&u, &acc, 4);
    return u;
}

static uint32_t at(void *b, size_t i) { return ((uint32_t *)b)[i]; }

#define CHECK_ELEM(got, want, what)                                            \
    cr_assert_eq(got, want,                                                    \
                 "p=%d n=%zu %s %s rank %d index %zu: got 0x%08x want 0x%08x", \
                 k->p, k->n, emu_dtype_name(k->dt), what, r, i, got, want)

static void case_check(const case_t *k)
{
    int p = k->p;
    size_t n = k->n;
    for (int r = 0; r < p; r++)
        cr_assert_eq(k->st[r], MOEMU_OK, "p=%d rank %d status %d", p, r, k->st[r]);
    for (int r = 0; r < p; r++) {
        for (size_t i = 0; i < n; i++) {
            uint32_t sum = ref_elem(k, i, PAR_OP_SUM);
            CHECK_ELEM(at(k->buf[B_AR][r], i), sum, "all-reduce sum");
            CHECK_ELEM(at(k->buf[B_MX][r], i), ref_elem(k, i, PAR_OP_MAX),
                       "all-reduce max in place");
            uint32_t rs = ref_elem(k, (size_t)r * n + i, PAR_OP_SUM);
            CHECK_ELEM(at(k->buf[B_RS][r], i), rs, "reduce-scatter");
            CHECK_ELEM(at(k->buf[B_RSI][r], (size_t)r * n + i), rs,
                       "reduce-scatter in place");
            CHECK_ELEM(at(k->buf[B_BC][r], i), at(k->buf[B_IN][k->root], i),
                       "broadcast");
            int from = (r + p - 1) % p;
            CHECK_ELEM(at(k->buf[B_SR][r], i), at(k->buf[B_IN][from], i),
                       "send/recv 1");
            CHECK_ELEM(at(k->buf[B_SR][r], n + i),
                       at(k->buf[B_IN][from], n + i), "send/recv 2");
        }
        for (int q = 0; q < p; q++)
            for (size_t i = 0; i < n; i++) {
                uint32_t x = at(k->buf[B_IN][q], i);
                CHECK_ELEM(at(k->buf[B_AG][r], (size_t)q * n + i), x,
                           "all-gather");
                CHECK_ELEM(at(k->buf[B_AGI][r], (size_t)q * n + i), x,
                           "all-gather in place");
                CHECK_ELEM(at(k->buf[B_A2A][r], (size_t)q * n + i),
                           at(k->buf[B_IN][q], (size_t)r * n + i), "all-to-all");
            }
        /* all-to-all-v: blocks from q land in reverse rank order */
        size_t roff = 0;
        for (int q = p - 1; q >= 0; q--) {
            size_t soff = 0;
            for (int j = 0; j < r; j++) soff += k->cnt[q * p + j];
            for (size_t i = 0; i < k->cnt[q * p + r]; i++)
                CHECK_ELEM(at(k->buf[B_A2AV][r], roff + i),
                           at(k->buf[B_IN][q], soff + i), "all-to-all-v");
            roff += k->cnt[q * p + r];
        }
    }
}

static emu_cluster_t *make_cluster(int ndev, const emu_topo_t *t)
{
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, t, ndev, NULL, &c), MOEMU_OK, "%s",
                 moemu_errmsg());
    return c;
}

/* ---- every collective against the serial computation */

static const int sizes[] = {1, 2, 3, 4, 5, 6, 7, 8, 12, 13, 16};
static const size_t counts[] = {0, 1, 3, 257, 1003};

static void against_serial(const int *sz, size_t nsz, size_t stream_bytes)
{
    for (size_t si = 0; si < nsz; si++) {
        int p = sz[si];
        emu_cluster_t *c = make_cluster(p, &topo4);
        par_comm_t *w;
        cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
        par_comm_set_stream_bytes(w, stream_bytes);
        enum { NC = 5 * 3 };
        case_t cases[NC];
        int nc = 0;
        for (size_t ci = 0; ci < sizeof counts / sizeof *counts; ci++) {
            case_init(&cases[nc++], w, counts[ci], EMU_DTYPE_FP32, false,
                      1000 + ci);
            case_init(&cases[nc++], w, counts[ci], EMU_DTYPE_BF16, true,
                      2000 + ci);
            case_init(&cases[nc++], w, counts[ci], EMU_DTYPE_INT32, false,
                      3000 + ci);
        }
        for (int i = 0; i < nc; i++) case_clear_outputs(&cases[i]);
        job_t j = {nc, cases};
        cr_assert_eq(emu_cluster_run(c, job_fn, &j), MOEMU_OK, "p=%d: %s", p,
                     moemu_errmsg());
        for (int i = 0; i < nc; i++) {
            case_check(&cases[i]);
            case_free(&cases[i]);
        }
        par_comm_destroy(w);
        emu_cluster_destroy(c);
    }
}

Test(collectives, against_serial_all_sizes)
{
    against_serial(sizes, sizeof sizes / sizeof *sizes,
                   PAR_STREAM_BYTES_DEFAULT);
}

/* The same with every output written by non-temporal stores, at offsets
 * of every alignment. */
Test(collectives, against_serial_streaming)
{
    static const int sz[] = {1, 2, 3, 5, 8, 13};
    against_serial(sz, sizeof sz / sizeof *sz, 0);
}

Test(collectives, sub_communicators_at_once)
{
    emu_cluster_t *c = make_cluster(8, &topo4);
    par_comm_t *w, *odd, *pair, *sub;
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){1, 3, 5, 7}, 4, &odd), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){2, 0}, 2, &pair), MOEMU_OK);
    /* ranks 3 and 1 of odd: devices 7 and 3 */
    cr_assert_eq(par_comm_create_sub(odd, (int[]){3, 1}, 2, &sub), MOEMU_OK);
    cr_assert_eq(par_comm_global_rank(sub, 0), 7);
    cr_assert_eq(par_comm_global_rank(sub, 1), 3);
    cr_assert_eq(par_comm_link(odd), EMU_LINK_INTER);
    cr_assert_eq(par_comm_link(pair), EMU_LINK_INTRA);
    cr_assert_eq(par_comm_rank(odd, emu_cluster_dev(c, 5)), 2);
    cr_assert_eq(par_comm_rank(odd, emu_cluster_dev(c, 4)), -1);
    case_t cases[5];
    case_init(&cases[0], odd, 301, EMU_DTYPE_FP32, false, 11);
    case_init(&cases[1], pair, 77, EMU_DTYPE_FP16, false, 12);
    case_init(&cases[2], sub, 50, EMU_DTYPE_INT32, false, 13);
    case_init(&cases[3], w, 33, EMU_DTYPE_FP32, true, 14);
    case_init(&cases[4], pair, 0, EMU_DTYPE_FP32, false, 15);
    for (int i = 0; i < 5; i++) case_clear_outputs(&cases[i]);
    job_t j = {5, cases};
    cr_assert_eq(emu_cluster_run(c, job_fn, &j), MOEMU_OK, "%s", moemu_errmsg());
    for (int i = 0; i < 5; i++) {
        case_check(&cases[i]);
        case_free(&cases[i]);
    }
    par_comm_destroy(sub);
    par_comm_destroy(pair);
    par_comm_destroy(odd);
    par_comm_destroy(w);
    emu_cluster_destroy(c);
}

Test(collectives, comm_create_errors)
{
    emu_cluster_t *c = make_cluster(4, &topo4);
    par_comm_t *x;
    cr_assert_eq(par_comm_create(c, (int[]){0, 4}, 2, &x), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "device 4"), "%s", moemu_errmsg());
    cr_assert_eq(par_comm_create(c, (int[]){1, 1}, 2, &x), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "twice"), "%s", moemu_errmsg());
    cr_assert_eq(par_comm_create(c, (int[]){0}, 0, &x), MOEMU_ERR_INVALID);
    cr_assert_eq(par_comm_create_world(c, &x), MOEMU_OK);
    cr_assert_eq(par_comm_set_algo(x, EMU_COLL_ALLREDUCE, "tree"), MOEMU_OK);
    cr_assert_eq(par_comm_set_algo(x, EMU_COLL_ALLREDUCE, "magic"),
                 MOEMU_ERR_INVALID);
    par_comm_destroy(x);
    emu_cluster_destroy(c);
}

/* ---- the same bits whatever the arrival order, and the same clocks */

Test(collectives, deterministic_under_random_delays)
{
    enum { RUNS = 20, P = 8 };
    void *first[B__COUNT][P];
    double clocks[P];
    for (int run = 0; run < RUNS; run++) {
        emu_cluster_t *c = make_cluster(P, &topo4);
        par_comm_t *w, *half;
        cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
        cr_assert_eq(par_comm_create(c, (int[]){6, 1, 4, 3}, 4, &half), MOEMU_OK);
        case_t k[2];
        case_init(&k[0], w, 1003, EMU_DTYPE_FP32, false, 77);
        case_init(&k[1], half, 129, EMU_DTYPE_BF16, false, 78);
        for (int i = 0; i < 2; i++) {
            case_clear_outputs(&k[i]);
            k[i].delay_us = 300;
            k[i].seed ^= (uint64_t)run << 32; /* delays differ per run */
        }
        /* same data every run: regenerate with the base seed */
        job_t j = {2, k};
        cr_assert_eq(emu_cluster_run(c, job_fn, &j), MOEMU_OK, "%s",
                     moemu_errmsg());
        /* data is generated from the seed, so compare against run 0 */
        for (int r = 0; r < P; r++) {
            for (int b = B_AR; b < B__COUNT; b++) {
                size_t len = buf_len(&k[0], b) * 4;
                if (run == 0) {
                    first[b][r] = malloc(len);
                    memcpy(first[b][r], k[0].buf[b][r], len);
                } else
                    cr_assert_eq(memcmp(first[b][r], k[0].buf[b][r], len), 0,
                                 "run %d rank %d buffer %d differs", run, r, b);
            }
            /* the same bits on every rank */
            cr_assert_eq(memcmp(k[0].buf[B_AR][r], k[0].buf[B_AR][0], 1003 * 4), 0);
            double ck = emu_dev_clock(emu_cluster_dev(c, r));
            if (run == 0) clocks[r] = ck;
            else cr_assert_eq(ck, clocks[r], "run %d device %d clock %.17g vs %.17g",
                              run, r, ck, clocks[r]);
        }
        case_check(&k[0]);
        case_check(&k[1]);
        for (int i = 0; i < 2; i++) case_free(&k[i]);
        par_comm_destroy(half);
        par_comm_destroy(w);
        emu_cluster_destroy(c);
    }
    for (int r = 0; r < P; r++)
        for (int b = B_AR; b < B__COUNT; b++) free(first[b][r]);
}

/* ---- virtual time */

typedef struct {
    par_comm_t *comm;
    size_t n;
    emu_dtype_t dt;
    double bytes; /* for emu_coll_charge */
    float *buf[16];
} vt_t;

/* Device r computes for r ms (plus a launch); device 0 does nothing. */
static double ms_flops(const emu_spec_t *s, int r)
{
    return s->peak_flops * s->mfu * 1e-3 * r;
}

static void stagger(emu_dev_t *dev, int r)
{
    if (r) emu_charge(dev, EMU_KERNEL_GEMM, ms_flops(emu_dev_spec(dev), r), 0);
}

static double staggered_clock(const emu_spec_t *s, int r)
{
    return r ? emu_kernel_time(s, ms_flops(s, r), 0) : 0;
}

/* Stagger clocks, then one all-reduce. */
static moemu_status_t vt_allreduce_fn(emu_dev_t *dev, void *arg)
{
    vt_t *v = arg;
    int r = par_comm_rank(v->comm, dev);
    stagger(dev, r);
    return par_allreduce(v->buf[r], v->buf[r], v->n, v->dt, PAR_OP_SUM,
                         v->comm, dev);
}

static moemu_status_t vt_charge_fn(emu_dev_t *dev, void *arg)
{
    vt_t *v = arg;
    int p = par_comm_size(v->comm), ranks[16];
    double clocks[16] = {0};
    for (int i = 0; i < p; i++) ranks[i] = par_comm_global_rank(v->comm, i);
    emu_coll_charge(dev, EMU_COLL_ALLREDUCE, 0, ranks, p,
                    par_comm_rank(v->comm, dev), -1, clocks, v->bytes);
    return MOEMU_OK;
}

static void allreduce_time_case(int dpn, double t64, double t2)
{
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    hw.topo.devices_per_node = dpn;
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&hw.spec, &hw.topo, 8, NULL, &c), MOEMU_OK);
    par_comm_t *w;
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);

    /* 64 MiB of fp16 through the cost function parallel calls */
    vt_t v = {.comm = w, .bytes = 64.0 * 1024 * 1024};
    cr_assert_eq(emu_cluster_run(c, vt_charge_fn, &v), MOEMU_OK);
    for (int r = 0; r < 8; r++)
        ASSERT_NEAR(emu_dev_clock(emu_cluster_dev(c, r)), t64);
    par_comm_destroy(w);
    emu_cluster_destroy(c);

    /* 2 MiB of fp16 through par_allreduce, arrivals staggered */
    cr_assert_eq(emu_cluster_create(&hw.spec, &hw.topo, 8, NULL, &c), MOEMU_OK);
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
    v = (vt_t){.comm = w, .n = 1024 * 1024, .dt = EMU_DTYPE_FP16};
    for (int r = 0; r < 8; r++) v.buf[r] = calloc(v.n, 4);
    cr_assert_eq(emu_cluster_run(c, vt_allreduce_fn, &v), MOEMU_OK);
    double start = staggered_clock(&hw.spec, 7);
    emu_link_t l = dpn == 8 ? EMU_LINK_INTRA : EMU_LINK_INTER;
    for (int r = 0; r < 8; r++) {
        emu_dev_t *d = emu_cluster_dev(c, r);
        ASSERT_NEAR(emu_dev_clock(d), start + t2);
        const emu_comm_stats_t *s = emu_dev_comm_stats(d, EMU_COLL_ALLREDUCE, l);
        cr_assert_eq(s->calls, 1);
        ASSERT_NEAR(s->time, t2);
        ASSERT_NEAR(s->bytes, 2.0 * 7 / 8 * 2 * 1024 * 1024);
        ASSERT_NEAR(s->idle, start - staggered_clock(&hw.spec, r));
        free(v.buf[r]);
    }
    par_comm_destroy(w);
    emu_cluster_destroy(c);
}

Test(virtual_time, ring_allreduce_one_node)
{
    /* 14 x 2 us + 1.75 x 64 MiB / 600 GB/s, and with 2 MiB */
    allreduce_time_case(8, 0.00022373418666666667, 3.4116693333333336e-05);
}

Test(virtual_time, ring_allreduce_two_nodes)
{
    /* 14 x 5 us + 1.75 x 64 MiB / 25 GB/s, and with 2 MiB */
    allreduce_time_case(4, 0.00476762048, 0.00021680064);
}

typedef struct {
    par_comm_t *comm;
    float *sbuf, *rbuf[4];
    emu_dtype_t dt; /* 0: FP32 */
} a2a_t;

static moemu_status_t vt_a2a_fn(emu_dev_t *dev, void *arg)
{
    a2a_t *a = arg;
    int r = emu_dev_rank(dev);
    /* 0 -> 1: 1e6 bytes (intra); 2 -> 0: 1e5 bytes (inter) */
    size_t cnt[4][4] = {{0, 250000, 0, 0}, {0}, {25000, 0, 0, 0}, {0}};
    size_t sc[4], sd[4], rc[4], rd[4], off = 0;
    for (int q = 0; q < 4; q++) {
        sc[q] = cnt[r][q];
        sd[q] = 0;
        rc[q] = cnt[q][r];
        rd[q] = off;
        off += rc[q];
    }
    stagger(dev, r);
    return par_alltoallv(a->sbuf, sc, sd, a->rbuf[r], rc, rd, a->dt, a->comm, dev);
}

Test(virtual_time, alltoall_mixes_link_classes)
{
    emu_topo_t t = topo4;
    t.devices_per_node = 2;
    emu_cluster_t *c = make_cluster(4, &t);
    a2a_t a = {0};
    cr_assert_eq(par_comm_create_world(c, &a.comm), MOEMU_OK);
    a.sbuf = calloc(250000, 4);
    for (int r = 0; r < 4; r++) a.rbuf[r] = calloc(250000, 4);
    cr_assert_eq(emu_cluster_run(c, vt_a2a_fn, &a), MOEMU_OK, "%s", moemu_errmsg());
    /* rank 0: step 1 sends 1e6 intra: 1 us + 10 us; step 2 receives 1e5
     * inter: 10 us + 10 us; step 3 nothing. Rank 0 is the slowest. */
    double start = staggered_clock(&spec, 3), tmax = 31e-6;
    double intra[4] = {11e-6, 11e-6, 0, 0}, inter[4] = {20e-6, 20e-6, 31e-6, 31e-6};
    double sent_intra[4] = {1e6, 0, 0, 0}, sent_inter[4] = {0, 0, 1e5, 0};
    for (int r = 0; r < 4; r++) {
        emu_dev_t *d = emu_cluster_dev(c, r);
        const emu_comm_stats_t *si = emu_dev_comm_stats(d, EMU_COLL_ALLTOALL, EMU_LINK_INTRA);
        const emu_comm_stats_t *se = emu_dev_comm_stats(d, EMU_COLL_ALLTOALL, EMU_LINK_INTER);
        ASSERT_NEAR(emu_dev_clock(d), start + tmax);
        ASSERT_NEAR(si->time, intra[r]);
        ASSERT_NEAR(se->time, inter[r]);
        ASSERT_NEAR(si->bytes, sent_intra[r]);
        ASSERT_NEAR(se->bytes, sent_inter[r]);
        cr_assert_eq(se->calls, 1);
        cr_assert_eq(si->calls, 0);
        ASSERT_NEAR(se->idle, start - staggered_clock(&spec, r));
        free(a.rbuf[r]);
    }
    free(a.sbuf);
    par_comm_destroy(a.comm);
    emu_cluster_destroy(c);
}

/* FP8 rows (MoE dispatch): 1 byte a value plus an fp32 scale per 128 on
 * the links; the host values travel unrounded. */
Test(virtual_time, alltoall_fp8_counts_scales)
{
    emu_topo_t t = topo4;
    t.devices_per_node = 2;
    emu_cluster_t *c = make_cluster(4, &t);
    a2a_t a = {.dt = EMU_DTYPE_FP8};
    cr_assert_eq(par_comm_create_world(c, &a.comm), MOEMU_OK);
    a.sbuf = calloc(250000, 4);
    for (int i = 0; i < 250000; i++) a.sbuf[i] = 1.0f + (float)i * 1e-7f; /* not e4m3 values */
    for (int r = 0; r < 4; r++) a.rbuf[r] = calloc(250000, 4);
    cr_assert_eq(emu_cluster_run(c, vt_a2a_fn, &a), MOEMU_OK, "%s", moemu_errmsg());
    const emu_comm_stats_t *s0 = emu_dev_comm_stats(emu_cluster_dev(c, 0), EMU_COLL_ALLTOALL,
                                                    EMU_LINK_INTRA);
    const emu_comm_stats_t *s2 = emu_dev_comm_stats(emu_cluster_dev(c, 2), EMU_COLL_ALLTOALL,
                                                    EMU_LINK_INTER);
    ASSERT_NEAR(s0->bytes, 250000 * (1 + 4.0 / 128));
    ASSERT_NEAR(s2->bytes, 25000 * (1 + 4.0 / 128));
    cr_assert_eq(memcmp(a.rbuf[1], a.sbuf, 250000 * 4), 0);
    for (int r = 0; r < 4; r++) free(a.rbuf[r]);
    free(a.sbuf);
    par_comm_destroy(a.comm);
    emu_cluster_destroy(c);
}

static moemu_status_t vt_uniform_fn(emu_dev_t *dev, void *arg)
{
    a2a_t *a = arg;
    int r = emu_dev_rank(dev);
    return par_alltoall(a->sbuf, a->rbuf[r], 1000, EMU_DTYPE_BF16, a->comm, dev);
}

Test(virtual_time, alltoall_uniform_matches_closed_form)
{
    emu_topo_t t = topo4;
    t.devices_per_node = 1; /* every pair crosses nodes */
    emu_cluster_t *c = make_cluster(4, &t);
    a2a_t a = {0};
    cr_assert_eq(par_comm_create_world(c, &a.comm), MOEMU_OK);
    a.sbuf = calloc(4000, 4);
    for (int r = 0; r < 4; r++) a.rbuf[r] = calloc(4000, 4);
    cr_assert_eq(emu_cluster_run(c, vt_uniform_fn, &a), MOEMU_OK);
    double want = emu_coll_cost(EMU_COLL_ALLTOALL, 0, 4, 4 * 2000, 10e-6, 10e9);
    ASSERT_NEAR(want, 3 * (10e-6 + 2000 / 10e9));
    for (int r = 0; r < 4; r++) {
        /* the closed form is the charging arithmetic: the same bits */
        cr_assert_eq(emu_dev_clock(emu_cluster_dev(c, r)), want);
        free(a.rbuf[r]);
    }
    free(a.sbuf);
    par_comm_destroy(a.comm);
    emu_cluster_destroy(c);
}

typedef struct {
    par_comm_t *comm;
    float *buf[4];
} p2p_t;

static moemu_status_t vt_p2p_fn(emu_dev_t *dev, void *arg)
{
    p2p_t *a = arg;
    int r = emu_dev_rank(dev);
    if (r == 0) {
        emu_charge(dev, EMU_KERNEL_GEMM, 50e12 * 1e-3, 0); /* 1 ms + launch */
        MOEMU_CHECK(par_send(a->buf[0], 250000, EMU_DTYPE_FP32, 2, a->comm, dev));
        MOEMU_CHECK(par_send(a->buf[0], 250000, EMU_DTYPE_FP32, 2, a->comm, dev));
        MOEMU_CHECK(par_send(a->buf[0], 250000, EMU_DTYPE_FP32, 1, a->comm, dev));
    } else if (r == 2) {
        MOEMU_CHECK(par_recv(a->buf[2], 250000, EMU_DTYPE_FP32, 0, a->comm, dev));
        MOEMU_CHECK(par_recv(a->buf[2], 250000, EMU_DTYPE_FP32, 0, a->comm, dev));
    } else if (r == 1) {
        emu_charge(dev, EMU_KERNEL_GEMM, 50e12 * 5e-3, 0);
        MOEMU_CHECK(par_recv(a->buf[1], 250000, EMU_DTYPE_FP32, 0, a->comm, dev));
    }
    return MOEMU_OK;
}

Test(virtual_time, send_recv_one_hop_eager)
{
    emu_topo_t t = topo4;
    t.devices_per_node = 2;
    emu_cluster_t *c = make_cluster(4, &t);
    p2p_t a;
    cr_assert_eq(par_comm_create_world(c, &a.comm), MOEMU_OK);
    for (int r = 0; r < 4; r++) a.buf[r] = calloc(250000, 4);
    cr_assert_eq(emu_cluster_run(c, vt_p2p_fn, &a), MOEMU_OK, "%s", moemu_errmsg());
    double t0 = 1e-3 + 1e-6, hop_e = 10e-6 + 1e6 / 10e9, wire_e = 1e6 / 10e9;
    emu_dev_t *d0 = emu_cluster_dev(c, 0), *d1 = emu_cluster_dev(c, 1),
              *d2 = emu_cluster_dev(c, 2);
    /* the sender pays nothing */
    ASSERT_NEAR(emu_dev_clock(d0), t0);
    ASSERT_NEAR(emu_dev_comm_stats(d0, EMU_COLL_SEND, EMU_LINK_INTER)->bytes, 2e6);
    ASSERT_NEAR(emu_dev_comm_stats(d0, EMU_COLL_SEND, EMU_LINK_INTRA)->bytes, 1e6);
    ASSERT_NEAR(emu_dev_comm_time(d0), 0);
    /* the second message leaves when the first is on the wire */
    ASSERT_NEAR(emu_dev_clock(d2), t0 + wire_e + hop_e);
    const emu_comm_stats_t *s2 = emu_dev_comm_stats(d2, EMU_COLL_RECV, EMU_LINK_INTER);
    ASSERT_NEAR(s2->idle, t0);
    ASSERT_NEAR(s2->time, wire_e + hop_e);
    cr_assert_eq(s2->calls, 2);
    /* a late receiver finds the message there: no time */
    double t1 = 5e-3 + 1e-6;
    ASSERT_NEAR(emu_dev_clock(d1), t1);
    ASSERT_NEAR(emu_dev_comm_stats(d1, EMU_COLL_RECV, EMU_LINK_INTRA)->time, 0);
    for (int r = 0; r < 4; r++) free(a.buf[r]);
    par_comm_destroy(a.comm);
    emu_cluster_destroy(c);
}

/* Streams: device r computes r ms, issues an all-reduce asynchronously,
 * computes k seconds beside it, then waits; a synchronous all-gather
 * issued after a second asynchronous all-reduce waits for both. */
typedef struct {
    par_comm_t *comm;
    float *buf[2], *out[2];
    double k; /* flops of the kernel beside */
} st_t;

static moemu_status_t vt_stream_fn(emu_dev_t *dev, void *arg)
{
    st_t *a = arg;
    int r = emu_dev_rank(dev);
    stagger(dev, r);
    emu_dev_set_async(dev, true);
    MOEMU_CHECK(par_allreduce(a->buf[r], a->buf[r], 1000000, EMU_DTYPE_FP32, PAR_OP_SUM,
                              a->comm, dev));
    emu_dev_set_async(dev, false);
    emu_charge(dev, EMU_KERNEL_GEMM, a->k, 0);
    emu_dev_comm_wait(dev);
    double mid = emu_dev_clock(dev);
    emu_dev_set_async(dev, true);
    MOEMU_CHECK(par_allreduce(a->buf[r], a->buf[r], 1000000, EMU_DTYPE_FP32, PAR_OP_SUM,
                              a->comm, dev));
    emu_dev_set_async(dev, false);
    MOEMU_CHECK(par_allgather(a->buf[r], a->out[r], 500000, EMU_DTYPE_FP32, a->comm, dev));
    /* the all-gather queued behind the all-reduce and was waited for */
    return emu_dev_clock(dev) > mid ? MOEMU_OK : MOEMU_ERR_INVALID;
}

Test(virtual_time, streams_overlap)
{
    emu_cluster_opts_t o = {.trace = true};
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo4, 2, &o, &c), MOEMU_OK);
    st_t a = {.k = spec.peak_flops * spec.mfu * 20e-6};
    cr_assert_eq(par_comm_create_world(c, &a.comm), MOEMU_OK);
    for (int r = 0; r < 2; r++) {
        a.buf[r] = calloc(1000000, 4);
        a.out[r] = calloc(1000000, 4);
    }
    cr_assert_eq(emu_cluster_run(c, vt_stream_fn, &a), MOEMU_OK, "%s", moemu_errmsg());
    double t1 = staggered_clock(&spec, 1), kb = emu_kernel_time(&spec, a.k, 0);
    double ar = 2 * 1e-6 + 4e6 / 100e9, ag = 1e-6 + 2e6 / 100e9;
    emu_dev_t *d0 = emu_cluster_dev(c, 0), *d1 = emu_cluster_dev(c, 1);
    /* device 0 computed beside its wait for device 1, device 1 beside the
     * communication itself; both end with it */
    emu_overlap_t o0 = emu_dev_overlap(d0), o1 = emu_dev_overlap(d1);
    ASSERT_NEAR(o0.idle, kb);
    ASSERT_NEAR(o0.comm, 0);
    ASSERT_NEAR(o1.idle, 0);
    ASSERT_NEAR(o1.comm, kb);
    for (int r = 0; r < 2; r++) {
        emu_dev_t *d = emu_cluster_dev(c, r);
        emu_overlap_t ov = emu_dev_overlap(d);
        ASSERT_NEAR(emu_dev_clock(d), t1 + 2 * ar + ag);
        ASSERT_NEAR(emu_dev_kernel_time(d) + emu_dev_comm_time(d) + emu_dev_idle_time(d) -
                        ov.comm - ov.idle,
                    emu_dev_clock(d));
        /* stream 0 tiles the clock; stream 1 holds the collectives */
        double end0 = 0, end1 = 0, comm1 = 0;
        for (size_t i = 0; i < emu_dev_span_count(d); i++) {
            const emu_span_t *s = emu_dev_span(d, i);
            double *end = s->stream ? &end1 : &end0;
            ASSERT_NEAR(s->start, *end == 0 && s->stream ? s->start : *end);
            *end = s->end;
            if (s->stream) comm1 += s->cat == EMU_SPAN_COMM ? s->end - s->start : 0;
            else cr_assert(s->cat != EMU_SPAN_COMM, "device %d: comm on stream 0", r);
        }
        ASSERT_NEAR(end0, emu_dev_clock(d));
        ASSERT_NEAR(end1, emu_dev_clock(d));
        ASSERT_NEAR(comm1, 2 * ar + ag);
    }
    for (int r = 0; r < 2; r++) {
        free(a.buf[r]);
        free(a.out[r]);
    }
    par_comm_destroy(a.comm);
    emu_cluster_destroy(c);
}

typedef struct {
    par_comm_t *comm, *solo;
    float *buf[8], *big[8];
} misc_t;

static moemu_status_t vt_misc_fn(emu_dev_t *dev, void *arg)
{
    misc_t *a = arg;
    int r = emu_dev_rank(dev);
    stagger(dev, r);
    /* count 0 costs nothing and waits for nobody */
    MOEMU_CHECK(par_allreduce(NULL, NULL, 0, EMU_DTYPE_FP32, PAR_OP_SUM, a->comm, dev));
    if (a->solo && r == 0)
        MOEMU_CHECK(par_allreduce(a->buf[0], a->buf[0], 100, EMU_DTYPE_FP32,
                                  PAR_OP_SUM, a->solo, dev));
    MOEMU_CHECK(par_reduce_scatter(a->big[r], a->buf[r], 1000, EMU_DTYPE_FP16,
                                   PAR_OP_SUM, a->comm, dev));
    MOEMU_CHECK(par_allgather(a->buf[r], a->big[r], 1000, EMU_DTYPE_BF16, a->comm, dev));
    MOEMU_CHECK(par_broadcast(a->buf[r], a->buf[r], 1000, EMU_DTYPE_FP32, 2, a->comm, dev));
    return par_barrier(a->comm, dev);
}

Test(virtual_time, other_collectives)
{
    emu_cluster_t *c = make_cluster(6, &topo4); /* 2 nodes: inter-node */
    misc_t a = {0};
    cr_assert_eq(par_comm_create_world(c, &a.comm), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){0}, 1, &a.solo), MOEMU_OK);
    for (int r = 0; r < 6; r++) {
        a.buf[r] = calloc(1000, 4);
        a.big[r] = calloc(6000, 4);
    }
    cr_assert_eq(emu_cluster_run(c, vt_misc_fn, &a), MOEMU_OK, "%s", moemu_errmsg());
    double al = 10e-6, be = 10e9;
    double start = staggered_clock(&spec, 5);
    double rs = 5 * al + 5.0 / 6 * 6000 * 2 / be;
    double ag = 5 * al + 5.0 / 6 * 6000 * 2 / be;
    double bc = 5 * al + 4000 / be;
    double ba = 3 * al;
    for (int r = 0; r < 6; r++) {
        emu_dev_t *d = emu_cluster_dev(c, r);
        ASSERT_NEAR(emu_dev_clock(d), start + rs + ag + bc + ba);
        cr_assert_eq(emu_dev_comm_stats(d, EMU_COLL_ALLREDUCE, EMU_LINK_INTER)->calls, 1);
        ASSERT_NEAR(emu_dev_comm_stats(d, EMU_COLL_ALLREDUCE, EMU_LINK_INTER)->time, 0);
        ASSERT_NEAR(emu_dev_comm_stats(d, EMU_COLL_REDUCE_SCATTER, EMU_LINK_INTER)->bytes,
                    5.0 / 6 * 12000);
        /* pipeline from root 2: rank 1 is the chain's end */
        ASSERT_NEAR(emu_dev_comm_stats(d, EMU_COLL_BROADCAST, EMU_LINK_INTER)->bytes,
                    r == 1 ? 0 : 4000);
        ASSERT_NEAR(emu_dev_kernel_time(d) + emu_dev_comm_time(d) + emu_dev_idle_time(d),
                    emu_dev_clock(d));
    }
    /* a group of one costs nothing */
    cr_assert_eq(emu_dev_comm_stats(emu_cluster_dev(c, 0), EMU_COLL_ALLREDUCE,
                                    EMU_LINK_INTRA)->calls, 1);
    ASSERT_NEAR(emu_dev_comm_stats(emu_cluster_dev(c, 0), EMU_COLL_ALLREDUCE,
                                   EMU_LINK_INTRA)->time, 0);
    for (int r = 0; r < 6; r++) {
        free(a.buf[r]);
        free(a.big[r]);
    }
    par_comm_destroy(a.solo);
    par_comm_destroy(a.comm);
    emu_cluster_destroy(c);
}

/* ---- argument errors: INVALID at once, nobody waits */

typedef struct {
    par_comm_t *pair; /* devices {0, 1} of 3 */
    moemu_status_t st[16];
    char msg[16][256];
} bad_t;

#define BAD(i, call)                                                           \
    do {                                                                       \
        b->st[i] = (call);                                                     \
        snprintf(b->msg[i], sizeof b->msg[i], "%s", moemu_errmsg());           \
    } while (0)

static moemu_status_t bad_fn(emu_dev_t *dev, void *arg)
{
    bad_t *b = arg;
    float x[8] = {0};
    int r = emu_dev_rank(dev);
    if (r == 2) {
        BAD(0, par_allreduce(x, x, 8, EMU_DTYPE_FP32, PAR_OP_SUM, b->pair, dev));
        return MOEMU_OK;
    }
    if (r == 1) return MOEMU_OK;
    BAD(1, par_allreduce(NULL, x, 8, EMU_DTYPE_FP32, PAR_OP_SUM, b->pair, dev));
    BAD(2, par_allreduce(x, NULL, 8, EMU_DTYPE_FP32, PAR_OP_SUM, b->pair, dev));
    BAD(3, par_allreduce(x, x, 8, EMU_DTYPE__COUNT, PAR_OP_SUM, b->pair, dev));
    BAD(4, par_allreduce(x, x, 8, EMU_DTYPE_FP32, (par_op_t)7, b->pair, dev));
    BAD(5, par_broadcast(x, x, 8, EMU_DTYPE_FP32, 2, b->pair, dev));
    BAD(6, par_send(x, 8, EMU_DTYPE_FP32, -1, b->pair, dev));
    BAD(7, par_recv(NULL, 8, EMU_DTYPE_FP32, 1, b->pair, dev));
    BAD(8, par_alltoall(x, x, 4, EMU_DTYPE_FP32, b->pair, dev));
    BAD(9, par_allgather(x, NULL, 1, EMU_DTYPE_FP32, b->pair, dev));
    BAD(10, par_reduce_scatter(NULL, x, 1, EMU_DTYPE_FP32, PAR_OP_MAX, b->pair, dev));
    BAD(11, par_alltoallv(x, NULL, NULL, x, NULL, NULL, EMU_DTYPE_FP32, b->pair, dev));
    BAD(12, par_barrier(NULL, dev));
    return MOEMU_OK;
}

Test(errors, bad_arguments)
{
    emu_cluster_t *c = make_cluster(3, &topo4);
    bad_t b;
    memset(&b, 0, sizeof b);
    cr_assert_eq(par_comm_create(c, (int[]){0, 1}, 2, &b.pair), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, bad_fn, &b), MOEMU_OK);
    const char *want[13] = {"not a member", "NULL send buffer",
                            "NULL receive buffer", "bad dtype", "bad op",
                            "root 2", "peer -1", "NULL receive buffer",
                            "never in place", "NULL receive buffer",
                            "NULL send buffer", "NULL counts",
                            "NULL communicator"};
    for (int i = 0; i < 13; i++) {
        cr_assert_eq(b.st[i], MOEMU_ERR_INVALID, "case %d: %d", i, b.st[i]);
        cr_assert(strstr(b.msg[i], want[i]), "case %d: %s", i, b.msg[i]);
    }
    par_comm_destroy(b.pair);
    emu_cluster_destroy(c);
}

/* Members that disagree all fail with the same message. */
typedef struct {
    par_comm_t *w;
    int variant;
    moemu_status_t st[4];
} mis_t;

static moemu_status_t mismatch_fn(emu_dev_t *dev, void *arg)
{
    mis_t *m = arg;
    int r = emu_dev_rank(dev);
    float x[64] = {0}, y[256];
    size_t sc[4] = {1, 1, 1, 1}, sd[4] = {0, 1, 2, 3}, rc[4] = {1, 1, 1, 1};
    switch (m->variant) {
    case 0:
        m->st[r] = r == 3 ? par_allgather(x, y, 4, EMU_DTYPE_FP32, m->w, dev)
                          : par_allreduce(x, y, 4, EMU_DTYPE_FP32, PAR_OP_SUM,
                                          m->w, dev);
        break;
    case 1:
        m->st[r] = par_allreduce(x, y, r == 2 ? 5 : 4, EMU_DTYPE_FP32,
                                 PAR_OP_SUM, m->w, dev);
        break;
    case 2:
        if (r == 1) rc[2] = 2;
        m->st[r] = par_alltoallv(x, sc, sd, y, rc, sd, EMU_DTYPE_FP32, m->w, dev);
        break;
    }
    return m->st[r];
}

Test(errors, members_disagree)
{
    emu_cluster_t *c = make_cluster(4, &topo4);
    mis_t m = {0};
    cr_assert_eq(par_comm_create_world(c, &m.w), MOEMU_OK);
    const char *want[3] = {"disagree on the collective", "disagree on the count",
                           "rank 2 (device 2) sends 1 elements to rank 1"};
    for (int v = 0; v < 3; v++) {
        m.variant = v;
        cr_assert_eq(emu_cluster_run(c, mismatch_fn, &m), MOEMU_ERR_INVALID);
        cr_assert(strstr(moemu_errmsg(), want[v]), "%s", moemu_errmsg());
        for (int r = 0; r < 4; r++)
            cr_assert(m.st[r] == MOEMU_ERR_INVALID, "variant %d rank %d: %d", v,
                      r, m.st[r]);
    }
    par_comm_destroy(m.w);
    emu_cluster_destroy(c);
}

/* ---- failures end the run quickly */

typedef struct {
    par_comm_t *w, *sub;
    int bad;   /* the device that fails */
    int where; /* what the others wait in */
} fail_t;

static moemu_status_t fail_fn(emu_dev_t *dev, void *arg)
{
    fail_t *f = arg;
    int r = emu_dev_rank(dev), p = par_comm_size(f->w);
    float x[64] = {0}, y[64 * 16];
    MOEMU_CHECK(par_allreduce(x, y, 64, EMU_DTYPE_FP32, PAR_OP_SUM, f->w, dev));
    if (r == f->bad) {
        usleep(30000); /* let the others block first */
        if (f->where == 4) return MOEMU_OK; /* leaves without joining */
        if (f->where == 5) /* fails inside the collective the others wait in */
            return par_allreduce(NULL, y, 64, EMU_DTYPE_FP32, PAR_OP_SUM, f->w, dev);
        return emu_mem_reserve(dev, EMU_MEM_ACT, 1e12);
    }
    for (int i = 0; i < 3; i++) {
        switch (f->where) {
        case 0:
        case 4:
        case 5:
            MOEMU_CHECK(par_allreduce(x, y, 64, EMU_DTYPE_FP32, PAR_OP_SUM, f->w, dev));
            break;
        case 1:
            MOEMU_CHECK(par_recv(y, 4, EMU_DTYPE_FP32, f->bad, f->w, dev));
            break;
        case 2:
            MOEMU_CHECK(par_alltoall(x, y, 1, EMU_DTYPE_FP32, f->w, dev));
            break;
        case 3: /* some wait in a sub-communicator without the bad device */
            if (f->sub && par_comm_rank(f->sub, dev) >= 0 && r % 2)
                MOEMU_CHECK(par_barrier(f->sub, dev));
            MOEMU_CHECK(par_barrier(f->w, dev));
            break;
        }
    }
    (void)p;
    return MOEMU_OK;
}

/* The failures of fail_fn on every size; nodata runs the devices as
 * coroutines, where a NULL buffer is no error (where 5: the bad device
 * then leaves after one collective more than the others have made). */
static void failures_release_everyone(bool nodata)
{
    emu_cluster_opts_t o = {.nodata = nodata};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        int p = sizes[si];
        emu_cluster_t *c;
        cr_assert_eq(emu_cluster_create(&spec, &topo4, p, &o, &c), MOEMU_OK);
        fail_t f = {.bad = p / 2};
        cr_assert_eq(par_comm_create_world(c, &f.w), MOEMU_OK);
        int others[16], no = 0;
        for (int r = 0; r < p; r++)
            if (r != f.bad) others[no++] = r;
        if (no > 0) cr_assert_eq(par_comm_create(c, others, no, &f.sub), MOEMU_OK);
        for (f.where = 0; f.where < 6; f.where++) {
            double t0 = wall_now();
            moemu_status_t st = emu_cluster_run(c, fail_fn, &f);
            double dt = wall_now() - t0;
            char want[64];
            snprintf(want, sizeof want, "device %d out of memory", f.bad);
            if (f.where == 4 || (f.where == 5 && nodata)) {
                cr_assert_eq(st, p == 1 ? MOEMU_OK : MOEMU_ERR_INVALID,
                             "p=%d: %s", p, moemu_errmsg());
                if (p > 1)
                    cr_assert(strstr(moemu_errmsg(), "returned without joining"),
                              "p=%d: %s", p, moemu_errmsg());
            } else if (f.where == 5) {
                snprintf(want, sizeof want, "device %d: all-reduce on device %d: "
                         "NULL send buffer", f.bad, f.bad);
                cr_assert_eq(st, MOEMU_ERR_INVALID, "p=%d: %s", p, moemu_errmsg());
                cr_assert(strstr(moemu_errmsg(), want), "p=%d: %s", p,
                          moemu_errmsg());
            } else {
                cr_assert_eq(st, MOEMU_ERR_OOM, "p=%d where=%d: %s", p, f.where,
                             moemu_errmsg());
                cr_assert(strstr(moemu_errmsg(), want), "p=%d: %s", p,
                          moemu_errmsg());
            }
            cr_assert_lt(dt, 1.0, "p=%d where=%d took %.3f s", p, f.where, dt);
        }
        par_comm_destroy(f.sub);
        par_comm_destroy(f.w);
        emu_cluster_destroy(c);
    }
}

Test(errors, failure_releases_everyone_quickly) { failures_release_everyone(false); }

Test(coroutines, failure_releases_everyone) { failures_release_everyone(true); }

/* After an aborted run, the communicators work again. */
Test(errors, next_run_after_abort)
{
    emu_cluster_t *c = make_cluster(4, &topo4);
    fail_t f = {.bad = 1, .where = 2};
    cr_assert_eq(par_comm_create_world(c, &f.w), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, fail_fn, &f), MOEMU_ERR_OOM);
    case_t k;
    case_init(&k, f.w, 100, EMU_DTYPE_FP32, false, 5);
    case_clear_outputs(&k);
    job_t j = {1, &k};
    cr_assert_eq(emu_cluster_run(c, job_fn, &j), MOEMU_OK, "%s", moemu_errmsg());
    case_check(&k);
    case_free(&k);
    par_comm_destroy(f.w);
    emu_cluster_destroy(c);
}

/* ---- no-data mode: the same clocks and counters, bit for bit, and no
 * byte of any buffer read or written */

enum { ND_DATA, ND_SENTINEL, ND_NOACCESS, ND_NULL, ND__COUNT };
#define ND_P 6
#define ND_LEN 8192 /* floats per buffer */

typedef struct {
    par_comm_t *w, *sub, *solo; /* world; {1, 2, 5} (tree, binomial); {3} */
    float *buf[ND_P][3];        /* send, receive, second receive */
} nd_t;

/* p + k, NULL stays NULL (no arithmetic on a null pointer) */
static float *nd_at(float *p, size_t k) { return p ? p + k : NULL; }

static moemu_status_t nd_fn(emu_dev_t *dev, void *arg)
{
    nd_t *a = arg;
    int r = emu_dev_rank(dev), p = ND_P, sr = par_comm_rank(a->sub, dev);
    float *s = a->buf[r][0], *x = a->buf[r][1], *y = a->buf[r][2];
    par_comm_t *w = a->w;
    stagger(dev, (r * 5) % p);
    MOEMU_CHECK(par_allreduce(s, x, 1000, EMU_DTYPE_FP32, PAR_OP_SUM, w, dev));
    emu_charge(dev, EMU_KERNEL_ATTN, ms_flops(&spec, p - r), 1e6);
    MOEMU_CHECK(par_allreduce(s, x, 777, EMU_DTYPE_BF16, PAR_OP_MAX, w, dev));
    if (sr >= 0)
        MOEMU_CHECK(par_allreduce(s, x, 3000, EMU_DTYPE_FP16, PAR_OP_SUM,
                                  a->sub, dev));
    if (r == 3)
        MOEMU_CHECK(par_allreduce(s, x, 100, EMU_DTYPE_FP32, PAR_OP_SUM,
                                  a->solo, dev));
    MOEMU_CHECK(par_reduce_scatter(s, x, 500, EMU_DTYPE_FP32, PAR_OP_SUM, w, dev));
    stagger(dev, r % 3);
    MOEMU_CHECK(par_allgather(s, x, 400, EMU_DTYPE_BF16, w, dev));
    MOEMU_CHECK(par_broadcast(s, x, 2000, EMU_DTYPE_FP32, 4, w, dev));
    if (sr >= 0)
        MOEMU_CHECK(par_broadcast(s, y, 900, EMU_DTYPE_BF16, 2, a->sub, dev));
    MOEMU_CHECK(par_alltoall(s, x, 300, EMU_DTYPE_BF16, w, dev));
    size_t sc[ND_P], sd[ND_P], rc[ND_P], rd[ND_P], so = 0, ro = 0;
    for (int q = 0; q < p; q++) {
        sc[q] = (size_t)((r + 2 * q) % 4) * 40;
        rc[q] = (size_t)((q + 2 * r) % 4) * 40;
        sd[q] = so, rd[q] = ro;
        so += sc[q], ro += rc[q];
    }
    MOEMU_CHECK(par_alltoallv(s, sc, sd, y, rc, rd, EMU_DTYPE_FP16, w, dev));
    MOEMU_CHECK(par_allgather(NULL, NULL, 0, EMU_DTYPE_FP32, w, dev));
    emu_charge(dev, EMU_KERNEL_NORM, 0, 1e8 * ((r * 3) % p + 1));
    MOEMU_CHECK(par_send(s, 1500, EMU_DTYPE_BF16, (r + 2) % p, w, dev));
    MOEMU_CHECK(par_send(nd_at(s, 1500), 700, EMU_DTYPE_FP32, (r + 3) % p, w, dev));
    MOEMU_CHECK(par_send(s, 10, EMU_DTYPE_FP32, r, w, dev));
    MOEMU_CHECK(par_recv(x, 1500, EMU_DTYPE_BF16, (r + p - 2) % p, w, dev));
    MOEMU_CHECK(par_recv(y, 700, EMU_DTYPE_FP32, (r + p - 3) % p, w, dev));
    MOEMU_CHECK(par_recv(nd_at(y, 1000), 10, EMU_DTYPE_FP32, r, w, dev));
    return par_barrier(w, dev);
}

static void nd_run(int mode, emu_cluster_t **out, nd_t *a)
{
    emu_cluster_opts_t o = {.no_pin = true, .nodata = mode != ND_DATA};
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo4, ND_P, &o, &c), MOEMU_OK);
    memset(a, 0, sizeof *a);
    cr_assert_eq(par_comm_create_world(c, &a->w), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){1, 2, 5}, 3, &a->sub), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){3}, 1, &a->solo), MOEMU_OK);
    cr_assert_eq(par_comm_set_algo(a->sub, EMU_COLL_ALLREDUCE, "tree"), MOEMU_OK);
    cr_assert_eq(par_comm_set_algo(a->sub, EMU_COLL_BROADCAST, "binomial"),
                 MOEMU_OK);
    for (int r = 0; r < ND_P && mode != ND_NULL; r++)
        for (int k = 0; k < 3; k++) {
            void *b = mmap(NULL, ND_LEN * 4,
                           mode == ND_NOACCESS ? PROT_NONE
                                               : PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            cr_assert_neq(b, MAP_FAILED);
            a->buf[r][k] = b;
            if (mode == ND_SENTINEL) memset(b, 0xA5, ND_LEN * 4);
            if (mode == ND_DATA)
                for (int i = 0; i < ND_LEN; i++)
                    a->buf[r][k][i] = (float)(k == 0 ? r + i % 7 : -1);
        }
    cr_assert_eq(emu_cluster_run(c, nd_fn, a), MOEMU_OK, "mode %d: %s", mode,
                 moemu_errmsg());
    *out = c;
}

static void nd_free(emu_cluster_t *c, nd_t *a)
{
    for (int r = 0; r < ND_P; r++)
        for (int k = 0; k < 3; k++)
            if (a->buf[r][k]) munmap(a->buf[r][k], ND_LEN * 4);
    par_comm_destroy(a->w);
    par_comm_destroy(a->sub);
    par_comm_destroy(a->solo);
    emu_cluster_destroy(c);
}

#define SAME(x, y, what, r)                                                    \
    cr_assert((x) == (y), "mode %d device %d: %s %.17g with data, %.17g "     \
              "without", mode, r, what, (double)(y), (double)(x))

Test(nodata, same_time_and_counters_no_data_moved)
{
    emu_cluster_t *c0, *c;
    nd_t a0, a;
    nd_run(ND_DATA, &c0, &a0);
    /* with data, the last receives landed (send buffers hold r + i % 7) */
    for (int r = 0; r < ND_P; r++) {
        cr_assert_eq(a0.buf[r][1][0], (r + 4) % 6);
        cr_assert_eq(a0.buf[r][2][0], (r + 3) % 6 + 1500 % 7);
        cr_assert_eq(a0.buf[r][2][1000], r);
    }
    for (int mode = ND_SENTINEL; mode < ND__COUNT; mode++) {
        nd_run(mode, &c, &a);
        for (int r = 0; r < ND_P; r++) {
            emu_dev_t *d = emu_cluster_dev(c, r), *d0 = emu_cluster_dev(c0, r);
            cr_assert(emu_dev_nodata(d));
            cr_assert_not(emu_dev_nodata(d0));
            SAME(emu_dev_clock(d), emu_dev_clock(d0), "clock", r);
            for (int k = 0; k < EMU_KERNEL__COUNT; k++) {
                const emu_kernel_stats_t *x = emu_dev_kernel_stats(d, k),
                                         *y = emu_dev_kernel_stats(d0, k);
                SAME(x->time, y->time, emu_kernel_name(k), r);
                SAME(x->launches, y->launches, emu_kernel_name(k), r);
                SAME(x->flops, y->flops, emu_kernel_name(k), r);
                SAME(x->bytes, y->bytes, emu_kernel_name(k), r);
            }
            for (int k = 0; k < EMU_COLL__COUNT; k++)
                for (int l = 0; l < EMU_LINK__COUNT; l++) {
                    const emu_comm_stats_t *x = emu_dev_comm_stats(d, k, l),
                                           *y = emu_dev_comm_stats(d0, k, l);
                    SAME(x->calls, y->calls, emu_coll_name(k), r);
                    SAME(x->bytes, y->bytes, emu_coll_name(k), r);
                    SAME(x->time, y->time, emu_coll_name(k), r);
                    SAME(x->idle, y->idle, emu_coll_name(k), r);
                }
            if (mode == ND_SENTINEL)
                for (int k = 0; k < 3; k++) {
                    const unsigned char *b = (const unsigned char *)a.buf[r][k];
                    for (size_t i = 0; i < ND_LEN * 4; i++)
                        cr_assert_eq(b[i], 0xA5, "device %d buffer %d byte %zu "
                                     "was written", r, k, i);
                }
        }
        /* the run did wait and communicate */
        cr_assert_gt(emu_dev_idle_time(emu_cluster_dev(c, 0)), 0);
        cr_assert_gt(emu_dev_comm_stats(emu_cluster_dev(c, 0), EMU_COLL_RECV,
                                        EMU_LINK_INTER)->calls, 0);
        nd_free(c, &a);
    }
    nd_free(c0, &a0);
}

typedef struct {
    par_comm_t *w;
    moemu_status_t st[4];
    char msg[4][512];
} ndmix_t;

static moemu_status_t ndmix_coll_fn(emu_dev_t *dev, void *arg)
{
    ndmix_t *m = arg;
    int r = emu_dev_rank(dev);
    float x[4] = {0};
    m->st[r] = par_allreduce(x, x, 4, EMU_DTYPE_FP32, PAR_OP_SUM, m->w, dev);
    snprintf(m->msg[r], sizeof m->msg[r], "%s", moemu_errmsg());
    return MOEMU_OK;
}

static moemu_status_t ndmix_p2p_fn(emu_dev_t *dev, void *arg)
{
    ndmix_t *m = arg;
    int r = emu_dev_rank(dev);
    float x[4] = {0};
    if (r == 0) m->st[r] = par_send(x, 4, EMU_DTYPE_FP32, 1, m->w, dev);
    else m->st[r] = par_recv(x, 4, EMU_DTYPE_FP32, 0, m->w, dev);
    snprintf(m->msg[r], sizeof m->msg[r], "%s", moemu_errmsg());
    return MOEMU_OK;
}

/* Members of a communicator must all be in the same mode. */
Test(nodata, members_must_agree)
{
    emu_cluster_t *c = make_cluster(3, &topo4);
    ndmix_t m = {0};
    cr_assert_eq(par_comm_create_world(c, &m.w), MOEMU_OK);
    emu_dev_set_nodata(emu_cluster_dev(c, 1), true);
    cr_assert_eq(emu_cluster_run(c, ndmix_coll_fn, &m), MOEMU_OK);
    for (int r = 0; r < 3; r++) {
        cr_assert_eq(m.st[r], MOEMU_ERR_INVALID, "device %d", r);
        cr_assert(strstr(m.msg[r], "disagree on the no-data mode"), "%s",
                  m.msg[r]);
    }
    /* a message sent in no-data mode to a device with data */
    emu_dev_set_nodata(emu_cluster_dev(c, 1), false);
    emu_dev_set_nodata(emu_cluster_dev(c, 0), true);
    memset(&m.st, 0, sizeof m.st);
    cr_assert_eq(emu_cluster_run(c, ndmix_p2p_fn, &m), MOEMU_OK);
    cr_assert_eq(m.st[0], MOEMU_OK);
    cr_assert_eq(m.st[1], MOEMU_ERR_INVALID);
    cr_assert(strstr(m.msg[1], "no-data mode"), "%s", m.msg[1]);
    par_comm_destroy(m.w);
    emu_cluster_destroy(c);
}

/* In no-data mode int32 payloads (token ids, routing, counts) still move:
 * a dry run's schedule depends on them. */
static moemu_status_t nd_meta_fn(emu_dev_t *dev, void *arg)
{
    par_comm_t *w = arg;
    int r = emu_dev_rank(dev);
    int32_t mine[2] = {r, 10 * r}, all[8] = {0};
    MOEMU_CHECK(par_allgather(mine, all, 2, EMU_DTYPE_INT32, w, dev));
    for (int q = 0; q < 4; q++)
        if (all[2 * q] != q || all[2 * q + 1] != 10 * q)
            return moemu_fail(MOEMU_ERR_INTERNAL, "device %d got %d from %d", r, all[2 * q], q);
    int32_t tok = 100 + r, got = -1;
    MOEMU_CHECK(par_send(&tok, 1, EMU_DTYPE_INT32, (r + 1) % 4, w, dev));
    MOEMU_CHECK(par_recv(&got, 1, EMU_DTYPE_INT32, (r + 3) % 4, w, dev));
    if (got != 100 + (r + 3) % 4)
        return moemu_fail(MOEMU_ERR_INTERNAL, "device %d received %d", r, got);
    /* and float payloads do not */
    float f = 1.0f, g[4] = {-7, -7, -7, -7};
    MOEMU_CHECK(par_allgather(&f, g, 1, EMU_DTYPE_FP32, w, dev));
    if (g[0] != -7 || g[3] != -7)
        return moemu_fail(MOEMU_ERR_INTERNAL, "device %d: a float payload moved", r);
    return MOEMU_OK;
}

Test(nodata, int32_metadata_moves)
{
    emu_topo_t topo = {.devices_per_node = 4, .intra_bw = 1e11, .intra_lat = 1e-6,
                       .inter_bw = 1e10, .inter_lat = 5e-6};
    emu_cluster_opts_t opts = {.nodata = true, .no_pin = true};
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo, 4, &opts, &c), MOEMU_OK);
    par_comm_t *w;
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
    cr_assert_eq(emu_cluster_run(c, nd_meta_fn, w), MOEMU_OK, "%s", moemu_errmsg());
    par_comm_destroy(w);
    emu_cluster_destroy(c);
}

/* ---- no-data runs as coroutines (emu/fiber.c) */

typedef struct {
    par_comm_t *w, *a, *b; /* world; two communicators of devices 0 and 1 */
    int variant;
    pthread_t caller;
    bool on_caller[ND_P];
    atomic_int started;
    int order[ND_P];
} co_t;

static void co_make(emu_cluster_t *c, co_t *k)
{
    memset(k, 0, sizeof *k);
    k->caller = pthread_self();
    cr_assert_eq(par_comm_create_world(c, &k->w), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){0, 1}, 2, &k->a), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){0, 1}, 2, &k->b), MOEMU_OK);
}

static void co_free(co_t *k)
{
    par_comm_destroy(k->w);
    par_comm_destroy(k->a);
    par_comm_destroy(k->b);
}

/* Devices 0 and 1 wait for each other where neither can come; the
 * others return. */
static moemu_status_t deadlock_fn(emu_dev_t *dev, void *arg)
{
    co_t *k = arg;
    int r = emu_dev_rank(dev);
    float x[4] = {0};
    if (r > 1) return MOEMU_OK;
    if (k->variant == 0) /* each receives first */
        return par_recv(x, 4, EMU_DTYPE_FP32, 1 - r, k->a, dev);
    /* barriers on two communicators in opposite orders */
    MOEMU_CHECK(par_barrier(r ? k->b : k->a, dev));
    return par_barrier(r ? k->a : k->b, dev);
}

static moemu_status_t barrier_fn(emu_dev_t *dev, void *arg)
{
    co_t *k = arg;
    return par_barrier(k->w, dev);
}

/* Threads would hang for ever; coroutines see that no device can run
 * and say which wait, then the next run works. */
Test(coroutines, deadlock_names_the_devices)
{
    emu_cluster_opts_t o = {.nodata = true};
    emu_cluster_t *c;
    cr_assert_eq(emu_cluster_create(&spec, &topo4, ND_P, &o, &c), MOEMU_OK);
    co_t k;
    co_make(c, &k);
    for (k.variant = 0; k.variant < 2; k.variant++) {
        cr_assert_eq(emu_cluster_run(c, deadlock_fn, &k), MOEMU_ERR_INVALID);
        cr_assert_str_eq(moemu_errmsg(), "deadlock: devices 0, 1 wait for a collective or a "
                         "message that no running device will complete");
        cr_assert_eq(emu_cluster_run(c, barrier_fn, &k), MOEMU_OK, "%s", moemu_errmsg());
    }
    co_free(&k);
    emu_cluster_destroy(c);
}

/* Device 0 sets its message, waits in a barrier while the others run
 * (and device 1 fails with its own), then returns: its message is its
 * own, as in a thread. */
static moemu_status_t own_message_fn(emu_dev_t *dev, void *arg)
{
    co_t *k = arg;
    int r = emu_dev_rank(dev);
    if (r == 0) moemu_fail(MOEMU_ERR_FORMAT, "its own reason, before the barrier");
    MOEMU_CHECK(par_barrier(k->w, dev));
    if (r == 1) return moemu_fail(MOEMU_ERR_FORMAT, "the reason of device 1");
    return r == 0 ? MOEMU_ERR_FORMAT : MOEMU_OK;
}

Test(coroutines, each_device_keeps_its_message)
{
    for (int threads = 0; threads < 2; threads++) {
        emu_cluster_opts_t o = {.nodata = true, .threads = threads};
        emu_cluster_t *c;
        cr_assert_eq(emu_cluster_create(&spec, &topo4, ND_P, &o, &c), MOEMU_OK);
        co_t k;
        co_make(c, &k);
        cr_assert_eq(emu_cluster_run(c, own_message_fn, &k), MOEMU_ERR_FORMAT);
        cr_assert_str_eq(moemu_errmsg(), "device 0: its own reason, before the barrier");
        co_free(&k);
        emu_cluster_destroy(c);
    }
}

/* Where each device runs, in which order it starts, and a megabyte on
 * its stack (as much as a thread's takes). */
static moemu_status_t where_fn(emu_dev_t *dev, void *arg)
{
    co_t *k = arg;
    int r = emu_dev_rank(dev);
    k->on_caller[r] = pthread_equal(pthread_self(), k->caller);
    k->order[atomic_fetch_add(&k->started, 1)] = r;
    volatile char big[1 << 20];
    big[0] = (char)r;
    big[sizeof big - 1] = (char)r;
    MOEMU_CHECK(par_barrier(k->w, dev));
    return big[0] == big[sizeof big - 1] ? MOEMU_OK : MOEMU_ERR_INTERNAL;
}

/* A no-data cluster runs its devices on the caller's thread, starting in
 * rank order; with opts.threads, or MOEMU_DRY_THREADS=1, on threads of
 * their own. */
Test(coroutines, on_the_callers_thread_in_rank_order)
{
    for (int mode = 0; mode < 3; mode++) {
        emu_cluster_opts_t o = {.nodata = true, .threads = mode == 1};
        if (mode == 2) setenv("MOEMU_DRY_THREADS", "1", 1);
        emu_cluster_t *c;
        cr_assert_eq(emu_cluster_create(&spec, &topo4, ND_P, &o, &c), MOEMU_OK);
        unsetenv("MOEMU_DRY_THREADS");
        co_t k;
        co_make(c, &k);
        for (int run = 0; run < 2; run++) { /* the stacks serve again */
            atomic_store(&k.started, 0);
            cr_assert_eq(emu_cluster_run(c, where_fn, &k), MOEMU_OK, "%s", moemu_errmsg());
            for (int r = 0; r < ND_P; r++) {
                cr_assert_eq(k.on_caller[r], mode == 0, "mode %d device %d", mode, r);
                if (mode == 0) cr_assert_eq(k.order[r], r);
            }
        }
        co_free(&k);
        emu_cluster_destroy(c);
    }
}

/* ---- the transport seam: a transport that copies every view (as one
 * between processes must) and shuffles the host timing of meetings and
 * deliveries gives the same bits and the same virtual times as shm */

enum { TC_CREATE, TC_GATHER, TC_OPEN, TC_CLOSE, TC_POST, TC_TAKE, TC__COUNT };
static _Atomic long tc_calls[TC__COUNT];

typedef struct {
    void *shm; /* the wrapped transport's state */
    int n;
    const void **src; /* n x n: shm's views, member r's in row r */
    void **dst, **stage_dst; /* n x n: shm's and ours */
    char **stage;     /* n: member r's copies, from open to close */
    uint64_t *rng;    /* n: member r's delays */
} tc_t;

/* Up to 200 us of host time; never virtual time. */
static void tc_delay(tc_t *t, int r)
{
    usleep((useconds_t)(rng_next(&t->rng[r]) % 200));
}

static void tc_destroy(void *ts)
{
    tc_t *t = ts;
    if (!t) return;
    par_shm_transport.destroy(t->shm);
    free(t->src);
    free(t->dst);
    free(t->stage_dst);
    free(t->stage);
    free(t->rng);
    free(t);
}

static moemu_status_t tc_create(par_comm_t *c, void **ts)
{
    tc_calls[TC_CREATE]++;
    tc_t *t = calloc(1, sizeof *t);
    size_t n = (size_t)c->n;
    t->n = c->n;
    t->src = calloc(n * n, sizeof *t->src);
    t->dst = calloc(n * n, sizeof *t->dst);
    t->stage_dst = calloc(n * n, sizeof *t->stage_dst);
    t->stage = calloc(n, sizeof *t->stage);
    t->rng = calloc(n, sizeof *t->rng);
    for (size_t r = 0; r < n; r++) t->rng[r] = 0x5EA11 + r;
    *ts = t;
    return par_shm_transport.create(c, &t->shm);
}

static moemu_status_t tc_gather(void *ts, par_comm_t *c, int r,
                                const par_slot_t *mine)
{
    tc_calls[TC_GATHER]++;
    tc_delay(ts, r);
    return par_shm_transport.gather(((tc_t *)ts)->shm, c, r, mine);
}

/* Copy what r reads from others; hand out our own buffers for what it
 * writes to others. Its own buffers stay local. */
static moemu_status_t tc_open(void *ts, par_comm_t *c, int r, const void **src,
                              void **dst)
{
    tc_calls[TC_OPEN]++;
    tc_t *t = ts;
    const void **s = t->src + (size_t)r * t->n;
    void **d = t->dst + (size_t)r * t->n, **sd = t->stage_dst + (size_t)r * t->n;
    MOEMU_CHECK(par_shm_transport.open(t->shm, c, r, s, d));
    size_t total = 0;
    par_pair_t pp;
    for (int q = 0; q < t->n; q++) {
        par_plan(c, r, q, &pp);
        total += pp.get.n + pp.put.n;
    }
    char *buf = t->stage[r] = malloc(total * PAR_ELEM + 1);
    if (!buf) return moemu_fail(MOEMU_ERR_NOMEM, "tc_open");
    for (int q = 0; q < t->n; q++) {
        par_plan(c, r, q, &pp);
        src[q] = s[q], dst[q] = sd[q] = d[q];
        if (q == r) continue;
        if (pp.get.n) src[q] = memcpy(buf, s[q], pp.get.n * PAR_ELEM);
        buf += pp.get.n * PAR_ELEM;
        if (pp.put.n) dst[q] = sd[q] = buf;
        buf += pp.put.n * PAR_ELEM;
    }
    return MOEMU_OK;
}

/* Deliver r's writes to others, last member first, then meet. */
static void tc_close(void *ts, par_comm_t *c, int r)
{
    tc_calls[TC_CLOSE]++;
    tc_t *t = ts;
    for (int q = t->n - 1; t->stage[r] && q >= 0; q--) {
        size_t i = (size_t)r * t->n + q;
        par_pair_t pp;
        par_plan(c, r, q, &pp);
        if (q != r && pp.put.n)
            memcpy(t->dst[i], t->stage_dst[i], pp.put.n * PAR_ELEM);
    }
    free(t->stage[r]);
    t->stage[r] = NULL;
    tc_delay(t, r);
    par_shm_transport.close(t->shm, c, r);
}

static moemu_status_t tc_post(void *ts, par_comm_t *c, int r, int peer,
                              par_msg_t *m)
{
    tc_calls[TC_POST]++;
    tc_delay(ts, r);
    return par_shm_transport.post(((tc_t *)ts)->shm, c, r, peer, m);
}

static moemu_status_t tc_take(void *ts, par_comm_t *c, int r, int peer,
                              par_msg_t **out)
{
    tc_calls[TC_TAKE]++;
    moemu_status_t st = par_shm_transport.take(((tc_t *)ts)->shm, c, r, peer, out);
    tc_delay(ts, r);
    return st;
}

static const par_transport_t tc_transport = {
    .name = "test-copy", .create = tc_create, .destroy = tc_destroy,
    .gather = tc_gather, .open = tc_open, .close = tc_close,
    .post = tc_post, .take = tc_take};

enum { TC_CASES = 5 };

typedef struct {
    emu_cluster_t *cl;
    par_comm_t *w, *sub;
    case_t k[TC_CASES];
} tc_run_t;

static moemu_status_t tc_job_fn(emu_dev_t *dev, void *arg)
{
    int r = emu_dev_rank(dev);
    stagger(dev, (r * 3) % 5); /* different clocks at every collective */
    return job_fn(dev, arg);
}

/* Every collective, on the world and on a sub-communicator (every other
 * device, in reverse), with transport. */
static void tc_run(tc_run_t *x, int p, const char *transport)
{
    x->cl = make_cluster(p, &topo4);
    cr_assert_eq(par_comm_create_world(x->cl, &x->w), MOEMU_OK);
    cr_assert_eq(par_comm_set_transport(x->w, transport), MOEMU_OK, "%s",
                 moemu_errmsg());
    par_comm_set_stream_bytes(x->w, p % 2 ? 0 : PAR_STREAM_BYTES_DEFAULT);
    int ranks[8], ns = 0;
    for (int r = p - 1; r >= 0; r -= 2) ranks[ns++] = r;
    cr_assert_eq(par_comm_create_sub(x->w, ranks, ns, &x->sub), MOEMU_OK);
    cr_assert_str_eq(par_comm_transport(x->sub), transport);
    case_init(&x->k[0], x->w, 257, EMU_DTYPE_FP32, false, 41);
    case_init(&x->k[1], x->w, 13, EMU_DTYPE_BF16, true, 42);
    case_init(&x->k[2], x->w, 1003, EMU_DTYPE_INT32, false, 43);
    case_init(&x->k[3], x->w, 0, EMU_DTYPE_FP32, false, 44);
    case_init(&x->k[4], x->sub, 100, EMU_DTYPE_FP16, false, 45);
    for (int i = 0; i < TC_CASES; i++) case_clear_outputs(&x->k[i]);
    job_t j = {TC_CASES, x->k};
    cr_assert_eq(emu_cluster_run(x->cl, tc_job_fn, &j), MOEMU_OK, "p=%d %s: %s",
                 p, transport, moemu_errmsg());
    for (int i = 0; i < TC_CASES; i++) case_check(&x->k[i]);
}

static void tc_free(tc_run_t *x)
{
    for (int i = 0; i < TC_CASES; i++) case_free(&x->k[i]);
    par_comm_destroy(x->sub);
    par_comm_destroy(x->w);
    emu_cluster_destroy(x->cl);
}

#define TC_SAME(x, y, what)                                                    \
    cr_assert((x) == (y), "p=%d device %d %s: %.17g with shm, %.17g with the " \
              "copying transport", p, d, what, (double)(x), (double)(y))

/* Every buffer, clock and counter of a and b are the same bits. */
static void tc_compare(const tc_run_t *a, const tc_run_t *b, int p)
{
    for (int i = 0; i < TC_CASES; i++)
        for (int bk = B_AR; bk < B__COUNT; bk++)
            for (int r = 0; r < a->k[i].p; r++)
                cr_assert_eq(memcmp(a->k[i].buf[bk][r], b->k[i].buf[bk][r],
                                    (buf_len(&a->k[i], bk) + 1) * 4), 0,
                             "p=%d case %d buffer %d rank %d differs", p, i, bk, r);
    for (int d = 0; d < p; d++) {
        emu_dev_t *da = emu_cluster_dev(a->cl, d), *db = emu_cluster_dev(b->cl, d);
        TC_SAME(emu_dev_clock(da), emu_dev_clock(db), "clock");
        for (int k = 0; k < EMU_COLL__COUNT; k++)
            for (int l = 0; l < EMU_LINK__COUNT; l++) {
                const emu_comm_stats_t *x = emu_dev_comm_stats(da, k, l),
                                       *y = emu_dev_comm_stats(db, k, l);
                TC_SAME(x->calls, y->calls, emu_coll_name(k));
                TC_SAME(x->bytes, y->bytes, emu_coll_name(k));
                TC_SAME(x->time, y->time, emu_coll_name(k));
                TC_SAME(x->idle, y->idle, emu_coll_name(k));
            }
    }
}

Test(transport, copying_transport_same_bits_and_times)
{
    cr_assert_eq(par_transport_register(&tc_transport), MOEMU_OK);
    cr_assert_eq(par_transport_find("test-copy"), &tc_transport);
    cr_assert_eq(par_transport_find("shm"), &par_shm_transport);
    for (int p = 1; p <= 8; p++) {
        tc_run_t a, b;
        memset(tc_calls, 0, sizeof tc_calls);
        tc_run(&a, p, "shm");
        cr_assert_eq(tc_calls[TC_GATHER], 0);
        tc_run(&b, p, "test-copy");
        tc_compare(&a, &b, p);
        /* per member and case: 10 meetings, 9 of them moving data, and 2
         * messages; the world and the sub-communicator made a state each */
        long ns = (p + 1) / 2, members = 4L * p + ns;
        cr_assert_eq(tc_calls[TC_CREATE], 2);
        cr_assert_eq(tc_calls[TC_GATHER], 10 * members);
        cr_assert_eq(tc_calls[TC_CLOSE], 10 * members);
        cr_assert_eq(tc_calls[TC_OPEN], 9 * members);
        cr_assert_eq(tc_calls[TC_POST], 2 * members);
        cr_assert_eq(tc_calls[TC_TAKE], 2 * members);
        tc_free(&a);
        tc_free(&b);
    }
}

/* Communicators take the default transport, sub-communicators their
 * parent's; unknown names are refused. */
Test(transport, choosing_by_name)
{
    emu_cluster_t *c = make_cluster(4, &topo4);
    par_comm_t *w, *x, *sub;
    cr_assert_eq(par_comm_create_world(c, &w), MOEMU_OK);
    cr_assert_str_eq(par_comm_transport(w), "shm");
    cr_assert_eq(par_comm_set_transport(w, "carrier-pigeon"), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "carrier-pigeon"), "%s", moemu_errmsg());
    cr_assert_str_eq(par_comm_transport(w), "shm");
    cr_assert_eq(par_transport_set_default("test-copy"), MOEMU_ERR_INVALID);
    cr_assert_eq(par_transport_register(&tc_transport), MOEMU_OK);
    cr_assert_eq(par_transport_set_default("test-copy"), MOEMU_OK);
    cr_assert_eq(par_comm_create(c, (int[]){3, 1}, 2, &x), MOEMU_OK);
    cr_assert_str_eq(par_comm_transport(x), "test-copy");
    cr_assert_eq(par_comm_create_sub(w, (int[]){2, 0}, 2, &sub), MOEMU_OK);
    cr_assert_str_eq(par_comm_transport(sub), "shm");
    cr_assert_eq(par_transport_set_default("shm"), MOEMU_OK);
    par_comm_destroy(sub);
    par_comm_destroy(x);
    par_comm_destroy(w);
    emu_cluster_destroy(c);
}
