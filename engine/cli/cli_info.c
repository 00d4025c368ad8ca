/* moemu info: a model's true size and cost. */
#include <string.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"

static const char info_help[] =
    "usage: moemu info [--model NAME|FILE] [--json FILE]\n"
    "\n"
    "Print the model's configuration, its exact parameter count (total and\n"
    "active per token, by part), its weight bytes in the emulated dtype and\n"
    "its forward FLOPs per token.\n";

static const cli_opt_t info_options[] = {
    CLI_USE("model"), CLI_USE("weight-dtype"), CLI_USE("strict"),
    {.name = "json", .type = CLI_SHARED, .help = "the same figures as JSON"},
    {.name = NULL},
};

/* DeepSeek's router in words. */
static void info_gate(const cfg_model_t *m)
{
    printf("%s scores, ", m->gate_sigmoid ? "sigmoid" : "softmax");
    if (m->n_group > 1)
        printf("the best %d of %d groups (by their best %s), ", m->topk_group, m->n_group,
               m->gate_top2 ? "two" : "one");
    printf("top-k%s%s, weights x %g", m->gate_bias ? " on biased scores" : "",
           m->gate_norm ? ", renormalised" : "", m->routed_scaling_factor);
}

/* What of the family's variations the model uses, in one line. */
static void info_family(const cfg_model_t *m)
{
    static const char *const route[] = {"softmax, top-k, renormalised", "softmax, top-k",
                                        "top-k logits, softmax", ""};
    static const char *const qk[] = {"", ", query/key norm by head", ", query/key norm by width"};
    printf("  %s: router ", family_of(m)->model_type);
    if (m->router == LAYER_ROUTE_GROUPED) info_gate(m);
    else printf("%s", route[m->router]);
    printf("%s%s%s", m->qkv_bias ? (m->o_bias ? ", q/k/v/o biases" : ", q/k/v biases") : "",
           qk[m->qk_norm], m->shared_gate ? ", gated shared expert" : "");
    if (m->kv_lora_rank > 0)
        printf(", MLA (q rank %d, kv rank %d, heads of %d + %d rope, values %d; cache %d a token "
               "and layer)", m->q_lora_rank, m->kv_lora_rank, m->qk_nope_head_dim,
               m->qk_rope_head_dim, m->v_head_dim, m->kv_lora_rank + m->qk_rope_head_dim);
    if (m->clip_qkv > 0) printf(", clip_qkv %g", m->clip_qkv);
    if (m->num_dense_layers)
        printf(", %d dense layers of %d", m->num_dense_layers, m->dense_intermediate_size);
    if (m->embedding_multiplier != 1 || m->residual_multiplier != 1 || m->logits_scaling != 1 ||
        m->attention_multiplier > 0)
        printf(", multipliers: embedding %g, residual %g, attention %g, logits / %g",
               m->embedding_multiplier, m->residual_multiplier, m->attention_multiplier,
               m->logits_scaling);
    if (m->yarn_factor > 0)
        printf(", YaRN x%g from %g positions", m->yarn_factor, m->yarn_original_max);
    if (m->sinks) printf(", attention sinks");
    if (m->num_sliding_layers)
        printf(", %d of %d layers in a sliding window of %d", m->num_sliding_layers,
               m->num_hidden_layers, m->sliding_window);
    if (m->expert_bias)
        printf(", router and expert biases, SwiGLU clamped at %g", m->swiglu_limit);
    if (m->num_nextn_predict_layers)
        printf(", %d multi-token prediction layer%s (not counted, not loaded)",
               m->num_nextn_predict_layers, m->num_nextn_predict_layers > 1 ? "s" : "");
    printf("\n");
}

