/* The run on emulated devices. Each device thread walks the same schedule
 * over its DP replica's micro-batches (prefill, then one decode pass per
 * generated token), receives its stage's input from the previous stage,
 * runs its family's layer for each layer it holds and sends the result on;
 * the last stage computes the logits and hands the next tokens back to the
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

#include "engine/run/runner.h"

enum { C_TP, C_CP, C_EP, C_ETP, C_REPLICA, C_PP, C__COUNT };

static const par_group_t comm_groups[C__COUNT] = {
    PAR_GROUP_TP, PAR_GROUP_CP, PAR_GROUP_EP, PAR_GROUP_ETP, PAR_GROUP_REPLICA, PAR_GROUP_PP,
};

/* The run, shared by the device threads. */
typedef struct {
    const wts_t *w;
    const cfg_model_t *c;
    const model_family_t *fam;
    const wl_t *wl;
    const runner_opts_t *o;
    const model_opts_t *mo;
    const par_strategy_t *s;
    int world, route_pos, route_dp;
    par_comm_t **comm;  /* (world, C__COUNT), NULL for a group of one */
    model_out_t *out;
    int64_t *assign, *dropped; /* (world) */
    int64_t *load;             /* (world, layers, experts) */
} run_t;

typedef struct {
    int b0, b1;  /* sequences */
    bool decode;
    int step;    /* decode pass 1..N-1 */
} pass_t;

/* One device's state. */
typedef struct {
    run_t *D;
    emu_dev_t *dev;
    layer_ctx_t x;
    layer_shard_t sh;
    model_place_t pl;
    layer_view_t view;
    layer_rows_t rows;
    const pass_t *ps;
    int rank, P, stage;
    int rb0, rb1, nmb;
    int *mb;         /* (nmb + 1) first sequence of each micro-batch */
    int *tok;        /* (rb1 - rb0) each replica sequence's next input token */
    double sched_bytes; /* host bytes of the schedule's arrays */
    /* KV cache of (local layer, replica sequence): K then V, (kvl, cap, hd) */
    float *kv;
    double kv_bytes;
    int64_t *kv_off;
    int *kv_cap, *kv_n;
    int *kv_pos; /* the cached rows' positions: CP with sliding windows */
    /* the runner's rows, for Tmax rows and Ttot keys */
    int *seqbuf, *posbuf, *allseq, *allpos, *counts, *gpos, *ibuf;
    int *gcounts; /* (cp * tp) the routing group's members' rows (host only) */
    int npass;   /* passes begun */
    int cp_pass; /* the pass whose CP lists rows holds, 0 none */
    int group_pass; /* the pass whose routing group rows holds, 0 none */
    void *block;
    double block_bytes;
} worker_t;

/* The ranges of R and M of member (cp, tp) in the rows r->n of a pass
 * (docs/strategies.md). */
static void pass_ranges(const worker_t *v, const pass_t *ps, int cp, int tp, layer_rows_t *r)
{
    const par_strategy_t *s = v->D->s;
    int a, z;
    par_sp_range(r->n, s->tp, tp, &a, &z);
    r->r0 = s->sp ? a : 0;
    r->r1 = s->sp ? z : r->n;
    r->m0 = a;
    r->m1 = z;
    if (par_moe_replicated(s)) { /* every TP rank routes every row */
        r->m0 = 0;
        r->m1 = r->n;
    }
    if (ps->decode && s->cp > 1) {
        int c0, c1;
        par_sp_range(z - a, s->cp, cp, &c0, &c1);
        r->m0 = a + c0;
        r->m1 = a + c1;
    }
}

/* The rows of a pass on replica member (cp, tp): r->seq, r->pos (the
 * same for every tp) and the ranges of R and M. */
static void pass_rows(const worker_t *v, const pass_t *ps, int cp, int tp, layer_rows_t *r,
                      int *seq, int *pos)
{
    const wl_t *wl = v->D->wl;
    const par_strategy_t *s = v->D->s;
    r->n = 0;
    for (int b = ps->b0; b < ps->b1; b++) {
        if (ps->decode) {
            seq[r->n] = b;
            pos[r->n++] = wl->len[b] + ps->step - 1;
            continue;
        }
        int rg[2][2];
        par_cp_ranges(wl->len[b], s->cp, cp, rg);
        for (int i = 0; i < 2; i++)
            for (int p = rg[i][0]; p < rg[i][1]; p++) {
                seq[r->n] = b;
                pos[r->n++] = p;
            }
    }
    r->seq = seq;
    r->pos = pos;
    pass_ranges(v, ps, cp, tp, r);
}

/* CP prefill: every CP rank's rows, for the keys and values it gathers;
 * the same in every layer of a pass, made in its first. */
static void cp_rows(worker_t *v, const pass_t *ps, layer_rows_t *r)
{
    if (v->cp_pass == v->npass) return;
    int tot = 0;
    for (int cp = 0; cp < v->D->s->cp; cp++) {
        layer_rows_t t = {0};
        pass_rows(v, ps, cp, v->sh.tp_rank, &t, v->allseq + tot, v->allpos + tot);
        v->counts[cp] = t.n;
        tot += t.n;
    }
    v->cp_pass = v->npass;
    r->cp_seq = v->allseq;
    r->cp_pos = v->allpos;
    r->cp_n = v->counts;
}

/* Capacity: the routing group is this replica's micro-batch; every
 * member's routed tokens and their places in group order, the same in
 * every layer of a pass: made in its first. A member's rows depend on its
 * CP rank only (its TP rank picks a range of them): in a CP prefill they
 * are the CP lists of cp_rows, otherwise this device's own (in decode
 * every CP rank has the same). */
