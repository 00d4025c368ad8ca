/* The run on emulated devices. Each device thread walks the same schedule
 * over its DP replica's micro-batches (prefill, then one decode pass per
 * generated token), receives its stage's input from the previous stage,
 * computes its shard of each layer it holds and sends the result on; the
 * last stage computes the logits and hands the next tokens back to the
 * first.
 *
 * Rows of a pass, on one device (docs/strategies.md):
 *   A: the tokens its attention sees: in prefill the positions of its CP
 *      chunks of every sequence of the micro-batch; in decode the one new
 *      token of every sequence (the same on every CP rank);
 *   R: the rows of the residual stream it holds: all of A, or with SP its
 *      TP slice of A;
 *   M: the tokens it routes and dispatches: its TP slice of A (in decode
 *      cut again between the CP ranks), so that the devices of a replica
 *      route every token exactly once. M lies inside R. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/family.h"
#include "engine/run/runner.h"

enum { C_TP, C_CP, C_EP, C_ETP, C_REPLICA, C_PP, C__COUNT };

static const par_group_t comm_groups[C__COUNT] = {
    PAR_GROUP_TP, PAR_GROUP_CP, PAR_GROUP_EP, PAR_GROUP_ETP, PAR_GROUP_REPLICA, PAR_GROUP_PP,
};

typedef struct {
    const wts_t *w;
    const cfg_model_t *c;
    const wl_t *wl;
    const runner_opts_t *o;
    const model_opts_t *mo;
    const par_strategy_t *s;
    par_dims_t dims;
    int world, route_pos, route_dp;
    par_comm_t **comm;  /* (world, C__COUNT), NULL for a group of one */
    model_out_t *out;
    int64_t *assign, *dropped; /* (world) */
    int64_t *load;             /* (world, layers, experts) */
} dist_t;

typedef struct {
    int b0, b1;  /* sequences */
    bool decode;
    int step;    /* decode pass 1..N-1 */
} pass_t;

typedef struct {
    int n, r0, r1, m0, m1;
    int *seq, *pos; /* (n) */
} rows_t;

typedef struct {
    dist_t *D;
    emu_dev_t *dev;
    layer_ctx_t x;
    layer_shard_t sh;
    par_place_t pl;
    int rank, P, stage, nrep, rep;
    int d, hd, Hl, kvl, V, Vl, k;
    int rb0, rb1, nmb;
    int *mb;         /* (nmb + 1) first sequence of each micro-batch */
    int *tok;        /* (batch) each sequence's next input token */
    /* KV cache of (local layer, replica sequence): K then V, (kvl, cap, hd) */
    float *kv;
    double kv_bytes;
    int64_t *kv_off;
    int *kv_cap, *kv_n;
    /* scratch, for Tmax rows */
    int Tmax, Ttot;
    float *xr, *na, *q, *kk, *vv, *att, *o, *moe, *sh_out, *rlog, *lse, *wts, *parts, *kvall,
        *kfull, *logits, *lgath;
    int *idx, *seqbuf, *posbuf, *allseq, *allpos, *counts, *gpos, *ibuf;
    layer_attn_seq_t *seqs; /* (2 * sequences) a pass's batched attention */
    uint8_t *keep;
    void *block;
    double block_bytes;
} worker_t;

/* The rows of a pass on replica member (cp, tp), into r->seq, r->pos. */
static void pass_rows(const worker_t *v, const pass_t *ps, int cp, int tp, rows_t *r)
{
    const wl_t *wl = v->D->wl;
    const par_strategy_t *s = v->D->s;
    r->n = 0;
    for (int b = ps->b0; b < ps->b1; b++) {
        if (ps->decode) {
            r->seq[r->n] = b;
            r->pos[r->n++] = wl->len[b] + ps->step - 1;
            continue;
        }
        int rg[2][2];
        par_cp_ranges(wl->len[b], s->cp, cp, rg);
        for (int i = 0; i < 2; i++)
            for (int p = rg[i][0]; p < rg[i][1]; p++) {
                r->seq[r->n] = b;
                r->pos[r->n++] = p;
            }
    }
    int a, z;
    par_sp_range(r->n, s->tp, tp, &a, &z);
    r->r0 = s->sp ? a : 0;
    r->r1 = s->sp ? z : r->n;
    r->m0 = a;
    r->m1 = z;
    if (ps->decode && s->cp > 1) {
        int c0, c1;
        par_sp_range(z - a, s->cp, cp, &c0, &c1);
        r->m0 = a + c0;
        r->m1 = a + c1;
    }
}

/* Row counts of the TP slices of n rows. */
static void tp_counts(const worker_t *v, int n, int *counts)
{
    for (int t = 0; t < v->sh.tp_size; t++) {
        int a, z;
        par_sp_range(n, v->sh.tp_size, t, &a, &z);
        counts[t] = z - a;
    }
}

static float *kv_k(const worker_t *v, int l, int b)
{
    int i = (l - v->pl.layer0) * (v->rb1 - v->rb0) + (b - v->rb0);
    return v->kv + v->kv_off[i];
}

static int *kv_slot(const worker_t *v, int l, int b, int **n)
{
    int i = (l - v->pl.layer0) * (v->rb1 - v->rb0) + (b - v->rb0);
    *n = &v->kv_n[i];
    return &v->kv_cap[i];
}

