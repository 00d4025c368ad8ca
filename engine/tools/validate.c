/* validate: published measurements read from CSV (libcsv), each repeated
 * as a dry run, with the ratios and their summaries. */
#include <csv.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/outfile.h"
#include "engine/tools/report.h"
#include "engine/tools/validate.h"

static const char *const metric_names[VAL__COUNT] = {
    "latency_s", "ttft_ms", "tpot_ms", "out_tokens_per_s", "out_tokens_per_s_per_gpu"};

const char *val_metric_name(val_metric_t m)
{
    return m >= 0 && m < VAL__COUNT ? metric_names[m] : "?";
}

/* ---- reading the CSV */

enum { COL_ID, COL_USE, COL_SOURCE, COL_ENGINE, COL_MODEL, COL_HW, COL_DTYPE, COL_STRATEGY,
       COL_BATCH, COL_PROMPT_LEN, COL_DECODE, COL_METRIC, COL_VALUE, COL_NOTE, COL__COUNT };

static const char *const col_names[COL__COUNT] = {
    "id", "use", "source", "engine", "model", "hw", "dtype", "strategy",
    "batch", "prompt_len", "decode", "metric", "value", "note"};

#define VAL_MAX_ROWS 100000
#define VAL_MAX_BYTES (64u << 20)

/* What libcsv's callbacks build: the fields of the record under way, the
 * header's column of each field, and the rows. */
typedef struct {
    char *field[COL__COUNT + 1]; /* of the record under way, by column */
    int nf;                      /* fields seen in it */
    int col[64];                 /* header: field position -> column */
    int ncol;
    bool header_done;
    int line;                    /* record number, from 1 */
    val_set_t *set;
    moemu_problems_t *pb;
    int cap;
} csv_ctx_t;

static void field_cb(void *s, size_t len, void *arg)
{
    csv_ctx_t *x = arg;
    int at = x->nf++;
    if (!x->header_done) {
        if (at >= (int)(sizeof x->col / sizeof x->col[0])) {
            if (at == (int)(sizeof x->col / sizeof x->col[0]))
                moemu_problem(x->pb, "line 1: more than %d columns", at);
            return;
        }
        int c = 0;
        while (c < COL__COUNT && (strlen(col_names[c]) != len || memcmp(col_names[c], s, len)))
            c++;
        if (c == COL__COUNT) moemu_problem(x->pb, "line 1: unknown column '%.*s'", (int)len,
                                           (const char *)s);
        x->col[at] = c;
        x->ncol = at + 1;
        return;
    }
    if (at >= x->ncol) return;
    int c = x->col[at];
    free(x->field[c]);
    x->field[c] = strndup(s, len);
}

static void copy_field(moemu_problems_t *pb, int line, int c, char *dst, size_t n,
                       const char *v)
{
    if (strlen(v) >= n)
        moemu_problem(pb, "line %d: %s is longer than %zu characters", line, col_names[c],
                      n - 1);
    snprintf(dst, n, "%s", v);
}

static void int_field(moemu_problems_t *pb, int line, int c, const char *v, int *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < 1 || n > 1 << 24)
        moemu_problem(pb, "line %d: %s '%s' is not a whole number in [1, %d]", line,
                      col_names[c], v, 1 << 24);
    *out = (int)n;
}

