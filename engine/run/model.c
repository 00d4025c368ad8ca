/* The single-device forward pass: embedding, L decoder layers (attention,
 * then the mixture of experts), final norm and lm_head; prefill by routing
 * group, then one decode pass per generated token for the whole batch. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/run/model.h"

typedef struct {
    const wts_t *w;
    const cfg_model_t *c;
    layer_ctx_t ctx;
    const model_opts_t *o;
    /* KV cache: for layer l and sequence b, K then V, each (Hkv, cap[b], hd) */
    float *kv;
    int *cap;
    int64_t *kv_off;      /* (batch) offset of sequence b inside a layer */
    int64_t kv_layer;     /* floats per layer */
    int64_t assignments, dropped;
    int batch, route_pos; /* shape of the route record */
    int64_t *load;        /* (layers, E) */
    layer_attn_seq_t *seqs; /* (batch) one pass's sequences */
} model_t;

/* Scratch for a pass over T tokens: one allocation. */
typedef struct {
    float *x, *n, *q, *k, *v, *att, *moe, *rlog, *xe, *ye, *h, *wts;
    int *idx, *where;
    uint8_t *keep;
    void *block;
} scratch_t;

static moemu_status_t scratch_alloc(scratch_t *s, const cfg_model_t *c, int T)
{
    int64_t d = c->hidden_size, qd = (int64_t)c->num_attention_heads * c->head_dim,
            kvd = (int64_t)c->num_key_value_heads * c->head_dim, k = c->num_experts_per_tok,
            E = c->num_local_experts;
    int64_t F = c->intermediate_size > c->shared_expert_intermediate_size
                    ? c->intermediate_size
                    : c->shared_expert_intermediate_size;
    int64_t nf = 3 * T * d + 2 * T * qd + 2 * T * kvd + T * E + 2 * T * k * d +
                 2 * T * F + T * k;
    int64_t ni = 2 * T * k;
    size_t bytes = sizeof(float) * (size_t)nf + sizeof(int) * (size_t)ni + (size_t)(T * k);
    s->block = malloc(bytes);
    if (!s->block)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %.2f GB of activations for %d tokens",
                          (double)bytes / 1e9, T);
    float *p = s->block;
#define TAKE(n_) (p += (n_), p - (n_))
    s->x = TAKE(T * d);
    s->n = TAKE(T * d);
    s->moe = TAKE(T * d);
    s->q = TAKE(T * qd);
    s->att = TAKE(T * qd);
    s->k = TAKE(T * kvd);
    s->v = TAKE(T * kvd);
    s->rlog = TAKE(T * E);
    s->xe = TAKE(T * k * d); /* the kept choices' rows, in expert order */
    s->ye = TAKE(T * k * d);
    s->h = TAKE(2 * T * F);
    s->wts = TAKE(T * k);
#undef TAKE
    s->idx = (int *)p;
    s->where = s->idx + T * k;
    s->keep = (uint8_t *)(s->where + T * k);
    return MOEMU_OK;
}

/* The mixture of experts on normalised rows n (T, d) into moe (T, d).
 * Routing groups are token ranges gtok[0..ng]. */
