/* The forward pass: causality, the KV cache against a longer prefill,
 * batch and routing-group independence, outputs and workload errors. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tools/report.h"
#include "engine/tools/check.h"

typedef struct {
    cfg_model_t cfg;
    wts_t w;
    runner_opts_t one; /* the one-device strategy */
    double clock;      /* the last run's virtual time */
} fixture_t;

static void fixture(fixture_t *f, const char *model, double cf)
{
    cr_assert_eq(cfg_load(&f->cfg, model), MOEMU_OK, "%s", moemu_errmsg());
    f->cfg.capacity_factor = cf;
    cr_assert_eq(wts_generate_all(&f->w, &f->cfg, 11), MOEMU_OK, "%s", moemu_errmsg());
    emu_hw_t hw = {.spec = {.peak_flops = 1e14, .mfu = 0.5, .mem_bw = 1e12, .bw_util = 0.8,
                            .mem_capacity = 1e12, .launch_s = 1e-6},
                   .topo = {.devices_per_node = 1, .intra_bw = 1e11, .inter_bw = 1e10}};
    runner_opts_one_device(&f->one, &hw, 1, 1);
}

/* The model on one device: the runner on the one-device strategy. */
static moemu_status_t generate(fixture_t *f, model_out_t *out, const wl_t *wl,
                               const model_opts_t *o)
{
    emu_cluster_t *cl;
    moemu_status_t st = runner_generate(out, &cl, &f->w, wl, &f->one, o);
    if (st == MOEMU_OK) f->clock = emu_dev_clock(emu_cluster_dev(cl, 0));
    if (st == MOEMU_OK) emu_cluster_destroy(cl);
    return st;
}

static void fixture_free(fixture_t *f)
{
    wts_free(&f->w);
}

/* A workload from explicit token lists. */
static void workload(wl_t *wl, int batch, const int *len, const int *const *tok, int decode)
{
    memset(wl, 0, sizeof *wl);
    wl->batch = batch;
    wl->decode = decode;
    wl->len = calloc((size_t)batch, sizeof(int));
    wl->start = calloc((size_t)batch + 1, sizeof(int64_t));
    for (int b = 0; b < batch; b++) {
        wl->len[b] = len[b];
        wl->start[b + 1] = wl->start[b] + len[b];
        if (len[b] > wl->max_len) wl->max_len = len[b];
    }
    wl->tokens = malloc(sizeof(int) * (size_t)wl->start[batch]);
    for (int b = 0; b < batch; b++)
        memcpy(wl->tokens + wl->start[b], tok[b], sizeof(int) * (size_t)len[b]);
}