/* One record's fields into a row, every problem named. */
static void fill_row(csv_ctx_t *x, val_row_t *r)
{
    moemu_problems_t *pb = x->pb;
    char *const *f = x->field;
    bool empty = false;
    for (int c = 0; c < COL__COUNT; c++)
        if (!f[c] || (!f[c][0] && c != COL_NOTE)) {
            moemu_problem(pb, "line %d: %s is empty", x->line, col_names[c]);
            empty = true;
        }
    if (empty) return; /* the rest needs every field */
    *r = (val_row_t){.line = x->line};
    copy_field(pb, x->line, COL_ID, r->id, sizeof r->id, f[COL_ID]);
    copy_field(pb, x->line, COL_USE, r->use, sizeof r->use, f[COL_USE]);
    copy_field(pb, x->line, COL_SOURCE, r->source, sizeof r->source, f[COL_SOURCE]);
    copy_field(pb, x->line, COL_ENGINE, r->engine, sizeof r->engine, f[COL_ENGINE]);
    copy_field(pb, x->line, COL_MODEL, r->model, sizeof r->model, f[COL_MODEL]);
    copy_field(pb, x->line, COL_HW, r->hw, sizeof r->hw, f[COL_HW]);
    copy_field(pb, x->line, COL_DTYPE, r->dtype, sizeof r->dtype, f[COL_DTYPE]);
    copy_field(pb, x->line, COL_STRATEGY, r->strategy, sizeof r->strategy, f[COL_STRATEGY]);
    copy_field(pb, x->line, COL_NOTE, r->note, sizeof r->note, f[COL_NOTE]);
    int_field(pb, x->line, COL_BATCH, f[COL_BATCH], &r->batch);
    int_field(pb, x->line, COL_PROMPT_LEN, f[COL_PROMPT_LEN], &r->prompt_len);
    int_field(pb, x->line, COL_DECODE, f[COL_DECODE], &r->decode);
    if (strcmp(r->use, "fit") && strcmp(r->use, "holdout"))
        moemu_problem(pb, "line %d: use '%s' is not fit or holdout", x->line, r->use);
    emu_dtype_t dt;
    if (strcmp(r->dtype, "fp8") && !emu_dtype_parse(r->dtype, &dt))
        moemu_problem(pb, "line %d: dtype '%s' is not bf16, fp16, fp32 or fp8", x->line,
                      r->dtype);
    int m = 0;
    while (m < VAL__COUNT && strcmp(f[COL_METRIC], metric_names[m])) m++;
    if (m == VAL__COUNT)
        moemu_problem(pb, "line %d: metric '%s' is not latency_s, ttft_ms, tpot_ms, "
                      "out_tokens_per_s or out_tokens_per_s_per_gpu", x->line, f[COL_METRIC]);
    r->metric = (val_metric_t)m;
    char *end;
    r->published = strtod(f[COL_VALUE], &end);
    if (end == f[COL_VALUE] || *end || !(r->published > 0) || !isfinite(r->published))
        moemu_problem(pb, "line %d: value '%s' is not a positive number", x->line,
                      f[COL_VALUE]);
}

static void header_done(csv_ctx_t *x)
{
    bool seen[COL__COUNT] = {0};
    for (int i = 0; i < x->ncol; i++) {
        int c = x->col[i];
        if (c == COL__COUNT) continue;
        if (seen[c]) moemu_problem(x->pb, "line 1: column '%s' appears twice", col_names[c]);
        seen[c] = true;
    }
    for (int c = 0; c < COL__COUNT; c++)
        if (!seen[c]) moemu_problem(x->pb, "line 1: no column '%s'", col_names[c]);
    x->header_done = true;
}

/* Room for one more row. */
static bool grow(csv_ctx_t *x)
{
    if (x->set->n < x->cap) return true;
    int cap = 2 * x->cap + 16;
    val_row_t *r = realloc(x->set->rows, sizeof *r * (size_t)cap);
    if (!r) return false;
    x->set->rows = r;
    x->cap = cap;
    return true;
}

static void record_cb(int term, void *arg)
{
    (void)term;
    csv_ctx_t *x = arg;
    x->line++;
    if (!x->header_done) {
        header_done(x);
    } else if (x->nf != x->ncol) {
        moemu_problem(x->pb, "line %d: %d fields, the header has %d", x->line, x->nf, x->ncol);
    } else if (x->set->n >= VAL_MAX_ROWS) {
        if (x->set->n++ == VAL_MAX_ROWS)
            moemu_problem(x->pb, "more than %d rows", VAL_MAX_ROWS);
    } else if (!grow(x)) {
        moemu_problem(x->pb, "out of host memory at line %d", x->line);
    } else {
        int before = x->pb->n;
        val_row_t r;
        fill_row(x, &r);
        if (x->pb->n == before) x->set->rows[x->set->n++] = r;
    }
    for (int c = 0; c <= COL__COUNT; c++) free(x->field[c]), x->field[c] = NULL;
    x->nf = 0;
}

