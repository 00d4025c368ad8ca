/* The performance report (docs/report.md): every figure of four small runs
 * against a hand computation, the figures adding up on many strategies,
 * the Chrome trace, bit-identical reports under random host delays (emu's
 * jitter), and dry runs against real math.
 *
 * The hand computation ("hm_" below) does not call the engine's cost code:
 * it walks the schedule of engine/dist.c (for CP = ETP = 1, no SP, no
 * shared experts) and charges each kernel with the FLOPs and bytes that
 * layers/ (*.c) and engine/dist.c document, the spec's
 * launch + max(flops / (peak mfu), bytes / (bw util)), and each
 * collective's closed form of docs/emulation.md; memory mirrors the
 * reservations of dist.c (weights, KV cache, the scratch block) and of
 * layers/shard.c (communication buffers, the experts' lists). */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/tools/report.h"

/* ---- hardware with round numbers */

static emu_hw_t round_hw(int devices_per_node)
{
    emu_hw_t hw;
    memset(&hw, 0, sizeof hw);
    snprintf(hw.name, sizeof hw.name, "round");
    hw.spec = (emu_spec_t){.peak_flops = 1e12, .mfu = 0.5, .mem_bw = 1e11, .bw_util = 0.5,
                           .mem_capacity = 1e9, .launch_s = 1e-6};
    hw.topo = (emu_topo_t){.devices_per_node = devices_per_node, .intra_bw = 1e10,
                           .intra_lat = 1e-6, .inter_bw = 1e9, .inter_lat = 1e-5};
    return hw;
}

/* hidden 8, 2 query heads of 4 over 1 kv head, 4 experts of 8, top-2,
 * vocabulary 16, bf16 (2 bytes) */
static void small_cfg(cfg_model_t *cfg, int layers, double cf)
{
    char json[512];
    snprintf(json, sizeof json,
             "{\"vocab_size\":16,\"hidden_size\":8,\"intermediate_size\":8,"
             "\"num_hidden_layers\":%d,\"num_attention_heads\":2,\"num_key_value_heads\":1,"
             "\"head_dim\":4,\"num_local_experts\":4,\"num_experts_per_tok\":2,"
             "\"dtype\":\"bf16\",\"max_position_embeddings\":64,\"rope_theta\":10000}",
             layers);
    cr_assert_eq(cfg_parse(cfg, json, "small"), MOEMU_OK, "%s", moemu_errmsg());
    cfg->capacity_factor = cf;
}

static void make_wl(wl_t *wl, const cfg_model_t *cfg, const char *lens, int decode)
{
    wl_opts_t wo = {.lens = lens, .decode = decode, .seed = 5};
    cr_assert_eq(wl_make(wl, &wo, cfg), MOEMU_OK, "%s", moemu_errmsg());
}

/* ---- a run on emulated devices and its report */

typedef struct {
    wts_t w;
    route_src_t src;
    model_out_t out;
    emu_cluster_t *cl;
    report_t r;
    int *record; /* the run's routing (layers, batch, positions, k) */
    size_t nrec;
    double t1;
} run_t;

/* Run wl under o: real math, or a dry run replaying a record (replay) or
 * drawing from a --routing spec (spec). With scaling, t1 is
 * report_one_device's. */
static void run_start(run_t *x, const cfg_model_t *cfg, const wl_t *wl, runner_opts_t *o,
                      int *replay, const char *spec, bool scaling)
{
    memset(x, 0, sizeof *x);
    if (replay || spec) {
        cr_assert_eq(wts_address_only(&x->w, cfg), MOEMU_OK, "%s", moemu_errmsg());
        if (replay) route_replay_record(&x->src, replay, cfg, wl);
        else cr_assert_eq(route_open(&x->src, spec, cfg, wl, 11), MOEMU_OK, "%s", moemu_errmsg());
        o->dry = true;
        o->routing = &x->src;
        o->cluster.nodata = true;
    } else {
        cr_assert_eq(wts_generate_all(&x->w, cfg, 7), MOEMU_OK, "%s", moemu_errmsg());
    }
    x->record = route_record_new(cfg, wl, &x->nrec);
    cr_assert_not_null(x->record);
    model_opts_t mo = {.route = x->record};
    cr_assert_eq(runner_generate(&x->out, &x->cl, &x->w, wl, o, &mo), MOEMU_OK, "%s",
                 moemu_errmsg());
    if (scaling)
        cr_assert_eq(report_one_device(&x->t1, &x->w, wl, o, x->record, false), MOEMU_OK, "%s",
                     moemu_errmsg());
    cr_assert_eq(report_build(&x->r, x->cl, &x->out, cfg, wl, o, x->t1), MOEMU_OK, "%s",
                 moemu_errmsg());
}

static void run_free(run_t *x, runner_opts_t *o)
{
    report_free(&x->r);
    model_out_free(&x->out);
    emu_cluster_destroy(x->cl);
    free(x->record);
    wts_free(&x->w);
    route_close(&x->src);
    if (o) o->routing = NULL; /* it pointed at x->src */
    memset(x, 0, sizeof *x);
}

