/* What each rank reads of the weights (the family's reads, wts_boxes_for)
 * and the generation and loading of only those parts: the boxes hold what
 * held counts, a subset of ranks generates its boxes bit for bit and
 * nothing else, and a forward pass under a strategy on weights that are
 * NaN outside the union of its ranks' boxes gives the logits of the whole
 * weights bit for bit (a read outside a box would poison them). */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/run/runner.h"

#define TMPDIR_NAME "moemu-slices"
#include "tests/tmpdir.h"

/* Small models of every kind of slice, in fp32 (held's bytes / 4 are its
 * elements). Vocabularies 90 and 70 are not split evenly by TP4. */
static const char mixtral_json[] = /* GQA: TP4 replicates the 2 kv heads */
    "{\"model_type\":\"mixtral\",\"vocab_size\":64,\"hidden_size\":32,"
    "\"intermediate_size\":40,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_local_experts\":4,\"num_experts_per_tok\":2,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"float32\"}";

static const char qwen2_json[] = /* q/k/v biases, a gated shared expert, dense layers 0 and 2 */
    "{\"model_type\":\"qwen2_moe\",\"vocab_size\":80,\"hidden_size\":48,"
    "\"intermediate_size\":40,\"moe_intermediate_size\":16,"
    "\"shared_expert_intermediate_size\":24,\"num_hidden_layers\":4,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"num_experts\":8,"
    "\"num_experts_per_tok\":2,\"decoder_sparse_step\":2,\"mlp_only_layers\":[],"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"float32\"}";

static const char qwen3_json[] = /* per-head q/k norms, q/k/v/o biases, layer 1 dense */
    "{\"model_type\":\"qwen3_moe\",\"vocab_size\":72,\"hidden_size\":32,"
    "\"intermediate_size\":48,\"moe_intermediate_size\":24,\"num_hidden_layers\":3,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"head_dim\":16,"
    "\"num_experts\":8,\"num_experts_per_tok\":2,\"mlp_only_layers\":[1],"
    "\"attention_bias\":true,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":false,\"torch_dtype\":\"float32\"}";

static const char olmoe_json[] = /* whole-width q/k norms over 8 heads, 2 kv heads */
    "{\"model_type\":\"olmoe\",\"vocab_size\":90,\"hidden_size\":64,"
    "\"intermediate_size\":32,\"num_hidden_layers\":2,\"num_attention_heads\":8,"
    "\"num_key_value_heads\":2,\"num_experts\":8,\"num_experts_per_tok\":2,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"float32\"}";

static const char dsv3_json[] = /* MLA with a q LoRA, 2 shared experts, layer 0 dense */
    "{\"model_type\":\"deepseek_v3\",\"vocab_size\":90,\"hidden_size\":48,"
    "\"intermediate_size\":40,\"moe_intermediate_size\":12,\"num_hidden_layers\":3,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":4,\"q_lora_rank\":24,"
    "\"kv_lora_rank\":32,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":8,\"v_head_dim\":12,"
    "\"n_routed_experts\":16,\"num_experts_per_tok\":4,\"n_group\":4,\"topk_group\":2,"
    "\"n_shared_experts\":2,\"routed_scaling_factor\":2.5,\"norm_topk_prob\":true,"
    "\"scoring_func\":\"sigmoid\",\"topk_method\":\"noaux_tc\",\"first_k_dense_replace\":1,"
    "\"max_position_embeddings\":64,\"tie_word_embeddings\":false,"
    "\"torch_dtype\":\"float32\"}";

static const char dsv2_json[] = /* MLA without a q LoRA: q_proj's rows by head */
    "{\"model_type\":\"deepseek_v2\",\"vocab_size\":88,\"hidden_size\":48,"
    "\"intermediate_size\":36,\"moe_intermediate_size\":12,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":4,\"q_lora_rank\":null,"
    "\"kv_lora_rank\":32,\"qk_nope_head_dim\":8,\"qk_rope_head_dim\":16,\"v_head_dim\":12,"
    "\"n_routed_experts\":8,\"num_experts_per_tok\":2,\"n_group\":1,\"topk_group\":1,"
    "\"n_shared_experts\":1,\"first_k_dense_replace\":1,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":false,\"torch_dtype\":\"float32\"}";

