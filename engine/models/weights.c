/* Generated and loaded weights. Every tensor lives in one fp32 block. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/models/family.h"
#include "engine/models/checkpoint.h"

/* ---- Philox4x32-10 */

static void philox_block(uint32_t out[4], uint64_t seed, uint64_t stream,
                         uint64_t block)
{
    uint32_t c[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                     (uint32_t)(stream >> 32)};
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[1] = (uint32_t)p1;
        c[3] = (uint32_t)p0;
        c[0] = n0;
        c[2] = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    memcpy(out, c, sizeof c);
}

void wts_philox_block(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t block)
{
    philox_block(out, seed, stream, block);
}

/* philox_block's rounds for WTS_PHILOX_LANES counters side by side, one
 * array per word so that the compiler puts the lanes in vector registers:
 * a block's rounds wait on each other's products, independent ones do
 * not (2 to 3 times the blocks per second of one at a time). */
void wts_philox_blocks(uint32_t out[WTS_PHILOX_LANES][4], uint64_t seed, uint64_t stream,
                       const uint64_t block[WTS_PHILOX_LANES])
{
    enum { W = WTS_PHILOX_LANES };
    uint32_t c0[W], c1[W], c2[W], c3[W];
    for (int i = 0; i < W; i++) {
        c0[i] = (uint32_t)block[i];
        c1[i] = (uint32_t)(block[i] >> 32);
        c2[i] = (uint32_t)stream;
        c3[i] = (uint32_t)(stream >> 32);
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < W; i++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * c0[i];
            uint64_t p1 = (uint64_t)0xCD9E8D57u * c2[i];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[i] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[i] ^ k1;
            c1[i] = (uint32_t)p1;
            c3[i] = (uint32_t)p0;
            c0[i] = n0;
            c2[i] = n2;
        }
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    for (int i = 0; i < W; i++) {
        out[i][0] = c0[i];
        out[i][1] = c1[i];
        out[i][2] = c2[i];
        out[i][3] = c3[i];
    }
}

uint32_t wts_philox(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t b[4];
    philox_block(b, seed, stream, index / 4);
    return b[index % 4];
}

