/* moemu hw: the hardware presets with their figures, and the host as
 * hwloc sees it. */
#include <stdio.h>
#include <string.h>

#include "emu/emu.h"
#include "engine/cli/cli.h"

static void hw_usage(FILE *f)
{
    fprintf(f,
            "usage: moemu hw [NAME | FILE.json]...\n\n"
            "Without arguments: list the built-in hardware presets with their\n"
            "figures, and the host's cores as hwloc sees them. With preset names\n"
            "or JSON files: show each one in full, with the sources of its\n"
            "figures. `moemu run --hw NAME|FILE` takes the same arguments.\n\n"
            "Bandwidths are per device and per direction: NVLink's datasheet\n"
            "figure, which adds both directions, is halved; a NIC's line rate is\n"
            "already per direction. Capacities are decimal (1 GB = 1e9 bytes).\n\n"
            "  --help  this text\n");
}

static void hw_row(const emu_hw_t *h)
{
    char cap[32];
    printf("%-16s %7.0f %5.2f %8.3f %5.2f %9s %6.1f %5d %8.0f %6.1f %8.1f %6.1f\n",
           h->name, h->spec.peak_flops / 1e12, h->spec.mfu, h->spec.mem_bw / 1e12,
           h->spec.bw_util, emu_fmt_bytes(h->spec.mem_capacity, cap),
           h->spec.launch_s * 1e6, h->topo.devices_per_node,
           h->topo.intra_bw / 1e9, h->topo.intra_lat * 1e6,
           h->topo.inter_bw / 1e9, h->topo.inter_lat * 1e6);
}

static void hw_header(void)
{
    printf("%-16s %7s %5s %8s %5s %9s %6s %5s %8s %6s %8s %6s\n", "name",
           "TFLOP/s", "MFU", "mem TB/s", "util", "capacity", "launch",
           "/node", "intra", "lat", "inter", "lat");
    printf("%-16s %7s %5s %8s %5s %9s %6s %5s %8s %6s %8s %6s\n", "", "dense",
           "", "", "", "", "us", "", "GB/s", "us", "GB/s", "us");
}

/* The kinds priced by their own parameters (docs/emulation.md, "Matrix
 * products by their shapes"), one line each. */
static void hw_kernels(const emu_spec_t *s)
{
    if (s->units) printf("  compute units       %d\n", s->units);
    for (int k = 0; k < EMU_KERNEL__COUNT; k++) {
        const emu_kernel_cost_t *kc = &s->kernels[k];
        if (!kc->set) continue;
        char label[32];
        snprintf(label, sizeof label, "%s kernels", emu_kernel_name(k));
        printf("  %-19s ", label);
        if (kc->nrow_tiles) {
            printf("tiles of ");
            for (int i = 0; i < kc->nrow_tiles; i++) printf("%s%d", i ? "/" : "", kc->row_tiles[i]);
            printf(" rows x %d columns, ", kc->col_tile);
        }
        printf("overlap %.2f", kc->overlap);
        if (kc->mfu > 0) printf(", MFU %.2f", kc->mfu);
        printf("\n");
    }
}

static void hw_detail(const emu_hw_t *h)
{
    char cap[32];
    printf("%s\n", h->name);
    printf("  peak                %.1f TFLOP/s dense fp16/bf16, MFU %.2f "
           "(%.1f TFLOP/s achieved)\n",
           h->spec.peak_flops / 1e12, h->spec.mfu,
           h->spec.peak_flops * h->spec.mfu / 1e12);
    if (h->spec.peak_flops_fp8 > 0)
        printf("  peak fp8            %.1f TFLOP/s dense\n", h->spec.peak_flops_fp8 / 1e12);
    else
        printf("  peak fp8            none (no FP8 Tensor Cores: --compute-dtype fp8 refused)\n");
    printf("  memory bandwidth    %.3f TB/s at %.0f%% (%.3f TB/s achieved)\n",
           h->spec.mem_bw / 1e12, h->spec.bw_util * 100,
           h->spec.mem_bw * h->spec.bw_util / 1e12);
    printf("  memory capacity     %s\n", emu_fmt_bytes(h->spec.mem_capacity, cap));
    printf("  kernel launch       %.1f us\n", h->spec.launch_s * 1e6);
    if (h->spec.host_seq_s > 0)
        printf("  host per sequence   %.1f us each pass (the engine's scheduling and sampling)\n",
               h->spec.host_seq_s * 1e6);
    hw_kernels(&h->spec);
    printf("  devices per node    %d", h->topo.devices_per_node);
    if (h->topo.nodes) printf(", %d nodes", h->topo.nodes);
    printf("\n  intra-node link     %.1f GB/s per direction, %.1f us\n",
           h->topo.intra_bw / 1e9, h->topo.intra_lat * 1e6);
    printf("  inter-node NIC      %.1f GB/s per direction (%.0f Gb/s), %.1f us\n",
           h->topo.inter_bw / 1e9, h->topo.inter_bw * 8 / 1e9,
           h->topo.inter_lat * 1e6);
    if (h->comment[0]) {
        printf("  sources:\n");
        const char *line = h->comment;
        while (*line) {
            const char *end = strchr(line, '\n');
            int n = end ? (int)(end - line) : (int)strlen(line);
            printf("    %.*s\n", n, line);
            line += n + (end ? 1 : 0);
        }
    }
}

static int hw_host(void)
{
    emu_host_t h;
    if (emu_host_query(&h) != MOEMU_OK) return cli_error();
    printf("\nhost (hwloc): %d package%s, %d NUMA node%s, %d core%s, %d "
           "hardware thread%s%s%s\n",
           h.packages, h.packages == 1 ? "" : "s", h.numa_nodes,
           h.numa_nodes == 1 ? "" : "s", h.cores, h.cores == 1 ? "" : "s",
           h.pus, h.pus == 1 ? "" : "s", h.cpu_model[0] ? "; " : "",
           h.cpu_model);
    int cores = h.cores > 0 ? h.cores : h.pus;
    printf("device threads are pinned round robin over the %d core%s; while a "
           "run goes,\nOpenBLAS uses max(1, %d / devices) threads.\n",
           cores, cores == 1 ? "" : "s", cores);
    return CLI_EXIT_OK;
}

int cli_hw_main(int argc, char **argv)
{
    int named = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            hw_usage(stdout);
            return CLI_EXIT_OK;
        }
        if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "moemu hw: error: unknown option '%s' (see moemu "
                            "hw --help)\n",
                    argv[i]);
            return CLI_EXIT_ERROR;
        }
        named++;
    }
    emu_hw_t h;
    if (named) {
        for (int i = 1; i < argc; i++) {
            if (emu_hw_load(argv[i], &h) != MOEMU_OK) return cli_error();
            if (i > 1) printf("\n");
            hw_detail(&h);
        }
        return CLI_EXIT_OK;
    }
    printf("hardware presets (--hw NAME; `moemu hw NAME` shows the sources):\n\n");
    hw_header();
    for (int i = 0; i < emu_hw_preset_count(); i++) {
        if (emu_hw_load(emu_hw_preset_name(i), &h) != MOEMU_OK) return cli_error();
        hw_row(&h);
    }
    printf("\nbandwidths per device and per direction; a custom JSON file with the "
           "same keys\nworks as --hw FILE.json (docs/emulation.md).\n");
    return hw_host();
}
