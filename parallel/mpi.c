/* Devices in several processes (built --with-mpi, run under mpirun): the
 * processes themselves (start, agreement on every run's outcome, the
 * devices' figures and the outputs carried to every process) and the
 * "mpi" transport of the communicators whose members live in more than
 * one process.
 *
 * The transport: the members of one process meet as in shm (a mutex and
 * a condition variable); the last to arrive exchanges its process's slots
 * with the other processes, so that one message goes between each pair
 * of processes per collective. Data between members of one process is
 * read in place; between processes every planned span travels as one
 * point-to-point message, sent from a copy (so that an aborted run never
 * leaves MPI reading a buffer the runner frees). Every device thread
 * calls MPI itself (MPI_THREAD_MULTIPLE), and waits by polling, so that
 * it can give up when the run aborts, here or in another process. */
#include <mpi.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "parallel/par_impl.h"

enum { TAG_ABORT = 1, TAG_AGREE = 2 };
enum { PH_DATA, PH_PUT, PH_MSG, PH_MSGDATA, PH__COUNT }; /* member-pair tags */

static struct {
    bool on;
    int rank, size;
    int per;            /* --devices-per-process, 0: even blocks */
    int world;          /* devices of the last run spread, for messages */
    int tag_ub;
    MPI_Comm ctl;       /* agreements and aborts */
    atomic_int aborts_in;
    atomic_llong data_sent, meta_sent; /* bytes, for MOEMU_MPI_STATS */
    atomic_bool sent_abort;
    bool failed;        /* a failure was agreed: no process agrees again */
    moemu_status_t fail_st;
    char fail_msg[1024];
} P = {.size = 1};

/* ---- waiting */

static void mpi_poll_aborts(emu_cluster_t *cl)
{
    for (;;) {
        int flag, x;
        MPI_Message msg;
        MPI_Improbe(MPI_ANY_SOURCE, TAG_ABORT, P.ctl, &flag, &msg, MPI_STATUS_IGNORE);
        if (!flag) return;
        MPI_Mrecv(&x, 1, MPI_INT, &msg, MPI_STATUS_IGNORE);
        atomic_fetch_add(&P.aborts_in, 1);
        if (cl) emu_cluster_abort(cl);
    }
}

static void mpi_on_abort(void *arg)
{
    (void)arg;
    static const int one = 1;
    atomic_store(&P.sent_abort, true);
    for (int q = 0; q < P.size; q++) {
        if (q == P.rank) continue;
        MPI_Request rq;
        MPI_Isend(&one, 1, MPI_INT, q, TAG_ABORT, P.ctl, &rq);
        MPI_Request_free(&rq);
    }
}

/* Give up on requests: receives are cancelled (their buffers are then
 * free), sends left to MPI (their copies are never freed). */
static void mpi_drop(MPI_Request *rq, int n, const bool *is_recv)
{
    for (int i = 0; i < n; i++) {
        if (rq[i] == MPI_REQUEST_NULL) continue;
        if (is_recv[i]) {
            MPI_Cancel(&rq[i]);
            MPI_Wait(&rq[i], MPI_STATUS_IGNORE);
        } else {
            MPI_Request_free(&rq[i]);
        }
    }
}

/* Wait for n requests, polling: an abort (here or announced by another
 * process) ends the wait with MOEMU_ERR_PEER when abortable. */
static moemu_status_t mpi_wait(emu_cluster_t *cl, MPI_Request *rq, int n, const bool *is_recv,
                               bool abortable)
{
    long ns = 1000;
    for (;;) {
        int done;
        MPI_Testall(n, rq, &done, MPI_STATUSES_IGNORE);
        if (done) return MOEMU_OK;
        mpi_poll_aborts(cl);
        if (abortable && emu_cluster_aborting(cl)) {
            mpi_drop(rq, n, is_recv);
            return MOEMU_ERR_PEER;
        }
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        ns = ns < 500000 ? 2 * ns : ns;
    }
}

/* ---- the transport's state for one communicator */

/* What a member brings, as it travels. */
typedef struct {
    int32_t kind, dtype, op, root, nodata, v;
    uint64_t count;
    double clock;
} wire_slot_t;

/* A message's header. */
typedef struct {
    uint64_t count;
    int32_t dtype, nodata;
    emu_msg_time_t t;
} wire_msg_t;

typedef struct {
    void **stage; /* 2n: get and put staging per peer */
    bool opened;
    MPI_Request *rq; /* 2n */
    bool *is_recv;
    void **copy;  /* n: sends' copies */
} member_t;

typedef struct {
    par_comm_t *c;
    MPI_Comm mc;   /* the processes that host members */
    int np, me;
    int *proc;     /* n: each member's process, as a rank of mc */
    int nlocal;
    member_t **mem; /* n: local members' state, NULL for others */
    size_t *vsz;    /* n x 4n: remote members' all-to-all-v arrays */
    emu_sync_t *sync; /* guards what follows */
    int arrived;
    uint64_t episode, *arrived_at;
    bool exchanging;
    moemu_status_t xst;
    par_mbox_t mbox; /* messages between members of this process */
} par_mpi_t;

