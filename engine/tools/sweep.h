/* sweep: every valid strategy on a device count, each with its
 * micro-batch counts, run as a dry run (report figures, no scaling
 * reference); those that do not fit or miss the constraints dropped, the
 * rest ranked by an objective, the Pareto front of TTFT against
 * throughput per device marked. docs/sweep.md defines each rule. */
#ifndef MOEMU_SWEEP_H
#define MOEMU_SWEEP_H

#include <jansson.h>

#include "engine/tools/report.h"

typedef enum {
    SWEEP_OBJ_THROUGHPUT = 0, /* tokens/ms per device, highest first */
    SWEEP_OBJ_TTFT,           /* TTFT of the batch, lowest first */
    SWEEP_OBJ_LATENCY,        /* end to end, lowest first */
    SWEEP_OBJ__COUNT
} sweep_objective_t;

const char *sweep_objective_name(sweep_objective_t o); /* "throughput", ... */
/* "throughput", "ttft" or "latency"; else MOEMU_ERR_INVALID naming s. */
moemu_status_t sweep_objective_parse(const char *s, sweep_objective_t *out);

typedef enum {
    SWEEP_KEPT = 0,  /* ran, fits, meets the constraints */
    SWEEP_NO_FIT,    /* a device ran out of memory (MOEMU_ERR_OOM) */
    SWEEP_MISSED,    /* ran, but over ttft_max or the memory headroom */
} sweep_fate_t;

const char *sweep_fate_name(sweep_fate_t f); /* "kept", "does not fit", "misses" */

#define SWEEP_NAME_LEN 256
#define SWEEP_WHY_LEN 256

/* One candidate: a strategy and a micro-batch count. */
typedef struct {
    par_strategy_t strategy;
    char name[SWEEP_NAME_LEN]; /* canonical form */
    int micro_batches;         /* per DP replica */
    int index;                 /* order of enumeration, from 0 */
    sweep_fate_t fate;
    char why[SWEEP_WHY_LEN];   /* why it was dropped ("" when kept) */
    /* the report's figures (docs/report.md); 0 when it did not fit */
    double ttft;        /* TTFT of the batch, virtual seconds */
    double tpms_dev;    /* all tokens per virtual ms, per device */
    double prefill_tpms_dev, decode_tpms_dev;
    double e2e;         /* end to end, virtual seconds */
    double mem_peak;    /* the largest device peak, bytes */
    double capacity;    /* a device's memory capacity, bytes */
    double comm_share;  /* mean over devices of comm / end to end */
    double bubble;      /* mean over stages of the bubble fraction */
    double imbalance;   /* expert load max/mean over (layer, expert) */
    double busiest;     /* expert rows of the busiest device / mean */
    double host_s;      /* wall seconds the dry run took on the host */
    int rank;           /* 1 = best among the kept; 0 when dropped */
    bool pareto;        /* on the front among the kept */
} sweep_row_t;

/* Called after each candidate (row: the one done), from the calling
 * thread; and, by an exec that waits on candidates, with row NULL while
 * none finishes (about once a second), so that progress can be shown. */
typedef void (*sweep_progress_fn)(void *arg, int done, int total, const sweep_row_t *row);

/* The micro-batch counts tried for a strategy with PP > 1 (PP = 1 runs
 * 1 only). Counts over the sequences of the smallest DP replica are left
 * out; 1 is always tried. Under two-batch overlap (emu_stack_t), which
 * pairs micro-batches on one stage: PP = 1 only, at 2. */
typedef enum {
    SWEEP_MB_POW2 = 0, /* 1, 2, 4, 8, ... */
    SWEEP_MB_PP,       /* 1, PP and 2*PP */
    SWEEP_MB_LIST      /* the given list (and 1) */
} sweep_mb_t;

/* The uneven stage split par_strategy_enumerate offers (the last stage,
 * which holds lm_head, one layer lighter). */
typedef enum {
    SWEEP_UNEVEN_AUTO = 0, /* tried when lm_head and the final norm hold
                              more weights than one layer: only then can it
                              lighten the heaviest stage */
    SWEEP_UNEVEN_ON,       /* always tried */
    SWEEP_UNEVEN_OFF       /* never */
} sweep_uneven_t;

typedef struct sweep sweep_t;
typedef struct sweep_opts sweep_opts_t;

/* How a sweep's candidates run: given the sweep with its rows enumerated,
 * call sweep_candidate_run for every row (in this process, or in processes
 * forked from it: the sweep is read-only meanwhile) and hand each result
 * to sweep_candidate_done here, in any order. moemu sweep runs them in
 * worker processes (engine/cli/cli_pool.c). */
