/* The performance report: figures from the devices' clocks and counters,
 * the tokens' times and the experts' load. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/outfile.h"
#include "engine/tools/report.h"

static double sum_kernels(const emu_dev_t *d, int what)
{
    double s = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) {
        const emu_kernel_stats_t *st = emu_dev_kernel_stats(d, k);
        s += what == 0 ? st->compute_time : what == 1 ? st->memory_time
             : what == 2 ? st->flops : what == 3 ? st->bytes : st->fp8_flops;
    }
    return s;
}

/* One device's figures; its communication is summed into r's. */
static void build_dev(report_t *r, emu_dev_t *d, int i, int per_stage, const model_out_t *out)
{
    const emu_spec_t *sp = emu_dev_spec(d);
    report_dev_t *v = &r->dev[i];
    v->rank = i;
    v->node = emu_dev_node(d);
    v->stage = i / per_stage;
    v->clock = emu_dev_clock(d);
    v->compute = sum_kernels(d, 0);
    v->memory = sum_kernels(d, 1);
    v->flops = sum_kernels(d, 2);
    v->bytes = sum_kernels(d, 3);
    v->comm = emu_dev_comm_time(d);
    v->idle = emu_dev_idle_time(d);
    v->host = emu_dev_host_time(d);
    emu_overlap_t ov = emu_dev_overlap(d);
    v->overlapped = ov.comm + ov.idle;
    v->overlapped_comm = ov.comm;
    /* FP8 FLOPs count against the FP8 peak */
    double f8 = sum_kernels(d, 4);
    v->mfu = v->clock <= 0 ? 0
             : f8 > 0  ? ((v->flops - f8) / sp->peak_flops + f8 / sp->peak_flops_fp8) / v->clock
                       : v->flops / (v->clock * sp->peak_flops);
    v->bw_util = v->clock > 0 ? v->bytes / (v->clock * sp->mem_bw) : 0;
    for (int m = 0; m < EMU_MEM__COUNT; m++) v->mem[m] = emu_mem_peak(d, m);
    v->mem_peak = emu_mem_total_peak(d);
    v->capacity = sp->mem_capacity;
    for (int l = 0; l < EMU_LINK__COUNT; l++) {
        v->recv_idle += emu_dev_comm_stats(d, EMU_COLL_RECV, l)->idle;
        for (int k = 0; k < EMU_COLL__COUNT; k++) {
            const emu_comm_stats_t *c = emu_dev_comm_stats(d, k, l);
            r->comm[k][l].calls += (double)c->calls;
            r->comm[k][l].bytes += c->bytes;
            r->comm[k][l].time += c->time;
            r->comm_bytes += c->bytes;
        }
    }
    r->comm_time += v->comm;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) r->kernel_time[k] += emu_dev_kernel_stats(d, k)->time;
    double xd = out->moe_xfer ? out->moe_xfer[2 * i].time : 0,
           xc = out->moe_xfer ? out->moe_xfer[2 * i + 1].time : 0;
    r->dispatch += xd;
    r->combine += xc;
    r->other_comm += v->comm + v->idle - xd - xc;
    r->overlapped += v->overlapped;
    r->host += v->host;
    v->expert_rows = out->device_rows ? out->device_rows[i] : 0;
    r->e2e = v->clock > r->e2e ? v->clock : r->e2e;
}

/* Calls in a device's layers per (layer x pass), over both kinds of
 * pass. */
static double layer_calls(const model_coll_t *c)
{
    double calls = 0, lp = 0;
    for (int ph = 0; ph < 2; ph++) {
        for (int k = 0; k < EMU_COLL__COUNT; k++) calls += c[ph].layers_all.calls[k];
        lp += c[ph].layers * c[ph].passes;
    }
    return lp > 0 ? calls / lp : 0;
}

/* The device whose layers issue the most calls per layer and pass (the
 * lowest rank of equals), and its counts. */
static void build_coll(report_t *r, const model_out_t *out)
{
    if (!out->coll) return;
    for (int i = 1; i < r->devices; i++)
        if (layer_calls(out->coll + 2 * i) > layer_calls(out->coll + 2 * r->coll_dev))
            r->coll_dev = i;
    memcpy(r->coll, out->coll + 2 * r->coll_dev, sizeof r->coll);
}

