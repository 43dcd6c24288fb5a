/*
 * kernels_amx.c - the int8, q4 and bf16-compute products on AMX tiles, for
 * kernels.c's dispatch on CPUs that have them.
 *
 * Why: vpdpbusd and vdpbf16ps make a 16-row block's product with one
 * sequence cost 16 instructions per 64 int8 (32 bf16) inputs, so batches
 * of 8 and prefill chunks are compute-bound; one tile instruction does
 * that for 16 sequences at once.
 *
 * Design:
 *  - Tiles 0-3 are accumulators and tiles 4-5 the activations (M rows of 64
 *    bytes, M = min(16, B) sequences), tiles 6-7 the weights (16 rows of 64
 *    bytes). The packed layouts are already B tiles: an I8 group
 *    ([16 quads][16 rows][4 bytes]) is one, for TDPBSUD (signed inputs x
 *    the stored q + 128); a Q4 group becomes one after its nibbles are
 *    unpacked into L1 (four groups ahead for a decode batch, a block at a
 *    time for longer chunks); 16 BF16 pairs ([16][16 rows][2]) are one for
 *    TDPBF16PS. Single int8 rows and q4 batches of up to 12 stay on VNNI,
 *    faster there on weights streamed from memory (I8_MIN_B, Q4_MIN_B).
 *    Batches of more than 16 go 16 at a time, the last 16 overlapping the
 *    previous ones (their outputs stored once), so M never changes within
 *    a product and the config is not reloaded.
 *  - int8 / q4: each group's integer sums leave the tile and take the VNNI
 *    kernel's fp32 steps (same operations, same order), so the results are
 *    bit-identical to it; a rolling pipeline over the groups keeps tile
 *    products in flight while earlier groups' sums are stored and scaled,
 *    and the weights are prefetched (tile loads that miss stall).
 *  - bf16: sums stay in the tiles across the row (four row blocks per pass
 *    share each activation tile); pairs past the last whole tile go
 *    through vdpbf16ps. Every batch size takes this path, so a sequence's
 *    outputs do not depend on its batch.
 *  - Linux hands out tile state per request: each thread asks once
 *    (ARCH_REQ_XCOMP_PERM) before its first tile instruction and keeps its
 *    config loaded; a call compares the live config (STTILECFG, a few ns)
 *    before trusting it. A thread refused tiles runs the AVX-512 kernel.
 */
#include "kernels_act.h"

#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define AMX                                                                                      \
    __attribute__((target("amx-tile,amx-int8,amx-bf16,avx512f,avx512bw,avx512vl,avx512vnni,"   \
                          "avx512bf16,fma")))

/* The tile loops inline into each kernel, so its constants fold in. */
#define AMX_INLINE AMX static inline __attribute__((always_inline))

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define TM 16              /* max sequences per activation tile */
#define GBYTES (K_I8_GROUP * K_ROWS) /* one I8 group of a block: one B tile */

static range_fn fb_i8, fb_q4, fb_dbf;

void k_amx_set_fallbacks(range_fn i8, range_fn q4, range_fn dbf)
{
    fb_i8 = i8;
    fb_q4 = q4;
    fb_dbf = dbf;
}

static int ask_tiles(void)
{
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

static int usable;
static pthread_once_t usable_once = PTHREAD_ONCE_INIT;

static void probe(void)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw") ||
        !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("avx512vnni") ||
        !__builtin_cpu_supports("avx512bf16"))
        return;
    unsigned a, b, c, d;
    if (__get_cpuid_max(0, NULL) < 7)
        return;
    __cpuid_count(7, 0, a, b, c, d);
    const unsigned bf16 = 1u << 22, tile = 1u << 24, int8 = 1u << 25;
    if ((d & (bf16 | tile | int8)) != (bf16 | tile | int8))
        return;
    usable = ask_tiles(); /* fails on kernels without AMX support (before 5.16) */
}

int k_amx_usable(void)
{
    pthread_once(&usable_once, probe);
    return usable;
}

