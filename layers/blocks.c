/* Sharded blocks: one rank's part of a layer in one pass (layers.h,
 * "Sharded blocks"). The order of kernels and collectives here is the
 * schedule the virtual clocks follow; tests/test_report.c walks it by hand. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

/* Floats of MLA prefill's decompressed keys and values a key row. */
static size_t mla_kv_floats(const layer_dims_t *dm)
{
    return dm->lora > 0 ? (size_t)dm->Hl * (dm->nope + dm->rope_d + dm->vd) : 0;
}

void layer_view_scratch(const layer_dims_t *dm, const layer_shard_t *sh, int Tmax, int Ttot,
                        int nlog, size_t *nf, size_t *ni)
{
    int d = dm->d, qd = dm->Hl * dm->hd, kvd = dm->kvl * dm->hd, CP = sh->cp_size;
    /* one buffer serves the decode merge's parts and the shared experts'
     * scratch, which never live at the same time */
    size_t np = (size_t)(CP > 1 ? CP : 1) * Tmax * (qd + dm->Hl);
    if (np < 2 * (size_t)Tmax * dm->mlp_f) np = 2 * (size_t)Tmax * dm->mlp_f;
    *nf = (size_t)Tmax * (5 * d + 2 * qd + 2 * kvd + dm->E + dm->k + dm->Hl + dm->row_f +
                          dm->mla_f) + np +
          4 * (size_t)Ttot * kvd + 2 * (size_t)nlog * dm->Vl * sh->tp_size +
          (size_t)Ttot * mla_kv_floats(dm);
    *ni = (size_t)Tmax * dm->k;
}

void layer_view_carve(layer_view_t *v, void *block, int Tmax, int Ttot, int nlog)
{
    const layer_dims_t *dm = v->dm;
    size_t nf, ni, T = (size_t)Tmax, d = (size_t)dm->d, qd = (size_t)dm->Hl * dm->hd,
                   kvd = (size_t)dm->kvl * dm->hd, Vp = (size_t)dm->Vl * v->sh->tp_size;
    layer_view_scratch(dm, v->sh, Tmax, Ttot, nlog, &nf, &ni);
    float *p = block;
#define TAKE(n_) (p += (n_), p - (n_))
    v->xr = TAKE(T * d);
    v->na = TAKE(T * d);
    v->o = TAKE(T * d);
    v->moe = TAKE(T * d);
    v->sh_out = TAKE(T * d);
    v->q = TAKE(T * qd);
    v->att = TAKE(T * qd);
    v->kk = TAKE(T * kvd);
    v->vv = TAKE(T * kvd);
    v->rlog = TAKE(T * dm->E);
    v->wts = TAKE(T * dm->k);
    v->lse = TAKE(T * dm->Hl);
    v->rowf = TAKE(T * dm->row_f);
    v->mla = TAKE(T * dm->mla_f);
    v->kvall = TAKE(2 * (size_t)Ttot * kvd);
    v->kfull = TAKE(2 * (size_t)Ttot * kvd); /* CP: every sequence's whole prefix */
    v->logits = TAKE((size_t)nlog * Vp);
    v->lgath = TAKE((size_t)nlog * Vp);
    v->mla_kv = TAKE((size_t)Ttot * mla_kv_floats(dm));
    v->parts = p; /* the rest of the floats */
#undef TAKE
    v->idx = (int *)((float *)block + nf);
    v->Ttot = Ttot;
}

/* Row counts of the SP slices of n rows over the TP group. */
static void tp_counts(const layer_view_t *v, int n, int *counts)
{
    for (int t = 0; t < v->sh->tp_size; t++) {
        int a, z;
        par_sp_range(n, v->sh->tp_size, t, &a, &z);
        counts[t] = z - a;
    }
}

/* ---- The KV cache */

static float *kv_seq(const layer_view_t *v, int b, int *cap, int **n)
{
    int i = b - v->kv.b0;
    *cap = v->kv.cap[i];
    *n = &v->kv.n[i];
    return v->kv.base + v->kv.off[i];
}

/* The values of a cache whose keys start at K (cap rows a head): after
 * the keys, or the keys themselves (MLA's latent). */
static float *kv_values(const layer_view_t *v, float *K, int cap)
{
    return v->dm->kv_shared ? K : K + (size_t)v->dm->kvl * cap * v->dm->hd;
}

/* Tensors the cache keeps: keys and values, or one latent. */
static int kv_parts(const layer_view_t *v) { return v->dm->kv_shared ? 1 : 2; }

/* The positions of sequence b's cached rows, or NULL when not kept. */
static int *kv_positions(const layer_view_t *v, int b)
{
    if (!v->kv.pos) return NULL;
    int64_t row = (int64_t)kv_parts(v) * v->dm->kvl * v->dm->hd;
    return v->kv.pos + v->kv.off[b - v->kv.b0] / row;
}

/* Append the keys and values of A rows [t0, t1), all of one sequence, to
 * its cache: one lookup for the run, which a dry run's many rows notice. */
static moemu_status_t kv_append_run(layer_view_t *v, int t0, int t1)
{
    int b = v->r->seq[t0], cap, *n, hd = v->dm->hd, kvl = v->dm->kvl, kvd = kvl * hd;
    float *K = kv_seq(v, b, &cap, &n), *Vc = kv_values(v, K, cap);
    if (*n + (t1 - t0) > cap)
        return moemu_fail(MOEMU_ERR_INTERNAL, "KV cache of sequence %d full (%d)", b, cap);
    int *pos = kv_positions(v, b), c = *n; /* c in a register, not *n */
    bool math = v->x->math;
    if (!math && !pos) { /* a dry run's rows: only counted */
        *n = c + (t1 - t0);
        return MOEMU_OK;
    }
    for (int t = t0; t < t1; t++, c++) {
        for (int g = 0; g < kvl && math; g++) {
            size_t dst = ((size_t)g * cap + c) * hd;
            memcpy(K + dst, v->kk + (size_t)t * kvd + g * hd, sizeof(float) * hd);
            if (Vc != K) memcpy(Vc + dst, v->vv + (size_t)t * kvd + g * hd, sizeof(float) * hd);
        }
        if (pos) pos[c] = v->r->pos[t];
    }
    *n = c;
    return MOEMU_OK;
}