static void group_rows(worker_t *v, const pass_t *ps, layer_rows_t *r)
{
    if (v->group_pass == v->npass) return;
    v->group_pass = v->npass;
    const run_t *D = v->D;
    int CP = D->s->cp, TP = D->s->tp, first[CP], n[CP];
    bool lists = !ps->decode && CP > 1;
    for (int cp = 0; cp < CP; cp++) {
        first[cp] = lists && cp ? first[cp - 1] + n[cp - 1] : 0;
        n[cp] = lists ? r->cp_n[cp] : r->n;
    }
    int64_t off[D->wl->batch + 1];
    off[ps->b0] = 0;
    for (int b = ps->b0; b < ps->b1; b++) off[b + 1] = off[b] + (ps->decode ? 1 : D->wl->len[b]);
    int tot = 0;
    for (int cp = 0; cp < CP; cp++) {
        layer_rows_t t = {.n = n[cp], .seq = (lists ? r->cp_seq : r->seq) + first[cp],
                          .pos = (lists ? r->cp_pos : r->pos) + first[cp]};
        for (int tp = 0; tp < TP; tp++) {
            pass_ranges(v, ps, cp, tp, &t);
            if (v->sh.moe_replicated && tp > 0) t.m1 = t.m0; /* rank 0's rows are all */
            v->gcounts[cp * TP + tp] = t.m1 - t.m0;
            for (int j = t.m0; j < t.m1; j++)
                v->gpos[tot++] = (int)(off[t.seq[j]] + (ps->decode ? 0 : t.pos[j]));
        }
    }
    r->group_T = (int)off[ps->b1];
    r->group_n = v->gcounts;
    r->group_pos = v->gpos;
}

/* ---- The runner's part of routing, called back from a family's layer */

static void routes_chosen(const model_pass_t *mp)
{
    worker_t *v = mp->arg;
    run_t *D = v->D;
    const layer_rows_t *r = &v->rows;
    if (D->c->capacity_factor > 0.0) group_rows(v, v->ps, &v->rows);
    if (D->o->dry) /* the router's decisions come from the routing source */
        route_choose_rows(D->o->routing, mp->layer, r->seq + r->m0, r->pos + r->m0,
                          r->m1 - r->m0, v->view.idx);
}

static void routes_kept(const model_pass_t *mp, int64_t dropped)
{
    worker_t *v = mp->arg;
    run_t *D = v->D;
    const layer_rows_t *r = &v->rows;
    int k = v->pl.dims.k, nM = r->m1 - r->m0, l = mp->layer;
    if (v->sh.moe_replicated && v->sh.tp_rank > 0) return; /* TP rank 0 counts them */
    D->dropped[v->rank] += dropped;
    D->assign[v->rank] += (int64_t)nM * k;
    if (!D->mo->route) return;
    for (int j = 0; j < nM; j++) {
        int t = r->m0 + j;
        for (int s = 0; s < k; s++) {
            int a = j * k + s, e = v->view.idx[a];
            D->mo->route[(((int64_t)l * D->wl->batch + r->seq[t]) * D->route_pos + r->pos[t]) * k +
                         s] = v->view.keep[a] ? e : -1 - e;
        }
    }
}

static moemu_status_t layer(worker_t *v, int l)
{
    run_t *D = v->D;
    if (!v->ps->decode && D->s->cp > 1) cp_rows(v, v->ps, &v->rows);
    int i = (l - v->pl.par.layer0) * (v->rb1 - v->rb0);
    v->view.kv = (layer_kv_t){.base = v->kv, .off = v->kv_off + i, .cap = v->kv_cap + i,
                              .n = v->kv_n + i, .b0 = v->rb0, .pos = v->kv_pos};
    model_pass_t mp = {.v = &v->view, .w = D->w, .place = &v->pl, .layer = l,
                       .load = D->load + ((size_t)v->rank * D->c->num_hidden_layers + l) *
                                             D->c->num_local_experts,
                       .xfer = D->out->moe_xfer + 2 * v->rank, .chosen = routes_chosen,
                       .kept = routes_kept, .arg = v};
    return D->fam->layer(&mp);
}

/* ---- First and last stage */

static moemu_status_t embed(worker_t *v, const pass_t *ps)
{
    const wl_t *wl = v->D->wl;
    const layer_rows_t *r = &v->rows;
    int *tok = v->ibuf;
    for (int t = 0; t < r->n; t++) {
        int b = r->seq[t];
        tok[t] = ps->decode ? v->tok[b - v->rb0] : wl->tokens[wl->start[b] + r->pos[t]];
    }
    return layer_embed_block(&v->view, v->D->w->embed, tok);
}

/* The next tokens of the micro-batch from the logits of its rows: greedy
 * picks, outputs kept by one writer, and the hand-back to stage 0. */
static moemu_status_t pick(worker_t *v, const pass_t *ps, const float *full, size_t ld, int nl)
{
    run_t *D = v->D;
    const layer_rows_t *r = &v->rows;
    model_out_t *out = D->out;
    int V = D->c->vocab_size, N = D->wl->decode, Lmax = D->wl->max_len, nb = ps->b1 - ps->b0;
    bool math = v->x.math;
    /* the engine's scheduling and sampling of them, before the tokens exist */
    emu_charge_host(v->dev, nb);
    /* next tokens: -1 where another CP rank knows it */
    for (int i = 0; i < nb; i++) v->ibuf[nl + i] = -1;
    bool writer = v->sh.tp_rank == 0 && (!ps->decode || v->sh.cp_rank == 0);
    int step = ps->decode ? ps->step : 0;
    for (int i = 0; i < nl; i++) {
        int t = v->ibuf[i], b = r->seq[t], p = r->pos[t];
        const float *row = full + (size_t)i * ld;
        if (writer && out->prompt_logits && !ps->decode && math)
            memcpy(out->prompt_logits + ((size_t)b * Lmax + p) * V, row, sizeof(float) * V);
        if (!ps->decode && p != D->wl->len[b] - 1) continue;
        int tok = math ? layer_argmax(row, V) : 0;
        v->ibuf[nl + b - ps->b0] = tok;
        if (!writer || N == 0) continue;
        out->generated[(size_t)b * N + step] = tok;
        out->token_time[(size_t)b * N + step] = emu_dev_clock(v->dev);
        if (out->gen_logits && math)
            memcpy(out->gen_logits + ((size_t)b * N + step) * V, row, sizeof(float) * V);
    }
    int *next = v->ibuf + nl;
    if (!ps->decode && v->sh.cp_size > 1)
        MOEMU_CHECK(par_allreduce(next, next, (size_t)nb, EMU_DTYPE_INT32, PAR_OP_MAX, v->sh.cp,
                                  v->dev));
    if (step + 1 >= N) return MOEMU_OK; /* no pass follows */
    if (v->P > 1)
        return par_send(next, (size_t)nb, EMU_DTYPE_INT32, 0, D->comm[v->rank * C__COUNT + C_PP],
                        v->dev);
    memcpy(v->tok + ps->b0 - v->rb0, next, sizeof(int) * (size_t)nb);
    return MOEMU_OK;
}

