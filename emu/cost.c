/* The cost model: every formula of virtual time, each written once. The
 * kernel roofline, the collective algorithms' closed forms (and the bytes
 * each member sends), the pairwise all-to-all's steps and the eager
 * message's departure and arrival. device.c and topo.c charge with these
 * and keep the books. docs/emulation.md derives each formula. */
#include <math.h>
#include <string.h>

#include "emu/emu_impl.h"

/* ---- kernels */

double emu_cost_kernel(const emu_spec_t *spec, double flops, double bytes,
                       bool *compute_bound)
{
    double tc = flops / (spec->peak_flops * spec->mfu);
    double tm = bytes / (spec->mem_bw * spec->bw_util);
    *compute_bound = tc >= tm;
    return spec->launch_s + (*compute_bound ? tc : tm);
}

double emu_kernel_time(const emu_spec_t *spec, double flops, double bytes)
{
    bool compute_bound;
    return emu_cost_kernel(spec, flops, bytes, &compute_bound);
}

/* The row tile an engine picks for products of about m rows: the smallest
 * that covers m, else the largest. */
static int64_t emu_row_tile(const emu_kernel_cost_t *kc, int64_t m)
{
    for (int i = 0; i < kc->nrow_tiles; i++)
        if (kc->row_tiles[i] >= m) return kc->row_tiles[i];
    return kc->row_tiles[kc->nrow_tiles - 1];
}

/* The compute time of n products as tiles of tm x tn outputs spread over
 * the units in waves: every wave takes one tile's time, a tile's FLOPs
 * 2 tm tn k at peak*mfu/units. One row tile for the whole kernel, picked
 * by the mean rows of its products (vLLM's fused_moe picks BLOCK_SIZE_M
 * once per launch); where k differs, the mean tile. 0 when no product
 * has work. */
/* How many of product g there are (count 0 or 1: one). */
static double emu_gemm_count(const emu_gemm_t *g) { return g->count > 1 ? (double)g->count : 1.0; }

static double emu_cost_tiles(const emu_spec_t *spec, const emu_kernel_cost_t *kc,
                             const emu_gemm_t *g, int n, double rate)
{
    double rows = 0, used = 0;
    for (int i = 0; i < n; i++)
        if (g[i].m > 0 && g[i].n > 0 && g[i].k > 0)
            rows += emu_gemm_count(&g[i]) * (double)g[i].m, used += emu_gemm_count(&g[i]);
    if (used == 0) return 0;
    int64_t tm = emu_row_tile(kc, (int64_t)ceil(rows / used)), tn = kc->col_tile;
    double tiles = 0, tile_k = 0; /* tiles, and their depths summed */
    for (int i = 0; i < n; i++) {
        if (g[i].m <= 0 || g[i].n <= 0 || g[i].k <= 0) continue;
        double t = (double)((g[i].m + tm - 1) / tm) * (double)((g[i].n + tn - 1) / tn) *
                   emu_gemm_count(&g[i]);
        tiles += t;
        tile_k += t * (double)g[i].k;
    }
    double waves = ceil(tiles / spec->units);
    return waves * (2.0 * (double)tm * (double)tn * (tile_k / tiles)) / (rate / spec->units);
}

double emu_cost_kernel_of(const emu_spec_t *spec, emu_kernel_t kind, const emu_gemm_t *g,
                          int n, double flops, double bytes, bool *compute_bound)
{
    const emu_kernel_cost_t *kc = &spec->kernels[kind];
    if (!kc->set) return emu_cost_kernel(spec, flops, bytes, compute_bound);
    double rate = spec->peak_flops * (kc->mfu > 0 ? kc->mfu : spec->mfu);
    bool tiled = g && n > 0 && kc->nrow_tiles > 0 && kc->col_tile > 0 && spec->units > 0;
    double tc = tiled ? emu_cost_tiles(spec, kc, g, n, rate) : flops / rate;
    double tm = bytes / (spec->mem_bw * spec->bw_util);
    *compute_bound = tc >= tm;
    double hi = *compute_bound ? tc : tm, lo = *compute_bound ? tm : tc;
    return spec->launch_s + hi + (1.0 - kc->overlap) * lo;
}

double emu_kernel_time_of(const emu_spec_t *spec, emu_kernel_t kind, const emu_gemm_t *g,
                          int n, double flops, double bytes)
{
    bool compute_bound;
    return emu_cost_kernel_of(spec, kind, g, n, flops, bytes, &compute_bound);
}

/* ---- collectives: closed forms of the group size p, the bytes B and the
 * latency a and bandwidth b of the slowest class the group crosses */

static double emu_log2_ceil(int p)
{
    int s = 0;
    while ((1 << s) < p) s++;
    return s;
}

/* One message of B bytes over one link. */
static double emu_hop(double a, double b, double B)
{
    return a + B / b;
}

