/* Deployment plans: load, then check the arithmetic, the strategy, the
 * claimed figures against a dry run of the full workload, and the numbers
 * against the baseline on a reduced workload. */
#include <libgen.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/plan.h"

static const struct {
    const char *key, *label, *unit;
} metrics[CLAIM__COUNT] = {
    [CLAIM_TOTAL_PARAMETERS] = {"total_parameters", "total parameters", ""},
    [CLAIM_ACTIVE_PARAMETERS] = {"active_parameters", "active parameters per token", ""},
    [CLAIM_DEVICES] = {"devices", "devices", ""},
    [CLAIM_MEMORY_PER_DEVICE_GB] = {"memory_per_device_gb", "memory per device", "GB"},
    [CLAIM_MEMORY_FRACTION] = {"memory_fraction", "share of memory used", ""},
    [CLAIM_TTFT_S] = {"ttft_s", "time to first token", "s"},
    [CLAIM_TPOT_S] = {"tpot_s", "time per output token", "s"},
    [CLAIM_E2E_S] = {"e2e_latency_s", "end-to-end latency", "s"},
    [CLAIM_THROUGHPUT_PER_DEVICE] = {"throughput_per_device_tokens_per_ms",
                                     "throughput per device", "tokens/ms"},
    [CLAIM_THROUGHPUT_TOKENS_S] = {"throughput_tokens_per_s", "throughput", "tokens/s"},
    [CLAIM_COMMUNICATION_SHARE] = {"communication_share", "communication share", ""},
    [CLAIM_LOAD_BALANCE] = {"load_balance", "expert load max/mean", ""},
};

static const char *const bounds[] = {"about", "at_most", "at_least"};

/* ---- Loading */

static emu_json_src_t plan_src(const plan_t *p)
{
    return (emu_json_src_t){.origin = p->path, .noun = "plan key"};
}

static moemu_status_t copy_str(const emu_json_src_t *src, json_t *o, const char *key,
                               char *out, size_t n)
{
    const char *s = NULL;
    MOEMU_CHECK(emu_json_str(src, o, key, 0, &s));
    if (!s) return MOEMU_OK;
    if (strlen(s) >= n) return emu_json_bad(src, key, NULL, "is longer than %zu characters", n - 1);
    snprintf(out, n, "%s", s);
    return MOEMU_OK;
}

/* A model or hardware given by name, by a path relative to the plan, or
 * inline as an object. */
static moemu_status_t load_model(plan_t *p, json_t *v)
{
    if (json_is_object(v)) {
        char *text = json_dumps(v, 0);
        if (!text) return moemu_fail(MOEMU_ERR_NOMEM, "%s: cannot read the model", p->path);
        char label[600];
        snprintf(label, sizeof label, "%s (model)", p->path);
        moemu_status_t st = cfg_parse(&p->cfg, text, label);
        free(text);
        snprintf(p->cfg.name, sizeof p->cfg.name, "%.63s", p->name);
        return st;
    }
    emu_json_src_t src = plan_src(p);
    if (!json_is_string(v)) return emu_json_bad(&src, "model", v, "must be a name, a path or "
                                                "an object");
    const char *s = json_string_value(v);
    for (int i = 0; cfg_builtin_names[i]; i++)
        if (!strcmp(s, cfg_builtin_names[i])) return cfg_load(&p->cfg, s);
    char dir[512], path[1100];
    snprintf(dir, sizeof dir, "%s", p->path);
    snprintf(path, sizeof path, "%s/%s", dirname(dir), s);
    return cfg_load(&p->cfg, s[0] == '/' ? s : path);
}

static moemu_status_t load_hw(plan_t *p, json_t *v)
{
    if (json_is_object(v)) {
        char *text = json_dumps(v, 0);
        if (!text) return moemu_fail(MOEMU_ERR_NOMEM, "%s: cannot read the hardware", p->path);
        char label[600];
        snprintf(label, sizeof label, "%s (hardware)", p->path);
        moemu_status_t st = emu_hw_parse(text, label, &p->hw);
        free(text);
        return st;
    }
    emu_json_src_t src = plan_src(p);
    if (!json_is_string(v)) return emu_json_bad(&src, "hardware", v, "must be a preset name or "
                                                "an object");
    return emu_hw_load(json_string_value(v), &p->hw);
}

