/* parallel: communicators and collectives between the devices of one
 * emulated cluster, shaped like NCCL's. Data lives on the host: float for
 * EMU_DTYPE_FP32, FP16 and BF16 (values are not rounded: the dtype only
 * sets the bytes charged on the wire, 4, 2 and 2 per element) and int32_t
 * for EMU_DTYPE_INT32. Counts are in elements.
 *
 * Every member of a communicator calls the same collectives in the same
 * order, each from its own device thread, passing its own device. A
 * collective returns when this member's part is done; buffers belong to
 * the caller and may be reused on return.
 *
 * Results are the same bits on every rank whatever the arrival order:
 * each element is reduced once, in rank order 0..p-1 (((x0 + x1) + x2) ...).
 *
 * In place (as in NCCL):
 *   all-reduce      recvbuf == sendbuf
 *   reduce-scatter  recvbuf == sendbuf + rank * recvcount
 *   all-gather      sendbuf == recvbuf + rank * sendcount
 *   broadcast       recvbuf == sendbuf (sendbuf is read on the root only)
 * Other overlaps, and any overlap in all-to-all, are not allowed.
 *
 * Errors: a bad argument (a NULL buffer with count > 0, a device that is
 * not a member, a bad dtype, op, root or peer) is MOEMU_ERR_INVALID before
 * anything moves. Members that disagree (kind, count, dtype, op, root,
 * all-to-all counts) all get MOEMU_ERR_INVALID. When the run aborts
 * (another device failed) a waiting member gets MOEMU_ERR_PEER; when a
 * member's function returned without joining, MOEMU_ERR_INVALID. After an
 * error the communicator is unusable until the cluster's next run.
 *
 * Virtual time: emu's cost model (emu_coll_charge, emu_coll_alltoall,
 * emu_p2p_send/recv): a collective starts at its members' latest clock and
 * costs its algorithm's closed form over the slowest link class the group
 * crosses; see docs/emulation.md. */
#ifndef MOEMU_PAR_H
#define MOEMU_PAR_H

#include <stddef.h>

#include "emu/emu.h"

typedef enum { PAR_OP_SUM = 0, PAR_OP_MAX, PAR_OP__COUNT } par_op_t;

const char *par_op_name(par_op_t op); /* "sum", "max" */

/* An ordered group of devices of one cluster. */
typedef struct par_comm par_comm_t;

/* Members are the cluster's global device ranks ranks[0..n-1], in comm
 * rank order, all distinct. Create communicators before the run that uses
 * them (from one thread); destroy them after it, before the cluster.
 * Collectives on different communicators may run at the same time. */
moemu_status_t par_comm_create(emu_cluster_t *cluster, const int *ranks, int n,
                               par_comm_t **out);
/* All devices of the cluster, comm rank = global rank. */
moemu_status_t par_comm_create_world(emu_cluster_t *cluster, par_comm_t **out);
/* A sub-group given by ranks in parent (so a sub-communicator of a
 * sub-communicator works as expected). */
moemu_status_t par_comm_create_sub(const par_comm_t *parent, const int *ranks,
                                   int n, par_comm_t **out);
void par_comm_destroy(par_comm_t *comm);

int par_comm_size(const par_comm_t *comm);
/* dev's rank in comm, -1 if it is not a member. */
int par_comm_rank(const par_comm_t *comm, const emu_dev_t *dev);
int par_comm_global_rank(const par_comm_t *comm, int rank);
/* The slowest link class between members (what the collectives pay). */
emu_link_t par_comm_link(const par_comm_t *comm);
/* Choose the cost algorithm of one collective by name (emu's table:
 * "ring"/"tree" for all-reduce, "pipeline"/"binomial" for broadcast).
 * Before the run, from one thread. */
moemu_status_t par_comm_set_algo(par_comm_t *comm, emu_coll_t kind,
                                 const char *name);

/* recvbuf (count) = op over ranks of sendbuf (count). */
moemu_status_t par_allreduce(const void *sendbuf, void *recvbuf, size_t count,
                             emu_dtype_t dtype, par_op_t op, par_comm_t *comm,
                             emu_dev_t *dev);
/* recvbuf (recvcount) = slice rank of op over ranks of sendbuf
 * (p * recvcount). */
moemu_status_t par_reduce_scatter(const void *sendbuf, void *recvbuf,
                                  size_t recvcount, emu_dtype_t dtype,
                                  par_op_t op, par_comm_t *comm,
                                  emu_dev_t *dev);
/* recvbuf (p * sendcount): slice q = sendbuf (sendcount) of rank q. */
moemu_status_t par_allgather(const void *sendbuf, void *recvbuf,
                             size_t sendcount, emu_dtype_t dtype,
                             par_comm_t *comm, emu_dev_t *dev);
/* recvbuf (count) = root's sendbuf (count). */
moemu_status_t par_broadcast(const void *sendbuf, void *recvbuf, size_t count,
                             emu_dtype_t dtype, int root, par_comm_t *comm,
                             emu_dev_t *dev);
/* Equal blocks: block q of sendbuf (p * count) goes to rank q, whose
 * block r of recvbuf receives it. */
moemu_status_t par_alltoall(const void *sendbuf, void *recvbuf, size_t count,
                            emu_dtype_t dtype, par_comm_t *comm,
                            emu_dev_t *dev);
/* Per-peer counts and displacements (elements), as MPI_Alltoallv: to rank
 * q go sendcounts[q] elements from sendbuf + sdispls[q]; from rank q come
 * recvcounts[q] elements to recvbuf + rdispls[q]. recvcounts[q] on rank r
 * must equal sendcounts[r] on rank q. */
moemu_status_t par_alltoallv(const void *sendbuf, const size_t *sendcounts,
                             const size_t *sdispls, void *recvbuf,
                             const size_t *recvcounts, const size_t *rdispls,
                             emu_dtype_t dtype, par_comm_t *comm,
                             emu_dev_t *dev);
/* Eager point to point: send copies buf and returns at once (the sender's
 * clock does not move); recv waits for the first message from peer on this
 * communicator (FIFO per pair), whose count and dtype must match. */
moemu_status_t par_send(const void *buf, size_t count, emu_dtype_t dtype,
                        int peer, par_comm_t *comm, emu_dev_t *dev);
moemu_status_t par_recv(void *buf, size_t count, emu_dtype_t dtype, int peer,
                        par_comm_t *comm, emu_dev_t *dev);
moemu_status_t par_barrier(par_comm_t *comm, emu_dev_t *dev);

#endif
