/* Dry runs on threads against dry runs as coroutines, side by side.
 *
 * Runs each case's dry run (moemu run --math skip without the one-device
 * reference) twice per repetition: with one thread per device, as every
 * run did before coroutines (emu_cluster_opts_t.threads), and with the
 * devices as coroutines on this thread (the default of a no-data run).
 * Checks first that both give the same report, bit for bit (its JSON),
 * then prints the wall and CPU seconds of each (best of --reps) and the
 * ratios threads / coroutines; then the summary lines: each case's
 * coroutines wall seconds against its aim, and case 16's ratio.
 *
 * Cases: "16", moe-10b-plan pp2-dp4-tp2-ep8 on 16 devices, batch 128 x
 * 1024 tokens, 16 generated, 8 micro-batches per replica; "1024", plan c
 * as measured (examples/plans/c.json: pp4-dp128-tp2-sp-ep16 on 1024
 * devices, batch 128 x 10240 tokens, 32 generated, 1 micro-batch).
 *
 * usage: bench_dry [--case 16|1024|all] [--reps N] [--quick]
 *   --quick: a tenth of the prompt lengths, for a check in seconds */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "engine/tools/report.h"

typedef struct {
    const char *name, *strategy;
    int batch, prompt_len, decode, micro_batches;
} dry_case_t;

static const dry_case_t cases[] = {
    {"16", "pp2-dp4-tp2-ep8", 128, 1024, 16, 8},
    {"1024", "pp4-dp128-tp2-sp-ep16", 128, 10240, 32, 1},
};

static int fail(void)
{
    fprintf(stderr, "bench_dry: %s\n", moemu_errmsg());
    return 2;
}

static double cpu_seconds(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec +
           (double)u.ru_stime.tv_sec + 1e-6 * (double)u.ru_stime.tv_usec;
}

/* One dry run of k: its report's JSON in *js (the caller frees it), its
 * wall and CPU seconds. */
static moemu_status_t dry_once(const dry_case_t *k, const cfg_model_t *cfg, const wl_t *wl,
                               const emu_hw_t *hw, bool threads, char **js, double *wall,
                               double *cpu)
{
    runner_opts_t o;
    memset(&o, 0, sizeof o);
    MOEMU_CHECK(par_strategy_parse(k->strategy, &o.strategy));
    o.micro_batches = k->micro_batches;
    o.hw = *hw;
    o.cluster.no_pin = true;
    o.cluster.threads = threads;
    report_t r;
    double w0 = emu_host_seconds(), c0 = cpu_seconds();
    MOEMU_CHECK(report_dry_run(&r, cfg, wl, &o, "uniform", 1, false));
    *wall = emu_host_seconds() - w0;
    *cpu = cpu_seconds() - c0;
    json_t *j = report_json(&r);
    *js = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(j);
    report_free(&r);
    return *js ? MOEMU_OK : moemu_fail(MOEMU_ERR_NOMEM, "cannot write the report");
}

/* Both ways, reps times each; the reports must be the same. wall[0] and
 * wall[1]: the best wall seconds on threads and as coroutines. */
static int bench_case(const dry_case_t *k, int reps, bool quick, const emu_hw_t *hw,
                      double wall[2])
{
    cfg_model_t cfg;
    wl_t wl;
    if (cfg_load(&cfg, "moe-10b-plan") != MOEMU_OK) return fail();
    int len = quick ? k->prompt_len / 10 : k->prompt_len;
    wl_opts_t wo = {.batch = k->batch, .prompt_len = len, .decode = k->decode, .seed = 1};
    if (wl_make(&wl, &wo, &cfg) != MOEMU_OK) return fail();
    double cpu[2] = {1e30, 1e30};
    wall[0] = wall[1] = 1e30;
    char *ref = NULL;
    for (int i = 0; i < 2 * reps; i++) {
        bool threads = i % 2 == 0;
        char *js;
        double w, c;
        if (dry_once(k, &cfg, &wl, hw, threads, &js, &w, &c) != MOEMU_OK) return fail();
        if (!ref) {
            ref = js;
        } else {
            int same = strcmp(ref, js) == 0;
            free(js);
            if (!same) {
                fprintf(stderr, "bench_dry: case %s: the %s run's report differs from the "
                        "threads' first\n", k->name, threads ? "threads" : "coroutines");
                return 1;
            }
        }
        if (w < wall[!threads]) wall[!threads] = w;
        if (c < cpu[!threads]) cpu[!threads] = c;
    }
    free(ref);
    wl_free(&wl);
    par_strategy_t s;
    if (par_strategy_parse(k->strategy, &s) != MOEMU_OK) return fail();
    int devices = par_strategy_world(&s);
    const char *mode[2] = {"threads", "coroutines"};
    for (int m = 0; m < 2; m++)
        printf("%-5s %5d  %-24s %5d x %-6d %-11s %9.3f %9.3f\n", k->name, devices, k->strategy,
               k->batch, len, mode[m], wall[m], cpu[m]);
    printf("%-5s ratio threads / coroutines: wall %.1fx, CPU %.1fx (reports identical)\n",
           k->name, wall[0] / wall[1], cpu[0] / cpu[1]);
    return 0;
}

int main(int argc, char **argv)
{
    emu_host_prepare(argv);
    const char *which = "all";
    int reps = 1;
    bool quick = false;
    static const struct option opts[] = {{"case", required_argument, NULL, 'c'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {"quick", no_argument, NULL, 'q'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'c') which = optarg;
        else if (c == 'r') reps = atoi(optarg);
        else if (c == 'q') quick = true;
        else return 2;
    }
    if (reps < 1) {
        fprintf(stderr, "bench_dry: --reps must be positive\n");
        return 2;
    }
    emu_hw_t hw;
    if (emu_hw_load("card-400tf-64gb", &hw) != MOEMU_OK) return fail();
    printf("%-5s %5s  %-24s %-14s %-11s %9s %9s\n", "case", "devs", "strategy", "batch x len",
           "devices as", "wall s", "CPU s");
    int rc = 0, ran = 0;
    double wall[2][2];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0] && rc == 0; i++)
        if (!strcmp(which, "all") || !strcmp(which, cases[i].name)) {
            rc = bench_case(&cases[i], reps, quick, &hw, wall[i]);
            ran |= 1 << i;
        }
    if (!ran) {
        fprintf(stderr, "bench_dry: no case '%s' (16, 1024 or all)\n", which);
        return 2;
    }
    if (rc) return rc;
    /* the aims are for the full workloads, not --quick's */
    const char *q = quick ? " (quick)" : "";
    if (ran & 1) {
        printf("summary: dry run 16 devices, coroutines%s (s) | %.3f | 0.15\n", q, wall[0][1]);
        printf("summary: dry run 16 devices, threads / coroutines%s | %.1f | 10\n", q,
               wall[0][0] / wall[0][1]);
    }
    if (ran & 2)
        printf("summary: dry run 1024 devices, coroutines%s (s) | %.3f | 3\n", q, wall[1][1]);
    return 0;
}
