/*
 * test_kernels.c - every kernel variant the CPU offers (AMX, AVX-512, AVX2,
 * portable), every weight format, batch sizes around the register blocking
 * and shapes with ragged tails, against a double-precision product of the
 * same (dequantized) weights; the thread pool against one thread, with and
 * without next-pass hints; slices and claimed chunks of a product against
 * the whole; the formats' rounding.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "kernels_act.h"

static const char *const isas[] = {"amx", "avx512", "avxvnni", "avx2", "scalar"};
#define N_ISAS (sizeof isas / sizeof isas[0])

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

static void fill(float *a, size_t n, unsigned *seed)
{
    for (size_t i = 0; i < n; i++)
        a[i] = frand(seed);
}

/* The formats a product can run in: a weight format, with bf16 either
 * exact or through bf16 dot products. */
typedef struct {
    k_wfmt fmt;
    int dot_bf16;
    const char *name;
} mode;
static const mode modes[] = {{K_W_F32, 0, "f32"}, {K_W_BF16, 0, "bf16"}, {K_W_BF16, 1, "bf16-dot"},
                             {K_W_I8, 0, "int8"}, {K_W_Q4, 0, "q4"}};
#define N_MODES (sizeof modes / sizeof modes[0])

/* Inputs the mode represents exactly, so the product can be checked
 * tightly against double precision: bf16 values for bf16 dot products;
 * for the int8-activation formats multiples of 1/127 whose group maximum
 * is 1 (so quantizing them loses nothing). Otherwise any floats. */
static void exact_inputs(const mode *md, float *x, int B, int cols, unsigned *seed)
{
    for (int b = 0; b < B; b++)
        for (int c = 0; c < cols; c++) {
            float v = frand(seed);
            float *o = &x[b * cols + c];
            if (md->fmt == K_W_I8 || md->fmt == K_W_Q4)
                *o = c % 64 == 0 ? 1.0f : (float)lrintf(v * 127.0f) / 127.0f;
            else if (md->dot_bf16) {
                k_wmat t;
                cr_assert_eq(k_wmat_init(&t, K_W_BF16, 1, 1, &v), 0);
                k_wmat_rows(&t, 0, 1, o);
                k_wmat_free(&t);
            } else
                *o = v;
        }
}

/* Max |k_matmul - exact| / (sum |w x| + 1e-3) over Y, with the weights as
 * the format holds them: a relative error that does not blow up on outputs
 * that happen to cancel to near zero. any_inputs: random inputs instead of
 * ones the mode represents exactly. */
static double check_product(const mode *md, int rows, int cols, int B, float beta, int any_inputs)
{
    unsigned seed = (unsigned)(rows * 31 + cols * 7 + B);
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
    float *y = malloc(sizeof(float) * B * rows), *y0 = malloc(sizeof(float) * B * rows);
    float *wd = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++)
        w[i] = frand(&seed);
    if (any_inputs)
        for (int i = 0; i < B * cols; i++)
            x[i] = frand(&seed);
    else
        exact_inputs(md, x, B, cols, &seed);
    for (int i = 0; i < B * rows; i++)
        y0[i] = y[i] = frand(&seed);
    k_wmat W;
    cr_assert_eq(k_wmat_init(&W, md->fmt, rows, cols, w), 0);
    W.dot_bf16 = md->dot_bf16;
    k_wmat_rows(&W, 0, rows, wd); /* the weights as the format holds them */
    k_matmul(&W, x, y, B, beta);
    double worst = 0;
    for (int b = 0; b < B; b++)
        for (int r = 0; r < rows; r++) {
            double exact = beta * (double)y0[b * rows + r], mag = fabs(exact);
            for (int c = 0; c < cols; c++) {
                exact += (double)wd[r * cols + c] * x[b * cols + c];
                mag += fabs((double)wd[r * cols + c] * x[b * cols + c]);
            }
            double e = fabs(y[b * rows + r] - exact) / (mag + 1e-3);
            if (e > worst)
                worst = e;
        }
    k_wmat_free(&W);
    free(w);
    free(x);
    free(y);
    free(y0);
    free(wd);
    return worst;
}

Test(kernels, every_isa_format_batch_and_shape)
{
    const int shapes[][2] = {{1, 16}, {37, 100}, {64, 768}, {130, 257}, {300, 64}, {17, 3}};
    const int batches[] = {1, 2, 3, 4, 5, 8, 9, 16, 40};
    int ran = 0;
    for (size_t i = 0; i < N_ISAS; i++) {
        if (k_force_isa(isas[i]))
            continue; /* this CPU lacks it */
        ran++;
        for (size_t md = 0; md < N_MODES; md++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++)
                    for (int beta = 0; beta < 2; beta++) {
                        double e = check_product(&modes[md], shapes[s][0], shapes[s][1],
                                                 batches[b], (float)beta, 0);
                        cr_expect_leq(e, 2e-6, "%s %s %dx%d B=%d beta=%d: rel err %g", isas[i],
                                      modes[md].name, shapes[s][0], shapes[s][1], batches[b],
                                      beta, e);
                    }
    }
    cr_expect_geq(ran, 1);
    cr_expect_eq(k_force_isa("scalar"), 0, "the portable variant is always there");
}

/* Inputs the mode rounds (bf16, int8 per group of 64): the rounding's own
 * bound, half a step per input, relative to sum |w x|: 2^-9 for bf16,
 * 1/254 of the group maximum for int8 (about 1% of a mean |x| of uniform
 * inputs); an error in a scale or a layout is of order 1. */
