/* moemu run: build the model and the workload, prefill, decode greedily,
 * print a summary; optionally dump logits, weights and a JSON record. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "engine/cli/cli.h"
#include "engine/models/checkpoint.h"
#include "engine/tools/outfile.h"
#include "engine/tools/check.h"
#include "engine/tools/report.h"
#include "engine/models/safetensors.h"

static const char run_help[] =
    "usage: moemu run [OPTIONS]\n"
    "\n"
    "Run a batch of prompts through the model: prefill, then greedy decoding,\n"
    "and print tokens, wall time, tokens/s and GFLOP/s. With --strategy the\n"
    "work runs on emulated devices, one thread each, and each device's\n"
    "virtual time is printed too.\n"
    "\n";

static const char check_help[] =
    "usage: moemu check --strategy S [OPTIONS]\n"
    "\n"
    "Run the single-device baseline and the strategy on the same model,\n"
    "weights, prompts and routing groups, and compare: the logits of every\n"
    "prompt position and of every generated token (max absolute error, max\n"
    "relative error, relative L2 error), the greedy tokens, the router's\n"
    "decisions and the dropped assignments. Exit status 0 when the relative\n"
    "L2 error is within --rtol and the tokens are identical, 1 otherwise, 2 on\n"
    "an error.\n"
    "\n";

typedef struct {
    cli_shared_t sh;
    bool check;
    const char *dump_logits, *dump_weights, *record_routing, *trace;
    const char *baseline; /* --baseline-strategy: NULL, one device */
    int64_t shard_bytes; /* --shard-size: 0 writes one file */
    bool no_memory_limit, dry;
    int math; /* 0: real, 1: skip (a dry run) */
    double pace, rtol;
} run_opts_t;

#define RUN(field) offsetof(run_opts_t, field)

static moemu_status_t parse_shard_size(const char *arg, void *values)
{
    run_opts_t *o = values;
    MOEMU_CHECK(ckpt_parse_size(arg, &o->shard_bytes));
    if (o->shard_bytes <= 0)
        return moemu_fail(MOEMU_ERR_INVALID, "--shard-size %s: must be more than 0 bytes", arg);
    return MOEMU_OK;
}

/* moemu run's options and moemu check's: the shared ones and their own */
static const cli_opt_t run_options[] = {
    CLI_HEAD("model and weights:"),
    CLI_USE("model"), CLI_USE("seed"), CLI_USE("weights"), CLI_USE("weight-dtype"),
    CLI_USE("strict"),
    CLI_HEAD("workload:"),
    CLI_USE("batch"), CLI_USE("prompt-len"), CLI_USE("prompt-lens"), CLI_USE("prompt-len-range"),
    CLI_USE("tokens"), CLI_USE("decode"),
    CLI_HEAD("outputs:"),
    {.name = "dump-logits", .arg = "FILE", .type = CLI_STR, .off = RUN(dump_logits),
     .help = "safetensors with one F32 tensor `logits`\n"
             "[batch, max prompt length, vocab] of every prompt\n"
             "position (NaN past a shorter prompt's end)"},
    {.name = "dump-weights", .arg = "PATH", .type = CLI_STR, .off = RUN(dump_weights),
     .help = "write the weights as a checkpoint of the model's\nfamily (safetensors, Hugging Face names, the\nmodel's dtype): a .safetensors file, or a directory"},
    {.name = "shard-size", .arg = "SIZE", .type = CLI_CALL, .parse = parse_shard_size,
     .help = "with --dump-weights, shards of at most SIZE\n(5GB, 500MB, 2GiB or bytes) and their\nmodel.safetensors.index.json, as the Hub ships them"},
    {.name = "json", .type = CLI_SHARED, .help = "the generated token ids and the summary"},
    CLI_HEAD("emulated devices:"),
    CLI_USE("strategy"), CLI_USE("devices"), CLI_USE("pp-layers"), CLI_USE("micro-batches"),
    CLI_USE("hw"), CLI_USE("engine"), CLI_USE("overlap"), CLI_USE("dispatcher"), CLI_USE("kernels"),
    CLI_USE("nodes"),
    CLI_USE("devices-per-node"), CLI_USE("dispatch-dtype"), CLI_USE("compute-dtype"),
    CLI_USE("kv-dtype"),
    CLI_USE("devices-per-process"),
    {.name = "no-memory-limit", .type = CLI_SET, .off = RUN(no_memory_limit),
     .help = "lift the devices' memory capacity"},
    {.name = "pace", .arg = "X", .type = CLI_NUM, .off = RUN(pace), .lo = 0, .hi = EMU_PACE_MAX,
     .help = "sleep so that wall time >= X x virtual time"},
    CLI_HEAD("report (runs on emulated devices end with one; docs/report.md):"),
    {.name = "math", .arg = "real|skip", .type = CLI_CHOICE, .choices = "real|skip",
     .off = RUN(math),
     .help = "skip: a dry run, the same schedule, collectives and\n"
             "costs without tensors (default real)"},
    CLI_USE("routing"),
    {.name = "record-routing", .arg = "FILE", .type = CLI_STR, .off = RUN(record_routing),
     .help = "write the router's decisions (safetensors, I32)"},
    {.name = "trace", .arg = "FILE", .type = CLI_STR, .off = RUN(trace),
     .help = "Chrome trace-event JSON of every device's virtual\n"
             "timeline (Perfetto, chrome://tracing)"},
    {.name = "csv", .type = CLI_SHARED, .help = "the report, one row per device"},
    CLI_HEAD("moemu check:"),
    {.name = "rtol", .arg = "X", .type = CLI_NUM, .off = RUN(rtol), .lo = 0, .hi = INFINITY,
     .help = "tolerance of the relative L2 error (default 1e-5)"},
    {.name = "baseline-strategy", .arg = "S", .type = CLI_STR, .off = RUN(baseline),
     .help = "compare with strategy S instead of one device, for\n"
             "a model whose one-device baseline fits no host (S's\n"
             "equality to one device is the conformance matrix's;\n"
             "docs/mpi.md)"},
    {.name = NULL},
};

