/* Topology, link classes and the cost of communication: the closed forms
 * of the collective algorithms, the pairwise all-to-all and the eager
 * point-to-point message. docs/emulation.md derives each formula. */
#include <math.h>
#include <string.h>

#include "emu/emu_impl.h"

static const char *const emu_link_names[EMU_LINK__COUNT] = {
    [EMU_LINK_INTRA] = "intra-node", [EMU_LINK_INTER] = "inter-node",
};

static const char *const emu_coll_names[EMU_COLL__COUNT] = {
    [EMU_COLL_ALLREDUCE] = "all-reduce",
    [EMU_COLL_REDUCE_SCATTER] = "reduce-scatter",
    [EMU_COLL_ALLGATHER] = "all-gather",
    [EMU_COLL_BROADCAST] = "broadcast",
    [EMU_COLL_ALLTOALL] = "all-to-all",
    [EMU_COLL_SEND] = "send",
    [EMU_COLL_RECV] = "recv",
    [EMU_COLL_BARRIER] = "barrier",
};

const char *emu_link_name(emu_link_t l) { return emu_link_names[l]; }

const char *emu_coll_name(emu_coll_t k) { return emu_coll_names[k]; }

int emu_topo_node(const emu_topo_t *t, int rank)
{
    return rank / t->devices_per_node;
}

emu_link_t emu_topo_link(const emu_topo_t *t, int a, int b)
{
    return emu_topo_node(t, a) == emu_topo_node(t, b) ? EMU_LINK_INTRA
                                                      : EMU_LINK_INTER;
}

emu_link_t emu_topo_group_link(const emu_topo_t *t, const int *ranks, int n)
{
    for (int i = 1; i < n; i++)
        if (emu_topo_node(t, ranks[i]) != emu_topo_node(t, ranks[0]))
            return EMU_LINK_INTER;
    return EMU_LINK_INTRA;
}

double emu_topo_bw(const emu_topo_t *t, emu_link_t l)
{
    return l == EMU_LINK_INTRA ? t->intra_bw : t->inter_bw;
}

double emu_topo_lat(const emu_topo_t *t, emu_link_t l)
{
    return l == EMU_LINK_INTRA ? t->intra_lat : t->inter_lat;
}

/* Finite and > 0 (or >= 0), and <= 1 where asked; NaN fails every test. */
static moemu_status_t emu_check_num(const char *origin, const char *key,
                                    double v, bool zero_ok, bool le_one)
{
    bool ok = isfinite(v) && (zero_ok ? v >= 0 : v > 0) && (!le_one || v <= 1);
    if (ok) return MOEMU_OK;
    return moemu_fail(MOEMU_ERR_INVALID, "%s: %s must be %s (got %g)", origin,
                      key,
                      le_one ? "in (0, 1]" : zero_ok ? ">= 0" : "> 0", v);
}

moemu_status_t emu_spec_check(const emu_spec_t *s, const char *origin)
{
    MOEMU_CHECK(emu_check_num(origin, "device.peak_flops", s->peak_flops, false, false));
    MOEMU_CHECK(emu_check_num(origin, "device.mfu", s->mfu, false, true));
    MOEMU_CHECK(emu_check_num(origin, "device.mem_bw", s->mem_bw, false, false));
    MOEMU_CHECK(emu_check_num(origin, "device.bw_util", s->bw_util, false, true));
    MOEMU_CHECK(emu_check_num(origin, "device.mem_capacity", s->mem_capacity, false, false));
    MOEMU_CHECK(emu_check_num(origin, "device.launch_s", s->launch_s, true, false));
    return MOEMU_OK;
}

moemu_status_t emu_topo_check(const emu_topo_t *t, const char *origin)
{
    if (t->devices_per_node < 1)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: topology.devices_per_node must be >= 1 (got %d)",
                          origin, t->devices_per_node);
    if (t->nodes < 0)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: topology.nodes must be >= 0 (got %d)", origin,
                          t->nodes);
    MOEMU_CHECK(emu_check_num(origin, "topology.intra_bw", t->intra_bw, false, false));
    MOEMU_CHECK(emu_check_num(origin, "topology.intra_lat", t->intra_lat, true, false));
    MOEMU_CHECK(emu_check_num(origin, "topology.inter_bw", t->inter_bw, false, false));
    MOEMU_CHECK(emu_check_num(origin, "topology.inter_lat", t->inter_lat, true, false));
    return MOEMU_OK;
}