static double rel_l2(const float *a, const float *b, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static void causality(double cf)
{
    fixture_t f;
    fixture(&f, "tiny", cf);
    enum { L = 40, CUT = 17 };
    int a[L], b[L];
    for (int i = 0; i < L; i++) a[i] = b[i] = (i * 37 + 5) % f.cfg.vocab_size;
    for (int i = CUT + 1; i < L; i++) b[i] = (b[i] + 1 + i) % f.cfg.vocab_size;
    const int len[1] = {L};
    const int *ta[1] = {a}, *tb[1] = {b};
    wl_t wa, wb;
    workload(&wa, 1, len, ta, 1);
    workload(&wb, 1, len, tb, 1);
    model_opts_t o = {.prompt_logits = true};
    model_out_t oa, ob;
    cr_assert_eq(generate(&f, &oa, &wa, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(generate(&f, &ob, &wb, &o), MOEMU_OK, "%s", moemu_errmsg());
    int V = f.cfg.vocab_size;
    double e = rel_l2(oa.prompt_logits, ob.prompt_logits, (int64_t)(CUT + 1) * V);
    cr_assert_leq(e, 1e-6, "positions 0..%d changed by later tokens: rel L2 %g", CUT, e);
    /* and the test can fail: the positions after the change do differ */
    double after = rel_l2(oa.prompt_logits + (int64_t)(CUT + 1) * V,
                          ob.prompt_logits + (int64_t)(CUT + 1) * V, (int64_t)(L - CUT - 1) * V);
    cr_assert_gt(after, 1e-3);
    model_out_free(&oa);
    model_out_free(&ob);
    wl_free(&wa);
    wl_free(&wb);
    fixture_free(&f);
}

Test(model, causal_dropless) { causality(0.0); }
/* capacity takes tokens in order: later tokens never evict earlier ones */
Test(model, causal_with_capacity) { causality(1.0); }

/* Decoding with the cache gives the logits of a prefill of the sequence
 * extended by the generated tokens. */
static void cache_equals_prefill(const char *model, int batch, const int *len)
{
    fixture_t f;
    fixture(&f, model, 0.0);
    enum { N = 8 };
    int *tok[8];
    for (int b = 0; b < batch; b++) {
        tok[b] = malloc(sizeof(int) * (size_t)(len[b] + N));
        for (int i = 0; i < len[b]; i++) tok[b][i] = (i * 13 + b * 7 + 1) % f.cfg.vocab_size;
    }
    wl_t wl;
    workload(&wl, batch, len, (const int *const *)tok, N);
    model_opts_t o = {.gen_logits = true};
    model_out_t out;
    cr_assert_eq(generate(&f, &out, &wl, &o), MOEMU_OK, "%s", moemu_errmsg());
    int ext[8];
    for (int b = 0; b < batch; b++) {
        ext[b] = len[b] + N - 1;
        for (int i = 0; i < N - 1; i++) tok[b][len[b] + i] = out.generated[b * N + i];
    }
    wl_t wx;
    workload(&wx, batch, ext, (const int *const *)tok, 1);
    model_opts_t ox = {.prompt_logits = true};
    model_out_t full;
    cr_assert_eq(generate(&f, &full, &wx, &ox), MOEMU_OK, "%s", moemu_errmsg());
    int V = f.cfg.vocab_size;
    for (int b = 0; b < batch; b++)
        for (int s = 0; s < N; s++) {
            const float *dec = out.gen_logits + ((int64_t)b * N + s) * V;
            const float *pre = full.prompt_logits + ((int64_t)b * wx.max_len + len[b] - 1 + s) * V;
            double e = rel_l2(dec, pre, V);
            cr_assert_leq(e, 1e-5, "sequence %d step %d: decode vs prefill rel L2 %g", b, s, e);
            cr_assert_eq(layer_argmax(pre, V), out.generated[b * N + s]);
        }
    model_out_free(&out);
    model_out_free(&full);
    wl_free(&wl);
    wl_free(&wx);
    for (int b = 0; b < batch; b++) free(tok[b]);
    fixture_free(&f);
}

Test(model, kv_cache_equals_prefill)
{
    const int len[3] = {5, 33, 1};
    cache_equals_prefill("tiny", 3, len);
}

Test(model, kv_cache_equals_prefill_long)
{
    /* past the attention kernel's blocks of 128 rows and 256 keys */
    const int len[2] = {300, 270};
    cache_equals_prefill("tiny", 2, len);
}

/* A sequence's logits do not depend on the others in its batch (dropless),
 * and prefill by routing groups equals separate runs of each group. */
Test(model, batch_and_groups_are_independent)
{
    fixture_t f;
    fixture(&f, "tiny", 1.0);
    enum { B = 4, N = 3 };
    const int len[B] = {9, 4, 12, 7};
    int *tok[B];
    for (int b = 0; b < B; b++) {
        tok[b] = malloc(sizeof(int) * (size_t)len[b]);
        for (int i = 0; i < len[b]; i++) tok[b][i] = (i * 31 + b * 11 + 3) % f.cfg.vocab_size;
    }
    wl_t all;
    workload(&all, B, len, (const int *const *)tok, N);
    /* the groups of two DP replicas: sequences 0..1 and 2..3 */
    const int groups[3] = {0, 2, 4};
    f.one.route_dp = 2;
    model_opts_t o = {.prompt_logits = true, .gen_logits = true};
    model_out_t out;
    cr_assert_eq(generate(&f, &out, &all, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_gt(out.dropped, 0, "capacity factor 1 should drop on this workload");
    int V = f.cfg.vocab_size;
    for (int g = 0; g < 2; g++) {
        wl_t one;
        int nb = groups[g + 1] - groups[g];
        workload(&one, nb, len + groups[g], (const int *const *)tok + groups[g], N);
        model_opts_t oo = {.prompt_logits = true, .gen_logits = true};
        f.one.route_dp = 1;
        model_out_t part;
        cr_assert_eq(generate(&f, &part, &one, &oo), MOEMU_OK);
        for (int i = 0; i < nb; i++) {
            int b = groups[g] + i;
            for (int p = 0; p < len[b]; p++) {
                double e = rel_l2(part.prompt_logits + ((int64_t)i * one.max_len + p) * V,
                                  out.prompt_logits + ((int64_t)b * all.max_len + p) * V, V);
                cr_assert_leq(e, 1e-6, "group %d sequence %d position %d: %g", g, b, p, e);
            }
            for (int p = len[b]; p < all.max_len; p++)
                cr_assert(isnan(out.prompt_logits[((int64_t)b * all.max_len + p) * V]),
                          "padding of sequence %d at %d is not NaN", b, p);
            cr_assert_eq(memcmp(part.generated + i * N, out.generated + b * N, sizeof(int) * N), 0);
        }
        model_out_free(&part);
        wl_free(&one);
    }
    model_out_free(&out);
    wl_free(&all);
    for (int b = 0; b < B; b++) free(tok[b]);
    fixture_free(&f);
}

Test(model, deterministic_and_charges_the_device)
{
    fixture_t f;
    fixture(&f, "tiny", 1.25);
    wl_opts_t wo = {.batch = 3, .range = "5:40", .decode = 4, .seed = 9};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &f.cfg), MOEMU_OK, "%s", moemu_errmsg());
    model_opts_t o = {0};
    model_out_t a, b;
    cr_assert_eq(generate(&f, &a, &wl, &o), MOEMU_OK);
    double first = f.clock;
    cr_assert_eq(generate(&f, &b, &wl, &o), MOEMU_OK);
    cr_assert_eq(memcmp(a.generated, b.generated, sizeof(int) * 3 * 4), 0);
    cr_assert_eq(a.dropped, b.dropped);
    cr_assert_gt(first, 0.0);
    cr_assert_eq(first, f.clock, "the same run charges the same time");
    cr_assert_eq(a.assignments, (int64_t)f.cfg.num_experts_per_tok * f.cfg.num_hidden_layers *
                                    (wl_prompt_tokens(&wl) + 3 * 3));
    model_out_free(&a);
    model_out_free(&b);
    wl_free(&wl);
    fixture_free(&f);
}

Test(workload, seeded_lengths_and_tokens)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    wl_opts_t o = {.batch = 50, .range = "3:9", .decode = 2, .seed = 4};
    wl_t a, b;
    cr_assert_eq(wl_make(&a, &o, &cfg), MOEMU_OK);
    cr_assert_eq(wl_make(&b, &o, &cfg), MOEMU_OK);
    bool lo = false, hi = false;
    for (int i = 0; i < 50; i++) {
        cr_assert(a.len[i] >= 3 && a.len[i] <= 9);
        lo |= a.len[i] == 3;
        hi |= a.len[i] == 9;
    }
    cr_assert(lo && hi, "both ends of the range are drawn");
    cr_assert_eq(memcmp(a.tokens, b.tokens, sizeof(int) * (size_t)wl_prompt_tokens(&a)), 0);
    for (int64_t i = 0; i < wl_prompt_tokens(&a); i++)
        cr_assert(a.tokens[i] >= 0 && a.tokens[i] < cfg.vocab_size);
    wl_free(&a);
    wl_free(&b);
}

static void wl_error(const wl_opts_t *o, const char *want)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    wl_t wl;
    cr_assert_neq(wl_make(&wl, o, &cfg), MOEMU_OK, "expected an error containing '%s'", want);
    cr_assert(strstr(moemu_errmsg(), want), "message '%s' lacks '%s'", moemu_errmsg(), want);
}

Test(workload, errors)
{
    wl_error(&(wl_opts_t){.lens = "4,x,5"}, "length 2 is not a positive integer");
    wl_error(&(wl_opts_t){.lens = "4,0"}, "length 2");
    wl_error(&(wl_opts_t){.batch = 3, .lens = "4,5"},
             "prompt lengths '4,5' give 2 lengths but batch is 3");
    wl_error(&(wl_opts_t){.range = "9:3"}, "0 < MIN <= MAX");
    wl_error(&(wl_opts_t){.range = "3-9"}, "prompt length range '3-9': expected MIN:MAX");
    wl_error(&(wl_opts_t){.prompt_len = 4, .range = "3:9"},
             "give only one of a prompt length, a list of lengths and a range of lengths");
    wl_error(&(wl_opts_t){.batch = -2}, "batch -2: must be >= 0");
    wl_error(&(wl_opts_t){.tokens_file = "t.json", .prompt_len = 4},
             "tokens file t.json sets the prompt lengths");
    wl_error(&(wl_opts_t){.prompt_len = 4000, .decode = 100},
             "needs 4099 positions (prompt 4000 + decode 100 - 1) but the model's "
             "max_position_embeddings is 4096");
    wl_error(&(wl_opts_t){.decode = -1}, "decode -1: must be >= 0");
    wl_error(&(wl_opts_t){.tokens_file = "/nonexistent/t.json"}, "cannot open tokens file /nonexistent/t.json");
}

/* Lengths past the model's positions are refused before any token is
 * made for them: 64 prompts of 2^31 - 1 tokens once asked for 512 GB. */
Test(workload, long_prompts_refused_before_their_tokens)
{
    char lens[64 * 11 + 1] = "";
    for (int i = 0; i < 64; i++) strcat(lens, i ? ",2147483647" : "2147483647");
    wl_error(&(wl_opts_t){.lens = lens, .decode = 2},
             "sequence 0 needs 2147483648 positions (prompt 2147483647 + decode 2 - 1)");
    wl_error(&(wl_opts_t){.batch = 64, .range = "2147483647:2147483647"},
             "sequence 0 needs 2147483647 positions");
}

Test(workload, tokens_file)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    char path[] = "/tmp/moemu-tok-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    const char good[] = "[[1, 2, 3], [96]]";
    cr_assert_eq(write(fd, good, sizeof good - 1), (ssize_t)(sizeof good - 1));
    close(fd);
    wl_t wl;
    wl_opts_t o = {.tokens_file = path, .decode = 2};
    cr_assert_eq(wl_make(&wl, &o, &cfg), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(wl.batch, 2);
    cr_assert_eq(wl.len[0], 3);
    cr_assert_eq(wl.tokens[3], 96);
    wl_free(&wl);
    const char *bad[][2] = {{"[[1, 2], [97]]", "position 0 is not a token id in [0, 97)"},
                            {"[[1], []]", "sequence 1 is not a non-empty list"},
                            {"{\"a\": 1}", "expected a non-empty JSON list"},
                            {"[[1, 2", "line 1"}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *fp = fopen(path, "w");
        fputs(bad[i][0], fp);
        fclose(fp);
        cr_assert_neq(wl_make(&wl, &o, &cfg), MOEMU_OK);
        cr_assert(strstr(moemu_errmsg(), bad[i][1]), "'%s': %s", bad[i][0], moemu_errmsg());
    }
    unlink(path);
}

/* A token that is not an id is shown as the file has it; a file that
 * cannot be opened says why. */
Test(workload, token_errors_show_the_value)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    char path[] = "/tmp/moemu-tok-XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *bad[][2] = {{"[[1, 2], [97]]", "sequence 1 position 0 is not a token id in "
                                               "[0, 97), got 97"},
                            {"[[-3]]", "sequence 0 position 0 is not a token id in [0, 97), "
                                       "got -3"},
                            {"[[1, \"a\"]]", "sequence 0 position 1 is not a token id in "
                                             "[0, 97), got \"a\""},
                            {"[[2.5]]", "sequence 0 position 0 is not a token id in [0, 97), "
                                        "got 2.5"}};
    wl_opts_t o = {.tokens_file = path};
    wl_t wl;
    char want[256];
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        FILE *fp = fopen(path, "w");
        fputs(bad[i][0], fp);
        fclose(fp);
        cr_assert_eq(wl_make(&wl, &o, &cfg), MOEMU_ERR_INVALID);
        snprintf(want, sizeof want, "tokens file %s: %s", path, bad[i][1]);
        cr_expect_str_eq(moemu_errmsg(), want);
    }
    unlink(path);
    cr_assert_eq(wl_make(&wl, &o, &cfg), MOEMU_ERR_IO);
    snprintf(want, sizeof want, "cannot open tokens file %s: No such file or directory", path);
    cr_expect_str_eq(moemu_errmsg(), want);
}