/* Append the keys and values of A row t to the cache of (l, b). */
static moemu_status_t kv_append(worker_t *v, int l, int b, int t)
{
    int *n, cap = *kv_slot(v, l, b, &n);
    if (*n >= cap)
        return moemu_fail(MOEMU_ERR_INTERNAL, "KV cache of layer %d sequence %d full (%d)", l, b,
                          cap);
    float *K = kv_k(v, l, b), *Vc = K + (size_t)v->kvl * cap * v->hd;
    int kvd = v->kvl * v->hd;
    for (int g = 0; g < v->kvl && v->x.math; g++) {
        size_t dst = ((size_t)g * cap + *n) * v->hd;
        memcpy(K + dst, v->kk + (size_t)t * kvd + g * v->hd, sizeof(float) * v->hd);
        memcpy(Vc + dst, v->vv + (size_t)t * kvd + g * v->hd, sizeof(float) * v->hd);
    }
    (*n)++;
    return MOEMU_OK;
}

/* ---- Attention: TP splits the heads, SP the residual rows, CP the
 * positions (prefill: keys and values gathered; decode: partial results
 * over each rank's part of the cache merged). */
static moemu_status_t attention(worker_t *v, const pass_t *ps, rows_t *r, int l)
{
    dist_t *D = v->D;
    const cfg_model_t *c = D->c;
    const wts_layer_t *L = &D->w->layers[l];
    layer_ctx_t *x = &v->x;
    int d = v->d, hd = v->hd, Hl = v->Hl, kvl = v->kvl, TA = r->n, R = r->r1 - r->r0;
    int qd = Hl * hd, kvd = kvl * hd, H = c->num_attention_heads;
    float eps = (float)c->rms_norm_eps;
    int cnt[v->sh.tp_size > v->sh.cp_size ? v->sh.tp_size : v->sh.cp_size];

    layer_rmsnorm(x, v->na + (size_t)r->r0 * d, v->xr, L->attn_norm, R, d, eps);
    if (D->s->sp) {
        tp_counts(v, TA, cnt);
        MOEMU_CHECK(layer_gather_rows(x, v->na, v->na + (size_t)r->r0 * d, cnt, d, v->sh.tp));
    }
    layer_linear(x, EMU_KERNEL_GEMM, v->q, v->na, L->wq + (size_t)v->pl.head0 * hd * d, TA, d,
                 qd, d, false);
    layer_linear(x, EMU_KERNEL_GEMM, v->kk, v->na, L->wk + (size_t)v->pl.kv_head0 * hd * d, TA,
                 d, kvd, d, false);
    layer_linear(x, EMU_KERNEL_GEMM, v->vv, v->na, L->wv + (size_t)v->pl.kv_head0 * hd * d, TA,
                 d, kvd, d, false);
    layer_rope(x, v->q, r->pos, TA, Hl, hd, c->rope_theta);
    layer_rope(x, v->kk, r->pos, TA, kvl, hd, c->rope_theta);
    double sz = (double)emu_dtype_size(c->dtype);

    int ns = 0; /* the pass's attention, one batched kernel */
    if (!ps->decode && D->s->cp == 1) {
        /* a sequence's rows are its positions 0..len-1, in order */
        for (int t0 = 0; t0 < TA;) {
            int b = r->seq[t0], t1 = t0;
            while (t1 < TA && r->seq[t1] == b) MOEMU_CHECK(kv_append(v, l, b, t1++));
            int *n, cap = *kv_slot(v, l, b, &n);
            float *K = kv_k(v, l, b);
            v->seqs[ns++] = (layer_attn_seq_t){
                .out = v->att + (size_t)t0 * qd, .q = v->q + (size_t)t0 * qd, .kc = K,
                .vc = K + (size_t)kvl * cap * hd, .T = t1 - t0, .k1 = t1 - t0, .ldc = cap};
            t0 = t1;
        }
        emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 4.0 * sz * TA * kvd);
        layer_attention_batch(x, v->seqs, ns, Hl, kvl, hd);
    } else if (!ps->decode) {
        /* CP prefill: gather every rank's keys and values, attend with the
         * whole causal prefix, keep only this rank's rows in the cache */
        int CP = D->s->cp, tot = 0;
        rows_t o = {.seq = v->allseq, .pos = v->allpos};
        for (int cp = 0; cp < CP; cp++) {
            rows_t t = {.seq = o.seq + tot, .pos = o.pos + tot};
            pass_rows(v, ps, cp, v->sh.tp_rank, &t);
            cnt[cp] = t.n;
            tot += t.n;
        }
        float *kall = v->kvall, *vall = v->kvall + (size_t)v->Ttot * kvd;
        MOEMU_CHECK(layer_gather_rows(x, kall, v->kk, cnt, kvd, v->sh.cp));
        MOEMU_CHECK(layer_gather_rows(x, vall, v->vv, cnt, kvd, v->sh.cp));
        for (int t = 0; t < TA; t++) MOEMU_CHECK(kv_append(v, l, r->seq[t], t));
        /* each sequence's keys and values in position order, side by side */
        size_t off = 0;
        double assembled = 0;
        for (int t0 = 0; t0 < TA;) {
            int b = r->seq[t0], L_b = D->wl->len[b];
            float *Kf = v->kfull + off, *Vf = Kf + (size_t)kvl * L_b * hd;
            off += 2 * (size_t)kvl * L_b * hd;
            assembled += L_b;
            if (x->math)
                for (int j = 0; j < tot; j++)
                    if (o.seq[j] == b)
                        for (int g = 0; g < kvl; g++) {
                            size_t dst = ((size_t)g * L_b + o.pos[j]) * hd;
                            memcpy(Kf + dst, kall + (size_t)j * kvd + g * hd, sizeof(float) * hd);
                            memcpy(Vf + dst, vall + (size_t)j * kvd + g * hd, sizeof(float) * hd);
                        }
            /* runs of consecutive positions: at most two per sequence */
            int t1 = t0;
            while (t1 < TA && r->seq[t1] == b) {
                int u = t1 + 1;
                while (u < TA && r->seq[u] == b && r->pos[u] == r->pos[u - 1] + 1) u++;
                v->seqs[ns++] = (layer_attn_seq_t){
                    .out = v->att + (size_t)t1 * qd, .q = v->q + (size_t)t1 * qd, .kc = Kf,
                    .vc = Vf, .T = u - t1, .q0 = r->pos[t1], .k1 = r->pos[u - 1] + 1, .ldc = L_b};
                t1 = u;
            }
            t0 = t1;
        }
        emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 4.0 * sz * assembled * kvd);
        layer_attention_batch(x, v->seqs, ns, Hl, kvl, hd);
    } else {
        /* decode: the new token's keys and values stay on one CP rank; each
         * rank attends over its part of the cache */
        int CP = D->s->cp;
        for (int t = 0; t < TA; t++) {
            int b = r->seq[t];
            if (r->pos[t] % CP == v->sh.cp_rank) MOEMU_CHECK(kv_append(v, l, b, t));
            int *n, cap = *kv_slot(v, l, b, &n);
            float *K = kv_k(v, l, b);
            v->seqs[ns++] = (layer_attn_seq_t){
                .out = v->att + (size_t)t * qd, .lse = v->lse + (size_t)t * Hl,
                .q = v->q + (size_t)t * qd, .kc = K, .vc = K + (size_t)kvl * cap * hd, .T = 1,
                .q0 = *n - 1, .k1 = *n, .ldc = cap};
        }
        layer_attention_batch(x, v->seqs, ns, Hl, kvl, hd);
        emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 4.0 * sz * TA * kvd / CP);
        if (CP > 1) {
            for (int cp = 0; cp < CP; cp++) cnt[cp] = TA;
            MOEMU_CHECK(layer_gather_rows(x, v->parts, v->att, cnt, qd, v->sh.cp));
            float *lses = v->parts + (size_t)CP * TA * qd;
            MOEMU_CHECK(layer_gather_rows(x, lses, v->lse, cnt, Hl, v->sh.cp));
            layer_attention_merge(x, v->att, v->parts, lses, CP, TA, Hl, hd);
        }
    }
    /* row-parallel output projection: partial sums over the TP ranks */
    layer_linear(x, EMU_KERNEL_GEMM, v->o, v->att, L->wo + (size_t)v->pl.head0 * hd, TA, qd, d,
                 H * hd, false);
    if (D->s->sp) {
        tp_counts(v, TA, cnt);
        MOEMU_CHECK(layer_reduce_scatter_rows(x, v->o, v->o, cnt, d, v->sh.tp));
    } else {
        MOEMU_CHECK(layer_allreduce(x, v->o, (int64_t)TA * d, v->sh.tp));
    }
    layer_add(x, v->xr, v->o, (int64_t)R * d);
    return MOEMU_OK;
}

