/* Topology, link classes, their checks, and charging communication to a
 * device: its counters, clock and trace. The times are cost.c's. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
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

/* emu_topo_node's and emu_topo_link's bodies, static so that the lookups
 * in this file inline them (calls of an exported function within the
 * library go through the PLT): every collective asks for its members'
 * nodes. */
static inline int topo_node(const emu_topo_t *t, int rank)
{
    /* a shift, not a division, for the usual power-of-two node (ranks
     * are >= 0) */
    int dpn = t->devices_per_node;
    if (dpn > 0 && (dpn & (dpn - 1)) == 0) return rank >> __builtin_ctz((unsigned)dpn);
    return rank / dpn;
}

int emu_topo_node(const emu_topo_t *t, int rank) { return topo_node(t, rank); }

static inline emu_link_t topo_link(const emu_topo_t *t, int a, int b)
{
    return topo_node(t, a) == topo_node(t, b) ? EMU_LINK_INTRA : EMU_LINK_INTER;
}

emu_link_t emu_topo_link(const emu_topo_t *t, int a, int b) { return topo_link(t, a, b); }

emu_link_t emu_topo_group_link(const emu_topo_t *t, const int *ranks, int n)
{
    int node0 = n > 0 ? topo_node(t, ranks[0]) : 0;
    for (int i = 1; i < n; i++)
        if (topo_node(t, ranks[i]) != node0) return EMU_LINK_INTER;
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

/* A figure's physical range. Outside it the times overflow or vanish (a
 * peak of 5e-324 FLOP/s made the report print inf and nan) or mean
 * nothing (a launch of 1e300 s); docs/emulation.md lists them. */
typedef struct {
    const char *key;
    size_t off;
    double lo, hi;
    const char *range; /* as the message writes it */
    double plo, phi;   /* plausible: what real accelerators and links have;
                          outside it, within [lo, hi], a warning */
} emu_bound_t;

static const emu_bound_t emu_spec_bounds[] = {
    {"device.peak_flops", offsetof(emu_spec_t, peak_flops), 1e9, 1e18, "[1e9, 1e18] FLOP/s",
     1e12, 1e17},
    {"device.mfu", offsetof(emu_spec_t, mfu), 1e-3, 1, "[0.001, 1]", 0.05, 1},
    {"device.mem_bw", offsetof(emu_spec_t, mem_bw), 1e8, 1e15, "[1e8, 1e15] B/s", 1e10, 1e14},
    {"device.bw_util", offsetof(emu_spec_t, bw_util), 1e-3, 1, "[0.001, 1]", 0.05, 1},
    {"device.mem_capacity", offsetof(emu_spec_t, mem_capacity), 1e3, 1e14, "[1e3, 1e14] B",
     1e9, 1e13},
    {"device.launch_s", offsetof(emu_spec_t, launch_s), 0, 1e-2, "[0, 0.01] s", 0, 1e-3},
    {"device.host_seq_s", offsetof(emu_spec_t, host_seq_s), 0, 0.1, "[0, 0.1] s", 0, 1e-3},
};

static const emu_bound_t emu_topo_bounds[] = {
    {"topology.intra_bw", offsetof(emu_topo_t, intra_bw), 1e6, 1e14, "[1e6, 1e14] B/s", 1e9,
     1e13},
    {"topology.intra_lat", offsetof(emu_topo_t, intra_lat), 0, 0.1, "[0, 0.1] s", 0, 1e-3},
    {"topology.inter_bw", offsetof(emu_topo_t, inter_bw), 1e6, 1e14, "[1e6, 1e14] B/s", 1e8,
     1e13},
    {"topology.inter_lat", offsetof(emu_topo_t, inter_lat), 0, 0.1, "[0, 0.1] s", 0, 1e-2},
};

/* The first figure of obj outside its range; NaN fails every test. */
static moemu_status_t emu_check_bounds(const void *obj, const emu_bound_t *b, size_t n,
                                       const char *origin)
{
    for (size_t i = 0; i < n; i++) {
        double v = *(const double *)((const char *)obj + b[i].off);
        if (!(v >= b[i].lo && v <= b[i].hi))
            return moemu_fail(MOEMU_ERR_INVALID, "%s: %s must be in %s (got %g)", origin,
                              b[i].key, b[i].range, v);
    }
    return MOEMU_OK;
}

/* The figures of obj outside their plausible ranges, appended to list. */
static int emu_odd_figures(const void *obj, const emu_bound_t *b, size_t n, char *list,
                           size_t cap, int odd)
{
    for (size_t i = 0; i < n; i++) {
        double v = *(const double *)((const char *)obj + b[i].off);
        size_t len = strlen(list);
        if ((v < b[i].plo || v > b[i].phi) && len < cap)
            snprintf(list + len, cap - len, "%s%s %g (expected %g to %g)", odd++ ? ", " : "",
                     b[i].key, v, b[i].plo, b[i].phi);
    }
    return odd;
}

moemu_status_t emu_hw_plausible(const emu_hw_t *hw, const char *origin)
{
    char list[768] = "";
    int odd = emu_odd_figures(&hw->spec, emu_spec_bounds,
                              sizeof emu_spec_bounds / sizeof emu_spec_bounds[0], list,
                              sizeof list, 0);
    odd = emu_odd_figures(&hw->topo, emu_topo_bounds,
                          sizeof emu_topo_bounds / sizeof emu_topo_bounds[0], list, sizeof list,
                          odd);
    if (!odd) return MOEMU_OK;
    return moemu_warn("%s: implausible figure%s, used as given: %s", origin, odd == 1 ? "" : "s",
                      list);
}

/* One kind's parameters: in range, tiles in pairs and with units. */
static moemu_status_t emu_kernel_cost_check(const emu_spec_t *s, int k, const char *origin)
{
    const emu_kernel_cost_t *kc = &s->kernels[k];
    const char *kind = emu_kernel_name(k);
    if (!(kc->overlap >= 0 && kc->overlap <= 1))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s.overlap must be in [0, 1] (got %g)",
                          origin, kind, kc->overlap);
    if (!(kc->mfu == 0 || (kc->mfu >= 1e-3 && kc->mfu <= 1)))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s.mfu must be in [0.001, 1] (got %g)",
                          origin, kind, kc->mfu);
    if (kc->nrow_tiles < 0 || kc->nrow_tiles > EMU_ROW_TILES_MAX)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s.row_tiles must hold 1 to %d tile "
                          "heights (got %d)", origin, kind, EMU_ROW_TILES_MAX, kc->nrow_tiles);
    for (int i = 0; i < kc->nrow_tiles; i++)
        if (kc->row_tiles[i] < 1 || kc->row_tiles[i] > 4096 ||
            (i > 0 && kc->row_tiles[i] <= kc->row_tiles[i - 1]))
            return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s.row_tiles must ascend within "
                              "[1, 4096] (got %d at %d)", origin, kind, kc->row_tiles[i], i);
    if (kc->col_tile < 0 || kc->col_tile > 4096)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s.col_tile must be in [1, 4096] (got %d)",
                          origin, kind, kc->col_tile);
    if ((kc->nrow_tiles > 0) != (kc->col_tile > 0))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s needs both row_tiles and col_tile "
                          "(tiles have two sides)", origin, kind);
    if (kc->col_tile > 0 && s->units < 1)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.kernels.%s has tiles but device.units is not "
                          "set (the compute units the tiles spread over)", origin, kind);
    return MOEMU_OK;
}