Test(kernels, rounded_inputs_stay_within_the_rounding)
{
    const double tol[] = {2e-6, 2e-6, 2.0 / 512, 1e-2, 1e-2};
    for (size_t i = 0; i < N_ISAS; i++) {
        if (k_force_isa(isas[i]))
            continue;
        for (size_t md = 0; md < N_MODES; md++)
            for (int B = 1; B <= 9; B += 4) {
                double e = check_product(&modes[md], 75, 700, B, 0.0f, 1);
                cr_expect_leq(e, tol[md], "%s %s B=%d: rel err %g", isas[i], modes[md].name, B, e);
            }
    }
    cr_expect_eq(k_force_isa("scalar"), 0);
}

/* bf16 compute rounds its inputs to bf16 before any product, in every
 * variant (the dot-product instructions take bf16 operands; the AVX2 and
 * portable kernels round them themselves): inputs and their roundings
 * give the same bits. */
Test(kernels, bf16_compute_rounds_its_inputs)
{
    const int rows = 48, cols = 200, B = 5;
    unsigned seed = 11;
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
    float *xr = malloc(sizeof(float) * B * cols);
    float *y = malloc(sizeof(float) * B * rows), *yr = malloc(sizeof(float) * B * rows);
    fill(w, (size_t)rows * cols, &seed);
    fill(x, (size_t)B * cols, &seed);
    k_wmat R; /* rounds to nearest even, as the products must */
    cr_assert_eq(k_wmat_init(&R, K_W_BF16, B, cols, x), 0);
    k_wmat_rows(&R, 0, B, xr);
    k_wmat_free(&R);
    int differ = 0;
    for (int i = 0; i < B * cols; i++)
        differ += xr[i] != x[i];
    cr_assert_gt(differ, B * cols / 2, "the inputs must need rounding for the test to mean much");
    for (size_t i = 0; i < N_ISAS; i++) {
        if (k_force_isa(isas[i]))
            continue;
        k_wmat W;
        cr_assert_eq(k_wmat_init(&W, K_W_BF16, rows, cols, w), 0);
        W.dot_bf16 = 1;
        k_matmul(&W, x, y, B, 0.0f);
        k_matmul(&W, xr, yr, B, 0.0f);
        cr_expect_eq(memcmp(y, yr, sizeof(float) * B * rows), 0,
                     "%s: bf16 compute of inputs differs from that of their rounding", isas[i]);
        k_wmat_free(&W);
    }
    cr_expect_eq(k_force_isa("scalar"), 0);
    free(w);
    free(x);
    free(xr);
    free(y);
    free(yr);
}

/* Decoding a sequence in a batch must give exactly what it gets alone
 * (the server batches whoever is generating), in every variant and mode.
 * The single rows run with the other prefetch hint: every pass is compiled
 * once per hint (non-temporal on AMD, T0 elsewhere), and both must give the
 * same bits. */
Test(kernels, batched_rows_equal_single_rows_bit_for_bit)
{
    const int rows = 77, cols = 300, B = 16;
    const int nta = k_prefetch_nta();
    unsigned seed = 3;
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
    float *yb = malloc(sizeof(float) * B * rows), *y1 = malloc(sizeof(float) * rows);
    fill(w, (size_t)rows * cols, &seed);
    fill(x, (size_t)B * cols, &seed);
    for (size_t i = 0; i < N_ISAS; i++) {
        if (k_force_isa(isas[i]))
            continue;
        for (size_t md = 0; md < N_MODES; md++) {
            k_wmat W;
            cr_assert_eq(k_wmat_init(&W, modes[md].fmt, rows, cols, w), 0);
            W.dot_bf16 = modes[md].dot_bf16;
            for (int nb = 1; nb <= B; nb++) {
                k_force_prefetch(nta);
                k_matmul(&W, x, yb, nb, 0.0f);
                k_force_prefetch(!nta);
                for (int b = 0; b < nb; b++) {
                    k_matmul(&W, x + (size_t)b * cols, y1, 1, 0.0f);
                    cr_expect_eq(memcmp(y1, yb + (size_t)b * rows, sizeof(float) * rows), 0,
                                 "%s %s: row %d of a batch of %d differs", isas[i],
                                 modes[md].name, b, nb);
                }
            }
            k_wmat_free(&W);
        }
    }
    k_force_prefetch(nta);
    cr_expect_eq(k_force_isa("scalar"), 0);
    free(w);
    free(x);
    free(yb);
    free(y1);
}

/* The prefill panel is the held weights, transposed. */
Test(kernels, panel_is_the_weights_transposed)
{
    const int rows = 70, cols = 130;
    unsigned seed = 11;
    float *w = malloc(sizeof(float) * rows * cols), *wd = malloc(sizeof(float) * rows * cols);
    float *p = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++)
        w[i] = frand(&seed);
    for (size_t md = 0; md < N_MODES; md++) {
        k_wmat W;
        cr_assert_eq(k_wmat_init(&W, modes[md].fmt, rows, cols, w), 0);
        k_wmat_rows(&W, 0, rows, wd);
        const int r0 = 16, n = rows - r0;
        k_wmat_panel(&W, r0, rows, p);
        int bad = 0;
        for (int r = r0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                bad += p[(size_t)c * n + (r - r0)] != wd[(size_t)r * cols + c];
        cr_expect_eq(bad, 0, "%s: %d panel entries differ", modes[md].name, bad);
        k_wmat_free(&W);
    }
    free(w);
    free(wd);
    free(p);
}

