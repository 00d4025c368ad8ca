/* Products of a few rows (decode, and experts that received few tokens),
 * attention's products in the same order of sums (layer_inorder_sgemm),
 * and the helper threads that share a device's work (layer_par_for).
 *
 * OpenBLAS's sgemm copies the whole weight operand into its packed panels
 * before it multiplies, whatever M is: at M = 1 that is three passes over
 * the weights where one would do, and packed weights cost a fourth (their
 * widening). These kernels read each weight once, widening packed ones in
 * registers. Their sums have an order fixed by K alone (never by M, N,
 * the threads or the host), so packed and fp32 weights give the same
 * bits, as with sgemm:
 * - with trans_b (B is N x K), k is padded with zeros to a multiple of 64
 *   and summed in 64 lanes (lane k mod 64), each a chain of fused
 *   multiply-adds (fmaf: one rounding, the same bits with or without the
 *   instruction); then the lanes are halved in place down to one;
 * - without (B is K x N), each output sums k in order, by fmaf. */
#define _GNU_SOURCE /* sched_getaffinity, pthread_attr_setaffinity_np */
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

enum {
    LANES = 64,    /* independent chains: 4 vectors of AVX-512, 8 of AVX2 */
    NT_BLOCK = 32, /* outputs a thread takes at once (B's rows) */
    NN_BLOCK = 256, /* ... (B's columns) */
    POOL_MAX = 63, /* helper threads at most */
    SHARE_BYTES = 1 << 19, /* weights worth waking helpers for */
    PF = 4, /* rows ahead that the 4-row kernel prefetches: the hardware
              * prefetcher alone reads a third slower on one core */
};

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define SKINNY_X86 1
#endif
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
/* fmaf vectorizes only where the target has FMA; elsewhere it is libm's,
 * slower but the same bits */
#define SKINNY_HOT __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define SKINNY_HOT
#endif

/* A row of weights: fp32, or packed (fp16, bf16) */
typedef struct {
    const float *f;
    const uint16_t *q;
    emu_dtype_t dt;
} wrow_t;

static float wrow_at(wrow_t w, int k)
{
    if (!w.q) return w.f[k];
    return w.dt == EMU_DTYPE_FP16 ? emu_f16_to_f32(w.q[k]) : emu_bf16_to_f32(w.q[k]);
}

/* The sum of a[k] w[k], k < K, in the order above: the definition, which
 * the vector forms below reproduce */
static float dot_portable(const float *a, wrow_t w, int K)
{
    float s[LANES] = {0};
    int padded = (K + LANES - 1) / LANES * LANES;
    for (int k = 0; k < padded; k++)
        s[k % LANES] = k < K ? fmaf(a[k], wrow_at(w, k), s[k % LANES])
                             : fmaf(0.0f, 0.0f, s[k % LANES]);
    for (int h = LANES / 2; h > 0; h /= 2)
        for (int u = 0; u < h; u++) s[u] += s[u + h];
    return s[0];
}

/* The last K mod 64 values of a and w, padded with zeros to 64: the same
 * sums as the scalar form's padding, one vector step long. */
static void dot_tail(const float *a, wrow_t w, int K, int full, float *at, void *wt)
{
    int n = K - full, sz = w.q ? 2 : 4;
    memset(at, 0, sizeof(float) * LANES);
    memset(wt, 0, (size_t)sz * LANES);
    memcpy(at, a + full, sizeof(float) * (size_t)n);
    memcpy(wt, w.q ? (const void *)(w.q + full) : (const void *)(w.f + full), (size_t)(sz * n));
}

#if SKINNY_X86
#define TGT512 __attribute__((target("avx512f"), always_inline)) static inline
TGT512 __m512 load512(const void *w, emu_dtype_t dt, int k)
{
    if (dt == EMU_DTYPE_FP32) return _mm512_loadu_ps((const float *)w + k);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + k));
    if (dt == EMU_DTYPE_FP16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* c[0..4) += a[k..k+64) w[k..k+64) */
TGT512 void step512(__m512 *c, const float *a, const void *w, emu_dtype_t dt, int k)
{
#pragma GCC unroll 4 /* so that c stays in registers */
    for (int i = 0; i < 4; i++)
        c[i] = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16 * i), load512(w, dt, k + 16 * i), c[i]);
}

