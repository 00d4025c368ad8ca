/* model: the forward pass of the whole model on one device: prefill of a
 * batch of prompts, then greedy decoding with a KV cache. */
#ifndef MOEMU_MODEL_H
#define MOEMU_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "engine/models/weights.h"
#include "engine/run/workload.h"

typedef struct {
    /* Routing groups as sequence ranges: group g holds sequences
     * [group_start[g], group_start[g+1]). n_groups 0 means one group, the
     * whole batch. Prefill runs group after group. */
    int n_groups;
    const int *group_start;
    bool prompt_logits; /* keep the logits of every prompt position */
    bool gen_logits;    /* keep the logits each generated token came from */
    /* If not NULL, (layers, batch, model_route_positions(wl), k): the
     * expert of every choice of every token, -1 - expert when dropped. */
    int *route;
    /* Called at each layer of each pass, from the running thread. */
    void (*progress)(void *arg, const char *phase, int step, int steps,
                     int layer, int layers);
    void *progress_arg;
} model_opts_t;

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
    int n_devices;
    double wall_prefill, wall_decode; /* host seconds */
} model_out_t;

/* Run the workload on dev (its clock and counters are charged). Weights and
 * the KV cache are counted on the device in the emulated dtype. */
moemu_status_t model_generate(model_out_t *out, const wts_t *w, const wl_t *wl,
                              emu_dev_t *dev, const model_opts_t *o);
void model_out_free(model_out_t *out);
/* Positions per sequence in a route record: longest prompt + decode - 1. */
int model_route_positions(const wl_t *wl);
/* The routing groups of DP replicas x micro-batches (DESIGN.md): group
 * r * mb + m holds the sequences [group_start[g], group_start[g+1]);
 * group_start has dp * mb + 1 entries. */
void model_routing_groups(int batch, int dp, int mb, int *group_start);

#endif
