/* moemu sweep: every valid strategy on a device count, run dry, ranked,
 * with the Pareto front of TTFT against throughput per device. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"
#include "engine/tools/sweep.h"

#define SWEEP_DEFAULT_TOP 20
/* candidates x devices: the reference sweep (moe-10b-plan on 16 devices,
 * batch 128, under 5 minutes) makes 7440; 2^20 lets moe-10b-plan on 512
 * devices run (870400) and refuses 1024 (1996800) in milliseconds */
#define SWEEP_DEFAULT_MAX_RUNS ((uint64_t)1 << 20)

static const char sweep_help[] =
    "usage: moemu sweep --devices N [OPTIONS]\n"
    "\n"
    "Enumerate every valid parallel strategy on exactly N devices (PP, DP, CP,\n"
    "TP, SP, EP, ETP, even and uneven stage splits) and, for PP > 1, the\n"
    "micro-batch counts; run each as a dry run (virtual time, no math); drop\n"
    "those that do not fit in memory or miss the constraints; print the best\n"
    "by the objective with the Pareto front of TTFT (lower) against throughput\n"
    "per device (higher) marked *. On a terminal, progress goes to stderr.\n"
    "docs/sweep.md defines the enumeration, the defaults and every column.\n"
    "\n";

typedef struct {
    cli_shared_t sh;
    const char *plot;
    int top, jobs;
    uint64_t max_runs;
    double ttft_max, headroom;
    sweep_objective_t objective;
    par_enum_opts_t en;
    sweep_uneven_t uneven;
    sweep_mb_t mb;
    int mb_list[32], n_mb; /* --micro-batches a,b,c */
} sweep_cli_t;

static moemu_status_t parse_objective(const char *s, void *o)
{
    return sweep_objective_parse(s, &((sweep_cli_t *)o)->objective);
}

