/* Tests of parallel/enumerate.c and engine/sweep.c: the enumeration
 * against lists written out by hand, the distance, the sweep's figures
 * against dry runs of the same candidates one by one, the ranking, the
 * Pareto front on hand-made points, the constraints and out-of-memory
 * candidates, the outputs (CSV, JSON), and moemu sweep's worker processes
 * and plot (engine/cli/cli_pool.c, cli_plot.c). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/cli/cli.h" /* moemu sweep's worker processes and plot */
#include "engine/tools/sweep.h"

static cfg_model_t tiny(void)
{
    cfg_model_t c;
    cr_assert_eq(cfg_load(&c, "tiny"), MOEMU_OK, "%s", moemu_errmsg());
    return c;
}

static par_dims_t dims_of(const cfg_model_t *c)
{
    par_dims_t d;
    family_of(c)->dims(c, &d);
    return d;
}

/* The enumeration in canonical forms equals want[0..n). */
static void assert_enumeration(const par_dims_t *m, int devices, const par_enum_opts_t *o,
                               const char *const *want, int n)
{
    int count = par_strategy_enumerate(m, devices, o, NULL, 0);
    par_strategy_t *got = calloc((size_t)count + 1, sizeof *got);
    cr_assert_not_null(got);
    cr_assert_eq(par_strategy_enumerate(m, devices, o, got, count), count);
    for (int i = 0; i < count && i < n; i++) {
        char canon[PAR_STRATEGY_STRLEN];
        par_strategy_format(&got[i], canon, sizeof canon);
        cr_expect_str_eq(canon, want[i], "strategy %d: got %s, expected %s", i, canon, want[i]);
        cr_expect_eq(par_strategy_validate(&got[i], m, devices), MOEMU_OK, "%s: %s", canon,
                     moemu_errmsg());
    }
    cr_assert_eq(count, n, "%d strategies enumerated, %d expected", count, n);
    free(got);
}

/* ---- enumeration */

Test(enumerate, tiny_on_8_devices_without_cp_etp_sp)
{
    cfg_model_t c = tiny();
    par_dims_t m = dims_of(&c);
    /* TP = 8 breaks the 4 heads, PP = 8 the 4 layers; PP = 2 divides them
     * into stages of 2, so 3/1 is tried too; PP = 4 has stages of 1 */
    static const char *const want[] = {
        "dp2-tp4", "dp2-tp4-ep2", "dp2-tp4-ep4", "dp2-tp4-ep8",
        "dp4-tp2", "dp4-tp2-ep2", "dp4-tp2-ep4", "dp4-tp2-ep8",
        "dp8", "dp8-ep2", "dp8-ep4", "dp8-ep8",
        "pp2-tp4", "pp2=3/1-tp4", "pp2-tp4-ep2", "pp2=3/1-tp4-ep2",
        "pp2-tp4-ep4", "pp2=3/1-tp4-ep4",
        "pp2-dp2-tp2", "pp2=3/1-dp2-tp2", "pp2-dp2-tp2-ep2", "pp2=3/1-dp2-tp2-ep2",
        "pp2-dp2-tp2-ep4", "pp2=3/1-dp2-tp2-ep4",
        "pp2-dp4", "pp2=3/1-dp4", "pp2-dp4-ep2", "pp2=3/1-dp4-ep2",
        "pp2-dp4-ep4", "pp2=3/1-dp4-ep4",
        "pp4-tp2", "pp4-tp2-ep2", "pp4-dp2", "pp4-dp2-ep2",
    };
    par_enum_opts_t o = {.max_cp = 1, .max_etp = 1, .sp = PAR_ENUM_SP_OFF};
    assert_enumeration(&m, 8, &o, want, (int)(sizeof want / sizeof want[0]));
}