/* Append A row t to the cache of its sequence. */
static moemu_status_t kv_append(layer_view_t *v, int t) { return kv_append_run(v, t, t + 1); }

/* Append every A row, run by run of one sequence. */
static moemu_status_t kv_append_all(layer_view_t *v)
{
    const layer_rows_t *r = v->r;
    for (int t0 = 0, t1; t0 < r->n; t0 = t1) {
        for (t1 = t0 + 1; t1 < r->n && r->seq[t1] == r->seq[t0]; t1++)
            ;
        MOEMU_CHECK(kv_append_run(v, t0, t1));
    }
    return MOEMU_OK;
}

/* ---- Attention */

/* Prefill without CP: a sequence's rows are its positions 0..len-1; its
 * attention into v->seqs, *ns of them. */
static moemu_status_t prefill_seqs(layer_view_t *v, int *ns_out, int W)
{
    const layer_rows_t *r = v->r;
    int hd = v->dm->hd, kvl = v->dm->kvl, qd = v->dm->Hl * hd, TA = r->n, ns = 0;
    for (int t0 = 0; t0 < TA;) {
        int b = r->seq[t0], t1 = t0, cap, *n;
        while (t1 < TA && r->seq[t1] == b) t1++;
        MOEMU_CHECK(kv_append_run(v, t0, t1));
        float *K = kv_seq(v, b, &cap, &n);
        v->seqs[ns++] = (layer_attn_seq_t){
            .out = v->att + (size_t)t0 * qd, .lse = v->lse + (size_t)t0 * v->dm->Hl,
            .q = v->q + (size_t)t0 * qd, .kc = K, .vc = kv_values(v, K, cap), .T = t1 - t0,
            .k1 = t1 - t0, .ldc = cap, .window = W};
        t0 = t1;
    }
    /* the new rows read in the dtype, written in the cache's */
    double sz = (double)emu_dtype_size(v->x->dtype) + layer_kvsize(v->x);
    emu_charge(v->x->dev, EMU_KERNEL_ELEMWISE, 0.0, sz * kv_parts(v) * TA * kvl * hd);
    *ns_out = ns;
    return MOEMU_OK;
}

/* Sequence b's keys and values among n rows (kall, vall; their sequences
 * and positions seq, pos) in position order into Kf, Vf (kvl, L, hd). */
static void cp_assemble(const layer_view_t *v, int b, int L, const float *kall,
                        const float *vall, const int *seq, const int *pos, int n, float *Kf,
                        float *Vf)
{
    int hd = v->dm->hd, kvl = v->dm->kvl, kvd = kvl * hd;
    for (int j = 0; j < n; j++)
        if (seq[j] == b)
            for (int g = 0; g < kvl; g++) {
                size_t dst = ((size_t)g * L + pos[j]) * hd;
                memcpy(Kf + dst, kall + (size_t)j * kvd + g * hd, sizeof(float) * hd);
                if (Vf != Kf) memcpy(Vf + dst, vall + (size_t)j * kvd + g * hd, sizeof(float) * hd);
            }
}

/* Whether CP rank q's key at position p of sequence b is in the window of
 * another rank's queries: among the W - 1 positions before one of its
 * chunks (a window's other keys are the querying rank's own). */
static bool cp_window_needs(const layer_view_t *v, int b, int p, int q, int W)
{
    for (int o = 0; o < v->sh->cp_size; o++) {
        int rg[2][2];
        par_cp_ranges(v->r->seq_len[b], v->sh->cp_size, o, rg);
        for (int c = 0; c < 2 && o != q; c++)
            if (rg[c][1] > rg[c][0] && p < rg[c][0] && p > rg[c][0] - W) return true;
    }
    return false;
}

/* The keys and values of a sliding layer's CP prefill: only the rows
 * another rank's window needs travel, into kall, vall, listed by sequence
 * and position in lseq, lpos (*n of them). */
static moemu_status_t cp_gather_window(layer_view_t *v, int W, float *kall, float *vall,
                                       int *lseq, int *lpos, int *n)
{
    const layer_rows_t *r = v->r;
    int CP = v->sh->cp_size, me = v->sh->cp_rank, kvd = v->dm->kvl * v->dm->hd, cnt[CP], mine = 0;
    *n = 0;
    for (int q = 0, j = 0; q < CP; q++) {
        cnt[q] = 0;
        for (int i = 0; i < r->cp_n[q]; i++, j++) {
            if (!cp_window_needs(v, r->cp_seq[j], r->cp_pos[j], q, W)) continue;
            lseq[*n] = r->cp_seq[j], lpos[*n] = r->cp_pos[j], (*n)++, cnt[q]++;
            if (q != me || !v->x->math) continue;
            /* this rank's rows to send, packed where the gather reads them */
            memcpy(kall + (size_t)mine * kvd, v->kk + (size_t)i * kvd, sizeof(float) * kvd);
            if (vall != kall)
                memcpy(vall + (size_t)mine * kvd, v->vv + (size_t)i * kvd, sizeof(float) * kvd);
            mine++;
        }
    }
    MOEMU_CHECK(layer_gather_rows(v->x, kall, kall, cnt, kvd, v->sh->cp));
    if (vall != kall) MOEMU_CHECK(layer_gather_rows(v->x, vall, vall, cnt, kvd, v->sh->cp));
    return MOEMU_OK;
}

/* Sequence b's whole prefix (L positions) into Kf, Vf: the gathered rows
 * (n of them, listed in seq, pos), and in a sliding layer, where only some
 * rows travel, this rank's own rows over zeros (the rows no window of
 * this rank reaches, never weighed, must not be NaN). */
static void cp_prefix(const layer_view_t *v, int b, int L, int W, const float *kall,
                      const float *vall, const int *seq, const int *pos, int n, float *Kf,
                      float *Vf)
{
    if (W > 0) {
        size_t m = (size_t)v->dm->kvl * L * v->dm->hd;
        memset(Kf, 0, sizeof(float) * m);
        if (Vf != Kf) memset(Vf, 0, sizeof(float) * m);
        cp_assemble(v, b, L, v->kk, v->vv, v->r->seq, v->r->pos, v->r->n, Kf, Vf);
    }
    cp_assemble(v, b, L, kall, vall, seq, pos, n, Kf, Vf);
}

/* CP prefill: gather every rank's keys and values (in a sliding layer,
 * only those another rank's window needs), attend with the causal prefix,
 * keep only this rank's rows in the cache. */
