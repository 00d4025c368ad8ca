/* outfile: the one writer of output files (JSON, CSV, traces, safetensors,
 * checkpoints, sweep outputs, plots) and the check of output paths.
 *
 * Where a write goes: a symlink is followed to the file it names (the
 * link stays a link); a regular file, or a new one, is written under a
 * temporary name beside it and renamed over it, so that it appears
 * complete or not at all; anything else but a directory (a character
 * device such as /dev/null or /dev/full, a pipe) is written directly.
 *
 * Transactions: the writes between outfile_begin and the outermost
 * outfile_end are staged, and committed together: every temporary file is
 * renamed into place, in the order written, only when all succeeded;
 * otherwise every one is removed and the previous files stay as they
 * were. A write outside a transaction is one of its own.
 *
 * The temporary files, scratch files and directories made for outputs are
 * held in one registry for the process, so that a signal handler can
 * remove them (outfile_remove_all). Transactions are the process's too:
 * write outputs from one thread. Internal to moemu (not installed). */
#ifndef MOEMU_OUTFILE_H
#define MOEMU_OUTFILE_H

#include <jansson.h>
#include <stdio.h>

#include "emu/emu.h"

/* Writes a file's contents to f; its failure is returned as it is. */
typedef moemu_status_t (*outfile_fill_fn)(FILE *f, const void *arg);

/* Write path with fill(f, arg). A write that fails is MOEMU_ERR_IO naming
 * path and the system's reason (ENOSPC for /dev/full); fill's own failure
 * keeps its status and message. A directory is refused (EISDIR). */
moemu_status_t outfile_write(const char *path, outfile_fill_fn fill, const void *arg);
/* root as indented JSON whose doubles read back the same. */
moemu_status_t outfile_json(const char *path, const json_t *root);

/* Begin a transaction (they nest: only the outermost end commits). */
void outfile_begin(void);
/* End one, st being the status of the work it covered: returns st when it
 * is an error (the transaction is then rolled back at its outermost end),
 * else MOEMU_OK, or at the outermost end the first rename that failed
 * (MOEMU_ERR_IO naming the file; the files before it are in place). */
moemu_status_t outfile_end(moemu_status_t st);

/* Create the directory path for outputs (mode 0777 less the umask); it is
 * removed again, when empty, if the transaction is rolled back. */
moemu_status_t outfile_mkdir(const char *path);
/* A scratch file that is not an output (gnuplot's script and image):
 * created by mkstemp from templ (ending in XXXXXX), its name in *path (the
 * registry's storage, valid until the transaction ends), *fd open for
 * writing. Removed at the end of the transaction, whatever its outcome. */
moemu_status_t outfile_scratch(const char *templ, const char **path, int *fd);

/* Remove every temporary file, scratch file and directory of the
 * transaction under way. Async-signal-safe (unlink and rmdir only), for a
 * handler of SIGINT and SIGTERM that then ends the process. */
void outfile_remove_all(void);

/* ---- Checking output paths before any work */

typedef struct {
    const char *flag; /* "--json", in messages */
    const char *path; /* NULL: not given (skipped) */
    /* an output: it may be a directory to write into (--dump-weights) */
    bool dir;
    /* an input: a directory, or a file in one (a checkpoint's index),
     * whose files reads() accepts by name are read too */
    bool (*reads)(const char *name);
} outfile_arg_t;

/* Whether every output of outs can be written, before anything is done:
 * the directory it goes into exists and is writable (a character device
 * or a pipe: the file itself is writable); it is not a directory (unless
 * dir); it is not the same file (by its resolved path, or device and inode
 * when it exists) as an input of ins that exists, nor as another output
 * (character devices may be named twice). Every problem at once,
 * MOEMU_ERR_INVALID naming the flags and the paths. */
moemu_status_t outfile_check(const outfile_arg_t *outs, int n_out, const outfile_arg_t *ins,
                             int n_in);

#endif
