/* checkpoint: single-file and sharded safetensors checkpoints. Opening
 * gathers every disagreement between an index and its shards before
 * failing, because a broken download usually has several and fixing them
 * one rerun at a time is slow; writing goes through a temporary directory
 * so that a reader never finds half a set of shards. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "engine/models/checkpoint.h"
#include "engine/tools/outfile.h"

/* Lines a kind of problem gets before "and N more", and names a list
 * shows: enough to see the pattern, few enough to see the other kinds. */
enum { CKPT_NAMED = 4 };

typedef struct {
    const st_tensor_t *t;
    int file;
} ckpt_ent_t;

/* by_name's records: the name beside the entry, so that sorting needs no
 * context. */
typedef struct {
    const char *name;
    int file, ent;
} ckpt_key_t;

struct ckpt {
    char *path;
    int nfiles;
    st_file_t **files; /* by file name; NULL while a shard is missing */
    char **fnames;     /* the shards' names, sorted */
    int n;
    ckpt_ent_t *ents; /* file by file, each in header order */
    ckpt_key_t *by_name; /* sorted by name, then file */
};

/* ---- small helpers */

static bool ckpt_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* "dir/name" in a new string, or NULL. */
static char *ckpt_join(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *s = malloc(n);
    if (s) snprintf(s, n, "%s/%s", dir, name);
    return s;
}

/* path's directory in a new string ("." when it has none). */
static char *ckpt_dirname(const char *path)
{
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}

static bool ckpt_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static const char *ckpt_s(long n) { return n == 1 ? "" : "s"; }

/* A list of names shown as "'a', 'b', 'c' and 4 more": the first
 * CKPT_NAMED, each cut at 120 characters. */
typedef struct {
    int n;
    size_t len;
    char buf[CKPT_NAMED * 140 + 40];
} ckpt_list_t;

static void ckpt_list_add(ckpt_list_t *l, const char *fmt, const char *name, const char *extra)
{
    if (l->n++ >= CKPT_NAMED || l->len >= sizeof l->buf) return;
    if (l->n > 1) l->len += (size_t)snprintf(l->buf + l->len, sizeof l->buf - l->len, ", ");
    if (l->len < sizeof l->buf)
        l->len += (size_t)snprintf(l->buf + l->len, sizeof l->buf - l->len, fmt, name, extra);
}

static const char *ckpt_list_end(ckpt_list_t *l)
{
    if (l->n > CKPT_NAMED && l->len < sizeof l->buf)
        snprintf(l->buf + l->len, sizeof l->buf - l->len, " and %d more", l->n - CKPT_NAMED);
    return l->buf;
}

/* ---- the handle */

void ckpt_close(ckpt_t *ck)
{
    if (!ck) return;
    for (int i = 0; i < ck->nfiles; i++) {
        st_close(ck->files[i]);
        free(ck->fnames[i]);
    }
    free(ck->files);
    free(ck->fnames);
    free(ck->ents);
    free(ck->by_name);
    free(ck->path);
    free(ck);
}

/* An empty handle for path with room for nfiles shards. */
static ckpt_t *ckpt_new(const char *path, int nfiles)
{
    ckpt_t *ck = calloc(1, sizeof *ck);
    if (!ck) return NULL;
    ck->path = strdup(path);
    ck->files = calloc((size_t)nfiles + 1, sizeof *ck->files);
    ck->fnames = calloc((size_t)nfiles + 1, sizeof *ck->fnames);
    ck->nfiles = nfiles;
    if (ck->path && ck->files && ck->fnames) return ck;
    ck->nfiles = 0;
    ckpt_close(ck);
    return NULL;
}

static int ckpt_cmp_key(const void *a, const void *b)
{
    const ckpt_key_t *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : x->file - y->file;
}

/* ents and by_name from the open shards. */
static moemu_status_t ckpt_index_tensors(ckpt_t *ck)
{
    int n = 0;
    for (int f = 0; f < ck->nfiles; f++) n += st_count(ck->files[f]);
    ck->ents = calloc((size_t)n + 1, sizeof *ck->ents);
    ck->by_name = calloc((size_t)n + 1, sizeof *ck->by_name);
    if (!ck->ents || !ck->by_name)
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory for %d tensors", ck->path, n);
    for (int f = 0; f < ck->nfiles; f++)
        for (int i = 0; i < st_count(ck->files[f]); i++) {
            const st_tensor_t *t = st_at(ck->files[f], i);
            ck->ents[ck->n] = (ckpt_ent_t){t, f};
            ck->by_name[ck->n] = (ckpt_key_t){t->name, f, ck->n};
            ck->n++;
        }
    qsort(ck->by_name, (size_t)ck->n, sizeof *ck->by_name, ckpt_cmp_key);
    return MOEMU_OK;
}

int ckpt_count(const ckpt_t *ck) { return ck ? ck->n : 0; }

const st_tensor_t *ckpt_at(const ckpt_t *ck, int i)
{
    return ck && i >= 0 && i < ck->n ? ck->ents[i].t : NULL;
}

const char *ckpt_file_of(const ckpt_t *ck, int i)
{
    return ck && i >= 0 && i < ck->n ? ck->fnames[ck->ents[i].file] : NULL;
}

const char *ckpt_path(const ckpt_t *ck) { return ck ? ck->path : NULL; }

/* The first position in by_name whose name is not below name. */
static int ckpt_lower_bound(const ckpt_t *ck, const char *name)
{
    int lo = 0, hi = ck->n;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (strcmp(ck->by_name[mid].name, name) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int ckpt_index(const ckpt_t *ck, const char *name)
{
    if (!ck || !name) return -1;
    int k = ckpt_lower_bound(ck, name);
    if (k < ck->n && strcmp(ck->by_name[k].name, name) == 0) return ck->by_name[k].ent;
    return -1;
}

/* ---- opening one file */

static moemu_status_t ckpt_open_single(const char *path, const char *file, ckpt_t **out)
{
    ckpt_t *ck = ckpt_new(path, 1);
    if (!ck) return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", path);
    const char *slash = strrchr(file, '/');
    moemu_status_t st = st_open(file, &ck->files[0]);
    if (st == MOEMU_OK && !(ck->fnames[0] = strdup(slash ? slash + 1 : file)))
        st = moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", path);
    if (st == MOEMU_OK) st = ckpt_index_tensors(ck);
    if (st != MOEMU_OK) {
        ckpt_close(ck);
        return st;
    }
    *out = ck;
    return MOEMU_OK;
}

/* ---- opening an index and its shards */

/* What an index says, and the problems found so far. */
typedef struct {
    const char *ipath; /* the index file */
    char *dir;         /* its directory, where the shards are */
    json_t *root, *wm; /* the document, its weight_map */
    int64_t total;     /* metadata.total_size, or -1 */
    moemu_problems_t p;
    bool io; /* a problem was a file that could not be read */
} ckpt_idx_t;

/* The shard a weight_map value names, if it is a plain file name. */
static const char *ckpt_shard_name(ckpt_idx_t *x, const char *tensor, const json_t *v)
{
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (s && s[0] && !strchr(s, '/') && strcmp(s, ".") && strcmp(s, "..")) return s;
    char got[96];
    emu_json_describe(v, got, sizeof got);
    moemu_problem(&x->p, "%s: weight_map gives tensor '%s' the shard %s, which is not a file "
                  "name in the index's directory", x->ipath, tensor, got);
    return NULL;
}

static int ckpt_cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* A growing list of names, each the list's. */
typedef struct {
    char **v;
    int n, cap;
} ckpt_names_t;

static bool ckpt_names_add(ckpt_names_t *l, const char *s)
{
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 16;
        char **v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) return false;
        l->v = v;
        l->cap = cap;
    }
    if (!(l->v[l->n] = strdup(s))) return false;
    l->n++;
    return true;
}

static void ckpt_names_free(ckpt_names_t *l)
{
    for (int i = 0; i < l->n; i++) free(l->v[i]);
    free(l->v);
}