/* The whole file (a pipe too: it has no size), at most VAL_MAX_BYTES. */
static moemu_status_t read_whole(const char *path, char **buf, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return moemu_fail(MOEMU_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 0;
    char *b = NULL;
    moemu_status_t st = MOEMU_OK;
    *len = 0;
    for (;;) {
        if (*len == cap) {
            char *nb = realloc(b, cap = cap ? 2 * cap : 1 << 16);
            if (!nb) {
                st = moemu_fail(MOEMU_ERR_NOMEM, "%s: no host memory to read it", path);
                break;
            }
            b = nb;
        }
        size_t got = fread(b + *len, 1, cap - *len, f);
        *len += got;
        if (*len > VAL_MAX_BYTES) {
            st = moemu_fail(MOEMU_ERR_IO, "%s: larger than 64 MiB", path);
            break;
        }
        if (got == 0) {
            if (ferror(f)) st = moemu_fail(MOEMU_ERR_IO, "%s: cannot read it", path);
            break;
        }
    }
    fclose(f);
    if (st != MOEMU_OK) free(b);
    *buf = st == MOEMU_OK ? b : NULL;
    return st;
}

/* The ids are the rows' names in a baseline: each once. */
static void unique_ids(const val_set_t *s, moemu_problems_t *pb)
{
    for (int i = 0; i < s->n; i++)
        for (int j = 0; j < i; j++)
            if (!strcmp(s->rows[i].id, s->rows[j].id)) {
                moemu_problem(pb, "line %d: id '%s' is also on line %d", s->rows[i].line,
                              s->rows[i].id, s->rows[j].line);
                break;
            }
}

moemu_status_t val_load(val_set_t *s, const char *path)
{
    *s = (val_set_t){0};
    snprintf(s->path, sizeof s->path, "%s", path);
    char *buf = NULL;
    size_t len = 0;
    MOEMU_CHECK(read_whole(path, &buf, &len));
    moemu_problems_t pb = {.lines = true};
    csv_ctx_t x = {.set = s, .pb = &pb};
    struct csv_parser p;
    if (csv_init(&p, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL)) {
        free(buf);
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: no host memory for the CSV parser", path);
    }
    bool ok = csv_parse(&p, buf, len, field_cb, record_cb, &x) == len &&
              csv_fini(&p, field_cb, record_cb, &x) == 0;
    const char *why = csv_strerror(csv_error(&p));
    csv_free(&p);
    free(buf);
    for (int c = 0; c <= COL__COUNT; c++) free(x.field[c]);
    moemu_status_t st = MOEMU_OK;
    if (ok) unique_ids(s, &pb);
    if (!ok) st = moemu_fail(MOEMU_ERR_FORMAT, "%s: not CSV after line %d: %s", path, x.line, why);
    else if (pb.n)
        st = moemu_fail_problems(MOEMU_ERR_INVALID, &pb, "%s: %d problem%s", path, pb.n,
                                 pb.n == 1 ? "" : "s");
    else if (s->n == 0) st = moemu_fail(MOEMU_ERR_INVALID, "%s: no rows", path);
    if (st != MOEMU_OK) val_free(s);
    return st;
}

void val_free(val_set_t *s)
{
    free(s->rows);
    *s = (val_set_t){0};
}

/* ---- running the rows */

/* Whether engine names a built-in profile. */
static bool has_profile(const char *engine)
{
    for (int i = 0; emu_engine_name(i); i++)
        if (!strcmp(engine, emu_engine_name(i))) return true;
    return false;
}

/* Row r's model (its dtype applied), card (its engine's figures over it
 * when there are: *profiled) and strategy into cfg and d: what its dry
 * run needs, or the first problem. */
static moemu_status_t row_setup(const val_row_t *r, const val_opts_t *o, cfg_model_t *cfg,
                                runner_opts_t *d, bool *profiled)
{
    char path[1024];
    bool builtin = false;
    for (int i = 0; cfg_builtin_names[i]; i++) builtin |= !strcmp(r->model, cfg_builtin_names[i]);
    if (!builtin && !o->models)
        return moemu_fail(MOEMU_ERR_INVALID, "model '%s' is not built in: give the directory "
                          "of its NAME.json (--models DIR)", r->model);
    snprintf(path, sizeof path, "%s/%s.json", o->models ? o->models : ".", r->model);
    MOEMU_CHECK(cfg_load(cfg, builtin ? r->model : path));
    cfg_store_dtype(cfg);
    *d = (runner_opts_t){.micro_batches = 1};
    if (!strcmp(r->dtype, "fp8")) { /* weights, products and KV cache (val.h) */
        cfg_store_fp8(cfg);
        d->prec = (run_prec_t){.compute = RUN_COMPUTE_FP8, .kv_fp8 = true};
    } else {
        emu_dtype_parse(r->dtype, &cfg->dtype);
    }
    *profiled = false;
    if (o->hw) {
        d->hw = *o->hw;
    } else {
        MOEMU_CHECK(emu_hw_load(r->hw, &d->hw));
        if (!o->presets_only && has_profile(r->engine))
            MOEMU_CHECK(emu_engine_apply(r->engine, &d->hw, profiled));
    }
    MOEMU_CHECK(runner_check_prec(cfg, d));
    MOEMU_CHECK(par_strategy_parse(r->strategy, &d->strategy));
    par_dims_t dims;
    family_of(cfg)->dims(cfg, &dims);
    int world = par_strategy_world(&d->strategy), nodes;
    MOEMU_CHECK(par_strategy_validate(&d->strategy, &dims, world));
    return emu_topo_nodes(&d->hw.topo, world, &nodes);
}

static double row_figure(val_metric_t m, const report_t *rep, const val_row_t *r)
{
    switch (m) {
    case VAL_LATENCY_S: return rep->e2e;
    case VAL_TTFT_MS: return rep->ttft_batch * 1e3;
    case VAL_TPOT_MS: return rep->tpot * 1e3;
    case VAL_OUT_TOKENS_PER_S: return (double)r->batch * r->decode / rep->e2e;
    default: return (double)r->batch * r->decode / rep->e2e / rep->devices;
    }
}

/* Row r's dry run: its figure, without the memory limit when it does not
 * fit (marked). */
static moemu_status_t row_run(val_row_t *r, const val_opts_t *o)
{
    cfg_model_t cfg;
    runner_opts_t d;
    MOEMU_CHECK(row_setup(r, o, &cfg, &d, &r->profiled));
    wl_t wl;
    wl_opts_t wo = {.batch = r->batch, .prompt_len = r->prompt_len, .decode = r->decode,
                    .seed = o->seed};
    MOEMU_CHECK(wl_make(&wl, &wo, &cfg));
    const char *routing = o->routing ? o->routing : "uniform";
    report_t rep;
    char oom[512];
    moemu_status_t st = report_dry_run_unlimited(&rep, &cfg, &wl, &d, routing, o->seed, false,
                                                 oom, sizeof oom);
    r->no_fit = oom[0] != '\0';
    wl_free(&wl);
    MOEMU_CHECK(st);
    r->moemu = row_figure(r->metric, &rep, r);
    r->ratio = r->moemu / r->published;
    report_free(&rep);
    return MOEMU_OK;
}

moemu_status_t val_run(val_set_t *s, const val_opts_t *o)
{
    snprintf(s->models, sizeof s->models, "%s", o->models ? o->models : "");
    moemu_problems_t pb = {.lines = true};
    for (int i = 0; i < s->n; i++) {
        val_row_t *r = &s->rows[i];
        cfg_model_t cfg;
        runner_opts_t d;
        bool profiled;
        if (row_setup(r, o, &cfg, &d, &profiled) != MOEMU_OK)
            moemu_problem(&pb, "line %d (%s): %s", r->line, r->id, moemu_errmsg());
    }
    if (pb.n)
        return moemu_fail_problems(MOEMU_ERR_INVALID, &pb, "%s: %d row%s cannot run", s->path,
                                   pb.n, pb.n == 1 ? "" : "s");
    for (int i = 0; i < s->n; i++) {
        val_row_t *r = &s->rows[i];
        moemu_status_t st = row_run(r, o);
        if (st != MOEMU_OK)
            return moemu_fail(st, "%s line %d (%s): %s", s->path, r->line, r->id,
                              moemu_errmsg());
        if (o->progress) o->progress(o->progress_arg, i + 1, s->n);
    }
    return MOEMU_OK;
}

/* ---- summaries */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static bool matches(const char *want, const char *have)
{
    return !want || !strcmp(want, have);
}

void val_summarize(const val_set_t *s, const char *use, const char *source, const char *hw,
                   val_summary_t *out)
{
    *out = (val_summary_t){.low = INFINITY, .high = 0};
    double *err = malloc(sizeof *err * (size_t)(s->n ? s->n : 1));
    for (int i = 0; i < s->n; i++) {
        const val_row_t *r = &s->rows[i];
        if (!matches(use, r->use) || !matches(source, r->source) || !matches(hw, r->hw)) continue;
        if (err) err[out->rows] = fabs(r->ratio - 1);
        out->rows++;
        out->low = fmin(out->low, r->ratio);
        out->high = fmax(out->high, r->ratio);
    }
    if (out->rows && err) {
        qsort(err, (size_t)out->rows, sizeof *err, cmp_double);
        int h = out->rows / 2;
        out->median_err = out->rows % 2 ? err[h] : (err[h - 1] + err[h]) / 2;
    }
    if (out->rows) {
        if (!err) out->median_err = NAN; /* no host memory to sort */
        out->worst = fmax(out->high, 1 / out->low);
    }
    if (!out->rows) out->low = 0;
    free(err);
}

/* ---- outputs */

/* Calls fn once for each distinct value of a row field (at offset off),
 * in the order of first appearance. */
static void each_distinct(const val_set_t *s, size_t off,
                          void (*fn)(const val_set_t *, const char *, void *), void *arg)
{
    for (int i = 0; i < s->n; i++) {
        const char *v = (const char *)&s->rows[i] + off;
        bool seen = false;
        for (int j = 0; j < i && !seen; j++) seen = !strcmp(v, (const char *)&s->rows[j] + off);
        if (!seen) fn(s, v, arg);
    }
}

static json_t *summary_json(const val_summary_t *m)
{
    return json_pack("{s:i, s:f, s:f, s:f, s:f}", "rows", m->rows,
                     "median_error", m->median_err, "lowest_ratio", m->low, "highest_ratio",
                     m->high, "worst_factor", m->worst);
}

static json_t *row_json(const val_row_t *r)
{
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:s, s:f}",
                          "id", r->id, "use", r->use, "source", r->source, "engine", r->engine,
                          "model", r->model, "hw", r->hw, "strategy", r->strategy, "batch",
                          r->batch, "prompt_len", r->prompt_len, "decode", r->decode, "metric",
                          val_metric_name(r->metric), "published", r->published);
    json_object_set_new(j, "moemu", json_real(r->moemu));
    json_object_set_new(j, "ratio", json_real(r->ratio));
    json_object_set_new(j, "fits", json_boolean(!r->no_fit));
    json_object_set_new(j, "engine_profile", json_boolean(r->profiled));
    return j;
}