static void moe_block(model_t *m, const wts_layer_t *L, scratch_t *s, int T,
                      const int *gtok, int ng, int layer, const int *seq, const int *pos)
{
    const cfg_model_t *c = m->c;
    layer_ctx_t *x = &m->ctx;
    int d = c->hidden_size, E = c->num_local_experts, k = c->num_experts_per_tok;
    int F = c->intermediate_size;
    double sz = (double)emu_dtype_size(c->dtype);
    layer_router(x, s->idx, s->wts, s->rlog, s->n, L->gate, T, d, E, k);
    for (int g = 0; g < ng; g++) {
        int a = gtok[g], b = gtok[g + 1];
        int64_t cap = layer_capacity(c->capacity_factor, b - a, k, E);
        m->dropped += layer_apply_capacity(s->keep + (int64_t)a * k, NULL,
                                           s->idx + (int64_t)a * k, b - a, k, E, cap);
    }
    m->assignments += (int64_t)T * k;
    int64_t *load = m->load + (size_t)layer * E;
    if (m->o->route) {
        int B = m->batch, P = m->route_pos;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++) {
                int64_t a = (int64_t)t * k + j;
                m->o->route[(((int64_t)layer * B + seq[t]) * P + pos[t]) * k + j] =
                    s->keep[a] ? s->idx[a] : -1 - s->idx[a];
            }
    }
    /* every expert's kept rows, gathered in expert order and run as one
     * grouped kernel */
    int64_t nrows = 0;
    layer_expert_job_t jobs[E];
    for (int e = 0; e < E; e++) {
        int64_t first = nrows;
        for (int64_t a = 0; a < (int64_t)T * k; a++)
            if (s->idx[a] == e && s->keep[a]) {
                s->where[a] = (int)nrows;
                memcpy(s->xe + nrows * d, s->n + (a / k) * d, sizeof(float) * d);
                nrows++;
            }
        load[e] += nrows - first;
        jobs[e] = (layer_expert_job_t){.out = s->ye + first * d, .x = s->xe + first * d,
                                       .w1 = L->w1[e], .w3 = L->w3[e], .w2 = L->w2[e],
                                       .n = (int)(nrows - first)};
    }
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * sz * (double)nrows * d);
    layer_expert_group(x, jobs, E, s->h, d, F, F, c->hidden_act, false);
    /* combine in choice order; a dropped assignment contributes 0 */
    for (int t = 0; t < T; t++) {
        float *o = s->moe + (int64_t)t * d;
        memset(o, 0, sizeof(float) * d);
        for (int j = 0; j < k; j++) {
            int64_t a = (int64_t)t * k + j;
            if (!s->keep[a]) continue;
            const float *y = s->ye + (int64_t)s->where[a] * d;
            for (int i = 0; i < d; i++) o[i] += s->wts[a] * y[i];
        }
    }
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 2.0 * T * k * d,
               sz * ((double)nrows * d + (double)T * d));
    int S = c->num_shared_experts, Fs = c->shared_expert_intermediate_size;
    layer_expert_job_t shared[S > 0 ? S : 1];
    for (int j = 0; j < S; j++)
        shared[j] = (layer_expert_job_t){.out = s->moe, .x = s->n, .w1 = L->sw1[j],
                                         .w3 = L->sw3[j], .w2 = L->sw2[j], .n = T};
    layer_expert_group(x, shared, S, s->h, d, Fs, Fs, c->hidden_act, true);
}

/* One pass over T tokens: token t is sequence seq[t] at position pos[t];
 * a sequence's tokens are contiguous and in order. Logits of the rows lrow
 * (nl of them) go to logits (nl, V). */
