/* Output files: where a write lands, the transaction that commits a
 * command's outputs together, the registry a signal handler empties, and
 * the check of output paths before any work. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/tools/outfile.h"
#include "parallel/par.h"

/* Large outputs (traces, weights) in few writes. */
#define OUTFILE_BUFFER ((size_t)1 << 20)
/* Symlinks followed before giving up, as the kernel's own bound. */
#define OUTFILE_MAX_LINKS 40

/* The name of errno values a write meets, for messages that a user can
 * search for ("No space left on device (ENOSPC)"). */
static const char *errno_name(int err)
{
    switch (err) {
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EFBIG: return "EFBIG";
    case EIO: return "EIO";
    case EROFS: return "EROFS";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EPIPE: return "EPIPE";
    case ENOENT: return "ENOENT";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    default: return NULL;
    }
}

static moemu_status_t io_error(const char *path, int err)
{
    err = err ? err : EIO;
    const char *name = errno_name(err);
    return moemu_fail(MOEMU_ERR_IO, "cannot write %s: %s%s%s%s", path, strerror(err),
                      name ? " (" : "", name ? name : "", name ? ")" : "");
}

/* ---- The registry: what a transaction made, for its end or a signal */

typedef enum {
    SLOT_DONE = 0, /* committed or removed */
    SLOT_FILE,     /* a temporary file, renamed to target at the commit */
    SLOT_SCRATCH,  /* not an output: removed at the end */
    SLOT_DIR,      /* a directory made for outputs: removed on rollback */
} slot_kind_t;

typedef struct {
    atomic_int kind;     /* read by a signal handler */
    char path[PATH_MAX]; /* the temporary, scratch file or directory */
    char *target;        /* SLOT_FILE: the file it replaces, resolved */
} slot_t;

#define SLOTS_PER_CHUNK 64
#define SLOT_CHUNKS 1024

/* Chunks are allocated as needed and never moved or freed, so that a
 * handler can walk them at any moment; slots are counted from 0 again
 * when a transaction ends. */
static slot_t *_Atomic slot_chunks[SLOT_CHUNKS];
static atomic_int slot_count;
static int tx_depth;              /* transactions open */
static moemu_status_t tx_failed;  /* the first failure inside one */

static slot_t *slot_at(int i)
{
    return &slot_chunks[i / SLOTS_PER_CHUNK][i % SLOTS_PER_CHUNK];
}

/* A new slot holding path, published whole before a handler can see it. */
static slot_t *slot_new(slot_kind_t kind, const char *path)
{
    int i = atomic_load(&slot_count), c = i / SLOTS_PER_CHUNK;
    if (c >= SLOT_CHUNKS || strlen(path) >= PATH_MAX) return NULL;
    if (!atomic_load(&slot_chunks[c])) {
        slot_t *chunk = calloc(SLOTS_PER_CHUNK, sizeof(slot_t));
        if (!chunk) return NULL;
        atomic_store(&slot_chunks[c], chunk);
    }
    slot_t *s = slot_at(i);
    atomic_store(&s->kind, SLOT_DONE);
    strcpy(s->path, path);
    s->target = NULL;
    atomic_store(&s->kind, kind);
    atomic_store(&slot_count, i + 1);
    return s;
}

void outfile_remove_all(void)
{
    /* newest first: a directory's files before the directory */
    for (int i = atomic_load(&slot_count) - 1; i >= 0; i--) {
        slot_t *s = slot_at(i);
        int kind = atomic_load(&s->kind);
        if (kind == SLOT_FILE || kind == SLOT_SCRATCH) unlink(s->path);
        else if (kind == SLOT_DIR) rmdir(s->path);
    }
}

/* Forget every slot (their files renamed or removed). */
static void slots_clear(void)
{
    int n = atomic_load(&slot_count);
    for (int i = 0; i < n; i++) {
        atomic_store(&slot_at(i)->kind, SLOT_DONE);
        free(slot_at(i)->target);
        slot_at(i)->target = NULL;
    }
    atomic_store(&slot_count, 0);
}

/* Rename every temporary file into place, in the order written; after a
 * rename that fails, the rest are removed. Termination signals wait until
 * the renames are done, so that one cannot cut a commit in half. */
static moemu_status_t tx_commit(void)
{
    sigset_t hold, old;
    sigemptyset(&hold);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGHUP);
    sigaddset(&hold, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &hold, &old);
    moemu_status_t st = MOEMU_OK;
    for (int i = 0; i < atomic_load(&slot_count); i++) {
        slot_t *s = slot_at(i);
        int kind = atomic_load(&s->kind);
        if (kind == SLOT_FILE && st == MOEMU_OK && rename(s->path, s->target) != 0)
            st = io_error(s->target, errno);
        if ((kind == SLOT_FILE && st != MOEMU_OK) || kind == SLOT_SCRATCH) unlink(s->path);
        atomic_store(&s->kind, SLOT_DONE);
    }
    slots_clear();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return st;
}