/* lanes 0-15 in c[0], ..., 48-63 in c[3], halved as the scalar form does */
TGT512 float reduce512(__m512 *c)
{
    __m512 x = _mm512_add_ps(_mm512_add_ps(c[0], c[2]), _mm512_add_ps(c[1], c[3]));
    __m256 y = _mm256_add_ps(_mm512_castps512_ps256(x),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
    __m128 z = _mm_add_ps(_mm256_castps256_ps128(y), _mm256_extractf128_ps(y, 1));
    z = _mm_add_ps(z, _mm_movehl_ps(z, z));
    z = _mm_add_ss(z, _mm_movehdup_ps(z));
    return _mm_cvtss_f32(z);
}

__attribute__((target("avx512f"))) static float dot_avx512(const float *a, wrow_t w, int K)
{
    const void *p = w.q ? (const void *)w.q : (const void *)w.f;
    emu_dtype_t dt = w.q ? w.dt : EMU_DTYPE_FP32;
    __m512 c[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    int full = K / LANES * LANES;
    /* dt constant in each loop, so that each is the loop of one dtype */
    if (dt == EMU_DTYPE_FP32)
        for (int k = 0; k < full; k += LANES) step512(c, a, p, EMU_DTYPE_FP32, k);
    else if (dt == EMU_DTYPE_FP16)
        for (int k = 0; k < full; k += LANES) step512(c, a, p, EMU_DTYPE_FP16, k);
    else
        for (int k = 0; k < full; k += LANES) step512(c, a, p, EMU_DTYPE_BF16, k);
    if (full < K) {
        float at[LANES], wt[LANES];
        dot_tail(a, w, K, full, at, wt);
        step512(c, at, wt, dt, 0);
    }
    return reduce512(c);
}

/* Four rows at once: sixteen chains in flight, and each value of a loaded
 * once for the four; each row's sums exactly as dot_avx512's */
__attribute__((target("avx512f"))) static void dot4_avx512(const float *a, const wrow_t *w,
                                                           int K, float *out, ptrdiff_t ahead)
{
    emu_dtype_t dt = w[0].q ? w[0].dt : EMU_DTYPE_FP32;
    const void *p[4];
    for (int r = 0; r < 4; r++) p[r] = w[r].q ? (const void *)w[r].q : (const void *)w[r].f;
    __m512 z = _mm512_setzero_ps();
    __m512 c[4][4] = {{z, z, z, z}, {z, z, z, z}, {z, z, z, z}, {z, z, z, z}};
    int full = K / LANES * LANES, sz = dt == EMU_DTYPE_FP32 ? 4 : 2;
#define DOT4_LOOP(DT)                                                                   \
    for (int k = 0; k < full; k += LANES) {                                             \
        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) {                           \
            __m512 x = _mm512_loadu_ps(a + k + 16 * i);                                 \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) c[r][i] =               \
                _mm512_fmadd_ps(x, load512(p[r], DT, k + 16 * i), c[r][i]);             \
        }                                                                               \
        for (int r = 0; r < 4; r++)                                                     \
            for (int l = 0; l < sz; l++)                                                \
                _mm_prefetch((const char *)p[r] + ahead + (k * sz + 64 * l), _MM_HINT_T0);   \
    }
    if (dt == EMU_DTYPE_FP32) DOT4_LOOP(EMU_DTYPE_FP32)
    else if (dt == EMU_DTYPE_FP16) DOT4_LOOP(EMU_DTYPE_FP16)
    else DOT4_LOOP(EMU_DTYPE_BF16)
#undef DOT4_LOOP
    for (int r = 0; r < 4; r++) {
        if (full < K) {
            float at[LANES], wt[LANES];
            dot_tail(a, w[r], K, full, at, wt);
            step512(c[r], at, wt, dt, 0);
        }
        out[r] = reduce512(c[r]);
    }
}

#define TGT256 __attribute__((target("avx2,fma,f16c"), always_inline)) static inline
TGT256 __m256 load256(const void *w, emu_dtype_t dt, int k)
{
    if (dt == EMU_DTYPE_FP32) return _mm256_loadu_ps((const float *)w + k);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + k));
    if (dt == EMU_DTYPE_FP16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

TGT256 void step256(__m256 *c, const float *a, const void *w, emu_dtype_t dt, int k)
{
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++)
        c[i] = _mm256_fmadd_ps(_mm256_loadu_ps(a + k + 8 * i), load256(w, dt, k + 8 * i), c[i]);
}

/* lanes 8i..8i+7 in c[i] */
TGT256 float reduce256(__m256 *c)
{
    for (int i = 0; i < 4; i++) c[i] = _mm256_add_ps(c[i], c[i + 4]);
    for (int i = 0; i < 2; i++) c[i] = _mm256_add_ps(c[i], c[i + 2]);
    c[0] = _mm256_add_ps(c[0], c[1]);
    __m128 z = _mm_add_ps(_mm256_castps256_ps128(c[0]), _mm256_extractf128_ps(c[0], 1));
    z = _mm_add_ps(z, _mm_movehl_ps(z, z));
    z = _mm_add_ss(z, _mm_movehdup_ps(z));
    return _mm_cvtss_f32(z);
}

