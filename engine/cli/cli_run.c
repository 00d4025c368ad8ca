/* moemu run: build the model and the workload, prefill, decode greedily,
 * print a summary; optionally dump logits, weights and a JSON record. */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli/cli.h"
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
    "\n"
    "  --rtol X               tolerance of the relative L2 error (default 1e-5)\n";

static const char common_help[] =
    "model and weights:\n"
    "  --model NAME|FILE      built-in model (tiny, moe-10b-plan, moe-30b-plan)\n"
    "                         or a Hugging Face config.json (default moe-10b-plan)\n"
    "  --seed N               seed of generated weights, prompt lengths and\n"
    "                         prompt tokens (default 0)\n"
    "  --weights FILE         load weights from safetensors (Mixtral names)\n"
    "                         instead of generating them\n"
    "workload:\n"
    "  --batch B              sequences (default 4, or as many as --prompt-lens\n"
    "                         or --tokens give)\n"
    "  --prompt-len L         every prompt L tokens (default 128)\n"
    "  --prompt-lens a,b,...  one length per sequence\n"
    "  --prompt-len-range MIN:MAX\n"
    "                         lengths drawn uniformly (seeded)\n"
    "  --tokens FILE          prompts from a JSON list of lists of token ids\n"
    "  --decode N             tokens generated per sequence (default 16); the\n"
    "                         first comes from the prefill, then N-1 decode passes\n"
    "outputs:\n"
    "  --dump-logits FILE     safetensors with one F32 tensor `logits`\n"
    "                         [batch, max prompt length, vocab] of every prompt\n"
    "                         position (NaN past a shorter prompt's end)\n"
    "  --dump-weights FILE    write the weights (safetensors, Mixtral names,\n"
    "                         in the model's dtype)\n"
    "  --json FILE            the generated token ids and the summary\n"
    "emulated devices:\n"
    "  --strategy S           parallel strategy: e.g. dp2-tp2-ep4, EP8_TP2_PP1_DP1,\n"
    "                         'dp4 pp4 ep16 sp', or JSON {\"tp\":2,\"ep\":4}\n"
    "                         (docs/strategies.md)\n"
    "  --devices N            devices (default: PP*DP*CP*TP of the strategy)\n"
    "  --pp-layers a,b,...    layers per pipeline stage, an uneven split\n"
    "  --micro-batches M      micro-batches per DP replica (default 1)\n"
    "  --hw NAME|FILE         hardware preset or JSON file (default\n"
    "                         card-400tf-64gb; `moemu hw` lists them)\n"
    "  --nodes K              nodes (default: as many as the devices need)\n"
    "  --devices-per-node D   override the preset's devices per node\n"
    "  --no-memory-limit      lift the devices' memory capacity\n"
    "  --pace X               sleep so that wall time >= X x virtual time\n"
    "report (runs on emulated devices end with one; docs/report.md):\n"
    "  --math real|skip       skip: a dry run, the same schedule, collectives and\n"
    "                         costs without tensors (default real)\n"
    "  --routing SPEC         a dry run's router: uniform (default), zipf:S, or\n"
    "                         replay:FILE from --record-routing\n"
    "  --record-routing FILE  write the router's decisions (safetensors, I32)\n"
    "  --trace FILE           Chrome trace-event JSON of every device's virtual\n"
    "                         timeline (Perfetto, chrome://tracing)\n"
    "  --csv FILE             the report, one row per device\n"
    "  --help                 this text\n";

typedef struct {
    bool check;
    const char *model;
    const char *weights;
    uint64_t seed;
    wl_opts_t wl;
    const char *dump_logits, *dump_weights, *json;
    const char *strategy, *pp_layers, *hw;
    int devices, micro_batches, nodes, devices_per_node;
    bool no_memory_limit, dry;
    double pace, rtol;
    const char *routing, *record_routing, *trace, *csv;
} run_opts_t;

enum {
    OPT_MODEL = 256, OPT_SEED, OPT_WEIGHTS, OPT_BATCH, OPT_PROMPT_LEN, OPT_PROMPT_LENS,
    OPT_PROMPT_RANGE, OPT_TOKENS, OPT_DECODE, OPT_DUMP_LOGITS, OPT_DUMP_WEIGHTS, OPT_JSON,
    OPT_HELP, OPT_STRATEGY, OPT_DEVICES, OPT_PP_LAYERS, OPT_MICRO, OPT_HW, OPT_NODES, OPT_DPN,
    OPT_NO_LIMIT, OPT_PACE, OPT_RTOL, OPT_MATH, OPT_ROUTING, OPT_RECORD, OPT_TRACE, OPT_CSV
};