typedef moemu_status_t (*sweep_exec_fn)(void *arg, sweep_t *s, const sweep_opts_t *o);

struct sweep_opts {
    par_enum_opts_t enumerate;  /* restrictions of the strategies (its
                                   even_only is set by uneven) */
    sweep_uneven_t uneven;
    sweep_mb_t mb;
    const int *micro_batches;   /* SWEEP_MB_LIST: (n_micro_batches) */
    int n_micro_batches;
    double ttft_max;            /* seconds; 0: no limit */
    double memory_headroom;     /* [0, 1): peak <= (1 - F) x capacity */
    sweep_objective_t objective;
    /* refuse, before running any, candidates whose count times the
     * devices is over this (each candidate emulates every device, one
     * thread each: the work and the memory grow with both); 0: no bound */
    uint64_t max_device_runs;
    sweep_exec_fn exec;         /* NULL: one candidate after another, here */
    void *exec_arg;
    const char *routing;        /* route_open's spec; NULL: uniform */
    uint64_t seed;              /* the routing's seed */
    run_prec_t prec;            /* runner_opts_t's */
    bool pairs;                 /* set by sweep_run under two-batch
                                   overlap: PP = 1 at 2 micro-batches */
    sweep_progress_fn progress; /* may be NULL */
    void *progress_arg;
};

struct sweep {
    sweep_row_t *rows; /* (n_rows): the kept by rank, then the dropped in
                          enumeration order */
    int n_rows;
    int strategies;    /* valid strategies enumerated */
    int ran;           /* candidates run (= n_rows) */
    int no_fit, missed, kept;
    sweep_objective_t objective;
    struct sweep_ctx *ctx; /* while the candidates run: what they share */
};

/* Whether lm_head and the final norm hold more weights than one layer
 * (SWEEP_UNEVEN_AUTO's test; docs/sweep.md). */
bool sweep_uneven_helps(const cfg_model_t *cfg);

/* The micro-batch counts of a strategy under o for a batch of B
 * sequences, ascending, into mb (room for 32); returns how many. */
int sweep_micro_batches(const par_strategy_t *s, int B, const sweep_opts_t *o, int *mb);

/* Run row i's candidate into *row (a copy of the row with its figures, or
 * fate SWEEP_NO_FIT when a device ran out of memory); any other failure
 * is returned. Only while sweep_run runs the candidates (sweep_exec_fn). */
moemu_status_t sweep_candidate_run(const sweep_t *s, int i, sweep_row_t *row);
/* Store a row that ran (at its index), judge it, count it, report
 * progress. */
void sweep_candidate_done(sweep_t *s, const sweep_row_t *row, const sweep_opts_t *o);

/* Enumerate, run, judge and rank. hw is the devices' spec and topology
 * (its nodes and devices per node already overridden); the sweep runs
 * on exactly devices devices. A candidate that runs out of device memory
 * is a row "does not fit", not an error; any other failure is. No valid
 * strategy, or more device runs than o->max_device_runs (a message that
 * begins "max device runs N:" and gives the counts), is
 * MOEMU_ERR_INVALID. Free with sweep_free. */
moemu_status_t sweep_run(sweep_t *out, const cfg_model_t *cfg, const wl_t *wl,
                         const emu_hw_t *hw, int devices, const sweep_opts_t *o);
void sweep_free(sweep_t *s);

/* Drop (fate SWEEP_MISSED, why set) a row that ran but is over o's TTFT
 * limit or memory headroom. */
void sweep_judge(sweep_row_t *row, const sweep_opts_t *o);
/* Sort rows (kept ones by objective, ties by TTFT, throughput, end to
 * end, then enumeration order; the dropped after them in enumeration
 * order), set rank and mark the Pareto front. MOEMU_ERR_NOMEM when the
 * host is out of memory (rows untouched). */
moemu_status_t sweep_rank(sweep_row_t *rows, int n, sweep_objective_t obj);
/* Mark the kept rows that no other kept row dominates on (TTFT lower,
 * throughput per device higher): one as good on both and better on one. */
void sweep_mark_pareto(sweep_row_t *rows, int n);

/* Every row, as CSV (through a temporary file and a rename). */
moemu_status_t sweep_csv(const sweep_t *s, const char *path);
/* {"counts": {...}, "rows": [...]} with every row. */
json_t *sweep_json(const sweep_t *s);
#endif
