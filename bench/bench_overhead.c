/* Real-math emulation overhead: a strategy's run against the one-device
 * baseline of the same job, side by side.
 *
 * For each strategy, runs the baseline (one device, routing in the
 * strategy's groups, as `moemu check` does) and the strategy, alternately,
 * --reps times each, and prints the best host wall time of each
 * runner_generate (threads, weights already generated) and the ratio
 * strategy / baseline. Both must pick the same tokens. The default job is
 * the README's: moe-10b-plan, batch 4 x 128 tokens, 16 generated.
 *
 * usage: bench_overhead [--strategy S]... [--batch B] [--prompt-len L]
 *                       [--decode N] [--reps N]
 *   default strategies: pp2-dp2-tp2-ep4 (8 devices), pp2-dp8-tp4-ep4 (64) */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/run/runner.h"

#define MAX_STRATEGIES 8

static int fail(void)
{
    fprintf(stderr, "bench_overhead: %s\n", moemu_errmsg());
    return 2;
}

/* One run: its host wall seconds; its tokens in *tok (the caller frees). */
static moemu_status_t run_once(const wts_t *w, const wl_t *wl, const runner_opts_t *o,
                               double *wall, int **tok)
{
    emu_cluster_t *cl;
    model_out_t out;
    model_opts_t mo = {0};
    double t0 = emu_host_seconds();
    MOEMU_CHECK(runner_generate(&out, &cl, w, wl, o, &mo));
    emu_cluster_destroy(cl);
    *wall = emu_host_seconds() - t0;
    size_t n = sizeof(int) * (size_t)wl->batch * wl->decode;
    *tok = malloc(n);
    if (*tok) memcpy(*tok, out.generated, n);
    model_out_free(&out);
    return *tok ? MOEMU_OK : moemu_fail(MOEMU_ERR_NOMEM, "cannot keep the tokens");
}

/* The baseline and strategy s alternately; prints one row. */
static int bench_strategy(const char *s, const wts_t *w, const wl_t *wl, const emu_hw_t *hw,
                          int reps)
{
    runner_opts_t o = {.micro_batches = 1, .hw = *hw};
    if (par_strategy_parse(s, &o.strategy) != MOEMU_OK) return fail();
    o.cluster.no_limit = true;
    o.cluster.no_pin = true;
    runner_opts_t one;
    runner_opts_one_device(&one, hw, o.strategy.dp, o.micro_batches);
    one.cluster.no_pin = true;
    double best[2] = {1e30, 1e30};
    for (int r = 0; r < reps; r++) {
        int *tok[2];
        for (int k = 0; k < 2; k++) {
            double t;
            if (run_once(w, wl, k ? &o : &one, &t, &tok[k]) != MOEMU_OK) return fail();
            if (t < best[k]) best[k] = t;
        }
        int same = !memcmp(tok[0], tok[1], sizeof(int) * (size_t)wl->batch * wl->decode);
        free(tok[0]);
        free(tok[1]);
        if (!same) {
            fprintf(stderr, "bench_overhead: %s picks other tokens than one device\n", s);
            return 1;
        }
    }
    printf("%-22s %7d %12.3f %12.3f %8.3f\n", s, par_strategy_world(&o.strategy), best[0],
           best[1], best[1] / best[0]);
    printf("summary: overhead on %d devices (%s) | %.3f | 1.10 at 8, 1.5 at 64\n",
           par_strategy_world(&o.strategy), s, best[1] / best[0]);
    return 0;
}

int main(int argc, char **argv)
{
    emu_host_prepare(argv);
    const char *strategies[MAX_STRATEGIES];
    int ns = 0, batch = 4, len = 128, decode = 16, reps = 3;
    static const struct option opts[] = {{"strategy", required_argument, NULL, 's'},
                                         {"batch", required_argument, NULL, 'b'},
                                         {"prompt-len", required_argument, NULL, 'l'},
                                         {"decode", required_argument, NULL, 'd'},
                                         {"reps", required_argument, NULL, 'r'},
                                         {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 's' && ns < MAX_STRATEGIES) strategies[ns++] = optarg;
        else if (c == 'b') batch = atoi(optarg);
        else if (c == 'l') len = atoi(optarg);
        else if (c == 'd') decode = atoi(optarg);
        else if (c == 'r') reps = atoi(optarg);
        else return 2;
    }
    if (batch < 1 || len < 1 || decode < 1 || reps < 1) {
        fprintf(stderr, "bench_overhead: --batch, --prompt-len, --decode and --reps must be "
                        "positive\n");
        return 2;
    }
    if (ns == 0) {
        strategies[ns++] = "pp2-dp2-tp2-ep4";
        strategies[ns++] = "pp2-dp8-tp4-ep4";
    }
    cfg_model_t cfg;
    wts_t w;
    wl_t wl;
    emu_hw_t hw;
    wl_opts_t wo = {.batch = batch, .prompt_len = len, .decode = decode, .seed = 1};
    if (cfg_load(&cfg, "moe-10b-plan") != MOEMU_OK || wl_make(&wl, &wo, &cfg) != MOEMU_OK ||
        wts_generate_all(&w, &cfg, 1) != MOEMU_OK || emu_hw_load("card-400tf-64gb", &hw) != MOEMU_OK)
        return fail();
    printf("%-22s %7s %12s %12s %8s\n", "strategy", "devices", "one device s", "strategy s",
           "ratio");
    int rc = 0;
    for (int i = 0; i < ns && rc == 0; i++) rc = bench_strategy(strategies[i], &w, &wl, &hw, reps);
    printf("(moe-10b-plan, batch %d x %d tokens, %d generated, host wall of each run, best of "
           "%d)\n", batch, len, decode, reps);
    wts_free(&w);
    wl_free(&wl);
    return rc;
}