static const struct option run_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"seed", required_argument, NULL, OPT_SEED},
    {"weights", required_argument, NULL, OPT_WEIGHTS},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"prompt-len", required_argument, NULL, OPT_PROMPT_LEN},
    {"prompt-lens", required_argument, NULL, OPT_PROMPT_LENS},
    {"prompt-len-range", required_argument, NULL, OPT_PROMPT_RANGE},
    {"tokens", required_argument, NULL, OPT_TOKENS},
    {"decode", required_argument, NULL, OPT_DECODE},
    {"dump-logits", required_argument, NULL, OPT_DUMP_LOGITS},
    {"dump-weights", required_argument, NULL, OPT_DUMP_WEIGHTS},
    {"json", required_argument, NULL, OPT_JSON},
    {"help", no_argument, NULL, OPT_HELP},
    {"strategy", required_argument, NULL, OPT_STRATEGY},
    {"devices", required_argument, NULL, OPT_DEVICES},
    {"pp-layers", required_argument, NULL, OPT_PP_LAYERS},
    {"micro-batches", required_argument, NULL, OPT_MICRO},
    {"hw", required_argument, NULL, OPT_HW},
    {"nodes", required_argument, NULL, OPT_NODES},
    {"devices-per-node", required_argument, NULL, OPT_DPN},
    {"no-memory-limit", no_argument, NULL, OPT_NO_LIMIT},
    {"pace", required_argument, NULL, OPT_PACE},
    {"rtol", required_argument, NULL, OPT_RTOL},
    {"math", required_argument, NULL, OPT_MATH},
    {"routing", required_argument, NULL, OPT_ROUTING},
    {"record-routing", required_argument, NULL, OPT_RECORD},
    {"trace", required_argument, NULL, OPT_TRACE},
    {"csv", required_argument, NULL, OPT_CSV},
    {NULL, 0, NULL, 0},
};

static moemu_status_t parse_double(const char *flag, const char *s, double lo, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !(v >= lo) || !isfinite(v))
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a number >= %g", flag, s, lo);
    *out = v;
    return MOEMU_OK;
}

