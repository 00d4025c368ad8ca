/* The mixture of experts: router, capacity, one expert's products. */
#include <math.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

/* The top n of v (m) into ti by value, strict >: ties to the lower index;
 * entries already -inf are never taken. */
static void top_n(int *ti, const float *v, int m, int n)
{
    for (int s = 0; s < n; s++) {
        int best = -1;
        for (int e = 0; e < m; e++) {
            bool taken = false;
            for (int j = 0; j < s; j++) taken |= ti[j] == e;
            if (!taken && (best < 0 || v[e] > v[best])) best = e;
        }
        ti[s] = best;
    }
}

/* The top k of p (E) into ti and their values into tw. */
static void top_k(int *ti, float *tw, const float *p, int E, int k)
{
    top_n(ti, p, E, k);
    for (int s = 0; s < k; s++) tw[s] = p[ti[s]];
}

/* p (n) = softmax(p), in place. */
static void softmax(float *p, int n)
{
    float mx = p[0];
    for (int e = 1; e < n; e++) mx = p[e] > mx ? p[e] : mx;
    float sum = 0.0f;
    for (int e = 0; e < n; e++) sum += (p[e] = layer_exp(p[e] - mx));
    for (int e = 0; e < n; e++) p[e] /= sum;
}

/* One token of DeepSeek's router: p (E) holds the logits, then the
 * scores; choice (E) is scratch. */
static void route_grouped(int *ti, float *tw, float *p, float *choice, int E, int k,
                          const layer_gate_t *g)
{
    if (g->sigmoid)
        for (int e = 0; e < E; e++) p[e] = 1.0f / (1.0f + layer_exp(-p[e]));
    else
        softmax(p, E);
    for (int e = 0; e < E; e++) choice[e] = g->bias ? p[e] + g->bias[e] : p[e];
    int G = g->n_group > 1 ? g->n_group : 1, per = E / G;
    if (G > 1) {
        float gs[G];
        int best[2], keep[G];
        for (int q = 0; q < G; q++) {
            top_n(best, choice + q * per, per, per > 1 && g->group_top2 ? 2 : 1);
            gs[q] = choice[q * per + best[0]];
            if (per > 1 && g->group_top2) gs[q] += choice[q * per + best[1]];
        }
        top_n(keep, gs, G, g->topk_group);
        for (int q = 0; q < G; q++) {
            bool kept = false;
            for (int j = 0; j < g->topk_group; j++) kept |= keep[j] == q;
            for (int e = q * per; e < (q + 1) * per && !kept; e++) choice[e] = -INFINITY;
        }
    }
    top_n(ti, choice, E, k);
    float tot = 0.0f;
    for (int s = 0; s < k; s++) tot += (tw[s] = p[ti[s]]);
    for (int s = 0; s < k; s++) tw[s] = (g->norm ? tw[s] / (tot + 1e-20f) : tw[s]) * g->scale;
}