static moemu_status_t head(worker_t *v, const pass_t *ps)
{
    const run_t *D = v->D;
    const layer_rows_t *r = &v->rows;
    /* the rows whose logits are needed */
    int nl = 0;
    for (int t = 0; t < r->n; t++)
        if (ps->decode || D->mo->prompt_logits || r->pos[t] == D->wl->len[r->seq[t]] - 1)
            v->ibuf[nl++] = t;
    const float *full;
    size_t ld;
    MOEMU_CHECK(layer_head_block(&v->view, D->w->final_norm, D->w->lm_head, v->ibuf, nl, &full,
                                 &ld));
    return pick(v, ps, full, ld, nl);
}

/* The passes' collectives in the device's layers, from the snapshots
 * taken before their first layer: all of them, and the MoE's. */
static void count_layers(worker_t *v, int passes, const layer_xfer_t *t0,
                         const layer_xfer_t *moe0)
{
    model_coll_t *c = &v->D->out->coll[2 * v->rank + (v->ps->decode ? 1 : 0)];
    const layer_xfer_t *moe = v->D->out->moe_xfer + 2 * v->rank;
    c->passes += passes;
    c->layers = v->pl.par.layer1 - v->pl.par.layer0;
    layer_xfer_since(&c->layers_all, t0, v->dev);
    for (int i = 0; i < 2; i++) layer_xfer_add(&c->moe[i], &moe0[i], &moe[i]);
}

/* A pass's rows and its input: the tokens' embedding on the first stage,
 * the previous stage's output on the others. */
static moemu_status_t pass_begin(worker_t *v, const pass_t *ps)
{
    run_t *D = v->D;
    /* a pass with no sequence still runs: its replica's experts serve the
     * other replicas in the same EP group */
    layer_rows_t *r = &v->rows;
    v->npass++;
    pass_rows(v, ps, v->sh.cp_rank, v->sh.tp_rank, r, v->seqbuf, v->posbuf);
    r->decode = ps->decode;
    r->seq_len = D->wl->len;
    v->ps = ps;
    int R = r->r1 - r->r0, d = v->pl.dims.d;
    par_comm_t *pp = D->comm[v->rank * C__COUNT + C_PP];
    if (v->stage > 0)
        return par_recv(v->view.xr, (size_t)R * d, v->x.dtype, v->stage - 1, pp, v->dev);
    if (ps->decode && v->P > 1)
        MOEMU_CHECK(par_recv(v->tok + ps->b0 - v->rb0, (size_t)(ps->b1 - ps->b0),
                             EMU_DTYPE_INT32, v->P - 1, pp, v->dev));
    return embed(v, ps);
}

/* The layers the device holds (a lane of emu_dev_lanes). */
static moemu_status_t pass_layers(void *arg)
{
    worker_t *v = arg;
    run_t *D = v->D;
    const pass_t *ps = v->ps;
    for (int l = v->pl.par.layer0; l < v->pl.par.layer1; l++) {
        if (D->mo->progress && v->rank == 0)
            D->mo->progress(D->mo->progress_arg, ps->decode ? "decode" : "prefill",
                            ps->decode ? ps->step : 1, ps->decode ? D->wl->decode - 1 : 1, l,
                            D->c->num_hidden_layers);
        if (emu_dev_aborting(v->dev)) return moemu_fail(MOEMU_ERR_PEER, "stopped");
        emu_dev_set_layer(v->dev, l);
        MOEMU_CHECK(layer(v, l));
    }
    /* the last layer's residual update, which no norm of this stage makes */
    layer_residual_flush(&v->x, &v->view.resid);
    emu_dev_set_layer(v->dev, -1);
    return MOEMU_OK;
}

/* The output on to the next stage, or the logits on the last. */
static moemu_status_t pass_end(worker_t *v)
{
    const layer_rows_t *r = &v->rows;
    size_t n = (size_t)(r->r1 - r->r0) * v->pl.dims.d;
    if (v->stage < v->P - 1)
        return par_send(v->view.xr, n, v->x.dtype, v->stage + 1,
                        v->D->comm[v->rank * C__COUNT + C_PP], v->dev);
    return head(v, v->ps);
}

/* Passes ps[0..n) of the same kind, one per lane: their layers as lanes
 * of the device with two-batch overlap (n = 2), each begun and ended in
 * turn. */
static moemu_status_t run_passes(worker_t *const *lane, const pass_t *ps, int n)
{
    worker_t *v = lane[0];
    layer_xfer_t t0, l0, *moe = v->D->out->moe_xfer + 2 * v->rank, moe0[2] = {moe[0], moe[1]};
    layer_xfer_now(&t0, v->dev);
    moemu_status_t st = MOEMU_OK;
    for (int i = 0; st == MOEMU_OK && i < n; i++) st = pass_begin(lane[i], &ps[i]);
    layer_xfer_now(&l0, v->dev);
    if (st == MOEMU_OK) st = emu_dev_lanes(v->dev, n, pass_layers, (void *const *)lane);
    if (st == MOEMU_OK) count_layers(v, n, &l0, moe0);
    for (int i = 0; st == MOEMU_OK && i < n; i++) st = pass_end(lane[i]);
    layer_xfer_since(&v->D->out->coll[2 * v->rank + (ps->decode ? 1 : 0)].pass, &t0, v->dev);
    return st;
}