/* Every figure, as text that compares bit for bit. */
static char *report_dump(const report_t *r)
{
    json_t *j = report_json(r);
    cr_assert_not_null(j);
    char *s = json_dumps(j, JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(j);
    cr_assert_not_null(s);
    return s;
}

static runner_opts_t make_opts(const char *strategy, int micro_batches, emu_hw_t hw)
{
    runner_opts_t o;
    memset(&o, 0, sizeof o);
    cr_assert_eq(par_strategy_parse(strategy, &o.strategy), MOEMU_OK, "%s", moemu_errmsg());
    o.micro_batches = micro_batches;
    o.hw = hw;
    return o;
}

/* ==== The hand computation ==== */

enum { HM_MAXDEV = 8, HM_MAXROWS = 32, HM_MAXE = 8, HM_MAXQ = 64, HM_MAXLE = 64,
       HM_MAXBN = 64, HM_MAXREC = 4096 };

typedef struct {
    double calls, bytes, time, idle;
} hc_t;

typedef struct {
    /* place (docs/strategies.md) */
    int rank, stage, dpr, tpr, edp, epr, l0, l1, Hl, kvl, Vl, real, e0, e1, rb0, rb1;
    /* clock and counters as a device keeps them, per kernel kind */
    double clock, compute[EMU_KERNEL__COUNT], memory[EMU_KERNEL__COUNT],
        flops[EMU_KERNEL__COUNT], bytes[EMU_KERNEL__COUNT];
    hc_t c[EMU_COLL__COUNT][EMU_LINK__COUNT];
    double xfer[2];                  /* in the MoE dispatch, combine */
    double egress[EMU_LINK__COUNT]; /* a sender's link is busy until */
    double q_dep[HM_MAXQ], q_arr[HM_MAXQ];
    int qh, qt;                      /* messages waiting for it */
    /* memory: what stays reserved, and the largest transient reservations */
    double weights, kv, block, tr_comm, tr_act, tr_total;
    int64_t rows; /* expert rows computed */
    /* the current pass */
    int b0, b1, TA, a, z, nsend;
    int seq[HM_MAXROWS], pos[HM_MAXROWS];
    int sendc[HM_MAXE];
} hd_t;

typedef struct {
    const cfg_model_t *c;
    int B, N, P;
    const int *lens;
    const int *route; /* (L, B, P, k): the experts each token chose */
    int pp, dp, tp, ep, mb; /* cp = etp = 1, sp off */
    emu_spec_t spec;
    emu_topo_t topo;
    int world, S; /* S: devices of a stage */
    hd_t dev[HM_MAXDEV];
    int64_t load[HM_MAXLE];
    int64_t assign, dropped;
    int keep_rec[HM_MAXREC]; /* (L, B, P, k): the record the run writes */
    double ttime[HM_MAXBN]; /* (B, N) */
} hm_t;

static double hm_sz(const hm_t *m) { return (double)emu_dtype_size(m->c->dtype); }

/* A kernel: launch + max(flops / (peak mfu), bytes / (bw util)), counted
 * compute-bound when the FLOP term is not the smaller. */
static void hk(const hm_t *m, hd_t *h, emu_kernel_t kind, double flops, double bytes)
{
    double tc = flops / (m->spec.peak_flops * m->spec.mfu);
    double tm = bytes / (m->spec.mem_bw * m->spec.bw_util);
    double t = m->spec.launch_s + (tc > tm ? tc : tm);
    if (tc >= tm) h->compute[kind] += t;
    else h->memory[kind] += t;
    h->flops[kind] += flops;
    h->bytes[kind] += bytes;
    h->clock += t;
}

/* The kernels, with the FLOPs and bytes their code charges (s: bytes of
 * the dtype). */
/* dist.c embed(): a row per token read and written: 0 FLOPs, 2 T d s */
static void hk_embed(const hm_t *m, hd_t *h, int T)
{
    hk(m, h, EMU_KERNEL_EMBED, 0, 2.0 * T * m->c->hidden_size * hm_sz(m));
}
/* layer_rmsnorm: 4 T d FLOPs, s (2 T d + d) bytes */
static void hk_norm(const hm_t *m, hd_t *h, int T)
{
    double d = m->c->hidden_size;
    hk(m, h, EMU_KERNEL_NORM, 4.0 * T * d, hm_sz(m) * (2.0 * T * d + d));
}
/* layer_linear: 2 T in out FLOPs, s (T in + in out + T out) bytes */
static void hk_linear(const hm_t *m, hd_t *h, emu_kernel_t kind, int T, int in, int out)
{
    hk(m, h, kind, 2.0 * T * in * out,
       hm_sz(m) * ((double)T * in + (double)in * out + (double)T * out));
}
/* layer_rope: n = T heads hd elements, 3 n FLOPs, 2 n s bytes */
static void hk_rope(const hm_t *m, hd_t *h, int T, int heads)
{
    double n = (double)T * heads * m->c->head_dim;
    hk(m, h, EMU_KERNEL_ROPE, 3.0 * n, 2.0 * n * hm_sz(m));
}
/* layer_add: n FLOPs, 3 n s bytes */
static void hk_add(const hm_t *m, hd_t *h, double n)
{
    hk(m, h, EMU_KERNEL_ELEMWISE, n, 3.0 * n * hm_sz(m));
}
/* layer_attention_batch: one kernel for the pass; per sequence of T
 * queries at q0.. over keys 0..k1-1, 4 hd H FLOPs per visible pair and
 * s (2 T H hd + 2 nk Hkv hd) bytes (nk: the keys up to the last query) */
static void hk_attention(const hm_t *m, hd_t *h, bool decode, int step)
{
    double hd = m->c->head_dim, flops = 0, bytes = 0;
    for (int b = h->b0; b < h->b1; b++) {
        double T, pairs, nk;
        if (!decode) { /* the prompt: T = len, causal pairs len (len + 1) / 2 */
            T = m->lens[b];
            pairs = T * (T + 1) / 2;
            nk = T;
        } else { /* one query over the len + step cached keys */
            T = 1;
            pairs = nk = m->lens[b] + step;
        }
        flops += 4.0 * hd * h->Hl * pairs;
        bytes += hm_sz(m) * (2.0 * T * h->Hl * hd + 2.0 * nk * h->kvl * hd);
    }
    hk(m, h, EMU_KERNEL_ATTN, flops, bytes);
}

/* ---- links and collectives (docs/emulation.md) */

static emu_link_t hm_link(const hm_t *m, int a, int b)
{
    return a / m->topo.devices_per_node == b / m->topo.devices_per_node ? EMU_LINK_INTRA
                                                                         : EMU_LINK_INTER;
}

static emu_link_t hm_group_link(const hm_t *m, const int *r, int p)
{
    for (int i = 1; i < p; i++)
        if (hm_link(m, r[0], r[i]) == EMU_LINK_INTER) return EMU_LINK_INTER;
    return EMU_LINK_INTRA;
}

static double hm_lat(const hm_t *m, emu_link_t l)
{
    return l == EMU_LINK_INTRA ? m->topo.intra_lat : m->topo.inter_lat;
}

static double hm_bw(const hm_t *m, emu_link_t l)
{
    return l == EMU_LINK_INTRA ? m->topo.intra_bw : m->topo.inter_bw;
}

/* Ring all-reduce of B bytes: 2(p-1) alpha + 2(p-1)/p B / beta, each
 * member sends 2(p-1)/p B; ring all-gather (B: the whole output):
 * (p-1) alpha + (p-1)/p B / beta, each sends (p-1)/p B. Every member
 * starts at the latest arrival (the wait is idle time). */
static void hm_ring(hm_t *m, emu_coll_t kind, const int *r, int p, double B)
{
    emu_link_t l = hm_group_link(m, r, p);
    double f = kind == EMU_COLL_ALLREDUCE ? 2.0 : 1.0;
    double t = f * (p - 1) * hm_lat(m, l) + f * (p - 1) / p * B / hm_bw(m, l);
    double sent = f * (p - 1) / p * B, start = 0;
    for (int i = 0; i < p; i++) start = fmax(start, m->dev[r[i]].clock);
    for (int i = 0; i < p; i++) {
        hd_t *h = &m->dev[r[i]];
        hc_t *c = &h->c[kind][l];
        c->calls++;
        c->idle += start - h->clock;
        c->time += t;
        c->bytes += sent;
        h->clock = start + t;
    }
}

/* Pairwise all-to-all: bytes[i p + j] from member i to j. At step s member
 * r sends to (r+s)%p and receives from (r-s)%p; a direction costs
 * alpha + bytes / beta of its pair's class (nothing without bytes), a step
 * the slower direction; all finish at start + the largest sum of steps.
 * Each member's own steps count under the class of their slower
 * direction, the rest (waiting for slower members) under the group's. */
/* part: 0 of the MoE dispatch, 1 of its combine */
static void hm_alltoall(hm_t *m, const int *r, int p, const double *bytes, int part)
{
    emu_link_t gl = hm_group_link(m, r, p);
    double moved = 0, tmax = 0, start = 0, mine[HM_MAXDEV][EMU_LINK__COUNT] = {{0}};
    for (int i = 0; i < p; i++) {
        m->dev[r[i]].c[EMU_COLL_ALLTOALL][gl].calls++;
        for (int j = 0; j < p; j++)
            if (i != j) moved += bytes[i * p + j];
    }
    if (moved <= 0) return; /* nothing moves: free, and nobody waits */
    for (int me = 0; me < p; me++) {
        double T = 0;
        for (int s = 1; s < p; s++) {
            int to = (me + s) % p, from = (me - s + p) % p;
            emu_link_t lo = hm_link(m, r[me], r[to]), li = hm_link(m, r[from], r[me]);
            double bo = bytes[me * p + to], bi = bytes[from * p + me];
            double to_t = bo > 0 ? hm_lat(m, lo) + bo / hm_bw(m, lo) : 0;
            double ti = bi > 0 ? hm_lat(m, li) + bi / hm_bw(m, li) : 0;
            double ts = to_t >= ti ? to_t : ti;
            mine[me][to_t >= ti ? lo : li] += ts;
            T += ts;
        }
        tmax = fmax(tmax, T);
        start = fmax(start, m->dev[r[me]].clock);
    }
    for (int me = 0; me < p; me++) {
        hd_t *h = &m->dev[r[me]];
        mine[me][gl] += tmax - (mine[me][EMU_LINK_INTRA] + mine[me][EMU_LINK_INTER]);
        h->c[EMU_COLL_ALLTOALL][gl].idle += start - h->clock;
        h->xfer[part] += start + tmax - h->clock;
        for (int l = 0; l < EMU_LINK__COUNT; l++) h->c[EMU_COLL_ALLTOALL][l].time += mine[me][l];
        for (int j = 0; j < p; j++)
            if (j != me) h->c[EMU_COLL_ALLTOALL][hm_link(m, r[me], r[j])].bytes += bytes[me * p + j];
        h->clock = start + tmax;
    }
}

/* Eager send: free for the sender; the message leaves when the sender's
 * link of its class is free, which it then holds for B / beta, and
 * arrives alpha + B / beta after leaving. */
static void hm_send(hm_t *m, hd_t *h, int to, double B)
{
    emu_link_t l = hm_link(m, h->rank, to);
    h->c[EMU_COLL_SEND][l].calls++;
    h->c[EMU_COLL_SEND][l].bytes += B;
    double wire = B / hm_bw(m, l), depart = fmax(h->clock, h->egress[l]);
    h->egress[l] = depart + wire;
    hd_t *d = &m->dev[to];
    cr_assert_lt(d->qt, HM_MAXQ);
    d->q_dep[d->qt] = depart;
    d->q_arr[d->qt++] = depart + hm_lat(m, l) + wire;
}

/* Receive: idle until the message leaves, communicating while in flight. */
static void hm_recv(hm_t *m, hd_t *h, int from)
{
    emu_link_t l = hm_link(m, from, h->rank);
    cr_assert_lt(h->qh, h->qt, "hand model: device %d receives a message never sent", h->rank);
    double dep = h->q_dep[h->qh], arr = h->q_arr[h->qh++];
    double start = fmax(h->clock, dep), end = fmax(h->clock, arr);
    hc_t *c = &h->c[EMU_COLL_RECV][l];
    c->calls++;
    c->idle += start - h->clock;
    c->time += end - start;
    h->clock = end;
}

/* A transient reservation (bytes of a category live at once). */
static void hm_transient(hd_t *h, double comm, double act)
{
    h->tr_comm = fmax(h->tr_comm, comm);
    h->tr_act = fmax(h->tr_act, act);
    h->tr_total = fmax(h->tr_total, comm + act);
}

/* Padded all-gather of rows over the TP group of device i (layers/shard.c
 * gather_rows): n = the largest count x width elements per member, the
 * output p n elements; a buffer of n (p + 1) elements is reserved. */
static void hm_tp_gather(hm_t *m, int stage, int g, int n)
{
    int r[HM_MAXDEV], p = m->tp;
    if (p == 1 || n == 0) return;
    for (int t = 0; t < p; t++) {
        r[t] = stage * m->S + g * p + t;
        hm_transient(&m->dev[r[t]], (double)n * (p + 1) * hm_sz(m), 0);
    }
    hm_ring(m, EMU_COLL_ALLGATHER, r, p, (double)p * n * hm_sz(m));
}

/* All-reduce of n elements over each TP group of the stage. */
static void hm_tp_allreduce(hm_t *m, int stage)
{
    if (m->tp == 1) return;
    for (int g = 0; g < m->S / m->tp; g++) {
        int r[HM_MAXDEV];
        for (int t = 0; t < m->tp; t++) r[t] = stage * m->S + g * m->tp + t;
        int n = m->dev[r[0]].TA * m->c->hidden_size;
        if (n > 0) hm_ring(m, EMU_COLL_ALLREDUCE, r, m->tp, (double)n * hm_sz(m));
    }
}

/* ceil(cf T k / E), cf in decimal (9 places): the capacity of a group */
static int64_t hm_capacity(double cf, int64_t T, int k, int E)
{
    int64_t n = llround(cf * 1e9), den = 1000000000LL * E;
    return (n * T * k + den - 1) / den;
}

static int hm_choice(const hm_t *m, int l, int b, int pos, int s)
{
    int x = m->route[(((size_t)l * m->B + b) * m->P + pos) * m->c->num_experts_per_tok + s];
    return x < 0 ? -1 - x : x;
}

/* The MoE layer l of a pass on the devices of a stage (dist.c moe() and
 * layers/shard.c layer_moe_routed, EP = 1 or an all-to-all group). */
static void hm_moe(hm_t *m, int stage, int l)
{
    const cfg_model_t *c = m->c;
    int S = m->S, d = c->hidden_size, k = c->num_experts_per_tok, E = c->num_local_experts;
    int F = c->intermediate_size, EP = m->ep, Eper = E / EP;
    double sz = hm_sz(m);
    hd_t *D = &m->dev[stage * S];
    for (int i = 0; i < S; i++) {
        hd_t *h = &D[i];
        int nM = h->z - h->a, TA = h->TA;
        hk_norm(m, h, TA);
        /* the router: logits (nM, d) x (d, E), then softmax and top-k:
         * 5 nM E + nM k E FLOPs, s nM E + 8 nM k bytes */
        hk_linear(m, h, EMU_KERNEL_ROUTER, nM, d, E);
        hk(m, h, EMU_KERNEL_ROUTER, 5.0 * nM * E + (double)nM * k * E,
           sz * nM * E + 8.0 * nM * k);
        int idx[HM_MAXROWS * 2], keep[HM_MAXROWS * 2];
        for (int j = 0; j < nM; j++)
            for (int s = 0; s < k; s++) {
                idx[j * k + s] = hm_choice(m, l, h->seq[h->a + j], h->pos[h->a + j], s);
                keep[j * k + s] = 1;
            }
        if (c->capacity_factor > 0) {
            /* the group is the replica's micro-batch; here one device holds
             * it whole (TP = CP = 1), in group order. The first cap
             * assignments of each expert stay; the decision costs a kernel
             * of T k FLOPs and 8 T k bytes. */
            cr_assert_eq(m->tp, 1, "hand model: capacity with TP > 1");
            int64_t cap = hm_capacity(c->capacity_factor, TA, k, E), cnt[HM_MAXE] = {0};
            for (int a = 0; a < nM * k; a++) {
                keep[a] = cnt[idx[a]] < cap;
                if (keep[a]) cnt[idx[a]]++;
                else m->dropped++;
            }
            hk(m, h, EMU_KERNEL_ROUTER, (double)TA * k, 8.0 * TA * k);
        }
        m->assign += (int64_t)nM * k;
        for (int e = 0; e < E; e++) h->sendc[e] = 0;
        h->nsend = 0;
        for (int j = 0; j < nM; j++)
            for (int s = 0; s < k; s++) {
                int a = j * k + s, e = idx[a];
                m->keep_rec[(((size_t)l * m->B + h->seq[h->a + j]) * m->P + h->pos[h->a + j]) * k +
                            s] = keep[a] ? e : -1 - e;
                if (keep[a]) h->sendc[e]++, h->nsend++;
            }
    }
    int groups = S / EP, r[HM_MAXDEV];
    double bytes[HM_MAXDEV * HM_MAXDEV];
    /* counts: Eper int32 to every EP peer */
    for (int g = 0; g < groups && EP > 1; g++) {
        for (int e = 0; e < EP; e++) r[e] = stage * S + g * EP + e;
        for (int i = 0; i < EP * EP; i++) bytes[i] = 4.0 * Eper;
        hm_alltoall(m, r, EP, bytes, 0);
    }
    /* the rows to send, gathered by expert: 0 FLOPs, 2 s nsend d bytes */
    for (int i = 0; i < S; i++)
        hk(m, &D[i], EMU_KERNEL_ELEMWISE, 0, 2.0 * sz * D[i].nsend * d);
    for (int g = 0; g < groups; g++) {
        for (int e = 0; e < EP; e++) r[e] = stage * S + g * EP + e;
        for (int i = 0; i < EP; i++) {
            for (int j = 0; j < EP; j++) {
                double n = 0;
                for (int e = j * Eper; e < (j + 1) * Eper; e++) n += m->dev[r[i]].sendc[e];
                bytes[i * EP + j] = sz * d * n;
            }
        }
        if (EP > 1) hm_alltoall(m, r, EP, bytes, 0);
        for (int j = 0; j < EP; j++) {
            hd_t *h = &m->dev[r[j]];
            int ntot = 0, experts = 0;
            for (int jj = 0; jj < Eper; jj++) {
                int rows = 0;
                for (int q = 0; q < EP; q++) rows += m->dev[r[q]].sendc[h->e0 + jj];
                ntot += rows;
                experts += rows > 0;
                m->load[(size_t)l * E + h->e0 + jj] += rows;
            }
            h->rows += ntot;
            /* send + receive buffers, then the lists (ETP = 1: its own),
             * then the return buffer, all live at once */
            hm_transient(h, sz * (h->nsend + ntot) * d + sz * h->nsend * d, 2.0 * sz * ntot * d);
            if (ntot == 0) continue;
            /* with EP > 1, the experts' rows gathered into expert order
             * and scattered back: 2 s ntot d bytes each (one source's rows
             * already are in that order); the grouped experts (rows, `experts` with rows):
             * w1 and w3: 2 rows d F FLOPs, s (rows d + experts F d + rows F)
             * bytes each; SwiGLU: 6 rows F, 3 s rows F; w2: 2 rows F d,
             * s (rows F + experts d F + rows d) */
            double rows = ntot, ex = experts;
            if (EP > 1) hk(m, h, EMU_KERNEL_ELEMWISE, 0, 2.0 * sz * rows * d);
            hk(m, h, EMU_KERNEL_EXPERT, 2.0 * rows * d * F, sz * (rows * d + ex * F * d + rows * F));
            hk(m, h, EMU_KERNEL_EXPERT, 2.0 * rows * d * F, sz * (rows * d + ex * F * d + rows * F));
            hk(m, h, EMU_KERNEL_EXPERT, 6.0 * rows * F, 3.0 * sz * rows * F);
            hk(m, h, EMU_KERNEL_EXPERT, 2.0 * rows * F * d, sz * (rows * F + ex * d * F + rows * d));
            if (EP > 1) hk(m, h, EMU_KERNEL_ELEMWISE, 0, 2.0 * sz * rows * d);
        }
        /* back the same way */
        if (EP > 1) {
            double back[HM_MAXDEV * HM_MAXDEV];
            for (int i = 0; i < EP; i++)
                for (int j = 0; j < EP; j++) back[j * EP + i] = bytes[i * EP + j];
            hm_alltoall(m, r, EP, back, 1);
        }
    }
    /* combine: 2 nM k d FLOPs, s (nsend d + nM d) bytes */
    for (int i = 0; i < S; i++) {
        hd_t *h = &D[i];
        int nM = h->z - h->a;
        hk(m, h, EMU_KERNEL_ELEMWISE, 2.0 * nM * k * d, sz * ((double)h->nsend * d + (double)nM * d));
    }
    /* the routed rows back to every TP rank */
    for (int g = 0; g < S / m->tp; g++) {
        int TA = D[g * m->tp].TA, slice = (TA + m->tp - 1) / m->tp;
        hm_tp_gather(m, stage, g, (slice < TA ? slice : TA) * d);
    }
    for (int i = 0; i < S; i++) hk_add(m, &D[i], (double)D[i].TA * d);
}

/* One pass (micro-batch mbi, prefill or decode step) on stage s. */
static void hm_pass(hm_t *m, int s, int mbi, bool decode, int step)
{
    const cfg_model_t *c = m->c;
    int S = m->S, d = c->hidden_size, hd = c->head_dim, N = m->N;
    double sz = hm_sz(m);
    hd_t *D = &m->dev[s * S];
    for (int i = 0; i < S; i++) { /* dist.c pass_rows with CP = 1 */
        hd_t *h = &D[i];
        int nseq = h->rb1 - h->rb0;
        h->b0 = h->rb0 + mbi * nseq / m->mb;
        h->b1 = h->rb0 + (mbi + 1) * nseq / m->mb;
        h->TA = 0;
        for (int b = h->b0; b < h->b1; b++)
            for (int p = decode ? m->lens[b] + step - 1 : 0;
                 p < (decode ? m->lens[b] + step : m->lens[b]); p++) {
                cr_assert_lt(h->TA, HM_MAXROWS);
                h->seq[h->TA] = b;
                h->pos[h->TA++] = p;
            }
        int slice = (h->TA + m->tp - 1) / m->tp;
        h->a = h->tpr * slice < h->TA ? h->tpr * slice : h->TA;
        h->z = (h->tpr + 1) * slice < h->TA ? (h->tpr + 1) * slice : h->TA;
    }
    if (s == 0) {
        for (int i = 0; i < S; i++) {
            if (decode && m->pp > 1) hm_recv(m, &D[i], D[i].rank + (m->pp - 1) * S);
            hk_embed(m, &D[i], D[i].TA);
        }
        hm_tp_allreduce(m, s);
    } else {
        for (int i = 0; i < S; i++) hm_recv(m, &D[i], D[i].rank - S);
    }
    for (int l = D[0].l0; l < D[0].l1; l++) {
        for (int i = 0; i < S; i++) { /* attention, TP over the heads */
            hd_t *h = &D[i];
            int TA = h->TA, qd = h->Hl * hd, kvd = h->kvl * hd;
            hk_norm(m, h, TA);
            hk_linear(m, h, EMU_KERNEL_GEMM, TA, d, qd);
            hk_linear(m, h, EMU_KERNEL_GEMM, TA, d, kvd);
            hk_linear(m, h, EMU_KERNEL_GEMM, TA, d, kvd);
            hk_rope(m, h, TA, h->Hl);
            hk_rope(m, h, TA, h->kvl);
            /* keys and values into the cache: 0 FLOPs, 4 s TA kvd bytes,
             * before attention in prefill, after it in decode */
            if (!decode) hk(m, h, EMU_KERNEL_ELEMWISE, 0, 4.0 * sz * TA * kvd);
            hk_attention(m, h, decode, step);
            if (decode) hk(m, h, EMU_KERNEL_ELEMWISE, 0, 4.0 * sz * TA * kvd);
            hk_linear(m, h, EMU_KERNEL_GEMM, TA, qd, d);
        }
        hm_tp_allreduce(m, s);
        for (int i = 0; i < S; i++) hk_add(m, &D[i], (double)D[i].TA * d);
        hm_moe(m, s, l);
    }
    if (s < m->pp - 1) {
        for (int i = 0; i < S; i++) hm_send(m, &D[i], D[i].rank + S, (double)D[i].TA * d * sz);
        return;
    }
    /* the head: final norm and lm_head over the last row of each sequence
     * (prefill) or every row (decode), the vocabulary split over TP */
    for (int i = 0; i < S; i++) {
        hd_t *h = &D[i];
        int nl = h->b1 - h->b0;
        hk_norm(m, h, nl);
        hk_linear(m, h, EMU_KERNEL_GEMM, nl, d, h->real);
    }
    for (int g = 0; g < S / m->tp; g++)
        hm_tp_gather(m, s, g, (D[g * m->tp].b1 - D[g * m->tp].b0) * D[g * m->tp].Vl);
    for (int i = 0; i < S; i++) {
        hd_t *h = &D[i];
        if (h->tpr == 0)
            for (int b = h->b0; b < h->b1; b++) m->ttime[b * N + step] = h->clock;
        if (step + 1 < N && m->pp > 1)
            hm_send(m, h, h->rank - (m->pp - 1) * S, 4.0 * (h->b1 - h->b0));
    }
}

/* Set up the places and the memory that stays reserved, then run every
 * pass in schedule order (each stage after the one before it). */
static void hm_run(hm_t *m)
{
    const cfg_model_t *c = m->c;
    int d = c->hidden_size, hd = c->head_dim, H = c->num_attention_heads;
    int Hkv = c->num_key_value_heads, E = c->num_local_experts, k = c->num_experts_per_tok;
    int F = c->intermediate_size, V = c->vocab_size, L = c->num_hidden_layers, N = m->N;
    double sz = hm_sz(m);
    m->S = m->dp * m->tp;
    m->world = m->pp * m->S;
    cr_assert_leq(m->world, HM_MAXDEV);
    cr_assert_leq(L * E, HM_MAXLE);
    cr_assert_leq(m->B * N, HM_MAXBN);
    cr_assert_leq(E, HM_MAXE);
    cr_assert_leq(k, 2);
    m->P = 0;
    for (int b = 0; b < m->B; b++) m->P = m->lens[b] > m->P ? m->lens[b] : m->P;
    m->P += N > 1 ? N - 1 : 0;
    cr_assert_leq((size_t)L * m->B * m->P * k, sizeof m->keep_rec / sizeof(int));
    for (size_t i = 0; i < sizeof m->keep_rec / sizeof(int); i++) m->keep_rec[i] = INT32_MIN;
    for (int rank = 0; rank < m->world; rank++) {
        hd_t *h = &m->dev[rank];
        memset(h, 0, sizeof *h);
        h->rank = rank;
        h->stage = rank / m->S;
        int si = rank % m->S;
        h->dpr = si / m->tp;
        h->tpr = si % m->tp;
        h->epr = si % m->ep;
        h->edp = si / m->ep;
        int base = L / m->pp, rem = L % m->pp;
        h->l0 = h->stage * base + (h->stage < rem ? h->stage : rem);
        h->l1 = h->l0 + base + (h->stage < rem);
        h->Hl = H / m->tp;
        if (Hkv % m->tp == 0) {
            h->kvl = Hkv / m->tp;
        } else { /* the kv heads its query heads read, replicated */
            int g = H / Hkv, h0 = h->tpr * H / m->tp, h1 = (h->tpr + 1) * H / m->tp;
            h->kvl = (h1 - 1) / g + 1 - h0 / g;
        }
        int Vp = (V + m->tp - 1) / m->tp * m->tp;
        h->Vl = Vp / m->tp;
        int v0 = h->Vl * h->tpr;
        h->real = (v0 + h->Vl < V ? v0 + h->Vl : V) - v0;
        if (h->real < 0) h->real = 0;
        h->e0 = h->epr * E / m->ep;
        h->e1 = (h->epr + 1) * E / m->ep;
        h->rb0 = h->dpr * m->B / m->dp;
        h->rb1 = (h->dpr + 1) * m->B / m->dp;
        /* weights: per layer the two norms, q and o (Hl hd d each), k and v
         * (kvl hd d each), the router (E d) and its experts' three
         * matrices (F d each); the embedding on the first stage, the final
         * norm and lm_head on the last, Vl rows of d each */
        double layer = 2.0 * d + (double)h->Hl * hd * d * 2 + (double)h->kvl * hd * d * 2 +
                       (double)E * d + (double)(h->e1 - h->e0) * 3 * F * d;
        double w = layer * (h->l1 - h->l0);
        if (h->stage == 0) w += (double)h->Vl * d;
        if (h->stage == m->pp - 1) w += d + (double)h->Vl * d;
        h->weights = w * sz;
        /* KV cache: keys and values of every prompt position and decode
         * token of its sequences, in its layers */
        int kvd = h->kvl * hd, nseq = h->rb1 - h->rb0, Ttot = 0;
        double kvf = 0;
        for (int b = h->rb0; b < h->rb1; b++)
            kvf += 2.0 * kvd * (m->lens[b] + (N > 1 ? N - 1 : 0)) * (h->l1 - h->l0);
        h->kv = sz * kvf;
        /* dist.c's scratch block (dev_setup), for Tmax rows: the largest
         * micro-batch's tokens (Ttot) or its sequences */
        for (int mi = 0; mi < m->mb; mi++) {
            int tot = 0;
            for (int b = h->rb0 + mi * nseq / m->mb; b < h->rb0 + (mi + 1) * nseq / m->mb; b++)
                tot += m->lens[b];
            Ttot = tot > Ttot ? tot : Ttot;
        }
        int Tmax = Ttot > nseq ? Ttot : nseq, qd = h->Hl * hd;
        double nf = (double)Tmax * (5 * d + 2 * qd + 2 * kvd + E + k + h->Hl) +
                    (double)Tmax * (qd + h->Hl) + 4.0 * Ttot * kvd + 2.0 * nseq * Vp;
        double ni = (double)Tmax * (k + 2) + 2.0 * Ttot + m->tp + Ttot + Tmax + nseq;
        h->block = sz * nf + 4.0 * ni;
    }
    for (int step = 0; step < (N > 0 ? N : 1); step++)
        for (int mi = 0; mi < m->mb; mi++)
            for (int s = 0; s < m->pp; s++) hm_pass(m, s, mi, step > 0, step);
}

static double hm_sum(const double *x, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++) s += x[i];
    return s;
}