json_t *val_json(const val_set_t *s)
{
    val_summary_t all, fit, hold;
    val_summarize(s, NULL, NULL, NULL, &all);
    val_summarize(s, "fit", NULL, NULL, &fit);
    val_summarize(s, "holdout", NULL, NULL, &hold);
    json_t *rows = json_array();
    for (int i = 0; i < s->n; i++) json_array_append_new(rows, row_json(&s->rows[i]));
    return json_pack("{s:{s:o, s:o, s:o}, s:o}", "summary", "all", summary_json(&all), "fit",
                     summary_json(&fit), "holdout", summary_json(&hold), "rows", rows);
}

/* A source's URL without its scheme and host when it is GitHub's: the
 * console's column is narrow. */
static const char *short_source(const char *v)
{
    if (!strncmp(v, "https://", 8)) v += 8;
    if (!strncmp(v, "github.com/", 11)) v += 11;
    return v;
}

static void summary_line(FILE *f, const char *what, const val_summary_t *m, bool md)
{
    char nums[96] = " - | - | - | -";
    if (m->rows)
        snprintf(nums, sizeof nums, "%.1f%% | %.3f | %.3f | %.2f", 100 * m->median_err, m->low,
                 m->high, m->worst);
    if (md) {
        fprintf(f, "| %s | %d | %s |\n", what, m->rows, nums);
        return;
    }
    fprintf(f, "  %-52.52s %5d", short_source(what), m->rows);
    if (m->rows)
        fprintf(f, " %11.1f%% %7.3f %7.3f %7.2f\n", 100 * m->median_err, m->low, m->high,
                m->worst);
    else
        fprintf(f, " %12s %7s %7s %7s\n", "-", "-", "-", "-");
}