uint64_t wts_stream(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

/* Norm weights are 1 + 0.25 u, so that a wrong norm shows; the embedding
 * is u; projections are u / sqrt(fan_in), PyTorch's default bound. */
static void init_law(const char *name, int64_t fan_in, double *base, double *scale)
{
    if (strstr(name, "norm")) {
        *base = 1.0;
        *scale = 0.25;
    } else if (strstr(name, "embed_tokens")) {
        *base = 0.0;
        *scale = 1.0;
    } else {
        *base = 0.0;
        *scale = 1.0 / sqrt((double)fan_in);
    }
}

void wts_generate(float *out, uint64_t seed, const char *name, int64_t fan_in,
                  int64_t offset, int64_t n, emu_dtype_t dt)
{
    double base, scale;
    init_law(name, fan_in, &base, &scale);
    uint64_t stream = wts_stream(name);
    float lo = (float)base, sc = (float)scale;
    bool exact = (double)lo == base && (double)sc == scale;
    for (int64_t i = 0; i < n;) {
        uint64_t idx = (uint64_t)(offset + i);
        uint32_t b[4];
        philox_block(b, seed, stream, idx / 4);
        for (unsigned j = (unsigned)(idx % 4); j < 4 && i < n; j++, i++) {
            /* 24 random bits: u in [-1, 1) exactly representable */
            double u = (double)(b[j] >> 8) * 0x1p-23 - 1.0;
            float v = exact ? lo + sc * (float)u : (float)(base + scale * u);
            out[i] = emu_dtype_round(dt, v);
        }
    }
}

/* ---- The layout: every tensor in one block, named as the family names
 * it. One walk serves both passes: counting (no block yet) and placing. */

typedef struct {
    wts_t *w;
    const wts_names_t *nm;
    uintptr_t base; /* where the block begins; 0 when counting */
    int64_t floats; /* placed so far */
    int n;          /* named tensors so far */
} walk_t;

/* The next tensor of ndim dimensions (shape a, b, c), named fmt with the
 * layer l and expert j: its place in the block (NULL when counting). */
static float *take(walk_t *k, const char *fmt, int l, int j, int ndim, int64_t a, int64_t b,
                   int64_t c)
{
    int64_t n = a * (ndim > 1 ? b : 1) * (ndim > 2 ? c : 1);
    float *p = k->base ? (float *)(k->base + sizeof(float) * (uintptr_t)k->floats) : NULL;
    if (p && fmt) {
        wts_tensor_t *t = &k->w->list[k->n];
        const wts_names_t *nm = k->nm;
        bool kept = fmt == nm->embed || fmt == nm->lm_head || fmt == nm->router ||
                    fmt == nm->sgate || fmt == nm->gate_up_bias || fmt == nm->down_bias;
        *t = (wts_tensor_t){.ndim = ndim, .shape = {a, b, c}, .data = p,
                            .fan_in = ndim == 1 ? a : ndim == 2 ? b : c,
                            .fp8 = k->w->cfg.fp8_block_r > 0 && ndim >= 2 && !kept};
        snprintf(t->name, sizeof t->name, fmt, l, j);
    }
    k->floats += n;
    k->n += fmt != NULL;
    return p;
}

/* The last tensor taken reads rows of fan_in: gpt-oss's experts are
 * stored (in, out), their fan-in is not their last dimension. */
static void took_fan_in(walk_t *k, int64_t fan_in)
{
    if (k->w->block && k->n > 0) k->w->list[k->n - 1].fan_in = fan_in;
}

/* Multi-head latent attention's tensors (DeepSeek). */
static void walk_mla(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    const wts_names_t *nm = k->nm;
    int64_t d = c->hidden_size, H = c->num_attention_heads, ql = c->q_lora_rank,
            lora = c->kv_lora_rank, rope = c->qk_rope_head_dim,
            qk = c->qk_nope_head_dim + rope, vd = c->v_head_dim;
    y->attn_norm = take(k, nm->attn_norm, l, 0, 1, d, 0, 0);
    if (ql > 0) {
        y->q_a = take(k, nm->q_a, l, 0, 2, ql, d, 0);
        y->q_a_norm = take(k, nm->q_a_norm, l, 0, 1, ql, 0, 0);
        y->q_b = take(k, nm->q_b, l, 0, 2, H * qk, ql, 0);
    } else {
        y->wq = take(k, nm->q, l, 0, 2, H * qk, d, 0);
    }
    y->kv_a = take(k, nm->kv_a, l, 0, 2, lora + rope, d, 0);
    y->kv_a_norm = take(k, nm->kv_a_norm, l, 0, 1, lora, 0, 0);
    y->kv_b = take(k, nm->kv_b, l, 0, 2, H * (c->qk_nope_head_dim + vd), lora, 0);
    y->wo = take(k, nm->o, l, 0, 2, d, H * vd, 0);
}

static void walk_attention(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    if (c->kv_lora_rank > 0) {
        walk_mla(k, c, y, l);
        return;
    }
    const wts_names_t *nm = k->nm;
    int64_t d = c->hidden_size, hd = c->head_dim;
    int64_t qd = c->num_attention_heads * hd, kvd = c->num_key_value_heads * hd;
    y->attn_norm = take(k, nm->attn_norm, l, 0, 1, d, 0, 0);
    y->wq = take(k, nm->q, l, 0, 2, qd, d, 0);
    y->wk = take(k, nm->k, l, 0, 2, kvd, d, 0);
    y->wv = take(k, nm->v, l, 0, 2, kvd, d, 0);
    y->wo = take(k, nm->o, l, 0, 2, d, qd, 0);
    if (c->qkv_bias) {
        y->bq = take(k, nm->bq, l, 0, 1, qd, 0, 0);
        y->bk = take(k, nm->bk, l, 0, 1, kvd, 0, 0);
        y->bv = take(k, nm->bv, l, 0, 1, kvd, 0, 0);
    }
    if (c->o_bias) y->bo = take(k, nm->bo, l, 0, 1, d, 0, 0);
    if (c->sinks) y->sinks = take(k, nm->sinks, l, 0, 1, c->num_attention_heads, 0, 0);
    if (c->qk_norm != LAYER_QKNORM_NONE) {
        bool head = c->qk_norm == LAYER_QKNORM_HEAD;
        y->qn = take(k, nm->qn, l, 0, 1, head ? hd : qd, 0, 0);
        y->kn = take(k, nm->kn, l, 0, 1, head ? hd : kvd, 0, 0);
    }
}

/* The routed experts: one tensor per matrix, or GraniteMoE's two. */
static void walk_experts(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    const wts_names_t *nm = k->nm;
    int64_t d = c->hidden_size, F = c->intermediate_size;
    int E = c->num_local_experts;
    bool silu = c->hidden_act == LAYER_ACT_SILU;
    if (nm->gate_up) { /* gpt-oss: (in, out) with biases */
        float *gu = take(k, nm->gate_up, l, 0, 3, E, d, 2 * F);
        took_fan_in(k, d);
        float *gub = take(k, nm->gate_up_bias, l, 0, 2, E, 2 * F, 0);
        took_fan_in(k, d);
        float *dn = take(k, nm->down, l, 0, 3, E, F, d);
        took_fan_in(k, F);
        float *dnb = take(k, nm->down_bias, l, 0, 2, E, d, 0);
        took_fan_in(k, F);
        for (int e = 0; gu && e < E; e++) {
            y->w1[e] = gu + (size_t)e * d * 2 * F, y->b13[e] = gub + (size_t)e * 2 * F;
            y->w2[e] = dn + (size_t)e * F * d, y->b2[e] = dnb + (size_t)e * d;
        }
        return;
    }
    if (nm->fused_in) {
        float *in = take(k, nm->fused_in, l, 0, 3, E, 2 * F, d);
        float *out = take(k, nm->fused_out, l, 0, 3, E, d, F);
        for (int e = 0; in && e < E; e++) {
            y->w1[e] = in + (size_t)e * 2 * F * d;
            y->w3[e] = y->w1[e] + (size_t)F * d;
            y->w2[e] = out + (size_t)e * d * F;
        }
        return;
    }
    for (int e = 0; e < E; e++) {
        float *w1 = take(k, nm->e1, l, e, 2, F, d, 0), *w2 = take(k, nm->e2, l, e, 2, d, F, 0);
        float *w3 = silu ? take(k, nm->e3, l, e, 2, F, d, 0) : NULL;
        if (w1) y->w1[e] = w1, y->w2[e] = w2, y->w3[e] = w3;
    }
}

/* An MLP of F: w1, w2 and (SwiGLU) w3 under the names f, into w[0..2]. */
static void walk_mlp(walk_t *k, const cfg_model_t *c, const char *const f[3], int l, int j,
                     int64_t F, float *w[3])
{
    int64_t d = c->hidden_size;
    w[0] = take(k, f[0], l, j, 2, F, d, 0);
    w[1] = take(k, f[1], l, j, 2, d, F, 0);
    w[2] = c->hidden_act == LAYER_ACT_SILU ? take(k, f[2], l, j, 2, F, d, 0) : NULL;
}

static void walk_layer(walk_t *k, const cfg_model_t *c, wts_layer_t *y, int l)
{
    const wts_names_t *nm = k->nm;
    int64_t d = c->hidden_size;
    float *w[3];
    walk_attention(k, c, y, l);
    y->moe_norm = take(k, nm->mlp_norm, l, 0, 1, d, 0, 0);
    if (cfg_layer_dense(c, l)) {
        const char *const f[3] = {nm->d1, nm->d2, nm->d3};
        walk_mlp(k, c, f, l, 0, c->dense_intermediate_size, w);
        y->dw1 = w[0], y->dw2 = w[1], y->dw3 = w[2];
        return;
    }
    y->gate = take(k, nm->router, l, 0, 2, c->num_local_experts, d, 0);
    if (c->gate_bias) y->gate_bias = take(k, nm->gate_bias, l, 0, 1, c->num_local_experts, 0, 0);
    if (nm->router_bias)
        y->router_bias = take(k, nm->router_bias, l, 0, 1, c->num_local_experts, 0, 0);
    walk_experts(k, c, y, l);
    const char *const f[3] = {nm->s1, nm->s2, nm->s3};
    for (int j = 0; j < c->num_shared_experts; j++) {
        walk_mlp(k, c, f, l, j, c->shared_expert_intermediate_size, w);
        if (w[0]) y->sw1[j] = w[0], y->sw2[j] = w[1], y->sw3[j] = w[2];
    }
    if (c->shared_gate) y->sgate = take(k, nm->sgate, l, 0, 2, 1, d, 0);
}

static void walk(walk_t *k)
{
    wts_t *w = k->w;
    const cfg_model_t *c = &w->cfg;
    int64_t V = c->vocab_size, d = c->hidden_size;
    w->embed = take(k, k->nm->embed, 0, 0, 2, V, d, 0);
    for (int l = 0; l < c->num_hidden_layers; l++) walk_layer(k, c, &w->layers[l], l);
    w->final_norm = take(k, k->nm->final_norm, 0, 0, 1, d, 0, 0);
    w->lm_head = c->tie_word_embeddings ? w->embed : take(k, k->nm->lm_head, 0, 0, 2, V, d, 0);
}

int wts_tensor_count(const wts_t *w) { return w->n_list; }

void wts_tensor_at(const wts_t *w, int i, wts_tensor_t *out) { *out = w->list[i]; }

/* ---- Allocation */

static int64_t count_floats(const cfg_model_t *c)
{
    cfg_figures_t f;
    cfg_figures(c, &f);
    return f.total;
}

double wts_host_bytes(const cfg_model_t *cfg) { return 4.0 * (double)count_floats(cfg); }

moemu_status_t wts_check_host_memory(double bytes, const char *what)
{
    emu_need_t need = {.hint = "; a dry run (--math skip) needs none, or use a model with fewer "
                               "layers"};
    emu_need_add(&need, "weights", bytes, bytes);
    return emu_need_check(&need, NULL, what);
}

/* A dry run never reads or writes a weight, but the layers slice the
 * tensors and tell absent ones (NULL) from present ones: its tensors get
 * the addresses they would have in a block at WTS_NOWHERE, which nothing
 * maps (above the 47 bits of x86-64's and AArch64's user space): no host
 * memory, no address space, and a stray access faults at once. */
#define WTS_NOWHERE (sizeof(uintptr_t) >= 8 ? (uintptr_t)1 << 48 : (uintptr_t)1 << 20)

/* Lay the tensors out in one block: host memory, or with only_address
 * addresses that are never backed (dry runs). */
static moemu_status_t wts_alloc(wts_t *w, const cfg_model_t *cfg, bool only_address)
{
    memset(w, 0, sizeof *w);
    w->cfg = *cfg;
    int L = cfg->num_hidden_layers, E = cfg->num_local_experts, S = cfg->num_shared_experts;
    int64_t n = count_floats(cfg);
    char what[128];
    snprintf(what, sizeof what, "model %s (%.3g parameters in fp32)", cfg->name, (double)n);
    if (!only_address) MOEMU_CHECK(wts_check_host_memory(4.0 * (double)n, what));
    walk_t k = {.w = w, .nm = family_of(cfg)->names};
    w->layers = calloc((size_t)L, sizeof *w->layers);
    if (w->layers) walk(&k); /* counting: no block yet */
    w->address_only = only_address;
    if (!only_address) w->block = malloc(sizeof(float) * (size_t)n);
    w->n_floats = n;
    w->ptrs = calloc((size_t)L * (5 * E + 3 * S) + 1, sizeof(float *));
    w->list = calloc((size_t)k.n + 1, sizeof *w->list);
    if ((!only_address && !w->block) || !w->layers || !w->ptrs || !w->list) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %.2f GB for the weights of %s",
                          4.0 * (double)n / 1e9, cfg->name);
    }
    if (k.floats != n) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_INTERNAL, "weight layout holds %lld floats, expected %lld",
                          (long long)k.floats, (long long)n);
    }
    w->n_list = k.n;
    float **pp = w->ptrs;
    for (int l = 0; l < L; l++, pp += 5 * E + 3 * S)
        w->layers[l] = (wts_layer_t){.w1 = pp, .w2 = pp + E, .w3 = pp + 2 * E, .sw1 = pp + 3 * E,
                                     .sw2 = pp + 3 * E + S, .sw3 = pp + 3 * E + 2 * S,
                                     .b13 = pp + 3 * E + 3 * S, .b2 = pp + 4 * E + 3 * S};
    k = (walk_t){.w = w, .nm = k.nm, .base = only_address ? WTS_NOWHERE : (uintptr_t)w->block};
    walk(&k); /* placing */
    return MOEMU_OK;
}