__attribute__((target("avx2,fma,f16c"))) static float dot_avx2(const float *a, wrow_t w, int K)
{
    const void *p = w.q ? (const void *)w.q : (const void *)w.f;
    emu_dtype_t dt = w.q ? w.dt : EMU_DTYPE_FP32;
    __m256 z = _mm256_setzero_ps(), c[8] = {z, z, z, z, z, z, z, z};
    int full = K / LANES * LANES;
    if (dt == EMU_DTYPE_FP32)
        for (int k = 0; k < full; k += LANES) step256(c, a, p, EMU_DTYPE_FP32, k);
    else if (dt == EMU_DTYPE_FP16)
        for (int k = 0; k < full; k += LANES) step256(c, a, p, EMU_DTYPE_FP16, k);
    else
        for (int k = 0; k < full; k += LANES) step256(c, a, p, EMU_DTYPE_BF16, k);
    if (full < K) {
        float at[LANES], wt[LANES];
        dot_tail(a, w, K, full, at, wt);
        step256(c, at, wt, dt, 0);
    }
    return reduce256(c);
}
#endif

typedef float dot_fn(const float *a, wrow_t w, int K);
typedef void dot4_fn(const float *a, const wrow_t *w, int K, float *out, ptrdiff_t ahead);

static dot_fn *dot;
static dot4_fn *dot4;

static void dot4_each(const float *a, const wrow_t *w, int K, float *out, ptrdiff_t ahead)
{
    (void)ahead;
    for (int r = 0; r < 4; r++) out[r] = dot(a, w[r], K);
}

/* The 8 x 32 tile of layer_inorder_sgemm at (A, B, C) in AVX-512
 * registers: its sums those of skinny_nn (k in order, fused), alpha and
 * beta applied unfused, as store does. */
typedef void tile_fn(int K, const float *A, int lda, const float *B, int ldb, float alpha,
                     float beta, float *C, int ldc);
enum { TILE_M = LAYER_SKINNY_M, TILE_N = 32 };
static tile_fn *tile;

#if SKINNY_X86
#define RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
__attribute__((target("avx512f"))) static void tile_avx512(int K, const float *A, int lda,
                                                            const float *B, int ldb, float alpha,
                                                            float beta, float *C, int ldc)
{
    __m512 c[TILE_M][2];
#pragma GCC unroll 8
    for (int m = 0; m < TILE_M; m++) c[m][0] = c[m][1] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *b = B + (size_t)k * ldb;
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 8
        for (int m = 0; m < TILE_M; m++) {
            __m512 a = _mm512_set1_ps(A[(size_t)m * lda + k]);
            c[m][0] = _mm512_fmadd_ps(a, b0, c[m][0]);
            c[m][1] = _mm512_fmadd_ps(a, b1, c[m][1]);
        }
    }
    __m512 al = _mm512_set1_ps(alpha), be = _mm512_set1_ps(beta);
    for (int m = 0; m < TILE_M; m++)
        for (int h = 0; h < 2; h++) {
            float *p = C + (size_t)m * ldc + 16 * h;
            __m512 v = _mm512_mul_round_ps(al, c[m][h], RN);
            if (beta != 0.0f) /* beta 0 never reads C */
                v = _mm512_add_round_ps(v, _mm512_mul_round_ps(be, _mm512_loadu_ps(p), RN), RN);
            _mm512_storeu_ps(p, v);
        }
}
#endif

/* the widest this host runs: each gives the same bits */
static pthread_once_t dot_once = PTHREAD_ONCE_INIT;
static void dot_init(void)
{
    dot = dot_portable, dot4 = dot4_each;
#if SKINNY_X86
    __builtin_cpu_init();
    if (emu_simd_supported(EMU_SIMD_AVX512))
        dot = dot_avx512, dot4 = dot4_avx512, tile = tile_avx512;
    else if (emu_simd_supported(EMU_SIMD_AVX2) && __builtin_cpu_supports("fma")) /* and F16C */
        dot = dot_avx2;
#endif
}

static void store(float *c, float alpha, float v, float beta)
{
    /* beta 0 never reads C, as BLAS */
    *c = beta == 0.0f ? alpha * v : alpha * v + beta * *c;
}