/* What the options given together mean, or why they do not go together. */
static moemu_status_t check_combination(run_opts_t *o, const char *cmd)
{
    cli_shared_t *sh = &o->sh;
    if (!o->check && !isnan(o->rtol))
        return moemu_fail(MOEMU_ERR_INVALID, "--rtol belongs to moemu check");
    if (isnan(o->rtol)) o->rtol = 1e-5;
    if (o->check && !sh->strategy)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu check: --strategy is required");
    if (!o->check && o->baseline)
        return moemu_fail(MOEMU_ERR_INVALID, "--baseline-strategy belongs to moemu check");
    if (o->check && o->dry)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu check compares real math: drop --math skip");
    if (sh->routing && !o->dry)
        return moemu_fail(MOEMU_ERR_INVALID, "--routing chooses a dry run's router: add "
                                             "--math skip");
    if (o->dry && (sh->weights || o->dump_weights || o->dump_logits))
        return moemu_fail(MOEMU_ERR_INVALID, "a dry run (--math skip) has no weights or "
                                             "logits: drop --weights, --dump-weights and "
                                             "--dump-logits");
    if (o->shard_bytes && !o->dump_weights)
        return moemu_fail(MOEMU_ERR_INVALID, "--shard-size sizes the shards of --dump-weights: "
                                             "add --dump-weights DIR");
    if (o->dry && !sh->strategy) sh->strategy = "tp1"; /* one emulated device */
    if (!sh->strategy && (o->trace || sh->csv))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: --trace and --csv report on emulated "
                                             "devices: add --strategy", cmd);
    if (!sh->strategy && (sh->devices || sh->pp_layers || sh->micro_batches != 1 ||
                          sh->nodes || sh->devices_per_node || o->pace > 0))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: --devices, --pp-layers, --micro-batches, "
                                             "--nodes, --devices-per-node and --pace need "
                                             "--strategy", cmd);
    return cli_check_workload(sh);
}

static moemu_status_t parse(run_opts_t *o, bool check, int argc, char **argv, bool *help)
{
    *o = (run_opts_t){.check = check, .rtol = NAN};
    cli_shared_init(&o->sh);
    const char *cmd = check ? "moemu check" : "moemu run";
    int first;
    MOEMU_CHECK(cli_parse(cmd, argc, argv, run_options, &o->sh, o, help, &first));
    if (*help) return MOEMU_OK;
    MOEMU_CHECK(cli_no_operands(cmd, argc, argv, first));
    o->dry = o->math == 1;
    MOEMU_CHECK(check_combination(o, cmd));
    if (!o->sh.wl.batch && !o->sh.wl.lens && !o->sh.wl.tokens_file) o->sh.wl.batch = 4;
    o->sh.wl.seed = o->sh.seed;
    return MOEMU_OK;
}

