/* The weights' generator: Philox4x32-10 over counters, a tensor's law
 * (init_law) and the rounding to the emulated dtype, an element at a time
 * (the reference) or many blocks at once on the CPU's vector kernels,
 * which give the same bits. */
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "engine/models/weights.h"

/* ---- Philox4x32-10 */

/* Its round multipliers and key increments (Salmon et al., SC 2011), for
 * the reference and every kernel. */
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox_block(uint32_t out[4], uint64_t seed, uint64_t stream,
                         uint64_t block)
{
    uint32_t c[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream,
                     (uint32_t)(stream >> 32)};
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c[0];
        uint64_t p1 = (uint64_t)PHILOX_M1 * c[2];
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[1] = (uint32_t)p1;
        c[3] = (uint32_t)p0;
        c[0] = n0;
        c[2] = n2;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    memcpy(out, c, sizeof c);
}

void wts_philox_block(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t block)
{
    philox_block(out, seed, stream, block);
}

/* philox_block's rounds for WTS_PHILOX_LANES counters side by side, one
 * array per word so that the compiler puts the lanes in vector registers:
 * a block's rounds wait on each other's products, independent ones do
 * not (2 to 3 times the blocks per second of one at a time). */
static void philox_blocks_c(uint32_t out[WTS_PHILOX_LANES][4], uint64_t seed, uint64_t stream,
                            const uint64_t block[WTS_PHILOX_LANES])
{
    enum { W = WTS_PHILOX_LANES };
    uint32_t c0[W], c1[W], c2[W], c3[W];
    for (int i = 0; i < W; i++) {
        c0[i] = (uint32_t)block[i];
        c1[i] = (uint32_t)(block[i] >> 32);
        c2[i] = (uint32_t)stream;
        c3[i] = (uint32_t)(stream >> 32);
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        for (int i = 0; i < W; i++) {
            uint64_t p0 = (uint64_t)PHILOX_M0 * c0[i];
            uint64_t p1 = (uint64_t)PHILOX_M1 * c2[i];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[i] ^ k0;
            uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[i] ^ k1;
            c1[i] = (uint32_t)p1;
            c3[i] = (uint32_t)p0;
            c0[i] = n0;
            c2[i] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (int i = 0; i < W; i++) {
        out[i][0] = c0[i];
        out[i][1] = c1[i];
        out[i][2] = c2[i];
        out[i][3] = c3[i];
    }
}

uint32_t wts_philox(uint64_t seed, uint64_t stream, uint64_t index)
{
    uint32_t b[4];
    philox_block(b, seed, stream, index / 4);
    return b[index % 4];
}

uint64_t wts_stream(const char *name) { return emu_fnv1a(EMU_FNV1A_INIT, name, strlen(name)); }

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

/* A tensor's law as the generator applies it: in float when base and
 * scale are floats, else in double. */
typedef struct {
    double base, scale, scale23;
    float lo, sc, sc23;
    bool exact;
} law_t;

static law_t law_of(const char *name, int64_t fan_in)
{
    law_t l;
    init_law(name, fan_in, &l.base, &l.scale);
    l.lo = (float)l.base;
    l.sc = (float)l.scale;
    l.exact = (double)l.lo == l.base && (double)l.sc == l.scale;
    /* the vector kernels' scales: u is j 2^-23 for an integer j, so scale
     * times u is scale23 times j, the same product and rounding */
    l.scale23 = l.scale * 0x1p-23;
    l.sc23 = l.sc * 0x1p-23f;
    return l;
}

/* The element of a Philox word: its top 24 bits as u in [-1, 1), which a
 * float holds exactly, through the law. The vector kernels do these
 * operations in this order, unfused. */
static float law_apply(const law_t *l, uint32_t word)
{
    double u = (double)(word >> 8) * 0x1p-23 - 1.0;
    return l->exact ? l->lo + l->sc * (float)u : (float)(l->base + l->scale * u);
}

/* The reference: an element at a time. */
static void gen_scalar(float *out, uint64_t seed, uint64_t stream, const law_t *l,
                       int64_t offset, int64_t n, emu_dtype_t dt)
{
    for (int64_t i = 0; i < n;) {
        uint64_t idx = (uint64_t)(offset + i);
        uint32_t b[4];
        philox_block(b, seed, stream, idx / 4);
        for (unsigned j = (unsigned)(idx % 4); j < 4 && i < n; j++, i++)
            out[i] = emu_dtype_round(dt, law_apply(l, b[j]));
    }
}

/* ---- Kernels of whole blocks: out[4 i + j] is law_apply of word j of
 * block `block + i`, i < nb, unrounded. They may write up to GEN_GROUP
 * blocks past nb (out has room: the tile is whole groups). */
enum { GEN_GROUP = 64, GEN_TILE = 1024 }; /* blocks of the widest kernel; floats per tile */
typedef void gen_blocks_fn(float *out, uint64_t seed, uint64_t stream, uint64_t block, int64_t nb,
                           const law_t *l);

static void blocks_c(float *out, uint64_t seed, uint64_t stream, uint64_t block, int64_t nb,
                     const law_t *l)
{
    enum { W = WTS_PHILOX_LANES };
    for (int64_t b = 0; b < nb; b += W) {
        uint64_t ctr[W];
        uint32_t w[W][4];
        for (int i = 0; i < W; i++) ctr[i] = block + (uint64_t)(b + i);
        philox_blocks_c(w, seed, stream, ctr);
        for (int i = 0; i < 4 * W; i++) out[4 * b + i] = law_apply(l, w[i / 4][i % 4]);
    }
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>

/* The counters of blocks block .. block + lanes - 1: low and high words. */
static void counters(uint32_t *lo, uint32_t *hi, uint64_t block, int lanes)
{
    for (int i = 0; i < lanes; i++) {
        uint64_t x = block + (uint64_t)i;
        lo[i] = (uint32_t)x;
        hi[i] = (uint32_t)(x >> 32);
    }
}

#define AVX2 __attribute__((target("avx2")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
/* Explicit round-to-nearest, as the default: these never fuse into FMAs. */
#define RN (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

/* Philox's round keys of a seed: word 0's, then word 1's. */
static void round_keys(uint32_t key[2][10], uint64_t seed)
{
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++, k0 += PHILOX_W0, k1 += PHILOX_W1) {
        key[0][r] = k0;
        key[1][r] = k1;
    }
}

/* philox_block's rounds for 8 vectors of 8 blocks, a block per 64-bit
 * lane: x holds words 0 and 1 (low, high), y words 2 and 3. One product
 * gives a word's both halves; the xors go into the high halves, and a
 * shuffle swaps them into place (a rotation would too, but on the ports
 * of the products: 8% slower). Eight vectors side by side, as a
 * block's rounds wait on each other (2 to 3 times the blocks per second
 * of one vector at a time). */
AVX512 static void philox_avx512(__m512i x[8], __m512i y[8], const uint32_t key[2][10])
{
    const __m512i m0 = _mm512_set1_epi64(PHILOX_M0), m1 = _mm512_set1_epi64(PHILOX_M1);
#pragma GCC unroll 10
    for (int r = 0; r < 10; r++) {
        __m512i k0 = _mm512_set1_epi32((int)key[0][r]), k1 = _mm512_set1_epi32((int)key[1][r]);
#pragma GCC unroll 8
        for (int g = 0; g < 8; g++) {
            __m512i p0 = _mm512_mul_epu32(x[g], m0), p1 = _mm512_mul_epu32(y[g], m1);
            /* high halves: hi1 ^ word 1 ^ k0 and hi0 ^ word 3 ^ k1 */
            p1 = _mm512_mask_ternarylogic_epi32(p1, 0xAAAA, x[g], k0, 0x96);
            p0 = _mm512_mask_ternarylogic_epi32(p0, 0xAAAA, y[g], k1, 0x96);
            x[g] = _mm512_shuffle_epi32(p1, _MM_PERM_CDAB);
            y[g] = _mm512_shuffle_epi32(p0, _MM_PERM_CDAB);
        }
    }
}

/* The double law of 8 words' j. */
AVX512 static __m256 law_double_avx512(__m256i j, const law_t *l)
{
    __m512d v = _mm512_mul_round_pd(_mm512_cvtepi32_pd(j), _mm512_set1_pd(l->scale23), RN);
    return _mm512_cvt_roundpd_ps(_mm512_add_round_pd(_mm512_set1_pd(l->base), v, RN), RN);
}

/* law_apply of 16 words, u as j 2^-23 (law_of). */
AVX512 static __m512 law_avx512(__m512i w, const law_t *l)
{
    __m512i j = _mm512_sub_epi32(_mm512_srli_epi32(w, 8), _mm512_set1_epi32(1 << 23));
    if (l->exact)
        return _mm512_add_round_ps(
            _mm512_set1_ps(l->lo),
            _mm512_mul_round_ps(_mm512_set1_ps(l->sc23), _mm512_cvtepi32_ps(j), RN), RN);
    __m256 f0 = law_double_avx512(_mm512_castsi512_si256(j), l),
           f1 = law_double_avx512(_mm512_extracti64x4_epi64(j, 1), l);
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(f0)),
                                               _mm256_castps_pd(f1), 1));
}