/* Capacity over the routing group: the micro-batch of this replica. */
static moemu_status_t capacity(worker_t *v, const pass_t *ps, const rows_t *r, int nM,
                               int64_t *dropped)
{
    dist_t *D = v->D;
    const cfg_model_t *c = D->c;
    int k = v->k, E = c->num_local_experts;
    if (c->capacity_factor <= 0.0)
        return layer_capacity_group(&v->x, v->keep, dropped, v->idx, nM, NULL, NULL, 0, k, E,
                                    0.0, NULL);
    /* every member's routed tokens and their places in group order */
    int64_t off[D->wl->batch + 1];
    off[ps->b0] = 0;
    for (int b = ps->b0; b < ps->b1; b++) off[b + 1] = off[b] + (ps->decode ? 1 : D->wl->len[b]);
    int T = (int)off[ps->b1], tot = 0;
    for (int cp = 0; cp < D->s->cp; cp++)
        for (int tp = 0; tp < D->s->tp; tp++) {
            rows_t t = {.seq = v->allseq, .pos = v->allpos};
            pass_rows(v, ps, cp, tp, &t);
            v->counts[cp * D->s->tp + tp] = t.m1 - t.m0;
            for (int j = t.m0; j < t.m1; j++)
                v->gpos[tot++] = (int)(off[t.seq[j]] + (ps->decode ? 0 : t.pos[j]));
        }
    (void)r;
    return layer_capacity_group(&v->x, v->keep, dropped, v->idx, nM, v->counts, v->gpos, T, k, E,
                                c->capacity_factor, v->sh.replica);
}

/* ---- The mixture of experts: each token routed once in its replica,
 * dispatched over the EP group; shared experts split like a dense MLP. */