/* The pool cuts a decode batch (B <= 16) into a long run per thread and a
 * short tail, a prefill chunk into four chunks per thread, and a product of
 * fewer blocks than chunks into some empty ones: every row is computed
 * once, as one thread computes it. */
Test(kernels, thread_pool_gives_the_single_thread_result)
{
    k_set_threads(2);
    const int shapes[] = {4099, 40}, batches[] = {3, 20}, cols = 512; /* both split */
    const size_t R = (size_t)shapes[0], NB = (size_t)batches[1]; /* the largest of each */
    unsigned seed = 5;
    float *w = malloc(sizeof(float) * R * cols), *x = malloc(sizeof(float) * NB * cols);
    float *y1 = malloc(sizeof(float) * NB * R), *y2 = malloc(sizeof(float) * NB * R);
    fill(w, R * cols, &seed);
    fill(x, NB * cols, &seed);
    for (size_t md = 0; md < N_MODES; md++)
        for (int s = 0; s < 2; s++)
            for (int bi = 0; bi < 2; bi++) {
                const k_wfmt fmt = modes[md].fmt;
                const int rows = shapes[s], B = batches[bi];
                k_wmat W, Wsmall;
                cr_assert_eq(k_wmat_init(&W, fmt, rows, cols, w), 0);
                W.dot_bf16 = modes[md].dot_bf16;
                k_matmul(&W, x, y1, B, 0.0f);
                /* Row by row, each below the size the pool splits: one thread. */
                for (int r = 0; r < rows; r++) {
                    cr_assert_eq(k_wmat_init(&Wsmall, fmt, 1, cols, w + (size_t)r * cols), 0);
                    Wsmall.dot_bf16 = modes[md].dot_bf16;
                    for (int b = 0; b < B; b++) {
                        float one;
                        k_matmul(&Wsmall, x + b * cols, &one, 1, 0.0f);
                        y2[b * rows + r] = one;
                    }
                    k_wmat_free(&Wsmall);
                }
                cr_expect_eq(memcmp(y1, y2, sizeof(float) * B * rows), 0, "%s %d rows B=%d differs",
                             modes[md].name, rows, B);
                /* Many products back to back: the pool hands out work by generation. */
                for (int rep = 0; rep < 100; rep++) {
                    k_matmul(&W, x, y2, B, 0.0f);
                    cr_assert_eq(memcmp(y1, y2, sizeof(float) * B * rows), 0, "rep %d differs", rep);
                }
                k_wmat_free(&W);
            }
    free(w);
    free(x);
    free(y1);
    free(y2);
}

/* Hints of the next pass (k_next_*) are only prefetched: with hints of the
 * product's own rows, of rows past its end, of an unmapped address, of the
 * caller (0) and of threads the pool does not have, and more regions than a
 * worker keeps, every product gives the unhinted bits, whether the hints
 * reach it or a small product run without the pool dropped them first. */
Test(kernels, next_pass_hints_change_no_result)
{
    k_set_threads(2);
    const int rows = 4099, cols = 512, B = 3;
    unsigned seed = 21;
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
    float *y1 = malloc(sizeof(float) * B * rows), *y2 = malloc(sizeof(float) * B * rows);
    fill(w, (size_t)rows * cols, &seed);
    fill(x, (size_t)B * cols, &seed);
    for (size_t md = 0; md < N_MODES; md++) {
        k_wmat W, Wsmall;
        cr_assert_eq(k_wmat_init(&W, modes[md].fmt, rows, cols, w), 0);
        cr_assert_eq(k_wmat_init(&Wsmall, modes[md].fmt, 16, 16, w), 0);
        W.dot_bf16 = Wsmall.dot_bf16 = modes[md].dot_bf16;
        k_matmul(&W, x, y1, B, 0.0f);
        for (int rep = 0; rep < 50; rep++) {
            for (int i = 0; i < 3; i++)
                k_next_bytes(1, (const void *)(uintptr_t)(4096 * (i + 1)), 4096);
            k_next_rows(1, &W, rows - rows % K_ROWS, rows + 64);
            k_next_share(1, &W, B);
            for (int i = 0; i < 20; i++)
                k_next_rows(1, &W, 0, rows);
            k_next_bytes(0, w, sizeof(float) * rows * cols);
            k_next_bytes(7, w, sizeof(float) * rows * cols);
            if (rep % 2) {
                float small[16];
                k_matmul(&Wsmall, x, small, 1, 0.0f); /* below the split: no pool */
            }
            memset(y2, 0, sizeof(float) * B * rows);
            k_matmul(&W, x, y2, B, 0.0f);
            cr_assert_eq(memcmp(y1, y2, sizeof(float) * B * rows), 0, "%s rep %d differs",
                         modes[md].name, rep);
        }
        k_wmat_free(&W);
        k_wmat_free(&Wsmall);
    }
    free(w);
    free(x);
    free(y1);
    free(y2);
}

/* k_matmul_many: products of mixed shapes (small ones the pool does not
 * split, large ones it does, ragged row counts), each with its own inputs
 * and beta, in one call; every output equals its own k_matmul's, on every
 * instruction set, and more than the call's eight at once. */
