/* safetensors: a reader that validates the whole header up front and reads
 * tensors with pread into the caller's memory, and a writer that goes
 * through a temporary file and rename so a reader never sees half a file.
 * Multi-byte values in the file are little endian.
 *
 * Why pread and not mmap: a file that shrinks under a mapping (cp over a
 * checkpoint while it loads) raises SIGBUS at the access, which no status
 * can report, and a handler for it is process-wide state that the other
 * threads of a run would share; a short read is an error like any other,
 * safe in every thread. The copy costs nothing: every tensor is converted
 * into owned fp32 memory anyway. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "engine/models/safetensors.h"
#include "engine/tools/outfile.h"

/* Far beyond any real header (Mixtral's are ~100 KB); guards against a
 * garbage length making us parse the whole file as JSON. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define ST_HOST_LE 0
#else
#define ST_HOST_LE 1
#endif

struct st_file {
    char *path;
    int fd;             /* open while f is: a file replaced by mv stays readable */
    uint64_t size;      /* when it was opened */
    int n;
    st_tensor_t *tensors;          /* header order */
    const st_tensor_t **by_name;   /* sorted by name, for st_find */
    char *names;                   /* one block holding every name */
};

/* ---- dtypes */

static const struct {
    const char *name;
    st_dtype_t dtype;
    size_t size; /* 0: unknown (sub-byte or unlisted), size not checked */
} st_dtypes[] = {
    {"F32", ST_F32, 4},       {"F16", ST_F16, 2},
    {"BF16", ST_BF16, 2},     {"I32", ST_I32, 4},
    {"I64", ST_I64, 8},       {"F64", ST_OTHER, 8},
    {"U64", ST_OTHER, 8},     {"U32", ST_OTHER, 4},
    {"I16", ST_OTHER, 2},     {"U16", ST_OTHER, 2},
    {"I8", ST_OTHER, 1},      {"U8", ST_U8, 1},
    {"BOOL", ST_OTHER, 1},    {"F8_E4M3", ST_F8_E4M3, 1},
    {"F8_E5M2", ST_OTHER, 1}, {"F8_E8M0", ST_OTHER, 1},
    {"C64", ST_OTHER, 8},
};

static void st_dtype_lookup(const char *name, st_dtype_t *dt, size_t *size)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(name, st_dtypes[i].name) == 0) {
            *dt = st_dtypes[i].dtype;
            *size = st_dtypes[i].size;
            return;
        }
    *dt = ST_OTHER;
    *size = 0;
}

size_t st_dtype_size(st_dtype_t dt)
{
    static const size_t size[] = {[ST_F32] = 4, [ST_F16] = 2, [ST_BF16] = 2, [ST_I32] = 4,
                                  [ST_I64] = 8, [ST_F8_E4M3] = 1, [ST_U8] = 1,
                                  [ST_OTHER] = 0};
    return (unsigned)dt <= ST_OTHER ? size[dt] : 0;
}

const char *st_shape_str(char *buf, size_t cap, int ndim,
                         const int64_t *shape)
{
    size_t len = 0;
    buf[0] = '\0';
    len += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && len < cap; i++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%lld",
                                i ? ", " : "", (long long)shape[i]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
    return buf;
}

/* ---- reading */

