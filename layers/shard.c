/* Sharded forms: row collectives with padding, the merge of partial
 * attention, capacity over a routing group spread across devices, and the
 * expert-parallel dispatch (Megatron-Core's all-to-all token dispatcher:
 * counts, then rows, over the EP group; all-gather and reduce-scatter over
 * the ETP group). */
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

static moemu_status_t nomem(size_t bytes, const char *what)
{
    return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %zu bytes for %s", bytes, what);
}

/* Padded all-gather of rows of width elements of 4 bytes (floats in the
 * model's dtype, or int32 when dt is EMU_DTYPE_INT32). */
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
                          (double)(n * (p + 1)) * emu_dtype_size(dt), (void **)&buf));
    float *send = buf + n * p;
    /* int32 rows are metadata (routing, counts): they travel even when the
     * math is skipped */
    bool data = c->math || dt == EMU_DTYPE_INT32;
    if (data) memcpy(send, in, 4 * (size_t)counts[me] * width);
    moemu_status_t st = par_allgather(send, buf, n, dt, comm, c->dev);
    if (st == MOEMU_OK && data) {
        char *o = out;
        for (int q = 0; q < p; q++) {
            memcpy(o, buf + n * q, 4 * (size_t)counts[q] * width);
            o += 4 * (size_t)counts[q] * width;
        }
    }
    emu_free(c->dev, EMU_MEM_COMM, buf, (double)(n * (p + 1)) * emu_dtype_size(dt));
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

void layer_attention_merge(layer_ctx_t *c, float *out, const float *parts,
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
    }
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
    int *all = malloc(sizeof(int) * (all_n + 1)), *group = malloc(sizeof(int) * (all_n + 1));
    uint8_t *kall = malloc(all_n + 1);
    if (!all || !group || !kall) {
        free(all);
        free(group);
        free(kall);
        return nomem(sizeof(int) * all_n * 2, "the routing decisions of a group");
    }
    moemu_status_t st = gather_rows(c, all, idx, counts, k, EMU_DTYPE_INT32, comm);
    if (st == MOEMU_OK) { /* routing is metadata: decided in dry runs too */
        /* into group order, then the first cap choices of each expert */
        for (int64_t j = 0; j < T; j++)
            memcpy(group + (int64_t)gpos[j] * k, all + j * k, sizeof(int) * k);
        layer_apply_capacity(kall, NULL, group, T, k, E, layer_capacity(cf, T, k, E));
        int64_t off = 0;
        for (int q = 0; q < me; q++) off += counts[q];
        for (int j = 0; j < n; j++)
            for (int s = 0; s < k; s++) {
                keep[j * k + s] = kall[(int64_t)gpos[off + j] * k + s];
                *dropped += !keep[j * k + s];
            }
    }
    emu_charge(c->dev, EMU_KERNEL_ROUTER, (double)all_n, 8.0 * (double)all_n);
    free(all);
    free(group);
    free(kall);
    return st;
}

/* ---- Expert parallelism */

typedef struct {
    int *order;    /* (nsend) my kept choices a = row * k + slot, by expert */
    int *sendc;    /* (E) kept choices per expert, i.e. per (EP rank, local) */
    int *recvc;    /* (EP * Eper) rows from source q for local expert j */
    int *lists_c;  /* (ETP * EP * Eper) recvc of every ETP member */
    size_t *scnt, *sdsp, *rcnt, *rdsp; /* (EP) all-to-all counts, in floats */
} moe_plan_t;

static moemu_status_t alltoallv(layer_ctx_t *c, const float *send, const size_t *scnt,
                                const size_t *sdsp, float *recv, const size_t *rcnt,
                                const size_t *rdsp, par_comm_t *comm)
{
    if (!comm) {
        if (c->math && scnt[0]) memcpy(recv + rdsp[0], send + sdsp[0], sizeof(float) * scnt[0]);
        return MOEMU_OK;
    }
    return par_alltoallv(send, scnt, sdsp, recv, rcnt, rdsp, c->dtype, comm, c->dev);
}

