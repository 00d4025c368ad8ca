/* Typed values out of jansson objects, for every loader of the library:
 * one wording of a missing key, a wrong type and a value out of range. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "emu/emu.h"

static moemu_status_t bad_value(const emu_json_src_t *src)
{
    return src->status ? src->status : MOEMU_ERR_INVALID;
}

static moemu_status_t bad_json(const emu_json_src_t *src)
{
    return src->status ? src->status : MOEMU_ERR_FORMAT;
}

/* The fewest digits that read back the same value; a whole real keeps a
 * ".0" so that 2.0 does not read as the integer 2. */
static void fmt_real(char *buf, size_t n, double v)
{
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(buf, n, "%.1f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, n, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) return;
    }
}

void emu_json_describe(const json_t *v, char *buf, size_t n)
{
    switch (json_typeof(v)) {
    case JSON_INTEGER: snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); return;
    case JSON_REAL: fmt_real(buf, n, json_real_value(v)); return;
    case JSON_TRUE: snprintf(buf, n, "true"); return;
    case JSON_FALSE: snprintf(buf, n, "false"); return;
    case JSON_NULL: snprintf(buf, n, "null"); return;
    case JSON_STRING:
    case JSON_OBJECT:
    case JSON_ARRAY: {
        /* shown whole (compact) when short: the offending setting, a
         * rope_scaling type say, is often inside */
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!s) snprintf(buf, n, "%s", json_is_object(v) ? "an object" : "a value");
        else if (strlen(s) < 72) snprintf(buf, n, "%s", s);
        else snprintf(buf, n, "%.68s...", s);
        free(s);
        return;
    }
    }
    snprintf(buf, n, "?");
}

/* "path.key", "path" or "key" into buf. */
static const char *full_name(const emu_json_src_t *src, const char *key, char *buf, size_t n)
{
    const char *path = src->path && src->path[0] ? src->path : NULL;
    if (path && key) snprintf(buf, n, "%s.%s", path, key);
    else snprintf(buf, n, "%s", path ? path : key ? key : "");
    return buf;
}

moemu_status_t emu_json_bad(const emu_json_src_t *src, const char *key, const json_t *v,
                            const char *fmt, ...)
{
    char why[512], name[256], got[96] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    if (v) emu_json_describe(v, got, sizeof got);
    if (!key && !(src->path && src->path[0]))
        return moemu_fail(bad_value(src), "%s: the top level %s%s%s", src->origin, why,
                          v ? ", got " : "", got);
    return moemu_fail(bad_value(src), "%s: %s '%s' %s%s%s", src->origin,
                      src->noun ? src->noun : "key", full_name(src, key, name, sizeof name), why,
                      v ? ", got " : "", got);
}

emu_json_src_t emu_json_in(const emu_json_src_t *src, const char *key, char *buf, size_t n)
{
    emu_json_src_t in = *src;
    in.path = full_name(src, key, buf, n);
    return in;
}

emu_json_src_t emu_json_at(const emu_json_src_t *src, size_t i, char *buf, size_t n)
{
    emu_json_src_t at = *src;
    snprintf(buf, n, "%s[%zu]", src->path ? src->path : "", i);
    at.path = buf;
    return at;
}

static moemu_status_t malformed(const emu_json_src_t *src, const json_error_t *e)
{
    return moemu_fail(bad_json(src), "%s: malformed JSON at line %d, column %d: %s",
                      src->origin, e->line, e->column, e->text);
}

moemu_status_t emu_json_load_text(const emu_json_src_t *src, const char *text, json_t **root)
{
    json_error_t e;
    if (!(*root = json_loads(text, JSON_REJECT_DUPLICATES, &e))) return malformed(src, &e);
    return MOEMU_OK;
}

moemu_status_t emu_json_load_file(const emu_json_src_t *src, const char *path, json_t **root)
{
    *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return moemu_fail(MOEMU_ERR_IO, "cannot open %s: %s", src->origin, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
        fclose(f);
        return moemu_fail(MOEMU_ERR_IO, "cannot read %s: it is a directory", src->origin);
    }
    json_error_t e;
    *root = json_loadf(f, JSON_REJECT_DUPLICATES, &e);
    int err = ferror(f) ? errno : 0;
    fclose(f);
    if (*root) return MOEMU_OK;
    if (err) return moemu_fail(MOEMU_ERR_IO, "cannot read %s: %s", src->origin, strerror(err));
    return malformed(src, &e);
}

