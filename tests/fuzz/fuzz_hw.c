/* libFuzzer harness: a hardware preset (the files in hw/, --hw FILE, a plan's
 * inline "hardware") read by emu_hw_parse; a preset it accepts must give
 * finite, positive kernel and collective times on both link classes, and
 * its topology must place devices on nodes. */
#include <math.h>

#include "tests/fuzz/fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_setup(0);
    return 0;
}

static void fuzz_use(const emu_hw_t *hw)
{
    const emu_topo_t *t = &hw->topo;
    double k = emu_kernel_time(&hw->spec, 1e12, 1e9);
    FUZZ_REQUIRE(isfinite(k) && k > 0, "a kernel takes %g s", k);
    static const int devices[] = {1, 8, 1000, 1 << 20};
    for (size_t i = 0; i < sizeof devices / sizeof devices[0]; i++) {
        int nodes = 0;
        if (emu_topo_nodes(t, devices[i], &nodes) != MOEMU_OK) continue;
        FUZZ_REQUIRE(nodes >= 1, "%d devices on %d nodes", devices[i], nodes);
        int last = devices[i] - 1;
        FUZZ_REQUIRE(emu_topo_node(t, last) < nodes, "device %d on node %d of %d", last,
                     emu_topo_node(t, last), nodes);
        emu_link_t l = emu_topo_link(t, 0, last);
        double c = emu_coll_cost(EMU_COLL_ALLREDUCE, 0, devices[i], 1e9, emu_topo_lat(t, l),
                                 emu_topo_bw(t, l));
        FUZZ_REQUIRE(isfinite(c) && c >= 0, "an all-reduce over %d devices takes %g s",
                     devices[i], c);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);
    emu_hw_t hw;
    if (emu_hw_parse(text, "fuzz", &hw) == MOEMU_OK) fuzz_use(&hw);
    free(text);
    return 0;
}