Test(enumerate, tiny_on_4_devices_one_stage_one_replica)
{
    cfg_model_t c = tiny();
    par_dims_t m = dims_of(&c);
    static const char *const want[] = {
        "tp4", "tp4-etp2", "tp4-ep2", "tp4-ep2-etp2", "tp4-ep4",
        "tp4-sp", "tp4-sp-etp2", "tp4-sp-ep2", "tp4-sp-ep2-etp2", "tp4-sp-ep4",
        "cp2-tp2", "cp2-tp2-etp2", "cp2-tp2-ep2", "cp2-tp2-ep2-etp2", "cp2-tp2-ep4",
        "cp2-tp2-sp", "cp2-tp2-sp-etp2", "cp2-tp2-sp-ep2", "cp2-tp2-sp-ep2-etp2",
        "cp2-tp2-sp-ep4",
        "cp4", "cp4-etp2", "cp4-ep2", "cp4-ep2-etp2", "cp4-ep4",
    };
    par_enum_opts_t o = {.max_pp = 1, .max_dp = 1, .max_etp = 2};
    assert_enumeration(&m, 4, &o, want, (int)(sizeof want / sizeof want[0]));
    /* SP with TP: the same without the SP-off twins of TP > 1 */
    static const char *const with_tp[] = {
        "tp4-sp", "tp4-sp-etp2", "tp4-sp-ep2", "tp4-sp-ep2-etp2", "tp4-sp-ep4",
        "cp2-tp2-sp", "cp2-tp2-sp-etp2", "cp2-tp2-sp-ep2", "cp2-tp2-sp-ep2-etp2",
        "cp2-tp2-sp-ep4",
        "cp4", "cp4-etp2", "cp4-ep2", "cp4-ep2-etp2", "cp4-ep4",
    };
    o.sp = PAR_ENUM_SP_WITH_TP;
    assert_enumeration(&m, 4, &o, with_tp, (int)(sizeof with_tp / sizeof with_tp[0]));
    static const char *const on[] = {
        "tp4-sp", "tp4-sp-etp2", "tp4-sp-ep2", "tp4-sp-ep2-etp2", "tp4-sp-ep4",
        "cp2-tp2-sp", "cp2-tp2-sp-etp2", "cp2-tp2-sp-ep2", "cp2-tp2-sp-ep2-etp2",
        "cp2-tp2-sp-ep4",
    };
    o.sp = PAR_ENUM_SP_ON;
    assert_enumeration(&m, 4, &o, on, (int)(sizeof on / sizeof on[0]));
}

Test(enumerate, tiny_on_3_devices_unrestricted)
{
    cfg_model_t c = tiny();
    par_dims_t m = dims_of(&c);
    /* TP = 3 breaks the heads, EP = 3 the 8 experts; ETP = 3 divides 96;
     * PP = 3 does not divide 4 layers: the even split 2/1/1 only */
    static const char *const want[] = {"cp3", "cp3-etp3", "dp3", "dp3-etp3", "pp3"};
    assert_enumeration(&m, 3, NULL, want, 5);
    par_enum_opts_t even = {.even_only = true};
    assert_enumeration(&m, 3, &even, want, 5);
}

Test(enumerate, even_only_and_limits)
{
    cfg_model_t c = tiny();
    par_dims_t m = dims_of(&c);
    /* on 2 devices without TP, CP and ETP: DP2 with EP 1 and 2, and PP2
     * with its 3/1 split, which even_only drops */
    par_enum_opts_t o = {.max_cp = 1, .max_tp = 1, .max_etp = 1};
    static const char *const all[] = {"dp2", "dp2-ep2", "pp2", "pp2=3/1"};
    assert_enumeration(&m, 2, &o, all, 4);
    o.even_only = true;
    static const char *const even[] = {"dp2", "dp2-ep2", "pp2"};
    assert_enumeration(&m, 2, &o, even, 3);
    o.max_pp = 1;
    o.max_ep = 1;
    static const char *const one[] = {"dp2"};
    assert_enumeration(&m, 2, &o, one, 1);
}

Test(enumerate, count_beyond_max_and_bad_arguments)
{
    cfg_model_t c = tiny();
    par_dims_t m = dims_of(&c);
    int n = par_strategy_enumerate(&m, 8, NULL, NULL, 0);
    cr_assert_gt(n, 34);
    par_strategy_t few[3], *all = calloc((size_t)n, sizeof *all);
    cr_assert_not_null(all);
    cr_assert_eq(par_strategy_enumerate(&m, 8, NULL, few, 3), n);
    cr_assert_eq(par_strategy_enumerate(&m, 8, NULL, all, n), n);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(memcmp(&few[i], &all[i], sizeof few[i]), 0, "strategy %d differs", i);
    /* no duplicates, every one valid */
    for (int i = 0; i < n; i++) {
        cr_assert_eq(par_strategy_validate(&all[i], &m, 8), MOEMU_OK, "%s", moemu_errmsg());
        for (int j = 0; j < i; j++)
            cr_assert_neq(memcmp(&all[i], &all[j], sizeof all[i]), 0, "%d and %d alike", i, j);
    }
    free(all);
    cr_assert_eq(par_strategy_enumerate(&m, 0, NULL, NULL, 0), 0);
    cr_assert_eq(par_strategy_enumerate(NULL, 8, NULL, NULL, 0), 0);
    /* 5 devices: only PP = 5 > 4 layers, DP5, CP5 with EP 1 and ETP 1 */
    static const char *const five[] = {"cp5", "dp5"};
    assert_enumeration(&m, 5, NULL, five, 2);
}

