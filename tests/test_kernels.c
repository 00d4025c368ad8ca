/* The fast kernels of layers/layers.h against the double-precision
 * reference of layers/layers_ref.h, on seeded random data and odd shapes;
 * exact expectations where the semantics are exact (router ties, capacity,
 * argmax, copies); the device charges of every kernel; dry runs
 * (math = false) that touch no tensor and charge the same.
 *
 * Tolerance: for a float result y against the double reference r, each
 * element's error is |y - r| / (|r| + rms(r)): relative for the large
 * elements, relative to the tensor's scale for those near zero (a dot
 * product's rounding error scales with its terms, not with its value).
 * The bound grows with the reduction length: 1e-5 up to a few hundred
 * terms, 3e-5 to 1e-4 for thousands. With `--verbose` each case logs its
 * worst element; a failure prints it. */
#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/logging.h>

#include "layers/layers.h"
#include "layers/layers_ref.h"

/* ---- Seeded random data (splitmix64). */
typedef struct {
    uint64_t s;
} rng_t;

static uint64_t rng_next(rng_t *r)
{
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-a, a). */
static float rng_sym(rng_t *r, float a)
{
    return (float)(((double)(rng_next(r) >> 11) / 9007199254740992.0) * 2 - 1) *
           a;
}

static void fill(rng_t *r, float *x, size_t n, float a)
{
    for (size_t i = 0; i < n; i++) x[i] = rng_sym(r, a);
}

static void fill_const(float *x, size_t n, float v)
{
    for (size_t i = 0; i < n; i++) x[i] = v;
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    cr_assert(p, "out of host memory (%zu bytes)", n);
    return p;
}

#define NEW(type, n) ((type *)xmalloc(sizeof(type) * (size_t)(n)))

static const float SENTINEL = -12345.678f;

/* ---- A standalone device and the context of the fast kernels. */
static emu_dev_t *dev_new(void)
{
    emu_spec_t spec = {.peak_flops = 989e12, .mfu = 0.5, .mem_bw = 3.35e12,
                       .bw_util = 0.8, .mem_capacity = 80e9, .launch_s = 5e-6};
    emu_dev_t *dev = NULL;
    cr_assert_eq(emu_dev_create(&spec, 0, true, &dev), MOEMU_OK);
    return dev;
}

static layer_ctx_t ctx_of(emu_dev_t *dev, bool math)
{
    return (layer_ctx_t){.dev = dev, .dtype = EMU_DTYPE_FP16, .math = math};
}

/* Totals over every kernel kind. */
static emu_kernel_stats_t dev_total(const emu_dev_t *dev)
{
    emu_kernel_stats_t t = {0};
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) {
        const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, k);
        t.flops += s->flops;
        t.bytes += s->bytes;
        t.time += s->time;
        t.launches += s->launches;
    }
    return t;
}

/* Two devices charged the same, kind by kind (dry run vs real run). */
static void assert_same_charges(const emu_dev_t *a, const emu_dev_t *b,
                                const char *what)
{
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) {
        const emu_kernel_stats_t *x = emu_dev_kernel_stats(a, k);
        const emu_kernel_stats_t *y = emu_dev_kernel_stats(b, k);
        cr_assert(x->flops == y->flops && x->bytes == y->bytes &&
                      x->launches == y->launches && x->time == y->time,
                  "%s: math=true charged %s flops %.17g bytes %.17g launches "
                  "%llu, math=false flops %.17g bytes %.17g launches %llu",
                  what, emu_kernel_name(k), x->flops, x->bytes,
                  (unsigned long long)x->launches, y->flops, y->bytes,
                  (unsigned long long)y->launches);
    }
    cr_assert(emu_dev_clock(a) == emu_dev_clock(b),
              "%s: clocks differ: %.17g vs %.17g", what, emu_dev_clock(a),
              emu_dev_clock(b));
}

static void assert_untouched(const float *x, size_t n, float v,
                             const char *what)
{
    for (size_t i = 0; i < n; i++)
        cr_assert(memcmp(&x[i], &v, sizeof v) == 0,
                  "%s: math=false wrote element %zu (%.9g)", what, i, x[i]);
}

/* ---- Comparison with the reference; returns the worst error. */
static double check_close(const char *what, const float *got,
                          const double *ref, size_t n, double tol)
{
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += ref[i] * ref[i];
    double rms = n ? sqrt(ss / (double)n) : 0;
    double worst = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        double den = fabs(ref[i]) + rms;
        double e;
        if (isnan(got[i]) || isinf(got[i])) e = INFINITY;
        else if (den == 0) e = d == 0 ? 0 : INFINITY;
        else e = d / den;
        if (e > worst) worst = e, wi = i;
    }
    cr_log_info("%s: worst error %.3g (tol %.3g) at [%zu]", what, worst, tol,
                wi);
    if (!(worst <= tol))
        cr_assert_fail("%s: worst error %.3g > tol %.3g at element %zu: got "
                       "%.9g, reference %.12g (rms of reference %.6g)",
                       what, worst, tol, wi, n ? got[wi] : 0.0,
                       n ? ref[wi] : 0.0, rms);
    return worst;
}

static double *to_double(const float *x, size_t n)
{
    double *d = NEW(double, n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}

/* ======================================================================
 * Self-checks of the reference on hand-computed values. */

Test(reference, hand_values)
{
    /* linear: [1 2; 3 4] @ [[1 0],[0 1],[1 1]]^T with ldw 3 */
    float in[4] = {1, 2, 3, 4};
    float w[9] = {1, 0, 99, 0, 1, 99, 1, 1, 99};
    double out[6];
    ref_linear(out, in, w, 2, 2, 3, 3, false);
    double want[6] = {1, 2, 3, 3, 4, 7};
    for (int i = 0; i < 6; i++) cr_assert_eq(out[i], want[i]);

    /* rmsnorm of a constant vector is w (eps 0) */
    float c[4] = {3, 3, 3, 3}, g[4] = {1, 2, 3, 4};
    double n[4];
    ref_rmsnorm(n, c, g, 1, 4, 0);
    for (int i = 0; i < 4; i++) cr_assert_float_eq(n[i], (double)g[i], 1e-15);

    /* rope at position 0 is the identity */
    float x[4] = {1, 2, 3, 4};
    double r[4];
    int p0 = 0;
    layer_rope_t plain = {.theta = 10000};
    ref_rope(r, x, &p0, 1, 1, 4, &plain);
    for (int i = 0; i < 4; i++) cr_assert_eq(r[i], (double)x[i]);
    /* hd = 2 at position 1: a rotation by 1 radian of (x0, x1) */
    int p1 = 1;
    ref_rope(r, x, &p1, 1, 1, 2, &plain);
    cr_assert_float_eq(r[0], (double)(float)cos(1.0) * 1 -
                                 (double)(float)sin(1.0) * 2, 1e-15);

    /* one visible key: out = v, lse = score */
    float q[2] = {1, 2}, k[2] = {3, 4}, v[2] = {5, 6};
    double o[2], l;
    ref_attention(o, &l, q, k, v, 1, 0, 0, 1, 1, 1, 2, 1);
    cr_assert_eq(o[0], 5);
    cr_assert_eq(o[1], 6);
    cr_assert_float_eq(l, 11 / sqrt(2.0), 1e-15);

    /* the fp32 rounding of the rope angle matters at large positions, so
     * a test at such positions tells the rule from a double angle */
    float a, cf, sf;
    ref_rope_angle(&a, &cf, &sf, 100003, 1, 64, 10000);
    double exact = 100003 * pow(10000, -2.0 / 64);
    cr_assert(fabs(cos(exact) - cf) > 1e-4,
              "the fp32 angle should move cos by more than 1e-4 here");

    cr_assert_eq(ref_capacity(1.1, 10, 2, 22), 1);
    cr_assert_eq(ref_capacity(1.2, 100, 2, 16), 15);
    cr_assert_eq(ref_capacity(0.3, 10, 1, 3), 1);
    cr_assert_eq(ref_capacity(0, 10, 1, 3), INT64_MAX);
    cr_assert_eq(ref_attention_pairs(3, 0, 0, 3, 0), 6);
    cr_assert_eq(ref_attention_pairs(7, 10, 13, 20, 0), 10);
}

Test(reference, attention_merge_is_whole)
{
    rng_t r = {7};
    int T = 9, q0 = 4, k0 = 0, k1 = 13, H = 2, Hkv = 1, hd = 4, m = 8;
    float *q = NEW(float, T * H * hd), *k = NEW(float, k1 * hd),
          *v = NEW(float, k1 * hd);
    fill(&r, q, T * H * hd, 2), fill(&r, k, k1 * hd, 1), fill(&r, v, k1 * hd, 1);
    double o[72], l[18], o1[72], l1[18], o2[72], l2[18];
    ref_attention(o, l, q, k, v, T, q0, k0, k1, H, Hkv, hd, k1);
    ref_attention(o1, l1, q, k, v, T, q0, k0, m, H, Hkv, hd, k1);
    ref_attention(o2, l2, q, k + m * hd, v + m * hd, T, q0, m, k1, H, Hkv, hd,
                  k1);
    for (int i = 0; i < T * H; i++) {
        double L = fmax(l1[i], l2[i]);
        double a = exp(l1[i] - L), b = exp(l2[i] - L);
        cr_assert_float_eq(L + log(a + b), l[i], 1e-12);
        for (int j = 0; j < hd; j++)
            cr_assert_float_eq((a * o1[i * hd + j] + b * o2[i * hd + j]) /
                                   (a + b),
                               o[i * hd + j], 1e-12);
    }
    free(q), free(k), free(v);
}

/* ======================================================================
 * linear */

typedef struct {
    int T, n_in, n_out, ldw;
    bool acc;
    double tol;
} linear_case_t;

static const linear_case_t linear_cases[] = {
    {1, 1, 1, 1, false, 1e-6},       {1, 33, 17, 33, false, 1e-5},
    {7, 33, 17, 33, false, 1e-5},    {7, 33, 17, 50, false, 1e-5},
    {7, 33, 17, 50, true, 1e-5},     {300, 64, 96, 64, false, 1e-5},
    {300, 64, 96, 129, true, 1e-5},  {5, 2048, 33, 2100, true, 3e-5},
    {1, 4096, 7, 4096, false, 1e-4}, {64, 256, 512, 256, false, 1e-5},
};

Test(linear, matches_reference_and_charges)
{
    rng_t r = {1};
    for (size_t ci = 0; ci < sizeof linear_cases / sizeof *linear_cases; ci++) {
        const linear_case_t *lc = &linear_cases[ci];
        int T = lc->T, n_in = lc->n_in, n_out = lc->n_out, ldw = lc->ldw;
        char what[128];
        snprintf(what, sizeof what, "linear T=%d n_in=%d n_out=%d ldw=%d acc=%d",
                 T, n_in, n_out, ldw, lc->acc);
        float *in = NEW(float, T * n_in), *w = NEW(float, n_out * ldw),
              *out = NEW(float, T * n_out);
        fill(&r, in, (size_t)T * n_in, 1);
        /* the columns beyond n_in belong to other slices: NaN, never read */
        for (int o = 0; o < n_out; o++)
            for (int i = 0; i < ldw; i++)
                w[(size_t)o * ldw + i] = i < n_in ? rng_sym(&r, 1) : NAN;
        fill(&r, out, (size_t)T * n_out, 1);
        double *ref = to_double(out, (size_t)T * n_out);
        ref_linear(ref, in, w, T, n_in, n_out, ldw, lc->acc);

        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        emu_kernel_t kind = ci % 2 ? EMU_KERNEL_EXPERT : EMU_KERNEL_GEMM;
        layer_linear(&c, kind, out, in, w, T, n_in, n_out, ldw, lc->acc);
        check_close(what, out, ref, (size_t)T * n_out, lc->tol);

        const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, kind);
        layer_work_t wk = layer_linear_work(T, n_in, n_out, EMU_DTYPE_FP16);
        double flops = 2.0 * T * n_in * n_out;
        cr_assert(s->flops == flops, "%s: charged %.17g flops to %s, want "
                  "2*T*n_in*n_out = %.17g", what, s->flops,
                  emu_kernel_name(kind), flops);
        cr_assert(wk.flops == flops, "%s: layer_linear_work flops %.17g, "
                  "want %.17g", what, wk.flops, flops);
        /* layer_linear_work has no accumulate flag: an accumulating call
         * may also count reading out (T, n_out) */
        double acc_bytes = lc->acc ? (double)T * n_out * 2 : 0;
        cr_assert(s->bytes == wk.bytes || s->bytes == wk.bytes + acc_bytes,
                  "%s: charged %.17g bytes, layer_linear_work says %.17g "
                  "(+ %.17g to read out when accumulating)", what, s->bytes,
                  wk.bytes, acc_bytes);
        if (lc->acc && s->bytes != wk.bytes)
            cr_log_info("%s: charged %.17g bytes, layer_linear_work says "
                        "%.17g", what, s->bytes, wk.bytes);
        cr_assert(s->bytes >= 2.0 * n_in * n_out, "%s: %.17g bytes is less "
                  "than the fp16 weights (%d x %d)", what, s->bytes, n_out, n_in);
        cr_assert_eq(s->launches, 1, "%s: %llu launches", what,
                     (unsigned long long)s->launches);
        emu_kernel_stats_t tot = dev_total(dev);
        cr_assert(tot.flops == flops && tot.bytes == s->bytes,
                  "%s: charges outside kind %s", what, emu_kernel_name(kind));
        layer_work_t w32 = layer_linear_work(T, n_in, n_out, EMU_DTYPE_FP32);
        cr_assert(w32.bytes > wk.bytes, "%s: fp32 bytes %.17g not above fp16 "
                  "bytes %.17g", what, w32.bytes, wk.bytes);
        emu_dev_destroy(dev);
        free(in), free(w), free(out), free(ref);
    }
}