/* The 64-byte LDTILECFG operand (palette 1). */
typedef struct __attribute__((aligned(64))) {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static _Thread_local int t_perm; /* 0 not asked, 1 granted, -1 refused */

/* Makes the calling thread's tiles ready for M-row activations; 0 when
 * this thread may not use tiles. */
AMX static int tiles_ready(int M)
{
    if (!t_perm)
        t_perm = ask_tiles() ? 1 : -1;
    if (t_perm < 0)
        return 0;
    tilecfg want, have;
    memset(&want, 0, sizeof want);
    want.palette = 1;
    for (int t = 0; t < 8; t++) {
        want.colsb[t] = 64;
        want.rows[t] = (uint8_t)(t < 6 ? M : 16);
    }
    _tile_storeconfig(&have);
    if (memcmp(&want, &have, sizeof want))
        _tile_loadconfig(&want);
    return 1;
}

static int imin(int a, int b) { return a < b ? a : b; }

/* Rows of a batch chunk: sequences [bs, bs + M) go through the tiles,
 * outputs from sequence bs + skip on are stored. */
typedef struct {
    int bs, M, skip;
} chunk;

static chunk chunk_at(int b0, int B)
{
    chunk c = {b0, imin(TM, B), 0};
    if (b0 + TM > B && B > TM) {
        c.bs = B - TM;
        c.skip = b0 - c.bs;
    }
    return c;
}


/* ------------------------------------------------------------ int8 / q4 */

/* Tile loads that miss the caches stall the tile unit, and the hardware
 * prefetchers do not run ahead of them as they do for vector loads: the
 * weights are prefetched this far ahead of use. Measured on weights
 * streamed from memory: 2 KiB; 8 KiB read 12% slower (bf16 takes four
 * blocks at a time, so four streams). Inlined early on purpose: GCC takes a
 * function of prefetches alone for one without effects and drops the
 * calls. */
#define PF_AHEAD 2048
/* int8 tiles' weights also go into L2 this far ahead: the L1 prefetches
 * above are few (the core's fill buffers), and a busy machine's memory
 * latency outlasts them. Emerald Rapids, a busy hour, one process per
 * build alternating: 0.1B int8 batch steps of 8 0.91-0.96 of the time (8
 * to 13 of 10-16 rounds faster, four runs; T1 instead 0.91-0.98), B = 2
 * 0.90, B = 4 0.96; 0.4B B = 8 0.96. The same build against itself read
 * 1.02 (5 of 10). */
#define PF_AHEAD_L2 8192

AMX_INLINE void prefetch(const void *p, size_t bytes)
{
    for (size_t l = 0; l < bytes; l += 64)
        _mm_prefetch((const char *)p + l, _MM_HINT_T0);
}

AMX_INLINE void prefetch_l2(const void *p, size_t bytes)
{
    for (size_t l = 0; l < bytes; l += 64)
        _mm_prefetch((const char *)p + l, _MM_HINT_T2);
}

/* Group g's integer sums, in cb[m], into the fp32 accumulators acc[m] for
 * m in [0, M): the VNNI kernel's steps exactly. Unrolled, so that with M a
 * constant the accumulators are registers (see int_block). */
AMX_INLINE void int_epilogue(__m512 *acc, int32_t (*cb)[16], size_t g, const float *sp,
                             const act *A, int bs, int M)
{
    const __m512 s = _mm512_loadu_ps(sp + g * K_ROWS);
#pragma GCC unroll 16
    for (int m = 0; m < M; m++) {
        const size_t i = (size_t)(bs + m) * A->G + g;
        const __m512i v = _mm512_sub_epi32(_mm512_load_si512(cb[m]), _mm512_set1_epi32(A->xoff[i]));
        const __m512 sx = _mm512_mul_ps(s, _mm512_set1_ps(A->xs[i]));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), sx, acc[m]);
    }
}

/* A Q4 block's groups as I8-layout B tiles of q (0..15): packed vector v
 * holds quad v in its low nibbles and quad v + 8 in its high ones. The
 * packed weights go into L2 ahead too (0.1B q4 batch steps of 16 0.91,
 * 1.01 and 0.99 of the time in three runs, 8 to 11 of 10-16 rounds faster;
 * 13: 0.96; 0.4B 14: 0.985; prefill even). Inline: a call inside
 * int_block's loop would make it keep its accumulators in memory (every
 * vector register is the caller's to save). */
AMX_INLINE void q4_unpack(const uint8_t *p, uint8_t *t, size_t G)
{
    const __m512i m = _mm512_set1_epi8(15);
    for (size_t g = 0; g < G; g++, p += GBYTES / 2, t += GBYTES) {
        prefetch(p + PF_AHEAD, GBYTES / 2);
        prefetch_l2(p + PF_AHEAD_L2, GBYTES / 2);
        for (int v = 0; v < 8; v++) {
            const __m512i w = _mm512_loadu_si512(p + v * 64);
            _mm512_store_si512(t + v * 64, _mm512_and_si512(w, m));
            _mm512_store_si512(t + (v + 8) * 64, _mm512_and_si512(_mm512_srli_epi16(w, 4), m));
        }
    }
}