static void dev_free(worker_t *v)
{
    if (v->kv) emu_free(v->dev, EMU_MEM_KV, v->kv, v->kv_bytes);
    if (v->block) emu_free(v->dev, EMU_MEM_ACT, v->block, v->block_bytes);
    free(v->mb);
    free(v->tok);
    free(v->kv_off);
    free(v->kv_pos);
    free(v->kv_cap);
    free(v->kv_n);
    free(v->view.seqs);
    free(v->gcounts);
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

/* The groups of the device and the views of its blocks. */
static void dev_shard(worker_t *v)
{
    run_t *D = v->D;
    const par_strategy_t *s = D->s;
    const par_place_t *p = &v->pl.par;
    /* no communicators yet when the run's needs are counted */
    static par_comm_t *const none[C__COUNT];
    par_comm_t *const *cm = D->comm ? D->comm + (size_t)v->rank * C__COUNT : none;
    v->sh = (layer_shard_t){.tp = cm[C_TP], .cp = cm[C_CP], .ep = cm[C_EP], .etp = cm[C_ETP],
                            .replica = cm[C_REPLICA], .tp_size = s->tp, .tp_rank = p->tp,
                            .cp_size = s->cp, .cp_rank = p->cp, .ep_size = s->ep,
                            .ep_rank = p->ep, .etp_size = s->etp, .etp_rank = p->etp,
                            .replica_size = s->cp * s->tp,
                            .replica_rank = p->cp * s->tp + p->tp, .sp = s->sp,
                            .moe_replicated = par_moe_replicated(s)};
    v->x = (layer_ctx_t){.dev = v->dev, .dtype = D->c->dtype, .math = !D->o->dry,
                         .wsize = cfg_weight_size(D->c), .dispatch_fp8 = D->o->prec.dispatch_fp8,
                         .ewsize = D->c->mxfp4 ? cfg_expert_weight_size(D->c) : 0,
                         .fp8_gemm = runner_fp8(D->c, D->o), .kvsize = D->o->prec.kv_fp8 ? 1.0 : 0};
    v->view = (layer_view_t){.x = &v->x, .sh = &v->sh, .dm = &v->pl.dims, .r = &v->rows};
    v->P = s->pp;
    v->stage = p->pp;
}

/* The replica's sequences, its routing groups (micro-batches) and the
 * bookkeeping of its KV cache. */
static moemu_status_t dev_schedule(worker_t *v)
{
    run_t *D = v->D;
    const par_strategy_t *s = D->s;
    int B = D->wl->batch;
    par_split(B, s->dp, v->pl.par.dp, &v->rb0, &v->rb1);
    int q = D->route_dp / s->dp; /* routing replicas inside this replica */
    v->nmb = q * D->o->micro_batches;
    int nseq = v->rb1 - v->rb0, nl = v->pl.par.layer1 - v->pl.par.layer0;
    size_t kvs = (size_t)nl * nseq + 1;
    v->mb = calloc((size_t)v->nmb + 1, sizeof(int));
    v->tok = calloc((size_t)nseq + 1, sizeof(int));
    v->kv_off = calloc(kvs, sizeof(int64_t));
    v->kv_cap = calloc(kvs, sizeof(int));
    v->kv_n = calloc(kvs, sizeof(int));
    v->view.seqs = calloc(2 * (size_t)nseq + 1, sizeof *v->view.seqs);
    v->gcounts = calloc((size_t)s->cp * s->tp, sizeof(int));
    v->sched_bytes = sizeof(int) * (double)(v->nmb + nseq + 2 + s->cp * s->tp) +
                     16.0 * (double)kvs + (double)sizeof *v->view.seqs * (2.0 * nseq + 1);
    if (!v->mb || !v->tok || !v->kv_off || !v->kv_cap || !v->kv_n || !v->view.seqs ||
        !v->gcounts)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the schedule of %d sequences (%.0f "
                          "bytes)", nseq, v->sched_bytes);
    route_groups(B, D->route_dp, v->pl.par.dp * q, q, D->o->micro_batches, v->mb);
    return MOEMU_OK;
}

/* The cache's layout: this rank's prefill positions and its share of
 * decode. Returns its floats on the host, which keeps every position;
 * *devf (may be NULL) the device's, which counts, in a sliding-window
 * layer, only the window a ring buffer of it would hold. */
static int64_t dev_cache_layout(worker_t *v, int64_t *devf_out)
{
    const run_t *D = v->D;
    const par_strategy_t *s = D->s;
    int N = D->wl->decode, nseq = v->rb1 - v->rb0, nl = v->pl.par.layer1 - v->pl.par.layer0;
    int64_t kvf = 0, devf = 0, parts = v->pl.dims.kv_shared ? 1 : 2;
    int kvd = v->pl.dims.kvl * v->pl.dims.hd, W = D->c->sliding_window;
    for (int i = 0; i < nl * nseq; i++) {
        int b = v->rb0 + i % nseq, rg[2][2];
        par_cp_ranges(D->wl->len[b], s->cp, v->pl.par.cp, rg);
        int dec = N > 1 ? (N - 1 + s->cp - 1) / s->cp : 0;
        v->kv_cap[i] = (rg[0][1] - rg[0][0]) + (rg[1][1] - rg[1][0]) + dec;
        v->kv_off[i] = kvf;
        kvf += parts * kvd * v->kv_cap[i];
        bool window = cfg_layer_sliding(D->c, v->pl.par.layer0 + i / nseq) && v->kv_cap[i] > W;
        devf += parts * kvd * (window ? W : v->kv_cap[i]);
    }
    if (devf_out) *devf_out = devf;
    return kvf;
}

static moemu_status_t dev_cache(worker_t *v)
{
    const cfg_model_t *c = v->D->c;
    int64_t devf, kvf = dev_cache_layout(v, &devf),
                  row = (v->pl.dims.kv_shared ? 1 : 2) * (int64_t)v->pl.dims.kvl * v->pl.dims.hd;
    v->kv_bytes = layer_kvsize(&v->x) * (double)devf;
    if (v->D->s->cp > 1 && c->num_sliding_layers > 0 &&
        !(v->kv_pos = malloc(sizeof(int) * (size_t)(kvf / row + 1))))
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the positions of %lld cached rows",
                          (long long)(kvf / row));
    return emu_alloc(v->dev, EMU_MEM_KV, sizeof(float) * (size_t)(kvf + 1), v->kv_bytes,
                     (void **)&v->kv);
}