moemu_status_t emu_spec_check(const emu_spec_t *s, const char *origin)
{
    MOEMU_CHECK(emu_check_bounds(s, emu_spec_bounds,
                                 sizeof emu_spec_bounds / sizeof emu_spec_bounds[0], origin));
    if (s->units < 0 || s->units > 1 << 20)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.units must be in [1, 1048576] (got %d)",
                          origin, s->units);
    if (s->peak_flops_fp8 != 0 && !(s->peak_flops_fp8 >= 1e9 && s->peak_flops_fp8 <= 1e18))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: device.peak_flops_fp8 must be in [1e9, 1e18] "
                          "FLOP/s, or absent for a card without FP8 (got %g)", origin,
                          s->peak_flops_fp8);
    for (int k = 0; k < EMU_KERNEL__COUNT; k++)
        if (s->kernels[k].set) MOEMU_CHECK(emu_kernel_cost_check(s, k, origin));
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
    return emu_check_bounds(t, emu_topo_bounds,
                            sizeof emu_topo_bounds / sizeof emu_topo_bounds[0], origin);
}

/* ---- charging a device */

/* The spans of a communication charge on stream: idle over [t0, start),
 * then the communication over [start, end); each only when it takes time. */
static void emu_trace_comm(emu_dev_t *dev, emu_coll_t kind, emu_link_t link, double t0,
                           double start, double end, double bytes, int stream)
{
    emu_span_t *s;
    if (start > t0 && (s = emu_span_add(dev, EMU_SPAN_IDLE, kind, link, t0, start, 0, 0)))
        s->stream = (uint8_t)stream;
    if (end > start && (s = emu_span_add(dev, EMU_SPAN_COMM, kind, link, start, end, 0, bytes)))
        s->stream = (uint8_t)stream;
}

