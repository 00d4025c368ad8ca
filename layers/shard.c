/* Sharded forms: row collectives with padding, the merge of partial
 * attention, capacity over a routing group spread across devices, and the
 * expert-parallel dispatch (Megatron-Core's all-to-all token dispatcher:
 * counts, then rows, over the EP group; all-gather and reduce-scatter over
 * the ETP group; DeepEP's low-latency mode is it with the counts in band;
 * Megatron's all-gather dispatcher and DeepEP's normal mode). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

static int comm_size(par_comm_t *comm) { return comm ? par_comm_size(comm) : 1; }

static int max_count(const int *counts, int p)
{
    int m = 0;
    for (int q = 0; q < p; q++) m = counts[q] > m ? counts[q] : m;
    return m;
}

static bool same_counts(const int *counts, int p)
{
    for (int q = 1; q < p; q++)
        if (counts[q] != counts[0]) return false;
    return true;
}

static moemu_status_t nomem(size_t bytes, const char *what)
{
    return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %zu bytes for %s", bytes, what);
}

/* Padded all-gather of rows of width elements of 4 bytes on the host
 * (floats counted in dt, or int32 when dt is EMU_DTYPE_INT32). */
static moemu_status_t gather_rows(layer_ctx_t *c, void *out, const void *in,
                                  const int *counts, int width, emu_dtype_t dt,
                                  par_comm_t *comm)
{
    int p = comm_size(comm);
    if (p == 1) {
        if ((c->math || dt == EMU_DTYPE_INT32) && out != in && counts[0] > 0)
            memmove(out, in, 4 * (size_t)counts[0] * width);
        return MOEMU_OK;
    }
    int me = par_comm_rank(comm, c->dev);
    size_t n = (size_t)max_count(counts, p) * width;
    if (n == 0) return MOEMU_OK;
    float *buf;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_COMM, 4 * n * (p + 1),
                          (double)(n * (p + 1)) * emu_dtype_bytes(dt), (void **)&buf));
    float *send = buf + n * p;
    /* int32 rows are metadata (routing, counts): they travel even when the
     * math is skipped */
    bool data = c->math || dt == EMU_DTYPE_INT32;
    if (data && !c->math && same_counts(counts, p)) {
        /* no padding, and a no-data buffer only counts: straight from in
         * to out (in place when in is our block of out) */
        moemu_status_t st = par_allgather(in, out, n, dt, comm, c->dev);
        emu_free(c->dev, EMU_MEM_COMM, buf, (double)(n * (p + 1)) * emu_dtype_bytes(dt));
        return st;
    }
    if (data) memcpy(send, in, 4 * (size_t)counts[me] * width);
    moemu_status_t st = par_allgather(send, buf, n, dt, comm, c->dev);
    if (st == MOEMU_OK && data) {
        char *o = out;
        for (int q = 0; q < p; q++) {
            memcpy(o, buf + n * q, 4 * (size_t)counts[q] * width);
            o += 4 * (size_t)counts[q] * width;
        }
    }
    emu_free(c->dev, EMU_MEM_COMM, buf, (double)(n * (p + 1)) * emu_dtype_bytes(dt));
    return st;
}

moemu_status_t layer_gather_rows(layer_ctx_t *c, float *out, const float *in,
                                 const int *counts, int width, par_comm_t *comm)
{
    return gather_rows(c, out, in, counts, width, c->dtype, comm);
}

moemu_status_t layer_reduce_scatter_rows(layer_ctx_t *c, float *out,
                                         const float *in, const int *counts,
                                         int width, par_comm_t *comm)
{
    int p = comm_size(comm);
    if (p == 1) {
        if (c->math && out != in && counts[0] > 0)
            memmove(out, in, sizeof(float) * (size_t)counts[0] * width);
        return MOEMU_OK;
    }
    int me = par_comm_rank(comm, c->dev);
    size_t n = (size_t)max_count(counts, p) * width;
    if (n == 0) return MOEMU_OK;
    double dev_bytes = (double)(n * (p + 1)) * emu_dtype_size(c->dtype);
    float *buf;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_COMM, sizeof(float) * n * (p + 1), dev_bytes,
                          (void **)&buf));
    float *recv = buf + n * p;
    if (c->math) {
        const float *i = in;
        for (int q = 0; q < p; q++) {
            memcpy(buf + n * q, i, sizeof(float) * (size_t)counts[q] * width);
            i += (size_t)counts[q] * width;
        }
    }
    moemu_status_t st = par_reduce_scatter(buf, recv, n, c->dtype, PAR_OP_SUM, comm, c->dev);
    if (st == MOEMU_OK && c->math)
        memcpy(out, recv, sizeof(float) * (size_t)counts[me] * width);
    emu_free(c->dev, EMU_MEM_COMM, buf, dev_bytes);
    return st;
}

moemu_status_t layer_allreduce(layer_ctx_t *c, float *buf, int64_t n, par_comm_t *comm)
{
    if (comm_size(comm) == 1 || n == 0) return MOEMU_OK;
    return par_allreduce(buf, buf, (size_t)n, c->dtype, PAR_OP_SUM, comm, c->dev);
}

void layer_attention_merge(layer_ctx_t *c, float *out, float *lse_out, const float *parts,
                           const float *lse, int n, int T, int H, int hd)
{
    int64_t rows = (int64_t)T * H;
    double s = (double)emu_dtype_size(c->dtype);
    emu_charge(c->dev, EMU_KERNEL_ATTN, (double)n * rows * (2.0 * hd + 4.0),
               s * ((double)n * rows * hd + (double)rows * hd) + 4.0 * n * rows);
    if (!c->math) return;
    for (int64_t r = 0; r < rows; r++) {
        float m = -INFINITY;
        for (int i = 0; i < n; i++) m = lse[i * rows + r] > m ? lse[i * rows + r] : m;
        float *o = out + r * hd;
        memset(o, 0, sizeof(float) * hd);
        if (lse_out) lse_out[r] = m;
        if (m == -INFINITY) continue; /* no part saw a key */
        float sum = 0.0f;
        for (int i = 0; i < n; i++) {
            float l = lse[i * rows + r];
            if (l == -INFINITY) continue;
            float wgt = layer_exp(l - m);
            sum += wgt;
            const float *pi = parts + ((int64_t)i * rows + r) * hd;
            for (int e = 0; e < hd; e++) o[e] += wgt * pi[e];
        }
        for (int e = 0; e < hd; e++) o[e] /= sum;
        if (lse_out) lse_out[r] = m + logf(sum);
    }
}

/* cnt (E) = the assignments of each expert among idx (n). Four
 * histograms, summed at the end: consecutive counts of one expert do not
 * wait on each other. */
static moemu_status_t count_experts(const int *idx, size_t n, int E, int *cnt)
{
    int small[4 * 64], *h = E <= 64 ? small : calloc(4 * (size_t)E, sizeof *h);
    if (!h) return nomem(sizeof(int) * 4 * (size_t)E, "the counts of the experts");
    if (h == small) memset(small, 0, sizeof(int) * 4 * (size_t)E);
    size_t a = 0;
    for (; a + 4 <= n; a += 4)
        for (int q = 0; q < 4; q++) h[(size_t)q * E + idx[a + q]]++;
    for (; a < n; a++) h[idx[a]]++;
    for (int e = 0; e < E; e++) cnt[e] = h[e] + h[E + e] + h[2 * E + e] + h[3 * E + e];
    if (h != small) free(h);
    return MOEMU_OK;
}