static double hm_comm_time(const hd_t *h)
{
    double t = 0;
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) t += h->c[k][l].time;
    return t;
}

static double hm_idle(const hd_t *h)
{
    double t = 0;
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) t += h->c[k][l].idle;
    return t;
}

/* The one-device reference of the same workload: no strategy, the run's
 * DP replicas x micro-batches as micro-batches. */
static double hm_one_device(const hm_t *m)
{
    hm_t *one = calloc(1, sizeof *one);
    cr_assert_not_null(one);
    *one = (hm_t){.c = m->c, .B = m->B, .N = m->N, .lens = m->lens, .route = m->route,
                  .pp = 1, .dp = 1, .tp = 1, .ep = 1, .mb = m->dp * m->mb, .spec = m->spec,
                  .topo = m->topo};
    hm_run(one);
    double t = one->dev[0].clock;
    free(one);
    return t;
}

/* |got - want| <= 1e-12 (|want| + scale): relative, with the run's time
 * scale as the floor for figures that may be 0 (idle, bubbles) */
#define NEAR(got, want, scale, ...)                                                       \
    cr_expect(fabs((double)(got) - (double)(want)) <=                                    \
                  1e-12 * (fabs((double)(want)) + (double)(scale)),                        \
              "%s: %s = %.17g, by hand %.17g", label, #got, (double)(got), (double)(want))

/* Every figure of r against the hand computation m (t1: the hand
 * one-device time). */
static void hm_check(const hm_t *m, const report_t *r, double t1, const char *label)
{
    const cfg_model_t *c = m->c;
    int n = m->world, B = m->B, N = m->N, L = c->num_hidden_layers, E = c->num_local_experts;
    int k = c->num_experts_per_tok;
    int64_t prompt = 0;
    for (int b = 0; b < B; b++) prompt += m->lens[b];
    cr_expect_eq(r->devices, n, "%s", label);
    cr_expect_eq(r->stages, m->pp, "%s", label);
    cr_expect_eq(r->batch, B, "%s", label);
    cr_expect_eq(r->decode, N, "%s", label);
    cr_expect_eq(r->layers, L, "%s", label);
    cr_expect_eq(r->experts, E, "%s", label);
    cr_expect_eq(r->prompt_tokens, prompt, "%s", label);
    cr_expect_eq(r->generated_tokens, (int64_t)B * N, "%s", label);
    cr_expect_str_eq(r->hw, "round", "%s", label);

    /* end to end: the last clock */
    double e2e = 0;
    for (int i = 0; i < n; i++) e2e = fmax(e2e, m->dev[i].clock);
    NEAR(r->e2e, e2e, 0);

    /* devices */
    double dispatch = 0, combine = 0, clocks = 0, kernels[EMU_KERNEL__COUNT] = {0};
    for (int i = 0; i < n; i++) {
        const hd_t *h = &m->dev[i];
        const report_dev_t *v = &r->dev[i];
        cr_expect_eq(v->rank, i, "%s", label);
        cr_expect_eq(v->node, i / m->topo.devices_per_node, "%s: device %d", label, i);
        cr_expect_eq(v->stage, h->stage, "%s: device %d", label, i);
        double compute = hm_sum(h->compute, EMU_KERNEL__COUNT);
        double memory = hm_sum(h->memory, EMU_KERNEL__COUNT);
        double flops = hm_sum(h->flops, EMU_KERNEL__COUNT);
        double bytes = hm_sum(h->bytes, EMU_KERNEL__COUNT);
        NEAR(v->clock, h->clock, 0);
        NEAR(v->compute, compute, 0);
        NEAR(v->memory, memory, 0);
        NEAR(v->comm, hm_comm_time(h), e2e);
        NEAR(v->idle, hm_idle(h), e2e);
        NEAR(v->flops, flops, 0);
        NEAR(v->bytes, bytes, 0);
        NEAR(v->mfu, flops / (h->clock * m->spec.peak_flops), 0);
        NEAR(v->bw_util, bytes / (h->clock * m->spec.mem_bw), 0);
        NEAR(v->mem[EMU_MEM_WEIGHTS], h->weights, 0);
        NEAR(v->mem[EMU_MEM_KV], h->kv, 0);
        NEAR(v->mem[EMU_MEM_ACT], h->block + h->tr_act, 0);
        NEAR(v->mem[EMU_MEM_COMM], h->tr_comm, 0);
        NEAR(v->mem[EMU_MEM_OTHER], 0, 0);
        NEAR(v->mem_peak, h->weights + h->kv + h->block + h->tr_total, 0);
        NEAR(v->capacity, m->spec.mem_capacity, 0);
        double recv_idle = 0;
        for (int l = 0; l < EMU_LINK__COUNT; l++) recv_idle += h->c[EMU_COLL_RECV][l].idle;
        NEAR(v->recv_idle, recv_idle, e2e);
        cr_expect_eq(v->expert_rows, h->rows, "%s: device %d rows %lld, by hand %lld", label, i,
                     (long long)v->expert_rows, (long long)h->rows);
        dispatch += h->xfer[0], combine += h->xfer[1], clocks += h->clock;
        for (int k = 0; k < EMU_KERNEL__COUNT; k++) kernels[k] += h->compute[k] + h->memory[k];
    }
    /* where the time goes: each kernel kind, the dispatch and combine, the
     * rest; the parts add up to the clocks */
    double parts = r->dispatch + r->combine + r->other_comm;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) {
        NEAR(r->kernel_time[k], kernels[k], e2e * m->world);
        parts += r->kernel_time[k];
    }
    NEAR(r->dispatch, dispatch, e2e * m->world);
    NEAR(r->combine, combine, e2e * m->world);
    NEAR(parts, clocks, e2e * m->world);

    /* latency and throughput */
    double tb = 0, tmin = INFINITY, tsum = 0, tpot = 0;
    for (int b = 0; b < B; b++) {
        double f = m->ttime[b * N];
        NEAR(r->ttft[b], f, 0);
        tb = fmax(tb, f);
        tmin = fmin(tmin, f);
        tsum += f;
        if (N > 1) tpot += (m->ttime[b * N + N - 1] - f) / (N - 1) / B;
    }
    NEAR(r->ttft_batch, tb, 0);
    NEAR(r->ttft_max, tb, 0);
    NEAR(r->ttft_min, tmin, 0);
    NEAR(r->ttft_mean, tsum / B, 0);
    NEAR(r->tpot, tpot, 0);
    NEAR(r->prefill_tpms, prompt / (1e3 * tb), 0);
    NEAR(r->decode_tpms, N > 1 ? (double)B * (N - 1) / (1e3 * (e2e - tb)) : 0, 0);
    NEAR(r->total_tpms, (double)(prompt + (int64_t)B * N) / (1e3 * e2e), 0);

    /* communication: per kind and link class, summed over devices */
    double all_bytes = 0, all_time = 0, exp_mean = 0, exp_max = 0;
    for (int kd = 0; kd < EMU_COLL__COUNT; kd++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) {
            double calls = 0, bytes = 0, time = 0;
            for (int i = 0; i < n; i++) {
                calls += m->dev[i].c[kd][l].calls;
                bytes += m->dev[i].c[kd][l].bytes;
                time += m->dev[i].c[kd][l].time;
            }
            cr_expect_eq(r->comm[kd][l].calls, calls, "%s: %s %s calls %g, by hand %g", label,
                         emu_coll_name(kd), emu_link_name(l), r->comm[kd][l].calls, calls);
            NEAR(r->comm[kd][l].bytes, bytes, 0);
            NEAR(r->comm[kd][l].time, time, e2e);
            all_bytes += bytes;
        }
    for (int i = 0; i < n; i++) {
        double t = hm_comm_time(&m->dev[i]);
        all_time += t;
        exp_mean += t / e2e / n;
        exp_max = fmax(exp_max, t / e2e);
    }
    NEAR(r->comm_bytes, all_bytes, 0);
    NEAR(r->comm_time, all_time, e2e);
    NEAR(r->exposed_comm_mean, exp_mean, 1);
    NEAR(r->exposed_comm_max, exp_max, 1);

    /* bubbles: per stage, the mean of (waiting for messages + idle after
     * its last work) / end to end */
    for (int s = 0; s < m->pp; s++) {
        double bub = 0;
        for (int i = s * m->S; i < (s + 1) * m->S; i++) {
            double wait = 0;
            for (int l = 0; l < EMU_LINK__COUNT; l++) wait += m->dev[i].c[EMU_COLL_RECV][l].idle;
            bub += (wait + e2e - m->dev[i].clock) / e2e / m->S;
        }
        NEAR(r->bubble[s], bub, 1);
    }

    /* expert load */
    double sum = 0, sq = 0, mx = 0, worst = 0;
    int worst_l = -1;
    for (int l = 0; l < L; l++) {
        double ls = 0, lm = 0;
        for (int e = 0; e < E; e++) {
            double x = (double)m->load[l * E + e];
            cr_expect_eq(r->load[l * E + e], m->load[l * E + e],
                         "%s: layer %d expert %d load %lld, by hand %lld", label, l, e,
                         (long long)r->load[l * E + e], (long long)m->load[l * E + e]);
            ls += x;
            lm = fmax(lm, x);
            mx = fmax(mx, x);
        }
        sum += ls;
        if (ls > 0 && lm / (ls / E) > worst) worst = lm / (ls / E), worst_l = l;
    }
    double mean = sum / (L * E);
    for (int i = 0; i < L * E; i++) sq += ((double)m->load[i] - mean) * ((double)m->load[i] - mean);
    NEAR(r->load_max_mean, mx / mean, 0);
    NEAR(r->load_cv, sqrt(sq / (L * E)) / mean, 0);
    cr_expect_eq(r->load_worst_layer, worst_l, "%s", label);
    NEAR(r->load_worst_layer_max_mean, worst, 0);
    cr_expect_eq(r->assignments, m->assign, "%s", label);
    cr_expect_eq(r->dropped, m->dropped, "%s", label);
    cr_expect_eq((int64_t)sum, m->assign - m->dropped, "%s", label);
    cr_expect_eq(m->assign, (prompt + (int64_t)B * (N - 1)) * k * L, "%s", label);
    int busiest = 0;
    double rows_mean = 0;
    for (int i = 0; i < n; i++) {
        rows_mean += (double)m->dev[i].rows / n;
        if (m->dev[i].rows > m->dev[busiest].rows) busiest = i;
    }
    cr_expect_eq(r->busiest, busiest, "%s", label);
    NEAR(r->busiest_vs_mean, m->dev[busiest].rows / rows_mean, 0);

    /* scaling */
    NEAR(r->t1, t1, 0);
    NEAR(r->speedup, t1 / e2e, 0);
    NEAR(r->efficiency, t1 / e2e / n, 0);
}