/* One product: C (M, N) = alpha A (M, K) B + beta C, B (N, K) with
 * trans_b, packed in q when q is set; its outputs are split in blocks that
 * threads take in any order. */
typedef struct {
    bool trans_b;
    int M, N, K, lda, ldb, ldc;
    float alpha, beta;
    const float *A, *B;
    const uint16_t *q;
    emu_dtype_t dt;
    float *C;
} job_t;

/* Outputs [n0, n1) with B (N, K): a dot product each */
static void skinny_nt(const job_t *j, int n0, int n1)
{
    for (int n = n0; n < n1;) {
        int rows = n1 - n >= 4 ? 4 : 1;
        wrow_t w[4];
        for (int r = 0; r < rows; r++) {
            size_t off = (size_t)(n + r) * j->ldb;
            w[r] = (wrow_t){j->B + off, j->q ? j->q + off : NULL, j->dt};
        }
        for (int m = 0; m < j->M; m++) {
            const float *a = j->A + (size_t)m * j->lda;
            float v[4];
            if (rows == 4) dot4(a, w, j->K, v, PF * (ptrdiff_t)j->ldb * (j->q ? 2 : 4));
            else v[0] = dot(a, w[0], j->K);
            for (int r = 0; r < rows; r++)
                store(&j->C[(size_t)m * j->ldc + n + r], j->alpha, v[r], j->beta);
        }
        n += rows;
    }
}

/* acc[m][i] += A[m][k] b[i] for i < n */
SKINNY_HOT
static void axpy_rows(float (*acc)[NN_BLOCK], int M, const float *A, int lda, int k,
                      const float *b, int n)
{
    for (int m = 0; m < M; m++) {
        float a = A[(size_t)m * lda + k];
        for (int i = 0; i < n; i++) acc[m][i] = fmaf(a, b[i], acc[m][i]);
    }
}

/* Outputs [n0, n1) (at most NN_BLOCK) with B (K, N): each sums k in order */
static void skinny_nn(const job_t *j, int n0, int n1)
{
    int M = j->M, len = n1 - n0;
    float acc[LAYER_SKINNY_M][NN_BLOCK];
    float buf[NN_BLOCK];
    for (int m = 0; m < M; m++)
        for (int i = 0; i < len; i++) acc[m][i] = 0.0f;
    for (int k = 0; k < j->K; k++) {
        const float *b = j->B + (size_t)k * j->ldb + n0;
        if (j->q) {
            emu_dtype_widen_n(j->dt, buf, j->q + (size_t)k * j->ldb + n0, len);
            b = buf;
        }
        axpy_rows(acc, M, j->A, j->lda, k, b, len);
    }
    for (int m = 0; m < M; m++)
        for (int i = 0; i < len; i++)
            store(&j->C[(size_t)m * j->ldc + n0 + i], j->alpha, acc[m][i], j->beta);
}

/* Block b of product j: NT_BLOCK of B's rows or NN_BLOCK of its columns */
static void job_block(void *arg, int b)
{
    const job_t *j = arg;
    int per = j->trans_b ? NT_BLOCK : NN_BLOCK;
    int n0 = b * per, n1 = n0 + per < j->N ? n0 + per : j->N;
    (j->trans_b ? skinny_nt : skinny_nn)(j, n0, n1);
}

/* Tasks that a caller and helper threads take in any order */
typedef struct {
    void (*fn)(void *arg, int task);
    void *arg;
    int tasks;
    int helpers; /* that may join */
    atomic_int next;
} par_t;

static void par_work(par_t *p)
{
    for (int t; (t = atomic_fetch_add(&p->next, 1)) < p->tasks;) p->fn(p->arg, t);
}

/* Helper threads that share a caller's tasks (a product's blocks, a
 * sequence's attention heads), one caller at a time: a caller that finds
 * them busy (another device's) works alone, which is as fast when every
 * core has a device.
 * A decode step is a few hundred products of tens of microseconds each,
 * so the helpers wait for the next one spinning (yielding the core to
 * any thread that wants it) before they sleep, as OpenBLAS's threads do.
 * They start with the first product large enough, and only in the
 * process that started them (a fork's child works alone). */
enum { SPIN_YIELDS = 2000 };
static struct {
    pthread_mutex_t owner; /* held by the caller whose tasks they share */
    _Atomic(par_t *) cur;  /* its tasks */
    atomic_ulong gen;      /* task lists posted so far */
    atomic_int active;     /* helpers that may be reading cur */
    atomic_int sleepers;
    pthread_mutex_t lock;  /* for the sleepers */
    pthread_cond_t work;
    int helpers;
    pid_t pid;
} pool = {.owner = PTHREAD_MUTEX_INITIALIZER, .lock = PTHREAD_MUTEX_INITIALIZER,
          .work = PTHREAD_COND_INITIALIZER};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* Until a product is posted after `seen`. The sequentially consistent
 * order of sleepers++ here and gen++ in job_share means one of the two
 * sees the other: no wakeup is lost. */
