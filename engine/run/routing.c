/* Routing sources for dry runs. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "engine/run/runner.h"
#include "engine/models/safetensors.h"
#include "engine/models/weights.h"

/* A uniform double in [0, 1) from two words of a Philox block. */
static double unit_of(const uint32_t *w)
{
    /* 53 bits: as a signed integer the conversion is one instruction */
    return (double)(int64_t)(((uint64_t)w[0] << 21) ^ (w[1] >> 11)) * 0x1p-53;
}

/* Draw i: from words 2i and 2i + 1 of the stream, which block i / 2
 * holds (with draw i ^ 1's). */
static double unit(uint64_t seed, uint64_t stream, uint64_t i)
{
    uint32_t b[4];
    wts_philox_block(b, seed, stream, i / 2);
    return unit_of(b + 2 * (i % 2));
}

/* The shape of a routing record (layers, batch, positions, k) and E. */
static void route_shape(route_src_t *r, const cfg_model_t *cfg, const wl_t *wl)
{
    memset(r, 0, sizeof *r);
    r->L = cfg->num_hidden_layers;
    r->B = wl->batch;
    r->P = runner_route_positions(wl);
    r->k = cfg->num_experts_per_tok;
    r->E = cfg->num_local_experts;
    r->stream = wts_stream("routing");
}

/* The expert of a record's entry: a dropped assignment is -1 - e. */
static int replay_expert(int x) { return x < 0 ? -1 - x : x; }

/* Every token's top-k of a replay record: experts of the model, each at
 * most once (the router never picks one twice), and all k choices or none
 * (a run records a token's k at once; route_choose stands expert j in for
 * a missing choice j, which could repeat one the token has). */
static moemu_status_t replay_check(const route_src_t *r, const char *spec)
{
    size_t tokens = (size_t)r->L * r->B * r->P;
    for (size_t t = 0; t < tokens; t++) {
        const int *rec = r->replay + t * r->k;
        int missing = 0;
        for (int j = 0; j < r->k; j++) missing += rec[j] == INT32_MIN;
        if (missing && missing < r->k)
            return moemu_fail(MOEMU_ERR_FORMAT, "routing '%s': layer %zu, sequence %zu, "
                              "position %zu has %d of its %d choices", spec,
                              t / ((size_t)r->B * r->P), t / r->P % r->B, t % r->P,
                              r->k - missing, r->k);
        for (int j = 0; j < r->k; j++) {
            if (rec[j] == INT32_MIN) continue;
            int e = replay_expert(rec[j]);
            if (e >= r->E)
                return moemu_fail(MOEMU_ERR_FORMAT, "routing '%s': expert %d in a model of %d",
                                  spec, e, r->E);
            for (int q = 0; q < j; q++)
                if (rec[q] != INT32_MIN && replay_expert(rec[q]) == e)
                    return moemu_fail(MOEMU_ERR_FORMAT, "routing '%s': layer %zu, sequence %zu, "
                                      "position %zu chooses expert %d twice", spec,
                                      t / ((size_t)r->B * r->P), t / r->P % r->B, t % r->P, e);
        }
    }
    return MOEMU_OK;
}

/* ---- the memo of route_choose_rows: every TP rank of a replicated MoE
 * routes the same rows, and the draws dominated such dry runs */

#define ROUTE_MEMO_ENTRIES 4
#define ROUTE_MEMO_MIN_ROWS 64 /* fewer rows draw faster than they compare */

struct route_memo {
    pthread_mutex_t lock;
    struct {
        int layer, n, cap;
        int *seq, *pos, *idx;
        uint64_t used;
    } e[ROUTE_MEMO_ENTRIES];
    uint64_t clock;
};

static moemu_status_t memo_open(route_src_t *r)
{
    r->memo = calloc(1, sizeof *r->memo);
    if (!r->memo) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing memo");
    pthread_mutex_init(&r->memo->lock, NULL);
    return MOEMU_OK;
}

