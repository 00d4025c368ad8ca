/* dist: the workload run on emulated devices under a parallel strategy:
 * one thread per device, each computing its shard of every layer it holds
 * (layers' sharded forms), with pipeline stages, DP replicas and
 * micro-batches scheduled here. */
#ifndef MOEMU_DIST_H
#define MOEMU_DIST_H

#include "engine/run/model.h"
#include "engine/run/routing.h"

typedef struct {
    par_strategy_t strategy;
    int micro_batches;       /* per DP replica, >= 1 */
    emu_hw_t hw;             /* device spec and topology */
    emu_cluster_opts_t cluster;
    /* Dry run: the same schedule, collectives and cost accounting without
     * the math (weights may be wts_address_only; cluster.nodata should be
     * set); the router's decisions come from routing. */
    bool dry;
    const route_src_t *routing;
} dist_opts_t;

/* The model's dimensions as the strategy module sees them. */
void dist_dims(const cfg_model_t *cfg, par_dims_t *out);

/* Run wl on strategy.world devices. out is filled as by model_generate
 * (mo->progress is called by device 0 only). On success *cluster holds
 * the devices, their clocks and counters; the caller destroys it. */
moemu_status_t dist_generate(model_out_t *out, emu_cluster_t **cluster,
                             const wts_t *w, const wl_t *wl,
                             const dist_opts_t *o, const model_opts_t *mo);

#endif