/* A prime near 2^20: two strategies (cp N, dp N), found without walking
 * 1..N at each level; 2^20 itself, counted as fast. */
Test(enumerate, a_million_devices_in_milliseconds, .timeout = 10)
{
    cfg_model_t c = tiny();
    par_dims_t m = dims_of(&c);
    static const char *const prime[] = {"cp1048573", "dp1048573"};
    double t0 = emu_host_seconds();
    assert_enumeration(&m, 1048573, NULL, prime, 2);
    cr_expect_gt(par_strategy_enumerate(&m, 1 << 20, NULL, NULL, 0), 1000);
    cr_expect_lt(emu_host_seconds() - t0, 5.0, "the enumeration walks 1..N again");
}

static par_strategy_t parse(const char *s)
{
    par_strategy_t p;
    cr_assert_eq(par_strategy_parse(s, &p), MOEMU_OK, "%s: %s", s, moemu_errmsg());
    return p;
}

Test(enumerate, distance)
{
    par_strategy_t a = parse("tp2"), b = parse("tp4-sp");
    cr_assert_float_eq(par_strategy_distance(&a, &b), 1.5, 1e-12);
    cr_assert_float_eq(par_strategy_distance(&b, &a), 1.5, 1e-12);
    cr_assert_float_eq(par_strategy_distance(&a, &a), 0.0, 1e-12);
    a = parse("pp4-dp4-ep16");
    b = parse("pp4-dp4-ep4");
    cr_assert_float_eq(par_strategy_distance(&a, &b), 2.0, 1e-12);
    /* every dimension: log2 2 + log2 4 + log2 2 + log2 2 + log2 8 + log2 2 */
    a = parse("pp2-dp4-cp2-tp2-ep8-etp2");
    b = parse("tp1");
    cr_assert_float_eq(par_strategy_distance(&a, &b), 1 + 2 + 1 + 1 + 3 + 1, 1e-12);
    /* splits and a given EDP do not count; 3 is log2 3 from 1 */
    a = parse("pp2=3/1-dp2-edp2");
    b = parse("pp2-dp2");
    cr_assert_float_eq(par_strategy_distance(&a, &b), 0.0, 1e-12);
    a = parse("dp3");
    b = parse("dp1");
    cr_assert_float_eq(par_strategy_distance(&a, &b), log2(3.0), 1e-12);
}

/* ---- the sweep */

typedef struct {
    cfg_model_t cfg;
    wl_t wl;
    emu_hw_t hw;
} setup_t;