int cli_info_main(int argc, char **argv)
{
    cli_shared_t sh;
    cli_shared_init(&sh);
    bool help;
    int first;
    if (cli_parse("moemu info", argc, argv, info_options, &sh, NULL, &help, &first) != MOEMU_OK)
        return cli_error();
    if (help) {
        fputs(info_help, stdout);
        cli_help(stdout, info_options);
        return CLI_EXIT_OK;
    }
    if (cli_no_operands("moemu info", argc, argv, first) != MOEMU_OK ||
        cli_outputs_check(&sh, NULL, 0, NULL) != MOEMU_OK)
        return cli_error();
    const char *json = sh.json;
    cfg_model_t m;
    if (cli_load_model(&m, &sh) != MOEMU_OK) return cli_error();
    cfg_figures_t f;
    family_of(&m)->figures(&m, &f);
    printf("model %s\n", m.name);
    printf("  vocab %d, hidden %d, %d layers, %d heads (%d kv) of %d, %d experts of %d "
           "(top-%d, %s), %d shared of %d\n",
           m.vocab_size, m.hidden_size, m.num_hidden_layers, m.num_attention_heads,
           m.num_key_value_heads, m.head_dim, m.num_local_experts, m.intermediate_size,
           m.num_experts_per_tok,
           m.hidden_act == LAYER_ACT_SILU ? "silu" : m.hidden_act == LAYER_ACT_GELU ? "gelu"
                                                                          : "gpt-oss swiglu",
           m.num_shared_experts, m.shared_expert_intermediate_size);
    info_family(&m);
    printf("  capacity factor %g%s, dtype %s, rope theta %g, tied embeddings %s\n",
           m.capacity_factor, m.capacity_factor == 0 ? " (dropless)" : "",
           emu_dtype_name(m.dtype), m.rope_theta, m.tie_word_embeddings ? "yes" : "no");
    printf("parameters         %15lld  (%.4g)\n", (long long)f.total, (double)f.total);
    printf("  embedding        %15lld\n", (long long)f.embedding);
    printf("  attention        %15lld\n", (long long)f.attention);
    printf("  router           %15lld\n", (long long)f.router);
    printf("  routed experts   %15lld\n", (long long)f.experts);
    printf("  shared experts   %15lld\n", (long long)f.shared);
    printf("  dense MLPs       %15lld\n", (long long)f.dense);
    printf("  norms            %15lld\n", (long long)f.norms);
    printf("  lm_head          %15lld\n", (long long)f.lm_head);
    printf("active per token   %15lld  (%.4g)\n", (long long)f.active_per_token,
           (double)f.active_per_token);
    printf("  as cards count   %15lld  (%.4g; the embedding matrix included)\n",
           (long long)f.active_card, (double)f.active_card);
    double act = (double)f.total * (double)emu_dtype_size(m.dtype);
    printf("weight bytes       %15.0f  (%.4g GB", f.weight_bytes, f.weight_bytes / 1e9);
    if (m.mxfp4) printf(" with the routed experts in mxfp4, 4.25 bits a weight,");
    if (m.fp8_block_r > 0)
        printf(" in fp8 e4m3 with a scale per %d x %d block", m.fp8_block_r, m.fp8_block_c);
    if (m.mxfp4 || m.fp8_block_r > 0)
        printf("%s; %.4g GB in %s)\n", m.mxfp4 && !m.fp8_block_r ? " the rest in the dtype" : "",
               act / 1e9, emu_dtype_name(m.dtype));
    else
        printf(" in %s)\n", emu_dtype_name(m.dtype));
    printf("FLOPs per token    %15.0f  (%.4g; + %.4g per visible (query, key) pair for "
           "attention)\n", f.flops_per_token, f.flops_per_token, f.attn_flops_per_pair);
    if (json) {
        json_t *root = json_pack(
            "{s:s, s:s, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}, s:f, s:f, s:f}",
            "model", m.name, "model_type", family_of(&m)->model_type, "parameters", "total",
            (json_int_t)f.total, "active_per_token", (json_int_t)f.active_per_token,
            "active_card", (json_int_t)f.active_card, "dense", (json_int_t)f.dense, "embedding", (json_int_t)f.embedding, "attention",
            (json_int_t)f.attention, "router", (json_int_t)f.router, "experts",
            (json_int_t)f.experts, "shared", (json_int_t)f.shared, "norms", (json_int_t)f.norms,
            "lm_head", (json_int_t)f.lm_head, "weight_bytes", f.weight_bytes,
            "flops_per_token", f.flops_per_token, "attn_flops_per_pair", f.attn_flops_per_pair);
        moemu_status_t st = outfile_json(json, root);
        json_decref(root);
        if (st != MOEMU_OK) return cli_error();
    }
    return CLI_EXIT_OK;
}