/* Sorted, each name once. */
static void ckpt_names_unique(ckpt_names_t *l)
{
    if (!l->n) return; /* v may be NULL */
    qsort(l->v, (size_t)l->n, sizeof *l->v, ckpt_cmp_str);
    int m = 0;
    for (int i = 0; i < l->n; i++) {
        if (m && !strcmp(l->v[m - 1], l->v[i])) free(l->v[i]);
        else l->v[m++] = l->v[i];
    }
    l->n = m;
}

/* The set a shard belongs to: its name without the shard number
 * ("model--of-00006.safetensors"); false for other names. */
static bool ckpt_set_key(const char *name, char *key, size_t cap)
{
    const char *of = strstr(name, "-of-"), *d = of;
    if (!of || !ckpt_ends_with(name, ".safetensors")) return false;
    while (d > name && isdigit((unsigned char)d[-1])) d--;
    if (d == of) return false;
    snprintf(key, cap, "%.*s%s", (int)(d - name), name, of);
    return true;
}

/* Whether name is a shard of a set that one of the first n names is of. */
static bool ckpt_same_set(const ckpt_names_t *l, int n, const char *name)
{
    char key[512], other[512];
    if (!ckpt_set_key(name, key, sizeof key)) return false;
    for (int i = 0; i < n; i++)
        if (ckpt_set_key(l->v[i], other, sizeof other) && !strcmp(key, other)) return true;
    return false;
}

/* Files of the directory in the same sets as the index's shards: a shard
 * the index forgot is still opened, so that its tensors are reported. */
static bool ckpt_add_unnamed(const ckpt_idx_t *x, ckpt_names_t *l)
{
    DIR *d = opendir(x->dir);
    if (!d) return true; /* the named shards' problems will say why */
    int named = l->n;
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d)))
        if (ckpt_same_set(l, named, e->d_name)) ok = ckpt_names_add(l, e->d_name);
    closedir(d);
    return ok;
}

/* The shards: the weight_map's distinct names and their sets' other
 * files in the directory, sorted. */
static moemu_status_t ckpt_shard_names(ckpt_idx_t *x, ckpt_names_t *l)
{
    bool ok = true;
    const char *key;
    json_t *val;
    json_object_foreach(x->wm, key, val) {
        const char *s = ckpt_shard_name(x, key, val);
        if (s && ok) ok = ckpt_names_add(l, s);
    }
    if (ok) ckpt_names_unique(l);
    if (ok) ok = ckpt_add_unnamed(x, l);
    if (ok) ckpt_names_unique(l);
    return ok ? MOEMU_OK : moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", x->ipath);
}

/* A tensor the weight_map puts in shard, to name in a message. */
static const char *ckpt_a_tensor_of(const ckpt_idx_t *x, const char *shard, int *count)
{
    const char *first = NULL, *key;
    json_t *val;
    *count = 0;
    json_object_foreach(x->wm, key, val) {
        if (!json_is_string(val) || strcmp(json_string_value(val), shard)) continue;
        if (!(*count)++) first = key;
    }
    return first;
}

/* Open shard k; a missing or bad one is a problem, not the end. */
static moemu_status_t ckpt_open_shard(ckpt_idx_t *x, ckpt_t *ck, int k)
{
    char *file = ckpt_join(x->dir, ck->fnames[k]);
    if (!file) return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", x->ipath);
    if (!ckpt_exists(file) && errno == ENOENT) {
        int count;
        const char *t = ckpt_a_tensor_of(x, ck->fnames[k], &count);
        moemu_problem(&x->p, "%s names the shard %s (for %d tensor%s, '%s' among them), "
                      "which is not there: an incomplete download?",
                      x->ipath, file, count, ckpt_s(count), t ? t : "?");
    } else {
        moemu_status_t st = st_open(file, &ck->files[k]);
        if (st == MOEMU_ERR_NOMEM) {
            free(file);
            return st;
        }
        if (st != MOEMU_OK) moemu_problem(&x->p, "%s", moemu_errmsg());
        x->io |= st == MOEMU_ERR_IO;
    }
    free(file);
    return MOEMU_OK;
}

static moemu_status_t ckpt_open_shards(ckpt_idx_t *x, ckpt_t **out)
{
    ckpt_names_t l = {0};
    moemu_status_t st = ckpt_shard_names(x, &l);
    ckpt_t *ck = st == MOEMU_OK ? ckpt_new(x->ipath, l.n) : NULL;
    if (st == MOEMU_OK && !ck) st = moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", x->ipath);
    if (st != MOEMU_OK) {
        ckpt_names_free(&l);
        return st;
    }
    if (l.n) memcpy(ck->fnames, l.v, (size_t)l.n * sizeof *l.v); /* now the handle's */
    free(l.v);
    for (int k = 0; st == MOEMU_OK && k < ck->nfiles; k++) st = ckpt_open_shard(x, ck, k);
    if (st == MOEMU_OK) st = ckpt_index_tensors(ck);
    if (st != MOEMU_OK) {
        ckpt_close(ck);
        return st;
    }
    *out = ck;
    return MOEMU_OK;
}

/* Tensors held by two shards: which one would a loader take? */
static void ckpt_check_twice(ckpt_idx_t *x, const ckpt_t *ck)
{
    int count = 0;
    for (int k = 1; k < ck->n; k++) {
        const ckpt_key_t *a = &ck->by_name[k - 1], *b = &ck->by_name[k];
        if (strcmp(a->name, b->name)) continue;
        if (count++ < CKPT_NAMED)
            moemu_problem(&x->p, "tensor '%s' is in two shards, %s and %s", a->name,
                          ck->fnames[a->file], ck->fnames[b->file]);
    }
    if (count > CKPT_NAMED)
        moemu_problem(&x->p, "and %d more tensors in two shards", count - CKPT_NAMED);
}

/* Each shard's tensors against the weight_map: listed, and listed there. */
static void ckpt_check_listed(ckpt_idx_t *x, const ckpt_t *ck)
{
    int unlisted = 0, moved = 0;
    for (int k = 0; k < ck->n; k++) {
        const ckpt_key_t *e = &ck->by_name[k];
        /* a tensor in two shards was reported by ckpt_check_twice */
        if ((k && !strcmp(ck->by_name[k - 1].name, e->name)) ||
            (k + 1 < ck->n && !strcmp(ck->by_name[k + 1].name, e->name)))
            continue;
        const json_t *v = json_object_get(x->wm, e->name);
        const char *f = ck->fnames[e->file], *g = json_is_string(v) ? json_string_value(v) : NULL;
        if (!v && unlisted++ < CKPT_NAMED)
            moemu_problem(&x->p, "%s holds tensor '%s', which the index %s does not list", f,
                          e->name, x->ipath);
        if (g && strcmp(g, f) && moved++ < CKPT_NAMED)
            moemu_problem(&x->p, "%s holds tensor '%s', but the index %s puts it in %s", f,
                          e->name, x->ipath, g);
    }
    if (unlisted > CKPT_NAMED)
        moemu_problem(&x->p, "and %d more tensors the index does not list", unlisted - CKPT_NAMED);
    if (moved > CKPT_NAMED)
        moemu_problem(&x->p, "and %d more tensors in other shards than the index says",
                      moved - CKPT_NAMED);
}

/* The index of shard name in ck, or -1. */
static int ckpt_file_index(const ckpt_t *ck, const char *name)
{
    char *key = (char *)name;
    char **hit = bsearch(&key, ck->fnames, (size_t)ck->nfiles, sizeof *ck->fnames, ckpt_cmp_str);
    return hit ? (int)(hit - ck->fnames) : -1;
}

/* Each weight_map entry against its shard (when it opened): a tensor
 * found in no shard at all is reported here; one found in another shard
 * was reported by ckpt_check_listed. */
