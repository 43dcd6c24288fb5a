/*
 * kernels.h - the engine's hot loops (internal): weight matrices in a chosen
 * in-memory format and the products that read them, with one implementation
 * per instruction set picked at run time.
 *
 * Why our own kernels: generating a token reads every weight once, so speed
 * is memory bandwidth / bytes of weights. OpenBLAS sgemv runs below the
 * bandwidth for these shapes and knows only fp32; these kernels read bf16 or
 * int8 weights, widen them in registers and accumulate in fp32, and read each
 * weight row once for a whole batch of sequences (the server's concurrent
 * sessions), which is what makes a batch cost little more than one.
 */
#ifndef METASTATE_ENGINE_KERNELS_H
#define METASTATE_ENGINE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef enum { K_W_F32 = 0, K_W_BF16 = 1, K_W_I8 = 2 } k_wfmt;

#define K_I8_GROUP 64 /* inputs per int8 scale */

/* A weight matrix (rows = outputs, cols = inputs), row-major, in one format.
 * I8: symmetric per (row, group of K_I8_GROUP inputs), value = q * scale. */
typedef struct k_wmat {
    k_wfmt fmt;
    int rows, cols;
    void *data;      /* rows*cols elements of float, uint16_t (bf16) or int8_t */
    float *scales;   /* I8 only: rows * ceil(cols / K_I8_GROUP) */
} k_wmat;

/* Bytes held (and read per product) for W. */
size_t k_wmat_bytes(const k_wmat *W);

/* Fills W (allocated here, 64-byte aligned) from rows*cols fp32 values.
 * BF16 rounds to nearest even; an exact widening when src came from bf16.
 * Returns 0, or -1 on OOM. */
int k_wmat_init(k_wmat *W, k_wfmt fmt, int rows, int cols, const float *src);
/* The same in two steps, so a large matrix can be filled in row chunks:
 * allocate (contents undefined), then convert rows [r0, r1) from src. */
int k_wmat_alloc(k_wmat *W, k_wfmt fmt, int rows, int cols);
void k_wmat_set_rows(k_wmat *W, int r0, int r1, const float *src);
void k_wmat_free(k_wmat *W);

/* Row r of W widened to fp32 into dst (cols floats): embedding lookups. */
void k_wmat_row(const k_wmat *W, int r, float *dst);
/* Rows [r0, r1) of W widened into dst ((r1-r0) x cols): prefill panels. */
void k_wmat_rows(const k_wmat *W, int r0, int r1, float *dst);

/* Y (B x rows) = beta * Y + X (B x cols) * W^T, for small B (<= K_MAX_BATCH):
 * each weight row is read once for all B vectors. Uses the thread pool. */
#define K_MAX_BATCH 16
void k_matmul(const k_wmat *W, const float *X, float *Y, int B, float beta);

/* Runs run(arg, i) for i in [0, n) on the pool (the caller takes part);
 * returns when all are done. Items must be independent. When the pool is
 * busy with another caller's loop, this caller runs its items alone. */
void k_parallel(int n, void (*run)(void *arg, int i), void *arg);
/* Threads of the pool, the caller included (>= 1). */
int k_threads(void);

/* The instruction set in use: "avx512", "avx2" or "scalar". */
const char *k_isa(void);
/* Forces an instruction set ("avx512", "avx2", "scalar"), for tests and
 * benchmarks; returns 0, or -1 when the CPU lacks it. Not thread-safe: call
 * before any product runs. */
int k_force_isa(const char *name);
/* Worker threads for k_matmul (>= 1, 1 = calling thread only); set once. */
void k_set_threads(int n);

#endif