/* The scratch of the largest pass: its rows (Tmax) and keys (Ttot), the
 * logits rows, the view's floats and ints and the runner's, and the host
 * bytes in all. */
typedef struct {
    int Tmax, Ttot, nlog;
    size_t nf, ni, bytes;
} scratch_t;

static void dev_scratch_size(const worker_t *v, scratch_t *z)
{
    const run_t *D = v->D;
    const par_strategy_t *s = D->s;
    int nseq = v->rb1 - v->rb0, Ttot = 0;
    for (int m = 0; m < v->nmb; m++) {
        int tot = 0;
        for (int b = v->mb[m]; b < v->mb[m + 1]; b++) tot += D->wl->len[b];
        Ttot = tot > Ttot ? tot : Ttot;
    }
    /* prefill rows of this rank are at most the micro-batch's tokens */
    int Tmax = Ttot > nseq ? Ttot : nseq;
    int nlog = D->mo->prompt_logits ? Tmax : nseq;
    size_t nf, ni;
    layer_view_scratch(&v->pl.dims, &v->sh, Tmax, Ttot, nlog, &nf, &ni);
    ni += 2 * (size_t)Tmax + 2 * (size_t)Ttot + (size_t)s->cp * s->tp + (size_t)Ttot +
          (size_t)Tmax + (size_t)nseq;
    *z = (scratch_t){.Tmax = Tmax, .Ttot = Ttot, .nlog = nlog, .nf = nf, .ni = ni,
                     .bytes = sizeof(float) * nf + sizeof(int) * ni +
                              (size_t)Tmax * v->pl.dims.k + 64};
}

/* Scratch for the largest pass: the view's buffers, then the runner's
 * rows, then the capacity flags, in one allocation. */
static moemu_status_t dev_scratch(worker_t *v)
{
    const par_strategy_t *s = v->D->s;
    scratch_t z;
    dev_scratch_size(v, &z);
    int Tmax = z.Tmax, Ttot = z.Ttot, nseq = v->rb1 - v->rb0;
    v->block_bytes = (double)emu_dtype_size(v->D->c->dtype) * (double)z.nf + 4.0 * (double)z.ni;
    MOEMU_CHECK(emu_alloc(v->dev, EMU_MEM_ACT, z.bytes, v->block_bytes, &v->block));
    layer_view_carve(&v->view, v->block, Tmax, Ttot, z.nlog);
    int *ip = v->view.idx + (size_t)Tmax * v->pl.dims.k;
    v->seqbuf = ip, ip += Tmax;
    v->posbuf = ip, ip += Tmax;
    v->allseq = ip, ip += Ttot;
    v->allpos = ip, ip += Ttot;
    v->counts = ip, ip += s->cp * s->tp;
    v->gpos = ip, ip += Ttot;
    v->ibuf = ip, ip += Tmax + nseq;
    v->view.keep = (uint8_t *)ip;
    return MOEMU_OK;
}

static moemu_status_t dev_setup(worker_t *v)
{
    run_t *D = v->D;
    D->fam->place(D->c, D->s, v->rank, &v->pl);
    dev_shard(v);
    MOEMU_CHECK(emu_mem_reserve(v->dev, EMU_MEM_WEIGHTS, D->fam->held(D->c, &v->pl, NULL, NULL)));
    MOEMU_CHECK(dev_schedule(v));
    MOEMU_CHECK(dev_cache(v));
    return dev_scratch(v);
}

/* The lanes a device runs its micro-batches in: 2 with two-batch overlap. */
static int lanes_of(const emu_spec_t *spec)
{
    return spec->stack.overlap == EMU_OVERLAP_TWO_BATCH ? EMU_LANES_MAX : 1;
}

/* The second lane of two-batch overlap: the device's place, cache and
 * schedule shared, its own rows and scratch (a second micro-batch's
 * activations, counted as the device's). */
static moemu_status_t lane_setup(worker_t *b, const worker_t *a)
{
    *b = *a;
    b->view = (layer_view_t){.x = &b->x, .sh = &b->sh, .dm = &b->pl.dims, .r = &b->rows};
    b->block = NULL;
    int nseq = a->rb1 - a->rb0;
    b->view.seqs = calloc(2 * (size_t)nseq + 1, sizeof *b->view.seqs);
    b->gcounts = calloc((size_t)a->D->s->cp * a->D->s->tp, sizeof(int));
    if (!b->view.seqs || !b->gcounts)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate a second lane of %d sequences",
                          nseq);
    return dev_scratch(b);
}

static void lane_free(worker_t *b)
{
    if (b->block) emu_free(b->dev, EMU_MEM_ACT, b->block, b->block_bytes);
    free(b->view.seqs);
    free(b->gcounts);
}

/* Every pass of the replica's micro-batches, n at a time (lanes). */
static moemu_status_t dev_passes(worker_t *const *lane, int n, bool decode, int step)
{
    const worker_t *v = lane[0];
    moemu_status_t st = MOEMU_OK;
    for (int m = 0; st == MOEMU_OK && m < v->nmb; m += n) {
        int k = v->nmb - m < n ? v->nmb - m : n;
        pass_t ps[EMU_LANES_MAX];
        for (int i = 0; i < k; i++)
            ps[i] = (pass_t){.b0 = v->mb[m + i], .b1 = v->mb[m + i + 1], .decode = decode,
                             .step = step};
        st = run_passes(lane, ps, k);
    }
    return st;
}

