/* moemu sweep: every valid strategy on a device count, run dry, ranked,
 * with the Pareto front of TTFT against throughput per device. */
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"
#include "engine/tools/sweep.h"

#define SWEEP_DEFAULT_HW "card-400tf-64gb"
#define SWEEP_DEFAULT_TOP 20
#define SWEEP_PROGRESS_EVERY 50 /* a progress line every so many candidates, off a tty */

static const char sweep_help[] =
    "usage: moemu sweep --devices N [OPTIONS]\n"
    "\n"
    "Enumerate every valid parallel strategy on exactly N devices (PP, DP, CP,\n"
    "TP, SP, EP, ETP, even and uneven stage splits) and, for PP > 1, the\n"
    "micro-batch counts; run each as a dry run (virtual time, no math); drop\n"
    "those that do not fit in memory or miss the constraints; print the best\n"
    "by the objective with the Pareto front of TTFT (lower) against throughput\n"
    "per device (higher) marked *. Progress goes to stderr. docs/sweep.md\n"
    "defines the enumeration, the defaults and every column.\n"
    "\n"
    "model and devices:\n"
    "  --model NAME|FILE      built-in model (tiny, moe-10b-plan, moe-30b-plan)\n"
    "                         or a Hugging Face config.json (default moe-10b-plan)\n"
    "  --hw NAME|FILE         hardware preset or JSON file (default\n"
    "                         " SWEEP_DEFAULT_HW "; `moemu hw` lists them)\n"
    "  --devices N            devices every strategy uses (required)\n"
    "  --nodes K              nodes (default: as many as the devices need)\n"
    "  --devices-per-node D   override the preset's devices per node\n"
    "workload (as in moemu run):\n"
    "  --batch B              sequences (default 4, or as many as --prompt-lens give)\n"
    "  --prompt-len L         every prompt L tokens (default 128)\n"
    "  --prompt-lens a,b,...  one length per sequence\n"
    "  --prompt-len-range MIN:MAX\n"
    "                         lengths drawn uniformly (seeded)\n"
    "  --decode N             tokens generated per sequence (default 16)\n"
    "  --seed N               seed of the prompt lengths and the routing (default 0)\n"
    "  --routing SPEC         the dry runs' router: uniform (default), zipf:S, or\n"
    "                         replay:FILE from moemu run --record-routing\n"
    "constraints and ranking:\n"
    "  --ttft-max S           drop candidates whose TTFT of the batch is over S seconds\n"
    "  --memory-headroom F    drop candidates whose memory peak is over (1 - F) x the\n"
    "                         capacity, F in [0, 1) (default 0)\n"
    "  --objective O          throughput (tokens/ms per device, highest first; the\n"
    "                         default), ttft (lowest first) or latency (end to end,\n"
    "                         lowest first)\n"
    "what is enumerated (the defaults keep a sweep of moe-10b-plan on 16 devices,\n"
    "batch 128 x 1024 tokens, under 5 minutes on 2 cores; docs/sweep.md says\n"
    "why each one loses nothing that could win):\n"
    "  --max-pp N, --max-dp N, --max-cp N, --max-tp N, --max-ep N\n"
    "                         largest degree of each (default: no limit)\n"
    "  --max-etp N            largest ETP (default 2; 0: no limit)\n"
    "  --sp auto|both|on|off  auto: SP on whenever TP > 1 (the default; SP is never\n"
    "                         slower or larger in moemu's cost model); both: off\n"
    "                         and on; on: SP strategies only; off: never\n"
    "  --uneven auto|on|off   the uneven stage split (the last stage, which holds\n"
    "                         lm_head, one layer lighter, when PP divides the\n"
    "                         layers); auto: tried when lm_head weighs more than\n"
    "                         a layer (default)\n"
    "  --micro-batches pp|pow2|a,b,...\n"
    "                         micro-batch counts tried when PP > 1: pp: 1, PP and\n"
    "                         2*PP (the default); pow2: 1, 2, 4, ...; or a list\n"
    "                         (1 is always tried); counts over the sequences of\n"
    "                         a DP replica are left out\n"
    "  --jobs N               candidates run at a time, each in its own worker\n"
    "                         process (default: the host's cores)\n"
    "outputs:\n"
    "  --top K                rows in the table (default 20; 0: every kept one)\n"
    "  --csv FILE             every candidate, one row each\n"
    "  --json FILE            the same as JSON, with the sweep's settings\n"
    "  --plot FILE.svg|FILE.png\n"
    "                         TTFT against throughput per device of every candidate,\n"
    "                         the Pareto front highlighted (needs gnuplot: Debian's\n"
    "                         gnuplot-nox)\n"
    "  --help                 this text\n";

