/* Communicators: membership, the meeting point of collectives, and the
 * state an aborted run leaves behind. */
#include <stdlib.h>
#include <string.h>

#include "parallel/par_impl.h"

static const char *const par_op_names[PAR_OP__COUNT] = {
    [PAR_OP_SUM] = "sum", [PAR_OP_MAX] = "max",
};

const char *par_op_name(par_op_t op)
{
    return (unsigned)op < PAR_OP__COUNT ? par_op_names[op] : "?";
}

static void par_free_msgs(par_comm_t *c)
{
    for (int r = 0; r < c->n; r++) {
        par_msg_t *m = c->mbox_head[r];
        while (m) {
            par_msg_t *next = m->next;
            free(m->data);
            free(m);
            m = next;
        }
        c->mbox_head[r] = c->mbox_tail[r] = NULL;
    }
}

/* Before each run: forget a meeting or messages an aborted run left. */
static void par_comm_reset(void *arg)
{
    par_comm_t *c = arg;
    c->arrived = 0;
    c->episode = 0;
    memset(c->arrived_at, 0, (size_t)c->n * sizeof *c->arrived_at);
    par_free_msgs(c);
}

moemu_status_t par_comm_create(emu_cluster_t *cluster, const int *ranks, int n,
                               par_comm_t **out)
{
    *out = NULL;
    if (!cluster || (!ranks && n > 0))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "par_comm_create: NULL cluster or ranks");
    int size = emu_cluster_size(cluster);
    if (n < 1 || n > size)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "a communicator needs 1 to %d members (got %d)",
                          size, n);
    par_comm_t *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->cluster = cluster;
    c->n = n;
    c->granks = malloc((size_t)n * sizeof *c->granks);
    c->rank_of = malloc((size_t)size * sizeof *c->rank_of);
    c->devs = malloc((size_t)n * sizeof *c->devs);
    c->slots = calloc((size_t)n, sizeof *c->slots);
    c->arrived_at = calloc((size_t)n, sizeof *c->arrived_at);
    c->mbox_head = calloc((size_t)n, sizeof *c->mbox_head);
    c->mbox_tail = calloc((size_t)n, sizeof *c->mbox_tail);
    if (!c->granks || !c->rank_of || !c->devs || !c->slots || !c->arrived_at ||
        !c->mbox_head || !c->mbox_tail)
        goto nomem;
    for (int g = 0; g < size; g++) c->rank_of[g] = -1;
    for (int r = 0; r < n; r++) {
        int g = ranks[r];
        if (g < 0 || g >= size) {
            par_comm_destroy(c);
            return moemu_fail(MOEMU_ERR_INVALID,
                              "communicator member %d is device %d, but the "
                              "cluster has devices 0..%d",
                              r, g, size - 1);
        }
        if (c->rank_of[g] >= 0) {
            int first = c->rank_of[g];
            par_comm_destroy(c);
            return moemu_fail(MOEMU_ERR_INVALID,
                              "device %d appears twice in a communicator "
                              "(members %d and %d)",
                              g, first, r);
        }
        c->rank_of[g] = r;
        c->granks[r] = g;
        c->devs[r] = emu_cluster_dev(cluster, g);
    }
    c->link = emu_topo_group_link(emu_cluster_topo(cluster), c->granks, n);
    c->stream_bytes = PAR_STREAM_BYTES_DEFAULT;
    if (emu_sync_create(cluster, par_comm_reset, c, &c->sync) != MOEMU_OK) {
        par_comm_destroy(c);
        return MOEMU_ERR_NOMEM;
    }
    *out = c;
    return MOEMU_OK;
nomem:
    par_comm_destroy(c);
    return moemu_fail(MOEMU_ERR_NOMEM,
                      "cannot allocate a communicator of %d members", n);
}

moemu_status_t par_comm_create_world(emu_cluster_t *cluster, par_comm_t **out)
{
    int n = emu_cluster_size(cluster);
    int *ranks = malloc((size_t)n * sizeof *ranks);
    if (!ranks)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d ranks", n);
    for (int i = 0; i < n; i++) ranks[i] = i;
    moemu_status_t st = par_comm_create(cluster, ranks, n, out);
    free(ranks);
    return st;
}

