/* OLMoE (modeling_olmoe.py): query and key normalised over their whole
 * projected width, clip_qkv, no renormalisation of the top-k unless
 * norm_topk_prob. The config reader is in engine/models/config.c. */
#include "engine/models/family.h"

#define LAYER "model.layers.%d."
static const wts_names_t olmoe_names = {
    .embed = "model.embed_tokens.weight",
    .final_norm = "model.norm.weight",
    .lm_head = "lm_head.weight",
    .attn_norm = LAYER "input_layernorm.weight",
    .q = LAYER "self_attn.q_proj.weight",
    .k = LAYER "self_attn.k_proj.weight",
    .v = LAYER "self_attn.v_proj.weight",
    .o = LAYER "self_attn.o_proj.weight",
    .bq = LAYER "self_attn.q_proj.bias",
    .bk = LAYER "self_attn.k_proj.bias",
    .bv = LAYER "self_attn.v_proj.bias",
    .bo = LAYER "self_attn.o_proj.bias",
    .qn = LAYER "self_attn.q_norm.weight",
    .kn = LAYER "self_attn.k_norm.weight",
    .mlp_norm = LAYER "post_attention_layernorm.weight",
    .router = LAYER "mlp.gate.weight",
    .e1 = LAYER "mlp.experts.%d.gate_proj.weight",
    .e2 = LAYER "mlp.experts.%d.down_proj.weight",
    .e3 = LAYER "mlp.experts.%d.up_proj.weight",
};

const model_family_t family_olmoe = {
    .model_type = "olmoe",
    .config = cfg_read_olmoe,
    .dims = dec_dims,
    .names = &olmoe_names,
    .place = dec_place,
    .figures = cfg_figures,
    .held = dec_held,
    .layer = dec_layer,
};
