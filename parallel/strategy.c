/* Parallel strategies: the string and JSON grammars, the canonical form and
 * the rules a strategy must obey for a model and a device count
 * (docs/strategies.md lists each rule and its message). */
#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "parallel/par.h"

/* The dimensions of the grammar, in the canonical form's order. */
typedef enum { D_PP, D_DP, D_CP, D_TP, D_SP, D_EP, D_ETP, D_EDP, D__COUNT } dim_t;

static const char *const dim_names[D__COUNT] = {"pp", "dp", "cp", "tp",
                                                "sp", "ep", "etp", "edp"};
static const char *const dim_upper[D__COUNT] = {"PP", "DP", "CP", "TP",
                                                "SP", "EP", "ETP", "EDP"};

/* Stage sizes above this are surely a typo; it keeps sums far from INT_MAX. */
#define STAGE_MAX 1000000

#define STR_PREVIEW 200 /* characters of the user's text quoted in messages */

void par_strategy_default(par_strategy_t *s)
{
    memset(s, 0, sizeof *s);
    s->tp = s->cp = s->dp = s->pp = s->ep = s->etp = 1;
}

static int *dim_field(par_strategy_t *s, dim_t d)
{
    switch (d) {
    case D_PP: return &s->pp;
    case D_DP: return &s->dp;
    case D_CP: return &s->cp;
    case D_TP: return &s->tp;
    case D_EP: return &s->ep;
    case D_ETP: return &s->etp;
    case D_EDP: return &s->edp;
    default: return NULL; /* SP is a flag */
    }
}

static int dim_find(const char *name, size_t n)
{
    for (int d = 0; d < D__COUNT; d++)
        if (strlen(dim_names[d]) == n && strncasecmp(name, dim_names[d], n) == 0) return d;
    return -1;
}

static bool is_sep(char c)
{
    return c == '_' || c == '-' || c == '.' || c == ',' || isspace((unsigned char)c);
}

/* A whole number of digits only (no sign, no blanks) in [0, max]; -1 when
 * it is not one, -2 when it is larger. */
static long parse_whole(const char *p, size_t n, long max)
{
    if (n == 0) return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isdigit((unsigned char)p[i])) return -1;
        if (v <= max) v = v * 10 + (p[i] - '0');
    }
    return v > max ? -2 : v;
}

/* Stage sizes from text[0..n) separated by any of seps into out. what
 * starts the messages. */
static moemu_status_t parse_stage_list(const char *text, size_t n, const char *seps,
                                       const char *what, int *out, int *count)
{
    if (n == 0)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: the stage split is empty (expected e.g. 5,4,4,3)",
                          what);
    int k = 0;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < n && !strchr(seps, text[j])) j++;
        if (k == PAR_MAX_PP)
            return moemu_fail(MOEMU_ERR_INVALID, "%s: the stage split has more than %d stages",
                              what, PAR_MAX_PP);
        long v = parse_whole(text + i, j - i, STAGE_MAX);
        if (v < 0)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "%s: '%.*s' in the stage split is not a whole number in [0, %d]",
                              what, (int)(j - i < STR_PREVIEW ? j - i : STR_PREVIEW), text + i,
                              STAGE_MAX);
        out[k++] = (int)v;
        if (j == n) break;
        i = j + 1;
    }
    *count = k;
    return MOEMU_OK;
}

moemu_status_t par_strategy_set_pp_layers(par_strategy_t *s, const char *list)
{
    int tmp[PAR_MAX_PP], k;
    char what[STR_PREVIEW + 32];
    snprintf(what, sizeof what, "stage split '%.*s'", STR_PREVIEW, list);
    MOEMU_CHECK(parse_stage_list(list, strlen(list), ",/", what, tmp, &k));
    memcpy(s->pp_layers, tmp, (size_t)k * sizeof tmp[0]);
    s->n_pp_layers = k;
    return MOEMU_OK;
}