static moemu_status_t dev_main(emu_dev_t *dev, void *arg)
{
    run_t *D = arg;
    worker_t v = {.D = D, .dev = dev, .rank = emu_dev_rank(dev)}, v2 = {0};
    worker_t *const lane[EMU_LANES_MAX] = {&v, &v2};
    int n = lanes_of(emu_dev_spec(dev));
    moemu_status_t st = dev_setup(&v);
    if (st == MOEMU_OK && n == 2) st = lane_setup(&v2, &v);
    int N = D->wl->decode;
    double t0 = emu_host_seconds();
    if (st == MOEMU_OK) st = dev_passes(lane, n, false, 0);
    double t1 = emu_host_seconds();
    for (int step = 1; step < N && st == MOEMU_OK; step++) st = dev_passes(lane, n, true, step);
    if (v.rank == 0) {
        D->out->wall_prefill = t1 - t0;
        D->out->wall_decode = emu_host_seconds() - t1;
    }
    if (n == 2) lane_free(&v2);
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
    free(out->moe_xfer);
    free(out->coll);
    memset(out, 0, sizeof *out);
}

void runner_opts_one_device(runner_opts_t *o, const emu_hw_t *hw, int route_dp, int micro_batches)
{
    *o = (runner_opts_t){.micro_batches = micro_batches, .route_dp = route_dp, .hw = *hw,
                         .cluster = {.no_limit = true}};
    par_strategy_default(&o->strategy);
}

/* The options against the model: every problem of the strategy at once. */
/* Two-batch overlap pairs each replica's micro-batches on one stage. */
static moemu_status_t check_lanes(const runner_opts_t *o)
{
    if (lanes_of(&o->hw.spec) == 1) return MOEMU_OK;
    moemu_problems_t pr = {0};
    if (o->micro_batches < 2)
        moemu_problem(&pr, "it runs a replica's micro-batches in pairs, and --micro-batches is "
                      "%d (give 2 or more)", o->micro_batches);
    if (o->strategy.pp > 1)
        moemu_problem(&pr, "it runs on one pipeline stage, as SGLang's does, and the strategy "
                      "has PP = %d", o->strategy.pp);
    return pr.n ? moemu_fail_problems(MOEMU_ERR_INVALID, &pr, "two-batch overlap") : MOEMU_OK;
}

static moemu_status_t check_opts(run_t *D, const runner_opts_t *o)
{
    par_dims_t dims;
    D->fam->dims(D->c, &dims);
    MOEMU_CHECK(par_strategy_validate(&o->strategy, &dims, D->world));
    if (o->micro_batches < 1)
        return moemu_fail(MOEMU_ERR_INVALID, "micro_batches %d: must be >= 1", o->micro_batches);
    D->route_dp = o->route_dp ? o->route_dp : o->strategy.dp;
    if (D->route_dp % o->strategy.dp != 0)
        return moemu_fail(MOEMU_ERR_INVALID, "routing groups of %d replicas: not a multiple of "
                          "DP = %d", D->route_dp, o->strategy.dp);
    if (o->dry && !o->routing)
        return moemu_fail(MOEMU_ERR_INVALID, "a dry run needs a routing source");
    MOEMU_CHECK(check_lanes(o));
    return runner_check_prec(D->c, o);
}

moemu_status_t runner_check_prec(const cfg_model_t *c, const runner_opts_t *o)
{
    if (o->prec.compute != RUN_COMPUTE_FP8) return MOEMU_OK;
    moemu_problems_t pr = {0};
    if (c->fp8_block_r <= 0)
        moemu_problem(&pr, "FP8 computation needs the weights stored in FP8 (an FP8 checkpoint, "
                      "or --weight-dtype fp8); %s stores them in %s", c->name,
                      emu_dtype_name(c->dtype));
    if (o->hw.spec.peak_flops_fp8 <= 0)
        moemu_problem(&pr, "%s has no FP8 Tensor Cores (its preset sets no "
                      "device.peak_flops_fp8): FP8 computation needs a card that has them, such "
                      "as h100-sxm, h200 or h800", o->hw.name);
    return pr.n ? moemu_fail_problems(MOEMU_ERR_INVALID, &pr, "--compute-dtype fp8") : MOEMU_OK;
}

bool runner_fp8(const cfg_model_t *c, const runner_opts_t *o)
{
    if (o->prec.compute == RUN_COMPUTE_FP8) return true;
    return o->prec.compute == RUN_COMPUTE_AUTO && c->fp8_block_r > 0 &&
           o->hw.spec.peak_flops_fp8 > 0;
}

/* ---- What the run takes of the host, counted before any of it is taken */

/* Host bytes device rank holds for the whole run (its schedule, KV cache
 * and scratch, as dev_setup allocates them) and the most rows it
 * multiplies at once. */
static moemu_status_t dev_host_bytes(run_t *D, int rank, double *bytes, int *rows)
{
    worker_t v = {.D = D, .rank = rank};
    D->fam->place(D->c, D->s, rank, &v.pl);
    dev_shard(&v);
    moemu_status_t st = dev_schedule(&v);
    if (st == MOEMU_OK) {
        scratch_t z;
        dev_scratch_size(&v, &z);
        int lanes = lanes_of(&D->o->hw.spec);
        *bytes = v.sched_bytes + sizeof(float) * (double)(dev_cache_layout(&v, NULL) + 1) +
                 lanes * (double)z.bytes;
        *rows = z.Ttot > z.Tmax ? z.Ttot : z.Tmax;
    }
    dev_free(&v);
    return st;
}

/* Host bytes of the outputs (out_alloc) and of the run's own state
 * (runner_generate). */
static double out_bytes(const run_t *D)
{
    const cfg_model_t *c = D->c;
    double B = D->wl->batch, N = D->wl->decode, V = c->vocab_size;
    double out = B * (N > 0 ? N : 1) * (sizeof(int) + sizeof(double)) +
                 8.0 * c->num_hidden_layers * c->num_local_experts + 8.0 * D->world +
                 2.0 * D->world * (sizeof(layer_xfer_t) + sizeof(model_coll_t));
    if (D->mo->prompt_logits) out += 4.0 * B * D->wl->max_len * V;
    if (D->mo->gen_logits) out += 4.0 * B * N * V;
    return out;
}

