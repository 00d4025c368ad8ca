/* Emulated storage types and the fp16/bf16 conversions (round to nearest
 * even, NaN kept quiet, overflow to infinity). */
#include <math.h>
#include <string.h>

#include "emu/emu.h"

static const struct {
    const char *name;
    size_t size;
} emu_dtypes[EMU_DTYPE__COUNT] = {
    [EMU_DTYPE_FP32] = {"fp32", 4},
    [EMU_DTYPE_FP16] = {"fp16", 2},
    [EMU_DTYPE_BF16] = {"bf16", 2},
    [EMU_DTYPE_INT32] = {"int32", 4},
    [EMU_DTYPE_FP8] = {"fp8", 1},
};

size_t emu_dtype_size(emu_dtype_t dt) { return emu_dtypes[dt].size; }

double emu_dtype_bytes(emu_dtype_t dt)
{
    return dt == EMU_DTYPE_FP8 ? 1.0 + 4.0 / EMU_FP8_GROUP : (double)emu_dtypes[dt].size;
}

const char *emu_dtype_name(emu_dtype_t dt) { return emu_dtypes[dt].name; }

bool emu_dtype_parse(const char *s, emu_dtype_t *out)
{
    static const struct {
        const char *alias;
        emu_dtype_t dt;
    } aliases[] = {
        {"fp32", EMU_DTYPE_FP32},     {"float32", EMU_DTYPE_FP32},
        {"float", EMU_DTYPE_FP32},    {"fp16", EMU_DTYPE_FP16},
        {"float16", EMU_DTYPE_FP16},  {"half", EMU_DTYPE_FP16},
        {"bf16", EMU_DTYPE_BF16},     {"bfloat16", EMU_DTYPE_BF16},
        {"fp8", EMU_DTYPE_FP8},       {"float8_e4m3fn", EMU_DTYPE_FP8},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(s, aliases[i].alias) == 0) {
            *out = aliases[i].dt;
            return true;
        }
    return false;
}

static uint32_t f32_bits(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float bits_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, 4);
    return x;
}

uint16_t emu_f32_to_bf16(float x)
{
    uint32_t u = f32_bits(x);
    if (isnan(x)) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float emu_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t emu_f32_to_f16(float x)
{
    uint32_t u = f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t a = u & 0x7fffffff;
    if (a > 0x7f800000) return sign | 0x7e00; /* NaN */
    if (a >= 0x477ff000) return sign | 0x7c00; /* rounds to >= 65520: inf */
    if (a < 0x38800000) {                      /* below 2^-14: subnormal */
        /* a value of 2^-25 or less rounds to zero, ties to even (zero) */
        if (a <= 0x33000000) return sign;
        uint32_t m = (a & 0x7fffff) | 0x800000;
        int sh = 126 - (int)(a >> 23); /* value / 2^-24 = m * 2^(e - 126) */
        uint32_t r = m >> sh;
        uint32_t rem = m & ((1u << sh) - 1);
        uint32_t half = 1u << (sh - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return sign | (uint16_t)r;
    }
    /* normal: rebias exponent 127 -> 15, round 13 dropped bits */
    uint32_t r = a - 0x38000000;
    r += 0xfff + ((r >> 13) & 1);
    return sign | (uint16_t)(r >> 13);
}

float emu_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return bits_f32(sign | 0x7f800000 | (m << 13));
    if (e == 0) { /* zero or subnormal: m * 2^-24 */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((e + 112) << 23) | (m << 13));
}

/* ---- float8_e4m3fn: value = 2^(e-7) * (1 + m/8), or m * 2^-9 when e is
 * 0; the top code of each sign is NaN (the "fn": finite, no Inf). */

float emu_e4m3_to_f32(uint8_t b)
{
    int e = b >> 3 & 0xf, m = b & 7;
    float v = e == 15 && m == 7 ? NAN : e ? ldexpf((float)(8 + m), e - 10)
                                          : ldexpf((float)m, -9);
    return b & 0x80 ? -v : v;
}

/* Rounds |x| to the format's grid: a quantum of 2^(E-3) in the binade
 * [2^E, 2^(E+1)), 2^-9 among the subnormals (below 2^-6); rintf rounds
 * half to even, and the scaling by powers of two is exact. */
uint8_t emu_f32_to_e4m3(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (!(a <= 464.0f)) return sign | 0x7f; /* NaN, Inf, overflow: torch's NaN */
    if (a < 0x1p-6f) return sign | (uint8_t)rintf(a * 512.0f); /* 8 is 0x08, 2^-6 */
    int E;
    frexpf(a, &E); /* a = f * 2^E, f in [0.5, 1) */
    float r = ldexpf(rintf(ldexpf(a, 4 - E)), E - 4);
    float f = frexpf(r, &E); /* again: rounding may reach the next binade */
    return sign | (uint8_t)((E + 6) << 3) | (uint8_t)(ldexpf(f, 4) - 8.0f);
}

float emu_dtype_round(emu_dtype_t dt, float x)
{
    switch (dt) {
    case EMU_DTYPE_FP16: return emu_f16_to_f32(emu_f32_to_f16(x));
    case EMU_DTYPE_BF16: return emu_bf16_to_f32(emu_f32_to_bf16(x));
    case EMU_DTYPE_FP8: return emu_e4m3_to_f32(emu_f32_to_e4m3(x));
    default: return x;
    }
}

/* ---- Rounding arrays: the same bits as emu_dtype_round, element for
 * element. bf16 is integer arithmetic (the scalar's own), which vectorizes
 * as it stands; fp16 uses the F16C conversions, which round to nearest
 * even with the same overflow and subnormals, but keep a NaN's payload
 * where the scalar gives the plain quiet NaN: NaN lanes are patched. */

/* bf16, written so that the compiler vectorizes it on any target. */
static inline void bf16_round_c(float *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t u = f32_bits(p[i]);
        uint32_t r = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
        uint32_t nan = (u & 0xffff0000u) | 0x400000u;
        p[i] = bits_f32((u & 0x7fffffff) > 0x7f800000 ? nan : r);
    }
}

