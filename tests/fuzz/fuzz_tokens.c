/* libFuzzer harness: a tokens file (--tokens: a JSON list of lists of
 * token ids) read by wl_make for the built-in "tiny" model (vocabulary
 * 97), and the same bytes as the other two ways of giving prompt lengths,
 * a list "a,b,..." (--lens) and a range "MIN:MAX" (--range), with batch
 * 2 for the range. */
#include "engine/run/workload.h"
#include "tests/fuzz/fuzz.h"

static const char *g_path;
static cfg_model_t g_cfg;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(1);
    g_path = fuzz_path("tokens.json");
    FUZZ_REQUIRE(cfg_load(&g_cfg, "tiny") == MOEMU_OK, "%s", moemu_errmsg());
    return 0;
}

/* A workload wl_make accepted keeps its promises. */
static void fuzz_check(const wl_t *wl)
{
    FUZZ_REQUIRE(wl->batch > 0, "batch %d", wl->batch);
    for (int b = 0; b < wl->batch; b++) {
        FUZZ_REQUIRE(wl->len[b] > 0 && wl->len[b] <= wl->max_len &&
                         wl->len[b] <= g_cfg.max_position_embeddings,
                     "sequence %d of %d tokens", b, wl->len[b]);
        FUZZ_REQUIRE(wl->start[b + 1] - wl->start[b] == wl->len[b], "sequence %d", b);
    }
    for (int64_t i = 0; i < wl_prompt_tokens(wl); i++)
        FUZZ_REQUIRE(wl->tokens[i] >= 0 && wl->tokens[i] < g_cfg.vocab_size, "token %lld is %d",
                     (long long)i, wl->tokens[i]);
}

static void fuzz_make(const wl_opts_t *o)
{
    wl_t wl;
    if (wl_make(&wl, o, &g_cfg) != MOEMU_OK) return;
    fuzz_check(&wl);
    wl_free(&wl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write(g_path, data, size);
    fuzz_make(&(wl_opts_t){.tokens_file = g_path, .decode = 2, .seed = 1});
    char *text = fuzz_cstr(data, size);
    fuzz_make(&(wl_opts_t){.lens = text, .decode = 2, .seed = 1});
    fuzz_make(&(wl_opts_t){.batch = 2, .range = text, .decode = 2, .seed = 1});
    free(text);
    return 0;
}
