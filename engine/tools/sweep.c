/* The sweep: enumerate, run each candidate as a dry run, judge, rank,
 * mark the Pareto front; its CSV and JSON. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/outfile.h"
#include "engine/tools/sweep.h"

/* A routing table larger than this is not precomputed: candidates then
 * draw from the routing source themselves (slower, same decisions). */
#define SWEEP_ROUTE_TABLE_MAX ((size_t)1 << 30)

#define SWEEP_MAX_MB 32

static const char *const objective_names[SWEEP_OBJ__COUNT] = {"throughput", "ttft", "latency"};

const char *sweep_objective_name(sweep_objective_t o)
{
    return o >= 0 && o < SWEEP_OBJ__COUNT ? objective_names[o] : "?";
}

moemu_status_t sweep_objective_parse(const char *s, sweep_objective_t *out)
{
    for (int i = 0; i < SWEEP_OBJ__COUNT; i++)
        if (strcmp(s, objective_names[i]) == 0) {
            *out = (sweep_objective_t)i;
            return MOEMU_OK;
        }
    return moemu_fail(MOEMU_ERR_INVALID, "objective '%s': expected throughput, ttft or latency",
                      s);
}

const char *sweep_fate_name(sweep_fate_t f)
{
    switch (f) {
    case SWEEP_KEPT: return "kept";
    case SWEEP_NO_FIT: return "does not fit";
    case SWEEP_MISSED: return "misses constraints";
    }
    return "?";
}

/* Add m to the ascending set mb[0..n) unless it is there or out of
 * range; returns the new size. */
static int mb_add(int *mb, int n, int m, int cap)
{
    if (m < 1 || m > cap || n == SWEEP_MAX_MB) return n;
    int i = 0;
    while (i < n && mb[i] < m) i++;
    if (i < n && mb[i] == m) return n;
    memmove(mb + i + 1, mb + i, sizeof(int) * (size_t)(n - i));
    mb[i] = m;
    return n + 1;
}

int sweep_micro_batches(const par_strategy_t *s, int B, const sweep_opts_t *o, int *mb)
{
    int n = 0;
    if (o->pairs) {
        mb[n++] = 2; /* a replica of fewer sequences runs empty passes */
        return n;
    }
    mb[n++] = 1;
    if (s->pp < 2) return n;
    int cap = B / (s->dp > 0 ? s->dp : 1); /* the smallest replica's sequences */
    switch (o->mb) {
    case SWEEP_MB_LIST:
        for (int i = 0; i < o->n_micro_batches; i++) n = mb_add(mb, n, o->micro_batches[i], cap);
        break;
    case SWEEP_MB_PP:
        n = mb_add(mb, n, s->pp, cap);
        n = mb_add(mb, n, 2 * s->pp, cap);
        break;
    default:
        for (int m = 2; m <= cap; m *= 2) n = mb_add(mb, n, m, cap);
        break;
    }
    return n;
}

/* ---- running one candidate */

/* What every candidate of a sweep shares while it runs (sweep_t.ctx). */
typedef struct sweep_ctx {
    const cfg_model_t *cfg;
    const wl_t *wl;
    const emu_hw_t *hw;
    wts_t w;
    route_src_t src;   /* the routing spec's source */
    route_src_t table; /* its decisions, precomputed once, replayed */
    int *record;       /* the table's storage */
    const route_src_t *route;
    run_prec_t prec;
} sweep_ctx_t;

/* Every decision the runs will ask for, computed once: the decisions
 * are a function of (seed, layer, sequence, position), the same for
 * every strategy, so replaying them gives every run the very decisions
 * (and virtual times) the routing spec would. */
static moemu_status_t route_table(sweep_ctx_t *x)
{
    x->route = &x->src;
    if (x->src.kind == ROUTE_REPLAY) return MOEMU_OK;
    const cfg_model_t *c = x->cfg;
    const wl_t *wl = x->wl;
    size_t n;
    double bytes = 4.0 * c->num_hidden_layers * wl->batch * runner_route_positions(wl) *
                   c->num_experts_per_tok;
    if (bytes > (double)SWEEP_ROUTE_TABLE_MAX) return MOEMU_OK;
    if (!(x->record = route_record_new(c, wl, &n)))
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing table (%.0f bytes)", bytes);
    int L = c->num_hidden_layers, P = runner_route_positions(wl), k = c->num_experts_per_tok;
    int extra = wl->decode > 1 ? wl->decode - 1 : 0;
    for (int l = 0; l < L; l++)
        for (int b = 0; b < wl->batch; b++) {
            int *rec = x->record + ((size_t)l * wl->batch + b) * P * k;
            for (int p = 0; p < wl->len[b] + extra && p < P; p++)
                route_choose(&x->src, l, b, p, rec + (size_t)p * k);
        }
    route_replay_record(&x->table, x->record, c, wl);
    x->route = &x->table;
    return MOEMU_OK;
}