/* Latency from the tokens' times, throughput from it. */
static void build_latency(report_t *r, const model_out_t *out)
{
    int B = r->batch, N = r->decode;
    if (N > 0) {
        r->ttft_min = INFINITY;
        double sum_tpot = 0;
        for (int b = 0; b < B; b++) {
            double first = out->token_time[(size_t)b * N];
            r->ttft[b] = first;
            r->ttft_batch = first > r->ttft_batch ? first : r->ttft_batch;
            r->ttft_min = first < r->ttft_min ? first : r->ttft_min;
            r->ttft_mean += first / B;
            r->ttft_max = r->ttft_batch;
            if (N > 1) sum_tpot += (out->token_time[(size_t)b * N + N - 1] - first) / (N - 1);
        }
        r->tpot = N > 1 ? sum_tpot / B : 0;
    }
    if (r->ttft_batch > 0) r->prefill_tpms = (double)r->prompt_tokens / (1e3 * r->ttft_batch);
    if (N > 1 && r->e2e > r->ttft_batch)
        r->decode_tpms = (double)B * (N - 1) / (1e3 * (r->e2e - r->ttft_batch));
    if (r->e2e > 0)
        r->total_tpms = (double)(r->prompt_tokens + r->generated_tokens) / (1e3 * r->e2e);
}

/* Communication that no computation overlapped (all of it unless the
 * engine overlaps, emu.h "Streams"), and the bubbles: waiting for the
 * previous stage, and done before the end. */
static void build_overlap(report_t *r, int per_stage)
{
    int n = r->devices;
    r->exposed_comm_mean = 0;
    for (int i = 0; i < n && r->e2e > 0; i++) {
        double f = (r->dev[i].comm - r->dev[i].overlapped_comm) / r->e2e;
        r->exposed_comm_mean += f / n;
        r->exposed_comm_max = f > r->exposed_comm_max ? f : r->exposed_comm_max;
    }
    for (int i = 0; i < n && r->e2e > 0; i++) {
        const report_dev_t *v = &r->dev[i];
        r->bubble[v->stage] += (v->recv_idle + (r->e2e - v->clock)) / r->e2e / per_stage;
    }
}

/* Tokens per expert over every (MoE layer, expert), the worst layer, and
 * the busiest device; a dense layer routes nothing and counts for none. */
static void build_load(report_t *r, const model_out_t *out, const cfg_model_t *cfg)
{
    r->load = out->expert_load;
    r->assignments = out->assignments;
    r->dropped = out->dropped;
    int L = r->layers, E = r->experts, n = r->devices, Lm = cfg_moe_layers(cfg);
    double all_sum = 0, all_sq = 0, all_max = 0;
    r->load_worst_layer = -1;
    for (int l = 0; l < L; l++) {
        if (cfg_layer_dense(cfg, l)) continue;
        double sum = 0, mx = 0;
        for (int e = 0; e < E; e++) {
            double x = (double)out->expert_load[(size_t)l * E + e];
            sum += x;
            all_sq += x * x;
            mx = x > mx ? x : mx;
        }
        all_sum += sum;
        all_max = mx > all_max ? mx : all_max;
        double ratio = sum > 0 ? mx / (sum / E) : 0;
        if (ratio > r->load_worst_layer_max_mean) {
            r->load_worst_layer_max_mean = ratio;
            r->load_worst_layer = l;
        }
    }
    double mean = Lm > 0 ? all_sum / ((double)Lm * E) : 0;
    r->load_max_mean = mean > 0 ? all_max / mean : 0;
    double var = Lm > 0 ? all_sq / ((double)Lm * E) - mean * mean : 0;
    r->load_cv = mean > 0 ? sqrt(var > 0 ? var : 0) / mean : 0;
    double rows_mean = 0;
    for (int i = 0; i < n; i++) {
        rows_mean += (double)r->dev[i].expert_rows / n;
        if (r->dev[i].expert_rows > r->dev[r->busiest].expert_rows) r->busiest = i;
    }
    r->busiest_vs_mean = rows_mean > 0 ? (double)r->dev[r->busiest].expert_rows / rows_mean : 0;
}

/* ---- Every figure finite: jansson refuses a non-finite real (the JSON
 * report came out empty) and printf shows inf or nan, so such a figure is
 * an error that names it by its JSON key. */

static moemu_status_t not_finite(const char *name, double v)
{
    return moemu_fail(MOEMU_ERR_INVALID, "report: %s is %g, not a finite number", name, v);
}

typedef struct {
    const char *name;
    double v;
} figure_t;

/* The index of the first figure that is not finite, or -1. */
static int first_not_finite(const figure_t *f, int n)
{
    for (int i = 0; i < n; i++)
        if (!isfinite(f[i].v)) return i;
    return -1;
}

static moemu_status_t check_figures(const figure_t *f, int n)
{
    int i = first_not_finite(f, n);
    return i < 0 ? MOEMU_OK : not_finite(f[i].name, f[i].v);
}

