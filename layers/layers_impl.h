/* layers private: helpers shared by the kernels. */
#ifndef MOEMU_LAYERS_IMPL_H
#define MOEMU_LAYERS_IMPL_H

#include <stdint.h>
#include <string.h>

/* exp(x) to about 1 ulp for x in [-87.3, 88.3] (clamped outside): Cody-Waite
 * reduction and Cephes' expf polynomial. Branch-free so that loops over it
 * vectorize, and the same bits on every host, unlike libm's expf. */
static inline float layer_exp(float x)
{
    x = x < -87.3f ? -87.3f : x > 88.3f ? 88.3f : x;
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick: exact for |n| < 2^22 */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, 4);
    return p * s;
}

#endif