static bool local_member(const par_mpi_t *m, int q) { return m->proc[q] == m->me; }

static int pair_tag(const par_mpi_t *m, int ph, int src, int dst)
{
    int n = m->c->n;
    return (ph * n + src) * n + dst;
}

static void mpi_reset(void *arg)
{
    par_mpi_t *m = arg;
    m->arrived = 0;
    m->episode = 0;
    m->exchanging = false;
    memset(m->arrived_at, 0, (size_t)m->c->n * sizeof *m->arrived_at);
    par_mbox_clear(&m->mbox);
}

static void member_free(member_t *u, int n)
{
    if (!u) return;
    for (int i = 0; i < 2 * n; i++) free(u->stage[i]);
    free(u->stage);
    free(u->rq);
    free(u->is_recv);
    free(u->copy);
    free(u);
}

static void mpi_destroy(void *ts)
{
    par_mpi_t *m = ts;
    if (!m) return;
    int n = m->c->n;
    for (int q = 0; m->mem && q < n; q++) member_free(m->mem[q], n);
    par_mbox_fini(&m->mbox);
    if (m->mc != MPI_COMM_NULL) MPI_Comm_free(&m->mc);
    emu_sync_destroy(m->sync);
    free(m->mem);
    free(m->proc);
    free(m->vsz);
    free(m->arrived_at);
    free(m);
}

static member_t *member_new(int n)
{
    member_t *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->stage = calloc(2 * (size_t)n, sizeof *u->stage);
    u->rq = malloc(2 * (size_t)n * sizeof *u->rq);
    u->is_recv = malloc(2 * (size_t)n * sizeof *u->is_recv);
    u->copy = calloc((size_t)n, sizeof *u->copy);
    if (!u->stage || !u->rq || !u->is_recv || !u->copy) {
        member_free(u, n);
        return NULL;
    }
    return u;
}

/* The processes hosting members, as a communicator of their own, created
 * by them alone in the order every process creates communicators. */
static moemu_status_t mpi_group(par_mpi_t *m)
{
    par_comm_t *c = m->c;
    int lo, hi, world = emu_cluster_size(c->cluster);
    int *hosts = malloc((size_t)P.size * sizeof *hosts), np = 0;
    if (!hosts) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d processes", P.size);
    for (int p = 0; p < P.size; p++) {
        par_proc_devices(world, p, &lo, &hi);
        bool has = false;
        for (int q = 0; q < c->n && !has; q++) has = c->granks[q] >= lo && c->granks[q] < hi;
        if (!has) continue;
        if (p == P.rank) m->me = np;
        for (int q = 0; q < c->n; q++)
            if (c->granks[q] >= lo && c->granks[q] < hi) m->proc[q] = np;
        hosts[np++] = p;
    }
    m->np = np;
    MPI_Group wg, g;
    MPI_Comm_group(P.ctl, &wg);
    MPI_Group_incl(wg, np, hosts, &g);
    int e = MPI_Comm_create_group(P.ctl, g, 0, &m->mc);
    MPI_Group_free(&g);
    MPI_Group_free(&wg);
    free(hosts);
    if (e != MPI_SUCCESS)
        return moemu_fail(MOEMU_ERR_INTERNAL, "MPI cannot create a communicator of %d "
                          "processes", np);
    return MOEMU_OK;
}

static moemu_status_t mpi_create(par_comm_t *c, void **ts)
{
    *ts = NULL;
    int n = c->n;
    if ((double)PH__COUNT * n * n > P.tag_ub)
        return moemu_fail(MOEMU_ERR_INVALID, "a communicator of %d devices over processes "
                          "needs MPI tags up to %d; this MPI allows %d", n,
                          PH__COUNT * n * n, P.tag_ub);
    par_mpi_t *m = calloc(1, sizeof *m);
    if (!m) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate a communicator of %d", n);
    m->c = c;
    m->mc = MPI_COMM_NULL;
    m->me = -1;
    m->proc = malloc((size_t)n * sizeof *m->proc);
    m->mem = calloc((size_t)n, sizeof *m->mem);
    m->arrived_at = calloc((size_t)n, sizeof *m->arrived_at);
    m->vsz = malloc(4 * (size_t)n * n * sizeof *m->vsz);
    moemu_status_t st = MOEMU_OK;
    if (!m->proc || !m->mem || !m->arrived_at || !m->vsz ||
        par_mbox_init(&m->mbox, n) != MOEMU_OK)
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate a communicator of %d", n);
    if (st == MOEMU_OK) {
        for (int q = 0; q < n; q++) m->proc[q] = -1;
        st = mpi_group(m);
    }
    for (int q = 0; st == MOEMU_OK && q < n; q++)
        if (m->me >= 0 && local_member(m, q)) {
            m->nlocal++;
            if (!(m->mem[q] = member_new(n)))
                st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate member %d's state", q);
        }
    if (st == MOEMU_OK) st = emu_sync_create(c->cluster, mpi_reset, m, &m->sync);
    if (st != MOEMU_OK) {
        mpi_destroy(m);
        return st;
    }
    *ts = m;
    return MOEMU_OK;
}