static uint64_t st_load_u64le(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

void st_close(st_file_t *f)
{
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    free(f->tensors);
    free(f->by_name);
    free(f->names);
    free(f->path);
    free(f);
}

static int st_cmp_name(const void *a, const void *b)
{
    const st_tensor_t *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Non-negative JSON integer, or false. */
static bool st_json_uint(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0) return false;
    *out = (uint64_t)json_integer_value(v);
    return true;
}

/* Fill t (all but offset) from one header entry; begin/end are data-section
 * offsets. Errors name the file and the tensor. */
static moemu_status_t st_parse_entry(const char *path, const char *name,
                                     const json_t *e, st_tensor_t *t,
                                     uint64_t *begin, uint64_t *end)
{
    if (!json_is_object(e))
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': header entry is not an object",
                          path, name);

    const json_t *jdt = json_object_get(e, "dtype");
    if (!json_is_string(jdt))
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': missing or non-string \"dtype\"",
                          path, name);
    const char *dts = json_string_value(jdt);
    if (strlen(dts) >= sizeof t->dtype_name)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': dtype \"%.32s\" is too long "
                          "(at most %zu characters)",
                          path, name, dts, sizeof t->dtype_name - 1);
    strcpy(t->dtype_name, dts);
    size_t elsize;
    st_dtype_lookup(dts, &t->dtype, &elsize);

    const json_t *jshape = json_object_get(e, "shape");
    if (!json_is_array(jshape))
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': missing or non-array \"shape\"",
                          path, name);
    size_t nd = json_array_size(jshape);
    if (nd > ST_MAX_DIMS)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': shape has %zu dimensions, at most "
                          "%d are supported",
                          path, name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    uint64_t count = 1;
    bool overflow = false;
    for (size_t i = 0; i < nd; i++) {
        uint64_t dim;
        if (!st_json_uint(json_array_get(jshape, i), &dim))
            return moemu_fail(MOEMU_ERR_FORMAT,
                              "%s: tensor '%s': shape[%zu] is not a "
                              "non-negative integer",
                              path, name, i);
        t->shape[i] = (int64_t)dim;
        overflow |= __builtin_mul_overflow(count, dim, &count);
    }
    char sbuf[256];
    if (overflow)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': shape %s has too many elements",
                          path, name, st_shape_str(sbuf, sizeof sbuf, t->ndim,
                                                   t->shape));

    const json_t *joff = json_object_get(e, "data_offsets");
    if (!json_is_array(joff) || json_array_size(joff) != 2 ||
        !st_json_uint(json_array_get(joff, 0), begin) ||
        !st_json_uint(json_array_get(joff, 1), end))
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': missing \"data_offsets\" or not "
                          "[begin, end] with non-negative integers",
                          path, name);
    if (*begin > *end)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: tensor '%s': data_offsets [%llu, %llu] end "
                          "before they begin",
                          path, name, (unsigned long long)*begin,
                          (unsigned long long)*end);
    uint64_t nbytes = *end - *begin, want;
    if (elsize) {
        if (__builtin_mul_overflow(count, (uint64_t)elsize, &want))
            return moemu_fail(MOEMU_ERR_FORMAT,
                              "%s: tensor '%s': shape %s of %s is too large",
                              path, name,
                              st_shape_str(sbuf, sizeof sbuf, t->ndim,
                                           t->shape),
                              dts);
        if (nbytes != want)
            return moemu_fail(MOEMU_ERR_FORMAT,
                              "%s: tensor '%s': data_offsets [%llu, %llu] "
                              "hold %llu bytes but shape %s of %s needs %llu",
                              path, name, (unsigned long long)*begin,
                              (unsigned long long)*end,
                              (unsigned long long)nbytes,
                              st_shape_str(sbuf, sizeof sbuf, t->ndim,
                                           t->shape),
                              dts, (unsigned long long)want);
    }
    t->nbytes = (size_t)nbytes;
    return MOEMU_OK;
}

/* One tensor's place in the data section, for the layout checks. */
typedef struct {
    uint64_t begin, end;
    const char *name;
} st_span_t;

/* By offsets, as the reference reader sorts them; names break ties so
 * that the message does not depend on qsort. */
static int st_cmp_span(const void *a, const void *b)
{
    const st_span_t *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static const char *st_plural(uint64_t n) { return n == 1 ? "" : "s"; }

/* The header length: within the file and under the limit. */
static moemu_status_t st_check_hlen(const char *path, uint64_t size,
                                    uint64_t hlen)
{
    if (hlen > size - 8)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: header length %llu goes beyond the file of "
                          "%llu bytes: not a safetensors file, or truncated",
                          path, (unsigned long long)hlen,
                          (unsigned long long)size);
    if (hlen > ST_MAX_HEADER)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: header length %llu is over the limit of %llu "
                          "bytes: not a safetensors file?",
                          path, (unsigned long long)hlen,
                          (unsigned long long)ST_MAX_HEADER);
    return MOEMU_OK;
}

/* The tensor reaching furthest must end inside the file: checked before
 * the layout so that a file cut short is called truncated. */
static moemu_status_t st_check_inside(const char *path, uint64_t size,
                                      uint64_t hlen, const st_span_t *sp,
                                      int n)
{
    const st_span_t *far = NULL;
    for (int i = 0; i < n; i++)
        if (!far || sp[i].end > far->end) far = &sp[i];
    if (!far || far->end <= size - 8 - hlen) return MOEMU_OK;
    return moemu_fail(MOEMU_ERR_FORMAT,
                      "%s: truncated or bad offsets: the header needs %llu "
                      "bytes (tensor '%s' ends at data offset %llu) but the "
                      "file has %llu bytes",
                      path, (unsigned long long)(8 + hlen + far->end),
                      far->name, (unsigned long long)far->end,
                      (unsigned long long)size);
}

/* Sorted spans must start at 0 and follow one another: an overlap would
 * let two tensors share bytes, a gap hide data no tensor accounts for. */
