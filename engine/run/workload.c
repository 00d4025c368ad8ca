/* Workloads: prompt lengths and tokens, seeded or read from a file. */
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "engine/models/weights.h"
#include "engine/run/workload.h"

int64_t wl_prompt_tokens(const wl_t *wl) { return wl->start[wl->batch]; }

void wl_free(wl_t *wl)
{
    free(wl->len);
    free(wl->start);
    free(wl->tokens);
    memset(wl, 0, sizeof *wl);
}

static bool parse_int(const char *s, char **end, long *v)
{
    errno = 0;
    *v = strtol(s, end, 10);
    return *end != s && errno == 0 && *v > 0 && *v <= INT32_MAX;
}

/* Lengths from exactly one of prompt_len, lens and range (default 128),
 * or from the tokens file. */
static moemu_status_t make_lengths(wl_t *wl, const wl_opts_t *o)
{
    int given = (o->prompt_len > 0) + (o->lens != NULL) + (o->range != NULL);
    if (given > 1)
        return moemu_fail(MOEMU_ERR_INVALID, "give only one of a prompt length, a list of "
                                             "lengths and a range of lengths");
    if (o->lens) {
        int n = 1;
        for (const char *p = o->lens; *p; p++) n += *p == ',';
        if (o->batch > 0 && o->batch != n)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "prompt lengths '%s' give %d lengths but batch is %d",
                              o->lens, n, o->batch);
        wl->batch = n;
        wl->len = calloc((size_t)n, sizeof(int));
        if (!wl->len)
            return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d lengths (%zu bytes)", n,
                              sizeof(int) * (size_t)n);
        const char *p = o->lens;
        for (int i = 0; i < n; i++) {
            char *end;
            long v;
            if (!parse_int(p, &end, &v) || (*end != ',' && *end != '\0'))
                return moemu_fail(MOEMU_ERR_INVALID,
                                  "prompt lengths '%s': length %d is not a positive "
                                  "integer", o->lens, i + 1);
            wl->len[i] = (int)v;
            p = end + (*end == ',');
        }
        return MOEMU_OK;
    }
    wl->batch = o->batch > 0 ? o->batch : 1;
    wl->len = calloc((size_t)wl->batch, sizeof(int));
    if (!wl->len)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %d lengths (%zu bytes)", wl->batch,
                          sizeof(int) * (size_t)wl->batch);
    if (o->range) {
        char *end;
        long lo, hi;
        if (!parse_int(o->range, &end, &lo) || *end != ':' ||
            !parse_int(end + 1, &end, &hi) || *end != '\0' || lo > hi)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "prompt length range '%s': expected MIN:MAX with "
                              "0 < MIN <= MAX", o->range);
        uint64_t stream = wts_stream("prompt_len");
        for (int b = 0; b < wl->batch; b++) {
            uint64_t r = wts_philox(o->seed, stream, (uint64_t)b);
            wl->len[b] = (int)(lo + (int64_t)((r * (uint64_t)(hi - lo + 1)) >> 32));
        }
        return MOEMU_OK;
    }
    for (int b = 0; b < wl->batch; b++) wl->len[b] = o->prompt_len > 0 ? o->prompt_len : 128;
    return MOEMU_OK;
}

static moemu_status_t read_tokens(wl_t *wl, const wl_opts_t *o, const cfg_model_t *cfg)
{
    char origin[1024];
    snprintf(origin, sizeof origin, "tokens file %s", o->tokens_file);
    const emu_json_src_t src = {.origin = origin};
    if (o->prompt_len > 0 || o->lens || o->range)
        return moemu_fail(MOEMU_ERR_INVALID, "%s sets the prompt lengths: give no length, "
                                             "list or range of lengths with it", origin);
    json_t *root;
    MOEMU_CHECK(emu_json_load_file(&src, o->tokens_file, &root));
    moemu_status_t st = MOEMU_OK;
    size_t n = json_is_array(root) ? json_array_size(root) : 0;
    if (n == 0) {
        st = moemu_fail(MOEMU_ERR_FORMAT, "%s: expected a non-empty JSON list of lists of "
                                          "token ids", origin);
        goto out;
    }
    if (o->batch > 0 && (size_t)o->batch != n) {
        st = moemu_fail(MOEMU_ERR_INVALID, "%s holds %zu sequences but batch is %d", origin,
                        n, o->batch);
        goto out;
    }
    wl->batch = (int)n;
    wl->len = calloc(n, sizeof(int));
    wl->start = calloc(n + 1, sizeof(int64_t));
    if (!wl->len || !wl->start) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the lengths of %zu sequences", n);
        goto out;
    }
    for (size_t b = 0; b < n; b++) {
        json_t *seq = json_array_get(root, b);
        size_t m = json_is_array(seq) ? json_array_size(seq) : 0;
        if (m == 0) {
            st = moemu_fail(MOEMU_ERR_FORMAT, "%s: sequence %zu is not a non-empty list",
                            origin, b);
            goto out;
        }
        wl->len[b] = (int)m;
        wl->start[b + 1] = wl->start[b] + (int64_t)m;
    }
    wl->tokens = malloc(sizeof(int) * (size_t)wl->start[n]);
    if (!wl->tokens) {
        st = moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %lld prompt tokens (%.2f GB)",
                        (long long)wl->start[n], 4e-9 * (double)wl->start[n]);
        goto out;
    }
    for (size_t b = 0; b < n; b++) {
        json_t *seq = json_array_get(root, b);
        for (int i = 0; i < wl->len[b]; i++) {
            json_t *v = json_array_get(seq, (size_t)i);
            json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
            if (id < 0 || id >= cfg->vocab_size) {
                char got[96];
                emu_json_describe(v, got, sizeof got);
                st = moemu_fail(MOEMU_ERR_INVALID,
                                "%s: sequence %zu position %d is not a token id in "
                                "[0, %d), got %s", origin, b, i, cfg->vocab_size, got);
                goto out;
            }
            wl->tokens[wl->start[b] + i] = (int)id;
        }
    }