/* ---- the slots between processes */

static size_t slot_bytes(int n) { return sizeof(wire_slot_t) + 4 * (size_t)n * sizeof(uint64_t); }

static char *slot_pack(char *p, const par_slot_t *s, int n)
{
    wire_slot_t w = {.kind = s->kind, .dtype = s->dtype, .op = s->op, .root = s->root,
                     .nodata = s->nodata, .v = s->scounts != NULL, .count = s->count,
                     .clock = s->clock};
    memcpy(p, &w, sizeof w);
    p += sizeof w;
    if (!w.v) return p;
    const size_t *arr[4] = {s->scounts, s->sdispls, s->rcounts, s->rdispls};
    for (int a = 0; a < 4; a++)
        for (int i = 0; i < n; i++, p += sizeof(uint64_t)) {
            uint64_t x = arr[a][i];
            memcpy(p, &x, sizeof x);
        }
    return p;
}

static const char *slot_unpack(par_mpi_t *m, const char *p, int q)
{
    int n = m->c->n;
    wire_slot_t w;
    memcpy(&w, p, sizeof w);
    p += sizeof w;
    par_slot_t *s = &m->c->slots[q];
    *s = (par_slot_t){.kind = w.kind, .dtype = w.dtype, .op = w.op, .root = w.root,
                      .nodata = w.nodata, .count = w.count, .clock = w.clock};
    if (!w.v) return p;
    size_t *v = m->vsz + (size_t)q * 4 * n;
    for (int i = 0; i < 4 * n; i++, p += sizeof(uint64_t)) {
        uint64_t x;
        memcpy(&x, p, sizeof x);
        v[i] = (size_t)x;
    }
    s->scounts = v;
    s->sdispls = v + n;
    s->rcounts = v + 2 * n;
    s->rdispls = v + 3 * n;
    return p;
}

/* The last member of this process to arrive: this process's slots to
 * every other, theirs into c->slots. */
static moemu_status_t mpi_exchange(par_mpi_t *m)
{
    par_comm_t *c = m->c;
    int n = c->n, np = m->np;
    size_t one = slot_bytes(n);
    char *out = malloc(one * (size_t)m->nlocal), *in = malloc(one * (size_t)n);
    MPI_Request *rq = malloc(2 * (size_t)np * sizeof *rq);
    bool *is_recv = malloc(2 * (size_t)np * sizeof *is_recv);
    size_t *off = malloc((size_t)(np + 1) * sizeof *off);
    if (!out || !in || !rq || !is_recv || !off) {
        free(out), free(in), free(rq), free(is_recv), free(off);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the slots of %d members", n);
    }
    char *p = out;
    for (int q = 0; q < n; q++)
        if (local_member(m, q)) p = slot_pack(p, &c->slots[q], n);
    off[0] = 0;
    for (int k = 0; k < np; k++) {
        int cnt = 0;
        for (int q = 0; q < n; q++) cnt += m->proc[q] == k;
        off[k + 1] = off[k] + one * (size_t)cnt;
    }
    int nr = 0;
    for (int k = 0; k < np; k++) {
        if (k == m->me) continue;
        is_recv[nr] = false;
        MPI_Isend(out, (int)(p - out), MPI_BYTE, k, 0, m->mc, &rq[nr++]);
        atomic_fetch_add(&P.meta_sent, p - out);
        is_recv[nr] = true;
        MPI_Irecv(in + off[k], (int)(off[k + 1] - off[k]), MPI_BYTE, k, 0, m->mc, &rq[nr++]);
    }
    moemu_status_t st = mpi_wait(c->cluster, rq, nr, is_recv, true);
    if (st == MOEMU_OK) {
        for (int k = 0; k < np; k++) {
            const char *s = in + off[k];
            for (int q = 0; k != m->me && q < n; q++)
                if (m->proc[q] == k) s = slot_unpack(m, s, q);
        }
        free(out);
    } /* else the sends may still read out: it stays */
    free(in), free(rq), free(is_recv), free(off);
    return st;
}

/* ---- the members of this process: meetings as in shm */

static moemu_status_t why_stop(const par_mpi_t *m, int r, uint64_t ep)
{
    const par_comm_t *c = m->c;
    if (emu_cluster_aborting(c->cluster))
        return moemu_fail(MOEMU_ERR_PEER, "stopped: another device failed while device %d "
                          "waited for its communicator", c->granks[r]);
    for (int q = 0; q < c->n; q++)
        if (local_member(m, q) && m->arrived_at[q] <= ep && emu_dev_done(c->devs[q]))
            return moemu_fail(MOEMU_ERR_INVALID, "device %d (rank %d of a communicator of %d) "
                              "returned without joining the collective that device %d waits "
                              "in", c->granks[q], q, c->n, c->granks[r]);
    return MOEMU_OK;
}