typedef struct {
    const char *model, *hw, *routing, *csv, *json, *plot;
    int devices, nodes, devices_per_node, top, jobs;
    uint64_t seed;
    wl_opts_t wl;
    double ttft_max, headroom;
    sweep_objective_t objective;
    par_enum_opts_t en;
    sweep_uneven_t uneven;
    sweep_mb_t mb;
    int mb_list[32], n_mb; /* --micro-batches a,b,c */
} sweep_cli_t;

enum {
    OPT_MODEL = 256, OPT_HW, OPT_DEVICES, OPT_NODES, OPT_DPN, OPT_BATCH, OPT_PROMPT_LEN,
    OPT_PROMPT_LENS, OPT_PROMPT_RANGE, OPT_DECODE, OPT_SEED, OPT_ROUTING, OPT_TTFT_MAX,
    OPT_HEADROOM, OPT_OBJECTIVE, OPT_MAX_PP, OPT_MAX_DP, OPT_MAX_CP, OPT_MAX_TP, OPT_MAX_EP,
    OPT_MAX_ETP, OPT_SP, OPT_UNEVEN, OPT_MICRO, OPT_JOBS, OPT_TOP, OPT_CSV, OPT_JSON, OPT_PLOT, OPT_HELP
};

static const struct option sweep_options[] = {
    {"model", required_argument, NULL, OPT_MODEL},
    {"hw", required_argument, NULL, OPT_HW},
    {"devices", required_argument, NULL, OPT_DEVICES},
    {"nodes", required_argument, NULL, OPT_NODES},
    {"devices-per-node", required_argument, NULL, OPT_DPN},
    {"batch", required_argument, NULL, OPT_BATCH},
    {"prompt-len", required_argument, NULL, OPT_PROMPT_LEN},
    {"prompt-lens", required_argument, NULL, OPT_PROMPT_LENS},
    {"prompt-len-range", required_argument, NULL, OPT_PROMPT_RANGE},
    {"decode", required_argument, NULL, OPT_DECODE},
    {"seed", required_argument, NULL, OPT_SEED},
    {"routing", required_argument, NULL, OPT_ROUTING},
    {"ttft-max", required_argument, NULL, OPT_TTFT_MAX},
    {"memory-headroom", required_argument, NULL, OPT_HEADROOM},
    {"objective", required_argument, NULL, OPT_OBJECTIVE},
    {"max-pp", required_argument, NULL, OPT_MAX_PP},
    {"max-dp", required_argument, NULL, OPT_MAX_DP},
    {"max-cp", required_argument, NULL, OPT_MAX_CP},
    {"max-tp", required_argument, NULL, OPT_MAX_TP},
    {"max-ep", required_argument, NULL, OPT_MAX_EP},
    {"max-etp", required_argument, NULL, OPT_MAX_ETP},
    {"sp", required_argument, NULL, OPT_SP},
    {"uneven", required_argument, NULL, OPT_UNEVEN},
    {"micro-batches", required_argument, NULL, OPT_MICRO},
    {"jobs", required_argument, NULL, OPT_JOBS},
    {"top", required_argument, NULL, OPT_TOP},
    {"csv", required_argument, NULL, OPT_CSV},
    {"json", required_argument, NULL, OPT_JSON},
    {"plot", required_argument, NULL, OPT_PLOT},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static moemu_status_t parse_number(const char *flag, const char *s, double lo, double hi,
                                   bool hi_open, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || !isfinite(v) || v < lo || v > hi || (hi_open && v >= hi))
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a number in [%g, %g%c", flag, s,
                          lo, hi, hi_open ? ')' : ']');
    *out = v;
    return MOEMU_OK;
}