typedef struct {
    FILE *f;
    bool md;
    size_t key; /* which field the group is by */
} group_arg_t;

static void group_line(const val_set_t *s, const char *v, void *arg)
{
    group_arg_t *g = arg;
    val_summary_t m;
    bool by_source = g->key == offsetof(val_row_t, source);
    val_summarize(s, NULL, by_source ? v : NULL, by_source ? NULL : v, &m);
    summary_line(g->f, v, &m, g->md);
}

static void summaries(const val_set_t *s, FILE *f, bool md)
{
    val_summary_t m;
    const char *uses[] = {NULL, "fit", "holdout"}, *names[] = {"all", "fit", "holdout"};
    for (int u = 0; u < 3; u++) {
        val_summarize(s, uses[u], NULL, NULL, &m);
        summary_line(f, names[u], &m, md);
    }
    group_arg_t g = {f, md, offsetof(val_row_t, hw)};
    each_distinct(s, g.key, group_line, &g);
    g.key = offsetof(val_row_t, source);
    each_distinct(s, g.key, group_line, &g);
}

static void row_line(FILE *f, const val_row_t *r, bool md)
{
    char fig[32], ratio[32];
    snprintf(fig, sizeof fig, "%.4g%s%s", r->moemu, r->profiled ? "+" : "", r->no_fit ? "*" : "");
    snprintf(ratio, sizeof ratio, "%.3f", r->ratio);
    if (md)
        fprintf(f, "| %s | %s | [%s](%s) | %s | %s | %s | %d x %d / %d | %s | %.4g | %s | %s |\n",
                r->id, r->use, r->engine, r->source, r->model, r->hw, r->strategy, r->batch,
                r->prompt_len, r->decode, val_metric_name(r->metric), r->published, fig, ratio);
    else
        fprintf(f, "%-34.34s %-7s %-20.20s %-9s %-11.11s %4d x %5d / %4d %-16s %10.4g %10s %6s\n",
                r->id, r->use, r->model, r->hw, r->strategy, r->batch, r->prompt_len, r->decode,
                val_metric_name(r->metric), r->published, fig, ratio);
}

