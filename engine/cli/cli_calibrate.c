/* moemu calibrate: a preset's efficiency parameters fitted to measured
 * figures. */
#include <stddef.h>
#include <string.h>

#include "engine/cli/cli.h"
#include "engine/tools/calibrate.h"
#include "engine/tools/outfile.h"

static const char calibrate_help[] =
    "usage: moemu calibrate MEASUREMENTS.csv --hw H [OPTIONS]\n"
    "\n"
    "Fit the card's efficiency parameters (device.mfu, device.bw_util,\n"
    "device.launch_s of the preset or file H) to the CSV's rows of that card\n"
    "marked fit, each a dry run as moemu validate runs it; print the\n"
    "parameters before and after, every row of the card before and after, and\n"
    "the median error and worst factor of the fit and holdout rows; with --out,\n"
    "write the preset with the fitted parameters. docs/report.md (Calibration).\n"
    "\n";

typedef struct {
    const char *models, *out, *engine;
    int max_evals;
} calibrate_cli_t;

#define CO(field) offsetof(calibrate_cli_t, field)

static const cli_opt_t calibrate_options[] = {
    {.name = "hw", .type = CLI_SHARED, .help = "the card (preset or JSON file): its rows are fitted"},
    {.name = "engine", .arg = "NAME|FILE", .type = CLI_STR, .off = CO(engine),
     .help = "fit the rows of this engine, from its profile's figures for the card,\n"
             "and write the profile (hw/engines/NAME.json) with the card's entry set"},
    {.name = "models", .arg = "DIR", .type = CLI_STR, .off = CO(models),
     .help = "directory of the rows' model configs, NAME.json (e.g. examples/models)"},
    {.name = "routing", .type = CLI_SHARED,
     .help = "the dry runs' router: uniform (default) or zipf:S"},
    CLI_USE("seed"),
    {.name = "max-runs", .arg = "N", .type = CLI_INT, .off = CO(max_evals), .lo = 1,
     .hi = 100000, .help = "runs of the fit rows at most (default 300)"},
    {.name = "out", .arg = "FILE", .type = CLI_STR, .off = CO(out),
     .help = "write the calibrated preset, or with --engine the profile, to FILE"},
    {.name = NULL},
};

int cli_calibrate_main(int argc, char **argv)
{
    cli_shared_t sh;
    cli_shared_init(&sh);
    sh.hw = NULL;
    calibrate_cli_t c = {0};
    bool help;
    int first;
    if (cli_parse("moemu calibrate", argc, argv, calibrate_options, &sh, &c, &help, &first) !=
        MOEMU_OK)
        return cli_error();
    if (help) {
        fputs(calibrate_help, stdout);
        cli_help(stdout, calibrate_options);
        return CLI_EXIT_OK;
    }
    if (first != argc - 1 || !sh.hw) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu calibrate: give one measurements CSV and --hw (see "
                                      "moemu calibrate --help)");
        return cli_error();
    }
    if (cli_rows_routing("moemu calibrate", sh.routing) != MOEMU_OK) return cli_error();
    const outfile_arg_t outs[] = {{.flag = "--out", .path = c.out}};
    const outfile_arg_t in = {.flag = "the measurements", .path = argv[first]};
    if (cli_outputs_check(&sh, outs, 1, &in) != MOEMU_OK) return cli_error();
    val_set_t all;
    if (val_load(&all, argv[first]) != MOEMU_OK) return cli_error();
    cal_opts_t o = {.hw = sh.hw, .engine = c.engine, .max_evals = c.max_evals,
                    .run = {.models = c.models, .routing = sh.routing, .seed = sh.seed}};
    cal_result_t r;
    moemu_status_t st = cal_fit(&r, &all, &o);
    val_free(&all);
    if (st == MOEMU_OK) {
        cal_print(&r, stdout);
        if (c.out) st = cal_write(&r, &o, c.out);
    }
    cal_free(&r);
    return st == MOEMU_OK ? CLI_EXIT_OK : cli_error();
}