moemu_status_t par_comm_create_sub(const par_comm_t *parent, const int *ranks,
                                   int n, par_comm_t **out)
{
    *out = NULL;
    if (!parent || !ranks || n < 1 || n > parent->n)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "a sub-communicator needs 1 to %d ranks (got %d)",
                          parent ? parent->n : 0, n);
    int *g = malloc((size_t)n * sizeof *g);
    if (!g) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d ranks", n);
    for (int i = 0; i < n; i++) {
        if (ranks[i] < 0 || ranks[i] >= parent->n) {
            free(g);
            return moemu_fail(MOEMU_ERR_INVALID,
                              "sub-communicator member %d is rank %d of a "
                              "communicator of %d",
                              i, ranks[i], parent->n);
        }
        g[i] = parent->granks[ranks[i]];
    }
    moemu_status_t st = par_comm_create(parent->cluster, g, n, out);
    if (st == MOEMU_OK) {
        memcpy((*out)->algo, parent->algo, sizeof parent->algo);
        (*out)->stream_bytes = parent->stream_bytes;
    }
    free(g);
    return st;
}

void par_comm_destroy(par_comm_t *c)
{
    if (!c) return;
    if (c->mbox_head && c->mbox_tail) par_free_msgs(c);
    emu_sync_destroy(c->sync);
    free(c->granks);
    free(c->rank_of);
    free(c->devs);
    free(c->slots);
    free(c->arrived_at);
    free(c->mbox_head);
    free(c->mbox_tail);
    free(c);
}

int par_comm_size(const par_comm_t *c) { return c->n; }

int par_comm_rank(const par_comm_t *c, const emu_dev_t *dev)
{
    if (!dev || emu_dev_cluster(dev) != c->cluster) return -1;
    return c->rank_of[emu_dev_rank(dev)];
}

int par_comm_global_rank(const par_comm_t *c, int rank)
{
    return rank >= 0 && rank < c->n ? c->granks[rank] : -1;
}

emu_link_t par_comm_link(const par_comm_t *c) { return c->link; }

moemu_status_t par_comm_set_algo(par_comm_t *c, emu_coll_t kind,
                                 const char *name)
{
    if ((unsigned)kind >= EMU_COLL__COUNT || !name)
        return moemu_fail(MOEMU_ERR_INVALID, "par_comm_set_algo: bad "
                                             "collective or name");
    int a = emu_coll_algo_parse(kind, name);
    if (a < 0) return MOEMU_ERR_INVALID;
    c->algo[kind] = a;
    return MOEMU_OK;
}

void par_comm_set_stream_bytes(par_comm_t *c, size_t bytes)
{
    c->stream_bytes = bytes;
}

/* With the lock held: the first member that has not arrived at episode ep
 * and never will, or -1. */
static int par_gone_member(const par_comm_t *c, uint64_t ep)
{
    for (int q = 0; q < c->n; q++)
        if (c->arrived_at[q] <= ep && emu_dev_done(c->devs[q])) return q;
    return -1;
}

moemu_status_t par_meet(par_comm_t *c, int r, bool abortable)
{
    emu_sync_lock(c->sync);
    uint64_t ep = c->episode;
    c->arrived_at[r] = ep + 1;
    if (++c->arrived == c->n) {
        c->arrived = 0;
        c->episode++;
        emu_sync_broadcast(c->sync);
        emu_sync_unlock(c->sync);
        return MOEMU_OK;
    }
    moemu_status_t st = MOEMU_OK;
    int gone;
    /* the episode is looked at first: a meeting that completed is kept
     * even if the run aborts at the same moment */
    while (c->episode == ep) {
        if (abortable && emu_cluster_aborting(c->cluster))
            st = moemu_fail(MOEMU_ERR_PEER,
                            "stopped: another device failed while device %d "
                            "waited for its communicator",
                            c->granks[r]);
        else if (abortable && (gone = par_gone_member(c, ep)) >= 0)
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "device %d (rank %d of a communicator of %d) "
                            "returned without joining the collective that "
                            "device %d waits in",
                            c->granks[gone], gone, c->n, c->granks[r]);
        if (st != MOEMU_OK) {
            /* withdraw: the meeting must never complete without us, or
             * the others would go on to touch our buffers */
            c->arrived--;
            c->arrived_at[r] = ep;
            break;
        }
        emu_sync_wait(c->sync);
    }
    emu_sync_unlock(c->sync);
    return st;
}
