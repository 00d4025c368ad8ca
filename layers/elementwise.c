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
            if (!layer_weights_read(out + (int64_t)t * d, row, d))
                for (int i = 0; i < d; i++) out[(int64_t)t * d + i] = row[i];
        }
    emu_charge(c->dev, EMU_KERNEL_EMBED, 0.0,
               2.0 * T * d * emu_dtype_size(c->dtype));
}

/* RMSNorm's kernel, which with added > 0 also made a residual update of
 * that many values (vLLM's fused_add_rms_norm: it reads the update and the
 * residual, writes the residual and the normed rows, in one launch). */
static void rmsnorm_charge(layer_ctx_t *c, int T, int d, double added)
{
    double s = (double)emu_dtype_size(c->dtype);
    emu_charge(c->dev, EMU_KERNEL_NORM, 4.0 * T * d + added,
               s * (2.0 * T * d + d + 2.0 * added));
}

static void rmsnorm_math(float *out, const float *in, const float *w, int T, int d, float eps)
{
    for (int t = 0; t < T; t++) {
        const float *x = in + (int64_t)t * d;
        float *y = out + (int64_t)t * d;
        /* the sum of squares in double: the mean is then exact to fp32 */
        double ss = 0.0;
        for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
        float r = (float)(1.0 / sqrt(ss / d + eps));
        for (int i = 0; i < d; i++) y[i] = x[i] * r * w[i];
    }
}

void layer_rmsnorm(layer_ctx_t *c, float *out, const float *in, const float *w,
                   int T, int d, float eps)
{
    if (c->math) rmsnorm_math(out, in, w, T, d, eps);
    rmsnorm_charge(c, T, d, 0);
}

void layer_rmsnorm_pending(layer_ctx_t *c, float *out, const float *in, const float *w, int T,
                           int d, float eps, int64_t *pending)
{
    if (c->math) rmsnorm_math(out, in, w, T, d, eps);
    rmsnorm_charge(c, T, d, (double)*pending);
    *pending = 0;
}

static double yarn_mscale(double scale, double m)
{
    return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0;
}

void layer_rope_yarn(layer_rope_t *r, double factor, double original_max,
                     double beta_fast, double beta_slow, double mscale,
                     double mscale_all_dim, bool truncate,
                     double attention_factor)
{
    r->yarn_factor = factor;
    r->yarn_original_max = original_max;
    /* transformers reads them with `or 32` / `or 1`: 0 is unset */
    r->beta_fast = beta_fast ? beta_fast : 32;
    r->beta_slow = beta_slow ? beta_slow : 1;
    r->truncate = truncate;
    if (attention_factor == 0)
        attention_factor = mscale && mscale_all_dim
            ? yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
            : yarn_mscale(factor, 1);
    r->attention_factor = attention_factor;
}

/* find_correction_dim: the dim whose wavelength turns n times over the
 * original context; the same order of operations as the Python. */
static double yarn_corr_dim(const layer_rope_t *r, double n, int rd)
{
    return rd * log(r->yarn_original_max / (n * 2 * M_PI)) /
           (2 * log(r->theta));
}

/* find_correction_range and linear_ramp_factor's singularity guard: the
 * ramp is (i - *lo) / *span. */
static void yarn_range(const layer_rope_t *r, int rd, double *lo, double *span)
{
    double a = yarn_corr_dim(r, r->beta_fast, rd);
    double b = yarn_corr_dim(r, r->beta_slow, rd);
    if (r->truncate) a = floor(a), b = ceil(b);
    a = a > 0 ? a : 0;
    b = b < rd - 1 ? b : rd - 1;
    if (a == b) b += 0.001;
    *lo = a;
    *span = b - a;
}

/* One YaRN frequency in fp32, each step rounded where torch rounds: the
 * Python scalars (theta, factor, low, high - low) become fp32 operands. */
static float yarn_freq(const layer_rope_t *r, int rd, int i, double lo,
                       double span)
{
    float e = (float)(2 * i) / (float)rd;
    float pf = (float)pow((double)(float)r->theta, (double)e);
    float extra = 1.0f / pf, inter = 1.0f / ((float)r->yarn_factor * pf);
    float ramp = ((float)i - (float)lo) / (float)span;
    ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
    float ef = 1.0f - ramp; /* inv_freq_extrapolation_factor */
    float ie = inter * (1.0f - ef), ee = extra * ef;
    return ie + ee;
}