static moemu_status_t parse_micro(sweep_cli_t *o, const char *s)
{
    o->n_mb = 0;
    if (strcmp(s, "pow2") == 0 || strcmp(s, "pp") == 0) {
        o->mb = s[1] == 'o' ? SWEEP_MB_POW2 : SWEEP_MB_PP;
        return MOEMU_OK;
    }
    o->mb = SWEEP_MB_LIST;
    for (const char *p = s;;) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char num[32];
        if (n == 0 || n >= sizeof num || o->n_mb == 32)
            return moemu_fail(MOEMU_ERR_INVALID, "--micro-batches '%s': expected pp, pow2 or up "
                                                 "to 32 whole numbers joined by ','", s);
        memcpy(num, p, n);
        num[n] = '\0';
        MOEMU_CHECK(cli_parse_int("--micro-batches", num, 1, 1 << 20, &o->mb_list[o->n_mb]));
        o->n_mb++;
        if (!e) return MOEMU_OK;
        p = e + 1;
    }
}

static moemu_status_t parse(sweep_cli_t *o, int argc, char **argv, bool *help)
{
    *o = (sweep_cli_t){.model = "moe-10b-plan", .hw = SWEEP_DEFAULT_HW, .wl = {.decode = 16},
                       .top = SWEEP_DEFAULT_TOP,
                       .en = {.max_etp = 2, .sp = PAR_ENUM_SP_WITH_TP},
                       .mb = SWEEP_MB_PP};
    bool batch_set = false;
    opterr = 0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "", sweep_options, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: o->model = optarg; break;
        case OPT_HW: o->hw = optarg; break;
        case OPT_DEVICES:
            MOEMU_CHECK(cli_parse_int("--devices", optarg, 1, 1 << 20, &o->devices));
            break;
        case OPT_NODES:
            MOEMU_CHECK(cli_parse_int("--nodes", optarg, 1, 1 << 20, &o->nodes));
            break;
        case OPT_DPN:
            MOEMU_CHECK(
                cli_parse_int("--devices-per-node", optarg, 1, 1 << 20, &o->devices_per_node));
            break;
        case OPT_BATCH:
            MOEMU_CHECK(cli_parse_int("--batch", optarg, 1, 1 << 20, &o->wl.batch));
            batch_set = true;
            break;
        case OPT_PROMPT_LEN:
            MOEMU_CHECK(cli_parse_int("--prompt-len", optarg, 1, 1 << 24, &o->wl.prompt_len));
            break;
        case OPT_PROMPT_LENS: o->wl.lens = optarg; break;
        case OPT_PROMPT_RANGE: o->wl.range = optarg; break;
        case OPT_DECODE:
            MOEMU_CHECK(cli_parse_int("--decode", optarg, 0, 1 << 20, &o->wl.decode));
            break;
        case OPT_SEED: MOEMU_CHECK(cli_parse_u64("--seed", optarg, &o->seed)); break;
        case OPT_ROUTING: o->routing = optarg; break;
        case OPT_TTFT_MAX:
            MOEMU_CHECK(parse_number("--ttft-max", optarg, 0, 1e9, false, &o->ttft_max));
            break;
        case OPT_HEADROOM:
            MOEMU_CHECK(parse_number("--memory-headroom", optarg, 0, 1, true, &o->headroom));
            break;
        case OPT_OBJECTIVE:
            MOEMU_CHECK(cli_flag_names(sweep_objective_parse(optarg, &o->objective),
                                       (const cli_field_t[]){{"objective", "--objective"}, {0}}));
            break;
        case OPT_MAX_PP:
            MOEMU_CHECK(cli_parse_int("--max-pp", optarg, 0, PAR_MAX_DEGREE, &o->en.max_pp));
            break;
        case OPT_MAX_DP:
            MOEMU_CHECK(cli_parse_int("--max-dp", optarg, 0, PAR_MAX_DEGREE, &o->en.max_dp));
            break;
        case OPT_MAX_CP:
            MOEMU_CHECK(cli_parse_int("--max-cp", optarg, 0, PAR_MAX_DEGREE, &o->en.max_cp));
            break;
        case OPT_MAX_TP:
            MOEMU_CHECK(cli_parse_int("--max-tp", optarg, 0, PAR_MAX_DEGREE, &o->en.max_tp));
            break;
        case OPT_MAX_EP:
            MOEMU_CHECK(cli_parse_int("--max-ep", optarg, 0, PAR_MAX_DEGREE, &o->en.max_ep));
            break;
        case OPT_MAX_ETP:
            MOEMU_CHECK(cli_parse_int("--max-etp", optarg, 0, PAR_MAX_DEGREE, &o->en.max_etp));
            break;
        case OPT_SP:
            if (!strcmp(optarg, "auto")) o->en.sp = PAR_ENUM_SP_WITH_TP;
            else if (!strcmp(optarg, "both")) o->en.sp = PAR_ENUM_SP_BOTH;
            else if (!strcmp(optarg, "on")) o->en.sp = PAR_ENUM_SP_ON;
            else if (!strcmp(optarg, "off")) o->en.sp = PAR_ENUM_SP_OFF;
            else
                return moemu_fail(MOEMU_ERR_INVALID, "--sp '%s': expected auto, both, on or off",
                                  optarg);
            break;
        case OPT_UNEVEN:
            if (!strcmp(optarg, "auto")) o->uneven = SWEEP_UNEVEN_AUTO;
            else if (!strcmp(optarg, "on")) o->uneven = SWEEP_UNEVEN_ON;
            else if (!strcmp(optarg, "off")) o->uneven = SWEEP_UNEVEN_OFF;
            else
                return moemu_fail(MOEMU_ERR_INVALID, "--uneven '%s': expected auto, on or off",
                                  optarg);
            break;
        case OPT_MICRO: MOEMU_CHECK(parse_micro(o, optarg)); break;
        case OPT_JOBS:
            MOEMU_CHECK(cli_parse_int("--jobs", optarg, 1, 1024, &o->jobs));
            break;
        case OPT_TOP:
            MOEMU_CHECK(cli_parse_int("--top", optarg, 0, 1 << 30, &o->top));
            break;
        case OPT_CSV: o->csv = optarg; break;
        case OPT_JSON: o->json = optarg; break;
        case OPT_PLOT: o->plot = optarg; break;
        case OPT_HELP: *help = true; return MOEMU_OK;
        default:
            return moemu_fail(MOEMU_ERR_INVALID, "moemu sweep: unknown or incomplete option '%s' "
                                                 "(see moemu sweep --help)", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu sweep: unexpected argument '%s'",
                          argv[optind]);
    if (!o->devices)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu sweep: --devices is required (the device "
                                             "count every strategy uses, e.g. --devices 16)");
    if (!batch_set && !o->wl.lens) o->wl.batch = 4;
    o->wl.seed = o->seed;
    return MOEMU_OK;
}

