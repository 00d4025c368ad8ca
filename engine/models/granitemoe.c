/* GraniteMoE (modeling_granitemoe.py): embedding, residual, attention and
 * logit multipliers; a router that takes the top k of the logits, then a
 * softmax over those k; every expert in two fused tensors. The config
 * reader is in engine/models/config.c. */
#include "engine/models/family.h"

#define MOE FAMILY_LAYER "block_sparse_moe."
static const wts_names_t granite_names = {
    FAMILY_LLAMA_NAMES,
    .router = MOE "router.layer.weight",
    .fused_in = MOE "input_linear.weight",
    .fused_out = MOE "output_linear.weight",
};

const model_family_t family_granitemoe = {
    .model_type = "granitemoe",
    .config = cfg_read_granitemoe,
    .names = &granite_names,
    FAMILY_DECODER,
};