static moemu_status_t st_check_contiguous(const char *path,
                                          const st_span_t *sp, int n)
{
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        const st_span_t *t = &sp[i], *prev = i ? &sp[i - 1] : NULL;
        if (t->begin < at)
            return moemu_fail(MOEMU_ERR_FORMAT,
                              "%s: tensors '%s' (data_offsets [%llu, %llu]) "
                              "and '%s' ([%llu, %llu]) overlap: every byte "
                              "of data must belong to one tensor",
                              path, prev->name,
                              (unsigned long long)prev->begin,
                              (unsigned long long)prev->end, t->name,
                              (unsigned long long)t->begin,
                              (unsigned long long)t->end);
        uint64_t gap = t->begin - at;
        if (gap && !prev)
            return moemu_fail(MOEMU_ERR_FORMAT,
                              "%s: no tensor holds the %llu byte%s before "
                              "tensor '%s' (begins at data offset %llu): the "
                              "first tensor must begin at 0",
                              path, (unsigned long long)gap, st_plural(gap),
                              t->name, (unsigned long long)t->begin);
        if (gap)
            return moemu_fail(MOEMU_ERR_FORMAT,
                              "%s: no tensor holds the %llu byte%s between "
                              "tensor '%s' (ends at data offset %llu) and "
                              "tensor '%s' (begins at %llu): the tensors "
                              "must follow one another",
                              path, (unsigned long long)gap, st_plural(gap),
                              prev->name, (unsigned long long)prev->end,
                              t->name, (unsigned long long)t->begin);
        at = t->end;
    }
    return MOEMU_OK;
}

/* The data section must end where the last tensor does. Bytes left over
 * are trailing data or, when the header's padding fell into the data, a
 * header length too short (every tensor shifted). */
static moemu_status_t st_check_covered(const char *path, uint64_t size,
                                       uint64_t hlen, const st_span_t *sp,
                                       int n)
{
    uint64_t data_size = size - 8 - hlen, end = n ? sp[n - 1].end : 0;
    if (end == data_size) return MOEMU_OK;
    char last[160] = "no tensors";
    if (n) snprintf(last, sizeof last, "tensor '%.128s'", sp[n - 1].name);
    uint64_t left = data_size - end;
    return moemu_fail(MOEMU_ERR_FORMAT,
                      "%s: the data after the header of %llu bytes has %llu "
                      "bytes but the tensors end at %llu (%s): no tensor "
                      "holds its last %llu byte%s (trailing bytes, or a "
                      "wrong header length)",
                      path, (unsigned long long)hlen,
                      (unsigned long long)data_size, (unsigned long long)end,
                      last, (unsigned long long)left, st_plural(left));
}

/* Every tensor of the header into f->tensors (in header order), with its
 * span; names are copied into f->names. */
static moemu_status_t st_parse_entries(st_file_t *f, json_t *root,
                                       uint64_t data, st_span_t *sp)
{
    char *np = f->names;
    int i = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        st_tensor_t *t = &f->tensors[i];
        size_t kl = strlen(key) + 1;
        memcpy(np, key, kl);
        t->name = np;
        np += kl;
        st_span_t *s = &sp[i];
        s->name = t->name;
        MOEMU_CHECK(st_parse_entry(f->path, t->name, val, t, &s->begin,
                                   &s->end));
        t->offset = data + s->begin;
        f->by_name[i] = t;
        i++;
    }
    f->n = i;
    return MOEMU_OK;
}

/* Allocate f's tables for the header's tensors (and the spans). */
static moemu_status_t st_alloc_tables(st_file_t *f, json_t *root,
                                      st_span_t **sp)
{
    /* Count first so the tensors and names are two allocations. */
    size_t n = 0, name_bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        n++;
        name_bytes += strlen(key) + 1;
    }
    if (n > (size_t)INT32_MAX)
        return moemu_fail(MOEMU_ERR_FORMAT, "%s: %zu tensors is too many",
                          f->path, n);
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->by_name = calloc(n ? n : 1, sizeof *f->by_name);
    f->names = malloc(name_bytes ? name_bytes : 1);
    *sp = calloc(n ? n : 1, sizeof **sp);
    if (!f->tensors || !f->by_name || !f->names || !*sp)
        return moemu_fail(MOEMU_ERR_NOMEM,
                          "%s: out of memory for %zu tensor entries", f->path,
                          n);
    return MOEMU_OK;
}

/* The tensors of a parsed header, checked as the reference reader
 * (huggingface/safetensors) does, then indexed by name. */
