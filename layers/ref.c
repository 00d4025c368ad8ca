/* Reference kernels: plain loops in double, from DESIGN.md's semantics.
 * Slow on purpose; clarity over speed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers/layers_ref.h"

void ref_linear(double *out, const float *in, const float *w, int T, int n_in,
                int n_out, int ldw, bool accumulate)
{
    for (int t = 0; t < T; t++)
        for (int o = 0; o < n_out; o++) {
            double s = 0;
            for (int i = 0; i < n_in; i++)
                s += (double)in[(size_t)t * n_in + i] *
                     (double)w[(size_t)o * ldw + i];
            double *y = &out[(size_t)t * n_out + o];
            *y = accumulate ? *y + s : s;
        }
}

void ref_embed(float *out, const int *tok, const float *emb, int T, int d)
{
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d; i++)
            out[(size_t)t * d + i] = emb[(size_t)tok[t] * d + i];
}

void ref_rmsnorm(double *out, const float *in, const float *w, int T, int d,
                 float eps)
{
    for (int t = 0; t < T; t++) {
        const float *x = in + (size_t)t * d;
        double ss = 0;
        for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
        double r = 1.0 / sqrt(ss / d + (double)eps);
        for (int i = 0; i < d; i++)
            out[(size_t)t * d + i] = (double)x[i] * r * (double)w[i];
    }
}

void ref_rope_angle(float *ang, float *c, float *s, int pos, int i, int hd,
                    double theta)
{
    double a = (double)pos * pow(theta, -2.0 * i / hd);
    float af = (float)a;
    *ang = af;
    *c = (float)cos((double)af);
    *s = (float)sin((double)af);
}

static double f32(double v) { return (float)v; }

/* _compute_yarn_parameters for frequency i, every torch op rounded to fp32
 * and every Python one left in double. */
static double ref_yarn_freq(const layer_rope_t *r, int rd, int i)
{
    double rot[2] = {r->beta_fast, r->beta_slow}, cd[2];
    for (int k = 0; k < 2; k++) /* find_correction_dim */
        cd[k] = rd * log(r->yarn_original_max / (rot[k] * 2 * M_PI)) /
                (2 * log(r->theta));
    double low = r->truncate ? floor(cd[0]) : cd[0];
    double high = r->truncate ? ceil(cd[1]) : cd[1];
    low = fmax(low, 0);
    high = fmin(high, rd - 1);
    if (low == high) high += 0.001;
    double ramp = f32(f32(i - f32(low)) / f32(high - low));
    ramp = fmin(fmax(ramp, 0), 1);
    double extrap_factor = f32(1 - ramp);
    double pos_freq = f32(pow(f32(r->theta), f32((double)(2 * i) / rd)));
    double extrap = f32(1 / pos_freq);
    double interp = f32(1 / f32(f32(r->yarn_factor) * pos_freq));
    return f32(f32(interp * f32(1 - extrap_factor)) +
               f32(extrap * extrap_factor));
}

double ref_rope_freq(const layer_rope_t *r, int hd, int i)
{
    int rd = r->dim ? r->dim : hd;
    if (r->yarn_factor == 0) return pow(r->theta, -2.0 * i / rd);
    return ref_yarn_freq(r, rd, i);
}

void ref_rope(double *out, const float *x, const int *pos, int T, int nh,
              int hd, const layer_rope_t *r)
{
    int rd = r->dim ? r->dim : hd, half = rd / 2;
    double af = f32(r->attention_factor ? r->attention_factor : 1);
    for (size_t j = 0; j < (size_t)T * nh * hd; j++) out[j] = x[j];
    for (int t = 0; t < T; t++)
        for (int i = 0; i < half; i++) {
            float a = (float)((double)pos[t] * ref_rope_freq(r, hd, i));
            double c = f32(f32(cos((double)a)) * af);
            double s = f32(f32(sin((double)a)) * af);
            /* the pair rotated together */
            int i1 = r->interleave ? 2 * i : i;
            int i2 = r->interleave ? 2 * i + 1 : i + half;
            for (int h = 0; h < nh; h++) {
                size_t base = ((size_t)t * nh + h) * hd;
                double x1 = x[base + i1], x2 = x[base + i2];
                out[base + i1] = x1 * c - x2 * s;
                out[base + i2] = x2 * c + x1 * s;
            }
        }
}

int64_t ref_attention_pairs(int T, int q0, int k0, int k1, int W)
{
    int64_t n = 0;
    for (int t = 0; t < T; t++)
        for (int p = k0; p < k1; p++)
            if (p <= q0 + t && (W <= 0 || p > q0 + t - W)) n++;
    return n;
}