static moemu_status_t moe(worker_t *v, const pass_t *ps, rows_t *r, int l)
{
    dist_t *D = v->D;
    const cfg_model_t *c = D->c;
    const wts_layer_t *L = &D->w->layers[l];
    layer_ctx_t *x = &v->x;
    int d = v->d, k = v->k, TA = r->n, R = r->r1 - r->r0, nM = r->m1 - r->m0;
    int E = c->num_local_experts;
    int cnt[v->sh.tp_size > v->sh.cp_size ? v->sh.tp_size : v->sh.cp_size];

    layer_rmsnorm(x, v->na + (size_t)r->r0 * d, v->xr, L->moe_norm, R, d, (float)c->rms_norm_eps);
    const float *nM_rows = v->na + (size_t)r->m0 * d;
    layer_router(x, v->idx, v->wts, v->rlog, nM_rows, L->gate, nM, d, E, k);
    if (D->o->dry)
        for (int j = 0; j < nM; j++)
            route_choose(D->o->routing, l, r->seq[r->m0 + j], r->pos[r->m0 + j], v->idx + j * k);
    int64_t dropped;
    MOEMU_CHECK(capacity(v, ps, r, nM, &dropped));
    D->dropped[v->rank] += dropped;
    D->assign[v->rank] += (int64_t)nM * k;
    if (D->mo->route)
        for (int j = 0; j < nM; j++) {
            int t = r->m0 + j;
            for (int s = 0; s < k; s++) {
                int a = j * k + s;
                D->mo->route[(((int64_t)l * D->wl->batch + r->seq[t]) * D->route_pos + r->pos[t]) *
                                 k + s] = v->keep[a] ? v->idx[a] : -1 - v->idx[a];
            }
        }
    layer_experts_t ex = {.w1 = L->w1, .w3 = L->w3, .w2 = L->w2, .E = E, .k = k, .d = d,
                          .F = c->intermediate_size, .e0 = v->pl.expert0, .e1 = v->pl.expert1,
                          .f0 = v->pl.ffn0, .f1 = v->pl.ffn1, .act = c->hidden_act,
                          .load = D->load + ((size_t)v->rank * c->num_hidden_layers + l) * E};
    MOEMU_CHECK(layer_moe_routed(x, &v->sh, v->moe + (size_t)r->m0 * d, nM_rows, v->idx, v->wts,
                                 v->keep, nM, &ex));
    /* routed outputs back to the residual rows */
    int a, z;
    par_sp_range(TA, v->sh.tp_size, v->sh.tp_rank, &a, &z);
    if (ps->decode && v->sh.cp_size > 1) {
        for (int cp = 0; cp < v->sh.cp_size; cp++) {
            int c0, c1;
            par_sp_range(z - a, v->sh.cp_size, cp, &c0, &c1);
            cnt[cp] = c1 - c0;
        }
        MOEMU_CHECK(layer_gather_rows(x, v->moe + (size_t)a * d, v->moe + (size_t)r->m0 * d, cnt,
                                      d, v->sh.cp));
    }
    if (!D->s->sp && v->sh.tp_size > 1) {
        tp_counts(v, TA, cnt);
        MOEMU_CHECK(layer_gather_rows(x, v->moe, v->moe + (size_t)a * d, cnt, d, v->sh.tp));
    }
    float *moeR = v->moe + (size_t)r->r0 * d;
    if (c->num_shared_experts > 0) {
        if (D->s->sp) {
            tp_counts(v, TA, cnt);
            MOEMU_CHECK(layer_gather_rows(x, v->na, v->na + (size_t)r->r0 * d, cnt, d, v->sh.tp));
        }
        int Fs = c->shared_expert_intermediate_size, f0 = v->pl.shared_ffn0,
            Fl = v->pl.shared_ffn1 - v->pl.shared_ffn0;
        if (x->math) memset(v->sh_out, 0, sizeof(float) * (size_t)TA * d);
        int S = c->num_shared_experts;
        layer_expert_job_t jobs[S];
        for (int j = 0; j < S; j++)
            jobs[j] = (layer_expert_job_t){
                .out = v->sh_out, .x = v->na, .w1 = L->sw1[j] + (size_t)f0 * d,
                .w3 = L->sw3[j] ? L->sw3[j] + (size_t)f0 * d : NULL, .w2 = L->sw2[j] + f0, .n = TA};
        layer_expert_group(x, jobs, S, v->parts, d, Fl, Fs, c->hidden_act, true);
        if (D->s->sp) {
            tp_counts(v, TA, cnt);
            MOEMU_CHECK(layer_reduce_scatter_rows(x, v->sh_out, v->sh_out, cnt, d, v->sh.tp));
            layer_add(x, moeR, v->sh_out, (int64_t)R * d);
        } else {
            MOEMU_CHECK(layer_allreduce(x, v->sh_out, (int64_t)TA * d, v->sh.tp));
            layer_add(x, moeR, v->sh_out, (int64_t)R * d);
        }
    }
    layer_add(x, v->xr, moeR, (int64_t)R * d);
    return MOEMU_OK;
}

/* ---- First stage: the vocabulary-parallel embedding. */
static moemu_status_t embed(worker_t *v, const pass_t *ps, const rows_t *r)
{
    dist_t *D = v->D;
    layer_ctx_t *x = &v->x;
    int d = v->d, TA = r->n, v0 = v->pl.vocab0, v1 = v->pl.vocab1;
    if (x->math)
        for (int t = 0; t < TA; t++) {
            int b = r->seq[t];
            int id = ps->decode ? v->tok[b] : D->wl->tokens[D->wl->start[b] + r->pos[t]];
            float *row = v->o + (size_t)t * d;
            if (id >= v0 && id < v1)
                memcpy(row, D->w->embed + (size_t)id * d, sizeof(float) * d);
            else
                memset(row, 0, sizeof(float) * d); /* another rank's row */
        }
    emu_charge(x->dev, EMU_KERNEL_EMBED, 0.0, 2.0 * TA * d * emu_dtype_size(x->dtype));
    int cnt[v->sh.tp_size];
    if (D->s->sp) {
        tp_counts(v, TA, cnt);
        return layer_reduce_scatter_rows(x, v->xr, v->o, cnt, d, v->sh.tp);
    }
    MOEMU_CHECK(layer_allreduce(x, v->o, (int64_t)TA * d, v->sh.tp));
    if (x->math) memcpy(v->xr, v->o, sizeof(float) * (size_t)TA * d);
    return MOEMU_OK;
}

