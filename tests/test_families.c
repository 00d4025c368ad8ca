/* The config contract of the Hugging Face families: the real configs in
 * examples/models read as their family with no key left unread, HF's
 * defaults for absent keys, every key a family's code reads implemented
 * or refused by name, every problem of a config at once (one a line),
 * keys nobody reads named in one warning, rope_parameters read as well as
 * rope_theta; and checkpoints of the family's own names, sharded as the
 * Hub ships them, round-tripped. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/family.h"

/* ---- warnings, captured */

static char warned[2048];
static int n_warned;

static void capture(void *arg, const char *line)
{
    (void)arg;
    n_warned++;
    snprintf(warned, sizeof warned, "%s", line);
}

static void watch(void)
{
    warned[0] = '\0';
    n_warned = 0;
    moemu_warn_handler(capture, NULL);
}

static void unwatch(void) { moemu_warn_handler(NULL, NULL); }

static moemu_status_t parse(cfg_model_t *c, const char *json)
{
    return cfg_parse(c, json, "x");
}

/* ---- the real configs */

static const struct {
    const char *file, *type;
} real[] = {
    {"Qwen1.5-MoE-A2.7B", "qwen2_moe"}, {"Qwen2-57B-A14B", "qwen2_moe"},
    {"Qwen3-30B-A3B", "qwen3_moe"},     {"Qwen3-235B-A22B", "qwen3_moe"},
    {"OLMoE-1B-7B-0924", "olmoe"},      {"granite-3.1-1b-a400m", "granitemoe"},
    {"Mixtral-8x7B-v0.1", "mixtral"},   {"Mixtral-8x22B-v0.1", "mixtral"},
    {"gpt-oss-20b", "gpt_oss"},         {"gpt-oss-120b", "gpt_oss"},
};

