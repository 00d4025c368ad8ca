/* What the subcommands share besides their options: errors, number
 * parsing, hardware, progress. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli/cli.h"

int cli_error(void)
{
    cli_progress_done();
    fprintf(stderr, "moemu: error: %s\n", moemu_errmsg());
    return CLI_EXIT_ERROR;
}

moemu_status_t cli_parse_int(const char *flag, const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno != 0 || v < lo || v > hi)
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a whole number in [%d, %d]",
                          flag, s, lo, hi);
    *out = (int)v;
    return MOEMU_OK;
}

moemu_status_t cli_parse_u64(const char *flag, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    /* strtoull skips blanks and takes a sign: " -1" would be 2^64 - 1 */
    if (end == s || *end != '\0' || errno != 0 || !isdigit((unsigned char)s[0]))
        return moemu_fail(MOEMU_ERR_INVALID, "%s '%s': expected a non-negative whole number",
                          flag, s);
    *out = v;
    return MOEMU_OK;
}

moemu_status_t cli_load_model(cfg_model_t *c, const cli_shared_t *sh)
{
    MOEMU_CHECK(cfg_load(c, sh->model));
    if (sh->weight_store == 1) cfg_store_fp8(c);
    if (sh->weight_store == 2) cfg_store_dtype(c);
    return MOEMU_OK;
}

moemu_status_t cli_load_hw(const char *name, int nodes, int devices_per_node, int devices,
                           emu_hw_t *out, int *used)
{
    MOEMU_CHECK(emu_hw_load(name, out));
    if (devices_per_node) out->topo.devices_per_node = devices_per_node;
    if (nodes) out->topo.nodes = nodes;
    int n;
    return emu_topo_nodes(&out->topo, devices, used ? used : &n);
}

static bool progress_shown;

void cli_progress(void *arg, const char *phase, int step, int steps, int layer, int layers)
{
    (void)arg;
    if (!isatty(STDERR_FILENO)) return;
    fprintf(stderr, "\r%s %d/%d, layer %d/%d   ", phase, step, steps, layer + 1, layers);
    fflush(stderr);
    progress_shown = true;
}

void cli_progress_done(void)
{
    if (progress_shown) fprintf(stderr, "\r%60s\r", "");
    progress_shown = false;
}