/* Group j of a block, step j of the rolling pipeline below: its tile
 * product into accumulator tile J (= j % 4) from input tiles TA, TB
 * (4 + j % 2, 6 + j % 2); the sums of group j - 2 leave tile S (= (j + 2)
 * % 4) for cb[S]; group j - 4, stored two steps ago, takes the fp32 steps.
 * Tile numbers are instruction immediates, hence a macro. */
#define INT_STEP(J, TA, TB, S)                                                                   \
    if (j + J < G) {                                                                             \
        const size_t g = j + J;                                                                  \
        const uint8_t *wg;                                                                       \
        if (wt) {                                                                                \
            wg = wt + g * GBYTES;                                                                \
            if (!q4) {                                                                           \
                prefetch(wg + PF_AHEAD, GBYTES);                                                 \
                prefetch_l2(wg + PF_AHEAD_L2, GBYTES);                                           \
            }                                                                                    \
        } else {                                                                                 \
            wg = ring[g % 8];                                                                    \
            if (g + 4 < G) /* the slot of group g - 4, already loaded */                         \
                q4_unpack(q4p + (g + 4) * GBYTES / 2, ring[(g + 4) % 8], 1);                     \
        }                                                                                        \
        _tile_zero(J);                                                                           \
        _tile_loadd(TA, xa + g * K_I8_GROUP, ldx);                                               \
        _tile_loadd(TB, wg, 64);                                                                 \
        _tile_dpbsud(J, TA, TB);                                                                 \
    }                                                                                            \
    if (j + J >= 2 && j + J - 2 < G)                                                             \
        _tile_stored(S, cb[S], 64);                                                              \
    if (j + J >= 4 && j + J - 4 < G)                                                             \
        int_epilogue(acc, cb[J], j + J - 4, sp, A, c.bs, M);

/* One block times one chunk of sequences, stored into Y rows [r, r + nr).
 * The weight tiles are wt (G of GBYTES: int8, or q4 unpacked beforehand),
 * or, when wt is NULL, q4p's packed groups unpacked four groups ahead into
 * a ring in L1 (a decode batch reads each block once; a tile load of bytes
 * still in the store buffer would wait for them to reach L1), one group a
 * step: four at every fourth step bunched their 32 prefetches, more than
 * the core's fill buffers hold (Emerald Rapids, q4 batches of 9-16 steps
 * 0.90-0.94 of the time; one thread streaming 134 MB at B = 8, 17 -> 13-14
 * ms).
 * A rolling pipeline over the groups, so no tile instruction waits on its
 * own group's store: group j's product uses accumulator j % 4, its sums
 * are stored two groups later and take the fp32 steps four groups later,
 * in group order as before. Against rounds of four groups (all four
 * accumulators zeroed, multiplied, stored, then the next round waits on
 * those stores): a 3072 x 768 int8 product of 8 sequences from the caches
 * 20% faster; a 0.1B int8 batch-8 step 6-11% faster; prefill within 2%. */
AMX_INLINE void int_block_m(const uint8_t *wt, const uint8_t *q4p, const float *sp,
                            const act *A, chunk c, float *Y, int ldy, int r, int nr, float beta,
                            const int M)
{
    const int q4 = q4p != NULL;
    __m512 acc[TM];
    int32_t cb[4][TM][16] __attribute__((aligned(64)));
    uint8_t ring[8][GBYTES] __attribute__((aligned(64)));
#pragma GCC unroll 16
    for (int m = 0; m < TM; m++)
        acc[m] = _mm512_setzero_ps();
    const int8_t *xa = A->xq + (size_t)c.bs * A->kp;
    const size_t ldx = A->kp, G = A->G;
    if (!wt)
        q4_unpack(q4p, ring[0], G < 4 ? G : 4);
    for (size_t j = 0; j < G + 4; j += 4) {
        INT_STEP(0, 4, 6, 2)
        INT_STEP(1, 5, 7, 3)
        INT_STEP(2, 4, 6, 0)
        INT_STEP(3, 5, 7, 1)
    }
#pragma GCC unroll 16
    for (int m = 0; m < M; m++)
        if (m >= c.skip)
            k_store16(acc[m], k_yrow(A, Y, (size_t)ldy, c.bs + m) + r, nr, beta);
}

