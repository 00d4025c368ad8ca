/* libFuzzer harness: a checkpoint index (model.safetensors.index.json).
 * The fuzzer writes the index; its directory holds two valid shards
 * (model-00001-of-00002.safetensors with "a" [2, 2] and "b" [3],
 * model-00002-of-00002.safetensors with "c" [2], all F32) and a file that
 * is not one (config.json), so that an index can name real, missing and
 * broken shards. An index ckpt_open accepts is read whole. */
#include "engine/models/checkpoint.h"
#include "tests/fuzz/fuzz.h"

static const char *g_index;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(1);
    static const float v[4] = {1, 2, 3, 4};
    const st_write_tensor_t s1[] = {{.name = "a", .ndim = 2, .shape = {2, 2}, .data = v},
                                    {.name = "b", .ndim = 1, .shape = {3}, .data = v}};
    const st_write_tensor_t s2[] = {{.name = "c", .ndim = 1, .shape = {2}, .data = v}};
    FUZZ_REQUIRE(st_write(fuzz_path("model-00001-of-00002.safetensors"), s1, 2, ST_F32) ==
                     MOEMU_OK, "%s", moemu_errmsg());
    FUZZ_REQUIRE(st_write(fuzz_path("model-00002-of-00002.safetensors"), s2, 1, ST_F32) ==
                     MOEMU_OK, "%s", moemu_errmsg());
    static const char cfg[] = "{\"model_type\": \"mixtral\"}";
    fuzz_write(fuzz_path("config.json"), (const uint8_t *)cfg, sizeof cfg - 1);
    g_index = fuzz_path(CKPT_INDEX_NAME);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write(g_index, data, size);
    ckpt_t *ck;
    if (ckpt_open(g_index, &ck) != MOEMU_OK) return 0;
    int n = ckpt_count(ck);
    FUZZ_REQUIRE(n <= 3, "%d tensors from shards that hold 3", n);
    ckpt_want_t want[3];
    float out[3][4];
    for (int i = 0; i < n; i++) {
        const st_tensor_t *t = ckpt_at(ck, i);
        FUZZ_REQUIRE(ckpt_index(ck, t->name) == i && ckpt_file_of(ck, i),
                     "tensor %d '%s' found at %d", i, t->name, ckpt_index(ck, t->name));
        want[i] = (ckpt_want_t){.name = t->name, .ndim = t->ndim, .shape = t->shape,
                                .out = out[i]};
    }
    FUZZ_REQUIRE(ckpt_read_all(ck, want, n, "fuzz") == MOEMU_OK, "%s", moemu_errmsg());
    ckpt_close(ck);
    return 0;
}