/* The JSON carries the same figures. */
static void check_json(const report_t *r, const char *label)
{
    json_t *j = report_json(r);
    cr_assert_not_null(j);
    json_t *lat = json_object_get(j, "latency"), *thr = json_object_get(j, "throughput_tokens_per_ms");
    cr_assert_not_null(lat);
    cr_assert_not_null(thr);
    cr_expect_eq(json_real_value(json_object_get(lat, "e2e_s")), r->e2e, "%s", label);
    cr_expect_eq(json_real_value(json_object_get(lat, "ttft_batch_s")), r->ttft_batch, "%s", label);
    cr_expect_eq(json_real_value(json_object_get(lat, "tpot_s")), r->tpot, "%s", label);
    cr_expect_eq(json_real_value(json_object_get(thr, "total")), r->total_tpms, "%s", label);
    cr_expect_eq(json_real_value(json_object_get(thr, "total_per_device")),
                 r->total_tpms / r->devices, "%s", label);
    json_t *devs = json_object_get(j, "devices_detail");
    cr_assert_eq((int)json_array_size(devs), r->devices, "%s", label);
    for (int i = 0; i < r->devices; i++) {
        json_t *d = json_array_get(devs, (size_t)i), *mem = json_object_get(d, "memory_bytes");
        cr_expect_eq(json_real_value(json_object_get(d, "clock_s")), r->dev[i].clock, "%s", label);
        cr_expect_eq(json_real_value(json_object_get(mem, "peak")), r->dev[i].mem_peak, "%s",
                     label);
    }
    json_t *load = json_object_get(json_object_get(j, "expert_load"), "tokens_per_expert");
    cr_assert_eq((int)json_array_size(load), r->layers, "%s", label);
    for (int l = 0; l < r->layers; l++)
        for (int e = 0; e < r->experts; e++)
            cr_expect_eq(json_integer_value(json_array_get(json_array_get(load, (size_t)l),
                                                           (size_t)e)),
                         r->load[l * r->experts + e], "%s", label);
    json_decref(j);
}

/* The CSV: a header and one row per device, its figures to 9 digits. */
static void check_csv(const report_t *r, const char *label)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/moemu-report-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(report_csv(r, path), MOEMU_OK, "%s", moemu_errmsg());
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    char line[1024];
    cr_assert_not_null(fgets(line, sizeof line, f));
    cr_expect_eq(strncmp(line, "rank,node,stage,clock_s,compute_s,memory_s,comm_s,idle_s,", 57), 0,
                 "%s: header %s", label, line);
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        int rank, node, stage;
        double clock, compute, memory, comm, idle;
        cr_assert_eq(sscanf(line, "%d,%d,%d,%lf,%lf,%lf,%lf,%lf", &rank, &node, &stage, &clock,
                            &compute, &memory, &comm, &idle), 8, "%s: %s", label, line);
        cr_assert_eq(rank, rows, "%s", label);
        const report_dev_t *v = &r->dev[rows++];
        cr_expect_eq(node, v->node, "%s", label);
        cr_expect_eq(stage, v->stage, "%s", label);
        cr_expect(fabs(clock - v->clock) <= 1e-8 * v->clock, "%s: CSV clock %.17g", label, clock);
        cr_expect(fabs(idle - v->idle) <= 1e-8 * v->clock, "%s: CSV idle %.17g", label, idle);
    }
    fclose(f);
    unlink(path);
    cr_expect_eq(rows, r->devices, "%s: %d CSV rows", label, rows);
}

/* ==== Closed forms ==== */

/* (a) one device, one layer: every kernel by hand; the one-device time is
 * the run itself */
Test(closed_form, one_device_one_layer)
{
    const char *label = "tp1, one layer";
    cfg_model_t cfg;
    small_cfg(&cfg, 1, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5", 3);
    runner_opts_t o = make_opts("tp1", 1, round_hw(8));
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, NULL, true);
    static hm_t m;
    m = (hm_t){.c = &cfg, .B = 2, .N = 3, .lens = wl.len, .route = x.record, .pp = 1, .dp = 1,
               .tp = 1, .ep = 1, .mb = 1, .spec = o.hw.spec, .topo = o.hw.topo};
    hm_run(&m);
    double t1 = hm_one_device(&m);
    cr_expect_eq(t1, m.dev[0].clock, "the reference is the run itself");
    hm_check(&m, &x.r, t1, label);
    /* a few figures worked out to the end: one device computes every
     * routed assignment of the 8 prompt and 4 decode tokens */
    cr_expect_eq(x.r.assignments, (8 + 2 * 2) * 2);
    cr_expect_eq(x.r.dev[0].expert_rows, 24);
    cr_expect_eq(x.r.dev[0].comm, 0);
    cr_expect_eq(x.r.dev[0].idle, 0);
    NEAR(x.r.speedup, 1, 0);
    NEAR(x.r.efficiency, 1, 0);
    /* the weights: 2 norms (16) + q, o (2 x 64) + k, v (2 x 32) + router
     * (32) + 4 experts x 3 x 64, + embedding and lm_head (2 x 128) + final
     * norm (8) = 1272 elements, bf16 */
    NEAR(x.r.dev[0].mem[EMU_MEM_WEIGHTS], 1272 * 2, 0);
    /* KV: 1 kv head of 4, keys and values of (3 + 2) + (5 + 2) tokens */
    NEAR(x.r.dev[0].mem[EMU_MEM_KV], 2 * 4 * 12 * 2, 0);
    check_json(&x.r, label);
    run_free(&x, &o);
    wl_free(&wl);
}

