/* The conformance matrix: every strategy gives the single-device
 * baseline's logits (relative L2 within 1e-5), the same greedy tokens and
 * the same routing, in prefill and 8 decode passes, dropless and with a
 * capacity factor that drops assignments, on two small Mixtral models and
 * one of each other family. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "engine/models/safetensors.h"
#include "engine/tools/check.h"

/* tiny: GQA (2 kv heads under TP4), vocabulary 97 that no TP divides.
 * odd: 8 heads over 2 kv heads, vocabulary 250 (TP4 does not divide it),
 * a shared expert, tied embeddings (the last stage keeps a copy), bf16. */
static const char odd_json[] =
    "{\"vocab_size\":250,\"hidden_size\":48,\"intermediate_size\":40,"
    "\"num_hidden_layers\":4,\"num_attention_heads\":8,\"num_key_value_heads\":2,"
    "\"head_dim\":8,\"num_local_experts\":8,\"num_experts_per_tok\":2,"
    "\"num_shared_experts\":1,\"shared_expert_intermediate_size\":32,"
    "\"tie_word_embeddings\":true,\"dtype\":\"bf16\",\"rope_theta\":10000}";

/* One small model in each Hugging Face family's own format, each with
 * what makes its sharding differ: Qwen2-MoE's q/k/v biases, gated shared
 * expert and a dense layer between MoE layers (stages that differ under
 * PP), no renormalisation; Qwen3-MoE's per-head query/key norms with
 * H*hd != d and every other layer dense; OLMoE's norms over the whole
 * width (the sums over TP, key/value heads replicated under TP4) and a
 * clip that bites; GraniteMoE's multipliers, top-k-then-softmax router,
 * fused experts and tied embeddings. */
static const char qwen2_json[] =
    "{\"model_type\":\"qwen2_moe\",\"vocab_size\":101,\"hidden_size\":48,"
    "\"intermediate_size\":64,\"moe_intermediate_size\":24,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_experts\":8,"
    "\"num_experts_per_tok\":3,\"shared_expert_intermediate_size\":32,"
    "\"norm_topk_prob\":false,\"mlp_only_layers\":[1],\"torch_dtype\":\"bfloat16\","
    "\"rope_theta\":10000}";
static const char qwen3_json[] =
    "{\"model_type\":\"qwen3_moe\",\"vocab_size\":90,\"hidden_size\":32,"
    "\"intermediate_size\":40,\"moe_intermediate_size\":24,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
    "\"num_experts\":8,\"num_experts_per_tok\":2,\"norm_topk_prob\":true,"
    "\"decoder_sparse_step\":2,\"torch_dtype\":\"float16\",\"rope_theta\":1000000}";
static const char olmoe_json[] =
    "{\"model_type\":\"olmoe\",\"vocab_size\":77,\"hidden_size\":48,"
    "\"intermediate_size\":32,\"num_hidden_layers\":4,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_experts\":8,\"num_experts_per_tok\":2,"
    "\"clip_qkv\":1.2,\"norm_topk_prob\":false,\"torch_dtype\":\"bfloat16\"}";
static const char granite_json[] =
    "{\"model_type\":\"granitemoe\",\"vocab_size\":97,\"hidden_size\":32,"
    "\"intermediate_size\":24,\"num_hidden_layers\":4,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_local_experts\":8,\"num_experts_per_tok\":2,"
    "\"embedding_multiplier\":12.0,\"attention_multiplier\":0.0625,"
    "\"residual_multiplier\":0.22,\"logits_scaling\":6.0,\"tie_word_embeddings\":true,"
    "\"torch_dtype\":\"bfloat16\"}";

/* DeepSeek: MLA (the latent replicated under TP, exchanged under CP),
 * YaRN with interleaved pairs, dense first layers, shared experts; V3's
 * sigmoid router with a choice bias over groups, V2's softmax one over
 * groups scored by their best, with q_proj instead of the query's rank. */
static const char dsv3_json[] =
    "{\"model_type\":\"deepseek_v3\",\"vocab_size\":90,\"hidden_size\":48,"
    "\"intermediate_size\":64,\"moe_intermediate_size\":16,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"n_routed_experts\":16,\"num_experts_per_tok\":4,"
    "\"n_shared_experts\":2,\"n_group\":4,\"topk_group\":2,\"first_k_dense_replace\":1,"
    "\"q_lora_rank\":24,\"kv_lora_rank\":32,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":8,"
    "\"v_head_dim\":12,\"routed_scaling_factor\":2.5,\"norm_topk_prob\":true,"
    "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4,\"original_max_position_embeddings\":8,"
    "\"mscale\":1.0,\"mscale_all_dim\":1.0},\"max_position_embeddings\":64,"
    "\"torch_dtype\":\"bfloat16\"}";
