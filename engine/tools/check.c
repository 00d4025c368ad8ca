/* Strategy against baseline: both runs, then the comparison. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/check.h"

/* Padding is known from the workload, never from the values: a NaN logit
 * at a real position is a failure, not padding. The real positions are,
 * in part 0, each sequence q's prompt positions j < len[q] and, in part 1,
 * its generated tokens j < decode. */
static int part_len(const wl_t *wl, int part, int q) { return part ? wl->decode : wl->len[q]; }

static const float *real_row(const model_out_t *o, const wl_t *wl, int V, int part, int q, int j)
{
    if (part == 0) return o->prompt_logits + ((size_t)q * wl->max_len + j) * V;
    return o->gen_logits + ((size_t)q * wl->decode + j) * V;
}

static bool all_finite(const float *x, int n)
{
    for (int i = 0; i < n; i++)
        if (!isfinite(x[i])) return false;
    return true;
}

/* Note the first real position where a side has a logit that is not
 * finite. */
static void note_bad(check_result_t *r, int part, int q, int j, const char *side)
{
    if (r->bad_seq >= 0) return;
    r->bad_seq = q;
    r->bad_pos = part ? -1 : j;
    r->bad_token = part ? j : -1;
    r->bad_side = side;
}

/* Errors of the strategy s against the baseline b over the finite pairs. */
typedef struct {
    double max_abs, max_rel, num, den;
} errs_t;

static void accumulate(errs_t *e, const float *s, const float *b, int V, double rms)
{
    for (int i = 0; i < V; i++) {
        if (!isfinite(s[i]) || !isfinite(b[i])) continue;
        double d = fabs((double)s[i] - b[i]);
        double den = fabs(b[i]) > rms ? fabs(b[i]) : rms;
        e->max_abs = d > e->max_abs ? d : e->max_abs;
        if (den > 0 && d / den > e->max_rel) e->max_rel = d / den;
        e->num += d * d;
        e->den += (double)b[i] * b[i];
    }
}

/* One part: count its logits, note the first that is not finite, then
 * the errors against the rms of the baseline's finite logits. */
static void compare_part(check_result_t *r, errs_t *e, const wl_t *wl, int V, int part,
                         const model_out_t *b, const model_out_t *s)
{
    double ss = 0;
    int64_t m = 0;
    for (int q = 0; q < wl->batch; q++)
        for (int j = 0; j < part_len(wl, part, q); j++) {
            const float *x = real_row(b, wl, V, part, q, j), *y = real_row(s, wl, V, part, q, j);
            r->compared += V;
            if (!all_finite(x, V)) note_bad(r, part, q, j, "baseline");
            if (!all_finite(y, V)) note_bad(r, part, q, j, "strategy");
            for (int i = 0; i < V; i++)
                if (isfinite(x[i])) ss += (double)x[i] * x[i], m++;
        }
    double rms = m ? sqrt(ss / (double)m) : 0;
    for (int q = 0; q < wl->batch; q++)
        for (int j = 0; j < part_len(wl, part, q); j++)
            accumulate(e, real_row(s, wl, V, part, q, j), real_row(b, wl, V, part, q, j), V,
                       rms);
}

/* The prompts' logits, then the generated tokens', each part against its
 * own rms (as before padding was known). */
static void compare_logits(check_result_t *r, const cfg_model_t *cfg, const wl_t *wl,
                           const model_out_t *b, const model_out_t *s)
{
    errs_t e = {0};
    r->bad_seq = r->bad_pos = r->bad_token = -1;
    for (int part = 0; part < 2; part++) compare_part(r, &e, wl, cfg->vocab_size, part, b, s);
    r->max_abs = e.max_abs;
    r->max_rel = e.max_rel;
    r->rel_l2 = e.den > 0 ? sqrt(e.num / e.den) : sqrt(e.num);
}

static void compare_all(check_result_t *r, const cfg_model_t *cfg, const wl_t *wl,
                        const model_out_t *b, const model_out_t *s, const int *rb, const int *rs)
{
    int B = wl->batch, N = wl->decode, k = cfg->num_experts_per_tok;
    compare_logits(r, cfg, wl, b, s);
    r->first_seq = r->first_token = -1;
    for (int q = 0; q < B && r->first_seq < 0; q++)
        for (int i = 0; i < N; i++)
            if (b->generated[(size_t)q * N + i] != s->generated[(size_t)q * N + i]) {
                r->first_seq = q;
                r->first_token = i;
                break;
            }
    int64_t pairs = (int64_t)cfg->num_hidden_layers * B * runner_route_positions(wl);
    for (int64_t t = 0; t < pairs; t++) {
        if (rb[t * k] == INT32_MIN) continue; /* no token at this position */
        r->routed++;
        for (int j = 0; j < k; j++) {
            int x = rb[t * k + j], y = rs[t * k + j];
            if ((x < 0 ? -1 - x : x) != (y < 0 ? -1 - y : y)) {
                r->route_differ++;
                break;
            }
        }
    }
    r->dropped_base = b->dropped;
    r->dropped_strategy = s->dropped;
    r->assignments = b->assignments;
    /* no logit compared, or one that is no number, compares nothing */
    r->pass = r->compared > 0 && r->bad_seq < 0 && r->rel_l2 <= r->rtol && r->first_seq < 0;
}

