/* Which vector kernels the host's CPU runs (emu_simd_t). */
#include <stdatomic.h>

#include "emu/emu.h"

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>

/* CPUID leaf 1, ECX bit 29 (not every compiler's __builtin_cpu_supports
 * knows "f16c"). */
static bool has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

bool emu_simd_supported(emu_simd_t k)
{
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
    __builtin_cpu_init();
    switch (k) {
    case EMU_SIMD_C: return true;
    case EMU_SIMD_AVX2: return __builtin_cpu_supports("avx2") && has_f16c();
    case EMU_SIMD_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    default: return false;
    }
#else
    return k == EMU_SIMD_C;
#endif
}

/* Found once: CPUID traps to the hypervisor in a virtual machine, and
 * kernels ask per call (the router per 8 tokens). */
emu_simd_t emu_simd_best(void)
{
    static atomic_int best = -1;
    int b = atomic_load_explicit(&best, memory_order_relaxed);
    if (b >= 0) return (emu_simd_t)b;
    b = emu_simd_supported(EMU_SIMD_AVX512) ? EMU_SIMD_AVX512
        : emu_simd_supported(EMU_SIMD_AVX2) ? EMU_SIMD_AVX2
                                            : EMU_SIMD_C;
    atomic_store_explicit(&best, b, memory_order_relaxed);
    return (emu_simd_t)b;
}

const char *emu_simd_name(emu_simd_t k)
{
    static const char *const names[EMU_SIMD__COUNT] = {"c", "avx2", "avx512"};
    return k >= 0 && k < EMU_SIMD__COUNT ? names[k] : "?";
}
