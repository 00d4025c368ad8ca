/* libFuzzer harness: a deployment plan (moemu plan FILE) read by
 * plan_load, from a directory that also holds model.json (a small
 * Mixtral config.json) for a plan's "model" to name. Inputs holding a '/'
 * (or "\u002f") are skipped: a plan names its files by path, and the
 * fuzzer must not wander the machine's (/dev/stdin would hang it). The
 * strategy of a plan that loads is parsed and checked as `moemu plan`
 * does before it runs anything. */
#include <strings.h>

#include "engine/models/family.h"
#include "engine/tools/plan.h"
#include "tests/fuzz/fuzz.h"

static const char *g_path;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(1);
    g_path = fuzz_path("plan.json");
    static const char model[] =
        "{\"model_type\": \"mixtral\", \"vocab_size\": 97, \"hidden_size\": 64,"
        " \"intermediate_size\": 96, \"num_hidden_layers\": 4, \"num_attention_heads\": 4,"
        " \"num_key_value_heads\": 2, \"head_dim\": 16, \"num_local_experts\": 8,"
        " \"num_experts_per_tok\": 2, \"max_position_embeddings\": 4096}";
    fuzz_write(fuzz_path("model.json"), (const uint8_t *)model, sizeof model - 1);
    return 0;
}

/* A '/' in the input, written out or escaped. */
static bool fuzz_has_slash(const char *text, size_t size)
{
    if (memchr(text, '/', size)) return true;
    for (size_t i = 0; i + 5 <= size; i++)
        if (!strncasecmp(text + i, "u002f", 5)) return true;
    return false;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (fuzz_has_slash((const char *)data, size)) return 0;
    fuzz_write(g_path, data, size);
    plan_t p;
    if (plan_load(&p, g_path) != MOEMU_OK) return 0;
    par_strategy_t s;
    if (par_strategy_parse(p.strategy, &s) == MOEMU_OK &&
        (!p.pp_layers[0] || par_strategy_set_pp_layers(&s, p.pp_layers) == MOEMU_OK)) {
        const model_family_t *fam = p.cfg.family ? p.cfg.family : &family_mixtral;
        par_dims_t m;
        fam->dims(&p.cfg, &m);
        par_strategy_validate(&s, &m, p.devices);
    }
    plan_free(&p);
    return 0;
}
