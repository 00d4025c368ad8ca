/* gpt-oss (modeling_gpt_oss.py): attention with q/k/v/o biases and a
 * learned sink logit per head, sliding-window attention on the layers
 * layer_types names, a router with a bias whose top k logits go through a
 * softmax, and experts with biases and a clamped SwiGLU over gate and up
 * interleaved in one (d, 2F) tensor. The config reader is in
 * engine/models/config.c. */
#include "engine/models/family.h"

#define OAI_MLP FAMILY_LAYER "mlp."
static const wts_names_t gpt_oss_names = {
    FAMILY_LLAMA_NAMES,
    .sinks = FAMILY_LAYER "self_attn.sinks",
    .router = OAI_MLP "router.weight",
    .router_bias = OAI_MLP "router.bias",
    .gate_up = OAI_MLP "experts.gate_up_proj",
    .gate_up_bias = OAI_MLP "experts.gate_up_proj_bias",
    .down = OAI_MLP "experts.down_proj",
    .down_bias = OAI_MLP "experts.down_proj_bias",
};

const model_family_t family_gpt_oss = {
    .model_type = "gpt_oss",
    .config = cfg_read_gpt_oss,
    .names = &gpt_oss_names,
    FAMILY_DECODER,
};