static int64_t tensor_elems(const wts_tensor_t *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* Generation is split into chunks of at most GEN_CHUNK elements that host
 * threads take in turn; every element is a pure function of its index, so
 * the result never depends on the threads. */
enum { GEN_CHUNK = 1 << 22 };

/* ---- FP8 storage: e4m3 values times a power-of-two scale per block of
 * the last two dimensions (UE8M0 scales, as DeepSeek-V3.1's checkpoints
 * and MXFP8 keep them), so that a generated tensor rounded to it is
 * dumped and loaded back exactly: q * s and x / s are exact. */

typedef struct {
    int64_t mats, R, C, SR, SC; /* matrices, their rows, columns, blocks */
    int br, bc;
} fp8_grid_t;

static fp8_grid_t fp8_grid(const wts_t *w, const wts_tensor_t *t)
{
    int nd = t->ndim, br = w->cfg.fp8_block_r, bc = w->cfg.fp8_block_c;
    fp8_grid_t g = {.mats = nd == 3 ? t->shape[0] : 1, .R = t->shape[nd - 2],
                    .C = t->shape[nd - 1], .br = br, .bc = bc};
    g.SR = (g.R + br - 1) / br;
    g.SC = (g.C + bc - 1) / bc;
    return g;
}

/* The least power of two s with amax / s <= 448, e4m3's largest value. */
static float fp8_scale(float amax)
{
    if (!(amax > 0)) return 1.0f;
    int e;
    float f = frexpf(amax / 448.0f, &e);
    return ldexpf(1.0f, f == 0.5f ? e - 1 : e);
}

/* t's block scales into sc (mats x SR x SC); NULL when out of memory. */
static float *fp8_scales(const wts_tensor_t *t, const fp8_grid_t *g)
{
    float *sc = calloc((size_t)(g->mats * g->SR * g->SC), sizeof *sc);
    const float *x = t->data;
    for (int64_t m = 0; sc && m < g->mats; m++)
        for (int64_t r = 0; r < g->R; r++)
            for (int64_t c = 0; c < g->C; c++, x++) {
                float *s = &sc[(m * g->SR + r / g->br) * g->SC + c / g->bc];
                if (fabsf(*x) > *s) *s = fabsf(*x);
            }
    for (int64_t i = 0; sc && i < g->mats * g->SR * g->SC; i++) sc[i] = fp8_scale(sc[i]);
    return sc;
}

/* out = t / its scales (what F8_E4M3 stores), or with round the values
 * rounded to e4m3 times the scales (what loading gives back). */
static void fp8_apply(const wts_tensor_t *t, const fp8_grid_t *g, const float *sc, float *out,
                      bool round)
{
    const float *x = t->data;
    for (int64_t m = 0; m < g->mats; m++)
        for (int64_t r = 0; r < g->R; r++)
            for (int64_t c = 0; c < g->C; c++, x++, out++) {
                float s = sc[(m * g->SR + r / g->br) * g->SC + c / g->bc];
                *out = round ? emu_e4m3_to_f32(emu_f32_to_e4m3(*x / s)) * s : *x / s;
            }
}

/* The generated FP8 tensors as FP8 stores them. */
static moemu_status_t fp8_round_all(wts_t *w)
{
    for (int i = 0; i < w->n_list; i++) {
        wts_tensor_t *t = &w->list[i];
        if (!t->fp8) continue;
        fp8_grid_t g = fp8_grid(w, t);
        float *sc = fp8_scales(t, &g);
        if (!sc) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the FP8 scales of %s",
                                   t->name);
        fp8_apply(t, &g, sc, t->data, true);
        free(sc);
    }
    return MOEMU_OK;
}