static const char gpt_oss_json[] = /* sinks, biases, gate/up interleaved (E, d, 2F) */
    "{\"model_type\":\"gpt_oss\",\"vocab_size\":70,\"hidden_size\":32,"
    "\"intermediate_size\":16,\"num_hidden_layers\":2,\"num_attention_heads\":8,"
    "\"num_key_value_heads\":4,\"head_dim\":8,\"num_local_experts\":8,"
    "\"num_experts_per_tok\":2,\"sliding_window\":3,\"swiglu_limit\":0.5,"
    "\"max_position_embeddings\":64,\"torch_dtype\":\"float32\"}";

static const char granite_json[] = /* fused (E, 2F, d) and (E, d, F) experts, tied */
    "{\"model_type\":\"granitemoe\",\"vocab_size\":60,\"hidden_size\":48,"
    "\"intermediate_size\":24,\"num_hidden_layers\":2,\"num_attention_heads\":4,"
    "\"num_key_value_heads\":2,\"num_local_experts\":6,\"num_experts_per_tok\":2,"
    "\"embedding_multiplier\":12.0,\"attention_multiplier\":0.0625,"
    "\"residual_multiplier\":0.22,\"logits_scaling\":6.0,\"max_position_embeddings\":64,"
    "\"tie_word_embeddings\":true,\"torch_dtype\":\"float32\"}";

static const struct {
    const char *name, *json;
} models[] = {{"mixtral", mixtral_json}, {"qwen2_moe", qwen2_json}, {"qwen3_moe", qwen3_json},
              {"olmoe", olmoe_json},     {"deepseek_v3", dsv3_json}, {"deepseek_v2", dsv2_json},
              {"gpt_oss", gpt_oss_json}, {"granitemoe", granite_json}};
#define N_MODELS (sizeof models / sizeof models[0])

static const char *const strategies[] = {
    "tp1",         "tp2",          "tp4",       "pp2",         "tp2-ep2",
    "tp4-ep4",     "tp2-etp2",     "tp4-ep2-etp2", "dp2-tp2-ep4", "pp2-dp2-tp2-ep2-sp",
    "cp2-tp2-ep4", "dp2-cp2-tp2-ep2-etp2-sp",
};
#define N_STRATEGIES (sizeof strategies / sizeof strategies[0])

static void parse(cfg_model_t *c, int model)
{
    cr_assert_eq(cfg_parse(c, models[model].json, models[model].name), MOEMU_OK, "%s",
                 moemu_errmsg());
}

/* s for the model, false when the model's rules refuse it. */
static bool strategy(const cfg_model_t *c, const char *text, par_strategy_t *s)
{
    cr_assert_eq(par_strategy_parse(text, s), MOEMU_OK, "%s", moemu_errmsg());
    par_dims_t m;
    family_of(c)->dims(c, &m);
    return par_strategy_validate(s, &m, 0) == MOEMU_OK;
}

/* The layout of the model and, per tensor, the union of what ranks[0..n)
 * read under s (all ranks when ranks is NULL): the caller frees both. */
static wts_box_t *boxes_of(const cfg_model_t *c, const par_strategy_t *s, const int *ranks, int n,
                           wts_t *lay)
{
    cr_assert_eq(wts_address_only(lay, c), MOEMU_OK, "%s", moemu_errmsg());
    wts_box_t *b = calloc((size_t)lay->n_list, sizeof *b);
    wts_boxes_for(lay, s, ranks, ranks ? n : par_strategy_world(s), b);
    return b;
}

static int tensor_index(const wts_t *w, const char *name)
{
    for (int i = 0; i < w->n_list; i++)
        if (!strcmp(w->list[i].name, name)) return i;
    cr_assert_fail("no tensor %s", name);
    return -1;
}

static bool box_has(const wts_box_t *b, int64_t r, int64_t c)
{
    return r >= b->r0 && r < b->r1 && c >= b->c0 && c < b->c1;
}

/* ---- (a) the boxes against held */

/* What held counts that no kernel reads: the padding rows of the
 * vocabulary (held as a device pads them) and gpt-oss's down bias on the
 * expert-TP slices that do not add it. */