Test(families, real_configs_read_as_their_family_with_no_key_unread, .init = watch,
     .fini = unwatch)
{
    const char *src = getenv("MOEMU_SRCDIR");
    for (size_t i = 0; i < sizeof real / sizeof real[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/examples/models/%s.json", src ? src : ".", real[i].file);
        cfg_model_t c;
        cr_assert_eq(cfg_load(&c, path), MOEMU_OK, "%s: %s", path, moemu_errmsg());
        cr_expect_str_eq(family_of(&c)->model_type, real[i].type, "%s", real[i].file);
    }
    cr_expect_eq(n_warned, 0, "a real config left keys unread: %s", warned);
}

Test(families, what_the_real_configs_say)
{
    const char *src = getenv("MOEMU_SRCDIR");
    char path[512];
    cfg_model_t c;
    snprintf(path, sizeof path, "%s/examples/models/Qwen2-57B-A14B.json", src ? src : ".");
    cr_assert_eq(cfg_load(&c, path), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.qkv_bias && !c.o_bias && c.shared_gate && c.num_shared_experts == 1);
    cr_expect_eq(c.shared_expert_intermediate_size, 20480);
    cr_expect_eq(c.intermediate_size, 2560, "the routed experts' F is moe_intermediate_size");
    cr_expect_eq(c.router, LAYER_ROUTE_SOFTMAX_TOPK, "norm_topk_prob false");
    cr_expect_eq(c.num_key_value_heads, 4);
    snprintf(path, sizeof path, "%s/examples/models/Qwen3-30B-A3B.json", src ? src : ".");
    cr_assert_eq(cfg_load(&c, path), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.qk_norm == LAYER_QKNORM_HEAD && c.head_dim == 128 && c.hidden_size == 2048);
    cr_expect_eq(c.router, LAYER_ROUTE_SOFTMAX_TOPK_NORM);
    cr_expect_eq(c.num_local_experts, 128);
    snprintf(path, sizeof path, "%s/examples/models/OLMoE-1B-7B-0924.json", src ? src : ".");
    cr_assert_eq(cfg_load(&c, path), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.qk_norm == LAYER_QKNORM_WIDTH && c.router == LAYER_ROUTE_SOFTMAX_TOPK);
    cr_expect_eq(c.clip_qkv, 0.0);
    snprintf(path, sizeof path, "%s/examples/models/granite-3.1-1b-a400m.json", src ? src : ".");
    cr_assert_eq(cfg_load(&c, path), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.router == LAYER_ROUTE_TOPK_SOFTMAX && c.tie_word_embeddings);
    cr_expect(c.embedding_multiplier == 12 && c.residual_multiplier == 0.22 &&
              c.attention_multiplier == 0.015625 && c.logits_scaling == 6);
}

/* ---- defaults: the configuration classes' */

Test(families, absent_keys_take_the_classes_defaults)
{
    cfg_model_t c;
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen2_moe\"}"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.vocab_size == 151936 && c.hidden_size == 2048 && c.num_local_experts == 60 &&
              c.num_experts_per_tok == 4 && c.intermediate_size == 1408 &&
              c.shared_expert_intermediate_size == 5632 && c.num_key_value_heads == 16 &&
              c.rope_theta == 1e4 && c.rms_norm_eps == 1e-6 && c.qkv_bias);
    cr_expect_eq(c.num_dense_layers, 0);
    cr_assert_eq(parse(&c, "{\"model_type\":\"olmoe\"}"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.vocab_size == 50304 && c.num_local_experts == 64 && c.rms_norm_eps == 1e-5 &&
              c.num_key_value_heads == 16 && c.max_position_embeddings == 4096);
    cr_assert_eq(parse(&c, "{\"model_type\":\"granitemoe\"}"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.embedding_multiplier == 1 && c.attention_multiplier == 1 &&
              c.num_local_experts == 8 && c.intermediate_size == 11008);
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen3_moe\"}"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.num_local_experts == 128 && c.num_key_value_heads == 4 && c.head_dim == 64 &&
              c.router == LAYER_ROUTE_SOFTMAX_TOPK && !c.qkv_bias);
}

/* ---- dense layers: (l + 1) % decoder_sparse_step, and mlp_only_layers */

Test(families, dense_layers_as_qwen_places_them)
{
    cfg_model_t c;
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen3_moe\",\"num_hidden_layers\":6,"
                           "\"decoder_sparse_step\":2,\"mlp_only_layers\":[3]}"),
                 MOEMU_OK, "%s", moemu_errmsg());
    const bool dense[6] = {true, false, true, true, true, false};
    for (int l = 0; l < 6; l++) cr_expect_eq(cfg_layer_dense(&c, l), dense[l], "layer %d", l);
    cr_expect_eq(c.num_dense_layers, 4);
    cr_expect_eq(cfg_moe_layers(&c), 2);
    cfg_figures_t f;
    cfg_figures(&c, &f);
    cr_expect_eq(f.dense, 4LL * 3 * c.hidden_size * c.dense_intermediate_size);
    cr_expect_eq(f.router, 2LL * c.num_local_experts * c.hidden_size);
}

/* ---- refused by name, every problem at once */