static double max_peak(const report_t *r)
{
    double m = 0;
    for (int i = 0; i < r->devices; i++) m = r->dev[i].mem_peak > m ? r->dev[i].mem_peak : m;
    return m;
}

/* Run row's candidate; a device out of memory marks the row, any other
 * failure is returned. */
static moemu_status_t run_one(sweep_row_t *row, sweep_ctx_t *x)
{
    /* unpinned threads: as fast or faster here (16 devices on 2 cores,
     * most of the time spent meeting in collectives); virtual time does
     * not depend on it */
    runner_opts_t d = {.strategy = row->strategy, .micro_batches = row->micro_batches,
                     .hw = *x->hw, .cluster = {.nodata = true, .no_pin = true}, .dry = true,
                     .routing = x->route, .prec = x->prec};
    model_opts_t mo = {0};
    model_out_t out;
    emu_cluster_t *cl;
    row->capacity = x->hw->spec.mem_capacity;
    moemu_status_t st = runner_generate(&out, &cl, &x->w, x->wl, &d, &mo);
    if (st == MOEMU_ERR_OOM) {
        row->fate = SWEEP_NO_FIT;
        snprintf(row->why, sizeof row->why, "%s", moemu_errmsg());
        moemu_errclear();
        return MOEMU_OK;
    }
    MOEMU_CHECK(st);
    report_t r;
    st = report_build(&r, cl, &out, x->cfg, x->wl, &d, 0);
    if (st == MOEMU_OK) {
        double P = r.devices;
        row->ttft = r.ttft_batch;
        row->tpms_dev = r.total_tpms / P;
        row->prefill_tpms_dev = r.prefill_tpms / P;
        row->decode_tpms_dev = r.decode_tpms / P;
        row->e2e = r.e2e;
        row->mem_peak = max_peak(&r);
        row->comm_share = r.exposed_comm_mean;
        row->bubble = 0;
        for (int s = 0; s < r.stages; s++) row->bubble += r.bubble[s] / r.stages;
        row->imbalance = r.load_max_mean;
        row->busiest = r.busiest_vs_mean;
        report_free(&r);
    }
    model_out_free(&out);
    emu_cluster_destroy(cl);
    return st;
}

void sweep_judge(sweep_row_t *row, const sweep_opts_t *o)
{
    if (row->fate != SWEEP_KEPT) return;
    double limit = (1 - o->memory_headroom) * row->capacity;
    if (o->memory_headroom > 0 && row->mem_peak > limit) {
        row->fate = SWEEP_MISSED;
        snprintf(row->why, sizeof row->why,
                 "memory peak %.3g GB is over (1 - %g) x %.3g GB = %.3g GB", row->mem_peak / 1e9,
                 o->memory_headroom, row->capacity / 1e9, limit / 1e9);
    } else if (o->ttft_max > 0 && row->ttft > o->ttft_max) {
        row->fate = SWEEP_MISSED;
        snprintf(row->why, sizeof row->why, "TTFT %.4g s is over the limit of %g s", row->ttft,
                 o->ttft_max);
    }
}

/* ---- ranking */

static int cmp_num(double a, double b) { return a < b ? -1 : a > b ? 1 : 0; }

static int cmp_rows(const sweep_row_t *a, const sweep_row_t *b, sweep_objective_t obj)
{
    bool ka = a->fate == SWEEP_KEPT, kb = b->fate == SWEEP_KEPT;
    if (ka != kb) return ka ? -1 : 1;
    if (!ka) return cmp_num(a->index, b->index);
    int c = obj == SWEEP_OBJ_TTFT      ? cmp_num(a->ttft, b->ttft)
            : obj == SWEEP_OBJ_LATENCY ? cmp_num(a->e2e, b->e2e)
                                       : cmp_num(b->tpms_dev, a->tpms_dev);
    if (!c) c = cmp_num(a->ttft, b->ttft);
    if (!c) c = cmp_num(b->tpms_dev, a->tpms_dev);
    if (!c) c = cmp_num(a->e2e, b->e2e);
    if (!c) c = cmp_num(a->index, b->index);
    return c;
}