/* Where each expert's rows start in lists of counts lc (nlists * EP blocks
 * of Eper experts, in (list, source, expert) order): at (ntot) receives,
 * expert after expert, the row of each, and jobs[j].n the count. */
static void expert_order(int64_t *at, layer_expert_job_t *jobs, const int *lc, int nlists,
                         int EP, int Eper)
{
    int64_t ne = 0;
    for (int j = 0; j < Eper; j++) {
        int64_t first = ne, base = 0;
        for (int i = 0; i < nlists * EP; i++) {
            int64_t off = base;
            for (int jj = 0; jj < j; jj++) off += lc[i * Eper + jj];
            for (int r = 0; r < lc[i * Eper + j]; r++) at[ne++] = off + r;
            for (int jj = 0; jj < Eper; jj++) base += lc[i * Eper + jj];
        }
        jobs[j] = (layer_expert_job_t){.n = (int)(ne - first)};
    }
}

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
    bool sorted = nlists * EP == 1;
    int64_t ntot = 0, maxe = 0;
    for (int i = 0; i < nlists * EP * Eper; i++) ntot += lc[i];
    for (int j = 0; j < Eper; j++) {
        int64_t ne = 0;
        for (int i = 0; i < nlists * EP; i++) ne += lc[i * Eper + j];
        maxe = ne > maxe ? ne : maxe;
    }
    if (ntot == 0) return MOEMU_OK;
    /* the rows on the host only when the math runs: a dry run needs counts */
    size_t nrows = sorted ? 0 : 2 * (size_t)ntot * d;
    size_t nf = c->math ? nrows + 2 * (size_t)maxe * Floc : 0;
    float *buf = c->math ? malloc(sizeof(float) * nf) : NULL;
    int64_t *at = malloc(sizeof(int64_t) * (size_t)ntot);
    layer_expert_job_t *jobs = malloc(sizeof *jobs * (size_t)Eper);
    if ((c->math && !buf) || !at || !jobs) {
        free(buf);
        free(at);
        free(jobs);
        return nomem(sizeof(float) * nf, "the experts' rows");
    }
    float *h = buf ? buf + nrows : NULL;
    float *xe = sorted ? (float *)rows : buf, *ye = sorted ? out : buf ? buf + (size_t)ntot * d : NULL;
    expert_order(at, jobs, lc, nlists, EP, Eper);
    double sz = (double)emu_dtype_size(c->dtype);
    if (!sorted && c->math)
        for (int64_t r = 0; r < ntot; r++) memcpy(xe + r * d, rows + at[r] * d, sizeof(float) * d);
    if (!sorted) emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * sz * (double)ntot * d);
    int64_t first = 0;
    for (int j = 0; j < Eper && c->math; first += jobs[j++].n) {
        int e = ex->e0 + j;
        jobs[j] = (layer_expert_job_t){
            .out = ye + first * d, .x = xe + first * d, .w1 = ex->w1[e] + (size_t)ex->f0 * d,
            .w3 = ex->w3 ? ex->w3[e] + (size_t)ex->f0 * d : NULL, .w2 = ex->w2[e] + ex->f0,
            .n = jobs[j].n};
    }
    layer_expert_group(c, jobs, Eper, h, d, Floc, ex->F, ex->act, false);
    if (!sorted && c->math)
        for (int64_t r = 0; r < ntot; r++) memcpy(out + at[r] * d, ye + r * d, sizeof(float) * d);
    if (!sorted) emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * sz * (double)ntot * d);
    free(buf);
    free(at);
    free(jobs);
    return MOEMU_OK;
}

