/*
 * kernels.h - the engine's hot loops (internal): weight matrices in a chosen
 * in-memory format and the products that read them, with one implementation
 * per instruction set picked at run time.
 *
 * Why our own kernels: generating a token reads every weight once, so speed
 * is memory bandwidth / bytes of weights. OpenBLAS sgemv runs below the
 * bandwidth for these shapes and knows only fp32. The product matrices are
 * therefore repacked at load into blocks of K_ROWS output rows stored
 * column by column (one vector holds K_ROWS rows of one input column, or of
 * a pair / quad of columns for the bf16 and int8 dot-product instructions):
 * the kernel loads a weight vector once, widens or dequantizes it once, and
 * accumulates it into one accumulator per sequence with that sequence's
 * input broadcast. No horizontal sums, the weights are read once for the
 * whole batch, and every output is summed in the same order whatever the
 * batch size, so a sequence decoded in a batch gets bit for bit what it
 * gets alone.
 */
#ifndef METASTATE_ENGINE_KERNELS_H
#define METASTATE_ENGINE_KERNELS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { K_W_F32 = 0, K_W_BF16 = 1, K_W_I8 = 2, K_W_Q4 = 3 } k_wfmt;

#define K_ROWS 16     /* output rows per packed block */
#define K_I8_GROUP 64 /* inputs per int8 / q4 scale, and per activation scale */

/* A weight matrix (rows = outputs, cols = inputs).
 * packed (k_wmat_alloc): blocks of K_ROWS rows, column-major inside a block,
 *   for products. F32 exact; BF16 exact widening (dot_bf16 = 1: products
 *   round the activations to bf16 and use bf16 dot products); I8 symmetric
 *   per (row, group of K_I8_GROUP inputs), w = q * scale, activations
 *   quantized to int8 per group; Q4 symmetric per (row, group),
 *   w = scale * (q - 8) with q in 0..15, activations as for I8.
 * plain (k_wmat_alloc_plain): row-major F32/BF16/I8, for row lookups
 *   (the embedding) only. */
typedef struct k_wmat {
    k_wfmt fmt;
    int rows, cols;
    int packed;
    int dot_bf16;  /* BF16 packed only; set by the owner before products run */
    int kp;        /* packed: cols rounded up to a whole pair (BF16) or group (I8, Q4) */
    void *data;
    float *scales; /* I8 */
    uint16_t *hscales; /* Q4, as IEEE fp16 (signed; w = scale * (q - 8)): 34 bytes per 64 weights */
    int in_arena;  /* the memory is a k_arena's, freed with it */
} k_wmat;

/* Memory for a model's matrices, in 2 MB pages where the OS grants them
 * (a streamed matrix took a TLB miss every 4 KB: f32 products of one row
 * read 30 GB/s on 4 KB pages, 34 on 2 MB). Freed at once with everything
 * in it; not thread-safe. */
typedef struct k_arena k_arena;
k_arena *k_arena_new(void); /* NULL when out of memory */
void k_arena_free(k_arena *a);

/* Bytes held (and read per product) for W. */
size_t k_wmat_bytes(const k_wmat *W);

/* Allocates a packed matrix (contents zero), then fills rows [r0, r1) from
 * src ((r1-r0) x cols fp32, rounding BF16 to nearest even, an exact
 * widening when src came from bf16). For packed matrices r0 is a multiple
 * of K_ROWS and r1 is one too or rows. Returns 0, or -1 on OOM / a format
 * the layout does not hold (plain Q4). */
int k_wmat_alloc(k_wmat *W, k_wfmt fmt, int rows, int cols);
/* k_wmat_alloc with the memory from a (NULL: as k_wmat_alloc). */
int k_wmat_alloc_in(k_wmat *W, k_arena *a, k_wfmt fmt, int rows, int cols);
int k_wmat_alloc_plain(k_wmat *W, k_wfmt fmt, int rows, int cols);
void k_wmat_set_rows(k_wmat *W, int r0, int r1, const float *src);
/* k_wmat_set_rows of the fp32 widening of bf16 values, for a BF16 W (packed
 * or plain), without widening them: row r is the cols values at src + (r -
 * r0) * stride values (any alignment), and W gets the same bytes. */
void k_wmat_set_rows_bf16(k_wmat *W, int r0, int r1, const void *src, size_t stride);
/* k_wmat_alloc + k_wmat_set_rows of all rows. */
int k_wmat_init(k_wmat *W, k_wfmt fmt, int rows, int cols, const float *src);
int k_wmat_init_in(k_wmat *W, k_arena *a, k_wfmt fmt, int rows, int cols, const float *src);
void k_wmat_free(k_wmat *W);

/* Rows [r0, r1) of W as the format holds them, widened into dst
 * ((r1-r0) x cols); any layout (packed ones slowly: tests, lookups). */
void k_wmat_rows(const k_wmat *W, int r0, int r1, float *dst);
void k_wmat_row(const k_wmat *W, int r, float *dst);
/* Packed W only: rows [r0, r1) (r0 a multiple of K_ROWS) widened and
 * transposed into dst (cols x (r1-r0), row-major), the B operand of a
 * prefill sgemm. */
void k_wmat_panel(const k_wmat *W, int r0, int r1, float *dst);

/* 1 when products of W go through k_matmul for any number of rows (its
 * integer / bf16 dot products, and with AVX2 or AVX-512 its exact ones,
 * beat a widened sgemm); 0 when long chunks are better served by sgemm on
 * k_wmat_panel (exact formats on the portable kernels). */