static void setup(setup_t *s, int batch, int len, int decode)
{
    s->cfg = tiny();
    wl_opts_t o = {.batch = batch, .prompt_len = len, .decode = decode, .seed = 3};
    cr_assert_eq(wl_make(&s->wl, &o, &s->cfg), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(emu_hw_load("card-400tf-64gb", &s->hw), MOEMU_OK, "%s", moemu_errmsg());
}

static double report_peak(const report_t *r)
{
    double m = 0;
    for (int i = 0; i < r->devices; i++) m = r->dev[i].mem_peak > m ? r->dev[i].mem_peak : m;
    return m;
}

Test(sweep, figures_equal_dry_runs_one_by_one, .timeout = 600)
{
    setup_t s;
    setup(&s, 8, 16, 4);
    sweep_opts_t o = {.enumerate = {.max_cp = 1, .max_etp = 1, .sp = PAR_ENUM_SP_OFF},
                      .uneven = SWEEP_UNEVEN_ON, .mb = SWEEP_MB_PP, .seed = 5};
    sweep_t sw;
    cr_assert_eq(sweep_run(&sw, &s.cfg, &s.wl, &s.hw, 8, &o), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(sw.strategies, 34);
    cr_assert_eq(sw.ran, sw.n_rows);
    cr_assert_eq(sw.kept, sw.n_rows);
    cr_assert_eq(sw.no_fit + sw.missed, 0);
    /* ranked by throughput per device, ranks 1.. in order */
    for (int i = 0; i < sw.n_rows; i++) {
        cr_assert_eq(sw.rows[i].rank, i + 1);
        if (i) cr_assert_geq(sw.rows[i - 1].tpms_dev, sw.rows[i].tpms_dev);
    }
    /* every strategy with its micro-batch counts: PP = 1 once, PP > 1 with
     * 1, PP and 2*PP up to the smallest replica's 8/DP sequences */
    for (int i = 0; i < sw.n_rows; i++) {
        const sweep_row_t *r = &sw.rows[i];
        int mb[32], n = sweep_micro_batches(&r->strategy, 8, &o, mb);
        bool found = false;
        for (int j = 0; j < n; j++) found |= mb[j] == r->micro_batches;
        cr_assert(found, "%s x%d is not one of its counts", r->name, r->micro_batches);
        cr_assert(r->strategy.pp > 1 || r->micro_batches == 1);
        cr_assert_leq(r->micro_batches, 8 / r->strategy.dp > 1 ? 8 / r->strategy.dp : 1);
    }
    int mb[32];
    par_strategy_t p = parse("pp2-dp2-tp2");
    cr_assert_eq(sweep_micro_batches(&p, 8, &o, mb), 3);
    cr_assert(mb[0] == 1 && mb[1] == 2 && mb[2] == 4);
    p = parse("pp2-dp4");
    cr_assert_eq(sweep_micro_batches(&p, 8, &o, mb), 2); /* 4 > 8/4 sequences */
    p = parse("pp4-dp2");
    cr_assert_eq(sweep_micro_batches(&p, 8, &o, mb), 2); /* 8 > 8/2 */
    cr_assert(mb[0] == 1 && mb[1] == 4);

    /* the top rows against report_dry_run of each alone, exactly */
    for (int i = 0; i < 5; i++) {
        const sweep_row_t *row = &sw.rows[i];
        runner_opts_t d = {.strategy = row->strategy, .micro_batches = row->micro_batches,
                         .hw = s.hw};
        report_t r;
        cr_assert_eq(report_dry_run(&r, &s.cfg, &s.wl, &d, "uniform", 5, false), MOEMU_OK,
                     "%s", moemu_errmsg());
        double bubble = 0;
        for (int k = 0; k < r.stages; k++) bubble += r.bubble[k] / r.stages;
        cr_expect_eq(row->ttft, r.ttft_batch, "%s x%d: TTFT %.17g vs %.17g", row->name,
                     row->micro_batches, row->ttft, r.ttft_batch);
        cr_expect_eq(row->tpms_dev, r.total_tpms / r.devices, "%s", row->name);
        cr_expect_eq(row->prefill_tpms_dev, r.prefill_tpms / r.devices, "%s", row->name);
        cr_expect_eq(row->decode_tpms_dev, r.decode_tpms / r.devices, "%s", row->name);
        cr_expect_eq(row->e2e, r.e2e, "%s", row->name);
        cr_expect_eq(row->mem_peak, report_peak(&r), "%s", row->name);
        cr_expect_eq(row->capacity, r.dev[0].capacity, "%s", row->name);
        cr_expect_eq(row->comm_share, r.exposed_comm_mean, "%s", row->name);
        cr_expect_eq(row->bubble, bubble, "%s", row->name);
        cr_expect_eq(row->imbalance, r.load_max_mean, "%s", row->name);
        cr_expect_eq(row->busiest, r.busiest_vs_mean, "%s", row->name);
        report_free(&r);
    }

    /* moemu sweep's worker processes give the same rows, bit for bit */
    sweep_opts_t oj = o;
    int jobs = 3;
    oj.exec = cli_sweep_workers;
    oj.exec_arg = &jobs;
    sweep_t sj;
    cr_assert_eq(sweep_run(&sj, &s.cfg, &s.wl, &s.hw, 8, &oj), MOEMU_OK, "%s", moemu_errmsg());
    cr_assert_eq(sj.n_rows, sw.n_rows);
    cr_assert(sj.ran == sw.ran && sj.kept == sw.kept && sj.strategies == sw.strategies);
    for (int i = 0; i < sw.n_rows; i++) {
        const sweep_row_t *a = &sw.rows[i], *b = &sj.rows[i];
        cr_expect_str_eq(a->name, b->name, "row %d", i);
        cr_expect(a->micro_batches == b->micro_batches && a->index == b->index &&
                      a->fate == b->fate && a->rank == b->rank && a->pareto == b->pareto,
                  "row %d: %s", i, a->name);
        cr_expect(a->ttft == b->ttft && a->tpms_dev == b->tpms_dev && a->e2e == b->e2e &&
                      a->mem_peak == b->mem_peak && a->comm_share == b->comm_share &&
                      a->bubble == b->bubble && a->imbalance == b->imbalance &&
                      a->busiest == b->busiest,
                  "row %d: %s x%d differs with workers", i, a->name, a->micro_batches);
        cr_expect_eq(memcmp(&a->strategy, &b->strategy, sizeof a->strategy), 0);
    }
    sweep_free(&sj);

    /* the other objectives order the same rows */
    cr_assert_eq(sweep_rank(sw.rows, sw.n_rows, SWEEP_OBJ_TTFT), MOEMU_OK);
    for (int i = 1; i < sw.n_rows; i++) cr_assert_leq(sw.rows[i - 1].ttft, sw.rows[i].ttft);
    cr_assert_eq(sweep_rank(sw.rows, sw.n_rows, SWEEP_OBJ_LATENCY), MOEMU_OK);
    for (int i = 1; i < sw.n_rows; i++) cr_assert_leq(sw.rows[i - 1].e2e, sw.rows[i].e2e);
    sweep_free(&sw);
    wl_free(&s.wl);
}

/* A row kept with the given figures. */
static sweep_row_t point(int index, double ttft, double tpms)
{
    sweep_row_t r;
    memset(&r, 0, sizeof r);
    par_strategy_default(&r.strategy);
    snprintf(r.name, sizeof r.name, "p%d", index);
    r.index = index;
    r.micro_batches = 1;
    r.ttft = ttft;
    r.tpms_dev = tpms;
    r.e2e = 10 * ttft;
    r.capacity = 64e9;
    return r;
}

Test(sweep, pareto_front_by_hand)
{
    sweep_row_t rows[] = {
        point(0, 1.0, 10),  /* front */
        point(1, 2.0, 20),  /* front */
        point(2, 2.0, 15),  /* dominated by 1: same TTFT, less throughput */
        point(3, 3.0, 20),  /* dominated by 1: same throughput, later */
        point(4, 0.5, 5),   /* front: the fastest first token */
        point(5, 1.0, 10),  /* front: the same point as 0 */
        point(6, 0.1, 100), /* would dominate all, but dropped */
        point(7, 1.5, 9),   /* dominated by 0 */
        point(8, 4.0, 25),  /* front: the highest throughput */
    };
    rows[6].fate = SWEEP_MISSED;
    int n = (int)(sizeof rows / sizeof rows[0]);
    sweep_mark_pareto(rows, n);
    const bool want[] = {true, true, false, false, true, true, false, false, true};
    for (int i = 0; i < n; i++)
        cr_expect_eq(rows[i].pareto, want[i], "point %d: pareto %d", i, rows[i].pareto);

    cr_assert_eq(sweep_rank(rows, n, SWEEP_OBJ_THROUGHPUT), MOEMU_OK);
    /* 8 (25), 1 (20, TTFT 2), 3 (20, TTFT 3), 2, 0 and 5 (tie: index), 7, 4, then 6 */
    const int order[] = {8, 1, 3, 2, 0, 5, 7, 4, 6};
    for (int i = 0; i < n; i++) {
        cr_expect_eq(rows[i].index, order[i], "rank %d: point %d, expected %d", i + 1,
                     rows[i].index, order[i]);
        cr_expect_eq(rows[i].rank, i < n - 1 ? i + 1 : 0);
        cr_expect_eq(rows[i].pareto, want[order[i]]);
    }
    cr_assert_eq(sweep_rank(rows, n, SWEEP_OBJ_TTFT), MOEMU_OK);
    const int by_ttft[] = {4, 0, 5, 7, 1, 2, 3, 8, 6};
    for (int i = 0; i < n; i++) cr_expect_eq(rows[i].index, by_ttft[i], "ttft rank %d", i + 1);
}

Test(sweep, objective_names)
{
    sweep_objective_t o;
    cr_assert_eq(sweep_objective_parse("ttft", &o), MOEMU_OK);
    cr_assert_eq(o, SWEEP_OBJ_TTFT);
    cr_assert_eq(sweep_objective_parse("latency", &o), MOEMU_OK);
    cr_assert_eq(o, SWEEP_OBJ_LATENCY);
    cr_assert_eq(sweep_objective_parse("throughput", &o), MOEMU_OK);
    cr_assert_eq(o, SWEEP_OBJ_THROUGHPUT);
    cr_assert_eq(sweep_objective_parse("fast", &o), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "objective 'fast': expected throughput, ttft or latency"),
              "%s", moemu_errmsg());
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* A value strictly between two distinct values of v[0..n), near the
 * middle. */
static double split_value(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    for (int k = n / 2; k < n; k++)
        if (v[k] > v[k - 1]) return (v[k] + v[k - 1]) / 2;
    for (int k = n / 2; k > 0; k--)
        if (v[k] > v[k - 1]) return (v[k] + v[k - 1]) / 2;
    cr_assert_fail("all values alike");
    return 0;
}

static const sweep_row_t *find(const sweep_t *s, const sweep_row_t *like)
{
    for (int i = 0; i < s->n_rows; i++)
        if (!strcmp(s->rows[i].name, like->name) &&
            s->rows[i].micro_batches == like->micro_batches)
            return &s->rows[i];
    cr_assert_fail("%s x%d missing", like->name, like->micro_batches);
    return NULL;
}

Test(sweep, constraints_and_memory, .timeout = 600)
{
    setup_t s;
    setup(&s, 4, 12, 3);
    sweep_opts_t o = {.enumerate = {.max_pp = 2, .max_cp = 1, .max_etp = 1},
                      .mb = SWEEP_MB_LIST};
    sweep_t all;
    cr_assert_eq(sweep_run(&all, &s.cfg, &s.wl, &s.hw, 4, &o), MOEMU_OK, "%s", moemu_errmsg());
    int n = all.n_rows;
    cr_assert_gt(n, 4);
    double *v = calloc((size_t)n, sizeof *v);
    cr_assert_not_null(v);

    /* TTFT limit between two of the figures */
    for (int i = 0; i < n; i++) v[i] = all.rows[i].ttft;
    double tmax = split_value(v, n);
    o.ttft_max = tmax;
    sweep_t t;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 4, &o), MOEMU_OK, "%s", moemu_errmsg());
    int missed = 0;
    for (int i = 0; i < n; i++) {
        const sweep_row_t *a = &all.rows[i], *b = find(&t, a);
        bool over = a->ttft > tmax;
        missed += over;
        cr_expect_eq(b->fate, over ? SWEEP_MISSED : SWEEP_KEPT, "%s: TTFT %g, limit %g", a->name,
                     a->ttft, tmax);
        if (over) {
            char want[64];
            snprintf(want, sizeof want, "is over the limit of %g s", tmax);
            cr_expect(strstr(b->why, want), "%s", b->why);
        }
        cr_expect_eq(b->rank == 0, over);
        cr_expect(!over || !b->pareto);
    }
    cr_assert_eq(t.missed, missed);
    cr_assert_eq(t.kept, n - missed);
    cr_assert_gt(missed, 0);
    sweep_free(&t);

    /* memory headroom: (1 - F) x capacity between two peaks */
    o.ttft_max = 0;
    for (int i = 0; i < n; i++) v[i] = all.rows[i].mem_peak;
    double limit = split_value(v, n), cap = s.hw.spec.mem_capacity;
    o.memory_headroom = 1 - limit / cap;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 4, &o), MOEMU_OK, "%s", moemu_errmsg());
    missed = 0;
    for (int i = 0; i < n; i++) {
        const sweep_row_t *a = &all.rows[i], *b = find(&t, a);
        bool over = a->mem_peak > (1 - o.memory_headroom) * cap;
        missed += over;
        cr_expect_eq(b->fate, over ? SWEEP_MISSED : SWEEP_KEPT, "%s: peak %g", a->name,
                     a->mem_peak);
        if (over) cr_expect(strstr(b->why, "memory peak"), "%s", b->why);
    }
    cr_assert_eq(t.missed, missed);
    cr_assert_gt(missed, 0);
    sweep_free(&t);

    /* a capacity between two peaks: the larger ones do not fit, no error */
    o.memory_headroom = 0;
    emu_hw_t small = s.hw;
    small.spec.mem_capacity = limit;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &small, 4, &o), MOEMU_OK, "%s", moemu_errmsg());
    int nofit = 0;
    for (int i = 0; i < n; i++) {
        const sweep_row_t *a = &all.rows[i], *b = find(&t, a);
        bool over = a->mem_peak > limit;
        nofit += over;
        cr_expect_eq(b->fate, over ? SWEEP_NO_FIT : SWEEP_KEPT, "%s: peak %g, capacity %g",
                     a->name, a->mem_peak, limit);
        if (over) {
            cr_expect(strstr(b->why, "device"), "%s", b->why);
            cr_expect_eq(b->ttft, 0);
        } else {
            cr_expect_eq(b->ttft, a->ttft, "%s", a->name);
        }
    }
    cr_assert_eq(t.no_fit, nofit);
    cr_assert_eq(t.kept, n - nofit);
    cr_assert_gt(nofit, 0);
    cr_assert_eq(moemu_errmsg()[0], '\0', "the sweep left a message: %s", moemu_errmsg());
    sweep_free(&t);

    /* a failure other than memory stops the sweep with its message, in
     * this process or in a worker */
    emu_hw_t cramped = s.hw;
    cramped.topo.nodes = 1;
    cramped.topo.devices_per_node = 2;
    for (int jobs = 0; jobs <= 2; jobs += 2) {
        o.exec = jobs ? cli_sweep_workers : NULL;
        o.exec_arg = &jobs;
        cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &cramped, 4, &o), MOEMU_ERR_INVALID);
        cr_expect(strstr(moemu_errmsg(), "4 devices do not fit on 1 node of 2 devices"), "%s",
                  moemu_errmsg());
        cr_assert_null(t.rows);
    }
    o.exec = NULL;

    /* more candidates x devices than the bound: refused before any runs,
     * with the counts */
    o.max_device_runs = 4 * (uint64_t)all.n_rows - 1;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 4, &o), MOEMU_ERR_INVALID);
    char want[160];
    snprintf(want, sizeof want, "max device runs %d: %d candidates (strategy x micro-batches) "
             "of 4 devices each make %d device runs", 4 * all.n_rows - 1, all.n_rows,
             4 * all.n_rows);
    cr_expect(strstr(moemu_errmsg(), want), "%s", moemu_errmsg());
    cr_expect_null(t.rows);
    o.max_device_runs = 4 * (uint64_t)all.n_rows;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 4, &o), MOEMU_OK, "%s", moemu_errmsg());
    sweep_free(&t);
    o.max_device_runs = 0;

    /* bad settings */
    o.memory_headroom = 1;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 4, &o), MOEMU_ERR_INVALID);
    o.memory_headroom = 0;
    o.enumerate.max_tp = 3; /* with max_pp 2, max_cp 1 on 7 devices: dp7, cp... none */
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 7, &o), MOEMU_OK, "%s", moemu_errmsg());
    sweep_free(&t);
    o.enumerate.max_dp = 1;
    cr_assert_eq(sweep_run(&t, &s.cfg, &s.wl, &s.hw, 7, &o), MOEMU_ERR_INVALID);
    cr_assert(strstr(moemu_errmsg(), "no valid strategy for tiny on 7 devices"), "%s",
              moemu_errmsg());
    free(v);
    sweep_free(&all);
    wl_free(&s.wl);
}