static const struct {
    const char *json, *says;
} refused[] = {
    {"{\"model_type\":\"qwen2_moe\",\"use_sliding_window\":true}", "'use_sliding_window' = true"},
    {"{\"model_type\":\"qwen2_moe\",\"layer_types\":[\"full_attention\",\"sliding_attention\"]}",
     "'layer_types[1]'"},
    {"{\"model_type\":\"qwen3_moe\",\"rope_scaling\":{\"rope_type\":\"linear\",\"factor\":4}}",
     "'rope_scaling' = {\"rope_type\":\"linear\""},
    {"{\"model_type\":\"qwen3_moe\",\"rope_parameters\":{\"rope_type\":\"llama3\","
     "\"rope_theta\":1000000}}", "'rope_parameters'"},
    {"{\"model_type\":\"qwen3_moe\",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":0.5}}",
     "YaRN needs factor >= 1"},
    {"{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":10,\"n_group\":4}",
     "'n_group' = 4 does not divide the 10 routed experts"},
    {"{\"model_type\":\"deepseek_v3\",\"n_group\":4,\"topk_group\":5}",
     "'topk_group' = 5 exceeds n_group = 4"},
    {"{\"model_type\":\"deepseek_v3\",\"n_routed_experts\":16,\"n_group\":8,"
     "\"topk_group\":1,\"num_experts_per_tok\":3}",
     "'num_experts_per_tok' = 3 exceeds the 2 experts of the topk_group = 1 chosen groups"},
    {"{\"model_type\":\"deepseek_v3\",\"kv_lora_rank\":0}", "'kv_lora_rank' must be positive"},
    {"{\"model_type\":\"deepseek_v2\",\"norm_topk_prob\":true}",
     "'norm_topk_prob' = true is not supported for deepseek_v2"},
    {"{\"model_type\":\"deepseek_v3\",\"scoring_func\":\"relu\"}", "'scoring_func'"},
    {"{\"model_type\":\"deepseek_v2\",\"rope_interleave\":false}", "'rope_interleave' = false"},
    {"{\"model_type\":\"olmoe\",\"quantization_config\":{\"quant_method\":\"fp8\","
     "\"weight_block_size\":[64]}}", "'quantization_config'"},
    {"{\"model_type\":\"deepseek_v3\",\"quantization_config\":{\"quant_method\":\"awq\"}}",
     "'quantization_config'"},
    {"{\"model_type\":\"olmoe\",\"head_dim\":64}", "'head_dim' = 64 is ambiguous"},
    {"{\"model_type\":\"granitemoe\",\"head_dim\":64}", "'head_dim' = 64 is ambiguous"},
    {"{\"model_type\":\"qwen2_moe\",\"quantization_config\":{\"quant_method\":\"gptq\"}}",
     "'quantization_config'"},
    {"{\"model_type\":\"olmoe\",\"hidden_act\":\"gelu\"}", "must be silu for model_type olmoe"},
    {"{\"model_type\":\"qwen2_moe\",\"num_hidden_layers\":4,\"mlp_only_layers\":[4]}",
     "'mlp_only_layers[0]' must be a layer index in [0, 4)"},
    {"{\"model_type\":\"qwen2_moe\",\"decoder_sparse_step\":0}", "'decoder_sparse_step'"},
    {"{\"model_type\":\"olmoe\",\"clip_qkv\":-1}", "'clip_qkv'"},
    {"{\"model_type\":\"olmoe\",\"clip_qkv\":0}", "'clip_qkv' must be null or"},
    {"{\"model_type\":\"qwen2_moe\",\"shared_expert_intermediate_size\":0}",
     "'shared_expert_intermediate_size' must be positive"},
    {"{\"model_type\":\"qwen2_moe\",\"layer_types\":\"full_attention\"}", "'layer_types'"},
    {"{\"model_type\":\"granitemoe\",\"position_embedding_type\":\"absolute\"}",
     "'position_embedding_type'"},
    {"{\"model_type\":\"mixtral\",\"vocab_size\":32,\"hidden_size\":8,"
     "\"intermediate_size\":8,\"num_hidden_layers\":1,\"num_attention_heads\":2,"
     "\"num_local_experts\":2,\"num_experts_per_tok\":1,\"quantization_config\":{}}",
     "'quantization_config'"},
    {"{\"model_type\":\"granitemoe\",\"logits_scaling\":0}", "'logits_scaling'"},
    {"{\"model_type\":\"qwen3_moe\",\"partial_rotary_factor\":0.5}", "'partial_rotary_factor'"},
};

Test(families, unsupported_values_refused_by_name)
{
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        cfg_model_t c;
        cr_expect_eq(parse(&c, refused[i].json), MOEMU_ERR_INVALID, "%s", refused[i].json);
        cr_expect(strstr(moemu_errmsg(), refused[i].says), "%s: %s lacks %s", refused[i].json,
                  moemu_errmsg(), refused[i].says);
    }
}