/* (b) TP2 on one node: heads, vocabulary and the routed rows split, the
 * all-reduces and all-gathers by their ring closed forms */
Test(closed_form, tp2_one_node)
{
    const char *label = "tp2 on one node";
    cfg_model_t cfg;
    small_cfg(&cfg, 1, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5", 3);
    runner_opts_t o = make_opts("tp2", 1, round_hw(8));
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, NULL, true);
    static hm_t m;
    m = (hm_t){.c = &cfg, .B = 2, .N = 3, .lens = wl.len, .route = x.record, .pp = 1, .dp = 1,
               .tp = 2, .ep = 1, .mb = 1, .spec = o.hw.spec, .topo = o.hw.topo};
    hm_run(&m);
    hm_check(&m, &x.r, hm_one_device(&m), label);
    /* per pass: the embedding's and attention's all-reduces, the routed
     * rows' and the logits' all-gathers; 3 passes on 2 devices */
    cr_expect_eq(x.r.comm[EMU_COLL_ALLREDUCE][EMU_LINK_INTRA].calls, 2 * 3 * 2);
    cr_expect_eq(x.r.comm[EMU_COLL_ALLGATHER][EMU_LINK_INTRA].calls, 2 * 3 * 2);
    cr_expect_eq(x.r.comm[EMU_COLL_ALLREDUCE][EMU_LINK_INTER].calls, 0);
    /* prefill all-reduce of 8 tokens x 8 bf16 = 128 bytes: each member
     * sends B and spends 2 x 1 us + 128 B / 10 GB/s */
    double ar = 2 * (2 * 1e-6 + 128 / 1e10) + 2 * 2 * (2 * 1e-6 + 32 / 1e10);
    NEAR(x.r.comm[EMU_COLL_ALLREDUCE][EMU_LINK_INTRA].time, 2 * ar, 0);
    check_json(&x.r, label);
    run_free(&x, &o);
    wl_free(&wl);
}

/* jansson refuses a non-finite real (the JSON report came out empty) and
 * printf shows inf or nan: such a figure fails the report, named. */
Test(closed_form, non_finite_figures_are_named)
{
    cfg_model_t cfg;
    small_cfg(&cfg, 1, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5", 3);
    runner_opts_t o = make_opts("tp2", 1, round_hw(8));
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, NULL, false);
    report_t r;
    cr_assert_eq(report_build(&r, x.cl, &x.out, &cfg, &wl, &o, INFINITY), MOEMU_ERR_INVALID);
    cr_expect_str_eq(moemu_errmsg(), "report: scaling.one_device_s is inf, not a finite number");
    x.out.token_time[2] = NAN; /* sequence 0's last token */
    cr_assert_eq(report_build(&r, x.cl, &x.out, &cfg, &wl, &o, 0), MOEMU_ERR_INVALID);
    cr_expect_str_eq(moemu_errmsg(), "report: latency.tpot_s is nan, not a finite number");
    run_free(&x, &o);
    wl_free(&wl);
}

/* (c) PP2 with 4 micro-batches on two nodes: messages between the stages
 * and their waits, the bubbles, the first tokens in micro-batch order */
Test(closed_form, pp2_four_micro_batches)
{
    const char *label = "pp2, 4 micro-batches";
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5,2,4", 3);
    runner_opts_t o = make_opts("pp2", 4, round_hw(1));
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, NULL, true);
    static hm_t m;
    m = (hm_t){.c = &cfg, .B = 4, .N = 3, .lens = wl.len, .route = x.record, .pp = 2, .dp = 1,
               .tp = 1, .ep = 1, .mb = 4, .spec = o.hw.spec, .topo = o.hw.topo};
    hm_run(&m);
    hm_check(&m, &x.r, hm_one_device(&m), label);
    for (int b = 1; b < 4; b++)
        cr_expect_lt(x.r.ttft[b - 1], x.r.ttft[b], "micro-batch %d's first token before %d's",
                     b - 1, b);
    /* stage 0 sends activations in each of 12 passes, stage 1 the tokens
     * of 8 (none after the last decode pass), over the NIC */
    cr_expect_eq(x.r.comm[EMU_COLL_SEND][EMU_LINK_INTER].calls, 20);
    cr_expect_eq(x.r.comm[EMU_COLL_RECV][EMU_LINK_INTER].calls, 20);
    double act = 2.0 * 8 * ((3 + 5 + 2 + 4) + 2 * 4); /* bf16 rows of 8 */
    NEAR(x.r.comm[EMU_COLL_SEND][EMU_LINK_INTER].bytes, act + 4.0 * 8, 0);
    cr_expect_gt(x.r.bubble[0], 0);
    cr_expect_gt(x.r.bubble[1], 0);
    check_json(&x.r, label);
    check_csv(&x.r, label);
    run_free(&x, &o);
    wl_free(&wl);
}

/* (d) EP4 over four DP replicas on two nodes, a dry run replaying a
 * routing made by hand, with capacity factor 1 dropping assignments */
static void ep4_route(int *rec, const int *lens, int B, int P, int N)
{
    for (int i = 0; i < 2 * B * P * 2; i++) rec[i] = INT32_MIN;
    for (int l = 0; l < 2; l++)
        for (int b = 0; b < B; b++)
            for (int p = 0; p < lens[b] + N - 1; p++) {
                int *c = rec + ((l * B + b) * P + p) * 2;
                /* layer 0: every prompt token of sequence 1 picks experts
                 * 0 then 1; otherwise (b + p) % 4, then 1 (layer 0) or 2
                 * (layer 1) further on */
                c[0] = l == 0 && b == 1 && p < lens[b] ? 0 : (b + p) % 4;
                c[1] = (c[0] + 1 + l) % 4;
            }
}

Test(closed_form, ep4_known_routing)
{
    const char *label = "dp4-ep4, known routing";
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 1.0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5,2,4", 2);
    int P = 5 + 1, rec[2 * 4 * 6 * 2];
    ep4_route(rec, wl.len, 4, P, 2);
    runner_opts_t o = make_opts("dp4-ep4", 1, round_hw(2));
    run_t x;
    run_start(&x, &cfg, &wl, &o, rec, NULL, true);
    static hm_t m;
    m = (hm_t){.c = &cfg, .B = 4, .N = 2, .lens = wl.len, .route = rec, .pp = 1, .dp = 4,
               .tp = 1, .ep = 4, .mb = 1, .spec = o.hw.spec, .topo = o.hw.topo};
    hm_run(&m);
    hm_check(&m, &x.r, hm_one_device(&m), label);
    /* the record the run writes: the kept choices, -1 - expert for drops */
    for (size_t i = 0; i < x.nrec; i++)
        if (rec[i] != INT32_MIN)
            cr_expect_eq(x.record[i], m.keep_rec[i], "record entry %zu: %d, by hand %d", i,
                         x.record[i], m.keep_rec[i]);
    /* worked out in full: capacity ceil(T k / E) per sequence (3 for the
     * 5 tokens of sequence 1, whose 5 prompt tokens all pick 0 and 1 in
     * layer 0: 2 drops each; 1 for sequence 2, whose second token's first
     * choice, 3, is dropped) */
    static const int64_t load[2][4] = {{10, 8, 6, 7}, {9, 9, 9, 9}};
    for (int l = 0; l < 2; l++)
        for (int e = 0; e < 4; e++)
            cr_expect_eq(x.r.load[l * 4 + e], load[l][e], "layer %d expert %d", l, e);
    cr_expect_eq(x.r.assignments, 72);
    cr_expect_eq(x.r.dropped, 5);
    NEAR(x.r.load_max_mean, 10 / 8.375, 0);
    NEAR(x.r.load_cv, sqrt(11.875 / 8) / 8.375, 0);
    cr_expect_eq(x.r.load_worst_layer, 0);
    NEAR(x.r.load_worst_layer_max_mean, 10 / (31 / 4.0), 0);
    /* device e holds expert e: 19, 17, 15 and 16 rows */
    cr_expect_eq(x.r.busiest, 0);
    NEAR(x.r.busiest_vs_mean, 19 / 16.75, 0);
    /* 3 all-to-alls per layer and pass, 2 layers, 2 passes, 4 devices;
     * the group spans both nodes */
    cr_expect_eq(x.r.comm[EMU_COLL_ALLTOALL][EMU_LINK_INTER].calls, 3 * 2 * 2 * 4);
    cr_expect_gt(x.r.comm[EMU_COLL_ALLTOALL][EMU_LINK_INTRA].bytes, 0);
    cr_expect_gt(x.r.comm[EMU_COLL_ALLTOALL][EMU_LINK_INTER].bytes, 0);
    check_json(&x.r, label);
    run_free(&x, &o);
    wl_free(&wl);
}

/* ==== The figures add up ==== */

typedef struct {
    char model[16], strategy[40], routing[16]; /* routing: "" real math */
    int micro_batches, devices_per_node, batch, prompt_len, decode;
    char lens[16];
    double cf;
} addup_t;

static const addup_t addup_cases[] = {
    {"tiny", "pp2-dp2-tp2-ep2-sp", "", 2, 4, 0, 0, 4, "7,12,5,9", 0},
    {"tiny", "pp2-dp2-tp2-ep2-sp", "", 2, 4, 0, 0, 4, "7,12,5,9", 1.0},
    {"tiny", "cp2-tp2-ep4", "", 1, 2, 0, 0, 4, "7,12,5", 1.0},
    {"tiny", "tp2-etp2", "", 1, 8, 0, 0, 4, "7,12,5", 0},
    {"tiny", "dp2-cp2-tp2-ep2-etp2-sp", "", 2, 4, 0, 0, 3, "7,12,5,9", 1.0},
    {"tiny", "pp4", "", 3, 2, 0, 0, 3, "7,12,5,9", 1.0},
    {"moe-10b-plan", "tp2-ep8-dp4-pp2", "zipf:1", 1, 8, 8, 64, 3, "", -1},
    {"moe-10b-plan", "pp2-dp2-tp2-sp-ep4", "uniform", 2, 4, 8, 64, 4, "", -1},
};

ParameterizedTestParameters(add_up, strategies)
{
    return cr_make_param_array(addup_t, (void *)addup_cases,
                               sizeof addup_cases / sizeof addup_cases[0]);
}

#define REL(a, b, tol) (fabs((a) - (b)) <= (tol) * fmax(fabs(a), fabs(b)))