static moemu_status_t prefill_seqs_cp(layer_view_t *v, int *ns_out, int W)
{
    const layer_rows_t *r = v->r;
    layer_ctx_t *x = v->x;
    int hd = v->dm->hd, kvl = v->dm->kvl, kvd = kvl * hd, qd = v->dm->Hl * hd, TA = r->n;
    int CP = v->sh->cp_size, tot = 0, ns = 0;
    for (int cp = 0; cp < CP; cp++) tot += r->cp_n[cp];
    float *kall = v->kvall, *vall = v->dm->kv_shared ? kall : v->kvall + (size_t)v->Ttot * kvd;
    const int *gseq = r->cp_seq, *gpos = r->cp_pos;
    int *list = W > 0 ? malloc(sizeof(int) * (2 * (size_t)tot + 1)) : NULL;
    if (W > 0 && !list) return moemu_fail(MOEMU_ERR_NOMEM, "cannot list %d rows of keys", tot);
    moemu_status_t st = MOEMU_OK;
    if (W > 0) {
        gseq = list, gpos = list + tot;
        st = cp_gather_window(v, W, kall, vall, list, list + tot, &tot);
    } else {
        st = layer_gather_rows(x, kall, v->kk, r->cp_n, kvd, v->sh->cp);
        if (st == MOEMU_OK && vall != kall)
            st = layer_gather_rows(x, vall, v->vv, r->cp_n, kvd, v->sh->cp);
    }
    if (st == MOEMU_OK) st = kv_append_all(v);
    size_t off = 0;
    double assembled = 0;
    for (int t0 = 0; t0 < TA && st == MOEMU_OK;) {
        int b = r->seq[t0], L_b = r->seq_len[b];
        float *Kf = v->kfull + off, *Vf = v->dm->kv_shared ? Kf : Kf + (size_t)kvl * L_b * hd;
        off += (size_t)kv_parts(v) * kvl * L_b * hd;
        assembled += L_b;
        if (x->math) cp_prefix(v, b, L_b, W, kall, vall, gseq, gpos, tot, Kf, Vf);
        /* runs of consecutive positions: at most two per sequence */
        int t1 = t0;
        while (t1 < TA && r->seq[t1] == b) {
            int u = t1 + 1;
            while (u < TA && r->seq[u] == b && r->pos[u] == r->pos[u - 1] + 1) u++;
            v->seqs[ns++] = (layer_attn_seq_t){
                .out = v->att + (size_t)t1 * qd, .lse = v->lse + (size_t)t1 * v->dm->Hl,
                .q = v->q + (size_t)t1 * qd, .kc = Kf, .vc = Vf, .T = u - t1, .q0 = r->pos[t1],
                .k1 = r->pos[u - 1] + 1, .ldc = L_b, .window = W};
            t1 = u;
        }
        t0 = t1;
    }
    free(list);
    double sz = (double)emu_dtype_size(x->dtype);
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * kv_parts(v) * sz * assembled * kvd);
    *ns_out = ns;
    return st;
}

/* A prefill's attention as v->seqs, with or without CP; W > 0: a sliding
 * layer's window. */
static moemu_status_t prefill_seqs_all(layer_view_t *v, int *ns, int W)
{
    return v->sh->cp_size == 1 ? prefill_seqs(v, ns, W) : prefill_seqs_cp(v, ns, W);
}

/* Decode: the new token's keys and values stay on one CP rank; each rank
 * attends over its part of the cache (within the window, if any) and the
 * parts are merged. */
static moemu_status_t attend_decode(layer_view_t *v, int window)
{
    const layer_rows_t *r = v->r;
    layer_ctx_t *x = v->x;
    int hd = v->dm->hd, kvl = v->dm->kvl, Hl = v->dm->Hl, qd = Hl * hd, TA = r->n, ns = 0;
    int CP = v->sh->cp_size, cnt[CP];
    for (int t = 0; t < TA; t++) {
        int b = r->seq[t], cap, *n;
        if (r->pos[t] % CP == v->sh->cp_rank) MOEMU_CHECK(kv_append(v, t));
        float *K = kv_seq(v, b, &cap, &n);
        /* a window over CP's cache reads its rows' positions, in any order */
        const int *kpos = window > 0 && CP > 1 ? kv_positions(v, b) : NULL;
        v->seqs[ns++] = (layer_attn_seq_t){
            .out = v->att + (size_t)t * qd, .lse = v->lse + (size_t)t * Hl,
            .q = v->q + (size_t)t * qd, .kc = K, .vc = kv_values(v, K, cap), .T = 1,
            .q0 = kpos ? r->pos[t] : *n - 1, .k1 = *n, .ldc = cap, .window = window,
            .kpos = kpos};
    }
    layer_attention_batch(x, v->seqs, ns, Hl, kvl, hd, v->dm->attn_scale);
    double sz = (double)emu_dtype_size(x->dtype) + layer_kvsize(x);
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, sz * kv_parts(v) * TA * kvl * hd / CP);
    if (CP == 1) return MOEMU_OK;
    for (int cp = 0; cp < CP; cp++) cnt[cp] = TA;
    MOEMU_CHECK(layer_gather_rows(x, v->parts, v->att, cnt, qd, v->sh->cp));
    float *lses = v->parts + (size_t)CP * TA * qd;
    MOEMU_CHECK(layer_gather_rows(x, lses, v->lse, cnt, Hl, v->sh->cp));
    layer_attention_merge(x, v->att, v->lse, v->parts, lses, CP, TA, Hl, hd);
    return MOEMU_OK;
}

/* The SP slice's rows gathered over the TP group into all of A (na). */
static moemu_status_t sp_gather(layer_view_t *v, float *rows)
{
    int cnt[v->sh->tp_size];
    tp_counts(v, v->r->n, cnt);
    return layer_gather_rows(v->x, rows, rows + (size_t)v->r->r0 * v->dm->d, cnt, v->dm->d,
                             v->sh->tp);
}

/* Partial sums of all of A completed over the TP group: reduce-scattered
 * to the SP slices, or all-reduced. */
static moemu_status_t tp_sum(layer_view_t *v, float *rows)
{
    int cnt[v->sh->tp_size];
    if (v->sh->sp) {
        tp_counts(v, v->r->n, cnt);
        return layer_reduce_scatter_rows(v->x, rows, rows, cnt, v->dm->d, v->sh->tp);
    }
    return layer_allreduce(v->x, rows, (int64_t)v->r->n * v->dm->d, v->sh->tp);
}