/* ---- progress on stderr */

typedef struct {
    bool tty;
    double t0; /* host seconds */
    bool shown;
} progress_t;

static void progress(void *arg, int done, int total, const sweep_row_t *row)
{
    progress_t *p = arg;
    double t = emu_host_seconds() - p->t0;
    if (p->tty) {
        fprintf(stderr, "\rsweep %d/%d, %.0f s: %s x%d %-40s", done, total, t, row->name,
                row->micro_batches, row->fate == SWEEP_NO_FIT ? "(does not fit)" : "");
        fflush(stderr);
        p->shown = true;
    } else if (done % SWEEP_PROGRESS_EVERY == 0 || done == total) {
        fprintf(stderr, "sweep: %d of %d candidates run, %.0f s\n", done, total, t);
    }
}

static void progress_end(progress_t *p)
{
    if (p->shown) fprintf(stderr, "\r%100s\r", "");
    p->shown = false;
}

/* ---- the command */

/* The ranked table (the top rows of the kept; 0: all) and the counts. */
static void print_ranked(const sweep_t *s, int top, FILE *f)
{
    int shown = top > 0 && top < s->kept ? top : s->kept, w = 8;
    for (int i = 0; i < shown; i++) {
        char name[SWEEP_NAME_LEN + 16];
        snprintf(name, sizeof name, "%s x%d", s->rows[i].name, s->rows[i].micro_batches);
        w = (int)strlen(name) > w ? (int)strlen(name) : w;
    }
    if (shown > 0) {
        fprintf(f, "%4s  %-*s %10s %11s %10s %15s %7s %8s %7s  %s\n", "rank", w,
                "strategy", "TTFT ms", "tok/ms/dev", "e2e ms", "memory GB (%)", "comm %",
                "bubble %", "imbal.", "pareto");
        for (int i = 0; i < shown; i++) {
            const sweep_row_t *r = &s->rows[i];
            char name[SWEEP_NAME_LEN + 16], mem[48];
            snprintf(name, sizeof name, "%s x%d", r->name, r->micro_batches);
            snprintf(mem, sizeof mem, "%.2f (%.0f%%)", r->mem_peak / 1e9,
                     r->capacity > 0 ? 100 * r->mem_peak / r->capacity : 0);
            fprintf(f, "%4d  %-*s %10.3f %11.3f %10.3f %15s %7.1f %8.1f %7.2f  %s\n", r->rank, w,
                    name, 1e3 * r->ttft, r->tpms_dev, 1e3 * r->e2e, mem, 100 * r->comm_share,
                    100 * r->bubble, r->imbalance, r->pareto ? "*" : "");
        }
    }
    int front = 0;
    for (int i = 0; i < s->n_rows; i++) front += s->rows[i].pareto;
    fprintf(f, "%d valid strategies, %d candidates (strategy x micro-batches) run: %d do not "
               "fit in memory, %d miss the constraints, %d kept (%d on the Pareto front, *)\n",
            s->strategies, s->ran, s->no_fit, s->missed, s->kept, front);
    if (shown < s->kept)
        fprintf(f, "the top %d of %d by %s (x M: M micro-batches per replica); --top 0 shows "
                   "all, --csv and --json write every candidate\n",
                shown, s->kept, sweep_objective_name(s->objective));
    else if (s->kept > 0)
        fprintf(f, "ranked by %s (x M: M micro-batches per replica)\n",
                sweep_objective_name(s->objective));
    else
        fprintf(f, "no candidate fits and meets the constraints\n");
}


