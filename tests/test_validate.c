/* Validation against published measurements: the CSV's problems named at
 * once, each metric read from the dry run's report, the summaries, and
 * the comparison with a baseline. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/tools/outfile.h"
#include "engine/tools/report.h"
#include "engine/tools/validate.h"

static char dir[64];

static void setup(void)
{
    strcpy(dir, "/tmp/moemu-validate-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(validate, .init = setup, .fini = teardown);

#define HEADER "id,use,source,engine,model,hw,dtype,strategy,batch,prompt_len,decode,metric,value,note\n"

static const char *write_file(const char *name, const char *text)
{
    static char path[2][128];
    static int k;
    char *p = path[k++ % 2];
    snprintf(p, 128, "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    return p;
}

Test(validate, every_problem_at_once)
{
    const char *p = write_file("bad.csv", HEADER
        "a,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp1,0,16,4,latency_s,1,\n"
        "b,train,s,vllm,tiny,card-400tf-64gb,int4,tp1,2,16,4,speed,-3,\n"
        "a,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp1,2,16,4,latency_s,1\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_ERR_INVALID);
    const char *m = moemu_errmsg();
    cr_assert(strstr(m, "line 2: batch '0' is not a whole number"), "%s", m);
    cr_assert(strstr(m, "line 3: use 'train' is not fit or holdout"), "%s", m);
    cr_assert(strstr(m, "line 3: dtype 'int4'"), "%s", m);
    cr_assert(strstr(m, "line 3: metric 'speed'"), "%s", m);
    cr_assert(strstr(m, "line 3: value '-3' is not a positive number"), "%s", m);
    cr_assert(strstr(m, "line 4: 13 fields, the header has 14"), "%s", m);
}

Test(validate, header_and_format)
{
    val_set_t s;
    const char *p = write_file("h.csv", "id,use,source,engine,model,hw,dtype,strategy,batch,"
                                        "prompt_len,decode,metric,value,colour\n");
    cr_assert_eq(val_load(&s, p), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "unknown column 'colour'"), "%s", moemu_errmsg());
    cr_assert(strstr(moemu_errmsg(), "no column 'note'"), "%s", moemu_errmsg());
    p = write_file("q.csv", HEADER "a,fit,\"unterminated,vllm\n");
    cr_assert_eq(val_load(&s, p), MOEMU_ERR_FORMAT, "%s", moemu_errmsg());
    p = write_file("dup.csv", HEADER
        "a,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp1,2,16,4,latency_s,1,\n"
        "a,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp1,2,16,4,latency_s,1,\n");
    cr_assert_eq(val_load(&s, p), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "line 3: id 'a' is also on line 2"), "%s", moemu_errmsg());
    cr_assert_eq(val_load(&s, "/nonexistent/m.csv"), MOEMU_ERR_IO);
}

/* Rows that cannot run are named together, before any runs. */
Test(validate, rows_checked_before_running)
{
    const char *p = write_file("r.csv", HEADER
        "a,fit,s,vllm,nosuch,card-400tf-64gb,bf16,tp1,2,16,4,latency_s,1,\n"
        "b,fit,s,vllm,tiny,nocard,bf16,tp1,2,16,4,latency_s,1,\n"
        "c,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp3,2,16,4,latency_s,1,\n"
        "d,fit,s,trtllm,tiny,a100-80g,fp8,tp1,2,16,4,latency_s,1,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    val_opts_t o = {.models = dir};
    cr_assert_eq(val_run(&s, &o), MOEMU_ERR_INVALID);
    const char *m = moemu_errmsg();
    cr_assert(strstr(m, "4 rows cannot run"), "%s", m);
    cr_assert(strstr(m, "line 5 (d): --compute-dtype fp8: a100-80g+trtllm has no FP8 Tensor Cores"), "%s",
              m);
    cr_assert(strstr(m, "line 2 (a):") && strstr(m, "nosuch.json"), "%s", m);
    cr_assert(strstr(m, "line 3 (b):") && strstr(m, "nocard"), "%s", m);
    cr_assert(strstr(m, "line 4 (c): strategy tp3"), "%s", m);
    val_free(&s);
}

/* Each metric is the report's figure of the same dry run. */
Test(validate, metrics_are_the_reports)
{
    const char *p = write_file("m.csv", HEADER
        "e2e,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp2,3,16,4,latency_s,0.001,\n"
        "ttft,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp2,3,16,4,ttft_ms,1,\n"
        "tpot,holdout,s,vllm,tiny,card-400tf-64gb,bf16,tp2,3,16,4,tpot_ms,1,\n"
        "tps,fit,t,vllm,tiny,card-400tf-64gb,bf16,tp2,3,16,4,out_tokens_per_s,1000,\n"
        "tpsg,fit,t,vllm,tiny,card-400tf-64gb,bf16,tp2,3,16,4,out_tokens_per_s_per_gpu,1000,\n"
        "f8,fit,u,sglang,tiny,h100-sxm,fp8,tp2,3,16,4,latency_s,1,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    val_opts_t o = {0};
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());

    cfg_model_t cfg;
    cr_assert_eq(cfg_load(&cfg, "tiny"), MOEMU_OK);
    cfg_store_dtype(&cfg);
    cfg.dtype = EMU_DTYPE_BF16;
    wl_t wl;
    wl_opts_t wo = {.batch = 3, .prompt_len = 16, .decode = 4};
    cr_assert_eq(wl_make(&wl, &wo, &cfg), MOEMU_OK);
    runner_opts_t d = {.micro_batches = 1};
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &d.hw), MOEMU_OK);
    cr_assert_eq(par_strategy_parse("tp2", &d.strategy), MOEMU_OK);
    report_t r;
    cr_assert_eq(report_dry_run(&r, &cfg, &wl, &d, "uniform", 0, false), MOEMU_OK);
    cr_assert_eq(s.rows[0].moemu, r.e2e);
    cr_assert_eq(s.rows[0].ratio, r.e2e / 0.001);
    cr_assert_eq(s.rows[1].moemu, r.ttft_batch * 1e3);
    cr_assert_eq(s.rows[2].moemu, r.tpot * 1e3);
    cr_assert_eq(s.rows[3].moemu, 12 / r.e2e);
    cr_assert_eq(s.rows[4].moemu, 12 / r.e2e / 2);
    report_free(&r);
    /* an FP8 row: weights, products and KV cache in FP8 */
    cfg_store_fp8(&cfg);
    d.prec = (run_prec_t){.compute = RUN_COMPUTE_FP8, .kv_fp8 = true};
    cr_assert_eq(emu_hw_load("h100-sxm", &d.hw), MOEMU_OK);
    cr_assert_eq(report_dry_run(&r, &cfg, &wl, &d, "uniform", 0, false), MOEMU_OK);
    cr_assert_eq(s.rows[5].moemu, r.e2e);
    report_free(&r);
    wl_free(&wl);

    val_summary_t m;
    val_summarize(&s, NULL, "t", NULL, &m);
    cr_assert_eq(m.rows, 2);
    double lo = fmin(s.rows[3].ratio, s.rows[4].ratio), hi = fmax(s.rows[3].ratio, s.rows[4].ratio);
    cr_assert_eq(m.low, lo);
    cr_assert_eq(m.high, hi);
    cr_assert_eq(m.median_err, (fabs(lo - 1) + fabs(hi - 1)) / 2);
    cr_assert_eq(m.worst, fmax(hi, 1 / lo));
    val_free(&s);
}

