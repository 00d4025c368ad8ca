/* report: the figures of a run on emulated devices (DESIGN.md, Outputs):
 * latency, throughput, time and memory per device, communication, pipeline
 * bubbles, expert load and scaling against one device. docs/report.md
 * defines each figure. */
#ifndef MOEMU_REPORT_H
#define MOEMU_REPORT_H

#include <jansson.h>
#include <stdio.h>

#include "engine/run/runner.h"

typedef struct {
    int rank, node, stage;
    double clock;                    /* virtual seconds */
    double compute, memory, comm, idle, host; /* their sum: the clock */
    /* host: the serving engine's host work (emu_charge_host) */
    double overlapped;               /* of comm + idle, what ran beside the
                                      * kernels (emu_dev_overlap): subtract */
    double overlapped_comm;          /* its communication alone */
    double flops, bytes;             /* kernels' */
    double mfu, bw_util;             /* achieved: flops / (clock * peak), ... */
    double mem[EMU_MEM__COUNT];      /* peak per category, bytes */
    double mem_peak, capacity;       /* peak of the total */
    double recv_idle;                /* idle waiting for pipeline messages */
    int64_t expert_rows;             /* expert rows it computed */
} report_dev_t;

typedef struct {
    double calls, bytes, time;       /* summed over devices */
} report_comm_t;

typedef struct {
    /* the run */
    int devices, stages, batch, decode, layers, experts;
    int64_t prompt_tokens, generated_tokens;
    char strategy[128], hw[64];
    /* latency, virtual seconds */
    double ttft_batch, ttft_min, ttft_mean, ttft_max, tpot, e2e;
    double *ttft;                    /* (batch) per sequence */
    /* throughput, tokens per virtual millisecond */
    double prefill_tpms, decode_tpms, total_tpms;
    report_dev_t *dev;               /* (devices) */
    report_comm_t comm[EMU_COLL__COUNT][EMU_LINK__COUNT];
    /* where the time goes, summed over devices: each kernel kind, the MoE
     * dispatch and combine (their collectives, waiting included), and the
     * other collectives and waiting, less what of those ran beside the
     * kernels; together the devices' clocks */
    double kernel_time[EMU_KERNEL__COUNT], dispatch, combine, other_comm, overlapped, host;
    double comm_bytes, comm_time;    /* summed over devices */
    double exposed_comm_mean, exposed_comm_max; /* (comm - overlapped_comm) / e2e
                                                 * per device */
    double *bubble;                  /* (stages) */
    /* collectives per layer and pass of one device: the one with the most
     * calls in its layers per (its layers x its passes); its prefill and
     * decode passes (docs/report.md) */
    int coll_dev;
    model_coll_t coll[2];
    /* expert load */
    const int64_t *load;             /* (layers, experts), the run's */
    int64_t *load_owned;             /* the same, when the report owns it */
    double load_max_mean, load_cv;   /* over every (layer, expert) */
    double load_worst_layer_max_mean;
    int load_worst_layer;
    int64_t assignments, dropped;
    int busiest;                     /* device with the most expert rows */
    double busiest_vs_mean;
    /* scaling */
    double t1, speedup, efficiency;  /* t1: one device of the same kind */
} report_t;

/* Build the report of a run. t1 is the same workload's virtual time on one
 * device (0 if not measured). A figure that is not finite is
 * MOEMU_ERR_INVALID naming it ("report: latency.tpot_s is nan, ..."). */
moemu_status_t report_build(report_t *r, emu_cluster_t *cl, const model_out_t *out,
                            const cfg_model_t *cfg, const wl_t *wl, const runner_opts_t *o,
                            double t1);
void report_free(report_t *r);

/* The same workload's virtual time on one device of the same kind, no
 * memory limit, replaying record (a routing record of the run, shape
 * (layers, batch, positions, k)), or with record NULL routed by o's dry
 * run source (o->routing): the scaling reference. It routes in o's
 * groups (DP replicas x micro-batches), as check's baseline does, and
 * with prompt_logits computes the logits of every prompt position, as the
 * run did. */
moemu_status_t report_one_device(double *t1, const wts_t *w, const wl_t *wl,
                                 const runner_opts_t *o, int *record, bool prompt_logits);
/* What report_one_device will take of the host, added to need
 * (runner_host_need), before the run that makes its record. */
moemu_status_t report_one_device_need(emu_need_t *need, const cfg_model_t *cfg, const wl_t *wl,
                                      const runner_opts_t *o, bool prompt_logits);

/* A whole dry run of wl under o (o->dry, routing and nodata are set here;
 * routing is a route_open spec, seed its seed) and its report; with
 * scaling, the one-device reference too (else t1 = 0). */
moemu_status_t report_dry_run(report_t *r, const cfg_model_t *cfg, const wl_t *wl,
                              const runner_opts_t *o, const char *routing, uint64_t seed,
                              bool scaling);
/* report_dry_run, and where a device runs out of memory, the same again
 * without the devices' memory limit: oom (n bytes) receives the message
 * of the run that did not fit, "" when it fit. */
moemu_status_t report_dry_run_unlimited(report_t *r, const cfg_model_t *cfg, const wl_t *wl,
                                        const runner_opts_t *o, const char *routing,
                                        uint64_t seed, bool scaling, char *oom, size_t n);
void report_print(const report_t *r, FILE *f);
json_t *report_json(const report_t *r);
moemu_status_t report_csv(const report_t *r, const char *path);

#endif