/* workload.prompt_len: one length, a list of lengths or "MIN:MAX". */
static moemu_status_t load_lengths(plan_t *p, const emu_json_src_t *src, json_t *w)
{
    json_t *len = json_object_get(w, "prompt_len");
    if (!len) return MOEMU_OK;
    if (json_is_string(len)) {
        MOEMU_CHECK(copy_str(src, w, "prompt_len", p->range, sizeof p->range));
        p->wl.range = p->range;
        return MOEMU_OK;
    }
    if (json_is_integer(len))
        return emu_json_int(src, w, "prompt_len", 0, 1, INT32_MAX, &p->wl.prompt_len);
    if (!json_is_array(len))
        return emu_json_bad(src, "prompt_len", len, "must be a length, a list of lengths or "
                            "\"MIN:MAX\"");
    if (json_array_size(len) == 0) return emu_json_bad(src, "prompt_len", NULL, "is empty");
    char path[64];
    emu_json_src_t in = emu_json_in(src, "prompt_len", path, sizeof path);
    size_t n = 0;
    for (size_t i = 0; i < json_array_size(len); i++) {
        int x;
        MOEMU_CHECK(emu_json_int_at(&in, len, i, 1, INT32_MAX, &x));
        n += (size_t)snprintf(p->lens + n, sizeof p->lens - n, "%s%d", i ? "," : "", x);
        if (n >= sizeof p->lens) return emu_json_bad(&in, NULL, NULL, "is too long a list");
    }
    p->wl.lens = p->lens;
    if (p->wl.batch == 0) p->wl.batch = (int)json_array_size(len);
    return MOEMU_OK;
}

static moemu_status_t load_workload(plan_t *p, const emu_json_src_t *root, json_t *top)
{
    json_t *w = NULL;
    MOEMU_CHECK(emu_json_obj(root, top, "workload", 0, &w));
    if (!w) return MOEMU_OK;
    char path[16];
    emu_json_src_t src = emu_json_in(root, "workload", path, sizeof path);
    MOEMU_CHECK(emu_json_int(&src, w, "batch", 0, 1, INT32_MAX, &p->wl.batch));
    MOEMU_CHECK(emu_json_int(&src, w, "decode", 0, 0, INT32_MAX, &p->wl.decode));
    MOEMU_CHECK(emu_json_int(&src, w, "micro_batches", 0, 1, INT32_MAX, &p->micro_batches));
    int64_t seed = 0;
    MOEMU_CHECK(emu_json_i64(&src, w, "seed", 0, 0, INT64_MAX, &seed));
    p->wl.seed = (uint64_t)seed;
    return load_lengths(p, &src, w);
}

/* One claim: the metric it names, its bound and its value. */
static moemu_status_t load_claim(const emu_json_src_t *src, json_t *o, plan_claim_t *k)
{
    char key[64] = "", bound[16] = "about";
    if (!json_is_object(o)) return emu_json_bad(src, NULL, o, "must be an object");
    MOEMU_CHECK(copy_str(src, o, "what", k->what, sizeof k->what));
    MOEMU_CHECK(copy_str(src, o, "note", k->note, sizeof k->note));
    MOEMU_CHECK(copy_str(src, o, "metric", key, sizeof key));
    MOEMU_CHECK(copy_str(src, o, "bound", bound, sizeof bound));
    int m = 0;
    while (m < CLAIM__COUNT && strcmp(metrics[m].key, key)) m++;
    if (m == CLAIM__COUNT) {
        char known[1024];
        size_t n = 0;
        for (int j = 0; j < CLAIM__COUNT && n < sizeof known; j++)
            n += (size_t)snprintf(known + n, sizeof known - n, " %s", metrics[j].key);
        return emu_json_bad(src, "metric", NULL, "names metric '%s'; known:%s", key, known);
    }
    k->metric = (plan_metric_t)m;
    int b = 0;
    while (b < 3 && strcmp(bounds[b], bound)) b++;
    if (b == 3) return emu_json_bad(src, "bound", NULL, "must be about, at_most or at_least");
    k->bound = (plan_bound_t)b;
    k->value = 0;
    MOEMU_CHECK(emu_json_num(src, o, "value", EMU_JSON_REQUIRED, &k->value));
    if (!(k->value > 0))
        return emu_json_bad(src, "value", json_object_get(o, "value"),
                            "must be a positive number");
    if (!k->what[0]) snprintf(k->what, sizeof k->what, "%s", metrics[m].label);
    return MOEMU_OK;
}

static moemu_status_t load_claims(plan_t *p, const emu_json_src_t *root, json_t *top)
{
    json_t *c = NULL;
    MOEMU_CHECK(emu_json_arr(root, top, "claims", 0, &c));
    if (!c) return MOEMU_OK;
    p->nclaims = (int)json_array_size(c);
    p->claims = calloc((size_t)p->nclaims + 1, sizeof *p->claims);
    if (!p->claims) return moemu_fail(MOEMU_ERR_NOMEM, "%s: cannot read the claims", p->path);
    char path[16], at[32];
    emu_json_src_t claims = emu_json_in(root, "claims", path, sizeof path);
    for (int i = 0; i < p->nclaims; i++) {
        emu_json_src_t src = emu_json_at(&claims, (size_t)i, at, sizeof at);
        MOEMU_CHECK(load_claim(&src, json_array_get(c, (size_t)i), &p->claims[i]));
    }
    return MOEMU_OK;
}