static double unread(const cfg_model_t *c, const model_place_t *p)
{
    const par_place_t *q = &p->par;
    int v1 = p->vocab1 < c->vocab_size ? p->vocab1 : c->vocab_size;
    int real = v1 > p->dims.vocab0 ? v1 - p->dims.vocab0 : 0;
    double pad = (double)(p->vocab1 - p->dims.vocab0 - real) * c->hidden_size, n = 0;
    if (q->has_embed) n += pad;
    if (q->has_lm_head && !(c->tie_word_embeddings && q->has_embed)) n += pad;
    for (int l = q->layer0; l < q->layer1 && c->expert_bias && q->ffn0 > 0; l++)
        if (!cfg_layer_dense(c, l)) n += (double)(q->expert1 - q->expert0) * c->hidden_size;
    return n;
}

/* Elements of rank's boxes, over the model's tensors. */
static double box_total(const wts_t *lay, const model_place_t *p)
{
    double n = 0;
    for (int i = 0; i < lay->n_list; i++) {
        wts_box_t b;
        family_of(&lay->cfg)->reads(&lay->cfg, p, &lay->list[i], &b);
        cr_assert(wts_box_elems(&b) > 0 || (b.r0 == 0 && b.r1 == 0 && b.c0 == 0 && b.c1 == 0),
                  "%s: an empty box not {0, 0, 0, 0}", lay->list[i].name);
        cr_assert(b.r0 >= 0 && b.r1 <= wts_tensor_rows(&lay->list[i]) && b.c0 >= 0 &&
                      b.c1 <= wts_tensor_cols(&lay->list[i]),
                  "%s: box outside the tensor", lay->list[i].name);
        n += (double)wts_box_elems(&b);
    }
    return n;
}

/* Exact boxes read held's elements less unread's; stacked experts under
 * expert TP (GraniteMoE's fused [w1; w3], gpt-oss's down) are bounding
 * boxes, at least that. */
Test(slices, boxes_hold_what_held_counts)
{
    for (size_t m = 0; m < N_MODELS; m++) {
        cfg_model_t c;
        parse(&c, (int)m);
        cr_assert(cfg_weight_size(&c) == 4 && cfg_expert_weight_size(&c) == 4);
        const model_family_t *f = family_of(&c);
        wts_t lay;
        cr_assert_eq(wts_address_only(&lay, &c), MOEMU_OK);
        int tried = 0, over = 0;
        for (size_t k = 0; k < N_STRATEGIES; k++) {
            par_strategy_t s;
            if (!strategy(&c, strategies[k], &s)) continue;
            bool bounding = s.etp > 1 && (f->names->fused_in || f->names->down);
            for (int r = 0; r < par_strategy_world(&s); r++) {
                model_place_t p;
                f->place(&c, &s, r, &p);
                double want = f->held(&c, &p, NULL, NULL) / 4 - unread(&c, &p);
                double got = box_total(&lay, &p);
                if (bounding) cr_expect_geq(got, want, "%s %s rank %d", models[m].name,
                                            strategies[k], r);
                else cr_expect_eq(got, want, "%s %s rank %d: %.0f elements, held %.0f",
                                  models[m].name, strategies[k], r, got, want);
                over += got > want;
            }
            tried++;
        }
        cr_expect_geq(tried, 8, "%s: only %d strategies fit", models[m].name, tried);
        if (f->names->fused_in) cr_expect_gt(over, 0, "granite's fused boxes are never wider");
        wts_free(&lay);
    }
}

/* A few boxes by hand: Mixtral (hd 8) under TP4, whose 4 heads share 2
 * kv heads; DeepSeek-V3's MLA under TP2. */