static void forward(model_t *m, scratch_t *s, const int *tok, const int *seq,
                    const int *pos, int T, const int *gtok, int ng, const int *lrow,
                    int nl, float *logits, const char *phase, int step, int steps)
{
    const cfg_model_t *c = m->c;
    const wts_t *w = m->w;
    layer_ctx_t *x = &m->ctx;
    int d = c->hidden_size, H = c->num_attention_heads, Hkv = c->num_key_value_heads,
        hd = c->head_dim, V = c->vocab_size;
    int qd = H * hd, kvd = Hkv * hd;
    float eps = (float)c->rms_norm_eps;
    double sz = (double)emu_dtype_size(c->dtype);

    layer_embed(x, s->x, tok, w->embed, T, d);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (m->o->progress)
            m->o->progress(m->o->progress_arg, phase, step, steps, l, c->num_hidden_layers);
        const wts_layer_t *L = &w->layers[l];
        layer_rmsnorm(x, s->n, s->x, L->attn_norm, T, d, eps);
        layer_linear(x, EMU_KERNEL_GEMM, s->q, s->n, L->wq, T, d, qd, d, false);
        layer_linear(x, EMU_KERNEL_GEMM, s->k, s->n, L->wk, T, d, kvd, d, false);
        layer_linear(x, EMU_KERNEL_GEMM, s->v, s->n, L->wv, T, d, kvd, d, false);
        layer_rope(x, s->q, pos, T, H, hd, c->rope_theta);
        layer_rope(x, s->k, pos, T, Hkv, hd, c->rope_theta);
        /* append to the cache, (token, head) rows to (head, position) rows */
        float *kvl = m->kv + (int64_t)l * m->kv_layer;
        for (int t = 0; t < T; t++) {
            int b = seq[t];
            float *K = kvl + m->kv_off[b], *Vc = K + (int64_t)Hkv * m->cap[b] * hd;
            for (int g = 0; g < Hkv; g++) {
                int64_t dst = ((int64_t)g * m->cap[b] + pos[t]) * hd;
                memcpy(K + dst, s->k + (int64_t)t * kvd + g * hd, sizeof(float) * hd);
                memcpy(Vc + dst, s->v + (int64_t)t * kvd + g * hd, sizeof(float) * hd);
            }
        }
        emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 4.0 * sz * T * kvd);
        int nseq = 0;
        for (int t0 = 0; t0 < T; nseq++) {
            int b = seq[t0], t1 = t0;
            while (t1 < T && seq[t1] == b) t1++;
            float *K = kvl + m->kv_off[b];
            m->seqs[nseq] = (layer_attn_seq_t){
                .out = s->att + (int64_t)t0 * qd, .q = s->q + (int64_t)t0 * qd, .kc = K,
                .vc = K + (int64_t)Hkv * m->cap[b] * hd, .T = t1 - t0, .q0 = pos[t0], .k0 = 0,
                .k1 = pos[t0] + (t1 - t0), .ldc = m->cap[b]};
            t0 = t1;
        }
        layer_attention_batch(x, m->seqs, nseq, H, Hkv, hd);
        layer_linear(x, EMU_KERNEL_GEMM, s->n, s->att, L->wo, T, qd, d, qd, false);
        layer_add(x, s->x, s->n, (int64_t)T * d);
        layer_rmsnorm(x, s->n, s->x, L->moe_norm, T, d, eps);
        moe_block(m, L, s, T, gtok, ng, l, seq, pos);
        layer_add(x, s->x, s->moe, (int64_t)T * d);
    }
    for (int r = 0; r < nl; r++)
        memcpy(s->n + (int64_t)r * d, s->x + (int64_t)lrow[r] * d, sizeof(float) * d);
    layer_rmsnorm(x, s->n, s->n, w->final_norm, nl, d, eps);
    layer_linear(x, EMU_KERNEL_GEMM, logits, s->n, w->lm_head, nl, d, V, d, false);
}

int model_route_positions(const wl_t *wl)
{
    return wl->max_len + (wl->decode > 1 ? wl->decode - 1 : 0);
}

void model_routing_groups(int batch, int dp, int mb, int *group_start)
{
    for (int r = 0; r < dp; r++) {
        int lo = (int)((int64_t)r * batch / dp), hi = (int)((int64_t)(r + 1) * batch / dp);
        for (int m = 0; m < mb; m++)
            group_start[r * mb + m] = lo + (int)((int64_t)m * (hi - lo) / mb);
    }
    group_start[dp * mb] = batch;
}

void model_out_free(model_out_t *out)
{
    free(out->generated);
    free(out->prompt_logits);
    free(out->gen_logits);
    free(out->token_time);
    free(out->expert_load);
    free(out->device_rows);
    memset(out, 0, sizeof *out);
}

