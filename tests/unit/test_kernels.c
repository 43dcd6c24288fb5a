/*
 * test_kernels.c - every kernel variant the CPU offers (AVX-512, AVX2,
 * portable), every weight format, batch sizes around the register blocking
 * and shapes with ragged tails, against a double-precision product of the
 * same (dequantized) weights; the thread pool against one thread; the
 * formats' rounding.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static const char *const isas[] = {"avx512", "avx2", "scalar"};

static float frand(unsigned *s)
{
    *s = *s * 1103515245u + 12345u;
    return (float)((*s >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* Max |k_matmul - exact| / (sum |w x| + 1e-3) over Y: a relative error that
 * does not blow up on outputs that happen to cancel to near zero. */
static double check_product(k_wfmt fmt, int rows, int cols, int B, float beta)
{
    unsigned seed = (unsigned)(rows * 31 + cols * 7 + B);
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
    float *y = malloc(sizeof(float) * B * rows), *y0 = malloc(sizeof(float) * B * rows);
    float *wd = malloc(sizeof(float) * rows * cols);
    for (int i = 0; i < rows * cols; i++)
        w[i] = frand(&seed);
    for (int i = 0; i < B * cols; i++)
        x[i] = frand(&seed);
    for (int i = 0; i < B * rows; i++)
        y0[i] = y[i] = frand(&seed);
    k_wmat W;
    cr_assert_eq(k_wmat_init(&W, fmt, rows, cols, w), 0);
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
    const int shapes[][2] = {{1, 16}, {37, 100}, {64, 768}, {130, 257}, {300, 64}};
    const int batches[] = {1, 2, 3, 4, 5, 8, 16};
    int ran = 0;
    for (size_t i = 0; i < 3; i++) {
        if (k_force_isa(isas[i]))
            continue; /* this CPU lacks it */
        ran++;
        for (int fmt = K_W_F32; fmt <= K_W_I8; fmt++)
            for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
                for (size_t b = 0; b < sizeof batches / sizeof batches[0]; b++)
                    for (int beta = 0; beta < 2; beta++) {
                        double e = check_product(fmt, shapes[s][0], shapes[s][1], batches[b],
                                                 (float)beta);
                        cr_expect_leq(e, 1e-6, "%s fmt %d %dx%d B=%d beta=%d: rel err %g",
                                      isas[i], fmt, shapes[s][0], shapes[s][1], batches[b], beta,
                                      e);
                    }
    }
    cr_expect_geq(ran, 1);
    cr_expect_eq(k_force_isa("scalar"), 0, "the portable variant is always there");
}

Test(kernels, thread_pool_gives_the_single_thread_result)
{
    k_set_threads(2);
    const int rows = 4099, cols = 512, B = 3; /* large enough to be split */
    unsigned seed = 5;
    float *w = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * B * cols);
    float *y1 = malloc(sizeof(float) * B * rows), *y2 = malloc(sizeof(float) * B * rows);
    for (int i = 0; i < rows * cols; i++)
        w[i] = frand(&seed);
    for (int i = 0; i < B * cols; i++)
        x[i] = frand(&seed);
    for (int fmt = K_W_F32; fmt <= K_W_I8; fmt++) {
        k_wmat W, Wsmall;
        cr_assert_eq(k_wmat_init(&W, fmt, rows, cols, w), 0);
        k_matmul(&W, x, y1, B, 0.0f);
        /* Row by row, each below the size the pool splits: one thread. */
        for (int r = 0; r < rows; r++) {
            cr_assert_eq(k_wmat_init(&Wsmall, fmt, 1, cols, w + (size_t)r * cols), 0);
            for (int b = 0; b < B; b++) {
                float one;
                k_matmul(&Wsmall, x + b * cols, &one, 1, 0.0f);
                y2[b * rows + r] = one;
            }
            k_wmat_free(&Wsmall);
        }
        cr_expect_eq(memcmp(y1, y2, sizeof(float) * B * rows), 0, "fmt %d differs", fmt);
        /* Many products back to back: the pool hands out work by generation. */
        for (int rep = 0; rep < 200; rep++) {
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
    cr_expect_eq(k_wmat_bytes(&W), 128 + 2 * sizeof(float));
    k_wmat_free(&W);
}
