/* Communicators: membership, cost settings, and the transport (found by
 * name) that moves their data. */
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

void par_msg_free(par_msg_t *m)
{
    if (!m) return;
    free(m->data);
    free(m);
}

/* ---- mailboxes */

moemu_status_t par_mbox_init(par_mbox_t *b, int n)
{
    b->n = n;
    b->head = calloc((size_t)n, sizeof *b->head);
    b->tail = calloc((size_t)n, sizeof *b->tail);
    if (b->head && b->tail) return MOEMU_OK;
    par_mbox_fini(b);
    return MOEMU_ERR_NOMEM;
}

void par_mbox_clear(par_mbox_t *b)
{
    for (int r = 0; b->head && r < b->n; r++) {
        for (par_msg_t *m = b->head[r], *next; m; m = next) {
            next = m->next;
            par_msg_free(m);
        }
        b->head[r] = b->tail[r] = NULL;
    }
}

void par_mbox_fini(par_mbox_t *b)
{
    if (b->tail) par_mbox_clear(b);
    free(b->head);
    free(b->tail);
    b->head = b->tail = NULL;
}

void par_mbox_post(par_mbox_t *b, emu_sync_t *s, int to, par_msg_t *m)
{
    m->next = NULL;
    emu_sync_lock(s);
    if (b->tail[to]) b->tail[to]->next = m;
    else b->head[to] = m;
    b->tail[to] = m;
    emu_sync_broadcast(s);
    emu_sync_unlock(s);
}

/* With the lock held: unlink and return the first message from peer in
 * r's mailbox, or NULL. */
static par_msg_t *par_mbox_unlink(par_mbox_t *b, int r, int peer)
{
    par_msg_t *prev = NULL, *m;
    for (m = b->head[r]; m && m->src != peer; m = m->next) prev = m;
    if (!m) return NULL;
    if (prev) prev->next = m->next;
    else b->head[r] = m->next;
    if (b->tail[r] == m) b->tail[r] = prev;
    return m;
}

/* With the lock held, while r waits for a message from peer: why it must
 * give up, or MOEMU_OK. */
static moemu_status_t par_mbox_why_not(const par_comm_t *c, int r, int peer)
{
    if (emu_cluster_aborting(c->cluster))
        return moemu_fail(MOEMU_ERR_PEER,
                          "stopped: another device failed while device %d "
                          "waited for a message from device %d",
                          c->granks[r], c->granks[peer]);
    if (emu_dev_done(c->devs[peer]))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "device %d waits for a message from device %d, "
                          "which returned without sending it",
                          c->granks[r], c->granks[peer]);
    return MOEMU_OK;
}

moemu_status_t par_mbox_take(par_mbox_t *b, emu_sync_t *s, const par_comm_t *c, int r,
                             int peer, par_msg_t **out)
{
    moemu_status_t st = MOEMU_OK;
    emu_sync_lock(s);
    while (!(*out = par_mbox_unlink(b, r, peer)) && (st = par_mbox_why_not(c, r, peer)) == MOEMU_OK)
        emu_sync_wait(s);
    emu_sync_unlock(s);
    return st;
}

/* ---- the transports known by name */

#define PAR_MAX_TRANSPORTS 8

static const par_transport_t *par_transports[PAR_MAX_TRANSPORTS] = {
    &par_shm_transport,
};
static const par_transport_t *par_default_transport = &par_shm_transport;

const par_transport_t *par_transport_find(const char *name)
{
    for (int i = 0; name && i < PAR_MAX_TRANSPORTS && par_transports[i]; i++)
        if (!strcmp(par_transports[i]->name, name)) return par_transports[i];
    return NULL;
}

moemu_status_t par_transport_register(const par_transport_t *t)
{
    if (!t || !t->name)
        return moemu_fail(MOEMU_ERR_INVALID, "a transport needs a name");
    int i = 0;
    while (i < PAR_MAX_TRANSPORTS && par_transports[i] &&
           strcmp(par_transports[i]->name, t->name))
        i++;
    if (i == PAR_MAX_TRANSPORTS)
        return moemu_fail(MOEMU_ERR_INVALID, "transport %s: %d are known "
                          "already", t->name, PAR_MAX_TRANSPORTS);
    par_transports[i] = t; /* a name registered again is replaced */
    return MOEMU_OK;
}