/* The group's decisions gathered: every member's rows (padded to the
 * largest count, n ints), then the counts of its own choices per expert
 * (E), which ride along uncharged so that each member counts its own
 * rows only. *holds: no expert receives more than cap of the group's
 * assignments (then capacity keeps every one, in any order, and the
 * group's order need not be built: a large prefill group seldom fills an
 * expert); otherwise *all (the caller frees it) holds the decisions in
 * member order. */
static moemu_status_t gather_decisions(layer_ctx_t *c, int **all, bool *holds, const int *idx,
                                       const int *counts, int k, int E, int64_t cap,
                                       par_comm_t *comm)
{
    int p = comm_size(comm), me = par_comm_rank(comm, c->dev);
    size_t n = (size_t)max_count(counts, p) * k, blk = n + (size_t)E;
    *holds = true;
    if (n == 0) return MOEMU_OK; /* no member has a row: no gather */
    double dev_bytes = (double)(n * (p + 1)) * emu_dtype_bytes(EMU_DTYPE_INT32);
    int *buf;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_COMM, sizeof(int) * blk * (p + 1), dev_bytes,
                          (void **)&buf));
    int *send = buf + blk * p;
    size_t mine = (size_t)counts[me] * k;
    memcpy(send, idx, sizeof(int) * mine);
    moemu_status_t st = count_experts(idx, mine, E, send + n);
    if (st == MOEMU_OK)
        st = par_allgather_charged(send, buf, blk, n, EMU_DTYPE_INT32, comm, c->dev);
    for (int e = 0; e < E && st == MOEMU_OK && *holds; e++) {
        int64_t t = 0;
        for (int q = 0; q < p; q++) t += buf[blk * q + n + e];
        *holds = t <= cap;
    }
    if (st == MOEMU_OK && !*holds && !(*all = malloc(sizeof(int) * (n * p + 1))))
        st = nomem(sizeof(int) * n * p, "the routing decisions of a group");
    for (int q = 0, *o = *all; st == MOEMU_OK && !*holds && q < p; q++) {
        memcpy(o, buf + blk * q, sizeof(int) * (size_t)counts[q] * k);
        o += (size_t)counts[q] * k;
    }
    emu_free(c->dev, EMU_MEM_COMM, buf, dev_bytes);
    return st;
}

/* The ordered pass: the group's decisions dec (members' rows in member
 * order) into group order, the first cap choices of each expert kept;
 * member me's flags into keep, its drops counted. */
static moemu_status_t capacity_ordered(uint8_t *keep, int64_t *dropped, const int *dec, int n,
                                       const int *counts, const int *gpos, int T, int k,
                                       int E, int64_t cap, int me)
{
    size_t all_n = (size_t)T * k;
    int *group = malloc(sizeof(int) * (all_n + 1));
    uint8_t *kall = malloc(all_n + 1);
    if (!group || !kall) {
        free(group);
        free(kall);
        return nomem((sizeof(int) + 1) * all_n, "the routing decisions of a group");
    }
    for (int64_t j = 0; j < T; j++) /* k is small: no memcpy call per token */
        for (int s = 0; s < k; s++) group[(int64_t)gpos[j] * k + s] = dec[j * k + s];
    layer_apply_capacity(kall, NULL, group, T, k, E, cap);
    int64_t off = 0;
    for (int q = 0; q < me; q++) off += counts[q];
    for (int j = 0; j < n; j++)
        for (int s = 0; s < k; s++) {
            keep[j * k + s] = kall[(int64_t)gpos[off + j] * k + s];
            *dropped += !keep[j * k + s];
        }
    free(group);
    free(kall);
    return MOEMU_OK;
}

moemu_status_t layer_capacity_group(layer_ctx_t *c, uint8_t *keep,
                                    int64_t *dropped, const int *idx, int n,
                                    const int *counts, const int *gpos, int T,
                                    int k, int E, double cf, par_comm_t *comm)
{
    *dropped = 0;
    if (cf <= 0.0) { /* dropless: nothing to agree on */
        memset(keep, 1, (size_t)n * k);
        return MOEMU_OK;
    }
    int p = comm_size(comm), me = comm ? par_comm_rank(comm, c->dev) : 0;
    int64_t total = 0;
    for (int q = 0; q < p; q++) total += counts[q];
    if (total != T || counts[me] != n)
        return moemu_fail(MOEMU_ERR_INTERNAL, "routing group of %d tokens split into %lld",
                          T, (long long)total);
    size_t all_n = (size_t)T * k;
    int64_t cap = layer_capacity(cf, T, k, E);
    int *all = NULL;
    bool holds = (int64_t)all_n <= cap;
    moemu_status_t st = MOEMU_OK;
    if (p > 1) {
        st = gather_decisions(c, &all, &holds, idx, counts, k, E, cap, comm);
    } else if (!holds) { /* a group of one holds its decisions already */
        int cnt[E];
        st = count_experts(idx, all_n, E, cnt);
        holds = true;
        for (int e = 0; e < E && holds; e++) holds = cnt[e] <= cap;
    }
    if (st == MOEMU_OK && holds)
        memset(keep, 1, (size_t)n * k); /* what the ordered pass would find */
    else if (st == MOEMU_OK) /* routing is metadata: decided in dry runs too */
        st = capacity_ordered(keep, dropped, p > 1 ? all : idx, n, counts, gpos, T, k, E, cap,
                              me);
    emu_charge(c->dev, EMU_KERNEL_ROUTER, (double)all_n, 8.0 * (double)all_n);
    free(all);
    return st;
}

/* ---- Expert parallelism */

/* One call's dispatch (Megatron-Core's all-to-all token dispatcher). */
typedef struct {
    layer_ctx_t *c;
    const layer_shard_t *s;
    const layer_experts_t *ex;
    int n, EP, ETP, Eper;
    double sz;
    int *order;    /* (nsend) my kept choices a = row * k + slot, by expert */
    int *sendc;    /* (E) kept choices per expert, i.e. per (EP rank, local) */
    int *recvc;    /* (EP * Eper) rows from source q for local expert j */
    int *lists_c;  /* (ETP * EP * Eper) recvc of every ETP member */
    int *lcount;   /* (ETP) rows of each ETP member's list */
    size_t *scnt, *sdsp, *rcnt, *rdsp; /* (EP) all-to-all counts, in floats; scnt
                                        * heads the block of the arrays above */
    int64_t nsend, nrecv, nlist;
    size_t sb, rb, lb;
    /* local: no EP or ETP group, so the exchanges would be copies onto
     * themselves: the buffers alias instead (their device bytes are
     * counted all the same, as a real implementation holds them) */
    bool local, ret_held;
    float *sendbuf, *recvbuf, *lists, *outl, *ret;
    void *lists_mem;
    const layer_beside_t *beside; /* work while the rows travel, or NULL */
    /* DeepEP's low-latency mode: the counts in band, the send, receive
     * and return buffers inside one of ll_bytes (ll_buffer_bytes) */
    bool ll;
    double ll_bytes;
} moe_plan_t;
/* The dispatch's rows travel in FP8 where the context says so (counted so;
 * the values are the dtype's), the combine's in the dtype. */
static emu_dtype_t dispatch_dtype(const layer_ctx_t *c)
{
    return c->dispatch_fp8 ? EMU_DTYPE_FP8 : c->dtype;
}