static moemu_status_t st_parse_tensors(st_file_t *f, json_t *root,
                                       uint64_t hlen)
{
    st_span_t *sp = NULL;
    uint64_t size = f->size;
    moemu_status_t st = st_alloc_tables(f, root, &sp);
    if (st == MOEMU_OK)
        st = st_parse_entries(f, root, 8 + hlen, sp);
    if (st == MOEMU_OK) st = st_check_inside(f->path, size, hlen, sp, f->n);
    if (st == MOEMU_OK) {
        qsort(sp, (size_t)f->n, sizeof *sp, st_cmp_span);
        st = st_check_contiguous(f->path, sp, f->n);
    }
    if (st == MOEMU_OK) st = st_check_covered(f->path, size, hlen, sp, f->n);
    if (st == MOEMU_OK)
        qsort(f->by_name, (size_t)f->n, sizeof *f->by_name, st_cmp_name);
    free(sp);
    return st;
}

/* n bytes of f at offset into out, part of what (named in a message),
 * which ends at byte end. A short read means the file shrank since it was
 * opened. */
static moemu_status_t st_pread(const st_file_t *f, uint64_t offset, void *out, size_t n,
                               const char *what, uint64_t end)
{
    for (size_t got = 0; got < n;) {
        ssize_t r = pread(f->fd, (char *)out + got, n - got, (off_t)(offset + got));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0)
            return moemu_fail(MOEMU_ERR_IO, "cannot read %s of %s: %s", what, f->path,
                              strerror(errno));
        if (r == 0) {
            struct stat sb;
            long long now = fstat(f->fd, &sb) == 0 ? (long long)sb.st_size : -1;
            return moemu_fail(MOEMU_ERR_IO, "%s changed while it was read: %s ends at byte "
                              "%llu, but the file has %lld bytes now (%llu when opened)",
                              f->path, what, (unsigned long long)end, now,
                              (unsigned long long)f->size);
        }
        got += (size_t)r;
    }
    return MOEMU_OK;
}

/* Read and check the header of the file into f. */
static moemu_status_t st_parse(st_file_t *f)
{
    const char *path = f->path;
    uint64_t size = f->size;
    if (size < 8)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: file has %llu bytes, too short for the 8-byte "
                          "safetensors header length",
                          path, (unsigned long long)size);
    uint8_t len[8];
    MOEMU_CHECK(st_pread(f, 0, len, 8, "the header length", 8));
    uint64_t hlen = st_load_u64le(len);
    MOEMU_CHECK(st_check_hlen(path, size, hlen));
    char *head = malloc((size_t)hlen + 1);
    if (!head)
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory for a header of %llu bytes", path,
                          (unsigned long long)hlen);
    moemu_status_t st = st_pread(f, 8, head, (size_t)hlen, "the header", 8 + hlen);
    json_error_t jerr;
    json_t *root = st == MOEMU_OK ? json_loadb(head, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr)
                                  : NULL;
    free(head); /* the tables copy the names */
    if (st != MOEMU_OK) return st;
    if (!root)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "%s: header is not valid JSON: %s (line %d, "
                          "column %d)",
                          path, jerr.text, jerr.line, jerr.column);
    st = json_is_object(root)
            ? st_parse_tensors(f, root, hlen)
            : moemu_fail(MOEMU_ERR_FORMAT, "%s: header JSON is not an object",
                         path);
    json_decref(root);
    return st;
}

moemu_status_t st_open(const char *path, st_file_t **out)
{
    if (!path || !out)
        return moemu_fail(MOEMU_ERR_INVALID, "st_open: NULL %s",
                          path ? "out" : "path");
    *out = NULL;
    st_file_t *f = calloc(1, sizeof *f);
    if (f) f->fd = -1;
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory", path);
    }

    f->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) {
        int e = errno;
        st_close(f);
        return moemu_fail(MOEMU_ERR_IO, "cannot open %s: %s", path,
                          strerror(e));
    }
    struct stat sb;
    if (fstat(f->fd, &sb) != 0) {
        int e = errno;
        st_close(f);
        return moemu_fail(MOEMU_ERR_IO, "cannot stat %s: %s", path,
                          strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        st_close(f);
        return moemu_fail(MOEMU_ERR_IO, "%s: not a regular file", path);
    }
    f->size = (uint64_t)sb.st_size;
    moemu_status_t st = st_parse(f);
    if (st != MOEMU_OK) {
        st_close(f);
        return st;
    }
    *out = f;
    return MOEMU_OK;
}

int st_count(const st_file_t *f) { return f ? f->n : 0; }

