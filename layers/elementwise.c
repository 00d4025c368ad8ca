/* Row-wise kernels: embedding lookup, RMSNorm, rotary embedding, residual
 * add, argmax. FLOP counts are the arithmetic operations per element. */
#include <math.h>

#include "layers/layers.h"

void layer_embed(layer_ctx_t *c, float *out, const int *tok, const float *emb,
                 int T, int d)
{
    if (c->math)
        for (int t = 0; t < T; t++) {
            const float *row = emb + (int64_t)tok[t] * d;
            for (int i = 0; i < d; i++) out[(int64_t)t * d + i] = row[i];
        }
    emu_charge(c->dev, EMU_KERNEL_EMBED, 0.0,
               2.0 * T * d * emu_dtype_size(c->dtype));
}

void layer_rmsnorm(layer_ctx_t *c, float *out, const float *in, const float *w,
                   int T, int d, float eps)
{
    if (c->math)
        for (int t = 0; t < T; t++) {
            const float *x = in + (int64_t)t * d;
            float *y = out + (int64_t)t * d;
            /* the sum of squares in double: the mean is then exact to fp32 */
            double ss = 0.0;
            for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
            float r = (float)(1.0 / sqrt(ss / d + eps));
            for (int i = 0; i < d; i++) y[i] = x[i] * r * w[i];
        }
    double s = (double)emu_dtype_size(c->dtype);
    emu_charge(c->dev, EMU_KERNEL_NORM, 4.0 * T * d, s * (2.0 * T * d + d));
}

void layer_rope(layer_ctx_t *c, float *x, const int *pos, int T, int nh, int hd,
                double theta)
{
    int half = hd / 2;
    if (c->math) {
        double inv[half > 0 ? half : 1];
        for (int i = 0; i < half; i++) inv[i] = pow(theta, -2.0 * i / hd);
        float cs[half > 0 ? half : 1], sn[half > 0 ? half : 1];
        int last = -1;
        for (int t = 0; t < T; t++) {
            if (pos[t] != last) {
                for (int i = 0; i < half; i++) {
                    float a = (float)((double)pos[t] * inv[i]);
                    cs[i] = (float)cos((double)a);
                    sn[i] = (float)sin((double)a);
                }
                last = pos[t];
            }
            for (int h = 0; h < nh; h++) {
                float *v = x + ((int64_t)t * nh + h) * hd;
                for (int i = 0; i < half; i++) {
                    float x1 = v[i], x2 = v[i + half];
                    v[i] = x1 * cs[i] - x2 * sn[i];
                    v[i + half] = x2 * cs[i] + x1 * sn[i];
                }
            }
        }
    }
    double n = (double)T * nh * hd;
    emu_charge(c->dev, EMU_KERNEL_ROPE, 3.0 * n,
               2.0 * n * emu_dtype_size(c->dtype));
}

void layer_add(layer_ctx_t *c, float *x, const float *y, int64_t n)
{
    if (c->math)
        for (int64_t i = 0; i < n; i++) x[i] += y[i];
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, (double)n,
               3.0 * n * emu_dtype_size(c->dtype));
}

void layer_axpy(layer_ctx_t *c, float *x, const float *y, int64_t n, float a)
{
    if (a == 1.0f) {
        layer_add(c, x, y, n);
        return;
    }
    if (c->math)
        for (int64_t i = 0; i < n; i++) x[i] += a * y[i];
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 2.0 * n, 3.0 * n * emu_dtype_size(c->dtype));
}

void layer_scale(layer_ctx_t *c, float *x, int64_t n, float a)
{
    if (c->math)
        for (int64_t i = 0; i < n; i++) x[i] *= a;
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, (double)n, 2.0 * n * emu_dtype_size(c->dtype));
}

void layer_bias(layer_ctx_t *c, float *x, const float *b, int T, int n)
{
    if (c->math)
        for (int t = 0; t < T; t++)
            for (int i = 0; i < n; i++) x[(int64_t)t * n + i] += b[i];
    double e = (double)T * n;
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, e, (2.0 * e + n) * emu_dtype_size(c->dtype));
}

void layer_clamp(layer_ctx_t *c, float *x, int64_t n, float lim)
{
    if (c->math)
        for (int64_t i = 0; i < n; i++) x[i] = x[i] < -lim ? -lim : x[i] > lim ? lim : x[i];
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 2.0 * n, 2.0 * n * emu_dtype_size(c->dtype));
}

int layer_argmax(const float *logits, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (!isnan(logits[i]) && (best < 0 || logits[i] > logits[best])) best = i;
    return best < 0 ? 0 : best;
}