/* The figures of the run as a whole, in the JSON report's order. */
static moemu_status_t check_run_figures(const report_t *r)
{
    const figure_t f[] = {
        {"latency.ttft_batch_s", r->ttft_batch}, {"latency.ttft_min_s", r->ttft_min},
        {"latency.ttft_mean_s", r->ttft_mean}, {"latency.ttft_max_s", r->ttft_max},
        {"latency.tpot_s", r->tpot}, {"latency.e2e_s", r->e2e},
        {"throughput_tokens_per_ms.prefill", r->prefill_tpms},
        {"throughput_tokens_per_ms.decode", r->decode_tpms},
        {"throughput_tokens_per_ms.total", r->total_tpms},
        {"communication.bytes", r->comm_bytes}, {"communication.time_s", r->comm_time},
        {"communication.exposed_fraction_mean", r->exposed_comm_mean},
        {"communication.exposed_fraction_max", r->exposed_comm_max},
        {"expert_load.max_over_mean", r->load_max_mean}, {"expert_load.cv", r->load_cv},
        {"expert_load.worst_layer_max_over_mean", r->load_worst_layer_max_mean},
        {"expert_load.busiest_vs_mean", r->busiest_vs_mean},
        {"scaling.one_device_s", r->t1}, {"scaling.speedup", r->speedup},
        {"scaling.efficiency", r->efficiency},
    };
    return check_figures(f, (int)(sizeof f / sizeof f[0]));
}

static moemu_status_t check_dev_figures(const report_dev_t *v, int i)
{
    const figure_t f[] = {
        {"clock_s", v->clock}, {"compute_s", v->compute}, {"memory_s", v->memory},
        {"comm_s", v->comm}, {"idle_s", v->idle}, {"host_s", v->host},
        {"overlapped_s", v->overlapped}, {"flops", v->flops}, {"bytes", v->bytes},
        {"mfu", v->mfu}, {"bw_util", v->bw_util}, {"memory_bytes.peak", v->mem_peak},
        {"memory_bytes.capacity", v->capacity},
    };
    char name[96];
    int j = first_not_finite(f, (int)(sizeof f / sizeof f[0]));
    if (j >= 0) {
        snprintf(name, sizeof name, "devices_detail[%d].%s", i, f[j].name);
        return not_finite(name, f[j].v);
    }
    for (int m = 0; m < EMU_MEM__COUNT; m++)
        if (!isfinite(v->mem[m])) {
            snprintf(name, sizeof name, "devices_detail[%d].memory_bytes.%s", i, emu_mem_name(m));
            return not_finite(name, v->mem[m]);
        }
    return MOEMU_OK;
}

/* Per sequence, device, collective and stage, named with the index. */
static moemu_status_t check_list_figures(const report_t *r)
{
    char name[96];
    for (int b = 0; b < r->batch; b++)
        if (!isfinite(r->ttft[b])) {
            snprintf(name, sizeof name, "latency.ttft_per_sequence_s[%d]", b);
            return not_finite(name, r->ttft[b]);
        }
    for (int i = 0; i < r->devices; i++) MOEMU_CHECK(check_dev_figures(&r->dev[i], i));
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) {
            const report_comm_t *c = &r->comm[k][l];
            if (isfinite(c->calls) && isfinite(c->bytes) && isfinite(c->time)) continue;
            snprintf(name, sizeof name, "communication.by_kind %s %s", emu_coll_name(k),
                     emu_link_name(l));
            return not_finite(name, !isfinite(c->calls) ? c->calls
                                    : !isfinite(c->bytes) ? c->bytes : c->time);
        }
    for (int s = 0; s < r->stages; s++)
        if (!isfinite(r->bubble[s])) {
            snprintf(name, sizeof name, "pipeline_bubble[%d]", s);
            return not_finite(name, r->bubble[s]);
        }
    return MOEMU_OK;
}