static void ckpt_check_found(ckpt_idx_t *x, const ckpt_t *ck)
{
    int count = 0;
    const char *key;
    json_t *val;
    json_object_foreach(x->wm, key, val) {
        int f = json_is_string(val) ? ckpt_file_index(ck, json_string_value(val)) : -1;
        if (f < 0 || !ck->files[f] || st_find(ck->files[f], key) || ckpt_index(ck, key) >= 0)
            continue;
        if (count++ < CKPT_NAMED)
            moemu_problem(&x->p, "%s puts tensor '%s' in %s, which does not hold it", x->ipath,
                          key, ck->fnames[f]);
    }
    if (count > CKPT_NAMED)
        moemu_problem(&x->p, "and %d more tensors of the index in no shard", count - CKPT_NAMED);
}

/* metadata.total_size against the tensors' bytes, once every shard
 * opened (with one missing the sum says nothing new). */
static void ckpt_check_total(ckpt_idx_t *x, const ckpt_t *ck)
{
    if (x->total < 0) return;
    for (int f = 0; f < ck->nfiles; f++)
        if (!ck->files[f]) return;
    uint64_t sum = 0;
    int distinct = 0;
    for (int k = 0; k < ck->n; k++)
        if (!k || strcmp(ck->by_name[k - 1].name, ck->by_name[k].name)) {
            sum += ck->ents[ck->by_name[k].ent].t->nbytes;
            distinct++;
        }
    if (sum != (uint64_t)x->total)
        moemu_problem(&x->p, "%s: metadata.total_size is %lld bytes, but the %d tensor%s of its "
                      "%d shard%s hold %llu bytes", x->ipath, (long long)x->total, distinct,
                      ckpt_s(distinct), ck->nfiles, ckpt_s(ck->nfiles), (unsigned long long)sum);
}

/* The index's document: weight_map required, metadata.total_size not. */
static moemu_status_t ckpt_read_index(ckpt_idx_t *x)
{
    emu_json_src_t src = {.origin = x->ipath, .noun = "index key", .status = MOEMU_ERR_FORMAT};
    MOEMU_CHECK(emu_json_load_file(&src, x->ipath, &x->root));
    if (!json_is_object(x->root))
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: the index is not a JSON object", x->ipath);
    MOEMU_CHECK(emu_json_obj(&src, x->root, "weight_map", EMU_JSON_REQUIRED, &x->wm));
    json_t *meta = NULL;
    MOEMU_CHECK(emu_json_obj(&src, x->root, "metadata", EMU_JSON_NULLABLE, &meta));
    if (!meta) return MOEMU_OK;
    char buf[64];
    emu_json_src_t in = emu_json_in(&src, "metadata", buf, sizeof buf);
    return emu_json_i64(&in, meta, "total_size", EMU_JSON_NULLABLE | EMU_JSON_WHOLE_REAL, 0,
                        INT64_MAX, &x->total);
}

static moemu_status_t ckpt_open_index(const char *path, const char *ipath, ckpt_t **out)
{
    ckpt_idx_t x = {.ipath = ipath, .total = -1, .p = {.lines = true}};
    ckpt_t *ck = NULL;
    if (!(x.dir = ckpt_dirname(ipath))) return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", path);
    moemu_status_t st = ckpt_read_index(&x);
    if (st == MOEMU_OK) st = ckpt_open_shards(&x, &ck);
    if (st == MOEMU_OK) {
        ckpt_check_twice(&x, ck);
        ckpt_check_listed(&x, ck);
        ckpt_check_found(&x, ck);
        ckpt_check_total(&x, ck);
    }
    if (st == MOEMU_OK && x.p.n)
        st = moemu_fail_problems(x.io ? MOEMU_ERR_IO : MOEMU_ERR_FORMAT, &x.p,
                                 "%s: %d problem%s with the checkpoint:", path, x.p.n, ckpt_s(x.p.n));
    json_decref(x.root);
    free(x.dir);
    if (st != MOEMU_OK) {
        ckpt_close(ck);
        return st;
    }
    free(ck->path);
    if (!(ck->path = strdup(path))) {
        ckpt_close(ck);
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", path);
    }
    *out = ck;
    return MOEMU_OK;
}

/* A directory: its model.safetensors or its index, exactly one. */
static moemu_status_t ckpt_open_dir(const char *path, ckpt_t **out)
{
    char *single = ckpt_join(path, CKPT_SINGLE_NAME), *index = ckpt_join(path, CKPT_INDEX_NAME);
    moemu_status_t st;
    if (!single || !index) st = moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", path);
    else if (ckpt_exists(single) && ckpt_exists(index))
        st = moemu_fail(MOEMU_ERR_FORMAT, "%s holds both %s and %s, so which is the checkpoint "
                        "is unclear (one is likely stale): remove one", path, CKPT_SINGLE_NAME,
                        CKPT_INDEX_NAME);
    else if (ckpt_exists(single)) st = ckpt_open_single(path, single, out);
    else if (ckpt_exists(index)) st = ckpt_open_index(path, index, out);
    else
        st = moemu_fail(MOEMU_ERR_FORMAT, "%s holds no checkpoint: looked for %s (one file) and "
                        "%s (shards)", path, single, index);
    free(single);
    free(index);
    return st;
}

moemu_status_t ckpt_open(const char *path, ckpt_t **out)
{
    if (!path || !out)
        return moemu_fail(MOEMU_ERR_INVALID, "ckpt_open: NULL %s", path ? "out" : "path");
    *out = NULL;
    struct stat sb;
    if (stat(path, &sb) != 0)
        return moemu_fail(MOEMU_ERR_IO, "cannot open checkpoint %s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) return ckpt_open_dir(path, out);
    if (ckpt_ends_with(path, ".json")) return ckpt_open_index(path, path, out);
    return ckpt_open_single(path, path, out);
}

/* ---- reading a model's tensors */

/* Rows of w seen as 2-D (the product of all but its last dimension) and
 * their length. */
static int64_t ckpt_rows_of(const ckpt_want_t *w)
{
    int64_t n = 1;
    for (int d = 0; d + 1 < w->ndim; d++) n *= w->shape[d];
    return n;
}

static int64_t ckpt_cols_of(const ckpt_want_t *w) { return w->ndim ? w->shape[w->ndim - 1] : 1; }

static moemu_status_t ckpt_check_want(const ckpt_want_t *w, int i, const ckpt_rows_t *rows)
{
    bool ok = w->name && w->ndim >= 0 && w->ndim <= ST_MAX_DIMS && (w->ndim == 0 || w->shape);
    for (int d = 0; ok && d < w->ndim; d++) ok = w->shape[d] >= 0;
    if (!ok)
        return moemu_fail(MOEMU_ERR_INVALID, "ckpt_read_all: want[%d] (%s) has no name, a bad "
                          "ndim %d or a bad shape", i, w->name ? w->name : "NULL", w->ndim);
    if (rows && (rows->r0 < 0 || rows->r1 < rows->r0 || rows->r1 > ckpt_rows_of(w)))
        return moemu_fail(MOEMU_ERR_INVALID, "ckpt_read_all: want[%d] (%s) asks for rows [%lld, "
                          "%lld) of %lld", i, w->name, (long long)rows->r0, (long long)rows->r1,
                          (long long)ckpt_rows_of(w));
    return MOEMU_OK;
}

static int ckpt_cmp_want(const void *a, const void *b)
{
    return strcmp((*(const ckpt_want_t *const *)a)->name, (*(const ckpt_want_t *const *)b)->name);
}

/* The caller's list: well formed, no name twice (a model's bug). */
static moemu_status_t ckpt_check_wants(const ckpt_want_t *want, int n, const ckpt_rows_t *rows)
{
    const ckpt_want_t **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) return moemu_fail(MOEMU_ERR_NOMEM, "ckpt_read_all: out of memory for %d names", n);
    moemu_status_t st = MOEMU_OK;
    for (int i = 0; st == MOEMU_OK && i < n; i++) {
        st = ckpt_check_want(&want[i], i, rows ? &rows[i] : NULL);
        v[i] = &want[i];
    }
    if (st == MOEMU_OK) qsort(v, (size_t)n, sizeof *v, ckpt_cmp_want);
    for (int i = 1; st == MOEMU_OK && i < n; i++)
        if (!strcmp(v[i - 1]->name, v[i]->name))
            st = moemu_fail(MOEMU_ERR_INVALID, "ckpt_read_all: tensor '%s' is wanted twice",
                            v[i]->name);
    free(v);
    return st;
}

