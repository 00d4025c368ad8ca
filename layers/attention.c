/* Causal grouped-query attention, blockwise with an online softmax (the
 * flash-attention recurrence): a block of queries of all heads that share a
 * kv head is stacked into one matrix, scored against one block of keys at a
 * time, and the running max, sum and output are rescaled as blocks arrive.
 * No buffer grows with the sequence length. */
#include <math.h>
#include <string.h>

#include "layers/layers.h"
#include "layers/layers_impl.h"

enum {
    ATTN_ROWS = 128, /* stacked query rows */
    ATTN_KB = 256,   /* keys a block */
    ATTN_SHARE_FLOPS = 1 << 21, /* a sequence's, worth waking helpers for */
};

/* The first key a query at qp sees: k0, or its window's start. */
static int64_t attn_first_key(int64_t qp, int64_t k0, int W)
{
    return W > 0 && qp - W + 1 > k0 ? qp - W + 1 : k0;
}

/* The sum of max(0, sl x + c) over x in [a, b], sl in {-1, 0, 1}. */
static int64_t attn_ramp_sum(int64_t a, int64_t b, int sl, int64_t c)
{
    if (sl > 0) a = a > -c ? a : -c; /* x + c <= 0 below */
    if (sl < 0) b = b < c ? b : c;   /* c - x <= 0 above */
    if (b < a) return 0;
    int64_t first = sl * a + c, last = sl * b + c;
    if (sl == 0) return first > 0 ? (b - a + 1) * first : 0;
    return (first + last) * (b - a + 1) / 2;
}

int64_t layer_attention_pairs_window(int T, int q0, int k0, int k1, int W)
{
    /* a query at qp sees keys attn_first_key..min(k1-1, qp): the count is
     * linear in qp between the cuts k1 (last stops at k1 - 1) and k0 + W
     * (first starts to move), summed in closed form on each piece */
    int64_t lo = q0, end = (int64_t)q0 + T, n = 0;
    int64_t cut[2] = {k1, W > 0 ? (int64_t)k0 + W : end};
    if (cut[1] < cut[0]) cut[0] = cut[1], cut[1] = k1;
    for (int i = 0; i <= 2 && lo < end; i++) {
        int64_t hi = i < 2 && cut[i] < end ? cut[i] : end;
        if (hi <= lo) continue;
        bool moving_last = lo < k1, moving_first = W > 0 && lo >= (int64_t)k0 + W;
        int sl = (moving_last ? 1 : 0) - (moving_first ? 1 : 0);
        int64_t c = (moving_last ? 0 : (int64_t)k1 - 1) -
                    (moving_first ? 1 - (int64_t)W : (int64_t)k0) + 1;
        n += attn_ramp_sum(lo, hi - 1, sl, c);
        lo = hi;
    }
    return n;
}

int64_t layer_attention_pairs(int T, int q0, int k0, int k1)
{
    return layer_attention_pairs_window(T, q0, k0, k1, 0);
}

/* Whether a key at position p is visible to a query at qp. */
static bool attn_sees(int p, int qp, int W) { return p <= qp && (W <= 0 || p > qp - W); }

/* Scores sr (n) of keys at positions kpos turned into exp(s - mx) where
 * visible, 0 elsewhere; *mx and *sum from the running max m. Returns
 * whether any key was visible. */
static bool attn_row_masked(float *sr, int n, const int *kpos, int qp, int W, float m, float *mx,
                            float *sum)
{
    bool any = false;
    *mx = m;
    for (int j = 0; j < n; j++)
        if (attn_sees(kpos[j], qp, W)) any = true, *mx = sr[j] > *mx ? sr[j] : *mx;
    if (!any) return false;
    *sum = 0.0f;
    for (int j = 0; j < n; j++) {
        sr[j] = attn_sees(kpos[j], qp, W) ? layer_exp(sr[j] - *mx) : 0.0f;
        *sum += sr[j];
    }
    return true;
}

/* One sequence's attention, split in tasks: a kv head's block of queries each. */
typedef struct {
    const layer_attn_seq_t *sq;
    int H, Hkv, hd, vd, QB, blocks; /* blocks of queries */
    float scale;
} attn_job_t;

/* K's rows [0, n) transposed into KT (hd, n): the products' B as (K, N) */
static void attn_transpose(float *KT, const float *K, int n, int hd)
{
    for (int j = 0; j < n; j++)
        for (int d = 0; d < hd; d++) KT[(size_t)d * n + j] = K[(size_t)j * hd + d];
}

/* The scores S (rows, n) of keys kb.. against queries q0.. (row r: query
 * r mod nq) turned into exp(s - max) where visible, 0 elsewhere; the
 * running max m, sum l and output O (rows, vd) rescaled to the new max. */
