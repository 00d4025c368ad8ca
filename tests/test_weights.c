/* Generated weights: the counter-based generator, slices against the whole
 * tensor, and the safetensors round trip of whole models. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/models/safetensors.h"
#include "engine/models/weights.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/moemu-wts-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(weights, .init = setup, .fini = teardown);

Test(weights, philox_known_answer)
{
    /* Random123's known answer for philox4x32_10: counter 0, key 0 */
    const uint32_t want[4] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8};
    for (int i = 0; i < 4; i++) cr_assert_eq(wts_philox(0, 0, (uint64_t)i), want[i]);
}

Test(weights, slices_equal_the_whole)
{
    const int64_t n = 10007; /* not a multiple of the 4-word block */
    emu_dtype_t dts[] = {EMU_DTYPE_FP32, EMU_DTYPE_FP16, EMU_DTYPE_BF16};
    const char *names[] = {"model.layers.3.self_attn.q_proj.weight",
                           "model.layers.0.input_layernorm.weight", "model.embed_tokens.weight"};
    float *whole = malloc(sizeof(float) * n), *part = malloc(sizeof(float) * n);
    for (size_t d = 0; d < 3; d++)
        for (size_t k = 0; k < 3; k++) {
            wts_generate(whole, 42, names[k], 97, 0, n, dts[d]);
            int64_t cuts[] = {0, 1, 3, 4, 5, 1000, 4097, 9999, n};
            for (size_t c = 0; c + 1 < sizeof cuts / sizeof cuts[0]; c++) {
                int64_t a = cuts[c], b = cuts[c + 1];
                wts_generate(part, 42, names[k], 97, a, b - a, dts[d]);
                cr_assert_eq(memcmp(part, whole + a, sizeof(float) * (size_t)(b - a)), 0,
                             "%s [%lld, %lld) in %s differs from the whole", names[k],
                             (long long)a, (long long)b, emu_dtype_name(dts[d]));
            }
            for (int64_t i = 0; i < n; i++)
                cr_assert_eq(whole[i], emu_dtype_round(dts[d], whole[i]),
                             "element %lld is not representable in %s", (long long)i,
                             emu_dtype_name(dts[d]));
        }
    /* another seed or name gives another tensor */
    wts_generate(part, 43, names[0], 97, 0, n, EMU_DTYPE_FP32);
    wts_generate(whole, 42, names[0], 97, 0, n, EMU_DTYPE_FP32);
    cr_assert_neq(memcmp(part, whole, sizeof(float) * n), 0);
    free(whole);
    free(part);
}

