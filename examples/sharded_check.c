/* A sharded check through moemu's C API: the built-in tiny model under the
 * strategy dp2-tp2-ep4 on four emulated devices of the card-400tf-64gb
 * preset, against the single-device baseline on the same generated
 * weights and prompts. Prints the verdict, the relative L2 error of the
 * logits and figures of the strategy's report, its speedup against the
 * baseline's clock among them; exits 0 on PASS, 1 on
 * FAIL, 2 on an error. Built against the installed library:
 *
 *   cc examples/sharded_check.c $(pkg-config --cflags --libs moemu)
 */
#include <stdio.h>

#include "engine/tools/check.h"
#include "engine/tools/report.h"

#define SEED 7

static int error(void)
{
    fprintf(stderr, "sharded_check: %s\n", moemu_errmsg());
    return 2;
}

/* The strategy's virtual time to first token, throughput per device and
 * speedup against one device (the baseline's clock). */
static moemu_status_t print_report(check_t *chk, const cfg_model_t *cfg, const wl_t *wl,
                                   const runner_opts_t *d)
{
    report_t r;
    double t1 = emu_dev_clock(emu_cluster_dev(chk->base_cluster, 0));
    MOEMU_CHECK(report_build(&r, chk->cluster, &chk->strategy, cfg, wl, d, t1));
    printf("report:  %s on %d devices of %s: TTFT %.3f ms, %.3f tokens/ms per device, "
           "speedup %.2f\n", r.strategy, r.devices, r.hw, 1e3 * r.ttft_batch,
           r.total_tpms / r.devices, r.speedup);
    report_free(&r);
    return MOEMU_OK;
}

int main(void)
{
    cfg_model_t cfg;
    wts_t w = {0};
    wl_t wl = {0};
    check_t chk = {0};
    runner_opts_t d = {.micro_batches = 1};
    wl_opts_t wo = {.batch = 4, .prompt_len = 16, .decode = 4, .seed = SEED};
    moemu_status_t st = cfg_load(&cfg, "tiny");
    if (st == MOEMU_OK) st = wts_generate_all(&w, &cfg, SEED);
    if (st == MOEMU_OK) st = wl_make(&wl, &wo, &cfg);
    if (st == MOEMU_OK) st = par_strategy_parse("dp2-tp2-ep4", &d.strategy);
    if (st == MOEMU_OK) st = emu_hw_load("card-400tf-64gb", &d.hw);
    if (st == MOEMU_OK) st = check_run(&chk, &w, &wl, &d, 1e-5, NULL);
    int rc = 2;
    if (st == MOEMU_OK) {
        printf("check:   %lld logits compared, relative L2 error %.3e (tolerance %.0e), "
               "tokens %s\n", (long long)chk.r.compared, chk.r.rel_l2, chk.r.rtol,
               chk.r.first_seq < 0 ? "identical" : "differ");
        st = print_report(&chk, &cfg, &wl, &d);
    }
    if (st == MOEMU_OK) {
        printf("verdict: %s\n", chk.r.pass ? "PASS" : "FAIL");
        rc = chk.r.pass ? 0 : 1;
    } else {
        rc = error();
    }
    check_free(&chk);
    wl_free(&wl);
    wts_free(&w);
    return rc;
}
