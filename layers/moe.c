/* The mixture of experts: router, capacity, one expert's products. */
#include <math.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

LAYER_HOT void layer_router(layer_ctx_t *c, int *idx, float *w, float *logits,
                  const float *x, const float *wg, int T, int d, int E, int k)
{
    layer_linear(c, EMU_KERNEL_ROUTER, logits, x, wg, T, d, E, d, false);
    /* softmax, top-k selection and renormalisation: ~5 operations an entry */
    emu_charge(c->dev, EMU_KERNEL_ROUTER, 5.0 * T * E + (double)T * k * E,
               (double)emu_dtype_size(c->dtype) * T * E +
                   8.0 * T * k);
    if (!c->math) return;
    for (int t = 0; t < T; t++) {
        float *p = logits + (int64_t)t * E;
        float mx = p[0];
        for (int e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        float sum = 0.0f;
        for (int e = 0; e < E; e++) sum += (p[e] = layer_exp(p[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= sum;
        int *ti = idx + (int64_t)t * k;
        float *tw = w + (int64_t)t * k, tot = 0.0f;
        for (int s = 0; s < k; s++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                bool taken = false;
                for (int j = 0; j < s; j++) taken |= ti[j] == e;
                /* strict >: the lower index wins a tie */
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            ti[s] = best;
            tw[s] = p[best];
            tot += p[best];
        }
        for (int s = 0; s < k; s++) tw[s] /= tot;
    }
}

int64_t layer_capacity(double cf, int64_t T, int k, int E)
{
    if (cf <= 0.0) return INT64_MAX;
    /* cf as a decimal fraction n / 10^9, then an exact integer ceiling:
     * 1.1 * 10 * 2 / 22 is 1, not the 1.0000000000000002 of doubles */
    const unsigned __int128 scale = 1000000000u;
    unsigned __int128 n = (unsigned __int128)llround(cf * 1e9);
    unsigned __int128 num = n * (unsigned __int128)T * (unsigned)k;
    unsigned __int128 den = scale * (unsigned)E;
    unsigned __int128 cap = (num + den - 1) / den;
    return cap > INT64_MAX ? INT64_MAX : (int64_t)cap;
}

int64_t layer_apply_capacity(uint8_t *keep, int64_t *count, const int *idx,
                             int T, int k, int E, int64_t cap)
{
    int64_t local[count ? 1 : E];
    int64_t *cnt = count ? count : local;
    for (int e = 0; e < E; e++) cnt[e] = 0;
    int64_t dropped = 0;
    for (int64_t a = 0; a < (int64_t)T * k; a++) {
        int e = idx[a];
        keep[a] = cnt[e] < cap;
        if (keep[a]) cnt[e]++;
        else dropped++;
    }
    return dropped;
}

layer_work_t layer_expert_work(int n, int d, int F, layer_act_t act,
                               emu_dtype_t dt)
{
    int mats = act == LAYER_ACT_SILU ? 3 : 2;
    layer_work_t in = layer_linear_work(n, d, F, dt);
    layer_work_t o = layer_linear_work(n, F, d, dt);
    double s = (double)emu_dtype_size(dt), nf = (double)n * F;
    return (layer_work_t){
        .flops = (mats - 1) * in.flops + o.flops + (mats == 3 ? 6.0 : 8.0) * nf,
        .bytes = (mats - 1) * in.bytes + o.bytes + s * (mats == 3 ? 3.0 : 2.0) * nf,
    };
}

LAYER_HOT void layer_expert(layer_ctx_t *c, float *out, float *h, const float *x,
                  const float *w1, const float *w3, const float *w2, int n,
                  int d, int F, int ldw2, layer_act_t act, bool accumulate)
{
    float *h1 = h, *h3 = h + (int64_t)n * F;
    int64_t nf = (int64_t)n * F;
    layer_linear(c, EMU_KERNEL_EXPERT, h1, x, w1, n, d, F, d, false);
    double s = (double)emu_dtype_size(c->dtype);
    if (act == LAYER_ACT_SILU) {
        layer_linear(c, EMU_KERNEL_EXPERT, h3, x, w3, n, d, F, d, false);
        if (c->math)
            for (int64_t i = 0; i < nf; i++)
                h1[i] = h1[i] / (1.0f + layer_exp(-h1[i])) * h3[i];
        emu_charge(c->dev, EMU_KERNEL_EXPERT, 6.0 * nf, 3.0 * s * nf);
    } else {
        if (c->math)
            for (int64_t i = 0; i < nf; i++)
                h1[i] = 0.5f * h1[i] * (1.0f + erff(h1[i] * (float)M_SQRT1_2));
        emu_charge(c->dev, EMU_KERNEL_EXPERT, 8.0 * nf, 2.0 * s * nf);
    }
    layer_linear(c, EMU_KERNEL_EXPERT, out, h1, w2, n, F, d, ldw2, accumulate);
}