static moemu_status_t dump_logits(const char *path, const model_out_t *out, const wl_t *wl,
                                  int V)
{
    st_write_tensor_t t = {.name = "logits", .ndim = 3,
                           .shape = {wl->batch, wl->max_len, V}, .data = out->prompt_logits};
    return st_write(path, &t, 1, ST_F32);
}

static double device_flops(const emu_dev_t *dev)
{
    double f = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) f += emu_dev_kernel_stats(dev, k)->flops;
    return f;
}

static double cluster_flops(emu_cluster_t *cl)
{
    double f = 0;
    for (int r = 0; r < emu_cluster_size(cl); r++) f += device_flops(emu_cluster_dev(cl, r));
    return f;
}

/* The strategy, the hardware and the cluster options from the flags. */
static moemu_status_t strategy_setup(runner_opts_t *d, const run_opts_t *o, const cfg_model_t *cfg)
{
    memset(d, 0, sizeof *d);
    MOEMU_CHECK(par_strategy_parse(o->sh.strategy, &d->strategy));
    if (o->sh.pp_layers) MOEMU_CHECK(par_strategy_set_pp_layers(&d->strategy, o->sh.pp_layers));
    par_dims_t dims;
    family_of(cfg)->dims(cfg, &dims);
    int world = par_strategy_world(&d->strategy);
    MOEMU_CHECK(par_strategy_validate(&d->strategy, &dims, o->sh.devices ? o->sh.devices : world));
    MOEMU_CHECK(cli_load_hw(&o->sh, world, &d->hw, NULL));
    d->micro_batches = o->sh.micro_batches;
    d->prec = cli_prec(&o->sh);
    d->cluster = (emu_cluster_opts_t){.no_limit = o->no_memory_limit, .pace = o->pace};
    return MOEMU_OK;
}

/* --baseline-strategy, valid for the model on its own devices. */
static moemu_status_t baseline_parse(const run_opts_t *o, const cfg_model_t *cfg,
                                     par_strategy_t *base)
{
    MOEMU_CHECK(par_strategy_parse(o->baseline, base));
    par_dims_t dims;
    family_of(cfg)->dims(cfg, &dims);
    return par_strategy_validate(base, &dims, 0);
}

/* What TP cannot split of the KV cache: MLA's latent serves every head,
 * so each rank of a TP group holds it whole (why DeepSeek runs attention
 * data-parallel); fewer key/value heads than TP ranks are replicated. */
static void print_kv_sharing(const cfg_model_t *c, const par_strategy_t *s)
{
    if (s->tp < 2) return;
    if (c->kv_lora_rank > 0)
        printf("kv cache the MLA latent, %d values a token and layer, held whole by each of the "
               "%d ranks of a TP group\n", c->kv_lora_rank + c->qk_rope_head_dim, s->tp);
    else if (c->num_key_value_heads < s->tp)
        printf("kv cache %d key/value heads over %d TP ranks: each held by %d ranks\n",
               c->num_key_value_heads, s->tp, s->tp / c->num_key_value_heads);
}

/* What the products of FP8 weights and the KV cache run in, where that is
 * not simply the model's dtype: a line, and the JSON's compute_dtype and
 * kv_dtype. */
static void print_precision(json_t *js, const cfg_model_t *cfg, const runner_opts_t *d)
{
    const char *dt = emu_dtype_name(cfg->dtype);
    bool fp8 = runner_fp8(cfg, d);
    if (fp8)
        printf("compute  products of the fp8 weights in fp8 at %.0f TFLOP/s dense, their inputs "
               "quantized per 1 x 128 (the values are not rounded)\n",
               d->hw.spec.peak_flops_fp8 / 1e12);
    else if (cfg->fp8_block_r > 0)
        printf("compute  products of the fp8 weights in %s (weight-only: widened first)%s\n", dt,
               d->hw.spec.peak_flops_fp8 > 0 ? "" : ", the card has no FP8 Tensor Cores");
    if (d->prec.kv_fp8)
        printf("kv cache fp8 e4m3, one byte a value (the values are not rounded)\n");
    json_object_set_new(js, "compute_dtype", json_string(fp8 ? "fp8" : dt));
    json_object_set_new(js, "kv_dtype", json_string(d->prec.kv_fp8 ? "fp8" : dt));
}