moemu_status_t report_build(report_t *r, emu_cluster_t *cl, const model_out_t *out,
                            const cfg_model_t *cfg, const wl_t *wl, const runner_opts_t *o,
                            double t1)
{
    memset(r, 0, sizeof *r);
    const par_strategy_t *s = &o->strategy;
    int n = emu_cluster_size(cl), B = wl->batch;
    r->devices = n;
    r->stages = s->pp;
    r->batch = B;
    r->decode = wl->decode;
    r->layers = cfg->num_hidden_layers;
    r->experts = cfg->num_local_experts;
    r->prompt_tokens = wl_prompt_tokens(wl);
    r->generated_tokens = (int64_t)B * wl->decode;
    par_strategy_format(s, r->strategy, sizeof r->strategy);
    snprintf(r->hw, sizeof r->hw, "%s", o->hw.name);
    r->dev = calloc((size_t)n, sizeof *r->dev);
    r->ttft = calloc((size_t)B + 1, sizeof(double));
    r->bubble = calloc((size_t)s->pp, sizeof(double));
    if (!r->dev || !r->ttft || !r->bubble) {
        report_free(r);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the report of %d devices", n);
    }
    int per_stage = n / s->pp;
    for (int i = 0; i < n; i++) build_dev(r, emu_cluster_dev(cl, i), i, per_stage, out);
    build_latency(r, out);
    build_overlap(r, per_stage);
    build_load(r, out, cfg);
    build_coll(r, out);
    r->t1 = t1;
    if (t1 > 0 && r->e2e > 0) {
        r->speedup = t1 / r->e2e;
        r->efficiency = r->speedup / n;
    }
    moemu_status_t st = check_run_figures(r);
    if (st == MOEMU_OK) st = check_list_figures(r);
    if (st != MOEMU_OK) report_free(r);
    return st;
}

void report_free(report_t *r)
{
    free(r->load_owned);
    free(r->dev);
    free(r->ttft);
    free(r->bubble);
    memset(r, 0, sizeof *r);
}

/* The reference's run: one device of main's kind, a dry run in main's
 * routing groups. */
static void one_device_opts(runner_opts_t *o, const runner_opts_t *main)
{
    runner_opts_one_device(o, &main->hw, main->strategy.dp, main->micro_batches);
    o->cluster.nodata = true;
    o->dry = true;
}

moemu_status_t report_one_device_need(emu_need_t *need, const cfg_model_t *cfg, const wl_t *wl,
                                      const runner_opts_t *main, bool prompt_logits)
{
    runner_opts_t o;
    one_device_opts(&o, main);
    route_src_t src; /* its shape only: the record it replays is not made yet */
    route_replay_record(&src, NULL, cfg, wl);
    o.routing = main->routing ? main->routing : &src;
    model_opts_t mo = {.prompt_logits = prompt_logits};
    return runner_host_need(need, cfg, wl, &o, &mo);
}

moemu_status_t report_one_device(double *t1, const wts_t *w, const wl_t *wl,
                                 const runner_opts_t *main, int *record, bool prompt_logits)
{
    runner_opts_t o;
    one_device_opts(&o, main);
    route_src_t src;
    if (record) route_replay_record(&src, record, &w->cfg, wl);
    /* a dry run's source is a function of the token: the same choices as
     * its record would hold, without a record as large as the tokens */
    o.routing = record ? &src : main->routing;
    model_opts_t mo = {.prompt_logits = prompt_logits};
    model_out_t out;
    emu_cluster_t *cl;
    MOEMU_CHECK(runner_generate(&out, &cl, w, wl, &o, &mo));
    *t1 = emu_dev_clock(emu_cluster_dev(cl, 0));
    model_out_free(&out);
    emu_cluster_destroy(cl);
    return MOEMU_OK;
}

moemu_status_t report_dry_run(report_t *r, const cfg_model_t *cfg, const wl_t *wl,
                              const runner_opts_t *o, const char *routing, uint64_t seed,
                              bool scaling)
{
    memset(r, 0, sizeof *r);
    wts_t w;
    route_src_t src;
    model_out_t out = {0};
    emu_cluster_t *cl = NULL;
    double t1 = 0;
    MOEMU_CHECK(wts_address_only(&w, cfg));
    moemu_status_t st = route_open(&src, routing, cfg, wl, seed);
    if (st != MOEMU_OK) {
        wts_free(&w);
        return st;
    }
    runner_opts_t d = *o;
    d.dry = true;
    d.routing = &src;
    d.cluster.nodata = true;
    model_opts_t mo = {0};
    if (st == MOEMU_OK) st = runner_generate(&out, &cl, &w, wl, &d, &mo);
    if (st == MOEMU_OK && scaling) st = report_one_device(&t1, &w, wl, &d, NULL, false);
    if (st == MOEMU_OK) st = report_build(r, cl, &out, cfg, wl, &d, t1);
    /* the report keeps the load matrix: hand it over */
    if (st == MOEMU_OK) {
        r->load_owned = out.expert_load;
        out.expert_load = NULL;
    }
    model_out_free(&out);
    emu_cluster_destroy(cl);
    route_close(&src);
    wts_free(&w);
    return st;
}