/* Meet this process's members; with exchange, the last to come trades
 * the slots with the other processes before anyone leaves. */
static moemu_status_t mpi_meet(par_mpi_t *m, int r, bool abortable, bool exchange)
{
    emu_sync_lock(m->sync);
    uint64_t ep = m->episode;
    m->arrived_at[r] = ep + 1;
    moemu_status_t st = MOEMU_OK;
    if (++m->arrived == m->nlocal) {
        m->arrived = 0;
        if (exchange) {
            m->exchanging = true;
            emu_sync_unlock(m->sync);
            st = mpi_exchange(m);
            emu_sync_lock(m->sync);
            m->xst = st;
            m->exchanging = false;
        }
        m->episode++;
        emu_sync_broadcast(m->sync);
        emu_sync_unlock(m->sync);
        return st;
    }
    while (m->episode == ep) {
        if (abortable && !m->exchanging && (st = why_stop(m, r, ep)) != MOEMU_OK) {
            m->arrived--;
            m->arrived_at[r] = ep;
            break;
        }
        emu_sync_wait(m->sync);
    }
    if (st == MOEMU_OK && exchange) st = m->xst;
    emu_sync_unlock(m->sync);
    return st;
}

static moemu_status_t peer_stop(const par_comm_t *c, int r)
{
    return moemu_fail(MOEMU_ERR_PEER, "stopped: another device failed while device %d waited "
                      "for devices of other processes", c->granks[r]);
}

static moemu_status_t mpi_gather(void *ts, par_comm_t *c, int r, const par_slot_t *mine)
{
    par_mpi_t *m = ts;
    c->slots[r] = *mine;
    moemu_status_t st = mpi_meet(m, r, true, true);
    return st == MOEMU_ERR_PEER && !moemu_errmsg()[0] ? peer_stop(c, r) : st;
}

/* ---- data */

static void *stage(member_t *u, int i, size_t n)
{
    free(u->stage[i]);
    return u->stage[i] = malloc(n ? n : 1);
}

static moemu_status_t mpi_open(void *ts, par_comm_t *c, int r, const void **src, void **dst)
{
    par_mpi_t *m = ts;
    member_t *u = m->mem[r];
    int n = c->n, nr = 0;
    const par_slot_t *me = &c->slots[r];
    for (int q = 0; q < n; q++) {
        par_pair_t pp, theirs;
        par_plan(c, r, q, &pp);
        const par_slot_t *s = &c->slots[q];
        if (local_member(m, q)) {
            src[q] = pp.get.n ? (const char *)s->send + pp.get.off * PAR_ELEM : NULL;
            dst[q] = pp.put.n ? (char *)s->recv + pp.put.off * PAR_ELEM : NULL;
            continue;
        }
        src[q] = dst[q] = NULL;
        void *g = pp.get.n ? stage(u, 2 * q, pp.get.n * PAR_ELEM) : NULL;
        void *p = pp.put.n ? stage(u, 2 * q + 1, pp.put.n * PAR_ELEM) : NULL;
        par_plan(c, q, r, &theirs);
        void *cp = theirs.get.n ? malloc(theirs.get.n * PAR_ELEM) : NULL;
        if ((pp.get.n && !g) || (pp.put.n && !p) || (theirs.get.n && !cp)) {
            free(cp);
            mpi_drop(u->rq, nr, u->is_recv);
            return moemu_fail(MOEMU_ERR_NOMEM, "device %d: no host memory to stage a "
                              "collective", c->granks[r]);
        }
        src[q] = g;
        dst[q] = p;
        if (g) {
            u->is_recv[nr] = true;
            MPI_Irecv(g, (int)(pp.get.n * PAR_ELEM), MPI_BYTE, m->proc[q],
                      pair_tag(m, PH_DATA, q, r), m->mc, &u->rq[nr++]);
        }
        if (cp) {
            memcpy(cp, (const char *)me->send + theirs.get.off * PAR_ELEM,
                   theirs.get.n * PAR_ELEM);
            u->copy[q] = cp;
            u->is_recv[nr] = false;
            atomic_fetch_add(&P.data_sent, (long long)(theirs.get.n * PAR_ELEM));
            MPI_Isend(cp, (int)(theirs.get.n * PAR_ELEM), MPI_BYTE, m->proc[q],
                      pair_tag(m, PH_DATA, r, q), m->mc, &u->rq[nr++]);
        }
    }
    moemu_status_t st = mpi_wait(c->cluster, u->rq, nr, u->is_recv, true);
    for (int q = 0; q < n; q++) {
        if (st == MOEMU_OK) free(u->copy[q]); /* else MPI may still read it */
        u->copy[q] = NULL;
    }
    u->opened = st == MOEMU_OK;
    return st == MOEMU_OK ? st : peer_stop(c, r);
}