/* No strategy: one device of the --hw kind, no memory limit. */
static moemu_status_t one_device_setup(runner_opts_t *d, const run_opts_t *o)
{
    emu_hw_t hw;
    MOEMU_CHECK(cli_load_hw(&o->sh, 1, &hw, NULL));
    runner_opts_one_device(d, &hw, 1, 1);
    d->prec = cli_prec(&o->sh);
    return MOEMU_OK;
}

/* The one device's virtual figures, as the report would give them. */
static moemu_status_t print_one_device(const runner_opts_t *d, emu_cluster_t *cl,
                                       const cfg_model_t *cfg, const wl_t *wl,
                                       const model_out_t *out)
{
    report_t r;
    MOEMU_CHECK(report_build(&r, cl, out, cfg, wl, d, 0));
    char peak[32], cap[32];
    printf("one device of %s (virtual time): time to first token %.3f ms, end to end %.3f ms, "
           "peak memory %s (capacity %s, not enforced)\n", r.hw, 1e3 * r.ttft_batch,
           1e3 * r.e2e, emu_fmt_bytes(r.dev[0].mem_peak, peak),
           emu_fmt_bytes(r.dev[0].capacity, cap));
    report_free(&r);
    return MOEMU_OK;
}

static void print_summary(const char *label, const wl_t *wl, const model_out_t *out,
                          double flops, double wall)
{
    int64_t ptok = wl_prompt_tokens(wl), gtok = (int64_t)wl->batch * wl->decode;
    printf("%s: %lld tokens in, %lld out, %.3f s wall, %.1f tokens/s, %.1f GFLOP/s achieved "
           "(host, OpenBLAS %s kernels)\n",
           label, (long long)ptok, (long long)gtok, wall, (ptok + gtok) / wall,
           flops / wall / 1e9, emu_blas_core());
    if (out->dropped)
        printf("  routing: %lld of %lld expert assignments dropped by the capacity factor\n",
               (long long)out->dropped, (long long)out->assignments);
}

/* The process's peak resident memory so far, the weights' generation
 * included: a figure of the host, not of a device. */
static void print_host_memory(const wts_t *w)
{
    struct rusage u;
    if (getrusage(RUSAGE_SELF, &u) != 0) return;
    double peak = 1024.0 * (double)u.ru_maxrss; /* Linux counts KiB */
    printf("host     %.3f GB resident at most (the process's peak; the weights' matrices held "
           "in %s)\n", peak / 1e9, w->packed ? emu_dtype_name(w->cfg.dtype) : "fp32");
}

/* Print the comparison and add it to js. */
static void report_check(const check_result_t *r, const char *against, const wl_t *wl,
                         const model_out_t *base, const model_out_t *str, json_t *js)
{
    int N = wl->decode;
    if (against)
        printf("check against the baseline strategy %s (%lld logits compared)\n", against,
               (long long)r->compared);
    else
        printf("check against the single-device baseline (%lld logits compared)\n",
               (long long)r->compared);
    json_object_set_new(js, "baseline", json_string(against ? against : "one device"));
    printf("  logits max abs error   %.3e\n", r->max_abs);
    printf("  logits max rel error   %.3e  (relative to max(|baseline|, rms(baseline)))\n",
           r->max_rel);
    printf("  logits rel L2 error    %.3e  (tolerance %.1e)\n", r->rel_l2, r->rtol);
    if (r->first_seq < 0)
        printf("  greedy tokens          identical (%d sequences x %d)\n", wl->batch, N);
    else
        printf("  greedy tokens          differ: first at sequence %d, generated token %d "
               "(%d vs %d)\n", r->first_seq, r->first_token,
               base->generated[(size_t)r->first_seq * N + r->first_token],
               str->generated[(size_t)r->first_seq * N + r->first_token]);
    printf("  router decisions       %lld of %lld (token, layer) differ\n",
           (long long)r->route_differ, (long long)r->routed);
    printf("  dropped assignments    baseline %lld, strategy %lld (of %lld)\n",
           (long long)r->dropped_base, (long long)r->dropped_strategy,
           (long long)r->assignments);
    char verdict[160];
    printf("  verdict                %s\n", check_verdict(r, verdict, sizeof verdict));
    json_object_set_new(
        js, "check",
        json_pack("{s:I, s:f, s:f, s:f, s:f, s:b, s:i, s:i, s:I, s:I, s:I, s:I, s:b, s:s, "
                  "s:s?, s:i, s:i, s:i}",
                  "logits_compared", (json_int_t)r->compared, "max_abs_error", r->max_abs,
                  "max_rel_error", r->max_rel, "rel_l2_error", r->rel_l2, "rtol", r->rtol,
                  "tokens_identical", r->first_seq < 0, "first_diff_sequence", r->first_seq,
                  "first_diff_token", r->first_token, "router_decisions_differ",
                  (json_int_t)r->route_differ, "tokens_routed", (json_int_t)r->routed,
                  "dropped_baseline", (json_int_t)r->dropped_base, "dropped_strategy",
                  (json_int_t)r->dropped_strategy, "pass", r->pass, "verdict", verdict,
                  "nonfinite_side", r->bad_side, "nonfinite_sequence", r->bad_seq,
                  "nonfinite_prompt_position", r->bad_pos, "nonfinite_generated_token",
                  r->bad_token));
}

