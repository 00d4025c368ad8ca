/* Generated and loaded weights. Every tensor lives in one fp32 block. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "engine/models/family.h"
#include "engine/models/safetensors.h"

/* ---- Philox4x32-10 */

static void philox_block(uint32_t out[4], uint64_t seed, uint64_t stream,
                         uint64_t block)
{
    uint32_t c[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                     (uint32_t)(stream >> 32)};
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c[0];
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c[2];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[1] = (uint32_t)p1;
        c[3] = (uint32_t)p0;
        c[0] = n0;
        c[2] = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    memcpy(out, c, sizeof c);
}

uint32_t wts_philox(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t b[4];
    philox_block(b, seed, stream, index / 4);
    return b[index % 4];
}

uint64_t wts_stream(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++)
        h = (h ^ *p) * 0x100000001b3ull;
    return h;
}

/* Norm weights are 1 + 0.25 u, so that a wrong norm shows; the embedding
 * is u; projections are u / sqrt(fan_in), PyTorch's default bound. */
static void init_law(const char *name, int64_t fan_in, double *base, double *scale)
{
    if (strstr(name, "norm")) {
        *base = 1.0;
        *scale = 0.25;
    } else if (strstr(name, "embed_tokens")) {
        *base = 0.0;
        *scale = 1.0;
    } else {
        *base = 0.0;
        *scale = 1.0 / sqrt((double)fan_in);
    }
}

void wts_generate(float *out, uint64_t seed, const char *name, int64_t fan_in,
                  int64_t offset, int64_t n, emu_dtype_t dt)
{
    double base, scale;
    init_law(name, fan_in, &base, &scale);
    uint64_t stream = wts_stream(name);
    float lo = (float)base, sc = (float)scale;
    bool exact = (double)lo == base && (double)sc == scale;
    for (int64_t i = 0; i < n;) {
        uint64_t idx = (uint64_t)(offset + i);
        uint32_t b[4];
        philox_block(b, seed, stream, idx / 4);
        for (unsigned j = (unsigned)(idx % 4); j < 4 && i < n; j++, i++) {
            /* 24 random bits: u in [-1, 1) exactly representable */
            double u = (double)(b[j] >> 8) * 0x1p-23 - 1.0;
            float v = exact ? lo + sc * (float)u : (float)(base + scale * u);
            out[i] = emu_dtype_round(dt, v);
        }
    }
}

/* ---- The tensor list in Hugging Face names */

static int64_t layer_tensor_count(const cfg_model_t *c)
{
    return 7 + 3LL * c->num_local_experts + 3LL * c->num_shared_experts;
}

int wts_mixtral_tensor_count(const wts_t *w)
{
    const cfg_model_t *c = &w->cfg;
    return (int)(2 + (c->tie_word_embeddings ? 0 : 1) +
                 c->num_hidden_layers * layer_tensor_count(c));
}

static void set(wts_tensor_t *t, float *data, int64_t rows, int64_t cols, int ndim)
{
    t->data = data;
    t->ndim = ndim;
    t->shape[0] = rows;
    t->shape[1] = cols;
    t->fan_in = ndim == 2 ? cols : rows;
}