moemu_status_t emu_json_get(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    if (v && json_is_null(v) && (flags & EMU_JSON_NULLABLE)) v = NULL;
    if (!v && (flags & EMU_JSON_REQUIRED))
        return emu_json_bad(src, key, NULL, "is required but missing");
    *out = v;
    return MOEMU_OK;
}

/* v (present) as an integer in [lo, hi]. */
static moemu_status_t int_value(const emu_json_src_t *src, const char *key, const json_t *v,
                                int flags, int64_t lo, int64_t hi, int64_t *out)
{
    char got[96];
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < lo) return emu_json_bad(src, key, NULL, "= %" JSON_INTEGER_FORMAT
                                        " is out of range (at least %lld)", x, (long long)lo);
        if (x > hi) return emu_json_bad(src, key, NULL, "= %" JSON_INTEGER_FORMAT
                                        " is out of range (at most %lld)", x, (long long)hi);
        *out = x;
        return MOEMU_OK;
    }
    double x = json_is_real(v) ? json_real_value(v) : NAN;
    if (!(flags & EMU_JSON_WHOLE_REAL) || x != floor(x))
        return emu_json_bad(src, key, v, "must be an integer");
    emu_json_describe(v, got, sizeof got);
    if (x < (double)lo)
        return emu_json_bad(src, key, NULL, "= %s is out of range (at least %lld)", got,
                            (long long)lo);
    /* (double)INT64_MAX is 2^63, which no int64_t holds: refused too */
    if (x > (double)hi || x >= 0x1p63)
        return emu_json_bad(src, key, NULL, "= %s is out of range (at most %lld)", got,
                            (long long)hi);
    *out = (int64_t)x;
    return MOEMU_OK;
}

moemu_status_t emu_json_i64(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, int64_t lo, int64_t hi, int64_t *out)
{
    json_t *v;
    MOEMU_CHECK(emu_json_get(src, obj, key, flags, &v));
    return v ? int_value(src, key, v, flags, lo, hi, out) : MOEMU_OK;
}

moemu_status_t emu_json_int(const emu_json_src_t *src, const json_t *obj, const char *key,
                            int flags, int lo, int hi, int *out)
{
    int64_t x = *out;
    MOEMU_CHECK(emu_json_i64(src, obj, key, flags, lo, hi, &x));
    *out = (int)x;
    return MOEMU_OK;
}

moemu_status_t emu_json_int_at(const emu_json_src_t *src, const json_t *arr, size_t i,
                               int lo, int hi, int *out)
{
    char buf[256];
    emu_json_src_t at = emu_json_at(src, i, buf, sizeof buf);
    json_t *v = json_array_get(arr, i);
    if (!v) return emu_json_bad(&at, NULL, NULL, "is required but missing");
    int64_t x;
    MOEMU_CHECK(int_value(&at, NULL, v, 0, lo, hi, &x));
    *out = (int)x;
    return MOEMU_OK;
}

/* The getters of one type: look key up, check the type, hand it out. */
#define EMU_JSON_TYPED(name, type, is, want, value)                                     \
    moemu_status_t name(const emu_json_src_t *src, const json_t *obj, const char *key,   \
                        int flags, type *out)                                            \
    {                                                                                    \
        json_t *v;                                                                       \
        MOEMU_CHECK(emu_json_get(src, obj, key, flags, &v));                             \
        if (!v) return MOEMU_OK;                                                         \
        if (!is(v)) return emu_json_bad(src, key, v, "must be " want);                   \
        *out = value(v);                                                                 \
        return MOEMU_OK;                                                                 \
    }

#define EMU_JSON_SELF(v) (v)

EMU_JSON_TYPED(emu_json_num, double, json_is_number, "a number", json_number_value)
EMU_JSON_TYPED(emu_json_bool, bool, json_is_boolean, "a boolean (true or false)", json_is_true)
EMU_JSON_TYPED(emu_json_str, const char *, json_is_string, "a string", json_string_value)
EMU_JSON_TYPED(emu_json_obj, json_t *, json_is_object, "an object", EMU_JSON_SELF)
EMU_JSON_TYPED(emu_json_arr, json_t *, json_is_array, "an array", EMU_JSON_SELF)
