/*
 * kernels.c - weight formats and their packed layout, the batched
 * matrix-vector product with its per-ISA variants, and the thread pool
 * that splits it.
 *
 * Design:
 *  - Packed layout, per block of K_ROWS = 16 output rows (rows padded with
 *    zeros to whole blocks):
 *      F32   [cols][16] floats: one 16-lane vector per input column.
 *      BF16  [kp/2][16][2] bf16: one 64-byte vector per column pair, lane i
 *            holding row i's two weights (even column in the low half), as
 *            vdpbf16ps wants them; the exact path widens it into two fp32
 *            vectors with one shift and one mask.
 *      I8    per group of 64 columns: [16 quads][16][4] bytes (q + 128, so
 *            unsigned for vpdpbusd); the groups' 16 row scales (fp32) in
 *            an array of their own (scales), block by block.
 *      Q4    per group: 8 vectors of [16][4] bytes, low nibbles quads 0-7,
 *            high nibbles quads 8-15 (q + 8 for q in -8..7); the 16 row
 *            scales as fp16 in an array of their own (hscales), no
 *            minimums.
 *  - Exact formats: out[b] += w_vec * broadcast(x[b][j]) for j = 0..cols-1
 *    in order, one fp32 accumulator per (16 rows, sequence). Integer
 *    formats: exact int32 dot products per group (vpdpbusd or its AVX2 /
 *    portable equivalents give the same integers), then one fp32 FMA per
 *    group with scale * activation scale (the weights' stored offset,
 *    128 or 8, taken out first through the group's integer input sum).
 *    In both, each output's arithmetic depends on nothing but its row and
 *    its sequence, so the batch size never changes a result.
 *  - One kernel body per format written as a macro over a small vector
 *    vocabulary, instantiated for AVX-512 (+VNNI, +BF16 where present),
 *    AVX2+FMA and portable C; the file is compiled for baseline x86-64 and
 *    the wide variants carry target attributes, chosen at run time.
 *  - Rows are split in whole blocks between the caller and the pool's
 *    workers. Workers spin briefly between products (a token is ~100
 *    back-to-back products, too short to sleep between) and sleep on a
 *    condition variable when idle. A worker done with its share of a pass
 *    prefetches what the caller's hint says it reads first in the next
 *    one, while the caller works alone in between (k_next_*).
 */
#include "engine.h"
#include "kernels.h"
#include "kernels_act.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

/* IEEE binary16, round to nearest even (subnormals, overflow to inf). */
uint16_t k_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000, ax = x & 0x7fffffff;
    if (ax >= 0x7f800000)
        return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
    if (ax >= 0x477ff000) /* 65520 and up round to inf */
        return (uint16_t)(sign | 0x7c00);
    if (ax < 0x38800000) { /* under 2^-14: a multiple of 2^-24 */
        float a;
        memcpy(&a, &ax, 4);
        return (uint16_t)(sign | (uint32_t)lrintf(a * 16777216.0f));
    }
    uint32_t r = ax - 0x38000000; /* exponent bias 127 -> 15 */
    r += 0xfff + ((r >> 13) & 1);
    return (uint16_t)(sign | (r >> 13));
}

float k_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0) {
        const float f = (float)m * 5.9604644775390625e-8f; /* 2^-24 */
        return sign ? -f : f;
    }
    const uint32_t bits = sign | (e == 31 ? 0x7f800000 | m << 13 : (e + 112) << 23 | m << 13);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#define GRP K_I8_GROUP
static size_t n_groups(int cols) { return ((size_t)cols + GRP - 1) / GRP; }
static size_t n_blocks(int rows) { return ((size_t)rows + K_ROWS - 1) / K_ROWS; }
static int imin(int a, int b) { return a < b ? a : b; }

/* Bytes of one packed block's weights (scales apart). */
static size_t block_bytes(const k_wmat *W)
{
    switch (W->fmt) {
    case K_W_F32: return (size_t)W->kp * K_ROWS * 4;
    case K_W_BF16: return (size_t)W->kp * K_ROWS * 2;
    case K_W_I8: return (size_t)W->kp * K_ROWS;
    case K_W_Q4: return (size_t)W->kp * K_ROWS / 2;
    }
    return 0;
}

size_t k_wmat_bytes(const k_wmat *W)
{
    if (!W->packed) {
        const size_t n = (size_t)W->rows * (size_t)W->cols;
        return W->fmt == K_W_F32    ? n * 4
               : W->fmt == K_W_BF16 ? n * 2
                                    : n + (size_t)W->rows * n_groups(W->cols) * sizeof(float);
    }
    const size_t nb = n_blocks(W->rows), ng = n_groups(W->cols);
    size_t b = nb * block_bytes(W);
    if (W->fmt == K_W_I8)
        b += nb * ng * K_ROWS * sizeof(float);
    if (W->fmt == K_W_Q4)
        b += nb * ng * K_ROWS * sizeof(uint16_t);
    return b;
}

static void *zalloc64(size_t bytes)
{
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p)
        memset(p, 0, bytes);
    return p;
}

/* Chunks of address space in 2 MB pages, handed out front to back. */
#define HUGE_PAGE ((size_t)2 << 20)
#define ARENA_CHUNK ((size_t)32 << 20)
struct k_arena {
    struct arena_chunk {
        struct arena_chunk *next;
        char *base;
        size_t size, used;
    } *chunks;
};

k_arena *k_arena_new(void) { return calloc(1, sizeof(k_arena)); }

void k_arena_free(k_arena *a)
{
    if (!a)
        return;
    for (struct arena_chunk *c = a->chunks, *n; c; c = n) {
        n = c->next;
        free(c->base);
        free(c);
    }
    free(a);
}

/* bytes zeroed, 64-byte aligned, from a's current chunk or a new one (the
 * rest of the old one stays unused: untouched, it costs no memory). */
static void *arena_zalloc(k_arena *a, size_t bytes)
{
    bytes = (bytes + 63) & ~(size_t)63;
    struct arena_chunk *c = a->chunks;
    if (!c || c->size - c->used < bytes) {
        const size_t size = bytes > ARENA_CHUNK ? (bytes + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1)
                                                : ARENA_CHUNK;
        if (!(c = calloc(1, sizeof *c)) || !(c->base = aligned_alloc(HUGE_PAGE, size))) {
            free(c);
            return NULL;
        }
        madvise(c->base, size, MADV_HUGEPAGE); /* advice only: 4 KB pages still work */
        c->size = size;
        c->next = a->chunks;
        a->chunks = c;
    }
    void *p = c->base + c->used;
    c->used += bytes;
    memset(p, 0, bytes);
    return p;
}

static void *wmat_zalloc(k_arena *a, size_t bytes)
{
    return a ? arena_zalloc(a, bytes) : zalloc64(bytes);
}

int k_wmat_alloc(k_wmat *W, k_wfmt fmt, int rows, int cols)
{
    return k_wmat_alloc_in(W, NULL, fmt, rows, cols);
}

int k_wmat_alloc_in(k_wmat *W, k_arena *a, k_wfmt fmt, int rows, int cols)
{
    memset(W, 0, sizeof *W);
    W->in_arena = a != NULL;
    W->fmt = fmt;
    W->rows = rows;
    W->cols = cols;
    W->packed = 1;
    W->kp = fmt == K_W_F32 ? cols : fmt == K_W_BF16 ? (cols + 1) & ~1 : (int)n_groups(cols) * GRP;
    const size_t nb = n_blocks(rows), ng = n_groups(cols);
    W->data = wmat_zalloc(a, nb * block_bytes(W));
    if (fmt == K_W_I8)
        W->scales = wmat_zalloc(a, nb * ng * K_ROWS * sizeof(float));
    if (fmt == K_W_Q4)
        W->hscales = wmat_zalloc(a, nb * ng * K_ROWS * sizeof(uint16_t));
    if (!W->data || (fmt == K_W_I8 && !W->scales) || (fmt == K_W_Q4 && !W->hscales)) {
        k_wmat_free(W);
        return -1;
    }
    if (fmt == K_W_I8) /* q = 0 everywhere, padding included */
        memset(W->data, 128, nb * block_bytes(W));
    return 0;
}

int k_wmat_alloc_plain(k_wmat *W, k_wfmt fmt, int rows, int cols)
{
    memset(W, 0, sizeof *W);
    if (fmt == K_W_Q4)
        return -1;
    W->fmt = fmt;
    W->rows = rows;
    W->cols = cols;
    W->kp = cols;
    const size_t n = (size_t)rows * (size_t)cols;
    W->data = zalloc64(n * (fmt == K_W_F32 ? 4 : fmt == K_W_BF16 ? 2 : 1));
    if (fmt == K_W_I8)
        W->scales = zalloc64((size_t)rows * n_groups(cols) * sizeof(float));
    if (!W->data || (fmt == K_W_I8 && !W->scales)) {
        k_wmat_free(W);
        return -1;
    }
    return 0;
}

/* Loading a model quantizes every weight, so the loops below use SSE2, which
 * every x86-64 has, four values at a time (0.4B to q4: 44% of a one-thread
 * load in scalar loops). They give the bits of the scalar definitions:
 * maxps keeps its second operand when the first is a NaN, as fmaxf ignores
 * one, and cvtps2dq rounds to nearest even like lrintf. Out of range (a NaN,
 * or an infinite inv when a group's largest value is subnormal) it gives
 * INT_MIN where lrintf gives LONG_MIN: the same low byte for int8 and the
 * same clamp to 0 for q4. In range are all others: |s * inv| <= 127 for
 * int8, about 12 for q4. */

/* max |s[i]|, NaNs ignored; 0 when none is larger. */
static float amax_of(const float *s, int n)
{
    const __m128 abs = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    __m128 m4 = _mm_setzero_ps();
    int i = 0;
    for (; i + 4 <= n; i += 4)
        m4 = _mm_max_ps(_mm_and_ps(_mm_loadu_ps(s + i), abs), m4);
    float l[4], m = 0;
    _mm_storeu_ps(l, m4);
    for (int k = 0; k < 4; k++)
        m = l[k] > m ? l[k] : m;
    for (; i < n; i++)
        m = fabsf(s[i]) > m ? fabsf(s[i]) : m;
    return m;
}

/* rint(s[i] * inv) for i < n into v (n a multiple of 4, v 16-byte aligned). */
static void rint_scaled(const float *s, int n, float inv, __m128i *v)
{
    const __m128 iv = _mm_set1_ps(inv);
    for (int i = 0; i < n; i += 4)
        v[i / 4] = _mm_cvtps_epi32(_mm_mul_ps(_mm_loadu_ps(s + i), iv));
}

/* Symmetric int8 of n values: returns the scale, q[i] in -127..127. */
static float quant_i8(const float *s, int n, int8_t *q)
{
    const float amax = amax_of(s, n), inv = amax > 0 ? 127.0f / amax : 0;
    int i = 0;
    if (n >= 16) {
        __m128i v[GRP / 4];
        const __m128i lo8 = _mm_set1_epi32(0xff);
        for (; i + 16 <= n; i += 16) { /* (int8_t) of the rounded value: its low byte */
            rint_scaled(s + i, 16, inv, v);
            const __m128i a = _mm_packs_epi32(_mm_and_si128(v[0], lo8), _mm_and_si128(v[1], lo8)),
                          b = _mm_packs_epi32(_mm_and_si128(v[2], lo8), _mm_and_si128(v[3], lo8));
            _mm_storeu_si128((__m128i *)(q + i), _mm_packus_epi16(a, b));
        }
    }
    for (; i < n; i++)
        q[i] = (int8_t)lrintf(s[i] * inv);
    return amax / 127.0f;
}

/* Symmetric 4-bit of n values: w ~ scale * (q - 8), q in 0..15. The scale
 * is signed, so that the value of largest magnitude is exact (q = 0) and
 * the other side gets seven steps; it is rounded to fp16 first, and q chosen
 * against the rounded scale. No offset: on the default model it measured
 * 2.3542 bits/byte against 2.3558 with an fp16 minimum per group (f32
 * 2.3403), a group is 34 bytes instead of 36, and the kernels take the -8
 * off the integer sums instead of an fp32 step (docs/PERFORMANCE.md,
 * "Formats"). */
static void quant_q4(const float *s, int n, uint8_t *q, uint16_t *scale)
{
    /* big: the first value of largest magnitude (NaNs never are) */
    const float m = amax_of(s, n);
    float big = 0;
    for (int i = 0; m > 0 && i < n; i++)
        if (fabsf(s[i]) == m) {
            big = s[i];
            break;
        }
    *scale = k_f32_to_f16(big / -8.0f);
    const float sc = k_f16_to_f32(*scale), inv = sc != 0 ? 1.0f / sc : 0;
    int i = 0;
    if (n >= 16) {
        __m128i v[GRP / 4];
        const __m128i eight = _mm_set1_epi16(8), zero = _mm_setzero_si128(),
                      fifteen = _mm_set1_epi16(15);
        for (; i + 16 <= n; i += 16) { /* int16 saturation keeps the clamp's result */
            rint_scaled(s + i, 16, inv, v);
            __m128i a = _mm_adds_epi16(_mm_packs_epi32(v[0], v[1]), eight),
                    b = _mm_adds_epi16(_mm_packs_epi32(v[2], v[3]), eight);
            a = _mm_min_epi16(_mm_max_epi16(a, zero), fifteen);
            b = _mm_min_epi16(_mm_max_epi16(b, zero), fifteen);
            _mm_storeu_si128((__m128i *)(q + i), _mm_packus_epi16(a, b));
        }
    }
    for (; i < n; i++) {
        const long v = lrintf(s[i] * inv) + 8;
        q[i] = (uint8_t)(v < 0 ? 0 : v > 15 ? 15 : v);
    }
}

/* Byte offset of (row i of the block, column c) inside a packed I8/Q4
 * block's group g (c is the column within the group); Q4 also says which
 * nibble. */
static size_t i8_off(int i, int c) { return (size_t)(c / 4) * 64 + (size_t)i * 4 + (size_t)(c % 4); }
static size_t q4_off(int i, int c, int *high)
{
    const int quad = c / 4;
    *high = quad >= 8;
    return (size_t)(quad % 8) * 64 + (size_t)i * 4 + (size_t)(c % 4);
}