/* The staged writes (all-reduce) to their owners, ours from them. */
static void mpi_puts(par_mpi_t *m, par_comm_t *c, int r)
{
    member_t *u = m->mem[r];
    int nr = 0;
    for (int q = 0; q < c->n; q++) {
        if (local_member(m, q)) continue;
        par_pair_t pp, theirs;
        par_plan(c, r, q, &pp);
        par_plan(c, q, r, &theirs);
        if (pp.put.n) {
            u->is_recv[nr] = false;
            atomic_fetch_add(&P.data_sent, (long long)(pp.put.n * PAR_ELEM));
            MPI_Isend(u->stage[2 * q + 1], (int)(pp.put.n * PAR_ELEM), MPI_BYTE, m->proc[q],
                      pair_tag(m, PH_PUT, r, q), m->mc, &u->rq[nr++]);
        }
        if (theirs.put.n) {
            u->is_recv[nr] = true;
            MPI_Irecv((char *)c->slots[r].recv + theirs.put.off * PAR_ELEM,
                      (int)(theirs.put.n * PAR_ELEM), MPI_BYTE, m->proc[q],
                      pair_tag(m, PH_PUT, q, r), m->mc, &u->rq[nr++]);
        }
    }
    if (mpi_wait(c->cluster, u->rq, nr, u->is_recv, true) != MOEMU_OK)
        for (int q = 0; q < c->n; q++) u->stage[2 * q + 1] = NULL; /* MPI may read them */
}

static void mpi_close(void *ts, par_comm_t *c, int r)
{
    par_mpi_t *m = ts;
    member_t *u = m->mem[r];
    if (u->opened) mpi_puts(m, c, r);
    u->opened = false;
    for (int i = 0; i < 2 * c->n; i++) {
        free(u->stage[i]);
        u->stage[i] = NULL;
    }
    mpi_meet(m, r, false, false);
}

/* ---- messages */

static moemu_status_t mpi_post(void *ts, par_comm_t *c, int r, int peer, par_msg_t *x)
{
    par_mpi_t *m = ts;
    if (local_member(m, peer)) {
        par_mbox_post(&m->mbox, m->sync, peer, x);
        return MOEMU_OK;
    }
    /* the header and payload travel from x, which MPI then owns */
    wire_msg_t *h = malloc(sizeof *h);
    if (!h) {
        par_msg_free(x);
        return moemu_fail(MOEMU_ERR_NOMEM, "device %d: no host memory for a message",
                          c->granks[r]);
    }
    *h = (wire_msg_t){.count = x->count, .dtype = x->dtype, .nodata = x->nodata, .t = x->t};
    MPI_Request rq[2];
    MPI_Isend(h, sizeof *h, MPI_BYTE, m->proc[peer], pair_tag(m, PH_MSG, r, peer), m->mc, &rq[0]);
    atomic_fetch_add(&P.meta_sent, (long long)sizeof *h);
    MPI_Request_free(&rq[0]);
    if (x->data) {
        atomic_fetch_add(&P.data_sent, (long long)(x->count * PAR_ELEM));
        MPI_Isend(x->data, (int)(x->count * PAR_ELEM), MPI_BYTE, m->proc[peer],
                  pair_tag(m, PH_MSGDATA, r, peer), m->mc, &rq[1]);
        MPI_Request_free(&rq[1]);
    }
    free(x); /* the header and payload are MPI's until delivered: never freed */
    return MOEMU_OK;
}

static moemu_status_t mpi_take(void *ts, par_comm_t *c, int r, int peer, par_msg_t **out)
{
    par_mpi_t *m = ts;
    *out = NULL;
    if (local_member(m, peer)) return par_mbox_take(&m->mbox, m->sync, c, r, peer, out);
    wire_msg_t h;
    MPI_Request rq;
    bool is_recv = true;
    MPI_Irecv(&h, sizeof h, MPI_BYTE, m->proc[peer], pair_tag(m, PH_MSG, peer, r), m->mc, &rq);
    if (mpi_wait(c->cluster, &rq, 1, &is_recv, true) != MOEMU_OK) return peer_stop(c, r);
    par_msg_t *x = calloc(1, sizeof *x);
    void *data = x && !h.nodata && h.count ? malloc(h.count * PAR_ELEM) : NULL;
    if (!x || (!h.nodata && h.count && !data)) {
        free(x);
        return moemu_fail(MOEMU_ERR_NOMEM, "device %d: no host memory for a message of %llu "
                          "elements", c->granks[r], (unsigned long long)h.count);
    }
    *x = (par_msg_t){.src = peer, .count = h.count, .dtype = h.dtype, .nodata = h.nodata,
                     .t = h.t, .data = data};
    if (data) {
        MPI_Irecv(data, (int)(h.count * PAR_ELEM), MPI_BYTE, m->proc[peer],
                  pair_tag(m, PH_MSGDATA, peer, r), m->mc, &rq);
        if (mpi_wait(c->cluster, &rq, 1, &is_recv, true) != MOEMU_OK) {
            par_msg_free(x);
            return peer_stop(c, r);
        }
    }
    *out = x;
    return MOEMU_OK;
}