Test(slices, boxes_by_hand)
{
    cfg_model_t c;
    parse(&c, 0);
    par_strategy_t s;
    cr_assert(strategy(&c, "tp4", &s));
    wts_t lay;
    int three = 3;
    wts_box_t *b = boxes_of(&c, &s, &three, 1, &lay);
    const struct {
        const char *name;
        wts_box_t want;
    } mx[] = {{"model.layers.1.self_attn.q_proj.weight", {24, 32, 0, 32}},
              {"model.layers.1.self_attn.k_proj.weight", {8, 16, 0, 32}},
              {"model.layers.1.self_attn.o_proj.weight", {0, 32, 24, 32}},
              {"model.layers.0.block_sparse_moe.experts.2.w2.weight", {0, 32, 0, 40}},
              {"model.embed_tokens.weight", {48, 64, 0, 32}},
              {"model.norm.weight", {0, 1, 0, 32}}};
    for (size_t i = 0; i < sizeof mx / sizeof mx[0]; i++) {
        const wts_box_t *g = &b[tensor_index(&lay, mx[i].name)];
        cr_expect(!memcmp(g, &mx[i].want, sizeof *g), "%s: [%lld, %lld) x [%lld, %lld)",
                  mx[i].name, (long long)g->r0, (long long)g->r1, (long long)g->c0,
                  (long long)g->c1);
    }
    free(b);
    wts_free(&lay);

    parse(&c, 4);
    cr_assert(strategy(&c, "tp2-ep2", &s));
    int one = 1;
    b = boxes_of(&c, &s, &one, 1, &lay);
    const struct {
        const char *name;
        wts_box_t want;
    } ds[] = {{"model.layers.1.self_attn.q_b_proj.weight", {32, 64, 0, 24}},
              {"model.layers.1.self_attn.kv_b_proj.weight", {40, 80, 0, 32}},
              {"model.layers.1.self_attn.o_proj.weight", {0, 48, 24, 48}},
              {"model.layers.1.self_attn.kv_a_proj_with_mqa.weight", {0, 40, 0, 48}},
              {"model.layers.1.mlp.experts.3.gate_proj.weight", {0, 0, 0, 0}},
              {"model.layers.1.mlp.experts.8.gate_proj.weight", {0, 12, 0, 48}},
              {"model.layers.1.mlp.shared_experts.down_proj.weight", {0, 48, 12, 24}},
              {"model.layers.0.mlp.up_proj.weight", {20, 40, 0, 48}}};
    for (size_t i = 0; i < sizeof ds / sizeof ds[0]; i++) {
        const wts_box_t *g = &b[tensor_index(&lay, ds[i].name)];
        cr_expect(!memcmp(g, &ds[i].want, sizeof *g), "%s: [%lld, %lld) x [%lld, %lld)",
                  ds[i].name, (long long)g->r0, (long long)g->r1, (long long)g->c0,
                  (long long)g->c1);
    }
    free(b);
    wts_free(&lay);
}

/* One device reads every element of every tensor. */
Test(slices, one_device_reads_everything)
{
    for (size_t m = 0; m < N_MODELS; m++) {
        cfg_model_t c;
        parse(&c, (int)m);
        par_strategy_t s;
        cr_assert(strategy(&c, "tp1", &s));
        wts_t lay;
        wts_box_t *b = boxes_of(&c, &s, NULL, 0, &lay);
        for (int i = 0; i < lay.n_list; i++) {
            const wts_tensor_t *t = &lay.list[i];
            wts_box_t all = {0, wts_tensor_rows(t), 0, wts_tensor_cols(t)};
            cr_expect(!memcmp(&b[i], &all, sizeof all), "%s: %s not whole", models[m].name,
                      t->name);
        }
        free(b);
        wts_free(&lay);
    }
}

/* ---- (b) generation of a subset */

/* Generating the boxes of ranks[0..n) under s: inside each (widened)
 * box, the bits of the whole generation; 0 elsewhere. Returns how many
 * boxes FP8 widened. */
static int subset_equals_whole(const cfg_model_t *c, const char *text, const int *ranks, int n)
{
    par_strategy_t s;
    cr_assert(strategy(c, text, &s), "%s on %s: %s", text, c->name, moemu_errmsg());
    wts_t lay, all, part;
    wts_box_t *b = boxes_of(c, &s, ranks, n, &lay);
    cr_assert_eq(wts_generate_all(&all, c, 11), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_generate_boxes(&part, c, 11, b), MOEMU_OK, "%s", moemu_errmsg());
    int64_t filled = 0, widened = 0;
    for (int i = 0; i < part.n_list; i++) {
        const wts_tensor_t *t = &part.list[i];
        wts_box_t g;
        wts_box_generated(&part, i, &b[i], &g);
        widened += memcmp(&g, &b[i], sizeof g) != 0;
        int64_t C = wts_tensor_cols(t);
        for (int64_t r = 0; r < wts_tensor_rows(t); r++)
            for (int64_t k = 0; k < C; k++) {
                uint32_t got, want = 0;
                memcpy(&got, &t->data[r * C + k], 4);
                if (box_has(&g, r, k)) memcpy(&want, &all.list[i].data[r * C + k], 4);
                filled += box_has(&g, r, k);
                if (got != want)
                    cr_assert_fail("%s, %s: %s [%lld, %lld] is %08x, expected %08x", c->name,
                                   text, t->name, (long long)r, (long long)k, got, want);
            }
    }
    cr_expect_lt(filled, all.n_floats, "%s, %s: the subset is the whole model", c->name, text);
    free(b);
    wts_free(&lay);
    wts_free(&all);
    wts_free(&part);
    return (int)widened;
}