ParameterizedTest(const addup_t *k, add_up, strategies)
{
    char label[96];
    snprintf(label, sizeof label, "%s %s mb%d cf %g%s%s", k->model, k->strategy,
             k->micro_batches, k->cf, k->routing[0] ? " dry " : "", k->routing);
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, k->model), MOEMU_OK);
    if (k->cf >= 0) cfg.capacity_factor = k->cf;
    wl_opts_t wo = {.batch = k->batch, .prompt_len = k->prompt_len,
                    .lens = k->lens[0] ? k->lens : NULL, .decode = k->decode, .seed = 3};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK, "%s", moemu_errmsg());
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    hw.topo.devices_per_node = k->devices_per_node;
    runner_opts_t o = make_opts(k->strategy, k->micro_batches, hw);
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, k->routing[0] ? k->routing : NULL, true);
    const report_t *r = &x.r;
    int n = r->devices, B = wl.batch, N = wl.decode;
    cr_assert_eq(n, par_strategy_world(&o.strategy));

    /* per device: clock = compute + memory + comm + idle + host */
    double e2e = 0, comm_time = 0, weights = 0;
    for (int i = 0; i < n; i++) {
        const report_dev_t *v = &r->dev[i];
        emu_dev_t *d = emu_cluster_dev(x.cl, i);
        cr_expect(REL(v->clock, v->compute + v->memory + v->comm + v->idle + v->host, 1e-9),
                  "%s: device %d clock %.17g, parts add to %.17g", label, i, v->clock,
                  v->compute + v->memory + v->comm + v->idle + v->host);
        cr_expect(REL(v->compute + v->memory, emu_dev_kernel_time(d), 1e-9), "%s", label);
        cr_expect_eq(v->comm, emu_dev_comm_time(d), "%s", label);
        cr_expect_eq(v->idle, emu_dev_idle_time(d), "%s", label);
        cr_expect_eq(v->clock, emu_dev_clock(d), "%s", label);
        /* achieved fractions cannot pass the spec's */
        cr_expect_leq(v->mfu, hw.spec.mfu * (1 + 1e-12), "%s", label);
        cr_expect_leq(v->bw_util, hw.spec.bw_util * (1 + 1e-12), "%s", label);
        cr_expect(REL(v->mfu, v->flops / (v->clock * hw.spec.peak_flops), 1e-12), "%s", label);
        cr_expect(REL(v->bw_util, v->bytes / (v->clock * hw.spec.mem_bw), 1e-12), "%s", label);
        /* memory: the category peaks need not coincide, so their sum bounds
         * the total's peak, which bounds each of them */
        double sum = 0;
        for (int m = 0; m < EMU_MEM__COUNT; m++) {
            sum += v->mem[m];
            cr_expect_geq(v->mem_peak, v->mem[m] * (1 - 1e-12), "%s: device %d %s", label, i,
                          emu_mem_name(m));
        }
        cr_expect_geq(sum * (1 + 1e-12), v->mem_peak, "%s: device %d", label, i);
        cr_expect_leq(v->mem_peak, v->capacity, "%s", label);
        /* weights stay reserved: their peak is what is held; the rest is
         * released when the run ends */
        cr_expect_eq(v->mem[EMU_MEM_WEIGHTS], emu_mem_used(d, EMU_MEM_WEIGHTS), "%s", label);
        cr_expect_gt(v->mem[EMU_MEM_KV], 0, "%s", label);
        for (int m = EMU_MEM_KV; m < EMU_MEM__COUNT; m++)
            cr_expect_eq(emu_mem_used(d, m), 0, "%s: device %d still holds %s", label, i,
                         emu_mem_name(m));
        weights += v->mem[EMU_MEM_WEIGHTS];
        e2e = fmax(e2e, v->clock);
        comm_time += v->comm;
    }
    cfg_figures_t fig;
    cfg_figures(&cfg, &fig);
    cr_expect_geq(weights * (1 + 1e-12), fig.weight_bytes, "%s: every weight held", label);
    cr_expect_eq(r->e2e, e2e, "%s", label);

    /* latency and throughput */
    cr_expect_leq(r->ttft_min, r->ttft_mean * (1 + 1e-12), "%s", label);
    cr_expect_leq(r->ttft_mean, r->ttft_max * (1 + 1e-12), "%s", label);
    cr_expect_eq(r->ttft_max, r->ttft_batch, "%s", label);
    cr_expect_leq(r->ttft_batch, r->e2e, "%s", label);
    double tpot = 0;
    for (int b = 0; b < B; b++) {
        cr_expect_eq(r->ttft[b], x.out.token_time[(size_t)b * N], "%s", label);
        for (int t = 1; t < N; t++)
            cr_expect_gt(x.out.token_time[(size_t)b * N + t], x.out.token_time[(size_t)b * N + t - 1],
                         "%s: sequence %d token %d", label, b, t);
        cr_expect_leq(x.out.token_time[(size_t)b * N + N - 1], r->e2e, "%s", label);
        tpot += (x.out.token_time[(size_t)b * N + N - 1] - x.out.token_time[(size_t)b * N]) /
                (N - 1) / B;
    }
    cr_expect(REL(r->tpot, tpot, 1e-12), "%s", label);
    int64_t prompt = wl_prompt_tokens(&wl);
    cr_expect(REL(r->prefill_tpms, prompt / (1e3 * r->ttft_batch), 1e-12), "%s", label);
    cr_expect(REL(r->decode_tpms, (double)B * (N - 1) / (1e3 * (r->e2e - r->ttft_batch)), 1e-12),
              "%s", label);
    cr_expect(REL(r->total_tpms, (double)(prompt + (int64_t)B * N) / (1e3 * r->e2e), 1e-12), "%s",
              label);

    /* communication: the kinds add to the totals */
    double bytes = 0, time = 0, exp_max = 0;
    for (int kd = 0; kd < EMU_COLL__COUNT; kd++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) {
            double calls = 0;
            for (int i = 0; i < n; i++)
                calls += (double)emu_dev_comm_stats(emu_cluster_dev(x.cl, i), kd, l)->calls;
            cr_expect_eq(r->comm[kd][l].calls, calls, "%s", label);
            bytes += r->comm[kd][l].bytes;
            time += r->comm[kd][l].time;
        }
    cr_expect(REL(r->comm_bytes, bytes, 1e-12), "%s", label);
    cr_expect(REL(r->comm_time, comm_time, 1e-12), "%s", label);
    cr_expect(REL(time, comm_time, 1e-9), "%s: kinds add to %.17g, devices to %.17g", label, time,
              comm_time);
    for (int i = 0; i < n; i++) exp_max = fmax(exp_max, r->dev[i].comm / r->e2e);
    cr_expect_eq(r->exposed_comm_max, exp_max, "%s", label);
    cr_expect_leq(r->exposed_comm_mean, r->exposed_comm_max * (1 + 1e-12), "%s", label);
    for (int s = 0; s < r->stages; s++) {
        cr_expect_geq(r->bubble[s], 0, "%s", label);
        cr_expect_leq(r->bubble[s], 1, "%s", label);
    }

    /* expert load: the kept assignments, tokens x k x layers minus drops */
    int L = cfg.num_hidden_layers, E = cfg.num_local_experts;
    int64_t load = 0, rows = 0, busiest = 0;
    for (int i = 0; i < L * E; i++) load += r->load[i];
    for (int i = 0; i < n; i++) {
        rows += r->dev[i].expert_rows;
        busiest = r->dev[i].expert_rows > busiest ? r->dev[i].expert_rows : busiest;
    }
    cr_expect_eq(r->assignments,
                 (prompt + (int64_t)B * (N - 1)) * cfg.num_experts_per_tok * L, "%s", label);
    cr_expect_eq(load, r->assignments - r->dropped, "%s: load %lld, assignments %lld - dropped %lld",
                 label, (long long)load, (long long)r->assignments, (long long)r->dropped);
    cr_expect_eq(rows, load, "%s: every kept row computed once", label);
    cr_expect_eq(r->dev[r->busiest].expert_rows, busiest, "%s", label);
    if (!k->routing[0] && k->cf > 0) cr_expect_gt(r->dropped, 0, "%s: cf 1 drops", label);
    if (cfg.capacity_factor == 0) cr_expect_eq(r->dropped, 0, "%s", label);

    /* scaling */
    cr_expect_gt(r->t1, 0, "%s", label);
    cr_expect(REL(r->speedup, r->t1 / r->e2e, 1e-12), "%s", label);
    cr_expect(REL(r->efficiency, r->speedup / n, 1e-12), "%s", label);
    run_free(&x, &o);
    wl_free(&wl);
}

/* ==== The trace ==== */

/* The trace of x's run: valid trace-event JSON, the spans of each device
 * in order without overlap (tiling its clock, as docs/emulation.md says),
 * each category adding to the report's split, the last span ending at the
 * end to end time. */
static void check_trace(const run_t *x, const runner_opts_t *o, const char *label)
{
    char path[64];
    snprintf(path, sizeof path, "/tmp/moemu-report-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    cr_assert_eq(emu_trace_dump(x->cl, f, label), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(fclose(f), 0);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    unlink(path);
    cr_assert_not_null(root, "%s: the trace is not JSON: %s (line %d)", label, err.text, err.line);
    const report_t *r = &x->r;
    int n = r->devices, dpn = o->hw.topo.devices_per_node;
    json_t *ev = json_object_get(root, "traceEvents"), *other = json_object_get(root, "otherData");
    cr_assert(json_is_array(ev), "%s", label);
    cr_assert(json_is_object(other), "%s", label);
    cr_expect_str_eq(json_string_value(json_object_get(root, "displayTimeUnit")), "ms");
    cr_expect_eq(json_integer_value(json_object_get(other, "devices")), n, "%s", label);
    double end_us = json_number_value(json_object_get(other, "end_us"));
    cr_expect(REL(end_us, 1e6 * r->e2e, 1e-12), "%s: end_us %.17g, e2e %.17g s", label, end_us,
              r->e2e);

    long long *last = calloc((size_t)n, sizeof *last);
    double(*cat)[EMU_SPAN__COUNT] = calloc((size_t)n, sizeof *cat);
    int *spans = calloc((size_t)n, sizeof *spans), *named = calloc((size_t)n, sizeof *named);
    cr_assert(last && cat && spans && named);
    size_t i;
    json_t *e;
    json_array_foreach(ev, i, e) {
        cr_assert(json_is_object(e), "%s: event %zu", label, i);
        const char *ph = json_string_value(json_object_get(e, "ph"));
        json_t *pid = json_object_get(e, "pid"), *tid = json_object_get(e, "tid");
        cr_assert(ph && json_is_integer(pid) && json_is_integer(tid), "%s: event %zu", label, i);
        const char *name = json_string_value(json_object_get(e, "name"));
        cr_assert_not_null(name, "%s: event %zu has no name", label, i);
        json_t *args = json_object_get(e, "args");
        cr_assert(json_is_object(args), "%s: event %zu", label, i);
        int t = (int)json_integer_value(tid) - 1;
        if (!strcmp(ph, "M")) { /* names and sort order of nodes and devices */
            cr_expect(!strcmp(name, "process_name") || !strcmp(name, "process_sort_index") ||
                          !strcmp(name, "thread_name") || !strcmp(name, "thread_sort_index"),
                      "%s: metadata %s", label, name);
            if (!strcmp(name, "thread_name")) {
                char want[32];
                snprintf(want, sizeof want, "device %d", t);
                cr_expect_str_eq(json_string_value(json_object_get(args, "name")), want);
                cr_assert(t >= 0 && t < n);
                named[t]++;
            }
            continue;
        }
        cr_assert_str_eq(ph, "X", "%s: event %zu", label, i);
        cr_assert(t >= 0 && t < n, "%s: tid %d", label, t + 1);
        cr_expect_eq(json_integer_value(pid), t / dpn + 1, "%s: device %d's process", label, t);
        json_t *ts = json_object_get(e, "ts"), *dur = json_object_get(e, "dur");
        cr_assert(json_is_number(ts) && json_is_number(dur), "%s: event %zu", label, i);
        cr_assert(json_is_number(json_object_get(args, "flops")) &&
                      json_is_number(json_object_get(args, "bytes")),
                  "%s: event %zu", label, i);
        const char *c = json_string_value(json_object_get(e, "cat"));
        cr_assert_not_null(c);
        int ci = !strcmp(c, "kernel") ? EMU_SPAN_KERNEL
                 : !strcmp(c, "comm") ? EMU_SPAN_COMM
                 : !strcmp(c, "idle") ? EMU_SPAN_IDLE
                 : !strcmp(c, "host") ? EMU_SPAN_HOST
                                      : -1;
        cr_assert_geq(ci, 0, "%s: category %s", label, c);
        if (ci == EMU_SPAN_COMM || ci == EMU_SPAN_IDLE) {
            const char *link = json_string_value(json_object_get(args, "link"));
            cr_expect(link && (!strcmp(link, "intra-node") || !strcmp(link, "inter-node")),
                      "%s: event %zu", label, i);
        }
        /* whole nanoseconds, as Perfetto reads them */
        long long s0 = llround(json_number_value(ts) * 1000);
        long long s1 = s0 + llround(json_number_value(dur) * 1000);
        cr_expect_geq(s1, s0, "%s: event %zu ends before it starts", label, i);
        cr_expect_geq(s0, last[t], "%s: device %d: a span at %lld ns overlaps the one ending at %lld",
                      label, t, s0, last[t]);
        cr_expect_eq(s0, last[t], "%s: device %d: a gap before %lld ns (the spans tile the clock)",
                     label, t, s0);
        last[t] = s1;
        cat[t][ci] += json_number_value(dur);
        spans[t]++;
    }
    double end = 0;
    for (int d = 0; d < n; d++) {
        const report_dev_t *v = &r->dev[d];
        cr_expect_eq(named[d], 1, "%s: device %d named once", label, d);
        cr_expect_gt(spans[d], 0, "%s", label);
        /* each duration is rounded by at most 1 ns */
        double tol = 1e-3 * spans[d] + 1e-9 * 1e6 * v->clock;
        cr_expect(fabs(cat[d][EMU_SPAN_KERNEL] - 1e6 * (v->compute + v->memory)) <= tol,
                  "%s: device %d kernels %.6f us, report %.6f", label, d, cat[d][EMU_SPAN_KERNEL],
                  1e6 * (v->compute + v->memory));
        cr_expect(fabs(cat[d][EMU_SPAN_COMM] - 1e6 * v->comm) <= tol, "%s: device %d comm", label, d);
        cr_expect(fabs(cat[d][EMU_SPAN_IDLE] - 1e6 * v->idle) <= tol, "%s: device %d idle", label, d);
        cr_expect(fabs(cat[d][EMU_SPAN_HOST] - 1e6 * v->host) <= tol, "%s: device %d host", label, d);
        double dev_end = last[d] / 1000.0, us = 1e6 * v->clock;
        cr_expect(fabs(dev_end - us) <= 1e-9 * us + 5e-4, "%s: device %d ends at %.4f us, clock %.4f",
                  label, d, dev_end, us);
        end = fmax(end, dev_end);
    }
    double e2e_us = 1e6 * r->e2e;
    cr_expect(fabs(end - e2e_us) <= 1e-9 * e2e_us + 5e-4,
              "%s: the last span ends at %.6f us, end to end is %.6f us", label, end, e2e_us);
    free(last);
    free(cat);
    free(spans);
    free(named);
    json_decref(root);
}

Test(trace, real_math_pipeline)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    wl_t wl;
    make_wl(&wl, &cfg, "7,12,5,9", 4);
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    hw.topo.devices_per_node = 4;
    runner_opts_t o = make_opts("pp2-dp2-tp2-ep2-sp", 2, hw);
    o.cluster.trace = true;
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, NULL, false);
    check_trace(&x, &o, "tiny pp2-dp2-tp2-ep2-sp");
    run_free(&x, &o);
    wl_free(&wl);
}