static moemu_status_t parse(run_opts_t *o, bool check, int argc, char **argv, bool *help)
{
    *o = (run_opts_t){.check = check, .model = "moe-10b-plan", .wl = {.decode = 16},
                      .hw = "card-400tf-64gb", .micro_batches = 1, .rtol = 1e-5};
    const char *cmd = check ? "moemu check" : "moemu run";
    bool batch_set = false;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", run_options, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model = optarg; break;
        case OPT_SEED: MOEMU_CHECK(cli_parse_u64("--seed", optarg, &o->seed)); break;
        case OPT_WEIGHTS: o->weights = optarg; break;
        case OPT_BATCH:
            MOEMU_CHECK(cli_parse_int("--batch", optarg, 1, 1 << 20, &o->wl.batch));
            batch_set = true;
            break;
        case OPT_PROMPT_LEN:
            MOEMU_CHECK(cli_parse_int("--prompt-len", optarg, 1, 1 << 24, &o->wl.prompt_len));
            break;
        case OPT_PROMPT_LENS: o->wl.lens = optarg; break;
        case OPT_PROMPT_RANGE: o->wl.range = optarg; break;
        case OPT_TOKENS: o->wl.tokens_file = optarg; break;
        case OPT_DECODE:
            MOEMU_CHECK(cli_parse_int("--decode", optarg, 0, 1 << 20, &o->wl.decode));
            break;
        case OPT_DUMP_LOGITS: o->dump_logits = optarg; break;
        case OPT_DUMP_WEIGHTS: o->dump_weights = optarg; break;
        case OPT_JSON: o->json = optarg; break;
        case OPT_HELP: *help = true; return MOEMU_OK;
        case OPT_STRATEGY: o->strategy = optarg; break;
        case OPT_PP_LAYERS: o->pp_layers = optarg; break;
        case OPT_HW: o->hw = optarg; break;
        case OPT_NO_LIMIT: o->no_memory_limit = true; break;
        case OPT_MATH:
            if (strcmp(optarg, "skip") && strcmp(optarg, "real"))
                return moemu_fail(MOEMU_ERR_INVALID, "--math '%s': expected real or skip", optarg);
            o->dry = strcmp(optarg, "skip") == 0;
            break;
        case OPT_ROUTING: o->routing = optarg; break;
        case OPT_RECORD: o->record_routing = optarg; break;
        case OPT_TRACE: o->trace = optarg; break;
        case OPT_CSV: o->csv = optarg; break;
        case OPT_PACE: MOEMU_CHECK(parse_double("--pace", optarg, 0.0, &o->pace)); break;
        case OPT_RTOL:
            if (!check)
                return moemu_fail(MOEMU_ERR_INVALID, "--rtol belongs to moemu check");
            MOEMU_CHECK(parse_double("--rtol", optarg, 0.0, &o->rtol));
            break;
        case OPT_DEVICES:
            MOEMU_CHECK(cli_parse_int("--devices", optarg, 1, 1 << 20, &o->devices));
            break;
        case OPT_MICRO:
            MOEMU_CHECK(cli_parse_int("--micro-batches", optarg, 1, 1 << 20, &o->micro_batches));
            break;
        case OPT_NODES:
            MOEMU_CHECK(cli_parse_int("--nodes", optarg, 1, 1 << 20, &o->nodes));
            break;
        case OPT_DPN:
            MOEMU_CHECK(
                cli_parse_int("--devices-per-node", optarg, 1, 1 << 20, &o->devices_per_node));
            break;
        default:
            return moemu_fail(MOEMU_ERR_INVALID, "%s: unknown or incomplete option '%s' "
                                                 "(see %s --help)", cmd, argv[optind - 1], cmd);
        }
    }
    if (optind < argc)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: unexpected argument '%s'", cmd, argv[optind]);
    if (check && !o->strategy)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu check: --strategy is required");
    if (check && o->dry)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu check compares real math: drop --math skip");
    if (o->routing && !o->dry)
        return moemu_fail(MOEMU_ERR_INVALID, "--routing chooses a dry run's router: add "
                                             "--math skip");
    if (o->dry && (o->weights || o->dump_weights || o->dump_logits))
        return moemu_fail(MOEMU_ERR_INVALID, "a dry run (--math skip) has no weights or "
                                             "logits: drop --weights, --dump-weights and "
                                             "--dump-logits");
    if (o->dry && !o->strategy) o->strategy = "tp1"; /* one emulated device */
    if (!o->strategy && (o->trace || o->csv))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: --trace and --csv report on emulated "
                                             "devices: add --strategy", cmd);
    if (!o->strategy && (o->devices || o->pp_layers || o->micro_batches != 1 || o->nodes ||
                         o->devices_per_node || o->pace > 0))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: --devices, --pp-layers, --micro-batches, "
                                             "--nodes, --devices-per-node and --pace need "
                                             "--strategy", cmd);
    if (!batch_set && !o->wl.lens && !o->wl.tokens_file) o->wl.batch = 4;
    o->wl.seed = o->seed;
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
static moemu_status_t dist_setup(dist_opts_t *d, const run_opts_t *o, const cfg_model_t *cfg)
{
    memset(d, 0, sizeof *d);
    MOEMU_CHECK(par_strategy_parse(o->strategy, &d->strategy));
    if (o->pp_layers) MOEMU_CHECK(par_strategy_set_pp_layers(&d->strategy, o->pp_layers));
    par_dims_t dims;
    dist_dims(cfg, &dims);
    int world = par_strategy_world(&d->strategy);
    MOEMU_CHECK(par_strategy_validate(&d->strategy, &dims, o->devices ? o->devices : world));
    MOEMU_CHECK(cli_load_hw(o->hw, o->nodes, o->devices_per_node, world, &d->hw, NULL));
    d->micro_batches = o->micro_batches;
    d->cluster = (emu_cluster_opts_t){.no_limit = o->no_memory_limit, .pace = o->pace};
    return MOEMU_OK;
}

static void print_summary(const char *label, const wl_t *wl, const model_out_t *out,
                          double flops, double wall)
{
    int64_t ptok = wl_prompt_tokens(wl), gtok = (int64_t)wl->batch * wl->decode;
    printf("%s: %lld tokens in, %lld out, %.3f s wall, %.1f tokens/s, %.1f GFLOP/s achieved\n",
           label, (long long)ptok, (long long)gtok, wall, (ptok + gtok) / wall,
           flops / wall / 1e9);
    if (out->dropped)
        printf("  routing: %lld of %lld expert assignments dropped by the capacity factor\n",
               (long long)out->dropped, (long long)out->assignments);
}