static const par_transport_t par_mpi_transport = {
    .name = "mpi",
    .create = mpi_create,
    .destroy = mpi_destroy,
    .gather = mpi_gather,
    .open = mpi_open,
    .close = mpi_close,
    .post = mpi_post,
    .take = mpi_take,
};

/* ---- processes */

static bool launched_by_mpirun(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK",
                                       "MPI_LOCALNRANKS"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

moemu_status_t par_proc_init(int *argc, char ***argv)
{
    if (!launched_by_mpirun()) return MOEMU_OK;
    int got;
    MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &got);
    MPI_Comm_dup(MPI_COMM_WORLD, &P.ctl);
    MPI_Comm_set_errhandler(P.ctl, MPI_ERRORS_RETURN);
    MPI_Comm_rank(P.ctl, &P.rank);
    MPI_Comm_size(P.ctl, &P.size);
    P.on = true;
    int *ub, flag;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &ub, &flag);
    P.tag_ub = flag ? *ub : 32767;
    if (got < MPI_THREAD_MULTIPLE)
        return moemu_fail(MOEMU_ERR_INVALID, "this MPI does not let device threads call it "
                          "at once (MPI_THREAD_MULTIPLE); rebuild Open MPI or MPICH with "
                          "thread support");
    MOEMU_CHECK(par_transport_register(&par_mpi_transport));
    /* the same command line everywhere, or processes would run different jobs */
    uint64_t h = EMU_FNV1A_INIT;
    for (int i = 1; i < *argc; i++) h = emu_fnv1a(h, (*argv)[i], strlen((*argv)[i]) + 1);
    return par_proc_agree(MOEMU_OK, h);
}

void par_proc_finalize(void)
{
    if (!P.on) return;
    P.on = false;
    /* host bytes (fp32 values) this process sent to others, for bench/ */
    if (getenv("MOEMU_MPI_STATS"))
        fprintf(stderr, "moemu: process %d sent %lld bytes of data and %lld of slots and "
                "headers over MPI\n", P.rank, (long long)atomic_load(&P.data_sent),
                (long long)atomic_load(&P.meta_sent));
    MPI_Comm_free(&P.ctl);
    MPI_Finalize();
}

int par_proc_rank(void) { return P.rank; }
int par_proc_count(void) { return P.size; }

moemu_status_t par_proc_set_devices_per_process(int n)
{
    if (n < 0)
        return moemu_fail(MOEMU_ERR_INVALID, "--devices-per-process %d: must be positive", n);
    P.per = n;
    return MOEMU_OK;
}

void par_proc_devices(int world, int p, int *lo, int *hi)
{
    int per = P.per ? P.per : (world + P.size - 1) / P.size;
    *lo = p * per < world ? p * per : world;
    *hi = *lo + per < world ? *lo + per : world;
}

const par_transport_t *par_spanning_transport(void) { return P.on ? &par_mpi_transport : NULL; }

/* What each process brings to an agreement. */
typedef struct {
    int32_t st, dev, peer, sent;
    uint64_t fp;
    char msg[1000];
} agree_t;

static void describe_proc(int p, char *buf, size_t n)
{
    int lo, hi;
    if (P.world > 0) par_proc_devices(P.world, p, &lo, &hi);
    if (P.world > 0 && hi > lo)
        snprintf(buf, n, "process %d (devices %d-%d)", p, lo, hi - 1);
    else
        snprintf(buf, n, "process %d", p);
}

/* The failure to report: a device's own before a non-device one before a
 * "stopped", then the lowest device or process (as one process orders
 * its devices' failures). */
static int agree_pick(const agree_t *a, int n)
{
    int best = -1, best_key = 0;
    for (int p = 0; p < n; p++) {
        if (a[p].st == MOEMU_OK) continue;
        int key = a[p].peer ? 2 * 1000000 + a[p].dev
                  : a[p].dev >= 0 ? a[p].dev : 1000000 + p;
        if (best < 0 || key < best_key) best = p, best_key = key;
    }
    return best;
}

