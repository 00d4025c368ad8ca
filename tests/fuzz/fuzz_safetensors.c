/* libFuzzer harness: a safetensors file. st_open validates the header and
 * the layout; every tensor it accepts is then looked up by name and read
 * as it is typed (F32, F16, BF16, F8_E4M3 to fp32, I32 as it is); last,
 * the same file opened as a one-file checkpoint and read by ckpt_read_all
 * as a model would want its float tensors, with FP8 blocks of 2 x 2 so
 * that small inputs reach the scale checks. */
#include "engine/models/checkpoint.h"
#include "tests/fuzz/fuzz.h"

static const char *g_path;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(1);
    g_path = fuzz_path("model.safetensors");
    return 0;
}

static bool fuzz_is_float(st_dtype_t dt)
{
    return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_F8_E4M3;
}

/* Elements of t, from its bytes (the header's shape was checked to match
 * them for the dtypes moemu knows). */
static size_t fuzz_count(const st_tensor_t *t) { return t->nbytes / st_dtype_size(t->dtype); }

static void fuzz_read_each(void)
{
    st_file_t *f;
    if (st_open(g_path, &f) != MOEMU_OK) return;
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor_t *t = st_at(f, i);
        FUZZ_REQUIRE(st_index(f, t->name) == i, "tensor %d '%s' found at %d", i, t->name,
                     st_index(f, t->name));
        if (t->dtype == ST_OTHER) continue;
        void *out = malloc(fuzz_count(t) * sizeof(float) + 4); /* fp32 or int32 */
        FUZZ_REQUIRE(out, "out of memory");
        moemu_status_t st = t->dtype == ST_I32
                                ? st_read_i32(f, t->name, t->ndim, t->shape, out)
                                : fuzz_is_float(t->dtype)
                                      ? st_read_f32(f, t->name, t->ndim, t->shape, out)
                                      : MOEMU_OK;
        FUZZ_REQUIRE(st == MOEMU_OK, "'%s' not read as its own shape: %s", t->name,
                     moemu_errmsg());
        free(out);
    }
    st_close(f);
}

static bool fuzz_is_scale(const char *name)
{
    size_t n = strlen(name), k = strlen("_scale_inv");
    return n >= k && !strcmp(name + n - k, "_scale_inv");
}

/* A shape a model could want: its sizes are positive ints (a want of
 * [2^40, 0, 4] would have ckpt_read_all walk 2^40 empty matrices). */
static bool fuzz_model_shape(const st_tensor_t *t)
{
    for (int d = 0; d < t->ndim; d++)
        if (t->shape[d] < 1 || t->shape[d] > INT32_MAX) return false;
    return true;
}

static void fuzz_read_all(void)
{
    ckpt_t *ck;
    if (ckpt_open(g_path, &ck) != MOEMU_OK) return;
    int n = ckpt_count(ck), k = 0;
    ckpt_want_t *want = calloc((size_t)n + 1, sizeof *want);
    FUZZ_REQUIRE(want, "out of memory");
    for (int i = 0; i < n; i++) {
        const st_tensor_t *t = ckpt_at(ck, i);
        if (!fuzz_is_float(t->dtype) || fuzz_is_scale(t->name) || !fuzz_model_shape(t))
            continue;
        want[k] = (ckpt_want_t){.name = t->name, .ndim = t->ndim, .shape = t->shape,
                                .out = malloc(fuzz_count(t) * sizeof(float) + 4)};
        FUZZ_REQUIRE(want[k].out, "out of memory");
        k++;
    }
    ckpt_read_opts_t o = {.block_r = 2, .block_c = 2};
    ckpt_read_all_opts(ck, want, k, "fuzz", &o);
    for (int i = 0; i < k; i++) free(want[i].out);
    free(want);
    ckpt_close(ck);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write(g_path, data, size);
    fuzz_read_each();
    fuzz_read_all();
    return 0;
}