/* ======================================================================
 * embed, rmsnorm, rope, add */

/* More threads in the products at once than OpenBLAS serves (its
 * MAX_THREADS, one buffer each; past twice that it crashed): the gate
 * lets in emu_blas_callers() at a time, and every thread's product is the
 * same bits as one thread's alone. */
enum { MANY = 200, MT = 128, MK = 512, MN = 512 };

typedef struct {
    const float *in, *w;
    float *out;
    pthread_barrier_t *start;
} many_t;

static void *many_linear(void *arg)
{
    many_t *m = arg;
    emu_spec_t spec = {.peak_flops = 1e14, .mfu = 0.5, .mem_bw = 1e12, .bw_util = 0.8,
                       .mem_capacity = 1e9, .launch_s = 1e-6};
    emu_dev_t *dev = NULL;
    if (emu_dev_create(&spec, 0, true, &dev) != MOEMU_OK) return NULL;
    layer_ctx_t c = {.dev = dev, .dtype = EMU_DTYPE_FP16, .math = true};
    pthread_barrier_wait(m->start);
    for (int i = 0; i < 4; i++)
        layer_linear(&c, EMU_KERNEL_GEMM, m->out, m->in, m->w, MT, MK, MN, MK, false);
    emu_dev_destroy(dev);
    return NULL;
}

Test(linear, more_threads_than_blas_serves)
{
    rng_t r = {41};
    float *in = NEW(float, MT * MK), *w = NEW(float, MN * MK), *want = NEW(float, MT * MN);
    float *out = NEW(float, (size_t)MANY * MT * MN);
    fill(&r, in, MT * MK, 1.0f);
    fill(&r, w, MN * MK, 1.0f);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_linear(&c, EMU_KERNEL_GEMM, want, in, w, MT, MK, MN, MK, false);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, MANY);
    pthread_t th[MANY];
    many_t m[MANY];
    for (int i = 0; i < MANY; i++) {
        m[i] = (many_t){in, w, out + (size_t)i * MT * MN, &start};
        cr_assert_eq(pthread_create(&th[i], NULL, many_linear, &m[i]), 0);
    }
    for (int i = 0; i < MANY; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    cr_expect_leq(emu_blas_most(), emu_blas_callers());
    for (int i = 0; i < MANY; i++)
        cr_assert_eq(memcmp(out + (size_t)i * MT * MN, want, sizeof(float) * MT * MN), 0,
                     "thread %d's product differs", i);
    emu_dev_destroy(dev);
    free(in);
    free(w);
    free(want);
    free(out);
}

/* Products of at most 8 rows (decode) sum in an order fixed by K alone,
 * whatever the host's vector width or threads (layers/skinny.c): with the
 * weights as (n_out, n_in), k padded with zeros to a multiple of 64 and
 * summed by fmaf in lane k mod 64, the lanes then halved in place; with
 * them as (n_in, n_out), k in order. Written out here from that
 * definition, and compared bit for bit. */
static float skinny_dot(const float *a, const float *w, int K)
{
    float s[64] = {0};
    for (int k = 0; k < (K + 63) / 64 * 64; k++)
        s[k % 64] = k < K ? fmaf(a[k], w[k], s[k % 64]) : fmaf(0.0f, 0.0f, s[k % 64]);
    for (int h = 32; h > 0; h /= 2)
        for (int u = 0; u < h; u++) s[u] += s[u + h];
    return s[0];
}

typedef struct {
    int T, K, N;
    const float *in, *w;
    float *out;
} skinny_t;

static void *skinny_run(void *arg)
{
    skinny_t *k = arg;
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_linear(&c, EMU_KERNEL_GEMM, k->out, k->in, k->w, k->T, k->K, k->N, k->K, false);
    emu_dev_destroy(dev);
    return NULL;
}

Test(linear, few_rows_sum_in_a_fixed_order)
{
    static const int Ts[] = {1, 3, 8}, Ks[] = {1, 17, 64, 100, 512, 1000}, Ns[] = {1, 5, 70};
    rng_t r = {77};
    int blas = openblas_get_num_threads();
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t ki = 0; ki < 6; ki++)
            for (size_t ni = 0; ni < 3; ni++) {
                int T = Ts[ti], K = Ks[ki], N = Ns[ni];
                float *in = NEW(float, T * K), *w = NEW(float, N * K), *out = NEW(float, T * N);
                float *wt = NEW(float, N * K), *gout = NEW(float, T * N);
                fill(&r, in, (size_t)T * K, 1);
                fill(&r, w, (size_t)N * K, 1);
                skinny_run(&(skinny_t){T, K, N, in, w, out});
                for (int t = 0; t < T; t++)
                    for (int n = 0; n < N; n++) {
                        float want = skinny_dot(in + (size_t)t * K, w + (size_t)n * K, K);
                        cr_assert(memcmp(&out[t * N + n], &want, 4) == 0,
                                  "T=%d K=%d N=%d: out[%d][%d] = %a, the order gives %a", T, K,
                                  N, t, n, out[t * N + n], want);
                    }
                /* the same weights as (K, N): k in order */
                for (int n = 0; n < N; n++)
                    for (int k = 0; k < K; k++) wt[(size_t)k * N + n] = w[(size_t)n * K + k];
                emu_dev_t *dev = dev_new();
                layer_ctx_t c = ctx_of(dev, true);
                layer_gemm_t g = {.out = gout, .in = in, .w = wt, .ldo = N, .ldi = K, .ldw = N};
                layer_gemm(&c, &g, 1, T, K, N, false);
                emu_dev_destroy(dev);
                for (int t = 0; t < T; t++)
                    for (int n = 0; n < N; n++) {
                        float want = 0.0f;
                        for (int k = 0; k < K; k++)
                            want = fmaf(in[(size_t)t * K + k], w[(size_t)n * K + k], want);
                        cr_assert(memcmp(&gout[t * N + n], &want, 4) == 0,
                                  "(K, N) T=%d K=%d N=%d: out[%d][%d] = %a, the order gives %a",
                                  T, K, N, t, n, gout[t * N + n], want);
                    }
                free(in), free(w), free(out), free(wt), free(gout);
            }
    /* large enough to share with the helper threads, from several callers
     * at once (one shares, the others work alone): the same bits */
    enum { CALLERS = 4, BT = 2, BK = 512, BN = 1536 };
    float *in = NEW(float, BT * BK), *w = NEW(float, BN * BK), *want = NEW(float, BT * BN);
    float *out = NEW(float, CALLERS * BT * BN);
    fill(&r, in, BT * BK, 1);
    fill(&r, w, (size_t)BN * BK, 1);
    openblas_set_num_threads(1);
    skinny_run(&(skinny_t){BT, BK, BN, in, w, want});
    openblas_set_num_threads(2);
    pthread_t th[CALLERS];
    skinny_t k[CALLERS];
    for (int i = 0; i < CALLERS; i++) {
        k[i] = (skinny_t){BT, BK, BN, in, w, out + (size_t)i * BT * BN};
        cr_assert_eq(pthread_create(&th[i], NULL, skinny_run, &k[i]), 0);
    }
    for (int i = 0; i < CALLERS; i++) pthread_join(th[i], NULL);
    openblas_set_num_threads(blas);
    for (int i = 0; i < CALLERS; i++)
        cr_assert_eq(memcmp(out + (size_t)i * BT * BN, want, sizeof(float) * BT * BN), 0,
                     "caller %d's product differs from one thread's", i);
    free(in), free(w), free(want), free(out);
}

Test(embed, copies_rows_and_charges)
{
    rng_t r = {2};
    int V = 50, d = 33, T = 7;
    int tok[7] = {0, 49, 3, 3, 17, 0, 48};
    float *emb = NEW(float, V * d), *out = NEW(float, T * d),
          *ref = NEW(float, T * d);
    fill(&r, emb, (size_t)V * d, 1);
    ref_embed(ref, tok, emb, T, d);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_embed(&c, out, tok, emb, T, d);
    cr_assert(memcmp(out, ref, sizeof(float) * T * d) == 0,
              "embed: rows differ from emb[tok]");
    const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, EMU_KERNEL_EMBED);
    cr_assert(s->bytes > 0 && s->launches >= 1,
              "embed: charged %.17g bytes, %llu launches to embed", s->bytes,
              (unsigned long long)s->launches);
    emu_dev_destroy(dev);
    free(emb), free(out), free(ref);
}

typedef struct {
    int T, d;
    float eps;
    bool inplace;
    double tol;
} norm_case_t;

Test(rmsnorm, matches_reference_and_charges)
{
    static const norm_case_t cases[] = {
        {1, 1, 1e-5f, false, 1e-6}, {7, 33, 1e-5f, false, 1e-5},
        {7, 33, 1e-6f, true, 1e-5}, {3, 4096, 1e-5f, false, 3e-5},
        {300, 64, 1e-6f, true, 1e-5},
    };
    rng_t r = {3};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const norm_case_t *nc = &cases[ci];
        int T = nc->T, d = nc->d;
        char what[96];
        snprintf(what, sizeof what, "rmsnorm T=%d d=%d eps=%g inplace=%d", T,
                 d, nc->eps, nc->inplace);
        float *in = NEW(float, T * d), *w = NEW(float, d),
              *out = NEW(float, T * d);
        fill(&r, in, (size_t)T * d, 2);
        fill(&r, w, d, 1.5f);
        double *ref = NEW(double, T * d);
        ref_rmsnorm(ref, in, w, T, d, nc->eps);
        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        float *dst = nc->inplace ? in : out;
        layer_rmsnorm(&c, dst, in, w, T, d, nc->eps);
        check_close(what, dst, ref, (size_t)T * d, nc->tol);
        const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, EMU_KERNEL_NORM);
        cr_assert(s->flops > 0 && s->bytes > 0, "%s: charged %.17g flops, "
                  "%.17g bytes to norm", what, s->flops, s->bytes);
        emu_dev_destroy(dev);
        free(in), free(w), free(out), free(ref);
    }
}

typedef struct {
    int T, nh, hd, maxpos;
    double theta;
} rope_case_t;

Test(rope, matches_reference_and_charges)
{
    static const rope_case_t cases[] = {
        {1, 1, 2, 10, 10000},       {7, 3, 2, 100, 10000},
        {7, 6, 64, 200000, 10000},  {300, 2, 128, 4096, 1e6},
        {33, 8, 16, 1000000, 5e5},
    };
    rng_t r = {4};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const rope_case_t *rc = &cases[ci];
        int T = rc->T, nh = rc->nh, hd = rc->hd;
        size_t n = (size_t)T * nh * hd;
        char what[96];
        snprintf(what, sizeof what, "rope T=%d nh=%d hd=%d theta=%g", T, nh,
                 hd, rc->theta);
        float *x = NEW(float, n);
        int *pos = NEW(int, T);
        fill(&r, x, n, 2);
        for (int t = 0; t < T; t++)
            pos[t] = (int)(rng_next(&r) % (uint64_t)(rc->maxpos + 1));
        pos[0] = 0;
        if (T > 1) pos[T - 1] = rc->maxpos;
        double *ref = NEW(double, n);
        layer_rope_t rp = {.theta = rc->theta};
        ref_rope(ref, x, pos, T, nh, hd, &rp);
        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        layer_rope(&c, x, pos, T, nh, hd, &rp);
        /* two fp32 products and a sum: a few ulp of the operands */
        check_close(what, x, ref, n, 1e-6);
        const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, EMU_KERNEL_ROPE);
        cr_assert(s->flops > 0 && s->bytes > 0, "%s: charged %.17g flops, "
                  "%.17g bytes to rope", what, s->flops, s->bytes);
        emu_dev_destroy(dev);
        free(x), free(pos), free(ref);
    }
}