/* One device is the runner on the one-device strategy, whoever asks: a
 * library caller, check's baseline and the report's scaling reference (a
 * dry replay of the strategy's routing) get the same clock, TTFT and peak
 * memory, with the strategy's routing groups. */
Test(model, one_device_figures_are_one)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    cfg.capacity_factor = 1.0; /* groups matter: they decide the drops */
    wts_t w;
    cr_assert_eq(wts_generate_all(&w, &cfg, 5), MOEMU_OK, "%s", moemu_errmsg());
    wl_opts_t wo = {.lens = "7,3,9,5,6", .decode = 3, .seed = 5};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK, "%s", moemu_errmsg());
    runner_opts_t so = {.micro_batches = 2};
    cr_assert_eq(par_strategy_parse("dp2-tp2-ep2", &so.strategy), MOEMU_OK);
    cr_assert_eq(emu_hw_load("a100-80g", &so.hw), MOEMU_OK);

    runner_opts_t one;
    runner_opts_one_device(&one, &so.hw, 2, 2);
    model_opts_t mo = {.prompt_logits = true}; /* as check computes them */
    model_out_t out;
    emu_cluster_t *cl;
    cr_assert_eq(runner_generate(&out, &cl, &w, &wl, &one, &mo), MOEMU_OK, "%s", moemu_errmsg());
    emu_dev_t *dev = emu_cluster_dev(cl, 0);

    check_t chk;
    cr_assert_eq(check_run(&chk, &w, &wl, &so, 1e-5, NULL), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(chk.r.pass);
    emu_dev_t *base = emu_cluster_dev(chk.base_cluster, 0);
    cr_assert_eq(emu_dev_clock(base), emu_dev_clock(dev), "check's baseline");
    cr_assert_eq(emu_mem_total_peak(base), emu_mem_total_peak(dev));
    cr_assert_eq(chk.base.dropped, out.dropped);
    cr_assert_gt(out.dropped, 0, "capacity 1.0 should drop here");
    for (int i = 0; i < wl.batch * wl.decode; i++)
        cr_assert_eq(chk.base.token_time[i], out.token_time[i], "token %d's time", i);

    double t1;
    cr_assert_eq(report_one_device(&t1, &w, &wl, &so, chk.route_strategy, true), MOEMU_OK, "%s",
                 moemu_errmsg());
    cr_assert_eq(t1, emu_dev_clock(dev), "the report's scaling reference");
    check_free(&chk);
    model_out_free(&out);
    emu_cluster_destroy(cl);
    wl_free(&wl);
    wts_free(&w);
}