static moemu_status_t alltoallv(layer_ctx_t *c, const float *send, const size_t *scnt,
                                const size_t *sdsp, float *recv, const size_t *rcnt,
                                const size_t *rdsp, emu_dtype_t dt, par_comm_t *comm)
{
    if (!comm) {
        if (c->math && scnt[0]) memcpy(recv + rdsp[0], send + sdsp[0], sizeof(float) * scnt[0]);
        return MOEMU_OK;
    }
    return par_alltoallv(send, scnt, sdsp, recv, rcnt, rdsp, dt, comm, c->dev);
}

/* Where each expert's rows are in lists of counts lc (nlists * EP blocks
 * of Eper experts, in (list, source, expert) order): at (ntot) receives,
 * expert after expert, the row of each. */
static void expert_order(int64_t *at, const int *lc, int nlists, int EP, int Eper)
{
    int64_t ne = 0;
    for (int j = 0; j < Eper; j++)
        for (int64_t i = 0, base = 0; i < nlists * EP; i++) {
            const int *li = lc + (size_t)i * Eper;
            int64_t off = base;
            for (int jj = 0; jj < j; jj++) off += li[jj];
            for (int r = 0; r < li[j]; r++) at[ne++] = off + r;
            for (int jj = 0; jj < Eper; jj++) base += li[jj];
        }
}

/* Expert e's job on this member's intermediate slice [f0, f1): its
 * weights' rows (or gpt-oss's columns) and biases. */
static layer_expert_job_t expert_job(const layer_experts_t *ex, int e, float *out,
                                     const float *x, int n)
{
    size_t f0 = (size_t)ex->f0, d = (size_t)ex->d;
    if (ex->act == LAYER_ACT_SWIGLU_OAI)
        return (layer_expert_job_t){
            .out = out, .x = x, .w1 = ex->w1[e] + 2 * f0, .w2 = ex->w2[e] + f0 * d,
            .b13 = ex->b13 ? ex->b13[e] + 2 * f0 : NULL,
            .b2 = ex->b2 && f0 == 0 ? ex->b2[e] : NULL, .n = n};
    return (layer_expert_job_t){.out = out, .x = x, .w1 = ex->w1[e] + f0 * d,
                                .w3 = ex->w3 ? ex->w3[e] + f0 * d : NULL,
                                .w2 = ex->w2[e] + f0, .n = n};
}

/* Local experts whose jobs fit on the stack (a dry run asks per layer). */
#define LAYER_JOBS_SMALL 32

/* Run the local experts over the ETP members' lists: rows (ntot, d) made of
 * list i's rows (counts lc[i * EP * Eper + q * Eper + j] for source q and
 * expert j, in (q, j) order). out (ntot, d) gets each row's partial output
 * on this member's intermediate slice. Rows from several lists or sources
 * are gathered in expert order first (and scattered back), as a grouped
 * GEMM needs; rows from one source already are in that order, so a device
 * without expert parallelism pays no permutation of its own. */
static moemu_status_t run_experts(layer_ctx_t *c, float *out, const float *rows,
                                  const int *lc, int nlists, int EP, int Eper,
                                  const layer_experts_t *ex)
{
    int d = ex->d, Floc = ex->f1 - ex->f0;
    bool sorted = nlists * EP == 1, move = c->math && !sorted; /* gathered and scattered */
    layer_expert_job_t small[LAYER_JOBS_SMALL];
    layer_expert_job_t *jobs = Eper <= LAYER_JOBS_SMALL ? small : calloc((size_t)Eper, sizeof *jobs);
    if (!jobs) return nomem(sizeof *jobs * (size_t)Eper, "the experts' jobs");
    if (jobs == small) memset(small, 0, sizeof *jobs * (size_t)Eper);
    int64_t ntot = 0, maxe = 0;
    for (int j = 0; j < Eper; j++) {
        int64_t ne = 0;
        for (int i = 0; i < nlists * EP; i++) ne += lc[i * Eper + j];
        jobs[j].n = (int)ne;
        ntot += ne;
        maxe = ne > maxe ? ne : maxe;
    }
    if (ntot == 0) {
        if (jobs != small) free(jobs);
        return MOEMU_OK;
    }
    /* the rows on the host only when the math runs: a dry run needs counts */
    size_t nrows = sorted ? 0 : 2 * (size_t)ntot * d;
    size_t nf = c->math ? nrows + 2 * (size_t)maxe * Floc : 0;
    float *buf = c->math ? malloc(sizeof(float) * nf) : NULL;
    int64_t *at = move ? malloc(sizeof(int64_t) * (size_t)ntot) : NULL; /* where each goes */
    if ((c->math && !buf) || (move && !at)) {
        free(buf);
        free(at);
        if (jobs != small) free(jobs);
        return nomem(sizeof(float) * nf, "the experts' rows");
    }
    float *h = buf ? buf + nrows : NULL;
    float *xe = sorted ? (float *)rows : buf, *ye = sorted ? out : buf ? buf + (size_t)ntot * d : NULL;
    if (move) expert_order(at, lc, nlists, EP, Eper);
    double sz = (double)emu_dtype_size(c->dtype);
    if (move)
        for (int64_t r = 0; r < ntot; r++) memcpy(xe + r * d, rows + at[r] * d, sizeof(float) * d);
    if (!sorted) emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * sz * (double)ntot * d);
    int64_t first = 0;
    for (int j = 0; j < Eper && c->math; first += jobs[j++].n)
        jobs[j] = expert_job(ex, ex->e0 + j, ye + first * d, xe + first * d, jobs[j].n);
    layer_expert_group(c, jobs, Eper, h, d, Floc, ex->F, ex->act, ex->limit, false);
    if (move)
        for (int64_t r = 0; r < ntot; r++) memcpy(out + at[r] * d, ye + r * d, sizeof(float) * d);
    if (!sorted) emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * sz * (double)ntot * d);
    free(buf);
    free(at);
    if (jobs != small) free(jobs);
    return MOEMU_OK;
}

void layer_xfer_now(layer_xfer_t *x, const emu_dev_t *dev)
{
    x->time = emu_dev_comm_time(dev) + emu_dev_idle_time(dev);
    for (int k = 0; k < EMU_COLL__COUNT; k++) {
        emu_comm_stats_t s = emu_dev_comm_kind(dev, k);
        x->calls[k] = (double)s.calls;
        x->bytes[k] = s.bytes;
    }
}

void layer_xfer_add(layer_xfer_t *acc, const layer_xfer_t *t0, const layer_xfer_t *t1)
{
    acc->time += t1->time - t0->time;
    for (int k = 0; k < EMU_COLL__COUNT; k++) {
        acc->calls[k] += t1->calls[k] - t0->calls[k];
        acc->bytes[k] += t1->bytes[k] - t0->bytes[k];
    }
}

void layer_xfer_since(layer_xfer_t *acc, const layer_xfer_t *t0, const emu_dev_t *dev)
{
    layer_xfer_t t1;
    layer_xfer_now(&t1, dev);
    layer_xfer_add(acc, t0, &t1);
}

/* What the collectives since t0 took and issued, added to the experts'
 * xfer[i]: what the report splits into dispatch and combine, apart from
 * the kernels around them. */
static void xfer_add(const moe_plan_t *m, int i, const layer_xfer_t *t0)
{
    if (m->ex->xfer) layer_xfer_since(&m->ex->xfer[i], t0, m->c->dev);
}

