/*
 * kernels.c - weight formats, the batched matrix-vector product, its
 * per-ISA variants and the thread pool that splits it.
 *
 * Design:
 *  - One kernel body, written once as a macro over a small vector vocabulary
 *    (load x, widen a weight vector, fma, reduce), instantiated for AVX-512,
 *    AVX2+FMA and portable C. The file is compiled for the baseline x86-64;
 *    the wide variants carry target attributes and are chosen at run time
 *    from cpuid, so one binary runs everywhere (and valgrind, which lacks
 *    AVX-512, still runs the AVX2 path).
 *  - Weights are widened in registers (bf16 is an exact 16-bit shift, int8 a
 *    convert then one multiply per group by its scale) and every sum is fp32.
 *  - A product walks the weight rows once; for each row it keeps up to four
 *    sequences' accumulators in registers, so B sequences re-read a row from
 *    L1 rather than from memory.
 *  - Rows are split between the caller and the pool's workers. Workers spin
 *    briefly between products (a token is ~100 back-to-back products, too
 *    short to sleep between) and sleep on a condition variable when idle.
 */
#include "engine.h"
#include "kernels.h"

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* Formats                                                                   */

static inline float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((u >> 16) | 0x40); /* keep NaN a NaN */
    u += 0x7FFF + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

uint16_t ms_bf16_from_f32(float f) { return f32_to_bf16(f); }

static size_t n_groups(int cols) { return ((size_t)cols + K_I8_GROUP - 1) / K_I8_GROUP; }

size_t k_wmat_bytes(const k_wmat *W)
{
    size_t n = (size_t)W->rows * (size_t)W->cols;
    switch (W->fmt) {
    case K_W_F32: return n * 4;
    case K_W_BF16: return n * 2;
    case K_W_I8: return n + (size_t)W->rows * n_groups(W->cols) * sizeof(float);
    }
    return 0;
}

int k_wmat_alloc(k_wmat *W, k_wfmt fmt, int rows, int cols)
{
    memset(W, 0, sizeof *W);
    W->fmt = fmt;
    W->rows = rows;
    W->cols = cols;
    const size_t n = (size_t)rows * (size_t)cols;
    const size_t esz = fmt == K_W_F32 ? 4 : fmt == K_W_BF16 ? 2 : 1;
    W->data = aligned_alloc(64, ((n * esz) + 63) & ~(size_t)63);
    if (fmt == K_W_I8)
        W->scales = malloc((size_t)rows * n_groups(cols) * sizeof(float));
    if (!W->data || (fmt == K_W_I8 && !W->scales)) {
        k_wmat_free(W);
        return -1;
    }
    return 0;
}

void k_wmat_set_rows(k_wmat *W, int r0, int r1, const float *src)
{
    const size_t cols = (size_t)W->cols, b = (size_t)r0 * cols, n = (size_t)(r1 - r0) * cols;
    if (W->fmt == K_W_F32) {
        memcpy((float *)W->data + b, src, n * 4);
    } else if (W->fmt == K_W_BF16) {
        uint16_t *d = (uint16_t *)W->data + b;
        for (size_t i = 0; i < n; i++)
            d[i] = f32_to_bf16(src[i]);
    } else {
        const size_t g = n_groups(W->cols);
        int8_t *q = W->data;
        for (int r = r0; r < r1; r++)
            for (size_t k = 0; k < g; k++) {
                const size_t c0 = k * K_I8_GROUP;
                const size_t c1 = c0 + K_I8_GROUP < cols ? c0 + K_I8_GROUP : cols;
                const float *s = src + (size_t)(r - r0) * cols;
                float amax = 0;
                for (size_t c = c0; c < c1; c++)
                    amax = fmaxf(amax, fabsf(s[c]));
                const float scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0;
                W->scales[(size_t)r * g + k] = scale;
                for (size_t c = c0; c < c1; c++)
                    q[(size_t)r * cols + c] = (int8_t)lrintf(s[c] * inv);
            }
    }
}