Test(trace, dry_run_plan)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "moe-10b-plan"), MOEMU_OK);
    wl_opts_t wo = {.batch = 8, .prompt_len = 64, .decode = 2, .seed = 3};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    runner_opts_t o = make_opts("tp2-ep8-dp4-pp2", 1, hw);
    o.cluster.trace = true;
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, "zipf:1", false);
    check_trace(&x, &o, "moe-10b-plan tp2-ep8-dp4-pp2 dry");
    run_free(&x, &o);
    wl_free(&wl);
}

Test(trace, closed_form_pipeline)
{
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5,2,4", 3);
    runner_opts_t o = make_opts("pp2", 4, round_hw(1));
    o.cluster.trace = true;
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, NULL, false);
    check_trace(&x, &o, "small pp2");
    run_free(&x, &o);
    wl_free(&wl);
}

/* The engine's host work (an engine profile's host_seq_s): each pass
 * waits host_seq_s per sequence where its tokens are picked, so a run of
 * B sequences and N tokens each is B N host_seq_s longer, the first
 * tokens B host_seq_s later; the trace shows it. */
Test(trace, host_work_per_sequence_and_pass)
{
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "3,5,2,4", 3);
    const double h = 1e-3;
    const int B = 4, N = 3;
    const char *strategies[] = {"tp2", "pp2"};
    for (int s = 0; s < 2; s++) {
        report_t r[2];
        run_t x[2];
        for (int with = 0; with < 2; with++) {
            emu_hw_t hw = round_hw(2);
            hw.spec.host_seq_s = with ? h : 0;
            runner_opts_t o = make_opts(strategies[s], 1, hw);
            o.cluster.trace = true;
            run_start(&x[with], &cfg, &wl, &o, NULL, NULL, false);
            check_trace(&x[with], &o, strategies[s]);
            r[with] = x[with].r;
        }
        for (int d = 0; d < 2; d++) {
            bool picks = s == 0 || d == 1; /* tp: both ranks; pp: the last stage */
            cr_expect(REL(r[1].dev[d].host, picks ? h * B * N : 0, 1e-12), "%s device %d host %g",
                      strategies[s], d, r[1].dev[d].host);
            cr_expect_eq(r[0].dev[d].host, 0);
        }
        cr_expect(REL(r[1].e2e - r[0].e2e, h * B * N, 1e-9), "%s: e2e %g -> %g", strategies[s],
                  r[0].e2e, r[1].e2e);
        cr_expect(REL(r[1].ttft_batch - r[0].ttft_batch, h * B, 1e-9), "%s: ttft %g -> %g",
                  strategies[s], r[0].ttft_batch, r[1].ttft_batch);
        for (int with = 0; with < 2; with++) run_free(&x[with], NULL);
    }
    wl_free(&wl);
}

/* ==== Random host delays change nothing ==== */

/* emu: kernels, all-reduces and a ring of messages, staggered so that
 * devices wait for each other; with jitter the clocks and every counter
 * are the same bits. */
typedef struct {
    par_comm_t *world;
} jprog_t;

static moemu_status_t jprog_fn(emu_dev_t *dev, void *arg)
{
    jprog_t *j = arg;
    int r = emu_dev_rank(dev), n = 4;
    float buf[64];
    for (int it = 0; it < 12; it++) {
        emu_charge(dev, EMU_KERNEL_GEMM, 1e9 * (r + 1) * (it % 3 + 1), 1e6);
        for (int i = 0; i < 64; i++) buf[i] = (float)(r + i + it);
        MOEMU_CHECK(par_allreduce(buf, buf, 64, EMU_DTYPE_FP32, PAR_OP_SUM, j->world, dev));
        MOEMU_CHECK(par_send(buf, 8, EMU_DTYPE_FP32, (r + 1) % n, j->world, dev));
        MOEMU_CHECK(par_recv(buf, 8, EMU_DTYPE_FP32, (r + n - 1) % n, j->world, dev));
        for (int q = 0; q < 17; q++) emu_charge(dev, EMU_KERNEL_ELEMWISE, 10.0 * (r + 1), 1e3);
    }
    return MOEMU_OK;
}

static double wall_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

Test(jitter, leaves_virtual_time_alone)
{
    emu_hw_t hw = round_hw(2);
    emu_dev_t *ref[4];
    emu_cluster_t *cl[3];
    /* 12 x (4 meetings + 1 charge) draws of 0 to 400 us per device */
    double wall[3];
    for (int run = 0; run < 3; run++) {
        emu_cluster_opts_t co = {.jitter_us = run ? 400 : 0, .jitter_seed = (uint64_t)run};
        cr_assert_eq(emu_cluster_create(&hw.spec, &hw.topo, 4, &co, &cl[run]), MOEMU_OK);
        int ranks[4] = {0, 1, 2, 3};
        jprog_t j;
        cr_assert_eq(par_comm_create(cl[run], ranks, 4, &j.world), MOEMU_OK);
        double t0 = wall_now();
        cr_assert_eq(emu_cluster_run(cl[run], jprog_fn, &j), MOEMU_OK, "%s", moemu_errmsg());
        wall[run] = wall_now() - t0;
        par_comm_destroy(j.world);
    }
    for (int d = 0; d < 4; d++) ref[d] = emu_cluster_dev(cl[0], d);
    for (int run = 1; run < 3; run++)
        for (int d = 0; d < 4; d++) {
            emu_dev_t *v = emu_cluster_dev(cl[run], d);
            cr_expect_eq(emu_dev_clock(v), emu_dev_clock(ref[d]), "run %d device %d", run, d);
            cr_expect_eq(emu_dev_idle_time(v), emu_dev_idle_time(ref[d]));
            cr_expect_eq(emu_dev_comm_time(v), emu_dev_comm_time(ref[d]));
            for (int k = 0; k < EMU_KERNEL__COUNT; k++)
                cr_expect_arr_eq(emu_dev_kernel_stats(v, k), emu_dev_kernel_stats(ref[d], k),
                                 sizeof(emu_kernel_stats_t));
            for (int k = 0; k < EMU_COLL__COUNT; k++)
                for (int l = 0; l < EMU_LINK__COUNT; l++)
                    cr_expect_arr_eq(emu_dev_comm_stats(v, k, l), emu_dev_comm_stats(ref[d], k, l),
                                     sizeof(emu_comm_stats_t));
        }
    cr_log_info("jitter: wall %.1f ms without, %.1f and %.1f ms with", 1e3 * wall[0],
                1e3 * wall[1], 1e3 * wall[2]);
    for (int run = 0; run < 3; run++) emu_cluster_destroy(cl[run]);
}

static moemu_status_t charges_fn(emu_dev_t *dev, void *arg)
{
    (void)arg;
    for (int i = 0; i < 160; i++) emu_charge(dev, EMU_KERNEL_ELEMWISE, 1, 1);
    return MOEMU_OK;
}

/* Every 16th charge sleeps: 10 draws of 0 to 3000 us, which add to 13.9 ms
 * for seed 42 (the generator is deterministic), and nothing else moves. */
Test(jitter, sleeps_at_every_16th_charge)
{
    emu_hw_t hw = round_hw(1);
    double clock[2];
    for (int run = 0; run < 2; run++) {
        emu_cluster_opts_t co = {.jitter_us = run ? 3000 : 0, .jitter_seed = 42};
        emu_cluster_t *cl;
        cr_assert_eq(emu_cluster_create(&hw.spec, &hw.topo, 1, &co, &cl), MOEMU_OK);
        double t0 = wall_now();
        cr_assert_eq(emu_cluster_run(cl, charges_fn, NULL), MOEMU_OK);
        double wall = wall_now() - t0;
        clock[run] = emu_dev_clock(emu_cluster_dev(cl, 0));
        if (run) cr_expect_geq(wall, 10e-3, "the jitter slept %.3f ms in all", 1e3 * wall);
        emu_cluster_destroy(cl);
    }
    cr_expect_eq(clock[0], clock[1]);
    cr_expect(REL(clock[0], 160 * emu_kernel_time(&hw.spec, 1, 1), 1e-12));
}

/* Whole reports, bit for bit, across runs whose device threads are
 * delayed at random (another seed each time). */
static void same_under_jitter(const cfg_model_t *cfg, const wl_t *wl, const char *strategy,
                              int mb, const char *routing, const char *label)
{
    /* a dry run's devices take turns as coroutines, where jitter changes
     * the order of the turns; every other run there uses threads */
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    hw.topo.devices_per_node = 4;
    char *ref = NULL;
    for (int run = 0; run < 6; run++) {
        runner_opts_t o = make_opts(strategy, mb, hw);
        o.cluster.jitter_us = run ? 200 : 0;
        o.cluster.jitter_seed = (uint64_t)run * 7919;
        o.cluster.threads = routing && run % 2;
        run_t x;
        run_start(&x, cfg, wl, &o, NULL, routing, false);
        char *s = report_dump(&x.r);
        if (!ref) ref = s;
        else {
            cr_expect_str_eq(s, ref, "%s: run %d (jitter seed %d) differs", label, run, run * 7919);
            free(s);
        }
        run_free(&x, &o);
    }
    free(ref);
}

Test(jitter, reports_bit_identical_real_math)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    cfg.capacity_factor = 1.0;
    wl_t wl;
    make_wl(&wl, &cfg, "7,12,5,9", 4);
    same_under_jitter(&cfg, &wl, "pp2-dp2-tp2-ep2", 2, NULL, "tiny pp2-dp2-tp2-ep2");
    wl_free(&wl);
}

Test(jitter, reports_bit_identical_dry_run)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "moe-10b-plan"), MOEMU_OK);
    wl_opts_t wo = {.batch = 8, .prompt_len = 64, .decode = 3, .seed = 3};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
    same_under_jitter(&cfg, &wl, "pp2-dp2-tp2-ep4-sp", 2, "zipf:1.2",
                      "moe-10b-plan pp2-dp2-tp2-ep4-sp dry");
    wl_free(&wl);
}

/* ==== Dry runs against real math ==== */

typedef struct {
    char strategy[40];
    int micro_batches;
    double cf;
} dry_t;

static const dry_t dry_cases[] = {
    {"pp2-dp2-tp2-ep2-sp", 2, 1.0}, {"cp2-tp2-ep4", 1, 1.0}, {"tp2-etp2", 1, 0},
    {"dp2-cp2-tp2-ep2-etp2-sp", 2, 1.0}, {"pp4", 3, 1.0}, {"dp2-tp2-ep4", 1, 1.0},
};

ParameterizedTestParameters(dry_run, equals_real_math)
{
    return cr_make_param_array(dry_t, (void *)dry_cases, sizeof dry_cases / sizeof dry_cases[0]);
}

/* A real run records its routing; a dry run replaying it gives the same
 * report, clocks and counters, bit for bit, and records the same routing
 * (drops included). */