const st_tensor_t *st_at(const st_file_t *f, int i)
{
    if (!f || i < 0 || i >= f->n) return NULL;
    return &f->tensors[i];
}

const st_tensor_t *st_find(const st_file_t *f, const char *name)
{
    if (!f || !name || f->n == 0) return NULL;
    st_tensor_t key = {.name = name};
    const st_tensor_t *kp = &key;
    const st_tensor_t **hit = bsearch(&kp, f->by_name, (size_t)f->n,
                                      sizeof *f->by_name, st_cmp_name);
    return hit ? *hit : NULL;
}

int st_index(const st_file_t *f, const char *name)
{
    const st_tensor_t *t = st_find(f, name);
    return t ? (int)(t - f->tensors) : -1;
}

/* Tensor name of f, which must have shape[0..ndim). */
static moemu_status_t st_find_shaped(const st_file_t *f, const char *name, int ndim,
                                     const int64_t *shape, const st_tensor_t **out)
{
    const st_tensor_t *t = st_find(f, name);
    if (!t) return moemu_fail(MOEMU_ERR_FORMAT, "tensor '%s' not found in %s", name, f->path);
    bool same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char have[256], want[256];
        return moemu_fail(MOEMU_ERR_FORMAT, "tensor '%s' in %s has shape %s, expected %s", name,
                          f->path, st_shape_str(have, sizeof have, t->ndim, t->shape),
                          st_shape_str(want, sizeof want, ndim, shape));
    }
    *out = t;
    return MOEMU_OK;
}

/* n bytes of tensor t from byte at of its data. */
static moemu_status_t st_pread_tensor(const st_file_t *f, const st_tensor_t *t, size_t at,
                                      void *out, size_t n)
{
    char what[300];
    snprintf(what, sizeof what, "tensor '%.256s'", t->name);
    return st_pread(f, t->offset + at, out, n, what, t->offset + t->nbytes);
}

moemu_status_t st_read_bytes(const st_file_t *f, const st_tensor_t *t, void *out)
{
    return st_pread_tensor(f, t, 0, out, t->nbytes);
}

/* Little-endian words to the host's order, in place. */
static void st_swap32(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++, b += 4) {
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;
        memcpy(b, &u, 4);
    }
}

/* Tensor name of shape[0..ndim), readable as fp32 (by fn): *t and the
 * size of its elements. */
static moemu_status_t st_find_float(const st_file_t *f, const char *name, int ndim,
                                    const int64_t *shape, const char *fn, const st_tensor_t **t,
                                    size_t *esz)
{
    if (!f || !name || ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: bad arguments (file %p, name %s, "
                          "ndim %d)",
                          fn, (const void *)f, name ? name : "NULL", ndim);
    MOEMU_CHECK(st_find_shaped(f, name, ndim, shape, t));
    st_dtype_t dt = (*t)->dtype;
    if (dt != ST_F32 && dt != ST_F16 && dt != ST_BF16 && dt != ST_F8_E4M3)
        return moemu_fail(MOEMU_ERR_FORMAT,
                          "tensor '%s' in %s has dtype %s; only F32, F16, "
                          "BF16 and F8_E4M3 can be read as fp32",
                          name, f->path, (*t)->dtype_name);
    *esz = dt == ST_F32 ? 4 : dt == ST_F8_E4M3 ? 1 : 2;
    return MOEMU_OK;
}

/* Elements [first, first + n) of t (elements of esz bytes) as fp32 into
 * out[0..n). */
static moemu_status_t st_convert(const st_file_t *f, const st_tensor_t *t, size_t esz,
                                 size_t first, size_t n, float *out)
{
    if (esz == 4) {
        MOEMU_CHECK(st_pread_tensor(f, t, first * 4, out, n * 4));
        if (!ST_HOST_LE) st_swap32(out, n);
        return MOEMU_OK;
    }
    /* 16- and 8-bit values through a buffer of whole elements */
    uint8_t buf[1 << 16];
    for (size_t at = first * esz, end = (first + n) * esz; at < end; at += sizeof buf) {
        size_t m = end - at < sizeof buf ? end - at : sizeof buf;
        MOEMU_CHECK(st_pread_tensor(f, t, at, buf, m));
        float *o = out + (at / esz - first);
        if (esz == 1) {
            for (size_t i = 0; i < m; i++) o[i] = emu_e4m3_to_f32(buf[i]);
            continue;
        }
        bool half = t->dtype == ST_F16;
        for (size_t i = 0; i < m / 2; i++) {
            uint16_t h = (uint16_t)(buf[2 * i] | buf[2 * i + 1] << 8);
            o[i] = half ? emu_f16_to_f32(h) : emu_bf16_to_f32(h);
        }
    }
    return MOEMU_OK;
}

moemu_status_t st_read_f32(const st_file_t *f, const char *name, int ndim,
                           const int64_t *shape, float *out)
{
    const st_tensor_t *t;
    size_t esz;
    MOEMU_CHECK(st_find_float(f, name, ndim, shape, "st_read_f32", &t, &esz));
    if (t->nbytes && !out)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "st_read_f32: NULL output for tensor '%s'", name);
    return st_convert(f, t, esz, 0, t->nbytes / esz, out);
}

