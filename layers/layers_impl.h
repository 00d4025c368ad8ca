/* layers private: helpers shared by the kernels. */
#ifndef MOEMU_LAYERS_IMPL_H
#define MOEMU_LAYERS_IMPL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "emu/emu.h"

/* C (M, N) = alpha A (M, K) B + beta C, row-major, B (K, N) or with
 * trans_b (N, K), B a weight (packed or not): products of at most
 * LAYER_SKINNY_M rows by layer_skinny_sgemm, the others by OpenBLAS's
 * sgemm. */
void layer_sgemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc);
/* OpenBLAS's sgemm on B as it stands (never packed), behind the gate of
 * BLAS callers (emu_blas_enter), the one way the layers call BLAS. */
void layer_sgemm_blas(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
/* layer_sgemm when B is packed (layer_packed_add): B widened whole into a
 * scratch buffer, then the same call; false, and nothing done, when B is
 * not packed. */
bool layer_packed_sgemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc);
/* Where the values of p lie when it is packed: *q and *dt; false when not. */
bool layer_packed_find(const float *p, const uint16_t **q, emu_dtype_t *dt);

/* Products of at most LAYER_SKINNY_M rows (decode): each weight read
 * once, packed or not, its sums in an order fixed by K alone
 * (layers/skinny.c), spread over helper threads when the device's BLAS
 * may use more than one. */
enum { LAYER_SKINNY_M = 8 };
void layer_skinny_sgemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc);
/* C (M, N) = alpha A (M, K) B (K, N) + beta C, B in fp32, on the calling
 * thread: each output sums k in order by fused multiply-adds, as
 * layer_skinny_sgemm without trans_b, whatever M, the host's vector width
 * or the caller's split of the rows (attention's products). */
void layer_inorder_sgemm(int M, int N, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc);
/* Threads a device's products may use: its share of OpenBLAS's. */
int layer_threads(void);
/* fn(arg, t) for t < tasks, in any order, by the caller and at most
 * `helpers` of the host's helper threads when no other caller has them. */
void layer_par_for(int tasks, int helpers, void (*fn)(void *arg, int task), void *arg);

/* Hot loops built twice on x86-64, for AVX2 and the baseline, the better
 * picked at load time (GCC's target_clones): the same results either way,
 * since the code is the same and only the vector width differs. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define LAYER_HOT __attribute__((target_clones("avx2", "default")))
#else
#define LAYER_HOT
#endif

/* exp(x) to about 1 ulp for x in [-87.3, 88.3] (clamped outside): Cody-Waite
 * reduction and Cephes' expf polynomial. Branch-free so that loops over it
 * vectorize, and the same bits on every host, unlike libm's expf. */
static inline float layer_exp(float x)
{
    /* two selects, not branches, so that loops over it vectorize */
    x = x > 88.3f ? 88.3f : x;
    x = x < -87.3f ? -87.3f : x;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick: exact for |n| < 2^22 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    /* NaN stays NaN (in p) without converting it to an integer, which C
     * leaves undefined */
    int32_t e = ((n == n ? (int32_t)n : 0) + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s;
}

/* max(init, x[0..n)) and the sum of x[0..n) with eight independent lanes,
 * so that the loop runs at the width of the vector unit instead of the
 * latency of one chain (the lanes fix the order: the same bits on every
 * host). */
static inline float layer_row_max(const float *x, int n, float init)
{
    float m[8] = {init, init, init, init, init, init, init, init};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int u = 0; u < 8; u++) m[u] = x[j + u] > m[u] ? x[j + u] : m[u];
    for (; j < n; j++) m[0] = x[j] > m[0] ? x[j] : m[0];
    float r = m[0];
    for (int u = 1; u < 8; u++) r = m[u] > r ? m[u] : r;
    return r;
}

static inline float layer_row_sum(const float *x, int n)
{
    float s[8] = {0};
    int j = 0;
    for (; j + 8 <= n; j += 8)
        for (int u = 0; u < 8; u++) s[u] += x[j + u];
    for (; j < n; j++) s[0] += x[j];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

#endif