/* The hardware (a preset by default) and its topology's overrides. */
static moemu_status_t load_hardware(plan_t *p, const emu_json_src_t *src, json_t *root)
{
    json_t *v = json_object_get(root, "hardware"), *topo = NULL;
    MOEMU_CHECK(v ? load_hw(p, v) : emu_hw_load("card-400tf-64gb", &p->hw));
    MOEMU_CHECK(emu_json_obj(src, root, "topology", 0, &topo));
    if (!topo) return MOEMU_OK;
    char path[16];
    emu_json_src_t in = emu_json_in(src, "topology", path, sizeof path);
    MOEMU_CHECK(emu_json_int(&in, topo, "nodes", 0, 1, INT32_MAX, &p->hw.topo.nodes));
    return emu_json_int(&in, topo, "devices_per_node", 0, 1, INT32_MAX,
                        &p->hw.topo.devices_per_node);
}

static moemu_status_t load_root(plan_t *p, json_t *root)
{
    emu_json_src_t src = plan_src(p);
    json_t *v;
    if (!json_is_object(root)) return moemu_fail(MOEMU_ERR_FORMAT, "%s: a plan is a JSON "
                                                 "object", p->path);
    MOEMU_CHECK(copy_str(&src, root, "name", p->name, sizeof p->name));
    MOEMU_CHECK(copy_str(&src, root, "description", p->description, sizeof p->description));
    if (!p->name[0]) {
        char b[512];
        snprintf(b, sizeof b, "%s", p->path);
        snprintf(p->name, sizeof p->name, "%s", basename(b));
    }
    MOEMU_CHECK(emu_json_get(&src, root, "model", EMU_JSON_REQUIRED, &v));
    MOEMU_CHECK(load_model(p, v));
    MOEMU_CHECK(load_hardware(p, &src, root));
    /* as stated: a strategy string, never an object */
    MOEMU_CHECK(emu_json_get(&src, root, "strategy", EMU_JSON_REQUIRED, &v));
    MOEMU_CHECK(copy_str(&src, root, "strategy", p->strategy, sizeof p->strategy));
    MOEMU_CHECK(copy_str(&src, root, "pp_layers", p->pp_layers, sizeof p->pp_layers));
    MOEMU_CHECK(emu_json_int(&src, root, "devices", 0, 1, INT32_MAX, &p->devices));
    MOEMU_CHECK(load_workload(p, &src, root));
    MOEMU_CHECK(load_claims(p, &src, root));
    MOEMU_CHECK(emu_json_num(&src, root, "tolerance", 0, &p->tolerance));
    if (!(p->tolerance > 0))
        return emu_json_bad(&src, "tolerance", json_object_get(root, "tolerance"),
                            "must be a positive number");
    v = json_object_get(root, "assumptions");
    p->assumptions = v && json_is_array(v) ? json_incref(v) : json_array();
    return MOEMU_OK;
}

moemu_status_t plan_load(plan_t *p, const char *path)
{
    memset(p, 0, sizeof *p);
    snprintf(p->path, sizeof p->path, "%s", path);
    p->tolerance = 0.25;
    p->micro_batches = 1;
    p->wl.decode = 16;
    emu_json_src_t src = plan_src(p);
    json_t *root;
    MOEMU_CHECK(emu_json_load_file(&src, path, &root));
    moemu_status_t st = load_root(p, root);
    json_decref(root);
    if (st != MOEMU_OK) plan_free(p);
    return st;
}

void plan_free(plan_t *p)
{
    free(p->claims);
    json_decref(p->assumptions);
    p->claims = NULL;
    p->assumptions = NULL;
}

/* ---- Evaluating */

/* moemu's figure for a metric, from the figures and the report. */
static double figure(plan_metric_t m, const cfg_figures_t *f, const report_t *r, int world)
{
    double peak = 0, cap = 1;
    for (int i = 0; r && i < r->devices; i++)
        if (r->dev[i].mem_peak > peak) peak = r->dev[i].mem_peak, cap = r->dev[i].capacity;
    switch (m) {
    case CLAIM_TOTAL_PARAMETERS: return (double)f->total;
    case CLAIM_ACTIVE_PARAMETERS: return (double)f->active_per_token;
    case CLAIM_DEVICES: return world;
    case CLAIM_MEMORY_PER_DEVICE_GB: return peak / 1e9;
    case CLAIM_MEMORY_FRACTION: return peak / cap;
    case CLAIM_TTFT_S: return r->ttft_batch;
    case CLAIM_TPOT_S: return r->tpot;
    case CLAIM_E2E_S: return r->e2e;
    case CLAIM_THROUGHPUT_PER_DEVICE: return r->total_tpms / r->devices;
    case CLAIM_THROUGHPUT_TOKENS_S: return r->total_tpms * 1e3;
    case CLAIM_COMMUNICATION_SHARE: return r->exposed_comm_mean;
    case CLAIM_LOAD_BALANCE: return r->load_max_mean;
    default: return 0;
    }
}