static void set_rows_plain(k_wmat *W, int r0, int r1, const float *src)
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
        for (int r = r0; r < r1; r++)
            for (size_t k = 0; k < g; k++) {
                const size_t c0 = k * GRP, c1 = c0 + GRP < cols ? c0 + GRP : cols;
                W->scales[(size_t)r * g + k] =
                    quant_i8(src + (size_t)(r - r0) * cols + c0, (int)(c1 - c0),
                             (int8_t *)W->data + (size_t)r * cols + c0);
            }
    }
}

#define SET_RUN 256

/* bf16 values h of columns [c0, c0 + n) (c0 even) into row i of a packed
 * BF16 block d, by pairs. */
static void set_bf16_pairs(uint16_t *d, int i, const uint16_t *h, int c0, int n)
{
    for (int c = 0; c + 1 < n; c += 2)
        memcpy(d + ((size_t)(c0 + c) / 2 * K_ROWS + i) * 2, h + c, 4);
    if (n & 1) /* an odd last column: its pair's second half stays zero */
        d[((size_t)(c0 + n - 1) / 2 * K_ROWS + i) * 2] = h[n - 1];
}

/* A bf16 value as f32_to_bf16 returns it from its fp32 widening: the same
 * bits, with a NaN's quiet bit set. */
static inline uint16_t bf16_quieted(uint16_t h)
{
    return (h & 0x7fff) > 0x7f80 ? (uint16_t)(h | 0x40) : h;
}

/* Columns [c0, c0 + n) of row i of packed block blk (at base), from fp32
 * row s or, for BF16, from the bf16 bytes of row s16 (when not NULL); for
 * I8 / Q4 c0 is a multiple of GRP. */
static void set_run(const k_wmat *W, char *base, size_t blk, int i, const float *s,
                    const uint8_t *s16, int c0, int n)
{
    if (W->fmt == K_W_F32) {
        float *d = (float *)base;
        for (int c = c0; c < c0 + n; c++)
            d[(size_t)c * K_ROWS + i] = s[c];
    } else if (W->fmt == K_W_BF16) {
        /* rounded in a run (loops GCC vectorizes), then stored by pairs */
        uint16_t h[SET_RUN];
        if (s16) {
            memcpy(h, s16 + (size_t)c0 * 2, (size_t)n * 2);
            for (int c = 0; c < n; c++)
                h[c] = bf16_quieted(h[c]);
        } else {
            for (int c = 0; c < n; c++)
                h[c] = f32_to_bf16(s[c0 + c]);
        }
        set_bf16_pairs((uint16_t *)base, i, h, c0, n);
    } else {
        const size_t ng = n_groups(W->cols);
        for (int c0g = c0; c0g < c0 + n; c0g += GRP) {
            const size_t g = (size_t)c0g / GRP, si = (blk * ng + g) * K_ROWS + (size_t)i;
            const int m = imin(GRP, c0 + n - c0g);
            if (W->fmt == K_W_I8) {
                int8_t q[GRP];
                uint8_t u[GRP];
                W->scales[si] = quant_i8(s + c0g, m, q);
                for (int c = 0; c < m; c++)
                    u[c] = (uint8_t)(q[c] + 128);
                uint8_t *d = (uint8_t *)base + g * GRP * K_ROWS;
                for (int c = 0; c < (m & ~3); c += 4) /* a quad of this row: 4 bytes */
                    memcpy(d + i8_off(i, c), u + c, 4);
                for (int c = m & ~3; c < m; c++)
                    d[i8_off(i, c)] = u[c];
            } else {
                uint8_t q[GRP] = {0}, pair[GRP / 2];
                quant_q4(s + c0g, m, q, &W->hscales[si]);
                /* column c in the low nibble, c + 32 in the high one */
                for (int c = 0; c < GRP / 2; c++)
                    pair[c] = (uint8_t)(q[c] | q[c + GRP / 2] << 4);
                uint8_t *d = (uint8_t *)base + g * GRP * K_ROWS / 2;
                for (int c = 0; c < GRP / 2; c += 4) {
                    int high;
                    memcpy(d + q4_off(i, c, &high), pair + c, 4);
                }
            }
        }
    }
}

/* Rows [r0, r1) of packed W from fp32 src (cols apart) or bf16 bytes s16
 * (stride values apart). A block's rows share its cache lines (a line holds
 * one column, pair or quad of its 16 rows), so the block's rows are written
 * together, SET_RUN columns at a time, while their lines are in L1. Row by
 * row, a 2048-wide bf16 block spanned 128 KB per row: loading a 1.5B bf16
 * model spent 25% of its CPU time here. */
static void set_rows_packed(k_wmat *W, int r0, int r1, const float *src, const uint8_t *s16,
                            size_t stride)
{
    const int cols = W->cols;
    const size_t bb = block_bytes(W);
    for (int rb = r0; rb < r1; rb = (rb / K_ROWS + 1) * K_ROWS) {
        const size_t blk = (size_t)rb / K_ROWS;
        const int re = imin(r1, (int)(blk + 1) * K_ROWS);
        char *base = (char *)W->data + blk * bb;
        for (int c0 = 0; c0 < cols; c0 += SET_RUN)
            for (int r = rb; r < re; r++)
                set_run(W, base, blk, r % K_ROWS, src ? src + (size_t)(r - r0) * cols : NULL,
                        s16 ? s16 + (size_t)(r - r0) * stride * 2 : NULL, c0,
                        imin(SET_RUN, cols - c0));
    }
}

void k_wmat_set_rows(k_wmat *W, int r0, int r1, const float *src)
{
    if (W->packed)
        set_rows_packed(W, r0, r1, src, NULL, 0);
    else
        set_rows_plain(W, r0, r1, src);
}

void k_wmat_set_rows_bf16(k_wmat *W, int r0, int r1, const void *src, size_t stride)
{
    const uint8_t *s8 = src; /* a file's bytes: no alignment promised */
    if (W->packed) {
        set_rows_packed(W, r0, r1, NULL, s8, stride);
        return;
    }
    const size_t cols = (size_t)W->cols;
    uint16_t *d = W->data;
    for (int r = r0; r < r1; r++) {
        memcpy(d + (size_t)r * cols, s8 + (size_t)(r - r0) * stride * 2, cols * 2);
        for (size_t c = 0; c < cols; c++)
            d[(size_t)r * cols + c] = bf16_quieted(d[(size_t)r * cols + c]);
    }
}

int k_wmat_init(k_wmat *W, k_wfmt fmt, int rows, int cols, const float *src)
{
    return k_wmat_init_in(W, NULL, fmt, rows, cols, src);
}

int k_wmat_init_in(k_wmat *W, k_arena *a, k_wfmt fmt, int rows, int cols, const float *src)
{
    if (k_wmat_alloc_in(W, a, fmt, rows, cols))
        return -1;
    k_wmat_set_rows(W, 0, rows, src);
    return 0;
}

void k_wmat_free(k_wmat *W)
{
    if (!W->in_arena) {
        free(W->data);
        free(W->scales);
        free(W->hscales);
    }
    W->data = NULL;
    W->scales = NULL;
    W->hscales = NULL;
}

/* Weight (r, c) of a packed matrix, as the format holds it. */
static float packed_at(const k_wmat *W, int r, int c)
{
    const size_t blk = (size_t)r / K_ROWS, ng = n_groups(W->cols);
    const int i = r % K_ROWS;
    const char *base = (const char *)W->data + blk * block_bytes(W);
    switch (W->fmt) {
    case K_W_F32: return ((const float *)base)[(size_t)c * K_ROWS + i];
    case K_W_BF16:
        return bf16_to_f32(((const uint16_t *)base)[((size_t)(c / 2) * K_ROWS + i) * 2 + (c & 1)]);
    case K_W_I8: {
        const size_t g = (size_t)c / GRP;
        const uint8_t *d = (const uint8_t *)base + g * GRP * K_ROWS;
        return (float)((int)d[i8_off(i, c % GRP)] - 128) * W->scales[(blk * ng + g) * K_ROWS + i];
    }
    case K_W_Q4: {
        const size_t g = (size_t)c / GRP, si = (blk * ng + g) * K_ROWS + i;
        const uint8_t *d = (const uint8_t *)base + g * GRP * K_ROWS / 2;
        int high;
        const uint8_t v = d[q4_off(i, c % GRP, &high)];
        return (float)((high ? v >> 4 : v & 15) - 8) * k_f16_to_f32(W->hscales[si]);
    }
    }
    return 0;
}

void k_wmat_rows(const k_wmat *W, int r0, int r1, float *dst)
{
    const size_t C = (size_t)W->cols;
    if (W->packed) {
        for (int r = r0; r < r1; r++)
            for (int c = 0; c < W->cols; c++)
                dst[(size_t)(r - r0) * C + c] = packed_at(W, r, c);
        return;
    }
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
                    q[(size_t)r * C + c] * W->scales[(size_t)r * g + c / GRP];
    }
}

void k_wmat_row(const k_wmat *W, int r, float *dst) { k_wmat_rows(W, r, r + 1, dst); }

void k_wmat_panel(const k_wmat *W, int r0, int r1, float *dst)
{
    const int n = r1 - r0, cols = W->cols;
    const size_t bb = block_bytes(W);
    for (int rb = r0; rb < r1; rb += K_ROWS) {
        const int nr = imin(K_ROWS, r1 - rb), o = rb - r0;
        const char *base = (const char *)W->data + (size_t)(rb / K_ROWS) * bb;
        if (W->fmt == K_W_F32) {
            for (int c = 0; c < cols; c++)
                memcpy(dst + (size_t)c * n + o, (const float *)base + (size_t)c * K_ROWS,
                       (size_t)nr * 4);
        } else if (W->fmt == K_W_BF16) {
            const uint16_t *s = (const uint16_t *)base;
            for (int c = 0; c < cols; c++) {
                const uint16_t *p = s + (size_t)(c / 2) * K_ROWS * 2 + (c & 1);
                float *d = dst + (size_t)c * n + o;
                for (int i = 0; i < nr; i++)
                    d[i] = bf16_to_f32(p[2 * i]);
            }
        } else {
            for (int c = 0; c < cols; c++)
                for (int i = 0; i < nr; i++)
                    dst[(size_t)c * n + o + i] = packed_at(W, rb + i, c);
        }
    }
}

/* ======================================================================== */
/* Activations prepared once per product                                     */

static _Thread_local struct tbufs {
    void *p[K_TBUFS];
    size_t cap[K_TBUFS];
} tbufs;
static pthread_key_t tbuf_key;
static pthread_once_t tbuf_once = PTHREAD_ONCE_INIT;

/* Runs at thread exit with this thread's tbufs (still valid then). */
static void tbufs_free(void *arg)
{
    struct tbufs *t = arg;
    for (int i = 0; i < K_TBUFS; i++)
        free(t->p[i]);
}
static void tbuf_key_make(void) { pthread_key_create(&tbuf_key, tbufs_free); }

void *k_tbuf(int which, size_t bytes)
{
    struct tbufs *t = &tbufs;
    if (bytes <= t->cap[which])
        return t->p[which];
    pthread_once(&tbuf_once, tbuf_key_make);
    void *p = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!p)
        return NULL;
    free(t->p[which]);
    t->p[which] = p;
    t->cap[which] = bytes;
    pthread_setspecific(tbuf_key, t); /* non-NULL, so the destructor runs */
    return p;
}

/* Static: clang (the fuzz build) gives an exported target_clones function
 * no symbol of its plain name for other files to link against. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static void add_into(float *restrict x, const float *restrict y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

void k_add_into(float *restrict x, const float *restrict y, size_t n) { add_into(x, y, n); }

/* One group of activations to int8 (symmetric, round to nearest even, as
 * quant_i8), with the integer sum of the group; written in
 * 16-lane loops so each clone vectorizes it (a prefill chunk quantizes
 * T x cols inputs per product). Returns the scale. */
__attribute__((target_clones("avx512f", "avx2", "default")))
static float quant_group(const float *x, int n, int8_t *q, int32_t *qsum)
{
    enum { LANES = 16 };
    float m[LANES] = {0};
    int32_t qs[LANES] = {0};
    const int n16 = n & ~(LANES - 1);
    for (int i0 = 0; i0 < n16; i0 += LANES)
        for (int l = 0; l < LANES; l++) {
            const float v = x[i0 + l] < 0 ? -x[i0 + l] : x[i0 + l];
            m[l] = v > m[l] ? v : m[l];
        }
    float amax = 0;
    for (int l = 0; l < LANES; l++)
        amax = m[l] > amax ? m[l] : amax;
    for (int i = n16; i < n; i++) {
        const float v = fabsf(x[i]);
        amax = v > amax ? v : amax;
    }
    const float inv = amax > 0 ? 127.0f / amax : 0;
    /* Adding and removing 1.5 * 2^23 rounds to nearest even (|x * inv| <= 127). */
    for (int i0 = 0; i0 < n16; i0 += LANES)
        for (int l = 0; l < LANES; l++) {
            const int v = (int)((x[i0 + l] * inv + 12582912.0f) - 12582912.0f);
            q[i0 + l] = (int8_t)v;
            qs[l] += v;
        }
    int32_t t = 0;
    for (int l = 0; l < LANES; l++)
        t += qs[l];
    for (int i = n16; i < n; i++) {
        const int v = (int)((x[i] * inv + 12582912.0f) - 12582912.0f);
        q[i] = (int8_t)v;
        t += v;
    }
    *qsum = t;
    return amax / 127.0f;
}

static int avx512_on; /* the set in use is AVX-512 class; set with it */
static int fma_on;    /* the set in use has AVX2 and FMA (all but scalar); set with it */
static int dbf_wide;  /* its bf16 compute reads act.xr (PASS_DBF_WIDE); set with it */

