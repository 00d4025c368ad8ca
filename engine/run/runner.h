/* runner: the one forward pass, prefill of a batch of prompts then greedy
 * decoding with a KV cache, run on emulated devices under a parallel
 * strategy. One thread per device computes its shard of every layer it
 * holds (the family's layer as layers/' sharded blocks); pipeline stages,
 * DP replicas and micro-batches are scheduled here. A single device is the
 * one-device strategy: there is no second forward pass. */
#ifndef MOEMU_RUNNER_H
#define MOEMU_RUNNER_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/models/family.h"
#include "engine/models/weights.h"
#include "engine/run/routing.h"
#include "engine/run/workload.h"

/* What a run keeps besides its virtual time. */
typedef struct {
    bool prompt_logits; /* keep the logits of every prompt position */
    bool gen_logits;    /* keep the logits each generated token came from */
    /* If not NULL, (layers, batch, runner_route_positions(wl), k): the
     * expert of every choice of every token, -1 - expert when dropped. */
    int *route;
    /* Called by device 0 at each layer of each pass. */
    void (*progress)(void *arg, const char *phase, int step, int steps,
                     int layer, int layers);
    void *progress_arg;
} model_opts_t;

/* One device's collectives over its passes of one kind (prefill, or
 * decode steps), each pass one micro-batch: all that the passes issued
 * (the embedding's, lm_head's and pipeline's included); of it, what its
 * decoder layers issued, from the first one's start to the last one's
 * end; of that, the MoE dispatch's and combine's (layer_experts_t.xfer). */
typedef struct {
    double passes, layers; /* passes of this kind; the device's layers */
    layer_xfer_t pass, layers_all, moe[2];
} model_coll_t;

typedef struct {
    int *generated;       /* (batch, decode) greedy tokens */
    float *prompt_logits; /* (batch, max_len, V), NaN past a prompt's end */
    float *gen_logits;    /* (batch, decode, V) */
    int64_t assignments;  /* routed (token, choice) pairs, all layers */
    int64_t dropped;      /* of which dropped by the capacity factor */
    double *token_time;   /* (batch, decode) virtual time at which each
                             generated token was picked */
    int64_t *expert_load; /* (layers, experts) kept assignments computed */
    int64_t *device_rows; /* (devices) expert rows each device computed */
    layer_xfer_t *moe_xfer; /* (devices, 2) the MoE dispatch and combine:
                               virtual seconds, waiting for peers
                               included, and calls */
    model_coll_t *coll;   /* (devices, 2) prefill passes, decode passes */
    int n_devices;
    double wall_prefill, wall_decode; /* host seconds, device 0's */
} model_out_t;

/* What the products of FP8-stored weights compute in. */
typedef enum {
    RUN_COMPUTE_AUTO = 0, /* FP8 where the card has FP8 Tensor Cores, else
                             the dtype (weight-only FP8, widened first) */
    RUN_COMPUTE_DTYPE,    /* the dtype always */
    RUN_COMPUTE_FP8,      /* FP8; refused without FP8 weights or a card
                             with FP8 Tensor Cores */
} run_compute_t;

/* Where the emulated engine leaves the model's dtype. */
typedef struct {
    bool dispatch_fp8;     /* layer_ctx_t's: the dispatch counted in FP8 */
    run_compute_t compute; /* what the products of FP8-stored weights run in */
    bool kv_fp8;           /* the KV cache in FP8 e4m3: one byte a value */
} run_prec_t;

typedef struct {
    par_strategy_t strategy;
    int micro_batches;       /* per DP replica, >= 1 */
    /* Routing groups as if the batch were split over route_dp replicas
     * (each then into micro_batches): a multiple of strategy.dp, 0 for
     * strategy.dp. A one-device run with route_dp = D routes in the
     * groups of a strategy with DP = D, so that both drop the same
     * assignments (DESIGN.md, routing groups). */
    int route_dp;
    emu_hw_t hw;             /* device spec and topology */
    emu_cluster_opts_t cluster;
    /* Dry run: the same schedule, collectives and cost accounting without
     * the math (weights may be wts_address_only; cluster.nodata should be
     * set); the router's decisions come from routing. */
    bool dry;
    const route_src_t *routing;
    run_prec_t prec;
} runner_opts_t;

/* Whether the run's products with FP8-stored weights compute in FP8:
 * asked for (RUN_COMPUTE_FP8) or, by default, where the weights are stored
 * in FP8 and the card has FP8 Tensor Cores. */
bool runner_fp8(const cfg_model_t *c, const runner_opts_t *o);
/* RUN_COMPUTE_FP8 asked of weights not stored in FP8 or of a card without
 * FP8 Tensor Cores: MOEMU_ERR_INVALID naming both problems where both
 * hold. The runner checks it; callers that check rows first call it. */
moemu_status_t runner_check_prec(const cfg_model_t *c, const runner_opts_t *o);

/* The one-device strategy on hw's device, no memory limit, routing in
 * the groups of DP = route_dp replicas x micro_batches. */
void runner_opts_one_device(runner_opts_t *o, const emu_hw_t *hw, int route_dp,
                         int micro_batches);

/* Run wl on strategy.world devices. On success *cluster holds the
 * devices, their clocks and counters; the caller destroys it. */
moemu_status_t runner_generate(model_out_t *out, emu_cluster_t **cluster,
                            const wts_t *w, const wl_t *wl,
                            const runner_opts_t *o, const model_opts_t *mo);
void model_out_free(model_out_t *out);
/* The threads, stacks and devices of world devices against the host's
 * limits (emu_need_devices): the check that needs nothing but the number,
 * made before a workload or weights are. */
moemu_status_t runner_check_devices(int world);
/* Add to need what runner_generate will take of the host (emu.h,
 * emu_need_check): the devices' threads, schedules, KV caches, scratch
 * and BLAS buffers, and the outputs; the weights are the caller's. Checks
 * the options and, at once, the threads against the host's limits. A
 * layer's transient buffers (a collective's staging, an expert's rows)
 * come on top. */
moemu_status_t runner_host_need(emu_need_t *need, const cfg_model_t *c, const wl_t *wl,
                                const runner_opts_t *o, const model_opts_t *mo);
/* Positions per sequence in a route record: longest prompt + decode - 1. */
int runner_route_positions(const wl_t *wl);

#endif