/* RMSNorm over the whole width of q (TA, Hl*hd) and k (TA, kvl*hd),
 * whose columns the TP ranks share: each row's sum of squares over the
 * rank's columns (in double, as layer_rmsnorm), summed over the group in
 * fp32 (a key/value head replicated on several ranks counted once, by the
 * rank holding its group's first query head), then every column scaled as
 * layer_rmsnorm scales it, so that one device computes layer_rmsnorm's
 * numbers exactly. */
static double sum_sq(const float *x, int n)
{
    double s = 0.0;
    for (int i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

static void scale_row(float *x, const float *w, int n, double ss, int width, float eps)
{
    float r = (float)(1.0 / sqrt(ss / width + eps));
    for (int i = 0; i < n; i++) x[i] = x[i] * r * w[i];
}

static moemu_status_t qk_norm_width(layer_view_t *v, const layer_attn_w_t *w)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int TA = v->r->n, hd = dm->hd, qd = dm->Hl * hd, kvd = dm->kvl * hd;
    int G = dm->H / dm->Hkv, own0 = dm->kv_head0, own1 = dm->kv_head0 + dm->kvl;
    if (own0 * G < dm->head0) own0++; /* its first query head is another rank's */
    if (own1 > own0 && (own1 - 1) * G >= dm->head0 + dm->Hl) own1--;
    int k0 = (own0 - dm->kv_head0) * hd, kn = (own1 - own0) * hd;
    bool group = v->sh->tp_size > 1;
    float *ss = v->rowf;
    double sz = (double)emu_dtype_size(x->dtype);
    emu_charge(x->dev, EMU_KERNEL_NORM, 2.0 * TA * (qd + kvd), sz * TA * (qd + kvd));
    if (group) {
        for (int t = 0; t < TA && x->math; t++) {
            ss[2 * t] = (float)sum_sq(v->q + (size_t)t * qd, qd);
            ss[2 * t + 1] = (float)sum_sq(v->kk + (size_t)t * kvd + k0, kn);
        }
        MOEMU_CHECK(layer_allreduce(x, ss, 2 * (int64_t)TA, v->sh->tp));
    }
    const float *qn = w->qn + (size_t)dm->head0 * hd, *kw = w->kn + (size_t)dm->kv_head0 * hd;
    for (int t = 0; t < TA && x->math; t++) {
        float *q = v->q + (size_t)t * qd, *k = v->kk + (size_t)t * kvd;
        double sq = group ? ss[2 * t] : sum_sq(q, qd), sk = group ? ss[2 * t + 1] : sum_sq(k, kvd);
        scale_row(q, qn, qd, sq, dm->H * hd, dm->eps);
        scale_row(k, kw, kvd, sk, dm->Hkv * hd, dm->eps);
    }
    emu_charge(x->dev, EMU_KERNEL_NORM, 2.0 * TA * (qd + kvd), sz * (2.0 * TA * (qd + kvd) + qd + kvd));
    return MOEMU_OK;
}

/* One projection of T rows of d to n, charged here unless a fused kernel
 * charged it. */
static void proj(layer_ctx_t *x, bool charged, float *out, const float *in, const float *w,
                 int T, int d, int n)
{
    if (!charged) layer_linear_charge(x, EMU_KERNEL_GEMM, T, d, n, false);
    layer_linear_math(x, out, in, w, T, d, n, d, false);
}

/* q, k, v of A from the normalised rows: the rank's heads' columns, their
 * biases, the query/key norm and the clamp, in Hugging Face's order. */
static moemu_status_t qkv(layer_view_t *v, const layer_attn_w_t *w)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int d = dm->d, hd = dm->hd, TA = v->r->n, qd = dm->Hl * hd, kvd = dm->kvl * hd;
    size_t q0 = (size_t)dm->head0 * hd, k0 = (size_t)dm->kv_head0 * hd;
    bool fused = layer_fused(x); /* one product of qd + 2 kvd columns */
    if (fused) layer_linear_charge(x, EMU_KERNEL_GEMM, TA, d, qd + 2 * kvd, false);
    proj(x, fused, v->q, v->na, w->wq + q0 * d, TA, d, qd);
    proj(x, fused, v->kk, v->na, w->wk + k0 * d, TA, d, kvd);
    proj(x, fused, v->vv, v->na, w->wv + k0 * d, TA, d, kvd);
    if (w->bq) {
        layer_bias(x, v->q, w->bq + q0, TA, qd);
        layer_bias(x, v->kk, w->bk + k0, TA, kvd);
        layer_bias(x, v->vv, w->bv + k0, TA, kvd);
    }
    if (w->qk_norm == LAYER_QKNORM_HEAD) {
        layer_rmsnorm(x, v->q, v->q, w->qn, TA * dm->Hl, hd, dm->eps);
        layer_rmsnorm(x, v->kk, v->kk, w->kn, TA * dm->kvl, hd, dm->eps);
    } else if (w->qk_norm == LAYER_QKNORM_WIDTH) {
        MOEMU_CHECK(qk_norm_width(v, w));
    }
    if (w->clip > 0) {
        layer_clamp(x, v->q, (int64_t)TA * qd, w->clip);
        layer_clamp(x, v->kk, (int64_t)TA * kvd, w->clip);
        layer_clamp(x, v->vv, (int64_t)TA * kvd, w->clip);
    }
    return MOEMU_OK;
}