static bool needs_run(plan_metric_t m)
{
    return m != CLAIM_TOTAL_PARAMETERS && m != CLAIM_ACTIVE_PARAMETERS && m != CLAIM_DEVICES;
}

static void fmt_value(char *buf, size_t n, plan_metric_t m, double v)
{
    if (m == CLAIM_TOTAL_PARAMETERS || m == CLAIM_ACTIVE_PARAMETERS)
        snprintf(buf, n, v >= 1e9 ? "%.3gB" : "%.4gM", v >= 1e9 ? v / 1e9 : v / 1e6);
    else if (m == CLAIM_MEMORY_FRACTION || m == CLAIM_COMMUNICATION_SHARE)
        snprintf(buf, n, "%.1f%%", 100 * v);
    else if (m == CLAIM_TTFT_S || m == CLAIM_TPOT_S || m == CLAIM_E2E_S)
        snprintf(buf, n, v < 1 ? "%.4g ms" : "%.4g s", v < 1 ? 1e3 * v : v);
    else
        snprintf(buf, n, "%.4g%s%s", v, metrics[m].unit[0] ? " " : "", metrics[m].unit);
}

/* Lower bounds the hardware sets, for "impossible": the work can go no
 * faster than every device computing at peak x MFU and streaming its
 * weights at bandwidth x utilisation. */
typedef struct {
    double ttft_min, e2e_min, tput_dev_max, weights_dev_min_gb;
} bounds_t;

static void hw_bounds(bounds_t *b, const plan_t *p, const cfg_figures_t *f, const wl_t *wl,
                      int devices, double weights_dev)
{
    const emu_spec_t *s = &p->hw.spec;
    double mfu = s->mfu; /* a kind's own may be higher */
    for (int k = 0; k < EMU_KERNEL__COUNT; k++)
        if (s->kernels[k].set && s->kernels[k].mfu > mfu) mfu = s->kernels[k].mfu;
    double rate = s->peak_flops * mfu * devices;
    double prefill = (double)wl_prompt_tokens(wl) * f->flops_per_token;
    double decode = (double)wl->batch * (wl->decode > 0 ? wl->decode - 1 : 0) * f->flops_per_token;
    b->ttft_min = prefill / rate;
    b->e2e_min = (prefill + decode) / rate;
    double tokens = (double)wl_prompt_tokens(wl) + (double)wl->batch * wl->decode;
    b->tput_dev_max = b->e2e_min > 0 ? tokens / b->e2e_min / 1e3 / devices : INFINITY;
    b->weights_dev_min_gb = weights_dev / 1e9;
}

typedef struct {
    char verdict[576]; /* room for the capacity note */
    bool holds;
} verdict_t;

static void judge(verdict_t *v, const plan_claim_t *k, double got, double tol, const bounds_t *b,
                  bool fits, const char *capacity_note)
{
    double s = k->value;
    v->holds = false;
    /* what the hardware rules out, whatever moemu measured */
    if (k->metric == CLAIM_MEMORY_PER_DEVICE_GB && k->bound != CLAIM_AT_LEAST &&
        s < b->weights_dev_min_gb) {
        snprintf(v->verdict, sizeof v->verdict,
                 "impossible: the weights alone need %.3g GB on a device", b->weights_dev_min_gb);
        return;
    }
    if ((k->metric == CLAIM_TTFT_S && s < b->ttft_min) || (k->metric == CLAIM_E2E_S && s < b->e2e_min)) {
        snprintf(v->verdict, sizeof v->verdict,
                 "impossible: the FLOPs need at least %.3g s at peak x MFU on every device",
                 k->metric == CLAIM_TTFT_S ? b->ttft_min : b->e2e_min);
        return;
    }
    if (k->metric == CLAIM_THROUGHPUT_PER_DEVICE && s > b->tput_dev_max) {
        snprintf(v->verdict, sizeof v->verdict,
                 "impossible: the FLOPs allow at most %.3g tokens/ms per device at peak x MFU",
                 b->tput_dev_max);
        return;
    }
    if ((k->metric == CLAIM_MEMORY_FRACTION || k->metric == CLAIM_COMMUNICATION_SHARE) && s > 1) {
        snprintf(v->verdict, sizeof v->verdict, "impossible: a share above 100%%");
        return;
    }
    if (!fits && (k->metric == CLAIM_MEMORY_PER_DEVICE_GB || k->metric == CLAIM_MEMORY_FRACTION)) {
        snprintf(v->verdict, sizeof v->verdict, "impossible: %s", capacity_note);
        return;
    }
    double r = got > 0 ? s / got : INFINITY;
    bool ok = k->bound == CLAIM_AT_MOST    ? got <= s * (1 + tol)
              : k->bound == CLAIM_AT_LEAST ? got >= s / (1 + tol)
                                           : r <= 1 + tol && r >= 1 / (1 + tol);
    if (ok) {
        v->holds = true;
        snprintf(v->verdict, sizeof v->verdict, "holds");
    } else if (!isfinite(r)) {
        snprintf(v->verdict, sizeof v->verdict, "off: moemu measures 0");
    } else {
        snprintf(v->verdict, sizeof v->verdict, "off by a factor %.3g (the plan's figure is %s)",
                 r >= 1 ? r : 1 / r, r >= 1 ? "too high" : "too low");
    }
}