ParameterizedTest(const dry_t *k, dry_run, equals_real_math)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    cfg.capacity_factor = k->cf;
    wl_t wl;
    make_wl(&wl, &cfg, "7,12,5,9", 4);
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    hw.topo.devices_per_node = 4;
    runner_opts_t ro = make_opts(k->strategy, k->micro_batches, hw);
    runner_opts_t doo = make_opts(k->strategy, k->micro_batches, hw);
    run_t real, dry;
    run_start(&real, &cfg, &wl, &ro, NULL, NULL, true);
    run_start(&dry, &cfg, &wl, &doo, real.record, NULL, true);
    if (k->cf > 0) cr_expect_gt(real.r.dropped, 0, "%s: capacity factor 1 drops", k->strategy);
    char *a = report_dump(&real.r), *b = report_dump(&dry.r);
    cr_expect_str_eq(a, b, "%s: the dry run's report differs from the real run's", k->strategy);
    free(a);
    free(b);
    cr_expect_arr_eq(dry.record, real.record, sizeof(int) * real.nrec, "%s: routing", k->strategy);
    cr_expect_eq(dry.t1, real.t1, "%s", k->strategy);
    for (int d = 0; d < real.r.devices; d++) {
        emu_dev_t *u = emu_cluster_dev(real.cl, d), *v = emu_cluster_dev(dry.cl, d);
        cr_expect_eq(emu_dev_clock(u), emu_dev_clock(v), "%s: device %d", k->strategy, d);
        for (int kd = 0; kd < EMU_KERNEL__COUNT; kd++)
            cr_expect_arr_eq(emu_dev_kernel_stats(u, kd), emu_dev_kernel_stats(v, kd),
                             sizeof(emu_kernel_stats_t), "%s: device %d %s", k->strategy, d,
                             emu_kernel_name(kd));
        for (int kd = 0; kd < EMU_COLL__COUNT; kd++)
            for (int l = 0; l < EMU_LINK__COUNT; l++)
                cr_expect_arr_eq(emu_dev_comm_stats(u, kd, l), emu_dev_comm_stats(v, kd, l),
                                 sizeof(emu_comm_stats_t), "%s: device %d %s", k->strategy, d,
                                 emu_coll_name(kd));
        for (int m = 0; m < EMU_MEM__COUNT; m++)
            cr_expect_eq(emu_mem_peak(u, m), emu_mem_peak(v, m), "%s", k->strategy);
    }
    run_free(&dry, &doo);
    run_free(&real, &ro);
    wl_free(&wl);
}

/* ---- collectives per layer and pass, from layers/blocks.c and shard.c */

typedef struct {
    emu_coll_t kind;
    double calls, dispatch, combine;
} coll_want_t;

typedef struct {
    char strategy[24];
    int micro_batches;
    coll_want_t layer[3];   /* per layer and pass, prefill and decode alike */
    coll_want_t outside[2]; /* per pass: embedding, lm_head */
} coll_case_t;

/* small_cfg: no shared experts, no query/key norm, dropless (no gather of
 * the routing decisions). Per layer:
 * - tp2: attention's row-parallel output projection summed over TP, 1
 *   all-reduce; EP = ETP = 1, so the experts are local (no dispatch or
 *   combine); the routed rows of each TP rank's slice gathered over TP
 *   (routed_back), 1 all-gather. Per pass, the embedding's all-reduce of
 *   the vocabulary shards and lm_head's all-gather of the logits.
 * - tp2-etp2 and tp2-ep2: EP x ETP = TP without SP, so the tokens are
 *   replicated over TP (par_moe_replicated): attention's all-reduce, then
 *   each rank's experts on its slice for every row and one all-reduce of
 *   the outputs (the combine), as vLLM issues: 2 all-reduces, no
 *   dispatch, no routed_back gather.
 * - tp2-sp-etp2: SP gathers the slices before attention (all-gather) and
 *   reduce-scatters the output projection; the routed rows stay on their
 *   slices (no routed_back gather); the ETP dispatch (the lists' counts
 *   and rows gathered over ETP, 2 all-gathers) and combine (the partial
 *   outputs reduce-scattered back, 1).
 * - dp2-ep2: no TP; the counts and the rows to their experts (2
 *   all-to-alls) and the outputs back (1). */
static const coll_case_t coll_cases[] = {
    {"tp2", 2, {{EMU_COLL_ALLREDUCE, 1, 0, 0}, {EMU_COLL_ALLGATHER, 1, 0, 0}},
     {{EMU_COLL_ALLREDUCE, 1, 0, 0}, {EMU_COLL_ALLGATHER, 1, 0, 0}}},
    {"tp2-etp2", 1, {{EMU_COLL_ALLREDUCE, 2, 0, 1}},
     {{EMU_COLL_ALLREDUCE, 1, 0, 0}, {EMU_COLL_ALLGATHER, 1, 0, 0}}},
    {"tp2-ep2", 1, {{EMU_COLL_ALLREDUCE, 2, 0, 1}},
     {{EMU_COLL_ALLREDUCE, 1, 0, 0}, {EMU_COLL_ALLGATHER, 1, 0, 0}}},
    {"tp2-sp-etp2", 1, {{EMU_COLL_ALLGATHER, 3, 2, 0}, {EMU_COLL_REDUCE_SCATTER, 2, 0, 1}},
     /* SP: the embedding reduce-scattered to the slices, lm_head gathers
      * the slices and then the logits */
     {{EMU_COLL_REDUCE_SCATTER, 1, 0, 0}, {EMU_COLL_ALLGATHER, 2, 0, 0}}},
    {"dp2-ep2", 2, {{EMU_COLL_ALLTOALL, 3, 2, 1}}, {{0}}},
};

ParameterizedTestParameters(collectives, per_layer_and_pass)
{
    return cr_make_param_array(coll_case_t, (void *)coll_cases,
                               sizeof coll_cases / sizeof coll_cases[0]);
}

/* want's entry of kind k (zeros when it lists none). */
static coll_want_t coll_want(const coll_want_t *want, int n, int k)
{
    for (int i = 0; i < n; i++)
        if (want[i].calls > 0 && (int)want[i].kind == k) return want[i];
    return (coll_want_t){.kind = k};
}

/* The runner's counts of every device's prefill and decode passes, each
 * kind, against the dataflow above: a change of what the layers issue
 * shows here. */
ParameterizedTest(const coll_case_t *k, collectives, per_layer_and_pass)
{
    cfg_model_t cfg;
    small_cfg(&cfg, 3, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "5,9,7,6", 4);
    runner_opts_t o = make_opts(k->strategy, k->micro_batches, round_hw(4));
    run_t x;
    run_start(&x, &cfg, &wl, &o, NULL, "uniform", false);
    /* every device issues the same: device 0 is the report's */
    cr_expect_eq(x.r.coll_dev, 0, "%s", k->strategy);
    for (int d = 0; d < x.r.devices; d++)
        for (int ph = 0; ph < 2; ph++) {
            const model_coll_t *c = &x.out.coll[2 * d + ph];
            const char *pass = ph ? "decode" : "prefill";
            double passes = k->micro_batches * (ph ? wl.decode - 1 : 1), lp = 3 * passes;
            cr_expect_eq(c->passes, passes, "%s device %d %s", k->strategy, d, pass);
            cr_expect_eq(c->layers, 3, "%s device %d", k->strategy, d);
            for (int kd = 0; kd < EMU_COLL__COUNT; kd++) {
                coll_want_t w = coll_want(k->layer, 3, kd), wo = coll_want(k->outside, 2, kd);
                const char *name = emu_coll_name(kd);
                cr_expect_eq(c->layers_all.calls[kd], w.calls * lp, "%s device %d %s %s: %g "
                             "calls in %g layer-passes", k->strategy, d, pass, name,
                             c->layers_all.calls[kd], lp);
                cr_expect_eq(c->moe[0].calls[kd], w.dispatch * lp, "%s device %d %s %s dispatch",
                             k->strategy, d, pass, name);
                cr_expect_eq(c->moe[1].calls[kd], w.combine * lp, "%s device %d %s %s combine",
                             k->strategy, d, pass, name);
                cr_expect_eq(c->pass.calls[kd] - c->layers_all.calls[kd], wo.calls * passes,
                             "%s device %d %s %s outside the layers", k->strategy, d, pass, name);
            }
        }
    run_free(&x, &o);
    wl_free(&wl);
}

/* ---- replay records that do not fit the run */

/* Save rec (shape [L, 1, P, 2]) to a temporary file; spec gets "replay:PATH". */
static void save_record(const int *rec, int L, int P, char *path, char *spec, size_t n)
{
    snprintf(path, 64, "/tmp/moemu-route-XXXXXX");
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    cr_assert_eq(route_save(path, rec, L, 1, P, 2), MOEMU_OK, "%s", moemu_errmsg());
    snprintf(spec, n, "replay:%s", path);
}

/* route_open's message on rec (2 layers, 1 sequence, 2 positions, top-2
 * of 4 experts) */
static void replay_error(const int *rec, int L, const char *want_fmt)
{
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "2", 1);
    char path[64], spec[96], want[512];
    save_record(rec, L, 2, path, spec, sizeof spec);
    route_src_t r;
    cr_assert_neq(route_open(&r, spec, &cfg, &wl, 1), MOEMU_OK);
    snprintf(want, sizeof want, want_fmt, spec, path);
    cr_expect_str_eq(moemu_errmsg(), want);
    unlink(path);
    wl_free(&wl);
}

Test(routing, replay_names_what_does_not_fit)
{
    int rec[8] = {0, 1, 2, 3, 1, 8, 0, 2};
    replay_error(rec, 2, "routing '%s': expert 8 in a model of 4");
    /* the file's own message once, behind one prefix */
    replay_error(rec, 1, "routing '%s': tensor 'routing' in %s has shape [1, 1, 2, 2], "
                         "expected [2, 1, 2, 2] (replay a record of the same model and "
                         "workload)");
}

Test(routing, replay_refuses_a_repeated_expert)
{
    int twice[8] = {0, 1, 2, 3, 1, 0, 2, 2};
    replay_error(twice, 2, "routing '%s': layer 1, sequence 0, position 1 chooses expert 2 "
                           "twice");
    /* a dropped assignment (-1 - e) still names expert e */
    int dropped[8] = {0, 1, 2, -1 - 2, 1, 0, 2, 3};
    replay_error(dropped, 2, "routing '%s': layer 0, sequence 0, position 1 chooses expert 2 "
                             "twice");
}

/* A token has its k choices or none: with one missing, the stand-in
 * (expert j for choice j) repeated expert 1 (found by the routing fuzz
 * harness). A token with none (a position never routed) is kept. */
Test(routing, replay_refuses_a_token_half_routed)
{
    int half[8] = {0, 1, 1, INT32_MIN, 1, 0, 2, 3};
    replay_error(half, 2, "routing '%s': layer 0, sequence 0, position 1 has 1 of its 2 "
                          "choices");
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "2", 1);
    int none[8] = {0, 1, INT32_MIN, INT32_MIN, 1, 0, 2, 3};
    char path[64], spec[96];
    save_record(none, 2, 2, path, spec, sizeof spec);
    route_src_t r;
    cr_assert_eq(route_open(&r, spec, &cfg, &wl, 1), MOEMU_OK, "%s", moemu_errmsg());
    int idx[2];
    route_choose(&r, 0, 0, 1, idx);
    cr_assert(idx[0] == 0 && idx[1] == 1, "stand-ins %d, %d", idx[0], idx[1]);
    route_close(&r);
    unlink(path);
    wl_free(&wl);
}

/* route_choose_rows remembers its last draws: the same rows again give
 * the same choices, which are route_choose's; other rows of the same count
 * and layer, or another layer, are drawn anew, not taken from the memo. */
Test(routing, rows_memo_is_exact)
{
    cfg_model_t cfg;
    small_cfg(&cfg, 2, 0);
    wl_t wl;
    make_wl(&wl, &cfg, "60,60", 2);
    const char *specs[] = {"uniform", "zipf:1"};
    for (int s = 0; s < 2; s++) {
        route_src_t r;
        cr_assert_eq(route_open(&r, specs[s], &cfg, &wl, 3), MOEMU_OK, "%s", moemu_errmsg());
        int n = 120, k = r.k, seq[120], pos[120], a[240], b[240], c[240], one[8];
        for (int i = 0; i < n; i++) seq[i] = i % 2, pos[i] = i / 2;
        route_choose_rows(&r, 1, seq, pos, n, a);
        route_choose_rows(&r, 1, seq, pos, n, b); /* from the memo */
        cr_assert_eq(memcmp(a, b, sizeof(int) * (size_t)n * k), 0, "%s", specs[s]);
        for (int i = 0; i < n; i++) {
            route_choose(&r, 1, seq[i], pos[i], one);
            cr_assert_eq(memcmp(one, a + i * k, sizeof(int) * k), 0, "%s row %d", specs[s], i);
        }
        pos[n - 1] += 1; /* one row differs: drawn anew */
        route_choose_rows(&r, 1, seq, pos, n, c);
        route_choose(&r, 1, seq[n - 1], pos[n - 1], one);
        cr_assert_eq(memcmp(one, c + (n - 1) * k, sizeof(int) * k), 0, "%s", specs[s]);
        route_choose_rows(&r, 0, seq, pos, n, c); /* another layer */
        for (int i = 0; i < n; i++) {
            route_choose(&r, 0, seq[i], pos[i], one);
            cr_assert_eq(memcmp(one, c + i * k, sizeof(int) * k), 0, "%s layer 0 row %d",
                         specs[s], i);
        }
        route_close(&r);
    }
    wl_free(&wl);
}
