/* Every valid strategy on a device count, and the distance between two
 * strategies (docs/sweep.md states the rules and the order). */
#include <math.h>
#include <string.h>

#include "parallel/par.h"

static bool within(int v, int max) { return max <= 0 || v <= max; }

/* Append s to out if it is valid and there is room; count it either way. */
static void emit(const par_strategy_t *s, const par_dims_t *m, int devices,
                 par_strategy_t *out, int max, int *n)
{
    if (par_strategy_validate(s, m, devices) != MOEMU_OK) {
        moemu_errclear();
        return;
    }
    if (*n < max) out[*n] = *s;
    (*n)++;
}

/* The stage splits tried for PP stages of L layers, as pp_layers counts
 * (0 stages: the even split). Returns how many (1 or 2). */
static int stage_splits(const par_strategy_t *s, int L, bool even_only, int split[PAR_MAX_PP])
{
    /* the even split puts the extra layers of L % PP on the first stages,
     * so the last one (which also holds the final norm and lm_head) is
     * never heavier; when PP divides L, the last stage's one layer
     * fewer, moved to the first, is the other candidate */
    int P = s->pp;
    if (even_only || P < 2 || P > PAR_MAX_PP || L % P != 0 || L / P < 2) return 1;
    for (int i = 0; i < P; i++) split[i] = L / P;
    split[0]++;
    split[P - 1]--;
    return 2;
}

/* The divisors of n, ascending, into d; returns how many. Every degree
 * divides the device count, so the loops below walk these, not 1..n: a
 * million devices are enumerated in milliseconds, not minutes. */
#define PAR_ENUM_MAX_DIVISORS 1600 /* the most that a 32-bit int has */
static int divisors(int n, int *d)
{
    int lo = 0, hi = 0, big[PAR_ENUM_MAX_DIVISORS];
    for (int k = 1; k <= n / k; k++)
        if (n % k == 0) {
            d[lo++] = k;
            if (k != n / k) big[hi++] = n / k;
        }
    while (hi > 0) d[lo++] = big[--hi];
    return lo;
}

int par_strategy_enumerate(const par_dims_t *m, int devices, const par_enum_opts_t *opts,
                           par_strategy_t *out, int max)
{
    par_enum_opts_t o = opts ? *opts : (par_enum_opts_t){0};
    if (!m || devices < 1) return 0;
    if (!out) max = 0;
    int n = 0, split[PAR_MAX_PP], div[PAR_ENUM_MAX_DIVISORS];
    int nd = divisors(devices, div);
    for (int a = 0; a < nd; a++) {
        int pp = div[a];
        if (!within(pp, o.max_pp)) continue;
        int rest = devices / pp;
        for (int b = 0; b < nd && div[b] <= rest; b++) {
            int dp = div[b];
            if (rest % dp || !within(dp, o.max_dp)) continue;
            for (int c = 0; c < nd && div[c] <= rest / dp; c++) {
                int cp = div[c];
                if ((rest / dp) % cp || !within(cp, o.max_cp)) continue;
                int tp = rest / dp / cp, stage = dp * cp * tp;
                if (!within(tp, o.max_tp)) continue;
                for (int sp = 0; sp < 2; sp++) {
                    if (sp && (tp == 1 || o.sp == PAR_ENUM_SP_OFF)) continue;
                    if (!sp && (o.sp == PAR_ENUM_SP_ON || (o.sp == PAR_ENUM_SP_WITH_TP && tp > 1)))
                        continue;
                    for (int e = 0; e < nd && div[e] <= stage; e++) {
                        int ep = div[e];
                        if (stage % ep || m->experts % ep || !within(ep, o.max_ep)) continue;
                        for (int f = 0; f < nd && div[f] <= stage / ep; f++) {
                            int etp = div[f];
                            if ((stage / ep) % etp || !within(etp, o.max_etp)) continue;
                            if (m->expert_ffn % etp) continue;
                            par_strategy_t s;
                            par_strategy_default(&s);
                            s.pp = pp, s.dp = dp, s.cp = cp, s.tp = tp, s.sp = sp;
                            s.ep = ep, s.etp = etp;
                            int ns = stage_splits(&s, m->layers, o.even_only, split);
                            emit(&s, m, devices, out, max, &n);
                            if (ns == 2) {
                                s.n_pp_layers = pp;
                                memcpy(s.pp_layers, split, sizeof(int) * (size_t)pp);
                                emit(&s, m, devices, out, max, &n);
                            }
                        }
                    }
                }
            }
        }
    }
    return n;
}

static double dim_distance(int a, int b)
{
    return fabs(log2(a < 1 ? 1.0 : (double)a) - log2(b < 1 ? 1.0 : (double)b));
}

double par_strategy_distance(const par_strategy_t *a, const par_strategy_t *b)
{
    return dim_distance(a->pp, b->pp) + dim_distance(a->dp, b->dp) +
           dim_distance(a->cp, b->cp) + dim_distance(a->tp, b->tp) +
           dim_distance(a->ep, b->ep) + dim_distance(a->etp, b->etp) +
           (a->sp != b->sp ? 0.5 : 0.0);
}