/* quant_group for n whole groups of 64 of one row on AVX-512 (scale xs[g],
 * integer sum times off in xoff[g]): the same operations in the same
 * order (lane-wise max over the four vectors, rounding by the same
 * 1.5 * 2^23 trick), so its results equal the portable code's bit for bit;
 * the auto-vectorized clone spent most of its time in the reductions, and
 * quantizing was a sixth of a prefill. One call per row, not per group
 * (with a memset and a store-and-reload per group): 0.44-0.51 -> 0.24-0.28
 * ns per input, in the model a batch-of-8 step 2.6-4.1% faster. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void quant_groups64_avx512(const float *x, size_t n, int8_t *q, float *xs, int32_t *xoff,
                                  int32_t off)
{
    for (size_t g = 0; g < n; g++, x += 64, q += 64) {
        const __m512 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16),
                     v2 = _mm512_loadu_ps(x + 32), v3 = _mm512_loadu_ps(x + 48);
        const __m512 m = _mm512_max_ps(
            _mm512_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)), _mm512_abs_ps(v2)),
            _mm512_abs_ps(v3));
        const float amax = _mm512_reduce_max_ps(m);
        const float inv = amax > 0 ? 127.0f / amax : 0;
        const __m512 vi = _mm512_set1_ps(inv), magic = _mm512_set1_ps(12582912.0f);
        const __m512 src[4] = {v0, v1, v2, v3};
        __m512i qs = _mm512_setzero_si512();
        for (int k = 0; k < 4; k++) {
            const __m512 r = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(src[k], vi), magic), magic);
            const __m512i v = _mm512_cvttps_epi32(r);
            qs = _mm512_add_epi32(qs, v);
            _mm_storeu_si128((__m128i *)(q + 16 * k), _mm512_cvtepi32_epi8(v));
        }
        xoff[g] = _mm512_reduce_add_epi32(qs) * off;
        xs[g] = amax / 127.0f;
    }
}

/* The same for the AVX2 sets (whose clone of quant_group took 10-12% of a
 * q4 batch step): eight lanes; the maximum as the portable loop takes it
 * (maxps(|x|, m) skips a NaN as its comparison does), each int32's low
 * byte as its cast keeps it. */
__attribute__((target("avx2")))
static void quant_groups64_avx2(const float *x, size_t n, int8_t *q, float *xs, int32_t *xoff,
                                int32_t off)
{
    const __m256 sign = _mm256_set1_ps(-0.0f), magic = _mm256_set1_ps(12582912.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    /* Each 128-bit lane's four low bytes into its first dword. */
    const __m256i low = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                         -1, -1);
    for (size_t g = 0; g < n; g++, x += 64, q += 64) {
        __m256 v[8], m = _mm256_setzero_ps();
        for (int k = 0; k < 8; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        const float amax = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
        const float inv = amax > 0 ? 127.0f / amax : 0;
        const __m256 vi = _mm256_set1_ps(inv);
        __m256i qs = _mm256_setzero_si256(), b[8];
        for (int k = 0; k < 8; k++) {
            const __m256 r = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(v[k], vi), magic), magic);
            const __m256i i = _mm256_cvttps_epi32(r);
            qs = _mm256_add_epi32(qs, i);
            b[k] = _mm256_shuffle_epi8(i, low);
        }
        for (int k = 0; k < 8; k += 4) { /* per lane: dword j of vector k + j */
            const __m256i d = _mm256_unpacklo_epi64(_mm256_unpacklo_epi32(b[k], b[k + 1]),
                                                    _mm256_unpacklo_epi32(b[k + 2], b[k + 3]));
            _mm256_storeu_si256((__m256i *)(q + 8 * k), _mm256_permutevar8x32_epi32(d, order));
        }
        __m128i t = _mm_add_epi32(_mm256_castsi256_si128(qs), _mm256_extracti128_si256(qs, 1));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(1, 0, 3, 2)));
        t = _mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1)));
        xoff[g] = _mm_cvtsi128_si32(t) * off;
        xs[g] = amax / 127.0f;
    }
}

#define PREP512 __attribute__((target("avx512f,avx512bw,avx512vl")))
/* Sixteen floats to bf16 as f32_to_bf16 rounds them (in integers, so
 * denormals and NaNs too), for the pairs bf16 compute reads. */
PREP512 static __m256i bf16x16(const float *x)
{
    const __m512i u = _mm512_loadu_si512(x);
    const __m512i r = _mm512_srli_epi32(
        _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                         _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
        16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    const __m512i n = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
    return _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, n));
}

/* The whole blocks of 16 pairs among the np of one row from x; returns how
 * many pairs it wrote (the caller rounds the rest). */
PREP512 static int bf16_pairs(const float *x, uint32_t *d, int np)
{
    int p = 0;
    for (; p + 16 <= np; p += 16) {
        _mm256_storeu_si256((__m256i *)(d + p), bf16x16(x + 2 * p));
        _mm256_storeu_si256((__m256i *)(d + p + 8), bf16x16(x + 2 * p + 16));
    }
    return p;
}

/* The exact formats read the fp32 inputs as given: nothing to prepare. */
static int inputs_as_given(const k_wmat *W)
{
    return W->fmt == K_W_F32 || (W->fmt == K_W_BF16 && !W->dot_bf16);
}

/* Scratch bytes act_prepare needs for B rows of inputs to W (64-byte
 * multiples, so several products' share one buffer aligned). */
static size_t act_bytes(const k_wmat *W, int B)
{
    if (inputs_as_given(W))
        return 0;
    if (W->fmt == K_W_BF16)
        return ((size_t)B * (size_t)W->kp * (dbf_wide ? 4 : 2) + 63) & ~(size_t)63;
    const size_t qbytes = ((size_t)B * (size_t)W->kp + 63) & ~(size_t)63;
    return (qbytes + (size_t)B * n_groups(W->cols) * 8 + 63) & ~(size_t)63;
}

/* Where act_bytes(W, B)'s buffer holds the prepared inputs: bf16 pairs
 * (xb) or their widening (xr), or int8 inputs (xq), their scales (xs) and
 * offset sums (xoff). */
typedef struct {
    uint32_t *xb;
    float *xr;
    int8_t *xq;
    float *xs;
    int32_t *xoff;
} act_buf;

static act_buf act_parts(const k_wmat *W, int B, void *buf)
{
    act_buf p = {0};
    if (inputs_as_given(W) || !buf)
        return p;
    if (W->fmt == K_W_BF16) {
        if (dbf_wide)
            p.xr = buf;
        else
            p.xb = buf;
        return p;
    }
    const size_t qbytes = ((size_t)B * (size_t)W->kp + 63) & ~(size_t)63;
    p.xq = buf;
    p.xs = (float *)((char *)buf + qbytes);
    p.xoff = (int32_t *)(p.xs + (size_t)B * n_groups(W->cols));
    return p;
}

/* Rows [b0, b1) of X's prepared forms in buf (rows are independent, so a
 * prefill chunk's are filled by several threads at once). */
static void act_fill_rows(const k_wmat *W, const float *X, int B, void *buf, int b0, int b1)
{
    const act_buf p = act_parts(W, B, buf);
    const int K = W->cols;
    const size_t kp = (size_t)W->kp, G = n_groups(K);
    if (p.xr) {
        for (int b = b0; b < b1; b++) {
            const float *x = X + (size_t)b * K;
            float *d = p.xr + (size_t)b * kp;
            for (int c = 0; c < K; c++)
                d[c] = bf16_to_f32(f32_to_bf16(x[c]));
            for (size_t c = (size_t)K; c < kp; c++)
                d[c] = 0.0f;
        }
        return;
    }
    if (p.xb) {
        for (int b = b0; b < b1; b++) {
            const float *x = X + (size_t)b * K;
            uint32_t *d = p.xb + (size_t)b * kp / 2;
            for (int q = avx512_on ? bf16_pairs(x, d, K / 2) : 0; q < W->kp / 2; q++) {
                const uint32_t lo = f32_to_bf16(x[2 * q]);
                const uint32_t hi = 2 * q + 1 < K ? f32_to_bf16(x[2 * q + 1]) : 0;
                d[q] = lo | hi << 16;
            }
        }
        return;
    }
    if (!p.xq)
        return;
    const int32_t off = W->fmt == K_W_Q4 ? 8 : 128; /* the weights are held as q + off */
    const size_t whole = fma_on ? (size_t)K / GRP : 0; /* fma_on: AVX2 or AVX-512 */
    for (int b = b0; b < b1; b++) {
        const size_t i0 = (size_t)b * G;
        if (whole && avx512_on)
            quant_groups64_avx512(X + (size_t)b * K, whole, p.xq + (size_t)b * kp, p.xs + i0,
                                  p.xoff + i0, off);
        else if (whole)
            quant_groups64_avx2(X + (size_t)b * K, whole, p.xq + (size_t)b * kp, p.xs + i0,
                                p.xoff + i0, off);
        for (size_t g = whole; g < G; g++) {
            const int c0 = (int)g * GRP, n = imin(GRP, K - c0);
            int8_t *q = p.xq + (size_t)b * kp + c0;
            p.xs[i0 + g] = quant_group(X + (size_t)b * K + c0, n, q, &p.xoff[i0 + g]);
            p.xoff[i0 + g] *= off;
            memset(q + n, 0, (size_t)(GRP - n));
        }
    }
}

/* Points a at B rows of X and their prepared forms in buf (act_bytes(W, B)
 * bytes), which act_fill_rows fills. */
static void act_setup(act *a, const k_wmat *W, const float *X, int B, void *buf)
{
    const act_buf p = act_parts(W, B, buf);
    *a = (act){.x = X, .ldx = (size_t)W->cols, .xb = p.xb, .xr = p.xr, .xq = p.xq, .xs = p.xs,
               .xoff = p.xoff, .kp = (size_t)W->kp, .G = n_groups(W->cols)};
}

/* act_setup, then every row filled by the caller. */
static void act_prepare(act *a, const k_wmat *W, const float *X, int B, void *buf)
{
    act_setup(a, W, X, B, buf);
    act_fill_rows(W, X, B, buf, 0, B);
}

/* ======================================================================== */
/* The kernel bodies                                                         */
/*
 * Vector vocabulary each ISA defines (VT: 16 fp32 lanes, one per row of a
 * block; IT: 16 int32 lanes):
 *   VZERO() VLOAD(p) VSET1(f) VFMA(a, b, c) = a*b + c, VMUL(a, b)
 *   VPAIR(p, e, o)      64 bytes of bf16 pairs -> even / odd column (exact)
 *   VBW, VBLOAD(p), VDPBF(acc, w, pair)   bf16 dot product of a pair (not AVX2:
 *                       its bf16 compute is PASS_DBF_WIDE's)
 *   VSTORE(acc, y, nr, beta)   y[i] = beta*y[i] + acc[i] for i < nr
 *   IZERO() ICVT(i) IADD(a, b)
 *   IW8, ILOAD8(p), IDOT8(acc, w, x4), IFIX8(acc, xoff)  int8: sum q*x
 *   IWU, IQ4(p, lo, hi), IDOTU(acc, w, x4), IFIX4(acc, xoff)  q4: sum (q-8)*x
 * IFIX* remove the weights' offset where the sums carry it (xoff, act).
 *   IGROUP_OK(q4), IQ4GROUP / II8GROUP(NB, wg, xr, c, nta, sums)  where the set
 *                       has one, a routine for a whole group's integer sums
 * x4 is four int8 inputs packed in an int32 (little-endian column order).
 * Sequences go NB at a time through a block (NB a constant, so the
 * accumulators stay in registers); NBMAX per ISA from the register count.
 */
#define UNROLL _Pragma("GCC unroll 8")
/* Weights are streamed once per product; asking for the line PF_AHEAD bytes
 * ahead keeps enough misses in flight while the FMAs of a batch run (the
 * hardware prefetchers alone left a batch of 8 at 1.6x a single step).
 * On AMD the prefetches are non-temporal, so that a step's weights do not
 * push the sequences' recurrent states out of the last-level cache: on
 * Zen 5 the heads of a 0.1B batch of 8 (18 MB of state) took 0.41 ms
 * instead of 0.48. Elsewhere they fetch into L1 (T0): on Intel
 * (Emerald Rapids) a non-temporal prefetch skips the L2 and its streamer,
 * so only the core's fill buffers carry the stream, and single 0.4B steps
 * took 1.4-2.3x as long with it (int8 27.2 -> 17.2 ms, q4 13.6 -> 10.1,
 * bf16 53 -> 35, f32 133 -> 57; T1 measured 2-5% behind T0). Every kernel
 * is compiled with both hints (BLOCKS) and pf_nta picks one per call.
 * Passes of two or more sequences ask twice as far ahead: their arithmetic
 * per weight byte grows with the batch, so the core's instruction window
 * reaches fewer bytes past the loads and the prefetches must carry the
 * stream (Zen 5, 4 KB against 2 KB: steps of 2-8 sequences 0.84-1.01 in
 * every format, most 0.93-0.98; prefill unchanged). A single sequence
 * keeps 2 KB: 4 KB measured 0.95-0.98 on a quiet machine and 1.07 on a
 * busy one (0.4B q4). */
#ifndef PF_AHEAD
#define PF_AHEAD 2048
#endif
#ifndef PF_AHEAD_BATCH
#define PF_AHEAD_BATCH 4096
#endif
/* The weights ahead of p for a pass of NB sequences. Always inlined: GCC
 * takes a function of prefetches alone for one without effects and drops
 * its calls. */
static inline __attribute__((always_inline)) void prefetch_ahead(const void *p, int NB, int nta)
{
    const char *pf = (const char *)p + (NB >= 2 ? PF_AHEAD_BATCH : PF_AHEAD);
    if (nta)
        __builtin_prefetch(pf, 0, 0);
    else
        __builtin_prefetch(pf, 0, 3);
}
/* PF_NTA is an enumerator of the enclosing BLOCKS branch. */
#define PREFETCH(p, NB) prefetch_ahead(p, NB, PF_NTA)

static int pf_nta; /* chosen with the instruction set; read-only afterwards (tests aside) */