moemu_status_t st_read_f32_part(const st_file_t *f, const char *name, int ndim,
                                const int64_t *shape, int64_t first, int64_t n, float *out)
{
    const st_tensor_t *t;
    size_t esz;
    MOEMU_CHECK(st_find_float(f, name, ndim, shape, "st_read_f32_part", &t, &esz));
    int64_t count = (int64_t)(t->nbytes / esz);
    if (first < 0 || n < 0 || first > count - n || (n && !out))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "st_read_f32_part: elements [%lld, %lld) of tensor '%s' of %lld",
                          (long long)first, (long long)(first + n), name, (long long)count);
    return st_convert(f, t, esz, (size_t)first, (size_t)n, out);
}

moemu_status_t st_read_i32(const st_file_t *f, const char *name, int ndim,
                           const int64_t *shape, int32_t *out)
{
    if (!f || !name || ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return moemu_fail(MOEMU_ERR_INVALID, "st_read_i32: bad arguments");
    const st_tensor_t *t;
    MOEMU_CHECK(st_find_shaped(f, name, ndim, shape, &t));
    if (t->dtype != ST_I32)
        return moemu_fail(MOEMU_ERR_FORMAT, "tensor '%s' in %s has dtype %s, expected I32", name,
                          f->path, t->dtype_name);
    MOEMU_CHECK(st_read_bytes(f, t, out));
    if (!ST_HOST_LE) st_swap32(out, t->nbytes / 4);
    return MOEMU_OK;
}

/* Tensor name of shape[0..ndim), U8 (for fn). */
static moemu_status_t st_find_u8(const st_file_t *f, const char *name, int ndim,
                                 const int64_t *shape, const char *fn, const st_tensor_t **t)
{
    if (!f || !name || ndim < 0 || ndim > ST_MAX_DIMS || (ndim && !shape))
        return moemu_fail(MOEMU_ERR_INVALID, "%s: bad arguments", fn);
    MOEMU_CHECK(st_find_shaped(f, name, ndim, shape, t));
    if ((*t)->dtype != ST_U8)
        return moemu_fail(MOEMU_ERR_FORMAT, "tensor '%s' in %s has dtype %s, expected U8", name,
                          f->path, (*t)->dtype_name);
    return MOEMU_OK;
}

moemu_status_t st_read_u8(const st_file_t *f, const char *name, int ndim,
                          const int64_t *shape, uint8_t *out)
{
    if (!out) return moemu_fail(MOEMU_ERR_INVALID, "st_read_u8: bad arguments");
    const st_tensor_t *t;
    MOEMU_CHECK(st_find_u8(f, name, ndim, shape, "st_read_u8", &t));
    return st_read_bytes(f, t, out);
}

moemu_status_t st_read_u8_part(const st_file_t *f, const char *name, int ndim,
                               const int64_t *shape, int64_t first, int64_t n, uint8_t *out)
{
    const st_tensor_t *t;
    MOEMU_CHECK(st_find_u8(f, name, ndim, shape, "st_read_u8_part", &t));
    if (first < 0 || n < 0 || first > (int64_t)t->nbytes - n || (n && !out))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "st_read_u8_part: bytes [%lld, %lld) of tensor '%s' of %zu",
                          (long long)first, (long long)(first + n), name, t->nbytes);
    return st_pread_tensor(f, t, (size_t)first, out, (size_t)n);
}

/* ---- writing */

/* Elements converted per fwrite: large enough that stdio overhead vanishes,
 * small enough not to double the memory of a large tensor. */
#define ST_CHUNK 32768

/* src[i] as dtype stores it, in the low bytes. */
static uint32_t st_encode(const float *src, size_t i, st_dtype_t dtype)
{
    uint32_t u;
    switch (dtype) {
    case ST_F16: return emu_f32_to_f16(src[i]);
    case ST_BF16: return emu_f32_to_bf16(src[i]);
    case ST_F8_E4M3: return emu_f32_to_e4m3(src[i]);
    default: memcpy(&u, &src[i], 4); return u; /* F32, I32: 4 bytes as they are */
    }
}