/* Routing groups must split each replica whole: a route_dp that DP does
 * not divide is refused with both numbers, as are zero micro-batches. */
Test(model, route_groups_must_fit_the_replicas)
{
    fixture_t f;
    fixture(&f, "tiny", 0.0);
    wl_opts_t wo = {.batch = 4, .prompt_len = 5, .decode = 2, .seed = 1};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &f.cfg), MOEMU_OK, "%s", moemu_errmsg());
    runner_opts_t o = f.one;
    cr_assert_eq(par_strategy_parse("dp2", &o.strategy), MOEMU_OK);
    o.route_dp = 3;
    model_opts_t mo = {0};
    model_out_t out;
    emu_cluster_t *cl;
    cr_assert_eq(runner_generate(&out, &cl, &f.w, &wl, &o, &mo), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "routing groups of 3 replicas: not a multiple of DP = 2");
    o.route_dp = 4; /* two routing replicas inside each of DP's */
    cr_assert_eq(runner_generate(&out, &cl, &f.w, &wl, &o, &mo), MOEMU_OK, "%s", moemu_errmsg());
    model_out_free(&out);
    emu_cluster_destroy(cl);
    o.micro_batches = 0;
    cr_assert_eq(runner_generate(&out, &cl, &f.w, &wl, &o, &mo), MOEMU_ERR_INVALID);
    cr_assert_str_eq(moemu_errmsg(), "micro_batches 0: must be >= 1");
    wl_free(&wl);
    fixture_free(&f);
}

