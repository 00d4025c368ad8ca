/* Qwen2-MoE and Qwen3-MoE (modeling_qwen2_moe.py, modeling_qwen3_moe.py):
 * Qwen2-MoE has q/k/v biases and a shared expert scaled by a sigmoid
 * gate; Qwen3-MoE normalises each query and key head; both may have dense
 * layers (decoder_sparse_step, mlp_only_layers). The config readers are
 * in engine/models/config.c. */
#include "engine/models/family.h"

#define MLP FAMILY_LAYER "mlp."
#define QWEN_NAMES                                                                               \
    FAMILY_LLAMA_NAMES, .router = MLP "gate.weight", .e1 = MLP "experts.%d.gate_proj.weight",    \
    .e2 = MLP "experts.%d.down_proj.weight", .e3 = MLP "experts.%d.up_proj.weight",             \
    .d1 = MLP "gate_proj.weight", .d2 = MLP "down_proj.weight", .d3 = MLP "up_proj.weight"

static const wts_names_t qwen2_names = {
    QWEN_NAMES,
    .s1 = MLP "shared_expert.gate_proj.weight",
    .s2 = MLP "shared_expert.down_proj.weight",
    .s3 = MLP "shared_expert.up_proj.weight",
    .sgate = MLP "shared_expert_gate.weight",
};

static const wts_names_t qwen3_names = {
    QWEN_NAMES,
    .qn = FAMILY_LAYER "self_attn.q_norm.weight",
    .kn = FAMILY_LAYER "self_attn.k_norm.weight",
};

const model_family_t family_qwen2_moe = {
    .model_type = "qwen2_moe",
    .config = cfg_read_qwen2_moe,
    .names = &qwen2_names,
    FAMILY_DECODER,
};

const model_family_t family_qwen3_moe = {
    .model_type = "qwen3_moe",
    .config = cfg_read_qwen3_moe,
    .names = &qwen3_names,
    FAMILY_DECODER,
};