/* The collectives issued between in_flight and landed go asynchronously
 * when m->beside has work for their wait (emu.h, "Streams"): fn for the
 * dispatch (i = 0), back for the combine (1). landed counts them from t0
 * as the dispatch or the combine, runs that work while they travel and
 * makes the compute stream wait for them, not for what the work issued
 * (another lane's). Returns st, or the work's failure. */
static moemu_status_t (*beside_work(const moe_plan_t *m, int i))(void *)
{
    return !m->beside ? NULL : i == 0 ? m->beside->fn : m->beside->back;
}

static void in_flight(const moe_plan_t *m, int i)
{
    emu_dev_set_async(m->c->dev, beside_work(m, i) != NULL);
}

static moemu_status_t landed(moe_plan_t *m, int i, moemu_status_t st, const layer_xfer_t *t0)
{
    emu_dev_t *dev = m->c->dev;
    moemu_status_t (*work)(void *) = beside_work(m, i);
    emu_dev_set_async(dev, false);
    uint64_t mark = emu_dev_comm_mark(dev);
    xfer_add(m, i, t0);
    if (st == MOEMU_OK && work) st = work(m->beside->arg);
    emu_dev_comm_wait_mark(dev, mark);
    return st;
}

/* 1. my kept choices by expert: a counting sort, stable in (row, slot);
 * the choices are metadata, planned even when math is skipped. The plan's
 * arrays share one block (m->scnt's), the counts zeroed, the order not:
 * a dry run plans every layer of every pass. */
static moemu_status_t plan_sends(moe_plan_t *m, const int *idx, const uint8_t *keep)
{
    int E = m->ex->E, k = m->ex->k, EP = m->EP, n = m->n;
    size_t nsc = 4 * (size_t)EP, nrc = (size_t)EP * m->Eper, nlc = (size_t)m->ETP * nrc;
    size_t nint = (size_t)E + 1 + nrc + 1 + nlc + 1 + (size_t)m->ETP + (size_t)E + 1;
    size_t zeroed = sizeof(size_t) * nsc + sizeof(int) * nint;
    size_t bytes = zeroed + sizeof(int) * ((size_t)n * k + 1);
    if (!(m->scnt = malloc(bytes))) return nomem(bytes, "the dispatch plan");
    memset(m->scnt, 0, zeroed);
    m->sdsp = m->scnt + EP;
    m->rcnt = m->sdsp + EP;
    m->rdsp = m->rcnt + EP;
    m->sendc = (int *)(m->scnt + nsc);
    m->recvc = m->sendc + E + 1;
    m->lists_c = m->recvc + nrc + 1;
    m->lcount = m->lists_c + nlc + 1;
    int *next = m->lcount + m->ETP;
    m->order = next + E + 1;
    for (int64_t a = 0; a < (int64_t)n * k; a++) m->sendc[idx[a]] += keep[a];
    /* the order only moves rows: a dry run needs the counts alone */
    next[0] = 0;
    for (int e = 0; e < E; e++) next[e + 1] = next[e] + m->sendc[e];
    if (m->c->math)
        for (int64_t a = 0; a < (int64_t)n * k; a++)
            if (keep[a]) m->order[next[idx[a]]++] = (int)a;
    for (int e = 0; e < E; e++) m->nsend += m->sendc[e];
    return MOEMU_OK;
}

/* 2. counts per (peer, local expert) over the EP group */
static moemu_status_t send_counts(moe_plan_t *m)
{
    if (m->s->ep)
        MOEMU_CHECK(par_alltoall(m->sendc, m->recvc, (size_t)m->Eper, EMU_DTYPE_INT32, m->s->ep,
                                 m->c->dev));
    else
        memcpy(m->recvc, m->sendc, sizeof(int) * (size_t)m->ex->E);
    for (int i = 0; i < m->EP * m->Eper; i++) m->nrecv += m->recvc[i];
    return MOEMU_OK;
}

/* DeepEP's low-latency buffer (LowLatencyLayout, csrc/legacy/config.hpp):
 * send, receive and signal buffers, each twice (odd and even calls), for
 * at most T tokens a rank, hidden d and E experts; a dispatch message is
 * a row in the dtype (sz bytes a value; or FP8 and its scales) after a
 * 16-byte header, a combine message a row and its 128-value groups' 4
 * bytes. Held by every EP member, whatever it receives. */
static double ll_buffer_bytes(double T, double d, double E, double sz)
{
    double groups = ceil(d / 128), dmsg = 16 + fmax(sz * d, d + 4 * groups),
           cmsg = 4 * groups + sz * d;
    double send = fmax(T * dmsg, E * T * cmsg), recv = E * T * fmax(dmsg, cmsg);
    return 2 * (send + recv + 128 * ceil(4 * E / 128));
}

/* 2, DeepEP's low-latency mode: the counts per (peer, local expert) come
 * in band with the rows (each expert's count signalled after its rows),
 * with each member's row count, which sizes the buffers: the most rows a
 * member dispatches in this call (an engine sizes them once, for its
 * largest batch) */
static moemu_status_t ll_counts(moe_plan_t *m)
{
    int EP = m->EP, Eper = m->Eper, B = Eper + 1, most = 0;
    int *snd = malloc(2 * sizeof(int) * (size_t)EP * B), *rcv = snd ? snd + EP * B : NULL;
    if (!snd) return nomem(2 * sizeof(int) * (size_t)EP * B, "the dispatch counts");
    for (int q = 0; q < EP; q++) {
        memcpy(snd + q * B, m->sendc + q * Eper, sizeof(int) * (size_t)Eper);
        snd[q * B + Eper] = m->n;
    }
    moemu_status_t st = par_alltoall_inband(snd, rcv, (size_t)B, EMU_DTYPE_INT32, m->s->ep,
                                            m->c->dev);
    for (int q = 0; st == MOEMU_OK && q < EP; q++) {
        memcpy(m->recvc + q * Eper, rcv + q * B, sizeof(int) * (size_t)Eper);
        for (int j = 0; j < Eper; j++) m->nrecv += rcv[q * B + j];
        most = rcv[q * B + Eper] > most ? rcv[q * B + Eper] : most;
    }
    free(snd);
    /* two lanes in flight at once use its two halves (DeepEP's odd and
     * even calls, there for two-batch overlap): half each */
    m->ll_bytes = ll_buffer_bytes(most, m->ex->d, m->ex->E, m->sz) /
                  (emu_dev_in_lanes(m->c->dev) ? 2 : 1);
    return st;
}

/* The device bytes of the rows' send and receive buffers, and of the
 * returned outputs' */
static double send_dev_bytes(const moe_plan_t *m)
{
    return m->ll ? m->ll_bytes : m->sz * (double)(m->sb + m->rb);
}

static double ret_dev_bytes(const moe_plan_t *m) { return m->ll ? 0 : m->sz * (double)m->sb; }