/* One token <dim><n>, "sp" or "pp<n>=a/b/c". */
static moemu_status_t parse_token(const char *tok, size_t n, const char *what, par_strategy_t *s,
                                  const char **seen)
{
    int len = (int)n;
    size_t a = 0;
    while (a < n && isalpha((unsigned char)tok[a])) a++;
    int d = dim_find(tok, a);
    if (d < 0) {
        if (a == 0)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "%s: '%.*s' is not <dimension><degree> such as tp2", what, len, tok);
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: unknown dimension '%.*s' (expected tp, cp, dp, pp, ep, etp or edp "
                          "with a degree, or the flag sp)",
                          what, (int)a, tok);
    }
    if (seen[d])
        return moemu_fail(MOEMU_ERR_INVALID, "%s: %s is given twice ('%s' and '%.*s')", what,
                          dim_upper[d], seen[d], len, tok);
    const char *deg = tok + a;
    size_t degn = n - a;
    if (d == D_SP && degn == 0) {
        s->sp = true;
        return MOEMU_OK;
    }
    if (degn == 0)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: '%.*s' lacks a degree (e.g. %s2)", what, len, tok,
                          dim_names[d]);
    const char *eq = d == D_PP ? memchr(deg, '=', degn) : NULL;
    if (eq) degn = (size_t)(eq - deg);
    long v = parse_whole(deg, degn, PAR_MAX_DEGREE);
    if (v == -1)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: the degree of '%.*s' is not a whole number", what,
                          len, tok);
    if (v == -2)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: the degree of '%.*s' is more than %d", what, len,
                          tok, PAR_MAX_DEGREE);
    if (v == 0)
        return moemu_fail(MOEMU_ERR_INVALID, "%s: the degree of '%.*s' must be at least 1", what,
                          len, tok);
    if (d == D_SP) s->sp = v >= 2; /* spN: on with N >= 2, off with sp1 */
    else *dim_field(s, (dim_t)d) = (int)v;
    if (eq) {
        const char *list = eq + 1;
        MOEMU_CHECK(parse_stage_list(list, (size_t)(tok + n - list), "/", what, s->pp_layers,
                                     &s->n_pp_layers));
    }
    return MOEMU_OK;
}

static moemu_status_t parse_string(const char *text, par_strategy_t *s)
{
    char what[STR_PREVIEW + 32];
    snprintf(what, sizeof what, "strategy '%.*s'", STR_PREVIEW, text);
    /* the first token of each dimension, to name both when one repeats */
    char first[D__COUNT][64];
    const char *seen[D__COUNT] = {0};
    int tokens = 0;
    for (const char *p = text; *p;) {
        if (is_sep(*p)) {
            p++;
            continue;
        }
        const char *q = p;
        while (*q && !is_sep(*q)) q++;
        MOEMU_CHECK(parse_token(p, (size_t)(q - p), what, s, seen));
        size_t a = 0;
        while (p + a < q && isalpha((unsigned char)p[a])) a++;
        int d = dim_find(p, a);
        snprintf(first[d], sizeof first[d], "%.*s", (int)(q - p), p);
        seen[d] = first[d];
        tokens++;
        p = q;
    }
    if (tokens == 0)
        return moemu_fail(MOEMU_ERR_INVALID,
                          "%s: empty (expected <dimension><degree> tokens such as tp2-ep4, or a "
                          "JSON object)",
                          what);
    return MOEMU_OK;
}

static moemu_status_t json_stages(const emu_json_src_t *src, const json_t *root,
                                  const char *key, par_strategy_t *s)
{
    json_t *v = NULL;
    MOEMU_CHECK(emu_json_arr(src, root, key, EMU_JSON_NULLABLE, &v));
    if (!v) {
        s->n_pp_layers = 0; /* null: the even split */
        return MOEMU_OK;
    }
    size_t n = json_array_size(v);
    if (n == 0) return emu_json_bad(src, key, NULL, "is empty");
    if (n > PAR_MAX_PP)
        return emu_json_bad(src, key, NULL, "has %zu stages, more than %d", n, PAR_MAX_PP);
    char path[64];
    emu_json_src_t in = emu_json_in(src, key, path, sizeof path);
    for (size_t i = 0; i < n; i++)
        MOEMU_CHECK(emu_json_int_at(&in, v, i, 0, STAGE_MAX, &s->pp_layers[i]));
    s->n_pp_layers = (int)n;
    return MOEMU_OK;
}

/* "sp": true, false or a degree (2 or more: on). */
static moemu_status_t json_sp(const emu_json_src_t *src, const json_t *root, const char *key,
                              par_strategy_t *s)
{
    json_t *v = json_object_get(root, key);
    if (json_is_boolean(v)) {
        s->sp = json_is_true(v);
        return MOEMU_OK;
    }
    if (!json_is_integer(v))
        return emu_json_bad(src, key, v, "must be true, false or an integer");
    int x = 0;
    MOEMU_CHECK(emu_json_int(src, root, key, 0, 1, PAR_MAX_DEGREE, &x));
    s->sp = x >= 2;
    return MOEMU_OK;
}

