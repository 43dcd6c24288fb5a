/* kernels_act.h - what kernels.c hands its range kernels (the prepared
 * activations and the kernel signature), and the AMX kernels of
 * kernels_amx.c that its dispatch may pick. Internal to kernels*.c;
 * kernels.h stays the engine's interface. */
#ifndef METASTATE_ENGINE_KERNELS_ACT_H
#define METASTATE_ENGINE_KERNELS_ACT_H

#include "kernels.h"

#include <immintrin.h>

/* What the kernels read besides W: the fp32 inputs as given (exact
 * formats), or per sequence the inputs rounded to bf16 pairs, or quantized
 * to int8 per group of K_I8_GROUP (scale xs; xoff, the integer sum times
 * the offset W's weights are held with, 128 int8 and 8 q4, which the
 * unsigned integer sums subtract: ready to broadcast from memory, as a
 * value computed in a general register cost q4 at batch 8 a third). */
typedef struct {
    const float *x;   /* B x cols (exact formats) */
    size_t ldx;       /* cols */
    const uint32_t *xb; /* B x kp/2 bf16 pairs, even column in the low half */
    const float *xr;    /* or B x kp, those inputs widened (the AVX2 kernels'), padding zero */
    const int8_t *xq; /* B x kp, padding zero */
    const float *xs;     /* B x G */
    const int32_t *xoff; /* B x G */
    size_t kp, G;
    float *const *yrow; /* NULL, or output row b at yrow[b] (k_product.Yrows) */
} act;

/* Where sequence b's output row starts: Y's row b (rows floats apart), or
 * the caller's own buffer for it. */
static inline float *k_yrow(const act *A, float *Y, size_t rows, int b)
{
    return A->yrow ? A->yrow[b] : Y + (size_t)b * rows;
}

/* A range kernel: rows [r0, r1) of Y = beta * Y + X W^T for all B
 * sequences (r0 a multiple of K_ROWS, r1 one too or W->rows). */
#define KSIG(name)                                                                               \
    void name(const k_wmat *W, const act *A, float *Y, int B, float beta, int r0, int r1)
typedef KSIG((*range_fn));

/* Y[i] = beta * Y[i] + a[i] for the nr (<= 16) rows of a block: the one
 * store of the AVX-512 and AMX kernels, which must give the same bits. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static inline void k_store16(__m512 a, float *y,
                                                                                  int nr, float beta)
{
    const __mmask16 m = nr >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nr) - 1);
    if (beta != 0.0f)
        a = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(beta), _mm512_maskz_loadu_ps(m, y)), a);
    _mm512_mask_storeu_ps(y, m, a);
}

/* Per-thread scratch buffers, grown on demand (so only a thread's first
 * products, or larger ones, allocate) and freed when the thread ends. Each
 * is 64-byte aligned; NULL when it cannot grow. */
enum { K_TBUF_ACT, K_TBUF_Q4, K_TBUF_Q4S, K_TBUFS };
void *k_tbuf(int which, size_t bytes);

/* IEEE fp16 (the q4 scales): rounding to nearest even, and widening
 * exactly; the same bits as the F16C instructions. */
uint16_t k_f32_to_f16(float f);
float k_f16_to_f32(uint16_t h);

/* 1 when the CPU has AMX-INT8/BF16 tiles (and the AVX-512 VNNI/BF16 the
 * AMX kernels also use) and Linux lets this process use them; asks once. */
int k_amx_usable(void);
/* The AVX-512 kernels the AMX ones hand over to where tiles do not win (int8
 * and q4 batches of up to 12) or a thread is refused tiles; set before use. */
void k_amx_set_fallbacks(range_fn i8, range_fn q4, range_fn dbf);
/* int8 / q4: bit-identical to the VNNI kernels (exact integer sums per
 * group, then the same fp32 operations in the same order), so any batch
 * size may take either. dbf: tiles for every batch size, so a sequence gets
 * the same bits in any batch. */
KSIG(k_amx_i8);
KSIG(k_amx_q4);
KSIG(k_amx_dbf);

#endif