/* moemu's RoPE before YaRN, kept verbatim: plain RoPE must not move a bit
 * (the golden runs depend on it). */
static void old_rope(float *x, const int *pos, int T, int nh, int hd,
                     double theta)
{
    int half = hd / 2;
    double inv[half];
    for (int i = 0; i < half; i++) inv[i] = pow(theta, -2.0 * i / hd);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < nh; h++) {
            float *v = x + ((int64_t)t * nh + h) * hd;
            for (int i = 0; i < half; i++) {
                float a = (float)((double)pos[t] * inv[i]);
                float cs = (float)cos((double)a), sn = (float)sin((double)a);
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * cs - x2 * sn;
                v[i + half] = x2 * cs + x1 * sn;
            }
        }
}

Test(rope, plain_bit_identical_to_before)
{
    static const int hds[] = {2, 8, 64, 96, 128};
    static const double thetas[] = {1e4, 5e5, 1e6, 1e7};
    int pos[] = {0, 1, 7, 7, 4095, 32768, 100003, 1000000};
    enum { T = 8, NH = 3 };
    rng_t r = {21};
    for (size_t a = 0; a < sizeof hds / sizeof *hds; a++)
        for (size_t b = 0; b < sizeof thetas / sizeof *thetas; b++) {
            int hd = hds[a];
            size_t n = (size_t)T * NH * hd;
            float *x = NEW(float, n), *y = NEW(float, n);
            fill(&r, x, n, 2);
            memcpy(y, x, sizeof(float) * n);
            emu_dev_t *dev = dev_new();
            layer_ctx_t c = ctx_of(dev, true);
            layer_rope_t rp = {.theta = thetas[b]};
            layer_rope(&c, x, pos, T, NH, hd, &rp);
            old_rope(y, pos, T, NH, hd, thetas[b]);
            cr_assert(memcmp(x, y, sizeof(float) * n) == 0,
                      "hd %d theta %g: plain RoPE moved", hd, thetas[b]);
            const emu_kernel_stats_t *s =
                emu_dev_kernel_stats(dev, EMU_KERNEL_ROPE);
            cr_assert_eq(s->flops, 3.0 * n);
            cr_assert_eq(s->bytes, 2.0 * n * emu_dtype_size(EMU_DTYPE_FP16));
            emu_dev_destroy(dev);
            free(x), free(y);
        }
}

/* YaRN inverse frequencies at a few i, as transformers 4.5x's
 * _compute_yarn_parameters gives them (factor as given), computed apart
 * from moemu: `py` with Python 3, each torch op rounded to fp32 through
 * struct.pack('f') and printed %.9g (exact fp32); `awk` with awk's doubles
 * and no fp32 rounding at all (the formulas only, so ~1e-7 apart). */
typedef struct {
    const char *what;
    int hd;
    double theta, factor, omax, mscale, mscale_all_dim, attention_factor;
    int n, i[10];
    float py[10];
    double awk[10];
} yarn_case_t;

static const yarn_case_t yarn_cases[] = {
    {"DeepSeek-V3 (rope dim 64)", 64, 1e4, 40, 4096, 1, 1, 1.0, 8,
     {0, 5, 10, 11, 16, 22, 23, 31},
     {1, 0.237137362f, 0.0562341288f, 0.0390069261f, 0.00550000044f,
      0.00017782794f, 3.3338034e-05f, 3.33380353e-06f},
     {1, 0.237137371, 0.0562341325, 0.0390069266, 0.0055, 0.000177827941,
      3.33380358e-05, 3.33380358e-06}},
    /* Python: 0.1 * math.log(4) + 1 printed %.17g */
    {"Qwen3 YaRN (hd 128)", 128, 1e6, 4, 32768, 0, 0, 1.1386294361119891, 10,
     {0, 5, 10, 11, 16, 22, 23, 31, 40, 63},
     {1, 0.339820832f, 0.115478203f, 0.0930572003f, 0.0316227786f,
      0.00865964312f, 0.00697830599f, 0.000802959781f, 4.44569851e-05f,
      3.10234441e-07f},
     {1, 0.339820833, 0.115478198, 0.0930572041, 0.0316227766, 0.00865964323,
      0.00697830585, 0.000802959728, 4.44569853e-05, 3.1023444e-07}},
};

Test(rope, yarn_frequencies_and_attention_factor)
{
    for (size_t ci = 0; ci < sizeof yarn_cases / sizeof *yarn_cases; ci++) {
        const yarn_case_t *yc = &yarn_cases[ci];
        layer_rope_t r = {.theta = yc->theta};
        layer_rope_yarn(&r, yc->factor, yc->omax, 0, 0, yc->mscale,
                        yc->mscale_all_dim, true, 0);
        cr_assert(r.beta_fast == 32 && r.beta_slow == 1, "%s", yc->what);
        cr_assert_eq(r.attention_factor, yc->attention_factor,
                     "%s: attention factor %.17g", yc->what,
                     r.attention_factor);
        double inv[64];
        layer_rope_freqs(&r, yc->hd, inv);
        for (int k = 0; k < yc->n; k++) {
            int i = yc->i[k];
            cr_log_info("%s: inv_freq[%d] = %.9g", yc->what, i, inv[i]);
            cr_assert_eq(inv[i], (double)yc->py[k], "%s: inv_freq[%d] %.9g, "
                         "Python's fp32 %.9g", yc->what, i, inv[i], yc->py[k]);
            cr_assert(fabs(inv[i] / yc->awk[k] - 1) < 1e-6,
                      "%s: inv_freq[%d] %.9g, awk's double %.9g", yc->what, i,
                      inv[i], yc->awk[k]);
        }
        for (int i = 0; i < yc->hd / 2; i++)
            cr_assert_eq(inv[i], ref_rope_freq(&r, yc->hd, i), "%s: %d",
                         yc->what, i);
    }
    /* DeepSeek-style equal mscales cancel; one alone is ignored */
    layer_rope_t r = {.theta = 1e4};
    layer_rope_yarn(&r, 40, 4096, 32, 1, 0.707, 0.707, true, 0);
    cr_assert_eq(r.attention_factor, 1.0);
    layer_rope_yarn(&r, 40, 4096, 32, 1, 0.707, 0, true, 0);
    cr_assert_eq(r.attention_factor, 0.1 * log(40) + 1);
    layer_rope_yarn(&r, 40, 4096, 32, 1, 1, 1, true, 0.5);
    cr_assert_eq(r.attention_factor, 0.5);
    layer_rope_yarn(&r, 0.5, 4096, 32, 1, 0, 0, true, 0);
    cr_assert_eq(r.attention_factor, 1.0);
}

/* layer_rope against ref_rope for YaRN, interleaved and partial variants. */
Test(rope, variants_match_reference)
{
    layer_rope_t ds = {.theta = 1e4, .interleave = true};
    layer_rope_yarn(&ds, 40, 4096, 32, 1, 1, 1, true, 0);
    layer_rope_t qw = {.theta = 1e6};
    layer_rope_yarn(&qw, 4, 32768, 0, 0, 0, 0, true, 0);
    layer_rope_t nt = qw; /* untruncated range, partial */
    nt.truncate = false, nt.dim = 64;
    layer_rope_t pp = {.theta = 1e4, .dim = 16, .interleave = true};
    const struct {
        const layer_rope_t *r;
        int hd, maxpos;
    } cases[] = {{&ds, 64, 163840}, {&qw, 128, 131072}, {&nt, 128, 5000},
                 {&pp, 40, 3000}};
    rng_t g = {22};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        int T = 9, nh = 3, hd = cases[ci].hd;
        size_t n = (size_t)T * nh * hd;
        float *x = NEW(float, n);
        double *ref = NEW(double, n);
        int pos[9];
        fill(&g, x, n, 2);
        for (int t = 0; t < T; t++)
            pos[t] = (int)(rng_next(&g) % (uint64_t)(cases[ci].maxpos + 1));
        ref_rope(ref, x, pos, T, nh, hd, cases[ci].r);
        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        layer_rope(&c, x, pos, T, nh, hd, cases[ci].r);
        char what[32];
        snprintf(what, sizeof what, "rope variant %zu", ci);
        check_close(what, x, ref, n, 1e-6);
        emu_dev_destroy(dev);
        free(x), free(ref);
    }
}

/* DeepSeek's apply_rotary_pos_emb_interleave de-interleaves q and k to
 * halves, then rotates half: moemu rotates the pairs in place instead, the
 * same numbers in the interleaved order, so q.k is unchanged. */
Test(rope, interleaved_pairs_are_halves_permuted)
{
    enum { T = 5, NH = 2, HD = 64, HALF = HD / 2 };
    layer_rope_t il = {.theta = 1e4, .interleave = true};
    layer_rope_yarn(&il, 40, 4096, 32, 1, 1, 1, true, 0);
    layer_rope_t hv = il;
    hv.interleave = false;
    int pos[T] = {0, 3, 4096, 70000, 163839};
    rng_t g = {23};
    float q[T * NH * HD], k[T * NH * HD], qd[T * NH * HD], kd[T * NH * HD];
    fill(&g, q, T * NH * HD, 2), fill(&g, k, T * NH * HD, 2);
    for (int v = 0; v < T * NH; v++)
        for (int j = 0; j < HALF; j++) {
            qd[v * HD + j] = q[v * HD + 2 * j];
            qd[v * HD + HALF + j] = q[v * HD + 2 * j + 1];
            kd[v * HD + j] = k[v * HD + 2 * j];
            kd[v * HD + HALF + j] = k[v * HD + 2 * j + 1];
        }
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_rope(&c, q, pos, T, NH, HD, &il);
    layer_rope(&c, k, pos, T, NH, HD, &il);
    layer_rope(&c, qd, pos, T, NH, HD, &hv);
    layer_rope(&c, kd, pos, T, NH, HD, &hv);
    for (int v = 0; v < T * NH; v++)
        for (int j = 0; j < HALF; j++) {
            cr_assert_eq(q[v * HD + 2 * j], qd[v * HD + j]);
            cr_assert_eq(q[v * HD + 2 * j + 1], qd[v * HD + HALF + j]);
            cr_assert_eq(k[v * HD + 2 * j], kd[v * HD + j]);
            cr_assert_eq(k[v * HD + 2 * j + 1], kd[v * HD + HALF + j]);
        }
    for (int a = 0; a < T * NH; a++)
        for (int b = 0; b < T * NH; b++) {
            double s1 = 0, s2 = 0;
            for (int i = 0; i < HD; i++) {
                s1 += (double)q[a * HD + i] * k[b * HD + i];
                s2 += (double)qd[a * HD + i] * kd[b * HD + i];
            }
            cr_assert(fabs(s1 - s2) <= 1e-12 * (fabs(s1) + 1), "q%d.k%d: "
                      "%.17g interleaved, %.17g halves", a, b, s1, s2);
        }
    emu_dev_destroy(dev);
}

/* A partial rotary dim rotates the first dim of each head as a head of that
 * size would be, leaves the rest, and is charged for the rotated part. */
Test(rope, partial_dim)
{
    enum { T = 4, NH = 3, HD = 48, RD = 16 };
    int pos[T] = {0, 5, 999, 123457};
    rng_t g = {24};
    float x[T * NH * HD], y[T * NH * HD], p[T * NH * RD];
    fill(&g, x, T * NH * HD, 2);
    memcpy(y, x, sizeof x);
    for (int v = 0; v < T * NH; v++)
        memcpy(p + v * RD, x + v * HD, sizeof(float) * RD);
    layer_rope_t yarn = {.theta = 1e6};
    layer_rope_yarn(&yarn, 4, 32768, 0, 0, 0, 0, true, 0);
    layer_rope_t plain = {.theta = 1e4};
    const layer_rope_t *rs[] = {&plain, &yarn};
    for (int ri = 0; ri < 2; ri++) {
        layer_rope_t part = *rs[ri], whole = *rs[ri];
        part.dim = RD;
        emu_dev_t *dev = dev_new(), *dev2 = dev_new();
        layer_ctx_t c = ctx_of(dev, true), c2 = ctx_of(dev2, true);
        layer_rope(&c, x, pos, T, NH, HD, &part);
        layer_rope(&c2, p, pos, T, NH, RD, &whole);
        for (int v = 0; v < T * NH; v++) {
            cr_assert(memcmp(x + v * HD, p + v * RD, sizeof(float) * RD) == 0,
                      "case %d head row %d: the rotated part differs", ri, v);
            cr_assert(memcmp(x + v * HD + RD, y + v * HD + RD,
                             sizeof(float) * (HD - RD)) == 0,
                      "case %d head row %d: the rest moved", ri, v);
        }
        const emu_kernel_stats_t *s =
            emu_dev_kernel_stats(dev, EMU_KERNEL_ROPE);
        cr_assert_eq(s->flops, 3.0 * T * NH * RD);
        emu_dev_destroy(dev), emu_dev_destroy(dev2);
    }
}