/* splitmix64: the tests' own deterministic draws */
static uint64_t draw(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* wts_generate on kernel k of [offset, offset + n) against the scalar
 * reference, bit for bit; the guard past the end stays untouched. */
static void same_as_reference(int k, uint64_t seed, const char *name, int64_t fan_in,
                              int64_t offset, int64_t n, emu_dtype_t dt)
{
    float *want = malloc(sizeof(float) * (size_t)(n + 1));
    float *got = malloc(sizeof(float) * (size_t)(n + 1));
    cr_assert(wts_generate_kernel(WTS_GEN_SCALAR));
    wts_generate(want, seed, name, fan_in, offset, n, dt);
    cr_assert(wts_generate_kernel(k));
    got[n] = -7.0f;
    wts_generate(got, seed, name, fan_in, offset, n, dt);
    cr_assert(wts_generate_kernel(WTS_GEN_BEST));
    cr_assert_eq(memcmp(got, want, sizeof(float) * (size_t)n), 0,
                 "kernel %s: %s (fan_in %lld) [%lld, +%lld) in %s differs from the reference",
                 k == WTS_GEN_BEST ? "best" : emu_simd_name((emu_simd_t)k), name,
                 (long long)fan_in, (long long)offset, (long long)n, emu_dtype_name(dt));
    cr_assert_eq(got[n], -7.0f, "wrote past the end");
    if (dt == EMU_DTYPE_FP16 || dt == EMU_DTYPE_BF16) { /* and straight into 16 bits */
        uint16_t *pw = malloc(2 * (size_t)(n + 1)), *pg = malloc(2 * (size_t)(n + 1));
        emu_dtype_pack_n(dt, pw, want, n);
        cr_assert(wts_generate_kernel(k));
        pg[n] = 0x1234;
        wts_generate_packed(pg, seed, name, fan_in, offset, n, dt);
        cr_assert(wts_generate_kernel(WTS_GEN_BEST));
        cr_assert_eq(memcmp(pg, pw, 2 * (size_t)n), 0, "packed: [%lld, +%lld) in %s differs",
                     (long long)offset, (long long)n, emu_dtype_name(dt));
        cr_assert_eq(pg[n], 0x1234, "packed: wrote past the end");
        free(pw);
        free(pg);
    }
    free(want);
    free(got);
}

/* The lanes' kernel (the router's draws) against one block at a time:
 * random counters, seeds and streams, high words included. */
Test(weights, philox_lanes_equal_blocks)
{
    uint64_t s = 7;
    for (int c = 0; c < 1000; c++) {
        uint64_t seed = draw(&s), stream = draw(&s), block[WTS_PHILOX_LANES];
        for (int i = 0; i < WTS_PHILOX_LANES; i++)
            block[i] = c % 2 ? draw(&s) : (uint64_t)c * WTS_PHILOX_LANES + (uint64_t)i;
        uint32_t out[WTS_PHILOX_LANES][4], one[4];
        wts_philox_blocks(out, seed, stream, block);
        for (int i = 0; i < WTS_PHILOX_LANES; i++) {
            wts_philox_block(one, seed, stream, block[i]);
            cr_assert_eq(memcmp(out[i], one, sizeof one), 0, "counter %d, lane %d", c, i);
        }
    }
}

Test(weights, kernels_equal_the_reference)
{
    const char *names[] = {"model.layers.1.input_layernorm.weight", "model.embed_tokens.weight",
                           "model.layers.2.block_sparse_moe.experts.3.w1.weight"};
    /* 4096 and 64: 1/sqrt a float (the float law); the others the double law */
    const int64_t fan_ins[] = {4096, 97, 1000, 64, 3};
    uint64_t s = 15;
    int kernels = 0;
    for (int k = 0; k < EMU_SIMD__COUNT; k++) {
        if (!emu_simd_supported((emu_simd_t)k)) continue;
        kernels++;
        for (int dt = 0; dt < EMU_DTYPE__COUNT; dt++)
            for (int c = 0; c < 60; c++) {
                const char *name = names[c % 3];
                int64_t fan_in = fan_ins[draw(&s) % 5];
                int64_t offset = (int64_t)(draw(&s) % (c % 2 ? 1000 : (1ull << 40)));
                int64_t n = c % 10 == 9 ? 5000 + (int64_t)(draw(&s) % 5000) : (int64_t)(draw(&s) % 101);
                same_as_reference(k, draw(&s), name, fan_in, offset, n, (emu_dtype_t)dt);
            }
        /* counters whose low word wraps inside a group */
        same_as_reference(k, 3, names[2], 97, (int64_t)((1ull << 34) - 37), 300, EMU_DTYPE_BF16);
    }
    cr_assert_geq(kernels, 1);
    same_as_reference(WTS_GEN_BEST, 9, names[2], 1000, 5, 3000, EMU_DTYPE_FP16);
    cr_assert_not(wts_generate_kernel(EMU_SIMD__COUNT));
}

/* emu_dtype_round_n on every kernel against emu_dtype_round: random bit
 * patterns, and around the edges (subnormals, the largest finite values,
 * infinities, NaNs with payloads, ties). */
Test(weights, round_n_equals_round)
{
    enum { N = 1 << 16 };
    static const uint32_t edges[] = {0x0, 0x80000000, 0x1, 0x33000000, 0x33000001, 0x337fffff,
                                     0x387fe000, 0x387ff000, 0x38800000, 0x477fefff, 0x477ff000,
                                     0x477fffff, 0x7f7fffff, 0x7f7f8000, 0x7f800000, 0xff800000,
                                     0x7f800001, 0x7fc00000, 0xffc12345, 0x7fbfffff, 0x3f801000,
                                     0x3f803000, 0x3f808000, 0x3f818000, 0x43e80000, 0x43e80001};
    uint32_t *bits = malloc(sizeof(uint32_t) * N);
    uint64_t s = 99;
    for (int i = 0; i < N; i++) bits[i] = (uint32_t)draw(&s);
    memcpy(bits, edges, sizeof edges);
    for (int k = 0; k < EMU_SIMD__COUNT; k++) {
        if (!emu_simd_supported((emu_simd_t)k)) continue;
        for (int dt = 0; dt < EMU_DTYPE__COUNT; dt++)
            for (int64_t n = N - 3; n <= N; n++) { /* ends off and on the vectors */
                float *p = malloc(sizeof(float) * N);
                memcpy(p, bits, sizeof(float) * N);
                emu_dtype_round_n_on((emu_simd_t)k, (emu_dtype_t)dt, p, n);
                for (int64_t i = 0; i < N; i++) {
                    float x, want;
                    uint32_t got_bits, want_bits;
                    memcpy(&x, &bits[i], 4);
                    want = i < n ? emu_dtype_round((emu_dtype_t)dt, x) : x;
                    memcpy(&got_bits, &p[i], 4);
                    memcpy(&want_bits, &want, 4);
                    cr_assert_eq(got_bits, want_bits, "%s on %s: 0x%08x gives 0x%08x, not 0x%08x",
                                 emu_dtype_name((emu_dtype_t)dt), emu_simd_name((emu_simd_t)k),
                                 bits[i], got_bits, want_bits);
                }
                free(p);
            }
    }
    free(bits);
}

/* fp16's packing rounds any value as emu_f32_to_f16 (the generator packs
 * unrounded values): random bit patterns and the edges, ends off and on
 * the vectors. */
Test(weights, f16_pack_rounds_any_value)
{
    enum { N = 1 << 16 };
    static const uint32_t edges[] = {0x33000000, 0x33000001, 0x387fe000, 0x387ff000, 0x477fefff,
                                     0x477ff000, 0x7f800000, 0x7fc00000, 0xffc12345, 0x3f801000,
                                     0x3f803000, 0x80000001};
    /* whole vectors of 16 and of 8, and tails of 1, 7 and 15 in C */
    static const int64_t lens[] = {N, N - 8, N - 1, N - 9, N - 15};
    float *x = malloc(sizeof(float) * N);
    uint16_t *got = malloc(2 * (N + 1));
    uint64_t s = 7;
    for (int i = 0; i < N; i++) {
        uint32_t b = i < (int)(sizeof edges / sizeof *edges) ? edges[i] : (uint32_t)draw(&s);
        memcpy(&x[i], &b, 4);
    }
    for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
        int64_t n = lens[t];
        got[n] = 0x1234;
        emu_dtype_pack_n(EMU_DTYPE_FP16, got, x, n);
        cr_assert_eq(got[n], 0x1234, "wrote past the end of %lld", (long long)n);
        for (int64_t i = 0; i < n; i++)
            cr_assert_eq(got[i], emu_f32_to_f16(x[i]), "%g packs to 0x%04x, not 0x%04x", x[i],
                         got[i], emu_f32_to_f16(x[i]));
    }
    free(x);
    free(got);
}

