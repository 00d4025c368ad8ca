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
 * No-data mode (emu_dev_set_nodata, a cluster's opts.nodata): everything
 * above happens (meetings, checks, agreement, virtual time and counters,
 * bit for bit as with data) but no float payload moves: send buffers are
 * not read, receive buffers not written, and NULL buffers are accepted.
 * EMU_DTYPE_INT32 payloads (token ids, routing decisions, counts: the
 * metadata a dry run's schedule depends on) still move. Members must
 * all be in the same mode (else MOEMU_ERR_INVALID on every member); a
 * message sent in no-data mode has no payload and needs a receiver in
 * no-data mode.
 *
 * Virtual time: emu's cost model (emu_coll_charge, emu_coll_alltoall,
 * emu_p2p_send/recv): a collective starts at its members' latest clock and
 * costs its algorithm's closed form over the slowest link class the group
 * crosses; see docs/emulation.md. */
#ifndef MOEMU_PAR_H
#define MOEMU_PAR_H

#include <stddef.h>
#include <stdint.h>

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
/* Host tuning, no effect on results or virtual time: a collective whose
 * outputs (all members together) reach this many bytes writes them with
 * non-temporal stores, which skip the cache (they would not stay there)
 * and the read before each write. 0: always; SIZE_MAX: never. Before the
 * run, from one thread. */
#define PAR_STREAM_BYTES_DEFAULT ((size_t)64 << 20)
void par_comm_set_stream_bytes(par_comm_t *comm, size_t bytes);
/* The transport that moves comm's data, by name: "shm" (threads of one
 * process) unless another is registered and chosen (docs/emulation.md).
 * Results and virtual times never depend on it. A sub-communicator takes
 * its parent's. Before the run, from one thread. */
moemu_status_t par_comm_set_transport(par_comm_t *comm, const char *name);
const char *par_comm_transport(const par_comm_t *comm);

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
/* par_allgather charged (virtual time, bytes) as one of charged <=
 * sendcount elements a member: the rest of each block is host metadata
 * riding along, which the emulated collective does not carry. */
moemu_status_t par_allgather_charged(const void *sendbuf, void *recvbuf, size_t sendcount,
                                     size_t charged, emu_dtype_t dtype, par_comm_t *comm,
                                     emu_dev_t *dev);
/* recvbuf (count) = root's sendbuf (count). */
moemu_status_t par_broadcast(const void *sendbuf, void *recvbuf, size_t count,
                             emu_dtype_t dtype, int root, par_comm_t *comm,
                             emu_dev_t *dev);
/* Equal blocks: block q of sendbuf (p * count) goes to rank q, whose
 * block r of recvbuf receives it. */
moemu_status_t par_alltoall(const void *sendbuf, void *recvbuf, size_t count,
                            emu_dtype_t dtype, par_comm_t *comm,
                            emu_dev_t *dev);
/* par_alltoall of values that travel in band with the next collective
 * (DeepEP low-latency's count signals, written after each expert's rows
 * in the same kernel): moved, but neither charged nor waited for, so
 * the members' clocks do not meet. */
moemu_status_t par_alltoall_inband(const void *sendbuf, void *recvbuf, size_t count,
                                   emu_dtype_t dtype, par_comm_t *comm, emu_dev_t *dev);
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

/* ---- Strategies and rank layout (parallel/strategy.c, parallel/layout.c).
 * DESIGN.md's "Parallel strategy": attention and dense parts use
 * world = PP x DP x CP x TP; MoE layers fold each stage's DP x CP x TP
 * devices into EDP x EP x ETP. docs/strategies.md states the grammar, the
 * rules with their messages and every layout formula. parallel/ knows
 * nothing of models: it checks the degrees against the layer and expert
 * counts, and a model family adds its own rules (heads, key/value heads,
 * ...) through par_dims_t.rules. */

typedef struct par_strategy par_strategy_t;

/* The model sizes a strategy is checked against. */
typedef struct {
    int layers, experts, expert_ffn;
    /* the family's own rules, checked after the experts' and before the
     * stages'; model is passed back (both may be NULL) */
    void (*rules)(const void *model, const par_strategy_t *s, moemu_problems_t *p);
    const void *model;
} par_dims_t;

#define PAR_MAX_PP 256        /* stages of an uneven split */
#define PAR_MAX_DEGREE 32768  /* largest degree the parser accepts */
#define PAR_STRATEGY_STRLEN 2048 /* enough for par_strategy_format */

struct par_strategy {
    int tp, cp, dp, pp, ep, etp; /* >= 1; missing dimensions are 1 */
    int edp;                     /* 0 = derived (DP*CP*TP / (EP*ETP)); if
                                    given, validation checks it */
    bool sp;                     /* sequence parallel over the TP group */
    int n_pp_layers;             /* 0 = even split; else == pp */
    int pp_layers[PAR_MAX_PP];   /* layers per stage, uneven split */
};

/* Every degree 1, no SP, EDP derived, even stage split. */
void par_strategy_default(par_strategy_t *s);
/* A strategy string (`EP8_TP2_PP1_DP1`, `tp2-ep4-pp2`, `dp4 pp4 ep16 sp`,
 * `pp3=6/5/5-tp2`: case-insensitive <dim><n> tokens joined by '_', '-',
 * '.', ',' or white space) or a JSON object (`{"tp":2,"sp":true,
 * "pp_layers":[5,4,4,3]}`). Errors are MOEMU_ERR_INVALID naming the
 * token or key; *out is written only on success. */
moemu_status_t par_strategy_parse(const char *text, par_strategy_t *out);
/* An uneven stage split "5,4,4,3" (',' or '/' between whole numbers >= 0;
 * validation checks them against PP and the layers). */
moemu_status_t par_strategy_set_pp_layers(par_strategy_t *s, const char *list);
/* Check s against the model m and the device count; every broken rule is
 * reported, "; "-joined, in one MOEMU_ERR_INVALID message that starts
 * "strategy <canonical form>: ". m NULL skips the model's rules, devices 0
 * the device count. */
moemu_status_t par_strategy_validate(const par_strategy_t *s,
                                     const par_dims_t *m, int devices);
/* Whether the MoE layers run with the tokens replicated over the TP group:
 * TP > 1 without SP or CP, and EP x ETP = TP, so that the MoE group is the
 * TP group. Each TP rank then routes every row, computes its experts'
 * slice of them, and one all-reduce over TP sums the outputs, as vLLM and
 * TensorRT-LLM run what they call TP N for an MoE (docs/strategies.md). */
bool par_moe_replicated(const par_strategy_t *s);
/* Canonical form, re-parseable: pp dp cp tp sp ep etp edp in this order,
 * '-'-joined, degrees of 1 left out ("tp1" when nothing else is left, and
 * before "sp"), "sp" when on, an uneven split as "pp3=6/5/5", edp only
 * when given. E.g. "dp2-tp2-ep4", "pp4-dp4-ep16", "tp1". Truncated to n
 * bytes like snprintf (PAR_STRATEGY_STRLEN always fits). */
void par_strategy_format(const par_strategy_t *s, char *buf, size_t n);
/* PP*DP*CP*TP (INT_MAX if it overflows an int). */
int par_strategy_world(const par_strategy_t *s);
/* The given EDP, else DP*CP*TP / (EP*ETP) (0 if EP*ETP does not divide). */
int par_strategy_edp(const par_strategy_t *s);

/* Layers [l0, l1) of a stage: the uneven split if given, else an even one
 * in which the first (layers % PP) stages hold one layer more. */
void par_stage_layers(const par_strategy_t *s, int layers, int stage, int *l0,
                      int *l1);
/* Part i of n items split into parts: [floor(i*n/parts),
 * floor((i+1)*n/parts)) (DESIGN.md's DP rule; micro-batches too). */
void par_split(int n, int parts, int i, int *lo, int *hi);
/* CP rank c's positions of a sequence of L: 2*CP chunks of
 * ceil(L/(2*CP)) (the last ones shorter or empty); rank c holds chunks c
 * and 2*CP-1-c (load-balanced causal split). ranges[k] = {lo, hi}, empty
 * when lo == hi. CP == 1: {0, L} and the empty {L, L}. */
void par_cp_ranges(int L, int cp, int c, int ranges[2][2]);
/* SP: TP rank t's tokens [lo, hi) of T: slices of ceil(T/TP), the last ones
 * shorter or empty. */
void par_sp_range(int T, int tp, int t, int *lo, int *hi);

/* What one device holds of the generic parts. Ranges are [lo, hi); a
 * model family adds its own slices (heads, vocabulary rows, ...). */
typedef struct {
    int rank, pp, dp, cp, tp, edp, ep, etp;
    int layer0, layer1;           /* layers of its stage */
    int expert0, expert1;         /* E/EP experts */
    int ffn0, ffn1;               /* slice of each expert's F: F/ETP */
    bool has_embed, has_lm_head;  /* first and last stage */
} par_place_t;

/* Coordinates and holdings of a rank: attention ranks are
 * rank = ((pp*DP + dp)*CP + cp)*TP + tp; inside a stage, device
 * s = (dp*CP + cp)*TP + tp is (edp*EP + ep)*ETP + etp for the MoE layers.
 * s must be valid for m (par_strategy_validate). */
void par_layout_place(const par_strategy_t *s, const par_dims_t *m, int rank,
                      par_place_t *out);
int par_layout_rank(const par_strategy_t *s, int pp, int dp, int cp, int tp);

typedef enum {
    PAR_GROUP_TP = 0,
    PAR_GROUP_CP,
    PAR_GROUP_DP,
    PAR_GROUP_PP,
    PAR_GROUP_EP,
    PAR_GROUP_ETP,
    PAR_GROUP_EDP,
    PAR_GROUP_REPLICA, /* the CP*TP devices of one DP replica in one stage,
                          in (cp, tp) order */
    PAR_GROUP_STAGE,   /* the DP*CP*TP devices of one stage */
    PAR_GROUP__COUNT
} par_group_t;

const char *par_group_name(par_group_t g); /* "tp", ..., "replica", "stage" */
/* The global ranks of the group of kind g that holds rank, in group-rank
 * order (TP by tp, CP by cp, DP by dp, PP by stage, EP by ep, ETP by etp,
 * EDP by edp); ranks must hold the world size. Returns the group's size,
 * 0 for a rank outside the world or an EP/ETP/EDP group of a strategy
 * whose EP*ETP does not divide DP*CP*TP. */
int par_layout_group(const par_strategy_t *s, par_group_t g, int rank,
                     int *ranks);
/* The rank of a device inside its group of kind g (its tp, cp, ...; for
 * REPLICA cp*TP + tp, for STAGE its index in the stage). */
int par_layout_group_rank(const par_strategy_t *s, par_group_t g, int rank);

/* ---- Enumerating strategies (parallel/enumerate.c; docs/sweep.md). */

typedef enum {
    PAR_ENUM_SP_BOTH = 0, /* off, and on when TP > 1 */
    PAR_ENUM_SP_WITH_TP,  /* on exactly when TP > 1 */
    PAR_ENUM_SP_OFF,      /* never */
    PAR_ENUM_SP_ON        /* always (so TP > 1 only) */
} par_enum_sp_t;

/* Restrictions of the enumeration; all zero: none. */
typedef struct {
    int max_pp, max_dp, max_cp, max_tp, max_ep, max_etp; /* 0: no limit */
    par_enum_sp_t sp;
    bool even_only; /* no uneven stage split */
} par_enum_opts_t;

/* Every strategy valid (par_strategy_validate) for m on exactly devices
 * devices: each (PP, DP, CP, TP) whose product is devices; for each, SP
 * off and (TP > 1) on; every EP dividing the experts and ETP dividing the
 * expert intermediate size with EP*ETP dividing DP*CP*TP; the even stage
 * split and, when PP divides the layers into stages of 2 or more, the
 * split whose last stage (it holds lm_head) has one layer fewer and the
 * first one more. EDP is left derived. Order: ascending PP, then DP, CP,
 * TP, SP off before on, EP, ETP, the even split before the other. opts
 * may be NULL. The first min(count, max) go to out (out may be NULL with
 * max 0); returns the count, which may be more than max. */
int par_strategy_enumerate(const par_dims_t *m, int devices, const par_enum_opts_t *opts,
                           par_strategy_t *out, int max);

/* How far apart two strategies are, to name the nearest valid ones:
 * sum over PP, DP, CP, TP, EP and ETP of |log2(a / b)|, + 0.5 when SP
 * differs (degrees below 1 count as 1; stage splits and EDP do not
 * count). tp2 to tp4-sp is 1.5. */
double par_strategy_distance(const par_strategy_t *a, const par_strategy_t *b);

/* ---- Processes (DESIGN.md, "Processes and hosts"; docs/mpi.md). Built
 * --with-mpi and started by mpirun, a run's devices spread over the K
 * processes in contiguous blocks (parallel/mpi.c); otherwise there is one
 * process and all of this is trivial (parallel/solo.c). Every process
 * makes the same calls in the same order: agreements, runs, merges. */

/* Join the processes (MPI_Init_thread) when started by mpirun; first
 * thing in main. Processes whose command lines differ are refused. */
moemu_status_t par_proc_init(int *argc, char ***argv);
int par_proc_rank(void);  /* 0 without MPI */
int par_proc_count(void); /* 1 without MPI */
/* Devices per process (0: ceil(world / K), the default). */
moemu_status_t par_proc_set_devices_per_process(int n);
/* Process p's devices of a run on world devices: [*lo, *hi). */
void par_proc_devices(int world, int p, int *lo, int *hi);
/* Every process's status, and a fingerprint of what it is about to run
 * (model, workload, strategy): the failure to report (a device's own
 * before another's "stopped", the lowest device, then the lowest
 * process) becomes every process's status and message; fingerprints that
 * differ are refused. Once a failure is agreed, every later call returns
 * it without meeting. */
moemu_status_t par_proc_agree(moemu_status_t st, uint64_t fingerprint);
/* A cluster's options for this process: its devices (all of them on
 * process 0 when spread is false: a dry run moves nothing worth
 * spreading) and the hook that tells the other processes of an abort. */
moemu_status_t par_proc_cluster(int world, bool spread, emu_cluster_opts_t *o);
/* After a run of a cluster made with those options: agree on its status
 * st, then give every process every device's figures. */
moemu_status_t par_proc_after_run(emu_cluster_t *cl, moemu_status_t st);
/* An output every element of which one process wrote, the others holding
 * the neutral value of how: every process gets the whole. */
typedef enum {
    PAR_MERGE_I32_MAX, /* int32_t, INT32_MIN where unwritten */
    PAR_MERGE_F32_NAN, /* float, NaN where unwritten */
    PAR_MERGE_I64_SUM, /* int64_t, 0 where unwritten */
    PAR_MERGE_F64_SUM  /* double, 0 where unwritten */
} par_merge_t;
moemu_status_t par_proc_merge(void *buf, size_t n, par_merge_t how);
/* A failed process here, or a command's end: meet the others one last
 * time (failed: this process's message is msg) and leave MPI. True when
 * another process failed and this one did not: its error is this
 * thread's message. */
bool par_proc_exit(bool failed, const char *msg);
/* A line for a signal handler to write when the launcher stops this
 * process ("" without MPI): the process, and every process's devices. */
const char *par_proc_stop_note(void);

#endif