Test(add, exact_and_charges)
{
    rng_t r = {5};
    int64_t n = 7 * 33;
    float *x = NEW(float, n), *y = NEW(float, n);
    fill(&r, x, n, 3), fill(&r, y, n, 3);
    double *ref = NEW(double, n);
    ref_add(ref, x, y, n);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_add(&c, x, y, n);
    for (int64_t i = 0; i < n; i++)
        cr_assert(x[i] == (float)ref[i], "add: element %lld is %.9g, want %.9g",
                  (long long)i, x[i], (float)ref[i]);
    const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, EMU_KERNEL_ELEMWISE);
    cr_assert(s->flops > 0 && s->bytes > 0, "add: charged %.17g flops, %.17g "
              "bytes to elementwise", s->flops, s->bytes);
    emu_dev_destroy(dev);
    free(x), free(y), free(ref);
}

/* The families' element-wise kernels: a scaled residual add (a == 1 is
 * layer_add bit for bit), a bias per row, a clamp and a scale. */
Test(elementwise, axpy_bias_clamp_scale)
{
    rng_t r = {6};
    int T = 5, n = 12;
    float *x = NEW(float, T * n), *y = NEW(float, T * n), *x1 = NEW(float, T * n),
          *b = NEW(float, n);
    fill(&r, x, (size_t)T * n, 3), fill(&r, y, (size_t)T * n, 3), fill(&r, b, (size_t)n, 1);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    memcpy(x1, x, sizeof(float) * (size_t)T * n);
    layer_axpy(&c, x1, y, (int64_t)T * n, 1.0f);
    for (int i = 0; i < T * n; i++) cr_assert(x1[i] == x[i] + y[i], "axpy a=1 at %d", i);
    memcpy(x1, x, sizeof(float) * (size_t)T * n);
    layer_axpy(&c, x1, y, (int64_t)T * n, 0.22f);
    for (int i = 0; i < T * n; i++)
        cr_assert(fabs(x1[i] - (x[i] + 0.22 * y[i])) < 1e-6, "axpy a=0.22 at %d", i);
    memcpy(x1, x, sizeof(float) * (size_t)T * n);
    layer_bias(&c, x1, b, T, n);
    for (int i = 0; i < T * n; i++) cr_assert(x1[i] == x[i] + b[i % n], "bias at %d", i);
    layer_clamp(&c, x1, (int64_t)T * n, 1.5f);
    int clamped = 0;
    for (int i = 0; i < T * n; i++) {
        float want = x[i] + b[i % n];
        want = want > 1.5f ? 1.5f : want < -1.5f ? -1.5f : want;
        cr_assert(x1[i] == want, "clamp at %d", i);
        clamped += want != x[i] + b[i % n];
    }
    cr_assert_gt(clamped, 0, "the data should reach the clamp");
    layer_scale(&c, x1, (int64_t)T * n, 12.0f);
    cr_assert(x1[0] == 12.0f * fminf(fmaxf(x[0] + b[0], -1.5f), 1.5f));
    const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, EMU_KERNEL_ELEMWISE);
    cr_assert(s->launches == 5 && s->flops > 0 && s->bytes > 0, "%d launches",
              (int)s->launches);
    emu_dev_destroy(dev);
    free(x), free(y), free(x1), free(b);
}

/* A scale other than 1/sqrt(hd) (Granite's attention_multiplier) is the
 * default scale applied to queries multiplied by scale * sqrt(hd). */
Test(attention, scale_is_the_scores_factor)
{
    rng_t r = {8};
    int T = 6, H = 4, Hkv = 2, hd = 16;
    float *q = NEW(float, T * H * hd), *q2 = NEW(float, T * H * hd), *k = NEW(float, T * Hkv * hd),
          *v = NEW(float, T * Hkv * hd), *o1 = NEW(float, T * H * hd), *o2 = NEW(float, T * H * hd);
    fill(&r, q, (size_t)T * H * hd, 1), fill(&r, k, (size_t)T * Hkv * hd, 1);
    fill(&r, v, (size_t)T * Hkv * hd, 1);
    float scale = 0.0625f, f = scale * sqrtf((float)hd);
    for (int i = 0; i < T * H * hd; i++) q2[i] = q[i] * f;
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_attn_seq_t s1 = {.out = o1, .q = q, .kc = k, .vc = v, .T = T, .k1 = T, .ldc = T};
    layer_attn_seq_t s2 = {.out = o2, .q = q2, .kc = k, .vc = v, .T = T, .k1 = T, .ldc = T};
    layer_attention_batch(&c, &s1, 1, H, Hkv, hd, scale);
    layer_attention_batch(&c, &s2, 1, H, Hkv, hd, 1.0f / sqrtf((float)hd));
    for (int i = 0; i < T * H * hd; i++)
        cr_assert(fabsf(o1[i] - o2[i]) < 1e-5f, "at %d: %.9g vs %.9g", i, o1[i], o2[i]);
    emu_dev_destroy(dev);
    free(q), free(q2), free(k), free(v), free(o1), free(o2);
}

/* Attention priced by its shape (a preset's kernels.attention): a decode
 * step packs the query heads of a key/value head as one product's rows,
 * a prefill tiles each head's queries against the keys each sees. */
Test(attention, priced_by_shape)
{
    emu_spec_t spec = {.peak_flops = 4e12, .mfu = 1, .mem_bw = 1e15, .bw_util = 1,
                       .mem_capacity = 80e9, .units = 4};
    spec.kernels[EMU_KERNEL_ATTN] = (emu_kernel_cost_t){
        .set = true, .nrow_tiles = 2, .row_tiles = {64, 128}, .col_tile = 64, .overlap = 1};
    emu_dev_t *dev = NULL;
    cr_assert_eq(emu_dev_create(&spec, 0, true, &dev), MOEMU_OK);
    layer_ctx_t c = ctx_of(dev, false);
    double tile = 2.0 * 64 * 64 * 32 / (4e12 / 4); /* 64 x 64 outputs, hd + vd = 32 */
    /* decode: 1 query, H 8 over Hkv 2, 300 keys: 2 products of 4 x 300, each
     * 1 x 5 tiles of 64 x 64: 10 tiles on 4 units, 3 waves */
    layer_attn_seq_t d = {.T = 1, .q0 = 299, .k1 = 300, .ldc = 300};
    layer_attention_batch(&c, &d, 1, 8, 2, 16, 0.25f);
    cr_assert_float_eq(emu_dev_clock(dev), 3 * tile, 1e-15);
    /* prefill: 128 queries, causal, 2 heads: each sees 64.5 keys on the mean
     * (65 columns: 2 tiles of 64) in one row tile of 128: 4 tiles, 1 wave */
    double t0 = emu_dev_clock(dev);
    layer_attn_seq_t p = {.T = 128, .k1 = 128, .ldc = 128};
    layer_attention_batch(&c, &p, 1, 2, 2, 16, 0.25f);
    cr_assert_float_eq(emu_dev_clock(dev) - t0, 2.0 * 128 * 64 * 32 / (4e12 / 4), 1e-15);
    emu_dev_destroy(dev);
}

/* Values narrower than the keys (MLA's decompressed prefill: 192-wide
 * keys, 128-wide values): the same as values zero-padded to the keys'
 * width, charged 2 (hd + vd) FLOPs a pair and head. */
Test(attention, values_narrower_than_keys)
{
    rng_t r = {9};
    int T = 9, H = 4, hd = 12, vd = 5;
    float *q = NEW(float, T * H * hd), *k = NEW(float, H * T * hd), *v = NEW(float, H * T * vd),
          *vp = NEW(float, H * T * hd), *o = NEW(float, T * H * vd), *op = NEW(float, T * H * hd);
    fill(&r, q, (size_t)T * H * hd, 1), fill(&r, k, (size_t)H * T * hd, 1);
    fill(&r, v, (size_t)H * T * vd, 1);
    memset(vp, 0, sizeof(float) * (size_t)H * T * hd);
    for (int i = 0; i < H * T; i++) memcpy(vp + (size_t)i * hd, v + (size_t)i * vd, sizeof(float) * vd);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_attn_seq_t s1 = {.out = o, .q = q, .kc = k, .vc = v, .T = T, .k1 = T, .ldc = T};
    layer_attn_seq_t s2 = {.out = op, .q = q, .kc = k, .vc = vp, .T = T, .k1 = T, .ldc = T};
    layer_attention_batch_v(&c, &s1, 1, H, H, hd, vd, 0.3f);
    double flops = emu_dev_kernel_stats(dev, EMU_KERNEL_ATTN)->flops;
    cr_assert_eq(flops, 2.0 * (hd + vd) * H * (double)layer_attention_pairs(T, 0, 0, T));
    layer_attention_batch(&c, &s2, 1, H, H, hd, 0.3f);
    for (int t = 0; t < T * H; t++)
        for (int e = 0; e < vd; e++)
            cr_assert(fabsf(o[(size_t)t * vd + e] - op[(size_t)t * hd + e]) < 1e-6f, "row %d col %d",
                      t, e);
    emu_dev_destroy(dev);
    free(q), free(k), free(v), free(vp), free(o), free(op);
}

/* Sliding windows and sinks (gpt-oss), against the softmax of each row
 * written out in double: keys qp - W < p <= qp, the sink's logit in the
 * denominator only. Queries at positions 5..13 over keys 2..13: the
 * window starts inside the key block and after its first key. */
Test(attention, sliding_window_and_sinks)
{
    rng_t r = {10};
    int T = 9, q0 = 5, k0 = 2, k1 = 14, H = 4, Hkv = 2, hd = 8, nk = k1 - k0, W = 3;
    float *q = NEW(float, T * H * hd), *k = NEW(float, Hkv * nk * hd), *v = NEW(float, Hkv * nk * hd),
          *o = NEW(float, T * H * hd), *lse = NEW(float, T * H), sinks[4] = {0.5f, -1, 2, 0};
    fill(&r, q, (size_t)T * H * hd, 1), fill(&r, k, (size_t)Hkv * nk * hd, 1);
    fill(&r, v, (size_t)Hkv * nk * hd, 1);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_attn_seq_t s = {.out = o, .lse = lse, .q = q, .kc = k, .vc = v, .T = T, .q0 = q0,
                          .k0 = k0, .k1 = k1, .ldc = nk, .window = W};
    layer_attention_batch(&c, &s, 1, H, Hkv, hd, 0.5f);
    cr_assert_eq(emu_dev_kernel_stats(dev, EMU_KERNEL_ATTN)->flops,
                 4.0 * hd * H * (double)layer_attention_pairs_window(T, q0, k0, k1, W));
    cr_assert_eq(layer_attention_pairs_window(T, q0, k0, k1, W), (int64_t)T * W);
    layer_attention_sinks(&c, o, lse, sinks, T, H, hd);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            int g = h / (H / Hkv), qp = q0 + t;
            double sc[16], mx = sinks[h], den = 0;
            for (int j = 0; j < nk; j++) {
                int p = k0 + j;
                sc[j] = -INFINITY;
                if (p > qp - W && p <= qp) {
                    double dot = 0;
                    for (int e = 0; e < hd; e++)
                        dot += (double)q[((size_t)t * H + h) * hd + e] * k[((size_t)g * nk + j) * hd + e];
                    sc[j] = 0.5 * dot;
                }
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int j = 0; j < nk; j++) den += exp(sc[j] - mx);
            den += exp(sinks[h] - mx);
            for (int e = 0; e < hd; e++) {
                double want = 0;
                for (int j = 0; j < nk; j++)
                    want += exp(sc[j] - mx) / den * v[((size_t)g * nk + j) * hd + e];
                float got = o[((size_t)t * H + h) * hd + e];
                cr_assert(fabs(got - want) < 1e-5, "t %d h %d e %d: %.9g vs %.9g", t, h, e, got,
                          want);
            }
        }
    emu_dev_destroy(dev);
    free(q), free(k), free(v), free(o), free(lse);
}

/* ======================================================================
 * attention */

typedef struct {
    int T, q0, k0, k1, H, Hkv, hd, ldc_extra;
    double tol;
} attn_case_t;

static const attn_case_t attn_cases[] = {
    {1, 0, 0, 1, 1, 1, 2, 0, 1e-5},         /* one query, one key */
    {7, 0, 0, 7, 6, 3, 2, 0, 1e-5},         /* prefill, hd = 2 */
    {7, 0, 0, 7, 6, 1, 16, 3, 1e-5},        /* multi-query */
    {7, 0, 0, 7, 6, 6, 16, 0, 1e-5},        /* multi-head */
    {1, 699, 0, 700, 6, 3, 64, 0, 3e-5},    /* decode over 700 rows */
    {300, 400, 0, 700, 4, 2, 64, 13, 5e-5}, /* long, crosses blocks */
    {300, 0, 0, 300, 6, 2, 32, 0, 5e-5},    /* long causal prefill */
    {7, 10, 13, 20, 6, 3, 8, 5, 1e-5},      /* queries 10..12 see nothing */
    {5, 0, 10, 20, 2, 1, 4, 0, 1e-5},       /* no query sees anything */
    {9, 5, 0, 3, 2, 2, 4, 1, 1e-5},         /* every key in the past */
    {33, 100, 40, 160, 6, 2, 32, 7, 2e-5},  /* mixed, keys past the queries */
    {130, 70, 60, 331, 6, 3, 2, 0, 3e-5},   /* hd = 2 across blocks */
};

