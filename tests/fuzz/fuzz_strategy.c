/* libFuzzer harness: a parallel strategy, as a string ("tp2-ep4-pp2",
 * "pp3=6/5/5-tp2") or a JSON object (par_strategy_parse), and the same
 * bytes as an uneven stage split ("5,4,4,3"). An accepted strategy must
 * come back the same from its canonical form; it is then checked against
 * the built-in "tiny" model on its own device count and, when valid and
 * of at most 4096 ranks, every rank is placed and its groups listed. */
#include "engine/models/family.h"
#include "tests/fuzz/fuzz.h"

static cfg_model_t g_cfg;
static par_dims_t g_dims;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(0);
    FUZZ_REQUIRE(cfg_load(&g_cfg, "tiny") == MOEMU_OK, "%s", moemu_errmsg());
    g_cfg.family->dims(&g_cfg, &g_dims);
    return 0;
}

static bool fuzz_same(const par_strategy_t *a, const par_strategy_t *b)
{
    if (a->tp != b->tp || a->cp != b->cp || a->dp != b->dp || a->pp != b->pp ||
        a->ep != b->ep || a->etp != b->etp || a->edp != b->edp || a->sp != b->sp ||
        a->n_pp_layers != b->n_pp_layers)
        return false;
    return !memcmp(a->pp_layers, b->pp_layers, (size_t)a->n_pp_layers * sizeof a->pp_layers[0]);
}

static void fuzz_layout(const par_strategy_t *s)
{
    int world = par_strategy_world(s);
    if (par_strategy_validate(s, &g_dims, world) != MOEMU_OK || world > 4096) return;
    static int ranks[4096];
    for (int r = 0; r < world; r++) {
        par_place_t p;
        par_layout_place(s, &g_dims, r, &p);
        FUZZ_REQUIRE(par_layout_rank(s, p.pp, p.dp, p.cp, p.tp) == r, "rank %d", r);
        FUZZ_REQUIRE(p.layer0 <= p.layer1 && p.expert0 < p.expert1 && p.ffn0 < p.ffn1,
                     "rank %d: layers [%d, %d), experts [%d, %d), ffn [%d, %d)", r, p.layer0,
                     p.layer1, p.expert0, p.expert1, p.ffn0, p.ffn1);
        for (int g = 0; g < PAR_GROUP__COUNT; g++) {
            int n = par_layout_group(s, (par_group_t)g, r, ranks);
            int k = par_layout_group_rank(s, (par_group_t)g, r);
            FUZZ_REQUIRE(n > 0 && n <= world && k >= 0 && k < n && ranks[k] == r,
                         "rank %d: %s group of %d, rank %d in it", r,
                         par_group_name((par_group_t)g), n, k);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    par_strategy_t s, back;
    if (par_strategy_parse(text, &s) == MOEMU_OK) {
        char canon[PAR_STRATEGY_STRLEN];
        par_strategy_format(&s, canon, sizeof canon);
        FUZZ_REQUIRE(par_strategy_parse(canon, &back) == MOEMU_OK, "'%s' does not parse: %s",
                     canon, moemu_errmsg());
        FUZZ_REQUIRE(fuzz_same(&s, &back), "'%s' reads back differently", canon);
        par_strategy_validate(&s, NULL, 0);
        fuzz_layout(&s);
    }
    par_strategy_default(&s);
    if (par_strategy_set_pp_layers(&s, text) == MOEMU_OK) par_strategy_validate(&s, &g_dims, 0);
    free(text);
    return 0;
}