void sweep_mark_pareto(sweep_row_t *rows, int n)
{
    for (int i = 0; i < n; i++) {
        sweep_row_t *a = &rows[i];
        a->pareto = false;
        if (a->fate != SWEEP_KEPT) continue;
        bool dominated = false;
        for (int j = 0; j < n && !dominated; j++) {
            const sweep_row_t *b = &rows[j];
            if (j == i || b->fate != SWEEP_KEPT) continue;
            dominated = b->ttft <= a->ttft && b->tpms_dev >= a->tpms_dev &&
                        (b->ttft < a->ttft || b->tpms_dev > a->tpms_dev);
        }
        a->pareto = !dominated;
    }
}

moemu_status_t sweep_rank(sweep_row_t *rows, int n, sweep_objective_t obj)
{
    /* a bottom-up merge sort: stable, and the order is total anyway */
    sweep_row_t *tmp = n > 1 ? malloc(sizeof *tmp * (size_t)n) : NULL;
    if (n > 1 && !tmp) return moemu_fail(MOEMU_ERR_NOMEM, "cannot rank %d candidates", n);
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, k = lo;
            while (i < mid || j < hi)
                tmp[k++] = j >= hi || (i < mid && cmp_rows(&rows[i], &rows[j], obj) <= 0)
                               ? rows[i++]
                               : rows[j++];
        }
        memcpy(rows, tmp, sizeof *tmp * (size_t)n);
    }
    free(tmp);
    int r = 0;
    for (int i = 0; i < n; i++) rows[i].rank = rows[i].fate == SWEEP_KEPT ? ++r : 0;
    sweep_mark_pareto(rows, n);
    return MOEMU_OK;
}

/* ---- the sweep */

/* Judge a row that ran, count it, report progress. */
static void row_done(sweep_t *out, sweep_row_t *r, const sweep_opts_t *o)
{
    sweep_judge(r, o);
    out->ran++;
    out->no_fit += r->fate == SWEEP_NO_FIT;
    out->missed += r->fate == SWEEP_MISSED;
    out->kept += r->fate == SWEEP_KEPT;
    if (o->progress) o->progress(o->progress_arg, out->ran, out->n_rows, r);
}

moemu_status_t sweep_candidate_run(const sweep_t *s, int i, sweep_row_t *row)
{
    if (!s->ctx || i < 0 || i >= s->n_rows)
        return moemu_fail(MOEMU_ERR_INVALID, "sweep candidate %d: not one of a running sweep's "
                          "%d", i, s->n_rows);
    *row = s->rows[i];
    double t0 = emu_host_seconds();
    moemu_status_t st = run_one(row, s->ctx);
    row->host_s = emu_host_seconds() - t0;
    return st;
}

void sweep_candidate_done(sweep_t *s, const sweep_row_t *row, const sweep_opts_t *o)
{
    sweep_row_t *r = &s->rows[row->index];
    *r = *row;
    row_done(s, r, o);
}

/* Every candidate, one after another, in this thread. */
static moemu_status_t run_here(void *arg, sweep_t *s, const sweep_opts_t *o)
{
    (void)arg;
    sweep_row_t row;
    for (int i = 0; i < s->n_rows; i++) {
        MOEMU_CHECK(sweep_candidate_run(s, i, &row));
        sweep_candidate_done(s, &row, o);
    }
    return MOEMU_OK;
}

bool sweep_uneven_helps(const cfg_model_t *c)
{
    /* one layer's weights against lm_head's, as the devices count them */
    par_strategy_t one;
    par_strategy_default(&one);
    model_place_t p;
    family_of(c)->place(c, &one, 0, &p);
    double layer, head;
    family_of(c)->held(c, &p, &layer, &head);
    return head > layer;
}

static void ctx_free(sweep_ctx_t *x)
{
    route_close(&x->src);
    free(x->record);
    wts_free(&x->w);
}