/* q (T,H,hd) scaled so scores spread over a few units; kc, vc (Hkv,ldc,hd)
 * with NaN in the rows past k1 - k0 (never read). */
static void attn_data(rng_t *r, const attn_case_t *ac, float **q, float **kc,
                      float **vc, int *ldc)
{
    int nk = ac->k1 - ac->k0;
    *ldc = nk + ac->ldc_extra;
    size_t nq = (size_t)ac->T * ac->H * ac->hd;
    size_t nc = (size_t)ac->Hkv * *ldc * ac->hd;
    *q = NEW(float, nq);
    *kc = NEW(float, nc);
    *vc = NEW(float, nc);
    fill(r, *q, nq, 3);
    for (int g = 0; g < ac->Hkv; g++)
        for (int row = 0; row < *ldc; row++)
            for (int i = 0; i < ac->hd; i++) {
                size_t at = ((size_t)g * *ldc + row) * ac->hd + i;
                (*kc)[at] = row < nk ? rng_sym(r, 1) : NAN;
                (*vc)[at] = row < nk ? rng_sym(r, 1) : NAN;
            }
}

static void check_lse(const char *what, const float *got, const double *ref,
                      size_t n, double tol)
{
    for (size_t i = 0; i < n; i++) {
        if (ref[i] == -INFINITY) {
            cr_assert(got[i] == -INFINITY, "%s: lse[%zu] = %.9g, want -inf "
                      "(no visible key)", what, i, got[i]);
            continue;
        }
        double e = fabs(got[i] - ref[i]) / (1 + fabs(ref[i]));
        cr_assert(e <= tol, "%s: lse[%zu] = %.9g, reference %.12g (error "
                  "%.3g > %.3g)", what, i, got[i], ref[i], e, tol);
    }
}

/* Where the reference has no visible key (lse -inf), out must be exactly 0. */
static void check_empty_rows(const char *what, const float *out,
                             const double *lse, int T, int H, int hd)
{
    for (int i = 0; i < T * H; i++)
        if (lse[i] == -INFINITY)
            for (int j = 0; j < hd; j++)
                cr_assert(out[(size_t)i * hd + j] == 0.0f, "%s: token %d head "
                          "%d sees no key but out[%d] = %.9g", what, i / H,
                          i % H, j, out[(size_t)i * hd + j]);
}

Test(attention, matches_reference_and_charges)
{
    rng_t r = {6};
    for (size_t ci = 0; ci < sizeof attn_cases / sizeof *attn_cases; ci++) {
        const attn_case_t *ac = &attn_cases[ci];
        int T = ac->T, H = ac->H, hd = ac->hd, ldc;
        char what[160];
        snprintf(what, sizeof what, "attention T=%d q0=%d k0=%d k1=%d H=%d "
                 "Hkv=%d hd=%d ldc+%d", T, ac->q0, ac->k0, ac->k1, H, ac->Hkv,
                 hd, ac->ldc_extra);
        float *q, *kc, *vc;
        attn_data(&r, ac, &q, &kc, &vc, &ldc);
        size_t no = (size_t)T * H * hd, nl = (size_t)T * H;
        double *ref = NEW(double, no), *rlse = NEW(double, nl);
        ref_attention(ref, rlse, q, kc, vc, T, ac->q0, ac->k0, ac->k1, H,
                      ac->Hkv, hd, ldc);
        float *out = NEW(float, no), *lse = NEW(float, nl),
              *out2 = NEW(float, no);
        fill_const(out, no, SENTINEL);
        fill_const(out2, no, SENTINEL);
        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        layer_attention(&c, out, lse, q, kc, vc, T, ac->q0, ac->k0, ac->k1, H,
                        ac->Hkv, hd, ldc);
        check_close(what, out, ref, no, ac->tol);
        check_lse(what, lse, rlse, nl, 1e-5);
        check_empty_rows(what, out, rlse, T, H, hd);

        int64_t pairs = layer_attention_pairs(T, ac->q0, ac->k0, ac->k1);
        int64_t rpairs = ref_attention_pairs(T, ac->q0, ac->k0, ac->k1, 0);
        cr_assert_eq(pairs, rpairs, "%s: layer_attention_pairs %lld, want "
                     "%lld", what, (long long)pairs, (long long)rpairs);
        const emu_kernel_stats_t *s = emu_dev_kernel_stats(dev, EMU_KERNEL_ATTN);
        /* layers.h gives no formula: at least the two matrix products over
         * the visible pairs (q.k and p.v, 2 flops per multiply-add) */
        double low = 4.0 * hd * H * (double)pairs;
        cr_log_info("%s: charged %.17g flops (4*hd*H*pairs = %.17g), %.17g "
                    "bytes", what, s->flops, low, s->bytes);
        cr_assert(s->flops >= low && (pairs == 0 || s->flops > 0),
                  "%s: charged %.17g flops, below 4*hd*H*pairs = %.17g", what,
                  s->flops, low);
        cr_assert(s->bytes > 0, "%s: charged no bytes", what);

        /* the same without lse */
        layer_attention(&c, out2, NULL, q, kc, vc, T, ac->q0, ac->k0, ac->k1,
                        H, ac->Hkv, hd, ldc);
        check_close(what, out2, ref, no, ac->tol);
        emu_dev_destroy(dev);
        free(q), free(kc), free(vc), free(ref), free(rlse), free(out),
            free(lse), free(out2);
    }
}

/* Attention's products sum in an order fixed by the keys alone
 * (layer_inorder_sgemm, layers/skinny.c): the same bits whether a
 * sequence's heads run on one thread or are shared with helper threads,
 * and whether its queries come together (blocks of many rows) or one at
 * a time (decode, a row per head). */
Test(attention, sums_fixed_by_the_keys_alone)
{
    static const attn_case_t cases[] = {
        {300, 400, 0, 700, 4, 2, 40, 13, 0}, /* crosses blocks; hd not of 32 */
        {200, 0, 0, 200, 8, 8, 64, 0, 0},    /* causal prefill */
    };
    rng_t r = {8};
    int blas = openblas_get_num_threads();
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++) {
        const attn_case_t *ac = &cases[ci];
        int T = ac->T, H = ac->H, hd = ac->hd, ldc;
        float *q, *kc, *vc;
        attn_data(&r, ac, &q, &kc, &vc, &ldc);
        size_t no = (size_t)T * H * hd;
        float *one = NEW(float, no), *shared = NEW(float, no), *each = NEW(float, no);
        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        openblas_set_num_threads(1);
        layer_attention(&c, one, NULL, q, kc, vc, T, ac->q0, ac->k0, ac->k1, H, ac->Hkv, hd, ldc);
        openblas_set_num_threads(2);
        layer_attention(&c, shared, NULL, q, kc, vc, T, ac->q0, ac->k0, ac->k1, H, ac->Hkv, hd,
                        ldc);
        for (int t = 0; t < T; t++)
            layer_attention(&c, each + (size_t)t * H * hd, NULL, q + (size_t)t * H * hd, kc, vc,
                            1, ac->q0 + t, ac->k0, ac->k1, H, ac->Hkv, hd, ldc);
        openblas_set_num_threads(blas);
        for (size_t i = 0; i < no; i++) {
            cr_assert(memcmp(&shared[i], &one[i], 4) == 0,
                      "case %zu: output %zu is %a on two threads, %a on one", ci, i, shared[i],
                      one[i]);
            cr_assert(memcmp(&each[i], &one[i], 4) == 0,
                      "case %zu: output %zu is %a a query at a time, %a all at once", ci, i,
                      each[i], one[i]);
        }
        emu_dev_destroy(dev);
        free(q), free(kc), free(vc), free(one), free(shared), free(each);
    }
}

Test(attention, pairs_grid)
{
    for (int T = 0; T <= 5; T++)
        for (int q0 = 0; q0 <= 6; q0 += 3)
            for (int k0 = 0; k0 <= 9; k0 += 2)
                for (int k1 = k0; k1 <= k0 + 8; k1 += 3)
                    cr_assert_eq(layer_attention_pairs(T, q0, k0, k1),
                                 ref_attention_pairs(T, q0, k0, k1, 0),
                                 "pairs(T=%d, q0=%d, k0=%d, k1=%d)", T, q0, k0,
                                 k1);
}

/* The windowed count is a closed form over pieces of the query range:
 * against the loop, with every cut (k1, k0 + W) before, inside and after
 * the queries. */
Test(attention, pairs_window_grid)
{
    for (int T = 0; T <= 9; T++)
        for (int q0 = 0; q0 <= 12; q0 += 3)
            for (int k0 = 0; k0 <= 10; k0 += 2)
                for (int k1 = k0; k1 <= k0 + 14; k1 += 3)
                    for (int W = 0; W <= 7; W++)
                        cr_assert_eq(layer_attention_pairs_window(T, q0, k0, k1, W),
                                     ref_attention_pairs(T, q0, k0, k1, W),
                                     "pairs(T=%d, q0=%d, k0=%d, k1=%d, W=%d)", T, q0, k0,
                                     k1, W);
}

/* Merge two partial attentions over disjoint key ranges by their lse. */
static void attn_merge(float *out, float *lse, const float *o1, const float *l1,
                       const float *o2, const float *l2, int rows, int hd)
{
    for (int i = 0; i < rows; i++) {
        double L = fmax(l1[i], l2[i]);
        if (L == -INFINITY) {
            lse[i] = -INFINITY;
            for (int j = 0; j < hd; j++) out[(size_t)i * hd + j] = 0;
            continue;
        }
        double a = exp(l1[i] - L), b = exp(l2[i] - L);
        lse[i] = (float)(L + log(a + b));
        for (int j = 0; j < hd; j++)
            out[(size_t)i * hd + j] = (float)((a * o1[(size_t)i * hd + j] +
                                               b * o2[(size_t)i * hd + j]) /
                                              (a + b));
    }
}

Test(attention, lse_merge_equals_whole)
{
    rng_t r = {8};
    /* split points: inside the past, so that some queries see nothing of
     * the second part, and at the range's ends (one part empty) */
    static const int splits[] = {20, 60, 70, 0, 87};
    attn_case_t ac = {37, 50, 0, 87, 6, 2, 32, 4, 2e-5};
    int T = ac.T, H = ac.H, hd = ac.hd, ldc;
    float *q, *kc, *vc;
    attn_data(&r, &ac, &q, &kc, &vc, &ldc);
    size_t no = (size_t)T * H * hd, nl = (size_t)T * H;
    double *ref = NEW(double, no), *rlse = NEW(double, nl);
    ref_attention(ref, rlse, q, kc, vc, T, ac.q0, ac.k0, ac.k1, H, ac.Hkv, hd,
                  ldc);
    float *ow = NEW(float, no), *lw = NEW(float, nl);
    float *o1 = NEW(float, no), *l1 = NEW(float, nl);
    float *o2 = NEW(float, no), *l2 = NEW(float, nl);
    float *om = NEW(float, no), *lm = NEW(float, nl);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_attention(&c, ow, lw, q, kc, vc, T, ac.q0, ac.k0, ac.k1, H, ac.Hkv,
                    hd, ldc);
    for (size_t si = 0; si < sizeof splits / sizeof *splits; si++) {
        int m = splits[si];
        char what[64];
        snprintf(what, sizeof what, "lse merge at key %d", m);
        layer_attention(&c, o1, l1, q, kc, vc, T, ac.q0, ac.k0, m, H, ac.Hkv,
                        hd, ldc);
        layer_attention(&c, o2, l2, q, kc + (size_t)(m - ac.k0) * hd,
                        vc + (size_t)(m - ac.k0) * hd, T, ac.q0, m, ac.k1, H,
                        ac.Hkv, hd, ldc);
        attn_merge(om, lm, o1, l1, o2, l2, T * H, hd);
        check_close(what, om, ref, no, ac.tol);
        check_lse(what, lm, rlse, nl, 1e-5);
        double *whole = to_double(ow, no);
        check_close(what, om, whole, no, ac.tol);
        free(whole);
    }
    emu_dev_destroy(dev);
    free(q), free(kc), free(vc), free(ref), free(rlse), free(ow), free(lw),
        free(o1), free(l1), free(o2), free(l2), free(om), free(lm);
}

