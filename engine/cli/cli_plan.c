/* moemu plan: a deployment plan's claims, checked. */
#include <getopt.h>
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
    "\n"
    "  --json FILE     everything as JSON\n"
    "  --no-check      skip the real-math check\n"
    "  --routing SPEC  the dry run's router: uniform (default) or zipf:S\n"
    "  --help          this text\n";

int cli_plan_main(int argc, char **argv)
{
    static const struct option opts[] = {{"json", required_argument, NULL, 'j'},
                                         {"no-check", no_argument, NULL, 'n'},
                                         {"routing", required_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *json = NULL;
    plan_opts_t po = {.out = stdout, .progress = cli_progress};
    int c;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == 'j') json = optarg;
        else if (c == 'n') po.no_check = true;
        else if (c == 'r') po.routing = optarg;
        else if (c == 'h') {
            fputs(plan_help, stdout);
            return CLI_EXIT_OK;
        } else {
            moemu_fail(MOEMU_ERR_INVALID, "moemu plan: unknown or incomplete option '%s'",
                       argv[optind - 1]);
            return cli_error();
        }
    }
    if (optind != argc - 1) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu plan: give one plan file (see moemu plan --help)");
        return cli_error();
    }
    if (po.routing && strncmp(po.routing, "replay:", 7) == 0) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu plan: --routing replay cannot match a plan's "
                                      "workload; use uniform or zipf:S");
        return cli_error();
    }
    plan_t p;
    if (plan_load(&p, argv[optind]) != MOEMU_OK) return cli_error();
    json_t *res = NULL;
    bool hold = false;
    moemu_status_t st = cli_flag_names(plan_evaluate(&p, &po, &res, &hold),
                                       (const cli_field_t[]){{"routing", "--routing"}, {0}});
    cli_progress_done();
    if (st == MOEMU_OK && json) st = outfile_json(json, res);
    json_decref(res);
    plan_free(&p);
    if (st != MOEMU_OK) return cli_error();
    return hold ? CLI_EXIT_OK : CLI_EXIT_MISMATCH;
}