static moemu_status_t parse_micro(const char *s, void *values)
{
    sweep_cli_t *o = values;
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

#define SW(field) offsetof(sweep_cli_t, field)
#define SWEEP_MAX(dim, help_)                                                                \
    {.name = "max-" #dim, .arg = "N", .type = CLI_INT, .off = SW(en.max_##dim), .lo = 0,     \
     .hi = PAR_MAX_DEGREE, .help = help_}

static const cli_opt_t sweep_options[] = {
    CLI_HEAD("model and devices:"),
    CLI_USE("model"), CLI_USE("weight-dtype"), CLI_USE("strict"), CLI_USE("hw"), CLI_USE("engine"),
    CLI_USE("overlap"), CLI_USE("dispatcher"), CLI_USE("kernels"),
    {.name = "devices", .type = CLI_SHARED, .help = "devices every strategy uses (required)"},
    CLI_USE("nodes"), CLI_USE("devices-per-node"), CLI_USE("dispatch-dtype"),
    CLI_USE("compute-dtype"), CLI_USE("kv-dtype"),
    CLI_HEAD("workload (as in moemu run):"),
    {.name = "batch", .type = CLI_SHARED,
     .help = "sequences (default 4, or as many as --prompt-lens give)"},
    CLI_USE("prompt-len"), CLI_USE("prompt-lens"), CLI_USE("prompt-len-range"),
    {.name = "decode", .type = CLI_SHARED, .help = "tokens generated per sequence (default 16)"},
    {.name = "seed", .type = CLI_SHARED,
     .help = "seed of the prompt lengths and the routing (default 0)"},
    {.name = "routing", .type = CLI_SHARED,
     .help = "the dry runs' router: uniform (default), zipf:S, or\n"
             "replay:FILE from moemu run --record-routing"},
    CLI_HEAD("constraints and ranking:"),
    {.name = "ttft-max", .arg = "S", .type = CLI_NUM, .off = SW(ttft_max), .lo = 0, .hi = 1e9,
     .help = "drop candidates whose TTFT of the batch is over S seconds"},
    {.name = "memory-headroom", .arg = "F", .type = CLI_NUM_BELOW, .off = SW(headroom), .lo = 0,
     .hi = 1,
     .help = "drop candidates whose memory peak is over (1 - F) x the\n"
             "capacity, F in [0, 1) (default 0)"},
    {.name = "objective", .arg = "O", .type = CLI_CALL, .parse = parse_objective,
     .field = "objective",
     .help = "throughput (tokens/ms per device, highest first; the\n"
             "default), ttft (lowest first) or latency (end to end,\n"
             "lowest first)"},
    CLI_HEAD("what is enumerated (the defaults keep a sweep of moe-10b-plan on 16 devices,\n"
             "batch 128 x 1024 tokens, under 5 minutes on 2 cores; docs/sweep.md says\n"
             "why each one loses nothing that could win):"),
    SWEEP_MAX(pp, "largest PP (default: no limit)"),
    SWEEP_MAX(dp, "largest DP (default: no limit)"),
    SWEEP_MAX(cp, "largest CP (default: no limit)"),
    SWEEP_MAX(tp, "largest TP (default: no limit)"),
    SWEEP_MAX(ep, "largest EP (default: no limit)"),
    SWEEP_MAX(etp, "largest ETP (default 2; 0: no limit)"),
    {.name = "sp", .arg = "auto|both|on|off", .type = CLI_CHOICE, .off = SW(en.sp),
     .choices = "both|auto|off|on", /* in par_enum_sp_t's order */
     .help = "auto: SP on whenever TP > 1 (the default; SP is never\n"
             "slower or larger in moemu's cost model); both: off\n"
             "and on; on: SP strategies only; off: never"},
    {.name = "uneven", .arg = "auto|on|off", .type = CLI_CHOICE, .off = SW(uneven),
     .choices = "auto|on|off", /* in sweep_uneven_t's order */
     .help = "the uneven stage split (the last stage, which holds\n"
             "lm_head, one layer lighter, when PP divides the\n"
             "layers); auto: tried when lm_head weighs more than\n"
             "a layer (default)"},
    {.name = "micro-batches", .arg = "pp|pow2|a,b,...", .type = CLI_CALL, .parse = parse_micro,
     .help = "micro-batch counts tried when PP > 1: pp: 1, PP and\n"
             "2*PP (the default); pow2: 1, 2, 4, ...; or a list\n"
             "(1 is always tried); counts over the sequences of\n"
             "a DP replica are left out"},
    {.name = "max-device-runs", .arg = "N", .type = CLI_U64, .off = SW(max_runs),
     .field = "max device runs",
     .help = "refuse, before running any, a sweep whose candidates\n"
             "x devices is over N (default 1048576; 0: no bound):\n"
             "each candidate emulates every device, one thread each"},
    {.name = "jobs", .arg = "N", .type = CLI_INT, .off = SW(jobs), .lo = 1, .hi = 1024,
     .help = "candidates run at a time, each in its own worker\n"
             "process (default: the host's cores)"},
    CLI_HEAD("outputs:"),
    {.name = "top", .arg = "K", .type = CLI_INT, .off = SW(top), .lo = 0, .hi = 1 << 30,
     .help = "rows in the table (default 20; 0: every kept one)"},
    {.name = "csv", .type = CLI_SHARED, .help = "every candidate, one row each"},
    {.name = "json", .type = CLI_SHARED, .help = "the same as JSON, with the sweep's settings"},
    {.name = "plot", .arg = "FILE.svg|FILE.png", .type = CLI_STR, .off = SW(plot),
     .help = "TTFT against throughput per device of every candidate,\n"
             "the Pareto front highlighted (needs gnuplot: Debian's\n"
             "gnuplot-nox)"},
    {.name = NULL},
};

static moemu_status_t parse(sweep_cli_t *o, int argc, char **argv, bool *help)
{
    *o = (sweep_cli_t){.top = SWEEP_DEFAULT_TOP, .en = {.max_etp = 2, .sp = PAR_ENUM_SP_WITH_TP},
                       .mb = SWEEP_MB_PP, .max_runs = SWEEP_DEFAULT_MAX_RUNS};
    cli_shared_init(&o->sh);
    int first;
    MOEMU_CHECK(cli_parse("moemu sweep", argc, argv, sweep_options, &o->sh, o, help, &first));
    if (*help) return MOEMU_OK;
    MOEMU_CHECK(cli_no_operands("moemu sweep", argc, argv, first));
    if (!o->sh.devices)
        return moemu_fail(MOEMU_ERR_INVALID, "moemu sweep: --devices is required (the device "
                                             "count every strategy uses, e.g. --devices 16)");
    MOEMU_CHECK(cli_check_workload(&o->sh));
    if (!o->sh.wl.batch && !o->sh.wl.lens) o->sh.wl.batch = 4;
    o->sh.wl.seed = o->sh.seed;
    return MOEMU_OK;
}

/* ---- progress on stderr: on a terminal, one line rewritten at most once
 * a second, also while candidates run; elsewhere (a log, a pipe) nothing
 * until the closing line, so that logs hold no stream of updates */

typedef struct {
    bool tty, shown;
    double t0, shown_at; /* host seconds */
    char last[SWEEP_NAME_LEN + 32];
} progress_t;

static void progress(void *arg, int done, int total, const sweep_row_t *row)
{
    progress_t *p = arg;
    if (row)
        snprintf(p->last, sizeof p->last, "%s x%d%s", row->name, row->micro_batches,
                 row->fate == SWEEP_NO_FIT ? " (does not fit)" : "");
    double now = emu_host_seconds();
    if (!p->tty || (p->shown && now - p->shown_at < 1)) return;
    fprintf(stderr, "\rsweep %d/%d, %.0f s%s%-50.50s", done, total, now - p->t0,
            p->last[0] ? ": " : "", p->last);
    fflush(stderr);
    p->shown = true;
    p->shown_at = now;
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
                     "model", cfg->name, "hw", hw->name, "devices", o->sh.devices, "nodes",
                     hw->topo.nodes, "devices_per_node", hw->topo.devices_per_node, "workload",
                     "batch", wl->batch, "prompt_lens", lens, "decode", wl->decode, "seed",
                     (json_int_t)o->sh.seed, "routing", o->sh.routing ? o->sh.routing : "uniform",
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
    moemu_status_t st = cli_load_model(&cfg, &o->sh);
    if (st == MOEMU_OK) st = cli_flag_names(wl_make(&wl, &o->sh.wl, &cfg), sweep_options);
    if (st == MOEMU_OK)
        st = cli_load_hw(&o->sh, o->sh.devices, &hw, NULL);
    if (st != MOEMU_OK) goto fail;
    /* a plot that cannot be drawn fails before the long part */
    if (o->plot && (st = cli_sweep_plot_check(o->plot)) != MOEMU_OK) goto fail;

    int min_len = wl.max_len;
    for (int b = 0; b < wl.batch; b++) min_len = wl.len[b] < min_len ? wl.len[b] : min_len;
    printf("sweep    %s on %d devices of %s (%d per node), dry runs\n", cfg.name, o->sh.devices,
           hw.name, hw.topo.devices_per_node);
    char stack[160];
    cli_stack_text(&hw.spec.stack, stack, sizeof stack);
    if (stack[0])
        printf("stack    %s%s\n", stack + 2, hw.spec.stack.overlap == EMU_OVERLAP_TWO_BATCH
               ? "; two-batch overlap: PP = 1 only, micro-batches in pairs (x2)" : "");
    printf("workload batch %d, prompts of %d..%d tokens (%lld in all), %d generated per "
           "sequence, routing %s\n", wl.batch, min_len, wl.max_len,
           (long long)wl_prompt_tokens(&wl), wl.decode, o->sh.routing ? o->sh.routing : "uniform");
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
                       .routing = o->sh.routing, .seed = o->sh.seed,
                       .prec = cli_prec(&o->sh), .progress = progress,
                       .progress_arg = &pr, .max_device_runs = o->max_runs};
    /* worker processes even for one job: the parent then waits in poll
     * and shows progress while a long candidate runs */
    int jobs = o->jobs ? o->jobs : default_jobs();
    so.exec = cli_sweep_workers;
    so.exec_arg = &jobs;
    so.uneven = o->uneven;
    so.mb = o->mb;
    so.micro_batches = o->mb_list;
    so.n_micro_batches = o->n_mb;
    st = cli_flag_names(sweep_run(&sw, &cfg, &wl, &hw, o->sh.devices, &so), sweep_options);
    progress_end(&pr);
    if (st != MOEMU_OK) goto fail;
    fprintf(stderr, "sweep: %d candidates in %.1f s\n", sw.ran, emu_host_seconds() - pr.t0);

    printf("\n");
    print_ranked(&sw, o->top, stdout);
    if (o->sh.csv && (st = sweep_csv(&sw, o->sh.csv)) != MOEMU_OK) goto fail;
    if (o->sh.json) {
        json_t *js = sweep_json(&sw);
        json_object_update_new(js, settings_json(o, &cfg, &wl, &hw));
        st = outfile_json(o->sh.json, js);
        json_decref(js);
        if (st != MOEMU_OK) goto fail;
    }
    if (o->plot) {
        char title[512];
        snprintf(title, sizeof title, "moemu sweep: %s on %d x %s, batch %d", cfg.name,
                 o->sh.devices, hw.name, wl.batch);
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
        cli_help(stdout, sweep_options);
        return CLI_EXIT_OK;
    }
    if (par_proc_count() > 1) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu sweep runs its dry runs in worker processes of "
                   "its own: start it without mpirun");
        return cli_error();
    }
    const outfile_arg_t plot = {.flag = "--plot", .path = o.plot};
    if (cli_outputs_check(&o.sh, &plot, 1, NULL) != MOEMU_OK) return cli_error();
    outfile_begin(); /* --csv, --json and --plot appear together, or none */
    return cli_outputs_end(run(&o));
}