/* What ckpt_read_all finds, kind by kind. */
typedef struct {
    moemu_problems_t p;
    ckpt_list_t missing, nonfinite;
    int misfit; /* wrong shape or dtype */
    int fp8bad; /* FP8 tensors without fitting scales, stray scales */
    int mxbad;  /* MXFP4 tensors whose blocks and scales do not fit */
    bool io;    /* a file could not be read (it changed while loading) */
    ckpt_read_opts_t *o;
    const ckpt_want_t *want; /* the caller's list, whose rows o has */
    int block[2];
} ckpt_found_t;

/* The rows of w to read: o's, else all. */
static void ckpt_rows(const ckpt_found_t *fd, const ckpt_want_t *w, int64_t *r0, int64_t *r1)
{
    const ckpt_rows_t *rows = fd->o->rows;
    *r0 = rows ? rows[w - fd->want].r0 : 0;
    *r1 = rows ? rows[w - fd->want].r1 : ckpt_rows_of(w);
}

/* DeepSeek's spelling (inference/fp8_cast_bf16.py: f"{weight_name}_scale_inv"). */
#define CKPT_SCALE_SUFFIX "_scale_inv"

static bool ckpt_float(st_dtype_t dt) { return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16; }

static size_t ckpt_numel(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int d = 0; d < ndim; d++) n *= (size_t)shape[d];
    return n;
}

/* One more FP8 problem: true while it still gets its own line. */
static bool ckpt_fp8_line(ckpt_found_t *fd) { return fd->fp8bad++ < 2 * CKPT_NAMED; }

static bool ckpt_same_shape(const st_tensor_t *t, const ckpt_want_t *w)
{
    bool same = t->ndim == w->ndim;
    for (int d = 0; same && d < w->ndim; d++) same = t->shape[d] == w->shape[d];
    return same;
}

/* Shape and dtype of tensor i against w: true when it can be read. */
static bool ckpt_fits(const ckpt_t *ck, int i, const ckpt_want_t *w, ckpt_found_t *fd)
{
    const st_tensor_t *t = ck->ents[i].t;
    const char *file = ck->fnames[ck->ents[i].file];
    bool shape = ckpt_same_shape(t, w);
    bool dtype = ckpt_float(t->dtype) || t->dtype == ST_F8_E4M3;
    char have[256], need[256];
    if (!shape && fd->misfit++ < 2 * CKPT_NAMED)
        moemu_problem(&fd->p, "in %s: %s has shape %s, expected %s", file, t->name,
                      st_shape_str(have, sizeof have, t->ndim, t->shape),
                      st_shape_str(need, sizeof need, w->ndim, w->shape));
    if (!dtype && fd->misfit++ < 2 * CKPT_NAMED)
        moemu_problem(&fd->p, "in %s: %s has dtype %s; only F32, F16, BF16 and F8_E4M3 can be "
                      "read", file, t->name, t->dtype_name);
    return shape && dtype;
}

/* NaN and Inf in w->out[first, first + count) (read from tensor i),
 * noted with their count. */
static void ckpt_note_nonfinite(const ckpt_t *ck, int i, const ckpt_want_t *w, int64_t first,
                                int64_t count, ckpt_found_t *fd)
{
    int64_t bad = 0;
    for (int64_t k = first; k < first + count; k++) bad += !isfinite(w->out[k]);
    char counts[160];
    snprintf(counts, sizeof counts, "%lld of %lld, in %s", (long long)bad, (long long)count,
             ck->fnames[ck->ents[i].file]);
    if (bad) ckpt_list_add(&fd->nonfinite, "'%s' (%s)", ck->ents[i].t->name, counts);
}

/* Convert w's rows of tensor i into w->out, noting NaN and Inf. */
static void ckpt_read_one(const ckpt_t *ck, int i, const ckpt_want_t *w, ckpt_found_t *fd)
{
    const st_tensor_t *t = ck->ents[i].t;
    int64_t r0, r1, C = ckpt_cols_of(w);
    ckpt_rows(fd, w, &r0, &r1);
    if (r0 == r1) return;
    moemu_status_t st = st_read_f32_part(ck->files[ck->ents[i].file], t->name, w->ndim, w->shape,
                                         r0 * C, (r1 - r0) * C, w->out + r0 * C);
    if (st != MOEMU_OK) {
        fd->io |= st == MOEMU_ERR_IO;
        moemu_problem(&fd->p, "%s", moemu_errmsg());
        return;
    }
    ckpt_note_nonfinite(ck, i, w, r0 * C, (r1 - r0) * C, fd);
}

/* The scales' shape for w: its last two dimensions counted in blocks. */
static void ckpt_scale_shape(const ckpt_want_t *w, const int *block, int64_t *shape)
{
    for (int d = 0; d < w->ndim; d++) shape[d] = w->shape[d];
    for (int k = 0; k < 2; k++) {
        int d = w->ndim - 2 + k;
        shape[d] = (w->shape[d] + block[k] - 1) / block[k];
    }
}

/* Tensor j, the scales for w: the expected shape and a float dtype. */
static bool ckpt_scales_fit(const ckpt_t *ck, int j, const ckpt_want_t *w, const int64_t *shape,
                            ckpt_found_t *fd)
{
    const st_tensor_t *s = ck->ents[j].t;
    const char *file = ck->fnames[ck->ents[j].file];
    bool same = s->ndim == w->ndim;
    for (int d = 0; same && d < w->ndim; d++) same = s->shape[d] == shape[d];
    char have[256], need[256], of[256];
    if (!same && ckpt_fp8_line(fd))
        moemu_problem(&fd->p, "in %s: %s has shape %s, expected %s: the scales of %s %s in "
                      "blocks of [%d, %d]", file, s->name,
                      st_shape_str(have, sizeof have, s->ndim, s->shape),
                      st_shape_str(need, sizeof need, w->ndim, shape), w->name,
                      st_shape_str(of, sizeof of, w->ndim, w->shape), fd->block[0], fd->block[1]);
    if (!ckpt_float(s->dtype) && ckpt_fp8_line(fd))
        moemu_problem(&fd->p, "in %s: %s has dtype %s; scales must be F32, BF16 or F16", file,
                      s->name, s->dtype_name);
    return same && ckpt_float(s->dtype);
}

/* out[..][r][c] *= sc[..][r / br][c / bc], matrix by matrix over the
 * leading dimensions (stacked experts), on rows [r0, r1) of the 2-D view:
 * weight_dequant's y = x * s. */
static void ckpt_apply_scales(float *out, const float *sc, const ckpt_want_t *w,
                              const int64_t *sshape, const int *block, int64_t r0, int64_t r1)
{
    int nd = w->ndim;
    int64_t R = w->shape[nd - 2], C = w->shape[nd - 1], SR = sshape[nd - 2], SC = sshape[nd - 1];
    for (int64_t g = r0; g < r1; g++) {
        const float *srow = sc + ((g / R) * SR + g % R / block[0]) * SC;
        for (int64_t c = 0; c < C; c++) out[g * C + c] *= srow[c / block[1]];
    }
}

/* FP8 tensor i times its scales, tensor j, into w's rows of w->out. */
static void ckpt_dequant(const ckpt_t *ck, int i, int j, const ckpt_want_t *w, ckpt_found_t *fd)
{
    int64_t shape[ST_MAX_DIMS], r0, r1, C = ckpt_cols_of(w);
    ckpt_scale_shape(w, fd->block, shape);
    ckpt_rows(fd, w, &r0, &r1);
    if (!ckpt_scales_fit(ck, j, w, shape, fd) || r0 == r1) return;
    float *sc = malloc(ckpt_numel(w->ndim, shape) * sizeof *sc + 1);
    const st_tensor_t *t = ck->ents[i].t, *s = ck->ents[j].t;
    moemu_status_t st = MOEMU_OK;
    if (!sc)
        moemu_problem(&fd->p, "out of memory for the scales of %s", t->name);
    else if ((st = st_read_f32(ck->files[ck->ents[j].file], s->name, w->ndim, shape, sc)) !=
                 MOEMU_OK ||
             (st = st_read_f32_part(ck->files[ck->ents[i].file], t->name, w->ndim, w->shape,
                                    r0 * C, (r1 - r0) * C, w->out + r0 * C)) != MOEMU_OK) {
        fd->io |= st == MOEMU_ERR_IO;
        moemu_problem(&fd->p, "%s", moemu_errmsg());
    }
    else {
        ckpt_apply_scales(w->out, sc, w, shape, fd->block, r0, r1);
        ckpt_note_nonfinite(ck, i, w, r0 * C, (r1 - r0) * C, fd);
        fd->o->fp8++;
    }
    free(sc);
}