/* M = 16 (prefill chunks, big batches) and 8 get copies of their own, with
 * M a constant: their sixteen or eight accumulators live in registers
 * rather than on the stack, a load and a store fewer per sequence and
 * group (0.1B, one process per build alternating: int8 batch steps of 8
 * 0.91 of the time, 9 of 10 rounds faster; q4 of 16 0.875, 8 of 8; B = 2,
 * 4, 12 even; 512-token prefill, three runs each, int8 0.92-0.95 and q4
 * 0.90-0.95). Rows before skip are summed too, as the tile did; only the
 * last chunk of a batch over 16 has any. */
AMX_INLINE void int_block(const uint8_t *wt, const uint8_t *q4p, const float *sp, const act *A,
                          chunk c, float *Y, int ldy, int r, int nr, float beta)
{
    if (c.M == TM)
        int_block_m(wt, q4p, sp, A, c, Y, ldy, r, nr, beta, TM);
    else if (c.M == 8 && !q4p) /* q4 batches of 8 take VNNI (Q4_MIN_B) */
        int_block_m(wt, q4p, sp, A, c, Y, ldy, r, nr, beta, 8);
    else
        int_block_m(wt, q4p, sp, A, c, Y, ldy, r, nr, beta, c.M);
}

/* Smaller batches stay on VNNI, which gives the same bits. Measured in
 * the model (0.1B and 0.4B steps, weights streamed from memory): int8 on
 * tiles is 3% slower at B = 1 (VNNI reads 30 GB/s there, tiles 24) and
 * faster from B = 2 (B = 2 -4..-8%, B = 3 -9..-14%, B = 8 -5..-10%; with
 * VNNI's sixteen-chain routine, B = 8 still 0.98-1.00). q4 batches on
 * VNNI's routine against tiles (Emerald Rapids, one process switching):
 * 0.89 / 0.92 / 0.93-0.96 of the step time at B = 9 / 10 / 12, even at 13,
 * 1.04 at 14 and 1.02-1.04 at 16. */
#define I8_MIN_B 2
#define Q4_MIN_B 13

AMX KSIG(k_amx_i8)
{
    if (B < I8_MIN_B || !tiles_ready(imin(TM, B))) {
        fb_i8(W, A, Y, B, beta, r0, r1);
        return;
    }
    const size_t G = A->G;
    for (int r = r0; r < r1; r += K_ROWS) {
        const size_t blk = (size_t)r / K_ROWS;
        const uint8_t *wt = (const uint8_t *)W->data + blk * G * GBYTES;
        const float *sp = W->scales + blk * G * K_ROWS;
        for (int b0 = 0; b0 < B; b0 += TM)
            int_block(wt, NULL, sp, A, chunk_at(b0, B), Y, W->rows, r, imin(K_ROWS, r1 - r), beta);
    }
}

/* A batch of up to 16 unpacks its groups four ahead of their tile
 * products; longer chunks unpack a block once (per-thread buffer) for
 * all their 16-sequence chunks. */
AMX KSIG(k_amx_q4)
{
    const size_t G = A->G;
    if (B < Q4_MIN_B) { /* before the buffers: most decode steps come here */
        fb_q4(W, A, Y, B, beta, r0, r1);
        return;
    }
    uint8_t *t = B <= TM ? NULL : k_tbuf(K_TBUF_Q4, G * GBYTES);
    float *sp = k_tbuf(K_TBUF_Q4S, G * K_ROWS * sizeof(float)); /* a block's scales */
    if ((B > TM && !t) || !sp || !tiles_ready(imin(TM, B))) {
        fb_q4(W, A, Y, B, beta, r0, r1);
        return;
    }
    for (int r = r0; r < r1; r += K_ROWS) {
        const size_t blk = (size_t)r / K_ROWS;
        const uint8_t *q4p = (const uint8_t *)W->data + blk * G * GBYTES / 2;
        if (t)
            q4_unpack(q4p, t, G);
        const uint16_t *hs = W->hscales + blk * G * K_ROWS;
        for (size_t i = 0; i < G * K_ROWS; i += 16) /* fp16 -> fp32, exactly as the VNNI kernel */
            _mm512_storeu_ps(sp + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(hs + i))));
        for (int b0 = 0; b0 < B; b0 += TM)
            int_block(t, q4p, sp, A, chunk_at(b0, B), Y, W->rows, r, imin(K_ROWS, r1 - r), beta);
    }
}

