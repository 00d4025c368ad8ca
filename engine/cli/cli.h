/* The moemu command: subcommands and the option handling they share. */
#ifndef MOEMU_CLI_H
#define MOEMU_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "engine/run/runner.h"
#include "engine/tools/outfile.h"
#include "engine/tools/sweep.h"

int cli_run_main(int argc, char **argv);  /* moemu run */
int cli_info_main(int argc, char **argv); /* moemu info */
int cli_hw_main(int argc, char **argv);   /* moemu hw */
int cli_layout_main(int argc, char **argv); /* moemu layout */
int cli_check_main(int argc, char **argv);  /* moemu check */
int cli_sweep_main(int argc, char **argv);  /* moemu sweep */
int cli_plan_main(int argc, char **argv);   /* moemu plan */
int cli_validate_main(int argc, char **argv); /* moemu validate */
int cli_calibrate_main(int argc, char **argv); /* moemu calibrate */

/* validate's and calibrate's rows have workloads of their own: a replay
 * record cannot match them (MOEMU_ERR_INVALID naming cmd). */
moemu_status_t cli_rows_routing(const char *cmd, const char *routing);

/* Exit statuses: 0 success, 1 a check that did not pass, 2 an error. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_MISMATCH = 1, CLI_EXIT_ERROR = 2 };

/* Print "moemu: error: <this thread's message>" and return CLI_EXIT_ERROR. */
int cli_error(void);
/* Parse a whole decimal number into *out within [lo, hi], naming flag. */
moemu_status_t cli_parse_int(const char *flag, const char *s, int lo, int hi, int *out);
moemu_status_t cli_parse_u64(const char *flag, const char *s, uint64_t *out);
/* ---- Options (cli_options.c). The options that run, check, layout,
 * sweep and plan share are defined once, in cli_shared_options; a
 * command's list names the shared ones it takes (CLI_SHARED, with its own
 * wording of the help where its default or meaning differs) among its own
 * options and help headings. One parser and one help printer serve all. */

#define CLI_DEFAULT_HW "card-400tf-64gb"

/* The values of the shared options. */
typedef struct {
    const char *model;   /* default moe-10b-plan */
    uint64_t seed;
    const char *weights;
    wl_opts_t wl;        /* --batch (0: not given), --prompt-len(s), --prompt-len-range,
                            --tokens, --decode (default 16) */
    const char *strategy, *pp_layers;
    int devices, micro_batches; /* 0: not given; 1 */
    const char *hw;      /* default CLI_DEFAULT_HW */
    const char *engine;  /* --engine: a profile's figures over the card's */
    const char *overlap; /* --overlap: over the profile's (NULL: its) */
    const char *dispatcher; /* --dispatcher: over the profile's (NULL: its) */
    const char *kernels; /* --kernels: over the profile's (NULL: its) */
    int nodes, devices_per_node; /* 0: the preset's */
    const char *routing;
    const char *json, *csv;
    int weight_store;    /* --weight-dtype: 0 as the config says, 1 fp8, 2 dtype */
    int dispatch_fp8;    /* --dispatch-dtype: 0 the model's dtype, 1 fp8 */
    int compute;         /* --compute-dtype: a run_compute_t */
    int kv_fp8;          /* --kv-dtype: 0 the model's dtype, 1 fp8 */
    bool strict;         /* --strict: warnings are errors */
    int devices_per_process; /* under mpirun; 0: an even split */
} cli_shared_t;

typedef enum {
    CLI_STR = 0,   /* const char *: the argument as it is */
    CLI_SET,       /* bool: true when given (no argument) */
    CLI_INT,       /* int in [lo, hi] */
    CLI_U64,       /* uint64_t */
    CLI_NUM,       /* double in [lo, hi] (hi may be INFINITY) */
    CLI_NUM_BELOW, /* double in [lo, hi) */
    CLI_CHOICE,    /* int: the index of the word given among choices */
    CLI_CALL,      /* parse(arg, the command's values) */
    CLI_SHARED,    /* the shared option of this name */
    CLI_HEADING,   /* not an option: a heading of the help (help) */
} cli_type_t;

typedef struct {
    const char *name;    /* the flag without "--"; NULL ends a list */
    const char *arg;     /* the argument in the help ("N", "FILE"); NULL: none */
    cli_type_t type;
    size_t off;          /* where the value goes: an offset in cli_shared_t
                            (shared options) or in the command's values */
    double lo, hi;
    const char *choices; /* CLI_CHOICE: "real|skip" */
    moemu_status_t (*parse)(const char *arg, void *values); /* CLI_CALL */
    const char *field;   /* what the library calls the value in its messages */
    const char *help;    /* lines joined by '\n'; NULL: not shown */
} cli_opt_t;

