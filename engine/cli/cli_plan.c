/* moemu plan: a deployment plan's claims, checked. */
#include <stddef.h>
#include <string.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"
#include "engine/tools/plan.h"

static const char plan_help[] =
    "usage: moemu plan FILE [--json FILE] [--no-check] [--routing SPEC]\n"
    "\n"
    "Check a deployment plan (docs/plans.md): its arithmetic (parameters from\n"
    "the dimensions, devices from the degrees, experts per device), its strategy\n"
    "(and, when invalid, the nearest valid strategies on the same devices), every\n"
    "claimed figure against a dry run of the full workload (holds, off by a\n"
    "factor, or impossible, with the reason), and the strategy's numbers in\n"
    "real math against the single-device baseline on a reduced workload.\n"
    "Exit status 0 when every claim holds, 1 when one does not, 2 on an error.\n"
    "\n";

static const cli_opt_t plan_options[] = {
    {.name = "json", .type = CLI_SHARED, .help = "everything as JSON"},
    {.name = "no-check", .type = CLI_SET, .off = offsetof(plan_opts_t, no_check),
     .help = "skip the real-math check"},
    {.name = "routing", .type = CLI_SHARED,
     .help = "the dry run's router: uniform (default) or zipf:S"},
    CLI_USE("strict"), CLI_USE("devices-per-process"),
    {.name = NULL},
};

int cli_plan_main(int argc, char **argv)
{
    cli_shared_t sh;
    cli_shared_init(&sh);
    plan_opts_t po = {.out = stdout, .progress = cli_progress};
    bool help;
    int first;
    if (cli_parse("moemu plan", argc, argv, plan_options, &sh, &po, &help, &first) != MOEMU_OK)
        return cli_error();
    if (help) {
        fputs(plan_help, stdout);
        cli_help(stdout, plan_options);
        return CLI_EXIT_OK;
    }
    if (first != argc - 1) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu plan: give one plan file (see moemu plan --help)");
        return cli_error();
    }
    po.routing = sh.routing;
    if (po.routing && strncmp(po.routing, "replay:", 7) == 0) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu plan: --routing replay cannot match a plan's "
                                      "workload; use uniform or zipf:S");
        return cli_error();
    }
    const outfile_arg_t plan_in = {.flag = "the plan", .path = argv[first]};
    if (cli_outputs_check(&sh, NULL, 0, &plan_in) != MOEMU_OK) return cli_error();
    plan_t p;
    if (plan_load(&p, argv[first]) != MOEMU_OK) return cli_error();
    json_t *res = NULL;
    bool hold = false;
    moemu_status_t st = cli_flag_names(plan_evaluate(&p, &po, &res, &hold), plan_options);
    cli_progress_done();
    if (st == MOEMU_OK && sh.json) st = outfile_json(sh.json, res);
    json_decref(res);
    plan_free(&p);
    if (st != MOEMU_OK) return cli_error();
    return hold ? CLI_EXIT_OK : CLI_EXIT_MISMATCH;
}