/* ======================================================================
 * router */

typedef struct {
    int T, d, E, k;
} router_case_t;

Test(router, matches_reference_and_charges)
{
    static const router_case_t cases[] = {
        {1, 33, 5, 1}, {7, 33, 5, 1}, {7, 33, 5, 2}, {7, 33, 5, 5},
        {300, 64, 8, 2}, {17, 16, 22, 6}, {1, 1, 2, 1},
    };
    static const char *const hows[] = {"softmax, top-k, renormalised", "softmax, top-k",
                                       "top-k, softmax"};
    rng_t r = {9};
    for (size_t ci = 0; ci < 3 * sizeof cases / sizeof *cases; ci++) {
        const router_case_t *rc = &cases[ci / 3];
        layer_route_t how = (layer_route_t)(ci % 3);
        int T = rc->T, d = rc->d, E = rc->E, k = rc->k;
        char what[128];
        snprintf(what, sizeof what, "router (%s) T=%d d=%d E=%d k=%d", hows[how], T, d, E, k);
        float *x = NEW(float, T * d), *wg = NEW(float, E * d),
              *logits = NEW(float, T * E), *w = NEW(float, T * k);
        int *idx = NEW(int, T * k), *ridx = NEW(int, T * k);
        fill(&r, x, (size_t)T * d, 1);
        fill(&r, wg, (size_t)E * d, 1);
        double *rw = NEW(double, T * k), *p = NEW(double, T * E);
        ref_router(ridx, rw, p, x, wg, T, d, E, k, how);
        /* precondition: no near ties in this data, so that fp32 and double
         * rank the experts alike */
        for (int t = 0; t < T; t++)
            for (int a = 0; a < E; a++)
                for (int b = a + 1; b < E; b++) {
                    double pa = p[(size_t)t * E + a], pb = p[(size_t)t * E + b];
                    cr_assert(fabs(pa - pb) > 1e-5 * fmax(pa, pb),
                              "%s: test data has a near tie (token %d, experts "
                              "%d %d); change the seed", what, t, a, b);
                }
        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        layer_router(&c, idx, w, logits, x, wg, T, d, E, k, how, NULL);
        for (int i = 0; i < T * k; i++)
            cr_assert_eq(idx[i], ridx[i], "%s: token %d choice %d is expert "
                         "%d, want %d", what, i / k, i % k, idx[i], ridx[i]);
        check_close(what, w, rw, (size_t)T * k, 1e-5);
        for (int t = 0; t < T && how != LAYER_ROUTE_SOFTMAX_TOPK; t++) {
            double s = 0;
            for (int j = 0; j < k; j++) s += w[(size_t)t * k + j];
            cr_assert(fabs(s - 1) < 1e-6, "%s: token %d weights sum to %.9g",
                      what, t, s);
        }
        emu_kernel_stats_t tot = dev_total(dev);
        const emu_kernel_stats_t *s =
            emu_dev_kernel_stats(dev, EMU_KERNEL_ROUTER);
        cr_assert(s->launches >= 1, "%s: nothing charged to router", what);
        cr_assert(tot.flops >= 2.0 * T * d * E && tot.bytes > 0,
                  "%s: charged %.17g flops (logits alone are 2*T*d*E = %.17g) "
                  "and %.17g bytes", what, tot.flops, 2.0 * T * d * E,
                  tot.bytes);
        emu_dev_destroy(dev);
        free(x), free(wg), free(logits), free(w), free(idx), free(ridx),
            free(rw), free(p);
    }
}

/* Equal logits, built exactly: x = (1, 0), wg[e] = (l_e, 0). */
static void router_logits(layer_ctx_t *c, int *idx, float *w, const float *l,
                          int E, int k)
{
    float x[2] = {1, 0}, wg[2 * 16], logits[16];
    for (int e = 0; e < E; e++) wg[2 * e] = l[e], wg[2 * e + 1] = 0;
    layer_router(c, idx, w, logits, x, wg, 1, 2, E, k, LAYER_ROUTE_SOFTMAX_TOPK_NORM, NULL);
}

/* DeepSeek's grouped router against a naive one in double written from
 * inference/model.py's Gate: V3 (sigmoid, biased choice, groups scored by
 * their best two, renormalised, scaled) and V2 (softmax, groups scored by
 * their best, not renormalised, scaled). */
static void naive_grouped(int *idx, double *w, const float *x, const float *wg, int d, int E,
                          int k, const layer_gate_t *g)
{
    double sc[64], ch[64];
    for (int e = 0; e < E; e++) {
        double l = 0;
        for (int i = 0; i < d; i++) l += (double)x[i] * wg[(size_t)e * d + i];
        sc[e] = l;
    }
    if (g->sigmoid) {
        for (int e = 0; e < E; e++) sc[e] = 1 / (1 + exp(-sc[e]));
    } else {
        double m = sc[0], z = 0;
        for (int e = 1; e < E; e++) m = fmax(m, sc[e]);
        for (int e = 0; e < E; e++) z += (sc[e] = exp(sc[e] - m));
        for (int e = 0; e < E; e++) sc[e] /= z;
    }
    for (int e = 0; e < E; e++) ch[e] = sc[e] + (g->bias ? g->bias[e] : 0);
    int per = E / g->n_group;
    double gs[64];
    for (int q = 0; q < g->n_group; q++) {
        double a = -INFINITY, b = -INFINITY;
        for (int e = q * per; e < (q + 1) * per; e++)
            if (ch[e] > a) b = a, a = ch[e];
            else if (ch[e] > b) b = ch[e];
        gs[q] = g->group_top2 ? a + b : a;
    }
    for (int j = 0; j < g->n_group - g->topk_group; j++) { /* drop the worst groups */
        int worst = -1;
        for (int q = g->n_group - 1; q >= 0; q--)
            if (gs[q] != INFINITY && (worst < 0 || gs[q] < gs[worst])) worst = q;
        gs[worst] = INFINITY;
        for (int e = worst * per; e < (worst + 1) * per; e++) ch[e] = -INFINITY;
    }
    double tot = 0;
    for (int s = 0; s < k; s++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int j = 0; j < s; j++) taken |= idx[j] == e;
            if (!taken && (best < 0 || ch[e] > ch[best])) best = e;
        }
        idx[s] = best;
        tot += (w[s] = sc[best]);
    }
    for (int s = 0; s < k; s++) w[s] = (g->norm ? w[s] / tot : w[s]) * g->scale;
}

Test(router, grouped_matches_a_naive_gate)
{
    enum { E = 32, d = 24, k = 6, T = 40 };
    rng_t r = {11};
    float x[T * d], wg[E * d], bias[E], logits[T * E], w[T * k];
    int idx[T * k];
    fill(&r, x, T * d, 1), fill(&r, wg, E * d, 1), fill(&r, bias, E, 0.5f);
    const layer_gate_t gates[] = {
        {.bias = bias, .sigmoid = true, .norm = true, .group_top2 = true, .n_group = 8,
         .topk_group = 4, .scale = 2.5f},
        {.n_group = 4, .topk_group = 2, .scale = 16.0f},
        {.sigmoid = true, .n_group = 1, .topk_group = 1, .scale = 1.0f},
    };
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    for (size_t gi = 0; gi < sizeof gates / sizeof gates[0]; gi++) {
        layer_router(&c, idx, w, logits, x, wg, T, d, E, k, LAYER_ROUTE_GROUPED, &gates[gi]);
        for (int t = 0; t < T; t++) {
            int ri[k];
            double rw[k];
            naive_grouped(ri, rw, x + t * d, wg, d, E, k, &gates[gi]);
            for (int s = 0; s < k; s++) {
                cr_assert_eq(idx[t * k + s], ri[s], "gate %zu token %d choice %d", gi, t, s);
                cr_assert(fabs(w[t * k + s] - rw[s]) < 1e-5 * fmax(1, fabs(rw[s])),
                          "gate %zu token %d weight %d: %.9g vs %.9g", gi, t, s, w[t * k + s],
                          rw[s]);
            }
        }
    }
    emu_dev_destroy(dev);
}

/* Experts of a group not chosen are out even when every biased score is
 * negative (-inf as DeepSeek's code and vLLM, not Hugging Face's 0.0). */
Test(router, excluded_groups_are_minus_infinity)
{
    enum { E = 4, d = 2 };
    float x[d] = {1, 0}, wg[E * d] = {0}, logits[E], w[2];
    float bias[E] = {-3, -3, -5, -5}; /* group 0 wins; its experts' choice scores < 0 */
    int idx[2];
    layer_gate_t g = {.bias = bias, .sigmoid = true, .norm = true, .group_top2 = true,
                      .n_group = 2, .topk_group = 1, .scale = 1};
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_router(&c, idx, w, logits, x, wg, 1, d, E, 2, LAYER_ROUTE_GROUPED, &g);
    cr_assert(idx[0] == 0 && idx[1] == 1, "chose %d, %d", idx[0], idx[1]);
    cr_assert(fabsf(w[0] - 0.5f) < 1e-6f && fabsf(w[1] - 0.5f) < 1e-6f);
    emu_dev_destroy(dev);
}

Test(router, ties_to_lower_index)
{
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    int idx[6];
    float w[6];

    const float l1[6] = {0.5f, 2, 1, 2, 2, -1};
    router_logits(&c, idx, w, l1, 6, 2);
    cr_assert(idx[0] == 1 && idx[1] == 3, "tie of three: got %d %d, want 1 3",
              idx[0], idx[1]);
    cr_assert_float_eq(w[0], 0.5f, 1e-6);
    cr_assert_float_eq(w[1], 0.5f, 1e-6);
    router_logits(&c, idx, w, l1, 6, 4);
    cr_assert(idx[0] == 1 && idx[1] == 3 && idx[2] == 4 && idx[3] == 2,
              "k=4: got %d %d %d %d, want 1 3 4 2", idx[0], idx[1], idx[2],
              idx[3]);

    /* the tie is at the cut: the lower index is kept */
    const float l2[4] = {1, 3, 1, 1};
    router_logits(&c, idx, w, l2, 4, 2);
    cr_assert(idx[0] == 1 && idx[1] == 0, "cut tie: got %d %d, want 1 0",
              idx[0], idx[1]);
    const float l3[5] = {-2, 0, 0, 5, 0};
    router_logits(&c, idx, w, l3, 5, 3);
    cr_assert(idx[0] == 3 && idx[1] == 1 && idx[2] == 2,
              "cut tie: got %d %d %d, want 3 1 2", idx[0], idx[1], idx[2]);

    /* all equal: 0..k-1 with equal weights */
    const float l4[5] = {0.25f, 0.25f, 0.25f, 0.25f, 0.25f};
    router_logits(&c, idx, w, l4, 5, 5);
    for (int j = 0; j < 5; j++) {
        cr_assert_eq(idx[j], j, "all equal: choice %d is %d", j, idx[j]);
        cr_assert_float_eq(w[j], 0.2f, 1e-6);
    }
    emu_dev_destroy(dev);
}

/* ======================================================================
 * capacity */

Test(capacity, design_examples)
{
    cr_assert_eq(layer_capacity(1.1, 10, 2, 22), 1, "cf=1.1 T=10 k=2 E=22: %lld",
                 (long long)layer_capacity(1.1, 10, 2, 22));
    cr_assert_eq(layer_capacity(1.2, 100, 2, 16), 15,
                 "cf=1.2 T=100 k=2 E=16: %lld",
                 (long long)layer_capacity(1.2, 100, 2, 16));
    cr_assert_eq(layer_capacity(0, 100, 2, 16), INT64_MAX, "cf=0 is dropless");
    cr_assert_eq(layer_capacity(0.0, 1, 1, 1), INT64_MAX, "cf=0 is dropless");
    /* whole numbers in decimal that are not in binary */
    cr_assert_eq(layer_capacity(0.3, 10, 1, 3), 1);
    cr_assert_eq(layer_capacity(0.7, 10, 3, 7), 3);
    cr_assert_eq(layer_capacity(1.15, 20, 2, 46), 1);
    /* and values just above a whole number are rounded up */
    cr_assert_eq(layer_capacity(1.000000001, 10, 2, 20), 2);
    cr_assert_eq(layer_capacity(1.0, 7, 2, 5), 3);
    cr_assert_eq(layer_capacity(1.0, 0, 2, 5), 0);
}

Test(capacity, grid_matches_reference)
{
    for (int ci = 1; ci <= 400; ci++) {
        double cf = ci * 0.01;
        for (int T = 1; T <= 130; T += 7)
            for (int k = 1; k <= 4; k++)
                for (int E = k; E <= 24; E += 3)
                    cr_assert_eq(layer_capacity(cf, T, k, E),
                                 ref_capacity(cf, T, k, E),
                                 "cf=%.2f T=%d k=%d E=%d: got %lld want %lld",
                                 cf, T, k, E,
                                 (long long)layer_capacity(cf, T, k, E),
                                 (long long)ref_capacity(cf, T, k, E));
    }
    cr_assert_eq(layer_capacity(1.25, 1000000, 8, 64),
                 ref_capacity(1.25, 1000000, 8, 64));
}

