/* The moemu command: subcommands and the option handling they share. */
#ifndef MOEMU_CLI_H
#define MOEMU_CLI_H

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

#include "engine/run/model.h"
#include "engine/tools/sweep.h"

int cli_run_main(int argc, char **argv);  /* moemu run */
int cli_info_main(int argc, char **argv); /* moemu info */
int cli_hw_main(int argc, char **argv);   /* moemu hw */
int cli_layout_main(int argc, char **argv); /* moemu layout */
int cli_check_main(int argc, char **argv);  /* moemu check */
int cli_sweep_main(int argc, char **argv);  /* moemu sweep */
int cli_plan_main(int argc, char **argv);   /* moemu plan */

/* Exit statuses: 0 success, 1 a check that did not pass, 2 an error. */
enum { CLI_EXIT_OK = 0, CLI_EXIT_MISMATCH = 1, CLI_EXIT_ERROR = 2 };

/* Print "moemu: error: <this thread's message>" and return CLI_EXIT_ERROR. */
int cli_error(void);
/* Parse a whole decimal number into *out within [lo, hi], naming flag. */
moemu_status_t cli_parse_int(const char *flag, const char *s, int lo, int hi, int *out);
moemu_status_t cli_parse_u64(const char *flag, const char *s, uint64_t *out);
/* The library names a value by its field ("routing 'x': ..."), the
 * command by its flag: a message of st that begins with one of fields
 * (NULL-terminated pairs field, flag) is reworded to begin with the flag
 * ("--routing 'x': ..."). Returns st. */
typedef struct {
    const char *field, *flag;
} cli_field_t;
moemu_status_t cli_flag_names(moemu_status_t st, const cli_field_t *fields);
extern const cli_field_t cli_workload_fields[]; /* wl_make's and route_open's */
/* A hardware preset or file with --nodes / --devices-per-node applied (0:
 * the preset's), checked to hold devices; *used (may be NULL) receives the
 * nodes they occupy. */
moemu_status_t cli_load_hw(const char *name, int nodes, int devices_per_node, int devices,
                           emu_hw_t *out, int *used);
/* moemu sweep's parts that are the command's, not the library's: worker
 * processes (a sweep_exec_fn; arg points to the int count of workers) and
 * the gnuplot plot (FILE.svg or FILE.png, complete or not at all; title
 * may be NULL). cli_sweep_plot_check checks the name and gnuplot on PATH
 * first (an error naming the Debian package), to fail before a long
 * sweep. */
moemu_status_t cli_sweep_workers(void *arg, sweep_t *s, const sweep_opts_t *o);
moemu_status_t cli_sweep_plot(const sweep_t *s, const char *path, const char *title);
moemu_status_t cli_sweep_plot_check(const char *path);
/* Progress on stderr, for model_opts_t.progress, when stderr is a tty. */
void cli_progress(void *arg, const char *phase, int step, int steps, int layer,
                  int layers);
void cli_progress_done(void);

#endif
