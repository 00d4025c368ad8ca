/* calibrate: Nelder-Mead over a preset's efficiency parameters, each
 * evaluation the dry runs of the card's fit rows. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/calibrate.h"
#include "engine/tools/outfile.h"

const char *const cal_param_names[CAL_PARAMS] = {"mfu", "bw_util", "launch_s", "overlap",
                                                  "host_seq_s"};

/* Each parameter's range: the fit moves within it. */
static const double lo[CAL_PARAMS] = {0.01, 0.01, 0, 0, 0},
                    hi[CAL_PARAMS] = {1, 1, 100e-6, 1, 1e-3};

/* The first kernel kind the preset sets, or -1. */
static int first_kind(const emu_spec_t *s)
{
    for (int k = 0; k < EMU_KERNEL__COUNT; k++)
        if (s->kernels[k].set) return k;
    return -1;
}

double cal_param(const emu_spec_t *s, int i)
{
    switch (i) {
    case CAL_MFU: return s->mfu;
    case CAL_BW_UTIL: return s->bw_util;
    case CAL_LAUNCH: return s->launch_s;
    case CAL_OVERLAP: return first_kind(s) < 0 ? NAN : s->kernels[first_kind(s)].overlap;
    default: return s->host_seq_s;
    }
}

static void set_param(emu_spec_t *s, int i, double v)
{
    if (i == CAL_MFU) s->mfu = v;
    if (i == CAL_BW_UTIL) s->bw_util = v;
    if (i == CAL_LAUNCH) s->launch_s = v;
    if (i == CAL_HOST) s->host_seq_s = v;
    for (int k = 0; i == CAL_OVERLAP && k < EMU_KERNEL__COUNT; k++)
        if (s->kernels[k].set) s->kernels[k].overlap = v;
}

bool cal_fitted(const cal_result_t *r, int i)
{
    for (int j = 0; j < r->nparams; j++)
        if (r->param[j] == i) return true;
    return false;
}

/* Unbounded coordinates u <-> the parameter lo + (hi - lo) * sigmoid(u). */
static double to_param(int i, double u) { return lo[i] + (hi[i] - lo[i]) / (1 + exp(-u)); }

static double to_coord(int i, double p)
{
    double f = (p - lo[i]) / (hi[i] - lo[i]);
    f = fmin(fmax(f, 1e-3), 1 - 1e-3); /* a start on the bound can still move */
    return log(f / (1 - f));
}

typedef struct {
    cal_result_t *r;
    const cal_opts_t *o;
    emu_hw_t hw;
} fit_ctx_t;

/* The fit rows' mean squared log ratio at coordinates u. */
static moemu_status_t loss_at(fit_ctx_t *x, const double *u, double *loss)
{
    for (int j = 0; j < x->r->nparams; j++) {
        int i = x->r->param[j];
        set_param(&x->hw.spec, i, to_param(i, u[j]));
    }
    val_opts_t run = x->o->run;
    run.hw = &x->hw;
    MOEMU_CHECK(val_run(&x->r->rows, &run));
    x->r->evals++;
    double sum = 0;
    int n = 0;
    for (int i = 0; i < x->r->rows.n; i++) {
        const val_row_t *w = &x->r->rows.rows[i];
        if (strcmp(w->use, "fit")) continue;
        sum += log(w->ratio) * log(w->ratio);
        n++;
    }
    *loss = n ? sum / n : 0;
    return MOEMU_OK;
}

/* Nelder-Mead's simplex: np + 1 points and their losses. */
typedef struct {
    double u[CAL_PARAMS + 1][CAL_PARAMS], f[CAL_PARAMS + 1];
    int np;
} simplex_t;

static void sort_simplex(simplex_t *s)
{
    for (int i = 1; i <= s->np; i++)
        for (int j = i; j > 0 && s->f[j] < s->f[j - 1]; j--) {
            double t = s->f[j];
            s->f[j] = s->f[j - 1];
            s->f[j - 1] = t;
            for (int k = 0; k < s->np; k++) {
                t = s->u[j][k];
                s->u[j][k] = s->u[j - 1][k];
                s->u[j - 1][k] = t;
            }
        }
}