Test(weights, init_laws)
{
    float v[4096];
    wts_generate(v, 7, "model.layers.0.post_attention_layernorm.weight", 64, 0, 4096,
                 EMU_DTYPE_FP32);
    for (int i = 0; i < 4096; i++) cr_assert(v[i] >= 0.75f && v[i] < 1.25f);
    wts_generate(v, 7, "model.layers.0.block_sparse_moe.experts.1.w2.weight", 256, 0, 4096,
                 EMU_DTYPE_FP32);
    double mx = 0;
    for (int i = 0; i < 4096; i++) mx = fabs(v[i]) > mx ? fabs(v[i]) : mx;
    cr_assert(mx <= 1.0 / 16 && mx > 0.9 / 16, "bound 1/sqrt(fan_in), got max %g", mx);
}

/* Every tensor of a model generated whole equals wts_generate of it, and
 * a dump loads back bit for bit. */
static void roundtrip(const char *json)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_parse(&cfg, json, "test"), MOEMU_OK, "%s", moemu_errmsg());
    wts_t w, r;
    cr_assert_eq(wts_generate_all(&w, &cfg, 5), MOEMU_OK, "%s", moemu_errmsg());
    char path[128];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    cr_assert_eq(wts_dump(&w, path, 0), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_load(&r, &cfg, path), MOEMU_OK, "%s", moemu_errmsg());
    /* fp16 and bf16 weights are packed, generated and dumped from there,
     * then loaded from the dtype the dump stores them in: the same values */
    cr_assert_eq(w.packed != NULL, cfg.dtype != EMU_DTYPE_FP32);
    cr_assert_eq(r.packed != NULL, cfg.dtype != EMU_DTYPE_FP32);
    cr_assert_eq(wts_unpack(&w), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_unpack(&r), MOEMU_OK, "%s", moemu_errmsg());
    int n = wts_tensor_count(&w), seen = 0;
    for (int i = 0; i < n; i++) {
        wts_tensor_t a, b;
        wts_tensor_at(&w, i, &a);
        wts_tensor_at(&r, i, &b);
        cr_assert_str_eq(a.name, b.name);
        if (!a.data) continue;
        int64_t cnt = a.shape[0] * (a.ndim == 2 ? a.shape[1] : 1);
        float *g = malloc(sizeof(float) * (size_t)cnt);
        wts_generate(g, 5, a.name, a.fan_in, 0, cnt, cfg.dtype);
        cr_assert_eq(memcmp(g, a.data, sizeof(float) * (size_t)cnt), 0, "%s", a.name);
        cr_assert_eq(memcmp(a.data, b.data, sizeof(float) * (size_t)cnt), 0, "%s", a.name);
        free(g);
        seen++;
    }
    cr_assert_gt(seen, 10);
    if (cfg.tie_word_embeddings) cr_assert_eq(w.lm_head, w.embed);
    wts_free(&w);
    wts_free(&r);
}