/* FP8 tensor i (of w's shape): find its scales, mark them used, dequantize. */
static void ckpt_read_fp8(const ckpt_t *ck, int i, const ckpt_want_t *w, bool *used,
                          ckpt_found_t *fd)
{
    const char *name = ck->ents[i].t->name, *file = ck->fnames[ck->ents[i].file];
    char sh[256];
    if (w->ndim < 2) {
        if (ckpt_fp8_line(fd))
            moemu_problem(&fd->p, "in %s: %s is F8_E4M3 of shape %s; its block scales need 2 "
                          "dimensions", file, name, st_shape_str(sh, sizeof sh, w->ndim, w->shape));
        return;
    }
    size_t n = strlen(name);
    char *sname = malloc(n + sizeof CKPT_SCALE_SUFFIX);
    if (!sname) {
        moemu_problem(&fd->p, "out of memory for the scales of %s", name);
        return;
    }
    memcpy(sname, name, n);
    memcpy(sname + n, CKPT_SCALE_SUFFIX, sizeof CKPT_SCALE_SUFFIX);
    int j = ckpt_index(ck, sname);
    if (j < 0 && ckpt_fp8_line(fd))
        moemu_problem(&fd->p, "%s is F8_E4M3 but %s is missing (in %s)", name, sname, file);
    if (j >= 0) {
        used[j] = true;
        ckpt_dequant(ck, i, j, w, fd);
    }
    free(sname);
}

/* "_scale_inv" tensors no FP8 want took: those of a wanted tensor that is
 * not FP8 are a problem of their own (the checkpoint mixes formats);
 * those of a misshapen FP8 tensor were reported with it; the rest are
 * left to ckpt_note_unwanted, like the tensor they would scale. */
static void ckpt_note_stray_scales(const ckpt_t *ck, bool *used, ckpt_found_t *fd)
{
    size_t sl = strlen(CKPT_SCALE_SUFFIX);
    for (int j = 0; j < ck->n; j++) {
        const st_tensor_t *s = ck->ents[j].t;
        if (used[j] || !ckpt_ends_with(s->name, CKPT_SCALE_SUFFIX)) continue;
        char *wname = strndup(s->name, strlen(s->name) - sl);
        int i = wname ? ckpt_index(ck, wname) : -1;
        if (i >= 0 && used[i]) {
            used[j] = true;
            const st_tensor_t *t = ck->ents[i].t;
            if (t->dtype != ST_F8_E4M3 && ckpt_fp8_line(fd))
                moemu_problem(&fd->p, "in %s: %s scales %s, which is %s, not F8_E4M3",
                              ck->fnames[ck->ents[j].file], s->name, wname, t->dtype_name);
        }
        free(wname);
    }
}

/* ---- MXFP4 experts */

/* gpt-oss's spelling (transformers' Mxfp4GptOssExperts: gate_up_proj_blocks,
 * gate_up_proj_scales); 32 values share a scale, two a byte. */
#define CKPT_BLOCKS_SUFFIX "_blocks"
#define CKPT_SCALES_SUFFIX "_scales"
enum { CKPT_MX_BLOCK = 32, CKPT_MX_BYTES = CKPT_MX_BLOCK / 2 };

/* One more MXFP4 problem: true while it still gets its own line. */
static bool ckpt_mx_line(ckpt_found_t *fd) { return fd->mxbad++ < 2 * CKPT_NAMED; }

/* The index of name + suffix, or -1 (also when out of memory). */
static int ckpt_index_with(const ckpt_t *ck, const char *name, const char *suffix)
{
    size_t n = strlen(name), m = strlen(suffix);
    char *s = malloc(n + m + 1);
    if (!s) return -1;
    memcpy(s, name, n);
    memcpy(s + n, suffix, m + 1);
    int i = ckpt_index(ck, s);
    free(s);
    return i;
}

