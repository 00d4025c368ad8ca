/* moemu: the command's entry point and subcommand dispatch. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "engine/cli/cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *what;
} commands[] = {
    {"run", cli_run_main, "run a workload: prefill, then greedy decoding"},
    {"check", cli_check_main, "compare a strategy with the single-device baseline"},
    {"info", cli_info_main, "a model's parameters, bytes and FLOPs per token"},
    {"hw", cli_hw_main, "hardware presets and the host topology"},
    {"plan", cli_plan_main, "check a deployment plan's claims"},
    {"layout", cli_layout_main, "a parallel strategy's checks, device layout and groups"},
    {"sweep", cli_sweep_main, "every strategy on N devices, run dry, ranked, Pareto front"},
    {"validate", cli_validate_main, "virtual time against published measurements"},
    {"calibrate", cli_calibrate_main, "fit a card's efficiency to measured figures"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: moemu COMMAND [OPTIONS]\n\n"
               "moemu is a CPU reference engine for Mixture-of-Experts transformers\n"
               "(as Hugging Face transformers computes Mixtral, Qwen2-MoE, Qwen3-MoE,\n"
               "OLMoE, GraniteMoE, DeepSeek-V2/V3, Kimi-K2 and gpt-oss) that emulates\n"
               "GPUs with threads, or with processes under MPI.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-6s %s\n", commands[i].name, commands[i].what);
    fprintf(f, "\n`moemu COMMAND --help` lists a command's options.\n"
               "  --help     this text\n  --version  the version\n");
}

static void drop_warning(void *arg, const char *line) { (void)arg, (void)line; }

/* A process other than rank 0 of an MPI job: rank 0 prints and writes
 * what every process computes alike. */
static void quiet_outputs(void)
{
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) dup2(fd, STDOUT_FILENO);
    if (fd > STDOUT_FILENO) close(fd);
    moemu_warn_handler(drop_warning, NULL);
}

int main(int argc, char **argv)
{
    emu_host_prepare(argv);
    if (argc < 2) {
        usage(stderr);
        return CLI_EXIT_ERROR;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moemu %s\n", PACKAGE_VERSION);
        return CLI_EXIT_OK;
    }
    cli_signals_catch();
    if (par_proc_init(&argc, &argv) != MOEMU_OK) {
        int rc = cli_error();
        par_proc_exit(true, moemu_errmsg());
        return rc;
    }
    if (par_proc_rank() != 0) quiet_outputs();
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) {
            int rc = commands[i].fn(argc - 1, argv + 1);
            fflush(stdout);
            if (par_proc_exit(rc == CLI_EXIT_ERROR, moemu_errmsg())) rc = cli_error();
            return rc;
        }
    fprintf(stderr, "moemu: error: unknown command '%s' (see moemu --help)\n", argv[1]);
    par_proc_exit(true, "unknown command");
    return CLI_EXIT_ERROR;
}