/* c + t * (c - worst), c the centroid of the best np points. */
static void along(const simplex_t *s, double t, double *out)
{
    for (int k = 0; k < s->np; k++) {
        double c = 0;
        for (int i = 0; i < s->np; i++) c += s->u[i][k] / s->np;
        out[k] = c + t * (c - s->u[s->np][k]);
    }
}

static void replace_worst(simplex_t *s, const double *u, double f)
{
    memcpy(s->u[s->np], u, sizeof s->u[0]);
    s->f[s->np] = f;
}

/* One Nelder-Mead step (reflect, expand, contract, or shrink towards the
 * best point); the simplex stays sorted. */
static moemu_status_t nm_step(fit_ctx_t *x, simplex_t *s)
{
    double ur[CAL_PARAMS], ue[CAL_PARAMS], uc[CAL_PARAMS], fr, fe, fc;
    int np = s->np;
    along(s, 1, ur);
    MOEMU_CHECK(loss_at(x, ur, &fr));
    if (fr < s->f[0]) {
        along(s, 2, ue);
        MOEMU_CHECK(loss_at(x, ue, &fe));
        fe < fr ? replace_worst(s, ue, fe) : replace_worst(s, ur, fr);
    } else if (fr < s->f[np - 1]) {
        replace_worst(s, ur, fr);
    } else {
        along(s, fr < s->f[np] ? 0.5 : -0.5, uc);
        MOEMU_CHECK(loss_at(x, uc, &fc));
        if (fc < fmin(fr, s->f[np])) {
            replace_worst(s, uc, fc);
        } else {
            for (int i = 1; i <= np; i++) {
                for (int k = 0; k < np; k++)
                    s->u[i][k] = (s->u[0][k] + s->u[i][k]) / 2;
                MOEMU_CHECK(loss_at(x, s->u[i], &s->f[i]));
            }
        }
    }
    sort_simplex(s);
    return MOEMU_OK;
}

/* The card's rows of engine (NULL: any) into r->rows. */
static moemu_status_t card_rows(cal_result_t *r, const val_set_t *all, const char *card,
                                const char *engine)
{
    r->rows.rows = calloc((size_t)(all->n ? all->n : 1), sizeof *r->rows.rows);
    r->before_moemu = calloc((size_t)(all->n ? all->n : 1), sizeof *r->before_moemu);
    if (!r->rows.rows || !r->before_moemu)
        return moemu_fail(MOEMU_ERR_NOMEM, "no host memory for %d rows", all->n);
    snprintf(r->rows.path, sizeof r->rows.path, "%s", all->path);
    for (int i = 0; i < all->n; i++) {
        const val_row_t *w = &all->rows[i];
        if (strcmp(w->hw, card) || (engine && strcmp(w->engine, engine)))
            continue;
        r->rows.rows[r->rows.n++] = *w;
        if (!strcmp(w->use, "fit")) r->fit++;
        else r->holdout++;
    }
    if (r->fit == 0)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: no fit row of card '%s'%s%s (FP8 rows left "
                          "out) to calibrate on", all->path, card, engine ? " and engine " : "",
                          engine ? engine : "");
    return MOEMU_OK;
}

