/* moemu validate: virtual time against published measurements. */
#include <stddef.h>
#include <string.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"
#include "engine/tools/validate.h"

static const char validate_help[] =
    "usage: moemu validate MEASUREMENTS.csv [OPTIONS]\n"
    "\n"
    "Repeat every published measurement of the CSV (model, card, strategy, a\n"
    "fixed batch and lengths, one figure: latency_s, ttft_ms, tpot_ms,\n"
    "out_tokens_per_s or out_tokens_per_s_per_gpu) as a dry run and print\n"
    "moemu's figure, the ratio moemu / published, and the median error and\n"
    "worst ratios over all rows, the fit and holdout rows, each card and each\n"
    "source. A row runs on its card's preset with its engine's profile\n"
    "(hw/engines) where that has figures for the card. docs/report.md\n"
    "(Validation) describes the CSV; docs/validation.md is the table of\n"
    "hw/measurements.csv. Exit status 0, 1 when worse than --baseline, 2 on an\n"
    "error.\n"
    "\n";

typedef struct {
    const char *models, *markdown, *baseline;
    bool presets_only;
} validate_cli_t;

#define VO(field) offsetof(validate_cli_t, field)

static const cli_opt_t validate_options[] = {
    {.name = "models", .arg = "DIR", .type = CLI_STR, .off = VO(models),
     .help = "directory of the rows' model configs, NAME.json (e.g. examples/models)"},
    {.name = "routing", .type = CLI_SHARED,
     .help = "the dry runs' router: uniform (default) or zipf:S"},
    CLI_USE("seed"),
    {.name = "presets-only", .type = CLI_SET, .off = VO(presets_only),
     .help = "every row on its card's preset, without its engine's profile"},
    {.name = "json", .type = CLI_SHARED, .help = "every row and the summaries as JSON"},
    {.name = "markdown", .arg = "FILE", .type = CLI_STR, .off = VO(markdown),
     .help = "the same as a Markdown page (docs/validation.md)"},
    {.name = "baseline", .arg = "FILE", .type = CLI_STR, .off = VO(baseline),
     .help = "a --json file of an earlier run: exit 1 when the median error\n"
             "or the worst factor grew"},
    {.name = NULL},
};

static moemu_status_t check_paths(const cli_shared_t *sh, const validate_cli_t *v,
                                  const char *csv)
{
    const outfile_arg_t outs[] = {{.flag = "--markdown", .path = v->markdown}};
    const outfile_arg_t in = {.flag = "the measurements", .path = csv};
    return cli_outputs_check(sh, outs, 1, &in);
}

static void progress(void *arg, int done, int total)
{
    cli_progress(arg, "validate", done, total, 0, 0);
}

/* Run the rows, print, write the outputs, compare. */
static int validate(const cli_shared_t *sh, const validate_cli_t *v, const char *csv)
{
    val_set_t s;
    if (val_load(&s, csv) != MOEMU_OK) return cli_error();
    val_opts_t o = {.models = v->models, .routing = sh->routing, .seed = sh->seed,
                    .presets_only = v->presets_only, .progress = progress};
    moemu_status_t st = val_run(&s, &o);
    cli_progress_done();
    bool worse = false;
    if (st == MOEMU_OK) {
        val_print(&s, stdout);
        outfile_begin();
        if (sh->json) {
            json_t *j = val_json(&s);
            st = outfile_json(sh->json, j);
            json_decref(j);
        }
        if (st == MOEMU_OK && v->markdown) st = outfile_write(v->markdown, val_markdown, &s);
        st = outfile_end(st);
    }
    if (st == MOEMU_OK && v->baseline) st = val_against(&s, v->baseline, stdout, &worse);
    val_free(&s);
    if (st != MOEMU_OK) return cli_error();
    return worse ? CLI_EXIT_MISMATCH : CLI_EXIT_OK;
}

moemu_status_t cli_rows_routing(const char *cmd, const char *routing)
{
    if (!routing || strncmp(routing, "replay:", 7) != 0) return MOEMU_OK;
    return moemu_fail(MOEMU_ERR_INVALID, "%s: --routing replay cannot match every row's "
                      "workload; use uniform or zipf:S", cmd);
}

int cli_validate_main(int argc, char **argv)
{
    cli_shared_t sh;
    cli_shared_init(&sh);
    validate_cli_t v = {0};
    bool help;
    int first;
    if (cli_parse("moemu validate", argc, argv, validate_options, &sh, &v, &help, &first) !=
        MOEMU_OK)
        return cli_error();
    if (help) {
        fputs(validate_help, stdout);
        cli_help(stdout, validate_options);
        return CLI_EXIT_OK;
    }
    if (first != argc - 1) {
        moemu_fail(MOEMU_ERR_INVALID, "moemu validate: give one measurements CSV (see moemu "
                                      "validate --help)");
        return cli_error();
    }
    if (cli_rows_routing("moemu validate", sh.routing) != MOEMU_OK) return cli_error();
    if (check_paths(&sh, &v, argv[first]) != MOEMU_OK) return cli_error();
    return validate(&sh, &v, argv[first]);
}