static void round_n_c(emu_dtype_t dt, float *p, int64_t n)
{
    if (dt == EMU_DTYPE_BF16) {
        bf16_round_c(p, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) p[i] = emu_dtype_round(dt, p[i]);
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx2"))) static void bf16_round_avx2(float *p, int64_t n)
{
    bf16_round_c(p, n);
}

/* x's fp16 bits as emu_f32_to_f16 gives them: NaNs with their sign,
 * quiet, no payload, through the conversion of the fp32 quiet NaN. */
#define F16_AVX2 __attribute__((target("avx2,f16c"), always_inline)) static inline
F16_AVX2 __m128i f16_bits_avx2(__m256 x)
{
    const __m256 qnan = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fc00000));
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    __m256 nan = _mm256_or_ps(_mm256_and_ps(x, sign), qnan);
    x = _mm256_blendv_ps(x, nan, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    return _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
}

#define F16_AVX512 __attribute__((target("avx512f"), always_inline)) static inline
F16_AVX512 __m256i f16_bits_avx512(__m512 x)
{
    const __m512i qnan = _mm512_set1_epi32(0x7fc00000), sign = _mm512_set1_epi32((int)0x80000000u);
    __m512i nan = _mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(x), sign), qnan);
    x = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x, _mm512_castsi512_ps(nan));
    return _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
}

/* p[0..n) to fp16 and back; n a multiple of 8. */
__attribute__((target("avx2,f16c"))) static void f16_round_avx2(float *p, int64_t n)
{
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(p + i, _mm256_cvtph_ps(f16_bits_avx2(_mm256_loadu_ps(p + i))));
}

__attribute__((target("avx512f,avx512bw,avx512vl"))) static void bf16_round_avx512(float *p,
                                                                                    int64_t n)
{
    bf16_round_c(p, n);
}

/* p[0..n) to fp16 and back; n a multiple of 16. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void f16_round_avx512(float *p,
                                                                                   int64_t n)
{
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(p + i, _mm512_cvtph_ps(f16_bits_avx512(_mm512_loadu_ps(p + i))));
}

/* Kernel k's rounding of whole vectors of `lanes`, the rest in C; false
 * when k has nothing of its own for dt. */
static bool round_n_simd(emu_simd_t k, emu_dtype_t dt, float *p, int64_t n)
{
    if (dt == EMU_DTYPE_BF16 && k == EMU_SIMD_AVX2) bf16_round_avx2(p, n);
    else if (dt == EMU_DTYPE_BF16 && k == EMU_SIMD_AVX512) bf16_round_avx512(p, n);
    else if (dt == EMU_DTYPE_FP16 && k != EMU_SIMD_C) {
        int64_t lanes = k == EMU_SIMD_AVX512 ? 16 : 8, whole = n - n % lanes;
        if (k == EMU_SIMD_AVX512) f16_round_avx512(p, whole);
        else f16_round_avx2(p, whole);
        round_n_c(dt, p + whole, n - whole);
    } else
        return false;
    return true;
}
#else
static bool round_n_simd(emu_simd_t k, emu_dtype_t dt, float *p, int64_t n)
{
    (void)k, (void)dt, (void)p, (void)n;
    return false;
}
#endif

void emu_dtype_round_n_on(emu_simd_t k, emu_dtype_t dt, float *p, int64_t n)
{
    if (dt == EMU_DTYPE_FP32 || dt == EMU_DTYPE_INT32 || n <= 0) return;
    if (!round_n_simd(k, dt, p, n)) round_n_c(dt, p, n);
}