void outfile_begin(void) { tx_depth++; }

moemu_status_t outfile_end(moemu_status_t st)
{
    if (st != MOEMU_OK && tx_failed == MOEMU_OK) tx_failed = st;
    if (tx_depth > 0) tx_depth--;
    if (tx_depth > 0) return st;
    moemu_status_t failed = tx_failed;
    tx_failed = MOEMU_OK;
    if (failed == MOEMU_OK) return tx_commit();
    outfile_remove_all();
    slots_clear();
    if (st != MOEMU_OK) return st;
    return moemu_fail(failed, "the outputs were not written: an earlier one failed");
}

/* Processes other than rank 0 of an MPI job compute the same outputs as
 * rank 0, which alone writes them. */
static bool quiet(void) { return par_proc_rank() != 0; }

moemu_status_t outfile_mkdir(const char *path)
{
    if (quiet()) return MOEMU_OK;
    if (mkdir(path, 0777) != 0)
        return moemu_fail(MOEMU_ERR_IO, "cannot create directory %s: %s", path, strerror(errno));
    if (!slot_new(SLOT_DIR, path)) {
        rmdir(path);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot create directory %s: too many outputs", path);
    }
    return MOEMU_OK;
}

moemu_status_t outfile_scratch(const char *templ, const char **path, int *fd)
{
    slot_t *s = slot_new(SLOT_SCRATCH, templ);
    if (!s) return moemu_fail(MOEMU_ERR_NOMEM, "cannot make a scratch file %s", templ);
    /* named before it exists: a signal meanwhile removes nothing else */
    if ((*fd = mkstemp(s->path)) < 0) {
        atomic_store(&s->kind, SLOT_DONE);
        return moemu_fail(MOEMU_ERR_IO, "cannot make a scratch file %s: %s", templ,
                          strerror(errno));
    }
    *path = s->path;
    return MOEMU_OK;
}

/* ---- Where a write lands */

/* dir/name into out (PATH_MAX), without doubling the root's slash. */
static int join(char *out, const char *dir, const char *name)
{
    const char *sep = dir[0] && dir[strlen(dir) - 1] == '/' ? "" : "/";
    return snprintf(out, PATH_MAX, "%s%s%s", dir, sep, name) >= PATH_MAX ? ENAMETOOLONG : 0;
}

/* A file that does not exist yet: its directory resolved, its name kept. */
static int resolve_new(const char *path, char *out)
{
    char dir[PATH_MAX], real[PATH_MAX];
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    if (!*name) return EISDIR; /* "dir/" */
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash == path) strcpy(dir, "/");
    if (!realpath(dir, real)) return errno;
    return join(out, real, name);
}

/* Where a write of path lands: out (PATH_MAX) the absolute path with every
 * symlink followed, of an existing file (*exists, its stat in *sb) or of
 * a new one in an existing directory; a device or a pipe keeps the name
 * given (/dev/stdout's link into /proc names no file). Returns 0 or an
 * errno value. */
static int resolve(const char *path, char *out, struct stat *sb, bool *exists)
{
    char cur[PATH_MAX], link[PATH_MAX];
    *exists = false;
    if (snprintf(cur, sizeof cur, "%s", path) >= PATH_MAX) return ENAMETOOLONG;
    if (stat(path, sb) == 0) {
        *exists = true;
        if (S_ISREG(sb->st_mode) || S_ISDIR(sb->st_mode))
            return realpath(path, out) ? 0 : errno;
        strcpy(out, cur);
        return 0;
    }
    if (errno != ENOENT) return errno;
    /* a new file, maybe named by a dangling link: followed by hand */
    for (int hop = 0; hop < OUTFILE_MAX_LINKS; hop++) {
        struct stat lsb;
        if (lstat(cur, &lsb) != 0) return errno == ENOENT ? resolve_new(cur, out) : errno;
        if (!S_ISLNK(lsb.st_mode)) return EAGAIN; /* made meanwhile */
        ssize_t n = readlink(cur, link, sizeof link - 1);
        if (n < 0) return errno;
        link[n] = '\0';
        /* a relative link is relative to the link's own directory */
        char *slash = strrchr(cur, '/');
        if (link[0] == '/' || !slash) snprintf(cur, sizeof cur, "%s", link);
        else if ((size_t)(slash + 1 - cur) + (size_t)n >= sizeof cur) return ENAMETOOLONG;
        else strcpy(slash + 1, link);
    }
    return ELOOP;
}

/* One output being written: to a temporary file (slot) or directly. */
typedef struct {
    FILE *f;
    slot_t *slot;
    const char *path; /* as given, for messages */
} outfile_t;

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino;
}