/* The median of an odd count is the middle error; the worst factor takes
 * the side that is further off. */
Test(validate, summary_by_hand)
{
    val_row_t rows[3] = {{.ratio = 0.5}, {.ratio = 1.1}, {.ratio = 1.3}};
    for (int i = 0; i < 3; i++) strcpy(rows[i].use, i ? "fit" : "holdout");
    val_set_t s = {.rows = rows, .n = 3};
    val_summary_t m;
    val_summarize(&s, NULL, NULL, NULL, &m);
    cr_assert_float_eq(m.median_err, 0.3, 1e-12);
    cr_assert_float_eq(m.worst, 2.0, 1e-12);
    val_summarize(&s, "fit", NULL, NULL, &m);
    cr_assert_float_eq(m.median_err, 0.2, 1e-12);
    cr_assert_float_eq(m.worst, 1.3, 1e-12);
}

/* A baseline no worse passes; a better one fails the comparison; other
 * rows are an error naming them. */
Test(validate, against_baseline)
{
    const char *p = write_file("b.csv", HEADER
        "x,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp1,2,16,4,latency_s,0.01,\n"
        "y,fit,s,vllm,tiny,card-400tf-64gb,bf16,tp2,2,16,4,latency_s,0.01,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    val_opts_t o = {0};
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());
    char base[128];
    snprintf(base, sizeof base, "%s/base.json", dir);
    json_t *j = val_json(&s);
    cr_assert_eq(outfile_json(base, j), MOEMU_OK);
    bool worse = true;
    FILE *null = fopen("/dev/null", "w");
    cr_assert_eq(val_against(&s, base, null, &worse), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(!worse);
    /* a baseline with a smaller median error: now is worse */
    json_t *all = json_object_get(json_object_get(j, "summary"), "all");
    val_summary_t now;
    val_summarize(&s, NULL, NULL, NULL, &now);
    cr_assert_gt(now.median_err, 0);
    json_object_set_new(all, "median_error", json_real(now.median_err / 2));
    cr_assert_eq(outfile_json(base, j), MOEMU_OK);
    cr_assert_eq(val_against(&s, base, null, &worse), MOEMU_OK);
    cr_assert(worse);
    /* other rows */
    json_array_remove(json_object_get(j, "rows"), 1);
    cr_assert_eq(outfile_json(base, j), MOEMU_OK);
    cr_assert_eq(val_against(&s, base, null, &worse), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "row 'y' is not in the baseline"), "%s", moemu_errmsg());
    fclose(null);
    json_decref(j);
    val_free(&s);
}

