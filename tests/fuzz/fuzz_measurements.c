/* libFuzzer harness: a measurements CSV (moemu validate FILE) read by
 * val_load. What loads must keep its promises: rows with every field in
 * range, ids unique. */
#include <math.h>

#include "engine/tools/validate.h"
#include "tests/fuzz/fuzz.h"

static const char *g_path;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(1);
    g_path = fuzz_path("measurements.csv");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write(g_path, data, size);
    val_set_t s;
    moemu_status_t st = val_load(&s, g_path);
    FUZZ_REQUIRE(st == MOEMU_OK || st == MOEMU_ERR_INVALID || st == MOEMU_ERR_FORMAT,
                 "status %d: %s", st, moemu_errmsg());
    if (st != MOEMU_OK) return 0;
    FUZZ_REQUIRE(s.n > 0, "no rows loaded");
    for (int i = 0; i < s.n; i++) {
        const val_row_t *r = &s.rows[i];
        FUZZ_REQUIRE(r->batch >= 1 && r->prompt_len >= 1 && r->decode >= 1, "row %d", i);
        FUZZ_REQUIRE(r->published > 0 && isfinite(r->published), "row %d: %g", i, r->published);
        FUZZ_REQUIRE(r->metric >= 0 && r->metric < VAL__COUNT, "row %d: metric", i);
        for (int j = 0; j < i; j++) FUZZ_REQUIRE(strcmp(r->id, s.rows[j].id), "id twice");
    }
    val_free(&s);
    return 0;
}
