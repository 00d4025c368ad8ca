/* emu private: the device, cluster and sync structures, shared by the emu
 * sources only. */
#ifndef MOEMU_EMU_IMPL_H
#define MOEMU_EMU_IMPL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

#include "emu/emu.h"

/* Collectives a device may have in flight before its compute stream waits
 * for them regardless (a bound, not a model: the layers issue a few). */
#define EMU_PENDING_MAX 16

struct emu_dev {
    emu_spec_t spec;
    int rank;
    bool no_limit;
    double clock; /* virtual seconds */
    double host_time; /* of it, the engine's host work */
    emu_kernel_stats_t kernels[EMU_KERNEL__COUNT];
    double mem[EMU_MEM__COUNT];
    double mem_peak[EMU_MEM__COUNT];
    double mem_total_peak;

    /* place: a standalone device is node 0 of a one-device topology */
    emu_cluster_t *cluster;
    emu_topo_t topo;
    int node, local_rank;
    emu_comm_stats_t comm[EMU_COLL__COUNT][EMU_LINK__COUNT];
    double egress_free[EMU_LINK__COUNT]; /* eager sends queue behind */

    /* the communication stream (emu.h, "Streams"): where its last
     * collective ends, the segments issued since the compute stream last
     * waited for it, and what of its time ran beside the compute stream */
    double comm_clock;
    uint64_t comm_seq; /* collectives booked on the stream, ever */
    bool async;
    int npending;
    struct emu_seg { double ready, start, end; uint8_t kind, link; } pending[EMU_PENDING_MAX];
    emu_overlap_t overlap;

    /* tracing: spans[0..nspans), grown by doubling */
    bool trace;
    int layer;
    emu_span_t *spans;
    size_t nspans, spans_cap;
    uint64_t spans_lost; /* not recorded: the host was out of memory */

    /* no-data mode: the host mappings emu_alloc made, by address (open
     * addressing, linear probing; munmap needs their lengths) */
    bool nodata;
    struct emu_map { void *p; size_t len; } *maps;
    size_t nmaps, maps_cap; /* maps_cap: 0 or a power of two */

    /* jitter (emu_cluster_opts_t.jitter_us): the device's own generator,
     * touched by its thread only during runs */
    unsigned jitter_us;
    uint32_t jitter_n; /* kernel charges since the last jittered one */
    uint64_t jitter_state;

    /* run state, written by the device's thread, read by others */
    atomic_bool done;
    moemu_status_t status;
    char errmsg[1024];
    double run_clock0;           /* clock when the current run started */
    pthread_t thread;
    struct emu_lanes *lanes;     /* NULL until a run takes lanes (fiber.c) */
};

typedef struct emu_fiber emu_fiber_t;
typedef struct emu_sched emu_sched_t;
typedef struct emu_lanes emu_lanes_t;

struct emu_sync {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    emu_fiber_t *fw_head, *fw_tail; /* coroutines waiting, in turn (fiber.c) */
    emu_cluster_t *cluster;
    void (*reset)(void *);
    void *arg;
    emu_sync_t *next; /* the cluster's list, under cluster->mu */
};

/* An all-to-all's time, the largest of its members' sums of steps: a pure
 * function of the members and the bytes matrix that every member computes
 * alike, p^2 steps each. In a coroutine run the members take turns on
 * one thread, so the first to charge keeps the result here, with every
 * member's steps by class, and the others find theirs (topo.c); the
 * cluster's topology is the same for all. */
typedef struct {
    int p;
    size_t cap;      /* p of the arrays below */
    int *ranks;      /* p */
    double *bytes;   /* p * p */
    double (*rows)[EMU_LINK__COUNT]; /* p: each member's steps by class */
    double tmax;
} emu_a2a_memo_t;

#define EMU_A2A_MEMOS 16

struct emu_cluster {
    emu_spec_t spec;
    emu_topo_t topo;
    emu_cluster_opts_t opts;
    int ndev;
    emu_dev_t *devs; /* ndev, one block */

    int host_cores;
    void *hwloc;     /* the process's hwloc_topology_t (cluster.c), NULL if none */

    /* run state */
    pthread_mutex_t mu;   /* guards syncs, the failure reported, running */
    pthread_cond_t pace_cv; /* paced sleeps wait here, woken on abort */
    atomic_bool aborting;
    bool running;
    int fail_rank;        /* failure to report, -1 if none */
    emu_sync_t *syncs;
    struct timespec run_start;
    emu_fiber_t *fibers; /* ndev, NULL until a run needs them (fiber.c) */
    emu_a2a_memo_t a2a_memo[EMU_A2A_MEMOS]; /* coroutine runs only */
};

/* The built-in presets, generated from hw/NAME.json at build time. */
typedef struct {
    const char *name;
    const char *text;
} emu_hw_text_t;

extern const emu_hw_text_t emu_hw_presets[]; /* ends with {NULL, NULL} */
/* The built-in engine profiles, from hw/engines/NAME.json. */
extern const emu_hw_text_t emu_engine_profiles[]; /* ends with {NULL, NULL} */