LAYER_HOT static void attn_softmax_block(const layer_attn_seq_t *sq, float *S, int rows, int n,
                                         int nq, int q0, int kb, float *m, float *l, float *O,
                                         int vd)
{
    int W = sq->window;
    for (int r = 0; r < rows; r++) {
        float *sr = S + (size_t)r * n, mx, sum;
        int qp = q0 + r % nq;
        int vis = qp - kb + 1; /* keys kb + lo..qp visible */
        int lo = (int)(attn_first_key(qp, kb, W) - kb);
        if (vis > n) vis = n;
        bool any = sq->kpos ? attn_row_masked(sr, n, sq->kpos + (kb - sq->k0), qp, W, m[r], &mx,
                                              &sum)
                            : vis > lo;
        if (!any) { /* no key of this block is visible */
            memset(sr, 0, sizeof(float) * n);
            continue;
        }
        if (!sq->kpos) {
            mx = layer_row_max(sr + lo, vis - lo, m[r]);
            for (int j = lo; j < vis; j++) sr[j] = layer_exp(sr[j] - mx);
            sum = layer_row_sum(sr + lo, vis - lo);
            for (int j = 0; j < lo; j++) sr[j] = 0.0f;
            for (int j = vis; j < n; j++) sr[j] = 0.0f;
        }
        /* m[r] = -inf: nothing accumulated yet, corr = 0 */
        float corr = m[r] == -INFINITY ? 0.0f : layer_exp(m[r] - mx);
        l[r] = l[r] * corr + sum;
        m[r] = mx;
        if (corr != 1.0f)
            for (int i = 0; i < vd; i++) O[(size_t)r * vd + i] *= corr;
    }
}

static void attn_task(void *arg, int task)
{
    const attn_job_t *a = arg;
    const layer_attn_seq_t *sq = a->sq;
    float *out = sq->out, *lse = sq->lse;
    const float *q = sq->q;
    int H = a->H, hd = a->hd, vd = a->vd, G = H / a->Hkv, QB = a->QB;
    int q0 = sq->q0, k0 = sq->k0, k1 = sq->k1, W = sq->window;
    int g = task / a->blocks, t0 = task % a->blocks * QB;
    int nq = sq->T - t0 < QB ? sq->T - t0 : QB;
    int rows = G * nq; /* stacked: (head in group, query) */
    /* on the stack: at most 256 x (hd + vd + 258) + hd x 256 floats, no
     * failure path */
    float buf[(size_t)rows * (hd + vd) + (size_t)rows * ATTN_KB + 2 * (size_t)rows +
              (size_t)hd * ATTN_KB];
    float *Q = buf, *O = Q + (size_t)rows * hd, *S = O + (size_t)rows * vd;
    float *m = S + (size_t)rows * ATTN_KB, *l = m + rows, *KT = l + rows;
    const float *K = sq->kc + (size_t)g * sq->ldc * hd, *V = sq->vc + (size_t)g * sq->ldc * vd;

    for (int j = 0; j < G; j++)
        for (int i = 0; i < nq; i++)
            memcpy(Q + ((size_t)j * nq + i) * hd, q + ((size_t)(t0 + i) * H + g * G + j) * hd,
                   sizeof(float) * hd);
    memset(O, 0, sizeof(float) * rows * vd);
    for (int r = 0; r < rows; r++) m[r] = -INFINITY, l[r] = 0.0f;
    int qlast = q0 + t0 + nq - 1;
    /* positions in any order: every row is read, masked by them */
    int kend = sq->kpos || qlast + 1 >= k1 ? k1 : qlast + 1;
    int kfirst = sq->kpos ? k0 : (int)attn_first_key(q0 + t0, k0, W);
    for (int kb = kfirst; kb < kend; kb += ATTN_KB) {
        int nk_b = kend - kb < ATTN_KB ? kend - kb : ATTN_KB;
        attn_transpose(KT, K + (size_t)(kb - k0) * hd, nk_b, hd);
        layer_inorder_sgemm(rows, nk_b, hd, a->scale, Q, hd, KT, nk_b, 0.0f, S, nk_b);
        attn_softmax_block(sq, S, rows, nk_b, nq, q0 + t0, kb, m, l, O, vd);
        layer_inorder_sgemm(rows, vd, nk_b, 1.0f, S, nk_b, V + (size_t)(kb - k0) * vd, vd, 1.0f,
                            O, vd);
    }
    for (int j = 0; j < G; j++)
        for (int i = 0; i < nq; i++) {
            int r = j * nq + i;
            size_t t = (size_t)(t0 + i), h = (size_t)g * G + j;
            float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
            float *dst = out + (t * H + h) * vd;
            for (int e = 0; e < vd; e++) dst[e] = O[(size_t)r * vd + e] * inv;
            if (lse) lse[t * H + h] = l[r] > 0.0f ? m[r] + logf(l[r]) : -INFINITY;
        }
}

/* A sequence's tasks, spread over the device's threads when they carry
 * more than waking a helper costs (tens of microseconds). Each writes its
 * own outputs, whose sums do not depend on who ran it. */
