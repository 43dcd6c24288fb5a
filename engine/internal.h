/*
 * internal.h - declarations shared by the engine's own .c files. Nothing
 * outside engine/ includes this; the public contract is engine.h.
 */
#ifndef METASTATE_ENGINE_INTERNAL_H
#define METASTATE_ENGINE_INTERNAL_H

#include "engine.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__GNUC__)
#define MS_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MS_PRINTF(a, b)
#endif

/* Fills err (when not NULL) with code and a printf-style message; returns
 * code, so callers write `return ms_fail(err, MS_ERR_IO, "...", ...);`. */
ms_status ms_fail(ms_error *err, ms_status code, const char *fmt, ...) MS_PRINTF(3, 4);

/* Size in bytes of one element of dtype d (4 or 2). */
size_t ms_dtype_size(ms_dtype d);
/* "F32", "F16", "BF16". */
const char *ms_dtype_name(ms_dtype d);

/* exp for vectorized loops (forward pass, sampler): Cephes-style range
 * reduction and a degree-6 polynomial, within about 2 ulp of expf, but
 * branch-free so loops calling it vectorize (libm's expf is a call per
 * element, which made the elementwise loops as slow as the matrix products
 * in prefill, and the softmax of a draw the slowest part of it). */
static inline float exp_approx(float x)
{
    x = x < -87.3f ? -87.3f : x > 88.3f ? 88.3f : x;
    const float k = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = x - k * 0.693359375f + k * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = p * r * r + r + 1.0f;
    const int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return y * scale;
}

#endif