void val_print(const val_set_t *s, FILE *f)
{
    fprintf(f, "%-34s %-7s %-20s %-9s %-11s %-20s %-16s %10s %10s %6s\n", "id", "use", "model",
            "hw", "strategy", "batch x in / out", "metric", "published", "moemu", "ratio");
    for (int i = 0; i < s->n; i++) row_line(f, &s->rows[i], false);
    fprintf(f, "(+ on the card's figures of the row's engine profile, hw/engines; * does not "
               "fit the devices' memory in moemu: run without the limit)\n\n");
    fprintf(f, "  %-52s %5s %12s %7s %7s %7s\n", "of the rows", "rows", "median |err|", "lowest",
            "highest", "worst");
    summaries(s, f, false);
}

moemu_status_t val_markdown(FILE *f, const void *set)
{
    const val_set_t *s = set;
    fprintf(f,
            "# Validation: moemu's virtual time against published measurements\n\n"
            "Generated by `moemu validate %s --models %s --markdown docs/validation.md "
            "--json docs/validation.json`; do not edit by hand. Each row is a "
            "published measurement with a fixed batch and fixed lengths (the CSV's format is in "
            "docs/report.md, Validation), repeated as a dry run with uniform routing on the "
            "card's preset, with the figures of the row's engine profile for that card where "
            "hw/engines has them (marked +; fitted by `moemu calibrate --engine` to the rows "
            "marked fit, so the holdout rows are the test of the fit). Rows of dtype fp8 run "
            "with the weights, the products and the KV cache in FP8 (`--weight-dtype fp8 "
            "--compute-dtype fp8 --kv-dtype fp8`). The ratio is moemu / published: below 1, "
            "moemu is faster than the "
            "measured engine; for the throughputs, above 1. The error is |ratio - 1|; the "
            "worst factor is max(highest, 1 / lowest). `make check` fails when the median "
            "error or the worst factor of all rows grows past docs/validation.json's.\n\n",
            s->path, s->models[0] ? s->models : ".");
    fprintf(f, "## Summary\n\n| of the rows | rows | median error | lowest | highest | worst "
               "factor |\n|---|---:|---:|---:|---:|---:|\n");
    summaries(s, f, true);
    fprintf(f, "\n## Rows\n\n| id | use | source | model | card | strategy | batch x in / out "
               "| metric | published | moemu | ratio |\n"
               "|---|---|---|---|---|---|---|---|---:|---:|---:|\n");
    for (int i = 0; i < s->n; i++) row_line(f, &s->rows[i], true);
    fprintf(f, "\n\\+ on the card's figures of the row's engine profile (hw/engines/ENGINE.json); "
               "\\* does not fit the devices' memory in moemu, the figure is a run without the "
               "limit.\n");
    return ferror(f) ? MOEMU_ERR_IO : MOEMU_OK;
}

