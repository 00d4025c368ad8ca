/* check: a strategy against the single-device baseline, on the same
 * weights, prompts and routing groups. */
#ifndef MOEMU_CHECK_H
#define MOEMU_CHECK_H

#include "engine/run/runner.h"

typedef struct {
    int64_t compared;      /* logits compared: every real position's (each
                              prompt position below its sequence's length
                              and every generated token's), no padding */
    double max_abs;        /* max |strategy - baseline| */
    double max_rel;        /* max |s - b| / max(|b|, rms(b)) */
    double rel_l2;         /* ||s - b|| / ||b|| */
    double rtol;
    int first_seq, first_token; /* first greedy token that differs, -1 */
    int64_t routed;        /* (token, layer) pairs routed */
    int64_t route_differ;  /* of which the experts chosen differ */
    int64_t dropped_base, dropped_strategy, assignments;
    /* the first real position where a logit is NaN or Inf (the prompts'
     * positions, then the generated tokens, each sequence by sequence):
     * its sequence and prompt position or generated token (the other -1),
     * and whose logit ("baseline" before "strategy"); -1 and NULL when
     * none. The error figures are over the pairs where both are finite. */
    int bad_seq, bad_pos, bad_token;
    const char *bad_side;
    bool pass;             /* logits compared, all finite, rel_l2 <= rtol
                              and identical tokens */
} check_result_t;

typedef struct {
    model_out_t base, strategy;
    emu_cluster_t *cluster;      /* the strategy's devices */
    emu_cluster_t *base_cluster; /* the baseline's one device: its clock is
                                    the report's one-device reference */
    double wall_base, wall_strategy;
    int *route_strategy; /* the strategy's routing record (L, B, P, k) */
    check_result_t r;
} check_t;

/* Run both and compare. progress as in model_opts_t (may be NULL). */
moemu_status_t check_run(check_t *c, const wts_t *w, const wl_t *wl,
                         const runner_opts_t *o, double rtol,
                         void (*progress)(void *, const char *, int, int, int, int));
/* The same against a reference strategy base instead of one device (a
 * model whose one-device baseline fits no host): base's equality to one
 * device is the conformance matrix's (docs/mpi.md); its DP must divide
 * the strategy's. c->base_cluster then holds base's devices. */
moemu_status_t check_run_against(check_t *c, const wts_t *w, const wl_t *wl,
                                 const runner_opts_t *o, const par_strategy_t *base,
                                 double rtol,
                                 void (*progress)(void *, const char *, int, int, int, int));
void check_free(check_t *c);
/* What check_run of o on wl takes of the host besides the weights, added
 * to need: the strategy's devices and the one-device baseline's, with
 * their outputs (runner_host_need). */
moemu_status_t check_host_need(emu_need_t *need, const cfg_model_t *cfg, const wl_t *wl,
                               const runner_opts_t *o);

/* "PASS", or "FAIL" with the reason when it is no comparison at all (no
 * logit compared, a logit that is not finite), written into buf. */
const char *check_verdict(const check_result_t *r, char *buf, size_t n);

#endif