typedef struct {
    const wts_t *w;
    uint64_t seed;
    int n_tensors;
    atomic_long next; /* next chunk, counted over all tensors */
    long *first;      /* (n_tensors + 1) first chunk of each tensor */
} gen_job_t;

static void *gen_worker(void *arg)
{
    gen_job_t *job = arg;
    for (;;) {
        long c = atomic_fetch_add(&job->next, 1);
        if (c >= job->first[job->n_tensors]) return NULL;
        int i = 0;
        while (job->first[i + 1] <= c) i++;
        wts_tensor_t t;
        wts_tensor_at(job->w, i, &t);
        int64_t cnt = tensor_elems(&t);
        int64_t off = (int64_t)(c - job->first[i]) * GEN_CHUNK;
        int64_t n = cnt - off < GEN_CHUNK ? cnt - off : GEN_CHUNK;
        wts_generate(t.data + off, job->seed, t.name, t.fan_in, off, n, job->w->cfg.dtype);
    }
}

moemu_status_t wts_generate_all(wts_t *w, const cfg_model_t *cfg, uint64_t seed)
{
    MOEMU_CHECK(wts_alloc(w, cfg, false));
    int n = wts_tensor_count(w);
    gen_job_t job = {.w = w, .seed = seed, .n_tensors = n};
    atomic_init(&job.next, 0);
    job.first = calloc((size_t)n + 1, sizeof(long));
    if (!job.first) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the generation plan");
    }
    for (int i = 0; i < n; i++) {
        wts_tensor_t t;
        wts_tensor_at(w, i, &t);
        int64_t cnt = tensor_elems(&t);
        job.first[i + 1] = job.first[i] + (long)((cnt + GEN_CHUNK - 1) / GEN_CHUNK);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cores > 1 ? (int)(cores < 64 ? cores : 64) : 1;
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nt; i++)
        if (pthread_create(&th[started], NULL, gen_worker, &job) == 0) started++;
    gen_worker(&job); /* this thread works too: no thread is required */
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(job.first);
    moemu_status_t st = fp8_round_all(w);
    if (st != MOEMU_OK) wts_free(w);
    return st;
}