static const char dsv2_json[] =
    "{\"model_type\":\"deepseek_v2\",\"vocab_size\":80,\"hidden_size\":32,"
    "\"intermediate_size\":48,\"moe_intermediate_size\":16,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"n_routed_experts\":8,\"num_experts_per_tok\":2,"
    "\"n_shared_experts\":1,\"n_group\":2,\"topk_group\":1,"
    "\"topk_method\":\"group_limited_greedy\",\"first_k_dense_replace\":2,"
    "\"moe_layer_freq\":1,\"q_lora_rank\":null,\"kv_lora_rank\":16,"
    "\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":4,\"v_head_dim\":8,"
    "\"routed_scaling_factor\":1.5,\"torch_dtype\":\"float16\"}";

/* gpt-oss: sinks, sliding layers of a window of 3 (decode goes past it),
 * biases everywhere, the clamped SwiGLU at a limit the weights reach. */
static const char gpt_oss_json[] =
    "{\"model_type\":\"gpt_oss\",\"vocab_size\":70,\"hidden_size\":32,"
    "\"intermediate_size\":16,\"num_hidden_layers\":4,\"num_attention_heads\":8,"
    "\"num_key_value_heads\":4,\"head_dim\":8,\"num_local_experts\":8,"
    "\"num_experts_per_tok\":2,\"sliding_window\":3,\"swiglu_limit\":0.5,"
    "\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0,"
    "\"original_max_position_embeddings\":8,\"truncate\":false},"
    "\"max_position_embeddings\":64,\"torch_dtype\":\"bfloat16\"}";

static const struct {
    const char *name, *json;
} models[] = {{"tiny", NULL},         {"odd", odd_json},     {"qwen2_moe", qwen2_json},
              {"qwen3_moe", qwen3_json}, {"olmoe", olmoe_json}, {"granitemoe", granite_json},
              {"deepseek_v3", dsv3_json}, {"deepseek_v2", dsv2_json}, {"gpt_oss", gpt_oss_json}};
#define N_MODELS (sizeof models / sizeof models[0])

typedef struct {
    char strategy[40];
    char pp_layers[16];
    int micro_batches;
    int model; /* index in models */
    double cf;
} case_t;

/* The list, named by what it exercises. Expert parallelism folds
 * into the devices of the attention layout (DESIGN.md), so EP alone runs
 * over TP ranks: EP2 is tp2-ep2, EP8 (one expert per device) dp2-tp4-ep8. */
static const struct {
    const char *s, *pp_layers;
    int mb;
} strategies[] = {
    {"tp2", "", 1},          {"tp4", "", 1},           {"tp2-sp", "", 1},
    {"cp2", "", 1},          {"cp4", "", 1},           {"tp2-ep2", "", 1},
    {"tp4-ep4", "", 1},      {"dp2-tp4-ep8", "", 1},   {"tp2-etp2", "", 1},
    {"tp4-ep2-etp2", "", 1}, {"pp2", "", 2},           {"pp4", "", 3},
    {"pp3", "2,1,1", 2},     {"dp2", "", 1},           {"dp2-ep2", "", 1},
    {"dp2-tp2-ep4", "", 1},  {"pp2-dp2-tp2-ep2-sp", "", 2},
    {"pp2-dp4-tp2-ep2-sp", "", 1}, /* 16 devices, one replica without a sequence */
    {"cp2-tp2-ep4", "", 1},  {"tp2-sp-ep2-dp2", "", 1}, {"dp2-cp2-tp2-ep2-etp2-sp", "", 2},
};

ParameterizedTestParameters(conformance, matrix)
{
    static case_t cases[sizeof strategies / sizeof strategies[0] * N_MODELS * 2];
    size_t n = 0;
    for (size_t i = 0; i < sizeof strategies / sizeof strategies[0]; i++)
        for (int model = 0; model < (int)N_MODELS; model++)
            for (int c = 0; c < 2; c++) {
                case_t *k = &cases[n++];
                snprintf(k->strategy, sizeof k->strategy, "%s", strategies[i].s);
                snprintf(k->pp_layers, sizeof k->pp_layers, "%s", strategies[i].pp_layers);
                k->micro_batches = strategies[i].mb;
                k->model = model;
                k->cf = c ? 1.0 : 0.0;
            }
    return cr_make_param_array(case_t, cases, n);
}

