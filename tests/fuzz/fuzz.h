/* What the libFuzzer harnesses share (docs/robustness.md): the entry
 * points, warnings silenced, the input as a C string, and a directory of
 * this process's own under /tmp for parsers that read only paths. A
 * harness never exits on a parse error; it aborts only when the library
 * breaks one of its own promises (a round trip, a status), so that
 * libFuzzer records the input. */
#ifndef MOEMU_FUZZ_H
#define MOEMU_FUZZ_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "emu/emu.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken promise: say which and abort (libFuzzer saves the input). */
#define FUZZ_REQUIRE(cond, ...)                                                                  \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "fuzz: %s:%d: %s: ", __FILE__, __LINE__, #cond);                   \
            fprintf(stderr, __VA_ARGS__);                                                        \
            fprintf(stderr, "\n");                                                               \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

static void fuzz_no_warning(void *arg, const char *line)
{
    (void)arg;
    (void)line;
}

/* data[0..size) with a NUL after it (the parser stops at an inner NUL,
 * as it would at the end of a C string); the caller frees it. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_REQUIRE(s, "out of memory for %zu bytes", size);
    if (size) memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

static char fuzz_dir[] = "/tmp/moemu-fuzz-XXXXXX";

static void fuzz_rm_dir(void)
{
    DIR *d = opendir(fuzz_dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        char p[512];
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", fuzz_dir, e->d_name);
        unlink(p);
    }
    closedir(d);
    rmdir(fuzz_dir);
}

/* Warnings off (they would flood the log); with files, make the
 * directory, removed at exit. Call once, from LLVMFuzzerInitialize. */
static inline void fuzz_setup(int with_files)
{
    moemu_warn_handler(fuzz_no_warning, NULL);
    if (!with_files) return;
    FUZZ_REQUIRE(mkdtemp(fuzz_dir), "cannot make %s", fuzz_dir);
    atexit(fuzz_rm_dir);
}

/* fuzz_dir/name, in one of a few rotating buffers. */
static inline const char *fuzz_path(const char *name)
{
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, 512, "%s/%s", fuzz_dir, name);
    return b;
}

/* Replace the file at path with data[0..size). */
static inline void fuzz_write(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    FUZZ_REQUIRE(f, "cannot write %s", path);
    FUZZ_REQUIRE(fwrite(data, 1, size, f) == size && fclose(f) == 0, "cannot write %s", path);
}

#endif