/* A collective on the communication stream from ready (emu_dev_comm_ready)
 * through start (the group's) to end. With nothing in flight and the
 * device synchronous this is one stream, as it always was: the clock moves
 * to the end. Otherwise it joins the stream's pending segments, and a
 * synchronous one makes the compute stream wait for all of them. */
static void emu_stream_book(emu_dev_t *dev, emu_coll_t kind, emu_link_t link, double ready,
                            double start, double end, double sent)
{
    dev->comm_clock = end;
    dev->comm_seq++;
    if (!dev->async && dev->npending == 0) {
        double t0 = dev->clock;
        dev->clock = end;
        if (dev->trace) emu_trace_comm(dev, kind, link, t0, start, end, sent, 0);
        emu_dev_pace(dev);
        return;
    }
    dev->pending[dev->npending++] =
        (struct emu_seg){ready, start, end, (uint8_t)kind, (uint8_t)link};
    if (dev->trace) emu_trace_comm(dev, kind, link, ready, start, end, sent, 1);
    if (!dev->async || dev->npending == EMU_PENDING_MAX) emu_dev_comm_wait(dev);
}

double emu_dev_comm_ready(const emu_dev_t *dev)
{
    return dev->comm_clock > dev->clock ? dev->comm_clock : dev->clock;
}

void emu_dev_set_async(emu_dev_t *dev, bool on) { dev->async = on; }

/* The length of [a, b) inside [lo, hi). */
static double emu_inside(double a, double b, double lo, double hi)
{
    double x = a > lo ? a : lo, y = b < hi ? b : hi;
    return y > x ? y - x : 0;
}

/* The compute stream waits for the first r pending segments, over [t0,
 * t1): that part of them was exposed, the rest ran beside its kernels.
 * The stream runs in order, so the segments left start after t1. */
static void emu_comm_retire(emu_dev_t *dev, int r)
{
    if (r <= 0) return;
    double t0 = dev->clock, t1 = dev->pending[r - 1].end;
    if (r == dev->npending) t1 = emu_dev_comm_ready(dev);
    for (int i = 0; i < r; i++) {
        const struct emu_seg *g = &dev->pending[i];
        dev->overlap.idle += g->start - g->ready - emu_inside(g->ready, g->start, t0, t1);
        dev->overlap.comm += g->end - g->start - emu_inside(g->start, g->end, t0, t1);
    }
    const struct emu_seg last = dev->pending[r - 1];
    dev->npending -= r;
    memmove(dev->pending, dev->pending + r, sizeof dev->pending[0] * (size_t)dev->npending);
    if (t1 <= t0) return;
    if (dev->trace) emu_span_add(dev, EMU_SPAN_IDLE, last.kind, last.link, t0, t1, 0, 0);
    dev->clock = t1;
    emu_dev_pace(dev);
}

void emu_dev_comm_wait(emu_dev_t *dev) { emu_comm_retire(dev, dev->npending); }

uint64_t emu_dev_comm_mark(const emu_dev_t *dev) { return dev->comm_seq; }

void emu_dev_comm_wait_mark(emu_dev_t *dev, uint64_t mark)
{
    uint64_t later = dev->comm_seq - mark; /* issued since the mark */
    emu_comm_retire(dev, later >= (uint64_t)dev->npending ? 0 : dev->npending - (int)later);
}