static json_t *generated_json(const wl_t *wl, const model_out_t *out)
{
    json_t *gen = json_array();
    for (int b = 0; b < wl->batch; b++) {
        json_t *seq = json_array();
        for (int i = 0; i < wl->decode; i++)
            json_array_append_new(seq, json_integer(out->generated[(int64_t)b * wl->decode + i]));
        json_array_append_new(gen, seq);
    }
    return gen;
}

static moemu_status_t fill_trace(FILE *f, const void *cl)
{
    return emu_trace_dump(cl, f, "moemu");
}

/* Report, trace and CSV of a run on emulated devices. */
static moemu_status_t finish_report(const run_opts_t *o, emu_cluster_t *cl, const model_out_t *out,
                                    const wts_t *w, const wl_t *wl, const runner_opts_t *dopt,
                                    int *record, emu_cluster_t *base, json_t *js)
{
    /* the one-device reference: check's baseline when there is one */
    double t1 = base ? emu_dev_clock(emu_cluster_dev(base, 0)) : 0;
    if (!base) MOEMU_CHECK(report_one_device(&t1, w, wl, dopt, record, o->dump_logits != NULL));
    report_t r;
    MOEMU_CHECK(report_build(&r, cl, out, &w->cfg, wl, dopt, t1));
    report_print(&r, stdout);
    json_object_set_new(js, "report", report_json(&r));
    moemu_status_t st = MOEMU_OK;
    if (o->sh.csv) st = report_csv(&r, o->sh.csv);
    report_free(&r);
    if (st == MOEMU_OK && o->trace) st = outfile_write(o->trace, fill_trace, cl);
    if (st == MOEMU_OK && o->record_routing)
        st = route_save(o->record_routing, record, w->cfg.num_hidden_layers, wl->batch,
                        runner_route_positions(wl), w->cfg.num_experts_per_tok);
    return st;
}

/* What the run will take of the host, checked before any of it is taken:
 * the weights, the routing records, and the runs' devices and outputs
 * (check runs the one-device baseline too). */
/* Add to boxes (NULL: nothing yet) what this process's devices of s read. */
static void add_boxes(const wts_t *lay, const par_strategy_t *s, wts_box_t *boxes,
                      wts_box_t *tmp, int *ranks)
{
    int lo, hi;
    par_proc_devices(par_strategy_world(s), par_proc_rank(), &lo, &hi);
    if (hi <= lo) return;
    for (int r = lo; r < hi; r++) ranks[r - lo] = r;
    wts_boxes_for(lay, s, ranks, hi - lo, tmp);
    for (int i = 0; i < lay->n_list; i++) wts_box_union(&boxes[i], &tmp[i]);
}

/* Under mpirun, the parts of the weights this process's devices read, as
 * the strategy and the baseline place them; *out NULL: the whole model
 * (one process, or process 0 running the one-device baseline or dumping
 * the weights). */