/* ---- closed forms */

static double emu_log2_ceil(int p)
{
    int s = 0;
    while ((1 << s) < p) s++;
    return s;
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
    return emu_log2_ceil(p) * (a + B / b);
}

/* Uniform traffic: each member sends B/p to each peer. */
static double cost_pairwise_alltoall(int p, double B, double a, double b)
{
    return (p - 1) * (a + B / p / b);
}

static double cost_hop(int p, double B, double a, double b)
{
    (void)p;
    return a + B / b;
}

static double cost_dissemination(int p, double B, double a, double b)
{
    (void)B, (void)b;
    return emu_log2_ceil(p) * a;
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
               emu_coll_names[k], name, list);
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

/* ---- charging a device */

/* The spans of a communication charge: idle over [t0, start), then the
 * communication over [start, clock); each only when it takes time. */
static void emu_trace_comm(emu_dev_t *dev, emu_coll_t kind, emu_link_t link,
                           double t0, double start, double bytes)
{
    if (start > t0) emu_span_add(dev, EMU_SPAN_IDLE, kind, link, t0, start, 0, 0);
    if (dev->clock > start)
        emu_span_add(dev, EMU_SPAN_COMM, kind, link, start, dev->clock, 0, bytes);
}

static double emu_max_clock(const double *clocks, int p, double own)
{
    double start = own;
    for (int i = 0; i < p; i++)
        if (clocks[i] > start) start = clocks[i];
    return start;
}

double emu_coll_charge(emu_dev_t *dev, emu_coll_t kind, int algo,
                       const int *ranks, int p, int me, int root,
                       const double *clocks, double bytes)
{
    emu_link_t link = emu_topo_group_link(&dev->topo, ranks, p);
    emu_comm_stats_t *st = &dev->comm[kind][link];
    st->calls++;
    if (bytes <= 0 && kind != EMU_COLL_BARRIER) return 0;
    double start = emu_max_clock(clocks, p, dev->clock);
    double t = emu_coll_cost(kind, algo, p, bytes, emu_topo_lat(&dev->topo, link),
                             emu_topo_bw(&dev->topo, link));
    double sent = emu_coll_sent(kind, algo, p, me, root, bytes);
    double t0 = dev->clock;
    st->idle += start - dev->clock;
    st->time += t;
    st->bytes += sent;
    dev->clock = start + t;
    if (dev->trace) emu_trace_comm(dev, kind, link, t0, start, sent);
    emu_dev_pace(dev);
    return t;
}

/* One direction of a pairwise step: nothing if no bytes move. */
static double emu_dir_time(const emu_topo_t *t, emu_link_t l, double bytes)
{
    return bytes > 0 ? emu_topo_lat(t, l) + bytes / emu_topo_bw(t, l) : 0;
}

/* Member r's step s: its time and the class of the slower direction. */
static double emu_a2a_step(const emu_topo_t *t, const int *ranks, int p,
                           const double *bytes, int r, int s, emu_link_t *cls)
{
    int to = (r + s) % p, from = (r - s + p) % p;
    emu_link_t lo = emu_topo_link(t, ranks[r], ranks[to]);
    emu_link_t li = emu_topo_link(t, ranks[from], ranks[r]);
    double to_t = emu_dir_time(t, lo, bytes[(size_t)r * p + to]);
    double ti = emu_dir_time(t, li, bytes[(size_t)from * p + r]);
    *cls = to_t >= ti ? lo : li;
    return to_t >= ti ? to_t : ti;
}

