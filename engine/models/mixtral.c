/* Mixtral (modeling_mixtral.py) with moemu's extensions: capacity factor,
 * shared experts, gelu experts (DESIGN.md, "Model semantics"). Its config
 * never has biases, so their names are never used. */
#include "engine/models/family.h"

#define MOE FAMILY_LAYER "block_sparse_moe."
static const wts_names_t mixtral_names = {
    FAMILY_LLAMA_NAMES,
    .router = MOE "gate.weight",
    .e1 = MOE "experts.%d.w1.weight",
    .e2 = MOE "experts.%d.w2.weight",
    .e3 = MOE "experts.%d.w3.weight",
    .s1 = MOE "shared_experts.%d.w1.weight",
    .s2 = MOE "shared_experts.%d.w2.weight",
    .s3 = MOE "shared_experts.%d.w3.weight",
};

const model_family_t family_mixtral = {
    .model_type = "mixtral",
    .config = cfg_read_mixtral,
    .names = &mixtral_names,
    FAMILY_DECODER,
};