/* ---- Last stage: final norm, vocabulary-parallel lm_head, greedy pick. */
static moemu_status_t head(worker_t *v, const pass_t *ps, const rows_t *r)
{
    dist_t *D = v->D;
    const cfg_model_t *c = D->c;
    layer_ctx_t *x = &v->x;
    model_out_t *out = D->out;
    int d = v->d, TA = r->n, V = v->V, Vl = v->Vl, TP = v->sh.tp_size, N = D->wl->decode;
    int Lmax = D->wl->max_len;
    int cnt[TP];
    const float *xa = v->xr;
    if (D->s->sp) {
        tp_counts(v, TA, cnt);
        MOEMU_CHECK(layer_gather_rows(x, v->na, v->xr, cnt, d, v->sh.tp));
        xa = v->na;
    }
    /* the rows whose logits are needed */
    int nl = 0;
    for (int t = 0; t < TA; t++)
        if (ps->decode || D->mo->prompt_logits || r->pos[t] == D->wl->len[r->seq[t]] - 1)
            v->ibuf[nl++] = t;
    if (x->math)
        for (int i = 0; i < nl; i++)
            memcpy(v->o + (size_t)i * d, xa + (size_t)v->ibuf[i] * d, sizeof(float) * d);
    layer_rmsnorm(x, v->o, v->o, D->w->final_norm, nl, d, (float)c->rms_norm_eps);
    int v0 = v->pl.vocab0, real = (v->pl.vocab1 < V ? v->pl.vocab1 : V) - v0;
    if (real < 0) real = 0;
    layer_linear(x, EMU_KERNEL_GEMM, v->logits, v->o, D->w->lm_head + (size_t)v0 * d, nl, d, real,
                 d, false);
    if (x->math && real < Vl) /* padding rows of the vocabulary never win */
        for (int i = nl - 1; i >= 0; i--) {
            memmove(v->logits + (size_t)i * Vl, v->logits + (size_t)i * real, sizeof(float) * real);
            for (int j = real; j < Vl; j++) v->logits[(size_t)i * Vl + j] = -INFINITY;
        }
    const float *full = v->logits; /* (nl, Vp): row i, vocabulary column */
    size_t ld = (size_t)Vl;
    if (TP > 1) {
        for (int t = 0; t < TP; t++) cnt[t] = nl;
        MOEMU_CHECK(layer_gather_rows(x, v->lgath, v->logits, cnt, Vl, v->sh.tp));
        if (x->math) /* (TP, nl, Vl) to (nl, TP * Vl) */
            for (int t = 0; t < TP; t++)
                for (int i = 0; i < nl; i++)
                    memcpy(v->logits + (size_t)i * TP * Vl + (size_t)t * Vl,
                           v->lgath + ((size_t)t * nl + i) * Vl, sizeof(float) * Vl);
        ld = (size_t)TP * Vl;
    }
    /* next tokens of the micro-batch: -1 where another CP rank knows it */
    int nb = ps->b1 - ps->b0;
    for (int i = 0; i < nb; i++) v->ibuf[nl + i] = -1;
    bool writer = v->sh.tp_rank == 0 && (!ps->decode || v->sh.cp_rank == 0);
    for (int i = 0; i < nl; i++) {
        int t = v->ibuf[i], b = r->seq[t], p = r->pos[t];
        const float *row = full + (size_t)i * ld;
        bool last = ps->decode || p == D->wl->len[b] - 1;
        if (writer && out->prompt_logits && !ps->decode && x->math)
            memcpy(out->prompt_logits + ((size_t)b * Lmax + p) * V, row, sizeof(float) * V);
        if (!last) continue;
        int tok = x->math ? layer_argmax(row, V) : 0;
        v->ibuf[nl + b - ps->b0] = tok;
        int step = ps->decode ? ps->step : 0;
        if (writer && N > 0) {
            out->generated[(size_t)b * N + step] = tok;
            out->token_time[(size_t)b * N + step] = emu_dev_clock(v->dev);
            if (out->gen_logits && x->math)
                memcpy(out->gen_logits + ((size_t)b * N + step) * V, row, sizeof(float) * V);
        }
    }
    int *next = v->ibuf + nl;
    if (!ps->decode && v->sh.cp_size > 1)
        MOEMU_CHECK(par_allreduce(next, next, (size_t)nb, EMU_DTYPE_INT32, PAR_OP_MAX, v->sh.cp,
                                  v->dev));
    int step = ps->decode ? ps->step : 0;
    if (step + 1 >= N) return MOEMU_OK; /* no pass follows */
    if (v->P > 1)
        return par_send(next, (size_t)nb, EMU_DTYPE_INT32, 0, D->comm[v->rank * C__COUNT + C_PP],
                        v->dev);
    memcpy(v->tok + ps->b0, next, sizeof(int) * (size_t)nb);
    return MOEMU_OK;
}

static moemu_status_t run_pass(worker_t *v, const pass_t *ps)
{
    dist_t *D = v->D;
    /* a pass with no sequence still runs: its replica's experts serve the
     * other replicas in the same EP group */
    rows_t r = {.seq = v->seqbuf, .pos = v->posbuf};
    pass_rows(v, ps, v->sh.cp_rank, v->sh.tp_rank, &r);
    int R = r.r1 - r.r0, d = v->d;
    par_comm_t *pp = D->comm[v->rank * C__COUNT + C_PP];
    if (v->stage == 0) {
        if (ps->decode && v->P > 1)
            MOEMU_CHECK(par_recv(v->tok + ps->b0, (size_t)(ps->b1 - ps->b0), EMU_DTYPE_INT32,
                                 v->P - 1, pp, v->dev));
        MOEMU_CHECK(embed(v, ps, &r));
    } else {
        MOEMU_CHECK(par_recv(v->xr, (size_t)R * d, v->x.dtype, v->stage - 1, pp, v->dev));
    }
    for (int l = v->pl.layer0; l < v->pl.layer1; l++) {
        if (D->mo->progress && v->rank == 0)
            D->mo->progress(D->mo->progress_arg, ps->decode ? "decode" : "prefill",
                            ps->decode ? ps->step : 1, ps->decode ? D->wl->decode - 1 : 1, l,
                            D->c->num_hidden_layers);
        if (emu_dev_aborting(v->dev)) return moemu_fail(MOEMU_ERR_PEER, "stopped");
        emu_dev_set_layer(v->dev, l);
        MOEMU_CHECK(attention(v, ps, &r, l));
        MOEMU_CHECK(moe(v, ps, &r, l));
    }
    emu_dev_set_layer(v->dev, -1);
    if (v->stage < v->P - 1)
        return par_send(v->xr, (size_t)R * d, v->x.dtype, v->stage + 1, pp, v->dev);
    return head(v, ps, &r);
}