static void attn_compute(const layer_attn_seq_t *sq, int H, int Hkv, int hd, int vd, float scale)
{
    if (sq->T == 0) return;
    double flops = 2.0 * (hd + vd) * H *
                   (double)layer_attention_pairs_window(sq->T, sq->q0, sq->k0, sq->k1, sq->window);
    int G = H / Hkv, QB = ATTN_ROWS / G > 0 ? ATTN_ROWS / G : 1; /* queries per block */
    if (QB > sq->T) QB = sq->T;
    attn_job_t job = {sq, H, Hkv, hd, vd, QB, (sq->T + QB - 1) / QB, scale};
    layer_par_for(Hkv * job.blocks, flops >= ATTN_SHARE_FLOPS ? layer_threads() - 1 : 0,
                  attn_task, &job);
}

/* The work of one sequence: 2 (hd + vd) FLOPs per visible pair and head
 * (QK^T and PV); q, out (in the dtype) and the keys and values up to the
 * last query (in the cache's) read once. Its products *g as a
 * FlashAttention kernel tiles them: per head, the queries against the
 * keys each sees on the mean; one query (decode) per key/value head,
 * with the query heads that share it as its rows, as FlashDecoding and
 * FlashMLA pack them. */
static void attn_work(const layer_ctx_t *c, const layer_attn_seq_t *s, int H, int Hkv, int hd,
                      int vd, double *flops, double *bytes, emu_gemm_t *g)
{
    int64_t pairs = layer_attention_pairs_window(s->T, s->q0, s->k0, s->k1, s->window);
    int kend = s->q0 + s->T < s->k1 ? s->q0 + s->T : s->k1; /* later keys: unseen */
    int kfirst = (int)attn_first_key(s->q0, s->k0, s->window); /* earlier keys: outside */
    double nk = kend > kfirst ? kend - kfirst : 0;
    if (s->kpos) { /* rows in any order: the visible ones, read where they are */
        pairs = 0;
        for (int t = 0; t < s->T; t++)
            for (int j = 0; j < s->k1 - s->k0; j++) pairs += attn_sees(s->kpos[j], s->q0 + t, s->window);
        nk = (double)pairs / (s->T > 0 ? s->T : 1);
    }
    *flops += 2.0 * (hd + vd) * H * (double)pairs;
    *bytes += (double)emu_dtype_size(c->dtype) * s->T * H * (hd + vd) +
              layer_kvsize(c) * nk * Hkv * (hd + vd);
    int64_t seen = s->T > 0 ? (pairs + s->T - 1) / s->T : 0;
    bool packed = s->T == 1 && Hkv > 0;
    *g = (emu_gemm_t){.m = packed ? H / Hkv : s->T, .n = seen, .k = hd + vd,
                      .count = packed ? Hkv : H};
}

/* The kernel of n sequences, charged by its products' shapes. */
static void attn_charge(layer_ctx_t *c, const layer_attn_seq_t *s, int n, int H, int Hkv, int hd,
                        int vd)
{
    double flops = 0, bytes = 0;
    emu_gemm_t few[64] = {{0}}, one, *g = n <= 64 ? few : malloc(sizeof *g * (size_t)n);
    for (int i = 0; i < n; i++) attn_work(c, &s[i], H, Hkv, hd, vd, &flops, &bytes, g ? &g[i] : &one);
    /* without room for the shapes, which only refine the time: the plain charge */
    if (g) emu_charge_gemm(c->dev, EMU_KERNEL_ATTN, g, n, flops, bytes);
    else emu_charge(c->dev, EMU_KERNEL_ATTN, flops, bytes);
    if (g != few) free(g);
}

void layer_attention_batch_v(layer_ctx_t *c, const layer_attn_seq_t *s, int n, int H, int Hkv,
                             int hd, int vd, float scale)
{
    if (n > 0) attn_charge(c, s, n, H, Hkv, hd, vd);
    if (c->math)
        for (int i = 0; i < n; i++) attn_compute(&s[i], H, Hkv, hd, vd, scale);
}

void layer_attention_batch(layer_ctx_t *c, const layer_attn_seq_t *s, int n, int H, int Hkv,
                           int hd, float scale)
{
    layer_attention_batch_v(c, s, n, H, Hkv, hd, hd, scale);
}

void layer_attention_sinks(layer_ctx_t *c, float *out, const float *lse, const float *sinks,
                           int T, int H, int vd)
{
    emu_charge(c->dev, EMU_KERNEL_ATTN, 4.0 * T * H + (double)T * H * vd,
               (double)emu_dtype_size(c->dtype) * (2.0 * T * H * vd + H) + 4.0 * T * H);
    if (!c->math) return;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < H; h++) {
            float f = 1.0f / (1.0f + layer_exp(sinks[h] - lse[(size_t)t * H + h]));
            float *o = out + ((size_t)t * H + h) * vd;
            for (int e = 0; e < vd; e++) o[e] *= f;
        }
}

void layer_attention(layer_ctx_t *c, float *out, float *lse, const float *q, const float *kc,
                     const float *vc, int T, int q0, int k0, int k1, int H, int Hkv, int hd,
                     int ldc)
{
    layer_attn_seq_t s = {.out = out, .lse = lse, .q = q, .kc = kc, .vc = vc, .T = T,
                          .q0 = q0, .k0 = k0, .k1 = k1, .ldc = ldc};
    layer_attention_batch(c, &s, 1, H, Hkv, hd, 1.0f / sqrtf((float)hd));
}