/* 16 blocks (x, y: 0..7; x2, y2: 8..15), 4 each in o[q] in order */
AVX512 static void interleave_avx512(__m512i x, __m512i y, __m512i x2, __m512i y2, __m512i o[4])
{
    const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0),
                  last = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    o[0] = _mm512_permutex2var_epi64(x, first, y);
    o[1] = _mm512_permutex2var_epi64(x, last, y);
    o[2] = _mm512_permutex2var_epi64(x2, first, y2);
    o[3] = _mm512_permutex2var_epi64(x2, last, y2);
}

AVX512 static void blocks_avx512(float *out, uint64_t seed, uint64_t stream, uint64_t block,
                                 int64_t nb, const law_t *l)
{
    uint32_t key[2][10];
    round_keys(key, seed);
    const __m512i lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0),
                  ys = _mm512_set1_epi64((long long)stream);
    for (int64_t b = 0; b < nb; b += 64, out += 256) {
        __m512i x[8], y[8], o[4];
        for (int g = 0; g < 8; g++) {
            x[g] = _mm512_add_epi64(_mm512_set1_epi64((long long)(block + (uint64_t)(b + 8 * g))),
                                    lane);
            y[g] = ys;
        }
        philox_avx512(x, y, key);
        for (int h = 0; h < 4; h++) {
            interleave_avx512(x[2 * h], y[2 * h], x[2 * h + 1], y[2 * h + 1], o);
            for (int q = 0; q < 4; q++)
                _mm512_storeu_ps(out + 64 * h + 16 * q, law_avx512(o[q], l));
        }
    }
}