/* DeepSeek's checkpoints carry num_nextn_predict_layers multi-token
 * prediction layers after the model's (model.layers.L, ...): moemu
 * neither runs nor loads them. */
static bool mtp_layer(const char *name, void *arg)
{
    const cfg_model_t *c = arg;
    int l, n = 0;
    if (sscanf(name, "model.layers.%d.%n", &l, &n) != 1 || n == 0) return false;
    return l >= c->num_hidden_layers && l < c->num_hidden_layers + c->num_nextn_predict_layers;
}

/* Every tensor of the model, read from the checkpoint at path (a file, a
 * directory of shards or their index): each problem of the checkpoint
 * (missing, unexpected, misshapen, non-finite tensors) named at once. */
moemu_status_t wts_load(wts_t *w, const cfg_model_t *cfg, const char *path)
{
    ckpt_t *ck;
    MOEMU_CHECK(ckpt_open(path, &ck));
    moemu_status_t st = wts_alloc(w, cfg, false);
    ckpt_want_t *want = st == MOEMU_OK ? calloc((size_t)w->n_list + 1, sizeof *want) : NULL;
    if (st == MOEMU_OK && !want)
        st = moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory for %d tensors", path, w->n_list);
    for (int i = 0; want && i < w->n_list; i++)
        want[i] = (ckpt_want_t){.name = w->list[i].name, .ndim = w->list[i].ndim,
                                .shape = w->list[i].shape, .out = w->list[i].data};
    ckpt_read_opts_t o = {.ignore = mtp_layer, .arg = (void *)cfg, .block_r = cfg->fp8_block_r,
                          .block_c = cfg->fp8_block_c};
    if (want) st = ckpt_read_all_opts(ck, want, w->n_list, cfg->name, &o);
    if (st != MOEMU_OK && w->block) wts_free(w);
    free(want);
    ckpt_close(ck);
    return st;
}