/* ------------------------------------------------------------ bf16 */

#define TP 16 /* bf16 pairs per tile row */

/* NB (1..4) consecutive blocks from wp (block stride bs elements) times one
 * chunk: whole tiles of pairs in the tiles, the rest with vdpbf16ps. With
 * l2 (a batch of one chunk, whose weights are read once) the weights also
 * go into L2 ahead, as int8's do: single steps 0.92 of the time (0.1B, 12
 * of 16 rounds faster) and 0.91 (0.4B, 8 of 10), batches of 8 0.94; the
 * same build against itself 0.99. */
AMX_INLINE void dbf_blocks(const uint16_t *wp, size_t bs, int NB, int l2, const act *A, chunk c,
                           float *Y, int ldy, int r, int r1, float beta)
{
    const size_t np = A->kp / 2, nt = np / TP, ldx = np * 4;
    const uint32_t *xa = A->xb + (size_t)c.bs * np;
    _tile_zero(0);
    if (NB > 1)
        _tile_zero(1);
    if (NB > 2)
        _tile_zero(2);
    if (NB > 3)
        _tile_zero(3);
    for (size_t t = 0; t < nt; t++) {
        const uint16_t *w = wp + t * TP * 2 * K_ROWS;
        for (int j = 0; j < NB; j++) {
            prefetch(w + (size_t)j * bs + PF_AHEAD / 2, TP * 4 * K_ROWS);
            if (l2)
                prefetch_l2(w + (size_t)j * bs + PF_AHEAD_L2 / 2, TP * 4 * K_ROWS);
        }
        _tile_loadd(4, xa + t * TP, ldx);
        _tile_loadd(6, w, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (NB > 1) {
            _tile_loadd(7, w + bs, 64);
            _tile_dpbf16ps(1, 4, 7);
        }
        if (NB > 2) {
            _tile_loadd(6, w + 2 * bs, 64);
            _tile_dpbf16ps(2, 4, 6);
        }
        if (NB > 3) {
            _tile_loadd(7, w + 3 * bs, 64);
            _tile_dpbf16ps(3, 4, 7);
        }
    }
    float cb[4][TM][16] __attribute__((aligned(64)));
    _tile_stored(0, cb[0], 64);
    if (NB > 1)
        _tile_stored(1, cb[1], 64);
    if (NB > 2)
        _tile_stored(2, cb[2], 64);
    if (NB > 3)
        _tile_stored(3, cb[3], 64);
    for (int j = 0; j < NB; j++) {
        const uint16_t *wj = wp + (size_t)j * bs;
        const int rj = r + j * K_ROWS;
        for (int m = c.skip; m < c.M; m++) {
            __m512 a = _mm512_load_ps(cb[j][m]);
            const uint32_t *x = xa + (size_t)m * np;
            for (size_t p = nt * TP; p < np; p++)
                a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(wj + p * 2 * K_ROWS),
                                     (__m512bh)_mm512_set1_epi32((int)x[p]));
            k_store16(a, k_yrow(A, Y, (size_t)ldy, c.bs + m) + rj, imin(K_ROWS, r1 - rj), beta);
        }
    }
}

AMX KSIG(k_amx_dbf)
{
    if (!tiles_ready(imin(TM, B))) {
        fb_dbf(W, A, Y, B, beta, r0, r1);
        return;
    }
    const size_t bs = (size_t)W->kp * K_ROWS;
    for (int r = r0; r < r1;) {
        const uint16_t *wp = (const uint16_t *)W->data + (size_t)(r / K_ROWS) * bs;
        const int nb = (r1 - r + K_ROWS - 1) / K_ROWS;
        for (int b0 = 0; b0 < B; b0 += TM) {
            const chunk c = chunk_at(b0, B);
            if (nb >= 4)
                dbf_blocks(wp, bs, 4, B <= TM, A, c, Y, W->rows, r, r1, beta);
            else
                dbf_blocks(wp, bs, 1, B <= TM, A, c, Y, W->rows, r, r1, beta);
        }
        r += (nb >= 4 ? 4 : 1) * K_ROWS;
    }
}