moemu_status_t report_dry_run_unlimited(report_t *r, const cfg_model_t *cfg, const wl_t *wl,
                                        const runner_opts_t *o, const char *routing,
                                        uint64_t seed, bool scaling, char *oom, size_t n)
{
    oom[0] = '\0';
    moemu_status_t st = report_dry_run(r, cfg, wl, o, routing, seed, scaling);
    if (st != MOEMU_ERR_OOM) return st;
    snprintf(oom, n, "%s", moemu_errmsg());
    moemu_errclear();
    runner_opts_t d = *o;
    d.cluster.no_limit = true;
    return report_dry_run(r, cfg, wl, &d, routing, seed, scaling);
}

static const char *gb(double bytes, char buf[32])
{
    snprintf(buf, 32, "%.2f", bytes / 1e9);
    return buf;
}

/* The parts of where the time goes, in the order shown. */
typedef struct {
    const char *name;
    double sum; /* over devices, seconds */
} report_part_t;

static int report_parts(const report_t *r, report_part_t *p)
{
    int n = 0;
    for (int k = 0; k < EMU_KERNEL__COUNT; k++)
        p[n++] = (report_part_t){emu_kernel_name(k), r->kernel_time[k]};
    p[n++] = (report_part_t){"moe dispatch", r->dispatch};
    p[n++] = (report_part_t){"moe combine", r->combine};
    p[n++] = (report_part_t){"other comm+idle", r->other_comm};
    if (r->host > 0) p[n++] = (report_part_t){"host", r->host};
    if (r->overlapped > 0) p[n++] = (report_part_t){"beside kernels", -r->overlapped};
    return n;
}

/* Each part's mean per device and share of the mean clock. */
static void print_parts(const report_t *r, FILE *f)
{
    report_part_t p[EMU_KERNEL__COUNT + 5];
    int n = report_parts(r, p);
    double clocks = 0;
    for (int i = 0; i < r->devices; i++) clocks += r->dev[i].clock;
    fprintf(f, "where the time goes (mean per device; kernels by kind, then the MoE dispatch and "
               "combine all-to-all with their waiting, then the other collectives and waiting, "
               "then the engine's host work)\n");
    for (int i = 0; i < n; i++)
        fprintf(f, "  %-16s %12.3f ms %6.1f%%\n", p[i].name, 1e3 * p[i].sum / r->devices,
                clocks > 0 ? 100 * p[i].sum / clocks : 0);
}

/* ---- Collectives per layer and pass (docs/report.md) */

/* Calls of kind k per (layer x pass) of c: part 0 all in the layers, 1
 * the MoE dispatch's, 2 the combine's. */
static double coll_per_layer(const model_coll_t *c, int k, int part)
{
    double lp = c->layers * c->passes;
    const layer_xfer_t *x = part == 0 ? &c->layers_all : &c->moe[part - 1];
    return lp > 0 ? x->calls[k] / lp : 0;
}

/* Calls of kind k outside the layers (embedding, lm_head, pipeline) per
 * pass. */
static double coll_outside(const model_coll_t *c, int k)
{
    return c->passes > 0 ? (c->pass.calls[k] - c->layers_all.calls[k]) / c->passes : 0;
}

/* Bytes the device sent per call of kind k in its layers, the mean: of
 * all of them (part 0), the dispatch's (1), the combine's (2). */
static double coll_bytes_per_call(const model_coll_t *c, int k, int part)
{
    const layer_xfer_t *x = part == 0 ? &c->layers_all : &c->moe[part - 1];
    return x->calls[k] > 0 ? x->bytes[k] / x->calls[k] : 0;
}

/* A count: whole when it is, else with one decimal. */
static const char *fmt_count(double x, char buf[32])
{
    snprintf(buf, 32, fabs(x - round(x)) < 1e-9 ? "%.0f" : "%.1f", x);
    return buf;
}

/* "all-gather 3 (dispatch 2), reduce-scatter 1 (combine 1)", or "none". */
static void fmt_coll(const model_coll_t *c, char *buf, size_t n)
{
    static const char *part[] = {"dispatch", "combine"};
    size_t at = 0;
    char a[32];
    buf[0] = 0;
    for (int k = 0; k < EMU_COLL__COUNT && at < n; k++) {
        double x = coll_per_layer(c, k, 0);
        if (x == 0) continue;
        at += (size_t)snprintf(buf + at, n - at, "%s%s %s", at ? ", " : "", emu_coll_name(k),
                               fmt_count(x, a));
        int open = 0;
        for (int i = 0; i < 2 && at < n; i++) {
            double y = coll_per_layer(c, k, i + 1);
            if (y == 0) continue;
            at += (size_t)snprintf(buf + at, n - at, "%s%s %s", open++ ? ", " : " (", part[i],
                                   fmt_count(y, a));
        }
        if (open && at < n) at += (size_t)snprintf(buf + at, n - at, ")");
    }
    if (!at) snprintf(buf, n, "none");
}

