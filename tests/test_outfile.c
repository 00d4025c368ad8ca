/* The one output writer on hostile paths: devices written directly,
 * symlinks followed, a transaction's outputs committed together or not at
 * all, temporary files removed on a failure and by a signal, and the
 * check of output paths before any work. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/cli/cli.h"
#include "engine/tools/outfile.h"

#define TMPDIR_NAME "moemu-outfile"
#include "tests/tmpdir.h"

TestSuite(outfile, .init = tmpdir_setup, .fini = tmpdir_teardown);

static moemu_status_t fill_text(FILE *f, const void *arg)
{
    fputs(arg, f);
    return MOEMU_OK;
}

static moemu_status_t put(const char *path, const char *text)
{
    return outfile_write(path, fill_text, text);
}

/* The file's first line, "" when it cannot be read. */
static const char *first_line(const char *path)
{
    static char buf[256];
    FILE *f = fopen(path, "r");
    buf[0] = '\0';
    if (f && !fgets(buf, sizeof buf, f)) buf[0] = '\0';
    if (f) fclose(f);
    return buf;
}

/* g_dir/name that lasts the test: tpath's buffers rotate soon, these
 * after 64 (more than a test names). */
static const char *tp(const char *name)
{
    static char pool[64][512];
    static int next;
    char *p = pool[next++ % 64];
    snprintf(p, sizeof pool[0], "%s", tpath(name));
    return p;
}

static void expect_msg(const char *part)
{
    cr_expect(strstr(moemu_errmsg(), part), "'%s' not in: %s", part, moemu_errmsg());
}

/* The device name (null, full) of Linux's memory devices 1:3 and 1:7: a
 * private node in the test's directory where root can make one, so that
 * a writer that replaces devices (as outfile once did) spoils no /dev. */
static const char *device(const char *name, unsigned minor)
{
    const char *p = tp(name);
    if (mknod(p, S_IFCHR | 0666, makedev(1, minor)) == 0) {
        int fd = open(p, O_WRONLY);
        if (fd >= 0) {
            close(fd);
            return p;
        }
        unlink(p); /* a nodev mount */
    }
    return minor == 3 ? "/dev/null" : "/dev/full";
}

Test(outfile, a_device_is_written_not_replaced)
{
    const char *null = device("null", 3);
    cr_assert_eq(put(null, "x\n"), MOEMU_OK, "%s", moemu_errmsg());
    struct stat sb;
    cr_assert_eq(stat(null, &sb), 0);
    cr_expect(S_ISCHR(sb.st_mode), "%s is no longer a character device", null);
    json_t *js = json_pack("{s:i}", "a", 1);
    cr_expect_eq(outfile_json(null, js), MOEMU_OK);
    json_decref(js);
}

Test(outfile, a_full_device_is_enospc)
{
    const char *full = device("full", 7);
    cr_assert_eq(put(full, "x\n"), MOEMU_ERR_IO);
    expect_msg("cannot write ");
    expect_msg(full);
    expect_msg("No space left on device (ENOSPC)");
    json_t *js = json_pack("{s:i}", "a", 1);
    cr_expect_eq(outfile_json(full, js), MOEMU_ERR_IO);
    expect_msg("ENOSPC");
    json_decref(js);
    struct stat sb;
    cr_assert_eq(stat(full, &sb), 0);
    cr_expect(S_ISCHR(sb.st_mode), "%s is no longer a character device", full);
}