static double state_bytes(const run_t *D)
{
    double LE = (double)D->c->num_hidden_layers * D->c->num_local_experts;
    return D->world * (8.0 * C__COUNT + 16 + 8 * LE) + 4.0 * D->world;
}

/* "a run on N devices", what the host checks name. */
static const char *run_what(int world, char buf[64])
{
    snprintf(buf, 64, "a run on %d device%s", world, world == 1 ? "" : "s");
    return buf;
}

moemu_status_t runner_check_devices(int world)
{
    emu_need_t threads = {0};
    char what[64];
    emu_need_devices(&threads, world, -1);
    return emu_need_check(&threads, NULL, run_what(world, what));
}

/* The devices this process runs: a block of them under mpirun (all on
 * process 0 for a dry run, which moves nothing worth spreading). */
static void local_devices(const runner_opts_t *o, int world, int *lo, int *hi)
{
    if (o->dry) {
        *lo = par_proc_rank() == 0 ? 0 : world;
        *hi = world;
        return;
    }
    par_proc_devices(world, par_proc_rank(), lo, hi);
}

moemu_status_t runner_host_need(emu_need_t *need, const cfg_model_t *c, const wl_t *wl,
                                const runner_opts_t *o, const model_opts_t *mo)
{
    run_t D = {.c = c, .fam = family_of(c), .wl = wl, .o = o, .mo = mo, .s = &o->strategy,
               .route_pos = runner_route_positions(wl),
               .world = par_strategy_world(&o->strategy)};
    MOEMU_CHECK(check_opts(&D, o));
    /* a run of too many devices is refused before they are counted */
    MOEMU_CHECK(runner_check_devices(D.world));
    double dev = 0;
    int rows = 0, lo, hi;
    local_devices(o, D.world, &lo, &hi);
    for (int r = lo; r < hi; r++) {
        double b;
        int n;
        MOEMU_CHECK(dev_host_bytes(&D, r, &b, &n));
        dev += b;
        rows = n > rows ? n : rows;
    }
    /* a dry run's device buffers are address space only (no-data mode) */
    emu_need_add(need, "device buffers", o->dry ? 0 : dev, dev);
    emu_need_devices(need, hi - lo, o->dry ? -1 : layer_blas_resident(rows));
    double out = out_bytes(&D) + state_bytes(&D);
    emu_need_add(need, "outputs", out, out);
    return MOEMU_OK;
}

/* The outputs of the run, NaN where a shorter prompt has no position. */
static moemu_status_t out_alloc(model_out_t *out, const run_t *D)
{
    const cfg_model_t *c = D->c;
    const wl_t *wl = D->wl;
    int B = wl->batch, N = wl->decode, V = c->vocab_size;
    out->generated = calloc((size_t)B * (N > 0 ? N : 1), sizeof(int));
    out->token_time = calloc((size_t)B * (N > 0 ? N : 1), sizeof(double));
    out->expert_load = calloc((size_t)c->num_hidden_layers * c->num_local_experts, sizeof(int64_t));
    out->device_rows = calloc((size_t)D->world, sizeof(int64_t));
    out->moe_xfer = calloc(2 * (size_t)D->world, sizeof *out->moe_xfer);
    out->coll = calloc(2 * (size_t)D->world, sizeof *out->coll);
    out->n_devices = D->world;
    if (D->mo->prompt_logits) out->prompt_logits = malloc(sizeof(float) * (size_t)B * wl->max_len * V);
    if (D->mo->gen_logits && N > 0) out->gen_logits = malloc(sizeof(float) * (size_t)B * N * V);
    if (!out->generated || !out->token_time || !out->expert_load || !out->device_rows ||
        !out->moe_xfer || !out->coll ||
        (D->mo->prompt_logits && !out->prompt_logits) ||
        (D->mo->gen_logits && N > 0 && !out->gen_logits))
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the outputs of %d sequences "
                          "(%.2f GB)", B, out_bytes(D) / 1e9);
    if (out->prompt_logits)
        for (size_t i = 0; i < (size_t)B * wl->max_len * V; i++) out->prompt_logits[i] = NAN;
    /* NaN where unwritten: what par_proc_merge takes from other processes */
    if (out->gen_logits)
        for (size_t i = 0; i < (size_t)B * N * V; i++) out->gen_logits[i] = NAN;
    return MOEMU_OK;
}

/* One communicator per group, created by its lowest rank's turn. */
static moemu_status_t comms_create(run_t *D, emu_cluster_t *cl, int *ranks)
{
    for (int g = 0; g < C__COUNT; g++)
        for (int r = 0; r < D->world; r++) {
            int n = par_layout_group(D->s, comm_groups[g], r, ranks), lo = ranks[0];
            for (int i = 1; i < n; i++) lo = ranks[i] < lo ? ranks[i] : lo;
            if (n < 2 || lo != r) continue;
            par_comm_t *cm;
            MOEMU_CHECK(par_comm_create(cl, ranks, n, &cm));
            for (int i = 0; i < n; i++) D->comm[(size_t)ranks[i] * C__COUNT + g] = cm;
        }
    return MOEMU_OK;
}

/* Each communicator once: at its lowest member. */
static void comms_destroy(run_t *D)
{
    for (int g = 0; D->comm && g < C__COUNT; g++)
        for (int r = 0; r < D->world; r++) {
            par_comm_t *cm = D->comm[(size_t)r * C__COUNT + g];
            if (!cm) continue;
            bool first = true;
            for (int q = 0; q < r && first; q++) first = D->comm[(size_t)q * C__COUNT + g] != cm;
            if (first) par_comm_destroy(cm);
        }
}

/* The devices' counters summed into the outputs. */
static void out_sum(model_out_t *out, const run_t *D)
{
    size_t LE = (size_t)D->c->num_hidden_layers * D->c->num_local_experts;
    for (int i = 0; i < D->world; i++) {
        out->assignments += D->assign[i];
        out->dropped += D->dropped[i];
        for (size_t j = 0; j < LE; j++) {
            out->expert_load[j] += D->load[i * LE + j];
            out->device_rows[i] += D->load[i * LE + j];
        }
    }
}