void wts_mixtral_tensor_at(const wts_t *w, int i, wts_tensor_t *t)
{
    const cfg_model_t *c = &w->cfg;
    int64_t d = c->hidden_size, V = c->vocab_size, F = c->intermediate_size;
    int64_t Fs = c->shared_expert_intermediate_size;
    int64_t qd = (int64_t)c->num_attention_heads * c->head_dim;
    int64_t kvd = (int64_t)c->num_key_value_heads * c->head_dim;
    if (i == 0) {
        snprintf(t->name, sizeof t->name, "model.embed_tokens.weight");
        set(t, w->embed, V, d, 2);
        return;
    }
    i--;
    int64_t per = layer_tensor_count(c);
    if (i < c->num_hidden_layers * per) {
        int l = (int)(i / per), j = (int)(i % per);
        const wts_layer_t *L = &w->layers[l];
        char p[48];
        snprintf(p, sizeof p, "model.layers.%d.", l);
        static const char *const fixed[7] = {
            "input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
            "self_attn.v_proj", "self_attn.o_proj", "post_attention_layernorm",
            "block_sparse_moe.gate"};
        if (j < 7) {
            snprintf(t->name, sizeof t->name, "%s%s.weight", p, fixed[j]);
            switch (j) {
            case 0: set(t, L->attn_norm, d, 0, 1); break;
            case 1: set(t, L->wq, qd, d, 2); break;
            case 2: set(t, L->wk, kvd, d, 2); break;
            case 3: set(t, L->wv, kvd, d, 2); break;
            case 4: set(t, L->wo, d, qd, 2); break;
            case 5: set(t, L->moe_norm, d, 0, 1); break;
            default: set(t, L->gate, c->num_local_experts, d, 2); break;
            }
            return;
        }
        j -= 7;
        bool shared = j >= 3 * c->num_local_experts;
        if (shared) j -= 3 * c->num_local_experts;
        int e = j / 3, m = j % 3; /* w1, w2, w3 */
        int64_t f = shared ? Fs : F;
        snprintf(t->name, sizeof t->name, "%sblock_sparse_moe.%s.%d.w%d.weight", p,
                 shared ? "shared_experts" : "experts", e, m + 1);
        float *const *w1 = shared ? L->sw1 : L->w1, *const *w2 = shared ? L->sw2 : L->w2,
                     *const *w3 = shared ? L->sw3 : L->w3;
        if (m == 0) set(t, w1[e], f, d, 2);
        else if (m == 1) set(t, w2[e], d, f, 2);
        else set(t, w3[e], f, d, 2);
        return;
    }
    if (i == c->num_hidden_layers * per) {
        snprintf(t->name, sizeof t->name, "model.norm.weight");
        set(t, w->final_norm, d, 0, 1);
        return;
    }
    snprintf(t->name, sizeof t->name, "lm_head.weight");
    set(t, w->lm_head, V, d, 2);
}

int wts_tensor_count(const wts_t *w) { return family_of(&w->cfg)->tensor_count(w); }

void wts_tensor_at(const wts_t *w, int i, wts_tensor_t *out)
{
    family_of(&w->cfg)->tensor_at(w, i, out);
}

/* ---- Allocation */

static int64_t count_floats(const cfg_model_t *c)
{
    cfg_figures_t f;
    cfg_figures(c, &f);
    return f.total;
}

double wts_host_bytes(const cfg_model_t *cfg) { return 4.0 * (double)count_floats(cfg); }

static double host_available(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    char line[256];
    double kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kb) == 1) break;
    if (f) fclose(f);
    if (kb >= 0) return kb * 1024.0;
    return (double)sysconf(_SC_AVPHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
}

moemu_status_t wts_check_host_memory(double bytes, const char *what)
{
    double avail = host_available();
    if (bytes > avail)
        return moemu_fail(MOEMU_ERR_NOMEM,
                          "%s needs %.2f GB of host memory, but only %.2f GB "
                          "are available (a dry run needs none; or use a "
                          "model with fewer layers)",
                          what, bytes / 1e9, avail / 1e9);
    return MOEMU_OK;
}

/* Lay the tensors out in one block: host memory, or with only_address an
 * address range that is never touched (dry runs). */