Test(capacity, apply_in_group_order)
{
    /* token 0 picks (0, 1), token 1 picks (1, 2): with cap 1, token 0's
     * second choice (expert 1) is taken before token 1's first choice */
    int idx[4] = {0, 1, 1, 2};
    uint8_t keep[4];
    int64_t count[3];
    int64_t dropped = layer_apply_capacity(keep, count, idx, 2, 2, 3, 1);
    cr_assert_eq(dropped, 1);
    cr_assert(keep[0] == 1 && keep[1] == 1 && keep[2] == 0 && keep[3] == 1,
              "keep %d %d %d %d, want 1 1 0 1", keep[0], keep[1], keep[2],
              keep[3]);
    cr_assert(count[0] == 1 && count[1] == 1 && count[2] == 1);

    /* cap 0 drops everything; dropless keeps everything; count may be NULL */
    cr_assert_eq(layer_apply_capacity(keep, NULL, idx, 2, 2, 3, 0), 4);
    for (int i = 0; i < 4; i++) cr_assert_eq(keep[i], 0);
    cr_assert_eq(layer_apply_capacity(keep, NULL, idx, 2, 2, 3, INT64_MAX), 0);
    for (int i = 0; i < 4; i++) cr_assert_eq(keep[i], 1);
}

Test(capacity, apply_matches_reference)
{
    rng_t r = {10};
    static const int shapes[][3] = {{1, 1, 1}, {7, 2, 5}, {10, 2, 22},
                                    {100, 2, 16}, {300, 5, 5}, {64, 3, 8}};
    for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
        int T = shapes[si][0], k = shapes[si][1], E = shapes[si][2];
        int *idx = NEW(int, T * k);
        /* distinct experts per token, skewed towards the low ones */
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++) {
                int e;
                bool dup;
                do {
                    uint64_t u = rng_next(&r);
                    /* half the draws among the lower half of the experts */
                    int span = u % 2 ? E : (E + 1) / 2;
                    e = (int)((u >> 8) % (uint64_t)span);
                    dup = false;
                    for (int i = 0; i < j; i++)
                        dup |= idx[(size_t)t * k + i] == e;
                } while (dup);
                idx[(size_t)t * k + j] = e;
            }
        int64_t caps[] = {0, 1, 2, 3, layer_capacity(1.0, T, k, E),
                          layer_capacity(1.25, T, k, E), INT64_MAX};
        for (size_t c = 0; c < sizeof caps / sizeof *caps; c++) {
            uint8_t *keep = NEW(uint8_t, T * k), *rkeep = NEW(uint8_t, T * k);
            int64_t *count = NEW(int64_t, E), *rcount = NEW(int64_t, E);
            int64_t d = layer_apply_capacity(keep, count, idx, T, k, E, caps[c]);
            int64_t rd = ref_apply_capacity(rkeep, rcount, idx, T, k, E, caps[c]);
            cr_assert_eq(d, rd, "T=%d k=%d E=%d cap=%lld: dropped %lld, want "
                         "%lld", T, k, E, (long long)caps[c], (long long)d,
                         (long long)rd);
            for (int i = 0; i < T * k; i++)
                cr_assert_eq(keep[i], rkeep[i], "T=%d k=%d E=%d cap=%lld: "
                             "keep[%d][%d] = %d, want %d", T, k, E,
                             (long long)caps[c], i / k, i % k, keep[i],
                             rkeep[i]);
            for (int e = 0; e < E; e++)
                cr_assert_eq(count[e], rcount[e]);
            free(keep), free(rkeep), free(count), free(rcount);
        }
        free(idx);
    }
}

/* ======================================================================
 * expert */

typedef struct {
    int n, d, F, ldw2;
    layer_act_t act;
    bool acc, w3_null;
    double tol;
} expert_case_t;

static const expert_case_t expert_cases[] = {
    {1, 1, 1, 1, LAYER_ACT_SILU, false, false, 1e-5},
    {1, 33, 17, 17, LAYER_ACT_SILU, false, false, 1e-5},
    {7, 33, 17, 17, LAYER_ACT_SILU, false, false, 1e-5},
    {7, 33, 17, 24, LAYER_ACT_SILU, true, false, 1e-5},
    {7, 33, 17, 17, LAYER_ACT_GELU, false, false, 1e-5},
    {7, 33, 17, 30, LAYER_ACT_GELU, true, true, 1e-5},
    {64, 256, 512, 600, LAYER_ACT_SILU, false, false, 2e-5},
    {300, 64, 96, 96, LAYER_ACT_GELU, true, false, 1e-5},
    {5, 1024, 1408, 2816, LAYER_ACT_SILU, true, false, 5e-5},
};

Test(expert, matches_reference_and_charges)
{
    rng_t r = {11};
    for (size_t ci = 0; ci < sizeof expert_cases / sizeof *expert_cases; ci++) {
        const expert_case_t *ec = &expert_cases[ci];
        int n = ec->n, d = ec->d, F = ec->F, ldw2 = ec->ldw2;
        char what[128];
        snprintf(what, sizeof what, "expert n=%d d=%d F=%d ldw2=%d %s acc=%d",
                 n, d, F, ldw2, ec->act == LAYER_ACT_SILU ? "silu" : "gelu",
                 ec->acc);
        float *x = NEW(float, n * d), *w1 = NEW(float, F * d),
              *w3 = NEW(float, F * d), *w2 = NEW(float, d * ldw2),
              *out = NEW(float, n * d), *h = NEW(float, 2 * n * F);
        fill(&r, x, (size_t)n * d, 2);
        /* scaled so that W1 x spreads over the activation's curve */
        fill(&r, w1, (size_t)F * d, 3 / sqrtf((float)d));
        if (ec->act == LAYER_ACT_SILU) fill(&r, w3, (size_t)F * d, 1);
        else fill_const(w3, (size_t)F * d, NAN); /* ignored */
        for (int o = 0; o < d; o++)
            for (int f = 0; f < ldw2; f++)
                w2[(size_t)o * ldw2 + f] = f < F ? rng_sym(&r, 1) : NAN;
        fill(&r, out, (size_t)n * d, 1);
        double *ref = to_double(out, (size_t)n * d);
        ref_expert(ref, x, w1, w3, w2, n, d, F, ldw2, ec->act, ec->acc);

        emu_dev_t *dev = dev_new();
        layer_ctx_t c = ctx_of(dev, true);
        layer_expert(&c, out, h, x, w1, ec->w3_null ? NULL : w3, w2, n, d, F,
                     ldw2, ec->act, ec->acc);
        check_close(what, out, ref, (size_t)n * d, ec->tol);

        /* the work documented in layers.h: w1 (and w3) products, the
         * activation, the w2 product; fp16 bytes, each weight read once */
        emu_kernel_stats_t tot = dev_total(dev);
        double mats = ec->act == LAYER_ACT_SILU ? 3 : 2, nf = (double)n * F;
        double want_flops = 2.0 * mats * n * d * F + (mats == 3 ? 6.0 : 8.0) * nf;
        double want_bytes = 2.0 * ((mats - 1) * ((double)n * d + (double)F * d + nf) +
                                   (mats == 3 ? 3.0 : 2.0) * nf +
                                   (nf + (double)d * F + (double)n * d * (ec->acc ? 2 : 1)));
        cr_assert(tot.flops == want_flops && tot.bytes == want_bytes,
                  "%s: charged %.17g flops %.17g bytes, expected %.17g and %.17g", what,
                  tot.flops, tot.bytes, want_flops, want_bytes);
        cr_assert_eq(emu_dev_kernel_stats(dev, EMU_KERNEL_EXPERT)->launches, (uint64_t)(mats + 1));
        cr_assert(emu_dev_kernel_stats(dev, EMU_KERNEL_EXPERT)->launches >= 1,
                  "%s: nothing charged to expert", what);
        emu_dev_destroy(dev);
        free(x), free(w1), free(w3), free(w2), free(out), free(h), free(ref);
    }
}

/* ======================================================================
 * argmax */

Test(argmax, ties_and_nan)
{
    const float a[] = {1, 3, 3, 2};
    cr_assert_eq(layer_argmax(a, 4), 1);
    const float b[] = {NAN, 1, NAN, 1};
    cr_assert_eq(layer_argmax(b, 4), 1);
    const float c[] = {NAN, -INFINITY};
    cr_assert_eq(layer_argmax(c, 2), 1);
    const float d[] = {-INFINITY, -INFINITY, -INFINITY};
    cr_assert_eq(layer_argmax(d, 3), 0);
    const float e[] = {NAN, 5, 7, NAN, 7};
    cr_assert_eq(layer_argmax(e, 5), 2);
    const float f[] = {-0.0f, 0.0f};
    cr_assert_eq(layer_argmax(f, 2), 0);
    const float g[] = {2, NAN, 3, INFINITY, NAN, INFINITY};
    cr_assert_eq(layer_argmax(g, 6), 3);
    const float h[] = {-7};
    cr_assert_eq(layer_argmax(h, 1), 0);
    const float i[] = {1, 2, NAN};
    cr_assert_eq(layer_argmax(i, 3), 1);
    const float nan3[] = {NAN, NAN, NAN};
    int k = layer_argmax(nan3, 3);
    cr_assert(k >= 0 && k < 3, "all NaN: %d is out of range", k);

    rng_t r = {12};
    float v[1000];
    for (int rep = 0; rep < 50; rep++) {
        /* few distinct values, so ties are common */
        for (int j = 0; j < 1000; j++)
            v[j] = (float)(int)(rng_next(&r) % 17) - (rep % 3 ? 0 : 20);
        if (rep % 2) v[rng_next(&r) % 1000] = NAN;
        cr_assert_eq(layer_argmax(v, 1000), ref_argmax(v, 1000), "rep %d", rep);
    }
}

/* ======================================================================
 * Dry runs: math = false writes nothing and charges what math = true does. */

