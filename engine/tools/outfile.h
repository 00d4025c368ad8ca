/* outfile: the one writer of output files (JSON, CSV, traces, safetensors,
 * sweep outputs, plots). A file appears complete or not at all: it is
 * written under a temporary name beside the target, renamed into place
 * when everything was written, removed otherwise. Internal to moemu (not
 * installed). */
#ifndef MOEMU_OUTFILE_H
#define MOEMU_OUTFILE_H

#include <jansson.h>
#include <stdio.h>

#include "emu/emu.h"

/* Writes a file's contents to f; its failure is returned as it is. */
typedef moemu_status_t (*outfile_fill_fn)(FILE *f, const void *arg);

/* Write path with fill(f, arg). A write that fails is MOEMU_ERR_IO naming
 * path; fill's own failure keeps its status and message. */
moemu_status_t outfile_write(const char *path, outfile_fill_fn fill, const void *arg);
/* root as indented JSON whose doubles read back the same. */
moemu_status_t outfile_json(const char *path, const json_t *root);

/* The same in steps, for contents that another program writes into *tmp
 * by its name (gnuplot): open a temporary file beside path (*tmp and *f
 * are the caller's until commit or abandon); commit closes f and renames
 * tmp to path when every write succeeded (else MOEMU_ERR_IO naming path);
 * abandon closes f and removes tmp, leaving this thread's message as it
 * is. Both free tmp. */
moemu_status_t outfile_open(const char *path, char **tmp, FILE **f);
moemu_status_t outfile_commit(const char *path, char *tmp, FILE *f);
void outfile_abandon(char *tmp, FILE *f);

#endif