static moemu_status_t wts_alloc(wts_t *w, const cfg_model_t *cfg, bool only_address)
{
    memset(w, 0, sizeof *w);
    w->cfg = *cfg;
    int64_t n = count_floats(cfg);
    char what[128];
    snprintf(what, sizeof what, "model %s (%.3g parameters in fp32)", cfg->name,
             (double)n);
    if (!only_address) MOEMU_CHECK(wts_check_host_memory(4.0 * (double)n, what));
    int L = cfg->num_hidden_layers, E = cfg->num_local_experts,
        S = cfg->num_shared_experts;
    if (only_address) {
        void *p = mmap(NULL, sizeof(float) * (size_t)n, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        w->block = p == MAP_FAILED ? NULL : p;
        w->mapped = w->block != NULL;
    } else {
        w->block = malloc(sizeof(float) * (size_t)n);
    }
    w->layers = calloc((size_t)L, sizeof *w->layers);
    w->ptrs = calloc((size_t)L * 3 * (E + S) + 1, sizeof(float *));
    if (!w->block || !w->layers || !w->ptrs) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate %.2f GB for the weights of %s",
                          4.0 * (double)n / 1e9, cfg->name);
    }
    w->n_floats = n;
    int64_t d = cfg->hidden_size, V = cfg->vocab_size, F = cfg->intermediate_size;
    int64_t Fs = cfg->shared_expert_intermediate_size;
    int64_t qd = (int64_t)cfg->num_attention_heads * cfg->head_dim;
    int64_t kvd = (int64_t)cfg->num_key_value_heads * cfg->head_dim;
    float *p = w->block;
#define TAKE(n_) (p += (n_), p - (n_))
    w->embed = TAKE(V * d);
    float **pp = w->ptrs;
    for (int l = 0; l < L; l++) {
        wts_layer_t *ly = &w->layers[l];
        ly->attn_norm = TAKE(d);
        ly->wq = TAKE(qd * d);
        ly->wk = TAKE(kvd * d);
        ly->wv = TAKE(kvd * d);
        ly->wo = TAKE(d * qd);
        ly->moe_norm = TAKE(d);
        ly->gate = TAKE((int64_t)E * d);
        ly->w1 = pp, pp += E;
        ly->w2 = pp, pp += E;
        ly->w3 = pp, pp += E;
        ly->sw1 = pp, pp += S;
        ly->sw2 = pp, pp += S;
        ly->sw3 = pp, pp += S;
        bool silu = cfg->hidden_act == LAYER_ACT_SILU;
        for (int e = 0; e < E; e++) {
            ly->w1[e] = TAKE(F * d);
            ly->w2[e] = TAKE(d * F);
            ly->w3[e] = silu ? TAKE(F * d) : NULL;
        }
        for (int e = 0; e < S; e++) {
            ly->sw1[e] = TAKE(Fs * d);
            ly->sw2[e] = TAKE(d * Fs);
            ly->sw3[e] = silu ? TAKE(Fs * d) : NULL;
        }
    }
    w->final_norm = TAKE(d);
    w->lm_head = cfg->tie_word_embeddings ? w->embed : TAKE(V * d);
#undef TAKE
    if (p - w->block != n) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_INTERNAL, "weight layout holds %lld floats, expected %lld",
                          (long long)(p - w->block), (long long)n);
    }
    return MOEMU_OK;
}

/* Two-matrix (gelu) experts have no w3: the tensor walk skips them. */
static bool tensor_present(const wts_tensor_t *t) { return t->data != NULL; }

/* Generation is split into chunks of at most GEN_CHUNK elements that host
 * threads take in turn; every element is a pure function of its index, so
 * the result never depends on the threads. */
enum { GEN_CHUNK = 1 << 22 };

typedef struct {
    const wts_t *w;
    uint64_t seed;
    int n_tensors;
    atomic_long next; /* next chunk, counted over all tensors */
    long *first;      /* (n_tensors + 1) first chunk of each tensor */
} gen_job_t;