static moemu_status_t local_boxes(const run_opts_t *o, const cfg_model_t *cfg,
                                  const runner_opts_t *d, const par_strategy_t *base,
                                  wts_box_t **out)
{
    *out = NULL;
    bool all_here = (o->check && !base) || o->dump_weights;
    if (par_proc_count() == 1 || (all_here && par_proc_rank() == 0)) return MOEMU_OK;
    wts_t lay;
    MOEMU_CHECK(wts_address_only(&lay, cfg));
    int world = par_strategy_world(&d->strategy);
    int bw = base ? par_strategy_world(base) : 1;
    wts_box_t *boxes = calloc((size_t)lay.n_list + 1, sizeof *boxes);
    wts_box_t *tmp = calloc((size_t)lay.n_list + 1, sizeof *tmp);
    int *ranks = malloc(sizeof(int) * (size_t)(world > bw ? world : bw));
    moemu_status_t st = MOEMU_OK;
    if (!boxes || !tmp || !ranks) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the weights' boxes");
    } else {
        add_boxes(&lay, &d->strategy, boxes, tmp, ranks);
        if (base) add_boxes(&lay, base, boxes, tmp, ranks);
    }
    free(tmp);
    free(ranks);
    wts_free(&lay);
    if (st != MOEMU_OK) free(boxes);
    else *out = boxes;
    return st;
}

/* Host bytes of the weights' boxes, generated or loaded from checkpoint
 * (the packed tensors in 2 bytes, wts_layout_of). */
static double boxes_bytes(const cfg_model_t *cfg, const wts_box_t *boxes, const char *checkpoint)
{
    wts_t lay;
    if (wts_layout_of(&lay, cfg, checkpoint) != MOEMU_OK) return wts_host_bytes(cfg, checkpoint);
    double n = 0;
    for (int i = 0; i < lay.n_list; i++)
        n += (lay.list[i].packed ? 2.0 : 4.0) * (double)wts_box_elems(&boxes[i]);
    wts_free(&lay);
    return n;
}

static moemu_status_t preflight(const run_opts_t *o, const cfg_model_t *cfg, const wl_t *wl,
                                const runner_opts_t *d, const wts_box_t *boxes)
{
    emu_need_t need = {.hint = o->dry ? NULL : "; a dry run (--math skip) holds no weights"};
    const char *ck = o->sh.weights;
    double w = o->dry ? 0 : boxes ? boxes_bytes(cfg, boxes, ck) : wts_host_bytes(cfg, ck),
           rec = 4.0 * cfg->num_hidden_layers *
        wl->batch * runner_route_positions(wl) * cfg->num_experts_per_tok;
    emu_need_add(&need, "weights", w, w);
    double widen = o->dry ? 0 : wts_widen_bytes(cfg, ck);
    emu_need_add(&need, "weight widening", widen, widen);
    int records = o->check ? 3 : o->sh.strategy && (!o->dry || o->record_routing) ? 1 : 0;
    emu_need_add(&need, "routing records", records * rec, records * rec);
    if (o->check) {
        MOEMU_CHECK(check_host_need(&need, cfg, wl, d));
        return emu_need_check(&need, NULL, "moemu check");
    }
    model_opts_t mo = {.prompt_logits = o->dump_logits != NULL};
    MOEMU_CHECK(runner_host_need(&need, cfg, wl, d, &mo));
    if (o->sh.strategy) /* the report's one-device reference */
        MOEMU_CHECK(report_one_device_need(&need, cfg, wl, d, mo.prompt_logits));
    return emu_need_check(&need, NULL, "moemu run");
}