/* What this process is about to run, to refuse processes that would run
 * different jobs: the strategy, the model's sizes and the workload. */
static uint64_t fingerprint(const run_t *D)
{
    char canon[PAR_STRATEGY_STRLEN];
    par_strategy_format(D->s, canon, sizeof canon);
    const cfg_model_t *c = D->c;
    int64_t v[] = {D->world, D->o->micro_batches, D->route_dp, D->o->dry, D->wl->batch,
                   D->wl->decode, c->num_hidden_layers, c->hidden_size, c->vocab_size,
                   c->num_local_experts, c->dtype, D->w->n_floats};
    uint64_t h = wts_stream(canon) ^ wts_stream(c->name) * 3 ^ wts_stream(D->o->hw.name) * 5;
    h = emu_fnv1a(h, v, sizeof v);
    for (int b = 0; b < D->wl->batch; b++)
        h = emu_fnv1a(h, D->wl->tokens + D->wl->start[b], sizeof(int) * (size_t)D->wl->len[b]);
    return h;
}

_Static_assert(sizeof(layer_xfer_t) % sizeof(double) == 0 &&
                   sizeof(model_coll_t) % sizeof(double) == 0,
               "merged as arrays of doubles");

/* Every process's outputs made whole: each element was written by the
 * process of the device that computed it. */
static moemu_status_t merge_outputs(model_out_t *out, run_t *D)
{
    const wl_t *wl = D->wl;
    size_t B = (size_t)wl->batch, N = (size_t)(wl->decode > 0 ? wl->decode : 1);
    size_t V = (size_t)D->c->vocab_size, LE = (size_t)D->c->num_hidden_layers *
                                                   D->c->num_local_experts;
    MOEMU_CHECK(par_proc_merge(D->assign, (size_t)D->world, PAR_MERGE_I64_SUM));
    MOEMU_CHECK(par_proc_merge(D->dropped, (size_t)D->world, PAR_MERGE_I64_SUM));
    MOEMU_CHECK(par_proc_merge(D->load, (size_t)D->world * LE, PAR_MERGE_I64_SUM));
    /* both are doubles only, each device's written by its process */
    MOEMU_CHECK(par_proc_merge(out->moe_xfer, 2 * (size_t)D->world * sizeof *out->moe_xfer /
                                                  sizeof(double), PAR_MERGE_F64_SUM));
    MOEMU_CHECK(par_proc_merge(out->coll, 2 * (size_t)D->world * sizeof *out->coll /
                                              sizeof(double), PAR_MERGE_F64_SUM));
    MOEMU_CHECK(par_proc_merge(out->generated, B * N, PAR_MERGE_I32_MAX));
    MOEMU_CHECK(par_proc_merge(out->token_time, B * N, PAR_MERGE_F64_SUM));
    MOEMU_CHECK(par_proc_merge(out->prompt_logits, B * wl->max_len * V, PAR_MERGE_F32_NAN));
    MOEMU_CHECK(par_proc_merge(out->gen_logits, B * (size_t)wl->decode * V, PAR_MERGE_F32_NAN));
    if (D->mo->route)
        MOEMU_CHECK(par_proc_merge(D->mo->route, (size_t)D->c->num_hidden_layers * B *
                                                     D->route_pos * D->c->num_experts_per_tok,
                                   PAR_MERGE_I32_MAX));
    return MOEMU_OK;
}

moemu_status_t runner_generate(model_out_t *out, emu_cluster_t **cluster, const wts_t *w,
                               const wl_t *wl, const runner_opts_t *o, const model_opts_t *mo)
{
    const cfg_model_t *c = &w->cfg;
    memset(out, 0, sizeof *out);
    *cluster = NULL;
    run_t D = {.w = w, .c = c, .fam = family_of(c), .wl = wl, .o = o, .mo = mo,
                .s = &o->strategy, .out = out, .route_pos = runner_route_positions(wl),
                .world = par_strategy_world(&o->strategy)};
    moemu_status_t st = check_opts(&D, o);
    emu_need_t need = {0};
    if (st == MOEMU_OK) st = runner_host_need(&need, c, wl, o, mo);
    char what[64];
    if (st == MOEMU_OK) st = emu_need_check(&need, NULL, run_what(D.world, what));
    emu_cluster_opts_t copts = o->cluster;
    if (st == MOEMU_OK) st = par_proc_cluster(D.world, !o->dry, &copts);
    /* every process learns here of another's failure before the run */
    MOEMU_CHECK(par_proc_agree(st, fingerprint(&D)));
    emu_cluster_t *cl = NULL;
    st = emu_cluster_create(&o->hw.spec, &o->hw.topo, D.world, &copts, &cl);
    if (st != MOEMU_OK) return par_proc_after_run(NULL, st);
    size_t LE = (size_t)c->num_hidden_layers * c->num_local_experts;
    D.comm = calloc((size_t)D.world * C__COUNT, sizeof(par_comm_t *));
    D.assign = calloc((size_t)D.world, sizeof(int64_t));
    D.dropped = calloc((size_t)D.world, sizeof(int64_t));
    D.load = calloc((size_t)D.world * LE, sizeof(int64_t));
    int *ranks = malloc(sizeof(int) * (size_t)D.world);
    if (!D.comm || !D.assign || !D.dropped || !D.load || !ranks)
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the state of %d devices (%.2f GB)",
                        D.world, state_bytes(&D) / 1e9);
    if (st == MOEMU_OK) st = out_alloc(out, &D);
    if (st == MOEMU_OK) st = comms_create(&D, cl, ranks);
    if (st == MOEMU_OK) st = emu_cluster_run(cl, dev_main, &D);
    st = par_proc_after_run(cl, st);
    if (st == MOEMU_OK) st = merge_outputs(out, &D);
    if (st == MOEMU_OK) out_sum(out, &D);
    comms_destroy(&D);
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