/* e2m1 by its 4-bit code: transformers' FP4_VALUES (integrations/mxfp4.py). */
static const float ckpt_e2m1[16] = {+0.0f, +0.5f, +1.0f, +1.5f, +2.0f, +3.0f, +4.0f, +6.0f,
                                    -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

/* out (mats, in, nout) from blocks (mats, nout, in / 32, 16) and scales
 * (mats, nout, in / 32), as convert_moe_packed_tensors: byte k of a block
 * holds values 2k (low nibble) and 2k + 1 (high), each times 2^(scale -
 * 127), exact (ldexpf, tabulated for the 256 scales); rows of nout become
 * columns (its transpose(1, 2)). Block by block along o, so that the
 * writes fill 32 rows' cache lines: about twice as fast as row by row. */
static void ckpt_mxfp4_decode(float *out, const uint8_t *blocks, const uint8_t *scales,
                              int64_t mats, int64_t in, int64_t nout)
{
    float lut[256][16];
    for (int s = 0; s < 256; s++)
        for (int c = 0; c < 16; c++) lut[s][c] = ldexpf(ckpt_e2m1[c], s - 127);
    int64_t G = in / CKPT_MX_BLOCK;
    for (int64_t m = 0; m < mats; m++)
        for (int64_t g = 0; g < G; g++)
            for (int64_t o = 0; o < nout; o++) {
                int64_t row = (m * nout + o) * G + g;
                const uint8_t *b = blocks + row * CKPT_MX_BYTES;
                const float *v = lut[scales[row]];
                float *col = out + (m * in + g * CKPT_MX_BLOCK) * nout + o;
                for (int k = 0; k < CKPT_MX_BYTES; k++) {
                    col[(2 * k) * nout] = v[b[k] & 0x0F];
                    col[(2 * k + 1) * nout] = v[b[k] >> 4];
                }
            }
}

/* The shapes MXFP4 stores w [..., in, out] in: blocks [..., out, in / 32,
 * 16] (ndim + 1 dimensions) and scales [..., out, in / 32]. */
static void ckpt_mxfp4_shapes(const ckpt_want_t *w, int64_t *bshape, int64_t *sshape)
{
    int nd = w->ndim;
    for (int d = 0; d < nd - 2; d++) bshape[d] = sshape[d] = w->shape[d];
    bshape[nd - 2] = sshape[nd - 2] = w->shape[nd - 1];
    bshape[nd - 1] = sshape[nd - 1] = w->shape[nd - 2] / CKPT_MX_BLOCK;
    bshape[nd] = CKPT_MX_BYTES;
}

/* Tensor j, w's MXFP4 blocks or scales (what): U8 of shape[0..ndim). */
static bool ckpt_mxfp4_part_fits(const ckpt_t *ck, int j, const ckpt_want_t *w, int ndim,
                                 const int64_t *shape, const char *what, ckpt_found_t *fd)
{
    const st_tensor_t *t = ck->ents[j].t;
    const char *file = ck->fnames[ck->ents[j].file];
    bool same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    char have[256], need[256], of[256];
    if (!same && ckpt_mx_line(fd))
        moemu_problem(&fd->p, "in %s: %s has shape %s, expected %s: the MXFP4 %s of %s %s",
                      file, t->name, st_shape_str(have, sizeof have, t->ndim, t->shape),
                      st_shape_str(need, sizeof need, ndim, shape), what, w->name,
                      st_shape_str(of, sizeof of, w->ndim, w->shape));
    if (t->dtype != ST_U8 && ckpt_mx_line(fd))
        moemu_problem(&fd->p, "in %s: %s has dtype %s; MXFP4 %s must be U8", file, t->name,
                      t->dtype_name, what);
    return same && t->dtype == ST_U8;
}

/* Blocks b and scales s against w: true when they can be decoded. */
static bool ckpt_mxfp4_fits(const ckpt_t *ck, int b, int s, const ckpt_want_t *w,
                            ckpt_found_t *fd)
{
    const char *file = ck->fnames[ck->ents[b].file];
    bool flat = w->ndim < 2, odd = !flat && w->shape[w->ndim - 2] % CKPT_MX_BLOCK;
    char sh[256], why[96];
    if (flat) snprintf(why, sizeof why, "MXFP4 needs [..., in, out]");
    if (odd)
        snprintf(why, sizeof why, "its in, %lld, is not a multiple of %d",
                 (long long)w->shape[w->ndim - 2], CKPT_MX_BLOCK);
    if ((flat || odd) && ckpt_mx_line(fd))
        moemu_problem(&fd->p, "in %s: %s is stored as MXFP4 (%s, %s) but has shape %s: %s",
                      file, w->name, ck->ents[b].t->name, ck->ents[s].t->name,
                      st_shape_str(sh, sizeof sh, w->ndim, w->shape), why);
    if (flat || odd) return false;
    int64_t bshape[ST_MAX_DIMS + 1], sshape[ST_MAX_DIMS];
    ckpt_mxfp4_shapes(w, bshape, sshape);
    bool ok = ckpt_mxfp4_part_fits(ck, b, w, w->ndim + 1, bshape, "blocks", fd);
    return ckpt_mxfp4_part_fits(ck, s, w, w->ndim, sshape, "scales", fd) && ok;
}

/* The matrices [*m0, *m1) of w ([..., in, out]) that hold its rows to
 * read. */
static void ckpt_mxfp4_mats(const ckpt_found_t *fd, const ckpt_want_t *w, int64_t *m0,
                            int64_t *m1)
{
    int64_t r0, r1, in = w->shape[w->ndim - 2];
    ckpt_rows(fd, w, &r0, &r1);
    *m0 = r0 / in;
    *m1 = r1 > r0 ? (r1 + in - 1) / in : *m0;
}

/* Blocks b and scales s of w's matrices to read decoded into w->out,
 * noting NaN and Inf. */
static void ckpt_mxfp4_dequant(const ckpt_t *ck, int b, int s, const ckpt_want_t *w,
                               ckpt_found_t *fd)
{
    int64_t bshape[ST_MAX_DIMS + 1], sshape[ST_MAX_DIMS], m0, m1;
    ckpt_mxfp4_shapes(w, bshape, sshape);
    ckpt_mxfp4_mats(fd, w, &m0, &m1);
    if (m0 == m1) return;
    int nd = w->ndim;
    int64_t in = w->shape[nd - 2], nout = w->shape[nd - 1], mat = in * nout;
    int64_t sper = nout * (in / CKPT_MX_BLOCK), bper = sper * CKPT_MX_BYTES; /* bytes a matrix */
    const st_tensor_t *bt = ck->ents[b].t, *stt = ck->ents[s].t;
    uint8_t *blocks = malloc((size_t)((m1 - m0) * bper) + 1);
    uint8_t *scales = malloc((size_t)((m1 - m0) * sper) + 1);
    if (!blocks || !scales)
        moemu_problem(&fd->p, "out of memory for the %zu bytes of %s", bt->nbytes + stt->nbytes,
                      bt->name);
    else if (st_read_u8_part(ck->files[ck->ents[b].file], bt->name, nd + 1, bshape, m0 * bper,
                             (m1 - m0) * bper, blocks) != MOEMU_OK ||
             st_read_u8_part(ck->files[ck->ents[s].file], stt->name, nd, sshape, m0 * sper,
                             (m1 - m0) * sper, scales) != MOEMU_OK)
        moemu_problem(&fd->p, "%s", moemu_errmsg());
    else {
        ckpt_mxfp4_decode(w->out + m0 * mat, blocks, scales, m1 - m0, in, nout);
        ckpt_note_nonfinite(ck, b, w, m0 * mat, (m1 - m0) * mat, fd);
        fd->o->mxfp4++;
    }
    free(blocks);
    free(scales);
}

/* w, absent from the checkpoint, as MXFP4 blocks and scales: true when
 * either is there (both marked used; decoded or the problems noted),
 * false when neither is (w is missing). */
static bool ckpt_read_mxfp4(const ckpt_t *ck, const ckpt_want_t *w, bool *used, ckpt_found_t *fd)
{
    int b = ckpt_index_with(ck, w->name, CKPT_BLOCKS_SUFFIX);
    int s = ckpt_index_with(ck, w->name, CKPT_SCALES_SUFFIX);
    if (b < 0 && s < 0) return false;
    if (b >= 0) used[b] = true;
    if (s >= 0) used[s] = true;
    if (b >= 0 && s >= 0) {
        if (ckpt_mxfp4_fits(ck, b, s, w, fd)) ckpt_mxfp4_dequant(ck, b, s, w, fd);
        return true;
    }
    int j = b >= 0 ? b : s;
    if (ckpt_mx_line(fd))
        moemu_problem(&fd->p, "in %s: %s is there but %s%s is not: MXFP4 %s needs both",
                      ck->fnames[ck->ents[j].file], ck->ents[j].t->name, w->name,
                      b < 0 ? CKPT_BLOCKS_SUFFIX : CKPT_SCALES_SUFFIX, w->name);
    return true;
}

/* Tensors of the checkpoint no want asked for, less those o->ignore takes. */
static void ckpt_note_unwanted(const ckpt_t *ck, const bool *used, ckpt_found_t *fd)
{
    ckpt_read_opts_t *o = fd->o;
    ckpt_list_t l = {0};
    for (int i = 0; i < ck->n; i++) {
        const st_tensor_t *t = ck->ents[i].t;
        if (used[i]) continue;
        if (o->ignore && o->ignore(t->name, o->arg)) {
            o->ignored++;
            o->ignored_bytes += (int64_t)t->nbytes;
        } else {
            ckpt_list_add(&l, "'%s' (in %s)", t->name, ck->fnames[ck->ents[i].file]);
        }
    }
    if (l.n)
        moemu_problem(&fd->p, "%d tensor%s the model does not have: %s", l.n, ckpt_s(l.n),
                      ckpt_list_end(&l));
}

static void ckpt_find_all(const ckpt_t *ck, const ckpt_want_t *want, int n, bool *used,
                          ckpt_found_t *fd)
{
    for (int w = 0; w < n; w++) {
        int i = ckpt_index(ck, want[w].name);
        if (i < 0 && !ckpt_read_mxfp4(ck, &want[w], used, fd)) {
            ckpt_list_add(&fd->missing, "'%s'%s", want[w].name, "");
            continue;
        }
        if (i >= 0) {
            used[i] = true;
            if (!ckpt_fits(ck, i, &want[w], fd)) continue;
            if (ck->ents[i].t->dtype == ST_F8_E4M3)
                ckpt_read_fp8(ck, i, &want[w], used, fd);
            else
                ckpt_read_one(ck, i, &want[w], fd);
        }
        if (fd->o->read) fd->o->read(w, fd->o->read_arg);
    }
    if (fd->misfit > 2 * CKPT_NAMED)
        moemu_problem(&fd->p, "and %d more tensors of the wrong shape or dtype",
                      fd->misfit - 2 * CKPT_NAMED);
    ckpt_note_stray_scales(ck, used, fd);
    if (fd->fp8bad > 2 * CKPT_NAMED)
        moemu_problem(&fd->p, "and %d more FP8 tensors or scales that do not fit",
                      fd->fp8bad - 2 * CKPT_NAMED);
    if (fd->mxbad > 2 * CKPT_NAMED)
        moemu_problem(&fd->p, "and %d more MXFP4 blocks or scales that do not fit",
                      fd->mxbad - 2 * CKPT_NAMED);
    if (fd->missing.n)
        moemu_problem(&fd->p, "%d tensor%s missing: %s", fd->missing.n, ckpt_s(fd->missing.n),
                      ckpt_list_end(&fd->missing));
    ckpt_note_unwanted(ck, used, fd);
    if (fd->nonfinite.n)
        moemu_problem(&fd->p, "%d tensor%s NaN or Inf values: %s", fd->nonfinite.n,
                      fd->nonfinite.n == 1 ? " holds" : "s hold", ckpt_list_end(&fd->nonfinite));
}

moemu_status_t ckpt_read_all_opts(const ckpt_t *ck, const ckpt_want_t *want, int n,
                                  const char *label, ckpt_read_opts_t *o)
{
    ckpt_read_opts_t none = {0};
    if (!o) o = &none;
    o->ignored = o->fp8 = o->mxfp4 = 0;
    o->ignored_bytes = 0;
    if (!ck || n < 0 || (n && !want) || o->block_r < 0 || o->block_c < 0)
        return moemu_fail(MOEMU_ERR_INVALID, "ckpt_read_all: bad arguments (n %d, FP8 blocks "
                          "[%d, %d])", n, o->block_r, o->block_c);
    MOEMU_CHECK(ckpt_check_wants(want, n, o->rows));
    bool *used = calloc((size_t)ck->n + 1, sizeof *used);
    ckpt_found_t *fd = calloc(1, sizeof *fd);
    if (!used || !fd) {
        free(used);
        free(fd);
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", ck->path);
    }
    fd->p.lines = true;
    fd->o = o;
    fd->want = want;
    fd->block[0] = o->block_r ? o->block_r : 128; /* DeepSeek-V3's weight_block_size */
    fd->block[1] = o->block_c ? o->block_c : 128;
    ckpt_find_all(ck, want, n, used, fd);
    moemu_status_t st = MOEMU_OK;
    if (fd->p.n)
        st = moemu_fail_problems(fd->io ? MOEMU_ERR_IO : MOEMU_ERR_FORMAT, &fd->p,
                                 "%s: the checkpoint %s %s (%d problem%s):",
                                 label ? label : "model", ck->path,
                                 fd->io ? "could not be read" : "does not fit the model", fd->p.n,
                                 ckpt_s(fd->p.n));
    free(used);
    free(fd);
    return st;
}

moemu_status_t ckpt_read_all(const ckpt_t *ck, const ckpt_want_t *want, int n, const char *label)
{
    return ckpt_read_all_opts(ck, want, n, label, NULL);
}

/* ---- writing */

/* Names written in a shard set: the Hub's "model-00001-of-00003" with at
 * least five digits, as save_pretrained spells them. */
enum { CKPT_NAME_MAX = 64 };

/* Each tensor's stored bytes into bytes[], their sum into *total. */
static moemu_status_t ckpt_sizes(const char *path, const st_write_tensor_t *ts, int n,
                                 const st_dtype_t *dt, uint64_t *bytes, uint64_t *total)
{
    *total = 0;
    for (int i = 0; i < n; i++) {
        const st_write_tensor_t *t = &ts[i];
        if (!t->name || t->ndim < 0 || t->ndim > ST_MAX_DIMS)
            return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write %s: tensor %d has %s", path, i,
                              t->name ? "a bad ndim" : "no name");
        uint64_t b = st_dtype_size(dt[i]);
        bool bad = false;
        for (int d = 0; d < t->ndim; d++)
            bad |= t->shape[d] < 0 || __builtin_mul_overflow(b, (uint64_t)t->shape[d], &b);
        bad |= __builtin_add_overflow(*total, b, total) || *total > (uint64_t)INT64_MAX;
        if (bad)
            return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write %s: tensor '%s' has a negative "
                              "or too large shape", path, t->name);
        bytes[i] = b;
    }
    return MOEMU_OK;
}