/* One line for prefill and decode when they issue the same, else one
 * each. */
static void print_coll(const report_t *r, FILE *f)
{
    const model_coll_t *c = r->coll;
    if (c[0].passes + c[1].passes == 0) return;
    char p[512], d[512];
    fmt_coll(&c[0], p, sizeof p);
    fmt_coll(&c[1], d, sizeof d);
    fprintf(f, "  collectives per layer and pass (one device, %d: calls in its %.0f layers / "
               "(layers x passes); embedding, lm_head and pipeline not counted)\n",
            r->coll_dev, c[0].layers > c[1].layers ? c[0].layers : c[1].layers);
    if (c[1].passes == 0) fprintf(f, "    prefill: %s\n", p);
    else if (c[0].passes == 0) fprintf(f, "    decode: %s\n", d);
    else if (!strcmp(p, d)) fprintf(f, "    prefill and decode: %s\n", p);
    else fprintf(f, "    prefill: %s\n    decode:  %s\n", p, d);
}

static json_t *coll_json(const model_coll_t *c)
{
    json_t *kinds = json_object(), *outside = json_object();
    for (int k = 0; k < EMU_COLL__COUNT; k++) {
        if (coll_per_layer(c, k, 0) > 0)
            json_object_set_new(kinds, emu_coll_name(k),
                                json_pack("{s:f, s:f, s:f, s:f, s:f, s:f}", "calls",
                                          coll_per_layer(c, k, 0), "dispatch",
                                          coll_per_layer(c, k, 1), "combine",
                                          coll_per_layer(c, k, 2), "bytes_per_call",
                                          coll_bytes_per_call(c, k, 0),
                                          "dispatch_bytes_per_call",
                                          coll_bytes_per_call(c, k, 1),
                                          "combine_bytes_per_call",
                                          coll_bytes_per_call(c, k, 2)));
        if (coll_outside(c, k) > 0)
            json_object_set_new(outside, emu_coll_name(k), json_real(coll_outside(c, k)));
    }
    return json_pack("{s:f, s:o, s:o}", "passes", c->passes, "per_layer", kinds,
                     "outside_layers_per_pass", outside);
}