static double cost_ring_allreduce(int p, double B, double a, double b)
{
    return 2.0 * (p - 1) * a + 2.0 * (p - 1) / p * B / b;
}

static double cost_tree_allreduce(int p, double B, double a, double b)
{
    return 2.0 * emu_log2_ceil(p) * a + 2.0 * B / b;
}

static double cost_ring_half(int p, double B, double a, double b)
{
    return (p - 1) * a + (double)(p - 1) / p * B / b;
}

static double cost_pipeline_bcast(int p, double B, double a, double b)
{
    return (p - 1) * a + B / b;
}

static double cost_binomial_bcast(int p, double B, double a, double b)
{
    return emu_log2_ceil(p) * emu_hop(a, b, B);
}

static double cost_hop(int p, double B, double a, double b)
{
    (void)p;
    return emu_hop(a, b, B);
}

static double cost_dissemination(int p, double B, double a, double b)
{
    (void)B, (void)b;
    return emu_log2_ceil(p) * a;
}

/* One direction of an all-to-all step: nothing if no bytes move. */
static double emu_a2a_dir(double a, double b, double bytes)
{
    return bytes > 0 ? emu_hop(a, b, bytes) : 0;
}

/* Uniform traffic over one class, B/p to each peer: the p-1 steps summed
 * as emu_cost_alltoall sums them, so this is the figure charged. */
static double cost_pairwise_alltoall(int p, double B, double a, double b)
{
    double t = 0;
    for (int s = 1; s < p; s++) t += emu_a2a_dir(a, b, B / p);
    return t;
}

typedef double (*emu_cost_fn)(int p, double B, double a, double b);

#define EMU_ALGO_MAX 2
static const struct {
    const char *name;
    emu_cost_fn cost;
} emu_algos[EMU_COLL__COUNT][EMU_ALGO_MAX] = {
    [EMU_COLL_ALLREDUCE] = {{"ring", cost_ring_allreduce},
                            {"tree", cost_tree_allreduce}},
    [EMU_COLL_REDUCE_SCATTER] = {{"ring", cost_ring_half}},
    [EMU_COLL_ALLGATHER] = {{"ring", cost_ring_half}},
    [EMU_COLL_BROADCAST] = {{"pipeline", cost_pipeline_bcast},
                            {"binomial", cost_binomial_bcast}},
    [EMU_COLL_ALLTOALL] = {{"pairwise", cost_pairwise_alltoall}},
    [EMU_COLL_SEND] = {{"hop", cost_hop}},
    [EMU_COLL_RECV] = {{"hop", cost_hop}},
    [EMU_COLL_BARRIER] = {{"dissemination", cost_dissemination}},
};

int emu_coll_algo_count(emu_coll_t k)
{
    int n = 0;
    while (n < EMU_ALGO_MAX && emu_algos[k][n].name) n++;
    return n;
}

const char *emu_coll_algo_name(emu_coll_t k, int algo)
{
    if (algo < 0 || algo >= emu_coll_algo_count(k)) return NULL;
    return emu_algos[k][algo].name;
}

int emu_coll_algo_parse(emu_coll_t k, const char *name)
{
    char list[128] = "";
    size_t n = 0;
    for (int i = 0; i < emu_coll_algo_count(k); i++) {
        if (strcmp(name, emu_algos[k][i].name) == 0) return i;
        n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "",
                              emu_algos[k][i].name);
    }
    moemu_fail(MOEMU_ERR_INVALID, "%s has no algorithm '%s' (choose: %s)",
               emu_coll_name(k), name, list);
    return -1;
}

double emu_coll_cost(emu_coll_t k, int algo, int p, double bytes, double alpha,
                     double beta)
{
    if (p <= 1 && k != EMU_COLL_SEND && k != EMU_COLL_RECV) return 0;
    if (algo < 0 || algo >= emu_coll_algo_count(k)) algo = 0;
    return emu_algos[k][algo].cost(p, bytes, alpha, beta);
}

/* Children of relative rank v in a binomial tree over p members. */
static int emu_binomial_children(int v, int p)
{
    int n = 0;
    for (int m = 1; m < p; m <<= 1)
        if (v < m && v + m < p) n++;
    return n;
}

double emu_coll_sent(emu_coll_t k, int algo, int p, int me, int root,
                     double bytes)
{
    if (p <= 1) return 0;
    int v = ((me - root) % p + p) % p; /* position from the root */
    switch (k) {
    case EMU_COLL_ALLREDUCE: /* ring: 2(p-1) chunks of B/p; tree: the same
                              * on average over the two trees */
        return 2.0 * (p - 1) / p * bytes;
    case EMU_COLL_REDUCE_SCATTER:
    case EMU_COLL_ALLGATHER: return (double)(p - 1) / p * bytes;
    case EMU_COLL_BROADCAST:
        if (algo == 1) return emu_binomial_children(v, p) * bytes;
        return v < p - 1 ? bytes : 0; /* the chain's last member forwards none */
    case EMU_COLL_ALLTOALL: return (double)(p - 1) / p * bytes;
    case EMU_COLL_SEND: return bytes;
    default: return 0;
    }
}