/* Weights this device holds, in the emulated dtype. */
static double shard_weight_bytes(const worker_t *v)
{
    const cfg_model_t *c = v->D->c;
    const par_place_t *p = &v->pl;
    double d = c->hidden_size, hd = c->head_dim, mats = c->hidden_act == LAYER_ACT_SILU ? 3 : 2;
    double layer = 2 * d + (p->head1 - p->head0) * hd * d * 2 +
                   (p->kv_head1 - p->kv_head0) * hd * d * 2 + (double)c->num_local_experts * d +
                   (double)(p->expert1 - p->expert0) * mats * (p->ffn1 - p->ffn0) * d +
                   (double)c->num_shared_experts * mats * (p->shared_ffn1 - p->shared_ffn0) * d;
    double n = layer * (p->layer1 - p->layer0);
    double rows = (double)(p->vocab1 - p->vocab0) * d;
    if (p->has_embed) n += rows;
    if (p->has_lm_head) n += d + (c->tie_word_embeddings && p->has_embed ? 0 : rows);
    return n * (double)emu_dtype_size(c->dtype);
}

static void dev_free(worker_t *v)
{
    if (v->kv) emu_free(v->dev, EMU_MEM_KV, v->kv, v->kv_bytes);
    if (v->block) emu_free(v->dev, EMU_MEM_ACT, v->block, v->block_bytes);
    free(v->mb);
    free(v->tok);
    free(v->kv_off);
    free(v->kv_cap);
    free(v->kv_n);
    free(v->seqs);
}

/* First sequences of the routing groups of replicas [r0, r0 + n) of a
 * batch split over dp replicas, each split into mb micro-batches (DESIGN.md:
 * par_split at both levels); mb_start has n * mb + 1 entries. */
static void route_groups(int batch, int dp, int r0, int n, int mb, int *mb_start)
{
    for (int r = r0; r < r0 + n; r++) {
        int lo, hi;
        par_split(batch, dp, r, &lo, &hi);
        for (int m = 0; m <= mb; m++) {
            int a, z;
            par_split(hi - lo, mb, m < mb ? m : mb - 1, &a, &z);
            mb_start[(r - r0) * mb + m] = lo + (m < mb ? a : z);
        }
    }
}