static inline int32_t x4_of(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* X_ROWS declares the pass's per-sequence input pointers xr; X4 reads
 * inputs [c, c + 4) of the pass's sequence q. Passes of 8 sequences (the
 * AVX-512 kernels') read them through a pointer per sequence set up before
 * the loop: with the address computed from the batch index, GCC kept one
 * int8 sum of the 2 x 8 loop on the stack, a store-to-load chain through
 * every iteration (in L2, one thread: int8 B=8 0.0201 -> 0.0157 ms, B=16
 * 0.0401 -> 0.0306). The AVX-VNNI passes of 4, short of registers either
 * way, were 10% slower with the pointers. */
#define X_ROWS(NB)                                                                               \
    const int8_t *xr[NB];                                                                        \
    UNROLL for (int q = 0; q < NB; q++) xr[q] = A->xq + (size_t)(b0 + q) * A->kp;
#define X4(NB, q, c)                                                                             \
    ((NB) >= 8 ? x4_of(xr[q] + (c)) : x4_of(A->xq + (size_t)(b0 + (q)) * A->kp + (c)))

#define ACC_ZERO(NR, NB)                                                                         \
    VT acc[NR * NB];                                                                             \
    UNROLL for (int q = 0; q < NR * NB; q++) acc[q] = VZERO();

#define ACC_STORE(NR, NB)                                                                        \
    UNROLL for (int rb = 0; rb < NR; rb++)                                                       \
    UNROLL for (int q = 0; q < NB; q++)                                                          \
        VSTORE(acc[rb * NB + q], k_yrow(A, Y, W->rows, b0 + q) + r + rb * K_ROWS,                 \
               imin(K_ROWS, r1 - r - rb * K_ROWS), beta);

/* NR blocks (1, or 2 for small batches, so that enough independent FMA
 * chains are in flight) times NB sequences per pass. */
#define PASS_F32(NR, NB)                                                                         \
    {                                                                                            \
        ACC_ZERO(NR, NB)                                                                         \
        const size_t bs = (size_t)W->kp * K_ROWS;                                                \
        const float *wp = (const float *)W->data + blk * bs;                                     \
        const float *xp = A->x + (size_t)b0 * A->ldx;                                            \
        for (int j = 0; j < W->cols; j++) {                                                      \
            UNROLL for (int rb = 0; rb < NR; rb++) {                                             \
                PREFETCH(wp + rb * bs + (size_t)j * K_ROWS, NB);                                 \
                const VT w = VLOAD(wp + rb * bs + (size_t)j * K_ROWS);                           \
                UNROLL for (int q = 0; q < NB; q++)                                              \
                    acc[rb * NB + q] = VFMA(w, VSET1(xp[(size_t)q * A->ldx + j]), acc[rb * NB + q]); \
            }                                                                                    \
        }                                                                                        \
        ACC_STORE(NR, NB)                                                                        \
    }

/* Both blocks' weights are widened before the sequences' inputs are
 * broadcast, so each broadcast serves both blocks: with the broadcasts
 * inside the block loop, 2 x 8 passes kept sixteen of them live beside the
 * sixteen sums and spilled two sums to the stack every column pair. */
#define PASS_BF16_IN(NR, NB, XP, LDX, KC)                                                        \
    {                                                                                            \
        ACC_ZERO(NR, NB)                                                                         \
        const size_t bs = (size_t)W->kp * K_ROWS;                                                \
        const uint16_t *wp = (const uint16_t *)W->data + blk * bs;                               \
        const float *xp = (XP);                                                                  \
        const size_t ldx = (LDX);                                                                \
        const int K = (KC);                                                                      \
        int j = 0;                                                                               \
        for (; j + 1 < K; j += 2) {                                                              \
            VT we[NR], wo[NR];                                                                   \
            UNROLL for (int rb = 0; rb < NR; rb++) {                                             \
                PREFETCH(wp + rb * bs + (size_t)j * K_ROWS, NB);                                 \
                VPAIR(wp + rb * bs + (size_t)j * K_ROWS, we[rb], wo[rb]);                        \
            }                                                                                    \
            UNROLL for (int q = 0; q < NB; q++) {                                                \
                const float *x = xp + (size_t)q * ldx + j;                                       \
                const VT x0 = VSET1(x[0]), x1 = VSET1(x[1]);                                     \
                UNROLL for (int rb = 0; rb < NR; rb++) {                                         \
                    acc[rb * NB + q] = VFMA(we[rb], x0, acc[rb * NB + q]);                       \
                    acc[rb * NB + q] = VFMA(wo[rb], x1, acc[rb * NB + q]);                       \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        if (j < K) {                                                                             \
            UNROLL for (int rb = 0; rb < NR; rb++) {                                             \
                VT we, wo;                                                                       \
                VPAIR(wp + rb * bs + (size_t)j * K_ROWS, we, wo);                                \
                (void)wo;                                                                        \
                UNROLL for (int q = 0; q < NB; q++)                                              \
                    acc[rb * NB + q] = VFMA(we, VSET1(xp[(size_t)q * ldx + j]), acc[rb * NB + q]);   \
            }                                                                                    \
        }                                                                                        \
        ACC_STORE(NR, NB)                                                                        \
    }
#define PASS_BF16(NR, NB) PASS_BF16_IN(NR, NB, A->x + (size_t)b0 * A->ldx, A->ldx, W->cols)
/* bf16 compute from the inputs rounded to bf16 and widened (act.xr): the
 * products and sums of PASS_DBF with the emulating VDPBF, where a pair's
 * two inputs came out of a general register each (AVX2: bf16 compute
 * prefill ran at 0.6x the exact bf16 one). */
#define PASS_DBF_WIDE(NR, NB) PASS_BF16_IN(NR, NB, A->xr + (size_t)b0 * A->kp, A->kp, W->kp)

#define PASS_DBF(NR, NB)                                                                         \
    {                                                                                            \
        ACC_ZERO(NR, NB)                                                                         \
        const size_t bs = (size_t)W->kp * K_ROWS;                                                \
        const uint16_t *wp = (const uint16_t *)W->data + blk * bs;                               \
        const size_t np = (size_t)W->kp / 2;                                                     \
        const uint32_t *xb = A->xb + (size_t)b0 * np;                                            \
        for (size_t p = 0; p < np; p++) {                                                        \
            UNROLL for (int rb = 0; rb < NR; rb++) {                                             \
                PREFETCH(wp + rb * bs + p * 2 * K_ROWS, NB);                                     \
                const VBW w = VBLOAD(wp + rb * bs + p * 2 * K_ROWS);                             \
                UNROLL for (int q = 0; q < NB; q++)                                              \
                    acc[rb * NB + q] = VDPBF(acc[rb * NB + q], w, xb[q * np + p]);               \
            }                                                                                    \
        }                                                                                        \
        ACC_STORE(NR, NB)                                                                        \
    }

/* Integer sums are exact, so small batches use two accumulators per
 * sequence (even / odd quads, or low / high nibbles) to shorten the
 * dependency chains without changing any result; larger ones need the
 * registers for more sequences. AVX-512 has both, in assembly (a5_group). */
#define PASS_I8(NR, NB)                                                                          \
    {                                                                                            \
        ACC_ZERO(1, NB)                                                                          \
        const uint8_t *wp = (const uint8_t *)W->data + blk * (size_t)W->kp * K_ROWS;             \
        const float *sp = W->scales + blk * A->G * K_ROWS;                                       \
        X_ROWS(NB)                                                                               \
        for (size_t g = 0; g < A->G; g++) {                                                      \
            IT ia[NB], ib[NB];                                                                   \
            UNROLL for (int q = 0; q < NB; q++) ia[q] = ib[q] = IZERO();                         \
            const uint8_t *wg = wp + g * GRP * K_ROWS;                                           \
            if (IGROUP_OK(0))                                                                    \
                II8GROUP(NB, wg, xr, g * GRP, PF_NTA, ia);                                       \
            else                                                                                 \
            for (int qd = 0; qd < GRP / 4; qd += 2) {                                            \
                PREFETCH(wg + qd * 64, NB);                                                      \
                PREFETCH(wg + qd * 64 + 64, NB);                                                 \
                const IW8 w0 = ILOAD8(wg + qd * 64), w1 = ILOAD8(wg + qd * 64 + 64);             \
                UNROLL for (int q = 0; q < NB; q++) {                                            \
                    ia[q] = IDOT8(ia[q], w0, X4(NB, q, g * GRP + qd * 4));                       \
                    const int32_t x1 = X4(NB, q, g * GRP + qd * 4 + 4);                          \
                    if (NB <= 2)                                                                 \
                        ib[q] = IDOT8(ib[q], w1, x1);                                            \
                    else                                                                         \
                        ia[q] = IDOT8(ia[q], w1, x1);                                            \
                }                                                                                \
            }                                                                                    \
            const VT s = VLOAD(sp + g * K_ROWS);                                                 \
            UNROLL for (int q = 0; q < NB; q++) {                                                \
                const size_t i = (size_t)(b0 + q) * A->G + g;                                    \
                acc[q] = VFMA(ICVT(IFIX8(IADD(ia[q], ib[q]), A->xoff[i])),                       \
                              VMUL(s, VSET1(A->xs[i])), acc[q]);                                 \
            }                                                                                    \
        }                                                                                        \
        ACC_STORE(1, NB)                                                                         \
    }

#define PASS_Q4(NR, NB)                                                                          \
    {                                                                                            \
        ACC_ZERO(1, NB)                                                                          \
        const uint8_t *wp = (const uint8_t *)W->data + blk * (size_t)W->kp * K_ROWS / 2;         \
        const uint16_t *sp = W->hscales + blk * A->G * K_ROWS;                                   \
        X_ROWS(NB)                                                                               \
        for (size_t g = 0; g < A->G; g++) {                                                      \
            IT ia[NB], ib[NB];                                                                   \
            UNROLL for (int q = 0; q < NB; q++) ia[q] = ib[q] = IZERO();                         \
            const uint8_t *wg = wp + g * GRP * K_ROWS / 2;                                       \
            if (IGROUP_OK(1))                                                                    \
                IQ4GROUP(NB, wg, xr, g * GRP, PF_NTA, ia);                                       \
            else                                                                                 \
            for (int v = 0; v < GRP / 8; v++) {                                                  \
                IWU lo, hi;                                                                      \
                PREFETCH(wg + v * 64, NB);                                                       \
                IQ4(wg + v * 64, lo, hi);                                                        \
                UNROLL for (int q = 0; q < NB; q++) {                                            \
                    ia[q] = IDOTU(ia[q], lo, X4(NB, q, g * GRP + v * 4));                        \
                    const int32_t x1 = X4(NB, q, g * GRP + v * 4 + GRP / 2);                     \
                    if (NB <= 2)                                                                 \
                        ib[q] = IDOTU(ib[q], hi, x1);                                            \
                    else                                                                         \
                        ia[q] = IDOTU(ia[q], hi, x1);                                            \
                }                                                                                \
            }                                                                                    \
            const VT s = VLOADH(sp + g * K_ROWS);                                                \
            UNROLL for (int q = 0; q < NB; q++) {                                                \
                const size_t i = (size_t)(b0 + q) * A->G + g;                                    \
                acc[q] = VFMA(ICVT(IFIX4(IADD(ia[q], ib[q]), A->xoff[i])),                       \
                              VMUL(s, VSET1(A->xs[i])), acc[q]);                                 \
            }                                                                                    \
        }                                                                                        \
        ACC_STORE(1, NB)                                                                         \
    }

/* Rows [r0, r1) (r0 a multiple of K_ROWS, r1 one too or W->rows). Passes
 * take NBMAX (4, or 8 where the set has the registers) sequences at a
 * time, then two and one for the rest (AVX2's int passes of two measured
 * slower than its fours on Zen 3). Batches under 4 take two blocks per pass
 * (PAIRS = 1, exact formats). The passes are compiled once per prefetch
 * hint, so the hint is a constant in each. */
#define BLOCKS(PASS, NBMAX, PAIRS)                                                               \
    if (pf_nta) {                                                                                \
        enum { PF_NTA = 1 };                                                                     \
        BLOCKS_HINTED(PASS, NBMAX, PAIRS)                                                        \
    } else {                                                                                     \
        enum { PF_NTA = 0 };                                                                     \
        BLOCKS_HINTED(PASS, NBMAX, PAIRS)                                                        \
    }

#define BLOCKS_HINTED(PASS, NBMAX, PAIRS)                                                        \
    for (int r = r0; r < r1;) {                                                                  \
        const size_t blk = (size_t)r / K_ROWS;                                                   \
        int b0 = 0;                                                                              \
        if (PAIRS && (B < 4 || PAIRS >= 8) && r + K_ROWS < r1) {                                 \
            if (PAIRS >= 8) {                                                                    \
                for (; b0 + 8 <= B; b0 += 8)                                                     \
                    PASS(2, 8)                                                                   \
                for (; b0 + 4 <= B; b0 += 4)                                                     \
                    PASS(2, 4)                                                                   \
            }                                                                                    \
            for (; b0 + 2 <= B; b0 += 2)                                                         \
                PASS(2, 2)                                                                       \
            for (; b0 < B; b0++)                                                                 \
                PASS(2, 1)                                                                       \
            r += 2 * K_ROWS;                                                                     \
            continue;                                                                            \
        }                                                                                        \
        if (NBMAX >= 8)                                                                          \
            for (; b0 + 8 <= B; b0 += 8)                                                         \
                PASS(1, 8)                                                                       \
        for (; b0 + 4 <= B; b0 += 4)                                                             \
            PASS(1, 4)                                                                           \
        for (; b0 + 2 <= B; b0 += 2)                                                             \
            PASS(1, 2)                                                                           \
        for (; b0 < B; b0++)                                                                     \
            PASS(1, 1)                                                                           \
        r += K_ROWS;                                                                             \
    }

/* ---------------------------------------------------------------- scalar */
/* Sixteen lanes as arrays, in loops the compiler vectorizes for the
 * baseline: the same order per output as the SIMD paths (multiply and add
 * rounded separately, since the baseline has no FMA; integer sums are
 * exact). */
typedef struct {
    float v[16];
} v16;
typedef struct {
    int32_t v[16];
} i16v;
typedef struct {
    uint8_t v[64];
} u64b;
typedef const uint8_t *u8p;

static inline v16 s_zero(void) { return (v16){{0}}; }
static inline v16 s_loadh(const uint16_t *p)
{
    v16 r;
    for (int l = 0; l < 16; l++)
        r.v[l] = k_f16_to_f32(p[l]);
    return r;
}
static inline v16 s_load(const float *p)
{
    v16 r;
    memcpy(r.v, p, sizeof r.v);
    return r;
}
static inline v16 s_set1(float x)
{
    v16 r;
    for (int l = 0; l < 16; l++)
        r.v[l] = x;
    return r;
}
static inline v16 s_fma(v16 a, v16 b, v16 c)
{
    for (int l = 0; l < 16; l++)
        c.v[l] += a.v[l] * b.v[l];
    return c;
}
static inline v16 s_mul(v16 a, v16 b)
{
    for (int l = 0; l < 16; l++)
        a.v[l] *= b.v[l];
    return a;
}
static inline void s_pair(const uint16_t *p, v16 *e, v16 *o)
{
    for (int l = 0; l < 16; l++) {
        e->v[l] = bf16_to_f32(p[2 * l]);
        o->v[l] = bf16_to_f32(p[2 * l + 1]);
    }
}
typedef struct {
    v16 e, o;
} v16pair;
static inline v16pair s_bload(const uint16_t *p)
{
    v16pair w;
    s_pair(p, &w.e, &w.o);
    return w;
}
static inline v16 s_dpbf(v16 acc, v16pair w, uint32_t x)
{
    acc = s_fma(w.e, s_set1(bf16_to_f32((uint16_t)x)), acc);
    return s_fma(w.o, s_set1(bf16_to_f32((uint16_t)(x >> 16))), acc);
}
static inline void s_store(v16 a, float *y, int nr, float beta)
{
    for (int l = 0; l < nr; l++)
        y[l] = beta == 0.0f ? a.v[l] : beta * y[l] + a.v[l];
}
static inline i16v s_izero(void) { return (i16v){{0}}; }
static inline v16 s_icvt(i16v a)
{
    v16 r;
    for (int l = 0; l < 16; l++)
        r.v[l] = (float)a.v[l];
    return r;
}
static inline const uint8_t *s_load8(const uint8_t *p) { return p; }
static inline i16v s_dot8(i16v acc, const uint8_t *w, int32_t x4)
{
    int8_t x[4];
    memcpy(x, &x4, 4);
    for (int l = 0; l < 16; l++)
        for (int k = 0; k < 4; k++)
            acc.v[l] += ((int)w[l * 4 + k] - 128) * x[k];
    return acc;
}
static inline i16v s_fix8(i16v a, int32_t xoff) { (void)xoff; return a; } /* signed weights */
static inline i16v s_suboff(i16v a, int32_t xoff)
{
    for (int l = 0; l < 16; l++)
        a.v[l] -= xoff;
    return a;
}
static inline i16v s_iadd(i16v a, i16v b)
{
    for (int l = 0; l < 16; l++)
        a.v[l] += b.v[l];
    return a;
}
static inline void s_q4(const uint8_t *p, u64b *lo, u64b *hi)
{
    for (int i = 0; i < 64; i++) {
        lo->v[i] = p[i] & 15;
        hi->v[i] = p[i] >> 4;
    }
}
static inline i16v s_dotu(i16v acc, u64b w, int32_t x4)
{
    int8_t x[4];
    memcpy(x, &x4, 4);
    for (int l = 0; l < 16; l++)
        for (int k = 0; k < 4; k++)
            acc.v[l] += w.v[l * 4 + k] * x[k];
    return acc;
}

#define VT v16
#define VZERO s_zero
#define VLOAD s_load
#define VLOADH s_loadh
#define VSET1 s_set1
#define VFMA s_fma
#define VMUL s_mul
#define VPAIR(p, e, o) s_pair(p, &(e), &(o))
#define VBW v16pair
#define VBLOAD s_bload
#define VDPBF s_dpbf
#define VSTORE s_store
#define IT i16v
#define IZERO s_izero
#define ICVT s_icvt
#define IW8 u8p
#define ILOAD8 s_load8
#define IDOT8 s_dot8
#define IFIX8 s_fix8
#define IFIX4 s_suboff
#define IADD s_iadd
#define IWU u64b
#define IQ4(p, lo, hi) s_q4(p, &(lo), &(hi))
#define IDOTU s_dotu
#define IGROUP_OK(q4) 0 /* no whole-group routines: the passes' own loops */
#define IQ4GROUP(NB, wg, xr, c, nta, sums) ((void)0)
#define II8GROUP(NB, wg, xr, c, nta, sums) ((void)0)
static KSIG(mm_scalar_f32) { BLOCKS(PASS_F32, 4, 1) }
static KSIG(mm_scalar_bf16) { BLOCKS(PASS_BF16, 4, 1) }
static KSIG(mm_scalar_dbf) { BLOCKS(PASS_DBF, 4, 1) }
static KSIG(mm_scalar_i8) { BLOCKS(PASS_I8, 4, 0) }
static KSIG(mm_scalar_q4) { BLOCKS(PASS_Q4, 4, 0) }
#include "kernels_undef.h"

/* ------------------------------------------------------------------ AVX2 */
/* 16 rows as a pair of 8-lane registers. Without VNNI, int8 products go
 * through vpmaddubsw (u8 x s8 pairs to s16): q4 values (0..15) are
 * unsigned already; int8 weights use the sign trick (|w| times x with w's
 * sign), which cannot saturate since both are within -127..127. */
#define AVX2 __attribute__((target("avx2,fma,f16c")))
typedef struct {
    __m256 lo, hi;
} v2x8;
typedef struct {
    __m256i lo, hi;
} i2x8;
typedef struct {
    __m256i alo, ahi, slo, shi; /* |w| and w (signed) */
} w8x2;

AVX2 static inline v2x8 a2_zero(void) { return (v2x8){_mm256_setzero_ps(), _mm256_setzero_ps()}; }
AVX2 static inline v2x8 a2_load(const float *p) { return (v2x8){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
AVX2 static inline v2x8 a2_loadh(const uint16_t *p)
{
    return (v2x8){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                  _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8)))};
}
AVX2 static inline v2x8 a2_set1(float x) { return (v2x8){_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
AVX2 static inline v2x8 a2_fma(v2x8 a, v2x8 b, v2x8 c)
{
    return (v2x8){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
AVX2 static inline v2x8 a2_mul(v2x8 a, v2x8 b) { return (v2x8){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
AVX2 static inline void a2_pair(const uint16_t *p, v2x8 *e, v2x8 *o)
{
    const __m256i mhi = _mm256_set1_epi32((int)0xFFFF0000u);
    const __m256i a = _mm256_loadu_si256((const __m256i *)p);
    const __m256i b = _mm256_loadu_si256((const __m256i *)(p + 16));
    e->lo = _mm256_castsi256_ps(_mm256_slli_epi32(a, 16));
    e->hi = _mm256_castsi256_ps(_mm256_slli_epi32(b, 16));
    o->lo = _mm256_castsi256_ps(_mm256_and_si256(a, mhi));
    o->hi = _mm256_castsi256_ps(_mm256_and_si256(b, mhi));
}
AVX2 static inline void a2_store(v2x8 a, float *y, int nr, float beta)
{
    if (nr == 16) { /* a whole block: GCC made the loop below a memcpy call (6% of a q4 step) */
        if (beta != 0.0f) {
            const __m256 b = _mm256_set1_ps(beta);
            a.lo = _mm256_add_ps(_mm256_mul_ps(b, _mm256_loadu_ps(y)), a.lo);
            a.hi = _mm256_add_ps(_mm256_mul_ps(b, _mm256_loadu_ps(y + 8)), a.hi);
        }
        _mm256_storeu_ps(y, a.lo);
        _mm256_storeu_ps(y + 8, a.hi);
        return;
    }
    float t[16];
    _mm256_storeu_ps(t, a.lo);
    _mm256_storeu_ps(t + 8, a.hi);
    for (int l = 0; l < nr; l++)
        y[l] = beta == 0.0f ? t[l] : beta * y[l] + t[l];
}
AVX2 static inline i2x8 a2_izero(void) { return (i2x8){_mm256_setzero_si256(), _mm256_setzero_si256()}; }
AVX2 static inline v2x8 a2_icvt(i2x8 a) { return (v2x8){_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }
AVX2 static inline w8x2 a2_load8(const uint8_t *p)
{
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    const __m256i lo = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), flip);
    const __m256i hi = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 32)), flip);
    return (w8x2){_mm256_abs_epi8(lo), _mm256_abs_epi8(hi), lo, hi};
}
AVX2 static inline __m256i a2_madd(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
AVX2 static inline i2x8 a2_dot8(i2x8 acc, w8x2 w, int32_t x4)
{
    const __m256i x = _mm256_set1_epi32(x4);
    acc.lo = _mm256_add_epi32(acc.lo, a2_madd(w.alo, _mm256_sign_epi8(x, w.slo)));
    acc.hi = _mm256_add_epi32(acc.hi, a2_madd(w.ahi, _mm256_sign_epi8(x, w.shi)));
    return acc;
}
AVX2 static inline i2x8 a2_fix8(i2x8 a, int32_t xoff) { (void)xoff; return a; } /* sign trick */
AVX2 static inline i2x8 a2_suboff(i2x8 a, int32_t xoff)
{
    const __m256i f = _mm256_set1_epi32(xoff);
    return (i2x8){_mm256_sub_epi32(a.lo, f), _mm256_sub_epi32(a.hi, f)};
}
AVX2 static inline i2x8 a2_iadd(i2x8 a, i2x8 b)
{
    return (i2x8){_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)};
}
AVX2 static inline void a2_q4(const uint8_t *p, i2x8 *lo, i2x8 *hi)
{
    const __m256i m = _mm256_set1_epi8(15);
    const __m256i a = _mm256_loadu_si256((const __m256i *)p);
    const __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32));
    lo->lo = _mm256_and_si256(a, m);
    lo->hi = _mm256_and_si256(b, m);
    hi->lo = _mm256_and_si256(_mm256_srli_epi16(a, 4), m);
    hi->hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
}
AVX2 static inline i2x8 a2_dotu(i2x8 acc, i2x8 w, int32_t x4)
{
    const __m256i x = _mm256_set1_epi32(x4);
    acc.lo = _mm256_add_epi32(acc.lo, a2_madd(w.lo, x));
    acc.hi = _mm256_add_epi32(acc.hi, a2_madd(w.hi, x));
    return acc;
}

#define VT v2x8
#define VZERO a2_zero
#define VLOAD a2_load
#define VLOADH a2_loadh
#define VSET1 a2_set1
#define VFMA a2_fma
#define VMUL a2_mul
#define VPAIR(p, e, o) a2_pair(p, &(e), &(o))
#define VSTORE a2_store
#define IT i2x8
#define IZERO a2_izero
#define ICVT a2_icvt
#define IW8 w8x2
#define ILOAD8 a2_load8
#define IDOT8 a2_dot8
#define IFIX8 a2_fix8
#define IFIX4 a2_suboff
#define IADD a2_iadd
#define IWU i2x8
#define IQ4(p, lo, hi) a2_q4(p, &(lo), &(hi))
#define IDOTU a2_dotu
/* Four steps of four sequences in assembly: there GCC 12 kept half of the
 * eight 16-bit sums on the stack, a load and a store around their vpaddw
 * in every step (however the C was written). Here the sums are in ymm0-7
 * (GCC picks which), a step's unpacked weights in ymm8-11, the broadcast
 * inputs in ymm12-13 and the products in ymm14-15; each sum gets the C
 * loop's products (Zen 3, one core, in L2, alternating runs: 768 x 768 at
 * B = 4 and 8 0.89 of the time, 3072 x 768 at B = 8 0.87). */
#define A2_Q4W(pf)                                                                               \
    pf("\\v*64") "vmovdqu \\v*64(%[w]), %%ymm12\n\t"                                             \
    "vpand %[m], %%ymm12, %%ymm8\n\t"                                                            \
    "vpsrlw $4, %%ymm12, %%ymm12\n\t"                                                            \
    "vpand %[m], %%ymm12, %%ymm9\n\t"                                                            \
    "vmovdqu 32+\\v*64(%[w]), %%ymm12\n\t"                                                       \
    "vpand %[m], %%ymm12, %%ymm10\n\t"                                                           \
    "vpsrlw $4, %%ymm12, %%ymm12\n\t"                                                            \
    "vpand %[m], %%ymm12, %%ymm11\n\t"
#define A2_Q4SEQ(q)                                                                              \
    "vpbroadcastd \\v*4(%[x" #q "]), %%ymm12\n\t"                                                \
    "vpbroadcastd 32+\\v*4(%[x" #q "]), %%ymm13\n\t"                                             \
    "vpmaddubsw %%ymm12, %%ymm8, %%ymm14\n\t"                                                    \
    "vpmaddubsw %%ymm12, %%ymm10, %%ymm15\n\t"                                                   \
    "vpaddw %%ymm14, %[t" #q "a], %[t" #q "a]\n\t"                                               \
    "vpaddw %%ymm15, %[t" #q "b], %[t" #q "b]\n\t"                                               \
    "vpmaddubsw %%ymm13, %%ymm9, %%ymm14\n\t"                                                    \
    "vpmaddubsw %%ymm13, %%ymm11, %%ymm15\n\t"                                                   \
    "vpaddw %%ymm14, %[t" #q "a], %[t" #q "a]\n\t"                                               \
    "vpaddw %%ymm15, %[t" #q "b], %[t" #q "b]\n\t"
/* The weight line at offset off, %c[pfd] bytes ahead: non-temporally (AMD)
 * or into L1, as prefetch_ahead does (the AVX-512 routine's T0 form adds
 * an L2 prefetch, PF_L1_L2). */
#define PF_NTA_ONLY(off) "prefetchnta %c[pfd]+" off "(%[w])\n\t"
#define PF_T0_ONLY(off) "prefetcht0 %c[pfd]+" off "(%[w])\n\t"
#define A2_Q4ASM(pf)                                                                             \
    __asm__(".irp r,%[t0a],%[t0b],%[t1a],%[t1b],%[t2a],%[t2b],%[t3a],%[t3b]\n\t"                 \
            "vpxor \\r, \\r, \\r\n\t.endr\n\t"                                                   \
            ".irp v,0,1,2,3\n\t" A2_Q4W(pf) A2_Q4SEQ(0) A2_Q4SEQ(1) A2_Q4SEQ(2) A2_Q4SEQ(3)      \
            ".endr\n\t"                                                                          \
            : [t0a] "=&x"(t[0][0]), [t0b] "=&x"(t[0][1]), [t1a] "=&x"(t[1][0]),                  \
              [t1b] "=&x"(t[1][1]), [t2a] "=&x"(t[2][0]), [t2b] "=&x"(t[2][1]),                  \
              [t3a] "=&x"(t[3][0]), [t3b] "=&x"(t[3][1])                                         \
            : [w] "r"(wg + h * 64), [m] "m"(m), [pfd] "i"(PF_AHEAD_BATCH),                       \
              [x0] "r"(xr[0] + c + h * 4), [x1] "r"(xr[1] + c + h * 4),                          \
              [x2] "r"(xr[2] + c + h * 4), [x3] "r"(xr[3] + c + h * 4)                           \
            : "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory")
/* A q4 group without VNNI: vpmaddubsw's 16-bit pair sums of nibbles (at
 * most 2 x 15 x 127 = 3810) are added in 16 bits over four steps (eight
 * of them, at most 30480, so exact) before vpmaddwd widens them, instead
 * of widening each: per sequence and step 4 vpmaddubsw, 4 vpaddw and a
 * quarter of the widening, where the C loop's a2_dotu took 4 vpmaddubsw, 4
 * vpmaddwd and 4 vpaddd. The integers are the same. NB <= 4, as the AVX2
 * passes have it. */
AVX2 static inline __attribute__((always_inline)) void
a2_q4group(int NB, const uint8_t *wg, const int8_t *const *xr, size_t c, int nta, i2x8 *sums)
{
    const __m256i m = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    if (NB == 4) {
        for (int h = 0; h < GRP / 8; h += 4) {
            __m256i t[4][2];
            if (nta)
                A2_Q4ASM(PF_NTA_ONLY);
            else
                A2_Q4ASM(PF_T0_ONLY);
            UNROLL for (int q = 0; q < 4; q++) {
                sums[q].lo = _mm256_add_epi32(sums[q].lo, _mm256_madd_epi16(t[q][0], ones));
                sums[q].hi = _mm256_add_epi32(sums[q].hi, _mm256_madd_epi16(t[q][1], ones));
            }
        }
        return;
    }
    for (int h = 0; h < GRP / 8; h += 4) {
        __m256i t[4][2];
        UNROLL for (int q = 0; q < NB; q++) t[q][0] = t[q][1] = _mm256_setzero_si256();
        /* Not unrolled: GCC then computed all 64 vpmaddubsw of a pass of four
         * first, spilled them, and added them as a tree. */
        _Pragma("GCC unroll 1") for (int v = h; v < h + 4; v++) {
            const uint8_t *p = wg + v * 64;
            prefetch_ahead(p, NB, nta);
            const __m256i a = _mm256_loadu_si256((const __m256i *)p);
            const __m256i b = _mm256_loadu_si256((const __m256i *)(p + 32));
            const __m256i la = _mm256_and_si256(a, m), lb = _mm256_and_si256(b, m);
            const __m256i ha = _mm256_and_si256(_mm256_srli_epi16(a, 4), m);
            const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(b, 4), m);
            UNROLL for (int q = 0; q < NB; q++) {
                const __m256i xl = _mm256_set1_epi32(x4_of(xr[q] + c + v * 4));
                const __m256i xh = _mm256_set1_epi32(x4_of(xr[q] + c + GRP / 2 + v * 4));
                t[q][0] = _mm256_add_epi16(t[q][0], _mm256_add_epi16(_mm256_maddubs_epi16(la, xl),
                                                                     _mm256_maddubs_epi16(ha, xh)));
                t[q][1] = _mm256_add_epi16(t[q][1], _mm256_add_epi16(_mm256_maddubs_epi16(lb, xl),
                                                                     _mm256_maddubs_epi16(hb, xh)));
            }
        }
        UNROLL for (int q = 0; q < NB; q++) {
            sums[q].lo = _mm256_add_epi32(sums[q].lo, _mm256_madd_epi16(t[q][0], ones));
            sums[q].hi = _mm256_add_epi32(sums[q].hi, _mm256_madd_epi16(t[q][1], ones));
        }
    }
}
/* q4 only: int8's sign trick fills vpmaddubsw's 16 bits. (An int8 routine
 * of four sequences in the same form measured even on Zen 3: its steps are
 * bound by vpsignb, vpmaddubsw and vpmaddwd sharing two pipes, not by the
 * spills.) */
#define IGROUP_OK(q4) (q4)
#define IQ4GROUP(NB, wg, xr, c, nta, sums) a2_q4group(NB, wg, xr, c, nta, sums)
#define II8GROUP(NB, wg, xr, c, nta, sums) ((void)0)
AVX2 static KSIG(mm_avx2_f32) { BLOCKS(PASS_F32, 4, 1) }
AVX2 static KSIG(mm_avx2_bf16) { BLOCKS(PASS_BF16, 4, 1) }
AVX2 static KSIG(mm_avx2_dbf) { BLOCKS(PASS_DBF_WIDE, 4, 1) }
AVX2 static KSIG(mm_avx2_i8) { BLOCKS(PASS_I8, 4, 0) }
AVX2 static KSIG(mm_avx2_q4) { BLOCKS(PASS_Q4, 4, 0) }

/* ------------------------------------------------------------- AVX-VNNI */
/* AVX2 CPUs with the VEX-encoded vpdpbusd (Alder Lake and later cores,
 * Zen 5): the AVX2 vocabulary with the int8 / q4 products of AVX-512 VNNI
 * on 8-lane halves. The integer sums are the same as vpmaddubsw's, so the
 * results too. */
#define AVXVNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
AVX2 static inline i2x8 av_load8(const uint8_t *p)
{
    return (i2x8){_mm256_loadu_si256((const __m256i *)p), _mm256_loadu_si256((const __m256i *)(p + 32))};
}
AVXVNNI static inline i2x8 av_dot8(i2x8 acc, i2x8 w, int32_t x4)
{
    const __m256i x = _mm256_set1_epi32(x4);
    return (i2x8){_mm256_dpbusd_avx_epi32(acc.lo, w.lo, x), _mm256_dpbusd_avx_epi32(acc.hi, w.hi, x)};
}
#undef IW8
#undef ILOAD8
#undef IDOT8
#undef IFIX8
#undef IDOTU
#define IW8 i2x8
#define ILOAD8 av_load8
#define IDOT8 av_dot8
#define IFIX8 a2_suboff
#define IDOTU av_dot8
#undef IGROUP_OK
#undef IQ4GROUP
#define IGROUP_OK(q4) 0 /* vpdpbusd in the passes' own loops */
#define IQ4GROUP(NB, wg, xr, c, nta, sums) ((void)0)
AVXVNNI static KSIG(mm_avxvnni_i8) { BLOCKS(PASS_I8, 4, 0) }
AVXVNNI static KSIG(mm_avxvnni_q4) { BLOCKS(PASS_Q4, 4, 0) }
#include "kernels_undef.h"

/* --------------------------------------------------------------- AVX-512 */
/* Exact formats need F/BW/VL; the int8/q4 kernel also VNNI (vpdpbusd on
 * q + 128 unsigned weights and signed inputs; the 128 * sum(x) excess is
 * taken off per group) and the bf16 one AVX512_BF16 (vdpbf16ps). A CPU
 * with AVX-512 but without those runs the AVX2 kernels for them. */
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c")))
#define AVX512VNNI __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c,avx512vnni")))
#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,fma,f16c,avx512bf16")))

AVX512 static inline __m512 a5_zero(void) { return _mm512_setzero_ps(); }
AVX512 static inline __m512 a5_load(const float *p) { return _mm512_loadu_ps(p); }
AVX512 static inline __m512 a5_loadh(const uint16_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
AVX512 static inline __m512 a5_set1(float x) { return _mm512_set1_ps(x); }
AVX512 static inline __m512 a5_fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
AVX512 static inline __m512 a5_mul(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
AVX512 static inline void a5_pair(const uint16_t *p, __m512 *e, __m512 *o)
{
    const __m512i a = _mm512_loadu_si512(p);
    *e = _mm512_castsi512_ps(_mm512_slli_epi32(a, 16));
    *o = _mm512_castsi512_ps(_mm512_and_si512(a, _mm512_set1_epi32((int)0xFFFF0000u)));
}
AVX512 static inline __m512i a5_bload(const uint16_t *p) { return _mm512_loadu_si512(p); }
AVX512BF16 static inline __m512 a5_dpbf(__m512 acc, __m512i w, uint32_t x)
{
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_set1_epi32((int)x));
}
AVX512 static inline __m512i a5_izero(void) { return _mm512_setzero_si512(); }
AVX512 static inline __m512 a5_icvt(__m512i a) { return _mm512_cvtepi32_ps(a); }
AVX512 static inline __m512i a5_load8(const uint8_t *p) { return _mm512_loadu_si512(p); }
AVX512VNNI static inline __m512i a5_dot8(__m512i acc, __m512i w, int32_t x4)
{
    return _mm512_dpbusd_epi32(acc, w, _mm512_set1_epi32(x4));
}
AVX512 static inline __m512i a5_suboff(__m512i a, int32_t xoff)
{
    return _mm512_sub_epi32(a, _mm512_set1_epi32(xoff));
}
AVX512 static inline __m512i a5_iadd(__m512i a, __m512i b) { return _mm512_add_epi32(a, b); }
AVX512 static inline void a5_q4(const uint8_t *p, __m512i *lo, __m512i *hi)
{
    const __m512i m = _mm512_set1_epi8(15), v = _mm512_loadu_si512(p);
    *lo = _mm512_and_si512(v, m);
    *hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m);
}

/* One group (16 rows x 64 inputs) of int8 or q4 weights for NB = 1, 2, 4
 * or 8 sequences: the integer sums sums[q] of the weights (as unsigned
 * bytes, or nibbles) times the inputs xr[q][c .. c + 64). In C the passes
 * keep one or two sums per sequence, two or one vpdpbusd each per step of
 * 64 weight bytes: at the instruction's latency of six cycles (Emerald
 * Rapids) those two to eight chains fill 0.3 to 1.3 of its two issues a
 * cycle, and with more sums per sequence GCC 12 spills them or copies each
 * register in and out of every step. Here sixteen sums (eight for one
 * sequence) in zmm16-31 take U = 8 / NB steps at a time (4 for one), each
 * step's halves (two 64-byte int8 lines, or a line's low and high nibbles)
 * into sums of their own; the inputs are broadcast operands; each
 * sequence's sums are added at the end, so the integers are the same. */
#define GD(q, off, z, a) "vpdpbusd " off "(%[x" #q "])%{1to16%}, %%zmm" #z ", %%zmm" #a "\n\t"
#define GADD(a, b) "vpaddd %%zmm" #b ", %%zmm" #a ", %%zmm" #a "\n\t"
/* The prefetches of the weight line at offset off: pfd bytes ahead into L1
 * (T0) or past the caches (NTA, AMD: see PF_AHEAD). With T0 also pfd2
 * bytes ahead into L2: the L1 prefetches are few (the fill buffers), and a
 * busy machine's memory latency outlasts them (Emerald Rapids, a busy
 * hour, one process per build alternating: 0.4B q4 single steps 0.88-0.97
 * of the time, 6 to 10 of 10 rounds faster in five runs; int8 0.95-0.97;
 * 0.1B q4 0.98, batches of 8 0.96 and 1.02; the same build against itself
 * 1.02-1.07). AMD keeps its one non-temporal prefetch: lines fetched into
 * L2 go to its L3 when evicted, where the states are (Zen 5: a second
 * T1 prefetch read 1.05-1.11 of the time). */
#define PF_L1_L2(off)                                                                            \
    "prefetcht0 %c[pfd]+" off "(%[w])\n\tprefetcht2 %c[pfd2]+" off "(%[w])\n\t"
#define PF_AHEAD_BATCH_L2 12288
/* Step \v + u's weights into zmm a and b, prefetched (pf), and the offsets
 * of the inputs that a and b multiply. */
#define GW_Q4(pf, u, a, b)                                                                       \
    pf("(\\v+" #u ")*64")                                                                        \
    "vmovdqu64 (\\v+" #u ")*64(%[w]), %%zmm" #a "\n\t"                                           \
    "vpsrlw $4, %%zmm" #a ", %%zmm" #b "\n\t"                                                    \
    "vpandd %[m], %%zmm" #a ", %%zmm" #a "\n\t"                                                  \
    "vpandd %[m], %%zmm" #b ", %%zmm" #b "\n\t"
#define GA_Q4(u) "(\\v+" #u ")*4"
#define GB_Q4(u) "32+(\\v+" #u ")*4"
#define GW_I8(pf, u, a, b)                                                                       \
    pf("(\\v+" #u ")*128") pf("64+(\\v+" #u ")*128")                                              \
    "vmovdqu64 (\\v+" #u ")*128(%[w]), %%zmm" #a "\n\t"                                          \
    "vmovdqu64 64+(\\v+" #u ")*128(%[w]), %%zmm" #b "\n\t"
#define GA_I8(u) "(\\v+" #u ")*8"
#define GB_I8(u) "4+(\\v+" #u ")*8"
/* The steps, per batch: U = 1, 2, 4; sums of sequence q from zmm16 + q * 2U. */
#define G8_STEPS(F, pf)                                                                          \
    ".irp v,0,1,2,3,4,5,6,7\n\t" GW_##F(pf, 0, 0, 1)                                             \
    GD(0, GA_##F(0), 0, 16) GD(0, GB_##F(0), 1, 17) GD(1, GA_##F(0), 0, 18)                      \
    GD(1, GB_##F(0), 1, 19) GD(2, GA_##F(0), 0, 20) GD(2, GB_##F(0), 1, 21)                      \
    GD(3, GA_##F(0), 0, 22) GD(3, GB_##F(0), 1, 23) GD(4, GA_##F(0), 0, 24)                      \
    GD(4, GB_##F(0), 1, 25) GD(5, GA_##F(0), 0, 26) GD(5, GB_##F(0), 1, 27)                      \
    GD(6, GA_##F(0), 0, 28) GD(6, GB_##F(0), 1, 29) GD(7, GA_##F(0), 0, 30)                      \
    GD(7, GB_##F(0), 1, 31) ".endr\n\t"
#define G4_SEQ(F, q, a, b, c, d)                                                                 \
    GD(q, GA_##F(0), 0, a) GD(q, GB_##F(0), 1, b) GD(q, GA_##F(1), 2, c) GD(q, GB_##F(1), 3, d)
#define G4_STEPS(F, pf)                                                                          \
    ".irp v,0,2,4,6\n\t" GW_##F(pf, 0, 0, 1) GW_##F(pf, 1, 2, 3)                                 \
    G4_SEQ(F, 0, 16, 17, 18, 19) G4_SEQ(F, 1, 20, 21, 22, 23) G4_SEQ(F, 2, 24, 25, 26, 27)       \
    G4_SEQ(F, 3, 28, 29, 30, 31) ".endr\n\t"
#define G1_SEQ(F, q, a, b, c, d, e, f, g, h)                                                     \
    GD(q, GA_##F(0), 0, a) GD(q, GB_##F(0), 1, b) GD(q, GA_##F(1), 2, c) GD(q, GB_##F(1), 3, d)  \
    GD(q, GA_##F(2), 4, e) GD(q, GB_##F(2), 5, f) GD(q, GA_##F(3), 6, g) GD(q, GB_##F(3), 7, h)
#define G1_WEIGHTS(F, pf)                                                                        \
    ".irp v,0,4\n\t" GW_##F(pf, 0, 0, 1) GW_##F(pf, 1, 2, 3) GW_##F(pf, 2, 4, 5)                 \
    GW_##F(pf, 3, 6, 7)
#define G2_STEPS(F, pf)                                                                          \
    G1_WEIGHTS(F, pf) G1_SEQ(F, 0, 16, 17, 18, 19, 20, 21, 22, 23)                               \
    G1_SEQ(F, 1, 24, 25, 26, 27, 28, 29, 30, 31) ".endr\n\t"
#define G1_STEPS(F, pf) G1_WEIGHTS(F, pf) G1_SEQ(F, 0, 16, 17, 18, 19, 20, 21, 22, 23) ".endr\n\t"
/* Eight sums, zmm a..h, into a. */
#define GSUM8(a, b, c, d, e, f, g, h)                                                            \
    GADD(a, b) GADD(c, d) GADD(e, f) GADD(g, h) GADD(a, c) GADD(e, g) GADD(a, e)
#define GZERO(regs) ".irp r," regs "\n\tvpxord %%zmm\\r, %%zmm\\r, %%zmm\\r\n\t.endr\n\t"
#define GZ16 "16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31"
#define GIN [w] "r"(wg), [m] "v"(m), [pfd] "i"(PF_AHEAD_BATCH), [pfd2] "i"(PF_AHEAD_BATCH_L2)
#define GCLOB16                                                                                  \
    "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25",    \
        "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory"
#define G8_ASM(F, pf)                                                                            \
    __asm__ volatile(GZERO(GZ16) G8_STEPS(F, pf)                                                 \
                     "vpaddd %%zmm17, %%zmm16, %[s0]\n\t"                                        \
                     "vpaddd %%zmm19, %%zmm18, %[s1]\n\t"                                        \
                     "vpaddd %%zmm21, %%zmm20, %[s2]\n\t"                                        \
                     "vpaddd %%zmm23, %%zmm22, %[s3]\n\t"                                        \
                     "vpaddd %%zmm25, %%zmm24, %[s4]\n\t"                                        \
                     "vpaddd %%zmm27, %%zmm26, %[s5]\n\t"                                        \
                     "vpaddd %%zmm29, %%zmm28, %[s6]\n\t"                                        \
                     "vpaddd %%zmm31, %%zmm30, %[s7]\n\t"                                        \
                     : [s0] "=v"(sums[0]), [s1] "=v"(sums[1]), [s2] "=v"(sums[2]),               \
                       [s3] "=v"(sums[3]), [s4] "=v"(sums[4]), [s5] "=v"(sums[5]),               \
                       [s6] "=v"(sums[6]), [s7] "=v"(sums[7])                                    \
                     : GIN, [x0] "r"(x[0]), [x1] "r"(x[1]), [x2] "r"(x[2]), [x3] "r"(x[3]),      \
                       [x4] "r"(x[4]), [x5] "r"(x[5]), [x6] "r"(x[6]), [x7] "r"(x[7])            \
                     : "xmm0", "xmm1", GCLOB16)
#define G4_ASM(F, pf)                                                                            \
    __asm__ volatile(GZERO(GZ16) G4_STEPS(F, pf)                                                 \
                     GADD(16, 17) GADD(18, 19) GADD(20, 21) GADD(22, 23) GADD(24, 25)            \
                     GADD(26, 27) GADD(28, 29) GADD(30, 31)                                      \
                     "vpaddd %%zmm18, %%zmm16, %[s0]\n\t"                                        \
                     "vpaddd %%zmm22, %%zmm20, %[s1]\n\t"                                        \
                     "vpaddd %%zmm26, %%zmm24, %[s2]\n\t"                                        \
                     "vpaddd %%zmm30, %%zmm28, %[s3]\n\t"                                        \
                     : [s0] "=v"(sums[0]), [s1] "=v"(sums[1]), [s2] "=v"(sums[2]),               \
                       [s3] "=v"(sums[3])                                                        \
                     : GIN, [x0] "r"(x[0]), [x1] "r"(x[1]), [x2] "r"(x[2]), [x3] "r"(x[3])       \
                     : "xmm0", "xmm1", "xmm2", "xmm3", GCLOB16)
#define G2_ASM(F, pf)                                                                            \
    __asm__ volatile(GZERO(GZ16) G2_STEPS(F, pf) GSUM8(16, 17, 18, 19, 20, 21, 22, 23)           \
                     GSUM8(24, 25, 26, 27, 28, 29, 30, 31)                                       \
                     "vmovdqa64 %%zmm16, %[s0]\n\t"                                              \
                     "vmovdqa64 %%zmm24, %[s1]\n\t"                                              \
                     : [s0] "=v"(sums[0]), [s1] "=v"(sums[1])                                    \
                     : GIN, [x0] "r"(x[0]), [x1] "r"(x[1])                                       \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", GCLOB16)
#define G1_ASM(F, pf)                                                                            \
    __asm__ volatile(GZERO("16,17,18,19,20,21,22,23") G1_STEPS(F, pf)                            \
                     GSUM8(16, 17, 18, 19, 20, 21, 22, 23)                                       \
                     "vmovdqa64 %%zmm16, %[s0]\n\t"                                              \
                     : [s0] "=v"(sums[0])                                                        \
                     : GIN, [x0] "r"(x[0])                                                       \
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", GCLOB16)
#define G_ASM(NB, F, nta)                                                                        \
    do {                                                                                         \
        if (nta)                                                                                 \
            G##NB##_ASM(F, PF_NTA_ONLY);                                                         \
        else                                                                                     \
            G##NB##_ASM(F, PF_L1_L2);                                                            \
    } while (0)
AVX512VNNI static inline void a5_group(int NB, const uint8_t *wg, const int8_t *const *xr,
                                       size_t c, int q4, int nta, __m512i *sums)
{
    const __m512i m = _mm512_set1_epi8(15);
    const int8_t *x[8];
    for (int q = 0; q < NB; q++)
        x[q] = xr[q] + c;
    if (NB == 8 && q4) G_ASM(8, Q4, nta);
    else if (NB == 8) G_ASM(8, I8, nta);
    else if (NB == 4 && q4) G_ASM(4, Q4, nta);
    else if (NB == 4) G_ASM(4, I8, nta);
    else if (NB == 2 && q4) G_ASM(2, Q4, nta);
    else if (NB == 2) G_ASM(2, I8, nta);
    else if (q4) G_ASM(1, Q4, nta);
    else G_ASM(1, I8, nta);
}

#define VT __m512
#define VZERO a5_zero
#define VLOAD a5_load
#define VLOADH a5_loadh
#define VSET1 a5_set1
#define VFMA a5_fma
#define VMUL a5_mul
#define VPAIR(p, e, o) a5_pair(p, &(e), &(o))
#define VBW __m512i
#define VBLOAD a5_bload
#define VDPBF a5_dpbf
#define VSTORE k_store16
#define IT __m512i
#define IZERO a5_izero
#define ICVT a5_icvt
#define IW8 __m512i
#define ILOAD8 a5_load8
#define IDOT8 a5_dot8
#define IFIX8 a5_suboff
#define IFIX4 a5_suboff
#define IADD a5_iadd
#define IWU __m512i
#define IQ4(p, lo, hi) a5_q4(p, &(lo), &(hi))
#define IDOTU a5_dot8
#define IGROUP_OK(q4) 1
#define IQ4GROUP(NB, wg, xr, c, nta, sums) a5_group(NB, wg, xr, c, 1, nta, sums)
#define II8GROUP(NB, wg, xr, c, nta, sums) a5_group(NB, wg, xr, c, 0, nta, sums)
AVX512 static KSIG(mm_avx512_f32) { BLOCKS(PASS_F32, 8, 8) }
AVX512 static KSIG(mm_avx512_bf16) { BLOCKS(PASS_BF16, 8, 8) }
/* bf16 compute takes two blocks per pass at every batch size, as f32 does:
 * one block of 8 sequences is 8 vdpbf16ps chains, too few to cover its
 * latency at two per cycle (Zen 5 prefill 1.2-1.3x f32, now 1.6x). */
AVX512BF16 static KSIG(mm_avx512_dbf) { BLOCKS(PASS_DBF, 8, 8) }
AVX512VNNI static KSIG(mm_avx512_i8) { BLOCKS(PASS_I8, 8, 0) }
AVX512VNNI static KSIG(mm_avx512_q4) { BLOCKS(PASS_Q4, 8, 0) }
#include "kernels_undef.h"

/* ======================================================================== */
/* Dispatch                                                                  */

enum { F_F32, F_BF16, F_DBF, F_I8, F_Q4, N_FN };

typedef struct {
    const char *name;
    range_fn fn[N_FN];
    const char *int_name, *bf16_name;
} isa;

/* In order of preference; "amx" is AVX-512 with tile kernels for the
 * int8 / q4 / bf16-compute products. */
static isa isas[] = {
    {"amx", {mm_avx512_f32, mm_avx512_bf16, k_amx_dbf, k_amx_i8, k_amx_q4}, "amx", "amx"},
    {"avx512", {mm_avx512_f32, mm_avx512_bf16, mm_avx512_dbf, mm_avx512_i8, mm_avx512_q4},
     "vnni", "avx512bf16"},
    {"avxvnni", {mm_avx2_f32, mm_avx2_bf16, mm_avx2_dbf, mm_avxvnni_i8, mm_avxvnni_q4},
     "avx-vnni", "emulated"},
    {"avx2", {mm_avx2_f32, mm_avx2_bf16, mm_avx2_dbf, mm_avx2_i8, mm_avx2_q4}, "avx2", "emulated"},
    {"scalar", {mm_scalar_f32, mm_scalar_bf16, mm_scalar_dbf, mm_scalar_i8, mm_scalar_q4},
     "scalar", "emulated"},
};

static const isa *active; /* chosen once; read-only afterwards (k_force_isa aside) */
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

/* F16C (fp16 <-> fp32, for the q4 scales): GCC 12's __builtin_cpu_supports
 * answers 0 for it even where the CPU has it, so CPUID leaf 1 is read. */
static int has_f16c(void)
{
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c >> 29 & 1);
}

static int cpu_has(const char *name)
{
    __builtin_cpu_init();
    if (!strcmp(name, "amx"))
        return k_amx_usable();
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && has_f16c();
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
    if (!strcmp(name, "avxvnni")) { /* GCC 12's __builtin_cpu_supports does not know it */
        unsigned a, b, c, d;
        return cpu_has("avx2") && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a >> 4 & 1);
    }
    return !strcmp(name, "scalar");
}

static int avx512_class(const isa *i) { return !strcmp(i->name, "avx512") || !strcmp(i->name, "amx"); }

static void use_isa(const isa *i)
{
    active = i;
    avx512_on = avx512_class(i);
    fma_on = strcmp(i->name, "scalar") != 0;
    dbf_wide = i->fn[F_DBF] == mm_avx2_dbf;
}

static void choose_isa(void)
{
    __builtin_cpu_init();
    isa *a5 = &isas[1];
    /* AVX-512 without VNNI / BF16 (Skylake-X): those kernels from AVX2. */
    if (!__builtin_cpu_supports("avx512vnni")) {
        a5->fn[F_I8] = mm_avx2_i8;
        a5->fn[F_Q4] = mm_avx2_q4;
        a5->int_name = "avx2";
    }
    if (!__builtin_cpu_supports("avx512bf16")) {
        a5->fn[F_DBF] = mm_avx2_dbf;
        a5->bf16_name = "emulated";
    }
    k_amx_set_fallbacks(a5->fn[F_I8], a5->fn[F_Q4], a5->fn[F_DBF]);
    /* See PREFETCH; METASTATE_PREFETCH=nta|t0 overrides, for CPUs not yet measured. */
    const char *hint = getenv("METASTATE_PREFETCH");
    pf_nta = __builtin_cpu_is("amd");
    if (hint && !strcmp(hint, "nta"))
        pf_nta = 1;
    else if (hint && !strcmp(hint, "t0"))
        pf_nta = 0;
    const char *want = getenv("METASTATE_ISA"); /* lets a user pin a variant */
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        if ((!want || !strcmp(want, isas[i].name)) && cpu_has(isas[i].name)) {
            use_isa(&isas[i]);
            return;
        }
    use_isa(&isas[sizeof isas / sizeof isas[0] - 1]); /* portable */
}

const char *k_isa(void)
{
    pthread_once(&isa_once, choose_isa);
    return active->name;
}

int k_isa_avx512(void)
{
    pthread_once(&isa_once, choose_isa);
    return avx512_on;
}

int k_isa_fma(void)
{
    pthread_once(&isa_once, choose_isa);
    return fma_on;
}

const char *k_isa_int(void)
{
    pthread_once(&isa_once, choose_isa);
    return active->int_name;
}

const char *k_isa_bf16(void)
{
    pthread_once(&isa_once, choose_isa);
    return active->bf16_name;
}

int k_force_isa(const char *name)
{
    pthread_once(&isa_once, choose_isa);
    for (size_t i = 0; i < sizeof isas / sizeof isas[0]; i++)
        if (!strcmp(name, isas[i].name) && cpu_has(name)) {
            use_isa(&isas[i]);
            return 0;
        }
    return -1;
}

int k_prefetch_nta(void)
{
    pthread_once(&isa_once, choose_isa);
    return pf_nta;
}

void k_force_prefetch(int nta)
{
    pthread_once(&isa_once, choose_isa);
    pf_nta = nta != 0;
}

int k_matmul_any_rows(const k_wmat *W)
{
    /* With AVX2 or AVX-512 the exact kernels too, and prefill then sums
     * exactly like decoding. AVX-512: two row blocks times eight rows of X
     * per pass is a GEMM micro-kernel whose weights stay in L2 across the
     * passes (0.1B layer products at 128 rows: 320 GFLOP/s, where sgemm on
     * panels widened per chunk gave the prefill ~185). AVX2 (one block
     * times four rows), on an Emerald Rapids with the set forced, prefill
     * of 512 tokens in one process, alternating: f32 0.89 (0.1B) / 0.84
     * (0.4B) and exact bf16 0.88 / 0.88 of the time with OpenBLAS's Haswell
     * kernels, and 0.37 / 0.33 (0.1B f32 / bf16) against the Prescott
     * (SSE3) kernels Debian's OpenBLAS falls back to on a CPU it does not
     * know. The portable set keeps sgemm. */
    return W->fmt == K_W_I8 || W->fmt == K_W_Q4 || (W->fmt == K_W_BF16 && W->dot_bf16) ||
           k_isa_fma();
}

static range_fn pick(const k_wmat *W)
{
    switch (W->fmt) {
    case K_W_F32: return active->fn[F_F32];
    case K_W_BF16: return active->fn[W->dot_bf16 ? F_DBF : F_BF16];
    case K_W_I8: return active->fn[F_I8];
    case K_W_Q4: return active->fn[F_Q4];
    }
    return active->fn[F_F32];
}

/* ======================================================================== */
/* Thread pool                                                               */

/* A parallel loop: run(arg, i) for every i in [0, n). */
typedef struct {
    void (*run)(void *arg, int i);
    void *arg;
    unsigned long long base, n; /* this loop's items: [base, base + n) in the pool's count */
} job;

/* What one worker reads first in the next pass (k_next_bytes). */
enum { NEXT_THREADS = 4, NEXT_REGIONS = 12 };
typedef struct {
    const char *p;
    size_t n;
} region;
typedef struct {
    region r[NEXT_REGIONS];
    int n;
} next_hint;
/* Bytes a worker prefetches ahead of a pass: half the L2 of a Zen 4 / 5
 * core, a quarter of a Sapphire Rapids one; more than the memory can
 * deliver in the serial gaps of a decode step (~10 us a layer). */
#define NEXT_BYTES (512u << 10)

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
    next_hint hint[NEXT_THREADS]; /* with j: worker i's hint for the pass after j */
} pool = {.busy = PTHREAD_MUTEX_INITIALIZER,
          .mu = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER,
          .n_threads = 1};

/* The hints the calling thread gathers for its next pass. */
static _Thread_local next_hint pending[NEXT_THREADS];

static void drop_pending(void)
{
    for (int t = 0; t < NEXT_THREADS; t++)
        pending[t].n = 0;
}

void k_next_bytes(int t, const void *p, size_t n)
{
    if (t > 0 && t < NEXT_THREADS && n && pending[t].n < NEXT_REGIONS)
        pending[t].r[pending[t].n++] = (region){p, n};
}

void k_next_rows(int t, const k_wmat *W, int r0, int r1)
{
    r1 = imin(r1, W->rows);
    if (!W->packed || r0 >= r1)
        return;
    const size_t bb = block_bytes(W), ng = n_groups(W->cols), blk = (size_t)r0 / K_ROWS;
    const size_t sb = W->fmt == K_W_I8 ? ng * K_ROWS * sizeof(float)
                      : W->fmt == K_W_Q4 ? ng * K_ROWS * sizeof(uint16_t)
                                         : 0; /* a block's scales */
    size_t nb = n_blocks(r1) - blk;
    if (nb * (bb + sb) > NEXT_BYTES)
        nb = NEXT_BYTES / (bb + sb) + 1;
    /* The scales first: they are few, and a kernel needs each block's. */
    if (W->fmt == K_W_I8)
        k_next_bytes(t, W->scales + blk * ng * K_ROWS, nb * sb);
    if (W->fmt == K_W_Q4)
        k_next_bytes(t, W->hscales + blk * ng * K_ROWS, nb * sb);
    k_next_bytes(t, (const char *)W->data + blk * bb, nb * bb);
}

/* A worker between passes: h into L2 (up to NEXT_BYTES) until it is done or
 * the next pass has started (checked every 2 KB). */
static void prefetch_next(const next_hint *h, unsigned seen)
{
    size_t left = NEXT_BYTES;
    for (int i = 0; i < h->n && left; i++) {
        const size_t n = h->r[i].n < left ? h->r[i].n : left;
        left -= n;
        for (size_t off = 0; off < n; off += 64) {
            if (off % 2048 == 0 && atomic_load_explicit(&pool.gen, memory_order_relaxed) != seen)
                return;
            _mm_prefetch(h->r[i].p + off, _MM_HINT_T1);
        }
    }
}

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
    const int me = (int)(intptr_t)arg;
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
        const next_hint h = me < NEXT_THREADS ? pool.hint[me] : (next_hint){.n = 0};
        seen = atomic_load(&pool.gen);
        pthread_mutex_unlock(&pool.mu);
        run_chunks(&j);
        prefetch_next(&h, seen);
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
            started += !pthread_create(&pool.th[i], NULL, worker, (void *)(intptr_t)i);
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
        drop_pending();
        for (int i = 0; i < n; i++)
            run(arg, i);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    pool.j = (job){run, arg, atomic_load(&pool.next), (unsigned long long)n};
    memcpy(pool.hint, pending, sizeof pending);
    drop_pending();
    const job j = pool.j;
    atomic_fetch_add_explicit(&pool.gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mu);
    run_chunks(&j);
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < j.base + j.n)
        _mm_pause();
    pthread_mutex_unlock(&pool.busy);
}

/* The products of one k_matmul_many call, cut into chunks of whole blocks:
 * product i's chunks are items [first[i], first[i + 1]) of one parallel
 * loop. */
enum { MANY_MAX = 8 };
/* Products of fewer weights are one chunk, and passes of fewer are not
 * worth waking anyone for. */
#define SPLIT_MIN 16384
typedef struct {
    int runs, short_runs, short_blocks;
} cut;
typedef struct {
    const k_product *p;
    int B;
    act A[MANY_MAX];
    range_fn fn[MANY_MAX];
    cut cut[MANY_MAX];
    int first[MANY_MAX + 1];
    void *buf[MANY_MAX];          /* product i's prepared inputs */
    int fill_first[MANY_MAX + 1]; /* prefill: product i's rows to prepare are items
                                   * [fill_first[i], fill_first[i + 1]) of a loop */
} matmul_job;

/* The product whose items [first[i], first[i + 1]) hold item. */
static int product_of(const int *first, int item)
{
    int i = 0;
    while (item >= first[i + 1])
        i++;
    return i;
}

/* Rows of a prefill chunk's inputs one item of their preparation takes. */
enum { FILL_ROWS = 16 };

static void fill_item(void *arg, int item)
{
    const matmul_job *m = arg;
    const int i = product_of(m->fill_first, item);
    const int b0 = (item - m->fill_first[i]) * FILL_ROWS;
    act_fill_rows(m->p[i].W, m->p[i].X, m->B, m->buf[i], b0, imin(b0 + FILL_ROWS, m->B));
}

/* How a product is cut for T threads. A decode batch (B <= K_MAX_BATCH) streams the
 * weights from memory, and each run a thread starts costs the prefetchers
 * a ramp (3072 x 768, both threads, q4 B = 1: 22-25 GB/s in four equal
 * chunks per thread, 26-27 in one): one long run per thread over 15/16 of
 * the blocks, then one short one per thread for the rest, which whichever
 * thread is ahead takes. A prefill chunk is compute-bound: four equal
 * chunks per thread balance it better (f32 prefill 2% slower cut as a
 * decode batch is). A small product is one chunk. */
static cut cut_for(const k_wmat *W, int T, int B)
{
    const int blocks = (int)n_blocks(W->rows);
    if ((size_t)W->rows * W->cols < SPLIT_MIN)
        return (cut){1, 0, 0};
    if (B > K_MAX_BATCH)
        return (cut){4 * T, 0, 0};
    return (cut){T, blocks >= 16 ? T : 0, blocks / 16};
}

/* Rows [*r0, *r1) of chunk k (< runs + short_runs); empty when there are
 * fewer blocks than runs. */
static void chunk_rows(int rows, cut c, int k, int *r0, int *r1)
{
    const int blocks = (int)n_blocks(rows);
    const int tail = k >= c.runs, t = tail ? k - c.runs : k, n = tail ? c.short_runs : c.runs;
    const int share = tail ? c.short_blocks : blocks - c.short_blocks, q = share / n, rem = share % n;
    const int b0 = (tail ? blocks - c.short_blocks : 0) + t * q + (t < rem ? t : rem);
    *r0 = b0 * K_ROWS;
    *r1 = imin((b0 + q + (t < rem)) * K_ROWS, rows);
}

void k_next_share(int t, const k_wmat *W, int B)
{
    const cut c = cut_for(W, pool.n_threads, B);
    int r0, r1;
    if (t < c.runs) {
        chunk_rows(W->rows, c, t, &r0, &r1);
        k_next_rows(t, W, r0, r1);
    }
}

static void matmul_chunk(void *arg, int item)
{
    const matmul_job *m = arg;
    const int i = product_of(m->first, item);
    const k_wmat *W = m->p[i].W;
    int r0, r1;
    chunk_rows(W->rows, m->cut[i], item - m->first[i], &r0, &r1);
    if (r0 < r1)
        m->fn[i](W, &m->A[i], m->p[i].Y, m->B, m->p[i].beta, r0, r1);
}

/* Without memory for the prepared inputs: the exact product (the same
 * weights, fp32 inputs), one weight at a time. yrows as in matmul_many. */
static void matmul_fallback(const k_product *p, float *const *yrows, int B, int r0, int r1)
{
    const k_wmat *W = p->W;
    for (int b = 0; b < B; b++)
        for (int r = r0; r < r1; r++) {
            float s = 0;
            for (int c = 0; c < W->cols; c++)
                s += packed_at(W, r, c) * p->X[(size_t)b * W->cols + c];
            float *y = (yrows ? yrows[b] : p->Y + (size_t)b * W->rows) + r;
            *y = p->beta == 0.0f ? s : p->beta * *y + s;
        }
}

/* k_matmul_many; yrows NULL, or (with n == 1) where p's rows go instead of
 * its Y. */
static void matmul_many(const k_product *p, int n, int B, float *const *yrows)
{
    pthread_once(&isa_once, choose_isa);
    for (int done = 0; done < n; done += MANY_MAX) {
        const int cnt = n - done < MANY_MAX ? n - done : MANY_MAX;
        matmul_job m = {.p = p + done, .B = B};
        size_t bytes = 0, off[MANY_MAX];
        for (int i = 0; i < cnt; i++) {
            off[i] = bytes;
            bytes += act_bytes(m.p[i].W, B);
        }
        char *buf = bytes ? k_tbuf(K_TBUF_ACT, bytes) : NULL;
        if (bytes && !buf) {
            for (int i = 0; i < cnt; i++)
                matmul_fallback(&m.p[i], yrows, B, 0, m.p[i].W->rows);
            continue;
        }
        size_t weights = 0;
        for (int i = 0; i < cnt; i++) {
            const k_wmat *W = m.p[i].W;
            /* A prefill chunk's inputs are prepared on the pool, where the
             * caller alone left the other threads waiting (chunks of 128:
             * 0.1B q4 4%, int8 4.5%, bf16 compute 4% faster); a decode
             * batch's take microseconds, less than a pass of their own. */
            m.buf[i] = buf ? buf + off[i] : NULL;
            act_setup(&m.A[i], W, m.p[i].X, B, m.buf[i]);
            m.A[i].yrow = yrows;
            const int on_pool =
                B > K_MAX_BATCH && pool.n_threads > 1 && !inputs_as_given(W) && m.buf[i];
            m.fill_first[i + 1] = m.fill_first[i] + (on_pool ? (B + FILL_ROWS - 1) / FILL_ROWS : 0);
            if (!on_pool)
                act_fill_rows(W, m.p[i].X, B, m.buf[i], 0, B);
            m.fn[i] = pick(W);
            weights += (size_t)W->rows * W->cols;
            m.cut[i] = cut_for(W, pool.n_threads, B);
            m.first[i + 1] = m.first[i] + m.cut[i].runs + m.cut[i].short_runs;
        }
        k_parallel(m.fill_first[cnt], fill_item, &m);
        if (pool.n_threads < 2 || weights < SPLIT_MIN) {
            drop_pending();
            for (int item = 0; item < m.first[cnt]; item++)
                matmul_chunk(&m, item);
        } else
            k_parallel(m.first[cnt], matmul_chunk, &m);
    }
}

void k_matmul_many(const k_product *p, int n, int B) { matmul_many(p, n, B, NULL); }

/* p's inputs prepared on the calling thread, in its scratch; 0 without
 * memory for them (run_rows then takes the exact fallback). */
static int prepare_rows(const k_product *p, int B, act *A)
{
    pthread_once(&isa_once, choose_isa);
    const size_t bytes = act_bytes(p->W, B);
    char *buf = bytes ? k_tbuf(K_TBUF_ACT, bytes) : NULL;
    if (bytes && !buf)
        return 0;
    act_prepare(A, p->W, p->X, B, buf);
    return 1;
}

static void run_rows(const k_product *p, int B, const act *A, int prepared, int r0, int r1)
{
    if (prepared)
        pick(p->W)(p->W, A, p->Y, B, p->beta, r0, r1);
    else
        matmul_fallback(p, NULL, B, r0, r1);
}

void k_matmul_rows(const k_product *p, int B, int r0, int r1)
{
    act A;
    run_rows(p, B, &A, prepare_rows(p, B, &A), r0, r1);
}

void k_matmul_rows_claim(const k_product *p, int B, atomic_int *next, int chunk_rows)
{
    const int rows = p->W->rows, n = (rows + chunk_rows - 1) / chunk_rows;
    int k = atomic_fetch_add_explicit(next, 1, memory_order_relaxed);
    if (k >= n)
        return;
    act A;
    const int prepared = prepare_rows(p, B, &A);
    do
        run_rows(p, B, &A, prepared, k * chunk_rows, imin((k + 1) * chunk_rows, rows));
    while ((k = atomic_fetch_add_explicit(next, 1, memory_order_relaxed)) < n);
}

void k_matmul(const k_wmat *W, const float *X, float *Y, int B, float beta)
{
    const k_product p = {W, X, Y, beta};
    k_matmul_many(&p, 1, B);
}

void k_matmul_to_rows(const k_wmat *W, const float *X, float *const *Yrows, int B, float beta)
{
    const k_product p = {W, X, NULL, beta};
    matmul_many(&p, 1, B, Yrows);
}