Test(kernels, matmul_many_equals_one_product_at_a_time)
{
    k_set_threads(2);
    static const int shape[][2] = {{768, 768}, {64, 768}, {768, 64}, {100, 200}, {3, 70},
                                   {1000, 130}, {16, 64}, {517, 768}, {40, 40}, {2049, 96}};
    enum { NP = sizeof shape / sizeof shape[0] };
    unsigned seed = 11;
    for (size_t is = 0; is < N_ISAS; is++) {
        if (k_force_isa(isas[is]))
            continue;
        for (size_t md = 0; md < N_MODES; md++)
            for (int B = 1; B <= 17; B += 8) {
                k_wmat W[NP];
                k_product p[NP];
                float *x[NP], *y1[NP], *y2[NP];
                for (int i = 0; i < NP; i++) {
                    const int rows = shape[i][0], cols = shape[i][1];
                    float *w = malloc(sizeof(float) * rows * cols);
                    fill(w, (size_t)rows * cols, &seed);
                    cr_assert_eq(k_wmat_init(&W[i], modes[md].fmt, rows, cols, w), 0);
                    W[i].dot_bf16 = modes[md].dot_bf16;
                    free(w);
                    x[i] = malloc(sizeof(float) * B * cols);
                    y1[i] = malloc(sizeof(float) * B * rows);
                    y2[i] = malloc(sizeof(float) * B * rows);
                    fill(x[i], (size_t)B * cols, &seed);
                    fill(y1[i], (size_t)B * rows, &seed);
                    memcpy(y2[i], y1[i], sizeof(float) * B * rows);
                    /* The reference: this product alone, beta applied here. */
                    const float beta = i % 3 == 0 ? 1.0f : 0.0f;
                    float *t = malloc(sizeof(float) * B * rows);
                    k_matmul(&W[i], x[i], t, B, 0.0f);
                    for (int j = 0; j < B * rows; j++)
                        y1[i][j] = beta != 0.0f ? y1[i][j] + t[j] : t[j];
                    free(t);
                    p[i] = (k_product){&W[i], x[i], y2[i], beta};
                }
                k_matmul_many(p, NP, B);
                for (int i = 0; i < NP; i++) {
                    cr_expect_eq(memcmp(y1[i], y2[i], sizeof(float) * B * shape[i][0]), 0,
                                 "%s %s B=%d product %d differs", isas[is], modes[md].name, B, i);
                    k_wmat_free(&W[i]);
                    free(x[i]);
                    free(y1[i]);
                    free(y2[i]);
                }
            }
    }
}

/* A way to run a product in pieces on the pool (slices, claimed chunks),
 * given a row count per piece. */
typedef void (*pieces_fn)(const k_product *p, int B, int step);

/* Every ISA, mode, shape ({rows, cols, step}) and batch: the product run
 * in pieces must give k_matmul's bits. Accumulating (beta 1) into random
 * outputs, so that a row left out or run twice shows. */
static void pieces_equal_the_whole(pieces_fn run, const int (*shape)[3], size_t n_shapes,
                                   const char *what)
{
    k_set_threads(2);
    unsigned seed = 23;
    for (size_t is = 0; is < N_ISAS; is++) {
        if (k_force_isa(isas[is]))
            continue;
        for (size_t md = 0; md < N_MODES; md++)
            for (size_t sh = 0; sh < n_shapes; sh++)
                for (int B = 1; B <= 17; B += 4) {
                    const int rows = shape[sh][0], cols = shape[sh][1], step = shape[sh][2];
                    float *w = malloc(sizeof(float) * rows * cols);
                    float *x = malloc(sizeof(float) * B * cols);
                    float *y1 = malloc(sizeof(float) * B * rows), *y2 = malloc(sizeof(float) * B * rows);
                    fill(w, (size_t)rows * cols, &seed);
                    fill(x, (size_t)B * cols, &seed);
                    fill(y1, (size_t)B * rows, &seed);
                    memcpy(y2, y1, sizeof(float) * B * rows);
                    k_wmat W;
                    cr_assert_eq(k_wmat_init(&W, modes[md].fmt, rows, cols, w), 0);
                    W.dot_bf16 = modes[md].dot_bf16;
                    k_matmul(&W, x, y1, B, 1.0f);
                    const k_product p = {&W, x, y2, 1.0f};
                    run(&p, B, step);
                    cr_expect_eq(memcmp(y1, y2, sizeof(float) * B * rows), 0,
                                 "%s %s %dx%d B=%d %s of %d differ", isas[is], modes[md].name,
                                 rows, cols, B, what, step);
                    k_wmat_free(&W);
                    free(w);
                    free(x);
                    free(y1);
                    free(y2);
                }
    }
}

typedef struct {
    const k_product *p;
    int B, step;
    atomic_int next;
} pieces_job;

static void slice_item(void *arg, int i)
{
    const pieces_job *j = arg;
    const int r0 = i * j->step, r1 = r0 + j->step < j->p->W->rows ? r0 + j->step : j->p->W->rows;
    k_matmul_rows(j->p, j->B, r0, r1);
}

static void run_slices(const k_product *p, int B, int step)
{
    pieces_job j = {.p = p, .B = B, .step = step};
    k_parallel((p->W->rows + step - 1) / step, slice_item, &j);
}

static void claim_item(void *arg, int i)
{
    pieces_job *j = arg;
    k_matmul_rows_claim(j->p, j->B, &j->next, j->step);
}

