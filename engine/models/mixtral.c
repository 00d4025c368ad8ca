/* Mixtral (modeling_mixtral.py) with moemu's extensions: capacity factor,
 * shared experts, gelu experts (DESIGN.md, "Model semantics"). */
#include "engine/models/family.h"

static void mixtral_dims(const cfg_model_t *c, par_dims_t *m)
{
    *m = (par_dims_t){.layers = c->num_hidden_layers, .heads = c->num_attention_heads,
                      .kv_heads = c->num_key_value_heads, .experts = c->num_local_experts,
                      .expert_ffn = c->intermediate_size, .shared_experts = c->num_shared_experts,
                      .shared_ffn = c->shared_expert_intermediate_size, .vocab = c->vocab_size};
}

const model_family_t family_mixtral = {
    .model_type = "mixtral",
    .dims = mixtral_dims,
};