/* Degrees a candidate keeps from the stated strategy: among strategies as
 * near, the one that changes fewer dimensions reads closer to the plan,
 * and changing the number of replicas (DP) less than the model's split. */
static int kept(const par_strategy_t *a, const par_strategy_t *b)
{
    return 2 * ((a->pp == b->pp) + (a->cp == b->cp) + (a->tp == b->tp) + (a->ep == b->ep) +
                (a->etp == b->etp)) +
           (a->dp == b->dp) + (a->sp == b->sp);
}

/* The valid strategies on devices nearest to a stated one: by
 * par_strategy_distance, then by kept degrees, then in enumeration order. */
static int nearest(const par_strategy_t *stated, const par_dims_t *dims, int devices,
                   par_strategy_t *best, int nbest)
{
    int n = par_strategy_enumerate(dims, devices, NULL, NULL, 0);
    if (n <= 0) return 0;
    par_strategy_t *all = malloc(sizeof *all * (size_t)n);
    if (!all) return 0;
    n = par_strategy_enumerate(dims, devices, NULL, all, n);
    int got = 0;
    double key[nbest > 0 ? nbest : 1];
    for (int i = 0; i < n; i++) {
        if (all[i].n_pp_layers && !stated->n_pp_layers) continue; /* a split nobody asked */
        double kk = par_strategy_distance(stated, &all[i]) - 0.01 * kept(stated, &all[i]);
        int at = got < nbest ? got++ : nbest;
        while (at > 0 && kk < key[at - 1]) {
            if (at < nbest) best[at] = best[at - 1], key[at] = key[at - 1];
            at--;
        }
        if (at < nbest) best[at] = all[i], key[at] = kk;
    }
    free(all);
    return got;
}

/* The model of cfg cut to its first l layers, and sd for it (an even
 * split of the layers kept over the stages). */
static void cut_layers(cfg_model_t *c, runner_opts_t *sd, int l)
{
    if (l == c->num_hidden_layers) return;
    c->num_hidden_layers = l;
    sd->strategy.n_pp_layers = 0;
}

/* Whether the real-math check of sd on wl, for cfg, fits this host: its
 * generated weights, their widening and both runs (check_host_need). */
static moemu_status_t check_fits(const cfg_model_t *cfg, const wl_t *wl, const runner_opts_t *sd)
{
    emu_need_t need = {0};
    double w = wts_host_bytes(cfg, NULL), widen = wts_widen_bytes(cfg, NULL);
    emu_need_add(&need, "weights", w, w);
    emu_need_add(&need, "weight widening", widen, widen);
    MOEMU_CHECK(check_host_need(&need, cfg, wl, sd));
    char what[64];
    snprintf(what, sizeof what, "the check on %d layers", cfg->num_hidden_layers);
    return emu_need_check(&need, NULL, what);
}

/* The most layers (at least min_layers) whose check fits this host; when
 * the whole model's does not, why, into why[0..n). */
static int host_layers(const cfg_model_t *cfg, const wl_t *wl, const runner_opts_t *sd,
                       int min_layers, char *why, size_t n)
{
    why[0] = '\0';
    for (int l = cfg->num_hidden_layers; l > min_layers; l--) {
        cfg_model_t c = *cfg;
        runner_opts_t o = *sd;
        cut_layers(&c, &o, l);
        if (check_fits(&c, wl, &o) == MOEMU_OK) return l;
        if (!why[0]) snprintf(why, n, "%s", moemu_errmsg());
    }
    moemu_errclear();
    return min_layers;
}

static json_t *strategy_json(const par_strategy_t *s)
{
    char buf[PAR_STRATEGY_STRLEN];
    par_strategy_format(s, buf, sizeof buf);
    return json_string(buf);
}

/* One evaluation's state, shared by its sections. */
typedef struct {
    const plan_t *p;
    const plan_opts_t *o;
    FILE *f;
    json_t *js;
    bool *all_hold;
    const cfg_model_t *cfg;
    cfg_figures_t fig;
    par_dims_t dims;
    par_strategy_t stated, run;
    int world, devices;
    char runs[PAR_STRATEGY_STRLEN];
} eval_t;