/* ---- calibration */

#include "engine/tools/calibrate.h"

/* card-400tf-64gb with its efficiency parameters replaced, as a file. */
static const char *card_file(const char *name, double mfu, double bw, double launch)
{
    json_t *root;
    cr_assert_eq(emu_hw_json("card-400tf-64gb", &root), MOEMU_OK, "%s", moemu_errmsg());
    json_t *dev = json_object_get(root, "device");
    json_object_set_new(dev, "mfu", json_real(mfu));
    json_object_set_new(dev, "bw_util", json_real(bw));
    json_object_set_new(dev, "launch_s", json_real(launch));
    static char path[2][128];
    static int k;
    char *p = path[k++ % 2];
    snprintf(p, 128, "%s/%s.json", dir, name);
    cr_assert_eq(json_dump_file(root, p, 0), 0);
    json_decref(root);
    return p;
}

/* Figures made by a card of known parameters are fitted back to them
 * from another start: a compute-bound prefill, a memory-bound decode and
 * a launch-bound short one. */
Test(validate, calibrate_recovers_parameters, .timeout = 300)
{
    const char *truth = card_file("truth", 0.35, 0.55, 3e-6);
    const char *start = card_file("start", 0.6, 0.8, 8e-6);
    char csv[4096];
    int n = snprintf(csv, sizeof csv, HEADER);
    const char *shapes[][5] = {{"pre", "8", "1024", "1", "ttft_ms"},
                               {"dec", "2", "16", "6", "tpot_ms"},
                               {"mid", "4", "64", "4", "latency_s"},
                               {"hold", "16", "128", "2", "latency_s"}};
    for (int i = 0; i < 4; i++)
        n += snprintf(csv + n, sizeof csv - (size_t)n, "%s,%s,s,vllm,moe-10b-plan,%s,bf16,tp2,"
                      "%s,%s,%s,%s,1,\n", shapes[i][0], i == 3 ? "holdout" : "fit", start,
                      shapes[i][1], shapes[i][2], shapes[i][3], shapes[i][4]);
    val_set_t s;
    cr_assert_eq(val_load(&s, write_file("cal.csv", csv)), MOEMU_OK, "%s", moemu_errmsg());
    /* the published figures: the true card's */
    emu_hw_t hw;
    cr_assert_eq(emu_hw_load(truth, &hw), MOEMU_OK);
    val_opts_t o = {.hw = &hw};
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());
    for (int i = 0; i < s.n; i++) s.rows[i].published = s.rows[i].moemu;

    cal_opts_t co = {.hw = start, .max_evals = 400};
    cal_result_t r;
    cr_assert_eq(cal_fit(&r, &s, &co), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(r.fit, 3);
    cr_assert_eq(r.holdout, 1);
    cr_assert_eq(r.nparams, 3);
    cr_assert(!cal_fitted(&r, CAL_HOST), "a card's preset leaves the engine's host work alone");
    cr_assert_gt(r.loss_before, 1e-2);
    cr_assert_lt(r.loss_after, 1e-5, "loss %g after %d runs", r.loss_after, r.evals);
    double want[3] = {0.35, 0.55, 3e-6};
    for (int i = 0; i < 3; i++)
        cr_assert(fabs(cal_param(&r.after.spec, i) / want[i] - 1) < 0.02, "%s %g, want %g",
                  cal_param_names[i], cal_param(&r.after.spec, i), want[i]);
    /* the holdout row, not fitted, comes out right too */
    cr_assert(fabs(r.rows.rows[3].ratio - 1) < 1e-3, "holdout ratio %g", r.rows.rows[3].ratio);

    /* the written preset loads, with the fitted figures */
    char out[128];
    snprintf(out, sizeof out, "%s/fitted.json", dir);
    cr_assert_eq(cal_write(&r, &co, out), MOEMU_OK, "%s", moemu_errmsg());
    emu_hw_t back;
    cr_assert_eq(emu_hw_load(out, &back), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(back.spec.mfu, r.after.spec.mfu);
    cr_assert(strstr(back.comment, "Calibrated by moemu calibrate"), "%s", back.comment);
    cal_free(&r);
    val_free(&s);
}

Test(validate, calibrate_needs_fit_rows)
{
    const char *p = write_file("nofit.csv", HEADER
        "a,holdout,s,vllm,tiny,card-400tf-64gb,bf16,tp1,2,16,4,latency_s,1,\n"
        "b,fit,s,vllm,tiny,a100-80g,bf16,tp1,2,16,4,latency_s,1,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    cal_opts_t co = {.hw = "card-400tf-64gb"};
    cal_result_t r;
    cr_assert_eq(cal_fit(&r, &s, &co), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "no fit row of card 'card-400tf-64gb'"), "%s",
              moemu_errmsg());
    cal_free(&r);
    val_free(&s);
}

/* ---- engine profiles */

Test(validate, engine_profile_applied)
{
    emu_hw_t hw, before;
    cr_assert_eq(emu_hw_load("a100-80g", &hw), MOEMU_OK);
    before = hw;
    json_t *root;
    cr_assert_eq(emu_engine_json("vllm", &root), MOEMU_OK, "%s", moemu_errmsg());
    json_t *card = json_object_get(json_object_get(root, "cards"), "a100-80g");
    cr_assert_not_null(card, "hw/engines/vllm.json has no a100-80g entry");
    bool found;
    cr_assert_eq(emu_engine_apply("vllm", &hw, &found), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(found);
    cr_assert_str_eq(hw.name, "a100-80g+vllm");
    cr_assert_eq(hw.spec.mfu, json_number_value(json_object_get(card, "mfu")));
    cr_assert_eq(hw.spec.launch_s, json_number_value(json_object_get(card, "launch_s")));
    cr_assert_gt(hw.spec.host_seq_s, 0);
    cr_assert_eq(hw.spec.host_seq_s, json_number_value(json_object_get(card, "host_seq_s")));
    cr_assert_eq(hw.spec.kernels[EMU_KERNEL_EXPERT].overlap,
                 json_number_value(json_object_get(card, "overlap")));
    cr_assert_eq(hw.spec.peak_flops, before.spec.peak_flops); /* the card's own stays */
    json_decref(root);

    /* a card the profile lacks: untouched */
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    before = hw;
    cr_assert_eq(emu_engine_apply("vllm", &hw, &found), MOEMU_OK);
    cr_assert(!found);
    cr_assert_eq(memcmp(&hw, &before, sizeof hw), 0);
}

Test(validate, engine_profile_errors)
{
    emu_hw_t hw;
    bool found;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    cr_assert_eq(emu_engine_apply("nosuch", &hw, &found), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "unknown engine profile 'nosuch' (built in: vllm, trtllm"),
              "%s", moemu_errmsg());
    const char *p = write_file("bad.json", "{\"name\": \"x\", \"cards\": {\"card-400tf-64gb\": "
                                           "{\"mfu\": 0.5, \"bw_util\": 0.8, \"launch_s\": 0, "
                                           "\"overlap\": 1.5}}}");
    cr_assert_eq(emu_engine_apply(p, &hw, &found), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "overlap must be in [0, 1] (got 1.5)"), "%s", moemu_errmsg());
    p = write_file("bad2.json", "{\"name\": \"x\", \"cards\": {\"card-400tf-64gb\": "
                                "{\"mfu\": 2, \"bw_util\": 0.8, \"launch_s\": 0}}}");
    cr_assert_eq(emu_engine_apply(p, &hw, &found), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "mfu"), "%s", moemu_errmsg());
    p = write_file("bad3.json", "{\"name\": \"x\", \"cards\": {\"card-400tf-64gb\": "
                                "{\"mfu\": 0.5, \"launch_s\": 0}}}");
    cr_assert_neq(emu_engine_apply(p, &hw, &found), MOEMU_OK);
    cr_assert(strstr(moemu_errmsg(), "bw_util"), "%s", moemu_errmsg());
    p = write_file("bad4.json", "{\"name\": \"x\", \"cards\": {\"card-400tf-64gb\": "
                                "{\"mfu\": 0.5, \"bw_util\": 0.8, \"launch_s\": 0, "
                                "\"host_seq_s\": 0.5}}}");
    cr_assert_eq(emu_engine_apply(p, &hw, &found), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "host_seq_s must be in [0, 0.1] s (got 0.5)"), "%s",
              moemu_errmsg());
}