ParameterizedTest(case_t *k, conformance, matrix)
{
    cfg_model_t cfg;
    const char *what = models[k->model].name;
    if (!models[k->model].json) cr_assert_eq(cfg_load(&cfg, what), MOEMU_OK);
    else cr_assert_eq(cfg_parse(&cfg, models[k->model].json, what), MOEMU_OK, "%s", moemu_errmsg());
    cfg.capacity_factor = k->cf;
    wts_t w;
    cr_assert_eq(wts_generate_all(&w, &cfg, 3), MOEMU_OK);
    wl_opts_t wo = {.lens = "7,12,5", .decode = 9, .seed = 5};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK, "%s", moemu_errmsg());
    runner_opts_t o = {.micro_batches = k->micro_batches};
    cr_assert_eq(par_strategy_parse(k->strategy, &o.strategy), MOEMU_OK, "%s", moemu_errmsg());
    if (k->pp_layers[0])
        cr_assert_eq(par_strategy_set_pp_layers(&o.strategy, k->pp_layers), MOEMU_OK);
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
    o.hw.topo.devices_per_node = 4; /* groups that cross nodes too */
    check_t c;
    cr_assert_eq(check_run(&c, &w, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s: %s", k->strategy,
                 moemu_errmsg());
    const check_result_t *r = &c.r;
    cr_expect_leq(r->rel_l2, 1e-5, "%s on %s, cf %g: rel L2 %g", k->strategy, what, k->cf,
                  r->rel_l2);
    cr_expect_eq(r->first_seq, -1, "%s on %s, cf %g: tokens differ at sequence %d token %d",
                 k->strategy, what, k->cf, r->first_seq, r->first_token);
    cr_expect_eq(r->route_differ, 0, "%s on %s: %lld routing decisions differ", k->strategy,
                 what, (long long)r->route_differ);
    cr_expect_eq(r->dropped_strategy, r->dropped_base, "%s on %s: dropped %lld vs %lld",
                 k->strategy, what, (long long)r->dropped_strategy, (long long)r->dropped_base);
    /* 3 sequences, 24 prompt tokens and 8 decode passes, every MoE layer */
    cr_expect_eq(r->routed, (int64_t)cfg_moe_layers(&cfg) * (24 + 3 * 8));
    if (k->cf > 0) cr_expect_gt(r->dropped_base, 0, "capacity factor 1 should drop");
    else cr_expect_eq(r->dropped_base, 0);
    cr_expect_eq(c.strategy.assignments, c.base.assignments);
    check_free(&c);
    wts_free(&w);
    wl_free(&wl);
}

/* Replicas and micro-batches with no sequence still take part: their
 * devices hold experts that the other replicas' tokens visit. */
Test(conformance, empty_replicas_and_micro_batches)
{
    static const struct {
        const char *s, *lens;
        int mb;
    } cases[] = {
        {"dp2-ep2", "5", 1},         /* replica 1 empty, EP across replicas */
        {"dp2-ep2", "5,4,6", 2},     /* replica 0's second micro-batch empty */
        {"pp2-dp4-ep4", "5,7", 3},   /* two replicas empty, most micro-batches empty */
        {"dp4-cp2-ep8", "5,1,7", 2}, /* a one-token prompt under CP */
    };
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    cfg.capacity_factor = 1.0;
    wts_t w;
    cr_assert_eq(wts_generate_all(&w, &cfg, 3), MOEMU_OK);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        wl_opts_t wo = {.lens = cases[i].lens, .decode = 4, .seed = 5};
        wl_t wl;
        cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
        runner_opts_t o = {.micro_batches = cases[i].mb};
        cr_assert_eq(par_strategy_parse(cases[i].s, &o.strategy), MOEMU_OK);
        cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
        check_t c;
        cr_assert_eq(check_run(&c, &w, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s: %s", cases[i].s,
                     moemu_errmsg());
        cr_expect(c.r.pass, "%s with prompts %s: rel L2 %g, tokens differ at %d", cases[i].s,
                  cases[i].lens, c.r.rel_l2, c.r.first_seq);
        cr_expect_eq(c.r.dropped_strategy, c.r.dropped_base);
        check_free(&c);
        wl_free(&wl);
    }
    wts_free(&w);
}

/* A logit that is not a number at a real position fails the check and is
 * named. Padding is known from the prompt lengths: before, NaN marked it,
 * so a NaN final norm (every logit NaN) "passed" on 0 logits compared. */
