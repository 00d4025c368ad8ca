/* Dense products through OpenBLAS. */
#include <cblas.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

void layer_sgemm(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= LAYER_SKINNY_M)
        layer_skinny_sgemm(trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else if (!layer_packed_sgemm(trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        layer_sgemm_blas(trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void layer_sgemm_blas(bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc)
{
    emu_blas_enter();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
    emu_blas_leave();
}

int layer_threads(void) { return openblas_get_num_threads(); }

double layer_blas_resident(int rows)
{
    /* OpenBLAS's x86-64 sgemm packs a P x Q block of one operand (the
     * weights, P = 768, Q = 384) and a Q x rows panel of the other */
    return 4.0 * 384 * (768.0 + rows);
}

layer_work_t layer_linear_work(int T, int n_in, int n_out, emu_dtype_t dt)
{
    double s = (double)emu_dtype_size(dt);
    return (layer_work_t){
        .flops = 2.0 * T * n_in * n_out,
        .bytes = s * ((double)T * n_in + (double)n_in * n_out + (double)T * n_out),
    };
}

void layer_fp8_quant(layer_ctx_t *c, emu_kernel_t kind, double n)
{
    /* an absolute maximum, a scale and a conversion per value */
    emu_charge(c->dev, kind, 3.0 * n, n * ((double)emu_dtype_size(c->dtype) + LAYER_FP8_ACT));
}

void layer_linear_charge(layer_ctx_t *c, emu_kernel_t kind, int T, int n_in, int n_out,
                         bool accumulate)
{
    double s = (double)emu_dtype_size(c->dtype);
    bool fp8 = layer_fp8(c, false);
    layer_work_t wk = layer_linear_work(T, n_in, n_out, c->dtype);
    wk.bytes += (layer_wsize(c) - s) * n_in * n_out;
    if (accumulate) wk.bytes += s * T * n_out;
    if (fp8) {
        layer_fp8_quant(c, kind, (double)T * n_in);
        wk.bytes -= (s - LAYER_FP8_ACT) * T * n_in;
    }
    emu_gemm_t g = {T, n_out, n_in, 1};
    (fp8 ? emu_charge_gemm_fp8 : emu_charge_gemm)(c->dev, kind, &g, 1, wk.flops, wk.bytes);
}

void layer_linear_math(const layer_ctx_t *c, float *out, const float *in, const float *w, int T,
                       int n_in, int n_out, int ldw, bool accumulate)
{
    if (!c->math || T <= 0 || n_out <= 0) return;
    if (n_in == 0) {
        if (!accumulate)
            for (int64_t i = 0; i < (int64_t)T * n_out; i++) out[i] = 0.0f;
        return;
    }
    layer_sgemm(true, T, n_out, n_in, 1.0f, in, n_in, w, ldw, accumulate ? 1.0f : 0.0f, out,
                n_out);
}

void layer_linear(layer_ctx_t *c, emu_kernel_t kind, float *out,
                  const float *in, const float *w, int T, int n_in, int n_out,
                  int ldw, bool accumulate)
{
    layer_linear_charge(c, kind, T, n_in, n_out, accumulate);
    layer_linear_math(c, out, in, w, T, n_in, n_out, ldw, accumulate);
}

bool layer_fused(const layer_ctx_t *c)
{
    return emu_dev_spec(c->dev)->stack.kernels == EMU_KERNELS_FUSED;
}

void layer_gemm(layer_ctx_t *c, const layer_gemm_t *g, int nb, int T, int m, int n, bool w_trans)
{
    double s = (double)emu_dtype_size(c->dtype);
    emu_gemm_t shape[nb > 0 ? nb : 1];
    for (int i = 0; i < nb; i++) shape[i] = (emu_gemm_t){T, n, m, 1};
    emu_charge_gemm(c->dev, EMU_KERNEL_GEMM, shape, nb, 2.0 * nb * T * m * n,
                    nb * (s * ((double)T * m + (double)T * n) + layer_wsize(c) * m * n));
    if (!c->math || T == 0 || n == 0 || m == 0) return;
    for (int i = 0; i < nb; i++)
        layer_sgemm(w_trans, T, n, m, 1.0f, g->in + i * g->si, g->ldi, g->w + i * g->sw, g->ldw,
                    0.0f, g->out + i * g->so, g->ldo);
}