/* The plan, the model and the hardware as moemu reads them. */
static void print_header(eval_t *e)
{
    const plan_t *p = e->p;
    const cfg_model_t *cfg = e->cfg;
    FILE *f = e->f;
    char a[64], b[64];
    fprintf(f, "plan %s (%s)\n", p->name, p->path);
    if (p->description[0]) fprintf(f, "  %s\n", p->description);
    fprintf(f, "model    %s: %d layers, hidden %d, %d heads of %d (%d kv), %d experts of %d, "
               "top-%d, capacity factor %g, %s\n",
            cfg->name, cfg->num_hidden_layers, cfg->hidden_size, cfg->num_attention_heads,
            cfg->head_dim, cfg->num_key_value_heads, cfg->num_local_experts,
            cfg->intermediate_size, cfg->num_experts_per_tok, cfg->capacity_factor,
            emu_dtype_name(cfg->dtype));
    fmt_value(a, sizeof a, CLAIM_TOTAL_PARAMETERS, (double)e->fig.total);
    fmt_value(b, sizeof b, CLAIM_ACTIVE_PARAMETERS, (double)e->fig.active_per_token);
    fprintf(f, "         %s parameters (%s active per token), %.3g GB of weights\n", a, b,
            e->fig.weight_bytes / 1e9);
    fprintf(f, "hardware %s: %.4g TFLOP/s x MFU %.2g, %.4g TB/s x %.2g, %.3g GB; %d per node\n",
            p->hw.name, p->hw.spec.peak_flops / 1e12, p->hw.spec.mfu, p->hw.spec.mem_bw / 1e12,
            p->hw.spec.bw_util, p->hw.spec.mem_capacity / 1e9, p->hw.topo.devices_per_node);
    json_object_set_new(e->js, "plan", json_string(p->name));
    json_object_set_new(e->js, "model",
                        json_pack("{s:s, s:I, s:I, s:f}", "name", cfg->name, "total_parameters",
                                  (json_int_t)e->fig.total, "active_parameters",
                                  (json_int_t)e->fig.active_per_token, "weight_bytes",
                                  e->fig.weight_bytes));
}

/* The device count and the experts per device, from the stated degrees. */
static void check_arithmetic(eval_t *e)
{
    const par_strategy_t *s = &e->stated;
    int E = e->cfg->num_local_experts, stage = s->dp * s->cp * s->tp;
    FILE *f = e->f;
    json_t *arith = json_array();
    fprintf(f, "arithmetic\n");
    fprintf(f, "  devices: %s states %d; PP*DP*CP*TP = %d*%d*%d*%d = %d: %s\n", e->p->strategy,
            e->devices, s->pp, s->dp, s->cp, s->tp, e->world,
            e->world == e->devices ? "holds" : "impossible: the degrees multiply to another count");
    json_array_append_new(arith, json_pack("{s:s, s:i, s:i, s:b}", "check", "devices", "stated",
                                           e->devices, "from_degrees", e->world, "holds",
                                           e->world == e->devices));
    if (e->world != e->devices) *e->all_hold = false;
    bool ep_ok = s->ep <= E && E % s->ep == 0;
    fprintf(f, "  experts per device: %d experts over EP=%d: %s", E, s->ep,
            ep_ok ? "" : "impossible: EP does not divide the experts");
    if (ep_ok) fprintf(f, "%d per device", E / s->ep);
    if (s->ep * s->etp > stage)
        fprintf(f, "; impossible: EP*ETP = %d exceeds a pipeline stage's DP*CP*TP = %d devices",
                s->ep * s->etp, stage);
    fprintf(f, "\n");
    json_array_append_new(arith, json_pack("{s:s, s:i, s:i, s:i, s:b}", "check",
                                           "experts_per_device", "experts", E, "ep", s->ep,
                                           "stage_devices", stage, "holds",
                                           ep_ok && s->ep * s->etp <= stage));
    for (int i = 0; i < e->p->nclaims; i++) {
        const plan_claim_t *k = &e->p->claims[i];
        if (k->metric != CLAIM_TOTAL_PARAMETERS && k->metric != CLAIM_ACTIVE_PARAMETERS) continue;
        char a[64], b[64];
        fmt_value(a, sizeof a, k->metric, k->value);
        fmt_value(b, sizeof b, k->metric, figure(k->metric, &e->fig, NULL, e->world));
        fprintf(f, "  %s from the dimensions: %s, stated %s\n", metrics[k->metric].label, b, a);
    }
    json_object_set_new(e->js, "arithmetic", arith);
}

/* Whether the stated strategy is valid, else the nearest valid ones; the
 * figures are measured on e->run. False when none is left to measure. */