/* Print the comparison and add it to js. */
static void report_check(const check_result_t *r, const wl_t *wl, const model_out_t *base,
                         const model_out_t *str, json_t *js)
{
    int N = wl->decode;
    printf("check against the single-device baseline (%lld logits compared)\n",
           (long long)r->compared);
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
    printf("  verdict                %s\n", r->pass ? "PASS" : "FAIL");
    json_object_set_new(
        js, "check",
        json_pack("{s:I, s:f, s:f, s:f, s:f, s:b, s:i, s:i, s:I, s:I, s:I, s:I, s:b}",
                  "logits_compared", (json_int_t)r->compared, "max_abs_error", r->max_abs,
                  "max_rel_error", r->max_rel, "rel_l2_error", r->rel_l2, "rtol", r->rtol,
                  "tokens_identical", r->first_seq < 0, "first_diff_sequence", r->first_seq,
                  "first_diff_token", r->first_token, "router_decisions_differ",
                  (json_int_t)r->route_differ, "tokens_routed", (json_int_t)r->routed,
                  "dropped_baseline", (json_int_t)r->dropped_base, "dropped_strategy",
                  (json_int_t)r->dropped_strategy, "pass", r->pass));
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
                                    const wts_t *w, const wl_t *wl, const dist_opts_t *dopt,
                                    int *record, json_t *js)
{
    double t1 = 0;
    MOEMU_CHECK(report_one_device(&t1, w, wl, dopt, record));
    report_t r;
    MOEMU_CHECK(report_build(&r, cl, out, &w->cfg, wl, dopt, t1));
    report_print(&r, stdout);
    json_object_set_new(js, "report", report_json(&r));
    moemu_status_t st = MOEMU_OK;
    if (o->csv) st = report_csv(&r, o->csv);
    report_free(&r);
    if (st == MOEMU_OK && o->trace) st = outfile_write(o->trace, fill_trace, cl);
    if (st == MOEMU_OK && o->record_routing)
        st = route_save(o->record_routing, record, w->cfg.num_hidden_layers, wl->batch,
                        model_route_positions(wl), w->cfg.num_experts_per_tok);
    return st;
}