static void memo_close(route_memo_t *m)
{
    if (!m) return;
    for (int i = 0; i < ROUTE_MEMO_ENTRIES; i++) {
        free(m->e[i].seq);
        free(m->e[i].idx);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* Copy a remembered draw of these rows into idx: whether there was one. */
static bool memo_get(const route_src_t *r, int layer, const int *seq, const int *pos, int n,
                     int *idx)
{
    route_memo_t *m = r->memo;
    bool hit = false;
    pthread_mutex_lock(&m->lock);
    for (int i = 0; i < ROUTE_MEMO_ENTRIES && !hit; i++) {
        if (m->e[i].layer != layer || m->e[i].n != n || !m->e[i].seq) continue;
        if (memcmp(m->e[i].seq, seq, sizeof(int) * (size_t)n) ||
            memcmp(m->e[i].pos, pos, sizeof(int) * (size_t)n))
            continue;
        memcpy(idx, m->e[i].idx, sizeof(int) * (size_t)n * r->k);
        m->e[i].used = ++m->clock;
        hit = true;
    }
    pthread_mutex_unlock(&m->lock);
    return hit;
}

/* Remember a draw in the least recently used entry (none when out of
 * host memory: the memo only saves time). */
static void memo_put(const route_src_t *r, int layer, const int *seq, const int *pos, int n,
                     const int *idx)
{
    route_memo_t *m = r->memo;
    pthread_mutex_lock(&m->lock);
    int v = 0;
    for (int i = 1; i < ROUTE_MEMO_ENTRIES; i++)
        if (m->e[i].used < m->e[v].used) v = i;
    if (m->e[v].cap < n) {
        free(m->e[v].seq);
        free(m->e[v].idx);
        m->e[v].seq = malloc(sizeof(int) * 2 * (size_t)n);
        m->e[v].idx = malloc(sizeof(int) * (size_t)n * r->k);
        m->e[v].cap = m->e[v].seq && m->e[v].idx ? n : 0;
    }
    if (m->e[v].cap >= n) {
        m->e[v].pos = m->e[v].seq + n;
        memcpy(m->e[v].seq, seq, sizeof(int) * (size_t)n);
        memcpy(m->e[v].pos, pos, sizeof(int) * (size_t)n);
        memcpy(m->e[v].idx, idx, sizeof(int) * (size_t)n * r->k);
        m->e[v].layer = layer;
        m->e[v].n = n;
        m->e[v].used = ++m->clock;
    } else {
        m->e[v].n = -1;
    }
    pthread_mutex_unlock(&m->lock);
}

moemu_status_t route_open(route_src_t *r, const char *spec, const cfg_model_t *cfg,
                          const wl_t *wl, uint64_t seed)
{
    route_shape(r, cfg, wl);
    r->seed = seed;
    if (strcmp(spec, "uniform") == 0) {
        r->kind = ROUTE_UNIFORM;
        return memo_open(r);
    }
    if (strncmp(spec, "zipf:", 5) == 0) {
        char *end;
        r->zipf_s = strtod(spec + 5, &end);
        if (end == spec + 5 || *end || !(r->zipf_s >= 0) || !isfinite(r->zipf_s))
            return moemu_fail(MOEMU_ERR_INVALID, "routing '%s': expected zipf:S with S >= 0",
                              spec);
        r->kind = ROUTE_ZIPF;
        r->cdf = malloc(sizeof(double) * (size_t)r->E);
        if (!r->cdf) return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing table");
        double tot = 0;
        for (int i = 0; i < r->E; i++) r->cdf[i] = (tot += pow(i + 1.0, -r->zipf_s));
        /* popularity ranks to experts: a seeded permutation per layer, so
         * the hot experts differ between layers */
        r->perm = malloc(sizeof(int) * (size_t)r->L * r->E);
        if (!r->perm) {
            route_close(r);
            return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the routing table");
        }
        for (int l = 0; l < r->L; l++) {
            int *perm = r->perm + (size_t)l * r->E;
            uint64_t ps = wts_stream("routing-permutation") ^ (uint64_t)l;
            for (int i = 0; i < r->E; i++) perm[i] = i;
            for (int i = r->E - 1; i > 0; i--) {
                int q = (int)(((uint64_t)wts_philox(seed, ps, (uint64_t)i) * (uint64_t)(i + 1)) >> 32);
                int t = perm[i];
                perm[i] = perm[q];
                perm[q] = t;
            }
        }
        moemu_status_t st = memo_open(r);
        if (st != MOEMU_OK) route_close(r);
        return st;
    }
    if (strncmp(spec, "replay:", 7) == 0) {
        const char *path = spec + 7;
        st_file_t *f;
        MOEMU_CHECK(st_open(path, &f));
        int64_t shape[4] = {r->L, r->B, r->P, r->k};
        size_t n = (size_t)r->L * r->B * r->P * r->k;
        r->kind = ROUTE_REPLAY;
        r->replay = malloc(sizeof(int) * (n + 1));
        moemu_status_t st = r->replay ? st_read_i32(f, "routing", 4, shape, r->replay)
                                      : moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %s", path);
        st_close(f);
        if (st == MOEMU_OK) st = replay_check(r, spec);
        else moemu_fail(st, "routing '%s': %s (replay a record of the same model and "
                            "workload)", spec, moemu_errmsg());
        if (st != MOEMU_OK) route_close(r);
        return st;
    }
    return moemu_fail(MOEMU_ERR_INVALID,
                      "routing '%s': expected uniform, zipf:S or replay:FILE", spec);
}

void route_replay_record(route_src_t *r, int *record, const cfg_model_t *cfg, const wl_t *wl)
{
    route_shape(r, cfg, wl);
    r->kind = ROUTE_REPLAY;
    r->replay = record;
    r->borrowed = true;
}

int *route_record_new(const cfg_model_t *cfg, const wl_t *wl, size_t *count)
{
    size_t n = (size_t)cfg->num_hidden_layers * wl->batch *
               runner_route_positions(wl) * cfg->num_experts_per_tok;
    int *rec = malloc(sizeof(int) * (n + 1));
    for (size_t i = 0; rec && i < n; i++) rec[i] = INT32_MIN;
    *count = n;
    return rec;
}

void route_close(route_src_t *r)
{
    memo_close(r->memo);
    if (!r->borrowed) free(r->replay);
    free(r->cdf);
    free(r->perm);
    memset(r, 0, sizeof *r);
}

/* Uniform choices without walking the experts: draw j is the
 * floor(u * (E - j))-th expert not taken yet, in index order (the same
 * pick as the weighted walk below with every weight 1, in O(k^2)). Draws
 * 2m and 2m + 1 come from block m of the token's: b[m]. */
static void uniform_picks(const uint32_t (*b)[4], int k, int E, int *idx)
{
    int taken[k];
    for (int j = 0; j < k; j++) {
        double u = unit_of(b[j / 2] + 2 * (j % 2));
        int pick = (int)(u * (E - j)); /* < E - j: u < 1 */
        /* taken[] sorted: step over each taken expert at or below pick.
         * Once one is above, the rest are too (pick no longer moves), so
         * every one is looked at without a branch that the random picks
         * would mispredict half of the time; n counts the steps. */
        int n = 0;
        for (int q = 0; q < j; q++) {
            int le = taken[q] <= pick;
            pick += le;
            n += le;
        }
        idx[j] = pick;
        if (j == k - 1) break; /* the last pick is never looked up */
        for (int q = j; q > 0; q--) taken[q] = q > n ? taken[q - 1] : taken[q];
        taken[n] = pick;
    }
}

/* The counters of a token's draws: draw j is word 2 (j % 2) of block
 * (tok * 64 + j) / 2. */
static uint64_t uniform_block(uint64_t tok, int m) { return tok * 32 + (uint64_t)m; }

static uint64_t route_stream(const route_src_t *r, int layer)
{
    return r->stream ^ ((uint64_t)layer << 40);
}

static uint64_t route_token(int b, int pos) { return ((uint64_t)b << 24) ^ (uint64_t)pos; }

static void choose_uniform(const route_src_t *r, uint64_t stream, uint64_t tok, int *idx)
{
    int nb = (r->k + 1) / 2;
    uint32_t b[nb > 0 ? nb : 1][4];
    for (int m = 0; m < nb; m++) wts_philox_block(b[m], r->seed, stream, uniform_block(tok, m));
    uniform_picks((const uint32_t (*)[4])b, r->k, r->E, idx);
}

/* WTS_PHILOX_LANES tokens' uniform choices, their blocks drawn together. */
static void choose_uniform_lanes(const route_src_t *r, uint64_t stream, const int *seq,
                                 const int *pos, int *idx)
{
    enum { W = WTS_PHILOX_LANES };
    int k = r->k, nb = (k + 1) / 2;
    uint32_t b[W][nb > 0 ? nb : 1][4];
    for (int m = 0; m < nb; m++) {
        uint64_t ctr[W];
        uint32_t out[W][4];
        for (int t = 0; t < W; t++) ctr[t] = uniform_block(route_token(seq[t], pos[t]), m);
        wts_philox_blocks(out, r->seed, stream, ctr);
        for (int t = 0; t < W; t++) memcpy(b[t][m], out[t], sizeof out[t]);
    }
    for (int t = 0; t < W; t++)
        uniform_picks((const uint32_t (*)[4])b[t], k, r->E, idx + (size_t)t * k);
}

/* The expert of entry x, choice s of its token: a position the record
 * never routed (it cannot happen for the same workload) falls back to
 * expert s. */
static int replay_entry(const route_src_t *r, int x, int s)
{
    return x == INT32_MIN ? s % r->E : replay_expert(x);
}

/* route_choose's replay for n tokens: a copy, but for the marks. Runs of
 * consecutive positions of one sequence (a prefill's rows) are one span
 * of the record: copied at once, then fixed where an entry is marked. */
static void replay_rows(const route_src_t *r, int layer, const int *seq, const int *pos, int n,
                        int *idx)
{
    int k = r->k;
    const int *base = r->replay + (size_t)layer * r->B * r->P * k;
    for (int j = 0, m; j < n; j += m) {
        for (m = 1; j + m < n && seq[j + m] == seq[j] && pos[j + m] == pos[j] + m; m++) {}
        size_t len = (size_t)m * k;
        int *out = idx + (size_t)j * k, marks = 0;
        memcpy(out, base + ((size_t)seq[j] * r->P + pos[j]) * k, sizeof(int) * len);
        for (size_t a = 0; a < len; a++) marks |= out[a]; /* negative if any is marked */
        for (size_t a = 0; marks < 0 && a < len; a++)
            out[a] = replay_entry(r, out[a], (int)(a % (size_t)k));
    }
}

void route_choose_rows(const route_src_t *r, int layer, const int *seq, const int *pos, int n,
                       int *idx)
{
    if (r->kind == ROUTE_REPLAY) {
        replay_rows(r, layer, seq, pos, n, idx);
        return;
    }
    bool memo = r->memo && n >= ROUTE_MEMO_MIN_ROWS;
    if (memo && memo_get(r, layer, seq, pos, n, idx)) return;
    int j = 0;
    if (r->kind == ROUTE_UNIFORM)
        for (; j + WTS_PHILOX_LANES <= n; j += WTS_PHILOX_LANES)
            choose_uniform_lanes(r, route_stream(r, layer), seq + j, pos + j,
                                 idx + (size_t)j * r->k);
    for (; j < n; j++) route_choose(r, layer, seq[j], pos[j], idx + (size_t)j * r->k);
    if (memo) memo_put(r, layer, seq, pos, n, idx);
}

void route_choose(const route_src_t *r, int layer, int b, int pos, int *idx)
{
    int k = r->k, E = r->E;
    if (r->kind == ROUTE_REPLAY) {
        const int *rec = r->replay + (((size_t)layer * r->B + b) * r->P + pos) * k;
        for (int j = 0; j < k; j++) idx[j] = replay_entry(r, rec[j], j);
        return;
    }
    uint64_t stream = route_stream(r, layer), tok = route_token(b, pos);
    if (r->kind == ROUTE_UNIFORM) {
        choose_uniform(r, stream, tok, idx);
        return;
    }
    for (int j = 0; j < k; j++) {
        double u = unit(r->seed, stream, tok * 64 + (uint64_t)j);
        /* draw among the experts not taken yet */
        double tot = 0;
        for (int i = 0; i < E; i++) {
            bool taken = false;
            for (int q = 0; q < j; q++) taken |= idx[q] == i;
            if (!taken) tot += r->kind == ROUTE_ZIPF ? r->cdf[i] - (i ? r->cdf[i - 1] : 0) : 1.0;
        }
        double x = u * tot, acc = 0;
        int pick = -1;
        for (int i = 0; i < E; i++) {
            bool taken = false;
            for (int q = 0; q < j; q++) taken |= idx[q] == i;
            if (taken) continue;
            pick = i;
            acc += r->kind == ROUTE_ZIPF ? r->cdf[i] - (i ? r->cdf[i - 1] : 0) : 1.0;
            if (x < acc) break;
        }
        idx[j] = pick;
    }
    if (r->kind == ROUTE_ZIPF)
        for (int j = 0; j < k; j++) idx[j] = r->perm[(size_t)layer * E + idx[j]];
}

moemu_status_t route_save(const char *path, const int *route, int L, int B, int P, int k)
{
    st_write_tensor_t t = {.name = "routing", .ndim = 4, .shape = {L, B, P, k},
                           .data = (const float *)(const void *)route};
    return st_write(path, &t, 1, ST_I32);
}