/* 3. rows, grouped by destination then expert */
static moemu_status_t send_rows(moe_plan_t *m, const float *x)
{
    layer_ctx_t *c = m->c;
    int d = m->ex->d, k = m->ex->k;
    m->sb = (size_t)m->nsend * d;
    m->rb = (size_t)m->nrecv * d;
    size_t host = m->local ? m->sb : m->sb + m->rb;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_COMM, sizeof(float) * (host + 1), send_dev_bytes(m),
                          (void **)&m->sendbuf));
    m->recvbuf = m->local ? m->sendbuf : m->sendbuf + m->sb;
    if (c->math)
        for (int64_t i = 0; i < m->nsend; i++)
            memcpy(m->sendbuf + i * d, x + (int64_t)(m->order[i] / k) * d, sizeof(float) * d);
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * m->sz * (double)m->nsend * d);
    for (int q = 0; q < m->EP; q++) {
        size_t sc = 0, rc = 0;
        for (int j = 0; j < m->Eper; j++) {
            sc += (size_t)m->sendc[q * m->Eper + j];
            rc += (size_t)m->recvc[q * m->Eper + j];
        }
        m->scnt[q] = sc * d;
        m->rcnt[q] = rc * d;
        m->sdsp[q] = q ? m->sdsp[q - 1] + m->scnt[q - 1] : 0;
        m->rdsp[q] = q ? m->rdsp[q - 1] + m->rcnt[q - 1] : 0;
    }
    if (m->local) return MOEMU_OK;
    return alltoallv(c, m->sendbuf, m->scnt, m->sdsp, m->recvbuf, m->rcnt, m->rdsp,
                     dispatch_dtype(c), m->s->ep);
}

/* 4. every ETP member's rows for these experts, and the load they make */
static moemu_status_t gather_lists(moe_plan_t *m)
{
    layer_ctx_t *c = m->c;
    int ETP = m->ETP, EPE = m->EP * m->Eper, d = m->ex->d;
    if (ETP > 1) {
        int ones[ETP];
        for (int i = 0; i < ETP; i++) ones[i] = 1;
        MOEMU_CHECK(gather_rows(c, m->lists_c, m->recvc, ones, EPE, EMU_DTYPE_INT32, m->s->etp));
    } else {
        memcpy(m->lists_c, m->recvc, sizeof(int) * (size_t)EPE);
    }
    for (int i = 0; i < ETP; i++) {
        m->lcount[i] = 0;
        for (int j = 0; j < EPE; j++) m->lcount[i] += m->lists_c[i * EPE + j];
        m->nlist += m->lcount[i];
    }
    const layer_experts_t *ex = m->ex;
    if (ex->load && m->s->etp_rank == 0) /* the ETP members share these rows */
        for (int i = 0; i < ETP * m->EP; i++)
            for (int j = 0; j < m->Eper; j++) ex->load[ex->e0 + j] += m->lists_c[i * m->Eper + j];
    m->lb = (size_t)m->nlist * d;
    size_t host = m->local ? m->lb : 2 * m->lb;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_ACT, sizeof(float) * (host + 1),
                          2.0 * m->sz * (double)m->lb, &m->lists_mem));
    m->outl = m->lists_mem;
    m->lists = m->local ? m->recvbuf : m->outl + m->lb;
    if (m->local) return MOEMU_OK;
    return gather_rows(c, m->lists, m->recvbuf, m->lcount, d, dispatch_dtype(c), m->s->etp);
}

/* 5-7. the experts on this member's slice, the partial outputs summed over
 * the ETP group and sent back to the sources in the order they sent */
static moemu_status_t compute_and_return(moe_plan_t *m)
{
    layer_ctx_t *c = m->c;
    int d = m->ex->d;
    MOEMU_CHECK(run_experts(c, m->outl, m->lists, m->lists_c, m->ETP, m->EP, m->Eper, m->ex));
    layer_xfer_t t0;
    layer_xfer_now(&t0, c->dev);
    if (m->local) { /* the outputs already are in the order the rows were sent */
        MOEMU_CHECK(emu_mem_reserve(c->dev, EMU_MEM_COMM, m->sz * (double)m->sb));
        m->ret_held = true;
        m->ret = m->outl;
        return MOEMU_OK;
    }
    MOEMU_CHECK(layer_reduce_scatter_rows(c, m->recvbuf, m->outl, m->lcount, d, m->s->etp));
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_COMM, sizeof(float) * (m->sb + 1), ret_dev_bytes(m),
                          (void **)&m->ret));
    in_flight(m, 1);
    moemu_status_t st = alltoallv(c, m->recvbuf, m->rcnt, m->rdsp, m->ret, m->scnt, m->sdsp,
                                  c->dtype, m->s->ep);
    return landed(m, 1, st, &t0);
}

/* 8. combine in choice order; a dropped choice contributes 0 */
static moemu_status_t combine(moe_plan_t *m, float *routed, const float *w, const uint8_t *keep)
{
    layer_ctx_t *c = m->c;
    int d = m->ex->d, k = m->ex->k, n = m->n;
    if (c->math) {
        int64_t *slot_of = malloc(sizeof(int64_t) * ((size_t)n * k + 1));
        if (!slot_of) return nomem(sizeof(int64_t) * (size_t)n * k, "the combination");
        for (int64_t i = 0; i < m->nsend; i++) slot_of[m->order[i]] = i;
        for (int t = 0; t < n; t++) {
            float *o = routed + (int64_t)t * d;
            memset(o, 0, sizeof(float) * d);
            for (int j = 0; j < k; j++) {
                int64_t a = (int64_t)t * k + j;
                if (!keep[a]) continue;
                const float *y = m->ret + slot_of[a] * d;
                for (int i = 0; i < d; i++) o[i] += w[a] * y[i];
            }
        }
        free(slot_of);
    }
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 2.0 * n * k * d,
               m->sz * ((double)m->nsend * d + (double)n * d));
    return MOEMU_OK;
}

static void plan_free(moe_plan_t *m)
{
    emu_dev_t *dev = m->c->dev;
    if (m->ret_held) emu_mem_release(dev, EMU_MEM_COMM, m->sz * (double)m->sb);
    else if (m->ret) emu_free(dev, EMU_MEM_COMM, m->ret, ret_dev_bytes(m));
    if (m->lists_mem) emu_free(dev, EMU_MEM_ACT, m->lists_mem, 2.0 * m->sz * (double)m->lb);
    if (m->sendbuf) emu_free(dev, EMU_MEM_COMM, m->sendbuf, send_dev_bytes(m));
    free(m->scnt); /* and the plan's other arrays (plan_sends) */
}

/* The local choices' outputs out (nloc rows, in the order of
 * m->order[first...]) weighted into routed in choice order, as combine
 * does; a choice of another rank's expert contributes 0 here. */
static moemu_status_t combine_local(moe_plan_t *m, float *routed, const float *out,
                                    const float *w, int64_t first, int64_t nloc)
{
    layer_ctx_t *c = m->c;
    int d = m->ex->d, k = m->ex->k, n = m->n;
    if (c->math) {
        int64_t *slot_of = malloc(sizeof(int64_t) * ((size_t)n * k + 1));
        if (!slot_of) return nomem(sizeof(int64_t) * (size_t)n * k, "the combination");
        for (int64_t a = 0; a < (int64_t)n * k; a++) slot_of[a] = -1;
        for (int64_t i = 0; i < nloc; i++) slot_of[m->order[first + i]] = i;
        for (int t = 0; t < n; t++) {
            float *o = routed + (int64_t)t * d;
            memset(o, 0, sizeof(float) * d);
            for (int64_t a = (int64_t)t * k; a < (int64_t)(t + 1) * k; a++)
                for (int i = 0; slot_of[a] >= 0 && i < d; i++)
                    o[i] += w[a] * out[slot_of[a] * d + i];
        }
        free(slot_of);
    }
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 2.0 * (double)nloc * d,
               m->sz * ((double)nloc * d + (double)n * d));
    return MOEMU_OK;
}