moemu_status_t layer_attention_block(layer_view_t *v, const layer_attn_w_t *w)
{
    const layer_rows_t *r = v->r;
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int d = dm->d, hd = dm->hd, TA = r->n, R = r->r1 - r->r0, qd = dm->Hl * hd;

    layer_rmsnorm_pending(x, v->na + (size_t)r->r0 * d, v->xr, w->norm, R, d, dm->eps, &v->resid);
    if (v->sh->sp) MOEMU_CHECK(sp_gather(v, v->na));
    MOEMU_CHECK(qkv(v, w));
    layer_rope_qk(x, v->q, dm->Hl, v->kk, dm->kvl, r->pos, TA, hd, &dm->rope);
    if (r->decode) {
        MOEMU_CHECK(attend_decode(v, w->window));
    } else {
        int ns;
        MOEMU_CHECK(prefill_seqs_all(v, &ns, w->window));
        layer_attention_batch(x, v->seqs, ns, dm->Hl, dm->kvl, hd, dm->attn_scale);
    }
    /* the rank's heads' sinks, once the keys' parts are merged */
    if (w->sinks) layer_attention_sinks(x, v->att, v->lse, w->sinks + dm->head0, TA, dm->Hl, hd);
    /* row-parallel output projection: partial sums over the TP ranks */
    layer_linear(x, EMU_KERNEL_GEMM, v->o, v->att, w->wo + (size_t)dm->head0 * hd, TA, qd, d,
                 dm->H * hd, false);
    MOEMU_CHECK(tp_sum(v, v->o));
    if (w->bo) layer_bias(x, v->o, w->bo, R, d); /* once, on the summed rows */
    layer_residual(x, v->xr, v->o, (int64_t)R * d, dm->resid_mult, &v->resid);
    return MOEMU_OK;
}

/* ---- Multi-head latent attention */

/* MLA's row scratch: the query's down-projection, the heads' raw
 * queries, the latent, its rope part, the heads' outputs. */
typedef struct {
    float *cq, *qraw, *ckv, *kpe, *ocat;
} mla_buf_t;

static mla_buf_t mla_bufs(const layer_view_t *v)
{
    const layer_dims_t *dm = v->dm;
    size_t T = (size_t)v->r->n, Hl = (size_t)dm->Hl;
    mla_buf_t b = {.cq = v->mla};
    b.qraw = b.cq + T * dm->q_lora;
    b.ckv = b.qraw + T * Hl * (dm->nope + dm->rope_d);
    b.kpe = b.ckv + T * dm->lora;
    b.ocat = b.kpe + T * dm->rope_d;
    return b;
}

/* Row t's part of width n at column c of rows of width ld, into (or
 * from) a dense (T, n) buffer. */
static void mla_scatter(layer_ctx_t *x, float *dst, int ldd, const float *src, int lds, int T,
                        int n)
{
    for (int t = 0; t < T && x->math; t++)
        memcpy(dst + (size_t)t * ldd, src + (size_t)t * lds, sizeof(float) * n);
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * emu_dtype_size(x->dtype) * T * n);
}

/* Every head's raw query [q_nope | q_pe] into qraw (TA, Hl, qk). */
static void mla_query_raw(layer_view_t *v, const layer_mla_w_t *w, const mla_buf_t *b)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int TA = v->r->n, d = dm->d, Hl = dm->Hl, qk = dm->nope + dm->rope_d;
    size_t h0 = (size_t)dm->head0 * qk;
    if (w->q_a) {
        layer_linear(x, EMU_KERNEL_GEMM, b->cq, v->na, w->q_a, TA, d, dm->q_lora, d, false);
        layer_rmsnorm(x, b->cq, b->cq, w->q_a_norm, TA, dm->q_lora, w->eps);
        layer_linear(x, EMU_KERNEL_GEMM, b->qraw, b->cq, w->q_b + h0 * dm->q_lora, TA,
                     dm->q_lora, Hl * qk, dm->q_lora, false);
    } else {
        layer_linear(x, EMU_KERNEL_GEMM, b->qraw, v->na, w->wq + h0 * d, TA, d, Hl * qk, d,
                     false);
    }
}

/* Every head's absorbed query, [q_pe | q_nope W_uk], into q (TA, Hl, hd). */
static void mla_query_absorbed(layer_view_t *v, const layer_mla_w_t *w, const mla_buf_t *b)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int TA = v->r->n, Hl = dm->Hl, qk = dm->nope + dm->rope_d, hd = dm->hd;
    /* each head's rope part first, rotated (dm->rope.dim = rope_d) */
    mla_scatter(x, v->q, hd, b->qraw + dm->nope, qk, TA * Hl, dm->rope_d);
    layer_rope(x, v->q, v->r->pos, TA, Hl, hd, &dm->rope);
    /* absorbed: head h's q_nope times its W_uk (kv_b_proj's nope rows) */
    layer_gemm_t g = {.out = v->q + dm->rope_d, .in = b->qraw,
                      .w = w->kv_b + (size_t)dm->head0 * (dm->nope + dm->vd) * dm->lora,
                      .ldo = Hl * hd, .ldi = Hl * qk, .ldw = dm->lora, .so = (size_t)hd,
                      .si = (size_t)qk, .sw = (size_t)(dm->nope + dm->vd) * dm->lora};
    layer_gemm(x, &g, Hl, TA, dm->nope, dm->lora, false);
}

/* Every row's latent, [k_pe | RMSNorm(c_kv)], into kk (TA, hd). */
static void mla_latent(layer_view_t *v, const layer_mla_w_t *w, const mla_buf_t *b)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int TA = v->r->n, d = dm->d, hd = dm->hd;
    layer_linear(x, EMU_KERNEL_GEMM, b->ckv, v->na, w->kv_a, TA, d, dm->lora, d, false);
    layer_linear(x, EMU_KERNEL_GEMM, b->kpe, v->na, w->kv_a + (size_t)dm->lora * d, TA, d,
                 dm->rope_d, d, false);
    layer_rmsnorm(x, b->ckv, b->ckv, w->kv_a_norm, TA, dm->lora, w->eps);
    mla_scatter(x, v->kk, hd, b->kpe, dm->rope_d, TA, dm->rope_d);
    mla_scatter(x, v->kk + dm->rope_d, hd, b->ckv, dm->lora, TA, dm->lora);
    layer_rope(x, v->kk, v->r->pos, TA, 1, hd, &dm->rope);
}

/* Head-major keys K (Hl, n, qk), [k_nope | k_pe], and values V (Hl, n,
 * vd) of n latent rows lat ([k_pe | c_kv], hd wide): c_kv times each
 * head's W_uk and W_uv (kv_b_proj's rows), k_pe shared by the heads. */