void emu_dtype_round_n(emu_dtype_t dt, float *p, int64_t n)
{
    emu_dtype_round_n_on(emu_simd_best(), dt, p, n);
}

/* ---- Packed 16-bit storage of values already in the dtype (fp16 or
 * bf16): their bits, and back; exact both ways. */

static void pack_n_c(emu_dtype_t dt, uint16_t *out, const float *in, int64_t n)
{
    if (dt == EMU_DTYPE_BF16)
        for (int64_t i = 0; i < n; i++) out[i] = (uint16_t)(f32_bits(in[i]) >> 16);
    else
        for (int64_t i = 0; i < n; i++) out[i] = emu_f32_to_f16(in[i]);
}

static void widen_n_c(emu_dtype_t dt, float *out, const uint16_t *in, int64_t n)
{
    if (dt == EMU_DTYPE_BF16)
        for (int64_t i = 0; i < n; i++) out[i] = bits_f32((uint32_t)in[i] << 16);
    else
        for (int64_t i = 0; i < n; i++) out[i] = emu_f16_to_f32(in[i]);
}

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
__attribute__((target("avx2,f16c"))) static void pack_f16_avx2(uint16_t *out, const float *in,
                                                              int64_t n)
{
    for (int64_t i = 0; i < n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i), f16_bits_avx2(_mm256_loadu_ps(in + i)));
}

__attribute__((target("avx512f"))) static void pack_f16_avx512(uint16_t *out, const float *in,
                                                                int64_t n)
{
    for (int64_t i = 0; i < n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i), f16_bits_avx512(_mm512_loadu_ps(in + i)));
}

__attribute__((target("avx2,f16c"))) static void widen_f16_avx2(float *out, const uint16_t *in,
                                                               int64_t n)
{
    for (int64_t i = 0; i < n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
}

__attribute__((target("avx2"))) static void widen_bf16_avx2(float *out, const uint16_t *in,
                                                            int64_t n)
{
    for (int64_t i = 0; i < n; i += 8) {
        __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(in + i)));
        _mm256_storeu_ps(out + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
    }
}

__attribute__((target("avx512f"))) static void widen_f16_avx512(float *out, const uint16_t *in,
                                                                 int64_t n)
{
    for (int64_t i = 0; i < n; i += 16)
        _mm512_storeu_ps(out + i,
                         _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(in + i))));
}

__attribute__((target("avx512f"))) static void widen_bf16_avx512(float *out, const uint16_t *in,
                                                                  int64_t n)
{
    for (int64_t i = 0; i < n; i += 16) {
        __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(in + i)));
        _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
    }
}

/* The whole vectors of 8 on AVX2 (fp16's pack and widening, bf16's
 * widening; of 16 on AVX-512), the rest in C; bf16's pack vectorizes as
 * C. */
static int64_t pack_simd(emu_dtype_t dt, uint16_t *out, const float *in, int64_t n)
{
    emu_simd_t k = emu_simd_best();
    if (dt != EMU_DTYPE_FP16 || k == EMU_SIMD_C) return 0;
    if (k == EMU_SIMD_AVX512) {
        pack_f16_avx512(out, in, n - n % 16);
        return n - n % 16;
    }
    pack_f16_avx2(out, in, n - n % 8);
    return n - n % 8;
}

static int64_t widen_simd(emu_dtype_t dt, float *out, const uint16_t *in, int64_t n)
{
    emu_simd_t k = emu_simd_best();
    if (k == EMU_SIMD_C) return 0;
    if (k == EMU_SIMD_AVX512) {
        if (dt == EMU_DTYPE_FP16) widen_f16_avx512(out, in, n - n % 16);
        else widen_bf16_avx512(out, in, n - n % 16);
        return n - n % 16;
    }
    if (dt == EMU_DTYPE_FP16) widen_f16_avx2(out, in, n - n % 8);
    else widen_bf16_avx2(out, in, n - n % 8);
    return n - n % 8;
}
#else
static int64_t pack_simd(emu_dtype_t dt, uint16_t *out, const float *in, int64_t n)
{
    (void)dt, (void)out, (void)in, (void)n;
    return 0;
}

static int64_t widen_simd(emu_dtype_t dt, float *out, const uint16_t *in, int64_t n)
{
    (void)dt, (void)out, (void)in, (void)n;
    return 0;
}
#endif

void emu_dtype_pack_n(emu_dtype_t dt, uint16_t *out, const float *in, int64_t n)
{
    int64_t done = n > 0 ? pack_simd(dt, out, in, n) : 0;
    pack_n_c(dt, out + done, in + done, n - done);
}

void emu_dtype_widen_n(emu_dtype_t dt, float *out, const uint16_t *in, int64_t n)
{
    int64_t done = n > 0 ? widen_simd(dt, out, in, n) : 0;
    widen_n_c(dt, out + done, in + done, n - done);
}
