/* parallel private: the communicator structure, the plan of a collective's
 * data movement, and the transport table behind them, shared by comm.c,
 * coll.c and the transports (shm.c). */
#ifndef MOEMU_PAR_IMPL_H
#define MOEMU_PAR_IMPL_H

#include <stdint.h>

#include "parallel/par.h"

/* Host bytes per element: float or int32_t. */
#define PAR_ELEM 4

/* What a member brings to a collective: its arguments, clock and mode.
 * After the transport's gather, c->slots holds every member's. send and
 * recv are addresses in their owner's process: shm reads and writes them,
 * a transport between processes moves what par_plan names instead (and
 * copies the p entries of each all-to-all-v array with the slot). */
typedef struct {
    emu_coll_t kind;
    const void *send;
    void *recv;
    size_t count;
    emu_dtype_t dtype;
    par_op_t op;
    int root;
    const size_t *scounts, *sdispls, *rcounts, *rdispls; /* all-to-all-v */
    double clock;
    bool nodata; /* the member is in no-data mode: nothing moves */
} par_slot_t;

/* An eager message, from post to take. Allocated with malloc, payload too
 * (NULL when none); par_msg_free frees both. */
typedef struct par_msg {
    struct par_msg *next; /* free for the transport's queues */
    int src;
    size_t count;
    emu_dtype_t dtype;
    emu_msg_time_t t;
    bool nodata; /* sent in no-data mode: no payload */
    void *data;
} par_msg_t;

void par_msg_free(par_msg_t *m);

/* Eager messages waiting for the members of one process, FIFO per (src,
 * dst) pair, guarded by the caller's sync (shm.c's and mpi.c's). */
typedef struct {
    par_msg_t **head, **tail; /* n: messages to each member */
    int n;
} par_mbox_t;

moemu_status_t par_mbox_init(par_mbox_t *b, int n); /* MOEMU_ERR_NOMEM */
void par_mbox_clear(par_mbox_t *b);                 /* frees the messages */
void par_mbox_fini(par_mbox_t *b);                  /* and the mailbox */
/* Queue m for member to and wake the sync's waiters. */
void par_mbox_post(par_mbox_t *b, emu_sync_t *s, int to, par_msg_t *m);
/* Wait on s for the first message from peer to r of c: gives up with
 * MOEMU_ERR_PEER when the run aborts, MOEMU_ERR_INVALID when peer
 * returned without sending it. */
moemu_status_t par_mbox_take(par_mbox_t *b, emu_sync_t *s, const par_comm_t *c, int r,
                             int peer, par_msg_t **out);

/* ---- Transports: how members' contributions and messages travel.
 *
 * A collective is, for member r: gather (publish my slot, return when
 * every member's is in c->slots), then, when data moves, open (views of
 * what par_plan says r reads and writes), then close (r's writes are
 * delivered and no member still needs r's buffers). The reduction order,
 * the copies and the virtual-time charges are coll.c's, from the slots
 * and the views alone, so they are the same whatever the transport.
 * Every member calls gather; after a gather that succeeded it calls close
 * exactly once, and open at most once in between. ts is the state create
 * made for the communicator. */
typedef struct {
    const char *name;
    moemu_status_t (*create)(par_comm_t *c, void **ts);
    void (*destroy)(void *ts);
    /* Meeting 1. Gives up with MOEMU_ERR_PEER when the run aborts, or
     * MOEMU_ERR_INVALID when a member's function returned without coming,
     * and only if the meeting never completes, for anyone. */
    moemu_status_t (*gather)(void *ts, par_comm_t *c, int r,
                             const par_slot_t *mine);
    /* src[q]: the plan's get span of q's send buffer, readable; dst[q]:
     * its put span of q's receive buffer, writable until close (NULL for
     * an empty span). A copying transport may stage them. */
    moemu_status_t (*open)(void *ts, par_comm_t *c, int r, const void **src,
                           void **dst);
    /* Meeting 2; never fails: every member that gathered reaches it. */
    void (*close)(void *ts, par_comm_t *c, int r);
    /* Eager messages, FIFO per (src, dst) pair on a communicator. post
     * takes m (m->src is r); take waits for the first message from peer
     * to r and gives it to the caller; it fails as gather does. */
    moemu_status_t (*post)(void *ts, par_comm_t *c, int r, int peer,
                           par_msg_t *m);
    moemu_status_t (*take)(void *ts, par_comm_t *c, int r, int peer,
                           par_msg_t **out);
} par_transport_t;

extern const par_transport_t par_shm_transport; /* shm.c */
/* The transport of communicators whose members run in several processes
 * (mpi.c's), NULL when there is one process. */
const par_transport_t *par_spanning_transport(void);

/* Make t known by its name (the built-in "shm" always is). From one
 * thread, before the communicators that use it are created. */
moemu_status_t par_transport_register(const par_transport_t *t);
const par_transport_t *par_transport_find(const char *name);
/* The transport of communicators created from now on (not of
 * sub-communicators: they take their parent's). */
moemu_status_t par_transport_set_default(const char *name);

/* Elements [off, off + n) of a buffer. */
typedef struct {
    size_t off, n;
} par_span_t;

/* What member r moves with member q in the collective the slots describe:
 * get, the span of q's send buffer that r reads; put, the span of q's
 * receive buffer that r writes (all-reduce only). A pure function of the
 * slots, so a transport may compute any pair's: a sender what to send. */
typedef struct {
    par_span_t get, put;
} par_pair_t;

void par_plan(const par_comm_t *c, int r, int q, par_pair_t *out);

struct par_comm {
    emu_cluster_t *cluster;
    int n;
    int *granks;    /* n: global rank of each member */
    int *rank_of;   /* cluster size: member rank of each device, or -1 */
    emu_dev_t **devs;
    emu_link_t link;
    int algo[EMU_COLL__COUNT];
    size_t stream_bytes; /* outputs this large are written streaming */
    par_slot_t *slots;   /* n, written by the transport's gather */
    const par_transport_t *tp;
    void *ts; /* tp's state */
};

#endif