static void run_claims(const k_product *p, int B, int step)
{
    pieces_job j = {.p = p, .B = B, .step = step};
    atomic_init(&j.next, 0);
    k_parallel(4, claim_item, &j);
}

/* k_matmul_rows over slices of whole blocks, run from the pool's worker
 * as the head items run them, writes the bits k_matmul writes for those
 * rows, and no other row. */
Test(kernels, matmul_rows_equal_those_of_the_whole_product)
{
    static const int shape[][3] = {{768, 64, 64}, {768, 128, 64}, {100, 200, 16}, {517, 96, 32}};
    pieces_equal_the_whole(run_slices, shape, sizeof shape / sizeof shape[0], "slices");
}

/* Threads claiming chunks of one product from a shared counter (the FFN's
 * parts in a decode step) write every row once, with the bits of the whole
 * product, whoever takes which chunk. */
Test(kernels, claimed_chunks_equal_the_whole_product)
{
    static const int shape[][3] = {{768, 128, 64}, {517, 96, 32}, {100, 200, 16}};
    pieces_equal_the_whole(run_claims, shape, sizeof shape / sizeof shape[0], "claimed chunks");
}

/* k_matmul_to_rows with each output row in a buffer of its own (allocated
 * apart, last first): k_matmul's bits, batches of prefill size (17) too. */
static void run_rows_apart(const k_product *p, int B, int step)
{
    (void)step;
    const int rows = p->W->rows;
    float *yr[32];
    cr_assert_leq(B, 32);
    for (int b = B - 1; b >= 0; b--) {
        cr_assert_not_null(yr[b] = malloc(sizeof(float) * rows));
        memcpy(yr[b], p->Y + (size_t)b * rows, sizeof(float) * rows);
    }
    k_matmul_to_rows(p->W, p->X, yr, B, p->beta);
    for (int b = 0; b < B; b++) {
        memcpy(p->Y + (size_t)b * rows, yr[b], sizeof(float) * rows);
        free(yr[b]);
    }
}

Test(kernels, rows_into_buffers_of_their_own_equal_the_product)
{
    static const int shape[][3] = {{768, 64, 0}, {517, 96, 0}, {100, 200, 0}};
    pieces_equal_the_whole(run_rows_apart, shape, sizeof shape / sizeof shape[0], "rows apart");
}

Test(kernels, formats_round_as_documented)
{
    const float v[] = {1.0f, -2.5f, 3.14159265f, 1e-3f, 65504.0f, -0.0f};
    const int n = sizeof v / sizeof v[0];
    k_wmat W;
    float back[6];
    cr_assert_eq(k_wmat_init(&W, K_W_BF16, 1, n, v), 0);
    k_wmat_rows(&W, 0, 1, back);
    for (int i = 0; i < n; i++) {
        cr_expect_leq(fabsf(back[i] - v[i]), fabsf(v[i]) / 256.0f, "bf16 %g -> %g", v[i], back[i]);
        /* Widening a bf16 value and rounding it again is exact. */
        k_wmat again;
        cr_assert_eq(k_wmat_init(&again, K_W_BF16, 1, 1, &back[i]), 0);
        float twice;
        k_wmat_rows(&again, 0, 1, &twice);
        cr_expect_eq(memcmp(&twice, &back[i], 4), 0);
        k_wmat_free(&again);
    }
    k_wmat_free(&W);
    /* int8: within half a step of its group's scale. */
    float g[128];
    unsigned seed = 9;
    for (int i = 0; i < 128; i++)
        g[i] = frand(&seed) * (i < 64 ? 1.0f : 0.01f);
    cr_assert_eq(k_wmat_init(&W, K_W_I8, 1, 128, g), 0);
    float q[128];
    k_wmat_rows(&W, 0, 1, q);
    for (int i = 0; i < 128; i++) {
        float step = i < 64 ? 1.0f / 127 : 0.01f / 127;
        cr_expect_leq(fabsf(q[i] - g[i]), 0.51f * step, "int8 [%d] %g -> %g", i, g[i], q[i]);
    }
    /* Packed: a whole block of 16 rows, 16 scales per group. */
    cr_expect_eq(k_wmat_bytes(&W), 16 * 128 + 16 * 2 * sizeof(float));
    k_wmat_free(&W);
    cr_assert_eq(k_wmat_alloc_plain(&W, K_W_I8, 1, 128), 0);
    k_wmat_set_rows(&W, 0, 1, g);
    float q2[128];
    k_wmat_rows(&W, 0, 1, q2);
    cr_expect_eq(memcmp(q, q2, sizeof q), 0, "plain and packed int8 hold the same values");
    cr_expect_eq(k_wmat_bytes(&W), 128 + 2 * sizeof(float));
    k_wmat_free(&W);
    /* q4, symmetric: a step is |big| / 8, big the group's value of largest
     * magnitude, which is held exactly (up to the fp16 scale); the others
     * within half a step, except those on big's other side past seven steps,
     * which clip to within one. */
    cr_assert_eq(k_wmat_init(&W, K_W_Q4, 1, 128, g), 0);
    k_wmat_rows(&W, 0, 1, q);
    for (int k = 0; k < 2; k++) {
        float big = 0;
        for (int i = k * 64; i < k * 64 + 64; i++)
            big = fabsf(g[i]) > fabsf(big) ? g[i] : big;
        const float step = fabsf(big) / 8;
        for (int i = k * 64; i < k * 64 + 64; i++) {
            const int clipped = g[i] * big < 0 && fabsf(g[i]) > 7.5f * step;
            cr_expect_leq(fabsf(q[i] - g[i]), (clipped ? 1.01f : 0.51f) * step,
                          "q4 [%d] %g -> %g (step %g)", i, g[i], q[i], step);
            if (g[i] == big)
                cr_expect_leq(fabsf(q[i] - g[i]), step / 256, "q4 keeps its largest value");
        }
    }
    /* One scale per (row, group), as fp16. */
    cr_expect_eq(k_wmat_bytes(&W), 16 * 128 / 2 + 16 * 2 * sizeof(uint16_t));
    k_wmat_free(&W);
}