double emu_coll_alltoall(emu_dev_t *dev, const int *ranks, int p, int me,
                         const double *clocks, const double *bytes)
{
    const emu_topo_t *t = &dev->topo;
    emu_link_t glink = emu_topo_group_link(t, ranks, p);
    dev->comm[EMU_COLL_ALLTOALL][glink].calls++;
    double moved = 0;
    for (int i = 0; i < p; i++)
        for (int j = 0; j < p; j++)
            if (i != j) moved += bytes[(size_t)i * p + j];
    if (moved <= 0) return 0;

    double tmax = 0, mine[EMU_LINK__COUNT] = {0, 0};
    for (int r = 0; r < p; r++) {
        double tr = 0;
        for (int s = 1; s < p; s++) {
            emu_link_t cls;
            double ts = emu_a2a_step(t, ranks, p, bytes, r, s, &cls);
            tr += ts;
            if (r == me) mine[cls] += ts;
        }
        if (tr > tmax) tmax = tr;
    }
    double start = emu_max_clock(clocks, p, dev->clock);
    /* waiting for the slowest member's exchanges is part of the
     * collective: it goes to the group's class */
    mine[glink] += tmax - (mine[EMU_LINK_INTRA] + mine[EMU_LINK_INTER]);
    dev->comm[EMU_COLL_ALLTOALL][glink].idle += start - dev->clock;
    for (int l = 0; l < EMU_LINK__COUNT; l++)
        dev->comm[EMU_COLL_ALLTOALL][l].time += mine[l];
    double sent = 0;
    for (int j = 0; j < p; j++)
        if (j != me) {
            dev->comm[EMU_COLL_ALLTOALL][emu_topo_link(t, ranks[me], ranks[j])]
                .bytes += bytes[(size_t)me * p + j];
            sent += bytes[(size_t)me * p + j];
        }
    double t0 = dev->clock;
    dev->clock = start + tmax;
    if (dev->trace) emu_trace_comm(dev, EMU_COLL_ALLTOALL, glink, t0, start, sent);
    emu_dev_pace(dev);
    return tmax;
}

emu_msg_time_t emu_p2p_send(emu_dev_t *dev, int peer_rank, double bytes)
{
    emu_link_t l = emu_topo_link(&dev->topo, dev->rank, peer_rank);
    emu_comm_stats_t *st = &dev->comm[EMU_COLL_SEND][l];
    st->calls++;
    if (peer_rank == dev->rank) /* a local copy */
        return (emu_msg_time_t){dev->clock, dev->clock, bytes};
    st->bytes += bytes;
    double wire = bytes / emu_topo_bw(&dev->topo, l);
    double depart = dev->clock > dev->egress_free[l] ? dev->clock
                                                     : dev->egress_free[l];
    dev->egress_free[l] = depart + wire;
    return (emu_msg_time_t){depart, depart + emu_topo_lat(&dev->topo, l) + wire,
                            bytes};
}

void emu_p2p_recv(emu_dev_t *dev, int peer_rank, emu_msg_time_t t)
{
    emu_link_t l = emu_topo_link(&dev->topo, dev->rank, peer_rank);
    emu_comm_stats_t *st = &dev->comm[EMU_COLL_RECV][l];
    double start = dev->clock > t.depart ? dev->clock : t.depart;
    double end = dev->clock > t.arrive ? dev->clock : t.arrive;
    st->calls++;
    st->idle += start - dev->clock;
    st->time += end - start;
    double t0 = dev->clock;
    dev->clock = end;
    if (dev->trace) emu_trace_comm(dev, EMU_COLL_RECV, l, t0, start, t.bytes);
    emu_dev_pace(dev);
}

moemu_status_t emu_topo_nodes(const emu_topo_t *t, int ndev, int *nodes)
{
    int need = (ndev + t->devices_per_node - 1) / t->devices_per_node;
    if (t->nodes > 0 && t->nodes < need)
        return moemu_fail(MOEMU_ERR_INVALID, "%d devices do not fit on %d node%s of %d devices",
                          ndev, t->nodes, t->nodes == 1 ? "" : "s", t->devices_per_node);
    *nodes = t->nodes > 0 ? t->nodes : need;
    return MOEMU_OK;
}