Test(outfile, a_symlink_is_followed_and_stays)
{
    cr_assert_eq(mkdir(tpath("sub"), 0755), 0);
    cr_assert_eq(put(tpath("real"), "old\n"), MOEMU_OK);
    /* relative to the link's own directory, not the current one */
    cr_assert_eq(symlink("../real", tpath("sub/link")), 0);
    cr_assert_eq(put(tpath("sub/link"), "new\n"), MOEMU_OK, "%s", moemu_errmsg());
    struct stat sb;
    cr_assert_eq(lstat(tpath("sub/link"), &sb), 0);
    cr_expect(S_ISLNK(sb.st_mode), "the link was replaced by a file");
    cr_expect_str_eq(first_line(tpath("real")), "new\n");
    /* a dangling link: the file it names is created */
    cr_assert_eq(symlink("made", tpath("dangling")), 0);
    cr_assert_eq(put(tpath("dangling"), "made\n"), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_str_eq(first_line(tpath("made")), "made\n");
    cr_expect_eq(dir_entries(g_dir), 4, "sub, real, dangling, made: no temporary");
    /* a loop of links is an error, not a hang */
    cr_assert_eq(symlink("loop2", tpath("loop1")), 0);
    cr_assert_eq(symlink("loop1", tpath("loop2")), 0);
    cr_expect_eq(put(tpath("loop1"), "x"), MOEMU_ERR_IO);
    expect_msg(strerror(ELOOP));
}

Test(outfile, a_replaced_file_keeps_its_mode)
{
    cr_assert_eq(put(tpath("m"), "a\n"), MOEMU_OK);
    cr_assert_eq(chmod(tpath("m"), 0640), 0);
    cr_assert_eq(put(tpath("m"), "b\n"), MOEMU_OK);
    struct stat sb;
    cr_assert_eq(stat(tpath("m"), &sb), 0);
    cr_expect_eq(sb.st_mode & 0777, 0640);
}

Test(outfile, a_transaction_commits_together)
{
    outfile_begin();
    cr_assert_eq(put(tpath("a"), "a\n"), MOEMU_OK);
    cr_assert_eq(put(tpath("b"), "b\n"), MOEMU_OK);
    cr_expect(access(tpath("a"), F_OK) != 0, "a appeared before the commit");
    cr_expect_eq(dir_entries(g_dir), 2, "two temporary files");
    cr_assert_eq(outfile_end(MOEMU_OK), MOEMU_OK, "%s", moemu_errmsg());
    cr_expect_str_eq(first_line(tpath("a")), "a\n");
    cr_expect_str_eq(first_line(tpath("b")), "b\n");
    cr_expect_eq(dir_entries(g_dir), 2);
}

Test(outfile, a_failure_keeps_every_previous_file)
{
    const char *full = device("full", 7);
    cr_assert_eq(put(tpath("a"), "old\n"), MOEMU_OK);
    int before = dir_entries(g_dir);
    outfile_begin();
    cr_assert_eq(mkdir(tpath("made"), 0755), 0);
    cr_assert_eq(rmdir(tpath("made")), 0);
    cr_assert_eq(outfile_mkdir(tpath("made")), MOEMU_OK);
    cr_assert_eq(put(tpath("made/x"), "x\n"), MOEMU_OK);
    cr_assert_eq(put(tpath("a"), "new\n"), MOEMU_OK);
    moemu_status_t st = put(full, "x\n");
    cr_assert_eq(st, MOEMU_ERR_IO);
    cr_expect_eq(outfile_end(st), MOEMU_ERR_IO);
    cr_expect_str_eq(first_line(tpath("a")), "old\n");
    cr_expect_eq(dir_entries(g_dir), before, "the temporaries and the directory made are gone");
}

Test(outfile, an_inner_failure_rolls_back_the_outer)
{
    outfile_begin();
    cr_assert_eq(put(tpath("a"), "a\n"), MOEMU_OK);
    outfile_begin();
    cr_expect_eq(outfile_end(moemu_fail(MOEMU_ERR_INVALID, "inner")), MOEMU_ERR_INVALID);
    cr_expect_eq(outfile_end(MOEMU_OK), MOEMU_ERR_INVALID);
    expect_msg("not written");
    cr_expect_eq(dir_entries(g_dir), 0);
    /* the next transaction starts clean */
    cr_expect_eq(put(tpath("b"), "b\n"), MOEMU_OK);
    cr_expect_eq(dir_entries(g_dir), 1);
}

Test(outfile, remove_all_empties_a_transaction)
{
    outfile_begin();
    cr_assert_eq(put(tpath("a"), "a\n"), MOEMU_OK);
    cr_assert_eq(outfile_mkdir(tpath("d")), MOEMU_OK);
    cr_assert_eq(put(tpath("d/b"), "b\n"), MOEMU_OK);
    char templ[600];
    snprintf(templ, sizeof templ, "%s/scratch-XXXXXX", g_dir);
    const char *scratch;
    int fd;
    cr_assert_eq(outfile_scratch(templ, &scratch, &fd), MOEMU_OK);
    close(fd);
    cr_expect_eq(dir_entries(g_dir), 3);
    outfile_remove_all();
    cr_expect_eq(dir_entries(g_dir), 0, "left after remove_all");
    outfile_end(MOEMU_ERR_INVALID);
}

/* A process killed by SIGTERM while its outputs are staged, as moemu is:
 * it ends by the signal and leaves no file. */
Test(outfile, sigterm_removes_the_temporaries)
{
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        cli_signals_catch();
        outfile_begin();
        if (put(tpath("a"), "a\n") != MOEMU_OK) _exit(3);
        if (outfile_mkdir(tpath("d")) != MOEMU_OK || put(tpath("d/b"), "b\n")) _exit(3);
        raise(SIGTERM);
        _exit(4);
    }
    int status;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM, "status %#x", status);
    cr_expect_eq(dir_entries(g_dir), 0, "a temporary survived the signal");
}