moemu_status_t layer_moe_routed(layer_ctx_t *c, const layer_shard_t *s,
                                float *routed, const float *x, const int *idx,
                                const float *w, const uint8_t *keep, int n,
                                const layer_experts_t *ex)
{
    int d = ex->d, k = ex->k, E = ex->E, EP = s->ep_size, ETP = s->etp_size;
    int Eper = E / EP;
    double sz = (double)emu_dtype_size(c->dtype);
    moemu_status_t st = MOEMU_OK;
    moe_plan_t pl = {0};
    float *sendbuf = NULL, *recvbuf = NULL, *lists = NULL, *outl = NULL, *ret = NULL;
    int64_t nsend = 0, nrecv = 0, nlist = 0;
    size_t sb = 0, rb = 0, lb = 0;
    int *lcount = NULL; /* (ETP) rows of each ETP member's list */

    /* 1. my kept choices by expert: a counting sort, stable in (row, slot) */
    pl.sendc = calloc((size_t)E + 1, sizeof(int));
    pl.recvc = calloc((size_t)EP * Eper + 1, sizeof(int));
    pl.lists_c = calloc((size_t)ETP * EP * Eper + 1, sizeof(int));
    pl.order = malloc(sizeof(int) * ((size_t)n * k + 1));
    pl.scnt = calloc(4 * (size_t)EP, sizeof(size_t));
    lcount = calloc((size_t)ETP, sizeof(int));
    if (!pl.sendc || !pl.recvc || !pl.lists_c || !pl.order || !pl.scnt || !lcount) {
        st = nomem(sizeof(int) * (size_t)n * k, "the dispatch plan");
        goto out;
    }
    pl.sdsp = pl.scnt + EP;
    pl.rcnt = pl.sdsp + EP;
    pl.rdsp = pl.rcnt + EP;
    {
        /* the choices are metadata: planned even when math is skipped */
        for (int64_t a = 0; a < (int64_t)n * k; a++)
            if (keep[a]) pl.sendc[idx[a]]++;
        int *next = malloc(sizeof(int) * (size_t)(E + 1));
        if (!next) {
            st = nomem(sizeof(int) * (size_t)E, "the dispatch plan");
            goto out;
        }
        next[0] = 0;
        for (int e = 0; e < E; e++) next[e + 1] = next[e] + pl.sendc[e];
        for (int64_t a = 0; a < (int64_t)n * k; a++)
            if (keep[a]) pl.order[next[idx[a]]++] = (int)a;
        free(next);
    }
    for (int e = 0; e < E; e++) nsend += pl.sendc[e];

    /* 2. counts per (peer, local expert) over the EP group */
    if (s->ep) st = par_alltoall(pl.sendc, pl.recvc, (size_t)Eper, EMU_DTYPE_INT32, s->ep, c->dev);
    else memcpy(pl.recvc, pl.sendc, sizeof(int) * (size_t)E);
    if (st != MOEMU_OK) goto out;
    for (int i = 0; i < EP * Eper; i++) nrecv += pl.recvc[i];

    /* 3. rows, grouped by destination then expert */
    sb = (size_t)nsend * d;
    rb = (size_t)nrecv * d;
    if ((st = emu_alloc(c->dev, EMU_MEM_COMM, sizeof(float) * (sb + rb + 1), sz * (double)(sb + rb),
                        (void **)&sendbuf)) != MOEMU_OK)
        goto out;
    recvbuf = sendbuf + sb;
    if (c->math)
        for (int64_t i = 0; i < nsend; i++)
            memcpy(sendbuf + i * d, x + (int64_t)(pl.order[i] / k) * d, sizeof(float) * d);
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 0.0, 2.0 * sz * (double)nsend * d);
    for (int q = 0; q < EP; q++) {
        size_t sc = 0, rc = 0;
        for (int j = 0; j < Eper; j++) {
            sc += (size_t)pl.sendc[q * Eper + j];
            rc += (size_t)pl.recvc[q * Eper + j];
        }
        pl.scnt[q] = sc * d;
        pl.rcnt[q] = rc * d;
        pl.sdsp[q] = q ? pl.sdsp[q - 1] + pl.scnt[q - 1] : 0;
        pl.rdsp[q] = q ? pl.rdsp[q - 1] + pl.rcnt[q - 1] : 0;
    }
    if ((st = alltoallv(c, sendbuf, pl.scnt, pl.sdsp, recvbuf, pl.rcnt, pl.rdsp, s->ep)) != MOEMU_OK)
        goto out;

    /* 4. every ETP member's rows for these experts */
    if (ETP > 1) {
        int ones[ETP];
        for (int i = 0; i < ETP; i++) ones[i] = 1;
        if ((st = gather_rows(c, pl.lists_c, pl.recvc, ones, EP * Eper, EMU_DTYPE_INT32, s->etp)) != MOEMU_OK)
            goto out;
    } else {
        memcpy(pl.lists_c, pl.recvc, sizeof(int) * (size_t)EP * Eper);
    }
    for (int i = 0; i < ETP; i++) {
        lcount[i] = 0;
        for (int j = 0; j < EP * Eper; j++) lcount[i] += pl.lists_c[i * EP * Eper + j];
        nlist += lcount[i];
    }
    if (ex->load && s->etp_rank == 0) /* the ETP members share these rows */
        for (int i = 0; i < ETP * EP; i++)
            for (int j = 0; j < Eper; j++) ex->load[ex->e0 + j] += pl.lists_c[i * Eper + j];
    lb = (size_t)nlist * d;
    if ((st = emu_alloc(c->dev, EMU_MEM_ACT, sizeof(float) * (2 * lb + 1), 2.0 * sz * (double)lb,
                        (void **)&lists)) != MOEMU_OK)
        goto out;
    outl = lists + lb;
    if ((st = layer_gather_rows(c, lists, recvbuf, lcount, d, s->etp)) != MOEMU_OK) goto out;

    /* 5. the experts, on this member's slice of their intermediate size */
    if ((st = run_experts(c, outl, lists, pl.lists_c, ETP, EP, Eper, ex)) != MOEMU_OK) goto out;

    /* 6. partial outputs summed over the ETP group, back to my rows */
    if ((st = layer_reduce_scatter_rows(c, recvbuf, outl, lcount, d, s->etp)) != MOEMU_OK) goto out;

    /* 7. back to the sources, in the order they sent */
    if ((st = emu_alloc(c->dev, EMU_MEM_COMM, sizeof(float) * (sb + 1), sz * (double)sb,
                        (void **)&ret)) != MOEMU_OK)
        goto out;
    if ((st = alltoallv(c, recvbuf, pl.rcnt, pl.rdsp, ret, pl.scnt, pl.sdsp, s->ep)) != MOEMU_OK)
        goto out;

    /* 8. combine in choice order; a dropped choice contributes 0 */
    if (c->math) {
        int64_t *slot_of = malloc(sizeof(int64_t) * ((size_t)n * k + 1));
        if (!slot_of) {
            st = nomem(sizeof(int64_t) * (size_t)n * k, "the combination");
            goto out;
        }
        for (int64_t i = 0; i < nsend; i++) slot_of[pl.order[i]] = i;
        for (int t = 0; t < n; t++) {
            float *o = routed + (int64_t)t * d;
            memset(o, 0, sizeof(float) * d);
            for (int j = 0; j < k; j++) {
                int64_t a = (int64_t)t * k + j;
                if (!keep[a]) continue;
                const float *y = ret + slot_of[a] * d;
                for (int i = 0; i < d; i++) o[i] += w[a] * y[i];
            }
        }
        free(slot_of);
    }
    emu_charge(c->dev, EMU_KERNEL_ELEMWISE, 2.0 * n * k * d,
               sz * ((double)nsend * d + (double)n * d));
out:
    if (ret) emu_free(c->dev, EMU_MEM_COMM, ret, sz * (double)sb);
    if (lists) emu_free(c->dev, EMU_MEM_ACT, lists, 2.0 * sz * (double)lb);
    if (sendbuf) emu_free(c->dev, EMU_MEM_COMM, sendbuf, sz * (double)(sb + rb));
    free(pl.sendc);
    free(pl.recvc);
    free(pl.lists_c);
    free(pl.order);
    free(pl.scnt);
    free(lcount);
    return st;
}