static void *gen_worker(void *arg)
{
    gen_job_t *job = arg;
    for (;;) {
        long c = atomic_fetch_add(&job->next, 1);
        if (c >= job->first[job->n_tensors]) return NULL;
        int i = 0;
        while (job->first[i + 1] <= c) i++;
        wts_tensor_t t;
        wts_tensor_at(job->w, i, &t);
        int64_t cnt = t.shape[0] * (t.ndim == 2 ? t.shape[1] : 1);
        int64_t off = (int64_t)(c - job->first[i]) * GEN_CHUNK;
        int64_t n = cnt - off < GEN_CHUNK ? cnt - off : GEN_CHUNK;
        wts_generate(t.data + off, job->seed, t.name, t.fan_in, off, n, job->w->cfg.dtype);
    }
}

moemu_status_t wts_generate_all(wts_t *w, const cfg_model_t *cfg, uint64_t seed)
{
    MOEMU_CHECK(wts_alloc(w, cfg, false));
    int n = wts_tensor_count(w);
    gen_job_t job = {.w = w, .seed = seed, .n_tensors = n};
    atomic_init(&job.next, 0);
    job.first = calloc((size_t)n + 1, sizeof(long));
    if (!job.first) {
        wts_free(w);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the generation plan");
    }
    for (int i = 0; i < n; i++) {
        wts_tensor_t t;
        wts_tensor_at(w, i, &t);
        int64_t cnt = tensor_present(&t) ? t.shape[0] * (t.ndim == 2 ? t.shape[1] : 1) : 0;
        job.first[i + 1] = job.first[i] + (long)((cnt + GEN_CHUNK - 1) / GEN_CHUNK);
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = cores > 1 ? (int)(cores < 64 ? cores : 64) : 1;
    pthread_t th[64];
    int started = 0;
    for (int i = 1; i < nt; i++)
        if (pthread_create(&th[started], NULL, gen_worker, &job) == 0) started++;
    gen_worker(&job); /* this thread works too: no thread is required */
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    free(job.first);
    return MOEMU_OK;
}

/* The tensors that hold NaN or Inf, named with their counts (the first
 * BAD_NAMED of them). */
enum { BAD_NAMED = 8 };

typedef struct {
    int tensors;
    size_t used;
    char list[768];
} bad_list_t;

static int64_t count_non_finite(const float *x, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += !isfinite(x[i]);
    return bad;
}

static void note_non_finite(bad_list_t *b, const wts_tensor_t *t)
{
    int64_t n = t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
    int64_t bad = count_non_finite(t->data, n);
    if (!bad || b->tensors++ >= BAD_NAMED || b->used >= sizeof b->list) return;
    b->used += (size_t)snprintf(b->list + b->used, sizeof b->list - b->used,
                                "%s%s (%lld of %lld)", b->tensors > 1 ? ", " : "", t->name,
                                (long long)bad, (long long)n);
}

/* One NaN weight turns every logit NaN and every token into 0: no figure
 * of such a checkpoint means anything, so it is an error, not a warning. */
static moemu_status_t refuse_non_finite(const bad_list_t *b, const char *path)
{
    int more = b->tensors - BAD_NAMED;
    char tail[32] = "";
    if (more > 0) snprintf(tail, sizeof tail, " and %d more", more);
    return moemu_fail(MOEMU_ERR_FORMAT,
                      "%s: %d tensor%s NaN or Inf values, which give no meaningful figure: "
                      "%s%s", path, b->tensors, b->tensors == 1 ? " holds" : "s hold",
                      b->list, tail);
}

/* Read every tensor the model has (a missing one is an error), marking
 * in used (by st_at index) the file's tensors read and noting in bad those
 * with non-finite values. */
static moemu_status_t load_tensors(wts_t *w, const st_file_t *f, bool *used, bad_list_t *bad)
{
    int n = wts_tensor_count(w);
    for (int i = 0; i < n; i++) {
        wts_tensor_t t;
        wts_tensor_at(w, i, &t);
        if (!tensor_present(&t)) continue;
        MOEMU_CHECK(st_read_f32(f, t.name, t.ndim, t.shape, t.data));
        used[st_index(f, t.name)] = true;
        note_non_finite(bad, &t);
    }
    return MOEMU_OK;
}

/* Unused tensors an error names before "and N more". */
enum { UNUSED_NAMED = 3 };

/* A tensor the model does not read means the file is another config's
 * checkpoint (more layers, more experts): refused, naming a few. moemu
 * has no warnings yet, so this is the error a --strict would give. */
static moemu_status_t check_all_used(const st_file_t *f, const bool *used,
                                     const cfg_model_t *cfg, const char *path)
{
    char names[UNUSED_NAMED * 136 + 32] = "";
    size_t len = 0;
    int unused = 0;
    for (int i = 0; i < st_count(f); i++) {
        if (used[i] || unused++ >= UNUSED_NAMED) continue;
        len += (size_t)snprintf(names + len, sizeof names - len, "%s'%.128s'",
                                unused > 1 ? ", " : "", st_at(f, i)->name);
    }
    if (!unused) return MOEMU_OK;
    if (unused > UNUSED_NAMED)
        snprintf(names + len, sizeof names - len, " and %d more",
                 unused - UNUSED_NAMED);
    return moemu_fail(MOEMU_ERR_FORMAT, "%s: %d tensor%s that model %s does not use: %s",
                      path, unused, unused == 1 ? "" : "s", cfg->name, names);
}

moemu_status_t wts_load(wts_t *w, const cfg_model_t *cfg, const char *path)
{
    bad_list_t bad = {0};
    st_file_t *f;
    MOEMU_CHECK(st_open(path, &f));
    bool *used = calloc((size_t)st_count(f) + 1, sizeof *used);
    if (!used) {
        st_close(f);
        return moemu_fail(MOEMU_ERR_NOMEM, "%s: out of memory for %d tensor flags", path,
                          st_count(f));
    }
    moemu_status_t st = wts_alloc(w, cfg, false);
    if (st == MOEMU_OK) {
        st = load_tensors(w, f, used, &bad);
        if (st == MOEMU_OK) st = check_all_used(f, used, cfg, path);
        if (st == MOEMU_OK && bad.tensors) st = refuse_non_finite(&bad, path);
        if (st != MOEMU_OK) wts_free(w);
    }
    free(used);
    st_close(f);
    return st;
}

moemu_status_t wts_dump(const wts_t *w, const char *path)
{
    int n = wts_tensor_count(w);
    st_write_tensor_t *ts = calloc((size_t)n, sizeof *ts);
    wts_tensor_t *names = calloc((size_t)n, sizeof *names);
    if (!ts || !names) {
        free(ts);
        free(names);
        return moemu_fail(MOEMU_ERR_NOMEM, "cannot allocate the tensor list");
    }
    int m = 0;
    for (int i = 0; i < n; i++) {
        wts_tensor_at(w, i, &names[m]);
        if (!tensor_present(&names[m])) continue;
        ts[m].name = names[m].name;
        ts[m].ndim = names[m].ndim;
        ts[m].shape[0] = names[m].shape[0];
        ts[m].shape[1] = names[m].shape[1];
        ts[m].data = names[m].data;
        m++;
    }
    st_dtype_t dt = w->cfg.dtype == EMU_DTYPE_FP16   ? ST_F16
                    : w->cfg.dtype == EMU_DTYPE_BF16 ? ST_BF16
                                                     : ST_F32;
    moemu_status_t st = st_write(path, ts, m, dt);
    free(ts);
    free(names);
    return st;
}

moemu_status_t wts_address_only(wts_t *w, const cfg_model_t *cfg)
{
    return wts_alloc(w, cfg, true);
}

void wts_free(wts_t *w)
{
    if (w->mapped) munmap(w->block, sizeof(float) * (size_t)w->n_floats);
    else free(w->block);
    free(w->layers);
    free(w->ptrs);
    memset(w, 0, sizeof *w);
}
