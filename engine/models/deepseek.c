/* DeepSeek-V2 and V3 (modeling_deepseek_v2.py, modeling_deepseek_v3.py;
 * DeepSeek's inference/model.py): multi-head latent attention, a grouped
 * router (softmax or sigmoid; V3's e_score_correction_bias), shared
 * experts as one MLP, dense first layers. Kimi-K2 is V3's architecture
 * under its own model_type. The config readers are in
 * engine/models/config.c. */
#include "engine/models/family.h"

#define ATT FAMILY_LAYER "self_attn."
#define MLP FAMILY_LAYER "mlp."
static const wts_names_t deepseek_names = {
    FAMILY_LLAMA_NAMES,
    .q_a = ATT "q_a_proj.weight",
    .q_a_norm = ATT "q_a_layernorm.weight",
    .q_b = ATT "q_b_proj.weight",
    .kv_a = ATT "kv_a_proj_with_mqa.weight",
    .kv_a_norm = ATT "kv_a_layernorm.weight",
    .kv_b = ATT "kv_b_proj.weight",
    .router = MLP "gate.weight",
    .gate_bias = MLP "gate.e_score_correction_bias",
    .e1 = MLP "experts.%d.gate_proj.weight",
    .e2 = MLP "experts.%d.down_proj.weight",
    .e3 = MLP "experts.%d.up_proj.weight",
    .s1 = MLP "shared_experts.gate_proj.weight",
    .s2 = MLP "shared_experts.down_proj.weight",
    .s3 = MLP "shared_experts.up_proj.weight",
    .d1 = MLP "gate_proj.weight",
    .d2 = MLP "down_proj.weight",
    .d3 = MLP "up_proj.weight",
};

const model_family_t family_deepseek_v2 = {
    .model_type = "deepseek_v2",
    .config = cfg_read_deepseek_v2,
    .names = &deepseek_names,
    FAMILY_DECODER,
};

const model_family_t family_deepseek_v3 = {
    .model_type = "deepseek_v3",
    .config = cfg_read_deepseek_v3,
    .names = &deepseek_names,
    FAMILY_DECODER,
};

const model_family_t family_kimi_k2 = {
    .model_type = "kimi_k2",
    .config = cfg_read_kimi_k2,
    .names = &deepseek_names,
    FAMILY_DECODER,
};
