/* A fresh directory per test for the tests that write files (Criterion
 * runs each test in its own process): define TMPDIR_NAME ("moemu-st")
 * before including, then TestSuite(x, .init = tmpdir_setup,
 * .fini = tmpdir_teardown). */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static char g_dir[] = "/tmp/" TMPDIR_NAME "-XXXXXX";

static void rm_rf(const char *path)
{
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char sub[512];
            snprintf(sub, sizeof sub, "%s/%s", path, e->d_name);
            rm_rf(sub);
        }
        closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void tmpdir_setup(void) { cr_assert_not_null(mkdtemp(g_dir)); }
static void tmpdir_teardown(void) { rm_rf(g_dir); }

/* g_dir/name, in one of a few rotating buffers. */
static const char *tpath(const char *name)
{
    static char bufs[4][512];
    static int k;
    char *b = bufs[k++ % 4];
    snprintf(b, 512, "%s/%s", g_dir, name);
    return b;
}

/* Entries of a directory, "." and ".." left out. */
__attribute__((unused)) static int dir_entries(const char *path)
{
    DIR *d = opendir(path);
    cr_assert_not_null(d, "opendir %s", path);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}
