/* Strategy against baseline: both runs, then the comparison. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tools/check.h"

/* Accumulate the errors of a against the baseline b where b is a number
 * (NaN marks padding). */
typedef struct {
    double max_abs, max_rel, num, den;
    int64_t n;
} errs_t;

static void compare(errs_t *e, const float *a, const float *b, size_t n)
{
    double ss = 0;
    int64_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (!isnan(b[i])) ss += (double)b[i] * b[i], m++;
    double rms = m ? sqrt(ss / (double)m) : 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(b[i])) continue;
        double d = isnan(a[i]) ? INFINITY : fabs((double)a[i] - b[i]);
        double den = fabs(b[i]) > rms ? fabs(b[i]) : rms;
        e->max_abs = d > e->max_abs ? d : e->max_abs;
        if (den > 0 && d / den > e->max_rel) e->max_rel = d / den;
        e->num += d * d;
        e->den += (double)b[i] * b[i];
        e->n++;
    }
}

static void compare_all(check_result_t *r, const cfg_model_t *cfg, const wl_t *wl,
                        const model_out_t *b, const model_out_t *s, const int *rb, const int *rs)
{
    int B = wl->batch, N = wl->decode, V = cfg->vocab_size, k = cfg->num_experts_per_tok;
    errs_t e = {0};
    compare(&e, s->prompt_logits, b->prompt_logits, (size_t)B * wl->max_len * V);
    if (N > 0) compare(&e, s->gen_logits, b->gen_logits, (size_t)B * N * V);
    r->compared = e.n;
    r->max_abs = e.max_abs;
    r->max_rel = e.max_rel;
    r->rel_l2 = e.den > 0 ? sqrt(e.num / e.den) : sqrt(e.num);
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
    r->pass = r->rel_l2 <= r->rtol && r->first_seq < 0;
}

moemu_status_t check_run(check_t *c, const wts_t *w, const wl_t *wl, const runner_opts_t *o,
                         double rtol, void (*progress)(void *, const char *, int, int, int, int))
{
    memset(c, 0, sizeof *c);
    const cfg_model_t *cfg = &w->cfg;
    size_t nroute = (size_t)cfg->num_hidden_layers * wl->batch * runner_route_positions(wl) *
                    cfg->num_experts_per_tok;
    int *route = malloc(sizeof(int) * (2 * nroute + 1));
    moemu_status_t st = MOEMU_OK;
    if (!route) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing records");
    for (size_t i = 0; i < 2 * nroute; i++) route[i] = INT32_MIN;
    /* the baseline: one device of the same kind, routing in the strategy's
     * groups (DP replicas x micro-batches) */
    runner_opts_t one;
    runner_opts_one_device(&one, &o->hw, o->strategy.dp, o->micro_batches);
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
    if (!c->route_strategy) st = moemu_fail(MOEMU_ERR_NOMEM, "cannot keep the routing record");
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