moemu_status_t model_generate(model_out_t *out, const wts_t *w, const wl_t *wl,
                              emu_dev_t *dev, const model_opts_t *o)
{
    const cfg_model_t *c = &w->cfg;
    memset(out, 0, sizeof *out);
    int B = wl->batch, N = wl->decode, V = c->vocab_size, Lmax = wl->max_len;
    int one[2] = {0, B};
    int ng = o->n_groups > 0 ? o->n_groups : 1;
    const int *gseq = o->n_groups > 0 ? o->group_start : one;
    if (gseq[0] != 0 || gseq[ng] != B)
        return moemu_fail(MOEMU_ERR_INVALID, "routing groups cover sequences %d..%d, the batch has %d",
                          gseq[0], gseq[ng], B);
    model_t m = {.w = w, .c = c, .o = o,
                 .ctx = {.dev = dev, .dtype = c->dtype, .math = true}};
    m.batch = B;
    m.route_pos = model_route_positions(wl);
    int64_t kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    double sz = (double)emu_dtype_size(c->dtype);

    /* largest pass: a routing group's prompts, or one decode step */
    int Tmax = B;
    for (int g = 0; g < ng; g++) {
        int64_t t = wl->start[gseq[g + 1]] - wl->start[gseq[g]];
        if (t > Tmax) Tmax = (int)t;
    }
    int64_t kv_tokens = 0;
    for (int b = 0; b < B; b++) kv_tokens += wl->len[b] + (N > 0 ? N - 1 : 0);
    cfg_figures_t fig;
    cfg_figures(c, &fig);
    MOEMU_CHECK(emu_mem_reserve(dev, EMU_MEM_WEIGHTS, fig.weight_bytes));
    MOEMU_CHECK(emu_mem_reserve(dev, EMU_MEM_KV, 2.0 * sz * kvd * kv_tokens * c->num_hidden_layers));

    moemu_status_t st = MOEMU_OK;
    scratch_t s = {0};
    int *tok = NULL, *seq = NULL, *pos = NULL, *lrow = NULL, *gtok = NULL;
    float *lbuf = NULL;
    int lrows_max = o->prompt_logits ? Tmax : B;
    m.cap = calloc((size_t)B, sizeof(int));
    m.seqs = calloc((size_t)B + 1, sizeof *m.seqs);
    m.kv_off = calloc((size_t)B, sizeof(int64_t));
    tok = malloc(sizeof(int) * (size_t)Tmax * 4 + sizeof(int) * (size_t)(ng + 1));
    lbuf = malloc(sizeof(float) * (size_t)lrows_max * V);
    out->generated = calloc((size_t)B * (N > 0 ? N : 1), sizeof(int));
    out->token_time = calloc((size_t)B * (N > 0 ? N : 1), sizeof(double));
    out->expert_load = calloc((size_t)c->num_hidden_layers * c->num_local_experts, sizeof(int64_t));
    out->device_rows = calloc(1, sizeof(int64_t));
    out->n_devices = 1;
    m.load = out->expert_load;
    if (o->prompt_logits) out->prompt_logits = malloc(sizeof(float) * (size_t)B * Lmax * V);
    if (o->gen_logits && N > 0) out->gen_logits = malloc(sizeof(float) * (size_t)B * N * V);
    if (!m.cap || !m.seqs || !m.kv_off || !tok || !lbuf || !out->generated || !out->token_time ||
        !out->expert_load || !out->device_rows ||
        (o->prompt_logits && !out->prompt_logits) || (o->gen_logits && N > 0 && !out->gen_logits)) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the outputs of %d sequences", B);
        goto done;
    }
    seq = tok + Tmax;
    pos = seq + Tmax;
    lrow = pos + Tmax;
    gtok = lrow + Tmax;
    for (int b = 0; b < B; b++) {
        m.cap[b] = wl->len[b] + (N > 0 ? N - 1 : 0);
        m.kv_off[b] = b ? m.kv_off[b - 1] + 2 * kvd * m.cap[b - 1] : 0;
    }
    m.kv_layer = B ? m.kv_off[B - 1] + 2 * kvd * m.cap[B - 1] : 0;
    if ((st = wts_check_host_memory(4.0 * (double)m.kv_layer * c->num_hidden_layers,
                                    "the KV cache")) != MOEMU_OK)
        goto done;
    m.kv = malloc(sizeof(float) * (size_t)(m.kv_layer * c->num_hidden_layers));
    if (!m.kv) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the KV cache");
        goto done;
    }
    if ((st = scratch_alloc(&s, c, Tmax)) != MOEMU_OK) goto done;
    if ((st = emu_mem_reserve(dev, EMU_MEM_ACT, sz * (double)Tmax *
                                                    (3.0 * c->hidden_size + c->num_local_experts))) != MOEMU_OK)
        goto done;
    if (o->prompt_logits)
        for (int64_t i = 0; i < (int64_t)B * Lmax * V; i++) out->prompt_logits[i] = NAN;

    /* prefill, one routing group at a time */
    double t0 = emu_host_seconds();
    for (int g = 0; g < ng; g++) {
        int T = 0, nl = 0;
        for (int b = gseq[g]; b < gseq[g + 1]; b++) {
            for (int p = 0; p < wl->len[b]; p++, T++) {
                tok[T] = wl->tokens[wl->start[b] + p];
                seq[T] = b;
                pos[T] = p;
                if (o->prompt_logits || p == wl->len[b] - 1) lrow[nl++] = T;
            }
        }
        if (T == 0) continue; /* an empty group: nothing to route */
        gtok[0] = 0;
        gtok[1] = T;
        forward(&m, &s, tok, seq, pos, T, gtok, 1, lrow, nl, lbuf, "prefill", g + 1, ng);
        for (int r = 0; r < nl; r++) {
            int b = seq[lrow[r]], p = pos[lrow[r]];
            const float *row = lbuf + (int64_t)r * V;
            if (o->prompt_logits)
                memcpy(out->prompt_logits + ((int64_t)b * Lmax + p) * V, row, sizeof(float) * V);
            if (p == wl->len[b] - 1 && N > 0) {
                out->generated[(int64_t)b * N] = layer_argmax(row, V);
                out->token_time[(int64_t)b * N] = emu_dev_clock(dev);
                if (out->gen_logits)
                    memcpy(out->gen_logits + (int64_t)b * N * V, row, sizeof(float) * V);
            }
        }
    }
    out->wall_prefill = emu_host_seconds() - t0;

    /* decode: feed the last generated token of every sequence */
    t0 = emu_host_seconds();
    for (int g = 0; g <= ng; g++) gtok[g] = gseq[g];
    for (int step = 1; step < N; step++) {
        for (int b = 0; b < B; b++) {
            tok[b] = out->generated[(int64_t)b * N + step - 1];
            seq[b] = b;
            pos[b] = wl->len[b] + step - 1;
            lrow[b] = b;
        }
        forward(&m, &s, tok, seq, pos, B, gtok, ng, lrow, B, lbuf, "decode", step, N - 1);
        for (int b = 0; b < B; b++) {
            const float *row = lbuf + (int64_t)b * V;
            out->generated[(int64_t)b * N + step] = layer_argmax(row, V);
            out->token_time[(int64_t)b * N + step] = emu_dev_clock(dev);
            if (out->gen_logits)
                memcpy(out->gen_logits + ((int64_t)b * N + step) * V, row, sizeof(float) * V);
        }
    }
    out->wall_decode = emu_host_seconds() - t0;
    out->assignments = m.assignments;
    out->dropped = m.dropped;
    for (size_t i = 0; i < (size_t)c->num_hidden_layers * c->num_local_experts; i++)
        out->device_rows[0] += out->expert_load[i];
done:
    free(s.block);
    free(m.kv);
    free(m.cap);
    free(m.seqs);
    free(m.kv_off);
    free(tok);
    free(lbuf);
    if (st != MOEMU_OK) model_out_free(out);
    return st;
}