/* A row of an engine with figures for its card runs on them (marked); the
 * presets alone give another figure. */
Test(validate, rows_use_engine_profiles)
{
    const char *p = write_file("e.csv", HEADER
        "v,fit,s,vllm,moe-10b-plan,a100-80g,bf16,tp2,4,64,4,latency_s,1,\n"
        "o,fit,s,other,moe-10b-plan,a100-80g,bf16,tp2,4,64,4,latency_s,1,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    val_opts_t o = {0};
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(s.rows[0].profiled);
    cr_assert(!s.rows[1].profiled);
    cr_assert_neq(s.rows[0].moemu, s.rows[1].moemu);
    double with = s.rows[0].moemu;
    o.presets_only = true;
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(!s.rows[0].profiled);
    cr_assert_eq(s.rows[0].moemu, s.rows[1].moemu);
    cr_assert_neq(s.rows[0].moemu, with);
    val_free(&s);
}

/* Calibrating for an engine writes its profile with the card's entry. */
Test(validate, calibrate_writes_profile)
{
    const char *prof = write_file("eng.json", "{\"name\": \"eng\", \"comment\": \"test\", "
                                              "\"cards\": {}}");
    const char *p = write_file("c.csv", HEADER
        "a,fit,s,eng,moe-10b-plan,card-400tf-64gb,bf16,tp1,2,64,4,latency_s,0.01,\n"
        "b,fit,s,other,moe-10b-plan,card-400tf-64gb,bf16,tp1,2,64,4,latency_s,0.01,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    cal_opts_t co = {.hw = "card-400tf-64gb", .engine = prof, .max_evals = 8};
    cal_result_t r;
    cr_assert_eq(cal_fit(&r, &s, &co), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(r.rows.n, 1, "only the engine's rows");
    cr_assert(cal_fitted(&r, CAL_HOST), "the engine's host work is fitted with it");
    char out[128];
    snprintf(out, sizeof out, "%s/eng-out.json", dir);
    cr_assert_eq(cal_write(&r, &co, out), MOEMU_OK, "%s", moemu_errmsg());
    emu_hw_t hw;
    bool found;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &hw), MOEMU_OK);
    cr_assert_eq(emu_engine_apply(out, &hw, &found), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(found);
    cr_assert_eq(hw.spec.mfu, r.after.spec.mfu);
    cr_assert_eq(hw.spec.host_seq_s, r.after.spec.host_seq_s);
    cr_assert_str_eq(hw.name, "card-400tf-64gb+eng");
    /* again from the profile written: the card's entry is replaced, not
     * written under the applied name */
    co.engine = out;
    cal_free(&r);
    cr_assert_eq(cal_fit(&r, &s, &co), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(cal_write(&r, &co, out), MOEMU_OK, "%s", moemu_errmsg());
    json_t *root;
    cr_assert_eq(emu_engine_json(out, &root), MOEMU_OK);
    cr_assert_eq(json_object_size(json_object_get(root, "cards")), 1);
    cr_assert_not_null(json_object_get(json_object_get(root, "cards"), "card-400tf-64gb"));
    json_decref(root);
    cal_free(&r);
    val_free(&s);
}

/* A row that does not fit the devices' memory runs without the limit and
 * is marked; the mark is the run's, not left from an earlier one. */
Test(validate, no_fit_marked_per_run)
{
    const char *p = write_file("f.csv", HEADER
        "a,fit,s,vllm,moe-10b-plan,card-400tf-64gb,bf16,tp1,2,64,4,latency_s,1,\n");
    val_set_t s;
    cr_assert_eq(val_load(&s, p), MOEMU_OK, "%s", moemu_errmsg());
    emu_hw_t small;
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &small), MOEMU_OK);
    small.spec.mem_capacity = 1e6;
    val_opts_t o = {.hw = &small};
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(s.rows[0].no_fit);
    double unlimited = s.rows[0].moemu;
    o.hw = NULL;
    cr_assert_eq(val_run(&s, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert(!s.rows[0].no_fit);
    cr_assert_eq(s.rows[0].moemu, unlimited, "the limit moves no figure");
    val_free(&s);
}