static moemu_status_t agree(agree_t *mine, agree_t **all)
{
    if (P.failed) return moemu_fail(P.fail_st, "%s", P.fail_msg);
    *all = malloc((size_t)P.size * sizeof **all);
    if (!*all) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d agreements", P.size);
    MPI_Allgather(mine, sizeof *mine, MPI_BYTE, *all, sizeof *mine, MPI_BYTE, P.ctl);
    agree_t *a = *all;
    int f = agree_pick(a, P.size);
    if (f >= 0) {
        char who[64] = "";
        if (a[f].dev < 0 && f != P.rank) describe_proc(f, who, sizeof who);
        P.failed = true;
        P.fail_st = (moemu_status_t)a[f].st;
        snprintf(P.fail_msg, sizeof P.fail_msg, "%s%s%s", who, who[0] ? ": " : "", a[f].msg);
        return moemu_fail(P.fail_st, "%s", P.fail_msg);
    }
    for (int p = 1; p < P.size; p++)
        if (a[p].fp != a[0].fp) {
            P.failed = true;
            P.fail_st = MOEMU_ERR_INVALID;
            snprintf(P.fail_msg, sizeof P.fail_msg, "process %d runs another job than process "
                     "0 (its command line, model, workload or strategy differs): every process "
                     "must be started with the same arguments and files", p);
            return moemu_fail(P.fail_st, "%s", P.fail_msg);
        }
    return MOEMU_OK;
}

moemu_status_t par_proc_agree(moemu_status_t st, uint64_t fingerprint)
{
    if (!P.on) return st;
    agree_t mine = {.st = st, .dev = -1, .fp = fingerprint};
    if (st != MOEMU_OK) snprintf(mine.msg, sizeof mine.msg, "%s", moemu_errmsg());
    agree_t *all = NULL;
    moemu_status_t r = agree(&mine, &all);
    free(all);
    return r;
}

/* What a process says when the launcher ends the job under it (another
 * process died): itself, and every process's devices. */
static char stop_note[1024];

static void stop_note_set(void)
{
    char who[64];
    describe_proc(P.rank, who, sizeof who);
    size_t n = (size_t)snprintf(stop_note, sizeof stop_note, "moemu: %s stopped: the launcher "
                                "ended the job (a process failed or was killed: mpirun names "
                                "its rank)", who);
    for (int p = 0; P.world > 0 && p < P.size && n < sizeof stop_note; p++) {
        int lo, hi;
        par_proc_devices(P.world, p, &lo, &hi);
        n += (size_t)snprintf(stop_note + n, sizeof stop_note - n, "%s%d: %d-%d",
                              p ? ", " : "; devices by process: ", p, lo, hi - 1);
    }
    if (n < sizeof stop_note - 1) strcpy(stop_note + n, "\n");
    else stop_note[sizeof stop_note - 2] = '\n';
}

const char *par_proc_stop_note(void) { return stop_note; }

moemu_status_t par_proc_cluster(int world, bool spread, emu_cluster_opts_t *o)
{
    if (!P.on) return MOEMU_OK;
    int per = P.per ? P.per : (world + P.size - 1) / P.size;
    if (spread && (double)per * P.size < world)
        return moemu_fail(MOEMU_ERR_INVALID, "%d devices do not fit %d processes of %d "
                          "devices (--devices-per-process)", world, P.size, per);
    P.world = spread ? world : 0;
    stop_note_set();
    int lo = 0, hi = world;
    if (spread) par_proc_devices(world, P.rank, &lo, &hi);
    else if (P.rank != 0) lo = hi = 0;
    o->local0 = lo;
    o->local1 = hi;
    if (lo == hi) o->local0 = o->local1 = world; /* none here (0, 0 would be all) */
    o->on_abort = mpi_on_abort;
    /* the launcher places processes on cores; threads stay where it put them */
    o->no_pin = o->no_pin || P.size > 1;
    return MOEMU_OK;
}

/* Every device's figures to every process. */
static moemu_status_t share_figures(emu_cluster_t *cl)
{
    int lo, hi, n = emu_cluster_size(cl);
    emu_cluster_local(cl, &lo, &hi);
    size_t sz = 0;
    for (int d = lo; d < hi; d++) sz += emu_dev_export(emu_cluster_dev(cl, d), NULL, 0);
    int *cnt = malloc((size_t)P.size * sizeof *cnt), *disp = malloc((size_t)P.size * sizeof *disp);
    int *ends = malloc((size_t)n * sizeof *ends), mine_n = hi - lo;
    char *mine = malloc(sz + 1);
    int *alln = malloc((size_t)P.size * sizeof *alln);
    moemu_status_t st = MOEMU_OK;
    if (!cnt || !disp || !ends || !mine || !alln || sz > INT32_MAX) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot carry the figures of %d devices (%zu bytes)",
                        n, sz);
        goto out;
    }
    int *myends = malloc(((size_t)mine_n + 1) * sizeof *myends);
    size_t at = 0;
    for (int d = lo; d < hi; d++) {
        at += emu_dev_export(emu_cluster_dev(cl, d), mine + at, sz - at);
        myends[d - lo] = (int)at;
    }
    int isz = (int)sz;
    MPI_Allgather(&isz, 1, MPI_INT, cnt, 1, MPI_INT, P.ctl);
    MPI_Allgather(&mine_n, 1, MPI_INT, alln, 1, MPI_INT, P.ctl);
    long total = 0;
    for (int p = 0; p < P.size; p++) disp[p] = (int)total, total += cnt[p];
    int *ndisp = malloc((size_t)P.size * sizeof *ndisp), nt = 0;
    for (int p = 0; p < P.size; p++) ndisp[p] = nt, nt += alln[p];
    MPI_Allgatherv(myends, mine_n, MPI_INT, ends, alln, ndisp, MPI_INT, P.ctl);
    char *buf = total < INT32_MAX ? malloc((size_t)total + 1) : NULL;
    if (!buf) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot carry %ld bytes of device figures", total);
    } else {
        MPI_Allgatherv(mine, isz, MPI_BYTE, buf, cnt, disp, MPI_BYTE, P.ctl);
        /* devices come in rank order: process p's are the next alln[p] */
        int d = 0;
        for (int p = 0; p < P.size && st == MOEMU_OK; p++)
            for (int i = 0, prev = 0; i < alln[p] && st == MOEMU_OK; i++, d++) {
                int e = ends[ndisp[p] + i];
                if (d < lo || d >= hi)
                    st = emu_dev_import(emu_cluster_dev(cl, d), buf + disp[p] + prev,
                                        (size_t)(e - prev));
                prev = e;
            }
    }
    free(buf), free(ndisp), free(myends);