static bool st_put_tensor(FILE *fp, const st_write_tensor_t *t, size_t count,
                          st_dtype_t dtype, uint8_t *buf)
{
    size_t esz = st_dtype_size(dtype);
    if ((esz == 4 && ST_HOST_LE) || dtype == ST_U8) /* F32, I32; bytes */
        return fwrite(t->data, esz, count, fp) == count;
    for (size_t off = 0; off < count; off += ST_CHUNK) {
        size_t m = count - off < ST_CHUNK ? count - off : ST_CHUNK;
        const float *src = t->data + off;
        for (size_t i = 0; i < m; i++) {
            uint32_t u = st_encode(src, i, dtype);
            for (size_t b = 0; b < esz; b++)
                buf[i * esz + b] = (uint8_t)(u >> (8 * b));
        }
        if (fwrite(buf, esz, m, fp) != m) return false;
    }
    return true;
}

/* Build the header JSON; counts[i] receives tensor i's element count. */
static moemu_status_t st_build_header(const char *path,
                                      const st_write_tensor_t *tensors, int n,
                                      const st_dtype_t *dtypes, size_t *counts,
                                      char **out)
{
    static const char *const names[] = {[ST_F32] = "F32", [ST_F16] = "F16",
                                        [ST_BF16] = "BF16", [ST_I32] = "I32",
                                        [ST_F8_E4M3] = "F8_E4M3", [ST_U8] = "U8"};
    moemu_status_t st = MOEMU_OK;
    json_t *root = json_object(), *meta = json_object();
    if (!root || !meta || json_object_set_new(meta, "format",
                                              json_string("pt")) != 0 ||
        json_object_set(root, "__metadata__", meta) != 0) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "st_write %s: out of memory", path);
        goto out;
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const st_write_tensor_t *t = &tensors[i];
        size_t esz = st_dtype_size(dtypes[i]);
        if (!t->name || t->ndim < 0 || t->ndim > ST_MAX_DIMS) {
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "st_write %s: tensor %d has %s", path, i,
                            t->name ? "a bad ndim" : "no name");
            goto out;
        }
        if (strcmp(t->name, "__metadata__") == 0 ||
            json_object_get(root, t->name)) {
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "st_write %s: tensor %d's name '%s' is %s", path,
                            i, t->name,
                            strcmp(t->name, "__metadata__") == 0
                                ? "reserved"
                                : "a duplicate");
            goto out;
        }
        char sbuf[256];
        uint64_t count = 1, nbytes, end;
        bool overflow = false;
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0) {
                st = moemu_fail(MOEMU_ERR_INVALID,
                                "st_write %s: tensor '%s' has a negative "
                                "dimension in shape %s",
                                path, t->name,
                                st_shape_str(sbuf, sizeof sbuf, t->ndim,
                                             t->shape));
                goto out;
            }
            overflow |= __builtin_mul_overflow(count, (uint64_t)t->shape[d],
                                               &count);
        }
        overflow |= __builtin_mul_overflow(count, (uint64_t)esz, &nbytes);
        overflow |= __builtin_add_overflow(offset, nbytes, &end);
        if (overflow || end > (uint64_t)INT64_MAX || count > SIZE_MAX) {
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "st_write %s: tensor '%s' of shape %s is too "
                            "large",
                            path, t->name,
                            st_shape_str(sbuf, sizeof sbuf, t->ndim,
                                         t->shape));
            goto out;
        }
        if (count && !t->data) {
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "st_write %s: tensor '%s' has NULL data", path,
                            t->name);
            goto out;
        }

        /* The *_new calls steal their value even on failure (and with a
         * NULL container), so one check at the end covers every step. */
        json_t *ent = json_object(), *shape = json_array(),
               *offs = json_array();
        int bad = 0;
        for (int d = 0; d < t->ndim; d++)
            bad |= json_array_append_new(shape, json_integer(t->shape[d]));
        bad |= json_array_append_new(offs, json_integer((json_int_t)offset));
        bad |= json_array_append_new(offs, json_integer((json_int_t)end));
        bad |= json_object_set_new(ent, "dtype", json_string(names[dtypes[i]]));
        bad |= json_object_set_new(ent, "shape", shape);
        bad |= json_object_set_new(ent, "data_offsets", offs);
        if (bad) {
            json_decref(ent);
            st = moemu_fail(MOEMU_ERR_NOMEM, "st_write %s: out of memory",
                            path);
            goto out;
        }
        if (json_object_set_new(root, t->name, ent) != 0) {
            st = moemu_fail(MOEMU_ERR_INVALID,
                            "st_write %s: tensor %d's name is not valid "
                            "UTF-8",
                            path, i);
            goto out;
        }
        counts[i] = (size_t)count;
        offset = end;
    }
    *out = json_dumps(root, JSON_COMPACT);
    if (!*out) st = moemu_fail(MOEMU_ERR_NOMEM, "st_write %s: out of memory",
                               path);
