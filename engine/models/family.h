/* family: a model family behind a table of functions, chosen by the
 * config's model_type (DESIGN.md, "Model semantics"). The runner, the
 * tools and the CLI reach a model's layout, sizes and layers only through
 * its family's entry, so that a new family is a new entry and touches
 * neither parallel/, emu/ nor the runner (docs/architecture.md gives the
 * recipe). */
#ifndef MOEMU_FAMILY_H
#define MOEMU_FAMILY_H

#include "engine/models/weights.h"

/* What one rank holds under a strategy: parallel/'s coordinates, stage
 * and experts, and the family's slices as layers/ reads them. */
typedef struct {
    par_place_t par;
    layer_dims_t dims;            /* heads, key/value heads, vocabulary rows */
    int head1, kv_head1, vocab1;  /* ends of those ranges */
    bool kv_replicated;           /* TP does not divide the key/value heads */
    int shared_ffn0, shared_ffn1; /* slice of each shared expert's F */
    int dense_ffn0, dense_ffn1;   /* slice of a dense layer's F */
} model_place_t;

/* One rank's pass through one layer, as the runner hands it to the
 * family; the runner's part of routing is called back from the MoE block:
 * chosen after the router (a dry run replaces the choices in v->idx),
 * kept after the capacity (the runner records and counts). */
typedef struct model_pass model_pass_t;
struct model_pass {
    layer_view_t *v;
    const wts_t *w;
    const model_place_t *place;
    int layer;
    int64_t *load; /* (experts) rows each expert computed, this layer */
    layer_xfer_t *xfer; /* (2) layer_experts_t's: the dispatch's and combine's */
    void (*chosen)(const model_pass_t *p);
    void (*kept)(const model_pass_t *p, int64_t dropped);
    void *arg;
};

struct model_family {
    const char *model_type; /* "mixtral" */
    /* Read a config.json object of this family into out (keys, refused
     * keys, defaults, then every rule: all problems reported at once). */
    moemu_status_t (*config)(cfg_model_t *out, json_t *root, const char *label);
    /* The sizes parallel/'s generic rules need, with the family's own
     * rules (heads, key/value heads, ...) in it. */
    void (*dims)(const cfg_model_t *c, par_dims_t *out);
    /* The tensors' Hugging Face names, as a checkpoint of the family
     * holds them (loading, dumping, generation). */
    const wts_names_t *names;
    /* What rank holds under s (s valid for the model). */
    void (*place)(const cfg_model_t *c, const par_strategy_t *s, int rank, model_place_t *out);
    /* Exact parameter counts, weight bytes and FLOPs per token of the whole
     * model (info, plan, sweep and the report). */
    void (*figures)(const cfg_model_t *c, cfg_figures_t *out);
    /* Bytes of weights a rank holds in the emulated dtype; *layer and
     * *head (may be NULL) receive the elements of one of its layers and of
     * lm_head with the final norm on a stage of its own. */
    double (*held)(const cfg_model_t *c, const model_place_t *p, double *layer, double *head);
    /* One decoder layer on one rank (layers/' sharded blocks). */
    moemu_status_t (*layer)(const model_pass_t *p);
    /* The part of tensor t (an entry of wts_t.list) that the rank placed
     * at p reads in a forward pass, as a box of t's 2-D view: exact where
     * one box can be, else the bounding box of what it reads; empty when
     * it reads none of it (wts_boxes_for, docs/weights.md). */
    void (*reads)(const cfg_model_t *c, const model_place_t *p, const wts_tensor_t *t,
                  wts_box_t *box);
};

extern const model_family_t family_mixtral, family_qwen2_moe, family_qwen3_moe, family_olmoe,
    family_granitemoe, family_deepseek_v2, family_deepseek_v3, family_kimi_k2, family_gpt_oss;

/* The decoder every family above shares (engine/models/decoder.c): its
 * entries read the variations from cfg_model_t, so that a family differs
 * in its config reading and its names. */
void dec_dims(const cfg_model_t *c, par_dims_t *out);
void dec_place(const cfg_model_t *c, const par_strategy_t *s, int rank, model_place_t *out);
double dec_held(const cfg_model_t *c, const model_place_t *p, double *layer, double *head);
moemu_status_t dec_layer(const model_pass_t *p);
void dec_reads(const cfg_model_t *c, const model_place_t *p, const wts_tensor_t *t,
               wts_box_t *box);

/* The names every family here shares (modeling_llama.py's): embedding,
 * final norm, lm_head, and each layer's norms and attention projections
 * with their biases; a family's wts_names_t starts with them. */
#define FAMILY_LAYER "model.layers.%d."
#define FAMILY_LLAMA_NAMES                                                                       \
    .embed = "model.embed_tokens.weight", .final_norm = "model.norm.weight",                     \
    .lm_head = "lm_head.weight", .attn_norm = FAMILY_LAYER "input_layernorm.weight",             \
    .q = FAMILY_LAYER "self_attn.q_proj.weight", .k = FAMILY_LAYER "self_attn.k_proj.weight",    \
    .v = FAMILY_LAYER "self_attn.v_proj.weight", .o = FAMILY_LAYER "self_attn.o_proj.weight",    \
    .bq = FAMILY_LAYER "self_attn.q_proj.bias", .bk = FAMILY_LAYER "self_attn.k_proj.bias",      \
    .bv = FAMILY_LAYER "self_attn.v_proj.bias", .bo = FAMILY_LAYER "self_attn.o_proj.bias",      \
    .mlp_norm = FAMILY_LAYER "post_attention_layernorm.weight"

/* The shared decoder's entries, for a family that is one of its
 * variations. */
#define FAMILY_DECODER                                                                           \
    .dims = dec_dims, .place = dec_place, .figures = cfg_figures, .held = dec_held,              \
    .layer = dec_layer, .reads = dec_reads

/* A config's family: one without model_type is moemu's own format,
 * Mixtral's function with its extensions (DESIGN.md). */
static inline const model_family_t *family_of(const cfg_model_t *c)
{
    return c->family ? c->family : &family_mixtral;
}
/* The family registered for model_type, NULL if none. */
const model_family_t *family_find(const char *model_type);
/* "mixtral, ...": the registered names, for messages. */
const char *family_names(void);

#endif