/* Common to device.c and cluster.c. */
void emu_dev_init(emu_dev_t *dev, const emu_spec_t *spec, int rank,
                  bool no_limit);
/* Free what a device owns (spans, no-data mappings), not the device. */
void emu_dev_fini(emu_dev_t *dev);
/* With dev->trace set: append a span [start, end) of stream 0 tagged
 * with the device's layer and return it. A span the host has no memory
 * for is counted in spans_lost (NULL). */
emu_span_t *emu_span_add(emu_dev_t *dev, emu_span_cat_t cat, int kind, emu_link_t link,
                         double start, double end, double flops, double bytes);
/* After dev's clock moved: sleep while the cluster paces and the wall
 * time since the run started is below pace x the virtual time of the run. */
void emu_dev_pace(emu_dev_t *dev);
/* With dev->jitter_us > 0: sleep a pseudo-random 0 to jitter_us
 * microseconds of wall time (none once the run aborts). Virtual time is
 * untouched. */
void emu_dev_jitter(emu_dev_t *dev);

/* The device whose function this thread runs now, NULL in any other
 * thread (or between a scheduler's turns): emu_sync_lock jitters it. */
extern _Thread_local emu_dev_t *emu_self;
/* Run fn for dev and record how it ended: on failure its status and
 * message and the run's abort (emu_cluster_fail); then dev is done and
 * every waiter wakes to see it. From dev's thread or coroutine. */
void emu_dev_run(emu_cluster_t *c, emu_dev_t *dev, emu_dev_fn fn, void *arg);

/* error.c: the capacity of a moemu_errmsg() buffer. */
#define EMU_ERRMSG_MAX 4096
/* This thread's moemu_fail writes into buf (EMU_ERRMSG_MAX bytes) from
 * now on, or into the thread's own buffer when buf is NULL: each
 * coroutine has its own message. Returns the previous one (NULL: own). */
char *emu_err_redirect(char *buf);

/* limits.c: the stack size of a new thread (glibc's default: RLIMIT_STACK
 * or 8 MiB), the guard page apart; coroutines take the same. */
size_t emu_stack_size(void);

/* fiber.c: devices as coroutines on the calling thread (no-data runs).
 * The scheduler running on this thread, NULL when none: the syncs wait
 * and wake through it instead of the pthread primitives. */
extern _Thread_local emu_sched_t *emu_sched_self;
/* Run fn(dev, arg) for every device of c as coroutines, in turns, on this
 * thread; returns when all are done. MOEMU_ERR_INVALID when none could
 * run while some were not done (a deadlock), naming them; the devices'
 * own failures are recorded as with threads. */
moemu_status_t emu_fibers_run(emu_cluster_t *c, emu_dev_fn fn, void *arg);
/* topo.c: free c's all-to-all memos (emu_cluster_destroy). */
void emu_a2a_memos_free(emu_cluster_t *c);
/* Unmap the stacks of c's coroutines (emu_cluster_destroy). */
void emu_fibers_free(emu_cluster_t *c);
/* From a coroutine: sleep until a wake on s (emu_sync_wait). */
void emu_fiber_wait(emu_sync_t *s);
/* Every coroutine waiting on s runnable again, in the order they came
 * (emu_sync_broadcast). */
void emu_fiber_wake(emu_sync_t *s);
/* From a coroutine: let every runnable one have its turn first (jitter). */
void emu_fiber_yield(void);
/* Unmap the stacks of dev's lanes (emu_dev_fini). */
void emu_lanes_free(emu_dev_t *dev);

/* cost.c: the formulas device.c and topo.c charge with. */
/* emu_kernel_time's figure; *compute_bound: the FLOP term is the larger. */
double emu_cost_kernel(const emu_spec_t *spec, double flops, double bytes,
                       bool *compute_bound);
/* emu_kernel_time_of's figure, *compute_bound as above. */
double emu_cost_kernel_of(const emu_spec_t *spec, emu_kernel_t kind, const emu_gemm_t *g,
                          int n, double flops, double bytes, bool *compute_bound);
/* A collective's start: the latest of the members' clocks and own. */
double emu_cost_start(const double *clocks, int p, double own);
/* Pairwise all-to-all (emu_coll_alltoall's steps): the time of the
 * slowest member; mine[l]: member me's steps whose slower direction is of
 * class l. */
double emu_cost_alltoall(const emu_topo_t *t, const int *ranks, int p, int me,
                         const double *bytes, double mine[EMU_LINK__COUNT]);
/* Every member's steps: the slowest member's time, and in rows[r] what
 * emu_cost_alltoall gives in mine for me = r. */
double emu_cost_alltoall_rows(const emu_topo_t *t, const int *ranks, int p,
                              const double *bytes, double (*rows)[EMU_LINK__COUNT]);
/* An eager send at clock over a link free from *link_free (moved on to
 * when this message stops holding it). */
emu_msg_time_t emu_cost_send(double clock, double *link_free, double alpha,
                             double beta, double bytes);
/* A receive of t at clock: returns the end, *start the end of the idle. */
double emu_cost_recv(double clock, emu_msg_time_t t, double *start);

#endif