int k_matmul_any_rows(const k_wmat *W);

/* Y (B x rows) = beta * Y + X (B x cols) * W^T for a packed W, any B >= 1:
 * each block of weights is read from memory once for all B vectors, and
 * row (b, r) is bit-identical whatever B is. Uses the thread pool;
 * thread-safe for distinct Y (a per-thread scratch holds the prepared
 * activations, allocated on a thread's first product). */
#define K_MAX_BATCH 16 /* decode batch the engine hands to k_matmul at once */
void k_matmul(const k_wmat *W, const float *X, float *Y, int B, float beta);
/* k_matmul with row b of Y at Yrows[b] (W->rows floats each, distinct, the
 * array read during the call only): a batch's logits written straight into
 * each sequence's own buffer, with the same bits. */
void k_matmul_to_rows(const k_wmat *W, const float *X, float *const *Yrows, int B, float beta);

/* Y = beta * Y + X W^T of one k_matmul_many call (X is B x W->cols). */
typedef struct {
    const k_wmat *W;
    const float *X;
    float *Y;
    float beta;
} k_product;
/* Independent products (no Y overlaps another's X or Y), each bit-identical
 * to its own k_matmul call, in one pass of the pool: one wake-up and one
 * wait for all, and the threads share out their blocks together. */
void k_matmul_many(const k_product *p, int n, int B);
/* Rows [r0, r1) of p's Y (r0 a multiple of K_ROWS, r1 one too or the last
 * row) for all B inputs, on the calling thread only, with that thread's
 * scratch: the same bits as those rows of k_matmul. For a pool item that
 * needs a slice of a product, so that no pass of its own is spent on it. */
void k_matmul_rows(const k_product *p, int B, int r0, int r1);
/* k_matmul_rows over chunks of chunk_rows rows (a multiple of K_ROWS) that
 * *next hands out (start it at 0): each caller prepares its inputs once and
 * takes chunks until none is left, so threads that call it on one product
 * share its rows as they become free. The same bits as k_matmul. */
void k_matmul_rows_claim(const k_product *p, int B, atomic_int *next, int chunk_rows);

/* x[i] += y[i] for i < n (x and y distinct), vectorized for the CPU's set;
 * same sums on every CPU. Any thread. */
void k_add_into(float *restrict x, const float *restrict y, size_t n);

/* Runs run(arg, i) for i in [0, n) on the pool (the caller takes part);
 * returns when all are done. Items must be independent. When the pool is
 * busy with another caller's loop, this caller runs its items alone. */
void k_parallel(int n, void (*run)(void *arg, int i), void *arg);
/* Hints for the calling thread's next pass of the pool (its next k_parallel,
 * k_matmul or k_matmul_many): what worker t (1 .. k_threads() - 1) reads
 * first in it. A worker done with its share of a pass prefetches its hint
 * (up to 512 KB) into L2 until the next pass starts, while the caller ends
 * its share and does the serial work between passes, when the memory would
 * be idle. Only a hint: a wrong region costs bandwidth, never a result;
 * regions past the first 12 of a worker, and workers past the third, are
 * ignored. The next pass takes them all, on the pool or not. Each calling
 * thread gathers its own. */
void k_next_bytes(int t, const void *p, size_t n);
/* k_next_bytes of packed W's rows [r0, r1) (r0 a multiple of K_ROWS), as
 * far as the 512 KB reach: their scales, then their weights. */
void k_next_rows(int t, const k_wmat *W, int r0, int r1);
/* k_next_rows of the run worker t takes first in k_matmul(W, X, Y, B, ..)
 * when the threads take their first runs in order (the caller the first). */
void k_next_share(int t, const k_wmat *W, int B);
/* Threads of the pool, the caller included (>= 1). */
int k_threads(void);

/* The instruction set in use: "amx" (AVX-512 plus tile kernels for int8,
 * q4 and bf16 compute), "avx512", "avxvnni" (AVX2 with VEX vpdpbusd for
 * int8 / q4), "avx2" or "scalar". */
const char *k_isa(void);
/* 1 when the set in use has AVX-512 (the other kernels of the engine
 * follow it, so forcing a set runs their portable code too). */
int k_isa_avx512(void);
/* 1 when the set in use has AVX2 with FMA (every set but "scalar"). */
int k_isa_fma(void);
/* Forces an instruction set (a k_isa name), for tests and
 * benchmarks; returns 0, or -1 when the CPU lacks it. Not thread-safe: call
 * before any product runs. */
int k_force_isa(const char *name);
/* 1 when the vector kernels prefetch weights non-temporally (AMD), 0 when
 * into L1 (elsewhere; METASTATE_PREFETCH=nta|t0 overrides). */
int k_prefetch_nta(void);
/* Forces the hint, for tests and benchmarks: the results do not depend on
 * it. Not thread-safe: call before any product runs. */
void k_force_prefetch(int nta);
/* Which dot-product instructions the active set uses for int8/q4 and for
 * bf16 compute: "amx" / "vnni" / "avx-vnni" / "avx2" / "scalar" and "amx" /
 * "avx512bf16" / "emulated". */
const char *k_isa_int(void);
const char *k_isa_bf16(void);
/* Worker threads for k_matmul (>= 1, 1 = calling thread only); set once. */
void k_set_threads(int n);

#endif
