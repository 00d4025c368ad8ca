/* OLMoE (modeling_olmoe.py): query and key normalised over their whole
 * projected width, clip_qkv, no renormalisation of the top-k unless
 * norm_topk_prob. The config reader is in engine/models/config.c. */
#include "engine/models/family.h"

#define MLP FAMILY_LAYER "mlp."
static const wts_names_t olmoe_names = {
    FAMILY_LLAMA_NAMES,
    .qn = FAMILY_LAYER "self_attn.q_norm.weight",
    .kn = FAMILY_LAYER "self_attn.k_norm.weight",
    .router = MLP "gate.weight",
    .e1 = MLP "experts.%d.gate_proj.weight",
    .e2 = MLP "experts.%d.down_proj.weight",
    .e3 = MLP "experts.%d.up_proj.weight",
};

const model_family_t family_olmoe = {
    .model_type = "olmoe",
    .config = cfg_read_olmoe,
    .names = &olmoe_names,
    FAMILY_DECODER,
};
