/* libFuzzer harness: a routing replay (--routing replay:FILE, a
 * safetensors file with one I32 tensor "routing" of shape (layers, batch,
 * positions, k)) for the built-in "tiny" model (4 layers, top-2 of 8
 * experts) and a workload of 2 prompts of 3 tokens generating 2, so
 * (4, 2, 4, 2); a replay route_open accepts is replayed for every token.
 * The same bytes as a routing spec ("uniform", "zipf:S") too. */
#include "engine/run/routing.h"
#include "engine/run/runner.h"
#include "tests/fuzz/fuzz.h"

static char g_spec[600];
static cfg_model_t g_cfg;
static wl_t g_wl;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(1);
    snprintf(g_spec, sizeof g_spec, "replay:%s", fuzz_path("routing.st"));
    FUZZ_REQUIRE(cfg_load(&g_cfg, "tiny") == MOEMU_OK, "%s", moemu_errmsg());
    wl_opts_t o = {.batch = 2, .prompt_len = 3, .decode = 2, .seed = 1};
    FUZZ_REQUIRE(wl_make(&g_wl, &o, &g_cfg) == MOEMU_OK, "%s", moemu_errmsg());
    return 0;
}

/* Every token's choices: k distinct experts of the model. */
static void fuzz_choose(const route_src_t *r)
{
    int idx[64];
    for (int l = 0; l < r->L; l++)
        for (int b = 0; b < r->B; b++)
            for (int p = 0; p < r->P; p++) {
                route_choose(r, l, b, p, idx);
                for (int j = 0; j < r->k; j++) {
                    FUZZ_REQUIRE(idx[j] >= 0 && idx[j] < r->E, "expert %d", idx[j]);
                    for (int q = 0; q < j; q++)
                        FUZZ_REQUIRE(idx[q] != idx[j], "expert %d twice", idx[j]);
                }
            }
}

static void fuzz_open(const char *spec)
{
    route_src_t r;
    if (route_open(&r, spec, &g_cfg, &g_wl, 1) != MOEMU_OK) return;
    fuzz_choose(&r);
    route_close(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write(g_spec + strlen("replay:"), data, size);
    fuzz_open(g_spec);
    /* never replay: from the fuzzer's bytes, a path it could name */
    if (size >= 7 && !memcmp(data, "replay:", 7)) return 0;
    char *text = fuzz_cstr(data, size);
    fuzz_open(text);
    free(text);
    return 0;
}
