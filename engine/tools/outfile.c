/* Output files written under a temporary name and renamed into place. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/tools/outfile.h"

/* Large outputs (traces, weights) in few writes. */
#define OUTFILE_BUFFER ((size_t)1 << 20)

static moemu_status_t io_error(const char *path, int err)
{
    return moemu_fail(MOEMU_ERR_IO, "cannot write %s: %s", path, strerror(err ? err : EIO));
}

moemu_status_t outfile_open(const char *path, char **tmp, FILE **f)
{
    size_t n = strlen(path);
    *f = NULL;
    if (!(*tmp = malloc(n + 16))) return moemu_fail(MOEMU_ERR_NOMEM, "cannot write %s", path);
    snprintf(*tmp, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(*tmp);
    if (fd >= 0) {
        /* mkstemp's 0600, widened to what the umask allows a new file */
        mode_t mask = umask(0);
        umask(mask);
        fchmod(fd, 0666 & ~mask);
    }
    *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (*f) {
        setvbuf(*f, NULL, _IOFBF, OUTFILE_BUFFER);
        return MOEMU_OK;
    }
    moemu_status_t st = io_error(path, errno);
    if (fd >= 0) {
        close(fd);
        unlink(*tmp);
    }
    free(*tmp);
    *tmp = NULL;
    return st;
}

moemu_status_t outfile_commit(const char *path, char *tmp, FILE *f)
{
    errno = 0;
    bool ok = !ferror(f);
    int err = errno;
    if (fclose(f) != 0 && ok) {
        ok = false;
        err = errno;
    }
    if (ok && rename(tmp, path) != 0) {
        ok = false;
        err = errno;
    }
    moemu_status_t st = ok ? MOEMU_OK : io_error(path, err);
    if (!ok) unlink(tmp);
    free(tmp);
    return st;
}

void outfile_abandon(char *tmp, FILE *f)
{
    fclose(f);
    unlink(tmp);
    free(tmp);
}

moemu_status_t outfile_write(const char *path, outfile_fill_fn fill, const void *arg)
{
    char *tmp;
    FILE *f;
    MOEMU_CHECK(outfile_open(path, &tmp, &f));
    moemu_status_t st = fill(f, arg);
    if (st != MOEMU_OK) {
        outfile_abandon(tmp, f);
        return st;
    }
    return outfile_commit(path, tmp, f);
}

moemu_status_t outfile_json(const char *path, const json_t *root)
{
    char *tmp;
    FILE *f;
    MOEMU_CHECK(outfile_open(path, &tmp, &f));
    errno = 0;
    if (json_dumpf(root, f, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) != 0 ||
        fputc('\n', f) == EOF) {
        int err = errno;
        outfile_abandon(tmp, f);
        return io_error(path, err);
    }
    return outfile_commit(path, tmp, f);
}