#define BASE "\"vocab_size\":50,\"hidden_size\":16,\"intermediate_size\":24," \
             "\"num_hidden_layers\":2,\"num_attention_heads\":4,\"num_key_value_heads\":2," \
             "\"num_local_experts\":4,\"num_experts_per_tok\":2"

Test(weights, dump_and_load_fp16) { roundtrip("{" BASE "}"); }
Test(weights, dump_and_load_bf16_tied) { roundtrip("{" BASE ",\"dtype\":\"bf16\",\"tie_word_embeddings\":true}"); }
Test(weights, dump_and_load_fp32_gelu_shared)
{
    roundtrip("{" BASE ",\"dtype\":\"fp32\",\"hidden_act\":\"gelu\",\"num_shared_experts\":2,"
              "\"shared_expert_intermediate_size\":8}");
}

/* A checkpoint's tensors stored in the model's dtype load packed; those
 * stored otherwise (F32 ones into a bf16 model) stay fp32, values as
 * stored, which the dtype may not hold. */
Test(weights, load_packs_what_the_dtype_holds)
{
    cfg_model_t f32, bf16;
    cr_assert_eq(cfg_parse(&f32, "{" BASE ",\"dtype\":\"fp32\"}", "a"), MOEMU_OK);
    bf16 = f32;
    bf16.dtype = EMU_DTYPE_BF16;
    wts_t w, r;
    cr_assert_eq(wts_generate_all(&w, &f32, 1), MOEMU_OK);
    char path[128];
    snprintf(path, sizeof path, "%s/f32.safetensors", dir);
    cr_assert_eq(wts_dump(&w, path, 0), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_load(&r, &bf16, path), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_null(r.packed);
    cr_assert_eq(memcmp(r.block, w.block, sizeof(float) * (size_t)w.n_floats), 0);
    bool rounds = false; /* the F32 values are not all bf16 ones */
    for (int64_t i = 0; i < w.n_floats; i++)
        rounds |= emu_dtype_round(EMU_DTYPE_BF16, w.block[i]) != w.block[i];
    cr_assert(rounds);
    wts_free(&r);
    wts_free(&w);
}

Test(weights, load_errors_name_the_tensor)
{
    cfg_model_t cfg, wide;
    cr_assert_eq(cfg_parse(&cfg, "{" BASE "}", "a"), MOEMU_OK);
    wts_t w, r;
    cr_assert_eq(wts_generate_all(&w, &cfg, 1), MOEMU_OK);
    char path[128];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    cr_assert_eq(wts_dump(&w, path, 0), MOEMU_OK);

    /* another shape of the same names */
    cr_assert_eq(cfg_parse(&wide, "{\"vocab_size\":50,\"hidden_size\":32,\"intermediate_size\":24,"
                                  "\"num_hidden_layers\":2,\"num_attention_heads\":4,"
                                  "\"num_key_value_heads\":2,\"head_dim\":4,"
                                  "\"num_local_experts\":4,\"num_experts_per_tok\":2}", "b"),
                 MOEMU_OK);
    cr_assert_neq(wts_load(&r, &wide, path), MOEMU_OK);
    cr_assert(strstr(moemu_errmsg(), "model.embed_tokens.weight"), "%s", moemu_errmsg());
    cr_assert(strstr(moemu_errmsg(), "32"), "%s", moemu_errmsg());

    /* a third layer the file lacks */
    cfg_model_t deep = cfg;
    deep.num_hidden_layers = 3;
    cr_assert_neq(wts_load(&r, &deep, path), MOEMU_OK);
    cr_assert(strstr(moemu_errmsg(), "model.layers.2."), "%s", moemu_errmsg());

    /* a truncated file */
    cr_assert_eq(truncate(path, 1000), 0);
    cr_assert_neq(wts_load(&r, &cfg, path), MOEMU_OK);
    cr_assert(strstr(moemu_errmsg(), path), "%s", moemu_errmsg());
    wts_free(&w);
}

/* NaN or Inf weights make every figure meaningless (a run printed zero
 * tokens, a check compared nothing): the load is refused, naming each
 * tensor and its count. */
Test(weights, non_finite_values_are_refused)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_parse(&cfg, "{" BASE ",\"dtype\":\"fp32\"}", "a"), MOEMU_OK);
    wts_t w, r;
    cr_assert_eq(wts_generate_all(&w, &cfg, 1), MOEMU_OK);
    w.layers[1].wq[5] = NAN;
    w.layers[1].wq[9] = -NAN;
    w.lm_head[799] = INFINITY;
    char path[128], want[512];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    cr_assert_eq(wts_dump(&w, path, 0), MOEMU_OK);
    cr_assert_eq(wts_load(&r, &cfg, path), MOEMU_ERR_FORMAT);
    snprintf(want, sizeof want,
             "a: the checkpoint %s does not fit the model (1 problem):\n  2 tensors hold NaN "
             "or Inf values: 'model.layers.1.self_attn.q_proj.weight' (2 of 256, in "
             "w.safetensors), 'lm_head.weight' (1 of 800, in w.safetensors)",
             path);
    cr_assert_str_eq(moemu_errmsg(), want);
    wts_free(&w);
}