static moemu_status_t par_unknown_transport(const char *name)
{
    return moemu_fail(MOEMU_ERR_INVALID, "no transport is called \"%s\"",
                      name ? name : "(null)");
}

moemu_status_t par_transport_set_default(const char *name)
{
    const par_transport_t *t = par_transport_find(name);
    if (!t) return par_unknown_transport(name);
    par_default_transport = t;
    return MOEMU_OK;
}

/* ---- communicators */

/* Fill the member tables from global ranks (in comm rank order); an
 * unknown or repeated device is an error naming it. */
static moemu_status_t par_set_members(par_comm_t *c, const int *ranks)
{
    int size = emu_cluster_size(c->cluster);
    for (int g = 0; g < size; g++) c->rank_of[g] = -1;
    for (int r = 0; r < c->n; r++) {
        int g = ranks[r];
        if (g < 0 || g >= size)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "communicator member %d is device %d, but the "
                              "cluster has devices 0..%d",
                              r, g, size - 1);
        if (c->rank_of[g] >= 0)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "device %d appears twice in a communicator "
                              "(members %d and %d)",
                              g, c->rank_of[g], r);
        c->rank_of[g] = r;
        c->granks[r] = g;
        c->devs[r] = emu_cluster_dev(c->cluster, g);
    }
    return MOEMU_OK;
}

/* Whether some member runs in another process than the others. */
static bool par_spans_processes(const par_comm_t *c)
{
    int lo, hi;
    emu_cluster_local(c->cluster, &lo, &hi);
    bool here = c->granks[0] >= lo && c->granks[0] < hi;
    for (int r = 1; r < c->n; r++)
        if ((c->granks[r] >= lo && c->granks[r] < hi) != here) return true;
    return false;
}

static moemu_status_t par_comm_new(emu_cluster_t *cluster, const int *ranks,
                                   int n, const par_transport_t *tp,
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
    if (!c->granks || !c->rank_of || !c->devs || !c->slots) goto nomem;
    moemu_status_t st = par_set_members(c, ranks);
    if (st == MOEMU_OK) {
        c->link = emu_topo_group_link(emu_cluster_topo(cluster), c->granks, n);
        c->stream_bytes = PAR_STREAM_BYTES_DEFAULT;
        c->tp = par_spans_processes(c) ? par_spanning_transport() : tp;
        if (!c->tp) {
            c->tp = tp;
            st = moemu_fail(MOEMU_ERR_INVALID, "a communicator of devices %d..%d spans "
                            "processes, but this build has no transport between them",
                            c->granks[0], c->granks[n - 1]);
        }
    }
    if (st == MOEMU_OK) st = c->tp->create(c, &c->ts);
    if (st != MOEMU_OK) {
        par_comm_destroy(c);
        return st;
    }
    *out = c;
    return MOEMU_OK;
nomem:
    par_comm_destroy(c);
    return moemu_fail(MOEMU_ERR_NOMEM,
                      "cannot allocate a communicator of %d members", n);
}

moemu_status_t par_comm_create(emu_cluster_t *cluster, const int *ranks, int n,
                               par_comm_t **out)
{
    return par_comm_new(cluster, ranks, n, par_default_transport, out);
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
    moemu_status_t st = par_comm_new(parent->cluster, g, n, parent->tp, out);
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
    if (c->tp) c->tp->destroy(c->ts);
    free(c->granks);
    free(c->rank_of);
    free(c->devs);
    free(c->slots);
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

moemu_status_t par_comm_set_transport(par_comm_t *c, const char *name)
{
    const par_transport_t *t = par_transport_find(name);
    if (!t) return par_unknown_transport(name);
    void *ts;
    MOEMU_CHECK(t->create(c, &ts));
    c->tp->destroy(c->ts);
    c->tp = t;
    c->ts = ts;
    return MOEMU_OK;
}

const char *par_comm_transport(const par_comm_t *c) { return c->tp->name; }