/* Tensor t as a checkpoint stores it: ts[0] (and with FP8, its scales
 * ts[1]); *m becomes the entries used. Fails only when out of memory. */
static bool dump_entry(const wts_t *w, const wts_tensor_t *t, st_dtype_t dt,
                       st_write_tensor_t *ts, st_dtype_t *dts, char *sname, size_t cap, int *m)
{
    ts[0] = (st_write_tensor_t){.name = t->name, .ndim = t->ndim, .data = t->data};
    for (int j = 0; j < t->ndim; j++) ts[0].shape[j] = t->shape[j];
    dts[0] = dt;
    *m = 1;
    if (!t->fp8) return true;
    fp8_grid_t g = fp8_grid(w, t);
    float *sc = fp8_scales(t, &g), *q = malloc(sizeof(float) * (size_t)tensor_elems(t));
    if (!sc || !q) {
        free(sc), free(q);
        return false;
    }
    fp8_apply(t, &g, sc, q, false);
    snprintf(sname, cap, "%s_scale_inv", t->name);
    ts[0].data = q, dts[0] = ST_F8_E4M3;
    ts[1] = (st_write_tensor_t){.name = sname, .ndim = t->ndim, .data = sc};
    for (int j = 0; j < t->ndim; j++) ts[1].shape[j] = t->shape[j];
    ts[1].shape[t->ndim - 2] = g.SR, ts[1].shape[t->ndim - 1] = g.SC;
    dts[1] = ST_F32;
    *m = 2;
    return true;
}