/* This rank's experts [e0, e1) on its slice [f0, f1) for the kept choices
 * of all n rows that it holds, weighted into routed (zero where no local
 * expert was chosen): the rows replicated over TP, or gathered over EP. */
static moemu_status_t routed_local(moe_plan_t *m, float *routed, const float *x, const float *w)
{
    layer_ctx_t *c = m->c;
    const layer_experts_t *ex = m->ex;
    int d = ex->d, k = ex->k;
    int64_t first = 0, nloc = 0;
    for (int e = 0; e < ex->e0; e++) first += m->sendc[e];
    for (int e = ex->e0; e < ex->e1; e++) nloc += m->sendc[e];
    if (ex->load && m->s->etp_rank == 0)
        for (int e = ex->e0; e < ex->e1; e++) ex->load[e] += m->sendc[e];
    m->lb = (size_t)nloc * d;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_ACT, sizeof(float) * (2 * m->lb + 1),
                          2.0 * m->sz * (double)m->lb, &m->lists_mem));
    float *rows = m->lists_mem, *out = rows + m->lb;
    if (c->math)
        for (int64_t i = 0; i < nloc; i++)
            memcpy(rows + i * d, x + (int64_t)(m->order[first + i] / k) * d, sizeof(float) * d);
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * m->sz * (double)nloc * d);
    MOEMU_CHECK(run_experts(c, out, rows, m->sendc + ex->e0, 1, 1, ex->e1 - ex->e0, ex));
    return combine_local(m, routed, out, w, first, nloc);
}

/* Tokens replicated over the TP group (vLLM's and TensorRT-LLM's TP MoE):
 * the local experts on every row, then one all-reduce over TP: no
 * dispatch at all. */
static moemu_status_t routed_replicated(moe_plan_t *m, float *routed, const float *x,
                                        const float *w)
{
    MOEMU_CHECK(routed_local(m, routed, x, w));
    layer_xfer_t t0;
    layer_xfer_now(&t0, m->c->dev);
    moemu_status_t st = layer_allreduce(m->c, routed, (int64_t)m->n * m->ex->d, m->s->tp);
    xfer_add(m, 1, &t0);
    return st;
}

/* The all-gather dispatcher's buffers: the group's rows, choices and
 * weights, and their outputs. */
typedef struct {
    int *cnt;        /* (EP) rows of each member */
    int *idx;        /* (N * k) the group's choices, dropped ones as -1 - e */
    uint8_t *keep;   /* (N * k) */
    float *x, *w, *out; /* (N, d), (N * k), (N, d) */
    void *mem;
    double dev_bytes;
    int N;
} gathered_t;

/* Every member's rows, choices and weights, in rank order. */
static moemu_status_t gather_group(layer_ctx_t *c, const layer_shard_t *s, gathered_t *g,
                                   const float *x, const int *idx, const float *w,
                                   const uint8_t *keep, int n, int k, int d)
{
    int P = s->ep_size > 1 ? s->ep_size : 1, kc[P];
    for (int q = 0; q < P; q++) kc[q] = 1;
    MOEMU_CHECK(gather_rows(c, g->cnt, &n, kc, 1, EMU_DTYPE_INT32, s->ep));
    g->N = 0;
    for (int q = 0; q < P; q++) g->N += g->cnt[q], kc[q] = g->cnt[q] * k;
    size_t N = (size_t)g->N, host = 2 * N * d + N * k + 1;
    g->dev_bytes = 2.0 * (double)emu_dtype_size(c->dtype) * (double)N * d + 4.0 * (double)N * k;
    int *mine = malloc(sizeof(int) * ((size_t)n * k + 1));
    g->idx = malloc(sizeof(int) * (N * k + 1));
    g->keep = malloc(N * k + 1);
    if (!mine || !g->idx || !g->keep) {
        free(mine);
        return nomem(sizeof(int) * N * k, "the gathered choices");
    }
    moemu_status_t st = emu_alloc(c->dev, EMU_MEM_ACT, sizeof(float) * host, g->dev_bytes, &g->mem);
    for (int64_t a = 0; a < (int64_t)n * k; a++) mine[a] = keep[a] ? idx[a] : -1 - idx[a];
    if (st == MOEMU_OK) {
        g->x = g->mem;
        g->out = g->x + N * d;
        g->w = g->out + N * d;
        st = gather_rows(c, g->idx, mine, kc, 1, EMU_DTYPE_INT32, s->ep);
    }
    free(mine);
    if (st == MOEMU_OK) st = gather_rows(c, g->w, w, kc, 1, EMU_DTYPE_FP32, s->ep);
    if (st == MOEMU_OK) st = layer_gather_rows(c, g->x, x, g->cnt, d, s->ep);
    for (size_t a = 0; st == MOEMU_OK && a < N * k; a++) {
        g->keep[a] = g->idx[a] >= 0;
        if (g->idx[a] < 0) g->idx[a] = -1 - g->idx[a];
    }
    return st;
}

/* Megatron's all-gather dispatcher (emu_dispatcher_t): the EP group's rows
 * gathered, this member's experts on all of them, the outputs summed back
 * to their rows' members by a reduce-scatter: no all-to-all. */
static moemu_status_t routed_allgather(layer_ctx_t *c, const layer_shard_t *s, float *routed,
                                       const float *x, const int *idx, const float *w,
                                       const uint8_t *keep, int n, const layer_experts_t *ex)
{
    int cnt[s->ep_size];
    gathered_t g = {.cnt = cnt};
    layer_xfer_t t0;
    layer_xfer_now(&t0, c->dev);
    moe_plan_t m = {.c = c, .s = s, .ex = ex, .EP = 1, .ETP = 1, .Eper = ex->E,
                    .sz = (double)emu_dtype_size(c->dtype)};
    moemu_status_t st = gather_group(c, s, &g, x, idx, w, keep, n, ex->k, ex->d);
    m.n = g.N;
    xfer_add(&m, 0, &t0);
    if (st == MOEMU_OK) st = plan_sends(&m, g.idx, g.keep);
    if (st == MOEMU_OK) st = routed_local(&m, g.out, g.x, g.w);
    layer_xfer_now(&t0, c->dev);
    if (st == MOEMU_OK) st = layer_reduce_scatter_rows(c, routed, g.out, cnt, ex->d, s->ep);
    xfer_add(&m, 1, &t0);
    plan_free(&m);
    if (g.mem) emu_free(c->dev, EMU_MEM_ACT, g.mem, g.dev_bytes);
    free(g.idx);
    free(g.keep);
    return st;
}

emu_dispatcher_t layer_moe_dispatcher(const layer_ctx_t *c, const layer_shard_t *s,
                                      bool decode)
{
    bool own = !s->moe_replicated && s->ep && s->etp_size == 1;
    emu_dispatcher_t how = own ? emu_dev_spec(c->dev)->stack.dispatcher : EMU_DISPATCH_ALLTOALL;
    if (how == EMU_DISPATCH_DEEPEP_AUTO)
        how = decode ? EMU_DISPATCH_DEEPEP_LL : EMU_DISPATCH_DEEPEP;
    return how;
}

bool layer_moe_in_flight(const layer_ctx_t *c, const layer_shard_t *s, bool decode)
{
    return !s->moe_replicated && (s->ep || s->etp) &&
           layer_moe_dispatcher(c, s, decode) != EMU_DISPATCH_ALLGATHER;
}