Test(families, every_problem_of_a_config_at_once)
{
    cfg_model_t c;
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen3_moe\",\"use_sliding_window\":true,"
                           "\"rope_scaling\":{\"type\":\"yarn\"},\"hidden_size\":\"big\","
                           "\"quantization_config\":{},\"num_experts_per_tok\":0}"),
                 MOEMU_ERR_INVALID);
    const char *m = moemu_errmsg();
    const char *head = "x: 5 problems in the config:\n  ";
    cr_expect(strncmp(m, head, strlen(head)) == 0, "%s", m);
    const char *each[] = {"'use_sliding_window'", "'rope_scaling.factor'", "'hidden_size'",
                          "'quantization_config'", "'num_experts_per_tok'"};
    for (size_t i = 0; i < 5; i++) cr_expect(strstr(m, each[i]), "%s lacks %s", m, each[i]);
}

/* gpt-oss: the real config as GptOssConfig reads it, the class's defaults
 * (YaRN unless rope_scaling is an explicit null), and every problem of
 * its own keys at once. */
Test(families, gpt_oss_config)
{
    const char *src = getenv("MOEMU_SRCDIR");
    char path[512];
    cfg_model_t c;
    snprintf(path, sizeof path, "%s/examples/models/gpt-oss-120b.json", src ? src : ".");
    cr_assert_eq(cfg_load(&c, path), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.sinks && c.expert_bias && c.qkv_bias && c.o_bias && c.mxfp4);
    cr_expect(c.hidden_act == LAYER_ACT_SWIGLU_OAI && c.router == LAYER_ROUTE_TOPK_SOFTMAX);
    cr_expect(c.sliding_window == 128 && c.num_sliding_layers == 18 && cfg_layer_sliding(&c, 0) &&
              !cfg_layer_sliding(&c, 1) && cfg_layer_sliding(&c, 34) && !cfg_layer_sliding(&c, 35));
    cr_expect(c.yarn_factor == 32 && c.yarn_original_max == 4096 && !c.yarn_truncate);
    cr_expect(c.swiglu_limit == 7.0 && c.head_dim == 64 && c.dtype == EMU_DTYPE_BF16);
    cr_assert_eq(parse(&c, "{\"model_type\":\"gpt_oss\"}"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.num_local_experts == 128 && c.num_hidden_layers == 36 && c.yarn_factor == 32 &&
              c.num_sliding_layers == 18 && !c.mxfp4);
    cr_assert_eq(parse(&c, "{\"model_type\":\"gpt_oss\",\"rope_scaling\":null}"), MOEMU_OK);
    cr_expect_eq(c.yarn_factor, 0, "an explicit null is plain RoPE");
    cr_assert_eq(parse(&c, "{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":3,"
                           "\"sliding_window\":0,\"swiglu_limit\":-1,\"layer_types\":"
                           "[\"full_attention\",\"local\",\"sliding_attention\"]}"),
                 MOEMU_ERR_INVALID);
    const char *m = moemu_errmsg();
    const char *each[] = {"3 problems", "'sliding_window' must be at least 1, got 0",
                          "'swiglu_limit' must be a finite number > 0, got -1",
                          "'layer_types[1]' = \"local\" is neither"};
    for (size_t i = 0; i < 4; i++) cr_expect(strstr(m, each[i]), "%s lacks %s", m, each[i]);
    cr_assert_eq(parse(&c, "{\"model_type\":\"gpt_oss\",\"num_hidden_layers\":3,"
                           "\"layer_types\":[\"full_attention\"]}"),
                 MOEMU_ERR_INVALID);
    cr_expect(strstr(moemu_errmsg(), "'layer_types' has 1 entries for num_hidden_layers = 3"), "%s",
              moemu_errmsg());
}

/* ---- warnings and rope_parameters */

Test(families, unread_keys_named_in_one_warning, .init = watch, .fini = unwatch)
{
    cfg_model_t c;
    cr_assert_eq(parse(&c, "{\"model_type\":\"olmoe\",\"num_shared_experts\":2,\"foo\":1}"),
                 MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(n_warned, 1);
    cr_expect_str_eq(warned, "x: 2 config keys that moemu does not read (ignored): "
                             "'num_shared_experts', 'foo'");
    cr_expect_eq(c.num_shared_experts, 0, "a key of another family changes nothing");
}

/* YaRN is read for every family whose transformers code accepts it. */
Test(families, yarn_read_for_every_family)
{
    cfg_model_t c;
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen3_moe\",\"rope_scaling\":{\"rope_type\":"
                           "\"yarn\",\"factor\":4.0,\"original_max_position_embeddings\":32768}}"),
                 MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.yarn_factor == 4 && c.yarn_original_max == 32768 && c.yarn_beta_fast == 32 &&
              c.yarn_beta_slow == 1 && c.yarn_truncate && c.yarn_mscale == 0);
    cr_assert_eq(parse(&c, "{\"model_type\":\"deepseek_v2\",\"rope_scaling\":{\"type\":"
                           "\"yarn\",\"factor\":40,\"mscale\":0.707,\"mscale_all_dim\":0.707,"
                           "\"original_max_position_embeddings\":4096}}"),
                 MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.yarn_factor == 40 && c.yarn_mscale == 0.707 && c.yarn_mscale_all_dim == 0.707);
    cr_expect(c.rope_interleave && c.kv_lora_rank == 512 && c.router == LAYER_ROUTE_GROUPED);
    /* the classes' defaults where a config is silent */
    cr_assert_eq(parse(&c, "{\"model_type\":\"deepseek_v3\"}"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.n_group == 8 && c.topk_group == 4 && c.gate_norm && c.num_shared_experts == 1 &&
              c.shared_expert_intermediate_size == 2048 && c.num_dense_layers == 3 &&
              c.gate_sigmoid && c.gate_bias && c.routed_scaling_factor == 2.5);
    cr_assert_eq(parse(&c, "{\"model_type\":\"mixtral\",\"vocab_size\":32,\"hidden_size\":8,"
                           "\"intermediate_size\":8,\"num_hidden_layers\":1,"
                           "\"num_attention_heads\":2,\"num_local_experts\":2,"
                           "\"num_experts_per_tok\":1,\"quantization_config\":{\"quant_method\":"
                           "\"fp8\",\"weight_block_size\":[128,128]}}"),
                 MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(c.fp8_block_r == 128 && cfg_weight_size(&c) == 1.0 + 4.0 / 16384);
}

Test(families, rope_parameters_read_as_rope_theta)
{
    cfg_model_t c;
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen3_moe\",\"rope_parameters\":{\"rope_type\":"
                           "\"default\",\"rope_theta\":5000000}}"),
                 MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(c.rope_theta, 5e6);
    cr_assert_eq(parse(&c, "{\"model_type\":\"olmoe\",\"rope_parameters\":{\"rope_theta\":2e5}}"),
                 MOEMU_OK, "no rope_type: transformers 5's default. %s", moemu_errmsg());
    cr_expect_eq(c.rope_theta, 2e5);
    cr_expect_eq(parse(&c, "{\"model_type\":\"qwen3_moe\",\"rope_theta\":10000,"
                           "\"rope_parameters\":{\"rope_theta\":5000000}}"),
                 MOEMU_ERR_INVALID);
    cr_expect(strstr(moemu_errmsg(), "disagree"), "%s", moemu_errmsg());
    cr_assert_eq(parse(&c, "{\"model_type\":\"qwen3_moe\",\"dtype\":\"bfloat16\"}"), MOEMU_OK);
    cr_expect_eq(c.dtype, EMU_DTYPE_BF16, "transformers 5 writes dtype");
}

/* ---- checkpoints in the family's names, sharded as the Hub ships them */

static const char granite_json[] =
    "{\"model_type\":\"granitemoe\",\"vocab_size\":50,\"hidden_size\":16,"
    "\"intermediate_size\":8,\"num_hidden_layers\":2,\"num_attention_heads\":2,"
    "\"num_local_experts\":4,\"num_experts_per_tok\":2,\"tie_word_embeddings\":true,"
    "\"torch_dtype\":\"bfloat16\"}";
static const char qwen2_json[] =
    "{\"model_type\":\"qwen2_moe\",\"vocab_size\":50,\"hidden_size\":16,"
    "\"intermediate_size\":24,\"moe_intermediate_size\":8,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":2,\"num_experts\":4,\"num_experts_per_tok\":2,"
    "\"shared_expert_intermediate_size\":12,\"mlp_only_layers\":[0],\"torch_dtype\":\"bfloat16\"}";

static bool has_tensor(const wts_t *w, const char *name, int ndim, int64_t a, int64_t b,
                       int64_t c)
{
    for (int i = 0; i < wts_tensor_count(w); i++) {
        wts_tensor_t t;
        wts_tensor_at(w, i, &t);
        if (strcmp(t.name, name) == 0)
            return t.ndim == ndim && t.shape[0] == a && (ndim < 2 || t.shape[1] == b) &&
                   (ndim < 3 || t.shape[2] == c);
    }
    return false;
}

Test(families, hub_names_and_shapes)
{
    cfg_model_t c;
    wts_t w;
    cr_assert_eq(parse(&c, granite_json), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_address_only(&w, &c), MOEMU_OK);
    cr_expect(has_tensor(&w, "model.layers.1.block_sparse_moe.input_linear.weight", 3, 4, 16, 16));
    cr_expect(has_tensor(&w, "model.layers.1.block_sparse_moe.output_linear.weight", 3, 4, 16, 8));
    cr_expect(has_tensor(&w, "model.layers.0.block_sparse_moe.router.layer.weight", 2, 4, 16, 0));
    cr_expect_not(has_tensor(&w, "lm_head.weight", 2, 50, 16, 0), "tied");
    wts_free(&w);
    cr_assert_eq(parse(&c, qwen2_json), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_address_only(&w, &c), MOEMU_OK);
    cr_expect(has_tensor(&w, "model.layers.0.mlp.gate_proj.weight", 2, 24, 16, 0), "dense layer 0");
    cr_expect_not(has_tensor(&w, "model.layers.0.mlp.gate.weight", 2, 4, 16, 0));
    cr_expect(has_tensor(&w, "model.layers.1.mlp.gate.weight", 2, 4, 16, 0));
    cr_expect(has_tensor(&w, "model.layers.1.mlp.experts.3.up_proj.weight", 2, 8, 16, 0));
    cr_expect(has_tensor(&w, "model.layers.1.mlp.shared_expert.down_proj.weight", 2, 16, 12, 0));
    cr_expect(has_tensor(&w, "model.layers.1.mlp.shared_expert_gate.weight", 2, 1, 16, 0));
    cr_expect(has_tensor(&w, "model.layers.0.self_attn.q_proj.bias", 1, 16, 0, 0));
    cr_expect_not(has_tensor(&w, "model.layers.0.self_attn.o_proj.bias", 1, 16, 0, 0));
    wts_free(&w);
}

Test(families, sharded_checkpoint_round_trip_and_the_wrong_family)
{
    char dir[] = "/tmp/moemu-fam-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/ck", dir);
    cfg_model_t c, other;
    wts_t w, r;
    cr_assert_eq(parse(&c, qwen2_json), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_generate_all(&w, &c, 5), MOEMU_OK);
    cr_assert_eq(wts_dump(&w, path, 2000), MOEMU_OK, "%s", moemu_errmsg());
    char index[160];
    snprintf(index, sizeof index, "%s/model.safetensors.index.json", path);
    cr_assert_eq(wts_load(&r, &c, index), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&w), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&r), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_eq(memcmp(r.block, w.block, sizeof(float) * (size_t)w.n_floats), 0,
                 "bit for bit (bf16 weights)");
    wts_free(&r);
    /* the same sizes as granite: the names say it is another family's */
    cr_assert_eq(parse(&other, granite_json), MOEMU_OK);
    cr_expect_eq(wts_load(&r, &other, path), MOEMU_ERR_FORMAT);
    cr_expect(strstr(moemu_errmsg(), "missing: 'model.layers.0.block_sparse_moe.router.layer.weight'") &&
                  strstr(moemu_errmsg(), "the model does not have: 'model.layers.0.self_attn.q_proj.bias'"),
              "%s", moemu_errmsg());
    wts_free(&w);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}