static moemu_status_t parse_json(const char *text, par_strategy_t *s)
{
    const emu_json_src_t src = {.origin = "strategy JSON", .status = MOEMU_ERR_INVALID};
    json_t *root, *v;
    MOEMU_CHECK(emu_json_load_text(&src, text, &root));
    moemu_status_t st = MOEMU_OK;
    bool seen[D__COUNT + 1] = {0}; /* + pp_layers */
    const char *key;
    if (!json_is_object(root)) {
        st = emu_json_bad(&src, NULL, NULL, "must be an object");
        goto done;
    }
    json_object_foreach(root, key, v) {
        int d = dim_find(key, strlen(key));
        bool stages = strcasecmp(key, "pp_layers") == 0;
        if (d < 0 && !stages) {
            st = emu_json_bad(&src, key, NULL, "is unknown (expected tp, cp, dp, pp, ep, etp, "
                                               "edp, sp, pp_layers)");
            goto done;
        }
        int slot = stages ? D__COUNT : d;
        if (seen[slot]) { /* keys differ in case only */
            st = emu_json_bad(&src, key, NULL, "is given twice");
            goto done;
        }
        seen[slot] = true;
        if (stages) st = json_stages(&src, root, key, s);
        else if (d == D_SP) st = json_sp(&src, root, key, s);
        else st = emu_json_int(&src, root, key, 0, 1, PAR_MAX_DEGREE, dim_field(s, (dim_t)d));
        if (st != MOEMU_OK) goto done;
    }
done:
    json_decref(root);
    return st;
}

moemu_status_t par_strategy_parse(const char *text, par_strategy_t *out)
{
    if (!text) return moemu_fail(MOEMU_ERR_INVALID, "strategy: none given");
    par_strategy_t s;
    par_strategy_default(&s);
    const char *p = text;
    while (isspace((unsigned char)*p)) p++;
    MOEMU_CHECK(*p == '{' ? parse_json(p, &s) : parse_string(text, &s));
    *out = s;
    return MOEMU_OK;
}

/* ---- canonical form */

/* Append to buf[0..n) at *len like snprintf, never past the end. */
static void append(char *buf, size_t n, size_t *len, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t n, size_t *len, const char *fmt, ...)
{
    if (*len >= n) return;
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(buf + *len, n - *len, fmt, ap);
    va_end(ap);
    if (w > 0) *len += (size_t)w;
    if (*len >= n) *len = n;
}

static void format_split(const par_strategy_t *s, char *buf, size_t n, size_t *len)
{
    for (int i = 0; i < s->n_pp_layers && i < PAR_MAX_PP; i++)
        append(buf, n, len, "%s%d", i ? "/" : "", s->pp_layers[i]);
}

void par_strategy_format(const par_strategy_t *s, char *buf, size_t n)
{
    if (n == 0) return;
    buf[0] = '\0';
    size_t len = 0;
    const char *sep = "";
    if (s->pp != 1 || s->n_pp_layers > 0) {
        append(buf, n, &len, "pp%d", s->pp);
        if (s->n_pp_layers > 0) {
            append(buf, n, &len, "=");
            format_split(s, buf, n, &len);
        }
        sep = "-";
    }
    bool rest = s->ep != 1 || s->etp != 1 || s->edp != 0;
    if (s->dp != 1) append(buf, n, &len, "%sdp%d", sep, s->dp), sep = "-";
    if (s->cp != 1) append(buf, n, &len, "%scp%d", sep, s->cp), sep = "-";
    /* tp1 only where it says something: before sp, or as the whole string */
    if (s->tp != 1 || s->sp || (!*sep && !rest)) append(buf, n, &len, "%stp%d", sep, s->tp), sep = "-";
    if (s->sp) append(buf, n, &len, "-sp");
    if (s->ep != 1) append(buf, n, &len, "%sep%d", sep, s->ep), sep = "-";
    if (s->etp != 1) append(buf, n, &len, "%setp%d", sep, s->etp), sep = "-";
    if (s->edp != 0) append(buf, n, &len, "%sedp%d", sep, s->edp);
}

static int clamp_int(int64_t v) { return v > INT_MAX ? INT_MAX : (int)v; }

int par_strategy_world(const par_strategy_t *s)
{
    return clamp_int((int64_t)s->pp * s->dp * s->cp * s->tp);
}

int par_strategy_edp(const par_strategy_t *s)
{
    if (s->edp > 0) return s->edp;
    int64_t stage = (int64_t)s->dp * s->cp * s->tp, fold = (int64_t)s->ep * s->etp;
    if (fold <= 0 || stage % fold != 0) return 0;
    return clamp_int(stage / fold);
}

/* ---- validation: every broken rule, "; "-joined */