/* 3-4, with beside while the rows travel */
static moemu_status_t dispatch_rows(moe_plan_t *m, const float *x, const layer_xfer_t *t0)
{
    in_flight(m, 0);
    moemu_status_t st = send_rows(m, x);
    if (st == MOEMU_OK) st = gather_lists(m);
    return landed(m, 0, st, t0);
}

/* DeepEP's normal-mode dispatch and combine (emu_dispatcher_t): each row
 * travels once to each EP member holding one of its kept choices, with
 * its choices there (local expert, or -1, and weight per slot); the member
 * runs its experts on them and sums each row's weighted outputs in slot
 * order; one row per (row, member) comes back, and the rows sum them in
 * rank order. */
typedef struct {
    layer_ctx_t *c;
    const layer_shard_t *s;
    const layer_experts_t *ex;
    int P, Eper, k, d, n;
    int64_t nsend, nrecv, nent; /* rows sent, received; (row, slot) entries here */
    int *src;                   /* (nsend) the row each sent row is */
    /* (nsend, 2k) and (nrecv, 2k): each slot's local expert (or -1), then
     * each slot's weight (a float's bits): one message of 4-byte values */
    int32_t *smeta, *rmeta;
    /* (P, 1 + Eper): to and from each member, its rows and the choices of
     * each of its experts (DeepEP's notify_dispatch) */
    int *scount, *rcount;
    size_t *cnt;                /* (4 P) the all-to-alls' counts and offsets */
    float *sx, *rx, *ret, *back; /* rows sent, received, reduced, returned */
    double comm_bytes;
    void *comm;
} deep_t;

/* 1. the rows for each member, with their choices there: a counting sort
 * of the (row, member) pairs by member, rows ascending within each */
static moemu_status_t deep_plan(deep_t *g, const int *idx, const float *w, const uint8_t *keep)
{
    int P = g->P, k = g->k, n = g->n, B = g->Eper + 1, last[P];
    int64_t next[P], at[P];
    for (int q = 0; q < P; q++) last[q] = -1;
    memset(g->scount, 0, sizeof(int) * (size_t)P * B);
    for (int64_t a = 0; a < (int64_t)n * k; a++) {
        int q = idx[a] / g->Eper, t = (int)(a / k);
        if (!keep[a]) continue;
        g->scount[q * B + 1 + idx[a] % g->Eper]++;
        if (last[q] != t) last[q] = t, g->scount[q * B]++;
    }
    g->nsend = 0;
    for (int q = 0; q < P; q++) {
        next[q] = g->nsend;
        g->nsend += g->scount[q * B];
        last[q] = -1;
    }
    g->src = malloc(sizeof(int) * (size_t)(g->nsend + 1));
    g->smeta = malloc(sizeof(int32_t) * (size_t)(g->nsend * 2 * k + 1));
    if (!g->src || !g->smeta) return nomem(sizeof(int) * (size_t)g->nsend * k, "the dispatch");
    /* the rows and their choices: the math's (a dry run counts them) */
    for (int64_t a = 0; g->c->math && a < (int64_t)n * k; a++) {
        int q = idx[a] / g->Eper, t = (int)(a / k), j = (int)(a % k);
        if (!keep[a]) continue;
        if (last[q] != t) { /* the row's first choice on q: its row there */
            last[q] = t;
            at[q] = next[q]++;
            g->src[at[q]] = t;
            for (int sl = 0; sl < 2 * k; sl++) g->smeta[at[q] * 2 * k + sl] = sl < k ? -1 : 0;
        }
        g->smeta[at[q] * 2 * k + j] = idx[a] - q * g->Eper;
        memcpy(&g->smeta[at[q] * 2 * k + k + j], &w[a], sizeof(float));
    }
    return MOEMU_OK;
}

/* counts of width values a row, in the all-to-all's offsets */
static void deep_counts(deep_t *g, int width)
{
    size_t *sc = g->cnt, *sd = sc + g->P, *rc = sd + g->P, *rd = rc + g->P;
    for (int q = 0; q < g->P; q++) {
        sc[q] = (size_t)g->scount[q * (g->Eper + 1)] * width;
        rc[q] = (size_t)g->rcount[q * (g->Eper + 1)] * width;
        sd[q] = q ? sd[q - 1] + sc[q - 1] : 0;
        rd[q] = q ? rd[q - 1] + rc[q - 1] : 0;
    }
}

/* 2. the rows, their choices and weights to their members */
static moemu_status_t deep_dispatch(deep_t *g, const float *x)
{
    layer_ctx_t *c = g->c;
    int P = g->P, k = g->k, d = g->d;
    MOEMU_CHECK(par_alltoall(g->scount, g->rcount, (size_t)g->Eper + 1, EMU_DTYPE_INT32,
                             g->s->ep, c->dev));
    for (int q = 0; q < P; q++) g->nrecv += g->rcount[q * (g->Eper + 1)];
    g->rmeta = malloc(sizeof(int32_t) * (size_t)(g->nrecv * 2 * k + 1));
    if (!g->rmeta) return nomem(sizeof(int32_t) * (size_t)g->nrecv * 2 * k, "the dispatch");
    size_t host = 2 * (size_t)(g->nsend + g->nrecv) * d + 1;
    g->comm_bytes = 2.0 * (double)emu_dtype_size(c->dtype) * (double)(g->nsend + g->nrecv) * d;
    MOEMU_CHECK(emu_alloc(c->dev, EMU_MEM_COMM, sizeof(float) * host, g->comm_bytes, &g->comm));
    g->sx = g->comm;
    g->rx = g->sx + (size_t)g->nsend * d;
    g->ret = g->rx + (size_t)g->nrecv * d;
    g->back = g->ret + (size_t)g->nrecv * d;
    if (c->math)
        for (int64_t i = 0; i < g->nsend; i++)
            memcpy(g->sx + i * d, x + (int64_t)g->src[i] * d, sizeof(float) * d);
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0,
               2.0 * emu_dtype_size(c->dtype) * (double)g->nsend * d);
    size_t *sc = g->cnt, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    deep_counts(g, 2 * k);
    /* as 4-byte floats: what a dry run skips with the rows' payload */
    MOEMU_CHECK(par_alltoallv(g->smeta, sc, sd, g->rmeta, rc, rd, EMU_DTYPE_FP32, g->s->ep,
                              c->dev));
    deep_counts(g, d);
    return alltoallv(c, g->sx, sc, sd, g->rx, rc, rd, dispatch_dtype(c), g->s->ep);
}

/* 3. the local experts on the received rows' choices, in (source, expert)
 * order, and each row's weighted sum in slot order into ret */