static void helper_wait(unsigned long seen)
{
    for (int i = 0; i < SPIN_YIELDS; i++) {
        if (atomic_load(&pool.gen) != seen) return;
        sched_yield();
    }
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add(&pool.sleepers, 1);
    while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.work, &pool.lock);
    atomic_fetch_sub(&pool.sleepers, 1);
    pthread_mutex_unlock(&pool.lock);
}

static void *helper_main(void *arg)
{
    intptr_t id = (intptr_t)arg;
    for (unsigned long seen = 0;;) {
        helper_wait(seen);
        seen = atomic_load(&pool.gen);
        /* active before cur, against job_share's cur before active: a
         * helper that reads a task list is counted before it can end */
        atomic_fetch_add(&pool.active, 1);
        par_t *p = atomic_load(&pool.cur);
        if (p && id < p->helpers) par_work(p);
        atomic_fetch_sub(&pool.active, 1);
    }
    return NULL;
}

static void pool_start(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int want = cores > 1 ? (int)(cores - 1 < POOL_MAX ? cores - 1 : POOL_MAX) : 0;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* the process's cores (its main thread's), not those of the device
     * thread that starts them, which is pinned to its own */
    cpu_set_t cpus;
    if (sched_getaffinity(getpid(), sizeof cpus, &cpus) == 0)
        pthread_attr_setaffinity_np(&attr, sizeof cpus, &cpus);
    for (int i = 0; i < want; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, helper_main, (void *)(intptr_t)i) != 0)
            break; /* fewer helpers */
        pool.helpers++;
    }
    pthread_attr_destroy(&attr);
    pool.pid = getpid();
}

/* p's tasks by the caller and whichever helpers come */
static void par_share(par_t *p)
{
    atomic_store(&pool.cur, p);
    atomic_fetch_add(&pool.gen, 1);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.work);
        pthread_mutex_unlock(&pool.lock);
    }
    par_work(p);
    atomic_store(&pool.cur, NULL);
    /* every task is taken: those inside finish theirs */
    while (atomic_load(&pool.active) > 0) sched_yield();
}

void layer_par_for(int tasks, int helpers, void (*fn)(void *arg, int task), void *arg)
{
    par_t p = {fn, arg, tasks, helpers, 0};
    if (tasks > 1 && helpers > 0) {
        pthread_once(&pool_once, pool_start);
        if (pool.helpers > 0 && pool.pid == getpid() && pthread_mutex_trylock(&pool.owner) == 0) {
            par_share(&p);
            pthread_mutex_unlock(&pool.owner);
            return;
        }
    }
    par_work(&p);
}

void layer_skinny_sgemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc)
{
    pthread_once(&dot_once, dot_init);
    job_t j = {trans_b, M, N, K, lda, ldb, ldc, alpha, beta, A, B, NULL, EMU_DTYPE_FP32, C};
    layer_packed_find(B, &j.q, &j.dt);
    int per = trans_b ? NT_BLOCK : NN_BLOCK;
    /* helpers only where the weights take longer to read than to wake them
     * (tens of microseconds), and only as many threads as BLAS may use */
    double bytes = (double)N * K * (j.q ? 2 : 4);
    layer_par_for((N + per - 1) / per, bytes >= SHARE_BYTES ? layer_threads() - 1 : 0, job_block,
                  &j);
}

void layer_inorder_sgemm(int M, int N, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc)
{
    pthread_once(&dot_once, dot_init);
    for (int r0 = 0; r0 < M; r0 += TILE_M) {
        int rows = M - r0 < TILE_M ? M - r0 : TILE_M, n0 = 0;
        const float *a = A + (size_t)r0 * lda;
        float *c = C + (size_t)r0 * ldc;
        if (tile && rows == TILE_M)
            for (; n0 + TILE_N <= N; n0 += TILE_N)
                tile(K, a, lda, B + n0, ldb, alpha, beta, c + n0, ldc);
        job_t j = {false, rows, N, K, lda, ldb, ldc, alpha, beta, a, B, NULL, EMU_DTYPE_FP32, c};
        for (; n0 < N; n0 += NN_BLOCK) skinny_nn(&j, n0, n0 + NN_BLOCK < N ? n0 + NN_BLOCK : N);
    }
}