/* This process's standard output or error (1, 2) when it is the file sb,
 * else -1: "--json /dev/stdout > file" continues that stream. */
static int std_stream(const struct stat *sb)
{
    struct stat s;
    for (int fd = 1; fd <= 2; fd++)
        if (fstat(fd, &s) == 0 && same_file(&s, sb)) return fd;
    return -1;
}

/* Written in place: a device, a pipe, or a standard stream std (> 0) at
 * its offset, after what was printed to it. */
static moemu_status_t open_direct(outfile_t *o, const char *target, int std)
{
    if (std > 0) fflush(std == 1 ? stdout : stderr);
    int fd = std > 0 ? dup(std) : open(target, O_WRONLY | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) return io_error(o->path, errno);
    if (!(o->f = fdopen(fd, "w"))) {
        int err = errno;
        close(fd);
        return io_error(o->path, err);
    }
    return MOEMU_OK;
}

/* A temporary file beside target, with the mode of the file it replaces
 * (a new file: what the umask allows, not mkstemp's 0600). */
static moemu_status_t open_staged(outfile_t *o, const char *target, const struct stat *old)
{
    char tmpl[PATH_MAX];
    if (snprintf(tmpl, sizeof tmpl, "%s.tmp.XXXXXX", target) >= PATH_MAX)
        return io_error(o->path, ENAMETOOLONG);
    char *dup = strdup(target);
    slot_t *s = dup ? slot_new(SLOT_FILE, tmpl) : NULL;
    if (!s) {
        free(dup);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot write %s: out of memory", o->path);
    }
    s->target = dup;
    int fd = mkstemp(s->path);
    if (fd < 0) {
        int err = errno;
        atomic_store(&s->kind, SLOT_DONE);
        return io_error(o->path, err);
    }
    o->slot = s;
    mode_t mask = umask(0);
    umask(mask);
    fchmod(fd, old ? old->st_mode & 07777 : 0666 & ~mask);
    if (!(o->f = fdopen(fd, "w"))) {
        close(fd);
        return io_error(o->path, errno);
    }
    return MOEMU_OK;
}

static moemu_status_t out_open(outfile_t *o, const char *path)
{
    *o = (outfile_t){.path = path};
    if (quiet()) return open_direct(o, "/dev/null", -1);
    char target[PATH_MAX];
    struct stat sb;
    bool exists;
    int err = resolve(path, target, &sb, &exists);
    if (err) return io_error(path, err);
    if (exists && S_ISDIR(sb.st_mode)) return io_error(path, EISDIR);
    /* a device or a pipe has no directory entry worth replacing */
    int std = exists ? std_stream(&sb) : -1;
    bool direct = exists && (!S_ISREG(sb.st_mode) || std > 0);
    moemu_status_t st = direct ? open_direct(o, target, std)
                               : open_staged(o, target, exists ? &sb : NULL);
    if (st == MOEMU_OK) setvbuf(o->f, NULL, _IOFBF, OUTFILE_BUFFER);
    return st;
}

/* Close o after fill's status st: a write that failed (a full device) is
 * MOEMU_ERR_IO with the system's reason. */
static moemu_status_t out_close(outfile_t *o, moemu_status_t st)
{
    errno = 0;
    int err = fflush(o->f) != 0 || ferror(o->f) ? (errno ? errno : EIO) : 0;
    if (fclose(o->f) != 0 && !err) err = errno ? errno : EIO;
    if (st == MOEMU_OK && err) st = io_error(o->path, err);
    return st;
}

moemu_status_t outfile_write(const char *path, outfile_fill_fn fill, const void *arg)
{
    outfile_t o;
    outfile_begin();
    moemu_status_t st = out_open(&o, path);
    if (st == MOEMU_OK) st = out_close(&o, fill(o.f, arg));
    return outfile_end(st);
}

typedef struct {
    const char *path;
    const json_t *root;
} json_fill_t;

static moemu_status_t fill_json(FILE *f, const void *arg)
{
    const json_fill_t *j = arg;
    errno = 0;
    if (json_dumpf(j->root, f, JSON_INDENT(1) | JSON_REAL_PRECISION(17)) != 0 ||
        fputc('\n', f) == EOF)
        return io_error(j->path, errno);
    return MOEMU_OK;
}

moemu_status_t outfile_json(const char *path, const json_t *root)
{
    return outfile_write(path, fill_json, &(json_fill_t){path, root});
}

/* ---- Checking output paths */

typedef struct {
    char target[PATH_MAX];
    struct stat sb;
    bool exists, ok;
} check_out_t;

