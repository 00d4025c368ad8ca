/* Output files written under a temporary name and renamed into place. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/tools/outfile.h"

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
    if (*f) return MOEMU_OK;
    moemu_status_t st = moemu_fail(MOEMU_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    if (fd >= 0) {
        close(fd);
        unlink(*tmp);
    }
    free(*tmp);
    *tmp = NULL;
    return st;
}

moemu_status_t outfile_commit(const char *path, char *tmp, FILE *f, bool ok)
{
    ok &= !ferror(f);
    ok &= fclose(f) == 0;
    ok = ok && rename(tmp, path) == 0;
    moemu_status_t st = MOEMU_OK;
    if (!ok) {
        st = moemu_fail(MOEMU_ERR_IO, "cannot write %s: %s", path, strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return st;
}