static bool reads_st(const char *name) { return strstr(name, ".safetensors") != NULL; }

Test(outfile, check_refuses_every_problem_at_once)
{
    cr_assert_eq(put(tp("cfg.json"), "{}\n"), MOEMU_OK);
    cr_assert_eq(symlink("cfg.json", tp("cfg-link")), 0);
    cr_assert_eq(mkdir(tp("ck"), 0755), 0);
    cr_assert_eq(put(tp("ck/model.safetensors"), "x"), MOEMU_OK);
    char nodir[600], file_dir[600];
    snprintf(nodir, sizeof nodir, "%s/no/x.json", g_dir);
    snprintf(file_dir, sizeof file_dir, "%s/cfg.json/x", g_dir);
    const outfile_arg_t outs[] = {
        {.flag = "--json", .path = tp("cfg-link")},         /* the config */
        {.flag = "--csv", .path = nodir},                      /* no directory */
        {.flag = "--trace", .path = tp("ck")},              /* a directory */
        {.flag = "--dump-logits", .path = tp("ck/model.safetensors")}, /* the weights' */
        {.flag = "--record-routing", .path = file_dir},        /* below a file */
        {.flag = "--a", .path = tp("new")},
        {.flag = "--b", .path = tp("ck/../new")},           /* --a again */
        {.flag = "--c", .path = "/dev/null"},
        {.flag = "--d", .path = "/dev/null"},                  /* a device twice: fine */
        {.flag = "--e", .path = NULL},
    };
    const outfile_arg_t ins[] = {
        {.flag = "--model", .path = tp("cfg.json")},
        {.flag = "--weights", .path = tp("ck"), .reads = reads_st},
        {.flag = "--hw", .path = "no-such-preset"},
    };
    cr_assert_eq(outfile_check(outs, 10, ins, 3), MOEMU_ERR_INVALID);
    const char *m = moemu_errmsg();
    expect_msg("6 problems with the outputs, nothing was run:");
    char want[800];
    snprintf(want, sizeof want, "--json %s: is the input --model %s", tp("cfg-link"),
             tp("cfg.json"));
    expect_msg(want);
    snprintf(want, sizeof want, "--csv %s: directory %s/no does not exist", nodir, g_dir);
    expect_msg(want);
    snprintf(want, sizeof want, "--trace %s: is a directory", tp("ck"));
    expect_msg(want);
    snprintf(want, sizeof want, "--dump-logits %s: is a file of the input --weights %s",
             tp("ck/model.safetensors"), tp("ck"));
    expect_msg(want);
    snprintf(want, sizeof want, "--record-routing %s: directory %s is not a directory", file_dir,
             tp("cfg.json"));
    expect_msg(want);
    snprintf(want, sizeof want, "--a %s and --b %s: the same file", tp("new"),
             tp("ck/../new"));
    expect_msg(want);
    cr_expect(!strstr(m, "--d /dev/null"), "a device named twice was refused: %s", m);
    cr_expect_eq(dir_entries(g_dir), 3, "the check wrote something");

    /* a directory output (--dump-weights DIR) is taken when it is one */
    const outfile_arg_t dir_out = {.flag = "--dump-weights", .path = tp("ck2"), .dir = true};
    cr_assert_eq(mkdir(tp("ck2"), 0755), 0);
    cr_expect_eq(outfile_check(&dir_out, 1, ins, 3), MOEMU_OK, "%s", moemu_errmsg());
    const outfile_arg_t same_dir = {.flag = "--dump-weights", .path = tp("ck"), .dir = true};
    cr_expect_eq(outfile_check(&same_dir, 1, ins, 3), MOEMU_ERR_INVALID);
    expect_msg("is the input --weights");
}

Test(outfile, check_one_problem_on_one_line)
{
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/no/x.json", g_dir);
    const outfile_arg_t out = {.flag = "--json", .path = nodir};
    cr_assert_eq(outfile_check(&out, 1, NULL, 0), MOEMU_ERR_INVALID);
    char want[800];
    snprintf(want, sizeof want, "--json %s: directory %s/no does not exist", nodir, g_dir);
    cr_expect_str_eq(moemu_errmsg(), want);
}

Test(outfile, check_an_unwritable_directory)
{
    if (geteuid() == 0) return; /* root writes anywhere */
    cr_assert_eq(mkdir(tpath("ro"), 0555), 0);
    const outfile_arg_t out = {.flag = "--json", .path = tpath("ro/x.json")};
    cr_assert_eq(outfile_check(&out, 1, NULL, 0), MOEMU_ERR_INVALID);
    expect_msg("is not writable");
}