static int ckpt_cmp_name_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* No name twice across the set: st_write sees one shard at a time. */
static moemu_status_t ckpt_check_names(const char *path, const st_write_tensor_t *ts, int n)
{
    const char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) return moemu_fail(MOEMU_ERR_NOMEM, "ckpt_write %s: out of memory", path);
    for (int i = 0; i < n; i++) v[i] = ts[i].name;
    qsort(v, (size_t)n, sizeof *v, ckpt_cmp_name_ptr);
    moemu_status_t st = MOEMU_OK;
    for (int i = 1; st == MOEMU_OK && i < n; i++)
        if (!strcmp(v[i - 1], v[i]))
            st = moemu_fail(MOEMU_ERR_INVALID, "ckpt_write %s: the tensor name '%s' is a "
                            "duplicate", path, v[i]);
    free(v);
    return st;
}

/* Split in tensor order, greedily as save_pretrained does: first[k] is
 * shard k's first tensor; returns the number of shards. */
static int ckpt_plan(const uint64_t *bytes, int n, uint64_t limit, int *first)
{
    int ns = 0;
    uint64_t cur = 0;
    for (int i = 0; i < n; i++) {
        /* cur > limit: the shard holds one oversized tensor, alone */
        if (ns == 0 || cur > limit || cur + bytes[i] > limit) {
            first[ns++] = i;
            cur = 0;
        }
        cur += bytes[i];
    }
    first[ns] = n;
    return ns;
}

/* A checkpoint already in dir: its first file's name into found. */
static moemu_status_t ckpt_find_existing(const char *dir, char *found, size_t cap)
{
    DIR *d = opendir(dir);
    if (!d) return moemu_fail(MOEMU_ERR_IO, "cannot read directory %s: %s", dir, strerror(errno));
    found[0] = '\0';
    struct dirent *e;
    while (!found[0] && (e = readdir(d))) {
        const char *s = e->d_name;
        bool shard = !strncmp(s, "model-", 6) && strstr(s, "-of-") &&
                     ckpt_ends_with(s, ".safetensors");
        if (shard || !strcmp(s, CKPT_SINGLE_NAME) || !strcmp(s, CKPT_INDEX_NAME))
            snprintf(found, cap, "%s", s);
    }
    closedir(d);
    return MOEMU_OK;
}

/* path as a directory to write into: created (outfile_mkdir: removed
 * again on a failure) or existing without a checkpoint. */
static moemu_status_t ckpt_prepare_dir(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) == 0) {
        if (!S_ISDIR(sb.st_mode))
            return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write: %s exists and is not a "
                              "directory (a single file must end in .safetensors)", path);
        char found[300];
        MOEMU_CHECK(ckpt_find_existing(path, found, sizeof found));
        if (found[0])
            return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write: %s already holds a checkpoint "
                              "(%s); remove it first, or write elsewhere", path, found);
        return MOEMU_OK;
    }
    return outfile_mkdir(path);
}

/* A set being written into dir, each file staged by outfile until the
 * set's transaction commits them in the order written. */
typedef struct {
    const char *dir;
    int nnames;
    char (*names)[CKPT_NAME_MAX];
} ckpt_set_t;

static moemu_status_t ckpt_set_write(ckpt_set_t *s, const char *name, const st_write_tensor_t *ts,
                                     int n, const st_dtype_t *dt)
{
    char *p = ckpt_join(s->dir, name);
    if (!p) return moemu_fail(MOEMU_ERR_NOMEM, "ckpt_write %s: out of memory", s->dir);
    snprintf(s->names[s->nnames++], CKPT_NAME_MAX, "%s", name);
    moemu_status_t st = st_write_dtypes(p, ts, n, dt);
    free(p);
    return st;
}

typedef struct {
    const st_write_tensor_t *ts;
    const int *first;
    int nshards;
    char (*names)[CKPT_NAME_MAX];
    uint64_t total;
} ckpt_index_out_t;