/* What each format holds for one group of a row, by the definitions in
 * kernels.h written the plain way: the vectorized packing at load must give
 * these bits (ties in magnitude, rounding ties, clipping, zero groups,
 * ragged groups and an odd last column included). */
static float ref_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}

static void ref_group(k_wfmt fmt, const float *x, int n, float *out)
{
    if (fmt == K_W_F32 || fmt == K_W_BF16) {
        for (int i = 0; i < n; i++)
            out[i] = fmt == K_W_F32 ? x[i] : ref_bf16(x[i]);
        return;
    }
    float big = 0; /* the first value of largest magnitude */
    for (int i = 0; i < n; i++)
        if (fabsf(x[i]) > fabsf(big))
            big = x[i];
    if (fmt == K_W_I8) {
        const float amax = fabsf(big), inv = amax > 0 ? 127.0f / amax : 0;
        for (int i = 0; i < n; i++)
            out[i] = (float)lrintf(x[i] * inv) * (amax / 127.0f);
        return;
    }
    const float sc = k_f16_to_f32(k_f32_to_f16(big / -8.0f)), inv = sc != 0 ? 1.0f / sc : 0;
    for (int i = 0; i < n; i++) {
        const long q = lrintf(x[i] * inv) + 8;
        out[i] = (float)((q < 0 ? 0 : q > 15 ? 15 : q) - 8) * sc;
    }
}

Test(kernels, packing_holds_the_defined_values_bit_for_bit)
{
    static const k_wfmt fmts[] = {K_W_F32, K_W_BF16, K_W_I8, K_W_Q4};
    static const char *const names[] = {"f32", "bf16", "int8", "q4"};
    const int rows = 37, widths[] = {64, 300, 131};
    unsigned seed = 17;
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int cols = widths[wi];
        float *w = malloc(sizeof(float) * rows * cols), *got = malloc(sizeof(float) * rows * cols);
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++)
                w[r * cols + c] = frand(&seed) * (r % 3 == 0 ? 1.0f : r % 3 == 1 ? 7.0f : 1e-3f);
        w[0] = 0.75f, w[5] = -3.0f, w[9] = 3.0f; /* -3 comes first: it sets q4's sign */
        for (int c = 0; c < cols; c++) {
            w[cols + c] = (float)(c % 16) - 7.5f; /* q4 step 1 (big -8): ties, 7.5 clips */
            w[2 * cols + c] = (float)(c % 254) - 126.5f; /* int8 step 1: ties */
            w[3 * cols + c] = 0.0f;
            w[4 * cols + c] = c % 2 ? -0.0f : 1e-6f * (float)(c % 5); /* fp16 subnormal scale */
        }
        w[cols] = -8.0f, w[2 * cols] = 127.0f;
        for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
            k_wmat W;
            cr_assert_eq(k_wmat_init(&W, fmts[f], rows, cols, w), 0);
            k_wmat_rows(&W, 0, rows, got);
            int bad = 0;
            for (int r = 0; r < rows; r++)
                for (int c0 = 0; c0 < cols; c0 += 64) {
                    const int n = cols - c0 < 64 ? cols - c0 : 64;
                    float want[64];
                    ref_group(fmts[f], w + r * cols + c0, n, want);
                    for (int i = 0; i < n && bad < 5; i++)
                        if (memcmp(&want[i], &got[r * cols + c0 + i], 4)) {
                            bad++;
                            cr_expect(0, "%s %d x %d: (%d, %d) = %g holds %g, not %g", names[f],
                                      rows, cols, r, c0 + i, w[r * cols + c0 + i],
                                      got[r * cols + c0 + i], want[i]);
                        }
                }
            k_wmat_free(&W);
        }
        free(w);
        free(got);
    }
}

/* bf16 weights straight from a file's bytes (any alignment, a block of
 * columns of a wider tensor) hold what their fp32 widening gives, NaNs
 * quieted alike: packed and plain, ragged rows and an odd width. */