Test(sweep, uneven_rule)
{
    cfg_model_t c = tiny();
    /* tiny: lm_head 97 x 64 against a layer of 8 experts x 3 x 96 x 64 */
    cr_assert_not(sweep_uneven_helps(&c));
    cfg_model_t m;
    cr_assert_eq(cfg_load(&m, "moe-10b-plan"), MOEMU_OK);
    cr_assert_not(sweep_uneven_helps(&m)); /* 16.4M against 26.2M */
    c.vocab_size = 100000; /* 6.4M > a layer */
    cr_assert(sweep_uneven_helps(&c));
}

/* ---- outputs */

static sweep_t hand_sweep(sweep_row_t *rows, int n)
{
    sweep_t s = {.rows = rows, .n_rows = n, .strategies = n, .ran = n};
    for (int i = 0; i < n; i++) {
        s.kept += rows[i].fate == SWEEP_KEPT;
        s.missed += rows[i].fate == SWEEP_MISSED;
        s.no_fit += rows[i].fate == SWEEP_NO_FIT;
    }
    cr_assert_eq(sweep_rank(rows, n, SWEEP_OBJ_THROUGHPUT), MOEMU_OK);
    return s;
}

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    cr_assert_not_null(b);
    cr_assert_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    b[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* Entries of dir other than . and .. */
static int entries(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

Test(sweep_output, csv_json_and_plot)
{
    sweep_row_t rows[] = {point(0, 1e-3, 10), point(1, 2e-3, 20), point(2, 3e-3, 15),
                          point(3, 0.5e-3, 5), point(4, 1e-3, 1), point(5, 0, 0)};
    rows[4].fate = SWEEP_MISSED;
    snprintf(rows[4].why, sizeof rows[4].why, "TTFT 1 s is over the limit of 0.5 s, really");
    rows[5].fate = SWEEP_NO_FIT;
    snprintf(rows[5].why, sizeof rows[5].why, "device 0: \"out\" of memory");
    par_strategy_t p = parse("pp2=3/1-dp2-tp2-sp-ep4");
    rows[1].strategy = p;
    par_strategy_format(&p, rows[1].name, sizeof rows[1].name);
    rows[1].micro_batches = 4;
    sweep_t s = hand_sweep(rows, 6);
    char dir[] = "/tmp/moemu-sweep-XXXXXX";
    cr_assert_not_null(mkdtemp(dir));
    char path[256];

    snprintf(path, sizeof path, "%s/s.csv", dir);
    cr_assert_eq(sweep_csv(&s, path), MOEMU_OK, "%s", moemu_errmsg());
    size_t len;
    char *csv = slurp(path, &len);
    int lines = 0;
    for (char *c = csv; *c; c++) lines += *c == '\n';
    cr_expect_eq(lines, 7, "%s", csv);
    cr_expect(!strncmp(csv, "rank,strategy,micro_batches,fate,ttft_ms,", 41), "%s", csv);
    cr_expect(strstr(csv, "\n1,pp2=3/1-dp2-tp2-sp-ep4,4,kept,2,20,"), "%s", csv);
    cr_expect(strstr(csv, ",\"TTFT 1 s is over the limit of 0.5 s, really\"\n"), "%s", csv);
    cr_expect(strstr(csv, ",does not fit,"), "%s", csv);
    cr_expect(strstr(csv, ",\"device 0: \"\"out\"\" of memory\"\n"), "%s", csv);
    free(csv);

    json_t *js = sweep_json(&s);
    cr_assert_not_null(js);
    json_t *r = json_object_get(js, "rows");
    cr_assert_eq(json_array_size(r), 6);
    json_t *first = json_array_get(r, 0);
    cr_expect_str_eq(json_string_value(json_object_get(first, "strategy")),
                     "pp2=3/1-dp2-tp2-sp-ep4");
    json_t *deg = json_object_get(first, "degrees");
    cr_expect_eq(json_integer_value(json_object_get(deg, "ep")), 4);
    cr_expect_eq(json_integer_value(json_object_get(deg, "edp")), 1);
    cr_expect_eq(json_array_size(json_object_get(deg, "pp_layers")), 2);
    cr_expect(json_is_true(json_object_get(first, "pareto")));
    cr_expect_eq(json_integer_value(json_object_get(json_object_get(js, "counts"), "kept")), 4);
    json_decref(js);

    /* the plot: gnuplot is a dependency of the tests (./bootstrap --deps) */
    snprintf(path, sizeof path, "%s/s.svg", dir);
    moemu_status_t st = cli_sweep_plot(&s, path, "a 'quoted' title");
    cr_assert_eq(st, MOEMU_OK, "%s", moemu_errmsg());
    char *svg = slurp(path, &len);
    cr_expect_gt(len, 1000);
    cr_expect(strstr(svg, "<svg"), "not an SVG");
    cr_expect(strstr(svg, "Pareto front"), "no legend for the front");
    free(svg);
    cr_expect_eq(entries(dir), 2, "temporary files were left behind");
    unlink(path);

    /* refused names, and a directory that does not exist: nothing left */
    snprintf(path, sizeof path, "%s/s.pdf", dir);
    cr_assert_eq(cli_sweep_plot(&s, path, NULL), MOEMU_ERR_INVALID);
    cr_expect(strstr(moemu_errmsg(), ".svg or .png"), "%s", moemu_errmsg());
    snprintf(path, sizeof path, "%s/no/s.png", dir);
    cr_assert_eq(cli_sweep_plot(&s, path, NULL), MOEMU_ERR_IO);
    cr_expect_eq(entries(dir), 1);
    /* no gnuplot on PATH: an error that names the package */
    snprintf(path, sizeof path, "%s/s.svg", dir);
    cr_assert_eq(setenv("PATH", "/nonexistent", 1), 0);
    cr_assert_eq(cli_sweep_plot(&s, path, NULL), MOEMU_ERR_INVALID);
    cr_expect(strstr(moemu_errmsg(), "gnuplot-nox"), "%s", moemu_errmsg());
    cr_expect_eq(entries(dir), 1);
    snprintf(path, sizeof path, "%s/s.csv", dir);
    unlink(path);
    rmdir(dir);
}