AVX2 static inline void mul_avx2(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
}

/* philox_block's rounds for n sets of 8 blocks, a block per lane: c[s][j]
 * holds set s's word j. Sets side by side, as a block's rounds wait on
 * each other. */
AVX2 __attribute__((always_inline)) static inline void philox_avx2(__m256i (*c)[4], int n,
                                                                  uint64_t seed)
{
    __m256i k0 = _mm256_set1_epi32((int)(uint32_t)seed),
            k1 = _mm256_set1_epi32((int)(uint32_t)(seed >> 32));
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1),
                  w0 = _mm256_set1_epi32((int)PHILOX_W0), w1 = _mm256_set1_epi32((int)PHILOX_W1);
    for (int r = 0; r < 10; r++) {
#pragma GCC unroll 2
        for (int s = 0; s < n; s++) {
            __m256i hi0, lo0, hi1, lo1;
            mul_avx2(c[s][0], m0, &hi0, &lo0);
            mul_avx2(c[s][2], m1, &hi1, &lo1);
            c[s][0] = _mm256_xor_si256(_mm256_xor_si256(hi1, c[s][1]), k0);
            c[s][2] = _mm256_xor_si256(_mm256_xor_si256(hi0, c[s][3]), k1);
            c[s][1] = lo1;
            c[s][3] = lo0;
        }
        k0 = _mm256_add_epi32(k0, w0);
        k1 = _mm256_add_epi32(k1, w1);
    }
}