/* Fused kernels launch fewer elementwise kernels and compute the same:
 * per layer and pass, the residual update goes into the next norm (one
 * launch fewer per block, but the stage's last, which is its own) and
 * the rotary embedding of q and k is one kernel instead of two; the
 * tokens are the same. */
Test(model, fused_elementwise_kernels)
{
    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    wts_t w;
    cr_assert_eq(wts_generate_all(&w, &cfg, 5), MOEMU_OK, "%s", moemu_errmsg());
    wl_opts_t wo = {.lens = "7,3", .decode = 3, .seed = 5};
    wl_t wl;
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK, "%s", moemu_errmsg());
    uint64_t launches[2][EMU_KERNEL__COUNT];
    int tokens[2][6];
    for (int f = 0; f < 2; f++) {
        runner_opts_t one;
        emu_hw_t hw;
        cr_assert_eq(emu_hw_load("a100-80g", &hw), MOEMU_OK);
        hw.spec.stack.kernels = f ? EMU_KERNELS_FUSED : EMU_KERNELS_SEPARATE;
        runner_opts_one_device(&one, &hw, 1, 1);
        model_opts_t mo = {0};
        model_out_t out;
        emu_cluster_t *cl;
        cr_assert_eq(runner_generate(&out, &cl, &w, &wl, &one, &mo), MOEMU_OK, "%s",
                     moemu_errmsg());
        for (int k = 0; k < EMU_KERNEL__COUNT; k++)
            launches[f][k] = emu_dev_kernel_stats(emu_cluster_dev(cl, 0), k)->launches;
        memcpy(tokens[f], out.generated, sizeof tokens[f]);
        model_out_free(&out);
        emu_cluster_destroy(cl);
    }
    int L = cfg.num_hidden_layers, passes = wl.decode; /* a prefill, then decode - 1 steps */
    cr_expect_eq(memcmp(tokens[0], tokens[1], sizeof tokens[0]), 0, "the tokens moved");
    cr_expect_eq(launches[0][EMU_KERNEL_ROPE] - launches[1][EMU_KERNEL_ROPE],
                 (uint64_t)(L * passes), "one rotary kernel per layer and pass");
    /* two updates per layer, all in a norm but the last one */
    cr_expect_eq(launches[0][EMU_KERNEL_ELEMWISE] - launches[1][EMU_KERNEL_ELEMWISE],
                 (uint64_t)((2 * L - 1) * passes), "the residual updates in the norms");
    cr_expect_eq(launches[0][EMU_KERNEL_NORM], launches[1][EMU_KERNEL_NORM]);
    wl_free(&wl);
    wts_free(&w);
}