void report_print(const report_t *r, FILE *f)
{
    char a[32], b[32], c[32], d[32], e[32], g[32];
    fprintf(f, "\nreport: %s on %d devices of %s (virtual time)\n", r->strategy, r->devices,
            r->hw);
    fprintf(f, "latency\n");
    fprintf(f, "  time to first token, batch   %10.3f ms  (per sequence: min %.3f, mean %.3f, "
               "max %.3f)\n", 1e3 * r->ttft_batch, 1e3 * r->ttft_min, 1e3 * r->ttft_mean,
            1e3 * r->ttft_max);
    fprintf(f, "  time per output token        %10.3f ms\n", 1e3 * r->tpot);
    fprintf(f, "  end to end                   %10.3f ms\n", 1e3 * r->e2e);
    fprintf(f, "throughput (tokens/ms)           overall  per device\n");
    fprintf(f, "  prefill                      %10.2f  %10.3f\n", r->prefill_tpms,
            r->prefill_tpms / r->devices);
    fprintf(f, "  decode                       %10.2f  %10.3f\n", r->decode_tpms,
            r->decode_tpms / r->devices);
    fprintf(f, "  all tokens                   %10.2f  %10.3f\n", r->total_tpms,
            r->total_tpms / r->devices);
    fprintf(f, "devices (ms; clock = compute + memory + comm + idle + host; memory in GB)\n");
    fprintf(f, "  %4s %4s %5s %10s %9s %9s %9s %9s %9s %6s %6s %8s %8s %8s %8s %8s %8s\n",
            "dev", "node", "stage", "clock", "compute", "memory", "comm", "idle", "host", "MFU",
            "BW", "weights", "kv", "act", "comm", "peak", "capacity");
    for (int i = 0; i < r->devices; i++) {
        const report_dev_t *v = &r->dev[i];
        fprintf(f, "  %4d %4d %5d %10.3f %9.3f %9.3f %9.3f %9.3f %9.3f %5.1f%% %5.1f%% %8s %8s "
                   "%8s %8s %8s %8s\n",
                v->rank, v->node, v->stage, 1e3 * v->clock, 1e3 * v->compute, 1e3 * v->memory,
                1e3 * v->comm, 1e3 * v->idle, 1e3 * v->host, 100 * v->mfu, 100 * v->bw_util,
                gb(v->mem[EMU_MEM_WEIGHTS], a), gb(v->mem[EMU_MEM_KV], b),
                gb(v->mem[EMU_MEM_ACT], c), gb(v->mem[EMU_MEM_COMM], d), gb(v->mem_peak, e),
                gb(v->capacity, g));
    }
    fprintf(f, "communication (all devices)      calls       bytes     time ms\n");
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++) {
            const report_comm_t *m = &r->comm[k][l];
            if (m->calls == 0) continue;
            fprintf(f, "  %-14s %-10s %10.0f %11s %11.3f\n", emu_coll_name(k), emu_link_name(l),
                    m->calls, emu_fmt_bytes(m->bytes, a), 1e3 * m->time);
        }
    print_coll(r, f);
    fprintf(f, "  communication not overlapped by computation: %.1f%% of end to end "
               "(mean over devices; max %.1f%%)\n", 100 * r->exposed_comm_mean,
            100 * r->exposed_comm_max);
    print_parts(r, f);
    fprintf(f, "pipeline bubble per stage:");
    for (int s = 0; s < r->stages; s++) fprintf(f, " %d: %.1f%%", s, 100 * r->bubble[s]);
    fprintf(f, "\nexpert load\n");
    fprintf(f, "  assignments %lld, dropped %lld (%.2f%%)\n", (long long)r->assignments,
            (long long)r->dropped, r->assignments ? 100.0 * r->dropped / r->assignments : 0);
    fprintf(f, "  tokens per expert: max/mean %.2f, coefficient of variation %.3f; worst layer "
               "%d (max/mean %.2f)\n", r->load_max_mean, r->load_cv, r->load_worst_layer,
            r->load_worst_layer_max_mean);
    fprintf(f, "  busiest device %d: %lld expert rows, %.2f x the mean\n", r->busiest,
            (long long)r->dev[r->busiest].expert_rows, r->busiest_vs_mean);
    if (r->t1 > 0)
        fprintf(f, "scaling: one device %.3f ms; speedup %.2f on %d devices, efficiency %.1f%%\n",
                1e3 * r->t1, r->speedup, r->devices, 100 * r->efficiency);
}