Test(slices, subset_generation_equals_the_whole)
{
    static const struct {
        int model;
        const char *s;
        int ranks[2], n;
    } cases[] = {{0, "tp4", {1}, 1},          {1, "pp2-dp2-tp2-ep2-sp", {0, 5}, 2},
                 {2, "tp2-ep2", {1}, 1},      {3, "tp4", {2, 3}, 2},
                 {4, "tp2-ep2", {0}, 1},      {5, "pp2", {1}, 1},
                 {6, "tp4-ep2-etp2", {2}, 1}, {7, "tp2-etp2", {1}, 1}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cfg_model_t c;
        parse(&c, cases[i].model);
        subset_equals_whole(&c, cases[i].s, cases[i].ranks, cases[i].n);
    }
}

/* FP8 weights: a box widened to whole blocks (16 x 8 here) has the scales,
 * hence the values, of the whole generation. */
Test(slices, fp8_boxes_take_whole_blocks)
{
    int widened = 0;
    for (int m = 4; m <= 7; m++) { /* the DeepSeeks, gpt-oss, granite */
        cfg_model_t c;
        parse(&c, m);
        c.fp8_block_r = 16, c.fp8_block_c = 8;
        int one = 1;
        widened += subset_equals_whole(&c, m == 5 ? "tp2" : "tp2-etp2", &one, 1);
    }
    cr_expect_gt(widened, 0, "no box needed widening: the test has no teeth");
}

/* The block's pages outside the boxes are never touched: a rank holding
 * half the experts keeps about half the model resident. */
Test(slices, untouched_pages_are_not_resident)
{
    /* experts of 6 MB: the half not held is a run of 24 MB that even
     * transparent huge pages leave alone */
    static const char big_json[] =
        "{\"model_type\":\"mixtral\",\"vocab_size\":64,\"hidden_size\":256,"
        "\"intermediate_size\":2048,\"num_hidden_layers\":1,\"num_attention_heads\":4,"
        "\"num_key_value_heads\":2,\"num_local_experts\":8,\"num_experts_per_tok\":2,"
        "\"max_position_embeddings\":64,\"torch_dtype\":\"float32\"}";
    cfg_model_t c;
    cr_assert_eq(cfg_parse(&c, big_json, "big"), MOEMU_OK, "%s", moemu_errmsg());
    par_strategy_t s;
    cr_assert(strategy(&c, "tp2-ep2", &s));
    wts_t lay, w;
    int zero = 0;
    wts_box_t *b = boxes_of(&c, &s, &zero, 1, &lay);
    cr_assert_eq(wts_generate_boxes(&w, &c, 3, b), MOEMU_OK, "%s", moemu_errmsg());
    long page = sysconf(_SC_PAGESIZE);
    size_t bytes = sizeof(float) * (size_t)w.n_floats, pages = (bytes + page - 1) / page, in = 0;
    unsigned char *vec = malloc(pages);
    cr_assert_eq(mincore(w.block, bytes, vec), 0);
    for (size_t i = 0; i < pages; i++) in += vec[i] & 1;
    double boxed = 0;
    for (int i = 0; i < w.n_list; i++) boxed += (double)wts_box_elems(&b[i]);
    cr_expect_lt(4 * boxed, 0.6 * (double)bytes, "rank 0 holds most of the model");
    cr_expect_lt((double)in * page, 0.6 * (double)bytes,
                 "%zu of %zu pages resident for %.0f floats in boxes", in, pages, boxed);
    free(vec);
    free(b);
    wts_free(&w);
    wts_free(&lay);
}

/* ---- (c) a forward pass reads only inside the boxes */

/* t outside box b set to NaN: what a read outside the boxes would see. */
static void poison(wts_tensor_t *t, const wts_box_t *b)
{
    int64_t C = wts_tensor_cols(t);
    for (int64_t r = 0; r < wts_tensor_rows(t); r++)
        for (int64_t k = 0; k < C; k++)
            if (!box_has(b, r, k)) t->data[r * C + k] = NAN;
}