/* One worker process per host core (sysconf's count): measured on 2
 * cores, 2 workers run a sweep 1.46x as fast as one, 3 or 4 no faster. */
static int default_jobs(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n < 1024 ? (int)n : 1;
}

static json_t *settings_json(const sweep_cli_t *o, const cfg_model_t *cfg, const wl_t *wl,
                             const emu_hw_t *hw)
{
    static const char *const sp[] = {"both", "auto", "off", "on"};
    static const char *const uneven[] = {"auto", "on", "off"};
    json_t *lens = json_array(), *mb;
    for (int b = 0; b < wl->batch; b++) json_array_append_new(lens, json_integer(wl->len[b]));
    if (o->mb == SWEEP_MB_LIST) {
        mb = json_array();
        for (int i = 0; i < o->n_mb; i++) json_array_append_new(mb, json_integer(o->mb_list[i]));
    } else {
        mb = json_string(o->mb == SWEEP_MB_PP ? "pp" : "pow2");
    }
    const par_enum_opts_t *e = &o->en;
    return json_pack("{s:s, s:s, s:i, s:i, s:i, s:{s:i, s:o, s:i, s:I}, s:s, s:f, s:f, s:s, "
                     "s:{s:i, s:i, s:i, s:i, s:i, s:i, s:s, s:s, s:o}}",
                     "model", cfg->name, "hw", hw->name, "devices", o->devices, "nodes",
                     hw->topo.nodes, "devices_per_node", hw->topo.devices_per_node, "workload",
                     "batch", wl->batch, "prompt_lens", lens, "decode", wl->decode, "seed",
                     (json_int_t)o->seed, "routing", o->routing ? o->routing : "uniform",
                     "ttft_max_s", o->ttft_max, "memory_headroom", o->headroom, "objective",
                     sweep_objective_name(o->objective), "enumeration", "max_pp", e->max_pp,
                     "max_dp", e->max_dp, "max_cp", e->max_cp, "max_tp", e->max_tp, "max_ep",
                     e->max_ep, "max_etp", e->max_etp, "sp", sp[e->sp], "uneven",
                     uneven[o->uneven], "micro_batches", mb);
}