moemu_status_t wts_dump(const wts_t *w, const char *path, int64_t shard_bytes)
{
    int n = wts_tensor_count(w), m = 0;
    st_write_tensor_t *ts = calloc(2 * (size_t)n + 1, sizeof *ts);
    st_dtype_t *dts = calloc(2 * (size_t)n + 1, sizeof *dts);
    char(*names)[160] = calloc((size_t)n + 1, sizeof *names);
    st_dtype_t dt = w->cfg.dtype == EMU_DTYPE_FP16   ? ST_F16
                    : w->cfg.dtype == EMU_DTYPE_BF16 ? ST_BF16
                                                     : ST_F32;
    bool ok = ts && dts && names;
    for (int i = 0, used; ok && i < n; i++, m += used)
        ok = dump_entry(w, &w->list[i], dt, ts + m, dts + m, names[i], sizeof names[i], &used);
    moemu_status_t st = ok ? ckpt_write_dtypes(path, ts, m, dts, shard_bytes)
                           : moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the checkpoint of %s",
                                        w->cfg.name);
    for (int i = 0; i < m; i++)
        if (dts[i] == ST_F8_E4M3 || (i && dts[i - 1] == ST_F8_E4M3)) free((void *)ts[i].data);
    free(ts), free(dts), free(names);
    return st;
}

moemu_status_t wts_address_only(wts_t *w, const cfg_model_t *cfg)
{
    return wts_alloc(w, cfg, true);
}

void wts_free(wts_t *w)
{
    free(w->block);
    free(w->layers);
    free(w->ptrs);
    free(w->list);
    memset(w, 0, sizeof *w);
}