static int run(const run_opts_t *o)
{
    cfg_model_t cfg;
    wl_t wl = {0};
    wts_t w = {0};
    model_out_t out = {0};
    check_t chk = {0};
    emu_cluster_t *cl = NULL;
    route_src_t src = {0};
    int *record = NULL;
    json_t *js = json_object();
    runner_opts_t dopt;
    par_strategy_t base;
    wts_box_t *boxes = NULL;
    int rc = CLI_EXIT_ERROR;
    moemu_status_t st = cli_load_model(&cfg, &o->sh);
    /* the strategy and its devices before the workload's tokens */
    if (st == MOEMU_OK)
        st = o->sh.strategy ? strategy_setup(&dopt, o, &cfg) : one_device_setup(&dopt, o);
    if (st == MOEMU_OK) st = runner_check_devices(par_strategy_world(&dopt.strategy));
    if (st == MOEMU_OK) st = cli_flag_names(wl_make(&wl, &o->sh.wl, &cfg), run_options);
    if (st == MOEMU_OK && o->dry) {
        st = route_open(&src, o->sh.routing ? o->sh.routing : "uniform", &cfg, &wl, o->sh.seed);
        st = cli_flag_names(st, run_options);
        dopt.dry = true;
        dopt.routing = &src;
        dopt.cluster.nodata = true;
    }
    if (st == MOEMU_OK && o->sh.strategy) dopt.cluster.trace = o->trace != NULL;
    if (st == MOEMU_OK && o->baseline) st = baseline_parse(o, &cfg, &base);
    if (st == MOEMU_OK && !o->dry) st = local_boxes(o, &cfg, &dopt, o->baseline ? &base : NULL,
                                                    &boxes);
    if (st == MOEMU_OK) st = preflight(o, &cfg, &wl, &dopt, boxes);
    if (st == MOEMU_OK)
        st = o->dry      ? wts_address_only(&w, &cfg)
             : o->sh.weights ? wts_load_boxes(&w, &cfg, o->sh.weights, boxes)
                          : wts_generate_boxes(&w, &cfg, o->sh.seed, boxes);
    free(boxes);
    if (st == MOEMU_OK && o->dump_weights) st = wts_dump(&w, o->dump_weights, o->shard_bytes);
    if (st != MOEMU_OK) goto fail;

    cfg_figures_t fig;
    family_of(&cfg)->figures(&cfg, &fig);
    int min_len = wl.max_len;
    for (int b = 0; b < wl.batch; b++) min_len = wl.len[b] < min_len ? wl.len[b] : min_len;
    printf("model    %s: %.4g parameters (%.4g active per token), %s", cfg.name,
           (double)fig.total, (double)fig.active_per_token, emu_dtype_name(cfg.dtype));
    if (cfg.fp8_block_r > 0)
        printf(", weights in fp8 e4m3 with a scale per %d x %d block", cfg.fp8_block_r,
               cfg.fp8_block_c);
    printf("\n");
    printf("workload batch %d, prompts of %d..%d tokens (%lld in all), %d generated per "
           "sequence\n", wl.batch, min_len, wl.max_len, (long long)wl_prompt_tokens(&wl), wl.decode);
    print_precision(js, &cfg, &dopt);
    json_object_set_new(js, "model", json_string(cfg.name));
    json_object_set_new(js, "weight_dtype",
                        json_string(cfg.fp8_block_r > 0 ? "fp8" : emu_dtype_name(cfg.dtype)));
    if (o->sh.strategy) {
        char canon[PAR_STRATEGY_STRLEN];
        par_strategy_format(&dopt.strategy, canon, sizeof canon);
        const emu_stack_t *sk = &dopt.hw.spec.stack;
        char stack[160];
        cli_stack_text(sk, stack, sizeof stack);
        for (int i = 0; emu_stack_key(i); i++)
            json_object_set_new(js, emu_stack_key(i), json_string(emu_stack_name(sk, emu_stack_key(i))));
        printf("strategy %s on %d devices of %s, %d micro-batch%s per replica%s%s%s\n",
               canon, par_strategy_world(&dopt.strategy), dopt.hw.name, dopt.micro_batches,
               dopt.micro_batches == 1 ? "" : "es",
               dopt.prec.dispatch_fp8 ? ", MoE dispatch counted in fp8" : "", stack,
               o->dry ? ", dry run (--math skip)" : "");
        json_object_set_new(js, "strategy", json_string(canon));
        json_object_set_new(js, "dispatch_dtype", json_string(dopt.prec.dispatch_fp8
                                                                  ? "fp8"
                                                                  : emu_dtype_name(cfg.dtype)));
        print_kv_sharing(&cfg, &dopt.strategy);
    }

    const model_out_t *shown = &out;
    if (o->check) {
        st = check_run_against(&chk, &w, &wl, &dopt, o->baseline ? &base : NULL, o->rtol,
                                   cli_progress);
        cli_progress_done();
        if (st != MOEMU_OK) goto fail;
        print_summary("baseline", &wl, &chk.base, cluster_flops(chk.base_cluster), chk.wall_base);
        cl = chk.cluster;
        shown = &chk.strategy;
        print_summary("strategy", &wl, &chk.strategy, cluster_flops(cl), chk.wall_strategy);
        record = chk.route_strategy;
    } else if (o->sh.strategy) {
        size_t n;
        /* the report's one-device reference replays it; a dry run's
         * reference routes from the same source instead */
        if ((!o->dry || o->record_routing) && !(record = route_record_new(&cfg, &wl, &n))) {
            st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing record (%.2f GB)",
                            4e-9 * (double)n);
            goto fail;
        }
        model_opts_t mo = {.prompt_logits = o->dump_logits != NULL, .route = record,
                           .progress = cli_progress};
        double t0 = emu_host_seconds();
        st = runner_generate(&out, &cl, &w, &wl, &dopt, &mo);
        double wall = emu_host_seconds() - t0;
        cli_progress_done();
        if (st != MOEMU_OK) goto fail;
        if (!o->dry) print_summary("strategy", &wl, &out, cluster_flops(cl), wall);
        else printf("dry run: %.3f s wall\n", wall);
    } else {
        size_t n;
        if (o->record_routing && !(record = route_record_new(&cfg, &wl, &n))) {
            st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing record (%.2f GB)",
                            4e-9 * (double)n);
            goto fail;
        }
        model_opts_t mo = {.prompt_logits = o->dump_logits != NULL, .route = record,
                           .progress = cli_progress};
        st = runner_generate(&out, &cl, &w, &wl, &dopt, &mo);
        cli_progress_done();
        if (st != MOEMU_OK) goto fail;
        if (wl.decode > 1)
            printf("prefill  %lld tokens in %.3f s; decode %lld tokens in %.3f s\n",
                   (long long)wl_prompt_tokens(&wl), out.wall_prefill,
                   (long long)wl.batch * (wl.decode - 1), out.wall_decode);
        print_summary("total   ", &wl, &out, cluster_flops(cl), out.wall_prefill + out.wall_decode);
        if ((st = print_one_device(&dopt, cl, &cfg, &wl, &out)) != MOEMU_OK) goto fail;
        if (o->record_routing &&
            (st = route_save(o->record_routing, record, cfg.num_hidden_layers, wl.batch,
                             runner_route_positions(&wl), cfg.num_experts_per_tok)) != MOEMU_OK)
            goto fail;
    }
    if (!o->dry) json_object_set_new(js, "generated", generated_json(&wl, shown));
    if (!o->dry) print_host_memory(&w);
    rc = CLI_EXIT_OK;
    if (o->check) {
        char canon[PAR_STRATEGY_STRLEN];
        if (o->baseline) par_strategy_format(&base, canon, sizeof canon);
        report_check(&chk.r, o->baseline ? canon : NULL, &wl, &chk.base, &chk.strategy, js);
        if (!chk.r.pass) rc = CLI_EXIT_MISMATCH;
    }
    if (o->sh.strategy && (st = finish_report(o, cl, shown, &w, &wl, &dopt, record,
                                           o->check && !o->baseline ? chk.base_cluster : NULL,
                                           js)) != MOEMU_OK)
        goto fail;
    if (o->dump_logits && (st = dump_logits(o->dump_logits, shown, &wl, cfg.vocab_size)) != MOEMU_OK)
        goto fail;
    if (o->sh.json && (st = outfile_json(o->sh.json, js)) != MOEMU_OK) goto fail;
    goto done;