out:
    json_decref(root);
    return st;
}

/* The positions each sequence needs against the model's (the last
 * generated token is never fed back: len + decode - 1), and max_len. */
static moemu_status_t check_positions(wl_t *wl, int decode, const cfg_model_t *cfg)
{
    for (int b = 0; b < wl->batch; b++) {
        if (wl->len[b] > wl->max_len) wl->max_len = wl->len[b];
        int64_t need = (int64_t)wl->len[b] + (decode > 0 ? decode - 1 : 0);
        if (need > cfg->max_position_embeddings)
            return moemu_fail(MOEMU_ERR_INVALID,
                              "sequence %d needs %lld positions (prompt %d + decode %d - 1) but "
                              "the model's max_position_embeddings is %d",
                              b, (long long)need, wl->len[b], decode,
                              cfg->max_position_embeddings);
    }
    return MOEMU_OK;
}

/* Seeded tokens for the lengths, once the host is known to hold them. */
static moemu_status_t make_tokens(wl_t *wl, const wl_opts_t *o, const cfg_model_t *cfg)
{
    wl->start = calloc((size_t)wl->batch + 1, sizeof(int64_t));
    if (!wl->start)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the offsets of %d sequences",
                          wl->batch);
    for (int b = 0; b < wl->batch; b++) wl->start[b + 1] = wl->start[b] + wl->len[b];
    int64_t n = wl->start[wl->batch];
    double bytes = sizeof(int) * (double)(n + 1);
    emu_need_t need = {0};
    emu_need_add(&need, "prompt tokens", bytes, bytes);
    MOEMU_CHECK(emu_need_check(&need, NULL, "the workload"));
    wl->tokens = malloc((size_t)bytes);
    if (!wl->tokens)
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %lld prompt tokens (%.2f GB)",
                          (long long)n, bytes / 1e9);
    uint64_t stream = wts_stream("tokens");
    for (int64_t i = 0; i < n; i++)
        wl->tokens[i] = (int)(((uint64_t)wts_philox(o->seed, stream, (uint64_t)i) *
                               (uint64_t)cfg->vocab_size) >> 32);
    return MOEMU_OK;
}

moemu_status_t wl_make(wl_t *wl, const wl_opts_t *o, const cfg_model_t *cfg)
{
    memset(wl, 0, sizeof *wl);
    moemu_status_t st;
    if (o->decode < 0)
        return moemu_fail(MOEMU_ERR_INVALID, "decode %d: must be >= 0", o->decode);
    if (o->batch < 0)
        return moemu_fail(MOEMU_ERR_INVALID, "batch %d: must be >= 0 (0: as many as the "
                                             "lengths give)", o->batch);
    wl->decode = o->decode;
    if (o->tokens_file) {
        st = read_tokens(wl, o, cfg);
        if (st == MOEMU_OK) st = check_positions(wl, o->decode, cfg);
    } else {
        /* the lengths against the positions before any token is made */
        st = make_lengths(wl, o);
        if (st == MOEMU_OK) st = check_positions(wl, o->decode, cfg);
        if (st == MOEMU_OK) st = make_tokens(wl, o, cfg);
    }
    if (st != MOEMU_OK) {
        wl_free(wl);
        return st;
    }
    wl->decode = o->decode;
    return MOEMU_OK;
}