static bool choose_strategy(eval_t *e)
{
    FILE *f = e->f;
    e->run = e->stated;
    bool valid = par_strategy_validate(&e->stated, &e->dims, e->devices) == MOEMU_OK;
    fprintf(f, "strategy\n");
    json_object_set_new(e->js, "strategy_stated", json_string(e->p->strategy));
    json_object_set_new(e->js, "strategy_valid", json_boolean(valid));
    if (!valid) {
        fprintf(f, "  invalid on %d devices: %s\n", e->devices, moemu_errmsg());
        json_object_set_new(e->js, "strategy_error", json_string(moemu_errmsg()));
        *e->all_hold = false;
        par_strategy_t best[3];
        int nb = nearest(&e->stated, &e->dims, e->devices, best, 3);
        json_t *near = json_array();
        fprintf(f, "  nearest valid strategies on %d devices:", e->devices);
        for (int i = 0; i < nb; i++) {
            char buf[PAR_STRATEGY_STRLEN];
            par_strategy_format(&best[i], buf, sizeof buf);
            fprintf(f, "%s %s", i ? "," : "", buf);
            json_array_append_new(near, json_string(buf));
        }
        fprintf(f, "%s\n", nb ? "" : " none");
        json_object_set_new(e->js, "nearest_valid", near);
        if (nb == 0) return false;
        e->run = best[0];
    }
    par_strategy_format(&e->run, e->runs, sizeof e->runs);
    fprintf(f, "  figures below are measured on %s%s, %d micro-batch%s per replica\n", e->runs,
            valid ? "" : " (the nearest valid)", e->p->micro_batches,
            e->p->micro_batches == 1 ? "" : "es");
    json_object_set_new(e->js, "strategy_measured", strategy_json(&e->run));
    return true;
}

/* Every claim against the dry run's figures. */
static void judge_claims(eval_t *e, const report_t *rep, const wl_t *wl, bool fits,
                         const char *capacity_note)
{
    const plan_t *p = e->p;
    bounds_t bd;
    double wdev = 0;
    for (int i = 0; i < rep->devices; i++)
        wdev = rep->dev[i].mem[EMU_MEM_WEIGHTS] > wdev ? rep->dev[i].mem[EMU_MEM_WEIGHTS] : wdev;
    hw_bounds(&bd, p, &e->fig, wl, e->devices, wdev);
    json_t *claims = json_array();
    fprintf(e->f, "claims   %-40s %14s %14s  verdict\n", "", "stated", "moemu");
    for (int i = 0; i < p->nclaims; i++) {
        const plan_claim_t *k = &p->claims[i];
        double got = figure(k->metric, &e->fig, rep, e->world);
        verdict_t v;
        judge(&v, k, got, p->tolerance, &bd, fits, capacity_note);
        if (!v.holds) *e->all_hold = false;
        char a[64], b[64];
        fmt_value(a, sizeof a, k->metric, k->value);
        fmt_value(b, sizeof b, k->metric, got);
        fprintf(e->f, "  %-47s %14s %14s  %s\n", k->what, a, b, v.verdict);
        if (k->note[0]) fprintf(e->f, "      (%s)\n", k->note);
        json_array_append_new(claims, json_pack("{s:s, s:s, s:s, s:f, s:f, s:s, s:b, s:s}",
                                                "what", k->what, "metric", metrics[k->metric].key,
                                                "bound", bounds[k->bound], "stated", k->value,
                                                "moemu", got, "verdict", v.verdict, "holds",
                                                v.holds, "measured_on",
                                                needs_run(k->metric) ? e->runs : "dimensions"));
    }
    json_object_set_new(e->js, "claims", claims);
}

/* The full workload as a dry run (without the memory limit if it does
 * not fit, saying so), then the claims. */
static moemu_status_t dry_run(eval_t *e)
{
    const plan_t *p = e->p;
    const char *routing = e->o->routing ? e->o->routing : "uniform";
    wl_t wl;
    MOEMU_CHECK(wl_make(&wl, &p->wl, e->cfg));
    runner_opts_t d = {.strategy = e->run, .micro_batches = p->micro_batches, .hw = p->hw};
    report_t rep;
    char capacity_note[512];
    moemu_status_t st = report_dry_run_unlimited(&rep, e->cfg, &wl, &d, routing, p->wl.seed,
                                                 true, capacity_note, sizeof capacity_note);
    bool fits = !capacity_note[0];
    if (st != MOEMU_OK) {
        wl_free(&wl);
        return st;
    }
    int min_len = wl.max_len;
    for (int i = 0; i < wl.batch; i++) min_len = wl.len[i] < min_len ? wl.len[i] : min_len;
    fprintf(e->f, "dry run  batch %d, prompts of %d..%d tokens, %d generated: TTFT %.4g s, "
                  "end to end %.4g s, %.4g tokens/ms per device, peak memory %.3g GB%s\n",
            wl.batch, min_len, wl.max_len, wl.decode, rep.ttft_batch, rep.e2e,
            rep.total_tpms / rep.devices, figure(CLAIM_MEMORY_PER_DEVICE_GB, &e->fig, &rep, 0),
            fits ? "" : " (does not fit: run without the memory limit)");
    if (!fits) fprintf(e->f, "  %s\n", capacity_note);
    json_object_set_new(e->js, "fits", json_boolean(fits));
    json_object_set_new(e->js, "report", report_json(&rep));
    judge_claims(e, &rep, &wl, fits, capacity_note);
    report_free(&rep);
    wl_free(&wl);
    return MOEMU_OK;
}