static moemu_status_t dev_setup(worker_t *v)
{
    dist_t *D = v->D;
    const cfg_model_t *c = D->c;
    const wl_t *wl = D->wl;
    const par_strategy_t *s = D->s;
    par_layout_place(s, &D->dims, v->rank, &v->pl);
    layer_shard_t *sh = &v->sh;
    par_comm_t **cm = D->comm + (size_t)v->rank * C__COUNT;
    *sh = (layer_shard_t){.tp = cm[C_TP], .cp = cm[C_CP], .ep = cm[C_EP], .etp = cm[C_ETP],
                          .replica = cm[C_REPLICA], .tp_size = s->tp, .tp_rank = v->pl.tp,
                          .cp_size = s->cp, .cp_rank = v->pl.cp, .ep_size = s->ep,
                          .ep_rank = v->pl.ep, .etp_size = s->etp, .etp_rank = v->pl.etp,
                          .replica_size = s->cp * s->tp,
                          .replica_rank = v->pl.cp * s->tp + v->pl.tp, .sp = s->sp};
    v->x = (layer_ctx_t){.dev = v->dev, .dtype = c->dtype, .math = !D->o->dry};
    v->P = s->pp;
    v->stage = v->pl.pp;
    v->d = c->hidden_size;
    v->hd = c->head_dim;
    v->Hl = v->pl.head1 - v->pl.head0;
    v->kvl = v->pl.kv_head1 - v->pl.kv_head0;
    v->V = c->vocab_size;
    v->Vl = v->pl.vocab1 - v->pl.vocab0;
    v->k = c->num_experts_per_tok;
    MOEMU_CHECK(emu_mem_reserve(v->dev, EMU_MEM_WEIGHTS, shard_weight_bytes(v)));

    /* the replica's sequences and its micro-batches */
    int B = wl->batch, N = wl->decode;
    par_split(B, s->dp, v->pl.dp, &v->rb0, &v->rb1);
    int q = D->route_dp / s->dp; /* routing replicas inside this replica */
    v->nmb = q * D->o->micro_batches;
    v->mb = calloc((size_t)v->nmb + 1, sizeof(int));
    v->tok = calloc((size_t)B + 1, sizeof(int));
    int nseq = v->rb1 - v->rb0, nl = v->pl.layer1 - v->pl.layer0;
    v->kv_off = calloc((size_t)nl * nseq + 1, sizeof(int64_t));
    v->kv_cap = calloc((size_t)nl * nseq + 1, sizeof(int));
    v->kv_n = calloc((size_t)nl * nseq + 1, sizeof(int));
    v->seqs = calloc(2 * (size_t)nseq + 1, sizeof *v->seqs);
    if (!v->mb || !v->tok || !v->kv_off || !v->kv_cap || !v->kv_n || !v->seqs)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the schedule of %d sequences", nseq);
    route_groups(B, D->route_dp, v->pl.dp * q, q, D->o->micro_batches, v->mb);
    /* the cache: this rank's prefill positions and its share of decode */
    int64_t kvf = 0;
    int kvd = v->kvl * v->hd, Tmax = nseq, Ttot = 0;
    for (int m = 0; m < v->nmb; m++) {
        int tot = 0;
        for (int b = v->mb[m]; b < v->mb[m + 1]; b++) tot += wl->len[b];
        Ttot = tot > Ttot ? tot : Ttot;
    }
    for (int i = 0; i < nl * nseq; i++) {
        int b = v->rb0 + i % nseq, rg[2][2];
        par_cp_ranges(wl->len[b], s->cp, v->pl.cp, rg);
        int dec = N > 1 ? (N - 1 + s->cp - 1) / s->cp : 0;
        v->kv_cap[i] = (rg[0][1] - rg[0][0]) + (rg[1][1] - rg[1][0]) + dec;
        v->kv_off[i] = kvf;
        kvf += 2LL * kvd * v->kv_cap[i];
    }
    /* prefill rows of this rank are at most the micro-batch's tokens */
    Tmax = Ttot > Tmax ? Ttot : Tmax;
    v->Tmax = Tmax;
    v->Ttot = Ttot;
    double sz = (double)emu_dtype_size(c->dtype);
    v->kv_bytes = sz * (double)kvf;
    MOEMU_CHECK(emu_alloc(v->dev, EMU_MEM_KV, sizeof(float) * (size_t)(kvf + 1), v->kv_bytes,
                          (void **)&v->kv));

    /* scratch for a pass */
    int d = v->d, qd = v->Hl * v->hd, k = v->k, E = c->num_local_experts, CP = s->cp;
    int Vp = v->Vl * s->tp, Fsl = v->pl.shared_ffn1 - v->pl.shared_ffn0;
    int64_t nlog = D->mo->prompt_logits ? Tmax : nseq;
    /* one buffer serves the decode merge's parts and the shared experts'
     * scratch, which never live at the same time */
    size_t np = (size_t)(CP > 1 ? CP : 1) * Tmax * (qd + v->Hl);
    if (np < 2 * (size_t)Tmax * Fsl) np = 2 * (size_t)Tmax * Fsl;
    size_t nf = (size_t)Tmax * (5 * d + 2 * qd + 2 * kvd + E + k + v->Hl) + np +
                4 * (size_t)Ttot * kvd + 2 * (size_t)nlog * Vp;
    size_t ni = (size_t)Tmax * (k + 2) + 2 * (size_t)Ttot + (size_t)s->cp * s->tp + (size_t)Ttot +
                (size_t)Tmax + (size_t)nseq;
    size_t bytes = sizeof(float) * nf + sizeof(int) * ni + (size_t)Tmax * k + 64;
    v->block_bytes = sz * (double)nf + 4.0 * (double)ni;
    MOEMU_CHECK(emu_alloc(v->dev, EMU_MEM_ACT, bytes, v->block_bytes, &v->block));
    float *p = v->block;
#define TAKE(n_) (p += (n_), p - (n_))
    v->xr = TAKE((size_t)Tmax * d);
    v->na = TAKE((size_t)Tmax * d);
    v->o = TAKE((size_t)Tmax * d);
    v->moe = TAKE((size_t)Tmax * d);
    v->sh_out = TAKE((size_t)Tmax * d);
    v->q = TAKE((size_t)Tmax * qd);
    v->att = TAKE((size_t)Tmax * qd);
    v->kk = TAKE((size_t)Tmax * kvd);
    v->vv = TAKE((size_t)Tmax * kvd);
    v->rlog = TAKE((size_t)Tmax * E);
    v->wts = TAKE((size_t)Tmax * k);
    v->lse = TAKE((size_t)Tmax * v->Hl);
    v->parts = TAKE(np);
    v->kvall = TAKE(2 * (size_t)Ttot * kvd);
    v->kfull = TAKE(2 * (size_t)Ttot * kvd); /* CP: every sequence's whole prefix */
    v->logits = TAKE((size_t)nlog * Vp);
    v->lgath = TAKE((size_t)nlog * Vp);
#undef TAKE
    int *ip = (int *)p;
    v->idx = ip, ip += (size_t)Tmax * k;
    v->seqbuf = ip, ip += Tmax;
    v->posbuf = ip, ip += Tmax;
    v->allseq = ip, ip += Ttot;
    v->allpos = ip, ip += Ttot;
    v->counts = ip, ip += s->cp * s->tp;
    v->gpos = ip, ip += Ttot;
    v->ibuf = ip, ip += Tmax + nseq;
    v->keep = (uint8_t *)ip;
    return MOEMU_OK;
}

static moemu_status_t dev_main(emu_dev_t *dev, void *arg)
{
    dist_t *D = arg;
    worker_t v = {.D = D, .dev = dev, .rank = emu_dev_rank(dev)};
    moemu_status_t st = dev_setup(&v);
    int N = D->wl->decode;
    double t0 = emu_host_seconds();
    for (int m = 0; st == MOEMU_OK && m < v.nmb; m++) {
        pass_t ps = {.b0 = v.mb[m], .b1 = v.mb[m + 1]};
        st = run_pass(&v, &ps);
    }
    double t1 = emu_host_seconds();
    for (int step = 1; step < N && st == MOEMU_OK; step++)
        for (int m = 0; st == MOEMU_OK && m < v.nmb; m++) {
            pass_t ps = {.b0 = v.mb[m], .b1 = v.mb[m + 1], .decode = true, .step = step};
            st = run_pass(&v, &ps);
        }
    if (v.rank == 0) {
        D->out->wall_prefill = t1 - t0;
        D->out->wall_decode = emu_host_seconds() - t1;
    }
    dev_free(&v);
    return st;
}