static void mla_decompress(layer_view_t *v, const layer_mla_w_t *w, const float *lat, int n,
                           float *K, float *V)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int Hl = dm->Hl, qk = dm->nope + dm->rope_d, vd = dm->vd, hd = dm->hd, lora = dm->lora;
    size_t sw = (size_t)(dm->nope + vd) * lora;
    const float *wb = w->kv_b + (size_t)dm->head0 * sw;
    layer_gemm_t gk = {.out = K, .in = lat + dm->rope_d, .w = wb, .ldo = qk, .ldi = hd,
                       .ldw = lora, .so = (size_t)n * qk, .sw = sw};
    layer_gemm(x, &gk, Hl, n, lora, dm->nope, true);
    layer_gemm_t gv = {.out = V, .in = lat + dm->rope_d, .w = wb + (size_t)dm->nope * lora,
                       .ldo = vd, .ldi = hd, .ldw = lora, .so = (size_t)n * vd, .sw = sw};
    layer_gemm(x, &gv, Hl, n, lora, vd, true);
    for (int h = 0; h < Hl && x->math; h++)
        for (int t = 0; t < n; t++)
            memcpy(K + ((size_t)h * n + t) * qk + dm->nope, lat + (size_t)t * hd,
                   sizeof(float) * dm->rope_d);
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, 0.0,
               2.0 * emu_dtype_size(x->dtype) * Hl * (double)n * dm->rope_d);
}

/* Prefill in the decompressed form, as DeepSeek's and vLLM's prefill
 * kernels run it: the latent rows of each sequence's prefix become every
 * head's keys and values (qk and vd wide), attended as multi-head
 * attention by the raw queries [q_nope | rope(q_pe)], into ocat (TA, Hl,
 * vd). The cache keeps the latent; decode attends in it (absorbed). */
static moemu_status_t mla_prefill(layer_view_t *v, const layer_mla_w_t *w, const mla_buf_t *b)
{
    const layer_dims_t *dm = v->dm;
    int Hl = dm->Hl, qk = dm->nope + dm->rope_d, vd = dm->vd, qd = Hl * dm->hd, ns;
    layer_rope(v->x, b->qraw + dm->nope, v->r->pos, v->r->n, Hl, qk, &dm->rope);
    MOEMU_CHECK(prefill_seqs_all(v, &ns, 0));
    float *kv = v->mla_kv;
    for (int i = 0, j; i < ns; i = j) {
        /* the runs of one sequence share its latent: decompressed once */
        const float *lat = v->seqs[i].kc;
        int n = 0;
        for (j = i; j < ns && v->seqs[j].kc == lat; j++) n = v->seqs[j].k1 > n ? v->seqs[j].k1 : n;
        float *K = kv, *V = kv + (size_t)Hl * n * qk;
        kv = V + (size_t)Hl * n * vd;
        mla_decompress(v, w, lat, n, K, V);
        for (int u = i; u < j; u++) {
            layer_attn_seq_t *s = &v->seqs[u];
            size_t t = (size_t)(s->q - v->q) / (size_t)qd; /* its first row */
            s->q = b->qraw + t * Hl * qk;
            s->out = b->ocat + t * Hl * vd;
            s->kc = K, s->vc = V, s->ldc = n;
        }
    }
    layer_attention_batch_v(v->x, v->seqs, ns, Hl, Hl, qk, vd, dm->attn_scale);
    return MOEMU_OK;
}

/* Decode in the absorbed form: the queries times W_uk attend in the
 * latent, the attended latent times W_uv gives each head's output. */
static moemu_status_t mla_decode(layer_view_t *v, const layer_mla_w_t *w, const mla_buf_t *b)
{
    const layer_dims_t *dm = v->dm;
    int Hl = dm->Hl, vd = dm->vd, hd = dm->hd;
    mla_query_absorbed(v, w, b);
    MOEMU_CHECK(attend_decode(v, 0));
    /* head h's output: its attended latent times W_uv (kv_b_proj's v rows) */
    layer_gemm_t g = {.out = b->ocat, .in = v->att + dm->rope_d,
                      .w = w->kv_b + ((size_t)dm->head0 * (dm->nope + vd) + dm->nope) * dm->lora,
                      .ldo = Hl * vd, .ldi = Hl * hd, .ldw = dm->lora, .so = (size_t)vd,
                      .si = (size_t)hd, .sw = (size_t)(dm->nope + vd) * dm->lora};
    layer_gemm(v->x, &g, Hl, v->r->n, dm->lora, vd, true);
    return MOEMU_OK;
}

moemu_status_t layer_mla_block(layer_view_t *v, const layer_mla_w_t *w)
{
    const layer_rows_t *r = v->r;
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int d = dm->d, TA = r->n, R = r->r1 - r->r0, Hl = dm->Hl, vd = dm->vd;
    mla_buf_t b = mla_bufs(v);
    layer_rmsnorm_pending(x, v->na + (size_t)r->r0 * d, v->xr, w->norm, R, d, dm->eps, &v->resid);
    if (v->sh->sp) MOEMU_CHECK(sp_gather(v, v->na));
    mla_query_raw(v, w, &b);
    mla_latent(v, w, &b);
    MOEMU_CHECK(r->decode ? mla_decode(v, w, &b) : mla_prefill(v, w, &b));
    layer_linear(x, EMU_KERNEL_GEMM, v->o, b.ocat, w->wo + (size_t)dm->head0 * vd, TA, Hl * vd, d,
                 dm->H * vd, false);
    MOEMU_CHECK(tp_sum(v, v->o));
    layer_residual(x, v->xr, v->o, (int64_t)R * d, dm->resid_mult, &v->resid);
    return MOEMU_OK;
}

/* ---- Vocabulary-parallel embedding and lm_head */

/* A context whose weights are in its dtype: what an FP8 checkpoint keeps
 * unquantized (lm_head, the router) reads them so. */
static layer_ctx_t dtype_weights(const layer_ctx_t *x)
{
    layer_ctx_t c = *x;
    c.wsize = 0;
    return c;
}

void layer_vocab_rows(int V, int tp, int t, int *v0, int *v1)
{
    if (tp < 1) tp = 1;
    int per = (int)(((int64_t)V + tp - 1) / tp);
    *v0 = per * t;
    *v1 = *v0 + per;
}

/* Granite scales the lookup; a model without a multiplier pays nothing. */
static bool dm_embed_scaled(const layer_view_t *v) { return v->dm->embed_mult != 1.0f; }