static int run(const run_opts_t *o)
{
    cfg_model_t cfg;
    wl_t wl = {0};
    wts_t w = {0};
    model_out_t out = {0};
    check_t chk = {0};
    emu_dev_t *dev = NULL;
    emu_cluster_t *cl = NULL;
    route_src_t src = {0};
    int *record = NULL;
    json_t *js = json_object();
    dist_opts_t dopt;
    int rc = CLI_EXIT_ERROR;
    moemu_status_t st = cfg_load(&cfg, o->model);
    if (st == MOEMU_OK) st = cli_flag_names(wl_make(&wl, &o->wl, &cfg), cli_workload_fields);
    if (st == MOEMU_OK && o->strategy) st = dist_setup(&dopt, o, &cfg);
    if (st == MOEMU_OK && o->dry) {
        st = route_open(&src, o->routing ? o->routing : "uniform", &cfg, &wl, o->seed);
        st = cli_flag_names(st, cli_workload_fields);
        dopt.dry = true;
        dopt.routing = &src;
        dopt.cluster.nodata = true;
    }
    if (st == MOEMU_OK && o->strategy) dopt.cluster.trace = o->trace != NULL;
    if (st == MOEMU_OK)
        st = o->dry      ? wts_address_only(&w, &cfg)
             : o->weights ? wts_load(&w, &cfg, o->weights)
                          : wts_generate_all(&w, &cfg, o->seed);
    if (st == MOEMU_OK && o->dump_weights) st = wts_dump(&w, o->dump_weights);
    if (st != MOEMU_OK) goto fail;

    cfg_figures_t fig;
    cfg_figures(&cfg, &fig);
    int min_len = wl.max_len;
    for (int b = 0; b < wl.batch; b++) min_len = wl.len[b] < min_len ? wl.len[b] : min_len;
    printf("model    %s: %.4g parameters (%.4g active per token), %s\n", cfg.name,
           (double)fig.total, (double)fig.active_per_token, emu_dtype_name(cfg.dtype));
    printf("workload batch %d, prompts of %d..%d tokens (%lld in all), %d generated per "
           "sequence\n", wl.batch, min_len, wl.max_len, (long long)wl_prompt_tokens(&wl), wl.decode);
    json_object_set_new(js, "model", json_string(cfg.name));
    if (o->strategy) {
        char canon[PAR_STRATEGY_STRLEN];
        par_strategy_format(&dopt.strategy, canon, sizeof canon);
        printf("strategy %s on %d devices of %s, %d micro-batch%s per replica%s\n", canon,
               par_strategy_world(&dopt.strategy), dopt.hw.name, dopt.micro_batches,
               dopt.micro_batches == 1 ? "" : "es", o->dry ? ", dry run (--math skip)" : "");
        json_object_set_new(js, "strategy", json_string(canon));
    }

    const model_out_t *shown = &out;
    if (o->check) {
        st = check_run(&chk, &w, &wl, &dopt, o->rtol, cli_progress);
        cli_progress_done();
        if (st != MOEMU_OK) goto fail;
        print_summary("baseline", &wl, &chk.base, chk.flops_base, chk.wall_base);
        cl = chk.cluster;
        shown = &chk.strategy;
        print_summary("strategy", &wl, &chk.strategy, cluster_flops(cl), chk.wall_strategy);
        record = chk.route_strategy;
    } else if (o->strategy) {
        size_t n;
        if (!(record = route_record_new(&cfg, &wl, &n))) {
            st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing record");
            goto fail;
        }
        model_opts_t mo = {.prompt_logits = o->dump_logits != NULL, .route = record,
                           .progress = cli_progress};
        double t0 = emu_host_seconds();
        st = dist_generate(&out, &cl, &w, &wl, &dopt, &mo);
        double wall = emu_host_seconds() - t0;
        cli_progress_done();
        if (st != MOEMU_OK) goto fail;
        if (!o->dry) print_summary("strategy", &wl, &out, cluster_flops(cl), wall);
        else printf("dry run: %.3f s wall\n", wall);
    } else {
        /* one device of no limits: its budgets do not matter here */
        emu_spec_t spec = {.peak_flops = 1e15, .mfu = 1, .mem_bw = 1e12, .bw_util = 1,
                           .mem_capacity = 1e15};
        size_t n;
        if (o->record_routing && !(record = route_record_new(&cfg, &wl, &n))) {
            st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing record");
            goto fail;
        }
        model_opts_t mo = {.prompt_logits = o->dump_logits != NULL, .route = record,
                           .progress = cli_progress};
        if ((st = emu_dev_create(&spec, 0, true, &dev)) != MOEMU_OK) goto fail;
        st = model_generate(&out, &w, &wl, dev, &mo);
        cli_progress_done();
        if (st != MOEMU_OK) goto fail;
        if (wl.decode > 1)
            printf("prefill  %lld tokens in %.3f s; decode %lld tokens in %.3f s\n",
                   (long long)wl_prompt_tokens(&wl), out.wall_prefill,
                   (long long)wl.batch * (wl.decode - 1), out.wall_decode);
        print_summary("total   ", &wl, &out, device_flops(dev), out.wall_prefill + out.wall_decode);
        if (o->record_routing &&
            (st = route_save(o->record_routing, record, cfg.num_hidden_layers, wl.batch,
                             model_route_positions(&wl), cfg.num_experts_per_tok)) != MOEMU_OK)
            goto fail;
    }
    if (!o->dry) json_object_set_new(js, "generated", generated_json(&wl, shown));
    rc = CLI_EXIT_OK;
    if (o->check) {
        report_check(&chk.r, &wl, &chk.base, &chk.strategy, js);
        if (!chk.r.pass) rc = CLI_EXIT_MISMATCH;
    }
    if (cl && (st = finish_report(o, cl, shown, &w, &wl, &dopt, record, js)) != MOEMU_OK)
        goto fail;
    if (o->dump_logits && (st = dump_logits(o->dump_logits, shown, &wl, cfg.vocab_size)) != MOEMU_OK)
        goto fail;
    if (o->json && (st = outfile_json(o->json, js)) != MOEMU_OK) goto fail;
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
    emu_dev_destroy(dev);
    wts_free(&w);
    wl_free(&wl);
    return rc;
}

static int main_of(bool check, int argc, char **argv)
{
    run_opts_t o;
    bool help = false;
    if (parse(&o, check, argc, argv, &help) != MOEMU_OK) return cli_error();
    if (help) {
        fputs(check ? check_help : run_help, stdout);
        fputs(common_help, stdout);
        return CLI_EXIT_OK;
    }
    return run(&o);
}

int cli_run_main(int argc, char **argv) { return main_of(false, argc, argv); }

int cli_check_main(int argc, char **argv) { return main_of(true, argc, argv); }
