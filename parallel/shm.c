/* The shared-memory transport: the members are threads of one process, so
 * a gather is a meeting on a mutex and a condition variable, the views
 * are the members' own buffers (nothing is copied twice) and messages
 * wait in their receiver's mailbox. */
#include <stdlib.h>
#include <string.h>

#include "parallel/par_impl.h"

typedef struct {
    par_comm_t *c;
    emu_sync_t *sync; /* guards what follows */
    int arrived;
    uint64_t episode;
    uint64_t *arrived_at; /* n: episode + 1 of each member's last arrival */
    par_mbox_t mbox;
} par_shm_t;

/* Before each run: forget a meeting or messages an aborted run left. */
static void shm_reset(void *arg)
{
    par_shm_t *sh = arg;
    sh->arrived = 0;
    sh->episode = 0;
    memset(sh->arrived_at, 0, (size_t)sh->c->n * sizeof *sh->arrived_at);
    par_mbox_clear(&sh->mbox);
}

static void shm_destroy(void *ts)
{
    par_shm_t *sh = ts;
    if (!sh) return;
    par_mbox_fini(&sh->mbox);
    emu_sync_destroy(sh->sync);
    free(sh->arrived_at);
    free(sh);
}

static moemu_status_t shm_create(par_comm_t *c, void **ts)
{
    *ts = NULL;
    par_shm_t *sh = calloc(1, sizeof *sh);
    if (!sh) goto nomem;
    sh->c = c;
    sh->arrived_at = calloc((size_t)c->n, sizeof *sh->arrived_at);
    if (!sh->arrived_at || par_mbox_init(&sh->mbox, c->n) != MOEMU_OK) goto nomem;
    if (emu_sync_create(c->cluster, shm_reset, sh, &sh->sync) != MOEMU_OK) {
        shm_destroy(sh);
        return MOEMU_ERR_NOMEM;
    }
    *ts = sh;
    return MOEMU_OK;
nomem:
    shm_destroy(sh);
    return moemu_fail(MOEMU_ERR_NOMEM,
                      "cannot allocate a communicator of %d members", c->n);
}

/* With the lock held: the first member that has not arrived at episode ep
 * and never will, or -1. */
static int shm_gone_member(const par_shm_t *sh, uint64_t ep)
{
    const par_comm_t *c = sh->c;
    for (int q = 0; q < c->n; q++)
        if (sh->arrived_at[q] <= ep && emu_dev_done(c->devs[q])) return q;
    return -1;
}

/* With the lock held, while r waits at episode ep: why it must give up,
 * or MOEMU_OK. */
static moemu_status_t shm_why_stop(const par_shm_t *sh, int r, uint64_t ep)
{
    const par_comm_t *c = sh->c;
    if (emu_cluster_aborting(c->cluster))
        return moemu_fail(MOEMU_ERR_PEER,
                          "stopped: another device failed while device %d "
                          "waited for its communicator",
                          c->granks[r]);
    int gone = shm_gone_member(sh, ep);
    if (gone >= 0)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "device %d (rank %d of a communicator of %d) "
                          "returned without joining the collective that "
                          "device %d waits in",
                          c->granks[gone], gone, c->n, c->granks[r]);
    return MOEMU_OK;
}

/* Meet every member: returns when all have arrived. abortable: give up
 * (shm_why_stop) when the run aborts or a member cannot come; a meeting
 * that every member is sure to reach (the second of a collective) is not
 * abortable, so that nobody leaves while others still touch its buffers. */
static moemu_status_t shm_meet(par_shm_t *sh, int r, bool abortable)
{
    emu_sync_lock(sh->sync);
    uint64_t ep = sh->episode;
    sh->arrived_at[r] = ep + 1;
    if (++sh->arrived == sh->c->n) {
        sh->arrived = 0;
        sh->episode++;
        emu_sync_broadcast(sh->sync);
        emu_sync_unlock(sh->sync);
        return MOEMU_OK;
    }
    moemu_status_t st = MOEMU_OK;
    /* the episode is looked at first: a meeting that completed is kept
     * even if the run aborts at the same moment */
    while (sh->episode == ep) {
        if (abortable && (st = shm_why_stop(sh, r, ep)) != MOEMU_OK) {
            /* withdraw: the meeting must never complete without us, or
             * the others would go on to touch our buffers */
            sh->arrived--;
            sh->arrived_at[r] = ep;
            break;
        }
        emu_sync_wait(sh->sync);
    }
    emu_sync_unlock(sh->sync);
    return st;
}

static moemu_status_t shm_gather(void *ts, par_comm_t *c, int r,
                                 const par_slot_t *mine)
{
    c->slots[r] = *mine;
    return shm_meet(ts, r, true);
}

/* The views are the buffers themselves: the copy or reduction is the
 * only pass over the data. */
static moemu_status_t shm_open(void *ts, par_comm_t *c, int r,
                               const void **src, void **dst)
{
    (void)ts;
    for (int q = 0; q < c->n; q++) {
        par_pair_t pp;
        par_plan(c, r, q, &pp);
        const par_slot_t *s = &c->slots[q];
        src[q] = pp.get.n ? (const char *)s->send + pp.get.off * PAR_ELEM
                          : NULL;
        dst[q] = pp.put.n ? (char *)s->recv + pp.put.off * PAR_ELEM : NULL;
    }
    return MOEMU_OK;
}

static void shm_close(void *ts, par_comm_t *c, int r)
{
    (void)c;
    shm_meet(ts, r, false);
}

static moemu_status_t shm_post(void *ts, par_comm_t *c, int r, int peer,
                               par_msg_t *m)
{
    par_shm_t *sh = ts;
    (void)c, (void)r;
    par_mbox_post(&sh->mbox, sh->sync, peer, m);
    return MOEMU_OK;
}

static moemu_status_t shm_take(void *ts, par_comm_t *c, int r, int peer,
                               par_msg_t **out)
{
    par_shm_t *sh = ts;
    return par_mbox_take(&sh->mbox, sh->sync, c, r, peer, out);
}

const par_transport_t par_shm_transport = {
    .name = "shm",
    .create = shm_create,
    .destroy = shm_destroy,
    .gather = shm_gather,
    .open = shm_open,
    .close = shm_close,
    .post = shm_post,
    .take = shm_take,
};