moemu_status_t layer_embed_block(layer_view_t *v, const float *table, const int *tok)
{
    layer_ctx_t *x = v->x;
    int d = v->dm->d, TA = v->r->n, v0 = v->dm->vocab0, v1 = v0 + v->dm->Vl;
    if (x->math)
        for (int t = 0; t < TA; t++) {
            float *row = v->o + (size_t)t * d;
            if (tok[t] >= v0 && tok[t] < v1) {
                const float *w = table + (size_t)tok[t] * d;
                if (!layer_weights_read(row, w, d)) memcpy(row, w, sizeof(float) * d);
            }
            else
                memset(row, 0, sizeof(float) * d); /* another rank's row */
        }
    emu_charge(x->dev, EMU_KERNEL_EMBED, 0.0, 2.0 * TA * d * emu_dtype_size(x->dtype));
    if (dm_embed_scaled(v)) layer_scale(x, v->o, (int64_t)TA * d, v->dm->embed_mult);
    if (v->sh->sp) {
        int cnt[v->sh->tp_size];
        tp_counts(v, TA, cnt);
        return layer_reduce_scatter_rows(x, v->xr, v->o, cnt, d, v->sh->tp);
    }
    MOEMU_CHECK(layer_allreduce(x, v->o, (int64_t)TA * d, v->sh->tp));
    if (x->math) memcpy(v->xr, v->o, sizeof(float) * (size_t)TA * d);
    return MOEMU_OK;
}

moemu_status_t layer_head_block(layer_view_t *v, const float *norm, const float *lm_head,
                                const int *rows, int nl, const float **logits, size_t *ld)
{
    const layer_dims_t *dm = v->dm;
    layer_ctx_t *x = v->x;
    int d = dm->d, V = dm->V, Vl = dm->Vl, TP = v->sh->tp_size, cnt[TP];
    const float *xa = v->xr;
    if (v->sh->sp) {
        tp_counts(v, v->r->n, cnt);
        MOEMU_CHECK(layer_gather_rows(x, v->na, v->xr, cnt, d, v->sh->tp));
        xa = v->na;
    }
    if (x->math)
        for (int i = 0; i < nl; i++)
            memcpy(v->o + (size_t)i * d, xa + (size_t)rows[i] * d, sizeof(float) * d);
    layer_rmsnorm(x, v->o, v->o, norm, nl, d, dm->eps);
    int v0 = dm->vocab0, real = (v0 + Vl < V ? v0 + Vl : V) - v0;
    if (real < 0) real = 0;
    layer_ctx_t hx = dtype_weights(x);
    layer_linear(&hx, EMU_KERNEL_GEMM, v->logits, v->o, lm_head + (size_t)v0 * d, nl, d, real, d,
                 false);
    if (dm->logit_div != 1.0f) /* Granite's logits_scaling: a division, as its code does */
        for (int64_t i = 0; x->math && i < (int64_t)nl * real; i++) v->logits[i] /= dm->logit_div;
    if (x->math && real < Vl) /* padding rows of the vocabulary never win */
        for (int i = nl - 1; i >= 0; i--) {
            memmove(v->logits + (size_t)i * Vl, v->logits + (size_t)i * real, sizeof(float) * real);
            for (int j = real; j < Vl; j++) v->logits[(size_t)i * Vl + j] = -INFINITY;
        }
    *logits = v->logits;
    *ld = (size_t)Vl;
    if (TP == 1) return MOEMU_OK;
    for (int t = 0; t < TP; t++) cnt[t] = nl;
    MOEMU_CHECK(layer_gather_rows(x, v->lgath, v->logits, cnt, Vl, v->sh->tp));
    if (x->math) /* (TP, nl, Vl) to (nl, TP * Vl) */
        for (int t = 0; t < TP; t++)
            for (int i = 0; i < nl; i++)
                memcpy(v->logits + (size_t)i * TP * Vl + (size_t)t * Vl,
                       v->lgath + ((size_t)t * nl + i) * Vl, sizeof(float) * Vl);
    *ld = (size_t)TP * Vl;
    return MOEMU_OK;
}

/* ---- The mixture of experts */

void layer_moe_route(layer_view_t *v, const float *norm, const float *gate, layer_route_t how,
                     const layer_gate_t *g)
{
    const layer_rows_t *r = v->r;
    int d = v->dm->d, R = r->r1 - r->r0, nM = r->m1 - r->m0;
    layer_rmsnorm_pending(v->x, v->na + (size_t)r->r0 * d, v->xr, norm, R, d, v->dm->eps, &v->resid);
    layer_ctx_t rx = dtype_weights(v->x);
    layer_router(&rx, v->idx, v->wts, v->rlog, v->na + (size_t)r->m0 * d, gate, nM, d, v->dm->E,
                 v->dm->k, how, g);
}

moemu_status_t layer_moe_capacity(layer_view_t *v, double cf, int64_t *dropped)
{
    const layer_rows_t *r = v->r;
    int nM = r->m1 - r->m0;
    if (cf <= 0.0)
        return layer_capacity_group(v->x, v->keep, dropped, v->idx, nM, NULL, NULL, 0, v->dm->k,
                                    v->dm->E, 0.0, NULL);
    /* replicated rows: this rank holds its replica's whole routing group */
    return layer_capacity_group(v->x, v->keep, dropped, v->idx, nM, r->group_n, r->group_pos,
                                r->group_T, v->dm->k, v->dm->E, cf,
                                v->sh->moe_replicated ? NULL : v->sh->replica);
}

/* The routed outputs of the M rows back to every row of R: over the CP
 * group in decode (M is cut between CP ranks there), then over the TP
 * group unless SP keeps the slices apart. */
static moemu_status_t routed_back(layer_view_t *v)
{
    const layer_rows_t *r = v->r;
    const layer_shard_t *sh = v->sh;
    int d = v->dm->d, TA = r->n, a, z;
    int cnt[sh->tp_size > sh->cp_size ? sh->tp_size : sh->cp_size];
    par_sp_range(TA, sh->tp_size, sh->tp_rank, &a, &z);
    if (r->decode && sh->cp_size > 1) {
        for (int cp = 0; cp < sh->cp_size; cp++) {
            int c0, c1;
            par_sp_range(z - a, sh->cp_size, cp, &c0, &c1);
            cnt[cp] = c1 - c0;
        }
        MOEMU_CHECK(layer_gather_rows(v->x, v->moe + (size_t)a * d, v->moe + (size_t)r->m0 * d,
                                      cnt, d, sh->cp));
    }
    if (!sh->sp && sh->tp_size > 1 && !sh->moe_replicated) {
        tp_counts(v, TA, cnt);
        MOEMU_CHECK(layer_gather_rows(v->x, v->moe, v->moe + (size_t)a * d, cnt, d, sh->tp));
    }
    return MOEMU_OK;
}