void layer_rope_freqs(const layer_rope_t *r, int hd, double *inv)
{
    int rd = r->dim > 0 ? r->dim : hd;
    if (!(r->yarn_factor > 0)) {
        /* the expression moemu always used: golden runs stay bit-identical */
        for (int i = 0; i < rd / 2; i++) inv[i] = pow(r->theta, -2.0 * i / rd);
        return;
    }
    double lo, span;
    yarn_range(r, rd, &lo, &span);
    for (int i = 0; i < rd / 2; i++) inv[i] = yarn_freq(r, rd, i, lo, span);
}

/* cs, sn (half) for one position; af != 1 scales them in fp32 as torch's
 * `emb.cos() * attention_scaling` does. */
static void rope_table(float *cs, float *sn, const double *inv, int half,
                       int pos, float af)
{
    for (int i = 0; i < half; i++) {
        float a = (float)((double)pos * inv[i]);
        cs[i] = (float)cos((double)a);
        sn[i] = (float)sin((double)a);
    }
    if (af != 1.0f)
        for (int i = 0; i < half; i++) cs[i] *= af, sn[i] *= af;
}

static void rope_head(float *v, const float *cs, const float *sn, int half,
                      bool interleave)
{
    if (interleave)
        for (int i = 0; i < half; i++) {
            float x1 = v[2 * i], x2 = v[2 * i + 1];
            v[2 * i] = x1 * cs[i] - x2 * sn[i];
            v[2 * i + 1] = x2 * cs[i] + x1 * sn[i];
        }
    else
        for (int i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cs[i] - x2 * sn[i];
            v[i + half] = x2 * cs[i] + x1 * sn[i];
        }
}

static void rope_math(float *x, const int *pos, int T, int nh, int hd, const layer_rope_t *r)
{
    int rd = r->dim > 0 ? r->dim : hd, half = rd / 2, n1 = half > 0 ? half : 1;
    double inv[n1];
    layer_rope_freqs(r, hd, inv);
    float cs[n1], sn[n1];
    float af = r->attention_factor ? (float)r->attention_factor : 1.0f;
    int last = -1;
    for (int t = 0; t < T; t++) {
        if (pos[t] != last) {
            rope_table(cs, sn, inv, half, pos[t], af);
            last = pos[t];
        }
        for (int h = 0; h < nh; h++)
            rope_head(x + ((int64_t)t * nh + h) * hd, cs, sn, half, r->interleave);
    }
}

/* The kernel rotating nh heads of T rows: only the rotated dims are read
 * and written. */
static void rope_charge(layer_ctx_t *c, int T, int nh, int hd, const layer_rope_t *r)
{
    double n = (double)T * nh * (r->dim > 0 ? r->dim : hd);
    emu_charge(c->dev, EMU_KERNEL_ROPE, 3.0 * n, 2.0 * n * emu_dtype_size(c->dtype));
}

void layer_rope(layer_ctx_t *c, float *x, const int *pos, int T, int nh, int hd,
                const layer_rope_t *r)
{
    if (c->math) rope_math(x, pos, T, nh, hd, r);
    rope_charge(c, T, nh, hd, r);
}

void layer_rope_qk(layer_ctx_t *c, float *q, int nq, float *k, int nk, const int *pos, int T,
                   int hd, const layer_rope_t *r)
{
    if (c->math) rope_math(q, pos, T, nq, hd, r), rope_math(k, pos, T, nk, hd, r);
    if (layer_fused(c)) {
        rope_charge(c, T, nq + nk, hd, r);
        return;
    }
    rope_charge(c, T, nq, hd, r);
    rope_charge(c, T, nk, hd, r);
}

void layer_add(layer_ctx_t *c, float *x, const float *y, int64_t n)
{
    if (c->math)
        for (int64_t i = 0; i < n; i++) x[i] += y[i];
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, (double)n,
               3.0 * n * emu_dtype_size(c->dtype));
}

void layer_residual(layer_ctx_t *c, float *x, const float *y, int64_t n, float a,
                    int64_t *pending)
{
    if (!layer_fused(c)) {
        layer_axpy(c, x, y, n, a);
        return;
    }
    for (int64_t i = 0; c->math && i < n; i++) x[i] += a == 1.0f ? y[i] : a * y[i];
    *pending += n;
}

void layer_residual_flush(layer_ctx_t *c, int64_t *pending)
{
    if (*pending > 0)
        emu_charge(c->dev, EMU_KERNEL_ELEMWISE, (double)*pending,
                   3.0 * (double)*pending * emu_dtype_size(c->dtype));
    *pending = 0;
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