void ref_attention(double *out, double *lse, const float *q, const float *kc,
                   const float *vc, int T, int q0, int k0, int k1, int H,
                   int Hkv, int hd, int ldc)
{
    int nk = k1 - k0;
    int group = H / Hkv;
    double scale = 1.0 / sqrt((double)hd);
    /* The whole score matrix of one head: S (T, nk), -inf where masked. */
    double *S = malloc(sizeof *S * ((size_t)T * (nk > 0 ? nk : 1)));
    for (int h = 0; h < H; h++) {
        int g = h / group;
        const float *K = kc + (size_t)g * ldc * hd;
        const float *V = vc + (size_t)g * ldc * hd;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < nk; j++) {
                double sc = -INFINITY;
                if (k0 + j <= q0 + t) {
                    const float *qv = q + ((size_t)t * H + h) * hd;
                    const float *kv = K + (size_t)j * hd;
                    double dot = 0;
                    for (int i = 0; i < hd; i++) dot += (double)qv[i] * kv[i];
                    sc = dot * scale;
                }
                S[(size_t)t * nk + j] = sc;
            }
        for (int t = 0; t < T; t++) {
            double *srow = S + (size_t)t * nk;
            double *o = out + ((size_t)t * H + h) * hd;
            double m = -INFINITY;
            for (int j = 0; j < nk; j++)
                if (srow[j] > m) m = srow[j];
            for (int i = 0; i < hd; i++) o[i] = 0;
            if (m == -INFINITY) { /* no visible key */
                if (lse) lse[(size_t)t * H + h] = -INFINITY;
                continue;
            }
            double sum = 0;
            for (int j = 0; j < nk; j++) {
                srow[j] = exp(srow[j] - m); /* 0 where masked */
                sum += srow[j];
            }
            for (int j = 0; j < nk; j++) {
                double pj = srow[j] / sum;
                if (pj == 0) continue;
                for (int i = 0; i < hd; i++)
                    o[i] += pj * V[(size_t)j * hd + i];
            }
            if (lse) lse[(size_t)t * H + h] = m + log(sum);
        }
    }
    free(S);
}

void ref_add(double *out, const float *x, const float *y, int64_t n)
{
    for (int64_t i = 0; i < n; i++) out[i] = (double)x[i] + (double)y[i];
}

void ref_router(int *idx, double *w, double *p, const float *x,
                const float *wg, int T, int d, int E, int k, layer_route_t how)
{
    double *pr = malloc(sizeof *pr * (size_t)E);
    bool *taken = malloc(sizeof *taken * (size_t)E);
    for (int t = 0; t < T; t++) {
        double m = -INFINITY;
        for (int e = 0; e < E; e++) {
            double s = 0;
            for (int i = 0; i < d; i++)
                s += (double)x[(size_t)t * d + i] * wg[(size_t)e * d + i];
            pr[e] = s;
            if (s > m) m = s;
        }
        double z = 0;
        for (int e = 0; e < E; e++) {
            pr[e] = exp(pr[e] - m);
            z += pr[e];
        }
        for (int e = 0; e < E; e++) {
            pr[e] /= z;
            taken[e] = false;
            if (p) p[(size_t)t * E + e] = pr[e];
        }
        double wsum = 0;
        for (int j = 0; j < k; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) /* strict >: ties to the lower e */
                if (!taken[e] && (best < 0 || pr[e] > pr[best])) best = e;
            taken[best] = true;
            idx[(size_t)t * k + j] = best;
            wsum += pr[best];
        }
        if (how == LAYER_ROUTE_SOFTMAX_TOPK) wsum = 1;
        for (int j = 0; j < k; j++)
            w[(size_t)t * k + j] = pr[idx[(size_t)t * k + j]] / wsum;
    }
    free(taken);
    free(pr);
}

int64_t ref_capacity(double cf, int64_t T, int k, int E)
{
    if (cf == 0) return INT64_MAX;
    /* cf = num / 1e9 exactly; cap = ceil(num * T * k / (1e9 * E)). */
    __int128 num = (__int128)llround(cf * 1e9) * T * k;
    __int128 den = (__int128)1000000000 * E;
    __int128 cap = (num + den - 1) / den;
    return cap > INT64_MAX ? INT64_MAX : (int64_t)cap;
}

int64_t ref_apply_capacity(uint8_t *keep, int64_t *count, const int *idx,
                           int T, int k, int E, int64_t cap)
{
    int64_t *taken = calloc((size_t)E, sizeof *taken);
    int64_t dropped = 0;
    for (int t = 0; t < T; t++)
        for (int j = 0; j < k; j++) {
            int e = idx[(size_t)t * k + j];
            bool ok = taken[e] < cap;
            keep[(size_t)t * k + j] = ok;
            if (ok) taken[e]++;
            else dropped++;
        }
    if (count) memcpy(count, taken, sizeof *taken * (size_t)E);
    free(taken);
    return dropped;
}

void ref_expert(double *out, const float *x, const float *w1, const float *w3,
                const float *w2, int n, int d, int F, int ldw2,
                layer_act_t act, bool accumulate)
{
    double *h = malloc(sizeof *h * (size_t)(F > 0 ? F : 1));
    for (int r = 0; r < n; r++) {
        const float *xr = x + (size_t)r * d;
        for (int f = 0; f < F; f++) {
            double a = 0, b = 0;
            for (int i = 0; i < d; i++) {
                a += (double)xr[i] * w1[(size_t)f * d + i];
                if (act == LAYER_ACT_SILU)
                    b += (double)xr[i] * w3[(size_t)f * d + i];
            }
            if (act == LAYER_ACT_SILU)
                h[f] = a / (1.0 + exp(-a)) * b;
            else
                h[f] = 0.5 * a * (1.0 + erf(a / sqrt(2.0)));
        }
        for (int o = 0; o < d; o++) {
            double s = 0;
            for (int f = 0; f < F; f++) s += h[f] * w2[(size_t)o * ldw2 + f];
            double *y = &out[(size_t)r * d + o];
            *y = accumulate ? *y + s : s;
        }
    }
    free(h);
}

int ref_argmax(const float *logits, int n)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (isnan(logits[i])) continue;
        if (best < 0 || logits[i] > logits[best]) best = i;
    }
    return best < 0 ? 0 : best;
}
