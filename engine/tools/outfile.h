/* outfile: output files that appear complete or not at all: written under
 * a temporary name beside the target, renamed into place when everything
 * was written, removed otherwise. */
#ifndef MOEMU_OUTFILE_H
#define MOEMU_OUTFILE_H

#include <stdbool.h>
#include <stdio.h>

#include "emu/emu.h"

/* Open a temporary file beside path for writing; *tmp (its name, to pass
 * to outfile_commit) and *f are the caller's. */
moemu_status_t outfile_open(const char *path, char **tmp, FILE **f);
/* Close f and rename tmp to path when ok and every write succeeded, else
 * remove tmp; frees tmp. MOEMU_ERR_IO names path. */
moemu_status_t outfile_commit(const char *path, char *tmp, FILE *f, bool ok);

#endif