/* The candidates (strategy x micro-batches) in enumeration order. */
static moemu_status_t enumerate_rows(sweep_t *out, const cfg_model_t *cfg, const wl_t *wl,
                                     int devices, const sweep_opts_t *o)
{
    par_dims_t dims;
    family_of(cfg)->dims(cfg, &dims);
    par_enum_opts_t en = o->enumerate;
    en.even_only = o->uneven == SWEEP_UNEVEN_OFF ||
                   (o->uneven == SWEEP_UNEVEN_AUTO && !sweep_uneven_helps(cfg));
    int ns = par_strategy_enumerate(&dims, devices, &en, NULL, 0);
    if (ns < 1)
        return moemu_fail(MOEMU_ERR_INVALID, "no valid strategy for %s on %d device%s (with the "
                          "restrictions given)", cfg->name, devices, devices == 1 ? "" : "s");
    par_strategy_t *strats = malloc(sizeof *strats * (size_t)ns);
    if (!strats) return moemu_fail(MOEMU_ERR_NOMEM, "cannot hold %d strategies", ns);
    par_strategy_enumerate(&dims, devices, &en, strats, ns);
    int total = 0, mb[SWEEP_MAX_MB];
    for (int i = 0; i < ns; i++) total += sweep_micro_batches(&strats[i], wl->batch, o, mb);
    uint64_t runs = (uint64_t)total * (uint64_t)devices;
    if (o->max_device_runs && runs > o->max_device_runs) {
        free(strats);
        return moemu_fail(MOEMU_ERR_INVALID, "max device runs %llu: %d candidates (strategy x "
                          "micro-batches) of %d devices each make %llu device runs; narrow "
                          "the enumeration or raise the bound",
                          (unsigned long long)o->max_device_runs, total, devices,
                          (unsigned long long)runs);
    }
    sweep_row_t *rows = calloc((size_t)total, sizeof *rows);
    if (!rows) {
        free(strats);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot hold %d candidates", total);
    }
    int n = 0;
    for (int i = 0; i < ns; i++) {
        int k = sweep_micro_batches(&strats[i], wl->batch, o, mb);
        for (int j = 0; j < k; j++, n++) {
            rows[n].strategy = strats[i];
            par_strategy_format(&strats[i], rows[n].name, sizeof rows[n].name);
            rows[n].micro_batches = mb[j];
            rows[n].index = n;
        }
    }
    free(strats);
    out->rows = rows;
    out->n_rows = total;
    out->strategies = ns;
    return MOEMU_OK;
}

static moemu_status_t check_opts(const sweep_opts_t *o)
{
    if (!(o->memory_headroom >= 0 && o->memory_headroom < 1))
        return moemu_fail(MOEMU_ERR_INVALID, "memory headroom %g: expected a fraction in [0, 1)",
                          o->memory_headroom);
    if (!(o->ttft_max >= 0) || !isfinite(o->ttft_max))
        return moemu_fail(MOEMU_ERR_INVALID, "TTFT limit %g s: expected a number >= 0",
                          o->ttft_max);
    if (o->objective < 0 || o->objective >= SWEEP_OBJ__COUNT)
        return moemu_fail(MOEMU_ERR_INVALID, "objective %d: no such objective", (int)o->objective);
    return MOEMU_OK;
}

moemu_status_t sweep_run(sweep_t *out, const cfg_model_t *cfg, const wl_t *wl,
                         const emu_hw_t *hw, int devices, const sweep_opts_t *o)
{
    memset(out, 0, sizeof *out);
    out->objective = o->objective;
    MOEMU_CHECK(check_opts(o));
    sweep_opts_t po = *o;
    if (hw->spec.stack.overlap == EMU_OVERLAP_TWO_BATCH) {
        po.pairs = true;
        po.enumerate.max_pp = 1;
        o = &po;
    }
    MOEMU_CHECK(enumerate_rows(out, cfg, wl, devices, o));
    sweep_ctx_t x = {.cfg = cfg, .wl = wl, .hw = hw, .prec = o->prec};
    moemu_status_t st = wts_address_only(&x.w, cfg);
    if (st == MOEMU_OK)
        st = route_open(&x.src, o->routing ? o->routing : "uniform", cfg, wl, o->seed);
    if (st == MOEMU_OK) st = route_table(&x);
    if (st == MOEMU_OK) {
        out->ctx = &x;
        st = o->exec ? o->exec(o->exec_arg, out, o) : run_here(NULL, out, o);
        out->ctx = NULL;
    }
    ctx_free(&x);
    if (st == MOEMU_OK && out->ran < out->n_rows)
        st = moemu_fail(MOEMU_ERR_INTERNAL, "sweep: %d of %d candidates ran", out->ran,
                        out->n_rows);
    if (st == MOEMU_OK) st = sweep_rank(out->rows, out->n_rows, o->objective);
    if (st != MOEMU_OK) sweep_free(out);
    return st;
}