out:
    free(cnt), free(disp), free(ends), free(mine), free(alln);
    return st;
}

moemu_status_t par_proc_after_run(emu_cluster_t *cl, moemu_status_t st)
{
    if (!P.on) return st;
    if (P.failed) return moemu_fail(P.fail_st, "%s", P.fail_msg);
    bool peer = false;
    int dev = st != MOEMU_OK && cl ? emu_cluster_failure(cl, &peer) : -1;
    /* a process that failed before its devices ran releases the others' */
    if (st != MOEMU_OK && !atomic_load(&P.sent_abort)) mpi_on_abort(NULL);
    agree_t mine = {.st = st, .dev = dev, .peer = peer, .sent = atomic_load(&P.sent_abort)};
    if (st != MOEMU_OK) snprintf(mine.msg, sizeof mine.msg, "%s", moemu_errmsg());
    agree_t *all = NULL;
    moemu_status_t r = agree(&mine, &all);
    /* every abort notice of this run is taken before the next */
    int expect = 0;
    for (int p = 0; all && p < P.size; p++) expect += p != P.rank && all[p].sent;
    while (atomic_load(&P.aborts_in) < expect) {
        int x;
        MPI_Recv(&x, 1, MPI_INT, MPI_ANY_SOURCE, TAG_ABORT, P.ctl, MPI_STATUS_IGNORE);
        atomic_fetch_add(&P.aborts_in, 1);
    }
    atomic_store(&P.aborts_in, 0);
    atomic_store(&P.sent_abort, false);
    free(all);
    if (r != MOEMU_OK || !cl) return r;
    return share_figures(cl);
}

static void merge_f32_nan(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    float *a = in, *b = inout;
    for (int i = 0; i < *len; i++)
        if (b[i] != b[i]) b[i] = a[i];
}

moemu_status_t par_proc_merge(void *buf, size_t n, par_merge_t how)
{
    if (!P.on || P.size == 1 || !buf) return MOEMU_OK;
    static MPI_Op nan_op = MPI_OP_NULL;
    if (how == PAR_MERGE_F32_NAN && nan_op == MPI_OP_NULL) MPI_Op_create(merge_f32_nan, 1, &nan_op);
    MPI_Datatype dt = how == PAR_MERGE_I32_MAX   ? MPI_INT32_T
                      : how == PAR_MERGE_F32_NAN ? MPI_FLOAT
                      : how == PAR_MERGE_I64_SUM ? MPI_INT64_T
                                                 : MPI_DOUBLE;
    MPI_Op op = how == PAR_MERGE_I32_MAX ? MPI_MAX : how == PAR_MERGE_F32_NAN ? nan_op : MPI_SUM;
    size_t esz = how == PAR_MERGE_I64_SUM || how == PAR_MERGE_F64_SUM ? 8 : 4;
    for (size_t at = 0; at < n;) {
        size_t k = n - at < ((size_t)1 << 28) ? n - at : (size_t)1 << 28;
        MPI_Allreduce(MPI_IN_PLACE, (char *)buf + at * esz, (int)k, dt, op, P.ctl);
        at += k;
    }
    return MOEMU_OK;
}

bool par_proc_exit(bool failed, const char *msg)
{
    bool elsewhere = false;
    if (P.on && !P.failed) {
        agree_t mine = {.st = failed ? MOEMU_ERR_INVALID : MOEMU_OK, .dev = -1};
        snprintf(mine.msg, sizeof mine.msg, "%s", failed && msg ? msg : "");
        agree_t *all = NULL;
        elsewhere = agree(&mine, &all) != MOEMU_OK && !failed;
        free(all);
    }
    par_proc_finalize();
    return elsewhere;
}