Test(dry_run, touches_nothing_and_charges_the_same)
{
    rng_t r = {13};
    emu_dev_t *dreal = dev_new(), *ddry = dev_new();
    layer_ctx_t real = ctx_of(dreal, true), dry = ctx_of(ddry, false);
    const size_t N = 1 << 16;
    float *a = NEW(float, N), *b = NEW(float, N), *o = NEW(float, N),
          *o2 = NEW(float, N), *w = NEW(float, N), *w3 = NEW(float, N),
          *w2 = NEW(float, N), *s = NEW(float, N);
    fill(&r, a, N, 1), fill(&r, b, N, 1), fill(&r, w, N, 0.2f);
    fill(&r, w3, N, 0.2f), fill(&r, w2, N, 0.2f);

#define DRY(what, n_out, call_real, call_dry)                                  \
    do {                                                                       \
        call_real;                                                             \
        fill_const(s, N, SENTINEL);                                            \
        call_dry;                                                              \
        assert_untouched(s, (n_out), SENTINEL, what);                          \
        assert_same_charges(dreal, ddry, what);                                \
    } while (0)

    DRY("linear", 7 * 17,
        layer_linear(&real, EMU_KERNEL_GEMM, o, a, w, 7, 33, 17, 40, false),
        layer_linear(&dry, EMU_KERNEL_GEMM, s, a, w, 7, 33, 17, 40, false));
    DRY("linear accumulate", 7 * 17,
        layer_linear(&real, EMU_KERNEL_GEMM, o, a, w, 7, 33, 17, 33, true),
        layer_linear(&dry, EMU_KERNEL_GEMM, s, a, w, 7, 33, 17, 33, true));
    int tok[7] = {0, 1, 2, 3, 4, 5, 6};
    DRY("embed", 7 * 33, layer_embed(&real, o, tok, w, 7, 33),
        layer_embed(&dry, s, tok, w, 7, 33));
    DRY("rmsnorm", 7 * 33, layer_rmsnorm(&real, o, a, w, 7, 33, 1e-5f),
        layer_rmsnorm(&dry, s, a, w, 7, 33, 1e-5f));
    DRY("rmsnorm in place", 7 * 33, layer_rmsnorm(&real, o, o, w, 7, 33, 1e-5f),
        layer_rmsnorm(&dry, s, s, w, 7, 33, 1e-5f));
    int pos[7] = {0, 1, 2, 3, 4, 5, 600};
    memcpy(o, a, sizeof(float) * 7 * 6 * 64);
    layer_rope_t rp = {.theta = 1e4};
    DRY("rope", 7 * 6 * 64, layer_rope(&real, o, pos, 7, 6, 64, &rp),
        layer_rope(&dry, s, pos, 7, 6, 64, &rp));
    DRY("add", 7 * 33, layer_add(&real, o, a, 7 * 33),
        layer_add(&dry, s, a, 7 * 33));

    /* attention: 7 queries at 10.., keys 5..30 (H=6, Hkv=3, hd=16) */
    float *lse = NEW(float, 7 * 6);
    float *lsed = NEW(float, 7 * 6);
    fill_const(lsed, 7 * 6, SENTINEL);
    DRY("attention", 7 * 6 * 16,
        layer_attention(&real, o, lse, a, b, w, 7, 10, 5, 30, 6, 3, 16, 27),
        layer_attention(&dry, s, lsed, a, b, w, 7, 10, 5, 30, 6, 3, 16, 27));
    assert_untouched(lsed, 7 * 6, SENTINEL, "attention lse");

    /* router: idx, w and the logits scratch untouched */
    int idx[7 * 2], idxd[7 * 2];
    float rw[7 * 2], rwd[7 * 2];
    memset(idxd, 0x5a, sizeof idxd);
    fill_const(rwd, 7 * 2, SENTINEL);
    int idxd0[7 * 2];
    memcpy(idxd0, idxd, sizeof idxd);
    DRY("router", 7 * 5,
        layer_router(&real, idx, rw, o, a, w, 7, 33, 5, 2, LAYER_ROUTE_SOFTMAX_TOPK_NORM, NULL),
        layer_router(&dry, idxd, rwd, s, a, w, 7, 33, 5, 2, LAYER_ROUTE_SOFTMAX_TOPK_NORM, NULL));
    assert_untouched(rwd, 7 * 2, SENTINEL, "router weights");
    cr_assert(memcmp(idxd, idxd0, sizeof idxd) == 0,
              "router: math=false wrote idx");

    /* expert: out and the scratch h untouched */
    float *hd_ = NEW(float, 2 * 7 * 17), *hr = NEW(float, 2 * 7 * 17);
    fill_const(hd_, 2 * 7 * 17, SENTINEL);
    DRY("expert silu", 7 * 33,
        layer_expert(&real, o, hr, a, w, w3, w2, 7, 33, 17, 20,
                     LAYER_ACT_SILU, false),
        layer_expert(&dry, s, hd_, a, w, w3, w2, 7, 33, 17, 20,
                     LAYER_ACT_SILU, false));
    assert_untouched(hd_, 2 * 7 * 17, SENTINEL, "expert scratch");
    DRY("expert gelu accumulate", 7 * 33,
        layer_expert(&real, o, hr, a, w, w3, w2, 7, 33, 17, 17,
                     LAYER_ACT_GELU, true),
        layer_expert(&dry, s, hd_, a, w, w3, w2, 7, 33, 17, 17,
                     LAYER_ACT_GELU, true));
#undef DRY

    emu_dev_destroy(dreal), emu_dev_destroy(ddry);
    free(a), free(b), free(o), free(o2), free(w), free(w3), free(w2), free(s),
        free(lse), free(lsed), free(hd_), free(hr);
}

/* ======================================================================
 * grouped forms: one launch, the sum of the work, the same outputs */

Test(grouped, attention_batch_is_one_launch)
{
    rng_t r = {7};
    enum { H = 4, Hkv = 2, hd = 8 };
    const int T[3] = {5, 1, 9}, q0[3] = {0, 6, 3}, k1[3] = {5, 7, 12};
    float *q[3], *k[3], *v[3], *o1[3], *o2[3];
    layer_attn_seq_t s[3];
    emu_dev_t *one = dev_new(), *many = dev_new();
    layer_ctx_t c1 = ctx_of(one, true), cm = ctx_of(many, true);
    for (int i = 0; i < 3; i++) {
        q[i] = malloc(sizeof(float) * T[i] * H * hd);
        k[i] = malloc(sizeof(float) * k1[i] * Hkv * hd);
        v[i] = malloc(sizeof(float) * k1[i] * Hkv * hd);
        o1[i] = malloc(sizeof(float) * T[i] * H * hd);
        o2[i] = malloc(sizeof(float) * T[i] * H * hd);
        fill(&r, q[i], (size_t)T[i] * H * hd, 1);
        fill(&r, k[i], (size_t)k1[i] * Hkv * hd, 1);
        fill(&r, v[i], (size_t)k1[i] * Hkv * hd, 1);
        s[i] = (layer_attn_seq_t){.out = o1[i], .q = q[i], .kc = k[i], .vc = v[i], .T = T[i],
                                  .q0 = q0[i], .k1 = k1[i], .ldc = k1[i]};
        layer_attention(&cm, o2[i], NULL, q[i], k[i], v[i], T[i], q0[i], 0, k1[i], H, Hkv, hd,
                        k1[i]);
    }
    layer_attention_batch(&c1, s, 3, H, Hkv, hd, 1.0f / sqrtf((float)hd));
    const emu_kernel_stats_t *a = emu_dev_kernel_stats(one, EMU_KERNEL_ATTN),
                             *b = emu_dev_kernel_stats(many, EMU_KERNEL_ATTN);
    cr_assert_eq(a->launches, 1);
    cr_assert_eq(b->launches, 3);
    cr_assert_eq(a->flops, b->flops);
    cr_assert_eq(a->bytes, b->bytes);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(memcmp(o1[i], o2[i], sizeof(float) * T[i] * H * hd), 0, "sequence %d", i);
        free(q[i]), free(k[i]), free(v[i]), free(o1[i]), free(o2[i]);
    }
    emu_dev_destroy(one);
    emu_dev_destroy(many);
}

Test(grouped, experts_one_launch_per_matrix)
{
    rng_t r = {8};
    enum { d = 12, F = 10, E = 3 };
    const int n[E] = {4, 0, 7};
    float *w1[E], *w3[E], *w2[E], *x[E], *y1[E], *y2[E], h[2 * 7 * F];
    layer_expert_job_t jobs[E];
    emu_dev_t *one = dev_new(), *many = dev_new();
    layer_ctx_t c1 = ctx_of(one, true), cm = ctx_of(many, true);
    for (int e = 0; e < E; e++) {
        w1[e] = malloc(sizeof(float) * F * d);
        w3[e] = malloc(sizeof(float) * F * d);
        w2[e] = malloc(sizeof(float) * d * F);
        x[e] = malloc(sizeof(float) * (n[e] + 1) * d);
        y1[e] = malloc(sizeof(float) * (n[e] + 1) * d);
        y2[e] = malloc(sizeof(float) * (n[e] + 1) * d);
        fill(&r, w1[e], F * d, 1), fill(&r, w3[e], F * d, 1), fill(&r, w2[e], F * d, 1);
        fill(&r, x[e], (size_t)n[e] * d, 1);
        jobs[e] = (layer_expert_job_t){.out = y1[e], .x = x[e], .w1 = w1[e], .w3 = w3[e],
                                       .w2 = w2[e], .n = n[e]};
        if (n[e]) layer_expert(&cm, y2[e], h, x[e], w1[e], w3[e], w2[e], n[e], d, F, F,
                               LAYER_ACT_SILU, false);
    }
    layer_expert_group(&c1, jobs, E, h, d, F, F, LAYER_ACT_SILU, 0.0f, false);
    const emu_kernel_stats_t *a = emu_dev_kernel_stats(one, EMU_KERNEL_EXPERT),
                             *b = emu_dev_kernel_stats(many, EMU_KERNEL_EXPERT);
    cr_assert_eq(a->launches, 4, "w1, w3, the activation, w2");
    cr_assert_eq(b->launches, 8);
    cr_assert_eq(a->flops, b->flops);
    cr_assert_eq(a->bytes, b->bytes);
    for (int e = 0; e < E; e++) {
        if (n[e]) cr_assert_eq(memcmp(y1[e], y2[e], sizeof(float) * n[e] * d), 0, "expert %d", e);
        free(w1[e]), free(w3[e]), free(w2[e]), free(x[e]), free(y1[e]), free(y2[e]);
    }
    emu_dev_destroy(one);
    emu_dev_destroy(many);
}

/* gpt-oss's experts (transformers' GptOssExperts): gate/up interleaved in
 * the columns of (d, 2F), their biases, g = min(gate, 7), u = clamp(up,
 * -7, 7), (u + 1) g sigmoid(1.702 g), down (F, d) and its bias; and two
 * intermediate slices (expert-TP) with the down bias on the first sum to
 * the whole. */
Test(expert, gpt_oss_clamped_swiglu_with_biases)
{
    rng_t r = {11};
    int n = 5, d = 12, F = 6;
    float limit = 7.0f;
    float *x = NEW(float, n * d), *w1 = NEW(float, d * 2 * F), *w2 = NEW(float, F * d),
          *b13 = NEW(float, 2 * F), *b2 = NEW(float, d), *out = NEW(float, n * d),
          *part = NEW(float, n * d), *h = NEW(float, 2 * n * F);
    fill(&r, x, (size_t)n * d, 3), fill(&r, w1, (size_t)d * 2 * F, 1.5f);
    fill(&r, w2, (size_t)F * d, 1), fill(&r, b13, 2 * (size_t)F, 2), fill(&r, b2, (size_t)d, 1);
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_expert_job_t j = {.out = out, .x = x, .w1 = w1, .w2 = w2, .b13 = b13, .b2 = b2, .n = n};
    layer_expert_group(&c, &j, 1, h, d, F, F, LAYER_ACT_SWIGLU_OAI, limit, false);
    int clamped = 0;
    for (int t = 0; t < n; t++)
        for (int i = 0; i < d; i++) {
            double want = b2[i];
            for (int f = 0; f < F; f++) {
                double g = b13[2 * f], u = b13[2 * f + 1];
                for (int e = 0; e < d; e++) {
                    g += (double)x[t * d + e] * w1[e * 2 * F + 2 * f];
                    u += (double)x[t * d + e] * w1[e * 2 * F + 2 * f + 1];
                }
                clamped += (g > limit) + (fabs(u) > limit);
                g = g < limit ? g : limit;
                u = u < -limit ? -limit : u > limit ? limit : u;
                want += (u + 1) * g / (1 + exp(-1.702 * g)) * w2[f * d + i];
            }
            cr_assert(fabs(out[t * d + i] - want) < 1e-4 * (1 + fabs(want)), "%d %d: %g vs %g", t,
                      i, out[t * d + i], want);
        }
    cr_assert_gt(clamped, 0, "the data should reach the clamps");
    /* two slices of F / 2, the second without the down bias, accumulated */
    int Fh = F / 2;
    layer_expert_job_t a = {.out = part, .x = x, .w1 = w1, .w2 = w2, .b13 = b13, .b2 = b2, .n = n};
    layer_expert_job_t b = {.out = part, .x = x, .w1 = w1 + 2 * Fh, .w2 = w2 + (size_t)Fh * d,
                            .b13 = b13 + 2 * Fh, .n = n};
    layer_expert_group(&c, &a, 1, h, d, Fh, F, LAYER_ACT_SWIGLU_OAI, limit, false);
    layer_expert_group(&c, &b, 1, h, d, Fh, F, LAYER_ACT_SWIGLU_OAI, limit, true);
    for (int i = 0; i < n * d; i++)
        cr_assert(fabsf(part[i] - out[i]) < 1e-4f * (1 + fabsf(out[i])), "%d", i);
    emu_dev_destroy(dev);
    free(x), free(w1), free(w2), free(b13), free(b2), free(out), free(part), free(h);
}

/* gpt-oss's router: the bias joins the logits before the top-k, then a
 * softmax over the k chosen: with x = 0 the logits are the bias. */
Test(router, logit_bias_before_topk_softmax)
{
    int E = 6, k = 2, d = 4, idx[2];
    float x[4] = {0}, wg[24], logits[6], w[2], bias[6] = {0.1f, 2.0f, -1.0f, 2.0f, 0.5f, 1.5f};
    for (int i = 0; i < 24; i++) wg[i] = (float)i;
    emu_dev_t *dev = dev_new();
    layer_ctx_t c = ctx_of(dev, true);
    layer_gate_t g = {.logit_bias = bias};
    layer_router(&c, idx, w, logits, x, wg, 1, d, E, k, LAYER_ROUTE_TOPK_SOFTMAX, &g);
    cr_assert_eq(idx[0], 1); /* ties to the lower index */
    cr_assert_eq(idx[1], 3);
    cr_assert_float_eq(w[0], 0.5f, 1e-7f);
    cr_assert_float_eq(w[1], 0.5f, 1e-7f);
    bias[3] = 1.0f;
    layer_router(&c, idx, w, logits, x, wg, 1, d, E, k, LAYER_ROUTE_TOPK_SOFTMAX, &g);
    cr_assert_eq(idx[1], 5);
    cr_assert_float_eq(w[0], (float)(1 / (1 + exp(-0.5))), 1e-6f);
    emu_dev_destroy(dev);
}