Test(kernels, bf16_rows_from_bytes_equal_their_widening)
{
    const int rows = 37, widths[] = {300, 131}, stride = 307, off = 5;
    unsigned seed = 23;
    uint8_t *bytes = malloc(1 + (size_t)rows * stride * 2);
    uint16_t *h = malloc(sizeof(uint16_t) * rows * stride);
    float *f = malloc(sizeof(float) * rows * stride);
    for (int i = 0; i < rows * stride; i++) {
        const float x = frand(&seed) * 3.0f;
        uint32_t u;
        memcpy(&u, &x, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    h[off] = 0x7f81, h[off + 1] = 0xffc0, h[off + 2] = 0x7f80, h[off + 3] = 0x8000; /* sNaN, qNaN, inf, -0 */
    memcpy(bytes + 1, h, sizeof(uint16_t) * rows * stride); /* odd address */
    for (size_t wi = 0; wi < sizeof widths / sizeof widths[0]; wi++) {
        const int cols = widths[wi];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                const uint32_t u = (uint32_t)h[r * stride + off + c] << 16;
                memcpy(&f[r * cols + c], &u, 4);
            }
        for (int packed = 0; packed < 2; packed++) {
            k_wmat A, B;
            cr_assert_eq(packed ? k_wmat_alloc(&A, K_W_BF16, rows, cols)
                                : k_wmat_alloc_plain(&A, K_W_BF16, rows, cols), 0);
            cr_assert_eq(packed ? k_wmat_alloc(&B, K_W_BF16, rows, cols)
                                : k_wmat_alloc_plain(&B, K_W_BF16, rows, cols), 0);
            k_wmat_set_rows(&A, 0, 16, f);
            k_wmat_set_rows(&A, 16, rows, f + (size_t)16 * cols);
            k_wmat_set_rows_bf16(&B, 0, 16, bytes + 1 + off * 2, (size_t)stride);
            k_wmat_set_rows_bf16(&B, 16, rows, bytes + 1 + ((size_t)16 * stride + off) * 2,
                                 (size_t)stride);
            cr_assert_eq(k_wmat_bytes(&A), k_wmat_bytes(&B));
            cr_expect_eq(memcmp(A.data, B.data, k_wmat_bytes(&A)), 0,
                         "%s %d x %d: the bytes differ", packed ? "packed" : "plain", rows, cols);
            k_wmat_free(&A);
            k_wmat_free(&B);
        }
    }
    free(bytes);
    free(h);
    free(f);
}

/* The AMX int8 / q4 kernels promise the VNNI kernel's bits (exact integer
 * sums per group, then the same fp32 steps in the same order): ragged rows
 * and columns, batches below, at and past a tile's 16 rows (the last 16
 * overlapping), beta 0 and 1, one thread and the pool. */
Test(kernels, amx_int8_and_q4_equal_vnni_bit_for_bit)
{
    if (k_force_isa("amx"))
        cr_skip_test("CPU (or kernel) without AMX tiles: the AMX kernels cannot run here");
    const int shapes[][2] = {{1, 16}, {37, 100}, {64, 768}, {130, 257}, {300, 64}, {17, 3},
                             {48, 200}, {1030, 1024}};
    const k_wfmt fmts[] = {K_W_I8, K_W_Q4};
    for (int threads = 1; threads <= 2; threads++) {
        k_set_threads(threads);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t f = 0; f < 2; f++)
                for (int B = 1; B <= 40; B += B < 18 ? 1 : 11)
                    for (int beta = 0; beta < 2; beta++) {
                        const int rows = shapes[s][0], cols = shapes[s][1];
                        unsigned seed = (unsigned)(rows * 131 + cols * 7 + B);
                        float *w = malloc(sizeof(float) * rows * cols);
                        float *x = malloc(sizeof(float) * B * cols);
                        float *ya = malloc(sizeof(float) * B * rows);
                        float *yv = malloc(sizeof(float) * B * rows);
                        for (int i = 0; i < rows * cols; i++)
                            w[i] = frand(&seed);
                        for (int i = 0; i < B * cols; i++)
                            x[i] = frand(&seed) * (i % 7 == 0 ? 10.0f : 1.0f);
                        for (int i = 0; i < B * rows; i++)
                            ya[i] = yv[i] = frand(&seed);
                        k_wmat W;
                        cr_assert_eq(k_wmat_init(&W, fmts[f], rows, cols, w), 0);
                        cr_assert_eq(k_force_isa("amx"), 0);
                        k_matmul(&W, x, ya, B, (float)beta);
                        cr_assert_eq(k_force_isa("avx512"), 0);
                        k_matmul(&W, x, yv, B, (float)beta);
                        cr_expect_eq(memcmp(ya, yv, sizeof(float) * B * rows), 0,
                                     "%s %dx%d B=%d beta=%d threads=%d: AMX differs from VNNI",
                                     f ? "q4" : "int8", rows, cols, B, beta, threads);
                        k_wmat_free(&W);
                        free(w);
                        free(x);
                        free(ya);
                        free(yv);
                    }
    }
}

/* bf16 compute on tiles: within fp32 rounding of the exact product of the
 * bf16-rounded operands for prefill-sized chunks too (the batch tests above
 * cover B up to 40 and batch invariance for B = 1..16). */
Test(kernels, amx_bf16_prefill_chunks_within_rounding)
{
    if (k_force_isa("amx"))
        cr_skip_test("CPU (or kernel) without AMX tiles: the AMX kernels cannot run here");
    const mode md = {K_W_BF16, 1, "bf16-dot"};
    const int shapes[][2] = {{768, 768}, {77, 300}, {33, 2050}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int B = 17; B <= 130; B += 37) {
            double e = check_product(&md, shapes[s][0], shapes[s][1], B, 1.0f, 0);
            cr_expect_leq(e, 2e-6, "%dx%d B=%d: rel err %g", shapes[s][0], shapes[s][1], B, e);
        }
}

/* The int8 / q4 kernels of isa give the same bits as the AVX2 ones: they
 * sum the same integers as vpmaddubsw, apply the scales alike, and see the
 * same quantized inputs (AVX-512 quantizes a row's whole groups in one
 * vectorized call, the rest as the portable code does). Widths with a
 * ragged last group and without. */