/* The double law of 4 words' j. */
AVX2 static __m128 law_double_avx2(__m128i j, const law_t *l)
{
    __m256d v = _mm256_mul_pd(_mm256_cvtepi32_pd(j), _mm256_set1_pd(l->scale23));
    return _mm256_cvtpd_ps(_mm256_add_pd(_mm256_set1_pd(l->base), v));
}

/* law_apply of 8 words, u as j 2^-23 (law_of; no FMA in this target:
 * nothing fuses). */
AVX2 static __m256 law_avx2(__m256i w, const law_t *l)
{
    __m256i j = _mm256_sub_epi32(_mm256_srli_epi32(w, 8), _mm256_set1_epi32(1 << 23));
    if (l->exact)
        return _mm256_add_ps(_mm256_set1_ps(l->lo),
                             _mm256_mul_ps(_mm256_set1_ps(l->sc23), _mm256_cvtepi32_ps(j)));
    __m128 f0 = law_double_avx2(_mm256_castsi256_si128(j), l),
           f1 = law_double_avx2(_mm256_extracti128_si256(j, 1), l);
    return _mm256_insertf128_ps(_mm256_castps128_ps256(f0), f1, 1);
}

/* c[j] holds word j of blocks 0..7; o[q] gets blocks 2q, 2q + 1. */
AVX2 static void transpose_avx2(const __m256i c[4], __m256i o[4])
{
    __m256i t0 = _mm256_unpacklo_epi32(c[0], c[1]), t1 = _mm256_unpackhi_epi32(c[0], c[1]),
            t2 = _mm256_unpacklo_epi32(c[2], c[3]), t3 = _mm256_unpackhi_epi32(c[2], c[3]);
    /* u[r]'s 128-bit lane q: block 4q + r */
    __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2),
            u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
    o[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
    o[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
    o[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
    o[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
}

/* The 8 n blocks of counters lo, hi (low and high words), n at most 2:
 * o[q] gets blocks 2q, 2q + 1. */
AVX2 __attribute__((always_inline)) static inline void philox8_avx2(const uint32_t *lo,
                                                                   const uint32_t *hi, int n,
                                                                   uint64_t seed, uint64_t stream,
                                                                   __m256i (*o)[4])
{
    __m256i c[2][4];
    for (int s = 0; s < n; s++) {
        c[s][0] = _mm256_loadu_si256((const __m256i *)(lo + 8 * s));
        c[s][1] = _mm256_loadu_si256((const __m256i *)(hi + 8 * s));
        c[s][2] = _mm256_set1_epi32((int)(uint32_t)stream);
        c[s][3] = _mm256_set1_epi32((int)(uint32_t)(stream >> 32));
    }
    philox_avx2(c, n, seed);
    for (int s = 0; s < n; s++) transpose_avx2(c[s], o[s]);
}

AVX2 static void blocks_avx2(float *out, uint64_t seed, uint64_t stream, uint64_t block,
                             int64_t nb, const law_t *l)
{
    for (int64_t b = 0; b < nb; b += 16, out += 64) {
        uint32_t lo[16], hi[16];
        __m256i o[2][4];
        counters(lo, hi, block + (uint64_t)b, 16);
        philox8_avx2(lo, hi, 2, seed, stream, o);
        for (int q = 0; q < 8; q++) _mm256_storeu_ps(out + 8 * q, law_avx2(o[q / 4][q % 4], l));
    }
}

static gen_blocks_fn *const gen_blocks[EMU_SIMD__COUNT] = {
    [EMU_SIMD_C] = blocks_c, [EMU_SIMD_AVX2] = blocks_avx2, [EMU_SIMD_AVX512] = blocks_avx512};

/* The blocks of counters block[], a lane each (8: one AVX2 vector). */
AVX2 static void philox_blocks_avx2(uint32_t out[WTS_PHILOX_LANES][4], uint64_t seed,
                                    uint64_t stream, const uint64_t block[WTS_PHILOX_LANES])
{
    _Static_assert(WTS_PHILOX_LANES == 8, "one AVX2 vector of lanes");
    uint32_t lo[8], hi[8];
    __m256i o[4];
    for (int i = 0; i < 8; i++) {
        lo[i] = (uint32_t)block[i];
        hi[i] = (uint32_t)(block[i] >> 32);
    }
    philox8_avx2(lo, hi, 1, seed, stream, &o);
    for (int q = 0; q < 4; q++) _mm256_storeu_si256((__m256i *)out[2 * q], o[q]);
}

void wts_philox_blocks(uint32_t out[WTS_PHILOX_LANES][4], uint64_t seed, uint64_t stream,
                       const uint64_t block[WTS_PHILOX_LANES])
{
    if (emu_simd_best() != EMU_SIMD_C) philox_blocks_avx2(out, seed, stream, block);
    else philox_blocks_c(out, seed, stream, block);
}
#else
static gen_blocks_fn *const gen_blocks[EMU_SIMD__COUNT] = {[EMU_SIMD_C] = blocks_c};

void wts_philox_blocks(uint32_t out[WTS_PHILOX_LANES][4], uint64_t seed, uint64_t stream,
                       const uint64_t block[WTS_PHILOX_LANES])
{
    philox_blocks_c(out, seed, stream, block);
}
#endif

/* wts_generate's kernel: WTS_GEN_SCALAR, an emu_simd_t, or WTS_GEN_BEST. */
static atomic_int gen_kernel = WTS_GEN_BEST;

bool wts_generate_kernel(int k)
{
    bool ok = k == WTS_GEN_SCALAR || k == WTS_GEN_BEST ||
              (k >= 0 && k < EMU_SIMD__COUNT && emu_simd_supported((emu_simd_t)k));
    if (ok) atomic_store(&gen_kernel, k);
    return ok;
}

/* Tiles of GEN_TILE floats from whole blocks, rounded while in cache and
 * copied out to out32 (fp32) or packed into out16: the tile absorbs
 * unaligned offsets and short ends. */
static void gen_tiles(float *out32, uint16_t *out16, uint64_t seed, const char *name,
                      int64_t fan_in, int64_t offset, int64_t n, emu_dtype_t dt)
{
    law_t l = law_of(name, fan_in);
    uint64_t stream = wts_stream(name);
    int k = atomic_load(&gen_kernel);
    emu_simd_t simd = k < 0 ? emu_simd_best() : (emu_simd_t)k;
    _Alignas(64) float tile[GEN_TILE];
    for (int64_t i = 0; i < n;) {
        uint64_t idx = (uint64_t)(offset + i);
        int64_t skip = (int64_t)(idx % 4), m = n - i < GEN_TILE - skip ? n - i : GEN_TILE - skip;
        if (k == WTS_GEN_SCALAR) {
            gen_scalar(tile + skip, seed, stream, &l, offset + i, m, dt);
        } else {
            gen_blocks[simd](tile, seed, stream, idx / 4, (skip + m + 3) / 4, &l);
            if (!out16 || dt != EMU_DTYPE_FP16) /* fp16's packing rounds */
                emu_dtype_round_n_on(simd, dt, tile + skip, m);
        }
        if (out16) emu_dtype_pack_n(dt, out16 + i, tile + skip, m);
        else memcpy(out32 + i, tile + skip, sizeof(float) * (size_t)m);
        i += m;
    }
}

void wts_generate(float *out, uint64_t seed, const char *name, int64_t fan_in, int64_t offset,
                  int64_t n, emu_dtype_t dt)
{
    gen_tiles(out, NULL, seed, name, fan_in, offset, n, dt);
}

void wts_generate_packed(uint16_t *out, uint64_t seed, const char *name, int64_t fan_in,
                         int64_t offset, int64_t n, emu_dtype_t dt)
{
    gen_tiles(NULL, out, seed, name, fan_in, offset, n, dt);
}