static int run(const sweep_cli_t *o)
{
    cfg_model_t cfg;
    wl_t wl = {0};
    emu_hw_t hw;
    sweep_t sw = {0};
    int rc = CLI_EXIT_ERROR;
    moemu_status_t st = cfg_load(&cfg, o->model);
    if (st == MOEMU_OK) st = cli_flag_names(wl_make(&wl, &o->wl, &cfg), cli_workload_fields);
    if (st == MOEMU_OK)
        st = cli_load_hw(o->hw, o->nodes, o->devices_per_node, o->devices, &hw, NULL);
    if (st != MOEMU_OK) goto fail;
    /* a plot that cannot be drawn fails before the long part */
    if (o->plot && (st = cli_sweep_plot_check(o->plot)) != MOEMU_OK) goto fail;

    int min_len = wl.max_len;
    for (int b = 0; b < wl.batch; b++) min_len = wl.len[b] < min_len ? wl.len[b] : min_len;
    printf("sweep    %s on %d devices of %s (%d per node), dry runs\n", cfg.name, o->devices,
           hw.name, hw.topo.devices_per_node);
    printf("workload batch %d, prompts of %d..%d tokens (%lld in all), %d generated per "
           "sequence, routing %s\n", wl.batch, min_len, wl.max_len,
           (long long)wl_prompt_tokens(&wl), wl.decode, o->routing ? o->routing : "uniform");
    if (o->ttft_max > 0 || o->headroom > 0) {
        printf("limits  ");
        if (o->ttft_max > 0) printf(" TTFT <= %g s", o->ttft_max);
        if (o->headroom > 0) printf(" memory peak <= %g%% of capacity", 100 * (1 - o->headroom));
        printf("\n");
    }
    fflush(stdout);

    progress_t pr = {.tty = isatty(STDERR_FILENO), .t0 = emu_host_seconds()};
    sweep_opts_t so = {.enumerate = o->en, .ttft_max = o->ttft_max,
                       .memory_headroom = o->headroom, .objective = o->objective,
                       .routing = o->routing, .seed = o->seed, .progress = progress,
                       .progress_arg = &pr};
    int jobs = o->jobs ? o->jobs : default_jobs();
    if (jobs > 1) {
        so.exec = cli_sweep_workers;
        so.exec_arg = &jobs;
    }
    so.uneven = o->uneven;
    so.mb = o->mb;
    so.micro_batches = o->mb_list;
    so.n_micro_batches = o->n_mb;
    st = cli_flag_names(sweep_run(&sw, &cfg, &wl, &hw, o->devices, &so), cli_workload_fields);
    progress_end(&pr);
    if (st != MOEMU_OK) goto fail;
    fprintf(stderr, "sweep: %d candidates in %.1f s\n", sw.ran, emu_host_seconds() - pr.t0);

    printf("\n");
    print_ranked(&sw, o->top, stdout);
    if (o->csv && (st = sweep_csv(&sw, o->csv)) != MOEMU_OK) goto fail;
    if (o->json) {
        json_t *js = sweep_json(&sw);
        json_object_update_new(js, settings_json(o, &cfg, &wl, &hw));
        st = outfile_json(o->json, js);
        json_decref(js);
        if (st != MOEMU_OK) goto fail;
    }
    if (o->plot) {
        char title[512];
        snprintf(title, sizeof title, "moemu sweep: %s on %d x %s, batch %d", cfg.name,
                 o->devices, hw.name, wl.batch);
        if ((st = cli_sweep_plot(&sw, o->plot, title)) != MOEMU_OK) goto fail;
    }
    rc = CLI_EXIT_OK;
    goto done;
fail:
    rc = cli_error();
done:
    sweep_free(&sw);
    wl_free(&wl);
    return rc;
}

int cli_sweep_main(int argc, char **argv)
{
    sweep_cli_t o;
    bool help = false;
    if (parse(&o, argc, argv, &help) != MOEMU_OK) return cli_error();
    if (help) {
        fputs(sweep_help, stdout);
        return CLI_EXIT_OK;
    }
    return run(&o);
}