emu_overlap_t emu_dev_overlap(const emu_dev_t *dev) { return dev->overlap; }

/* Each choice of emu_stack_t: its key, where it lies, its values' names. */
static const struct {
    const char *key;
    size_t off;
    int count;
    const char *const *names;
} emu_choices[] = {
    {"overlap", offsetof(emu_stack_t, overlap), EMU_OVERLAP__COUNT,
     (const char *const[]){"none", "shared-experts", "two-batch"}},
    {"dispatcher", offsetof(emu_stack_t, dispatcher), EMU_DISPATCH__COUNT,
     (const char *const[]){"all-to-all", "all-gather", "deepep", "deepep-ll", "deepep-auto"}},
    {"kernels", offsetof(emu_stack_t, kernels), EMU_KERNELS__COUNT,
     (const char *const[]){"separate", "fused"}},
};
#define EMU_CHOICES (int)(sizeof emu_choices / sizeof emu_choices[0])

static int emu_choice(const char *key)
{
    for (int i = 0; i < EMU_CHOICES; i++)
        if (!strcmp(key, emu_choices[i].key)) return i;
    return -1;
}

moemu_status_t emu_stack_set(emu_stack_t *s, const char *key, const char *value,
                             const char *origin)
{
    int c = emu_choice(key);
    if (c < 0) return moemu_fail(MOEMU_ERR_INVALID, "%s: no choice '%s' of a stack", origin, key);
    char list[160] = "";
    for (int v = 0; v < emu_choices[c].count; v++) {
        if (value && !strcmp(value, emu_choices[c].names[v])) {
            *(int *)((char *)s + emu_choices[c].off) = v;
            return MOEMU_OK;
        }
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", v ? ", " : "",
                 emu_choices[c].names[v]);
    }
    return moemu_fail(MOEMU_ERR_INVALID, "%s: %s '%s' is none of: %s", origin, key,
                      value ? value : "(not a string)", list);
}

const char *emu_stack_key(int i)
{
    return i >= 0 && i < EMU_CHOICES ? emu_choices[i].key : NULL;
}

const char *emu_stack_name(const emu_stack_t *s, const char *key)
{
    int c = emu_choice(key);
    if (c < 0) return "?";
    int v = *(const int *)((const char *)s + emu_choices[c].off);
    return v >= 0 && v < emu_choices[c].count ? emu_choices[c].names[v] : "?";
}

double emu_coll_charge(emu_dev_t *dev, emu_coll_t kind, int algo,
                       const int *ranks, int p, int me, int root,
                       const double *clocks, double bytes)
{
    emu_link_t link = emu_topo_group_link(&dev->topo, ranks, p);
    emu_comm_stats_t *st = &dev->comm[kind][link];
    st->calls++;
    if (bytes <= 0 && kind != EMU_COLL_BARRIER) return 0;
    double ready = emu_dev_comm_ready(dev);
    double start = emu_cost_start(clocks, p, ready);
    double t = emu_coll_cost(kind, algo, p, bytes, emu_topo_lat(&dev->topo, link),
                             emu_topo_bw(&dev->topo, link));
    double sent = emu_coll_sent(kind, algo, p, me, root, bytes);
    st->idle += start - ready;
    st->time += t;
    st->bytes += sent;
    emu_stream_book(dev, kind, link, ready, start, start + t, sent);
    return t;
}

/* The memo that would hold this all-to-all's time: by communicator (its
 * ranks array), in a coroutine run only; NULL otherwise. */
static emu_a2a_memo_t *emu_a2a_memo(const emu_dev_t *dev, const int *ranks)
{
    if (!emu_sched_self || !dev->cluster) return NULL;
    uintptr_t h = (uintptr_t)ranks * 0x9E3779B97F4A7C15ULL;
    return &dev->cluster->a2a_memo[(h >> 40) % EMU_A2A_MEMOS];
}

/* Whether m holds the time of the all-to-all of bytes between ranks. */
static bool emu_a2a_memo_has(const emu_a2a_memo_t *m, const int *ranks, int p,
                             const double *bytes)
{
    return m->p == p && !memcmp(m->ranks, ranks, sizeof(int) * (size_t)p) &&
           !memcmp(m->bytes, bytes, sizeof(double) * (size_t)p * p);
}