int runner_route_positions(const wl_t *wl)
{
    return wl->max_len + (wl->decode > 1 ? wl->decode - 1 : 0);
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

void runner_opts_one_device(runner_opts_t *o, const emu_hw_t *hw, int route_dp, int micro_batches)
{
    *o = (runner_opts_t){.micro_batches = micro_batches, .route_dp = route_dp, .hw = *hw,
                      .cluster = {.no_limit = true}};
    par_strategy_default(&o->strategy);
}

moemu_status_t runner_generate(model_out_t *out, emu_cluster_t **cluster, const wts_t *w,
                             const wl_t *wl, const runner_opts_t *o, const model_opts_t *mo)
{
    const cfg_model_t *c = &w->cfg;
    memset(out, 0, sizeof *out);
    *cluster = NULL;
    dist_t D = {.w = w, .c = c, .wl = wl, .o = o, .mo = mo, .s = &o->strategy, .out = out,
                .route_pos = runner_route_positions(wl)};
    family_of(c)->dims(c, &D.dims);
    D.world = par_strategy_world(&o->strategy);
    MOEMU_CHECK(par_strategy_validate(&o->strategy, &D.dims, D.world));
    if (o->micro_batches < 1)
        return moemu_fail(MOEMU_ERR_INVALID, "micro_batches %d: must be >= 1", o->micro_batches);
    D.route_dp = o->route_dp ? o->route_dp : o->strategy.dp;
    if (D.route_dp % o->strategy.dp != 0)
        return moemu_fail(MOEMU_ERR_INVALID, "routing groups of %d replicas: not a multiple of "
                          "DP = %d", D.route_dp, o->strategy.dp);
    int B = wl->batch, N = wl->decode, V = c->vocab_size;
    emu_cluster_t *cl = NULL;
    MOEMU_CHECK(emu_cluster_create(&o->hw.spec, &o->hw.topo, D.world, &o->cluster, &cl));
    moemu_status_t st = MOEMU_OK;
    D.comm = calloc((size_t)D.world * C__COUNT, sizeof(par_comm_t *));
    D.assign = calloc((size_t)D.world, sizeof(int64_t));
    D.dropped = calloc((size_t)D.world, sizeof(int64_t));
    int *ranks = malloc(sizeof(int) * (size_t)D.world);
    out->generated = calloc((size_t)B * (N > 0 ? N : 1), sizeof(int));
    out->token_time = calloc((size_t)B * (N > 0 ? N : 1), sizeof(double));
    out->expert_load = calloc((size_t)c->num_hidden_layers * c->num_local_experts, sizeof(int64_t));
    out->device_rows = calloc((size_t)D.world, sizeof(int64_t));
    out->n_devices = D.world;
    D.load = calloc((size_t)D.world * c->num_hidden_layers * c->num_local_experts, sizeof(int64_t));
    if (o->dry && !o->routing) {
        st = moemu_fail(MOEMU_ERR_INVALID, "a dry run needs a routing source");
        goto done;
    }
    if (mo->prompt_logits) out->prompt_logits = malloc(sizeof(float) * (size_t)B * wl->max_len * V);
    if (mo->gen_logits && N > 0) out->gen_logits = malloc(sizeof(float) * (size_t)B * N * V);
    if (!D.comm || !D.assign || !D.dropped || !ranks || !out->generated || !out->token_time ||
        !out->expert_load || !out->device_rows || !D.load ||
        (mo->prompt_logits && !out->prompt_logits) || (mo->gen_logits && N > 0 && !out->gen_logits)) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the outputs of %d sequences", B);
        goto done;
    }
    if (out->prompt_logits)
        for (size_t i = 0; i < (size_t)B * wl->max_len * V; i++) out->prompt_logits[i] = NAN;
    /* one communicator per group, created by its lowest rank's turn */
    for (int g = 0; g < C__COUNT && st == MOEMU_OK; g++)
        for (int r = 0; r < D.world && st == MOEMU_OK; r++) {
            int n = par_layout_group(&o->strategy, comm_groups[g], r, ranks), lo = ranks[0];
            for (int i = 1; i < n; i++) lo = ranks[i] < lo ? ranks[i] : lo;
            if (n < 2 || lo != r) continue;
            par_comm_t *cm;
            if ((st = par_comm_create(cl, ranks, n, &cm)) != MOEMU_OK) break;
            for (int i = 0; i < n; i++) D.comm[(size_t)ranks[i] * C__COUNT + g] = cm;
        }
    if (st == MOEMU_OK) st = emu_cluster_run(cl, dev_main, &D);
    size_t LE = (size_t)c->num_hidden_layers * c->num_local_experts;
    for (int i = 0; i < D.world; i++) {
        out->assignments += D.assign[i];
        out->dropped += D.dropped[i];
        for (size_t j = 0; j < LE; j++) {
            out->expert_load[j] += D.load[i * LE + j];
            out->device_rows[i] += D.load[i * LE + j];
        }
    }
done:
    /* each communicator once: at its lowest member */
    for (int g = 0; D.comm && g < C__COUNT; g++)
        for (int r = 0; r < D.world; r++) {
            par_comm_t *cm = D.comm[(size_t)r * C__COUNT + g];
            if (!cm) continue;
            bool first = true;
            for (int q = 0; q < r && first; q++) first = D.comm[(size_t)q * C__COUNT + g] != cm;
            if (first) par_comm_destroy(cm);
        }
    free(D.comm);
    free(D.assign);
    free(D.dropped);
    free(D.load);
    free(ranks);
    if (st != MOEMU_OK) {
        model_out_free(out);
        emu_cluster_destroy(cl);
        return st;
    }
    *cluster = cl;
    return MOEMU_OK;
}