Test(weights, host_memory_check_names_both_figures)
{
    cr_assert_eq(wts_check_host_memory(1e18, "a huge model"), MOEMU_ERR_NOMEM);
    cr_assert(strstr(moemu_errmsg(), "a huge model needs 1000000000.00 GB"), "%s",
              moemu_errmsg());
    cr_assert_eq(wts_check_host_memory(1e3, "a small one"), MOEMU_OK);
}

/* The least power of two s with amax / s <= 448, found by doubling and
 * halving (the weights' FP8 block scales, docs/weights.md). */
static float pow2_scale(float amax)
{
    float s = 1;
    while (amax / s > 448) s *= 2;
    while (amax > 0 && amax / (s / 2) <= 448) s /= 2;
    return s;
}

/* FP8 storage: the linear layers' generated weights are e4m3 values times
 * a power-of-two scale per 8 x 4 block, the embedding, norms and router
 * as generated; the dump keeps them in F8_E4M3 with their scales and
 * loads back bit for bit. */
Test(weights, fp8_storage_rounds_dumps_and_loads_exactly)
{
    cfg_model_t plain, cfg;
    cr_assert_eq(cfg_parse(&plain, "{" BASE ",\"dtype\":\"bf16\"}", "fp8"), MOEMU_OK);
    cfg = plain;
    cfg.fp8_block_r = 8, cfg.fp8_block_c = 4;
    wts_t w, p, r;
    cr_assert_eq(wts_generate_all(&w, &cfg, 3), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_generate_all(&p, &plain, 3), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_null(w.packed, "FP8 weights are never packed");
    cr_assert_eq(wts_unpack(&p), MOEMU_OK, "%s", moemu_errmsg());
    char path[128];
    snprintf(path, sizeof path, "%s/fp8.safetensors", dir);
    cr_assert_eq(wts_dump(&w, path, 0), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wts_load(&r, &cfg, path), MOEMU_OK, "%s", moemu_errmsg());
    st_file_t *f;
    cr_assert_eq(st_open(path, &f), MOEMU_OK, "%s", moemu_errmsg());
    int fp8 = 0, kept = 0;
    for (int i = 0; i < wts_tensor_count(&w); i++) {
        wts_tensor_t a, b, c;
        wts_tensor_at(&w, i, &a), wts_tensor_at(&p, i, &b), wts_tensor_at(&r, i, &c);
        int64_t R = a.shape[0], C = a.ndim == 2 ? a.shape[1] : 1;
        bool linear = strstr(a.name, "_proj") || strstr(a.name, "experts.");
        cr_assert_eq(a.fp8, linear, "%s", a.name);
        cr_assert_eq(st_find(f, a.name)->dtype, linear ? ST_F8_E4M3 : ST_BF16, "%s", a.name);
        cr_assert_eq(memcmp(a.data, c.data, sizeof(float) * (size_t)(R * C)), 0, "%s", a.name);
        if (!linear) {
            cr_assert_eq(memcmp(a.data, b.data, sizeof(float) * (size_t)(R * C)), 0, "%s", a.name);
            kept++;
            continue;
        }
        fp8++;
        for (int64_t i0 = 0; i0 < R; i0 += 8)
            for (int64_t j0 = 0; j0 < C; j0 += 4) {
                float amax = 0;
                for (int64_t x = i0; x < R && x < i0 + 8; x++)
                    for (int64_t y = j0; y < C && y < j0 + 4; y++)
                        amax = fmaxf(amax, fabsf(b.data[x * C + y]));
                float s = pow2_scale(amax);
                for (int64_t x = i0; x < R && x < i0 + 8; x++)
                    for (int64_t y = j0; y < C && y < j0 + 4; y++) {
                        float want = emu_e4m3_to_f32(emu_f32_to_e4m3(b.data[x * C + y] / s)) * s;
                        cr_assert_eq(a.data[x * C + y], want, "%s[%lld][%lld]", a.name,
                                     (long long)x, (long long)y);
                    }
            }
    }
    cr_assert_gt(fp8, 10);
    cr_assert_gt(kept, 3);
    st_close(f);
    wts_free(&w), wts_free(&p), wts_free(&r);
}