int k_wmat_init(k_wmat *W, k_wfmt fmt, int rows, int cols, const float *src)
{
    if (k_wmat_alloc(W, fmt, rows, cols))
        return -1;
    k_wmat_set_rows(W, 0, rows, src);
    return 0;
}

void k_wmat_free(k_wmat *W)
{
    free(W->data);
    free(W->scales);
    W->data = NULL;
    W->scales = NULL;
}

void k_wmat_rows(const k_wmat *W, int r0, int r1, float *dst)
{
    const size_t C = (size_t)W->cols;
    const size_t b = (size_t)r0 * C, e = (size_t)r1 * C;
    if (W->fmt == K_W_F32) {
        memcpy(dst, (const float *)W->data + b, (e - b) * 4);
    } else if (W->fmt == K_W_BF16) {
        const uint16_t *s = (const uint16_t *)W->data + b;
        for (size_t i = 0; i < e - b; i++)
            dst[i] = bf16_to_f32(s[i]);
    } else {
        const int8_t *q = W->data;
        const size_t g = n_groups(W->cols);
        for (int r = r0; r < r1; r++)
            for (size_t c = 0; c < C; c++)
                dst[(size_t)(r - r0) * C + c] =
                    q[(size_t)r * C + c] * W->scales[(size_t)r * g + c / K_I8_GROUP];
    }
}

void k_wmat_row(const k_wmat *W, int r, float *dst) { k_wmat_rows(W, r, r + 1, dst); }

/* ======================================================================== */
/* The kernel body                                                           */
/*
 * Every (row, sequence) dot product is summed the same way, whatever the
 * batch size and blocking: four accumulators, one per 16-column quarter of
 * each 64-column step, added up at the end (int8: one 64-column group per
 * step, scaled once, on two accumulators). Four independent chains keep the
 * FMA units busy instead of waiting on one chain's latency, and because the
 * order never depends on B, a sequence decoded in a batch gets bit for bit
 * what it gets alone. Sequences are taken NB at a time per pass over a row
 * (NB per ISA, as many as the registers hold), so a batch reads each row of
 * weights from memory once. Columns past the last multiple of 64 go 16 at a
 * time into the first accumulator, then scalar. Vector vocabulary (per ISA):
 * VT, VZERO(), VLOADX(p) (16 floats), VW_*(data, i) (16 weights widened),
 * VFMA(a, b, acc), VMUL, VADD, VSET1(s), VSUM(v).
 */
/* One pass over row r for sequences b0 .. b0+NQ-1 (NQ a constant, so the
 * accumulators stay in registers). */
