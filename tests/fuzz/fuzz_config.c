/* libFuzzer harness: a config.json (cfg_parse), then what the engine
 * derives from a config it accepted: the family's figures, its sizes for
 * the strategy rules, and a few strategies placed rank by rank with the
 * bytes each rank holds. */
#include "engine/models/family.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(0);
    return 0;
}

/* Place every rank of strategy text, when it is valid for c. */
static void fuzz_place(const cfg_model_t *c, const char *text)
{
    const model_family_t *fam = c->family ? c->family : &family_mixtral;
    par_strategy_t s;
    par_dims_t m;
    FUZZ_REQUIRE(par_strategy_parse(text, &s) == MOEMU_OK, "%s", moemu_errmsg());
    fam->dims(c, &m);
    int world = par_strategy_world(&s);
    if (par_strategy_validate(&s, &m, world) != MOEMU_OK) return;
    for (int r = 0; r < world; r++) {
        model_place_t p;
        double layer, head;
        fam->place(c, &s, r, &p);
        double held = fam->held(c, &p, &layer, &head);
        FUZZ_REQUIRE(held >= 0, "rank %d of %s holds %g bytes", r, text, held);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    cfg_model_t c;
    if (cfg_parse(&c, text, "fuzz") == MOEMU_OK) {
        FUZZ_REQUIRE(cfg_validate(&c) == MOEMU_OK, "accepted, then refused: %s", moemu_errmsg());
        const model_family_t *fam = c.family ? c.family : &family_mixtral;
        cfg_figures_t f;
        fam->figures(&c, &f);
        FUZZ_REQUIRE(f.total > 0 && f.active_per_token > 0, "total %lld, active %lld",
                     (long long)f.total, (long long)f.active_per_token);
        static const char *const strategies[] = {"tp1", "tp2-ep2", "pp2-dp2-tp2-sp-ep4-etp2",
                                                 "cp2-tp4-ep2"};
        for (size_t i = 0; i < sizeof strategies / sizeof strategies[0]; i++)
            fuzz_place(&c, strategies[i]);
    }
    free(text);
    return 0;
}