/* The numbers: a reduced workload in real math against the baseline, on
 * as many layers as this host holds. */
static moemu_status_t numbers(eval_t *e)
{
    const plan_t *p = e->p;
    const par_strategy_t *run = &e->run;
    cfg_model_t small = *e->cfg;
    int B = run->dp * p->micro_batches < 8 ? run->dp * p->micro_batches : 8;
    if (B < run->dp) B = run->dp;
    wl_opts_t wo = {.batch = B, .prompt_len = 16, .decode = 4, .seed = p->wl.seed};
    wl_t swl;
    wts_t w;
    MOEMU_CHECK(wl_make(&swl, &wo, &small));
    runner_opts_t sd = {.strategy = *run, .micro_batches = p->micro_batches, .hw = p->hw,
                        .cluster = {.no_limit = true}};
    char why[512];
    int L = host_layers(e->cfg, &swl, &sd, run->pp, why, sizeof why),
        Lall = e->cfg->num_hidden_layers;
    cut_layers(&small, &sd, L);
    fprintf(e->f, "numbers  %s in real math: batch %d, prompts of 16, 4 generated, %d of %d "
                  "layers\n", e->runs, B, L, Lall);
    if (L < Lall) fprintf(e->f, "  the whole model's check does not fit this host: %s\n", why);
    moemu_status_t st = wts_generate_all(&w, &small, p->wl.seed);
    if (st != MOEMU_OK) {
        wl_free(&swl);
        return st;
    }
    check_t c;
    st = check_run(&c, &w, &swl, &sd, 1e-5, e->o->progress);
    if (st == MOEMU_OK) {
        char verdict[160];
        fprintf(e->f, "         rel L2 error %.3g (tolerance 1e-5), tokens %s, router decisions "
                      "differing %lld of %lld: %s\n",
                c.r.rel_l2, c.r.first_seq < 0 ? "identical" : "differ",
                (long long)c.r.route_differ, (long long)c.r.routed,
                check_verdict(&c.r, verdict, sizeof verdict));
        json_object_set_new(e->js, "numerical_check",
                            json_pack("{s:i, s:f, s:b, s:I, s:b}", "layers", L, "rel_l2",
                                      c.r.rel_l2, "tokens_identical", c.r.first_seq < 0,
                                      "router_decisions_differ", (json_int_t)c.r.route_differ,
                                      "pass", c.r.pass));
        if (!c.r.pass) *e->all_hold = false;
        check_free(&c);
    }
    wts_free(&w);
    wl_free(&swl);
    return st;
}

static void print_assumptions(eval_t *e)
{
    json_t *as = e->p->assumptions;
    if (json_array_size(as)) {
        fprintf(e->f, "assumptions\n");
        size_t i;
        json_t *s;
        json_array_foreach(as, i, s) {
            if (json_is_string(s)) fprintf(e->f, "  - %s\n", json_string_value(s));
        }
    }
    json_object_set(e->js, "assumptions", as);
}

moemu_status_t plan_evaluate(const plan_t *p, const plan_opts_t *o, json_t **result,
                             bool *all_hold)
{
    eval_t e = {.p = p, .o = o, .f = o->out, .js = json_object(), .all_hold = all_hold,
                .cfg = &p->cfg};
    *result = e.js;
    *all_hold = true;
    family_of(e.cfg)->figures(e.cfg, &e.fig);
    family_of(e.cfg)->dims(e.cfg, &e.dims);
    print_header(&e);
    moemu_status_t st = par_strategy_parse(p->strategy, &e.stated);
    if (st == MOEMU_OK && p->pp_layers[0]) st = par_strategy_set_pp_layers(&e.stated, p->pp_layers);
    if (st != MOEMU_OK) {
        json_object_set_new(e.js, "strategy_error", json_string(moemu_errmsg()));
        fprintf(e.f, "strategy '%s' does not parse: %s\n", p->strategy, moemu_errmsg());
        *all_hold = false;
        return MOEMU_OK;
    }
    e.world = par_strategy_world(&e.stated);
    e.devices = p->devices ? p->devices : e.world;
    check_arithmetic(&e);
    if (!choose_strategy(&e)) return MOEMU_OK;
    MOEMU_CHECK(dry_run(&e));
    if (!o->no_check) MOEMU_CHECK(numbers(&e));
    print_assumptions(&e);
    return MOEMU_OK;
}