static void run(const cfg_model_t *c, const wts_t *w, const par_strategy_t *s, const wl_t *wl,
                model_out_t *out)
{
    runner_opts_t o = {.micro_batches = s->pp > 1 ? 2 : 1, .strategy = *s};
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &o.hw), MOEMU_OK);
    model_opts_t mo = {.prompt_logits = true, .gen_logits = true};
    emu_cluster_t *cl;
    cr_assert_eq(runner_generate(out, &cl, w, wl, &o, &mo), MOEMU_OK, "%s: %s", c->name,
                 moemu_errmsg());
    emu_cluster_destroy(cl);
}

/* Whether out's logits and tokens are those of base, bit for bit. */
static bool same_run(const model_out_t *a, const model_out_t *b, const wl_t *wl, int V)
{
    size_t np = (size_t)wl->batch * wl->max_len * V, ng = (size_t)wl->batch * wl->decode;
    return !memcmp(a->prompt_logits, b->prompt_logits, np * sizeof(float)) &&
           !memcmp(a->gen_logits, b->gen_logits, ng * V * sizeof(float)) &&
           !memcmp(a->generated, b->generated, ng * sizeof(int));
}

/* Under s, weights generated in the union of the ranks' boxes and NaN
 * elsewhere (with the box of tensor `cut`, if any, one column narrower):
 * whether the run equals the one on the whole weights. */
static bool poisoned_run_equals(int model, const char *text, const char *cut)
{
    cfg_model_t c;
    parse(&c, model);
    par_strategy_t s;
    cr_assert(strategy(&c, text, &s), "%s on %s: %s", text, c.name, moemu_errmsg());
    wts_t lay, all, part;
    wts_box_t *b = boxes_of(&c, &s, NULL, 0, &lay);
    if (cut) b[tensor_index(&lay, cut)].c1--;
    cr_assert_eq(wts_generate_all(&all, &c, 5), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_generate_boxes(&part, &c, 5, b), MOEMU_OK, "%s", moemu_errmsg());
    for (int i = 0; i < part.n_list; i++) poison(&part.list[i], &b[i]);
    wl_opts_t wo = {.lens = "5,7,3", .decode = 3, .seed = 5};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &c), MOEMU_OK, "%s", moemu_errmsg());
    model_out_t a, p;
    run(&c, &all, &s, &wl, &a);
    run(&c, &part, &s, &wl, &p);
    bool same = same_run(&a, &p, &wl, c.vocab_size);
    model_out_free(&a);
    model_out_free(&p);
    wl_free(&wl);
    free(b);
    wts_free(&lay);
    wts_free(&all);
    wts_free(&part);
    return same;
}

Test(slices, forward_pass_reads_only_the_boxes, .timeout = 600)
{
    static const char *const runs[] = {"tp1", "tp4", "tp4-ep2-etp2", "pp2-dp2-tp2-ep2-sp",
                                       "cp2-tp2-ep4"};
    for (size_t m = 0; m < N_MODELS; m++) {
        cfg_model_t c;
        parse(&c, (int)m);
        int tried = 0;
        for (size_t k = 0; k < sizeof runs / sizeof runs[0]; k++) {
            par_strategy_t s;
            if (!strategy(&c, runs[k], &s)) continue;
            cr_expect(poisoned_run_equals((int)m, runs[k], NULL),
                      "%s under %s read outside its boxes", models[m].name, runs[k]);
            tried++;
        }
        cr_expect_geq(tried, 3, "%s: %d strategies", models[m].name, tried);
    }
}

/* The test has teeth: one column of a read tensor left out poisons it. */
Test(slices, a_read_outside_the_boxes_shows)
{
    cr_expect(!poisoned_run_equals(0, "tp4", "model.layers.0.self_attn.o_proj.weight"));
    cr_expect(!poisoned_run_equals(6, "tp4-ep2-etp2", "model.layers.1.mlp.experts.down_proj"));
    cr_expect(!poisoned_run_equals(4, "tp2-ep2", "model.layers.2.self_attn.kv_b_proj.weight"));
}

/* ---- loading a subset */

TestSuite(slices_load, .init = tmpdir_setup, .fini = tmpdir_teardown);