void sweep_free(sweep_t *s)
{
    free(s->rows);
    memset(s, 0, sizeof *s);
}

/* ---- outputs */

/* A CSV field: quoted when it holds a comma, a quote or a line break. */
static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static moemu_status_t fill_csv(FILE *f, const void *arg)
{
    const sweep_t *s = arg;
    fprintf(f, "rank,strategy,micro_batches,fate,ttft_ms,tokens_per_ms_per_device,"
               "prefill_tokens_per_ms_per_device,decode_tokens_per_ms_per_device,e2e_ms,"
               "memory_peak_gb,memory_capacity_gb,memory_fraction,comm_share,bubble,"
               "expert_max_over_mean,busiest_device_vs_mean,pareto,host_s,reason\n");
    for (int i = 0; i < s->n_rows; i++) {
        const sweep_row_t *r = &s->rows[i];
        fprintf(f, "%d,%s,%d,", r->rank, r->name, r->micro_batches);
        csv_field(f, sweep_fate_name(r->fate));
        fprintf(f, ",%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g,%.6g,%.6g,%.6g,%d,%.3f,",
                1e3 * r->ttft, r->tpms_dev, r->prefill_tpms_dev, r->decode_tpms_dev, 1e3 * r->e2e,
                r->mem_peak / 1e9, r->capacity / 1e9,
                r->capacity > 0 ? r->mem_peak / r->capacity : 0, r->comm_share, r->bubble,
                r->imbalance, r->busiest, r->pareto, r->host_s);
        csv_field(f, r->why);
        fputc('\n', f);
    }
    return MOEMU_OK;
}

moemu_status_t sweep_csv(const sweep_t *s, const char *path)
{
    return outfile_write(path, fill_csv, s);
}

json_t *sweep_json(const sweep_t *s)
{
    json_t *rows = json_array();
    for (int i = 0; i < s->n_rows; i++) {
        const sweep_row_t *r = &s->rows[i];
        json_t *pl = json_null();
        if (r->strategy.n_pp_layers > 0) {
            pl = json_array();
            for (int k = 0; k < r->strategy.n_pp_layers; k++)
                json_array_append_new(pl, json_integer(r->strategy.pp_layers[k]));
        }
        json_array_append_new(
            rows,
            json_pack("{s:i, s:s, s:{s:i, s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:o}, s:i, s:s, "
                      "s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:b}",
                      "rank", r->rank, "strategy", r->name, "degrees", "pp", r->strategy.pp,
                      "dp", r->strategy.dp, "cp", r->strategy.cp, "tp", r->strategy.tp, "sp",
                      r->strategy.sp, "ep", r->strategy.ep, "etp", r->strategy.etp, "edp",
                      par_strategy_edp(&r->strategy), "pp_layers", pl, "micro_batches",
                      r->micro_batches, "fate", sweep_fate_name(r->fate), "reason", r->why,
                      "ttft_s", r->ttft, "tokens_per_ms_per_device", r->tpms_dev,
                      "prefill_tokens_per_ms_per_device", r->prefill_tpms_dev,
                      "decode_tokens_per_ms_per_device", r->decode_tpms_dev, "e2e_s", r->e2e,
                      "memory_peak_bytes", r->mem_peak, "memory_capacity_bytes", r->capacity,
                      "comm_share", r->comm_share, "bubble", r->bubble, "expert_max_over_mean",
                      r->imbalance, "busiest_device_vs_mean", r->busiest, "pareto", r->pareto));
    }
    return json_pack("{s:s, s:{s:i, s:i, s:i, s:i, s:i}, s:o}", "objective",
                     sweep_objective_name(s->objective), "counts", "strategies", s->strategies,
                     "ran", s->ran, "do_not_fit", s->no_fit, "miss_constraints", s->missed,
                     "kept", s->kept, "rows", rows);
}