moemu_status_t cal_fit(cal_result_t *r, const val_set_t *all, const cal_opts_t *o)
{
    *r = (cal_result_t){0};
    fit_ctx_t x = {.r = r, .o = o};
    MOEMU_CHECK(emu_hw_load(o->hw, &x.hw));
    snprintf(r->card, sizeof r->card, "%s", x.hw.name);
    char engine[64];
    if (o->engine) {
        /* the rows name the engine as its profile does */
        json_t *root;
        MOEMU_CHECK(emu_engine_json(o->engine, &root));
        const char *name = json_string_value(json_object_get(root, "name"));
        snprintf(engine, sizeof engine, "%s", name ? name : o->engine);
        json_decref(root);
        bool found;
        MOEMU_CHECK(emu_engine_apply(o->engine, &x.hw, &found));
    }
    r->before = x.hw;
    MOEMU_CHECK(card_rows(r, all, o->hw, o->engine ? engine : NULL));
    /* the overlap where the preset has kernel kinds; the host's work where
     * an engine's rows are fitted: it is the engine's */
    for (int i = 0; i < CAL_PARAMS; i++)
        if ((i != CAL_OVERLAP || first_kind(&x.hw.spec) >= 0) && (i != CAL_HOST || o->engine))
            r->param[r->nparams++] = i;
    simplex_t s = {.np = r->nparams};
    for (int k = 0; k < s.np; k++)
        s.u[0][k] = to_coord(r->param[k], cal_param(&x.hw.spec, r->param[k]));
    MOEMU_CHECK(loss_at(&x, s.u[0], &s.f[0]));
    r->loss_before = s.f[0];
    for (int i = 0; i < r->rows.n; i++) r->before_moemu[i] = r->rows.rows[i].moemu;
    for (int i = 1; i <= s.np; i++) {
        memcpy(s.u[i], s.u[0], sizeof s.u[0]);
        s.u[i][i - 1] += 1.0; /* a step of a few tenths in each parameter */
        MOEMU_CHECK(loss_at(&x, s.u[i], &s.f[i]));
    }
    sort_simplex(&s);
    int max = o->max_evals > 0 ? o->max_evals : 300;
    /* until the losses agree to 1e-4 of the best (a hundredth of a percent
     * in the ratios) or the runs are spent */
    while (r->evals < max && s.f[s.np] - s.f[0] > 1e-4 * s.f[0] + 1e-12)
        MOEMU_CHECK(nm_step(&x, &s));
    MOEMU_CHECK(loss_at(&x, s.u[0], &r->loss_after)); /* the rows' figures at the best */
    r->after = x.hw;
    return MOEMU_OK;
}

void cal_free(cal_result_t *r)
{
    val_free(&r->rows);
    free(r->before_moemu);
    *r = (cal_result_t){0};
}

/* The summary of use's rows with the preset's figures (before) or the
 * fitted ones. */
static void summary_of(const cal_result_t *r, const char *use, bool before, val_summary_t *m)
{
    val_set_t s = r->rows;
    s.rows = malloc(sizeof *s.rows * (size_t)(s.n ? s.n : 1));
    if (!s.rows) {
        *m = (val_summary_t){.median_err = NAN, .worst = NAN};
        return;
    }
    memcpy(s.rows, r->rows.rows, sizeof *s.rows * (size_t)s.n);
    for (int i = 0; before && i < s.n; i++)
        s.rows[i].ratio = r->before_moemu[i] / s.rows[i].published;
    val_summarize(&s, use, NULL, NULL, m);
    free(s.rows);
}

void cal_print(const cal_result_t *r, FILE *f)
{
    fprintf(f, "calibrate %s on %s: %d rows (%d fit, %d holdout), %d runs of the rows\n",
            r->before.name, r->rows.path, r->rows.n, r->fit, r->holdout, r->evals);
    fprintf(f, "  %-10s %12s %12s\n", "parameter", "preset", "fitted");
    for (int j = 0; j < r->nparams; j++) {
        int i = r->param[j];
        fprintf(f, "  %-10s %12.4g %12.4g\n", cal_param_names[i], cal_param(&r->before.spec, i),
                cal_param(&r->after.spec, i));
    }
    fprintf(f, "  mean squared log ratio of the fit rows: %.4g -> %.4g\n\n", r->loss_before,
            r->loss_after);
    fprintf(f, "%-34s %-7s %-24s %10s %10s %7s %10s %7s\n", "id", "use", "metric", "published",
            "preset", "ratio", "fitted", "ratio");
    for (int i = 0; i < r->rows.n; i++) {
        const val_row_t *w = &r->rows.rows[i];
        fprintf(f, "%-34.34s %-7s %-24s %10.4g %10.4g %7.3f %10.4g %7.3f\n", w->id, w->use,
                val_metric_name(w->metric), w->published, r->before_moemu[i],
                r->before_moemu[i] / w->published, w->moemu, w->ratio);
    }
    fprintf(f, "\n  %-8s %22s %22s\n", "rows", "median |err| before/after",
            "worst factor before/after");
    const char *uses[2] = {"fit", "holdout"};
    for (int u = 0; u < 2; u++) {
        val_summary_t b, a;
        summary_of(r, uses[u], true, &b);
        summary_of(r, uses[u], false, &a);
        if (!a.rows) continue;
        fprintf(f, "  %-8s %10.1f%% -> %5.1f%% %13.2f -> %5.2f\n", uses[u], 100 * b.median_err,
                100 * a.median_err, b.worst, a.worst);
    }
}