/* The directory part of path ("." when none). */
static void dir_of(const char *path, char *out)
{
    const char *slash = strrchr(path, '/');
    if (!slash) strcpy(out, ".");
    else if (slash == path) strcpy(out, "/");
    else snprintf(out, PATH_MAX, "%.*s", (int)(slash - path), path);
}

/* Whether output a can be written where it is: one problem at most. */
static void check_one(const outfile_arg_t *a, check_out_t *c, moemu_problems_t *p)
{
    char dir[PATH_MAX];
    int err = resolve(a->path, c->target, &c->sb, &c->exists);
    if (err == ENOENT || err == ENOTDIR) {
        dir_of(a->path, dir);
        moemu_problem(p, "%s %s: directory %s %s", a->flag, a->path, dir,
                      err == ENOENT ? "does not exist" : "is not a directory");
    } else if (err) {
        moemu_problem(p, "%s %s: %s", a->flag, a->path, strerror(err));
    } else if (c->exists && S_ISDIR(c->sb.st_mode) && !a->dir) {
        moemu_problem(p, "%s %s: is a directory", a->flag, a->path);
    } else if (c->exists && !S_ISREG(c->sb.st_mode)) {
        /* a directory written into, a device or a pipe written directly */
        int mode = S_ISDIR(c->sb.st_mode) ? W_OK | X_OK : W_OK;
        if (access(c->target, mode) != 0)
            moemu_problem(p, "%s %s: not writable (%s)", a->flag, a->path, strerror(errno));
        else c->ok = true;
    } else {
        /* renamed into its directory: that directory must take it */
        dir_of(c->target, dir);
        if (access(dir, W_OK | X_OK) != 0)
            moemu_problem(p, "%s %s: directory %s is not writable (%s)", a->flag, a->path, dir,
                          strerror(errno));
        else c->ok = true;
    }
}

/* Whether output c is input in, or one of the files it reads. */
static void check_input(const outfile_arg_t *a, const check_out_t *c, const outfile_arg_t *in,
                        moemu_problems_t *p)
{
    struct stat isb, dsb, osb;
    if (!in->path || stat(in->path, &isb) != 0) return; /* a built-in name, or missing */
    if (c->exists && !S_ISREG(c->sb.st_mode) && !S_ISDIR(c->sb.st_mode)) return; /* a tty */
    if (c->exists && same_file(&c->sb, &isb)) {
        moemu_problem(p, "%s %s: is the input %s %s", a->flag, a->path, in->flag, in->path);
        return;
    }
    if (!in->reads) return;
    char idir[PATH_MAX], odir[PATH_MAX];
    if (S_ISDIR(isb.st_mode)) snprintf(idir, sizeof idir, "%s", in->path);
    else dir_of(in->path, idir);
    dir_of(c->target, odir);
    if (stat(idir, &dsb) == 0 && stat(odir, &osb) == 0 && same_file(&dsb, &osb) &&
        in->reads(strrchr(c->target, '/') + 1))
        moemu_problem(p, "%s %s: is a file of the input %s %s", a->flag, a->path, in->flag,
                      in->path);
}

/* Whether outputs a and b (both resolved) are one file; devices and pipes
 * are written in turn (/dev/null or /dev/stdout twice is fine). */
static bool same_output(const check_out_t *a, const check_out_t *b)
{
    if (a->exists && !S_ISREG(a->sb.st_mode) && !S_ISDIR(a->sb.st_mode)) return false;
    if (a->exists && b->exists) return same_file(&a->sb, &b->sb);
    return strcmp(a->target, b->target) == 0;
}

moemu_status_t outfile_check(const outfile_arg_t *outs, int n_out, const outfile_arg_t *ins,
                             int n_in)
{
    check_out_t *c = calloc((size_t)(n_out > 0 ? n_out : 1), sizeof *c);
    if (!c) return moemu_fail(MOEMU_ERR_NOMEM, "cannot check the output paths");
    moemu_problems_t p = {.lines = true};
    for (int i = 0; i < n_out; i++) {
        if (!outs[i].path) continue;
        check_one(&outs[i], &c[i], &p);
        for (int k = 0; c[i].ok && k < n_in; k++) check_input(&outs[i], &c[i], &ins[k], &p);
        for (int j = 0; c[i].ok && j < i; j++)
            if (c[j].ok && same_output(&c[j], &c[i]))
                moemu_problem(&p, "%s %s and %s %s: the same file", outs[j].flag, outs[j].path,
                              outs[i].flag, outs[i].path);
    }
    free(c);
    if (p.n == 0) return MOEMU_OK;
    if (p.n == 1 && p.len > 3) return moemu_fail(MOEMU_ERR_INVALID, "%s", p.buf + 3);
    return moemu_fail_problems(MOEMU_ERR_INVALID, &p, "%d problems with the outputs, nothing "
                               "was run:", p.n);
}