/* In a command's list: a shared option, a heading of the help. */
#define CLI_USE(name_) {.name = (name_), .type = CLI_SHARED}
#define CLI_HEAD(text) {.type = CLI_HEADING, .help = (text)}

extern const cli_opt_t cli_shared_options[];
/* The shared defaults (model, hardware, decode 16, one micro-batch). */
void cli_shared_init(cli_shared_t *sh);
/* Parse argv[1..] against opts: shared options' values into *sh, the
 * command's own into *own. --help sets *help and stops; *first is the
 * first operand. Errors name the flag ("--batch '0': expected a whole
 * number in [1, 1048576]") or the command ("moemu run: unknown or
 * incomplete option '--x' (see moemu run --help)"). */
moemu_status_t cli_parse(const char *cmd, int argc, char **argv, const cli_opt_t *opts,
                         cli_shared_t *sh, void *own, bool *help, int *first);
/* At most one of --prompt-len, --prompt-lens, --prompt-len-range and
 * --tokens (the library says the same in its own words). */
moemu_status_t cli_check_workload(const cli_shared_t *sh);
/* MOEMU_ERR_INVALID naming the first operand, if any. */
moemu_status_t cli_no_operands(const char *cmd, int argc, char **argv, int first);
/* The options of opts, under their headings, then --help. */
void cli_help(FILE *f, const cli_opt_t *opts);
/* The library names a value by its field ("routing 'x': ..."), the
 * command by its flag: a message of st that begins with the field of one
 * of opts is reworded to begin with the flag ("--routing 'x': ...").
 * Returns st. */
moemu_status_t cli_flag_names(moemu_status_t st, const cli_opt_t *opts);

/* The precision options of sh as the runner takes them. */
run_prec_t cli_prec(const cli_shared_t *sh);
/* The model of --model with --weight-dtype applied (FP8 for
 * --compute-dtype fp8 unless it says otherwise). */
moemu_status_t cli_load_model(cfg_model_t *c, const cli_shared_t *sh);
/* A hardware preset or file with sh's --nodes / --devices-per-node
 * applied (0: the preset's), the figures of --engine for it (a profile
 * without the card is an error), --overlap, --dispatcher and --kernels, checked to
 * hold devices;
 * *used (may be NULL) receives the nodes they occupy. */
moemu_status_t cli_load_hw(const cli_shared_t *sh, int devices, emu_hw_t *out, int *used);
/* The stack's choices that are not the default, as ", key value" each
 * ("" when none), into buf. */
void cli_stack_text(const emu_stack_t *sk, char *buf, size_t n);
/* moemu sweep's parts that are the command's, not the library's: worker
 * processes (a sweep_exec_fn; arg points to the int count of workers) and
 * the gnuplot plot (FILE.svg or FILE.png, complete or not at all; title
 * may be NULL). cli_sweep_plot_check checks the name and gnuplot on PATH
 * first (an error naming the Debian package), to fail before a long
 * sweep. */
moemu_status_t cli_sweep_workers(void *arg, sweep_t *s, const sweep_opts_t *o);
moemu_status_t cli_sweep_plot(const sweep_t *s, const char *path, const char *title);
moemu_status_t cli_sweep_plot_check(const char *path);
/* ---- Outputs and signals (cli_common.c) */

/* Before any work: the shared --json and --csv and the command's outs
 * (n_out of them) checked by outfile_check against the inputs that the
 * shared options name (--model, --weights and its checkpoint's files,
 * --tokens, --hw, --routing replay:FILE) and more_in (may be NULL). */
moemu_status_t cli_outputs_check(const cli_shared_t *sh, const outfile_arg_t *outs, int n_out,
                                 const outfile_arg_t *more_in);
/* End the transaction of a command that began one (outfile_begin) with
 * exit status rc: its outputs committed unless rc is CLI_EXIT_ERROR, else
 * removed. Returns rc, or CLI_EXIT_ERROR when the commit failed. */
int cli_outputs_end(int rc);
/* SIGINT, SIGTERM, SIGHUP and SIGPIPE (those not ignored when moemu
 * started): remove the outputs' temporary files, then end as the signal
 * would (a shell sees 130, 143, 129, 141). cli_signals_default puts them
 * back, in a worker process. */
void cli_signals_catch(void);
void cli_signals_default(void);

/* Progress on stderr, for model_opts_t.progress, when stderr is a tty. */
void cli_progress(void *arg, const char *phase, int step, int steps, int layer,
                  int layers);
void cli_progress_done(void);

#endif