double emu_cost_start(const double *clocks, int p, double own)
{
    double start = own;
    for (int i = 0; i < p; i++)
        if (clocks[i] > start) start = clocks[i];
    return start;
}

/* ---- pairwise all-to-all: each pair over its own class */

/* Node of every member, for groups up to this size (a stack array); a
 * larger group divides for each lookup. Divisions by the devices per
 * node and modulo p were most of an all-to-all's cost on the host: the
 * sum below runs p^2 steps on every member of every all-to-all. */
#define EMU_A2A_NODES 1024

/* The class of the link from member a to member b. */
static emu_link_t emu_a2a_link(const emu_topo_t *t, const int *ranks, const int *nodes,
                               int a, int b)
{
    if (nodes) return nodes[a] == nodes[b] ? EMU_LINK_INTRA : EMU_LINK_INTER;
    return emu_topo_link(t, ranks[a], ranks[b]);
}

/* Member r's step s (to = r + s, from = r - s, mod p): its time and the
 * class of the slower direction. */
static double emu_a2a_step(const emu_topo_t *t, const int *ranks, const int *nodes, int p,
                           const double *bytes, int r, int to, int from, emu_link_t *cls)
{
    emu_link_t lo = emu_a2a_link(t, ranks, nodes, r, to);
    emu_link_t li = emu_a2a_link(t, ranks, nodes, from, r);
    double to_t = emu_a2a_dir(emu_topo_lat(t, lo), emu_topo_bw(t, lo),
                              bytes[(size_t)r * p + to]);
    double ti = emu_a2a_dir(emu_topo_lat(t, li), emu_topo_bw(t, li),
                            bytes[(size_t)from * p + r]);
    *cls = to_t >= ti ? lo : li;
    return to_t >= ti ? to_t : ti;
}

/* Member r's steps with nodes (or NULL): their sum, and in mine (if not
 * NULL) each class's. */
static double emu_a2a_row(const emu_topo_t *t, const int *ranks, const int *nodes, int p, int r,
                          const double *bytes, double mine[EMU_LINK__COUNT])
{
    double tr = 0;
    for (int s = 1, to = r + 1, from = r - 1; s < p; s++, to++, from--) {
        if (to == p) to = 0;
        if (from < 0) from = p - 1;
        emu_link_t cls;
        double ts = emu_a2a_step(t, ranks, nodes, p, bytes, r, to, from, &cls);
        tr += ts;
        if (mine) mine[cls] += ts;
    }
    return tr;
}

/* The slowest row's time; row r's classes into rows[r] when rows is not
 * NULL, else member me's into mine. */
static double emu_a2a_rows(const emu_topo_t *t, const int *ranks, int p, int me,
                           const double *bytes, double mine[EMU_LINK__COUNT],
                           double (*rows)[EMU_LINK__COUNT])
{
    int buf[EMU_A2A_NODES];
    const int *nodes = p <= EMU_A2A_NODES ? buf : NULL;
    for (int r = 0; nodes && r < p; r++) buf[r] = emu_topo_node(t, ranks[r]);
    double tmax = 0;
    for (int r = 0; r < p; r++) {
        double *m = rows ? rows[r] : r == me ? mine : NULL;
        for (int l = 0; m && l < EMU_LINK__COUNT; l++) m[l] = 0;
        double tr = emu_a2a_row(t, ranks, nodes, p, r, bytes, m);
        if (tr > tmax) tmax = tr;
    }
    return tmax;
}

double emu_cost_alltoall(const emu_topo_t *t, const int *ranks, int p, int me,
                         const double *bytes, double mine[EMU_LINK__COUNT])
{
    return emu_a2a_rows(t, ranks, p, me, bytes, mine, NULL);
}

double emu_cost_alltoall_rows(const emu_topo_t *t, const int *ranks, int p,
                              const double *bytes, double (*rows)[EMU_LINK__COUNT])
{
    return emu_a2a_rows(t, ranks, p, 0, bytes, NULL, rows);
}

/* ---- eager messages */

emu_msg_time_t emu_cost_send(double clock, double *link_free, double alpha,
                             double beta, double bytes)
{
    double wire = bytes / beta;
    double depart = clock > *link_free ? clock : *link_free;
    *link_free = depart + wire;
    return (emu_msg_time_t){depart, depart + alpha + wire, bytes};
}

double emu_cost_recv(double clock, emu_msg_time_t t, double *start)
{
    *start = clock > t.depart ? clock : t.depart;
    return clock > t.arrive ? clock : t.arrive;
}