/* Loading the boxes of ranks[0..n): their rows as written, every other
 * element 0, the other tensors checked only. */
static void load_subset(cfg_model_t *c, const char *text, const int *ranks, int n)
{
    par_strategy_t s;
    cr_assert(strategy(c, text, &s));
    wts_t lay, all, part;
    wts_box_t *b = boxes_of(c, &s, ranks, n, &lay);
    cr_assert_eq(wts_generate_all(&all, c, 9), MOEMU_OK, "%s", moemu_errmsg());
    const char *path = tpath(c->name);
    cr_assert_eq(wts_dump(&all, path, 0), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_load_boxes(&part, c, path, b), MOEMU_OK, "%s", moemu_errmsg());
    int skipped = 0;
    for (int i = 0; i < part.n_list; i++) {
        const wts_tensor_t *t = &part.list[i];
        int64_t C = wts_tensor_cols(t), R = wts_tensor_rows(t);
        bool any = wts_box_elems(&b[i]) > 0;
        skipped += !any;
        for (int64_t r = 0; r < R; r++) {
            bool in = any && r >= b[i].r0 && r < b[i].r1;
            for (int64_t k = 0; k < C; k++) {
                float want = in ? all.list[i].data[r * C + k] : 0.0f;
                if (memcmp(&t->data[r * C + k], &want, 4))
                    cr_assert_fail("%s: %s [%lld, %lld] is %g, expected %g", text, t->name,
                                   (long long)r, (long long)k, t->data[r * C + k], want);
            }
        }
    }
    cr_expect_gt(skipped, 0, "%s: every tensor read", text);
    free(b);
    wts_free(&part);
    wts_free(&all);
    wts_free(&lay);
}

Test(slices_load, boxes_load_their_rows)
{
    cfg_model_t c;
    parse(&c, 1);
    int r[2] = {1, 6};
    load_subset(&c, "pp2-dp2-tp2-ep2-sp", r, 2);
    parse(&c, 4);
    c.fp8_block_r = 16, c.fp8_block_c = 8; /* F8_E4M3 with scales, read by rows */
    load_subset(&c, "tp2-ep2", r, 1);
}

/* A tensor no box reads must still be in the checkpoint, with its shape. */
Test(slices_load, unread_tensors_are_checked)
{
    cfg_model_t c;
    parse(&c, 0);
    par_strategy_t s;
    cr_assert(strategy(&c, "pp2", &s));
    wts_t lay, all, part;
    int zero = 0;
    wts_box_t *b = boxes_of(&c, &s, &zero, 1, &lay);
    int i = tensor_index(&lay, "model.layers.1.self_attn.q_proj.weight");
    cr_assert_eq(wts_box_elems(&b[i]), 0, "stage 0 reads layer 1");
    cr_assert_eq(wts_generate_all(&all, &c, 9), MOEMU_OK);
    all.list[i].shape[0] /= 2; /* written as [16, 32] */
    cr_assert_eq(wts_dump(&all, tpath("short.safetensors"), 0), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_load_boxes(&part, &c, tpath("short.safetensors"), b), MOEMU_ERR_FORMAT);
    cr_expect(strstr(moemu_errmsg(), "model.layers.1.self_attn.q_proj.weight has shape [16, 32], "
                                     "expected [32, 32]"),
              "%s", moemu_errmsg());
    free(b);
    wts_free(&all);
    wts_free(&lay);
}

/* A box outside its tensor is the caller's error, named. */
Test(slices, boxes_outside_their_tensor_refused)
{
    cfg_model_t c;
    parse(&c, 0);
    wts_t lay, w;
    cr_assert_eq(wts_address_only(&lay, &c), MOEMU_OK);
    wts_box_t *b = calloc((size_t)lay.n_list, sizeof *b);
    int i = tensor_index(&lay, "model.layers.0.self_attn.k_proj.weight");
    b[i] = (wts_box_t){8, 17, 0, 32};
    cr_assert_eq(wts_generate_boxes(&w, &c, 1, b), MOEMU_ERR_INVALID);
    cr_expect_str_eq(moemu_errmsg(), "box [8, 17) x [0, 32) of "
                     "model.layers.0.self_attn.k_proj.weight: outside its 16 x 32");
    cr_expect_null(w.block);
    free(b);
    wts_free(&lay);
}