fail:
    rc = cli_error();
done:
    json_decref(js);
    if (o->check) check_free(&chk);
    else {
        emu_cluster_destroy(cl);
        free(record);
    }
    route_close(&src);
    model_out_free(&out);
    wts_free(&w);
    wl_free(&wl);
    return rc;
}

/* Every output path checked before any work. */
static moemu_status_t check_outputs(const run_opts_t *o)
{
    const outfile_arg_t outs[] = {
        {.flag = "--trace", .path = o->trace},
        {.flag = "--dump-logits", .path = o->dump_logits},
        {.flag = "--dump-weights", .path = o->dump_weights, .dir = true},
        {.flag = "--record-routing", .path = o->record_routing}};
    return cli_outputs_check(&o->sh, outs, (int)(sizeof outs / sizeof outs[0]), NULL);
}

static int main_of(bool check, int argc, char **argv)
{
    run_opts_t o;
    bool help = false;
    if (parse(&o, check, argc, argv, &help) != MOEMU_OK) return cli_error();
    if (help) {
        fputs(check ? check_help : run_help, stdout);
        cli_help(stdout, run_options);
        return CLI_EXIT_OK;
    }
    if (check_outputs(&o) != MOEMU_OK) return cli_error();
    /* the outputs appear together when the run ends, or none */
    outfile_begin();
    return cli_outputs_end(run(&o));
}

int cli_run_main(int argc, char **argv) { return main_of(false, argc, argv); }

int cli_check_main(int argc, char **argv) { return main_of(true, argc, argv); }