static moemu_status_t deep_compute(deep_t *g)
{
    layer_ctx_t *c = g->c;
    const layer_experts_t *ex = g->ex;
    int P = g->P, Eper = g->Eper, k = g->k, d = g->d;
    /* the entries (row, slot) by (source, expert), rows ascending within
     * each: the counts came with the rows', the places only for the math */
    int lc[P * Eper];
    int64_t next[P * Eper];
    g->nent = 0;
    for (int q = 0; q < P; q++)
        for (int j = 0; j < Eper; j++) {
            next[q * Eper + j] = g->nent;
            g->nent += lc[q * Eper + j] = g->rcount[q * (Eper + 1) + 1 + j];
        }
    size_t nslot = c->math ? (size_t)g->nrecv * k : 0;
    int64_t *pos = malloc(sizeof(int64_t) * (nslot + 1));
    int *ent = malloc(sizeof(int) * ((size_t)g->nent + 1));
    if (!pos || !ent) {
        free(pos);
        free(ent);
        return nomem(sizeof(int64_t) * nslot, "the experts' lists");
    }
    for (int q = 0, r = 0; c->math && q < P; q++)
        for (int r1 = r + g->rcount[q * (Eper + 1)]; r < r1; r++)
            for (int sl = 0; sl < k; sl++) {
                int j = g->rmeta[(int64_t)r * 2 * k + sl];
                int64_t e = j >= 0 ? next[q * Eper + j]++ : -1;
                pos[(int64_t)r * k + sl] = e;
                if (e >= 0) ent[e] = r;
            }
    if (ex->load)
        for (int i = 0; i < P * Eper; i++) ex->load[ex->e0 + i % Eper] += lc[i];
    double ab = 2.0 * emu_dtype_size(c->dtype) * (double)g->nent * d;
    float *lists = NULL;
    moemu_status_t st = emu_alloc(c->dev, EMU_MEM_ACT,
                                  sizeof(float) * (2 * (size_t)g->nent * d + 1), ab,
                                  (void **)&lists);
    float *outl = lists ? lists + (size_t)g->nent * d : NULL;
    if (st == MOEMU_OK && c->math)
        for (int64_t e = 0; e < g->nent; e++)
            memcpy(lists + e * d, g->rx + (int64_t)ent[e] * d, sizeof(float) * d);
    if (st == MOEMU_OK) st = run_experts(c, outl, lists, lc, 1, P, Eper, ex);
    if (st == MOEMU_OK && c->math)
        for (int64_t r = 0; r < g->nrecv; r++) {
            float *o = g->ret + r * d;
            memset(o, 0, sizeof(float) * d);
            for (int sl = 0; sl < k; sl++) {
                int64_t e = pos[r * k + sl];
                float wj;
                memcpy(&wj, &g->rmeta[r * 2 * k + k + sl], sizeof wj);
                for (int i = 0; e >= 0 && i < d; i++) o[i] += wj * outl[e * d + i];
            }
        }
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 2.0 * (double)g->nent * d,
               emu_dtype_size(c->dtype) * (double)(g->nent + g->nrecv) * d);
    if (lists) emu_free(c->dev, EMU_MEM_ACT, lists, ab);
    free(pos);
    free(ent);
    return st;
}

/* 4. one row per (row, member) back, summed in rank order */
static moemu_status_t deep_combine(deep_t *g, moe_plan_t *m, float *routed)
{
    layer_ctx_t *c = g->c;
    int P = g->P, d = g->d;
    size_t *sc = g->cnt, *sd = sc + P, *rc = sd + P, *rd = rc + P;
    layer_xfer_t t0;
    layer_xfer_now(&t0, c->dev);
    deep_counts(g, d);
    in_flight(m, 1);
    moemu_status_t st = alltoallv(c, g->ret, rc, rd, g->back, sc, sd, c->dtype, g->s->ep);
    MOEMU_CHECK(landed(m, 1, st, &t0));
    if (c->math) {
        memset(routed, 0, sizeof(float) * (size_t)g->n * d);
        for (int64_t i = 0; i < g->nsend; i++)
            for (int j = 0; j < d; j++) routed[(int64_t)g->src[i] * d + j] += g->back[i * d + j];
    }
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, (double)g->nsend * d,
               emu_dtype_size(c->dtype) * (double)(g->nsend + g->n) * d);
    return MOEMU_OK;
}

static moemu_status_t routed_deepep(layer_ctx_t *c, const layer_shard_t *s, float *routed,
                                    const float *x, const int *idx, const float *w,
                                    const uint8_t *keep, int n, const layer_experts_t *ex,
                                    const layer_beside_t *beside)
{
    int P = s->ep_size > 1 ? s->ep_size : 1, Eper = ex->E / P;
    int scount[P * (Eper + 1)], rcount[P * (Eper + 1)];
    size_t cnt[4 * P];
    deep_t g = {.c = c, .s = s, .ex = ex, .P = P, .Eper = Eper, .k = ex->k, .d = ex->d,
                .n = n, .scount = scount, .rcount = rcount, .cnt = cnt};
    moe_plan_t m = {.c = c, .ex = ex, .beside = beside};
    layer_xfer_t t0;
    layer_xfer_now(&t0, c->dev);
    moemu_status_t st = deep_plan(&g, idx, w, keep);
    in_flight(&m, 0);
    if (st == MOEMU_OK) st = deep_dispatch(&g, x);
    st = landed(&m, 0, st, &t0);
    if (st == MOEMU_OK) st = deep_compute(&g);
    if (st == MOEMU_OK) st = deep_combine(&g, &m, routed);
    if (g.comm) emu_free(c->dev, EMU_MEM_COMM, g.comm, g.comm_bytes);
    free(g.src);
    free(g.smeta);
    free(g.rmeta);
    return st;
}

moemu_status_t layer_moe_routed(layer_ctx_t *c, const layer_shard_t *s, bool decode,
                                float *routed, const float *x, const int *idx,
                                const float *w, const uint8_t *keep, int n,
                                const layer_experts_t *ex, const layer_beside_t *beside)
{
    if (s->moe_replicated) {
        moe_plan_t m = {.c = c, .s = s, .ex = ex, .n = n, .EP = 1, .ETP = 1, .Eper = ex->E,
                        .sz = (double)emu_dtype_size(c->dtype)};
        moemu_status_t st = beside ? beside->fn(beside->arg) : MOEMU_OK;
        if (st == MOEMU_OK) st = plan_sends(&m, idx, keep);
        if (st == MOEMU_OK) st = routed_replicated(&m, routed, x, w);
        plan_free(&m);
        return st;
    }
    emu_dispatcher_t how = layer_moe_dispatcher(c, s, decode);
    if (how == EMU_DISPATCH_DEEPEP)
        return routed_deepep(c, s, routed, x, idx, w, keep, n, ex, beside);
    if (how == EMU_DISPATCH_ALLGATHER) {
        moemu_status_t st = beside ? beside->fn(beside->arg) : MOEMU_OK;
        return st == MOEMU_OK ? routed_allgather(c, s, routed, x, idx, w, keep, n, ex) : st;
    }
    moe_plan_t m = {.c = c, .s = s, .ex = ex, .n = n, .EP = s->ep_size, .ETP = s->etp_size,
                    .Eper = ex->E / s->ep_size, .sz = (double)emu_dtype_size(c->dtype),
                    .local = !s->ep && !s->etp, .beside = beside,
                    .ll = how == EMU_DISPATCH_DEEPEP_LL};
    layer_xfer_t t0;
    layer_xfer_now(&t0, c->dev);
    moemu_status_t st = plan_sends(&m, idx, keep);
    if (st == MOEMU_OK) st = m.ll ? ll_counts(&m) : send_counts(&m);
    if (st == MOEMU_OK) st = dispatch_rows(&m, x, &t0);
    else xfer_add(&m, 0, &t0);
    if (st == MOEMU_OK) st = compute_and_return(&m);
    if (st == MOEMU_OK) st = combine(&m, routed, w, keep);
    plan_free(&m);
    return st;
}