/* "Calibrated by moemu calibrate from ...: what was fitted to what, and
 * the median errors before and after." */
static void fit_note(const cal_result_t *r, const cal_opts_t *o, char *line, size_t n)
{
    val_summary_t fb, fa, hb, ha;
    summary_of(r, "fit", true, &fb);
    summary_of(r, "fit", false, &fa);
    summary_of(r, "holdout", true, &hb);
    summary_of(r, "holdout", false, &ha);
    bool ov = cal_fitted(r, CAL_OVERLAP), host = cal_fitted(r, CAL_HOST);
    snprintf(line, n, "Calibrated by moemu calibrate from %s: mfu, bw_util, launch_s%s fitted "
             "to its %d fit rows of %s%s%s (median error %.1f%% -> %.1f%%); its %d holdout rows: "
             "median error %.1f%% -> %.1f%%.", r->rows.path,
             ov && host ? ", the kernel kinds' overlap and host_seq_s"
             : ov       ? " and the kernel kinds' overlap"
             : host     ? " and host_seq_s"
                        : "", r->fit, r->card,
             o->engine ? " and engine " : "", o->engine ? o->engine : "", 100 * fb.median_err,
             100 * fa.median_err, r->holdout, 100 * hb.median_err, 100 * ha.median_err);
}

/* The fitted parameters into obj (a preset's device or a profile's card)
 * but the overlap, which a preset keeps per kernel kind. */
static void put_params(const cal_result_t *r, json_t *obj, bool overlap)
{
    for (int j = 0; j < r->nparams; j++)
        if (r->param[j] != CAL_OVERLAP || overlap)
            json_object_set_new(obj, cal_param_names[r->param[j]],
                                json_real(cal_param(&r->after.spec, r->param[j])));
}

static json_t *profile_json(const cal_result_t *r, const cal_opts_t *o, const char *note,
                            moemu_status_t *st)
{
    json_t *root;
    if ((*st = emu_engine_json(o->engine, &root)) != MOEMU_OK) return NULL;
    json_t *cards = json_object_get(root, "cards"), *e = json_object();
    if (!json_is_object(cards)) json_object_set_new(root, "cards", cards = json_object());
    put_params(r, e, true);
    json_object_set_new(e, "comment", json_string(note));
    json_object_set_new(cards, r->card, e);
    return root;
}

static json_t *preset_json(const cal_result_t *r, const cal_opts_t *o, const char *note,
                           moemu_status_t *st)
{
    json_t *root;
    if ((*st = emu_hw_json(o->hw, &root)) != MOEMU_OK) return NULL;
    json_t *dev = json_object_get(root, "device"), *kinds = json_object_get(dev, "kernels"), *k;
    put_params(r, dev, false);
    const char *kind;
    if (cal_fitted(r, CAL_OVERLAP))
        json_object_foreach(kinds, kind, k)
            json_object_set_new(k, "overlap", json_real(cal_param(&r->after.spec, CAL_OVERLAP)));
    char name[96];
    snprintf(name, sizeof name, "%s-calibrated", r->card);
    json_object_set_new(root, "name", json_string(name));
    json_t *c = json_object_get(root, "comment");
    if (json_is_string(c)) {
        json_t *arr = json_array();
        json_array_append(arr, c);
        json_object_set_new(root, "comment", c = arr);
    } else if (!json_is_array(c)) {
        json_object_set_new(root, "comment", c = json_array());
    }
    json_array_append_new(c, json_string(note));
    return root;
}

moemu_status_t cal_write(const cal_result_t *r, const cal_opts_t *o, const char *path)
{
    char note[1024];
    fit_note(r, o, note, sizeof note);
    moemu_status_t st;
    json_t *root = o->engine ? profile_json(r, o, note, &st) : preset_json(r, o, note, &st);
    if (!root) return st;
    st = outfile_json(path, root);
    json_decref(root);
    return st;
}