/* The index as save_pretrained writes it: sorted keys, indent 2. */
static moemu_status_t ckpt_fill_index(FILE *f, const void *arg)
{
    const ckpt_index_out_t *o = arg;
    json_t *root = json_object(), *meta = json_object(), *wm = json_object();
    int bad = json_object_set_new(meta, "total_size", json_integer((json_int_t)o->total));
    for (int k = 0; k < o->nshards; k++)
        for (int i = o->first[k]; i < o->first[k + 1]; i++)
            bad |= json_object_set_new(wm, o->ts[i].name, json_string(o->names[k]));
    bad |= json_object_set_new(root, "metadata", meta);
    bad |= json_object_set_new(root, "weight_map", wm);
    bad |= !root || json_dumpf(root, f, JSON_INDENT(2) | JSON_SORT_KEYS) != 0;
    bad |= fputc('\n', f) == EOF;
    json_decref(root);
    return bad ? moemu_fail(MOEMU_ERR_IO, "cannot write the index: %s",
                            strerror(errno ? errno : EIO))
               : MOEMU_OK;
}

/* Every shard, then the index (written last, so renamed last: a reader
 * finds the index only once every shard is in place). */
static moemu_status_t ckpt_write_shards(ckpt_set_t *s, const st_write_tensor_t *ts,
                                        const st_dtype_t *dt,
                                        const int *first, int ns, uint64_t total)
{
    for (int k = 0; k < ns; k++) {
        char name[CKPT_NAME_MAX];
        snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, ns);
        MOEMU_CHECK(ckpt_set_write(s, name, ts + first[k], first[k + 1] - first[k], dt + first[k]));
    }
    ckpt_index_out_t o = {ts, first, ns, s->names, total};
    char *p = ckpt_join(s->dir, CKPT_INDEX_NAME);
    if (!p) return moemu_fail(MOEMU_ERR_NOMEM, "ckpt_write %s: out of memory", s->dir);
    snprintf(s->names[s->nnames++], CKPT_NAME_MAX, "%s", CKPT_INDEX_NAME);
    moemu_status_t st = outfile_write(p, ckpt_fill_index, &o);
    free(p);
    return st;
}

static moemu_status_t ckpt_write_dir(const char *dir, const st_write_tensor_t *ts, int n,
                                     const st_dtype_t *dt, const int *first, int ns, uint64_t total)
{
    ckpt_set_t s = {.dir = dir, .names = calloc((size_t)ns + 2, sizeof *s.names)};
    if (!s.names) return moemu_fail(MOEMU_ERR_NOMEM, "ckpt_write %s: out of memory", dir);
    moemu_status_t st = ns ? ckpt_write_shards(&s, ts, dt, first, ns, total)
                           : ckpt_set_write(&s, CKPT_SINGLE_NAME, ts, n, dt);
    free(s.names);
    return st;
}

static moemu_status_t ckpt_write_planned(const char *path, const st_write_tensor_t *ts, int n,
                                         const st_dtype_t *dt, const int *first, int ns, uint64_t total)
{
    /* one transaction: every file, and the directory if it made one,
     * committed together or removed */
    outfile_begin();
    moemu_status_t st = ckpt_prepare_dir(path);
    if (st == MOEMU_OK) st = ckpt_write_dir(path, ts, n, dt, first, ns, total);
    return outfile_end(st);
}

/* One file at a .safetensors path, or the planned set in a directory. */
static moemu_status_t ckpt_write_to(const char *path, const st_write_tensor_t *ts, int n,
                                    const st_dtype_t *dt, const int *first, int ns, uint64_t total,
                                    int64_t shard_bytes)
{
    /* a directory when shards were asked for or path is one; else a file,
     * as --dump-weights FILE always wrote */
    struct stat sb;
    bool dir = shard_bytes > 0 ? !ckpt_ends_with(path, ".safetensors")
                               : stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
    if (dir) return ckpt_write_planned(path, ts, n, dt, first, ns, total);
    if (ns)
        return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write: %s names one file, but the tensors' "
                          "%llu bytes make %d shards of at most %lld bytes: give a directory",
                          path, (unsigned long long)total, ns, (long long)shard_bytes);
    return st_write_dtypes(path, ts, n, dt);
}

moemu_status_t ckpt_write_dtypes(const char *path, const st_write_tensor_t *ts, int n,
                                 const st_dtype_t *dt, int64_t shard_bytes)
{
    if (!path || !path[0] || n < 0 || (n && (!ts || !dt)))
        return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write: bad arguments (path %s, n %d)",
                          path ? path : "NULL", n);
    for (int i = 0; i < n; i++)
        if (dt[i] != ST_F32 && dt[i] != ST_F16 && dt[i] != ST_BF16 && dt[i] != ST_I32 &&
            dt[i] != ST_F8_E4M3 && dt[i] != ST_U8)
            return moemu_fail(MOEMU_ERR_INVALID, "ckpt_write %s: dtype %d cannot be written",
                              path, (int)dt[i]);
    uint64_t *bytes = calloc((size_t)n + 1, sizeof *bytes), total = 0;
    int *first = calloc((size_t)n + 2, sizeof *first), ns = 0; /* ns 0: one file */
    moemu_status_t st = bytes && first ? ckpt_sizes(path, ts, n, dt, bytes, &total)
                                       : moemu_fail(MOEMU_ERR_NOMEM, "ckpt_write %s: out of "
                                                    "memory", path);
    if (st == MOEMU_OK) st = ckpt_check_names(path, ts, n);
    if (st == MOEMU_OK && shard_bytes > 0 && total > (uint64_t)shard_bytes)
        ns = ckpt_plan(bytes, n, (uint64_t)shard_bytes, first);
    if (st == MOEMU_OK) st = ckpt_write_to(path, ts, n, dt, first, ns, total, shard_bytes);
    free(bytes);
    free(first);
    return st;
}

moemu_status_t ckpt_write(const char *path, const st_write_tensor_t *ts, int n, st_dtype_t dt,
                          int64_t shard_bytes)
{
    st_dtype_t *dts = malloc(sizeof *dts * ((size_t)(n > 0 ? n : 0) + 1));
    if (!dts) return moemu_fail(MOEMU_ERR_NOMEM, "ckpt_write %s: out of memory", path);
    for (int i = 0; i < n; i++) dts[i] = dt;
    moemu_status_t st = ckpt_write_dtypes(path, ts, n, dts, shard_bytes);
    free(dts);
    return st;
}

/* ---- sizes */

static const struct {
    const char *unit; /* matched in any case */
    uint64_t factor;
    bool decimal; /* ends in B, which a lowercase b would make bits */
} ckpt_units[] = {
    {"", 1, false},
    {"B", 1, true},
    {"KB", 1000, true},
    {"MB", 1000000, true},
    {"GB", 1000000000, true},
    {"TB", 1000000000000, true},
    {"KiB", (uint64_t)1 << 10, false},
    {"MiB", (uint64_t)1 << 20, false},
    {"GiB", (uint64_t)1 << 30, false},
    {"TiB", (uint64_t)1 << 40, false},
};

moemu_status_t ckpt_parse_size(const char *s, int64_t *out)
{
    if (!s || !out) return moemu_fail(MOEMU_ERR_INVALID, "ckpt_parse_size: NULL argument");
    const char *p = s;
    uint64_t v = 0;
    bool bad = !isdigit((unsigned char)*p);
    for (; isdigit((unsigned char)*p); p++)
        bad |= __builtin_mul_overflow(v, 10, &v) || __builtin_add_overflow(v, (uint64_t)(*p - '0'), &v);
    while (*p == ' ') p++;
    for (size_t i = 0; !bad && i < sizeof ckpt_units / sizeof ckpt_units[0]; i++) {
        if (strcasecmp(p, ckpt_units[i].unit)) continue;
        if (ckpt_units[i].decimal && p[strlen(p) - 1] == 'b')
            return moemu_fail(MOEMU_ERR_INVALID, "size '%s': a lowercase b means bits to "
                              "Hugging Face; write %.*s%s for bytes", s, (int)(p - s), s,
                              ckpt_units[i].unit);
        uint64_t r;
        if (__builtin_mul_overflow(v, ckpt_units[i].factor, &r) || r > (uint64_t)INT64_MAX) break;
        *out = (int64_t)r;
        return MOEMU_OK;
    }
    return moemu_fail(MOEMU_ERR_INVALID, "size '%s' is not a whole number of bytes, optionally "
                      "followed by a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), that fits "
                      "in 63 bits: e.g. 5GB, 500MB, 2GiB or 1000000", s);
}