static void check_stages(const par_strategy_t *s, const par_dims_t *m, moemu_problems_t *p)
{
    if (s->n_pp_layers == 0) {
        if (m && s->pp > m->layers)
            moemu_problem(p, "PP=%d needs at least %d layers, but the model has %d", s->pp, s->pp,
                    m->layers);
        return;
    }
    char split[PAR_STRATEGY_STRLEN];
    size_t len = 0;
    split[0] = '\0';
    format_split(s, split, sizeof split, &len);
    if (s->n_pp_layers != s->pp)
        moemu_problem(p, "the stage split %s has %d stage%s, but PP=%d", split, s->n_pp_layers,
                s->n_pp_layers == 1 ? "" : "s", s->pp);
    char empty[PAR_STRATEGY_STRLEN];
    size_t elen = 0;
    int nempty = 0;
    int64_t sum = 0;
    for (int i = 0; i < s->n_pp_layers; i++) {
        sum += s->pp_layers[i];
        if (s->pp_layers[i] < 1) {
            append(empty, sizeof empty, &elen, "%s%d", nempty ? ", " : "", i);
            nempty++;
        }
    }
    if (nempty)
        moemu_problem(p, "the stage split %s gives stage%s %s no layers", split, nempty == 1 ? "" : "s",
                empty);
    if (m && sum != m->layers)
        moemu_problem(p, "the stage split %s covers %lld layers, but the model has %d", split,
                (long long)sum, m->layers);
}

moemu_status_t par_strategy_validate(const par_strategy_t *s, const par_dims_t *m, int devices)
{
    moemu_problems_t p = {.len = 0};
    p.buf[0] = '\0';
    const int deg[] = {s->pp, s->dp, s->cp, s->tp, s->ep, s->etp};
    const dim_t degd[] = {D_PP, D_DP, D_CP, D_TP, D_EP, D_ETP};
    for (int i = 0; i < 6; i++)
        if (deg[i] < 1) moemu_problem(&p, "%s=%d must be at least 1", dim_upper[degd[i]], deg[i]);
    if (s->edp < 0) moemu_problem(&p, "EDP=%d must be at least 1 (or 0: derived)", s->edp);
    if (s->n_pp_layers < 0 || s->n_pp_layers > PAR_MAX_PP)
        moemu_problem(&p, "the stage split has %d stages, outside [0, %d]", s->n_pp_layers, PAR_MAX_PP);
    if (p.n) goto report; /* the rules below divide by these */

    int64_t world = (int64_t)s->pp * s->dp * s->cp * s->tp;
    if (devices != 0 && world != devices)
        moemu_problem(&p, "PP*DP*CP*TP = %d*%d*%d*%d = %lld device%s, but %d %s given", s->pp, s->dp,
                s->cp, s->tp, (long long)world, world == 1 ? "" : "s", devices,
                devices == 1 ? "is" : "are");

    int64_t stage = (int64_t)s->dp * s->cp * s->tp, fold = (int64_t)s->ep * s->etp;
    char foldtxt[96];
    if (s->etp == 1) snprintf(foldtxt, sizeof foldtxt, "EP=%d", s->ep);
    else snprintf(foldtxt, sizeof foldtxt, "EP*ETP = %d*%d = %lld", s->ep, s->etp,
                  (long long)fold);
    if (fold > stage)
        moemu_problem(&p, "%s needs %lld devices in a pipeline stage, but a stage has DP*CP*TP = %lld",
                foldtxt, (long long)fold, (long long)stage);
    else if (stage % fold != 0)
        moemu_problem(&p, "%s does not divide the DP*CP*TP = %lld devices of a pipeline stage", foldtxt,
                (long long)stage);
    else if (s->edp != 0 && s->edp != stage / fold)
        moemu_problem(&p, "EDP=%d is given, but DP*CP*TP/(EP*ETP) = %lld/%lld = %lld", s->edp,
                (long long)stage, (long long)fold, (long long)(stage / fold));

    if (m) {
        if (m->experts % s->ep != 0)
            moemu_problem(&p, "EP=%d does not divide the %d experts", s->ep, m->experts);
        if (m->expert_ffn % s->etp != 0)
            moemu_problem(&p, "ETP=%d does not divide the experts' intermediate size %d", s->etp,
                    m->expert_ffn);
        if (m->rules) m->rules(m->model, s, &p);
    }
    check_stages(s, m, &p);
    if (s->sp && s->tp == 1) moemu_problem(&p, "SP needs TP > 1, but TP=1");

report:
    if (p.n == 0) return MOEMU_OK;
    char canon[PAR_STRATEGY_STRLEN];
    par_strategy_format(s, canon, sizeof canon);
    return moemu_fail(MOEMU_ERR_INVALID, "strategy %s: %s", canon, p.buf);
}

bool par_moe_replicated(const par_strategy_t *s)
{
    return s->tp > 1 && !s->sp && s->cp == 1 && s->ep * s->etp == s->tp;
}