out:
    json_decref(meta);
    json_decref(root);
    return st;
}

/* What st_fill writes: the header built, the tensors' element counts. */
typedef struct {
    const char *path, *header;
    const st_write_tensor_t *tensors;
    const size_t *counts;
    int n;
    const st_dtype_t *dtypes;
    uint8_t *buf; /* ST_CHUNK * 4 bytes of conversion space */
} st_out_t;

static moemu_status_t st_fill(FILE *fp, const void *arg)
{
    const st_out_t *o = arg;
    /* Pad the header with spaces so the data starts 8-byte aligned. */
    size_t hlen = strlen(o->header), padded = (hlen + 7) & ~(size_t)7;
    uint8_t lenbuf[8];
    for (int b = 0; b < 8; b++)
        lenbuf[b] = (uint8_t)((uint64_t)padded >> (8 * b));
    static const char spaces[] = "       "; /* at most 7 are needed */
    errno = 0; /* a short fwrite need not set it */
    bool ok = fwrite(lenbuf, 1, 8, fp) == 8 &&
              fwrite(o->header, 1, hlen, fp) == hlen &&
              fwrite(spaces, 1, padded - hlen, fp) == padded - hlen;
    for (int i = 0; ok && i < o->n; i++)
        ok = !o->counts[i] || st_put_tensor(fp, &o->tensors[i], o->counts[i],
                                            o->dtypes[i], o->buf);
    if (ok) return MOEMU_OK;
    return moemu_fail(MOEMU_ERR_IO, "cannot write %s: %s", o->path,
                      strerror(errno ? errno : EIO));
}

static bool st_writable(st_dtype_t dt)
{
    return dt == ST_F32 || dt == ST_F16 || dt == ST_BF16 || dt == ST_I32 || dt == ST_F8_E4M3 ||
           dt == ST_U8;
}

moemu_status_t st_write_dtypes(const char *path, const st_write_tensor_t *tensors,
                               int n, const st_dtype_t *dtypes)
{
    if (!path || n < 0 || (n > 0 && (!tensors || !dtypes)))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "st_write: bad arguments (path %s, n %d)",
                          path ? path : "NULL", n);
    for (int i = 0; i < n; i++)
        if (!st_writable(dtypes[i]))
            return moemu_fail(MOEMU_ERR_INVALID,
                              "st_write %s: dtype %d cannot be written; use "
                              "ST_F32, ST_F16, ST_BF16, ST_F8_E4M3, ST_I32 or ST_U8",
                              path, (int)dtypes[i]);
    size_t *counts = calloc(n ? (size_t)n : 1, sizeof *counts);
    char *header = NULL;
    uint8_t *buf = malloc((size_t)ST_CHUNK * 4);
    moemu_status_t st = counts && buf ? MOEMU_OK
                                      : moemu_fail(MOEMU_ERR_NOMEM,
                                                   "st_write %s: out of memory",
                                                   path);
    if (st == MOEMU_OK)
        st = st_build_header(path, tensors, n, dtypes, counts, &header);
    if (st == MOEMU_OK) {
        st_out_t o = {path, header, tensors, counts, n, dtypes, buf};
        st = outfile_write(path, st_fill, &o);
    }
    free(buf);
    free(header);
    free(counts);
    return st;
}

moemu_status_t st_write(const char *path, const st_write_tensor_t *tensors,
                        int n, st_dtype_t dtype)
{
    if (!path || n < 0 || (n > 0 && !tensors))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "st_write: bad arguments (path %s, n %d)",
                          path ? path : "NULL", n);
    if (!st_writable(dtype))
        return moemu_fail(MOEMU_ERR_INVALID,
                          "st_write %s: dtype %d cannot be written; use "
                          "ST_F32, ST_F16, ST_BF16, ST_F8_E4M3, ST_I32 or ST_U8",
                          path, (int)dtype);
    st_dtype_t *dts = malloc((n ? (size_t)n : 1) * sizeof *dts);
    if (!dts) return moemu_fail(MOEMU_ERR_NOMEM, "st_write %s: out of memory", path);
    for (int i = 0; i < n; i++) dts[i] = dtype;
    moemu_status_t st = st_write_dtypes(path, tensors, n, dts);
    free(dts);
    return st;
}