#define ROW_PASS(WIDEN, IS_I8, NQ)                                                               \
    {                                                                                            \
        VT c[NQ][4];                                                                             \
        for (int q = 0; q < NQ; q++)                                                             \
            c[q][0] = c[q][1] = c[q][2] = c[q][3] = VZERO();                                     \
        int j = 0;                                                                               \
        for (; j < K64; j += 64) {                                                               \
            const VT w0 = WIDEN(W->data, ro + (size_t)j);                                        \
            const VT w1 = WIDEN(W->data, ro + (size_t)j + 16);                                   \
            const VT w2 = WIDEN(W->data, ro + (size_t)j + 32);                                   \
            const VT w3 = WIDEN(W->data, ro + (size_t)j + 48);                                   \
            if (IS_I8) {                                                                         \
                const VT sc = VSET1(W->scales[(size_t)r * G + (size_t)j / K_I8_GROUP]);          \
                for (int q = 0; q < NQ; q++) {                                                   \
                    const float *x = X + (size_t)(b0 + q) * K + j;                               \
                    const VT t0 = VFMA(w1, VLOADX(x + 16), VMUL(w0, VLOADX(x)));                 \
                    const VT t1 = VFMA(w3, VLOADX(x + 48), VMUL(w2, VLOADX(x + 32)));            \
                    c[q][0] = VFMA(t0, sc, c[q][0]);                                             \
                    c[q][1] = VFMA(t1, sc, c[q][1]);                                             \
                }                                                                                \
            } else {                                                                             \
                for (int q = 0; q < NQ; q++) {                                                   \
                    const float *x = X + (size_t)(b0 + q) * K + j;                               \
                    c[q][0] = VFMA(w0, VLOADX(x), c[q][0]);                                      \
                    c[q][1] = VFMA(w1, VLOADX(x + 16), c[q][1]);                                 \
                    c[q][2] = VFMA(w2, VLOADX(x + 32), c[q][2]);                                 \
                    c[q][3] = VFMA(w3, VLOADX(x + 48), c[q][3]);                                 \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (; j < K16; j += 16) {                                                               \
            VT w = WIDEN(W->data, ro + (size_t)j);                                               \
            if (IS_I8)                                                                           \
                w = VMUL(w, VSET1(W->scales[(size_t)r * G + (size_t)j / K_I8_GROUP]));           \
            for (int q = 0; q < NQ; q++)                                                         \
                c[q][0] = VFMA(w, VLOADX(X + (size_t)(b0 + q) * K + j), c[q][0]);                \
        }                                                                                        \
        for (int q = 0; q < NQ; q++) {                                                           \
            float sum = VSUM(VADD(VADD(c[q][0], c[q][1]), VADD(c[q][2], c[q][3])));              \
            const float *x = X + (size_t)(b0 + q) * K;                                           \
            for (int jj = K16; jj < K; jj++)                                                     \
                sum += scalar_weight(W, r, jj, G) * x[jj];                                       \
            float *y = Y + (size_t)(b0 + q) * W->rows + r;                                       \
            *y = beta == 0.0f ? sum : beta * *y + sum;                                           \
        }                                                                                        \
    }

#define KERNEL_BODY(WIDEN, IS_I8, NB)                                                            \
    const int K = W->cols, K64 = K & ~63, K16 = K & ~15;                                         \
    const size_t G = n_groups(K);                                                                \
    for (int r = r0; r < r1; r++) {                                                              \
        const size_t ro = (size_t)r * (size_t)K;                                                 \
        int b0 = 0;                                                                              \
        for (; b0 + NB <= B; b0 += NB)                                                           \
            ROW_PASS(WIDEN, IS_I8, NB)                                                           \
        for (; b0 < B; b0++)                                                                     \
            ROW_PASS(WIDEN, IS_I8, 1)                                                            \
    }

static inline float scalar_weight(const k_wmat *W, int r, int j, size_t G)
{
    const size_t i = (size_t)r * W->cols + j;
    switch (W->fmt) {
    case K_W_F32: return ((const float *)W->data)[i];
    case K_W_BF16: return bf16_to_f32(((const uint16_t *)W->data)[i]);
    case K_W_I8: return ((const int8_t *)W->data)[i] * W->scales[(size_t)r * G + j / K_I8_GROUP];
    }
    return 0;
}

typedef void (*range_fn)(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0,
                         int r1);

/* ---------------------------------------------------------------- scalar */
/* Sixteen lanes as an array: the same summation shape as the SIMD paths,
 * and a loop the compiler vectorizes for the baseline. */
typedef struct {
    float v[16];
} v16;

static inline v16 s_zero(void) { return (v16){{0}}; }
static inline v16 s_loadx(const float *p)
{
    v16 r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
static inline v16 s_w_f32(const void *d, size_t i) { return s_loadx((const float *)d + i); }
static inline v16 s_w_bf16(const void *d, size_t i)
{
    v16 r;
    for (int l = 0; l < 16; l++)
        r.v[l] = bf16_to_f32(((const uint16_t *)d)[i + l]);
    return r;
}
static inline v16 s_w_i8(const void *d, size_t i)
{
    v16 r;
    for (int l = 0; l < 16; l++)
        r.v[l] = ((const int8_t *)d)[i + l];
    return r;
}
static inline v16 s_fma(v16 a, v16 b, v16 c)
{
    for (int l = 0; l < 16; l++)
        c.v[l] += a.v[l] * b.v[l];
    return c;
}
static inline v16 s_add(v16 a, v16 b)
{
    for (int l = 0; l < 16; l++)
        a.v[l] += b.v[l];
    return a;
}
static inline v16 s_muls(v16 a, float s)
{
    for (int l = 0; l < 16; l++)
        a.v[l] *= s;
    return a;
}
static inline v16 s_mul(v16 a, v16 b)
{
    for (int l = 0; l < 16; l++)
        a.v[l] *= b.v[l];
    return a;
}
static inline v16 s_set1(float x)
{
    v16 r;
    for (int l = 0; l < 16; l++)
        r.v[l] = x;
    return r;
}
static inline float s_sum(v16 a)
{
    float s = 0;
    for (int l = 0; l < 16; l++)
        s += a.v[l];
    return s;
}

#define VT v16
#define VZERO s_zero
#define VLOADX s_loadx
#define VFMA s_fma
#define VADD s_add
#define VMULS s_muls
#define VSUM s_sum
#define VMUL s_mul
#define VSET1 s_set1
static void mm_scalar_f32(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(s_w_f32, 0, 1) }
static void mm_scalar_bf16(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(s_w_bf16, 0, 1) }
static void mm_scalar_i8(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(s_w_i8, 1, 1) }
#undef VT
#undef VZERO
#undef VLOADX
#undef VFMA
#undef VADD
#undef VMULS
#undef VSUM
#undef VMUL
#undef VSET1

/* ------------------------------------------------------------------ AVX2 */
/* 16 columns as a pair of 8-lane registers. */
#define AVX2 __attribute__((target("avx2,fma")))
typedef struct {
    __m256 lo, hi;
} v2x8;

AVX2 static inline v2x8 a2_zero(void) { return (v2x8){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
AVX2 static inline v2x8 a2_loadx(const float *p)
{
    return (v2x8){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}
AVX2 static inline v2x8 a2_w_f32(const void *d, size_t i) { return a2_loadx((const float *)d + i); }
AVX2 static inline __m256 a2_bf16_8(const uint16_t *p)
{
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
}
AVX2 static inline v2x8 a2_w_bf16(const void *d, size_t i)
{
    const uint16_t *p = (const uint16_t *)d + i;
    return (v2x8){a2_bf16_8(p), a2_bf16_8(p + 8)};
}
AVX2 static inline v2x8 a2_w_i8(const void *d, size_t i)
{
    const int8_t *p = (const int8_t *)d + i;
    __m128i q = _mm_loadu_si128((const __m128i *)p);
    return (v2x8){_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)),
                  _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)))};
}
AVX2 static inline v2x8 a2_fma(v2x8 a, v2x8 b, v2x8 c)
{
    return (v2x8){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
AVX2 static inline v2x8 a2_add(v2x8 a, v2x8 b)
{
    return (v2x8){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
AVX2 static inline v2x8 a2_muls(v2x8 a, float s)
{
    __m256 v = _mm256_set1_ps(s);
    return (v2x8){_mm256_mul_ps(a.lo, v), _mm256_mul_ps(a.hi, v)};
}
AVX2 static inline v2x8 a2_mul(v2x8 a, v2x8 b)
{
    return (v2x8){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
}
AVX2 static inline v2x8 a2_set1(float x) { return (v2x8){_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
AVX2 static inline float a2_sum(v2x8 a)
{
    __m256 s = _mm256_add_ps(a.lo, a.hi);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

#define VT v2x8
#define VZERO a2_zero
#define VLOADX a2_loadx
#define VFMA a2_fma
#define VADD a2_add
#define VMULS a2_muls
#define VSUM a2_sum
#define VMUL a2_mul
#define VSET1 a2_set1
AVX2 static void mm_avx2_f32(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(a2_w_f32, 0, 1) }
AVX2 static void mm_avx2_bf16(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(a2_w_bf16, 0, 1) }
AVX2 static void mm_avx2_i8(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(a2_w_i8, 1, 1) }
#undef VT
#undef VZERO
#undef VLOADX
#undef VFMA
#undef VADD
#undef VMULS
#undef VSUM
#undef VMUL
#undef VSET1

/* --------------------------------------------------------------- AVX-512 */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

AVX512 static inline __m512 a5_zero(void) { return _mm512_setzero_ps(); }
AVX512 static inline __m512 a5_loadx(const float *p) { return _mm512_loadu_ps(p); }
AVX512 static inline __m512 a5_w_f32(const void *d, size_t i) { return _mm512_loadu_ps((const float *)d + i); }
AVX512 static inline __m512 a5_w_bf16(const void *d, size_t i)
{
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)d + i)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}
AVX512 static inline __m512 a5_w_i8(const void *d, size_t i)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)d + i))));
}
AVX512 static inline __m512 a5_fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
AVX512 static inline __m512 a5_add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
AVX512 static inline __m512 a5_muls(__m512 a, float s) { return _mm512_mul_ps(a, _mm512_set1_ps(s)); }
AVX512 static inline float a5_sum(__m512 a) { return _mm512_reduce_add_ps(a); }
AVX512 static inline __m512 a5_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
AVX512 static inline __m512 a5_set1(float x) { return _mm512_set1_ps(x); }

#define VT __m512
#define VZERO a5_zero
#define VLOADX a5_loadx
#define VFMA a5_fma
#define VADD a5_add
#define VMULS a5_muls
#define VSUM a5_sum
#define VMUL a5_mul
#define VSET1 a5_set1
AVX512 static void mm_avx512_f32(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(a5_w_f32, 0, 4) }
AVX512 static void mm_avx512_bf16(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(a5_w_bf16, 0, 4) }
AVX512 static void mm_avx512_i8(const k_wmat *W, const float *X, float *Y, int B, float beta, int r0, int r1) { KERNEL_BODY(a5_w_i8, 1, 4) }
#undef VT
#undef VZERO
#undef VLOADX
#undef VFMA
#undef VADD
#undef VMULS
#undef VSUM
#undef VMUL
#undef VSET1

/* ======================================================================== */
/* Dispatch                                                                  */

typedef struct {
    const char *name;
    range_fn fn[3]; /* by k_wfmt */
} isa;

static const isa isas[] = {
    {"avx512", {mm_avx512_f32, mm_avx512_bf16, mm_avx512_i8}},
    {"avx2", {mm_avx2_f32, mm_avx2_bf16, mm_avx2_i8}},
    {"scalar", {mm_scalar_f32, mm_scalar_bf16, mm_scalar_i8}},
};

static const isa *active; /* chosen once; read-only afterwards (k_force_isa aside) */
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static int cpu_has(const char *name)
{
    __builtin_cpu_init();
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl");
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return !strcmp(name, "scalar");
}

static void choose_isa(void)
{
    const char *want = getenv("METASTATE_ISA"); /* lets a user pin a variant */
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        if ((!want || !strcmp(want, isas[i].name)) && cpu_has(isas[i].name)) {
            active = &isas[i];
            return;
        }
    active = &isas[2];
}

const char *k_isa(void)
{
    pthread_once(&isa_once, choose_isa);
    return active->name;
}

int k_force_isa(const char *name)
{
    pthread_once(&isa_once, choose_isa);
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        if (!strcmp(name, isas[i].name) && cpu_has(name)) {
            active = &isas[i];
            return 0;
        }
    return -1;
}

/* ======================================================================== */
/* Thread pool                                                               */

/* A parallel loop: run(arg, i) for every i in [0, n). */
typedef struct {
    void (*run)(void *arg, int i);
    void *arg;
    unsigned long long base, n; /* this loop's items: [base, base + n) in the pool's count */
} job;

/* Work is handed out in chunks from a shared counter rather than split in
 * fixed shares: on a busy machine a worker may not get a core in time, and
 * then the caller simply takes its chunks instead of waiting for it.
 * The counters only grow, and a chunk is taken by compare-and-swap within
 * the taker's own product's range, so a worker late from an earlier product
 * can never take (or count) a chunk of the current one. The job itself is
 * copied under the mutex, so no worker reads a half-written job. */
static struct {
    pthread_mutex_t busy; /* one product at a time uses the workers */
    pthread_mutex_t mu;   /* guards j and gen changes, with wake */
    pthread_cond_t wake;
    int n_threads, started;
    pthread_t *th;
    atomic_uint gen;            /* bumped per product */
    atomic_ullong next;         /* next chunk to take (global count) */
    atomic_ullong done;         /* chunks finished (global count) */
    job j;
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER,
          .mu = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER,
          .n_threads = 1};

/* Takes and runs items of j until its range is used up. */
static void run_chunks(const job *j)
{
    for (;;) {
        unsigned long long v = atomic_load_explicit(&pool.next, memory_order_relaxed);
        if (v < j->base || v >= j->base + j->n)
            return;
        if (!atomic_compare_exchange_weak_explicit(&pool.next, &v, v + 1, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue;
        j->run(j->arg, (int)(v - j->base));
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
}

static void *worker(void *arg)
{
    (void)arg;
    unsigned seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.gen, memory_order_acquire) == seen) {
            if (++spins < 20000) {
                _mm_pause();
                continue;
            }
            pthread_mutex_lock(&pool.mu);
            while (atomic_load(&pool.gen) == seen)
                pthread_cond_wait(&pool.wake, &pool.mu);
            pthread_mutex_unlock(&pool.mu);
            spins = 0;
        }
        pthread_mutex_lock(&pool.mu);
        job j = pool.j;
        seen = atomic_load(&pool.gen);
        pthread_mutex_unlock(&pool.mu);
        run_chunks(&j);
    }
    return NULL;
}

/* Workers live as long as the process: the pool is shared by every model
 * and context, like OpenBLAS's own, so the cores are never oversubscribed
 * by several pools. */
void k_set_threads(int n)
{
    pthread_mutex_lock(&pool.busy);
    if (!pool.started && n > 1) {
        pool.th = calloc((size_t)n, sizeof *pool.th);
        int started = 1;
        for (int i = 1; pool.th && i < n; i++)
            started += !pthread_create(&pool.th[i], NULL, worker, NULL);
        pool.n_threads = started;
        pool.started = 1;
    }
    pthread_mutex_unlock(&pool.busy);
}

int k_threads(void) { return pool.n_threads; }

void k_parallel(int n, void (*run)(void *arg, int i), void *arg)
{
    if (n <= 0)
        return;
    if (pool.n_threads < 2 || n == 1 || pthread_mutex_trylock(&pool.busy)) {
        for (int i = 0; i < n; i++)
            run(arg, i);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    pool.j = (job){run, arg, atomic_load(&pool.next), (unsigned long long)n};
    const job j = pool.j;
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    run_chunks(&j);
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < j.base + j.n)
        _mm_pause();
    pthread_mutex_unlock(&pool.busy);
}

typedef struct {
    const k_wmat *W;
    const float *X;
    float *Y;
    int B;
    float beta;
    range_fn fn;
    int rows_per_chunk;
} matmul_job;

static void matmul_chunk(void *arg, int i)
{
    const matmul_job *m = arg;
    const int r0 = i * m->rows_per_chunk;
    const int r1 = r0 + m->rows_per_chunk < m->W->rows ? r0 + m->rows_per_chunk : m->W->rows;
    m->fn(m->W, m->X, m->Y, m->B, m->beta, r0, r1);
}

void k_matmul(const k_wmat *W, const float *X, float *Y, int B, float beta)
{
    pthread_once(&isa_once, choose_isa);
    range_fn fn = active->fn[W->fmt];
    /* Small products are not worth waking anyone for. */
    if (pool.n_threads < 2 || (size_t)W->rows * W->cols < 65536) {
        fn(W, X, Y, B, beta, 0, W->rows);
        return;
    }
    /* Four chunks per thread: long enough that each thread reads long
     * sequential runs (which the prefetchers follow), enough of them that a
     * thread that starts late leaves its share to the others. */
    int per = ((W->rows + 4 * pool.n_threads - 1) / (4 * pool.n_threads) + 15) & ~15;
    matmul_job m = {W, X, Y, B, beta, fn, per};
    k_parallel((W->rows + per - 1) / per, matmul_chunk, &m);
}