Test(conformance, non_finite_logits_fail)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    wts_t w;
    cr_assert_eq(wts_generate_all(&w, &cfg, 3), MOEMU_OK);
    w.final_norm[0] = NAN;
    wl_opts_t wo = {.lens = "3,5", .decode = 2, .seed = 5};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
    runner_opts_t o = {.micro_batches = 1};
    cr_assert_eq(par_strategy_parse("tp2", &o.strategy), MOEMU_OK);
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
    check_t c;
    cr_assert_eq(check_run(&c, &w, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect(!c.r.pass, "a check of NaN logits passed");
    /* every real position: 3 + 5 prompt positions, 2 x 2 generated tokens */
    cr_expect_eq(c.r.compared, (int64_t)(3 + 5 + 2 * 2) * cfg.vocab_size);
    cr_expect_eq(c.r.bad_seq, 0);
    cr_expect_eq(c.r.bad_pos, 0);
    cr_expect_eq(c.r.bad_token, -1);
    char v[160];
    cr_expect_str_eq(check_verdict(&c.r, v, sizeof v),
                     "FAIL (a non-finite logit in the baseline at sequence 0, prompt position 0)");
    check_free(&c);
    wts_free(&w);
    wl_free(&wl);
}

/* ---- DeepSeek in its own checkpoint format: FP8 e4m3 weights with a
 * scale per 16 x 16 block, in two shards and their index, with a
 * multi-token-prediction layer the model does not load; loaded, then
 * every strategy below equals one device on it. */


/* DeepSeek keeps the embedding, norms, router and lm_head unquantized. */
static bool fp8_tensor(const wts_tensor_t *t)
{
    return t->ndim == 2 && !strstr(t->name, "embed_tokens") && !strstr(t->name, "lm_head") &&
           !strstr(t->name, "mlp.gate.");
}

/* x / scale stored as e4m3 for a 16 x 16 block scale amax / 448: returns
 * the scales (rows/16, cols/16) and writes the values to store into q and
 * what they dequantize to into back. */
static float *fp8_quantize(const wts_tensor_t *t, float *q, float *back)
{
    int64_t R = t->shape[0], C = t->shape[1], br = (R + 15) / 16, bc = (C + 15) / 16;
    float *sc = calloc((size_t)(br * bc), sizeof(float));
    for (int64_t i = 0; i < R * C; i++) {
        float *s = &sc[(i / C / 16) * bc + (i % C) / 16], a = fabsf(t->data[i]) / 448.0f;
        if (a > *s) *s = a;
    }
    for (int64_t i = 0; i < R * C; i++) {
        float s = sc[(i / C / 16) * bc + (i % C) / 16];
        if (s == 0) s = sc[(i / C / 16) * bc + (i % C) / 16] = 1.0f;
        q[i] = t->data[i] / s;
        back[i] = emu_e4m3_to_f32(emu_f32_to_e4m3(q[i])) * s;
    }
    return sc;
}

/* The checkpoint of w in two shards with their index, under dir; expected
 * receives the values loading should give, tensor by tensor. */
static void write_fp8_checkpoint(const wts_t *w, const char *dir, float **expected)
{
    int n = wts_tensor_count(w), m = 0;
    st_write_tensor_t *ts = calloc((size_t)(2 * n + 1), sizeof *ts);
    st_dtype_t *dt = calloc((size_t)(2 * n + 1), sizeof *dt);
    char (*names)[160] = calloc((size_t)(2 * n + 1), sizeof *names);
    float *extra = calloc(64 * 8, sizeof(float)); /* the MTP layer's tensor */
    for (int i = 0; i < n; i++) {
        wts_tensor_t t;
        wts_tensor_at(w, i, &t);
        int64_t cnt = t.shape[0] * (t.ndim > 1 ? t.shape[1] : 1) * (t.ndim > 2 ? t.shape[2] : 1);
        expected[i] = malloc(sizeof(float) * (size_t)cnt);
        ts[m] = (st_write_tensor_t){.name = strcpy(names[m], t.name), .ndim = t.ndim,
                                    .shape = {t.shape[0], t.shape[1], t.shape[2]}};
        if (!fp8_tensor(&t)) {
            memcpy(expected[i], t.data, sizeof(float) * (size_t)cnt);
            ts[m].data = t.data, dt[m++] = ST_F32;
            continue;
        }
        float *q = malloc(sizeof(float) * (size_t)cnt);
        float *sc = fp8_quantize(&t, q, expected[i]);
        ts[m].data = q, dt[m++] = ST_F8_E4M3;
        snprintf(names[m], sizeof names[m], "%s_scale_inv", t.name);
        ts[m] = (st_write_tensor_t){.name = names[m], .ndim = 2, .data = sc,
                                    .shape = {(t.shape[0] + 15) / 16, (t.shape[1] + 15) / 16}};
        dt[m++] = ST_F32;
    }
    ts[m] = (st_write_tensor_t){.name = "model.layers.4.self_attn.kv_a_layernorm.weight",
                                .ndim = 1, .shape = {32}, .data = extra};
    dt[m++] = ST_F32;
    mkdir(dir, 0777);
    char path[256], index[64 * 1024];
    size_t len = (size_t)snprintf(index, sizeof index, "{\"metadata\": {}, \"weight_map\": {");
    for (int part = 0; part < 2; part++) {
        int a = part ? m / 2 : 0, z = part ? m : m / 2;
        snprintf(path, sizeof path, "%s/model-0000%d-of-00002.safetensors", dir, part + 1);
        cr_assert_eq(st_write_dtypes(path, ts + a, z - a, dt + a), MOEMU_OK, "%s", moemu_errmsg());
        for (int i = a; i < z; i++)
            len += (size_t)snprintf(index + len, sizeof index - len, "%s\"%s\": \"model-0000%d-of-"
                                    "00002.safetensors\"", len > 40 ? ", " : "", ts[i].name, part + 1);
    }
    snprintf(index + len, sizeof index - len, "}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(index, f);
    fclose(f);
    for (int i = 0; i < m; i++)
        if (dt[i] == ST_F8_E4M3 || strstr(ts[i].name, "_scale_inv")) free((void *)ts[i].data);
    free(ts), free(dt), free(names), free(extra);
}

Test(conformance, deepseek_fp8_sharded_checkpoint)
{
    char json[2048], dir[] = "/tmp/moemu-dsfp8-XXXXXX";
    snprintf(json, sizeof json, "%.*s,\"num_nextn_predict_layers\":1,\"quantization_config\":"
             "{\"quant_method\":\"fp8\",\"fmt\":\"e4m3\",\"weight_block_size\":[16,16]}}",
             (int)strlen(dsv3_json) - 1, dsv3_json);
    cfg_model_t cfg;
    cr_assert_eq(cfg_parse(&cfg, json, "dsfp8"), MOEMU_OK, "%s", moemu_errmsg());
    wts_t w, r;
    cr_assert_eq(wts_generate_all(&w, &cfg, 9), MOEMU_OK);
    cr_assert_not_null(mkdtemp(dir));
    char ck[64];
    snprintf(ck, sizeof ck, "%s/ck", dir);
    int n = wts_tensor_count(&w);
    float **expected = calloc((size_t)n, sizeof *expected);
    write_fp8_checkpoint(&w, ck, expected);
    cr_assert_eq(wts_load(&r, &cfg, ck), MOEMU_OK, "%s", moemu_errmsg());
    for (int i = 0; i < n; i++) {
        wts_tensor_t t;
        wts_tensor_at(&r, i, &t);
        int64_t cnt = t.shape[0] * (t.ndim > 1 ? t.shape[1] : 1);
        cr_assert_eq(memcmp(t.data, expected[i], sizeof(float) * (size_t)cnt), 0,
                     "%s is not its dequantized values", t.name);
        free(expected[i]);
    }
    free(expected);
    static const char *const strategies[] = {"tp2", "tp4-ep4", "dp2-ep2", "cp2-tp2-ep4", "tp2-sp"};
    wl_opts_t wo = {.lens = "7,12,5", .decode = 9, .seed = 5};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
    for (size_t i = 0; i < sizeof strategies / sizeof strategies[0]; i++) {
        runner_opts_t o = {.micro_batches = 1};
        cr_assert_eq(par_strategy_parse(strategies[i], &o.strategy), MOEMU_OK);
        cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
        check_t c;
        cr_assert_eq(check_run(&c, &r, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s: %s", strategies[i],
                     moemu_errmsg());
        cr_expect(c.r.pass, "%s on the FP8 checkpoint: rel L2 %g", strategies[i], c.r.rel_l2);
        check_free(&c);
    }
    wl_free(&wl);
    wts_free(&w);
    wts_free(&r);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

/* Every tensor of a and b holds the same bits, packed or not. */
static bool same_values(const wts_t *a, const wts_t *b)
{
    bool same = a->n_list == b->n_list;
    for (int i = 0; same && i < a->n_list; i++) {
        const wts_tensor_t *s = &a->list[i], *t = &b->list[i];
        int64_t n = wts_tensor_rows(s) * wts_tensor_cols(s);
        float *x = malloc(sizeof(float) * (size_t)(2 * n + 1)), *y = x + n;
        cr_assert_not_null(x);
        wts_tensor_read(a, s, 0, n, x);
        wts_tensor_read(b, t, 0, n, y);
        same = memcmp(x, y, sizeof(float) * (size_t)n) == 0;
        free(x);
    }
    return same;
}

/* Every family from a checkpoint in its own Hub names, sharded with an
 * index: it loads back bit for bit and a strategy equals one device on it. */
Test(conformance, every_family_from_its_sharded_checkpoint)
{
    char dir[] = "/tmp/moemu-famck-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    for (size_t i = 0; i < N_MODELS; i++) {
        cfg_model_t cfg;
        if (!models[i].json) cr_assert_eq(cfg_load(&cfg, models[i].name), MOEMU_OK);
        else cr_assert_eq(cfg_parse(&cfg, models[i].json, models[i].name), MOEMU_OK);
        wts_t w, r;
        cr_assert_eq(wts_generate_all(&w, &cfg, 4), MOEMU_OK);
        char ck[96];
        snprintf(ck, sizeof ck, "%s/%s", dir, models[i].name);
        cr_assert_eq(wts_dump(&w, ck, 8000), MOEMU_OK, "%s: %s", ck, moemu_errmsg());
        cr_assert_eq(wts_load(&r, &cfg, ck), MOEMU_OK, "%s: %s", ck, moemu_errmsg());
        cr_assert(same_values(&w, &r), "%s: the checkpoint does not load back bit for bit",
                  models[i].name);
        wl_opts_t wo = {.lens = "6,9", .decode = 4, .seed = 5};
        wl_t wl;
        cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
        runner_opts_t o = {.micro_batches = 1};
        cr_assert_eq(par_strategy_parse("tp2-ep2", &o.strategy), MOEMU_OK);
        cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
        check_t c;
        cr_assert_eq(check_run(&c, &r, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s", moemu_errmsg());
        cr_expect(c.r.pass, "%s from its checkpoint: rel L2 %g", models[i].name, c.r.rel_l2);
        check_free(&c);
        wl_free(&wl);
        wts_free(&w);
        wts_free(&r);
    }
    char cmd[96];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_expect_eq(system(cmd), 0);
}

/* Megatron's shared-expert overlap moves time, never the function: the
 * same logits bit for bit, and a run no slower, that hides some of the
 * dispatch behind the shared experts, on the models with shared experts
 * under strategies whose experts dispatch. */
Test(conformance, shared_expert_overlap)
{
    static const int with_shared[] = {1, 2, 6}; /* odd, qwen2_moe, deepseek_v3 */
    static const char *const strat[] = {"dp2-ep2", "dp2-tp2-ep4", "tp2-sp-ep2-dp2"};
    for (size_t m = 0; m < sizeof with_shared / sizeof *with_shared; m++)
        for (size_t s = 0; s < sizeof strat / sizeof *strat; s++) {
            cfg_model_t cfg;
            const char *what = models[with_shared[m]].name;
            cr_assert_eq(cfg_parse(&cfg, models[with_shared[m]].json, what), MOEMU_OK);
            wts_t w;
            cr_assert_eq(wts_generate_all(&w, &cfg, 3), MOEMU_OK);
            wl_opts_t wo = {.lens = "7,12,5", .decode = 4, .seed = 5};
            wl_t wl;
            cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK, "%s", moemu_errmsg());
            check_t c[2];
            for (int ov = 0; ov < 2; ov++) {
                runner_opts_t o = {.micro_batches = 1};
                cr_assert_eq(par_strategy_parse(strat[s], &o.strategy), MOEMU_OK);
                cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
                o.hw.spec.stack.overlap = ov ? EMU_OVERLAP_SHARED_EXPERTS : EMU_OVERLAP_NONE;
                cr_assert_eq(check_run(&c[ov], &w, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s",
                             moemu_errmsg());
                cr_expect(c[ov].r.pass, "%s on %s, overlap %d", strat[s], what, ov);
            }
            size_t n = (size_t)wl.batch * wl.decode * cfg.vocab_size;
            cr_expect_eq(memcmp(c[0].strategy.gen_logits, c[1].strategy.gen_logits,
                                n * sizeof(float)), 0, "%s on %s: logits moved", strat[s], what);
            double t0 = emu_dev_clock(emu_cluster_dev(c[0].cluster, 0)),
                   t1 = emu_dev_clock(emu_cluster_dev(c[1].cluster, 0));
            emu_overlap_t hid = emu_dev_overlap(emu_cluster_dev(c[1].cluster, 0));
            cr_expect_lt(t1, t0, "%s on %s: %g s with overlap, %g without", strat[s], what, t1, t0);
            cr_expect_gt(hid.comm + hid.idle, 0, "%s on %s", strat[s], what);
            for (int ov = 0; ov < 2; ov++) check_free(&c[ov]);
            wts_free(&w);
            wl_free(&wl);
        }
}

/* Weights held packed in their dtype compute what the same weights in
 * fp32 compute, bit for bit, on one device and sharded: every product's
 * weight operand is widened whole (layers/packed.c), so that OpenBLAS
 * sees the calls it sees with fp32 weights. Every family, its embedding,
 * MLA's absorbed products and gpt-oss's (in, out) experts among them. */
Test(conformance, packed_weights_same_bits)
{
    static const char *const strat[] = {"dp2-tp2-ep2", "pp2-tp2-sp-ep2"};
    for (size_t m = 0; m < N_MODELS; m++)
        for (size_t s = 0; s < sizeof strat / sizeof *strat; s++) {
            cfg_model_t cfg;
            if (!models[m].json) cr_assert_eq(cfg_load(&cfg, models[m].name), MOEMU_OK);
            else cr_assert_eq(cfg_parse(&cfg, models[m].json, models[m].name), MOEMU_OK);
            wts_t w[2];
            for (int i = 0; i < 2; i++)
                cr_assert_eq(wts_generate_all(&w[i], &cfg, 3), MOEMU_OK, "%s", moemu_errmsg());
            cr_assert_not_null(w[0].packed, "%s: generated %s weights are packed",
                               models[m].name, emu_dtype_name(cfg.dtype));
            cr_assert_eq(wts_unpack(&w[1]), MOEMU_OK, "%s", moemu_errmsg());
            wl_opts_t wo = {.lens = "7,12,5,9", .decode = 3, .seed = 5};
            wl_t wl;
            cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK, "%s", moemu_errmsg());
            check_t c[2];
            for (int i = 0; i < 2; i++) {
                runner_opts_t o = {.micro_batches = 2};
                cr_assert_eq(par_strategy_parse(strat[s], &o.strategy), MOEMU_OK);
                cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
                cr_assert_eq(check_run(&c[i], &w[i], &wl, &o, 1e-5, NULL), MOEMU_OK, "%s",
                             moemu_errmsg());
            }
            size_t n = (size_t)wl.batch * wl.decode * cfg.vocab_size;
            cr_expect_eq(memcmp(c[0].base.gen_logits, c[1].base.gen_logits, n * sizeof(float)),
                         0, "%s: one device's logits moved", models[m].name);
            cr_expect_eq(memcmp(c[0].strategy.gen_logits, c[1].strategy.gen_logits,
                                n * sizeof(float)),
                         0, "%s on %s: logits moved", models[m].name, strat[s]);
            for (int i = 0; i < 2; i++) check_free(&c[i]), wts_free(&w[i]);
            wl_free(&wl);
        }
}

/* Model i of models[] with capacity factor cap, its weights and a
 * workload of prompt lengths lens, 4 tokens generated; returns its name. */
static const char *drop_job(int i, double cap, const char *lens, cfg_model_t *cfg, wts_t *w,
                            wl_t *wl)
{
    const char *what = models[i].name;
    if (!models[i].json) cr_assert_eq(cfg_load(cfg, what), MOEMU_OK);
    else cr_assert_eq(cfg_parse(cfg, models[i].json, what), MOEMU_OK);
    cfg->capacity_factor = cap;
    cr_assert_eq(wts_generate_all(w, cfg, 3), MOEMU_OK);
    wl_opts_t wo = {.lens = lens, .decode = 4, .seed = 5};
    cr_assert_eq(wl_make(wl, &wo, cfg), MOEMU_OK, "%s", moemu_errmsg());
    return what;
}

/* Two-batch overlap moves time, never the function: micro-batches taken
 * two at a time as lanes of each device give the same logits bit for bit
 * as the same micro-batches one after the other, in less time, with
 * communication beside the other lane's kernels; with each dispatcher
 * that sends rows, and the same virtual time on a second run. */
Test(conformance, two_batch_overlap)
{
    static const int mods[] = {0, 2, 6}; /* tiny, qwen2_moe, deepseek_v3 */
    static const char *const strat[] = {"dp2-ep2", "dp2-tp2-ep4", "tp2-sp-ep2-dp2",
                                        "cp2-tp2-ep4"};
    static const emu_dispatcher_t disps[] = {EMU_DISPATCH_ALLTOALL, EMU_DISPATCH_DEEPEP,
                                             EMU_DISPATCH_DEEPEP_LL};
    for (size_t di = 0; di < sizeof disps / sizeof *disps; di++)
    for (size_t m = 0; m < sizeof mods / sizeof *mods; m++)
        for (size_t s = 0; s < sizeof strat / sizeof *strat; s++) {
            cfg_model_t cfg;
            wts_t w;
            wl_t wl;
            const char *what = drop_job(mods[m], s % 2 ? 1.0 : 0.0, "7,12,5,9", &cfg, &w, &wl);
            check_t c[3];
            for (int i = 0; i < 3; i++) {
                runner_opts_t o = {.micro_batches = 2};
                cr_assert_eq(par_strategy_parse(strat[s], &o.strategy), MOEMU_OK);
                cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
                o.hw.spec.stack.dispatcher = disps[di];
                o.hw.spec.stack.overlap = i ? EMU_OVERLAP_TWO_BATCH : EMU_OVERLAP_NONE;
                cr_assert_eq(check_run(&c[i], &w, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s",
                             moemu_errmsg());
                cr_expect(c[i].r.pass, "%s on %s, run %d: rel L2 %g", strat[s], what, i,
                          c[i].r.rel_l2);
            }
            size_t n = (size_t)wl.batch * wl.decode * cfg.vocab_size;
            cr_expect_eq(memcmp(c[0].strategy.gen_logits, c[1].strategy.gen_logits,
                                n * sizeof(float)), 0, "%s on %s: logits moved", strat[s], what);
            for (int d = 0; d < emu_cluster_size(c[1].cluster); d++) {
                const emu_dev_t *a = emu_cluster_dev(c[0].cluster, d),
                                *b = emu_cluster_dev(c[1].cluster, d),
                                *b2 = emu_cluster_dev(c[2].cluster, d);
                emu_overlap_t hid = emu_dev_overlap(b);
                cr_expect_lt(emu_dev_clock(b), emu_dev_clock(a), "%s on %s, device %d: %g s "
                             "with overlap, %g without", strat[s], what, d, emu_dev_clock(b),
                             emu_dev_clock(a));
                cr_expect_gt(hid.comm, 0, "%s on %s, device %d", strat[s], what, d);
                cr_expect_eq(emu_dev_clock(b), emu_dev_clock(b2), "%s on %s, device %d: not "
                             "deterministic", strat[s], what, d);
            }
            for (int i = 0; i < 3; i++) check_free(&c[i]);
            wts_free(&w);
            wl_free(&wl);
        }
}

/* Megatron's all-gather dispatcher and DeepEP's modes compute the same
 * function: every strategy whose experts dispatch equals one device; the
 * all-gather one with no all-to-all (with ETP > 1 the all-to-all
 * dispatcher runs). */
Test(conformance, dispatchers)
{
    static const int mods[] = {0, 2, 6}; /* tiny, qwen2_moe, deepseek_v3 */
    static const char *const strat[] = {"dp2-ep2", "dp2-tp2-ep4", "cp2-tp2-ep4",
                                        "tp2-sp-ep2-dp2", "dp2-tp4-ep8", "dp2-tp2-ep2-etp2"};
    for (int disp = EMU_DISPATCH_ALLGATHER; disp < EMU_DISPATCH__COUNT; disp++)
    for (size_t m = 0; m < sizeof mods / sizeof *mods; m++)
        for (size_t s = 0; s < sizeof strat / sizeof *strat; s++) {
            cfg_model_t cfg;
            wts_t w;
            wl_t wl;
            const char *what = drop_job(mods[m], s % 2 ? 1.0 : 0.0, "7,12,5", &cfg, &w, &wl);
            runner_opts_t o = {.micro_batches = 1};
            cr_assert_eq(par_strategy_parse(strat[s], &o.strategy), MOEMU_OK);
            cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
            o.hw.topo.devices_per_node = 4;
            o.hw.spec.stack.dispatcher = (emu_dispatcher_t)disp;
            check_t c;
            cr_assert_eq(check_run(&c, &w, &wl, &o, 1e-5, NULL), MOEMU_OK, "%s", moemu_errmsg());
            cr_expect(c.r.pass, "%s on %s, dispatcher %d: rel L2 %g", strat[s], what, disp,
                      c.r.rel_l2);
            cr_expect_eq(c.r.first_seq, -1, "%s on %s: tokens differ", strat[s], what);
            cr_expect_eq(c.r.route_differ, 0, "%s on %s", strat[s], what);
            cr_expect_eq(c.r.dropped_strategy, c.r.dropped_base, "%s on %s", strat[s], what);
            emu_comm_stats_t a2a = emu_dev_comm_kind(emu_cluster_dev(c.cluster, 0),
                                                     EMU_COLL_ALLTOALL);
            bool want = disp != EMU_DISPATCH_ALLGATHER || o.strategy.etp > 1;
            cr_expect_eq(a2a.calls > 0, want, "%s on %s: %llu all-to-all calls", strat[s], what,
                         (unsigned long long)a2a.calls);
            check_free(&c);
            wts_free(&w);
            wl_free(&wl);
        }
}