LAYER_HOT void layer_router(layer_ctx_t *c, int *idx, float *w, float *logits,
                  const float *x, const float *wg, int T, int d, int E, int k,
                  layer_route_t how, const layer_gate_t *g)
{
    layer_linear(c, EMU_KERNEL_ROUTER, logits, x, wg, T, d, E, d, false);
    if (g && g->logit_bias) layer_bias(c, logits, g->logit_bias, T, E);
    /* softmax, top-k selection and renormalisation: ~5 operations an entry */
    emu_charge(c->dev, EMU_KERNEL_ROUTER, 5.0 * T * E + (double)T * k * E,
               (double)emu_dtype_size(c->dtype) * T * E +
                   8.0 * T * k);
    if (!c->math) return;
    for (int t = 0; t < T; t++) {
        float *p = logits + (int64_t)t * E, *tw = w + (int64_t)t * k;
        int *ti = idx + (int64_t)t * k;
        if (how == LAYER_ROUTE_GROUPED) {
            float choice[E];
            route_grouped(ti, tw, p, choice, E, k, g);
            continue;
        }
        if (how == LAYER_ROUTE_TOPK_SOFTMAX) {
            top_k(ti, tw, p, E, k);
            softmax(tw, k);
            continue;
        }
        softmax(p, E);
        top_k(ti, tw, p, E, k);
        if (how != LAYER_ROUTE_SOFTMAX_TOPK_NORM) continue;
        float tot = 0.0f;
        for (int s = 0; s < k; s++) tot += tw[s];
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

/* gpt-oss's expert on its rows: gate and up in one product of the
 * interleaved columns, their biases, the clamped SwiGLU, then down and its
 * bias; h holds the 2F products, compacted in place to the F values. */
static void expert_oai(const layer_expert_job_t *j, float *h, int d, int F, int ldw2,
                       float limit, bool accumulate)
{
    int n = j->n;
    layer_sgemm(false, n, 2 * F, d, 1.0f, j->x, d, j->w1, 2 * ldw2, 0.0f, h, 2 * F);
    for (int r = 0; r < n; r++)
        for (int f = 0; f < F; f++) {
            const float *gu = h + (size_t)r * 2 * F + 2 * f;
            float g = gu[0] + (j->b13 ? j->b13[2 * f] : 0.0f);
            float u = gu[1] + (j->b13 ? j->b13[2 * f + 1] : 0.0f);
            g = g < limit ? g : limit;
            u = u < -limit ? -limit : u > limit ? limit : u;
            float glu = g * (1.0f / (1.0f + layer_exp(-(g * LAYER_OAI_ALPHA))));
            h[(size_t)r * F + f] = (u + 1.0f) * glu; /* index <= the read ones */
        }
    layer_sgemm(false, n, d, F, 1.0f, h, F, j->w2, d, accumulate ? 1.0f : 0.0f, j->out, d);
    if (j->b2)
        for (int r = 0; r < n; r++)
            for (int i = 0; i < d; i++) j->out[(size_t)r * d + i] += j->b2[i];
}

/* The products of a grouped expert kernel: one per job, its rows times
 * k x n weights. */
static void expert_shapes(emu_gemm_t *g, const layer_expert_job_t *jobs, int njobs, int n, int k)
{
    for (int i = 0; i < njobs; i++) g[i] = (emu_gemm_t){jobs[i].n, n, k, 1};
}

/* The charges of gpt-oss's experts: the gate/up product (2F wide), the
 * biases and clamped SwiGLU, the down product and its bias. */
static void expert_oai_charge(layer_ctx_t *c, const layer_expert_job_t *jobs, int njobs,
                              double rows, double experts, int d, int F, bool accumulate)
{
    double s = (double)emu_dtype_size(c->dtype), ws = layer_ewsize(c);
    emu_gemm_t g[njobs];
    expert_shapes(g, jobs, njobs, 2 * F, d);
    emu_charge_gemm(c->dev, EMU_KERNEL_EXPERT, g, njobs, 4.0 * rows * d * F,
                    s * (rows * d + 2.0 * rows * F) + ws * experts * 2.0 * F * d);
    emu_charge(c->dev, EMU_KERNEL_EXPERT, 12.0 * rows * F,
               s * (3.0 * rows * F + 2.0 * experts * F));
    expert_shapes(g, jobs, njobs, d, F);
    emu_charge_gemm(c->dev, EMU_KERNEL_EXPERT, g, njobs, 2.0 * rows * F * d + rows * d,
                    s * (rows * F + rows * d * (accumulate ? 2.0 : 1.0) + experts * d) +
                        ws * experts * d * F);
}

/* Grouped experts: the work is charged per matrix over all jobs, timed by
 * each job's rows; then each job runs its products. */
LAYER_HOT void layer_expert_group(layer_ctx_t *c, const layer_expert_job_t *jobs, int njobs,
                                  float *h, int d, int F, int ldw2, layer_act_t act,
                                  float limit, bool accumulate)
{
    double rows = 0, experts = 0, s = (double)emu_dtype_size(c->dtype);
    for (int i = 0; i < njobs; i++)
        if (jobs[i].n > 0) rows += jobs[i].n, experts++;
    if (experts == 0) return;
    if (act == LAYER_ACT_SWIGLU_OAI) {
        expert_oai_charge(c, jobs, njobs, rows, experts, d, F, accumulate);
        for (int i = 0; i < njobs && c->math; i++)
            if (jobs[i].n > 0) expert_oai(&jobs[i], h, d, F, ldw2, limit, accumulate);
        return;
    }
    bool silu = act == LAYER_ACT_SILU, fp8 = layer_fp8(c, true);
    /* the products' inputs: in FP8, quantized first (the activation's
     * quantization fused into it, as vLLM's silu_and_mul_quant) */
    double a = fp8 ? LAYER_FP8_ACT : s;
    void (*gemm)(emu_dev_t *, emu_kernel_t, const emu_gemm_t *, int, double, double) =
        fp8 ? emu_charge_gemm_fp8 : emu_charge_gemm;
    if (fp8) layer_fp8_quant(c, EMU_KERNEL_EXPERT, rows * d);
    /* w1 (and w3): rows x d in, F x d weights, rows x F out */
    double ws = layer_ewsize(c);
    double in_flops = 2.0 * rows * d * F;
    double in_bytes = a * rows * d + s * rows * F + ws * experts * F * d;
    emu_gemm_t g[njobs];
    if (silu && layer_fused(c)) { /* gate and up as one product of 2F columns */
        expert_shapes(g, jobs, njobs, 2 * F, d);
        gemm(c->dev, EMU_KERNEL_EXPERT, g, njobs, 2.0 * in_flops, 2.0 * in_bytes - a * rows * d);
    } else {
        expert_shapes(g, jobs, njobs, F, d);
        gemm(c->dev, EMU_KERNEL_EXPERT, g, njobs, in_flops, in_bytes);
        if (silu) gemm(c->dev, EMU_KERNEL_EXPERT, g, njobs, in_flops, in_bytes);
    }
    emu_charge(c->dev, EMU_KERNEL_EXPERT, (silu ? 6.0 : 8.0) * rows * F,
               ((silu ? 2.0 : 1.0) * s + a) * rows * F);
    expert_shapes(g, jobs, njobs, d, F);
    gemm(c->dev, EMU_KERNEL_EXPERT, g, njobs, 2.0 * rows * F * d,
         a * rows * F + s * rows * d * (accumulate ? 2.0 : 1.0) + ws * experts * d * F);
    if (!c->math) return;
    for (int i = 0; i < njobs; i++) {
        const layer_expert_job_t *j = &jobs[i];
        if (j->n == 0) continue;
        int n = j->n;
        int64_t nf = (int64_t)n * F;
        float *h1 = h, *h3 = h + nf;
        layer_sgemm(true, n, F, d, 1.0f, j->x, d, j->w1, d, 0.0f, h1, F);
        if (silu) {
            layer_sgemm(true, n, F, d, 1.0f, j->x, d, j->w3, d, 0.0f, h3, F);
            for (int64_t k = 0; k < nf; k++)
                h1[k] = h1[k] / (1.0f + layer_exp(-h1[k])) * h3[k];
        } else {
            for (int64_t k = 0; k < nf; k++)
                h1[k] = 0.5f * h1[k] * (1.0f + erff(h1[k] * (float)M_SQRT1_2));
        }
        layer_sgemm(true, n, d, F, 1.0f, h1, F, j->w2, ldw2, accumulate ? 1.0f : 0.0f, j->out, d);
    }
}

void layer_expert(layer_ctx_t *c, float *out, float *h, const float *x, const float *w1,
                  const float *w3, const float *w2, int n, int d, int F, int ldw2,
                  layer_act_t act, bool accumulate)
{
    layer_expert_job_t j = {.out = out, .x = x, .w1 = w1, .w3 = w3, .w2 = w2, .n = n};
    layer_expert_group(c, &j, 1, h, d, F, ldw2, act, 0.0f, accumulate);
}