const char *check_verdict(const check_result_t *r, char *buf, size_t n)
{
    if (r->pass) snprintf(buf, n, "PASS");
    else if (r->compared == 0) snprintf(buf, n, "FAIL (no logit compared)");
    else if (r->bad_seq >= 0 && r->bad_pos >= 0)
        snprintf(buf, n, "FAIL (a non-finite logit in the %s at sequence %d, prompt position %d)",
                 r->bad_side, r->bad_seq, r->bad_pos);
    else if (r->bad_seq >= 0)
        snprintf(buf, n, "FAIL (a non-finite logit in the %s at sequence %d, generated token %d)",
                 r->bad_side, r->bad_seq, r->bad_token);
    else snprintf(buf, n, "FAIL");
    return buf;
}

moemu_status_t check_run_against(check_t *c, const wts_t *w, const wl_t *wl,
                                 const runner_opts_t *o, const par_strategy_t *base,
                                 double rtol,
                                 void (*progress)(void *, const char *, int, int, int, int))
{
    memset(c, 0, sizeof *c);
    const cfg_model_t *cfg = &w->cfg;
    size_t nroute = (size_t)cfg->num_hidden_layers * wl->batch * runner_route_positions(wl) *
                    cfg->num_experts_per_tok;
    int *route = malloc(sizeof(int) * (2 * nroute + 1));
    moemu_status_t st = MOEMU_OK;
    if (!route)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing records (%.2f GB)",
                          8e-9 * (double)nroute);
    for (size_t i = 0; i < 2 * nroute; i++) route[i] = INT32_MIN;
    /* the baseline: one device of the same kind (or the reference
     * strategy), routing in the strategy's groups (DP replicas x
     * micro-batches) */
    runner_opts_t one;
    runner_opts_one_device(&one, &o->hw, o->strategy.dp, o->micro_batches);
    if (base) {
        if (o->strategy.dp % base->dp != 0) {
            free(route);
            return moemu_fail(MOEMU_ERR_INVALID, "the baseline strategy's DP = %d must divide "
                              "the strategy's DP = %d (both route in the same groups)",
                              base->dp, o->strategy.dp);
        }
        one.strategy = *base;
        one.prec = o->prec;
    }
    model_opts_t mb = {.prompt_logits = true, .gen_logits = true, .route = route,
                       .progress = progress};
    double t0 = emu_host_seconds();
    if ((st = runner_generate(&c->base, &c->base_cluster, w, wl, &one, &mb)) != MOEMU_OK)
        goto done;
    c->wall_base = emu_host_seconds() - t0;
    model_opts_t ms = {.prompt_logits = true, .gen_logits = true, .route = route + nroute,
                       .progress = progress};
    t0 = emu_host_seconds();
    if ((st = runner_generate(&c->strategy, &c->cluster, w, wl, o, &ms)) != MOEMU_OK) goto done;
    c->wall_strategy = emu_host_seconds() - t0;
    c->r.rtol = rtol;
    compare_all(&c->r, cfg, wl, &c->base, &c->strategy, route, route + nroute);
    /* keep the strategy's record for a dry replay */
    c->route_strategy = malloc(sizeof(int) * (nroute + 1));
    if (!c->route_strategy)
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot keep the routing record (%.2f GB)",
                        4e-9 * (double)nroute);
    else memcpy(c->route_strategy, route + nroute, sizeof(int) * nroute);
done:
    free(route);
    if (st != MOEMU_OK) check_free(c);
    return st;
}

void check_free(check_t *c)
{
    model_out_free(&c->base);
    model_out_free(&c->strategy);
    emu_cluster_destroy(c->cluster);
    emu_cluster_destroy(c->base_cluster);
    c->cluster = c->base_cluster = NULL;
    free(c->route_strategy);
    c->route_strategy = NULL;
}

moemu_status_t check_host_need(emu_need_t *need, const cfg_model_t *cfg, const wl_t *wl,
                               const runner_opts_t *o)
{
    model_opts_t mo = {.prompt_logits = true, .gen_logits = true};
    MOEMU_CHECK(runner_host_need(need, cfg, wl, o, &mo));
    runner_opts_t one;
    runner_opts_one_device(&one, &o->hw, o->strategy.dp, o->micro_batches);
    return runner_host_need(need, cfg, wl, &one, &mo);
}

moemu_status_t check_run(check_t *c, const wts_t *w, const wl_t *wl, const runner_opts_t *o,
                         double rtol, void (*progress)(void *, const char *, int, int, int, int))
{
    return check_run_against(c, w, wl, o, NULL, rtol, progress);
}
