/* Rank layout: which device holds which layers, experts and positions, and the groups the collectives run over. TP is
 * innermost so that, with devices numbered node-major, a TP group stays
 * inside a node whenever the node's size is a multiple of TP. */
#include <stdint.h>

#include "parallel/par.h"

static int min_int(int a, int b) { return a < b ? a : b; }

void par_split(int n, int parts, int i, int *lo, int *hi)
{
    if (parts < 1) parts = 1;
    *lo = (int)((int64_t)i * n / parts);
    *hi = (int)((int64_t)(i + 1) * n / parts);
}

void par_stage_layers(const par_strategy_t *s, int layers, int stage, int *l0, int *l1)
{
    if (s->n_pp_layers > 0) {
        int a = 0;
        for (int i = 0; i < stage && i < s->n_pp_layers; i++) a += s->pp_layers[i];
        *l0 = a;
        *l1 = a + (stage < s->n_pp_layers ? s->pp_layers[stage] : 0);
        return;
    }
    int pp = s->pp < 1 ? 1 : s->pp;
    /* the first layers % PP stages take one layer more */
    int base = layers / pp, rem = layers % pp;
    *l0 = stage * base + min_int(stage, rem);
    *l1 = *l0 + base + (stage < rem);
}

void par_cp_ranges(int L, int cp, int c, int ranges[2][2])
{
    if (cp <= 1) {
        ranges[0][0] = 0, ranges[0][1] = L;
        ranges[1][0] = L, ranges[1][1] = L;
        return;
    }
    int64_t chunk = ((int64_t)L + 2 * cp - 1) / (2 * cp);
    const int64_t idx[2] = {c, 2 * (int64_t)cp - 1 - c};
    for (int k = 0; k < 2; k++) {
        int64_t lo = idx[k] * chunk, hi = lo + chunk;
        ranges[k][0] = (int)(lo < L ? lo : L);
        ranges[k][1] = (int)(hi < L ? hi : L);
    }
}

void par_sp_range(int T, int tp, int t, int *lo, int *hi)
{
    if (tp < 1) tp = 1;
    int64_t slice = ((int64_t)T + tp - 1) / tp, a = t * slice, b = a + slice;
    *lo = (int)(a < T ? a : T);
    *hi = (int)(b < T ? b : T);
}

int par_layout_rank(const par_strategy_t *s, int pp, int dp, int cp, int tp)
{
    return ((pp * s->dp + dp) * s->cp + cp) * s->tp + tp;
}

/* Coordinates of a rank; the MoE fold only when EP*ETP divides the stage. */
typedef struct {
    int pp, dp, cp, tp, idx; /* idx: index inside the stage */
    int edp, ep, etp;
    bool folded;
} coords_t;

static void coords(const par_strategy_t *s, int rank, coords_t *c)
{
    int stage = s->dp * s->cp * s->tp;
    c->pp = rank / stage;
    c->idx = rank % stage;
    c->tp = c->idx % s->tp;
    c->cp = c->idx / s->tp % s->cp;
    c->dp = c->idx / (s->tp * s->cp);
    int fold = s->ep * s->etp;
    c->folded = stage % fold == 0;
    c->etp = c->idx % s->etp;
    c->ep = c->idx / s->etp % s->ep;
    c->edp = c->idx / fold;
}

void par_layout_place(const par_strategy_t *s, const par_dims_t *m, int rank, par_place_t *out)
{
    coords_t c;
    coords(s, rank, &c);
    *out = (par_place_t){.rank = rank, .pp = c.pp, .dp = c.dp, .cp = c.cp, .tp = c.tp,
                         .edp = c.edp, .ep = c.ep, .etp = c.etp};
    par_stage_layers(s, m->layers, c.pp, &out->layer0, &out->layer1);
    par_split(m->experts, s->ep, c.ep, &out->expert0, &out->expert1);
    par_split(m->expert_ffn, s->etp, c.etp, &out->ffn0, &out->ffn1);
    out->has_embed = c.pp == 0;
    out->has_lm_head = c.pp == s->pp - 1;
}

const char *par_group_name(par_group_t g)
{
    static const char *const names[PAR_GROUP__COUNT] = {
        "tp", "cp", "dp", "pp", "ep", "etp", "edp", "replica", "stage"};
    return (unsigned)g < PAR_GROUP__COUNT ? names[g] : "?";
}

int par_layout_group(const par_strategy_t *s, par_group_t g, int rank, int *ranks)
{
    if (rank < 0 || rank >= par_strategy_world(s)) return 0;
    coords_t c;
    coords(s, rank, &c);
    int stage = s->dp * s->cp * s->tp, base = c.pp * stage, n = 0;
    switch (g) {
    case PAR_GROUP_TP:
        for (int i = 0; i < s->tp; i++) ranks[n++] = par_layout_rank(s, c.pp, c.dp, c.cp, i);
        break;
    case PAR_GROUP_CP:
        for (int i = 0; i < s->cp; i++) ranks[n++] = par_layout_rank(s, c.pp, c.dp, i, c.tp);
        break;
    case PAR_GROUP_DP:
        for (int i = 0; i < s->dp; i++) ranks[n++] = par_layout_rank(s, c.pp, i, c.cp, c.tp);
        break;
    case PAR_GROUP_PP:
        for (int i = 0; i < s->pp; i++) ranks[n++] = par_layout_rank(s, i, c.dp, c.cp, c.tp);
        break;
    case PAR_GROUP_EP:
        if (!c.folded) return 0;
        for (int i = 0; i < s->ep; i++) ranks[n++] = base + (c.edp * s->ep + i) * s->etp + c.etp;
        break;
    case PAR_GROUP_ETP:
        if (!c.folded) return 0;
        for (int i = 0; i < s->etp; i++) ranks[n++] = base + (c.edp * s->ep + c.ep) * s->etp + i;
        break;
    case PAR_GROUP_EDP: {
        if (!c.folded) return 0;
        int edp = stage / (s->ep * s->etp);
        for (int i = 0; i < edp; i++) ranks[n++] = base + (i * s->ep + c.ep) * s->etp + c.etp;
        break;
    }
    case PAR_GROUP_REPLICA:
        for (int i = 0; i < s->cp * s->tp; i++)
            ranks[n++] = par_layout_rank(s, c.pp, c.dp, i / s->tp, i % s->tp);
        break;
    case PAR_GROUP_STAGE:
        for (int i = 0; i < stage; i++) ranks[n++] = base + i;
        break;
    default: return 0;
    }
    return n;
}

int par_layout_group_rank(const par_strategy_t *s, par_group_t g, int rank)
{
    coords_t c;
    coords(s, rank, &c);
    switch (g) {
    case PAR_GROUP_TP: return c.tp;
    case PAR_GROUP_CP: return c.cp;
    case PAR_GROUP_DP: return c.dp;
    case PAR_GROUP_PP: return c.pp;
    case PAR_GROUP_EP: return c.ep;
    case PAR_GROUP_ETP: return c.etp;
    case PAR_GROUP_EDP: return c.edp;
    case PAR_GROUP_REPLICA: return c.cp * s->tp + c.tp;
    case PAR_GROUP_STAGE: return c.idx;
    default: return -1;
    }
}