/* The baseline's ids against the rows': the same set, else a problem
 * naming those that differ. */
static void same_ids(const val_set_t *s, json_t *rows, moemu_problems_t *pb)
{
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r) {
        const char *id = json_string_value(json_object_get(r, "id"));
        int k = 0;
        while (id && k < s->n && strcmp(s->rows[k].id, id)) k++;
        if (!id || k == s->n) moemu_problem(pb, "the baseline's row '%s' is not in the CSV",
                                            id ? id : "(no id)");
    }
    for (int k = 0; k < s->n; k++) {
        bool found = false;
        json_array_foreach(rows, i, r) {
            const char *id = json_string_value(json_object_get(r, "id"));
            found |= id && !strcmp(id, s->rows[k].id);
        }
        if (!found) moemu_problem(pb, "row '%s' is not in the baseline", s->rows[k].id);
    }
}

moemu_status_t val_against(const val_set_t *s, const char *baseline, FILE *f, bool *worse)
{
    json_error_t je;
    json_t *b = json_load_file(baseline, 0, &je);
    if (!b) return moemu_fail(MOEMU_ERR_FORMAT, "%s: %s (line %d)", baseline, je.text, je.line);
    json_t *all = json_object_get(json_object_get(b, "summary"), "all");
    json_t *rows = json_object_get(b, "rows");
    double med = json_number_value(json_object_get(all, "median_error"));
    double worst = json_number_value(json_object_get(all, "worst_factor"));
    if (!json_is_array(rows) || !json_is_number(json_object_get(all, "median_error")) ||
        !json_is_number(json_object_get(all, "worst_factor"))) {
        json_decref(b);
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: not a file of moemu validate --json "
                          "(summary.all.median_error, worst_factor and rows)", baseline);
    }
    moemu_problems_t pb = {.lines = true};
    same_ids(s, rows, &pb);
    json_decref(b);
    if (pb.n)
        return moemu_fail_problems(MOEMU_ERR_INVALID, &pb, "%s holds other rows than %s; "
                                   "regenerate it (docs/validation.md)", baseline, s->path);
    val_summary_t now;
    val_summarize(s, NULL, NULL, NULL, &now);
    /* a relative margin of 1e-9 for last-bit differences of libm between hosts */
    bool w_med = now.median_err > med * (1 + 1e-9), w_worst = now.worst > worst * (1 + 1e-9);
    fprintf(f, "against %s: median error %.2f%% (baseline %.2f%%)%s, worst factor %.3f "
               "(baseline %.3f)%s\n", baseline, 100 * now.median_err, 100 * med,
            w_med ? " WORSE" : "", now.worst, worst, w_worst ? " WORSE" : "");
    *worse = w_med || w_worst;
    return MOEMU_OK;
}