static void int_formats_equal_avx2(const char *isa)
{
    if (k_force_isa(isa))
        cr_skip_test("CPU lacks %s; this machine cannot run that kernel variant", isa);
    const int rows = 70, B = 11, widths[] = {333, 1024};
    for (size_t wi = 0; wi < 2; wi++) {
        const int cols = widths[wi];
        unsigned seed = 5;
        float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
        float *ya = malloc(sizeof(float) * B * rows), *yb = malloc(sizeof(float) * B * rows);
        fill(w, (size_t)rows * cols, &seed);
        fill(x, (size_t)B * cols, &seed);
        const k_wfmt fmts[] = {K_W_I8, K_W_Q4};
        for (size_t f = 0; f < 2; f++) {
            k_wmat W;
            cr_assert_eq(k_wmat_init(&W, fmts[f], rows, cols, w), 0);
            for (int b = 1; b <= B; b += 5) {
                cr_assert_eq(k_force_isa(isa), 0);
                k_matmul(&W, x, ya, b, 0.0f);
                cr_assert_eq(k_force_isa("avx2"), 0);
                k_matmul(&W, x, yb, b, 0.0f);
                cr_expect_eq(memcmp(ya, yb, sizeof(float) * (size_t)b * rows), 0,
                             "%s fmt %zu cols %d B=%d", isa, f, cols, b);
            }
            k_wmat_free(&W);
        }
        free(w);
        free(x);
        free(ya);
        free(yb);
    }
}

Test(kernels, avx_vnni_equals_avx2_bit_for_bit) { int_formats_equal_avx2("avxvnni"); }

Test(kernels, avx512_int_formats_equal_avx2_bit_for_bit) { int_formats_equal_avx2("avx512"); }

/* The portable fp16 conversions of the q4 scales agree with F16C bit for
 * bit: every fp16 value widened, and floats across the whole range
 * (subnormal, overflow, ties) rounded. */
__attribute__((target("f16c"))) static void f16c_check(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        const float a = k_f16_to_f32((uint16_t)h);
        const float b = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128((int)h)));
        if (a == a || b == b)
            cr_expect_eq(memcmp(&a, &b, 4), 0, "widen %04x: %g vs %g", h, a, b);
    }
    unsigned seed = 11;
    for (int i = 0; i < 2000000; i++) {
        seed = seed * 1103515245u + 12345u;
        /* half of them with exponents around fp16's range (2^-27 .. 2^17) */
        uint32_t bits = i & 1 ? seed ^ (seed << 7)
                              : (seed & 0x807fffffu) | (100u + (seed >> 8) % 45) << 23;
        float f;
        memcpy(&f, &bits, 4);
        if (f != f)
            continue;
        const uint16_t a = k_f32_to_f16(f);
        const uint16_t b = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(f), _MM_FROUND_TO_NEAREST_INT), 0);
        cr_expect_eq(a, b, "round %g (%08x): %04x vs %04x", f, bits, a, b);
        if (a != b)
            return;
    }
}

Test(kernels, fp16_conversions_equal_f16c)
{
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2")) /* F16C came with AVX2's generation */
        cr_skip_test("CPU lacks F16C");
    f16c_check();
}

/* Matrices in an arena (every format, several sizes, one larger than a
 * chunk) hold and multiply exactly what malloc'd ones do, and go away with
 * the arena (the sanitizer build reports anything left). */
Test(kernels, arena_matrices_equal_malloced_ones)
{
    static const k_wfmt fmts[] = {K_W_F32, K_W_BF16, K_W_I8, K_W_Q4};
    static const int shapes[][2] = {{40, 70}, {768, 768}, {4096, 2304}};
    k_arena *a = k_arena_new();
    cr_assert_not_null(a);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int rows = shapes[s][0], cols = shapes[s][1];
        float *w = malloc(sizeof(float) * (size_t)rows * cols), *x = malloc(sizeof(float) * 3 * cols);
        float *y1 = malloc(sizeof(float) * 3 * rows), *y2 = malloc(sizeof(float) * 3 * rows);
        for (size_t i = 0; i < (size_t)rows * cols; i++)
            w[i] = (float)((i * 7919u) % 1001u) / 1000.0f - 0.5f;
        for (int i = 0; i < 3 * cols; i++)
            x[i] = (float)((i * 31) % 97) / 97.0f - 0.4f;
        for (size_t f = 0; f < sizeof fmts / sizeof fmts[0]; f++) {
            k_wmat M, A;
            cr_assert_eq(k_wmat_init(&M, fmts[f], rows, cols, w), 0);
            cr_assert_eq(k_wmat_init_in(&A, a, fmts[f], rows, cols, w), 0);
            cr_assert_eq(k_wmat_bytes(&M), k_wmat_bytes(&A));
            cr_assert_eq((uintptr_t)A.data % 64, 0, "arena memory is 64-byte aligned");
            k_matmul(&M, x, y1, 3, 0.0f);
            k_matmul(&A, x, y2, 3, 0.0f);
            cr_expect_eq(memcmp(y1, y2, sizeof(float) * 3 * rows), 0, "fmt %d %dx%d", (int)fmts[f],
                         rows, cols);
            k_wmat_free(&M);
            k_wmat_free(&A);
        }
        free(w);
        free(x);
        free(y1);
        free(y2);
    }
    k_arena_free(a);
}