/* Fill m with the all-to-all of bytes between ranks and its time; false
 * (m left empty) without memory for it. */
static bool emu_a2a_memo_put(emu_a2a_memo_t *m, const emu_topo_t *t, const int *ranks, int p,
                             const double *bytes)
{
    m->p = 0;
    if ((size_t)p > m->cap) {
        free(m->ranks);
        free(m->bytes);
        free(m->rows);
        m->ranks = malloc(sizeof(int) * (size_t)p);
        m->bytes = malloc(sizeof(double) * (size_t)p * p);
        m->rows = malloc(sizeof *m->rows * (size_t)p);
        m->cap = m->ranks && m->bytes && m->rows ? (size_t)p : 0;
        if (!m->cap) return false;
    }
    memcpy(m->ranks, ranks, sizeof(int) * (size_t)p);
    memcpy(m->bytes, bytes, sizeof(double) * (size_t)p * p);
    m->tmax = emu_cost_alltoall_rows(t, ranks, p, bytes, m->rows);
    m->p = p;
    return true;
}

void emu_a2a_memos_free(emu_cluster_t *c)
{
    for (int i = 0; i < EMU_A2A_MEMOS; i++) {
        free(c->a2a_memo[i].ranks);
        free(c->a2a_memo[i].bytes);
        free(c->a2a_memo[i].rows);
        c->a2a_memo[i] = (emu_a2a_memo_t){0};
    }
}

/* The all-to-all's time, and member me's steps by class in mine. */
static double emu_a2a_time(const emu_dev_t *dev, const int *ranks, int p, int me,
                           const double *bytes, double mine[EMU_LINK__COUNT])
{
    emu_a2a_memo_t *m = emu_a2a_memo(dev, ranks);
    if (m && (emu_a2a_memo_has(m, ranks, p, bytes) ||
              emu_a2a_memo_put(m, &dev->topo, ranks, p, bytes))) {
        memcpy(mine, m->rows[me], sizeof m->rows[me]);
        return m->tmax;
    }
    return emu_cost_alltoall(&dev->topo, ranks, p, me, bytes, mine);
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

    double mine[EMU_LINK__COUNT];
    double tmax = emu_a2a_time(dev, ranks, p, me, bytes, mine);
    double ready = emu_dev_comm_ready(dev);
    double start = emu_cost_start(clocks, p, ready);
    /* waiting for the slowest member's exchanges is part of the
     * collective: it goes to the group's class */
    mine[glink] += tmax - (mine[EMU_LINK_INTRA] + mine[EMU_LINK_INTER]);
    dev->comm[EMU_COLL_ALLTOALL][glink].idle += start - ready;
    for (int l = 0; l < EMU_LINK__COUNT; l++)
        dev->comm[EMU_COLL_ALLTOALL][l].time += mine[l];
    double sent = 0;
    for (int j = 0; j < p; j++)
        if (j != me) {
            dev->comm[EMU_COLL_ALLTOALL][topo_link(t, ranks[me], ranks[j])]
                .bytes += bytes[(size_t)me * p + j];
            sent += bytes[(size_t)me * p + j];
        }
    emu_stream_book(dev, EMU_COLL_ALLTOALL, glink, ready, start, start + tmax, sent);
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
    return emu_cost_send(dev->clock, &dev->egress_free[l],
                         emu_topo_lat(&dev->topo, l),
                         emu_topo_bw(&dev->topo, l), bytes);
}

void emu_p2p_recv(emu_dev_t *dev, int peer_rank, emu_msg_time_t t)
{
    emu_link_t l = emu_topo_link(&dev->topo, dev->rank, peer_rank);
    emu_comm_stats_t *st = &dev->comm[EMU_COLL_RECV][l];
    double start, end = emu_cost_recv(dev->clock, t, &start);
    st->calls++;
    st->idle += start - dev->clock;
    st->time += end - start;
    double t0 = dev->clock;
    dev->clock = end;
    if (dev->trace) emu_trace_comm(dev, EMU_COLL_RECV, l, t0, start, end, t.bytes, 0);
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
