/*
 * test_accuracy.c - what each weight format and compute mode costs in
 * accuracy, against the stated margins (README, "Accuracy"), so a
 * regression in a kernel or a quantizer fails:
 *  - the default model's held-out fortunes (made by tools/fortunes_heldout.py
 *    from the Debian package, as in training), bits per byte through
 *    `metastate perplexity` per format: bf16 as f32 (exact), int8 and bf16
 *    compute within 0.005, q4 within 0.03;
 *  - a random-weight model: int8, q4 and bf16-compute logits against f32
 *    weights (mean |diff| relative to mean |logit|, top-1 agreement).
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "engine.h"
#include "tmpdir.h"

TEST_TMPDIR("acc")

TestSuite(accuracy, .init = make_dir, .fini = remove_dir, .timeout = 900);

/* `metastate perplexity ARGS` with its stdout captured; bits per byte. */
static double bits_per_byte(const char *model, const char *file, const char *weights,
                            const char *compute)
{
    char out[300];
    snprintf(out, sizeof out, "%s/ppl.out", dir);
    char *argv[] = {"perplexity", "--model", (char *)model, "--file", (char *)file, "--docs",
                    "--weights", (char *)weights, "--compute", (char *)compute, NULL};
    fflush(stdout);
    const int saved = dup(1), fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    cr_assert(saved >= 0 && fd >= 0);
    dup2(fd, 1);
    close(fd);
    const int rc = cmd_perplexity(10, argv);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    cr_assert_eq(rc, 0, "perplexity --weights %s --compute %s failed", weights, compute);
    FILE *f = fopen(out, "r");
    double bpb = -1;
    cr_assert_not_null(f);
    cr_assert_eq(fscanf(f, "bits_per_byte=%lf", &bpb), 1);
    fclose(f);
    return bpb;
}

/* The first n documents of a fortune file. */
static void first_docs(const char *src, const char *dst, int n)
{
    FILE *in = fopen(src, "r"), *out = fopen(dst, "w");
    cr_assert(in && out);
    char line[4096];
    while (n > 0 && fgets(line, sizeof line, in)) {
        fputs(line, out);
        n -= !strcmp(line, "%\n");
    }
    fclose(in);
    fclose(out);
}

Test(accuracy, heldout_bits_per_byte_per_format)
{
    char held[300], part[300], cmd[700];
    snprintf(held, sizeof held, "%s/heldout.txt", dir);
    snprintf(part, sizeof part, "%s/part.txt", dir);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 tools/fortunes_heldout.py '%s'", held);
    cr_assert_eq(system(cmd), 0, "tools/fortunes_heldout.py failed (needs the Debian packages "
                                 "fortunes and python3-numpy: make deps-test)");
    /* 150 of the 760 documents (about 25 kB) keep this quick under ASan;
     * the README's figures are over all of them. */
    first_docs(held, part, 150);
    const char *model = "models/default.safetensors";
    const double f32 = bits_per_byte(model, part, "f32", "f32");
    cr_expect(f32 > 1.5 && f32 < 3.5, "f32 %.4f bits/byte: not the trained model?", f32);
    const struct {
        const char *weights, *compute;
        double margin;
    } rows[] = {{"bf16", "f32", 2e-4}, {"bf16", "bf16", 0.005}, {"int8", "f32", 0.005},
                {"q4", "f32", 0.03}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        const double b = bits_per_byte(model, part, rows[i].weights, rows[i].compute);
        cr_log_info("held-out bits/byte: f32 %.4f, %s (compute %s) %.4f", f32, rows[i].weights,
                    rows[i].compute, b);
        cr_expect_leq(fabs(b - f32), rows[i].margin,
                      "%s weights, %s compute: %.4f bits/byte vs f32 %.4f (margin %.4f)",
                      rows[i].weights, rows[i].compute, b, f32, rows[i].margin);
    }
}

/* Logits over n tokens of a random-weight model in one format against the
 * same file with f32 weights. */
static void compare(const char *path, ms_weights w, ms_compute c, double *rel_mean, double *top1)
{
    enum { N = 96 };
    ms_error err;
    ms_model *ref, *m;
    ms_load_opts o32 = {.weights = MS_WEIGHTS_F32}, o = {.weights = w, .compute = c};
    cr_assert_eq(ms_model_load(path, &o32, &ref, &err), MS_OK, "%s", err.msg);
    cr_assert_eq(ms_model_load(path, &o, &m, &err), MS_OK, "%s", err.msg);
    const int V = ms_model_config(m)->vocab_size;
    int32_t t[N];
    for (int i = 0; i < N; i++)
        t[i] = (int32_t)((i * 2654435761u + 7) % (unsigned)V);
    float *la = malloc(sizeof(float) * N * V), *lb = malloc(sizeof(float) * N * V);
    ms_ctx *ca = ms_ctx_new(ref, 16), *cb = ms_ctx_new(m, 16);
    ms_state *sa = ms_state_new(ref), *sb = ms_state_new(m);
    cr_assert(la && lb && ca && cb && sa && sb);
    cr_assert_eq(ms_forward(ca, sa, t, N, la, 1, &err), MS_OK);
    cr_assert_eq(ms_forward(cb, sb, t, N, lb, 1, &err), MS_OK);
    double diff = 0, mag = 0;
    int agree = 0;
    for (int i = 0; i < N; i++) {
        int ia = 0, ib = 0;
        for (int v = 0; v < V; v++) {
            const float a = la[(size_t)i * V + v], b = lb[(size_t)i * V + v];
            diff += fabs((double)a - b);
            mag += fabs((double)a);
            ia = a > la[(size_t)i * V + ia] ? v : ia;
            ib = b > lb[(size_t)i * V + ib] ? v : ib;
        }
        agree += ia == ib;
    }
    *rel_mean = diff / mag;
    *top1 = (double)agree / N;
    free(la);
    free(lb);
    ms_ctx_free(ca);
    ms_ctx_free(cb);
    ms_state_free(sa);
    ms_state_free(sb);
    ms_model_free(ref);
    ms_model_free(m);
}

Test(accuracy, random_weights_against_f32)
{
    char path[300];
    snprintf(path, sizeof path, "%s/tiny.safetensors", dir);
    char *argv[] = {"gen-model", "--preset", "tiny", "--vocab-size", "1024", "--dtype", "bf16",
                    "--seed", "5", "--out", path, NULL};
    cr_assert_eq(cmd_gen_model(11, argv), 0);
    const struct {
        ms_weights w;
        ms_compute c;
        const char *name;
        double max_rel, min_top1;
    } rows[] = {{MS_WEIGHTS_BF16, MS_COMPUTE_F32, "bf16", 1e-5, 1.0},
                {MS_WEIGHTS_BF16, MS_COMPUTE_BF16, "bf16 compute", 0.01, 0.9},
                {MS_WEIGHTS_I8, MS_COMPUTE_F32, "int8", 0.02, 0.85},
                {MS_WEIGHTS_Q4, MS_COMPUTE_F32, "q4", 0.2, 0.6}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++) {
        double rel, top1;
        compare(path, rows[i].w, rows[i].c, &rel, &top1);
        cr_log_info("random weights, %s vs f32: mean |dlogit| / mean |logit| %.4f, top-1 %.3f",
                    rows[i].name, rel, top1);
        cr_expect_leq(rel, rows[i].max_rel, "%s: relative logit error %.4f > %.4f", rows[i].name,
                      rel, rows[i].max_rel);
        cr_expect_geq(top1, rows[i].min_top1, "%s: top-1 agreement %.3f < %.3f", rows[i].name,
                      top1, rows[i].min_top1);
    }
}