json_t *report_json(const report_t *r)
{
    json_t *devs = json_array(), *comm = json_array(), *load = json_array(),
           *bubble = json_array(), *ttft = json_array();
    for (int i = 0; i < r->devices; i++) {
        const report_dev_t *v = &r->dev[i];
        json_t *mem = json_object();
        for (int m = 0; m < EMU_MEM__COUNT; m++)
            json_object_set_new(mem, emu_mem_name(m), json_real(v->mem[m]));
        json_object_set_new(mem, "peak", json_real(v->mem_peak));
        json_object_set_new(mem, "capacity", json_real(v->capacity));
        json_array_append_new(
            devs, json_pack("{s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, "
                            "s:f, s:o, s:I}",
                            "rank", v->rank, "node", v->node, "stage", v->stage, "clock_s",
                            v->clock, "compute_s", v->compute, "memory_s", v->memory, "comm_s",
                            v->comm, "idle_s", v->idle, "host_s", v->host, "overlapped_s",
                            v->overlapped,
                            "flops", v->flops, "bytes", v->bytes,
                            "mfu", v->mfu, "bw_util", v->bw_util, "memory_bytes", mem,
                            "expert_rows", (json_int_t)v->expert_rows));
    }
    for (int k = 0; k < EMU_COLL__COUNT; k++)
        for (int l = 0; l < EMU_LINK__COUNT; l++)
            if (r->comm[k][l].calls > 0)
                json_array_append_new(
                    comm, json_pack("{s:s, s:s, s:f, s:f, s:f}", "collective", emu_coll_name(k),
                                    "link", emu_link_name(l), "calls", r->comm[k][l].calls,
                                    "bytes", r->comm[k][l].bytes, "time_s", r->comm[k][l].time));
    for (int l = 0; l < r->layers; l++) {
        json_t *row = json_array();
        for (int e = 0; e < r->experts; e++)
            json_array_append_new(row, json_integer(r->load[(size_t)l * r->experts + e]));
        json_array_append_new(load, row);
    }
    for (int s = 0; s < r->stages; s++) json_array_append_new(bubble, json_real(r->bubble[s]));
    for (int b = 0; b < r->batch; b++) json_array_append_new(ttft, json_real(r->ttft[b]));
    report_part_t p[EMU_KERNEL__COUNT + 5];
    json_t *parts = json_object();
    for (int i = 0, n = report_parts(r, p); i < n; i++)
        json_object_set_new(parts, p[i].name, json_real(p[i].sum / r->devices));
    json_t *root = json_pack(
        "{s:s, s:s, s:i, s:I, s:I, "
        "s:{s:f, s:f, s:f, s:f, s:f, s:f, s:o}, "
        "s:{s:f, s:f, s:f, s:f, s:f, s:f}, "
        "s:o, s:{s:o, s:f, s:f, s:f, s:f}, s:o, "
        "s:{s:o, s:f, s:f, s:i, s:f, s:I, s:I, s:i, s:f}, "
        "s:{s:f, s:f, s:f}}",
        "strategy", r->strategy, "hw", r->hw, "devices", r->devices, "prompt_tokens",
        (json_int_t)r->prompt_tokens, "generated_tokens", (json_int_t)r->generated_tokens,
        "latency", "ttft_batch_s", r->ttft_batch, "ttft_min_s", r->ttft_min, "ttft_mean_s",
        r->ttft_mean, "ttft_max_s", r->ttft_max, "tpot_s", r->tpot, "e2e_s", r->e2e,
        "ttft_per_sequence_s", ttft,
        "throughput_tokens_per_ms", "prefill", r->prefill_tpms, "prefill_per_device",
        r->prefill_tpms / r->devices, "decode", r->decode_tpms, "decode_per_device",
        r->decode_tpms / r->devices, "total", r->total_tpms, "total_per_device",
        r->total_tpms / r->devices,
        "devices_detail", devs, "communication", "by_kind", comm, "bytes", r->comm_bytes,
        "time_s", r->comm_time, "exposed_fraction_mean", r->exposed_comm_mean,
        "exposed_fraction_max", r->exposed_comm_max, "pipeline_bubble", bubble,
        "expert_load", "tokens_per_expert", load, "max_over_mean", r->load_max_mean, "cv",
        r->load_cv, "worst_layer", r->load_worst_layer, "worst_layer_max_over_mean",
        r->load_worst_layer_max_mean, "assignments", (json_int_t)r->assignments, "dropped",
        (json_int_t)r->dropped, "busiest_device", r->busiest, "busiest_vs_mean",
        r->busiest_vs_mean,
        "scaling", "one_device_s", r->t1, "speedup", r->speedup, "efficiency", r->efficiency);
    json_t *coll = json_pack("{s:i, s:f, s:o, s:o}", "device", r->coll_dev, "layers",
                             r->coll[0].layers > r->coll[1].layers ? r->coll[0].layers
                                                                   : r->coll[1].layers,
                             "prefill", coll_json(&r->coll[0]), "decode",
                             coll_json(&r->coll[1]));
    if (root) {
        json_object_set_new(root, "time_per_device_s", parts);
        json_object_set_new(json_object_get(root, "communication"), "per_layer_and_pass", coll);
    } else {
        json_decref(parts);
        json_decref(coll);
    }
    return root;
}

static moemu_status_t fill_csv(FILE *f, const void *arg)
{
    const report_t *r = arg;
    fprintf(f, "rank,node,stage,clock_s,compute_s,memory_s,comm_s,idle_s,flops,bytes,mfu,"
               "bw_util,weights_bytes,kv_bytes,activations_bytes,comm_bytes,other_bytes,"
               "peak_bytes,capacity_bytes,expert_rows,overlapped_s,host_s\n");
    for (int i = 0; i < r->devices; i++) {
        const report_dev_t *v = &r->dev[i];
        fprintf(f, "%d,%d,%d,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.9g,%.6g,%.6g,%.9g,%.9g,%.9g,%.9g,"
                   "%.9g,%.9g,%.9g,%lld,%.9g,%.9g\n",
                v->rank, v->node, v->stage, v->clock, v->compute, v->memory, v->comm, v->idle,
                v->flops, v->bytes, v->mfu, v->bw_util, v->mem[EMU_MEM_WEIGHTS],
                v->mem[EMU_MEM_KV], v->mem[EMU_MEM_ACT], v->mem[EMU_MEM_COMM],
                v->mem[EMU_MEM_OTHER], v->mem_peak, v->capacity, (long long)v->expert_rows,
                v->overlapped, v->host);
    }
    return MOEMU_OK;
}

moemu_status_t report_csv(const report_t *r, const char *path)
{
    return outfile_write(path, fill_csv, r);
}