/* Qwen2-MoE's shared-expert gate: rows R of out (summed) times
 * sigmoid(gate . x) of their normalised rows. */
static void mlp_gate(layer_view_t *v, float *out, const float *gate)
{
    const layer_rows_t *r = v->r;
    layer_ctx_t *x = v->x;
    int d = v->dm->d, R = r->r1 - r->r0;
    layer_linear(x, EMU_KERNEL_GEMM, v->rowf, v->na + (size_t)r->r0 * d, gate, R, d, 1, d, false);
    if (x->math)
        for (int t = 0; t < R; t++) {
            float g = 1.0f / (1.0f + layer_exp(-v->rowf[t]));
            for (int i = 0; i < d; i++) out[(size_t)t * d + i] *= g;
        }
    emu_charge(x->dev, EMU_KERNEL_ELEMWISE, (double)R * (d + 4),
               2.0 * R * d * emu_dtype_size(x->dtype));
}

/* The MLPs of layer_mlp_block into v->sh_out, not yet added, on the
 * rows of A in na (gathered over TP with SP). */
static moemu_status_t mlp_compute(layer_view_t *v, const layer_mlp_t *m)
{
    const layer_rows_t *r = v->r;
    layer_ctx_t *x = v->x;
    int d = v->dm->d, TA = r->n, Fl = m->f1 - m->f0;
    if (x->math) memset(v->sh_out, 0, sizeof(float) * (size_t)TA * d);
    layer_expert_job_t jobs[m->S];
    for (int j = 0; j < m->S; j++)
        jobs[j] = (layer_expert_job_t){
            .out = v->sh_out, .x = v->na, .w1 = m->w1[j] + (size_t)m->f0 * d,
            .w3 = m->w3[j] ? m->w3[j] + (size_t)m->f0 * d : NULL, .w2 = m->w2[j] + m->f0, .n = TA};
    layer_ctx_t xs = *x; /* shared experts are not the routed ones' storage */
    xs.ewsize = 0;
    layer_expert_group(&xs, jobs, m->S, v->parts, d, Fl, m->F, m->act, 0.0f, true);
    MOEMU_CHECK(tp_sum(v, v->sh_out));
    if (m->gate) mlp_gate(v, v->sh_out, m->gate);
    return MOEMU_OK;
}

moemu_status_t layer_mlp_block(layer_view_t *v, const layer_mlp_t *m, float *out)
{
    if (v->sh->sp) MOEMU_CHECK(sp_gather(v, v->na));
    MOEMU_CHECK(mlp_compute(v, m));
    layer_add(v->x, out, v->sh_out, (int64_t)(v->r->r1 - v->r->r0) * v->dm->d);
    return MOEMU_OK;
}

/* The work beside the routed rows' journey: the shared experts (over),
 * and with two-batch overlap the other lane's turn (lanes). */
typedef struct {
    layer_view_t *v;
    const layer_mlp_t *m;
    bool over, lanes;
} beside_t;

static moemu_status_t beside_rows(void *arg)
{
    beside_t *a = arg;
    if (a->over) MOEMU_CHECK(mlp_compute(a->v, a->m));
    if (a->lanes) emu_dev_lane_yield(a->v->x->dev);
    return MOEMU_OK;
}

static moemu_status_t beside_back(void *arg)
{
    beside_t *a = arg;
    emu_dev_lane_yield(a->v->x->dev);
    return MOEMU_OK;
}

moemu_status_t layer_dense_block(layer_view_t *v, const float *norm, const layer_mlp_t *m)
{
    const layer_rows_t *r = v->r;
    int d = v->dm->d, R = r->r1 - r->r0;
    float *out = v->moe + (size_t)r->r0 * d;
    layer_rmsnorm_pending(v->x, v->na + (size_t)r->r0 * d, v->xr, norm, R, d, v->dm->eps, &v->resid);
    if (v->x->math) memset(out, 0, sizeof(float) * (size_t)R * d);
    MOEMU_CHECK(layer_mlp_block(v, m, out));
    layer_residual(v->x, v->xr, out, (int64_t)R * d, v->dm->resid_mult, &v->resid);
    return MOEMU_OK;
}

moemu_status_t layer_moe_block(layer_view_t *v, const layer_experts_t *ex, const layer_mlp_t *mlp)
{
    const layer_rows_t *r = v->r;
    int d = v->dm->d, R = r->r1 - r->r0, nM = r->m1 - r->m0;
    /* Megatron's shared-expert overlap: they compute while the routed rows
     * travel (their SP gather first, as its pre_forward_comm), and their
     * output waits in sh_out (the sum is the same). Two-batch overlap
     * runs them there too (SGLang's order), then gives the device to the
     * other lane while the rows travel and again while they come back. */
    bool fly = layer_moe_in_flight(v->x, v->sh, r->decode), lanes = fly && emu_dev_in_lanes(v->x->dev);
    bool over = mlp->S > 0 && fly &&
                (lanes || emu_dev_spec(v->x->dev)->stack.overlap == EMU_OVERLAP_SHARED_EXPERTS);
    beside_t sa = {v, mlp, over, lanes};
    layer_beside_t beside = {beside_rows, lanes ? beside_back : NULL, &sa};
    if (over && v->sh->sp) MOEMU_CHECK(sp_gather(v, v->na));
    MOEMU_CHECK(layer_moe_routed(v->x, v->sh, r->decode, v->moe + (size_t)r->m0 * d,
                                 v->na + (size_t)r->m0 * d, v->idx, v->wts, v->keep, nM, ex,
                                 over || lanes ? &beside : NULL));
    MOEMU_CHECK(routed_back(v));
    float *moeR = v->moe + (size_t)r->r0 * d;
    if (over) layer_add(v->x, moeR, v->sh_out, (int64_t)R * d);
    else if (mlp->S > 0) MOEMU_CHECK(layer_mlp_block(v, mlp, moeR));
    layer_residual(v->x, v->xr, moeR, (int64_t)R * d, v->dm->resid_mult, &v->resid);
    return MOEMU_OK;
}
